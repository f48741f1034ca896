"""The follow-up stage: workers on ``mma.followup.requests``.

Requests come from the filter stage (:mod:`filters.stage`: an accepted decision of a
filter that asks for a follow-up, such as the default ``followup-rule`` instances,
:mod:`followup.filter`) and from people (``mma-broker followup run|request``). A
request carries the Event's group (:func:`broker.enrich.groups.group_key`, as the
enrich stage stored it) and the id of the stored sky map to sample (the Event's own,
or its group's best): nothing here decodes raw alert bytes again.

One consumer group, scalable by adding processes:

* ``<group_id>.followup.worker`` reads the requests. Per request: if its deterministic
  id is already stored and published, nothing is done (a replayed alert is not analysed
  again); if stored but not yet published (a crash in between), it is published.
  Otherwise the revision is compared with its group's follow-up (one per trigger or
  superevent, the request's ``group``): the first revision, a revision with a
  new T0 or a better localization, or a request made by hand is analysed
  (:func:`followup.service.run_followup`, through the provenance cache); its result
  names the earlier one it ``supersedes`` and the earlier row gets ``superseded_by``
  in the same transaction. A revision that adds nothing
  (:func:`followup.rules.reanalysis_reason` is None) is recorded as a ``skipped`` row
  pointing at the group's result and publishes nothing. The PNG plot goes to the
  archive's content-addressed store (:class:`followup.store.ArtifactStore`) and the
  result refers to it as ``mma-broker://artifact/sha256/<hex>``. The sky map is read
  from the localization store (:meth:`broker.enrich.store.LocalizationStore.load`). The result is
  written to ``followup_results``, published to ``mma.followup.results``, marked
  published, and only then are offsets committed.
  A ``withdraw`` request (from a retraction) marks every result of the group
  withdrawn and publishes one withdrawal message (a second retraction of the group,
  such as the VOEvent form of an LVK retraction, is recorded as skipped when it has
  nothing left to withdraw); a revision of an already retracted trigger is recorded
  as skipped without running.

It runs on the stage runner (:mod:`broker.pipeline.runner`), like the ingest
stage: no single message can stop the loop (a message that does not decode, or
whose handling raises, goes to ``mma.dlq`` with its reason and the batch goes on);
while Kafka or the database is away the loop waits and resumes; each batch's
outputs and offsets are committed in one Kafka transaction, so each request appears
once on ``mma.followup.requests`` and each result once on ``mma.followup.results``
(a crash after the transaction commits but before the result is marked published,
followed by the *same* request sent again by hand, would publish it a second time).
The worker handles its batches off the poll thread, up to ``followup.workers``
requests at once (different alerts in parallel, revisions of one alert in order), so
an analysis that waits minutes for MMODA neither stalls the consumer past
``max.poll.interval.ms`` nor holds up other alerts of its batch.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import confluent_kafka

from broker.errors import DecodeError
from broker.kafka import Outgoing
from broker.pipeline.runner import IDLE_INPUT_FILL_S, BaseStage, Handled, StageRunner, with_hop_headers
from broker.serde import Provenance
from followup.messages import (
    CONTENT_TYPE, RESULT_SCHEMA, USER_SOURCE, FollowupRequest, result_message, utc_now,
)
from broker.enrich.groups import group_key
from followup.rules import reanalysis_reason
from followup.service import FollowupParams, run_followup
from followup.store import ArtifactStore

logger = logging.getLogger(__name__)


@dataclass
class FollowupStats:
    """Running totals of one follow-up stage process."""

    requests: int = 0
    results: int = 0
    withdrawals: int = 0
    duplicates_skipped: int = 0
    revisions_skipped: int = 0
    dead_letters: int = 0

    def summary(self) -> str:
        """One line for people."""
        return (f"follow-up: {self.requests} request(s) read; {self.results} result(s), "
                f"{self.withdrawals} withdrawal(s), {self.duplicates_skipped} duplicate(s) skipped, "
                f"{self.revisions_skipped} request(s) adding nothing to their trigger's follow-up (not published), "
                f"{self.dead_letters} dead letter(s)")


def _loop_kwargs(loop: dict[str, Any]) -> dict[str, Any]:
    """StageRunner keywords from the follow-up loops' historical ones."""
    loop = dict(loop)
    if "max_dlq_bytes" in loop:
        from broker.limits import DecodeLimits

        loop["limits"] = DecodeLimits(max_dlq_bytes=loop.pop("max_dlq_bytes"))
    return loop


def request_record(request: FollowupRequest) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Key (upstream id), value and headers (content type, request id) of one request."""
    return (request.event.upstream_id.encode(), request.encode(),
            [("content-type", CONTENT_TYPE.encode()), ("mma.followup.request_id", request.request_id.encode())])


def publish_request(producer: confluent_kafka.Producer, topic: str, request: FollowupRequest,
                    on_delivery: Callable | None = None) -> None:
    """Produce one request (key = upstream id; headers: content type, request id)."""
    key, value, headers = request_record(request)
    producer.produce(topic, key=key, value=value, headers=with_hop_headers(headers), on_delivery=on_delivery)


class WorkerHandler(BaseStage):
    """Requests → analysis → ``followup_results`` → ``mma.followup.results`` (see module docstring).

    Parameters
    ----------
    store : followup.store.FollowupStore
    archive : broker.archive.Archive or None
        For the retraction state of the event, the sky map in its raw alert, and the
        artifact store (plots, user sky maps). None: plots are described by sha256
        and size only (no ``ref``), and user sky maps cannot be read.
    sources, cache
        As for :func:`followup.service.run_followup`.
    results_topic : str
    localizations : broker.enrich.store.LocalizationStore or None
        Where the request's ``localization_ref`` sky map is read. None: analyses
        use the Event's point localization or most probable position.
    """

    name = "followup.worker"

    def __init__(self, *, store: Any, archive: Any, sources: Any, cache: Any, results_topic: str,
                 provenance: Provenance, stats: FollowupStats, localizations: Any = None) -> None:
        self.store, self.archive, self.sources, self.cache = store, archive, sources, cache
        self.localizations = localizations
        self.results_topic, self.provenance, self.stats = results_topic, provenance, stats
        self.artifacts = ArtifactStore(archive) if archive is not None else None
        self._lock = threading.Lock()
        self._in_batch: set[str] = set()

    def handle(self, msg: confluent_kafka.Message) -> Handled:
        try:
            request = FollowupRequest.decode(msg.value() or b"")
        except ValueError as exc:
            raise DecodeError(str(exc)) from None
        return Handled(msg, *self.execute(request))

    def execute(self, request: FollowupRequest) -> tuple[list[Outgoing], Any, Any]:
        """Run (or recognise as done, or as adding nothing) one request: (records to publish, None, note).

        The result is stored before it is published; a request already stored and
        published (or met earlier in this batch) is skipped, and so is one whose
        revision adds nothing to its group's follow-up (stored as ``skipped``).
        """
        rid = request.request_id
        with self._lock:
            if rid in self._in_batch:
                return [], None, ("duplicate", rid)
            self._in_batch.add(rid)
        stored = self.store.get(rid)
        if stored is not None and (stored.published or stored.kind == "skipped"):
            logger.info("%s: request %s already done (%s); skipped", self.name, rid, stored.status)
            return [], None, ("duplicate", rid)
        if stored is not None:
            document, note = stored.document, "republished"
        elif request.kind == "withdraw":
            document, note = self._withdraw(request)
            if note == "skipped":
                return [], None, ("skipped", rid)
        else:
            document, note = self._analyze_or_skip(request)
            if note == "skipped":
                return [], None, ("skipped", rid)
        rec = Outgoing(self.results_topic, request.event.upstream_id.encode(), result_message(document),
                       [("content-type", CONTENT_TYPE.encode()), ("mma.followup.request_id", rid.encode()),
                        ("mma.followup.kind", document["kind"].encode())])
        return [rec], None, (note, rid)

    def committed(self, batch: list[Handled], dead: list[tuple[Any, str]]) -> None:
        done = [h.info[1] for h in batch if h.info and h.info[0] not in ("duplicate", "skipped")]
        self.store.mark_published(done)
        self.stats.requests += len(batch)
        for h in batch:
            note = h.info[0] if h.info else None
            if note == "result":
                self.stats.results += 1
            elif note == "withdrawal":
                self.stats.withdrawals += 1
            elif note == "duplicate":
                self.stats.duplicates_skipped += 1
            elif note == "skipped":
                self.stats.revisions_skipped += 1
        self.stats.dead_letters += len(dead)
        self.on_retry()

    def on_retry(self) -> None:
        """Forget the request ids met in the batch (it is over, or will be handled again)."""
        with self._lock:
            self._in_batch.clear()

    def _base(self, request: FollowupRequest, kind: str) -> dict[str, Any]:
        ev = request.event
        loc = ev.localization.model_dump(mode="json") if ev.localization is not None else None
        return {"schema": RESULT_SCHEMA, "kind": kind, "request_id": request.request_id, "event_id": ev.id,
                "source": ev.source, "upstream_id": ev.upstream_id, "mission": ev.mission,
                "instrument": ev.instrument, "alert_type": ev.alert_type, "t0": ev.time,
                "group": _group(request), "localization": loc,
                "localization_ref": request.localization_ref,
                "requested_by": request.requested_by, "analyses_requested": sorted(request.analyses),
                "params": dict(request.params), "created_at": utc_now(), "provenance": self.provenance.__dict__}

    def _withdraw(self, request: FollowupRequest) -> tuple[dict[str, Any], str]:
        """Withdraw the group's results: (the withdrawal document, "withdrawal"), or a
        skipped row when an earlier retraction of the group (the other form of one
        LVK retraction: JSON and VOEvent) already withdrew everything."""
        ev = request.event
        group = _group(request)
        earlier = self.store.withdrawal_for(group, with_request_id=True)
        withdrawn = self.store.withdraw(group, by=ev.id)
        if earlier is not None and not withdrawn:
            return self._skip(request, "retracted", f"{ev.upstream_id} was already retracted ({earlier[0]}); "
                              f"nothing left to withdraw.\n", earlier[1]), "skipped"
        doc = self._base(request, "withdrawal") | {
            "status": "withdrawn", "withdrawn_request_ids": withdrawn, "retracted_by": ev.id,
            "summary_text": (f"{ev.upstream_id} was retracted ({ev.id}); {len(withdrawn)} INTEGRAL follow-up "
                             f"result(s) withdrawn.\n")}
        self.store.insert(doc)
        return doc, "withdrawal"

    def _retracted_by(self, request: FollowupRequest) -> str | None:
        ev = request.event
        if self.archive is not None:
            rec = self.archive.get(ev.id)
            if rec is not None and rec.retracted:
                return rec.retracted_by
        return self.store.withdrawal_for(_group(request))

    def _skip(self, request: FollowupRequest, status: str, text: str, same_as: str | None) -> dict[str, Any]:
        """Store a ``skipped`` row (never published) and return its document."""
        doc = self._base(request, "skipped") | {"status": status, "same_as": same_as, "analyses": {},
                                                "summary_text": text}
        self.store.insert(doc)
        return doc

    def _analyze_or_skip(self, request: FollowupRequest) -> tuple[dict[str, Any], str]:
        ev = request.event
        retracted_by = self._retracted_by(request)
        if retracted_by is not None:
            logger.info("%s: %s was retracted (%s); %s not analysed", self.name, ev.upstream_id, retracted_by, ev.id)
            return self._skip(request, "retracted", f"{ev.upstream_id} was retracted ({retracted_by}); "
                              f"{ev.id} not analysed.\n", None), "skipped"
        current = self.store.current(_group(request))
        reason = reanalysis_reason(ev, request.analyses, dict(request.params), request.requested_by,
                                   current.document if current is not None else None)
        if reason is None:
            logger.info("%s: %s adds nothing to the follow-up %s of %s; not analysed again", self.name, ev.id,
                        current.request_id, _group(request))
            return self._skip(request, "unchanged",
                              f"{ev.id} has the T0 and no better localization than {current.event_id}: "
                              f"not analysed again; the follow-up of {ev.upstream_id} is {current.request_id}.\n",
                              current.request_id), "skipped"
        document = self._analyze(request) | {"revision_reason": reason,
                                             "supersedes": current.request_id if current is not None else None,
                                             "superseded_by": None}
        self.store.insert(document, supersedes=current.request_id if current is not None else None)
        return document, "result"

    def _analyze(self, request: FollowupRequest) -> dict[str, Any]:
        ev = request.event
        base = self._base(request, "result") | {"withdrawn": False, "withdrawn_by": None}
        params = FollowupParams(window_s=float(request.params.get("window_s", 300.0)),
                                max_sky_samples=int(request.params.get("max_sky_samples", 1000)))
        try:
            result = run_followup(ev, request.analyses, self.sources, self.cache, params, self._skymap(request))
        except Exception as exc:  # noqa: BLE001 - an analysis bug is recorded, the stream goes on
            logger.exception("%s: follow-up of %s failed", self.name, ev.id)
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            return base | {"status": "failed", "error": reason, "analyses": {}, "lineage": [], "plot": None,
                           "summary_text": f"INTEGRAL follow-up of {ev.upstream_id} failed: {reason}\n"}
        doc = base | result.to_dict()
        doc["t0"] = ev.time
        if result.plot_png is not None and self.artifacts is not None:
            doc["plot"] = self.artifacts.put(result.plot_png, "image/png")
        return doc

    def _skymap(self, request: FollowupRequest) -> Any:
        """(NUNIQ, probability density sr⁻¹) arrays of the sky map the analysis samples, or None.

        An ad-hoc request's map is its artifact; any other comes from the localization
        store by the request's ``localization_ref`` (never from raw alert bytes).
        None — the analysis then uses the point localization or the most probable
        position — when there is no map, or it cannot be read (logged).
        """
        event = request.event
        if event.source == USER_SOURCE:  # an ad-hoc request: the map is an artifact
            if event.localization is None or event.localization.type != "healpix":
                return None
            from broker.archive.raw import RawStoreError
            from broker.errors import DecodeError
            from broker.skymap import read_multiorder

            ref = (event.properties.get("skymap") or {}).get("ref")
            if ref is None or self.artifacts is None:
                return None
            try:
                data, _ = self.artifacts.get(ref)
                uniq, probdensity, _ = read_multiorder(data)
            except (KeyError, RawStoreError, DecodeError) as exc:
                logger.warning("%s: sky map %s of %s unavailable (%s); using the most probable position",
                               self.name, ref, event.id, exc)
                return None
            return uniq, probdensity
        return stored_skymap(self.localizations, request.localization_ref, event.id)


def stored_skymap(localizations: Any, ref: str | None, event_id: str) -> tuple[Any, Any] | None:
    """(NUNIQ, probability density sr⁻¹) of the stored sky map ``ref``, or None.

    Parameters
    ----------
    localizations : broker.enrich.store.LocalizationStore or None
    ref : str or None
        ``sha256:<hex>`` id of a stored localization.
    event_id : str
        For the log line when the map cannot be read.

    Returns
    -------
    tuple of numpy.ndarray, shapes (n,) and (n,), or None
        None when ``ref`` or the store is None, the id is unknown, or it is a point.
    """
    if ref is None or localizations is None:
        return None
    from broker.enrich.store import LocalizationError

    try:
        sky = localizations.load(ref)
    except LocalizationError as exc:
        logger.warning("followup: sky map of %s unavailable (%s); using the most probable position", event_id, exc)
        return None
    uniq = getattr(sky, "uniq", None)
    return None if uniq is None else (uniq, sky.probdensity)


def stored_enrichment(engine: Any, event: Any) -> tuple[str | None, str | None]:
    """(group key, stored sky map id) of an archived Event, as the enrich stage left them.

    The same choice as the enrich stage's ``enrichment.localization``: the Event's own
    sky map, else (not for a retraction) its group's best localization if that is a
    sky map. For requests made by hand (``mma-broker followup run``).

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The archive's.
    event : broker.event.Event

    Returns
    -------
    (str or None, str or None)
        Both None when the enrich stage has not seen the Event yet.
    """
    from broker.enrich.groups import GroupStore
    from broker.enrich.store import LocalizationStore

    own = LocalizationStore(engine).ref_of(event.id)
    state = GroupStore(engine).of_event(event.id)
    ref = own if own is not None else (None if state is None or event.is_retraction else state.best_localization)
    return (None if state is None else state.key,
            ref.id if ref is not None and ref.kind == "skymap" else None)


def _group(request: FollowupRequest) -> str:
    """The request's event group: as the enrich stage stored it, else computed the same way."""
    return request.group or group_key(request.event)


class WorkerStage(StageRunner):
    """A :class:`WorkerHandler` on a :class:`~broker.pipeline.runner.StageRunner`."""

    def __init__(self, consumer: Any, producer: Any, *, store: Any, archive: Any, sources: Any, cache: Any,
                 results_topic: str, dlq_topic: str, provenance: Provenance, stats: FollowupStats,
                 localizations: Any = None, **loop: Any) -> None:
        handler = WorkerHandler(store=store, archive=archive, sources=sources, cache=cache,
                                results_topic=results_topic, provenance=provenance, stats=stats,
                                localizations=localizations)
        super().__init__(handler, consumer, producer, dlq_topic=dlq_topic, **_loop_kwargs(loop))

    def execute(self, request: FollowupRequest) -> tuple[list[Outgoing], Any, Any]:
        return self.stage.execute(request)


def stages(app: Any, *, until_caught_up: bool = False) -> list[Any]:
    """The follow-up's loop, the worker (``mma_broker.stages`` entry ``followup``).

    Empty when ``[followup] enabled = false``.

    Raises
    ------
    broker.errors.BrokerError
        ``[enrich]`` is disabled: requests name stored sky maps and groups, which only
        the enrich stage writes.
    """
    from broker.app import open_archive, provenance
    from broker.enrich.store import LocalizationStore
    from broker.kafka import claim_instance, client_config, ensure_topics, make_consumer, stage_producer
    from broker.stages import StageSpec
    from followup.build import build_cache, build_sources
    from followup.store import FollowupStore

    s = app.settings
    f = s.followup
    if not f.enabled:
        return []
    if not s.enrich.enabled:
        from broker.errors import BrokerError

        raise BrokerError("[followup] enabled needs [enrich] enabled: follow-up requests name the event groups "
                          "and stored sky maps the enrich stage writes; enable [enrich] or disable [followup]")
    requests, results, dlq = s.topic(f.requests_topic), s.topic(f.results_topic), s.topic(s.dlq_topic)
    archive = open_archive(s)
    ensure_topics(s, [requests, results, dlq])
    stats = FollowupStats()
    admin = None
    if until_caught_up:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(client_config(s))
    name = "followup.worker"
    consumer = make_consumer(s, f"{s.group_id}.{name}")
    consumer.subscribe([requests])
    slot = claim_instance(s, name)
    worker = WorkerStage(consumer, stage_producer(s, name, slot), store=FollowupStore(archive.engine),
                         archive=archive, sources=build_sources(s), cache=build_cache(s, archive.engine),
                         results_topic=results, dlq_topic=dlq, provenance=provenance(s, name), stats=stats,
                         handler_threads=f.workers, localizations=LocalizationStore(archive.engine),
                         batch_size=f.batch_size, poll_timeout_s=f.poll_timeout_s, fill_s=IDLE_INPUT_FILL_S,
                         limits=s.limits,
                         store_raw=archive.store_raw, transactional=s.kafka.transactions,
                         producer_factory=functools.partial(stage_producer, s, name, slot), admin=admin,
                         subscription=[requests], metrics=app.metrics.stage(name))
    return [StageSpec(name, worker, inputs=[requests], outputs=[results], after=["filters"],
                      summary=lambda: [stats.summary()], close=lambda: (archive.close(), slot.release()))]


def run_followup_stage(settings: Any, stop: threading.Event, until_caught_up: bool = False,
                       idle_s: float = 3.0) -> FollowupStats:
    """Run the worker until ``stop`` or caught up.

    Parameters
    ----------
    settings : broker.config.Settings
    stop : threading.Event
        Set it (SIGTERM) to stop after the current batches (their offsets committed).
    until_caught_up : bool
        Stop when ``mma.followup.requests`` is consumed and nothing arrived for
        ``idle_s`` seconds.
    idle_s : float

    Returns
    -------
    FollowupStats
    """
    from broker import stages as stage_runner
    from broker.app import App

    specs = stages(App(settings), until_caught_up=until_caught_up)
    if not specs:
        return FollowupStats()
    stats = specs[0].runner.stage.stats
    try:
        stage_runner.run(specs, stop, until_caught_up=until_caught_up, idle_s=idle_s)
    finally:
        stage_runner.close(specs)
    return stats
