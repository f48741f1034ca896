"""Hostile VOEvent XML and Avro messages: regression cases and short fuzz runs.

Every hostile message is a real bundled alert mutated: VOEvents from
``tests/data/voevent`` and ``tests/data/igwn/userguide``, ZTF packets from
``tests/data/ztf``, IGWN Avro alerts from ``tests/data/igwn``. Avro bombs are the real
records re-written with fastavro under another codec or writer schema. Each case must
make :func:`broker.sources.decode` raise a one-line DecodeError naming the limit or
problem, quickly, and :func:`broker.sources.decode_unguarded` must raise nothing but
DecodeError (any other exception is a decoder bug that ``decode`` merely contains).
Speed figures are in ``benchmarks/fuzz/fuzz_xml_avro.py``; the time bounds here are
generous sanity guards only.
"""

from __future__ import annotations

import bz2
import copy
import io
import lzma
import re
import time
import tracemalloc
import zlib
from pathlib import Path

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from broker.errors import DecodeError
from broker.event import Event
from broker.limits import DecodeLimits, decode_scope
from broker.sources import avro, decode, decode_unguarded

DATA = Path(__file__).resolve().parents[1] / "data"
VOEVENTS = sorted((DATA / "voevent").rglob("*.xml")) + sorted((DATA / "igwn" / "userguide").glob("*.xml"))
SWIFT = DATA / "voevent" / "gwcelery" / "swift_grb_gcn.xml"
GBM = DATA / "voevent" / "pygcn" / "gbm_flt_pos.xml"
LVC = DATA / "igwn" / "userguide" / "MS181101ab-2-Preliminary.xml"
ZTF = DATA / "ztf" / "kowalski" / "20231012" / "2475433850015010009.avro"
ZTF_MULTI = DATA / "ztf" / "fink-client" / "avro_multi_alerts_other.avro"
ZTF_FILES = sorted((DATA / "ztf").rglob("*.avro"))
IGWN = DATA / "igwn" / "userguide" / "MS181101ab-preliminary.avro"
IGWN_RETRACTION = DATA / "igwn" / "userguide" / "MS181101ab-retraction.avro"
IGWN_FILES = [IGWN, IGWN_RETRACTION]

GUARD_S = 5.0  # sanity bound on one hostile decode (the real figures are far lower)
SMALL = DecodeLimits(max_decompressed_bytes=1 << 20)


# -- helpers ----------------------------------------------------------------------------


def _refused(data: bytes, match: str, limits: DecodeLimits | None = None) -> DecodeError:
    """decode() raises a one-line DecodeError matching ``match`` within GUARD_S; so does
    decode_unguarded (no other exception type)."""
    start = time.perf_counter()
    with pytest.raises(DecodeError, match=match) as info:
        decode(data, limits)
    assert time.perf_counter() - start < GUARD_S
    assert "\n" not in str(info.value) and len(str(info.value)) < 2000
    assert not str(info.value).startswith("decoder failed"), "a decoder bug contained by decode()"
    with decode_scope(limits), pytest.raises(DecodeError, match=match):
        decode_unguarded(data)
    return info.value


def _only_decode_errors(data: bytes) -> list[Event] | None:
    """decode_unguarded's Events, or None on DecodeError; any other exception fails."""
    with decode_scope():
        try:
            events = decode_unguarded(data)
        except DecodeError as exc:
            assert "\n" not in str(exc)
            return None
    for ev in events:
        assert isinstance(ev, Event)
        ev.to_json()  # publishable: valid Unicode, finite numbers
    return events


def _read(path: Path) -> tuple[dict, list[dict]]:
    with path.open("rb") as fh:
        reader = fastavro.reader(fh)
        return reader.writer_schema, list(reader)


def _write(schema, records, codec: str = "null", **kw) -> bytes:
    out = io.BytesIO()
    fastavro.writer(out, schema, records, codec=codec, **kw)
    return out.getvalue()


def _zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _container(schema, codec: str, count: int, block: bytes) -> bytes:
    """A container of ``schema`` (header written by fastavro) with one block of
    ``count`` records holding ``block`` as given (already compressed by ``codec``)."""
    header = _write(schema, [], codec)  # magic, metadata, sync marker
    return header + _zigzag(count) + _zigzag(len(block)) + block + header[-16:]


def _encode(schema, rec) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), rec)
    return buf.getvalue()


def _streamed_bomb(path: Path, codec: str, size: int) -> bytes:
    """The real alert at ``path`` whose cutout (ZTF) or sky map (IGWN) is ``size`` zero
    bytes, compressed by streaming so that the test never holds it uncompressed."""
    schema, (rec, *_) = _read(path)
    rec = copy.deepcopy(rec)
    marker = b"hostile-test-marker-0123456789"
    holder = rec["cutoutScience"] if "cutoutScience" in rec else rec["event"]
    holder["stampData" if "stampData" in holder else "skymap"] = marker
    head, tail = _encode(schema, rec).split(_zigzag(len(marker)) + marker)
    comp = {"deflate": lambda: zlib.compressobj(9, zlib.DEFLATED, -15), "bzip2": bz2.BZ2Compressor,
            "xz": lzma.LZMACompressor}[codec]()
    parts = [comp.compress(head + _zigzag(size))]
    parts += [comp.compress(b"\0" * (1 << 20)) for _ in range(size >> 20)]
    parts += [comp.compress(tail), comp.flush()]
    return _container(schema, codec, 1, b"".join(parts))


def _xml(path: Path, edit) -> bytes:
    """The VOEvent at ``path`` with ``edit(root)`` applied."""
    root = etree.fromstring(path.read_bytes())
    edit(root)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _first(root, name: str):
    return next(root.iter("{*}" + name))


def _param(root, name: str):
    return next(el for el in root.iter("{*}Param") if el.get("name") == name)


def _set_text(name: str, text: str):
    def edit(root):
        _first(root, name).text = text
    return edit


def _set_param(name: str, value: str):
    def edit(root):
        _param(root, name).set("value", value)
    return edit


def _nested_wherewhen(levels: int = 250, copies: int = 7) -> bytes:
    """The real Swift VOEvent without its Position2D, with ``levels`` WhereWhen nested
    in one another, each holding ``copies`` copies of the real WhereWhen content (while
    libxml2's depth cap of 256 allows): ~0.85 MB, the shape that made the old lookup
    quadratic (every WhereWhen subtree searched in turn for a Position2D; 1.3 s here,
    65 s with the fuzzer's smaller elements)."""
    def edit(root):
        ww = _first(root, "WhereWhen")
        for pos in list(ww.iter("{*}Position2D")):
            pos.getparent().remove(pos)
        content, node = list(ww), ww
        for k in range(levels - 1):
            node = etree.SubElement(node, ww.tag)
            if k < levels - 10:
                for c in content * copies:
                    node.append(copy.deepcopy(c))
    return _xml(SWIFT, edit)


def _wide() -> bytes:
    """The real Swift VOEvent with 120,000 extra empty elements in its Description."""
    text = SWIFT.read_text()
    return re.sub(r"(<Description>)", r"\1" + "<x/>" * 120_000, text, count=1).encode()


def _with_doctype(path: Path, doctype: str, ref: str) -> bytes:
    body = path.read_text().split("?>", 1)[1]
    body = re.sub(r"(<(?:\w+:)?Description>)", r"\1" + ref, body, count=1)
    return (doctype + body).encode()


LAUGHS = "".join(f'<!ENTITY l{i + 1} "' + f"&l{i};" * 10 + '">' for i in range(9))


# -- VOEvent regression cases -----------------------------------------------------------

VOEVENT_CASES = [
    # (id, builder, DecodeError match, limits)
    ("nested-250-wherewhen", _nested_wherewhen, r"^VOEvent \?: XML element nesting is over the limit max_xml_depth = 64", None),
    ("120k-elements", _wide, r"^VOEvent \?: number of XML elements is over the limit max_xml_elements = 100,000", None),
    ("billion-laughs", lambda: _with_doctype(SWIFT, f'<!DOCTYPE voe:VOEvent [<!ENTITY l0 "lol">{LAUGHS}]>', "&l9;"),
     r"^VOEvent \?: malformed XML: .*amplification", None),
    ("char-ref-lone-surrogate", lambda: _xml(SWIFT, _set_text("Description", "SURR")).replace(b"SURR", b"&#xD800;"),
     r"malformed XML: xmlParseCharRef: invalid xmlChar value 55296", None),
    ("char-ref-nul", lambda: _xml(SWIFT, _set_text("Description", "NUL")).replace(b"NUL", b"&#0;"),
     r"malformed XML: xmlParseCharRef: invalid xmlChar value 0", None),
    ("dec-200", lambda: _xml(SWIFT, _set_text("C2", "200")), r"Position2D C2 \(Dec\) = 200.0 deg is outside \[-90, 90\]", None),
    ("ra-minus-1000", lambda: _xml(SWIFT, _set_text("C1", "-1000")), r"Position2D C1 \(RA\) = -1000.0 deg is outside", None),
    ("ra-plus-1000", lambda: _xml(GBM, _set_text("C1", "1000")), r"Position2D C1 \(RA\) = 1000.0 deg is outside", None),
    ("error-radius-negative", lambda: _xml(SWIFT, _set_text("Error2Radius", "-1")), r"Error2Radius = -1.0 deg is negative", None),
    ("isotime-9999-7-digit-fraction", lambda: _xml(SWIFT, _set_text("ISOTime", "9999-12-31T23:59:59.9999999")),
     r"ISOTime", None),
    ("isotime-9999-minus-offset", lambda: _xml(SWIFT, _set_text("ISOTime", "9999-12-31T23:59:59-05:00")), r"ISOTime", None),
    ("isotime-year-1-plus-offset", lambda: _xml(GBM, _set_text("ISOTime", "0001-01-01T00:00:00+05:00")), r"ISOTime", None),
    ("isotime-year-1", lambda: _xml(GBM, _set_text("ISOTime", "0001-01-01T00:00:00")), r"time .* is outside 1900\.\.2200", None),
    ("ivorn-100k-chars", lambda: _xml(SWIFT, lambda r: r.set("ivorn", r.get("ivorn") + "x" * 100_000)),
     r"^VOEvent \?: ivorn is 100,04\d characters long", None),
    ("lvc-who-date-year-1-offset", lambda: _xml(LVC, _set_text("Date", "0001-01-01T00:00:00+05:00")), r"Who/Date", None),
    ("lvc-isotime-9999-offset", lambda: _xml(LVC, _set_text("ISOTime", "9999-12-31T23:59:59-05:00")), r"ISOTime", None),
    ("lvc-ivorn-100k-chars", lambda: _xml(LVC, lambda r: r.set("ivorn", r.get("ivorn") + "x" * 100_000)),
     r"ivorn is 100,0\d\d characters long", None),
    ("lvc-graceid-5000-chars", lambda: _xml(LVC, _set_param("GraceID", "S" + "9" * 5000)), r"upstream_id is 5,001 characters", None),
]


@pytest.mark.parametrize(("build", "match", "limits"), [c[1:] for c in VOEVENT_CASES], ids=[c[0] for c in VOEVENT_CASES])
def test_hostile_voevent_is_refused(build, match, limits):
    _refused(build(), match, limits)


def test_nested_wherewhen_is_linear_when_the_depth_limit_allows_it():
    data = _nested_wherewhen()
    assert len(data) > 750_000
    [want] = decode(SWIFT.read_bytes())
    deep = DecodeLimits(max_xml_depth=1000)
    decode(data, deep)  # warm (imports)
    start = time.perf_counter()
    [got] = decode(data, deep)
    assert time.perf_counter() - start < GUARD_S  # ~10 ms; was quadratic in the nesting
    # the first WhereWhen's own content wins, as before; there is no position left
    assert (got.time, got.localization, want.localization is not None) == (want.time, None, True)


def test_external_entity_is_not_read():
    data = _with_doctype(SWIFT, '<!DOCTYPE voe:VOEvent [<!ENTITY x SYSTEM "file:///etc/passwd">]>', "&x;")
    events = _only_decode_errors(data)
    assert events is None or "root:" not in events[0].to_json()


@pytest.mark.parametrize(("param", "value"), [("FAR", "nan"), ("FAR", "inf"), ("FAR", "-Infinity"), ("HasNS", "nan"),
                                              ("HasNS", "inf"), ("BNS", "1e999")])
def test_lvc_non_finite_params_become_null(param, value):
    [ev] = decode(_xml(LVC, _set_param(param, value)))
    if param == "FAR":
        assert ev.properties["far_hz"] is None
    else:
        group = "classification" if param == "BNS" else "properties"
        assert ev.properties[group][param] is None
    ev.to_json()


@pytest.mark.parametrize("value", ["²", "٣", "9" * 5000, "1.5", "-3"])
def test_lvc_integer_params_take_ascii_digits_only(value):
    def edit(root):
        for name in ("Packet_Type", "Pkt_Ser_Num", "Significant"):
            _param(root, name).set("value", value)
    [ev] = decode(_xml(LVC, edit))
    assert "packet_type" not in ev.properties and "pkt_ser_num" not in ev.properties
    assert ev.properties["significant"] is None


@pytest.mark.parametrize(("c1", "c2", "ra"), [("360", "10", 0.0), ("0", "-90", 0.0), ("359.9", "90", 359.9)])
def test_voevent_position_edges_are_kept(c1, c2, ra):
    def edit(root):
        _first(root, "C1").text, _first(root, "C2").text = c1, c2
    [ev] = decode(_xml(SWIFT, edit))
    assert ev.localization.ra == ra and ev.localization.dec == float(c2)


def test_voevent_non_finite_position_is_no_position():
    [ev] = decode(_xml(SWIFT, _set_text("C1", "nan")))
    assert ev.localization is None


# -- Avro regression cases --------------------------------------------------------------


def _codec_bomb(path: Path, codec: str) -> bytes:
    """The real alert with a 2 MiB zero cutout/sky map, written by fastavro with ``codec``
    (refused under SMALL's 1 MiB; the default-limit bombs are below)."""
    schema, (rec, *_) = _read(path)
    rec = copy.deepcopy(rec)
    holder = rec["cutoutScience"] if "cutoutScience" in rec else rec["event"]
    holder["stampData" if "stampData" in holder else "skymap"] = b"\0" * (2 << 20)
    return _write(schema, [rec], codec)


def _add_field(path: Path, field: dict, value, codec: str = "null", where: str | None = None) -> bytes:
    """The real alert with one more field (last in the record, or in sub-record ``where``)."""
    return _write(*_with_field(path, field, value, where), codec)


def _with_field(path: Path, field: dict, value, where: str | None = None) -> tuple[dict, list[dict]]:
    schema, (rec, *_) = _read(path)
    schema, rec = copy.deepcopy(schema), copy.deepcopy(rec)
    target, values = schema, rec
    if where:
        target = next(f["type"] for f in schema["fields"] if f["name"] == where)
        values = rec[where]
    target["fields"].append(field)
    values[field["name"]] = value
    return schema, [rec]


def _array_of_2_40_nulls(path: Path) -> bytes:
    """The real alert with a trailing ``array<null>`` field claiming 2^40 items (15 kB)."""
    schema, (rec,) = _with_field(path, {"name": "bomb", "type": {"type": "array", "items": "null"}}, [None])
    block = _encode(schema, rec)
    assert block.endswith(b"\x02\x00")  # count 1, no bytes for the null, end of array
    return _container(schema, "null", 1, block[:-2] + _zigzag(2**40) + b"\x00")


def _retype(path: Path, field: str, new_type, value, sub: str = "candidate") -> bytes:
    schema, (rec, *_) = _read(path)
    schema, rec = copy.deepcopy(schema), copy.deepcopy(rec)
    record = next(f["type"] for f in schema["fields"] if f["name"] == sub)
    next(f for f in record["fields"] if f["name"] == field)["type"] = new_type
    rec[sub][field] = value
    return _write(schema, [rec])


def _deep_schema(path: Path, levels: int) -> bytes:
    t: object = "int"
    for _ in range(levels):
        t = {"type": "array", "items": t}
    return _add_field(path, {"name": "deep", "type": t}, [])


def _huge_doc(path: Path) -> bytes:
    schema, records = _read(path)
    schema = dict(schema, doc="x" * 300_000)
    return _write(schema, records[:1])


def _block_count(path: Path, count: int) -> bytes:
    schema, (rec, *_) = _read(path)
    return _container(schema, "null", count, _encode(schema, rec))


def _multi_block_sum() -> tuple[bytes, DecodeLimits]:
    """The real multi-alert file, deflate, one block per alert; a limit above every
    block but below their sum."""
    schema, records = _read(ZTF_MULTI)
    data = _write(schema, records, "deflate", sync_interval=1)
    header = avro.read_header(data)
    sizes = [len(b) for _, b in avro.iter_blocks(data, header)]
    assert len(sizes) == len(records) > 1
    return data, DecodeLimits(max_decompressed_bytes=max(sizes) + 1)


def _ztf_value(field: str, value) -> bytes:
    schema, (rec, *_) = _read(ZTF)
    rec = copy.deepcopy(rec)
    rec["candidate"][field] = value
    return _write(schema, [rec])


AVRO_CASES = [
    # decompression bombs: the real records re-written with another codec
    *[(f"{name}-{codec}-bomb-small-limit", (lambda p=path, c=codec: _codec_bomb(p, c)),
       rf"^(igwn: )?Avro {codec} blocks of this message decompress to more "
       r"than max_decompressed_bytes = 1,048,576", SMALL)
      for name, path in (("ztf", ZTF), ("igwn", IGWN)) for codec in ("deflate", "bzip2", "xz")],
    ("ztf-bzip2-70MB-bomb-default-limit", lambda: _streamed_bomb(ZTF, "bzip2", 70 << 20),
     r"Avro bzip2 blocks of this message decompress to more than max_decompressed_bytes = 33,554,432", None),
    ("igwn-xz-70MB-bomb-default-limit", lambda: _streamed_bomb(IGWN, "xz", 70 << 20),
     r"Avro xz blocks of this message decompress to more than max_decompressed_bytes = 33,554,432", None),
    ("ztf-blocks-summed-over-the-message", lambda: _multi_block_sum()[0], r"deflate .*max_decompressed_bytes", "multi"),
    # schema bombs: an attacker-chosen writer schema
    ("ztf-array-of-2^40-nulls", lambda: _array_of_2_40_nulls(ZTF), r"array items of type 'null' can take zero bytes", None),
    ("igwn-array-of-2^40-nulls", lambda: _array_of_2_40_nulls(IGWN_RETRACTION),
     r"array items of type 'null' can take zero bytes", None),
    ("ztf-array-of-records-of-nulls", lambda: _add_field(ZTF, {"name": "bomb", "type": {"type": "array", "items": {
        "type": "record", "name": "Nulls", "fields": [{"name": "a", "type": "null"}, {"name": "b", "type": "null"}]}}}, []),
     r"array items of type 'ztf.Nulls' can take zero bytes", None),
    ("ztf-array-of-fixed-0", lambda: _add_field(ZTF, {"name": "bomb", "type": {"type": "array", "items": {
        "type": "fixed", "name": "Zero", "size": 0}}}, []), r"array items of type 'ztf.Zero' can take zero bytes", None),
    ("igwn-1.5M-booleans", lambda: _add_field(IGWN_RETRACTION, {"name": "bomb", "type": {"type": "array", "items": "boolean"}},
                                             [True] * 1_500_000, "deflate"),
     r"max_array_items = 1,000,000 \(got 1,500,\d{3}\)", None),
    ("ztf-1.5M-booleans-in-candidate", lambda: _add_field(ZTF, {"name": "bomb", "type": {"type": "array", "items": "boolean"}},
                                                        [False] * 1_500_000, "deflate", where="candidate"),
     r"max_array_items = 1,000,000 \(got 1,500,\d{3}\)", None),
    ("ztf-recursive-type", lambda: _add_field(ZTF, {"name": "bomb", "type": ["null", {"type": "record", "name": "Node",
        "fields": [{"name": "next", "type": ["null", "Node"]}]}]}, None), r"recursive type 'ztf.Node' contains itself", None),
    ("ztf-schema-70-levels", lambda: _deep_schema(ZTF, 70), r"max_json_depth = 64", None),
    ("igwn-schema-300kB", lambda: _huge_doc(IGWN_RETRACTION), r"MAX_SCHEMA_BYTES = 262,144", None),
    ("ztf-block-count-2^62", lambda: _block_count(ZTF, 2**62), r"max_array_items", None),
    ("igwn-block-count-2^62", lambda: _block_count(IGWN_RETRACTION, 2**62), r"max_array_items", None),
    ("ztf-block-count-1000", lambda: _block_count(ZTF, 1000), r"corrupt Avro block 0: 1,000 records of at least \d+ bytes each cannot fit", None),
    # ZTF candidate values
    ("ztf-ra-inf", lambda: _ztf_value("ra", float("inf")), r"candidate\.ra = inf is not finite", None),
    ("ztf-ra-nan", lambda: _ztf_value("ra", float("nan")), r"unusable candidate.*not finite", None),
    ("ztf-dec-200", lambda: _ztf_value("dec", 200.0), r"candidate\.dec = 200\.0 is outside \[-90, 90\]", None),
    ("ztf-ra-1000", lambda: _ztf_value("ra", 1000.0), r"candidate\.ra = 1000\.0 is outside \[0, 360\]", None),
    ("ztf-ra-minus-1000", lambda: _ztf_value("ra", -1000.0), r"candidate\.ra = -1000\.0 is outside", None),
    ("ztf-jd-1e308", lambda: _ztf_value("jd", 1e308), r"candidate\.jd = 1e\+308 is outside 1900-01-01\.\.2200-01-01", None),
    ("ztf-jd-year-1800", lambda: _ztf_value("jd", 2378496.5), r"candidate\.jd = 2378496\.5 is outside", None),
    ("ztf-jd-minus-inf", lambda: _ztf_value("jd", float("-inf")), r"candidate\.jd = -inf is not finite", None),
    ("ztf-ra-as-string", lambda: _retype(ZTF, "ra", "string", "12.5"), r"candidate\.ra is str, not a number", None),
    ("ztf-candidate-null", lambda: _retype_candidate_null(), r"unusable candidate: it is NoneType", None),
    ("ztf-1001-metadata-entries", lambda: _write(*_read(ZTF), metadata={f"k{i}": "" for i in range(1001)}),
     r"corrupt Avro header: 1,00\d metadata entries, over MAX_METADATA_ENTRIES = 1,000", None),
    ("igwn-1500-records-of-3000-fields-cpu", lambda: _wide_records(), r"max_decode_cpu_s = 0\.05 s of CPU",
     DecodeLimits(max_decode_cpu_s=0.05, max_array_items=10**8)),
    ("igwn-1500-records-of-3000-fields-values", lambda: _wide_records(),
     r"1,500 records of block 0, 3,028 values each\) is over the limit max_array_items = 1,000,000", None),
    ("igwn-alert-named-enum", lambda: _write({"type": "enum", "name": _read(IGWN_RETRACTION)[0]["name"], "symbols": ["A"]}, ["A"]),
     r"Avro writer schema 'igwn\.alerts\.v1_0\.Alert' is 'enum', not a record", None),
    ("ztf-alert-named-fixed", lambda: _write({"type": "fixed", "name": "ztf.alert", "size": 3}, [b"abc"]),
     r"ZTF alert schema 'ztf\.alert' is not an Avro record", None),
]


def _wide_records() -> bytes:
    """1,500 copies of the real IGWN retraction with 3,000 more int fields and an array:
    4.5M values, refused by max_array_items before anything is read; with that limit
    raised out of the way, the decode is cut by the CPU budget (set low here)."""
    fields = [{"name": f"f{i}", "type": "int"} for i in range(3000)]
    schema, (rec,) = _with_field(IGWN_RETRACTION, {"name": "b", "type": {"type": "array", "items": "boolean"}}, [])
    schema["fields"][-1:-1] = fields
    rec.update({f["name"]: 1 for f in fields})
    return _write(schema, [rec] * 1500, sync_interval=1 << 30)


def _retype_candidate_null() -> bytes:
    schema, (rec, *_) = _read(ZTF)
    schema, rec = copy.deepcopy(schema), copy.deepcopy(rec)
    field = next(f for f in schema["fields"] if f["name"] == "candidate")
    field["type"] = ["null", field["type"]]
    rec["candidate"] = None
    return _write(schema, [rec])


@pytest.mark.parametrize(("build", "match", "limits"), [c[1:] for c in AVRO_CASES], ids=[c[0] for c in AVRO_CASES])
def test_hostile_avro_is_refused(build, match, limits):
    if limits == "multi":
        data, limits = _multi_block_sum()
    else:
        data = build()
    _refused(data, match, limits)


def test_array_of_2_40_nulls_is_small():
    assert len(_array_of_2_40_nulls(ZTF)) < 100_000
    assert len(_array_of_2_40_nulls(IGWN_RETRACTION)) < 20_000


@pytest.mark.parametrize("codec", ["deflate", "bzip2", "xz"])
def test_real_alerts_decode_under_every_codec_with_default_limits(codec):
    for path in (ZTF_MULTI, IGWN):
        schema, records = _read(path)
        assert len(decode(_write(schema, records, codec))) == len(records)


def test_multi_block_limit_counts_the_sum():
    data, limits = _multi_block_sum()
    assert len(decode(data)) > 1  # fine under the default limit
    with pytest.raises(DecodeError, match="max_decompressed_bytes"):
        decode(data, limits)


def test_ztf_ra_360_is_0_and_non_finite_properties_are_null():
    [ev] = decode(_ztf_value("ra", 360.0))
    assert ev.localization.ra == 0.0
    schema, (rec, *_) = _read(ZTF)
    rec = copy.deepcopy(rec)
    rec["candidate"].update(magpsf=float("inf"), sigmapsf=float("-inf"), rb=float("nan"))
    [ev] = decode(_write(schema, [rec]))
    assert ev.properties["magpsf"] is None and ev.properties["sigmapsf"] is None and ev.properties["rb"] is None
    ev.to_json()


def test_ztf_property_of_another_type_is_null():
    [ev] = decode(_retype(ZTF, "fid", "string", "1"))
    assert ev.properties["fid"] is None and ev.properties["band"] is None
    [ev] = decode(_retype(ZTF, "magpsf", {"type": "map", "values": "double"}, {"a": 1.0}))
    assert ev.properties["magpsf"] is None


def test_array_bound_is_exact_when_the_bytes_bound_is_over():
    """A real IGWN alert whose 780 kB sky map would allow 780k one-byte items, three
    times over: the bytes bound exceeds the limit, so the items are counted exactly."""
    schema, records = _read(IGWN)
    data = _write(schema, records * 3)
    assert len(data) > avro.ItemBudget().limit
    assert len(decode(data)) == 3


def _null_fields(k: int) -> list[dict]:
    return [{"name": f"n{i}", "type": "null"} for i in range(k)]


def _wide_item_bomb(path: Path, items: int = 40_000, nulls: int = 2_000, codec: str = "deflate") -> bytes:
    """The real alert with a trailing array of ``items`` records of one int and ``nulls``
    null fields: 1 byte per item on the wire, a ``nulls + 1``-entry dict each in Python
    (the red team's 40,000 x 2,000: 5.6 s and 2 GB before any limit said no)."""
    item = {"type": "record", "name": "Wide", "fields": [{"name": "a", "type": "int"}, *_null_fields(nulls)]}
    schema, (rec,) = _with_field(path, {"name": "bomb", "type": {"type": "array", "items": item}}, [])
    block = _encode(schema, rec)
    assert block.endswith(b"\x00")  # the empty array: no block, end of array
    block = block[:-1] + _zigzag(items) + b"\x00" * items + b"\x00"  # items of int 0 and nothing else
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    return _container(schema, codec, 1, comp.compress(block) + comp.flush())


def _null_records(path: Path, records: int = 1_000_000, nulls: int = 7_000) -> bytes:
    """A container of the real alert's schema name whose top-level record is ``nulls``
    null fields, ``records`` of them in a block of zero bytes."""
    schema, _ = _read(path)
    schema = {"type": "record", "name": schema["name"], "fields": _null_fields(nulls)}
    return _container(schema, "null", records, b"")


def _nested_null_records(path: Path, outer: int = 2_000, inner: int = 2_000) -> bytes:
    """The real alert with one more field: a record of ``outer`` fields, each a record of
    ``inner`` nulls (one named type used ``outer`` times): 4M values from zero bytes."""
    inner_t = {"type": "record", "name": "Nulls", "fields": _null_fields(inner)}
    fields = [{"name": "f0", "type": inner_t}] + [{"name": f"f{i}", "type": "Nulls"} for i in range(1, outer)]
    nones = {f"n{i}": None for i in range(inner)}
    return _add_field(path, {"name": "bomb", "type": {"type": "record", "name": "Outer", "fields": fields}},
                      {f"f{i}": nones for i in range(outer)})


def _refused_small(data: bytes, match: str, real: Path) -> tuple[float, int]:
    """_refused at the default limits; (CPU seconds, peak bytes traced) of the decode()
    and decode_unguarded() it makes, the decoders warmed up first on the real alert."""
    assert decode(real.read_bytes())  # imports and caches not counted
    tracemalloc.start()
    try:
        cpu = time.thread_time()
        _refused(data, match)
        cpu = time.thread_time() - cpu
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return cpu, peak


@pytest.mark.parametrize("path", [IGWN_RETRACTION, ZTF], ids=["igwn", "ztf"])
def test_array_of_wide_records_is_refused_before_it_is_built(path):
    """Red team: 1-byte items that are 2,001-entry dicts. Their values are charged from
    the block count before fastavro builds any (was: 5.6 s, 2 GB, then the CPU limit)."""
    data = _wide_item_bomb(path)
    assert len(data) < 250_000  # the real alert, a 60 kB schema, and 40,000 items deflated
    cpu, peak = _refused_small(data, r"40,000 array items of 2,002 values each\) is over the limit max_array_items = 1,000,000", path)
    assert cpu < 1.0 and peak < 300 * 2**20, (cpu, peak)


def test_null_records_in_a_zero_byte_block_are_refused():
    """Red team: 1M top-level records of 7,000 nulls in a block of 0 bytes (was: 807 MB
    in 2.2 s); records that can take zero bytes come one per block at most, and each
    is charged its values (7,001 here)."""
    cpu, peak = _refused_small(_null_records(IGWN_RETRACTION), r"1,000,000 records .* can take zero bytes", IGWN_RETRACTION)
    assert cpu < 1.0 and peak < 300 * 2**20, (cpu, peak)
    one = _null_records(IGWN_RETRACTION, 1)
    two_blocks = one + _zigzag(1) + _zigzag(0) + one[-16:]  # one more block of 1 record, same sync marker
    with pytest.raises(DecodeError, match=r"1 record of block 1, 7,001 values each\) is over the limit max_array_items"):
        decode(two_blocks, DecodeLimits(max_array_items=10_000))


def test_record_of_nested_null_records_is_refused_before_it_is_built():
    """4M values in zero bytes without any array: each record is charged its fields,
    recursively, named types counted at every use."""
    cpu, peak = _refused_small(_nested_null_records(IGWN_RETRACTION),
                               r"1 record of block 0, 4,00\d,\d{3} values each\) is over the limit max_array_items",
                               IGWN_RETRACTION)
    assert cpu < 1.0 and peak < 300 * 2**20, (cpu, peak)


def test_real_alerts_fit_max_array_items_100_times_over():
    """The largest real alert decodes to 4,520 Python values (a ZTF alert with 65
    prv_candidates and 21 fp_hists): every bundled alert decodes with the limit at a
    hundredth of its default (the bytes bound is over, so the values are counted exactly)."""
    limits = DecodeLimits(max_array_items=10_000)
    for path in ZTF_FILES + IGWN_FILES:
        assert decode(path.read_bytes(), limits), path
    with pytest.raises(DecodeError, match=r"max_array_items = 4,000 \(got 4,5\d\d\)"):
        decode((DATA / "ztf" / "kowalski" / "20231012" / "2475433850315015009.avro").read_bytes(),
               DecodeLimits(max_array_items=4_000))


# -- hypothesis: mutated real alerts ------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HOSTILE_TEXT = ["nan", "inf", "-inf", "1e308", "-1e308", "200", "-1000", "360", "", "²", "9" * 5000,
                "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59.9999999", "9999-12-31T23:59:59-05:00",
                "&#xD800;", "&#0;", "&#x10FFFF;", "x" * 20_000]
_VOEVENT_BYTES = [p.read_bytes() for p in VOEVENTS]
_TEXT_SPANS = re.compile(rb'(?<=value=")[^"]*(?=")|(?<=>)[^<>]+(?=</)')


def _byte_mutation(data: bytes, draw) -> bytes:
    b = bytearray(data)
    kind = draw(st.sampled_from(["flip", "truncate", "delete", "duplicate"]))
    i = draw(st.integers(0, len(b) - 1))
    if kind == "flip":
        for j in draw(st.lists(st.integers(0, len(b) - 1), min_size=1, max_size=8)):
            b[j] = draw(st.integers(0, 255))
    elif kind == "truncate":
        del b[i:]
    elif kind == "delete":
        del b[i : i + draw(st.integers(1, 64))]
    else:
        b[i:i] = b[i : i + draw(st.integers(1, 200))] * draw(st.integers(1, 30))
    return bytes(b)


@FUZZ
@given(st.data())
def test_fuzz_voevent(data):
    raw = data.draw(st.sampled_from(_VOEVENT_BYTES), label="alert")
    if data.draw(st.booleans(), label="bytes"):
        msg = _byte_mutation(raw, data.draw)
    else:  # substitute a Param value or an element text (escaped, or raw char refs)
        spans = list(_TEXT_SPANS.finditer(raw))
        m = data.draw(st.sampled_from(spans), label="span")
        text = data.draw(st.sampled_from(HOSTILE_TEXT) | st.text(max_size=40), label="value")
        value = text.encode("utf-8", "surrogatepass") if not text.startswith("&#") else text.encode()
        msg = raw[: m.start()] + value + raw[m.end() :]
    _only_decode_errors(msg)


def _avro_fuzz(paths: list[Path], data) -> None:
    path = data.draw(st.sampled_from(paths), label="alert")
    schema, records = _read(path)
    rec = copy.deepcopy(records[0])
    how = data.draw(st.sampled_from(["bytes", "value", "value", "codec"]), label="how")
    if how == "bytes":
        _only_decode_errors(_byte_mutation(_write(schema, [rec]), data.draw))
        return
    # substitute values of the record's own types, re-encoded with fastavro
    parents = [rec] + [v for v in rec.values() if isinstance(v, dict)]
    for _ in range(data.draw(st.integers(1, 3), label="n")):
        parent = parents[data.draw(st.integers(0, len(parents) - 1), label="record")]
        key = data.draw(st.sampled_from(sorted(parent)), label="field")
        old = parent[key]
        if isinstance(old, bool) or old is None:
            continue
        if isinstance(old, float):
            new = data.draw(st.floats() | st.sampled_from([1e308, -0.0, 200.0, -1000.0, 360.0, 2415020.4, 2524593.6]),
                            label="value")
        elif isinstance(old, int):
            new = data.draw(st.integers(-(2**63), 2**63 - 1), label="value")
        elif isinstance(old, str):
            new = data.draw(st.text(st.characters(exclude_categories=("Cs",)), max_size=50) | st.sampled_from(HOSTILE_TEXT),
                            label="value")
        elif isinstance(old, bytes):
            new = old[: data.draw(st.integers(0, len(old)), label="cut")]
        elif isinstance(old, list):
            new = old * data.draw(st.sampled_from([0, 2, 1000]), label="times")
        else:
            continue
        parent[key] = new
    codec = data.draw(st.sampled_from(["null", "deflate", "bzip2", "xz"]), label="codec") if how == "codec" else "null"
    try:
        msg = _write(schema, [rec] * data.draw(st.integers(1, 2), label="copies"), codec)
    except (ValueError, TypeError, OverflowError, UnicodeEncodeError):  # fastavro cannot write it (e.g. no such enum symbol)
        return
    _only_decode_errors(msg)


@FUZZ
@given(st.data())
def test_fuzz_ztf_avro(data):
    _avro_fuzz(ZTF_FILES, data)


@FUZZ
@given(st.data())
def test_fuzz_igwn_avro(data):
    _avro_fuzz(IGWN_FILES, data)
