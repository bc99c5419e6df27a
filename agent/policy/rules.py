"""The policy document: rules per wallet and chain over a default, with a strict canonical form.

The policy will live in the vault header (MAC'd and signed with the rest), so one policy has
exactly one encoding: :meth:`Policy.to_dict` gives a JSON- and CBOR-able map with text keys,
decimal-string amounts and sorted lists; :meth:`Policy.from_dict` refuses unknown keys, missing
keys, wrong types (a bool is not an integer) and non-canonical lists. :meth:`Policy.canonical_bytes`
is its canonical CBOR, and :meth:`Policy.sha256` is what a policy-change approval signs
(docs/policy.md §4-5).

Overrides are partial: a chain's and then a wallet's override replace individual fields of the
default rule (a replaced ``assets`` map or ``allowlist`` replaces the whole map or list). The
top-level ``frozen`` switch cannot be overridden by anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import cbor2

from agent.errors import PolicyFormatError
from agent.policy.summary import canonical_ref

VERSION = 1
#: How long a policy-change request stays open (Fireblocks: 7 days).
POLICY_CHANGE_TTL = 7 * 24 * 3600
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_MAX_AMOUNT = 1 << 256
#: Default of ``Rule.max_fee_percent``: a fee above 10 % of the value sent escalates.
DEFAULT_MAX_FEE_PERCENT = 10
#: Rule keys added after the first version-1 documents were written: a ``default`` rule without
#: them is read with their default values (vault headers written before keep working).
_LATER_FIELDS = frozenset({"max_fee_percent"})


class UnknownDestination(StrEnum):
    """What to do when a (non-change) output pays an address that is not on the allowlist."""

    DENY = "deny"
    #: Require ``escalate_by`` more approvals (BitGo's "require approval").
    ESCALATE = "escalate"
    #: No allowlist in force for this scope.
    ALLOW = "allow"


class OverLimit(StrEnum):
    """What to do when a per-transaction or velocity limit would be exceeded."""

    DENY = "deny"
    ESCALATE = "escalate"


class VelocityScope(StrEnum):
    """Which earlier withdrawals count toward a rolling limit."""

    #: Same wallet (signatureId).
    WALLET = "wallet"
    #: Every wallet on the same chain and network.
    CHAIN = "chain"


@dataclass(frozen=True)
class AssetLimits:
    """Limits in base units; None means no limit of that kind. Listing an asset is what permits it."""

    per_tx: int | None = None
    per_hour: int | None = None
    per_day: int | None = None


@dataclass(frozen=True)
class TimeWindow:
    """When withdrawals may be signed, in UTC. ``weekdays``: 0 = Monday ... 6 = Sunday.

    Hours are ``start_hour <= hour < end_hour``; a window with ``start_hour > end_hour`` wraps past
    midnight (22 to 6). The weekday is that of the current instant.
    """

    weekdays: frozenset[int] = frozenset(range(7))
    start_hour: int = 0
    end_hour: int = 24

    def allows(self, weekday: int, hour: int) -> bool:
        if weekday not in self.weekdays:
            return False
        if self.start_hour < self.end_hour:
            return self.start_hour <= hour < self.end_hour
        return hour >= self.start_hour or hour < self.end_hour


@dataclass(frozen=True)
class Rule:
    """Everything that governs one wallet's withdrawals once overrides are applied."""

    #: m: distinct operators who must approve.
    approvals_required: int = 2
    initiator_may_approve: bool = False
    #: Seconds an individual approval stays valid.
    approval_ttl: int = 2 * 3600
    frozen: bool = False
    #: Assets that may leave, with their limits. An asset not listed is denied (fail closed).
    assets: Mapping[str, AssetLimits] = field(default_factory=dict)
    #: Known destinations (cold wallets, exchanges), compared by :func:`canonical_ref`.
    allowlist: frozenset[str] = frozenset()
    unknown_destination: UnknownDestination = UnknownDestination.ESCALATE
    #: k: extra approvals when any check escalates (m + k in all, once, however many checks escalate).
    escalate_by: int = 1
    over_limit: OverLimit = OverLimit.DENY
    velocity_scope: VelocityScope = VelocityScope.WALLET
    time_window: TimeWindow | None = None
    #: Whether transactions the decoder cannot read (unknown calldata) may be signed at all.
    allow_contract_calls: bool = False
    #: A fee above this percentage of the value sent (or, when every output is change, of the value
    #: moved within the wallet) escalates; None turns the check off (docs/policy.md §3, ``fee``).
    max_fee_percent: int | None = DEFAULT_MAX_FEE_PERCENT

    def __post_init__(self) -> None:
        object.__setattr__(self, "assets", {canonical_ref(k): v for k, v in self.assets.items()})
        object.__setattr__(self, "allowlist", frozenset(canonical_ref(a) for a in self.allowlist))
        _check_rule_values(self)


RULE_FIELDS = tuple(f.name for f in dataclasses.fields(Rule))


@dataclass(frozen=True)
class RuleOverride:
    """Some fields of :class:`Rule`, replacing the inherited ones. Build with :meth:`of`."""

    changes: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, **changes: Any) -> RuleOverride:
        unknown = set(changes) - set(RULE_FIELDS)
        if unknown:
            raise PolicyFormatError(f"rule override has unknown fields {sorted(unknown)}")
        dataclasses.replace(Rule(), **changes)  # type-check the values now, not at first use
        return cls(dict(changes))

    def apply(self, rule: Rule) -> Rule:
        return dataclasses.replace(rule, **self.changes)


@dataclass(frozen=True)
class Policy:
    """The whole policy: a default rule, per-chain and per-wallet overrides, and the freeze switch."""

    generation: int
    default: Rule = field(default_factory=Rule)
    #: Overrides by chain name (``BTC``, ``ETH``), applied first.
    chains: Mapping[str, RuleOverride] = field(default_factory=dict)
    #: Overrides by wallet signatureId, applied after the chain's.
    wallets: Mapping[str, RuleOverride] = field(default_factory=dict)
    #: Emergency lock: nothing is signed while set, whatever the overrides say.
    frozen: bool = False
    #: Distinct operators who must approve a change of this policy (Ledger's admin rule).
    admin_approvals: int = 2
    #: Whether a running agent may hold approvers' shares in memory until the quorum signs
    #: (docs/threat-model.md). Off: every signing needs a quorum of touches at once. The canonical
    #: form omits the key when it is true (documents written before it existed are unchanged).
    hold_shares: bool = True

    def __post_init__(self) -> None:
        if not _uint(self.generation):
            raise PolicyFormatError("policy generation must be an unsigned integer")
        if not _uint(self.admin_approvals) or self.admin_approvals < 1:
            raise PolicyFormatError("policy admin_approvals must be at least 1")
        if not isinstance(self.frozen, bool):
            raise PolicyFormatError("policy frozen must be a boolean")
        if not isinstance(self.hold_shares, bool):
            raise PolicyFormatError("policy hold_shares must be a boolean")

    def rule_for(self, chain: str, signature_id: str) -> Rule:
        rule = self.default
        if chain in self.chains:
            rule = self.chains[chain].apply(rule)
        if signature_id in self.wallets:
            rule = self.wallets[signature_id].apply(rule)
        return rule

    def rule_sources(self, chain: str, signature_id: str) -> list[str]:
        """Which layers made up the rule, for explanations: ``default``, ``chain:X``, ``wallet:Y``."""
        return (
            ["default"]
            + ([f"chain:{chain}"] if chain in self.chains else [])
            + ([f"wallet:{signature_id}"] if signature_id in self.wallets else [])
        )

    def to_dict(self) -> dict[str, Any]:
        doc = {
            "v": VERSION,
            "generation": self.generation,
            "frozen": self.frozen,
            "admin_approvals": self.admin_approvals,
            "default": _rule_to_dict(self.default, RULE_FIELDS),
            "chains": {k: _rule_to_dict(v.apply(Rule()), tuple(v.changes)) for k, v in sorted(self.chains.items())},
            "wallets": {k: _rule_to_dict(v.apply(Rule()), tuple(v.changes)) for k, v in sorted(self.wallets.items())},
        }
        if not self.hold_shares:
            doc["hold_shares"] = False
        return doc

    @classmethod
    def from_dict(cls, raw: Any) -> Policy:
        """Strict inverse of :meth:`to_dict`.

        :raises PolicyFormatError: naming the offending path.
        """
        keys = {"v", "generation", "frozen", "admin_approvals", "default", "chains", "wallets"}
        _keys(raw, keys | ({"hold_shares"} if isinstance(raw, dict) and "hold_shares" in raw else set()), "policy")
        if raw["v"] != VERSION or not _uint(raw["v"]):
            raise PolicyFormatError(f"policy.v must be {VERSION}")
        for name in ("generation", "admin_approvals"):
            if not _uint(raw[name]):
                raise PolicyFormatError(f"policy.{name} must be an unsigned integer")
        _bool(raw["frozen"], "policy.frozen")
        hold_shares = raw.get("hold_shares", True)
        _bool(hold_shares, "policy.hold_shares")
        default = Rule(**_rule_from_dict(raw["default"], "policy.default", partial=False))
        overrides: dict[str, dict[str, RuleOverride]] = {}
        for scope in ("chains", "wallets"):
            table = raw[scope]
            if not isinstance(table, dict) or not all(isinstance(k, str) for k in table):
                raise PolicyFormatError(f"policy.{scope} must be a map with text keys")
            overrides[scope] = {
                k: RuleOverride.of(**_rule_from_dict(v, f"policy.{scope}.{k}", partial=True)) for k, v in table.items()
            }
        return cls(
            raw["generation"],
            default,
            overrides["chains"],
            overrides["wallets"],
            raw["frozen"],
            raw["admin_approvals"],
            hold_shares,
        )

    def canonical_bytes(self) -> bytes:
        """Canonical CBOR of :meth:`to_dict` (RFC 8949 §4.2.1): what the header stores and hashes cover."""
        return bytes(cbor2.dumps(self.to_dict(), canonical=True))

    @classmethod
    def from_canonical_bytes(cls, data: bytes) -> Policy:
        try:
            raw = cbor2.loads(data)
        except Exception as exc:  # cbor2 raises several unrelated types for garbage
            raise PolicyFormatError(f"policy is not valid CBOR ({type(exc).__name__})") from None
        policy = cls.from_dict(raw)
        expected = policy.to_dict()
        for name in _LATER_FIELDS - set(raw["default"]):
            del expected["default"][name]  # a document written before the field existed
        if bytes(cbor2.dumps(expected, canonical=True)) != bytes(data):
            raise PolicyFormatError("policy is not in canonical CBOR form")
        return policy

    def sha256(self) -> bytes:
        return hashlib.sha256(self.canonical_bytes()).digest()


def initial_policy(quorum: int) -> dict[str, Any]:
    """A new vault's policy document: withdrawals and policy changes need as many distinct
    approvers as the vault's unlock quorum (what ``create_vault`` is given at init)."""
    return Policy(generation=1, default=Rule(approvals_required=quorum), admin_approvals=quorum).to_dict()


class PolicyHolder(Protocol):
    """Anything carrying a policy document, such as ``agent.vault.records.VaultHeader``."""

    @property
    def policy(self) -> Mapping[str, Any]: ...


def policy_of(header: PolicyHolder) -> Policy:
    """The policy in force in a (verified) vault header, parsed strictly.

    :raises PolicyFormatError: naming the offending path.
    """
    return Policy.from_dict(header.policy)


# --- (de)serialisation helpers ----------------------------------------------------------------
def _uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyFormatError(f"{path} must be true or false")
    return value


def _keys(
    raw: Any, allowed: set[str], path: str, *, partial: bool = False, optional: frozenset[str] = frozenset()
) -> None:
    if not isinstance(raw, dict):
        raise PolicyFormatError(f"{path} must be a map")
    unknown = {str(k) for k in raw} - allowed
    if unknown:
        raise PolicyFormatError(f"{path} has unknown keys {sorted(unknown)}")
    missing = allowed - set(raw) - optional
    if missing and not partial:
        raise PolicyFormatError(f"{path} is missing {sorted(missing)}")


def _amount_out(value: int | None) -> str | None:
    return None if value is None else str(value)


def _amount_in(value: Any, path: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str) or _DECIMAL.fullmatch(value) is None:
        raise PolicyFormatError(f"{path} must be null or a decimal string of base units")
    return int(value)


def _sorted_unique(value: Any, path: str, kind: type) -> list[Any]:
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise PolicyFormatError(f"{path} must be a list of {kind.__name__}")
    if value != sorted(set(value)):
        raise PolicyFormatError(f"{path} must be sorted without duplicates (canonical form)")
    return value


def _rule_to_dict(rule: Rule, names: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(rule, name)
        if name == "assets":
            value = {
                k: {
                    "per_tx": _amount_out(v.per_tx),
                    "per_hour": _amount_out(v.per_hour),
                    "per_day": _amount_out(v.per_day),
                }
                for k, v in sorted(value.items())
            }
        elif name == "allowlist":
            value = sorted(value)
        elif name == "time_window" and value is not None:
            value = {"weekdays": sorted(value.weekdays), "start_hour": value.start_hour, "end_hour": value.end_hour}
        elif isinstance(value, StrEnum):
            value = value.value
        out[name] = value
    return out


def _enum(cls: type[StrEnum]) -> Callable[[Any, str], Any]:
    def parse(value: Any, path: str) -> Any:
        try:
            return cls(value)
        except ValueError:
            raise PolicyFormatError(f"{path} must be one of {[m.value for m in cls]}") from None

    return parse


def _uint_field(value: Any, path: str) -> int:
    if not _uint(value):
        raise PolicyFormatError(f"{path} must be an unsigned integer")
    return int(value)


def _fold(value: str, path: str) -> str:
    """An asset id or allowlist entry in comparison spelling; ``0x`` entries must already be lower case.

    Other case-insensitive formats (bech32, CashAddr, ``xdc`` hex) are folded rather than refused:
    documents written before they were folded may hold them in upper case, and refusing would make
    such a vault's policy unreadable. :meth:`Policy.to_dict` writes them folded.
    """
    if value[:2] in ("0x", "0X") and value != value.lower():
        raise PolicyFormatError(f"{path}: {value!r} must be spelled in lower case (canonical form)")
    return canonical_ref(value)


def _assets_in(value: Any, path: str) -> dict[str, AssetLimits]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise PolicyFormatError(f"{path} must be a map with text keys")
    out = {}
    for asset, limits in value.items():
        key = _fold(asset, f"{path}.{asset}")
        if key in out:
            raise PolicyFormatError(f"{path} lists {key} twice (in different case)")
        _keys(limits, {"per_tx", "per_hour", "per_day"}, f"{path}.{asset}")
        out[key] = AssetLimits(
            *(_amount_in(limits[k], f"{path}.{asset}.{k}") for k in ("per_tx", "per_hour", "per_day"))
        )
    return out


def _allowlist_in(value: Any, path: str) -> frozenset[str]:
    items = [_fold(a, path) for a in _sorted_unique(value, path, str)]
    if len(set(items)) != len(items):
        raise PolicyFormatError(f"{path} lists the same address twice (in different case)")
    return frozenset(items)


def _percent_in(value: Any, path: str) -> int | None:
    if value is None:
        return None
    return _uint_field(value, path)


def _window_in(value: Any, path: str) -> TimeWindow | None:
    if value is None:
        return None
    _keys(value, {"weekdays", "start_hour", "end_hour"}, path)
    return TimeWindow(
        frozenset(_sorted_unique(value["weekdays"], f"{path}.weekdays", int)),
        _uint_field(value["start_hour"], f"{path}.start_hour"),
        _uint_field(value["end_hour"], f"{path}.end_hour"),
    )


_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "approvals_required": _uint_field,
    "initiator_may_approve": _bool,
    "approval_ttl": _uint_field,
    "frozen": _bool,
    "assets": _assets_in,
    "allowlist": _allowlist_in,
    "unknown_destination": _enum(UnknownDestination),
    "escalate_by": _uint_field,
    "over_limit": _enum(OverLimit),
    "velocity_scope": _enum(VelocityScope),
    "time_window": _window_in,
    "allow_contract_calls": _bool,
    "max_fee_percent": _percent_in,
}


def _rule_from_dict(raw: Any, path: str, *, partial: bool) -> dict[str, Any]:
    _keys(raw, set(RULE_FIELDS), path, partial=partial, optional=_LATER_FIELDS)
    return {name: _PARSERS[name](value, f"{path}.{name}") for name, value in raw.items()}


def _check_rule_values(rule: Rule) -> None:
    """Value rules shared by code-built and parsed rules: impossible settings are refused early."""

    def bad(msg: str) -> PolicyFormatError:
        return PolicyFormatError(f"rule: {msg}")

    for name in ("approvals_required", "approval_ttl", "escalate_by"):
        if not _uint(getattr(rule, name)):
            raise bad(f"{name} must be an unsigned integer")
    if rule.approvals_required < 1:
        raise bad("approvals_required must be at least 1 (no withdrawal without an approval)")
    if rule.approval_ttl < 60:
        raise bad("approval_ttl must be at least 60 seconds")
    for name in ("initiator_may_approve", "frozen", "allow_contract_calls"):
        if not isinstance(getattr(rule, name), bool):
            raise bad(f"{name} must be a boolean")
    for name, cls in (
        ("unknown_destination", UnknownDestination),
        ("over_limit", OverLimit),
        ("velocity_scope", VelocityScope),
    ):
        if not isinstance(getattr(rule, name), cls):
            raise bad(f"{name} must be a {cls.__name__}")
    for asset, limits in rule.assets.items():
        if not isinstance(asset, str) or not asset or not isinstance(limits, AssetLimits):
            raise bad("assets must map asset ids to AssetLimits")
        for value in (limits.per_tx, limits.per_hour, limits.per_day):
            if value is not None and (not _uint(value) or value > _MAX_AMOUNT):
                raise bad(f"limits of {asset} must be non-negative integers in base units")
    if not all(isinstance(a, str) and a for a in rule.allowlist):
        raise bad("allowlist entries must be non-empty text")
    if rule.max_fee_percent is not None and not _uint(rule.max_fee_percent):
        raise bad("max_fee_percent must be null or an unsigned integer (percent of the value sent)")
    window = rule.time_window
    if window is not None:
        if not isinstance(window, TimeWindow) or not window.weekdays or not set(window.weekdays) <= set(range(7)):
            raise bad("time_window weekdays must be a non-empty subset of 0 (Monday) .. 6 (Sunday)")
        if not (
            _uint(window.start_hour)
            and _uint(window.end_hour)
            and window.start_hour <= 23
            and 1 <= window.end_hour <= 24
            and window.start_hour != window.end_hour
        ):
            raise bad("time_window hours must satisfy 0 <= start <= 23, 1 <= end <= 24, start != end")
