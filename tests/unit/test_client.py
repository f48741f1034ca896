"""Decoding of the broker's topics (:mod:`broker.records`, shared by ``mma-broker
subscribe`` and :func:`broker.client.subscribe`) on fake Kafka messages built from
real alerts, real follow-up documents and real dead letters; and the client's
argument checks. Reading from the real Kafka is in tests/integration/test_client_kafka.py.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest

from broker.client import Subscription, parse_time
from broker.errors import BrokerError
from broker.records import (DeadLetterRecord, Decoder, DocumentRecord, EventRecord, UnreadableRecord, describe_event,
                            to_json_line)
from broker.serde import EventCodec, Provenance
from broker.sources import decode
from tests.conftest import DATA

GUANO = DATA / "gcn/gcn-schema/gcn/notices/swift/bat/Guano.example.json"
IGWN = DATA / "igwn/userguide/MS181101ab-preliminary.json"
PROV = Provenance("ingest", "0.1.0", "abc123")


class FakeMessage:
    """What confluent_kafka.Message offers a reader."""

    def __init__(self, value, headers=None, *, topic="mma.events", partition=2, offset=17, key=b"k",
                 timestamp=(1, 1_700_000_000_000)):
        self._value, self._headers, self._topic = value, headers, topic
        self._partition, self._offset, self._key, self._timestamp = partition, offset, key, timestamp

    def value(self):
        return self._value

    def headers(self):
        return self._headers

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def key(self):
        return self._key

    def timestamp(self):
        return self._timestamp


def hop_headers(fmt: bytes) -> list[tuple[str, bytes]]:
    return [("_id", uuid.uuid4().bytes), ("_sender", b"mma-broker"), ("_format", fmt)]


@pytest.fixture(scope="module")
def events():
    return decode(GUANO.read_bytes()) + decode(IGWN.read_bytes())


@pytest.fixture(scope="module")
def codec():
    return EventCodec()


# ---------------------------------------------------------------- mma.events
@pytest.mark.parametrize("with_headers", [False, True])
def test_an_avro_event_decodes_to_the_event_with_provenance_and_place(events, codec, with_headers):
    for ev in events:
        headers = None
        if with_headers:
            headers = hop_headers(b"blob") + [("content-type", b"application/vnd.mma-broker.event+avro; version=1"),
                                              ("mma.schema", f"org.mma_broker.v1.Event; crc64-avro="
                                                             f"{codec.header[2:].hex()}".encode())]
        rec = Decoder().decode(FakeMessage(codec.encode(ev, PROV), headers))
        assert isinstance(rec, EventRecord)
        assert rec.event == ev and rec.provenance == PROV
        assert (rec.topic, rec.partition, rec.offset, rec.meta.timestamp_ms) == ("mma.events", 2, 17, 1_700_000_000_000)
        assert rec.describe() == describe_event(ev)
        line = json.loads(to_json_line(rec))
        assert line["type"] == "event" and line["event"] == ev.to_json_dict()
        assert line["provenance"] == {"component": "ingest", "version": "0.1.0", "config_hash": "abc123"}
        assert (line["topic"], line["partition"], line["offset"]) == ("mma.events", 2, 17)
        if with_headers:
            assert rec.meta.message_id == str(uuid.UUID(bytes=headers[0][1])) == line["headers"]["_id"]
            assert line["headers"]["_sender"] == "mma-broker"


def test_the_igwn_line_gives_the_sky_map_area(events, codec):
    igwn = [ev for ev in events if ev.source == "igwn"][0]
    text = Decoder().decode(FakeMessage(codec.encode(igwn, PROV))).describe()
    raw = json.loads(IGWN.read_text())
    assert text.startswith(f"igwn:{raw['superevent_id']}") and "90% area" in text and "LVK" in text


def test_another_schema_fingerprint_says_which(events, codec):
    value = codec.encode(events[0], PROV)
    other = value[:2] + bytes(8) + value[10:]
    rec = Decoder().decode(FakeMessage(other, [("mma.schema", b"org.mma_broker.v2.Event; crc64-avro=0000000000000000")]))
    assert isinstance(rec, UnreadableRecord)
    assert "0000000000000000" in rec.error and codec.header[2:].hex() in rec.error and "v2" in rec.error


# ---------------------------------------------------------------- JSON topics
RESULT = {
    "schema": "mma.followup.result/1", "kind": "result", "request_id": "082ea08539be94dd14f76f010dbe8627",
    "event_id": "gcn:fermi-gbm:745121685:initial:1:621efb3e", "status": "no_data",
    "summary_text": "INTEGRAL follow-up of Fermi/GBM trigger 745121685 (initial).\n\nSPI-ACS: no data\n",
    "analyses": {"spiacs": {"status": "no_data", "reason": "outside the mission"}},
}
REQUEST = {"schema": "mma.followup.request/1", "request_id": "356308daa9f74bef65e19ce3bf534737", "kind": "analyze",
           "event": {"id": "gcn:fermi-gbm:745121685:update:7:2bdb9ab6"}, "analyses": ["spiacs"]}


@pytest.mark.parametrize("doc, topic, expect", [
    (RESULT, "mma.followup.results", ["mma.followup.result/1", "result", "no_data", RESULT["request_id"],
                                      RESULT["event_id"], "— INTEGRAL follow-up of Fermi/GBM trigger 745121685 (initial)."]),
    (REQUEST, "mma.followup.requests", ["mma.followup.request/1", "analyze", REQUEST["request_id"],
                                        REQUEST["event"]["id"]]),
])
@pytest.mark.parametrize("with_headers", [False, True])
def test_json_documents_are_summarised_from_generic_fields(doc, topic, expect, with_headers):
    value = json.dumps(doc).encode()
    rec = Decoder().decode(FakeMessage(value, hop_headers(b"json") if with_headers else None, topic=topic))
    assert isinstance(rec, DocumentRecord) and rec.document == doc
    text = rec.describe()
    assert [part in text for part in expect] == [True] * len(expect)
    assert "SPI-ACS" not in text  # only the first line of summary_text
    assert json.loads(to_json_line(rec))["document"] == doc


def test_a_json_object_without_known_fields_still_reads():
    rec = Decoder().decode(FakeMessage(b'{"x": 1}', hop_headers(b"json"), topic="any"))
    assert isinstance(rec, DocumentRecord) and "any[2]@17" in rec.describe()


# ---------------------------------------------------------------- mma.dlq
def test_a_dead_letter_gives_reason_kind_origin_and_size():
    from broker.pipeline.deadletter import dead_letter

    original = FakeMessage(b"<not a voevent" * 100, [("x", b"y")], topic="gcn.classic.voevent.FERMI_GBM_GND_POS",
                           partition=1, offset=42)
    letter = dead_letter(original, "VOEvent: XML syntax error: unclosed token", "ingest.notices", max_bytes=100)
    rec = Decoder().decode(FakeMessage(letter.value, letter.headers + hop_headers(b"blob"), topic="mma.dlq",
                                       partition=0, offset=5))
    assert isinstance(rec, DeadLetterRecord)
    assert rec.reason == "VOEvent: XML syntax error: unclosed token" and rec.kind and rec.stage == "ingest.notices"
    assert (rec.origin_topic, rec.origin_partition, rec.origin_offset) == ("gcn.classic.voevent.FERMI_GBM_GND_POS", 1, 42)
    assert rec.size == 1400 and rec.truncated and len(rec.value) == 100
    text = rec.describe()
    assert text.startswith("mma.dlq[0]@5 ") and "gcn.classic.voevent.FERMI_GBM_GND_POS[1]@42" in text
    assert "1,400 B (cut)" in text and "unclosed token" in text
    d = json.loads(to_json_line(rec))["dead_letter"]
    assert d["origin"] == {"topic": "gcn.classic.voevent.FERMI_GBM_GND_POS", "partition": 1, "offset": 42}
    assert d["size"] == 1400 and d["truncated"] is True and d["stage"] == "ingest.notices"


# ---------------------------------------------------------------- hostile records
@pytest.mark.parametrize("value, headers, says", [
    (None, None, "no value"),
    (b"", None, "starts with b''"),
    (b"not avro at all", None, "starts with b'not avro at "),
    (b"\xc3\x01", None, "fingerprint"),
    (b"[1, 2]", hop_headers(b"json"), "JSON list"),
    (b'{"a": "\xff\xfe"}', hop_headers(b"json"), "not a JSON document"),
    (b"[" * 100_000 + b"]" * 100_000, hop_headers(b"json"), "not a JSON document"),
    (b'{"a": ', None, "not a JSON document"),
    (b"\x00\x01\x02", hop_headers(b"blob"), "_format 'blob'"),
    (b"\x1b[2J\x1b]0;pwned\x07", None, "starts with"),
])
def test_records_that_are_nothing_known_become_unreadable_records(value, headers, says):
    rec = Decoder().decode(FakeMessage(value, headers))
    assert isinstance(rec, UnreadableRecord)
    assert says in rec.error, rec.error
    text = rec.describe()
    assert "\x1b" not in text and "\n" not in text and len(text) < 600
    json.loads(to_json_line(rec))


def test_truncated_event_is_unreadable_and_reading_goes_on(events, codec):
    good = codec.encode(events[0], PROV)
    decoder = Decoder()
    recs = [decoder.decode(FakeMessage(v)) for v in (good, codec.header + b"\x02", good[:-3], good)]
    assert [type(r) for r in recs] == [EventRecord, UnreadableRecord, UnreadableRecord, EventRecord]
    assert recs[1].error.startswith("not a readable Event")


def test_nan_in_a_document_still_gives_valid_json():
    rec = Decoder().decode(FakeMessage(b'{"kind": "result", "snr": NaN, "x": [Infinity, {"y": -Infinity}]}'))
    assert isinstance(rec, DocumentRecord)
    line = to_json_line(rec)
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in output"))["document"] == {
        "kind": "result", "snr": None, "x": [None, {"y": None}]}


def test_headers_with_invalid_utf8_and_odd_ids_print_as_text():
    rec = Decoder().decode(FakeMessage(b'{"kind": "x"}', [("_id", b"short"), ("h", b"\xff\x1b"), ("n", None)]))
    assert rec.meta.message_id is None
    h = json.loads(to_json_line(rec))["headers"]
    assert h == {"_id": "short", "h": "\\xff\x1b", "n": None}


# ---------------------------------------------------------------- arguments
@pytest.mark.parametrize("text, expect", [
    ("2023-03-07", datetime(2023, 3, 7, tzinfo=timezone.utc)),
    ("2023-03-07T15:44Z", datetime(2023, 3, 7, 15, 44, tzinfo=timezone.utc)),
    ("2023-03-07T16:44:00+01:00", datetime(2023, 3, 7, 15, 44, tzinfo=timezone.utc)),
    ("1970-01-01T00:00:00", datetime(1970, 1, 1, tzinfo=timezone.utc)),
])
def test_parse_time_gives_utc(text, expect):
    assert parse_time(text) == expect


@pytest.mark.parametrize("text, says", [
    ("yesterday", "ISO 8601"), ("", "ISO 8601"), ("nan", "ISO 8601"), ("2023-13-01", "ISO 8601"),
    ("\udcff", "ISO 8601"), ("1969-12-31T23:59:59Z", "before 1970"), ("0001-01-01T00:00+01:00", "range"),
    ("9" * 10_000, "ISO 8601"),
])
def test_parse_time_refuses_with_one_line(text, says):
    with pytest.raises(BrokerError) as info:
        parse_time(text, "--since")
    msg = str(info.value)
    assert says in msg and msg.startswith("--since") and "\n" not in msg and len(msg) < 300


@pytest.mark.parametrize("kwargs", [
    {"timeout_s": float("nan")}, {"timeout_s": -1.0}, {"timeout_s": float("inf")}, {"max_records": -1},
])
def test_subscription_refuses_bad_values_before_connecting(kwargs):
    with pytest.raises(ValueError):
        Subscription("mma.events", {"bootstrap.servers": "127.0.0.1:1"}, **kwargs)


def test_subscription_needs_a_topic():
    with pytest.raises(ValueError):
        Subscription([], {})
