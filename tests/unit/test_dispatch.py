"""The format dispatcher (broker.sources): sniffing, routing to a decoder, and errors
for bytes that are no supported alert (real non-alert files where they exist)."""

from __future__ import annotations

import json

import fastavro
import pytest
from lxml import etree

from tests.conftest import ROOT as REPO_ROOT
from broker.errors import DecodeError
from broker.sources import decode, sniff_format, upstream_topic

DATA = REPO_ROOT / "tests" / "data"
IGWN_JSON = DATA / "igwn" / "userguide" / "MS181101ab-initial.json"
IGWN_AVRO = DATA / "igwn" / "userguide" / "MS181101ab-preliminary.avro"
GCN_JSON = DATA / "gcn" / "gcn-schema" / "gcn" / "notices" / "swift" / "bat" / "guano.loc_arc_min.example.json"
VOEVENT = DATA / "voevent" / "pygcn" / "gbm_flt_pos.xml"
ZTF = DATA / "ztf" / "fink-client" / "avro_multi_alerts_other.avro"
HOP_AVRO = DATA / "hermes" / "hop-client" / "example_avro.avro"
HOP_JSON = DATA / "hermes" / "hop-client" / "example_json.json"
HOP_BLOB = DATA / "hermes" / "hop-client" / "example_blob.txt"
HERMES = DATA / "hermes" / "hermes_test_message.json"
CIRCULAR = DATA / "gcn" / "circulars" / "gcn_circular_40_GRB980329.gcn3"
FITS = DATA / "igwn" / "userguide" / "bayestar.multiorder.fits"


@pytest.mark.parametrize("path, fmt", [
    (IGWN_JSON, "json"), (GCN_JSON, "json"), (HERMES, "json"), (VOEVENT, "voevent"),
    (IGWN_AVRO, "avro"), (ZTF, "avro"), (HOP_AVRO, "avro"),
])
def test_sniff_format_of_real_files(path, fmt):
    assert sniff_format(path.read_bytes()) == fmt


def test_sniff_format_skips_bom_and_whitespace():
    assert sniff_format(b"\xef\xbb\xbf  \n" + VOEVENT.read_bytes()) == "voevent"
    assert sniff_format(b"\n\t " + GCN_JSON.read_bytes()) == "json"
    assert sniff_format(b"[1, 2]") == "json"


@pytest.mark.parametrize("data, match", [
    (b"", "empty message"),
    (FITS.read_bytes()[:4096], "unknown format: starts with b'SIMPLE"),
    (HOP_BLOB.read_bytes(), "unknown format"),
    (CIRCULAR.read_bytes(), "unknown format"),
    (bytes(range(256)), "unknown format"),
    (b"   \n", "unknown format"),
])
def test_sniff_format_rejects_other_bytes(data, match):
    with pytest.raises(DecodeError, match=match) as info:
        sniff_format(data)
    assert "\n" not in str(info.value) and len(str(info.value)) < 200


# ---------------------------------------------------------------- decode routes to the right decoder
def test_decode_routes_every_format():
    igwn = json.loads(IGWN_JSON.read_text())
    (ev,) = decode(IGWN_JSON.read_bytes())
    assert (ev.source, ev.upstream_id, ev.format) == ("igwn", igwn["superevent_id"], "json")

    with IGWN_AVRO.open("rb") as fh:
        rec = next(iter(fastavro.reader(fh)))
    (ev,) = decode(IGWN_AVRO.read_bytes())
    assert (ev.source, ev.upstream_id, ev.format) == ("igwn", rec["superevent_id"], "avro")

    (ev,) = decode(GCN_JSON.read_bytes())
    assert (ev.source, ev.format) == ("gcn", "json")

    (ev,) = decode(VOEVENT.read_bytes())
    assert (ev.source, ev.format) == ("gcn", "voevent")
    assert ev.id.endswith(etree.parse(str(VOEVENT)).getroot().get("ivorn"))

    with ZTF.open("rb") as fh:
        recs = list(fastavro.reader(fh))
    events = decode(ZTF.read_bytes())
    assert [e.id for e in events] == [f"ztf:{r['candid']}" for r in recs]
    assert {e.format for e in events} == {"avro"}


def test_decode_json_with_bom_is_the_same_alert():
    assert decode(b"\xef\xbb\xbf" + GCN_JSON.read_bytes()) == decode(GCN_JSON.read_bytes())


# ---------------------------------------------------------------- errors of decode and upstream_topic
def _cases() -> dict[str, tuple[bytes, str]]:
    igwn = IGWN_JSON.read_bytes()
    return {
        "empty": (b"", "empty message"),
        "binary garbage": (FITS.read_bytes()[:2880], "unknown format"),
        "text blob": (HOP_BLOB.read_bytes(), "unknown format"),
        "json array": (json.dumps([json.loads(igwn)]).encode(), "must be an object, got list"),
        "json scalar list": (b"[1, 2, 3]", "must be an object, got list"),
        "truncated json": (igwn[:300], "invalid JSON"),
        "json not utf-8": (b'{"superevent_id": "\xff\xfe"}', "invalid JSON"),
        "json neither": (HOP_JSON.read_bytes(), "neither an IGWN gwalert"),
        "hermes message": (HERMES.read_bytes(), "neither an IGWN gwalert"),
        "avro of another schema": (HOP_AVRO.read_bytes(), "unsupported Avro schema 'auto_record2'"),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_decode_errors_are_one_line_decode_errors(case):
    data, match = _cases()[case]
    with pytest.raises(DecodeError, match=match) as info:
        decode(data)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("case", list(_cases()))
def test_upstream_topic_errors_are_decode_errors(case):
    data, match = _cases()[case]
    with pytest.raises(DecodeError, match=match):
        upstream_topic(data)


def test_hop_avro_example_is_really_another_schema():
    """The premise of the Avro case: a valid container whose schema is not ZTF's or IGWN's."""
    with HOP_AVRO.open("rb") as fh:
        reader = fastavro.reader(fh)
        assert reader.writer_schema["name"] == "auto_record2"
        assert list(reader)


def test_upstream_topic_of_each_format():
    assert upstream_topic(IGWN_JSON.read_bytes()) == "igwn.gwalert"
    assert upstream_topic(IGWN_AVRO.read_bytes()) == "igwn.gwalert"
    assert upstream_topic(GCN_JSON.read_bytes()) == "gcn.notices.swift.bat.guano"
    assert upstream_topic(VOEVENT.read_bytes()) == "gcn.classic.voevent.FERMI_GBM_FLT_POS"
    assert upstream_topic(ZTF.read_bytes()).startswith("ztf_")
