"""``mma.events`` wire format: Avro single-object encoding of normalized Events.

The header is checked against an independent implementation of the Avro
specification ("Parsing Canonical Form for Schemas" and "Schema Fingerprints",
CRC-64-AVRO reference code with EMPTY = 0xc15d213aa4d7a795; "Single object
encoding": C3 01 + the 8-byte little-endian fingerprint). Round trips use Events
decoded from real alert files; the Avro body is also read back with plain fastavro.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import fastavro
import pytest

from tests.conftest import ROOT as REPO_ROOT
from broker.errors import DecodeError
from broker.serde import EVENT_SCHEMA_PATH, EventCodec, Provenance
from broker.sources import decode

DATA = REPO_ROOT / "tests" / "data"
PROV = Provenance(component="ingest", version="0.0.test", config_hash="0123456789ab")

# Real alerts covering every localization kind and properties with nested dicts.
FILES = {
    "igwn-json-healpix": "igwn/userguide/MS181101ab-preliminary.json",
    "igwn-avro-healpix": "igwn/userguide/MS181101ab-preliminary.avro",
    "igwn-retraction-none": "igwn/userguide/MS181101ab-retraction.json",
    "igwn-voevent-none": "igwn/userguide/MS181101ab-3-Initial.xml",
    "gcn-json-point-nested": "gcn/gwcelery-kafka/kafka_alert_swift_targeted.json",
    "gcn-json-none": "gcn/gwcelery-kafka/kafka_alert_fermi_alert.json",
    "gcn-voevent-point": "voevent/pygcn/gbm_flt_pos.xml",
    "gcn-voevent-snews-none": "voevent/gwcelery/snews_gcn.xml",
    "ztf-multi-point": "ztf/fink-client/avro_multi_alerts_other.avro",
    "ztf-v401-point": "ztf/kowalski/20231012/2475433850015010009.avro",
}


# ---------------------------------------------------------------- the Avro spec, independently
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _fullname(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def parsing_canonical_form(schema, namespace: str | None = None, seen: set[str] | None = None) -> str:
    """Avro spec "Transforming into Parsing Canonical Form": [PRIMITIVES], [FULLNAMES],
    [STRIP], [ORDER] (name, type, fields, symbols, items, values, size), [WHITESPACE];
    a named type is written in full once, then by its full name."""
    seen = set() if seen is None else seen
    if isinstance(schema, str):
        return json.dumps(schema if schema in _PRIMITIVES else _fullname(schema, namespace))
    if isinstance(schema, list):
        return "[" + ",".join(parsing_canonical_form(s, namespace, seen) for s in schema) + "]"
    t = schema["type"]
    if isinstance(t, (dict, list)):
        return parsing_canonical_form(t, namespace, seen)
    if t in _PRIMITIVES:
        return json.dumps(t)
    if t == "array":
        return '{"type":"array","items":' + parsing_canonical_form(schema["items"], namespace, seen) + "}"
    if t == "map":
        return '{"type":"map","values":' + parsing_canonical_form(schema["values"], namespace, seen) + "}"
    if t in ("record", "error", "enum", "fixed"):
        full = _fullname(schema["name"], schema.get("namespace", namespace))
        if full in seen:
            return json.dumps(full)
        seen.add(full)
        inner_ns = full.rsplit(".", 1)[0] if "." in full else None
        parts = ['"name":' + json.dumps(full), '"type":' + json.dumps("record" if t == "error" else t)]
        if t in ("record", "error"):
            fields = ",".join(
                '{"name":' + json.dumps(f["name"]) + ',"type":' + parsing_canonical_form(f["type"], inner_ns, seen) + "}"
                for f in schema["fields"]
            )
            parts.append('"fields":[' + fields + "]")
        elif t == "enum":
            parts.append('"symbols":' + json.dumps(schema["symbols"], separators=(",", ":")))
        else:
            parts.append('"size":' + str(int(schema["size"])))
        return "{" + ",".join(parts) + "}"
    return json.dumps(_fullname(t, namespace))  # a reference to a named type


def crc64_avro(data: bytes) -> int:
    """The Avro spec's reference ``fingerprint64`` (CRC-64-AVRO), as an unsigned int."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_crc64_avro_reference_vectors():
    """Fingerprints of primitive schemas from Avro's share/test/data/schema-tests.txt
    (given there as signed Java longs)."""
    assert struct.unpack("<q", crc64_avro(b'"null"').to_bytes(8, "little"))[0] == 7195948357588979594
    assert struct.unpack("<q", crc64_avro(b'"int"').to_bytes(8, "little"))[0] == 8247732601305521295


def test_canonical_form_matches_the_spec_example():
    """Named types become full names, attributes other than the parsing ones are stripped."""
    schema = {"type": "record", "name": "R", "namespace": "a.b", "doc": "x", "fields": [
        {"name": "f", "type": {"type": "fixed", "name": "F", "size": 4}, "doc": "d", "default": "abcd"},
        {"name": "g", "type": ["null", "F"], "default": None},
        {"name": "h", "type": {"type": "array", "items": {"type": "int"}}},
    ]}
    assert parsing_canonical_form(schema) == (
        '{"name":"a.b.R","type":"record","fields":[{"name":"f","type":{"name":"a.b.F","type":"fixed","size":4}},'
        '{"name":"g","type":["null","a.b.F"]},{"name":"h","type":{"type":"array","items":"int"}}]}'
    )


def test_single_object_header_follows_the_spec():
    schema = json.loads(EVENT_SCHEMA_PATH.read_text())
    pcf = parsing_canonical_form(schema)
    assert pcf.startswith('{"name":"org.mma_broker.v1.Event","type":"record","fields":[{"name":"id","type":"string"}')
    expected = b"\xc3\x01" + crc64_avro(pcf.encode()).to_bytes(8, "little")
    codec = EventCodec()
    assert codec.header == expected
    ev = decode((DATA / FILES["gcn-voevent-point"]).read_bytes())[0]
    assert codec.encode(ev, PROV)[:10] == expected


# ---------------------------------------------------------------- round trips
def _events(key: str):
    return decode((DATA / FILES[key]).read_bytes())


@pytest.fixture(scope="module")
def codec() -> EventCodec:
    return EventCodec()


@pytest.mark.parametrize("key", list(FILES))
def test_round_trip_real_events(codec, key):
    events = _events(key)
    assert events
    for ev in events:
        data = codec.encode(ev, PROV)
        back, prov = codec.decode(data)
        assert back == ev
        assert back.to_json() == ev.to_json()
        assert prov == PROV


def test_round_trip_covers_every_localization_kind_and_nested_properties():
    kinds = {key: {(ev.localization.type if ev.localization else None) for ev in _events(key)} for key in FILES}
    assert set().union(*kinds.values()) == {"point", "healpix", None}
    nested = [key for key in FILES if any(isinstance(v, dict) for ev in _events(key) for v in ev.properties.values())]
    assert "gcn-json-point-nested" in nested and "igwn-json-healpix" in nested


def test_body_is_plain_avro_of_the_schema(codec):
    """A reader with only the .avsc (no mma-broker code) gets the Event's values."""
    raw = json.loads((DATA / FILES["igwn-json-healpix"]).read_text())
    ev = _events("igwn-json-healpix")[0]
    data = codec.encode(ev, PROV)
    rec = fastavro.schemaless_reader(io.BytesIO(data[10:]), fastavro.parse_schema(json.loads(EVENT_SCHEMA_PATH.read_text())))
    assert rec["upstream_id"] == raw["superevent_id"] == ev.upstream_id
    assert rec["alert_type"] == raw["alert_type"].lower()
    assert json.loads(rec["properties_json"]) == ev.properties
    assert rec["localization"]["area_90"] == ev.localization.area_90
    assert rec["provenance"] == {"component": "ingest", "version": "0.0.test", "config_hash": "0123456789ab"}


def test_point_localization_with_null_error_keeps_its_type(codec):
    ev = _events("gcn-voevent-point")[0]
    ev = ev.model_copy(update={"localization": ev.localization.model_copy(update={"error_radius": None, "containment": None})})
    back, _ = codec.decode(codec.encode(ev, PROV))
    assert back.localization.type == "point" and back.localization.error_radius is None
    assert back == ev


# ---------------------------------------------------------------- wrong input
def _other_schema_codec(tmp_path: Path) -> EventCodec:
    """A codec of another schema version (one more optional field)."""
    schema = json.loads(EVENT_SCHEMA_PATH.read_text())
    schema["fields"].append({"name": "extra", "type": ["null", "string"], "default": None})
    path = tmp_path / "event-v2.avsc"
    path.write_text(json.dumps(schema))
    return EventCodec(path)


def test_wrong_header_is_a_decode_error(codec, tmp_path):
    ev = _events("gcn-json-point-nested")[0]
    good = codec.encode(ev, PROV)
    cases = {
        "empty": b"",
        "magic only": good[:2],
        "other magic": b"\xc3\x02" + good[2:],
        "flipped fingerprint byte": good[:5] + bytes([good[5] ^ 0xFF]) + good[6:],
        "body without header": good[10:],
        "upstream ZTF container": (DATA / FILES["ztf-v401-point"]).read_bytes(),
        "upstream JSON": (DATA / FILES["igwn-json-healpix"]).read_bytes(),
        "other schema version": _other_schema_codec(tmp_path).encode(ev, PROV),
    }
    for what, data in cases.items():
        with pytest.raises(DecodeError) as info:
            codec.decode(data)
        assert "\n" not in str(info.value), what
    assert _other_schema_codec(tmp_path).header != codec.header


@pytest.mark.parametrize("keep", [10, 11, 30, -1])
def test_truncated_body_is_a_decode_error(codec, keep):
    """A message cut short after a valid header must be a DecodeError (readers such as
    ``mma-broker subscribe`` and the follow-up stage handle only DecodeError)."""
    data = codec.encode(_events("gcn-json-point-nested")[0], PROV)
    with pytest.raises(DecodeError):
        codec.decode(data[:keep])
