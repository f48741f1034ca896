"""ZTF alert history as columns: a projection decoder for filters.

A ZTF alert packet (schema ``ztf.alert`` 3.x/4.x; https://zwickytransientfacility.github.io/
ztf-avro-alert/schema.html; Masci et al. 2019, PASP 131, 018003) carries, after the
current ``candidate``, the photometric history: ``prv_candidates`` (previous detections
and upper limits of the last 30 days) and, from 4.0 on, ``fp_hists`` (forced
photometry). The Event (:mod:`broker.sources.ztf`) is built without them; filters such
as ``ztf-decent`` need them (number of detections, time span) plus candidate fields
the Event does not carry (``fwhm``, ``elong``, ``magdiff``, ``distpsnr2``...).

Decoding them with fastavro builds a dict per history item and a Python object per
field (≈ 0.7 ms per alert; ``benchmarks/bench_decode.py``), which would cost the
filtered path its speed. :func:`decode_history` instead

* compiles, once per writer schema (memoized by its JSON bytes), a flat *plan* per
  table (the alert's top-level fields, ``candidate``, the items of ``prv_candidates``
  and of ``fp_hists``): one op per leaf field — skip or read a varint, 4 or 8 bytes,
  a length-prefixed string — with nested records flattened (``a.b`` names) and
  ``["null", T]`` unions as a branch that is skipped when null;
* runs the plan over the Avro binary (Apache Avro 1.11 spec, "Binary encoding") in one
  compiled loop (:func:`_scan`, numba ``njit``; the same function runs as plain
  Python when numba is absent or ``NUMBA_DISABLE_JIT=1``), writing per item and field
  one int64: the value of an int/long/boolean/enum, the byte offset of a float/double
  (its bytes are gathered and viewed as ``<f4``/``<f8`` by numpy, per column, when a
  filter first reads it), the offset and length of a string/bytes; plus a null mask.
  No Python object is made per field or per item;
* stops after the last history table of the wanted alert: the cutouts (most of the
  bytes) are never read, except to step over a record in a multi-alert container.

A writer schema the plan cannot express (a union of two non-null types, an array or
map inside a history item, a history table that is not an array of records) is
decoded with fastavro instead (slower, same :class:`ZtfHistory`).

Hostile input
-------------
The container is read by :mod:`broker.sources.avro` (refused hostile schemas, bounded
decompression, sync markers checked). The scan checks every read against the end of
the block; a varint longer than 10 bytes, a negative length, a union branch index out
of range, an array block count larger than the bytes left could hold, are
:class:`~broker.errors.DecodeError` naming the table, the item, the field and the byte
offset. The values a message decodes to (items × fields) are charged to
``max_array_items`` (:mod:`broker.limits`) before arrays are allocated, and the CPU
budget (``max_decode_cpu_s``) is checked between tables.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from broker.errors import DecodeError
from broker.limits import check_cpu, current_limits, over_limit
from broker.sources import avro

log = logging.getLogger(__name__)

__all__ = ["ZtfHistory", "Columns", "decode_history", "HISTORY_TABLES", "jit_enabled"]

try:  # numba is a dependency; without it (or with NUMBA_DISABLE_JIT=1) the scan runs as plain Python
    from numba import njit as _njit

    _JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") in ("", "0")
except ImportError:  # pragma: no cover - numba is installed by deploy/setup.sh
    _JIT = False

    def _njit(*args: Any, **kwargs: Any) -> Any:
        return (lambda f: f) if not args or not callable(args[0]) else args[0]


def jit_enabled() -> bool:
    """True when :func:`_scan` runs compiled by numba (False: the plain-Python scan)."""
    return _JIT


#: Top-level fields decoded into tables: name → "record" (one row) or "array" (rows).
HISTORY_TABLES = {"candidate": "record", "prv_candidates": "array", "fp_hists": "array"}

# ----------------------------------------------------------------------------- the scan
# op codes (ops[k] = (code, column, a, b))
OP_SKIP_BOOL, OP_SKIP_VARINT, OP_SKIP4, OP_SKIP8, OP_SKIP_BYTES, OP_SKIP_FIXED = 1, 2, 3, 4, 5, 6
OP_BOOL, OP_VARINT, OP_F4, OP_F8, OP_BYTES, OP_FIXED = 10, 11, 12, 13, 14, 15
OP_NULLABLE, OP_UNION1 = 20, 21  # a = index of the null branch, b = ops in the other branch
NULLABLE = 50  # added to a primitive's code: the primitive is the non-null branch of a [null, T] union (a = null index)

# scan status codes
OK, E_TRUNCATED, E_VARINT, E_UNION, E_LENGTH, E_COUNT, E_BUDGET, E_BOOL = 0, 1, 2, 3, 4, 5, 6, 7
_STATUS = {
    E_TRUNCATED: "value runs past the end of the block",
    E_VARINT: "varint longer than 10 bytes",
    E_UNION: "union branch index out of range",
    E_LENGTH: "negative string/bytes length",
    E_COUNT: "array block count larger than the bytes left can hold",
    E_BUDGET: "values over max_array_items",
    E_BOOL: "boolean byte neither 0 nor 1",
}

_MASK63 = 0x7FFFFFFFFFFFFFFF


@_njit(cache=True, nogil=True)
def _varint(buf: Any, pos: int, end: int) -> tuple[int, int, int]:  # pragma: no cover - compiled
    """Zig-zag varint at ``pos``: (value, next position, status)."""
    acc = 0
    shift = 0
    for k in range(10):
        if pos >= end:
            return 0, pos, E_TRUNCATED
        byte = int(buf[pos])
        pos += 1
        if k == 9 and byte > 1:
            return 0, pos, E_VARINT
        acc |= (byte & 0x7F) << shift
        if byte < 0x80:
            return ((acc >> 1) & _MASK63) ^ -(acc & 1), pos, OK
        shift += 7
    return 0, pos, E_VARINT


@_njit(cache=True, nogil=True)
def _item(buf: Any, pos: int, end: int, ops: Any, out: Any, nul: Any, row: int) -> tuple[int, int, int]:  # pragma: no cover
    """Run the ops of one item at ``pos`` into column ``row``: (status, next position, failing op).

    An op code ≥ :data:`NULLABLE` is a primitive inside a ``[null, T]`` union (``a`` the
    null branch's index): its branch index is read first (one byte in practice).
    """
    pc = 0
    nops = ops.shape[0]
    while pc < nops:
        code = ops[pc, 0]
        if code >= NULLABLE:
            if pos >= end:
                return E_TRUNCATED, pos, pc
            br = int(buf[pos])
            if br < 0x80:
                pos += 1
                br = (br >> 1) ^ -(br & 1)
            else:
                br, pos, st = _varint(buf, pos, end)
                if st != OK:
                    return st, pos, pc
            if br == ops[pc, 2]:
                pc += 1  # null: the column stays null
                continue
            if br != 1 - ops[pc, 2]:
                return E_UNION, pos, pc
            code -= NULLABLE
        if code == OP_F4 or code == OP_SKIP4:
            if pos + 4 > end:
                return E_TRUNCATED, pos, pc
            if code == OP_F4:
                col = ops[pc, 1]
                out[col, row] = pos
                nul[col, row] = False
            pos += 4
        elif code == OP_VARINT or code == OP_SKIP_VARINT:
            if pos < end and buf[pos] < 0x80:
                b = int(buf[pos])
                v = (b >> 1) ^ -(b & 1)
                pos += 1
            else:
                v, pos, st = _varint(buf, pos, end)
                if st != OK:
                    return st, pos, pc
            if code == OP_VARINT:
                col = ops[pc, 1]
                out[col, row] = v
                nul[col, row] = False
        elif code == OP_F8 or code == OP_SKIP8:
            if pos + 8 > end:
                return E_TRUNCATED, pos, pc
            if code == OP_F8:
                col = ops[pc, 1]
                out[col, row] = pos
                nul[col, row] = False
            pos += 8
        elif code == OP_NULLABLE or code == OP_UNION1:
            br, pos, st = _varint(buf, pos, end)
            if st != OK:
                return st, pos, pc
            if code == OP_UNION1:
                if br != 0:
                    return E_UNION, pos, pc
            elif br == ops[pc, 2]:
                pc += 1 + ops[pc, 3]  # null: skip the other branch, its columns stay null
                continue
            elif br != 1 - ops[pc, 2]:
                return E_UNION, pos, pc
        elif code == OP_BYTES or code == OP_SKIP_BYTES or code == OP_FIXED or code == OP_SKIP_FIXED:
            if code == OP_FIXED or code == OP_SKIP_FIXED:
                n = ops[pc, 2]
            else:
                n, pos, st = _varint(buf, pos, end)
                if st != OK:
                    return st, pos, pc
                if n < 0:
                    return E_LENGTH, pos, pc
            if n > end - pos:
                return E_TRUNCATED, pos, pc
            if code == OP_BYTES or code == OP_FIXED:
                col = ops[pc, 1]
                out[col, row] = pos
                out[col + 1, row] = n
                nul[col, row] = False
                nul[col + 1, row] = False
            pos += n
        elif code == OP_BOOL or code == OP_SKIP_BOOL:
            if pos >= end:
                return E_TRUNCATED, pos, pc
            b = int(buf[pos])
            if b > 1:
                return E_BOOL, pos, pc
            if code == OP_BOOL:
                col = ops[pc, 1]
                out[col, row] = b
                nul[col, row] = False
            pos += 1
        pc += 1
    return OK, pos, -1


@_njit(cache=True, nogil=True)
def _scan(buf: Any, pos: int, end: int, ops: Any, ncols: int, array_mode: int, null_branch: int,
          min_item_bytes: int, values_per_item: int, budget: int) -> Any:  # pragma: no cover - compiled
    """Decode one table (a record, or an optionally nullable array of records) at ``pos``.

    Parameters
    ----------
    buf : ndarray of uint8, shape (n_bytes,)
        The decompressed block.
    pos, end : int
        Start of the table's value, end of the block (byte offsets).
    ops : ndarray of int64, shape (n_ops, 4)
        The item plan (``(code, column, a, b)`` per op).
    ncols : int
        Number of output columns.
    array_mode : int
        1: an Avro array of items (blocks of ``count`` items until a zero count);
        0: one item.
    null_branch : int
        For a ``["null", array]`` union, the index of the null branch; -1: no union.
    min_item_bytes : int
        Fewest bytes one item can take (bounds a block count by the bytes left).
    values_per_item : int
        Values charged per item against ``budget``.
    budget : int
        Values this table may still decode to (``max_array_items`` left).

    Returns
    -------
    status, pos, n_rows, out, nul, failing op, failing row, is_null : tuple
        ``out`` int64 and ``nul`` bool, shape (ncols, capacity ≥ n_rows).
    """
    cap = 1 if array_mode == 0 else 0
    out = np.zeros((ncols, max(cap, 1)), np.int64)
    nul = np.ones((ncols, max(cap, 1)), np.bool_)
    if array_mode == 0:
        st, pos, pc = _item(buf, pos, end, ops, out, nul, 0)
        return st, pos, 1, out, nul, pc, 0, False
    if null_branch >= 0:
        br, pos, st = _varint(buf, pos, end)
        if st != OK:
            return st, pos, 0, out, nul, -1, -1, False
        if br == null_branch:
            return OK, pos, 0, out, nul, -1, -1, True
        if br != 1 - null_branch:
            return E_UNION, pos, 0, out, nul, -1, -1, False
    n = 0
    while True:
        count, pos, st = _varint(buf, pos, end)
        if st != OK:
            return st, pos, n, out, nul, -1, n, False
        if count == 0:
            break
        if count < 0:  # a negative count is followed by the block's size in bytes
            count = -count
            size, pos, st = _varint(buf, pos, end)
            if st != OK:
                return st, pos, n, out, nul, -1, n, False
        if count > (end - pos) // min_item_bytes:
            return E_COUNT, pos, n, out, nul, -1, n, False
        if (n + count) * values_per_item > budget:
            return E_BUDGET, pos, n, out, nul, -1, n, False
        if n + count > out.shape[1] or cap == 0:
            cap = max(n + count, 2 * n)
            grown = np.zeros((ncols, cap), np.int64)
            grown_nul = np.ones((ncols, cap), np.bool_)
            grown[:, :n] = out[:, :n]
            grown_nul[:, :n] = nul[:, :n]
            out, nul = grown, grown_nul
        for k in range(count):
            st, pos, pc = _item(buf, pos, end, ops, out, nul, n)
            if st != OK:
                return st, pos, n, out, nul, pc, n, False
            n += 1
    return OK, pos, n, out, nul, -1, -1, False


# ----------------------------------------------------------------------------- plans
class _Unsupported(Exception):
    """The writer schema has a shape the plan cannot express (fastavro is used)."""


_PRIM = {"boolean": ("b", OP_BOOL), "int": ("i", OP_VARINT), "long": ("i", OP_VARINT), "float": ("f4", OP_F4),
         "double": ("f8", OP_F8), "string": ("s", OP_BYTES), "bytes": ("y", OP_BYTES)}
_SKIP = {OP_BOOL: OP_SKIP_BOOL, OP_VARINT: OP_SKIP_VARINT, OP_F4: OP_SKIP4, OP_F8: OP_SKIP8, OP_BYTES: OP_SKIP_BYTES,
         OP_FIXED: OP_SKIP_FIXED}
_MIN_BYTES = {OP_BOOL: 1, OP_VARINT: 1, OP_F4: 4, OP_F8: 8, OP_BYTES: 1, OP_FIXED: 0, OP_NULLABLE: 1, OP_UNION1: 1}


@dataclass(frozen=True)
class _Table:
    """The compiled plan of one table: ops, columns and what they are."""

    name: str  # "" for the alert's own top-level fields
    mode: int  # 0 record, 1 array
    null_branch: int
    ops: np.ndarray  # (n_ops, 4) int64
    ncols: int
    columns: dict[str, tuple[str, int]]  # field → (kind, column); kind b, i, f4, f8, s, y, x, e
    enums: dict[str, tuple[str, ...]]  # enum field → symbols
    op_fields: tuple[str, ...]  # field each op belongs to (error messages)
    min_item_bytes: int
    spec: _Spec


@dataclass(frozen=True)
class _Plan:
    tables: tuple[_Table, ...] | None  # None: decode with fastavro
    candid_table: int  # index of the top-level table holding ``candid``
    reason: str = ""


class _Compiler:
    def __init__(self, names: dict[str, Any]) -> None:
        self.names = names
        self.ops: list[list[int]] = []
        self.fields: list[str] = []
        self.columns: dict[str, tuple[str, int]] = {}
        self.enums: dict[str, tuple[str, ...]] = {}
        self.ncols = 0
        self.min_bytes = 0

    def _col(self, name: str, kind: str, width: int = 1) -> int:
        col = self.ncols
        self.columns[name] = (kind, col)
        self.ncols += width
        return col

    def _emit(self, code: int, col: int, a: int, b: int, name: str) -> None:
        self.ops.append([code, col, a, b])
        self.fields.append(name)

    def resolve(self, t: Any, ns: str) -> tuple[Any, str]:
        while isinstance(t, str) and t not in _PRIM and t != "null":
            full = t if "." in t else (f"{ns}.{t}" if ns else t)
            if full in self.names:
                t = self.names[full]
            elif t in self.names:
                t = self.names[t]
            else:
                raise _Unsupported(f"unknown type {t!r}")
        if isinstance(t, dict) and isinstance(t.get("type"), str) and (t["type"] in _PRIM or t["type"] == "null"):
            return t["type"], ns  # {"type": "long", "logicalType": ...}
        return t, ns

    def add(self, t: Any, name: str, ns: str, depth: int = 0, read: bool = True) -> int:
        """Emit the ops of one value of type ``t``; return the minimum bytes it takes."""
        if depth > 32:
            raise _Unsupported("nesting deeper than 32")
        t, ns = self.resolve(t, ns)
        if t == "null":
            return 0
        if isinstance(t, str):
            kind, code = _PRIM[t]
            if not read:
                self._emit(_SKIP[code], 0, 0, 0, name)
            elif code == OP_BYTES:
                self._emit(code, self._col(name, kind, 2), 0, 0, name)
            else:
                self._emit(code, self._col(name, kind), 0, 0, name)
            return _MIN_BYTES[code]
        if isinstance(t, list):
            if len(t) == 1:
                self._emit(OP_UNION1, 0, 0, 0, name)
                return 1 + self.add(t[0], name, ns, depth + 1, read)
            branches = [self.resolve(b, ns)[0] for b in t]
            if len(t) != 2 or sum(b == "null" for b in branches) != 1:
                raise _Unsupported(f"field {name!r}: a union other than [null, T]")
            null_idx = branches.index("null")
            at = len(self.ops)
            other = branches[1 - null_idx]
            if isinstance(other, str) and other in _PRIM:  # fuse: one op reads the branch index and the value
                self.add(other, name, ns, depth + 1, read)
                self.ops[at][0] += NULLABLE
                self.ops[at][2] = null_idx
                return 1
            self._emit(OP_NULLABLE, 0, null_idx, 0, name)
            self.add(t[1 - null_idx], name, ns, depth + 1, read)
            self.ops[at][3] = len(self.ops) - at - 1
            return 1
        if not isinstance(t, dict):
            raise _Unsupported(f"field {name!r}: type {t!r}")
        typ = t.get("type")
        tns = t.get("namespace", ns) if typ in ("record", "error", "enum", "fixed") else ns
        if typ in ("record", "error", "enum", "fixed") and isinstance(t.get("name"), str):
            n = t["name"]
            full = n if "." in n else (f"{tns}.{n}" if tns else n)
            self.names.setdefault(full, t)
            if "." in n:
                tns = n.rsplit(".", 1)[0]
        if typ in ("record", "error"):
            total = 0
            for f in t.get("fields", ()):
                if not isinstance(f, dict) or not isinstance(f.get("name"), str):
                    raise _Unsupported(f"record {name!r}: malformed field")
                total += self.add(f["type"], f"{name}.{f['name']}" if name else f["name"], tns, depth + 1, read)
            return total
        if typ == "enum":
            if read:
                self._emit(OP_VARINT, self._col(name, "e"), 0, 0, name)
                self.enums[name] = tuple(t.get("symbols") or ())
            else:
                self._emit(OP_SKIP_VARINT, 0, 0, 0, name)
            return 1
        if typ == "fixed":
            size = t.get("size")
            if not isinstance(size, int) or size < 0:
                raise _Unsupported(f"fixed {name!r}: bad size")
            if read:
                self._emit(OP_FIXED, self._col(name, "x", 2), size, 0, name)
            else:
                self._emit(OP_SKIP_FIXED, 0, size, 0, name)
            return size
        raise _Unsupported(f"field {name!r}: {typ!r} (arrays and maps are only read as history tables)")

    def table(self, name: str, mode: int, null_branch: int) -> _Table:
        ops = np.array(self.ops, dtype=np.int64).reshape(-1, 4)
        return _Table(name, mode, null_branch, ops, max(self.ncols, 1), self.columns, self.enums, tuple(self.fields),
                      max(self.min_bytes, 1), _Spec(self.columns, self.enums))


def _names_of(schema: Any, ns: str, names: dict[str, Any], depth: int = 0) -> None:
    """Register every named type of ``schema`` under its full name."""
    if depth > 64:
        return
    if isinstance(schema, list):
        for s in schema:
            _names_of(s, ns, names, depth + 1)
    elif isinstance(schema, dict):
        typ = schema.get("type")
        if typ in ("record", "error", "enum", "fixed") and isinstance(schema.get("name"), str):
            n = schema["name"]
            ns = schema.get("namespace", ns) if "." not in n else n.rsplit(".", 1)[0]
            names[n if "." in n else (f"{ns}.{n}" if ns else n)] = schema
        for f in schema.get("fields", ()) if isinstance(schema.get("fields"), list) else ():
            if isinstance(f, dict):
                _names_of(f.get("type"), ns, names, depth + 1)
        for key in ("items", "values"):
            if key in schema:
                _names_of(schema[key], ns, names, depth + 1)
        if isinstance(typ, (dict, list)):
            _names_of(typ, ns, names, depth + 1)


@lru_cache(maxsize=avro.SCHEMA_CACHE_SIZE)
def _plan(schema_json: bytes) -> _Plan:
    """Compile the scan plan of one ZTF writer schema (memoized by its JSON bytes)."""
    schema = json.loads(schema_json)
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise DecodeError("ZTF alert schema is not an Avro record")
    ns = schema.get("namespace", "")
    if "." in str(schema.get("name", "")):
        ns = schema["name"].rsplit(".", 1)[0]
    names: dict[str, Any] = {}
    _names_of(schema, ns, names)
    fields = schema.get("fields") or []
    if "candid" not in [f.get("name") for f in fields if isinstance(f, dict)]:
        raise DecodeError("ZTF alert schema has no field 'candid'")
    try:
        tables: list[_Table] = []
        root: _Compiler | None = None
        candid_table = -1
        for f in fields:
            fname, ftype = f["name"], f["type"]
            kind = HISTORY_TABLES.get(fname)
            comp = _Compiler(names)
            t, _ = comp.resolve(ftype, ns)
            null_branch = -1
            if kind == "array" and isinstance(t, list) and len(t) == 2:
                res = [comp.resolve(b, ns)[0] for b in t]
                if "null" in res:
                    null_branch = res.index("null")
                    t, _ = comp.resolve(t[1 - null_branch], ns)
            if kind == "array" and isinstance(t, dict) and t.get("type") == "array":
                comp.min_bytes = comp.add(t["items"], "", ns)
                tables.append(comp.table(fname, 1, null_branch))
                root = None
            elif kind == "record" and isinstance(t, dict) and t.get("type") == "record":
                comp.min_bytes = comp.add(t, "", ns)
                tables.append(comp.table(fname, 0, -1))
                root = None
            else:
                if kind is not None:
                    raise _Unsupported(f"{fname!r} is not a {'record' if kind == 'record' else 'nullable array'}")
                if root is None:
                    root = _Compiler(names)
                    tables.append(None)  # type: ignore[arg-type]  # filled below
                root.add(ftype, fname, ns)
                tables[-1] = root.table("", 0, -1)
                if fname == "candid":
                    candid_table = len(tables) - 1
        if tables[candid_table].columns.get("candid", ("", 0))[0] != "i":
            raise DecodeError("ZTF alert schema: 'candid' is not an int or long")
        return _Plan(tuple(tables), candid_table)
    except _Unsupported as exc:
        log.info("ZTF history: no scan plan for schema %s (%s): decoding with fastavro", schema.get("version"), exc)
        return _Plan(None, -1, str(exc))


# ----------------------------------------------------------------------------- results
class _Spec:
    """The columns of one table and, per kind, their indices (to build rows in bulk)."""

    __slots__ = ("columns", "enums", "names", "f4", "f8", "ints", "others", "other_cols", "other_kinds", "bools", "name_cols", "width",
                 "picks")

    def __init__(self, columns: Mapping[str, tuple[str, int]], enums: Mapping[str, tuple[str, ...]]) -> None:
        self.columns = dict(columns)
        self.enums = dict(enums)
        self.names = tuple(self.columns)
        by: dict[str, list[tuple[str, int]]] = {}
        for name, (kind, col) in self.columns.items():
            by.setdefault(kind, []).append((name, col))
        self.f4 = (tuple(n for n, _ in by.get("f4", ())), np.array([c for _, c in by.get("f4", ())], np.intp))
        self.f8 = (tuple(n for n, _ in by.get("f8", ())), np.array([c for _, c in by.get("f8", ())], np.intp))
        self.ints = tuple(by.get("i", ()))
        self.others = tuple((n, c) for k in ("e", "s", "y", "x") for n, c in by.get(k, ()))
        self.other_cols = np.array([c for _, c in self.others], np.intp)
        self.other_kinds = tuple(self.columns[n][0] for n, _ in self.others)
        self.bools = np.array([c for _, c in by.get("b", ())], np.intp)
        self.name_cols = np.array([c for _, c in self.columns.values()], np.intp)
        self.width = max((c + (2 if k in ("s", "y", "x") else 1) for k, c in self.columns.values()), default=1)
        self.picks: dict[tuple[str, ...], tuple[np.ndarray, tuple[tuple[str | None, int, Any], ...]]] = {}

    def pick_plan(self, names: tuple[str, ...]) -> tuple[np.ndarray, tuple[tuple[str | None, int, Any], ...]]:
        """What :meth:`Columns.pick` reads for ``names``: the columns, and per name (kind, slot, enum symbols).

        Built once per tuple of names (a filter asks for the same few on every alert).
        """
        plan = self.picks.get(names)
        if plan is None:
            cols: list[int] = []
            how: list[tuple[str | None, int, Any]] = []
            for name in names:
                got = self.columns.get(name)
                if got is None:
                    how.append((None, -1, None))
                    continue
                kind, col = got
                how.append((kind, len(cols), self.enums.get(name, ())))
                cols.append(col)
                if kind in ("s", "y", "x"):
                    cols.append(col + 1)
            plan = (np.array(cols, np.intp), tuple(how))
            if len(self.picks) < 64:
                self.picks[names] = plan
        return plan


_F4 = struct.Struct("<f").unpack_from
_F8 = struct.Struct("<d").unpack_from


def _gather(buf: np.ndarray, offs: np.ndarray, size: int) -> np.ndarray:
    """float64 values of the little-endian ``size``-byte floats at byte offsets ``offs`` (any shape)."""
    idx = offs[..., None] + np.arange(size)
    raw = np.take(buf, idx, mode="clip") if buf.size else np.zeros(idx.shape, np.uint8)
    return np.ascontiguousarray(raw).view("<f4" if size == 4 else "<f8")[..., 0].astype(np.float64)


_EMPTY_SPEC = _Spec({}, {})
_NO_BYTES = np.zeros(0, np.uint8)
_NO_VALUES = np.zeros((1, 0), np.int64)
_NO_NULLS = np.ones((1, 0), bool)
for _a in (_NO_BYTES, _NO_VALUES, _NO_NULLS):
    _a.flags.writeable = False  # shared by every empty table


class Columns:
    """One history table as columns (``prv_candidates``, ``fp_hists``, ``candidate``).

    ``cols["jd"]`` is a numpy array with one value per row (item), built on first
    access from the raw bytes (float → float64 with NaN where null; int/long/enum →
    int64 with 0 where null; boolean → bool); ``cols.null("candid")`` is the null
    mask; ``cols.strings("isdiffpos")`` decodes a string column (an object per row,
    only when asked). Field names are the writer schema's (nested records as
    ``a.b``).

    Attributes
    ----------
    n : int
        Number of rows.
    names : tuple of str
        The columns (every field of the writer schema's item record).
    """

    __slots__ = ("n", "_buf", "_out", "_nul", "_spec", "_columns", "_enums", "_cache")

    def __init__(self, n: int, buf: np.ndarray, out: np.ndarray, nul: np.ndarray, spec: _Spec) -> None:
        self.n = n
        self._buf = buf
        self._out = out
        self._nul = nul
        self._spec = spec
        self._columns = spec.columns
        self._enums = spec.enums
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def empty(cls, spec: _Spec | None = None) -> "Columns":
        """A table with no rows (a null or absent history)."""
        if spec is None:  # the common case (half the real alerts have no fp_hists): nothing to build
            return cls(0, _NO_BYTES, _NO_VALUES, _NO_NULLS, _EMPTY_SPEC)
        return cls(0, np.zeros(0, np.uint8), np.zeros((spec.width, 0), np.int64), np.ones((spec.width, 0), bool), spec)

    def __len__(self) -> int:
        return self.n

    def __contains__(self, name: object) -> bool:
        return name in self._columns

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._columns)

    def kind(self, name: str) -> str:
        """``b`` boolean, ``i`` int/long, ``e`` enum index, ``f4``/``f8`` float/double, ``s`` string, ``y`` bytes, ``x`` fixed."""
        return self._columns[name][0]

    def _bytes(self) -> bytes:
        base = self._buf.base
        return base if isinstance(base, bytes) and len(base) == self._buf.size else self._buf.tobytes()

    def null(self, name: str) -> np.ndarray:
        """Bool array, shape (n,): True where the field is null.

        Raises
        ------
        KeyError
            No such field in this writer schema.
        """
        return self._nul[self._columns[name][1], : self.n]

    def __getitem__(self, name: str) -> np.ndarray:
        """The column ``name``, shape (n,) (see the class docstring for dtypes).

        Raises
        ------
        KeyError
            No such field in this writer schema.
        """
        got = self._cache.get(name)
        if got is not None:
            return got
        kind, col = self._columns[name]
        raw = self._out[col, : self.n]
        if kind in ("f4", "f8"):
            null = self._nul[col, : self.n]
            got = _gather(self._buf, np.where(null, 0, raw), 4 if kind == "f4" else 8)
            got[null] = np.nan
        elif kind == "b":
            got = raw.astype(bool)
        elif kind in ("s", "y", "x"):
            got = np.array(self.strings(name), dtype=object)
        else:
            got = raw
        self._cache[name] = got
        return got

    def strings(self, name: str) -> list[Any]:
        """A string (str), bytes or fixed (bytes) column as a list, None where null; an enum column as its symbols.

        Raises
        ------
        DecodeError
            A string that is not UTF-8.
        """
        kind, col = self._columns[name]
        null = self._nul[col, : self.n].tolist()
        if kind == "e":
            syms = self._enums.get(name, ())
            return [None if z else (syms[v] if 0 <= v < len(syms) else None) for v, z in zip(self._out[col, : self.n].tolist(), null)]
        offs = self._out[col, : self.n].tolist()
        lens = self._out[col + 1, : self.n].tolist()
        mem = self._buf
        res: list[Any] = []
        for o, ln, z in zip(offs, lens, null):
            if z:
                res.append(None)
                continue
            b = mem[o : o + ln].tobytes()
            if kind == "s":
                try:
                    res.append(b.decode("utf-8"))
                except UnicodeDecodeError:
                    raise DecodeError(f"ZTF alert history: field {name!r} is not UTF-8") from None
            else:
                res.append(b)
        return res

    def value(self, name: str, i: int = 0) -> Any:
        """The value of ``name`` in row ``i`` as a Python object (None where null).

        Raises
        ------
        KeyError
            No such field.
        DecodeError
            A string that is not UTF-8.
        """
        kind, col = self._columns[name]
        if self._nul[col, i]:
            return None
        v = int(self._out[col, i])
        if kind in ("f4", "f8"):
            return float(self._buf[v : v + (4 if kind == "f4" else 8)].view("<f4" if kind == "f4" else "<f8")[0])
        if kind == "b":
            return bool(v)
        if kind == "e":
            syms = self._enums.get(name, ())
            return syms[v] if 0 <= v < len(syms) else None
        if kind in ("s", "y", "x"):
            b = self._buf[v : v + int(self._out[col + 1, i])].tobytes()
            if kind != "s":
                return b
            try:
                return b.decode("utf-8")
            except UnicodeDecodeError:
                raise DecodeError(f"ZTF alert history: field {name!r} is not UTF-8") from None
        return v

    def pick(self, names: tuple[str, ...], i: int = 0) -> tuple[Any, ...]:
        """The values of ``names`` in row ``i``, each as :meth:`value` gives it; None where null *or absent*.

        For a filter that reads a few fields of the candidate: no dict of every field
        (:attr:`ZtfHistory.candidate` builds one, about 20 µs for ZTF's ~100 fields), no
        numpy call per field — one gather of the offsets, then ``struct`` per value.
        Use ``name in columns`` where absent and null must differ.

        Parameters
        ----------
        names : tuple of str
            Field names (flattened ``a.b`` for nested records); the plan of a tuple is
            kept, so pass the same tuple object on every call.
        i : int
            Row.

        Returns
        -------
        tuple
            One Python value per name (float, int, bool, str, bytes, enum symbol or None).

        Raises
        ------
        IndexError
            ``i`` outside ``[0, n)``.
        DecodeError
            A string that is not UTF-8.
        """
        if not 0 <= i < self.n:
            raise IndexError(f"row {i} of a table of {self.n}")
        cols, how = self._spec.pick_plan(names)
        vals = self._out[cols, i].tolist()
        null = self._nul[cols, i].tolist()
        raw = self._bytes()
        res: list[Any] = []
        for name, (kind, k, syms) in zip(names, how):
            if kind is None or null[k]:
                res.append(None)
            elif kind == "f4":
                res.append(_F4(raw, vals[k])[0])
            elif kind == "f8":
                res.append(_F8(raw, vals[k])[0])
            elif kind == "i":
                res.append(vals[k])
            elif kind == "s":
                try:
                    res.append(raw[vals[k] : vals[k] + vals[k + 1]].decode("utf-8"))
                except UnicodeDecodeError:
                    raise DecodeError(f"ZTF alert history: field {name!r} is not UTF-8") from None
            elif kind == "b":
                res.append(bool(vals[k]))
            elif kind == "e":
                res.append(syms[vals[k]] if 0 <= vals[k] < len(syms) else None)
            else:  # bytes, fixed
                res.append(raw[vals[k] : vals[k] + vals[k + 1]])
        return tuple(res)

    def row(self, i: int = 0) -> dict[str, Any]:
        """Row ``i`` as a dict of Python values (None where null), as fastavro would give it (flattened names).

        Raises
        ------
        IndexError
            ``i`` outside ``[0, n)``.
        DecodeError
            A string that is not UTF-8.
        """
        if not 0 <= i < self.n:
            raise IndexError(f"row {i} of a table of {self.n}")
        sp = self._spec
        nl = self._nul[:, i]
        obj = self._out[:, i].astype(object)  # ints as Python ints
        for (_, cols), size in ((sp.f4, 4), (sp.f8, 8)):
            if cols.size:
                obj[cols] = _gather(self._buf, np.where(nl[cols], 0, self._out[cols, i]), size).tolist()
        if sp.bools.size:
            obj[sp.bools] = self._out[sp.bools, i].astype(bool).tolist()
        obj[nl] = None
        res = dict(zip(sp.names, obj[sp.name_cols].tolist()))
        if sp.others:
            raw = self._bytes()
            offs = self._out[sp.other_cols, i].tolist()
            lens = self._out[sp.other_cols + 1, i].tolist()
            for (name, c), kind, o, ln in zip(sp.others, sp.other_kinds, offs, lens):
                if res[name] is None:
                    continue
                if kind == "s":
                    try:
                        res[name] = raw[o : o + ln].decode("utf-8")
                    except UnicodeDecodeError:
                        raise DecodeError(f"ZTF alert history: field {name!r} is not UTF-8") from None
                elif kind == "e":
                    res[name] = self.value(name, i)
                else:
                    res[name] = raw[o : o + ln]
        return res


class ZtfHistory:
    """One ZTF alert's current candidate and history, decoded by :func:`decode_history`.

    Attributes
    ----------
    candid : int
        The alert's ``candid``.
    object_id : str
        ``objectId`` (e.g. ``ZTF19acihgng``).
    schemavsn : str or None
    candidate : dict
        The current candidate, every field of the writer schema (ZTF names) → Python
        value as fastavro gives it: float (float32 widened exactly), int, str, None
        when null. Built on first access.
    prv_candidates : Columns
        Previous detections and upper limits (``candid`` null for an upper limit),
        rows in the order ZTF wrote them; empty when ``null`` or absent.
    prv_candidates_null : bool
        True when the alert's ``prv_candidates`` is ``null`` (not just empty).
    fp_hists : Columns
        Forced photometry (schema ≥ 4.0); empty when null or absent.
    """

    __slots__ = ("candid", "object_id", "schemavsn", "_candidate", "_cand_cols", "prv_candidates",
                 "prv_candidates_null", "fp_hists", "_det_jd", "_det_span")

    def __init__(self, candid: int, object_id: str, schemavsn: str | None, candidate: Columns, prv_candidates: Columns,
                 fp_hists: Columns, prv_candidates_null: bool = False) -> None:
        self.candid = candid
        self.object_id = object_id
        self.schemavsn = schemavsn
        self._cand_cols = candidate
        self._candidate: dict[str, Any] | None = None
        self.prv_candidates = prv_candidates
        self.prv_candidates_null = prv_candidates_null
        self.fp_hists = fp_hists
        self._det_jd: np.ndarray | None = None
        self._det_span: tuple[int, float] | None = None

    @property
    def candidate(self) -> dict[str, Any]:
        if self._candidate is None:
            self._candidate = self._cand_cols.row(0) if self._cand_cols.n else {}
        return self._candidate

    @property
    def candidate_columns(self) -> Columns:
        """The current candidate as a one-row :class:`Columns`."""
        return self._cand_cols

    def detection_jd(self) -> np.ndarray:
        """``jd`` of every detection: the current candidate first, then the ``prv_candidates`` with a ``candid``.

        What AMPEL's ZiAlertSupplier keeps as photopoints (upper limits have no
        ``candid``). Computed once. Returns float64 array, shape (n_det,), days (JD).
        """
        if self._det_jd is None:
            prv = self.prv_candidates
            cj = self._cand_cols["jd"][:1] if "jd" in self._cand_cols else np.zeros(0)
            if prv.n and "candid" in prv and "jd" in prv:
                self._det_jd = np.concatenate((cj, prv["jd"][~prv.null("candid")]))
            else:
                self._det_jd = cj.copy()
        return self._det_jd

    def detection_span(self) -> tuple[int, float]:
        """(number of detections, last minus first detection ``jd`` in days) of :meth:`detection_jd`; computed once.

        Read with ``struct`` from the column offsets (no numpy call per step: half the
        time of :meth:`detection_jd` for ZTF's tens of rows); the same numbers, NaN
        when a detection's jd is null, as numpy's ``max - min`` gives.
        """
        if self._det_span is None:
            if self._det_jd is not None:
                jd = self._det_jd
                self._det_span = (int(jd.size), float(jd.max() - jd.min()) if jd.size else float("nan"))
            else:
                self._det_span = self._span()
        return self._det_span

    def _span(self) -> tuple[int, float]:
        cand, prv = self._cand_cols, self.prv_candidates
        with_prv = prv.n and "candid" in prv and "jd" in prv
        if (cand.n and "jd" in cand and cand.kind("jd") not in ("f4", "f8")) or (with_prv and prv.kind("jd") not in ("f4", "f8")):
            jd = self.detection_jd()  # a jd that is not a float (no ZTF schema has one): the general path
            return int(jd.size), float(jd.max() - jd.min()) if jd.size else float("nan")
        vals = []
        if cand.n and "jd" in cand:
            (cj,) = cand.pick(("jd",))
            vals.append(float("nan") if cj is None else cj)
        if with_prv:
            kind, col = prv._columns["jd"]
            n = prv.n
            offs = prv._out[col, :n].tolist()
            jd_null = prv._nul[col, :n].tolist()
            det = (~prv._nul[prv._columns["candid"][1], :n]).tolist()
            raw = prv._bytes()
            unpack = _F4 if kind == "f4" else _F8
            for o, z, d in zip(offs, jd_null, det):
                if d:
                    vals.append(float("nan") if z else unpack(raw, o)[0])
        if not vals:
            return 0, float("nan")
        if any(v != v for v in vals):
            return len(vals), float("nan")
        return len(vals), max(vals) - min(vals)

    def __repr__(self) -> str:
        return (f"ZtfHistory(candid={self.candid}, object_id={self.object_id!r}, "
                f"prv_candidates={self.prv_candidates.n}, fp_hists={self.fp_hists.n})")


# ----------------------------------------------------------------------------- decoding
def _fail(table: _Table, st: int, pos: int, pc: int, row: int, block: int, record: int) -> DecodeError:
    where = table.name or "alert"
    if table.mode == 1 and row >= 0 and pc >= 0:
        where += f"[{row}]"  # an item's field; a block-level error (count, varint of a count) names the table
    if pc >= 0:
        where += f".{table.op_fields[pc]}" if table.op_fields[pc] else ""
    if st == E_BUDGET:
        return over_limit("max_array_items", 0, f"ZTF alert history: {where} (block {block}, record {record})")
    return DecodeError(f"corrupt ZTF alert history: {where}: {_STATUS.get(st, st)} at byte {pos} of block {block} "
                       f"(record {record})")


def _records(data: bytes, header: avro.AvroHeader, plan: _Plan) -> Iterator[tuple[list[Any], np.ndarray]]:
    """Scan every record: yield per record the list of table results and the block buffer."""
    budget_total = current_limits().max_array_items
    for b, (count, block) in enumerate(avro.iter_blocks(data, header)):
        buf = np.frombuffer(block, np.uint8)
        end = len(block)
        pos = 0
        for r in range(count):
            budget = budget_total
            results: list[Any] = []
            for table in plan.tables or ():
                vpi = table.ncols + 1
                st, pos, n, out, nul, pc, row, is_null = _scan(buf, pos, end, table.ops, table.ncols, table.mode,
                                                               table.null_branch, table.min_item_bytes, vpi, budget)
                if st != OK:
                    raise _fail(table, st, pos, pc, row, b, r)
                budget -= n * vpi
                results.append((n, out, nul, is_null))
            check_cpu(f"ZTF alert history, block {b}, record {r}")
            yield results, buf
        if pos != end:
            raise DecodeError(f"corrupt ZTF alert history: {end - pos} bytes left after the last record of block {b}")


def _root_value(plan: _Plan, results: list[Any], buf: np.ndarray, name: str) -> Any:
    for table, (n, out, nul, _) in zip(plan.tables or (), results):
        if table.name == "" and name in table.columns:
            kind, col = table.columns[name]
            if nul[col, 0]:
                return None
            if kind == "i":
                return int(out[col, 0])
            if kind == "s":  # objectId, schemavsn: straight from the bytes
                start = int(out[col, 0])
                try:
                    return buf[start : start + int(out[col + 1, 0])].tobytes().decode("utf-8")
                except UnicodeDecodeError:
                    raise DecodeError(f"ZTF alert history: field {name!r} is not UTF-8") from None
            return Columns(n, buf, out, nul, table.spec).value(name, 0)
    return None


def _build(plan: _Plan, results: list[Any], buf: np.ndarray) -> ZtfHistory:
    tables: dict[str, Columns] = {}
    prv_null = False
    for table, (n, out, nul, is_null) in zip(plan.tables or (), results):
        if table.name:
            tables[table.name] = Columns(n, buf, out, nul, table.spec)
            if table.name == "prv_candidates":
                prv_null = is_null
    candid = _root_value(plan, results, buf, "candid")
    oid = _root_value(plan, results, buf, "objectId")
    vsn = _root_value(plan, results, buf, "schemavsn")
    return ZtfHistory(candid, oid if isinstance(oid, str) else "", vsn if isinstance(vsn, str) else None,
                      tables.get("candidate") or Columns.empty(), tables.get("prv_candidates") or Columns.empty(),
                      tables.get("fp_hists") or Columns.empty(), prv_null)


def _from_dict(rec: Mapping[str, Any]) -> ZtfHistory:
    """Build a ZtfHistory from a fastavro-decoded record (schemas the plan cannot express)."""

    def flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        res: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, Mapping):
                res.update(flat(v, f"{prefix}{k}."))
            else:
                res[f"{prefix}{k}"] = v
        return res

    def table(rows: list[Mapping[str, Any]]) -> Columns:
        rows = [flat(r) for r in rows]
        names = list(dict.fromkeys(k for r in rows for k in r))
        columns: dict[str, tuple[str, int]] = {}
        data: list[bytes] = []
        ncol = 0
        for name in names:
            vals = [r.get(name) for r in rows]
            sample = next((v for v in vals if v is not None), None)
            kind = ("b" if isinstance(sample, bool) else "i" if isinstance(sample, int) else "f8"
                    if isinstance(sample, float) else "s" if isinstance(sample, str) else "y")
            columns[name] = (kind, ncol)
            ncol += 2 if kind in ("s", "y") else 1
        out = np.zeros((max(ncol, 1), len(rows)), np.int64)
        nul = np.ones((max(ncol, 1), len(rows)), bool)
        pos = 0
        for name in names:
            kind, col = columns[name]
            for i, r in enumerate(rows):
                v = r.get(name)
                if v is None or (kind in ("i", "b") and not isinstance(v, int)):
                    continue
                if kind == "f8":
                    if not isinstance(v, (int, float)):
                        continue
                    out[col, i] = pos
                    data.append(np.float64(v).tobytes())
                    pos += 8
                elif kind in ("s", "y"):
                    b = v.encode() if isinstance(v, str) else bytes(v) if isinstance(v, (bytes, bytearray)) else None
                    if b is None:
                        continue
                    out[col, i], out[col + 1, i] = pos, len(b)
                    nul[col + 1, i] = False
                    data.append(b)
                    pos += len(b)
                else:
                    out[col, i] = int(v)
                nul[col, i] = False
        buf = np.frombuffer(b"".join(data), np.uint8)
        return Columns(len(rows), buf, out, nul, _Spec(columns, {}))

    prv = rec.get("prv_candidates")
    return ZtfHistory(rec["candid"], rec.get("objectId") or "", rec.get("schemavsn"), table([rec["candidate"]]),
                      table(list(prv or [])), table(list(rec.get("fp_hists") or [])), prv is None)


_HEADERS: tuple[tuple[bytes, Any, avro.AvroHeader], ...] = ()
"""Recent container headers: (bytes before the sync marker, limits checked under, header); newest first."""


def _read_header(raw: bytes, limits: Any) -> avro.AvroHeader:
    """:func:`broker.sources.avro.read_header`, without parsing again a header just seen.

    Every ZTF message carries its writer schema: the bytes before its sync marker
    (magic and metadata map, ~10 kB) are the same in every message of a schema and
    codec, and the header is a function of them alone. A message that starts with the
    bytes of a header parsed (and checked under the same limits) before gets that
    header with its own sync marker — the same result as parsing, without a second
    parse of the ~8 µs the source decoder already spent on the message.
    """
    global _HEADERS
    for prefix, checked_under, header in _HEADERS:
        if checked_under is limits and raw.startswith(prefix):
            end = len(prefix)
            sync = raw[end : end + avro.SYNC_SIZE]
            if len(sync) == avro.SYNC_SIZE:
                return dataclasses.replace(header, sync=sync)
            break
    header = avro.read_header(raw)
    prefix = raw[: header.data_offset - avro.SYNC_SIZE]
    _HEADERS = ((prefix, limits, header),) + tuple(h for h in _HEADERS[:3] if h[0] != prefix)  # one store: thread-safe
    return header


def decode_history(raw: bytes, event: Any = None, *, candid: int | None = None) -> ZtfHistory:
    """Decode one ZTF alert's candidate, ``prv_candidates`` and ``fp_hists`` into columns.

    Parameters
    ----------
    raw : bytes
        The alert's Avro object container exactly as ZTF sent it (one alert per Kafka
        message), or a container of several alerts (archives).
    event : broker.event.Event, optional
        The alert's Event; its ``properties["candid"]`` picks the alert in a
        multi-alert container. Without it (and without ``candid``), the first alert.
    candid : int, optional
        Which alert, overriding ``event``.

    Returns
    -------
    ZtfHistory
        Columns of every field of the writer schema's candidate (one row),
        ``prv_candidates`` and ``fp_hists`` items; values equal to fastavro's full
        decode (floats widened exactly from float32).

    Raises
    ------
    DecodeError
        Not an Avro container, not a ZTF schema, corrupt or truncated data (naming the
        table, item, field and byte offset), over a limit (``max_message_bytes``,
        ``max_decompressed_bytes``, ``max_array_items``, ``max_decode_cpu_s``), or no
        alert with the wanted ``candid``.
    """
    limits = current_limits()
    if len(raw) > limits.max_message_bytes:
        raise over_limit("max_message_bytes", len(raw), "ZTF alert message")
    header = _read_header(raw, limits)
    if header.schema_name != "ztf.alert":
        from broker.sources.ztf import relayed_layout  # noqa: PLC0415 - a ZTF alert relayed by Fink or another broker

        if relayed_layout(header.schema_json) is None:
            raise DecodeError(f"not a ZTF alert: writer schema {header.schema_name or 'unnamed'!r}")
    want = candid
    if want is None and event is not None:
        want = (getattr(event, "properties", None) or {}).get("candid")
    plan = _plan(header.schema_json)
    if plan.tables is None:
        from broker.sources import ztf  # noqa: PLC0415 - the fastavro path, for odd schemas only

        for rec, _ in ztf._records(raw, header, full=True):
            if want is None or rec["candid"] == want:
                return _from_dict(rec)
    else:
        for results, buf in _records(raw, header, plan):
            if want is None or _root_value(plan, results, buf, "candid") == want:
                return _build(plan, results, buf)
    raise DecodeError(f"no ZTF alert with candid {want} in this container" if want is not None
                      else "Avro container holds no alert")


def _warm_up() -> None:
    """Compile (or load from numba's cache) the scan for the argument types decode_history passes.

    Runs at import, so the first alert's filter call is not charged the compilation
    (seconds the first time, ≈ 0.5 s from the cache) against its time budget.
    """
    _scan(np.frombuffer(b"\x00\x00", np.uint8), 0, 2, np.zeros((1, 4), np.int64), 1, 1, -1, 1, 2, 10)


_warm_up()
