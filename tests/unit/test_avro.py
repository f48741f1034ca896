"""Avro container header parsing and block iteration on the real Avro files in tests/data.

Expected values come from fastavro.reader on the same files, never from our parser.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import pytest

from broker.errors import DecodeError
from broker.sources import avro

DATA = Path(__file__).resolve().parents[1] / "data"
AVRO_FILES = sorted(DATA.rglob("*.avro"))
ZTF_FILE = DATA / "ztf" / "kowalski" / "20231012" / "2475433850015010009.avro"


def _ids(paths):
    return [str(p.relative_to(DATA)) for p in paths]


def test_found_real_files():
    # ztf (fink-client, kowalski, ztf-avro-alert), igwn userguide, hop-client example
    assert len(AVRO_FILES) >= 36
    assert {p.relative_to(DATA).parts[0] for p in AVRO_FILES} >= {"ztf", "igwn", "hermes"}


@pytest.mark.parametrize("path", AVRO_FILES, ids=_ids(AVRO_FILES))
def test_header_matches_fastavro(path):
    data = path.read_bytes()
    with path.open("rb") as fh:
        reader = fastavro.reader(fh)
        want_meta = dict(reader.metadata)
        want_codec = reader.codec
        n_records = sum(1 for _ in reader)
    header = avro.read_header(data)

    assert header.codec == want_codec
    assert header.schema_json.decode() == want_meta["avro.schema"]
    assert header.schema == json.loads(want_meta["avro.schema"])
    assert {k: v.decode() for k, v in header.metadata.items()} == want_meta
    # every block ends with the sync marker, so the file's last 16 bytes are it
    assert header.sync == data[-16:]
    assert data[header.data_offset - 16 : header.data_offset] == header.sync
    schema = header.schema
    name = schema["name"] if "." in schema["name"] else ".".join(filter(None, [schema.get("namespace"), schema["name"]]))
    assert header.schema_name == name
    # the blocks found from data_offset hold exactly fastavro's records
    assert sum(count for count, _ in avro.iter_blocks(data, header)) == n_records


def test_schema_is_parsed_once_per_schema_json():
    data = ZTF_FILE.read_bytes()
    first = avro.read_header(data)
    second = avro.read_header(bytes(data))  # a different bytes object, same content
    assert second.schema is first.schema
    assert second.parsed_schema is first.parsed_schema
    assert first.schema_name == "ztf.alert"


def _rewrite(path: Path, codec: str) -> bytes:
    """The real records of ``path`` written again with another codec."""
    with path.open("rb") as fh:
        reader = fastavro.reader(fh)
        schema, records = reader.writer_schema, list(reader)
    out = io.BytesIO()
    fastavro.writer(out, schema, records, codec=codec)
    return out.getvalue()


@pytest.mark.parametrize("codec", ["deflate", "bzip2", "xz"])
def test_compressed_blocks(codec):
    path = DATA / "ztf" / "fink-client" / "avro_multi_alerts_other.avro"
    data = _rewrite(path, codec)
    header = avro.read_header(data)
    assert header.codec == codec
    with path.open("rb") as fh:
        want = list(fastavro.reader(fh))
    got = []
    for count, block in avro.iter_blocks(data, header):
        fo = io.BytesIO(block)
        got.extend(fastavro.schemaless_reader(fo, header.parsed_schema, None) for _ in range(count))
    assert [r["candid"] for r in got] == [r["candid"] for r in want]


@pytest.mark.parametrize("cut", [0, 3, 4, 5, 20, 200, 2000])
def test_truncated_header(cut):
    data = ZTF_FILE.read_bytes()
    header = avro.read_header(data)
    assert cut < header.data_offset
    with pytest.raises(DecodeError, match="truncated|not an Avro container|corrupt Avro header"):
        avro.read_header(data[:cut])


def test_truncated_header_names_reason():
    data = ZTF_FILE.read_bytes()
    header = avro.read_header(data)
    with pytest.raises(DecodeError, match="truncated Avro container.*sync marker"):
        avro.read_header(data[: header.data_offset - 5])
    with pytest.raises(DecodeError, match="truncated Avro container: metadata value"):
        avro.read_header(data[:200])


def test_bad_magic():
    data = ZTF_FILE.read_bytes()
    with pytest.raises(DecodeError, match="not an Avro container"):
        avro.read_header(b"Obj\x02" + data[4:])


def test_schema_not_json():
    data = ZTF_FILE.read_bytes()
    i = data.index(b'"type"')
    with pytest.raises(DecodeError, match="avro.schema is not JSON"):
        avro.read_header(data[:i] + b"{" + data[i + 1 :])


def test_truncated_block():
    data = ZTF_FILE.read_bytes()
    half = data[: len(data) // 2]
    header = avro.read_header(half)
    with pytest.raises(DecodeError, match="truncated Avro container: block 0"):
        list(avro.iter_blocks(half, header))


def test_sync_mismatch():
    data = bytearray(ZTF_FILE.read_bytes())
    data[-1] ^= 0xFF
    header = avro.read_header(bytes(data))
    with pytest.raises(DecodeError, match="corrupt Avro block 0: sync marker"):
        list(avro.iter_blocks(bytes(data), header))


def test_corrupt_deflate_block():
    path = DATA / "ztf" / "ztf-avro-alert" / "472263571115115000.avro"
    data = bytearray(_rewrite(path, "deflate"))
    header = avro.read_header(bytes(data))
    mid = header.data_offset + 40
    data[mid : mid + 64] = b"\xff" * 64
    with pytest.raises(DecodeError, match="deflate decompression failed"):
        list(avro.iter_blocks(bytes(data), header))
