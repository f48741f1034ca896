"""Benchmark: start-up of the ``mma-broker`` command, with ``hop --help`` as a peer.

Runs each command ``--runs`` times as a new process (what a user's shell does) and
prints the median, minimum and 90th percentile wall time, and the median's ratio to
``hop --help`` (hop-client's CLI, measured in the same run, so a busy machine slows
both alike). Runs are interleaved round-robin after ``--warmup`` unmeasured rounds
(file cache, ``.pyc``), and the load average is printed before and after.

Commands: ``mma-broker --help``; ``mma-broker inspect FILE`` on real bundled alerts —
a Fermi GBM VOEvent, a ZTF Avro packet and an IGWN gwalert JSON with its HEALPix sky
map (which needs numpy and astropy to summarise); ``hop --help``. Target: ≤ 0.5 s for
``--help`` and ``inspect FILE`` (issue 7). ``python -X importtime -m broker ARGS``
shows where the time of one start goes.

Usage: python benchmarks/bench_cli_startup.py [--runs 20] [--warmup 2] [--alert FILE ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ALERTS = [
    ROOT / "tests/data/voevent/pygcn/gbm_flt_pos.xml",
    ROOT / "tests/data/ztf/kowalski/20231012/2475433850215010007.avro",
    ROOT / "tests/data/igwn/userguide/MS181101ab-preliminary.json",
]


def commands(alerts: list[Path]) -> list[tuple[str, list[str]]]:
    mma, hop = str(BIN / "mma-broker"), str(BIN / "hop")
    out = [("mma-broker --help", [mma, "--help"])]
    out += [(f"mma-broker inspect {a.name}", [mma, "inspect", str(a)]) for a in alerts]
    out.append(("hop --help", [hop, "--help"]))
    return out


def run_once(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="measured runs per command")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first")
    parser.add_argument("--alert", type=Path, action="append", help="alert files to inspect (default: 3 real ones)")
    args = parser.parse_args()
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    cmds = commands(args.alert or ALERTS)
    for name, argv in cmds:
        if not Path(argv[0]).exists():
            raise SystemExit(f"{argv[0]} not found: run with the project's venv Python")
    env_note = {k: v for k, v in os.environ.items() if k.startswith("MMA_BROKER_")}
    load0 = os.getloadavg()
    for _ in range(args.warmup):
        for _, argv in cmds:
            run_once(argv)
    times: dict[str, list[float]] = {name: [] for name, _ in cmds}
    for _ in range(args.runs):
        for name, argv in cmds:
            times[name].append(run_once(argv))
    load1 = os.getloadavg()

    peer = statistics.median(times["hop --help"])
    width = max(len(name) for name in times)
    print(f"{args.runs} runs each, interleaved, after {args.warmup} warm-up round(s); {os.cpu_count()} CPUs; "
          f"load average {load0[0]:.2f} before, {load1[0]:.2f} after"
          + (f"; MMA_BROKER_* set: {', '.join(sorted(env_note))}" if env_note else ""))
    print(f"{'command':<{width}}  {'median s':>8}  {'min s':>6}  {'p90 s':>6}  {'÷ hop --help':>12}")
    for name, ts in times.items():
        ts = sorted(ts)
        p90 = ts[min(len(ts) - 1, int(round(0.9 * (len(ts) - 1))))]
        med = statistics.median(ts)
        print(f"{name:<{width}}  {med:8.3f}  {ts[0]:6.3f}  {p90:6.3f}  {med / peer:12.2f}")


if __name__ == "__main__":
    main()
