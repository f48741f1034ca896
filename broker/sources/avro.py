"""Avro object-container files: header parsing, schema cache, block iteration.

Every upstream Avro message (a ZTF alert, an IGWN ``gwalert`` in Avro) is a complete
Avro object container file (Apache Avro 1.11 specification, "Object Container Files"):

.. code-block:: text

    'O' 'b' 'j' 0x01                 magic
    map<bytes>                       file metadata ("avro.schema", "avro.codec", ...)
    fixed(16)                        sync marker
    { long count, long size, bytes[size] data, fixed(16) sync }*   data blocks

The header is tiny and parsed here in plain Python. What is not tiny is the writer
schema it carries: every ZTF alert repeats the same ~10 kB schema JSON, and parsing
and compiling it per message is most of what makes a naive ``fastavro.reader`` per
message slow. :func:`read_header` therefore memoizes the parsed and compiled schema
keyed by the exact schema JSON bytes (a bounded :func:`functools.lru_cache`; a pure
function of immutable bytes, so it carries no state a caller can observe). Schemas
returned from the cache are shared: callers must not mutate them.

Hostile input
-------------
The writer schema, the codec and the block framing are all chosen by the sender, so
each is bounded before it can cost memory or time (:mod:`broker.limits`):

* the schema JSON is at most :data:`MAX_SCHEMA_BYTES` and ``max_json_depth`` deep. A
  recursive schema (a named type containing itself) is refused: fastavro's compiled
  reader recurses in C once per level of nesting, and a few bytes per level crash the
  process. So is a schema whose values nest deeper than ``max_json_depth`` through
  named-type references, and one with an array whose items can be encoded in zero
  bytes (``null``, a record of nulls, ``fixed`` of size 0), since a few bytes of such
  an array stand for any number of items (:class:`SchemaShape`);
* blocks are decompressed by bounded decompressors, chunk by chunk, and the sum over
  the blocks of one message may not exceed ``max_decompressed_bytes``;
* the Python values a message decodes to may not exceed ``max_array_items``. They,
  not the bytes, are what a message costs: fastavro builds a dict entry per record
  field, an object per primitive and per array item, and a 1-byte array item that is
  a record of 2,000 nulls is a 2,001-entry dict (40,000 such items took 5.6 s and
  2 GB). The values are counted before fastavro builds any (:class:`ItemBudget`):
  each record is charged :attr:`SchemaShape.values` (its fields, recursively, union
  branches at their largest), and array items and map entries, which take at least
  a known number of bytes each, are bounded by the block's size times the densest
  values-per-byte of the schema (:attr:`SchemaShape.item_rate`); only when that
  bound is over the limit is the block walked, skip only, each array's block count
  times the values per item charged before its items are skipped. A block of more
  than one record is refused when the records can take zero bytes (only nulls).
"""

from __future__ import annotations

import bz2
import io
import json
import lzma
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import fastavro

from broker.errors import DecodeError
from broker.limits import check_cpu, current_limits, over_limit

MAGIC = b"Obj\x01"
SYNC_SIZE = 16

#: Distinct writer schemas kept parsed (ZTF has had a handful of versions; IGWN one).
SCHEMA_CACHE_SIZE = 64

#: Largest ``avro.schema`` accepted, bytes (ZTF's is ~15 kB, IGWN's ~7 kB). Bounds the
#: parse and, through the cache, the memory kept per distinct schema.
MAX_SCHEMA_BYTES = 256 * 1024

#: Output asked of a decompressor per call; the limits and the CPU budget are checked
#: between calls.
DECOMPRESS_CHUNK = 4 * 1024 * 1024

#: Memory the xz decoder may use (its dictionary is sized by the sender's stream
#: header; ``xz -9`` needs 65 MiB).
XZ_MEMLIMIT = 128 * 1024 * 1024

#: Largest zstandard window accepted (zstd's own default cap, 2**27).
ZSTD_MAX_WINDOW = 1 << 27

#: Most entries in a container's metadata map (writers put 2 or 3: avro.schema,
#: avro.codec, sometimes one of their own). 16 MiB of empty entries took 4 s to parse.
MAX_METADATA_ENTRIES = 1000


@dataclass(frozen=True, slots=True)
class AvroHeader:
    """The parsed header of an Avro object container.

    Attributes
    ----------
    schema : dict
        The writer schema as parsed JSON (shared through the cache: do not mutate).
    schema_name : str
        Full name of the top-level named schema, e.g. ``"ztf.alert"``; ``""`` when the
        top-level schema is not a named type.
    schema_json : bytes
        The ``avro.schema`` metadata value exactly as written.
    codec : str
        The ``avro.codec`` metadata value (``"null"`` when absent, as the spec says).
    sync : bytes
        The 16-byte sync marker that ends every data block.
    data_offset : int
        Byte offset of the first data block in the container.
    metadata : dict of str to bytes
        Every metadata entry, including the two above.
    parsed_schema : dict
        The writer schema compiled by :func:`fastavro.parse_schema` (cached alongside
        ``schema``), ready for :func:`fastavro.schemaless_reader`.
    shape : SchemaShape
        What the writer schema bounds about its data (:func:`schema_shape`).
    """

    schema: dict[str, Any]
    schema_name: str
    schema_json: bytes
    codec: str
    sync: bytes
    data_offset: int
    metadata: dict[str, bytes] = field(repr=False)
    parsed_schema: dict[str, Any] = field(repr=False)
    shape: SchemaShape | None = field(default=None, repr=False)


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """Decode one zig-zag varint ``long`` at ``pos``; return (value, next position)."""
    shift = 0
    acc = 0
    while True:
        try:
            b = data[pos]
        except IndexError:
            raise DecodeError(f"truncated Avro container: varint runs past the end at byte {pos}") from None
        pos += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            return (acc >> 1) ^ -(acc & 1), pos
        shift += 7
        if shift > 63:
            raise DecodeError(f"corrupt Avro container: varint longer than 10 bytes at byte {pos}")


def _read_bytes(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    size, pos = _read_long(data, pos)
    end = pos + size
    if size < 0:
        raise DecodeError(f"corrupt Avro container: {what} has negative length {size} at byte {pos}")
    if end > len(data):
        raise DecodeError(f"truncated Avro container: {what} of {size} bytes at byte {pos} runs past the end ({len(data)} bytes)")
    return data[pos:end], end


def _full_name(schema: Any) -> str:
    if not isinstance(schema, dict) or "name" not in schema:
        return ""
    name = schema["name"]
    if not isinstance(name, str):
        return ""
    if "." in name or not schema.get("namespace"):
        return name
    return f"{schema['namespace']}.{name}"


def parse_schema_json(schema_json: bytes) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Parse and compile an Avro writer schema, memoized by its exact JSON bytes.

    Parameters
    ----------
    schema_json : bytes
        The ``avro.schema`` metadata value of a container.

    Returns
    -------
    schema : dict
        The JSON schema as written (shared: do not mutate).
    parsed : dict
        The same schema compiled by :func:`fastavro.parse_schema` (shared).
    name : str
        Full name of the top-level named type (``""`` if it is not a named type).

    Raises
    ------
    DecodeError
        If the bytes are not JSON or not a valid Avro schema, are longer than
        :data:`MAX_SCHEMA_BYTES` or nest deeper than ``max_json_depth``.
    """
    schema, parsed, name, _, _ = _compile_schema(schema_json)
    return schema, parsed, name


@lru_cache(maxsize=SCHEMA_CACHE_SIZE)
def _compile_schema(schema_json: bytes) -> tuple[dict[str, Any], dict[str, Any], str, SchemaShape, int]:
    """(schema, parsed, name, shape, JSON depth) of ``schema_json``, memoized by its bytes.

    Results do not depend on the limits (a limit only makes this raise, and raising is
    not cached); :func:`read_header` compares depth and shape with the current limits.
    """
    if len(schema_json) > MAX_SCHEMA_BYTES:
        raise DecodeError(
            f"Avro header: avro.schema of {len(schema_json):,} bytes is over the limit MAX_SCHEMA_BYTES = {MAX_SCHEMA_BYTES:,}"
        )
    try:
        schema = json.loads(schema_json)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError; integers of > 4300 digits
        raise DecodeError(f"corrupt Avro header: avro.schema is not JSON ({_one_line(exc)})") from None
    except RecursionError:
        raise DecodeError("Avro header: avro.schema nests deeper than the JSON parser allows (max_json_depth)") from None
    depth = _json_depth(schema)
    if depth > current_limits().max_json_depth:
        raise over_limit("max_json_depth", depth, "nesting of the Avro writer schema JSON")
    try:
        parsed = fastavro.parse_schema(schema)
    except Exception as exc:  # fastavro raises SchemaParseException, KeyError, TypeError...
        raise DecodeError(
            f"corrupt Avro header: avro.schema is not a valid Avro schema ({type(exc).__name__}: {_one_line(exc)})"
        ) from None
    return schema, parsed, _full_name(schema), shape_of(parsed), depth


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_depth(obj: Any) -> int:
    """Nesting depth of parsed JSON (objects and arrays), without recursion."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def read_header(data: bytes) -> AvroHeader:
    """Parse the header of an Avro object container (Avro 1.11 spec, "Object Container Files").

    Parameters
    ----------
    data : bytes
        The whole container (one Kafka message value, or one file).

    Returns
    -------
    AvroHeader
        Writer schema (parsed and compiled, cached by its JSON bytes), codec, sync
        marker and the offset of the first data block.

    Raises
    ------
    DecodeError
        If the magic is wrong, the metadata map or sync marker is truncated, the
        schema is missing or invalid, or the schema is refused as hostile (recursive,
        nesting too deep, zero-byte array items: :meth:`SchemaShape.check`).
    """
    if data[:4] != MAGIC:
        raise DecodeError(f"not an Avro container: starts with {data[:4]!r}, expected {MAGIC!r}")
    pos = 4
    metadata: dict[str, bytes] = {}
    entries = 0
    while True:
        count, pos = _read_long(data, pos)
        if count == 0:
            break
        if count < 0:  # a negative count is followed by the block's size in bytes
            count = -count
            _, pos = _read_long(data, pos)
        entries += count
        if entries > MAX_METADATA_ENTRIES:
            raise DecodeError(
                f"corrupt Avro header: {entries:,} metadata entries, over MAX_METADATA_ENTRIES = {MAX_METADATA_ENTRIES:,}"
            )
        for _ in range(count):
            key, pos = _read_bytes(data, pos, "metadata key")
            value, pos = _read_bytes(data, pos, "metadata value")
            try:
                metadata[key.decode("utf-8")] = value
            except UnicodeDecodeError:
                raise DecodeError(f"corrupt Avro header: metadata key {key[:32]!r} is not UTF-8") from None
    sync = data[pos : pos + SYNC_SIZE]
    if len(sync) != SYNC_SIZE:
        raise DecodeError(f"truncated Avro container: header ends before the 16-byte sync marker at byte {pos}")
    schema_json = metadata.get("avro.schema")
    if schema_json is None:
        raise DecodeError("corrupt Avro header: no 'avro.schema' metadata entry")
    schema, parsed, name, shape, json_depth = _compile_schema(schema_json)
    if json_depth > current_limits().max_json_depth:  # cached under a larger limit
        raise over_limit("max_json_depth", json_depth, "nesting of the Avro writer schema JSON")
    shape.check()
    codec = metadata.get("avro.codec", b"null").decode("ascii", "replace") or "null"
    return AvroHeader(
        schema=schema,
        schema_name=name,
        schema_json=schema_json,
        codec=codec,
        sync=sync,
        data_offset=pos + SYNC_SIZE,
        metadata=metadata,
        parsed_schema=parsed,
        shape=shape,
    )


_PRIMITIVE_BYTES = {"null": 0, "boolean": 1, "int": 1, "long": 1, "float": 4, "double": 8, "bytes": 1, "string": 1}


def _denser(a: tuple[int, int] | None, b: tuple[int, int] | None) -> tuple[int, int] | None:
    """Of two (values, bytes) rates, the one with more values per byte (None: no rate)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if a[0] * b[1] >= b[0] * a[1] else b


@dataclass(frozen=True, slots=True)
class SchemaShape:
    """What a writer schema bounds about the data written with it.

    Decoding builds Python values, and they, not the bytes on the wire, are what a
    message costs in memory and CPU: fastavro makes one object per primitive, enum and
    ``fixed``, a dict per record (an entry per field: a record of 2,000 nulls is a
    2,000-entry dict built from zero bytes), a list per array and a dict per map (a
    key string per entry). :attr:`values` counts those of one top-level value, leaving
    out the items of its arrays and maps, which are counted per item
    (:meth:`item_values`) once the block counts saying how many there are are read.

    Attributes
    ----------
    depth : int
        Most levels of records, arrays, maps and unions a value nests (fastavro's
        compiled reader recurses once per level, in C, without a depth check).
    min_record : int
        Fewest bytes one value of the schema can be encoded in.
    values : int
        Most Python values one value of the schema builds, its array items and map
        entries left out (a union counts its largest branch).
    item_rate : tuple of (int, int) or None
        ``(values, bytes)`` of the array item or map entry that builds the most values
        per byte of the wire: the values one item builds (as :attr:`values`; a map
        entry's key included) and the fewest bytes it takes. A block of ``n`` bytes
        holds items building at most ``n * values // bytes`` values. None when the
        schema holds no array or map.
    problem : str or None
        Why the schema is refused whatever the limits: a recursive type, an array
        whose items can take zero bytes, an invalid ``fixed`` size.
    """

    depth: int
    min_record: int
    values: int = 1
    item_rate: tuple[int, int] | None = None
    problem: str | None = None
    #: id(array or map node) -> (node, values per item): filled by the walk, looked up by :meth:`item_values`
    _per_item: dict[int, tuple[Any, int]] = field(default_factory=dict, repr=False, compare=False)

    def check(self) -> None:
        """Raise DecodeError if data of this schema could not be read within limits.

        Raises
        ------
        DecodeError
            Naming the problem, or ``max_json_depth`` when values nest deeper.
        """
        if self.problem is not None:
            raise DecodeError(f"Avro writer schema refused: {self.problem}")
        if self.depth > current_limits().max_json_depth:
            raise over_limit("max_json_depth", self.depth, "nesting of values of the Avro writer schema")

    def item_values(self, node: dict[str, Any], named: dict[str, Any]) -> int:
        """Python values one item of the array (entry of the map) schema ``node`` builds.

        Items of their own arrays and maps left out, a map entry's key included.
        """
        hit = self._per_item.get(id(node))
        if hit is None or hit[0] is not node:  # a node the shape walk did not see
            walker = _ShapeWalker(named)
            walker.walk(node)
            hit = walker.per_item[id(node)]
            self._per_item[id(node)] = hit
        return hit[1]


class _Refused(Exception):
    pass


def _type_label(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, dict):
        return str(schema.get("name") or schema.get("type"))
    return "union"


class _ShapeWalker:
    """Min encoded sizes, values built and nesting of a fastavro-parsed schema
    (memoized per named type)."""

    def __init__(self, named: dict[str, Any]) -> None:
        self.named = named
        self.memo: dict[str, tuple[int, int, int, tuple[int, int] | None]] = {}
        self.active: set[str] = set()
        self.per_item: dict[int, tuple[Any, int]] = {}

    def walk(self, s: Any) -> tuple[int, int, int, tuple[int, int] | None]:
        """(fewest bytes, nesting depth, most values built without array/map items,
        densest (values, bytes) of an array item or map entry inside)."""
        if isinstance(s, str):
            if s in _PRIMITIVE_BYTES:
                return _PRIMITIVE_BYTES[s], 0, 1, None
            if s in self.memo:
                return self.memo[s]
            if s in self.active:
                raise _Refused(f"recursive type {s!r} contains itself")
            target = self.named.get(s)
            if target is None:
                raise _Refused(f"unknown type {s[:80]!r}")
            return self.walk(target)
        if isinstance(s, list):
            if not s:
                raise _Refused("empty union")
            parts = [self.walk(b) for b in s]
            rate = None
            for p in parts:
                rate = _denser(rate, p[3])
            return 1 + min(p[0] for p in parts), 1 + max(p[1] for p in parts), max(p[2] for p in parts), rate
        if not isinstance(s, dict):
            raise _Refused(f"not a type: {str(s)[:80]!r}")
        t = s.get("type")
        name = s.get("name")
        if t in ("record", "error", "enum", "fixed") and isinstance(name, str):
            if name in self.memo:
                return self.memo[name]
            if name in self.active:
                raise _Refused(f"recursive type {name!r} contains itself")
        if t in ("record", "error"):
            self.active.add(name)
            total, depth, values, rate = 0, 0, 1, None  # the dict itself
            for f in s.get("fields") or ():
                m, d, v, r = self.walk(f["type"])
                total, depth, values, rate = total + m, max(depth, d), values + v, _denser(rate, r)
            self.active.discard(name)
            self.memo[name] = (total, depth + 1, values, rate)
            return self.memo[name]
        if t == "enum":
            self.memo[name] = (1, 0, 1, None)
            return self.memo[name]
        if t == "fixed":
            size = s.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise _Refused(f"fixed {name!r} has size {size!r}")
            self.memo[name] = (size, 0, 1, None)
            return self.memo[name]
        if t == "array":
            m, d, v, r = self.walk(s.get("items"))
            if m == 0:
                raise _Refused(
                    f"array items of type {_type_label(s.get('items'))!r} can take zero bytes, "
                    "so a few bytes could stand for any number of items"
                )
            self.per_item[id(s)] = (s, v)
            return 1, d + 1, 1, _denser(r, self._densest(s.get("items"), 0, (v, m)))
        if t == "map":
            m, d, v, r = self.walk(s.get("values"))
            self.per_item[id(s)] = (s, 1 + v)  # the key string and the value
            return 1, d + 1, 1, _denser(r, self._densest(s.get("values"), 1, (1 + v, 1 + m)))
        return self.walk(t)  # {"type": "long", "logicalType": ...} or {"type": "<name>"}


    def _densest(self, item: Any, extra: int, whole: tuple[int, int]) -> tuple[int, int]:
        """(values, bytes) of the densest way to encode one array item (``extra`` 0) or
        map entry (``extra`` 1: its key, one value and at least one byte).

        For a union item each branch is its own rate: a nullable record of 58 fields
        (Spark's ``[record, null]`` items, Fink's ``prv_candidates``) is either a null in
        1 byte or 58 values in at least 59 bytes, never 58 values in 1 byte as pairing
        the union's most values with its fewest bytes (``whole``) would say.
        """
        if not isinstance(item, list):
            return whole
        best: tuple[int, int] | None = None
        for branch in item:
            m, _, v, _ = self.walk(branch)
            best = _denser(best, (v + extra, 1 + m + extra))
        return best or whole


def shape_of(parsed: Any, named: dict[str, Any] | None = None) -> SchemaShape:
    """The :class:`SchemaShape` of a schema compiled by :func:`fastavro.parse_schema`.

    Parameters
    ----------
    parsed : dict, list or str
        The compiled schema (or any part of one).
    named : dict, optional
        Full name → compiled named type, for references not defined inside ``parsed``;
        by default ``parsed["__named_schemas"]`` (set by fastavro on a top level).

    Returns
    -------
    SchemaShape
        With ``problem`` set instead of raising when the schema is refused.
    """
    if named is None:
        named = parsed.get("__named_schemas", {}) if isinstance(parsed, dict) else {}
    walker = _ShapeWalker(named)
    try:
        m, d, v, r = walker.walk(parsed)
    except _Refused as exc:
        return SchemaShape(0, 0, problem=str(exc))
    except RecursionError:
        return SchemaShape(0, 0, problem="types nest too deeply to analyse")
    except (KeyError, TypeError, AttributeError) as exc:
        return SchemaShape(0, 0, problem=f"malformed schema ({type(exc).__name__}: {exc})")
    return SchemaShape(d, m, v, r, _per_item=walker.per_item)


def schema_shape(schema_json: bytes) -> SchemaShape:
    """:func:`shape_of` the writer schema ``schema_json``, memoized like :func:`parse_schema_json`."""
    return _compile_schema(schema_json)[3]


class _Cursor:
    """Skips Avro-encoded values in a block without building them."""

    __slots__ = ("buf", "pos", "end", "where", "work", "next_check")

    CPU_CHECK_EVERY = 4096  # values skipped between CPU-budget checks

    def __init__(self, buf: bytes, where: str) -> None:
        self.buf, self.pos, self.end, self.where = buf, 0, len(buf), where
        self.work, self.next_check = 0, self.CPU_CHECK_EVERY

    def tick(self, n: int) -> None:
        """Count ``n`` values about to be skipped; check the CPU budget now and then."""
        self.work += n
        if self.work >= self.next_check:
            check_cpu(f"counting the items of Avro {self.where}")
            self.next_check = self.work + self.CPU_CHECK_EVERY

    def long(self) -> int:
        buf, pos, shift, acc = self.buf, self.pos, 0, 0
        while True:
            if pos >= self.end:
                raise DecodeError(f"corrupt Avro {self.where}: a value runs past the end of the block")
            b = buf[pos]
            pos += 1
            acc |= (b & 0x7F) << shift
            if not b & 0x80:
                self.pos = pos
                return (acc >> 1) ^ -(acc & 1)
            shift += 7
            if shift > 63:
                raise DecodeError(f"corrupt Avro {self.where}: varint longer than 10 bytes")

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.end:
            raise DecodeError(f"corrupt Avro {self.where}: a value of {n} bytes runs past the end of the block")
        self.pos += n

    def skip_longs(self, n: int) -> None:
        """Skip ``n`` varints, :data:`_VARINT_RUN` at a time in C, the rest one by one."""
        match, buf, end = _VARINT_RUN.match, self.buf, self.end
        while n >= _VARINT_RUN_LEN:
            m = match(buf, self.pos, end)
            if m is None:  # a varint of more than 10 bytes, or the end: let long() say which
                break
            self.pos = m.end()
            n -= _VARINT_RUN_LEN
        for _ in range(n):
            self.long()


#: Varints matched at once by :meth:`_Cursor.skip_longs` (each at most 10 bytes, as
#: :meth:`_Cursor.long` allows).
_VARINT_RUN_LEN = 256
_VARINT_RUN = re.compile(rb"(?:[\x80-\xff]{0,9}[\x00-\x7f]){%d}" % _VARINT_RUN_LEN)

#: Encoded size of the array item types skipped in one step (all items alike).
_FIXED_ITEM_BYTES = {"boolean": 1, "float": 4, "double": 8}


def _items_skip(sub: Any, named: dict[str, Any]) -> int | str | None:
    """How a run of array items of type ``sub`` can be skipped at once: their size in
    bytes if fixed, ``"varint"`` for int, long and enum items, None item by item."""
    if isinstance(sub, str) and sub in named:
        sub = named[sub]
    if isinstance(sub, dict):
        t = sub.get("type")
        if t == "fixed":
            return sub["size"]
        if t == "enum":
            return "varint"
        sub = t if isinstance(t, str) and t in _PRIMITIVE_BYTES else None  # {"type": "long", "logicalType": ...}
    if sub in ("int", "long"):
        return "varint"
    return _FIXED_ITEM_BYTES.get(sub) if isinstance(sub, str) else None


def _many(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def _skip(cur: _Cursor, s: Any, named: dict[str, Any], budget: ItemBudget, shape: SchemaShape) -> None:
    """Skip one value of schema ``s``, charging the values its array items and map
    entries build as each block count is read, before skipping them."""
    if isinstance(s, str):
        if s == "null":
            return
        if s == "boolean":
            cur.skip(1)
        elif s in ("int", "long"):
            cur.long()
        elif s == "float":
            cur.skip(4)
        elif s == "double":
            cur.skip(8)
        elif s in ("bytes", "string"):
            cur.skip(cur.long())
        else:
            _skip(cur, named[s], named, budget, shape)
        return
    if isinstance(s, list):
        index = cur.long()
        if not 0 <= index < len(s):
            raise DecodeError(f"corrupt Avro {cur.where}: union branch {index} of {len(s)}")
        _skip(cur, s[index], named, budget, shape)
        return
    t = s["type"]
    if t in ("record", "error"):
        fields = s["fields"]
        cur.tick(len(fields))
        for f in fields:
            _skip(cur, f["type"], named, budget, shape)
    elif t == "enum":
        cur.long()
    elif t == "fixed":
        cur.skip(s["size"])
    elif t in ("array", "map"):
        sub = s["items"] if t == "array" else s["values"]
        per = shape.item_values(s, named)
        run = _items_skip(sub, named) if t == "array" else None
        while True:
            n = cur.long()
            if n == 0:
                break
            if n < 0:  # a negative count is followed by the block's size in bytes
                n = -n
                cur.long()
            values = n * per
            if budget.used + values > budget.limit:
                what = _many(n, "array item", "array items") if t == "array" else _many(n, "map entry", "map entries")
                budget.charge(values, f"{what} of {_many(per, 'value', 'values')} each")
            budget.used += values
            cur.tick(n)
            if run == "varint":
                cur.skip_longs(n)
                continue
            if run is not None:
                cur.skip(n * run)
                continue
            for _ in range(n):
                if t == "map":
                    cur.skip(cur.long())
                _skip(cur, sub, named, budget, shape)
    else:
        _skip(cur, t, named, budget, shape)


class ItemBudget:
    """Python values one message decodes to, against ``max_array_items``.

    What a message costs is the values fastavro builds from it (:class:`SchemaShape`),
    and a few bytes can stand for millions of them (a 1-byte array item that is a
    record of 2,000 nulls), so they are counted from block counts and the schema
    before fastavro builds anything. Create one per message and :meth:`admit_block`
    every block before decoding it.
    """

    CPU_CHECK_EVERY = 65536

    def __init__(self) -> None:
        self.limit = current_limits().max_array_items
        self.used = 0
        self._next_cpu_check = self.CPU_CHECK_EVERY

    def charge(self, n: int, what: str) -> None:
        """Count ``n`` more values; DecodeError naming ``max_array_items`` when over."""
        self.used += n
        if self.used > self.limit:
            raise over_limit("max_array_items", self.used, f"number of Python values this Avro message decodes to ({what})")
        if self.used >= self._next_cpu_check:
            check_cpu(f"counting Avro {what}")
            self._next_cpu_check = self.used + self.CPU_CHECK_EVERY

    def admit_block(self, block: bytes, count: int, index: int, schema: Any, shape: SchemaShape) -> None:
        """Charge the values a block's ``count`` records of ``schema`` decode to.

        The records are charged ``count * shape.values``. Their array items and map
        entries take at least as many bytes as :attr:`SchemaShape.item_rate` says
        for the values they build, so the block's ``len(block)`` bytes bound those
        values; that bound is charged when it fits, else the block is walked (skip
        only, building nothing) and each array's items charged as its block counts
        are read, before they are skipped.

        Raises
        ------
        DecodeError
            Naming ``max_array_items`` when over; when the block is corrupt; when it
            holds more than one record of a schema whose records can take zero bytes.
        """
        if shape.min_record == 0 and count > 1:
            raise DecodeError(
                f"Avro block {index} refused: {count:,} records of a writer schema whose records can take zero bytes "
                "(only nulls), so a few bytes could stand for any number of records"
            )
        values = count * shape.values
        if self.used + values > self.limit:
            what = f"{_many(count, 'record', 'records')} of block {index}"
            self.charge(values, f"{what}, {_many(shape.values, 'value', 'values')} each")
        self.used += values
        if shape.min_record > 0 and count > len(block) // shape.min_record:
            raise DecodeError(
                f"corrupt Avro block {index}: {count:,} records of at least {shape.min_record} bytes each "
                f"cannot fit in {len(block):,} bytes"
            )
        if shape.item_rate is None:
            return
        values, size = shape.item_rate
        bound = len(block) * values // size
        if self.used + bound <= self.limit:
            self.used += bound
            return
        named = schema.get("__named_schemas", {}) if isinstance(schema, dict) else {}
        cur = _Cursor(block, f"block {index}")
        for _ in range(count):
            _skip(cur, schema, named, self, shape)


class _Output:
    """The decompressed parts of one block, against what the message may still grow by."""

    def __init__(self, codec: str, room: int, index: int, compressed: int) -> None:
        self.codec, self.room, self.index, self.compressed = codec, room, index, compressed
        self.parts: list[bytes] = []
        self.size = 0

    def want(self) -> int:
        """How much to ask the decompressor for next (one byte over the room at most)."""
        return max(1, min(DECOMPRESS_CHUNK, self.room + 1 - self.size))

    def overflow(self) -> None:
        """Raise the DecodeError naming ``max_decompressed_bytes`` and the codec."""
        limit = current_limits().max_decompressed_bytes
        raise DecodeError(
            f"Avro {self.codec} blocks of this message decompress to more than max_decompressed_bytes = {limit:,} "
            f"bytes (stopped in block {self.index}, {self.compressed:,} bytes compressed)"
        )

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.room:
            self.overflow()
        if chunk:
            self.parts.append(chunk)
            check_cpu(f"decompressing Avro {self.codec} block {self.index}")

    def value(self) -> bytes:
        return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)


def _inflate(block: bytes, out: _Output) -> None:
    d = zlib.decompressobj(-15)  # raw RFC 1951, no zlib header
    buf = block
    while not d.eof:
        chunk = d.decompress(buf, out.want())
        out.add(chunk)
        buf = d.unconsumed_tail
        if not chunk and not buf:
            raise DecodeError("corrupt Avro block: deflate decompression failed (stream ends before its end marker)")


def _unstream(make: Callable[[], Any], block: bytes, out: _Output, codec: str, lenient_tail: bool) -> None:
    """Decompress concatenated bz2/xz streams as :func:`bz2.decompress` / :func:`lzma.decompress` do."""
    d, buf, ended = make(), block, False
    while True:
        try:
            chunk = d.decompress(buf, out.want())
        except Exception:
            if lenient_tail and ended:
                return  # lzma.decompress ignores a tail after a stream that is no stream
            raise
        buf = b""
        out.add(chunk)
        if d.eof:
            ended, buf = True, d.unused_data
            if not buf:
                return
            d = make()
        elif d.needs_input:
            raise DecodeError(f"corrupt Avro block: {codec} decompression failed (stream ends before its end marker)")


def _snappy(block: bytes, out: _Output) -> None:
    # the raw snappy format starts with the uncompressed length as an unsigned varint:
    # refuse before decompressing anything when it is over the room left
    size, shift = 0, 0
    for b in block[:5]:
        size |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    else:
        raise DecodeError("corrupt Avro block: snappy decompression failed (bad length preamble)")
    if size > out.room:
        out.overflow()
    try:
        from cramjam import snappy as _snappy

        data = bytes(_snappy.decompress_raw(block[:-4]))
    except ImportError:
        try:
            import snappy as _snappy  # type: ignore[no-redef]
        except ImportError:
            raise DecodeError("Avro codec 'snappy' needs the 'cramjam' or 'python-snappy' package") from None
        data = _snappy.decompress(block[:-4])
    if zlib.crc32(data) != int.from_bytes(block[-4:], "big"):
        raise DecodeError("corrupt Avro block: snappy CRC32 mismatch")
    out.add(data)


def _zstd(block: bytes, out: _Output) -> None:
    # compression.zstd (Python 3.14) or its backport, which fastavro itself uses, has
    # bz2's max_length API; else the 'zstandard' package, read through a stream reader
    # (its one-shot decompress() allocates whatever content size a frame header declares)
    try:
        from compression import zstd as _std  # type: ignore[import-not-found]
    except ImportError:
        try:
            from backports import zstd as _std  # type: ignore[import-not-found,no-redef]
        except ImportError:
            _std = None
    if _std is not None:
        options = {_std.DecompressionParameter.window_log_max: ZSTD_MAX_WINDOW.bit_length() - 1}
        _unstream(lambda: _std.ZstdDecompressor(options=options), block, out, "zstandard", lenient_tail=False)
        return
    try:
        import zstandard
    except ImportError:
        raise DecodeError("Avro codec 'zstandard' needs the 'backports.zstd' or 'zstandard' package") from None
    dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    with dctx.stream_reader(io.BytesIO(block)) as reader:
        while True:
            chunk = reader.read(out.want())
            if not chunk:
                return
            out.add(chunk)


def _decompress(codec: str, block: bytes, room: int, index: int = 0) -> bytes:
    """Decompress one data block per the Avro spec's codecs, to at most ``room`` bytes."""
    if codec == "null":
        if len(block) > room:
            _Output(codec, room, index, len(block)).overflow()
        return block
    out = _Output(codec, room, index, len(block))
    try:
        if codec == "deflate":
            _inflate(block, out)
        elif codec == "bzip2":
            _unstream(bz2.BZ2Decompressor, block, out, codec, lenient_tail=False)
        elif codec == "xz":
            _unstream(lambda: lzma.LZMADecompressor(memlimit=XZ_MEMLIMIT), block, out, codec, lenient_tail=True)
        elif codec == "snappy":  # snappy-compressed data followed by a 4-byte CRC32
            _snappy(block, out)
        elif codec == "zstandard":
            _zstd(block, out)
        else:
            raise DecodeError(f"unsupported Avro codec {codec!r} (known: null, deflate, bzip2, xz, snappy, zstandard)")
    except DecodeError:
        raise
    except Exception as exc:  # zlib.error, OSError, LZMAError, EOFError, ZstdError...
        raise DecodeError(f"corrupt Avro block: {codec} decompression failed ({type(exc).__name__}: {_one_line(exc)})") from None
    return out.value()


def iter_blocks(data: bytes, header: AvroHeader) -> Iterator[tuple[int, bytes]]:
    """Yield the data blocks of a container, decompressed, checking each sync marker.

    Parameters
    ----------
    data : bytes
        The whole container.
    header : AvroHeader
        Its parsed header (:func:`read_header`).

    Yields
    ------
    count : int
        Number of records serialized in the block.
    block : bytes
        The block's records, decompressed, ready for :func:`fastavro.schemaless_reader`.

    Raises
    ------
    DecodeError
        If a block is truncated, its count or size is negative, its sync marker
        differs from the header's, it fails to decompress, or the blocks together
        decompress to more than ``max_decompressed_bytes`` (naming it and the codec).
    """
    pos = header.data_offset
    end = len(data)
    index = 0
    limit = current_limits().max_decompressed_bytes
    total = 0
    while pos < end:
        count, pos = _read_long(data, pos)
        size, pos = _read_long(data, pos)
        if count < 0 or size < 0:
            raise DecodeError(f"corrupt Avro block {index}: negative record count {count} or size {size} at byte {pos}")
        stop = pos + size
        if stop + SYNC_SIZE > end:
            raise DecodeError(
                f"truncated Avro container: block {index} needs {size + SYNC_SIZE} bytes at byte {pos}, only {end - pos} left"
            )
        if data[stop : stop + SYNC_SIZE] != header.sync:
            raise DecodeError(f"corrupt Avro block {index}: sync marker after the block at byte {stop} does not match the header's")
        block = _decompress(header.codec, data[pos:stop], limit - total, index)
        total += len(block)
        yield count, block
        pos = stop + SYNC_SIZE
        index += 1


def read_records(data: bytes, header: AvroHeader) -> list[Any]:
    """Every record of a container, fully decoded with its writer schema, within limits.

    What ``list(fastavro.reader(...))`` returns, but with the container read by
    :func:`iter_blocks` (bounded decompression) and every block admitted to an
    :class:`ItemBudget` first (bounded Python values: records' fields, array items and
    map entries, counted before fastavro builds them).

    Parameters
    ----------
    data : bytes
        The whole container.
    header : AvroHeader
        Its parsed header (:func:`read_header`).

    Returns
    -------
    list of dict
        The records, as fastavro decodes them.

    Raises
    ------
    DecodeError
        If the writer schema's top level is not a record (alerts are records: an enum
        or a string at the top would reach the normalizer as a str), the container is
        truncated or corrupt, or it is over a limit (naming it).
    """
    parsed = header.parsed_schema
    if not (isinstance(parsed, dict) and parsed.get("type") == "record"):
        kind = parsed.get("type") if isinstance(parsed, dict) else ("union" if isinstance(parsed, list) else parsed)
        raise DecodeError(f"Avro writer schema {header.schema_name or '(unnamed)'!r} is {str(kind)[:40]!r}, not a record")
    shape = header.shape or schema_shape(header.schema_json)
    shape.check()
    budget = ItemBudget()
    reader = fastavro.schemaless_reader
    records: list[Any] = []
    for index, (count, block) in enumerate(iter_blocks(data, header)):
        budget.admit_block(block, count, index, parsed, shape)
        fo = io.BytesIO(block)
        for i in range(count):
            try:
                records.append(reader(fo, parsed, None))
            except Exception as exc:  # EOFError, IndexError, UnicodeDecodeError, ValueError, struct.error...
                raise DecodeError(
                    f"corrupt Avro record {i} of block {index} ({type(exc).__name__}: {_one_line(exc)})"
                ) from None
            check_cpu(f"decoding Avro block {index}")  # per record: alerts are few and large
    return records


# ----------------------------------------------------------------------------- Confluent wire format
CONFLUENT_MAGIC = 0
"""First byte of a message in the Confluent wire format (Confluent Schema Registry
documentation, "Wire format": magic byte 0, then the schema id as a 4-byte big-endian
integer, then the Avro binary encoding of one datum, without a container header)."""

CONFLUENT_HEADER_BYTES = 5


@dataclass(frozen=True, slots=True)
class WireHeader:
    """The 5-byte header of a message in the Confluent wire format.

    Attributes
    ----------
    schema_id : int
        The writer schema's id in the producer's schema registry (unsigned 32-bit,
        big-endian on the wire). Rubin registers alert schema ``lsst.vM_m`` under the
        id ``M * 100 + m`` (``lsst.alert.packet.Schema.get_schema_id``: 1101 for v11.1).
    payload_offset : int
        Where the Avro datum starts (always 5).
    """

    schema_id: int
    payload_offset: int = CONFLUENT_HEADER_BYTES

    @property
    def schema_name(self) -> str:
        """What the message says of its schema before it is resolved (for error messages)."""
        return f"Confluent wire format, schema id {self.schema_id}"


def is_wire_format(data: bytes) -> bool:
    """True when ``data`` starts like a Confluent wire-format message (byte 0 then an id).

    A message of at least 6 bytes whose first byte is 0 and whose schema id is below
    2**24 (its first byte 0 too: a registry numbers schemas from 1). No Avro container,
    JSON or XML text starts with a NUL byte, so the test cannot take one of those for it.
    """
    return len(data) > CONFLUENT_HEADER_BYTES and data[0] == CONFLUENT_MAGIC and data[1] == 0


def read_wire_header(data: bytes) -> WireHeader:
    """Parse the header of a Confluent wire-format message.

    Parameters
    ----------
    data : bytes
        The Kafka message value.

    Returns
    -------
    WireHeader

    Raises
    ------
    DecodeError
        If the first byte is not 0 or the message has no datum after the 5 header bytes.
    """
    if not data or data[0] != CONFLUENT_MAGIC:
        raise DecodeError(f"not a Confluent wire-format message: starts with {data[:1]!r}, expected b'\\x00'")
    if len(data) <= CONFLUENT_HEADER_BYTES:
        raise DecodeError(f"truncated Confluent wire-format message: {len(data)} bytes, no Avro datum after the 5-byte header")
    return WireHeader(int.from_bytes(data[1:CONFLUENT_HEADER_BYTES], "big"))


# ----------------------------------------------------------------------------- reading some fields only
@dataclass(frozen=True, slots=True)
class FieldReader:
    """How to decode the wanted top-level fields of one writer schema and skip the others.

    Avro writes a record's fields in schema order, each in full, so a reader must get
    past every field to reach the next. Runs of consecutive unwanted fields (a
    photometric history, cutouts) are skipped through fastavro's schema resolution
    against a reader record with no fields, which builds no Python value and is about
    twice as fast as decoding them; runs of wanted fields are decoded with a sub-schema.
    A trailing run of unwanted fields is skipped only when another record follows.

    Attributes
    ----------
    steps : tuple of (bool, dict, dict or None)
        Per run of fields: whether it is decoded, the parsed writer sub-schema, and the
        parsed empty reader record that skips it (None for decoded runs).
    full : dict
        The parsed full writer schema (for :class:`ItemBudget` and full decodes).
    shape : SchemaShape
        Bounds of the full records.
    fields : tuple of str
        Every top-level field name in writer order.
    """

    steps: tuple[tuple[int, Any, Any], ...]
    full: Any
    shape: SchemaShape
    fields: tuple[str, ...]

    def read(self, fo: io.BytesIO, last: bool = True, buf: Any = None) -> dict[str, Any]:
        """Decode one record from ``fo``: a dict of the wanted fields only.

        Parameters
        ----------
        fo : io.BytesIO
            Positioned at the record's first byte; left after it (after its wanted
            fields only when ``last`` and the record ends with unwanted fields).
        last : bool
            True when no record follows, so a trailing unwanted run need not be skipped.
        buf : numpy.ndarray of uint8, optional
            The bytes of ``fo`` as an array, for the compiled skips (made when None).

        Raises
        ------
        ValueError
            When a compiled skip runs past the end or meets a bad union index (fastavro's
            own exceptions for the decoded runs).
        """
        out: dict[str, Any] = {}
        reader = fastavro.schemaless_reader
        n = len(self.steps)
        for i, (kind, writer, skip) in enumerate(self.steps):
            if kind == _READ:
                out.update(reader(fo, writer, None))
            elif last and i == n - 1:
                break
            elif kind == _SKIP_COMPILED:
                from broker.sources._skip import skip_field

                if buf is None:
                    import numpy as np

                    buf = np.frombuffer(fo.getbuffer(), dtype=np.uint8)
                pos, end = fo.tell(), len(buf)
                for null, is_array, ops in writer:
                    pos = skip_field(buf, pos, end, null, is_array, ops)
                    if pos < 0:
                        raise ValueError("field runs past the end of the data" if pos == -1
                                         else "union branch index is neither of its two branches")
                fo.seek(pos)
            else:
                reader(fo, writer, skip)
        return out


_SKIP, _READ, _SKIP_COMPILED = 0, 1, 2


@lru_cache(maxsize=SCHEMA_CACHE_SIZE)
def field_reader(schema_json: bytes, wanted: frozenset[str]) -> FieldReader:
    """Compile a :class:`FieldReader` for a writer schema (memoized by its JSON bytes).

    Parameters
    ----------
    schema_json : bytes
        The writer schema JSON (``avro.schema`` of a container, or a registry's schema).
    wanted : frozenset of str
        Top-level field names to decode; the others are skipped.

    Returns
    -------
    FieldReader

    Raises
    ------
    DecodeError
        If the schema is invalid or hostile (:func:`read_header`'s checks), or its top
        level is not a record.
    """
    schema, parsed, name, shape, depth = _compile_schema(schema_json)
    if depth > current_limits().max_json_depth:
        raise over_limit("max_json_depth", depth, "nesting of the Avro writer schema JSON")
    shape.check()
    fields = schema.get("fields") if isinstance(schema, dict) else None
    if schema.get("type") != "record" or not isinstance(fields, list) or not all(isinstance(f, dict) for f in fields):
        raise DecodeError(f"Avro writer schema {name or '(unnamed)'!r} is not a record")
    names = tuple(str(f.get("name")) for f in fields)
    runs: list[tuple[bool, list[dict[str, Any]]]] = []
    for f, n in zip(fields, names):
        w = n in wanted
        if runs and runs[-1][0] == w:
            runs[-1][1].append(f)
        else:
            runs.append((w, [f]))
    full_name = name or "record"
    named: dict[str, Any] = {}
    steps: list[tuple[int, Any, Any]] = []
    parsed_types = {f["name"]: f["type"] for f in parsed.get("fields", ())} if isinstance(parsed, dict) else {}
    all_named = parsed.get("__named_schemas", {}) if isinstance(parsed, dict) else {}
    try:
        for i, (w, run) in enumerate(runs):
            part = {"type": "record", "name": f"{full_name}__part{i}", "fields": run}
            if "." not in full_name and isinstance(schema.get("namespace"), str):
                part["namespace"] = schema["namespace"]
            writer = fastavro.parse_schema(part, named_schemas=named)  # always: defines the run's named types
            if w:
                steps.append((_READ, writer, None))
                continue
            progs = _compile_skips([parsed_types.get(f.get("name")) for f in run], all_named)
            if progs is not None:
                steps.append((_SKIP_COMPILED, progs, None))
            else:
                steps.append((_SKIP, writer, fastavro.parse_schema(dict(part, fields=[]), named_schemas={})))
    except Exception as exc:  # an odd but valid layout: decode in full, keep the wanted fields
        steps = [(_READ, parsed, None)]
        import logging

        logging.getLogger(__name__).info("schema %s: no field plan (%s), decoding in full", name, _one_line(exc))
    return FieldReader(tuple(steps), parsed, shape, names)


def _compile_skips(types: list[Any], named: dict[str, Any]) -> tuple[Any, ...] | None:
    """Compiled skips (:mod:`broker.sources._skip`) of a run of fields, or None if one
    does not compile (then fastavro skips the run)."""
    try:
        from broker.sources._skip import compile_field
    except ImportError:  # numpy missing: fastavro skips
        return None
    progs = []
    for t in types:
        prog = compile_field(t, named) if t is not None else None
        if prog is None:
            return None
        progs.append(prog)
    return tuple(progs)


def read_fields(block: bytes, count: int, index: int, plan: FieldReader, budget: ItemBudget | None = None,
                what: str = "Avro") -> Iterator[dict[str, Any]]:
    """Yield the wanted fields of each of ``count`` records serialized in ``block``.

    The block is admitted to ``budget`` (a new :class:`ItemBudget` when None) with the
    full writer schema first: the values of skipped fields count against
    ``max_array_items`` too (fastavro walks a skipped array item by item).

    Raises
    ------
    DecodeError
        ``corrupt <what>: record i of Avro block b does not decode (...)``, or over a limit.
    """
    (budget or ItemBudget()).admit_block(block, count, index, plan.full, plan.shape)
    fo = io.BytesIO(block)
    buf = None
    if any(kind == _SKIP_COMPILED for kind, _, _ in plan.steps):
        import numpy as np

        buf = np.frombuffer(block, dtype=np.uint8)
    for i in range(count):
        if i and not i & 15:
            check_cpu(f"{what} block {index}, record {i}")
        try:
            rec = plan.read(fo, last=i + 1 == count, buf=buf)
        except Exception as exc:  # EOFError, IndexError, UnicodeDecodeError, ValueError, struct.error...
            raise DecodeError(
                f"corrupt {what}: record {i} of Avro block {index} does not decode ({type(exc).__name__}: {_one_line(exc)})"
            ) from None
        yield rec
