"""Prometheus metrics and the health endpoints of one mma-broker process.

One :class:`Metrics` per process holds its own ``CollectorRegistry`` (never
prometheus-client's global one) and one :class:`StageMetrics` per stage; the stage
runner reports to its :class:`StageMetrics` and :meth:`Metrics.serve` exposes them over
HTTP from a daemon thread:

``GET /metrics``
    The registry in the Prometheus text format (OpenMetrics when the scraper asks).
``GET /health``
    JSON: the overall status and, per stage, its state, the seconds since its poll
    loop last polled and its last error. 200 when every stage is running or waiting
    (for Kafka or the database) and polled within ``max_poll_age_s``; 503 otherwise.
``GET /ready``
    200 once every stage's poll loop has polled once (:meth:`StageMetrics.polled`),
    503 before.

Metrics (all with the label ``stage``):

===========================================  ================  ==========================================
``mma_broker_messages_in_total``             ``topic``         messages consumed, per input topic
``mma_broker_messages_out_total``            ``topic``         messages produced, per output topic
                                                               (dead letters included, on ``mma.dlq``)
``mma_broker_dead_letters_total``            ``kind``          messages dead-lettered, per reason kind
``mma_broker_batch_seconds``                                   histogram: time to handle one batch, s
``mma_broker_batch_messages``                                  histogram: messages per batch
``mma_broker_consumer_lag``                  ``topic``,        messages behind: high watermark −
                                             ``partition``     position, per assigned partition
``mma_broker_last_poll_timestamp_seconds``                     Unix time of the poll loop's last poll, s
                                                               (absent before the first poll)
``mma_broker_stage_up``                                        1 while running or waiting, else 0
===========================================  ================  ==========================================

Label values are bounded: a stage keeps at most ``max_topics`` distinct topic values and
``max_kinds`` dead-letter kinds (:func:`broker.pipeline.deadletter.reason_kind` gives a
short fixed vocabulary, plus ``over max_*`` per limit and ``follow-up error: <Type>``);
further values are counted under ``_other``. Topics are config-driven, except regex
subscriptions such as ZTF's one topic per night, which is why the bound exists.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

from broker.config import MetricsSettings, scrub_secrets
from broker.text import one_line

log = logging.getLogger(__name__)

State = Literal["starting", "running", "waiting", "stopped", "failed"]
STATES: tuple[str, ...] = ("starting", "running", "waiting", "stopped", "failed")
"""Stage states: ``waiting`` means waiting for Kafka or the database; it will resume."""
HEALTHY_STATES = frozenset({"running", "waiting"})

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Upper bounds of ``mma_broker_batch_seconds``, s: 1 ms (a GCN notice) to 10 min (a
follow-up batch waiting for MMODA)."""
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
"""Upper bounds of ``mma_broker_batch_messages``, messages."""
OTHER = "_other"
"""Label value standing for every value past a stage's budget."""
MAX_TOPICS = 100
MAX_KINDS = 50
MAX_LABEL_CHARS = 255
MAX_ERROR_CHARS = 500


class _LabelBudget:
    """At most ``limit`` distinct label values; later newcomers become :data:`OTHER`."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: object) -> str:
        text = str(value)[:MAX_LABEL_CHARS]
        if text in self._seen:
            return text
        with self._lock:
            if text in self._seen:
                return text
            if len(self._seen) >= self._limit:
                return OTHER
            self._seen.add(text)
            return text


class _Families:
    """The metric families of one registry (one instance per :class:`Metrics`)."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.messages_in = Counter("mma_broker_messages_in", "Messages consumed by a stage, per input topic.",
                                   ["stage", "topic"], registry=r)
        self.messages_out = Counter("mma_broker_messages_out",
                                    "Messages produced by a stage, per output topic (dead letters included).",
                                    ["stage", "topic"], registry=r)
        self.dead_letters = Counter("mma_broker_dead_letters", "Messages a stage dead-lettered, per reason kind.",
                                    ["stage", "kind"], registry=r)
        self.batch_seconds = Histogram("mma_broker_batch_seconds",
                                       "Time to handle one batch, consume to commit, seconds.",
                                       ["stage"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_messages = Histogram("mma_broker_batch_messages", "Messages per batch.",
                                        ["stage"], buckets=SIZE_BUCKETS, registry=r)
        self.lag = Gauge("mma_broker_consumer_lag",
                         "Messages behind, per assigned partition: high watermark minus position.",
                         ["stage", "topic", "partition"], registry=r)
        self.last_poll = Gauge("mma_broker_last_poll_timestamp_seconds",
                               "Unix time at which the stage's poll loop last polled, seconds.",
                               ["stage"], registry=r)
        self.up = Gauge("mma_broker_stage_up", "1 while the stage is running or waiting for Kafka or the "
                        "database, 0 while starting, stopped or failed.", ["stage"], registry=r)


def _error_text(error: BaseException | str) -> str:
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
    return scrub_secrets(one_line(text, MAX_ERROR_CHARS))


class StageMetrics:
    """What one stage reports: counters, batch histograms, lag, heartbeat and state.

    Made by :meth:`Metrics.stage`. Every method is thread-safe and cheap (a dictionary
    look-up and an addition), so the runner may call it per batch from any thread.
    """

    def __init__(self, name: str, families: _Families, clock: Callable[[], float],
                 max_topics: int, max_kinds: int) -> None:
        self.name = name
        self._f = families
        self._clock = clock
        self._topics = _LabelBudget(max_topics)
        self._kinds = _LabelBudget(max_kinds)
        self._children: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._state: str = "starting"
        self._state_since = clock()
        self._last_poll: float | None = None
        self._error: str | None = None
        self._error_at: float | None = None
        self._lag_series: set[tuple[str, str]] = set()
        self._lag_warned = False
        self._up = families.up.labels(name)
        self._up.set(0)
        self._batch_s = families.batch_seconds.labels(name)
        self._batch_n = families.batch_messages.labels(name)

    def _child(self, family: str, value: str) -> Any:
        key = (family, value)
        child = self._children.get(key)
        if child is None:
            budget = self._kinds if family == "dead_letters" else self._topics
            label = budget(value)
            child = getattr(self._f, family).labels(self.name, label)
            if label != OTHER:
                self._children[key] = child
        return child

    def consumed(self, topic: str, n: int) -> None:
        """Count ``n`` messages consumed from ``topic`` (``mma_broker_messages_in_total``).

        Raises
        ------
        ValueError
            If ``n`` is negative.
        """
        self._child("messages_in", topic).inc(n)

    def produced(self, topic: str, n: int) -> None:
        """Count ``n`` messages produced to ``topic`` (``mma_broker_messages_out_total``).

        Raises
        ------
        ValueError
            If ``n`` is negative.
        """
        self._child("messages_out", topic).inc(n)

    def dead_lettered(self, kind: str, n: int = 1) -> None:
        """Count ``n`` dead letters of one reason kind (``mma_broker_dead_letters_total``).

        Parameters
        ----------
        kind : str
            :func:`broker.pipeline.deadletter.reason_kind` of the reason (the
            ``mma.dlq.kind`` header), e.g. ``"schema violation"``.
        n : int
        """
        self._child("dead_letters", kind).inc(n)

    def batch(self, seconds: float, size: int) -> None:
        """Record one handled batch (``mma_broker_batch_seconds``, ``mma_broker_batch_messages``).

        Parameters
        ----------
        seconds : float
            Wall time from the batch's consume to its commit, s.
        size : int
            Messages in the batch.
        """
        self._batch_s.observe(seconds)
        self._batch_n.observe(size)

    def lag(self, consumer: Any) -> dict[tuple[str, int], int]:
        """Set ``mma_broker_consumer_lag`` from a consumer's local state; never blocks.

        Lag is the high watermark minus the position (the offset of the next message the
        application will get), per assigned partition, from ``consumer.assignment()``,
        ``consumer.position()`` and ``consumer.get_watermark_offsets(tp, cached=True)``:
        all three read librdkafka's cache and make no request. The high watermark is
        refreshed by every fetch response (under ``isolation.level=read_committed``
        librdkafka reports the last stable offset instead). Partitions without a
        position yet (nothing consumed from them) or without a cached watermark are left
        out, and the series of partitions no longer assigned are removed. A consumer
        that fails (closed, a fake without these methods) gives an empty result: metrics
        never stop a stage.

        Parameters
        ----------
        consumer : confluent_kafka.Consumer
            Or anything with the same three methods.

        Returns
        -------
        dict of (topic, partition) to int
            Lag per partition, messages (before the label budget folds topics).
        """
        lags: dict[tuple[str, int], int] = {}
        try:
            assigned = consumer.assignment()
            positions = consumer.position(assigned) if assigned else []
            for tp in positions:
                if getattr(tp, "error", None) is not None or tp.offset is None or tp.offset < 0:
                    continue
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                if high is not None and high >= 0:
                    lags[(tp.topic, tp.partition)] = max(high - tp.offset, 0)
        except Exception as exc:  # noqa: BLE001 - a metric must not stop a stage
            (log.debug if self._lag_warned else log.warning)("stage %s: consumer lag unavailable: %s",
                                                             self.name, _error_text(exc))
            self._lag_warned = True
            return {}
        series: dict[tuple[str, str], int] = {}
        for (topic, partition), value in lags.items():
            key = (self._topics(topic), str(partition))
            series[key] = series.get(key, 0) + value
        with self._lock:
            for key in self._lag_series - series.keys():
                self._f.lag.remove(self.name, *key)
            for key, value in series.items():
                self._f.lag.labels(self.name, *key).set(value)
            self._lag_series = set(series)
        return lags

    def polled(self) -> None:
        """The poll loop's heartbeat: call after every ``poll``/``consume`` returns.

        Sets ``mma_broker_last_poll_timestamp_seconds`` (Unix time) and the age that
        ``/health`` checks (on the monotonic ``clock``); the first call makes the stage
        ready (``/ready``).
        """
        self._last_poll = self._clock()
        # made here, not in __init__: before the first poll the series is absent, not 0 (1970)
        self._f.last_poll.labels(self.name).set(time.time())

    def state(self, name: State, error: BaseException | str | None = None) -> None:
        """Set the stage's state, and its last error when given.

        Parameters
        ----------
        name : {"starting", "running", "waiting", "stopped", "failed"}
            ``waiting``: for Kafka or the database, resuming by itself.
            ``mma_broker_stage_up`` is 1 for ``running`` and ``waiting``.
        error : BaseException or str, optional
            Kept as the stage's last error (one line of at most 500 characters, secrets
            scrubbed) until another replaces it; a state change does not clear it.

        Raises
        ------
        ValueError
            If ``name`` is not a state.
        """
        if name not in STATES:
            raise ValueError(f"unknown stage state {name!r}: one of {', '.join(STATES)}")
        now = self._clock()
        with self._lock:
            if name != self._state:
                self._state, self._state_since = name, now
            if error is not None:
                self._error, self._error_at = _error_text(error), now
        self._up.set(1 if name in HEALTHY_STATES else 0)

    @property
    def ready(self) -> bool:
        """True once the poll loop has polled (:meth:`polled`) at least once."""
        return self._last_poll is not None

    def health(self, max_poll_age_s: float) -> dict[str, Any]:
        """This stage's part of ``/health``.

        Parameters
        ----------
        max_poll_age_s : float
            Longest time without a poll for a healthy stage, s. Before the first poll,
            the time since the stage entered its state counts instead.

        Returns
        -------
        dict
            ``ok`` (bool: running or waiting, and polled within the limit), ``state``,
            ``seconds_since_poll`` (None before the first poll), ``seconds_in_state``,
            ``last_error`` (str or None), ``seconds_since_error``, ``ready``.
        """
        now = self._clock()
        with self._lock:
            state, since, error, error_at = self._state, self._state_since, self._error, self._error_at
        last_poll = self._last_poll
        quiet = now - (last_poll if last_poll is not None else since)
        return {
            "ok": state in HEALTHY_STATES and quiet <= max_poll_age_s,
            "state": state,
            "seconds_since_poll": None if last_poll is None else round(now - last_poll, 3),
            "seconds_in_state": round(now - since, 3),
            "last_error": error,
            "seconds_since_error": None if error_at is None else round(now - error_at, 3),
            "ready": last_poll is not None,
        }


class Metrics:
    """The metrics of one broker process: a registry of its own and one entry per stage.

    Parameters
    ----------
    registry : prometheus_client.CollectorRegistry, optional
        Where the metrics go. None: a new registry, which also gets the ``process_*``
        (CPU seconds, memory, open files) and ``python_info`` collectors.
    clock : callable, optional
        Monotonic clock for heartbeat ages, s (tests pass a fake one).
    max_topics, max_kinds : int, optional
        Label-value budget per stage for topics and dead-letter kinds.

    Raises
    ------
    ValueError
        If ``registry`` already holds metrics of these names.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, clock: Callable[[], float] = time.monotonic,
                 max_topics: int = MAX_TOPICS, max_kinds: int = MAX_KINDS) -> None:
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        self.registry = registry
        self._clock = clock
        self._max_topics, self._max_kinds = max_topics, max_kinds
        self._families = _Families(registry)
        self._stages: dict[str, StageMetrics] = {}
        self._lock = threading.Lock()

    def stage(self, name: str) -> StageMetrics:
        """The :class:`StageMetrics` of stage ``name`` (the same object for the same name),
        in state ``starting``. Give each poll loop its own name (``ingest.notices``, ...):
        ``/health`` judges each name by its most recent heartbeat."""
        with self._lock:
            sm = self._stages.get(name)
            if sm is None:
                sm = self._stages[name] = StageMetrics(name, self._families, self._clock,
                                                       self._max_topics, self._max_kinds)
            return sm

    def health(self, max_poll_age_s: float) -> dict[str, Any]:
        """The ``/health`` document: ``{"status": "ok" | "unhealthy", "max_poll_age_s",
        "stages": {name: StageMetrics.health(...)}}``; unhealthy with no stage yet."""
        with self._lock:
            stages = dict(self._stages)
        per_stage = {name: sm.health(max_poll_age_s) for name, sm in sorted(stages.items())}
        ok = bool(per_stage) and all(s["ok"] for s in per_stage.values())
        return {"status": "ok" if ok else "unhealthy", "max_poll_age_s": max_poll_age_s, "stages": per_stage}

    def ready(self) -> bool:
        """True when there is a stage and every stage has polled once (``/ready``)."""
        with self._lock:
            stages = list(self._stages.values())
        return bool(stages) and all(sm.ready for sm in stages)

    def serve(self, host: str = "127.0.0.1", port: int = 9108, *, max_poll_age_s: float = 300.0) -> Server | None:
        """Serve ``/metrics``, ``/health`` and ``/ready`` from a daemon thread.

        Parameters
        ----------
        host : str
            Address to listen on (``0.0.0.0`` or ``::`` for every interface).
        port : int
            TCP port; 0 picks a free one (:attr:`Server.port`).
        max_poll_age_s : float
            ``/health``'s limit on the time since a stage's last poll, s.

        Returns
        -------
        Server or None
            None when the address cannot be bound (port in use, no such address): one
            warning names host:port and the broker runs on without the endpoints.
        """
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            httpd = _HTTPServer((host, port), family, self, max_poll_age_s)
        except OSError as exc:
            log.warning("metrics: cannot listen on %s (%s); the broker runs on without /metrics and /health. "
                        "Set [metrics] port (MMA_BROKER_METRICS__PORT) to a free port, or 0 for any free port",
                        shown, exc.strerror or exc)
            return None
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                  name=f"metrics-http-{httpd.server_address[1]}", daemon=True)
        thread.start()
        server = Server(httpd, thread)
        log.info("metrics: serving /metrics, /health and /ready on %s", server.url)
        return server

    def serve_settings(self, settings: MetricsSettings) -> Server | None:
        """:meth:`serve` with the ``[metrics]`` settings; None when ``enabled`` is false."""
        if not settings.enabled:
            return None
        return self.serve(settings.host, settings.port, max_poll_age_s=settings.max_poll_age_s)


class Server:
    """A running metrics HTTP server (made by :meth:`Metrics.serve`); a context manager."""

    def __init__(self, httpd: _HTTPServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host: str = httpd.server_address[0]
        """The address listened on."""
        self.port: int = httpd.server_address[1]
        """The port listened on (the one picked when 0 was asked)."""

    @property
    def url(self) -> str:
        """``http://host:port`` of this server."""
        return f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"

    def close(self) -> None:
        """Stop serving and free the port; waits for the serving thread (≤ 5 s). Idempotent."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: int, metrics: Metrics, max_poll_age_s: float) -> None:
        self.address_family = family
        self.metrics = metrics
        self.max_poll_age_s = max_poll_age_s
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host's FQDN (a DNS query) for nothing
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    timeout = 10  # a client that sends nothing does not hold a thread forever

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        path = urlsplit(self.path).path
        m = self.server.metrics
        try:
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, content_type, encoder(m.registry))
            elif path == "/health":
                doc = m.health(self.server.max_poll_age_s)
                self._send(200 if doc["status"] == "ok" else 503, "application/json",
                           json.dumps(doc, indent=1).encode() + b"\n")
            elif path == "/ready":
                ready = m.ready()
                self._send(200 if ready else 503, "text/plain; charset=utf-8", b"ready\n" if ready else b"not ready\n")
            elif path == "/":
                self._send(200, "text/plain; charset=utf-8", b"mma-broker: /metrics /health /ready\n")
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics, /health or /ready\n")
        except Exception as exc:  # noqa: BLE001 - one bad scrape must not kill the server
            log.warning("metrics: %s failed: %s", path, _error_text(exc))
            self._send(500, "text/plain; charset=utf-8", b"internal error\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("metrics http %s: " + format, self.client_address[0], *args)
