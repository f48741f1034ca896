"""Reading catalog files: formats, column finding, units, refused rows, clear errors.

Every file is a real catalog from tests/data/catalogs (origins in SOURCES.md there);
hostile variants are written from them into tmp_path.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from broker.enrich.catalogs import CatalogError, read_catalog
from tests.conftest import DATA

CATALOGS = DATA / "catalogs"


@pytest.mark.parametrize("name, rows, ra, dec, dist, err", [
    ("50MGC_catalog_short.fits", 15424, "ra", "dec", "bestdist", None),
    ("gwemopt_catalog_glade.csv", 2000, "ra", "dec", "distmpc", None),
    ("GLADE.csv", 101, "RA", "DEC", "d_L", None),
    ("CLU_mini.csv", 10, "ra", "dec", "distmpc", None),
    ("CLU_mini.vot", 10, "ra", "dec", "distmpc", None),
    ("ztf_000250_zg_c01_q1_dr5_head300.parquet", 300, "objra", "objdec", None, None),
    ("igaps-dr1-215a-small.fits.gz", 100, "RA", "DEC", None, None),
    ("4FGL-DR4_gll_psc_v35_positions.fits", 7195, "RAJ2000", "DEJ2000", None,
     "Conf_95_SemiMajor,Conf_95_SemiMinor,Conf_95_PosAng"),
])
def test_formats_and_columns_found_by_name(name, rows, ra, dec, dist, err):
    cat = read_catalog(CATALOGS / name)
    assert len(cat) == rows
    assert cat.columns.get("ra") == ra and cat.columns.get("dec") == dec
    assert cat.columns.get("dist") == dist and cat.columns.get("err") == err
    assert cat.accepted.all() and not cat.refused
    assert np.all((cat.ra_deg >= 0) & (cat.ra_deg < 360)) and np.all(np.abs(cat.dec_deg) <= 90)
    if dist:
        finite = cat.dist_mpc[np.isfinite(cat.dist_mpc)]
        assert finite.size and finite.min() >= 0


def test_4fgl_ellipses_are_95_percent_and_in_degrees():
    cat = read_catalog(CATALOGS / "4FGL-DR4_gll_psc_v35_positions.fits")
    e = cat.errors
    assert e.containment == 0.95
    ok = np.isfinite(e.major_deg)
    assert ok.sum() > 7000 and np.all(e.minor_deg[ok] <= e.major_deg[ok])
    assert 0.01 < np.median(e.major_deg[ok]) < 0.2  # 4FGL 95 % semi-major axes are a few arcmin


def test_err_column_with_unit_and_containment():
    cat = read_catalog(CATALOGS / "igaps-dr1-215a-small.fits.gz", err_col="posErr", err_unit="arcsec",
                       err_containment=0.68)
    raw = np.asarray(Table.read(CATALOGS / "igaps-dr1-215a-small.fits.gz")["posErr"], float)
    assert np.allclose(cat.errors.major_deg, raw / 3600.0, equal_nan=True)
    assert cat.errors.containment == 0.68
    with pytest.raises(CatalogError, match="not an angle unit"):
        read_catalog(CATALOGS / "CLU_mini.csv", err_col="a", err_unit="Mpc")


def test_bad_rows_are_refused_and_counted(tmp_path):
    text = (CATALOGS / "CLU_mini.csv").read_text().splitlines()
    header, rows = text[0], text[1:]
    cols = header.split(",")
    i_ra, i_dec = cols.index("ra"), cols.index("dec")

    def edit(line: str, ra: str, dec: str) -> str:
        parts = line.split(",")
        parts[i_ra], parts[i_dec] = ra, dec
        return ",".join(parts)

    bad = [edit(rows[0], "nan", "10"), edit(rows[1], "12", ""), edit(rows[2], "400", "10"),
           edit(rows[3], "-5", "10"), edit(rows[4], "10", "-91"), edit(rows[5], "inf", "0")]
    path = tmp_path / "hostile.csv"
    path.write_text("\n".join([header, *bad, *rows[6:]]) + "\n")
    cat = read_catalog(path)
    assert cat.refused == {"position not a finite number": 3, "RA outside [0, 360] deg": 2,
                           "Dec outside [-90, 90] deg": 1}
    assert cat.accepted.tolist() == [False] * 6 + [True] * 4
    assert np.isnan(cat.ra_deg[:6]).all() and np.isfinite(cat.ra_deg[6:]).all()


@pytest.mark.parametrize("content, match", [
    (b"", "the table has no rows|unreadable"),
    (b"SIMPLE  = T\nnot fits", "unreadable"),
    (b"a,b\n1,2\n3,4\n", "no ra column found"),
    (b"ra,dec\nx,1\n2,3\n", "column 'ra' is not numeric"),
    (b"ra,dec\nnan,1\n400,3\n", "no row has a usable position"),
])
def test_bad_files_are_one_line_errors(tmp_path, content, match):
    path = tmp_path / "cat.csv"
    path.write_bytes(content)
    with pytest.raises(CatalogError, match=match) as info:
        read_catalog(path)
    assert "\n" not in str(info.value) and str(tmp_path) not in str(info.value)


def test_unknown_column_and_missing_file(tmp_path):
    with pytest.raises(CatalogError, match="no column 'RA_deg_x'"):
        read_catalog(CATALOGS / "CLU_mini.csv", ra_col="RA_deg_x")
    with pytest.raises(CatalogError, match="cannot read"):
        read_catalog(tmp_path / "missing.fits")
