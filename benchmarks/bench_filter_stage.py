#!/usr/bin/env python
"""Benchmark: the filter stage on real ZTF alerts, beside the enrich stage in the same run,
and the decision archive's write path.

(1) **Decision writes**: batches of ``--batch`` Events × ``--filters`` decisions,
    written as the stage writes them (:meth:`filters.store.DecisionStore.put_decisions`:
    one row per Event, ``DELETE ... RETURNING`` of the batch's Events, binary ``COPY``)
    and as :meth:`~filters.store.DecisionStore.put_many` writes ``DecisionRow``s (the
    same table, grouped per Event first); decisions/s, the methods interleaved in
    rotating order, new keys each batch. (Until migration 0102 the table had one row
    per decision, and this compared that ``COPY`` with an upsert and ``executemany``:
    docs/filters.md keeps those figures.)
(2) **The stage** in ``mma-broker run --stage ingest --stage enrich --stage filters
    --until-caught-up`` (one process, transactions on) on ``--n`` real ZTF alerts
    (``tests/data/ztf`` repeated with distinct ``candid``, as ``bench_e2e.py`` makes
    them), with ``--filters`` filter instances: the default follow-up rules, every
    registered filter plugin with its default parameters, and ``bright-ztf`` instances
    with other magnitude limits to make up the number. Rates, same run:
    enrich = records on ``mma.events.enriched`` ÷ the span of their timestamps;
    filters = Events with a decision ÷ the span of their ``decided_at`` (each over
    whole batches but the first: ±1 batch of ``--n / batch`` is the resolution).
    The filter stage reads what enrich writes, so in that run it cannot go faster than
    enrich; then ``--stage filters`` alone (another consumer group) reads the same
    enriched topic again: the filter stage's own rate.

Usage::

    .venv/bin/python benchmarks/bench_filter_stage.py [--n 5000] [--filters 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import bench_e2e as e2e  # noqa: E402
from bench_enrich import enriched_span, run_cmd  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

BATCH = 500


def filter_entries(n: int) -> list[dict]:
    """``n`` filter instances: default follow-up rules, every registered plugin, bright-ztf variants."""
    from filters.config import default_filters
    from filters.registry import available

    entries = [e.model_dump(mode="json") for e in default_filters()]
    have = {e["name"] for e in entries}
    for name in available():
        if name not in have and name not in ("followup-rule",):
            entries.append({"name": name, "plugin": name})
    k = 0
    while len(entries) < n:
        k += 1
        entries.append({"name": f"bright-{k}", "plugin": "bright-ztf", "params": {"max_magpsf_mag": 17.0 + 0.25 * k}})
    return entries[:n]


# ------------------------------------------------------------------ (1) decision writes
def bench_store(server: str, batch: int, n_filters: int, repeat: int) -> dict[str, list[float]]:
    import sqlalchemy as sa

    from broker.archive import Archive
    from broker.archive.raw import PostgresRawStore
    from filters.api import FilterResult
    from filters.engine import Decision
    from filters.store import DecisionStore, decision_rows

    db = "bench_filter_store"
    admin = sa.create_engine(server.replace("/mma_broker?", "/postgres?"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        c.execute(sa.text(f'CREATE DATABASE "{db}"'))
    url = server.replace("/mma_broker?", f"/{db}?")
    archive = Archive(url, PostgresRawStore())
    archive.migrate()
    store = DecisionStore(archive.engine)
    names = [e["name"] for e in filter_entries(n_filters)]
    out: dict[str, list[float]] = {"put_decisions": [], "put_many": []}
    at = datetime.now(timezone.utc)

    def items(tag: str) -> list[tuple[str, list[Decision]]]:
        return [(f"ztf:{tag}{i:06d}",
                 [Decision(f, f, "1", "0123456789abcdef",
                           FilterResult.accept("bright_candidate", detail=f"magpsf {18 + i % 3}.12 mag",
                                               tags=("bright",)) if i % 7 == 0 else
                           FilterResult.reject("too_faint", detail=f"magpsf {18 + i % 3}.12 mag"), elapsed_ms=0.0123)
                  for f in names]) for i in range(batch)]

    for r in range(repeat):
        methods = list(out)
        for method in methods[r % 2:] + methods[:r % 2]:
            todo = items(f"{method[4:10]}{r}")
            rows = [x for eid, ds in todo for x in decision_rows(eid, ds, decided_at=at)]
            t0 = time.perf_counter()
            if method == "put_decisions":
                store.put_decisions(todo, decided_at=at)
            else:
                store.put_many(rows)
            out[method].append(len(rows) / (time.perf_counter() - t0))
    archive.close()
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    admin.dispose()
    return out


# ------------------------------------------------------------------ (2) the stage
def decided_span(db_url: str) -> tuple[int, float]:
    """(Events with a decision, seconds between the first and last Event's decision)."""
    import sqlalchemy as sa

    eng = sa.create_engine(db_url)
    with eng.connect() as c:
        n, lo, hi = c.execute(sa.text(  # one row per (Event, run): migration 0102
            "SELECT count(*), min(decided_at), max(decided_at) FROM filter_decisions WHERE run = 'live'")).one()
    eng.dispose()
    return int(n), (hi - lo).total_seconds() if n else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="ZTF messages per repeat")
    ap.add_argument("--filters", type=int, default=20, help="filter instances enabled")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--store-repeat", type=int, default=15, help="batches written per method in (1)")
    ap.add_argument("--bootstrap", default=os.environ.get("MMA_BROKER_TEST_KAFKA", "127.0.0.1:9092"))
    args = ap.parse_args()
    console = Console()
    bases = e2e.load_bases(e2e.ZTF_DIR)
    msgs = e2e.make_messages(bases, args.n)
    from broker.sources import upstream_topic

    ztf_topic = upstream_topic(msgs[0])
    entries = filter_entries(args.filters)
    tmp = Path(tempfile.mkdtemp(prefix="bench-filters-"))
    pgdata = tmp / "pg"
    server = e2e.ensure_embedded_postgres(pgdata)
    run_id = uuid.uuid4().hex[:6]
    rows = []
    try:
        console.print(f"decision writes: {args.store_repeat} x {args.batch} Events x {args.filters} filters ...")
        store = bench_store(server, args.batch, args.filters, args.store_repeat)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("repeats", total=args.repeat)
            for r in range(args.repeat):
                a = e2e.new_phase(f"f{r}", run_id, tmp, server, args.bootstrap)
                env = a.env(args.batch, ztf_topic)
                env.update(MMA_BROKER_FOLLOWUP__ENABLED="false", MMA_BROKER_FILTERS__FILTERS=json.dumps(entries),
                           MMA_BROKER_FILTERS__BATCH_SIZE=str(args.batch),
                           MMA_BROKER_ENRICH__BATCH_SIZE=str(args.batch))
                progress.update(task, description=f"repeat {r + 1}: ingest + enrich + filters")
                run_cmd(a, env, ["ingest", "enrich", "filters"], tmp / f"f{r}.log", msgs, ztf_topic)
                n_e, span_e = enriched_span(a)
                n_f, span_f = decided_span(a.db_url)
                assert n_e == args.n and n_f == args.n, f"enriched {n_e}, filtered {n_f} of {args.n}"
                progress.update(task, description=f"repeat {r + 1}: filters alone, again on the enriched topic")
                env_b = dict(env, MMA_BROKER_GROUP_ID=a.group + "-again")
                run_cmd(a, env_b, ["filters"], tmp / f"g{r}.log", None, ztf_topic)
                n_g, span_g = decided_span(a.db_url)
                assert n_g == args.n
                rows.append({"enrich": n_e / span_e, "filters": n_f / span_f, "alone": n_g / span_g})
                e2e.drop_phase(a, server, a.settings())
                progress.advance(task)
    finally:
        e2e.stop_embedded_postgres(pgdata)

    def med(v: list[float], fmt: str = ",.0f") -> str:
        return f"{statistics.median(v):{fmt}} ({min(v):{fmt}}-{max(v):{fmt}})"

    t = Table(title=f"decision writes, {args.batch} Events x {args.filters} filters a batch; "
                    f"median (range) of {len(store['put_decisions'])}")
    t.add_column("method")
    t.add_column("decisions/s", justify="right")
    t.add_column("Events/s", justify="right")
    for k in store:
        t.add_row(k, med(store[k]), med([x / args.filters for x in store[k]]))
    console.print(t)
    t = Table(title=f"{args.n:,} real ZTF alerts, ingest + enrich + filters in one process, {args.filters} filters "
                    f"({', '.join(sorted({e.get('plugin') or e['name'] for e in entries}))}), batch {args.batch}, "
                    f"transactions on; median (range) of {args.repeat}")
    t.add_column("stage")
    t.add_column("alerts/s", justify="right")
    t.add_row("enrich", med([x["enrich"] for x in rows]))
    t.add_row(f"filters ({args.filters})", med([x["filters"] for x in rows]))
    t.add_row("filters ÷ enrich, per repeat", med([x["filters"] / x["enrich"] for x in rows], ".2f"))
    t.add_row(f"filters ({args.filters}) alone, on the same enriched topic", med([x["alone"] for x in rows]))
    console.print(t)


if __name__ == "__main__":
    main()
