"""Rubin/LSST alerts: Confluent wire format, schemas by id, normalization (issue 12 item 4).

Table-driven over every sample alert lsst-alert-packet ships (one per schema version,
3.0 to 11.1) and over the real Rubin alerts Fink relayed (tests/data/relayed/fink/lsst,
origins in tests/data/SOURCES.md). Expected values come from plain ``fastavro.reader``
on the files and from astropy (TAI -> UTC); wire-format messages are written here with
``fastavro.schemaless_writer`` and the package's own ``.avsc`` files loaded by
``fastavro.schema.load_schema``, not with the code under test.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import fastavro
import pytest
from astropy.time import Time
from typer.testing import CliRunner

from broker.errors import DecodeError
from broker.sources import avro, decode, lsst, sniff_format, upstream_topic

PACKAGE = Path(importlib.util.find_spec("lsst.alert.packet").submodule_search_locations[0]) / "schema"
SAMPLES = sorted((p for p in PACKAGE.glob("*/*/sample_data/fakeAlert.avro")),
                 key=lambda p: (int(p.parts[-4]), int(p.parts[-3])))
RELAYED = Path(__file__).resolve().parents[1] / "data" / "relayed" / "fink" / "lsst" / "part-2-918301-first2.avro"


def _version(path: Path) -> tuple[int, int]:
    return int(path.parts[-4]), int(path.parts[-3])


def _schema(major: int, minor: int) -> dict:
    """The package's alert schema, loaded by fastavro from its .avsc files."""
    return fastavro.schema.load_schema(str(PACKAGE / str(major) / str(minor) / f"lsst.v{major}_{minor}.alert.avsc"))


def _wire(major: int, minor: int, record: dict, sid: int | None = None) -> bytes:
    out = io.BytesIO()
    out.write(b"\x00" + (major * 100 + minor if sid is None else sid).to_bytes(4, "big"))
    fastavro.schemaless_writer(out, _schema(major, minor), record)
    return out.getvalue()


def _records(path: Path) -> list[dict]:
    with path.open("rb") as fh:
        return list(fastavro.reader(fh))


def _as_rubin_sent(rec: dict, rubin: set[str]) -> dict:
    """The Rubin fields of a Fink-relayed alert. Spark writes a null record (no
    ssSource, no mpc_orbits) as a record of nulls; Rubin's schema has null there."""
    return {k: None if isinstance(rec[k], dict) and all(v is None for v in rec[k].values()) else rec[k]
            for k in rubin}


def _utc_iso(mjd_tai: float) -> str:
    return Time(mjd_tai, format="mjd", scale="tai").utc.isot


@pytest.fixture(autouse=True)
def _bundled_only():
    lsst.configure(None)
    lsst._wire_layouts.clear()
    yield
    lsst.configure(None)
    lsst._wire_layouts.clear()


def test_every_schema_version_of_the_package_is_bundled_by_id():
    assert len(SAMPLES) >= 15
    versions = {_version(p) for p in SAMPLES}
    assert {sid: v for sid, v in lsst.bundled_versions().items()} == {M * 100 + m: (M, m) for M, m in versions}
    assert lsst.bundled_versions()[1101] == (11, 1) and lsst.bundled_versions()[704] == (7, 4)


def _check_event(ev, rec: dict, major: int) -> None:
    ds = rec["diaSource"]
    tkey = "midpointMjdTai" if "midpointMjdTai" in ds else "midPointTai"
    assert ev.source == "lsst" and ev.mission == "Rubin" and ev.messenger == "em" and ev.format == "avro"
    assert ev.id == f"lsst:{ds['diaSourceId']}"
    assert ev.properties["mjd_tai"] == ds[tkey]
    got, want = Time(ev.time[:-1], format="isot", scale="utc"), Time(_utc_iso(ds[tkey]), format="isot", scale="utc")
    assert abs((got - want).sec) < 1e-3
    assert ev.localization.ra == ds["ra"] and ev.localization.dec == ds.get("dec", ds.get("decl"))
    flux = ds.get("psfFlux", ds.get("psFlux"))
    assert ev.properties["psfFlux_njy"] == (flux if flux is None or math.isfinite(flux) else None)
    if "psfFluxErr" in ds:
        err = ds["psfFluxErr"]
        assert ev.properties["psfFluxErr_njy"] == (err if err is None or math.isfinite(err) else None)
    assert ev.properties["band"] == ds.get("band", ds.get("filterName"))
    obj = rec.get("diaObject")
    if obj is not None:
        assert ev.properties["diaObject"]["diaObjectId"] == obj["diaObjectId"]
    assert ev.category == "optical_transient"


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: "v{}.{}".format(*_version(p)))
def test_every_package_sample_in_container_and_wire_format(path):
    major, minor = _version(path)
    (rec,) = _records(path)
    ds = rec["diaSource"]
    tkey = "midpointMjdTai" if "midpointMjdTai" in ds else "midPointTai"
    wire = _wire(major, minor, rec)
    assert sniff_format(wire) == "avro" and avro.is_wire_format(wire)
    assert isinstance(avro.read_wire_header(wire), avro.WireHeader)
    assert avro.read_wire_header(wire).schema_id == major * 100 + minor
    for data in (path.read_bytes(), wire):
        if not 15020 <= ds[tkey] <= 124593:  # 3.0-7.4 samples: a Unix time in the MJD field
            with pytest.raises(DecodeError, match=rf"diaSource\.{tkey} = {ds[tkey]!r} is not an MJD"):
                decode(data)
            continue
        (ev,) = decode(data)
        _check_event(ev, rec, major)
        assert ev.properties["schema_version"] == f"{major}.{minor}"
        assert upstream_topic(data) == f"lsst-alerts-v{major}.{minor}"


def test_rejected_samples_are_the_ones_with_unix_time_in_the_mjd_field():
    bad = [_version(p) for p in SAMPLES
           if not 15020 <= (lambda d: d.get("midpointMjdTai", d.get("midPointTai")))(_records(p)[0]["diaSource"]) <= 124593]
    assert bad == [v for v in map(_version, SAMPLES) if v < (8, 0)]  # 5 of 15 decode: 8.0 .. 11.1


def test_real_alerts_relayed_by_fink_in_container_and_as_rubin_sent_them():
    recs = _records(RELAYED)
    with RELAYED.open("rb") as fh:
        writer = fastavro.reader(fh).writer_schema
    evs = decode(RELAYED.read_bytes())
    assert len(evs) == len(recs) == 2
    rubin = {f["name"] for f in _schema(10, 0)["fields"]}
    added = [f["name"] for f in writer["fields"] if f["name"] not in rubin]
    for ev, rec in zip(evs, recs):
        assert rec["lsst_schema_version"] == "lsst.v10_0"
        _check_event(ev, rec, 10)
        assert ev.properties["schema_version"] == "10.0"
        assert ev.properties["relayed_by"] == "fink"
        ann = ev.properties["annotations"]["fink"]
        assert list(ann) == added
        assert ann["fink_broker_version"] == rec["fink_broker_version"]
        json.dumps(ev.properties, allow_nan=False)  # JSON-safe
        # the same alert as Rubin sends it: its Rubin fields, wire format, schema id 1000
        wire = _wire(10, 0, _as_rubin_sent(rec, rubin))
        assert len(wire) > 100_000  # histories and cutouts included: a real-size message
        (direct,) = decode(wire)
        assert direct.id == ev.id and direct.time == ev.time and direct.localization == ev.localization
        assert {k: v for k, v in direct.properties.items()} == \
            {k: v for k, v in ev.properties.items() if k not in ("relayed_by", "annotations")}
        assert upstream_topic(wire) == "lsst-alerts-v10.0"
        hist = lsst.decode_history(wire)
        assert hist["diaSourceId"] == rec["diaSource"]["diaSourceId"]
        assert len(hist["prvDiaSources"]) == len(rec["prvDiaSources"]) > 100
        assert [s["diaSourceId"] for s in hist["prvDiaSources"]] == [s["diaSourceId"] for s in rec["prvDiaSources"]]
        assert len(hist["prvDiaForcedSources"]) == len(rec["prvDiaForcedSources"])
        assert hist["cutouts"]["difference"] == rec["cutoutDifference"]
    assert upstream_topic(RELAYED.read_bytes()) == "lsst-alerts-v10.0"  # Fink's lsst_schema_version


def test_history_of_a_container_alert_picks_the_alert():
    recs = _records(RELAYED)
    want = recs[1]["diaSource"]["diaSourceId"]
    hist = lsst.decode_history(RELAYED.read_bytes(), dia_source_id=want)
    assert hist["diaSourceId"] == want and len(hist["prvDiaSources"]) == len(recs[1]["prvDiaSources"])
    with pytest.raises(DecodeError, match="no LSST alert with diaSourceId 1 "):
        lsst.decode_history(RELAYED.read_bytes(), dia_source_id=1)


def _latest_sample() -> tuple[dict, bytes]:
    path = next(p for p in SAMPLES if _version(p) == (11, 1))
    (rec,) = _records(path)
    return rec, _wire(11, 1, rec)


def test_unknown_schema_id_without_registry_names_the_known_ones():
    rec, _ = _latest_sample()
    data = _wire(11, 1, rec, sid=4242)
    with pytest.raises(DecodeError, match=r"unknown Avro schema id 4242: .*1101 \(v11\.1\).*schema_registry_url"):
        decode(data)


@pytest.mark.parametrize("data, match", [
    (b"\x00\x00\x00\x04\x4d", "truncated Confluent wire-format message"),  # 5 bytes: sniffed as unknown
    (b"\x00\x00\x00\x04\x4d\x02", "corrupt LSST alert: the Avro datum of 1 bytes is shorter than"),
    (b"\x00\x00\x00\x04\x4d" + b"\xff" * 40, "corrupt LSST alert: the Avro datum of 40 bytes"),
    (b"\x00\x00\x00\x04\x4d" + b"\x02" * 400, "corrupt LSST alert: record 0 of Avro block 0 does not decode"),
])
def test_broken_wire_messages_are_one_line_decode_errors(data, match):
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert "\n" not in str(info.value)
    if len(data) > 5:
        assert match in str(info.value)


def test_other_binary_starting_with_nul_is_not_taken_for_wire_format():
    assert not avro.is_wire_format(bytes(range(256)))
    with pytest.raises(DecodeError, match="unknown format"):
        sniff_format(bytes(range(256)))


class _Registry(BaseHTTPRequestHandler):
    schemas: dict[int, str] = {}
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).requests.append(self.path)
        sid = int(self.path.rsplit("/", 1)[-1]) if self.path.startswith("/schemas/ids/") else -1
        if sid in self.schemas:
            body = json.dumps({"schema": self.schemas[sid]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            body = b'{"error_code":40403,"message":"Schema not found"}'
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def registry():
    _Registry.requests = []
    v11_1 = json.dumps(fastavro.schema.load_schema(
        str(PACKAGE / "11" / "1" / "lsst.v11_1.alert.avsc"), _write_hint=False))
    _Registry.schemas = {7: v11_1}  # a registry that numbers its schemas its own way
    server = HTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_schema_registry_resolves_ids_once_and_falls_back_to_bundled(registry):
    rec, bundled_wire = _latest_sample()
    lsst.configure(lsst.LsstSettings(schema_registry_url=registry))
    data = _wire(11, 1, rec, sid=7)
    for _ in range(3):
        (ev,) = decode(data)
        assert ev.id == f"lsst:{rec['diaSource']['diaSourceId']}" and ev.properties["schema_version"] == "11.1"
    assert _Registry.requests == ["/schemas/ids/7"]  # cached: schemas never change under an id
    (ev,) = decode(bundled_wire)  # id 1101: not at this registry (404), bundled
    assert ev.properties["schema_version"] == "11.1"
    assert _Registry.requests == ["/schemas/ids/7", "/schemas/ids/1101"]
    with pytest.raises(DecodeError, match=r"unknown Avro schema id 8: schema id 8 at the schema registry: HTTP 404"):
        decode(_wire(11, 1, rec, sid=8))
    with pytest.raises(DecodeError, match="HTTP 404"):  # remembered for a minute: no second request
        decode(_wire(11, 1, rec, sid=8))
    assert _Registry.requests.count("/schemas/ids/8") == 1


def test_made_up_schema_ids_do_not_become_a_stream_of_registry_requests(registry):
    rec, _ = _latest_sample()
    lsst.configure(lsst.LsstSettings(schema_registry_url=registry))
    for sid in range(10_000, 10_000 + 3 * lsst.MAX_REGISTRY_MISSES):
        with pytest.raises(DecodeError, match=f"schema id {sid}"):
            decode(_wire(11, 1, rec, sid=sid))
    assert len(_Registry.requests) == lsst.MAX_REGISTRY_MISSES
    assert lsst.bundled_schema_json.cache_info().currsize <= len(lsst.bundled_versions())


def test_unreachable_registry_is_a_decode_error_not_a_crash():
    rec, bundled_wire = _latest_sample()
    lsst.configure({"schema_registry_url": "http://127.0.0.1:9", "registry_timeout_s": 1})
    with pytest.raises(DecodeError, match=r"schema id 55 at the schema registry: request failed \(ConnectError\)"):
        decode(_wire(11, 1, rec, sid=55))
    (ev,) = decode(bundled_wire)  # a bundled id still decodes while the registry is down
    assert ev.source == "lsst"


def test_settings_section_checks_the_url():
    with pytest.raises(ValueError):
        lsst.LsstSettings(schema_registry_url="not a url")
    assert lsst.LsstSettings().schema_registry_url is None


def test_inspect_reads_a_wire_format_file(tmp_path):
    from broker.cli import app

    rec, wire = _latest_sample()
    path = tmp_path / "alert.avro"
    path.write_bytes(wire)
    result = CliRunner().invoke(app, ["inspect", "--json", str(path), str(RELAYED)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [d["source"] for d in lines] == ["lsst"] * 3
    assert lines[0]["id"] == f"lsst:{rec['diaSource']['diaSourceId']}"


def test_mjd_tai_to_unix_agrees_with_astropy():
    for mjd in (57754.5, 60902.993305483615, 61105.093643486834, 50000.25):
        want = Time(mjd, format="mjd", scale="tai").utc.unix
        assert abs(lsst.mjd_tai_to_unix(mjd) - want) < 1e-4


def test_compiled_skip_equals_fastavro_and_the_python_walker():
    """The compiled skip (broker.sources._skip) ends each skipped field where fastavro's
    full decode of the fields before it ends, on the real Rubin alerts; so does its
    Python twin; a cut message is a negative position, never a read past the end."""
    import numpy as np

    from broker.sources import _skip

    (rec,) = _records(RELAYED)[:1]
    schema = _schema(10, 0)
    wire = _wire(10, 0, _as_rubin_sent(rec, {f["name"] for f in schema["fields"]}))
    payload = wire[5:]
    buf = np.frombuffer(payload, np.uint8)
    named = schema["__named_schemas"]
    pos, fields = 0, schema["fields"]
    for i, f in enumerate(fields):
        prog = _skip.compile_field(f["type"], named)
        if f["name"] in ("prvDiaSources", "prvDiaForcedSources", "cutoutDifference", "diaSource", "diaObject"):
            assert prog is not None, f["name"]
        if prog is None:
            break
        head = fastavro.parse_schema({"type": "record", "name": "head", "fields": fields[: i + 1]}, named_schemas={})
        fo = io.BytesIO(payload)
        fastavro.schemaless_reader(fo, head, None)
        got = _skip.skip_field(buf, pos, len(buf), *prog)
        assert got == _skip._skip_field_py(buf, pos, len(buf), *prog) == fo.tell(), f["name"]
        for cut in (pos + 1, (pos + got) // 2, got - 1):
            if pos < cut < got:
                assert _skip.skip_field(buf[:cut], pos, cut, *prog) < 0
        pos = got
    assert pos == len(payload)  # every field compiled: the whole alert walked


def test_cut_wire_message_is_a_decode_error_naming_the_record():
    (rec,) = _records(RELAYED)[:1]
    wire = _wire(10, 0, _as_rubin_sent(rec, {f["name"] for f in _schema(10, 0)["fields"]}))
    for cut in (len(wire) // 3, len(wire) // 2):
        with pytest.raises(DecodeError, match="corrupt LSST alert: record 0 of Avro block 0 does not decode"):
            decode(wire[:cut])


def test_the_rubin_preset_block_is_configuration_that_loads(tmp_path):
    """The commented Rubin upstream of deploy/presets/production.toml, uncommented, is a
    valid configuration: a kafka upstream on lsst-alerts-v10.0 and an [lsst] registry."""
    from broker.config import load_settings

    text = (Path(__file__).resolve().parents[2] / "deploy" / "presets" / "production.toml").read_text()
    start = text.index("# Rubin/LSST alerts as a community broker receives them")
    block = text[start:text.index("\n\n", text.index("# [lsst]", start))]
    toml = "\n".join(line[2:] for line in block.splitlines() if line.startswith("# ") and "=" in line or
                     line.startswith("# [")) + "\n"
    (tmp_path / "rubin.toml").write_text(toml)
    s = load_settings(tmp_path / "rubin.toml")
    (up,) = s.upstreams
    assert up.kind == "kafka" and up.topics == ["lsst-alerts-v10.0"] and up.config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert s.lsst.schema_registry_url.startswith("https://")


def test_flipped_and_cut_wire_messages_only_ever_raise_decode_error():
    """Deterministic fuzz (seed 12): 300 mutations of a real Rubin alert in wire format
    (a byte flipped in the small fields or in the histories, or the message cut) decode
    to Events or raise DecodeError; nothing else escapes, nothing hangs."""
    import random

    from broker.sources import decode_unguarded

    (rec,) = _records(RELAYED)[:1]
    wire = _wire(10, 0, _as_rubin_sent(rec, {f["name"] for f in _schema(10, 0)["fields"]}))
    rng = random.Random(12)
    outcomes = {"events": 0, "decode_error": 0}
    for i in range(300):
        data = bytearray(wire)
        if i % 3 == 2:
            data = data[: rng.randrange(6, len(data))]
        else:
            where = rng.randrange(5, 2_000) if i % 3 == 0 else rng.randrange(5, len(data))
            data[where] ^= 1 << rng.randrange(8)
        try:
            decode_unguarded(bytes(data))
            outcomes["events"] += 1
        except DecodeError:
            outcomes["decode_error"] += 1
    assert outcomes["events"] > 0 and outcomes["decode_error"] > 0, outcomes


def test_filters_get_the_history_of_each_alert_of_a_container_once():
    """FilterInput.lsst_history: the alert's own prvDiaSources (checked with fastavro), decoded
    once however many filters ask; None for other sources and without raw bytes."""
    from filters.api import FilterInput

    data = RELAYED.read_bytes()
    with RELAYED.open("rb") as fh:
        recs = list(fastavro.reader(fh))
    events = decode(data)
    assert len(events) == len(recs) == 2
    reads = []

    def raw():
        reads.append(1)
        return data

    for event, rec in zip(events, recs):
        alert = FilterInput(event, raw=raw)
        hist = alert.lsst_history()
        assert hist["diaSourceId"] == rec["diaSource"]["diaSourceId"] == event.properties["diaSourceId"]
        want = [s["diaSourceId"] for s in rec["prvDiaSources"] or []]
        assert [s["diaSourceId"] for s in hist["prvDiaSources"]] == want and want
        assert alert.lsst_history() is hist
    assert len(reads) == 2  # one read per alert, not per call
    assert FilterInput(events[0]).lsst_history() is None
    ztf_file = sorted((Path(__file__).resolve().parents[1] / "data" / "ztf").rglob("*.avro"))[0]
    ztf = decode(ztf_file.read_bytes())[0]
    assert ztf.source == "ztf"
    assert FilterInput(ztf, raw=data).lsst_history() is None
