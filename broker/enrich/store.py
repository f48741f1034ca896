"""Localizations stored once, as multi-order HEALPix tiles in PostgreSQL (healpix-alchemy).

The tables are migration 0005's (:func:`localization_tables`):

* ``localizations``: one row per distinct localization, keyed ``sha256:<hex>`` of its
  canonical content (:func:`content_id`), so the same map in two alerts (an LVK
  alert's JSON and Avro forms, a replay) is stored once;
* ``localization_tiles``: its tiles, one per NUNIQ pixel, as healpix-alchemy ``Tile``
  ranges ``[ipix·4^(29−order), (ipix+1)·4^(29−order))`` of nested order-29 indices,
  with ``probdensity`` (sr⁻¹), ``cum_prob`` — the greedy credible level up to and
  including the tile, pixels taken by descending density as
  ``ligo.skymap.postprocess.crossmatch`` does (Singer & Price 2016, PRD 93, 024013),
  not renormalized, exactly its ``searched_prob`` — and ``distmu``/``distsigma``/
  ``distnorm`` when the map has them;
* ``event_localizations``: Event id → localization id;
* ``event_positions``: the position of every point-localized Event and ZTF/LSST
  candidate (healpix-alchemy ``Point``), filled by :meth:`LocalizationStore.put` for
  points and by :func:`index_positions` for every Event.

A point with an error circle is stored as its error *region*: tiles of a disc
(:func:`point_tiles`) carrying a circular 2-D Gaussian (Rayleigh radial law,
``P(<θ) = 1 − exp(−θ²/2σ²)``, σ from the radius and its containment; unknown
containment taken as 0.9) whose ``cum_prob`` is that law at the tile centre, so the
level-``p`` region of a point is the disc of radius
:func:`broker.enrich.coinc.radius_at_level` and "events in the 90 % region" means
the same thing for a map and for a GRB error circle.

:meth:`LocalizationStore.events_in_region` is one SQL query: the tiles with
``cum_prob <= level`` merged into disjoint ranges (healpix-alchemy ``func.union``:
``unnest(range_agg(hpx))``) joined with ``event_positions.hpx`` on its B-tree index.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

import numpy as np
import sqlalchemy as sa
from healpix_alchemy import Point, Tile
from sqlalchemy.dialects.postgresql import JSONB, insert as pg_insert

from broker.enrich.moc import ORDER29
from broker.errors import BrokerError
from broker.skymap import SQDEG_PER_SR, MultiOrderSkyMap

__all__ = ["LocalizationRef", "LocalizationStore", "LocalizationError", "content_id", "index_positions",
           "localization_tables", "point_tiles", "DEFAULT_POINT_CONTAINMENT"]

DEFAULT_POINT_CONTAINMENT = 0.9
"""Containment taken for an error circle whose containment upstream does not state."""
POINT_COVERAGE = 0.999
"""A point's tiles cover its error disc out to this containment."""
POINT_PIXELS_ACROSS = 20
"""Pixels across the covered disc's diameter (sets a point's tile order)."""
_F8 = sa.Float(precision=53)
_DISTANCE = ("DISTMU", "DISTSIGMA", "DISTNORM")


class LocalizationError(BrokerError):
    """A localization cannot be stored or found (one line)."""


def localization_tables(metadata: sa.MetaData) -> dict[str, sa.Table]:
    """Define migration 0005's localization tables on ``metadata``.

    Returns
    -------
    dict
        ``localizations``, ``localization_tiles``, ``event_localizations``,
        ``event_positions``.
    """
    locs = sa.Table(
        "localizations", metadata,
        sa.Column("id", sa.Text, primary_key=True, comment="sha256:<hex> of the canonical content"),
        sa.Column("kind", sa.Text, nullable=False, comment="skymap | point"),
        sa.Column("n_tiles", sa.Integer, nullable=False),
        sa.Column("area_50_deg2", _F8, nullable=True),
        sa.Column("area_90_deg2", _F8, nullable=True),
        sa.Column("ra_deg", _F8, nullable=True, comment="point position, or the densest tile's centre"),
        sa.Column("dec_deg", _F8, nullable=True),
        sa.Column("error_radius_deg", _F8, nullable=True),
        sa.Column("containment", _F8, nullable=True),
        sa.Column("has_distance", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("meta", JSONB, nullable=False, comment="the map's FITS header keywords"),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    tiles = sa.Table(
        "localization_tiles", metadata,
        sa.Column("localization_id", sa.Text, sa.ForeignKey("localizations.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("hpx", Tile, primary_key=True, comment="[lo, hi) nested order-29 indices (healpix-alchemy Tile)"),
        sa.Column("probdensity", _F8, nullable=False, comment="sr^-1"),
        sa.Column("cum_prob", _F8, nullable=False, comment="greedy credible level up to and including this tile"),
        sa.Column("distmu", _F8, nullable=True, comment="Mpc"),
        sa.Column("distsigma", _F8, nullable=True, comment="Mpc"),
        sa.Column("distnorm", _F8, nullable=True, comment="Mpc^-2"),
        sa.Index("ix_localization_tiles_level", "localization_id", "cum_prob"),
        # migration 0014: "which stored maps hold this point" (hpx @> p), e.g. the web API's cone
        sa.Index("ix_localization_tiles_hpx", "hpx", postgresql_using="spgist"),
    )
    links = sa.Table(
        "event_localizations", metadata,
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("localization_id", sa.Text, sa.ForeignKey("localizations.id"), nullable=False),
        sa.Column("stored_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Index("ix_event_localizations_localization", "localization_id"),
    )
    positions = sa.Table(
        "event_positions", metadata,
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("time", sa.TIMESTAMP(timezone=True), nullable=True, comment="T0, or the first detection"),
        sa.Column("ra_deg", _F8, nullable=False),
        sa.Column("dec_deg", _F8, nullable=False),
        sa.Column("hpx", Point, nullable=False, comment="nested HEALPix index, order 29 (healpix-alchemy Point)"),
        sa.Index("ix_event_positions_hpx", "hpx"),
        sa.Index("ix_event_positions_source_time", "source", "time"),
    )
    return {"localizations": locs, "localization_tiles": tiles, "event_localizations": links,
            "event_positions": positions}


_T = localization_tables(sa.MetaData())
LOCS, TILES, LINKS, POSITIONS = (_T[k] for k in ("localizations", "localization_tiles", "event_localizations",
                                                 "event_positions"))


@dataclass(frozen=True)
class LocalizationRef:
    """A stored localization, as an Event refers to it.

    Attributes
    ----------
    id : str
        ``"sha256:<hex>"`` of the canonical tile content (:func:`content_id`); the same
        map twice gives the same id.
    kind : str
        ``"skymap"`` or ``"point"``.
    area_50_deg2, area_90_deg2 : float or None
        Areas of the 50 % and 90 % credible regions, deg² (a point: the caps of radius
        ``radius_at_level``; None for a point without an error radius).
    n_tiles : int
        Tiles stored (0 for a point without an error radius: a position, no region).
    """

    id: str
    kind: str
    area_50_deg2: float | None
    area_90_deg2: float | None
    n_tiles: int

    def to_json_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return {"id": self.id, "kind": self.kind, "area_50_deg2": self.area_50_deg2,
                "area_90_deg2": self.area_90_deg2, "n_tiles": self.n_tiles}


# ------------------------------------------------------------------ content
def _is_point(sky: Any) -> bool:
    return not isinstance(sky, MultiOrderSkyMap) and hasattr(sky, "ra_deg") and hasattr(sky, "dec_deg")


def _point_fields(sky: Any) -> tuple[float, float, float | None, float | None]:
    radius = getattr(sky, "error_radius_deg", None)
    containment = getattr(sky, "containment", None)
    return float(sky.ra_deg), float(sky.dec_deg), None if radius is None else float(radius), \
        None if containment is None else float(containment)


def content_id(sky: Any) -> str:
    """``"sha256:<hex>"`` of a localization's canonical content.

    A map: ``b"skymap\\0"``, then its NUNIQ indices (int64, little-endian) and
    probability densities (float64) sorted by NUNIQ, then each distance layer present
    (name, values in the same order). Header keywords are left out (the same tiles are
    the same localization). A point: the JSON of kind, RA, Dec, radius, containment.
    """
    h = hashlib.sha256()
    if _is_point(sky):
        ra, dec, radius, containment = _point_fields(sky)
        h.update(json.dumps({"kind": "point", "ra": ra, "dec": dec, "error_radius": radius,
                             "containment": containment}, sort_keys=True).encode())
        return "sha256:" + h.hexdigest()
    order = np.argsort(sky.uniq, kind="stable")
    h.update(b"skymap\0")
    h.update(np.ascontiguousarray(sky.uniq[order], dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(sky.probdensity[order], dtype="<f8").tobytes())
    for name in _DISTANCE:
        if name in sky.distance:
            h.update(name.encode() + b"\0")
            h.update(np.ascontiguousarray(sky.distance[name][order], dtype="<f8").tobytes())
    return "sha256:" + h.hexdigest()


def _ranges(uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile ranges ``[lo, hi)`` at order 29 and orders of NUNIQ pixels (:func:`broker.enrich.moc.nested_ranges`)."""
    from broker.enrich.moc import nested_ranges

    return nested_ranges(uniq, ORDER29)


def _uniq_of_ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """NUNIQ pixels of stored tile ranges (:func:`broker.enrich.moc.uniq_of_ranges`)."""
    from broker.enrich.moc import uniq_of_ranges

    return uniq_of_ranges(lo, hi)


def _sigma_deg(radius_deg: float, containment: float | None) -> float:
    c = containment if containment is not None and 0 < containment < 1 else DEFAULT_POINT_CONTAINMENT
    return radius_deg / math.sqrt(-2.0 * math.log1p(-c))


def _cap_deg2(radius_deg: float) -> float:
    r = math.radians(min(radius_deg, 180.0))
    return 2.0 * math.pi * (1.0 - math.cos(r)) * SQDEG_PER_SR


def _point_areas(radius_deg: float, containment: float | None) -> tuple[float, float]:
    sigma = _sigma_deg(radius_deg, containment)
    return tuple(_cap_deg2(sigma * math.sqrt(-2.0 * math.log1p(-p))) for p in (0.5, 0.9))  # type: ignore[return-value]


def point_tiles(ra_deg: float, dec_deg: float, radius_deg: float, containment: float | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tiles of a point's error region: a disc covering :data:`POINT_COVERAGE`.

    Parameters
    ----------
    ra_deg, dec_deg : float
        Position, deg.
    radius_deg : float
        Error radius, deg (> 0).
    containment : float or None
        Its containment (None: :data:`DEFAULT_POINT_CONTAINMENT`).

    Returns
    -------
    uniq : numpy.ndarray, shape (n,), int64
        NUNIQ pixels of one order (about :data:`POINT_PIXELS_ACROSS` across the disc)
        whose centres lie in the disc (the pixel holding the position always included).
    probdensity : numpy.ndarray, shape (n,)
        ``exp(−θ²/2σ²) / (2πσ²)``, sr⁻¹ (θ, σ in rad; the small-angle Gaussian).
    cum_prob : numpy.ndarray, shape (n,)
        ``1 − exp(−θ²/2σ²)``: the Rayleigh credible level at the tile centre.
    """
    import astropy.units as u
    from astropy.coordinates import Latitude, Longitude
    from astropy_healpix import HEALPix
    from astropy_healpix.core import level_ipix_to_uniq

    sigma = _sigma_deg(radius_deg, containment)
    r_max = min(sigma * math.sqrt(-2.0 * math.log1p(-POINT_COVERAGE)), 180.0)
    pixel = 2.0 * r_max / POINT_PIXELS_ACROSS
    level = int(np.clip(math.ceil(math.log2(math.degrees(math.sqrt(math.pi / 3.0)) / pixel)), 0, ORDER29))
    hp = HEALPix(nside=1 << level, order="nested")
    lon, lat = Longitude(ra_deg * u.deg), Latitude(dec_deg * u.deg)
    ipix = np.asarray(hp.cone_search_lonlat(lon, lat, radius=r_max * u.deg), dtype=np.int64)
    ipix = np.union1d(ipix, np.atleast_1d(np.asarray(hp.lonlat_to_healpix(lon, lat), dtype=np.int64)))
    clon, clat = hp.healpix_to_lonlat(ipix)
    from astropy.coordinates import angular_separation

    theta = np.asarray(angular_separation(clon, clat, lon, lat).to_value(u.rad), dtype=np.float64)
    s = math.radians(sigma)
    x = theta**2 / (2 * s * s)
    probdensity = np.exp(-x) / (2 * math.pi * s * s)
    cum = -np.expm1(-x)
    return np.asarray(level_ipix_to_uniq(level, ipix), dtype=np.int64), probdensity, cum


def _json_meta(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if isinstance(v, (bool, np.bool_)):
            out[str(k)] = bool(v)
        elif isinstance(v, (int, np.integer)):
            out[str(k)] = int(v)
        elif isinstance(v, (float, np.floating)):
            out[str(k)] = float(v) if math.isfinite(v) else None
        elif v is None:
            out[str(k)] = None
        else:
            out[str(k)] = str(v).replace("\x00", "")
    return out


def _source_of(event_id: str) -> str:
    return event_id.split(":", 1)[0] if ":" in event_id else "unknown"


def _utc(t: str | datetime | None) -> datetime | None:
    if t is None:
        return None
    if isinstance(t, datetime):
        return t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(t.strip().replace("Z", "+00:00")).astimezone(timezone.utc) \
        if ("+" in t[10:] or t.endswith("Z")) else datetime.fromisoformat(t).replace(tzinfo=timezone.utc)


def _hpx(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    import astropy.units as u
    from healpix_alchemy.constants import HPX

    return np.atleast_1d(np.asarray(HPX.lonlat_to_healpix(np.asarray(ra_deg, float) * u.deg,
                                                          np.asarray(dec_deg, float) * u.deg), dtype=np.int64))


def _prepare_point(ref_id: str, sky: Any) -> tuple[LocalizationRef, dict[str, Any], tuple[Any, Any, Any]]:
    """(ref, ``localizations`` row, (uniq, probdensity, cum_prob)) of a point, as :meth:`LocalizationStore.put`
    stores it."""
    ra, dec, radius, containment = _point_fields(sky)
    if radius is None or not radius > 0:
        uniq, dens, cum = np.empty(0, np.int64), np.empty(0), np.empty(0)
        areas: tuple[float | None, float | None] = (None, None)
    else:
        uniq, dens, cum = point_tiles(ra, dec, radius, containment)
        areas = _point_areas(radius, containment)
    row = dict(id=ref_id, kind="point", n_tiles=int(uniq.size), area_50_deg2=areas[0], area_90_deg2=areas[1],
               ra_deg=ra, dec_deg=dec, error_radius_deg=radius, containment=containment, has_distance=False, meta={})
    return LocalizationRef(ref_id, "point", areas[0], areas[1], int(uniq.size)), row, (uniq, dens, cum)


# ------------------------------------------------------------------ store
class LocalizationStore:
    """Localizations in PostgreSQL (migration 0005), stored once, queried in SQL.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The archive's database, migrated (``Archive.migrate``).
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._prepared: dict[str, tuple[LocalizationRef, dict[str, Any], tuple[Any, Any, Any]]] = {}

    # ------------------------------------------------------------ writes
    def put(self, event_id: str, sky: Any) -> LocalizationRef:
        """Store ``sky`` (once per content) and link ``event_id`` to it. Idempotent.

        Parameters
        ----------
        event_id : str
            The Event's id (its ``source`` is the part before the first ``:``).
        sky : broker.skymap.MultiOrderSkyMap or a point
            A map from :func:`broker.enrich.localization.extract_localization`, or a
            point with ``ra_deg``, ``dec_deg`` and optionally ``error_radius_deg`` and
            ``containment`` (:class:`broker.enrich.localization.PointRegion`). A point
            also gets its row in ``event_positions``.

        Returns
        -------
        LocalizationRef

        Raises
        ------
        LocalizationError
            A map whose total probability is zero or not finite, or whose pixels cover
            more than the sky.
        """
        ref_id = content_id(sky)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(LOCS.c.kind, LOCS.c.area_50_deg2, LOCS.c.area_90_deg2, LOCS.c.n_tiles)
                               .where(LOCS.c.id == ref_id)).first()
            if row is None:
                ref = self._insert(conn, ref_id, sky)
            else:
                ref = LocalizationRef(ref_id, row.kind, row.area_50_deg2, row.area_90_deg2, row.n_tiles)
            conn.execute(pg_insert(LINKS).values(event_id=event_id, localization_id=ref_id)
                         .on_conflict_do_update(index_elements=[LINKS.c.event_id],
                                                set_={"localization_id": ref_id, "stored_at": sa.func.now()}))
            if _is_point(sky):
                ra, dec, _, _ = _point_fields(sky)
                conn.execute(pg_insert(POSITIONS).values(
                    event_id=event_id, source=_source_of(event_id), time=None, ra_deg=ra, dec_deg=dec,
                    hpx=int(_hpx(np.array([ra]), np.array([dec]))[0])).on_conflict_do_nothing())
        return ref

    def point_ref(self, sky: Any) -> LocalizationRef:
        """The :class:`LocalizationRef` :meth:`put` would return for a point, without writing.

        Read from the table when stored; else computed (its tiles kept for the next
        :meth:`put_many`, which stores them).

        Raises
        ------
        LocalizationError
            ``sky`` is not a point.
        """
        if not _is_point(sky):
            raise LocalizationError("point_ref: a sky map is not a point")
        ref_id = content_id(sky)
        if ref_id in self._prepared:
            return self._prepared[ref_id][0]
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(LOCS.c.kind, LOCS.c.area_50_deg2, LOCS.c.area_90_deg2, LOCS.c.n_tiles)
                               .where(LOCS.c.id == ref_id)).first()
        if row is not None:
            return LocalizationRef(ref_id, row.kind, row.area_50_deg2, row.area_90_deg2, row.n_tiles)
        prepared = _prepare_point(ref_id, sky)
        if len(self._prepared) > 100_000:
            self._prepared.clear()
        self._prepared[ref_id] = prepared
        return prepared[0]

    def put_many(self, items: Sequence[tuple[str, Any]]) -> list[LocalizationRef]:
        """:meth:`put` for many Events: the same refs and rows, points in one transaction.

        The points' localizations absent from the table are inserted with one
        multi-row ``INSERT ... ON CONFLICT DO NOTHING`` and their tiles with one
        ``COPY``; the links with one multi-row upsert (an Event twice: its last
        localization, as successive :meth:`put` calls leave it) and the positions with
        one ``INSERT ... ON CONFLICT DO NOTHING`` (an Event twice: its first). Sky maps
        go through :meth:`put`, one transaction each. Idempotent.

        Parameters
        ----------
        items : sequence of (str, sky)
            ``(event_id, sky)`` as :meth:`put` takes them, in arrival order.

        Returns
        -------
        list of LocalizationRef
            One per item, in the order of ``items``.

        Raises
        ------
        LocalizationError
            As :meth:`put`, for a sky map that cannot be stored (the points are stored
            first, in their transaction).
        """
        out: list[LocalizationRef | None] = [None] * len(items)
        pts = [(i, eid, sky, content_id(sky)) for i, (eid, sky) in enumerate(items) if _is_point(sky)]
        if pts:
            uniq_ids = list(dict.fromkeys(p[3] for p in pts))
            with self.engine.begin() as conn:
                refs = {r.id: LocalizationRef(r.id, r.kind, r.area_50_deg2, r.area_90_deg2, r.n_tiles)
                        for r in conn.execute(sa.select(LOCS.c.id, LOCS.c.kind, LOCS.c.area_50_deg2,
                                                        LOCS.c.area_90_deg2, LOCS.c.n_tiles)
                                              .where(LOCS.c.id.in_(uniq_ids)))}
                rows, tiles, fresh = [], {}, {}
                for _, _, sky, ref_id in pts:
                    if ref_id in refs or ref_id in fresh:
                        continue
                    ref, row, tiles[ref_id] = self._prepared.pop(ref_id, None) or _prepare_point(ref_id, sky)
                    rows.append(row)
                    fresh[ref_id] = ref
                if rows:
                    inserted = set(conn.execute(pg_insert(LOCS).values(rows).on_conflict_do_nothing()
                                                .returning(LOCS.c.id)).scalars())
                    todo = [(rid, *tiles[rid]) for rid in fresh if rid in inserted and tiles[rid][0].size]
                    if todo:
                        with conn.connection.dbapi_connection.cursor() as cur:
                            with cur.copy("COPY localization_tiles (localization_id, hpx, probdensity, cum_prob) "
                                          "FROM STDIN") as copy:
                                for rid, uniq, dens, cum in todo:
                                    lo, hi, _ = _ranges(uniq)
                                    for a, b, p, c in zip(lo.tolist(), hi.tolist(), np.asarray(dens, float).tolist(),
                                                          np.asarray(cum, float).tolist()):
                                        copy.write_row((rid, f"[{a},{b})", p, c))
                refs.update(fresh)
                links = {eid: ref_id for _, eid, _, ref_id in pts}  # the last put of an Event wins
                stmt = pg_insert(LINKS).values([{"event_id": e, "localization_id": r} for e, r in links.items()])
                conn.execute(stmt.on_conflict_do_update(index_elements=[LINKS.c.event_id],
                                                        set_={"localization_id": stmt.excluded.localization_id,
                                                              "stored_at": sa.func.now()}))
                first: dict[str, Any] = {}
                for _, eid, sky, _ in pts:
                    first.setdefault(eid, sky)
                coords = [_point_fields(sky)[:2] for sky in first.values()]
                hpx = _hpx(np.array([c[0] for c in coords]), np.array([c[1] for c in coords]))
                conn.execute(pg_insert(POSITIONS).values([
                    dict(event_id=eid, source=_source_of(eid), time=None, ra_deg=ra, dec_deg=dec, hpx=int(h))
                    for eid, (ra, dec), h in zip(first, coords, hpx)]).on_conflict_do_nothing())
            for i, _, _, ref_id in pts:
                out[i] = refs[ref_id]
        for i, (eid, sky) in enumerate(items):
            if out[i] is None:
                out[i] = self.put(eid, sky)
        return out  # type: ignore[return-value]

    def _insert(self, conn: sa.Connection, ref_id: str, sky: Any) -> LocalizationRef:
        # a concurrent put of the same content: the loser's insert does nothing
        if _is_point(sky):
            ra, dec, radius, containment = _point_fields(sky)
            if radius is None or not radius > 0:
                uniq = np.empty(0, np.int64)
                dens = cum = np.empty(0)
                areas: tuple[float | None, float | None] = (None, None)
            else:
                uniq, dens, cum = point_tiles(ra, dec, radius, containment)
                areas = _point_areas(radius, containment)
            distance: dict[str, np.ndarray] = {}
            values = dict(kind="point", ra_deg=ra, dec_deg=dec, error_radius_deg=radius, containment=containment,
                          has_distance=False, meta={})
        else:
            from broker.enrich.crossmatch import prepare
            from broker.errors import DecodeError

            try:
                prep = prepare(sky)
            except DecodeError as exc:
                raise LocalizationError(str(exc)) from None
            uniq, dens, cum, distance = prep.uniq, prep.probdensity, prep.cum_prob, prep.distance
            a50, a90 = prep.credible_areas_deg2((0.5, 0.9))
            areas = (float(a50), float(a90))
            from astropy_healpix.core import healpix_to_lonlat

            from broker.enrich.moc import level_ipix

            level, ipix = level_ipix(uniq[:1])
            lon, lat = healpix_to_lonlat(ipix, 1 << int(level[0]), order="nested")
            values = dict(kind="skymap", ra_deg=float(lon.deg[0]), dec_deg=float(lat.deg[0]), error_radius_deg=None,
                          containment=None, has_distance=all(c in distance for c in _DISTANCE),
                          meta=_json_meta(prep.meta))
        inserted = conn.execute(pg_insert(LOCS).values(
            id=ref_id, n_tiles=int(uniq.size), area_50_deg2=areas[0], area_90_deg2=areas[1], **values)
            .on_conflict_do_nothing().returning(LOCS.c.id)).first()
        if inserted is not None and uniq.size:
            lo, hi, _ = _ranges(uniq)
            layers = [distance.get(c) for c in _DISTANCE]
            cols = [lo.tolist(), hi.tolist(), np.asarray(dens, float).tolist(), np.asarray(cum, float).tolist()]
            cols += [None if v is None else np.asarray(v, float).tolist() for v in layers]
            n = int(uniq.size)
            dbapi = conn.connection.dbapi_connection
            with dbapi.cursor() as cur:
                with cur.copy("COPY localization_tiles (localization_id, hpx, probdensity, cum_prob, distmu, "
                              "distsigma, distnorm) FROM STDIN") as copy:
                    for i in range(n):
                        copy.write_row((ref_id, f"[{cols[0][i]},{cols[1][i]})", cols[2][i], cols[3][i],
                                        None if cols[4] is None else cols[4][i],
                                        None if cols[5] is None else cols[5][i],
                                        None if cols[6] is None else cols[6][i]))
        return LocalizationRef(ref_id, values["kind"], areas[0], areas[1], int(uniq.size))

    # ------------------------------------------------------------ reads
    def ref_of(self, event_id: str) -> LocalizationRef | None:
        """The localization ``event_id`` was linked to by :meth:`put`, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(LOCS.c.id, LOCS.c.kind, LOCS.c.area_50_deg2, LOCS.c.area_90_deg2,
                                         LOCS.c.n_tiles).join(LINKS, LINKS.c.localization_id == LOCS.c.id)
                               .where(LINKS.c.event_id == event_id)).first()
        return None if row is None else LocalizationRef(*row)

    def get_ref(self, ref_id: str) -> LocalizationRef | None:
        """The :class:`LocalizationRef` of a stored localization id, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(LOCS.c.id, LOCS.c.kind, LOCS.c.area_50_deg2, LOCS.c.area_90_deg2,
                                         LOCS.c.n_tiles).where(LOCS.c.id == ref_id)).first()
        return None if row is None else LocalizationRef(*row)

    def load(self, ref_id: str):
        """The localization back, from the tables (no raw decoding).

        Returns
        -------
        broker.skymap.MultiOrderSkyMap or broker.enrich.localization.PointRegion
            A map: its NUNIQ pixels sorted by NUNIQ, densities and distance layers as
            stored, header keywords in ``meta``. A point: position and error circle.

        Raises
        ------
        LocalizationError
            No such localization.
        """
        from broker.enrich.localization import PointRegion

        with self.engine.connect() as conn:
            row = conn.execute(sa.select(LOCS).where(LOCS.c.id == ref_id)).first()
            if row is None:
                raise LocalizationError(f"no localization {ref_id!r}")
            if row.kind == "point":
                return PointRegion(ra_deg=row.ra_deg, dec_deg=row.dec_deg, error_radius_deg=row.error_radius_deg,
                                   containment=row.containment)
            data = conn.execute(sa.select(sa.func.lower(TILES.c.hpx), sa.func.upper(TILES.c.hpx), TILES.c.probdensity,
                                          TILES.c.distmu, TILES.c.distsigma, TILES.c.distnorm)
                                .where(TILES.c.localization_id == ref_id).order_by(TILES.c.hpx)).all()
        arr = np.array([d[:3] for d in data], dtype=object)
        lo = np.array(arr[:, 0], dtype=np.int64)
        hi = np.array(arr[:, 1], dtype=np.int64)
        uniq = _uniq_of_ranges(lo, hi)
        dens = np.array(arr[:, 2], dtype=np.float64)
        distance = {}
        if row.has_distance:
            for j, name in enumerate(_DISTANCE):
                distance[name] = np.array([d[3 + j] for d in data], dtype=np.float64)
        order = np.argsort(uniq, kind="stable")
        return MultiOrderSkyMap(uniq=uniq[order], probdensity=dens[order],
                                distance={k: v[order] for k, v in distance.items()}, meta=dict(row.meta))

    def region_query(self, ref_id: str, level: float = 0.9, *, sources: Iterable[str] | None = None,
                     since: str | datetime | None = None, until: str | datetime | None = None,
                     limit: int | None = 1000) -> sa.Select:
        """The SQL of :meth:`events_in_region` (for EXPLAIN and the benchmark)."""
        if not (isinstance(level, (int, float)) and 0 < level <= 1):
            raise LocalizationError(f"level {level!r}: expected a credible level in (0, 1]")
        from healpix_alchemy import func as hfunc

        region = (sa.select(hfunc.union(TILES.c.hpx).label("hpx"))
                  .where(TILES.c.localization_id == ref_id, TILES.c.cum_prob <= level)).subquery("region")
        own = sa.select(LINKS.c.event_id).where(LINKS.c.localization_id == ref_id)
        q = (sa.select(POSITIONS.c.event_id)
             .join(region, sa.and_(POSITIONS.c.hpx >= region.c.hpx.lower, POSITIONS.c.hpx < region.c.hpx.upper))
             .where(POSITIONS.c.event_id.not_in(own)))
        if sources:
            q = q.where(POSITIONS.c.source.in_(list(sources)))
        if since is not None:
            q = q.where(POSITIONS.c.time >= _utc(since))
        if until is not None:
            q = q.where(POSITIONS.c.time < _utc(until))
        q = q.order_by(POSITIONS.c.time.asc().nulls_last(), POSITIONS.c.event_id)
        return q.limit(limit) if limit is not None else q

    def events_in_region(self, ref_id: str, level: float = 0.9, *, sources: Iterable[str] | None = None,
                         since: str | datetime | None = None, until: str | datetime | None = None,
                         limit: int | None = 1000) -> list[str]:
        """Ids of the Events whose position lies in the localization's credible region.

        One SQL query: the tiles of ``ref_id`` with ``cum_prob <= level`` merged into
        disjoint order-29 ranges, joined with ``event_positions`` (point-localized
        Events and ZTF/LSST candidates, :func:`index_positions`) on its ``hpx`` index.
        For a map, a position is inside exactly when ligo.skymap's ``searched_prob`` of
        it is ``<= level``.

        Parameters
        ----------
        ref_id : str
            A :attr:`LocalizationRef.id`.
        level : float
            Credible level, in (0, 1].
        sources : iterable of str, optional
            Only Events of these sources (``ztf``, ``gcn``...).
        since, until : str or datetime, optional
            Only positions with time in [since, until) (ISO 8601; naive = UTC).
        limit : int or None
            At most this many (None: all).

        Returns
        -------
        list of str
            Event ids by time then id; the Events linked to ``ref_id`` itself are left
            out; empty for a point without an error radius.

        Raises
        ------
        LocalizationError
            Unknown ``ref_id`` or a level outside (0, 1].
        """
        q = self.region_query(ref_id, level, sources=sources, since=since, until=until, limit=limit)
        with self.engine.connect() as conn:
            if conn.execute(sa.select(LOCS.c.id).where(LOCS.c.id == ref_id)).first() is None:
                raise LocalizationError(f"no localization {ref_id!r}")
            return list(conn.execute(q).scalars())


def index_positions(engine: sa.Engine | sa.Connection, events: Sequence[Any]) -> int:
    """Record the position of each point-localized Event (ZTF candidates included).

    Upserts ``event_positions`` (event id, source, T0, RA, Dec, order-29 ``hpx``) so that
    :meth:`LocalizationStore.events_in_region` finds them. Events without a point
    localization are skipped. Idempotent.

    Parameters
    ----------
    engine : sqlalchemy.Engine or sqlalchemy.Connection
        An engine (one transaction of its own) or an open connection (the caller's
        transaction: the enrich stage writes positions and cross-matches together).
    events : sequence of broker.event.Event

    Returns
    -------
    int
        Positions written.
    """
    from broker.event import PointLocalization

    pts = [e for e in events if isinstance(e.localization, PointLocalization)]
    if not pts:
        return 0
    hpx = _hpx(np.array([e.localization.ra for e in pts]), np.array([e.localization.dec for e in pts]))
    rows = [{"event_id": e.id, "source": e.source, "time": _utc(e.time), "ra_deg": e.localization.ra,
             "dec_deg": e.localization.dec, "hpx": int(h)} for e, h in zip(pts, hpx)]
    stmt = pg_insert(POSITIONS)
    stmt = stmt.on_conflict_do_update(index_elements=[POSITIONS.c.event_id],
                                      set_={c: stmt.excluded[c] for c in ("source", "time", "ra_deg", "dec_deg", "hpx")})
    if isinstance(engine, sa.Connection):
        engine.execute(stmt, rows)
    else:
        with engine.begin() as conn:
            conn.execute(stmt, rows)
    return len(rows)
