"""Provenance cache: keys, directory and SQL backends, hits asserted via the lineage record."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from astropy.time import Time

from followup.bundled import bundled_data_dir
from followup.cache import (
    DirectoryCache,
    SqlCache,
    StepOutput,
    canonical_json,
    code_version,
    input_key,
    lineage_key,
)

LC_FILE = bundled_data_dir() / "spiacs_lc_GRB230307A.fits"


def test_lineage_key_is_sha256_of_the_documented_canonical_json():
    body = LC_FILE.read_bytes()
    inputs = {"lightcurve": body, "t0": Time("2023-03-07T15:44:06.650")}
    params = {"window_s": 300.0, "timescales_s": [0.1, 1.0, 10.0], "far": 1e-3}
    # written out by hand, independently of the module
    doc = {
        "code_version": "0.1.0+abc",
        "inputs": {
            "lightcurve": hashlib.sha256(
                json.dumps({"sha256": hashlib.sha256(body).hexdigest()}, separators=(",", ":")).encode()
            ).hexdigest(),
            "t0": hashlib.sha256(b'{"time":"2023-03-07T15:44:06.650Z"}').hexdigest(),
        },
        "params": {"far": 0.001, "timescales_s": [0.1, 1.0, 10.0], "window_s": 300.0},
        "step": "spiacs.excess",
    }
    expected = hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert lineage_key("spiacs.excess", inputs, params, "0.1.0+abc") == expected


def test_key_changes_with_each_part_and_ignores_key_order():
    base = lineage_key("s", {"a": 1, "b": b"x"}, {"p": 1.5, "q": "z"}, "v1")
    assert lineage_key("s", {"b": b"x", "a": 1}, {"q": "z", "p": 1.5}, "v1") == base
    for other in (
        lineage_key("t", {"a": 1, "b": b"x"}, {"p": 1.5, "q": "z"}, "v1"),
        lineage_key("s", {"a": 1, "b": b"y"}, {"p": 1.5, "q": "z"}, "v1"),
        lineage_key("s", {"a": 1, "b": b"x"}, {"p": 1.5000000001, "q": "z"}, "v1"),
        lineage_key("s", {"a": 1, "b": b"x"}, {"p": 1.5, "q": "z"}, "v2"),
    ):
        assert other != base


def test_arrays_and_times_have_stable_canonical_forms():
    a = np.arange(5, dtype=float)
    assert input_key(a) == input_key(a.copy()) != input_key(a.astype(np.float32))
    assert canonical_json(Time("2023-03-07T15:44:06.650", scale="utc").tt) == '{"time":"2023-03-07T15:44:06.650Z"}'
    with pytest.raises(TypeError):
        canonical_json(object())


def test_code_version_has_package_version_and_module_digest():
    version = code_version(lineage_key)
    source = Path(__file__).resolve().parents[2] / "followup" / "cache.py"
    assert version.endswith("+" + hashlib.sha256(source.read_text().encode()).hexdigest()[:12])


@pytest.fixture(params=["directory", "sql"])
def cache(request, tmp_path):
    if request.param == "directory":
        return DirectoryCache(tmp_path / "cache")
    return SqlCache(sa.create_engine(f"sqlite:///{tmp_path / 'cache.sqlite'}"))


def test_second_identical_request_is_a_hit(cache):
    calls = []

    def step():
        calls.append(1)
        return StepOutput({"best_snr": 42.5, "detected": True}, {"lightcurve.png": b"\x89PNG fake-bytes"})

    inputs = {"lightcurve": LC_FILE.read_bytes()}
    params = {"window_s": 300.0}
    first, hit1, lineage1 = cache.cached("spiacs.excess", inputs, params, "0.1.0+abc", step)
    second, hit2, lineage2 = cache.cached("spiacs.excess", inputs, params, "0.1.0+abc", step)
    assert (hit1, hit2) == (False, True)
    assert len(calls) == 1
    assert lineage1.key == lineage2.key == lineage_key("spiacs.excess", inputs, params, "0.1.0+abc")
    assert (lineage1.hit_count, lineage2.hit_count) == (0, 1)
    assert lineage2.created_at == lineage1.created_at
    assert lineage2.input_keys == {"lightcurve": input_key(inputs["lightcurve"])}
    assert lineage2.params == {"window_s": 300.0} and lineage2.code_version == "0.1.0+abc"
    assert second.value == first.value == {"best_snr": 42.5, "detected": True}
    assert second.products == {"lightcurve.png": b"\x89PNG fake-bytes"}
    _, hit3, lineage3 = cache.cached("spiacs.excess", inputs, params, "0.1.0+abc", step)
    assert hit3 and lineage3.hit_count == 2

    _, hit_new_code, _ = cache.cached("spiacs.excess", inputs, params, "0.1.1+abc", step)
    assert not hit_new_code and len(calls) == 2


def test_plain_values_round_trip(cache):
    value, hit, _ = cache.cached("s", {"x": 1}, {}, "v", lambda: {"a": [1, 2.5, None], "t": Time("2020-01-01")})
    again, hit2, _ = cache.cached("s", {"x": 1}, {}, "v", lambda: pytest.fail("recomputed"))
    assert (hit, hit2) == (False, True)
    assert value == again == {"a": [1, 2.5, None], "t": {"time": "2020-01-01T00:00:00.000Z"}}


def test_directory_cache_leaves_no_partial_entries(tmp_path):
    cache = DirectoryCache(tmp_path)
    cache.cached("s", {"x": 2}, {}, "v", lambda: StepOutput({"ok": 1}, {"a.bin": b"\x00" * 10}))
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["a.bin", "result.json"]
    with pytest.raises(ValueError):
        cache.get("../etc")
