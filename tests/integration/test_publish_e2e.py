"""Publishing end to end, as a user runs it: real Kafka, PostgreSQL and a real SMTP server.

``mma-broker followup request`` (GRB 230307A, the published GCN values) and the real
Swift BAT-GUANO example notice, then ``mma-broker run --until-caught-up``: the follow-up
worker analyses, the ``reports`` stage writes the outbox, the ``publish`` stage sends.
Checked on the far side of each channel, not in our own code:

* the HERMES messages arrive once each on the test's own ``hermes.test`` topic, validate
  against ``broker/schemas/hermes/hermes_message.json`` (jsonschema) and are read back
  with hop-client's own consumer (``hop.io.Stream``);
* the GCN notices arrive once each on the notice topic and validate against the vendored
  GCN unified schema (jsonschema + referencing, registry built here from the files);
* the GCN Circular drafts wait in ``pending_approval`` and nothing reaches the SMTP
  server (aiosmtpd on a free port) until ``mma-broker outbox approve ID``; then the
  e-mail arrives once with the draft's subject and body;
* the retraction of the GUANO trigger (Guano.Retraction.example.json, replayed after the
  first run) withdraws that group's pending circular draft and publishes a HERMES
  retraction message citing the message already sent by its hop UUID, and a GCN notice
  with ``alert_type: retraction``; this second ``run`` sends none of the GRB's messages
  (all sent before) again.

Expected values come from the input files, the result topic and the outbox as shown by
the CLI, read with json; the builders are not called here. The TNS channel is not in
this path: it needs an ``optical-counterpart`` record (a ZTF candidate inside a GW/GRB
region), and no real coincident pair is bundled (tests/unit/test_tns_*.py and
test_outbox_db.py cover it).
"""

from __future__ import annotations

import email
import json
import socket
import uuid
from email import policy
from types import SimpleNamespace

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from followup.bundled import bundled_data_dir

from tests.conftest import ROOT, run_cli
from tests.integration.test_followup_e2e import GRB230307A, GUANO, read_all

pytestmark = pytest.mark.integration

SCHEMAS = ROOT / "broker" / "schemas"
AUTHORS = "A. Person (Inst.), B. Person (Inst.) report on behalf of the INTEGRAL SPI-ACS team:"
FROM, TO = "integral@example.org", "circulars@example.org"
IDLE = "1.5"  # s without news before a run stops (default 3 s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def smtp():
    """A real SMTP server (aiosmtpd) on a free local port; ``received``: the envelopes."""
    from aiosmtpd.controller import Controller

    received: list = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
            received.append(envelope)
            return "250 OK"

    port = _free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SimpleNamespace(port=port, received=received)
    finally:
        controller.stop()


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


def test_published_approved_retracted_each_exactly_once(env, smtp, kafka_bootstrap):
    prefix = env["MMA_BROKER_KAFKA__TOPIC_PREFIX"]
    hermes_topic = env["MMA_BROKER_PUBLISH__HERMES__TOPIC"]
    notice_topic = f"{prefix}mma.gcn.notices.integral"
    guano = json.loads((GUANO / "Guano.example.json").read_text())
    guano_trigger = str(guano["id"][0])

    # ---- run 1: the user's request and a real GUANO notice, everything automatic
    rid = json.loads(run_cli(env, "followup", "request", *GRB230307A, "--json").stdout)["request_id"]
    run_cli(env, "replay", str(GUANO / "Guano.example.json"))
    run_cli(env, "run", "--until-caught-up", "--idle", IDLE)

    docs = [json.loads(m.value()) for m in read_all(kafka_bootstrap, f"{prefix}mma.followup.results", settle_s=1.0)]
    results = {d["request_id"]: d for d in docs if d["kind"] == "result"}
    grb = results[rid]
    assert grb["status"] == "done" and grb["analyses"]["spiacs"]["detected"] is True
    [guano_rid] = [r for r, d in results.items() if d.get("upstream_id") == guano_trigger]
    assert set(results) == {rid, guano_rid}

    # HERMES: once per result on the test's topic, valid, read with hop's own consumer
    hermes = hop_read(kafka_bootstrap, hermes_topic)
    keys = [h["mma_outbox_key"].decode() for _, h in hermes]
    assert sorted(keys) == sorted([f"hermes:followup:{rid}", f"hermes:followup:{guano_rid}"])
    validator = hermes_validator()
    by_key = {h["mma_outbox_key"].decode(): m for m, h in hermes}
    for m in by_key.values():
        assert not list(validator.iter_errors(m)), [e.message for e in validator.iter_errors(m)]
        assert m["topic"] == hermes_topic and m["submitter"] == "mma-broker e2e test" and m["authors"] == AUTHORS
    hop_ids = {h["mma_outbox_key"].decode(): uuid.UUID(bytes=h["_id"]) for _, h in hermes}
    ob = outbox(env)
    for k, m in by_key.items():  # the message as the outbox shows it, and its receipt
        assert ob[k]["state"] == "sent" and ob[k]["payload"] == m
        assert ob[k]["receipt"]["hop_uuid"] == str(hop_ids[k]) and ob[k]["receipt"]["topic"] == hermes_topic
    msg = by_key[f"hermes:followup:{rid}"]
    assert msg["data"]["event_id"] == "GRB 230307A" and msg["title"].startswith("GRB 230307A:")
    assert any(rid in r.get("citation", "") for r in msg["data"]["references"])
    assert by_key[f"hermes:followup:{guano_rid}"]["data"]["event_id"] == guano_trigger
    [target] = msg["data"]["targets"]
    assert (target["ra"], target["dec"]) == (60.85935, -75.3788)

    # GCN notice: once per result, valid against the vendored GCN schema
    notices = [json.loads(m.value()) for m in read_all(kafka_bootstrap, notice_topic, settle_s=1.0)]
    assert sorted(n["id"] for n in notices) == sorted([rid, guano_rid])
    for n in notices:
        v = gcn_validator(n["$schema"])
        assert not list(v.iter_errors(n)), [e.message for e in v.iter_errors(n)]
    assert {n["id"]: n["ref_ID"] for n in notices} == {rid: "GRB 230307A", guano_rid: guano_trigger}
    assert {n["alert_type"] for n in notices} == {"initial"}
    [n] = [n for n in notices if n["id"] == rid]
    assert n["trigger_time"].startswith("2023-03-07T15:44:06.67") and n["detection"] is True

    # GCN Circulars: drafted, waiting for a person; nothing reached SMTP
    assert sorted(ob) == sorted(f"{c}:followup:{r}" for c in ("hermes", "gcn-notice", "gcn-circular")
                                for r in (rid, guano_rid))
    assert {ob[f"gcn-notice:followup:{r}"]["state"] for r in (rid, guano_rid)} == {"sent"}
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
    withdrawal = next(json.loads(m.value()) for m in read_all(kafka_bootstrap, f"{prefix}mma.followup.results",
                                                              settle_s=1.0)
                      if json.loads(m.value())["kind"] == "withdrawal")
    assert withdrawal["upstream_id"] == guano_trigger and withdrawal["withdrawn_request_ids"] == [guano_rid]
    ob = outbox(env)
    assert ob[f"gcn-circular:followup:{guano_rid}"]["state"] == "withdrawn"
    assert ob[f"gcn-circular:followup:{rid}"]["state"] == "sent"
    hermes = hop_read(kafka_bootstrap, hermes_topic)
    retraction_key = f"hermes:retraction:hermes:followup:{guano_rid}"
    assert sorted(h["mma_outbox_key"].decode() for _, h in hermes) == sorted(
        [f"hermes:followup:{rid}", f"hermes:followup:{guano_rid}", retraction_key])
    [retraction] = [m for m, h in hermes if h["mma_outbox_key"].decode() == retraction_key]
    assert not list(validator.iter_errors(retraction))
    assert {"source": "hop_uuid", "citation": str(hop_ids[f"hermes:followup:{guano_rid}"])} in \
        retraction["data"]["references"]
    assert retraction["title"] == "RETRACTION: " + by_key[f"hermes:followup:{guano_rid}"]["title"]
    assert retraction["data"]["event_id"] == guano_trigger
    # the GCN notice already sent is retracted on its channel too (alert_type retraction)
    notices = [json.loads(m.value()) for m in read_all(kafka_bootstrap, notice_topic, settle_s=1.0)]
    assert sorted(n["id"] for n in notices) == sorted([rid, guano_rid, withdrawal["request_id"]])
    [gone] = [n for n in notices if n["id"] == withdrawal["request_id"]]
    assert not list(gcn_validator(gone["$schema"]).iter_errors(gone))
    assert (gone["alert_type"], gone["ref_ID"], gone["withdrawn_followup_ids"]) == (
        "retraction", guano_trigger, [guano_rid])
    assert len(smtp.received) == 1
