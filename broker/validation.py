"""Validate upstream JSON alerts against the upstream schemas kept in ``broker/schemas/upstream/``
(package data, read with :mod:`importlib.resources`).

What is checked
---------------
* GCN Kafka notices of the unified schema (nasa-gcn/gcn-schema, JSON Schema Draft
  2020-12, as every file declares in ``$schema``): the notice's own ``$schema`` URL names
  the schema. Its version segment (``main``, ``v4.0.0``, ...) may differ from our copy,
  which is ``main`` at gcn-schema commit 2ca8bdf5 (see ``broker/schemas/upstream/README.md``):
  the notice is checked against our copy of the same path and the result says which
  version the notice asked for and which copy was used.
* IGWN ``igwn.gwalert`` JSON alerts against ``igwn.alerts.Alert.schema.json``
  (igwn-gwalert-schema 1.3.0).

Cross-file ``$ref`` s (``../core/Localization.schema.json``) resolve through a
:class:`referencing.Registry` holding every ``*.schema.json`` under the schema folder,
keyed by its ``$id`` (``https://gcn.nasa.gov/schema/main/...``). The registry has no
``retrieve`` hook, so a reference it does not hold fails; nothing is ever fetched.

Policy
------
* A GCN notice whose schema we do not hold (a new mission, a schema added upstream after
  our copy, the unreleased Classic-notice JSON of gcn-schema PR #161) is **not** an
  error: GCN adds missions often and the decoder only needs the core fields, which it
  checks itself. The result has ``checked=False`` and the fact is logged at DEBUG.
* Formats (``date-time``, ``uri``) are annotations here, not assertions (the Draft
  2020-12 default): the decoders parse times themselves and fail with a precise reason.
  ``contentEncoding: base64`` of sky maps is an annotation too, so a 1 MB sky-map
  string costs one type check, not a decode.
* Modes: ``"strict"`` raises :class:`~broker.errors.DecodeError` on the most relevant
  violation; ``"warn"`` logs it at WARNING and returns it in the result; ``"off"`` skips
  the check. In strict mode, properties a schema does not declare (``unevaluatedProperties:
  false`` / ``additionalProperties: false``) are tolerated by default (logged at WARNING,
  listed in the result): producers add fields before the schema catches up, and a field
  we do not know cannot mislead a decoder that never reads it. Missing required fields,
  wrong types, values outside an ``enum`` or a range are rejected.
* Defaults (:func:`default_validator`): strict, with undeclared properties tolerated,
  for both families. Measured over tests/data: all 50 gcn-schema ``*.example.json``
  (44 notices, the circulars example, 5 ``core/`` fragments) and all 12 IGWN gwalert
  JSON samples (7 full alerts, 5 user-guide display examples) validate against their
  own schemas; of the 11 gwcelery Kafka fixtures that carry a
  ``$schema`` (real notices recorded by gwcelery), 10 validate and one, the Fermi GBM
  flight notice of 2024-08-12, has an undeclared ``photon_flux`` that our fermi/gbm
  schema copy forbids. Strict mode with that tolerance accepts every real sample and
  still sends a notice with a broken field to the dead-letter topic; ``"warn"`` would
  let such a notice reach the decoder, which would quietly drop the broken value.
* IGWN Avro records are not checked here: fastavro reads them with the container's
  writer schema, which already enforces field presence and types, and their sky map is
  bytes where the JSON schema expects base64 text.

Cost (measured on the samples, one core): a GCN notice (0.3-2.7 kB) takes 0.14-2.6 ms,
median 0.7 ms (``unevaluatedProperties`` over the ``allOf`` chains of ``core/`` schemas
dominates); an IGWN alert with its 1 MB base64 sky map takes 0.19 ms, against 8.5 ms for
the whole decode. Plain jsonschema takes 3.3 ms on that alert because it formats the
repr of the sky map in every failing ``oneOf`` branch (``{"type": "null"}``);
``_bounded_type`` and ``_bounded_one_of`` bound those reprs.

Hostile input: the work of one check grows with the alert, which
:func:`broker.sources._load_json` already bounds (``max_json_depth``,
``max_json_items``, 100,000). Within that, validating a 1M-item array took 6 s and one of
1M wrong-typed items 41 s (building a million errors), so the check stops at the CPU
budget (``max_decode_cpu_s``, looked at every 4096 type checks and every error), keeps
at most 100 errors, and the messages quoting a whole array or object (``type``,
``oneOf``, ``minItems``, ``maxItems``) show a bounded repr. Reasons are safe to encode
as UTF-8 (a key holding a lone surrogate appears escaped).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import re
import reprlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from broker.errors import DecodeError
from broker.limits import check_cpu

logger = logging.getLogger(__name__)

#: Where the upstream schemas live (byte-for-byte copies; origins in its README.md).
UPSTREAM_SCHEMA_DIR: Traversable = files("broker") / "schemas" / "upstream"
#: ``$id`` prefix of our gcn-schema copy; a notice's path after the version maps onto it.
GCN_SCHEMA_BASE = "https://gcn.nasa.gov/schema/main/"
#: ``$id`` of ``igwn.alerts.Alert.schema.json``.
IGWN_SCHEMA_ID = "http://emfollow.docs.ligo.org/_static/igwn.alerts.Alert.schema.json"

Mode = Literal["strict", "warn", "off"]
MODES: tuple[Mode, ...] = ("strict", "warn", "off")

_GCN_URL_RE = re.compile(
    r"^https?://gcn\.nasa\.gov/schema/(?P<version>[^/]+)/(?P<path>gcn/.+)\.schema\.json$"
)
_DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
_MAX_VIOLATIONS = 10
_MAX_ERRORS = 100  # errors collected per check; best_match picks among them
_CPU_CHECK_EVERY = 4096  # type checks between two CPU-budget checks
_type_checks = 0  # approximate under threads (a lost increment only delays a check)
#: Keywords whose only complaint is a property the schema does not declare.
_UNDECLARED_PROPERTY_KEYWORDS = frozenset({"unevaluatedProperties", "additionalProperties"})
_MAX_REASON_CHARS = 400


def _short_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxstring = r.maxother = 60
    r.maxdict = r.maxlist = 4
    r.maxlevel = 2
    return r


def _bounded_type(validator, types, instance, schema) -> Iterator[ValidationError]:
    """The Draft 2020-12 ``type`` keyword with a bounded instance repr.

    jsonschema builds ``f"{instance!r} is not of type ..."`` eagerly, also inside
    ``oneOf: [{"type": "null"}, ...]`` branches that fail on every valid alert: for an
    IGWN alert that is a repr of its 1 MB base64 sky map, twice, per alert.
    """
    global _type_checks
    _type_checks += 1
    if _type_checks % _CPU_CHECK_EVERY == 0:  # nearly every node visited has a ``type``
        check_cpu("schema validation")
    types = [types] if isinstance(types, str) else types
    if not any(validator.is_type(instance, t) for t in types):
        yield ValidationError(f"{_short_repr().repr(instance)} is not of type {', '.join(map(repr, types))}")


def _bounded_one_of(validator, one_of, instance, schema) -> Iterator[ValidationError]:
    """The ``oneOf`` keyword (as jsonschema 4.x) with a bounded instance repr."""
    all_errors: list[ValidationError] = []
    first_valid = None
    remaining = iter(enumerate(one_of))
    for index, subschema in remaining:
        errs = list(itertools.islice(validator.descend(instance, subschema, schema_path=index), _MAX_ERRORS))
        if not errs:
            first_valid = index
            break
        all_errors.extend(errs)
    else:
        yield ValidationError(
            f"{_short_repr().repr(instance)} is not valid under any of the given schemas", context=all_errors
        )
        return
    more_valid = [i for i, each in remaining if validator.evolve(schema=each).is_valid(instance)]
    if more_valid:
        yield ValidationError(
            f"{_short_repr().repr(instance)} is valid under more than one of the given schemas "
            f"(#{first_valid} and #{more_valid[0]})"
        )


def _bounded_min_items(validator, m, instance, schema) -> Iterator[ValidationError]:
    """The ``minItems`` keyword with a bounded instance repr."""
    if validator.is_type(instance, "array") and len(instance) < m:
        message = "should be non-empty" if m == 1 else "is too short"
        yield ValidationError(f"{_short_repr().repr(instance)} {message}")


def _bounded_max_items(validator, m, instance, schema) -> Iterator[ValidationError]:
    """The ``maxItems`` keyword with a bounded instance repr (and the count)."""
    if validator.is_type(instance, "array") and len(instance) > m:
        message = "is expected to be empty" if m == 0 else f"is too long ({len(instance):,} items, at most {m})"
        yield ValidationError(f"{_short_repr().repr(instance)} {message}")


_Validator = validators.extend(Draft202012Validator, {
    "type": _bounded_type, "oneOf": _bounded_one_of,
    "minItems": _bounded_min_items, "maxItems": _bounded_max_items,
})


@dataclass(frozen=True)
class ValidationResult:
    """The outcome of checking one alert against its upstream schema.

    Attributes
    ----------
    schema : str or None
        Which schema: ``"gcn/notices/fermi/gbm/trigger"`` or ``"igwn.alerts.Alert"``;
        None when the alert names none we recognize.
    schema_id : str or None
        ``$id`` of our copy that was used; None when not checked.
    requested_version : str or None
        The version segment of the notice's ``$schema`` (``"main"``, ``"v4.0.0"``);
        None for IGWN alerts, which do not name a version.
    checked : bool
        False when the mode was ``"off"`` or we hold no such schema.
    violations : tuple of str
        One line each, ``"<json pointer>: <message>"``; empty when valid. At most 10.
    """

    schema: str | None
    schema_id: str | None
    requested_version: str | None
    checked: bool
    violations: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no violation was found (also when nothing was checked)."""
        return not self.violations


def _pointer(error: ValidationError) -> str:
    """RFC 6901 JSON pointer of the failing instance (``/`` for the document root)."""
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in error.absolute_path]
    return "/" + "/".join(parts)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 3] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _schema_files(folder: Path | Traversable) -> list[Traversable]:
    """Every ``*.schema.json`` below ``folder``, at any depth, sorted by relative path.

    Walks a :class:`~importlib.resources.abc.Traversable` (which has no ``rglob``), so
    the schemas are found wherever the package is installed."""
    out: list[tuple[str, Traversable]] = []
    stack: list[tuple[str, Traversable]] = [("", folder)]
    while stack:
        prefix, here = stack.pop()
        for child in here.iterdir():
            rel = f"{prefix}{child.name}"
            if child.is_dir():
                stack.append((rel + "/", child))
            elif child.name.endswith(".schema.json"):
                out.append((rel, child))
    return [child for _, child in sorted(out, key=lambda item: item[0])]


class SchemaValidator:
    """Checks GCN unified-schema notices and IGWN gwalerts against local upstream schemas.

    Build one per process (see :func:`default_validator`) and share it: construction
    reads the schema folder (~50 small files, a few ms); compiled validators are cached
    per schema ``$id`` on first use. Thread-safe for reading after construction (the
    cache may compile a validator twice under a race, harmlessly).

    Parameters
    ----------
    schema_dir : Path or Traversable
        Folder holding the upstream schemas; every ``*.schema.json`` below it, at any
        depth, is registered under its ``$id``. Default :data:`UPSTREAM_SCHEMA_DIR`
        (``broker/schemas/upstream``, package data).
    gcn_mode, igwn_mode : {"strict", "warn", "off"}
        What a violation does: raise :class:`~broker.errors.DecodeError`, log a warning
        and report it in the result, or skip the check.
    tolerate_undeclared : bool
        In strict mode, only warn (and report in the result) when the sole violations
        are properties the schema does not declare. Default True.

    Raises
    ------
    ValueError
        For an unknown mode, a schema file without ``$id``, or two files sharing one.
    """

    def __init__(
        self,
        schema_dir: Path | Traversable = UPSTREAM_SCHEMA_DIR,
        *,
        gcn_mode: Mode = "strict",
        igwn_mode: Mode = "strict",
        tolerate_undeclared: bool = True,
    ) -> None:
        for name, mode in (("gcn_mode", gcn_mode), ("igwn_mode", igwn_mode)):
            if mode not in MODES:
                raise ValueError(f"{name}={mode!r}: expected one of {', '.join(MODES)}")
        self.gcn_mode: Mode = gcn_mode
        self.igwn_mode: Mode = igwn_mode
        self.tolerate_undeclared = tolerate_undeclared
        self.schema_dir = schema_dir
        self._registry, self._ids = self._load(self.schema_dir)
        self._compiled: dict[str, Any] = {}

    @staticmethod
    def _load(schema_dir: Path | Traversable) -> tuple[Registry, frozenset[str]]:
        resources: dict[str, Resource] = {}
        for path in _schema_files(schema_dir):
            contents = json.loads(path.read_bytes())
            uri = contents.get("$id") if isinstance(contents, dict) else None
            if not uri:
                raise ValueError(f"{path}: JSON schema without $id, cannot be referenced")
            if uri in resources:
                raise ValueError(f"{path}: $id {uri} already used by another schema file")
            if contents.get("$schema") == _DRAFT_2020_12:
                # Same dialect, said by default_specification: without "$schema", jsonschema
                # keeps our extended validator class (bounded reprs, CPU checks) across a
                # $ref into this file; with it, validator_for() switches back to the plain
                # Draft202012Validator there (a 1M-item array then took 6 s unchecked).
                contents = {k: v for k, v in contents.items() if k != "$schema"}
            resources[uri] = Resource.from_contents(contents, default_specification=DRAFT202012)
        if not resources:
            raise ValueError(f"{schema_dir}: no *.schema.json files (broker/schemas/upstream missing from the installation?)")
        logger.debug("loaded %d upstream JSON schemas from %s", len(resources), schema_dir)
        return Registry().with_resources(resources.items()).crawl(), frozenset(resources)

    @property
    def schema_ids(self) -> frozenset[str]:
        """``$id`` of every schema held."""
        return self._ids

    def _validator(self, schema_id: str):
        validator = self._compiled.get(schema_id)
        if validator is None:
            schema = self._registry.contents(schema_id)
            validator = _Validator(schema, registry=self._registry)
            self._compiled[schema_id] = validator
        return validator

    def _check(self, obj: Mapping, schema_id: str, label: str, mode: Mode) -> tuple[str, ...]:
        errors = []
        for error in self._validator(schema_id).iter_errors(obj):
            errors.append(error)
            check_cpu(f"{label}: schema validation")
            if len(errors) >= _MAX_ERRORS:
                break
        check_cpu(f"{label}: schema validation")
        if not errors:
            return ()
        fatal = errors
        if mode == "strict" and self.tolerate_undeclared:
            fatal = [e for e in errors if e.validator not in _UNDECLARED_PROPERTY_KEYWORDS]
        first = best_match(fatal or errors)
        reason = _one_line(f"{label}: schema violation at {_pointer(first)}: {first.message}")
        if mode == "strict" and fatal:
            raise DecodeError(reason)
        others = [e for e in errors if e is not first][: _MAX_VIOLATIONS - 1]
        logger.warning("%s (%d violation(s); accepted, mode=%s)", reason, len(errors), mode)
        return tuple(_one_line(f"{_pointer(e)}: {e.message}") for e in [first, *others])

    def gcn_schema_id(self, obj: Mapping) -> tuple[str | None, str | None, str | None]:
        """Map a notice's ``$schema`` onto our copy.

        Returns
        -------
        schema : str or None
            Path without version and suffix, e.g. ``"gcn/notices/fermi/gbm/trigger"``.
        schema_id : str or None
            ``$id`` of our copy of it, None when we do not hold it.
        version : str or None
            The version segment the notice named.
        """
        m = _GCN_URL_RE.match(str(obj.get("$schema", "")))
        if not m:
            return None, None, None
        schema_id = f"{GCN_SCHEMA_BASE}{m['path']}.schema.json"
        return m["path"], (schema_id if schema_id in self._ids else None), m["version"]

    def validate_gcn(self, obj: Mapping, mode: Mode | None = None) -> ValidationResult:
        """Check a GCN unified-schema notice against the schema its ``$schema`` names.

        Parameters
        ----------
        obj : Mapping
            The decoded JSON notice.
        mode : {"strict", "warn", "off"}, optional
            Overrides ``gcn_mode`` for this call.

        Returns
        -------
        ValidationResult
            ``checked=False`` when the notice has no ``$schema`` (e.g. gwcelery's Swift
            Guano fixture) or names one we do not hold; never an error.

        Raises
        ------
        DecodeError
            In strict mode, on a violation: ``"GCN notice fermi/gbm/trigger: schema
            violation at /ra: 'abc' is not of type 'number'"``.
        """
        mode = mode or self.gcn_mode
        path, schema_id, version = self.gcn_schema_id(obj)
        if mode == "off" or schema_id is None:
            if path is not None and mode != "off":
                logger.debug("GCN notice %s (%s): schema not held locally, not validated", path, version)
            return ValidationResult(path, None, version, checked=False)
        label = f"GCN notice {path.removeprefix('gcn/notices/')}"
        violations = self._check(obj, schema_id, label, mode)
        return ValidationResult(path, schema_id, version, checked=True, violations=violations)

    def validate_igwn(self, obj: Mapping, mode: Mode | None = None) -> ValidationResult:
        """Check an ``igwn.gwalert`` JSON alert against ``igwn.alerts.Alert.schema.json``.

        Parameters
        ----------
        obj : Mapping
            The decoded JSON alert (sky map still base64 text).
        mode : {"strict", "warn", "off"}, optional
            Overrides ``igwn_mode`` for this call.

        Returns
        -------
        ValidationResult

        Raises
        ------
        DecodeError
            In strict mode, on a violation: ``"IGWN alert S230518h: schema violation at
            /event/far: 'x' is not of type 'number'"``.
        """
        mode = mode or self.igwn_mode
        if mode == "off":
            return ValidationResult("igwn.alerts.Alert", None, None, checked=False)
        sid = obj.get("superevent_id") if isinstance(obj.get("superevent_id"), str) else "(no superevent_id)"
        violations = self._check(obj, IGWN_SCHEMA_ID, f"IGWN alert {sid}", mode)
        return ValidationResult("igwn.alerts.Alert", IGWN_SCHEMA_ID, None, checked=True, violations=violations)


@functools.lru_cache(maxsize=1)
def default_validator() -> SchemaValidator:
    """The validator :func:`broker.sources.decode` uses, built on first call (not at import).

    Strict for both families, undeclared properties tolerated; the counts behind that
    choice are in this module's docstring.
    """
    return SchemaValidator()
