"""Stages as entry points, and the runner's record headers."""

from __future__ import annotations

import json
import subprocess
import sys

from broker import stages
from broker.pipeline.runner import hop_format, with_hop_headers
from tests.conftest import ROOT


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "broker", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_both_stages_are_registered_and_none_is_imported_to_list_them():
    known = stages.registered()
    assert {"ingest", "followup"} <= set(known)
    assert known["followup"].value == "followup.worker:stages"
    proc = _cli("stages", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {r["stage"] for r in rows} >= {"ingest", "followup"}
    assert all(r["distribution"].startswith("mma-broker ") for r in rows)


def test_run_refuses_an_unknown_stage_before_touching_any_server():
    proc = _cli("run", "--stage", "nope")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("mma-broker: error: unknown stage 'nope'; registered: ")
    assert "ingest" in proc.stderr and "followup" in proc.stderr


def test_loops_are_ordered_after_the_loops_that_feed_them():
    spec = stages.StageSpec
    specs = [spec("followup.worker", None, after=["filters"]), spec("filters", None, after=["enrich"]),
             spec("enrich", None, after=["ingest.notices", "ingest.ztf"]),
             spec("ingest.ztf", None), spec("ingest.notices", None)]
    names = [s.name for s in stages._feeders_first(specs)]
    assert names.index("enrich") > max(names.index("ingest.ztf"), names.index("ingest.notices"))
    assert names.index("followup.worker") > names.index("filters") > names.index("enrich")


def test_hop_headers_are_added_once_and_say_the_format():
    h = with_hop_headers([("content-type", b"application/json")])
    d = dict(h)
    assert len(d["_id"]) == 16 and d["_sender"] == b"mma-broker" and d["_format"] == b"json"
    assert with_hop_headers(h) == h  # kept as they are
    assert hop_format([("content-type", b"application/vnd.mma-broker.event+avro; version=1")]) == b"blob"
    assert hop_format([("content-type", b"application/vnd.mma-broker.followup-result+json")]) == b"json"
    assert hop_format([]) == b"blob"
    assert dict(with_hop_headers(None))["_id"] != dict(with_hop_headers(None))["_id"]


def test_hop_ids_of_a_batch_are_uuid4s_and_headers_the_same_as_one_by_one():
    import uuid

    from broker.pipeline.runner import hop_ids

    ids = hop_ids(2000)
    assert len(set(ids)) == 2000 and hop_ids(0) == []
    assert all(len(b) == 16 and uuid.UUID(bytes=b).version == 4 and uuid.UUID(bytes=b).variant == uuid.RFC_4122
               for b in ids)
    for headers in ([("content-type", b"application/json"), ("mma.event.id", b"ztf:1")],
                    [("content-type", "application/x+json; v=1")], [("content-type", b"application/avro")], None, [],
                    [("content-type", b""), ("content-type", b"application/json")],
                    [("content-type", b"application/json"), ("_sender", b"other")], [("_format", b"blob")]):
        for _ in range(2):  # the second time from the formats' cache
            want = [(k, v) for k, v in with_hop_headers(headers) if k != "_id"]
            got = with_hop_headers(headers, ids[0])
            assert [(k, v) for k, v in got if k != "_id"] == want, headers
            assert dict(got)["_id"] == ids[0] and headers != got


def test_instance_id_is_refused_unless_a_plain_name():
    import pytest

    from broker.config import SettingsError, load_settings

    assert load_settings(kafka={"instance_id": "pod-7.a"}).kafka.instance_id == "pod-7.a"
    for bad in ("x\ny", "", "a b", "é", "x" * 201):
        with pytest.raises(SettingsError, match="kafka.instance_id"):
            load_settings(kafka={"instance_id": bad})


def test_a_loop_waits_for_every_lane_and_worker_its_after_names():
    """``after=["filters"]`` covers the lanes' filters.notices and filters.optical, and
    ``after=["followup"]`` the followup.worker loop: with lanes, reports stopped before the
    follow-up's results existed (the quickstart published nothing)."""
    import threading
    import time

    order: list[str] = []

    class Loop:
        def __init__(self, name, work_s):
            self.name, self.work_s = name, work_s

        def run(self, stop, *, until_caught_up, idle_s, upstream_done):
            time.sleep(self.work_s)
            while not upstream_done():
                time.sleep(0.01)
            order.append(self.name)

    spec = stages.StageSpec
    specs = [spec("reports", Loop("reports", 0), after=["followup", "filters", "enrich"]),
             spec("followup.worker", Loop("followup.worker", 0.3), after=["filters"]),
             spec("filters.notices", Loop("filters.notices", 0.1), after=["enrich"]),
             spec("filters.optical", Loop("filters.optical", 0.2), after=["enrich"]),
             spec("enrich.notices", Loop("enrich.notices", 0.05)), spec("enrich.optical", Loop("enrich.optical", 0))]
    stages.run(specs, threading.Event(), until_caught_up=True)
    assert order.index("reports") == len(order) - 1
    assert order.index("followup.worker") > max(order.index("filters.notices"), order.index("filters.optical"))
    names = [s.name for s in stages._feeders_first(specs)]
    assert names[-1] == "reports" and names.index("followup.worker") > names.index("filters.optical")
