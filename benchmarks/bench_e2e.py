"""Benchmark: real ZTF alerts end to end — Kafka → ``mma-broker run --stage ingest`` → archive → ``mma.events``.

What it measures, in one run and on the same bytes (the same messages, written before
each phase to that phase's own input topic):

(a) **1 worker, transactions on** — ``mma-broker run --stage ingest --until-caught-up``
    as a subprocess, ``[kafka] transactions = true`` (the default: each batch's
    ``mma.events`` records and its offsets in one Kafka transaction, exactly once);
(b) **1 worker, transactions off** — the same with ``MMA_BROKER_KAFKA__TRANSACTIONS=false``
    (produce, wait for the acks, then commit: at least once). (a)/(b) is the
    throughput cost of exactly once;
(c) **cost per alert** of every phase, in core-milliseconds: CPU time (user + system)
    of the worker process tree, of the Kafka server's process tree and of the embedded
    PostgreSQL's process tree (postmaster, backends and their reaped children) over
    the measured interval, divided by the alerts written in it; the worker's time is
    also split by thread (Python threads, librdkafka's ``rdk:*`` threads);
(d) **2 workers, transactions on** — two such processes in one group over the same
    4 partitions (2 + 2); throughput and cost as in (a).

The phases run ``--repeat`` times, interleaved (a, b, d, a, b, d, ...), so that the
load of other users of the machine falls on all of them alike; each figure is given as
the median with its range, and every ratio is taken inside one repeat (the phases of
one repeat ran within a minute of each other) before its median is taken.

Messages. The 36 real alerts under ``tests/data/ztf`` are repeated to ``--n`` messages,
one alert per message (multi-alert files split). A repeated alert would have the same
``candid``, hence the same Event.id, and the archive would skip it as a redelivery,
so copy ``k`` of an alert gets ``candid + k·10^15`` (top-level ``candid`` and
``candidate.candid``) and nothing else changes: the record prefix up to ``candidate``
is re-encoded with the original writer schema and the rest of the body (history,
cutouts) is the original bytes. Copy 0 of a single-alert file is the file itself.
Each phase has its own topic (4 partitions, ``<prefix>ztf_YYYYMMDD_programid1``),
deleted when the phase ends.

Measured interval. Each worker is configured with one upstream, ``ztf``, of kind
``kafka`` on the broker's own cluster (``MMA_BROKER_UPSTREAMS``; so with transactions its
consumed offsets go into the output transaction, the exactly-once path), a fresh group
id, topic prefix (its own input and ``mma.events``), database and home. The workers
start on the empty topic; once the group is stable with every partition assigned
(2 + 2 with two workers), the messages are written with the broker's own producer
settings (lz4). The span measured starts at the first batch after the last message
was acknowledged and ends at the last batch, so it holds no start-up (imports,
migrations, group join, ``init_transactions``), no rebalance, no producer and not the
idle wait before ``--until-caught-up`` stops: the archive's ``ingested_at`` is each
batch transaction's start (``now()``), so between the first and the last of them lie
whole batch cycles; alerts/s = rows of those batches but the last ÷ that span. CPU
times are sampled with psutil every 0.25 s and interpolated at the two ends of the
same span. The Kafka server is shared (other users' clients may use it): its CPU is
also measured for ``--quiet-s`` seconds before each phase, with no worker running,
and shown as "Kafka background".

Checks. Every phase must archive every alert (row count = ``--n``), and its
``mma.events``, read with ``isolation.level=read_committed``, must hold each Event id
once.

Optional: ``--py-spy`` records two more 1-worker, transactions-on phases (not counted
in the figures) with py-spy at 100 Hz — on-CPU samples of the Python threads, then
all samples of the stage loop's thread (``--idle``) — and prints where the worker's
CPU and a batch's wall time go; ``--variant NAME=PATH`` adds a 1-worker,
transactions-on phase per repeat whose workers import ``broker`` from PATH (e.g.
``git archive`` of another commit), for before/after figures from one run;
``--config-variant NAME=JSON`` adds one whose ZTF consumer gets these librdkafka
settings; ``--latency-s 30`` adds the GCN latency phase (a real VOEvent every 100 ms
while ZTF alerts flow into one worker with the default upstreams; latency = seen on
``mma.events`` − produced upstream).

Nothing under ``broker/`` is changed. The embedded PostgreSQL lives in a temporary
directory and is stopped and deleted at the end, with the Kafka topics and groups of
the run (Kafka itself keeps running). Run:
``python benchmarks/bench_e2e.py [--n 20000] [--repeat 3] [--py-spy] [--variant NAME=PATH]
[--config-variant NAME=JSON] [--latency-s 0] [--bootstrap HOST:PORT]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import confluent_kafka
import fastavro
import psutil  # a dependency of pgserver
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
TARGET_RATE = 1500.0
"""Alerts/s of one worker end to end, transactions on (issue 7)."""
TARGET_CORE_MS = 0.3
"""Core-ms per alert of worker + Kafka + PostgreSQL (issue 7)."""
BEFORE_CORE_MS = {"worker": 0.41, "Kafka": 0.04, "PostgreSQL": 0.02, "total": 0.47}
"""Measured before the stage runner and transactions (issue 7)."""
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


def decode_cost(msgs: list[bytes]) -> tuple[float, float]:
    """In this process: (alerts/s, core-ms per alert) of ``broker.sources.decode`` alone."""
    t0, c0 = time.perf_counter(), time.process_time()
    for m in msgs:
        decode(m)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(msgs) / wall, 1e3 * cpu / len(msgs)


# ------------------------------------------------------------------ Kafka / PostgreSQL
@dataclass
class Phase:
    """One isolated run: own topic prefix (outputs), group id, database and home."""

    name: str
    prefix: str
    group: str
    db_url: str
    home: Path
    bootstrap: str
    transactions: bool = True
    pythonpath: str | None = None
    """Where the workers import ``broker`` from (``--variant``); None: this tree."""
    ztf_config: dict | None = None
    """librdkafka settings added to the workers' ZTF consumer (``--config-variant``)."""

    def settings(self) -> Settings:
        return settings_class()(home=self.home, group_id=self.group,
                                kafka={"topic_prefix": self.prefix, "bootstrap_servers": self.bootstrap},
                                archive={"database_url": self.db_url})

    def env(self, batch_size: int, ztf_topic: str | None = None) -> dict[str, str]:
        """Environment of a worker subprocess.

        ``ztf_topic``: one upstream, ``ztf``, of kind ``kafka`` on our own cluster (so
        its offsets go into the output transaction) reading ``<prefix><ztf_topic>``;
        None: the default upstreams under this phase's prefix.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_")}
        env.update(MMA_BROKER_HOME=str(self.home), MMA_BROKER_GROUP_ID=self.group,
                   MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS=self.bootstrap,
                   MMA_BROKER_KAFKA__TOPIC_PREFIX=self.prefix, MMA_BROKER_ARCHIVE__DATABASE_URL=self.db_url,
                   MMA_BROKER_INGEST__BATCH_SIZE=str(batch_size),
                   MMA_BROKER_KAFKA__TRANSACTIONS="true" if self.transactions else "false",
                   MMA_BROKER_METRICS__PORT="0")
        if self.pythonpath is not None:
            env["PYTHONPATH"] = self.pythonpath
        if ztf_topic is not None:
            env["MMA_BROKER_UPSTREAMS"] = json.dumps([{"name": "ztf", "kind": "kafka", "topics": [ztf_topic],
                                                       "config": self.ztf_config or {}}])
        return env


def new_phase(name: str, run_id: str, tmp: Path, server_url: str, bootstrap: str, transactions: bool = True) -> Phase:
    """A fresh database ``bench_<name>`` in the embedded server, topic prefix and group id."""
    db = f"bench_{name}"
    admin = server_url.replace("postgresql+psycopg://", "postgresql://").replace("/mma_broker?", "/postgres?")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    url = server_url.replace("/mma_broker?", f"/{db}?")
    return Phase(name, f"e2e_{run_id}_{name}.", f"e2e_{run_id}_{name}", url, tmp / name, bootstrap, transactions)


def enriched_stamps(phase: Phase) -> list[float]:
    """Sorted record timestamps (Unix s) of the phase's ``mma.events.enriched``, committed records only."""
    s = phase.settings()
    topic = s.topic(s.enrich.enriched_topic)
    c = make_consumer(s, f"{phase.group}.count-enriched", **{"isolation.level": "read_committed",
                                                              "enable.partition.eof": True})
    meta = c.list_topics(topic, timeout=30).topics[topic]
    parts = [confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in meta.partitions]
    c.assign(parts)
    stamps, eof, deadline = [], set(), time.monotonic() + 120
    try:
        while len(eof) < len(parts) and time.monotonic() < deadline:
            for m in c.consume(1000, 1.0):
                if m.error():
                    if m.error().code() == confluent_kafka.KafkaError._PARTITION_EOF:
                        eof.add(m.partition())
                    continue
                stamps.append(m.timestamp()[1] / 1e3)
    finally:
        c.close()
    return sorted(stamps)


def drop_phase(phase: Phase, server_url: str, settings: Settings) -> None:
    """Free the phase's disk: its topics (input ~77 kB an alert), raw segments and database."""
    cleanup_kafka(settings, phase.prefix)
    shutil.rmtree(phase.home, ignore_errors=True)
    admin = server_url.replace("postgresql+psycopg://", "postgresql://").replace("/mma_broker?", "/postgres?")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "bench_{phase.name}" WITH (FORCE)')


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


def wait_group_stable(settings: Settings, group: str, members: int, procs: list[subprocess.Popen],
                      partitions: int = PARTITIONS, timeout_s: float = 120.0) -> None:
    """Wait until ``group`` is Stable with ``members`` members, each assigned some of
    the ``partitions`` and all of them assigned (the workers have joined)."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a worker of {group} exited before the group was stable with {members} member(s)")
        try:
            desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
            held = [len(m.assignment.topic_partitions) if m.assignment else 0 for m in desc.members]
            if (desc.state == ConsumerGroupState.STABLE and len(held) == members and min(held) > 0
                    and sum(held) == partitions):
                return
        except confluent_kafka.KafkaException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"consumer group {group} not stable with {members} member(s) after {timeout_s:.0f} s")


def _vm_hwm_mib(pid: int) -> float | None:
    """A process's own peak RSS from /proc (VmHWM), MiB (not ``ru_maxrss``, which keeps
    the high-water mark of the image a child exec'd over, i.e. of this script)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def kafka_server(bootstrap: str) -> psutil.Process | None:
    """The process listening on the bootstrap port (the Kafka server), if local."""
    port = int(bootstrap.split(",")[0].rsplit(":", 1)[1])
    pids = [c.pid for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid]
    return psutil.Process(pids[0]) if pids else None


def tree_cpu(root: psutil.Process) -> float:
    """CPU seconds (user + system) of ``root`` and all its descendants, live or ended.

    A process that ended and was reaped is in its parent's ``children_user``/
    ``children_system`` (PostgreSQL backends come and go), so each process counts once.
    """
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


_TICK = os.sysconf("SC_CLK_TCK")


def threads_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a process's live threads, summed by thread name (``comm``; Python's
    threads keep the process's name, librdkafka names its own ``rdk:*``)."""
    out: dict[str, float] = defaultdict(float)
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        name = "librdkafka (rdk:*)" if comm.startswith("rdk:") else "Python threads" if comm.startswith("python") else comm
        out[name] += (int(fields[11]) + int(fields[12])) / _TICK
    return dict(out)


class CpuSampler:
    """CPU seconds of each process tree of the run, sampled every ``interval_s``.

    Tracks the workers, the Kafka server, the embedded PostgreSQL (postmaster and all
    its children), this process, the worker's threads by name, and the machine (busy
    time of all cores, iowait). :meth:`at` interpolates linearly between samples.
    """

    def __init__(self, workers: dict[str, int], kafka: psutil.Process | None, pgdata: Path,
                 interval_s: float = 0.25) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in workers.items()}
        self.hwm_mib: dict[str, float] = {}
        self.kafka = kafka
        self.postmaster = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))
        self.interval_s = interval_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._last: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        now: dict[str, float] = {}
        for name, p in self.procs.items():
            try:
                now[name] = tree_cpu(p)
                for tname, sec in threads_cpu(p.pid).items():
                    now[f"{name} / {tname}"] = sec
                self.hwm_mib[name] = _vm_hwm_mib(p.pid) or self.hwm_mib.get(name, 0.0)
            except psutil.NoSuchProcess:
                pass
        # an ended worker keeps its last values (it ended after the measured span)
        now = {**{k: v for k, v in self._last.items() if k.startswith("worker")}, **now}
        if self.kafka is not None:
            now["Kafka"] = tree_cpu(self.kafka)
        now["PostgreSQL"] = tree_cpu(self.postmaster)
        me = psutil.Process().cpu_times()
        now["bench (this script)"] = me.user + me.system  # not children_*: the workers, once reaped
        total = psutil.cpu_times()
        now["machine busy"] = sum(total) - total.idle - getattr(total, "iowait", 0.0)
        now["machine iowait"] = getattr(total, "iowait", 0.0)
        self._last = now
        self.samples.append((time.time(), now))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def start(self) -> "CpuSampler":
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def at(self, t: float) -> dict[str, float]:
        """CPU seconds of every tracked name at Unix time ``t`` (linear between samples)."""
        xs = self.samples
        i = next((k for k, (ts, _) in enumerate(xs) if ts >= t), len(xs) - 1)
        if i == 0 or xs[i][0] <= t:
            return dict(xs[i][1])
        (ta, a), (tb, b) = xs[i - 1], xs[i]
        w = (t - ta) / (tb - ta)
        return {k: a.get(k, 0.0) + w * (b[k] - a.get(k, 0.0)) for k in b}

    def used(self, t0: float, t1: float) -> dict[str, float]:
        """CPU seconds used per tracked name between ``t0`` and ``t1`` (Unix s)."""
        a, b = self.at(t0), self.at(t1)
        return {k: b[k] - a.get(k, 0.0) for k in b}


def measure_quiet(kafka: psutil.Process | None, seconds: float) -> float:
    """Mean cores the Kafka server used over ``seconds`` with none of our clients active."""
    if kafka is None or seconds <= 0:
        return float("nan")
    c0, t0 = tree_cpu(kafka), time.perf_counter()
    time.sleep(seconds)
    return (tree_cpu(kafka) - c0) / (time.perf_counter() - t0)


def batch_starts(db_url: str, since: float) -> list[tuple[float, int]]:
    """(start, rows) of every archive batch that started at/after ``since`` (Unix s),
    by ``ingested_at`` (each batch transaction's ``now()``), in order."""
    url = db_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT extract(epoch FROM ingested_at)::float8, count(*) FROM events "
                            "WHERE ingested_at >= to_timestamp(%s) GROUP BY 1 ORDER BY 1", (since,)).fetchall()
    return [(float(t), int(n)) for t, n in rows]


def archive_count(db_url: str) -> int:
    with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


def count_events(settings: Settings, topic: str, timeout_s: float = 120.0) -> tuple[int, int, int]:
    """(records, distinct ``mma.event.id`` headers, offsets) on ``topic``, read with
    read_committed; offsets − records is the number of transaction markers."""
    from confluent_kafka import TopicPartition

    consumer = make_consumer(settings, f"{settings.group_id}.count", **{"isolation.level": "read_committed",
                                                                         "enable.partition.eof": True})
    meta = consumer.list_topics(topic, timeout=30).topics[topic]
    parts = [TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in meta.partitions]
    consumer.assign(parts)
    ids: Counter = Counter()
    eof: set[int] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(eof) < len(parts) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                if msg.error():
                    if msg.error().code() == confluent_kafka.KafkaError._PARTITION_EOF:
                        eof.add(msg.partition())
                    continue
                ids[dict(msg.headers() or []).get("mma.event.id", b"")] += 1
        ends = sum(consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts)
    finally:
        consumer.close()
    return sum(ids.values()), len(ids), ends


class PhaseFailed(RuntimeError):
    """A phase that gave no figure (reported; the run goes on)."""


@dataclass
class PhaseResult:
    """Figures of one phase (see the module docstring)."""

    label: str
    workers: int
    transactions: bool
    repeat: int
    rate: float
    """Alerts/s over the measured span."""
    alerts: int
    """Alerts written in the measured span."""
    span_s: float
    core_ms: dict[str, float]
    """Core-ms per alert by process tree (worker, Kafka, PostgreSQL, total) and worker thread."""
    cores: dict[str, float]
    """Mean cores over the span (the same names, plus the machine)."""
    kafka_background: float
    per_worker: list[int]
    peak_rss_mib: list[float]
    load1: float
    events: tuple[int, int, int] = (0, 0, 0)
    extra: dict = field(default_factory=dict)


def run_phase(phase: Phase, label: str, repeat: int, n_workers: int, batch_size: int, log_dir: Path,
              msgs: list[bytes], pgdata: Path, kafka: psutil.Process | None, quiet_s: float,
              py_spy: Path | None = None, py_spy_idle: bool = False) -> PhaseResult:
    """``n_workers`` × ``mma-broker run --stage ingest --until-caught-up`` over ``msgs``.

    The workers start on the phase's empty ZTF topic; once the group is stable with
    every partition assigned, ``msgs`` are written to it, and the measured span starts
    at the first batch after the last message was acknowledged (no rebalance and no
    producer inside it). ``--idle 10`` gives the producer time to start.
    """
    s = phase.settings()
    n = len(msgs)
    ztf_topic = upstream_topic(msgs[0])
    ensure_topics(s, [s.topic(ztf_topic)], partitions=PARTITIONS)
    background = measure_quiet(kafka, quiet_s)
    load1 = os.getloadavg()[0]
    cmd = [sys.executable, "-m", "broker", "run", "--stage", "ingest", "--until-caught-up", "--idle", "10"]
    procs: list[tuple[subprocess.Popen, io.TextIOWrapper]] = []
    spy = None
    try:
        for i in range(n_workers):
            out = (log_dir / f"{phase.name}-{i}.log").open("w")
            procs.append((subprocess.Popen(cmd, env=phase.env(batch_size, ztf_topic), cwd=ROOT, stdout=out,
                                           stderr=subprocess.STDOUT), out))
        sampler = CpuSampler({f"worker {i + 1}": p.pid for i, (p, _) in enumerate(procs)}, kafka, pgdata).start()
        try:
            wait_group_stable(s, f"{phase.group}.ingest.ztf", n_workers, [p for p, _ in procs])
        except RuntimeError as exc:
            for _, out in procs:
                out.flush()
            tails = "\n".join(f"--- {out.name}:\n{Path(out.name).read_text()[-1500:]}" for _, out in procs)
            raise PhaseFailed(f"{exc}\n{tails}") from None
        produce(s, s.topic(ztf_topic), msgs)
        produced_at = time.time()
        if py_spy is not None:
            spy = subprocess.Popen([py_spy_path(), "record", "--pid", str(procs[0][0].pid),
                                    "--rate", "100", "--format", "raw", "--output", str(py_spy),
                                    *(["--idle"] if py_spy_idle else [])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # stop recording once every alert is archived: the idle wait before
            # --until-caught-up ends would otherwise show as time in consume()
            while archive_count(phase.db_url) < n and procs[0][0].poll() is None:
                time.sleep(0.1)
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        per_worker, rss = [], []
        for i, (p, out) in enumerate(procs):
            p.wait()
            out.close()
            text = Path(out.name).read_text()
            if p.returncode != 0:
                raise RuntimeError(f"worker {out.name} exited {p.returncode}: {text[-1500:]}")
            m = re.search(r"this run: (\d+) message", text)
            per_worker.append(int(m.group(1)) if m else -1)
        sampler.stop()
        rss = [sampler.hwm_mib.get(f"worker {i + 1}", float("nan")) for i in range(n_workers)]
    finally:
        for p, out in procs:
            if p.returncode is None:
                p.kill()
                p.wait()
            out.close()
        if spy is not None and spy.returncode is None:
            spy.kill()
            spy.wait()
    if (got := archive_count(phase.db_url)) != n:
        raise RuntimeError(f"{phase.name}: archive holds {got} rows, expected {n}")
    batches = batch_starts(phase.db_url, produced_at)
    if len(batches) < 3:
        raise PhaseFailed(f"{phase.name}: only {len(batches)} batch(es) after the last message was written; "
                          "use a larger --n")
    t0, t1 = batches[0][0], batches[-1][0]
    alerts = sum(k for _, k in batches[:-1])
    used = sampler.used(t0, t1)
    span = t1 - t0
    workers = [k for k in used if re.fullmatch(r"worker \d+", k)]
    core_ms = {"worker": sum(used[k] for k in workers), "Kafka": used.get("Kafka", float("nan")),
               "PostgreSQL": used["PostgreSQL"]}
    core_ms["total"] = sum(core_ms.values())
    core_ms["Kafka − background"] = core_ms["Kafka"] - background * span
    threads: dict[str, float] = defaultdict(float)
    for k, v in used.items():
        if " / " in k:
            threads[k.split(" / ", 1)[1]] += v
    threads["exited threads"] = core_ms["worker"] - sum(threads.values())
    core_ms.update({f"  {k}": v for k, v in threads.items()})
    core_ms = {k: 1e3 * v / alerts for k, v in core_ms.items()}
    cores = {k: v / span for k, v in used.items() if " / " not in k}
    events = count_events(s, s.topic(s.events_topic))
    return PhaseResult(label, n_workers, phase.transactions, repeat, alerts / span, alerts, span, core_ms, cores,
                       background, per_worker, rss, load1, events)


# ------------------------------------------------------------------ py-spy summary
def py_spy_path() -> str | None:
    """The py-spy command: next to this Python (a venv), else on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.is_file() else shutil.which("py-spy")


PROFILE_PARTS = [
    # (label, regular expression searched in the ';'-joined stack, outermost frame first)
    ("poll loop: consume() (librdkafka → Python messages)", r"StageRunner\.run \([^;]*\)$"),
    ("handle: decode + normalize (decode_message)", r"decode_message \("),
    ("  Event model validation (pydantic)", r"decode_message \(.*BaseModel\.__init__"),
    ("  decode_scope (limits, CPU clock)", r"decode_message \(.*decode_scope \("),
    ("handle: Event → Avro (EventCodec.encode)", r"\bencode \([^;]*serde\.py"),
    ("write: archive write_batch", r"write_batch \([^;]*store\.py"),
    ("  raw segment store (put_many)", r"put_many \("),
    ("    sha256 of the raw bytes (_dedupe)", r"_dedupe \("),
    ("  Event → row dicts (event_rows)", r"event_rows \("),
    ("    NaN/Inf check (_check_json)", r"_check_json \("),
    ("  COPY + INSERT (_insert_rows)", r"_insert_rows \("),
    ("    JSONB values (json.dumps)", r"_insert_rows \(.*JSONEncoder"),
    ("deliver: one transaction (_deliver_transaction)", r"_deliver_transaction \("),
    ("  produce (_produce_all)", r"_produce_all \("),
    ("  flush: wait for acks (_flush)", r"_deliver_transaction \(.*_flush \("),
    ("  offsets + commit (send_offsets_to_transaction, commit_transaction)", r"_deliver_transaction \(.*_call \("),
    ("  hop-client headers (with_hop_headers)", r"with_hop_headers \("),
    ("deliver: produce, acks, commit (at least once)", r"_deliver_then_commit \("),
    ("metrics (broker.metrics)", r"broker/metrics\.py"),
    ("outside the stage loop (other threads)", r"\A(?!.*StageRunner\.run)"),
]


def summarize_py_spy(raw: Path, top: int = 25, only: str | None = None
                     ) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, [(part, samples)], [(leaf function, samples)]) of a py-spy raw file.

    Each line of ``--format raw`` is ``frame;frame;... count`` (outermost first), one
    per distinct stack (of an on-CPU Python thread, or of any with ``--idle``).
    ``only``: count only the stacks this regular expression finds.
    """
    total = 0
    parts: Counter = Counter()
    leaves: Counter = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        k = int(count)
        if only is not None and not re.search(only, stack):
            continue
        total += k
        for label, pat in PROFILE_PARTS:
            if re.search(pat, stack):
                parts[label] += k
        leaf = stack.rsplit(";", 1)[-1]
        leaves[re.sub(r":\d+\)$", ")", leaf)] += k
    return total, [(label, parts[label]) for label, _ in PROFILE_PARTS], leaves.most_common(top)


# ------------------------------------------------------------------ GCN latency under ZTF load
def gcn_copy(voevent: bytes, j: int) -> bytes:
    """The real VOEvent with ``_bench<j>`` appended to its IVORN (Event.id is ``gcn:`` + IVORN)."""
    m = re.search(rb'ivorn="([^"]+)"', voevent)
    return voevent[: m.end(1)] + f"_bench{j}".encode() + voevent[m.end(1):]


def measure_latency(phase: Phase, bases: list[_Base], first_k: int, ztf_rate: float, duration_s: float,
                    batch_size: int, log_dir: Path) -> dict:
    """GCN notice produced upstream → its Event received from ``mma.events``, under ZTF load.

    One worker (``mma-broker run --stage ingest``, default upstreams: notices and ZTF in
    separate consumers) consumes a ZTF topic fed at ``ztf_rate`` alerts/s (copies
    ``first_k``, ``first_k+1``, ... so every candid is new) and a GCN Classic VOEvent
    topic fed every 100 ms. A consumer in this process reads ``mma.events``
    (read_committed, header ``mma.event.id``) and notes when each GCN Event arrives.
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
        consumer = make_consumer(s, phase.group + ".latency", **{"fetch.wait.max.ms": 10,
                                                                 "isolation.level": "read_committed"})
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
    worker = subprocess.Popen([sys.executable, "-m", "broker", "run", "--stage", "ingest"], env=phase.env(batch_size),
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
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


# ------------------------------------------------------------------ main
def cleanup_kafka(settings: Settings, prefix: str) -> None:
    """Delete the topics and consumer groups whose names start with ``prefix`` (best
    effort; Kafka itself keeps running)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    topics = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix)]
    for fut in (admin.delete_topics(topics, operation_timeout=30).values() if topics else []):
        try:
            fut.result()
        except confluent_kafka.KafkaException:
            pass
    groups = [g.group_id for g in admin.list_consumer_groups().result().valid if g.group_id.startswith(prefix.rstrip("."))]
    for fut in (admin.delete_consumer_groups(groups).values() if groups else []):
        try:
            fut.result()
        except confluent_kafka.KafkaException:
            pass


def spread(xs: list[float], fmt: str = "{:,.0f}") -> str:
    """``median (min–max)`` of ``xs``; the value alone when there is one."""
    xs = [x for x in xs if x == x]
    if not xs:
        return "—"
    med = statistics.median(xs)
    if len(xs) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


PHASES = [("1 worker, transactions on", 1, True, None, None), ("1 worker, transactions off", 1, False, None, None),
          ("2 workers, transactions on", 2, True, None, None)]
"""(label, workers, transactions, PYTHONPATH of the workers (None: this tree), ZTF consumer settings added)"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="ZTF messages (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each phase, interleaved (default 3)")
    parser.add_argument("--batch-size", type=int, default=500, help="MMA_BROKER_INGEST__BATCH_SIZE of the workers")
    parser.add_argument("--two-off", action="store_true", help="also 2 workers with transactions off")
    parser.add_argument("--quiet-s", type=float, default=3.0,
                        help="seconds before each phase to measure the Kafka server's background CPU")
    parser.add_argument("--py-spy", action="store_true",
                        help="two more 1-worker phases (transactions on, not counted) recorded with py-spy: where "
                             "the worker's CPU and wall time go (needs py-spy: pip install py-spy)")
    parser.add_argument("--latency-s", type=float, default=0.0, help="GCN latency phase length, s (0: skip)")
    parser.add_argument("--latency-ztf-rate", type=float, default=1000.0, help="ZTF alerts/s during the latency phase")
    parser.add_argument("--bootstrap", default=None,
                        help="Kafka bootstrap servers (default: the broker's setting, MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=PATH",
                        help="one more 1-worker, transactions-on phase per repeat whose workers import broker from "
                             "PATH (e.g. a `git archive` of another commit): before/after figures in one run")
    parser.add_argument("--config-variant", action="append", default=[], metavar="NAME=JSON",
                        help='one more 1-worker, transactions-on phase per repeat whose ZTF consumer gets these '
                             'librdkafka settings, e.g. \'fetch50={"fetch.queue.backoff.ms": 50}\'')
    parser.add_argument("--json", type=Path, default=None, help="also write every phase's figures to this JSON file")
    args = parser.parse_args()
    if args.py_spy and py_spy_path() is None:
        parser.error("--py-spy needs the py-spy command (pip install py-spy) next to this Python or on PATH")
    console = Console(width=None if sys.stdout.isatty() else 130)
    load0, ncpu = os.getloadavg(), os.cpu_count()
    console.print(f"machine: {ncpu} CPUs (nproc {len(os.sched_getaffinity(0))}), load average at start "
                  f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; Python {sys.version.split()[0]}; "
                  f"{time.strftime('%Y-%m-%d %H:%M %Z')}")

    t0 = time.perf_counter()
    bases = load_bases(ZTF_DIR)
    msgs = make_messages(bases, args.n)
    size_mb = sum(map(len, msgs)) / 1e6
    console.print(
        f"{len(bases)} real ZTF alerts from {ZTF_DIR.relative_to(ROOT)} → {len(msgs)} one-alert messages "
        f"({size_mb:,.0f} MB), made in {time.perf_counter() - t0:.1f} s. Copy k of an alert has "
        f"candid + k·10^15, so every message is a new Event.id and the archive inserts every one.")
    dec_rate, dec_ms = decode_cost(msgs[: min(len(msgs), 5000)])
    console.print(f"decode + normalize alone (broker.sources.decode, in this process, {min(len(msgs), 5000)} "
                  f"alerts): {dec_rate:,.0f} alerts/s, {dec_ms:.3f} core-ms per alert")

    run_id = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="mmae2e-", dir="/tmp"))
    base_settings = settings_class()()
    bootstrap = args.bootstrap or base_settings.kafka.bootstrap_servers
    base_settings = settings_class()(kafka={"bootstrap_servers": bootstrap})
    kafka = kafka_server(bootstrap)
    results: list[PhaseResult] = []
    try:
        server_url = ensure_embedded_postgres(tmp / "pg")
        console.print(f"embedded PostgreSQL in {tmp / 'pg'}; Kafka {bootstrap} (server pid "
                      f"{kafka.pid if kafka else 'not local'}); run id {run_id}")

        phases = PHASES + ([("2 workers, transactions off", 2, False, None, None)] if args.two_off else [])
        for spec in args.variant:
            name, _, path = spec.partition("=")
            if not (Path(path) / "broker" / "__init__.py").is_file():
                raise SystemExit(f"--variant {spec}: {path} holds no broker/ package")
            # next to the phase it is compared with
            phases.insert(1, (f"1 worker, transactions on, {name}", 1, True, str(Path(path).resolve()), None))
        for spec in args.config_variant:
            name, _, cfg = spec.partition("=")
            phases.insert(1, (f"1 worker, transactions on, {name}", 1, True, None, json.loads(cfg)))
        for r in range(args.repeat):
            for v, (label, n_workers, txn, pythonpath, ztf_config) in enumerate(phases):
                name = f"r{r}p{v}w{n_workers}{'t' if txn else 'a'}"
                phase = new_phase(name, run_id, tmp, server_url, bootstrap, txn)
                phase.pythonpath, phase.ztf_config = pythonpath, ztf_config
                try:
                    res = run_phase(phase, label, r, n_workers, args.batch_size, tmp, msgs, tmp / "pg", kafka,
                                    args.quiet_s)
                except PhaseFailed as exc:
                    console.print(f"[red]  repeat {r + 1}: {label}: no figure: {exc}[/]", markup=True)
                    continue
                finally:
                    drop_phase(phase, server_url, base_settings)
                results.append(res)
                console.print(f"  repeat {r + 1}: {label}: {res.rate:,.0f} alerts/s over {res.span_s:.1f} s "
                              f"({res.alerts} alerts); core-ms/alert worker {res.core_ms['worker']:.3f}, Kafka "
                              f"{res.core_ms['Kafka']:.3f}, PostgreSQL {res.core_ms['PostgreSQL']:.3f}, total "
                              f"{res.core_ms['total']:.3f}; Kafka background {res.kafka_background:.2f} cores; "
                              f"load1 {res.load1:.2f}; mma.events {res.events[0]} records, {res.events[1]} ids, "
                              f"{res.events[2] - res.events[0]} transaction markers; "
                              f"msgs/worker {'+'.join(map(str, res.per_worker))}; peak RSS MiB "
                              f"{', '.join(f'{x:,.0f}' for x in res.peak_rss_mib)}")
                if res.events[:2] != (args.n, args.n):
                    console.print(f"[red]  mma.events holds {res.events[0]} records for {res.events[1]} ids; "
                                  f"expected {args.n} each[/]")

        if results:
            print_tables(console, results, phases, args, ncpu)

        if args.py_spy:
            print_py_spy(console, run_id, tmp, server_url, bootstrap, base_settings, msgs, args.batch_size, kafka)

        if args.latency_s > 0:
            phase = new_phase("lat", run_id, tmp, server_url, bootstrap)
            lat = measure_latency(phase, bases, args.n // len(bases) + 1, args.latency_ztf_rate, args.latency_s,
                                  args.batch_size, tmp)
            console.print(
                f"GCN VOEvent ({VOEVENT.name}, IVORN suffixed per copy) every 100 ms under {lat['ztf_rate']:,.0f} ZTF "
                f"alerts/s (1 worker, default upstreams, transactions on, {lat['ztf_produced']} ZTF alerts produced): "
                f"{lat['seen']}/{lat['sent']} seen on mma.events; latency produce → received p50 {lat['p50']:.0f} ms, "
                f"p99 {lat['p99']:.0f} ms, max {lat['max']:.0f} ms (targets p50 ≤ {TARGET_P50_MS:.0f}, "
                f"p99 ≤ {TARGET_P99_MS:.0f}); produce → mma.events CreateTime p50 {lat['p50_ts']:.0f} ms, "
                f"p99 {lat['p99_ts']:.0f} ms.")
        if args.json is not None:
            args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1, default=str))
        load1 = os.getloadavg()
        console.print(f"load average at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    finally:
        stop_embedded_postgres(tmp / "pg")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            cleanup_kafka(base_settings, f"e2e_{run_id}_")
        except Exception as exc:  # noqa: BLE001 - cleanup must not hide the run's own error
            console.print(f"could not delete this run's Kafka topics/groups: {exc}")


def print_py_spy(console: Console, run_id: str, tmp: Path, server_url: str, bootstrap: str, settings: Settings,
                 msgs: list[bytes], batch_size: int, kafka: psutil.Process | None) -> None:
    """Two more 1-worker, transactions-on phases under py-spy (100 Hz; not counted in
    the figures): on-CPU samples of the Python threads, then all samples (``--idle``)
    of the stage loop's thread, i.e. where a batch's wall time goes. Recording starts
    when the group is stable and stops when the last alert is archived."""
    runs = {}
    for name, idle in (("spy", False), ("spywall", True)):
        phase = new_phase(name, run_id, tmp, server_url, bootstrap, True)
        raw = tmp / f"py-spy-{name}.txt"
        try:
            res = run_phase(phase, f"1 worker, transactions on, under py-spy{' --idle' if idle else ''}", 0, 1,
                            batch_size, tmp, msgs, tmp / "pg", kafka, 0.0, py_spy=raw, py_spy_idle=idle)
        finally:
            drop_phase(phase, server_url, settings)
        keep = Path(tempfile.gettempdir()) / f"bench_e2e-py-spy-{name}-{run_id}.txt"
        shutil.copy(raw, keep)
        runs[name] = (res, keep)
    (cpu_res, cpu_raw), (wall_res, wall_raw) = runs["spy"], runs["spywall"]
    total, parts, leaves = summarize_py_spy(cpu_raw)
    wtotal, wparts, _ = summarize_py_spy(wall_raw, only=r"StageRunner\.run \(")
    py_ms = cpu_res.core_ms.get("  Python threads", float("nan"))
    wall_ms = 1e3 / wall_res.rate
    ptab = Table(title=f"where one worker's time goes (py-spy, 100 Hz). CPU: {total} on-CPU samples of the Python "
                       f"threads, {cpu_res.rate:,.0f} alerts/s while recorded, Python threads "
                       f"{py_ms:.3f} core-ms/alert. Wall: {wtotal} samples of the stage thread (--idle), "
                       f"{wall_res.rate:,.0f} alerts/s = {wall_ms:.3f} ms/alert")
    for col in ("part (inclusive)", "CPU share", "≈ core-ms/alert", "wall share", "≈ wall ms/alert"):
        ptab.add_column(col, justify="left" if col.startswith("part") else "right")
    wmap = dict(wparts)
    for label, k in parts:
        w = wmap.get(label, 0)
        ptab.add_row(label, f"{100 * k / max(total, 1):.0f}%", f"{py_ms * k / max(total, 1):.3f}",
                     f"{100 * w / max(wtotal, 1):.0f}%", f"{wall_ms * w / max(wtotal, 1):.3f}")
    console.print(ptab)
    ltab = Table(title="top functions by own (leaf) on-CPU samples")
    ltab.add_column("function (file)")
    ltab.add_column("samples", justify="right")
    ltab.add_column("share", justify="right")
    for fn, k in leaves:
        ltab.add_row(fn, str(k), f"{100 * k / max(total, 1):.1f}%")
    console.print(ltab)
    console.print(f"py-spy raw stacks (one line per stack, outermost frame first) kept in {cpu_raw} and {wall_raw}")


def print_tables(console: Console, results: list[PhaseResult], phases: list, args: argparse.Namespace,
                 ncpu: int) -> None:
    """Throughput, cost and ratio tables: medians (ranges) over the repeats."""
    by = defaultdict(list)
    for r in results:
        by[r.label].append(r)
    repeats = sorted({r.repeat for r in results})

    def ratio(a: str, b: str, fn) -> list[float]:
        out = []
        for k in repeats:
            ra = [r for r in results if r.label == a and r.repeat == k]
            rb = [r for r in results if r.label == b and r.repeat == k]
            if ra and rb:
                out.append(fn(ra[0]) / fn(rb[0]))
        return out

    n = len(repeats)
    t = Table(title=f"ZTF end to end, {args.n} real alerts per phase, batch {args.batch_size}, machine {ncpu} cores "
                    f"(shared); median (min–max) of {n} interleaved repeat(s)")
    for col in ("phase", "alerts/s", "worker", "Kafka", "PostgreSQL", "total", "Kafka − background"):
        t.add_column(col, justify="left" if col == "phase" else "right")
    for label, *_ in phases:
        rs = by[label]
        t.add_row(label, spread([r.rate for r in rs]),
                  *(spread([r.core_ms[k] for r in rs], "{:.3f}")
                    for k in ("worker", "Kafka", "PostgreSQL", "total", "Kafka − background")))
    console.print(t)
    console.print("worker, Kafka, PostgreSQL, total: core-ms per alert (CPU time of each process tree over the "
                  "measured span ÷ alerts written in it); Kafka − background: less what the Kafka server used "
                  "per second with no worker running, measured just before the phase (other users of the server)")

    on1, off1, on2 = (p[0] for p in PHASES)
    rt = Table(title="ratios, each taken within one repeat: median (min–max)")
    rt.add_column("ratio")
    rt.add_column("value", justify="right")
    rt.add_column("target / reference", justify="left")
    rt.add_row("throughput: transactions on / off (1 worker)", spread(ratio(on1, off1, lambda r: r.rate), "{:.2f}"),
               "the cost of exactly once")
    rt.add_row("worker core-ms/alert: on / off", spread(ratio(on1, off1, lambda r: r.core_ms["worker"]), "{:.2f}"), "")
    rt.add_row("Kafka core-ms/alert: on / off", spread(ratio(on1, off1, lambda r: r.core_ms["Kafka"]), "{:.2f}"), "")
    rt.add_row("total core-ms/alert: on / off", spread(ratio(on1, off1, lambda r: r.core_ms["total"]), "{:.2f}"), "")
    rt.add_row("throughput: 2 workers / 1 worker (on)", spread(ratio(on2, on1, lambda r: r.rate), "{:.2f}"),
               "2 cores shared by 2 workers + Kafka + PostgreSQL")
    rt.add_row("total core-ms/alert: 2 workers / 1 worker (on)",
               spread(ratio(on2, on1, lambda r: r.core_ms["total"]), "{:.2f}"), "≈ 1: the work per alert does not grow")
    rt.add_row("1 worker on: alerts/s / target 1,500", spread([r.rate / TARGET_RATE for r in by[on1]], "{:.2f}"),
               "≥ 1")
    rt.add_row("1 worker on: total core-ms/alert / target 0.3",
               spread([r.core_ms["total"] / TARGET_CORE_MS for r in by[on1]], "{:.2f}"), "≤ 1")
    for k in ("worker", "Kafka", "PostgreSQL", "total"):
        rt.add_row(f"1 worker on: {k} core-ms/alert / before (issue 7: {BEFORE_CORE_MS[k]})",
                   spread([r.core_ms[k] / BEFORE_CORE_MS[k] for r in by[on1]], "{:.2f}"), "")
    for label, *_ in phases:
        if label.startswith("1 worker, transactions on, "):
            name = label.removeprefix("1 worker, transactions on, ")
            rt.add_row(f"throughput: this tree / {name} (1 worker, on)", spread(ratio(on1, label, lambda r: r.rate), "{:.2f}"), "")
            for k in ("worker", "total"):
                rt.add_row(f"{k} core-ms/alert: this tree / {name}",
                           spread(ratio(on1, label, lambda r, k=k: r.core_ms[k]), "{:.2f}"), "")
    console.print(rt)

    tt = Table(title="worker core-ms per alert by thread: median (min–max)")
    tt.add_column("thread")
    for label, *_ in phases:
        tt.add_column(label, justify="right")
    names = sorted({k for r in results for k in r.core_ms if k.startswith("  ")})
    for k in names:
        tt.add_row(k.strip(), *(spread([r.core_ms.get(k, float("nan")) for r in by[label]], "{:.3f}")
                                for label, *_ in phases))
    console.print(tt)

    ct = Table(title=f"mean cores used over the measured span (machine has {ncpu}): median (min–max)")
    ct.add_column("process")
    for label, *_ in phases:
        ct.add_column(label, justify="right")
    names = sorted({k for r in results for k in r.cores}, key=lambda k: (k.startswith("machine"), k))
    for k in names:
        ct.add_row(k, *(spread([r.cores.get(k, float("nan")) for r in by[label]], "{:.2f}") for label, *_ in phases))
    console.print(ct)


if __name__ == "__main__":
    main()
