"""The ``tns`` channel: AT reports to the Transient Name Server's bulk-report API (httpx).

Protocol (TNS bulk-report API: the "TNS bulk reports manual",
https://www.wis-tns.org/sites/default/files/api/TNS_bulk_reports_manual.pdf, and the
TNS sample client by K. Smith as kept in AMPEL, github:AmpelAstro/Ampel-HU-astro
``ampel/contrib/hu/t3/ampel_tns.py``, BSD-3-Clause; the same exchange as LCOGT/hermes
``hermes/tns.py``):

1. ``POST {base_url}/bulk-report`` with the form fields ``api_key`` and ``data`` (the
   report as a JSON *string*: ``{"at_report": {"0": {...}}}``) and the bot's
   ``User-Agent: tns_marker{"tns_id": <bot id>, "type": "bot", "name": "<bot name>"}``.
   TNS answers ``{"id_code": 200, "id_message": "OK", "data": {"report_id": ...}}``:
   the report is queued, not yet checked.
2. ``POST {base_url}/bulk-report-reply`` with ``api_key`` and ``report_id`` until it is
   processed: HTTP 404 while TNS has not processed it; 200 with
   ``data.feedback.at_report`` = ``[{"100": {"objname": "2024abc", "message": ...}}]``
   when accepted (``100``: a new object; ``101``: the report was added to an existing
   object, whose name it gives); 400 with the reasons in ``data.feedback`` when rejected.
3. Rate limits: TNS answers 429 when a bot sends too many requests, with headers
   ``x-rate-limit-limit``, ``x-rate-limit-remaining`` and ``x-rate-limit-reset``
   (seconds until the window resets) — the same family per endpoint kind, e.g.
   ``x-cone-rate-limit-*`` (as TNS's own sample search client reads them).

What the channel does with it (``broker.sinks.channels`` contract):

``send``
    validates, posts once and returns the receipt ``{"pending": True, "status":
    "pending", "report_id", "submitted_at", "base_url"}``. Refusals (400, 401, 403,
    404) are not retryable; 429 (:class:`TnsRateLimited`, ``retry_after_s`` from the
    reset header), 5xx and connection failures before the request went out are
    retryable. A request sent whose answer never came (read timeout, connection
    dropped) is *not* retryable: TNS may well have queued it, and a second send would
    report the object twice — ``mma-broker outbox retry ID`` after looking at TNS.
``poll``
    asks for the reply of a pending report: None while TNS answers 404; the new
    receipt with ``status`` ``accepted`` (``object_name``, ``object_names``,
    ``new_object``) or ``rejected``, the TNS ``feedback`` kept as TNS sent it. A slow
    or failed reply, 429 and 5xx are retryable (polling is read-only).
``recover``
    the bulk-report API finds a report by its ``report_id`` only, which a crash
    between sending and recording loses: :class:`~broker.sinks.channels.ChannelError`
    (``retryable=False``), the entry becomes ``unknown``.

The API key travels in the form body only: never in a URL, a log line, an error or a
receipt.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from broker.sinks.channels import BaseChannel, ChannelError
from broker.sinks.outbox import OutboxEntry
from broker.text import one_line

log = logging.getLogger(__name__)

REPORT_PATH = "bulk-report"
"""Path of the report endpoint under ``base_url``."""
REPLY_PATH = "bulk-report-reply"
"""Path of the reply endpoint under ``base_url``."""

MAX_FEEDBACK_CHARS = 20_000
"""Longest TNS feedback kept in a receipt (JSON characters); longer is cut and marked."""

_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d{1,6})?$")
_ID = re.compile(r"^\d{1,9}$")


class TnsRateLimited(ChannelError):
    """TNS answered 429: the bot's request budget is spent until the window resets.

    Attributes
    ----------
    retry_after_s : float or None
        Seconds until TNS resets the budget (its ``x-...-rate-limit-reset`` header, or
        ``Retry-After``); None when it sent neither.
    """

    def __init__(self, message: object, retry_after_s: float | None) -> None:
        super().__init__(message, retryable=True)
        self.retry_after_s = retry_after_s


# ------------------------------------------------------------------ validation
def _fail(path: str, what: str) -> ValueError:
    return ValueError(f"TNS AT report {path}: {what}")


def _number(obj: Mapping[str, Any], key: str, path: str, *, lo: float | None = None, hi: float | None = None,
            required: bool = True) -> float | None:
    v = obj.get(key)
    if v is None or v == "":
        if required:
            raise _fail(f"{path}.{key}", "missing")
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise _fail(f"{path}.{key}", f"not a number ({one_line(v, 40)})") from None
    if not math.isfinite(x) or (lo is not None and x < lo) or (hi is not None and x > hi):
        raise _fail(f"{path}.{key}", f"{x} outside [{lo}, {hi}]")
    return x


def _ident(obj: Mapping[str, Any], key: str, path: str) -> str:
    v = obj.get(key)
    s = str(v) if isinstance(v, (int, str)) and not isinstance(v, bool) else ""
    if not _ID.match(s):
        raise _fail(f"{path}.{key}", "missing or not a TNS id (digits)" if v in (None, "") else
                    f"not a TNS id (digits): {one_line(v, 40)}")
    return s


def _when(obj: Mapping[str, Any], key: str, path: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not _DATETIME.match(v):
        raise _fail(f"{path}.{key}", "missing" if v in (None, "") else
                    f"not a UTC date and time 'YYYY-MM-DD HH:MM:SS[.sss]': {one_line(v, 40)}")
    return v.replace("T", " ")


def _measurement(p: Mapping[str, Any], path: str, *, limit_only: bool) -> str:
    if not isinstance(p, Mapping):
        raise _fail(path, "not an object")
    when = _when(p, "obsdate", path)
    if limit_only:
        _number(p, "limiting_flux", path)
    else:
        flux = _number(p, "flux", path, required=False)
        if flux is None:
            _number(p, "limiting_flux", path)  # a photometry point may be a limit only
        _number(p, "flux_error", path, lo=0.0, required=False)
        _number(p, "limiting_flux", path, required=False)
    for key in ("flux_units", "filter_value", "instrument_value"):
        _ident(p, key, path)
    _number(p, "exptime", path, lo=0.0, required=False)
    return when


def validate_report(payload: Any) -> None:
    """Check a TNS bulk-report payload holding AT reports before it is sent.

    Follows the fields of the TNS bulk reports manual (AT report): ``ra``/``dec``
    (``value`` in degrees, ``error`` ≥ 0 with ``units``), ``reporting_group_id``,
    ``discovery_data_source_id``, ``reporter``, ``discovery_datetime``, ``at_type``,
    ``photometry.photometry_group`` (at least one point: ``obsdate``, ``flux`` or
    ``limiting_flux``, ``flux_units``, ``filter_value``, ``instrument_value``) and
    ``non_detection`` (a measured limit — ``obsdate``, ``limiting_flux`` and the three
    ids — earlier than the discovery, or ``archiveid`` with ``archival_remarks``).

    Parameters
    ----------
    payload : dict
        ``{"at_report": {"0": {...}, "1": {...}}}``.

    Raises
    ------
    ValueError
        Naming the JSON path (``$.at_report.0.ra.value``) and what is wrong.
    """
    if not isinstance(payload, Mapping):
        raise _fail("$", "not a JSON object")
    extra = sorted(set(payload) - {"at_report"})
    if extra:
        raise _fail("$", f"unexpected keys {extra} (this channel sends AT reports only)")
    reports = payload.get("at_report")
    if not isinstance(reports, Mapping) or not reports:
        raise _fail("$.at_report", "missing or empty (an object of reports keyed '0', '1', ...)")
    if sorted(reports, key=lambda k: (len(str(k)), str(k))) != [str(i) for i in range(len(reports))]:
        raise _fail("$.at_report", f"keys must be '0'..'{len(reports) - 1}', got {sorted(reports)[:5]}")
    for k, rep in reports.items():
        path = f"$.at_report.{k}"
        if not isinstance(rep, Mapping):
            raise _fail(path, "not an object")
        for axis, hi, lo in (("ra", 360.0, 0.0), ("dec", 90.0, -90.0)):
            pos = rep.get(axis)
            if not isinstance(pos, Mapping):
                raise _fail(f"{path}.{axis}", "missing (an object with value, error, units)")
            _number(pos, "value", f"{path}.{axis}", lo=lo, hi=hi)
            if _number(pos, "error", f"{path}.{axis}", lo=0.0, required=False) is not None and \
                    pos.get("units") not in ("arcsec", "arcmin", "deg"):
                raise _fail(f"{path}.{axis}.units", "must be arcsec, arcmin or deg when an error is given")
        _ident(rep, "reporting_group_id", path)
        _ident(rep, "discovery_data_source_id", path)
        _ident(rep, "at_type", path)
        reporter = rep.get("reporter")
        if not isinstance(reporter, str) or not reporter.strip():
            raise _fail(f"{path}.reporter", "missing (who reports: names and affiliations)")
        discovered = _when(rep, "discovery_datetime", path)
        phot = rep.get("photometry")
        group = phot.get("photometry_group") if isinstance(phot, Mapping) else None
        if not isinstance(group, Mapping) or not group:
            raise _fail(f"{path}.photometry.photometry_group", "missing or empty (at least the discovery point)")
        for j, p in group.items():
            _measurement(p, f"{path}.photometry.photometry_group.{j}", limit_only=False)
        nd = rep.get("non_detection")
        nd_path = f"{path}.non_detection"
        if not isinstance(nd, Mapping):
            raise _fail(nd_path, "missing (a last non-detection, or archiveid with archival_remarks)")
        if nd.get("obsdate") not in (None, ""):
            when = _measurement(nd, nd_path, limit_only=True)
            if when >= discovered:
                raise _fail(f"{nd_path}.obsdate", f"{when} is not before the discovery {discovered}")
        elif nd.get("archiveid") in (None, "") or not str(nd.get("archival_remarks") or "").strip():
            raise _fail(nd_path, "needs obsdate and limiting_flux, or archiveid and archival_remarks")
        else:
            _ident(nd, "archiveid", nd_path)
        for key in ("remarks", "internal_name", "host_name"):
            if key in rep and not isinstance(rep[key], str):
                raise _fail(f"{path}.{key}", "not a string")
        _number(rep, "host_redshift", path, lo=0.0, required=False)
        _number(rep, "transient_redshift", path, lo=0.0, required=False)


# ------------------------------------------------------------------ the channel
def tns_marker(bot_id: int | str, bot_name: str) -> str:
    """The ``User-Agent`` a TNS bot sends: ``tns_marker{"tns_id": 1234, "type": "bot", "name": "my_bot"}``."""
    tid: Any = int(bot_id) if str(bot_id).isdigit() else str(bot_id)
    return "tns_marker" + json.dumps({"tns_id": tid, "type": "bot", "name": bot_name})


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds until a TNS rate-limit window resets, from a response's headers.

    The ``*-reset`` header whose ``*-remaining`` is 0 (``x-rate-limit-*``,
    ``x-cone-rate-limit-*``), else ``x-rate-limit-reset``, else ``Retry-After``
    (seconds). None when none is present or parsable.
    """
    low = {k.lower(): v for k, v in headers.items()}
    names = [k[: -len("remaining")] + "reset" for k, v in low.items() if k.endswith("-remaining") and
             str(v).strip() == "0"] + ["x-rate-limit-reset", "retry-after"]
    for name in names:
        try:
            v = float(low[name])
        except (KeyError, ValueError):
            continue
        if math.isfinite(v) and v >= 0:
            return v
    return None


def _tns_message(resp: Any) -> str:
    """TNS's own ``id_message`` (or the HTTP reason) of a response, one short line."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    msg = body.get("id_message") if isinstance(body, dict) else None
    return one_line(msg or resp.reason_phrase or "", 200)


def _feedback(body: Any) -> Any:
    fb = body.get("data", {}).get("feedback") if isinstance(body, dict) and isinstance(body.get("data"), dict) else None
    if fb is None:
        return None
    text = json.dumps(fb, ensure_ascii=False, default=str)
    return fb if len(text) <= MAX_FEEDBACK_CHARS else {"truncated": True, "text": text[:MAX_FEEDBACK_CHARS]}


def object_names(feedback: Any) -> list[tuple[str, bool]]:
    """(object name, new object) of each accepted AT report in a reply's feedback.

    Parameters
    ----------
    feedback : dict
        ``data.feedback`` of a bulk-report-reply: ``{"at_report": [{"100": {"objname":
        "2024abc", ...}}, ...]}``. Message ``100`` is a new object, ``101`` a report added
        to an existing object (its name).
    """
    out: list[tuple[str, bool]] = []
    reports = feedback.get("at_report") if isinstance(feedback, dict) else None
    for item in reports if isinstance(reports, list) else []:
        if not isinstance(item, dict):
            continue
        for code, value in item.items():
            if isinstance(value, dict) and isinstance(value.get("objname"), str) and value["objname"]:
                out.append((value["objname"], str(code) != "101"))
    return out


class TnsChannel(BaseChannel):
    """AT reports to TNS through the bulk-report API (see the module docstring).

    Parameters
    ----------
    settings : broker.sinks.config.TnsSettings
        ``base_url``, ``api_key``, ``bot_id``, ``bot_name``, ``timeout_s``.
    client : httpx.Client, optional
        For tests; by default one client per channel, closed by :meth:`close`.

    Raises
    ------
    ValueError
        ``api_key``, ``bot_id`` or ``bot_name`` missing (naming the setting, never its value).
    """

    name = "tns"

    def __init__(self, settings: Any, *, client: Any = None) -> None:
        import httpx

        missing = [f"publish.tns.{k}" for k in ("api_key", "bot_id", "bot_name") if getattr(settings, k, None) in (None, "")]
        if missing:
            raise ValueError(f"the tns channel needs {', '.join(missing)} (a TNS bot's credentials)")
        self.base_url = str(settings.base_url).rstrip("/")
        self._api_key = settings.api_key.get_secret_value() if hasattr(settings.api_key, "get_secret_value") \
            else str(settings.api_key)
        self.timeout_s = float(getattr(settings, "timeout_s", 30.0))
        self.poll_interval_s = float(getattr(settings, "poll_interval_s", 30.0))
        self.user_agent = tns_marker(settings.bot_id, settings.bot_name)
        self.report_path = getattr(settings, "report_path", None) or REPORT_PATH
        self.reply_path = getattr(settings, "reply_path", None) or REPLY_PATH
        self._own_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=httpx.Timeout(self.timeout_s))

    def __repr__(self) -> str:  # never the key
        return f"TnsChannel(base_url={self.base_url!r})"

    def validate(self, payload: dict) -> None:
        """:func:`validate_report` (raises ValueError with the JSON path)."""
        validate_report(payload)

    def _post(self, path: str, data: dict[str, str], what: str) -> Any:
        import httpx

        url = f"{self.base_url}/{path}"
        try:
            return self._client.post(url, data={"api_key": self._api_key, **data},
                                     headers={"User-Agent": self.user_agent}, timeout=self.timeout_s)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ChannelError(f"tns: cannot reach {url} for {what}: {type(exc).__name__}") from None

    def send(self, entry: OutboxEntry) -> dict:
        """Post the AT report once; the receipt holds the TNS ``report_id`` and ``pending: True``.

        Raises
        ------
        ChannelError
            See the module docstring for which failures are retryable;
            :class:`TnsRateLimited` on 429.
        """
        import httpx

        try:
            validate_report(entry.payload)
        except ValueError as exc:
            raise ChannelError(f"tns: {exc}", retryable=False) from None
        url = f"{self.base_url}/{self.report_path}"
        data = json.dumps(entry.payload, ensure_ascii=False, allow_nan=False)
        try:
            resp = self._post(self.report_path, {"data": data}, f"entry {entry.id}")
        except httpx.HTTPError as exc:  # sent, no answer: TNS may have queued it
            raise ChannelError(f"tns: no answer from {url} for entry {entry.id} ({type(exc).__name__} after "
                               f"{self.timeout_s:g} s): the report may have been received; check TNS before "
                               "`mma-broker outbox retry`", retryable=False) from None
        status = resp.status_code
        if status == 429:
            wait = retry_after(resp.headers)
            raise TnsRateLimited(f"tns: rate limited (429) at {url}" +
                                 (f", budget resets in {wait:g} s" if wait is not None else ""), wait)
        if status >= 500:
            raise ChannelError(f"tns: {url} answered {status} {_tns_message(resp)}", retryable=True)
        if status != 200:
            raise ChannelError(f"tns: {url} refused entry {entry.id}: {status} {_tns_message(resp)}", retryable=False)
        try:
            body = resp.json()
            report_id = body["data"]["report_id"]
        except (ValueError, KeyError, TypeError):
            raise ChannelError(f"tns: {url} answered 200 without a report_id for entry {entry.id}: the report may "
                               "have been received; check TNS before `mma-broker outbox retry`",
                               retryable=False) from None
        if body.get("id_code") not in (None, 200, "200"):
            raise ChannelError(f"tns: {url} answered id_code {one_line(body.get('id_code'), 20)} "
                               f"{_tns_message(resp)}", retryable=False)
        log.info("tns: entry %s sent, TNS report id %s", entry.id, report_id)
        return {"pending": True, "status": "pending", "report_id": str(report_id), "base_url": self.base_url,
                "submitted_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")}

    def poll(self, entry: OutboxEntry) -> dict | None:
        """Ask TNS for the reply to the entry's report.

        Returns
        -------
        dict or None
            None while the report is not processed (TNS answers 404) or the receipt is
            not pending; else the receipt with ``pending: False`` and ``status``
            ``accepted`` (``object_name``, ``object_names``, ``new_object``,
            ``feedback``) or ``rejected`` (``feedback``, ``id_message``).

        Raises
        ------
        ChannelError
            Retryable: no answer in ``timeout_s``, 429 (:class:`TnsRateLimited`), 5xx,
            an unreadable answer. Not retryable: the key refused (401, 403) or a
            receipt without a report id.
        """
        import httpx

        receipt = dict(entry.receipt or {})
        if not receipt.get("pending"):
            return None
        report_id = receipt.get("report_id")
        if not report_id:
            raise ChannelError(f"tns: entry {entry.id} is pending without a report_id", retryable=False)
        url = f"{self.base_url}/{self.reply_path}"
        try:
            resp = self._post(self.reply_path, {"report_id": str(report_id)}, f"report {report_id}")
        except httpx.HTTPError as exc:
            raise ChannelError(f"tns: no reply from {url} for report {report_id} in {self.timeout_s:g} s "
                               f"({type(exc).__name__})", retryable=True) from None
        status = resp.status_code
        if status == 404:
            return None
        if status == 429:
            wait = retry_after(resp.headers)
            raise TnsRateLimited(f"tns: rate limited (429) at {url}" +
                                 (f", budget resets in {wait:g} s" if wait is not None else ""), wait)
        if status >= 500:
            raise ChannelError(f"tns: {url} answered {status} {_tns_message(resp)}", retryable=True)
        if status in (401, 403):
            raise ChannelError(f"tns: {url} refused the bot: {status} {_tns_message(resp)}", retryable=False)
        try:
            body = resp.json()
        except ValueError:
            raise ChannelError(f"tns: {url} answered {status} without JSON for report {report_id}",
                               retryable=True) from None
        now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        feedback = _feedback(body)
        names = object_names(feedback) if status == 200 else []
        receipt.update(pending=False, replied_at=now, feedback=feedback, id_code=body.get("id_code", status),
                       id_message=one_line(body.get("id_message") or "", 200))
        if names:
            receipt.update(status="accepted", object_name=names[0][0], object_names=[n for n, _ in names],
                           new_object=names[0][1])
            log.info("tns: report %s of entry %s accepted: %s", report_id, entry.id, names[0][0])
        else:
            receipt["status"] = "rejected"
            log.warning("tns: report %s of entry %s rejected by TNS (%s %s)", report_id, entry.id, status,
                        receipt["id_message"])
        return receipt

    def recover(self, entry: OutboxEntry) -> dict | None:
        """Always unknowable: TNS finds a report by the report id only, which the crash lost.

        Raises
        ------
        ChannelError
            ``retryable=False``.
        """
        raise ChannelError(f"tns: entry {entry.id} may or may not have reached TNS (the bulk-report API finds a "
                           "report by its report_id only); look for the object on TNS, then "
                           f"`mma-broker outbox retry {entry.id}` if it is not there", retryable=False)

    def close(self) -> None:
        if self._own_client:
            self._client.close()


def tns_channel(settings: Any) -> TnsChannel | None:
    """The channel from the settings (root, ``[publish]`` or its ``tns`` section); None when
    ``[publish.tns] enabled`` is false (the default). Entry point ``mma_broker.channels``
    ``tns`` (:mod:`broker.sinks.build`)."""
    tns = getattr(getattr(settings, "publish", settings), "tns", settings)
    return TnsChannel(tns) if getattr(tns, "enabled", False) else None


build = tns_channel
