"""Fuzz the VOEvent XML, ZTF Avro and IGWN Avro decoders with mutated real alerts.

Every message is a real bundled alert (``tests/data/voevent`` and the LVC VOEvents of
``tests/data/igwn/userguide``; ``tests/data/ztf``; ``tests/data/igwn`` Avro) mutated
once by a seeded generator:

* bytes: flips, truncation, deleted or duplicated ranges, splices of another alert;
* VOEvent: a Param value, element text or attribute replaced by a hostile value (NaN,
  ±Inf, 1e308, Dec 200, times at year 1/9999 with offsets or 7-digit fractions,
  ``²``, 5,000 digits, 100 kB...), character references (``&#xD800;``, ``&#0;``),
  internal/external entities, a subtree nested or repeated hundreds of times, a
  changed ivorn, role or unit;
* Avro: the container re-written with fastavro after substituting a value of the
  right type (NaN, ±Inf, 1e308, ra ±1000, dec 200, jd out of range, 2^63-1, long or
  odd strings, huge arrays), after changing the writer schema (a field re-typed,
  an array of nulls or booleans added, a recursive type, another codec), or with the
  block framing edited (record count, block size).

Each message is decoded with :func:`broker.sources.decode_unguarded` inside
:func:`broker.limits.decode_scope` (default limits and CPU budget), so every exception
that is not a DecodeError is a decoder bug: it is counted under "other exceptions"
(which must stay 0) and the message is saved under ``--save-dir``. DecodeErrors are
counted by the first word of their reason once the context prefix naming the alert
(``VOEvent <ivorn>:``, ``ZTF alert 'ZTF..':``, ``igwn <id>:``) is removed. Each
decoder runs in its own child process so that its peak RSS is its own.

Usage: python benchmarks/fuzz/fuzz_xml_avro.py [--n 10000] [--seed 1] [--only voevent]
"""

from __future__ import annotations

import argparse
import copy
import io
import logging
import multiprocessing as mp
import random
import re
import resource
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
from lxml import etree
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from broker.errors import DecodeError
from broker.limits import decode_scope
from broker.sources import decode_unguarded

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"

# --------------------------------------------------------------------------- corpus


def voevent_corpus() -> list[bytes]:
    """Every bundled VOEvent: GCN/SVOM/other brokers' and the LVC user-guide ones."""
    paths = sorted((DATA / "voevent").rglob("*.xml")) + sorted((DATA / "igwn" / "userguide").glob("*.xml"))
    return [p.read_bytes() for p in paths]


def _avro_records(path: Path) -> tuple[dict, list[dict]]:
    with path.open("rb") as fh:
        reader = fastavro.reader(fh)
        return reader.writer_schema, list(reader)


def ztf_corpus() -> list[tuple[dict, dict]]:
    """(writer schema, record) of every bundled ZTF alert (multi-alert files split)."""
    out = []
    for path in sorted((DATA / "ztf").rglob("*.avro")):
        schema, records = _avro_records(path)
        out.extend((schema, rec) for rec in records)
    return out


def igwn_corpus() -> list[tuple[dict, dict]]:
    """(writer schema, record) of the bundled IGWN Avro alerts."""
    out = []
    for path in sorted((DATA / "igwn").rglob("*.avro")):
        schema, records = _avro_records(path)
        out.extend((schema, rec) for rec in records)
    return out


def write_avro(schema: Any, records: list[Any], codec: str = "null") -> bytes:
    out = io.BytesIO()
    fastavro.writer(out, schema, records, codec=codec)
    return out.getvalue()


# --------------------------------------------------------------------------- values

HOSTILE_NUMBERS_TEXT = [
    "nan", "NaN", "inf", "-inf", "Infinity", "-Infinity", "1e308", "-1e308", "1e999", "5e-324", "200", "-200",
    "-1000", "1000", "360", "360.0000001", "-0", "0", "-1", "2147483648", "9223372036854775808", "1e20",
    "²", "٣", "9" * 30, "9" * 5000, "0x10", "1_000", "", " ", "true", "1.5.3", "+.5",
]
HOSTILE_TIMES_TEXT = [
    "0001-01-01T00:00:00+05:00", "0001-01-01T00:00:00", "9999-12-31T23:59:59.9999999", "9999-12-31T23:59:59-05:00",
    "9999-12-31T23:59:59.999999Z", "1899-12-31T23:59:59Z", "2200-01-01T00:00:00Z", "2024-02-30T00:00:00",
    "2024-1-1T1:00:00Z", "2024-01-01T00:00:00+99:99", "2024-01-01T24:00:00", "2024-01-01T00:00:60",
    "2024-01-01T00:00:00." + "9" * 40, "2024-01-01", "", "now",
]
HOSTILE_STRINGS = [
    "", " ", "x" * 100_000, "\u202e\u200b", "😀" * 50, "ivo://gwnet/LVC#" + "A" * 2000, "null", "None", "\t\n",
    "<![CDATA[x]]>", "&amp;", "S" + "9" * 5000,
]
CHAR_REFS = ["&#xD800;", "&#xDFFF;", "&#0;", "&#x1;", "&#xFFFE;", "&#x10FFFF;", "&#x110000;", "&#99999999999;", "&#x;"]
HOSTILE_FLOATS = [
    float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 5e-324, -0.0, 0.0, 200.0, -200.0, 1000.0, -1000.0,
    360.0, 360.0000001, -1e-9, 2415020.4, 2415020.5, 2524593.6, 3e6, -3e6, 2.5e9,
]
HOSTILE_INTS = [0, -1, 1, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63), 3, 99]


# --------------------------------------------------------------------------- byte mutators


def mutate_bytes(rng: random.Random, data: bytes, others: list[bytes]) -> tuple[bytes, str]:
    """One byte-level mutation of ``data``."""
    b = bytearray(data)
    kind = rng.choice(["flip", "flip", "truncate", "delete", "duplicate", "splice", "zero"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == "truncate":
        del b[rng.randrange(len(b)) :]
    elif kind == "delete":
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 64)]
    elif kind == "duplicate":
        i = rng.randrange(len(b))
        chunk = b[i : i + rng.randint(1, 256)]
        b[i:i] = chunk * rng.randint(1, 50)
    elif kind == "splice":
        other = rng.choice(others)
        i, j = rng.randrange(len(b)), rng.randrange(len(other))
        b = b[:i] + other[j : j + rng.randint(1, 2048)] + b[i:]
    else:
        i = rng.randrange(len(b))
        b[i : i + rng.randint(1, 32)] = b"\0" * min(32, len(b) - i)
    return bytes(b), f"bytes.{kind}"


# --------------------------------------------------------------------------- VOEvent


def _parse(data: bytes) -> Any:
    return etree.fromstring(data, etree.XMLParser(resolve_entities=False, huge_tree=True))


def mutate_voevent(rng: random.Random, corpus: list[bytes]) -> tuple[bytes, str]:
    """One mutated VOEvent."""
    data = rng.choice(corpus)
    if rng.random() < 0.3:
        return mutate_bytes(rng, data, corpus)
    root = _parse(data)
    elements = [el for el in root.iter() if isinstance(el.tag, str)]
    kind = rng.choice(["param", "param", "text", "attr", "charref", "nest", "repeat", "entity", "ivorn", "time", "unit"])
    if kind == "param":
        params = [el for el in elements if etree.QName(el).localname == "Param"]
        el = rng.choice(params or elements)
        el.set("value", rng.choice(HOSTILE_NUMBERS_TEXT + HOSTILE_STRINGS + HOSTILE_TIMES_TEXT))
    elif kind == "text":
        leaves = [el for el in elements if len(el) == 0] or elements
        rng.choice(leaves).text = rng.choice(HOSTILE_NUMBERS_TEXT + HOSTILE_TIMES_TEXT + HOSTILE_STRINGS)
    elif kind == "attr":
        el = rng.choice(elements)
        name = rng.choice(list(el.attrib) or ["role"])
        el.set(name, rng.choice(HOSTILE_STRINGS + HOSTILE_NUMBERS_TEXT))
    elif kind == "charref":
        marker = "CHARREF%06d" % rng.randrange(10**6)
        leaves = [el for el in elements if len(el) == 0] or elements
        rng.choice(leaves).text = marker
        out = etree.tostring(root, encoding="UTF-8", xml_declaration=True)
        return out.replace(marker.encode(), rng.choice(CHAR_REFS).encode()), "voevent.charref"
    elif kind == "nest":  # the element wrapped in many copies of its own tag (quadratic-walk bait)
        el = rng.choice(elements[1:] or elements)
        parent = el.getparent()
        if parent is not None:
            depth = rng.choice([10, 60, 63, 64, 65, 100, 200, 250])
            idx = list(parent).index(el)
            outer = etree.Element(el.tag)
            node = outer
            for _ in range(depth - 1):
                node = etree.SubElement(node, el.tag)
                if rng.random() < 0.5:
                    node.append(copy.deepcopy(el))
            node.append(el)
            parent.insert(idx, outer)
    elif kind == "repeat":  # a subtree repeated (wide document), up to ~4 MB
        el = rng.choice(elements[1:] or elements)
        parent = el.getparent()
        if parent is not None:
            size = len(etree.tostring(el))
            for _ in range(min(rng.choice([10, 100, 1000, 5000, 120_000]), 4_000_000 // max(size, 1))):
                parent.append(copy.deepcopy(el))
    elif kind == "entity":
        body = etree.tostring(root, encoding="unicode")
        name = etree.QName(root).localname if ":" not in root.tag else root.prefix + ":" + etree.QName(root).localname
        lol = "".join(f'<!ENTITY e{i + 1} "' + f"&e{i};" * 10 + '">' for i in range(rng.randint(1, 12)))
        decls = rng.choice([
            f'<!DOCTYPE {name} [<!ENTITY e0 "lol">{lol}]>',
            f'<!DOCTYPE {name} [<!ENTITY e0 SYSTEM "file:///etc/passwd">{lol}]>',
            f'<!DOCTYPE {name} [<!ENTITY e0 SYSTEM "http://127.0.0.1:9/x">{lol}]>',
            f'<!DOCTYPE {name} SYSTEM "http://127.0.0.1:9/x.dtd">',
        ])
        ref = f"&e{rng.randint(0, 12)};"
        body = re.sub(r"(<(?:\w+:)?(?:Description|ISOTime|C1|Date)>)", r"\1" + ref, body, count=1)
        return (decls + body).encode(), "voevent.entity"
    elif kind == "ivorn":
        root.set("ivorn", rng.choice([
            "ivo://gwnet/LVC#S" + "9" * rng.randint(1, 3000), "ivo://org.svom/fsc#sb24020101_eclairs-wakeup",
            "ivo://nasa.gsfc.gcn/SWIFT#" + "x" * rng.choice([10, 1100, 100_000]), "", "ivo://other/x",
            root.get("ivorn", "") + rng.choice(HOSTILE_STRINGS[:5]),
        ]))
        if rng.random() < 0.3:
            root.set("role", rng.choice(["utility", "test", "", "observation", "x" * 1000]))
    elif kind == "time":
        times = [el for el in elements if etree.QName(el).localname in ("ISOTime", "Date")] or elements
        rng.choice(times).text = rng.choice(HOSTILE_TIMES_TEXT)
    else:  # unit
        pos = [el for el in elements if etree.QName(el).localname == "Position2D"]
        if pos:
            pos[0].set("unit", rng.choice(["rad", "deg", "", "radian", "arcsec"]))
            for c in pos[0].iter():
                if etree.QName(c).localname in ("C1", "C2", "Error2Radius") and rng.random() < 0.5:
                    c.text = rng.choice(HOSTILE_NUMBERS_TEXT)
    return etree.tostring(root, encoding="UTF-8", xml_declaration=True), f"voevent.{kind}"


# --------------------------------------------------------------------------- Avro


def _substitute(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """A hostile value of the same Avro type as ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, float):
        return rng.choice(HOSTILE_FLOATS)
    if isinstance(value, int):
        return rng.choice(HOSTILE_INTS)
    if isinstance(value, str):
        return rng.choice(HOSTILE_STRINGS + HOSTILE_TIMES_TEXT + HOSTILE_NUMBERS_TEXT[:20])
    if isinstance(value, bytes):
        return rng.choice([b"", value[: rng.randrange(len(value) + 1)], b"\0" * 1000, value[::-1][:5000]])
    if isinstance(value, list):
        if value and rng.random() < 0.5:
            return value * rng.choice([2, 100, 5000])
        return []
    if isinstance(value, dict) and depth < 4 and value:
        out = dict(value)
        key = rng.choice(list(out))
        out[key] = _substitute(rng, out[key], depth + 1)
        return out
    return value


def _paths(rec: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for k, v in rec.items():
        out.append(prefix + (k,))
        if isinstance(v, dict) and k not in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
            out.extend(_paths(v, prefix + (k,)))
    return out


def _set(rec: dict, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        rec = rec[k]
    rec[path[-1]] = value


def _get(rec: dict, path: tuple) -> Any:
    for k in path:
        rec = rec[k]
    return rec


def _find_field(schema: dict, name: str) -> dict | None:
    for f in schema.get("fields", ()):
        if f["name"] == name:
            return f
    return None


def mutate_schema(rng: random.Random, schema: dict, rec: dict, numeric: list[tuple]) -> tuple[dict, list[dict], str]:
    """A changed writer schema with a record written in it."""
    schema = copy.deepcopy(schema)
    rec = copy.deepcopy(rec)
    kind = rng.choice(["retype", "null_array", "bool_array", "recursive", "empty_record_array", "deep", "fixed0",
                       "toplevel"])
    if kind == "retype" and numeric:
        path = rng.choice(numeric)
        sub = schema
        for k in path[:-1]:
            f = _find_field(sub, k)
            t = f["type"]
            sub = next(x for x in t if isinstance(x, dict)) if isinstance(t, list) else t
        f = _find_field(sub, path[-1])
        new_type, value = rng.choice([("string", "12.5"), ("long", 2**62), (["null", "string"], None),
                                      ({"type": "map", "values": "double"}, {"a": 1.0}), ("boolean", True),
                                      ({"type": "array", "items": "double"}, [1.0, 2.0])])
        f["type"] = new_type
        _set(rec, path, value)
    elif kind == "null_array":
        schema["fields"].append({"name": "fuzz_bomb", "type": {"type": "array", "items": "null"}})
        rec["fuzz_bomb"] = [None] * rng.choice([0, 1, 1000])
    elif kind == "bool_array":
        schema["fields"].append({"name": "fuzz_bomb", "type": {"type": "array", "items": "boolean"}})
        rec["fuzz_bomb"] = [True] * rng.choice([10, 100_000, 1_500_000])
    elif kind == "recursive":
        schema["fields"].append({"name": "fuzz_bomb", "type": ["null", {
            "type": "record", "name": "FuzzNode", "fields": [{"name": "next", "type": ["null", "FuzzNode"]}]}]})
        rec["fuzz_bomb"] = None
    elif kind == "empty_record_array":
        schema["fields"].append({"name": "fuzz_bomb", "type": {"type": "array", "items": {
            "type": "record", "name": "FuzzEmpty", "fields": [{"name": "n", "type": "null"}]}}})
        rec["fuzz_bomb"] = [{"n": None}] * rng.choice([0, 3])
    elif kind == "deep":
        t: Any = "int"
        for _ in range(rng.choice([10, 70, 200])):
            t = {"type": "array", "items": t}
        schema["fields"].append({"name": "fuzz_bomb", "type": t})
        rec["fuzz_bomb"] = []
    elif kind == "fixed0":
        schema["fields"].append({"name": "fuzz_bomb", "type": {"type": "array", "items": {
            "type": "fixed", "name": "FuzzFixed0", "size": 0}}})
        rec["fuzz_bomb"] = []
    else:  # the alert's name on another type than a record
        name = ".".join(filter(None, [schema.get("namespace"), schema["name"]]))
        schema, rec = rng.choice([({"type": "enum", "name": name, "symbols": ["A"]}, "A"),
                                  ({"type": "fixed", "name": name, "size": 3}, b"abc")])
    return schema, [rec], f"schema.{kind}"


BOMB_MARKER = b"FUZZ-BOMB-MARKER-0123456789abcdef"


def bomb_container(schema: dict, rec: dict, codec: str, size: int) -> bytes:
    """A one-record container of ``rec`` in which the bytes value :data:`BOMB_MARKER` is
    replaced by ``size`` zero bytes, compressed by streaming (never held uncompressed)."""
    import bz2
    import lzma
    import zlib

    parsed = fastavro.parse_schema(schema)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, rec)
    plain = buf.getvalue()
    marker = _zigzag(len(BOMB_MARKER)) + BOMB_MARKER
    head, tail = plain.split(marker, 1)
    comp = {"deflate": lambda: zlib.compressobj(9, zlib.DEFLATED, -15), "bzip2": bz2.BZ2Compressor,
            "xz": lzma.LZMACompressor}[codec]()
    parts = [comp.compress(head + _zigzag(size))]
    zeros = b"\0" * (1 << 20)
    for _ in range(size >> 20):
        parts.append(comp.compress(zeros))
    parts.append(comp.compress(b"\0" * (size & ((1 << 20) - 1)) + tail))
    parts.append(comp.flush())
    block = b"".join(parts)
    header = write_avro(schema, [], codec=codec)  # magic, metadata, sync marker
    sync = header[-16:]
    return header + _zigzag(1) + _zigzag(len(block)) + block + sync


_VARINT = re.compile(rb"[\x80-\xff]*[\x00-\x7f]")


def _zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def mutate_framing(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """The first block's record count or size replaced (header kept)."""
    from broker.sources import avro

    try:
        header = avro.read_header(data)
    except DecodeError:
        return data, "framing.none"
    pos = header.data_offset
    m1 = _VARINT.match(data, pos)
    m2 = _VARINT.match(data, m1.end()) if m1 else None
    if not (m1 and m2):
        return data, "framing.none"
    if rng.random() < 0.5:
        value = rng.choice([0, -1, 2, 1000, 2**31, 2**62, -(2**62)])
        return data[:pos] + _zigzag(value) + data[m1.end():], "framing.count"
    value = rng.choice([0, -5, 1, 2**40, len(data)])
    return data[: m1.end()] + _zigzag(value) + data[m2.end():], "framing.size"


class AvroMutator:
    """Mutations of real Avro alerts (ZTF or IGWN), re-encoded with fastavro."""

    def __init__(self, corpus: list[tuple[dict, dict]]) -> None:
        self.corpus = corpus
        self.raw = [write_avro(s, [r]) for s, r in corpus]
        self.paths = [_paths(r) for _, r in corpus]
        self.bombs: dict[str, bytes] = {}

    def bomb(self, rng: random.Random, i: int) -> tuple[bytes, str]:
        """A real record whose cutout/sky map is 70 MB of zeros, compressed (cached per codec)."""
        codec = rng.choice(["deflate", "bzip2", "xz"])
        key = f"{i}.{codec}"
        if key not in self.bombs:
            schema, rec = self.corpus[i]
            rec = copy.deepcopy(rec)
            holder = rec.get("cutoutScience") or rec.get("event")
            if holder is None:
                return self.raw[i], "bomb.none"
            holder["stampData" if "stampData" in holder else "skymap"] = BOMB_MARKER
            self.bombs[key] = bomb_container(schema, rec, codec, 70 << 20)
        return self.bombs[key], f"bomb.{codec}"

    def __call__(self, rng: random.Random) -> tuple[bytes, str]:
        i = rng.randrange(len(self.corpus))
        schema, rec = self.corpus[i]
        r = rng.random()
        if r < 0.25:
            return mutate_bytes(rng, self.raw[i], self.raw)
        if r < 0.30:
            return mutate_framing(rng, self.raw[i])
        if r < 0.31:
            return self.bomb(rng, i)
        if r < 0.41:
            numeric = [p for p in self.paths[i] if isinstance(_get(rec, p), (float, int, str)) and len(p) <= 2]
            try:
                s2, recs, kind = mutate_schema(rng, schema, rec, numeric)
                return write_avro(s2, recs, codec=rng.choice(["null", "null", "deflate"])), kind
            except Exception as exc:  # fastavro refuses to write it: a mutation we cannot build
                return self.raw[i], f"schema.unwritable.{type(exc).__name__}"
        # value substitution, re-encoded with the writer schema (several fields at once sometimes)
        rec = copy.deepcopy(rec)
        n = rng.choice([1, 1, 1, 2, 5])
        kinds = []
        for path in rng.sample(self.paths[i], min(n, len(self.paths[i]))):
            _set(rec, path, _substitute(rng, _get(rec, path)))
            kinds.append(path[-1])
        records = [rec] * rng.choice([1, 1, 1, 2, 3])
        try:
            return write_avro(schema, records, codec=rng.choice(["null", "null", "null", "deflate", "bzip2", "xz"])), \
                "value." + (kinds[0] if len(kinds) == 1 else "multi")
        except Exception as exc:  # e.g. a string with a surrogate: fastavro cannot write it
            return self.raw[i], f"value.unwritable.{type(exc).__name__}"


# --------------------------------------------------------------------------- known cases


def _nested_wherewhen(levels: int = 250, copies: int = 7) -> bytes:
    """Real Swift VOEvent, no Position2D, 250 WhereWhen nested with copies of its content."""
    root = etree.fromstring((DATA / "voevent" / "gwcelery" / "swift_grb_gcn.xml").read_bytes())
    ww = next(root.iter("{*}WhereWhen"))
    for pos in list(ww.iter("{*}Position2D")):
        pos.getparent().remove(pos)
    content, node = list(ww), ww
    for k in range(levels - 1):
        node = etree.SubElement(node, ww.tag)
        if k < levels - 10:  # libxml2's depth cap is 256
            for c in content * copies:
                node.append(copy.deepcopy(c))
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def known_cases() -> list[tuple[str, Callable[[], bytes], Any]]:
    """(name, builder, limits) of the hostile messages found earlier, from real alerts."""
    from broker.limits import DecodeLimits

    swift = (DATA / "voevent" / "gwcelery" / "swift_grb_gcn.xml").read_text()
    body = swift.split("?>", 1)[1]
    laughs = "".join(f'<!ENTITY l{i + 1} "' + f"&l{i};" * 10 + '">' for i in range(9))
    ztf_path = DATA / "ztf" / "kowalski" / "20231012" / "2475433850015010009.avro"
    igwn_path = DATA / "igwn" / "userguide" / "MS181101ab-preliminary.avro"
    ztf_schema, (ztf_rec,) = _avro_records(ztf_path)
    igwn_schema, (igwn_rec,) = _avro_records(DATA / "igwn" / "userguide" / "MS181101ab-retraction.avro")

    def bomb(schema: dict, rec: dict, codec: str) -> bytes:
        rec = copy.deepcopy(rec)
        holder = rec["cutoutScience"] if "cutoutScience" in rec else rec["event"]
        holder["stampData" if "stampData" in holder else "skymap"] = BOMB_MARKER
        return bomb_container(schema, rec, codec, 70 << 20)

    def with_field(schema: dict, rec: dict, field: dict, value: Any) -> tuple[dict, dict]:
        schema, rec = copy.deepcopy(schema), copy.deepcopy(rec)
        schema["fields"].append(field)
        rec[field["name"]] = value
        return schema, rec

    def null_array_2_40() -> bytes:
        schema, rec = with_field(ztf_schema, ztf_rec, {"name": "bomb", "type": {"type": "array", "items": "null"}}, [None])
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), rec)
        block = buf.getvalue()[:-2] + _zigzag(2**40) + b"\0"
        header = write_avro(schema, [])
        return header + _zigzag(1) + _zigzag(len(block)) + block + header[-16:]

    def bool_array() -> bytes:
        schema, rec = with_field(igwn_schema, igwn_rec, {"name": "bomb", "type": {"type": "array", "items": "boolean"}},
                                 [True] * 1_500_000)
        return write_avro(schema, [rec], codec="deflate")

    igwn_prelim_schema, (igwn_prelim,) = _avro_records(igwn_path)
    return [
        ("VOEvent: 250 nested WhereWhen, 0.85 MB", _nested_wherewhen, None),
        ("  same, max_xml_depth=1000 (decoded)", _nested_wherewhen, DecodeLimits(max_xml_depth=1000)),
        ("VOEvent: 120,000 extra elements", lambda: re.sub("(<Description>)", r"\1" + "<x/>" * 120_000, swift,
                                                           count=1).encode(), None),
        ("VOEvent: billion laughs", lambda: (f'<!DOCTYPE voe:VOEvent [<!ENTITY l0 "lol">{laughs}]>'
                                             + body.replace("<Description>", "<Description>&l9;", 1)).encode(), None),
        *[(f"ZTF: {codec} block of 70 MB", (lambda c=codec: bomb(ztf_schema, ztf_rec, c)), None)
          for codec in ("deflate", "bzip2", "xz")],
        ("IGWN: xz block of 70 MB", lambda: bomb(igwn_prelim_schema, igwn_prelim, "xz"), None),
        ("ZTF: array<null> of 2^40 items", null_array_2_40, None),
        ("IGWN: array<boolean> of 1.5M items", bool_array, None),
        ("ZTF: 1001 metadata entries", lambda: _metadata_bomb(ztf_schema, ztf_rec), None),
    ]


def _metadata_bomb(schema: dict, rec: dict) -> bytes:
    out = io.BytesIO()
    fastavro.writer(out, schema, [rec], metadata={f"k{i}": "" for i in range(1001)})
    return out.getvalue()


def time_known_cases(console: Console) -> None:
    """Decode each known hostile case (warm) and print its outcome and time."""
    from broker.sources import decode

    table = Table(title="known hostile cases (real alerts mutated), broker.sources.decode, default limits unless noted")
    for col in ("case", "bytes", "outcome", "CPU ms", "wall ms"):
        table.add_column(col, justify="left" if col in ("case", "outcome") else "right")
    decode((DATA / "voevent" / "gwcelery" / "swift_grb_gcn.xml").read_bytes())  # warm the imports
    decode((DATA / "igwn" / "userguide" / "MS181101ab-retraction.avro").read_bytes())
    for name, build, limits in known_cases():
        data = build()
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            outcome = f"{len(decode(data, limits))} event(s)"
        except DecodeError as exc:
            outcome = "DecodeError: " + str(exc)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        table.add_row(name, f"{len(data):,}", outcome[:170], f"{cpu * 1e3:.1f}", f"{wall * 1e3:.1f}")
    console.print(table)


# --------------------------------------------------------------------------- run

_PREFIX = re.compile(r"^(?:VOEvent \S*?(?: ISOTime| Who/Date)?|ZTF alert '.*?'|ZTF alert|igwn \S*?|igwn):(?=\s)\s*")


def reason_key(message: str) -> str:
    """First word of a DecodeError reason, after the prefix naming the alert."""
    text = message
    for _ in range(2):
        text = _PREFIX.sub("", text, count=1)
    word = text.split(" ", 1)[0] if text else "(empty)"
    return word.rstrip(":,") or "(empty)"


def make_mutator(name: str) -> Callable[[random.Random], tuple[bytes, str]]:
    if name == "voevent":
        corpus = voevent_corpus()
        return lambda rng: mutate_voevent(rng, corpus)
    if name == "ztf":
        return AvroMutator(ztf_corpus())
    if name == "igwn":
        return AvroMutator(igwn_corpus())
    raise ValueError(name)


def worker(name: str, n: int, seed: int, save_dir: str, slow_s: float, queue: Any) -> None:
    """Fuzz one decoder ``n`` times; report progress and final stats on ``queue``."""
    logging.disable(logging.WARNING)  # e.g. "sky map ...: total probability 3e257, not 1" per mutated map
    rng = random.Random(f"{seed}:{name}")
    mutate = make_mutator(name)
    reasons: Counter[str] = Counter()
    others: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    times: list[float] = []
    ok = 0
    max_growth = 0.0
    slowest = ("", 0.0)
    save = Path(save_dir)
    report_every = max(1, n // 200)
    warm, _ = mutate(random.Random(0))  # first decode imports modules lazily: not timed
    try:
        with decode_scope():
            decode_unguarded(warm)
    except Exception:
        pass
    for i in range(n):
        data, kind = mutate(rng)
        kinds[kind.split(".")[0]] += 1
        rss_before, peak_before = _rss_mib(), _peak_rss_mib()
        t0 = time.perf_counter()
        try:
            with decode_scope():
                decode_unguarded(data)
            ok += 1
        except DecodeError as exc:
            reasons[reason_key(str(exc))] += 1
        except BaseException as exc:  # a decoder bug: keep the message to reproduce it
            label = f"{type(exc).__name__}: {' '.join(str(exc).split())[:100]}"
            others[label] += 1
            save.mkdir(parents=True, exist_ok=True)
            (save / f"{name}-{i}-{kind}.bin").write_bytes(data)
            (save / f"{name}-{i}-{kind}.txt").write_text(traceback.format_exc())
        dt = time.perf_counter() - t0
        times.append(dt)
        peak_after = _peak_rss_mib()
        if peak_after > peak_before:  # this decode set a new peak: how far above where it started
            max_growth = max(max_growth, peak_after - rss_before)
        if dt > slow_s:  # keep it to look at: the limits promise a bounded time per message
            save.mkdir(parents=True, exist_ok=True)
            (save / f"slow-{name}-{i}-{kind}-{dt * 1e3:.0f}ms.bin").write_bytes(data)
        if dt > slowest[1]:
            slowest = (kind, dt)
        if (i + 1) % report_every == 0 or i + 1 == n:
            queue.put(("advance", name, i + 1))
    times.sort()
    queue.put(("done", name, {
        "messages": n, "ok": ok, "reasons": dict(reasons), "others": dict(others), "kinds": dict(kinds),
        "max_s": times[-1], "p99_s": times[min(len(times) - 1, int(0.99 * len(times)))],
        "p50_s": times[len(times) // 2], "slowest_kind": slowest[0],
        "peak_rss_mib": _peak_rss_mib(), "max_decode_growth_mib": max_growth,
    }))


_PAGE_MIB = resource.getpagesize() / 1024.0 / 1024.0


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE_MIB


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="messages per decoder (default 10000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=["voevent", "ztf", "igwn"], action="append", help="decoder(s) to fuzz")
    parser.add_argument("--save-dir", default="/tmp/fuzz_xml_avro_failures",
                        help="where messages that raise other exceptions (or are slow) are saved")
    parser.add_argument("--slow-ms", type=float, default=1000.0, help="save messages slower than this too (default 1000)")
    parser.add_argument("--no-known", action="store_true", help="skip timing the known hostile cases")
    args = parser.parse_args()
    names = args.only or ["voevent", "ztf", "igwn"]
    console = Console(width=None if sys.stdout.isatty() else 120)
    if not args.no_known:
        time_known_cases(console)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    results: dict[str, dict] = {}
    columns = (TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=console) as progress:
        tasks = {name: progress.add_task(name, total=args.n, status="") for name in names}
        for name in names:  # one child process per decoder, one at a time: own peak RSS, clean timings
            proc = ctx.Process(target=worker, args=(name, args.n, args.seed, args.save_dir, args.slow_ms / 1e3, queue))
            proc.start()
            while name not in results:
                try:
                    kind, who, payload = queue.get(timeout=5)
                except Exception:
                    if not proc.is_alive():
                        results[name] = {"crashed": proc.exitcode}
                        break
                    continue
                if kind == "advance":
                    progress.update(tasks[who], completed=payload)
                else:
                    results[who] = payload
                    other = sum(payload["others"].values())
                    progress.update(tasks[who], completed=payload["messages"],
                                    status=f"other exceptions {other}, max {payload['max_s'] * 1e3:.0f} ms")
            proc.join()

    failed = False
    table = Table(title=f"fuzz_xml_avro: {args.n:,} mutated real alerts per decoder (seed {args.seed})")
    for col in ("decoder", "messages", "decoded", "DecodeErrors", "other exceptions", "p50 ms", "p99 ms", "max ms",
                "peak RSS MiB", "max decode ΔRSS MiB"):
        table.add_column(col, justify="left" if col == "decoder" else "right")
    for name in names:
        r = results[name]
        if "crashed" in r:
            failed = True
            table.add_row(name, "-", "-", "-", f"CHILD DIED (exit {r['crashed']})", "", "", "", "", "")
            continue
        other = sum(r["others"].values())
        failed |= other > 0
        table.add_row(name, f"{r['messages']:,}", f"{r['ok']:,}", f"{sum(r['reasons'].values()):,}", str(other),
                      f"{r['p50_s'] * 1e3:.2f}", f"{r['p99_s'] * 1e3:.1f}", f"{r['max_s'] * 1e3:.0f}",
                      f"{r['peak_rss_mib']:,.0f}", f"{r['max_decode_growth_mib']:,.0f}")
    console.print(table)
    console.print("peak RSS: the decoder's child process, building the mutations included; max decode ΔRSS: the "
                  "largest rise of the peak above the RSS before one decode (seen when that decode set a new peak)")
    for name in names:
        r = results[name]
        if "crashed" in r:
            continue
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items(), key=lambda kv: -kv[1]))
        console.print(f"[bold]{name}[/] DecodeErrors by first word of reason: {reasons}")
        console.print(f"[bold]{name}[/] mutations: " + ", ".join(f"{k} {v}" for k, v in sorted(r["kinds"].items())))
        console.print(f"[bold]{name}[/] slowest message: {r['slowest_kind']} ({r['max_s'] * 1e3:.0f} ms)")
        for label, count in r["others"].items():
            console.print(f"[red]{name} OTHER EXCEPTION[/] ×{count}: {label}")
    if failed:
        console.print(f"[red]decoder bugs found; messages saved in {args.save_dir}[/]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
