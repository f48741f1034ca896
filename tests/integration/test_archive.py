"""Integration tests of the archive against a real PostgreSQL 16 (embedded, pgserver).

The server is started by this module's own fixture in a short /tmp directory (the
unix socket path must stay under 100 characters) and stopped and deleted at the end.
Events come from real alert files through the production decoders (IGWN JSON, ZTF
Avro); the Fermi GBM event is built by hand from tests/data/voevent/pygcn/gbm_flt_pos.xml
(no GCN VOEvent decoder exists yet).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import fastavro
import pytest
import sqlalchemy as sa

from broker.archive import (
    Archive,
    ArchiveItem,
    KafkaMeta,
    PostgresRawStore,
    RoutedRawStore,
    SegmentFileStore,
    ensure_embedded_postgres,
    stop_embedded_postgres,
)
from broker.archive.models import metadata
from broker.archive.store import alembic_config
from broker.event import Event

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
IGWN = DATA / "igwn/userguide"
ZTF_MULTI = DATA / "ztf/fink-client/avro_multi_alerts_other.avro"
GBM = DATA / "voevent/pygcn/gbm_flt_pos.xml"


@pytest.fixture(scope="module")
def pg():
    root = Path(tempfile.mkdtemp(prefix="mma-pg-", dir="/tmp"))
    pgdata = root / "pg"
    try:
        url = ensure_embedded_postgres(pgdata)
        assert ensure_embedded_postgres(pgdata) == url  # reuse, idempotent
        Archive(url, PostgresRawStore()).migrate()
        yield url, pgdata
    finally:
        stop_embedded_postgres(pgdata)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["segments", "postgres", "routed"])
def archive(request, pg, tmp_path):
    url, _ = pg
    store = {"segments": lambda: SegmentFileStore(tmp_path / "raw"), "postgres": PostgresRawStore,
             # the default settings' store: notices in PostgreSQL, surveys in segment files
             "routed": lambda: RoutedRawStore(SegmentFileStore(tmp_path / "raw"), PostgresRawStore(),
                                              ["gcn", "igwn", "voevent", "user"])}[request.param]()
    arch = Archive(url, store, retry_max_delay_s=0.5)
    with arch.engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE events, raw_messages"))
    yield arch
    arch.close()


def igwn_item(kind: str, offset: int = 0) -> ArchiveItem:
    from broker.sources import igwn

    raw = (IGWN / f"MS181101ab-{kind}.json").read_bytes()
    return ArchiveItem(igwn.decode_json(json.loads(raw)), raw, KafkaMeta("igwn.gwalert", 0, offset))


def ztf_items() -> list[ArchiveItem]:
    from broker.sources import avro, ztf

    raw = ZTF_MULTI.read_bytes()
    return [ArchiveItem(ev, raw, KafkaMeta("ztf_20210601_programid1", 1, 7)) for ev in ztf.decode(raw, avro.read_header(raw))]


def gbm_item() -> ArchiveItem:
    # Values copied from tests/data/voevent/pygcn/gbm_flt_pos.xml (Fermi GBM Flight Position, TrigID 336801278).
    ev = Event(
        id="gcn:ivo://nasa.gsfc.gcn/Fermi#GBM_Flt_Pos_2011-09-04T03:54:36.02_336801278_45-956",
        source="gcn", messenger="em", mission="Fermi", instrument="GBM", upstream_id="336801278",
        alert_type="flt_pos", time="2011-09-04T03:54:36.020Z",
        localization={"type": "point", "ra": 193.0, "dec": -31.75, "error_radius": 17.4333},
        properties={"data_signif_sigma": 8.0, "burst_inten_cts": 117}, format="voevent",
    )
    return ArchiveItem(ev, GBM.read_bytes(), None)


def test_schema_matches_models(pg) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from followup.cache import cache_table
    from followup.store import artifact_table, followup_tables

    # the migrations create the archive's tables and the follow-up tables
    # (defined beside their code in followup/): compare against all of them
    full = sa.MetaData()
    for table in metadata.tables.values():
        table.to_metadata(full)
    followup_tables(full)
    artifact_table(full)
    cache_table(full)
    from broker.enrich.catalogs import catalog_tables

    catalog_tables(full)  # migration 0004, a branch of the core's own
    from broker.enrich.groups import group_tables
    from broker.enrich.store import localization_tables

    localization_tables(full)  # migration 0005, another branch from 0001
    group_tables(full)
    from broker.enrich.matchstore import crossmatch_table

    crossmatch_table(full)  # migration 0006, on 0005
    from broker.enrich.claims import claim_table

    claim_table(full)  # migration 0010, on 0006
    from broker.enrich.coincidence_store import coincidence_table

    coincidence_table(full)  # migration 0013, on 0010
    from filters.store import DECISIONS, RUNS

    DECISIONS.to_metadata(full)  # the filters' migration 0101, a branch from 0001
    RUNS.to_metadata(full)
    from broker.sinks.outbox import outbox_table

    outbox_table(full)  # migration 0009, a core branch from 0001
    from broker.sinks.outbox import outbox_audit_table
    from broker.web.auth import auth_tables

    outbox_audit_table(full)  # migration 0012, on 0009
    auth_tables(full)
    url, _ = pg
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), full)
        versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    engine.dispose()
    assert diff == []
    from alembic.script import ScriptDirectory

    assert sorted(versions) == sorted(ScriptDirectory.from_config(alembic_config()).get_heads())


@pytest.fixture
def empty_database(pg):
    """A new, empty database on the module's server (dropped afterwards)."""
    import uuid

    url, _ = pg
    name = f"mma_empty_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrating_an_empty_database_creates_the_followup_tables(empty_database) -> None:
    """The follow-up's revision lives in its own version location (entry point
    ``mma_broker.migrations``); one ``migrate()`` applies the core's and the plugin's."""
    from broker.app import check_schema

    with Archive(empty_database, PostgresRawStore()) as arch:
        arch.migrate()
        check_schema(arch, empty_database)  # at the heads of the combined script directory
    assert {"events", "raw_messages", "followup_results", "followup_cache", "alembic_version"} <= _tables(
        empty_database)


def test_archive_at_the_core_revision_upgrades_to_the_followup_one(empty_database) -> None:
    """An archive migrated before the follow-up revision moved (at 0001) upgrades, and
    read commands say so until it has."""
    from alembic import command

    from broker.app import check_schema
    from broker.errors import BrokerError

    command.upgrade(alembic_config(empty_database), "0001")
    assert "followup_results" not in _tables(empty_database)
    with Archive(empty_database, PostgresRawStore()) as arch:
        with pytest.raises(BrokerError, match=r"at revision 0001, this mma-broker needs .*0007"):
            check_schema(arch, empty_database)
        arch.migrate()
        check_schema(arch, empty_database)
    assert {"followup_results", "followup_cache"} <= _tables(empty_database)


def test_concurrent_migrate(pg) -> None:
    url, _ = pg
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with Archive(url, PostgresRawStore()) as a:
                a.migrate()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_idempotent_rewrite_and_shared_raw(archive: Archive) -> None:
    items = ztf_items() + [gbm_item(), igwn_item("preliminary")]
    with ZTF_MULTI.open("rb") as fh:
        candids = [rec["candid"] for rec in fastavro.reader(fh)]
    assert len(candids) == 3
    first = archive.write_batch(items)
    assert (first.inserted, first.already_present) == (5, 0)
    again = archive.write_batch(items + items[:1])  # redelivery, plus an in-batch duplicate
    assert (again.inserted, again.already_present) == (0, 5)
    assert archive.total() == 5
    refs = {archive.get(f"ztf:{c}").raw for c in candids}
    assert len(refs) == 1  # three alerts of one Avro container share one raw message
    for c in candids:
        assert archive.raw(f"ztf:{c}") == ZTF_MULTI.read_bytes()
    assert archive.raw(gbm_item().event.id) == GBM.read_bytes()
    with pytest.raises(KeyError):
        archive.raw("gcn:nope")


def test_get_rebuilds_event_and_metadata(archive: Archive) -> None:
    item = igwn_item("preliminary", offset=12)
    archive.write_batch([item])
    got = archive.get(item.event.id)
    assert got.event == item.event
    assert got.kafka == KafkaMeta("igwn.gwalert", 0, 12)
    assert got.retracted is False
    assert got.ingested_at.tzinfo is not None
    assert archive.get("igwn:none") is None
    gbm = gbm_item()
    archive.write_batch([gbm])
    assert archive.get(gbm.event.id).kafka is None
    assert archive.get(gbm.event.id).event == gbm.event


def _flags(archive: Archive) -> dict[str, tuple[bool, str | None]]:
    return {a.event.alert_type: (a.retracted, a.retracted_by) for a in archive.list(source="igwn")}


def test_retraction_in_order(archive: Archive) -> None:
    archive.write_batch([igwn_item("preliminary", 0), igwn_item("initial", 1)])
    retraction = igwn_item("retraction", 2)
    assert json.loads((IGWN / "MS181101ab-retraction.json").read_bytes())["alert_type"] == "RETRACTION"
    result = archive.write_batch([retraction])
    assert result.retracted == 2
    rid = retraction.event.id
    assert _flags(archive) == {"preliminary": (True, rid), "initial": (True, rid), "retraction": (False, None)}
    assert archive.write_batch([retraction]).retracted == 0  # redelivery changes nothing


def test_retraction_out_of_order(archive: Archive) -> None:
    retraction = igwn_item("retraction", 5)
    archive.write_batch([retraction])
    late = archive.write_batch([igwn_item("update", 3), gbm_item()])
    assert late.retracted == 1
    rid = retraction.event.id
    assert _flags(archive) == {"update": (True, rid), "retraction": (False, None)}
    assert archive.get(gbm_item().event.id).retracted is False  # other upstream id untouched


def test_retraction_in_same_batch(archive: Archive) -> None:
    archive.write_batch([igwn_item("retraction"), igwn_item("preliminary")])
    assert _flags(archive)["preliminary"] == (True, igwn_item("retraction").event.id)


def test_list_filters_and_counts(archive: Archive) -> None:
    archive.write_batch(ztf_items() + [gbm_item(), igwn_item("preliminary"), igwn_item("retraction")])
    times = [a.event.time for a in archive.list()]
    assert times == sorted(times, reverse=True) and len(times) == 6
    assert {a.event.source for a in archive.list(source="ztf")} == {"ztf"}
    assert len(archive.list(source="ztf", limit=2)) == 2
    since = datetime(2015, 1, 1, tzinfo=timezone.utc)
    assert {a.event.source for a in archive.list(since=since)} == {"ztf", "igwn"}
    assert [a.event.source for a in archive.list(until=since)] == ["gcn"]
    assert [a.event.source for a in archive.list(since=datetime(2011, 9, 4), until=datetime(2011, 9, 5))] == ["gcn"]
    kinds = {a.event.alert_type for a in archive.list(source="igwn", include_retracted=False)}
    assert kinds == {"retraction"}
    assert archive.counts() == [
        ("gcn", "Fermi", "flt_pos", 1),
        ("igwn", "LVK", "preliminary", 1),
        ("igwn", "LVK", "retraction", 1),
        ("ztf", "ZTF", "alert", 3),
    ]
    assert archive.total() == 6


def test_spatial_query_on_hpx(archive: Archive) -> None:
    """A healpix-alchemy cone (MOC tiles) x events.hpx join runs in the database."""
    import astropy.units as u
    from astropy.coordinates import Latitude, Longitude
    from healpix_alchemy import Tile
    from mocpy import MOC

    from broker.archive.models import events

    archive.write_batch(ztf_items() + [gbm_item()])
    cone = MOC.from_cone(Longitude(193.0 * u.deg), Latitude(-31.75 * u.deg), radius=1 * u.deg, max_depth=10)
    tiles = sa.union_all(*[sa.select(sa.literal(t, Tile).label("hpx")) for t in Tile.tiles_from(cone)]).subquery()
    q = sa.select(events.c.id).join(tiles, events.c.hpx.between(tiles.c.hpx.lower, tiles.c.hpx.upper))
    with archive.engine.connect() as conn:
        ids = [r[0] for r in conn.execute(q)]
    assert ids == [gbm_item().event.id]


def test_postgres_restart_during_writes(archive: Archive, pg, caplog) -> None:
    """Stop PostgreSQL (pg_ctl stop -m fast) while a writer runs: it waits, then resumes."""
    _, pgdata = pg
    template = ztf_items()[0]
    batches = [
        [
            ArchiveItem(template.event.model_copy(update={"id": f"ztf:restart:{b}:{i}"}), f"{b}:{i}".encode() * 50)
            for i in range(50)
        ]
        for b in range(40)
    ]
    results = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for batch in batches:
                results.append(archive.write_batch(batch))
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    with caplog.at_level(logging.WARNING, logger="broker.archive.retry"):
        thread = threading.Thread(target=writer)
        thread.start()
        while len(results) < 5:
            time.sleep(0.01)
        assert stop_embedded_postgres(pgdata, mode="fast")
        time.sleep(1.5)
        stopped_at = len(results)
        ensure_embedded_postgres(pgdata)
        thread.join(timeout=120)
    assert not thread.is_alive()
    assert errors == []
    assert stopped_at < len(batches)  # the writer was really blocked by the outage
    assert len(results) == len(batches)
    assert archive.total() == 50 * len(batches)
    assert sum(r.inserted for r in results) == 50 * len(batches)
    warnings = [r.getMessage() for r in caplog.records if r.name == "broker.archive.retry"]
    assert warnings and all("database unavailable" in w for w in warnings)
    assert archive.raw("ztf:restart:39:49") == b"39:49" * 50


def test_retraction_of_one_gcn_mission_leaves_another_missions_trigger_alone(archive: Archive) -> None:
    """GCN trigger numbers collide across missions (all are source "gcn"): a retraction
    made from the real Einstein Probe example with Fermi GBM's trigger id must retract
    neither the GBM notices of that trigger nor, arriving first, the late ones."""
    from broker.sources import decode

    gbm_dir = DATA / "gcn/gcn-schema/gcn/notices/fermi/gbm"
    gbm = [ArchiveItem(ev, p.read_bytes(), None) for p in sorted(gbm_dir.glob("trigger.*.example.json"))
           for ev in decode(p.read_bytes())]
    trigger = {it.event.upstream_id for it in gbm}
    assert len(trigger) == 1 and len(gbm) >= 5
    ep = json.loads((DATA / "gcn/gcn-schema/gcn/notices/einstein_probe/wxt/alert.example.json").read_text())
    ep.update(id=[next(iter(trigger))], alert_type="retraction")
    raw = json.dumps(ep).encode()
    (retraction,) = decode(raw)
    assert retraction.is_retraction and retraction.upstream_id in trigger and retraction.mission != "Fermi"
    archive.write_batch(gbm[:3])
    assert archive.write_batch([ArchiveItem(retraction, raw, None)]).retracted == 0
    assert archive.write_batch(gbm[3:]).retracted == 0
    assert not any(a.retracted for a in archive.list(source="gcn") if a.event.mission == "Fermi")


def test_followup_group_keys_are_rewritten_to_the_enrich_groups_and_back(empty_database) -> None:
    """Migration 0007 on a populated archive: stored follow-up group keys become
    broker.enrich.groups.group_key of their event (computed here by that function), and
    the downgrade restores the old ones."""
    from alembic import command

    from broker.enrich.groups import group_key

    command.upgrade(alembic_config(empty_database), "0003")
    events = [Event(id="gcn:ivo://test/ep#1", source="gcn", messenger="em", mission="Einstein Probe",
                    instrument="WXT", upstream_id="01709", alert_type="initial", time="2024-01-01T00:00:00Z",
                    format="json"),
              Event(id="igwn:S230518h-1", source="igwn", messenger="gw", mission="LVK", upstream_id="S230518h",
                    alert_type="preliminary", time="2023-05-18T12:59:08Z", format="json")]
    engine = sa.create_engine(empty_database)
    with engine.begin() as conn:
        for n, ev in enumerate(events):
            doc = {"mission": ev.mission, "event_id": ev.id}
            conn.execute(sa.text(
                "INSERT INTO followup_results (request_id, kind, event_id, source, upstream_id, status, document, "
                "summary_text, group_key) VALUES (:r, 'result', :e, :s, :u, 'done', CAST(:d AS jsonb), '', :g)"),
                {"r": f"{n:032x}", "e": ev.id, "s": ev.source, "u": ev.upstream_id, "d": json.dumps(doc),
                 "g": f"{ev.source}:{ev.mission.lower()}:{ev.upstream_id}"})

    def keys() -> list[str]:
        with engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT group_key FROM followup_results ORDER BY request_id")).scalars())

    old = keys()
    assert old == ["gcn:einstein probe:01709", "igwn:lvk:S230518h"]
    command.upgrade(alembic_config(empty_database), "heads")
    assert keys() == [group_key(ev) for ev in events] == ["gcn:einstein-probe:01709", "igwn:S230518h"]
    command.downgrade(alembic_config(empty_database), "0003")
    assert keys() == old
    engine.dispose()


# ---------------------------------------------------------------- categories (migration 0008)
def _decoded_items() -> list[ArchiveItem]:
    """Real alerts through the production dispatcher (broker.sources.decode sets the category)."""
    from broker.sources import decode

    items = []
    for path in (GBM, IGWN / "MS181101ab-preliminary.json", IGWN / "MS181101ab-retraction.json", ZTF_MULTI):
        raw = path.read_bytes()
        items += [ArchiveItem(ev, raw, None) for ev in decode(raw)]
    return items


def test_category_is_archived_listed_and_recategorized(archive: Archive) -> None:
    from broker.archive.recategorize import recategorize
    from broker.category import categorize

    items = _decoded_items()
    expected = {it.event.id: (it.event.category, it.event.category_rule) for it in items}
    assert all(c is not None for c, _ in expected.values())
    assert len({c for c, _ in expected.values()}) >= 4  # grb, gw_cbc, unknown (the retraction), optical_transient
    archive.write_batch(items)
    for it in items:
        got = archive.get(it.event.id).event
        assert got == it.event and (got.category, got.category_rule) == expected[it.event.id]
    for category in {c for c, _ in expected.values()}:
        listed = {a.event.id for a in archive.list(category=category, limit=1000)}
        assert listed == {i for i, (c, _) in expected.items() if c == category}
    assert [a.event.id for a in archive.list(source="igwn", category="grb")] == []

    # rows as archived before migration 0008: NULL, read back as None, never listed by category
    with archive.engine.begin() as conn:
        conn.execute(sa.text("UPDATE events SET category = NULL, category_rule = NULL"))
    assert archive.get(items[0].event.id).event.category is None
    assert archive.list(category="grb") == []
    seen: list[tuple[int, int]] = []
    result = recategorize(archive.engine, page_size=2, progress=lambda d, t: seen.append((d, t)))
    assert (result.examined, result.updated) == (len(items), len(items))
    assert seen[0] == (0, len(items)) and seen[-1] == (len(items), len(items))
    assert sum(result.categories.values()) == len(items)
    for it in items:
        got = archive.get(it.event.id).event
        assert (got.category, got.category_rule) == expected[it.event.id] == categorize(got)
    again = recategorize(archive.engine)
    assert (again.examined, again.updated) == (0, 0)  # nothing left NULL
    # --all: every row examined; a stale stored rule is rewritten, the others untouched
    with archive.engine.begin() as conn:
        conn.execute(sa.text("UPDATE events SET category_rule = 'fallback' WHERE id = :id"),
                     {"id": items[0].event.id})
    everything = recategorize(archive.engine, all_rows=True, page_size=3)
    assert (everything.examined, everything.updated) == (len(items), 1)
    assert archive.get(items[0].event.id).event.category_rule == expected[items[0].event.id][1]


def test_rows_archived_at_0001_upgrade_to_null_category_then_recategorize(empty_database) -> None:
    """An archive written before migration 0008 upgrades in place: its rows keep NULL."""
    from alembic import command

    from broker.archive.raw import RawRef
    from broker.archive.recategorize import recategorize
    from broker.archive.rows import event_rows

    command.upgrade(alembic_config(empty_database), "0001")
    items = _decoded_items()
    rows = event_rows(items, [RawRef(sha256="ab" * 32, length=1)] * len(items))
    engine = sa.create_engine(empty_database)
    try:
        old = sa.Table("events", sa.MetaData(), autoload_with=engine)  # the table as 0001 made it
        assert "category" not in old.c
        with engine.begin() as conn:
            conn.execute(old.insert(), [{k: v for k, v in r.items() if k in old.c} for r in rows])
    finally:
        engine.dispose()
    with Archive(empty_database, PostgresRawStore()) as arch:
        arch.migrate()
        assert all(arch.get(it.event.id).event.category is None for it in items)
        result = recategorize(arch.engine)
        assert result.updated == len(items)
        for it in items:
            assert arch.get(it.event.id).event == it.event  # category and rule as decoded
