"""Skip Avro-encoded fields without building them: a compiled byte walker (numba).

fastavro skips a field a reader does not want by walking it value by value in its
generic resolver; on the real Rubin alerts (345 previous DIASources of ~110 nullable
fields each, 395 forced sources, three cutouts: ~250 kB) that took longer than decoding
them (19 ms against 33 ms for the full decode, load ~6 on 2 cores). Most of what an
alert carries besides its first records is such histories: arrays of flat records of
primitives and nullable primitives, and nullable bytes. For those a field compiles to
a short program of byte-level operations that :func:`skip_field` runs in machine code:

========  =====================================================  ========
op        what it skips                                           argument
========  =====================================================  ========
VARINT    an int, long or enum (zig-zag varint, Avro 1.11 spec)   -
FIXED     ``arg`` bytes (float 4, double 8, boolean 1, fixed n)   n
BYTES     a string or bytes: a varint length, then that many      -
OPT       a union ``[null, X]`` / ``[X, null]``: a varint branch  null branch index; the
          index; the next ``count`` ops are X, run unless null    count of X's ops
========  =====================================================  ========

An OPT whose X is one VARINT, FIXED or BYTES op is fused with it (OPT_VARINT, OPT_FIXED,
OPT_BYTES). A field is ``[OPT] [ARRAY] ops`` (a nullable or plain array of such items, or one such
value). Anything else (nested arrays, maps, unions of two non-null types) does not
compile (:func:`compile_field` returns None) and is left to fastavro. Every read is
bounds-checked: a message that runs past its end, or a union index that is neither of
its two branches, makes :func:`skip_field` return a negative position, which the caller
turns into a DecodeError.
"""

from __future__ import annotations

from typing import Any

import numpy as np

VARINT, FIXED, BYTES, OPT = 0, 1, 2, 3
#: ``[null, X]`` with X one VARINT / FIXED / BYTES, fused into one op (argument: null
#: branch index; count: the FIXED size): a Rubin DIASource is 81 nullable floats and
#: doubles out of 187 ops, so fusing takes a third of the walker's steps away.
OPT_VARINT, OPT_FIXED, OPT_BYTES = 4, 5, 6
_FIXED_SIZES = {"float": 4, "double": 8, "boolean": 1}
_VARINT_TYPES = ("int", "long", "enum")


def _named(t: Any, named: dict[str, Any]) -> Any:
    return named.get(t, t) if isinstance(t, str) else t


def _ops(t: Any, named: dict[str, Any], out: list[tuple[int, int, int]], depth: int = 0) -> bool:
    """Append the ops of one flat value of type ``t``; False if it does not compile."""
    if depth > 16:
        return False
    t = _named(t, named)
    if isinstance(t, list):
        if len(t) != 2 or "null" not in t:
            return False
        null = t.index("null")
        start = len(out)
        out.append((OPT, null, 0))
        if not _ops(t[1 - null], named, out, depth + 1):
            return False
        if len(out) == start + 2 and out[start + 1][0] in (VARINT, FIXED, BYTES):
            op, size, _ = out.pop()
            out[start] = ({VARINT: OPT_VARINT, FIXED: OPT_FIXED, BYTES: OPT_BYTES}[op], null, size)
        else:
            out[start] = (OPT, null, len(out) - start - 1)
        return True
    if isinstance(t, dict):
        typ = t.get("type")
        if typ in ("record", "error"):
            return all(_ops(f["type"], named, out, depth + 1) for f in t.get("fields", ()))
        if typ == "enum":
            out.append((VARINT, 0, 0))
            return True
        if typ == "fixed":
            out.append((FIXED, int(t["size"]), 0))
            return True
        if typ in ("array", "map"):
            return False
        return _ops(typ, named, out, depth + 1)
    if t in _VARINT_TYPES:
        out.append((VARINT, 0, 0))
        return True
    if t in _FIXED_SIZES:
        out.append((FIXED, _FIXED_SIZES[t], 0))
        return True
    if t in ("string", "bytes"):
        out.append((BYTES, 0, 0))
        return True
    if t == "null":
        return True
    return False


def compile_field(t: Any, named: dict[str, Any]) -> tuple[int, int, np.ndarray] | None:
    """Compile a field type to ``(null_index, is_array, ops)``, or None when not supported.

    Parameters
    ----------
    t : Any
        The field's type as fastavro parsed it (named types by full name in ``named``).
    named : dict
        fastavro's ``__named_schemas`` of the parsed writer schema.

    Returns
    -------
    null_index : int
        Branch index of ``null`` when the field is ``[null, X]`` / ``[X, null]``; -1 else.
    is_array : int
        1 when X is an array of flat items, 0 for one flat value.
    ops : ndarray of int64, shape (n, 3)
        The program of one value (or array item): op, argument, count.
    """
    t = _named(t, named)
    null = -1
    if isinstance(t, list):
        if len(t) != 2 or "null" not in t:
            return None
        null = t.index("null")
        t = _named(t[1 - null], named)
    is_array = 0
    if isinstance(t, dict) and t.get("type") == "array":
        is_array, t = 1, t["items"]
    out: list[tuple[int, int, int]] = []
    if not _ops(t, named, out):
        return None
    return null, is_array, np.array(out if out else [(FIXED, 0, 0)], dtype=np.int64).reshape(-1, 3)


def _skip_field_py(buf: np.ndarray, pos: int, end: int, null: int, is_array: int, ops: np.ndarray) -> int:
    """Skip one field at ``pos``; the new position, -1 past the end, -2 a bad union index."""
    if null >= 0:
        if pos >= end:
            return -1
        b = int(buf[pos])
        pos += 1
        if b & 0x80:
            return -2
        if (b >> 1) ^ -(b & 1) == null:
            return pos
        if (b >> 1) ^ -(b & 1) != 1 - null:
            return -2
    n_items = 1
    while True:
        if is_array:
            # block count (zig-zag varint); negative: followed by the block's size in bytes
            shift = 0
            acc = 0
            while True:
                if pos >= end or shift > 63:
                    return -1
                b = int(buf[pos])
                pos += 1
                acc |= (b & 0x7F) << shift
                if not b & 0x80:
                    break
                shift += 7
            n_items = (acc >> 1) ^ -(acc & 1)
            if n_items == 0:
                return pos
            if n_items < 0:
                shift = 0
                acc = 0
                while True:
                    if pos >= end or shift > 63:
                        return -1
                    b = int(buf[pos])
                    pos += 1
                    acc |= (b & 0x7F) << shift
                    if not b & 0x80:
                        break
                    shift += 7
                size = (acc >> 1) ^ -(acc & 1)
                if size < 0 or pos + size > end:
                    return -1
                pos += size
                continue
        for _ in range(n_items):
            k = 0
            nops = ops.shape[0]
            while k < nops:
                op = ops[k, 0]
                if op >= 4:  # OPT_VARINT, OPT_FIXED, OPT_BYTES: a branch index, then X unless null
                    if pos >= end:
                        return -1
                    b = int(buf[pos])
                    pos += 1
                    if b & 0x80:
                        return -2
                    idx = (b >> 1) ^ -(b & 1)
                    if idx == ops[k, 1]:
                        k += 1
                        continue
                    if idx != 1 - ops[k, 1]:
                        return -2
                    if op == 5:
                        pos += ops[k, 2]
                        if pos > end:
                            return -1
                        k += 1
                        continue
                    op = op - 4  # VARINT or BYTES, below
                if op == 3:  # OPT
                    if pos >= end:
                        return -1
                    b = int(buf[pos])
                    pos += 1
                    if b & 0x80:
                        return -2
                    idx = (b >> 1) ^ -(b & 1)
                    if idx == ops[k, 1]:
                        k += ops[k, 2] + 1
                        continue
                    if idx != 1 - ops[k, 1]:
                        return -2
                    k += 1
                    continue
                if op == 0:  # VARINT
                    while True:
                        if pos >= end:
                            return -1
                        b = int(buf[pos])
                        pos += 1
                        if not b & 0x80:
                            break
                elif op == 1:  # FIXED
                    pos += ops[k, 1]
                    if pos > end:
                        return -1
                else:  # BYTES
                    shift = 0
                    acc = 0
                    while True:
                        if pos >= end or shift > 63:
                            return -1
                        b = int(buf[pos])
                        pos += 1
                        acc |= (b & 0x7F) << shift
                        if not b & 0x80:
                            break
                        shift += 7
                    size = (acc >> 1) ^ -(acc & 1)
                    if size < 0 or pos + size > end:
                        return -1
                    pos += size
                k += 1
        if not is_array:
            return pos


try:
    import numba

    skip_field = numba.njit(cache=True, nogil=True)(_skip_field_py)
    COMPILED = True
except Exception:  # numba missing or unusable: the same walker in Python (slower, still correct)
    skip_field = _skip_field_py
    COMPILED = False
