"""The event group page of ``mma-broker serve`` (issue 13): one superevent or trigger.

Routes (HTML and its helpers; the JSON of the group is ``/api/groups/{key}``)
------------------------------------------------------------------------------
``GET /groups/{key}``
    The page: every revision in arrival order with its notice (the archived upstream
    bytes as text, JSON, XML, or Avro decoded to JSON), the latest localization as a
    PNG (``img#skymap``) and in Aladin Lite (``div#aladin``) with its 90 % MOC and
    markers, the coincidences with their overlap, time offset and joint FAR, the catalog
    cross-match ranked as the enrich stage ranked it, the ZTF candidates and follow-up
    results (:mod:`broker.web.group_extra`, when present) and what was published.
``GET /groups/{key}/skymap.png[?event=<id>]``
    The sky map PNG (:func:`broker.web.skyplot.render_png`) of the group's latest
    localization (or of one member Event's), cached by localization id, plot version
    and markers; rendered in one worker thread with a timeout, never on the event loop.
``GET /groups/{key}/notice?event=<id>``
    One revision's notice as the page shows it (older revisions than the latest
    :data:`NOTICES_INLINE` link to it).
``GET /groups/{key}/moc.json[?level=0.9]``
    The credible region of the latest localization as a MOC (mocpy, IVOA MOC 2.0 JSON
    ``{"order": [ipix, ...]}``), built from the stored NUNIQ tiles with
    ``cum_prob <= level``, with its area and the centre and radius that frame it.

``key`` is a group key (``igwn:S230518h``, ``gcn:fermi:745121685``, ``ztf:ZTF18abc``) or
a member Event id, as :func:`broker.web.api.get_group` takes it. A key that is not
printable text of 1 to 1,024 characters (NUL, bytes that are not UTF-8, 5,000
characters) answers a 400 page naming ``key``; an unknown one a 404 page. Neither
echoes the key back nor shows a traceback or a host path.

Where the sections come from
----------------------------
* revisions and localizations: :func:`broker.web.api.get_group`, the stored tiles of
  :mod:`broker.enrich.store`, the raw bytes through the archive's raw store
  (``ctx.extra["archive"]``'s when the app shares its Archive, else one built from the
  settings), the notices shown cached by the bytes' sha256;
* a follow-up asked for by hand (no archived Event, no event group):
  :func:`broker.web.group_extra.followup_group`, so ``user:GRB 230307A`` has a page;
* coincidences: table ``coincidences`` (migration 0013), written by the enrich stage
  with every version it publishes on ``mma.coincidences``: the group as either
  member, the latest version per coincidence id (``GroupDetail.coincidences`` of
  :func:`broker.web.api.get_group`). The outbox's ``hermes:coincidence:`` entries are no
  longer read: they exist only when the reports stage runs, and only for what it
  reported;
* catalog matches: ``event_crossmatches`` of the latest revision that has them;
* published: outbox rows whose ``group_key`` is this group or one of its coincidences.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable
from urllib.parse import quote

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from broker.web import skyplot
from broker.web.pages import raw_store

log = logging.getLogger(__name__)

__all__ = ["install", "PngCache", "SkyRenderer", "notice_text", "coincidences_of", "page_coincidences", "published_of",
           "crossmatch_of", "moc_of", "NOTICE_MAX_CHARS", "RENDER_TIMEOUT_S"]

NOTICE_MAX_CHARS = 64_000
"""A notice shown inline is cut after this many characters (a note says so)."""
NOTICE_STRING_MAX = 1_000
"""In JSON and Avro notices, a string longer than this (a base64 sky map) is shortened."""
NOTICES_INLINE = 10
"""Only the latest this-many revisions' notices are read and shown inline (a ZTF object may
have hundreds of alerts); the others are one link each to ``/groups/{key}/notice?event=``."""
RENDER_TIMEOUT_S = 30.0
"""A sky map PNG not drawn within this many seconds answers 503 (it is cached when done)."""
PNG_CACHE_ENTRIES = 512
PNG_CACHE_BYTES = 128 * 2**20
MAX_CATALOG_MARKERS = 50
"""Catalog matches drawn on the sky (the best ranked)."""
MAX_ROWS = 200
"""Rows of coincidences, matches and published messages shown (the most recent)."""


# ------------------------------------------------------------------ PNG cache and renderer
class PngCache:
    """A thread-safe in-memory LRU of PNG bytes by key, bounded in entries and bytes."""

    def __init__(self, max_entries: int = PNG_CACHE_ENTRIES, max_bytes: int = PNG_CACHE_BYTES) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._d: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._d.get(key)
            if data is not None:
                self._d.move_to_end(key)
            return data

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            old = self._d.pop(key, None)
            self._bytes -= len(old) if old is not None else 0
            self._d[key] = data
            self._bytes += len(data)
            while self._d and (len(self._d) > self.max_entries or self._bytes > self.max_bytes):
                _, gone = self._d.popitem(last=False)
                self._bytes -= len(gone)

    def __len__(self) -> int:
        return len(self._d)


class SkyRenderer:
    """Draws PNGs in one worker thread (matplotlib is not thread-safe), cached by key.

    Parameters
    ----------
    cache : PngCache, optional
    timeout_s : float
        :meth:`png` gives up waiting after this long (the drawing goes on and is cached).
    """

    def __init__(self, cache: PngCache | None = None, timeout_s: float = RENDER_TIMEOUT_S) -> None:
        self.cache = cache or PngCache()
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skyplot")
        self.renders = 0

    def _run(self, key: str, draw: Callable[[], bytes]) -> bytes:
        hit = self.cache.get(key)  # a request queued behind the same drawing finds it here
        if hit is not None:
            return hit
        data = draw()
        self.renders += 1
        self.cache.put(key, data)
        return data

    async def png(self, key: str, draw: Callable[[], bytes]) -> bytes:
        """The cached PNG of ``key``, or ``draw()`` run in the worker thread.

        Raises
        ------
        asyncio.TimeoutError
            Not drawn within ``timeout_s``.
        """
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        fut = asyncio.get_running_loop().run_in_executor(self._pool, self._run, key, draw)
        return await asyncio.wait_for(asyncio.shield(fut), self.timeout_s)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------ notices
def _shorten(obj: Any) -> Any:
    """``obj`` with long strings and bytes replaced by a note of their length."""
    if isinstance(obj, dict):
        return {str(k): _shorten(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_shorten(v) for v in obj]
    if isinstance(obj, (bytes, bytearray)):
        return f"<{len(obj):,} bytes>"
    if isinstance(obj, str) and len(obj) > NOTICE_STRING_MAX:
        return obj[:80] + f"… <{len(obj):,} characters, shortened>"
    return obj


def _pretty(obj: Any, depth: int = 2, level: int = 0) -> str:
    """JSON of ``obj`` with its first ``depth`` levels one item per line (indented by one
    space per level) and deeper values compact: as readable as ``indent=1`` for a notice,
    yet encoded by the C encoder (``json.dumps`` with an indent runs in Python: 4 ms for a
    ZTF alert against under 1 ms)."""
    if level < depth and isinstance(obj, (dict, list)) and obj:
        pad, end = " " * (level + 1), " " * level
        if isinstance(obj, dict):
            items = [f"{pad}{json.dumps(str(k), ensure_ascii=False)}: {_pretty(v, depth, level + 1)}"
                     for k, v in obj.items()]
            return "{\n" + ",\n".join(items) + "\n" + end + "}"
        return "[\n" + ",\n".join(pad + _pretty(v, depth, level + 1) for v in obj) + "\n" + end + "]"
    return json.dumps(obj, ensure_ascii=False, default=str)


def notice_text(raw: bytes) -> tuple[str, str, bool]:
    """A notice's bytes as text to show.

    Parameters
    ----------
    raw : bytes
        The upstream bytes the Event was decoded from.

    Returns
    -------
    (str, str, bool)
        The kind (``json``, ``xml``, ``avro``, ``text`` or ``binary``), the text (JSON
        pretty-printed with long strings shortened; Avro container files decoded to JSON
        records, bytes fields as their length; other bytes as their length only), and
        whether it was cut at :data:`NOTICE_MAX_CHARS`.
    """
    kind, text = "binary", f"<{len(raw):,} bytes that are neither text nor an Avro container>"
    if raw[:4] == b"Obj\x01":
        import fastavro

        try:
            records = [_shorten(r) for r in fastavro.reader(io.BytesIO(raw))]
            kind = "avro"
            text = _pretty(records[0] if len(records) == 1 else records)
        except Exception as exc:  # noqa: BLE001 - a corrupt container is shown as such
            text = f"<{len(raw):,} bytes: an Avro container that does not decode ({type(exc).__name__})>"
    else:
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            s = None
        if s is not None:
            stripped = s.lstrip()
            kind, text = ("xml" if stripped.startswith("<") else "text"), s
            if stripped[:1] in ("{", "["):
                try:
                    text, kind = _pretty(_shorten(json.loads(s))), "json"
                except ValueError:
                    pass
    cut = len(text) > NOTICE_MAX_CHARS
    return kind, (text[:NOTICE_MAX_CHARS] if cut else text), cut


NOTICE_CACHE_ENTRIES = 2048
NOTICE_CACHE_BYTES = 64 * 2**20


def _notice_cache(ctx: Any) -> PngCache:
    """The notices shown, by raw sha256 (the same bytes always show the same text)."""
    cache = ctx.extra.get("notice_cache")
    if cache is None:
        cache = ctx.extra["notice_cache"] = PngCache(NOTICE_CACHE_ENTRIES, NOTICE_CACHE_BYTES)
    return cache


def _notices(ctx: Any, event_ids: list[str]) -> dict[str, dict[str, Any]]:
    """event id → {kind, text, cut, bytes} or {error}: the raw bytes read through the
    archive's raw store by their stored references (one query; sha256-verified), shown by
    :func:`notice_text`, cached by sha256 (:func:`_notice_cache`)."""
    from broker.archive.models import events as EV
    from broker.archive.raw import RawRef

    out: dict[str, dict[str, Any]] = {}
    if not event_ids:
        return out
    cache = _notice_cache(ctx)
    cols = (EV.c.id, EV.c.raw_sha256, EV.c.raw_length, EV.c.raw_segment, EV.c.raw_offset)
    with ctx.engine.connect() as conn:
        rows = conn.execute(sa.select(*cols).where(EV.c.id.in_(event_ids))).all()
        todo = []
        for r in rows:
            hit = cache.get(r.raw_sha256)
            if hit is not None:
                kind, text, cut, n = json.loads(hit)
                out[r.id] = {"kind": kind, "text": text, "cut": cut, "bytes": n}
            else:
                todo.append(r)
        if todo:
            store = raw_store(ctx)
            refs = [RawRef(sha256=r.raw_sha256, length=r.raw_length, segment=r.raw_segment, offset=r.raw_offset)
                    for r in todo]
            try:
                got = store.get_many(refs, conn if store.transactional else None)
            except Exception as exc:  # noqa: BLE001 - unreadable notices must not break the page
                log.warning("group page: raw bytes unreadable: %s", type(exc).__name__)
                got = [exc] * len(refs)
            for r, raw in zip(todo, got):
                if isinstance(raw, BaseException):
                    log.warning("group page: raw bytes of %s unreadable: %s", r.id[:80], type(raw).__name__)
                    out[r.id] = {"error": "the archived bytes could not be read"}
                    continue
                kind, text, cut = notice_text(raw)
                out[r.id] = {"kind": kind, "text": text, "cut": cut, "bytes": len(raw)}
                cache.put(r.raw_sha256, json.dumps([kind, text, cut, len(raw)]).encode())
    return out


# ------------------------------------------------------------------ localizations, MOC
def localization_of(engine: sa.Engine, key: str, event_id: str | None = None) -> tuple[str, str] | None:
    """(localization id, event id) of the group's latest member with a stored localization
    (or of ``event_id``, a member); None when it has none."""
    from broker.enrich.groups import MEMBERS

    q = (sa.select(MEMBERS.c.localization_id, MEMBERS.c.event_id)
         .where(MEMBERS.c.group_key == key, MEMBERS.c.localization_id.is_not(None)))
    if event_id is not None:
        q = q.where(MEMBERS.c.event_id == event_id)
    with engine.connect() as conn:
        row = conn.execute(q.order_by(MEMBERS.c.seq.desc()).limit(1)).first()
    return None if row is None else (row[0], row[1])


def moc_of(engine: sa.Engine, localization_id: str, level: float = 0.9) -> dict[str, Any]:
    """The credible region of a stored localization as a MOC.

    The tiles with ``cum_prob <= level`` (:mod:`broker.enrich.store`: the greedy credible
    level up to and including the tile, ligo.skymap's ``searched_prob``) are already
    nested order-29 ranges; mocpy's ``MOC.from_depth29_ranges`` makes the MOC at the
    finest order among them.

    Returns
    -------
    dict
        ``moc`` (IVOA MOC 2.0 JSON, ``{"<order>": [ipix, ...]}``), ``max_order``,
        ``area_deg2`` (the MOC's sky area, deg²), ``n_tiles``, ``level``, and
        ``center_ra_deg``, ``center_dec_deg``, ``radius_deg`` (:func:`_extent`).
    """
    import numpy as np
    from mocpy import MOC

    from broker.enrich.store import TILES

    with engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.lower(TILES.c.hpx), sa.func.upper(TILES.c.hpx))
                            .where(TILES.c.localization_id == localization_id, TILES.c.cum_prob <= level)).all()
    if not rows:
        return {"moc": {}, "max_order": 0, "area_deg2": 0.0, "n_tiles": 0, "level": level,
                "center_ra_deg": None, "center_dec_deg": None, "radius_deg": None}
    ranges = np.array([(lo, hi) for lo, hi in rows], dtype=np.uint64)  # (n, 2); plain tuples: numpy is slow on Rows
    width = (ranges[:, 1] - ranges[:, 0]).astype(np.float64)
    # a tile of order k spans 4**(29-k) order-29 cells: the finest tile gives the MOC's order
    max_order = int(29 - np.floor(np.log2(width.min()) / 2))
    moc = MOC.from_depth29_ranges(max_order, ranges)
    area = float(moc.sky_fraction * 4 * np.pi * (180 / np.pi) ** 2)
    cells = moc.serialize(format="json")
    return {"moc": cells, "max_order": max_order, "area_deg2": area, "n_tiles": len(rows), "level": level,
            **_extent(engine, localization_id, cells)}


def _extent(engine: sa.Engine, localization_id: str, cells: dict[str, list[int]]) -> dict[str, Any]:
    """``center_ra_deg``, ``center_dec_deg`` (the stored position: the densest tile's centre or
    the point) and ``radius_deg``: the largest distance from it to a MOC cell's centre plus
    that cell's size, so a view of that radius holds the region (Aladin Lite's field of view)."""
    import numpy as np
    from astropy_healpix import HEALPix

    p = _stored_point(engine, localization_id)
    if p is None or p["ra_deg"] is None or not cells:
        return {"center_ra_deg": None, "center_dec_deg": None, "radius_deg": None}
    ra0, dec0 = np.radians(p["ra_deg"]), np.radians(p["dec_deg"])
    radius = 0.0
    for order, ipix in cells.items():
        if not ipix:
            continue
        hp = HEALPix(nside=2 ** int(order), order="nested")
        lon, lat = hp.healpix_to_lonlat(np.asarray(ipix, dtype=np.int64))
        lon, lat = lon.to_value("rad"), lat.to_value("rad")
        cos = np.sin(dec0) * np.sin(lat) + np.cos(dec0) * np.cos(lat) * np.cos(lon - ra0)
        sep = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).max()
        radius = max(radius, float(sep) + hp.pixel_resolution.to_value("deg"))
    return {"center_ra_deg": float(p["ra_deg"]), "center_dec_deg": float(p["dec_deg"]), "radius_deg": radius}


def _stored_point(engine: sa.Engine, localization_id: str) -> dict[str, Any] | None:
    from broker.enrich.store import LOCS

    with engine.connect() as conn:
        r = conn.execute(sa.select(LOCS.c.kind, LOCS.c.ra_deg, LOCS.c.dec_deg, LOCS.c.error_radius_deg,
                                   LOCS.c.containment, LOCS.c.area_50_deg2, LOCS.c.area_90_deg2)
                         .where(LOCS.c.id == localization_id)).first()
    return None if r is None else dict(r._mapping)


# ------------------------------------------------------------------ coincidences, matches, outbox
def _has_table(conn: sa.Connection, name: str) -> bool:
    return conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": name}).scalar() is not None


def coincidences_of(engine: sa.Engine, key: str) -> list[dict[str, Any]]:
    """The coincidences of group ``key`` (either member), the latest version of each.

    Reads table ``coincidences`` (:func:`broker.enrich.coincidence_store.latest_of_group`).

    Returns
    -------
    list of dict
        Newest first, at most :data:`MAX_ROWS`: as :func:`page_coincidences` makes them.
    """
    from broker.enrich.coincidence_store import latest_of_group

    with engine.connect() as conn:
        rows = latest_of_group(conn, key, MAX_ROWS)
    return [_shown(r["record"], r) for r in rows]


def page_coincidences(group: Any) -> list[dict[str, Any]]:
    """The rows of the page's coincidences section, from ``group.coincidences``
    (:class:`broker.web.api.Coincidence`; a follow-up-only group has none): each one's
    record with ``other`` (the other member of ``members``), ``other_url``, ``version``,
    ``written_at`` and the stored ``coincident`` / ``retracted`` flags, overlap integral,
    joint FAR (Hz) and time offset (s; optical kinds keep ``dt_days``)."""
    return [_shown(c.record, c.model_dump()) for c in getattr(group, "coincidences", None) or []][:MAX_ROWS]


def _shown(record: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    def num(v: Any) -> float | None:
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    members = [m for m in record.get("members") or [] if isinstance(m, dict)]
    other = next((m for m in members if m.get("group") == row["other_group"]), {"group": row["other_group"]})
    out = dict(record)
    out.update({"id": row["id"], "kind": row["kind"], "version": row.get("version") or row.get("computed_from"),
                "other": other, "other_url": _group_path(row["other_group"]),
                "written_at": row.get("created_at"), "coincident": row["coincident"], "retracted": row["retracted"],
                "overlap_integral": row["overlap_integral"], "joint_far_hz": row["joint_far_hz"],
                # JSONB keeps numbers as numeric (a float with a large exponent reads back as an int)
                "temporal_far_hz": num(record.get("temporal_far_hz")),
                "credible_level": num(record.get("credible_level")), "dt_days": num(record.get("dt_days")),
                "dt_s": row["dt_s"] if "dt_s" in record else None})
    return out


def crossmatch_of(engine: sa.Engine, event_ids: list[str]) -> tuple[str | None, list[dict[str, Any]]]:
    """The catalog cross-match of the latest of ``event_ids`` (arrival order) that has one.

    Returns
    -------
    (str or None, list of dict)
        That Event id, and one dict per catalog: ``catalog``, ``kind``, ``n_matched``,
        ``level`` or ``containment``, ``matches`` ranked as the enrich stage ranked them.
    """
    from broker.enrich.matchstore import CROSSMATCHES as X

    if not event_ids:
        return None, []
    with engine.connect() as conn:
        rows = conn.execute(sa.select(X.c.event_id, X.c.catalog, X.c.kind, X.c.n_matched, X.c.result)
                            .where(X.c.event_id.in_(event_ids)).order_by(X.c.catalog)).all()
    by_event: dict[str, list[Any]] = {}
    for r in rows:
        by_event.setdefault(r.event_id, []).append(r)
    for eid in reversed(event_ids):
        if eid in by_event:
            return eid, [{"catalog": r.catalog, "kind": r.kind, "n_matched": r.n_matched,
                          "level": (r.result or {}).get("level"), "containment": (r.result or {}).get("containment"),
                          "matches": list((r.result or {}).get("matches") or [])[:MAX_ROWS]}
                         for r in by_event[eid]]
    return None, []


def published_of(engine: sa.Engine, key: str, coincidence_ids: list[str]) -> list[dict[str, Any]]:
    """Outbox entries about group ``key`` or one of its coincidences, newest first.

    Returns
    -------
    list of dict
        ``id``, ``key``, ``channel``, ``state``, ``created_at``, ``sent_at``,
        ``approved_by``, ``receipt``, ``payload`` (the message as sent or to be sent).
    """
    from broker.sinks.outbox import OUTBOX as O

    with engine.connect() as conn:
        if not _has_table(conn, "outbox"):
            return []
        rows = conn.execute(sa.select(O.c.id, O.c.key, O.c.channel, O.c.state, O.c.created_at, O.c.sent_at,
                                      O.c.approved_by, O.c.receipt, O.c.payload, O.c.group_key)
                            .where(O.c.group_key.in_([key, *coincidence_ids]))
                            .order_by(O.c.id.desc()).limit(MAX_ROWS)).all()
    return [dict(r._mapping) for r in rows]


# ------------------------------------------------------------------ page assembly
def _group_path(key: str) -> str:
    return "/groups/" + quote(key, safe=":")


def _markers(engine: sa.Engine, coincs: list[dict[str, Any]], xmatch: list[dict[str, Any]]) -> list[skyplot.Marker]:
    """Counterparts (the other member of each coincidence still coincident, where it is a
    point: its stored localization, else its Event's position) and the best catalog matches."""
    from broker.archive.models import events as EV
    from broker.enrich.store import LOCS

    others = [c.get("other") or {} for c in coincs if c.get("coincident", True) and not c.get("retracted")]
    loc_ids = [str(o["localization"]) for o in others if o.get("localization")]
    ev_ids = [str(o["event_id"]) for o in others if o.get("event_id")]
    pts: dict[str, tuple[float, float, float | None]] = {}
    if others:
        with engine.connect() as conn:
            for r in conn.execute(sa.select(LOCS.c.id, LOCS.c.ra_deg, LOCS.c.dec_deg, LOCS.c.error_radius_deg)
                                  .where(LOCS.c.id.in_(loc_ids), LOCS.c.kind == "point")):
                pts[r.id] = (r.ra_deg, r.dec_deg, r.error_radius_deg)
            for r in conn.execute(sa.select(EV.c.id, EV.c.ra_deg, EV.c.dec_deg, EV.c.error_radius_deg)
                                  .where(EV.c.id.in_(ev_ids), EV.c.localization["type"].astext == "point")):
                pts[r.id] = (r.ra_deg, r.dec_deg, r.error_radius_deg)
    out = []
    for o in others:
        p = pts.get(str(o.get("localization"))) or pts.get(str(o.get("event_id")))
        if p is not None and p[0] is not None and p[1] is not None:
            out.append(skyplot.Marker(float(p[0]), float(p[1]), str(o.get("upstream_id") or ""), "counterpart",
                                      None if p[2] is None else float(p[2])))
    for cat in xmatch:
        for m in cat["matches"][:MAX_CATALOG_MARKERS]:
            if isinstance(m.get("ra_deg"), (int, float)) and isinstance(m.get("dec_deg"), (int, float)):
                out.append(skyplot.Marker(float(m["ra_deg"]), float(m["dec_deg"]),
                                          str(m.get("name") or f"{cat['catalog']} row {m.get('row')}"), "catalog"))
    return out


def _load_sky(engine: sa.Engine, loc_id: str) -> Any:
    from broker.enrich.store import LocalizationStore

    return LocalizationStore(engine).load(loc_id)


def _aladin_installed() -> bool:
    from broker.web.pages import STATIC_DIR

    return (STATIC_DIR / "vendor" / "aladin-lite" / "aladin.js").is_file()


def _extra_sections(ctx: Any, group: Any) -> dict[str, Any]:
    """``ztf`` and ``followup`` of :mod:`broker.web.group_extra` (helper Z), each in its
    own try: a failure is logged and the section says it is unavailable."""
    out: dict[str, Any] = {"ztf": None, "followup": None, "has_extra": False}
    try:
        from broker.web import group_extra  # type: ignore[attr-defined]
    except ImportError:
        return out
    out["has_extra"] = True
    from types import SimpleNamespace

    arg = dict(vars(group)) if isinstance(group, SimpleNamespace) else group  # a follow-up-only group: its dict
    for name in ("ztf", "followup"):
        try:
            out[name] = getattr(group_extra, f"{name}_section")(ctx, arg)
        except Exception:  # noqa: BLE001 - one section must not take the page down
            log.exception("group page: the %s section failed", name)
            out[name] = {"unavailable": True}
    return out


def _error_page(ctx: Any, request: Request, status: int, message: str) -> HTMLResponse:
    """The pages' error template (``error.html``) when the app has it, else group.html's own."""
    if _has_template(ctx, "error.html"):
        return ctx.templates.TemplateResponse(request, "error.html", {"status": status, "message": message,
                                                                      "parameter": "key" if status == 400 else None},
                                              status_code=status)
    return ctx.templates.TemplateResponse(request, "group.html", {"error": message, "status": status},
                                          status_code=status)


def _has_template(ctx: Any, name: str) -> bool:
    from jinja2 import TemplateNotFound

    try:
        ctx.templates.env.get_template(name)
    except TemplateNotFound:
        return False
    return True


def _followup_only(ctx: Any, key: str) -> Any:
    """A follow-up group without an event group (an ad-hoc request such as ``user:GRB 230307A``:
    :func:`broker.web.group_extra.followup_group`), as an object like a GroupDetail; or None."""
    from types import SimpleNamespace

    try:
        from broker.web.group_extra import followup_group  # type: ignore[attr-defined]
    except ImportError:
        return None
    try:
        d = followup_group(ctx, key)
    except Exception:  # noqa: BLE001 - then it is a 404 like any unknown key
        log.exception("group page: follow-up group lookup failed")
        return None
    if not d:
        return None
    return SimpleNamespace(**{"url": None, "followup_only": True, **d})


def _checked_group(request: Request, key: str, ctx: Any = None) -> Any:
    """``get_group``'s answer for ``key``: a GroupDetail (or, with ``ctx``, a follow-up-only
    group), or (status, message)."""
    from broker.web.api import ParamError, get_group

    try:
        g = get_group(request, key)
    except ParamError as exc:
        return 400, exc.detail
    if isinstance(g, Response):
        g = _followup_only(ctx, key) if ctx is not None else None
        if g is None:
            return 404, "no such event group (give a group key such as igwn:S230518h or a member Event id)"
    return g


def page_context(ctx: Any, group: Any) -> dict[str, Any]:
    """Everything group.html shows, for a GroupDetail of :func:`broker.web.api.get_group`."""
    engine = ctx.engine
    ids = [r.event_id for r in group.revisions]
    notices = _notices(ctx, ids[-NOTICES_INLINE:])
    loc = localization_of(engine, group.key)
    stored = _stored_point(engine, loc[0]) if loc else None
    coincs = page_coincidences(group)
    xm_event, xmatch = crossmatch_of(engine, ids)
    published = published_of(engine, group.key, [str(c.get("id")) for c in coincs if c.get("id")])
    from broker.event import format_time

    for p in published:
        p["created"] = format_time(p["created_at"]) if p["created_at"] else None
        p["sent"] = format_time(p["sent_at"]) if p["sent_at"] else None
        p["payload_json"] = json.dumps(p["payload"], indent=1, ensure_ascii=False)[:NOTICE_MAX_CHARS]
        p["receipt_json"] = json.dumps(p["receipt"], ensure_ascii=False)[:2000] if p["receipt"] else ""
    markers = _markers(engine, coincs, xmatch)
    aladin = {
        "installed": _aladin_installed(),
        "moc_url": _group_path(group.key) + "/moc.json",
        "localization": None if stored is None else {k: stored[k] for k in ("kind", "ra_deg", "dec_deg",
                                                                             "error_radius_deg")},
        "markers": [{"ra": m.ra_deg, "dec": m.dec_deg, "label": m.label, "kind": m.kind, "radius": m.radius_deg}
                    for m in markers],
    }
    return {"group": group, "notices": notices, "n_inline": NOTICES_INLINE, "localization": loc,
            "stored": stored, "coincidences": coincs, "crossmatch_event": xm_event, "crossmatch": xmatch,
            "published": published, "aladin": aladin, "aladin_json": json.dumps(aladin),
            "skymap_url": _group_path(group.key) + "/skymap.png", "api_url": group.url,
            "notice_url": {i: _group_path(group.key) + "/notice?event=" + quote(i, safe=":") for i in ids},
            "map_url": {r.event_id: _group_path(group.key) + "/skymap.png?event=" + quote(r.event_id, safe=":")
                        for r in group.revisions if r.localization is not None},
            **_extra_sections(ctx, group)}


def install(app: FastAPI, ctx: Any) -> None:
    """Add ``/groups/{key}``, its ``/skymap.png`` and ``/moc.json`` (module docstring).

    Parameters
    ----------
    app : fastapi.FastAPI
    ctx : broker.web.pages.PageContext
        Puts its :class:`SkyRenderer` in ``ctx.extra["skyplot"]`` (and ``app.state.group_skyplot``).
    """
    renderer = ctx.extra.setdefault("skyplot", SkyRenderer())
    app.state.group_skyplot = renderer  # for the benchmark and the tests (its cache, its render count)
    app.state.group_notice_cache = _notice_cache(ctx)

    async def skymap_png(request: Request, key: str) -> Response:
        g = await asyncio.to_thread(_checked_group, request, key, ctx)
        if isinstance(g, tuple):
            return _error_page(ctx, request, *g)
        event = request.query_params.get("event")
        if event is not None and event not in {r.event_id for r in g.revisions}:
            return _error_page(ctx, request, 404, "event: not a revision of this group")
        loc = await asyncio.to_thread(localization_of, ctx.engine, g.key, event)
        coincs = page_coincidences(g)
        _, xmatch = await asyncio.to_thread(crossmatch_of, ctx.engine, [r.event_id for r in g.revisions])
        markers = await asyncio.to_thread(_markers, ctx.engine, coincs, xmatch)
        loc_id = loc[0] if loc else "none"
        kinds = {r.event_id: r.alert_type for r in g.revisions}
        title = g.key + (f" · {kinds.get(loc[1], '')} revision" if loc else " · no stored localization") \
            + (" · RETRACTED" if getattr(g, "retracted", False) else "")
        cache_key = hashlib.sha256(json.dumps([skyplot.PLOT_VERSION, loc_id, title,
                                               [m.__dict__ for m in markers]]).encode()).hexdigest()

        def draw() -> bytes:
            sky = _load_sky(ctx.engine, loc_id) if loc else None
            return skyplot.render_png(sky, markers=markers, title=title)

        try:
            data = await renderer.png(cache_key, draw)
        except asyncio.TimeoutError:
            return Response("the sky map is still being drawn; reload in a few seconds", status_code=503,
                            media_type="text/plain", headers={"Retry-After": "5"})
        except Exception as exc:  # noqa: BLE001 - a map that cannot be drawn: no traceback to the client
            log.warning("group page: sky map of %s not drawn: %s", g.key[:80], type(exc).__name__)
            return Response("the sky map could not be drawn", status_code=500, media_type="text/plain")
        return Response(data, media_type="image/png",
                        headers={"ETag": f'"{cache_key[:32]}"', "Cache-Control": "public, max-age=60"})

    def moc_json(request: Request, key: str) -> Response:
        g = _checked_group(request, key, ctx)
        if isinstance(g, tuple):
            return JSONResponse({"detail": g[1], "parameter": "key"}, status_code=g[0])
        try:
            level = float(request.query_params.get("level", "0.9"))
        except ValueError:
            level = float("nan")
        if not 0 < level <= 1:
            return JSONResponse({"detail": "level: a credible level in (0, 1]", "parameter": "level"}, 400)
        loc = localization_of(ctx.engine, g.key)
        if loc is None:
            return JSONResponse({"key": g.key, "localization_id": None, "event_id": None, "moc": {},
                                 "max_order": 0, "area_deg2": 0.0, "n_tiles": 0, "level": level,
                                 "center_ra_deg": None, "center_dec_deg": None, "radius_deg": None})
        return JSONResponse({"key": g.key, "localization_id": loc[0], "event_id": loc[1],
                             **moc_of(ctx.engine, loc[0], level)})

    def group_page(request: Request, key: str) -> Response:
        g = _checked_group(request, key, ctx)
        if isinstance(g, tuple):
            return _error_page(ctx, request, *g)
        return ctx.templates.TemplateResponse(request, "group.html", page_context(ctx, g))

    def notice(request: Request, key: str) -> Response:
        g = _checked_group(request, key, ctx)
        if isinstance(g, tuple):
            return _error_page(ctx, request, *g)
        event = request.query_params.get("event")
        if event is None or event not in {r.event_id for r in g.revisions}:
            return _error_page(ctx, request, 404, "event: not a revision of this group")
        n = _notices(ctx, [event]).get(event)
        if n is None or "error" in n:
            return _error_page(ctx, request, 404, "the notice of this revision is not archived")
        note = (f"\n[cut after {len(n['text']):,} characters]\n" if n["cut"] else "")
        media = "application/json" if n["kind"] in ("json", "avro") else "text/plain"
        return Response(n["text"] + note, media_type=f"{media}; charset=utf-8")

    async def dispatch(request: Request, key: str) -> Response:
        # one path route: group keys and Event ids hold ':' and may hold '/'
        if key.endswith("/notice"):
            return await asyncio.to_thread(notice, request, key.removesuffix("/notice"))
        if key.endswith("/skymap.png"):
            return await skymap_png(request, key.removesuffix("/skymap.png"))
        if key.endswith("/moc.json"):
            return await asyncio.to_thread(moc_json, request, key.removesuffix("/moc.json"))
        return await asyncio.to_thread(group_page, request, key)

    app.add_api_route("/groups/{key:path}", dispatch, methods=["GET"], include_in_schema=False,
                      response_class=HTMLResponse)
