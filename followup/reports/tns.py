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
  time after T0, credible level or separation) and the filter that selected it.
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

__all__ = ["tns_report", "tns_values", "OPTICAL_KINDS"]

OPTICAL_KINDS = ("gw-optical", "grb-optical")
"""Coincidence kinds that make a ZTF candidate a counterpart candidate."""

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


def tns_report(filtered_record: Mapping[str, Any], history: Any, settings: Any, *,
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
    host_name, host_redshift : optional
        Host galaxy name and redshift, when known.

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
