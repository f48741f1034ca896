"""GCN notice and GCN Circular draft of an INTEGRAL SPI-ACS follow-up result.

:func:`gcn_notice` turns a result document of ``mma.followup.results``
(``followup/schemas/followup_result.json``) into a machine-readable notice valid against
the GCN unified schema: the core schemas of nasa-gcn/gcn-schema (Alert, Event, Reporter,
DateTime, FollowUp, Localization, Statistics, AdditionalInfo), combined by the broker's
mission schema ``broker/schemas/gcn/integral/spiacs_followup.schema.json`` in the manner
of the mission schemas of that repository (the closest is
``icecube/lvk_nu_track_search``: a follow-up search of an external trigger reporting a
p-value and flux sensitivities). The ``gcn-notice`` channel (:mod:`broker.sinks.gcn`)
validates it again before it leaves.

:func:`circular_draft` writes the GCN Circular in the structure the INTEGRAL
multi-messenger collaboration used for its SPI-ACS follow-up of LVK and IceCube
triggers — read in GCN Circulars 24629 (S190521r), 24951 (S190701ah), 25698 (S190910d),
25880 (S190930t), 26351 (S191205ah), 27050 (S200213t), 28617 (IceCube-201014A) and 28903
(IceCube-201114A), https://gcn.nasa.gov/circulars/<number>:

1. the author lines, then the collaboration;
2. what was searched: INTEGRAL/SPI-ACS data, following Savchenko et al. 2017 ([1]), for
   a prompt gamma-ray counterpart of the event, with the circulars reporting it;
3. T0 (``YYYY-MM-DD hh:mm:ss UTC, hereafter T0``), INTEGRAL's state, the SPI-ACS
   response towards the most probable direction as a fraction of optimal;
4. the background around T0 (its excess variance);
5. the search for impulsive events (as described in Savchenko et al. 2012, [2]);
6. the outcome: a detection with its time, time scale, S/N and false-alarm probability,
   or the 3-sigma upper limit on the 75-2000 keV fluence of a burst shorter than 1 s
   with the short-GRB spectrum and the 1 s / 8 s peak-flux limits with the long-GRB
   spectrum;
7. the numbered references.

The subject follows theirs: ``LIGO/Virgo/KAGRA S230518h: No counterpart candidates in
INTEGRAL SPI-ACS prompt observation``, ``GRB 230307A: INTEGRAL SPI-ACS detection``.
The wording of the sentences is ours, and says what our numbers are: the limit is for
a burst at a given time in the window; the fluences at which a blind search detects
half and 90 % of such bursts are given beside it (issue 8). The authors come from
settings (``[publish.gcn_circular] authors``); a draft made without them cannot be sent
(:func:`broker.sinks.gcn.validate_circular` refuses it).

Results not meant for GCN raise :class:`NotPublishable`: skipped rows and failed
analyses; for the circular also withdrawals and "no data" because the trigger is
outside the mission or a service was down (a later request may succeed). Every other
result, "no data" included, has a notice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from broker.sinks.gcn import AUTHORS_MISSING, NOTICE_SCHEMA_ID, validate_notice
from followup.report import fap_text
from followup.response import LONG_GRB_SPECTRUM, SHORT_GRB_SPECTRUM

__all__ = ["AUTHORS_MISSING", "REFERENCES", "NotPublishable", "circular_draft", "event_title", "gcn_notice"]

ARCHIVAL_AFTER = timedelta(days=1)
"""A result made more than this after T0 is a re-analysis of archival data
(``alert_tense = "archival"``); earlier ones are ``current``."""

REFERENCES = (
    "[1] Savchenko V. et al. 2017, A&A 603, A46",
    "[2] Savchenko V. et al. 2012, A&A 541, A122",
)
"""The two papers every INTEGRAL SPI-ACS follow-up circular cites."""

_CIRCULAR_NUMBER = re.compile(r"\bGCN(?:\s+Circ(?:ular)?\.?|\s*#)?\s*(\d{3,6})\b", re.IGNORECASE)


class NotPublishable(ValueError):
    """The result document has nothing to say on this channel (see the module docstring)."""


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _circular_numbers(event: Any) -> list[int]:
    """GCN Circular numbers cited in the event's note (ad-hoc requests say where T0 and
    the position come from: "T0: Fermi GBM trigger time, GCN Circ. 33405; ...")."""
    props = _get(event, "properties") or {}
    note = props.get("note") if isinstance(props, Mapping) else None
    seen: list[int] = []
    for m in _CIRCULAR_NUMBER.finditer(note or ""):
        n = int(m.group(1))
        if n not in seen:
            seen.append(n)
    return seen


def event_title(doc: Mapping[str, Any], event: Any = None) -> str:
    """The event's name as GCN Circular subjects write it.

    ``LIGO/Virgo/KAGRA S230518h`` (IGWN), the upstream name of an ad-hoc request
    (``GRB 230307A``), an IceCube alert's own name, otherwise ``<mission> <instrument>
    trigger <id>`` (``Fermi GBM trigger 745121685``).
    """
    source = _get(event, "source", doc.get("source"))
    upstream = _get(event, "upstream_id", doc.get("upstream_id"))
    if source == "igwn":
        return f"LIGO/Virgo/KAGRA {upstream}"
    if source == "user":
        return str(upstream)
    props = _get(event, "properties") or {}
    name = props.get("event_name") if isinstance(props, Mapping) else None
    if isinstance(name, str) and name:
        return name
    mission = _get(event, "mission", doc.get("mission"))
    instrument = _get(event, "instrument", doc.get("instrument"))
    return " ".join(str(p) for p in (mission, instrument, "trigger", upstream) if p)


def _ref_type(doc: Mapping[str, Any], event: Any) -> str | None:
    messenger = _get(event, "messenger")
    category = _get(event, "category") or ""
    upstream = str(doc.get("upstream_id", ""))
    if messenger == "gw" or doc.get("source") == "igwn":
        return "GW"
    if messenger == "neutrino":
        return "neutrino"
    if category.startswith("grb") or upstream.startswith("GRB"):
        return "GRB"
    return category or None


def _references(doc: Mapping[str, Any], event: Any) -> dict[str, Any]:
    """FollowUp ``reference``: the triggering notice and the circulars (number or list)."""
    refs: dict[str, Any] = {"mma-broker.event": doc["event_id"]}
    props = _get(event, "properties") or {}
    ivorn = props.get("ivorn") if isinstance(props, Mapping) else None
    if isinstance(ivorn, str):
        refs["voevent.ivorn"] = ivorn
    if doc.get("source") == "igwn":
        refs["igwn.gwalert"] = f"{doc['upstream_id']}-{doc.get('alert_type', '')}".rstrip("-")
    numbers = _circular_numbers(event)
    if len(numbers) == 1:
        refs["gcn.circulars"] = numbers[0]
    elif numbers:
        refs["gcn.circulars"] = ", ".join(str(n) for n in numbers)
    return refs


def _localization(doc: Mapping[str, Any]) -> dict[str, Any]:
    loc = doc.get("localization") or {}
    if loc.get("type") == "point":
        out: dict[str, Any] = {"ra": loc["ra"], "dec": loc["dec"]}
        if loc.get("error_radius") is not None:
            out["ra_dec_error"] = loc["error_radius"]
            out["containment_probability"] = loc.get("containment") if loc.get("containment") is not None else 0.9
        return out
    if loc.get("type") == "healpix":
        out = {"ra": loc["ra_max"], "dec": loc["dec_max"]}
        if loc.get("skymap_url"):
            out["healpix_url"] = loc["skymap_url"]
        return out
    return {}


def _spectrum(name: str | None) -> dict[str, Any] | None:
    for model, spec in (("CutoffPowerLaw", SHORT_GRB_SPECTRUM), ("Band", LONG_GRB_SPECTRUM)):
        if name == spec.name:
            out = {"model": model, "alpha": spec.alpha, "epeak": spec.ep_kev, "name": spec.name}
            if model == "Band":
                out["beta"] = spec.beta
            return out
    return {"model": "CutoffPowerLaw", "name": name} if name and "cutoff" in name.lower() else (
        {"model": "Band", "name": name} if name else None)


def _headline(value: Any) -> tuple[float | None, float | None]:
    """(value quoted, containment it holds over) of a limit: a MapLimit dict gives its
    50 % containment value (one direction: its only value, containment None)."""
    if isinstance(value, Mapping):
        if value.get("n_directions", 1) == 1:
            return _finite(value.get("best")), None
        return _finite(value.get("containment_50")), 0.5
    return _finite(value), None


def _limits(spi: Mapping[str, Any]) -> list[dict[str, Any]]:
    result = spi.get("result") or {}
    band = result.get("fluence_band_kev")
    sigma = ((result.get("params") or {}).get("search") or {}).get("upper_limit_sigma", 3.0)
    short, long_ = _spectrum(result.get("short_grb_spectrum")), _spectrum(result.get("long_grb_spectrum"))
    out = []
    for row in result.get("limits") or ():
        limit: dict[str, Any] = {"time_scale": float(row["scale_s"]), "sigma": float(sigma),
                                 "counts": float(row["upper_limit_counts"])}
        for src, dst in (("detection_50_counts", "detection_counts_50pct"),
                         ("detection_90_counts", "detection_counts_90pct")):
            if _finite(row.get(src)) is not None:
                limit[dst] = float(row[src])
        fluence, containment = _headline(row.get("short_grb_fluence_erg_cm2"))
        if fluence is not None:
            limit["fluence"] = fluence
            limit["fluence_spectral_band"] = list(band)
            if short:
                limit["fluence_spectrum"] = short
            limit["localization_containment"] = containment
            calibrated = _get(row.get("short_grb_fluence_erg_cm2"), "calibrated_probability")
            if _finite(calibrated) is not None:
                limit["calibrated_probability"] = float(calibrated)
            for src, dst in (("short_grb_fluence_50pct_detection_erg_cm2", "fluence_detection_50pct"),
                             ("short_grb_fluence_90pct_detection_erg_cm2", "fluence_detection_90pct")):
                value, _ = _headline(row.get(src))
                if value is not None:
                    limit[dst] = value
        flux, containment = _headline(row.get("long_grb_peak_flux_erg_cm2_s"))
        if flux is not None:
            limit["peak_flux"] = flux
            limit.setdefault("fluence_spectral_band", list(band))
            limit.setdefault("localization_containment", containment)
            if long_:
                limit["peak_flux_spectrum"] = long_
        out.append(limit)
    return out


def _response_fraction(spi: Mapping[str, Any]) -> float | None:
    for row in (spi.get("result") or {}).get("limits") or ():
        value = _get(row.get("short_grb_fluence_erg_cm2"), "at_max_probability_response_fraction")
        if _finite(value) is not None:
            return float(value)
    return None


def _spiacs(doc: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return (doc.get("analyses") or {}).get("spiacs")


def _check_publishable(doc: Mapping[str, Any], *, circular: bool) -> None:
    kind, status = doc.get("kind"), doc.get("status")
    if kind == "skipped":
        raise NotPublishable(f"result {doc.get('request_id')} is a skipped row ({status}): never published")
    if status == "failed":
        raise NotPublishable(f"result {doc.get('request_id')} failed ({doc.get('error', '')}): nothing to report")
    if kind == "result":
        spi = _spiacs(doc)
        if spi is None:
            raise NotPublishable(f"result {doc.get('request_id')} has no SPI-ACS analysis")
        if circular and spi.get("no_data") and spi.get("kind") in ("outside_mission", "service_unavailable"):
            raise NotPublishable(f"result {doc.get('request_id')}: no SPI-ACS data ({spi.get('kind')}: "
                                 f"{spi.get('reason')}); nothing for GCN")


def gcn_notice(result_doc: Mapping[str, Any], event: Any = None) -> dict[str, Any]:
    """The GCN notice (unified JSON schema) of one follow-up result or withdrawal.

    Parameters
    ----------
    result_doc : mapping
        A document of ``mma.followup.results`` (``followup_result.json``): ``kind`` result
        or withdrawal.
    event : broker.event.Event or mapping, optional
        The triggering revision (``result_doc["event_id"]``); gives the notice its
        references (VOEvent IVORN, circulars cited in an ad-hoc request's note), the
        trigger type and an IceCube alert's name. Without it the document alone is used.

    Returns
    -------
    dict
        JSON-ready, valid against ``spiacs_followup.schema.json`` (``$schema``):
        ``mission`` INTEGRAL, ``instrument`` SPI-ACS, ``ref_ID`` the trigger,
        ``detection``, ``fap`` (0 when below 1e-15), ``rate_snr`` / ``rate_duration`` (s)
        of the best excess, ``upper_limits`` per time scale (counts; fluence in erg/cm2
        and peak flux in erg/cm2/s in ``fluence_spectral_band`` keV when a direction is
        known), ``no_data`` for a data gap.

    Raises
    ------
    NotPublishable
        Skipped rows and failed results ("no data" results do have a notice, with
        ``status`` no_data and the reason).
    ValueError
        The notice built does not validate (a bug or a document of another version):
        the message names the JSON path.
    """
    doc = result_doc
    _check_publishable(doc, circular=False)
    created = doc["created_at"]
    t0 = doc["t0"]
    tense = "archival" if _parse_time(created) - _parse_time(t0) > ARCHIVAL_AFTER else "current"
    props = _get(event, "properties") or {}
    if isinstance(props, Mapping) and props.get("alert_tense") == "test":
        tense = "test"
    notice: dict[str, Any] = {
        "$schema": NOTICE_SCHEMA_ID,
        "mission": "INTEGRAL",
        "instrument": "SPI-ACS",
        "messenger": "EM",
        "alert_datetime": created,
        "alert_tense": tense,
        "alert_type": "retraction" if doc["kind"] == "withdrawal" else (
            "update" if doc.get("supersedes") else "initial"),
        "event_name": event_title(doc, event),
        "id": doc["request_id"],
        "followup_id": doc["request_id"],
        "status": doc["status"],
        "trigger_time": t0,
        "ref_ID": doc["upstream_id"],
        "reference": _references(doc, event),
    }
    ref_type = _ref_type(doc, event)
    if ref_type:
        notice["ref_type"] = ref_type
    if doc.get("source") not in ("user", None):
        notice["ref_instrument"] = "-".join(str(p) for p in (doc.get("mission"), doc.get("instrument")) if p)
    if doc.get("supersedes"):
        notice["supersedes"] = doc["supersedes"]
    notice.update(_localization(doc))
    if doc["kind"] == "withdrawal":
        notice["withdrawn_followup_ids"] = list(doc.get("withdrawn_request_ids") or [])
        notice["additional_info"] = doc.get("summary_text", "")
        validate_notice(notice)
        return notice
    spi = _spiacs(doc)
    if spi.get("no_data"):
        notice["no_data"] = {"kind": spi["kind"], "reason": spi["reason"]}
    else:
        t0_time = _parse_time(t0)
        lo, hi = spi.get("search_window_s") or (spi.get("result") or {}).get("excess", {}).get("search_window_s")
        notice.update({
            "observation_start": (t0_time + timedelta(seconds=lo)).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "observation_stop": (t0_time + timedelta(seconds=hi)).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "search_time_range": [float(lo), float(hi)],
            "trigger_type": "rate",
            "detection": bool(spi["detected"]),
            "fap": float(spi["fap"]),
            "n_trials": int(spi["n_trials"]),
            "best_offset": float(spi["best_offset_s"]),
            "best_time": spi["best_time"],
            "rate_duration": float(spi["best_timescale_s"]),
            "directions_method": str((spi.get("directions") or {}).get("method", "")),
        })
        snr = _finite(spi.get("best_snr"))
        if snr is not None:
            notice["rate_snr"] = snr
        excess = (spi.get("result") or {}).get("excess") or {}
        if _finite(excess.get("detection_fap")) is not None:
            notice["fap_threshold"] = float(excess["detection_fap"])
        if spi.get("requested_search_window_s"):
            notice["requested_time_range"] = [float(v) for v in spi["requested_search_window_s"]]
        if spi.get("coverage") in ("full", "partial"):
            notice["search_coverage"] = spi["coverage"]
        result = spi.get("result") or {}
        band = result.get("fluence_band_kev")
        if band:
            notice["spectral_band"] = [float(v) for v in band]
            notice["spectral_band_units"] = "keV"
            notice["rate_energy_range"] = [float(v) for v in band]
        fraction = _response_fraction(spi)
        if fraction is not None:
            notice["fraction_of_optimal_response"] = fraction
        if _finite(result.get("response_systematic_fraction")) is not None:
            notice["response_systematic_fraction"] = float(result["response_systematic_fraction"])
        notice["upper_limits"] = _limits(spi)
        if spi.get("flags"):
            notice["flags"] = [str(f) for f in spi["flags"]]
    plot = doc.get("plot") or {}
    if isinstance(plot.get("sha256"), str):
        notice["lightcurve_plot_sha256"] = plot["sha256"]
    notice["additional_info"] = doc.get("summary_text", "")
    validate_notice(notice)
    return notice


# ----------------------------------------------------------------------------- circular


def _circular_settings(settings: Any) -> Any:
    publish = _get(settings, "publish", settings)
    return _get(publish, "gcn_circular", publish)


def _utc_text(iso: str) -> str:
    """``2019-07-01 20:33:06 UTC`` as the circulars write T0 (seconds truncated)."""
    return _parse_time(iso).strftime("%Y-%m-%d %H:%M:%S UTC")


def _stability(v: float) -> str:
    """Words for the background's excess variance, as the circulars grade it (1.1 very
    stable, 1.2-1.3 stable, 1.4-1.5 rather stable, above: somewhat unstable)."""
    if v <= 1.15:
        return "very stable"
    if v <= 1.35:
        return "stable"
    if v <= 1.55:
        return "rather stable"
    return "somewhat unstable"


def _g(value: float) -> str:
    return f"{value:.2g}"


def _one_second(spi: Mapping[str, Any]) -> Mapping[str, Any] | None:
    rows = (spi.get("result") or {}).get("limits") or ()
    return next((r for r in rows if r.get("requested_scale_s") == 1.0 or r.get("scale_s") == 1.0), None)


def _eight_seconds(spi: Mapping[str, Any]) -> Mapping[str, Any] | None:
    rows = (spi.get("result") or {}).get("limits") or ()
    return next((r for r in rows if r.get("requested_scale_s") == 8.0 or r.get("scale_s") == 8.0), None)


def _window_text(spi: Mapping[str, Any]) -> str:
    lo, hi = spi["search_window_s"]
    text = f"T0{lo:+.1f} s to T0{hi:+.1f} s"
    req = spi.get("requested_search_window_s")
    if spi.get("coverage") == "partial" and req:
        text += f" (the data cover only this part of the requested T0{req[0]:+.0f} s to T0{req[1]:+.0f} s)"
    return text


def _containment_words(value: Any) -> str:
    _, containment = _headline(value)
    return (" (within the 50% probability containment region of the source localization)"
            if containment is not None else "")


def _limit_paragraph(spi: Mapping[str, Any], detected: bool) -> str:
    one, eight = _one_second(spi), _eight_seconds(spi)
    result = spi.get("result") or {}
    band = result.get("fluence_band_kev") or [75.0, 2000.0]
    band_text = f"{band[0]:g}-{band[1]:g} keV"
    lead = ("Apart from this excess, we estimate" if detected else
            "We do not detect any significant counterpart and estimate")
    if one is None:
        return ""
    fluence, _ = _headline(one.get("short_grb_fluence_erg_cm2"))
    if fluence is None:
        text = (f"{lead} a 3-sigma upper limit of {one['upper_limit_counts']:.0f} SPI-ACS counts for a burst "
                f"lasting up to 1 s at a given time in the searched interval; without a source direction no "
                f"fluence is given.")
        c50, c90 = _finite(one.get("detection_50_counts")), _finite(one.get("detection_90_counts"))
        if c50 is not None and c90 is not None:
            text += (f" A blind search of the interval detects half of such bursts at {c50:.0f} counts and 90% "
                     f"at {c90:.0f} counts.")
        return text
    text = (f"{lead} a 3-sigma upper limit on the {band_text} fluence of {_g(fluence)} erg/cm^2"
            f"{_containment_words(one.get('short_grb_fluence_erg_cm2'))} for a burst lasting less than 1 s with "
            f"a characteristic short GRB spectrum (an exponentially cut-off power law with "
            f"alpha={SHORT_GRB_SPECTRUM.alpha:g} and Ep={SHORT_GRB_SPECTRUM.ep_kev:g} keV) at a given time in "
            f"the searched interval.")
    f50, _ = _headline(one.get("short_grb_fluence_50pct_detection_erg_cm2"))
    f90, _ = _headline(one.get("short_grb_fluence_90pct_detection_erg_cm2"))
    if f50 is not None and f90 is not None:
        text += (f" A blind search of the whole interval detects such a burst half of the time at "
                 f"{_g(f50)} erg/cm^2 and 90% of the time at {_g(f90)} erg/cm^2.")
    p1, _ = _headline(one.get("long_grb_peak_flux_erg_cm2_s"))
    p8, _ = _headline((eight or {}).get("long_grb_peak_flux_erg_cm2_s"))
    if p1 is not None and p8 is not None:
        text += (f" For a typical long GRB spectrum (Band function with alpha={LONG_GRB_SPECTRUM.alpha:g}, "
                 f"beta={LONG_GRB_SPECTRUM.beta:g} and Ep={LONG_GRB_SPECTRUM.ep_kev:g} keV), the peak flux "
                 f"upper limit is {_g(p1)} ({_g(p8)}) erg/cm^2/s on the 1 s (8 s) time scale in the {band_text} "
                 f"band.")
    return text


def circular_draft(result_doc: Mapping[str, Any], event: Any, settings: Any) -> dict[str, Any]:
    """The GCN Circular draft of one follow-up result.

    Parameters
    ----------
    result_doc : mapping
        A result document of ``mma.followup.results`` (``kind`` result).
    event : broker.event.Event or mapping or None
        The triggering revision (names, references; see :func:`gcn_notice`).
    settings : Settings, PublishSettings or GcnCircularSettings (or a mapping)
        ``gcn_circular.authors`` (the author lines; the collaboration line included);
        ``public_base_url`` / ``artifact_url`` when present, to link the light curve.

    Returns
    -------
    dict
        ``{"subject": str, "body": str, "references": list of str}``: the subject in
        the form of the INTEGRAL circulars, the plain-text body (lines of at most 80
        characters, paragraphs as listed in the module docstring), and the triggering
        notices and circulars the draft refers to (``"GCN Circ. 33405"``, an IVORN,
        ``"igwn.gwalert S230518h-preliminary"``, ``"mma-broker event <id>"``).

    Raises
    ------
    NotPublishable
        Withdrawals, skipped rows, failed results, and no data outside the mission or
        with a data service down.
    """
    import textwrap

    doc = result_doc
    if doc.get("kind") == "withdrawal":
        raise NotPublishable("a withdrawal has no circular: retract a sent circular by hand")
    _check_publishable(doc, circular=True)
    cs = _circular_settings(settings)
    authors = str(_get(cs, "authors", "") or "").strip()
    title = event_title(doc, event)
    spi = _spiacs(doc)
    numbers = _circular_numbers(event)
    refs_text = f" (GCN {', '.join(str(n) for n in numbers)})" if numbers else ""
    wrap = textwrap.TextWrapper(width=72, break_on_hyphens=False)
    paragraphs = [authors or AUTHORS_MISSING]
    t0 = doc["t0"]
    if spi.get("no_data"):
        subject = f"{title}: no INTEGRAL SPI-ACS data at the time of the event"
        paragraphs.append(wrap.fill(
            f"We looked for INTEGRAL/SPI-ACS data (following [1]) to search for a prompt gamma-ray counterpart "
            f"of {title}{refs_text}. At the time of the event ({_utc_text(t0)}, hereafter T0) there are none: "
            f"{spi['reason']}."))
    else:
        detected = bool(spi["detected"])
        if detected:
            subject = (f"{title}: INTEGRAL SPI-ACS detection" if _ref_type(doc, event) == "GRB"
                       else f"{title}: counterpart candidate in INTEGRAL SPI-ACS prompt observation")
        else:
            subject = f"{title}: No counterpart candidates in INTEGRAL SPI-ACS prompt observation"
        paragraphs.append(wrap.fill(
            f"Using INTEGRAL/SPI-ACS data (following [1]) we have searched for a prompt gamma-ray counterpart "
            f"of {title}{refs_text}."))
        state = (doc.get("analyses") or {}).get("coverage", {}).get("perigee_check", "")
        if state.startswith("passed"):
            state_text = "INTEGRAL was outside the radiation belts"
        else:
            state_text = "INTEGRAL was operating (whether it was near a radiation-belt passage was not checked)"
        fraction = _response_fraction(spi)
        direction = ""
        if fraction is not None:
            direction = (f" Towards the most probable source direction the SPI-ACS response was "
                         f"{100 * fraction:.0f}% of optimal.")
        elif str((spi.get("directions") or {}).get("method", "")).startswith("none"):
            direction = " The spacecraft attitude at T0 was not available, so no source direction was used."
        paragraphs.append(wrap.fill(f"At the time of the event ({_utc_text(t0)}, hereafter T0), {state_text}."
                                    f"{direction}"))
        one = _one_second(spi)
        v = _finite((one or {}).get("excess_variance_factor"))
        if v is not None:
            req = spi.get("requested_search_window_s") or spi["search_window_s"]
            half = max(abs(float(req[0])), abs(float(req[1])))
            paragraphs.append(wrap.fill(
                f"The background within +/-{half:g} s around the event was {_stability(v)} (excess variance "
                f"{v:.1f}, measured on the 1 s time scale)."))
        scales = [r["scale_s"] for r in ((spi.get("result") or {}).get("excess") or {}).get("scales") or ()]
        scale_text = f" on time scales from {min(scales):g} s to {max(scales):g} s" if scales else ""
        paragraphs.append(wrap.fill(
            f"We have searched the SPI-ACS light curve for impulsive events (as described in [2]){scale_text} in "
            f"the interval {_window_text(spi)}."))
        if detected:
            snr = _finite(spi.get("best_snr"))
            paragraphs.append(wrap.fill(
                f"We detect a significant excess starting at T0{spi['best_offset_s']:+.2f} s "
                f"({spi['best_time'][11:23]} UTC) on the {spi['best_timescale_s']:g} s time scale"
                + (f", with S/N {snr:.1f}" if snr is not None else "")
                + f" and a false-alarm probability of {fap_text(float(spi['fap']))} after {spi['n_trials']} "
                  f"trials. Times are at INTEGRAL, not corrected to the geocentre."))
        else:
            snr = _finite(spi.get("best_snr"))
            paragraphs.append(wrap.fill(
                f"The most significant excess, at T0{spi['best_offset_s']:+.2f} s on the "
                f"{spi['best_timescale_s']:g} s time scale" + (f" with S/N {snr:.1f}" if snr is not None else "")
                + f", has a false-alarm probability of {fap_text(float(spi['fap']))} after {spi['n_trials']} "
                  f"trials: not significant."))
        limit = _limit_paragraph(spi, detected)
        if limit:
            paragraphs.append(wrap.fill(limit))
        result = spi.get("result") or {}
        if _finite(result.get("response_systematic_fraction")) is not None:
            paragraphs.append(wrap.fill(
                f"The conversion of counts to fluence has a systematic uncertainty of "
                f"{100 * result['response_systematic_fraction']:.0f}% (1 sigma)."))
    plot = doc.get("plot") or {}
    artifact_url = _get(_get(settings, "publish", settings), "artifact_url")
    if callable(artifact_url) and isinstance(plot.get("sha256"), str):
        paragraphs.append(f"The SPI-ACS light curve:\n{artifact_url(plot['sha256'])}")
    paragraphs.append("All values are preliminary and were computed automatically.")
    paragraphs.append("\n".join(REFERENCES))

    references = [f"GCN Circ. {n}" for n in numbers]
    notice_refs = _references(doc, event)
    if "voevent.ivorn" in notice_refs:
        references.append(notice_refs["voevent.ivorn"])
    if "igwn.gwalert" in notice_refs:
        references.append(f"igwn.gwalert {notice_refs['igwn.gwalert']}")
    references.append(f"mma-broker event {doc['event_id']}")
    return {"subject": subject, "body": "\n\n".join(paragraphs) + "\n", "references": references}
