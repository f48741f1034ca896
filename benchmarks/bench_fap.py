"""Benchmark: calibration of the SPI-ACS excess search (false-alarm rates and detection efficiency).

Long version of tests/unit/test_excess_calibration.py. For each null model it runs
``--n`` searches (default parameters: +/-300 s search window, 250 s background per side)
on simulated +/-550 s curves and prints, per nominal FAP level, the observed rate of
``FAP < level`` with its 95 % Clopper-Pearson interval:

* ``white``: Poisson counts at the real SPI-ACS rate of the bundled GRB 230307A curve
  (0.1 s bins);
* ``red``: the same plus extra white Gaussian noise and an AR(1) process fitted to the
  real curve's per-scale excess-variance factors (burst-free data);
* ``gaussian``: background-subtracted, ISGRI-like curves (1 s bins, mean -0.5, ERROR = 3).

Then it injects top-hat bursts (``--injections`` per point) at uniformly random times
into the real burst-free background (the bundled curve's quiet stretches, 425 s) and
prints the detected fraction at the 3-sigma upper limit and at the reported 50 % / 90 %
detection counts, per time scale.

Usage: python benchmarks/bench_fap.py [--n 4000] [--injections 400] [--seed 1]
Figures are recorded in docs/followup-statistics.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' simulation helpers

from followup.excess import search_excess  # noqa: E402
from followup.lightcurve import LightCurve  # noqa: E402
from tests.unit.test_excess_calibration import (  # noqa: E402
    GBM_T0,
    binomial_interval,
    fit_red_noise,
    inject_top_hat,
    measured_factors,
    null_lightcurve,
    quiet_real_lightcurve,
    quiet_segments,
    real_lightcurve,
)

LEVELS = (2.7e-3, 0.01, 0.05, 0.2, 0.5)
INJECTION_SCALES_S = (0.1, 1.0, 8.0)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="null realizations per noise model")
    parser.add_argument("--injections", type=int, default=400, help="injections per scale and amplitude")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    console = Console()
    started = time.perf_counter()

    real = real_lightcurve()
    segments = quiet_segments(real)
    factors = measured_factors(segments, real.bin_s)
    red = fit_red_noise(factors, real.bin_s)
    mean = float(np.mean(np.concatenate(segments)))
    console.print(f"real curve: {real.bin_s:g} s bins, burst-free mean {mean:.1f} counts/bin; measured factors "
                  + ", ".join(f"{s:g} s {f:.2f}" for s, f in factors.items()))
    console.print(f"red-noise model: white factor {red[0]:.3f}, AR(1) variance {red[1]:.4f} x mean, tau {red[2]:g} s")

    rng = np.random.default_rng(args.seed)
    gauss_time_s = np.arange(-550.0, 550.0, 1.0) + 0.5
    gauss_error = np.full(gauss_time_s.size, 3.0)
    makers = {
        "white": lambda: null_lightcurve(rng, mean, real.bin_s, 550.0),
        "red": lambda: null_lightcurve(rng, mean, real.bin_s, 550.0, red),
        "gaussian": lambda: LightCurve(GBM_T0, gauss_time_s, 1.0, rng.normal(-0.5, 3.0, gauss_time_s.size), "IBIS",
                                       error=gauss_error),
    }
    faps: dict[str, np.ndarray] = {}
    extra: dict[str, str] = {}
    with _progress() as progress:
        for name, make in makers.items():
            task = progress.add_task(f"null {name}", total=args.n)
            values, t_run = [], 0.0
            for _ in range(args.n):
                lc = make()
                start = time.perf_counter()
                result = search_excess(lc)
                t_run += time.perf_counter() - start
                values.append(result.fap)
                progress.advance(task)
            faps[name] = np.array(values)
            extra[name] = (f"{1e3 * t_run / args.n:.1f} ms/search, N_eff {result.n_effective_trials:.0f} of "
                           f"{result.n_trials} windows, threshold z {result.detection_snr_threshold:.2f}")

    table = Table(title=f"Null false-alarm rates, N = {args.n} per model (95 % Clopper-Pearson)")
    table.add_column("nominal FAP")
    for name in makers:
        table.add_column(name)
    for level in LEVELS:
        cells = []
        for name in makers:
            k = int(np.sum(faps[name] < level))
            lo, hi = binomial_interval(k, args.n, 0.95)
            mark = "" if lo <= level <= hi else (" (low)" if hi < level else " (HIGH)")
            cells.append(f"{k / args.n:.4f} [{lo:.4f}, {hi:.4f}]{mark}")
        table.add_row(f"{level:g}", *cells)
    console.print(table)
    for name, text in extra.items():
        console.print(f"{name}: {text}")

    quiet = quiet_real_lightcurve(real)
    base = search_excess(quiet)
    lo_s, hi_s = base.search_window_s
    inj = Table(title=f"Injections on the real background ({quiet.duration_s:.0f} s, searched {lo_s:+.1f}..{hi_s:+.1f} s), "
                      f"{args.injections} per cell")
    for column in ("scale s", "3-sigma UL counts", "detected at UL", "D50 counts (D50/UL)", "detected at D50",
                   "D90 counts (D90/UL)", "detected at D90"):
        inj.add_column(column)
    with _progress() as progress:
        task = progress.add_task("injections", total=3 * len(INJECTION_SCALES_S) * args.injections)
        for scale_s in INJECTION_SCALES_S:
            row = next(r for r in base.scales if abs(r.scale_s - scale_s) < 1e-6)
            cells = [f"{scale_s:g}"]
            for label, total in (("UL", row.upper_limit_counts), ("D50", row.detection_50_counts),
                                 ("D90", row.detection_90_counts)):
                hits = 0
                for start_s in rng.uniform(lo_s, hi_s - scale_s, args.injections):
                    counts = inject_top_hat(quiet.counts, quiet.time_s, quiet.bin_s, start_s, scale_s, total)
                    hits += search_excess(quiet.with_counts(counts)).detected
                    progress.advance(task)
                k_lo, k_hi = binomial_interval(hits, args.injections, 0.95)
                ratio = "" if label == "UL" else f" ({total / row.upper_limit_counts:.2f})"
                cells += [f"{total:.0f}{ratio}", f"{hits / args.injections:.3f} [{k_lo:.3f}, {k_hi:.3f}]"]
            inj.add_row(*cells)
    console.print(inj)
    console.print(f"{datetime.now(timezone.utc):%Y-%m-%d}, {platform.machine()} {platform.processor() or ''} "
                  f"python {platform.python_version()}, total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
