"""The approval desk of ``mma-broker serve``: pending GCN Circulars, notices and TNS reports.

Pages (a login is needed: without one they redirect to ``/login``)
------------------------------------------------------------------
``GET /desk``
    ``table#pending``: the outbox entries waiting for approval (``tr[data-outbox-id]``),
    newest first; ``table#attention``: entries ``failed`` or ``unknown`` (a crash during a
    send on a channel that cannot tell whether it went out); ``table#recent``: the latest
    decisions (approve, reject, edit, retry), by whom and when.
``GET /desk/{id}``
    One entry as it will be sent: a circular's subject and body as text (with the
    ``From`` and ``To`` of ``[publish.gcn_circular]``), a notice's JSON, a TNS report's
    fields, a HERMES message's title and text; its state, who approved or rejected it;
    ``form#approve``, ``form#reject`` (a reason) and ``form#edit`` while it is pending
    (a circular: subject and body; another channel: the payload as JSON), and
    ``table#audit``: who did what when, with the payload's sha256 before and after.
``POST /desk/{id}/approve|reject|edit|retry``
    The decisions, each with the form's CSRF token (403 without it). They call
    :meth:`broker.sinks.outbox.Outbox.approve`, ``reject``, ``edit`` and ``retry`` — the
    methods ``mma-broker outbox approve|reject|retry`` call — so the running ``publish`` stage sends an
    approved entry once, whichever way it was approved. An edit is checked by the
    channel's own validation before it is saved, refused once the entry is no longer
    pending, and refused (409) when the payload changed since the page was shown.

JSON routes for scripts (``Authorization: Bearer <token>``; 401 without a valid one)
-----------------------------------------------------------------------------------
``GET /api/desk/pending``
    The pending entries (id, key, channel, created, group, payload sha256).
``POST /api/desk/{id}/approve``
    200 ``{"id", "state": "queued", "approved_by", "approved_at"}``; 404 when there is
    no such entry; 409 ``{"detail", "state"}`` when it is not pending (a second approve:
    it is never queued twice, so never sent twice).
``POST /api/desk/{id}/reject``
    Body ``{"reason": "..."}`` (1 to 500 characters); 200, 404 or 409 as above.

Reads and writes here go through the broker's normal engine (``ctx.extra["write_engine"]``):
the desk is behind a login, and its decisions must write.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import sqlalchemy as sa
from fastapi import Request

from broker.sinks.outbox import OUTBOX, OUTBOX_AUDIT, RETRYABLE_STATES, Outbox, OutboxEntry, OutboxError
from broker.web.auth import read_body, read_form

log = logging.getLogger(__name__)

PENDING_LIMIT = 200
ATTENTION_LIMIT = 50
RECENT_LIMIT = 30
MAX_REASON_CHARS = 500
MAX_JSON_DEPTH = 64


class _Validate:
    def __init__(self, fn: Any) -> None:
        self.validate = fn


def validators() -> dict[str, Any]:
    """The built-in channels' own payload checks, by channel name (``.validate(payload)``)."""
    from broker.sinks.gcn import validate_circular, validate_notice
    from broker.sinks.hermes import validate_message
    from broker.sinks.tns import validate_report

    return {"gcn-circular": _Validate(validate_circular), "gcn-notice": _Validate(validate_notice),
            "tns": _Validate(validate_report), "hermes": _Validate(validate_message)}


def parse_id(text: str) -> int | None:
    """An outbox id from a path segment (1 to 18 digits), else None."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def _depth(obj: Any, limit: int) -> bool:
    """Whether ``obj`` nests at most ``limit`` levels (iteratively: no recursion to exhaust)."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > limit:
            return False
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return True


def parse_payload_json(text: str) -> dict:
    """A payload typed on the desk: a JSON object, no NaN/Infinity, nested at most 64 deep.

    Raises
    ------
    ValueError
        Naming what is wrong (never echoing the text).
    """
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        obj = json.loads(text, parse_constant=no_constants)
    except RecursionError:
        raise ValueError("the JSON nests too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise ValueError("the payload must be a JSON object")
    if not _depth(obj, MAX_JSON_DEPTH):
        raise ValueError(f"the JSON nests deeper than {MAX_JSON_DEPTH} levels")
    return obj


def summary(e: OutboxEntry) -> str:
    """One line saying what an entry is (a circular's subject, a HERMES title, TNS objects)."""
    p = e.payload if isinstance(e.payload, dict) else {}
    if e.channel == "gcn-circular":
        return str(p.get("subject", ""))[:200]
    if e.channel == "hermes":
        return str(p.get("title", ""))[:200]
    if e.channel == "tns":
        reps = p.get("at_report") if isinstance(p.get("at_report"), dict) else {}
        names = [str(r.get("internal_name", "?")) for r in reps.values() if isinstance(r, dict)]
        return f"AT report: {', '.join(names)[:180]}" if names else "AT report"
    if e.channel == "gcn-notice":
        keys = ("mission", "id", "alert_type", "trigger_time")
        return ", ".join(f"{k}={str(p[k])[:60]}" for k in keys if k in p)[:200]
    return e.key[:200]


def tns_rows(payload: dict) -> list[dict[str, Any]]:
    """The AT reports of a TNS payload as rows of (field, value) for the page."""
    out = []
    reps = payload.get("at_report") if isinstance(payload.get("at_report"), dict) else {}
    for k, rep in reps.items():
        if not isinstance(rep, dict):
            continue
        fields = []
        for name in ("internal_name", "ra", "dec", "discovery_datetime", "reporting_group_id",
                     "discovery_data_source_id", "reporter", "at_type", "host_name", "host_redshift", "remarks"):
            if name in rep:
                v = rep[name]
                if isinstance(v, dict):
                    v = " ".join(f"{kk}={vv}" for kk, vv in v.items())
                fields.append((name, str(v)))
        phot = rep.get("photometry", {}).get("photometry_group", {}) if isinstance(rep.get("photometry"), dict) else {}
        points = [p for p in phot.values() if isinstance(p, dict)] if isinstance(phot, dict) else []
        nd = rep.get("non_detection") if isinstance(rep.get("non_detection"), dict) else {}
        out.append({"n": k, "fields": fields, "photometry": points, "non_detection": nd})
    return out


def install(app: Any, ctx: Any) -> None:
    """Add the desk's pages and JSON routes (and the logins of :mod:`broker.web.auth` if not yet)."""
    from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
    from starlette.concurrency import run_in_threadpool

    from broker.web import auth as auth_mod
    from broker.web.config import WebSettings

    if "auth" not in ctx.extra:
        auth_mod.install(app, ctx)
    auth: auth_mod.WebAuth = ctx.extra["auth"]
    engine = ctx.extra.get("write_engine", ctx.engine)
    outbox = Outbox(engine, channels=validators())
    templates = ctx.templates
    settings = ctx.settings
    web = getattr(settings, "web", None)
    max_bytes = web.max_form_bytes if isinstance(web, WebSettings) else WebSettings().max_form_bytes

    def render_error(request: Request, status: int, message: str, parameter: str | None = None) -> HTMLResponse:
        fn = ctx.extra.get("render_error")
        if fn is not None:
            return fn(request, status, message, parameter)
        return templates.TemplateResponse(request, "error.html", {"status": status, "message": message,
                                                                  "parameter": parameter}, status_code=status)

    def circular_envelope() -> dict[str, Any]:
        c = getattr(getattr(settings, "publish", None), "gcn_circular", None)
        return {"from": getattr(c, "from_address", ""), "to": ", ".join(getattr(c, "to", []) or [])}

    def recent(entry_id: int | None = None, limit: int = RECENT_LIMIT) -> list[dict[str, Any]]:
        a, o = OUTBOX_AUDIT.c, OUTBOX.c
        q = (sa.select(a.id, a.outbox_id, a.action, a.actor, a.at, a.state_before, a.state_after, a.sha256_before,
                       a.sha256_after, a.detail, o.channel, o.key, o.state.label("state_now"))
             .join_from(OUTBOX_AUDIT, OUTBOX, a.outbox_id == o.id).order_by(a.id.desc()).limit(limit))
        if entry_id is not None:
            q = q.where(a.outbox_id == entry_id)
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def entry_page(request: Request, e: OutboxEntry, *, status: int = 200, error: str | None = None,
                   done: str | None = None, edit_subject: str | None = None, edit_body: str | None = None,
                   edit_json: str | None = None) -> HTMLResponse:
        p = e.payload if isinstance(e.payload, dict) else {}
        return templates.TemplateResponse(request, "desk_entry.html", {
            "e": e, "summary": summary(e), "payload_json": json.dumps(p, indent=2, ensure_ascii=False),
            "edit_json": edit_json if edit_json is not None else json.dumps(p, indent=2, ensure_ascii=False),
            "edit_subject": edit_subject if edit_subject is not None else str(p.get("subject", "")),
            "edit_body": edit_body if edit_body is not None else str(p.get("body", "")),
            "envelope": circular_envelope(), "tns": tns_rows(p) if e.channel == "tns" else [],
            "audit": recent(e.id, 200), "csrf_token": auth.csrf_token(request), "error": error, "done": done,
            "retryable": e.state in RETRYABLE_STATES,
            "user": auth.user(request).username if auth.user(request) else None}, status_code=status,
            headers={"cache-control": "no-store"})

    def load(request: Request, entry_id: str) -> OutboxEntry | HTMLResponse:
        i = parse_id(entry_id)
        e = outbox.get(i) if i is not None else None
        if e is None:
            return render_error(request, 404, "no such outbox entry")
        return e

    # -------------------------------------------------------------- pages
    @app.get("/desk", response_class=HTMLResponse, include_in_schema=False)
    def desk(request: Request) -> HTMLResponse:
        acct = auth.require_user(request)
        try:
            pending = outbox.list(state="pending_approval", limit=PENDING_LIMIT)
            attention = [e for s in ("failed", "unknown") for e in outbox.list(state=s, limit=ATTENTION_LIMIT)]
            decided = recent()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("desk: outbox query failed: %s", type(exc).__name__)
            return render_error(request, 503, "the archive database is unavailable")
        return templates.TemplateResponse(request, "desk.html", {
            "pending": [(e, summary(e)) for e in pending], "recent": decided, "user": acct.username,
            "attention": sorted(((e, summary(e)) for e in attention), key=lambda x: -x[0].id),
            "limit": PENDING_LIMIT}, headers={"cache-control": "no-store"})

    @app.get("/desk/{entry_id}", response_class=HTMLResponse, include_in_schema=False)
    def desk_entry(request: Request, entry_id: str, done: str | None = None) -> HTMLResponse:
        auth.require_user(request)
        e = load(request, entry_id)
        if not isinstance(e, OutboxEntry):
            return e
        return entry_page(request, e, done=done if done in ("approved", "rejected", "edited", "retried") else None)

    async def decide(request: Request, entry_id: str, action: str) -> Any:
        form = await read_form(request, max_bytes)
        return await run_in_threadpool(_decide, request, entry_id, action, form)  # database work off the loop

    def _decide(request: Request, entry_id: str, action: str, form: dict[str, str]) -> Any:
        acct = auth.require_user(request)
        if not auth.check_csrf(request, form):
            return render_error(request, 403, "CSRF token missing or wrong: reload the page and try again")
        e = load(request, entry_id)
        if not isinstance(e, OutboxEntry):
            return e
        by = acct.username
        kw: dict[str, Any] = {}
        try:
            if action == "approve":
                outbox.approve(e.id, by)
            elif action == "retry":
                outbox.retry(e.id, by)
            elif action == "reject":
                reason = form.get("reason", "").strip()
                if not reason or len(reason) > MAX_REASON_CHARS:
                    return entry_page(request, e, status=400,
                                      error=f"A rejection needs a reason of 1 to {MAX_REASON_CHARS} characters.")
                outbox.reject(e.id, by, reason)
            else:
                if form.get("base_sha256") != e.payload_sha256:
                    return entry_page(request, e, status=409, error="The entry changed since this page was shown "
                                      "(another edit or decision): review it again.")
                if e.channel == "gcn-circular":
                    subject = form.get("subject", "").replace("\r\n", "\n")
                    body = form.get("body", "").replace("\r\n", "\n")
                    kw = {"edit_subject": subject, "edit_body": body}
                    payload = {**e.payload, "subject": subject, "body": body}
                else:
                    kw = {"edit_json": form.get("payload", "")}
                    payload = parse_payload_json(form.get("payload", ""))
                if e.channel not in outbox.channels:
                    return entry_page(request, e, status=400, error=f"Entries of channel {e.channel} cannot be "
                                      "validated here, so they cannot be edited on the desk.", **kw)
                outbox.edit(e.id, by, payload)
        except ValueError as exc:
            return entry_page(request, e, status=400, error=f"Not saved: {str(exc)[:500]}", **kw)
        except OutboxError:
            now = outbox.get(e.id)
            state = now.state if now is not None else "gone"
            if action == "retry":
                why = f"Not done: the entry is {state}; only a {', '.join(RETRYABLE_STATES)} entry can be retried."
            else:
                verb = {"approve": "approved", "reject": "rejected", "edit": "edited"}[action]
                why = f"Not done: the entry is {state}; only an entry pending approval can be {verb}."
            return entry_page(request, now or e, status=409, error=why)
        log.info("desk: %s %s outbox entry %d", by, action, e.id)
        done = {"approve": "approved", "reject": "rejected", "edit": "edited", "retry": "retried"}[action]
        return RedirectResponse(f"/desk/{e.id}?done={done}", status_code=303)

    @app.post("/desk/{entry_id}/approve", include_in_schema=False)
    async def desk_approve(request: Request, entry_id: str):
        return await decide(request, entry_id, "approve")

    @app.post("/desk/{entry_id}/reject", include_in_schema=False)
    async def desk_reject(request: Request, entry_id: str):
        return await decide(request, entry_id, "reject")

    @app.post("/desk/{entry_id}/edit", include_in_schema=False)
    async def desk_edit(request: Request, entry_id: str):
        return await decide(request, entry_id, "edit")

    @app.post("/desk/{entry_id}/retry", include_in_schema=False)
    async def desk_retry(request: Request, entry_id: str):
        return await decide(request, entry_id, "retry")

    # -------------------------------------------------------------- JSON
    def unauthorized() -> JSONResponse:
        return JSONResponse({"detail": "a valid API token is needed: Authorization: Bearer <token>",
                             "parameter": None}, status_code=401, headers={"WWW-Authenticate": "Bearer"})

    def api_entry(e: OutboxEntry) -> dict[str, Any]:
        d = e.to_json()
        return {k: d[k] for k in ("id", "key", "channel", "state", "group_key", "source_event_id", "payload_sha256",
                                  "created_at", "approved_by", "approved_at", "decided_by", "decision")}

    @app.get("/api/desk/pending", tags=["desk"], summary="Outbox entries waiting for approval (Bearer token)")
    def api_pending(request: Request) -> Any:
        if auth.bearer(request) is None:
            return unauthorized()
        return {"items": [api_entry(e) for e in outbox.list(state="pending_approval", limit=PENDING_LIMIT)]}

    async def api_decide(request: Request, entry_id: str, action: str) -> Any:
        body = await read_body(request, max_bytes) if action == "reject" else b""
        return await run_in_threadpool(_api_decide, request, entry_id, action, body)

    def _api_decide(request: Request, entry_id: str, action: str, body: bytes) -> Any:
        acct = auth.bearer(request)
        if acct is None:
            return unauthorized()
        i = parse_id(entry_id)
        if i is None:
            return JSONResponse({"detail": "id: not an outbox entry id", "parameter": "id"}, status_code=400)
        reason = None
        if action == "reject":
            try:
                doc = json.loads(body.decode("utf-8")) if body else {}
            except (UnicodeDecodeError, ValueError, RecursionError):
                return JSONResponse({"detail": "the body is not JSON", "parameter": None}, status_code=400)
            reason = doc.get("reason") if isinstance(doc, dict) else None
            if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON_CHARS or "\x00" in reason:
                return JSONResponse({"detail": f"reason: 1 to {MAX_REASON_CHARS} characters of text",
                                     "parameter": "reason"}, status_code=400)
        try:
            e = outbox.approve(i, acct.username) if action == "approve" else outbox.reject(i, acct.username, reason)
        except OutboxError as exc:
            now = outbox.get(i)
            if now is None:
                return JSONResponse({"detail": "no such outbox entry", "parameter": "id"}, status_code=404)
            return JSONResponse({"detail": str(exc), "state": now.state}, status_code=409)
        log.info("desk API: %s %s outbox entry %d", acct.username, action, i)
        return api_entry(e)

    @app.post("/api/desk/{entry_id}/approve", tags=["desk"], summary="Approve a pending entry (Bearer token)")
    async def api_approve(request: Request, entry_id: str) -> Any:
        return await api_decide(request, entry_id, "approve")

    @app.post("/api/desk/{entry_id}/reject", tags=["desk"], summary="Reject an entry: body {\"reason\": ...}")
    async def api_reject(request: Request, entry_id: str) -> Any:
        return await api_decide(request, entry_id, "reject")
