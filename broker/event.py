"""The normalized Event: one common shape for every upstream alert.

The JSON form is the contract in DESIGN.md ("Normalized Event"); the Avro form used on
the ``mma.events`` topic is ``broker/schemas/mma/event.avsc`` (``properties`` travels there as
a JSON string, because its values differ per source).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from broker.text import CONTROL_CHARACTERS

Source = Literal["igwn", "gcn", "ztf", "lsst", "user", "voevent"]
"""Where an Event came from; ``user``: a hand-made event of an ad-hoc follow-up request
(``mma-broker followup request``), never read from an upstream nor put on ``mma.events``;
``voevent``: a VOEvent of a stream other than GCN's and LVC's (Gaia, ASAS-SN; see
:mod:`broker.sources.voevent`)."""
SURVEY_SOURCES: frozenset[str] = frozenset({"ztf", "lsst"})
"""Sources of the optical surveys' alert streams: hundreds to thousands of candidates a
second at night, each a point with a history (the ``optical`` category of event groups,
the optical lane's sources, the raw bytes a filter batch reads together)."""
Messenger = Literal["gw", "em", "neutrino"]
Format = Literal["json", "voevent", "avro"]

EARLIEST_TIME = datetime(1900, 1, 1)
"""Earliest event time T0 accepted (UTC): older values are corrupt, not alerts."""
LATEST_TIME = datetime(2200, 1, 1)
"""Latest event time T0 accepted (UTC)."""
MAX_PROPERTIES_DEPTH = 32
"""Deepest nesting of ``Event.properties`` (dicts and lists)."""
NONFINITE_NOTE = "nonfinite_to_null"
"""Key of ``Event.properties`` listing the values that were NaN or ±Infinity upstream
and are stored as null: ``{"<dotted path>": "nan" | "inf" | "-inf"}``."""


def _finite(value: float | None, name: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{name} = {value!r} is not a finite number")
    return value


def check_ra(ra: float, name: str = "ra") -> float:
    """Right ascension in [0, 360) deg; 360 is taken as 0.

    Raises
    ------
    ValueError
        If not finite or outside [0, 360].
    """
    _finite(ra, name)
    if not 0.0 <= ra <= 360.0:
        raise ValueError(f"{name} = {ra!r} deg is outside [0, 360)")
    return 0.0 if ra == 360.0 else ra + 0.0  # + 0.0 turns -0.0 into 0.0


def check_dec(dec: float, name: str = "dec") -> float:
    """Declination in [-90, 90] deg.

    Raises
    ------
    ValueError
        If not finite or outside [-90, 90].
    """
    _finite(dec, name)
    if not -90.0 <= dec <= 90.0:
        raise ValueError(f"{name} = {dec!r} deg is outside [-90, 90]")
    return dec


def check_text(value: str, name: str) -> str:
    """A string that is valid Unicode (no lone surrogates) and has no NUL character.

    Raises
    ------
    ValueError
        Naming the field; PostgreSQL text, UTF-8 Kafka keys and JSON encoders all
        fail on these.
    """
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{name} is not valid Unicode (lone surrogate at index {exc.start})") from None
    if "\x00" in value:
        raise ValueError(f"{name} holds a NUL character")
    return value


def _clean(value: Any, path: str, depth: int, nulled: dict[str, str]) -> Any:
    """Copy of a properties value with NaN/±Inf → None (noted in ``nulled``), text checked."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        nulled[path] = "nan" if value != value else ("inf" if value > 0 else "-inf")
        return None
    if isinstance(value, str):
        return check_text(value, f"properties.{path}")
    if value is None or isinstance(value, (bool, int)):
        return value
    if depth >= MAX_PROPERTIES_DEPTH:
        raise ValueError(f"properties.{path} is nested deeper than {MAX_PROPERTIES_DEPTH}")
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            t = type(v)
            # the common leaves inline (an Event validated per record of every stage: a ZTF
            # alert's ~25 properties cost 7 µs through the general path); the child's path
            # is only built for what needs it (a container, a non-finite float, an error)
            if t is str and type(k) is str and k.isascii() and v.isascii() and "\x00" not in k \
                    and "\x00" not in v:
                out[k] = v
            elif (t is int or t is bool or v is None or (t is float and v - v == 0.0)) and type(k) is str \
                    and k.isascii() and "\x00" not in k:
                out[k] = v
            else:
                if not isinstance(k, str):
                    raise ValueError(f"properties.{path} has a non-string key {k!r}")
                check_text(k, f"a key of properties.{path}")
                out[k] = _clean(v, f"{path}.{k}" if path else k, depth + 1, nulled)
        return out
    if isinstance(value, (list, tuple)):
        return [_clean(v, f"{path}[{i}]", depth + 1, nulled) for i, v in enumerate(value)]
    if isinstance(value, (datetime,)):
        return value
    raise ValueError(f"properties.{path} has a value of type {type(value).__name__}, which JSON cannot hold")


class PointLocalization(BaseModel):
    """A circular localization: position and error radius.

    Attributes
    ----------
    ra, dec : float
        ICRS right ascension and declination of the best position, deg.
    error_radius : float or None
        Radius of the error circle, deg (None when upstream gives no error).
    containment : float or None
        Probability contained in the error circle, 0..1 (e.g. 0.68 for GBM 1σ
        statistical, 0.9 for Swift BAT). None when upstream does not state it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: Literal["point"] = "point"
    ra: float
    dec: float
    error_radius: float | None = None
    containment: float | None = None

    @model_validator(mode="after")
    def _in_range(self) -> "PointLocalization":
        # frozen: set through __dict__ only the normalized RA (360 → 0, -0 → 0)
        self.__dict__["ra"] = check_ra(self.ra)
        check_dec(self.dec)
        if self.error_radius is not None and not (math.isfinite(self.error_radius) and 0 <= self.error_radius <= 180):
            raise ValueError(f"error_radius = {self.error_radius!r} deg is outside [0, 180]")
        if self.containment is not None and not (math.isfinite(self.containment) and 0 <= self.containment <= 1):
            raise ValueError(f"containment = {self.containment!r} is outside [0, 1]")
        return self


class HealpixLocalization(BaseModel):
    """A HEALPix probability sky map summarized by its credible regions.

    Attributes
    ----------
    area_50, area_90 : float
        Area of the 50 % and 90 % credible regions, deg² (smallest-area regions:
        pixels sorted by descending probability density).
    ra_max, dec_max : float
        ICRS position of the pixel of highest probability density, deg.
    distmean, diststd : float or None
        Posterior mean and standard deviation of the luminosity distance, Mpc
        (FITS header DISTMEAN/DISTSTD), None when the map has no distance layer.
    skymap_url : str or None
        Where the full map can be fetched, when upstream gives a URL.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: Literal["healpix"] = "healpix"
    area_50: float
    area_90: float
    ra_max: float
    dec_max: float
    distmean: float | None = None
    diststd: float | None = None
    skymap_url: str | None = None

    @model_validator(mode="after")
    def _in_range(self) -> "HealpixLocalization":
        for name in ("area_50", "area_90"):
            area = getattr(self, name)
            if not (math.isfinite(area) and 0 <= area <= FULL_SKY_DEG2):
                raise ValueError(f"{name} = {area!r} deg² is outside [0, {FULL_SKY_DEG2:.0f}]")
        self.__dict__["ra_max"] = check_ra(self.ra_max, "ra_max")
        check_dec(self.dec_max, "dec_max")
        for name in ("distmean", "diststd"):  # no distance layer: null, as upstream's "no value"
            d = getattr(self, name)
            if d is not None and not (math.isfinite(d) and d >= 0):
                self.__dict__[name] = None
        if self.skymap_url is not None:
            check_text(self.skymap_url, "localization.skymap_url")
        return self


FULL_SKY_DEG2 = 4 * math.pi * (180 / math.pi) ** 2
"""Area of the whole sky, deg² (41,253)."""

Localization = Annotated[Union[PointLocalization, HealpixLocalization], Field(discriminator="type")]


def format_time(t: datetime) -> str:
    """Format a datetime as ISO 8601 UTC with a trailing ``Z`` (millisecond precision).

    Naive datetimes are taken as UTC.
    """
    if t.tzinfo is not None:
        t = t.astimezone(timezone.utc).replace(tzinfo=None)
    return t.isoformat(timespec="milliseconds") + "Z"


MAX_ID_CHARS = 1024
"""Longest id, mission, instrument, upstream_id or alert_type accepted, in characters
and in UTF-8 bytes (they are Kafka keys, headers and indexed columns)."""
# C0/C1 controls, line/paragraph separators and bidi controls (U+202E shows an id
# reversed: "Trojan Source") are never in an id, which is printed on terminals, put
# in headers and used as a key: the set broker.text escapes.


class Event(BaseModel):
    """One alert revision in the broker's common shape (DESIGN.md, "Normalized Event").

    Attributes
    ----------
    id : str
        Unique per alert revision and deterministic from the alert's content, so that
        replays and redeliveries upsert the same archive row (e.g.
        ``"igwn:S230518h:initial:2"``, ``"gcn:ivo://nasa.gsfc.gcn/Fermi#GBM_Gnd_Pos_..."``,
        ``"ztf:1661382530015060001"``).
    source, messenger, mission, instrument, upstream_id, alert_type
        See DESIGN.md; ``alert_type`` is lower case.
    time : str
        Event time T0, ISO 8601 UTC ending in ``Z``.
    localization : PointLocalization, HealpixLocalization or None
    properties : dict
        Source-specific science values, units in key names (``far_hz``, ``magpsf``...).
    format : {"json", "voevent", "avro"}
        Wire format of the upstream message.
    category, category_rule : str or None
        Normalized class (``grb``, ``gw_cbc``, ``known_source``, ...) and the id of the
        rule that decided it (:mod:`broker.category`, docs/categories.md); set for every
        decoded Event by :func:`broker.sources.decode` (and by ``EventCodec.decode`` for
        records written before categories existed). None: not categorized (an Event built
        by hand or by one decoder module called directly, or rebuilt from an archive row
        written before migration 0008 and not recategorized since).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    source: Source
    messenger: Messenger
    mission: str
    instrument: str | None = None
    upstream_id: str
    alert_type: str
    time: str
    localization: Localization | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    format: Format
    category: str | None = None
    category_rule: str | None = None

    @field_validator("alert_type")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()

    @field_validator("time")
    @classmethod
    def _utc_z(cls, v: str) -> str:
        if not v.endswith("Z"):
            raise ValueError(f"time must be ISO 8601 UTC ending in 'Z', got {v[:40]!r}")
        try:
            t = datetime.fromisoformat(v[:-1])
        except ValueError:
            raise ValueError(f"time {v[:40]!r} is not ISO 8601") from None
        if t.tzinfo is not None:
            raise ValueError(f"time {v[:40]!r} must carry no offset besides 'Z'")
        if not EARLIEST_TIME <= t < LATEST_TIME:
            raise ValueError(f"time {v!r} is outside {EARLIEST_TIME:%Y}..{LATEST_TIME:%Y}")
        return v

    @field_validator("id", "mission", "instrument", "upstream_id", "alert_type")
    @classmethod
    def _text(cls, v: str | None, info) -> str | None:
        if v is None:
            return v
        if not v:
            raise ValueError(f"{info.field_name} is empty")
        if len(v) > MAX_ID_CHARS:
            raise ValueError(f"{info.field_name} is {len(v):,} characters long, over {MAX_ID_CHARS}")
        check_text(v, info.field_name)
        if not v.isascii() and len(v.encode("utf-8")) > MAX_ID_CHARS:
            raise ValueError(f"{info.field_name} is {len(v.encode('utf-8')):,} bytes long in UTF-8, over "
                             f"{MAX_ID_CHARS} (PostgreSQL indexes at most 2,704 bytes per entry)")
        bad = CONTROL_CHARACTERS.search(v)
        if bad:
            raise ValueError(f"{info.field_name} holds the control character {bad.group()!r} at index {bad.start()}")
        return v

    @field_validator("properties")
    @classmethod
    def _finite_properties(cls, v: dict[str, Any]) -> dict[str, Any]:
        """NaN and ±Infinity become null; which ones is noted under :data:`NONFINITE_NOTE`."""
        nulled: dict[str, str] = {}
        out = _clean(v, "", 0, nulled)
        if nulled:
            out[NONFINITE_NOTE] = {**out.get(NONFINITE_NOTE, {}), **nulled} \
                if isinstance(out.get(NONFINITE_NOTE), dict) else nulled
        return out

    @property
    def is_retraction(self) -> bool:
        """True for a retraction notice (it retracts the earlier revisions)."""
        return self.alert_type == "retraction"

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON form of the contract (``None`` values kept)."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        """One line of JSON (for JSON Lines output)."""
        return json.dumps(self.to_json_dict(), separators=(",", ":"), allow_nan=False, default=str)


def validation_reason(exc: Exception) -> str:
    """One line from a pydantic ValidationError: ``field: problem; ...``, no input values.

    Input values are left out on purpose: they may be megabytes long, hold invalid
    Unicode, or (for settings) secrets.
    """
    errors = getattr(exc, "errors", None)
    if errors is None:
        return str(exc)
    parts = []
    for err in errors(include_input=False, include_url=False)[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("point", "healpix"))
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
