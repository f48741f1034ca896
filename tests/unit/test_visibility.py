"""IBIS field-of-view visibility on the real BAYESTAR map and the real revolution-789 attitude."""

from __future__ import annotations

from pathlib import Path

import astropy_healpix as ah
import numpy as np
import pytest
from astropy.coordinates import SkyCoord, SkyOffsetFrame
import astropy.units as u

from broker.event import PointLocalization
from broker.skymap import read_multiorder
from followup.attitude import Pointing, pointing_at
from followup.bundled import bundled_data_dir
from followup.visibility import ibis_visibility, not_visible

ROOT = Path(__file__).resolve().parents[1] / "data"
ORBIT = bundled_data_dir() / "sc_orbit_param.fits.gz"
SKYMAP = ROOT / "igwn" / "userguide" / "bayestar.multiorder.fits"
T_REV789 = "2009-04-01T02:30:00"  # inside the orbit file's science window 078900560010


@pytest.fixture(scope="module")
def real_pointing() -> Pointing:
    return pointing_at(T_REV789, ORBIT)


@pytest.fixture(scope="module")
def skymap():
    uniq, probdensity, _ = read_multiorder(SKYMAP.read_bytes())
    return uniq, probdensity


def _brute_force(pointing: Pointing, order: int = 9):
    """Independent check: rasterize with ligo.skymap, square test in astropy's offset frame."""
    from astropy.table import Table
    from ligo.skymap.moc import rasterize

    table = Table.read(SKYMAP)
    flat = rasterize(table[["UNIQ", "PROBDENSITY"]], order=order)
    nside = 2**order
    from astropy.coordinates import ICRS

    hp = ah.HEALPix(nside=nside, order="nested", frame=ICRS())
    prob = np.asarray(flat["PROBDENSITY"]) * hp.pixel_area.to_value(u.sr)
    x_axis = SkyCoord(pointing.ra_scx * u.deg, pointing.dec_scx * u.deg)
    z_axis = SkyCoord(pointing.ra_scz * u.deg, pointing.dec_scz * u.deg)
    frame = SkyOffsetFrame(origin=x_axis, rotation=x_axis.position_angle(z_axis))
    centres = hp.healpix_to_skycoord(np.arange(hp.npix)).transform_to(frame)
    lon, lat = centres.lon.rad, centres.lat.rad
    front = np.cos(lon) * np.cos(lat) > 0
    # tangent-plane offsets along the two axes of the square
    t1 = np.abs(np.tan(lon))
    t2 = np.abs(np.tan(lat) / np.cos(lon))
    full = front & (t1 <= np.tan(np.radians(4.5))) & (t2 <= np.tan(np.radians(4.5)))
    partial = front & (t1 < np.tan(np.radians(14.5))) & (t2 < np.tan(np.radians(14.5)))
    return prob[full].sum(), prob[partial].sum()


def test_real_pointing_in_rev789_sees_nothing_of_this_map(real_pointing, skymap):
    vis = ibis_visibility(real_pointing, skymap)
    full_ref, partial_ref = _brute_force(real_pointing)
    assert vis.method == "healpix"
    assert vis.partially_coded_prob == pytest.approx(partial_ref, abs=1e-6) and partial_ref < 1e-6
    assert not_visible(vis).kind == "not_visible"


def test_pointing_on_the_map_maximum_matches_brute_force(real_pointing, skymap):
    uniq, probdensity = skymap
    i = int(np.argmax(probdensity))
    level, ipix = ah.uniq_to_level_ipix(uniq[i])
    lon, lat = ah.healpix_to_lonlat(ipix, 2**level, order="nested")
    x_axis = SkyCoord(lon, lat)
    # keep the real roll: the Z axis at the same position angle as in the orbit file
    pa = SkyCoord(real_pointing.ra_scx * u.deg, real_pointing.dec_scx * u.deg).position_angle(
        SkyCoord(real_pointing.ra_scz * u.deg, real_pointing.dec_scz * u.deg))
    z_axis = x_axis.directional_offset_by(pa, 90 * u.deg)
    pointing = Pointing(x_axis.ra.deg, x_axis.dec.deg, z_axis.ra.deg, z_axis.dec.deg, real_pointing.time)

    vis = ibis_visibility(pointing, skymap)
    full_ref, partial_ref = _brute_force(pointing)
    assert vis.fully_coded_prob == pytest.approx(full_ref, abs=0.005)
    assert vis.partially_coded_prob == pytest.approx(partial_ref, abs=0.005)
    assert 0.3 < vis.fully_coded_prob < vis.coding_weighted_prob < vis.partially_coded_prob <= 1.0
    assert not_visible(vis) is None


@pytest.mark.parametrize(
    "offset_y_deg,offset_z_deg,full,partial",
    [(0.0, 0.0, 1, 1), (4.0, 4.0, 1, 1), (6.0, 0.0, 0, 1), (0.0, 13.0, 0, 1), (10.0, 10.0, 0, 1),
     (15.0, 0.0, 0, 0), (0.0, -16.0, 0, 0), (100.0, 0.0, 0, 0)],
)
def test_point_without_error_is_zero_or_one(real_pointing, offset_y_deg, offset_z_deg, full, partial):
    # place a source at given angles along the spacecraft Y and Z axes (tangent plane)
    x, y, z = real_pointing.axes()
    d = x + np.tan(np.radians(offset_y_deg)) * y + np.tan(np.radians(offset_z_deg)) * z if offset_y_deg < 90 else -x
    d = d / np.linalg.norm(d)
    loc = PointLocalization(ra=float(np.degrees(np.arctan2(d[1], d[0])) % 360), dec=float(np.degrees(np.arcsin(d[2]))))
    vis = ibis_visibility(real_pointing, loc)
    assert (vis.method, vis.fully_coded_prob, vis.partially_coded_prob) == ("point", full, partial)


def test_error_circle_straddling_the_fully_coded_edge(real_pointing):
    # centre on the +Y edge of the fully coded square (4.5 deg): about half inside
    x, y, _ = real_pointing.axes()
    d = x + np.tan(np.radians(4.5)) * y
    d /= np.linalg.norm(d)
    loc = PointLocalization(ra=float(np.degrees(np.arctan2(d[1], d[0])) % 360),
                            dec=float(np.degrees(np.arcsin(d[2]))), error_radius=1.0, containment=0.9)
    vis = ibis_visibility(real_pointing, loc)
    assert vis.method == "error_circle"
    assert 0.4 < vis.fully_coded_prob < 0.6
    assert vis.partially_coded_prob == pytest.approx(1.0, abs=1e-6)
    assert abs(vis.off_axis_deg - 4.5) < 0.01
