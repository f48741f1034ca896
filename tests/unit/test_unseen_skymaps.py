"""Cross-match and overlap integral on real sky maps the project was not developed on.

``tests/data/igwn/unseen/`` holds maps added after broker/enrich/crossmatch.py and
coinc.py were written and tested (attribution in tests/data/SOURCES.md): the BAYESTAR
multi-order map of G495305 (gwcelery 3.0.0's ``rrt_small_area.fits``, a small 3D
localization at ~1.2 Gpc) and the LALInference flat NSIDE-1024 map of S190814bv (a real
O3 event, 12.6 million pixels with distance layers, from gwemopt 0.4.2's test data).
The S190814bv cases need ~1.4 GB and ~35 s, so they live in
tests/long/test_unseen_flat_map.py (``benchmarks/run_long_checks.sh``), outside the
default test run; here the map of G495305 is checked against every known map.

References, run here on the same inputs: ligo.skymap's
``postprocess.crossmatch.crossmatch`` on ``io.read_sky_map(..., moc=True)`` (1e-6
relative in 2D, 1e-4 in 3D) and ligo-raven 3.3's ``skymap_overlap_integral`` (1e-6),
with the real galaxy catalogs of tests/data/catalogs plus each map's densest pixels.
"""

from __future__ import annotations

import numpy as np
import pytest

from broker.enrich.coinc import overlap_integral
from broker.enrich.crossmatch import crossmatch_skymap
from broker.enrich.inputs import read_alert_or_map
from broker.skymap import read_skymap
from tests.conftest import DATA
from tests.unit.test_coinc import _raven
from tests.unit.test_crossmatch import _catalog, _compare, _densest_targets, _ligo, _ligo_table

UNSEEN = DATA / "igwn" / "unseen"
G495305 = UNSEEN / "rrt_small_area.fits"
KNOWN = {  # maps of the repository the code was developed on, as the other side of an overlap
    "MS220722v": DATA / "igwn/gwcelery/MS220722v_bayestar.multiorder.fits",
    "swift": DATA / "gcn/skymaps/swift_skymap.multiorder.fits",
    "gbm": DATA / "gcn/skymaps/fermi_gbm_skymap.fits.gz",
}


@pytest.fixture(scope="module")
def skies():
    out = {name: read_skymap(p.read_bytes()) for name, p in KNOWN.items()}
    out["G495305"] = read_skymap(G495305.read_bytes())
    return out


@pytest.mark.parametrize("path", [G495305], ids=["G495305"])
def test_crossmatch_equals_ligo_skymap(path):
    data = path.read_bytes()
    sky = read_alert_or_map(data).skymap  # flat maps merged as read_sky_map(moc=True) does
    ra, dec, dist = _catalog()
    tr, td, tdist = _densest_targets(sky)
    ra, dec, dist = np.concatenate([ra, tr]), np.concatenate([dec, td]), np.concatenate([dist, tdist])
    ours = crossmatch_skymap(sky, ra, dec, dist)
    ref_map = _ligo_table(data)
    assert "DISTMU" in ref_map.colnames  # both are 3D maps: the volume quantities are compared too
    ref = _ligo(ref_map, ra, dec, dist)
    _compare(ours, ref, True)
    from ligo.skymap.postprocess.crossmatch import crossmatch

    two_d = ref_map[[c for c in ref_map.colnames if not c.startswith("DIST")]]
    assert np.allclose([ours.area_50_deg2, ours.area_90_deg2], crossmatch(two_d, contours=(0.5, 0.9)).contour_areas,
                       rtol=1e-9)
    inside = ours.searched_prob <= 0.9
    assert inside.sum() == (np.asarray(ref.searched_prob) <= 0.9).sum() > 0  # the same galaxies in the 90 % region


@pytest.mark.parametrize("gw,ext", [("G495305", "MS220722v"), ("G495305", "swift"), ("G495305", "gbm"),
                                    ("MS220722v", "G495305"), ("G495305", "G495305")])
def test_overlap_equals_ligo_raven(skies, gw, ext):
    ours, theirs = overlap_integral(skies[gw], skies[ext]), _raven(skies[gw], skies[ext])
    assert ours == pytest.approx(theirs, rel=1e-6)
    assert np.isfinite(ours) and ours >= 0
