"""A local HTTP server speaking TNS's bulk-report protocol, for tests (no internet).

A real ``http.server`` on a free port of 127.0.0.1, in a thread. It answers as TNS's
bulk-report API does (broker/sinks/tns.py, module docstring):

* ``POST /api/bulk-report`` (form: ``api_key``, ``data`` = the report as a JSON string):
  401 for a wrong key, 403 without a bot ``tns_marker`` User-Agent naming the expected
  bot, 400 when ``data`` is not JSON or holds no ``at_report``; else
  ``{"id_code": 200, "id_message": "OK", "data": {"report_id": <n>}}``.
* ``POST /api/bulk-report-reply`` (form: ``api_key``, ``report_id``): 404 ``Report not
  found`` for the first ``pending_polls`` asks (not processed yet) and for unknown ids;
  then 200 with ``data.feedback.at_report = [{"100": {"objname": "2020aaa", ...}}]`` for a
  new object, ``"101"`` (same object name) when the same internal name was reported
  before, or 400 with the reasons in ``data.feedback.at_report`` when the report holds a
  value TNS would refuse (a group, AT type, unit, filter or instrument id it does not
  know; no reporter) — the shape of that feedback is this server's model (TNS documents
  the 400 but not every message; the channel keeps whatever TNS sends).

Knobs for the failure cases: ``refuse`` (internal name → message: the reply to a report
of that object is a 400 with the message as the feedback of ``internal_name``, as TNS
refuses a report for a reason of its own), ``rate_limit_next`` (answer 429 to the next n requests,
with ``x-rate-limit-limit``, ``x-rate-limit-remaining: 0`` and ``x-rate-limit-reset``),
``delay_s`` per path (a slow reply), and ``requests`` (everything received, to assert
on headers, bodies and how many reports arrived).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

KNOWN = {
    "groups": {"0", "48", "82"},  # None, ZTF (data source), a reporting group
    "at_types": {"0", "1", "2", "3", "4", "5"},
    "units": {str(i) for i in range(34)},
    "filters": {"110", "111", "112"},
    "instruments": {"196"},
}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    form: dict[str, str]


@dataclass
class TnsState:
    api_key: str
    bot_id: int
    bot_name: str
    pending_polls: int = 1
    rate_limit_next: int = 0
    rate_limit_reset_s: int = 2
    delay_s: dict[str, float] = field(default_factory=dict)
    refuse: dict[str, str] = field(default_factory=dict)  # internal name -> TNS's message
    requests: list[Received] = field(default_factory=list)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # internal name -> object name
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reports_received(self) -> int:
        return sum(1 for r in self.requests if r.path.endswith("/bulk-report") and r.form.get("data"))


def _problems(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """Reasons TNS would refuse one AT report, as feedback items."""
    out = []

    def bad(field_: str, value: Any, message: str) -> None:
        out.append({field_: {"value": value, "message": message, "message_id": 400}})

    for key, table in (("reporting_group_id", "groups"), ("discovery_data_source_id", "groups"),
                       ("at_type", "at_types")):
        if str(rep.get(key)) not in KNOWN[table]:
            bad(key, rep.get(key), f"Unknown {key}")
    if not str(rep.get("reporter") or "").strip():
        bad("reporter", rep.get("reporter"), "Reporter is required")
    for j, p in ((rep.get("photometry") or {}).get("photometry_group") or {}).items():
        for key, table in (("flux_units", "units"), ("filter_value", "filters"), ("instrument_value", "instruments")):
            if str(p.get(key)) not in KNOWN[table]:
                bad(f"photometry_group.{j}.{key}", p.get(key), f"Unknown {key}")
    return out


def _object_name(state: TnsState, year: str) -> str:
    n = len(state.names)
    letters = "".join("abcdefghijklmnopqrstuvwxyz"[(n // 26 ** k) % 26] for k in (2, 1, 0))
    return f"{year}{letters}"


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (slow-reply tests)
            pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        st: TnsState = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode(), keep_blank_values=True).items()}
        with st.lock:
            st.requests.append(Received(self.path, dict(self.headers.items()), form))
            limited = st.rate_limit_next > 0
            if limited:
                st.rate_limit_next -= 1
        delay = st.delay_s.get(self.path.rsplit("/", 1)[-1], 0.0)
        if delay:
            time.sleep(delay)
        if limited:
            self._send(429, {"id_code": 429, "id_message": "Too Many Requests"},
                       {"x-rate-limit-limit": "30", "x-rate-limit-remaining": "0",
                        "x-rate-limit-reset": str(st.rate_limit_reset_s)})
            return
        if form.get("api_key") != st.api_key:
            self._send(401, {"id_code": 401, "id_message": "Unauthorized"})
            return
        ua = self.headers.get("User-Agent", "")
        try:
            marker = json.loads(ua[len("tns_marker"):]) if ua.startswith("tns_marker") else None
        except ValueError:
            marker = None
        if not (isinstance(marker, dict) and marker.get("type") == "bot" and marker.get("tns_id") == st.bot_id
                and marker.get("name") == st.bot_name):
            self._send(403, {"id_code": 403, "id_message": "Forbidden"})
            return
        if self.path.endswith("/bulk-report"):
            self._report(st, form)
        elif self.path.endswith("/bulk-report-reply"):
            self._reply(st, form)
        else:
            self._send(404, {"id_code": 404, "id_message": "Not Found"})

    def _report(self, st: TnsState, form: dict[str, str]) -> None:
        try:
            data = json.loads(form.get("data") or "")
            reports = data["at_report"]
            assert isinstance(reports, dict) and reports
        except (ValueError, KeyError, AssertionError, TypeError):
            self._send(400, {"id_code": 400, "id_message": "Bad request", "data": {}})
            return
        with st.lock:
            report_id = str(100_000 + len(st.reports))
            st.reports[report_id] = {"data": data, "polls": 0}
        self._send(200, {"id_code": 200, "id_message": "OK", "data": {"report_id": report_id}})

    def _reply(self, st: TnsState, form: dict[str, str]) -> None:
        with st.lock:
            entry = st.reports.get(form.get("report_id", ""))
            if entry is None or entry["polls"] < st.pending_polls:
                if entry is not None:
                    entry["polls"] += 1
                self._send(404, {"id_code": 404, "id_message": "Report not found"})
                return
            reports = entry["data"]["at_report"]
            problems = {k: _problems(rep) for k, rep in reports.items()}
            for k, rep in reports.items():
                why = st.refuse.get(str(rep.get("internal_name") or ""))
                if why:
                    problems[k].append({"internal_name": {"value": rep.get("internal_name"), "message": why,
                                                          "message_id": 400}})
            if any(problems.values()):
                fb = [{k: p} if p else {} for k, p in problems.items()]
                self._send(400, {"id_code": 400, "id_message": "Bad request",
                                 "data": {"received_data": entry["data"], "feedback": {"at_report": fb}}})
                return
            fb = []
            for rep in reports.values():
                internal = str(rep.get("internal_name") or "")
                if internal and internal in st.names:
                    fb.append({"101": {"message": "The same object already exists under this name.",
                                       "objname": st.names[internal], "message_id": 101}})
                    continue
                name = _object_name(st, str(rep.get("discovery_datetime", "2000"))[:4])
                st.names[internal or name] = name
                fb.append({"100": {"message": "The AT report was added successfully.", "objname": name,
                                   "message_id": 100}})
            self._send(200, {"id_code": 200, "id_message": "OK",
                             "data": {"received_data": entry["data"], "feedback": {"at_report": fb}}})


class TnsServer:
    """The server in a thread: ``with TnsServer(api_key=..., bot_id=..., bot_name=...) as tns:``;
    ``tns.base_url`` is ``http://127.0.0.1:<port>/api``, ``tns.state`` the knobs and records."""

    def __init__(self, *, api_key: str, bot_id: int, bot_name: str, **knobs: Any) -> None:
        self.state = TnsState(api_key=api_key, bot_id=bot_id, bot_name=bot_name, **knobs)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.state = self.state  # type: ignore[attr-defined]
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/api"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="tns-server", daemon=True)

    def __enter__(self) -> "TnsServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
