"""Catalogs in the real PostgreSQL: load, list, replace, cone search on the HEALPix
index, and the ``mma-broker catalog`` commands (tests/conftest.py starts the server)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import sqlalchemy as sa

from broker.archive import Archive
from broker.archive.raw import PostgresRawStore
from broker.enrich.catalogs import CatalogError, cone_search, list_catalogs, read_catalog, store_catalog
from tests.conftest import DATA, run_cli

pytestmark = pytest.mark.integration
CATALOGS = DATA / "catalogs"


@pytest.fixture
def engine(fresh_db):
    with Archive(fresh_db, PostgresRawStore()) as arch:
        arch.migrate()
    eng = sa.create_engine(fresh_db)
    yield eng
    eng.dispose()


def test_store_list_and_cone_search_equal_the_exact_separation(engine):
    cat = read_catalog(CATALOGS / "50MGC_catalog_short.fits", "50mgc")
    assert store_catalog(engine, cat, file_name="50MGC_catalog_short.fits", file_sha256="x") == 15424
    [row] = list_catalogs(engine)
    assert (row["name"], row["n_rows"], row["n_sources"]) == ("50mgc", 15424, 15424)
    assert row["columns"] == {"ra": "ra", "dec": "dec", "dist": "bestdist", "name": "objname"}
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*), count(dist_mpc) FROM catalog_sources")).one()
        props = conn.execute(sa.text("SELECT properties FROM catalog_sources WHERE row = 0")).scalar_one()
        plan = conn.execute(sa.text("EXPLAIN SELECT row FROM catalog_sources WHERE catalog_id = 1 "
                                    "AND hpx >= 0 AND hpx < 1000000")).all()
    assert stored == (15424, 15398)
    assert props["objname"] == str(cat.table["objname"][0]).strip()
    assert "ix_catalog_sources_hpx" in " ".join(r[0] for r in plan)
    # NGC 4993 field, 3 deg: the index join gives exactly the sources within the cone
    ra0, dec0, radius = 197.45, -23.38, 3.0
    found = cone_search(engine, "50mgc", ra0, dec0, radius)
    r1, d1 = np.radians(cat.ra_deg), np.radians(cat.dec_deg)
    cos = np.sin(d1) * math.sin(math.radians(dec0)) + np.cos(d1) * math.cos(math.radians(dec0)) * np.cos(
        r1 - math.radians(ra0))
    expected = np.flatnonzero(np.degrees(np.arccos(np.clip(cos, -1, 1))) <= radius).tolist()
    assert 5 < len(found) == len(expected) and found == expected
    with pytest.raises(CatalogError, match="no catalog 'nope'"):
        cone_search(engine, "nope", 0, 0, 1)


def test_replace_and_refused_rows(engine, tmp_path):
    text = (CATALOGS / "CLU_mini.csv").read_text().splitlines()
    path = tmp_path / "clu.csv"
    cols = text[0].split(",")
    bad = text[1].split(",")
    bad[cols.index("dec")] = "95"
    path.write_text("\n".join([text[0], ",".join(bad), *text[2:]]) + "\n")
    cat = read_catalog(path, "clu")
    assert store_catalog(engine, cat) == 9
    with pytest.raises(CatalogError, match="already loaded"):
        store_catalog(engine, cat)
    assert store_catalog(engine, read_catalog(CATALOGS / "CLU_mini.csv", "clu"), replace=True) == 10
    [row] = list_catalogs(engine)
    assert row["n_sources"] == 10 and row["refused"] == {}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM catalog_sources")).scalar_one() == 10


def test_catalog_commands(fresh_db, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_")}
    env.update(MMA_BROKER_HOME=str(tmp_path / "home"), MMA_BROKER_ARCHIVE__DATABASE_URL=fresh_db)
    fermi = CATALOGS / "4FGL-DR4_gll_psc_v35_positions.fits"
    out = run_cli(env, "catalog", "load", "4fgl-dr4", str(fermi))
    assert "4fgl-dr4: stored 7,195 sources of 7,195 rows" in out.stdout
    assert "Conf_95_SemiMajor" in out.stdout
    listed = run_cli(env, "catalog", "list", "--json")
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["name"] == "4fgl-dr4" and row["file_name"] == fermi.name and row["err_containment"] == 0.95
    assert len(row["file_sha256"]) == 64
    again = run_cli(env, "catalog", "load", "4fgl-dr4", str(fermi), check=False)
    assert again.returncode == 1 and "mma-broker: error: catalog '4fgl-dr4' is already loaded" in again.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("ra,dec\nnan,1\n10,100\n20,30\n")
    proc = run_cli(env, "catalog", "load", "bad", str(bad))
    assert "bad: refused 2 of 3 rows (position not a finite number: 1; Dec outside [-90, 90] deg: 1)" in proc.stderr
    assert "stored 1 sources" in proc.stdout
    junk = run_cli(env, "catalog", "load", "junk", str(DATA / "catalogs" / "SOURCES.md"), check=False)
    assert junk.returncode == 1 and junk.stderr.startswith("mma-broker: error: catalog SOURCES.md")
