"""Benchmark: SPI-ACS excess search with upper limits, per event.

Runs :func:`followup.spiacs.run_spiacs_analysis` on the bundled real GRB 230307A
SPI-ACS light curve (0.1 s bins, 540 s: the full curve, the closest bundled data to
a +/-300 s request) with a 1000-sample direction map, ``--runs`` times, and prints
mean, p50 and p95 seconds per event. Reading the file is timed separately (it is
I/O, done once per event by the data source). Target (DESIGN.md): <= 0.5 s/event.

Usage: python benchmarks/bench_spiacs.py [--runs 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from followup.bundled import bundled_data_dir
from followup.lightcurve import read_ogip_lightcurve
from followup.spiacs import SkyDirection, run_spiacs_analysis

LC_PATH = bundled_data_dir() / "spiacs_lc_GRB230307A.fits"
T0 = "2023-03-07T15:44:06.67Z"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--directions", type=int, default=1000, help="sky-map samples per event")
    args = parser.parse_args()

    start = time.perf_counter()
    lc = read_ogip_lightcurve(LC_PATH)
    read_s = time.perf_counter() - start
    rng = np.random.default_rng(1)
    theta = np.degrees(np.arccos(rng.uniform(-1, 1, args.directions)))
    phi = rng.uniform(0, 360, args.directions)
    weights = rng.dirichlet(np.ones(args.directions))
    directions = [SkyDirection(float(t), float(p), float(w)) for t, p, w in zip(theta, phi, weights)]

    run_spiacs_analysis(lc, T0, directions)  # warm-up (imports, caches)
    per_event_s = []
    for _ in range(args.runs):
        start = time.perf_counter()
        result = run_spiacs_analysis(lc, T0, directions)
        per_event_s.append(time.perf_counter() - start)
    per_event_s = np.array(per_event_s)
    print(f"light curve: {lc.time_s.size} bins of {lc.bin_s:g} s ({lc.duration_s:.0f} s), read in {read_s:.3f} s")
    print(f"search: {len(result.excess.scales)} scales, {result.excess.n_trials} trials; "
          f"{args.directions} directions; {args.runs} runs")
    print(f"seconds/event: mean {per_event_s.mean():.4f}  p50 {np.percentile(per_event_s, 50):.4f}  "
          f"p95 {np.percentile(per_event_s, 95):.4f}  (target <= 0.5)")


if __name__ == "__main__":
    main()
