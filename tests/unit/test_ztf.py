"""ZTF alert decoding and normalization on every real ZTF packet in tests/data/ztf.

Expected values are read independently with plain ``fastavro.reader`` (full decode)
and times with astropy; derived packets (other schema versions, corruption) are real
alerts re-written with fastavro.
"""

from __future__ import annotations

import copy
import io
import json
import math
from pathlib import Path

import fastavro
import pytest
from astropy.time import Time

from broker.errors import DecodeError
from broker.sources import avro, ztf

DATA = Path(__file__).resolve().parents[1] / "data" / "ztf"
FILES = sorted(DATA.rglob("*.avro"))
V401 = DATA / "kowalski" / "20231012" / "2475433850015010009.avro"
MULTI = DATA / "fink-client" / "avro_multi_alerts_other.avro"

#: schemavsn of each sample, as its origin documents it (tests/data/SOURCES.md)
SCHEMA_VERSIONS = {
    "fink-client": "3.3",
    "kowalski/20200202": "3.3",
    "kowalski/20231012": "4.01",
    "ztf-avro-alert/2019_01_10_739260766315010006.avro": "3.2",
    "ztf-avro-alert/472263571115115000.avro": "3.3",
}


def _expected_version(path: Path) -> str:
    rel = str(path.relative_to(DATA))
    return next(v for k, v in SCHEMA_VERSIONS.items() if rel.startswith(k))


def _read(path_or_bytes):
    """Writer schema and fully decoded records, with plain fastavro."""
    fo = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes.open("rb")
    with fo:
        reader = fastavro.reader(fo)
        return reader.writer_schema, list(reader)


def _write(schema, records, **kw) -> bytes:
    out = io.BytesIO()
    fastavro.writer(out, schema, records, **kw)
    return out.getvalue()


def _decode(data: bytes):
    header = avro.read_header(data)
    assert ztf.is_ztf_schema(header)
    return ztf.decode(data, header)


def _check_event(ev, rec):
    c = rec["candidate"]
    assert ev.id == f"ztf:{rec['candid']}"
    assert (ev.source, ev.messenger, ev.mission, ev.alert_type, ev.format) == ("ztf", "em", "ZTF", "alert", "avro")
    assert ev.upstream_id == rec["objectId"]
    t_ours = Time(ev.time.removesuffix("Z"), format="isot", scale="utc")
    t_want = Time(c["jd"], format="jd", scale="utc")
    assert abs((t_ours - t_want).to_value("s")) < 1e-3
    assert ev.localization.ra == c["ra"] and ev.localization.dec == c["dec"]
    assert ev.localization.error_radius > 0 and ev.localization.containment is None
    p = ev.properties
    assert p["candid"] == c["candid"] == rec["candid"]
    assert p["magpsf"] == pytest.approx(c["magpsf"], abs=0, rel=0)
    assert p["fid"] == c["fid"] and p["band"] == {1: "g", 2: "r", 3: "i"}[c["fid"]]
    assert p["programid"] == c["programid"]
    assert p["isdiffpos"] is (c["isdiffpos"] in ("t", "1"))
    assert p["schemavsn"] == rec["schemavsn"]
    json.dumps(ev.to_json_dict(), allow_nan=False)


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(DATA)) for p in FILES])
def test_real_alerts(path):
    _, records = _read(path)
    events = _decode(path.read_bytes())
    assert len(events) == len(records)
    for ev, rec in zip(events, records):
        _check_event(ev, rec)
        assert rec["schemavsn"] == _expected_version(path)


def test_all_samples_and_versions_present():
    assert len(FILES) == 34
    assert sum(len(_read(p)[1]) for p in FILES) == 36  # one container holds 3 alerts
    assert {_expected_version(p) for p in FILES} == {"3.2", "3.3", "4.01"}


def test_multi_alert_container_in_order():
    _, records = _read(MULTI)
    assert len(records) == 3
    events = _decode(MULTI.read_bytes())
    assert [e.upstream_id for e in events] == ["ZTF19abbpaqb", "ZTF18acjzbxi", "ZTF18abecvir"]
    assert [e.properties["candid"] for e in events] == [r["candid"] for r in records]


def test_one_record_per_block():
    schema, records = _read(MULTI)
    data = _write(schema, records, sync_interval=1)  # every record in its own block
    assert sum(1 for _ in avro.iter_blocks(data, avro.read_header(data))) == 3
    for ev, rec in zip(_decode(data), records, strict=True):
        _check_event(ev, rec)


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(DATA)) for p in FILES])
def test_upstream_topic(path):
    _, records = _read(path)
    c = records[0]["candidate"]
    night = Time(c["jd"], format="jd", scale="utc").strftime("%Y%m%d")
    data = path.read_bytes()
    assert ztf.upstream_topic(data, avro.read_header(data)) == f"ztf_{night}_programid{c['programid']}"


def test_upstream_topic_values():
    data = (DATA / "ztf-avro-alert" / "472263571115115000.avro").read_bytes()
    assert ztf.upstream_topic(data, avro.read_header(data)) == "ztf_20180418_programid3"


def test_properties_detail_401():
    _, (rec,) = _read(V401)
    (ev,) = _decode(V401.read_bytes())
    c = rec["candidate"]
    p = ev.properties
    for key in ("sigmapsf", "magap", "diffmaglim", "rb", "drb", "sgscore1", "distpsnr1", "ssdistnr", "ssmagnr", "jdstarthist"):
        assert p[key] == c[key], key
    for key in ("ndethist", "ncovhist", "field", "rcid", "nid"):
        assert p[key] == c[key], key
    assert p["ssnamenr"] is None and c["ssnamenr"] == "null"
    assert p["publisher"] == rec["publisher"]


def test_v32_has_no_drb():
    path = DATA / "ztf-avro-alert" / "2019_01_10_739260766315010006.avro"
    (ev,) = _decode(path.read_bytes())
    assert "drb" not in ev.properties and ev.properties["schemavsn"] == "3.2"
    assert ev.properties["isdiffpos"] is False


@pytest.mark.parametrize("path", [V401, MULTI], ids=["v4.01", "multi"])
def test_decode_history(path):
    _, records = _read(path)
    data = path.read_bytes()
    header = avro.read_header(data)
    rec = records[-1]
    hist = ztf.decode_history(data, header, candid=rec["candid"])
    assert hist["objectId"] == rec["objectId"]
    assert hist["prv_candidates"] == rec["prv_candidates"]
    assert hist["fp_hists"] == (rec.get("fp_hists") or [])
    assert hist["cutouts"]["difference"] == rec["cutoutDifference"]["stampData"]
    assert hist["cutouts"]["science"][:2] == b"\x1f\x8b"  # gzipped FITS
    with pytest.raises(DecodeError, match="no ZTF alert with candid 1"):
        ztf.decode_history(data, header, candid=1)


# -- derived packets: other schema layouts -------------------------------------------


def _future(schema, rec):
    schema = copy.deepcopy(schema)
    rec = copy.deepcopy(rec)
    schema["version"] = "4.99"
    cand = next(f for f in schema["fields"] if f["name"] == "candidate")["type"]
    cand["fields"].append({"name": "newscore", "type": ["null", "float"], "default": None})
    rec["schemavsn"] = "4.99"
    rec["candidate"]["newscore"] = 0.5
    return schema, rec


def test_future_minor_version_decodes():
    schema, (rec,) = _read(V401)
    schema, rec = _future(schema, rec)
    data = _write(schema, [rec, rec])
    events = _decode(data)
    assert len(events) == 2
    _check_event(events[0], rec)
    assert events[0].properties["schemavsn"] == "4.99"


def test_reordered_schema_falls_back_to_full_decode():
    schema, records = _read(MULTI)
    schema = copy.deepcopy(schema)
    f = schema["fields"]
    i, j = [x["name"] for x in f].index("candidate"), [x["name"] for x in f].index("prv_candidates")
    f[i], f[j] = f[j], f[i]  # candidate now follows the history
    schema["version"] = "9.0-reordered"
    data = _write(schema, records)
    assert ztf._plan(avro.read_header(data).schema_json).prefix is None
    for ev, rec in zip(_decode(data), records, strict=True):
        _check_event(ev, rec)


def test_schema_without_candid_is_rejected():
    schema, (rec,) = _read(V401)
    schema = copy.deepcopy(schema)
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "candid"]
    data = _write(schema, [rec])
    with pytest.raises(DecodeError, match="has no field 'candid'"):
        _decode(data)


def test_nan_becomes_none():
    schema, (rec,) = _read(V401)
    rec["candidate"]["magap"] = math.nan
    (ev,) = _decode(_write(schema, [rec]))
    assert ev.properties["magap"] is None
    json.loads(ev.to_json())


# -- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize("path", [V401, MULTI], ids=["v4.01", "multi"])
def test_truncated_half(path):
    data = path.read_bytes()
    half = data[: len(data) // 2]
    with pytest.raises(DecodeError, match="truncated Avro container"):
        _decode(half)


def test_corrupt_record_with_intact_framing():
    data = bytearray(V401.read_bytes())
    header = avro.read_header(bytes(data))
    # the record starts with schemavsn: varint length 4 (0x08) then "4.01"; turn the
    # length into a huge one, same byte count, block framing and sync left intact
    start = data.index(b"\x084.01", header.data_offset)
    data[start : start + 5] = b"\xfe\xff\xff\xff\x0f"
    with pytest.raises(DecodeError, match="corrupt ZTF alert: record 0 of Avro block 0"):
        _decode(bytes(data))


def test_corrupt_string_length():
    data = bytearray(V401.read_bytes())
    header = avro.read_header(bytes(data))
    # objectId "ZTF17aadcvhq" is written as varint 24 (0x18) then 12 bytes; claim 63
    # bytes instead, so the reader swallows the start of the candidate as text
    start = data.index(b"\x18ZTF17aadcvhq", header.data_offset)
    data[start] = 0x7E
    with pytest.raises(DecodeError, match="corrupt ZTF alert: record 0 .*UnicodeDecodeError"):
        _decode(bytes(data))


def test_non_finite_position_is_rejected():
    schema, (rec,) = _read(V401)
    rec["candidate"]["ra"] = math.nan
    with pytest.raises(DecodeError, match="ZTF17aadcvhq.*unusable candidate.*not finite"):
        _decode(_write(schema, [rec]))


def test_through_the_dispatcher():
    from broker.sources import decode, upstream_topic

    data = MULTI.read_bytes()
    _, records = _read(MULTI)
    events = decode(data)
    for ev, rec in zip(events, records, strict=True):
        _check_event(ev, rec)
    night = Time(records[0]["candidate"]["jd"], format="jd", scale="utc").strftime("%Y%m%d")
    assert upstream_topic(data) == f"ztf_{night}_programid1"
