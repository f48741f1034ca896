"""Group-page sections for optical candidates and INTEGRAL follow-up results, and the candidate pages.

:func:`ztf_section` and :func:`followup_section` build the dicts that the templates
``_ztf.html`` (variable ``ztf``) and ``_followup.html`` (variable ``followup``) read;
the group page (:mod:`broker.web.group`) calls them with the group that
:func:`broker.web.api.get_group` returns. :func:`install` adds the candidate routes:

``GET /candidates/{event_id}``
    One ZTF or Rubin candidate (``ztf:<candid>``, ``lsst:<diaSourceId>``): its alert
    fields, light curve and three cutouts. A forged id is a 400 page naming
    ``event_id``, an unknown one a 404 page; an alert whose history or stamps do not
    decode still renders, saying what cannot be shown.
``GET /candidates/{event_id}/lightcurve.png``
    Magnitude against MJD per band from the alert's history and its own candidate
    (:func:`broker.web.cutouts.lightcurve_png`).
``GET /candidates/{event_id}/cutout/{science|template|difference}.png``
    A stamp, zscale, grey (:func:`broker.web.cutouts.stamp_png`); a stamp that does not
    decode (corrupt, a gzip bomb, not FITS) answers **422** ``{"detail", "parameter"}``.

Candidates in the region
------------------------
An optical Event (source ``ztf`` or ``lsst``) is listed on a trigger's page when its T0 is
within :data:`WINDOW_DAYS` of the group's T0 and its position lies in the 90 %
(:data:`LEVEL`) credible region of the group's **latest** stored localization (the
latest revision that has one): for a sky map the tiles the enrich stage stored with
``cum_prob <= 0.9``, for a GCN error circle the radius at 90 % of the circular Gaussian
the enrich stage gives it (:mod:`broker.enrich.store`, :func:`_in_circle`). Each candidate's
tile gives its credible level — ligo.skymap's ``searched_prob``, the number the enrich
stage's GW/GRB–optical coincidence (:func:`broker.enrich.coinc.optical_verdict`) compares
with 0.9 — and the probability density there; rows are ranked by that level (most
probable region first), then by time; a GCN error circle's rows by distance, in the exact
90 % circle. The candidates the enrich stage itself found coincident (``gw-optical`` /
``grb-optical`` rows of table ``coincidences``, whose verdict also read the alert's
history) come first, flagged; for the others the page shows whether ZTF's own history
(``jdstarthist``) says the object was detected before T0, the first test of that verdict.
At most :data:`MAX_CANDIDATES` rows are shown, with the number left out.

Follow-up results
-----------------
Rows of ``followup_results`` (kinds ``result`` and ``withdrawal``) whose ``group_key`` is
the group's key or whose ``event_id`` is one of its revisions, newest first, read by
table name (the core does not import ``followup/``, as :func:`broker.sinks.web.archive_fetcher`).
Each shows its instrument analyses (SPI-ACS: the excess found or, per time scale, the
3-sigma upper limits in counts and as short-GRB fluence / long-GRB peak flux; IBIS and
ISGRI: what was measured or why there is no data), and the light-curve plot linked to
``/artifacts/sha256/<hex>``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional

import sqlalchemy as sa
from fastapi import Request
from sqlalchemy.dialects.postgresql import JSONB

from broker.archive.models import events as EV
from broker.enrich.store import LINKS, LOCS, TILES
from broker.web import cutouts

log = logging.getLogger(__name__)

__all__ = ["ztf_section", "followup_section", "followup_group", "install", "candidate_data", "WINDOW_DAYS", "LEVEL",
           "MAX_CANDIDATES", "MAX_FOLLOWUP_ROWS", "OPTICAL_SOURCES"]

WINDOW_DAYS = (-1.0, 14.0)
"""Optical candidates are listed when ``T0_group + WINDOW_DAYS[0] d <= T0 < T0_group +
WINDOW_DAYS[1] d``: a day before the trigger (a candidate detected just before T0 is
shown, flagged) to two weeks after it (a kilonova fades below ZTF's ~20.5 mag in about a
week at 40 Mpc; an afterglow within days)."""
LEVEL = 0.9
"""Credible level of the region candidates must lie in (the enrich stage's ``optical_level``)."""
MAX_CANDIDATES = 100
"""Most candidate rows shown on a group page; the others are counted ("and N more")."""
MAX_FOLLOWUP_ROWS = 50
"""Most follow-up results shown on a group page."""
OPTICAL_SOURCES = ("ztf", "lsst")
"""Event sources whose Events are optical candidates with light curves and cutouts."""
CANDIDATE_ID = re.compile(r"^(ztf|lsst):[0-9]{1,20}$")
"""An optical candidate's Event id: ``ztf:<candid>`` or ``lsst:<diaSourceId>``."""
CACHE_ITEMS = 256
"""PNGs kept in memory per process (each ~15-40 kB), least recently used dropped."""
HISTORY_ITEMS = 64
"""Decoded alert histories kept in memory per process."""
RENDER_TIMEOUT_S = 20.0
"""A PNG not drawn within this time answers 503 (the drawing thread finishes on its own)."""
MAX_RENDERS = 2
"""PNGs drawn at once per process (the others wait): drawing is CPU-bound."""

_JD_UNIX = 2440587.5
_HEX = re.compile(r"^[0-9a-f]{64}$")
_ARTIFACT = "mma-broker://artifact/sha256/"


# ------------------------------------------------------------------ small helpers
def _group_dict(group: Any) -> dict[str, Any]:
    if hasattr(group, "model_dump"):
        return group.model_dump()
    return dict(group)


def _utc(iso: str | None) -> datetime | None:
    if not iso:
        return None
    t = datetime.fromisoformat(iso[:-1] + "+00:00" if iso.endswith("Z") else iso)
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _iso(t: datetime | None) -> str | None:
    from broker.event import format_time

    return format_time(t) if t is not None else None


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    x = float(v)
    return x if math.isfinite(x) else None


def candidate_url(event_id: str) -> str:
    """The page of an optical candidate (``/candidates/ztf:<candid>``)."""
    return "/candidates/" + event_id


def _with_t0(url: str, t0: str | None) -> str:
    """``url`` with ``?t0=<trigger T0>`` (the light curve then marks the trigger's T0)."""
    from urllib.parse import quote

    return f"{url}?t0={quote(t0, safe=':')}" if t0 else url


def _photometry(source: str, props: dict[str, Any]) -> dict[str, Any]:
    """Band, magnitude ± error and limiting magnitude of an alert's own detection."""
    if source == "lsst":
        f, e = _num(props.get("psfFlux_njy")), _num(props.get("psfFluxErr_njy"))
        mag = cutouts.NJY_AB_ZP - 2.5 * math.log10(f) if f is not None and f > 0 else None
        err = 1.0857 * e / f if mag is not None and e is not None and e > 0 else None
        return {"band": props.get("band"), "mag": mag, "mag_err": err, "limit_mag": None,
                "positive": props.get("isNegative") is not True and (f is None or f >= 0),
                "flux_njy": f, "flux_err_njy": e}
    mag, err = _num(props.get("magpsf")), _num(props.get("sigmapsf"))
    return {"band": props.get("band"), "mag": mag if mag is not None and 5 <= mag <= 30 else None,
            "mag_err": err, "limit_mag": _num(props.get("diffmaglim")), "positive": props.get("isdiffpos") is not False}


def _candidate_row(r: Any, t0: datetime | None, enrich: dict[str, Any] | None = None,
                   outside_region: bool = False) -> dict[str, Any]:
    props = r.properties or {}
    dt = (r.time - t0).total_seconds() / 86400.0 if t0 is not None else None
    start = _num(props.get("jdstarthist"))
    before = None
    if start is not None and t0 is not None:
        before = start < t0.timestamp() / 86400.0 + _JD_UNIX
    row = {"event_id": r.id, "object_id": r.upstream_id, "source": r.source, "t0": _iso(r.time),
           "dt_days": dt, "ra_deg": r.ra_deg, "dec_deg": r.dec_deg, "url": _with_t0(candidate_url(r.id), _iso(t0)),
           "credible_level": getattr(r, "cum_prob", None), "probdensity_deg2": None,
           "separation_deg": getattr(r, "separation_deg", None), "enrich": enrich,
           "outside_region": outside_region,
           "detected_before_t0": before, "drb": _num(props.get("drb")), "rb": _num(props.get("rb")),
           "ndethist": props.get("ndethist") if isinstance(props.get("ndethist"), int) else None}
    dens = getattr(r, "probdensity", None)
    if dens is not None:
        row["probdensity_deg2"] = dens * (math.pi / 180.0) ** 2  # sr^-1 -> deg^-2
    row.update(_photometry(r.source, props))
    return row


_COLS = (EV.c.id, EV.c.source, EV.c.upstream_id, EV.c.time, EV.c.ra_deg, EV.c.dec_deg, EV.c.properties)


def _latest_stored(conn: sa.Connection, revisions: list[str]) -> Any:
    """(localization id, kind, event id, area_90) of the latest revision that has a stored one."""
    if not revisions:
        return None
    rows = conn.execute(sa.select(LINKS.c.event_id, LINKS.c.localization_id, LOCS.c.kind, LOCS.c.area_90_deg2)
                        .select_from(LINKS.join(LOCS, LOCS.c.id == LINKS.c.localization_id))
                        .where(LINKS.c.event_id.in_(revisions))).all()
    by_event = {r.event_id: r for r in rows}
    for eid in reversed(revisions):
        if eid in by_event:
            return by_event[eid]
    return None


# ------------------------------------------------------------------ section: ZTF candidates
def ztf_section(ctx: Any, group: Any) -> dict[str, Any]:
    """The ``ztf`` dict of ``_ztf.html``: optical candidates in the group's region and window.

    Parameters
    ----------
    ctx : broker.web.pages.PageContext
        Its ``engine`` is read (``events``, ``event_localizations``, ``localizations``,
        ``localization_tiles``).
    group : broker.web.api.GroupDetail or dict
        What :func:`broker.web.api.get_group` returns: ``key``, ``category``, ``t0``,
        ``revisions`` (``event_id`` in arrival order), ``latest_localization``.

    Returns
    -------
    dict
        ``mode``: ``"region"`` (candidates in the stored localization's 90 % region),
        ``"own"`` (the group is itself an optical object: its alerts), or None with
        ``reason`` (no localization, retracted...); ``rows`` (list of dict: ``event_id``,
        ``object_id``, ``source``, ``t0``, ``dt_days`` (d after the group's T0),
        ``band``, ``mag``, ``mag_err``, ``limit_mag`` (AB mag), ``positive``,
        ``credible_level`` (0..1), ``probdensity_deg2`` (deg⁻²), ``detected_before_t0``
        (from ``jdstarthist``; None unknown), ``drb``, ``rb``, ``ndethist``, ``url``,
        ``separation_deg`` (circles), ``enrich`` (the enrich stage's recorded coincidence:
        :func:`_enrich_optical`, or None), ``outside_region`` (recorded, but not in the
        latest region and window)); ``n_total``, ``n_more`` (rows not shown),
        ``n_enrich`` (rows with a recorded coincidence), ``level``, ``window_days``,
        ``since``, ``until`` (ISO 8601 UTC), ``localization_id``, ``localization_kind``,
        ``localization_event``.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        The database failed (the group page shows the section as unavailable).
    """
    g = _group_dict(group)
    revisions = [r["event_id"] if isinstance(r, dict) else r for r in g.get("revisions") or []]
    t0 = _utc(g.get("t0"))
    out: dict[str, Any] = {"mode": None, "reason": None, "rows": [], "n_total": 0, "n_more": 0, "level": LEVEL,
                           "window_days": list(WINDOW_DAYS), "since": None, "until": None, "localization_id": None,
                           "localization_kind": None, "localization_event": None, "max_rows": MAX_CANDIDATES,
                           "n_enrich": 0}
    if g.get("category") == "optical":
        with ctx.engine.connect() as conn:
            rows = conn.execute(sa.select(*_COLS).where(EV.c.id.in_(revisions), EV.c.source.in_(OPTICAL_SOURCES))
                                .order_by(EV.c.time.desc(), EV.c.id).limit(MAX_CANDIDATES + 1)).all()
            n = conn.execute(sa.select(sa.func.count()).select_from(EV)
                             .where(EV.c.id.in_(revisions), EV.c.source.in_(OPTICAL_SOURCES))).scalar_one()
        out.update(mode="own", rows=[_candidate_row(r, None) for r in rows[:MAX_CANDIDATES]], n_total=n,
                   n_more=max(0, n - MAX_CANDIDATES))
        return out
    if t0 is None:
        out["reason"] = "the group has no T0"
        return out
    since, until = t0 + timedelta(days=WINDOW_DAYS[0]), t0 + timedelta(days=WINDOW_DAYS[1])
    out.update(since=_iso(since), until=_iso(until))
    with ctx.engine.connect() as conn:
        loc = _latest_stored(conn, revisions)
        if loc is None:
            out["reason"] = "no stored localization for this group (the enrich stage stores them)"
            return out
        out.update(localization_id=loc.localization_id, localization_kind=loc.kind, localization_event=loc.event_id)
        found = _region(conn, loc, since, until)
        if found is None:
            out["reason"] = "the latest localization is a point without an error radius"
            return out
        rows, n = found
        enrich = _enrich_optical(conn, g.get("key"))
        # the candidates the enrich stage found coincident come first (its verdict read the
        # alert's history too); those ranked below the first rows by level are fetched
        extra = [eid for eid in enrich if eid not in {r.id for r in rows}]
        outside: list[Any] = []
        if extra:
            inside, _ = _region(conn, loc, since, until, ids=extra)
            found_ids = {r.id for r in inside}
            rows = list(rows) + list(inside)
            outside = conn.execute(sa.select(*_COLS).where(EV.c.id.in_([e for e in extra if e not in found_ids]))).all()
            n += len(outside)
    shown = [_candidate_row(r, t0, enrich.get(r.id)) for r in rows]
    shown += [_candidate_row(r, t0, enrich.get(r.id), outside_region=True) for r in outside]
    shown.sort(key=lambda r: (r["enrich"] is None or not r["enrich"]["current"], r["outside_region"],
                              r["credible_level"] if r["credible_level"] is not None else 2.0, r["t0"], r["event_id"]))
    shown = shown[:MAX_CANDIDATES]
    out.update(mode="region", rows=shown, n_total=n, n_more=max(0, n - len(shown)),
               n_enrich=sum(1 for r in shown if r["enrich"] is not None))
    return out


def _region(conn: sa.Connection, loc: Any, since: datetime, until: datetime, ids: list[str] | None = None) -> Any:
    """(rows, total) of optical Events in the 90 % region of stored localization ``loc``
    and the window, most probable first, at most :data:`MAX_CANDIDATES`; None for a point
    without an error radius. ``ids``: only these Events."""
    if loc.kind == "point":
        return _in_circle(conn, loc.localization_id, since, until, ids)
    join = TILES.join(EV, sa.and_(EV.c.hpx >= sa.func.lower(TILES.c.hpx), EV.c.hpx < sa.func.upper(TILES.c.hpx)))
    where = (TILES.c.localization_id == loc.localization_id, TILES.c.cum_prob <= LEVEL,
             EV.c.source.in_(OPTICAL_SOURCES), EV.c.time >= since, EV.c.time < until)
    if ids is not None:
        where += (EV.c.id.in_(ids),)
    rows = conn.execute(sa.select(*_COLS, TILES.c.cum_prob, TILES.c.probdensity).select_from(join).where(*where)
                        .order_by(TILES.c.cum_prob, EV.c.time, EV.c.id).limit(MAX_CANDIDATES)).all()
    n = len(rows)
    if n == MAX_CANDIDATES:
        n = conn.execute(sa.select(sa.func.count()).select_from(join).where(*where)).scalar_one()
    return rows, n


OPTICAL_KINDS = ("gw-optical", "grb-optical")
"""Coincidence kinds of a trigger and an optical candidate (:mod:`broker.enrich.coinc`)."""


def _enrich_optical(conn: sa.Connection, key: str | None) -> dict[str, dict[str, Any]]:
    """Candidate Event id → what the enrich stage recorded of its coincidence with group ``key``.

    The latest version of each ``gw-optical`` / ``grb-optical`` record whose trigger is
    ``key`` (table ``coincidences``, migration 0013; empty when the table is absent):
    ``id``, ``coincident``, ``retracted``, ``current`` (coincident and not retracted),
    ``credible_level``, ``separation_deg``, ``dt_days``, ``history_checked`` (the alert's
    ``prv_candidates`` were read: no detection before T0).
    """
    if not key or conn.execute(sa.text("SELECT to_regclass('coincidences')")).scalar() is None:
        return {}
    from broker.enrich.coincidence_store import latest_of_group

    out: dict[str, dict[str, Any]] = {}
    for c in latest_of_group(conn, key, limit=MAX_CANDIDATES):
        if c["kind"] not in OPTICAL_KINDS or c["role"] != "trigger":
            continue
        rec = c["record"] if isinstance(c["record"], dict) else {}
        out[c["other_event_id"]] = {
            "id": c["id"], "coincident": bool(c["coincident"]), "retracted": bool(c["retracted"]),
            "current": bool(c["coincident"]) and not c["retracted"],
            "credible_level": _num(rec.get("credible_level")), "separation_deg": _num(rec.get("separation_deg")),
            "dt_days": _num(rec.get("dt_days")), "history_checked": rec.get("history_checked") is True}
    return out


def _in_circle(conn: sa.Connection, loc_id: str, since: datetime, until: datetime,
               ids: list[str] | None = None) -> Any:
    """(rows, total) of the optical Events in the 90 % disc of a stored point localization.

    The exact circle, as :func:`broker.enrich.coinc.optical_verdict` decides it (not the
    disc's stored tiles, whose edge pixels are in or out by their centres): the
    radius at :data:`LEVEL` of the circular Gaussian the store gives the error circle
    (σ from the radius and its containment, 0.9 when unstated), points found on the
    ``events.hpx`` index (:func:`broker.web.api._cone_ranges`) and kept by haversine
    distance, nearest first. Each row gets ``cum_prob`` = ``1 − exp(−θ²/2σ²)`` and
    ``probdensity`` = ``exp(−θ²/2σ²) / 2πσ²`` (sr⁻¹), the numbers of the stored tiles
    at the exact separation θ. None when the point has no error radius. ``ids``: only
    these Events.
    """
    from types import SimpleNamespace

    from broker.enrich.store import _sigma_deg
    from broker.web.api import _cone_ranges

    p = conn.execute(sa.select(LOCS.c.ra_deg, LOCS.c.dec_deg, LOCS.c.error_radius_deg, LOCS.c.containment)
                     .where(LOCS.c.id == loc_id)).first()
    if p is None or p.error_radius_deg is None or not p.error_radius_deg > 0:
        return None
    sigma = _sigma_deg(p.error_radius_deg, p.containment)
    radius = min(sigma * math.sqrt(-2.0 * math.log1p(-LEVEL)), 180.0)
    r = math.radians
    d1 = sa.func.radians(EV.c.dec_deg)
    hav = (sa.func.power(sa.func.sin((d1 - r(p.dec_deg)) / 2), 2) + math.cos(r(p.dec_deg)) * sa.func.cos(d1)
           * sa.func.power(sa.func.sin((sa.func.radians(EV.c.ra_deg) - r(p.ra_deg)) / 2), 2))
    where = (sa.or_(*(sa.and_(EV.c.hpx >= lo, EV.c.hpx < hi) for lo, hi in _cone_ranges(p.ra_deg, p.dec_deg, radius))),
             hav <= math.sin(r(radius) / 2) ** 2, EV.c.source.in_(OPTICAL_SOURCES), EV.c.time >= since,
             EV.c.time < until) + ((EV.c.id.in_(ids),) if ids is not None else ())
    rows = conn.execute(sa.select(*_COLS, hav.label("hav")).where(*where)
                        .order_by(hav, EV.c.time, EV.c.id).limit(MAX_CANDIDATES)).all()
    n = len(rows)
    if n == MAX_CANDIDATES:
        n = conn.execute(sa.select(sa.func.count()).select_from(EV).where(*where)).scalar_one()
    s = r(sigma)
    out = []
    for row in rows:
        theta = 2.0 * math.asin(min(1.0, math.sqrt(max(row.hav, 0.0))))
        x = theta * theta / (2 * s * s)
        out.append(SimpleNamespace(**row._mapping, cum_prob=-math.expm1(-x),
                                   probdensity=math.exp(-x) / (2 * math.pi * s * s), separation_deg=math.degrees(theta)))
    return out, n


# ------------------------------------------------------------------ section: follow-up results
_FOLLOWUP = sa.table("followup_results", sa.column("request_id"), sa.column("kind"), sa.column("event_id"),
                     sa.column("status"), sa.column("document", JSONB), sa.column("summary_text"), sa.column("withdrawn"),
                     sa.column("withdrawn_by"), sa.column("created_at"), sa.column("group_key"),
                     sa.column("superseded_by"))


def _plot_url(plot: Any) -> str | None:
    if not isinstance(plot, dict):
        return None
    digest = plot.get("sha256")
    if not isinstance(digest, str):
        ref = plot.get("ref")
        digest = ref[len(_ARTIFACT):] if isinstance(ref, str) and ref.startswith(_ARTIFACT) else None
    return f"/artifacts/sha256/{digest}" if isinstance(digest, str) and _HEX.match(digest) else None


def _map_limit(v: Any) -> dict[str, Any] | None:
    """A SPI-ACS limit over the direction samples (``followup.spiacs.MapLimit``), or None."""
    if isinstance(v, dict):
        best = _num(v.get("best"))
        if best is None:
            return None
        return {"best": best, "containment_90": _num(v.get("containment_90")),
                "quality": v.get("best_direction_quality") if isinstance(v.get("best_direction_quality"), str) else None}
    x = _num(v)
    return {"best": x, "containment_90": None, "quality": None} if x is not None else None


def _spiacs(a: dict[str, Any]) -> dict[str, Any]:
    res = a.get("result") if isinstance(a.get("result"), dict) else {}
    excess = res.get("excess") if isinstance(res.get("excess"), dict) else {}
    band = res.get("fluence_band_kev")
    limits = []
    for row in res.get("limits") or []:
        if not isinstance(row, dict):
            continue
        limits.append({
            "scale_s": _num(row.get("scale_s")),
            "upper_limit_counts": _num(row.get("upper_limit_counts")),
            "detection_50_counts": _num(row.get("detection_50_counts")),
            "detection_90_counts": _num(row.get("detection_90_counts")),
            "fluence_erg_cm2": _map_limit(row.get("short_grb_fluence_erg_cm2")),
            "peak_flux_erg_cm2_s": _map_limit(row.get("long_grb_peak_flux_erg_cm2_s")),
        })
    return {
        "instrument": "SPI-ACS", "name": "spiacs", "no_data": bool(a.get("no_data")),
        "reason": a.get("reason") if isinstance(a.get("reason"), str) else None,
        "detected": a.get("detected") if isinstance(a.get("detected"), bool) else None,
        "best_snr": _num(a.get("best_snr")), "best_time": a.get("best_time"), "fap": _num(a.get("fap")),
        "log10_fap": _num(excess.get("log10_fap")),
        "best_timescale_s": _num(a.get("best_timescale_s")), "best_offset_s": _num(a.get("best_offset_s")),
        "search_window_s": a.get("search_window_s"), "coverage": a.get("coverage"),
        "flags": [f for f in a.get("flags") or [] if isinstance(f, str)],
        "limits": limits,
        "fluence_band_kev": band if isinstance(band, list) and len(band) == 2 else None,
        "short_grb_spectrum": res.get("short_grb_spectrum"), "long_grb_spectrum": res.get("long_grb_spectrum"),
        "directions": (a.get("directions") or {}).get("method") if isinstance(a.get("directions"), dict) else None,
    }


_INSTRUMENTS = {"spiacs": "SPI-ACS", "isgri": "IBIS/ISGRI", "ibis_visibility": "IBIS field of view",
                "coverage": "INTEGRAL coverage", "attitude": "INTEGRAL attitude"}


def _other(name: str, a: dict[str, Any]) -> dict[str, Any]:
    """An analysis without a dedicated view: its scalar fields, its no-data reason."""
    fields = [(k, v) for k, v in a.items() if isinstance(v, (str, int, float, bool)) and k not in ("kind", "reason")
              and not (isinstance(v, str) and len(v) > 300)]
    return {"instrument": _INSTRUMENTS.get(name, name), "name": name, "no_data": bool(a.get("no_data")),
            "reason": a.get("reason") if isinstance(a.get("reason"), str) else None,
            "kind": a.get("kind") if isinstance(a.get("kind"), str) else None, "fields": fields[:12]}


def _result_view(r: Any) -> dict[str, Any]:
    doc = r.document if isinstance(r.document, dict) else {}
    analyses = doc.get("analyses") if isinstance(doc.get("analyses"), dict) else {}
    order = ["spiacs", "isgri", "ibis_visibility", "coverage", "attitude"]
    names = [n for n in order if n in analyses] + sorted(n for n in analyses if n not in order)
    views = [_spiacs(analyses[n]) if n == "spiacs" else _other(n, analyses[n])
             for n in names if isinstance(analyses[n], dict)]
    return {"request_id": r.request_id, "kind": r.kind, "status": r.status, "event_id": r.event_id,
            "t0": doc.get("t0") if isinstance(doc.get("t0"), str) else None,
            "created_at": _iso(r.created_at), "summary_text": r.summary_text,
            "error": doc.get("error") if isinstance(doc.get("error"), str) else None,
            "withdrawn": bool(r.withdrawn), "withdrawn_by": r.withdrawn_by, "superseded_by": r.superseded_by,
            "revision_reason": doc.get("revision_reason") if isinstance(doc.get("revision_reason"), str) else None,
            "requested_by": doc.get("requested_by") if isinstance(doc.get("requested_by"), str) else None,
            "plot_url": _plot_url(doc.get("plot")), "analyses": views}


def followup_section(ctx: Any, group: Any) -> dict[str, Any]:
    """The ``followup`` dict of ``_followup.html``: the group's INTEGRAL follow-up results.

    Parameters
    ----------
    ctx : broker.web.pages.PageContext
    group : broker.web.api.GroupDetail or dict
        ``key`` and ``revisions``.

    Returns
    -------
    dict
        ``available`` (False when the archive has no follow-up tables), ``results``
        (newest first, at most :data:`MAX_FOLLOWUP_ROWS`; each: ``request_id``,
        ``kind`` (result | withdrawal), ``status`` (done | no_data | failed | withdrawn),
        ``t0``, ``created_at``, ``summary_text``, ``withdrawn``, ``superseded_by``,
        ``plot_url`` (``/artifacts/sha256/<hex>`` or None), ``analyses``: per analysis
        ``instrument`` and its numbers — SPI-ACS ``detected``, ``best_snr``,
        ``best_time``, ``fap``, ``limits`` per ``scale_s`` (``upper_limit_counts``,
        3 sigma; ``fluence_erg_cm2`` and ``peak_flux_erg_cm2_s``, short-GRB fluence and
        long-GRB peak flux limits, ``best`` and ``containment_90``, None without a
        source direction)), ``n_total``, ``n_skipped`` (requests not analysed again).
    """
    g = _group_dict(group)
    revisions = [r["event_id"] if isinstance(r, dict) else r for r in g.get("revisions") or []]
    key = g.get("key")
    out: dict[str, Any] = {"available": False, "results": [], "n_total": 0, "n_skipped": 0}
    t = _FOLLOWUP
    with ctx.engine.connect() as conn:
        if conn.execute(sa.text("SELECT to_regclass('followup_results')")).scalar() is None:
            return out
        mine = sa.or_(t.c.group_key == key, t.c.event_id.in_(revisions)) if revisions else t.c.group_key == key
        rows = conn.execute(sa.select(t).where(mine, t.c.kind.in_(("result", "withdrawal")))
                            .order_by(t.c.created_at.desc(), t.c.request_id).limit(MAX_FOLLOWUP_ROWS)).all()
        counts = dict(conn.execute(sa.select(t.c.kind, sa.func.count()).where(mine).group_by(t.c.kind)).all())
    out.update(available=True, results=[_result_view(r) for r in rows],
               n_total=counts.get("result", 0) + counts.get("withdrawal", 0), n_skipped=counts.get("skipped", 0))
    return out


def followup_group(ctx: Any, key: str) -> dict[str, Any] | None:
    """A group-like dict for a follow-up group that has no event group, or None.

    Ad-hoc requests (``mma-broker followup request --name "GRB 230307A"``, group key
    ``user:GRB 230307A``) are analysed without their Event being archived or grouped, so
    :func:`broker.web.api.get_group` answers 404 for their key; their results are found
    by ``group_key`` alone. The group page can show them with this dict.

    Parameters
    ----------
    ctx : broker.web.pages.PageContext
    key : str
        The ``group_key`` of ``followup_results``.

    Returns
    -------
    dict or None
        ``key``, ``category`` (``"user"``), ``t0`` (the newest result's T0, ISO 8601
        UTC), ``retracted`` (False), ``n_revisions`` (0), ``revisions`` ([]),
        ``latest`` (the newest result's Event id), ``best_localization``,
        ``latest_localization`` (None), ``latest_localization_event`` (None),
        ``followup_only`` (True); None when no result has that key (or no follow-up tables).
    """
    t = _FOLLOWUP
    with ctx.engine.connect() as conn:
        if conn.execute(sa.text("SELECT to_regclass('followup_results')")).scalar() is None:
            return None
        row = conn.execute(sa.select(t.c.event_id, t.c.document["t0"].astext.label("t0"), t.c.created_at)
                           .where(t.c.group_key == key, t.c.kind.in_(("result", "withdrawal")))
                           .order_by(t.c.created_at.desc()).limit(1)).first()
    if row is None:
        return None
    return {"key": key, "category": "user", "t0": row.t0 or _iso(row.created_at), "retracted": False,
            "n_revisions": 0, "revisions": [], "latest": row.event_id, "best_localization": None,
            "latest_localization": None, "latest_localization_event": None, "followup_only": True}


# ------------------------------------------------------------------ candidate data (raw packet → history)
class _LRU:
    def __init__(self, size: int) -> None:
        self.size, self._d, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        return None

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)


def _raw_reader(ctx: Any) -> Callable[[sa.Connection, Any], bytes]:
    """Read an Event's raw bytes: the app's Archive when shared in ``ctx.extra``, else
    the raw store ``[archive]`` settings describe, on ``ctx.engine``."""
    from broker.archive.raw import RawRef
    from broker.web.pages import raw_store

    store = raw_store(ctx)

    def read(conn: sa.Connection, row: Any) -> bytes:
        ref = RawRef(sha256=row.raw_sha256, length=row.raw_length, segment=row.raw_segment, offset=row.raw_offset)
        return store.get(ref, conn if store.transactional else None)

    return read


def candidate_data(ctx: Any, event_id: str) -> dict[str, Any] | None:
    """An optical candidate's archived fields and its decoded history and stamps.

    Parameters
    ----------
    ctx : broker.web.pages.PageContext
    event_id : str
        ``ztf:<candid>`` or ``lsst:<diaSourceId>`` (checked by the caller).

    Returns
    -------
    dict or None
        None when no such Event is archived. Else ``event`` (id, source, object id,
        T0, RA/Dec, properties), ``points`` (list of :class:`~broker.web.cutouts.LightPoint`),
        ``stamps`` (kind → bytes or None) and ``error`` (one line: why the history and
        stamps could not be read, or None). Cached per process (:data:`HISTORY_ITEMS`).
    """
    cache: _LRU = ctx.extra.setdefault("candidate_cache", _LRU(HISTORY_ITEMS))
    hit = cache.get(event_id)
    if hit is not None:
        return hit
    cols = _COLS + (EV.c.messenger, EV.c.raw_sha256, EV.c.raw_length, EV.c.raw_segment, EV.c.raw_offset)
    with ctx.engine.connect() as conn:
        row = conn.execute(sa.select(*cols).where(EV.c.id == event_id, EV.c.source.in_(OPTICAL_SOURCES))).first()
        if row is None:
            return None
        from broker.enrich.groups import MEMBERS

        key = conn.execute(sa.select(MEMBERS.c.group_key).where(MEMBERS.c.event_id == event_id)).scalar()
        props = row.properties or {}
        error, history = None, None
        try:
            raw = _raw_reader(ctx)(conn, row)
        except Exception as exc:  # noqa: BLE001 - RawStoreError, OSError...: said on the page, no path
            log.warning("raw bytes of %s unreadable: %s", event_id, type(exc).__name__)
            raw, error = None, "the alert's raw packet cannot be read from the archive"
    if raw is not None:
        try:
            history = _decode_history(row.source, raw, props, event_id)
        except Exception as exc:  # noqa: BLE001 - DecodeError and whatever a hostile packet raises
            error = f"the alert's history and cutouts do not decode ({type(exc).__name__})"
    jd = row.time.timestamp() / 86400.0 + _JD_UNIX
    if row.source == "ztf":
        own = dict(props, jd=_num(props.get("jd")) or jd)
        points = cutouts.ztf_points(history["prv_candidates"] if history else [], own,
                                    history.get("fp_hists") or [] if history else [])
    else:
        own = {"midpointMjdTai": jd - 2400000.5, "band": props.get("band"), "psfFlux": props.get("psfFlux_njy"),
               "psfFluxErr": props.get("psfFluxErr_njy")}
        points = cutouts.lsst_points(history["prvDiaSources"] if history else [], own)
    ev = {"id": row.id, "source": row.source, "object_id": row.upstream_id, "t0": _iso(row.time),
          "group_key": key or f"{row.source}:{row.upstream_id}",
          "ra_deg": row.ra_deg, "dec_deg": row.dec_deg, "properties": props}
    data = {"event": ev, "points": points, "flux": row.source == "lsst",
            "stamps": (history or {}).get("cutouts") or {}, "error": error,
            "n_history": len(history.get("prv_candidates") or history.get("prvDiaSources") or []) if history else 0}
    cache.put(event_id, data)
    return data


def _decode_history(source: str, raw: bytes, props: dict[str, Any], event_id: str) -> dict[str, Any]:
    from broker.sources import avro

    if source == "ztf":
        from broker.sources.ztf import decode_history

        candid = props.get("candid") if isinstance(props.get("candid"), int) else None
        return decode_history(raw, avro.read_header(raw), candid)
    from broker.sources.lsst import decode_history as lsst_history

    return lsst_history(raw, dia_source_id=int(event_id.split(":", 1)[1]))  # a container may hold several


# ------------------------------------------------------------------ routes
def _problem(status: int, detail: str, parameter: str | None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": detail, "parameter": parameter}, status_code=status)


def _check_id(event_id: str) -> str | None:
    """The reason ``event_id`` is not a candidate id, or None."""
    from broker.web.api import ParamError, check_text

    try:
        check_text("event_id", event_id, 64)
    except ParamError as exc:
        return exc.detail
    if not CANDIDATE_ID.match(event_id):
        return "event_id: not an optical candidate id (ztf:<candid> or lsst:<diaSourceId>)"
    return None


async def _in_thread(ctx: Any, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in the thread pool, at most :data:`MAX_RENDERS` at once, within the timeout.

    Raises
    ------
    asyncio.TimeoutError
        Not done within :data:`RENDER_TIMEOUT_S` (waiting for a turn included).
    """
    from starlette.concurrency import run_in_threadpool

    sem = ctx.extra.setdefault("render_semaphore", threading.BoundedSemaphore(MAX_RENDERS))

    def bounded() -> Any:
        with sem:
            return fn()

    return await asyncio.wait_for(run_in_threadpool(bounded), RENDER_TIMEOUT_S)


def _trigger_t0(value: str | None) -> tuple[datetime | None, str | None]:
    """(the ``t0`` parameter as a UTC datetime, or None; the reason it is bad, or None)."""
    from broker.web.api import ParamError, _utc as api_utc

    try:
        return api_utc("t0", value), None
    except ParamError as exc:
        return None, exc.detail


def _png_response(png: bytes) -> Any:
    from fastapi.responses import Response

    return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})


def install(app: Any, ctx: Any) -> None:
    """Add the candidate page and its PNG routes (module docstring) to ``app``."""
    from fastapi.responses import HTMLResponse

    pngs: _LRU = ctx.extra.setdefault("candidate_pngs", _LRU(CACHE_ITEMS))

    def page(request: Request, status: int, **kw: Any) -> HTMLResponse:
        return ctx.templates.TemplateResponse(request, "candidate.html", kw, status_code=status)

    @app.get("/candidates/{event_id}", response_class=HTMLResponse, include_in_schema=False)
    async def candidate_page(request: Request, event_id: str, t0: Optional[str] = None) -> HTMLResponse:
        bad = _check_id(event_id)
        if bad is not None:
            return page(request, 400, error=bad, parameter="event_id", candidate=None, heading="Bad request")
        trigger, bad = _trigger_t0(t0)
        if bad is not None:
            return page(request, 400, error=bad, parameter="t0", candidate=None, heading="Bad request")
        data = await _in_thread(ctx, lambda: candidate_data(ctx, event_id))
        if data is None:
            return page(request, 404, error="no such optical candidate in the archive", parameter="event_id",
                        candidate=None, heading="Not found")
        stamps = []
        for kind in cutouts.CUTOUT_KINDS:
            reason = None
            stamp = data["stamps"].get(kind)
            if stamp is None:
                reason = data["error"] or "not in this alert"
            else:
                try:
                    await _in_thread(ctx, lambda s=stamp: cutouts.stamp_image(s))
                except cutouts.StampError as exc:
                    reason = str(exc)
            stamps.append({"kind": kind, "url": f"{candidate_url(event_id)}/cutout/{kind}.png", "error": reason})
        ev = data["event"]
        summary = {**ev, **_photometry(ev["source"], ev["properties"]), "trigger_t0": _iso(trigger),
                   "dt_days": ((_utc(ev["t0"]) - trigger).total_seconds() / 86400.0) if trigger else None}
        return page(request, 200, candidate=summary, stamps=stamps, error=None, history_error=data["error"],
                    n_history=data["n_history"], n_points=len(data["points"]), flux_curve=data["flux"],
                    lightcurve_url=_with_t0(f"{candidate_url(event_id)}/lightcurve.png", _iso(trigger)),
                    lightcurve_size=cutouts.LIGHTCURVE_SIZE_PX,
                    properties=sorted((k, v) for k, v in ev["properties"].items()
                                      if isinstance(v, (str, int, float, bool)) or v is None))

    @app.get("/candidates/{event_id}/lightcurve.png", include_in_schema=False)
    async def candidate_lightcurve(event_id: str, t0: Optional[str] = None) -> Any:
        bad = _check_id(event_id)
        if bad is not None:
            return _problem(400, bad, "event_id")
        trigger, bad = _trigger_t0(t0)
        if bad is not None:
            return _problem(400, bad, "t0")
        t0_mjd = trigger.timestamp() / 86400.0 + _JD_UNIX - 2400000.5 if trigger is not None else None
        key = (event_id, "lightcurve", _iso(trigger))
        png = pngs.get(key)
        if png is None:
            def draw() -> bytes | None:
                data = candidate_data(ctx, event_id)
                if data is None:
                    return None
                return cutouts.lightcurve_png(data["points"], f"{data['event']['object_id']} ({event_id})",
                                              t0_mjd=t0_mjd, flux=data["flux"])
            try:
                png = await _in_thread(ctx, draw)
            except asyncio.TimeoutError:
                return _problem(503, "the light curve took too long to draw; try again", None)
            if png is None:
                return _problem(404, "no such optical candidate in the archive", "event_id")
            pngs.put(key, png)
        return _png_response(png)

    @app.get("/candidates/{event_id}/cutout/{kind}.png", include_in_schema=False)
    async def candidate_cutout(event_id: str, kind: str) -> Any:
        bad = _check_id(event_id)
        if bad is not None:
            return _problem(400, bad, "event_id")
        if kind not in cutouts.CUTOUT_KINDS:
            return _problem(400, "kind: one of " + ", ".join(cutouts.CUTOUT_KINDS), "kind")
        key = (event_id, kind)
        png = pngs.get(key)
        if png is None:
            def draw() -> bytes | str | None:
                data = candidate_data(ctx, event_id)
                if data is None:
                    return None
                stamp = data["stamps"].get(kind)
                if stamp is None:
                    return f"{kind} cutout: " + (data["error"] or "not in this alert")
                try:
                    return cutouts.stamp_png(cutouts.stamp_image(stamp), kind)
                except cutouts.StampError as exc:
                    return f"{kind} cutout: {exc}"
            try:
                png = await _in_thread(ctx, draw)
            except asyncio.TimeoutError:
                return _problem(503, "the cutout took too long to draw; try again", None)
            if png is None:
                return _problem(404, "no such optical candidate in the archive", "event_id")
            if isinstance(png, str):
                return _problem(422, png, "kind")
            pngs.put(key, png)
        return _png_response(png)
