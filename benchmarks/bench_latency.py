"""Benchmark: GCN notice in → HERMES message out, under a flow of real ZTF alerts (issue 11, Speed).

Target (issue 11): on the automatic path, with the follow-up analysis time excluded and
reported separately, p50 ≤ 100 ms and p99 ≤ 500 ms under 1,000 ZTF alerts/s.

What runs, as in production (``deploy/quickstart.sh`` runs the same stages, there in
one process): the six stages as six processes, ``python -m broker run --stage S`` for
ingest, enrich, filters, followup, reports and publish, on the real Kafka
(``--bootstrap``, default the broker's setting) under a topic prefix of this run, with an
embedded PostgreSQL of their own (:func:`broker.archive.embedded.ensure_embedded_postgres`
in a temporary folder, as the tests start it) holding the 50 Mpc Galaxy Catalog
(``tests/data/catalogs``, loaded with ``mma-broker catalog load`` as the quickstart does)
and the default settings otherwise: default upstreams (notices and ZTF in separate
consumers), default filters (the ``followup-rule`` instances follow Swift BAT-GUANO
notices), the bundled offline data for the follow-up (ISGRI's MMODA pointed at a port
nobody listens on, as in the tests), HERMES to ``<prefix>hermes.test`` (a test topic: no
approval).

Load: a separate process produces the 36 real ZTF alerts of ``tests/data/ztf`` at
``--ztf-rate`` alerts/s (copy k of an alert has ``candid + k·10^15``, so every one is a
new Event and the archive inserts each: ``bench_e2e.make_copy``) to the ZTF upstream
topic, for ``--warmup-s`` seconds before the first notice and until the end.

Notices: the real Swift BAT-GUANO example notice (``Guano.example.json``, gcn-schema),
``--notices`` copies every ``--interval-s`` seconds; copy j gets the trigger id
``<base>+j`` and T0 + j hours (so each is a new trigger with its own follow-up, its own
light-curve request and no provenance-cache hit). The follow-up of each is "no data"
(the bundled light curve covers GRB 230307A only), which gives a HERMES message like
any result. Copy 0 is a warm-up (imports, first connections) and is not counted.

Timing. A consumer in this process (``read_committed``) reads every topic of the path and
notes, for each notice's key, when its record arrived (wall clock of this host) and
its Kafka CreateTime (the stage's ``produce()`` call, before its transaction commits):
upstream notice topic → ``mma.events`` (ingest) → ``mma.events.enriched`` (enrich) →
``mma.followup.requests`` (filters) → ``mma.followup.results`` (followup worker) →
outbox row ``created_at`` / ``sent_at`` (reports, publish; PostgreSQL ``now()`` on the
same host) → HERMES topic (hop-client's producer). The follow-up worker process is the
real stage with :func:`followup.service.run_followup` wrapped to note its wall time per
request (the analysis: light-curve read, excess search, limits, plot); that time is
subtracted and reported on its own. Latency of a notice = HERMES message received −
notice produced − its analysis time.

Also reported: the ZTF rate achieved by the load generator, the ZTF Events seen per
second on ``mma.events`` and ``mma.events.enriched`` (whether ingest and enrich kept
up) and each stage's consumer lag, sampled every 2 s, with the load average; each hop's
p50/p95/p99/max; which hop was the largest of the slowest 5 % of notices; and the CPU
each stage process used while the notices ran (``/proc/<pid>/stat``).

Where a hop's time goes (``--phases``): every stage process runs with
``StageRunner.process`` wrapped (the ``STAGE`` script below), and each batch holding a
notice-path record notes when it started, was handled, written (PostgreSQL, raw store)
and committed (the Kafka transaction); a hop is then split into the wait from the
previous loop's commit to the batch's start (Kafka's delivery to a ``read_committed``
consumer and the batch wait), handle, write and commit. ``--pg-waits`` samples
``pg_stat_activity`` every 50 ms while the notices run: what the stages' PostgreSQL
backends wait on (``IO:WALSync``, ``LWLock:WALWrite``, ``Lock:*``, or running).
With ``--phases`` the two outbox hops are split too: the reports process notes each
``Outbox.put`` (start, committed with its NOTIFY), the publish process when its wait for
a NOTIFY returned, its claim (start, committed) and when the channel's send returned
(``Outbox.mark_sent`` called); see :data:`OUTBOX_STEPS`.

Layouts (``--layout``, repeat it to alternate several in one run, round by round):
``stages`` (the default) runs the six stages as six processes; ``lanes`` runs the
enrich and filters stages as two lanes each (``[lanes] notices = ["*"], optical =
["ztf", "lsst"]``, :mod:`broker.lanes`), one process per lane (``run --stage enrich
--lane notices`` ...), and ingest as two processes, one per upstream (notices, ZTF):
nine processes, the three of the optical path under ``nice -n --nice`` (default 10;
0: not niced) as a cluster would give them their own CPU requests; ``lanes-unniced`` is
the same without ``nice`` (to see what the priority adds).

Run: ``python benchmarks/bench_latency.py [--notices 101] [--interval-s 1] [--ztf-rate 1000]
[--warmup-s 15] [--short] [--layout stages --layout lanes] [--nice 10] [--phases] [--pg-waits]
[--variant NAME=TREE --rounds N]`` (variants alternate, each round starting with the next
tree); ``--short``: 6 notices under 200 ZTF alerts/s (a smoke test, about a minute).
Needs the Kafka of ``deploy/kafka/kafka.sh start``. Topics, consumer groups, the
database and the temporary folder of the run are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import confluent_kafka
import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import cleanup_kafka, load_bases, make_copy  # noqa: E402

from broker.archive.embedded import ensure_embedded_postgres, stop_embedded_postgres  # noqa: E402
from broker.config import settings_class  # noqa: E402
from broker.kafka import ensure_topics, make_consumer, make_producer  # noqa: E402
from broker.sources import upstream_topic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ZTF_DIR = ROOT / "tests" / "data" / "ztf"
GUANO = ROOT / "tests" / "data" / "gcn" / "gcn-schema" / "gcn" / "notices" / "swift" / "bat" / "Guano.example.json"
CATALOG = ROOT / "tests" / "data" / "catalogs" / "50MGC_catalog_short.fits"
STAGES = ["ingest", "enrich", "filters", "followup", "reports", "publish"]
TARGET_P50_MS, TARGET_P99_MS = 100.0, 500.0
PARTITIONS = 4
FIRST_K = 1000
"""ZTF copies start at k = 1000 (candid + k·10^15 stays below 2**63 for k < ~6,700)."""

# One stage process: ``python -c STAGE <analysis file> <phases file or -> <mma-broker arguments>``.
# The follow-up stage gets run_followup timed (wall time per request, one JSON line each);
# with a phases file, every StageRunner batch holding a record keyed other than a ZTF one
# (the notice path) writes one JSON line: its loop, its records' keys and input CreateTimes,
# and when it started, was handled, written (durably) and committed (Kafka transaction).
STAGE = r"""
import json, sys, time
analysis, phases, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
if argv[:3] == ["run", "--stage", "followup"]:
    import followup.worker as w
    _run, _out = w.run_followup, open(analysis, "a", buffering=1)
    def timed(ev, *a, **k):
        t0 = time.time()
        try:
            return _run(ev, *a, **k)
        finally:
            _out.write(json.dumps({"upstream_id": ev.upstream_id, "start": t0, "end": time.time()}) + "\n")
    w.run_followup = timed
if phases != "-":
    import broker.pipeline.runner as R
    _ph = open(phases, "a", buffering=1)
    _process = R.StageRunner.process
    def _mark(name, fn):
        def f(self, *a, **k):
            try:
                return fn(self, *a, **k)
            finally:
                getattr(self, "_bench_marks", {})[name] = time.time()
        return f
    import broker.archive.raw as RAW
    _acc = {}
    def _timed(name, fn):  # time spent in fn during the batch, s (the raw store's write, its directory fsync)
        def f(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                _acc[name] = _acc.get(name, 0.0) + time.perf_counter() - t0
        return f
    RAW.SegmentFileStore.put_many = _timed("raw_s", RAW.SegmentFileStore.put_many)
    RAW._fsync_dir = _timed("dir_fsync_s", RAW._fsync_dir)
    def process(self, msgs):
        _acc.clear()
        self._bench_marks = {"start": time.time()}
        try:
            return _process(self, msgs)
        finally:
            recs = [((m.key() or b"").decode(errors="replace"), m.timestamp()[1] / 1e3) for m in msgs
                    if m.error() is None and (self.accept is None or self.accept(m))]  # a lane's own
            notes = [(k, c) for k, c in recs if k and not k.startswith("ZTF")]
            if notes:
                _ph.write(json.dumps({"loop": self.name, "n": len(recs), "keys": [k for k, _ in notes],
                                      "created": [c for _, c in notes], **self._bench_marks, **_acc}) + "\n")
    R.StageRunner.process = process
    for _name, _attr in (("handled", "_handle_all"), ("written", "_write"), ("committed", "_deliver_transaction")):
        setattr(R.StageRunner, _attr, _mark(_name, getattr(R.StageRunner, _attr)))
    import broker.sinks.outbox as O
    _put, _wait, _claim, _sent = O.Outbox.put, O.Outbox.wait, O.Outbox.claim, O.Outbox.mark_sent
    _pub = {}
    def put(self, key, *a, **k):  # reports: the entry's INSERT, commit and NOTIFY
        t0 = time.time()
        try:
            return _put(self, key, *a, **k)
        finally:
            _ph.write(json.dumps({"loop": "outbox.put", "keys": [key], "start": t0, "committed": time.time()}) + "\n")
    def wait(self, *a, **k):  # publish: woken by the NOTIFY (or the poll interval)
        try:
            return _wait(self, *a, **k)
        finally:
            _pub["woke"] = time.time()
    def claim(self, *a, **k):
        t0 = time.time()
        rows = _claim(self, *a, **k)
        for e in rows:
            _pub[e.id] = {"keys": [e.key], "woke": _pub.get("woke"), "claim_start": t0, "claimed": time.time()}
        return rows
    def mark_sent(self, id, *a, **k):  # called when the channel's send returned
        t0 = time.time()
        try:
            return _sent(self, id, *a, **k)
        finally:
            d = _pub.pop(id, None)
            if d is not None:
                _ph.write(json.dumps({"loop": "outbox.send", **d, "send_returned": t0, "marked": time.time()}) + "\n")
    O.Outbox.put, O.Outbox.wait, O.Outbox.claim, O.Outbox.mark_sent = put, wait, claim, mark_sent
from broker.cli import main
sys.argv = ["mma-broker", *argv]
main()
"""


def notice(template: dict, j: int, base_id: int) -> tuple[str, bytes]:
    """Copy ``j`` of the GUANO notice: trigger id ``base_id + j``, T0 + j hours."""
    doc = json.loads(json.dumps(template))
    trigger = str(base_id + j)
    t0 = datetime.fromisoformat(doc["trigger_time"].replace("Z", "+00:00")) + timedelta(hours=j)
    doc["trigger_time"] = t0.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-4] + "Z"
    doc["id"] = [trigger]
    doc["data_archive_page"] = f"https://guano.swift.psu.edu/trigger_report?id={trigger}"
    return trigger, json.dumps(doc).encode()


def feed_ztf(bootstrap: str, prefix: str, topic: str, rate: float, stop: "mp.synchronize.Event",
             produced: "mp.sharedctypes.Synchronized") -> None:
    """Produce copies of the real ZTF alerts at ``rate`` per second until ``stop`` (own process)."""
    bases = load_bases(ZTF_DIR)
    s = settings_class()(kafka={"bootstrap_servers": bootstrap, "topic_prefix": prefix})
    producer = make_producer(s)
    t0, i = time.monotonic(), 0
    while not stop.is_set():
        k, b = divmod(i, len(bases))
        value = make_copy(bases[b], FIRST_K + k)
        while True:
            try:
                producer.produce(topic, value=value, partition=i % PARTITIONS)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        i += 1
        produced.value = i
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    producer.flush(30)


class Tracker:
    """Reads the path's topics; per notice key and topic: (received, CreateTime), s since the epoch."""

    def __init__(self, settings, group: str, topics: dict[str, str]) -> None:
        self.topics = topics  # topic name -> hop label
        self.seen: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
        self.rid_of: dict[str, str] = {}  # request id -> trigger
        self.ztf_counts: dict[str, list[float]] = defaultdict(list)  # label -> receive times of ZTF records
        self.keys: set[str] = set()
        self.stop = threading.Event()
        self.assigned = threading.Event()
        self.consumer = make_consumer(settings, group, **{"auto.offset.reset": "latest", "fetch.wait.max.ms": 10})
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        def on_assign(consumer, parts):
            self.assigned.set()

        self.consumer.subscribe(list(self.topics), on_assign=on_assign)
        while not self.stop.is_set():
            msg = self.consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            t = time.time()
            label = self.topics[msg.topic()]
            key = (msg.key() or b"").decode(errors="replace")
            if label == "hermes":
                rid = key.rsplit(":", 1)[-1]
                key = self.rid_of.get(rid, key)
            elif label == "results":
                rid = dict(msg.headers() or []).get("mma.followup.request_id", b"").decode()
                self.rid_of[rid] = key
            if key in self.keys:
                self.seen[key].setdefault(label, (t, msg.timestamp()[1] / 1e3))
            elif label in ("events", "enriched") and key.startswith("ZTF"):
                self.ztf_counts[label].append(t)
        self.consumer.close()

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def sample_lag(bootstrap: str, group_prefix: str) -> dict[str, int]:
    """Consumer lag (high watermark − committed offset, summed over partitions) of each stage group."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    groups = [g.group_id for g in admin.list_consumer_groups().result(timeout=10).valid
              if g.group_id.startswith(group_prefix + ".") and not g.group_id.endswith(".tracker")]
    out = {}
    probe = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": group_prefix + ".lagprobe",
                                      "enable.auto.commit": False})
    try:
        for g in groups:
            res = admin.list_consumer_group_offsets([confluent_kafka.ConsumerGroupTopicPartitions(g)])
            parts = res[g].result(timeout=10).topic_partitions
            lag = 0
            for tp in parts:
                if tp.offset < 0:
                    continue
                _, high = probe.get_watermark_offsets(confluent_kafka.TopicPartition(tp.topic, tp.partition),
                                                      timeout=10)
                lag += max(0, high - tp.offset)
            out[g[len(group_prefix) + 1:]] = lag
    finally:
        probe.close()
    return out


def sample_pg_waits(db_url: str, stop: threading.Event, every_s: float, out: Counter) -> None:
    """Every ``every_s`` s until ``stop``: what each active client backend of the run's
    database waits on (``pg_stat_activity``: ``wait_event_type:wait_event``, ``CPU:running``
    when it waits on nothing), counted into ``out`` (``out["samples"]``: samples taken)."""
    with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        while not stop.wait(every_s):
            rows = conn.execute(
                "SELECT coalesce(wait_event_type, 'CPU'), coalesce(wait_event, 'running'), count(*) "
                "FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY 1, 2").fetchall()
            out["samples"] += 1
            for typ, event, n in rows:
                out[f"{typ}:{event}"] += n


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU time so far of each process (``/proc/<pid>/stat``), s; a process
    gone or not readable is left out."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14 and 15 of stat)
    return out


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..1) of ``xs``; NaN when empty."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[max(0, min(len(xs) - 1, int(-(-q * len(xs) // 1)) - 1))]


LANES = {"notices": ["*"], "optical": ["ztf", "lsst"]}
"""``[lanes]`` of the ``lanes`` layout."""


def stage_commands(layout: str, nice: int, timing: Path,
                   phases: Path | None = None) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Process name → (command, extra environment) of a layout (``stages`` or ``lanes``);
    the follow-up's analysis time goes to ``timing``, each notice-path batch's phases to
    ``phases`` (None: not recorded)."""
    from broker.config import _default_upstreams

    def run(*a: str) -> list[str]:
        return [sys.executable, "-c", STAGE, str(timing), str(phases) if phases else "-", "run", *a]

    followup = run("--stage", "followup")
    if layout == "stages":
        return {st: (run("--stage", st), {}) for st in STAGES}
    if layout not in ("lanes", "lanes-unniced"):
        raise SystemExit(f"--layout {layout}: stages, lanes or lanes-unniced")
    lanes = {"MMA_BROKER_LANES": json.dumps(LANES)}
    niced = ["nice", "-n", str(nice)] if nice and layout == "lanes" else []
    ups = {u.name: json.dumps([u.model_dump(mode="json", exclude_defaults=True) | {"name": u.name, "kind": u.kind}])
           for u in _default_upstreams()}
    return {"ingest.notices": (run("--stage", "ingest"), lanes | {"MMA_BROKER_UPSTREAMS": ups["notices"]}),
            "ingest.ztf": (niced + run("--stage", "ingest"), lanes | {"MMA_BROKER_UPSTREAMS": ups["ztf"]}),
            "enrich.notices": (run("--stage", "enrich", "--lane", "notices"), lanes),
            "enrich.optical": (niced + run("--stage", "enrich", "--lane", "optical"), lanes),
            "filters.notices": (run("--stage", "filters", "--lane", "notices"), lanes),
            "filters.optical": (niced + run("--stage", "filters", "--lane", "optical"), lanes),
            "followup": (followup, lanes), "reports": (run("--stage", "reports"), lanes),
            "publish": (run("--stage", "publish"), lanes)}


def proc_env(specs: list[str], commands: dict) -> dict[str, dict[str, str]]:
    """``--proc-env PROC[,PROC...]:NAME=VALUE`` → process name → extra environment.

    Raises
    ------
    SystemExit
        A process name the layout does not start, or a spec without ``:`` and ``=``.
    """
    out: dict[str, dict[str, str]] = {}
    for spec in specs:
        names, sep, kv = spec.partition(":")
        k, eq, v = kv.partition("=")
        if not sep or not eq or not k:
            raise SystemExit(f"--proc-env {spec!r}: PROC[,PROC...]:NAME=VALUE")
        for name in names.split(","):
            if name not in commands:
                raise SystemExit(f"--proc-env {spec!r}: no process {name!r} in this layout "
                                 f"({', '.join(commands)})")
            out.setdefault(name, {})[k] = v
    return out


def run_once(tree: Path, args: argparse.Namespace, console: Console, label: str, layout: str = "stages") -> dict:
    """Start the stages from the source ``tree`` in ``layout``, run the load and the notices, return the figures."""
    bootstrap = args.bootstrap or settings_class()().kafka.bootstrap_servers
    run_id = uuid.uuid4().hex[:8]
    prefix, group = f"lat_{run_id}.", f"lat_{run_id}"
    tmp = Path(tempfile.mkdtemp(prefix="mmalat-", dir="/tmp"))
    s = settings_class()(kafka={"bootstrap_servers": bootstrap, "topic_prefix": prefix}, group_id=group)
    procs: dict[str, subprocess.Popen] = {}
    logs = []
    ztf_stop, ztf_proc, tracker = None, None, None
    lag_stop = threading.Event()
    try:
        db_url = ensure_embedded_postgres(tmp / "pg")
        hermes_topic = f"{prefix}hermes.test"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_")}
        env.update(PYTHONPATH=str(tree), MMA_BROKER_HOME=str(tmp / "home"), MMA_BROKER_GROUP_ID=group,
                   MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS=bootstrap, MMA_BROKER_KAFKA__TOPIC_PREFIX=prefix,
                   MMA_BROKER_ARCHIVE__DATABASE_URL=db_url, MMA_BROKER_METRICS__PORT="0",
                   MMA_BROKER_ENRICH__CATALOGS='["50MGC"]',
                   MMA_BROKER_FOLLOWUP__MMODA_URL="http://127.0.0.1:9/dispatch-data",
                   MMA_BROKER_FOLLOWUP__RETRY_ATTEMPTS="1",
                   MMA_BROKER_PUBLISH__HERMES__TOPIC=hermes_topic,
                   MMA_BROKER_PUBLISH__HERMES__TEST_TOPICS=json.dumps([hermes_topic]),
                   MMA_BROKER_PUBLISH__HERMES__SUBMITTER="mma-broker bench_latency",
                   MMA_BROKER_PUBLISH__HERMES__AUTHORS="A. Person (Inst.) for the latency benchmark")
        for kv in args.env:
            k, _, v = kv.partition("=")
            env[k] = v
        subprocess.run([sys.executable, "-m", "broker", "catalog", "load", "50MGC", str(CATALOG)], env=env,
                       cwd=tree, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        template = json.loads(GUANO.read_text())
        bases = load_bases(ZTF_DIR)
        ztf_topic = s.topic(upstream_topic(make_copy(bases[0], 0)))
        gcn_topic = s.topic(upstream_topic(GUANO.read_bytes()))
        path = {gcn_topic: "notice", s.topic(s.events_topic): "events", s.topic(s.enrich.enriched_topic): "enriched",
                s.topic(s.followup.requests_topic): "requests", s.topic(s.followup.results_topic): "results",
                hermes_topic: "hermes"}
        ensure_topics(s, [ztf_topic, gcn_topic, *path], partitions=PARTITIONS)

        (tmp / "logs").mkdir()
        timing = tmp / "analysis.jsonl"
        phases = tmp / "phases.jsonl" if args.phases else None
        commands = stage_commands(layout, args.nice, timing, phases)
        per_proc = proc_env(args.proc_env, commands)
        for st, (cmd, extra) in commands.items():
            log = (tmp / "logs" / f"{st}.log").open("w")
            logs.append(log)
            procs[st] = subprocess.Popen(cmd, env=env | extra | per_proc.get(st, {}), cwd=tree, stdout=log,
                                         stderr=subprocess.STDOUT)

        tracker = Tracker(s, f"{group}.tracker", path)
        base_id = 700_000_000 + int(run_id, 16) % 100_000 * 1000
        triggers = [notice(template, j, base_id) for j in range(args.notices)]
        tracker.keys = {t for t, _ in triggers}
        tracker.start()
        tracker.assigned.wait(60)

        producer = make_producer(s, **{"linger.ms": 0})
        sent: dict[str, float] = {}

        def send(j: int) -> None:
            trig, value = triggers[j]
            sent[trig] = time.time()
            producer.produce(gcn_topic, key=trig.encode(), value=value)
            producer.flush(10)

        def n_done() -> int:
            return sum("hermes" in tracker.seen.get(t, {}) for t, _ in triggers[1:])

        def check_alive() -> None:
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"stage(s) {', '.join(dead)} exited (logs: BENCH_KEEP_LOGS=DIR keeps them)")

        console.print(f"{label}: run {run_id}: {len(procs)} stage processes started ({layout}); "
                      "warm-up notice (not counted) ...")
        send(0)
        deadline = time.monotonic() + 240
        while "hermes" not in tracker.seen.get(triggers[0][0], {}):
            check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("the warm-up notice gave no HERMES message in 240 s "
                                   "(logs: BENCH_KEEP_LOGS=DIR keeps them)")
            time.sleep(0.1)
        console.print(f"{label}: warm-up notice → HERMES in "
                      f"{tracker.seen[triggers[0][0]]['hermes'][0] - sent[triggers[0][0]]:.1f} s (start-up included); "
                      f"ZTF load {args.ztf_rate:,.0f} alerts/s for {args.warmup_s:.0f} s before the notices")

        ctx = mp.get_context("fork")
        ztf_stop, ztf_count = ctx.Event(), ctx.Value("q", 0)
        ztf_proc = ctx.Process(target=feed_ztf, args=(bootstrap, prefix, ztf_topic, args.ztf_rate, ztf_stop,
                                                      ztf_count), daemon=True)
        if args.ztf_rate > 0:
            ztf_proc.start()
        lags: list[tuple[float, dict[str, int]]] = []

        def lag_loop() -> None:
            while not lag_stop.wait(2.0):
                try:
                    lags.append((time.time(), sample_lag(bootstrap, group)))
                except Exception:  # noqa: BLE001 - a missed sample is not a failure of the run
                    pass

        threading.Thread(target=lag_loop, daemon=True).start()
        time.sleep(args.warmup_s)
        pg_waits: Counter = Counter()
        pg_stop = threading.Event()
        pg_thread = threading.Thread(target=sample_pg_waits, args=(db_url, pg_stop, 0.05, pg_waits), daemon=True)
        if args.pg_waits:
            pg_thread.start()
        load_before = os.getloadavg()
        pids = {n: p.pid for n, p in procs.items()}
        cpu_first = cpu_seconds(pids)
        t_first = time.time()
        ztf_at_first = ztf_count.value
        n = args.notices - 1
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as prog:
            t_sent = prog.add_task(f"{label}: notices sent", total=n)
            t_done = prog.add_task(f"{label}: HERMES messages received", total=n)
            start = time.monotonic()
            for j in range(1, args.notices):
                send(j)
                prog.update(t_sent, completed=j)
                prog.update(t_done, completed=n_done())
                check_alive()
                time.sleep(max(0.0, start + j * args.interval_s - time.monotonic()))
            t_last = time.time()
            cpu_last = cpu_seconds(pids)
            ztf_at_last = ztf_count.value
            pg_stop.set()
            deadline = time.monotonic() + args.settle_s
            while time.monotonic() < deadline and n_done() < n:
                prog.update(t_done, completed=n_done())
                time.sleep(0.2)
            prog.update(t_done, completed=n_done())
        load_after = os.getloadavg()
        ztf_stop.set()
        lag_stop.set()
        if ztf_proc.is_alive():
            ztf_proc.join(60)

        analysis = {}
        for line in timing.read_text().splitlines():
            d = json.loads(line)
            analysis[d["upstream_id"]] = d["end"] - d["start"]
        batches = ([json.loads(line) for line in phases.read_text().splitlines()]
                   if phases is not None and phases.exists() else [])
        with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            rows = conn.execute("SELECT key, extract(epoch FROM created_at), extract(epoch FROM sent_at) "
                                "FROM outbox WHERE channel = 'hermes'").fetchall()
        outbox = {k.rsplit(":", 1)[-1]: (float(c), float(x) if x is not None else None) for k, c, x in rows}
        rid_by_trigger = {t: r for r, t in tracker.rid_of.items()}
        per: list[dict] = []
        for trig, _ in triggers[1:]:
            seen = tracker.seen.get(trig, {})
            rec = {"trigger": trig, "sent": sent.get(trig), "analysis_s": analysis.get(trig)}
            for lab in ("events", "enriched", "requests", "results", "hermes"):
                if lab in seen:
                    rec[lab], rec[lab + "_created"] = seen[lab]
            rid = rid_by_trigger.get(trig)
            rec["rid"] = rid
            if rid in outbox:
                rec["outbox_put"], rec["outbox_sent"] = outbox[rid]
            per.append(rec)
        span = t_last - t_first

        def rate_between(lab: str) -> float:
            ts = [t for t in tracker.ztf_counts.get(lab, []) if t_first <= t <= t_last]
            return len(ts) / span if span > 0 else float("nan")

        return {"label": label, "layout": layout, "per_notice": per, "lags": lags, "t_last": t_last, "span_s": span,
                "ztf_rate": (ztf_at_last - ztf_at_first) / span if span > 0 else float("nan"),
                "events_rate": rate_between("events"), "enriched_rate": rate_between("enriched"),
                "load_before": load_before, "load_after": load_after, "pg_waits": dict(pg_waits),
                "batches": batches,
                "cpu_cores": {n: (cpu_last[n] - cpu_first[n]) / span for n in cpu_last if n in cpu_first and span > 0}}
    finally:
        lag_stop.set()
        if ztf_stop is not None:
            ztf_stop.set()
        if ztf_proc is not None and ztf_proc.is_alive():
            ztf_proc.terminate()
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()
        if tracker is not None:
            tracker.close()
        if os.environ.get("BENCH_KEEP_LOGS"):
            shutil.copytree(tmp / "logs", Path(os.environ["BENCH_KEEP_LOGS"]) / f"{label}-{run_id}",
                            dirs_exist_ok=True)
        stop_embedded_postgres(tmp / "pg")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            cleanup_kafka(s, prefix)
        except Exception as exc:  # noqa: BLE001 - cleanup must not hide the run's own error
            console.print(f"could not delete this run's Kafka topics/groups: {exc}")


def latencies(res: dict) -> tuple[list[float], list[float], list[dict]]:
    """(latency ms, analysis ms, notices done) of one run: HERMES received − produced − analysis."""
    done = [r for r in res["per_notice"] if "hermes" in r and r["analysis_s"] is not None]
    return ([1e3 * (r["hermes"] - r["sent"] - r["analysis_s"]) for r in done],
            [1e3 * r["analysis_s"] for r in done], done)


HOPS = [("ingest", "notice → mma.events (ingest)", "sent", "events"),
        ("enrich", "mma.events → enriched (enrich)", "events", "enriched"),
        ("filters", "enriched → followup.requests (filters)", "enriched", "requests"),
        ("followup", "requests → followup.results (followup − analysis)", "requests", "results"),
        ("reports", "results → outbox row put (reports)", "results", "outbox_put"),
        ("publish", "outbox put → sent (publish)", "outbox_put", "outbox_sent"),
        ("hermes", "outbox sent → HERMES received", "outbox_sent", "hermes")]
"""Hops of the path: (short name, label, step it starts at, step it ends at)."""


def hop_ms(r: dict) -> dict[str, float]:
    """Each hop of one notice, short name → ms (the follow-up hop without its analysis time)."""
    return {key: 1e3 * (r[b] - r[a] - (r["analysis_s"] if b == "results" else 0.0))
            for key, _, a, b in HOPS if a in r and b in r}


def tail_hops(done: list[dict], lat: list[float], q: float = 0.95) -> tuple[int, Counter, dict[str, float]]:
    """The notices whose latency is at or above its ``q`` percentile: how many, how often
    each hop was the largest of a notice's hops, and each hop's median among them, ms."""
    cut = pct(lat, q)
    tail = [hop_ms(r) for r, x in zip(done, lat) if x >= cut]
    worst = Counter(max(h, key=h.get) for h in tail if h)
    return len(tail), worst, {key: pct([h[key] for h in tail if key in h], 0.5) for key, *_ in HOPS}


PHASE_LOOPS = [("ingest", ("ingest.notices",)), ("enrich", ("enrich.notices", "enrich")),
               ("filters", ("filters.notices", "filters")), ("followup", ("followup.worker",)),
               ("reports", ("reports",))]
"""The notice path's StageRunner loops, per hop (lanes layout, stages layout)."""


def phase_split(res: dict) -> dict[str, dict[str, list[float]]]:
    """Each hop of each published notice split at its loop's batch (``--phases``), ms:
    ``wait`` from the previous loop's commit (the notice's production, for ingest) to the
    batch's start (Kafka's delivery to a read_committed consumer, and the batch wait),
    ``handle``, ``write`` (the durable write: PostgreSQL) and ``commit`` (the Kafka
    transaction: produce, flush, offsets, commit); also ``batch``, records in the batch."""
    first: dict[tuple[str, str], dict] = {}
    for b in res.get("batches", []):
        for k in b["keys"]:
            first.setdefault((b["loop"], k), b)
    out: dict[str, dict[str, list[float]]] = {hop: defaultdict(list) for hop, _ in PHASE_LOOPS}
    _, _, done = latencies(res)
    for r in done:
        prev = r["sent"]
        for hop, loops in PHASE_LOOPS:
            b = next((first[(lp, r["trigger"])] for lp in loops if (lp, r["trigger"]) in first), None)
            if b is None or "committed" not in b:
                break
            split = out[hop]
            split["wait"].append(1e3 * (b["start"] - prev))
            split["handle"].append(1e3 * (b.get("handled", b["start"]) - b["start"]))
            split["write"].append(1e3 * (b.get("written", b["committed"]) - b.get("handled", b["start"])))
            split["commit"].append(1e3 * (b["committed"] - b.get("written", b["start"])))
            split["batch"].append(float(b["n"]))
            if "raw_s" in b:  # the raw store's share of the write (segment file + fsyncs), the rest PostgreSQL
                split["raw store"].append(1e3 * b["raw_s"])
                split["of which directory fsync"].append(1e3 * b.get("dir_fsync_s", 0.0))
                split["PostgreSQL"].append(split["write"][-1] - 1e3 * b["raw_s"])
            prev = b["committed"]
    return out


OUTBOX_STEPS = [("results → put start (reports: delivery, handle)", "results", "put_start"),
                ("put: INSERT + commit + NOTIFY", "put_start", "put_committed"),
                ("put committed → sender woke", "put_committed", "woke"),
                ("woke → claim start", "woke", "claim_start"),
                ("claim: UPDATE … RETURNING, committed", "claim_start", "claimed"),
                ("claimed → send returned (validate, hop-client)", "claimed", "send_returned"),
                ("send returned → HERMES received", "send_returned", "hermes"),
                ("(off the path) send returned → sent recorded", "send_returned", "marked")]
"""The outbox hops of a notice, step by step (``--phases``): label, from, to."""


def outbox_split(res: dict) -> dict[str, list[float]]:
    """The two outbox hops of each published notice split at their steps (``--phases``;
    :data:`OUTBOX_STEPS`), ms. ``woke`` is the sender's last return from its wait for a
    NOTIFY before the claim; when it came before the entry was committed (the sender was
    already busy in a round), the wake step counts 0 and the next one starts at the commit."""
    puts = {b["keys"][0]: b for b in res.get("batches", []) if b.get("loop") == "outbox.put"}
    sends = {b["keys"][0]: b for b in res.get("batches", []) if b.get("loop") == "outbox.send"}
    out: dict[str, list[float]] = defaultdict(list)
    _, _, done = latencies(res)
    for r in done:
        key = f"hermes:followup:{r.get('rid')}"
        if key not in puts or key not in sends:
            continue
        p, sd = puts[key], sends[key]
        t = {"results": r.get("results"), "put_start": p["start"], "put_committed": p["committed"],
             "claim_start": sd["claim_start"], "claimed": sd["claimed"], "send_returned": sd["send_returned"],
             "marked": sd["marked"], "hermes": r.get("hermes")}
        woke = sd.get("woke")
        t["woke"] = woke if woke is not None and woke >= p["committed"] else p["committed"]
        for label, a, b in OUTBOX_STEPS:
            if t.get(a) is not None and t.get(b) is not None:
                out[label].append(1e3 * (t[b] - t[a]))
    return out


def report(res: dict, args: argparse.Namespace, console: Console) -> None:
    """The tables of one run: latency, analysis, per hop, ZTF rates, consumer lag."""
    lat, ana, done = latencies(res)
    n = len(res["per_notice"])
    table = Table(title=f"{res['label']}: GCN notice in → HERMES message out, {len(done)} of {n} notices, analysis "
                        f"excluded (targets p50 ≤ {TARGET_P50_MS:.0f} ms, p99 ≤ {TARGET_P99_MS:.0f} ms)")
    for col in ("figure", "p50 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="right" if col != "figure" else "left")

    def row(name: str, xs: list[float]) -> None:
        table.add_row(name, *(f"{pct(xs, q):,.0f}" for q in (0.5, 0.95, 0.99)), f"{max(xs, default=float('nan')):,.0f}")

    row("latency: HERMES received − notice produced − analysis", lat)
    row("follow-up analysis (run_followup wall time), excluded", ana)
    for key, name, a, b in HOPS:
        row("  hop: " + name, [h[key] for h in map(hop_ms, done) if key in h])
    for lab in ("events", "enriched", "requests", "results"):
        xs = [1e3 * (r[lab] - r[lab + "_created"]) for r in done if lab in r]
        row(f"    in it: CreateTime → received, {lab}", xs)
    console.print(table)
    if lat:
        n_tail, worst, med = tail_hops(done, lat)
        console.print(f"{res['label']}: the slowest 5% ({n_tail} notices, latency ≥ {pct(lat, 0.95):,.0f} ms): "
                      "largest hop " + ", ".join(f"{k} {v}×" for k, v in worst.most_common()) + "; their hops' "
                      "medians " + ", ".join(f"{k} {v:,.0f}" for k, v in med.items()) + " ms")
    cores = res.get("cpu_cores") or {}
    if cores:
        console.print(f"{res['label']}: CPU of each stage process while the notices ran, cores: "
                      + ", ".join(f"{n} {c:.2f}" for n, c in cores.items()) + f"; all {sum(cores.values()):.2f}")
    split = phase_split(res)
    if any(split[hop]["wait"] for hop in split):
        pt = Table(title=f"{res['label']}: each hop of the notice path at its loop's batch (--phases), ms: "
                         "p50 / p95 / p99 / max")
        for col in ("hop", "wait (previous commit → batch start)", "handle", "write (PostgreSQL)",
                    "commit (Kafka transaction)", "records in the batch"):
            pt.add_column(col, justify="right" if col != "hop" else "left")
        for hop, phases in split.items():
            if phases["wait"]:
                pt.add_row(hop, *(" / ".join(f"{pct(phases[k], q):,.0f}" for q in (0.5, 0.95, 0.99))
                                  + f" / {max(phases[k]):,.0f}"
                                  for k in ("wait", "handle", "write", "commit", "batch")))
        console.print(pt)
        for hop, phases in split.items():
            if phases.get("raw store"):
                console.print(f"{res['label']}: the {hop} write, p50 / p95 / p99 / max ms: " + "; ".join(
                    f"{k} " + " / ".join(f"{pct(phases[k], q):,.1f}" for q in (0.5, 0.95, 0.99))
                    + f" / {max(phases[k]):,.1f}" for k in ("write", "raw store", "of which directory fsync",
                                                            "PostgreSQL")))
    osplit = outbox_split(res)
    if osplit:
        ot = Table(title=f"{res['label']}: the outbox hops (reports → publish) step by step (--phases), ms: "
                         "p50 / p95 / p99 / max")
        for col in ("step", "p50", "p95", "p99", "max", "notices"):
            ot.add_column(col, justify="right" if col != "step" else "left")
        for label, *_ in OUTBOX_STEPS:
            xs = osplit.get(label, [])
            if xs:
                ot.add_row(label, *(f"{pct(xs, q):,.1f}" for q in (0.5, 0.95, 0.99)), f"{max(xs):,.1f}", str(len(xs)))
        console.print(ot)
    waits = dict(res.get("pg_waits") or {})
    samples = waits.pop("samples", 0)
    if samples:
        busy = sum(waits.values())
        top = sorted(waits.items(), key=lambda kv: -kv[1])[:8]
        console.print(f"{res['label']}: PostgreSQL, active client backends of the run's database over {samples} "
                      f"samples (every 50 ms, notices window): {busy / samples:.2f} on average; what they waited on: "
                      + ", ".join(f"{k} {v / samples:.2f}" for k, v in top))
    reached = {lab: sum(lab in r for r in res["per_notice"])
               for lab in ("events", "enriched", "requests", "results", "outbox_put", "hermes")}
    console.print(f"{res['label']}: notices that reached each step: "
                  + ", ".join(f"{lab} {k}" for lab, k in reached.items()))
    lb, la = res["load_before"], res["load_after"]
    console.print(f"{res['label']}: notices every {args.interval_s:g} s over {res['span_s']:.0f} s; ZTF load "
                  f"generator {res['ztf_rate']:,.0f} alerts/s (asked {args.ztf_rate:,.0f}); ZTF Events per s seen on "
                  f"mma.events {res['events_rate']:,.0f}, on mma.events.enriched {res['enriched_rate']:,.0f}; load "
                  f"average before the notices {lb[0]:.2f} {lb[1]:.2f} {lb[2]:.2f}, after {la[0]:.2f} {la[1]:.2f} "
                  f"{la[2]:.2f}")
    lags = res["lags"]
    if lags:
        names = sorted({k for _, d in lags for k in d})
        lt = Table(title=f"{res['label']}: consumer lag (records), sampled every 2 s")
        for col in ("stage group", "max", "at the last notice", "at the end"):
            lt.add_column(col, justify="right" if col != "stage group" else "left")
        at_last = min(lags, key=lambda x: abs(x[0] - res["t_last"]))[1]
        for g in names:
            lt.add_row(g, f"{max(d.get(g, 0) for _, d in lags):,}", f"{at_last.get(g, 0):,}",
                       f"{lags[-1][1].get(g, 0):,}")
        console.print(lt)
    missing = n - len(done)
    if missing:
        console.print(f"[red]{res['label']}: {missing} notice(s) gave no HERMES message within "
                      f"{args.settle_s:.0f} s of the last notice (not in the percentiles)[/]")
    met = bool(lat) and not missing and pct(lat, 0.5) <= TARGET_P50_MS and pct(lat, 0.99) <= TARGET_P99_MS
    console.print(f"{res['label']}: target {'met' if met else 'NOT met'}: p50 {pct(lat, 0.5):,.0f} ms, "
                  f"p99 {pct(lat, 0.99):,.0f} ms over {len(lat)} notices under {res['ztf_rate']:,.0f} ZTF alerts/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notices", type=int, default=101, help="notices per run, the first a warm-up (default 101)")
    parser.add_argument("--interval-s", type=float, default=1.0, help="seconds between notices (default 1)")
    parser.add_argument("--ztf-rate", type=float, default=1000.0, help="ZTF alerts/s (default 1000)")
    parser.add_argument("--warmup-s", type=float, default=15.0, help="ZTF flow before the first notice, s")
    parser.add_argument("--settle-s", type=float, default=30.0,
                        help="longest wait for the last HERMES messages after the last notice, s")
    parser.add_argument("--short", action="store_true", help="smoke test: 6 notices under 200 ZTF alerts/s")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: the broker's setting)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra setting for every stage, e.g. MMA_BROKER_FOLLOWUP__POLL_TIMEOUT_S=0.05")
    parser.add_argument("--proc-env", action="append", default=[], metavar="PROC[,PROC]:NAME=VALUE",
                        help="extra setting for some stage processes only (names as the layout starts them, "
                             "e.g. ingest.notices,enrich.notices:MMA_BROKER_ARCHIVE__RAW_STORE=postgres)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=PATH",
                        help="also run the stages from another source tree (e.g. `git archive` of another commit); "
                             "the runs alternate, each round starting with the next tree")
    parser.add_argument("--rounds", type=int, default=1, help="rounds (each runs this tree and every variant)")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's figures to this file")
    parser.add_argument("--layout", action="append", default=[], choices=["stages", "lanes", "lanes-unniced"],
                        help="stages: six processes (default); lanes: enrich and filters as a notices and an optical "
                             "lane, ingest per upstream, nine processes; repeat to alternate them")
    parser.add_argument("--phases", action="store_true",
                        help="split each hop of the notice path at its loop's batch: wait, handle, write "
                             "(PostgreSQL), commit (Kafka transaction)")
    parser.add_argument("--pg-waits", action="store_true",
                        help="sample pg_stat_activity every 50 ms while the notices run: what the stages' "
                             "PostgreSQL backends wait on (lock, WAL flush, I/O, CPU)")
    parser.add_argument("--nice", type=int, default=10,
                        help="niceness of the optical lane's processes in the lanes layout (0: none; default 10)")
    args = parser.parse_args()
    args.layout = args.layout or ["stages"]
    if args.short:
        args.notices, args.ztf_rate, args.warmup_s = 6, 200.0, 8.0
    console = Console(width=None if sys.stdout.isatty() else 140)
    a, b, c = os.getloadavg()
    console.print(f"machine: {os.cpu_count()} CPUs, load average at start {a:.2f} {b:.2f} {c:.2f}; "
                  f"{time.strftime('%Y-%m-%d %H:%M %Z')}")
    trees = [("this tree", ROOT)] + [(v.partition("=")[0], Path(v.partition("=")[2]).resolve()) for v in args.variant]
    for name, tree in trees:
        if not (tree / "broker" / "__init__.py").is_file():
            raise SystemExit(f"{name}: {tree.name} holds no broker/ package")
    results = []
    for r in range(args.rounds):
        k = r % len(trees)  # each round starts with another tree: no tree always runs first
        for (name, tree), layout in [(t, lay) for t in trees[k:] + trees[:k] for lay in args.layout]:
            tag = name if len(args.layout) == 1 else f"{name}, {layout}"
            if layout == "lanes" and args.nice:
                tag += f" (optical nice {args.nice})"
            res = run_once(tree, args, console, f"{tag}, round {r + 1}", layout)
            res["variant"], res["round"] = name, r
            report(res, args, console)
            results.append(res)
    if len(results) > 1:
        t = Table(title="all runs: latency, analysis excluded, ms")
        for col in ("run", "notices", "p50", "p95", "p99", "max", "analysis p50", "ZTF alerts/s", "load1 before"):
            t.add_column(col, justify="right" if col != "run" else "left")
        for res in results:
            lat, ana, done = latencies(res)
            t.add_row(res["label"], f"{len(done)}/{len(res['per_notice'])}",
                      *(f"{pct(lat, q):,.0f}" for q in (0.5, 0.95, 0.99)), f"{max(lat, default=float('nan')):,.0f}",
                      f"{pct(ana, 0.5):,.0f}", f"{res['ztf_rate']:,.0f}", f"{res['load_before'][0]:.2f}")
        console.print(t)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
