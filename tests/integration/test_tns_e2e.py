"""TNS end to end, as a user runs it: real Kafka, PostgreSQL and a local TNS-protocol server.

Real alerts: the ZTF alert packets of 2020-02-02 (kowalski) — among them the new
sources ZTF20aakyoez and ZTF20aalseuk, 3.3 deg apart, and ZTF20aaelulu (SN 2020oi, 5.0
arcsec from the nucleus of M100 = NGC 4321) — and two real GRB notices *moved* next to
them (no real GRB or GW of the bundle has a ZTF candidate in its region after its T0;
tests/unit/test_tns_report.py moves the same GUANO notice):

* the Swift BAT-GUANO notice of trigger 694215995 (``guano.loc_arc_min``), every time
  shifted so that T0 is 12 h before ZTF20aakyoez's first detection, its position the
  midpoint of the two candidates and its 90 % error radius 2 deg instead of 0.5 deg, so
  that its circle holds both; its real retraction notice shifted alike;
* the Fermi GBM final-position notice of bn240812094 (1 deg at 68 %), T0 12 h before
  ZTF20aaelulu's first detection, 0.3 deg from it.

``[enrich] optical_days`` is 5 (the alerts come 3.6 and 4.6 days after those T0s) and
the 50MGC galaxy catalog is loaded, as in the quickstart. The triggers are ingested and
enriched first (a candidate arriving after its trigger is the optical filter's case),
then the night's ZTF alerts run through every stage:

1. three TNS AT reports wait for approval (one per candidate), nothing reaches TNS;
   ZTF20aaelulu's names its host NGC4321 with the 50MGC heliocentric redshift, the
   others have no host;
2. ``outbox approve`` of ZTF20aakyoez's and ZTF20aaelulu's; the ``publish`` stage posts
   each once (form ``data`` = the outbox payload, the bot's ``tns_marker`` User-Agent),
   polls the reply: pending (404), then accepted with the object name, or — for
   ZTF20aaelulu, which this TNS refuses — rejected, the feedback kept in the receipt;
3. the GUANO retraction: the sent TNS report stands (TNS has no retraction) and the
   outbox says so on it (``outbox show``); the unsent ZTF20aalseuk report is withdrawn;
   each HERMES message of the group already sent gets a HERMES retraction; nothing
   more reaches TNS.

Every HERMES message of the run is read back with hop-client's own consumer and
validates against the HERMES schema. Expected values come from the input files
(fastavro, astropy), the TNS server's records and the outbox; the builders are not
called here.
"""

from __future__ import annotations

import json
from datetime import timedelta

import fastavro
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.time import Time

from broker.archive import Archive, PostgresRawStore
from broker.enrich.catalogs import read_catalog, store_catalog
from broker.sinks.outbox import Outbox
from tests.conftest import DATA, run_cli
from tests.integration.test_publish_e2e import env, hermes_validator, hop_read, smtp  # noqa: F401 - fixtures
from tests.tnsserver import TnsServer

pytestmark = pytest.mark.integration

GUANO = DATA / "gcn/gcn-schema/gcn/notices/swift/bat"
GBM = DATA / "gcn/gcn-schema/gcn/notices/fermi/gbm/trigger.final.example.json"
ZTF_DIR = DATA / "ztf/kowalski/20200202"
KYOEZ, LSEUK = "1127561444715015009.avro", "1127561442115015003.avro"  # ZTF20aakyoez, ZTF20aalseuk
ELULU = "1105522281015015000.avro"  # ZTF20aaelulu = SN 2020oi in M100
G1 = "gcn:swift:694215995"  # the GUANO trigger's event group
BOT = {"api_key": "e2e-test-key-0123", "bot_id": 424242, "bot_name": "mma_broker_e2e_bot"}
REFUSED = "The report was refused by this test's TNS (its model of a rejection)"
IDLE = "1.0"
C_KM_S = 299_792.458


def _alert(name: str) -> dict:
    with open(ZTF_DIR / name, "rb") as fh:
        return next(fastavro.reader(fh))


def _first_detection(alert: dict) -> Time:
    dets = [p["jd"] for p in alert["prv_candidates"] or [] if p["candid"] is not None] + [alert["candidate"]["jd"]]
    return Time(min(dets), format="jd", scale="utc")


def _shifted(doc: dict, t0: Time, ra: float, dec: float) -> dict:
    """The notice with every time moved by the same amount (T0 → ``t0``) and its position
    moved to (ra, dec) when it has one."""
    out = dict(doc)
    dt = t0.to_datetime() - Time(doc["trigger_time"].rstrip("Z"), scale="utc").to_datetime()
    for key in ("trigger_time", "alert_datetime"):
        if key in out:
            t = Time(out[key].rstrip("Z"), scale="utc").to_datetime() + dt
            out[key] = t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if "ra" in out:
        out.update(ra=ra, dec=dec)
    return out


@pytest.fixture()
def tns():
    with TnsServer(**BOT, pending_polls=1) as server:
        yield server


def _outbox(ob: Outbox) -> dict[str, dict]:
    """The outbox by key, as ``mma-broker outbox list --json`` gives it (the same call)."""
    return {e.key: e.to_json() for e in ob.list(limit=1000)}


def test_tns_reports_approved_accepted_rejected_and_standing_after_a_retraction(env, tns, tmp_path, request,
                                                                                kafka_bootstrap):
    env = dict(env, MMA_BROKER_PUBLISH__TNS__ENABLED="true", MMA_BROKER_PUBLISH__TNS__BASE_URL=tns.base_url,
               MMA_BROKER_PUBLISH__TNS__API_KEY=BOT["api_key"], MMA_BROKER_PUBLISH__TNS__BOT_ID=str(BOT["bot_id"]),
               MMA_BROKER_PUBLISH__TNS__BOT_NAME=BOT["bot_name"], MMA_BROKER_PUBLISH__TNS__REPORTING_GROUP="82",
               MMA_BROKER_PUBLISH__TNS__REPORTER="A. Person (Inst.) on behalf of the mma-broker e2e test",
               MMA_BROKER_PUBLISH__TNS__POLL_INTERVAL_S="0.2", MMA_BROKER_PUBLISH__POLL_INTERVAL_S="0.2",
               MMA_BROKER_ENRICH__CATALOGS='["50MGC"]', MMA_BROKER_ENRICH__COINCIDENCES__OPTICAL_DAYS="5",
               # the INTEGRAL follow-up of the two triggers is not what this test is about
               # (test_publish_e2e: its HERMES messages, GCN notices and their retraction)
               MMA_BROKER_FOLLOWUP__ENABLED="false")
    kyoez, lseuk, elulu = _alert(KYOEZ), _alert(LSEUK), _alert(ELULU)
    a, b = (SkyCoord(x["candidate"]["ra"], x["candidate"]["dec"], unit="deg") for x in (kyoez, lseuk))
    mid = a.directional_offset_by(a.position_angle(b), a.separation(b) / 2)
    assert a.separation(b).deg == pytest.approx(3.3, abs=0.05) and mid.separation(a).deg < 2.0
    t1 = _first_detection(kyoez) - timedelta(hours=12)
    guano = _shifted(json.loads((GUANO / "guano.loc_arc_min.example.json").read_text()), t1, mid.ra.deg,
                     mid.dec.deg)
    assert (guano["ra_dec_error"], guano["containment_probability"]) == (0.5, 0.9)
    guano["ra_dec_error"] = 2.0
    c2 = elulu["candidate"]
    gbm = _shifted(json.loads(GBM.read_text()), _first_detection(elulu) - timedelta(hours=12),
                   c2["ra"], c2["dec"] + 0.3)
    retraction = _shifted(json.loads((GUANO / "Guano.Retraction.example.json").read_text()), t1, 0.0, 0.0)
    files = {}
    for name, doc in (("guano", guano), ("gbm", gbm), ("retraction", retraction)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(doc))
    tns.state.refuse["ZTF20aaelulu"] = REFUSED

    # ---- the triggers, then every ZTF alert of the night through all the stages; the
    # catalog stored as `mma-broker catalog load 50MGC FILE` stores it (in-process: faster)
    archive = Archive(env["MMA_BROKER_ARCHIVE__DATABASE_URL"], PostgresRawStore())
    request.addfinalizer(archive.close)
    archive.migrate()
    store_catalog(archive.engine, read_catalog(DATA / "catalogs/50MGC_catalog_short.fits", "50MGC"))
    box = Outbox(archive.engine)
    run_cli(env, "replay", str(files["guano"]), str(files["gbm"]))
    run_cli(env, "run", "--stage", "ingest", "--stage", "enrich", "--until-caught-up", "--idle", IDLE)
    run_cli(env, "replay", str(ZTF_DIR))
    run_cli(env, "run", "--until-caught-up", "--idle", IDLE)

    ob = _outbox(box)
    tns_keys = sorted(k for k in ob if k.startswith("tns:"))
    reports = {ob[k]["payload"]["at_report"]["0"]["internal_name"]: ob[k] for k in tns_keys}
    assert sorted(reports) == ["ZTF20aaelulu", "ZTF20aakyoez", "ZTF20aalseuk"] and len(tns_keys) == 3
    assert {e["state"] for e in reports.values()} == {"pending_approval"}
    assert tns.state.requests == []  # approval first
    sent_key, unsent_key, host_key = (reports[n]["key"] for n in ("ZTF20aakyoez", "ZTF20aalseuk", "ZTF20aaelulu"))
    assert ob[sent_key]["group_key"] == f"grb-optical:{G1}+ztf:ZTF20aakyoez"
    assert ob[unsent_key]["group_key"] == f"grb-optical:{G1}+ztf:ZTF20aalseuk"
    rep = {k: ob[k]["payload"]["at_report"]["0"] for k in tns_keys}
    assert rep[sent_key]["discovery_datetime"].startswith(
        _first_detection(kyoez).to_datetime().strftime("%Y-%m-%d %H:%M"))
    assert len(rep[sent_key]["photometry"]["photometry_group"]) == 17  # its detections in the alert

    # the host galaxy from the cross-match: 50MGC's NGC4321 (its v_h / c); none for the others
    mgc = Table.read(DATA / "catalogs/50MGC_catalog_short.fits")
    row = int(np.flatnonzero(np.asarray(mgc["objname"]).astype(str) == "NGC4321")[0])
    host = rep[host_key]
    assert host["host_name"] == "NGC4321"
    assert host["host_redshift"] == pytest.approx(float(mgc["v_h"][row]) / C_KM_S, abs=1e-6)
    sep = SkyCoord(c2["ra"], c2["dec"], unit="deg").separation(
        SkyCoord(float(mgc["ra"][row]), float(mgc["dec"][row]), unit="deg")).arcsec
    assert f"Host galaxy NGC4321 (50MGC row {row}): {sep:.1f} arcsec" in host["remarks"]
    for k in (sent_key, unsent_key):
        assert "host_name" not in rep[k] and "host_redshift" not in rep[k]
        assert "Swift trigger 694215995" in rep[k]["remarks"]
    assert "Fermi trigger 745121685" in host["remarks"]

    # ---- approve two reports; the publish stage sends them once and polls the replies
    for k in (sent_key, host_key):  # what `mma-broker outbox approve ID` calls
        box.approve(ob[k]["id"], "E2E Tester")
    run_cli(env, "run", "--stage", "publish", "--until-caught-up", "--idle", IDLE)
    posted = [r for r in tns.state.requests if r.path.endswith("/bulk-report")]
    assert len(posted) == 2 and tns.state.reports_received() == 2
    for r in posted:
        assert r.headers["User-Agent"] == ('tns_marker{"tns_id": 424242, "type": "bot", '
                                           '"name": "mma_broker_e2e_bot"}')
        assert r.form["api_key"] == BOT["api_key"]
    assert sorted(json.dumps(json.loads(r.form["data"]), sort_keys=True) for r in posted) == \
        sorted(json.dumps(ob[k]["payload"], sort_keys=True) for k in (sent_key, host_key))
    replies = [r for r in tns.state.requests if r.path.endswith("/bulk-report-reply")]
    assert len(replies) >= 4  # each: pending (404) once, then the answer
    ob = _outbox(box)
    sent = ob[sent_key]
    assert sent["state"] == "sent" and sent["receipt"]["status"] == "accepted"
    assert sent["receipt"]["object_name"] == tns.state.names["ZTF20aakyoez"]
    assert sent["receipt"]["object_name"].startswith("2020")
    refused = ob[host_key]
    assert refused["state"] == "failed" and refused["receipt"]["status"] == "rejected"
    [fb] = refused["receipt"]["feedback"]["at_report"]
    assert fb["0"] == [{"internal_name": {"value": "ZTF20aaelulu", "message": REFUSED, "message_id": 400}}]
    assert REFUSED in refused["last_error"]
    assert ob[unsent_key]["state"] == "pending_approval"

    # ---- the GUANO trigger is retracted: the sent report stands, the unsent one is withdrawn
    run_cli(env, "replay", str(files["retraction"]))
    run_cli(env, "run", "--until-caught-up", "--idle", IDLE)
    ob = _outbox(box)
    assert ob[sent_key]["state"] == "sent" and ob[sent_key]["receipt"]["status"] == "accepted"
    assert "TNS has no retraction: the report stands" in ob[sent_key]["decision"]
    assert sent["receipt"]["object_name"] in ob[sent_key]["decision"]
    shown = run_cli(env, "outbox", "show", str(ob[sent_key]["id"])).stdout
    assert "TNS has no retraction: the report stands" in shown and "object_name" in shown
    assert ob[unsent_key]["state"] == "withdrawn" and ob[unsent_key]["decision"] == "source event retracted"
    assert ob[host_key]["state"] == "failed"  # another trigger's: untouched
    assert tns.state.reports_received() == 2

    # ---- every HERMES message: read with hop's own consumer, schema-valid, each key once
    hermes = hop_read(kafka_bootstrap, env["MMA_BROKER_PUBLISH__HERMES__TOPIC"])
    keys = [h["mma_outbox_key"].decode() for _, h in hermes]
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted(k for k, e in ob.items() if e["channel"] == "hermes" and e["state"] == "sent")
    validator = hermes_validator()
    for m, _ in hermes:
        assert not list(validator.iter_errors(m)), [e.message for e in validator.iter_errors(m)]
    optical = {k for k in keys if k.startswith("hermes:optical:")}
    assert len(optical) == 3
    retracted = {k for k in keys if k.startswith("hermes:retraction:hermes:optical:")}
    assert {k.removeprefix("hermes:retraction:") for k in retracted} == {
        k for k in optical if ob[k]["group_key"].startswith(f"grb-optical:{G1}+")}
    assert len(retracted) == 2
    for m, h in hermes:
        if h["mma_outbox_key"].decode() in retracted:
            assert m["title"].startswith("RETRACTION: ")
