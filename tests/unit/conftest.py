"""Fixtures of the unit tests that several files share."""

from __future__ import annotations

from pathlib import Path

import pytest

from conductor_executor import compiled


@pytest.fixture(scope="session")
def built_supervisor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled job supervisor, built from its source for this session (``compiled.build``)."""
    if compiled.compiler() is None:
        pytest.skip("no C compiler here: executors use the shell supervisor")
    built = compiled.build(tmp_path_factory.mktemp("supervisor"))
    assert built is not None, "a C compiler is here but the supervisor did not build or failed its check"
    return built
