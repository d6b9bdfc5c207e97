"""The connection and buckets every service shares."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from conductor_contracts import subjects
from conductor_platform.bus import Bus, connect


def _disconnects() -> float:
    return REGISTRY.get_sample_value("conductor_nats_disconnects_total") or 0.0


async def test_closing_the_connection_is_neither_warned_nor_counted_as_a_disconnect(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Every planned stop of a service and every `conductor compact` warned "disconnected from NATS;
    # reconnecting" and counted one in conductor_nats_disconnects_total, which alerts watch.
    bus = await connect(nats_url, name="closing")
    before = _disconnects()
    with caplog.at_level(logging.INFO, logger="conductor_platform.bus"):
        await bus.close()
    assert bus.nc.is_closed
    assert _disconnects() == before
    assert "disconnected from NATS" not in caplog.text


async def test_a_lease_ttl_changed_since_the_bucket_was_made_is_applied(bus: Bus) -> None:
    # It was kept at the first start's: a scheduler renewing at a longer ttl's pace lost its lease
    # between renewals and took it back, every 20 s.
    await bus.leases(10.0)
    await bus.leases(30.0)
    info = await bus.js.stream_info(f"KV_{subjects.LEASES_BUCKET}")
    assert info.config.max_age == 30.0
    # Lowered too: NATS refused a max age under the bucket's duplicate window, for ever (a review of the fix).
    await bus.leases(5.0)
    info = await bus.js.stream_info(f"KV_{subjects.LEASES_BUCKET}")
    assert info.config.max_age == 5.0 and (info.config.duplicate_window or 0) <= 5.0
