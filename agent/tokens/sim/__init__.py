"""Simulated hardware tokens for demos and tests. INSECURE by design: keys and PINs sit in clear.

The FIDO2 simulator is a CTAP 2.1 authenticator served over real CTAPHID framing, so python-fido2's
``CtapHidDevice``/``Ctap2``/``ClientPin``/``Fido2Client`` drive it exactly as they drive a USB key.
Its state lives in ``<home>/sim/<name>.fido2.json``; touches follow ``KMS_AGENT_SIM_TOUCH``
(:mod:`agent.tokens.sim.touch`) or an injected touch provider. The PIV card simulator lives in
:mod:`agent.tokens.sim.piv_card` / :mod:`agent.tokens.sim.piv_state`.
"""

from __future__ import annotations

from agent.tokens.sim.ctaphid import list_sim_hid_devices, open_sim_hid_device
from agent.tokens.sim.state import create_sim_token, set_plugged, sim_pin, sim_token_exists, sim_token_names
from agent.tokens.sim.touch import FixedTouch, TouchProvider, TouchResult

__all__ = [
    "FixedTouch",
    "TouchProvider",
    "TouchResult",
    "create_sim_token",
    "list_sim_hid_devices",
    "open_sim_hid_device",
    "set_plugged",
    "sim_pin",
    "sim_token_exists",
    "sim_token_names",
]
