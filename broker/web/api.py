"""The read-only JSON API of ``mma-broker serve`` (issue 13, first slice), under ``/api``.

Routes (described by OpenAPI at ``/openapi.json``)
--------------------------------------------------
``GET /api/events``
    Archived Events, newest event time (T0) first, with a keyset cursor. Filters:
    ``source``, ``category`` (:data:`broker.category.CATEGORIES`), ``mission``,
    ``instrument`` (case-insensitive, exact), ``alert_type``, ``since`` / ``until``
    (T0 window ``since <= T0 < until``, ISO 8601 UTC), ``q`` (upstream id: the
    superevent, trigger or object id, exact or prefix) and a cone (``ra_deg``,
    ``dec_deg``, ``radius_deg``, all three or none; see below).
``GET /api/events/{id}``
    One Event with its archive metadata (received time, Kafka position, raw bytes'
    sha256 and length, retraction); 404 when absent.
``GET /api/groups/{key}``
    One superevent or trigger group (:mod:`broker.enrich.groups`; a member Event id
    is accepted too): every revision in arrival order, as ``mma-broker events
    group`` shows them, the best (smallest 90 %) and the latest localization, and its
    ``coincidences`` (table ``coincidences``, either member: the latest version of
    each, newest first, at most :data:`MAX_COINCIDENCES`).

Cone search
-----------
An Event matches when its localization is a *point* whose position lies within
``radius_deg`` of the centre (great-circle distance, ICRS), or a *sky map* whose
90 % credible region contains the centre (the map's tiles stored by the enrich
stage, ``localization_tiles.cum_prob <= 0.9`` — the convention of
:meth:`broker.enrich.store.LocalizationStore.events_in_region`: inside exactly when
ligo.skymap's ``searched_prob`` of the centre is ``<= 0.9``). A map not yet stored by
the enrich stage is not found by a cone. ``radius_deg`` applies to points only.

Errors
------
Every bad parameter (not a number, NaN or infinite, out of range, an unknown
category, a date that is not ISO 8601, a limit above :data:`MAX_LIMIT`, text with NUL
or other control characters or undecodable bytes, text longer than
:data:`MAX_TEXT`, a cursor this API did not give) answers **400** with
``{"detail": "<what is wrong>", "parameter": "<name>"}``; never a traceback or a
host path. Unknown ids answer 404; a database that cannot be reached answers 503.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import unicodedata
from datetime import datetime, timezone
from typing import Any, Optional
from urllib.parse import quote

import numpy as np
import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from broker.archive.models import events as EV
from broker.category import CATEGORIES
from broker.enrich.groups import GROUPS, MEMBERS, group_key
from broker.enrich.store import LINKS, LOCS, TILES
from broker.event import MAX_ID_CHARS, format_time

log = logging.getLogger(__name__)

__all__ = ["install", "router", "query_events", "check_text", "check_category", "EventItem", "EventPage",
           "LocalizationSummary", "MAX_LIMIT", "MAX_TEXT", "ParamError"]

MAX_LIMIT = 500
MAX_COINCIDENCES = 200
"""A group's answer lists at most this many coincidences (the most recently written)."""
"""Largest page (``limit``)."""
MAX_TEXT = 200
"""Longest filter text (source, mission, ``q``...), characters; ids may be up to
:data:`broker.event.MAX_ID_CHARS`."""
CONE_LEVEL = 0.9
"""Credible level of the sky-map region a cone centre must lie in."""


class ParamError(Exception):
    """A bad request parameter: answered 400 ``{"detail", "parameter"}``."""

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(detail)
        self.parameter, self.detail = parameter, detail


# ------------------------------------------------------------------ response models
class LocalizationSummary(BaseModel):
    """Where the Event is on the sky, from its archived localization."""

    kind: str = Field(description="'point' (position with an error circle) or 'healpix' (sky map)")
    ra_deg: Optional[float] = Field(None, description="ICRS right ascension of the point, or of the map's "
                                                      "most probable pixel, deg")
    dec_deg: Optional[float] = Field(None, description="ICRS declination, deg")
    error_radius_deg: Optional[float] = Field(None, description="point: error-circle radius, deg")
    containment: Optional[float] = Field(None, description="point: probability inside the error circle")
    area_90_deg2: Optional[float] = Field(None, description="area of the 90 % credible region, deg²")


class EventItem(BaseModel):
    """One archived Event (alert revision), as listed."""

    id: str = Field(description="Event id (source:upstream id:alert type:...)")
    url: str = Field(description="this Event's API path")
    source: str
    mission: str
    instrument: Optional[str] = None
    category: Optional[str] = Field(None, description="normalized class (docs/categories.md); null: archived "
                                                      "before categories existed")
    upstream_id: str = Field(description="superevent, trigger or object id given by the upstream")
    alert_type: str
    t0: str = Field(description="event time T0, ISO 8601 UTC")
    received_at: str = Field(description="when the broker archived it, ISO 8601 UTC")
    localization: Optional[LocalizationSummary] = None
    group_key: str = Field(description="its superevent / trigger group (igwn:S230518h, gcn:fermi:745121685, ...)")
    group_url: str = Field(description="the group's API path")
    retracted: bool = Field(description="a retraction of the same upstream id is archived")


class EventPage(BaseModel):
    """A page of Events, newest T0 first."""

    items: list[EventItem]
    next_cursor: Optional[str] = Field(None, description="pass as `cursor` for the next page; null: last page")


class KafkaPosition(BaseModel):
    topic: str
    partition: int
    offset: int


class EventDetail(EventItem):
    """One Event with its archive metadata."""

    messenger: str
    format: str = Field(description="upstream format (igwn.gwalert, gcn.notices..., ztf.avro, voevent...)")
    category_rule: Optional[str] = Field(None, description="id of the rule that decided the category")
    retracted_by: Optional[str] = Field(None, description="Event id of the retraction")
    localization_full: Optional[dict[str, Any]] = Field(None, description="the Event's localization as decoded")
    properties: dict[str, Any] = Field(description="source-specific fields of the Event")
    kafka: Optional[KafkaPosition] = Field(None, description="where the broker read it")
    raw_sha256: str = Field(description="sha256 of the upstream bytes it was decoded from")
    raw_bytes: int = Field(description="length of those bytes, bytes")


class StoredLocalization(BaseModel):
    """A localization the enrich stage stored (multi-order tiles or a point's caps)."""

    id: str = Field(description="sha256:<hex> of its canonical content")
    kind: str = Field(description="'skymap' or 'point'")
    area_50_deg2: Optional[float] = Field(None, description="50 % credible area, deg²")
    area_90_deg2: Optional[float] = Field(None, description="90 % credible area, deg²")
    n_tiles: int = Field(description="stored HEALPix tiles")


class Revision(BaseModel):
    """One revision of a group, in arrival order."""

    n: int = Field(description="1-based arrival order")
    event_id: str
    url: str
    alert_type: str
    t0: Optional[str] = Field(None, description="its T0, ISO 8601 UTC (null: not in this archive)")
    received_at: Optional[str] = Field(None, description="ISO 8601 UTC")
    issued: Optional[str] = Field(None, description="when the upstream issued it, ISO 8601 UTC: an IGWN "
                                  "alert's time_created, a GCN notice's alert_datetime (null: the notice has none)")
    localization: Optional[LocalizationSummary] = None
    latest: bool = Field(description="the last revision to arrive")


class Coincidence(BaseModel):
    """One coincidence of the group (the latest version of its id), from table ``coincidences``."""

    id: str = Field(description="<kind>:<trigger group>+<other group>, the key on mma.coincidences")
    kind: str = Field(description="gw-grb | gw-neutrino | gw-optical | grb-optical")
    version: str = Field(description="computed_from: the Event whose arrival produced this version")
    role: str = Field(description="which member this group is: trigger (the GW, else the GRB) or other")
    other_group: str = Field(description="the other member's group key")
    other_url: str = Field(description="the other group in this API")
    other_event_id: str = Field(description="the other member's revision used")
    dt_s: Optional[float] = Field(None, description="t_other - t_trigger, s (optical kinds: from dt_days)")
    overlap_integral: Optional[float] = Field(None, description="sky overlap integral, when computed")
    joint_far_hz: Optional[float] = Field(None, description="joint FAR, Hz, when computed (gw-grb)")
    coincident: bool = Field(description="false: superseded (a later revision moved the pair out of its window)")
    retracted: bool
    retracted_by: Optional[str] = None
    created_at: str = Field(description="when the enrich stage wrote this version, ISO 8601 UTC")
    record: dict[str, Any] = Field(description="the whole mma.coincidences record (schema mma.coincidence/1)")


class GroupDetail(BaseModel):
    """One superevent or trigger: every revision in order."""

    key: str
    url: str
    category: str = Field(description="gw | grb | neutrino | frb | xray | optical | user")
    t0: str = Field(description="the group's T0 (latest non-retraction revision; GCN: earliest), ISO 8601 UTC")
    retracted: bool
    n_revisions: int
    latest: str = Field(description="Event id of the last revision to arrive")
    revisions: list[Revision]
    best_localization: Optional[StoredLocalization] = Field(
        None, description="the revision's localization with the smallest 90 % area")
    latest_localization: Optional[LocalizationSummary] = Field(
        None, description="the latest revision that has a localization: its summary")
    latest_localization_event: Optional[str] = Field(None, description="that revision's Event id")
    coincidences: list[Coincidence] = Field(default_factory=list, description="newest first")


class Problem(BaseModel):
    """A 4xx answer."""

    detail: str
    parameter: Optional[str] = Field(None, description="the request parameter at fault")


# ------------------------------------------------------------------ parameter checks
def _text(name: str, value: str | None, max_chars: int = MAX_TEXT) -> str | None:
    """``value`` if it is printable text of 1..max_chars characters, else ParamError."""
    if value is None:
        return None
    if not value:
        raise ParamError(name, f"{name}: empty")
    if len(value) > max_chars:
        raise ParamError(name, f"{name}: longer than {max_chars} characters")
    for ch in value:
        # U+FFFD: bytes that were not UTF-8 (the query string is decoded with replacement)
        if ch == "\ufffd" or unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn"):
            raise ParamError(name, f"{name}: control characters, NUL or undecodable bytes are not allowed")
    return value


def _finite(name: str, value: float | None, lo: float, hi: float) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value):
        raise ParamError(name, f"{name}: not a finite number")
    if not lo <= value <= hi:
        raise ParamError(name, f"{name}: {value:g} is outside [{lo:g}, {hi:g}]")
    return value


def _utc(name: str, value: str | None) -> datetime | None:
    """ISO 8601 (``Z`` or an offset; no offset = UTC) → aware UTC datetime."""
    if _text(name, value, 64) is None:
        return None
    s = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        t = datetime.fromisoformat(s)
        return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 moved out of range by its offset
        raise ParamError(name, f"{name}: not an ISO 8601 time such as 2019-04-25T08:18:05Z") from None


def _cursor_out(t: datetime, event_id: str) -> str:
    raw = json.dumps([t.astimezone(timezone.utc).isoformat(), event_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _cursor_in(value: str | None) -> tuple[datetime, str] | None:
    if _text("cursor", value, 4 * MAX_ID_CHARS) is None:
        return None
    bad = ParamError("cursor", "cursor: not a cursor this API gave (use next_cursor of the last page)")
    try:
        t, eid = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        t = datetime.fromisoformat(t)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise bad from None
    if t.tzinfo is None or not isinstance(eid, str):
        raise bad
    try:
        _text("cursor", eid, MAX_ID_CHARS)
    except ParamError:
        raise bad from None
    return t, eid


# ------------------------------------------------------------------ rows → models
_LIST_COLS = (EV.c.id, EV.c.source, EV.c.mission, EV.c.instrument, EV.c.category, EV.c.upstream_id,
              EV.c.alert_type, EV.c.time, EV.c.ingested_at, EV.c.retracted, EV.c.ra_deg, EV.c.dec_deg,
              EV.c.error_radius_deg, EV.c.area_90_deg2, EV.c.localization["type"].astext.label("loc_type"),
              EV.c.localization["containment"].astext.label("loc_containment"),
              EV.c.messenger, MEMBERS.c.group_key.label("member_group"))


def _event_path(event_id: str) -> str:
    return "/api/events/" + quote(event_id, safe=":")


def _group_path(key: str) -> str:
    return "/api/groups/" + quote(key, safe=":")


def _loc(row: Any) -> LocalizationSummary | None:
    if row.loc_type is None:
        return None
    cont = row.loc_containment
    return LocalizationSummary(kind=row.loc_type, ra_deg=row.ra_deg, dec_deg=row.dec_deg,
                               error_radius_deg=row.error_radius_deg,
                               containment=float(cont) if cont is not None else None, area_90_deg2=row.area_90_deg2)


def _key_of(row: Any) -> str:
    if row.member_group is not None:
        return row.member_group
    from broker.event import Event  # not yet grouped by the enrich stage: the key its rules give

    ev = Event.model_construct(source=row.source, messenger=row.messenger, mission=row.mission,
                               upstream_id=row.upstream_id, instrument=row.instrument, alert_type=row.alert_type)
    return group_key(ev)


def _item_fields(row: Any) -> dict[str, Any]:
    key = _key_of(row)
    return dict(id=row.id, url=_event_path(row.id), source=row.source, mission=row.mission,
                instrument=row.instrument, category=row.category, upstream_id=row.upstream_id,
                alert_type=row.alert_type, t0=format_time(row.time), received_at=format_time(row.ingested_at),
                localization=_loc(row), group_key=key, group_url=_group_path(key), retracted=row.retracted)


def _select() -> sa.Select:
    return sa.select(*_LIST_COLS).select_from(EV.outerjoin(MEMBERS, MEMBERS.c.event_id == EV.c.id))


def _cone_ranges(ra: float, dec: float, radius: float) -> list[tuple[int, int]]:
    """Order-29 ranges ``[lo, hi)`` covering the cone (:func:`broker.enrich.catalogs.cone_ranges`),
    with cells down to the order whose pixels are about a quarter of the radius, so that
    a cone is at most a few hundred range tests."""
    from broker.enrich.catalogs import cone_ranges

    depth = int(np.clip(np.floor(np.log2(58.6 / max(radius / 4, 1e-9))), 0, 29))  # pixel ~58.6°/2**depth
    return [(int(lo), int(hi)) for lo, hi in cone_ranges(ra, dec, radius, max_depth=depth)]


def _cone(ra: float, dec: float, radius: float) -> sa.ColumnElement[bool]:
    """Point within ``radius`` deg of (ra, dec), or a stored sky map whose 90 % region holds it.

    Two id sets in one ``IN (... UNION ALL ...)`` so that each half uses its index:
    points by ``events.hpx`` (B-tree, order-29 ranges of :func:`_cone_ranges`) then the
    exact haversine distance; maps by their stored tiles (``cum_prob <= 0.9``, the tile
    holding the centre's order-29 index: ``hpx @> p`` on the SP-GiST index of migration
    0014, one tile per stored map at most).
    """
    from broker.enrich.store import _hpx

    r = math.radians
    d1 = sa.func.radians(EV.c.dec_deg)
    hav = (sa.func.power(sa.func.sin((d1 - r(dec)) / 2), 2)
           + math.cos(r(dec)) * sa.func.cos(d1) * sa.func.power(sa.func.sin((sa.func.radians(EV.c.ra_deg) - r(ra)) / 2), 2))
    # haversine: distance <= radius  <=>  hav <= sin²(radius / 2)
    points = sa.select(EV.c.id).where(
        sa.or_(*(sa.and_(EV.c.hpx >= lo, EV.c.hpx < hi) for lo, hi in _cone_ranges(ra, dec, radius))),
        EV.c.localization["type"].astext == "point", hav <= math.sin(r(radius) / 2) ** 2)
    p = int(_hpx(ra, dec)[0])
    maps = (sa.select(LINKS.c.event_id)
            .select_from(LINKS.join(TILES, TILES.c.localization_id == LINKS.c.localization_id)
                         .join(LOCS, LOCS.c.id == LINKS.c.localization_id))
            .where(LOCS.c.kind == "skymap", TILES.c.cum_prob <= CONE_LEVEL,
                   TILES.c.hpx.contains(sa.literal(p, sa.BigInteger))))  # ix_localization_tiles_hpx (0014)
    return EV.c.id.in_(sa.union_all(points, maps))


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


# ------------------------------------------------------------------ routes
router = APIRouter(prefix="/api", tags=["archive"],
                   responses={400: {"model": Problem, "description": "a bad parameter (named)"}})


def _engine(request: Request) -> sa.Engine:
    return request.app.state.api_engine


def check_text(name: str, value: str | None, max_chars: int = MAX_TEXT) -> str | None:
    """``value`` if it is printable text of 1..``max_chars`` characters (None passes).

    Raises
    ------
    ParamError
        Empty, too long, NUL, other control characters or bytes that were not UTF-8.
    """
    return _text(name, value, max_chars)


def check_category(category: str | None) -> str | None:
    """``category`` if it is one of :data:`broker.category.CATEGORIES` (None passes).

    Raises
    ------
    ParamError
        Not text (:func:`check_text`) or an unknown category (the message lists them).
    """
    if _text("category", category) is not None and category not in CATEGORIES:
        raise ParamError("category", "category: unknown; one of " + ", ".join(sorted(CATEGORIES)))
    return category


def check_source(source: str | None) -> str | None:
    """``source`` if it is one of the Event sources (:data:`broker.event.Source`; None passes).

    Raises
    ------
    ParamError
        Not text (:func:`check_text`) or an unknown source (the message lists them): a
        misspelt ``source=`` answers 400, not an empty page.
    """
    from typing import get_args

    from broker.event import Source

    if _text("source", source) is not None and source not in get_args(Source):
        raise ParamError("source", "source: unknown; one of " + ", ".join(sorted(get_args(Source))))
    return source


def query_events(engine: sa.Engine, *, limit: int = 50, cursor: str | None = None, source: str | None = None,
                 category: str | None = None, mission: str | None = None, instrument: str | None = None,
                 alert_type: str | None = None, since: str | None = None, until: str | None = None,
                 q: str | None = None, ra_deg: float | None = None, dec_deg: float | None = None,
                 radius_deg: float | None = None) -> EventPage:
    """One page of archived Events, newest T0 first: what ``GET /api/events`` answers.

    The pages (home, search) call it with the request's parameters as they came, so a
    bad one is the same named :class:`ParamError` as in the API.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The archive's database.
    limit, cursor, source, category, mission, instrument, alert_type, since, until, q, ra_deg, dec_deg, radius_deg
        As in the API (docs/web.md): text unparsed, angles in deg.

    Returns
    -------
    EventPage
        Up to ``limit`` items and the ``next_cursor`` (None on the last page).

    Raises
    ------
    ParamError
        A bad parameter (named).
    sqlalchemy.exc.SQLAlchemyError
        The database cannot be reached or the query failed.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ParamError("limit", f"limit: {limit} is outside 1..{MAX_LIMIT}")
    after = _cursor_in(cursor)
    stmt = _select()
    if check_source(source) is not None:
        stmt = stmt.where(EV.c.source == source)
    if _text("alert_type", alert_type) is not None:
        stmt = stmt.where(EV.c.alert_type == alert_type)
    for name, col, value in (("mission", EV.c.mission, mission), ("instrument", EV.c.instrument, instrument)):
        if _text(name, value) is not None:
            stmt = stmt.where(sa.func.lower(col) == value.lower())
    if check_category(category) is not None:
        stmt = stmt.where(EV.c.category == category)
    t_lo, t_hi = _utc("since", since), _utc("until", until)
    if t_lo is not None:
        stmt = stmt.where(EV.c.time >= t_lo)
    if t_hi is not None:
        stmt = stmt.where(EV.c.time < t_hi)
    if _text("q", q) is not None:
        stmt = stmt.where(sa.or_(EV.c.upstream_id == q, EV.c.upstream_id.like(_like_prefix(q), escape="\\")))
    cone = (_finite("ra_deg", ra_deg, 0.0, 360.0), _finite("dec_deg", dec_deg, -90.0, 90.0),
            _finite("radius_deg", radius_deg, 0.0, 180.0))
    if any(v is not None for v in cone):
        missing = [n for n, v in zip(("ra_deg", "dec_deg", "radius_deg"), cone) if v is None]
        if missing:
            raise ParamError(missing[0], "a cone needs ra_deg, dec_deg and radius_deg; missing " + ", ".join(missing))
        if cone[2] <= 0:
            raise ParamError("radius_deg", "radius_deg: must be above 0")
        stmt = stmt.where(_cone(*cone))
    if after is not None:
        t, eid = after
        stmt = stmt.where(sa.or_(EV.c.time < t, sa.and_(EV.c.time == t, EV.c.id > eid)))
    stmt = stmt.order_by(EV.c.time.desc(), EV.c.id).limit(limit + 1)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return EventPage(items=[EventItem(**_item_fields(r)) for r in rows],
                     next_cursor=_cursor_out(rows[-1].time, rows[-1].id) if more else None)


@router.get("/events", response_model=EventPage, summary="Recent Events, newest first, with filters",
            description="Archived Events ordered by T0 (newest first, then id); page with `cursor`.")
def list_events(
    request: Request,
    limit: int = Query(50, description=f"page size, 1..{MAX_LIMIT}"),
    cursor: Optional[str] = Query(None, description="next_cursor of the previous page"),
    source: Optional[str] = Query(None, description="igwn, gcn, ztf, lsst, voevent or user"),
    category: Optional[str] = Query(None, description="normalized category (docs/categories.md), e.g. gw_cbc"),
    mission: Optional[str] = Query(None, description="mission, case-insensitive (Fermi, Swift, ZTF, ...)"),
    instrument: Optional[str] = Query(None, description="instrument, case-insensitive (GBM, BAT, ...)"),
    alert_type: Optional[str] = Query(None, description="preliminary, initial, update, retraction, ..."),
    since: Optional[str] = Query(None, description="T0 >= since, ISO 8601 UTC"),
    until: Optional[str] = Query(None, description="T0 < until, ISO 8601 UTC"),
    q: Optional[str] = Query(None, description="upstream id (superevent, trigger, object id): exact or prefix"),
    ra_deg: Optional[float] = Query(None, description="cone centre, ICRS right ascension, deg [0, 360]"),
    dec_deg: Optional[float] = Query(None, description="cone centre, ICRS declination, deg [-90, 90]"),
    radius_deg: Optional[float] = Query(None, description="cone radius for point localizations, deg (0, 180]"),
) -> EventPage:
    return query_events(_engine(request), limit=limit, cursor=cursor, source=source, category=category,
                        mission=mission, instrument=instrument, alert_type=alert_type, since=since, until=until,
                        q=q, ra_deg=ra_deg, dec_deg=dec_deg, radius_deg=radius_deg)


@router.get("/events/{event_id:path}", response_model=EventDetail, summary="One Event with its archive metadata",
            responses={404: {"model": Problem, "description": "no such Event"}})
def get_event(request: Request, event_id: str) -> EventDetail:
    _text("id", event_id, MAX_ID_CHARS)
    cols = _LIST_COLS + (EV.c.format, EV.c.category_rule, EV.c.retracted_by, EV.c.localization, EV.c.properties,
                         EV.c.kafka_topic, EV.c.kafka_partition, EV.c.kafka_offset, EV.c.raw_sha256, EV.c.raw_length)
    stmt = (sa.select(*cols).select_from(EV.outerjoin(MEMBERS, MEMBERS.c.event_id == EV.c.id))
            .where(EV.c.id == event_id))
    with _engine(request).connect() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        return JSONResponse({"detail": "no such Event", "parameter": "id"}, status_code=404)
    kafka = None if row.kafka_topic is None else KafkaPosition(topic=row.kafka_topic, partition=row.kafka_partition,
                                                              offset=row.kafka_offset)
    return EventDetail(**_item_fields(row), messenger=row.messenger, format=row.format,
                       category_rule=row.category_rule, retracted_by=row.retracted_by,
                       localization_full=row.localization, properties=row.properties or {}, kafka=kafka,
                       raw_sha256=row.raw_sha256, raw_bytes=row.raw_length)


@router.get("/groups/{key:path}", response_model=GroupDetail, summary="One superevent or trigger: its revisions",
            description="A group key (igwn:S230518h, gcn:fermi:745121685, ztf:ZTF18abcdefg) or a member Event id.",
            responses={404: {"model": Problem, "description": "no such group"}})
def get_group(request: Request, key: str) -> GroupDetail:
    from broker.enrich.groups import GroupStore

    _text("key", key, MAX_ID_CHARS)
    engine = _engine(request)
    store = GroupStore(engine)
    state = store.get(key) or store.of_event(key)
    if state is None:
        return JSONResponse({"detail": "no such event group", "parameter": "key"}, status_code=404)
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(_select().where(EV.c.id.in_(state.revisions)))}
        n_rev = conn.execute(sa.select(GROUPS.c.n_revisions).where(GROUPS.c.key == state.key)).scalar_one()
        issued = dict(conn.execute(sa.select(EV.c.id, sa.func.coalesce(EV.c.properties["time_created"].astext,
                                                                         EV.c.properties["alert_time"].astext))
                                   .where(EV.c.id.in_(state.revisions))).all())
        coincs = _coincidences(conn, state.key)
    revisions, latest_loc, latest_loc_event = [], None, None
    for i, (eid, kind) in enumerate(zip(state.revisions, state.alert_types), 1):
        r = rows.get(eid)
        loc = _loc(r) if r is not None else None
        if loc is not None:
            latest_loc, latest_loc_event = loc, eid
        revisions.append(Revision(n=i, event_id=eid, url=_event_path(eid), alert_type=kind,
                                  t0=format_time(r.time) if r is not None else None,
                                  received_at=format_time(r.ingested_at) if r is not None else None,
                                  issued=issued.get(eid), localization=loc, latest=eid == state.latest))
    best = state.best_localization
    return GroupDetail(key=state.key, url=_group_path(state.key), category=state.category, t0=state.t0,
                       retracted=state.retracted, n_revisions=n_rev, latest=state.latest, revisions=revisions,
                       best_localization=None if best is None else StoredLocalization(**best.to_json_dict()),
                       latest_localization=latest_loc, latest_localization_event=latest_loc_event,
                       coincidences=coincs)


def _coincidences(conn: sa.Connection, key: str) -> list[Coincidence]:
    """The group's coincidences (:func:`broker.enrich.coincidence_store.latest_of_group`)."""
    from broker.enrich.coincidence_store import latest_of_group

    return [Coincidence(id=r["id"], kind=r["kind"], version=r["computed_from"], role=r["role"],
                        other_group=r["other_group"], other_url=_group_path(r["other_group"]),
                        other_event_id=r["other_event_id"], dt_s=r["dt_s"], overlap_integral=r["overlap_integral"],
                        joint_far_hz=r["joint_far_hz"], coincident=r["coincident"], retracted=r["retracted"],
                        retracted_by=r["retracted_by"], created_at=format_time(r["created_at"]), record=r["record"])
            for r in latest_of_group(conn, key, MAX_COINCIDENCES)]


# ------------------------------------------------------------------ mounting
def _param_error(request: Request, exc: ParamError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail, "parameter": exc.parameter}, status_code=400)


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own checks (an int that is not one, a float that is not a number): name the
    # parameter, never echo the input back (it may be long or hostile)
    errors = exc.errors()
    loc = errors[0].get("loc", ()) if errors else ()
    name = str(loc[-1]) if loc else None
    kind = {"int_parsing": "not an integer", "float_parsing": "not a number"}.get(
        errors[0].get("type", "") if errors else "", "invalid value")
    return JSONResponse({"detail": f"{name}: {kind}" if name else kind, "parameter": name}, status_code=400)


def _database_error(request: Request, exc: sa.exc.SQLAlchemyError) -> JSONResponse:
    log.warning("archive query failed: %s", type(exc).__name__)  # the message may hold the database URL
    return JSONResponse({"detail": "the archive database is unavailable", "parameter": None}, status_code=503)


def install(app: FastAPI, engine: sa.Engine) -> None:
    """Mount the API on ``app``, reading from ``engine`` (the archive's database, migrated).

    Parameters
    ----------
    app : fastapi.FastAPI
        :func:`broker.sinks.web.make_app`'s application.
    engine : sqlalchemy.Engine
        Read-only use: SELECTs on ``events``, ``event_groups``, ``event_group_members``,
        ``event_localizations``, ``localizations``, ``localization_tiles`` and ``coincidences``.
    """
    app.state.api_engine = engine
    app.include_router(router)
    app.add_exception_handler(ParamError, _param_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(sa.exc.SQLAlchemyError, _database_error)
