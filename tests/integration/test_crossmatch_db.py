"""Cross-match results archived with the Event, on the real PostgreSQL (tests/conftest.py).

The enrich handler with the real stores (LocalizationStore, GroupStore, CatalogCache,
write_enrichment) on real data: MS181101ab's preliminary alert (the LVK user guide's
BAYESTAR map with distance layers) against the 50 Mpc Galaxy Catalog and the AGILE
ground alert (3 deg circle) against 4FGL-DR4, both loaded with store_catalog.
"""

from __future__ import annotations

import functools
import json
import os

import pytest
import sqlalchemy as sa

from broker.archive import Archive
from broker.archive.raw import PostgresRawStore
from broker.enrich.catalogs import read_catalog, store_catalog
from broker.enrich.config import EnrichSettings
from broker.enrich.groups import GroupStore
from broker.enrich.matchstore import CROSSMATCHES, crossmatches_of, write_enrichment
from broker.enrich.store import LocalizationStore
from broker.pipeline.enrich import CatalogCache, EnrichHandler
from broker.serde import EventCodec, Provenance
from broker.sources import decode
from tests.conftest import DATA, run_cli

pytestmark = pytest.mark.integration
GW_JSON = DATA / "igwn/userguide/MS181101ab-preliminary.json"
AGILE = DATA / "gcn/gcn-schema-pr161-classic/gcn/notices/classic/agile/Ground_alert.example.json"
PROV = Provenance("enrich", "test", "0" * 16)


class RawArchive:
    def __init__(self):
        self.raws, self.events = {}, {}

    def add(self, raw):
        evs = decode(raw)
        for e in evs:
            self.raws.setdefault(e.id, raw)
            self.events.setdefault(e.id, e)
        return evs

    def raw(self, event_id):
        return self.raws[event_id]

    def get(self, event_id):
        e = self.events.get(event_id)
        return None if e is None else type("Rec", (), {"event": e})()


class Msg:
    def __init__(self, value):
        self._v = value

    def value(self):
        return self._v


@pytest.fixture
def engine(fresh_db):
    with Archive(fresh_db, PostgresRawStore()) as arch:
        arch.migrate()
    eng = sa.create_engine(fresh_db)
    store_catalog(eng, read_catalog(DATA / "catalogs/50MGC_catalog_short.fits", "50MGC"))
    store_catalog(eng, read_catalog(DATA / "catalogs/4FGL-DR4_gll_psc_v35_positions.fits", "4FGL"))
    yield eng
    eng.dispose()


def _run(engine, archive, paths):
    """Handle the Events of these alerts as one batch with the real stores; write it."""
    h = EnrichHandler(localizations=LocalizationStore(engine), groups=GroupStore(engine), archive=archive,
                      settings=EnrichSettings(catalogs=["50MGC", "4FGL"], top_n=10),
                      enriched_topic="mma.events.enriched", coincidences_topic="mma.coincidences", provenance=PROV,
                      catalogs=CatalogCache(engine, ["50MGC", "4FGL"]),
                      write_batch=functools.partial(write_enrichment, engine))
    codec = EventCodec()
    handled = [h.handle(Msg(codec.encode(ev, PROV))) for p in paths for ev in archive.add(p.read_bytes())]
    h.write([x for x in handled if x.write is not None])
    return [json.loads(r.value) for x in handled for r in x.outputs if r.topic == "mma.events.enriched"]


def _count(engine):
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(CROSSMATCHES)).scalar_one()


def test_stored_crossmatch_equals_the_published_one_and_replay_changes_nothing(engine):
    archive = RawArchive()
    docs = _run(engine, archive, [GW_JSON, AGILE])
    gw, agile = docs
    for doc in docs:
        stored = crossmatches_of(engine, doc["id"])
        assert set(stored) == {"50MGC", "4FGL"}
        for name, row in stored.items():
            assert row["result"] == doc["enrichment"]["crossmatch"][name]
            assert row["localization_id"] == doc["enrichment"]["localization"]["id"]
    sky = crossmatches_of(engine, gw["id"])["50MGC"]
    assert sky["kind"] == "skymap" and sky["result"]["three_d"] is True
    assert sky["n_matched"] == gw["enrichment"]["crossmatch"]["50MGC"]["n_inside"] > 10
    vols = [m["searched_prob_vol"] for m in sky["result"]["matches"]]
    assert vols == sorted(vols)  # ranked by the 3D searched probability, as published
    assert crossmatches_of(engine, agile["id"])["4FGL"]["n_matched"] == 11
    n = _count(engine)
    assert n == 4
    with engine.connect() as conn:  # the point position went in with the same write
        assert conn.execute(sa.text("SELECT count(*) FROM event_positions WHERE event_id = :i"),
                            {"i": agile["id"]}).scalar_one() == 1
    again = _run(engine, archive, [GW_JSON, AGILE])  # a replay: same records, same rows
    assert [d["enrichment"]["crossmatch"] for d in again] == [d["enrichment"]["crossmatch"] for d in docs]
    assert _count(engine) == n
    assert crossmatches_of(engine, gw["id"])["50MGC"]["result"] == sky["result"]


def test_events_crossmatch_command(engine, fresh_db, tmp_path):
    (gw,) = _run(engine, RawArchive(), [GW_JSON])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_")}
    env.update(MMA_BROKER_HOME=str(tmp_path / "home"), MMA_BROKER_ARCHIVE__DATABASE_URL=fresh_db)
    out = json.loads(run_cli(env, "events", "crossmatch", gw["id"], "--json").stdout)
    assert out["50MGC"]["result"] == gw["enrichment"]["crossmatch"]["50MGC"]
    text = run_cli(env, "events", "crossmatch", gw["id"]).stdout
    first = gw["enrichment"]["crossmatch"]["50MGC"]["matches"][0]
    assert text.startswith("4FGL: ") and "\n50MGC: " in text and "90% region" in text and (first["name"] or f"row {first['row']}") in text
    assert str(tmp_path) not in text
    missing = run_cli(env, "events", "crossmatch", "igwn:nope", check=False)
    assert missing.returncode == 1 and "no cross-match stored" in missing.stderr
