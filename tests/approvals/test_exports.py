"""Pin the public surface of the three issue-#5 packages (httpx's test_exported_members)."""

from __future__ import annotations

import agent.approvals
import agent.audit
import agent.policy


def test_exported_members() -> None:
    for module in (agent.approvals, agent.policy, agent.audit):
        exported = set(module.__all__)
        assert exported == {
            n
            for n in dir(module)
            if not n.startswith("_") and n not in {"annotations"} and not isinstance(getattr(module, n), type(agent))
        }, module.__name__
        assert all(hasattr(module, n) for n in exported)
