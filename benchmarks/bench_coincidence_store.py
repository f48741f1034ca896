#!/usr/bin/env python
"""Benchmark: what writing table ``coincidences`` (migration 0013) costs the enrich loop.

The enrich handler (:class:`broker.pipeline.enrich.EnrichHandler`) with the real stores on
an embedded PostgreSQL — LocalizationStore, GroupStore, CatalogCache with 50MGC loaded,
write_enrichment — in process, without Kafka, handles ``--n`` ZTF candidates in batches
of ``--batch`` as the stage does (``handle`` each, ``write`` the batch, ``committed``),
after MS181101ab's preliminary alert (the LVK user guide's BAYESTAR map) made its group.
The candidates are *made for this benchmark* (``tests/unit/test_enrich_stage._candidate``):
a ``--fraction`` of them at positions drawn (fixed seed) from the map's pixels weighted
by probability inside its 90 % region, 0.1-2.9 days after T0, so each is a GW–optical
coincidence (one record, one row); the others at the antipode of the map's peak, far
outside it (no coincidence). Each candidate has its own ZTF object: one row per version.

Two configurations, interleaved (A B B A ... per round, each in a new database):

A. ``store_coincidences=None`` — the code before 0013: records published only;
B. ``store_coincidences=write_coincidences`` — as ``stages()`` builds it now: the batch's
   records written in one transaction (one ``INSERT ... ON CONFLICT DO NOTHING``).

Printed: candidates/s per run (handle + write of all batches, wall clock), the median
per configuration and fraction, and the ratio B/A (median of the per-round ratios).
Checks: B wrote exactly one row per coincidence record published, A none.

Usage::

    .venv/bin/python benchmarks/bench_coincidence_store.py [--n 3000] [--rounds 3] [--fractions 1.0,0.02]
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

DATA = ROOT / "tests" / "data"


def _positions(sky, n: int, seed: int):
    """``n`` (ra, dec) in degrees inside the map's 90 % region, pixels drawn by probability."""
    import numpy as np
    from astropy_healpix import uniq_to_level_ipix
    from astropy_healpix.core import healpix_to_lonlat

    level, ipix = uniq_to_level_ipix(sky.uniq)
    area = 4 * np.pi / 12 * np.ldexp(1.0, -2 * level.astype(int))
    prob = sky.probdensity * area
    order = np.argsort(-sky.probdensity)
    cum = np.cumsum(prob[order]) / prob.sum()
    inside = order[cum <= 0.85]  # margin below 0.9: a pixel's centre, not its edge
    rng = np.random.default_rng(seed)
    pick = rng.choice(inside, size=n, p=prob[inside] / prob[inside].sum())
    out = []
    for i in pick:
        lon, lat = healpix_to_lonlat(int(ipix[i]), 2 ** int(level[i]), order="nested")
        out.append((float(lon.deg), float(lat.deg)))
    peak = order[0]
    lon, lat = healpix_to_lonlat(int(ipix[peak]), 2 ** int(level[peak]), order="nested")
    return out, ((float(lon.deg) + 180.0) % 360.0, -float(lat.deg))


def run_once(url: str, store: bool, n: int, batch: int, fraction: float, seed: int
             ) -> tuple[float, int, int, float]:
    """One run in a new database: (candidates/s, records published, rows written, seconds
    spent in ``write_coincidences``)."""
    import sqlalchemy as sa

    from broker.archive import Archive
    from broker.archive.raw import PostgresRawStore
    from broker.enrich.catalogs import read_catalog, store_catalog
    from broker.enrich.coincidence_store import write_coincidences
    from broker.enrich.config import EnrichSettings
    from broker.enrich.groups import GroupStore
    from broker.enrich.matchstore import write_enrichment
    from broker.enrich.store import LocalizationStore
    from broker.pipeline.enrich import CatalogCache, EnrichHandler
    from tests.integration.test_crossmatch_db import PROV, Msg, RawArchive
    from tests.unit.test_enrich_stage import CODEC, GW_JSON, _candidate

    name = f"bcs_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    db = sa.make_url(url).set(database=name).render_as_string(hide_password=False)
    try:
        with Archive(db, PostgresRawStore()) as arch:
            arch.migrate()
        engine = sa.create_engine(db)
        store_catalog(engine, read_catalog(DATA / "catalogs/50MGC_catalog_short.fits", "50MGC"))
        archive = RawArchive()
        spent = [0.0]

        def timed(records):
            t0 = time.perf_counter()
            try:
                return write_coincidences(engine, records)
            finally:
                spent[0] += time.perf_counter() - t0

        h = EnrichHandler(localizations=LocalizationStore(engine), groups=GroupStore(engine), archive=archive,
                          settings=EnrichSettings(catalogs=["50MGC"], top_n=10),
                          enriched_topic="mma.events.enriched", coincidences_topic="mma.coincidences",
                          provenance=PROV, catalogs=CatalogCache(engine, ["50MGC"]),
                          write_batch=functools.partial(write_enrichment, engine),
                          store_coincidences=timed if store else None)

        def feed(events):
            handled = [h.handle(Msg(CODEC.encode(ev, PROV))) for ev in events]
            h.write([x for x in handled if x.write is not None])
            h.committed(handled, [])
            return sum(r.topic == "mma.coincidences" for x in handled for r in x.outputs)

        feed(archive.add(GW_JSON.read_bytes()))
        spent[0] = 0.0
        sky = LocalizationStore(engine).load(GroupStore(engine).get("igwn:MS181101ab").best_localization.id)
        n_in = round(n * fraction)
        inside, far = _positions(sky, n_in, seed)
        cands = []
        for i in range(n):
            ra, dec = inside[i] if i < n_in else far
            days = 0.1 + 2.8 * ((i * 7919) % n) / n  # inside optical_days (3 d)
            c = _candidate(100000 + i, days, ra, dec)
            archive.events[c.id] = c
            cands.append(c)
        cands.sort(key=lambda c: c.id)  # inside and outside mixed
        t = time.perf_counter()
        published = 0
        for k in range(0, n, batch):
            published += feed(cands[k:k + batch])
        rate = n / (time.perf_counter() - t)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT count(*) FROM coincidences")).scalar_one()
        engine.dispose()
        return rate, published, rows, spent[0]
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="ZTF candidates per run")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fractions", default="1.0,0.02", help="fractions of candidates inside the GW region")
    args = ap.parse_args()
    fractions = [float(x) for x in args.fractions.split(",")]
    from broker.archive import ensure_embedded_postgres, stop_embedded_postgres

    console = Console()
    root = Path(tempfile.mkdtemp(prefix="mma-bcs-", dir="/tmp"))
    results: dict[tuple[float, bool], list[float]] = {}
    per_row: list[float] = []
    ratios: dict[float, list[float]] = {}
    try:
        url = ensure_embedded_postgres(root / "pg")
        run_once(url, True, 200, args.batch, 1.0, 0)  # warm-up: imports, catalogs, page cache
        plan = [(r, f, store) for r in range(args.rounds) for f in fractions
                for store in ((False, True) if r % 2 == 0 else (True, False))]
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("runs", total=len(plan))
            per_round: dict[tuple[int, float, bool], float] = {}
            for r, f, store in plan:
                rate, published, rows, spent = run_once(url, store, args.n, args.batch, f, 1000 + r)
                if store and published:
                    per_row.append(1e6 * spent / published)
                expected = published if store else 0
                if rows != expected or (f > 0 and published < 0.95 * round(args.n * f)):
                    raise SystemExit(f"check failed: fraction {f}, store {store}: {published} records, {rows} rows")
                per_round[(r, f, store)] = rate
                results.setdefault((f, store), []).append(rate)
                bar.advance(task)
        for (r, f, store), rate in per_round.items():
            if store:
                ratios.setdefault(f, []).append(rate / per_round[(r, f, False)])
    finally:
        stop_embedded_postgres(root / "pg")
        shutil.rmtree(root, ignore_errors=True)
    table = Table(title=f"enrich, {args.n} ZTF candidates per run, batches of {args.batch}, "
                        f"{args.rounds} rounds interleaved; load {os.getloadavg()[0]:.2f}")
    for col in ("inside the GW region", "A: no table (cand/s)", "B: table written (cand/s)", "B/A (median of rounds)"):
        table.add_column(col, justify="right")
    for f in fractions:
        a, b = results[(f, False)], results[(f, True)]
        table.add_row(f"{100 * f:g} %", f"{statistics.median(a):,.0f} ({min(a):,.0f}-{max(a):,.0f})",
                      f"{statistics.median(b):,.0f} ({min(b):,.0f}-{max(b):,.0f})",
                      f"{statistics.median(ratios[f]):.3f} ({min(ratios[f]):.3f}-{max(ratios[f]):.3f})")
    console.print(table)
    console.print(f"write_coincidences (claims + the one INSERT, its transaction): median "
                  f"{statistics.median(per_row):.0f} µs per row ({min(per_row):.0f}-{max(per_row):.0f}) over the B runs")


if __name__ == "__main__":
    main()
