"""The Swift-BAT 105-month, BAT survey and VLASS catalogs in the real PostgreSQL.

``catalog load`` with the commands docs/crossmatch.md gives, the stored rows and
errors, a cone search, and the enrich stage's catalog cache on the real SVOM notice
of Cen X-3 (match and label from the catalog's name column). Expected values are
read from the files with the standard library (csv, splitting on ``|``) or
astropy.io.fits (tests/conftest.py starts the server).
"""

from __future__ import annotations

import csv
import math
import os

import astropy.units as u
import numpy as np
import pytest
import sqlalchemy as sa
from astropy.coordinates import SkyCoord

from broker.archive import Archive
from broker.archive.raw import PostgresRawStore
from broker.enrich.catalogs import cone_search, read_catalog, store_catalog
from broker.enrich.inputs import read_alert_or_map
from broker.pipeline.enrich import CatalogCache, crossmatch_point_fast
from tests.conftest import DATA, run_cli

pytestmark = pytest.mark.integration
CATALOGS = DATA / "catalogs"
BAT = CATALOGS / "BAT_105m_catalog_07jul2019.txt"
SURVEY = CATALOGS / "survey6b_2.cat"
VLASS = CATALOGS / "CIRADA_VLASS1QL_table1_components_v1_head100.csv"
SVOM_CEN_X3 = DATA / "voevent" / "gwcelery" / "svom_catalog_gcn.xml"


def _bat_plain() -> tuple[list[str], list[list[str]]]:
    lines = BAT.read_text().splitlines()
    header = [h.strip() for h in lines[0].split("|")]
    return header, [[f.strip() for f in ln.split("|")] for ln in lines[1:] if ln.strip() and not ln.startswith("#")]


@pytest.fixture
def engine(fresh_db):
    with Archive(fresh_db, PostgresRawStore()) as arch:
        arch.migrate()
    eng = sa.create_engine(fresh_db)
    yield eng
    eng.dispose()


def test_catalog_load_command_for_the_bat_105m_text_table(fresh_db, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_")}
    env.update(MMA_BROKER_HOME=str(tmp_path / "home"), MMA_BROKER_ARCHIVE__DATABASE_URL=fresh_db)
    header, rows = _bat_plain()
    out = run_cli(env, "catalog", "load", "swift-bat-105m", str(BAT), "--err-radius", "4.5", "--err-unit", "arcmin",
                  "--err-containment", "0.9")
    assert f"swift-bat-105m: stored {len(rows):,} sources of {len(rows):,} rows" in out.stdout
    assert "errors from 'fixed 4.5 arcmin'" in out.stdout and "names from 'BAT_NAME'" in out.stdout
    eng = sa.create_engine(fresh_db)
    try:
        with eng.connect() as conn:
            meta = conn.execute(sa.text("SELECT n_rows, n_sources, columns, err_containment FROM catalogs")).one()
            stored = conn.execute(sa.text("SELECT row, ra_deg, dec_deg, err_major_deg, err_minor_deg, properties "
                                          "FROM catalog_sources ORDER BY row")).all()
    finally:
        eng.dispose()
    assert (meta.n_rows, meta.n_sources, meta.err_containment) == (len(rows), len(rows), 0.9)
    assert meta.columns == {"ra": "RA", "dec": "DEC", "name": "BAT_NAME", "err": "fixed 4.5 arcmin"}
    assert [s.row for s in stored] == list(range(len(rows)))
    assert [s.ra_deg for s in stored] == [float(r[header.index("RA")]) for r in rows]
    assert [s.dec_deg for s in stored] == [float(r[header.index("DEC")]) for r in rows]
    assert all(s.err_major_deg == 4.5 / 60 and s.err_minor_deg is None for s in stored)
    i_other = header.index("OTHER_NAME")
    assert [s.properties["OTHER_NAME"] for s in stored] == [r[i_other] or None for r in rows]
    assert [s.properties["BAT_NAME"] for s in stored] == [r[header.index("BAT_NAME")] for r in rows]


def test_vlass_and_bat_survey_stored_with_their_errors_and_names(engine):
    with VLASS.open(newline="") as f:
        plain = list(csv.DictReader(f))
    vlass = read_catalog(VLASS, "vlass-ql1", err_ra_col="E_RA", err_dec_col="E_DEC")
    assert store_catalog(engine, vlass) == len(plain) == 99
    from astropy.io import fits

    with fits.open(SURVEY) as h:
        n_survey = h["BAT_CATALOG"].header["NAXIS2"]
    assert store_catalog(engine, read_catalog(SURVEY, "bat-survey")) == n_survey == 1276
    with engine.connect() as conn:
        got = conn.execute(sa.text(
            "SELECT s.row, s.err_major_deg, s.err_minor_deg, s.err_pa_deg, s.properties->>'Component_name' "
            "FROM catalog_sources s JOIN catalogs c ON c.id = s.catalog_id WHERE c.name = 'vlass-ql1' "
            "ORDER BY s.row")).all()
        cont = conn.execute(sa.text("SELECT err_containment FROM catalogs WHERE name = 'vlass-ql1'")).scalar_one()
    assert math.isclose(cont, 1 - math.exp(-0.5), rel_tol=1e-12)
    for g, r in zip(got, plain):
        e_ra, e_dec = float(r["E_RA"]), float(r["E_DEC"])
        assert (g[1], g[2], g[3]) == (max(e_ra, e_dec), min(e_ra, e_dec), 0.0 if e_dec >= e_ra else 90.0)
        assert g[4] == r["Component_name"]
    alert = read_alert_or_map(SVOM_CEN_X3.read_bytes()).point
    [row] = cone_search(engine, "bat-survey", alert.ra, alert.dec, 0.2)
    with engine.connect() as conn:
        name = conn.execute(sa.text("SELECT s.properties->>'NAME' FROM catalog_sources s JOIN catalogs c "
                                    "ON c.id = s.catalog_id WHERE c.name = 'bat-survey' AND s.row = :r"),
                            {"r": row}).scalar_one()
    assert name == "Cen X-3"


def test_enrich_catalog_cache_matches_and_names_cen_x3(engine):
    header, rows = _bat_plain()
    store_catalog(engine, read_catalog(BAT, "swift-bat-105m", err_radius=4.5, err_unit="arcmin",
                                       err_containment=0.9))
    cache = CatalogCache(engine, ["swift-bat-105m"])
    [cat] = cache.catalogs()
    assert cat.name_col == "BAT_NAME" and cat.errors.containment == 0.9
    alert = read_alert_or_map(SVOM_CEN_X3.read_bytes()).point
    m = crossmatch_point_fast(alert, cat, 0.9)
    sep = SkyCoord(alert.ra * u.deg, alert.dec * u.deg).separation(
        SkyCoord([float(r[header.index("RA")]) for r in rows] * u.deg,
                 [float(r[header.index("DEC")]) for r in rows] * u.deg)).deg
    expected = [int(j) for j in np.argsort(sep) if sep[j] <= math.hypot(alert.error_radius, 4.5 / 60)]
    assert [int(cat.rows[i]) for i in m.rows] == expected and int(cat.rows[m.nearest_row]) == expected[0]
    assert math.isclose(m.nearest_separation_deg, sep[expected[0]], rel_tol=1e-6)
    labels = cache.labels(cat, [expected[0]])
    assert labels == {expected[0]: "SWIFT J1120.9-6037"}
    assert rows[expected[0]][header.index("COUNTERPART_NAME")] == "Cen X-3"
