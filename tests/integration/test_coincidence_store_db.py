"""Table ``coincidences`` (migration 0013) written by the enrich loop, on the real PostgreSQL.

The enrich handler with the real stores (LocalizationStore, GroupStore,
write_enrichment) and ``store_coincidences`` =
:func:`broker.enrich.coincidence_store.write_coincidences`, as ``stages()`` builds it,
on real alerts: MS181101ab's preliminary alert (the LVK user guide's BAYESTAR map), the
Fermi GBM ground notice of the GCN Kafka examples moved to T0 + 2 s (as
tests/unit/test_enrich_stage.py does: no real coincident pair is bundled), then the
superevent's retraction; and a ZTF candidate made for the test at the map's peak one
day after T0, found by both lanes.
"""

from __future__ import annotations

import functools

import pytest
import sqlalchemy as sa

from broker.archive import Archive
from broker.archive.raw import PostgresRawStore
from broker.enrich.coincidence_store import COINCIDENCES, latest_of_group, write_coincidences
from broker.enrich.config import EnrichSettings
from broker.enrich.groups import GroupStore
from broker.enrich.matchstore import write_enrichment
from broker.enrich.store import LocalizationStore
from broker.pipeline.enrich import EnrichHandler
from tests.integration.test_crossmatch_db import PROV, Msg, RawArchive
from tests.unit.test_enrich_stage import CODEC, GBM_JSON, GW_JSON, GW_RETRACTION, _candidate, docs, moved

pytestmark = pytest.mark.integration
GW_KEY, GRB_KEY = "igwn:MS181101ab", "gcn:fermi:745121685"
GW_GRB = f"gw-grb:{GW_KEY}+{GRB_KEY}"


@pytest.fixture
def engine(fresh_db):
    with Archive(fresh_db, PostgresRawStore()) as arch:
        arch.migrate()
    eng = sa.create_engine(fresh_db)
    yield eng
    eng.dispose()


def _handler(engine, archive, owner=None, **kw):
    return EnrichHandler(localizations=LocalizationStore(engine), groups=GroupStore(engine), archive=archive,
                         settings=EnrichSettings(catalogs=[]), enriched_topic="mma.events.enriched",
                         coincidences_topic="mma.coincidences", provenance=PROV,
                         write_batch=functools.partial(write_enrichment, engine),
                         store_coincidences=functools.partial(write_coincidences, engine, owner=owner), **kw)


def _batch(h, events):
    """Handle Events as one batch and write it as the runner does (messages with a write)."""
    handled = [h.handle(Msg(CODEC.encode(ev, PROV))) for ev in events]
    h.write([x for x in handled if x.write is not None])
    h.committed(handled, [])
    return handled


def _floats(obj):
    """``obj`` with every number as a float."""
    if isinstance(obj, dict):
        return {k: _floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_floats(v) for v in obj]
    return float(obj) if isinstance(obj, (int, float)) and not isinstance(obj, bool) else obj


def _rows(engine):
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(COINCIDENCES).order_by(COINCIDENCES.c.created_at)).mappings()]


def test_each_published_version_is_one_row_and_a_replay_writes_none(engine):
    archive = RawArchive()
    h = _handler(engine, archive)
    _batch(h, archive.add(GW_JSON.read_bytes()))
    assert _rows(engine) == []  # nothing to pair with yet
    grb_batch = archive.add(moved(GBM_JSON, "2018-11-01T22:22:48.654"))
    (first,) = docs(_batch(h, grb_batch), "mma.coincidences")
    ret_batch = archive.add(GW_RETRACTION.read_bytes())
    (ret,) = docs(_batch(h, ret_batch), "mma.coincidences")
    rows = _rows(engine)
    assert [(r["id"], r["computed_from"]) for r in rows] == [(GW_GRB, first["computed_from"]),
                                                            (GW_GRB, ret["computed_from"])]
    r1, r2 = rows
    # the whole record as published, provenance included (JSONB keeps numbers as numeric: a
    # float with a large exponent reads back as an int of the same value)
    assert _floats(r1["record"]) == _floats(first) and _floats(r2["record"]) == _floats(ret)
    assert (r1["kind"], r1["trigger_group"], r1["other_group"]) == ("gw-grb", GW_KEY, GRB_KEY)
    assert r1["trigger_event_id"] == first["members"][0]["event_id"] and r1["other_event_id"] == grb_batch[0].id
    assert r1["dt_s"] == pytest.approx(2.0) and r1["overlap_integral"] == first["overlap_integral"] > 0
    assert r1["joint_far_hz"] == first["joint_far_hz"] > 0
    assert (r1["coincident"], r1["retracted"], r2["retracted"]) == (True, False, True)
    assert r2["retracted_by"] == ret["retracted_by"] == ret["computed_from"]
    # a replay (offsets not committed: a new loop handles the same messages) writes nothing new
    again = _handler(engine, archive)
    replayed = docs(_batch(again, ret_batch), "mma.coincidences")
    assert [(c["id"], c["computed_from"]) for c in replayed] == [(GW_GRB, ret["computed_from"])]  # republished
    assert len(_rows(engine)) == 2 and _floats(_rows(engine)[0]["record"]) == _floats(first)
    # the group pages' read: the latest version, from either side
    with engine.connect() as conn:
        for key, other in ((GW_KEY, GRB_KEY), (GRB_KEY, GW_KEY)):
            (c,) = latest_of_group(conn, key)
            assert (c["id"], c["computed_from"], c["retracted"], c["other_group"]) == (
                GW_GRB, ret["computed_from"], True, other)
        assert latest_of_group(conn, "igwn:S000000x") == []


def test_a_pair_both_lanes_find_is_one_row_written_by_its_owner(engine):
    archive = RawArchive()
    notices = _handler(engine, archive, owner="enrich.notices", cross_lane=True)
    optical = _handler(engine, archive, owner="enrich.optical", cross_lane=True, recheck_optical=True)
    (gw,) = archive.add(GW_JSON.read_bytes())
    _batch(notices, [gw])  # the GW's group and map are stored; no candidate yet
    sky = LocalizationStore(engine).load(GroupStore(engine).get(GW_KEY).best_localization.id)
    import numpy as np
    from astropy_healpix import uniq_to_level_ipix
    from astropy_healpix.core import healpix_to_lonlat

    level, ipix = uniq_to_level_ipix(sky.uniq[np.argmax(sky.probdensity)])
    lon, lat = healpix_to_lonlat(ipix, 2 ** int(level), order="nested")
    cand = _candidate(1, 1.0, float(lon.deg), float(lat.deg))
    archive.events[cand.id] = cand
    (c_opt,) = docs(_batch(optical, [cand]), "mma.coincidences")  # the optical lane finds it and claims it
    # the notices lane handles the GW again (its offsets were not committed) and finds the pair too
    handled = _batch(notices, [gw])
    assert docs(handled, "mma.coincidences") == []  # left to the owner
    (enr,) = docs(handled, "mma.events.enriched")
    assert c_opt["id"] in enr["enrichment"]["coincidences"] and notices.stats.left_to_other_lane == 1
    rows = _rows(engine)
    assert [(r["id"], r["computed_from"], r["kind"]) for r in rows] == [
        (c_opt["id"], c_opt["computed_from"], "gw-optical")]
    assert rows[0]["dt_s"] == pytest.approx(86400.0) and rows[0]["other_group"] == "ztf:ZTF18test1"
    with engine.connect() as conn:
        owner = conn.execute(sa.text("SELECT owner FROM coincidence_claims")).scalars().all()
    assert owner == ["enrich.optical"]
    # and the two lanes writing one version at once: one row, one owner
    import threading

    rec = dict(c_opt, computed_from="ztf:test1:again")
    got: dict[str, set] = {}
    barrier = threading.Barrier(2)

    def lane(name):
        barrier.wait()
        got[name] = write_coincidences(engine, [rec], owner=name)

    threads = [threading.Thread(target=lane, args=(n,)) for n in ("enrich.notices", "enrich.optical")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(v) for v in got.values()) == [0, 1]
    assert [r["computed_from"] for r in _rows(engine)] == [c_opt["computed_from"], "ztf:test1:again"]
