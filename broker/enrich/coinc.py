"""Cross-messenger coincidences: GW–GRB (RAVEN), GW–neutrino, GW/GRB–optical.

Pure functions over :class:`~broker.event.Event` objects and sky maps
(:class:`~broker.skymap.MultiOrderSkyMap`); no I/O, no Kafka, no database. The enrich
stage and ``mma-broker coinc`` (:mod:`broker.enrich.cli_coinc`) call them.

GW–GRB, the method of RAVEN (Urban 2016, PhD thesis, UW–Milwaukee; Cho 2019,
LIGO-T1900297; code: ``ligo-raven`` 3.3, ``ligo/raven/search.py`` on PyPI, from
git.ligo.org/lscsoft/raven; LVK user guide, "RAVEN")
----------------------------------------------------------------------------------
* **Time window** on ``dt = t_ext − t_gw``: [−1, +5] s for a CBC (compact binary
  merger) candidate, [−60, +600] s for an unmodelled burst candidate (gwcelery's
  ``raven_coincidence_windows`` ``GRB_CBC = [-5, 1]`` and ``GRB_Burst = [-600, 60]``,
  written there as ``t_gw − t_ext``). Both ends included, as GraceDB's ``start .. end``.
* **Temporal coincidence FAR** (``coinc_far``): ``FAR_gw · R_ext · (th − tl)``, with
  ``R_ext`` the rate of independent GRB discoveries: ligo-raven's default
  ``gcn_rate`` is 310 / yr (Fermi 236, Swift 65, INTEGRAL ~5, AGILE-MCAL ~5); 375 / yr
  for its ``SubGRB`` search; gwcelery's production configuration passes 305 / yr
  (``raven_ext_rates``). A setting here (:class:`CoincidenceSettings`).
* **Joint (spatio-temporal) FAR**: temporal FAR / ``I_Ω``, the sky-map overlap integral
  of Ashton et al. 2018, ApJ 860, 6, eq. (8) with an isotropic prior
  ``p(Ω|H₀) = 1/4π``::

      I_Ω = ∫ p_gw(Ω) p_ext(Ω) / p(Ω|H₀) dΩ = 4π ∫ p_gw p_ext dΩ / (∫ p_gw dΩ ∫ p_ext dΩ)

  1 for an isotropic map, > 1 when the maps agree, → 0 when they do not overlap. For an
  external *point* (a Swift position, a neutrino track) ``p_ext`` is a Dirac delta and
  ``I_Ω = 4π p_gw(Ω_ext) / ∫ p_gw dΩ``: the GW density at the point relative to the
  isotropic density.

:func:`overlap_integral` computes ``I_Ω`` for every combination of a multi-order map
(``ORDERING = NUNIQ``), a flat all-sky map (``RING``/``NESTED``; read into NUNIQ form by
:func:`broker.skymap.read_skymap`) and a point, in two discretizations:

``method="raven"`` (default)
    The numbers ``ligo.raven.search.skymap_overlap_integral`` gives, branch by branch:
    multi-order × multi-order pairs each GW pixel with the external pixel whose centre
    is nearest to its centre (``SkyCoord.match_to_catalog_sky``, reproduced here with
    the same ERFA unit vectors and the same SciPy KD-tree, so ties between equidistant
    centres resolve the same way); multi-order × flat takes the flat pixel holding each
    GW pixel's centre; flat × flat is exact on the finer grid (``healpy.ud_grade``);
    flat × point takes the pixel holding the point. Multi-order × point is the
    published formula (the GW pixel *holding* the point): ligo-raven 3.3's branch
    raises ``UnitConversionError`` when ``PROBDENSITY`` is a plain array (its
    normalization then carries sr), and when it runs (an astropy column in sr⁻¹, as
    gwcelery passes it) it takes the pixel whose *centre* is nearest, which differs
    from the formula for 5–21 % of positions drawn from real GW maps
    (:func:`nearest_centre_point_overlap`; docs/coincidences.md). Combinations
    ligo-raven does not take (flat GW × multi-order external, partial-sky maps) use
    ``"exact"``.
``method="exact"``
    The integral of the two piecewise-constant maps, exactly: over the common
    refinement of the two pixelizations (HEALPix pixels of two orders are nested or
    disjoint, so each pixel of one map is summed with the pixels of the other inside
    it, or with the one holding it: :func:`broker.enrich.moc.product_integral`), and
    for a point the density of the pixel that *contains* it (0 in no pixel of a
    partial-sky map).

Which pixel holds a position, and the credible level there, come from
:mod:`broker.enrich.moc` and :func:`broker.enrich.crossmatch.prepare`, the code the
cross-match and the localization store use.

GW–neutrino
-----------
IceCube Gold and Bronze track alerts (single_neutrino_alerts, AMON ``ICECUBE_ASTROTRACK``
VOEvents and notices) within ±500 s of the GW merger time, the window of IceCube's
LVK Nu Track Search (its notices' ``observation_start``/``observation_stop`` span
``trigger_time ± 500 s``; IceCube Collaboration 2023, ApJ 944, 80).
:func:`gw_neutrino_coincidences`; :func:`is_nu_track_search_for` links IceCube's own
LVK Nu Track Search notice to its superevent.

GW/GRB–optical
--------------
ZTF candidates first detected after T0 and within ``optical_days`` of it, inside the
trigger's credible region (``optical_level``, 90 %), with no detection before T0 in
their history (``jdstarthist`` and ``prv_candidates``): :func:`optical_verdict`.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from broker.enrich.coinc_settings import (  # noqa: F401 - re-exported: defined without numpy for [enrich]
    BURST_WINDOW_S, CBC_WINDOW_S, GWCELERY_GRB_RATE_PER_YR, NEUTRINO_WINDOW_S, RAVEN_GRB_RATE_PER_YR,
    RAVEN_SUBGRB_RATE_PER_YR, YEAR_S, CoincidenceSettings, Method, Search,
)
from broker.enrich.moc import PixelIndex, level_ipix, pixel_area_sr, product_integral
from broker.errors import BrokerError
from broker.event import Event, PointLocalization
from broker.skymap import MultiOrderSkyMap

FOUR_PI = 4.0 * math.pi
_JD_UNIX_EPOCH = 2440587.5


class CoincidenceError(BrokerError):
    """A coincidence cannot be computed: a sky map with NaN, negative or all-zero
    probability, overlapping pixels, two points, a window with ``lower > upper``."""


# ------------------------------------------------------------------ sky inputs
@dataclass(frozen=True)
class PointSource:
    """A localization taken as a point (a Dirac delta on the sky).

    Attributes
    ----------
    ra_deg, dec_deg : float
        ICRS position, deg.
    """

    ra_deg: float
    dec_deg: float


Sky = MultiOrderSkyMap | PointSource


def is_flat(sky: MultiOrderSkyMap) -> bool:
    """True for a flat all-sky map (RAVEN's "flat" branches): read from a ``RING`` or
    ``NESTED`` file, or without ``ORDERING`` one order covering the whole sky."""
    ordering = str(sky.meta.get("ORDERING", "")).upper()
    level = _levels(sky.uniq)
    one_order = level.size > 0 and level.min() == level.max()
    full = one_order and sky.uniq.size == 12 * 4 ** int(level[0])
    if ordering in ("RING", "NESTED", "NEST"):
        return bool(full)
    return bool(full) and ordering != "NUNIQ"


def _levels(uniq: np.ndarray) -> np.ndarray:
    return level_ipix(uniq)[0]


def _checked(sky: MultiOrderSkyMap, what: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(uniq, density sr⁻¹, total probability) after the checks RAVEN leaves out."""
    uniq = np.asarray(sky.uniq, dtype=np.int64)
    rho = np.asarray(sky.probdensity, dtype=np.float64)
    if uniq.ndim != 1 or uniq.shape != rho.shape or not uniq.size:
        raise CoincidenceError(f"{what} sky map: {uniq.size} pixels for {rho.size} densities")
    if np.isnan(rho).any():
        raise CoincidenceError(f"{what} sky map: probability density has NaN values")
    if not np.isfinite(rho).all() or rho.min() < 0:
        raise CoincidenceError(f"{what} sky map: probability density has negative or infinite values")
    try:
        level, _ = level_ipix(uniq)
    except ValueError as exc:
        raise CoincidenceError(f"{what} sky map: {exc}") from None
    with np.errstate(over="ignore"):
        total = float(np.sum(rho * pixel_area_sr(level)))
    if not (math.isfinite(total) and total > 0):
        raise CoincidenceError(f"{what} sky map: total probability is {total:g}; no localization")
    return uniq, rho, total


def density_at(sky: MultiOrderSkyMap, ra_deg: Any, dec_deg: Any) -> np.ndarray:
    """Probability density of the pixel holding each position; 0 where no pixel does.

    The look-up of :class:`broker.enrich.moc.PixelIndex` (ligo.skymap's, at the map's
    deepest order), which also serves partial-sky maps.

    Parameters
    ----------
    sky : MultiOrderSkyMap
        Full- or partial-sky map.
    ra_deg, dec_deg : float or array_like, shape (m,)
        ICRS positions, deg.

    Returns
    -------
    numpy.ndarray, shape (m,)
        Density, sr⁻¹, as stored (not renormalized); 0.0 for a position in no pixel.

    Raises
    ------
    ValueError
        For an invalid NUNIQ index.
    """
    pixel, inside = PixelIndex.of(sky.uniq).locate(ra_deg, dec_deg)
    return np.where(inside, np.asarray(sky.probdensity, dtype=np.float64)[pixel], 0.0)


def credible_level_at(sky: MultiOrderSkyMap, ra_deg: Any, dec_deg: Any) -> np.ndarray:
    """Smallest credible level whose region contains each position: ligo.skymap's ``searched_prob``.

    :meth:`broker.enrich.crossmatch.PreparedSkyMap.searched_prob_at` on the prepared
    map (the greedy credible regions of ``ligo.skymap.postprocess.crossmatch``, Singer &
    Price 2016, PRD 93, 024013): pixels by descending density, ties by descending NUNIQ,
    flat maps merged as ``read_sky_map(..., moc=True)`` merges them; the cumulative
    probability up to and including the pixel holding the position, not renormalized
    (a map whose probabilities sum to 0.999 has no position above 0.999).
    The same numbers as the stored tiles' ``cum_prob`` (:mod:`broker.enrich.store`), so
    an optical candidate's verdict and the database's region query agree.

    Parameters
    ----------
    sky : MultiOrderSkyMap
        Full- or partial-sky map.
    ra_deg, dec_deg : float or array_like, shape (m,)
        ICRS positions, deg.

    Returns
    -------
    numpy.ndarray, shape (m,)
        0..1: ``searched_prob`` capped at 1 (the total of a normalized map may exceed 1
        by rounding, ~1e-15); 1.0 for a position in no pixel of a partial-sky map
        (outside every credible region).

    Raises
    ------
    CoincidenceError
        For a map with NaN, negative or all-zero density, or pixels that cover more
        than the sky.
    """
    from broker.enrich.crossmatch import prepare
    from broker.errors import DecodeError

    _checked(sky, "trigger")
    key = id(sky)
    hit = _PREPARED.get(key)
    if hit is None or hit[0]() is not sky:
        try:
            hit = (weakref.ref(sky), prepare(sky))
        except DecodeError as exc:
            raise CoincidenceError(f"trigger {exc}") from None
        _PREPARED.pop(key, None)
        _PREPARED[key] = hit
        while len(_PREPARED) > _PREPARED_MAX:
            _PREPARED.pop(next(iter(_PREPARED)))
    return np.minimum(hit[1].searched_prob_at(ra_deg, dec_deg), 1.0)


# the maps credible_level_at prepared last, by identity (an optical verdict per candidate asks
# the same trigger map again); weak references, so a map is never kept alive here
_PREPARED: dict[int, tuple[Any, Any]] = {}
_PREPARED_MAX = 4


# ------------------------------------------------------------------ overlap integral
def _centres(uniq: np.ndarray) -> tuple[Any, Any]:
    from astropy_healpix.core import healpix_to_lonlat

    level, ipix = level_ipix(uniq)
    return healpix_to_lonlat(ipix, np.left_shift(1, level), order="nested")


def _unit_vectors(lon_rad: np.ndarray, lat_rad: np.ndarray) -> np.ndarray:
    import erfa

    return erfa.s2c(lon_rad, lat_rad)  # what astropy's UnitSphericalRepresentation.to_cartesian calls


def _kdtree(xyz: np.ndarray):
    from scipy.spatial import KDTree

    # astropy.coordinates.matching._get_cartesian_kdtree builds exactly this tree
    return KDTree(xyz, compact_nodes=False, balanced_tree=False)


def _pixel_area_sr(uniq: np.ndarray) -> np.ndarray:
    return pixel_area_sr(_levels(uniq))


def _exact_maps(a: MultiOrderSkyMap, b: MultiOrderSkyMap) -> float:
    """``4π ∫ρ_a ρ_b dΩ / (∫ρ_a dΩ ∫ρ_b dΩ)`` over the common refinement of the two maps
    (:func:`broker.enrich.moc.product_integral`)."""
    ua, ra_, na = _checked(a, "GW")
    ub, rb, nb = _checked(b, "external")
    try:
        integral = product_integral(ua, ra_, ub, rb, names=("GW", "external"))
    except ValueError as exc:
        raise CoincidenceError(str(exc)) from None
    return FOUR_PI * integral / (na * nb)


def _exact_point(a: MultiOrderSkyMap, p: PointSource) -> float:
    _, _, total = _checked(a, "GW")
    return float(FOUR_PI * density_at(a, p.ra_deg, p.dec_deg)[0] / total)


def _raven_moc_moc(a: MultiOrderSkyMap, b: MultiOrderSkyMap) -> float:
    ua, ra_, na = _checked(a, "GW")
    ub, rb, nb = _checked(b, "external")
    lon_a, lat_a = _centres(ua)
    lon_b, lat_b = _centres(ub)
    _, idx = _kdtree(_unit_vectors(lon_b.to_value("rad"), lat_b.to_value("rad"))).query(
        _unit_vectors(lon_a.to_value("rad"), lat_a.to_value("rad")), 1)
    return float(np.sum(ra_ * _pixel_area_sr(ua) * rb[idx] * FOUR_PI / na / nb))


def _raven_moc_flat(a: MultiOrderSkyMap, b: MultiOrderSkyMap) -> float:
    from astropy_healpix.core import lonlat_to_healpix

    ua, ra_, na = _checked(a, "GW")
    ub, rb, nb = _checked(b, "external")
    level_b = int(_levels(ub[:1])[0])
    lon_a, lat_a = _centres(ua)
    # flat map: full sky, one order; sorted by NUNIQ, position = nested ipix
    rho_b = rb[np.argsort(ub, kind="stable")]
    ext_ind = lonlat_to_healpix(lon_a, lat_a, 1 << level_b, order="nested")
    return float(np.sum(ra_ * _pixel_area_sr(ua) * rho_b[ext_ind] * FOUR_PI / na / nb))


def nearest_centre_point_overlap(a: MultiOrderSkyMap, p: PointSource) -> float:
    """ligo-raven 3.3's multi-order × point branch as it runs when ``PROBDENSITY`` is a
    column in sr⁻¹: ``4π ρ_j / ∫p_gw`` with ``j`` the GW pixel whose *centre* is nearest
    to the point. Not the published formula (the pixel *holding* the point), which
    :func:`overlap_integral` uses; kept for comparison (tests, ``bench_coinc.py``).

    Raises
    ------
    CoincidenceError
        For a map with NaN, negative or all-zero density.
    """
    ua, ra_, na = _checked(a, "GW")
    lon_a, lat_a = _centres(ua)
    point = _unit_vectors(np.deg2rad(p.ra_deg), np.deg2rad(p.dec_deg))
    # one query: a scan of squared chord distances finds the KD-tree's nearest centre
    # without building the tree (ties, equidistant centres, are measure-zero for a point)
    d2 = np.sum(np.square(_unit_vectors(lon_a.to_value("rad"), lat_a.to_value("rad")) - point), axis=1)
    return float(ra_[int(np.argmin(d2))] * FOUR_PI / na)


def overlap_integral(gw: Sky, ext: Sky, method: Method = "raven") -> float:
    """Sky-map overlap integral ``I_Ω`` of Ashton et al. 2018 (ApJ 860, 6, eq. 8).

    Parameters
    ----------
    gw, ext : MultiOrderSkyMap or PointSource
        The two localizations; at most one may be a point. Maps need not be
        normalized (each is divided by its total probability, as in ligo-raven).
    method : {"raven", "exact"}
        ``"raven"``: ligo-raven 3.3's discretization of two maps in each branch it has
        (module docstring); ``"exact"``: the exact integral of the piecewise-constant
        maps. A point uses the published formula in both.

    Returns
    -------
    float
        ``I_Ω``, dimensionless (1 for an isotropic map; 0 for disjoint maps).

    Raises
    ------
    CoincidenceError
        Two points; a map with NaN, negative or infinite densities, zero total
        probability, or overlapping pixels.
    """
    if isinstance(gw, PointSource) and isinstance(ext, PointSource):
        raise CoincidenceError("overlap integral of two points is undefined (two Dirac deltas)")
    if isinstance(gw, PointSource):  # symmetric: I_Ω(point, map) = I_Ω(map, point)
        gw, ext = ext, gw
    if method not in ("raven", "exact"):
        raise CoincidenceError(f"overlap method {method!r}: expected 'raven' or 'exact'")
    if isinstance(ext, PointSource):
        # the published formula in both methods (ligo-raven's flat × point is this too)
        return _exact_point(gw, ext)
    if method == "raven":
        gw_flat, ext_flat = is_flat(gw), is_flat(ext)
        if not gw_flat and ext_flat:
            return _raven_moc_flat(gw, ext)
        if not gw_flat and not ext_flat and _is_tiling(gw) and _is_tiling(ext):
            return _raven_moc_moc(gw, ext)
        # flat × flat: ud_grade to the finer grid is the exact integral
    return _exact_maps(gw, ext)


def _is_tiling(sky: MultiOrderSkyMap) -> bool:
    """A multi-order map that tiles the whole sky (as BAYESTAR and Swift maps do)."""
    area = float(np.sum(_pixel_area_sr(np.asarray(sky.uniq, dtype=np.int64))))
    return abs(area - FOUR_PI) < 1e-9 * FOUR_PI


# ------------------------------------------------------------------ FARs and GW–GRB
def temporal_far_hz(gw_far_hz: float, window_s: tuple[float, float], rate_hz: float) -> float:
    """RAVEN's temporal coincidence FAR: ``FAR_gw · R_ext · (th − tl)``, Hz.

    Parameters
    ----------
    gw_far_hz : float
        FAR of the GW candidate, Hz.
    window_s : (float, float)
        The coincidence window (tl, th), s.
    rate_hz : float
        Rate of independent external triggers, Hz.
    """
    return float(gw_far_hz) * float(rate_hz) * (window_s[1] - window_s[0])


def joint_far_hz(temporal_far: float, overlap: float | None) -> float | None:
    """RAVEN's spatio-temporal FAR: temporal FAR / ``I_Ω``; None without an overlap
    integral or when ``I_Ω`` is 0 (disjoint maps: no joint FAR, ligo-raven's
    "Sky maps minimally overlap")."""
    if overlap is None or not overlap > 0:
        return None
    return temporal_far / overlap


def seconds_between(t_gw: str, t_ext: str) -> float:
    """``t_ext − t_gw`` in s, from two ``Event.time`` strings (ISO 8601 UTC, ``Z``)."""
    def parse(t: str) -> datetime:
        return datetime.fromisoformat(t.removesuffix("Z")).replace(tzinfo=timezone.utc)

    return (parse(t_ext) - parse(t_gw)).total_seconds()


def search_of(gw: Event) -> Search:
    """``"burst"`` for a GW candidate of group Burst, else ``"cbc"``."""
    return "burst" if str(gw.properties.get("group", "")).lower() == "burst" else "cbc"


def _kind(sky: Sky | None) -> str | None:
    if sky is None:
        return None
    if isinstance(sky, PointSource):
        return "point"
    return "flat" if is_flat(sky) else "multiorder"


@dataclass(frozen=True)
class GwGrbCoincidence:
    """The outcome of :func:`gw_grb_coincidence` (``mma-broker coinc --json``).

    Attributes
    ----------
    coincident : bool
        ``dt_s`` inside ``window_s`` (ends included).
    dt_s : float
        ``t_ext − t_gw``, s.
    window_s : (float, float)
    overlap_integral : float or None
        ``I_Ω``; None when either side has no localization.
    temporal_far_hz, joint_far_hz : float or None
        RAVEN's FARs, Hz; None when not coincident, without a GW FAR, or (joint) without
        an overlap integral or with ``I_Ω = 0``.
    """

    gw_id: str
    ext_id: str
    search: Search
    coincident: bool
    dt_s: float
    window_s: tuple[float, float]
    overlap_integral: float | None
    temporal_far_hz: float | None
    joint_far_hz: float | None
    gw_far_hz: float | None
    ext_rate_hz: float
    overlap_method: Method
    gw_localization: str | None
    ext_localization: str | None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists, no NaN)."""
        return {
            "coincident": self.coincident, "dt_s": self.dt_s, "window_s": list(self.window_s),
            "overlap_integral": self.overlap_integral, "temporal_far_hz": self.temporal_far_hz,
            "joint_far_hz": self.joint_far_hz, "search": self.search, "gw_id": self.gw_id, "ext_id": self.ext_id,
            "gw_far_hz": self.gw_far_hz, "ext_rate_hz": self.ext_rate_hz, "overlap_method": self.overlap_method,
            "gw_localization": self.gw_localization, "ext_localization": self.ext_localization,
            "notes": list(self.notes),
        }


def gw_grb_coincidence(gw: Event, ext: Event, gw_sky: Sky | None, ext_sky: Sky | None, *,
                       search: Search | None = None,
                       settings: CoincidenceSettings | None = None) -> GwGrbCoincidence:
    """GW–GRB coincidence of one GW candidate and one external trigger, RAVEN's way.

    Parameters
    ----------
    gw : Event
        The GW alert (``messenger == "gw"``); its FAR is ``properties["far_hz"]``.
    ext : Event
        The external (GRB) trigger.
    gw_sky, ext_sky : MultiOrderSkyMap, PointSource or None
        Their localizations (None: no overlap integral, no joint FAR).
    search : {"cbc", "burst"}, optional
        Which window; from the GW candidate's ``group`` when None (:func:`search_of`).
    settings : CoincidenceSettings, optional

    Returns
    -------
    GwGrbCoincidence

    Raises
    ------
    CoincidenceError
        ``gw`` is not a GW alert; a bad sky map (see :func:`overlap_integral`).
    """
    s = settings or CoincidenceSettings()
    if gw.messenger != "gw":
        raise CoincidenceError(f"{gw.id}: not a gravitational-wave alert (messenger {gw.messenger!r})")
    search = search or search_of(gw)
    window = s.window_s(search)
    dt = seconds_between(gw.time, ext.time)
    coincident = window[0] <= dt <= window[1]
    notes: list[str] = []
    if gw.is_retraction or ext.is_retraction:
        coincident = False
        notes.append("a retraction is never coincident")
    overlap = None
    if gw_sky is not None and ext_sky is not None:
        overlap = overlap_integral(gw_sky, ext_sky, s.overlap_method)
    else:
        notes.append("no overlap integral: " + ("the GW alert" if gw_sky is None else "the external trigger")
                     + " has no localization")
    far = gw.properties.get("far_hz")
    far = float(far) if isinstance(far, (int, float)) and not isinstance(far, bool) and math.isfinite(far) else None
    temporal = joint = None
    if coincident:
        if far is None:
            notes.append("no FAR: the GW alert states none")
        else:
            temporal = temporal_far_hz(far, window, s.grb_rate_hz)
            joint = joint_far_hz(temporal, overlap)
            if overlap is not None and joint is None:
                notes.append("no joint FAR: the sky maps do not overlap (I_Ω = 0)")
    return GwGrbCoincidence(
        gw_id=gw.id, ext_id=ext.id, search=search, coincident=coincident, dt_s=dt, window_s=tuple(window),
        overlap_integral=overlap, temporal_far_hz=temporal, joint_far_hz=joint, gw_far_hz=far,
        ext_rate_hz=s.grb_rate_hz, overlap_method=s.overlap_method, gw_localization=_kind(gw_sky),
        ext_localization=_kind(ext_sky), notes=tuple(notes))


def point_of(event: Event) -> PointSource | None:
    """The Event's point localization as a :class:`PointSource`, or None."""
    loc = event.localization
    return PointSource(loc.ra, loc.dec) if isinstance(loc, PointLocalization) else None


# ------------------------------------------------------------------ GW–neutrino
_TRACK_STREAMS = {"gold", "bronze"}


def track_stream(event: Event) -> str | None:
    """``"gold"`` or ``"bronze"`` for an IceCube Gold/Bronze track alert, else None.

    Recognized: GCN Kafka ``icecube/single_neutrino_alerts`` (``pipeline`` "Gold Track
    Alert" / "Bronze Track Alert"), GCN Classic VOEvents ``ICECUBE_ASTROTRACK_GOLD`` /
    ``_BRONZE`` (alert type ``gold``/``bronze``) and their JSON translations (alert
    type ``astrotrack_gold``/``astrotrack_bronze``). Retractions are not alerts.
    """
    if event.messenger != "neutrino" or event.is_retraction:
        return None
    p = event.properties
    for text in (p.get("pipeline"), p.get("packet_type_name"), p.get("notice_type"), event.alert_type):
        if not isinstance(text, str):
            continue
        t = text.lower()
        if "cascade" in t:
            return None
        for stream in _TRACK_STREAMS:
            if t == stream or f"{stream} track" in t or f"astrotrack_{stream}" in t or f"astrotrack {stream}" in t:
                return stream
    return None


@dataclass(frozen=True)
class NeutrinoCoincidence:
    """A Gold/Bronze track within the window of a GW candidate.

    Attributes
    ----------
    event_id, stream : str
        The neutrino Event and ``"gold"``/``"bronze"``.
    dt_s : float
        ``t_nu − t_gw``, s.
    overlap_integral : float or None
        ``I_Ω`` of the GW map and the track position as a point (None without a map).
    credible_level : float or None
        Smallest GW credible level containing the track position.
    """

    event_id: str
    stream: str
    dt_s: float
    overlap_integral: float | None
    credible_level: float | None


def gw_neutrino_coincidences(gw: Event, neutrinos: Iterable[Event], gw_sky: MultiOrderSkyMap | None = None, *,
                             settings: CoincidenceSettings | None = None) -> list[NeutrinoCoincidence]:
    """IceCube Gold/Bronze tracks within ``neutrino_window_s`` (±500 s) of a GW merger.

    Parameters
    ----------
    gw : Event
        The GW alert.
    neutrinos : iterable of Event
        Candidate alerts; those that are not Gold/Bronze tracks (:func:`track_stream`)
        or fall outside the window are left out.
    gw_sky : MultiOrderSkyMap, optional
        The GW map, for the overlap integral and credible level of each track.
    settings : CoincidenceSettings, optional

    Returns
    -------
    list of NeutrinoCoincidence
        Sorted by ``|dt_s|``. A GW retraction has none.
    """
    s = settings or CoincidenceSettings()
    if gw.is_retraction:
        return []
    lo, hi = s.neutrino_window_s
    out = []
    for nu in neutrinos:
        stream = track_stream(nu)
        if stream is None:
            continue
        dt = seconds_between(gw.time, nu.time)
        if not lo <= dt <= hi:
            continue
        point = point_of(nu)
        overlap = level = None
        if gw_sky is not None and point is not None:
            overlap = overlap_integral(gw_sky, point, s.overlap_method)
            level = float(credible_level_at(gw_sky, point.ra_deg, point.dec_deg)[0])
        out.append(NeutrinoCoincidence(nu.id, stream, dt, overlap, level))
    return sorted(out, key=lambda c: abs(c.dt_s))


def is_nu_track_search_for(gw: Event, notice: Event) -> bool:
    """True when ``notice`` is IceCube's LVK Nu Track Search result for ``gw``'s superevent
    (GCN ``icecube/lvk_nu_track_search``, ``ref_ID`` equal to the superevent id)."""
    return (notice.alert_type == "lvk_nu_track_search"
            and str(notice.properties.get("ref_id", "")) == gw.upstream_id)


# ------------------------------------------------------------------ GW/GRB–optical
def jd_of(time: str) -> float:
    """Julian Date of an ``Event.time`` string."""
    t = datetime.fromisoformat(time.removesuffix("Z")).replace(tzinfo=timezone.utc)
    return t.timestamp() / 86400.0 + _JD_UNIX_EPOCH


def radius_at_level(error_radius_deg: float, containment: float | None, level: float) -> float:
    """Error-circle radius scaled to another containment, for a circular 2-D Gaussian
    (Rayleigh radial distribution, ``P(<r) = 1 − exp(−r²/2σ²)``): ``r_level =
    r · sqrt(ln(1 − level) / ln(1 − containment))``; unscaled when the containment is
    unknown, 0 or 1."""
    if containment is None or not 0 < containment < 1 or not 0 < level < 1:
        return error_radius_deg
    return error_radius_deg * math.sqrt(math.log1p(-level) / math.log1p(-containment))


def _separation_deg(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    s = math.sin((d2 - d1) / 2) ** 2 + math.cos(d1) * math.cos(d2) * math.sin((r2 - r1) / 2) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(s))))


@dataclass(frozen=True)
class OpticalVerdict:
    """Whether one optical candidate may be the counterpart of a trigger, and why.

    Attributes
    ----------
    event_id, object_id : str
    accepted : bool
    reason : str
        Machine-readable: ``"accepted"``, ``"detected_before_t0"``, ``"too_late"``,
        ``"outside_region"``, ``"no_localization"``, ``"not_optical"``.
    dt_days : float
        Candidate time − T0, days.
    credible_level : float or None
        For a sky map: smallest credible level holding the candidate.
    separation_deg : float or None
        For a point trigger: distance to its position, deg.
    history_checked : bool
        False when the photometric history (``prv_candidates``) was not given.
    """

    event_id: str
    object_id: str
    accepted: bool
    reason: str
    dt_days: float
    credible_level: float | None = None
    separation_deg: float | None = None
    history_checked: bool = False


def optical_verdict(trigger: Event, trigger_sky: MultiOrderSkyMap | None, candidate: Event,
                    prv_candidates: Sequence[dict[str, Any]] | None = None, *,
                    settings: CoincidenceSettings | None = None) -> OpticalVerdict:
    """Is a ZTF candidate a possible counterpart of a GW or GRB trigger?

    Accepted when all hold: first detected after T0 (``jdstarthist ≥ T0`` when given),
    detected within ``optical_days`` after T0, no detection before T0 in
    ``prv_candidates`` (entries with a ``candid`` or ``magpsf``; upper limits do not
    count), and inside the trigger's ``optical_level`` credible region: for a sky map,
    credible level at the position ≤ level (:func:`credible_level_at`); for a point,
    within its error radius scaled to the level (:func:`radius_at_level`).

    Parameters
    ----------
    trigger : Event
        GW or GRB alert; its ``time`` is T0.
    trigger_sky : MultiOrderSkyMap, optional
        Its sky map; when None the trigger's point localization is used.
    candidate : Event
        ZTF alert (point localization, ``properties["jdstarthist"]``).
    prv_candidates : sequence of dict, optional
        The alert's history (:func:`broker.sources.ztf.decode_history`), ZTF field names.
    settings : CoincidenceSettings, optional

    Returns
    -------
    OpticalVerdict
    """
    s = settings or CoincidenceSettings()
    t0 = jd_of(trigger.time)
    dt_days = jd_of(candidate.time) - t0
    obj = candidate.upstream_id
    checked = prv_candidates is not None

    def verdict(reason: str, **kw: Any) -> OpticalVerdict:
        return OpticalVerdict(candidate.id, obj, reason == "accepted", reason, dt_days, history_checked=checked, **kw)

    point = point_of(candidate)
    if candidate.messenger != "em" or point is None:
        return verdict("not_optical")
    start = candidate.properties.get("jdstarthist")
    if dt_days < 0 or (isinstance(start, (int, float)) and math.isfinite(start) and start < t0):
        return verdict("detected_before_t0")
    for prv in prv_candidates or ():
        jd = prv.get("jd")
        detected = prv.get("candid") is not None or prv.get("magpsf") is not None
        if detected and isinstance(jd, (int, float)) and jd < t0:
            return verdict("detected_before_t0")
    if dt_days > s.optical_days:
        return verdict("too_late")
    if trigger_sky is not None:
        level = float(credible_level_at(trigger_sky, point.ra_deg, point.dec_deg)[0])
        return verdict("accepted" if level <= s.optical_level else "outside_region", credible_level=level)
    loc = trigger.localization
    if not isinstance(loc, PointLocalization) or loc.error_radius is None:
        return verdict("no_localization")
    sep = _separation_deg(loc.ra, loc.dec, point.ra_deg, point.dec_deg)
    radius = radius_at_level(loc.error_radius, loc.containment, s.optical_level)
    return verdict("accepted" if sep <= radius else "outside_region", separation_deg=sep)


def optical_counterparts(trigger: Event, trigger_sky: MultiOrderSkyMap | None,
                         candidates: Iterable[tuple[Event, Sequence[dict[str, Any]] | None]], *,
                         settings: CoincidenceSettings | None = None) -> list[OpticalVerdict]:
    """The accepted :func:`optical_verdict` of each (candidate, history) pair, by time.

    A retracted trigger has none.
    """
    if trigger.is_retraction:
        return []
    verdicts = (optical_verdict(trigger, trigger_sky, ev, prv, settings=settings) for ev, prv in candidates)
    return sorted((v for v in verdicts if v.accepted), key=lambda v: v.dt_days)
