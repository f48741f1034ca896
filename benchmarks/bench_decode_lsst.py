"""Benchmark: decode + normalize of Rubin/LSST alerts (Confluent wire format) and of ZTF
alerts relayed by Fink, ours against fastavro on the same bytes.

LSST messages are the real Rubin alerts Fink relayed (``tests/data/relayed/fink/lsst``,
schema lsst.v10_0, with their 345 previous DIASources, 395 forced sources and three
cutouts: ~280 kB each), their Rubin fields written as Rubin sends them: byte 0, schema
id 1000 (4 bytes, big-endian), the Avro datum (``fastavro.schemaless_writer`` with the
schema lsst-alert-packet ships). Methods, interleaved chunk by chunk on the same bytes:

(a) lsst-alert-packet  ``Schema.deserialize`` as the package does it: ``fastavro.schemaless_reader``
                       with the schema dict (fastavro parses it on every call)
(b) fastavro, parsed   ``fastavro.schemaless_reader`` with the schema parsed once per id
                       (what a Kafka consumer's Avro deserializer does): full decode
(c) ours               ``broker.sources.decode(msg)``: schema by id, the small fields
                       decoded, histories and cutouts skipped, normalized to Events
(d) ours + history     (c) then ``lsst.decode_history`` for every alert

Relayed ZTF: the five Fink output files of ``tests/data/relayed/fink/ztf``, one alert
per container: (e) ``list(fastavro.reader(msg))`` against (f) ``broker.sources.decode``.

Prints alerts/s per method, ratios to (b) / (e), the load average and the peak RSS. The
target (DESIGN.md, issue 12) is >= 2,000 alerts/s per process for (c).
Run: ``python benchmarks/bench_decode_lsst.py [--n 20000]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import fastavro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from broker.sources import decode, lsst

ROOT = Path(__file__).resolve().parents[1]
RELAYED = ROOT / "tests" / "data" / "relayed" / "fink"
PACKAGE = Path(importlib.util.find_spec("lsst.alert.packet").submodule_search_locations[0]) / "schema"
TARGET_PER_S = 2000.0


def lsst_messages() -> tuple[list[bytes], dict]:
    """Wire-format messages of the real Rubin alerts in ``tests/data/relayed/fink/lsst``,
    and the v10.0 schema dict they are written with."""
    schema = fastavro.schema.load_schema(str(PACKAGE / "10" / "0" / "lsst.v10_0.alert.avsc"))
    rubin = [f["name"] for f in schema["fields"]]
    out = []
    for path in sorted((RELAYED / "lsst").glob("*.avro")):
        with path.open("rb") as fh:
            for rec in fastavro.reader(fh):
                # Spark writes a null record as a record of nulls; Rubin's schema has null
                rubin_rec = {k: None if isinstance(rec[k], dict) and all(v is None for v in rec[k].values()) else rec[k]
                             for k in rubin}
                buf = io.BytesIO()
                buf.write(b"\x00" + (1000).to_bytes(4, "big"))
                fastavro.schemaless_writer(buf, schema, rubin_rec)
                out.append(buf.getvalue())
    return out, fastavro.schema.load_schema(str(PACKAGE / "10" / "0" / "lsst.v10_0.alert.avsc"), _write_hint=False)


def relayed_ztf_messages() -> list[bytes]:
    """One single-alert container per real Fink-relayed ZTF alert (original writer schema)."""
    out = []
    for path in sorted((RELAYED / "ztf").glob("*.avro")):
        with path.open("rb") as fh:
            reader = fastavro.reader(fh)
            schema, records = reader.writer_schema, list(reader)
        for rec in records:
            buf = io.BytesIO()
            fastavro.writer(buf, schema, [rec])
            out.append(buf.getvalue())
    return out


def time_interleaved(methods: list[tuple[str, Callable[[bytes], object], list[bytes]]], progress: Progress,
                     chunk: int = 250) -> list[float]:
    """Alerts/s of each method, timed chunk by chunk in turn (the same load hits all)."""
    tasks = [progress.add_task(name, total=len(msgs)) for name, _, msgs in methods]
    elapsed = [0.0] * len(methods)
    longest = max(len(m) for _, _, m in methods)
    for start in range(0, longest, chunk):
        for i, (_, fn, msgs) in enumerate(methods):
            part = msgs[start : start + chunk]
            if not part:
                continue
            t0 = time.perf_counter()
            for msg in part:
                fn(msg)
            elapsed[i] += time.perf_counter() - t0
            progress.advance(tasks[i], len(part))
    return [len(m) / t for (_, _, m), t in zip(methods, elapsed)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="messages for (c) and (f) (default 20000)")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 120)
    lsst.configure(None)

    base, schema_dict = lsst_messages()
    parsed = fastavro.parse_schema(schema_dict)
    ztf_base = relayed_ztf_messages()
    n = args.n
    rep = lambda msgs, k: (msgs * (k // len(msgs) + 1))[:k]  # noqa: E731
    wire, ztf_msgs = rep(base, n), rep(ztf_base, n)
    console.print(f"{len(base)} real Rubin alerts (lsst.v10_0, {sum(map(len, base)) / len(base) / 1e3:.0f} kB each in "
                  f"wire format), {len(ztf_base)} real Fink-relayed ZTF alerts; load average before: "
                  f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    def package_style(msg: bytes) -> None:
        fastavro.schemaless_reader(io.BytesIO(msg[5:]), schema_dict)

    def parsed_once(msg: bytes) -> None:
        fastavro.schemaless_reader(io.BytesIO(msg[5:]), parsed)

    def with_history(msg: bytes) -> None:
        decode(msg)
        lsst.decode_history(msg)

    def naive_reader(msg: bytes) -> None:
        list(fastavro.reader(io.BytesIO(msg)))

    methods = [
        ("(a) LSST: lsst-alert-packet style, schema dict per call", package_style, wire[: max(n // 20, 1)]),
        ("(b) LSST: fastavro schemaless_reader, parsed schema", parsed_once, wire[: max(n // 4, 1)]),
        ("(c) LSST: ours, decode + normalize", decode, wire),
        ("(d) LSST: ours + decode_history", with_history, wire[: max(n // 20, 1)]),
        ("(e) Fink ZTF: fastavro.reader, full decode", naive_reader, ztf_msgs[: max(n // 4, 1)]),
        ("(f) Fink ZTF: ours, decode + normalize", decode, ztf_msgs),
    ]
    for _, fn, msgs in methods:  # warm-up: schema caches, layouts
        fn(msgs[0])
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        rates = time_interleaved(methods, progress)
    load = os.getloadavg()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    table = Table(title=f"decode throughput, one process (load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
                        f"peak RSS {peak:,.0f} MiB)")
    for col in ("method", "messages", "alerts/s", "µs/alert", "× baseline"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for i, ((name, _, msgs), rate) in enumerate(zip(methods, rates)):
        base_rate = rates[1] if i < 4 else rates[4]
        table.add_row(name, f"{len(msgs):,}", f"{rate:,.0f}", f"{1e6 / rate:,.1f}", f"{rate / base_rate:.1f}")
    console.print(table)
    ours = rates[2]
    console.print(f"(c) {ours:,.0f} LSST alerts/s {'meets' if ours >= TARGET_PER_S else 'MISSES'} the target of "
                  f"{TARGET_PER_S:,.0f} alerts/s per process; (f) {rates[5]:,.0f} relayed ZTF alerts/s")


if __name__ == "__main__":
    main()
