"""Benchmark: real ZTF alerts end to end — Kafka → decode → archive → ``mma.events``.

One run, on the same bytes:

(a) naive       ``list(fastavro.reader(msg))`` per message (full decode), in this process
(b) ours        ``broker.sources.decode(msg)`` (decode + normalize), in this process
(c) 1 worker    ``mma-broker run --stage ingest --until-caught-up`` as a subprocess (ZTF
                upstream only) over a 4-partition ``<prefix>ztf_YYYYMMDD_programid1``
                topic filled beforehand
(d) 2 workers   two such processes, same group id, fresh topic, group and database
(e) latency     optional: a real GCN VOEvent every 100 ms while ZTF alerts flow into one
                ``mma-broker run --stage ingest`` with the default upstreams (notices and
                ZTF in separate consumers); latency = seen on ``mma.events`` − produced upstream

Messages. The 36 real alerts under ``tests/data/ztf`` are repeated to ``--n`` messages,
one alert per message (multi-alert files split). A repeated alert would have the same
``candid``, hence the same Event.id, and the archive would skip it as a redelivery,
so copy ``k`` of an alert gets ``candid + k·10^15`` (top-level ``candid`` and
``candidate.candid``) and nothing else changes: the record prefix up to ``candidate``
is re-encoded with the original writer schema and the rest of the body (history,
cutouts) is the original bytes. Copy 0 of a single-alert file is the file itself.

Timing of (c)/(d). The topic is filled first, so no producer competes for the CPU;
then the workers start. The first to join takes every partition until the other
joins (a commit during that rebalance is safe since ``broker.kafka.commit_offsets``),
so the rate counts only batches from the moment the group is seen stable with all
workers. Start-up and the idle wait before ``--until-caught-up`` stops are excluded:
the archive's ``ingested_at`` is each batch transaction's start (``now()``), so from
the first to the last distinct value lie all batches but the last, and alerts/s =
rows written before the last batch ÷ that span. The CPU used meanwhile by each
process (workers, Kafka broker, PostgreSQL, this script, the rest of the machine) is
sampled with psutil (a dependency of pgserver) and printed as mean cores.

Nothing under ``broker/`` is changed. The embedded PostgreSQL lives in a temporary
directory and is stopped and deleted at the end, with the Kafka topics and groups of
the run. Run: ``python benchmarks/bench_e2e.py [--n 20000] [--latency-s 30] [--profile always]
[--bootstrap HOST:PORT] [--ztf-config JSON]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import confluent_kafka
import fastavro
import psycopg
from rich.console import Console
from rich.table import Table

from broker.archive.embedded import ensure_embedded_postgres, stop_embedded_postgres
from broker.config import Settings, settings_class
from broker.kafka import DeliveryTracker, ensure_topics, flush_or_raise, make_consumer, make_producer
from broker.sources import decode, upstream_topic

ROOT = Path(__file__).resolve().parents[1]
ZTF_DIR = ROOT / "tests" / "data" / "ztf"
VOEVENT = ROOT / "tests" / "data" / "voevent" / "pygcn" / "gbm_flt_pos.xml"
CANDID_STRIDE = 10**15
"""Copy k of an alert has candid + k·CANDID_STRIDE (k ≤ ~6,700 keeps it below 2**63)."""
PARTITIONS = 4
TARGET_DECODE, TARGET_WORKER, TARGET_SPEEDUP = 2000.0, 1000.0, 1.8
TARGET_P50_MS, TARGET_P99_MS = 100.0, 500.0


# ------------------------------------------------------------------ messages
def _zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@dataclass
class _Base:
    """One real alert: the parts needed to make copies with another candid."""

    original: bytes | None  # the file's bytes if it holds this one alert only
    header: bytes  # container header (magic, schema, codec null, sync)
    sync: bytes
    prefix_schema: dict  # parsed: record fields up to and including candidate
    record: dict
    tail: bytes  # body bytes after candidate: history and cutouts, as encoded originally


def load_bases(data_dir: Path) -> list[_Base]:
    """Every real ZTF alert under ``data_dir``, split one per message."""
    bases = []
    for path in sorted(data_dir.rglob("*.avro")):
        raw = path.read_bytes()
        reader = fastavro.reader(io.BytesIO(raw))
        schema, records = reader.writer_schema, list(reader)
        names = [f["name"] for f in schema["fields"]]
        prefix = fastavro.parse_schema(dict(schema, fields=schema["fields"][: names.index("candidate") + 1]))
        full = fastavro.parse_schema(schema)
        for rec in records:
            sync = os.urandom(16)
            head = io.BytesIO()
            fastavro.writer(head, full, [], sync_marker=sync)
            body, pre = io.BytesIO(), io.BytesIO()
            fastavro.schemaless_writer(body, full, rec)
            fastavro.schemaless_writer(pre, prefix, rec)
            assert body.getvalue().startswith(pre.getvalue()), path
            bases.append(_Base(raw if len(records) == 1 else None, head.getvalue(), sync, prefix, rec,
                               body.getvalue()[len(pre.getvalue()):]))
    return bases


def make_copy(base: _Base, k: int) -> bytes:
    """Copy ``k`` of an alert as a one-alert container: candid + k·CANDID_STRIDE."""
    if k == 0 and base.original is not None:
        return base.original
    rec = dict(base.record, candid=base.record["candid"] + k * CANDID_STRIDE)
    if rec["candid"] >= 2**63:
        raise ValueError(f"copy {k} of candid {base.record['candid']}: beyond Avro long")
    rec["candidate"] = dict(base.record["candidate"], candid=rec["candid"])
    pre = io.BytesIO()
    fastavro.schemaless_writer(pre, base.prefix_schema, rec)
    body = pre.getvalue() + base.tail
    return base.header + _zigzag(1) + _zigzag(len(body)) + body + base.sync


def make_messages(bases: list[_Base], n: int) -> list[bytes]:
    """``n`` messages cycling through the bases; checks one copy of each base fully."""
    msgs = [make_copy(bases[i % len(bases)], i // len(bases)) for i in range(n)]
    for i, base in enumerate(bases[: min(n, len(bases))]):
        j = i + len(bases) if n > i + len(bases) else i
        (rec,) = fastavro.reader(io.BytesIO(msgs[j]))
        want = dict(base.record, candid=base.record["candid"] + (j // len(bases)) * CANDID_STRIDE)
        want["candidate"] = dict(base.record["candidate"], candid=want["candid"])
        assert rec == want, f"copy {j} differs from its real alert beyond candid"
    candids = {bases[i % len(bases)].record["candid"] + (i // len(bases)) * CANDID_STRIDE for i in range(n)}
    assert len(candids) == n, "candid rewrite did not give distinct candids"
    ids = {ev.id for m in msgs[: 4 * len(bases)] for ev in decode(m)}
    assert len(ids) == min(n, 4 * len(bases)), "candid rewrite did not give distinct Event ids"
    return msgs


# ------------------------------------------------------------------ in-process decode
def time_decoders(msgs: list[bytes]) -> dict[str, float]:
    """Alerts/s of (a) naive fastavro and (b) broker.sources.decode, chunks interleaved."""
    fns = {"naive": lambda m: list(fastavro.reader(io.BytesIO(m))), "ours": decode}
    spent = dict.fromkeys(fns, 0.0)
    for start in range(0, len(msgs), 500):
        part = msgs[start:start + 500]
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for m in part:
                fn(m)
            spent[name] += time.perf_counter() - t0
    return {name: len(msgs) / t for name, t in spent.items()}


# ------------------------------------------------------------------ Kafka / PostgreSQL
@dataclass
class Phase:
    """One isolated run: own topic prefix, group id, database and raw store."""

    name: str
    prefix: str
    group: str
    db_url: str
    home: Path
    bootstrap: str
    ztf_config: dict | None = None
    """Extra librdkafka settings for the workers' ZTF consumer (``--ztf-config``)."""

    def settings(self) -> Settings:
        return settings_class()(home=self.home, group_id=self.group,
                                kafka={"topic_prefix": self.prefix, "bootstrap_servers": self.bootstrap},
                                archive={"database_url": self.db_url})

    def env(self, batch_size: int, *, ztf_only: bool = False) -> dict[str, str]:
        """Environment of a worker subprocess. ``ztf_only``: the ZTF upstream alone (the
        default notices upstream would find no topic, and ``--until-caught-up`` never
        ends while a consumer has no partition; see the README)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_")}
        env.update(MMA_BROKER_HOME=str(self.home), MMA_BROKER_GROUP_ID=self.group,
                   MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS=self.bootstrap,
                   MMA_BROKER_KAFKA__TOPIC_PREFIX=self.prefix, MMA_BROKER_ARCHIVE__DATABASE_URL=self.db_url,
                   MMA_BROKER_INGEST__BATCH_SIZE=str(batch_size))
        if ztf_only:
            ztf = next(up for up in settings_class()().upstreams if up.name == "ztf")
            ztf.config.update(self.ztf_config or {})
            env["MMA_BROKER_UPSTREAMS"] = json.dumps([ztf.model_dump(mode="json", exclude_none=True)])
        return env


def new_phase(name: str, run_id: str, tmp: Path, server_url: str, bootstrap: str) -> Phase:
    """A fresh database ``bench_<name>`` in the embedded server, topic prefix and group id."""
    db = f"bench_{name}"
    admin = server_url.replace("postgresql+psycopg://", "postgresql://").replace("/mma_broker?", "/postgres?")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    url = server_url.replace("/mma_broker?", f"/{db}?")
    return Phase(name, f"e2e_{run_id}_{name}.", f"e2e_{run_id}_{name}", url, tmp / name, bootstrap)


def produce(settings: Settings, topic: str, msgs: list[bytes]) -> float:
    """Publish ``msgs`` round-robin over the partitions; seconds taken."""
    ensure_topics(settings, [topic], partitions=PARTITIONS)
    producer, tracker = make_producer(settings), DeliveryTracker()
    t0 = time.perf_counter()
    for i, m in enumerate(msgs):
        while True:
            try:
                producer.produce(topic, value=m, partition=i % PARTITIONS, on_delivery=tracker.callback)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    flush_or_raise(producer, tracker, timeout_s=300)
    return time.perf_counter() - t0


@dataclass
class WorkerResult:
    messages: int
    peak_rss_mib: float


def wait_group_stable(settings: Settings, group: str, members: int, timeout_s: float = 120.0) -> None:
    """Wait until ``group`` is Stable with ``members`` members (the workers have joined)."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
            if desc.state == ConsumerGroupState.STABLE and len(desc.members) == members:
                return
        except confluent_kafka.KafkaException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"consumer group {group} not stable with {members} member(s) after {timeout_s:.0f} s")


def _vm_hwm_mib(pid: int) -> float | None:
    """A process's own peak RSS from /proc (VmHWM), MiB.

    Not ``wait4``'s ``ru_maxrss``: on Linux a child that execs keeps the high-water mark
    of the image it replaced, i.e. of this (1.5 GB-holding) parent, so ru_maxrss
    reported ~1.9 GB for workers whose own peak was ~0.46 GB.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class CpuSampler:
    """CPU seconds used by each process of the run, sampled every ``interval_s``.

    Tracks the workers, the Kafka broker (the process listening on the bootstrap port),
    the embedded PostgreSQL (postmaster and all its children), this process, and the
    rest of the machine (busy CPU time of all cores minus the tracked processes).
    :meth:`cores` gives the mean number of cores each used between two times.
    """

    def __init__(self, workers: dict[str, int], bootstrap: str, pgdata: Path, interval_s: float = 0.5) -> None:
        import psutil  # a dependency of pgserver

        self._psutil = psutil
        self.procs = {name: psutil.Process(pid) for name, pid in workers.items()}
        self.hwm_mib: dict[str, float] = {}
        """Each worker's own peak RSS (VmHWM), MiB: the last value read before it exited."""
        port = int(bootstrap.split(",")[0].rsplit(":", 1)[1])
        kafka = [c.pid for c in psutil.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid]
        self.kafka = psutil.Process(kafka[0]) if kafka else None
        self.postmaster = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))
        self.interval_s = interval_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._seen: dict[int, float] = {}  # PostgreSQL pid → last CPU seconds (backends come and go)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _cpu(p) -> float:
        t = p.cpu_times()
        return t.user + t.system

    def sample(self) -> None:
        ps = self._psutil
        now: dict[str, float] = {}
        for name, p in self.procs.items():
            try:
                now[name] = self._cpu(p)
                self.hwm_mib[name] = _vm_hwm_mib(p.pid) or self.hwm_mib.get(name, 0.0)
            except ps.NoSuchProcess:
                now[name] = self.samples[-1][1].get(name, 0.0) if self.samples else 0.0
        if self.kafka is not None:
            now["Kafka broker"] = self._cpu(self.kafka)
        for p in [self.postmaster, *self.postmaster.children(recursive=True)]:
            try:
                self._seen[p.pid] = self._cpu(p)
            except ps.NoSuchProcess:
                pass
        now["PostgreSQL"] = sum(self._seen.values())
        now["bench (this process)"] = self._cpu(ps.Process())
        total = ps.cpu_times()
        busy = sum(total) - total.idle - getattr(total, "iowait", 0.0)
        now["rest of the machine"] = busy - sum(now.values())
        now["(cores idle waiting for disk I/O)"] = getattr(total, "iowait", 0.0)
        self.samples.append((time.time(), now))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def start(self) -> "CpuSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def cores(self, t0: float, t1: float) -> dict[str, float]:
        """Mean cores used per process between the samples nearest to ``t0`` and ``t1`` (Unix s)."""
        a = min(self.samples, key=lambda x: abs(x[0] - t0))
        b = min(self.samples, key=lambda x: abs(x[0] - t1))
        dt = b[0] - a[0]
        return {k: (b[1][k] - a[1].get(k, 0.0)) / dt for k in b[1]} if dt > 0 else {}


def run_workers(phase: Phase, n_workers: int, batch_size: int, log_dir: Path, msgs: list[bytes],
                topic: str, pgdata: Path) -> tuple[list[WorkerResult], float, CpuSampler]:
    """``n_workers`` × ``mma-broker run --until-caught-up`` over a topic filled beforehand.

    The topic is filled first (so the producer does not compete for the CPU), then the
    workers start; the first to join takes all partitions until the others join and
    the cooperative-sticky assignor hands them their share. Returns the workers'
    results, the time (Unix s) the group was first seen stable with ``n_workers``
    members (rates and CPU from then on are the steady state), and the CPU samples.
    """
    s = phase.settings()
    produce(s, s.topic(topic), msgs)
    cmd = [sys.executable, "-m", "broker", "run", "--stage", "ingest", "--until-caught-up", "--idle", "5"]
    procs = []
    try:
        for i in range(n_workers):
            out = (log_dir / f"{phase.name}-{i}.log").open("w")
            procs.append((subprocess.Popen(cmd, env=phase.env(batch_size, ztf_only=True), cwd=ROOT, stdout=out,
                                           stderr=subprocess.STDOUT), out))
        sampler = CpuSampler({f"worker {i + 1}": p.pid for i, (p, _) in enumerate(procs)},
                             s.kafka.bootstrap_servers, pgdata).start()
        wait_group_stable(s, f"{phase.group}.ingest.ztf", n_workers)
        stable_at = time.time()
        results = []
        for i, (p, out) in enumerate(procs):
            _, status, _usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            out.close()
            text = Path(out.name).read_text()
            if p.returncode != 0:
                raise RuntimeError(f"worker {out.name} exited {p.returncode}: {text[-1500:]}")
            m = re.search(r"this run: (\d+) message", text)
            results.append(WorkerResult(int(m.group(1)) if m else -1, sampler.hwm_mib.get(f"worker {i + 1}", float("nan"))))
        sampler.stop()
        return results, stable_at, sampler
    finally:
        for p, out in procs:
            if p.returncode is None:
                p.kill()
                p.wait()
            out.close()


def archive_rate(db_url: str, since: float | None = None) -> tuple[int, int, float, float, float]:
    """(rows, batches, alerts/s, span s, last batch start Unix s) from ``ingested_at``
    (each batch's transaction start).

    Only batches that started at/after ``since`` (Unix time) count. The rate is the rows
    of all batches but the last over the time from the first batch to the last one.
    """
    url = db_url.replace("postgresql+psycopg://", "postgresql://")
    cond = "ingested_at >= to_timestamp(%s)" if since is not None else "true"
    params = (since,) if since is not None else ()
    with psycopg.connect(url) as conn:
        rows, batches, t_min, t_max = conn.execute(
            f"SELECT count(*), count(DISTINCT ingested_at), min(ingested_at), max(ingested_at) FROM events WHERE {cond}",
            params).fetchone()
        if rows == 0:
            return 0, 0, float("nan"), 0.0, float("nan")
        before_last = conn.execute(f"SELECT count(*) FROM events WHERE {cond} AND ingested_at < %s",
                                   (*params, t_max)).fetchone()[0]
    span = (t_max - t_min).total_seconds()
    return rows, batches, before_last / span if span > 0 else float("nan"), span, t_max.timestamp()


# ------------------------------------------------------------------ GCN latency under ZTF load
def gcn_copy(voevent: bytes, j: int) -> bytes:
    """The real VOEvent with ``_bench<j>`` appended to its IVORN (Event.id is ``gcn:`` + IVORN)."""
    m = re.search(rb'ivorn="([^"]+)"', voevent)
    return voevent[: m.end(1)] + f"_bench{j}".encode() + voevent[m.end(1):]


def measure_latency(phase: Phase, bases: list[_Base], first_k: int, ztf_rate: float, duration_s: float,
                    batch_size: int, log_dir: Path) -> dict:
    """GCN notice produced upstream → its Event received from ``mma.events``, under ZTF load.

    One worker (``mma-broker run``) consumes a ZTF topic fed at ``ztf_rate`` alerts/s
    (copies ``first_k``, ``first_k+1``, ... so every candid is new) and a GCN Classic
    VOEvent topic fed every 100 ms. A consumer in this process reads ``mma.events``
    (header ``mma.event.id``) and notes when each GCN Event arrives.
    """
    s = phase.settings()
    voevent = VOEVENT.read_bytes()
    ztf_topic = s.topic(upstream_topic(make_copy(bases[0], 0)))
    gcn_topic = s.topic(upstream_topic(voevent))
    events_topic = s.topic(s.events_topic)
    ensure_topics(s, [ztf_topic, gcn_topic, events_topic, s.topic(s.dlq_topic)], partitions=PARTITIONS)
    sent: dict[str, float] = {}
    seen: dict[str, tuple[float, float]] = {}
    n_ztf_seen = [0, 0]  # ZTF events seen on mma.events, ZTF alerts produced
    stop, gcn_on = threading.Event(), threading.Event()

    def read_events() -> None:
        consumer = make_consumer(s, phase.group + ".latency", **{"fetch.wait.max.ms": 10})
        consumer.subscribe([events_topic])
        while not stop.is_set():
            msg = consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            t = time.time()
            eid = dict(msg.headers() or []).get("mma.event.id", b"").decode()
            if eid.startswith("gcn:"):
                seen.setdefault(eid, (t, msg.timestamp()[1] / 1000.0))
            else:
                n_ztf_seen[0] += 1
        consumer.close()

    def feed_ztf() -> None:
        producer = make_producer(s)
        t0, i = time.monotonic(), 0
        while not stop.is_set():
            k, b = divmod(i, len(bases))
            producer.produce(ztf_topic, value=make_copy(bases[b], first_k + k), partition=i % PARTITIONS)
            producer.poll(0)
            i += 1
            n_ztf_seen[1] = i
            delay = t0 + i / ztf_rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        producer.flush(30)

    def feed_gcn() -> None:
        producer = make_producer(s, **{"linger.ms": 0})
        gcn_on.wait()
        t0, j = time.monotonic(), 0
        while not stop.is_set() and time.monotonic() - t0 < duration_s:
            data = gcn_copy(voevent, j)
            (ev,) = decode(data)
            sent[ev.id] = time.time()
            producer.produce(gcn_topic, value=data)
            producer.poll(0)
            j += 1
            time.sleep(max(0.0, t0 + j * 0.1 - time.monotonic()))
        producer.flush(30)

    threads = [threading.Thread(target=f, daemon=True) for f in (read_events, feed_ztf, feed_gcn)]
    for t in threads:
        t.start()
    log = (log_dir / "latency-worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "broker", "run", "--stage", "ingest"], env=phase.env(batch_size), cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while n_ztf_seen[0] == 0 and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.2)
    time.sleep(2.0)  # past the first (backlog) batch
    gcn_on.set()
    threads[2].join()
    time.sleep(3.0)  # stragglers
    stop.set()
    worker.terminate()
    worker.wait(60)
    log.close()
    for t in threads[:2]:
        t.join(30)
    lat = sorted((seen[i][0] - t) * 1e3 for i, t in sent.items() if i in seen)
    lat_kafka = sorted((seen[i][1] - t) * 1e3 for i, t in sent.items() if i in seen)

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    return {"sent": len(sent), "seen": len(lat), "p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "max": max(lat, default=float("nan")),
            "p50_ts": pct(lat_kafka, 0.5), "p99_ts": pct(lat_kafka, 0.99), "ztf_rate": ztf_rate,
            "ztf_produced": n_ztf_seen[1], "ztf_events_seen": n_ztf_seen[0]}


# ------------------------------------------------------------------ profile
PROFILE_POINTS = [
    ("consume (Kafka fetch)", "cimpl", "consume"),
    ("decode + normalize", "ingest.py", "decode_message"),
    ("archive write_batch (total)", "store.py", "write_batch"),
    ("  raw segment write + fsync", "raw.py", "put_many"),
    ("  rows: Event → row dicts", "rows.py", "event_rows"),
    ("  COPY + INSERT ... ON CONFLICT", "store.py", "_insert_rows"),
    ("Event → Avro (EventCodec.encode)", "serde.py", "encode"),
    ("produce mma.events", "cimpl", "produce"),
    ("flush (wait for acks)", "kafka.py", "flush_or_raise"),
    ("commit offsets", "cimpl", "commit"),
]


def profile_inprocess(phase: Phase, msgs: list[bytes], batch_size: int) -> tuple[float, list[tuple[str, float]], str]:
    """Run one IngestStage in this process under cProfile over ``msgs`` on a fresh topic."""
    from broker.app import open_archive, provenance
    from broker.pipeline.ingest import IngestStage
    from broker.upstreams import make_upstream_consumer

    s = phase.settings()
    produce(s, s.topic(upstream_topic(msgs[0])), msgs)
    archive = open_archive(s)
    ensure_topics(s, [s.topic(s.events_topic), s.topic(s.dlq_topic)], partitions=PARTITIONS)
    ztf = next(up for up in s.upstreams if up.name == "ztf")
    stage = IngestStage(make_upstream_consumer(s, ztf), make_producer(s), archive,
                        events_topic=s.topic(s.events_topic), dlq_topic=s.topic(s.dlq_topic),
                        provenance=provenance(s, "ingest"), batch_size=batch_size)
    # wait for the assignment outside the profile, then profile batches only
    first = []
    while not first:
        first = stage.consumer.consume(num_messages=batch_size, timeout=1.0)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    stage.process(first)
    while stage.stats.messages < len(msgs):
        batch = stage.consumer.consume(num_messages=batch_size, timeout=1.0)
        if batch:
            stage.process(batch)
    prof.disable()
    total = time.perf_counter() - t0
    stage.consumer.close()
    archive.close()
    stats = pstats.Stats(prof)
    found = []
    for label, file_part, func in PROFILE_POINTS:
        ct = sum(v[3] for (f, _, fn), v in stats.stats.items()
                 if (fn == func and file_part in f) or (file_part == "cimpl" and fn.startswith(f"<method '{func}' of 'cimpl.")))
        found.append((label, ct))
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(15)
    return len(msgs) / total, found, text.getvalue()


# ------------------------------------------------------------------ main
def cleanup_kafka(settings: Settings, run_id: str) -> None:
    """Delete this run's topics and consumer groups (best effort; Kafka itself keeps running)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    topics = [t for t in admin.list_topics(timeout=30).topics if t.startswith(f"e2e_{run_id}_")]
    for fut in (admin.delete_topics(topics, operation_timeout=30).values() if topics else []):
        try:
            fut.result()
        except confluent_kafka.KafkaException:
            pass
    groups = [g.group_id for g in admin.list_consumer_groups().result().valid if g.group_id.startswith(f"e2e_{run_id}_")]
    for fut in (admin.delete_consumer_groups(groups).values() if groups else []):
        try:
            fut.result()
        except confluent_kafka.KafkaException:
            pass


def verdict(value: float, target: float) -> str:
    return "[green]meets[/]" if value >= target else "[red]MISSES[/]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="ZTF messages per phase (default 20000)")
    parser.add_argument("--batch-size", type=int, default=500, help="MMA_BROKER_INGEST__BATCH_SIZE of the workers")
    parser.add_argument("--latency-s", type=float, default=30.0, help="GCN latency phase length, s (0: skip)")
    parser.add_argument("--latency-ztf-rate", type=float, default=None,
                        help="ZTF alerts/s during the latency phase (default: 80%% of one worker's rate, at most 1000)")
    parser.add_argument("--profile", choices=["auto", "always", "never"], default="auto",
                        help="cProfile an in-process IngestStage (auto: when one worker misses its target)")
    parser.add_argument("--profile-n", type=int, default=5000, help="messages for the profile run")
    parser.add_argument("--bootstrap", default=None,
                        help="Kafka bootstrap servers (default: the broker's setting, MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS)")
    parser.add_argument("--ztf-config", type=json.loads, default=None,
                        help='JSON librdkafka settings added to the workers\' ZTF consumer, e.g. \'{"queued.max.messages.kbytes": 131072}\'')
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 120)
    load0, ncpu = os.getloadavg(), os.cpu_count()
    console.print(f"machine: {ncpu} CPUs (nproc {len(os.sched_getaffinity(0))}), load average at start "
                  f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; Python {sys.version.split()[0]}")

    t0 = time.perf_counter()
    bases = load_bases(ZTF_DIR)
    msgs = make_messages(bases, args.n)
    topic = upstream_topic(msgs[0])
    console.print(
        f"{len(bases)} real ZTF alerts from {ZTF_DIR.relative_to(ROOT)} → {len(msgs)} one-alert messages "
        f"({sum(map(len, msgs)) / 1e6:,.0f} MB), made in {time.perf_counter() - t0:.1f} s. Copy k of an alert has "
        f"candid + k·10^15 (prefix up to `candidate` re-encoded with the original writer schema; history and "
        f"cutouts byte-identical), so every message is a new Event.id and the archive inserts every one.")

    run_id = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="mmae2e-", dir="/tmp"))
    rows = []
    base_settings = settings_class()()
    bootstrap = args.bootstrap or base_settings.kafka.bootstrap_servers
    base_settings = settings_class()(kafka={"bootstrap_servers": bootstrap})
    cpu_tables = []
    try:
        server_url = ensure_embedded_postgres(tmp / "pg")
        console.print(f"embedded PostgreSQL in {tmp / 'pg'}; Kafka {bootstrap}; run id {run_id}")

        rates = time_decoders(msgs)
        rows.append(("(a) naive fastavro.reader per message", "1 process", rates["naive"], None, ""))
        rows.append(("(b) decode + normalize (broker.sources.decode)", "1 process", rates["ours"], TARGET_DECODE, ""))

        one: dict[int, float] = {}
        for n_workers in (1, 2):
            phase = new_phase(f"w{n_workers}", run_id, tmp, server_url, bootstrap)
            phase.ztf_config = args.ztf_config
            load = os.getloadavg()[0]
            res, stable_at, sampler = run_workers(phase, n_workers, args.batch_size, tmp, msgs, topic, tmp / "pg")
            n_rows, batches, rate_all, span, _ = archive_rate(phase.db_url)
            if n_rows != len(msgs):
                raise RuntimeError(f"{phase.name}: archive holds {n_rows} rows, expected {len(msgs)}")
            n_steady, _, rate, span_steady, last_at = archive_rate(phase.db_url, since=stable_at)
            one[n_workers] = rate
            split = "+".join(str(r.messages) for r in res)
            rss = ", ".join(f"{r.peak_rss_mib:,.0f}" for r in res)
            note = (f"{n_steady} rows over {span_steady:.1f} s once all workers were in the group; first to last "
                    f"batch: {rate_all:,.0f}/s, {batches} batches over {span:.1f} s; msgs/worker {split}; "
                    f"peak RSS MiB {rss}; load1 {load:.2f}")
            cores = sampler.cores(stable_at, last_at)
            cpu_tables.append((f"{n_workers} worker(s), {last_at - stable_at:.1f} s", cores))
            label = "(c) full path, 1 worker" if n_workers == 1 else "(d) full path, 2 workers (total)"
            rows.append((label, f"{n_workers} proc", rate, TARGET_WORKER * (1 if n_workers == 1 else TARGET_SPEEDUP), note))
        speedup = one[2] / one[1]

        table = Table(title=f"ZTF end to end, {len(msgs)} real alerts, batch {args.batch_size}")
        for col in ("path", "where", "alerts/s", "× naive", "target", "", "notes"):
            table.add_column(col, justify="right" if col in ("alerts/s", "× naive", "target") else "left", overflow="fold")
        for label, where, rate, target, note in rows:
            table.add_row(label, where, f"{rate:,.0f}", f"{rate / rates['naive']:.2f}", f"≥ {target:,.0f}" if target else "",
                          verdict(rate, target) if target else "", note)
        console.print(table)
        console.print(f"two workers / one worker = {speedup:.2f}× (target ≥ {TARGET_SPEEDUP}×: "
                      f"{'meets' if speedup >= TARGET_SPEEDUP else 'MISSES'}); per worker with two: {one[2] / 2:,.0f}/s")
        ctab = Table(title=f"CPU used while the workers consumed (mean cores; the machine has {ncpu})")
        ctab.add_column("process")
        for title, _ in cpu_tables:
            ctab.add_column(title, justify="right")
        names = sorted(dict.fromkeys(k for _, c in cpu_tables for k in c), key=lambda k: (k.startswith("("), k))
        for name in names:
            ctab.add_row(name, *(f"{c[name]:.2f}" if name in c else "" for _, c in cpu_tables))
        ctab.add_row("all busy", *(f"{sum(v for k, v in c.items() if not k.startswith('(')):.2f}" for _, c in cpu_tables))
        console.print(ctab)

        if args.latency_s > 0:
            rate = args.latency_ztf_rate or min(1000.0, 0.8 * one[1])
            phase = new_phase("lat", run_id, tmp, server_url, bootstrap)
            lat = measure_latency(phase, bases, args.n // len(bases) + 1, rate, args.latency_s, args.batch_size, tmp)
            console.print(
                f"GCN VOEvent ({VOEVENT.name}, IVORN suffixed per copy) every 100 ms under {lat['ztf_rate']:,.0f} ZTF alerts/s "
                f"(1 worker, {lat['ztf_produced']} ZTF alerts produced): {lat['seen']}/{lat['sent']} seen on mma.events; "
                f"latency produce → received p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms, max {lat['max']:.0f} ms "
                f"(targets p50 ≤ {TARGET_P50_MS:.0f}, p99 ≤ {TARGET_P99_MS:.0f}); produce → mma.events CreateTime "
                f"p50 {lat['p50_ts']:.0f} ms, p99 {lat['p99_ts']:.0f} ms. This is ingest only: HERMES publishing "
                f"does not exist yet.")

        if args.profile == "always" or (args.profile == "auto" and one[1] < TARGET_WORKER):
            phase = new_phase("prof", run_id, tmp, server_url, bootstrap)
            rate, points, top = profile_inprocess(phase, msgs[: args.profile_n], args.batch_size)
            ptab = Table(title=f"where one in-process IngestStage spends its time (cProfile, {args.profile_n} alerts, "
                               f"{rate:,.0f} alerts/s under the profiler)")
            ptab.add_column("part")
            ptab.add_column("s (cumulative)", justify="right")
            ptab.add_column("share", justify="right")
            total = args.profile_n / rate
            for label, ct in points:
                ptab.add_row(label, f"{ct:.2f}", f"{100 * ct / total:.0f}%")
            console.print(ptab)
            console.print(top, markup=False, highlight=False)
        load1 = os.getloadavg()
        console.print(f"load average at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    finally:
        stop_embedded_postgres(tmp / "pg")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            cleanup_kafka(base_settings, run_id)
        except Exception as exc:  # noqa: BLE001 - cleanup must not hide the run's own error
            console.print(f"could not delete this run's Kafka topics/groups: {exc}")


if __name__ == "__main__":
    main()
