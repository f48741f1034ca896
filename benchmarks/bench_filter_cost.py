#!/usr/bin/env python
"""Benchmark: what the filters cost against the whole unfiltered path, in CPU time per ZTF alert.

The issue's last speed target is "filters cost < 20 % of the unfiltered path". Here the
unfiltered path is everything the broker does to a ZTF alert without filters — the
``ingest`` stage (consume, decode + normalize, archive the Event and its raw bytes,
produce ``mma.events``) and the ``enrich`` stage (read it back, localization, group,
cross-match, coincidences, produce ``mma.events.enriched``) — and the filters' cost is
the ``filters`` stage with 20 filters (read ``mma.events.enriched``, fetch the raw bytes
from the archive, decode the history, 20 decisions, archive every decision with one
``COPY`` per batch, produce the accepted Events on their topics).

Per repeat, in a fresh database of one embedded PostgreSQL and fresh topics on the real
Kafka, on the same messages (the real alerts of ``tests/data/ztf`` repeated to ``--n``
with distinct ``candid``, as ``bench_e2e.py`` makes them), the three stages run one
after the other, each alone in its own ``mma-broker run --stage S --until-caught-up``
process on a full input topic (so each is busy for its whole measured span):

(A) ``--stage ingest`` on the ZTF topic, written before it starts;
(B) ``--stage enrich`` on (A)'s ``mma.events``;
(C) ``--stage filters`` on (B)'s ``mma.events.enriched``, with the 20 filters of
    ``bench_filters.py`` (e): every installed plugin with its defaults and ``ztf-decent``
    configured 12 more ways (``[followup]`` off, as in bench_filter_stage.py).

CPU time: user + system of the stage's process (and, separately, of the embedded
PostgreSQL's process tree), sampled with psutil every 0.25 s (``bench_e2e.CpuSampler``)
and interpolated at the two ends of the span in which the stage handled the alerts:
(A) from the first to the last archive batch start (``ingested_at``: alerts = rows of
all batches but the last); (B) from the first to the last record timestamp on
``mma.events.enriched``; (C) from the first to the last ``decided_at`` of an Event
(alerts = Events in the span, minus one). Start-up (imports, numba cache, group join)
and the idle wait before ``--until-caught-up`` ends lie outside the span. The Kafka
server is shared with other users of the machine: its CPU is not counted.

Prints µs of CPU per alert for each stage (median and range over ``--repeat``), and
the ratio C ÷ (A + B) taken within each repeat: worker processes alone, and workers +
PostgreSQL. ``--variant NAME=PATH`` runs (C) again, with ``PYTHONPATH=PATH`` (another
consumer group on the same enriched topic, and its own copy of the database taken
after (B), downgraded to the schema that tree knows), before or after this tree's (C)
(the order rotates from repeat to repeat), for before/after figures from one run. Run::

    .venv/bin/python benchmarks/bench_filter_cost.py [--n 5000] [--repeat 3] [--variant NAME=PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import bench_e2e as e2e  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

BATCH = 500
TARGET = 0.20
"""Filters' CPU per alert over the unfiltered path's (issue 10)."""


def twenty_entries() -> list[dict]:
    """The 20 filters of bench_filters.py (e), as ``[[filters.filters]]`` entries."""
    from bench_filters import VARIANTS
    from filters.registry import available, filter_class

    entries = []
    for name in available():
        try:
            filter_class(name).from_params({})
        except Exception:  # noqa: BLE001 - a plugin that needs parameters is left out, as in bench_filters
            continue
        entries.append({"name": name, "plugin": name})
    for i, params in enumerate(VARIANTS[: max(0, 20 - len(entries))]):
        entries.append({"name": f"ztf-decent-{i}", "plugin": "ztf-decent", "params": params})
    return entries


# ------------------------------------------------------------------ spans
def ingest_span(phase: e2e.Phase) -> tuple[float, float, int]:
    """(start, end, alerts) of the archive batches: first to last batch start, rows of all but the last."""
    batches = e2e.batch_starts(phase.db_url, 0.0)
    if len(batches) < 3:
        raise RuntimeError(f"ingest: {len(batches)} batch(es); use a larger --n")
    return batches[0][0], batches[-1][0], sum(k for _, k in batches[:-1])


def decided_stamps(db_url: str) -> list[float]:
    """Sorted first ``decided_at`` (Unix s) of every Event with a live decision (either
    layout of ``filter_decisions``: a row per decision, 0101, or per Event, 0102)."""
    import psycopg

    with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        per_decision = conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_schema = "
                                    "current_schema() AND table_name = 'filter_decisions' AND column_name = 'filter'"
                                    ).fetchone()[0]
        if per_decision:
            rows = conn.execute("SELECT extract(epoch FROM min(decided_at))::float8 FROM filter_decisions "
                                "WHERE run = 'live' GROUP BY event_id ORDER BY 1").fetchall()
        else:
            rows = conn.execute("SELECT extract(epoch FROM decided_at)::float8 FROM filter_decisions "
                                "WHERE run = 'live' ORDER BY 1").fetchall()
    return [float(t) for (t,) in rows]


def variant_database(phase: e2e.Phase, server_url: str, name: str, path: str) -> str:
    """A copy of the phase's database (after (B)) at the schema the variant's tree knows; its URL.

    The variant's filter stage gets the same Events and raw refs without the decisions
    of this tree's (C), and its own tables: this tree may have migrated further (a
    variant refuses a schema newer than it knows), so the copy is downgraded, with this
    tree's revisions, revision by revision until every applied one is known to the variant.
    """
    import psycopg
    import sqlalchemy as sa
    from alembic import command
    from alembic.script import ScriptDirectory
    from broker.archive.store import alembic_config

    src, db = f"bench_{phase.name}", f"bench_{phase.name}_{name}"
    admin = server_url.replace("postgresql+psycopg://", "postgresql://").replace("/mma_broker?", "/postgres?")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}" TEMPLATE "{src}"')
    url = phase.db_url.replace(f"/{src}?", f"/{db}?")
    script = ("from alembic.script import ScriptDirectory\nfrom broker.archive.store import alembic_config\n"
              "print(' '.join(r.revision for r in ScriptDirectory.from_config(alembic_config()).walk_revisions()))")
    known = set(subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=path), cwd=path,
                               capture_output=True, text=True, check=True).stdout.split())
    ours = ScriptDirectory.from_config(alembic_config())
    engine = sa.create_engine(url)
    try:
        while True:
            with engine.connect() as conn:
                applied = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
            unknown = sorted(v for v in applied if v not in known)
            if not unknown:
                break
            assert ours.get_revision(unknown[0]) is not None, unknown
            cfg = alembic_config()
            with engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.downgrade(cfg, f"{unknown[0]}@-1")
    finally:
        engine.dispose()
    return url


def drop_database(server_url: str, db: str) -> None:
    """Drop one of the variants' database copies."""
    import psycopg

    admin = server_url.replace("postgresql+psycopg://", "postgresql://").replace("/mma_broker?", "/postgres?")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def run_stage(phase: e2e.Phase, env: dict[str, str], stage: str, log: Path, pgdata: Path,
              py_spy: Path | None = None, py_spy_rate: int = 100) -> e2e.CpuSampler:
    """``mma-broker run --stage STAGE --until-caught-up`` with its CPU sampled; returns the sampler.

    ``py_spy``: also record the process's on-CPU Python stacks there (py-spy raw format,
    ``py_spy_rate`` samples per second).
    """
    cmd = [sys.executable, "-m", "broker", "run", "--stage", stage, "--until-caught-up", "--idle", "5"]
    spy = None
    with log.open("w") as out:
        # python -m puts the working directory first on sys.path: a variant runs in its own tree
        p = subprocess.Popen(cmd, env=env, cwd=env.get("PYTHONPATH") or ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            sampler = e2e.CpuSampler({"worker": p.pid}, None, pgdata).start()
            if py_spy is not None:
                spy = subprocess.Popen([e2e.py_spy_path(), "record", "--pid", str(p.pid), "--rate", str(py_spy_rate),
                                        "--format", "raw", "--output", str(py_spy)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            p.wait()
            sampler.stop()
        finally:
            if p.returncode is None:
                p.kill()
                p.wait()
            if spy is not None:
                spy.wait(60)
    if p.returncode != 0:
        raise RuntimeError(f"{stage} exited {p.returncode}: {log.read_text()[-2000:]}")
    return sampler


def per_alert(sampler: e2e.CpuSampler, t0: float, t1: float, alerts: int) -> dict[str, float]:
    """µs of CPU per alert of the worker and of PostgreSQL between t0 and t1, and the rate."""
    used = sampler.used(t0, t1)
    return {"worker": 1e6 * used["worker"] / alerts, "PostgreSQL": 1e6 * used["PostgreSQL"] / alerts,
            "librdkafka": 1e6 * used.get("worker / librdkafka (rdk:*)", float("nan")) / alerts,
            "rate": alerts / (t1 - t0)}


PARTS = [  # (label, regular expression searched in the ';'-joined stack, outermost first)
    ("consume (librdkafka -> Python messages)", r"StageRunner\.run \([^;]*\)$"),
    ("handle: decode_enriched (JSON -> Event)", r"decode_enriched \("),
    ("handle: raw bytes from the archive (RawBatch.get)", r"RawBatch\.get \("),
    ("  sha256 / raw store", r"RawBatch\.get \(.*(sha256|raw\.py)"),
    ("handle: history decode (decode_history)", r"decode_history \("),
    ("handle: FilterSet.evaluate", r"FilterSet\.evaluate \("),
    ("  filters' apply minus history decode", r"\.apply \((?!.*decode_history)"),
    ("write: decision entries (one row per Event)", r"decision_entries \(|decision_rows \("),
    ("handle: accepted records (json)", r"filtered_record \(|FilterHandler\.handle \(.*(json/|dumps|loads)"),
    ("write: decisions DELETE + COPY (put_decisions)", r"put_decisions \(|put_many \("),
    ("deliver: transaction", r"_deliver_transaction \("),
    ("outside the stage loop", r"\A(?!.*StageRunner\.run)"),
]


def print_profile(console: Console, raw: Path, top: int = 20) -> None:
    """Where the recorded filters stage's on-CPU samples went (inclusive, by part; and leaf functions)."""
    import re
    from collections import Counter

    total, parts, leaves = 0, Counter(), Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        k = int(count)
        total += k
        for label, pat in PARTS:
            if re.search(pat, stack):
                parts[label] += k
        leaves[re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1])] += k
    t = Table(title=f"filters stage, py-spy on-CPU samples ({total:,}), inclusive")
    t.add_column("part")
    t.add_column("share", justify="right")
    for label, _ in PARTS:
        t.add_row(label, f"{parts[label] / max(total, 1):.1%}")
    console.print(t)
    t = Table(title="leaf functions")
    t.add_column("function")
    t.add_column("share", justify="right")
    for name, k in leaves.most_common(top):
        t.add_row(name, f"{k / max(total, 1):.1%}")
    console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="ZTF messages per repeat")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--bootstrap", default=os.environ.get("MMA_BROKER_TEST_KAFKA", "127.0.0.1:9092"))
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=PATH",
                    help="also run (C) with PYTHONPATH=PATH (e.g. a git archive of another commit) on the same "
                         "enriched topic, another consumer group, its own copy of the database; before or after "
                         "(C), rotating: before/after figures of one run")
    ap.add_argument("--py-spy", type=Path, default=None, metavar="FILE",
                    help="record the first repeat's filters stage with py-spy (raw stacks to FILE; its figures "
                         "are then not comparable) and print where its CPU goes")
    ap.add_argument("--py-spy-rate", type=int, default=100, metavar="HZ",
                    help="py-spy samples per second (1,000 for a finer profile; it slows the stage more)")
    args = ap.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 120)
    bases = e2e.load_bases(e2e.ZTF_DIR)
    msgs = e2e.make_messages(bases, args.n)
    from broker.sources import upstream_topic

    ztf_topic = upstream_topic(msgs[0])
    entries = twenty_entries()
    variants = [tuple(v.split("=", 1)) for v in args.variant]
    console.print(f"{args.n:,} real ZTF messages ({len(bases)} alerts of tests/data/ztf repeated); "
                  f"{len(entries)} filters: {', '.join(e['name'] for e in entries)}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-filter-cost-"))
    pgdata = tmp / "pg"
    server = e2e.ensure_embedded_postgres(pgdata)
    run_id = uuid.uuid4().hex[:6]
    rows: list[dict[str, dict[str, float]]] = []
    loads: list[float] = []
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("repeats", total=args.repeat)
            for r in range(args.repeat):
                a = e2e.new_phase(f"fc{r}", run_id, tmp, server, args.bootstrap)
                env = a.env(args.batch, ztf_topic)
                env.update(MMA_BROKER_FOLLOWUP__ENABLED="false", MMA_BROKER_FILTERS__FILTERS=json.dumps(entries),
                           MMA_BROKER_FILTERS__BATCH_SIZE=str(args.batch),
                           MMA_BROKER_ENRICH__BATCH_SIZE=str(args.batch))
                s = a.settings()
                progress.update(task, description=f"repeat {r + 1}: writing the ZTF topic")
                e2e.produce(s, s.topic(ztf_topic), msgs)
                loads.append(os.getloadavg()[0])
                row = {}
                progress.update(task, description=f"repeat {r + 1}: (A) ingest")
                smp = run_stage(a, env, "ingest", tmp / f"a{r}.log", pgdata)
                t0, t1, n = ingest_span(a)
                row["ingest"] = per_alert(smp, t0, t1, n)
                progress.update(task, description=f"repeat {r + 1}: (B) enrich")
                smp = run_stage(a, env, "enrich", tmp / f"b{r}.log", pgdata)
                st = e2e.enriched_stamps(a)
                assert len(st) == args.n, f"enriched {len(st)} of {args.n}"
                row["enrich"] = per_alert(smp, st[0], st[-1], len(st) - 1)
                copies = {}
                for name, path in variants:  # before (C) writes any decision
                    progress.update(task, description=f"repeat {r + 1}: database of {name}")
                    copies[name] = variant_database(a, server, name, path)
                # (C) of this tree and of each variant, the order rotated from repeat to repeat so
                # that none always runs first (each on its own database, the same enriched topic)
                runs = [(None, None)] + list(variants)
                k = r % len(runs)
                for name, path in runs[k:] + runs[:k]:
                    if name is None:
                        progress.update(task, description=f"repeat {r + 1}: (C) filters ({len(entries)})")
                        smp = run_stage(a, env, "filters", tmp / f"c{r}.log", pgdata,
                                        args.py_spy if r == 0 else None, args.py_spy_rate)
                        st = decided_stamps(a.db_url)
                        assert len(st) == args.n, f"decided {len(st)} of {args.n}"
                        row["filters"] = per_alert(smp, st[0], st[-1], len(st) - 1)
                        continue
                    progress.update(task, description=f"repeat {r + 1}: (C) filters, {name}")
                    env_v = dict(env, MMA_BROKER_GROUP_ID=a.group + "-" + name, PYTHONPATH=path,
                                 MMA_BROKER_ARCHIVE__DATABASE_URL=copies[name])
                    smp = run_stage(a, env_v, "filters", tmp / f"c{r}-{name}.log", pgdata)
                    st = decided_stamps(copies[name])
                    assert len(st) == args.n, f"{name}: decided {len(st)} of {args.n}"
                    row[f"filters {name}"] = per_alert(smp, st[0], st[-1], len(st) - 1)
                    drop_database(server, f"bench_{a.name}_{name}")
                loads.append(os.getloadavg()[0])
                rows.append(row)
                e2e.drop_phase(a, server, s)
                progress.advance(task)
    finally:
        e2e.stop_embedded_postgres(pgdata)

    def med(v: list[float], fmt: str = ",.0f") -> str:
        return f"{statistics.median(v):{fmt}} ({min(v):{fmt}}-{max(v):{fmt}})" if len(v) > 1 else f"{v[0]:{fmt}}"

    t = Table(title=f"CPU per ZTF alert, each stage alone on a full input topic; median (range) of {args.repeat}; "
                    f"load average {min(loads):.1f}-{max(loads):.1f}")
    for c in ("stage", "alerts/s", "worker µs/alert", "of which librdkafka", "PostgreSQL µs/alert"):
        t.add_column(c, justify="left" if c == "stage" else "right")
    for k, label in (("ingest", "(A) ingest"), ("enrich", "(B) enrich"), ("filters", f"(C) filters ({len(entries)})")):
        t.add_row(label, med([x[k]["rate"] for x in rows]), med([x[k]["worker"] for x in rows]),
                  med([x[k]["librdkafka"] for x in rows]), med([x[k]["PostgreSQL"] for x in rows]))
    for name, _ in variants:
        k = f"filters {name}"
        t.add_row(f"(C) filters ({len(entries)}), {name}", med([x[k]["rate"] for x in rows]),
                  med([x[k]["worker"] for x in rows]), med([x[k]["librdkafka"] for x in rows]),
                  med([x[k]["PostgreSQL"] for x in rows]))
    console.print(t)
    for name, _ in variants:
        k = f"filters {name}"
        console.print(f"(C) this tree ÷ (C) {name}, worker CPU per alert, per repeat: "
                      f"{med([x['filters']['worker'] / x[k]['worker'] for x in rows], '.2f')}; "
                      f"{name}'s (ii): {med([x[k]['worker'] / (x['ingest']['worker'] + x['enrich']['worker']) for x in rows], '.1%')}")

    def ratio(x: dict[str, dict[str, float]], keys: tuple[str, ...]) -> float:
        return sum(x["filters"][k] for k in keys) / sum(x[s][k] for s in ("ingest", "enrich") for k in keys)

    w = [ratio(x, ("worker",)) for x in rows]
    wp = [ratio(x, ("worker", "PostgreSQL")) for x in rows]
    if args.py_spy is not None and args.py_spy.is_file():
        print_profile(console, args.py_spy)
    console.print(f"(ii) filters ÷ (ingest + enrich), per repeat: worker processes {med(w, '.1%')}; "
                  f"workers + PostgreSQL {med(wp, '.1%')}; target < {TARGET:.0%}: "
                  f"{'met' if statistics.median(w) < TARGET else 'MISSED'} (worker)")


if __name__ == "__main__":
    main()
