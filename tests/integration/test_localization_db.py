"""Localizations, positions and groups in the real PostgreSQL (tests/conftest.py starts it).

Real data only: MS220722v's BAYESTAR multi-order map, MS181101ab's alerts in every form,
the Fermi GBM notices of trigger 745121685 and the ZTF alerts of tests/data/ztf.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from broker.archive import Archive
from broker.archive.raw import PostgresRawStore
from broker.enrich.localization import PointRegion, extract_localization
from broker.enrich.store import LocalizationError, LocalizationStore, content_id, index_positions
from broker.skymap import read_skymap
from broker.sources import decode
from tests.conftest import DATA, run_cli

pytestmark = pytest.mark.integration
MS220722V = DATA / "igwn" / "gwcelery" / "MS220722v_bayestar.multiorder.fits"
USERGUIDE = DATA / "igwn" / "userguide"
GCN = DATA / "gcn" / "gwcelery-kafka"
ZTF = sorted((DATA / "ztf").rglob("*.avro"))


@pytest.fixture
def engine(fresh_db):
    with Archive(fresh_db, PostgresRawStore()) as arch:
        arch.migrate()
    eng = sa.create_engine(fresh_db)
    yield eng
    eng.dispose()


def _decoded(path: Path):
    raw = path.read_bytes()
    return [(ev, raw) for ev in decode(raw)]


def _positions_over_map(sky, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions drawn from the map itself (half) and uniformly on the sky (half)."""
    from astropy_healpix import uniq_to_level_ipix
    from astropy_healpix.core import healpix_to_lonlat

    rng = np.random.default_rng(seed)
    level, ipix = uniq_to_level_ipix(sky.uniq)
    prob = sky.probdensity * np.ldexp(np.pi / 3, -2 * level.astype(int))
    pick = rng.choice(sky.uniq.size, size=n // 2, p=prob / prob.sum())
    sub = rng.integers(0, 1 << 20, size=pick.size)  # a random point inside the picked tile
    deep = 29 - level[pick]
    lon, lat = healpix_to_lonlat((ipix[pick] << (2 * deep)) + sub % (1 << (2 * deep)).clip(1), 1 << 29, order="nested")
    ra_u = rng.uniform(0, 360, n - n // 2)
    dec_u = np.degrees(np.arcsin(rng.uniform(-1, 1, n - n // 2)))
    return np.concatenate([lon.deg, ra_u]), np.concatenate([lat.deg, dec_u])


def test_put_is_idempotent_and_load_gives_the_map_back(engine):
    sky = read_skymap(MS220722V.read_bytes())
    store = LocalizationStore(engine)
    ref = store.put("igwn:MS220722v:preliminary:1", sky)
    again = store.put("igwn:MS220722v:preliminary:1-copy", sky)
    assert ref == again and ref.id == content_id(sky) and ref.kind == "skymap" and ref.n_tiles == sky.uniq.size
    from broker.enrich.crossmatch import prepare

    a50, a90 = prepare(sky).credible_areas_deg2((0.5, 0.9))
    assert (ref.area_50_deg2, ref.area_90_deg2) == (pytest.approx(a50, rel=1e-12), pytest.approx(a90, rel=1e-12))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM localizations")).scalar_one() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM localization_tiles")).scalar_one() == sky.uniq.size
    back = store.load(ref.id)
    order = np.argsort(sky.uniq)
    assert np.array_equal(back.uniq, sky.uniq[order])
    assert np.array_equal(back.probdensity, sky.probdensity[order])
    for c in ("DISTMU", "DISTSIGMA", "DISTNORM"):
        assert np.array_equal(back.distance[c], sky.distance[c][order], equal_nan=True)
    assert content_id(back) == ref.id and back.meta["ORDERING"] == "NUNIQ"
    assert store.ref_of("igwn:MS220722v:preliminary:1-copy") == ref and store.ref_of("nope") is None
    with pytest.raises(LocalizationError, match="no localization"):
        store.load("sha256:0")


def test_events_in_region_equal_ligo_skymap_searched_prob(engine):
    """MS220722v's 50 / 90 % regions in SQL hold exactly the positions whose ligo.skymap
    searched_prob (computed in memory on the same positions) is <= the level."""
    from astropy.coordinates import SkyCoord
    import astropy.units as u
    from ligo.skymap.io import read_sky_map
    from ligo.skymap.postprocess import crossmatch

    sky = read_skymap(MS220722V.read_bytes())
    store = LocalizationStore(engine)
    ref = store.put("igwn:MS220722v:x", sky)
    ra, dec = _positions_over_map(sky, 4000, seed=7)
    ids = [f"ztf:pos{i}" for i in range(ra.size)]
    with engine.begin() as conn:
        from broker.enrich.store import POSITIONS, _hpx

        conn.execute(sa.insert(POSITIONS), [{"event_id": e, "source": "ztf", "time": None, "ra_deg": float(r),
                                             "dec_deg": float(d), "hpx": int(h)}
                                            for e, r, d, h in zip(ids, ra, dec, _hpx(ra, dec))])
    searched = crossmatch(read_sky_map(str(MS220722V), moc=True), SkyCoord(ra * u.deg, dec * u.deg)).searched_prob
    for level in (0.5, 0.9):
        expected = {ids[i] for i in np.flatnonzero(searched <= level)}
        found = set(store.events_in_region(ref.id, level, limit=None))
        assert 100 < len(expected) < ra.size and found == expected
    assert store.events_in_region(ref.id, 0.9, sources=["gcn"]) == []
    assert len(store.events_in_region(ref.id, 0.9, limit=5)) == 5
    with pytest.raises(LocalizationError, match="credible level"):
        store.events_in_region(ref.id, 1.5)


def test_ztf_candidates_and_point_regions(engine):
    """Real ZTF alerts indexed; a GBM error circle (a point region) finds the
    candidates within radius_at_level of it, and not those outside."""
    from broker.enrich.coinc import radius_at_level

    events = [ev for p in ZTF for ev in decode(p.read_bytes())]
    assert index_positions(engine, events) == len(events) > 20
    assert index_positions(engine, events) == len(events)  # idempotent
    store = LocalizationStore(engine)
    target = events[0]
    # the ground position of GBM trigger 745121685, moved onto the first ZTF candidate
    [(gbm, raw)] = _decoded(GCN / "kafka_alert_fermi_ground.json")
    region = extract_localization(gbm, raw)
    assert isinstance(region, PointRegion) and region.containment == 0.68
    moved = PointRegion(target.localization.ra, target.localization.dec, region.error_radius_deg, 0.68)
    ref = store.put(gbm.id, moved)
    assert ref.kind == "point" and ref.n_tiles > 50
    r90 = radius_at_level(region.error_radius_deg, 0.68, 0.9)
    assert ref.area_90_deg2 == pytest.approx(np.pi * r90**2, rel=1e-3)
    found = set(store.events_in_region(ref.id, 0.9, sources=["ztf"], limit=None))
    from astropy.coordinates import angular_separation

    sep = np.degrees([angular_separation(np.radians(e.localization.ra), np.radians(e.localization.dec),
                                         np.radians(moved.ra_deg), np.radians(moved.dec_deg)) for e in events])
    inside = {e.id for e, s in zip(events, sep) if s < 0.9 * r90}
    outside = {e.id for e, s in zip(events, sep) if s > 1.1 * r90}
    assert inside and inside <= found and not (found & outside)
    assert gbm.id not in store.events_in_region(ref.id, 0.9, limit=None)  # its own event is left out
    # a time window
    t = sorted(e.time for e in events if e.id in found)
    assert store.events_in_region(ref.id, 0.9, since=t[-1], limit=None) == \
        sorted(e.id for e in events if e.id in found and e.time >= t[-1])


def test_events_group_and_in_region_commands(fresh_db, tmp_path):
    from broker.enrich.groups import GroupStore

    with Archive(fresh_db, PostgresRawStore()) as arch:
        arch.migrate()
    engine = sa.create_engine(fresh_db)
    store, groups = LocalizationStore(engine), GroupStore(engine)
    for name in ("MS181101ab-preliminary.json", "MS181101ab-2-Preliminary.xml", "MS181101ab-initial.json",
                 "MS181101ab-retraction.json"):
        for ev, raw in _decoded(USERGUIDE / name):
            sky = extract_localization(ev, raw)
            groups.add(ev, store.put(ev.id, sky) if sky is not None else None)
    ztf = [ev for p in ZTF for ev in decode(p.read_bytes())]
    index_positions(engine, ztf)
    engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_")}
    env.update(MMA_BROKER_HOME=str(tmp_path / "home"), MMA_BROKER_ARCHIVE__DATABASE_URL=fresh_db)
    out = json.loads(run_cli(env, "events", "group", "igwn:MS181101ab:initial:20181101T223625Z", "--json").stdout)
    assert out["key"] == "igwn:MS181101ab" and out["retracted"] is True
    assert out["revisions"][0] == "igwn:MS181101ab:preliminary:20181101T223449Z"
    assert out["latest"] == "igwn:MS181101ab:retraction:20181101T233623Z"
    assert out["best_localization"]["kind"] == "skymap"
    text = run_cli(env, "events", "group", "igwn:MS181101ab").stdout
    assert "retracted" in text and "MS181101ab" in text and "/tmp" not in text
    region = json.loads(run_cli(env, "events", "in-region", "igwn:MS181101ab", "--level", "0.9", "--json").stdout)
    assert region["localization"]["id"] == out["best_localization"]["id"] and isinstance(region["events"], list)
    bad = run_cli(env, "events", "group", "gcn:nope:1", check=False)
    assert bad.returncode == 1 and "no event group" in bad.stderr


def test_groups_of_the_gbm_trigger(engine):
    """GBM trigger 745121685: alert (no position), flight 7.15°, ground 1.08°, final 1.0°
    (all 68 %): one group, arrival order kept, best = the final circle; replays change
    nothing; found in a time window as a 'grb'."""
    from broker.enrich.groups import GroupStore

    store, groups = LocalizationStore(engine), GroupStore(engine)
    items = [it for k in ("alert", "flight", "ground", "final") for it in _decoded(GCN / f"kafka_alert_fermi_{k}.json")]
    states = []
    for ev, raw in items:
        sky = extract_localization(ev, raw)
        states.append(groups.add(ev, store.put(ev.id, sky) if sky is not None else None))
    ids = [ev.id for ev, _ in items]
    final = states[-1]
    assert final.key == "gcn:fermi:745121685" and final.revisions == ids and final.latest == ids[-1]
    assert states[1].best_localization.id == store.ref_of(ids[1]).id  # flight, then ground, then final
    assert states[2].best_localization.id == store.ref_of(ids[2]).id
    assert final.best_localization == store.ref_of(ids[3]) and not final.retracted
    assert final.t0 == "2024-08-24T02:14:40.430Z" and final.category == "grb"
    for ev, raw in reversed(items):  # a replay, in another order
        sky = extract_localization(ev, raw)
        assert groups.add(ev, store.put(ev.id, sky) if sky is not None else None) == final
    assert groups.of_event(ids[0]) == final == groups.get("gcn:fermi:745121685")
    assert groups.in_time_window("2024-08-24T02:14:39Z", -1, 5, categories=["grb"]) == [final]
    assert groups.in_time_window("2024-08-24T02:14:39Z", -1, 5, categories=["gw"]) == []
    assert groups.in_time_window("2024-08-24T02:14:42Z", -1, 1) == []
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM event_group_members")).scalar_one() == 4
        assert conn.execute(sa.text("SELECT count(*) FROM localizations")).scalar_one() == 3


def test_groups_of_the_lvk_superevent(engine):
    """MS181101ab: JSON, Avro and VOEvent revisions are one group; its best localization is
    the (single) BAYESTAR map stored once; the retraction retracts the group and its T0
    stays the superevent's."""
    from broker.enrich.groups import GroupStore

    store, groups = LocalizationStore(engine), GroupStore(engine)
    names = ["MS181101ab-earlywarning.json", "MS181101ab-1-EarlyWarning.xml", "MS181101ab-preliminary.avro",
             "MS181101ab-preliminary.json", "MS181101ab-2-Preliminary.xml", "MS181101ab-initial.json",
             "MS181101ab-update.json", "MS181101ab-retraction.avro", "MS181101ab-retraction.json"]
    seen = []
    for name in names:
        for ev, raw in _decoded(USERGUIDE / name):
            sky = extract_localization(ev, raw)
            state = groups.add(ev, store.put(ev.id, sky) if sky is not None else None)
            if ev.id not in seen:
                seen.append(ev.id)
            assert state.revisions == seen
            assert state.retracted == ("retraction" in name)
    assert state.key == "igwn:MS181101ab" and state.category == "gw"
    assert state.t0 == "2018-11-01T22:22:46.654Z"  # the retraction's own time is not the T0
    assert state.best_localization.kind == "skymap"
    with engine.connect() as conn:  # five JSON/Avro maps, one content
        assert conn.execute(sa.text("SELECT count(*) FROM localizations")).scalar_one() == 1
    assert groups.in_time_window("2018-11-01T22:22:46Z", -60, 600, categories=["gw"])[0].key == "igwn:MS181101ab"
