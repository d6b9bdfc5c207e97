from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system import OwnServers, System, system_on_own_servers


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[tuple[System, OwnServers]]:
    with system_on_own_servers(tmp_path, "chaos") as running:
        yield running
