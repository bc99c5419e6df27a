"""Simulated hardware tokens for demos and tests. INSECURE by design: keys and PINs sit in clear.

The FIDO2 simulator is a CTAP 2.1 authenticator served over real CTAPHID framing, so python-fido2's
``CtapHidDevice``/``Ctap2``/``ClientPin``/``Fido2Client`` drive it exactly as they drive a USB key.
Its state lives in ``<home>/sim/<name>.fido2.json``; touches follow ``KMS_AGENT_SIM_TOUCH``
(:mod:`agent.tokens.sim.touch`) or an injected touch provider. The PIV card simulator lives in
:mod:`agent.tokens.sim.piv_card` / :mod:`agent.tokens.sim.piv_state`.
"""

from __future__ import annotations

from pathlib import Path

from agent.tokens.sim.ctaphid import list_sim_hid_devices, open_sim_hid_device
from agent.tokens.sim.piv_state import create_piv_sim, list_piv_sims, piv_sim_pin
from agent.tokens.sim.state import (
    create_sim_token,
    set_plugged,
    sim_pin,
    sim_token_exists,
    sim_token_identity,
    sim_token_names,
)
from agent.tokens.sim.touch import FixedTouch, TouchProvider, TouchResult


def simulated_pin(home: Path, name: str) -> str:
    """The PIN a simulated token (FIDO2 or PIV) has now: for automated demos and tests only."""
    from agent.tokens.sim.piv_state import piv_state_path

    if piv_state_path(home, name).exists():
        return piv_sim_pin(home, name)
    return sim_pin(home, name)


__all__ = [
    "FixedTouch",
    "TouchProvider",
    "TouchResult",
    "create_piv_sim",
    "create_sim_token",
    "list_piv_sims",
    "list_sim_hid_devices",
    "open_sim_hid_device",
    "piv_sim_pin",
    "set_plugged",
    "sim_pin",
    "sim_token_exists",
    "sim_token_identity",
    "sim_token_names",
    "simulated_pin",
]
