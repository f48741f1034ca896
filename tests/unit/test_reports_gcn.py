"""GCN notices and Circular drafts of follow-up results, and the gcn-circular channel over SMTP.

The result documents are made by the follow-up worker's own code path
(``WorkerHandler._analyze`` → ``run_followup``) on the bundled real data:

- GRB 230307A: the SPI-ACS light curve of the burst, T0 and position of the quickstart's
  hand request (GCN Circ. 33405 and 33429). No attitude covers 2023, so the limits are in
  counts only.
- "quiet": the same real light curve with T0 100 s before the burst and a 60 s window (no
  detection). For fluence limits in erg/cm^2 the analysis needs an attitude; the bundled
  orbit file is from revolution 789, so the attitude source here is *constructed*: it
  returns the rev-789 pointing at its first sample whatever T0 is (labelled below).
- SVOM sb25052005: a real alert after the end of the mission → "no data".

The SMTP tests run a real aiosmtpd server on a free local port.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
import socket
import ssl
import tempfile
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest

from broker.event import PointLocalization
from broker.serde import Provenance
from broker.sinks.channels import ChannelError
from broker.sinks.config import PublishSettings
from broker.sinks.gcn import (
    GCN_SCHEMA_DIR, GcnCircularChannel, GcnNoticeChannel, validate_circular, validate_notice,
)
from broker.sources import decode
from followup.attitude import LocalOrbitFiles, OrbitTable
from followup.availability import RetryPolicy
from followup.bundled import bundled_data_dir
from followup.cache import DirectoryCache
from followup.datasources import LocalFitsSource, MmodaSource
from followup.isgri import IsgriClient
from followup.messages import FollowupRequest, adhoc_event, json_schema
from followup.reports.gcn import NotPublishable, circular_draft, event_title, gcn_notice
from followup.service import FollowupSources
from followup.worker import FollowupStats, WorkerHandler

DATA = Path(__file__).resolve().parents[1] / "data"
INTEGRAL = bundled_data_dir()
GRB_NOTE = "T0: Fermi GBM trigger time, GCN Circ. 33405; position: Swift-XRT, GCN Circ. 33429"
AUTHORS = "A. Author, B. Author (Somewhere)\non behalf of a test collaboration"


class _Rev789Attitude:
    """CONSTRUCTED for the test: the real rev-789 attitude at its first sample, whatever T0."""

    def __init__(self) -> None:
        self.table = OrbitTable.read(INTEGRAL / "sc_orbit_param.fits.gz")
        self.files = LocalOrbitFiles(INTEGRAL)

    def orbit_at(self, t0):
        return self.files.orbit_at(t0)

    def pointing_at(self, t0):
        return self.table.pointing_at(self.table.start)


def _worker(attitude) -> WorkerHandler:
    mmoda = MmodaSource(url="http://127.0.0.1:9/dispatch-data", retry=RetryPolicy(attempts=1, base_delay_s=0.01))
    sources = FollowupSources(LocalFitsSource(INTEGRAL), attitude, IsgriClient(mmoda))
    return WorkerHandler(store=None, archive=None, sources=sources, cache=DirectoryCache(Path(tempfile.mkdtemp())),
                         results_topic="mma.followup.results", provenance=Provenance("followup.worker", "test", "0"),
                         stats=FollowupStats())


def _result(worker, event, analyses=("spiacs",), window_s=300.0):
    doc = worker._analyze(FollowupRequest(kind="analyze", event=event, analyses=analyses,
                                          params={"window_s": window_s}, requested_by="cli"))
    doc = json.loads(json.dumps(doc | {"revision_reason": "first", "supersedes": None, "superseded_by": None}))
    jsonschema.validate(doc, json_schema("followup_result.json"))  # a real mma.followup.results document
    return doc


@pytest.fixture(scope="module")
def grb():
    event = adhoc_event("2023-03-07T15:44:06.670Z", "GRB 230307A",
                        PointLocalization(ra=60.85935, dec=-75.3788, error_radius=0.00094, containment=0.9),
                        note=GRB_NOTE)
    return _result(_worker(LocalOrbitFiles(INTEGRAL)), event), event


@pytest.fixture(scope="module")
def quiet():
    event = adhoc_event("2023-03-07T15:42:26.670Z", "GRB 230307A precursor window",
                        PointLocalization(ra=60.85935, dec=-75.3788, error_radius=1.0, containment=0.9))
    return _result(_worker(_Rev789Attitude()), event, window_s=60.0), event


@pytest.fixture(scope="module")
def after_mission():
    event = decode((DATA / "voevent/gwcelery/svom_catalog_gcn.xml").read_bytes())[0]
    return _result(_worker(LocalOrbitFiles(INTEGRAL)), event, ("spiacs", "isgri")), event


def test_vendored_core_schemas_are_upstreams_bytes():
    upstream = DATA / "gcn/gcn-schema/gcn/notices/core"
    vendored = sorted((GCN_SCHEMA_DIR / "core").glob("*.schema.json"))
    assert len(vendored) == 8
    for path in vendored:
        assert path.read_bytes() == (upstream / path.name).read_bytes(), path.name


def test_detection_notice(grb):
    doc, event = grb
    notice = gcn_notice(doc, event)
    validate_notice(notice)
    spi = doc["analyses"]["spiacs"]
    assert (notice["mission"], notice["instrument"], notice["messenger"]) == ("INTEGRAL", "SPI-ACS", "EM")
    assert notice["detection"] is True and notice["fap"] == spi["fap"] == 0.0
    assert notice["rate_snr"] == spi["best_snr"] > 100 and notice["rate_duration"] == spi["best_timescale_s"]
    assert notice["event_name"] == notice["ref_ID"] == "GRB 230307A" and notice["ref_type"] == "GRB"
    assert notice["reference"] == {"mma-broker.event": doc["event_id"], "gcn.circulars": "33405, 33429"}
    assert notice["followup_id"] == doc["request_id"] and notice["alert_type"] == "initial"
    assert notice["alert_tense"] == "archival"  # made years after T0
    assert notice["trigger_time"] == "2023-03-07T15:44:06.670Z"
    assert (notice["ra"], notice["dec"], notice["ra_dec_error"]) == (60.85935, -75.3788, 0.00094)
    # no attitude in 2023: limits in counts only, never a fluence made up
    assert all("fluence" not in lim for lim in notice["upper_limits"])
    one = next(lim for lim in notice["upper_limits"] if lim["time_scale"] == 1.0)
    row = next(r for r in spi["result"]["limits"] if r["scale_s"] == 1.0)
    assert one["counts"] == row["upper_limit_counts"] and one["sigma"] == 3.0
    assert notice["search_coverage"] == "partial" and notice["requested_time_range"] == [-300.0, 300.0]


def test_upper_limit_notice_has_fluence_with_band(quiet):
    doc, event = quiet
    notice = gcn_notice(doc, event)
    spi = doc["analyses"]["spiacs"]
    assert notice["detection"] is False and notice["fap"] == spi["fap"] > 0.01
    one = next(lim for lim in notice["upper_limits"] if lim["time_scale"] == 1.0)
    row = next(r for r in spi["result"]["limits"] if r["scale_s"] == 1.0)
    assert one["fluence"] == row["short_grb_fluence_erg_cm2"]["best"]
    assert 1e-8 < one["fluence"] < 1e-5  # erg/cm^2, the range of the INTEGRAL circulars' limits
    assert one["fluence_spectral_band"] == [75.0, 2000.0] and one["localization_containment"] is None
    assert one["fluence_spectrum"] == {"model": "CutoffPowerLaw", "alpha": -0.5, "epeak": 600.0,
                                       "name": "short GRB: cutoff power law alpha=-0.5 Ep=600 keV"}
    assert one["fluence_detection_50pct"] > one["fluence"] and one["fluence_detection_90pct"] > one[
        "fluence_detection_50pct"]
    assert one["peak_flux"] == row["long_grb_peak_flux_erg_cm2_s"]["best"]
    assert one["peak_flux_spectrum"]["model"] == "Band" and one["peak_flux_spectrum"]["beta"] == -2.5
    assert notice["fraction_of_optimal_response"] == pytest.approx(
        row["short_grb_fluence_erg_cm2"]["at_max_probability_response_fraction"])


def test_no_data_notice_and_no_circular(after_mission):
    doc, event = after_mission
    assert doc["status"] == "no_data"
    notice = gcn_notice(doc, event)
    assert notice["status"] == "no_data" and notice["no_data"]["kind"] == "outside_mission"
    assert "2025-02-28" in notice["no_data"]["reason"] and "upper_limits" not in notice
    assert notice["reference"]["voevent.ivorn"] == event.properties["ivorn"]
    assert notice["ref_instrument"] == "SVOM-ECLAIRs" and notice["event_name"] == "SVOM ECLAIRs trigger sb25052005"
    with pytest.raises(NotPublishable, match="outside_mission"):
        circular_draft(doc, event, PublishSettings(gcn_circular={"authors": AUTHORS}))


def test_update_retraction_and_unpublishable(quiet):
    doc, event = quiet
    update = gcn_notice(doc | {"supersedes": "0" * 32}, event)
    assert update["alert_type"] == "update" and update["supersedes"] == "0" * 32
    withdrawal = {k: doc[k] for k in ("schema", "request_id", "event_id", "source", "upstream_id", "mission",
                                      "instrument", "alert_type", "t0", "created_at", "provenance", "localization")}
    withdrawal |= {"kind": "withdrawal", "status": "withdrawn", "withdrawn_request_ids": [doc["request_id"]],
                   "summary_text": "retracted"}
    retraction = gcn_notice(withdrawal, event)
    assert retraction["alert_type"] == "retraction" and retraction["withdrawn_followup_ids"] == [doc["request_id"]]
    with pytest.raises(NotPublishable):
        gcn_notice(doc | {"kind": "skipped", "status": "unchanged"}, event)
    with pytest.raises(NotPublishable):
        gcn_notice(doc | {"status": "failed", "error": "boom"}, event)
    with pytest.raises(NotPublishable):
        circular_draft(withdrawal, event, PublishSettings())


@pytest.mark.parametrize(("mutate", "where"), [
    (lambda n: n["upper_limits"][3].__setitem__("fluence", "3e-7"), r"\$\.upper_limits\[3\]\.fluence"),
    (lambda n: n.__setitem__("fap", 1.5), r"\$\.fap"),
    (lambda n: n.__setitem__("mission", "Fermi"), r"\$\.mission"),
    (lambda n: n.__setitem__("alert_type", "preliminary"), r"\$\.alert_type"),
    (lambda n: n.__setitem__("fluence_limit", 1e-7), r"at \$: .*'fluence_limit'"),
    (lambda n: n.pop("trigger_time"), r"at \$: 'trigger_time' is a required property"),
    (lambda n: n.__setitem__("$schema", "https://example.org/x.json"), r"\$\['\$schema'\]"),
])
def test_broken_notice_refused_naming_the_path(quiet, mutate, where):
    notice = gcn_notice(*quiet)
    mutate(notice)
    with pytest.raises(ValueError, match=where):
        validate_notice(notice)
    entry = SimpleNamespace(key="gcn-notice:followup:x", payload=notice)
    with pytest.raises(ChannelError, match=where) as err:
        GcnNoticeChannel("unused", {"bootstrap.servers": "127.0.0.1:9"}).send(entry)
    assert err.value.retryable is False


# Structure of a real INTEGRAL SPI-ACS upper-limit circular, GCN Circular 24951
# (S190701ah, https://gcn.nasa.gov/circulars/24951): its paragraphs in order, by the
# phrase that opens or marks each. The same order is in GCN 24629, 25698, 25880, 26351,
# 27050, 28617 and 28903.
REAL_SUBJECT_24951 = "LIGO/Virgo S190701ah: No counterpart candidates in INTEGRAL SPI-ACS prompt observation"
REAL_STRUCTURE_24951 = [
    r"^[A-Z]\. \w+",                                  # authors
    r"on behalf of",                                  # collaboration
    r"^Using INTEGRAL/SPI-ACS .*data \(following \[1\]\)",
    r"^At the time of the event \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, hereafter T0\)",
    r"^The background within \+/-\d+ s(econds)? around the event was [a-z ]+ \(excess variance \d\.\d[,)]",
    r"impulsive events .*\(as described in \[2\]\)",
    r"3-sigma\s+upper\s+limit\s+on\s+the\s+75-2000\s+keV\s+fluence\s+of\s+[\d.]+e-0\d\s+erg/cm\^2",
    r"^\[1\] .* \[2\] ",
]


def _ordered(paragraphs: list[str], patterns: list[str]) -> list[int]:
    """Index of the paragraph each pattern first matches, each after the previous one's
    (the collaboration line may share the authors' paragraph)."""
    found, start = [], 0
    for pattern in patterns:
        first = start - 1 if pattern == r"on behalf of" else start
        i = next(i for i in range(first, len(paragraphs)) if re.search(pattern, paragraphs[i], re.M | re.S))
        found.append(i)
        start = i + 1
    return found


def _subject_form(subject: str) -> str:
    return re.sub(r"^[^:]+:", "<event>:", subject)


def test_circular_has_the_structure_of_an_integral_circular(quiet):
    doc, event = quiet
    draft = circular_draft(doc, event, PublishSettings(gcn_circular={"authors": AUTHORS}))
    validate_circular(draft)
    assert _subject_form(draft["subject"]) == _subject_form(REAL_SUBJECT_24951)
    paragraphs = draft["body"].split("\n\n")
    order = _ordered([" ".join(p.split()) for p in paragraphs], REAL_STRUCTURE_24951)
    assert order[0] == 0 and order[2:] == sorted(set(order[2:])) and order[-1] == len(paragraphs) - 1
    assert paragraphs[0] == AUTHORS
    assert all(len(line) <= 80 for p in paragraphs[1:] for line in p.splitlines() if not line.startswith("http"))
    # the numbers are the result's, as the text of the result says them
    row = next(r for r in doc["analyses"]["spiacs"]["result"]["limits"] if r["scale_s"] == 1.0)
    assert f"fluence of {row['short_grb_fluence_erg_cm2']['best']:.2g} erg/cm^2" in " ".join(draft["body"].split())
    assert f"excess variance {row['excess_variance_factor']:.1f}" in " ".join(draft["body"].split())
    flat = " ".join(draft["body"].split())
    assert "at a given time" in flat and "half of the time" in flat


def test_detection_circular_subject_and_references(grb):
    doc, event = grb
    draft = circular_draft(doc, event, PublishSettings(gcn_circular={"authors": AUTHORS}))
    assert draft["subject"] == "GRB 230307A: INTEGRAL SPI-ACS detection"
    body = " ".join(draft["body"].split())
    assert "counterpart of GRB 230307A (GCN 33405, 33429)" in body
    assert "We detect a significant excess starting at T0+3.78 s" in body and "< 1e-15" in body
    assert "no fluence is given" in body  # no attitude: counts only
    assert draft["references"] == ["GCN Circ. 33405", "GCN Circ. 33429", f"mma-broker event {doc['event_id']}"]
    link = f"http://127.0.0.1:8008/artifacts/sha256/{doc['plot']['sha256']}"
    assert link in draft["body"].splitlines()
    assert "/tmp" not in draft["body"] and "/home" not in draft["body"]


def test_lvk_title_and_authors_missing(quiet):
    lvk = decode((DATA / "igwn/userguide/MS181101ab-2-Preliminary.xml").read_bytes())[0]
    assert event_title({"source": "igwn", "upstream_id": lvk.upstream_id}, lvk) == "LIGO/Virgo/KAGRA MS181101ab"
    draft = circular_draft(*quiet, PublishSettings())
    with pytest.raises(ValueError, match=r"\$\.body: no authors"):
        validate_circular(draft)


# ------------------------------------------------------------------- SMTP (aiosmtpd)

USER, PASSWORD = "gcn-submitter", "s3cret-Pa55-word"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture()
def smtp_server(tmp_path):
    """A real aiosmtpd server on a free port: STARTTLS required, then AUTH LOGIN/PLAIN."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    cert, key = _self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    received, logins = [], []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
            received.append(envelope)
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
        logins.append(ok)
        return AuthResult(success=ok, handled=False)

    port = _free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=server_tls,
                            require_starttls=True, authenticator=authenticator, auth_require_tls=True)
    controller.start()
    client_tls = ssl.create_default_context(cafile=str(cert))
    try:
        yield SimpleNamespace(port=port, received=received, logins=logins, client_tls=client_tls)
    finally:
        controller.stop()


def _channel(server, password=PASSWORD) -> GcnCircularChannel:
    settings = PublishSettings(gcn_circular={
        "smtp_host": "127.0.0.1", "smtp_port": server.port, "starttls": True, "username": USER,
        "password": password, "from_address": "integral@example.org", "to": ["circulars@example.org"],
        "authors": AUTHORS, "timeout_s": 10})
    channel = GcnCircularChannel.from_settings(SimpleNamespace(publish=settings))
    channel.tls_context = server.client_tls
    return channel


def test_circular_submitted_once_by_smtp_without_leaking_credentials(smtp_server, quiet, caplog):
    caplog.set_level(logging.DEBUG)
    draft = circular_draft(*quiet, PublishSettings(gcn_circular={"authors": AUTHORS}))
    entry = SimpleNamespace(key="gcn-circular:followup:" + quiet[0]["request_id"], payload=draft)
    channel = _channel(smtp_server)
    receipt = channel.send(entry)
    assert len(smtp_server.received) == 1 and smtp_server.logins == [True]
    envelope = smtp_server.received[0]
    assert envelope.mail_from == "integral@example.org" and envelope.rcpt_tos == ["circulars@example.org"]
    import email
    from email import policy

    msg = email.message_from_bytes(envelope.original_content, policy=policy.default)
    assert msg["Subject"] == draft["subject"] and msg["From"] == "integral@example.org"
    assert msg["To"] == "circulars@example.org" and msg["Message-ID"] == receipt["message_id"]
    assert msg.get_content_type() == "text/plain" and msg.get_content().replace("\r\n", "\n") == draft["body"]
    assert receipt["to"] == ["circulars@example.org"] and receipt["refused"] == []
    # the same key gives the same Message-ID (a duplicate is recognisable downstream)
    assert channel.message(entry)["Message-ID"] == receipt["message_id"]
    secrets = (PASSWORD, base64.b64encode(PASSWORD.encode()).decode(),
               base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode())
    seen = caplog.text + json.dumps(receipt) + repr(channel)
    assert not any(s in seen for s in secrets)


def test_smtp_failures_are_classified(smtp_server, quiet):
    draft = circular_draft(*quiet, PublishSettings(gcn_circular={"authors": AUTHORS}))
    entry = SimpleNamespace(key="gcn-circular:followup:x", payload=draft)
    with pytest.raises(ChannelError) as err:
        _channel(smtp_server, password="wrong-password").send(entry)
    assert err.value.retryable is False and "wrong-password" not in str(err.value)
    assert smtp_server.received == []
    closed = GcnCircularChannel("127.0.0.1", _free_port(), "a@example.org", ["b@example.org"], timeout_s=2)
    with pytest.raises(ChannelError) as err:
        closed.send(entry)
    assert err.value.retryable is True
    with pytest.raises(ChannelError) as err:
        closed.recover(entry)
    assert err.value.retryable is False
    no_authors = SimpleNamespace(key="k", payload=circular_draft(*quiet, PublishSettings()))
    with pytest.raises(ChannelError, match="no authors") as err:
        _channel(smtp_server).send(no_authors)
    assert err.value.retryable is False and smtp_server.received == []
