"""``mma-broker outbox`` and ``mma-broker serve`` (CLI plugins).

``pyproject.toml`` registers :data:`app` (``outbox``) and :data:`serve_app` (``serve``)
under the entry-point group ``mma_broker.cli``. Like every CLI plugin module this one
imports typer and the standard library only; each command imports SQLAlchemy when it runs.

* ``outbox list [--state S] [--channel C] [--limit N] [--json]`` — entries, newest first;
* ``outbox show ID_OR_KEY [--json]`` — one entry with its payload and receipt;
* ``outbox approve ID [--by NAME]`` — a ``pending_approval`` entry becomes ``queued``;
* ``outbox reject ID --reason TEXT [--by NAME]`` — it will never be sent;
* ``outbox retry ID [--by NAME]`` — a ``failed``, ``unknown``, ``rejected`` or ``withdrawn``
  entry is queued again (an ``unknown`` one only after checking on the channel that it
  did not go out);
* ``serve [--host H] [--port P]`` — the artifacts over HTTP (:mod:`broker.sinks.web`) and the
  archive's read JSON API under ``/api`` (:mod:`broker.web.api`).

``--by`` defaults to the login name. Errors are one line, ``mma-broker: error: ...``,
exit code 1.
"""

from __future__ import annotations

import json
from typing import Optional

import typer

app = typer.Typer(name="outbox", no_args_is_help=True, add_completion=False,
                  help="Outgoing messages (HERMES, GCN, TNS): list, show, approve, reject, retry.")
serve_app = typer.Typer(name="serve", add_completion=False, invoke_without_command=True,
                        help="Serve the artifacts (PNG, JSON) that published messages link to, and the archive's JSON API.")


@app.callback()
def _group() -> None:
    """Outgoing messages: every one is written to the outbox before it is sent."""


def _settings():
    from broker.app import current_app

    return current_app().settings


def _who(by: str | None) -> str:
    if by:
        return by
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (a container): say so
        return "unknown user"


class _Opened:
    def __enter__(self):
        from broker.app import open_archive
        from broker.sinks.outbox import Outbox

        self.archive = open_archive(_settings(), read_only=True)
        return Outbox(self.archive.engine)

    def __exit__(self, *exc) -> None:
        self.archive.close()


def _fail(message: str) -> None:
    from broker.errors import BrokerError

    raise BrokerError(message)


def _line(e) -> str:
    from broker.text import one_line

    when = e.updated_at.strftime("%Y-%m-%dT%H:%M:%SZ") if e.updated_at else "-"
    extra = ""
    if e.state in ("failed", "unknown") and e.last_error:
        extra = f"  {e.last_error}"
    elif e.state == "sent" and e.receipt:
        extra = "  " + ", ".join(f"{k}={v}" for k, v in e.receipt.items() if k != "recovered")
    elif e.state in ("rejected", "withdrawn") and e.decision:
        extra = f"  {e.decision} ({e.decided_by})"
    if e.state in ("sent", "unknown") and e.decision:  # e.g. a TNS report whose source was retracted
        extra = f"  [{e.decision}]" + extra
    return one_line(f"{e.id:>6}  {e.state:<16} {e.channel:<13} {when}  {e.key}{extra}", 400)


@app.command("list")
def outbox_list(
    state: Optional[str] = typer.Option(None, "--state", help="pending_approval, queued, sending, sent, failed, "
                                                             "withdrawn, rejected or unknown."),
    channel: Optional[str] = typer.Option(None, "--channel", help="hermes, gcn-notice, gcn-circular, tns, ..."),
    limit: int = typer.Option(100, "--limit", min=1, max=100_000, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="JSON Lines (payload and receipt included)."),
) -> None:
    """List outbox entries, newest first."""
    from broker.sinks.outbox import STATES

    if state is not None and state not in STATES:
        _fail(f"unknown state {state!r}: one of {', '.join(STATES)}")
    with _Opened() as ob:
        entries = ob.list(state=state, channel=channel, limit=limit)
        counts = ob.counts() if not as_json else {}
    if as_json:
        for e in entries:
            print(json.dumps(e.to_json(), ensure_ascii=False))
        return
    totals: dict[str, int] = {}
    for (_, s), n in counts.items():
        totals[s] = totals.get(s, 0) + n
    print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} shown; in the outbox: "
          + (", ".join(f"{n} {s}" for s, n in sorted(totals.items())) or "none"))
    for e in entries:
        print(_line(e))


@app.command("show")
def outbox_show(
    id_or_key: str = typer.Argument(..., help="Entry id or idempotency key."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Show one entry: its state, history fields, payload (as it will be sent) and receipt."""
    try:
        id_or_key.encode("utf-8")
    except UnicodeEncodeError:
        _fail("the entry id or key is not valid UTF-8 text")
    with _Opened() as ob:
        e = ob.get(id_or_key)
    if e is None:
        _fail(f"no outbox entry {id_or_key[:120]!r}{'…' if len(id_or_key) > 120 else ''}")
    doc = e.to_json()
    if as_json:
        print(json.dumps(doc, ensure_ascii=False))
        return
    from broker.text import one_line

    for k, v in doc.items():
        if k in ("payload", "receipt") or v is None:
            continue
        print(f"{k + ':':<18} {one_line(str(v), 500)}")
    if e.receipt is not None:
        print("receipt:")
        print(json.dumps(e.receipt, indent=2, ensure_ascii=False))
    print("payload:")
    print(json.dumps(e.payload, indent=2, ensure_ascii=False))


@app.command("approve")
def outbox_approve(
    entry_id: int = typer.Argument(..., help="Entry id."),
    by: Optional[str] = typer.Option(None, "--by", help="Who approves (default: the login name)."),
) -> None:
    """Approve a pending entry: the sender sends it next."""
    with _Opened() as ob:
        e = ob.approve(entry_id, _who(by))
    print(f"approved: {_line(e)}")


@app.command("reject")
def outbox_reject(
    entry_id: int = typer.Argument(..., help="Entry id."),
    reason: str = typer.Option(..., "--reason", help="Why (kept with the entry)."),
    by: Optional[str] = typer.Option(None, "--by", help="Who rejects (default: the login name)."),
) -> None:
    """Reject an entry that was not sent: it never will be."""
    with _Opened() as ob:
        e = ob.reject(entry_id, _who(by), reason)
    print(f"rejected: {_line(e)}")


@app.command("retry")
def outbox_retry(
    entry_id: int = typer.Argument(..., help="Entry id."),
    by: Optional[str] = typer.Option(None, "--by", help="Who asks (default: the login name)."),
) -> None:
    """Queue a failed, unknown, rejected or withdrawn entry again (unknown: check first that it did not go out)."""
    with _Opened() as ob:
        e = ob.retry(entry_id, _who(by))
    print(f"queued again: {_line(e)}")


@serve_app.callback()
def serve(
    host: Optional[str] = typer.Option(None, "--host", help="Address to listen on (default [publish] serve_host)."),
    port: Optional[int] = typer.Option(None, "--port", min=0, max=65535,
                                       help="Port (default [publish] serve_port)."),
) -> None:
    """Serve the artifacts by sha256 under /artifacts/sha256/<hex> until interrupted."""
    from broker.sinks.web import serve as run

    s = _settings()
    h = host or s.publish.serve_host
    p = s.publish.serve_port if port is None else port
    print(f"web: http://{h}:{p}/ (live events; /search, /groups/<key>, the approval desk /desk)\n"
          f"API: http://{h}:{p}/api/events, the live stream /api/stream (OpenAPI: /openapi.json)\n"
          f"artifacts: http://{h}:{p}/artifacts/sha256/<hex> "
          f"(public links: {s.publish.public_base_url}/artifacts/sha256/<hex>)", flush=True)
    run(s, host=h, port=p)
