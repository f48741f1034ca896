"""The ``reports`` stage: follow-up results, coincidences and optical candidates → outbox entries.

Reads ``mma.followup.results``, ``mma.coincidences`` and the topics of the
``optical-counterpart`` filter instances (``mma.filter.optical-counterpart`` and any
other ``[[filters.filters]]`` entry with that plugin; the instance is not among the
default filters, so its topic may stay empty). For every record it calls the builders
of the enabled channels and puts one outbox entry per message
(:class:`broker.sinks.outbox.Outbox`), written before anything is sent; the ``publish``
stage sends them.

* a follow-up result: HERMES (:func:`~followup.reports.hermes.followup_message`),
  ``gcn.gcn_notice`` (gcn-notice), ``gcn.circular_draft`` (gcn-circular); key
  ``<channel>:followup:<request_id>``;
* a coincidence: HERMES (:func:`~followup.reports.hermes.coincidence_message`); key
  ``hermes:coincidence:<id>:<computed_from>``;
* an optical candidate: HERMES (:func:`~followup.reports.hermes.optical_message`),
  ``tns.tns_report`` (tns); key ``<channel>:optical:<event id>``. One TNS report per
  candidate and trigger (its coincidence id): a later alert of the candidate replaces
  the unsent draft (``replaces``) and makes none once one was sent.

The keys derive from the source record's id (a coincidence's version is the Event
whose arrival produced it), so a record read twice (a replay, a rebalance) puts
nothing new. ``group_key`` is the follow-up's event group, the coincidence's id, or the
optical candidate's coincidence id. A result that supersedes another names the
earlier entry in ``replaces`` (withdrawn if still unsent).

Withdrawals: a follow-up withdrawal (a retraction of the trigger) and a coincidence that
is retracted or no longer coincident call :meth:`Outbox.withdraw_group`; each HERMES
message of the group already sent gets a retraction message
(:func:`~followup.reports.hermes.retraction_message`, key ``hermes:retraction:<key>``),
and when a GCN notice of the group went out, the withdrawal's own GCN notice
(``gcn.gcn_notice``, ``alert_type: retraction``, key ``gcn-notice:followup:<request_id>``
of the withdrawal) follows it. TNS has no retraction: a TNS report of the group already
sent stands, and the outbox records that on it (:meth:`Outbox.annotate`: ``decision``,
``decided_by`` the retraction; counted as ``standing``).

The GCN and TNS builders (``followup.reports.gcn``, ``followup.reports.tns``) are
imported when the stage starts; a missing one is logged once and its channel skipped.
A builder that raises on one record dead-letters that record (stage runner); a message
the channel's schema refuses is still written, and the sender marks it ``failed`` with
the JSON path, so nothing is lost silently.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from broker.errors import DecodeError
from broker.pipeline.runner import BaseStage, Handled
from broker.text import one_line

from followup.reports import hermes as hermes_reports

log = logging.getLogger(__name__)

OPTICAL_PLUGIN = "optical-counterpart"


@dataclass(frozen=True)
class Put:
    """One outbox entry to write (the arguments of :meth:`Outbox.put`)."""

    key: str
    channel: str
    payload: dict[str, Any] | None
    source_event_id: str | None = None
    group_key: str | None = None
    replaces: str | None = None
    make: Callable[[], dict[str, Any] | None] | None = field(default=None, compare=False, repr=False)
    """Builds the payload in the durable write when ``payload`` is None (the follow-up's
    GCN notice and circular: built after the batch's HERMES entries are committed, so a
    HERMES message never waits for their event query and schema validation); None from
    it: nothing to put (the builder's reason is logged)."""


@dataclass(frozen=True)
class Withdraw:
    """Withdraw a group's entries; HERMES messages already sent get a retraction.

    ``retractions``: messages of channels whose builder makes their own retraction (the
    GCN notice of a withdrawal, ``alert_type: retraction``), each put only when the group
    has an entry of that channel that went out (``sent``, ``sending`` or ``unknown``):
    nothing to retract otherwise.
    """

    group_key: str
    by_event_id: str
    reason: str
    retractions: tuple[Put, ...] = ()


@dataclass
class ReportsStats:
    """Running totals of one reports stage process."""

    records: int = 0
    entries: int = 0
    withdrawals: int = 0
    retractions: int = 0
    standing: int = 0
    """Messages already sent when their source was retracted, on a channel with no
    retraction (TNS): they stand, and the outbox entry says so."""
    tns_already_sent: int = 0
    """Optical candidates' alerts that made no TNS report: one for that candidate and
    trigger went out already."""
    by_channel: dict[str, int] = field(default_factory=dict)
    not_publishable: Counter = field(default_factory=Counter)
    """Records a channel does not publish (e.g. no circular for "no data"), per channel."""
    build_errors: Counter = field(default_factory=Counter)
    """Records whose message a channel's builder could not make, per channel."""

    def summary(self) -> str:
        per = ", ".join(f"{c} {n}" for c, n in sorted(self.by_channel.items())) or "none"
        skipped = ", ".join(f"{c} {n}" for c, n in sorted(self.not_publishable.items())) or "none"
        errors = ", ".join(f"{c} {n}" for c, n in sorted(self.build_errors.items())) or "none"
        return (f"reports: {self.records} record(s) read; {self.entries} outbox entr(y/ies) put ({per}); "
                f"not for a channel: {skipped}; builder errors: {errors}; "
                f"{self.withdrawals} withdrawal(s), {self.retractions} retraction message(s)"
                + (f", {self.standing} sent TNS report(s) standing (no retraction on TNS)" if self.standing else "")
                + (f", {self.tns_already_sent} TNS report(s) not drafted (sent before for that candidate and "
                   "trigger)" if self.tns_already_sent else ""))


def load_builders(enabled: set[str]) -> dict[str, Callable[..., Any]]:
    """The builders of the enabled channels, by ``<channel>:<record kind>``.

    HERMES's are here; ``followup.reports.gcn`` (``gcn_notice``, ``circular_draft``) and
    ``followup.reports.tns`` (``tns_report``) are imported by name. One that is missing
    is logged and left out.
    """
    found: dict[str, Callable[..., Any]] = {}
    if "hermes" in enabled:
        found |= {"hermes:followup": hermes_reports.followup_message,
                  "hermes:coincidence": hermes_reports.coincidence_message,
                  "hermes:optical": hermes_reports.optical_message}
    wanted = [("gcn-notice:followup", "followup.reports.gcn", "gcn_notice"),
              ("gcn-circular:followup", "followup.reports.gcn", "circular_draft"),
              ("tns:optical", "followup.reports.tns", "tns_report")]
    for slot, module, attr in wanted:
        if slot.split(":")[0] not in enabled:
            continue
        try:
            found[slot] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            log.warning("reports: no builder %s.%s (%s); channel %s gets no entries", module, attr, exc,
                        slot.split(":")[0])
    return found


class ReportsHandler(BaseStage):
    """Records → outbox entries (see the module docstring).

    Parameters
    ----------
    outbox : broker.sinks.outbox.Outbox
    topics : dict
        Topic → record kind (``followup``, ``coincidence``, ``optical``).
    builders : dict
        :func:`load_builders`.
    options : HermesOptions
    settings : broker.config.Settings or None
        Passed to the GCN Circular and TNS builders; its ``[publish]`` decides approval.
    load_event : callable, optional
        Event id → :class:`broker.event.Event` or None (the GCN builders' ``event``).
    load_history : callable, optional
        Filtered record → :class:`filters.ztf_history.ZtfHistory` or None (ZTF
        non-detections for HERMES and TNS).
    load_host : callable, optional
        Filtered record → host galaxy or None (:func:`followup.reports.tns.host_loader`:
        the TNS report's ``host_name``, ``host_redshift``).
    """

    name = "reports"
    write_refused = "outbox write refused the record"

    def __init__(self, *, outbox: Any, topics: dict[str, str], builders: dict[str, Callable[..., Any]],
                 options: hermes_reports.HermesOptions, settings: Any = None,
                 load_event: Callable[[str], Any] | None = None, load_history: Callable[[dict], Any] | None = None,
                 stats: ReportsStats | None = None, load_host: Callable[[dict], Any] | None = None) -> None:
        self.outbox, self.topics, self.builders = outbox, topics, builders
        self.options, self.settings = options, settings
        self.load_event = load_event or (lambda _id: None)
        self.load_history = load_history or (lambda _rec: None)
        self.load_host = load_host or (lambda _rec: None)
        self.stats = stats or ReportsStats()
        self._unbuilt: set[int] = set()  # deferred Puts of the last write that built nothing

    # ------------------------------------------------------------------ planning
    def handle(self, msg: Any) -> Handled:
        kind = self.topics.get(msg.topic())
        if kind is None:  # pragma: no cover - subscribed topics only
            return Handled(msg)
        try:
            record = json.loads(msg.value() or b"")
        except ValueError as exc:
            raise DecodeError(f"reports: not JSON: {exc}") from None
        if not isinstance(record, dict):
            raise DecodeError("reports: the record is not a JSON object")
        return Handled(msg, write=self.plan(kind, record), info=kind)

    def plan(self, kind: str, record: dict[str, Any]) -> list[Put | Withdraw]:
        """The outbox operations for one record (no I/O but the loaders)."""
        if kind == "followup":
            return self._plan_followup(record)
        if kind == "coincidence":
            return self._plan_coincidence(record)
        if kind == "optical":
            return self._plan_optical(record)
        return []

    def _plan_followup(self, doc: dict[str, Any]) -> list[Put | Withdraw]:
        if doc.get("kind") == "withdrawal":
            by = doc.get("retracted_by") or doc["event_id"]
            retractions: list[Put] = []
            build = self.builders.get("gcn-notice:followup")
            if build is not None:  # the GCN notice has a retraction (alert_type: retraction)
                event = self.load_event(doc["event_id"])
                payload = self._build("gcn-notice", doc.get("request_id"), lambda: build(doc, event))
                if payload is not None:  # no group_key: a later withdrawal of the group must not withdraw it
                    retractions.append(Put(f"gcn-notice:followup:{doc['request_id']}", "gcn-notice", payload, by))
            return [Withdraw(doc.get("group") or doc["upstream_id"], by, f"its source event was retracted ({by})",
                             tuple(retractions))]
        if doc.get("kind") != "result" or doc.get("status") not in ("done", "no_data"):
            return []
        rid, group = doc["request_id"], doc.get("group")
        out: list[Put | Withdraw] = []
        events: dict[str, Any] = {}

        def the_event() -> Any:  # loaded once, by the first deferred builder that needs it
            if "event" not in events:
                events["event"] = self.load_event(doc["event_id"])
            return events["event"]

        sup = doc.get("supersedes")
        for slot, build in self.builders.items():
            channel, what = slot.split(":")
            if what != "followup":
                continue
            key, replaces = f"{channel}:followup:{rid}", f"{channel}:followup:{sup}" if sup else None
            if channel != "hermes":  # built in the write, after the HERMES entry is committed
                make = functools.partial(self._build, channel, rid, functools.partial(
                    lambda b, c: b(doc, the_event()) if c == "gcn-notice" else b(doc, the_event(), self.settings),
                    build, channel))
                out.append(Put(key, channel, None, doc["event_id"], group, replaces, make=make))
                continue
            payload = self._build(channel, rid, lambda: build(doc, self.options))
            if payload is not None:
                out.append(Put(key, channel, payload, doc["event_id"], group, replaces))
        return out

    def _build(self, channel: str, what: Any, make: Callable[[], Any]) -> Any:
        """One channel's message for one record, or None: a record a channel does not
        publish (``NotPublishable``: a skipped or failed result, "no data" a circular
        would not report) is skipped for that channel alone, and so is one its builder
        cannot make (logged with the record and the reason); the other channels go on."""
        try:
            return make()
        except Exception as exc:  # noqa: BLE001 - one channel's builder never blocks the others
            if type(exc).__name__ == "NotPublishable":
                log.info("reports: %s: nothing for %s (%s)", what, channel, one_line(str(exc), 300))
                self.stats.not_publishable[channel] += 1
            else:
                log.warning("reports: %s: no %s message: %s: %s", what, channel, type(exc).__name__,
                            one_line(str(exc), 300))
                self.stats.build_errors[channel] += 1
            return None

    def _plan_coincidence(self, rec: dict[str, Any]) -> list[Put | Withdraw]:
        cid = rec.get("id")
        if not isinstance(cid, str) or not cid.strip() or len(cid) > 1024:
            raise DecodeError(f"reports: coincidence record without a usable id ({str(cid)[:60]!r})")
        if rec.get("retracted") or not rec.get("coincident", True):
            why = (f"a member was retracted ({rec.get('retracted_by')})" if rec.get("retracted")
                   else f"a new revision ({rec.get('computed_from')}) moved the pair out of coincidence")
            return [Withdraw(cid, rec.get("retracted_by") or rec.get("computed_from") or cid, why)]
        build = self.builders.get("hermes:coincidence")
        payload = self._build("hermes", cid, lambda: build(rec, self.options)) if build else None
        if payload is None:
            return []
        return [Put(f"hermes:coincidence:{cid}:{rec.get('computed_from')}", "hermes", payload,
                    rec.get("computed_from"), cid)]

    def _plan_optical(self, rec: dict[str, Any]) -> list[Put | Withdraw]:
        coincs = [c for c in (rec.get("enrichment") or {}).get("coincidence_records") or []
                  if c.get("kind") in ("gw-optical", "grb-optical")]
        group = coincs[0]["id"] if coincs else None
        history = None
        out: list[Put | Withdraw] = []
        for slot, build in self.builders.items():
            channel, what = slot.split(":")
            if what != "optical":
                continue
            if history is None:
                history = self.load_history(rec)
            payload = self._build(channel, rec.get("id"), lambda: (
                build(rec, self.options, history) if channel == "hermes" else
                build(rec, history, self.settings, host=self.load_host(rec))))
            if payload is not None:
                out.append(Put(f"{channel}:optical:{rec['id']}", channel, payload, rec["id"], group))
        return out

    # ------------------------------------------------------------------ durable write
    def write(self, batch: list[Handled]) -> None:
        """Put the batch's entries; withdraw groups and put their retraction messages.

        Idempotent (keys): a batch written again puts nothing new. The entries with a
        payload (HERMES) are put as they come; the deferred ones (:attr:`Put.make`) are
        built and put after them, but before any withdrawal that follows them in the
        batch (a withdrawal still finds every entry of its group that came before it).
        A deferred one that builds nothing is left out of the counts.
        """
        self._unbuilt.clear()
        deferred: list[Put] = []

        def put_deferred() -> None:
            for op in deferred:
                payload = op.make()
                if payload is None:
                    self._unbuilt.add(id(op))
                    continue
                self._put(dataclasses.replace(op, payload=payload, make=None))
            deferred.clear()

        for h in batch:
            for op in h.write or []:
                if isinstance(op, Put) and op.payload is None and op.make is not None:
                    deferred.append(op)
                elif isinstance(op, Put):
                    self._put(op)
                else:
                    put_deferred()
                    self._withdraw(op)
        put_deferred()

    def _approval(self, channel: str, payload: dict[str, Any]) -> bool:
        publish = getattr(self.settings, "publish", None)
        return bool(publish.requires_approval(channel, payload)) if publish is not None else False

    def _put(self, op: Put) -> None:
        replaces = op.replaces
        if op.channel == "tns" and op.group_key and replaces is None:
            # one AT report per candidate and trigger (the group: the coincidence id): a
            # later alert of the candidate replaces a draft not yet sent, and makes none
            # once one went out (TNS has the object; its reply named it)
            earlier = [e for e in self.outbox.list(channel="tns", group_key=op.group_key, limit=100) if e.key != op.key]
            gone = [e for e in earlier if e.state in ("sent", "sending", "unknown")]
            if gone:
                log.info("reports: no TNS report from %s: %s went out for %s already", op.source_event_id,
                         gone[0].key, op.group_key)
                self.stats.tns_already_sent += 1
                return
            unsent = [e for e in earlier if e.state in ("pending_approval", "queued")]  # newest first
            replaces = unsent[0].key if unsent else None
        self.outbox.put(op.key, op.channel, op.payload, source_event_id=op.source_event_id, group_key=op.group_key,
                        requires_approval=self._approval(op.channel, op.payload), replaces=replaces)

    def _withdraw(self, op: Withdraw) -> None:
        withdrawn, sent = self.outbox.withdraw_group(op.group_key, op.by_event_id)
        if withdrawn:
            log.info("reports: %d unsent entr(y/ies) of %s withdrawn (%s)", len(withdrawn), op.group_key, op.reason)
        for entry in sent:
            if entry.channel == "tns":  # TNS has no retraction: the AT report stands, and the outbox says so
                name = (entry.receipt or {}).get("object_name")
                self.outbox.annotate(entry.id, op.by_event_id, (
                    f"{op.reason} after this AT report was sent; TNS has no retraction: the report stands"
                    + (f" (object {name})" if name else "")))
                self.stats.standing += 1
                continue
            if entry.channel != "hermes" or entry.key.startswith("hermes:retraction:"):
                continue  # GCN retractions: their channels' builders decide (not HERMES's)
            payload = hermes_reports.retraction_message(entry.payload, entry.receipt, op.by_event_id, self.options,
                                                        reason=op.reason)
            self.outbox.put(f"hermes:retraction:{entry.key}", "hermes", payload, source_event_id=op.by_event_id,
                            group_key=None, requires_approval=self._approval("hermes", payload))
            self.stats.retractions += 1
        for put in op.retractions:
            if any(e.channel == put.channel and e.key != put.key for e in sent):
                self._put(put)
                self.stats.retractions += 1

    def committed(self, batch: list[Handled], dead: list[tuple[Any, str]]) -> None:
        st = self.stats
        st.records += len(batch)
        for h in batch:
            for op in h.write or []:
                if isinstance(op, Put) and id(op) in self._unbuilt:
                    continue
                if isinstance(op, Put):
                    st.entries += 1
                    st.by_channel[op.channel] = st.by_channel.get(op.channel, 0) + 1
                else:
                    st.withdrawals += 1


def optical_topics(settings: Any) -> list[str]:
    """Topics of the optical-counterpart filter instances (the default name included)."""
    f = settings.filters
    names = {OPTICAL_PLUGIN}
    if f.enabled:
        names |= {e.name for e in f.filters if e.plugin_name == OPTICAL_PLUGIN and e.publish}
    return sorted(settings.topic(f.topic_prefix + n) for n in names)


def _history_loader(archive: Any) -> Callable[[dict], Any]:
    def load(rec: dict[str, Any]) -> Any:
        if rec.get("source") != "ztf":
            return None
        try:
            from filters.ztf_history import decode_history

            return decode_history(archive.raw(rec["id"]), candid=(rec.get("properties") or {}).get("candid"))
        except Exception as exc:  # noqa: BLE001 - no history: the messages go without non-detections
            log.warning("reports: ZTF history of %s unavailable (%s)", rec.get("id"), exc)
            return None
    return load


def _host_loader(archive: Any) -> Callable[[dict], Any] | None:
    try:
        from followup.reports.tns import host_loader
    except ImportError:  # the TNS builder is missing: load_builders logs it
        return None
    return host_loader(archive.engine)


def _event_loader(archive: Any) -> Callable[[str], Any]:
    def load(event_id: str) -> Any:
        rec = archive.get(event_id)
        return rec.event if rec is not None else None
    return load


def stages(app: Any, *, until_caught_up: bool = False) -> list[Any]:
    """The reports loop (``mma_broker.stages`` entry ``reports``); empty when ``[publish] enabled =
    false`` (nothing would send what it puts) or no channel is enabled."""
    import functools

    from broker.app import open_archive
    from broker.kafka import claim_instance, client_config, ensure_topics, make_consumer, stage_producer
    from broker.pipeline.runner import IDLE_INPUT_FILL_S, StageRunner
    from broker.sinks.outbox import Outbox
    from broker.stages import StageSpec

    s = app.settings
    p = s.publish
    enabled = {name for name in ("hermes", "gcn-notice", "gcn-circular", "tns") if p.channel_settings(name).enabled}
    if not p.enabled or not enabled:
        return []
    topics = {s.topic(s.followup.results_topic): "followup", s.topic(s.enrich.coincidences_topic): "coincidence"}
    topics |= {t: "optical" for t in optical_topics(s)}
    dlq = s.topic(s.dlq_topic)
    archive = open_archive(s)
    try:
        ensure_topics(s, [*topics, dlq])
    except BaseException:
        archive.close()
        raise
    stats = ReportsStats()
    handler = ReportsHandler(outbox=Outbox(archive.engine), topics=topics, builders=load_builders(enabled),
                             options=hermes_reports.HermesOptions.from_settings(s), settings=s,
                             load_event=_event_loader(archive), load_history=_history_loader(archive), stats=stats,
                             load_host=_host_loader(archive) if "tns" in enabled else None)
    name = "reports"
    consumer = make_consumer(s, f"{s.group_id}.{name}")
    consumer.subscribe(list(topics))
    slot = claim_instance(s, name)
    admin = None
    if until_caught_up:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(client_config(s))
    runner = StageRunner(handler, consumer, stage_producer(s, name, slot), dlq_topic=dlq, limits=s.limits,
                         fill_s=IDLE_INPUT_FILL_S,
                         store_raw=archive.store_raw, transactional=s.kafka.transactions,
                         producer_factory=functools.partial(stage_producer, s, name, slot), admin=admin,
                         subscription=list(topics), metrics=app.metrics.stage(name))
    return [StageSpec(name, runner, inputs=list(topics), outputs=[], after=["followup", "filters", "enrich"],
                      summary=lambda: [stats.summary()], close=lambda: (archive.close(), slot.release()))]
