"""The live stream's fan-out: many ``GET /api/stream`` clients and one that never reads.

``benchmarks/bench_web_serve.py`` measures one stream client of the whole ``mma-broker
serve`` under load. This script measures what a single Kafka consumer per process
(:class:`broker.web.live.StreamHub`) costs when many browsers are open:

1. the stream alone (:func:`broker.web.live.install` on a FastAPI app, no archive) on
   uvicorn (:func:`broker.web.live.uvicorn_server`) on a free port, reading topics of a
   prefix of its own on the real Kafka (``MMA_BROKER_TEST_KAFKA``, default
   127.0.0.1:9092);
2. ``--clients`` SSE clients (httpx, one thread each): a third unfiltered, a third
   ``source=ztf``, a third ``source=gcn``;
3. **one stalled client**: a raw socket that sends the request and never reads, so the
   server's socket buffers fill and then its per-client queue; it must be told to reload
   and dropped while the others keep up;
4. the writer: ``--rate`` Events per minute for ``--seconds`` s, real alerts of tests/data
   (a ZTF packet and a Fermi GBM notice, alternating, each with a new id) encoded as the
   enrich stage encodes its records (``EnrichHandler._enriched_record``), one Kafka
   transaction per 0.3 s batch of a transactional producer, the wall time of each commit
   noted.

Printed: for each client kind, Events expected and read, and the latency from the
commit of an Event's transaction to its reading by the client (p50, p95, p99, max, ms,
same machine clock); whether the stalled client was dropped; the server process's CPU
time (the hub thread, the uvicorn loop, the clients' and writer's threads: all in this
one process, so it is an upper bound).

Usage: ``python benchmarks/bench_web_live.py [--clients 30] [--rate 1000] [--seconds 30]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import threading
import time
import types
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO / "tests" / "data"


class Reader(threading.Thread):
    """One SSE client: notes the wall time each Event id is read."""

    def __init__(self, url: str) -> None:
        import httpx

        super().__init__(daemon=True)
        self.url, self.read_at, self.statuses, self.reloads = url, {}, [], 0
        self.client = httpx.Client(timeout=httpx.Timeout(10.0, read=60.0))
        self.error = None

    def run(self) -> None:
        import httpx

        try:
            with self.client.stream("GET", self.url) as r:
                kind = None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                        if kind == "event":
                            self.read_at.setdefault(data["id"], time.time())
                        elif kind == "status":
                            self.statuses.append(data["state"])
                        elif kind == "reload":
                            self.reloads += 1
        except (httpx.HTTPError, RuntimeError) as exc:
            self.error = type(exc).__name__


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=30)
    ap.add_argument("--rate", type=float, default=1000.0, help="Events per minute")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--queue", type=int, default=1000, help="per-client queue, messages")
    args = ap.parse_args()

    from fastapi import FastAPI
    from rich.console import Console
    from rich.progress import Progress

    from broker.config import settings_class
    from broker.kafka import ensure_topics, make_producer
    from broker.pipeline.enrich import EnrichHandler
    from broker.sources import decode
    from broker.web.live import StreamHub, install, uvicorn_server
    from broker.web.pages import PageContext
    from tests.conftest import delete_topics

    console = Console(width=150)
    bootstrap = os.environ.get("MMA_BROKER_TEST_KAFKA", "127.0.0.1:9092")
    tag = uuid.uuid4().hex[:8]
    settings = settings_class()(group_id=f"bench-{tag}", kafka={"bootstrap_servers": bootstrap,
                                                               "topic_prefix": f"b{tag}."})
    topic = settings.topic(settings.enrich.enriched_topic)
    ensure_topics(settings, [topic])
    app = FastAPI()
    hub = StreamHub(settings, queue_size=args.queue)
    install(app, PageContext(engine=None, settings=settings, fetch=None, templates=None, extra={"live_hub": hub}))
    srv = uvicorn_server(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=3)
    server_thread = threading.Thread(target=srv.run, daemon=True)
    server_thread.start()
    while not srv.started:
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}/api/stream"

    kinds = {"all": "", "ztf": "?source=ztf", "gcn": "?source=gcn"}
    readers = {k: [Reader(base + q) for _ in range(max(1, args.clients // 3))] for k, q in kinds.items()}
    for rs in readers.values():
        for r in rs:
            r.start()
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(f"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all("live" in r.statuses for rs in readers.values() for r in rs):
        time.sleep(0.1)
    n_clients = hub.n_clients
    console.print(f"{n_clients} stream clients connected (one stalled), hub live: "
                  f"{all('live' in r.statuses for rs in readers.values() for r in rs)}")

    ztf, gbm = decode((sorted((DATA / "ztf").rglob("*.avro"))[0]).read_bytes())[0], \
        decode((DATA / "gcn/gwcelery-kafka/kafka_alert_fermi_ground.json").read_bytes())[0]
    handler = types.SimpleNamespace(enriched_topic=topic)
    producer = make_producer(settings, **{"transactional.id": f"bench-{tag}", "transaction.timeout.ms": 60_000})
    producer.init_transactions(30)
    committed: dict[str, tuple[str, float]] = {}  # event id -> (source, commit wall time)
    n_total = int(args.rate * args.seconds / 60)
    interval = 60.0 / args.rate
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    sent = 0
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("writing Events", total=n_total)
        while sent < n_total:
            batch_end = t0 + (sent // max(1, int(0.3 / interval)) + 1) * 0.3
            producer.begin_transaction()
            ids = []
            while sent < n_total and t0 + sent * interval < batch_end:
                base_ev = ztf if sent % 2 == 0 else gbm
                ev = base_ev.model_copy(update={"id": f"{base_ev.id}#{sent}"})
                enrichment = {"localization": None, "group": {"key": f"{ev.source}:{ev.upstream_id}", "revision": 1,
                                                              "n_revisions": 1, "latest": ev.id, "retracted": False,
                                                              "t0": ev.time},
                              "crossmatch": {}, "coincidences": [], "error": None, "provenance": {}}
                out = EnrichHandler._enriched_record(handler, ev, enrichment)
                producer.produce(out.topic, out.value, out.key)
                ids.append((ev.id, ev.source))
                sent += 1
            producer.commit_transaction(30)
            now = time.time()
            for eid, src in ids:
                committed[eid] = (src, now)
            bar.update(task, completed=sent)
            pause = batch_end - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    time.sleep(3)  # the last Events reach the clients
    wall = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    stalled_dropped = hub.n_clients < n_clients
    backlog = max((len(c.buf) for c in list(hub._clients)), default=0)

    console.print(f"{sent:,} Events in {wall - 3:.1f} s ({sent / (wall - 3) * 60:,.0f}/min), "
                  f"{n_clients - 1} reading clients + 1 stalled, queue {args.queue}; load {os.getloadavg()}")
    for kind, rs in readers.items():
        want = {e for e, (src, _) in committed.items() if kind == "all" or src == kind}
        got = [len(want & set(r.read_at)) for r in rs]
        lat = np.array([(r.read_at[e] - committed[e][1]) * 1000 for r in rs for e in want if e in r.read_at])
        extra = sum(len(set(r.read_at) - want) for r in rs)
        q = np.percentile(lat, [50, 95, 99]) if lat.size else [float("nan")] * 3
        console.print(f"  {kind:>4}: {len(rs)} clients, each read {min(got):,}..{max(got):,} of {len(want):,} "
                      f"(wrong filter: {extra}), reloads {sum(r.reloads for r in rs)}; latency ms p50 {q[0]:.0f} "
                      f"p95 {q[1]:.0f} p99 {q[2]:.0f} max {lat.max() if lat.size else float('nan'):.0f}")
    console.print(f"  stalled client dropped: {stalled_dropped} (clients now {hub.n_clients}); "
                  f"largest client backlog at the end: {backlog} messages; undecodable records skipped: {hub.skipped}")
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    console.print(f"  CPU of this process (server, clients, writer): {cpu:.1f} s over {wall:.1f} s "
                  f"({cpu / wall * 100:.0f} % of one core)")
    stalled.close()
    srv.should_exit = True
    server_thread.join(10)
    delete_topics(bootstrap, f"b{tag}.")


if __name__ == "__main__":
    main()
