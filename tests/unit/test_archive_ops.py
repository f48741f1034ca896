"""Backups, retention and upgrades without a server: the parts of export.py, gc.py,
store.py and kafka.py that need no database (the database side is in
tests/integration/test_archive_export.py, test_archive_gc.py, test_migrations_populated.py
and test_topic_retention.py)."""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from confluent_kafka import KafkaError, KafkaException

from broker.archive.export import FORMAT, ExportError, check_revisions, read_manifest
from broker.archive.gc import _segments
from broker.archive.raw import SegmentFileStore
from broker.archive.store import SchemaTooNewError, _touch_segments, alembic_config, check_not_newer
from broker.config import Settings
from broker.kafka import apply_retention, topic_retention


# ------------------------------------------------------------------ schema guard
def test_a_known_schema_passes_and_an_unknown_revision_is_refused_with_what_to_do():
    script = ScriptDirectory.from_config(alembic_config())
    heads = sorted(script.get_heads())
    check_not_newer(set(heads), script)
    check_not_newer({"0001"}, script)  # older is the migration's business, not the guard's
    with pytest.raises(SchemaTooNewError) as err:
        check_not_newer(set(heads) | {"0999", "0998"}, script)
    msg = str(err.value)
    assert msg.startswith("the archive's schema is at revision 0998, 0999, which this mma-broker does not know")
    assert f"(the newest it knows: {', '.join(heads)})" in msg and "restore a backup" in msg


def test_export_file_checks(tmp_path: Path):
    with pytest.raises(ExportError, match="no such file: nope.zip"):
        read_manifest(tmp_path / "nope.zip")
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(ExportError, match="x.zip is not an archive export"):
        read_manifest(tmp_path / "x.zip")
    for manifest, match in (({"format": "other"}, "manifest format is not"),
                            ({"format": FORMAT, "format_version": 99}, "format version 99; this mma-broker reads up "
                                                                       "to 1: upgrade mma-broker")):
        with zipfile.ZipFile(tmp_path / "m.zip", "w") as zf:
            zf.writestr("manifest.json", json.dumps(manifest))
        with pytest.raises(ExportError, match=match):
            read_manifest(tmp_path / "m.zip")
    check_revisions(["0001", "0007"], {"0001", "0007", "0101"}, "f.zip")
    with pytest.raises(ExportError, match=r"f.zip was written at schema revision 0200, newer than this mma-broker "
                                          r"knows \(the newest it knows: 0101\): upgrade"):
        check_revisions(["0001", "0200"], {"0001", "0101"}, "f.zip", ["0101"])


# ------------------------------------------------------------------ gc helpers
def test_segments_listed_with_their_row_names_and_touch_reports_a_collected_one(tmp_path: Path):
    store = SegmentFileStore(tmp_path, fsync=False)
    (a,) = store.put_many([b"one"])
    (b,) = store.put_many([b"two"])
    (tmp_path / b.segment).rename(tmp_path / (b.segment + ".gc"))
    (tmp_path / "20260101").mkdir()
    (tmp_path / "20260101" / "notes.txt").write_text("not a segment")
    listed = dict(_segments(tmp_path))
    assert set(listed) == {a.segment, b.segment}
    assert listed[b.segment].name.endswith(".seg.gc")
    old = os.stat(tmp_path / a.segment).st_mtime - 3600
    os.utime(tmp_path / a.segment, (old, old))
    assert _touch_segments(store, [{"raw_segment": a.segment}, {"raw_segment": None}])
    assert os.stat(tmp_path / a.segment).st_mtime > old + 3000  # made young again
    assert not _touch_segments(store, [{"raw_segment": b.segment}])  # renamed by a collector: write again
    assert _touch_segments(object(), [{"raw_segment": "x"}])  # the PostgreSQL store has no files


# ------------------------------------------------------------------ topic retention
def test_topic_retention_by_name_without_the_prefix():
    s = Settings(home=Path("/nonexistent"), kafka={"topic_prefix": "t1.", "retention_ms": {
        "mma.events": 86_400_000, "mma.coincidences": -1}})
    assert topic_retention(s, ["t1.mma.events", "t1.mma.dlq", "t1.mma.coincidences", "mma.events"]) == {
        "t1.mma.events": 86_400_000, "t1.mma.coincidences": -1, "mma.events": 86_400_000}


class _Fut:
    def __init__(self, value=None, error=None):
        self.value, self.error = value, error

    def result(self):
        if self.error is not None:
            raise KafkaException(KafkaError(self.error))
        return self.value


class _Entry:
    def __init__(self, value):
        self.value = value


class _Admin:
    """DescribeConfigs answers the retention held; IncrementalAlterConfigs records what
    was asked and refuses the topics in ``refuse`` (no AlterConfigs permission)."""

    def __init__(self, held: dict[str, str], refuse=()):
        self.held, self.refuse, self.altered = held, set(refuse), []

    def describe_configs(self, resources, request_timeout=None):
        return {r: _Fut({"retention.ms": _Entry(self.held[r.name])}) for r in resources}

    def incremental_alter_configs(self, resources, request_timeout=None):
        out = {}
        for r in resources:
            if r.name in self.refuse:
                out[r] = _Fut(error=KafkaError.TOPIC_AUTHORIZATION_FAILED)
            else:
                (entry,) = r.incremental_configs
                self.altered.append((r.name, entry.name, entry.value))
                out[r] = _Fut()
        return out


def test_apply_retention_changes_only_what_differs_and_a_refusal_is_a_warning(caplog):
    admin = _Admin({"a": "604800000", "b": "3600000", "c": "604800000"}, refuse={"c"})
    with caplog.at_level(logging.WARNING, logger="broker.kafka"):
        changed = apply_retention(admin, {"a": 3_600_000, "b": 3_600_000, "c": -1})
    assert changed == ["a"] and admin.altered == [("a", "retention.ms", "3600000")]
    assert "cannot set retention.ms of topic c (it stays as it is)" in caplog.text
    assert apply_retention(admin, {}) == []
