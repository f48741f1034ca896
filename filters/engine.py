"""Running configured filters on one alert, each isolated from the others.

:class:`FilterSet` is the one evaluation path: the filter stage, ``mma-broker filters
test``, the time machine (``filters run``) and the benchmark all call
:meth:`FilterSet.evaluate`. Per filter and alert it

* skips the call when the Event's source is not one the filter handles
  (``source_not_handled``, counted, nothing else);
* calls :meth:`filters.api.Filter.apply` and times it (``time.perf_counter``);
* turns an exception into an error decision (``raised``), a return value that is not a
  :class:`~filters.api.FilterResult` into one (``garbage``), logs it with the Event id
  and the filter name, and counts it — the other filters and the stream go on;
* counts a call over the filter's time budget (``over_budget``, logged); after
  ``quarantine_after`` consecutive failures of any kind the filter is *quarantined*:
  skipped with the error ``quarantined`` until the process restarts (logged once);
* stops a call that runs past the hard deadline (``hard_deadline_factor`` × budget)
  by raising :class:`FilterTimeout` inside it from a watchdog thread
  (``PyThreadState_SetAsyncExc``): this ends pure-Python loops; a call stuck inside C
  code cannot be interrupted and holds its thread until it returns.

A decision that is an error is never an acceptance: nothing goes to the filter's
topic and no follow-up is requested.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from filters.api import Filter, FilterInput, FilterResult

log = logging.getLogger(__name__)

__all__ = ["ConfiguredFilter", "Decision", "FilterSet", "FilterStats", "FilterTimeout"]


class FilterTimeout(Exception):
    """Raised inside a filter call that ran past its hard deadline."""


@dataclass(frozen=True)
class ConfiguredFilter:
    """One enabled filter: its instance name (topic ``mma.filter.<name>``) and object.

    Attributes
    ----------
    name : str
        Instance name from the settings (may differ from the plugin name when one
        plugin is enabled twice with other parameters).
    filter : filters.api.Filter
    time_budget_ms : float
        A call over this is counted and logged (``over_budget``).
    """

    name: str
    filter: Filter[Any]
    time_budget_ms: float = 20.0

    @property
    def plugin(self) -> str:
        """The plugin (entry point) name."""
        return self.filter.name


@dataclass(frozen=True, init=False)
class Decision:
    """The outcome of one filter on one alert.

    Attributes
    ----------
    filter : str
        Instance name.
    plugin, version, config_hash : str
        What decided (:class:`filters.api.Filter`).
    result : FilterResult or None
        None when ``error`` is set.
    error : str or None
        ``raised: <type>: <message>``, ``garbage: <what>``, ``timeout: ...``,
        ``quarantined``; None when the filter decided.
    elapsed_ms : float
    over_budget : bool
    """

    filter: str
    plugin: str
    version: str
    config_hash: str
    result: FilterResult | None
    error: str | None = None
    elapsed_ms: float = 0.0
    over_budget: bool = False

    def __init__(self, filter: str, plugin: str, version: str, config_hash: str, result: FilterResult | None,
                 error: str | None = None, elapsed_ms: float = 0.0, over_budget: bool = False) -> None:
        # frozen, but built for every (alert, filter): the fields go into __dict__ directly
        # (2.5 times cheaper than the generated __init__'s object.__setattr__ per field)
        d = self.__dict__
        d["filter"] = filter
        d["plugin"] = plugin
        d["version"] = version
        d["config_hash"] = config_hash
        d["result"] = result
        d["error"] = error
        d["elapsed_ms"] = elapsed_ms
        d["over_budget"] = over_budget

    @property
    def accepted(self) -> bool:
        """True only for a decided acceptance."""
        return self.error is None and self.result is not None and self.result.accepted

    @property
    def reason(self) -> str:
        """The result's reason code, or ``error`` for a failed call."""
        return self.result.reason if self.result is not None else "error"

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready form (archived with the Event, published with an accepted one)."""
        out: dict[str, Any] = {"filter": self.filter, "plugin": self.plugin, "version": self.version,
                               "config_hash": self.config_hash, "accepted": self.accepted,
                               "reason": self.reason, "error": self.error,
                               "elapsed_ms": round(self.elapsed_ms, 4), "over_budget": self.over_budget}
        if self.result is not None:
            r = self.result.to_json_dict()
            out.update(detail=r["detail"], tags=r["tags"], followup=r["followup"])
        return out


@dataclass
class FilterStats:
    """Running totals of one filter in one process."""

    calls: int = 0
    accepted: int = 0
    rejected: int = 0
    skipped_source: int = 0
    raised: int = 0
    garbage: int = 0
    timeouts: int = 0
    over_budget: int = 0
    quarantined: bool = False
    total_ms: float = 0.0
    _strikes: int = field(default=0, repr=False)

    @property
    def errors(self) -> int:
        """Calls that did not give a decision."""
        return self.raised + self.garbage + self.timeouts


class _Watchdog:
    """One daemon thread that raises :class:`FilterTimeout` in calls past their deadline.

    Each thread that runs filter calls has a slot, ``[deadline]`` (``perf_counter``
    seconds; 0.0 between calls), fetched once per alert (:meth:`slot`): a call costs a
    store before and after, no lock, no thread-id lookup.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[int, list[float]] = {}  # thread id -> [deadline of its running call, or 0.0]
        self._thread: threading.Thread | None = None

    def slot(self) -> list[float]:
        """This thread's slot (made, and the watchdog started, on first use)."""
        got = self._slots.get(threading.get_ident())
        if got is None:
            with self._lock:
                got = self._slots.setdefault(threading.get_ident(), [0.0])
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="filter-watchdog", daemon=True)
                    self._thread.start()
        return got

    def start_call(self, deadline: float) -> None:
        """Arm this thread's slot for a call ending at ``deadline`` (perf_counter s)."""
        self.slot()[0] = deadline

    def end_call(self) -> None:
        """Disarm this thread's slot."""
        self.slot()[0] = 0.0

    def _run(self) -> None:
        while True:
            time.sleep(0.05)
            now = time.perf_counter()
            for tid, slot in list(self._slots.items()):
                deadline = slot[0]
                # disarm first: a call that ended meanwhile (or a new one of the thread) is not hit
                if 0.0 < deadline < now and slot[0] == deadline:
                    slot[0] = 0.0
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), ctypes.py_object(FilterTimeout))
            if len(self._slots) > 1024:  # threads that ran filters and ended
                alive = {t.ident for t in threading.enumerate()}
                with self._lock:
                    for tid in [t for t in self._slots if t not in alive]:
                        self._slots.pop(tid, None)


_WATCHDOG = _Watchdog()


class _Entry:
    """What :meth:`FilterSet.evaluate` needs of one filter, looked up once at construction."""

    __slots__ = ("cf", "name", "apply", "sources", "stats", "budget_ms", "hard_s", "ident")

    def __init__(self, cf: ConfiguredFilter, stats: FilterStats, hard_deadline_factor: float) -> None:
        f = cf.filter
        self.cf = cf
        self.name = cf.name
        self.apply = f.apply
        self.sources = f.sources
        self.stats = stats
        self.budget_ms = cf.time_budget_ms
        self.hard_s = hard_deadline_factor * cf.time_budget_ms / 1e3 if hard_deadline_factor > 0 else 0.0
        self.ident = (cf.name, f.name, f.version, f.config_hash)


class FilterSet:
    """Enabled filters, evaluated in order on each alert (see the module docstring).

    Parameters
    ----------
    filters : sequence of ConfiguredFilter
        Instance names must be unique. Fixed at construction (what each call needs
        of a filter — its ``apply``, sources, budget, config hash — is looked up once).
    quarantine_after : int
        Consecutive failed calls (raised, garbage, timeout, over budget) after which a
        filter is skipped for the rest of the process.
    hard_deadline_factor : float
        A call running longer than this × its budget is interrupted (0: never).

    Raises
    ------
    ValueError
        Two filters with one instance name.
    """

    def __init__(self, filters: Sequence[ConfiguredFilter], *, quarantine_after: int = 100,
                 hard_deadline_factor: float = 50.0) -> None:
        names = [f.name for f in filters]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"filter instance name(s) {', '.join(dup)} enabled twice; give each a distinct name")
        self.filters = list(filters)
        self.stats = {f.name: FilterStats() for f in self.filters}
        self.quarantine_after = quarantine_after
        self.hard_deadline_factor = hard_deadline_factor
        self._entries = tuple(_Entry(cf, self.stats[cf.name], hard_deadline_factor) for cf in self.filters)

    def __len__(self) -> int:
        return len(self.filters)

    def evaluate(self, alert: FilterInput) -> list[Decision]:
        """Every enabled filter's decision on ``alert``, in order; never raises for a filter's fault.

        Filters that do not handle the Event's source are left out of the list.
        """
        out: list[Decision] = []
        source = alert.event.source
        slot = _WATCHDOG.slot()
        clock = time.perf_counter
        for e in self._entries:
            st = e.stats
            if e.sources is not None and source not in e.sources:
                st.skipped_source += 1
                continue
            if st.quarantined:
                out.append(Decision(*e.ident, None, "quarantined"))
                continue
            st.calls += 1
            result: Any = None
            error: str | None = None
            t0 = clock()
            if e.hard_s:
                slot[0] = t0 + e.hard_s
            try:
                result = e.apply(alert)
            except FilterTimeout:
                error = "timeout"
            except Exception as exc:  # noqa: BLE001 - a filter's bug is its own decision, the stream goes on
                error = f"raised: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            finally:
                slot[0] = 0.0
            elapsed_ms = (clock() - t0) * 1e3
            st.total_ms += elapsed_ms
            if error is None and type(result) is FilterResult and elapsed_ms <= e.budget_ms:  # the common case
                st._strikes = 0
                if result.accepted:
                    st.accepted += 1
                else:
                    st.rejected += 1
                out.append(Decision(*e.ident, result, None, elapsed_ms, False))
            else:
                out.append(self._failed(e, alert, result, error, elapsed_ms))
        return out

    def _failed(self, e: _Entry, alert: FilterInput, result: Any, error: str | None, elapsed_ms: float) -> Decision:
        """The decision of a call that raised, timed out, returned garbage or ran over budget (counted, logged)."""
        st = e.stats
        if error == "timeout":
            st.timeouts += 1
            error = f"timeout: stopped after {e.hard_s * 1e3:.0f} ms ({self.hard_deadline_factor:g} x its budget)"
        elif error is not None:
            st.raised += 1
        elif not isinstance(result, FilterResult):
            st.garbage += 1
            error = f"garbage: returned {type(result).__name__}, not FilterResult"
        over = elapsed_ms > e.budget_ms
        if over:
            st.over_budget += 1
        if error is not None or over:
            st._strikes += 1
            what = error or f"over budget: {elapsed_ms:.1f} ms > {e.budget_ms:g} ms"
            if st.errors + st.over_budget <= 20 or (st.errors + st.over_budget) % 1000 == 0:
                log.warning("filter %s on %s: %s", e.name, alert.event.id, what)
            if st._strikes >= self.quarantine_after and not st.quarantined:
                st.quarantined = True
                log.error("filter %s quarantined after %d consecutive failed calls (last: %s); the other filters go on",
                          e.name, st._strikes, what)
        else:  # a FilterResult subclass within budget
            st._strikes = 0
        if error is not None:
            return Decision(*e.ident, None, error, elapsed_ms, over)
        if result.accepted:
            st.accepted += 1
        else:
            st.rejected += 1
        return Decision(*e.ident, result, None, elapsed_ms, over)
