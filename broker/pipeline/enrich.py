"""Enrich stage: ``mma.events`` → localizations, groups, cross-match, coincidences →
``mma.events.enriched`` and ``mma.coincidences``.

One loop (consumer group ``<group_id>.enrich``) on the stage runner
(:mod:`broker.pipeline.runner`), like ingest. Per Event read from ``mma.events``:

1. **Localization**, decoded once: for an Event that may embed a sky map (any IGWN
   or GCN alert in JSON or Avro, or any Event with a HEALPix localization) the raw
   alert is read from the archive (:meth:`broker.archive.Archive.raw`) and
   :func:`broker.enrich.localization.extract_localization` takes the map out; an
   Event with only a position (ZTF candidates, VOEvent positions) never touches the
   raw store. The result is stored once per content
   (:meth:`broker.enrich.store.LocalizationStore.put`), the position of a point is
   indexed (:func:`broker.enrich.store.index_positions`, so region queries find ZTF
   candidates) and the Event joins its group
   (:meth:`broker.enrich.groups.GroupStore.add`). A ZTF/LSST candidate with only a
   point is held in memory (:meth:`~broker.enrich.store.LocalizationStore.point_ref`,
   :class:`broker.enrich.groups.GroupBatch`) and written with the rest of its batch in
   :meth:`EnrichHandler.write` (``put_many``, ``add_many``, one transaction each); any
   other Event first flushes what is held, so it sees the whole batch. A bad sky map (not FITS, wrong
   ordering, negative or NaN probabilities, ...) is *not* a dead letter: the Event is
   archived already, so it is published enriched without a localization and
   ``enrichment.error`` says why (counted in ``bad_localizations``).
2. **Cross-match** with the catalogs named in ``[enrich] catalogs`` that are loaded
   in the database (:class:`CatalogCache`: each read once per process, re-read when
   reloaded): a sky map with :func:`broker.enrich.crossmatch.crossmatch_skymap`
   (sources inside the ``crossmatch_level`` credible region, ranked by searched
   probability, the 3D one when both have distances), a point with
   :func:`broker.enrich.points.crossmatch_point` (sources within the combined error,
   nearest first); the best ``top_n`` of each.
3. **Coincidences** (:mod:`broker.enrich.coinc`), between groups, in both arrival
   orders: a GW revision looks for GRB groups in its RAVEN window
   (:func:`~broker.enrich.coinc.gw_grb_coincidence`: overlap integral, temporal and
   joint FAR), IceCube Gold/Bronze tracks in ±500 s
   (:func:`~broker.enrich.coinc.gw_neutrino_coincidences`) and ZTF candidates in its
   90 % region after T0 (:meth:`~broker.enrich.store.LocalizationStore.events_in_region`
   then :func:`~broker.enrich.coinc.optical_verdict`); a GRB looks for GW groups whose
   window holds it, and for ZTF candidates in its region; a neutrino for GW groups; a
   ZTF candidate for GW and GRB groups of the last ``optical_days`` whose region holds
   it. The sky maps come from the localization store (best localization of each
   group), never from raw bytes again. Each coincidence is one JSON record on
   ``mma.coincidences`` (schema ``broker/schemas/mma/coincidence.json``), keyed by
   its id ``<kind>:<group key>+<group key>`` — stable, so a new revision of a member
   publishes a new version under the same key, and a replay publishes nothing new.
   A retraction of a member publishes each of its coincidences again with
   ``retracted: true``. Every version published is also a row of table
   ``coincidences`` (migration 0013, :mod:`broker.enrich.coincidence_store`), written
   before the Kafka transaction in the transaction that claims it.
4. **Publish** the Event as JSON with its ``enrichment`` on ``mma.events.enriched``
   (schema ``broker/schemas/mma/enriched_event.json``, key = ``upstream_id`` as on
   ``mma.events``), the coincidences, and commit the consumed offsets in one Kafka
   transaction.

The database writes are idempotent (content-addressed localizations, groups keyed by
Event id), so a batch consumed again after a crash writes nothing new and publishes
the same records in the transaction that was lost; each Event appears once on
``mma.events.enriched`` because ``mma.events`` holds each Event once. Messages are
handled in their order on the poll thread (``handler_threads = 0``): a GW alert and
a GRB in one batch see each other's groups.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from broker.enrich.coincidence_store import CROSS_LANE_KINDS  # the kinds both lanes may find: claimed first
from broker.enrich.enriched import ENRICHED_SCHEMA  # noqa: F401 - re-exported (readers: decode_enriched)
from broker.errors import BrokerError, DecodeError
from broker.event import SURVEY_SOURCES, Event, HealpixLocalization, PointLocalization
from broker.kafka import Outgoing
from broker.pipeline.runner import BaseStage, Handled
from broker.serde import EventCodec, Provenance
from broker.text import one_line

log = logging.getLogger(__name__)

COINCIDENCE_SCHEMA = "mma.coincidence/1"
"""``schema`` of a coincidence record (``broker/schemas/mma/coincidence.json``)."""
CONTENT_TYPE = "application/json"
_MAP_SOURCES = ("igwn", "gcn")
_NAME_KEYS = ("objname", "Source_Name", "name", "Name", "GWGC", "GWGC name", "PGC", "PGC no", "HyperLEDA",
              "HyperLEDA name", "objectId", "GLADE no", "source_id")


# ------------------------------------------------------------------ collaborators
class Localizations(Protocol):
    """What the stage needs of :class:`broker.enrich.store.LocalizationStore`."""

    def put(self, event_id: str, sky: Any) -> Any: ...
    def load(self, ref_id: str) -> Any: ...
    def events_in_region(self, ref_id: str, level: float = 0.9, *, sources: Any = None, since: Any = None,
                         until: Any = None, limit: int | None = 1000) -> list[str]: ...


class Groups(Protocol):
    """What the stage needs of :class:`broker.enrich.groups.GroupStore`."""

    def add(self, event: Event, ref: Any) -> Any: ...
    def in_time_window(self, t0: str, lo_s: float, hi_s: float, *, categories: Any = None) -> list[Any]: ...


class ArchiveReader(Protocol):
    """What the stage needs of :class:`broker.archive.Archive`."""

    def raw(self, event_id: str) -> bytes: ...
    def get(self, event_id: str) -> Any: ...


@dataclass
class EnrichStats:
    """Running totals of one enrich loop (summary line and tests)."""

    events: int = 0
    localized: int = 0
    bad_localizations: int = 0
    raw_reads: int = 0
    fetched_maps: int = 0
    """Sky maps downloaded from an alert's URL (``[enrich] fetch_skymap_urls``)."""
    matches: int = 0
    coincidences: Counter = field(default_factory=Counter)
    """kind → coincidence records published (retractions included)."""
    retracted_coincidences: int = 0
    left_to_other_lane: int = 0
    """Trigger–optical records another lane had claimed (it publishes them; ``claim``)."""
    dead_letters: int = 0

    def summary(self) -> str:
        """One line for people."""
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.coincidences.items())) or "none"
        return (f"enrich: {self.events} event(s) enriched, {self.localized} with a localization, "
                f"{self.bad_localizations} bad localization(s) (published with enrichment.error), "
                f"{self.matches} catalog match(es); coincidence records: {kinds} "
                f"({self.retracted_coincidences} marking a retraction"
                + (f", {self.left_to_other_lane} left to the other lane" if self.left_to_other_lane else "")
                + f"); {self.dead_letters} dead letter(s)")


class _Lru(OrderedDict):
    """A small least-recently-used cache (immutable values: sky maps by content id, Events by id)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def fetch(self, key: Any, make: Callable[[], Any]) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)
        return value


# ------------------------------------------------------------------ catalogs
@dataclass
class CatalogArrays:
    """One loaded catalog in memory, as the cross-match needs it.

    Attributes
    ----------
    name : str
    rows : numpy.ndarray, shape (m,), int
        0-based rows in the catalog file.
    ra_deg, dec_deg : numpy.ndarray, shape (m,)
        ICRS positions, deg.
    dist_mpc : numpy.ndarray, shape (m,) or None
        Luminosity distances, Mpc (NaN unknown); None when the catalog has none.
    errors : broker.enrich.points.SourceErrors or None
    loaded_at : object
        The catalog's ``loaded_at`` (a reload is noticed by it).
    name_col : str or None
        The catalog's name column (``catalogs.columns['name']``), tried first for labels.
    """

    name: str
    catalog_id: int
    rows: Any
    ra_deg: Any
    dec_deg: Any
    dist_mpc: Any
    errors: Any
    loaded_at: Any
    name_col: Any = None
    _tree: Any = None
    _xyz: Any = None

    def tree(self) -> Any:
        """KD-tree of the unit vectors (built on first use)."""
        if self._tree is None:
            import numpy as np
            from scipy.spatial import cKDTree

            ra, dec = np.radians(self.ra_deg), np.radians(self.dec_deg)
            self._xyz = np.column_stack((np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)))
            self._tree = cKDTree(self._xyz)
        return self._tree

    def max_error_deg(self, containment: float) -> float:
        """Largest source error radius at ``containment``, deg (0 without errors)."""
        import numpy as np

        from broker.enrich.points import rayleigh_factor

        e = self.errors
        if e is None:
            return 0.0
        axes = [np.nan_to_num(np.asarray(e.major_deg, float), nan=0.0)]
        if e.minor_deg is not None:
            axes.append(np.nan_to_num(np.asarray(e.minor_deg, float), nan=0.0))
        biggest = max(float(a.max()) if a.size else 0.0 for a in axes)
        return biggest * rayleigh_factor(containment) / rayleigh_factor(e.containment)


class CatalogCache:
    """The ``[enrich] catalogs`` loaded in the database, read once per process.

    Each catalog's positions, distances and errors are read from ``catalog_sources``
    the first time it is needed; the list of loaded catalogs is looked at again every
    ``refresh_s`` seconds, so a catalog loaded (or reloaded with ``--replace``) while
    the stage runs is picked up.

    Parameters
    ----------
    engine : sqlalchemy.Engine
    names : sequence of str
    refresh_s : float
    """

    def __init__(self, engine: Any, names: Sequence[str], refresh_s: float = 60.0) -> None:
        self.engine, self.names, self.refresh_s = engine, list(names), refresh_s
        self._loaded: dict[str, CatalogArrays] = {}
        self._checked = -math.inf
        self._warned: set[str] = set()
        self._labels: _Lru = _Lru(50_000)

    def catalogs(self) -> list[CatalogArrays]:
        """The configured catalogs that are loaded, in the configured order."""
        if not self.names:
            return []
        now = time.monotonic()
        if now - self._checked >= self.refresh_s:
            self._checked = now
            self._refresh()
        return [self._loaded[n] for n in self.names if n in self._loaded]

    def _refresh(self) -> None:
        import sqlalchemy as sa

        from broker.enrich.catalogs import CATALOGS

        with self.engine.connect() as conn:
            found = {r.name: r for r in conn.execute(sa.select(CATALOGS.c.id, CATALOGS.c.name, CATALOGS.c.loaded_at,
                                                              CATALOGS.c.err_containment, CATALOGS.c.columns)
                                                    .where(CATALOGS.c.name.in_(self.names)))}
        for name in self.names:
            row = found.get(name)
            if row is None:
                self._loaded.pop(name, None)
                if name not in self._warned:
                    self._warned.add(name)
                    log.warning("enrich: catalog %r is not loaded (mma-broker catalog load %s FILE); "
                                "not cross-matched until it is", name, name)
                continue
            have = self._loaded.get(name)
            if have is None or have.loaded_at != row.loaded_at or have.catalog_id != row.id:
                self._loaded[name] = self._read(row)
                self._labels.clear()

    def _read(self, row: Any) -> CatalogArrays:
        import numpy as np
        import sqlalchemy as sa

        from broker.enrich.catalogs import SOURCES
        from broker.enrich.points import SourceErrors

        s = SOURCES.c
        with self.engine.connect() as conn:
            data = conn.execute(sa.select(s.row, s.ra_deg, s.dec_deg, s.dist_mpc, s.err_major_deg, s.err_minor_deg,
                                          s.err_pa_deg).where(s.catalog_id == row.id).order_by(s.row)).all()
        cols = list(zip(*data)) if data else [[]] * 7

        def floats(c: Sequence[Any]) -> Any:
            return np.array([np.nan if v is None else v for v in c], dtype=np.float64)

        dist = floats(cols[3])
        major, minor, pa = floats(cols[4]), floats(cols[5]), floats(cols[6])
        errors = None
        if np.isfinite(major).any():
            ellipse = np.isfinite(minor).any()
            errors = SourceErrors(major_deg=major, minor_deg=minor if ellipse else None,
                                  pa_deg=pa if ellipse else None,
                                  containment=row.err_containment if row.err_containment else 0.68)
        log.info("enrich: catalog %r read: %d sources", row.name, len(data))
        return CatalogArrays(name=row.name, catalog_id=row.id, rows=np.array(cols[0], dtype=np.int64),
                             ra_deg=floats(cols[1]), dec_deg=floats(cols[2]),
                             dist_mpc=dist if np.isfinite(dist).any() else None, errors=errors,
                             loaded_at=row.loaded_at, name_col=(row.columns or {}).get("name"))

    def labels(self, cat: CatalogArrays, rows: Sequence[int]) -> dict[int, str]:
        """A name for each file row (the first name-like column of the source), when there is one."""
        rows = [int(r) for r in rows]
        todo = [r for r in rows if (cat.name, r) not in self._labels]
        if todo:
            import sqlalchemy as sa

            from broker.enrich.catalogs import SOURCES

            with self.engine.connect() as conn:
                got = dict(conn.execute(sa.select(SOURCES.c.row, SOURCES.c.properties)
                                        .where(SOURCES.c.catalog_id == cat.catalog_id, SOURCES.c.row.in_(todo))).all())
            for r in todo:
                props = got.get(r) or {}
                keys = ((cat.name_col,) if cat.name_col else ()) + _NAME_KEYS
                label = next((str(props[k]) for k in keys if props.get(k) not in (None, "")), None)
                self._labels[(cat.name, r)] = label
        out = {}
        for r in rows:
            label = self._labels.fetch((cat.name, r), lambda: None)
            if label is not None:
                out[r] = label
        return out


def _angle_chord(angle_deg: float) -> float:
    return 2.0 * math.sin(math.radians(min(angle_deg, 180.0)) / 2.0)


def crossmatch_point_fast(point: PointLocalization, cat: CatalogArrays, containment: float) -> Any:
    """:func:`broker.enrich.points.crossmatch_point` on the sources a KD-tree finds near the point.

    The candidates are the sources within the largest possible combined radius (alert
    radius plus the catalog's largest error, both at ``containment``); the exact test is
    :func:`crossmatch_point` on them, so the matches are the same as over the whole
    catalog. The nearest source comes from the tree, matched or not.

    Returns
    -------
    broker.enrich.points.PointMatch
        ``rows`` are indices into the catalog arrays (not file rows).
    """
    import numpy as np

    from broker.enrich.points import PointMatch, SourceErrors, crossmatch_point, rayleigh_factor

    k = rayleigh_factor(containment)
    alert_r = point.error_radius or 0.0
    if point.containment is not None and 0 < point.containment < 1 and alert_r > 0:
        alert_r *= k / rayleigh_factor(point.containment)
    reach = alert_r + cat.max_error_deg(containment)
    ra, dec = math.radians(point.ra), math.radians(point.dec)
    vec = np.array([math.cos(dec) * math.cos(ra), math.cos(dec) * math.sin(ra), math.sin(dec)])
    tree = cat.tree()
    if not len(cat.rows):
        return PointMatch(np.empty(0, np.int64), np.empty(0), np.empty(0), containment, None, None)
    near = np.asarray(tree.query_ball_point(vec, _angle_chord(reach) * (1 + 1e-9) + 1e-12), dtype=np.int64)
    chord, nearest = tree.query(vec, k=1)
    nearest_sep = math.degrees(2.0 * math.asin(min(1.0, float(chord) / 2.0)))
    if near.size:
        e = cat.errors
        sub = None if e is None else SourceErrors(
            major_deg=np.asarray(e.major_deg)[near], minor_deg=None if e.minor_deg is None else e.minor_deg[near],
            pa_deg=None if e.pa_deg is None else e.pa_deg[near], containment=e.containment)
        m = crossmatch_point(point, cat.ra_deg[near], cat.dec_deg[near], sub, containment)
        rows, sep, radius = near[m.rows], m.separation_deg, m.radius_deg
    else:
        rows, sep, radius = np.empty(0, np.int64), np.empty(0), np.empty(0)
    return PointMatch(rows=rows, separation_deg=sep, radius_deg=radius, containment=containment,
                      nearest_row=int(nearest), nearest_separation_deg=nearest_sep)


# ------------------------------------------------------------------ helpers
def _num(v: Any) -> Any:
    """A JSON-safe number (NaN/inf → None)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _utc(t: str) -> datetime:
    return datetime.fromisoformat(t.removesuffix("Z")).replace(tzinfo=timezone.utc)


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def coincidence_id(kind: str, first: str, second: str) -> str:
    """The stable id (and Kafka key) of a coincidence: ``<kind>:<group key>+<group key>``.

    The trigger's group comes first (GW, then GRB), so the id does not depend on which
    member arrived first, and a replay or a new revision gives the same id.
    """
    return f"{kind}:{first}+{second}"


def may_embed_map(event: Event) -> bool:
    """Whether the Event's raw alert may hold a sky map (so it must be read to decode it):
    a HEALPix localization, or an IGWN/GCN alert in JSON or Avro (``healpix_file``)."""
    if isinstance(event.localization, HealpixLocalization):
        return True
    return event.source in _MAP_SOURCES and event.format in ("json", "avro") and not event.is_retraction


# ------------------------------------------------------------------ the stage
class EnrichHandler(BaseStage):
    """The enrich stage's part of the loop (see the module docstring).

    Parameters
    ----------
    localizations : LocalizationStore-like
        ``put``, ``load``, ``events_in_region``.
    groups : GroupStore-like
        ``add``, ``in_time_window``.
    archive : Archive-like
        ``raw(event_id)`` (raw alert bytes) and ``get(event_id)`` (``.event``).
    settings : broker.enrich.config.EnrichSettings
    enriched_topic, coincidences_topic : str
    provenance : Provenance
    catalogs : CatalogCache-like, optional
        ``catalogs()`` → list of :class:`CatalogArrays`, ``labels(cat, rows)``.
    index_positions : callable, optional
        ``events → int``: record point positions with their time
        (:func:`broker.enrich.store.index_positions` bound to the engine); used when
        ``write_batch`` is not given.
    write_batch : callable, optional
        ``(events, crossmatch_rows) → None``: the batch's durable write in one
        transaction, point positions and cross-match rows
        (:func:`broker.enrich.matchstore.write_enrichment` bound to the engine).
    extract : callable, optional
        ``(event, raw) → Sky | None`` (default
        :func:`broker.enrich.localization.extract_localization`).
    fetch : callable, optional
        ``event → MultiOrderSkyMap | None``: the map of an Event that gives it only by
        URL, used when ``settings.fetch_skymap_urls`` (default
        :func:`broker.enrich.localization.fetch_localization` with the settings' timeout,
        size limit and schemes).
    codec : EventCodec, optional
    cross_lane : bool
        ``[lanes]`` are configured: another loop may find the same trigger–optical pair
        from the other side, so the ``computed_from`` of a ``gw-optical`` /
        ``grb-optical`` record names the pair's member archived last (not the Event
        handled), the same from both loops: the outbox key derived from it
        (``hermes:coincidence:<id>:<computed_from>``) makes one message of the pair.
    recheck_optical : bool
        This loop takes ZTF Events while GW/GRB Events are another loop's: after its
        batch's candidates are stored (:meth:`write`), it asks once more for GW/GRB
        groups in their time window and adds the coincidences with the groups that
        appeared since the candidates were handled (see :meth:`_recheck_optical`).
    claim : callable, optional
        ``claim(keys) -> set`` of the (``id``, ``computed_from``) this loop owns
        (:func:`broker.enrich.claims.claim_coincidences`): with ``[lanes]``, the batch's
        trigger–optical records another loop claimed first are not published by this
        one (:meth:`_keep_claimed`), so a pair both lanes found is on
        ``mma.coincidences`` once. None: every record is published. Ignored when
        ``store_coincidences`` is given (it claims).
    store_coincidences : callable, optional
        ``store_coincidences(records) -> set`` of the (``id``, ``computed_from``) this loop
        owns (:func:`broker.enrich.coincidence_store.write_coincidences` bound to the
        engine and, with ``[lanes]``, the loop's name): in one transaction it claims the
        trigger–optical versions and writes table ``coincidences`` (one row per version
        this loop owns, ``ON CONFLICT DO NOTHING``), before the Kafka transaction
        (:meth:`_keep_claimed`). Called only for batches with coincidence records.
    """

    name = "enrich"

    def __init__(self, *, localizations: Localizations, groups: Groups, archive: ArchiveReader, settings: Any,
                 enriched_topic: str, coincidences_topic: str, provenance: Provenance, catalogs: Any = None,
                 index_positions: Callable[[Sequence[Event]], int] | None = None,
                 write_batch: Callable[[Sequence[Event], Sequence[dict[str, Any]]], Any] | None = None,
                 extract: Callable[[Event, bytes], Any] | None = None,
                 fetch: Callable[[Event], Any] | None = None, codec: EventCodec | None = None,
                 cross_lane: bool = False, recheck_optical: bool = False,
                 claim: Callable[[Sequence[tuple[str, str]]], set[tuple[str, str]]] | None = None,
                 store_coincidences: Callable[[Sequence[dict[str, Any]]], set[tuple[str, str]]] | None = None
                 ) -> None:
        if extract is None:
            from broker.enrich.localization import extract_localization as extract
        self.localizations, self.groups, self.archive, self.settings = localizations, groups, archive, settings
        self.enriched_topic, self.coincidences_topic, self.provenance = enriched_topic, coincidences_topic, provenance
        self.catalogs, self.index_positions, self.extract = catalogs, index_positions, extract
        self.write_batch = write_batch
        if fetch is None:
            from broker.enrich.localization import fetch_localization

            fetch = functools.partial(fetch_localization, timeout_s=settings.skymap_url_timeout_s,
                                      max_bytes=settings.skymap_url_max_bytes,
                                      schemes=tuple(settings.skymap_url_schemes))
        self.fetch = fetch
        self.cross_lane, self.recheck_optical = cross_lane or recheck_optical, recheck_optical
        self.claim, self.store_coincidences = claim, store_coincidences
        self._ingested = _Lru(4096)
        self._looked_at: set[str] | None = None
        self.codec = codec or EventCodec()
        self.coinc = settings.coincidences
        self.stats = EnrichStats()
        self._skies = _Lru(64)
        self._events = _Lru(4096)
        self._pending: list[Event] = []  # this batch's point Events, indexed in write()
        self._triggers: dict[int, list[Any]] = {}  # hour → GW/GRB groups before it (this batch only)
        # ZTF/LSST points: localizations and group adds held until write() (put_many, add_many)
        self._held_groups = self._held_locs = None
        if hasattr(localizations, "put_many") and hasattr(localizations, "point_ref") and hasattr(groups, "add_many"):
            from broker.enrich.groups import GroupBatch

            self._held_groups, self._held_locs = GroupBatch(groups), []

    # ------------------------------------------------------------ one message
    def handle(self, msg: Any) -> Handled:
        """Enrich one ``mma.events`` record.

        Raises
        ------
        DecodeError
            The record is not an Event (it becomes a dead letter).
        """
        try:
            event, _ = self.codec.decode(msg.value() or b"")
        except (DecodeError, ValueError) as exc:
            raise DecodeError(f"enrich: {one_line(str(exc), 300)}") from None
        self._events[event.id] = event
        error = None
        sky = ref = None
        raw_read = fetched_map = False
        try:
            raw, source = b"", event
            if may_embed_map(event):
                # decode with the archived Event: its raw bytes are those of the form archived
                # first (an LVK alert's JSON and Avro forms share one Event id)
                rec = self.archive.get(event.id)
                source = rec.event if rec is not None else event
                raw = self.archive.raw(event.id)
                raw_read = True
            sky = self.extract(source, raw)
        except DecodeError as exc:
            error = f"localization not decoded: {one_line(str(exc), 400)}"
        except KeyError as exc:
            error = f"localization not decoded: raw alert not in the archive ({one_line(str(exc), 200)})"
        except BrokerError as exc:  # RawStoreError: raw bytes missing or corrupt
            error = f"localization not decoded: {type(exc).__name__}: {one_line(str(exc), 300)}"
        if error is None and not hasattr(sky, "uniq") and self._wants_url_map(event):  # no map, or a point only
            from broker.enrich.localization import SkymapUnreachable

            try:
                fetched = self.fetch(event)
            except SkymapUnreachable as exc:
                error = f"sky map URL not reachable: {one_line(str(exc), 400)}"
            except DecodeError as exc:
                error = f"localization not decoded: {one_line(str(exc), 400)}"
            else:
                if fetched is not None:
                    sky, fetched_map = fetched, True
        held = self._held_locs is not None and sky is not None and _held_point(event, sky)
        if not held:
            self._write_held()  # what this Event reads (groups, positions) includes the batch so far
        if held:
            ref = self.localizations.point_ref(sky)
            self._held_locs.append((event.id, sky))
        elif sky is not None:
            try:
                ref = self.localizations.put(event.id, sky)
            except BrokerError as exc:  # LocalizationError: a map that cannot be stored
                if not _is_infrastructure(exc):
                    error = f"localization not stored: {one_line(str(exc), 400)}"
                    sky = None
                else:
                    raise
        point = isinstance(event.localization, PointLocalization)
        if point:
            self._pending.append(event)
        state = self._held_groups.add(event, ref) if held else self.groups.add(event, ref)
        if getattr(state, "category", None) in ("gw", "grb"):
            self._triggers.clear()
        note = _Note(event=event, error=error, raw_read=raw_read, localized=ref is not None, fetched=fetched_map)
        enrichment: dict[str, Any] = {"localization": None, "group": self._group_json(event, state)}
        if ref is not None:
            enrichment["localization"] = ref.to_json_dict() | {"from_event": event.id}
        match_sky = sky
        if sky is None and state.best_localization is not None and not event.is_retraction:
            match_ref = state.best_localization
            match_sky = self._sky(match_ref.id)
            enrichment["localization"] = match_ref.to_json_dict() | {"from_event": None, "from_group": state.key}
        enrichment["crossmatch"] = self._crossmatch(event, match_sky, note) if match_sky is not None else {}
        self._looked_at = note.triggers if self.recheck_optical else None
        try:
            coincidences = self._coincidences(event, sky, ref, state)
        finally:
            self._looked_at = None
        enrichment["coincidences"] = [c["id"] for c in coincidences]
        # the records themselves (as on mma.coincidences, less their provenance), so a
        # filter can cut on the joint FAR or see `coincident: false` / `retracted`
        enrichment["coincidence_records"] = [{k: v for k, v in c.items() if k != "provenance"}
                                             for c in coincidences]
        enrichment["error"] = error
        enrichment["provenance"] = self.provenance.__dict__
        outputs = [self._enriched_record(event, enrichment)]
        for c in coincidences:
            outputs.append(self._coincidence_record(c))
            note.coincidences.append((c["kind"], c["retracted"]))
        if self.recheck_optical and not event.is_retraction:
            from broker.enrich.groups import category_of

            if category_of(event) == "optical":
                note.state = state
        from broker.enrich.matchstore import crossmatch_rows

        loc = enrichment["localization"]
        rows = crossmatch_rows(event.id, enrichment["crossmatch"], loc["id"] if loc else None)
        # a message with coincidence records has a durable write too: write() claims and stores them
        todo = _Write([event] if point else [], rows) if point or rows or coincidences else None
        return Handled(msg, outputs, write=todo, info=note)

    def _wants_url_map(self, event: Event) -> bool:
        """Whether to download the Event's sky map from its URL: ``fetch_skymap_urls`` on,
        not a retraction, a URL given, and no sky map in its group yet (an LVK VOEvent's
        JSON form embeds the same map)."""
        if not getattr(self.settings, "fetch_skymap_urls", False) or event.is_retraction:
            return False
        from broker.enrich.localization import skymap_url_of

        if skymap_url_of(event) is None:
            return False
        get = getattr(self.groups, "get", None)
        if get is not None:
            from broker.enrich.groups import group_key

            self._write_held()  # the group read sees the batch so far
            state = get(group_key(event))
            best = getattr(state, "best_localization", None)
            if best is not None and best.kind == "skymap":
                return False
        return True

    def write(self, batch: list[Handled]) -> None:
        """Write the batch durably (idempotent): first the held ZTF/LSST points and group
        adds (:meth:`_write_held`, one transaction each), then in one transaction the
        positions of its point Events and its cross-match results (table
        ``event_crossmatches``), with ``write_batch``; without it, the positions alone
        with ``index_positions``. With ``recheck_optical``, then :meth:`_recheck_optical`.
        Last, the batch's coincidence records: claimed and stored (``store_coincidences``)
        or claimed (``claim``), see :meth:`_keep_claimed`."""
        self._write_held()
        events = [e for h in batch if h.write is not None for e in h.write.events]
        rows = [r for h in batch if h.write is not None for r in h.write.crossmatch]
        if self.write_batch is not None:
            if events or rows:
                self.write_batch(events, rows)
        elif events and self.index_positions is not None:
            self.index_positions(events)
        if self.recheck_optical and self.settings.optical:
            self._recheck_optical(batch)
        if self.store_coincidences is not None or self.claim is not None:
            self._keep_claimed(batch)

    def _keep_claimed(self, batch: list[Handled]) -> None:
        """Store the batch's coincidence records; drop the trigger–optical ones another lane owns.

        Both lanes may find a pair (see :meth:`_recheck_optical`) and build the same
        record; the claim (:func:`broker.enrich.coincidence_store.write_coincidences` or
        :func:`broker.enrich.claims.claim_coincidences`, committed before this loop's
        Kafka transaction) says which loop publishes each version, so
        ``mma.coincidences`` carries it once. The Events' enriched records still list it.
        With ``store_coincidences`` the same transaction writes the rows of table
        ``coincidences`` of the versions this loop owns; a batch without coincidence
        records costs no query.
        """
        found: list[tuple[Handled, Outgoing, tuple[str, str], tuple[str, bool]]] = []
        docs: list[dict[str, Any]] = []
        for h in batch:
            for rec in h.outputs:
                if rec.topic != self.coincidences_topic:
                    continue
                c = json.loads(rec.value)
                if self.store_coincidences is not None:
                    docs.append(c)
                if c["kind"] in CROSS_LANE_KINDS:
                    found.append((h, rec, (c["id"], c["computed_from"]), (c["kind"], c["retracted"])))
        if self.store_coincidences is not None:
            if not docs:
                return
            mine = self.store_coincidences(docs)
        elif not found:
            return
        else:
            mine = self.claim([key for _, _, key, _ in found])
        for h, rec, key, note in found:
            if key in mine:
                continue
            h.outputs.remove(rec)
            info = h.info
            if note in getattr(info, "coincidences", ()):
                info.coincidences.remove(note)
                info.left_to_other_lane += 1

    def _recheck_optical(self, batch: list[Handled]) -> None:
        """Coincidences of the batch's optical candidates with GW/GRB groups stored by
        another lane while the batch was handled.

        The other lane stores a trigger's group, then looks for candidates in its region
        (:meth:`_optical_for`); this loop looks for triggers when it handles a candidate
        (:meth:`_optical_side`) but stores the candidate's position only here. A trigger
        stored between the two was seen by neither. Asked again after the positions are
        committed, either this query sees the trigger, or the trigger was stored after
        it and so the other lane's region query (after its store) sees the candidate:
        one of the two loops finds each pair (both may; ``cross_lane`` makes them write
        the same record). One query per hour of candidate time; the records are added to
        the candidate's outputs and listed in its ``mma.events.enriched`` record
        (``enrichment.coincidences``, ``coincidence_records``), as when found at once.
        """
        self._triggers.clear()
        states: dict[str, Any] = {}
        get = getattr(self.groups, "get", None)
        for h in batch:
            note = h.info
            state = getattr(note, "state", None)
            if state is None:
                continue
            retracted = self._retracted_since(h, states, get) if get is not None else {}
            found = self._optical_side(note.event, state, skip=note.triggers)
            for doc in found:
                note.triggers.add(doc["members"][0]["group"])
                h.outputs.append(self._coincidence_record(doc))
                note.coincidences.append((doc["kind"], doc["retracted"]))
            if found or retracted:  # the candidate's enriched record says so, as when found at once
                for rec in h.outputs:
                    if rec.topic == self.enriched_topic:
                        doc = json.loads(rec.value)
                        enr = doc["enrichment"]
                        enr["coincidence_records"] = [retracted.get(r["id"], r) for r in enr["coincidence_records"]]
                        enr["coincidences"] += [c["id"] for c in found]
                        enr["coincidence_records"] += [{k: v for k, v in c.items() if k != "provenance"}
                                                       for c in found]
                        rec.value = json.dumps(doc, allow_nan=False, default=str).encode()
        self._triggers.clear()

    def _retracted_since(self, h: Handled, states: dict[str, Any], get: Callable[[str], Any]) -> dict[str, Any]:
        """The candidate's trigger–optical records whose trigger was retracted by another
        lane after the candidate was handled: made ``retracted`` (by the retraction, as
        the trigger's lane makes them) in place. Either the retraction is stored before
        this read, or the retraction's own region query comes after the candidate's
        position was stored and marks the pair itself. Returns id → record as listed in
        the enriched record (no provenance)."""
        out: dict[str, Any] = {}
        for rec in h.outputs:
            if rec.topic != self.coincidences_topic:
                continue
            c = json.loads(rec.value)
            if c["kind"] not in ("gw-optical", "grb-optical") or c["retracted"]:
                continue
            key = c["members"][0]["group"]
            if key not in states:
                states[key] = get(key)
            g = states[key]
            if g is None or not g.retracted:
                continue
            by = next((eid for eid in reversed(list(g.revisions))
                       if (ev := self._event(eid)) is not None and ev.is_retraction), g.latest)
            c["retracted"] = True
            c["retracted_by"] = c["computed_from"] = by
            rec.value = json.dumps(c, sort_keys=True, allow_nan=False).encode()
            out[c["id"]] = {k: v for k, v in c.items() if k != "provenance"}
        return out

    def _coincidence_record(self, c: dict[str, Any]) -> Outgoing:
        value = json.dumps(c, sort_keys=True, allow_nan=False).encode()
        return Outgoing(self.coincidences_topic, c["id"].encode(), value,
                        [("content-type", CONTENT_TYPE.encode()), ("mma.coincidence.id", c["id"].encode()),
                         ("mma.coincidence.kind", c["kind"].encode())])

    def _archived_last(self, a: Event, b: Event) -> Event:
        """Of two Events, the one archived last (``ingested_at``, then id): the same
        answer in every loop."""
        def order(ev: Event) -> tuple[str, str]:
            def load() -> str:
                rec = self.archive.get(ev.id)
                t = getattr(rec, "ingested_at", None)
                return "" if t is None else t.isoformat()

            return self._ingested.fetch(ev.id, load), ev.id

        return max((a, b), key=order)

    def _write_held(self) -> None:
        """Store the held point localizations and group adds, each in one transaction
        (:meth:`~broker.enrich.store.LocalizationStore.put_many`,
        :meth:`~broker.enrich.groups.GroupBatch.flush`); idempotent."""
        if self._held_locs:
            self.localizations.put_many(self._held_locs)  # type: ignore[attr-defined]
            self._held_locs.clear()
        if self._held_groups is not None and len(self._held_groups):
            self._held_groups.flush()

    def on_retry(self) -> None:
        """The batch is over (or will be handled again): forget its pending positions and windows."""
        self._pending.clear()
        if self._held_groups is not None:
            self._held_locs.clear()
            self._held_groups.clear()
        self._triggers.clear()

    def committed(self, batch: list[Handled], dead: list[tuple[Any, str]]) -> None:
        self.on_retry()
        st = self.stats
        for h in batch:
            n: _Note = h.info
            st.events += 1
            st.localized += n.localized
            st.bad_localizations += n.error is not None
            st.raw_reads += n.raw_read
            st.fetched_maps += n.fetched
            st.matches += n.matches
            for kind, retracted in n.coincidences:
                st.coincidences[kind] += 1
                st.retracted_coincidences += retracted
            st.left_to_other_lane += n.left_to_other_lane
        st.dead_letters += len(dead)

    # ------------------------------------------------------------ records
    def _enriched_record(self, event: Event, enrichment: dict[str, Any]) -> Outgoing:
        doc = {"schema": ENRICHED_SCHEMA, **event.to_json_dict(), "enrichment": enrichment}
        return Outgoing(self.enriched_topic, event.upstream_id.encode(),
                        json.dumps(doc, allow_nan=False, default=str).encode(),
                        [("content-type", CONTENT_TYPE.encode()), ("mma.event.id", event.id.encode())])

    @staticmethod
    def _group_json(event: Event, state: Any) -> dict[str, Any]:
        revisions = list(state.revisions)
        best = state.best_localization
        return {"key": state.key, "category": getattr(state, "category", None),
                "revision": revisions.index(event.id) + 1 if event.id in revisions else None,
                "n_revisions": len(revisions), "latest": state.latest, "retracted": state.retracted, "t0": state.t0,
                "best_localization": None if best is None else best.id}

    # ------------------------------------------------------------ cross-match
    def _crossmatch(self, event: Event, sky: Any, note: "_Note") -> dict[str, Any]:
        if self.catalogs is None:
            return {}
        cats = self.catalogs.catalogs()
        if not cats:
            return {}
        from broker.skymap import MultiOrderSkyMap

        s = self.settings
        out: dict[str, Any] = {}
        if isinstance(sky, MultiOrderSkyMap):
            from broker.enrich.crossmatch import crossmatch_skymap, prepare

            try:
                prep = prepare(sky)
            except DecodeError as exc:
                return {"error": one_line(str(exc), 300)}
            for cat in cats:
                m = crossmatch_skymap(prep, cat.ra_deg, cat.dec_deg, cat.dist_mpc)
                ranked = m.ranked(s.crossmatch_level)
                best = ranked[: s.top_n]
                labels = self.catalogs.labels(cat, cat.rows[best]) if best.size else {}
                three_d = m.searched_prob_vol is not None
                matches = []
                for i in best.tolist():
                    row = int(cat.rows[i])
                    item = {"row": row, "name": labels.get(row), "ra_deg": float(cat.ra_deg[i]),
                            "dec_deg": float(cat.dec_deg[i]),
                            "dist_mpc": None if cat.dist_mpc is None else _num(cat.dist_mpc[i]),
                            "searched_prob": _num(m.searched_prob[i]),
                            "searched_area_deg2": _num(m.searched_area_deg2[i]),
                            "probdensity_per_deg2": _num(m.probdensity_per_deg2[i])}
                    if three_d:
                        item["searched_prob_vol"] = _num(m.searched_prob_vol[i])
                        item["probdensity_vol_per_mpc3"] = _num(m.probdensity_vol_per_mpc3[i])
                    matches.append(item)
                out[cat.name] = {"kind": "skymap", "level": s.crossmatch_level, "three_d": three_d,
                                 "n_inside": int(ranked.size), "matches": matches}
                note.matches += int(ranked.size)
            return out
        loc = event.localization
        if not isinstance(loc, PointLocalization):
            from broker.event import PointLocalization as P

            loc = P(ra=sky.ra_deg, dec=sky.dec_deg, error_radius=getattr(sky, "error_radius_deg", None),
                    containment=getattr(sky, "containment", None))
        for cat in cats:
            m = crossmatch_point_fast(loc, cat, s.point_containment)
            best = m.rows[: s.top_n]
            labels = self.catalogs.labels(cat, cat.rows[best]) if best.size else {}
            matches = [{"row": int(cat.rows[i]), "name": labels.get(int(cat.rows[i])),
                        "ra_deg": float(cat.ra_deg[i]), "dec_deg": float(cat.dec_deg[i]),
                        "separation_deg": float(sep), "radius_deg": float(r)}
                       for i, sep, r in zip(best.tolist(), m.separation_deg, m.radius_deg)]
            nearest = None
            if m.nearest_row is not None:
                nearest = {"row": int(cat.rows[m.nearest_row]), "separation_deg": m.nearest_separation_deg}
            out[cat.name] = {"kind": "point", "containment": s.point_containment, "n_matched": int(m.rows.size),
                             "matches": matches, "nearest": nearest}
            note.matches += int(m.rows.size)
        return out

    # ------------------------------------------------------------ coincidences
    def _sky(self, ref_id: str | None) -> Any:
        if ref_id is None:
            return None
        return self._skies.fetch(ref_id, lambda: self.localizations.load(ref_id))

    def _event(self, event_id: str) -> Event | None:
        def load() -> Event | None:
            rec = self.archive.get(event_id)
            return None if rec is None else rec.event

        ev = self._events.fetch(event_id, load)
        if ev is None:
            self._events.pop(event_id, None)
        return ev

    def _current(self, state: Any, event: Event | None = None) -> Event | None:
        """The group's latest revision that is not a retraction (its Event)."""
        for eid in reversed(list(state.revisions)):
            ev = event if event is not None and eid == event.id else self._event(eid)
            if ev is not None and not ev.is_retraction:
                return ev
        return None

    def _group_sky(self, state: Any, own: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
        """(sky, ref) of the group's best localization (the current Event's own when it is that one)."""
        best = state.best_localization
        if best is None:
            return None, None
        if own is not None and own[1] is not None and own[1].id == best.id:
            return own[0], best
        return self._sky(best.id), best

    def _coincidences(self, event: Event, sky: Any, ref: Any, state: Any) -> list[dict[str, Any]]:
        from broker.enrich.groups import category_of

        cat = category_of(event)
        if cat not in ("gw", "grb", "neutrino", "optical"):
            return []
        retraction = event.is_retraction
        if state.retracted and not retraction:
            return []  # a revision arriving after its group's retraction
        if retraction:
            current = self._current(state)
            if current is None:
                return []
            own = None
        else:
            current, own = event, (sky, ref)
        group_sky, group_ref = self._group_sky(state, own)
        out: list[dict[str, Any]] = []
        if cat == "gw":
            out += self._gw_side(current, state, group_sky, group_ref)
        elif cat == "grb":
            out += self._grb_side(current, state, group_sky, group_ref)
        elif cat == "neutrino":
            out += self._neutrino_side(current, state)
        elif cat == "optical" and not retraction and self.settings.optical:
            out += self._optical_side(current, state)
        if retraction:
            for c in out:
                c["retracted"] = True
                c["retracted_by"] = c["computed_from"] = event.id
        return out

    def _member(self, role: str, ev: Event, state: Any, ref: Any) -> dict[str, Any]:
        return {"role": role, "group": state.key, "event_id": ev.id, "source": ev.source, "mission": ev.mission,
                "upstream_id": ev.upstream_id, "t0": ev.time, "n_revisions": len(state.revisions),
                "localization": None if ref is None else ref.id}

    def _doc(self, kind: str, members: list[dict[str, Any]], fields: dict[str, Any], cause: Event) -> dict[str, Any]:
        return {"schema": COINCIDENCE_SCHEMA, "id": coincidence_id(kind, members[0]["group"], members[1]["group"]),
                "kind": kind, "members": members, "coincident": True, **fields, "retracted": False,
                "retracted_by": None,
                "computed_from": cause.id, "provenance": self.provenance.__dict__}

    def _windowed(self, t0: str, lo: float, hi: float, categories: list[str]) -> list[Any]:
        return [g for g in self.groups.in_time_window(t0, lo, hi, categories=categories) if not g.retracted]

    def _gw_grb(self, gw: Event, gw_state: Any, gw_sky: Any, gw_ref: Any, ext: Event, ext_state: Any,
                ext_sky: Any, ext_ref: Any, cause: Event, was: str | None = None) -> dict[str, Any] | None:
        """The record of a GW–GRB pair: when coincident, or when ``was`` (the revision
        with which it was coincident) says an earlier record must be superseded by a
        ``coincident: false`` one."""
        from broker.enrich.coinc import CoincidenceError, gw_grb_coincidence

        try:
            c = gw_grb_coincidence(gw, ext, gw_sky, ext_sky, settings=self.coinc)
        except CoincidenceError as exc:
            log.warning("enrich: coincidence %s / %s not computed: %s", gw.id, ext.id, exc)
            return None
        if not c.coincident and was is None:
            return None
        fields = c.to_json_dict()
        for k in ("gw_id", "ext_id"):
            fields.pop(k, None)
        if not c.coincident:
            fields["notes"] = list(fields["notes"]) + [
                f"no longer coincident: dt = {c.dt_s:g} s is outside [{c.window_s[0]:g}, {c.window_s[1]:g}] s "
                f"with the latest revisions; it was coincident with {was}"]
        return self._doc("gw-grb", [self._member("gw", gw, gw_state, gw_ref), self._member("grb", ext, ext_state, ext_ref)],
                         fields, cause)

    def _earlier(self, state: Any, current: Event) -> list[Event]:
        """The group's other revisions that are not retractions (Events), in arrival order."""
        out = []
        for eid in state.revisions:
            if eid != current.id:
                ev = self._event(eid)
                if ev is not None and not ev.is_retraction:
                    out.append(ev)
        return out

    def _gw_side(self, gw: Event, state: Any, gw_sky: Any, gw_ref: Any) -> list[dict[str, Any]]:
        from broker.enrich.coinc import gw_neutrino_coincidences, search_of, seconds_between

        c = self.coinc
        out = []
        lo, hi = c.window_s(search_of(gw))
        seen = set()
        for g in self._windowed(gw.time, lo, hi, ["grb"]):
            seen.add(g.key)
            ext = self._current(g)
            if ext is None:
                continue
            ext_sky, ext_ref = self._group_sky(g)
            doc = self._gw_grb(gw, state, gw_sky, gw_ref, ext, g, ext_sky, ext_ref, gw)
            if doc is not None:
                out.append(doc)
        # a GRB coincident with an earlier revision (another T0 or search) but not with this one
        for old in self._earlier(state, gw):
            olo, ohi = c.window_s(search_of(old))
            if (old.time, olo, ohi) == (gw.time, lo, hi):
                continue
            for g in self._windowed(old.time, olo, ohi, ["grb"]):
                if g.key in seen:
                    continue
                seen.add(g.key)
                ext = self._current(g)
                if ext is None or not olo <= seconds_between(old.time, ext.time) <= ohi:
                    continue
                ext_sky, ext_ref = self._group_sky(g)
                doc = self._gw_grb(gw, state, gw_sky, gw_ref, ext, g, ext_sky, ext_ref, gw, was=old.id)
                if doc is not None:
                    out.append(doc)
        out += self._neutrinos_for(gw, state, gw_sky, gw_ref, self._windowed(gw.time, *c.neutrino_window_s, ["neutrino"]),
                                   gw, gw_neutrino_coincidences)
        if self.settings.optical and gw_ref is not None:
            out += self._optical_for("gw-optical", gw, state, gw_sky, gw_ref)
        return out

    def _grb_side(self, grb: Event, state: Any, grb_sky: Any, grb_ref: Any) -> list[dict[str, Any]]:
        from broker.enrich.coinc import search_of, seconds_between

        c = self.coinc
        lo = min(c.cbc_window_s[0], c.burst_window_s[0])
        hi = max(c.cbc_window_s[1], c.burst_window_s[1])
        earlier = self._earlier(state, grb)
        groups: dict[str, Any] = {}
        for t in [grb.time] + [e.time for e in earlier]:
            for g in self._windowed(t, -hi, -lo, ["gw"]):  # dt = t_grb − t_gw in [lo, hi]
                groups.setdefault(g.key, g)
        out = []
        for g in groups.values():
            gw = self._current(g)
            if gw is None:
                continue
            wlo, whi = c.window_s(search_of(gw))
            was = next((e.id for e in earlier if wlo <= seconds_between(gw.time, e.time) <= whi), None)
            gw_sky, gw_ref = self._group_sky(g)
            doc = self._gw_grb(gw, g, gw_sky, gw_ref, grb, state, grb_sky, grb_ref, grb, was=was)
            if doc is not None:
                out.append(doc)
        if self.settings.optical and grb_ref is not None:
            out += self._optical_for("grb-optical", grb, state, grb_sky, grb_ref)
        return out

    def _neutrinos_for(self, gw: Event, gw_state: Any, gw_sky: Any, gw_ref: Any, nu_groups: list[Any], cause: Event,
                       fn: Callable[..., Any]) -> list[dict[str, Any]]:
        from broker.skymap import MultiOrderSkyMap

        currents = [(g, self._current(g)) for g in nu_groups]
        by_id = {ev.id: (g, ev) for g, ev in currents if ev is not None}
        if not by_id:
            return []
        found = fn(gw, [ev for _, ev in by_id.values()], gw_sky if isinstance(gw_sky, MultiOrderSkyMap) else None,
                   settings=self.coinc)
        out = []
        for nc in found:
            g, ev = by_id[nc.event_id]
            fields = {"stream": nc.stream, "dt_s": nc.dt_s, "window_s": list(self.coinc.neutrino_window_s),
                      "overlap_integral": _num(nc.overlap_integral), "credible_level": _num(nc.credible_level)}
            out.append(self._doc("gw-neutrino", [self._member("gw", gw, gw_state, gw_ref),
                                                 self._member("neutrino", ev, g, None)], fields, cause))
        return out

    def _neutrino_side(self, nu: Event, state: Any) -> list[dict[str, Any]]:
        from broker.enrich.coinc import gw_neutrino_coincidences

        lo, hi = self.coinc.neutrino_window_s
        out = []
        for g in self._windowed(nu.time, -hi, -lo, ["gw"]):
            gw = self._current(g)
            if gw is None:
                continue
            gw_sky, gw_ref = self._group_sky(g)
            out += self._neutrinos_for(gw, g, gw_sky, gw_ref, [state], nu, gw_neutrino_coincidences)
        return out

    def _optical_doc(self, kind: str, trigger: Event, t_state: Any, t_ref: Any, cand: Event, c_state: Any,
                     v: Any, cause: Event) -> dict[str, Any]:
        fields = {"object_id": v.object_id, "dt_days": v.dt_days, "credible_level": _num(v.credible_level),
                  "separation_deg": _num(v.separation_deg), "level": self.coinc.optical_level,
                  "history_checked": v.history_checked, "reason": v.reason}
        role = "gw" if kind == "gw-optical" else "grb"
        doc = self._doc(kind, [self._member(role, trigger, t_state, t_ref),
                               self._member("optical", cand, c_state, None)], fields, cause)
        if self.cross_lane:
            doc["computed_from"] = self._archived_last(trigger, cand).id
        return doc

    def _verdict(self, trigger: Event, trigger_sky: Any, cand: Event) -> Any:
        """:func:`optical_verdict`, with the candidate's history read from its raw alert
        when the position and time alone accept it."""
        from broker.enrich.coinc import optical_verdict
        from broker.skymap import MultiOrderSkyMap

        tsky = trigger_sky if isinstance(trigger_sky, MultiOrderSkyMap) else None
        v = optical_verdict(trigger, tsky, cand, settings=self.coinc)
        if not v.accepted:
            return v
        prv = self._history(cand)
        return v if prv is None else optical_verdict(trigger, tsky, cand, prv, settings=self.coinc)

    def _history(self, cand: Event) -> list[dict[str, Any]] | None:
        """A ZTF candidate's ``prv_candidates`` from its raw alert; None when unreadable."""
        if cand.source != "ztf":
            return None
        try:
            from broker.sources import ztf
            from broker.sources.avro import read_header

            raw = self.archive.raw(cand.id)
            return ztf.decode_history(raw, read_header(raw), cand.properties.get("candid"))["prv_candidates"]
        except (KeyError, BrokerError) as exc:  # the history refines the verdict; without it, history_checked=false
            log.debug("enrich: history of %s not read: %s", cand.id, exc)
            return None

    def _optical_for(self, kind: str, trigger: Event, state: Any, sky: Any, ref: Any) -> list[dict[str, Any]]:
        c = self.coinc
        t0 = _utc(trigger.time)
        ids = self.localizations.events_in_region(ref.id, c.optical_level, sources=["ztf"], since=_iso(t0),
                                                  until=_iso(t0 + timedelta(days=c.optical_days)),
                                                  limit=self.settings.max_optical_candidates)
        lo, hi = _iso(t0), _iso(t0 + timedelta(days=c.optical_days))
        # candidates of this batch are indexed only in write(): the verdict checks their region
        ids += [e.id for e in self._pending if e.source == "ztf" and e.id not in ids and lo <= e.time < hi]
        out = []
        from broker.enrich.groups import group_key

        for eid in ids:
            cand = self._event(eid)
            if cand is None:
                continue
            v = self._verdict(trigger, sky, cand)
            if v.accepted:
                cstate = _KeyOnly(group_key(cand))
                out.append(self._optical_doc(kind, trigger, state, ref, cand, cstate, v, trigger))
        return out

    def _triggers_before(self, t: str) -> list[Any]:
        """Live GW and GRB groups with T0 in [t − optical_days, t]: one query per hour of
        candidate time and batch (a batch of ZTF alerts asks once), forgotten when this
        batch adds a GW or GRB group."""
        span = self.coinc.optical_days * 86400.0
        when = _utc(t)
        hour = int(when.timestamp() // 3600)
        if hour not in self._triggers:
            end = datetime.fromtimestamp((hour + 1) * 3600, tz=timezone.utc)
            self._triggers[hour] = self._windowed(_iso(end), -(span + 3600.0), 0.0, ["gw", "grb"])
        return [g for g in self._triggers[hour] if 0.0 <= (when - _utc(g.t0)).total_seconds() <= span]

    def _optical_side(self, cand: Event, state: Any, skip: set[str] | None = None) -> list[dict[str, Any]]:
        out = []
        note = self._looked_at if skip is None else None
        for g in self._triggers_before(cand.time):
            if note is not None:
                note.add(g.key)
            if g.best_localization is None or (skip is not None and g.key in skip):
                continue
            trigger = self._current(g)
            if trigger is None:
                continue
            tsky, tref = self._group_sky(g)
            v = self._verdict(trigger, tsky, cand)
            if v.accepted:
                kind = "gw-optical" if g.category == "gw" else "grb-optical"
                out.append(self._optical_doc(kind, trigger, g, tref, cand, state, v, cand))
        return out


@dataclass
class _KeyOnly:
    """A group known by its key only (a region candidate not re-read from the store)."""

    key: str
    revisions: tuple = ()


@dataclass
class _Write:
    """What :meth:`EnrichHandler.write` stores for one message."""

    events: list[Event]  # the Event when it has a point position to index
    crossmatch: list[dict[str, Any]]  # rows of broker.enrich.matchstore.crossmatch_rows


@dataclass
class _Note:
    event: Event
    error: str | None
    raw_read: bool
    localized: bool
    matches: int = 0
    coincidences: list[tuple[str, bool]] = field(default_factory=list)
    left_to_other_lane: int = 0
    fetched: bool = False
    state: Any = None  # the candidate's group, for _recheck_optical
    triggers: set[str] = field(default_factory=set)  # GW/GRB groups its optical side looked at


def _held_point(event: Event, sky: Any) -> bool:
    """A ZTF/LSST candidate's position: its localization and group add wait for write()."""
    from broker.enrich.localization import PointRegion

    return event.source in SURVEY_SOURCES and isinstance(sky, PointRegion) and not may_embed_map(event)


def _is_infrastructure(exc: BaseException) -> bool:
    from broker.archive.retry import is_infrastructure_error

    return is_infrastructure_error(exc)


# ------------------------------------------------------------------ factory
def stages(app: Any, *, until_caught_up: bool = False) -> list[Any]:
    """The enrich loop (``mma_broker.stages`` entry ``enrich``); empty when ``[enrich] enabled = false``.

    Reads ``mma.events`` (consumer group ``<group_id>.enrich``), writes
    ``mma.events.enriched``, ``mma.coincidences`` and ``mma.dlq`` with its own
    transactional producer; the stores are the archive's PostgreSQL.
    """
    from broker.app import open_archive, provenance
    from broker.enrich.coincidence_store import write_coincidences
    from broker.enrich.groups import GroupStore
    from broker.enrich.matchstore import write_enrichment
    from broker.enrich.store import LocalizationStore
    from broker.kafka import ensure_topics, stage_producer
    from broker.pipeline.runner import NOTICE_PATH_FILL_S, StageRunner
    from broker.stages import StageSpec

    s = app.settings
    e = s.enrich
    if not e.enabled:
        return []
    events, enriched, coincs, dlq = (s.topic(s.events_topic), s.topic(e.enriched_topic), s.topic(e.coincidences_topic),
                                     s.topic(s.dlq_topic))
    from broker.lanes import lane_clients, lanes_of

    lanes = lanes_of(s, getattr(app, "run_lanes", None))
    archive = open_archive(s)
    ensure_topics(s, [events, enriched, coincs, dlq])
    engine = archive.engine
    catalogs = CatalogCache(engine, e.catalogs)  # one copy per process, shared by its lanes
    specs = []
    for lane in lanes:
        name = lane.loop("enrich")
        consumer, slot, admin = lane_clients(s, name, events, until_caught_up=until_caught_up)
        handler = EnrichHandler(
            localizations=LocalizationStore(engine), groups=GroupStore(engine), archive=archive,
            settings=e, enriched_topic=enriched, coincidences_topic=coincs, provenance=provenance(s, "enrich"),
            catalogs=catalogs, write_batch=functools.partial(write_enrichment, engine),
            cross_lane=lane.name is not None, recheck_optical=lane.name is not None and lane.takes_survey(),
            store_coincidences=functools.partial(write_coincidences, engine,
                                                 owner=None if lane.name is None else name))
        runner = StageRunner(handler, consumer, stage_producer(s, name, slot), dlq_topic=dlq, batch_size=e.batch_size,
                             poll_timeout_s=e.poll_timeout_s, fill_s=lane.fill_s(NOTICE_PATH_FILL_S),
                             limits=s.limits, store_raw=archive.store_raw,
                             transactional=s.kafka.transactions,
                             producer_factory=functools.partial(stage_producer, s, name, slot), admin=admin,
                             subscription=[events], metrics=app.metrics.stage(name), accept=lane.accept_fn())
        specs.append(StageSpec(name, runner, inputs=[events], outputs=[enriched, coincs],
                               after=[f"ingest.{up.name}" for up in s.upstreams],
                               summary=lambda h=handler, n=name: [h.stats.summary().replace("enrich:", f"{n}:", 1)],
                               close=slot.release))
    if specs:
        last = specs[-1]
        release = last.close
        last.close = lambda: (release(), archive.close())
    else:
        archive.close()
    return specs
