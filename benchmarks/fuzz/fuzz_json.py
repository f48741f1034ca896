"""Fuzz the JSON decoders with hostile mutations of the real alerts in ``tests/data``.

Two decoders, each fed ``--n`` messages (10,000 by default) through
``broker.sources.decode_unguarded`` inside ``broker.limits.decode_scope`` (the default
limits and CPU budget), so that every exception that is not a ``DecodeError`` shows up
as a decoder bug instead of being turned into one by ``decode``:

* **gcn-json**: every GCN unified-schema notice under ``tests/data/gcn`` that decodes
  as it is (gcn-schema examples, the Classic-notice JSON of gcn-schema PR #161,
  gwcelery's recorded Kafka notices), plus the Swift Guano ``loc_map`` example with its
  placeholder ``healpix_file`` replaced by the real Fermi GBM sky map
  ``gcn/skymaps/fermi_gbm_skymap.fits.gz`` (base64), so that GCN sky maps are fuzzed too;
* **igwn-json**: the seven ``igwn.gwalert`` JSON alerts (LVK user guide samples and
  fink-mm's), five of them with a base64 multi-order sky map (the ext-update with two).

Each message is one real alert with one to three mutations (:func:`mutate`): a value
anywhere in the alert replaced by a hostile one (NaN, ±Infinity, 1e400, 400- and
5,000-digit integers, lone surrogates, NUL, out-of-range coordinates and times, years 1
and 9999 with offsets and 7-digit fractions, wrong types, 10k-deep nesting, long
strings), a key deleted, the bytes flipped / truncated / spliced, or the embedded FITS
sky map mutated (header cards set to hostile values, bytes flipped in header or data,
truncated, gzip-wrapped with trailing zeros or garbage, table values set to NaN / -1 /
2**62) and re-encoded. Mutations are drawn from a ``random.Random``; the test
``tests/unit/test_hostile_json.py`` drives the same :func:`mutate` from hypothesis.

Prints per decoder: messages, decoded, DecodeErrors by the first word of their reason
(with one example each), other exceptions (must be 0; each printed with the mutation
that caused it), max and p99 decode time, and the process's peak RSS so far.

Run: ``python benchmarks/fuzz/fuzz_json.py [--n 10000] [--seed 1] [--decoder gcn-json]``.
Exit status 1 if any exception other than DecodeError escaped.
"""

from __future__ import annotations

import argparse
import base64
import copy
import gzip
import json
import random
import resource
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

GBM_SKYMAP = DATA / "gcn" / "skymaps" / "fermi_gbm_skymap.fits.gz"
GUANO_LOC_MAP = DATA / "gcn" / "gcn-schema" / "gcn" / "notices" / "swift" / "bat" / "guano.loc_map.example.json"
IGWN_FILES = [
    *(DATA / "igwn" / "userguide" / f"MS181101ab-{t}.json"
      for t in ("earlywarning", "preliminary", "initial", "update", "ext-update", "retraction")),
    DATA / "igwn" / "fink-mm" / "MS230518e-initial.json",
]
SKYMAP_KEYS = ("skymap", "combined_skymap", "healpix_file")
_MARK = "@@hostile-7f3a9c@@"

#: Raw JSON texts substituted for a value (not all of them can come out of json.dumps).
HOSTILE_TOKENS: tuple[str, ...] = (
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "-0.0", "0", "-1", "1" * 400, "-" + "9" * 400,
    "9" * 5000, "4300" + "0" * 4296, "1.5", "360", "360.0", "-0.000001", "200", "-1000", "1000", "90.0000001",
    "true", "false", "null", "[]", "{}", '""', '" "', '"\\ud800"', '"\\udfff\\ud800"', '"a\\u0000b"', '"\\ud83d\\ude00"',
    '"²"', '"١٢٣"', '"0001-01-01T00:00:00+01:00"', '"9999-12-31T23:59:59.9999999Z"', '"9999-12-31T23:59:59-01:00"',
    '"0001-01-01T00:00:00.0000001-23:59"', '"1899-12-31T23:59:59Z"', '"2200-01-01T00:00:00Z"', '"2024-13-45T25:61:61Z"',
    '"2024-02-30T00:00:00Z"', '"2024-01-01T00:00:00+99:99"', '"2024-01-01"', '"not a time"',
    '"' + "A" * 100_000 + '"', '"' + "9" * 5000 + '"', "[" * 64 + "]" * 64, "[" * 65 + "]" * 65,
    "[" * 10_000 + "]" * 10_000, '{"a":' * 200 + "1" + "}" * 200, "[[1, 2], [3]]", '[["a", 1]]', "[NaN, Infinity]",
    '{"x": NaN}', '{"BNS": Infinity}', "[" + ",".join(["0"] * 5000) + "]", '"SIMPLE  =                    T"',
    '"H4sIAAAAAAAAAAMAAAAAAAAAAAA="', '"@@@"', '"' + base64.b64encode(b"\x1f\x8b" + b"\0" * 30).decode() + '"',
)
#: FITS header keywords set to hostile values by the sky-map mutations.
FITS_KEYWORDS = ("NAXIS1", "NAXIS2", "NAXIS", "BITPIX", "PCOUNT", "GCOUNT", "TFIELDS", "TFORM1", "TFORM2",
                 "TTYPE1", "TTYPE2", "ORDERING", "NSIDE", "COORDSYS", "INDXSCHM", "PIXTYPE", "XTENSION",
                 "DISTMEAN", "ZIMAGE", "END", "TDIM1", "TDIM2", "THEAP", "TSCAL1", "TZERO1", "TNULL1", "PIXEL")
FITS_VALUES = ("-1", "0", "1", "3", "2147483647", "99999999999999999999", "1e400", "NaN", "'QQQ'", "'1024E'",
               "'PK()'", "'NESTED'", "'RING'", "'NUNIQ'", "'G'", "'UNIQ'", "'PROB'", "'x'", "T", "F", "", "'IMAGE'",
               "'BINTABLE'", "16384", "536870912", "1073741824", "'99999999K'", "'2147483647D'", "'1QD(99999999)'",
               "'(100000,100000)'", "'(5,8)'", "'(2)'", "1E300", "-32768", "'A'", "'8A'", "'X'", "'1PJ(2)'")
#: Cards overwritten (in this order of preference) to add a keyword the map does not have.
SPARE_CARDS = ("VCSVERS", "ORIGIN", "CREATOR", "MJD-OBS", "DATE-OBS", "INSTRUME", "REFERENC", "OBJECT", "DATE",
               "RUNTIME", "HISTORY", "COMMENT")


# ---------------------------------------------------------------- the real alerts
@dataclass(frozen=True)
class Base:
    """One real alert to mutate: its name, parsed JSON and original bytes."""

    name: str
    obj: dict
    raw: bytes


def _decodes(raw: bytes) -> bool:
    from broker.errors import DecodeError
    from broker.sources import decode

    try:
        decode(raw)
        return True
    except DecodeError:
        return False


@lru_cache(maxsize=None)
def bases(decoder: str) -> tuple[Base, ...]:
    """The real alerts of ``decoder`` (``"gcn-json"`` or ``"igwn-json"``) that decode as they are."""
    from broker.sources import gcn, igwn

    out = []
    if decoder == "igwn-json":
        for path in IGWN_FILES:
            raw = path.read_bytes()
            out.append(Base(str(path.relative_to(DATA)), json.loads(raw), raw))
    elif decoder == "gcn-json":
        for path in sorted((DATA / "gcn").rglob("*.json")):
            if path.name.endswith(".schema.json"):
                continue
            raw = path.read_bytes()
            obj = json.loads(raw)
            if not isinstance(obj, dict) or igwn.is_igwn_alert(obj) or not gcn.is_gcn_notice(obj) or not _decodes(raw):
                continue
            out.append(Base(str(path.relative_to(DATA)), obj, raw))
        obj = json.loads(GUANO_LOC_MAP.read_bytes())
        obj["healpix_file"] = base64.b64encode(GBM_SKYMAP.read_bytes()).decode()
        raw = json.dumps(obj, indent=2).encode()
        assert _decodes(raw), "Guano loc_map with the GBM sky map must decode"
        out.append(Base("gcn/.../guano.loc_map.example.json + gcn/skymaps/fermi_gbm_skymap.fits.gz", obj, raw))
    else:
        raise ValueError(f"unknown decoder {decoder!r}")
    if not out:
        raise RuntimeError(f"no real {decoder} alert found under {DATA}")
    return tuple(out)


# ---------------------------------------------------------------- JSON mutations
def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) to a value in ``obj``, the root excluded."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(prefix + (k,))
            out.extend(_paths(v, prefix + (k,)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:50]):
            out.append(prefix + (i,))
            out.extend(_paths(v, prefix + (i,)))
    return out


def _parent(obj: Any, path: tuple) -> Any:
    for p in path[:-1]:
        obj = obj[p]
    return obj


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON-ish value of any type (floats include NaN and ±inf)."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice([float("nan"), float("inf"), float("-inf"), -0.0, 1e308, -1e-308, 5e-324])
    if kind == 1:
        return rng.uniform(-1e4, 1e4)
    if kind == 2:
        return rng.choice([0, 1, -1, 2**31, 2**63, -(2**64), 10**rng.randrange(1, 400)])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        n = rng.choice([0, 1, 5, 40, 2000])
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0xA0, 0xD7FF),
                                       rng.randrange(0xD800, 0xE000), rng.randrange(0x10000, 0x10FFFF), 0]))
                       for _ in range(n))
    if kind == 5:
        return rng.choice(["", "2024-01-01T00:00:00Z", "S230518h", "initial", "retraction", "H1", "C", "GRB"])
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 2, 3, 10]))]
    if kind == 7:
        return {rng.choice(["a", "BNS", "ra", "\ud800", "", "0"]): _random_value(rng, depth + 1)
                for _ in range(rng.choice([0, 1, 3]))}
    return rng.choice([[1, 2, 3], [["a", 1]], {"x": [1]}, [float("nan")], [200.0, 200.0]])


def _dumps(obj: Any, ascii_only: bool) -> str:
    """JSON text; ``ascii_only`` writes non-ASCII (lone surrogates too) as ``\\uXXXX`` escapes.

    ``allow_nan``: Python's json writes and reads NaN/Infinity, as upstream producers may.
    """
    return json.dumps(obj, ensure_ascii=ascii_only, allow_nan=True)


def _json_mutation(rng: random.Random, obj: dict, notes: list[str], ascii_only: bool) -> dict | str:
    """Mutate the parsed alert in place; a str return is raw JSON text (tokens spliced in)."""
    paths = _paths(obj)
    # skymap strings are mutated at the FITS level; here they are only replaced whole
    op = rng.choices(["token", "value", "delete", "wrap", "swap"], weights=[6, 4, 1, 1, 1])[0]
    path = rng.choice(paths) if paths else None
    if path is None:
        return obj
    parent = _parent(obj, path)
    where = "/" + "/".join(map(str, path))
    if op == "delete":
        notes.append(f"delete {where}")
        if isinstance(parent, dict):
            del parent[path[-1]]
        else:
            del parent[path[-1]]
        return obj
    if op == "value":
        value = _random_value(rng)
        notes.append(f"{where} = {_brief(value)}")
        parent[path[-1]] = value
        return obj
    if op == "wrap":  # spliced as text: json.dumps itself recurses
        n = rng.choice([30, 62, 63, 64, 65, 1000, 20_000])
        notes.append(f"{where} wrapped in {n} arrays")
        inner = _dumps(parent[path[-1]], ascii_only)
        parent[path[-1]] = _MARK
        return _dumps(obj, ascii_only).replace(json.dumps(_MARK), "[" * n + inner + "]" * n, 1)
    if op == "swap":  # another value of the same alert, often of another type
        other = rng.choice(paths)
        value = copy.deepcopy(_parent(obj, other)[other[-1]])
        notes.append(f"{where} = value of /{'/'.join(map(str, other))}")
        parent[path[-1]] = value
        return obj
    token = rng.choice(HOSTILE_TOKENS)
    notes.append(f"{where} = {token[:40]}{'…' if len(token) > 40 else ''}")
    parent[path[-1]] = _MARK
    return _dumps(obj, ascii_only).replace(json.dumps(_MARK), token, 1)


def _byte_mutation(rng: random.Random, raw: bytes, notes: list[str]) -> bytes:
    data = bytearray(raw)
    op = rng.choice(["flip", "insert", "truncate", "splice"])
    if not data:
        return bytes(data)
    if op == "flip":
        k = rng.choice([1, 2, 8])
        for _ in range(k):
            i = rng.randrange(len(data))
            data[i] = rng.randrange(256)
        notes.append(f"{k} random bytes")
    elif op == "insert":
        i = rng.randrange(len(data))
        chunk = bytes(rng.choice(b'[]{}",:\\0123456789eE+-.ntfuNI\x00\xff') for _ in range(rng.choice([1, 3, 20])))
        data[i:i] = chunk
        notes.append(f"insert {chunk[:20]!r} at {i}")
    elif op == "truncate":
        i = rng.randrange(len(data))
        del data[i:]
        notes.append(f"truncate at {i}")
    else:
        i, j = sorted(rng.randrange(len(data)) for _ in range(2))
        k = rng.randrange(len(data))
        data[k:k] = data[i:j][:10_000]
        notes.append(f"splice [{i}:{j}] at {k}")
    return bytes(data)


# ---------------------------------------------------------------- FITS sky-map mutations
def _set_card(fits: bytearray, keyword: str, value: str, start: int) -> bool:
    """Set (or add, over a spare card) header card ``keyword`` of the HDU starting at ``start``."""
    i = fits.find(keyword.ljust(8).encode()[:8], start)
    for spare in SPARE_CARDS:
        if i >= 0 and i % 80 == 0:
            break
        i = fits.find(spare.ljust(8).encode()[:8], start)
    if i < 0 or i % 80:
        return False
    card = (keyword.ljust(8)[:8] + ("= " + value.rjust(20) if keyword != "END" else value)).encode("ascii")
    fits[i : i + 80] = card[:80].ljust(80)
    return True


def _table_data_start(fits: bytes) -> int | None:
    """Start of the first extension's data (after its END card), or None."""
    ext = fits.find(b"XTENSION=")
    if ext < 0:
        return None
    i = ext
    while i + 80 <= len(fits):
        if fits[i : i + 8] == b"END     ":
            return (i // 2880 + 1) * 2880
        i += 80
    return None


def mutate_fits(rng: random.Random, blob: bytes, notes: list[str]) -> bytes:
    """A hostile variant of a (possibly gzipped) FITS sky map."""
    try:  # an earlier mutation may have left trailing garbage after the gzip member
        fits = bytearray(gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob)
    except (OSError, EOFError, zlib.error):
        fits = bytearray(zlib.decompressobj(wbits=31).decompress(blob, 64 << 20))
    op = rng.choice(["card", "card", "header-bytes", "data-bytes", "truncate", "values", "gzip", "gzip", "append"])
    ext = max(fits.find(b"XTENSION="), 0)
    if op == "card":
        keyword, value = rng.choice(FITS_KEYWORDS), rng.choice(FITS_VALUES)
        if _set_card(fits, keyword, value, ext if keyword != "NAXIS" or rng.random() < 0.7 else 0):
            notes.append(f"FITS {keyword} = {value}")
    elif op == "header-bytes":
        end = min(len(fits), ext + 2 * 2880)
        for _ in range(rng.choice([1, 4, 16])):
            fits[rng.randrange(end)] = rng.randrange(32, 127)
        notes.append("FITS header bytes")
    elif op == "data-bytes":
        start = _table_data_start(bytes(fits)) or 0
        for _ in range(rng.choice([1, 16, 256])):
            i = rng.randrange(start, len(fits)) if start < len(fits) else 0
            fits[i] = rng.randrange(256)
        notes.append("FITS data bytes")
    elif op == "truncate":
        cut = rng.choice([rng.randrange(len(fits)), 2880, 5760, len(fits) - 1, len(fits) // 2])
        del fits[cut:]
        notes.append(f"FITS truncated at {cut}")
    elif op == "values":  # big-endian table values: first column of row k set to a hostile one
        start = _table_data_start(bytes(fits))
        if start is not None and start + 8 <= len(fits):
            import struct

            row = rng.randrange(min(100, (len(fits) - start) // 8))
            value = rng.choice([struct.pack(">d", float("nan")), struct.pack(">d", -1.0), struct.pack(">d", 1e308),
                                struct.pack(">q", 2**62), struct.pack(">q", 0), struct.pack(">q", -5),
                                struct.pack(">d", float("inf"))])
            fits[start + 8 * row : start + 8 * row + 8] = value
            notes.append(f"FITS table value {value.hex()} at row-ish {row}")
    elif op == "append":
        tail = rng.choice([b"\0" * 5000, b"XTENSION= 'BINTABLE'" + b" " * 60, b"garbage" * 100])
        fits += tail
        notes.append(f"FITS + {len(tail)} bytes {tail[:10]!r}")
    out = bytes(fits)
    if op == "gzip" or (blob[:2] == b"\x1f\x8b" and rng.random() < 0.8):
        tail = rng.choice([b"", b"", b"\0" * 8, b"xx", gzip.compress(b"\0" * 1_000_000)])
        out = gzip.compress(out, compresslevel=1) + tail
        notes.append(f"gzip (+{len(tail)} bytes after)")
    return out


def _skymap_mutation(rng: random.Random, obj: dict, notes: list[str]) -> bool:
    """Mutate one embedded base64 sky map in place; False if the alert has none."""
    holders = []
    for path in _paths(obj):
        if path and path[-1] in SKYMAP_KEYS and isinstance(_parent(obj, path)[path[-1]], str):
            holders.append(path)
    if not holders:
        return False
    path = rng.choice(holders)
    parent = _parent(obj, path)
    try:
        blob = base64.b64decode(parent[path[-1]], validate=True)
    except ValueError:
        return False
    if not (blob.startswith(b"SIMPLE") or blob[:2] == b"\x1f\x8b"):
        return False
    notes.append(f"/{'/'.join(map(str, path))}:")
    parent[path[-1]] = base64.b64encode(mutate_fits(rng, blob, notes)).decode()
    return True


# ---------------------------------------------------------------- one hostile message
def mutate(rng: random.Random, base: Base) -> tuple[bytes, str]:
    """One hostile message made from ``base``, and a description of what was done.

    One to three mutations of the parsed alert (hostile token, random value, deletion,
    deep wrapping, value swap, FITS sky-map mutation), or a byte-level mutation of the
    serialized result.
    """
    notes: list[str] = []
    obj = copy.deepcopy(base.obj)
    text: str | None = None
    ascii_only = rng.random() < 0.5  # else lone surrogates reach the bytes (invalid UTF-8)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if rng.random() < 0.3 and _skymap_mutation(rng, obj, notes):
            continue
        result = _json_mutation(rng, obj, notes, ascii_only)
        if isinstance(result, str):
            text = result
            break  # a spliced token cannot be mutated as an object any more
    data = (text if text is not None else _dumps(obj, ascii_only)).encode("utf-8", "surrogatepass")
    if rng.random() < 0.15:
        data = _byte_mutation(rng, data, notes)
    return data, f"{base.name}: " + "; ".join(notes)


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


# ---------------------------------------------------------------- the run
@dataclass
class Tally:
    """What one decoder did with its messages."""

    decoder: str
    messages: int = 0
    decoded: int = 0
    errors: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    crashes: list[tuple[str, str]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    slowest: tuple[float, str] = (0.0, "")


def decode_one(data: bytes) -> tuple[str, str]:
    """``("ok", "")``, ``("decode-error", reason)`` or ``("crash", "Type: message")``."""
    from broker.errors import DecodeError
    from broker.limits import decode_scope
    from broker.sources import decode_unguarded

    try:
        with decode_scope():
            decode_unguarded(data)
        return "ok", ""
    except DecodeError as exc:
        return "decode-error", str(exc)
    except Exception as exc:  # noqa: BLE001 - the point: any other exception is a bug
        return "crash", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def run(decoder: str, n: int, seed: int, progress=None, task=None) -> Tally:
    rng = random.Random(f"{seed}:{decoder}")
    tally = Tally(decoder)
    all_bases = bases(decoder)
    for _ in range(n):
        data, what = mutate(rng, rng.choice(all_bases))
        t0 = time.perf_counter()
        outcome, detail = decode_one(data)
        dt = time.perf_counter() - t0
        tally.messages += 1
        tally.times.append(dt)
        if dt > tally.slowest[0]:
            tally.slowest = (dt, what)
        if outcome == "ok":
            tally.decoded += 1
        elif outcome == "decode-error":
            word = detail.split(" ", 1)[0] if detail else "(empty)"
            tally.errors[word] += 1
            tally.examples.setdefault(word, detail)
        else:
            tally.crashes.append((detail, what))
        if progress is not None:
            progress.advance(task)
    return tally


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def report(tally: Tally, console) -> None:
    import numpy as np
    from rich.table import Table

    times = np.asarray(tally.times)
    console.print(f"\n[bold]{tally.decoder}[/bold]: {tally.messages:,} messages, {tally.decoded:,} decoded, "
                  f"{sum(tally.errors.values()):,} DecodeErrors, [bold]{len(tally.crashes)} other exceptions[/bold]")
    console.print(f"  decode time: max {times.max() * 1e3:.1f} ms, p99 {np.percentile(times, 99) * 1e3:.1f} ms, "
                  f"median {np.median(times) * 1e3:.2f} ms; peak RSS {_peak_rss_mb():,.0f} MB")
    console.print(f"  slowest: {tally.slowest[1][:160]}")
    table = Table("first word of reason", "count", "example reason", box=None, padding=(0, 2))
    for word, count in tally.errors.most_common():
        table.add_row(word, f"{count:,}", tally.examples[word][:110])
    console.print(table)
    for detail, what in tally.crashes[:20]:
        console.print(f"  [red]CRASH[/red] {detail}\n        from {what[:300]}")


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="messages per decoder (default 10000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--decoder", choices=["gcn-json", "igwn-json"], action="append",
                        help="only this decoder (repeatable); default both")
    parser.add_argument("--max-memory-gb", type=float, default=8.0,
                        help="address-space cap (RLIMIT_AS): a runaway allocation is a MemoryError, "
                             "reported as an exception, not the machine's OOM killer (default 8)")
    args = parser.parse_args(argv)
    cap = int(args.max_memory_gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
    decoders = args.decoder or ["gcn-json", "igwn-json"]
    console = Console(width=170)
    import logging

    logging.disable(logging.WARNING)  # undeclared-property and sky-map warnings, by the thousand
    tallies = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        for decoder in decoders:
            console.print(f"{decoder}: {len(bases(decoder))} real alerts to mutate")
            task = progress.add_task(decoder, total=args.n)
            tallies.append(run(decoder, args.n, args.seed, progress, task))
    for tally in tallies:
        report(tally, console)
    return 1 if any(t.crashes for t in tallies) else 0


if __name__ == "__main__":
    sys.exit(main())
