"""The home (live) page ``/``, the search page ``/search`` and the HTML error pages.

``/``
    The newest 50 Events of the archive (server-rendered: it works without JavaScript),
    filtered by ``source``, ``category``, ``mission``, ``alert_type`` and ``topic`` (a
    filter topic ``mma.filter.<name>``: the Events that filter accepted, from the
    archive's ``filter_decisions``). ``static/live.js`` then opens an EventSource on
    ``/api/stream`` with the same filters (:mod:`broker.web.live`) and adds new Events
    at the top of ``table#events``; ``#stream-status`` says whether the stream is live.
``/search``
    Cone (``ra_deg``, ``dec_deg``, ``radius_deg``), T0 window (``since``, ``until``),
    ``category``, ``source`` and ``q`` (upstream id), paged by the API's keyset
    cursor (``a#next-page``).

Both call :func:`broker.web.api.query_events` with the request's parameters, so a bad
one is the API's named :class:`~broker.web.api.ParamError`; the page shows its
message next to the field, with status 400. An empty form field means "not set". Any
other HTTP error of a page (404 of an unknown path, ...) is the HTML ``error.html``;
the JSON routes (``/api``, ``/artifacts``, ``/openapi.json``, ``/health``) keep their
JSON answers. :func:`render_error` is shared as ``ctx.extra["render_error"]`` for the
other page modules (unknown group keys, desk entries).
"""

from __future__ import annotations

import logging
import math
from typing import Any
from urllib.parse import quote, urlencode

import sqlalchemy as sa
from fastapi import Request
from fastapi.responses import HTMLResponse

from broker.web.api import MAX_TEXT, ParamError, check_text, query_events

log = logging.getLogger(__name__)

__all__ = ["install", "loc_summary", "group_href", "HOME_LIMIT", "SEARCH_LIMIT"]

HOME_LIMIT = 50
"""Events the home page lists."""
SEARCH_LIMIT = 50
"""Events per search page."""
HOME_FIELDS = ("source", "category", "mission", "alert_type", "topic")
SEARCH_FIELDS = ("ra_deg", "dec_deg", "radius_deg", "since", "until", "category", "source", "q")
JSON_PREFIXES = ("/api/", "/artifacts/", "/openapi.json", "/health", "/static/")


# ------------------------------------------------------------------ formatting (templates and live.js agree)
def _deg(x: float) -> str:
    return f"{x:.3f}°" if abs(x) >= 0.01 else f'{x * 3600:.2f}"'


def loc_summary(loc: Any) -> str:
    """One line for a localization summary (``EventItem.localization`` as a dict or model).

    A point: ``RA 197.450°, Dec -23.381° ± 0.500° (90 %)``; a sky map: ``sky map, 90 %
    31 deg², peak RA 194.304°, Dec -17.857°``; none: an empty string. ``static/live.js``
    (``locSummary``) writes the same text for live rows.
    """
    if loc is None:
        return ""
    get = loc.get if isinstance(loc, dict) else (lambda k: getattr(loc, k, None))
    ra, dec = get("ra_deg"), get("dec_deg")
    where = f"RA {ra:.3f}°, Dec {dec:+.3f}°" if ra is not None and dec is not None else ""
    if get("kind") == "point":
        err, cont = get("error_radius_deg"), get("containment")
        if err is not None and math.isfinite(err):
            where += f" ± {_deg(err)}"
            if cont is not None:
                where += f" ({cont * 100:.0f} %)"
        return where
    area = get("area_90_deg2")
    head = "sky map" + (f", 90 % {area:,.0f} deg²" if area is not None else "")
    return head + (", peak " + where if where else "")


def group_href(key: str) -> str:
    """The group page's path (helper G's ``/groups/<key>``)."""
    return "/groups/" + quote(key, safe=":")


# ------------------------------------------------------------------ request parameters
def _form(request: Any, names: tuple[str, ...]) -> dict[str, str]:
    """The non-empty query parameters among ``names`` (an empty form field: not set)."""
    return {n: v for n in names if (v := request.query_params.get(n)) not in (None, "")}


def _float(name: str, value: str | None) -> float | None:
    if value is None:
        return None
    check_text(name, value, 64)
    try:
        return float(value)
    except ValueError:
        raise ParamError(name, f"{name}: not a number") from None


class _PageError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _accepted_by(engine: sa.Engine, settings: Any, topic: str, ids: list[str]) -> set[str]:
    """Which of ``ids`` the filter of ``topic`` accepted (``filter_decisions``, the live run)."""
    bare = settings.filters.topic_prefix
    full_prefix = settings.topic(bare)
    name = topic[len(full_prefix):] if topic.startswith(full_prefix) else topic[len(bare):]
    # by its table name (migration 0102 of filters/), as broker.sinks.web reads followup_artifacts
    DECISIONS = sa.table("filter_decisions", sa.column("event_id"), sa.column("run"),
                         sa.column("decisions", sa.JSON))
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT to_regclass('filter_decisions')")).scalar() is None:
            return set()
        rows = conn.execute(sa.select(DECISIONS.c.event_id, DECISIONS.c.decisions)
                            .where(DECISIONS.c.run == "live", DECISIONS.c.event_id.in_(ids))).all()
    # an entry: [filter, config_hash, plugin, version, accepted, ...] (filters.store.DECISIONS)
    return {eid for eid, decisions in rows if any(e[0] == name and e[4] is True for e in decisions)}


def _topic_param(settings: Any, topic: str | None) -> str | None:
    from broker.web.live import StreamFilter

    if topic is None:
        return None
    return StreamFilter.from_params(settings, topic=topic).topic


# ------------------------------------------------------------------ install
def install(app: Any, ctx: Any) -> None:
    """Add ``/``, ``/search`` and the HTML error handler to ``app`` (a page module of
    :data:`broker.web.pages.PAGE_MODULES`)."""
    from fastapi.exception_handlers import http_exception_handler
    from starlette.exceptions import HTTPException as StarletteHTTPException

    templates = ctx.templates
    templates.env.globals.update(loc_summary=loc_summary, group_href=group_href)
    engine, settings = ctx.engine, ctx.settings

    def render_error(request: Request, status: int, message: str, parameter: str | None = None) -> HTMLResponse:
        """The HTML error page: ``status`` (400, 404, 503...) and a one-line ``message``
        (never a traceback or a host path)."""
        return templates.TemplateResponse(request, "error.html", {"status": status, "message": message,
                                                                  "parameter": parameter}, status_code=status)

    ctx.extra["render_error"] = render_error

    def filter_topics() -> list[str]:
        f = getattr(settings, "filters", None)
        return [f.topic_prefix + e.name for e in (f.filters if f is not None else []) if e.publish]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home(request: Request) -> HTMLResponse:
        form = _form(request, HOME_FIELDS)
        error = None
        items: list[Any] = []
        try:
            topic = _topic_param(settings, form.get("topic"))
            params = {k: v for k, v in form.items() if k != "topic"}
            if topic is None:
                items = query_events(engine, limit=HOME_LIMIT, **params).items
            else:  # the newest Events the filter accepted: pages of the archive until 50 are found
                cursor, pages = None, 0
                while len(items) < HOME_LIMIT and pages < 10:
                    page = query_events(engine, limit=200, cursor=cursor, **params)
                    ok = _accepted_by(engine, settings, topic, [it.id for it in page.items])
                    items += [it for it in page.items if it.id in ok]
                    cursor, pages = page.next_cursor, pages + 1
                    if cursor is None:
                        break
                items = items[:HOME_LIMIT]
        except ParamError as exc:
            error = exc
        except sa.exc.SQLAlchemyError as exc:
            log.warning("home page: archive query failed: %s", type(exc).__name__)
            return render_error(request, 503, "the archive database is unavailable")
        return templates.TemplateResponse(
            request, "home.html",
            {"items": items, "form": form, "error": error, "filter_topics": filter_topics(),
             "categories": _categories(), "sources": _sources()},
            status_code=400 if error is not None else 200)

    @app.get("/search", response_class=HTMLResponse, include_in_schema=False)
    def search(request: Request) -> HTMLResponse:
        form = _form(request, SEARCH_FIELDS)
        cursor = request.query_params.get("cursor") or None
        error, page = None, None
        try:
            params: dict[str, Any] = {k: v for k, v in form.items() if k not in ("ra_deg", "dec_deg", "radius_deg")}
            for k in ("ra_deg", "dec_deg", "radius_deg"):
                params[k] = _float(k, form.get(k))
            limit = request.query_params.get("limit") or None
            if limit is not None:
                if check_text("limit", limit, 16) is not None and not limit.isdigit():
                    raise ParamError("limit", "limit: not an integer")
                form["limit"] = limit  # kept by the next-page link
            page = query_events(engine, limit=int(limit) if limit else SEARCH_LIMIT, cursor=cursor, **params)
        except ParamError as exc:
            error = exc
        except sa.exc.SQLAlchemyError as exc:
            log.warning("search page: archive query failed: %s", type(exc).__name__)
            return render_error(request, 503, "the archive database is unavailable")
        next_href = None
        if page is not None and page.next_cursor is not None:
            next_href = "/search?" + urlencode({**form, "cursor": page.next_cursor})
        return templates.TemplateResponse(
            request, "search.html",
            {"page": page, "items": page.items if page else [], "form": form, "error": error,
             "next_href": next_href, "paged": cursor is not None, "categories": _categories(),
             "sources": _sources(), "max_text": MAX_TEXT},
            status_code=400 if error is not None else 200)

    async def html_errors(request: Request, exc: StarletteHTTPException) -> Any:
        if request.url.path.startswith(JSON_PREFIXES) or request.url.path == "/openapi.json":
            return await http_exception_handler(request, exc)
        message = {404: "no such page", 405: "method not allowed"}.get(exc.status_code)
        if message is None:
            message = exc.detail if isinstance(exc.detail, str) and exc.status_code < 500 else "error"
        return render_error(request, exc.status_code, message)

    app.add_exception_handler(StarletteHTTPException, html_errors)


def _categories() -> list[str]:
    from broker.category import CATEGORIES

    return sorted(CATEGORIES)


def _sources() -> list[str]:
    import typing

    from broker.event import Source

    return list(typing.get_args(Source))
