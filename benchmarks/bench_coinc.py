"""Overlap integral: broker.enrich.coinc against ligo-raven 3.3 on the same real maps, same run.

For each pair of real sky maps in tests/data (three BAYESTAR multi-order GW maps, the
Swift multi-order map, the Fermi GBM flat map) and for real point positions, times
``broker.enrich.coinc.overlap_integral`` (method "raven" and "exact") and
``ligo.raven.search.skymap_overlap_integral`` (maps read by ``ligo.skymap.io.read_sky_map``
as gwcelery does: PROBDENSITY columns in sr⁻¹) on the same inputs, best of ``--repeat``
runs each, and prints a table: values, relative difference to ligo-raven, times and the
time ratio. For multi-order × point, "ours" is ``nearest_centre_point_overlap`` (ligo-raven's
nearest pixel centre) and "exact" is the published formula that ``overlap_integral`` returns. Sky-map reading is outside the timings (both sides get parsed arrays).

Then, for multi-order × point, how often ligo-raven's nearest pixel centre and the pixel
holding the point (the published formula) differ, for positions drawn from each GW map.

Then the exact integral (``method="exact"``) against hpmoc 1.0's independent product of
multi-order maps (``PartialUniqSkymap(ρ_a, uniq_a) * PartialUniqSkymap(ρ_b, uniq_b)``,
summed over its pixels) on the same parsed maps, same run, including S190814bv's flat
NSIDE-1024 LALInference map (12.6 million pixels; tests/data/igwn/unseen) against
multi-order maps, a pair ligo-raven has no branch for (``--no-flat`` leaves it out: reading
it takes ~1.4 GB and ~15 s).

Usage: python benchmarks/bench_coinc.py [--repeat 5] [--points 2000] [--no-flat]
"""

from __future__ import annotations

import argparse
import base64
import json
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"


def load_maps():
    from broker.skymap import read_skymap

    raw = {
        "MS181101ab": (DATA / "igwn/userguide/bayestar.multiorder.fits").read_bytes(),
        "MS220722v": (DATA / "igwn/gwcelery/MS220722v_bayestar.multiorder.fits").read_bytes(),
        "MS230518e": base64.b64decode(json.loads((DATA / "igwn/fink-mm/MS230518e-initial.json").read_bytes())
                                      ["event"]["skymap"]),
        "Swift": (DATA / "gcn/skymaps/swift_skymap.multiorder.fits").read_bytes(),
        "GBM": (DATA / "gcn/skymaps/fermi_gbm_skymap.fits.gz").read_bytes(),
    }
    return {name: read_skymap(b) for name, b in raw.items()}


def ligo_inputs(sky):
    import numpy as np
    from astropy import units as u
    from astropy.table import Column

    from broker.enrich.coinc import is_flat

    if is_flat(sky):
        return np.asarray(sky.probdensity)[np.argsort(sky.uniq)] * (4 * np.pi / sky.uniq.size), []
    return Column(sky.probdensity, unit=u.sr**-1), Column(sky.uniq)


def best(fn, repeat):
    times, value = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
    return value, min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--points", type=int, default=2000, help="positions per GW map for the point comparison")
    ap.add_argument("--no-flat", action="store_true", help="leave out the flat NSIDE-1024 map of S190814bv")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    from ligo.raven.search import skymap_overlap_integral
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from broker.enrich.coinc import PointSource, is_flat, nearest_centre_point_overlap, overlap_integral
    from broker.sources import decode

    maps = load_maps()
    points = {}
    for name, path in (("Swift BAT GRB", "voevent/gwcelery/swift_grb_gcn.xml"),
                       ("IceCube gold", "gcn/gwcelery-kafka/kafka_alert_icecube_gold.json")):
        loc = decode((DATA / path).read_bytes())[0].localization
        points[name] = PointSource(loc.ra, loc.dec)
    gw_names = ["MS181101ab", "MS220722v", "MS230518e"]
    cases = [(g, e) for g in gw_names for e in ("Swift", "GBM", *[x for x in gw_names if x != g])]
    cases += [("GBM", "GBM")] + [(g, p) for g in (*gw_names, "GBM") for p in points]

    table = Table(title=f"Overlap integral I_Ω: ours vs ligo-raven 3.3 (best of {args.repeat})")
    for col in ("GW map", "external", "ligo-raven", "ours, same discretization", "rel. diff", "exact", "t raven [ms]",
                "t ours [ms]", "ratio", "t exact [ms]"):
        table.add_column(col, justify="right" if col not in ("GW map", "external") else "left")
    with Progress(transient=True) as progress:
        task = progress.add_task("overlap integrals", total=len(cases))
        for gw_name, ext_name in cases:
            gw = maps[gw_name]
            ext = points.get(ext_name) or maps[ext_name]
            se, se_uniq = ligo_inputs(gw)
            if isinstance(ext, PointSource):
                def theirs():
                    return skymap_overlap_integral(se, [], se_uniq, [], ra=ext.ra_deg, dec=ext.dec_deg, se_nested=True)
            else:
                ex, ex_uniq = ligo_inputs(ext)

                def theirs():
                    return skymap_overlap_integral(se, ex, se_uniq, ex_uniq, se_nested=True, ext_nested=True)
            v_r, t_r = best(theirs, args.repeat)
            if isinstance(ext, PointSource) and not is_flat(gw):  # ligo-raven's nearest centre, for the comparison
                v_o, t_o = best(lambda: nearest_centre_point_overlap(gw, ext), args.repeat)
            else:
                v_o, t_o = best(lambda: overlap_integral(gw, ext, "raven"), args.repeat)
            v_x, t_x = best(lambda: overlap_integral(gw, ext, "exact"), args.repeat)
            rel = abs(v_o / v_r - 1) if v_r else abs(v_o)
            table.add_row(gw_name, ext_name, f"{float(v_r):.6g}", f"{v_o:.6g}", f"{rel:.1e}", f"{v_x:.6g}",
                          f"{t_r * 1e3:.1f}", f"{t_o * 1e3:.1f}", f"{t_r / t_o:.1f}×", f"{t_x * 1e3:.1f}")
            progress.advance(task)
    console = Console(width=200)
    console.print(table)
    console.print(point_agreement(maps, gw_names, args.points))
    console.print(exact_against_hpmoc(maps, args.repeat, flat=not args.no_flat))


def hpmoc_exact(a, b) -> float:
    """``I_Ω`` with hpmoc's product of the two maps (Ashton et al. 2018 eq. 8, exact)."""
    import numpy as np
    from hpmoc import PartialUniqSkymap

    from broker.enrich.moc import level_ipix, pixel_area_sr

    prod = PartialUniqSkymap(a.probdensity, a.uniq) * PartialUniqSkymap(b.probdensity, b.uniq)
    na = np.sum(a.probdensity * pixel_area_sr(level_ipix(a.uniq)[0]))
    nb = np.sum(b.probdensity * pixel_area_sr(level_ipix(b.uniq)[0]))
    return float(4 * np.pi * np.sum(np.asarray(prod.s) * pixel_area_sr(level_ipix(np.asarray(prod.u))[0])) / na / nb)


def exact_against_hpmoc(maps, repeat, flat=True):
    """The exact overlap integral against hpmoc's product on the same maps, best of
    ``repeat`` (at most 3 for the 12.6-million-pixel flat map), same run."""
    from rich.progress import Progress
    from rich.table import Table

    from broker.enrich.coinc import overlap_integral
    from broker.enrich.inputs import FILE_LIMITS
    from broker.limits import decode_scope
    from broker.skymap import read_skymap

    maps = dict(maps)
    cases = [("MS181101ab", "Swift"), ("MS220722v", "Swift"), ("MS181101ab", "MS220722v"), ("GBM", "MS220722v")]
    if flat:
        with decode_scope(FILE_LIMITS):  # 402 MB gunzipped: over the stage's max_skymap_bytes
            maps["S190814bv (flat)"] = read_skymap((DATA / "igwn/unseen/S190814bv_5_LALInference.v1.fits.gz")
                                                   .read_bytes())
        cases += [("S190814bv (flat)", "Swift"), ("S190814bv (flat)", "MS220722v"), ("MS230518e", "S190814bv (flat)")]
    table = Table(title=f"Exact overlap integral: ours vs hpmoc 1.0's product of maps (best of {repeat}; "
                        "3 at most for the flat map)")
    for col in ("GW map", "external", "pixels", "ours", "hpmoc", "rel. diff", "t ours [s]", "t hpmoc [s]",
                "hpmoc / ours"):
        table.add_column(col, justify="left" if col in ("GW map", "external") else "right")
    with Progress(transient=True) as progress:
        task = progress.add_task("exact integrals vs hpmoc", total=len(cases))
        for a, b in cases:
            n = min(repeat, 3) if "flat" in a + b else repeat
            v_o, t_o = best(lambda: overlap_integral(maps[a], maps[b], "exact"), n)
            v_h, t_h = best(lambda: hpmoc_exact(maps[a], maps[b]), n)
            table.add_row(a, b, f"{maps[a].uniq.size:,} × {maps[b].uniq.size:,}", f"{v_o:.10g}", f"{v_h:.10g}",
                          f"{abs(v_o / v_h - 1) if v_h else abs(v_o):.1e}", f"{t_o:.3f}", f"{t_h:.3f}",
                          f"{t_h / t_o:.1f}×")
            progress.advance(task)
    return table


def point_agreement(maps, gw_names, n):
    """Multi-order × point, RAVEN's nearest pixel centre vs the pixel holding the point,
    for ``n`` positions drawn from each GW map (seeded): how often and how much they differ."""
    import numpy as np
    from astropy_healpix.core import healpix_to_lonlat, uniq_to_level_ipix
    from rich.table import Table

    from broker.enrich.coinc import PointSource, nearest_centre_point_overlap, overlap_integral

    rng = np.random.default_rng(20261130)
    table = Table(title=f"Multi-order × point: nearest centre (ligo-raven) vs containing pixel, {n} points per map "
                        "drawn from the map, jittered inside their pixel")
    for col in ("GW map", "points", "differ", "median |ratio - 1| where they differ", "max |ratio - 1|"):
        table.add_column(col, justify="right" if col != "GW map" else "left")
    for name in gw_names:
        sky = maps[name]
        level, ipix = uniq_to_level_ipix(sky.uniq)
        prob = sky.probdensity * 4 * np.pi / (12 * 4.0**level)
        pick = rng.choice(sky.uniq.size, size=n, p=prob / prob.sum())
        # a random place inside the chosen pixel: a random descendant 8 orders deeper
        sub = (ipix[pick] << 16) + rng.integers(0, 1 << 16, size=n)
        lon, lat = healpix_to_lonlat(sub, 1 << (level[pick] + 8), order="nested")
        ratios = np.array([nearest_centre_point_overlap(sky, PointSource(a, b)) / overlap_integral(sky, PointSource(a, b))
                           for a, b in zip(lon.deg, lat.deg)])
        dev = np.abs(ratios - 1)
        differ = dev > 1e-12
        table.add_row(name, str(n), f"{differ.sum()} ({differ.mean():.1%})",
                      f"{np.median(dev[differ]):.3g}" if differ.any() else "-", f"{dev.max():.3g}")
    return table


if __name__ == "__main__":
    main()
