"""Localizations in PostgreSQL: put() of O4-size maps, and the in-database region query
against the in-memory path, same positions, same run.

Times, in a fresh embedded PostgreSQL (pgserver) migrated to the latest heads:

* ``LocalizationStore.put`` of real multi-order maps: MS220722v's BAYESTAR map (19,200
  tiles, with distance layers; the issue's "O4-size" map), MS230518e's map read out of
  its IGWN alert with ``extract_localization`` (decode counted separately), and the
  322,233-tile Swift BAT map; each new (rows deleted between runs) and again
  (idempotent: same content, one SELECT);
* ``index_positions`` of real ZTF alerts (copies of the bundled ones with new ids);
* the region query ``LocalizationStore.events_in_region(ref, level)`` on 10^5
  positions (half drawn from MS220722v's map, half uniform on the sky; seeded), at the
  50 % and 90 % levels, against the in-memory paths on the same positions:
  ``ligo.skymap.postprocess.crossmatch(...).searched_prob <= level`` (map already read)
  and ``broker.enrich.crossmatch.crossmatch_skymap`` (map already prepared); the three
  sets must be identical.

Best of ``--repeat`` runs each. Usage:
``python benchmarks/bench_localization.py [--positions 100000] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
MS220722V = DATA / "igwn" / "gwcelery" / "MS220722v_bayestar.multiorder.fits"
MS230518E = DATA / "igwn" / "fink-mm" / "MS230518e-initial.json"
SWIFT = DATA / "gcn" / "skymaps" / "swift_skymap.multiorder.fits"


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def positions(sky, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Half drawn from the map (a random order-29 pixel inside a tile picked by
    probability), half uniform on the sphere."""
    from astropy_healpix import uniq_to_level_ipix
    from astropy_healpix.core import healpix_to_lonlat

    rng = np.random.default_rng(seed)
    level, ipix = uniq_to_level_ipix(sky.uniq)
    level = level.astype(np.int64)
    prob = sky.probdensity * np.ldexp(np.pi / 3, -2 * level)
    pick = rng.choice(sky.uniq.size, size=n // 2, p=prob / prob.sum())
    deep = 2 * (29 - level[pick])
    sub = rng.integers(0, np.iinfo(np.int64).max, size=pick.size) & ((np.int64(1) << deep) - 1)
    lon, lat = healpix_to_lonlat((ipix[pick].astype(np.int64) << deep) + sub, 1 << 29, order="nested")
    ra_u = rng.uniform(0, 360, n - n // 2)
    dec_u = np.degrees(np.arcsin(rng.uniform(-1, 1, n - n // 2)))
    return np.concatenate([lon.deg, ra_u]), np.concatenate([lat.deg, dec_u])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--positions", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import sqlalchemy as sa
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from broker.archive import Archive, PostgresRawStore, ensure_embedded_postgres, stop_embedded_postgres
    from broker.enrich.crossmatch import crossmatch_skymap, prepare
    from broker.enrich.localization import extract_localization
    from broker.enrich.store import POSITIONS, LocalizationStore, _hpx, index_positions
    from broker.skymap import read_skymap
    from broker.sources import decode

    console = Console()
    pgdir = Path(tempfile.mkdtemp(prefix="mmabl-", dir="/tmp"))
    rows = []
    try:
        url = ensure_embedded_postgres(pgdir / "pg")
        with Archive(url, PostgresRawStore()) as arch:
            arch.migrate()
        engine = sa.create_engine(url)
        store = LocalizationStore(engine)

        def clear() -> None:
            with engine.begin() as conn:
                conn.execute(sa.text("DELETE FROM event_localizations"))
                conn.execute(sa.text("DELETE FROM event_positions"))
                conn.execute(sa.text("DELETE FROM localizations"))

        raw = MS230518E.read_bytes()
        [gw] = decode(raw)
        maps = {"MS220722v (file)": read_skymap(MS220722V.read_bytes()),
                "MS230518e (alert)": extract_localization(gw, raw),
                "Swift BAT (file)": read_skymap(SWIFT.read_bytes())}
        t_extract, _ = best(lambda: extract_localization(gw, raw), args.repeat)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("put()", total=len(maps))
            for name, sky in maps.items():
                def fresh(sky=sky):
                    clear()
                    t = time.perf_counter()
                    ref = store.put("bench:event", sky)
                    return time.perf_counter() - t, ref

                runs = [fresh() for _ in range(args.repeat)]
                t_new, ref = min(runs, key=lambda r: r[0])
                t_again, _ = best(lambda sky=sky: store.put("bench:event", sky), args.repeat)
                rows.append((name, f"{ref.n_tiles:,}", f"{t_new * 1e3:.0f} ms", f"{t_again * 1e3:.1f} ms",
                             f"{ref.area_90_deg2:,.1f}"))
                progress.advance(task)

            # index_positions on real ZTF alerts (copies with new ids)
            ztf = [ev for p in sorted((DATA / "ztf").rglob("*.avro")) for ev in decode(p.read_bytes())]
            copies = [ev.model_copy(update={"id": f"{ev.id}-{k}"}) for k in range(10_000 // len(ztf) + 1) for ev in ztf]
            copies = copies[:10_000]
            clear()
            t_index, _ = best(lambda: index_positions(engine, copies), 3)

            # the region query on n positions, against the in-memory paths
            clear()
            sky = maps["MS220722v (file)"]
            ref = store.put("bench:MS220722v", sky)
            ra, dec = positions(sky, args.positions, seed=2026)
            ids = np.array([f"ztf:bench{i}" for i in range(ra.size)])
            hpx = _hpx(ra, dec)
            with engine.begin() as conn:
                dbapi = conn.connection.dbapi_connection
                with dbapi.cursor() as cur:
                    with cur.copy("COPY event_positions (event_id, source, time, ra_deg, dec_deg, hpx) FROM STDIN") as cp:
                        for i in range(ra.size):
                            cp.write_row((ids[i], "ztf", None, float(ra[i]), float(dec[i]), int(hpx[i])))
            with engine.begin() as conn:
                conn.execute(sa.text("ANALYZE event_positions"))
                conn.execute(sa.text("ANALYZE localization_tiles"))
            from astropy.coordinates import SkyCoord
            import astropy.units as u
            from ligo.skymap.io import read_sky_map
            from ligo.skymap.postprocess import crossmatch

            moc = read_sky_map(str(MS220722V), moc=True)
            coords = SkyCoord(ra * u.deg, dec * u.deg)
            prep = prepare(sky)
            qrows = []
            task = progress.add_task("region queries", total=2)
            for level in (0.5, 0.9):
                t_sql, found = best(lambda: store.events_in_region(ref.id, level, limit=None), args.repeat)
                t_ligo, searched = best(lambda: crossmatch(moc, coords).searched_prob, args.repeat)
                t_ours, ours = best(lambda: crossmatch_skymap(prep, ra, dec).searched_prob, args.repeat)
                s_sql = set(found)
                s_ligo = set(ids[searched <= level].tolist())
                s_ours = set(ids[ours <= level].tolist())
                same = s_sql == s_ligo == s_ours
                qrows.append((f"{level:.0%}", f"{len(s_sql):,}", f"{t_sql * 1e3:.0f} ms", f"{t_ligo * 1e3:.0f} ms",
                              f"{t_ours * 1e3:.0f} ms", "yes" if same else f"NO ({len(s_sql ^ s_ligo)} differ)"))
                progress.advance(task)
            with engine.connect() as conn:
                sql = store.region_query(ref.id, 0.9, limit=None).compile(
                    engine, compile_kwargs={"literal_binds": True})
                plan = [r[0] for r in conn.execute(sa.text(f"EXPLAIN {sql}"))]
                n_ranges = conn.execute(sa.text(
                    "SELECT count(*) FROM (SELECT unnest(range_agg(hpx)) FROM localization_tiles "
                    "WHERE localization_id = :i AND cum_prob <= 0.9) r"), {"i": ref.id}).scalar_one()
                n_tiles90 = conn.execute(sa.text("SELECT count(*) FROM localization_tiles WHERE localization_id = :i "
                                                 "AND cum_prob <= 0.9"), {"i": ref.id}).scalar_one()
        engine.dispose()
    finally:
        stop_embedded_postgres(pgdir / "pg")
        shutil.rmtree(pgdir, ignore_errors=True)

    import platform

    console.print(f"PostgreSQL 16 (pgserver, local socket), Python {platform.python_version()}, "
                  f"best of {args.repeat}")
    console.print(f"extract_localization of MS230518e's alert (JSON, base64, FITS, checks): {t_extract * 1e3:.1f} ms")
    t = Table(title="LocalizationStore.put")
    for c in ("map", "tiles", "put (new)", "put (again)", "90 % area, deg²"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(*r)
    console.print(t)
    console.print(f"index_positions: {len(copies):,} real ZTF alerts in {t_index:.2f} s "
                  f"({len(copies) / t_index:,.0f} /s)")
    t = Table(title=f"events in MS220722v's region, {args.positions:,} positions "
                    f"(90 %: {n_tiles90:,} tiles merged into {n_ranges:,} ranges)")
    for c in ("level", "inside", "SQL (events_in_region)", "ligo.skymap crossmatch", "crossmatch_skymap",
              "identical sets"):
        t.add_column(c, justify="right")
    for r in qrows:
        t.add_row(*r)
    console.print(t)
    console.print("plan: " + " | ".join(p.strip() for p in plan if "Scan" in p or "Join" in p or "Loop" in p))


if __name__ == "__main__":
    main()
