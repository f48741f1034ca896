"""Every Alembic revision (all version locations: the core's, the follow-up's, the
filters') downgrades and upgrades again on a *populated* archive (real PostgreSQL), and
a stage refuses an archive whose schema is newer than it knows.

The archive is filled by ``populate`` of test_archive_export (real alerts through the
stores of the stages: events with raw bytes, localizations and tiles, groups,
positions, cross-matches, follow-up results and artifacts, filter decisions and a
re-run, outbox entries). For each revision R, newest first, ``downgrade R-1`` (R and
its descendants go) then ``upgrade heads``: tables that R's downgrade did not drop keep
every row, columns R did not touch keep their values, and the schema at the end equals
the one before.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from broker.archive import Archive, SegmentFileStore
from broker.archive.store import SchemaTooNewError, alembic_config
from tests.conftest import run_cli
from tests.integration.test_archive_export import populate

pytestmark = pytest.mark.integration


def _tables(conn) -> dict[str, list[str]]:
    rows = conn.execute(sa.text("SELECT table_name, column_name FROM information_schema.columns "
                                "WHERE table_schema = current_schema() AND table_name <> 'alembic_version' "
                                "ORDER BY table_name, ordinal_position"))
    out: dict[str, list[str]] = {}
    for t, c in rows:
        out.setdefault(t, []).append(c)
    return out


def _snapshot(conn) -> dict[tuple[str, str], tuple[int, str]]:
    """Per (table, column): row count and the md5 of the column's values in text, sorted."""
    out = {}
    for t, cols in _tables(conn).items():
        for c in cols:
            out[(t, c)] = tuple(conn.execute(sa.text(
                f'SELECT count(*), md5(coalesce(string_agg("{c}"::text, \'|\' ORDER BY "{c}"::text), \'\')) '
                f'FROM "{t}"')).one())
    return out


def _indexes(conn) -> list[tuple]:
    return [tuple(r) for r in conn.execute(sa.text("SELECT tablename, indexname, indexdef FROM pg_indexes "
                                                   "WHERE schemaname = current_schema() ORDER BY 1, 2"))]


def test_every_revision_downgrades_and_upgrades_on_a_populated_archive(fresh_db, tmp_path):
    archive = Archive(fresh_db, SegmentFileStore(tmp_path / "raw"))
    archive.migrate()
    populate(archive)
    script = ScriptDirectory.from_config(alembic_config())
    revisions = [r.revision for r in script.walk_revisions()]  # newest first, a child before its parent
    assert {"0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009", "0010", "0011", "0013", "0014", "0101",
            "0102"} <= set(revisions)
    cfg = alembic_config()
    with archive.engine.connect() as conn:
        before = _snapshot(conn)
        before_tables = _tables(conn)
        before_indexes = _indexes(conn)
    for t in ("events", "localization_tiles", "event_groups", "followup_results", "filter_decisions", "outbox",
              "event_crossmatches", "coincidences", "followup_artifacts", "filter_runs", "event_group_members"):
        assert before[(t, before_tables[t][0])][0] > 0, t
    ancestors = {r: {a.revision for a in script.iterate_revisions(r, "base")} for r in revisions}
    for rev in revisions:
        # "<rev>@-k": k steps down the branch holding rev, from its head to rev's parent (a plain
        # "<parent>" target would take every branch down to 0001, the common parent)
        k = sum(rev in ancestors[r] for r in revisions)  # rev and its descendants
        target = "base" if rev == "0001" else f"{rev}@-{k}"
        with archive.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, target)
        with archive.engine.connect() as conn:
            current = set(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars()) \
                if conn.execute(sa.text("SELECT to_regclass('alembic_version')")).scalar() else set()
            assert rev not in current, (rev, current)
            assert not any(rev in ancestors[c] for c in current), (rev, current)
            # only rev and its descendants went: every other revision is still applied
            assert set().union(*(ancestors[c] for c in current)) == \
                {r for r in revisions if rev not in ancestors[r]}, (rev, current)
            mid = _snapshot(conn)
            mid_indexes = {i[1] for i in _indexes(conn)}
        # what the downgrade kept keeps every row and every value, except followup_results.group_key,
        # which 0007's downgrade rewrites to the older key by design (and its upgrade back: checked below)
        for key, value in mid.items():
            if key in before and not (rev == "0007" and key == ("followup_results", "group_key")):
                assert value == before[key], (rev, key)
        dropped = {t for t, _ in before} - {t for t, _ in mid}
        assert dropped or rev in ("0007", "0008", "0003", "0102", "0011", "0014"), rev  # each downgrade does something
        if rev == "0011":  # index-only: its three indexes go, every other stays
            assert {i[1] for i in before_indexes} - mid_indexes == {
                "ix_events_upstream_id_pattern", "ix_events_lower_mission", "ix_events_lower_instrument"}, mid_indexes
        if rev == "0014":  # index-only too
            assert {i[1] for i in before_indexes} - mid_indexes == {"ix_localization_tiles_hpx"}, mid_indexes
        with archive.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")
        with archive.engine.connect() as conn:
            assert _tables(conn) == before_tables, rev
            assert _indexes(conn) == before_indexes, rev
            after = _snapshot(conn)
        for key in mid:
            if key in before:  # kept through the round trip, group_key rewritten back included
                assert after[key] == before[key], (rev, key)
        for t in dropped:
            assert after[(t, before_tables[t][0])][0] == 0  # a dropped table comes back empty
        before = after  # what the downgrade dropped is gone for the next revisions too
    with archive.engine.connect() as conn:  # after 0001's round trip everything was dropped
        assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one() == 0
    archive.close()


def test_a_stage_refuses_a_schema_newer_than_it_knows(fresh_db, tmp_path, broker_env):
    archive = Archive(fresh_db, SegmentFileStore(tmp_path / "raw"))
    archive.migrate()
    with archive.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('0999')"))
        before = sorted(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())
    heads = ", ".join(sorted(ScriptDirectory.from_config(alembic_config()).get_heads()))
    with pytest.raises(SchemaTooNewError, match=rf"at revision 0999, which this mma-broker does not know "
                                                rf"\(the newest it knows: {heads}\)"):
        archive.migrate()
    env = dict(broker_env, MMA_BROKER_ARCHIVE__DATABASE_URL=fresh_db)
    for args in (("run", "--stage", "ingest", "--until-caught-up", "--idle", "1"), ("events", "list")):
        proc = run_cli(env, *args, timeout=120, check=False)
        assert proc.returncode == 1, (args, proc.stdout[-2000:], proc.stderr[-2000:])
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("mma-broker: error: the archive's schema is at revision 0999"), last
        assert f"the newest it knows: {heads}" in last and "restore a backup" in last
    with archive.engine.connect() as conn:  # nothing was changed
        assert sorted(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars()) == before
    archive.close()
