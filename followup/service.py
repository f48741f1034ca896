"""One INTEGRAL follow-up of one Event: availability, data, analyses, report, lineage.

:func:`run_followup` is pure orchestration over injected collaborators (data sources,
attitude source, ISGRI client, provenance cache); it does no Kafka or database I/O.
Every step is a lineage-keyed cache entry (:mod:`followup.cache`, the INTEGRAL online
analysis idea): the same request twice computes nothing the second time, and the
result lists each step's key and whether it was a hit.

Steps (names as in the lineage): ``integral.coverage`` (mission span 2002-10-17 …
2025-02-28 and the perigee / radiation-belt check, on every request: the orbit file of
the attitude source where it covers T0, the measured belt passages of 2002-2019
otherwise; when nothing covers T0 the value says ``"perigee_check": "not run: ..."``),
``lightcurve.fetch`` (SPI-ACS OGIP FITS from the configured source, over T0 ± the search
window plus the background the search needs beyond it),
``attitude.pointing`` (INTEGRAL X/Z axes at T0), ``spiacs.analysis`` (excess search,
limits over the source directions, PNG plot, text), ``ibis.visibility`` and
``isgri.products`` (MMODA, only when IBIS saw the event).

"No data" (outside the mission, a gap, an unreachable service) is a result, never an
exception. Transient "service unavailable" outcomes are not cached, so a later request
tries the service again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from broker.event import Event
from followup import steps
from followup.availability import NoData, integral_coverage
from followup.cache import (
    LineageRecord, ProvenanceCache, StepOutput, canonical_json, code_version, input_key, lineage_key,
    source_identity,
)
from followup.messages import utc_now

logger = logging.getLogger(__name__)

ANALYSES = ("spiacs", "isgri")


@dataclass(frozen=True)
class FollowupParams:
    """Parameters of :func:`run_followup`.

    Attributes
    ----------
    window_s : float
        Half-width of the search window around T0, s. The light curve is fetched over
        a longer span (:func:`followup.steps.required_half_span_s`) for the background.
    max_sky_samples : int
        Sky maps: the highest-probability pixels used as source directions.
    min_ibis_prob : float
        Probability in the IBIS coded field above which ISGRI products are requested.
    """

    window_s: float = 300.0
    max_sky_samples: int = 1000
    min_ibis_prob: float = 1e-3


@dataclass
class FollowupSources:
    """Where data come from (built from settings by :func:`followup.build.build_sources`).

    Attributes
    ----------
    lightcurves : followup.datasources.LightCurveSource
    attitude : followup.attitude.AttitudeSource or None
        None: no attitude, so no spacecraft-frame directions and no IBIS visibility.
    isgri : followup.isgri.IsgriClient or None
        None: ISGRI products are not requested.
    """

    lightcurves: Any
    attitude: Any = None
    isgri: Any = None


@dataclass(frozen=True)
class StepRecord:
    """One step of the lineage: its cache key and whether it was served from the cache."""

    step: str
    key: str
    hit: bool
    cached: bool
    code_version: str


@dataclass
class FollowupResult:
    """Outcome of :func:`run_followup`.

    Attributes
    ----------
    event_id, upstream_id, t0_utc : str
    status : {"done", "no_data"}
        ``no_data`` when no requested analysis produced a measurement.
    analyses : dict
        Per analysis (``spiacs``, ``ibis_visibility``, ``isgri``): the structured
        result, or ``{"no_data": true, "kind", "reason"}``. ``coverage`` (when INTEGRAL
        could observe at T0) is ``{"covered": true, "perigee_check": "passed: ..." or
        "not run: ..."}``; ``attitude`` the no-data record when no attitude covers T0.
    summary_text : str
        Plain-text report in the manner of the INTEGRAL circulars.
    plot_png : bytes or None
        SPI-ACS light-curve plot.
    lineage : list of StepRecord
    """

    event_id: str
    upstream_id: str
    t0_utc: str
    status: str
    analyses: dict[str, Any]
    summary_text: str
    plot_png: bytes | None = None
    lineage: list[StepRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form without the PNG bytes (their sha256 and size instead)."""
        plot = None if self.plot_png is None else {
            "sha256": hashlib.sha256(self.plot_png).hexdigest(), "bytes": len(self.plot_png)}
        return {"event_id": self.event_id, "upstream_id": self.upstream_id, "t0": self.t0_utc,
                "status": self.status, "analyses": self.analyses, "summary_text": self.summary_text,
                "plot": plot, "lineage": [asdict(r) for r in self.lineage]}


class _Steps:
    """Runs steps through the cache and records the lineage."""

    def __init__(self, cache: ProvenanceCache) -> None:
        self.cache = cache
        self.lineage: list[StepRecord] = []

    def run(self, step: str, inputs: Mapping[str, Any], params: Mapping[str, Any], code: str,
            fn: Callable[[], StepOutput], keep: Callable[[Any], bool] = lambda value: True) -> tuple[Any, dict]:
        key = lineage_key(step, inputs, params, code)
        found = self.cache.get(key)
        if found is not None:
            self.cache.record_hit(key)
            self.lineage.append(StepRecord(step, key, True, True, code))
            return found.value, dict(found.products)
        out = fn()
        value = json.loads(canonical_json(out.value))
        stored = keep(value)
        if stored:
            lineage = LineageRecord(step=step, key=key, input_keys={n: input_key(v) for n, v in inputs.items()},
                                    params=json.loads(canonical_json(params)), code_version=code,
                                    created_at=utc_now())
            self.cache.put(key, StepOutput(value, dict(out.products)), lineage)
        self.lineage.append(StepRecord(step, key, False, stored, code))
        return value, dict(out.products)


def _no_data_dicts(value: Any) -> bool:
    return isinstance(value, dict) and value.get("no_data") is True


def run_followup(event: Event, analyses: Sequence[str], sources: FollowupSources, cache: ProvenanceCache,
                 params: FollowupParams = FollowupParams(),
                 skymap: tuple[np.ndarray, np.ndarray] | None = None) -> FollowupResult:
    """Run the INTEGRAL follow-up of one Event.

    Parameters
    ----------
    event : broker.event.Event
        The alert revision; ``time`` is T0.
    analyses : sequence of {"spiacs", "isgri"}
    sources : FollowupSources
    cache : followup.cache.ProvenanceCache
    params : FollowupParams
    skymap : (uniq, probdensity) or None
        Full multi-order map for HEALPix events, as stored by the enrich stage
        (:func:`followup.worker.stored_skymap`).

    Returns
    -------
    FollowupResult
        ``status="no_data"`` with reasons when INTEGRAL has no data; never raises for
        missing data or unreachable services.

    Raises
    ------
    ValueError
        Unknown analysis name.
    """
    unknown = set(analyses) - set(ANALYSES)
    if unknown:
        raise ValueError(f"unknown follow-up analysis {sorted(unknown)}; known: {', '.join(ANALYSES)}")
    run = _Steps(cache)
    t0 = event.time
    out: dict[str, Any] = {}

    orbit_unavailable = False

    def coverage_step() -> StepOutput:
        nonlocal orbit_unavailable
        orbit = sources.attitude.orbit_at(t0) if sources.attitude is not None else NoData(
            "no INTEGRAL orbit/attitude source is configured", "data_gap")
        orbit_unavailable = isinstance(orbit, NoData) and orbit.kind == "service_unavailable"
        return StepOutput(integral_coverage(t0, orbit))

    coverage, _ = run.run("integral.coverage", {"t0": t0, "orbit": source_identity(sources.attitude)}, {},
                          code_version(integral_coverage), coverage_step, keep=lambda v: not orbit_unavailable)
    plot_png = None
    if coverage.get("no_data"):
        for name in analyses:
            out[name] = coverage
    else:
        out["coverage"] = coverage
        pointing = steps.pointing(run, sources.attitude, t0)
        localization = event.localization
        if "spiacs" in analyses:
            out["spiacs"], plot_png = steps.spiacs(run, sources.lightcurves, event, pointing, skymap, params,
                                                   coverage)
        if "isgri" in analyses:
            out["ibis_visibility"], out["isgri"] = steps.ibis_isgri(run, sources.isgri, event, pointing,
                                                                    localization, skymap, params)
        if isinstance(pointing, dict) and pointing.get("no_data"):
            out["attitude"] = pointing
    measured = [k for k, v in out.items() if k not in ("attitude", "coverage") and not _no_data_dicts(v)]
    status = "done" if measured else "no_data"
    text = steps.summary_text(event, out)
    logger.info("follow-up of %s: %s (%s)", event.id, status,
                ", ".join(f"{r.step}{' hit' if r.hit else ''}" for r in run.lineage))
    return FollowupResult(event.id, event.upstream_id, t0, status, out, text, plot_png, run.lineage)
