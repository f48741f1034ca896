"""TNS AT report of an optical counterpart candidate (the bulk-report JSON).

:func:`tns_report` turns an ``mma.filter.optical-counterpart`` record (a ZTF candidate
the enrich stage found inside the region of a GW or GRB trigger, after its T0; schema
``filters/schemas/filtered_event.json``) and the candidate's ZTF history into the AT
report TNS's bulk-report API takes (``{"at_report": {"0": {...}}}``; fields of the TNS
bulk reports manual, https://www.wis-tns.org/sites/default/files/api/TNS_bulk_reports_manual.pdf,
as the ZTF bots of AMPEL, Fink and ALeRCE fill them). The ``tns`` channel
(:mod:`broker.sinks.tns`) sends it and polls the reply.

What goes in, from where:

* position: the mean of the positive detections in the alert packet (the current
  candidate and the ``prv_candidates`` with a ``candid`` and ``isdiffpos`` t/1), as
  unit vectors (no wrap at RA 0/360); error: the Event's error circle radius (ZTF
  candidates: 0.36", :data:`broker.sources.ztf.ERROR_RADIUS_DEG`) in arcsec on each axis;
* discovery date: the earliest of those detections (UTC, ms); photometry: each of
  them (PSF magnitude ``magpsf`` ± ``sigmapsf``, AB; limit ``diffmaglim``; filter from
  ``fid``; ZTF-Cam; exposure time from the candidate's ``exptime``, else ZTF's 30 s);
  points with a null ``magpsf`` (redacted partnership data) are left out;
* last non-detection: the ``prv_candidates`` upper limit (no ``candid``, a
  ``diffmaglim``: ZTF's expected 5-sigma limit of the difference image) with the latest
  ``jd`` before the first detection. ZTF keeps 30 days of history in an alert: without
  one, ``archiveid`` 0 ("Other") with a remark saying so;
* ids: AT type, flux unit (ABMag) from ``followup/data/tns/tns_options.json`` (TNS
  option values as HERMES keeps them); ZTF-Cam, g/r/i-ZTF and the ZTF data-source group
  from ``followup/data/tns/ztf.json`` (README beside them gives the sources); reporting
  group, reporter, data-source group (default ZTF's), AT type, observer from
  ``[publish.tns]``;
* remarks: which multi-messenger event the candidate is associated with (trigger
  mission and id — the superevent for a GW —, event group key, T0, the coincidence id,
  time after T0, credible level or separation) and the filter that selected it;
* host galaxy (``host_name``, ``host_redshift``): from the enrich stage's cross-match of
  the candidate (``enrichment.crossmatch``, stored in ``event_crossmatches``) with the
  galaxy catalogs of ``[enrich] catalogs`` — those with distances (GLADE, CLU, 50MGC).
  :func:`host_galaxy` takes each catalog's source nearest to the candidate (the
  cross-match keeps it, matched or not) and accepts the one with the smallest projected
  offset at the galaxy's distance, if at most :data:`HOST_MAX_OFFSET_KPC`; its row
  (name, distance, redshift column) is read from ``catalog_sources``
  (:func:`host_loader`). The redshift is the catalog's heliocentric one (``z_helio``,
  ``z``...) or its heliocentric velocity over c (``v_h``: 50MGC); none when the row has
  neither (CLU's distance is not turned into a redshift). The remarks name the catalog,
  the row, the offset and where the redshift came from. No galaxy that close: no host.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["tns_report", "tns_values", "host_galaxy", "host_loader", "OPTICAL_KINDS", "HOST_MAX_OFFSET_KPC"]

OPTICAL_KINDS = ("gw-optical", "grb-optical")
"""Coincidence kinds that make a ZTF candidate a counterpart candidate."""

HOST_MAX_OFFSET_KPC = 30.0
"""Largest projected offset, kpc, at which a catalog galaxy is taken as the candidate's
host: the broker's choice, about twice the optical radius (R25) of a large spiral galaxy
(~15 kpc). The catalog's nearest galaxy beyond it is no host."""

SPEED_OF_LIGHT_KM_S = 299_792.458

_HOST_NAME_KEYS = ("objname", "name", "Name", "GWGC name", "GWGC", "HyperLEDA name", "HyperLEDA")
"""Property columns holding a galaxy name TNS would recognise, tried after the catalog's
own name column (GLADE's ``GLADE no`` is only a row number: its GWGC/HyperLEDA names first)."""
_REDSHIFT_KEYS = ("z_helio", "zhelio", "z_hel", "z", "Z", "redshift", "z_spec", "zspec")
_VELOCITY_KEYS = ("v_h", "vhelio", "v_helio", "cz", "vhel")
"""Heliocentric velocity columns, km/s (c z)."""

_DATA = Path(__file__).resolve().parent.parent / "data" / "tns"
_JD_UNIX_EPOCH = 2440587.5  # JD of 1970-01-01T00:00:00 UTC
_POSITIVE = ("t", "1")


@lru_cache(maxsize=1)
def tns_values() -> dict[str, Any]:
    """The bundled TNS option values: ``{"options": tns_options.json, "ztf": ztf.json}``."""
    return {"options": json.loads((_DATA / "tns_options.json").read_text()),
            "ztf": json.loads((_DATA / "ztf.json").read_text())}


def _list_id(values: list[str], name: str, what: str) -> str:
    """The TNS id of ``name`` in a TNS option list (the list index), by full name or the
    part before " - " ("PSN" for "PSN - Possible SN"), case-insensitive."""
    want = name.strip().lower()
    for i, v in enumerate(values):
        if want in (v.lower(), v.split(" - ")[0].strip().lower()):
            return str(i)
    if want.isdigit() and int(want) < len(values):
        return want
    raise ValueError(f"publish.tns.{what}: {name!r} is not one of {values}")


def jd_to_tns(jd: float) -> str:
    """A Julian Date (UTC) as TNS's ``YYYY-MM-DD HH:MM:SS.sss``, rounded to the millisecond."""
    ms = round((jd - _JD_UNIX_EPOCH) * 86_400_000.0)
    t = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def _group_id(value: Any, what: str, default: str | None = None) -> str:
    s = str(value if value is not None else "").strip()
    if not s and default is not None:
        return default
    if not s.isdigit():
        raise ValueError(f"publish.tns.{what} must be a TNS group id (digits; TNS lists groups by id), "
                         f"got {'nothing' if not s else repr(s)}")
    return s


def _setting(settings: Any, name: str, default: Any = None) -> Any:
    if isinstance(settings, Mapping):
        return settings.get(name, default)
    return getattr(settings, name, default)


def _history(history: Any, record: Mapping[str, Any]) -> Any:
    if isinstance(history, (bytes, bytearray, memoryview)):
        from filters.ztf_history import decode_history

        return decode_history(bytes(history), candid=(record.get("properties") or {}).get("candid"))
    return history


def _detections(h: Any, record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Positive detections with a magnitude: the candidate and the prv_candidates with a
    candid, by jd. Without a history: the record's own candidate (Event properties)."""
    if h is None:
        props = dict(record.get("properties") or {})
        loc = record.get("localization") or {}
        props.update(ra=loc.get("ra"), dec=loc.get("dec"), _current=True,
                     isdiffpos="t" if props.get("isdiffpos") in (True, "t", "1") else "f")
        rows = [props] if all(props.get(k) is not None for k in ("jd", "fid", "ra", "dec")) else []
        return [r for r in rows if r["isdiffpos"] == "t" and r.get("magpsf") is not None]
    rows = [dict(h.candidate, _current=True)]
    prv = h.prv_candidates
    if prv.n and "candid" in prv:
        for i in np.flatnonzero(~prv.null("candid")):
            rows.append(prv.row(int(i)))
    out = [r for r in rows if str(r.get("isdiffpos") or "").lower() in _POSITIVE
           and r.get("magpsf") is not None and math.isfinite(r["magpsf"])]
    return sorted(out, key=lambda r: r["jd"])


def _last_upper_limit(h: Any, before_jd: float) -> dict[str, Any] | None:
    if h is None:
        return None
    prv = h.prv_candidates
    if not prv.n or "candid" not in prv or "diffmaglim" not in prv:
        return None
    jd = prv["jd"]
    lim = prv["diffmaglim"]
    ok = prv.null("candid") & np.isfinite(lim) & (jd < before_jd)
    if not ok.any():
        return None
    idx = np.flatnonzero(ok)
    return prv.row(int(idx[np.argmax(jd[idx])]))


def _mean_position(rows: list[dict[str, Any]]) -> tuple[float, float]:
    ra = np.radians([r["ra"] for r in rows])
    dec = np.radians([r["dec"] for r in rows])
    v = np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).mean(axis=1)
    ra_deg = math.degrees(math.atan2(v[1], v[0])) % 360.0
    dec_deg = math.degrees(math.atan2(v[2], math.hypot(v[0], v[1])))
    return ra_deg, dec_deg


def _coincidences(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The record's optical coincidences: full records where the enrich stage gave them,
    else what their ids say (``<kind>:<trigger group>+<candidate group>``)."""
    enr = record.get("enrichment") or {}
    full = [c for c in enr.get("coincidence_records") or [] if isinstance(c, Mapping)]
    if full:
        return [dict(c) for c in full if c.get("kind") in OPTICAL_KINDS]
    out = []
    for cid in enr.get("coincidences") or []:
        kind, _, pair = str(cid).partition(":")
        trigger, _, _ = pair.partition("+")
        if kind in OPTICAL_KINDS and trigger:
            out.append({"id": cid, "kind": kind, "members": [{"group": trigger}]})
    return out


def _iso_to_jd(iso: str) -> float | None:
    try:
        t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp() / 86400.0 + _JD_UNIX_EPOCH


def _describe(c: Mapping[str, Any], first_jd: float) -> str:
    trig = (c.get("members") or [{}])[0]
    group = trig.get("group", "?")
    g = group.split(":")
    mission = trig.get("mission") or {"igwn": "LVK"}.get(g[0]) or (g[1] if len(g) > 2 else g[0])
    up = trig.get("upstream_id") or group.rsplit(":", 1)[-1]
    what = f"superevent {up}" if c.get("kind") == "gw-optical" else f"trigger {up}"
    parts = [f"{mission} {what} (event group {group}"]
    if trig.get("t0"):
        parts.append(f", T0 {trig['t0']}")
    parts.append(f"; coincidence {c.get('id')}")
    t0_jd = _iso_to_jd(str(trig["t0"])) if trig.get("t0") else None
    if t0_jd is not None:
        parts.append(f"; first ZTF detection {first_jd - t0_jd:.2f} d after T0")
    if isinstance(c.get("credible_level"), (int, float)):
        parts.append(f"; inside the {100 * c['credible_level']:.0f}% credible region")
    elif isinstance(c.get("separation_deg"), (int, float)):
        level = c.get("level")
        parts.append(f"; {c['separation_deg']:.3f} deg from the trigger position"
                     + (f", inside its {100 * level:.0f}% error circle" if isinstance(level, (int, float)) else ""))
    return "".join(parts) + ")"


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _host_redshift(props: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """(heliocentric redshift, the column it came from) of a catalog row, or (None, None)."""
    for k in _REDSHIFT_KEYS:
        z = _finite(props.get(k))
        if z is not None and z >= 0:
            return z, k
    for k in _VELOCITY_KEYS:
        v = _finite(props.get(k))
        if v is not None and v >= 0:
            return v / SPEED_OF_LIGHT_KM_S, k
    return None, None


def _host_name(catalog: str, row: int, name_col: str | None, props: Mapping[str, Any]) -> str:
    keys = ((name_col,) if name_col and name_col != "GLADE no" else ()) + _HOST_NAME_KEYS
    for k in keys:
        v = props.get(k)
        if v not in (None, "", "null") and not str(v).strip().isdigit():
            return str(v).strip()
    if props.get("PGC no") not in (None, "", "null"):
        return f"PGC {props['PGC no']}"
    label = props.get(name_col) if name_col else None
    return f"{catalog} {label}" if label not in (None, "") else f"{catalog} row {row}"


def host_galaxy(record: Mapping[str, Any], rows: Mapping[tuple[str, int], Mapping[str, Any]], *,
                max_offset_kpc: float = HOST_MAX_OFFSET_KPC) -> dict[str, Any] | None:
    """The candidate's host galaxy from the enrich stage's cross-match, or None.

    Parameters
    ----------
    record : mapping
        The filtered (or enriched) record of a ZTF candidate: ``enrichment.crossmatch``
        maps each catalog to its point cross-match, whose ``nearest`` (``row``,
        ``separation_deg``) is the catalog's source nearest to the candidate.
    rows : mapping
        ``(catalog, row) -> {"dist_mpc": float or None, "name_col": str or None,
        "properties": dict}``: the catalog rows (:func:`catalog_rows`). A catalog row
        missing here, or without a distance, is no host (a catalog without distances
        is not a galaxy catalog: 4FGL, VLASS...).
    max_offset_kpc : float
        Largest projected offset, kpc (:data:`HOST_MAX_OFFSET_KPC`).

    Returns
    -------
    dict or None
        ``name``, ``catalog``, ``row``, ``separation_arcsec``, ``offset_kpc`` (projected:
        separation × distance, small-angle), ``dist_mpc``, ``redshift`` (heliocentric,
        or None) and ``redshift_column``; the galaxy of smallest offset over the
        catalogs. None when no catalog's nearest galaxy is within ``max_offset_kpc``.
    """
    best: dict[str, Any] | None = None
    for catalog, xm in sorted(((record.get("enrichment") or {}).get("crossmatch") or {}).items()):
        nearest = xm.get("nearest") if isinstance(xm, Mapping) and xm.get("kind") == "point" else None
        if not isinstance(nearest, Mapping):
            continue
        sep = _finite(nearest.get("separation_deg"))
        try:
            row = int(nearest.get("row"))
        except (TypeError, ValueError):
            continue
        src = rows.get((catalog, row))
        dist = _finite(src.get("dist_mpc")) if src else None
        if sep is None or dist is None or dist <= 0:
            continue
        offset_kpc = math.radians(sep) * dist * 1000.0
        if offset_kpc > max_offset_kpc or (best is not None and offset_kpc >= best["offset_kpc"]):
            continue
        props = src.get("properties") or {}
        z, z_col = _host_redshift(props)
        best = {"name": _host_name(catalog, row, src.get("name_col"), props), "catalog": catalog, "row": row,
                "separation_arcsec": sep * 3600.0, "offset_kpc": offset_kpc, "dist_mpc": dist,
                "redshift": z, "redshift_column": z_col}
    return best


def catalog_rows(engine: Any, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], dict[str, Any]]:
    """The catalog rows ``(catalog name, file row)`` as :func:`host_galaxy` takes them.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The archive's database (``catalogs``, ``catalog_sources``: migration 0004).
    wanted : list of (str, int)

    Returns
    -------
    dict
        ``(catalog, row) -> {"dist_mpc", "name_col", "properties"}`` for the rows found.
    """
    import sqlalchemy as sa

    from broker.enrich.catalogs import CATALOGS, SOURCES

    out: dict[tuple[str, int], dict[str, Any]] = {}
    if not wanted:
        return out
    cond = sa.or_(*(sa.and_(CATALOGS.c.name == c, SOURCES.c.row == int(r)) for c, r in wanted))
    q = (sa.select(CATALOGS.c.name, CATALOGS.c.columns, SOURCES.c.row, SOURCES.c.dist_mpc, SOURCES.c.properties)
         .select_from(SOURCES.join(CATALOGS, SOURCES.c.catalog_id == CATALOGS.c.id)).where(cond))
    with engine.connect() as conn:
        for name, columns, row, dist, props in conn.execute(q):
            out[(name, int(row))] = {"dist_mpc": dist, "name_col": (columns or {}).get("name"),
                                     "properties": props or {}}
    return out


def host_loader(engine: Any, *, max_offset_kpc: float = HOST_MAX_OFFSET_KPC) -> Any:
    """``load(record) -> host dict or None`` for the reports stage: :func:`host_galaxy`
    on the rows of :func:`catalog_rows`. A database error is logged and gives no host
    (the report goes without one)."""
    import logging

    log = logging.getLogger(__name__)

    def load(record: Mapping[str, Any]) -> dict[str, Any] | None:
        xm = (record.get("enrichment") or {}).get("crossmatch") or {}
        wanted = []
        for catalog, m in xm.items():
            nearest = m.get("nearest") if isinstance(m, Mapping) else None
            if isinstance(nearest, Mapping) and isinstance(nearest.get("row"), int):
                wanted.append((str(catalog), int(nearest["row"])))
        if not wanted:
            return None
        try:
            rows = catalog_rows(engine, wanted)
        except Exception as exc:  # noqa: BLE001 - no host rather than no report
            log.warning("reports: host galaxy of %s not looked up (%s: %s)", record.get("id"), type(exc).__name__,
                        str(exc)[:200])
            return None
        return host_galaxy(record, rows, max_offset_kpc=max_offset_kpc)

    return load


def tns_report(filtered_record: Mapping[str, Any], history: Any, settings: Any, *,
               host: Mapping[str, Any] | None = None,
               host_name: str | None = None, host_redshift: float | None = None) -> dict[str, Any]:
    """The TNS AT report (bulk-report JSON) of an optical counterpart candidate.

    Parameters
    ----------
    filtered_record : mapping
        An ``mma.filter.<name>`` record (``mma.event.filtered/1``) of a ZTF Event with
        at least one ``gw-optical``/``grb-optical`` coincidence (the
        ``optical-counterpart`` filter's output), parsed JSON.
    history : filters.ztf_history.ZtfHistory or bytes or None
        The candidate's alert history (:func:`filters.ztf_history.decode_history`), or
        the alert's raw Avro bytes (decoded here, picking the record's ``candid``).
        None (the raw alert not archived): the record's own candidate only, from the
        Event's ``properties``, and no last non-detection (an archival remark says so).
    settings : broker.config.Settings or PublishSettings or TnsSettings or mapping
        ``reporting_group`` (TNS group id, required), ``reporter`` (required),
        ``source_group`` (data-source group id; default ZTF's, 48), ``at_type`` (name
        or id; default "PSN"), ``observer`` (default "Robot"), ``remarks`` (text put
        first in the remarks, optional): ``[publish.tns]``, found through ``.publish``
        and ``.tns`` when given the root or the ``[publish]`` settings.
    host : mapping, optional
        The host galaxy from the cross-match (:func:`host_galaxy`): its ``name`` and
        ``redshift`` fill ``host_name`` and ``host_redshift``, and the remarks name the
        catalog, row, offset and redshift column. None: no host fields.
    host_name, host_redshift : optional
        Host galaxy name and redshift given by hand (they win over ``host``'s).

    Returns
    -------
    dict
        ``{"at_report": {"0": {...}}}``, valid for :func:`broker.sinks.tns.validate_report`:
        ra/dec (deg, error in arcsec), ``reporting_group_id``,
        ``discovery_data_source_id``, ``reporter``, ``discovery_datetime`` (UTC
        ``YYYY-MM-DD HH:MM:SS.sss``), ``at_type``, ``internal_name`` (ZTF objectId),
        ``remarks``, ``non_detection``, ``photometry.photometry_group`` (magnitudes in
        AB mag, rounded to 0.001 mag; positions to 1e-7 deg).

    Raises
    ------
    ValueError
        Not a ZTF record, no optical coincidence (or only withdrawn ones), a history of
        another alert, no positive detection with a magnitude, settings missing or not
        TNS ids (each names the field: JSON path or ``publish.tns.<setting>``).
    """
    from broker.sinks.tns import validate_report

    publish = _setting(settings, "publish", None) or settings
    tns = _setting(publish, "tns", None) or publish
    rec = filtered_record
    if rec.get("source") != "ztf":
        raise ValueError(f"$.source: a TNS AT report needs a ZTF candidate, got {rec.get('source')!r}")
    coincs = [c for c in _coincidences(rec) if not c.get("retracted")]
    if not coincs:
        raise ValueError("$.enrichment.coincidences: no (unwithdrawn) gw-optical or grb-optical coincidence: "
                         "not a counterpart candidate of a multi-messenger event")
    h = _history(history, rec)
    props = rec.get("properties") or {}
    if h is not None and (h.object_id != rec.get("upstream_id") or
                          (props.get("candid") is not None and h.candid != props["candid"])):
        raise ValueError(f"history: alert {h.object_id} candid {h.candid} is not the record's "
                         f"{rec.get('upstream_id')} candid {props.get('candid')}")
    object_id = h.object_id if h is not None else str(rec.get("upstream_id") or "")
    dets = _detections(h, rec)
    if not dets:
        raise ValueError(f"{'history of ' if h is not None else '$.properties of '}{object_id}: "
                         "no positive detection with a PSF magnitude")

    values = tns_values()
    ztf = values["ztf"]
    opts = values["options"]
    abmag = _list_id(opts["units"], "ABMag", "units")
    at_type = _list_id(opts["at_types"], str(_setting(tns, "at_type", None) or "PSN"), "at_type")
    reporting = _group_id(_setting(tns, "reporting_group"), "reporting_group")
    source = _group_id(_setting(tns, "source_group"), "source_group", default=ztf["data_source_group"]["id"])
    reporter = str(_setting(tns, "reporter", "") or "").strip()
    if not reporter:
        raise ValueError("publish.tns.reporter is empty: TNS needs the reporters' names (and affiliations)")
    observer = str(_setting(tns, "observer", None) or ztf["observer"])
    instrument = ztf["instrument"]["id"]

    def filt(fid: Any) -> str:
        f = ztf["filters"].get(str(fid))
        if f is None:
            raise ValueError(f"{object_id}: unknown ZTF filter id fid={fid}")
        return f["id"]

    points: dict[str, dict[str, Any]] = {}
    for r in dets:
        exptime = r.get("exptime") if r.get("_current") else None
        p = {"obsdate": jd_to_tns(r["jd"]), "flux": round(float(r["magpsf"]), 3),
             "flux_error": round(float(r["sigmapsf"]), 3) if r.get("sigmapsf") is not None else None,
             "limiting_flux": round(float(r["diffmaglim"]), 3) if r.get("diffmaglim") is not None else None,
             "flux_units": abmag, "filter_value": filt(r["fid"]), "instrument_value": instrument,
             "exptime": float(exptime) if exptime is not None else float(ztf["exposure_time_s"]),
             "observer": observer, "comments": f"ZTF candid {r['candid']}, PSF-fit magnitude of the difference image"}
        points[str(len(points))] = {k: v for k, v in p.items() if v is not None}

    first_jd = dets[0]["jd"]
    ul = _last_upper_limit(h, first_jd)
    if ul is not None:
        non_detection: dict[str, Any] = {
            "obsdate": jd_to_tns(ul["jd"]), "limiting_flux": round(float(ul["diffmaglim"]), 3),
            "flux_units": abmag, "filter_value": filt(ul["fid"]), "instrument_value": instrument,
            "exptime": float(ztf["exposure_time_s"]), "observer": observer,
            "comments": "ZTF: last upper limit (expected 5-sigma, difference image) before the first detection"}
    elif h is not None:
        non_detection = {"archiveid": "0", "archival_remarks": (
            "No ZTF upper limit in the alert's 30-day history before the first detection")}
    else:
        non_detection = {"archiveid": "0", "archival_remarks": (
            "ZTF alert history not available to the reporting broker: last non-detection unknown")}

    ra, dec = _mean_position(dets)
    err_deg = ((rec.get("localization") or {}).get("error_radius"))
    if not isinstance(err_deg, (int, float)) or not math.isfinite(err_deg) or err_deg < 0:
        from broker.sources.ztf import ERROR_RADIUS_DEG

        err_deg = ERROR_RADIUS_DEG
    err_arcsec = round(float(err_deg) * 3600.0, 3)

    filt_name = (rec.get("filter") or {}).get("filter") or "optical-counterpart"
    assoc = "; ".join(_describe(c, first_jd) for c in coincs)
    lead = str(_setting(tns, "remarks", "") or "").strip()
    remarks = (f"{lead} " if lead else "") + (
        f"Candidate optical counterpart of {assoc}. Selected by mma-broker's {filt_name} filter "
        f"from the public ZTF alert stream ({len(dets)} detection{'s' if len(dets) != 1 else ''} in the alert).")
    if host:
        z = host.get("redshift")
        remarks += (f" Host galaxy {host['name']} ({host['catalog']} row {host['row']}): "
                    f"{host['separation_arcsec']:.1f} arcsec from the candidate, {host['offset_kpc']:.1f} kpc projected "
                    f"at {host['dist_mpc']:.1f} Mpc" +
                    (f"; heliocentric redshift {z:.5f} from its {host['redshift_column']}" if z is not None
                     else "; no redshift in the catalog") + ".")
        host_name = host_name or host.get("name")
        if host_redshift is None and z is not None:
            host_redshift = round(float(z), 6)

    report: dict[str, Any] = {
        "ra": {"value": round(ra, 7), "error": err_arcsec, "units": "arcsec"},
        "dec": {"value": round(dec, 7), "error": err_arcsec, "units": "arcsec"},
        "reporting_group_id": reporting,
        "discovery_data_source_id": source,
        "reporter": reporter,
        "discovery_datetime": jd_to_tns(first_jd),
        "at_type": at_type,
        "internal_name": object_id,
        "remarks": remarks,
        "non_detection": non_detection,
        "photometry": {"photometry_group": points},
    }
    if host_name:
        report["host_name"] = str(host_name)
    if host_redshift is not None:
        report["host_redshift"] = float(host_redshift)
    payload = {"at_report": {"0": report}}
    validate_report(payload)
    return payload
