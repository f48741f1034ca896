"""Outbox latency and throughput on a real (embedded) PostgreSQL.

1. **Latency**: a sender (broker.sinks.stage.Sender) runs on a thread with a channel that
   only notes the time; entries are put one by one, ``--gap`` seconds apart. Latency =
   the channel's send call − the return of ``Outbox.put`` (same process, monotonic
   clock): what the outbox adds between a report and its message leaving.
2. **Throughput**: ``--n`` entries are put first, then one sender drains them
   (claim, send to the no-op channel, mark sent): entries/s.

Run: ``.venv/bin/python benchmarks/bench_outbox.py [--latency-n 300] [--gap 0.02] [--n 3000]``.
Figures are recorded in docs/publishing.md (## Outbox).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from rich.progress import track

from broker.archive import Archive, PostgresRawStore, ensure_embedded_postgres, stop_embedded_postgres
from broker.sinks.channels import BaseChannel
from broker.sinks.config import PublishSettings
from broker.sinks.outbox import Outbox
from broker.sinks.stage import Sender


class Clock(BaseChannel):
    name = "bench"

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}

    def send(self, entry) -> dict:
        self.sent[entry.key] = time.monotonic()
        return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-n", type=int, default=300)
    ap.add_argument("--gap", type=float, default=0.02)
    ap.add_argument("--n", type=int, default=3000)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mma-obx-", dir="/tmp"))
    try:
        url = ensure_embedded_postgres(root / "pg")
        archive = Archive(url, PostgresRawStore())
        archive.migrate()
        settings = PublishSettings(batch_size=50)
        ch = Clock()
        ob = Outbox(archive.engine)
        sender = Sender(Outbox(archive.engine), {"bench": ch}, settings)
        stop = threading.Event()
        t = threading.Thread(target=sender.run, args=(stop,), daemon=True)
        t.start()
        time.sleep(1.0)
        put_at: dict[str, float] = {}
        for i in track(range(args.latency_n), description="latency"):
            key = f"lat:{i}"
            ob.put(key, "bench", {"i": i})
            put_at[key] = time.monotonic()
            time.sleep(args.gap)
        deadline = time.monotonic() + 30
        while len(ch.sent) < args.latency_n and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        t.join(30)
        lat = np.array([ch.sent[k] - put_at[k] for k in put_at if k in ch.sent]) * 1000
        print(f"latency put -> send, {len(lat)} entries {args.gap * 1000:.0f} ms apart: "
              f"p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms, max {lat.max():.1f} ms")
        for i in track(range(args.n), description="put"):
            ob.put(f"tp:{i}", "bench", {"i": i, "text": "x" * 500})
        sender2 = Sender(Outbox(archive.engine), {"bench": ch}, settings)
        t0 = time.monotonic()
        sender2.run(threading.Event(), until_caught_up=True, idle_s=0.0)
        dt = time.monotonic() - t0
        print(f"throughput: {args.n} entries sent and recorded in {dt:.2f} s = {args.n / dt:,.0f} entries/s "
              f"(batch {settings.batch_size})")
        sender.close()
        sender2.close()
        archive.close()
    finally:
        stop_embedded_postgres(root / "pg")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
