"""The enrich stage end to end on the real Kafka and PostgreSQL.

``mma-broker replay`` publishes real alerts, ``mma-broker run --stage ingest --stage
enrich --until-caught-up`` ingests and enriches them, and the topics are read back
with ``isolation.level=read_committed``. Alerts: the LVK user guide's mock superevent
MS181101ab (preliminary alert with its BAYESTAR multi-order map, FAR 9.11e-14 Hz, CBC;
and its retraction) and gwcelery's real Fermi GBM ground-position notice of trigger
745121685 (2024-08-24). No real coincident GW/GRB pair is bundled, so **the GRB
notice's ``trigger_time`` is edited here** (written to a temporary file, nothing else
changed) to put it inside, or just outside, MS181101ab's CBC window [-1, +5] s.

The expected joint FAR is computed here from RAVEN's formula, independently of
broker.enrich.coinc: the overlap integral of a multi-order map and a point is
``I = 4π ρ(pixel holding the point) / Σ ρ_i A_i`` (Ashton et al. 2018, eq. 8 with a
Dirac external localization), the temporal FAR ``FAR_gw · R_grb · (th − tl)`` with
ligo-raven's GRB rate 310 / yr (365-day year), the joint FAR their ratio.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import DATA, run_cli
from tests.integration.test_followup_e2e import read_all

pytestmark = pytest.mark.integration

GW = DATA / "igwn/userguide/MS181101ab-preliminary.json"
GW_RETRACTION = DATA / "igwn/userguide/MS181101ab-retraction.json"
GBM = DATA / "gcn/gwcelery-kafka/kafka_alert_fermi_ground.json"
COINC_ID = "gw-grb:igwn:MS181101ab+gcn:fermi:745121685"
GW_T0 = "2018-11-01T22:22:46.654"
GW_FAR_HZ = 9.11069936486e-14  # the alert's event.far
GRB_RATE_HZ = 310.0 / (365.0 * 86400.0)


@pytest.fixture()
def enrich_env(broker_env, fresh_db, tmp_path) -> dict[str, str]:
    """An archive of its own, the follow-up off (not under test here), 50MGC cross-matched."""
    env = dict(broker_env, MMA_BROKER_ARCHIVE__DATABASE_URL=fresh_db, MMA_BROKER_FOLLOWUP__ENABLED="false",
               MMA_BROKER_ENRICH__CATALOGS='["50MGC"]')
    run_cli(env, "catalog", "load", "50MGC", str(DATA / "catalogs/50MGC_catalog_short.fits"))
    return env


def grb_at(tmp_path: Path, t0: str) -> Path:
    """gwcelery's real GBM notice with its trigger_time edited to ``t0`` (the only change)."""
    obj = json.loads(GBM.read_text())
    obj["trigger_time"] = t0
    out = tmp_path / f"gbm_moved_{t0.replace(':', '')}.json"
    out.write_text(json.dumps(obj))
    return out


def run(env: dict[str, str], *files: Path):
    run_cli(env, "replay", *map(str, files))
    return run_cli(env, "run", "--stage", "ingest", "--stage", "enrich", "--until-caught-up", "--idle", "1")


def topic(env: dict[str, str], name: str) -> str:
    return env["MMA_BROKER_KAFKA__TOPIC_PREFIX"] + name


def records(env: dict[str, str], bootstrap: str, name: str) -> list[tuple[str, dict]]:
    """(key, JSON value) of every committed record of a topic (read_committed: the default)."""
    return [(m.key().decode(), json.loads(m.value())) for m in read_all(bootstrap, topic(env, name))]


def expected_joint_far(ra_deg: float, dec_deg: float, window_s: float) -> tuple[float, float, float]:
    """(I, temporal FAR, joint FAR) of MS181101ab's map and a point, from the formulas."""
    import numpy as np
    from astropy import units as u
    from astropy.io import fits
    from astropy_healpix import lonlat_to_healpix, uniq_to_level_ipix

    skymap = base64.b64decode(json.loads(GW.read_text())["event"]["skymap"])
    with fits.open(io.BytesIO(skymap)) as hdul:
        uniq = np.asarray(hdul[1].data["UNIQ"], dtype=np.int64)
        rho = np.asarray(hdul[1].data["PROBDENSITY"], dtype=np.float64)
    level, ipix = uniq_to_level_ipix(uniq)
    area = 4 * math.pi / (12 * 4.0 ** level)
    total = float(np.sum(rho * area))
    holding = None
    for lev in np.unique(level):
        pix = int(lonlat_to_healpix(ra_deg * u.deg, dec_deg * u.deg, 2 ** int(lev), order="nested"))
        hit = np.flatnonzero((level == lev) & (ipix == pix))
        if hit.size:
            holding = int(hit[0])
    assert holding is not None
    overlap = 4 * math.pi * rho[holding] / total
    temporal = GW_FAR_HZ * GRB_RATE_HZ * window_s
    return overlap, temporal, temporal / overlap


def test_gw_and_grb_in_window_give_one_coincidence_then_a_retraction_marks_it_and_replays_change_nothing(
        enrich_env, kafka_bootstrap, tmp_path):
    env = enrich_env
    grb = grb_at(tmp_path, "2018-11-01T22:22:48.654")  # edited: GW T0 + 2 s
    proc = run(env, GW, grb)
    assert "enrich: 2 event(s) enriched" in proc.stdout, proc.stdout[-2000:]
    coincs = records(env, kafka_bootstrap, "mma.coincidences")
    assert [k for k, _ in coincs] == [COINC_ID]
    c = coincs[0][1]
    assert c["kind"] == "gw-grb" and c["retracted"] is False and c["dt_s"] == pytest.approx(2.0)
    overlap, temporal, joint = expected_joint_far(90.56, -67.87, 6.0)  # the notice's position; [-1, +5] s
    assert c["overlap_integral"] == pytest.approx(overlap, rel=1e-9)
    assert c["temporal_far_hz"] == pytest.approx(temporal, rel=1e-12)
    assert c["joint_far_hz"] == pytest.approx(joint, rel=1e-9)
    assert {m["group"] for m in c["members"]} == {"igwn:MS181101ab", "gcn:fermi:745121685"}

    enriched = dict(records(env, kafka_bootstrap, "mma.events.enriched"))
    gw_doc, grb_doc = enriched["MS181101ab"], enriched["745121685"]
    assert gw_doc["enrichment"]["localization"]["kind"] == "skymap" and gw_doc["enrichment"]["error"] is None
    # whichever of the two was enriched second found the other (their partitions differ)
    assert gw_doc["enrichment"]["coincidences"] + grb_doc["enrichment"]["coincidences"] == [COINC_ID]
    xm = gw_doc["enrichment"]["crossmatch"]["50MGC"]
    assert xm["kind"] == "skymap" and xm["three_d"] and xm["n_inside"] > 0
    assert [m["searched_prob_vol"] for m in xm["matches"]] == sorted(m["searched_prob_vol"] for m in xm["matches"])

    run(env, GW_RETRACTION)
    coincs = records(env, kafka_bootstrap, "mma.coincidences")
    assert [k for k, _ in coincs] == [COINC_ID, COINC_ID]
    last = coincs[-1][1]
    assert last["retracted"] is True and last["retracted_by"].startswith("igwn:MS181101ab:retraction:")
    assert last["joint_far_hz"] == c["joint_far_hz"]

    before = {t: Counter(k for k, _ in records(env, kafka_bootstrap, t))
              for t in ("mma.events.enriched", "mma.coincidences")}
    for _ in range(2):  # upstream sends everything again, twice
        run(env, GW, grb, GW_RETRACTION)
    after = {t: Counter(k for k, _ in records(env, kafka_bootstrap, t))
             for t in ("mma.events.enriched", "mma.coincidences")}
    assert after == before
    assert before["mma.events.enriched"] == Counter({"MS181101ab": 2, "745121685": 1})
    # table coincidences (migration 0013): one row per version published, none more after the replays
    import sqlalchemy as sa

    engine = sa.create_engine(env["MMA_BROKER_ARCHIVE__DATABASE_URL"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, computed_from, retracted FROM coincidences "
                                        "ORDER BY created_at")).all()
    finally:
        engine.dispose()
    assert [(r.id, r.computed_from, r.retracted) for r in rows] == [
        (COINC_ID, c["computed_from"], False), (COINC_ID, last["computed_from"], True)]


@pytest.mark.parametrize("t0", ["2018-11-01T22:22:45.554", "2018-11-01T22:22:51.754"])
def test_grb_just_outside_the_window_gives_no_coincidence(enrich_env, kafka_bootstrap, tmp_path, t0):
    env = enrich_env
    run(env, GW, grb_at(tmp_path, t0))  # edited: GW T0 − 1.1 s or + 5.1 s
    assert records(env, kafka_bootstrap, "mma.coincidences") == []
    enriched = dict(records(env, kafka_bootstrap, "mma.events.enriched"))
    assert enriched["745121685"]["enrichment"]["coincidences"] == []
