"""Event groups: the revisions of one superevent or trigger, with their state.

An upstream sends many notices per astrophysical trigger: an LVK superevent's
preliminary, initial, update and retraction alerts, each in JSON (``igwn.gwalert``,
Avro) and VOEvent form; a Fermi GBM trigger's alert, flight, ground and final
notices; Swift BAT, XRT and UVOT positions of one trigger number. Downstream stages
act per group, not per notice. :func:`group_key` gives the group, :class:`GroupStore`
keeps it in PostgreSQL (migration 0005, :func:`group_tables`).

Group keys (:func:`group_key`)
------------------------------
* IGWN: ``igwn:<superevent id>`` (``igwn:S230518h``): the JSON, Avro and VOEvent
  forms of every revision carry the superevent id as ``upstream_id``.
* GCN: ``gcn:<mission>:<trigger id>`` (``gcn:fermi:745121685``), the mission lower
  case with every run of non-alphanumerics made ``-`` (``gcn:einstein-probe:...``).
  The instrument is left out on purpose: Swift XRT and UVOT positions reuse the BAT
  trigger number, and GCN retractions may carry no instrument. The trigger id is
  the notice's ``id`` / ``event_name`` (GCN Kafka JSON) or TrigID (VOEvent), so the
  JSON and VOEvent forms of one GBM trigger share a group. Swift BAT-GUANO ids
  (Fermi MET seconds, ~7e8) and BAT trigger numbers (~1e6) live in one namespace
  and would share a group only if equal.
* ZTF / LSST: ``ztf:<objectId>`` — the alerts of one object (its detections).
* Hand-made events: ``user:<upstream id>``.

State of a group (:class:`GroupState`)
--------------------------------------
* ``revisions``: its Event ids in arrival order (the order :meth:`GroupStore.add`
  saw them; a replayed event keeps its first place);
* ``latest``: the last one to arrive;
* ``best_localization``: the localization with the smallest 90 % area among the
  revisions (ties: the later revision) — a Swift XRT circle beats the BAT one, a
  GBM ground position beats the flight one, an LVK update map beats the preliminary
  when it is smaller; None when no revision has one with an area;
* ``retracted``: any revision is a retraction (an LVK or GCN retraction is final);
* ``t0``: the T0 of the latest revision that is not a retraction; for a GCN trigger
  (``gcn:`` key) the earliest T0 of those revisions: its follow-up notices (Swift XRT and
  UVOT) carry the trigger's T0 when the decoder saw the trigger, else their own
  observation start (:mod:`broker.sources.gcn`, ``time_source``), which must not move it.

Categories (:func:`category_of`), for :meth:`GroupStore.in_time_window`: ``gw``
(IGWN), ``neutrino`` (GCN neutrino messenger: IceCube, KM3NeT, Super-K, SNEWS),
``frb`` (CHIME, DSA-110), ``xray`` (Einstein Probe, MAXI), ``grb`` (the other GCN
electromagnetic missions: Fermi, Swift, INTEGRAL, SVOM, ...), ``optical`` (ZTF,
LSST, electromagnetic VOEvents of non-GCN streams: Gaia, ASAS-SN), ``user``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from broker.enrich.store import LOCS, LocalizationRef, _utc
from broker.errors import BrokerError
from broker.event import SURVEY_SOURCES, Event, format_time

__all__ = ["GroupState", "GroupStore", "GroupBatch", "GroupError", "group_key", "category_of", "group_tables"]

log = logging.getLogger(__name__)
_F8 = sa.Float(precision=53)
_FRB = {"chime", "dsa110", "dsa-110"}
_XRAY = {"einstein-probe", "maxi"}


class GroupError(BrokerError):
    """A group cannot be found or read (one line)."""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def group_key(event: Event) -> str:
    """The group of an Event's revisions (see the module docstring for the rules).

    Parameters
    ----------
    event : broker.event.Event

    Returns
    -------
    str
        ``igwn:<superevent>``, ``gcn:<mission>:<trigger id>``, ``ztf:<objectId>``,
        ``lsst:<id>`` or ``user:<id>``.
    """
    if event.source == "gcn":
        return f"gcn:{_slug(event.mission)}:{event.upstream_id}"
    return f"{event.source}:{event.upstream_id}"


def category_of(event: Event) -> str:
    """``gw``, ``neutrino``, ``frb``, ``xray``, ``grb``, ``optical`` or ``user`` (module docstring)."""
    if event.source == "igwn" or event.messenger == "gw":
        return "gw"
    if event.source in SURVEY_SOURCES:
        return "optical"
    if event.source == "user":
        return "user"
    if event.messenger == "neutrino":
        return "neutrino"
    if event.source == "voevent":  # VOEvent streams besides GCN's: Gaia, ASAS-SN (optical transients)
        return "optical"
    mission = _slug(event.mission)
    if mission in _FRB:
        return "frb"
    if mission in _XRAY:
        return "xray"
    return "grb"


def group_tables(metadata: sa.MetaData) -> dict[str, sa.Table]:
    """Define migration 0005's ``event_groups`` and ``event_group_members`` on ``metadata``
    (``localizations`` must be defined on it too: :func:`broker.enrich.store.localization_tables`)."""
    groups = sa.Table(
        "event_groups", metadata,
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("category", sa.Text, nullable=False, comment="gw | grb | neutrino | frb | xray | optical | user"),
        sa.Column("t0", sa.TIMESTAMP(timezone=True), nullable=False, comment="the latest revision's T0"),
        sa.Column("latest_event_id", sa.Text, nullable=False),
        sa.Column("best_localization_id", sa.Text, sa.ForeignKey("localizations.id"), nullable=True),
        sa.Column("retracted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("n_revisions", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Index("ix_event_groups_t0", "t0"),
    )
    members = sa.Table(
        "event_group_members", metadata,
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("group_key", sa.Text, sa.ForeignKey("event_groups.key", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False, comment="arrival order"),
        sa.Column("alert_type", sa.Text, nullable=False),
        sa.Column("time", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("retraction", sa.Boolean, nullable=False),
        sa.Column("localization_id", sa.Text, sa.ForeignKey("localizations.id"), nullable=True),
        sa.Column("area_90_deg2", _F8, nullable=True),
        sa.Column("added_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Index("ix_event_group_members_group", "group_key", "seq"),
    )
    return {"event_groups": groups, "event_group_members": members}


_md = sa.MetaData()
LOCS.to_metadata(_md)
_G = group_tables(_md)
GROUPS, MEMBERS = _G["event_groups"], _G["event_group_members"]


@dataclass(frozen=True)
class GroupState:
    """One group's revisions and state (module docstring).

    Attributes
    ----------
    key : str
        :func:`group_key`.
    revisions : list of str
        Event ids in arrival order.
    latest : str
        The last revision to arrive.
    best_localization : LocalizationRef or None
        Smallest 90 % area among the revisions.
    retracted : bool
    t0 : str
        T0 of the latest non-retraction revision (GCN triggers: the earliest), ISO 8601 UTC ending in ``Z``.
    category : str
        :func:`category_of`.
    alert_types : list of str
        Each revision's alert type, in the order of ``revisions``.
    """

    key: str
    revisions: list[str]
    latest: str
    best_localization: LocalizationRef | None
    retracted: bool
    t0: str
    category: str = ""
    alert_types: list[str] = field(default_factory=list)

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``best_localization`` as a dict or None)."""
        return {"key": self.key, "category": self.category, "t0": self.t0, "revisions": list(self.revisions),
                "alert_types": list(self.alert_types), "latest": self.latest,
                "best_localization": None if self.best_localization is None else self.best_localization.to_json_dict(),
                "retracted": self.retracted}


def _z(t: datetime) -> str:
    return format_time(t)


class GroupStore:
    """Event groups in PostgreSQL (migration 0005).

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The archive's database, migrated.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def add(self, event: Event, ref: LocalizationRef | None) -> GroupState:
        """Add a revision to its group and return the group's new state.

        Idempotent per Event id: adding the same Event again keeps its place in the
        arrival order; a localization given later (``ref`` not None) is recorded.
        Concurrent adds to one group are serialized by a row lock on the group.

        Parameters
        ----------
        event : broker.event.Event
        ref : LocalizationRef or None
            Its stored localization (:meth:`broker.enrich.store.LocalizationStore.put`).

        Returns
        -------
        GroupState
        """
        key = group_key(event)
        t = _utc(event.time)
        with self.engine.begin() as conn:
            conn.execute(pg_insert(GROUPS).values(key=key, source=event.source, category=category_of(event), t0=t,
                                                  latest_event_id=event.id, retracted=False, n_revisions=0)
                         .on_conflict_do_nothing())
            conn.execute(sa.select(GROUPS.c.key).where(GROUPS.c.key == key).with_for_update())
            stmt = pg_insert(MEMBERS).values(
                event_id=event.id, group_key=key, alert_type=event.alert_type, time=t, retraction=event.is_retraction,
                localization_id=None if ref is None else ref.id,
                area_90_deg2=None if ref is None else ref.area_90_deg2)
            if ref is not None:
                stmt = stmt.on_conflict_do_update(index_elements=[MEMBERS.c.event_id],
                                                  set_={"localization_id": ref.id, "area_90_deg2": ref.area_90_deg2})
            else:
                stmt = stmt.on_conflict_do_nothing()
            conn.execute(stmt)
            # the event may belong to another group already (a key rule changed): its first group stays
            real_key = conn.execute(sa.select(MEMBERS.c.group_key).where(MEMBERS.c.event_id == event.id)).scalar_one()
            state = self._recompute(conn, real_key)
        return state

    def add_many(self, items: Sequence[tuple[Event, LocalizationRef | None]]) -> list[GroupState]:
        """Add many revisions in one transaction; the same results as :meth:`add` on each in turn.

        The members are inserted with one multi-row statement (their arrival order is
        the order of ``items``), the groups touched are row-locked in key order and
        rewritten once each; the state after each item is computed from the members
        as :meth:`add` would have left them, so ``add_many(items)[i]`` equals what the
        ``i``-th of ``[add(e, r) for e, r in items]`` returns, duplicates (an Event
        already stored, or twice in ``items``) and retractions included. Idempotent.

        Parameters
        ----------
        items : sequence of (broker.event.Event, LocalizationRef or None)
            Events and their stored localizations, in arrival order.

        Returns
        -------
        list of GroupState
            One per item, in the order of ``items``.
        """
        if not items:
            return []
        keys = [group_key(e) for e, _ in items]
        first_of_key: dict[str, int] = {}
        for i, k in enumerate(keys):
            first_of_key.setdefault(k, i)
        with self.engine.begin() as conn:
            conn.execute(pg_insert(GROUPS).values([
                dict(key=k, source=items[i][0].source, category=category_of(items[i][0]), t0=_utc(items[i][0].time),
                     latest_event_id=items[i][0].id, retracted=False, n_revisions=0)
                for k, i in first_of_key.items()]).on_conflict_do_nothing())
            ids = list(dict.fromkeys(e.id for e, _ in items))
            # an Event already a member keeps its group (add: "its first group stays")
            owner = dict(conn.execute(sa.select(MEMBERS.c.event_id, MEMBERS.c.group_key)
                                      .where(MEMBERS.c.event_id.in_(ids))).all())
            new_rows: dict[str, dict[str, Any]] = {}
            for (e, r), k in zip(items, keys):
                if e.id in owner:
                    continue
                owner[e.id] = k
                new_rows[e.id] = dict(event_id=e.id, group_key=k, alert_type=e.alert_type, time=_utc(e.time),
                                      retraction=e.is_retraction)
            real_keys = sorted({owner[e.id] for e, _ in items})
            conn.execute(sa.select(GROUPS.c.key).where(GROUPS.c.key.in_(sorted(set(real_keys) | set(keys))))
                         .order_by(GROUPS.c.key).with_for_update())
            cols = (MEMBERS.c.event_id, MEMBERS.c.alert_type, MEMBERS.c.time, MEMBERS.c.retraction,
                    MEMBERS.c.localization_id, MEMBERS.c.area_90_deg2, MEMBERS.c.group_key)
            existing = conn.execute(sa.select(*cols).where(MEMBERS.c.group_key.in_(real_keys))
                                    .order_by(MEMBERS.c.seq)).all()
            members: dict[str, list[dict[str, Any]]] = {k: [] for k in real_keys}
            by_id: dict[str, dict[str, Any]] = {}
            for m in existing:
                d = dict(m._mapping)
                members[d["group_key"]].append(d)
                by_id[d["event_id"]] = d
            groups = {g.key: g for g in conn.execute(sa.select(GROUPS).where(GROUPS.c.key.in_(real_keys))).all()}
            loc_ids = {d["localization_id"] for d in by_id.values() if d["localization_id"]}
            loc_ids |= {r.id for _, r in items if r is not None}
            refs: dict[str, LocalizationRef] = {}
            if loc_ids:
                refs = {x.id: LocalizationRef(x.id, x.kind, x.area_50_deg2, x.area_90_deg2, x.n_tiles)
                        for x in conn.execute(sa.select(LOCS.c.id, LOCS.c.kind, LOCS.c.area_50_deg2,
                                                        LOCS.c.area_90_deg2, LOCS.c.n_tiles)
                                              .where(LOCS.c.id.in_(loc_ids)))}
            # replay the adds in order, in memory: the state after each is what add() returns
            out: list[GroupState] = []
            inserts: list[dict[str, Any]] = []
            changed: dict[str, dict[str, Any]] = {}
            for e, r in items:
                d = by_id.get(e.id)
                if d is None:
                    d = dict(new_rows[e.id], localization_id=None if r is None else r.id,
                             area_90_deg2=None if r is None else r.area_90_deg2)
                    members[d["group_key"]].append(d)
                    by_id[e.id] = d
                    inserts.append(d)
                elif r is not None:
                    d["localization_id"], d["area_90_deg2"] = r.id, r.area_90_deg2
                    if e.id not in new_rows:
                        changed[e.id] = d
                k = owner[e.id]
                out.append(_state_of(k, members[k], groups[k].category, refs))
            if inserts:
                conn.execute(pg_insert(MEMBERS).values([
                    {c: d[c] for c in ("event_id", "group_key", "alert_type", "time", "retraction", "localization_id",
                                       "area_90_deg2")} for d in inserts]).on_conflict_do_nothing())
            if changed:
                conn.execute(sa.update(MEMBERS).where(MEMBERS.c.event_id == sa.bindparam("eid"))
                             .values(localization_id=sa.bindparam("lid"), area_90_deg2=sa.bindparam("a90")),
                             [{"eid": d["event_id"], "lid": d["localization_id"], "a90": d["area_90_deg2"]}
                              for d in changed.values()])
            conn.execute(sa.update(GROUPS).where(GROUPS.c.key == sa.bindparam("k")).values(
                t0=sa.bindparam("t0"), latest_event_id=sa.bindparam("latest"),
                best_localization_id=sa.bindparam("best"), retracted=sa.bindparam("retr"),
                n_revisions=sa.bindparam("n"), updated_at=sa.func.now()),
                [_group_values(k, members[k]) for k in real_keys])
        return out

    def _recompute(self, conn: sa.Connection, key: str) -> GroupState:
        rows = conn.execute(sa.select(MEMBERS.c.event_id, MEMBERS.c.alert_type, MEMBERS.c.time, MEMBERS.c.retraction,
                                      MEMBERS.c.localization_id, MEMBERS.c.area_90_deg2)
                            .where(MEMBERS.c.group_key == key).order_by(MEMBERS.c.seq)).all()
        best_id = _best(rows)
        conn.execute(sa.update(GROUPS).where(GROUPS.c.key == key).values(
            t0=_t0_of(key, rows), latest_event_id=rows[-1].event_id, best_localization_id=best_id,
            retracted=any(r.retraction for r in rows), n_revisions=len(rows), updated_at=sa.func.now()))
        return self._states(conn, [key])[0]

    # ------------------------------------------------------------ reads
    def _states(self, conn: sa.Connection, keys: list[str]) -> list[GroupState]:
        if not keys:
            return []
        groups = conn.execute(sa.select(GROUPS).where(GROUPS.c.key.in_(keys))).all()
        members = conn.execute(sa.select(MEMBERS.c.group_key, MEMBERS.c.event_id, MEMBERS.c.alert_type)
                               .where(MEMBERS.c.group_key.in_(keys)).order_by(MEMBERS.c.seq)).all()
        best_ids = {g.best_localization_id for g in groups if g.best_localization_id}
        refs = {}
        if best_ids:
            refs = {r.id: LocalizationRef(r.id, r.kind, r.area_50_deg2, r.area_90_deg2, r.n_tiles)
                    for r in conn.execute(sa.select(LOCS.c.id, LOCS.c.kind, LOCS.c.area_50_deg2, LOCS.c.area_90_deg2,
                                                    LOCS.c.n_tiles).where(LOCS.c.id.in_(best_ids)))}
        by_key: dict[str, list[Any]] = {}
        for m in members:
            by_key.setdefault(m.group_key, []).append(m)
        found = {g.key: g for g in groups}
        out = []
        for k in keys:
            g = found.get(k)
            if g is None:
                continue
            ms = by_key.get(k, [])
            out.append(GroupState(key=k, revisions=[m.event_id for m in ms], latest=g.latest_event_id,
                                  best_localization=refs.get(g.best_localization_id), retracted=g.retracted,
                                  t0=_z(g.t0), category=g.category, alert_types=[m.alert_type for m in ms]))
        return out

    def get(self, key: str) -> GroupState | None:
        """The group of key ``key``, or None."""
        with self.engine.connect() as conn:
            states = self._states(conn, [key])
        return states[0] if states else None

    def of_event(self, event_id: str) -> GroupState | None:
        """The group an Event id was added to, or None."""
        with self.engine.connect() as conn:
            key = conn.execute(sa.select(MEMBERS.c.group_key).where(MEMBERS.c.event_id == event_id)).scalar()
            states = self._states(conn, [key]) if key is not None else []
        return states[0] if states else None

    def in_time_window(self, t0: str | datetime, lo_s: float, hi_s: float, *,
                       categories: Iterable[str] | None = None) -> list[GroupState]:
        """Groups whose T0 lies in ``[t0 + lo_s, t0 + hi_s]``, by T0.

        Parameters
        ----------
        t0 : str or datetime
            Reference time (ISO 8601; naive = UTC).
        lo_s, hi_s : float
            Window bounds relative to ``t0``, s (``lo_s <= hi_s``).
        categories : iterable of str, optional
            Only these categories (:func:`category_of`), e.g. ``["grb"]``.

        Returns
        -------
        list of GroupState
            Retracted groups included (check ``retracted``).

        Raises
        ------
        GroupError
            ``lo_s > hi_s``.
        """
        if not lo_s <= hi_s:
            raise GroupError(f"time window [{lo_s}, {hi_s}] s: the low end is above the high end")
        t = _utc(t0)
        q = sa.select(GROUPS.c.key).where(GROUPS.c.t0 >= t + timedelta(seconds=lo_s),
                                          GROUPS.c.t0 <= t + timedelta(seconds=hi_s)).order_by(GROUPS.c.t0, GROUPS.c.key)
        if categories is not None:
            q = q.where(GROUPS.c.category.in_(list(categories)))
        with self.engine.connect() as conn:
            keys = list(conn.execute(q).scalars())
            return self._states(conn, keys)


class GroupBatch:
    """Adds held in memory until :meth:`flush` writes them with :meth:`GroupStore.add_many`.

    :meth:`add` returns at once the state :meth:`GroupStore.add` would return — the
    group's stored members (read once per group per batch) followed by the adds held
    here — and :meth:`flush` stores them all in one transaction. Meant for one writer
    per group at a time (the enrich stage: one partition's messages in order); the
    states :meth:`flush` gets back are compared with those returned by :meth:`add`
    (a difference is logged).

    Parameters
    ----------
    store : GroupStore
    """

    def __init__(self, store: GroupStore) -> None:
        self.store = store
        self.items: list[tuple[Event, LocalizationRef | None]] = []
        self.states: list[GroupState] = []
        self._members: dict[str, list[dict[str, Any]]] = {}
        self._owner: dict[str, str] = {}
        self._category: dict[str, str] = {}
        self._refs: dict[str, LocalizationRef] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, conn: sa.Connection, event: Event, key: str) -> str:
        if event.id not in self._owner:
            k = conn.execute(sa.select(MEMBERS.c.group_key).where(MEMBERS.c.event_id == event.id)).scalar()
            self._owner[event.id] = key if k is None else k
        real = self._owner[event.id]
        if real not in self._members:
            rows = conn.execute(sa.select(MEMBERS.c.event_id, MEMBERS.c.alert_type, MEMBERS.c.time,
                                          MEMBERS.c.retraction, MEMBERS.c.localization_id, MEMBERS.c.area_90_deg2,
                                          MEMBERS.c.group_key).where(MEMBERS.c.group_key == real)
                                .order_by(MEMBERS.c.seq)).all()
            self._members[real] = [dict(r._mapping) for r in rows]
            for d in self._members[real]:
                self._owner.setdefault(d["event_id"], real)
            cat = conn.execute(sa.select(GROUPS.c.category).where(GROUPS.c.key == real)).scalar()
            self._category[real] = cat if cat is not None else category_of(event)
            ids = {d["localization_id"] for d in self._members[real] if d["localization_id"]} - set(self._refs)
            if ids:
                for x in conn.execute(sa.select(LOCS.c.id, LOCS.c.kind, LOCS.c.area_50_deg2, LOCS.c.area_90_deg2,
                                                LOCS.c.n_tiles).where(LOCS.c.id.in_(ids))):
                    self._refs[x.id] = LocalizationRef(x.id, x.kind, x.area_50_deg2, x.area_90_deg2, x.n_tiles)
        return real

    def add(self, event: Event, ref: LocalizationRef | None) -> GroupState:
        """Hold an add and return the group's state after it (as :meth:`GroupStore.add`)."""
        key = group_key(event)
        with self.store.engine.connect() as conn:
            real = self._load(conn, event, key)
        self._category.setdefault(key, category_of(event))
        ms = self._members[real]
        d = next((m for m in ms if m["event_id"] == event.id), None)
        if d is None:
            ms.append(dict(event_id=event.id, group_key=real, alert_type=event.alert_type, time=_utc(event.time),
                           retraction=event.is_retraction, localization_id=None if ref is None else ref.id,
                           area_90_deg2=None if ref is None else ref.area_90_deg2))
        elif ref is not None:
            d["localization_id"], d["area_90_deg2"] = ref.id, ref.area_90_deg2
        if ref is not None:
            self._refs[ref.id] = ref
        state = _state_of(real, ms, self._category[real], self._refs)
        self.items.append((event, ref))
        self.states.append(state)
        return state

    def flush(self) -> list[GroupState]:
        """Store the held adds (:meth:`GroupStore.add_many`) and forget them.

        A stored state that differs from the one :meth:`add` returned (another writer
        added to the group meanwhile, e.g. two enrich processes during a rebalance) is
        logged as a warning: the table holds the right state, and raising would not
        undo the committed adds.

        Returns
        -------
        list of GroupState
            The stored states, one per add.
        """
        items, states = self.items, self.states
        self.clear()
        if not items:
            return []
        got = self.store.add_many(items)
        for (e, _), a, b in zip(items, states, got):
            if a != b:
                log.warning("group %s: the state stored for %s differs from the one returned when it was held "
                            "(another writer added to the group meanwhile)", b.key, e.id)
        return got

    def clear(self) -> None:
        """Forget the held adds and what was read (a batch handled again starts afresh)."""
        self.items, self.states = [], []
        self._members.clear()
        self._owner.clear()
        self._category.clear()
        self._refs.clear()


class _Row:
    """A member row held in memory by :meth:`GroupStore.add_many` (attribute access as a SQL row)."""

    __slots__ = ("event_id", "alert_type", "time", "retraction", "localization_id", "area_90_deg2")

    def __init__(self, d: dict[str, Any]) -> None:
        for c in self.__slots__:
            setattr(self, c, d[c])


def _group_values(key: str, members: list[dict[str, Any]]) -> dict[str, Any]:
    """``event_groups`` columns of a group with these members in arrival order (as ``_recompute``)."""
    rows = [_Row(d) for d in members]
    return {"k": key, "t0": _t0_of(key, rows), "latest": rows[-1].event_id, "best": _best(rows),
            "retr": any(r.retraction for r in rows), "n": len(rows)}


def _state_of(key: str, members: list[dict[str, Any]], category: str,
              refs: dict[str, LocalizationRef]) -> GroupState:
    """The :class:`GroupState` ``_recompute`` would read back for these members."""
    v = _group_values(key, members)
    return GroupState(key=key, revisions=[d["event_id"] for d in members], latest=v["latest"],
                      best_localization=refs.get(v["best"]) if v["best"] else None, retracted=v["retr"],
                      t0=_z(_utc(v["t0"])), category=category, alert_types=[d["alert_type"] for d in members])


def _t0_of(key: str, rows: list[Any]) -> Any:
    """A group's T0 from its member rows in arrival order (module docstring): the latest
    non-retraction revision's; for a GCN trigger (``gcn:`` key) the earliest, so that a
    follow-up notice whose T0 is its own observation start (a Swift XRT/UVOT notice
    decoded without its BAT trigger, ``time_source="observation_start"``) never moves the
    trigger's T0 later."""
    kept = [r for r in rows if not r.retraction] or rows
    return min(r.time for r in kept) if key.startswith("gcn:") else kept[-1].time


def _best(rows: list[Any]) -> str | None:
    """Localization id with the smallest 90 % area (ties: the later revision); else the
    latest localization without an area (a point without error radius); else None."""
    best, best_area = None, None
    for r in rows:
        if r.localization_id is None or r.area_90_deg2 is None:
            continue
        if best_area is None or r.area_90_deg2 <= best_area:
            best, best_area = r.localization_id, r.area_90_deg2
    if best is None:
        with_loc = [r.localization_id for r in rows if r.localization_id is not None]
        best = with_loc[-1] if with_loc else None
    return best

