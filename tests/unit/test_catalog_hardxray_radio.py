"""The hard-X-ray and radio catalogs: Swift-BAT 105-month (pipe-separated text), the
BAT survey known-source list (FITS), VLASS quick-look components (CSV, per-axis errors).

Expected counts and values are read from the files with the standard library (csv,
plain splitting on ``|``) or astropy.io.fits, never with :func:`read_catalog`. The
point cross-match uses a real alert: SVOM ECLAIRs's N1e notice sb25052005 of the known
source Cen X-3 (tests/data/voevent/gwcelery/svom_catalog_gcn.xml); its nearest BAT
105-month source must be SWIFT J1120.9-6037 (counterpart Cen X-3), its separation
equal to astropy's ``SkyCoord.separation``. Origins in tests/data/catalogs/SOURCES.md.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits

from broker.enrich.catalogs import ONE_SIGMA_2D, CatalogError, read_catalog
from broker.enrich.inputs import read_alert_or_map
from broker.enrich.points import crossmatch_point, rayleigh_factor
from broker.event import PointLocalization
from tests.conftest import DATA, ROOT

CATALOGS = DATA / "catalogs"
BAT = CATALOGS / "BAT_105m_catalog_07jul2019.txt"
SURVEY = CATALOGS / "survey6b_2.cat"
VLASS = CATALOGS / "CIRADA_VLASS1QL_table1_components_v1_head100.csv"
SVOM_CEN_X3 = DATA / "voevent" / "gwcelery" / "svom_catalog_gcn.xml"


def _bat_plain() -> tuple[list[str], list[list[str]]]:
    """Header and data rows of the BAT 105-month file by splitting lines on '|'."""
    lines = BAT.read_text().splitlines()
    header = [h.strip() for h in lines[0].split("|")]
    rows = [[f.strip() for f in line.split("|")] for line in lines[1:] if line.strip() and not line.startswith("#")]
    return header, rows


def _vlass_plain() -> list[dict[str, str]]:
    with VLASS.open(newline="") as f:
        return list(csv.DictReader(f))


def _cen_x3_alert() -> PointLocalization:
    return read_alert_or_map(SVOM_CEN_X3.read_bytes()).point


def test_bat_105m_pipe_table_rows_columns_and_blank_fields():
    header, rows = _bat_plain()
    cat = read_catalog(BAT)
    assert len(rows) == 1632 and len(cat) == len(rows)  # 1,632 sources (Oh et al. 2018); the '#' units line is not a row
    assert cat.columns == {"ra": "RA", "dec": "DEC", "name": "BAT_NAME"} and cat.errors is None
    assert cat.accepted.all() and not cat.refused
    i_ra, i_dec, i_name = header.index("RA"), header.index("DEC"), header.index("BAT_NAME")
    assert np.array_equal(cat.ra_deg, [float(r[i_ra]) for r in rows])
    assert np.array_equal(cat.dec_deg, [float(r[i_dec]) for r in rows])
    assert [str(v) for v in cat.table["BAT_NAME"]] == [r[i_name] for r in rows]
    # blank fields are masked (stored as null), not empty strings or zeros
    i_other, i_z = header.index("OTHER_NAME"), header.index("REDSHIF")
    blank_other = np.array([r[i_other] == "" for r in rows])
    blank_z = np.array([r[i_z] == "" for r in rows])
    assert 0 < blank_z.sum() < len(rows) and blank_other.any()
    assert np.array_equal(np.ma.getmaskarray(cat.table["OTHER_NAME"]), blank_other)
    assert np.array_equal(np.ma.getmaskarray(cat.table["REDSHIF"]), blank_z)
    # the counterpart position is another usable position pair
    cp = read_catalog(BAT, ra_col="CTPT_RA", dec_col="CTPT_DEC")
    assert cp.columns["ra"] == "CTPT_RA" and cp.accepted.sum() == sum(r[header.index("CTPT_RA")] != "" for r in rows)


def test_any_pipe_separated_or_ipac_text_table_is_read_by_guessing(tmp_path):
    """Not special-cased by file name: an unknown suffix, and an IPAC table."""
    odd = tmp_path / "hard_xray.list"
    shutil.copyfile(BAT, odd)
    cat = read_catalog(odd)
    assert len(cat) == 1632 and cat.columns["name"] == "BAT_NAME" and cat.name == "hard_xray"
    rows = _vlass_plain()
    from astropy.table import Table

    t = Table({"Component_name": [r["Component_name"] for r in rows], "RA": [float(r["RA"]) for r in rows],
               "DEC": [float(r["DEC"]) for r in rows]})
    t["RA"].unit = t["DEC"].unit = u.deg
    ipac = tmp_path / "vlass.tbl"
    t.write(ipac, format="ascii.ipac")
    assert ipac.read_text().startswith("|")
    got = read_catalog(ipac)
    assert len(got) == len(rows) and got.columns == {"ra": "RA", "dec": "DEC", "name": "Component_name"}
    assert np.allclose(got.ra_deg, t["RA"], rtol=0, atol=1e-12)


def test_bat_survey_known_sources_fits():
    with fits.open(SURVEY) as h:
        n = h["BAT_CATALOG"].header["NAXIS2"]
        names = [s.strip() for s in h["BAT_CATALOG"].data["NAME"]]
        ra = np.asarray(h["BAT_CATALOG"].data["RA_OBJ"], float)
    cat = read_catalog(SURVEY)
    assert n == 1276 and len(cat) == n
    assert cat.columns == {"ra": "RA_OBJ", "dec": "DEC_OBJ", "name": "NAME"}
    assert np.array_equal(cat.ra_deg, ra) and [str(v).strip() for v in cat.table["NAME"]] == names


def test_vlass_rows_and_per_axis_errors_become_axis_aligned_ellipses():
    rows = _vlass_plain()
    cat = read_catalog(VLASS, err_ra_col="E_RA", err_dec_col="E_DEC")
    assert len(rows) == 99 and len(cat) == len(rows)
    assert cat.columns == {"ra": "RA", "dec": "DEC", "name": "Component_name", "err": "E_RA,E_DEC"}
    e_ra = np.array([float(r["E_RA"]) for r in rows])
    e_dec = np.array([float(r["E_DEC"]) for r in rows])
    e = cat.errors
    assert e.containment == ONE_SIGMA_2D and math.isclose(rayleigh_factor(ONE_SIGMA_2D), 1.0, rel_tol=1e-12)
    assert np.array_equal(e.major_deg, np.maximum(e_ra, e_dec))
    assert np.array_equal(e.minor_deg, np.minimum(e_ra, e_dec))
    assert np.array_equal(e.pa_deg, np.where(e_dec >= e_ra, 0.0, 90.0))
    assert (e.pa_deg == 0).any() and (e.pa_deg == 90).any()


@pytest.mark.parametrize("direction", ["north", "east"])
def test_vlass_ellipse_matches_along_each_axis_at_the_rescaled_radius(direction):
    rows = _vlass_plain()
    cat = read_catalog(VLASS, err_ra_col="E_RA", err_dec_col="E_DEC")
    e_ra = np.array([float(r["E_RA"]) for r in rows])
    e_dec = np.array([float(r["E_DEC"]) for r in rows])
    ratio = e_ra / np.where(e_dec > 0, e_dec, np.nan)
    i = int(np.nanargmax(np.where(np.isfinite(ratio), np.abs(np.log(ratio)), -1)))  # most elongated
    assert abs(math.log(e_ra[i] / e_dec[i])) > math.log(1.5)
    sigma = e_dec[i] if direction == "north" else e_ra[i]
    expected = sigma * math.sqrt(-2 * math.log(1 - 0.9))  # 1σ per axis → 90 % (2D Gaussian)
    src = SkyCoord(float(rows[i]["RA"]) * u.deg, float(rows[i]["DEC"]) * u.deg)
    angle = 0 * u.deg if direction == "north" else 90 * u.deg
    for factor, inside in ((0.98, True), (1.02, False)):
        p = src.directional_offset_by(angle, factor * expected * u.deg)
        alert = PointLocalization(ra=p.ra.deg, dec=p.dec.deg, error_radius=0.0, containment=0.9)
        m = crossmatch_point(alert, cat.ra_deg, cat.dec_deg, cat.errors, containment=0.9)
        assert (i in m.rows.tolist()) is inside
        assert m.nearest_row == i
        if inside:
            k = m.rows.tolist().index(i)
            assert math.isclose(m.radius_deg[k], expected, rel_tol=1e-6)


def test_fixed_radius_and_conflicting_error_options():
    cat = read_catalog(BAT, err_radius=4.5, err_unit="arcmin", err_containment=0.9)
    assert np.all(cat.errors.major_deg == 4.5 / 60) and cat.errors.minor_deg is None
    assert cat.errors.containment == 0.9 and cat.columns["err"] == "fixed 4.5 arcmin"
    with pytest.raises(CatalogError, match="one source error"):
        read_catalog(VLASS, err_col="E_RA", err_radius=1.0)
    with pytest.raises(CatalogError, match="go together"):
        read_catalog(VLASS, err_ra_col="E_RA")
    with pytest.raises(CatalogError, match="finite angle"):
        read_catalog(BAT, err_radius=-1.0)
    with pytest.raises(CatalogError, match="not an angle unit"):
        read_catalog(BAT, err_radius=1.0, err_unit="Mpc")
    with pytest.raises(CatalogError, match="no column 'E_NOPE'"):
        read_catalog(VLASS, err_ra_col="E_NOPE", err_dec_col="E_DEC")
    with pytest.raises(CatalogError, match="no column 'NOPE'"):
        read_catalog(BAT, name_col="NOPE")


def test_svom_notice_of_cen_x3_matches_its_bat_105m_source():
    header, rows = _bat_plain()
    alert = _cen_x3_alert()
    assert (alert.error_radius, alert.containment) == (0.0649, 0.9)
    cat = read_catalog(BAT, err_radius=4.5, err_unit="arcmin", err_containment=0.9)
    m = crossmatch_point(alert, cat.ra_deg, cat.dec_deg, cat.errors, containment=0.9)
    i_name, i_cp = header.index("BAT_NAME"), header.index("COUNTERPART_NAME")
    assert m.nearest_row is not None
    assert (rows[m.nearest_row][i_name], rows[m.nearest_row][i_cp]) == ("SWIFT J1120.9-6037", "Cen X-3")
    # separations against astropy, over the whole file parsed by hand
    here = SkyCoord(alert.ra * u.deg, alert.dec * u.deg)
    sep = here.separation(SkyCoord([float(r[header.index("RA")]) for r in rows] * u.deg,
                                   [float(r[header.index("DEC")]) for r in rows] * u.deg)).deg
    assert int(np.argmin(sep)) == m.nearest_row
    assert math.isclose(m.nearest_separation_deg, sep[m.nearest_row], rel_tol=1e-9, abs_tol=1e-12)
    radius = math.hypot(0.0649, 4.5 / 60)  # both at 90 %: no rescaling
    assert m.rows.tolist() == [int(j) for j in np.argsort(sep) if sep[j] <= radius]
    assert m.rows.tolist()[0] == m.nearest_row
    # the BAT survey known-source list names it directly
    survey = read_catalog(SURVEY)
    s = crossmatch_point(alert, survey.ra_deg, survey.dec_deg, None, containment=0.9)
    assert str(survey.table["NAME"][s.nearest_row]).strip() == "Cen X-3" and s.rows.tolist() == [s.nearest_row]


def test_one_shot_crossmatch_command_on_the_cen_x3_notice():
    proc = subprocess.run([sys.executable, "-m", "broker", "crossmatch", str(SVOM_CEN_X3), "--catalog", str(BAT),
                           "--err-radius", "4.5", "--err-unit", "arcmin", "--err-containment", "0.9", "--json"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert out[0]["name"] == "SWIFT J1120.9-6037" and out[0]["nearest"] is True
    header, rows = _bat_plain()
    j = out[0]["row"]
    expected = SkyCoord(170.3131 * u.deg, -60.6237 * u.deg).separation(
        SkyCoord(float(rows[j][header.index("RA")]) * u.deg, float(rows[j][header.index("DEC")]) * u.deg)).deg
    assert math.isclose(out[0]["separation_deg"], expected, rel_tol=1e-9)
    assert math.isclose(out[0]["radius_deg"], math.hypot(0.0649, 0.075), rel_tol=1e-12)
    text = subprocess.run([sys.executable, "-m", "broker", "crossmatch", str(SVOM_CEN_X3), "--catalog", str(SURVEY)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert text.returncode == 0, text.stderr
    with fits.open(SURVEY) as h:
        data = h["BAT_CATALOG"].data
        [k] = [n for n, name in enumerate(data["NAME"]) if name.strip() == "Cen X-3"]
        sep = SkyCoord(170.3131 * u.deg, -60.6237 * u.deg).separation(
            SkyCoord(float(data["RA_OBJ"][k]) * u.deg, float(data["DEC_OBJ"][k]) * u.deg)).deg
    assert f"nearest: row {k} Cen X-3 at {sep:.4f} deg" in text.stdout
    assert str(ROOT) not in text.stdout + proc.stdout
