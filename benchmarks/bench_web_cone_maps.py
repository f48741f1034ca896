"""The cone search's sky-map half with hundreds of distinct stored maps (migration 0014).

``GET /api/events?ra_deg&dec_deg&radius_deg`` finds, besides points in the cone, the
Events whose stored sky map's 90 % credible region holds the centre (broker/web/api.py
``_cone``). ``bench_web_api.py`` archives 10^5 Events but links its GW copies to the
one real map, so it cannot see how that half scales with the number of stored maps (an
observing run stores thousands). This script fills a fresh embedded PostgreSQL as
``bench_web_api.seed`` does, then ``--maps`` distinct maps made in SQL from the real
MS181101ab map (its 19,200 tiles moved to another base pixel and order-2 cell: same
shapes and probabilities elsewhere on the sky), each linked to one GW copy Event, and
times, round by round, interleaved, on the same database:

- ``range test``: the maps half as it was written before 0014 (``lower(hpx) <= p AND
  upper(hpx) > p``, which no index serves);
- ``hpx @> p``: the same half as ``_cone`` writes it now (SP-GiST ``ix_localization_tiles_hpx``);
- ``/api/events cone``: the whole request through FastAPI's TestClient (both halves).

Both forms must find the same Events at every centre (checked). It also times the
insertion of one map's 19,200 tiles with and without the index (the enrich stage's
cost of 0014), interleaved, before the maps are added.

Usage: ``python benchmarks/bench_web_cone_maps.py [--events 100000] [--maps 300] [--repeat 40]``
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

NPIX29 = 12 * 4**29

COPY_TILES = """
INSERT INTO localization_tiles (localization_id, hpx, probdensity, cum_prob, distmu, distsigma, distnorm)
SELECT :dst, int8range((lower(hpx) + :off) % :npix, (lower(hpx) + :off) % :npix + (upper(hpx) - lower(hpx))),
       probdensity, cum_prob, distmu, distsigma, distnorm
FROM localization_tiles WHERE localization_id = :src
"""


def _copy_localization(conn, sa, locs, src: str, dst: str) -> None:
    cols = [c.name for c in locs.c]
    sel = ", ".join(":dst" if c == "id" else c for c in cols)
    conn.execute(sa.text(f"INSERT INTO localizations ({', '.join(cols)}) SELECT {sel} FROM localizations "
                         "WHERE id = :src"), dict(src=src, dst=dst))


def _offset(k: int) -> int:
    """A shift of whole order-2 cells (aligned for every tile of order >= 2): 12 x 16 places."""
    return (k % 12) * 4**29 + ((k // 12) % 16) * 4**27


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--maps", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--insert-rounds", type=int, default=8)
    args = ap.parse_args()

    import sqlalchemy as sa
    from fastapi.testclient import TestClient
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from bench_web_api import seed
    from broker.archive import Archive, PostgresRawStore, ensure_embedded_postgres, stop_embedded_postgres
    from broker.enrich.store import LINKS, LOCS, TILES, _hpx
    from broker.sinks.web import make_app

    console = Console()
    pgdir = Path(tempfile.mkdtemp(prefix="mmacone-", dir="/tmp"))
    try:
        url = ensure_embedded_postgres(pgdir / "pg")
        archive = Archive(url, PostgresRawStore())
        archive.migrate()
        seed(archive, args.events, 30.0, console)
        eng = archive.engine
        with eng.connect() as conn:
            src = conn.execute(sa.select(LOCS.c.id).where(LOCS.c.kind == "skymap")).scalars().first()
            n_tiles = conn.execute(sa.select(sa.func.count()).select_from(TILES)
                                   .where(TILES.c.localization_id == src)).scalar_one()
            gw_copies = conn.execute(sa.text("SELECT id FROM events WHERE source = 'igwn' AND id LIKE '%#c%' "
                                             "ORDER BY id")).scalars().all()

        # the enrich stage's cost of the index: one map's tiles inserted with and without it
        ins = {"with index": [], "without index": []}
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("tile inserts", total=2 * args.insert_rounds)
            for r in range(args.insert_rounds):
                for variant in (("with index", "without index") if r % 2 == 0 else ("without index", "with index")):
                    with eng.begin() as conn:
                        if variant == "without index":
                            conn.execute(sa.text("DROP INDEX ix_localization_tiles_hpx"))
                        dst = f"sha256:insert-{r}-{variant[:4]}"
                        _copy_localization(conn, sa, LOCS, src, dst)
                        t = time.perf_counter()
                        conn.execute(sa.text(COPY_TILES), dict(src=src, dst=dst, off=_offset(r + 1), npix=NPIX29))
                        ins[variant].append(time.perf_counter() - t)
                        conn.execute(sa.text("DELETE FROM localization_tiles WHERE localization_id = :d"), dict(d=dst))
                        conn.execute(sa.text("DELETE FROM localizations WHERE id = :d"), dict(d=dst))
                        if variant == "without index":
                            conn.execute(sa.text("CREATE INDEX ix_localization_tiles_hpx ON localization_tiles "
                                                 "USING spgist (hpx)"))
                    progress.update(task, advance=1)

        t = time.perf_counter()
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("distinct maps", total=args.maps)
            for k in range(args.maps):
                with eng.begin() as conn:
                    dst = f"sha256:map-copy-{k}"
                    _copy_localization(conn, sa, LOCS, src, dst)
                    conn.execute(sa.text(COPY_TILES), dict(src=src, dst=dst, off=_offset(k + 1), npix=NPIX29))
                    if gw_copies:
                        conn.execute(sa.delete(LINKS).where(LINKS.c.event_id == gw_copies[k % len(gw_copies)]))
                        conn.execute(sa.insert(LINKS).values(event_id=gw_copies[k % len(gw_copies)],
                                                             localization_id=dst))
                progress.update(task, advance=1)
        with eng.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
            n_rows = conn.execute(sa.select(sa.func.count()).select_from(TILES)).scalar_one()
        fill_s = time.perf_counter() - t

        def maps_half(p: int, old: bool) -> sa.Select:
            cond = ([sa.func.lower(TILES.c.hpx) <= p, sa.func.upper(TILES.c.hpx) > p] if old
                    else [TILES.c.hpx.contains(sa.literal(p, sa.BigInteger))])
            return (sa.select(LINKS.c.event_id)
                    .select_from(LINKS.join(TILES, TILES.c.localization_id == LINKS.c.localization_id)
                                 .join(LOCS, LOCS.c.id == LINKS.c.localization_id))
                    .where(LOCS.c.kind == "skymap", TILES.c.cum_prob <= 0.9, *cond))

        client = TestClient(make_app(lambda _: None, "https://broker.example.org", eng))
        rng = np.random.default_rng(11)
        times: dict[str, list[float]] = {"range test": [], "hpx @> p": [], "/api/events cone": []}
        found = []
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("cones", total=args.repeat)
            for i in range(args.repeat):
                # half the centres inside a copied map's region (at its tiles' densest), half anywhere
                if i % 2 == 0:
                    with eng.connect() as conn:
                        lo = conn.execute(sa.select(sa.func.lower(TILES.c.hpx)).where(
                            TILES.c.localization_id == f"sha256:map-copy-{int(rng.integers(args.maps))}")
                            .order_by(TILES.c.probdensity.desc()).limit(1)).scalar_one()
                    from astropy_healpix import HEALPix
                    import astropy.units as u
                    lon, lat = HEALPix(nside=2**29, order="nested").healpix_to_lonlat([lo])
                    ra, dec = float(lon.to_value(u.deg)[0]), float(lat.to_value(u.deg)[0])
                else:
                    ra, dec = float(rng.uniform(0, 360)), float(np.degrees(np.arcsin(rng.uniform(-1, 1))))
                p = int(_hpx(ra, dec)[0])
                got = {}
                for name in (("range test", "hpx @> p") if i % 4 < 2 else ("hpx @> p", "range test")):
                    with eng.connect() as conn:
                        t = time.perf_counter()
                        got[name] = set(conn.execute(maps_half(p, name == "range test")).scalars())
                        times[name].append(time.perf_counter() - t)
                assert got["range test"] == got["hpx @> p"], (ra, dec)
                found.append(len(got["hpx @> p"]))
                t = time.perf_counter()
                r = client.get("/api/events", params={"ra_deg": ra, "dec_deg": dec, "radius_deg": 1.0, "limit": 50})
                times["/api/events cone"].append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
                progress.update(task, advance=1)

        tab = Table(title=f"{archive.total():,} Events, {args.maps + 1} distinct maps, {n_rows:,} tiles "
                          f"(maps added in {fill_s:.0f} s); {args.repeat} centres, half inside a map")
        tab.add_column("request")
        tab.add_column("p50 ms", justify="right")
        tab.add_column("p95 ms", justify="right")
        for name, ts in times.items():
            a = np.array(ts) * 1e3
            tab.add_row(name, f"{np.percentile(a, 50):.1f}", f"{np.percentile(a, 95):.1f}")
        console.print(tab)
        a, b = np.median(times["range test"]), np.median(times["hpx @> p"])
        console.print(f"maps half, median ratio range test / hpx @> p: {a / b:.1f}; maps found per centre: "
                      f"median {int(np.median(found))}, max {max(found)} (both forms equal at every centre)")
        wi, wo = np.median(ins["with index"]) * 1e3, np.median(ins["without index"]) * 1e3
        console.print(f"one map's {n_tiles:,} tiles inserted: with the index {wi:.0f} ms, without {wo:.0f} ms "
                      f"(median of {args.insert_rounds} each, interleaved): ratio {wi / wo:.2f}")
    finally:
        stop_embedded_postgres(pgdir / "pg")
        shutil.rmtree(pgdir, ignore_errors=True)


if __name__ == "__main__":
    main()
