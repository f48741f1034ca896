"""``ztf-decent``: the cuts of AMPEL's DecentFilter on ZTF alerts.

Source: Ampel-ZTF ``ampel/ztf/t0/DecentFilter.py`` (M. Giomi, S. Reusch et al., AMPEL
project; BSD-3-Clause, "Copyright (c) 2018, AmpelProject"; read at commit
7c36cdc2aa32585735293b5f6e2e861de5e21531 of github.com/AmpelProject/Ampel-ZTF, the
code of ``ampel-ztf`` 0.10.2 on PyPI), with the photopoints of its
``ZiAlertSupplier`` (``ampel/ztf/alert/ZiAlertSupplier.py``): the candidate, then the
``prv_candidates`` that have a ``candid`` (upper limits have none). Nöth et al. 2019,
A&A 631, A147 describe AMPEL. Every parameter keeps DecentFilter's name, unit and
comparison (strict or not) — the issue asks for the same decisions on the same alerts,
so the names are AMPEL's, not ours with units; each field's docstring gives the unit.

The cuts, in AMPEL's order (the first that fails is the reason):

==========================  ===============================================================
reason                      rejected when
==========================  ===============================================================
``ndet_below_min``          detections (candidate + prv_candidates with a candid) < min_ndet
``tspan_out_of_range``      not min_tspan <= (last - first detection jd) <= max_tspan
``missing_field``           a candidate field DecentFilter reads is null (fwhm, elong,
                            magdiff, nbad, distpsnr1-3, sgscore1-3, isdiffpos, ra, dec,
                            rb, ssdistnr)
``negative_subtraction``    isdiffpos is "f" or "0"
``rb_below_min``            rb < min_rb
``drb_below_min``           the schema has drb, min_drb > 0 and drb < min_drb
``fwhm_above_max``          fwhm > max_fwhm
``elong_above_max``         elong > max_elong
``magdiff_above_max``       |magdiff| > max_magdiff
``archive_tspan_out_of_range``  not min_archive_tspan < jdendhist - jdstarthist < max_archive_tspan
``near_solar_system_object``  0 <= ssdistnr < min_sso_dist
``galactic_plane``          |b| < min_gal_lat
``ps1_star``                distpsnr1 < ps1_sgveto_rad and sgscore1 > ps1_sgveto_th
``ps1_confusion``           max(distpsnr1..3) < ps1_confusion_rad and max |sgscore_i - 0.5| < ps1_confusion_sg_tol
``gaia_star``               gaia_rs > 0 and a Gaia source within gaia_rs (see below) moves
==========================  ===============================================================

Where AMPEL would raise instead of deciding (a null ``drb`` with ``min_drb > 0``, a null
``jdstarthist``/``jdendhist``: ``None`` in arithmetic), the alert is rejected with
``drb_missing`` / ``archive_tspan_missing`` (AMPEL's consumer does not accept an alert
whose filter raised). ``max_nbad`` is accepted and checked for a value, but, as in
DecentFilter, no cut is made on ``nbad`` (DecentFilter only requires the field to be
non-null).

Galactic latitude: AMPEL uses astropy's ``SkyCoord(ra, dec).galactic.b``; here the same
ICRS → Galactic rotation (astropy's, through FK5 J2000 with the frame bias) is one fixed
matrix, equal to astropy's b within 1e-9 deg (tests/unit/test_ztf_decent.py).

Gaia veto (``gaia_rs > 0``): AMPEL queries Gaia DR2 through its catsHTM service; here the
catalog comes from the broker (``[filters] catalogs = ["gaia"]``, loaded with
``mma-broker catalog load gaia FILE``; :meth:`ZtfDecent.required_catalogs`). **No Gaia
catalog is bundled with mma-broker**: load an extract (Gaia archive column names
``phot_g_mean_mag, pmra, pmra_error, pmdec, pmdec_error, parallax, parallax_error,
astrometric_excess_noise_sig``, or catsHTM's ``Mag_G, PMRA, ErrPMRA, PMDec, ErrPMDec,
Plx, ErrPlx, ExcessNoiseSig``). The rule is DecentFilter's ``is_star_in_gaia``: among the
sources within ``gaia_rs`` arcsec that are *close* (distance < 1.8 + 0.6 exp((20 - G) /
2.05) arcsec and gaia_veto_gmag_min <= G <= gaia_veto_gmag_max) and *clean*
(ExcessNoiseSig < gaia_excessnoise_sig_max), any with |pmra/err| > gaia_pm_signif,
|pmdec/err| > gaia_pm_signif or |parallax/err| > gaia_plx_signif makes the alert a star.
A missing value is NaN (AMPEL's ``None → nan``), and comparisons with NaN are false.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import Field

from filters import ztf_history  # noqa: F401 - compiles the history scan when the filter is loaded, not in its first call
from filters.api import Filter, FilterConfig, FilterInput, FilterResult

__all__ = ["ZtfDecentConfig", "ZtfDecent", "galactic_latitude_deg", "gaia_is_star"]

#: Candidate fields DecentFilter requires present and non-null (its ``keys_to_check``).
KEYS_TO_CHECK = ("fwhm", "elong", "magdiff", "nbad", "distpsnr1", "sgscore1", "distpsnr2", "sgscore2", "distpsnr3",
                 "sgscore3", "isdiffpos", "ra", "dec", "rb", "ssdistnr")

#: ICRS → Galactic rotation matrix, as astropy (≥ 6) composes it: ICRS → FK5 J2000 (frame
#: bias) → Galactic (pole RA 192.85948°, Dec 27.12825°, l of the NCP 122.932°; Blaauw et
#: al. 1960 transferred to FK5 as in the Hipparcos catalogue vol. 1 §1.5.3). Its rows were
#: computed with ``SkyCoord(cartesian unit vectors, frame="icrs").galactic``; only the
#: last row is needed for b.
_GAL_Z = (-0.8676661375596576, -0.19807633727300053, 0.4559838136873016)


def galactic_latitude_deg(ra_deg: float, dec_deg: float) -> float:
    """Galactic latitude b of an ICRS position, deg (astropy's ``SkyCoord(...).galactic.b.deg``).

    Parameters
    ----------
    ra_deg, dec_deg : float
        ICRS right ascension and declination, deg.

    Returns
    -------
    float
        b in [-90, 90] deg, computed as astropy does: atan2(z, hypot(x, y)) of the
        rotated unit vector.
    """
    ra = math.radians(ra_deg)
    dec = math.radians(dec_deg)
    cd = math.cos(dec)
    x, y, z = cd * math.cos(ra), cd * math.sin(ra), math.sin(dec)
    gz = _GAL_Z[0] * x + _GAL_Z[1] * y + _GAL_Z[2] * z
    return math.degrees(math.atan2(gz, math.sqrt(max(0.0, 1.0 - gz * gz))))


class ZtfDecentConfig(FilterConfig):
    """DecentFilter's parameters, same names and meanings (Ampel-ZTF ``DecentFilter``).

    Defaults are the ``HU_RAPID`` configuration Ampel-ZTF tests with
    (``tests/test-data/decentfilter_config.yaml``), except ``gaia_rs = 0`` (the Gaia veto
    off: no Gaia catalog is bundled) and DecentFilter's own defaults for
    ``min_archive_tspan``, ``max_archive_tspan``, ``min_drb``.
    """

    min_ndet: int = 2
    """Fewest detections: the candidate plus the prv_candidates with a candid."""
    min_tspan: float = -666.0
    """Shortest detection history (last minus first detection jd), days."""
    max_tspan: float = 5.0
    """Longest detection history, days."""
    min_archive_tspan: float = 0.0
    """jdendhist - jdstarthist must be above this (strict), days."""
    max_archive_tspan: float = 10**5.0
    """jdendhist - jdstarthist must be below this (strict), days."""
    min_drb: float = 0.0
    """Smallest deep-learning real-bogus score drb (0 or less: no cut; schemas without drb: no cut)."""
    min_rb: float = 0.3
    """Smallest real-bogus score rb."""
    max_fwhm: float = 5.5
    """Largest FWHM of the candidate (SExtractor, Gaussian assumed), pixels."""
    max_elong: float = 1.4
    """Largest elongation aimage / bimage."""
    max_magdiff: float = 1.0
    """Largest |magap - magpsf|, mag."""
    max_nbad: int = 0
    """Bad pixels in a 5 x 5 stamp: kept for DecentFilter parity, which applies no cut with it."""
    min_sso_dist: float = 20.0
    """Reject when a known solar-system object is within [0, this), arcsec (ssdistnr)."""
    min_gal_lat: float = 14.0
    """Smallest |galactic latitude|, deg (negative: no cut)."""
    ps1_sgveto_rad: float = 1.0
    """PS1 star veto radius on distpsnr1, arcsec."""
    ps1_sgveto_th: float = 0.8
    """PS1 star veto: sgscore1 above this is a star."""
    ps1_confusion_rad: float = 3.0
    """PS1 confusion: all three nearest PS1 sources within this, arcsec."""
    ps1_confusion_sg_tol: float = 0.1
    """PS1 confusion: and all three sgscores within this of 0.5."""
    gaia_rs: float = Field(0.0, ge=0.0, le=3600.0)
    """Gaia search radius, arcsec; 0 switches the Gaia veto off, > 0 needs the ``gaia`` catalog."""
    gaia_pm_signif: float = 3.0
    """Proper motion significance |pm / error| above which a Gaia source moves, sigma."""
    gaia_plx_signif: float = 3.0
    """Parallax significance |plx / error| above which a Gaia source moves, sigma."""
    gaia_veto_gmag_min: float = 9.0
    """Faintest... brightest G of the Gaia sources considered (G >= this), mag."""
    gaia_veto_gmag_max: float = 20.0
    """Faintest G of the Gaia sources considered (G <= this), mag."""
    gaia_excessnoise_sig_max: float = 999.0
    """Gaia sources with astrometric excess noise significance at or above this are ignored, sigma."""


_GAIA_COLUMNS = {  # ours (AMPEL catsHTM) → Gaia archive name
    "Mag_G": "phot_g_mean_mag", "PMRA": "pmra", "ErrPMRA": "pmra_error", "PMDec": "pmdec", "ErrPMDec": "pmdec_error",
    "Plx": "parallax", "ErrPlx": "parallax_error", "ExcessNoiseSig": "astrometric_excess_noise_sig",
}


class _GaiaIndex:
    """Positions sorted by declination and the columns the veto reads, as float64 (NaN: missing)."""

    def __init__(self, catalog: Any) -> None:
        table = catalog.table
        names = {n.lower(): n for n in table.colnames}
        ra = np.asarray(catalog.ra_deg, dtype=float)
        dec = np.asarray(catalog.dec_deg, dtype=float)
        ok = np.isfinite(ra) & np.isfinite(dec)
        cols = {}
        for ampel, gaia in _GAIA_COLUMNS.items():
            name = names.get(ampel.lower()) or names.get(gaia)
            if name is None:
                raise KeyError(f"Gaia catalog {catalog.name!r} has no column {ampel!r} or {gaia!r}")
            col = table[name]
            vals = np.ma.filled(np.ma.asarray(col, dtype=float), np.nan)
            cols[ampel] = vals
        order = np.argsort(dec[ok], kind="stable")
        self.ra = ra[ok][order]
        self.dec = dec[ok][order]
        self.cols = {k: v[ok][order] for k, v in cols.items()}

    def cone(self, ra_deg: float, dec_deg: float, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
        """Indices and distances (arcsec) of the sources within ``radius_arcsec``."""
        r = radius_arcsec / 3600.0
        lo, hi = np.searchsorted(self.dec, [dec_deg - r, dec_deg + r], side="left"), None
        lo, hi = int(lo[0]), int(lo[1])
        ra0, dec0 = math.radians(ra_deg), math.radians(dec_deg)
        ra1, dec1 = np.radians(self.ra[lo:hi]), np.radians(self.dec[lo:hi])
        # Vincenty's formula, as astropy's angular_separation
        sdra, cdra = np.sin(ra1 - ra0), np.cos(ra1 - ra0)
        s0, c0, s1, c1 = math.sin(dec0), math.cos(dec0), np.sin(dec1), np.cos(dec1)
        num = np.hypot(c1 * sdra, c0 * s1 - s0 * c1 * cdra)
        dist = np.degrees(np.arctan2(num, s0 * s1 + c0 * c1 * cdra)) * 3600.0
        keep = dist <= radius_arcsec
        return np.arange(lo, hi)[keep], dist[keep]


_INDEXES: dict[int, tuple[Any, _GaiaIndex]] = {}


def _gaia_index(catalog: Any) -> _GaiaIndex:
    got = _INDEXES.get(id(catalog))
    if got is None or got[0] is not catalog:
        got = _INDEXES[id(catalog)] = (catalog, _GaiaIndex(catalog))
    return got[1]


def gaia_is_star(cols: dict[str, np.ndarray], dist_arcsec: np.ndarray, cfg: ZtfDecentConfig) -> bool:
    """DecentFilter's ``is_star_in_gaia`` on the sources found (columns by AMPEL name, NaN: missing).

    Parameters
    ----------
    cols : dict of str to ndarray, shape (k,)
        ``Mag_G`` (mag), ``PMRA, ErrPMRA, PMDec, ErrPMDec`` (mas/yr), ``Plx, ErrPlx``
        (mas), ``ExcessNoiseSig`` of the k sources within ``gaia_rs``.
    dist_arcsec : ndarray, shape (k,)
        Their distances to the alert, arcsec.
    cfg : ZtfDecentConfig

    Returns
    -------
    bool
        True when a close, clean source has a significant proper motion or parallax.
    """
    if dist_arcsec.size == 0:
        return False
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        g = cols["Mag_G"]
        prox = (1.8 + 0.6 * np.exp((20 - g) / 2.05) > dist_arcsec) & (cfg.gaia_veto_gmag_min <= g) & (g <= cfg.gaia_veto_gmag_max)
        clean = cols["ExcessNoiseSig"] < cfg.gaia_excessnoise_sig_max
        moving = ((np.abs(cols["PMRA"] / cols["ErrPMRA"]) > cfg.gaia_pm_signif)
                  | (np.abs(cols["PMDec"] / cols["ErrPMDec"]) > cfg.gaia_pm_signif)
                  | (np.abs(cols["Plx"] / cols["ErrPlx"]) > cfg.gaia_plx_signif))
    return bool(np.any(prox & clean & moving))


#: Candidate fields the cuts read: KEYS_TO_CHECK, then the optional ones (drb, archive span).
_READ = KEYS_TO_CHECK + ("drb", "jdendhist", "jdstarthist")
_KEY_INDEX = {k: i for i, k in enumerate(_READ)}
_FEATURES = ("ztf-decent", "1", "features")
"""Key of the per-alert values every ztf-decent instance reads (:meth:`FilterInput.shared`)."""


class _Features:
    """What DecentFilter's cuts read of one alert, whatever their thresholds (computed once per alert).

    Attributes
    ----------
    ndet : int
        Detections: the candidate and the prv_candidates with a candid.
    tspan : float
        Last minus first detection jd, days (NaN without detections).
    missing : str or None
        The first of :data:`KEYS_TO_CHECK` that is null or absent, in DecentFilter's order.
    v : tuple
        The values of ``_READ`` (None where null or absent).
    has_drb, has_archive : bool
        The writer schema has ``drb``; has ``jdendhist`` and ``jdstarthist``.
    archive : float or None
        jdendhist - jdstarthist, days (None when either is null or absent).
    b : float or None
        Galactic latitude, deg (None when ``missing``).
    max_dist, max_sg_dev : float or None
        max(distpsnr1..3), arcsec; max |sgscore_i - 0.5| (None when ``missing``).
    results : dict
        The results built for this alert, by (reason, the configuration value the
        detail states): instances reaching the same cut share one (immutable)
        FilterResult instead of building and checking it again.
    """

    __slots__ = ("ndet", "tspan", "missing", "v", "has_drb", "has_archive", "archive", "b", "max_dist", "max_sg_dev",
                 "results")

    def __init__(self, hist: Any) -> None:
        self.ndet, self.tspan = hist.detection_span()
        cols = hist.candidate_columns
        self.v = v = cols.pick(_READ) if cols.n else (None,) * len(_READ)
        self.missing = next((k for k, x in zip(KEYS_TO_CHECK, v) if x is None), None)
        self.has_drb = "drb" in cols
        self.has_archive = "jdendhist" in cols and "jdstarthist" in cols
        i = _KEY_INDEX
        end, start = v[i["jdendhist"]], v[i["jdstarthist"]]
        self.archive = None if end is None or start is None else end - start
        self.b = self.max_dist = self.max_sg_dev = None
        self.results: dict[tuple[str, Any], FilterResult] = {}
        if self.missing is None:
            self.b = galactic_latitude_deg(v[i["ra"]], v[i["dec"]])
            self.max_dist = max(v[i["distpsnr1"]], v[i["distpsnr2"]], v[i["distpsnr3"]])
            self.max_sg_dev = max(abs(v[i["sgscore1"]] - 0.5), abs(v[i["sgscore2"]] - 0.5), abs(v[i["sgscore3"]] - 0.5))


    def result(self, reason: str, param: Any = None) -> FilterResult:
        """The result ``reason`` for this alert (``param``: ``min_ndet`` or ``gaia_rs``, which its detail states)."""
        key = (reason, param)
        got = self.results.get(key)
        if got is None:
            detail = _DETAIL[reason](self, param)
            got = (FilterResult.accept("decent", detail=detail, tags=("ztf",)) if reason == "decent"
                   else FilterResult.reject(reason, detail=detail))
            self.results[key] = got
        return got


def _features(alert: FilterInput) -> _Features | None:
    hist = alert.ztf_history()
    return None if hist is None else _Features(hist)


(_FWHM, _ELONG, _MAGDIFF, _DIST1, _SG1, _ISDIFFPOS, _RA, _DEC, _RB, _SSDIST, _DRB, _JDEND, _JDSTART) = (
    _KEY_INDEX[k] for k in ("fwhm", "elong", "magdiff", "distpsnr1", "sgscore1", "isdiffpos", "ra", "dec", "rb",
                            "ssdistnr", "drb", "jdendhist", "jdstarthist"))


_DETAIL: dict[str, Any] = {  # reason -> (features, param) -> the result's detail
    "ndet_below_min": lambda f, p: f"{f.ndet} detections < {p}",
    "tspan_out_of_range": lambda f, p: f"detection span {f.tspan:.5f} d",
    "missing_field": lambda f, p: f"candidate.{f.missing} is null or absent",
    "negative_subtraction": lambda f, p: f"isdiffpos {f.v[_ISDIFFPOS]!r}",
    "rb_below_min": lambda f, p: f"rb {f.v[_RB]:.4g}",
    "drb_missing": lambda f, p: "candidate.drb is null",
    "drb_below_min": lambda f, p: f"drb {f.v[_DRB]:.4g}",
    "fwhm_above_max": lambda f, p: f"fwhm {f.v[_FWHM]:.4g} pix",
    "elong_above_max": lambda f, p: f"elong {f.v[_ELONG]:.4g}",
    "magdiff_above_max": lambda f, p: f"magdiff {f.v[_MAGDIFF]:.4g} mag",
    "archive_tspan_missing": lambda f, p: "jdstarthist or jdendhist is null",
    "archive_tspan_out_of_range": lambda f, p: f"archive span {f.archive:.5f} d",
    "near_solar_system_object": lambda f, p: f"ssdistnr {f.v[_SSDIST]:.4g} arcsec",
    "galactic_plane": lambda f, p: f"b {f.b:.4f} deg",
    "ps1_star": lambda f, p: f"distpsnr1 {f.v[_DIST1]:.3g} arcsec, sgscore1 {f.v[_SG1]:.3g}",
    "ps1_confusion": lambda f, p: None,
    "gaia_star": lambda f, p: f"a moving Gaia source within {p:g} arcsec",
    "decent": lambda f, p: f"{f.ndet} detections over {f.tspan:.4f} d",
}


class ZtfDecent(Filter[ZtfDecentConfig]):
    """AMPEL DecentFilter's cuts on a ZTF alert: history length and span, image quality, solar-system objects, galactic plane, PS1 and Gaia stars."""

    name = "ztf-decent"
    version = "1"
    sources = frozenset({"ztf"})

    def required_catalogs(self) -> tuple[str, ...]:
        return ("gaia",) if self.config.gaia_rs > 0 else ()

    def apply(self, alert: FilterInput) -> FilterResult:
        """DecentFilter's cuts in its order (module docstring).

        What the cuts read of the alert (detections, candidate fields, galactic
        latitude) is computed once per alert for every ``ztf-decent`` instance
        (:meth:`FilterInput.shared`), and so is each distinct result: an instance
        costs its comparisons.
        """
        cfg = self.config
        f = alert.shared(_FEATURES, _features)
        if f is None:
            return FilterResult.reject("no_ztf_history", detail="raw ZTF alert bytes not available")
        if f.ndet < cfg.min_ndet:
            return f.result("ndet_below_min", cfg.min_ndet)
        if not (cfg.min_tspan <= f.tspan <= cfg.max_tspan):
            return f.result("tspan_out_of_range")
        if f.missing is not None:
            return f.result("missing_field")
        v = f.v
        if v[_ISDIFFPOS] == "f" or v[_ISDIFFPOS] == "0":
            return f.result("negative_subtraction")
        if v[_RB] < cfg.min_rb:
            return f.result("rb_below_min")
        if f.has_drb and cfg.min_drb > 0.0:
            if v[_DRB] is None:
                return f.result("drb_missing")
            if v[_DRB] < cfg.min_drb:
                return f.result("drb_below_min")
        if v[_FWHM] > cfg.max_fwhm:
            return f.result("fwhm_above_max")
        if v[_ELONG] > cfg.max_elong:
            return f.result("elong_above_max")
        if abs(v[_MAGDIFF]) > cfg.max_magdiff:
            return f.result("magdiff_above_max")
        if f.has_archive:
            if f.archive is None:
                return f.result("archive_tspan_missing")
            if not (cfg.min_archive_tspan < f.archive < cfg.max_archive_tspan):
                return f.result("archive_tspan_out_of_range")
        if 0 <= v[_SSDIST] < cfg.min_sso_dist:
            return f.result("near_solar_system_object")
        if abs(f.b) < cfg.min_gal_lat:
            return f.result("galactic_plane")
        if v[_DIST1] < cfg.ps1_sgveto_rad and v[_SG1] > cfg.ps1_sgveto_th:
            return f.result("ps1_star")
        if f.max_dist < cfg.ps1_confusion_rad and f.max_sg_dev < cfg.ps1_confusion_sg_tol:
            return f.result("ps1_confusion")
        if cfg.gaia_rs > 0:
            index = _gaia_index(alert.catalog("gaia"))
            idx, dist = index.cone(v[_RA], v[_DEC], cfg.gaia_rs)
            if gaia_is_star({k: x[idx] for k, x in index.cols.items()}, dist, cfg):
                return f.result("gaia_star", cfg.gaia_rs)
        return f.result("decent")
