"""The daemon's settings: Tatum KMS's flags and environment variables, resolved into one typed record.

Tatum KMS (src/index.ts, src/config.ts) reads ``TATUM_API_KEY`` and ``TATUM_API_URL`` from the
environment, after loading a dotenv file (``--envFile``, default ``~/.tatumrc/.env``) that never
overrides a variable already set; ``--apiKey`` overrides both. We read them the same way. The
differences are on purpose (docs/daemon.md): a missing key, a missing ``--externalUrl`` on mainnet,
an unknown chain and ``--wallets``/``--transactionIds`` without ``--runOnce`` are errors before
anything is polled, instead of being ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from agent.errors import UsageError

#: Tatum KMS's default ``--chain`` list (src/index.ts), in its order.
TATUM_DEFAULT_CHAINS: tuple[str, ...] = (
    *("BCH", "VET", "XRP", "XLM", "ETH", "BTC", "MATIC", "KLAY", "LTC", "DOGE", "CELO"),
    *("BSC", "SOL", "TRON", "BNB", "FLOW", "XDC", "EGLD", "ONE", "ADA", "ALGO", "KCS"),
)
DEFAULT_API_URL = "https://api.tatum.io"
DEFAULT_ENV_FILE = Path("~/.tatumrc/.env")
DEFAULT_PERIOD = 5.0
DEFAULT_MAX_BATCH = 500
API_KEY_ENV = "TATUM_API_KEY"
API_URL_ENV = "TATUM_API_URL"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class UrlMethod(StrEnum):
    """How the 4-eye ``--externalUrl`` is asked (Tatum's ``--externalUrlMethod``)."""

    GET = "GET"
    #: ``POST {externalUrl}/{id}`` with the whole pending transaction as the JSON body.
    POST = "POST"


def default_chains() -> tuple[str, ...]:
    """Tatum's default chains that this agent can sign for, in Tatum's order."""
    from agent.chains import supported_chains

    ours = set(supported_chains())
    return tuple(c for c in TATUM_DEFAULT_CHAINS if c in ours)


@dataclass(frozen=True)
class DaemonOptions:
    """Everything one daemon process runs with. The API key is kept out of ``repr``."""

    api_url: str
    api_key: str = field(repr=False)
    chains: tuple[str, ...]
    testnet: bool
    period: float
    run_once: bool
    #: runOnce only: these signatureIds instead of the vault's, for every chain (Tatum's ``--wallets``).
    wallets: tuple[str, ...] | None
    #: runOnce only: only these pending-transaction ids (Tatum's ``--transactionIds``).
    transaction_ids: frozenset[str] | None
    external_url: str | None
    external_method: UrlMethod
    #: Operators whose tokens are attached here and who approve each pass's batch (empty: nobody).
    operators: tuple[str, ...]
    max_batch: int
    as_json: bool


def parse_csv(text: str | None) -> tuple[str, ...] | None:
    """``"a, b,,c"`` -> ``("a", "b", "c")``; None stays None (the flag was not given)."""
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


def read_env_file(path: Path) -> dict[str, str]:
    """A dotenv file, the subset Tatum's users write: ``NAME=value``, ``export NAME=value``, quotes, comments.

    :raises UsageError: a line that is not an assignment (its number is named, never its text: it may hold a key).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read the env file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"the env file {path} is not UTF-8 text") from None
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export ") :].lstrip()
        name, sep, value = stripped.partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise UsageError(f"the env file {path}, line {number}: not a NAME=value assignment")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[name] = value
    return out


def resolve(
    *,
    period: float = DEFAULT_PERIOD,
    chain: str | None = None,
    testnet: bool = False,
    run_once: bool = False,
    wallets: str | None = None,
    transaction_ids: str | None = None,
    external_url: str | None = None,
    external_method: UrlMethod = UrlMethod.GET,
    api_key: str | None = None,
    env_file: Path | None = None,
    operators: tuple[str, ...] = (),
    max_batch: int = DEFAULT_MAX_BATCH,
    as_json: bool = False,
    environ: Mapping[str, str] | None = None,
) -> DaemonOptions:
    """Check the flags and read the API's URL and key as Tatum KMS does.

    Precedence: ``--apiKey`` > the environment > the env file (dotenv never overrides).

    :raises UsageError: anything that would make the daemon run differently from what was asked.
    """
    from agent.chains import get_chain

    env = dict(os.environ if environ is None else environ)
    if env_file is not None:
        path = env_file.expanduser()
        if not path.is_file():
            raise UsageError(f"the env file {env_file} does not exist")
        file_env = read_env_file(path)
    else:
        path = DEFAULT_ENV_FILE.expanduser()
        file_env = read_env_file(path) if path.is_file() else {}
    merged = {**file_env, **env}
    if not period > 0 or period > 86_400:
        raise UsageError("--period must be between 0 and 86400 seconds")
    if not 1 <= max_batch <= 100_000:
        raise UsageError("--max-batch must be between 1 and 100000")
    names = parse_csv(chain)
    if names is not None and not names:
        raise UsageError("--chain is empty")
    chains = default_chains() if names is None else tuple(dict.fromkeys(get_chain(n).name for n in names))
    wallet_ids = parse_csv(wallets)
    tx_ids = parse_csv(transaction_ids)
    if not run_once and (wallet_ids is not None or tx_ids is not None):
        raise UsageError("--wallets and --transactionIds work only with --runOnce (as in Tatum KMS)")
    if wallet_ids is not None and not wallet_ids:
        raise UsageError("--wallets is empty")
    if tx_ids is not None and not tx_ids:
        raise UsageError("--transactionIds is empty")
    if external_url is not None:
        external_url = external_url.strip().rstrip("/")
        if not re.match(r"^https?://[^\s/]+", external_url):
            raise UsageError("--externalUrl must be an http:// or https:// URL")
    if not testnet and not external_url:
        raise UsageError(
            "--externalUrl is required without --testnet (as in Tatum KMS): "
            "a mainnet transaction is signed only after your system confirms it"
        )
    key = (api_key if api_key is not None else merged.get(API_KEY_ENV, "")).strip()
    if not key:
        raise UsageError(
            f"no Tatum API key: set {API_KEY_ENV} in the environment or in the env file "
            f"({env_file or DEFAULT_ENV_FILE})",
            hint="an env file (mode 0600) keeps the key out of the process list; --apiKey shows it to local users",
        )
    url = (merged.get(API_URL_ENV) or DEFAULT_API_URL).strip().rstrip("/")
    if not re.match(r"^https?://[^\s/]+", url):
        raise UsageError(f"{API_URL_ENV} must be an http:// or https:// URL")
    if len(set(operators)) != len(operators):
        raise UsageError("an --operator is given twice")
    return DaemonOptions(
        api_url=url,
        api_key=key,
        chains=chains,
        testnet=testnet,
        period=float(period),
        run_once=run_once,
        wallets=wallet_ids,
        transaction_ids=frozenset(tx_ids) if tx_ids is not None else None,
        external_url=external_url,
        external_method=external_method,
        operators=tuple(operators),
        max_batch=max_batch,
        as_json=as_json,
    )
