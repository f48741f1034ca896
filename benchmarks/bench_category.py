"""Benchmark: the cost of Event.category on the ZTF decode path (docs/categories.md, "Speed").

Runs ``broker.sources.decode`` over the real ZTF alerts of ``tests/data/ztf`` (one alert
per Avro container, as on the ZTF stream; ``bench_decode.load_messages``) repeated to
``--n`` messages, with the category hook (``broker.category.set_category``) on and
swapped for a no-op, in interleaved chunks in the same process so that a shared machine's
changing load hits both alike. Prints alerts/s of each and the throughput ratio
with/without (total, and median of the per-chunk ratios).
Run: ``python benchmarks/bench_category.py [--n 20000] [--chunk 500]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import DATA, load_messages  # noqa: E402

import broker.sources as sources  # noqa: E402
from broker.category import set_category  # noqa: E402


def _no_category(event):
    return event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="messages per variant (default 20000)")
    parser.add_argument("--chunk", type=int, default=500, help="messages per interleaved chunk (default 500)")
    args = parser.parse_args()
    console = Console()
    messages = load_messages(DATA)
    stream = [messages[i % len(messages)] for i in range(args.n)]
    for m in messages:  # warm the decoder caches
        sources.decode(m)
    totals = {"with": 0.0, "without": 0.0}
    ratios = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("decode, category hook on / off", total=args.n)
            for k, i in enumerate(range(0, args.n, args.chunk)):
                part = stream[i : i + args.chunk]
                order = [("without", _no_category), ("with", set_category)]
                spent = {}
                for name, hook in order if k % 2 == 0 else order[::-1]:
                    sources.set_category = hook
                    t0 = time.perf_counter()
                    for m in part:
                        sources.decode(m)
                    spent[name] = time.perf_counter() - t0
                    totals[name] += spent[name]
                ratios.append(spent["without"] / spent["with"])
                progress.advance(task, len(part))
    finally:
        sources.set_category = set_category
    console.print(f"{len(messages)} real ZTF alerts repeated to {args.n} messages per variant, chunks of {args.chunk}")
    console.print(f"decode without the category hook: {args.n / totals['without']:,.0f} alerts/s; "
                  f"with it: {args.n / totals['with']:,.0f} alerts/s")
    console.print(f"throughput ratio with/without: {totals['without'] / totals['with']:.3f} (totals), "
                  f"{statistics.median(ratios):.3f} (median of chunk ratios)")


if __name__ == "__main__":
    main()
