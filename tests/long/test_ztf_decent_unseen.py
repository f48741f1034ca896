"""ztf-decent against AMPEL's DecentFilter on 586 real ZTF alerts the project has never seen.

The unit test (tests/unit/test_ztf_decent_ampel.py) checks the 36 alerts ztf-decent was
written on. Here the alerts are Fink's test tables from the PyPI sdist
``fink-science==7.4.0`` (Apache-2.0), re-encoded as one-alert ZTF Avro messages by their
``schemavsn`` (3.3, 4.02) — ``benchmarks/ztf_unseen.py`` downloads (hash-pinned), converts
and caches them outside the repository (46 MB), and says what was changed (no
``fp_hists``; in one table Fink's float64 ``prv_candidates.candid``).

The same protocol and configurations as the unit test: AMPEL's ZiAlertSupplier +
DecentFilter in its own venv (``benchmarks/ampel_decent.py decide``), ours through
``broker.sources.decode`` → FilterInput → FilterSet, the Gaia configuration with synthetic
sources (fixed seed) around the alerts; then ``mma-broker filters test ztf-decent DIR
--json`` as a user runs it, under three of the configurations (``--set``). A summary per
configuration is printed.

Not in the default test run (a 92 MB download once, about a minute on a 2-core machine):
run ``benchmarks/run_long_checks.sh``. Without the AMPEL venv or the download the test is
skipped, except under CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.unit.test_ztf_decent_ampel import (AMPEL_REASON, CONFIGS, ROOT, ampel_python, gaia_catalog,  # noqa: F401
                                              gaia_sources, ours)

sys.path.insert(0, str(ROOT / "benchmarks"))
import ztf_unseen  # noqa: E402

#: configurations also run through the command line (all their parameters as --set)
CLI_CONFIGS = ("hu_rapid", "history", "quality")


@pytest.fixture(scope="module")
def unseen() -> tuple[Path, list[dict]]:
    try:
        folder, manifest = ztf_unseen.ensure()
    except (subprocess.CalledProcessError, OSError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"unseen ZTF alerts not available under CI: {exc}")
        pytest.skip(f"unseen ZTF alerts not available (python benchmarks/ztf_unseen.py): {exc}")
    return folder, manifest


@pytest.fixture(scope="module")
def messages(unseen) -> list[tuple[str, bytes, bool]]:
    folder, manifest = unseen
    return [(a["file"], (folder / a["file"]).read_bytes(), False) for a in manifest]


@pytest.fixture(scope="module")
def gaia(messages) -> list[dict]:
    return gaia_sources(messages)


@pytest.fixture(scope="module")
def ampel(ampel_python, unseen, gaia, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("unseen-ampel")
    (tmp / "configs.json").write_text(json.dumps(CONFIGS))
    (tmp / "gaia.json").write_text(json.dumps(gaia))
    proc = subprocess.run([str(ampel_python), str(ROOT / "benchmarks" / "ampel_decent.py"), "decide", str(unseen[0]),
                           str(tmp / "configs.json"), str(tmp / "gaia.json")],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_origin_and_size(unseen, capsys):
    folder, manifest = unseen
    assert len(manifest) == 586 and len({a["candid"] for a in manifest}) == 586
    assert not {a["candid"] for a in manifest} & ztf_unseen.seen_candids()
    assert sorted(p.name for p in folder.glob("*.avro")) == [a["file"] for a in manifest]
    with capsys.disabled():
        print(f"\n{ztf_unseen.describe(manifest)}")


def test_decisions_equal_ampel_on_unseen_alerts(ampel, messages, gaia, unseen, capsys):
    manifest = unseen[1]
    catalogs = {"gaia": gaia_catalog(gaia)}
    lines, disagreements = [f"ztf-decent vs AMPEL ampel-ztf {ampel['ampel_ztf']} DecentFilter, "
                            f"{len(messages)} unseen alerts:"], {}
    reasons_seen: set[str] = set()
    for name, cfg in CONFIGS.items():
        mine = ours(cfg, messages, catalogs)
        theirs = ampel["results"][name]
        assert [m[0] for m in mine] == [t["candid"] for t in theirs] == [a["candid"] for a in manifest]
        diffs = [(t["file"], t["accepted"], t["reason"], m[1], m[2]) for m, t in zip(mine, theirs)
                 if (m[1], m[2]) != (t["accepted"], AMPEL_REASON.get(t["reason"], t["reason"]))]
        if diffs:
            disagreements[name] = diffs
        reasons = Counter(m[2] for m in mine)
        reasons_seen |= set(reasons)
        lines.append(f"  {name:9s} agree {len(mine) - len(diffs)}/{len(mine)}, accepted {sum(m[1] for m in mine)}; "
                     + ", ".join(f"{r} {n}" for r, n in reasons.most_common()))
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert not disagreements, f"(file, AMPEL accepted, AMPEL reason, ours accepted, ours reason): {disagreements}"
    # the unseen alerts exercise the cuts, as the repository's do
    assert {"decent", "ndet_below_min", "tspan_out_of_range", "rb_below_min", "drb_below_min", "fwhm_above_max",
            "archive_tspan_out_of_range", "galactic_plane", "ps1_star", "gaia_star"} <= reasons_seen, reasons_seen


def _mma_broker() -> list[str]:
    exe = Path(sys.executable).parent / "mma-broker"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "broker"]


@pytest.mark.parametrize("name", CLI_CONFIGS)
def test_the_test_command_agrees_with_ampel(name, ampel, unseen, tmp_path, capsys):
    """``mma-broker filters test ztf-decent DIR --json`` as a user runs it (no settings file;
    the configuration's parameters as --set; a 1 s time budget: a loaded machine must not
    turn a decision into a budget error)."""
    folder, manifest = unseen
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_")}
    env["MMA_BROKER_HOME"] = str(tmp_path)
    sets = [a for k, v in CONFIGS[name].items() for a in ("--set", f"{k}={json.dumps(v)}")]
    proc = subprocess.run([*_mma_broker(), "filters", "test", "ztf-decent", str(folder), "--json",
                           "--time-budget-ms", "1000", *sets], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {d["id"]: d for d in map(json.loads, proc.stdout.splitlines())}
    assert len(got) == len(manifest)
    diffs = []
    for t in ampel["results"][name]:
        d = got[f"ztf:{t['candid']}"]
        if (d["accepted"], d["reason"]) != (t["accepted"], AMPEL_REASON.get(t["reason"], t["reason"])):
            diffs.append((t["file"], t["accepted"], t["reason"], d["accepted"], d["reason"]))
    with capsys.disabled():
        print(f"\nmma-broker filters test ztf-decent ({name}): {len(got) - len(diffs)}/{len(got)} decisions equal "
              f"AMPEL's, {sum(d['accepted'] for d in got.values())} accepted")
    assert not diffs, diffs


def test_history_decoder_equals_fastavro_on_unseen_alerts(messages, capsys):
    """filters.ztf_history's projection decoder: every candidate, prv_candidates and fp_hists
    value of every unseen alert equals fastavro's full decode (as tests/unit/test_ztf_history.py
    checks on the repository's alerts)."""
    import io

    import fastavro

    from filters.ztf_history import decode_history
    from tests.unit.test_ztf_history import _check

    compared = 0
    for _, raw, _ in messages:
        (rec,) = fastavro.reader(io.BytesIO(raw))
        compared += _check(decode_history(raw), rec)
    with capsys.disabled():
        print(f"\nztf_history.decode_history: {compared} values of {len(messages)} unseen alerts equal fastavro's")
    assert compared > 500_000  # 873,070 measured: no alert was skipped
