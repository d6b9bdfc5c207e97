"""Decoding the log (``ev.decode``): every event as it was encoded, without keeping the strings of
their values alive in pydantic's cache (what pinned the scheduler's memory after a deep queue drained)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from pydantic import ValidationError

from conductor_contracts import events as ev
from tests.unit import test_dependency_properties as dependencies
from tests.unit import test_scheduling_properties as scheduling
from tests.unit.scheduling import submitted


@settings(max_examples=100, deadline=None)
@given(scheduling.nodes, scheduling.actions)
def test_the_events_of_a_scheduling_log_decode_as_they_were(nodes: Any, steps: Any) -> None:
    for _, event, _ in scheduling._run(nodes, steps).events:
        data = ev.encode(event)
        assert ev.decode(data) == event


@settings(max_examples=100, deadline=None)
@given(dependencies.steps)
def test_the_events_of_a_log_with_dependencies_decode_as_they_were(steps: Any) -> None:
    for _, event, _ in dependencies._run(steps)[0].events:
        data = ev.encode(event)
        assert ev.decode(data) == event


def test_what_cannot_be_decoded_is_refused() -> None:
    for data in (b"", b"{}", b'{"type": "NoSuchEvent"}', b"\xff", ev.encode(submitted())[:-2]):
        with pytest.raises(ValidationError):
            ev.decode(data)


def test_a_value_s_string_is_not_kept_for_the_next_event() -> None:
    # With pydantic's default cache both decodings would share the one cached string: it would live
    # on after the event, until a later string took its place in the cache.
    data = ev.encode(submitted(name="nightly-build", account="physics"))
    first, second = ev.decode(data), ev.decode(data)
    assert isinstance(first, ev.JobSubmitted) and isinstance(second, ev.JobSubmitted)
    assert first.name == second.name == "nightly-build"
    assert first.name is not second.name
    assert first.account is not second.account
