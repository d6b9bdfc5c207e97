"""The JetStream side every service shares: connect, make sure the stream exists, publish events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    PubAck,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from prometheus_client import Counter

from conductor_contracts import events as ev
from conductor_contracts import subjects

log = logging.getLogger(__name__)

WRONG_LAST_SEQUENCE = 10071
DUPLICATE_IN_BATCH = 10201  # an atomic batch holds a message id the stream has already
MAX_BATCH = 1000  # messages in one atomic batch (nats-server's limit)

# Of this process's connections (each service exports its own).
DISCONNECTS = Counter("conductor_nats_disconnects", "Times a NATS connection of this process was lost")
RECONNECTS = Counter("conductor_nats_reconnects", "Times a NATS connection of this process came back")
PUBLISH_FAILURES = Counter(
    "conductor_nats_publish_failures", "Publishes of this process that failed (refused, timed out, NATS away)"
)


@contextlib.contextmanager
def _counting_failures() -> Iterator[None]:
    try:
        yield
    except (APIError, BatchRefused) as err:
        if err.err_code != WRONG_LAST_SEQUENCE:  # an expectation that did not hold is an answer
            PUBLISH_FAILURES.inc()
        raise
    except Exception:
        PUBLISH_FAILURES.inc()
        raise


class BatchRefused(Exception):
    """The stream refused an atomic batch (too large, incomplete, a message it would not store)."""

    def __init__(self, message: str, err_code: int | None = None) -> None:
        super().__init__(message)
        self.err_code = err_code


class FencedOut(Exception):
    """A fenced publish was rejected: someone else decided since the state we decided from."""


@contextlib.contextmanager
def _fenced() -> Iterator[None]:
    """A decision refused by fencing is ``FencedOut`` (no failure); any other failure is counted."""
    try:
        yield
    except (APIError, BatchRefused) as err:
        if err.err_code == WRONG_LAST_SEQUENCE:
            raise FencedOut(str(err)) from err
        PUBLISH_FAILURES.inc()
        raise
    except Exception:
        PUBLISH_FAILURES.inc()
        raise


@dataclass
class Bus:
    nc: Client
    js: JetStreamContext
    stream: str = subjects.STREAM
    # Copies of the stream and of the KV / object store buckets this bus creates (JetStream R1/R3/R5).
    replicas: int = 1
    _outputs: ObjectStore | None = field(default=None, repr=False)
    # Set by ``close``: a connection closed here is not one nats-py closed for good (closed.py).
    closing: bool = field(default=False, repr=False)

    async def publish(
        self,
        event: ev.Event,
        *,
        by_scheduler: bool = False,
        msg_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> int:
        """Publish and wait for the stream's ack; returns the stream sequence. ``headers``: more
        headers (a ``traceparent``); they never replace the Nats-Msg-Id."""
        return int((await self.publish_acked(event, by_scheduler=by_scheduler, msg_id=msg_id, headers=headers)).seq)

    async def publish_acked(
        self,
        event: ev.Event,
        *,
        by_scheduler: bool = False,
        msg_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> PubAck:
        """Publish with extra ``headers``; the whole ack, which says whether the stream had the
        message id already (``duplicate``). The Nats-Msg-Id is ours: headers cannot change dedupe."""
        with _counting_failures():
            return await self.js.publish(
                subjects.subject_for(event, by_scheduler=by_scheduler),
                ev.encode(event),
                headers=(headers or {})
                | {"Nats-Msg-Id": msg_id or subjects.dedupe_id(event, by_scheduler=by_scheduler)},
                stream=self.stream,
            )

    async def publish_batch(
        self,
        events: list[ev.Event],
        timeout_s: float = 10.0,
        headers: dict[str, str] | None = None,
        first_headers: dict[str, str] | None = None,
    ) -> int:
        """Publish ``events`` as one atomic batch (at most 1,000): the stream stores all of them, with
        consecutive sequences, or none (a batch never committed is dropped). Returns the last one's
        sequence. ``headers`` (a ``traceparent``) go on every message, ``first_headers`` on the first
        (an expectation there holds or fails for the whole batch: ``publish_fenced_batch``). Raises
        ``BatchRefused`` when the server refuses it, ``TimeoutError`` when it does not answer (then
        the batch may or may not be stored: nothing of it, or all of it)."""
        messages = [(subjects.subject_for(event), ev.encode(event), dict(headers or {})) for event in events]
        if messages and first_headers:
            messages[0][2].update(first_headers)
        with _counting_failures():
            return await self._publish_atomic(messages, timeout_s)

    async def _publish_atomic(self, messages: list[tuple[str, bytes, dict[str, str]]], timeout_s: float) -> int:
        """Publish (subject, data, headers) as one atomic batch; the batch headers are added here."""
        if not self.nc.is_connected:
            # nats-py would buffer the batch and send it on reconnect, committing it after the caller
            # was told it failed.
            raise ConnectionError("not connected to NATS")
        batch_id = uuid.uuid4().hex
        last = len(messages)
        for number, (subject, data, headers) in enumerate(messages, start=1):
            batch = headers | {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(number)}
            if number < last:
                await self.nc.publish(subject, data, headers=batch)
                continue
            batch["Nats-Batch-Commit"] = "1"
            try:
                reply = await self.nc.request(subject, data, headers=batch, timeout=timeout_s)
            except NatsTimeoutError as err:
                raise TimeoutError("no answer to the batch's commit") from err
            answer = json.loads(reply.data or b"{}")
            if "error" in answer or "seq" not in answer:
                error = answer.get("error", {})
                code = error.get("err_code")
                raise BatchRefused(f"{error.get('description', answer)} (err_code {code})", code)
            return int(answer["seq"])
        raise ValueError("an empty batch")

    async def publish_fenced_batch(
        self,
        decisions: Sequence[tuple[ev.Event, dict[str, str]]],
        expected_last_scheduler_seq: int,
        timeout_s: float = 10.0,
    ) -> int:
        """Publish scheduler decisions (each with its own extra headers, a ``traceparent``) as one
        atomic batch (at most 1,000), only if no other decision was stored since ``expected``: all of
        them are stored, with consecutive sequences, or none. Returns the last one's sequence.

        The fence is on the first message only: nats-server (2.15) checks an expectation inside a
        batch against the stream as it was before the batch, so one that holds on the first holds
        for the whole batch, and one that fails refuses the whole batch. Raises ``FencedOut`` then;
        ``BatchRefused`` for any other refusal (``DUPLICATE_IN_BATCH``: a message id the stream had
        already, where a single publish would have been acknowledged as a duplicate);
        ``TimeoutError`` when the server does not answer (all of it stored, or nothing)."""
        fence = {
            "Nats-Expected-Last-Subject-Sequence": str(expected_last_scheduler_seq),
            "Nats-Expected-Last-Subject-Sequence-Subject": subjects.SCHEDULER_ALL,
        }
        messages = []
        for number, (event, headers) in enumerate(decisions):
            ours = {"Nats-Msg-Id": subjects.dedupe_id(event, by_scheduler=True)} | (fence if number == 0 else {})
            messages.append((subjects.subject_for(event, by_scheduler=True), ev.encode(event), headers | ours))
        with _fenced():
            return await self._publish_atomic(messages, timeout_s)

    async def publish_fenced(
        self, event: ev.Event, expected_last_scheduler_seq: int, headers: dict[str, str] | None = None
    ) -> int:
        """Publish a scheduler decision only if no other decision was stored since ``expected``.
        ``headers``: more headers (a ``traceparent``); the fencing and dedupe ones always win."""
        headers = (headers or {}) | {
            "Nats-Msg-Id": subjects.dedupe_id(event, by_scheduler=True),
            "Nats-Expected-Last-Subject-Sequence": str(expected_last_scheduler_seq),
            "Nats-Expected-Last-Subject-Sequence-Subject": subjects.SCHEDULER_ALL,
        }
        with _fenced():
            ack = await self.js.publish(
                subjects.subject_for(event, by_scheduler=True), ev.encode(event), headers=headers, stream=self.stream
            )
        return int(ack.seq)

    async def leases(self, ttl_s: float = 10.0) -> KeyValue:
        """The leases bucket; a lease not renewed within ``ttl_s`` expires (the bucket's max age). A
        bucket made with another ttl is changed to this one: CONDUCTOR_LEASE_TTL_S raised after the first
        start was not applied, and the scheduler, renewing at its own pace, lost its lease between
        renewals and took it again, every 20 s."""
        try:
            kv = await self.js.key_value(subjects.LEASES_BUCKET)
        except NotFoundError:
            pass
        else:
            stream = f"KV_{subjects.LEASES_BUCKET}"
            config = (await self.js.stream_info(stream)).config
            if config.max_age is None or abs(config.max_age - ttl_s) > 1e-3:
                log.warning("the leases' ttl changes", extra={"was_s": config.max_age, "now_s": ttl_s})
                # NATS refuses a duplicate window longer than the max age: a ttl lowered (10 -> 5 s)
                # was refused for ever, and the scheduler never started.
                window = min(config.duplicate_window or ttl_s, ttl_s)
                await self.js.update_stream(replace(config, max_age=ttl_s, duplicate_window=window))
            return kv
        return await self._bucket(subjects.LEASES_BUCKET, ttl_s)

    async def _bucket(self, name: str, ttl_s: float) -> KeyValue:
        """A KV bucket of one value per key, on disk, with this connection's replicas."""
        config = KeyValueConfig(bucket=name, ttl=ttl_s, history=1, storage=StorageType.FILE, replicas=self.replicas)
        return await self.js.create_key_value(config)

    async def heartbeats(self, keep_s: float = 24 * 3600) -> KeyValue:
        """The node heartbeats bucket; a key unwritten for ``keep_s`` goes (a node gone for good)."""
        try:
            return await self.js.key_value(subjects.HEARTBEATS_BUCKET)
        except NotFoundError:
            return await self._bucket(subjects.HEARTBEATS_BUCKET, keep_s)

    async def outputs(self) -> ObjectStore:
        """The job-output bucket, looked up (or created) once per connection."""
        if self._outputs is None:
            try:
                self._outputs = await self.js.object_store(subjects.OUTPUT_BUCKET)
            except NotFoundError:
                self._outputs = await self.js.create_object_store(
                    subjects.OUTPUT_BUCKET, config=ObjectStoreConfig(storage=StorageType.FILE, replicas=self.replicas)
                )
        return self._outputs

    async def close(self) -> None:
        # Every publish here is awaited to its ack, so there is nothing in flight to drain. With the
        # server gone, closing can fail on the dead socket: the connection is over either way.
        self.closing = True
        if not self.nc.is_closed:
            try:
                await self.nc.close()
            except Exception as err:
                log.info("NATS connection closed uncleanly: %s", err or type(err).__name__)


class LogReader:
    """The whole stream in order from a sequence, fetched as the reader asks (a pull consumer, no
    acks): the server sends no more than one batch ahead, so a reader slower than the log (a
    scheduler replaying a million events) holds one batch, where a push consumer would overflow the
    client's buffer and drop messages. Gap-free: one fetcher, messages in stream order; each batch is
    checked to follow the last one, and any gap, or a consumer the server lost (a restart), raises,
    and the caller reads again from the sequence after the last one it took."""

    def __init__(self, bus: Bus, sub: JetStreamContext.PullSubscription, start_seq: int, name: str) -> None:
        self.bus, self.sub, self.name = bus, sub, name
        self.next_seq = start_seq  # the sequence the next message must have (or more, after deletions)
        self.idle_since = 0.0

    async def next_batch(self, limit: int, wait_s: float, linger_s: float = 0.0) -> list[Msg]:
        loop = asyncio.get_running_loop()
        batch = await self._fetch(limit, wait_s)
        if not batch:
            await self._still_there(loop.time())
            return []
        self.idle_since = 0.0
        until = loop.time() + linger_s
        while len(batch) < limit and (left := until - loop.time()) > 0:
            more = await self._fetch_within(limit - len(batch), left)
            if not more:
                break
            batch += more
        return batch

    async def _fetch_within(self, limit: int, wait_s: float) -> list[Msg]:
        """More for a batch: what arrives within ``wait_s``, or as much of it as comes first."""
        return await self._fetch(limit, wait_s)

    async def _fetch(self, limit: int, wait_s: float) -> list[Msg]:
        try:
            msgs = await self.sub.fetch(limit, timeout=max(wait_s, 0.01))
        except (NatsTimeoutError, TimeoutError):
            return []
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            if seq < self.next_seq:
                raise ConnectionError(f"the log went back: sequence {seq} after {self.next_seq - 1}")
            self.next_seq = seq + 1
        return msgs

    async def _still_there(self, now: float) -> None:
        """After a few idle seconds, make sure the consumer exists: a server that restarted may have
        lost it, and fetches from a lost consumer only time out."""
        if not self.idle_since:
            self.idle_since = now
        elif now - self.idle_since > 3.0:
            self.idle_since = now
            await self.sub.consumer_info()  # raises NotFoundError when it is gone

    @property
    def pending_msgs(self) -> int:
        return 0

    async def unsubscribe(self) -> None:
        """Let the consumer go now rather than when the server finds it inactive."""
        try:
            await self.sub.unsubscribe()
        finally:
            await self.bus.js.delete_consumer(self.bus.stream, self.name)


async def read_from(bus: Bus, start_seq: int) -> LogReader:
    """Follow the whole stream in order from ``start_seq`` (see ``LogReader``)."""
    start_seq = max(start_seq, 1)
    policy = DeliverPolicy.ALL if start_seq <= 1 else DeliverPolicy.BY_START_SEQUENCE
    name = f"reader-{uuid.uuid4().hex}"
    config = ConsumerConfig(
        name=name,
        deliver_policy=policy,
        opt_start_seq=None if start_seq <= 1 else start_seq,
        ack_policy=AckPolicy.NONE,
        # Gone by itself a minute after its reader: a crashed service leaves nothing for long.
        inactive_threshold=60.0,
        # Its reader keeps its own position, so the consumer's state need not survive a restart: in
        # memory, nats-server does not rewrite a state file (temp file, rename) as it delivers, which
        # was 14% of its CPU in bench/throughput.py.
        mem_storage=True,
    )
    await bus.js.add_consumer(bus.stream, config=config)
    sub = await bus.js.pull_subscribe_bind(consumer=name, stream=bus.stream)
    return LogReader(bus, sub, start_seq, name)


async def next_batch(sub: LogReader, limit: int, wait_s: float, linger_s: float = 0.0) -> list[Msg]:
    """Up to ``limit`` messages: waits ``wait_s`` for the first, then takes what has arrived, and
    for ``linger_s`` more what arrives meanwhile (bigger batches under load, for a little latency)."""
    return await sub.next_batch(limit, wait_s, linger_s)


async def ensure_stream(
    js: JetStreamContext, spec: subjects.StreamSpec = subjects.STREAM_SPEC, replicas: int = 1
) -> None:
    """Create the stream, or bring an existing one to this configuration (replicas included: a
    clustered server moves an R1 stream to R3 in place)."""
    config = StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        storage=StorageType.FILE,
        duplicate_window=spec.duplicate_window_s,
        max_msg_size=spec.max_msg_size,
        num_replicas=replicas,
        # A workflow is published as one atomic batch: all of its events are stored, or none.
        allow_atomic=True,
        max_consumers=spec.max_consumers,
    )
    try:
        await js.add_stream(config)
    except BadRequestError:
        try:
            await js.update_stream(config)
        except APIError:
            # A server before 2.12 cannot change the consumer limit of a stream it made (nor does it
            # cap one that has none; it answers 500, error 10052): the rest of the configuration applies.
            current = (await js.stream_info(spec.name)).config.max_consumers
            if current == spec.max_consumers:
                raise
            await js.update_stream(replace(config, max_consumers=current))


# nats-py logs a full traceback for every failed reconnect attempt (twice a second while the server
# is away); one line each says the same.
async def _on_error(err: Exception) -> None:
    log.warning("NATS: %s", err or type(err).__name__)


def _on_disconnected(client: dict[str, Client]) -> Callable[[], Awaitable[None]]:
    async def disconnected() -> None:
        # nats-py calls it from close() too (the client is closed by then): every planned stop of a
        # service, every `conductor compact`, warned and counted an outage, and fired its alert.
        nc = client.get("nc")
        if nc is not None and nc.is_closed:
            return
        DISCONNECTS.inc()
        log.warning("disconnected from NATS; reconnecting")

    return disconnected


async def _on_reconnected() -> None:
    RECONNECTS.inc()
    log.info("reconnected to NATS")


async def connect(url: str, *, name: str, attempts: int = 60, replicas: int = 1) -> Bus:
    """Connect (retrying while the server comes up), and make sure the stream exists with ``replicas``
    copies (a single nats-server holds one; a cluster of three, three)."""
    client: dict[str, Client] = {}
    for attempt in range(1, attempts + 1):
        try:
            nc = await nats.connect(
                # NATS_URL may list a cluster's servers, comma-separated, as the nats CLI takes them.
                [u.strip() for u in url.split(",") if u.strip()],
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=2,
                drain_timeout=5,
                allow_reconnect=True,
                error_cb=_on_error,
                disconnected_cb=_on_disconnected(client),
                reconnected_cb=_on_reconnected,
            )
            client["nc"] = nc
            break
        except Exception as err:
            if attempt == attempts:
                raise
            log.info("waiting for NATS", extra={"url": url, "error": str(err)})
            await asyncio.sleep(0.5)
    js = nc.jetstream(timeout=10)
    try:
        await ensure_stream(js, replicas=replicas)
    except BaseException:
        # A caller that retries connect() (JetStream still starting) must not leak a client that
        # keeps reconnecting in the background.
        await Bus(nc=nc, js=js).close()
        raise
    return Bus(nc=nc, js=js, replicas=replicas)


async def submission(bus: Bus, job_id: int) -> ev.JobSubmitted | None:
    """A job's submission, from the log: its id is the stream sequence of its JobSubmitted."""
    try:
        raw = await bus.js.get_msg(bus.stream, seq=job_id)
    except NotFoundError:
        return None
    if raw.subject != subjects.SUBMITTED:
        return None
    try:
        event = ev.decode(raw.data or b"")
    except ValueError:  # not written by a gateway (the consumers skip it too): no job
        return None
    return event if isinstance(event, ev.JobSubmitted) else None
