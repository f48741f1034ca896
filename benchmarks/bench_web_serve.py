"""``mma-broker serve`` over uvicorn at 10^5 archived Events with 1,000 Events/min arriving.

Issue 13, target 7: "Pages work at 1,000 events per minute arriving and with 100,000 events
in the archive: API p95 <= 100 ms for list, search and group pages." This script measures
it end to end, over HTTP, against the real server:

1. a fresh embedded PostgreSQL (pgserver), migrated, filled by
   ``benchmarks/bench_web_api.py``'s :func:`seed` (the real alerts of tests/data archived and
   enriched, then ``--events`` copies made in SQL: 98 % ZTF rows at seeded positions, 2 %
   notices, T0 over 30 days);
2. **the writer**, another process, adds ``--rate`` Events per minute for the whole run
   through the real write path: copies of a real ZTF alert (new candid, object id and
   position, T0 = now) written with :meth:`broker.archive.Archive.write_batch` (raw bytes,
   Kafka metadata), their positions and groups stored as the enrich stage stores them
   (``index_positions``, ``GroupStore.add_many``), then each produced on
   ``mma.events.enriched`` as the enrich stage encodes it
   (``EnrichHandler._enriched_record``), one Kafka transaction per batch of a
   transactional producer (batches every 0.3 s); it notes the wall time of each commit;
3. **the server**: ``python -m broker serve`` (the CLI: uvicorn, the read-only archive
   engine, the pages, the live stream) in its own process on a free port;
4. **the clients**: each request of :func:`requests_` is asked ``--repeat`` times over
   HTTP with httpx (one keep-alive connection), and the same request in the same round
   in-process through FastAPI's TestClient on ``make_app`` (no network, no uvicorn; the
   order of the two alternates round by round), so the ratio of the two is measured under
   the same load; then ``--clients`` httpx clients in threads ask the whole mix at once
   for ``--concurrent-rounds`` rounds;
5. **the live stream**: one client holds ``GET /api/stream`` open the whole run; the
   delay from the writer's commit to the client's reading of each Event is its SSE
   delivery latency (both on this machine's clock).

p50, p95, p99 and max of every request are printed (rich tables), with the load average.

Usage: ``python benchmarks/bench_web_serve.py [--events 100000] [--rate 1000] [--repeat 150]
[--clients 4] [--concurrent-rounds 40]``. Kafka: ``MMA_BROKER_TEST_KAFKA`` or
``MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS`` (default 127.0.0.1:9092); the topics are made under
a prefix of the run's own and deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))
DATA = REPO / "tests" / "data"
GW_GROUP = "igwn:MS181101ab"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(home: Path, bootstrap: str, prefix: str, db_url: str):
    from broker.config import settings_class

    return settings_class()(home=home, group_id=f"bench-{prefix.rstrip('.')}",
                            kafka={"bootstrap_servers": bootstrap, "topic_prefix": prefix},
                            archive={"database_url": db_url})


def writer(db_url: str, home: str, bootstrap: str, prefix: str, rate_per_min: float, stop: "mp.Event",
           ready: "mp.Event", out: "mp.Queue", seed: int = 11) -> None:
    """The arrivals (module docstring, 2.): runs until ``stop`` is set; puts
    ``(event_id, commit wall time)`` on ``out`` for each Event, then ``None``."""
    from types import SimpleNamespace

    from broker.archive import Archive, ArchiveItem, KafkaMeta, PostgresRawStore
    from broker.enrich.groups import GroupStore
    from broker.enrich.store import index_positions
    from broker.event import Event
    from broker.kafka import make_producer
    from broker.pipeline.enrich import EnrichHandler
    from broker.sources import decode

    s = _settings(Path(home), bootstrap, prefix, db_url)
    raw = sorted((DATA / "ztf").rglob("*.avro"))[0].read_bytes()
    base = decode(raw)[0].model_dump()
    archive = Archive(db_url, PostgresRawStore())
    groups = GroupStore(archive.engine)
    topic = s.topic(s.enrich.enriched_topic)
    handler = SimpleNamespace(enriched_topic=topic)  # _enriched_record only reads the topic
    producer = make_producer(s, **{"transactional.id": f"{s.group_id}.writer", "transaction.timeout.ms": 60_000})
    producer.init_transactions(30)
    rng = np.random.default_rng(seed)
    ready.set()
    period = 0.3
    owed, k, offset = 0.0, 0, 0
    t_next = time.monotonic()
    try:
        while not stop.is_set():
            owed += rate_per_min / 60.0 * period
            n = int(owed)
            owed -= n
            events = []
            now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
            for _ in range(n):
                k += 1
                ra, dec = float(rng.uniform(0, 360)), float(np.degrees(np.arcsin(rng.uniform(-1, 1))))
                loc = dict(base["localization"], ra=ra, dec=dec)
                candid = 9_000_000_000_000_000_000 + k
                obj = f"ZTF26bench{k:06d}"
                props = dict(base["properties"], candid=candid, objectId=obj)
                events.append(Event.model_validate(dict(base, id=f"ztf:{candid}", upstream_id=obj, time=now,
                                                        localization=loc, properties=props)))
            if events:
                archive.write_batch([ArchiveItem(event=ev, raw=raw, kafka=KafkaMeta("bench.ztf", 0, offset + i))
                                     for i, ev in enumerate(events)])
                offset += len(events)
                index_positions(archive.engine, events)
                states = groups.add_many([(ev, None) for ev in events])
                producer.begin_transaction()
                for ev, st in zip(events, states):
                    enrichment = {"localization": None, "group": EnrichHandler._group_json(ev, st),
                                  "crossmatch": {}, "coincidences": [], "error": None, "provenance": {}}
                    rec = EnrichHandler._enriched_record(handler, ev, enrichment)
                    producer.produce(rec.topic, rec.value, rec.key, headers=rec.headers)
                producer.commit_transaction(30)
                t = time.time()
                for ev in events:
                    out.put((ev.id, t))
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))
    finally:
        out.put(None)
        archive.close()


class StreamReader(threading.Thread):
    """Holds ``GET /api/stream`` open; notes the wall time each Event id is read."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        import httpx

        self.url = url
        self.seen: dict[str, float] = {}
        self.live = threading.Event()
        self.client = httpx.Client(timeout=httpx.Timeout(10.0, read=60.0))
        self.error: str | None = None

    def run(self) -> None:
        import httpx

        try:
            with self.client.stream("GET", self.url) as r:
                kind = None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        doc = json.loads(line[6:])
                        if kind == "event":
                            self.seen.setdefault(doc["id"], time.time())
                        elif kind == "status" and doc.get("state") == "live":
                            self.live.set()
                    elif not line:
                        kind = None
        except (httpx.HTTPError, RuntimeError) as exc:
            self.error = type(exc).__name__


def requests_(gw_peak: tuple[float, float], rng) -> dict:
    """name → callable returning (path, params): the mix every client asks.
    ``gw_peak``: (RA, Dec) of MS181101ab's sky-map peak, deg."""

    def cone():
        return {"ra_deg": round(float(rng.uniform(0, 360)), 4),
                "dec_deg": round(float(np.degrees(np.arcsin(rng.uniform(-1, 1)))), 4), "radius_deg": 1.0}

    return {
        "API list, first page (50)": lambda: ("/api/events", {"limit": 50}),
        "API cone 1°, random centre": lambda: ("/api/events", cone()),
        "API cone at the GW map's peak": lambda: ("/api/events", {"ra_deg": gw_peak[0], "dec_deg": gw_peak[1],
                                                                  "radius_deg": 0.5}),
        "API q prefix (MS1811)": lambda: ("/api/events", {"q": "MS1811"}),
        "API group (igwn:MS181101ab)": lambda: (f"/api/groups/{GW_GROUP}", None),
        "page / (live, 50 newest)": lambda: ("/", None),
        "page /search cone 1°": lambda: ("/search", cone()),
        "page /search q=MS1811": lambda: ("/search", {"q": "MS1811"}),
        "page /groups/igwn:MS181101ab": lambda: (f"/groups/{GW_GROUP}", None),
        "sky map PNG (cached)": lambda: (f"/groups/{GW_GROUP}/skymap.png", None),
    }


def client_proc(base: str, gw_peak: tuple[float, float], seed: int, rounds: int, done, out) -> None:
    """One client of the concurrent phase, in a process of its own (no GIL shared with the
    others): ``rounds`` times the whole mix in a random order; puts {name: [s, ...]} on ``out``."""
    import httpx

    rng = np.random.default_rng(seed)
    mine = requests_(gw_peak, rng)
    times: dict[str, list[float]] = {name: [] for name in mine}
    with httpx.Client(base_url=base, timeout=30) as c:
        c.get("/health")
        for _ in range(rounds):
            for name in rng.permutation(list(mine)):
                path, params = mine[name]()
                t = time.perf_counter()
                r = c.get(path, params=params)
                times[name].append(time.perf_counter() - t)
                if r.status_code != 200:
                    raise SystemExit(f"{name}: {r.status_code}")
            with done.get_lock():
                done.value += 1
    out.put(times)


def _pcts(ts: list[float]) -> tuple[float, float, float, float]:
    ms = np.asarray(ts) * 1e3
    return (float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(np.percentile(ms, 99)),
            float(ms.max()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=1000.0, help="Events per minute arriving during the run")
    ap.add_argument("--repeat", type=int, default=150, help="rounds of the sequential phase")
    ap.add_argument("--clients", type=int, default=4, help="httpx clients of the concurrent phase")
    ap.add_argument("--concurrent-rounds", type=int, default=40)
    ap.add_argument("--days", type=float, default=30.0)
    args = ap.parse_args()

    import httpx
    from fastapi.testclient import TestClient
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from bench_web_api import seed
    from broker.archive import Archive, PostgresRawStore, ensure_embedded_postgres, stop_embedded_postgres
    from broker.kafka import ensure_topics
    from broker.sinks.web import make_app

    console = Console(width=max(Console().width, 170))
    bootstrap = (os.environ.get("MMA_BROKER_TEST_KAFKA") or os.environ.get("MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS")
                 or "127.0.0.1:9092")
    tmp = Path(tempfile.mkdtemp(prefix="mmaserve-", dir="/tmp"))
    prefix = f"b{uuid.uuid4().hex[:8]}."
    server = None
    procs: list = []
    load = [os.getloadavg()[0]]
    try:
        url = ensure_embedded_postgres(tmp / "pg")
        archive = Archive(url, PostgresRawStore())
        archive.migrate()
        decoded, fill_s = seed(archive, args.events, args.days, console)
        settings = _settings(tmp / "home", bootstrap, prefix, url)
        ensure_topics(settings, [settings.topic(settings.enrich.enriched_topic)], partitions=4)
        console.print(f"archive: {archive.total():,} Events (copies made in {fill_s:.0f} s); Kafka {bootstrap}, "
                      f"topics under {prefix}")

        # the server: the CLI, in its own process
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_")}
        env.update(MMA_BROKER_HOME=str(tmp / "home"), MMA_BROKER_GROUP_ID=settings.group_id,
                   MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS=bootstrap, MMA_BROKER_KAFKA__TOPIC_PREFIX=prefix,
                   MMA_BROKER_ARCHIVE__DATABASE_URL=url, MMA_BROKER_METRICS__ENABLED="false",
                   MMA_BROKER_WEB__SESSION_SECRET=uuid.uuid4().hex * 2)
        log = open(tmp / "serve.log", "wb")
        server = subprocess.Popen([sys.executable, "-m", "broker", "serve", "--host", "127.0.0.1", "--port",
                                   str(port)], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        http = httpx.Client(base_url=base, timeout=30)
        deadline = time.monotonic() + 60
        while True:
            try:
                if http.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("serve did not start:\n" + (tmp / "serve.log").read_text()[-3000:])
            time.sleep(0.2)
        inproc = TestClient(make_app(lambda _: None, base, archive.engine, settings))

        # the live stream's client, then the writer
        reader = StreamReader(base + "/api/stream")
        reader.start()
        if not reader.live.wait(30):
            console.print(f"[yellow]the stream did not say live within 30 s ({reader.error or 'no status'})")
        ctx = mp.get_context("spawn")
        stop, ready, produced_q = ctx.Event(), ctx.Event(), ctx.Queue()
        wproc = ctx.Process(target=writer, args=(url, str(tmp / "home"), bootstrap, prefix, args.rate, stop, ready,
                                                 produced_q), daemon=True)
        wproc.start()
        procs.append(wproc)
        if not ready.wait(60):
            raise SystemExit("the writer did not start")
        t_run = time.monotonic()

        rng = np.random.default_rng(7)
        gw = next(ev for ev, _ in decoded if ev.source == "igwn" and ev.alert_type == "preliminary")
        gw_peak = (float(gw.localization.ra_max), float(gw.localization.dec_max))
        reqs = requests_(gw_peak, rng)
        for path, params in (r() for r in reqs.values()):  # warm: the sky map PNG is rendered once, then cached
            assert http.get(path, params=params).status_code == 200, path
            assert inproc.get(path, params=params).status_code == 200, path
        seq = {name: {"uvicorn": [], "in-process": []} for name in reqs}
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("sequential rounds (uvicorn and in-process)", total=args.repeat)
            for i in range(args.repeat):
                for name, make in reqs.items():
                    path, params = make()
                    order = (("uvicorn", http), ("in-process", inproc))
                    for label, client in (order if i % 2 == 0 else order[::-1]):
                        t = time.perf_counter()
                        r = client.get(path, params=params)
                        seq[name][label].append(time.perf_counter() - t)
                        assert r.status_code == 200, (label, name, r.status_code, r.text[:300])
                progress.advance(task)
                load.append(os.getloadavg()[0])

        conc: dict[str, list[float]] = {name: [] for name in reqs}
        done, conc_q = ctx.Value("i", 0), ctx.Queue()
        t_conc = time.monotonic()
        clients = [ctx.Process(target=client_proc, args=(base, gw_peak, 100 + j, args.concurrent_rounds, done, conc_q),
                               daemon=True) for j in range(args.clients)]
        procs.extend(clients)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"{args.clients} concurrent clients (processes)",
                                     total=args.clients * args.concurrent_rounds)
            for c in clients:
                c.start()
            results = []
            while len(results) < len(clients):
                try:
                    results.append(conc_q.get(timeout=0.2))
                except Exception:  # noqa: BLE001 - queue.Empty: not yet
                    if any(c.exitcode not in (None, 0) for c in clients):
                        raise SystemExit("a client process failed") from None
                progress.update(task, completed=done.value)
            for c in clients:
                c.join(10)
        for times in results:
            for name, ts in times.items():
                conc[name].extend(ts)
        conc_s = time.monotonic() - t_conc
        load.append(os.getloadavg()[0])
        time.sleep(3)  # the last arrivals reach the stream
        stop.set()
        produced: dict[str, float] = {}
        while True:
            item = produced_q.get(timeout=60)
            if item is None:
                break
            produced[item[0]] = item[1]
        wproc.join(30)
        run_s = time.monotonic() - t_run
        time.sleep(1)
        lat = [reader.seen[e] - t for e, t in produced.items() if e in reader.seen]

        total = archive.total()
        table = Table(title=f"mma-broker serve at {total:,} Events, {len(produced):,} arriving in {run_s:.0f} s "
                            f"({len(produced) / run_s * 60:,.0f}/min); {args.repeat} sequential rounds")
        for col in ("request", "uvicorn p50", "p95", "p99", "max", "in-process p50", "p95", "ratio p50",
                    f"{args.clients} clients p50", "p95", "p99"):
            table.add_column(col, justify="left" if col == "request" else "right")
        for name in reqs:
            u, ip, c = _pcts(seq[name]["uvicorn"]), _pcts(seq[name]["in-process"]), _pcts(conc[name])
            table.add_row(name, *(f"{x:.1f}" for x in u), f"{ip[0]:.1f}", f"{ip[1]:.1f}", f"{u[0] / ip[0]:.2f}",
                          *(f"{x:.1f}" for x in c[:3]))
        console.print(table)
        n_conc = sum(len(v) for v in conc.values())
        console.print(f"concurrent phase: {n_conc:,} requests in {conc_s:.1f} s ({n_conc / conc_s:.0f} requests/s)")
        if lat:
            p = _pcts(lat)
            console.print(f"live stream: {len(lat):,} of {len(produced):,} arrivals read by the SSE client; "
                          f"commit → client p50 {p[0]:.0f} ms, p95 {p[1]:.0f} ms, p99 {p[2]:.0f} ms, "
                          f"max {p[3]:.0f} ms")
        else:
            console.print(f"live stream: none of {len(produced):,} arrivals read ({reader.error or 'no events'})")
        console.print(f"load average (1 min) during the run: {min(load):.2f} to {max(load):.2f}")
        archive.close()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
        try:
            from tests.conftest import delete_topics

            delete_topics(bootstrap, prefix)
        except Exception as exc:  # noqa: BLE001 - clean-up only
            console.print(f"topics under {prefix} not deleted: {exc}")
        stop_embedded_postgres(tmp / "pg")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
