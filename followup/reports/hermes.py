"""HERMES messages from follow-up results, coincidences and optical candidates.

Each builder returns a HERMES message (LCOGT/hermes submission format: ``title``,
``topic``, ``submitter``, ``authors``, ``message_text``, ``data``) that passes
:func:`broker.sinks.hermes.validate_message`, or None when the record is not one to
publish (a failed or skipped follow-up, a withdrawal: the reports stage handles
those). ``data`` holds ``event_id`` (the superevent or trigger HERMES links the message
to), ``references``, ``targets`` (positions), ``photometry`` (detections as
``brightness``; non-detections as ``limiting_brightness`` with a unit HERMES accepts)
and, under ``extra_data``, what HERMES has no field for (HERMES passes unknown keys of
``data`` through to the published message).

Units of the INTEGRAL SPI-ACS limits
------------------------------------
HERMES's photometry units are ``AB mag``, ``Vega mag``, ``mJy`` and
``erg / s / cm² / Å``. An SPI-ACS peak-flux upper limit ``F`` (erg cm⁻² s⁻¹ in the band
E1–E2, 75–2000 keV) is written as the band-averaged flux density
``F_ν = F / Δν`` in mJy, ``Δν = (E2 − E1) / h`` (h = 4.135667696e-18 keV s;
1 mJy = 1e-26 erg s⁻¹ cm⁻² Hz⁻¹); ``bandpass`` names the band and the spectrum. The
values themselves — the 3σ fluence upper limit (short-GRB spectrum) and peak-flux upper
limit (long-GRB spectrum) per time scale, with the energy band, the spectrum, the time
scale and the SPI-ACS fraction of optimal response at the directions used — are in
``extra_data.integral_spiacs`` unchanged. A position-free result (no attitude at T0)
has count limits only: no photometry, the counts in ``extra_data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

H_KEV_S = 4.135667696e-18
"""Planck constant, keV s (CODATA 2018, exact)."""
MJY_CGS = 1e-26
"""1 mJy in erg s⁻¹ cm⁻² Hz⁻¹."""
ZTF_BANDS = {1: "g", 2: "r", 3: "i"}
"""ZTF filter ids (``fid``) → band (ZTF alert schema)."""


@dataclass(frozen=True)
class HermesOptions:
    """What every HERMES message of the broker carries (``[publish.hermes]``).

    Attributes
    ----------
    topic : str
        ``hermes.test`` (default), ``hermes.discovery`` ...
    submitter, authors : str
    public_base_url : str or None
        Base URL of ``mma-broker serve``: artifacts are linked as
        ``<public_base_url>/artifacts/sha256/<hex>``. None: no links.
    """

    topic: str = "hermes.test"
    submitter: str = "mma-broker"
    authors: str = ""
    public_base_url: str | None = None

    @classmethod
    def from_settings(cls, settings: Any, topic: str | None = None) -> "HermesOptions":
        """From the broker settings' ``[publish]`` section (``topic`` overrides its topic)."""
        p = settings.publish
        return cls(topic=topic or p.hermes.topic, submitter=p.hermes.submitter, authors=p.hermes.authors,
                   public_base_url=p.public_base_url)

    def artifact_url(self, sha256: str) -> str | None:
        return f"{self.public_base_url.rstrip('/')}/artifacts/sha256/{sha256}" if self.public_base_url else None


def band_averaged_mjy(flux_erg_cm2_s: float, band_kev: tuple[float, float]) -> float:
    """Band-averaged flux density of an energy flux, mJy.

    Parameters
    ----------
    flux_erg_cm2_s : float
        Energy flux in the band, erg cm⁻² s⁻¹.
    band_kev : (float, float)
        Band edges, keV.

    Returns
    -------
    float
        ``F / Δν`` in mJy with ``Δν = (E2 − E1) / h``.
    """
    dnu_hz = (band_kev[1] - band_kev[0]) / H_KEV_S
    return flux_erg_cm2_s / dnu_hz / MJY_CGS


def event_name(doc: Mapping[str, Any]) -> str:
    """How people name the follow-up's event: the superevent, the name given, or
    ``<mission> <instrument> trigger <id>``."""
    up = str(doc.get("upstream_id") or doc.get("event_id"))
    if doc.get("source") in ("igwn", "user"):
        return up
    who = " ".join(x for x in (doc.get("mission"), doc.get("instrument")) if x)
    return f"{who} trigger {up}" if who else up


def _base(opts: HermesOptions, title: str, text: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"title": title, "topic": opts.topic, "submitter": opts.submitter, "authors": opts.authors,
            "message_text": text, "data": data}


def _point_target(name: str, loc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not loc or loc.get("type") != "point" or loc.get("ra") is None or loc.get("dec") is None:
        return None
    t: dict[str, Any] = {"name": name, "ra": float(loc["ra"]), "dec": float(loc["dec"])}
    if loc.get("error_radius"):
        t |= {"ra_error": float(loc["error_radius"]), "dec_error": float(loc["error_radius"]),
              "ra_error_units": "degrees", "dec_error_units": "degrees"}
        c = loc.get("containment")
        t["comments"] = (f"error radius at {100 * c:g}% containment" if c else "error radius, containment not stated")
    return t


def _limit_rows(result: Mapping[str, Any], key: str, spectrum: str) -> list[dict[str, Any]]:
    rows = []
    for row in result.get("limits") or []:
        lim = row.get(key)
        if not lim:
            continue
        rows.append({"time_scale_s": row["scale_s"], "sigma": 3, "energy_band_kev": list(lim["band_kev"]),
                     "spectrum": spectrum, "best": lim["best"], "at_max_probability": lim["at_max_probability"],
                     "containment_50": lim["containment_50"], "containment_90": lim["containment_90"],
                     "fraction_of_optimal_response": {"best": lim["best_response_fraction"],
                                                      "at_max_probability": lim["at_max_probability_response_fraction"]},
                     "direction_quality": lim["best_direction_quality"], "n_directions": lim["n_directions"]})
    return rows


def _spiacs_extra(spi: Mapping[str, Any]) -> dict[str, Any]:
    """What the SPI-ACS analysis found, in the units its names say."""
    if spi.get("no_data"):
        return {"no_data": True, "kind": spi["kind"], "reason": spi["reason"]}
    res = spi.get("result") or {}
    out = {k: spi.get(k) for k in ("detected", "best_time", "best_offset_s", "best_timescale_s", "best_snr", "fap",
                                   "n_trials", "coverage", "search_window_s", "flags")}
    out["fluence_upper_limits_erg_cm2"] = _limit_rows(res, "short_grb_fluence_erg_cm2",
                                                      res.get("short_grb_spectrum", ""))
    out["peak_flux_upper_limits_erg_cm2_s"] = _limit_rows(res, "long_grb_peak_flux_erg_cm2_s",
                                                          res.get("long_grb_spectrum", ""))
    out["count_upper_limits"] = [{"time_scale_s": r["scale_s"], "sigma": 3, "counts": r["upper_limit_counts"]}
                                 for r in res.get("limits") or []]
    out["response_systematic_fraction"] = res.get("response_systematic_fraction")
    out["response"] = res.get("response_source")
    return out


def followup_message(doc: Mapping[str, Any], opts: HermesOptions) -> dict[str, Any] | None:
    """HERMES message of one ``mma.followup.results`` result.

    Parameters
    ----------
    doc : mapping
        A result document (``followup/schemas/followup_result.json``).
    opts : HermesOptions

    Returns
    -------
    dict or None
        The message; None for a document not to publish (``kind`` other than
        ``result``, status ``failed``, or a withdrawn result).
    """
    if doc.get("kind") != "result" or doc.get("status") not in ("done", "no_data") or doc.get("withdrawn"):
        return None
    name = event_name(doc)
    analyses = doc.get("analyses") or {}
    spi = analyses.get("spiacs") or {}
    if doc["status"] == "no_data":
        what = "no data"
    elif spi.get("detected"):
        what = "SPI-ACS detection"
    else:
        what = "SPI-ACS upper limits"
    title = f"{name}: INTEGRAL follow-up, {what} (automatic)"
    references: list[dict[str, Any]] = [
        {"source": "mma-broker", "citation": f"INTEGRAL follow-up result {doc['request_id']} of {doc['event_id']}"}]
    if doc.get("supersedes"):
        references.append({"source": "mma-broker", "citation": f"supersedes follow-up result {doc['supersedes']}"})
    plot = doc.get("plot") or {}
    url = opts.artifact_url(plot["sha256"]) if plot.get("sha256") else None
    if url:
        references.append({"source": "mma-broker", "citation": "SPI-ACS light curve (PNG)", "url": url})
    text = doc.get("summary_text") or ""
    if url:
        text = text.rstrip("\n") + f"\n\nLight curve: {url}\n"
    target = _point_target(name, doc.get("localization"))
    data: dict[str, Any] = {"event_id": str(doc.get("upstream_id")), "references": references,
                            "targets": [target] if target else [], "photometry": []}
    extra: dict[str, Any] = {"request_id": doc["request_id"], "event_id": doc["event_id"], "status": doc["status"],
                             "t0": doc["t0"], "group": doc.get("group"), "revision_reason": doc.get("revision_reason"),
                             "supersedes": doc.get("supersedes"), "localization": doc.get("localization"),
                             "provenance": doc.get("provenance")}
    if spi:
        extra["integral_spiacs"] = _spiacs_extra(spi)
        if target and not spi.get("no_data") and not spi.get("detected"):
            res = spi.get("result") or {}
            for row in extra["integral_spiacs"]["peak_flux_upper_limits_erg_cm2_s"]:
                band = tuple(row["energy_band_kev"])
                data["photometry"].append({
                    "target_name": name, "date_obs": doc["t0"], "telescope": "INTEGRAL", "instrument": "SPI-ACS",
                    "bandpass": f"{band[0]:g}-{band[1]:g} keV",
                    "limiting_brightness": band_averaged_mjy(row["containment_90"], band),
                    "limiting_brightness_unit": "mJy", "exposure_time": row["time_scale_s"],
                    "comments": (f"3-sigma peak-flux upper limit {row['containment_90']:.3g} erg/cm2/s on the "
                                 f"{row['time_scale_s']:g} s scale ({res.get('long_grb_spectrum', '')}), as the "
                                 f"band-averaged flux density F/dnu; fraction of optimal response "
                                 f"{row['fraction_of_optimal_response']['best']:.2f}")})
    for key in ("ibis_visibility", "isgri", "coverage"):
        if key in analyses:
            extra[f"integral_{key}"] = analyses[key]
    data["extra_data"] = extra
    return _base(opts, title, text, data)


def coincidence_message(record: Mapping[str, Any], opts: HermesOptions) -> dict[str, Any] | None:
    """HERMES message of one ``mma.coincidences`` record (coincident, not retracted).

    Returns
    -------
    dict or None
        None for a record that is not coincident or is retracted (the reports stage
        withdraws the coincidence's earlier messages instead).
    """
    if not record.get("coincident") or record.get("retracted"):
        return None
    members = record["members"]
    trig, other = members[0], members[1]
    kind = record["kind"]
    title = f"{kind.upper()} coincidence: {trig['upstream_id']} and {other['upstream_id']} (automatic)"
    lines = [f"{trig['mission']} {trig['upstream_id']} (T0 {trig['t0']}) and {other['mission']} "
             f"{other['upstream_id']} (T0 {other['t0']}) are coincident ({kind})."]
    if record.get("dt_s") is not None:
        w = record.get("window_s") or []
        lines.append(f"Time offset {record['dt_s']:+.3f} s" + (f" in the window [{w[0]:g}, {w[1]:g}] s" if w else "")
                     + (f" ({record['search']} search)." if record.get("search") else "."))
    if record.get("dt_days") is not None:
        lines.append(f"First detected {record['dt_days']:.3f} d after T0.")
    if record.get("overlap_integral") is not None:
        lines.append(f"Sky-map overlap integral {record['overlap_integral']:.4g} ({record.get('overlap_method')}).")
    if record.get("credible_level") is not None:
        lines.append(f"Position at the {100 * record['credible_level']:.1f}% credible level of the trigger's map.")
    if record.get("temporal_far_hz") is not None:
        lines.append(f"Temporal coincidence FAR {record['temporal_far_hz']:.3g} Hz"
                     + (f", joint FAR {record['joint_far_hz']:.3g} Hz" if record.get("joint_far_hz") is not None
                        else "") + " (RAVEN, Urban 2016; Cho 2019).")
    lines += list(record.get("notes") or [])
    lines.append("Computed automatically; preliminary.")
    gw = next((m for m in members if m["role"] == "gw"), trig)
    data = {"event_id": gw["upstream_id"],
            "references": [{"source": "mma-broker", "citation": f"coincidence {record['id']}"}]
            + [{"source": m["mission"], "citation": f"{m['upstream_id']} ({m['event_id']})"} for m in members],
            "targets": [], "photometry": [],
            "extra_data": {"coincidence": {k: v for k, v in record.items() if k != "schema"}}}
    return _base(opts, title, "\n".join(lines) + "\n", data)


def _jd_iso(jd: float) -> str:
    from astropy.time import Time

    return Time(jd, format="jd", scale="utc").isot[:23] + "Z"


def optical_message(record: Mapping[str, Any], opts: HermesOptions, history: Any = None) -> dict[str, Any] | None:
    """HERMES message of a ZTF candidate an optical-counterpart filter accepted.

    Parameters
    ----------
    record : mapping
        An ``mma.filter.<name>`` record (``filters/schemas/filtered_event.json``) of a
        ZTF Event whose enrichment holds a ``gw-optical``/``grb-optical`` coincidence.
    opts : HermesOptions
    history : filters.ztf_history.ZtfHistory, optional
        The alert's decoded history: its upper limits (``prv_candidates`` rows
        without ``candid``) before the detection become non-detections
        (``limiting_brightness`` = ``diffmaglim``, AB mag).

    Returns
    -------
    dict or None
        None when the record holds no optical coincidence record.
    """
    enr = record.get("enrichment") or {}
    coincs = [c for c in enr.get("coincidence_records") or []
              if c.get("kind") in ("gw-optical", "grb-optical") and c.get("coincident") and not c.get("retracted")]
    if not coincs:
        return None
    c = coincs[0]
    trig = c["members"][0]
    props = record.get("properties") or {}
    obj = record["upstream_id"]
    loc = record.get("localization") or {}
    target = {"name": obj, "ra": float(loc["ra"]), "dec": float(loc["dec"]), "new_discovery": False,
              "comments": f"ZTF candidate {props.get('candid')}"}
    band = props.get("band") or ZTF_BANDS.get(props.get("fid"), "unknown")
    phot = [{"target_name": obj, "date_obs": record["time"], "telescope": "P48", "instrument": "ZTF",
             "bandpass": band, "brightness": props.get("magpsf"), "brightness_error": props.get("sigmapsf"),
             "brightness_unit": "AB mag", "catalog": "ZTF difference imaging (magpsf)"}]
    if history is not None and len(history.prv_candidates):
        prv = history.prv_candidates
        limits = [i for i in range(len(prv)) if prv.null("candid")[i] and prv["diffmaglim"][i] == prv["diffmaglim"][i]]
        for i in limits:
            fid = int(prv["fid"][i])
            phot.append({"target_name": obj, "date_obs": _jd_iso(float(prv["jd"][i])), "telescope": "P48",
                         "instrument": "ZTF", "bandpass": ZTF_BANDS.get(fid, str(fid)),
                         "limiting_brightness": float(prv["diffmaglim"][i]), "limiting_brightness_unit": "AB mag",
                         "comments": "5-sigma limiting magnitude of a ZTF non-detection (diffmaglim)"})
    where = (f"at the {100 * c['credible_level']:.1f}% credible level of its map" if c.get("credible_level") is not None
             else f"{c['separation_deg']:.3f} deg from its position" if c.get("separation_deg") is not None else
             "inside its localization")
    text = (f"ZTF candidate {obj} (candid {props.get('candid')}) at RA {target['ra']:.5f}, Dec {target['dec']:.5f} "
            f"(J2000), {band} = {props.get('magpsf', float('nan')):.2f} +/- {props.get('sigmapsf', float('nan')):.2f} "
            f"AB mag on {record['time']}, first detected {c.get('dt_days', float('nan')):.3f} d after T0 of "
            f"{trig['mission']} {trig['upstream_id']} ({trig['t0']}), {where}. Selected by the filter "
            f"{(record.get('filter') or {}).get('filter')} ({(record.get('filter') or {}).get('reason')}). "
            f"Automatic; not vetted by a person.\n")
    data = {"event_id": trig["upstream_id"], "targets": [target], "photometry": phot,
            "references": [{"source": "mma-broker", "citation": f"coincidence {c['id']}"},
                           {"source": "ZTF", "citation": f"{obj} candid {props.get('candid')}"}],
            "extra_data": {"coincidence": c, "filter": record.get("filter"),
                           "ztf": {k: props.get(k) for k in ("candid", "rb", "drb", "jdstarthist", "ndethist",
                                                             "isdiffpos", "diffmaglim", "distpsnr1", "sgscore1",
                                                             "ssdistnr")}}}
    return _base(opts, f"{obj}: ZTF candidate counterpart of {trig['upstream_id']} (automatic)", text, data)


def retraction_message(sent: Mapping[str, Any], receipt: Mapping[str, Any] | None, retracted_by: str,
                       opts: HermesOptions, reason: str | None = None) -> dict[str, Any]:
    """A HERMES message retracting one we sent.

    HERMES has no retraction message type (its archive marks a message retracted
    through its web API); this message names the earlier one by its hop UUID (a
    reference with ``source: hop_uuid``, HERMES's way of citing a message) and by title.

    Parameters
    ----------
    sent : mapping
        The payload of the message sent.
    receipt : mapping or None
        Its receipt (``hop_uuid``, ``topic``, ``partition``, ``offset``).
    retracted_by : str
        The event id of the retraction.
    reason : str, optional
        Why (default: "its source event was retracted (<retracted_by>)").
    """
    why = reason or f"its source event was retracted ({retracted_by})"
    refs: list[dict[str, Any]] = []
    if receipt and receipt.get("hop_uuid"):
        refs.append({"source": "hop_uuid", "citation": receipt["hop_uuid"]})
    refs.append({"source": "mma-broker", "citation": f"retraction {retracted_by}"})
    where = (f" (topic {receipt['topic']}, partition {receipt['partition']}, offset {receipt['offset']})"
             if receipt and receipt.get("topic") else "")
    data = {"event_id": (sent.get("data") or {}).get("event_id"), "references": refs,
            "extra_data": {"retracts": {"title": sent.get("title"), "receipt": dict(receipt or {}),
                                        "retracted_by": retracted_by, "reason": why}}}
    text = f"RETRACTION. The message \"{sent.get('title')}\"{where} is withdrawn: {why}. Disregard it.\n"
    return _base(opts, f"RETRACTION: {sent.get('title')}", text, data)
