"""Provenance (lineage-keyed) cache: data analysis as a function.

The INTEGRAL online analysis (Savchenko, Neronov, Ferrigno et al., the MMODA/ODA
platform) treats every analysis step as a pure function of its inputs, parameters
and code: its result is stored under a hash of exactly those, so asking the same
question twice does no work the second time, and each result carries its lineage.

Key: ``sha256`` of a canonical JSON document ``{step, inputs: {name: sha256 of the
canonical input}, params, code_version}``. Canonical JSON has sorted keys, compact
separators, floats written with ``repr`` (Python's shortest round-trip form), times as
ISO 8601 UTC, bytes and numpy arrays replaced by their sha256 (arrays with dtype and
shape), dataclasses and pydantic models by their fields.

``code_version`` = package version + a digest of the step function's source module
(:func:`code_version`), so editing the analysis code invalidates its cached results.

Backends: :class:`DirectoryCache` (JSON + binary products on disk, atomic writes) and
:class:`SqlCache` (one ``followup_cache`` table through SQLAlchemy, PostgreSQL in
production).
"""

from __future__ import annotations

import abc
import base64
import dataclasses
import hashlib
import inspect
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from astropy.time import Time

logger = logging.getLogger(__name__)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(obj: Any) -> Any:
    """Turn ``obj`` into plain JSON values in a canonical way (see module docstring).

    Raises
    ------
    TypeError
        If a value has no canonical form.
    """
    if obj is None or isinstance(obj, (bool, str, int)) and not isinstance(obj, np.bool_):
        return obj
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, Time):
        return {"time": obj.utc.isot + "Z"} if obj.isscalar else {"time": [t + "Z" for t in obj.utc.isot]}
    if isinstance(obj, datetime):
        if obj.tzinfo is not None:
            obj = obj.astimezone(timezone.utc).replace(tzinfo=None)
        return {"time": obj.isoformat() + "Z"}
    if isinstance(obj, date):
        return {"date": obj.isoformat()}
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"sha256": _sha256(bytes(obj))}
    if isinstance(obj, np.ndarray):
        data = np.ascontiguousarray(obj)
        return {"array": {"dtype": data.dtype.str, "shape": list(data.shape), "sha256": _sha256(data.tobytes())}}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((canonical(v) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if hasattr(obj, "model_dump"):
        return canonical(obj.model_dump(mode="json"))
    raise TypeError(f"provenance cache: no canonical form for {type(obj).__name__}")


def canonical_json(obj: Any) -> str:
    """Canonical JSON text of ``obj`` (sorted keys, compact, floats by repr)."""
    return json.dumps(canonical(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def input_key(value: Any) -> str:
    """sha256 of the canonical JSON of one input (bytes inputs: of their sha256 form)."""
    return _sha256(canonical_json(value).encode())


def lineage_key(step: str, inputs: Mapping[str, Any], params: Mapping[str, Any], code_version: str) -> str:
    """Key of one analysis step's result.

    Parameters
    ----------
    step : str
        Step name, e.g. ``"spiacs.excess"``.
    inputs : mapping
        Named inputs (data products, event, ...); each is reduced to its own key.
    params : mapping
        Parameters of the step.
    code_version : str
        See :func:`code_version`.

    Returns
    -------
    str
        64 hex digits.
    """
    document = {
        "step": step,
        "inputs": {name: input_key(value) for name, value in inputs.items()},
        "params": params,
        "code_version": code_version,
    }
    return _sha256(canonical_json(document).encode())


def source_identity(source: Any) -> dict[str, Any]:
    """What distinguishes a data source in cache keys (kind, URL or folder listing).

    A local folder is identified by its file names, sizes and modification times, so
    adding a light curve or orbit file invalidates cached "no data" answers.
    """
    ident: dict[str, Any] = {"kind": type(source).__name__}
    for attr in ("url", "url_template", "time_bin_s"):
        if hasattr(source, attr):
            ident[attr] = getattr(source, attr)
    directory = getattr(source, "directory", None)
    if directory is not None:
        files = sorted(p for p in Path(directory).rglob("*") if p.is_file())
        ident["directory"] = str(directory)
        ident["files"] = [[str(p.relative_to(directory)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return ident


def code_version(fn: Callable[..., Any]) -> str:
    """Package version + 12-hex digest of the source module of ``fn``."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        package = version("mma-broker")
    except PackageNotFoundError:  # running from a checkout that is not installed
        package = "0+unknown"
    module = inspect.getmodule(fn)
    try:
        source = inspect.getsource(module) if module is not None else inspect.getsource(fn)
    except (OSError, TypeError):
        source = getattr(fn, "__qualname__", repr(fn))
    return f"{package}+{_sha256(source.encode())[:12]}"


@dataclass(frozen=True)
class StepOutput:
    """What a step returns when it also has binary products (PNG plots, FITS files).

    Attributes
    ----------
    value : JSON-serializable
        The structured result.
    products : dict of str to bytes
        Named binary products.
    """

    value: Any
    products: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class LineageRecord:
    """Where a cached result comes from; what the tests assert on for a hit.

    Attributes
    ----------
    step : str
    key : str
        :func:`lineage_key` of the result.
    input_keys : dict of str to str
        Key of each named input.
    params : dict
        Canonical parameters.
    code_version : str
    created_at : str
        ISO UTC time the result was computed.
    hit_count : int
        How many times it was served from the cache.
    """

    step: str
    key: str
    input_keys: Mapping[str, str]
    params: Mapping[str, Any]
    code_version: str
    created_at: str
    hit_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {**dataclasses.asdict(self), "input_keys": dict(self.input_keys), "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LineageRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclass(frozen=True)
class CachedResult:
    """A stored result: value, binary products and lineage."""

    value: Any
    products: Mapping[str, bytes]
    lineage: LineageRecord


class ProvenanceCache(abc.ABC):
    """Interface of the lineage-keyed cache."""

    @abc.abstractmethod
    def get(self, key: str) -> CachedResult | None:
        """The stored result for ``key``, or None."""

    @abc.abstractmethod
    def put(self, key: str, result: StepOutput | Any, lineage: LineageRecord) -> None:
        """Store a result (a value, or a :class:`StepOutput`) under ``key``; first write wins."""

    @abc.abstractmethod
    def record_hit(self, key: str) -> LineageRecord:
        """Count one hit for ``key`` and return the updated lineage."""

    def cached(
        self,
        step: str,
        inputs: Mapping[str, Any],
        params: Mapping[str, Any],
        code_version: str,
        fn: Callable[[], Any],
    ) -> tuple[Any, bool, LineageRecord]:
        """Return the result of ``fn()`` for these inputs, computing it only once.

        Parameters
        ----------
        step, inputs, params, code_version
            As for :func:`lineage_key`.
        fn : callable
            Computes the result with no arguments; returns a JSON-serializable value or
            a :class:`StepOutput`.

        Returns
        -------
        result : object or StepOutput
            The value as stored (JSON round trip), wrapped in StepOutput if ``fn``
            returned one (or if the stored entry has products).
        hit : bool
            True if served from the cache.
        lineage : LineageRecord
        """
        key = lineage_key(step, inputs, params, code_version)
        found = self.get(key)
        if found is not None:
            lineage = self.record_hit(key)
            logger.debug("cache hit %s %s (hits %d)", step, key[:12], lineage.hit_count)
            return _wrap(found.value, found.products), True, lineage
        output = fn()
        value, products = (output.value, dict(output.products)) if isinstance(output, StepOutput) else (output, {})
        stored_value = json.loads(canonical_json(value))
        lineage = LineageRecord(
            step=step,
            key=key,
            input_keys={name: input_key(v) for name, v in inputs.items()},
            params=json.loads(canonical_json(params)),
            code_version=code_version,
            created_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        )
        self.put(key, StepOutput(stored_value, products), lineage)
        return _wrap(stored_value, products) if isinstance(output, StepOutput) else stored_value, False, lineage


def _wrap(value: Any, products: Mapping[str, bytes]) -> Any:
    return StepOutput(value, dict(products)) if products else value


def _split(result: StepOutput | Any) -> tuple[Any, dict[str, bytes]]:
    if isinstance(result, StepOutput):
        return json.loads(canonical_json(result.value)), dict(result.products)
    return json.loads(canonical_json(result)), {}


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class DirectoryCache(ProvenanceCache):
    """Results as files: ``ROOT/ab/<key>/result.json``, ``hits.json``, ``products/<name>``.

    Products are written first and ``result.json`` last, each atomically (temporary
    file + ``os.replace``), so a reader sees either no entry or a complete one, even if
    the writer is killed. Concurrent hits may under-count ``hit_count`` (last writer
    wins); results themselves are never corrupted.

    Parameters
    ----------
    root : path
        Cache directory (created when needed).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def _dir(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"provenance cache: malformed key {key!r}")
        return self.root / key[:2] / key

    def get(self, key: str) -> CachedResult | None:
        entry = self._dir(key)
        try:
            record = json.loads((entry / "result.json").read_text())
        except FileNotFoundError:
            return None
        lineage = LineageRecord.from_dict(record["lineage"])
        hits = entry / "hits.json"
        if hits.exists():
            lineage = dataclasses.replace(lineage, hit_count=int(json.loads(hits.read_text())["hit_count"]))
        products = {name: (entry / "products" / name).read_bytes() for name in record.get("products", [])}
        return CachedResult(record["value"], products, lineage)

    def put(self, key: str, result: StepOutput | Any, lineage: LineageRecord) -> None:
        entry = self._dir(key)
        if (entry / "result.json").exists():
            return
        value, products = _split(result)
        for name, data in products.items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"provenance cache: bad product name {name!r}")
            _atomic_write(entry / "products" / name, bytes(data))
        record = {"value": value, "products": sorted(products), "lineage": lineage.to_dict()}
        _atomic_write(entry / "result.json", json.dumps(record, sort_keys=True).encode())

    def record_hit(self, key: str) -> LineageRecord:
        found = self.get(key)
        if found is None:
            raise KeyError(f"provenance cache: no entry {key}")
        lineage = dataclasses.replace(found.lineage, hit_count=found.lineage.hit_count + 1)
        _atomic_write(self._dir(key) / "hits.json", json.dumps({"hit_count": lineage.hit_count}).encode())
        return lineage


def cache_table(metadata: Any) -> Any:
    """Define the ``followup_cache`` table on a SQLAlchemy ``MetaData``.

    Columns: ``key`` (sha256, primary key), ``step``, ``code_version``, ``created_at``,
    ``hit_count``, ``lineage`` (JSON), ``value`` (JSON), ``products`` (JSON: name →
    base64 bytes). The follow-up's Alembic revision (``followup/migrations``)
    creates the same table.
    """
    import sqlalchemy as sa

    return sa.Table(
        "followup_cache",
        metadata,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("step", sa.String(200), nullable=False, index=True),
        sa.Column("code_version", sa.String(200), nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("hit_count", sa.Integer, nullable=False, default=0),
        sa.Column("lineage", sa.JSON, nullable=False),
        sa.Column("value", sa.JSON, nullable=False),
        sa.Column("products", sa.JSON, nullable=False),
    )


class SqlCache(ProvenanceCache):
    """Results in the ``followup_cache`` table (PostgreSQL in production, any SQLAlchemy engine).

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
        Database engine.
    create_table : bool
        Create the table if missing (``metadata.create_all``); default True until the
        Alembic migration exists.
    """

    def __init__(self, engine: Any, create_table: bool = True) -> None:
        import sqlalchemy as sa

        self.engine = engine
        self.metadata = sa.MetaData()
        self.table = cache_table(self.metadata)
        if create_table:
            self.metadata.create_all(engine)

    def get(self, key: str) -> CachedResult | None:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            row = conn.execute(sa.select(self.table).where(self.table.c.key == key)).mappings().first()
        if row is None:
            return None
        lineage = dataclasses.replace(LineageRecord.from_dict(row["lineage"]), hit_count=int(row["hit_count"]))
        products = {name: base64.b64decode(data) for name, data in row["products"].items()}
        return CachedResult(row["value"], products, lineage)

    def put(self, key: str, result: StepOutput | Any, lineage: LineageRecord) -> None:
        import sqlalchemy as sa

        value, products = _split(result)
        row = {
            "key": key, "step": lineage.step, "code_version": lineage.code_version,
            "created_at": lineage.created_at, "hit_count": lineage.hit_count,
            "lineage": lineage.to_dict(), "value": value,
            "products": {name: base64.b64encode(bytes(data)).decode() for name, data in products.items()},
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(self.table).values(**row))
        except sa.exc.IntegrityError:
            logger.debug("cache entry %s already stored by another worker", key[:12])

    def record_hit(self, key: str) -> LineageRecord:
        import sqlalchemy as sa

        with self.engine.begin() as conn:
            conn.execute(
                sa.update(self.table).where(self.table.c.key == key).values(hit_count=self.table.c.hit_count + 1)
            )
            row = conn.execute(
                sa.select(self.table.c.lineage, self.table.c.hit_count).where(self.table.c.key == key)
            ).first()
        if row is None:
            raise KeyError(f"provenance cache: no entry {key}")
        return dataclasses.replace(LineageRecord.from_dict(row[0]), hit_count=int(row[1]))
