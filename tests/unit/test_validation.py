"""Schema validation of upstream JSON alerts (broker.validation) on the real samples.

Every sample is a real file from tests/data (origins in tests/data/SOURCES.md); broken
notices are real notices with one field changed. Expected paths and values are read from
the files with ``json``, not from our code.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from pathlib import Path

import pytest

from broker.errors import DecodeError
from broker.sources import decode
from broker.validation import IGWN_SCHEMA_ID, UPSTREAM_SCHEMA_DIR, SchemaValidator, default_validator

DATA = Path(__file__).resolve().parents[1] / "data"
GCN_SCHEMA_REPO = DATA / "gcn" / "gcn-schema"
GCN_EXAMPLES = sorted(GCN_SCHEMA_REPO.rglob("*.example.json"))
GWCELERY_KAFKA = sorted((DATA / "gcn" / "gwcelery-kafka").glob("*.json"))
PR161_EXAMPLES = sorted((DATA / "gcn" / "gcn-schema-pr161-classic").rglob("*.example.json"))
IGWN_JSON = sorted(
    p
    for p in (DATA / "igwn").rglob("*.json")
    if not p.name.endswith(".schema.json") and "superevent_id" in (obj := json.loads(p.read_bytes())) and "alert_type" in obj
)
_VERSION_RE = re.compile(r"^https://gcn\.nasa\.gov/schema/(?P<version>[^/]+)/(?P<path>gcn/.+)\.schema\.json$")


def _load(path: Path) -> dict:
    return json.loads(path.read_bytes())


def _rel(path: Path) -> str:
    return str(path.relative_to(DATA))


@pytest.fixture(scope="module")
def validator() -> SchemaValidator:
    return SchemaValidator()


@pytest.fixture(scope="module")
def exact() -> SchemaValidator:
    """Strict without tolerance for undeclared properties: the schema to the letter."""
    return SchemaValidator(tolerate_undeclared=False)


def test_sample_sets_are_present():
    # The counts quoted in broker/validation.py's docstring.
    assert len(GCN_EXAMPLES) == 50
    assert len(GWCELERY_KAFKA) == 12
    assert len(IGWN_JSON) == 12
    assert len(PR161_EXAMPLES) == 28


@pytest.mark.parametrize("path", sorted(GCN_SCHEMA_REPO.rglob("*.schema.json")), ids=_rel)
def test_vendored_gcn_schemas_are_byte_identical(path):
    copy_ = UPSTREAM_SCHEMA_DIR / "gcn-schema" / path.relative_to(GCN_SCHEMA_REPO)
    assert copy_.read_bytes() == path.read_bytes()


@pytest.mark.parametrize(
    "vendored, original",
    [
        ("igwn/igwn.alerts.Alert.schema.json", "igwn/schema/igwn.alerts.Alert.schema.json"),
        ("igwn/igwn.alerts.Alert.avsc", "igwn/schema/igwn.alerts.Alert.avsc"),
        *[(f"ztf/{n}.avsc", f"ztf/schema/{n}.avsc") for n in ("alert", "candidate", "cutout", "fp_hist", "prv_candidate")],
    ],
)
def test_vendored_igwn_and_ztf_schemas_are_byte_identical(vendored, original):
    assert (UPSTREAM_SCHEMA_DIR / vendored).read_bytes() == (DATA / original).read_bytes()


def test_every_ref_resolves_inside_the_local_registry(validator):
    """Walk every vendored schema and resolve each $ref against the registry: no fetch."""
    refs = 0

    def walk(node, resolver):
        nonlocal refs
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                resolver.lookup(node["$ref"])  # raises Unresolvable if not held locally
                refs += 1
            for value in node.values():
                walk(value, resolver)
        elif isinstance(node, list):
            for value in node:
                walk(value, resolver)

    for schema_id in validator.schema_ids:
        walk(validator._registry.contents(schema_id), validator._registry.resolver(base_uri=schema_id))
    assert len(validator.schema_ids) == 42  # 41 gcn-schema files + the IGWN JSON schema
    assert refs > 150


@pytest.mark.parametrize("path", GCN_EXAMPLES, ids=_rel)
def test_official_gcn_examples_validate_against_their_own_schema(exact, path):
    obj = _load(path)
    m = _VERSION_RE.match(obj["$schema"])
    result = exact.validate_gcn(obj)
    assert result.checked and result.ok
    assert result.schema == m["path"]
    assert result.schema_id == f"https://gcn.nasa.gov/schema/main/{m['path']}.schema.json"
    assert result.requested_version == m["version"]


@pytest.mark.parametrize("path", [p for p in GWCELERY_KAFKA if "$schema" in _load(p)], ids=_rel)
def test_recorded_gcn_notices_are_accepted_by_the_default_validator(validator, path):
    obj = _load(path)
    result = validator.validate_gcn(obj)
    assert result.checked
    assert result.requested_version == _VERSION_RE.match(obj["$schema"])["version"]
    assert decode(path.read_bytes())  # through the production dispatcher


def test_recorded_fermi_flight_notice_has_an_undeclared_property(exact, validator, caplog):
    """gwcelery's Fermi GBM flight notice carries photon_flux, which fermi/gbm/trigger
    (unevaluatedProperties: false) does not declare: rejected to the letter, warned by default."""
    path = DATA / "gcn" / "gwcelery-kafka" / "kafka_alert_fermi_flight.json"
    obj = _load(path)
    assert "photon_flux" in obj
    with pytest.raises(DecodeError, match=r"^GCN notice fermi/gbm/trigger: schema violation at /: .*'photon_flux'"):
        exact.validate_gcn(obj)
    with caplog.at_level(logging.WARNING, logger="broker.validation"):
        result = validator.validate_gcn(obj)
    assert result.checked and not result.ok
    assert len(result.violations) == 1 and "photon_flux" in result.violations[0]
    assert "photon_flux" in caplog.text


def test_only_that_recorded_notice_fails_to_the_letter(exact):
    failing = [p.name for p in GWCELERY_KAFKA if "$schema" in (o := _load(p)) and not _ok(exact, o)]
    assert failing == ["kafka_alert_fermi_flight.json"]


def _ok(v: SchemaValidator, obj: dict) -> bool:
    try:
        return v.validate_gcn(obj).ok
    except DecodeError:
        return False


def test_notice_version_other_than_ours_maps_to_our_copy(validator):
    path = DATA / "gcn" / "gwcelery-kafka" / "kafka_alert_icecube_gold.json"
    obj = _load(path)
    assert "/schema/v4.4.1/" in obj["$schema"]
    result = validator.validate_gcn(obj)
    assert result.requested_version == "v4.4.1"
    assert result.schema_id == "https://gcn.nasa.gov/schema/main/gcn/notices/icecube/single_neutrino_alerts.schema.json"
    assert result.ok


@pytest.mark.parametrize("path", IGWN_JSON, ids=_rel)
def test_igwn_samples_validate(exact, path):
    result = exact.validate_igwn(_load(path))
    assert result.checked and result.ok and result.schema_id == IGWN_SCHEMA_ID


@pytest.mark.parametrize("path", PR161_EXAMPLES, ids=_rel)
def test_notice_whose_schema_we_do_not_hold_is_accepted_unchecked(validator, path):
    obj = _load(path)
    result = validator.validate_gcn(obj)
    assert not result.checked and result.ok and result.schema_id is None
    assert result.schema == _VERSION_RE.match(obj["$schema"])["path"]


def test_unknown_schema_goes_through_decode(validator):
    path = DATA / "gcn/gcn-schema-pr161-classic/gcn/notices/classic/integral/spiacs_alert.example.json"
    (event,) = decode(path.read_bytes())
    assert event.time is not None


def _set(obj: dict, keys: tuple, value) -> None:
    for k in keys[:-1]:
        obj = obj[k]
    obj[keys[-1]] = value


def _del(obj: dict, keys: tuple) -> None:
    for k in keys[:-1]:
        obj = obj[k]
    del obj[keys[-1]]


_GBM = "gcn/gcn-schema/gcn/notices/fermi/gbm/trigger.alert.example.json"
_MAXI = "gcn/gcn-schema/gcn/notices/maxi/gsc.known.example.json"
_ICECUBE = "gcn/gwcelery-kafka/kafka_alert_icecube_gold.json"
_IGWN = "igwn/userguide/MS181101ab-initial.json"
_IGWN_RETRACTION = "igwn/userguide/MS181101ab-retraction.json"


@pytest.mark.parametrize(
    "sample, change, expected",
    [
        (_GBM, ("set", ("rate_snr",), "abc"), r"GCN notice fermi/gbm/trigger: schema violation at /rate_snr: 'abc' is not of type 'number'"),
        (_ICECUBE, ("set", ("ra",), "abc"), r"GCN notice icecube/single_neutrino_alerts: schema violation at /ra: 'abc' is not of type 'number'"),
        (_MAXI, ("del", ("mission",)), r"GCN notice maxi/gsc\.known: schema violation at /: 'mission' is a required property"),
        (_IGWN, ("set", ("event", "far"), "abc"), r"IGWN alert MS181101ab: schema violation at /event/far: 'abc' is not of type 'number'"),
        (_IGWN, ("del", ("event", "time")), r"IGWN alert MS181101ab: schema violation at /event: 'time' is a required property"),
        (_IGWN, ("del", ("time_created",)), r"IGWN alert MS181101ab: schema violation at /: 'time_created' is a required property"),
        (_IGWN, ("set", ("alert_type",), "FOO"), r"IGWN alert MS181101ab: schema violation at /alert_type: 'FOO' is not one of"),
        (_IGWN_RETRACTION, ("set", ("urls",), "x"), r"IGWN alert MS181101ab: schema violation at /urls: 'x' is not of type 'object'"),
    ],
)
def test_broken_field_is_a_decode_error_naming_path_and_schema(sample, change, expected):
    obj = _load(DATA / sample)
    op, keys, *value = change
    (_set if op == "set" else _del)(obj, keys, *value)
    with pytest.raises(DecodeError, match="^" + expected) as excinfo:
        decode(json.dumps(obj).encode())
    assert "\n" not in str(excinfo.value)


def test_reason_stays_short_when_the_offending_value_is_a_sky_map(validator):
    """A 1 MB base64 sky map put where a number belongs must not end up in the reason."""
    obj = _load(DATA / _IGWN)
    skymap = obj["event"]["skymap"]
    assert len(skymap) > 500_000
    obj["event"]["far"] = skymap
    with pytest.raises(DecodeError, match=r"at /event/far: '.*' is not of type 'number'") as excinfo:
        validator.validate_igwn(obj)
    assert len(str(excinfo.value)) < 400


def test_warn_and_off_modes(caplog):
    obj = _load(DATA / _ICECUBE)
    obj["ra"] = "abc"
    with caplog.at_level(logging.WARNING, logger="broker.validation"):
        result = SchemaValidator(gcn_mode="warn").validate_gcn(obj)
    assert result.checked and result.violations == ("/ra: 'abc' is not of type 'number'",)
    assert "schema violation at /ra" in caplog.text
    assert not SchemaValidator(gcn_mode="off").validate_gcn(obj).checked
    assert SchemaValidator().validate_gcn(obj, mode="off").ok
    with pytest.raises(ValueError, match="gcn_mode='loose'"):
        SchemaValidator(gcn_mode="loose")


def test_no_network_access(monkeypatch):
    """Build a fresh validator and validate every sample with sockets disabled."""

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    v = SchemaValidator(tolerate_undeclared=False)
    for path in GCN_EXAMPLES:
        assert v.validate_gcn(_load(path)).ok
    for path in IGWN_JSON:
        assert v.validate_igwn(_load(path)).ok
    for path in PR161_EXAMPLES:
        assert not v.validate_gcn(_load(path)).checked


def test_default_validator_is_built_once_and_lazily():
    default_validator.cache_clear()
    assert default_validator.cache_info().currsize == 0
    first = default_validator()
    assert default_validator() is first
    assert first.gcn_mode == first.igwn_mode == "strict" and first.tolerate_undeclared


def test_schema_dir_without_schemas_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no \\*.schema.json files"):
        SchemaValidator(tmp_path)
