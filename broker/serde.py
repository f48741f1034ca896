"""Wire format of our own topics.

``mma.events`` carries one normalized Event per message in Avro *single-object
encoding* (Avro 1.8+ specification, "Single object encoding": the two bytes
``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema, then
the Avro binary body). The fingerprint lets a reader pick the schema version without
a schema registry; the schema is ``broker/schemas/mma/event.avsc``, package data read
with :mod:`importlib.resources`.

Schema evolution: every schema version this package ever wrote stays readable. The
earlier versions are kept as ``broker/schemas/mma/past/event-<fingerprint>.avsc``; a
record written with one of them is read with Avro schema resolution into the current
schema (fields added since then take their defaults). Fields are only ever added, at
the end, optional with a null default: a reader that knows only an older version reads
the fields it knows and ignores the bytes after them.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cached_property
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from broker.errors import DecodeError
from broker.event import Event

EVENT_SCHEMA_PATH: Traversable = files("broker") / "schemas" / "mma" / "event.avsc"
"""The Avro schema of ``mma.events`` (package data)."""
PAST_SCHEMAS_DIR: Traversable = files("broker") / "schemas" / "mma" / "past"
"""Earlier versions of the ``mma.events`` schema, ``event-<CRC-64-AVRO hex>.avsc``: still read."""
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
EVENT_CONTENT_TYPE = "application/vnd.mma-broker.event+avro; version=1"


@dataclass(frozen=True)
class Provenance:
    """Who made an output: component name, package version, config hash (STYLE.md §7)."""

    component: str
    version: str
    config_hash: str


class EventCodec:
    """Encode/decode Events for ``mma.events`` (Avro single-object encoding).

    Parameters
    ----------
    schema_path : Path or Traversable
        The Avro schema (default :data:`EVENT_SCHEMA_PATH`, ``broker/schemas/mma/event.avsc``).
        With the default, records written with the earlier versions in
        :data:`PAST_SCHEMAS_DIR` are read too.
    """

    def __init__(self, schema_path: Path | Traversable = EVENT_SCHEMA_PATH) -> None:
        self._schema = fastavro.parse_schema(json.loads(schema_path.read_text(encoding="utf-8")))
        #: single-object header → writer schema (None: the current one, no resolution needed)
        self._writers: dict[bytes, Any] = {self.header: None}
        if schema_path == EVENT_SCHEMA_PATH:
            for past in sorted(PAST_SCHEMAS_DIR.iterdir(), key=lambda t: t.name):
                if past.name.endswith(".avsc"):
                    writer = fastavro.parse_schema(json.loads(past.read_text(encoding="utf-8")))
                    self._writers.setdefault(_header_of(writer), writer)

    def can_read(self, data: bytes) -> bool:
        """True if ``data`` starts with the single-object header of a schema version this codec reads."""
        return data[:10] in self._writers

    @cached_property
    def header(self) -> bytes:
        """``C3 01`` + 8-byte little-endian CRC-64-AVRO fingerprint of the schema."""
        # fastavro gives the fingerprint's 8 bytes, little-endian first, as hex
        return SINGLE_OBJECT_MAGIC + bytes.fromhex(fingerprint(to_parsing_canonical_form(self._schema), "CRC-64-AVRO"))

    def encode(self, event: Event, provenance: Provenance) -> bytes:
        """Serialize one Event with its provenance."""
        loc = event.localization.model_dump() if event.localization is not None else None
        if loc is not None:
            kind = loc.pop("type")
            loc = ("org.mma_broker.v1.PointLocalization" if kind == "point" else "org.mma_broker.v1.HealpixLocalization", loc)
        record = {
            "id": event.id,
            "source": event.source,
            "messenger": event.messenger,
            "mission": event.mission,
            "instrument": event.instrument,
            "upstream_id": event.upstream_id,
            "alert_type": event.alert_type,
            "time": event.time,
            "localization": loc,
            "properties_json": json.dumps(event.properties, separators=(",", ":"), default=str, ensure_ascii=False,
                                          allow_nan=False),
            "format": event.format,
            "provenance": {
                "component": provenance.component,
                "version": provenance.version,
                "config_hash": provenance.config_hash,
            },
            "category": event.category,
            "category_rule": event.category_rule,
        }
        buf = io.BytesIO()
        buf.write(self.header)
        fastavro.schemaless_writer(buf, self._schema, record)
        return buf.getvalue()

    def decode(self, data: bytes) -> tuple[Event, Provenance]:
        """Inverse of :meth:`encode`; also reads records of the earlier schema versions.

        A record of a version before ``category`` existed gets the category the rules
        give its Event now (:func:`broker.category.set_category`; they read only the
        Event's fields).

        Raises
        ------
        DecodeError
            If the bytes do not start with the single-object header of a known schema version.
        """
        header = data[:10]
        if header not in self._writers:
            raise DecodeError("not an mma.events v1 message (single-object header/fingerprint mismatch)")
        writer = self._writers[header]
        try:
            if writer is None:
                rec: dict[str, Any] = fastavro.schemaless_reader(io.BytesIO(data[10:]), self._schema)
            else:
                rec = fastavro.schemaless_reader(io.BytesIO(data[10:]), writer, self._schema)
        except (EOFError, ValueError, IndexError, UnicodeDecodeError) as exc:
            raise DecodeError(f"truncated or corrupt mma.events v1 message ({type(exc).__name__}: {exc})") from None
        loc = rec["localization"]
        if loc is not None:
            loc = dict(loc)
            loc["type"] = "point" if "error_radius" in loc else "healpix"
        prov = Provenance(**rec["provenance"])
        event = Event(
            id=rec["id"],
            source=rec["source"],
            messenger=rec["messenger"],
            mission=rec["mission"],
            instrument=rec["instrument"],
            upstream_id=rec["upstream_id"],
            alert_type=rec["alert_type"],
            time=rec["time"],
            localization=loc,
            properties=json.loads(rec["properties_json"]),
            format=rec["format"],
            category=rec.get("category"),
            category_rule=rec.get("category_rule"),
        )
        if event.category is None:
            from broker.category import set_category

            set_category(event)
        return event, prov


def _header_of(parsed_schema: Any) -> bytes:
    return SINGLE_OBJECT_MAGIC + bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed_schema), "CRC-64-AVRO"))


SCHEMA_HEADER = "mma.schema"
"""Header naming the Avro schema of a record: ``<full name>; crc64-avro=<hex>``."""


def schema_header(codec: EventCodec) -> tuple[str, bytes]:
    """The ``mma.schema`` header of records ``codec`` writes.

    Says where a reader finds the schema without a registry: the schema's full name
    (``org.mma_broker.v1.Event``, shipped in the package as ``mma/event.avsc``) and the
    CRC-64-AVRO fingerprint that the single-object header of the value also carries
    (hex, as in the value's bytes 2..9).
    """
    name = codec._schema.get("name", "Event") if isinstance(codec._schema, dict) else "Event"
    return (SCHEMA_HEADER, f"{name}; crc64-avro={codec.header[2:].hex()}".encode())
