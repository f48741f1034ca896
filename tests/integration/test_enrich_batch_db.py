"""The batch writes of the enrich stage (``LocalizationStore.put_many``,
``GroupStore.add_many``) leave the same rows and return the same refs and group states
as the per-alert ``put``/``add``, on the real ZTF, GCN and IGWN alerts of tests/data,
with duplicates, replays and retractions inside one batch (real PostgreSQL)."""

from __future__ import annotations

import sqlalchemy as sa
import pytest

from broker.archive import Archive
from broker.archive.raw import PostgresRawStore
from broker.enrich.groups import GroupStore
from broker.enrich.localization import extract_localization
from broker.enrich.store import LocalizationStore
from broker.sources import decode
from tests.conftest import DATA

pytestmark = pytest.mark.integration
USERGUIDE = DATA / "igwn" / "userguide"
GCN = DATA / "gcn" / "gwcelery-kafka"
_TABLES = ("event_group_members", "event_groups", "event_positions", "event_localizations", "localization_tiles",
           "localizations")


@pytest.fixture
def engine(fresh_db):
    with Archive(fresh_db, PostgresRawStore()) as arch:
        arch.migrate()
    eng = sa.create_engine(fresh_db)
    yield eng
    eng.dispose()


def _alerts():
    """(event, sky) of real alerts in arrival order: ZTF candidates (each object's
    alerts share a group), a GBM trigger's four notices, an LVK superevent's JSON, Avro
    and VOEvent revisions up to its retraction, CHIME and IceCube retractions."""
    paths = sorted((DATA / "ztf").rglob("*.avro"))
    paths += [GCN / f"kafka_alert_{k}.json" for k in ("fermi_alert", "fermi_flight", "fermi_ground", "fermi_final",
                                                      "chime_detection", "chime_retraction", "icecube_gold",
                                                      "icecube_retraction")]
    paths += [USERGUIDE / n for n in ("MS181101ab-preliminary.json", "MS181101ab-2-Preliminary.xml",
                                      "MS181101ab-preliminary.avro", "MS181101ab-update.json",
                                      "MS181101ab-retraction.json", "MS181101ab-retraction.avro")]
    out = []
    for p in paths:
        raw = p.read_bytes()
        for ev in decode(raw):
            out.append((ev, extract_localization(ev, raw)))
    return out


def _dump(engine) -> dict[str, list[tuple]]:
    """Every row of the enrich tables, without the write timestamps; members in arrival order."""
    q = {"localizations": "SELECT id, kind, n_tiles, area_50_deg2, area_90_deg2, ra_deg, dec_deg, error_radius_deg, "
                          "containment, has_distance, meta::text FROM localizations ORDER BY id",
         "localization_tiles": "SELECT localization_id, hpx::text, probdensity, cum_prob, distmu, distsigma, distnorm "
                               "FROM localization_tiles ORDER BY localization_id, hpx",
         "event_localizations": "SELECT event_id, localization_id FROM event_localizations ORDER BY event_id",
         "event_positions": "SELECT event_id, source, time, ra_deg, dec_deg, hpx FROM event_positions ORDER BY event_id",
         "event_groups": "SELECT key, source, category, t0, latest_event_id, best_localization_id, retracted, "
                         "n_revisions FROM event_groups ORDER BY key",
         "event_group_members": "SELECT group_key, event_id, alert_type, time, retraction, localization_id, "
                                "area_90_deg2 FROM event_group_members ORDER BY seq"}
    with engine.connect() as conn:
        return {k: [tuple(r) for r in conn.execute(sa.text(s))] for k, s in q.items()}


def _one_by_one(locs, groups, items):
    refs = [locs.put(ev.id, sky) if sky is not None else None for ev, sky in items]
    return refs, [groups.add(ev, ref) for (ev, _), ref in zip(items, refs)]


def _batched(locs, groups, items):
    with_sky = [(i, ev.id, sky) for i, (ev, sky) in enumerate(items) if sky is not None]
    refs = [None] * len(items)
    for (i, _, _), ref in zip(with_sky, locs.put_many([(eid, sky) for _, eid, sky in with_sky])):
        refs[i] = ref
    return refs, groups.add_many([(ev, ref) for (ev, _), ref in zip(items, refs)])


def test_batch_writes_equal_the_per_alert_writes(engine):
    alerts = _alerts()
    assert len(alerts) > 40 and sum(ev.is_retraction for ev, _ in alerts) >= 4
    assert len({ev.id for ev, _ in alerts}) < len(alerts)  # JSON and Avro forms of one revision: one Event id
    ztf = [a for a in alerts if a[0].source == "ztf"]
    assert len({a[0].upstream_id for a in ztf}) < len(ztf)  # objects with several alerts in one batch
    # three batches: the first half, the rest with a replay of earlier alerts (a retraction among them)
    # and a first-half alert again, then the whole stream replayed
    half = len(alerts) // 2
    batches = [alerts[:half], alerts[half:] + alerts[half - 3:half] + alerts[:2], alerts]
    assert any(ev.is_retraction for ev, _ in batches[1])
    expected = []
    for b in batches:
        expected.append(_one_by_one(LocalizationStore(engine), GroupStore(engine), b))
    rows = _dump(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE " + ", ".join(_TABLES) + " RESTART IDENTITY CASCADE"))
    assert _dump(engine)["event_groups"] == []
    for b, (refs, states) in zip(batches, expected):
        got_refs, got_states = _batched(LocalizationStore(engine), GroupStore(engine), b)
        assert got_refs == refs
        assert got_states == states
    assert _dump(engine) == rows
    assert rows["event_groups"] and any(g[6] for g in rows["event_groups"])  # a retracted group is compared


def test_empty_batches(engine):
    assert LocalizationStore(engine).put_many([]) == [] and GroupStore(engine).add_many([]) == []


def test_held_adds_return_the_states_stored_later(engine):
    """The enrich stage's path: ZTF points held (``point_ref``, ``GroupBatch.add``) and
    written with ``put_many``/``add_many``; other alerts first flush what is held, then
    use put/add. Same refs, states and rows as put/add for every alert."""
    from broker.enrich.groups import GroupBatch

    alerts = _alerts()
    alerts = alerts[:10] + alerts[-8:] + alerts[10:] + alerts[:5]  # GW and GCN alerts between ZTF ones, replays
    expected = _one_by_one(LocalizationStore(engine), GroupStore(engine), alerts)
    rows = _dump(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE " + ", ".join(_TABLES) + " RESTART IDENTITY CASCADE"))
    locs, groups = LocalizationStore(engine), GroupStore(engine)
    held, pending_locs, refs, states = GroupBatch(groups), [], [], []

    def flush():
        locs.put_many(pending_locs)
        pending_locs.clear()
        held.flush()

    for ev, sky in alerts:
        if ev.source == "ztf":
            ref = locs.point_ref(sky)
            pending_locs.append((ev.id, sky))
            state = held.add(ev, ref)
        else:
            flush()
            ref = locs.put(ev.id, sky) if sky is not None else None
            state = groups.add(ev, ref)
        refs.append(ref)
        states.append(state)
    flush()
    assert (refs, states) == expected
    assert _dump(engine) == rows
    assert len(held) == 0 and held.flush() == []


def test_another_writer_between_hold_and_flush_is_logged_and_stored(engine, caplog):
    """Two alerts of one ZTF object: the first held, the second added by another writer
    meanwhile; the flush stores both in arrival order at the store and logs that the held
    state (one revision) is not the stored one (two)."""
    from broker.enrich.groups import GroupBatch

    ztf = [(ev, sky) for ev, sky in _alerts() if ev.source == "ztf"]
    by_obj: dict[str, list] = {}
    for ev, sky in ztf:
        by_obj.setdefault(ev.upstream_id, []).append((ev, sky))
    (a, sa_), (b, sb) = next(v for v in by_obj.values() if len(v) >= 2)[:2]
    locs, groups = LocalizationStore(engine), GroupStore(engine)
    held = GroupBatch(groups)
    ra = locs.point_ref(sa_)
    assert held.add(a, ra).revisions == [a.id]
    groups.add(b, locs.put(b.id, sb))
    locs.put_many([(a.id, sa_)])
    with caplog.at_level("WARNING", logger="broker.enrich.groups"):
        [state] = held.flush()
    assert state.revisions == [b.id, a.id] and state == groups.of_event(a.id)
    assert "differs from the one returned" in caplog.text
