"""The event group page of ``mma-broker serve`` (broker/web/group.py) at 10^5 archived Events.

Issue 13 asks for p95 <= 100 ms on list, search and group pages with 100,000 Events in
the archive. The archive is filled exactly as ``benchmarks/bench_web_api.py`` fills it
(its ``COPY`` statement, the same seeds: the real alerts of tests/data archived and
enriched — MS181101ab with its multi-order map, Fermi GBM trigger 745121685, three ZTF
packets — then ``--events`` copies, 98 % ZTF at uniform positions and 2 % notices), plus
what the group page reads besides: the real 50MGC cross-match of the MS181101ab map,
one GW–GRB coincidence record in table ``coincidences`` as the enrich stage writes it and
in the outbox as the reports stage writes it, ``--outbox`` other outbox rows and as many
other groups' coincidences (so those reads are measured at a realistic size), and
one ZTF object of ``--ztf-alerts`` alerts (copies of a real packet given one object id and
grouped: a long group).

Timed through FastAPI's TestClient (HTTP handling, the queries, template rendering, no
network), ``--repeat`` rounds, the requests interleaved round by round:

* the group page HTML of the GW superevent (3 revisions, two 1 MB JSON notices read from
  the raw store and shortened), of the GBM trigger (4 revisions) and of the long ZTF
  object (its latest 10 Avro notices decoded);
* the long ZTF object's page again with the notice cache emptied before each request (its
  10 notices read and decoded: the first view);
* ``/skymap.png`` cold (the PNG cache emptied before each request: a full ligo.skymap
  drawing) and cached;
* ``/moc.json`` (the 90 % MOC built with mocpy from the stored tiles).

Usage: ``python benchmarks/bench_web_group.py [--events 100000] [--repeat 30] [--outbox 20000]
[--ztf-alerts 300] [--gc-freeze]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"


def _copy_sql() -> str:
    spec = importlib.util.spec_from_file_location("bench_web_api", REPO / "benchmarks" / "bench_web_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.COPY


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--outbox", type=int, default=20_000, help="other outbox rows")
    ap.add_argument("--ztf-alerts", type=int, default=300, help="alerts of the long ZTF group")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="gc.freeze() after the warm-up (the imported modules leave the collector's generations)")
    args = ap.parse_args()

    import sqlalchemy as sa
    from fastapi.testclient import TestClient
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from broker.archive import (Archive, ArchiveItem, KafkaMeta, PostgresRawStore, ensure_embedded_postgres,
                                stop_embedded_postgres)
    from broker.config import settings_class
    from broker.enrich.groups import GroupStore
    from broker.enrich.localization import extract_localization
    from broker.enrich.matchstore import crossmatch_rows, put_crossmatches
    from broker.enrich.store import LocalizationStore, _hpx, index_positions
    from broker.sinks.outbox import Outbox
    from broker.sinks.web import make_app
    from broker.sources import decode
    from followup.reports.hermes import HermesOptions, coincidence_message

    import sys

    sys.path.insert(0, str(REPO))
    from tests.unit.test_web_group import _coincidence, _crossmatch

    copy_sql = _copy_sql()
    console = Console()
    pgdir = Path(tempfile.mkdtemp(prefix="mmagroup-", dir="/tmp"))
    try:
        url = ensure_embedded_postgres(pgdir / "pg")
        archive = Archive(url, PostgresRawStore())
        archive.migrate()
        paths = ([DATA / "igwn/userguide" / n for n in ("MS181101ab-preliminary.json", "MS181101ab-initial.json",
                                                         "MS181101ab-retraction.json")]
                 + [DATA / "gcn/gwcelery-kafka" / f"kafka_alert_fermi_{k}.json"
                    for k in ("alert", "flight", "ground", "final")]
                 + sorted((DATA / "ztf").rglob("*.avro"))[:3])
        decoded = [(ev, p.read_bytes()) for p in paths for ev in decode(p.read_bytes())]
        archive.write_batch([ArchiveItem(event=ev, raw=raw, kafka=KafkaMeta("t", 0, i))
                             for i, (ev, raw) in enumerate(decoded)])
        locs, groups = LocalizationStore(archive.engine), GroupStore(archive.engine)
        skies, refs = {}, {}
        for ev, raw in decoded:
            if ev.source != "ztf":
                sky = extract_localization(ev, raw)
                skies[ev.id] = sky
                refs[ev.id] = locs.put(ev.id, sky) if sky is not None else None
                groups.add(ev, refs[ev.id])
        index_positions(archive.engine, [ev for ev, _ in decoded if ev.source == "ztf"])
        n_ztf = int(round(args.events * 0.98))
        t = time.perf_counter()
        with archive.engine.begin() as conn, Progress(console=console, transient=True) as progress:
            conn.execute(sa.text("SELECT setseed(0.42)"))
            rng_pos = np.random.default_rng(42)
            task = progress.add_task("copies", total=args.events)
            step = 10_000
            for lo in range(1, args.events + 1, step):
                hi = min(lo + step - 1, args.events)
                for a, b, sources, move in ((lo, min(hi, n_ztf), ["ztf"], True),
                                            (max(lo, n_ztf + 1), hi, ["igwn", "gcn"], False)):
                    if a <= b:
                        n = 3 if sources == ["ztf"] else 7
                        g = np.arange(a, b + 1, dtype=np.int64)
                        ra = rng_pos.uniform(0, 360, g.size)
                        dec = np.degrees(np.arcsin(rng_pos.uniform(-1, 1, g.size)))
                        conn.execute(sa.text(copy_sql), dict(g=g.tolist(), ra=ra.tolist(), dec=dec.tolist(),
                                                             hpx=_hpx(ra, dec).tolist(), days=args.days,
                                                             move=move, sources=sources, n=n))
                progress.update(task, completed=hi)
        evs = {ev.id: ev for ev, _ in decoded}
        gw = next(e for e in evs.values() if e.source == "igwn" and e.alert_type == "preliminary")
        gbm = next(e for e in evs.values() if e.source == "gcn" and e.id.split(":")[4] == "7")
        with archive.engine.begin() as conn:
            put_crossmatches(conn, crossmatch_rows(gw.id, _crossmatch(skies[gw.id]), refs[gw.id].id))
        rec = _coincidence(gw, skies[gw.id], refs[gw.id], gbm, refs[gbm.id])
        from broker.enrich.coincidence_store import write_coincidences

        write_coincidences(archive.engine, [rec | {"provenance": {"component": "enrich", "version": "bench",
                                                                 "config_hash": "0" * 16}}])
        Outbox(archive.engine).put(f"hermes:coincidence:{rec['id']}:{rec['computed_from']}", "hermes",
                                   coincidence_message(rec, HermesOptions()), group_key=rec["id"],
                                   source_event_id=gw.id)
        with archive.engine.begin() as conn:  # other groups' messages, coincidences among them
            payload = json.dumps({"title": "other", "data": {"extra_data": {}}})
            conn.execute(sa.text(
                "INSERT INTO outbox (key, channel, payload, payload_sha256, state, group_key) "
                "SELECT 'hermes:coincidence:gw-grb:igwn:S' || g || '+gcn:fermi:' || g || '-v1', 'hermes', "
                "CAST(:p AS jsonb), md5(g::text), 'sent', 'gw-grb:igwn:S' || g || '+gcn:fermi:' || g "
                "FROM generate_series(1, :n) AS g"), {"p": payload, "n": args.outbox})
            conn.execute(sa.text(
                "INSERT INTO coincidences (id, computed_from, kind, trigger_group, trigger_event_id, other_group, "
                "other_event_id, dt_s, coincident, retracted, record) "
                "SELECT 'gw-grb:igwn:S' || g || '+gcn:fermi:' || g, 'igwn:S' || g || ':v1', 'gw-grb', 'igwn:S' || g, "
                "'igwn:S' || g || ':v1', 'gcn:fermi:' || g, 'gcn:fermi:' || g || ':v1', 1.0, true, false, '{}'::jsonb "
                "FROM generate_series(1, :n) AS g"), {"n": args.outbox})
            conn.execute(sa.text("ANALYZE"))
        # one ZTF object with --ztf-alerts alerts (copies of a real packet renamed): a long group
        with archive.engine.begin() as conn:
            big = list(conn.execute(sa.text(
                "UPDATE events SET upstream_id = 'ZTF26benchbig' WHERE id IN (SELECT id FROM events "
                "WHERE source = 'ztf' AND id LIKE '%#c%' ORDER BY id LIMIT :n) RETURNING id"),
                {"n": args.ztf_alerts}).scalars())
        for eid in sorted(big, key=lambda i: archive.get(i).event.time):
            groups.add(archive.get(eid).event, None)
        fill_s = time.perf_counter() - t
        total = archive.total()
        settings = settings_class()(home=pgdir / "home", archive={"raw_store": "postgres"})
        client = TestClient(make_app(lambda _: None, "https://broker.example.org", archive.engine, settings))
        renderer = client.app.state.group_skyplot
        notices = client.app.state.group_notice_cache
        gbm_key = f"gcn:fermi:{gbm.upstream_id}"
        requests = {
            "group page igwn:MS181101ab (3 revisions, 2 x 1 MB notices)": ("/groups/igwn:MS181101ab", None),
            f"group page {gbm_key} (4 revisions)": (f"/groups/{gbm_key}", None),
            f"group page ztf:ZTF26benchbig ({args.ztf_alerts} alerts, 10 Avro notices inline)":
                ("/groups/ztf:ZTF26benchbig", None),
            "the same, notices not cached (read and decoded)": ("/groups/ztf:ZTF26benchbig", "cold-notices"),
            "skymap.png MS181101ab, cold (drawn)": ("/groups/igwn:MS181101ab/skymap.png", "cold"),
            "skymap.png MS181101ab, cached": ("/groups/igwn:MS181101ab/skymap.png", None),
            f"skymap.png {gbm_key} (point), cold": (f"/groups/{gbm_key}/skymap.png", "cold"),
            "moc.json MS181101ab (90 % region)": ("/groups/igwn:MS181101ab/moc.json", None),
            "API /api/groups/igwn:MS181101ab (for comparison)": ("/api/groups/igwn:MS181101ab", None),
        }
        for path, _ in requests.values():  # warm-up: imports, first connection, template compile
            assert client.get(path).status_code == 200, path
        if args.gc_freeze:
            import gc

            gc.collect()
            gc.freeze()
        times: dict[str, list[float]] = {k: [] for k in requests}
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("requests", total=args.repeat)
            for _ in range(args.repeat):
                for name, (path, mode) in requests.items():
                    if mode == "cold":
                        renderer.cache = type(renderer.cache)()
                    elif mode == "cold-notices":
                        notices.__init__(notices.max_entries, notices.max_bytes)
                    t = time.perf_counter()
                    r = client.get(path)
                    times[name].append(time.perf_counter() - t)
                    assert r.status_code == 200, (name, r.text[:200])
                progress.advance(task)
        table = Table(title=f"Group page at {total:,} archived Events ({args.repeat} requests each; "
                            f"fill {fill_s:.0f} s; {args.outbox:,} other outbox rows"
                            + ("; gc.freeze() after the warm-up)" if args.gc_freeze else ")"))
        for col in ("request", "p50 ms", "p95 ms", "max ms"):
            table.add_column(col, justify="right" if col != "request" else "left")
        for name, ts in times.items():
            ms = np.array(ts) * 1e3
            table.add_row(name, f"{np.percentile(ms, 50):.1f}", f"{np.percentile(ms, 95):.1f}", f"{ms.max():.1f}")
        console.print(table)
        renderer.close()
        archive.close()
    finally:
        stop_embedded_postgres(pgdir / "pg")
        shutil.rmtree(pgdir, ignore_errors=True)


if __name__ == "__main__":
    main()
