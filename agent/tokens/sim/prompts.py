"""Prompts that answer for simulated tokens: for the demo, benchmarks and tests. INSECURE by design.

Each PIN prompt is answered with the token's own current PIN (or an override given per label, to
test wrong PINs); touch notices and PIN requests are recorded so callers can check who was asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SimulatorPrompts:
    home: Path
    #: label -> PIN to answer instead of the token's own (e.g. a wrong one).
    pins: dict[str, str] = field(default_factory=dict)
    touched: list[str] = field(default_factory=list)
    asked: list[tuple[str, int | None]] = field(default_factory=list)

    def touch(self, token_label: str) -> None:
        self.touched.append(token_label)

    def pin(self, token_label: str, attempts_remaining: int | None) -> bytearray:
        from agent.tokens.sim import simulated_pin

        self.asked.append((token_label, attempts_remaining))
        if token_label in self.pins:
            return bytearray(self.pins[token_label].encode())
        return bytearray(simulated_pin(self.home, token_label.removeprefix("sim:")).encode())
