"""INTEGRAL follow-up end to end on the real Kafka and PostgreSQL.

A real GRB notice that matches the default trigger rules (followup-rule filters) is replayed, ingested
(``mma-broker run``) and followed up (``mma-broker followup worker``, which runs
:func:`followup.worker.run_followup_stage`); then the same alert is replayed and both
stages run again. Exactly one result must be on ``mma.followup.results`` and in
``followup_results``: the replay gives the same deterministic request id, which the
worker finds done.

The bundled SPI-ACS light curve is GRB 230307A's, and tests/data holds no alert for
that burst, so the notices here (2022) have no light curve in the local source: the
result is an honest "no data" (data gap). The detection path is tested at the service
level in tests/unit/test_followup_service.py.
"""

from __future__ import annotations

import json

import pytest
from lxml import etree

from followup.bundled import bundled_data_dir

from tests.conftest import ROOT, read_to_end, run_cli

pytestmark = pytest.mark.integration

INTEGRAL_WAKEUP = ROOT / "tests/data/voevent/fink-mm/integral/voevent_number=18790.xml"
GUANO = ROOT / "tests/data/gcn/gcn-schema/gcn/notices/swift/bat"


@pytest.fixture()
def followup_env(broker_env) -> dict[str, str]:
    """broker_env plus a local light-curve/orbit source and an MMODA URL nobody listens on."""
    data = str(bundled_data_dir())
    return dict(
        broker_env,
        MMA_BROKER_FOLLOWUP__LIGHTCURVES__KIND="local",
        MMA_BROKER_FOLLOWUP__LIGHTCURVES__DIRECTORY=data,
        MMA_BROKER_FOLLOWUP__ORBIT_DIRECTORY=data,
        MMA_BROKER_FOLLOWUP__MMODA_URL="http://127.0.0.1:9/dispatch-data",
        MMA_BROKER_FOLLOWUP__RETRY_ATTEMPTS="1",
        MMA_BROKER_PUBLISH__ENABLED="false",  # publishing has its own tests (test_publish_e2e.py)
    )


def read_all(bootstrap: str, topic: str, settle_s: float = 0.0) -> list:
    """Every committed message of ``topic``, up to the end of each partition, then
    ``settle_s`` more for late records (:func:`tests.conftest.read_to_end`)."""
    return read_to_end(bootstrap, topic, settle_s=settle_s)


def _store(pg_url: str):
    import sqlalchemy as sa

    from followup.store import FollowupStore

    return FollowupStore(sa.create_engine(pg_url))


def _validate(doc: dict, name: str) -> None:
    import jsonschema

    from followup.messages import json_schema

    jsonschema.validate(doc, json_schema(name))


def test_replayed_grb_notice_gives_exactly_one_result(followup_env, kafka_bootstrap, fresh_db):
    pg_url = fresh_db  # an archive of its own: one that already holds the alert would not publish it at all
    followup_env = dict(followup_env, MMA_BROKER_ARCHIVE__DATABASE_URL=fresh_db)
    root = etree.parse(str(INTEGRAL_WAKEUP)).getroot()
    event_id = f"gcn:{root.get('ivorn')}"
    iso = root.find(".//WhereWhen//ISOTime").text
    prefix = followup_env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]

    ingested = []
    for _ in range(2):  # upstream sends the alert twice
        run_cli(followup_env, "replay", str(INTEGRAL_WAKEUP))
        ingested.append(run_cli(followup_env, "run", "--stage", "ingest", "--stage", "enrich", "--stage", "filters", "--until-caught-up",
                        "--idle", "1"))
        run_cli(followup_env, "followup", "worker", "--until-caught-up", "--idle", "1")
    assert "1 message(s) → 1 event(s) published" in ingested[0].stdout
    assert "1 message(s) → 0 event(s) published" in ingested[1].stdout  # archived already: not published again
    assert "1 duplicate(s) of archived events not published again" in ingested[1].stdout
    assert len(read_all(kafka_bootstrap, f"{prefix}mma.events")) == 1

    # the same request once more, by hand: the worker finds it done
    run_cli(followup_env, "followup", "run", event_id)
    proc = run_cli(followup_env, "followup", "worker", "--until-caught-up", "--idle", "1")
    assert "1 duplicate(s) skipped" in proc.stdout

    requests = read_all(kafka_bootstrap, f"{prefix}mma.followup.requests")
    assert len(requests) == 2  # one from the trigger rule, one by hand ...
    assert len({json.loads(m.value())["request_id"] for m in requests}) == 1  # ... the same request
    for m in requests:
        _validate(json.loads(m.value()), "followup_request.json")

    results = read_all(kafka_bootstrap, f"{prefix}mma.followup.results")
    assert len(results) == 1
    doc = json.loads(results[0].value())
    _validate(doc, "followup_result.json")
    assert results[0].key().decode() == root.find(".//What/Param[@name='TrigID']").get("value").lstrip("0")
    assert doc["event_id"] == event_id and doc["kind"] == "result"
    assert doc["t0"].startswith(iso[:19])
    # 2022-09-26 is inside the mission; the local source has no light curve then
    assert doc["status"] == "no_data"
    spi = doc["analyses"]["spiacs"]
    assert spi["kind"] == "data_gap" and "no spi_acs light curve" in spi["reason"] and iso[:10] in spi["reason"]
    assert doc["analyses"]["ibis_visibility"]["kind"] == "data_gap"  # the orbit file is of revolution 789
    assert "no data" in doc["summary_text"]
    assert [s["step"] for s in doc["lineage"]][:3] == ["integral.coverage", "attitude.pointing", "lightcurve.fetch"]

    store = _store(pg_url)
    rows = [r for r in store.list(limit=100) if r.event_id == event_id]
    assert len(rows) == 1 and rows[0].published and rows[0].document["request_id"] == doc["request_id"]


def test_retraction_withdraws_the_followups(followup_env, kafka_bootstrap, pg_url):
    notices = [GUANO / "Guano.example.json", GUANO / "guano.loc_arc_min.example.json",
               GUANO / "Guano.Retraction.example.json"]
    trigger = json.loads(notices[-1].read_text())["id"][0]  # read without our decoders
    prefix = followup_env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]
    run_cli(followup_env, "replay", *map(str, notices))
    run_cli(followup_env, "run", "--stage", "ingest", "--stage", "enrich", "--stage", "filters", "--until-caught-up",
                        "--idle", "1")
    run_cli(followup_env, "followup", "worker", "--until-caught-up", "--idle", "1")

    docs = [json.loads(m.value()) for m in read_all(kafka_bootstrap, f"{prefix}mma.followup.results")]
    for d in docs:
        _validate(d, "followup_result.json")
    withdrawals = [d for d in docs if d["kind"] == "withdrawal"]
    results = [d for d in docs if d["kind"] == "result"]
    assert len(withdrawals) == 1
    upstream = withdrawals[0]["upstream_id"]
    assert upstream == trigger
    assert {d["upstream_id"] for d in results} <= {upstream}
    assert withdrawals[0]["alert_type"] == "retraction"

    # one follow-up per trigger: the two revisions made two requests; the first one
    # analysed is the trigger's result, the other adds nothing (2022-12-31 has no
    # SPI-ACS curve in the bundled data, whatever the position) or came after the
    # retraction: a "skipped" row, never published
    rows = _store(pg_url).list(upstream_id=upstream, limit=100, kinds=None)
    analysed = [r for r in rows if r.kind == "result"]
    skipped = [r for r in rows if r.kind == "skipped"]
    assert len(analysed) == len(results) <= 1 and len(analysed) + len(skipped) == 2
    assert {r.status for r in skipped} <= {"unchanged", "retracted"}
    # every result is withdrawn, whichever order ingest delivered the three notices in
    assert all(r.withdrawn and r.withdrawn_by == withdrawals[0]["event_id"] for r in analysed)


def test_cli_run_publishes_and_runs_locally(followup_env, kafka_bootstrap):
    root = etree.parse(str(INTEGRAL_WAKEUP)).getroot()
    event_id = f"gcn:{root.get('ivorn')}"
    prefix = followup_env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]
    run_cli(followup_env, "replay", str(INTEGRAL_WAKEUP))
    # archived and enriched, not filtered: the only request is the one made by hand
    run_cli(followup_env, "run", "--stage", "ingest", "--stage", "enrich", "--until-caught-up", "--idle", "1")

    proc = run_cli(followup_env, "followup", "run", event_id, "--analysis", "spiacs")
    requests = read_all(kafka_bootstrap, f"{prefix}mma.followup.requests")
    assert len(requests) == 1
    req = json.loads(requests[0].value())
    assert req["request_id"] in proc.stdout and req["analyses"] == ["spiacs"] and req["requested_by"] == "cli"

    local = run_cli(followup_env, "followup", "run", event_id, "--local", "--json")
    doc = json.loads(local.stdout)
    assert doc["status"] == "no_data" and doc["event_id"] == event_id
    again = run_cli(followup_env, "followup", "run", event_id, "--local", "--plot", "lc.png")
    assert "from the cache" in again.stdout and "no data" in again.stdout
    # no light curve, no plot: it says so instead of keeping silent
    assert "no plot written to lc.png: no SPI-ACS light curve was analysed (no_data)" in again.stderr
    refused = run_cli(followup_env, "followup", "run", event_id, "--plot", "lc.png", check=False)
    assert refused.returncode == 1 and "--plot needs --local" in refused.stderr
    bad = run_cli(followup_env, "followup", "run", "gcn:no-such-event", check=False)
    # one line on stderr
    assert bad.returncode == 1 and "no event" in bad.stderr and bad.stderr.count("mma-broker:") == 1


GRB230307A = ["--t0", "2023-03-07T15:44:06.67", "--name", "GRB 230307A",  # GBM trigger time, GCN Circ. 33405
              "--ra", "60.85935", "--dec", "-75.3788", "--error-deg", "0.00094"]  # Swift-XRT, GCN Circ. 33429


def test_adhoc_request_show_and_plot_from_the_archive(followup_env, kafka_bootstrap, tmp_path):
    prefix = followup_env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]
    asked = run_cli(followup_env, "followup", "request", *GRB230307A, "--analysis", "spiacs", "--json")
    rid = json.loads(asked.stdout)["request_id"]
    # a sky map instead of a position: stored in the archive, referred to by the request
    skymap = ROOT / "tests/data/igwn/userguide/bayestar.multiorder.fits"
    mapped = json.loads(run_cli(followup_env, "followup", "request", "--t0", "2023-03-07T15:44:06.67", "--name",
                                "GRB 230307A (sky map test)", "--skymap", str(skymap), "--analysis", "spiacs",
                                "--json").stdout)["request_id"]
    requests = [json.loads(m.value()) for m in read_all(kafka_bootstrap, f"{prefix}mma.followup.requests")]
    assert {r["request_id"] for r in requests} == {rid, mapped}
    for r in requests:
        _validate(r, "followup_request.json")
        assert r["event"]["source"] == "user" and r["requested_by"] == "cli"
    by_id = {r["request_id"]: r for r in requests}
    assert by_id[mapped]["event"]["properties"]["skymap"]["ref"].startswith("mma-broker://artifact/sha256/")
    m = read_all(kafka_bootstrap, f"{prefix}mma.followup.requests")[0]
    assert {"_id", "_format", "_sender"} <= {k for k, _ in m.headers()}  # hop-client's headers

    run_cli(followup_env, "followup", "worker", "--until-caught-up", "--idle", "1")
    docs = {json.loads(m.value())["request_id"]: json.loads(m.value())
            for m in read_all(kafka_bootstrap, f"{prefix}mma.followup.results")}
    for d in docs.values():
        _validate(d, "followup_result.json")
    assert docs[rid]["status"] == "done" and docs[rid]["analyses"]["spiacs"]["detected"] is True
    assert docs[mapped]["localization"]["type"] == "healpix" and docs[rid]["localization"]["type"] == "point"
    assert docs[rid]["plot"]["ref"] == f"mma-broker://artifact/sha256/{docs[rid]['plot']['sha256']}"

    png = tmp_path / "grb.png"
    shown = run_cli(followup_env, "followup", "show", rid[:10], "--plot", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size == docs[rid]["plot"]["bytes"]
    assert docs[rid]["summary_text"].rstrip() in shown.stdout and f"plot written to {png}" in shown.stdout
    assert json.loads(run_cli(followup_env, "followup", "show", rid, "--json").stdout)["request_id"] == rid
    missing = run_cli(followup_env, "followup", "show", "0123456789abcdef", check=False)
    assert missing.returncode == 1 and missing.stderr.count("mma-broker: error:") == 1
    assert "no follow-up result" in missing.stderr
