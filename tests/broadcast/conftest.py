"""A real anvil (tests/chains/conftest.py) and one vault for the module, with simulated tokens that touch themselves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.broadcast.helpers import World, make_world
from tests.chains.conftest import Node, anvil  # noqa: F401


@pytest.fixture(scope="module")
def world(anvil: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:  # noqa: F811
    home = tmp_path_factory.mktemp("broadcast") / "kms"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KMS_AGENT_HOME", str(home))
        mp.setenv("KMS_AGENT_SIM_TOUCH", "auto")
        yield make_world(home, anvil)
