"""The time machine: re-run filters over the archived alerts of a period.

``mma-broker filters run NAME --since T --until T [--to-topic T | --out FILE]`` calls
:func:`rerun`: a new filter, or a new version or configuration of one, decides on
what the broker received in the past, exactly as the live stage would have, and the
results are marked as a re-run. Per archived Event whose T0 lies in
``[since, until)`` (the archive's ``events.time``), page by page in (T0, id) order:

1. its **raw upstream bytes** are read from the archive's raw store and decoded again
   with today's decoders (:func:`broker.sources.decode`, within ``[limits]``); the
   decoded Event of the archived id is used. When today's decoders refuse the bytes,
   or no longer give an Event of that id, the archived Event is used instead and the
   summary counts it (``not_redecoded``);
2. it is **enriched from the database** where the enrich stage saw it: its group as
   it stood when the Event arrived (the members up to and including it, in arrival
   order: revision, number of revisions, retracted, T0 and best localization as the
   live stage computed them, :func:`broker.enrich.groups._state_of`), its stored
   localization (its own, else its group's best then), its stored catalog
   cross-matches. Coincidence ids are not archived per Event: ``coincidences`` is
   empty in a re-run. An Event the enrich stage never saw is filtered bare
   (``enrichment = {}``, counted ``bare``);
3. the :class:`~filters.engine.FilterSet` decides (the same isolation as live);
4. every decision is archived in ``filter_decisions`` with ``run`` = the re-run's id
   (:class:`filters.store.DecisionStore`), the accepted Events are written — to a
   topic, one Kafka transaction per page, or to a JSON Lines file — as the filter
   topic's records (``filters/schemas/filtered_event.json``) with a ``rerun`` object
   (id, since, until); the filter's version and config hash are in each record's
   ``filter``. The run itself is a row of ``filter_runs`` with its summary.

Progress goes to a callback ``progress(done, total)`` after each page (the CLI shows
a progress bar).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

import sqlalchemy as sa

from broker.errors import BrokerError, DecodeError
from broker.event import Event, format_time
from filters.engine import FilterSet
from filters.stage import CONTENT_TYPE, check_catalogs, filtered_record
from filters.store import DecisionStore

log = logging.getLogger(__name__)

__all__ = ["RerunSummary", "rerun", "resolve_filters", "enrichment_of", "new_run_id"]


@dataclass
class RerunSummary:
    """What a re-run did.

    Attributes
    ----------
    run_id : str
    since, until : str
        The period (T0), ISO 8601 UTC.
    filters : dict
        Instance name → ``plugin``, ``version``, ``config_hash``, ``params``.
    alerts : int
        Archived Events in the period.
    enriched, bare : int
        Events filtered with their stored enrichment / without (never enriched).
    not_redecoded : int
        Events whose raw bytes today's decoders refuse, or no longer turn into an
        Event of the archived id (the archived Event was used).
    accepted, rejected, errors, skipped_source : Counter
        Per filter instance.
    reasons : dict
        Filter instance → Counter of reason codes.
    written : int
        Records written to the topic or file.
    output : str or None
        ``topic:<name>``, ``file:<name>`` or None.
    seconds : float
    """

    run_id: str
    since: str
    until: str
    filters: dict[str, Any]
    alerts: int = 0
    enriched: int = 0
    bare: int = 0
    not_redecoded: int = 0
    accepted: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    skipped_source: Counter = field(default_factory=Counter)
    reasons: dict[str, Counter] = field(default_factory=dict)
    written: int = 0
    output: str | None = None
    seconds: float = 0.0

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in ``filter_runs.summary``)."""
        return {"run_id": self.run_id, "since": self.since, "until": self.until, "filters": self.filters,
                "alerts": self.alerts, "enriched": self.enriched, "bare": self.bare,
                "not_redecoded": self.not_redecoded, "accepted": dict(self.accepted),
                "rejected": dict(self.rejected), "errors": dict(self.errors),
                "skipped_source": dict(self.skipped_source),
                "reasons": {k: dict(v) for k, v in self.reasons.items()}, "written": self.written,
                "output": self.output, "seconds": round(self.seconds, 3)}

    def lines(self) -> list[str]:
        """A few lines for people."""
        rate = self.alerts / self.seconds if self.seconds > 0 else 0.0
        out = [f"re-run {self.run_id}: {self.alerts} archived alert(s) with T0 in [{self.since}, {self.until}) "
               f"in {self.seconds:.1f} s ({rate:.0f} alerts/s); {self.enriched} with their stored enrichment, "
               f"{self.bare} bare, {self.not_redecoded} not decoded again (archived Event used)"]
        for name, f in self.filters.items():
            top = ", ".join(f"{r} {n}" for r, n in self.reasons.get(name, Counter()).most_common(4))
            out.append(f"  {name} ({f['plugin']} v{f['version']}, config {f['config_hash']}): "
                       f"{self.accepted[name]} accepted, {self.rejected[name]} rejected, {self.errors[name]} error(s), "
                       f"{self.skipped_source[name]} other source(s){'; ' + top if top else ''}")
        out.append(f"  {self.written} record(s) written to {self.output}" if self.output
                   else "  decisions archived only (no --to-topic / --out)")
        return out


def new_run_id() -> str:
    """``rerun-<UTC yyyymmddThhmmssZ>-<6 hex>``."""
    return f"rerun-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def resolve_filters(settings: Any, names: Sequence[str], params: Mapping[str, Mapping[str, Any]] | None = None
                    ) -> FilterSet:
    """The FilterSet of ``names``: a configured instance (``[filters] filters``) by its
    name, else a registered plugin by its name with its default parameters;
    ``params[name]`` replaces the parameters.

    Raises
    ------
    filters.api.FilterConfigError
        An unknown name, bad parameters (one line naming the filter).
    """
    from filters.api import FilterConfigError
    from filters.config import FilterEntry
    from filters.registry import available, build_filter_set

    if not names:
        raise FilterConfigError("filters run: name at least one filter")
    section = settings.filters
    configured = {e.name: e for e in section.filters}
    entries = []
    for n in names:
        e = configured.get(n)
        if e is None:
            if n not in available():
                raise FilterConfigError(f"no filter {n!r}: neither an instance of [filters] filters "
                                        f"({', '.join(configured) or 'none'}) nor a registered plugin "
                                        f"({', '.join(available()) or 'none'})")
            e = FilterEntry(name=n, plugin=n)
        if params and n in params:
            e = e.model_copy(update={"params": dict(params[n])})
        entries.append(e)
    return build_filter_set(SimpleNamespace(filters=entries, quarantine_after=section.quarantine_after))


# ------------------------------------------------------------------ enrichment from the database
def enrichment_of(engine: sa.Engine, events: Sequence[Event], provenance: Mapping[str, Any] | None = None
                  ) -> dict[str, dict[str, Any]]:
    """The stored enrichment of Events, as the enrich stage published it when each arrived.

    A handful of queries for the whole sequence (members, their groups, localizations,
    cross-matches). See the module docstring for what is rebuilt.

    Parameters
    ----------
    engine : sqlalchemy.Engine
    events : sequence of broker.event.Event
    provenance : mapping, optional
        Put in ``enrichment.provenance``.

    Returns
    -------
    dict
        Event id → ``enrichment`` (``localization``, ``group``, ``crossmatch``,
        ``coincidences`` = [], ``error`` = None, ``provenance``); Events the enrich
        stage never saw are absent.
    """
    from broker.enrich.groups import GROUPS, MEMBERS, _state_of
    from broker.enrich.matchstore import CROSSMATCHES
    from broker.enrich.store import LINKS, LOCS, LocalizationRef
    from broker.pipeline.enrich import EnrichHandler

    ids = [e.id for e in events]
    if not ids:
        return {}
    m = MEMBERS.c
    with engine.connect() as conn:
        key_of = dict(conn.execute(sa.select(m.event_id, m.group_key).where(m.event_id.in_(ids))).all())
        keys = sorted(set(key_of.values()))
        members: dict[str, list[dict[str, Any]]] = {}
        categories: dict[str, str] = {}
        if keys:
            q = (sa.select(m.group_key, m.event_id, m.alert_type, m.time, m.retraction, m.localization_id,
                           m.area_90_deg2).where(m.group_key.in_(keys)).order_by(m.group_key, m.seq))
            for row in conn.execute(q).mappings():
                members.setdefault(row["group_key"], []).append(dict(row))
            categories = dict(conn.execute(sa.select(GROUPS.c.key, GROUPS.c.category)
                                           .where(GROUPS.c.key.in_(keys))).all())
        own = dict(conn.execute(sa.select(LINKS.c.event_id, LINKS.c.localization_id)
                                .where(LINKS.c.event_id.in_(ids))).all())
        loc_ids = set(own.values()) | {r["localization_id"] for ms in members.values() for r in ms
                                       if r["localization_id"] is not None}
        refs: dict[str, LocalizationRef] = {}
        if loc_ids:
            q = sa.select(LOCS.c.id, LOCS.c.kind, LOCS.c.area_50_deg2, LOCS.c.area_90_deg2,
                          LOCS.c.n_tiles).where(LOCS.c.id.in_(sorted(loc_ids)))
            refs = {r[0]: LocalizationRef(*r) for r in conn.execute(q)}
        xm: dict[str, dict[str, Any]] = {}
        x = CROSSMATCHES.c
        for eid, catalog, result in conn.execute(sa.select(x.event_id, x.catalog, x.result)
                                                 .where(x.event_id.in_(ids)).order_by(x.event_id, x.catalog)):
            xm.setdefault(eid, {})[catalog] = result
    out: dict[str, dict[str, Any]] = {}
    for ev in events:
        key = key_of.get(ev.id)
        if key is None or key not in members:
            continue
        ms = members[key]
        upto = next(i for i, r in enumerate(ms) if r["event_id"] == ev.id) + 1
        state = _state_of(key, ms[:upto], categories.get(key, ""), refs)
        enrichment: dict[str, Any] = {"localization": None, "group": EnrichHandler._group_json(ev, state)}
        ref = refs.get(own[ev.id]) if ev.id in own else None
        if ref is not None:
            enrichment["localization"] = ref.to_json_dict() | {"from_event": ev.id}
        elif state.best_localization is not None and not ev.is_retraction:
            enrichment["localization"] = state.best_localization.to_json_dict() | {"from_event": None,
                                                                                  "from_group": key}
        enrichment["crossmatch"] = xm.get(ev.id, {})
        enrichment["coincidences"] = []
        enrichment["error"] = None
        enrichment["provenance"] = dict(provenance or {})
        out[ev.id] = enrichment
    return out


# ------------------------------------------------------------------ the run
def _utc(t: datetime | str) -> datetime:
    if isinstance(t, str):
        t = datetime.fromisoformat(t.strip().replace("Z", "+00:00"))
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


class _TopicSink:
    """Records to a topic, one Kafka transaction per page."""

    def __init__(self, settings: Any, topic: str, run_id: str) -> None:
        from broker.kafka import ensure_topics, make_producer

        self.topic = settings.topic(topic)
        ensure_topics(settings, [self.topic])
        self.producer = make_producer(settings, **{"transactional.id": f"{settings.group_id}.filters.{run_id}",
                                                   "transaction.timeout.ms": 60_000})
        self.producer.init_transactions(30)
        self.failed: list[str] = []

    def write(self, records: Sequence[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> None:
        import confluent_kafka

        from broker.pipeline.runner import with_hop_headers

        if not records:
            return

        def report(err: Any, msg: Any) -> None:
            if err is not None:
                self.failed.append(str(err))

        try:
            self.producer.begin_transaction()
            for key, value, headers in records:
                self.producer.produce(self.topic, key=key, value=value, headers=with_hop_headers(headers),
                                      on_delivery=report)
            self.producer.commit_transaction(60)
        except confluent_kafka.KafkaException as exc:
            try:
                self.producer.abort_transaction(30)
            except confluent_kafka.KafkaException:
                pass
            raise BrokerError(f"filters run: writing to {self.topic} failed: {exc}") from None
        if self.failed:
            raise BrokerError(f"filters run: {len(self.failed)} record(s) not delivered to {self.topic}: "
                              f"{self.failed[0]}")

    def close(self) -> None:
        self.producer.flush(10)


class _FileSink:
    """Records to a JSON Lines file (one accepted record a line)."""

    def __init__(self, out: Path | str | IO[str]) -> None:
        if hasattr(out, "write"):
            self.fh, self.own = out, False
        else:
            self.fh, self.own = open(out, "w", encoding="utf-8"), True  # noqa: SIM115 - closed in close()

    def write(self, records: Sequence[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> None:
        for _, value, _ in records:
            self.fh.write(value.decode() + "\n")
        self.fh.flush()

    def close(self) -> None:
        if self.own:
            self.fh.close()


def rerun(settings: Any, filter_names: Sequence[str], since: datetime | str, until: datetime | str, *,
          to_topic: str | None = None, out: Path | str | IO[str] | None = None,
          progress: Callable[[int, int], None] | None = None,
          params: Mapping[str, Mapping[str, Any]] | None = None, run_id: str | None = None,
          page_size: int = 500, archive: Any = None) -> RerunSummary:
    """Re-run filters over the archived alerts with T0 in ``[since, until)`` (module docstring).

    Parameters
    ----------
    settings : broker.config.Settings
    filter_names : sequence of str
        Instances of ``[filters] filters``, or registered plugin names (default
        parameters, or ``params[name]``).
    since, until : datetime or str
        The period of event time T0 (ISO 8601; naive = UTC), ``since <= T0 < until``.
    to_topic : str, optional
        Write accepted records to this topic (the ``[kafka] topic_prefix`` is put in
        front), one Kafka transaction per page.
    out : path or text file, optional
        Write accepted records as JSON Lines.
    progress : callable, optional
        ``progress(done, total)`` after each page (alerts).
    params : mapping, optional
        Filter name → parameters replacing the configured ones.
    run_id : str, optional
        Default :func:`new_run_id`.
    page_size : int
        Alerts per page (one database read, one decision write, one transaction).
    archive : broker.archive.Archive, optional
        Default: :func:`broker.app.open_archive` of the settings (migrated), closed at the end.

    Returns
    -------
    RerunSummary

    Raises
    ------
    filters.api.FilterConfigError
        Unknown filter, bad parameters, a catalog a filter needs not loaded.
    ValueError
        ``since >= until``, or both ``to_topic`` and ``out``.
    broker.errors.BrokerError
        Kafka refused the records (the page's transaction is aborted).
    """
    from broker.app import open_archive, provenance
    from broker.archive.models import events as EVENTS
    from broker.archive.raw import RawRef
    from broker.archive.rows import archived_from_row
    from broker.sources import decode

    t_start = time.monotonic()
    lo, hi = _utc(since), _utc(until)
    if not lo < hi:
        raise ValueError(f"filters run: --since {format_time(lo)} is not before --until {format_time(hi)}")
    if to_topic and out is not None:
        raise ValueError("filters run: give --to-topic or --out, not both")
    fs = resolve_filters(settings, filter_names, params)
    run_id = run_id or new_run_id()
    own_archive = archive is None
    archive = archive if archive is not None else open_archive(settings)
    sink: Any = None
    try:
        catalogs: dict[str, Any] = {}
        needed = {c for cf in fs.filters for c in cf.filter.required_catalogs()}
        if needed:
            from broker.pipeline.enrich import CatalogCache

            configured = sorted(set(settings.filters.catalogs) | needed)
            catalogs = {c.name: c for c in CatalogCache(archive.engine, configured).catalogs()}
            check_catalogs(fs, configured, catalogs)
        described = {cf.name: {"plugin": cf.plugin, "version": cf.filter.version, "config_hash": cf.filter.config_hash,
                               "params": cf.filter.config.model_dump(mode="json")} for cf in fs.filters}
        summary = RerunSummary(run_id=run_id, since=format_time(lo), until=format_time(hi), filters=described)
        for cf in fs.filters:
            summary.reasons[cf.name] = Counter()
        if to_topic:
            sink, summary.output = _TopicSink(settings, to_topic, run_id), f"topic:{to_topic}"
        elif out is not None:
            sink = _FileSink(out)
            summary.output = f"file:{getattr(out, 'name', None) or Path(str(out)).name}"
        store = DecisionStore(archive.engine)
        store.start_run(run_id, described, lo, hi, summary.output)
        marker = {"id": run_id, "since": summary.since, "until": summary.until}
        prov = provenance(settings, "filters.rerun").__dict__
        from filters.api import FilterInput

        e = EVENTS.c
        period = sa.and_(e.time >= lo, e.time < hi)
        with archive.engine.connect() as conn:
            total = int(conn.execute(sa.select(sa.func.count()).select_from(EVENTS).where(period)).scalar_one())
        if progress is not None:
            progress(0, total)
        after: tuple[datetime, str] | None = None
        raw_store = archive.raw_store
        limits = getattr(settings, "limits", None)
        while True:
            q = sa.select(EVENTS).where(period)
            if after is not None:
                q = q.where(sa.or_(e.time > after[0], sa.and_(e.time == after[0], e.id > after[1])))
            q = q.order_by(e.time, e.id).limit(page_size)
            with archive.engine.connect() as conn:
                rows = conn.execute(q).mappings().all()
                raws: dict[str, bytes | None] = {}
                for r in rows:
                    ref = RawRef(sha256=r["raw_sha256"], length=r["raw_length"], segment=r["raw_segment"],
                                 offset=r["raw_offset"])
                    try:
                        raws[r["id"]] = raw_store.get(ref, conn if raw_store.transactional else None)
                    except BrokerError as exc:
                        log.warning("filters run: raw bytes of %s unreadable: %s", r["id"], exc)
                        raws[r["id"]] = None
            if not rows:
                break
            after = (rows[-1]["time"], rows[-1]["id"])
            evs: list[Event] = []
            decoded: dict[str, list[Event]] = {}
            for r in rows:
                ev = None
                raw = raws[r["id"]]
                if raw is not None:
                    sha = r["raw_sha256"]
                    if sha not in decoded:
                        try:
                            decoded[sha] = decode(raw, limits)
                        except DecodeError:
                            decoded[sha] = []
                    ev = next((x for x in decoded[sha] if x.id == r["id"]), None)
                if ev is None:
                    summary.not_redecoded += 1
                    ev = archived_from_row(r).event
                evs.append(ev)
            enrich = enrichment_of(archive.engine, evs, prov)
            rows_out = []
            records = []
            decided_at = datetime.now(timezone.utc)
            for ev in evs:
                enr = enrich.get(ev.id)
                summary.enriched += enr is not None
                summary.bare += enr is None
                decisions = fs.evaluate(FilterInput(ev, enr or {}, raw=raws.get(ev.id), catalogs=catalogs))
                seen = set()
                for d in decisions:
                    seen.add(d.filter)
                    summary.reasons[d.filter][d.reason] += 1
                    if d.error is not None:
                        summary.errors[d.filter] += 1
                    elif d.accepted:
                        summary.accepted[d.filter] += 1
                        if sink is not None:
                            doc = {"schema": "", **ev.to_json_dict(), "enrichment": enr or {}}
                            value = json.dumps(filtered_record(doc, d, rerun=marker), allow_nan=False,
                                               default=str).encode()
                            records.append((ev.upstream_id.encode(), value,
                                            [("content-type", CONTENT_TYPE.encode()), ("mma.event.id", ev.id.encode()),
                                             ("mma.filter.name", d.filter.encode()),
                                             ("mma.filter.rerun", run_id.encode())]))
                    else:
                        summary.rejected[d.filter] += 1
                for cf in fs.filters:
                    if cf.name not in seen:
                        summary.skipped_source[cf.name] += 1
                rows_out.append((ev.id, decisions))
            store.put_decisions(rows_out, run=run_id, decided_at=decided_at)
            if sink is not None:
                sink.write(records)
                summary.written += len(records)
            summary.alerts += len(rows)
            if progress is not None:
                progress(summary.alerts, total)
        summary.seconds = time.monotonic() - t_start
        store.finish_run(run_id, summary.to_json_dict())
        return summary
    finally:
        if sink is not None:
            sink.close()
        if own_archive:
            archive.close()
