"""ztf-decent against AMPEL's own DecentFilter, decision for decision, on every real ZTF alert.

AMPEL (``ampel-ztf`` from PyPI, its ZiAlertSupplier and DecentFilter unchanged) runs in
its own venv (``benchmarks/ampel_venv.py``; ``deploy/test.sh`` creates it under
``$MMA_BROKER_HOME/ampel-venv``) through ``benchmarks/ampel_decent.py``. Both sides see
the same single-alert Avro messages: each alert of ``tests/data/ztf`` (multi-alert
containers split, each record re-written with its own writer schema). Ours goes the
production way: ``broker.sources.decode`` → FilterInput(raw bytes) → FilterSet; the
multi-alert containers are also decided whole (the history decoder picks the alert by
candid). Several configurations make every cut decide some alert; one uses a Gaia
catalog (synthetic sources, fixed seed, around the alerts) that replaces AMPEL's catsHTM
query in its run and is our loaded ``gaia`` catalog in ours.

Without the venv the test is skipped, except under CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import fastavro
import numpy as np
import pytest
from astropy.table import Table

from broker.sources import decode
from filters.api import FilterInput
from filters.builtin.ztf_decent import ZtfDecent, ZtfDecentConfig
from filters.engine import ConfiguredFilter, FilterSet

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "ztf"
sys.path.insert(0, str(ROOT / "benchmarks"))
import ampel_venv  # noqa: E402

#: AMPEL's debug ``extra`` key → our reason code.
AMPEL_REASON = {
    "accepted": "decent", "nDet": "ndet_below_min", "tSpan": "tspan_out_of_range", "missing": "missing_field",
    "isNone": "missing_field", "isdiffpos": "negative_subtraction", "rb": "rb_below_min", "drb": "drb_below_min",
    "fwhm": "fwhm_above_max", "elong": "elong_above_max", "magdiff": "magdiff_above_max",
    "archive_tspan": "archive_tspan_out_of_range", "ssdistnr": "near_solar_system_object",
    "galPlane": "galactic_plane", "distpsnr1": "ps1_star", "ps1Confusion": "ps1_confusion", "gaiaIsStar": "gaia_star",
}

HU_RAPID = ZtfDecentConfig().model_dump()
LOOSE = dict(HU_RAPID, min_ndet=1, min_tspan=-1.0, max_tspan=1e5, min_archive_tspan=-1.0, min_rb=0.0, max_fwhm=100.0,
             max_elong=100.0, max_magdiff=100.0, min_sso_dist=-1.0, min_gal_lat=-1.0, ps1_sgveto_rad=-1.0,
             ps1_confusion_rad=-1.0)
CONFIGS = {
    "hu_rapid": HU_RAPID,
    "loose": LOOSE,
    "history": dict(LOOSE, min_ndet=5, min_tspan=1.0, max_tspan=25.0),
    "archive": dict(LOOSE, min_archive_tspan=10.0, max_archive_tspan=1000.0),
    "drb": dict(LOOSE, min_drb=0.9),
    "quality": dict(LOOSE, min_rb=0.5, max_fwhm=3.0, max_elong=1.2, max_magdiff=0.3),
    "sky": dict(LOOSE, min_sso_dist=50.0, min_gal_lat=30.0),
    "ps1": dict(LOOSE, ps1_sgveto_rad=5.0, ps1_sgveto_th=0.3, ps1_confusion_rad=25.0, ps1_confusion_sg_tol=0.5),
    "gaia": dict(LOOSE, gaia_rs=12.0, gaia_pm_signif=3.0, gaia_plx_signif=3.0, gaia_veto_gmag_min=9.0,
                 gaia_veto_gmag_max=20.0, gaia_excessnoise_sig_max=2.0),
}


def single_alert_messages() -> list[tuple[str, bytes, bool]]:
    """(name, one-alert container, from a multi-alert file) for every real ZTF alert."""
    out = []
    for path in sorted(DATA.rglob("*.avro")):
        with path.open("rb") as fh:
            reader = fastavro.reader(fh)
            schema, records = reader.writer_schema, list(reader)
        for i, rec in enumerate(records):
            buf = io.BytesIO()
            fastavro.writer(buf, schema, [rec])
            out.append((f"{len(out):03d}_{path.stem}_{i}.avro", buf.getvalue(), len(records) > 1))
    return out


def gaia_sources(messages: list[tuple[str, bytes, bool]], seed: int = 20240) -> list[dict]:
    """Synthetic Gaia-like sources: 5 per alert within 15 arcsec, values that straddle every cut."""
    rng = np.random.default_rng(seed)
    out = []
    for _, msg, _ in messages:
        c = next(fastavro.reader(io.BytesIO(msg)))["candidate"]
        for _ in range(5):
            r, pa = 15.0 * np.sqrt(rng.uniform()) / 3600.0, rng.uniform(0, 2 * np.pi)
            dec = c["dec"] + r * np.cos(pa)
            ra = (c["ra"] + r * np.sin(pa) / np.cos(np.radians(c["dec"]))) % 360.0
            src = {"ra": float(ra), "dec": float(dec), "Mag_G": float(rng.uniform(7.0, 22.0)),
                   "PMRA": float(rng.normal(0, 6)), "ErrPMRA": float(rng.uniform(0.5, 2.0)),
                   "PMDec": float(rng.normal(0, 6)), "ErrPMDec": float(rng.uniform(0.5, 2.0)),
                   "Plx": float(rng.normal(0, 2)), "ErrPlx": float(rng.uniform(0.3, 1.0)),
                   "ExcessNoiseSig": float(rng.uniform(0, 4))}
            if rng.uniform() < 0.15:
                src[str(rng.choice(["PMRA", "Plx", "ExcessNoiseSig"]))] = None
            out.append(src)
    return out


def gaia_catalog(sources: list[dict]) -> SimpleNamespace:
    """The sources as a loaded catalog (what ``FilterInput.catalog('gaia')`` gives a filter)."""
    cols = ("Mag_G", "PMRA", "ErrPMRA", "PMDec", "ErrPMDec", "Plx", "ErrPlx", "ExcessNoiseSig")
    table = Table({k: np.ma.masked_invalid([np.nan if s[k] is None else s[k] for s in sources]) for k in cols})
    return SimpleNamespace(name="gaia", ra_deg=np.array([s["ra"] for s in sources]),
                           dec_deg=np.array([s["dec"] for s in sources]), table=table)


@pytest.fixture(scope="module")
def ampel_python() -> Path:
    venv = ampel_venv.default_dir()
    if not ampel_venv.ready(venv):
        if os.environ.get("CI"):
            pytest.fail(f"AMPEL venv missing under CI: deploy/test.sh should have run benchmarks/ampel_venv.py ({venv.name})")
        pytest.skip("AMPEL venv not made (python benchmarks/ampel_venv.py)")
    return ampel_venv.python_of(venv)


def ours(cfg: dict, messages: list[tuple[str, bytes, bool]], catalogs: dict) -> list[tuple[int, bool, str]]:
    fs = FilterSet([ConfiguredFilter("ztf-decent", ZtfDecent.from_params(cfg), time_budget_ms=1e4)])
    out = []
    for _, msg, _ in messages:
        (event,) = decode(msg)
        (d,) = fs.evaluate(FilterInput(event, {}, raw=msg, catalogs=catalogs))
        assert d.error is None, d.error
        out.append((event.properties["candid"], d.accepted, d.reason))
    return out


def test_decisions_equal_ampel(ampel_python: Path, tmp_path: Path) -> None:
    messages = single_alert_messages()
    assert len(messages) == 36
    for name, msg, _ in messages:
        (tmp_path / name).write_bytes(msg)
    (tmp_path / "configs.json").write_text(json.dumps(CONFIGS))
    sources = gaia_sources(messages)
    (tmp_path / "gaia.json").write_text(json.dumps(sources))
    proc = subprocess.run([str(ampel_python), str(ROOT / "benchmarks" / "ampel_decent.py"), "decide", str(tmp_path),
                           str(tmp_path / "configs.json"), str(tmp_path / "gaia.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ampel = json.loads(proc.stdout)["results"]
    catalogs = {"gaia": gaia_catalog(sources)}

    reasons_seen: set[str] = set()
    for name, cfg in CONFIGS.items():
        mine = ours(cfg, messages, catalogs)
        theirs = ampel[name]
        assert [m[0] for m in mine] == [t["candid"] for t in theirs]
        diffs = [(t["file"], t["accepted"], t["reason"], m[1], m[2]) for m, t in zip(mine, theirs)
                 if (m[1], m[2]) != (t["accepted"], AMPEL_REASON.get(t["reason"], t["reason"]))]
        assert not diffs, f"config {name}: (file, AMPEL accepted, AMPEL reason, ours accepted, ours reason): {diffs}"
        reasons_seen |= {m[2] for m in mine}
    # the configurations exercise the cuts: each of these decided at least one real alert
    assert {"decent", "ndet_below_min", "tspan_out_of_range", "rb_below_min", "drb_below_min", "fwhm_above_max",
            "archive_tspan_out_of_range", "galactic_plane", "ps1_star", "gaia_star"} <= reasons_seen, reasons_seen


def test_multi_alert_containers_decided_whole() -> None:
    """A multi-alert container (archives) gives each alert the decision of its single-alert message."""
    fs = FilterSet([ConfiguredFilter("ztf-decent", ZtfDecent.from_params(CONFIGS["history"]), time_budget_ms=1e4)])
    singles = {}
    for _, msg, multi in single_alert_messages():
        if multi:
            (event,) = decode(msg)
            singles[event.id] = fs.evaluate(FilterInput(event, {}, raw=msg))[0].reason
    containers = [p.read_bytes() for p in sorted(DATA.rglob("*.avro"))]
    whole = {}
    for raw in containers:
        events = decode(raw)
        if len(events) > 1:
            for ev in events:
                whole[ev.id] = fs.evaluate(FilterInput(ev, {}, raw=raw))[0].reason
    assert len(whole) == 3 and whole == singles
