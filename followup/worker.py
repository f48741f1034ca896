"""The follow-up stage: trigger rules on ``mma.events`` and workers on ``mma.followup.requests``.

Two consumer groups, each scalable by adding processes:

* ``<group_id>.followup.trigger`` reads ``mma.events`` (Avro, :class:`broker.serde.EventCodec`),
  applies the trigger rules (:func:`followup.rules.decide`) and publishes follow-up
  requests to ``mma.followup.requests`` (key = ``upstream_id``, so all revisions and the
  retraction of one alert stay ordered in one partition). Offsets are committed after
  Kafka acknowledged the requests.
* ``<group_id>.followup.worker`` reads the requests. Per request: if its deterministic
  id is already stored and published, nothing is done (a replayed alert is not analysed
  again); if stored but not yet published (a crash in between), it is published;
  otherwise the analysis runs (:func:`followup.service.run_followup`, through the
  provenance cache), the result is written to ``followup_results``, published to
  ``mma.followup.results``, marked published, and only then are offsets committed.
  A ``withdraw`` request (from a retraction) marks the earlier results of the same
  upstream id withdrawn and publishes one withdrawal message; a request whose event is
  already retracted is recorded as withdrawn without running.

Like the ingest stage, no single message can stop either loop: a message that does
not decode, or whose handling raises, goes to ``mma.dlq`` with its reason
(:mod:`broker.pipeline.deadletter`) and the batch goes on; while Kafka is away the
loop waits and resumes (:func:`broker.kafka.publish`, :func:`broker.kafka.commit_offsets`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka

from broker.archive.retry import is_infrastructure_error
from broker.errors import DecodeError
from broker.kafka import Backoff, Outgoing, StageStopped, caught_up, commit_offsets, publish
from broker.limits import DEFAULT_LIMITS
from broker.pipeline.deadletter import dead_letter, error_text, triage_refused
from broker.serde import EventCodec, Provenance
from broker.text import one_line
from followup.messages import CONTENT_TYPE, RESULT_SCHEMA, FollowupRequest, result_message, utc_now
from followup.rules import decide
from followup.service import FollowupParams, run_followup

logger = logging.getLogger(__name__)


@dataclass
class FollowupStats:
    """Running totals of one follow-up stage process."""

    events: int = 0
    requests: int = 0
    withdraw_requests: int = 0
    results: int = 0
    withdrawals: int = 0
    duplicates_skipped: int = 0
    dead_letters: int = 0

    def summary(self) -> str:
        """One line for people."""
        return (f"follow-up: {self.events} event(s) seen, {self.requests} request(s), "
                f"{self.withdraw_requests} withdraw request(s); {self.results} result(s), "
                f"{self.withdrawals} withdrawal(s), {self.duplicates_skipped} duplicate(s) skipped, "
                f"{self.dead_letters} dead letter(s)")


class _KafkaLoop:
    """Consume → process → commit loop shared by the trigger and the worker."""

    name = "followup"
    admin = None
    """AdminClient for fast end-offset reads in :meth:`caught_up` (set with --until-caught-up)."""
    subscription: list[str] | None = None
    """The topics this loop reads (for :meth:`caught_up`)."""

    def __init__(self, consumer: confluent_kafka.Consumer, producer: confluent_kafka.Producer, *, dlq_topic: str,
                 stats: FollowupStats, batch_size: int = 50, poll_timeout_s: float = 0.5,
                 max_dlq_bytes: int = DEFAULT_LIMITS.max_dlq_bytes, backoff: Backoff | None = None,
                 store_raw: Callable[[list[bytes]], list[Any]] | None = None) -> None:
        self.consumer, self.producer, self.dlq_topic = consumer, producer, dlq_topic
        self.stats, self.batch_size, self.poll_timeout_s = stats, batch_size, poll_timeout_s
        self.max_dlq_bytes = max_dlq_bytes
        self.store_raw = store_raw  # keeps a dead letter's whole value (Archive.store_raw), as ingest does
        self.backoff = backoff or Backoff(self.name)
        self.stop: threading.Event | None = None
        self._outbox: list[Outgoing] = []
        self._current: Any = None

    def handle(self, msg: confluent_kafka.Message) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        """Queue one output record of the message being handled (sent by :meth:`process`)."""
        self._outbox.append(Outgoing(topic, key, value, headers, tag=self._current))

    def after_flush(self) -> None:
        """Called once the batch's output is acknowledged, before the commit."""

    def dead_letter(self, msg: confluent_kafka.Message, reason: str) -> None:
        logger.warning("%s: dead letter %s[%d]@%d: %s", self.name, msg.topic(), msg.partition(), msg.offset(),
                       one_line(reason, 300))
        value = msg.value()
        ref = self.store_raw([value])[0] if self.store_raw is not None and value is not None else None
        letter = dead_letter(msg, reason, self.name, max_bytes=self.max_dlq_bytes, raw_ref=ref)
        self._outbox.append(Outgoing(self.dlq_topic, tag=("dlq", letter), **letter.kwargs()))
        self.stats.dead_letters += 1

    def process(self, msgs: Sequence[confluent_kafka.Message]) -> None:
        """Handle a batch, wait for Kafka's acknowledgements, then commit offsets.

        A message whose handling raises is dead-lettered (its queued outputs dropped);
        an output Kafka refuses for its size dead-letters its message.
        """
        offsets: dict[tuple[str, int], int] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != confluent_kafka.KafkaError._PARTITION_EOF:
                    logger.warning("%s: consumer error: %s", self.name, err)
                continue
            mark = len(self._outbox)
            self._current = msg
            try:
                self.handle(msg)
            except StageStopped:
                raise
            except Exception as exc:  # noqa: BLE001 - one message must not stop the stage
                if is_infrastructure_error(exc):
                    raise
                logger.exception("%s: handling %s[%d]@%d failed", self.name, msg.topic(), msg.partition(),
                                 msg.offset())
                del self._outbox[mark:]
                self.on_failed(msg)
                self.dead_letter(msg, f"{self.name} failed: {one_line(error_text(exc), 300)}")
            finally:
                self._current = None
            offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
        if not offsets:
            return
        outbox, self._outbox = self._outbox, []
        refused = publish(self.producer, outbox, name=self.name, stop=self.stop, backoff=self.backoff)
        while refused:
            resend, origins = triage_refused(refused, self.dlq_topic, self.name)
            for msg, reason in origins:
                self.on_failed(msg)
                self.dead_letter(msg, reason)
            resend, self._outbox = resend + self._outbox, []
            refused = publish(self.producer, resend, name=self.name, stop=self.stop, backoff=self.backoff)
        self.after_flush()
        commit_offsets(self.consumer, offsets, self.name, stop=self.stop, backoff=self.backoff)

    def on_failed(self, msg: confluent_kafka.Message) -> None:
        """Forget what :meth:`handle` queued for ``msg`` (its outputs are not sent)."""

    def _process_until_done(self, msgs: Sequence[confluent_kafka.Message], stop: threading.Event) -> None:
        """:meth:`process`, retried from scratch while the database or disk is unavailable."""
        while True:
            try:
                self.process(msgs)
                self.backoff.reset()
                return
            except Exception as exc:
                if not is_infrastructure_error(exc):
                    raise
                self._outbox = []
                self.on_failed_batch()
                self.backoff.wait(f"storage unavailable ({type(exc).__name__}: {one_line(str(exc), 200)}); "
                                  "the batch will be handled again", stop)

    def on_failed_batch(self) -> None:
        """Forget everything queued for the batch being retried."""

    def caught_up(self) -> bool:
        """True when every assigned partition is consumed up to its high watermark."""
        return caught_up(self.consumer, self.admin, self.subscription)

    def run(self, stop: threading.Event, *, until_caught_up: bool = False, idle_s: float = 3.0,
            upstream_done: Callable[[], bool] = lambda: True) -> None:
        """Loop until ``stop`` is set, or (``until_caught_up``) until idle, caught up and
        ``upstream_done()`` (the worker waits for the trigger to finish first)."""
        self.stop = stop
        last = time.monotonic()
        try:
            while not stop.is_set():
                msgs = self.consumer.consume(num_messages=self.batch_size, timeout=self.poll_timeout_s)
                if msgs:
                    self._process_until_done(msgs, stop)
                    last = time.monotonic()
                elif (until_caught_up and upstream_done() and time.monotonic() - last >= idle_s
                      and self.caught_up()):
                    break
        except StageStopped as exc:
            logger.info("%s", exc)
        finally:
            self.consumer.close()


class TriggerStage(_KafkaLoop):
    """Rules on ``mma.events`` → requests on ``mma.followup.requests`` (see module docstring)."""

    name = "followup.trigger"

    def __init__(self, consumer, producer, *, requests_topic: str, dlq_topic: str, rules: Sequence[Any],
                 enabled_analyses: Sequence[str], params: dict[str, Any], provenance: Provenance,
                 stats: FollowupStats, codec: EventCodec | None = None, **loop: Any) -> None:
        super().__init__(consumer, producer, dlq_topic=dlq_topic, stats=stats, **loop)
        self.requests_topic, self.rules, self.enabled = requests_topic, rules, tuple(enabled_analyses)
        self.params, self.provenance, self.codec = params, provenance, codec or EventCodec()

    def handle(self, msg: confluent_kafka.Message) -> None:
        try:
            event, _ = self.codec.decode(msg.value() or b"")
        except (DecodeError, ValueError) as exc:
            self.dead_letter(msg, f"follow-up trigger: {exc}")
            return
        self.stats.events += 1
        decision = decide(event, self.rules, self.enabled)
        if decision.action == "skip":
            logger.debug("%s: no follow-up for %s (%s)", self.name, event.id, decision.reason)
            return
        kind = "withdraw" if decision.action == "withdraw" else "analyze"
        request = FollowupRequest(kind=kind, event=event, analyses=decision.analyses,
                                  params=self.params if kind == "analyze" else {},
                                  requested_by=f"rule:{decision.rule}", provenance=self.provenance)
        key, value, headers = request_record(request)
        self.send(self.requests_topic, key, value, headers)
        if kind == "withdraw":
            self.stats.withdraw_requests += 1
        else:
            self.stats.requests += 1
        logger.info("%s: %s request %s for %s (%s)", self.name, kind, request.request_id, event.id, decision.reason)


def request_record(request: FollowupRequest) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Key (upstream id), value and headers (content type, request id) of one request."""
    return (request.event.upstream_id.encode(), request.encode(),
            [("content-type", CONTENT_TYPE.encode()), ("mma.followup.request_id", request.request_id.encode())])


def publish_request(producer: confluent_kafka.Producer, topic: str, request: FollowupRequest,
                    on_delivery: Callable | None = None) -> None:
    """Produce one request (key = upstream id; headers: content type, request id)."""
    key, value, headers = request_record(request)
    producer.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery)


class WorkerStage(_KafkaLoop):
    """Requests → analysis → archive → ``mma.followup.results`` (see module docstring).

    Parameters
    ----------
    store : followup.store.FollowupStore
    archive : broker.archive.Archive or None
        For the retraction state of the event and the sky map in its raw alert.
    sources, cache
        As for :func:`followup.service.run_followup`.
    results_topic : str
    output_dir : Path or None
        Where ``<request_id>.png`` plots are written (None: not written to disk).
    """

    name = "followup.worker"

    def __init__(self, consumer, producer, *, store: Any, archive: Any, sources: Any, cache: Any,
                 results_topic: str, dlq_topic: str, provenance: Provenance, stats: FollowupStats,
                 output_dir: Path | None = None, **loop: Any) -> None:
        super().__init__(consumer, producer, dlq_topic=dlq_topic, stats=stats, **loop)
        self.store, self.archive, self.sources, self.cache = store, archive, sources, cache
        self.results_topic, self.provenance, self.output_dir = results_topic, provenance, output_dir
        self._published: list[str] = []

    def handle(self, msg: confluent_kafka.Message) -> None:
        try:
            request = FollowupRequest.decode(msg.value() or b"")
        except ValueError as exc:
            self.dead_letter(msg, str(exc))
            return
        self.execute(request)

    def execute(self, request: FollowupRequest) -> dict[str, Any] | None:
        """Run (or recognise as done) one request; returns the document published, if any."""
        rid = request.request_id
        stored = self.store.get(rid)
        if stored is not None and stored.published:
            self.stats.duplicates_skipped += 1
            logger.info("%s: request %s already done (%s); skipped", self.name, rid, stored.status)
            return None
        if stored is not None:
            document = stored.document
        elif request.kind == "withdraw":
            document = self._withdraw(request)
        else:
            document, png = self._analyze(request)
            self.store.insert(document, png)
            self.stats.results += 1
        self.send(self.results_topic, request.event.upstream_id.encode(), result_message(document),
                  [("content-type", CONTENT_TYPE.encode()), ("mma.followup.request_id", rid.encode()),
                   ("mma.followup.kind", document["kind"].encode())])
        self._published.append((self._current, rid))
        return document

    def after_flush(self) -> None:
        self.store.mark_published([rid for _, rid in self._published])
        self._published = []

    def on_failed(self, msg: confluent_kafka.Message) -> None:
        self._published = [(m, rid) for m, rid in self._published if m is not msg]

    def on_failed_batch(self) -> None:
        self._published = []

    def _base(self, request: FollowupRequest, kind: str) -> dict[str, Any]:
        ev = request.event
        return {"schema": RESULT_SCHEMA, "kind": kind, "request_id": request.request_id, "event_id": ev.id,
                "source": ev.source, "upstream_id": ev.upstream_id, "mission": ev.mission,
                "instrument": ev.instrument, "alert_type": ev.alert_type, "t0": ev.time,
                "requested_by": request.requested_by, "analyses_requested": sorted(request.analyses),
                "created_at": utc_now(), "provenance": self.provenance.__dict__}

    def _withdraw(self, request: FollowupRequest) -> dict[str, Any]:
        ev = request.event
        withdrawn = self.store.withdraw(ev.source, ev.upstream_id, by=ev.id, mission=ev.mission)
        doc = self._base(request, "withdrawal") | {
            "status": "withdrawn", "withdrawn_request_ids": withdrawn, "retracted_by": ev.id,
            "summary_text": (f"{ev.upstream_id} was retracted ({ev.id}); {len(withdrawn)} INTEGRAL follow-up "
                             f"result(s) withdrawn.\n")}
        self.store.insert(doc)
        self.stats.withdrawals += 1
        return doc

    def _retracted_by(self, request: FollowupRequest) -> str | None:
        ev = request.event
        if self.archive is not None:
            rec = self.archive.get(ev.id)
            if rec is not None and rec.retracted:
                return rec.retracted_by
        return self.store.withdrawal_for(ev.source, ev.upstream_id, ev.mission)

    def _analyze(self, request: FollowupRequest) -> tuple[dict[str, Any], bytes | None]:
        ev = request.event
        base = self._base(request, "result") | {"withdrawn": False, "withdrawn_by": None}
        retracted_by = self._retracted_by(request)
        if retracted_by is not None:
            return base | {"status": "withdrawn", "withdrawn": True, "withdrawn_by": retracted_by, "analyses": {},
                           "lineage": [], "plot": None,
                           "summary_text": f"{ev.upstream_id} was retracted ({retracted_by}); not analysed.\n"}, None
        params = FollowupParams(window_s=float(request.params.get("window_s", 300.0)),
                                max_sky_samples=int(request.params.get("max_sky_samples", 1000)))
        try:
            result = run_followup(ev, request.analyses, self.sources, self.cache, params, self._skymap(ev))
        except Exception as exc:  # noqa: BLE001 - an analysis bug is recorded, the stream goes on
            logger.exception("%s: follow-up of %s failed", self.name, ev.id)
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            return base | {"status": "failed", "error": reason, "analyses": {}, "lineage": [], "plot": None,
                           "summary_text": f"INTEGRAL follow-up of {ev.upstream_id} failed: {reason}\n"}, None
        doc = base | result.to_dict()
        doc["t0"] = ev.time
        if result.plot_png is not None and self.output_dir is not None:
            path = self.output_dir / f"{request.request_id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(result.plot_png)
            doc["plot"] = (doc.get("plot") or {}) | {"path": str(path)}
        return doc, result.plot_png

    def _skymap(self, event: Any) -> Any:
        if self.archive is None or event.localization is None or event.localization.type != "healpix":
            return None
        from followup.eventdata import skymap_from_raw

        from broker.archive.raw import RawStoreError

        try:
            raw = self.archive.raw(event.id)
        except (KeyError, RawStoreError) as exc:
            logger.warning("%s: raw alert of %s unavailable (%s); using the most probable position",
                           self.name, event.id, exc)
            return None
        return skymap_from_raw(event, raw)


def run_followup_stage(settings: Any, stop: threading.Event, until_caught_up: bool = False,
                       idle_s: float = 3.0) -> FollowupStats:
    """Run the trigger and the worker (one thread each) until ``stop`` or caught up.

    Parameters
    ----------
    settings : broker.config.Settings
    stop : threading.Event
        Set it (SIGTERM) to stop after the current batches (their offsets committed).
    until_caught_up : bool
        Stop when ``mma.events`` and ``mma.followup.requests`` are consumed and nothing
        arrived for ``idle_s`` seconds (the worker waits for the trigger to finish).
    idle_s : float

    Returns
    -------
    FollowupStats

    Raises
    ------
    Exception
        The first error of either thread (the other is stopped).
    """
    from broker.app import open_archive, provenance
    from broker.kafka import ensure_topics, make_consumer, make_producer
    from followup.build import build_cache, build_sources, output_directory, request_params
    from followup.store import FollowupStore

    s, f = settings, settings.followup
    events, requests, results, dlq = (s.topic(s.events_topic), s.topic(f.requests_topic),
                                      s.topic(f.results_topic), s.topic(s.dlq_topic))
    archive = open_archive(s)
    ensure_topics(s, [events, requests, results, dlq])
    stats = FollowupStats()
    loop = {"batch_size": f.batch_size, "poll_timeout_s": f.poll_timeout_s, "max_dlq_bytes": s.limits.max_dlq_bytes,
            "store_raw": archive.store_raw}
    trigger = TriggerStage(
        make_consumer(s, f"{s.group_id}.followup.trigger"), make_producer(s), requests_topic=requests,
        dlq_topic=dlq, rules=f.rules, enabled_analyses=f.analyses, params=request_params(s),
        provenance=provenance(s, "followup.trigger"), stats=stats, **loop)
    worker = WorkerStage(
        make_consumer(s, f"{s.group_id}.followup.worker"), make_producer(s), store=FollowupStore(archive.engine),
        archive=archive, sources=build_sources(s), cache=build_cache(s, archive.engine), results_topic=results,
        dlq_topic=dlq, provenance=provenance(s, "followup.worker"), stats=stats,
        output_dir=output_directory(s), **loop)
    if until_caught_up:
        from confluent_kafka.admin import AdminClient

        from broker.kafka import client_config

        trigger.admin = worker.admin = AdminClient(client_config(s))
    trigger.subscription, worker.subscription = [events], [requests]
    trigger.consumer.subscribe([events])
    worker.consumer.subscribe([requests])
    errors: list[BaseException] = []
    trigger_done = threading.Event()

    def _run(stage: _KafkaLoop, **kw: Any) -> None:
        try:
            stage.run(stop, until_caught_up=until_caught_up, idle_s=idle_s, **kw)
        except BaseException as exc:  # surfaced below; stops the other thread
            errors.append(exc)
            stop.set()
        finally:
            if stage is trigger:
                trigger_done.set()

    threads = [threading.Thread(target=_run, args=(trigger,), name=trigger.name),
               threading.Thread(target=_run, args=(worker,), kwargs={"upstream_done": trigger_done.is_set},
                                name=worker.name)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(0.2)
    archive.close()
    if errors:
        raise errors[0]
    return stats
