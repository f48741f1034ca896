"""The read JSON API of ``mma-broker serve`` (broker/web/api.py) at 10^5 archived Events.

Issue 13 asks for API p95 <= 100 ms on list, search and group pages with 100,000
Events in the archive. This script fills a fresh embedded PostgreSQL (pgserver),
migrated to the latest heads, with the real alerts of tests/data archived and enriched
as tests/unit/test_web_api.py does (MS181101ab with its sky map, Fermi GBM trigger
745121685, three ZTF packets), then with ``--events`` copies made in SQL: 98 % copies of
a real ZTF row at positions uniform on the sphere (seeded, ``hpx`` computed as the archive does), 2 % copies of the notices, T0 spread
over ``--days`` days (``setseed`` fixed: the same archive every run). Each query below
is then asked ``--repeat`` times through FastAPI's TestClient (HTTP handling, the
query and the JSON included; no network), the queries interleaved round by round; p50
and p95 wall times are printed.

Usage: ``python benchmarks/bench_web_api.py [--events 100000] [--repeat 40] [--days 30]``
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"

COPY = """
INSERT INTO events (id, source, messenger, mission, instrument, upstream_id, alert_type, time, localization,
                    properties, format, category, category_rule, ra_deg, dec_deg, error_radius_deg, hpx,
                    area_90_deg2, retracted, kafka_topic, kafka_partition, kafka_offset, raw_sha256,
                    raw_segment, raw_offset, raw_length)
SELECT e.id || '#c' || u.g, e.source, e.messenger, e.mission, e.instrument,
       e.upstream_id || '-' || u.g, e.alert_type,
       timestamptz '2026-01-01' - (random() * CAST(:days AS float8)) * interval '1 day',
       CASE WHEN CAST(:move AS boolean) THEN jsonb_set(jsonb_set(e.localization, '{ra}', to_jsonb(u.ra)), '{dec}', to_jsonb(u.dec))
            ELSE e.localization END,
       e.properties, e.format, e.category, e.category_rule,
       CASE WHEN CAST(:move AS boolean) THEN u.ra ELSE e.ra_deg END, CASE WHEN CAST(:move AS boolean) THEN u.dec ELSE e.dec_deg END,
       e.error_radius_deg, CASE WHEN CAST(:move AS boolean) THEN u.hpx ELSE e.hpx END, e.area_90_deg2, false, e.kafka_topic, e.kafka_partition, e.kafka_offset,
       e.raw_sha256, e.raw_segment, e.raw_offset, e.raw_length
FROM unnest(CAST(:g AS bigint[]), CAST(:ra AS float8[]), CAST(:dec AS float8[]), CAST(:hpx AS bigint[]))
     AS u(g, ra, dec, hpx)
JOIN (SELECT *, row_number() OVER (ORDER BY id) - 1 AS k FROM events
      WHERE source = ANY(:sources) AND id NOT LIKE '%#c%') AS e ON e.k = u.g % CAST(:n AS bigint)
"""


def seed(archive, n_events: int, days: float, console) -> tuple[list, float]:
    """Fill a migrated, empty ``archive`` as the module docstring says: the real alerts
    (archived, localizations and groups stored as the enrich stage does, ZTF positions
    indexed) and ``n_events`` copies made in SQL, T0 over ``days`` days (seeded).

    Returns
    -------
    decoded : list of (broker.event.Event, bytes)
        The real alerts and their raw bytes.
    fill_s : float
        Wall time of the copies, s.
    """
    import sqlalchemy as sa
    from rich.progress import Progress

    from broker.archive import ArchiveItem, KafkaMeta
    from broker.enrich.groups import GroupStore
    from broker.enrich.localization import extract_localization
    from broker.enrich.store import LocalizationStore, _hpx, index_positions
    from broker.sources import decode

    paths = ([DATA / "igwn/userguide" / n for n in ("MS181101ab-preliminary.json", "MS181101ab-initial.json",
                                                     "MS181101ab-retraction.json")]
             + [DATA / "gcn/gwcelery-kafka" / f"kafka_alert_fermi_{k}.json"
                for k in ("alert", "flight", "ground", "final")]
             + sorted((DATA / "ztf").rglob("*.avro"))[:3])
    decoded = [(ev, p.read_bytes()) for p in paths for ev in decode(p.read_bytes())]
    archive.write_batch([ArchiveItem(event=ev, raw=raw, kafka=KafkaMeta("t", 0, i))
                         for i, (ev, raw) in enumerate(decoded)])
    locs, groups = LocalizationStore(archive.engine), GroupStore(archive.engine)
    for ev, raw in decoded:
        if ev.source != "ztf":
            sky = extract_localization(ev, raw)
            groups.add(ev, locs.put(ev.id, sky) if sky is not None else None)
    index_positions(archive.engine, [ev for ev, _ in decoded if ev.source == "ztf"])
    n_ztf = int(round(n_events * 0.98))
    t = time.perf_counter()
    with archive.engine.begin() as conn, Progress(console=console, transient=True) as progress:
        conn.execute(sa.text("SELECT setseed(0.42)"))  # T0s
        rng_pos = np.random.default_rng(42)  # positions
        task = progress.add_task("copies", total=n_events)
        step = 10_000
        for lo in range(1, n_events + 1, step):
            hi = min(lo + step - 1, n_events)
            for a, b, sources, move in ((lo, min(hi, n_ztf), ["ztf"], True),
                                        (max(lo, n_ztf + 1), hi, ["igwn", "gcn"], False)):
                if a <= b:
                    n = 3 if sources == ["ztf"] else 7
                    g = np.arange(a, b + 1, dtype=np.int64)
                    ra = rng_pos.uniform(0, 360, g.size)
                    dec = np.degrees(np.arcsin(rng_pos.uniform(-1, 1, g.size)))
                    conn.execute(sa.text(COPY), dict(g=g.tolist(), ra=ra.tolist(), dec=dec.tolist(),
                                                     hpx=_hpx(ra, dec).tolist(), days=days, move=move,
                                                     sources=sources, n=n))
            progress.update(task, completed=hi)
        conn.execute(sa.text("ANALYZE"))
    fill_s = time.perf_counter() - t
    return decoded, fill_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--days", type=float, default=30.0)
    args = ap.parse_args()

    from fastapi.testclient import TestClient
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from broker.archive import Archive, PostgresRawStore, ensure_embedded_postgres, stop_embedded_postgres
    from broker.sinks.web import make_app

    console = Console()
    pgdir = Path(tempfile.mkdtemp(prefix="mmaweb-", dir="/tmp"))
    try:
        url = ensure_embedded_postgres(pgdir / "pg")
        archive = Archive(url, PostgresRawStore())
        archive.migrate()
        decoded, fill_s = seed(archive, args.events, args.days, console)
        total = archive.total()
        client = TestClient(make_app(lambda _: None, "https://broker.example.org", archive.engine))
        first = client.get("/api/events", params={"limit": 50}).json()
        cursor = first["next_cursor"]
        for _ in range(9):
            cursor = client.get("/api/events", params={"limit": 50, "cursor": cursor}).json()["next_cursor"]
        gw = next(ev for ev, _ in decoded if ev.source == "igwn" and ev.alert_type == "preliminary")
        ztf_copy = first["items"][0]
        rng = np.random.default_rng(7)
        queries = {
            "list, first page (50)": {"limit": 50},
            "list, 11th page (cursor)": {"limit": 50, "cursor": cursor},
            "list, limit 500": {"limit": 500},
            "source=gcn": {"source": "gcn"},
            "category=gw_cbc": {"category": "gw_cbc"},
            "mission=fermi": {"mission": "fermi"},
            "alert_type=retraction": {"alert_type": "retraction"},
            "since/until (1 day)": {"since": "2025-12-15T00:00:00Z", "until": "2025-12-16T00:00:00Z"},
            "q exact (a copy's upstream id)": {"q": ztf_copy["upstream_id"]},
            "q prefix (MS1811)": {"q": "MS1811"},
            "cone 1 deg, random centre": None,
            "cone at the GW map's peak": {"ra_deg": gw.localization.ra_max, "dec_deg": gw.localization.dec_max,
                                          "radius_deg": 0.5},
        }
        paths_ = {"event page": f"/api/events/{ztf_copy['id']}", "group page (igwn:MS181101ab)":
                  "/api/groups/igwn:MS181101ab"}
        times: dict[str, list[float]] = {k: [] for k in [*queries, *paths_]}
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("queries", total=args.repeat)
            for _ in range(args.repeat):
                for name, params in queries.items():
                    if params is None:
                        params = {"ra_deg": float(rng.uniform(0, 360)),
                                  "dec_deg": float(np.degrees(np.arcsin(rng.uniform(-1, 1)))), "radius_deg": 1.0}
                    t = time.perf_counter()
                    r = client.get("/api/events", params=params)
                    times[name].append(time.perf_counter() - t)
                    assert r.status_code == 200, (name, r.text)
                for name, path in paths_.items():
                    t = time.perf_counter()
                    r = client.get(path)
                    times[name].append(time.perf_counter() - t)
                    assert r.status_code == 200, (name, r.text)
                progress.advance(task)
        table = Table(title=f"API at {total:,} archived Events ({args.repeat} requests each; fill {fill_s:.0f} s)")
        for col in ("request", "p50 ms", "p95 ms", "max ms"):
            table.add_column(col, justify="right" if col != "request" else "left")
        for name, ts in times.items():
            ms = np.array(ts) * 1e3
            table.add_row(name, f"{np.percentile(ms, 50):.1f}", f"{np.percentile(ms, 95):.1f}", f"{ms.max():.1f}")
        console.print(table)
        archive.close()
    finally:
        stop_embedded_postgres(pgdir / "pg")
        shutil.rmtree(pgdir, ignore_errors=True)


if __name__ == "__main__":
    main()
