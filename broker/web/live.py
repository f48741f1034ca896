"""The live stream of ``mma-broker serve``: ``GET /api/stream``, server-sent events fed from Kafka.

One background consumer per app process (:class:`StreamHub`, a thread) reads
``mma.events.enriched`` and every ``mma.filter.<name>`` topic there is (re-listed every
:attr:`StreamHub.relist_s` s) with ``isolation.level=read_committed`` — only records of
committed transactions, the guarantee of docs/topics.md — and **no consumer group
commits**: it assigns the partitions itself, at their end offsets when it first lists
them (a topic created later is read from its beginning: all of it arrived while the
stream was open). It decodes each record once (:func:`decode_record`, the project's
:func:`broker.enrich.enriched.decode_enriched`; a record it cannot decode is skipped
with a warning) and offers the result to every connected client.

Each client has a bounded buffer (:attr:`StreamHub.queue_size` messages): a client that
falls that far behind is sent ``event: reload`` and dropped; the consumer and the other
clients never wait for it.

Wire format (https://html.spec.whatwg.org/multipage/server-sent-events.html)::

    id: mma.events.enriched/2/1234
    event: event
    data: {"id": "igwn:S230518h:...", "source": "igwn", ..., "topic": "mma.events.enriched"}

``data`` is an item of ``GET /api/events`` (:class:`broker.web.api.EventItem`) plus
``topic``; ``received_at`` is the record's Kafka timestamp (when the enrich or filter
stage published it). ``event: status`` (``{"state": "live" | "connecting" |
"unreachable", "detail": ...}``) says whether Kafka answers, ``: heartbeat`` comments
come every :data:`HEARTBEAT_S` s. Per-client filters are the query parameters
``source``, ``category``, ``mission`` (case-insensitive), ``alert_type`` and ``topic``
(a filter topic, ``mma.filter.<name>``: the Events that filter accepted; without it the
Events of ``mma.events.enriched``), checked like the read API's (400 naming the
parameter).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Optional

from fastapi import Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from broker.enrich.enriched import ENRICHED_SCHEMA, EnrichedEvent, decode_enriched
from broker.errors import DecodeError
from broker.web.api import EventItem, LocalizationSummary, ParamError, check_category, check_source, check_text

log = logging.getLogger(__name__)

__all__ = ["StreamFilter", "StreamHub", "decode_record", "stream_item", "sse", "install", "uvicorn_server",
           "HEARTBEAT_S",
           "FILTERED_SCHEMA"]

HEARTBEAT_S = 15.0
"""Seconds between ``: heartbeat`` comments on an idle stream (keeps proxies from closing it)."""
FILTERED_SCHEMA = "mma.event.filtered/1"
"""``schema`` of an ``mma.filter.<name>`` record (filters/schemas/filtered_event.json): the
enriched record plus ``filter`` (and ``rerun``)."""
RETRY_MS = 3000
"""``retry:`` sent to browsers: how long an EventSource waits before reconnecting, ms."""


# ------------------------------------------------------------------ records → items
def decode_record(value: bytes) -> EnrichedEvent:
    """An ``mma.events.enriched`` or ``mma.filter.<name>`` record value as an EnrichedEvent.

    Parameters
    ----------
    value : bytes
        UTF-8 JSON with ``schema`` ``mma.event.enriched/1`` or ``mma.event.filtered/1``.

    Returns
    -------
    EnrichedEvent

    Raises
    ------
    broker.errors.DecodeError
        What :func:`broker.enrich.enriched.decode_enriched` refuses (a filtered record is
        checked the same way, less its ``filter`` and ``rerun`` fields).
    """
    if not value.startswith(b'{"schema": "' + FILTERED_SCHEMA.encode()):
        return decode_enriched(value)
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise DecodeError("filtered event: not JSON") from None
    if not isinstance(obj, dict) or obj.get("schema") != FILTERED_SCHEMA:
        raise DecodeError("filtered event: not an mma.event.filtered/1 object")
    obj.pop("filter", None)
    obj.pop("rerun", None)
    obj["schema"] = ENRICHED_SCHEMA
    return decode_enriched(json.dumps(obj).encode())


def stream_item(rec: EnrichedEvent, *, topic: str, received_ms: int | None) -> dict[str, Any]:
    """The ``data`` of one ``event: event`` message: an ``/api/events`` item plus ``topic``.

    Parameters
    ----------
    rec : EnrichedEvent
    topic : str
        The Kafka topic the record was read from.
    received_ms : int or None
        The record's Kafka timestamp, ms since 1970-01-01 UTC (None: now).

    Returns
    -------
    dict
        The fields of :class:`broker.web.api.EventItem` (same names and units) and ``topic``.
    """
    from datetime import datetime, timezone
    from urllib.parse import quote

    from broker.enrich.groups import group_key
    from broker.event import HealpixLocalization, PointLocalization, format_time

    ev = rec.event
    loc = ev.localization
    summary = None
    if isinstance(loc, PointLocalization):
        summary = LocalizationSummary(kind="point", ra_deg=loc.ra, dec_deg=loc.dec, error_radius_deg=loc.error_radius,
                                      containment=loc.containment)
    elif isinstance(loc, HealpixLocalization):
        summary = LocalizationSummary(kind="healpix", ra_deg=loc.ra_max, dec_deg=loc.dec_max,
                                      area_90_deg2=loc.area_90)
    group = rec.enrichment.get("group") if isinstance(rec.enrichment.get("group"), dict) else {}
    key = rec.group_key or group_key(ev)
    received = (datetime.now(timezone.utc) if received_ms is None or received_ms <= 0
                else datetime.fromtimestamp(received_ms / 1000, timezone.utc))
    item = EventItem(id=ev.id, url="/api/events/" + quote(ev.id, safe=":"), source=ev.source, mission=ev.mission,
                     instrument=ev.instrument, category=ev.category, upstream_id=ev.upstream_id,
                     alert_type=ev.alert_type, t0=ev.time, received_at=format_time(received), localization=summary,
                     group_key=key, group_url="/api/groups/" + quote(key, safe=":"),
                     retracted=bool(group.get("retracted")) and ev.alert_type != "retraction")
    return {**item.model_dump(mode="json"), "topic": topic}


def sse(event: str, data: Any, ident: str | None = None) -> bytes:
    """One server-sent event (``id:``, ``event:``, one ``data:`` line of compact JSON)."""
    head = f"id: {ident}\n" if ident is not None else ""
    return (head + f"event: {event}\ndata: " + json.dumps(data, separators=(",", ":"), allow_nan=False)
            + "\n\n").encode()


# ------------------------------------------------------------------ per-client filter
@dataclass(frozen=True)
class StreamFilter:
    """What one client asked for (None: any).

    Attributes
    ----------
    source, category, mission, alert_type : str or None
        As in ``GET /api/events`` (``mission`` case-insensitive).
    topic : str
        The Kafka topic whose records the client gets: the enriched topic, or one
        filter topic (``mma.filter.<name>``, with the deployment's Kafka prefix).
    """

    source: Optional[str]
    category: Optional[str]
    mission: Optional[str]
    alert_type: Optional[str]
    topic: str

    @classmethod
    def from_params(cls, settings: Any, *, source: str | None = None, category: str | None = None,
                    mission: str | None = None, alert_type: str | None = None,
                    topic: str | None = None) -> "StreamFilter":
        """Check the query parameters like the read API does.

        Raises
        ------
        broker.web.api.ParamError
            A bad parameter (named): the API's text and category checks, or a ``topic``
            that is not a filter topic name (``mma.filter.<name>``).
        """
        for name, value in (("mission", mission), ("alert_type", alert_type)):
            check_text(name, value)
        check_source(source)
        check_category(category)
        enriched, prefix = _topics(settings)
        full = enriched
        if check_text("topic", topic) is not None:
            bare = settings.filters.topic_prefix  # mma.filter.; the full name has [kafka] topic_prefix in front
            full = topic if topic.startswith(prefix) else settings.topic(topic) if topic.startswith(bare) else ""
            if len(full) <= len(prefix):
                raise ParamError("topic", f"topic: not a filter topic ({bare}<name>)")
        return cls(source=source, category=category, mission=mission.lower() if mission else None,
                   alert_type=alert_type, topic=full)

    def accepts(self, item: dict[str, Any]) -> bool:
        """Whether a :func:`stream_item` goes to this client."""
        return (item["topic"] == self.topic
                and (self.source is None or item["source"] == self.source)
                and (self.category is None or item["category"] == self.category)
                and (self.mission is None or (item["mission"] or "").lower() == self.mission)
                and (self.alert_type is None or item["alert_type"] == self.alert_type))


def _topics(settings: Any) -> tuple[str, str]:
    """(enriched topic, filter topics' prefix), with ``[kafka] topic_prefix``."""
    return settings.topic(settings.enrich.enriched_topic), settings.topic(settings.filters.topic_prefix)


# ------------------------------------------------------------------ fan-out
class _Client:
    """One connected client: a bounded buffer the hub thread fills and the event loop drains."""

    def __init__(self, flt: StreamFilter, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.filter, self.loop, self.size = flt, loop, size
        self.buf: collections.deque[bytes] = collections.deque()
        self.lock = threading.Lock()
        self.wake = asyncio.Event()
        self.dropped = False
        self.closing = False

    def offer(self, chunk: bytes) -> bool:
        """Queue ``chunk``; False (and marked dropped) when the buffer is full."""
        with self.lock:
            if self.dropped:
                return False
            # wake the event loop only when the buffer was empty: a take() is due anyway
            # otherwise (one cross-thread call per burst, not per message)
            wake = not self.buf
            if len(self.buf) >= self.size:
                self.dropped, wake = True, True
                self.buf.clear()
            else:
                self.buf.append(chunk)
        if wake:
            try:
                self.loop.call_soon_threadsafe(self.wake.set)
            except RuntimeError:  # its event loop is closed: the client is gone
                self.dropped = True
        return not self.dropped

    def take(self) -> list[bytes]:
        with self.lock:
            out = list(self.buf)
            self.buf.clear()
            return out


class StreamHub:
    """The process's Kafka consumer for the live stream, and its clients.

    Parameters
    ----------
    settings : broker.config.Settings
        ``[kafka]`` (bootstrap servers, ``config`` with SASL when set, ``topic_prefix``),
        ``[enrich] enriched_topic``, ``[filters] topic_prefix``.
    queue_size : int
        Messages buffered per client before it is told to reload and dropped.
    relist_s : float
        Seconds between listings of the topics (new ``mma.filter.*`` topics, partitions).
    retry_s : float
        Seconds between attempts while Kafka does not answer.
    metadata_timeout_s : float
        Longest wait for one topic listing, s.
    max_clients : int
        Streams open at once; one more is answered 503 (each holds a connection, a
        buffer and a share of the fan-out).

    Notes
    -----
    The consumer runs in a daemon thread started by :meth:`start` (the first client
    does it) and ended by :meth:`stop` (the app's shutdown). It never commits: its
    ``group.id`` is a throw-away name only librdkafka needs.
    """

    def __init__(self, settings: Any, *, queue_size: int = 1000, relist_s: float = 10.0, retry_s: float = 2.0,
                 metadata_timeout_s: float = 5.0, max_clients: int = 500) -> None:
        self.settings = settings
        self.max_clients = max_clients
        self.queue_size, self.relist_s, self.retry_s = queue_size, relist_s, retry_s
        self.metadata_timeout_s = metadata_timeout_s
        self.enriched_topic, self.filter_prefix = _topics(settings)
        self.status: dict[str, Any] = {"state": "connecting", "detail": "connecting to Kafka"}
        self.skipped = 0
        """Records that could not be decoded (each logged)."""
        self.delivered = 0
        """Records offered to at least one client."""
        self._clients: set[_Client] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._assigned: set[tuple[str, int]] = set()

    # -------------------------------------------------------------- clients
    def subscribe(self, flt: StreamFilter) -> _Client:
        """A new client (call from its event loop); starts the consumer if needed."""
        client = _Client(flt, asyncio.get_running_loop(), self.queue_size)
        with self._lock:
            self._clients.add(client)
            client.offer(sse("status", self.status))
        self.start()
        return client

    def unsubscribe(self, client: _Client) -> None:
        with self._lock:
            self._clients.discard(client)

    def close_clients(self) -> None:
        """End every open stream (the server is stopping): each generator returns, so the
        server's graceful shutdown does not wait for them; browsers reconnect by themselves."""
        with self._lock:
            clients = list(self._clients)
            self._clients.clear()
        for c in clients:
            c.closing = True
            try:
                c.loop.call_soon_threadsafe(c.wake.set)
            except RuntimeError:
                pass

    @property
    def n_clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def _broadcast(self, chunk: bytes, item: dict[str, Any] | None = None) -> None:
        with self._lock:
            clients = list(self._clients)
        sent = False
        for c in clients:
            if item is not None and not c.filter.accepts(item):
                continue
            sent = True
            if not c.offer(chunk):
                self.unsubscribe(c)
                log.info("live stream: a client fell %d messages behind, told to reload", self.queue_size)
        self.delivered += sent

    def _set_status(self, state: str, detail: str) -> None:
        if self.status.get("state") == state:
            return
        self.status = {"state": state, "detail": detail}
        log.log(logging.WARNING if state == "unreachable" else logging.INFO, "live stream: %s", detail)
        self._broadcast(sse("status", self.status))

    # -------------------------------------------------------------- consumer thread
    def start(self) -> None:
        """Start the consumer thread (idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="mma-live-stream", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the consumer thread and close the consumer."""
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(timeout_s)
        self._thread = None

    def _consumer(self) -> Any:
        import confluent_kafka

        from broker.kafka import MAX_MESSAGE_BYTES, client_config

        def on_error(err: Any) -> None:
            # not _TRANSPORT: one broker closing an idle connection is routine, not an outage
            if err.code() == confluent_kafka.KafkaError._ALL_BROKERS_DOWN:
                self._set_status("unreachable", "Kafka is unreachable; retrying")
                self._next_list = 0.0

        cfg = client_config(self.settings, **{
            "isolation.level": "read_committed",
            "fetch.max.bytes": 4 * MAX_MESSAGE_BYTES,
            "max.partition.fetch.bytes": MAX_MESSAGE_BYTES,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": 100,
        })
        # never a group member, never a commit: partitions are assigned here
        cfg["group.id"] = f"{self.settings.group_id}.web-live.{uuid.uuid4().hex[:12]}"
        cfg["enable.auto.commit"] = False
        cfg["enable.auto.offset.store"] = False
        cfg["error_cb"] = on_error
        return confluent_kafka.Consumer(cfg)

    def _relist(self, consumer: Any, first: bool) -> None:
        """Assign new partitions of the topics to read, drop those of deleted topics.

        Raises
        ------
        confluent_kafka.KafkaException
            Kafka did not answer within :attr:`metadata_timeout_s`.
        """
        import confluent_kafka

        topics = consumer.list_topics(timeout=self.metadata_timeout_s).topics
        want = {(name, p) for name, meta in topics.items()
                if (name == self.enriched_topic or name.startswith(self.filter_prefix)) and meta.error is None
                for p in meta.partitions}
        gone = self._assigned - want
        if gone:
            consumer.incremental_unassign([confluent_kafka.TopicPartition(t, p) for t, p in sorted(gone)])
        new = want - self._assigned
        if new:
            start = confluent_kafka.OFFSET_END if first else confluent_kafka.OFFSET_BEGINNING
            consumer.incremental_assign([confluent_kafka.TopicPartition(t, p, start) for t, p in sorted(new)])
        self._assigned = want

    def _run(self) -> None:
        import confluent_kafka

        consumer = None
        first = True
        self._next_list = 0.0
        try:
            consumer = self._consumer()
            while not self._stop.is_set():
                if time.monotonic() >= self._next_list:
                    try:
                        self._relist(consumer, first)
                    except confluent_kafka.KafkaException:
                        self._set_status("unreachable", "Kafka is unreachable; retrying")
                        self._next_list = time.monotonic() + self.retry_s
                        self._stop.wait(min(self.retry_s, 0.5))
                        continue
                    first = False
                    self._set_status("live", "reading " + self.enriched_topic + " and the filter topics")
                    self._next_list = time.monotonic() + self.relist_s
                msg = consumer.poll(0.25)
                if msg is None:
                    continue
                if msg.error() is not None:
                    if msg.error().code() != confluent_kafka.KafkaError._PARTITION_EOF:
                        log.warning("live stream: %s", msg.error().str())
                    continue
                self._handle(msg)
        except Exception:  # noqa: BLE001 - the stream says so and the next client restarts it
            log.exception("live stream: the consumer stopped")
            self._set_status("unreachable", "the live stream's consumer stopped; reload to retry")
        finally:
            if consumer is not None:
                consumer.close()
            self._assigned = set()
            with self._lock:
                self.status = {"state": "connecting", "detail": "connecting to Kafka"}

    def _handle(self, msg: Any) -> None:
        topic, part, offset = msg.topic(), msg.partition(), msg.offset()
        with self._lock:
            if not self._clients:
                return
        try:
            rec = decode_record(msg.value() or b"")
            ts_type, ts = msg.timestamp()
            item = stream_item(rec, topic=topic, received_ms=ts if ts_type else None)
        except (DecodeError, ValueError) as exc:
            self.skipped += 1
            log.warning("live stream: skipped %s/%d/%d: %s", topic, part, offset, str(exc)[:200])
            return
        self._broadcast(sse("event", item, f"{topic}/{part}/{offset}"), item)


# ------------------------------------------------------------------ server
def uvicorn_server(app: Any, **config: Any) -> Any:
    """A :class:`uvicorn.Server` for ``app`` that ends the open streams when it shuts down.

    uvicorn's graceful shutdown waits for every response to finish, and a stream never
    does: this server first ends them (:meth:`StreamHub.close_clients`), so SIGINT or
    SIGTERM stops ``mma-broker serve`` at once. ``config``: :class:`uvicorn.Config`'s.
    """
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            hub = getattr(app.state, "live_hub", None)
            if hub is not None:
                hub.close_clients()
            await super().shutdown(sockets)

    return Server(uvicorn.Config(app, **config))


# ------------------------------------------------------------------ route
async def _events(hub: StreamHub, client: _Client, heartbeat_s: float) -> AsyncIterator[bytes]:
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        while True:
            try:
                await asyncio.wait_for(client.wake.wait(), heartbeat_s)
            except asyncio.TimeoutError:
                yield b": heartbeat\n\n"
                continue
            client.wake.clear()
            chunks = client.take()
            if chunks:
                yield b"".join(chunks)
            if client.dropped:
                yield sse("reload", {"reason": f"this client fell {hub.queue_size} messages behind; reload"})
                return
            if client.closing:
                return
    finally:
        hub.unsubscribe(client)


def install(app: Any, ctx: Any) -> None:
    """Add ``GET /api/stream`` to ``app`` and stop the consumer with the app.

    The hub is shared with the other page modules as ``ctx.extra["live_hub"]``.
    """

    hub = ctx.extra.get("live_hub") or StreamHub(ctx.settings)
    ctx.extra["live_hub"] = hub
    app.state.live_hub = hub
    heartbeat_s = float(ctx.extra.get("live_heartbeat_s", HEARTBEAT_S))

    @app.get("/api/stream", tags=["archive"], summary="New Events as server-sent events, from Kafka",
             response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "event: event (an /api/events item plus topic), event: status, "
                                             "event: reload; id = topic/partition/offset"},
                        400: {"description": "a bad parameter (named)"},
                        503: {"description": "too many streams open in this process"}})
    async def stream(
        request: Request,
        source: Optional[str] = Query(None, description="igwn, gcn, ztf, lsst, voevent or user"),
        category: Optional[str] = Query(None, description="normalized category (docs/categories.md)"),
        mission: Optional[str] = Query(None, description="mission, case-insensitive"),
        alert_type: Optional[str] = Query(None, description="preliminary, initial, update, retraction, ..."),
        topic: Optional[str] = Query(None, description="a filter topic, mma.filter.<name>: the Events it accepted"),
    ) -> StreamingResponse:
        flt = StreamFilter.from_params(ctx.settings, source=source, category=category, mission=mission,
                                       alert_type=alert_type, topic=topic)
        if hub.n_clients >= hub.max_clients:
            return JSONResponse({"detail": f"{hub.max_clients} live streams are open; retry later",
                                 "parameter": None}, status_code=503, headers={"Retry-After": "30"})
        client = hub.subscribe(flt)
        return StreamingResponse(_events(hub, client, heartbeat_s), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as state:
            try:
                yield state
            finally:
                hub.stop()

    app.router.lifespan_context = lifespan
