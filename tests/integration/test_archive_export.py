"""Archive export/import (broker/archive/export.py) on the real PostgreSQL.

A populated archive is built from real alerts of tests/data through the stores the
stages use (Archive.write_batch with raw bytes, the enrich stage's LocalizationStore,
GroupStore, positions and cross-matches, follow-up results with an artifact, filter
decisions and a re-run, outbox entries). It is exported, imported into an empty
database with the other raw store, and exported again: every table member and every
raw blob is identical. A second import inserts nothing; a file from a newer schema is
refused before anything is written; the period selects Events by T0 or by ingestion.
"""

from __future__ import annotations

import json
import re
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from broker.archive import Archive, ArchiveItem, KafkaMeta, PostgresRawStore, SegmentFileStore
from broker.archive.export import ExportError, export_archive, import_archive, member_digests
from broker.enrich.groups import GroupStore
from broker.enrich.localization import extract_localization
from broker.enrich.matchstore import crossmatch_rows, write_enrichment
from broker.enrich.store import LocalizationStore
from broker.sinks.outbox import Outbox
from broker.sources import decode
from filters.store import DecisionRow, DecisionStore
from followup.store import ArtifactStore, FollowupStore
from tests.conftest import DATA

pytestmark = pytest.mark.integration
USERGUIDE = DATA / "igwn" / "userguide"
GCN = DATA / "gcn" / "gwcelery-kafka"


def _alert_files() -> list[Path]:
    paths = sorted((DATA / "ztf").rglob("*.avro"))[:6]
    paths += [GCN / f"kafka_alert_{k}.json" for k in ("fermi_alert", "fermi_flight", "fermi_ground",
                                                      "icecube_gold", "icecube_retraction")]
    paths += [USERGUIDE / n for n in ("MS181101ab-preliminary.json", "MS181101ab-update.json",
                                      "MS181101ab-retraction.json")]
    return paths


def populate(archive: Archive) -> dict[str, int]:
    """Fill ``archive`` with real alerts and the rows the stages write about them."""
    items, pairs = [], []
    for i, p in enumerate(_alert_files()):
        raw = p.read_bytes()
        for ev in decode(raw):
            items.append(ArchiveItem(event=ev, raw=raw, kafka=KafkaMeta(p.parent.name, 0, i)))
            pairs.append((ev, extract_localization(ev, raw)))
    archive.write_batch(items[: len(items) // 2])
    archive.write_batch(items)  # a redelivery: rows keep their first refs
    eng = archive.engine
    locs = LocalizationStore(eng)
    with_sky = [(i, ev.id, sky) for i, (ev, sky) in enumerate(pairs) if sky is not None]
    refs = [None] * len(pairs)
    for (i, _, _), ref in zip(with_sky, locs.put_many([(eid, sky) for _, eid, sky in with_sky])):
        refs[i] = ref
    states = GroupStore(eng).add_many([(ev, ref) for (ev, _), ref in zip(pairs, refs)])
    events = [ev for ev, _ in pairs]
    gw = next(ev for ev in events if ev.source == "igwn" and not ev.is_retraction)
    gw_loc = refs[events.index(gw)]
    match = {"glade": {"kind": "skymap", "n_inside": 2, "matches": [{"name": "NGC 4993", "prob": 0.12345678901234,
                                                                      "dist_mpc": 40.4}]}}
    write_enrichment(eng, events, crossmatch_rows(gw.id, match, gw_loc.id if gw_loc else None))
    from broker.enrich.claims import claim_coincidences

    claim_coincidences(eng, [(f"gw-optical:{gw.id}+ztf:ZTF18test1", gw.id)], "enrich.notices")
    grb = next(ev for ev in events if ev.source == "gcn" and ev.mission.lower().startswith("fermi"))
    from broker.enrich.coincidence_store import write_coincidences

    gw_key, grb_key = states[events.index(gw)].key, states[events.index(grb)].key
    members = [{"role": r, "group": k, "event_id": e.id, "source": e.source, "mission": e.mission,
                "upstream_id": e.upstream_id, "t0": e.time, "localization": None}
               for r, k, e in (("gw", gw_key, gw), ("grb", grb_key, grb))]
    write_coincidences(eng, [{"schema": "mma.coincidence/1", "id": f"gw-grb:{gw_key}+{grb_key}", "kind": "gw-grb",
                              "members": members, "coincident": True, "dt_s": 2.02, "overlap_integral": 31.25,
                              "joint_far_hz": 1.0e-9 / 3, "retracted": False, "retracted_by": None,
                              "computed_from": grb.id, "provenance": {"component": "enrich", "version": "test",
                                                                       "config_hash": "0" * 16}}])
    plot = ArtifactStore(archive).put(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "image/png")
    results = FollowupStore(eng)
    doc = {"request_id": "a" * 64, "kind": "result", "event_id": grb.id, "source": grb.source, "mission": grb.mission,
           "upstream_id": grb.upstream_id, "status": "done", "summary_text": "SPI-ACS: no excess; upper limit",
           "group": states[events.index(grb)].key, "plot": plot, "fluence_ul_erg_cm2": 1.234e-7}
    assert results.insert(doc, plot_png=b"old-layout-bytes\x00\xff")
    decided = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=timezone.utc)
    rows = [DecisionRow(ev.id, "grb-rule", "live", "c" * 16, "followup-rule", "1.0", ev.source == "gcn",
                        "accepted" if ev.source == "gcn" else "not_grb", "detail with 'quotes' and \\ and \n",
                        ("tag1", "t,2"), None, 0.1 + 0.2, [{"kind": "spiacs", "analyses": ["excess"],
                                                           "window_s": [-50.0, 50.0]}] if ev.source == "gcn"
                        else None, decided) for ev in events]
    store = DecisionStore(eng)
    store.put_many(rows)
    store.start_run("rerun-1", {"grb-rule": {"plugin": "followup-rule"}}, decided - timedelta(days=9), decided, None)
    store.put_many([r._replace(run="rerun-1") for r in rows[:3]])
    store.finish_run("rerun-1", {"events": 3})
    outbox = Outbox(eng)
    outbox.put(f"hermes:{grb.id}", "hermes", {"title": "GRB", "data": {"t0": grb.time}}, source_event_id=grb.id,
               group_key=doc["group"])
    outbox.put(f"gcn-circular:{gw.id}", "gcn-circular", {"subject": "LIGO/Virgo S..: INTEGRAL", "body": "ü ∞"},
               source_event_id=gw.id, requires_approval=True)
    with eng.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}


TABLES = ("events", "localizations", "localization_tiles", "event_localizations", "event_positions", "event_groups",
          "event_group_members", "event_crossmatches", "followup_results", "followup_artifacts", "filter_decisions",
          "filter_runs", "outbox", "coincidence_claims", "coincidences")


def test_export_import_export_round_trips_exactly(fresh_db, second_db, tmp_path):
    src = Archive(fresh_db, SegmentFileStore(tmp_path / "raw-a"))
    src.migrate()
    counts = populate(src)
    assert all(counts[t] > 0 for t in TABLES), counts
    first = tmp_path / "a.zip"
    s1 = export_archive(src, first, progress=False, version="test")
    assert {t.name: t.rows for t in s1.tables if t.name in TABLES} == counts
    assert s1.raw_blobs == len({p.read_bytes() for p in _alert_files()}) + 1  # + the plot

    dst = Archive(second_db, PostgresRawStore())  # the other raw store: locations differ, content does not
    s2 = import_archive(dst, first, progress=False)
    assert {t.name: t.inserted for t in s2.tables} == {t.name: t.rows for t in s1.tables}
    assert s2.raw_stored == s1.raw_blobs
    second = tmp_path / "b.zip"
    export_archive(dst, second, progress=False, version="test")
    a, b = member_digests(first), member_digests(second)
    for name in sorted(set(a) | set(b)):  # table by table, blob by blob
        assert a.get(name) == b.get(name), name
    # the imported archive serves raw bytes and artifacts through the normal reads
    ev = src.list(limit=1)[0].event
    assert dst.raw(ev.id) == src.raw(ev.id)
    sha = json.loads(zipfile.ZipFile(first).read("tables/followup_artifacts.ndjson").decode().splitlines()[0])["sha256"]
    assert ArtifactStore(dst).get(sha)[0] == ArtifactStore(src).get(sha)[0]

    s3 = import_archive(dst, first, progress=False)  # idempotent
    assert sum(t.inserted for t in s3.tables) == 0 and s3.raw_stored == 0
    third = tmp_path / "c.zip"
    export_archive(dst, third, progress=False)
    assert member_digests(third) == b
    # an identity column was moved past the imported ids: a new outbox entry gets a fresh one
    new = Outbox(dst.engine).put("hermes:new", "hermes", {"x": 1})
    with dst.engine.connect() as conn:
        assert new.id > conn.execute(sa.text("SELECT max(id) FROM outbox WHERE key <> 'hermes:new'")).scalar_one()
    src.close()
    dst.close()


def test_period_selection_and_newer_schema_refused(fresh_db, second_db, tmp_path):
    src = Archive(fresh_db, SegmentFileStore(tmp_path / "raw-a"))
    src.migrate()
    populate(src)
    with src.engine.connect() as conn:
        t0s = sorted(conn.execute(sa.text("SELECT time FROM events")).scalars())
    cut = t0s[len(t0s) // 2]
    part = tmp_path / "part.zip"
    s = export_archive(src, part, since=cut, progress=False)
    n_events = next(t.rows for t in s.tables if t.name == "events")
    assert n_events == sum(t >= cut for t in t0s) < len(t0s)
    with zipfile.ZipFile(part) as zf:
        exported = [json.loads(x) for x in zf.read("tables/events.ndjson").decode().splitlines()]
        decisions = [json.loads(x) for x in zf.read("tables/filter_decisions.ndjson").decode().splitlines()]
    assert all(datetime.fromisoformat(e["time"]) >= cut for e in exported)
    assert "raw_segment" not in exported[0] and {d["event_id"] for d in decisions} <= {e["id"] for e in exported}
    future = datetime.now(timezone.utc) + timedelta(days=1)
    s_ing = export_archive(src, tmp_path / "none.zip", by="ingested", since=future, progress=False)
    assert all(t.rows == 0 for t in s_ing.tables if t.selection == "period")

    # a plugin's table the export does not know: whole without event_id (with a warning), else by period;
    # catalogs only with --catalogs; an import target without the plugin's table refuses before writing
    with src.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE plugin_notes (k text PRIMARY KEY, note text)"))
        conn.execute(sa.text("INSERT INTO plugin_notes VALUES ('a', 'x'), ('b', 'y')"))
        conn.execute(sa.text("CREATE TABLE plugin_marks (event_id text PRIMARY KEY, mark int)"))
        conn.execute(sa.text("INSERT INTO plugin_marks SELECT id, 1 FROM events"))
    plug = tmp_path / "plugin.zip"
    sp = export_archive(src, plug, since=cut, catalogs=True, progress=False)
    by_name = {t.name: t for t in sp.tables}
    assert by_name["plugin_notes"].rows == 2 and by_name["plugin_notes"].selection.startswith("all")
    assert by_name["plugin_marks"].rows == n_events and by_name["plugin_marks"].selection == "period"
    assert by_name["catalogs"].selection == "all (--catalogs)" and "catalog_sources" in by_name
    assert any("plugin_notes" in w for w in sp.warnings)
    assert "catalogs" in json.loads(zipfile.ZipFile(part).read("manifest.json"))["excluded"]
    dst = Archive(second_db, PostgresRawStore())
    with pytest.raises(ExportError, match="table plugin_marks of plugin.zip is not in the archive"):
        import_archive(dst, plug, progress=False)
    with dst.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM raw_messages")).scalar_one() == 0
    with dst.engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))

    # a file from a newer schema: refused, nothing written to the target
    newer = tmp_path / "newer.zip"
    with zipfile.ZipFile(part) as zin, zipfile.ZipFile(newer, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "manifest.json":
                m = json.loads(data)
                m["schema_revisions"] = sorted(m["schema_revisions"] + ["9001"])
                data = json.dumps(m).encode()
            zout.writestr(info, data)
    with pytest.raises(ExportError, match=r"schema revision 9001, newer than this mma-broker knows"):
        import_archive(dst, newer, progress=False)
    with dst.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('alembic_version')")).scalar() is None
    # a corrupt member is refused by its checksum
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(part) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "tables/events.ndjson":
                data = data.replace(b'"gcn"', b'"gcX"', 1)
            zout.writestr(info, data)
    with pytest.raises(ExportError, match="the file is corrupt"):
        import_archive(dst, bad, progress=False)
    src.close()
    dst.close()


def test_cli_export_import_gc_as_a_user_runs_them(fresh_db, second_db, broker_env, tmp_path):
    from tests.conftest import run_cli

    home = Path(broker_env["MMA_BROKER_HOME"])
    src = Archive(fresh_db, SegmentFileStore(home / "raw"))  # the CLI's raw store: <home>/raw
    src.migrate()
    counts = populate(src)
    src.store_raw([b"a dead letter's bytes"])  # referenced from mma.dlq only: the gc's candidate
    src.close()
    env = dict(broker_env, MMA_BROKER_ARCHIVE__DATABASE_URL=fresh_db)
    out = tmp_path / "backup.zip"
    proc = run_cli(env, "archive", "export", str(out), "--since", "2000-01-01", "--until", "2100-01-01")
    assert proc.stdout.startswith(f"exported to backup.zip: {sum(counts.values()):,} rows, ")
    assert re.search(rf"^events +{counts['events']} +period$", proc.stdout, re.M), proc.stdout
    assert str(tmp_path) not in proc.stdout + proc.stderr
    env2 = dict(env, MMA_BROKER_ARCHIVE__DATABASE_URL=second_db, MMA_BROKER_HOME=str(tmp_path / "home2"))
    proc = run_cli(env2, "archive", "import", str(out))
    assert proc.stdout.startswith(f"imported backup.zip: {sum(counts.values()):,} of {sum(counts.values()):,} rows "
                                  "new, "), proc.stdout
    proc = run_cli(env, "archive", "gc", "--dry-run", "--grace-hours", "0")
    assert "1 referenced by no row" in proc.stdout and "would remove 1 (21 bytes)" in proc.stdout
