"""``kms-agent sim ...``: simulated tokens for demos and tests (INSECURE by design)."""

from __future__ import annotations

from typing import Annotated

import typer

from agent.cli.context import Paths, emit

app = typer.Typer(help="simulated tokens (insecure; demos and tests)", no_args_is_help=True)
Json = Annotated[bool, typer.Option("--json", help="print JSON")]


@app.command("create")
def create(
    name: str,
    kind: Annotated[str, typer.Option(help="fido2 or piv")] = "fido2",
    quirk: Annotated[
        list[str] | None,
        typer.Option(
            "--quirk",
            help="build it broken, for tests (repeat): fido2 no-user-presence, self-attestation, no-attestation; "
            "piv no-attestation, no-touch-policy, bare-slot-metadata, not-yubikey",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """create a simulated FIDO2 token or PIV card (PIN 123456)"""
    from agent.errors import UsageError
    from agent.tokens.sim import create_piv_sim, create_sim_token

    home = Paths.resolve().home
    quirks = sorted(set(quirk or []))
    if kind == "fido2":
        detail = str(create_sim_token(home, name, quirks=quirks))
    elif kind == "piv":
        detail = f"serial {create_piv_sim(home, name, quirks=quirks).read().serial}"
    else:
        raise UsageError(f"unknown token kind {kind!r}: use fido2 or piv")
    emit(
        {"token": f"sim:{name}", "kind": kind, "detail": detail, "quirks": quirks},
        as_json,
        f"sim:{name} ready ({kind}, PIN 123456): {detail}" + (f" (quirks: {', '.join(quirks)})" if quirks else ""),
    )


@app.command("list")
def list_sims(as_json: Json = False) -> None:
    """list simulated tokens"""
    from agent.tokens.sim import list_piv_sims, sim_token_names

    home = Paths.resolve().home
    tokens = [{"token": f"sim:{n}", "kind": "fido2"} for n in sim_token_names(home)]
    tokens += [{"token": f"sim:{n}", "kind": "piv"} for n in list_piv_sims(home)]
    emit({"tokens": tokens}, as_json, "\n".join(f"{t['token']:<24} {t['kind']}" for t in tokens))


@app.command("pcsc")
def pcsc(
    piv: Annotated[list[str] | None, typer.Option("--piv", help="simulated PIV card to serve (repeat)")] = None,
    fido2: Annotated[list[str] | None, typer.Option("--fido2", help="simulated FIDO2 token to serve (repeat)")] = None,
    port: Annotated[int, typer.Option(help="vpcd port of the first reader slot")] = 35963,
) -> None:
    """serve simulated tokens to pcscd's vpcd reader until stopped (SIGTERM or Ctrl-C ends it cleanly)"""
    import signal
    import threading

    from agent.cli.context import err
    from agent.tokens.sim.pcsc_server import serve

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    names = [f"piv:{n}" for n in piv or []] + [f"fido2:{n}" for n in fido2 or []]
    err(f"serving {', '.join(names) or 'nothing'} to vpcd on port {port}; stop with Ctrl-C or SIGTERM")
    serve(Paths.resolve().home, piv=piv or [], fido2=fido2 or [], stop=stop, port=port)
    err("stopped; the cards left the reader")


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
