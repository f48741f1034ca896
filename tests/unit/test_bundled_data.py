"""The data files that ship inside the package: the demo alerts of ``replay --demo``
(``broker/data/demo``) and the INTEGRAL files of the follow-up defaults
(``followup/data``). Each is listed with its origin and checksum in its folder's
README.md, and the demo alerts are byte-identical copies of the repository's samples."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import pytest

from broker.replay import demo_dir, demo_files
from broker.sources import decode, upstream_topic
from followup.bundled import IBAS_TRIGGERS, ORBIT_FILE, SPIACS_LC_GRB230307A, bundled_data_dir
from followup.config import FollowupSettings
from tests.conftest import DATA

_ROW = re.compile(r"^\| `(?P<path>[^`]+)` \|.*\| `(?P<sha>[0-9a-f]{16})` \|$")


def _readme_checksums(folder: Path) -> dict[str, str]:
    rows = (_ROW.match(line) for line in (folder / "README.md").read_text(encoding="utf-8").splitlines())
    return {m["path"]: m["sha"] for m in rows if m}


def _data_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "README.md")


@pytest.mark.parametrize("folder", [demo_dir(), bundled_data_dir()], ids=["demo", "integral"])
def test_every_bundled_file_is_listed_with_its_checksum(folder):
    listed = _readme_checksums(folder)
    files = _data_files(folder)
    assert files and sorted(listed) == files
    for rel in files:
        assert hashlib.sha256((folder / rel).read_bytes()).hexdigest()[:16] == listed[rel], rel


def test_demo_alerts_are_copies_of_the_repository_samples():
    for rel in _data_files(demo_dir()):
        assert (demo_dir() / rel).read_bytes() == (DATA / rel).read_bytes(), rel


def test_demo_alerts_decode_and_cover_every_upstream():
    files = demo_files()
    assert [str(p.relative_to(demo_dir())) for p in files] == _data_files(demo_dir())
    sources, topics = Counter(), set()
    for path in files:
        data = path.read_bytes()
        events = decode(data)
        assert events, path
        sources.update(ev.source for ev in events)
        topics.add(upstream_topic(data).split(".")[0].split("_")[0])
    assert set(sources) == {"igwn", "gcn", "ztf"}
    assert topics == {"igwn", "gcn", "ztf"}
    # the sizes README.md states
    assert len(files) == 92
    assert sum(p.stat().st_size for p in files) < 2 * 1024 * 1024


def test_followup_defaults_are_the_bundled_integral_files():
    s = FollowupSettings()
    assert s.lightcurves.kind == "local"
    assert s.lightcurves.directory == s.orbit_directory == bundled_data_dir()
    for name in (SPIACS_LC_GRB230307A, ORBIT_FILE, IBAS_TRIGGERS):
        assert (bundled_data_dir() / name).is_file()
