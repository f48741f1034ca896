"""The unseen flat NSIDE-1024 map of S190814bv (tests/data/igwn/unseen, attribution in
tests/data/SOURCES.md): cross-match against ligo.skymap and overlap integrals against
ligo-raven 3.3, as tests/unit/test_unseen_skymaps.py does for G495305.

Not in the default test run (about 1.4 GB of memory and 35 s on a 2-core machine): run
``benchmarks/run_long_checks.sh``.
"""

from __future__ import annotations

import numpy as np
import pytest

from broker.enrich.coinc import PointSource, overlap_integral
from broker.enrich.inputs import FILE_LIMITS
from broker.limits import decode_scope
from broker.skymap import read_skymap
from tests.unit.test_coinc import _raven
from tests.unit.test_unseen_skymaps import KNOWN, UNSEEN, test_crossmatch_equals_ligo_skymap

S190814BV = UNSEEN / "S190814bv_5_LALInference.v1.fits.gz"


@pytest.fixture(scope="module")
def skies():
    out = {name: read_skymap(p.read_bytes()) for name, p in KNOWN.items()}
    # 402 MB of FITS once gunzipped (4 float64 columns x 12.6 M pixels): over the stage's
    # default max_skymap_bytes (256 MiB), read with the command line's file limits
    with decode_scope(FILE_LIMITS):
        out["S190814bv"] = read_skymap(S190814BV.read_bytes())
    return out


def test_crossmatch_of_s190814bv_equals_ligo_skymap():
    with decode_scope(FILE_LIMITS):
        test_crossmatch_equals_ligo_skymap(S190814BV)


@pytest.mark.parametrize("gw,ext", [("swift", "S190814bv"), ("S190814bv", "gbm")])
def test_overlap_equals_ligo_raven(skies, gw, ext):
    ours, theirs = overlap_integral(skies[gw], skies[ext]), _raven(skies[gw], skies[ext])
    assert ours == pytest.approx(theirs, rel=1e-6)
    assert np.isfinite(ours) and ours >= 0


def test_overlap_with_a_point_is_the_density_there(skies):
    """Flat × point (ligo-raven's branch runs): equal to it; and to 4π p(Ω)/∫p at the
    densest pixel of S190814bv, read independently from the flat array."""
    from astropy_healpix import HEALPix

    sky = skies["S190814bv"]
    from astropy_healpix import uniq_to_level_ipix

    i = int(np.argmax(sky.probdensity))
    level, ipix = uniq_to_level_ipix(sky.uniq[i])
    hp = HEALPix(nside=1 << int(level), order="nested")
    lon, lat = hp.healpix_to_lonlat(int(ipix))
    ra, dec = float(lon.deg), float(lat.deg)
    ours = overlap_integral(sky, PointSource(ra_deg=ra, dec_deg=dec))
    assert ours == pytest.approx(_raven(sky, point=(ra, dec)), rel=1e-6)
    prob = np.asarray(sky.probdensity) / np.sum(sky.probdensity)  # equal pixels: p_i = ρ_i / Σρ
    assert ours == pytest.approx(prob[i] * sky.uniq.size, rel=1e-6)  # 4π p(Ω) / ∫p with ∫p = 1, Ω_pix = 4π/N


@pytest.mark.parametrize("gw,ext", [("S190814bv", "swift"), ("S190814bv", "MS220722v"), ("swift", "S190814bv")])
def test_exact_overlap_of_the_flat_map_equals_hpmoc(skies, gw, ext):
    """Flat S190814bv × a multi-order map, which ligo-raven cannot take ('Wrong pixel
    number'): the exact integral equals hpmoc's independent product of the maps."""
    from tests.unit.test_coinc import _hpmoc_exact

    ours = overlap_integral(skies[gw], skies[ext], "exact")
    assert ours == pytest.approx(_hpmoc_exact(skies[gw], skies[ext]), rel=1e-9)
    assert ours == pytest.approx(overlap_integral(skies[ext], skies[gw], "exact"), rel=1e-9)
