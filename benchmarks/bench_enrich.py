#!/usr/bin/env python
"""Benchmark: the enrich stage on real ZTF alerts with catalogs loaded, and what it costs the ingest path.

Per repeat, on the same messages (the real ZTF alerts of ``tests/data/ztf``, repeated to
``--n`` with distinct ``candid`` exactly as ``bench_e2e.py`` makes them) and in fresh
databases of one embedded PostgreSQL, with 50MGC (15,424 galaxies), 4FGL-DR4 (7,195
sources with 95 % ellipses) and gwemopt's GLADE selection (2,000 galaxies) loaded and
named in ``[enrich] catalogs``:

(A) **ingest alone** — ``mma-broker run --stage ingest --until-caught-up``, one worker,
    transactions on: alerts/s of ingest, measured as bench_e2e does (archive batches
    after the last message was written: rows of all batches but the last ÷ the span
    from the first batch start to the last);
(B) **enrich alone** on (A)'s ``mma.events`` — ``mma-broker run --stage enrich``:
    enriched Events/s = records on ``mma.events.enriched`` ÷ the span between the first
    and last record's timestamp (the records of one batch share a transaction, so this
    is over whole batches but the first; ±1 batch of ``--n / batch`` is the resolution);
(C) **ingest + enrich together** in one process (``--stage ingest --stage enrich``, as
    ``mma-broker run`` runs them), on a fresh database and topics: ingest alerts/s as in
    (A), and enrich's rate as in (B). The issue requires the ingest path to stay at or
    above 1,000 alerts/s per worker.

Checks: every phase archives / enriches every alert (counts equal ``--n``).
Figures: median and range over ``--repeat``; (C)/(A) is taken within each repeat.

Usage::

    .venv/bin/python benchmarks/bench_enrich.py [--n 5000] [--repeat 3] [--bootstrap 127.0.0.1:9092]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import bench_e2e as e2e  # noqa: E402  (its message maker, phases and measurements)
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

CATALOGS = [("50MGC", "tests/data/catalogs/50MGC_catalog_short.fits"),
            ("4FGL", "tests/data/catalogs/4FGL-DR4_gll_psc_v35_positions.fits"),
            ("GLADE_gwemopt", "tests/data/catalogs/gwemopt_catalog_glade.csv")]
TARGET_INGEST = 1000.0
"""Alerts/s the ingest path must keep per worker with enrich running (issue 9)."""
BATCH = 500


def env_of(phase: e2e.Phase, ztf_topic: str) -> dict[str, str]:
    env = phase.env(BATCH, ztf_topic)
    env.update(MMA_BROKER_FOLLOWUP__ENABLED="false",
               MMA_BROKER_ENRICH__CATALOGS='["' + '", "'.join(n for n, _ in CATALOGS) + '"]')
    return env


def load_catalogs(env: dict[str, str]) -> None:
    for name, path in CATALOGS:
        subprocess.run([sys.executable, "-m", "broker", "catalog", "load", name, str(ROOT / path)], env=env,
                       cwd=ROOT, check=True, capture_output=True)


def enriched_span(phase: e2e.Phase) -> tuple[int, float]:
    """(records, seconds between the first and last record timestamps) of mma.events.enriched."""
    stamps = e2e.enriched_stamps(phase)
    return len(stamps), (stamps[-1] - stamps[0]) if stamps else float("nan")


def run_cmd(phase: e2e.Phase, env: dict[str, str], stages: list[str], log: Path, msgs: list[bytes] | None,
            ztf_topic: str) -> float:
    """Run ``mma-broker run --stage ... --until-caught-up``; produce ``msgs`` once the
    ingest group is stable. Returns the time the last message was acknowledged."""
    cmd = [sys.executable, "-m", "broker", "run", *[a for st in stages for a in ("--stage", st)],
           "--until-caught-up", "--idle", "10"]
    if msgs is not None:  # the workers start on the empty input topic
        s = phase.settings()
        e2e.ensure_topics(s, [s.topic(ztf_topic)], partitions=e2e.PARTITIONS)
    with log.open("w") as out:
        p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        produced_at = time.time()
        try:
            if msgs is not None:
                s = phase.settings()
                e2e.wait_group_stable(s, f"{phase.group}.ingest.ztf", 1, [p])
                e2e.produce(s, s.topic(ztf_topic), msgs)
                produced_at = time.time()
            p.wait()
        finally:
            if p.returncode is None:
                p.kill()
                p.wait()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(stages)} exited {p.returncode}: {log.read_text()[-2000:]}")
    return produced_at


def ingest_rate(phase: e2e.Phase, since: float) -> float:
    batches = e2e.batch_starts(phase.db_url, since)
    if len(batches) < 3:
        raise RuntimeError(f"{phase.name}: {len(batches)} archive batch(es) measured; use a larger --n")
    return sum(k for _, k in batches[:-1]) / (batches[-1][0] - batches[0][0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="ZTF messages per phase")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bootstrap", default=os.environ.get("MMA_BROKER_TEST_KAFKA", "127.0.0.1:9092"))
    args = ap.parse_args()
    console = Console()
    bases = e2e.load_bases(e2e.ZTF_DIR)
    msgs = e2e.make_messages(bases, args.n)
    from broker.sources import upstream_topic

    ztf_topic = upstream_topic(msgs[0])
    tmp = Path(tempfile.mkdtemp(prefix="bench-enrich-"))
    pgdata = tmp / "pg"
    server = e2e.ensure_embedded_postgres(pgdata)
    run_id = uuid.uuid4().hex[:6]
    rows = []
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("phases", total=args.repeat * 3)
            for r in range(args.repeat):
                a = e2e.new_phase(f"a{r}", run_id, tmp, server, args.bootstrap)
                env_a = env_of(a, ztf_topic)
                load_catalogs(env_a)
                progress.update(task, description=f"repeat {r + 1}: ingest alone")
                t_a = run_cmd(a, env_a, ["ingest"], tmp / f"a{r}.log", msgs, ztf_topic)
                rate_a = ingest_rate(a, t_a)
                assert e2e.archive_count(a.db_url) == args.n
                progress.advance(task)
                progress.update(task, description=f"repeat {r + 1}: enrich alone")
                run_cmd(a, env_a, ["enrich"], tmp / f"b{r}.log", None, ztf_topic)
                n_b, span_b = enriched_span(a)
                assert n_b == args.n, f"enriched {n_b} of {args.n}"
                progress.advance(task)
                progress.update(task, description=f"repeat {r + 1}: ingest + enrich")
                c = e2e.new_phase(f"c{r}", run_id, tmp, server, args.bootstrap)
                env_c = env_of(c, ztf_topic)
                load_catalogs(env_c)
                t_c = run_cmd(c, env_c, ["ingest", "enrich"], tmp / f"c{r}.log", msgs, ztf_topic)
                rate_c = ingest_rate(c, t_c)
                n_c, span_c = enriched_span(c)
                assert n_c == args.n, f"enriched {n_c} of {args.n}"
                progress.advance(task)
                rows.append({"ingest": rate_a, "enrich": n_b / span_b, "ingest_with_enrich": rate_c,
                             "enrich_with_ingest": n_c / span_c, "ratio": rate_c / rate_a})
                for ph in (a, c):
                    e2e.drop_phase(ph, server, ph.settings())
    finally:
        e2e.stop_embedded_postgres(pgdata)

    def med(k: str) -> str:
        v = [x[k] for x in rows]
        return f"{statistics.median(v):,.0f} ({min(v):,.0f}-{max(v):,.0f})" if k != "ratio" else \
            f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})"

    t = Table(title=f"enrich on {args.n:,} real ZTF alerts, catalogs 50MGC + 4FGL + GLADE (gwemopt), "
                    f"batch {BATCH}, 1 worker, transactions on; median (range) of {args.repeat}")
    t.add_column("phase")
    t.add_column("alerts/s", justify="right")
    t.add_row("(A) ingest alone", med("ingest"))
    t.add_row("(B) enrich alone (on A's mma.events)", med("enrich"))
    t.add_row("(C) ingest, with enrich in the same process", med("ingest_with_enrich"))
    t.add_row("(C) enrich, with ingest in the same process", med("enrich_with_ingest"))
    t.add_row("(C) ingest ÷ (A) ingest, per repeat", med("ratio"))
    console.print(t)
    worst = min(x["ingest_with_enrich"] for x in rows)
    console.print(f"ingest with enrich running: lowest {worst:,.0f} alerts/s; target >= {TARGET_INGEST:,.0f}: "
                  + ("met" if worst >= TARGET_INGEST else "NOT met"))


if __name__ == "__main__":
    main()
