"""Publishing end to end, as a user runs it: real Kafka, PostgreSQL and a real SMTP server.

The quickstart's inputs (deploy/quickstart.sh): its two ``mma-broker followup request``
(GRB 230307A and GRB 250702D, the published GCN values) and every bundled real alert of
``deploy/demo-alerts.txt`` — but the Swift BAT-GUANO trigger 694215995's later notices
(its two localization updates and its retraction, and gwcelery's fixture that reuses its
id), so that the retraction can come after its messages went out — then ``mma-broker run --until-caught-up``: the follow-up
worker analyses, the ``reports`` stage writes the outbox, the ``publish`` stage sends.
Checked on the far side of each channel, not in our own code (the issue's check: "every
HERMES message the quickstart publishes validates against the schema and is read back
with hop-client's own consumer; every GCN notice validates against the vendored GCN
schema"):

* every HERMES message arrives once on the test's own ``hermes.test`` topic (one per
  ``sent`` outbox entry), validates against ``broker/schemas/hermes/hermes_message.json``
  (jsonschema) and is read back with hop-client's own consumer (``hop.io.Stream``);
* every GCN notice arrives once on the notice topic (one per ``sent`` entry) and
  validates against the vendored GCN unified schema (jsonschema + referencing, registry
  built here from the files);
* the GCN Circular drafts wait in ``pending_approval`` and nothing reaches the SMTP
  server (aiosmtpd on a free port) until ``mma-broker outbox approve ID``; then the
  e-mail arrives once with the draft's subject and body;
* the retraction of the GUANO trigger (Guano.Retraction.example.json, replayed after the
  first run) withdraws that group's pending circular draft and publishes a HERMES
  retraction message citing the message already sent by its hop UUID, and a GCN notice
  with ``alert_type: retraction``; this second ``run`` sends none of the GRB's messages
  (all sent before) again.

Expected values come from the input files, the result topic and the outbox as shown by
the CLI, read with json; the builders are not called here. The quickstart publishes no
coincidence or optical-candidate message (no real coincident pair is bundled): the TNS
and optical HERMES path is tests/integration/test_tns_e2e.py, on real notices moved next
to real ZTF candidates.
"""

from __future__ import annotations

import email
import json
import uuid
from email import policy

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from followup.bundled import bundled_data_dir

from broker.replay import read_manifest
from tests.conftest import ROOT, run_cli, smtp_capture
from tests.integration.test_followup_e2e import GRB230307A, GUANO, read_all

pytestmark = pytest.mark.integration

SCHEMAS = ROOT / "broker" / "schemas"
AUTHORS = "A. Person (Inst.), B. Person (Inst.) report on behalf of the INTEGRAL SPI-ACS team:"
FROM, TO = "integral@example.org", "circulars@example.org"
IDLE = "1.5"  # s without news before a run stops (default 3 s)
GRB250702D = ("--name", "GRB 250702D", "--t0", "2025-07-02T13:09:02.03", "--ra", "285.820", "--dec", "-4.18",
              "--error-deg", "6.7")  # the quickstart's second request: after INTEGRAL's end, "no data"
LATER = (GUANO / "Guano.Retraction.example.json", GUANO / "guano.loc_arc_min.example.json",
         GUANO / "guano.loc_map.example.json", ROOT / "tests/data/gcn/gwcelery-kafka/kafka_alert_swift_targeted.json")
"""The GUANO trigger's notices left out of the first run; the last, gwcelery's test
fixture of a targeted search, reuses that trigger id (694215995) for a 2022-10-04 event."""


def quickstart_alerts() -> list[str]:
    """The files of deploy/demo-alerts.txt, but :data:`LATER`."""
    later = {p.resolve() for p in LATER}
    files = [p for p in read_manifest(ROOT / "deploy" / "demo-alerts.txt") if p.resolve() not in later]
    assert len(files) > 100 and (GUANO / "Guano.example.json").resolve() in {p.resolve() for p in files}
    return [str(p) for p in files]


@pytest.fixture()
def smtp():
    """A real SMTP server (aiosmtpd) on a free local port; ``received``: the envelopes."""
    with smtp_capture() as server:
        yield server


@pytest.fixture()
def env(broker_env, fresh_db, smtp):
    """broker_env on a database of its own (the outbox is counted exactly), the bundled
    SPI-ACS data as the local light-curve source, and [publish] pointing at this test's
    HERMES topic (not prefixed by [kafka] topic_prefix, so it is named here) and SMTP server."""
    prefix = broker_env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]
    hermes_topic = f"{prefix}hermes.test"  # under the prefix: broker_env deletes it afterwards
    data = str(bundled_data_dir())
    return dict(
        broker_env,
        MMA_BROKER_ARCHIVE__DATABASE_URL=fresh_db,
        MMA_BROKER_FOLLOWUP__LIGHTCURVES__KIND="local",
        MMA_BROKER_FOLLOWUP__LIGHTCURVES__DIRECTORY=data,
        MMA_BROKER_FOLLOWUP__ORBIT_DIRECTORY=data,
        MMA_BROKER_FOLLOWUP__MMODA_URL="http://127.0.0.1:9/dispatch-data",
        MMA_BROKER_FOLLOWUP__RETRY_ATTEMPTS="1",
        MMA_BROKER_PUBLISH__HERMES__TOPIC=hermes_topic,
        MMA_BROKER_PUBLISH__HERMES__TEST_TOPICS=json.dumps([hermes_topic]),
        MMA_BROKER_PUBLISH__HERMES__SUBMITTER="mma-broker e2e test",
        MMA_BROKER_PUBLISH__HERMES__AUTHORS=AUTHORS,
        MMA_BROKER_PUBLISH__GCN_CIRCULAR__SMTP_HOST="127.0.0.1",
        MMA_BROKER_PUBLISH__GCN_CIRCULAR__SMTP_PORT=str(smtp.port),
        MMA_BROKER_PUBLISH__GCN_CIRCULAR__FROM_ADDRESS=FROM,
        MMA_BROKER_PUBLISH__GCN_CIRCULAR__TO=json.dumps([TO]),
        MMA_BROKER_PUBLISH__GCN_CIRCULAR__AUTHORS=AUTHORS,
        MMA_BROKER_PUBLISH__GCN_CIRCULAR__TIMEOUT_S="10",
    )


def hop_read(bootstrap: str, topic: str) -> list[tuple[dict, dict]]:
    """Every message of ``topic`` read with hop-client's own consumer: (content, headers)."""
    from hop import io as hop_io
    from hop.models import JSONBlob

    stream = hop_io.Stream(auth=False, start_at=hop_io.StartPosition.EARLIEST, until_eos=True)
    out = []
    with stream.open(f"kafka://{bootstrap}/{topic}", "r", group_id=f"hop-{uuid.uuid4().hex[:8]}") as s:
        for blob, meta in s.read(metadata=True):
            assert isinstance(blob, JSONBlob)
            out.append((blob.content, dict(meta.headers)))
    return out


def hermes_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / "hermes" / "hermes_message.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def gcn_validator(schema_id: str) -> jsonschema.Draft202012Validator:
    """The vendored GCN schemas, every file registered under its ``$id`` (offline)."""
    docs = [json.loads(p.read_text()) for p in sorted((SCHEMAS / "gcn").rglob("*.schema.json"))]
    registry = Registry().with_resources(
        (d["$id"], Resource.from_contents(d, default_specification=DRAFT202012)) for d in docs)
    return jsonschema.Draft202012Validator(registry.contents(schema_id), registry=registry)


def outbox(env) -> dict[str, dict]:
    """The outbox as ``mma-broker outbox list --json`` shows it, by key."""
    proc = run_cli(env, "outbox", "list", "--json", "--limit", "1000")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return {r["key"]: r for r in rows}


def published(env, bootstrap: str, ob: dict[str, dict]) -> tuple[list[tuple[dict, dict]], list[dict]]:
    """Every HERMES message of the run (read with hop's own consumer) and every GCN notice,
    each checked: valid against its schema, one per ``sent`` outbox entry of its channel,
    equal to that entry's payload (HERMES: its receipt names the hop UUID and topic)."""
    hermes_topic = env["MMA_BROKER_PUBLISH__HERMES__TOPIC"]
    hermes = hop_read(bootstrap, hermes_topic)
    keys = [h["mma_outbox_key"].decode() for _, h in hermes]
    assert sorted(keys) == sorted(k for k, e in ob.items() if e["channel"] == "hermes" and e["state"] == "sent")
    validator = hermes_validator()
    for m, h in hermes:
        k = h["mma_outbox_key"].decode()
        errors = [e.message for e in validator.iter_errors(m)]
        assert not errors, (k, errors)
        assert m["topic"] == hermes_topic and m["submitter"] == "mma-broker e2e test" and m["authors"] == AUTHORS
        assert ob[k]["payload"] == m  # the message as the outbox shows it, and its receipt
        assert ob[k]["receipt"]["hop_uuid"] == str(uuid.UUID(bytes=h["_id"]))
        assert ob[k]["receipt"]["topic"] == hermes_topic
    notice_topic = env["MMA_BROKER_KAFKA__TOPIC_PREFIX"] + "mma.gcn.notices.integral"
    notices = [json.loads(m.value()) for m in read_all(bootstrap, notice_topic, settle_s=1.0)]
    sent = {e["payload"]["id"]: e for e in ob.values() if e["channel"] == "gcn-notice" and e["state"] == "sent"}
    assert sorted(n["id"] for n in notices) == sorted(sent)
    for n in notices:
        errors = [e.message for e in gcn_validator(n["$schema"]).iter_errors(n)]
        assert not errors, (n["id"], errors)
        assert sent[n["id"]]["payload"] == n
    return hermes, notices


def test_published_approved_retracted_each_exactly_once(env, smtp, kafka_bootstrap):
    prefix = env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]
    guano = json.loads((GUANO / "Guano.example.json").read_text())
    guano_trigger = str(guano["id"][0])

    # ---- run 1: the quickstart's requests and alerts, everything automatic
    rid = json.loads(run_cli(env, "followup", "request", *GRB230307A, "--json").stdout)["request_id"]
    late_rid = json.loads(run_cli(env, "followup", "request", *GRB250702D, "--json").stdout)["request_id"]
    run_cli(env, "replay", *quickstart_alerts())
    run_cli(env, "run", "--until-caught-up", "--idle", IDLE, timeout=600)

    docs = [json.loads(m.value()) for m in read_all(kafka_bootstrap, f"{prefix}mma.followup.results", settle_s=1.0)]
    results = {d["request_id"]: d for d in docs if d["kind"] == "result"}
    grb = results[rid]
    assert grb["status"] == "done" and grb["analyses"]["spiacs"]["detected"] is True
    assert results[late_rid]["status"] == "no_data"
    [guano_rid] = [r for r, d in results.items() if d.get("upstream_id") == guano_trigger]

    # every HERMES message and GCN notice: once per sent entry, valid, HERMES read with hop's consumer
    ob = outbox(env)
    assert not [k for k, e in ob.items() if e["state"] in ("queued", "sending", "failed", "unknown")]
    hermes, notices = published(env, kafka_bootstrap, ob)
    by_key = {h["mma_outbox_key"].decode(): m for m, h in hermes}
    hop_ids = {h["mma_outbox_key"].decode(): uuid.UUID(bytes=h["_id"]) for _, h in hermes}
    assert {f"hermes:followup:{r}" for r in (rid, late_rid, guano_rid)} <= set(by_key)
    assert len(by_key) > 3 and len(notices) > 3  # the quickstart's other triggers too
    print(f"publish e2e, run 1: {len(by_key)} HERMES messages, {len(notices)} GCN notices checked")
    msg = by_key[f"hermes:followup:{rid}"]
    assert msg["data"]["event_id"] == "GRB 230307A" and msg["title"].startswith("GRB 230307A:")
    assert any(rid in r.get("citation", "") for r in msg["data"]["references"])
    assert by_key[f"hermes:followup:{guano_rid}"]["data"]["event_id"] == guano_trigger
    [target] = msg["data"]["targets"]
    assert (target["ra"], target["dec"]) == (60.85935, -75.3788)

    # GCN notices: the GRB's and GUANO's
    by_id = {n["id"]: n for n in notices}
    assert (by_id[rid]["ref_ID"], by_id[guano_rid]["ref_ID"]) == ("GRB 230307A", guano_trigger)
    assert by_id[rid]["alert_type"] == by_id[guano_rid]["alert_type"] == "initial"
    n = by_id[rid]
    assert n["trigger_time"].startswith("2023-03-07T15:44:06.67") and n["detection"] is True

    # GCN Circulars: drafted, waiting for a person; nothing reached SMTP
    assert {ob[f"gcn-notice:followup:{r}"]["state"] for r in (rid, guano_rid)} == {"sent"}
    assert {e["state"] for e in ob.values() if e["channel"] == "gcn-circular"} <= {"pending_approval", "withdrawn"}
    circ, guano_circ = ob[f"gcn-circular:followup:{rid}"], ob[f"gcn-circular:followup:{guano_rid}"]
    assert circ["state"] == guano_circ["state"] == "pending_approval"
    assert circ["payload"]["subject"].startswith("GRB 230307A:")
    assert smtp.received == []

    # ---- approve the GRB circular; publish only
    run_cli(env, "outbox", "approve", str(circ["id"]), "--by", "E2E Tester")
    run_cli(env, "run", "--stage", "publish", "--until-caught-up", "--idle", IDLE)
    assert len(smtp.received) == 1
    envelope = smtp.received[0]
    assert envelope.mail_from == FROM and envelope.rcpt_tos == [TO]
    mail = email.message_from_bytes(envelope.original_content, policy=policy.default)
    assert mail["Subject"] == circ["payload"]["subject"]
    assert mail.get_content().replace("\r\n", "\n") == circ["payload"]["body"]
    assert mail.get_content().startswith(AUTHORS)
    assert mail["Message-ID"] == outbox(env)[circ["key"]]["receipt"]["message_id"]

    # ---- run 2: the GUANO trigger is retracted; the GRB's messages, all sent, go nowhere again
    run_cli(env, "replay", str(GUANO / "Guano.Retraction.example.json"))
    run_cli(env, "run", "--until-caught-up", "--idle", IDLE)
    withdrawal = next(d for d in (json.loads(m.value()) for m in read_all(
        kafka_bootstrap, f"{prefix}mma.followup.results", settle_s=1.0))
        if d["kind"] == "withdrawal" and d["upstream_id"] == guano_trigger)
    assert withdrawal["upstream_id"] == guano_trigger and withdrawal["withdrawn_request_ids"] == [guano_rid]
    ob = outbox(env)
    assert ob[f"gcn-circular:followup:{guano_rid}"]["state"] == "withdrawn"
    assert ob[f"gcn-circular:followup:{rid}"]["state"] == "sent"
    before = set(by_key)
    hermes, notices_after = published(env, kafka_bootstrap, ob)
    retraction_key = f"hermes:retraction:hermes:followup:{guano_rid}"
    assert sorted(h["mma_outbox_key"].decode() for _, h in hermes) == sorted([*before, retraction_key])
    [retraction] = [m for m, h in hermes if h["mma_outbox_key"].decode() == retraction_key]
    assert {"source": "hop_uuid", "citation": str(hop_ids[f"hermes:followup:{guano_rid}"])} in \
        retraction["data"]["references"]
    assert retraction["title"] == "RETRACTION: " + by_key[f"hermes:followup:{guano_rid}"]["title"]
    assert retraction["data"]["event_id"] == guano_trigger
    # the GCN notice already sent is retracted on its channel too (alert_type retraction)
    assert sorted(n["id"] for n in notices_after) == sorted([*by_id, withdrawal["request_id"]])
    [gone] = [n for n in notices_after if n["id"] == withdrawal["request_id"]]
    assert (gone["alert_type"], gone["ref_ID"], gone["withdrawn_followup_ids"]) == (
        "retraction", guano_trigger, [guano_rid])
    assert len(smtp.received) == 1
