"""The filter plugin API: what a filter is, what it sees, what it returns.

A filter is one class with a declared, validated configuration and one pure method
(the shape of AMPEL's ``AbsAlertFilter``, without its ``bool | int | None`` return
codes; ``../docs/writing-a-filter.md``)::

    class GwSignificantConfig(FilterConfig):
        max_far_hz: float = 1 / (30 * 86400)

    class GwSignificant(Filter[GwSignificantConfig]):
        name = "gw-significant"
        version = "1"
        sources = frozenset({"igwn"})

        def apply(self, alert: FilterInput) -> FilterResult:
            far = alert.event.properties.get("far_hz")
            if far is None or far > self.config.max_far_hz:
                return FilterResult.reject("far_above_threshold")
            return FilterResult.accept("significant", tags=("gw",))

* The configuration is a frozen pydantic model that rejects unknown keys; units go in
  field names (``max_far_hz``, ``min_tspan_days``). The settings give its values
  (``[[filters.filters]] params = {...}``); a bad value is a start-up error naming the
  filter and the key.
* ``apply`` takes a :class:`FilterInput` (the enriched Event, its enrichment, and ZTF
  data decoded on demand) and returns a :class:`FilterResult`. It does no I/O: what it
  needs comes through the input (catalogs loaded by the broker, the ZTF history).
* The class registers under the entry-point group ``mma_broker.filters`` with its
  ``name``; the broker finds it there (:mod:`filters.registry`), ours included.

Everything a filter decides is archived with the filter's name, version and config
hash (:attr:`Filter.config_hash`), so "why was this alert (not) sent?" has an answer.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import json
import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

from broker.errors import BrokerError
from broker.event import Event, validation_reason

__all__ = ["FilterConfig", "FilterConfigError", "FilterResult", "FollowupSpec", "Filter", "FilterInput",
           "REASON_PATTERN", "NAME_PATTERN"]

REASON_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,79}$")
"""A machine-readable reason: lower-case code, e.g. ``far_above_threshold``."""
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
"""A filter name: lower case, digits and ``-`` (it becomes the topic ``mma.filter.<name>``)."""


_CODES: set[str] = set()
"""Reason and tag codes already checked against :data:`REASON_PATTERN` (a filter returns
the same few codes millions of times: each is matched once)."""


def _code(text: str) -> bool:
    """True (and remembered) when ``text`` matches :data:`REASON_PATTERN`."""
    if REASON_PATTERN.match(text):
        if len(_CODES) < 100_000:
            _CODES.add(text)
        return True
    return False


class FilterConfigError(BrokerError):
    """A filter's configuration is invalid, or a filter class is malformed (one line)."""


class FilterConfig(BaseModel):
    """Base of every filter's configuration: frozen, unknown keys rejected.

    Put units in field names (``error_radius_deg``, ``max_far_hz``) and give every
    field a docstring (or ``Field(description=...)``): ``mma-broker filters list``
    shows them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class FollowupSpec:
    """A follow-up a filter asks for (published on ``mma.followup.requests``).

    Attributes
    ----------
    kind : {"analyze", "withdraw"}
        ``withdraw``: the Event is a retraction; withdraw its group's results.
    analyses : tuple of str
        ``spiacs``, ``isgri`` (intersected with ``[followup] analyses``).
    window_s : float or None
        Half-width of the search window around T0, s; None: the follow-up's default.
    """

    kind: Literal["analyze", "withdraw"] = "analyze"
    analyses: tuple[str, ...] = ("spiacs", "isgri")
    window_s: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("analyze", "withdraw"):
            raise ValueError(f"FollowupSpec.kind {self.kind!r}: 'analyze' or 'withdraw'")
        if not isinstance(self.analyses, tuple) or not all(isinstance(a, str) for a in self.analyses):
            raise ValueError("FollowupSpec.analyses must be a tuple of str")
        if self.window_s is not None and not (isinstance(self.window_s, (int, float)) and 0 < self.window_s < 1e5):
            raise ValueError(f"FollowupSpec.window_s {self.window_s!r}: a number of seconds in (0, 1e5)")


@dataclass(frozen=True)
class FilterResult:
    """A filter's decision on one alert.

    Attributes
    ----------
    accepted : bool
    reason : str
        Machine-readable code (:data:`REASON_PATTERN`): ``far_above_threshold``,
        ``retracted``, ``accepted``, ...
    detail : str or None
        One line for people (numbers that decided it), at most 300 characters.
    tags : tuple of str
        Labels for subscribers (``gw``, ``bns-candidate``, ...).
    followup : tuple of FollowupSpec
        Follow-ups the filter asks for (only honoured when ``accepted``).

    Raises
    ------
    ValueError
        A field of the wrong type or form (the stage counts such a result as garbage).
    """

    accepted: bool
    reason: str
    detail: str | None = None
    tags: tuple[str, ...] = ()
    followup: tuple[FollowupSpec, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.accepted, bool):
            raise ValueError(f"FilterResult.accepted is {type(self.accepted).__name__}, not bool")
        if type(self.reason) is not str or (self.reason not in _CODES and not _code(self.reason)):
            raise ValueError(f"FilterResult.reason {str(self.reason)[:40]!r} is not a code matching "
                             f"{REASON_PATTERN.pattern}")
        if self.detail is not None and (not isinstance(self.detail, str) or len(self.detail) > 300):
            raise ValueError("FilterResult.detail must be a str of at most 300 characters")
        if type(self.tags) is not tuple or not all(type(t) is str and (t in _CODES or _code(t)) for t in self.tags):
            raise ValueError("FilterResult.tags must be a tuple of lower-case codes")
        if type(self.followup) is not tuple or not all(isinstance(f, FollowupSpec) for f in self.followup):
            raise ValueError("FilterResult.followup must be a tuple of FollowupSpec")

    @classmethod
    def accept(cls, reason: str = "accepted", *, detail: str | None = None, tags: tuple[str, ...] = (),
               followup: tuple[FollowupSpec, ...] = ()) -> "FilterResult":
        """An accepted result."""
        return cls(True, reason, detail, tuple(tags), tuple(followup))

    @classmethod
    def reject(cls, reason: str, *, detail: str | None = None, tags: tuple[str, ...] = ()) -> "FilterResult":
        """A rejected result."""
        return cls(False, reason, detail, tuple(tags))

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready form (archived and published)."""
        return {"accepted": self.accepted, "reason": self.reason, "detail": self.detail, "tags": list(self.tags),
                "followup": [{"kind": f.kind, "analyses": list(f.analyses), "window_s": f.window_s}
                             for f in self.followup]}


class FilterInput:
    """What a filter sees of one alert.

    Built by the broker (the filter stage, ``filters test``, ``filters run``), never by
    a filter. Everything is read-only; ZTF data are decoded on first use and kept, so
    twenty filters reading the history cost one decode.

    Parameters
    ----------
    event : broker.event.Event
    enrichment : Mapping or None
        The ``enrichment`` object of ``mma.events.enriched`` (``localization``,
        ``group``, ``crossmatch``, ``coincidences``, ``error``); None or ``{}`` when the
        alert was not enriched (``filters test`` on a file without the database).
    raw : bytes, callable returning bytes or None, or None
        The alert's raw upstream bytes, or a function that fetches them (called at most
        once, only if a filter asks for ZTF data).
    history_decoder : callable or None
        ``(raw bytes, event) -> ZtfHistory``; default
        :func:`filters.ztf_history.decode_history`.
    catalogs : Mapping or None
        Catalogs loaded by the broker, by name (for cone searches, e.g. Gaia).

    Attributes
    ----------
    event : broker.event.Event
    enrichment : Mapping
    """

    __slots__ = ("event", "enrichment", "_raw", "_history", "_history_decoder", "_catalogs", "_shared")

    def __init__(self, event: Event, enrichment: Mapping[str, Any] | None = None, *,
                 raw: bytes | Callable[[], bytes | None] | None = None,
                 history_decoder: Callable[[bytes, Event], Any] | None = None,
                 catalogs: Mapping[str, Any] | None = None) -> None:
        self.event = event
        self.enrichment: Mapping[str, Any] = enrichment or {}
        self._raw = raw
        self._history: Any = _UNSET
        self._history_decoder = history_decoder
        self._catalogs = catalogs or {}
        self._shared: dict[Hashable, Any] | None = None

    # ------------------------------------------------------------------ shared values
    def shared(self, key: Hashable, compute: Callable[["FilterInput"], T]) -> T:
        """A value derived from this alert alone, computed once however many filters ask.

        Several filters (or several instances of one filter with other parameters)
        often need the same derived quantities of an alert — ``ztf-decent`` needs the
        detection count and span, a dozen candidate fields and the galactic latitude
        whatever its thresholds are. The first call runs ``compute(self)`` and keeps its
        result under ``key``; later calls with the same key, from any filter, return it.

        Parameters
        ----------
        key : hashable
            Names the computation, not the filter instance: give every computation
            its own key (include your filter's name and version, e.g.
            ``("ztf-decent", "1", "features")``), and only use it for values that depend
            on the alert and nothing else (no configuration value).
        compute : callable
            ``FilterInput -> value``; should not raise for a well-formed alert (an
            exception propagates to the asking filter, and nothing is kept, so the
            next filter asking computes again).

        Returns
        -------
        object
            What ``compute`` returned (shared: treat it as read-only).
        """
        memo = self._shared
        if memo is None:
            memo = self._shared = {}
        elif key in memo:
            return memo[key]
        value = memo[key] = compute(self)
        return value

    # ------------------------------------------------------------------ enrichment
    @property
    def category(self) -> str | None:
        """The Event's normalized category (``grb``, ``gw_cbc``, ...; ``Event.category``)."""
        return getattr(self.event, "category", None)

    @property
    def group(self) -> Mapping[str, Any]:
        """The Event's group (``key``, ``revision``, ``n_revisions``, ``retracted``, ...); ``{}`` if unknown."""
        return self.enrichment.get("group") or {}

    @property
    def localization(self) -> Mapping[str, Any] | None:
        """The stored localization summary (``id``, ``kind``, ``area_90_deg2``, ...), or None."""
        return self.enrichment.get("localization")

    @property
    def coincidences(self) -> list[str]:
        """Ids of the coincidences this Event produced (``mma.coincidences`` keys)."""
        return list(self.enrichment.get("coincidences") or [])

    def crossmatch(self, catalog: str) -> Mapping[str, Any] | None:
        """The enrich stage's cross-match with ``catalog`` (see docs/enrichment.md), or None."""
        return (self.enrichment.get("crossmatch") or {}).get(catalog)

    def catalog(self, name: str) -> Any:
        """A catalog the broker loaded for filters (``[filters] catalogs``), by name.

        Raises
        ------
        KeyError
            Not loaded (the filter should declare it in :meth:`Filter.required_catalogs`).
        """
        if name not in self._catalogs:
            raise KeyError(f"catalog {name!r} is not loaded for filters")
        return self._catalogs[name]

    # ------------------------------------------------------------------ ZTF data
    def raw(self) -> bytes | None:
        """The raw upstream bytes (fetched once), or None when unavailable."""
        if callable(self._raw):
            self._raw = self._raw()
        return self._raw

    def ztf_history(self) -> Any:
        """The ZTF alert's history (``prv_candidates``, forced photometry) as arrays.

        Decoded on first call (once, however many filters ask).

        Returns
        -------
        filters.ztf_history.ZtfHistory or None
            None for an Event that is not a ZTF alert, or whose raw bytes are not
            available.
        """
        if self._history is _UNSET:
            self._history = None
            if self.event.source == "ztf":
                raw = self.raw()
                if raw:
                    decoder = self._history_decoder
                    if decoder is None:
                        from filters.ztf_history import decode_history as decoder
                    self._history = decoder(raw, self.event)
        return self._history

    def lsst_history(self) -> Any:
        """The Rubin/LSST alert's history and cutouts, decoded on first call (once,
        however many filters ask; :meth:`shared`).

        Returns
        -------
        dict or None
            :func:`broker.sources.lsst.decode_history` of this alert's raw bytes:
            ``prvDiaSources``, ``prvDiaForcedSources`` (lists of dict, Rubin field names,
            fluxes in nJy), ``prvDiaNondetectionLimits``, ``cutouts``. None for an Event
            that is not an LSST alert, or whose raw bytes are not available.

        Raises
        ------
        broker.errors.DecodeError
            The raw bytes are corrupt (the filter's decision becomes an error, isolated).
        """
        if self.event.source != "lsst":
            return None
        return self.shared(("lsst_history",), _lsst_history)


def _lsst_history(alert: "FilterInput") -> Any:
    raw = alert.raw()
    if not raw:
        return None
    from broker.sources.lsst import decode_history

    sid = alert.event.properties.get("diaSourceId")
    return decode_history(raw, dia_source_id=sid if isinstance(sid, int) else None)


_UNSET = object()
C = TypeVar("C", bound=FilterConfig)
T = TypeVar("T")


class Filter(abc.ABC, Generic[C]):
    """Base of every filter: subclass ``Filter[MyConfig]`` and write :meth:`apply`.

    Class attributes
    ----------------
    name : str
        Registry name (:data:`NAME_PATTERN`), equal to its entry point's name.
    version : str
        Bump it when the same input can get another decision.
    sources : frozenset of str or None
        Event sources (``igwn``, ``gcn``, ``ztf``, ``lsst``) the filter looks at; Events
        from others are rejected as ``source_not_handled`` without calling :meth:`apply`.
        None: all.
    description : str
        One line for ``filters list`` (default: the first line of the docstring).
    Config : type
        The configuration class (taken from ``Filter[MyConfig]``).
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    sources: ClassVar[frozenset[str] | None] = None
    description: ClassVar[str] = ""
    Config: ClassVar[type[FilterConfig]] = FilterConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if get_origin(base) is Filter:
                (arg,) = get_args(base)
                if isinstance(arg, type) and issubclass(arg, FilterConfig):
                    cls.Config = arg
        if not cls.description and cls.__doc__:
            cls.description = cls.__doc__.strip().splitlines()[0]

    def __init__(self, config: C | None = None) -> None:
        self.config: C = config if config is not None else self.Config()  # type: ignore[assignment]

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None) -> "Filter[C]":
        """Build the filter from settings values.

        Raises
        ------
        FilterConfigError
            A malformed class (no valid ``name``) or parameters the config refuses
            (names the filter and the key, never the value).
        """
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise FilterConfigError(f"filter class {cls.__module__}.{cls.__qualname__}: name {name!r} must match "
                                    f"{NAME_PATTERN.pattern}")
        try:
            config = cls.Config(**dict(params or {}))
        except ValidationError as exc:
            raise FilterConfigError(f"filter {name!r}: bad parameters: {validation_reason(exc)}") from None
        except TypeError as exc:
            raise FilterConfigError(f"filter {name!r}: bad parameters: {exc}") from None
        return cls(config)

    @functools.cached_property
    def config_hash(self) -> str:
        """First 16 hex digits of sha256 over name, version and the canonical JSON config.

        Computed once per filter object (the config is frozen): every decision carries it.
        """
        doc = {"name": self.name, "version": self.version, "config": self.config.model_dump(mode="json")}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]

    def required_catalogs(self) -> tuple[str, ...]:
        """Catalog names the filter reads through :meth:`FilterInput.catalog` with this config."""
        return ()

    @abc.abstractmethod
    def apply(self, alert: FilterInput) -> FilterResult:
        """Decide on one alert. Pure: no I/O, no state kept between calls.

        Parameters
        ----------
        alert : FilterInput

        Returns
        -------
        FilterResult
        """
