"""broker.skymap against independent readings of the real sky maps in tests/data.

Credible areas and the mode are compared with ligo.skymap (``read_sky_map(moc=True)`` +
``crossmatch``), distances with the FITS header read by astropy, pixel values with the
FITS table read by astropy / ``ligo.skymap.io.read_sky_map``.
"""

from __future__ import annotations

import gzip
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from broker.errors import DecodeError
from broker.skymap import read_multiorder, read_skymap, summarize_multiorder

DATA = Path(__file__).resolve().parents[1] / "data"

SKYMAPS = [
    # path, is multi-order in the file, has distance layers/header
    ("igwn/userguide/bayestar.multiorder.fits", True, True),
    ("igwn/gwcelery/MS220722v_bayestar.multiorder.fits", True, True),
    ("gcn/skymaps/swift_skymap.multiorder.fits", True, False),
    ("gcn/skymaps/fermi_gbm_skymap.fits.gz", False, False),
]


@pytest.fixture(scope="module")
def ligo():
    """ligo.skymap's own reading of each map: (contour areas deg², mode ra/dec deg)."""
    from ligo.skymap import moc
    from ligo.skymap.io import read_sky_map
    from ligo.skymap.postprocess import crossmatch

    out = {}
    for rel, _, _ in SKYMAPS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sky = read_sky_map(str(DATA / rel), moc=True)
        # 2D columns only: the 3D volumes crossmatch would add take seconds, change no area.
        areas = crossmatch(sky["UNIQ", "PROBDENSITY"], contours=(0.5, 0.9)).contour_areas
        top = np.flipud(np.sort(sky, order="PROBDENSITY"))[:1]
        theta, phi = moc.uniq2ang(np.asarray(top["UNIQ"], dtype=np.int64))
        out[rel] = (areas, math.degrees(phi[0]), 90.0 - math.degrees(theta[0]))
    return out


def _header(rel: str) -> fits.Header:
    with fits.open(DATA / rel) as hdul:
        return hdul[1].header.copy()


@pytest.mark.parametrize("rel,multiorder,has_distance", SKYMAPS)
def test_summary_matches_ligo_skymap_and_header(rel, multiorder, has_distance, ligo):
    loc = summarize_multiorder((DATA / rel).read_bytes())
    (area_50, area_90), ra_mode, dec_mode = ligo[rel]
    assert loc.area_50 == pytest.approx(area_50, rel=1e-6)
    assert loc.area_90 == pytest.approx(area_90, rel=1e-6)
    assert 0 < loc.area_50 < loc.area_90 < 41253
    assert loc.ra_max == pytest.approx(ra_mode, abs=1e-9)
    assert loc.dec_max == pytest.approx(dec_mode, abs=1e-9)
    header = _header(rel)
    if has_distance:
        assert loc.distmean == pytest.approx(header["DISTMEAN"], rel=1e-12)
        assert loc.diststd == pytest.approx(header["DISTSTD"], rel=1e-12)
    else:
        assert "DISTMEAN" not in header
        assert loc.distmean is None and loc.diststd is None
    assert loc.skymap_url is None
    assert loc.type == "healpix"


def test_gzip_and_plain_flat_map_agree():
    gz = (DATA / "gcn/skymaps/fermi_gbm_skymap.fits.gz").read_bytes()
    assert summarize_multiorder(gz) == summarize_multiorder(gzip.decompress(gz))


@pytest.mark.parametrize("rel", [r for r, multi, _ in SKYMAPS if multi])
def test_read_multiorder_returns_the_file_columns(rel):
    uniq, probdensity, meta = read_multiorder((DATA / rel).read_bytes())
    table = Table.read(DATA / rel, format="fits", unit_parse_strict="silent")
    np.testing.assert_array_equal(uniq, np.asarray(table["UNIQ"], dtype=np.int64))
    np.testing.assert_array_equal(probdensity, np.asarray(table["PROBDENSITY"], dtype=np.float64))
    assert uniq.dtype == np.int64 and probdensity.dtype == np.float64
    assert meta["ORDERING"] == "NUNIQ"
    assert meta["OBJECT"] == table.meta["OBJECT"]
    assert "TTYPE1" not in meta


def test_flat_ring_map_becomes_nested_uniq_with_the_same_probabilities():
    from ligo.skymap.io import read_sky_map

    rel = "gcn/skymaps/fermi_gbm_skymap.fits.gz"
    uniq, probdensity, meta = read_multiorder((DATA / rel).read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prob_nested, _ = read_sky_map(str(DATA / rel), nest=True)  # ligo.skymap's RING -> NESTED
    nside = _header(rel)["NSIDE"]
    npix = 12 * nside**2
    assert meta["ORDERING"] == "RING"
    np.testing.assert_array_equal(uniq, 4 * nside**2 + np.arange(npix))
    np.testing.assert_allclose(probdensity * (4 * math.pi / npix), prob_nested, rtol=1e-15, atol=0)


def test_distance_layers_are_kept_for_crossmatch():
    rel = "igwn/userguide/bayestar.multiorder.fits"
    sky = read_skymap((DATA / rel).read_bytes())
    table = Table.read(DATA / rel, format="fits", unit_parse_strict="silent")
    assert sorted(sky.distance) == ["DISTMU", "DISTNORM", "DISTSIGMA"]
    np.testing.assert_array_equal(sky.distance["DISTMU"], np.asarray(table["DISTMU"]))


def _truncated(rel: str) -> bytes:
    data = (DATA / rel).read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda: b"", "not a FITS file"),
        (lambda: (DATA / "igwn/userguide/MS181101ab-retraction.json").read_bytes(), "not a FITS file"),
        (lambda: _truncated("igwn/userguide/bayestar.multiorder.fits"), "unreadable HEALPix table"),
        (lambda: (DATA / "igwn/userguide/bayestar.multiorder.fits").read_bytes()[:2880], "no HEALPix binary table"),
        (lambda: (DATA / "igwn/userguide/bayestar.multiorder.fits").read_bytes()[:5760], "unreadable FITS"),
        (lambda: _truncated("gcn/skymaps/fermi_gbm_skymap.fits.gz"), "corrupt gzip"),
    ],
    ids=["empty", "json", "truncated-table", "primary-hdu-only", "truncated-header", "truncated-gzip"],
)
def test_bad_bytes_raise_one_line_decode_error(make, reason):
    with pytest.raises(DecodeError, match=reason) as info:
        summarize_multiorder(make())
    assert "\n" not in str(info.value)
