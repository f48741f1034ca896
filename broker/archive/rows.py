"""Mapping between :class:`~broker.event.Event` and rows of the ``events`` table.

Kept free of database I/O so that it can be unit-tested on its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from math import isfinite
from typing import Any

import numpy as np

from broker.errors import BrokerError
from broker.event import Event, HealpixLocalization, PointLocalization, format_time
from broker.archive.raw import RawRef

HEALPIX_ORDER = 29
"""Order of the nested HEALPix index in column ``hpx`` (healpix-alchemy's LEVEL)."""


class ArchiveDataError(BrokerError):
    """An Event cannot be stored as it is (e.g. NaN in properties, which JSONB rejects)."""


@dataclass(frozen=True, slots=True)
class KafkaMeta:
    """Where a message came from in Kafka (None for files replayed without Kafka)."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class ArchiveItem:
    """One Event to archive with the raw message it was decoded from.

    Attributes
    ----------
    event : Event
    raw : bytes
        The upstream message exactly as received; several Events decoded from one
        Avro container pass the same bytes and share one stored copy.
    kafka : KafkaMeta or None
    """

    event: Event
    raw: bytes
    kafka: KafkaMeta | None = None


@dataclass(frozen=True, slots=True)
class ArchivedEvent:
    """An Event as read back from the archive, with the broker's metadata.

    Attributes
    ----------
    event : Event
        Rebuilt from the row; ``time`` is formatted with millisecond precision;
        ``category``/``category_rule`` are None for rows archived before migration 0008
        and not recategorized since (:mod:`broker.archive.recategorize`).
    retracted : bool
        True once a retraction of the same (source, upstream_id) is archived.
    retracted_by : str or None
        Event.id of that retraction.
    ingested_at : datetime
        When the row was first written (UTC, aware).
    kafka : KafkaMeta or None
    raw : RawRef
    hpx : int or None
        Nested HEALPix index at order 29 of the point position.
    """

    event: Event
    retracted: bool
    retracted_by: str | None
    ingested_at: datetime
    kafka: KafkaMeta | None
    raw: RawRef
    hpx: int | None


def parse_time(iso_z: str) -> datetime:
    """Parse Event.time (ISO 8601 UTC ending in ``Z``) to an aware datetime."""
    t = datetime.fromisoformat(iso_z[:-1] if iso_z.endswith("Z") else iso_z)
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _check_json(value: Any, event_id: str, field: str) -> None:
    """Reject NaN/Infinity anywhere in ``value``: JSONB cannot hold them.

    Exact ``dict``/``list``/scalar types (all that decoders and ``model_dump`` give)
    are told apart by ``type(...) is``; anything else (a float or mapping subclass)
    takes the general checks. ``isinstance`` against ``typing.Mapping`` for every
    value goes through typing's and abc's subclass hooks: it made :func:`event_rows`
    cost 0.012 core-ms per real ZTF alert instead of 0.004 (docs/benchmarks.md,
    "End to end").
    """
    t = type(value)
    if t is dict:
        for k, v in value.items():
            tv = type(v)
            if tv is float:
                if not isfinite(v):
                    _not_json(v, event_id, f"{field}.{k}")
            elif tv not in _JSON_LEAVES:
                _check_json(v, event_id, f"{field}.{k}")
    elif t is list or t is tuple:
        for i, v in enumerate(value):
            tv = type(v)
            if tv is float:
                if not isfinite(v):
                    _not_json(v, event_id, f"{field}[{i}]")
            elif tv not in _JSON_LEAVES:
                _check_json(v, event_id, f"{field}[{i}]")
    elif t in _JSON_LEAVES:
        return
    elif isinstance(value, float):
        if not isfinite(value):
            _not_json(value, event_id, field)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _check_json(v, event_id, f"{field}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json(v, event_id, f"{field}[{i}]")


def _not_json(value: float, event_id: str, field: str) -> None:
    raise ArchiveDataError(f"event {event_id}: {field} holds {value!r}, which JSON cannot store")


_JSON_LEAVES = frozenset({str, int, bool, type(None)})
"""Exact types that cannot hold NaN or Infinity (``float`` is checked, containers walked)."""


def healpix_index(ra_deg: Sequence[float], dec_deg: Sequence[float]) -> np.ndarray:
    """Nested HEALPix indices at order 29 of ICRS positions (vectorized).

    Parameters
    ----------
    ra_deg, dec_deg : array_like, shape (n,)
        ICRS right ascension and declination, deg.

    Returns
    -------
    ndarray of int64, shape (n,)
        Same numbering as :class:`healpix_alchemy.Point` (``HPX.lonlat_to_healpix``).
    """
    import astropy.units as u
    from astropy_healpix import core

    return core.lonlat_to_healpix(
        np.asarray(ra_deg, dtype=float) * u.deg,
        np.asarray(dec_deg, dtype=float) * u.deg,
        2**HEALPIX_ORDER,
        order="nested",
    ).astype(np.int64)


def event_rows(items: Sequence[ArchiveItem], refs: Sequence[RawRef]) -> list[dict[str, Any]]:
    """Rows for the ``events`` table, one per item, in order.

    Parameters
    ----------
    items : sequence of ArchiveItem, length n
    refs : sequence of RawRef, length n
        Where each item's raw bytes were stored.

    Returns
    -------
    list of dict
        Column name → value; ``localization`` and ``properties`` are JSON-ready dicts.

    Raises
    ------
    ArchiveDataError
        If an Event holds a value PostgreSQL cannot store (NaN or infinite in JSON).
    """
    rows: list[dict[str, Any]] = []
    point_rows: list[int] = []
    ras: list[float] = []
    decs: list[float] = []
    for i, (item, ref) in enumerate(zip(items, refs, strict=True)):
        ev = item.event
        loc = ev.localization
        ra = dec = err = area90 = None
        if isinstance(loc, PointLocalization):
            ra, dec, err = loc.ra, loc.dec, loc.error_radius
        elif isinstance(loc, HealpixLocalization):
            ra, dec, area90 = loc.ra_max, loc.dec_max, loc.area_90
        loc_json = loc.model_dump(mode="json") if loc is not None else None
        _check_json(loc_json, ev.id, "localization")
        _check_json(ev.properties, ev.id, "properties")
        if ra is not None and math.isfinite(ra) and math.isfinite(dec):
            point_rows.append(i)
            ras.append(ra)
            decs.append(dec)
        k = item.kafka
        rows.append(
            {
                "id": ev.id,
                "source": ev.source,
                "messenger": ev.messenger,
                "mission": ev.mission,
                "instrument": ev.instrument,
                "upstream_id": ev.upstream_id,
                "alert_type": ev.alert_type,
                "time": parse_time(ev.time),
                "localization": loc_json,
                "properties": ev.properties,
                "format": ev.format,
                "category": ev.category,
                "category_rule": ev.category_rule,
                "ra_deg": ra,
                "dec_deg": dec,
                "error_radius_deg": err,
                "hpx": None,
                "area_90_deg2": area90,
                "kafka_topic": k.topic if k else None,
                "kafka_partition": k.partition if k else None,
                "kafka_offset": k.offset if k else None,
                "raw_sha256": ref.sha256,
                "raw_segment": ref.segment,
                "raw_offset": ref.offset,
                "raw_length": ref.length,
            }
        )
    if point_rows:
        for i, h in zip(point_rows, healpix_index(ras, decs).tolist()):
            rows[i]["hpx"] = h
    return rows


def _as_dict(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def archived_from_row(row: Mapping[str, Any]) -> ArchivedEvent:
    """Rebuild an :class:`ArchivedEvent` from a row of ``events`` (a mapping)."""
    event = Event(
        id=row["id"],
        source=row["source"],
        messenger=row["messenger"],
        mission=row["mission"],
        instrument=row["instrument"],
        upstream_id=row["upstream_id"],
        alert_type=row["alert_type"],
        time=format_time(row["time"]),
        localization=_as_dict(row["localization"]),
        properties=_as_dict(row["properties"]) or {},
        format=row["format"],
        # NULL in rows archived before migration 0008 (`mma-broker events recategorize` fills them)
        category=row["category"],
        category_rule=row["category_rule"],
    )
    kafka = None
    if row["kafka_topic"] is not None:
        kafka = KafkaMeta(row["kafka_topic"], row["kafka_partition"], row["kafka_offset"])
    ref = RawRef(
        sha256=row["raw_sha256"], length=row["raw_length"], segment=row["raw_segment"], offset=row["raw_offset"]
    )
    return ArchivedEvent(
        event=event,
        retracted=row["retracted"],
        retracted_by=row["retracted_by"],
        ingested_at=row["ingested_at"],
        kafka=kafka,
        raw=ref,
        hpx=row["hpx"],
    )
