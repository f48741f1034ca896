"""ZTF alerts relayed by Fink: read through their ZTF fields, Fink's columns kept (issue 12 item 3).

Every file under tests/data/relayed/fink/ztf is a real Fink output (origins in
tests/data/SOURCES.md): ``topLevelRecord`` (Fink 2019, schema 3.3) and
``topLevelRecord.value`` (Fink 4.1, ZTF schema 4.02, 50 Fink columns). Expected values
are read with plain ``fastavro.reader`` and astropy.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import fastavro
import pytest
from astropy.time import Time

from broker.sources import avro, decode, upstream_topic, ztf
from filters.ztf_history import decode_history as history_columns

DATA = Path(__file__).resolve().parents[1] / "data"
FILES = sorted((DATA / "relayed" / "fink" / "ztf").glob("*.avro"))
ZTF_33 = DATA / "ztf" / "fink-client" / "ZTF19acihgng.avro"  # ZTF's own 3.3 packet: its writer schema


def _read(path: Path):
    with path.open("rb") as fh:
        reader = fastavro.reader(fh)
        return reader.writer_schema, list(reader)


def _json_safe(v):
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


def test_found_the_relayed_files():
    assert len(FILES) == 5
    names = {_read(p)[0]["name"] for p in FILES}
    assert names == {"topLevelRecord", "topLevelRecord.value"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_relayed_alert_is_the_ztf_alert_with_fink_columns(path):
    schema, recs = _read(path)
    header = avro.read_header(path.read_bytes())
    assert header.schema_name != "ztf.alert" and ztf.is_ztf_schema(header)
    evs = decode(path.read_bytes())
    assert len(evs) == len(recs)
    zfields = ztf.ZTF_FIELDS
    added = [f["name"] for f in schema["fields"] if f["name"] not in zfields]
    assert {"cdsxmatch"} <= set(added)
    for ev, rec in zip(evs, recs):
        c = rec["candidate"]
        assert ev.source == "ztf" and ev.mission == "ZTF" and ev.instrument == "ZTF-Cam"
        assert ev.id == f"ztf:{rec['candid']}" and ev.upstream_id == rec["objectId"]
        got = Time(ev.time[:-1], format="isot", scale="utc")
        assert abs((got - Time(c["jd"], format="jd", scale="utc")).sec) < 1e-3
        assert (ev.localization.ra, ev.localization.dec) == (c["ra"], c["dec"])
        assert ev.properties["candid"] == rec["candid"] and ev.properties["magpsf"] == c["magpsf"]
        assert ev.properties["relayed_by"] == "fink" and rec["publisher"] == "Fink"
        ann = ev.properties["annotations"]["fink"]
        assert list(ann) == added
        for k in added:
            if not isinstance(rec[k], (bytes, type(None))) and not hasattr(rec[k], "isoformat"):
                assert ann[k] == _json_safe(rec[k]), k
        json.dumps(ev.properties, allow_nan=False)
        assert ev.category == "optical_transient" or ev.category == "solar_system_object"
    assert upstream_topic(path.read_bytes()) == "ztf_{:%Y%m%d}_programid{}".format(
        Time(recs[0]["candidate"]["jd"], format="jd").datetime, recs[0]["candidate"]["programid"])


def _nan_paths(v, path=()):
    if isinstance(v, float) and math.isnan(v):
        yield path
    elif isinstance(v, dict):
        for k, x in v.items():
            yield from _nan_paths(x, path + (k,))


def test_nan_columns_become_null():
    path = DATA / "relayed" / "fink" / "ztf" / "part-3-305711-first2.avro"
    schema, recs = _read(path)
    added = {f["name"] for f in schema["fields"]} - ztf.ZTF_FIELDS
    evs = decode(path.read_bytes())
    found = 0
    for ev, rec in zip(evs, recs):
        for keys in _nan_paths({k: rec[k] for k in added}):  # Plx, e_Plx, lc_features_g.kurtosis, ...
            node = ev.properties["annotations"]["fink"]
            for k in keys:
                node = node[k]
            assert node is None, keys
            found += 1
    assert found == 38  # counted with fastavro: 36 in the first alert, 2 in the second
    assert all("nonfinite_to_null" not in ev.properties for ev in evs)  # nulled before the Event


def test_same_alert_relayed_or_sent_by_ztf_gives_the_same_event():
    """The id rule: no bundled ZTF packet has a candid that Fink relayed, so the relayed
    alert's ZTF fields are written back in ZTF's own 3.3 schema (what ZTF sent, less the
    publisher Fink overwrote) and both must give one Event id and the same values."""
    path = DATA / "relayed" / "fink" / "ztf" / "fink-broker-sample-alert-1.avro"
    _, (rec,) = _read(path)
    schema, _ = _read(ZTF_33)
    original = {f["name"]: rec[f["name"]] for f in schema["fields"]}
    out = io.BytesIO()
    fastavro.writer(out, schema, [original])
    (direct,) = decode(out.getvalue())
    (relayed,) = decode(path.read_bytes())
    assert direct.id == relayed.id == f"ztf:{rec['candid']}"
    assert direct.time == relayed.time and direct.localization == relayed.localization
    assert {k: v for k, v in relayed.properties.items() if k not in ("relayed_by", "annotations")} == direct.properties


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_history_of_relayed_alerts(path):
    _, recs = _read(path)
    data = path.read_bytes()
    for ev, rec in zip(decode(data), recs):
        hist = ztf.decode_history(data, avro.read_header(data), rec["candid"])
        assert hist["objectId"] == rec["objectId"] and len(hist["prv_candidates"]) == len(rec["prv_candidates"] or [])
        assert hist["cutouts"]["science"] == rec["cutoutScience"]["stampData"]
        cols = history_columns(data, ev)  # what FilterInput.ztf_history gives ztf-decent
        assert cols.candid == rec["candid"]
        prv = rec["prv_candidates"] or []
        assert list(cols.prv_candidates["jd"]) == [p["jd"] for p in prv]


def test_ztf_decent_decides_a_relayed_alert_as_the_original():
    """ztf-decent (AMPEL's DecentFilter) on each relayed alert and on its ZTF fields
    written back in ZTF's own schema (that of a bundled ZTF packet: 3.3 for Fink's 3.3
    alerts, 4.01 for its 4.02 ones), by default and with a permissive configuration:
    the same decision and reason, and the reasons are not all one."""
    from filters.api import FilterInput
    from filters.builtin.ztf_decent import ZtfDecent

    filters = (ZtfDecent(), ZtfDecent.from_params({"min_ndet": 1, "max_tspan": 1e5, "min_gal_lat": -1.0}))
    decisions = []
    for path in FILES:
        _, recs = _read(path)
        own = ZTF_33 if recs[0]["schemavsn"] == "3.3" else DATA / "ztf" / "kowalski" / "20231012" / "2475433850015010009.avro"
        schema, _ = _read(own)
        data = path.read_bytes()
        for ev, rec in zip(decode(data), recs):
            out = io.BytesIO()
            fastavro.writer(out, schema, [{f["name"]: rec.get(f["name"]) for f in schema["fields"]}])
            (direct,) = decode(out.getvalue())
            for flt in filters:
                a = flt.apply(FilterInput(ev, raw=data))
                b = flt.apply(FilterInput(direct, raw=out.getvalue()))
                assert (a.accepted, a.reason) == (b.accepted, b.reason), path.name
                decisions.append(a.reason)
    assert len(decisions) == 12
    assert {"tspan_out_of_range", "ps1_star", "negative_subtraction", "decent"} <= set(decisions)


def test_value_bound_of_spark_nullable_array_items_is_per_branch():
    """Spark writes array items as a union [record, null]. The ItemBudget bound pairs
    values and bytes per branch: null in 1 byte, or the 58-field record in >= 58 bytes,
    so the block's bytes bound its values without walking it (it walked every Fink
    alert: 19 ms of the 20 ms a relayed alert took under a profiler)."""
    for path in FILES:
        header = avro.read_header(path.read_bytes())
        values, size = header.shape.item_rate
        assert values <= size, path.name  # at most one value per byte of items
    # the bound is still a bound: the densest real items build no more values than it says
    header = avro.read_header(FILES[-1].read_bytes())
    values, size = header.shape.item_rate
    (rec, _) = _read(FILES[-1])[1]
    assert len(rec["prv_candidates"][0]) + 1 <= values
