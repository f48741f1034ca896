"""The filter stage: ``mma.events.enriched`` → the enabled filters → ``mma.filter.<name>``.

One loop (consumer group ``<group_id>.filters``) on the stage runner
(:mod:`broker.pipeline.runner`), after the enrich stage. Per record of
``mma.events.enriched``:

1. the record is read back (:func:`broker.enrich.enriched.decode_enriched`); one that
   is not an enriched Event is a dead letter (``mma.dlq``, the reason in its headers);
2. a :class:`filters.api.FilterInput` is built: the Event, its enrichment, the
   catalogs of ``[filters] catalogs``, and its raw upstream bytes *on demand* — a
   filter that calls :meth:`~filters.api.FilterInput.raw` or
   :meth:`~filters.api.FilterInput.ztf_history` makes the stage read them from the
   archive's raw store. The first such call in a batch looks up, in one query, where
   the bytes of that ZTF/LSST alert and of every later ZTF/LSST alert of the batch are
   (their ids are in the ``mma.event.id`` header the enrich stage sets: nothing is
   decoded for that), so a filter reading the history of every alert costs one query
   per batch, and a batch where no filter asks reads nothing. Each alert's bytes are
   read when a filter asks for them (:class:`LazyRaw`), not hashed again
   (:func:`fetch_raw_many`). The history itself is decoded only for the alerts a
   filter asks about, once however many filters ask;
3. the :class:`filters.engine.FilterSet` of ``[filters] filters`` decides (each filter
   isolated: one that raises, returns garbage or runs over its budget is counted,
   logged with the Event id, and is an error decision — never an acceptance);
4. for each acceptance, the enriched record with the decision as ``filter`` (schema
   ``filters/schemas/filtered_event.json``, key = ``upstream_id``) on the filter's
   topic ``<topic_prefix><name>`` (``mma.filter.<name>``; not for an entry with
   ``publish = false``); and, when ``[followup] enabled``, one
   :class:`followup.messages.FollowupRequest` per :class:`~filters.api.FollowupSpec`
   of an accepted result on ``mma.followup.requests`` (``requested_by
   "filter:<name>"``; ``kind withdraw`` for a retraction; analyses intersected with
   ``[followup] analyses``; the Event's group and stored sky map from the enrichment;
   ``window_s`` when the spec gives one). Two filters asking for the same follow-up
   of one Event give one request (same request id);
5. **durable write**: every decision of the batch, accepted or not, in
   ``filter_decisions`` (:class:`filters.store.DecisionStore`: one row per Event, one
   ``COPY`` per batch),
   *before* the Kafka transaction that publishes the records and commits the offsets.
   A batch consumed again after a crash is evaluated again and overwrites its rows.

Each accepted Event appears once on its filter topic: ``mma.events.enriched`` holds
each Event once and the records are produced in the batch's transaction.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.enrich.enriched import ENRICHED_SCHEMA, EnrichedEvent, decode_enriched
from broker.event import SURVEY_SOURCES
from broker.errors import BrokerError, DecodeError
from broker.kafka import Outgoing
from broker.pipeline.runner import NOTICE_PATH_FILL_S, BaseStage, Handled, StageRunner
from filters.engine import Decision, FilterSet
from filters.store import LIVE, encode_decisions

log = logging.getLogger(__name__)

__all__ = ["FILTERED_SCHEMA", "CONTENT_TYPE", "FollowupOutput", "FilterStageStats", "FilterHandler",
           "FilterRunner", "RawBatch", "LazyRaw", "encode_filtered", "filtered_values", "fetch_raw_many",
           "filtered_record", "followup_requests", "stages", "check_catalogs", "json_schema"]

FILTERED_SCHEMA = "mma.event.filtered/1"
"""``schema`` of a record of ``mma.filter.<name>`` (``filters/schemas/filtered_event.json``)."""
CONTENT_TYPE = "application/json"
_CONTENT_TYPE_HEADER = ("content-type", CONTENT_TYPE.encode())
RAW_BATCH_SOURCES = SURVEY_SOURCES
"""Sources whose raw bytes are read for the rest of the batch at the first request."""


def json_schema() -> dict[str, Any]:
    """The JSON Schema (Draft 2020-12) of a filter topic's records, parsed."""
    from importlib.resources import files

    return json.loads((files("filters") / "schemas" / "filtered_event.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------ raw bytes
def fetch_raw_many(archive: Any, event_ids: Sequence[str], *, verify: bool = False) -> Mapping[str, bytes | None]:
    """Raw upstream bytes of several archived Events: one query for their refs, then the raw store.

    With the file raw store (the default) the bytes are read **when asked for**
    (:class:`LazyRaw`: each segment file opened once, one ``pread`` per alert), not all
    at once: 500 ZTF alerts are 40 MB, and holding them made the filter stage fault in
    fresh memory for every batch (about 55 µs of CPU per alert, more than reading
    them). The :class:`~broker.archive.raw.PostgresRawStore` is read in one query.

    By default the bytes are **not** hashed again: the live stage reads back, seconds
    after the ingest stage wrote and fsynced them, the ~80 kB of every ZTF alert, and
    their sha256 was 40 µs of CPU per alert, about a tenth of the stage
    (docs/filters-speed.md, third pass). Their length is checked; every other reader of
    the raw store verifies the sha256 (``filters run``, ``events show --raw``, ``dlq
    raw``, the enrich stage, ``archive export``).

    Parameters
    ----------
    archive : broker.archive.Archive
    event_ids : sequence of str
    verify : bool
        Hash the bytes read and compare them with the archived sha256.

    Returns
    -------
    mapping
        Event id → bytes, or None for an Event not archived or whose bytes are missing
        (or, with ``verify``, corrupt; logged). Close it (:meth:`LazyRaw.close`) when
        done, if it has a ``close``.
    """
    from broker.archive.raw import RawRef, RawStoreError

    ids = list(dict.fromkeys(event_ids))
    if not ids:
        return {}
    store = archive.raw_store
    with archive.engine.connect() as conn:
        # one array parameter (= ANY) rather than SQLAlchemy's IN of 500 bound values
        rows = conn.exec_driver_sql("SELECT id, raw_sha256, raw_length, raw_segment, raw_offset FROM events "
                                    "WHERE id = ANY(%s)", (ids,)).all()
        refs = {eid: RawRef(sha256=sha, length=length, segment=segment, offset=offset)
                for eid, sha, length, segment, offset in rows}
        if not hasattr(store, "reader"):  # the PostgreSQL raw store: one query for all
            out: dict[str, bytes | None] = dict.fromkeys(ids)
            got = store.get_many(list(refs.values()), conn if store.transactional else None, verify=verify)
            for eid, data in zip(refs, got):
                if isinstance(data, RawStoreError):
                    log.warning("filters: raw bytes of %s unreadable: %s", eid, data)
                else:
                    out[eid] = data
            return out
    return LazyRaw(ids, refs, store.reader(verify=verify))


class LazyRaw(Mapping):
    """Event id → raw bytes, each read from the file raw store when first asked for.

    Parameters
    ----------
    ids : sequence of str
        The Events asked about (those without a ref map to None).
    refs : mapping
        Event id → :class:`broker.archive.raw.RawRef`.
    reader : broker.archive.raw.SegmentReader
    """

    def __init__(self, ids: Sequence[str], refs: Mapping[str, Any], reader: Any) -> None:
        self._ids, self._refs, self._reader = list(ids), dict(refs), reader

    def __getitem__(self, event_id: str) -> bytes | None:
        from broker.archive.raw import RawStoreError

        if event_id not in self._refs:
            if event_id in self._ids:
                return None
            raise KeyError(event_id)
        try:
            return self._reader.read(self._refs[event_id])
        except RawStoreError as exc:
            log.warning("filters: raw bytes of %s unreadable: %s", event_id, exc)
            return None

    def __iter__(self) -> Any:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def close(self) -> None:
        """Close the segment files."""
        self._reader.close()


class RawBatch:
    """Raw bytes of one batch's Events, read when a filter first asks (see the module docstring).

    The first request of a batch fetches (one query) the rest of the batch; each
    alert's bytes are then taken from what ``fetch`` returned when that alert asks (a
    :class:`LazyRaw` reads them only then).

    Parameters
    ----------
    fetch : callable
        ``list of Event ids -> {id: bytes or None}`` (:func:`fetch_raw_many` bound to
        the archive); a returned mapping with a ``close`` method is closed at the end
        of the batch.
    """

    def __init__(self, fetch: Callable[[Sequence[str]], Mapping[str, bytes | None]]) -> None:
        self.fetch = fetch
        self._order: list[str] = []
        self._at: dict[str, int] = {}
        self._pending: dict[str, Mapping[str, bytes | None]] = {}
        self._fetched: list[Mapping[str, bytes | None]] = []
        self.queries = 0
        self.alerts_read = 0

    def begin(self, ids: Sequence[str]) -> None:
        """A new batch: the ids, in order, of its Events whose bytes are read together."""
        for got in self._fetched:
            close = getattr(got, "close", None)
            if close is not None:
                close()
        self._order = list(ids)
        self._at = {e: i for i, e in enumerate(self._order)}
        self._pending = {}
        self._fetched = []

    def clear(self) -> None:
        """Forget the batch (it is over, or will be handled again)."""
        self.begin(())

    def getter(self, event_id: str) -> Callable[[], bytes | None]:
        """The ``raw`` callable of one Event's :class:`~filters.api.FilterInput`."""
        return functools.partial(self.get, event_id)

    def get(self, event_id: str) -> bytes | None:
        """The Event's raw bytes (None when not archived); fetches the rest of the batch with it."""
        got = self._pending.pop(event_id, None)
        if got is None:
            i = self._at.get(event_id)
            ids = [event_id] if i is None else [e for e in self._order[i:] if e not in self._pending]
            got = self.fetch(ids)
            self._fetched.append(got)
            self.queries += 1
            for e in ids[1:]:
                self._pending[e] = got
        data = got.get(event_id)
        self.alerts_read += data is not None
        return data


# ------------------------------------------------------------------ outputs
@dataclass(frozen=True)
class FollowupOutput:
    """Where and how follow-up requests are published (``[followup] enabled``).

    Attributes
    ----------
    topic : str
        ``mma.followup.requests`` (with the Kafka topic prefix).
    analyses : tuple of str
        ``[followup] analyses``: a spec's analyses are intersected with these.
    params : dict
        The request parameters (``window_s`` s, ``max_sky_samples``) of
        :func:`followup.build.request_params`; a spec's ``window_s`` replaces the first.
    provenance : broker.serde.Provenance or None
    """

    topic: str
    analyses: tuple[str, ...]
    params: Mapping[str, Any]
    provenance: Any = None


def filtered_record(doc: Mapping[str, Any], decision: Decision, *, rerun: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
    """The JSON document of one accepted Event on a filter topic.

    Parameters
    ----------
    doc : mapping
        The ``mma.events.enriched`` record (parsed JSON).
    decision : filters.engine.Decision
    rerun : mapping, optional
        The re-run's ``id``, ``since``, ``until`` (:mod:`filters.rerun`); absent for
        the live stage.
    """
    out = dict(doc)
    out["schema"] = FILTERED_SCHEMA
    out["filter"] = decision.to_json_dict()
    if rerun is not None:
        out["rerun"] = dict(rerun)
    return out


def encode_filtered(doc: Mapping[str, Any], decisions: Sequence[Decision]) -> list[bytes]:
    """The record values of ``decisions`` on their filter topics, the enriched document encoded once.

    Equal, byte for byte, to ``json.dumps(filtered_record(doc, d), allow_nan=False,
    default=str).encode()`` for each decision: an alert accepted by several filters
    (ZTF alerts: about 4 of the 20 of the benchmark) has its enriched document, most of
    each record, serialized once instead of once per filter; only the decision is
    encoded per filter and appended as the last key.

    Raises
    ------
    ValueError
        A NaN or infinity in the document or a decision (``allow_nan=False``).
    """
    encode = _ENCODER.encode
    if len(decisions) < 2 or "filter" in doc:
        return [encode(filtered_record(doc, d)).encode() for d in decisions]
    head = dict(doc)
    head["schema"] = FILTERED_SCHEMA
    prefix = encode(head)[:-1].encode() + b', "filter": '
    return [prefix + encode(d.to_json_dict()).encode() + b"}" for d in decisions]


_ENCODER = json.JSONEncoder(allow_nan=False, default=str)
"""What ``json.dumps(obj, allow_nan=False, default=str)`` builds on every call, built once."""
_ENRICHED_HEAD = b'{"schema": ' + _ENCODER.encode(ENRICHED_SCHEMA).encode() + b", "
_FILTERED_HEAD = b'{"schema": ' + _ENCODER.encode(FILTERED_SCHEMA).encode() + b", "


def filtered_values(data: bytes, decisions: Sequence[Decision]) -> list[bytes]:
    """The record values of ``decisions`` on their filter topics, made from the enriched record's bytes.

    The enrich stage writes each record as ``json.dumps(doc, allow_nan=False,
    default=str)`` with ``schema`` first; re-encoding the parsed record gives back the
    same bytes, so the filtered record — the same document with ``schema`` replaced
    (first) and the decision as ``filter`` (last) — is those bytes with the tag
    swapped and the decision appended: no parse, no encode of the document
    (parsing and encoding the record again was 15-20 µs per accepted ZTF alert;
    docs/filters-speed.md, third pass). Equal, byte for byte, to
    :func:`encode_filtered` of ``json.loads(data)`` for every record the enrich stage
    writes (tested). A record written otherwise (another key order or spacing, another
    ``"schema"`` or a ``"filter"`` anywhere in it) is parsed and encoded again
    (:func:`encode_filtered`).

    Parameters
    ----------
    data : bytes
        An ``mma.events.enriched`` record value that :func:`decode_enriched` accepted.
    decisions : sequence of filters.engine.Decision

    Raises
    ------
    ValueError
        A NaN or infinity in a decision.
    """
    if (data.startswith(_ENRICHED_HEAD) and data.endswith(b"}") and data.count(b'"schema"') == 1
            and b'"filter"' not in data):
        encode = _ENCODER.encode
        head = _FILTERED_HEAD + data[len(_ENRICHED_HEAD):-1] + b', "filter": '
        return [head + encode(d.to_json_dict()).encode() + b"}" for d in decisions]
    return encode_filtered(json.loads(data), decisions)


def followup_requests(enriched: EnrichedEvent, accepted: Sequence[Decision], out: FollowupOutput) -> list[Any]:
    """The follow-up requests of one Event's accepted decisions (see the module docstring).

    Returns
    -------
    list of followup.messages.FollowupRequest
        At most one per request id, in the order of the filters.
    """
    from followup.messages import FollowupRequest

    event = enriched.event
    enabled = set(out.analyses)
    seen: set[str] = set()
    reqs = []
    for d in accepted:
        for spec in d.result.followup if d.result is not None else ():
            if spec.kind == "withdraw" or event.is_retraction:
                kind, analyses, params = "withdraw", (), {}
            else:
                kind = "analyze"
                analyses = tuple(sorted(set(spec.analyses) & enabled))
                if not analyses:
                    continue
                params = dict(out.params)
                if spec.window_s is not None:
                    params["window_s"] = float(spec.window_s)
            req = FollowupRequest(kind=kind, event=event, analyses=analyses, params=params,
                                  requested_by=f"filter:{d.filter}", provenance=out.provenance,
                                  group=enriched.group_key, localization_ref=enriched.skymap_ref)
            if req.request_id in seen:
                continue
            seen.add(req.request_id)
            reqs.append(req)
    return reqs


# ------------------------------------------------------------------ the handler
@dataclass
class FilterStageStats:
    """Running totals of one filter loop (summary and tests)."""

    events: int = 0
    decisions: int = 0
    published: Counter = field(default_factory=Counter)
    """Filter instance → records published on its topic."""
    requests: int = 0
    withdraw_requests: int = 0
    dead_letters: int = 0
    raw_queries: int = 0
    raw_alerts: int = 0

    def summary(self) -> str:
        """One line for people."""
        pub = ", ".join(f"{n} on {k}" for k, n in sorted(self.published.items())) or "none"
        return (f"filters: {self.events} event(s), {self.decisions} decision(s) archived; published: {pub}; "
                f"{self.requests} follow-up request(s), {self.withdraw_requests} withdraw request(s); "
                f"raw bytes of {self.raw_alerts} alert(s) read in {self.raw_queries} query(ies); "
                f"{self.dead_letters} dead letter(s)")


def filter_table(filter_set: FilterSet) -> Any:
    """A rich table of each filter's calls, decisions, errors and mean time.

    Narrow enough for an 80-column terminal or log: the filter's name is never cut
    (its plugin and version are in ``mma-broker filters list`` and every decision).
    """
    from rich import box
    from rich.table import Table

    t = Table(title="filters: calls; accepted, rejected, errors; over budget; other sources skipped; "
                    "mean ms per call; quarantined (off)",
              box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    t.add_column("filter", no_wrap=True, min_width=max([len(cf.name) for cf in filter_set.filters], default=6))
    for c in ("calls", "acc", "rej", "err", "slow", "skip", "ms"):
        t.add_column(c, justify="right", no_wrap=True, min_width=len(c))
    t.add_column("off", no_wrap=True, min_width=3)
    for cf in filter_set.filters:
        st = filter_set.stats[cf.name]
        mean = st.total_ms / st.calls if st.calls else 0.0
        t.add_row(cf.name, str(st.calls), str(st.accepted), str(st.rejected), str(st.errors), str(st.over_budget),
                  str(st.skipped_source), f"{mean:.3f}", "yes" if st.quarantined else "")
    return t


class FilterHandler(BaseStage):
    """Records of ``mma.events.enriched`` → decisions → filter topics, requests (module docstring).

    Parameters
    ----------
    filter_set : filters.engine.FilterSet
    topics : mapping
        Filter instance name → its topic, or None (``publish = false``).
    store : filters.store.DecisionStore or None
        Where decisions are archived (None: not archived; tests).
    raw : RawBatch or None
        Raw bytes on demand (None: filters get no raw bytes).
    followup : FollowupOutput or None
        None: no requests are published (``[followup]`` disabled).
    catalogs : callable or None
        ``() -> {name: catalog}`` (the catalogs of ``[filters] catalogs``).
    history_decoder : callable or None
        Passed to every :class:`~filters.api.FilterInput` (default: filters.ztf_history).
    """

    name = "filters"
    write_refused = "filter decisions not archived"
    write_done = "decisions archived"

    def __init__(self, *, filter_set: FilterSet, topics: Mapping[str, str | None], store: Any = None,
                 raw: RawBatch | None = None, followup: FollowupOutput | None = None,
                 catalogs: Callable[[], Mapping[str, Any]] | None = None,
                 history_decoder: Callable[[bytes, Any], Any] | None = None) -> None:
        from filters.api import FilterInput

        self._input = FilterInput
        self.filter_set, self.topics, self.store = filter_set, dict(topics), store
        self.raw, self.followup, self.catalogs = raw, followup, catalogs
        self.history_decoder = history_decoder
        self.stats = FilterStageStats()

    def begin_batch(self, msgs: Sequence[Any]) -> None:
        """Note the batch's ZTF/LSST Event ids (``mma.event.id`` headers) for :class:`RawBatch`."""
        if self.raw is None:
            return
        ids = []
        for m in msgs:
            for k, v in m.headers() or ():
                if k == "mma.event.id" and v:
                    eid = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                    if eid.split(":", 1)[0] in RAW_BATCH_SOURCES:
                        ids.append(eid)
                    break
        self.raw.begin(ids)

    def handle(self, msg: Any) -> Handled:
        """Decide on one ``mma.events.enriched`` record.

        Raises
        ------
        DecodeError
            Not an enriched Event (it becomes a dead letter).
        """
        data = msg.value() or b""
        try:
            enriched = decode_enriched(data)
        except DecodeError as exc:
            raise DecodeError(f"filters: {exc}") from None
        event = enriched.event
        alert = self._input(event, enriched.enrichment,
                            raw=self.raw.getter(event.id) if self.raw is not None else None,
                            history_decoder=self.history_decoder,
                            catalogs=self.catalogs() if self.catalogs is not None else None)
        decisions = self.filter_set.evaluate(alert)
        accepted = [d for d in decisions if d.accepted]
        outputs: list[Outgoing] = []
        published: list[str] = []
        kinds: list[str] = []
        if accepted:
            key = event.upstream_id.encode()
            to_publish = [d for d in accepted if self.topics.get(d.filter) is not None]
            eid = ("mma.event.id", event.id.encode())
            for d, value in zip(to_publish, filtered_values(data, to_publish)):
                outputs.append(Outgoing(self.topics[d.filter], key, value,
                                        [_CONTENT_TYPE_HEADER, eid, ("mma.filter.name", d.filter.encode())]))
                published.append(d.filter)
            if self.followup is not None:
                for req in followup_requests(enriched, accepted, self.followup):
                    outputs.append(Outgoing(self.followup.topic, key, req.encode(),
                                            [("content-type", CONTENT_TYPE.encode()),
                                             ("mma.followup.request_id", req.request_id.encode())]))
                    kinds.append(req.kind)
                    log.info("filters: %s request %s for %s (%s)", req.kind, req.request_id, event.id,
                             req.requested_by)
        # the decisions encoded now, kept as one str until the batch's write: the Decision
        # objects die here instead of living through the batch (the collector's work)
        return Handled(msg, outputs, write=(event.id, encode_decisions(decisions)) if decisions else None,
                       info=(published, kinds, len(decisions)))

    def write(self, batch: list[Handled]) -> None:
        """Archive the batch's decisions in one transaction (idempotent; one row per Event)."""
        if self.store is None:
            return
        items = [h.write for h in batch if h.write]
        if items:  # an Event that came twice keeps its last decisions
            self.store.put_encoded(items, run=LIVE)

    def on_retry(self) -> None:
        """The batch will be handled again: forget its raw bytes."""
        if self.raw is not None:
            self.raw.clear()

    def committed(self, batch: list[Handled], dead: list[tuple[Any, str]]) -> None:
        st = self.stats
        for h in batch:
            published, kinds, n = h.info
            st.events += 1
            st.decisions += n
            st.published.update(published)
            st.requests += sum(1 for k in kinds if k == "analyze")
            st.withdraw_requests += sum(1 for k in kinds if k == "withdraw")
        st.dead_letters += len(dead)
        if self.raw is not None:
            st.raw_queries, st.raw_alerts = self.raw.queries, self.raw.alerts_read
            self.raw.clear()


FilterRunner = StageRunner
"""The stage runner (it calls :meth:`FilterHandler.begin_batch` before each batch)."""


# ------------------------------------------------------------------ building it
def check_catalogs(filter_set: FilterSet, configured: Sequence[str], loaded: Mapping[str, Any]) -> None:
    """Every catalog a filter needs is named in ``[filters] catalogs`` and loaded.

    Raises
    ------
    filters.api.FilterConfigError
        One line naming the filter and the catalog.
    """
    from filters.api import FilterConfigError

    for cf in filter_set.filters:
        for name in cf.filter.required_catalogs():
            if name not in configured:
                raise FilterConfigError(f"[filters] {cf.name}: needs catalog {name!r}; add it to [filters] catalogs")
            if name not in loaded:
                raise FilterConfigError(f"[filters] {cf.name}: catalog {name!r} is not loaded "
                                        f"(mma-broker catalog load {name} FILE)")


def followup_output(settings: Any) -> FollowupOutput | None:
    """The :class:`FollowupOutput` of the settings, or None when ``[followup]`` is off or absent."""
    f = getattr(settings, "followup", None)
    if f is None or not f.enabled:
        return None
    from broker.app import provenance
    from followup.build import request_params

    return FollowupOutput(topic=settings.topic(f.requests_topic), analyses=tuple(f.analyses),
                          params=request_params(settings), provenance=provenance(settings, "filters"))


def stages(app: Any, *, until_caught_up: bool = False) -> list[Any]:
    """The filter loop (``mma_broker.stages`` entry ``filters``).

    Empty when ``[filters] enabled = false`` or no filter is configured.

    Raises
    ------
    filters.api.FilterConfigError
        A filter that cannot be built (unknown plugin, bad parameters, duplicate
        names, a catalog it needs not loaded): one line naming it.
    broker.errors.BrokerError
        ``[enrich]`` disabled (the stage reads its topic).
    """
    from broker.app import open_archive
    from broker.kafka import ensure_topics, stage_producer
    from broker.stages import StageSpec
    from filters.registry import build_filter_set
    from filters.store import DecisionStore

    s = app.settings
    f = s.filters
    if not f.enabled or not f.filters:
        return []
    if not s.enrich.enabled:
        raise BrokerError("[filters] enabled needs [enrich] enabled: the filter stage reads the enrich stage's "
                          "topic; enable [enrich] or disable [filters]")
    filter_set = build_filter_set(f)
    topics = {e.name: s.topic(f.topic_prefix + e.name) if e.publish else None for e in f.filters}
    enriched, dlq = s.topic(s.enrich.enriched_topic), s.topic(s.dlq_topic)
    followup = followup_output(s)
    archive = open_archive(s)
    catalogs: Callable[[], dict[str, Any]] | None = None
    try:
        if f.catalogs or any(cf.filter.required_catalogs() for cf in filter_set.filters):
            from broker.pipeline.enrich import CatalogCache

            cache = CatalogCache(archive.engine, f.catalogs)

            def loaded_catalogs() -> dict[str, Any]:
                return {c.name: c for c in cache.catalogs()}

            catalogs = loaded_catalogs
            check_catalogs(filter_set, f.catalogs, catalogs())
        outputs = sorted({t for t in topics.values() if t is not None}) + ([followup.topic] if followup else [])
        ensure_topics(s, [enriched, dlq, *outputs])
    except BaseException:
        archive.close()
        raise
    from broker.lanes import lane_clients, lanes_of

    specs = []
    lanes = lanes_of(s, getattr(app, "run_lanes", None))
    for lane in lanes:  # [lanes]: one loop per lane, each skipping the others' records (broker.lanes)
        name = lane.loop("filters")
        consumer, slot, admin = lane_clients(s, name, enriched, until_caught_up=until_caught_up)
        handler = FilterHandler(filter_set=filter_set if len(lanes) == 1 else build_filter_set(f), topics=topics,
                                store=DecisionStore(archive.engine),
                                raw=RawBatch(functools.partial(fetch_raw_many, archive)), followup=followup,
                                catalogs=catalogs)
        runner = FilterRunner(handler, consumer, stage_producer(s, name, slot), dlq_topic=dlq,
                              batch_size=f.batch_size, poll_timeout_s=f.poll_timeout_s,
                              fill_s=lane.fill_s(NOTICE_PATH_FILL_S), limits=s.limits, store_raw=archive.store_raw,
                              transactional=s.kafka.transactions,
                              producer_factory=functools.partial(stage_producer, s, name, slot), admin=admin,
                              subscription=[enriched], metrics=app.metrics.stage(name), accept=lane.accept_fn())

        def summary(handler: FilterHandler = handler, name: str = name) -> list[Any]:
            return [handler.stats.summary().replace("filters:", f"{name}:", 1), filter_table(handler.filter_set)]

        specs.append(StageSpec(name, runner, inputs=[enriched], outputs=outputs,
                               after=[other.loop("enrich") for other in lanes_of(s)], summary=summary,
                               close=slot.release))
    if specs:
        release = specs[-1].close
        specs[-1].close = lambda: (release(), archive.close())
    else:
        archive.close()
    return specs
