"""Tatum wallet entries: what each one is, whether it checks out, and how it lives in our vault.

A Tatum wallet.dat holds ``{signatureId: entry}`` (research/tatum-kms.md §1.3). An entry becomes
one vault wallet with the *same* signatureId, because Tatum's API knows wallets by nothing else.

Two ways to seal an entry (docs/migrating-from-tatum.md, "What happens to each entry"):

* **Signable**: a mnemonic or private-key entry of a chain this agent signs for, with only the
  fields Tatum writes for it (``mnemonic, xpub, chain, testnet`` or ``privateKey, chain, testnet``)
  and whose xpub (or key) matches. Sealed as the bare mnemonic or key, exactly as ``wallet store``
  seals it, so withdrawals sign with it.
* **Kept**: anything else (a chain with no signer here yet, an XRP/XLM/ALGO ``secret``, fields this
  agent does not know, an xpub the operator chose to keep although it does not match). Sealed as the
  *whole* entry, verbatim, behind :data:`ENVELOPE`, so nothing is dropped and ``export tatum`` gives
  it back field for field. The public row carries the chain, network and any stored xpub/address.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agent.tatum.walletdat import TatumFileError

__all__ = [
    "ENVELOPE",
    "Entry",
    "Finding",
    "Kind",
    "Status",
    "check_entry",
    "entry_from_vault",
    "parse_entries",
    "sealed_form",
]

#: Prefix of a sealed secret that is a whole Tatum entry (JSON) rather than a bare mnemonic or key.
ENVELOPE = b"kms-agent/tatum-entry/v1\n"

#: The fields Tatum writes for the two kinds this agent signs with; anything more is kept verbatim.
CANONICAL = {
    "MNEMONIC": frozenset({"mnemonic", "xpub", "chain", "testnet"}),
    "PRIVATE_KEY": frozenset({"privateKey", "chain", "testnet"}),
}

#: Chains whose keys Tatum keeps as a random keypair (``secret`` or ``privateKey`` + ``address``).
KEYPAIR_CHAINS = frozenset({"XRP", "XLM", "ALGO", "BNB"})


class Kind(StrEnum):
    """Tatum's ``report`` types, with its precedence: mnemonic > privateKey > secret."""

    MNEMONIC = "MNEMONIC"
    PRIVATE_KEY = "PRIVATE_KEY"
    SECRET = "SECRET"
    OTHER = "OTHER"


class Status(StrEnum):
    SIGNABLE = "signable"
    NO_SIGNER = "no signer yet"
    KEPT = "kept sealed"
    MISMATCH = "mismatch"


@dataclass
class Entry:
    """One Tatum entry; ``fields`` is the original object (plus chain/testnet given for a legacy one)."""

    signature_id: str
    fields: dict[str, Any]
    #: The entry had no ``chain`` / ``testnet`` (Tatum KMS before July 2020).
    legacy: bool = False

    @property
    def kind(self) -> Kind:
        f = self.fields
        if isinstance(f.get("mnemonic"), str):
            return Kind.MNEMONIC
        if isinstance(f.get("privateKey"), str):
            return Kind.PRIVATE_KEY
        if isinstance(f.get("secret"), str):
            return Kind.SECRET
        return Kind.OTHER

    @property
    def chain(self) -> str | None:
        chain = self.fields.get("chain")
        return chain if isinstance(chain, str) else None

    @property
    def testnet(self) -> bool | None:
        testnet = self.fields.get("testnet")
        return testnet if isinstance(testnet, bool) else None


@dataclass
class Finding:
    """What the import found for one entry, and how it will be sealed."""

    entry: Entry
    status: Status
    #: The row's public fields: the xpub (checked against the mnemonic when we can) and address.
    xpub: str | None = None
    address: str | None = None
    #: Why the entry is kept rather than signable, or what does not match (no secret is ever quoted).
    problems: list[str] = field(default_factory=list)
    #: Advice for the operator (Tatum defects that touched this entry).
    notes: list[str] = field(default_factory=list)

    @property
    def signable(self) -> bool:
        return self.status is Status.SIGNABLE

    def to_json(self) -> dict[str, Any]:
        e = self.entry
        return {
            "signatureId": e.signature_id,
            "type": e.kind.value,
            "chain": e.chain,
            "testnet": e.testnet,
            "status": self.status.value,
            **({"xpub": self.xpub} if self.xpub else {}),
            **({"address": self.address} if self.address else {}),
            "problems": self.problems,
            "notes": self.notes,
        }


def parse_entries(doc: Mapping[str, Any], *, name: str = "the file") -> list[Entry]:
    """The entries of a decrypted file, in its order, each checked to be an object with sane types.

    :raises TatumFileError: an entry is not an object, or ``chain``/``testnet`` have the wrong type.
    """
    entries = []
    for sig_id, fields in doc.items():
        if not isinstance(fields, dict):
            raise TatumFileError(f"{name}: entry {sig_id!r} is not a JSON object")
        if "chain" in fields and not isinstance(fields["chain"], str):
            raise TatumFileError(f"{name}: entry {sig_id!r} has a chain that is not text")
        if "testnet" in fields and not isinstance(fields["testnet"], bool):
            raise TatumFileError(f"{name}: entry {sig_id!r} has a testnet flag that is not true/false")
        if not sig_id:
            raise TatumFileError(f"{name}: an entry has an empty signatureId")
        entries.append(Entry(sig_id, dict(fields), legacy="chain" not in fields or "testnet" not in fields))
    return entries


def _impl(chain: str | None) -> Any:
    """Our chain object for a Tatum chain name, or None when no signer exists here for it."""
    from agent.chains import supported_chains

    if chain is None or chain not in supported_chains():
        return None
    from agent.chains import get_chain

    return get_chain(chain)


def check_entry(entry: Entry, *, keep_mismatched: bool = False) -> Finding:
    """Classify one entry and re-derive what can be: the xpub at Tatum's path, or a key's address.

    Never raises for the entry's content: what does not check out is a :attr:`Status.MISMATCH`
    finding (or, with ``keep_mismatched``, a kept one with its problems listed).
    """
    f = entry.fields
    chain, testnet, kind = entry.chain, entry.testnet, entry.kind
    stored_xpub = f.get("xpub") if isinstance(f.get("xpub"), str) else None
    stored_address = f.get("address") if isinstance(f.get("address"), str) else None
    notes = _notes(entry)
    impl = _impl(chain)
    if impl is None or testnet is None:
        return Finding(entry, Status.NO_SIGNER, stored_xpub, stored_address, notes=notes)
    problems: list[str] = []
    xpub, address = stored_xpub, stored_address
    if kind is Kind.MNEMONIC:
        derived = _derived_xpub(impl, f["mnemonic"], testnet, problems)
        if derived is not None:
            if stored_xpub is not None and stored_xpub != derived:
                problems.append(f"its xpub is not the one its mnemonic gives at Tatum's {impl.name} path")
            xpub = stored_xpub or derived
    elif kind is Kind.PRIVATE_KEY:
        derived_address = _key_address(impl, f["privateKey"], testnet, problems)
        if derived_address is not None:
            if stored_address is not None and stored_address != derived_address:
                problems.append("its address is not the one its private key gives")
            address = stored_address or derived_address
    else:
        problems.append(f"a {kind.value.lower()} entry holds no mnemonic or private key for {impl.name}")
    if problems:
        status = Status.KEPT if keep_mismatched else Status.MISMATCH
        # A kept entry whose xpub or address does not match publishes neither: no deposit address
        # may be derived from something its key cannot sign for.
        return Finding(entry, status, None, None, problems=problems, notes=notes)
    extra = sorted(set(f) - CANONICAL[kind.value])
    if extra or chain != impl.name:
        why = f"fields this agent does not use: {', '.join(extra)}" if extra else f"chain spelt {chain!r}"
        return Finding(entry, Status.KEPT, xpub, address, problems=[why], notes=notes)
    return Finding(entry, Status.SIGNABLE, xpub, address, notes=notes)


def _derived_xpub(impl: Any, mnemonic: str, testnet: bool, problems: list[str]) -> str | None:
    from agent.errors import UsageError

    try:
        xpub: str = impl.xpub_from_mnemonic(" ".join(mnemonic.split()), testnet=testnet)
    except UsageError:  # bad word or checksum (the message never quotes the mnemonic)
        problems.append("its mnemonic is not a valid English BIP-39 mnemonic (word or checksum)")
        return None
    return xpub


def _key_address(impl: Any, text: str, testnet: bool, problems: list[str]) -> str | None:
    from agent.errors import KmsAgentError

    try:
        key = impl.parse_private_key(text.strip(), testnet=testnet)
    except (KmsAgentError, ValueError):
        net = "testnet" if testnet else "mainnet"
        problems.append(f"its private key is not a {impl.name} {net} key")
        return None
    try:
        address: str = impl.address_from_private_key(bytes(key), testnet=testnet)
        return address
    finally:
        key[:] = bytes(len(key))


def _notes(entry: Entry) -> list[str]:
    notes = []
    chain = entry.chain
    if chain == "EGLD":
        notes.append(
            "Tatum's `getaddress` prints the address of the EMPTY mnemonic for every EGLD wallet: "
            "funds sent to an address taken from it can be spent by anyone"
        )
    if chain in ("XRP", "XLM") and "privateKey" in entry.fields:
        notes.append(f"an imported {chain} key sits in privateKey, not secret (Tatum PR #82): kept as it is")
    if chain == "VET" and entry.kind is Kind.MNEMONIC:
        notes.append("Tatum KMS cannot sign with VET mnemonics (it derives them as BNB)")
    return notes


def sealed_form(finding: Finding) -> tuple[str, bytearray]:
    """The vault wallet type and the secret to seal for an importable finding (the caller wipes it)."""
    entry = finding.entry
    if finding.signable:
        if entry.kind is Kind.MNEMONIC:
            return "MNEMONIC", bytearray(" ".join(entry.fields["mnemonic"].split()).encode())
        return "PRIVATE_KEY", bytearray(entry.fields["privateKey"].strip().encode())
    body = json.dumps(entry.fields, ensure_ascii=False, separators=(",", ":")).encode()
    # The vault has two wallet types; a kept entry takes the one nearest to what it holds.
    return ("MNEMONIC" if entry.kind is Kind.MNEMONIC else "PRIVATE_KEY"), bytearray(ENVELOPE + body)


def entry_from_vault(row: Any, wallet_type: str, secret: bytes | bytearray) -> dict[str, Any]:
    """The Tatum entry for a vault wallet: a kept entry verbatim, else rebuilt in Tatum's field order.

    :param row: the wallet's :class:`~agent.vault.records.WalletRow`.
    """
    if bytes(secret[: len(ENVELOPE)]) == ENVELOPE:
        doc: dict[str, Any] = json.loads(bytes(secret[len(ENVELOPE) :]).decode())
        return doc
    text = bytes(secret).decode()
    if wallet_type == "MNEMONIC":
        return {"mnemonic": text, "xpub": row.xpub, "chain": row.chain, "testnet": row.testnet}
    return {"privateKey": text, "chain": row.chain, "testnet": row.testnet}


def summarize(findings: Iterable[Finding]) -> list[dict[str, Any]]:
    """Counts per (chain, network, type, status), in first-seen order: what the import shows first."""
    counts: dict[tuple[str, str, str, str], int] = {}
    for f in findings:
        e = f.entry
        net = "?" if e.testnet is None else ("testnet" if e.testnet else "mainnet")
        key = (e.chain or "?", net, e.kind.value, f.status.value)
        counts[key] = counts.get(key, 0) + 1
    return [{"chain": c, "network": n, "type": t, "status": s, "count": k} for (c, n, t, s), k in counts.items()]
