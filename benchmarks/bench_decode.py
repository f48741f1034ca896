"""Benchmark: decode + normalize of real ZTF alerts, ours against fastavro baselines.

Loads every real ZTF alert under ``tests/data/ztf``, re-writes each record into its own
Avro container with its original writer schema (what the ZTF Kafka stream carries:
one alert per message), repeats them to ``--n`` messages and times, in one run:

(a) naive        ``list(fastavro.reader(msg))`` per message (schema parse + full decode)
(b) candidate    ``fastavro.reader(msg, reader_schema=...)`` projecting to the fields up
                 to ``candidate`` (schema parse + resolution that skips the history)
(c) ours         ``broker.sources.decode(msg)`` — the dispatcher: cached header parse,
                 prefix-only decode, normalization to Events
(d) ours+history (c) then ``ztf.decode_history`` for every alert: the cost a stage pays
                 when it does need ``prv_candidates``/``fp_hists``/cutouts

The methods are interleaved chunk by chunk so that a shared machine's changing load
hits them alike. Prints alerts/s per method and the process's peak RSS. DESIGN.md's target for (c) is
≥ 2,000 alerts/s in one process. Run: ``python benchmarks/bench_decode.py [--n 20000]``.
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import fastavro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from broker.sources import avro, ztf

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "ztf"
TARGET_PER_S = 2000.0


def load_messages(data_dir: Path) -> list[bytes]:
    """One single-alert Avro container per real ZTF alert found under ``data_dir``."""
    messages = []
    for path in sorted(data_dir.rglob("*.avro")):
        with path.open("rb") as fh:
            reader = fastavro.reader(fh)
            schema, records = reader.writer_schema, list(reader)
        for rec in records:
            out = io.BytesIO()
            fastavro.writer(out, schema, [rec])
            messages.append(out.getvalue())
    return messages


def _dispatcher(sample: bytes) -> tuple[str, Callable[[bytes], list]]:
    """``broker.sources.decode`` if the dispatcher and all its decoders import."""
    try:
        from broker.sources import decode

        decode(sample)
        return "broker.sources.decode", decode
    except ImportError as exc:  # another decoder module is not there yet

        def direct(msg: bytes) -> list:
            return ztf.decode(msg, avro.read_header(msg))

        return f"avro.read_header + ztf.decode (dispatcher unavailable: {exc})", direct


def _naive(msg: bytes) -> None:
    list(fastavro.reader(io.BytesIO(msg)))


def _candidate_only(msg: bytes) -> None:
    # the projection a user would write: keep the fields up to candidate, drop the rest
    reader = fastavro.reader(io.BytesIO(msg), reader_schema=_projection(avro.read_header(msg)))
    list(reader)


_projections: dict[bytes, dict] = {}


def _projection(header: avro.AvroHeader) -> dict:
    proj = _projections.get(header.schema_json)
    if proj is None:
        names = [f["name"] for f in header.schema["fields"]]
        proj = dict(header.schema, fields=header.schema["fields"][: names.index("candidate") + 1])
        _projections[header.schema_json] = proj
    return proj


def _with_history(decode: Callable[[bytes], list]) -> Callable[[bytes], None]:
    def run(msg: bytes) -> None:
        decode(msg)
        ztf.decode_history(msg, avro.read_header(msg))

    return run


def time_interleaved(
    methods: list[tuple[str, Callable[[bytes], object], int]], messages: list[bytes], progress: Progress
) -> list[float]:
    """Alerts/s of each method, timed chunk by chunk in turn on the same messages.

    The machine is shared, so the load changes during a run; interleaving the methods
    per chunk of 500 messages exposes them all to the same load, which keeps their
    ratios meaningful even when the absolute figures move. Method ``i`` runs on the
    first ``n_i`` messages only. Progress-bar updates are outside the timed spans.
    """
    tasks = [progress.add_task(name, total=n) for name, _, n in methods]
    elapsed = [0.0] * len(methods)
    chunk = 500
    for start in range(0, len(messages), chunk):
        for i, (_, fn, n) in enumerate(methods):
            part = messages[start : min(start + chunk, n)]
            if not part:
                continue
            t0 = time.perf_counter()
            for msg in part:
                fn(msg)
            elapsed[i] += time.perf_counter() - t0
            progress.advance(tasks[i], len(part))
    return [n / t for (_, _, n), t in zip(methods, elapsed)]


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="messages per method (default 20000)")
    parser.add_argument("--skip-baselines", action="store_true", help="time only our decoder")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 110)

    base = load_messages(DATA)
    messages = (base * (args.n // len(base) + 1))[: args.n]
    size_mb = sum(map(len, messages)) / 1e6
    console.print(f"{len(base)} real ZTF alerts from {DATA}, repeated to {len(messages)} messages ({size_mb:.0f} MB to decode in total)")
    label, decode = _dispatcher(base[0])
    console.print(f"(c) is {label}")

    methods: list[tuple[str, Callable[[bytes], object], int]] = []
    if not args.skip_baselines:
        methods += [("(a) naive fastavro.reader, full decode", _naive, len(messages)),
                    ("(b) fastavro.reader, candidate-only projection", _candidate_only, len(messages))]
    methods += [("(c) ours: decode + normalize", decode, len(messages)),
                ("(d) ours + decode_history for every alert", _with_history(decode), max(len(messages) // 4, 1))]

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        rates = time_interleaved(methods, messages, progress)

    table = Table(title=f"ZTF decode throughput, one process (peak RSS {peak_rss_mib():,.0f} MiB)")
    for col in ("method", "messages", "alerts/s", "µs/alert", "× naive"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for (name, _, n), rate in zip(methods, rates):
        table.add_row(name, str(n), f"{rate:,.0f}", f"{1e6 / rate:,.0f}", f"{rate / rates[0]:.2f}" if not args.skip_baselines else "")
    console.print(table)
    ours = next(rate for (name, _, _), rate in zip(methods, rates) if name.startswith("(c)"))
    verdict = "meets" if ours >= TARGET_PER_S else "MISSES"
    console.print(f"(c) {ours:,.0f} alerts/s {verdict} the DESIGN.md target of {TARGET_PER_S:,.0f} alerts/s")


if __name__ == "__main__":
    main()
