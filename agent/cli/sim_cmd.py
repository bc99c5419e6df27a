"""``kms-agent sim ...``: simulated tokens for demos and tests (INSECURE by design)."""

from __future__ import annotations

from typing import Annotated

import typer

from agent.cli.context import Paths, emit

app = typer.Typer(help="simulated tokens (insecure; demos and tests)", no_args_is_help=True)
Json = Annotated[bool, typer.Option("--json", help="print JSON")]


@app.command("create")
def create(name: str, as_json: Json = False) -> None:
    """create a simulated FIDO2 token (PIN 123456)"""
    from agent.tokens.sim import create_sim_token

    path = create_sim_token(Paths.resolve().home, name)
    emit({"token": f"sim:{name}", "state": str(path)}, as_json, f"sim:{name} ready (PIN 123456), state in {path}")


@app.command("list")
def list_sims(as_json: Json = False) -> None:
    """list simulated tokens"""
    from agent.tokens.sim import sim_token_names

    names = sim_token_names(Paths.resolve().home)
    emit({"tokens": [f"sim:{n}" for n in names]}, as_json, "\n".join(f"sim:{n}" for n in names))


@app.command("unplug")
def unplug(name: str) -> None:
    """pretend a simulated token was pulled out"""
    from agent.tokens.sim import set_plugged

    set_plugged(Paths.resolve().home, name, False)


@app.command("plug")
def plug(name: str) -> None:
    """plug a simulated token back in"""
    from agent.tokens.sim import set_plugged

    set_plugged(Paths.resolve().home, name, True)
