"""ztf-decent: DecentFilter's parameters, the galactic latitude, the Gaia veto's needs, missing data.

Decision-for-decision parity with AMPEL itself is tests/unit/test_ztf_decent_ampel.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from broker.sources import decode
from filters.api import FilterConfigError, FilterInput
from filters.builtin.ztf_decent import ZtfDecent, ZtfDecentConfig, gaia_is_star, galactic_latitude_deg
from filters.registry import filter_class
from tests.unit.test_ztf_decent_ampel import DATA, single_alert_messages

#: DecentFilter's parameters as the issue (and Ampel-ZTF's DecentFilter annotations) name them.
AMPEL_PARAMETERS = ["min_ndet", "min_tspan", "max_tspan", "min_archive_tspan", "max_archive_tspan", "min_drb", "min_rb",
                    "max_fwhm", "max_elong", "max_magdiff", "max_nbad", "min_sso_dist", "min_gal_lat", "ps1_sgveto_rad",
                    "ps1_sgveto_th", "ps1_confusion_rad", "ps1_confusion_sg_tol", "gaia_rs", "gaia_pm_signif",
                    "gaia_plx_signif", "gaia_veto_gmag_min", "gaia_veto_gmag_max", "gaia_excessnoise_sig_max"]


def test_every_decentfilter_parameter_under_its_name() -> None:
    assert list(ZtfDecentConfig.model_fields) == AMPEL_PARAMETERS
    assert filter_class("ztf-decent") is ZtfDecent
    with pytest.raises(FilterConfigError, match="ztf-decent.*min_ndett"):
        ZtfDecent.from_params({"min_ndett": 2})
    with pytest.raises(FilterConfigError, match="gaia_rs"):
        ZtfDecent.from_params({"gaia_rs": -1})


def test_galactic_latitude_equals_astropy() -> None:
    rng = np.random.default_rng(7)
    ra = rng.uniform(0, 360, 20000)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, 20000)))
    b = SkyCoord(ra, dec, unit="deg").galactic.b.deg
    ours = np.array([galactic_latitude_deg(r, d) for r, d in zip(ra, dec)])
    assert np.max(np.abs(ours - b)) < 1e-9
    assert galactic_latitude_deg(192.85948, 27.12825) == pytest.approx(90.0, abs=1e-4)  # the north galactic pole


def test_gaia_veto_needs_a_catalog() -> None:
    assert ZtfDecent().required_catalogs() == ()
    flt = ZtfDecent.from_params({"gaia_rs": 20.0, "min_ndet": 1, "max_tspan": 1e5, "min_gal_lat": -1.0})
    assert flt.required_catalogs() == ("gaia",)
    name, msg, _ = next(m for m in single_alert_messages() if "ZTF19acihgng" in m[0])
    (event,) = decode(msg)
    with pytest.raises(KeyError, match="catalog 'gaia' is not loaded"):
        flt.apply(FilterInput(event, raw=msg))


def test_gaia_rule_on_hand_made_sources() -> None:
    cfg = ZtfDecentConfig(gaia_rs=20.0, gaia_excessnoise_sig_max=2.0)
    nan = np.nan

    def cols(**kw):
        base = dict(Mag_G=15.0, PMRA=10.0, ErrPMRA=1.0, PMDec=0.0, ErrPMDec=1.0, Plx=0.0, ErrPlx=1.0, ExcessNoiseSig=0.5)
        base.update(kw)
        return {k: np.array([v], float) for k, v in base.items()}

    near = np.array([1.0])
    assert gaia_is_star(cols(), near, cfg)  # 10-sigma proper motion, close, clean
    assert gaia_is_star(cols(), np.array([8.6]), cfg)  # G=15: close means < 1.8 + 0.6 exp(5 / 2.05) = 8.68 arcsec
    assert not gaia_is_star(cols(), np.array([8.8]), cfg)
    assert not gaia_is_star(cols(ExcessNoiseSig=3.0), near, cfg)  # noisy astrometry: ignored
    assert not gaia_is_star(cols(Mag_G=21.0), near, cfg)  # fainter than gaia_veto_gmag_max
    assert not gaia_is_star(cols(PMRA=nan), near, cfg)  # missing: NaN compares false
    assert gaia_is_star(cols(PMRA=0.0, Plx=5.0), near, cfg)  # 5-sigma parallax
    assert gaia_is_star(cols(), np.array([]), cfg) is False  # no source within gaia_rs


def test_no_history_is_a_rejection_not_an_error() -> None:
    raw = next(DATA.rglob("ZTF19acihgng.avro")).read_bytes()
    (event,) = decode(raw)
    res = ZtfDecent().apply(FilterInput(event, raw=None))
    assert not res.accepted and res.reason == "no_ztf_history"
