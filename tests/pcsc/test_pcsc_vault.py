"""The whole stack over real PC/SC: a vault whose quorum mixes a PIV operator and a FIDO2 operator,
both reached through pcscd + vpcd (PIV by serial, FIDO2 over NFCCTAP via python-fido2's CtapPcscDevice)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.cli.context import Paths
from agent.errors import QuorumNotMet
from agent.policy import initial_policy
from agent.tokens.discovery import find_token, open_token
from agent.tokens.piv_token import verify_approval
from agent.tokens.sim import create_sim_token
from agent.tokens.sim.piv_state import create_piv_sim
from agent.vault.vault import PublicVault, create_vault
from tests.pcsc.conftest import Pcscd, Prompts, _unavailable, _wait, reader_serial
from tests.pcsc.test_pcsc_server import _fido_devices, serving

pytestmark = [pytest.mark.pcsc, pytest.mark.xdist_group("pcsc")]


def test_mixed_piv_and_fido2_quorum_over_pcscd(pcscd: Pcscd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if pcscd.reader2 is None:
        _unavailable("this pcscd's vpcd reader has a single slot")
    monkeypatch.setenv("KMS_AGENT_SIM_TOUCH", "auto")
    cards = tmp_path / "cards"  # the simulators' own state: not where the agent looks for sim: tokens
    home = tmp_path / "kms"
    home.mkdir(mode=0o700)
    serial = create_piv_sim(cards, "alice-piv").read().serial
    create_sim_token(cards, "bob-fido")
    prompts = Prompts()
    paths = Paths(home)
    with serving(cards, pcscd, piv=["alice-piv"], fido2=["bob-fido"]):
        assert _wait(lambda: reader_serial(pcscd.reader) == serial, 10)
        assert _wait(lambda: bool(_fido_devices(pcscd.reader2 or "")), 10)
        # bob's simulator chains to the test CA of *another* home (``cards``): to this agent that is an
        # unknown root, so it enrols only with the operator's explicit allow_unattested.
        tokens = [
            ("alice", open_token(f"piv:{serial}", home)),
            ("bob", open_token("fido2", home, allow_unattested=True)),
        ]
        assert [t.kind for _, t in tokens] == ["piv", "fido2-hmac"]
        pending = create_vault(paths.vault, paths.pin, tokens, 2, prompts, policy=initial_policy(2))
        pending.commit().close()

        vault = PublicVault.load(paths.vault, paths.pin)
        assert [s.kind for s in vault.header.slots] == ["piv", "fido2-hmac"]
        roots = [s.public["attestation_root"] for s in vault.header.slots]
        assert roots == ["simulator", "none"]
        digest = hashlib.sha256(b"an approval digest").digest()
        with vault.unlock(lambda slot: find_token(slot, home), prompts, digest=digest) as opened:
            touched = {t.operator: t for t in opened.touches}
        assert set(touched) == {"alice", "bob"}
        # Alice's PIV approval verifies against the attested signing key recorded at enrolment.
        piv_slot = vault.header.slots[0].public
        assert verify_approval(piv_slot, digest, touched["alice"].approval.signature)
        assert not verify_approval(piv_slot, bytes(32), touched["alice"].approval.signature)
        assert touched["bob"].approval.user_verified

    # With both cards gone, the vault stays shut and unchanged.
    before = paths.vault.read_bytes()
    with pytest.raises(QuorumNotMet):
        PublicVault.load(paths.vault, paths.pin).unlock(lambda slot: find_token(slot, home), prompts)
    assert paths.vault.read_bytes() == before
