"""``mma-broker replay`` without Kafka: path expansion, the demo manifest, routing of
real files to their upstream topics, and replay_files with a recording producer.

Expected topics come from the files (Packet_Type read with lxml and GCN's packet-type
names; ZTF night and programid read with fastavro and astropy), not from our code.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import fastavro
import pytest
from astropy.time import Time
from lxml import etree

import broker.replay as replay_mod
from tests.conftest import ROOT as REPO_ROOT
from broker.errors import BrokerError
from broker.replay import ALERT_SUFFIXES, expand_paths, read_manifest, replay_files
from broker.sources import upstream_topic

DATA = REPO_ROOT / "tests" / "data"
MANIFEST = REPO_ROOT / "deploy" / "demo-alerts.txt"

#: GCN Classic packet types (gcn.nasa.gov/missions, "GCN Classic notice types") of the samples
PACKET_TYPE_NAMES = {
    "53": "INTEGRAL_WAKEUP", "61": "SWIFT_BAT_GRB_POS_ACK", "111": "FERMI_GBM_FLT_POS",
    "112": "FERMI_GBM_GND_POS", "115": "FERMI_GBM_FIN_POS", "150": "LVC_PRELIMINARY", "151": "LVC_INITIAL",
    "152": "LVC_UPDATE", "163": "LVC_EARLY_WARNING", "164": "LVC_RETRACTION",
}


def _packet_type(path: Path) -> str | None:
    found = etree.parse(str(path)).xpath("//*[local-name()='Param'][@name='Packet_Type']/@value")
    return found[0].strip() if found else None


def _ztf_topic(path: Path) -> str:
    with path.open("rb") as fh:
        first = next(iter(fastavro.reader(fh)))
    night = Time(first["candidate"]["jd"], format="jd", scale="utc").datetime.strftime("%Y%m%d")
    return f"ztf_{night}_programid{first['candidate']['programid']}"


def _expected_topic(path: Path) -> str | None:
    """The upstream topic from the file's own content, where we know it independently."""
    if path.is_relative_to(DATA / "igwn") and path.suffix in (".json", ".avro"):
        return "igwn.gwalert"
    if path.suffix == ".xml" and _packet_type(path) in PACKET_TYPE_NAMES:
        return "gcn.classic.voevent." + PACKET_TYPE_NAMES[_packet_type(path)]
    if path.suffix == ".avro" and "ztf" in path.parts:
        return _ztf_topic(path)
    return None


# ---------------------------------------------------------------- the demo manifest
@pytest.fixture(scope="module")
def manifest_files() -> list[Path]:
    return read_manifest(MANIFEST)


def test_manifest_lists_every_file_of_its_patterns(manifest_files):
    patterns = [ln.strip() for ln in MANIFEST.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    expected = []
    for pattern in patterns:
        expected += sorted(glob.glob(os.path.join(str(REPO_ROOT), pattern)))
    assert [str(p) for p in manifest_files] == expected
    assert len(manifest_files) == len(set(manifest_files)) == 126
    assert all(p.is_file() and p.is_relative_to(DATA) for p in manifest_files)
    assert {p.suffix for p in manifest_files} == set(ALERT_SUFFIXES)


def test_every_manifest_file_routes_to_its_upstream_topic(manifest_files):
    checked = 0
    topics = set()
    for path in manifest_files:
        topic = upstream_topic(path.read_bytes())
        topics.add(topic.split(".")[0].split("_")[0])
        expected = _expected_topic(path)
        if expected is not None:
            assert topic == expected, path
            checked += 1
        elif path.suffix == ".json" and "gcn" in path.parts:
            assert topic.startswith("gcn.notices."), path
    assert topics == {"igwn", "gcn", "ztf"}
    assert checked >= 50  # every IGWN and ZTF file, and VOEvents of known packet type


def test_manifest_pattern_without_match_is_an_error(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "alerts").mkdir()
    src = DATA / "voevent" / "pygcn" / "gbm_flt_pos.xml"
    (tmp_path / "alerts" / src.name).write_bytes(src.read_bytes())
    (tmp_path / "deploy").mkdir()
    manifest = tmp_path / "deploy" / "m.txt"
    manifest.write_text("# comment\n\n  alerts/*.xml  \n")
    assert read_manifest(manifest) == [tmp_path / "alerts" / src.name]
    manifest.write_text("alerts/*.xml\nalerts/none-*.json\n")
    with pytest.raises(BrokerError, match=r"m\.txt:2: pattern 'alerts/none-\*\.json' matches no file$"):
        read_manifest(manifest)


# ---------------------------------------------------------------- expand_paths
def test_expand_paths_recurses_sorted_and_keeps_alert_suffixes_only():
    folder = DATA / "hermes"
    got = list(expand_paths([folder]))
    expected = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".json", ".xml", ".avro"))
    assert got == expected
    assert DATA / "hermes" / "hop-client" / "example_blob.txt" not in got
    assert not [p for p in got if p.suffix == ".stdout"]


def test_expand_paths_keeps_explicit_files_and_order():
    blob = DATA / "hermes" / "hop-client" / "example_blob.txt"
    xml = DATA / "voevent" / "pygcn" / "gbm_flt_pos.xml"
    assert list(expand_paths([blob, xml, DATA / "igwn" / "fink-mm"])) == [
        blob, xml, DATA / "igwn" / "fink-mm" / "MS230518e-initial.json"]


# ---------------------------------------------------------------- replay_files
class RecordingProducer:
    def __init__(self, error=None):
        self.messages: list[tuple[str, bytes, list]] = []
        self._callbacks = []
        self.error = error

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None):
        self.messages.append((topic, value, list(headers or [])))
        self._callbacks.append((topic, on_delivery))

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        for topic, cb in self._callbacks:
            cb(self.error, _Msg(topic))
        self._callbacks = []
        return 0


class _Msg:
    def __init__(self, topic):
        self._topic = topic

    def topic(self):
        return self._topic


FILES = [
    DATA / "igwn" / "userguide" / "MS181101ab-preliminary.json",
    DATA / "voevent" / "pygcn" / "gbm_flt_pos.xml",
    DATA / "hermes" / "hop-client" / "example_blob.txt",  # not an alert: unroutable
    DATA / "ztf" / "kowalski" / "20231012" / "2475433850015010009.avro",
    DATA / "does-not-exist.json",
    DATA / "hermes" / "hop-client" / "example_avro.avro",  # Avro of another schema
]


def test_replay_routes_each_file_and_lists_the_unroutable():
    producer = RecordingProducer()
    done = []
    result = replay_files(FILES, producer, topic_prefix="tx.", progress=done.append)
    good = [FILES[0], FILES[1], FILES[3]]
    expected_topics = ["tx." + _expected_topic(p) for p in good]
    assert expected_topics == ["tx.igwn.gwalert", "tx.gcn.classic.voevent.FERMI_GBM_FLT_POS", "tx.ztf_20231012_programid1"]
    assert [m[0] for m in producer.messages] == expected_topics
    assert [m[1] for m in producer.messages] == [p.read_bytes() for p in good]  # byte for byte
    assert [dict(m[2])["mma.replay.file"] for m in producer.messages] == [p.name.encode() for p in good]
    assert result.sent == 3
    assert dict(result.per_topic) == {t: 1 for t in expected_topics}
    assert [p for p, _ in result.errors] == [FILES[2], FILES[4], FILES[5]]
    reasons = dict(result.errors)
    assert "unknown format" in reasons[FILES[2]]
    assert reasons[FILES[4]] == "No such file or directory"  # the CLI prints it after the file name
    assert "auto_record2" in reasons[FILES[5]]
    assert all("\n" not in r for r in reasons.values())
    assert done == list(range(1, len(FILES) + 1))


def test_replay_forced_topic_sends_even_unroutable_files():
    producer = RecordingProducer()
    result = replay_files(FILES[:3], producer, topic_prefix="p.", topic="gcn.classic.voevent.FERMI_GBM_FLT_POS")
    assert [m[0] for m in producer.messages] == ["p.gcn.classic.voevent.FERMI_GBM_FLT_POS"] * 3
    assert producer.messages[2][1] == FILES[2].read_bytes()
    assert result.sent == 3 and result.errors == []


def test_replay_delivery_failure_raises():
    from confluent_kafka import KafkaError

    producer = RecordingProducer(error=KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    with pytest.raises(BrokerError, match="not delivered"):
        replay_files(FILES[:2], producer)


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_replay_rate_is_respected(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(replay_mod, "time", clock)
    files = [FILES[0], FILES[1], FILES[3]] * 3
    result = replay_files(files, RecordingProducer(), rate=4.0)
    assert result.sent == 9
    assert clock.now - 1000.0 == pytest.approx(9 / 4.0)
    assert clock.sleeps == pytest.approx([0.25] * 9)


def test_replay_without_rate_does_not_sleep(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(replay_mod, "time", clock)
    replay_files([FILES[0], FILES[1]], RecordingProducer())
    assert clock.sleeps == []
