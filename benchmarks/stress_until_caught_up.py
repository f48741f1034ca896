"""Stress ``run --until-caught-up`` on freshly created topics: does the catch-up exit
ever leave a message behind?

Each iteration takes a new random topic prefix, replays the quickstart's real alerts
(``deploy/demo-alerts.txt``: IGWN JSON and Avro with ~1 MB sky maps, GCN, VOEvents,
ZTF) into new topics with :func:`broker.replay.replay_files` (what ``mma-broker
replay`` does), then runs the two default ingest loops (``notices`` and ``ztf``, each a
regular-expression subscription) with ``until_caught_up=True`` as ``mma-broker run``
builds them: real decoders, transactional producers, ``read_committed`` consumers,
the admin client for the caught-up check. Only the archive is replaced by an
in-memory one (no PostgreSQL), so a run takes a few seconds.

Two ways to lose an alert are counted apart:

* *lost on replay*: the replay's producer got a successful delivery report, but the
  record is not in the topic (the sum of the high watermarks is short; such a report
  has no offset). This is what the catch-up flake was: see
  :func:`broker.kafka.ensure_topics`; ``--debug-dir`` keeps the producer's librdkafka
  log (``msg,eos,protocol``), where each loss shows as ``IMPLICITACK``;
* *missed*: a record in the topic that no loop handled by the time every loop said it
  was caught up (the runner's catch-up logic; batches dropped as "partitions moved in
  a rebalance" are counted too).

The script prints a line per iteration and the totals, and exits 1 if anything was lost.

Usage (against a Kafka of your own; never the shared one of the test suite)::

    python benchmarks/stress_until_caught_up.py --bootstrap 127.0.0.1:19192 --iterations 30

Options: ``--delete-topics`` (delete each iteration's topics; without it a few hundred
partitions pile up per iteration), ``--idle`` (s, the runner's idle_s; default 3 like the CLI), ``--no-ztf``
(the notices loop alone), ``--parallel-topic-creator`` (another thread keeps creating
unrelated topics during the run, the way other stages' ``ensure_topics`` do).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class MemoryArchive:
    """``write_batch``/``store_raw`` in memory: what the ingest stage needs of an archive."""

    def __init__(self) -> None:
        self.rows: dict[str, object] = {}
        self.lock = threading.Lock()

    def write_batch(self, items):
        with self.lock:
            for it in items:
                self.rows.setdefault(it.event.id, it.kafka)
        return None

    def store_raw(self, blobs):
        return [None for _ in blobs]


class RecordingProducer:
    """A producer whose delivery reports are also recorded: (topic, partition, offset, file)."""

    def __init__(self, producer) -> None:
        self.producer = producer
        self.delivered: list[tuple[str, int, int, str]] = []

    def produce(self, topic, value=None, headers=None, on_delivery=None, **kw):
        name = dict(headers or []).get("mma.replay.file", b"").decode()

        def report(err, msg):
            if err is None:
                self.delivered.append((msg.topic(), msg.partition(), msg.offset(), name))
            if on_delivery is not None:
                on_delivery(err, msg)

        return self.producer.produce(topic, value=value, headers=headers, on_delivery=report, **kw)

    def __getattr__(self, name):
        return getattr(self.producer, name)


class Handled(logging.Handler):
    """Counts the runner's warnings that say a batch was dropped."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "moved in a rebalance" in text:
            self.counts["rebalance drop"] += 1
        elif "caught-up check" in text:
            self.counts["caught-up check failed"] += 1


def one_iteration(bootstrap: str, files: list[Path], idle_s: float, ztf: bool, creator: bool,
                  watcher: Handled, debug_dir: str | None = None) -> dict:
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    from broker.config import Settings
    from broker.kafka import claim_instance, ensure_topics, make_producer, stage_producer
    from broker.pipeline.ingest import IngestStage, same_cluster
    from broker.replay import replay_files
    from broker.serde import Provenance
    from broker.upstreams import make_admin, make_upstream_consumer, upstream_topics

    tag = uuid.uuid4().hex[:10]
    prefix = f"flk{tag}."
    home = Path(f"/tmp/flake-stress-home/{tag}")
    s = Settings(home=home, group_id=f"flk{tag}",
                 kafka={"bootstrap_servers": bootstrap, "topic_prefix": prefix})
    extra = {}
    if debug_dir:
        dbg = logging.getLogger(f"stress.rdkafka.{tag}")
        dbg.propagate = False
        handler = logging.FileHandler(Path(debug_dir) / f"replay-{tag}.log")
        handler.setFormatter(logging.Formatter("%(created).3f %(message)s"))
        dbg.addHandler(handler)
        dbg.setLevel(logging.DEBUG)
        extra = {"logger": dbg, "debug": "msg,eos,protocol,topic,metadata"}
    producer = RecordingProducer(make_producer(s, **extra))
    t0 = time.monotonic()
    result = replay_files(files, producer, topic_prefix=prefix,
                          create_topics=lambda names: ensure_topics(s, sorted(names)))
    replayed_s = time.monotonic() - t0
    admin = AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(timeout=10).topics
    inputs = sorted(n for n in md if n.startswith(prefix))
    from confluent_kafka.admin import OffsetSpec
    tps = [TopicPartition(n, p) for n in inputs for p in md[n].partitions]
    futs = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=10)
    ends = {(tp.topic, tp.partition): f.result().offset for tp, f in futs.items()}
    expected = {(t, p, o) for (t, p), end in ends.items() for o in range(end)}
    delivered = {(t, p, o) for t, p, o, _name in producer.delivered}
    # delivered but not below the high watermark, or in a topic the metadata did not list
    not_in_log = sorted(d for d in delivered - expected)
    in_log_not_delivered = sorted(expected - delivered)

    events, dlq = s.topic(s.events_topic), s.topic(s.dlq_topic)
    ensure_topics(s, [events, dlq])
    seen: set = set()
    seen_lock = threading.Lock()
    workers, threads, slots = [], [], []
    stop = threading.Event()
    ups = [u for u in s.upstreams if ztf or u.name != "ztf"]
    for up in ups:
        name = f"ingest.{up.name}"
        slot = claim_instance(s, name)
        slots.append(slot)
        stage = IngestStage(
            make_upstream_consumer(s, up), stage_producer(s, name, slot), MemoryArchive(),
            events_topic=events, dlq_topic=dlq, provenance=Provenance("ingest", "stress", "0"),
            batch_size=up.batch_size or s.ingest.batch_size,
            poll_timeout_s=up.poll_timeout_s or s.ingest.poll_timeout_s, name=name,
            admin=make_admin(s, up), subscription=upstream_topics(s, up), limits=s.limits,
            transactional=s.kafka.transactions, offsets_in_transaction=same_cluster(s, up))
        committed = stage.handler.committed

        def record(batch, dead, committed=committed):
            with seen_lock:
                for h in batch:
                    seen.add((h.msg.topic(), h.msg.partition(), h.msg.offset()))
                for m, _ in dead:
                    seen.add((m.topic(), m.partition(), m.offset()))
            committed(batch, dead)

        stage.handler.committed = record
        workers.append(stage)
        threads.append(threading.Thread(target=stage.run, args=(stop,), kwargs={"until_caught_up": True,
                                                                                 "idle_s": idle_s}))
    done = threading.Event()

    def create_others() -> None:
        n = 0
        while not done.is_set():
            ensure_topics(s, [f"{prefix}other.{n}"])
            n += 1
            time.sleep(0.3)

    t1 = time.monotonic()
    for t in threads:
        t.start()
    side = threading.Thread(target=create_others) if creator else None
    if side:
        side.start()
    for t in threads:
        t.join(300)
    done.set()
    if side:
        side.join()
    run_s = time.monotonic() - t1
    for sl in slots:
        sl.release()
    missed = sorted(expected - seen)
    # a topic the replay wrote that the metadata above did not list
    unlisted = {t: n for t, n in result.per_topic.items() if t not in md}
    per_topic_ends = Counter()
    for (t, _p), end in ends.items():
        per_topic_ends[t] += end
    short = {t: (n, per_topic_ends.get(t, 0)) for t, n in result.per_topic.items() if per_topic_ends.get(t, 0) != n}
    return {"replayed": len(expected), "sent": result.sent, "handled": len(seen & expected),
            "missed": missed, "replay_s": replayed_s, "run_s": run_s,
            "stats": sum(w.stats.messages for w in workers), "topics": inputs + [events, dlq],
            "seen": len(seen), "unlisted": unlisted, "short": short,
            "not_in_log": not_in_log, "in_log_not_delivered": in_log_not_delivered,
            "handled_not_expected": sorted(seen - expected)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--idle", type=float, default=3.0)
    ap.add_argument("--no-ztf", action="store_true")
    ap.add_argument("--parallel-topic-creator", action="store_true")
    ap.add_argument("--debug-dir", help="write the replay producer's librdkafka debug log here")
    ap.add_argument("--delete-topics", action="store_true", help="delete each iteration's topics afterwards")
    args = ap.parse_args()

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from broker.replay import read_manifest

    watcher = Handled()
    broker_log = logging.getLogger("broker")
    broker_log.addHandler(watcher)
    broker_log.setLevel(logging.WARNING)
    broker_log.propagate = False  # the decoders' warnings on the real alerts are not news here
    files = read_manifest(ROOT / "deploy" / "demo-alerts.txt")
    console = Console(stderr=True)
    total = Counter()
    with Progress(TextColumn("stress"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("stress", total=args.iterations)
        for i in range(args.iterations):
            before = Counter(watcher.counts)
            r = one_iteration(args.bootstrap, files, args.idle, not args.no_ztf, args.parallel_topic_creator,
                              watcher, args.debug_dir)
            drops = watcher.counts["rebalance drop"] - before["rebalance drop"]
            total["iterations"] += 1
            total["records"] += r["replayed"]
            total["missed"] += len(r["missed"])
            total["iterations with a miss"] += bool(r["missed"])
            total["rebalance drops"] += drops
            total["lost on replay"] += r["sent"] - r["replayed"]
            total["iterations with a replay loss"] += r["sent"] != r["replayed"]
            bar.console.print(f"{i + 1:3d}: {r['replayed']} records, handled {r['handled']}, "
                              f"missed {len(r['missed'])}, batches dropped in a rebalance {drops}, "
                              f"replay {r['replay_s']:.1f} s, run {r['run_s']:.1f} s"
                              + (f"  sent {r['sent']}, seen {r['seen']}, unlisted {r['unlisted']}, short {r['short']}"
                                 if r["sent"] != r["replayed"] or r["short"] else "")
                              + (f"  delivered, not in the log: {r['not_in_log']}; in the log, no report: "
                                 f"{r['in_log_not_delivered']}; handled, not expected: {r['handled_not_expected']}"
                                 if r["not_in_log"] or r["in_log_not_delivered"] or r["handled_not_expected"] else "")
                              + (f"  missed: {[(t.split('.', 1)[1], p, o) for t, p, o in r['missed']][:5]}"
                                 if r["missed"] else ""))
            if args.delete_topics:
                from confluent_kafka.admin import AdminClient
                cleaner = AdminClient({"bootstrap.servers": args.bootstrap})
                futures = cleaner.delete_topics(r["topics"], operation_timeout=60)
                for f in futures.values():
                    f.result()
            bar.update(task, completed=i + 1)
    print(", ".join(f"{k}: {v}" for k, v in total.items()))
    return 1 if total["missed"] or total["lost on replay"] else 0


if __name__ == "__main__":
    sys.exit(main())
