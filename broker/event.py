"""The normalized Event: one common shape for every upstream alert.

The JSON form is the contract in DESIGN.md ("Normalized Event"); the Avro form used on
the ``mma.events`` topic is ``schemas/mma/event.avsc`` (``properties`` travels there as
a JSON string, because its values differ per source).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

Source = Literal["igwn", "gcn", "ztf", "lsst"]
Messenger = Literal["gw", "em", "neutrino"]
Format = Literal["json", "voevent", "avro"]


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


Localization = Annotated[Union[PointLocalization, HealpixLocalization], Field(discriminator="type")]


def format_time(t: datetime) -> str:
    """Format a datetime as ISO 8601 UTC with a trailing ``Z`` (millisecond precision).

    Naive datetimes are taken as UTC.
    """
    if t.tzinfo is not None:
        t = t.astimezone(timezone.utc).replace(tzinfo=None)
    return t.isoformat(timespec="milliseconds") + "Z"


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

    @field_validator("alert_type")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()

    @field_validator("time")
    @classmethod
    def _utc_z(cls, v: str) -> str:
        if not v.endswith("Z"):
            raise ValueError(f"time must be ISO 8601 UTC ending in 'Z', got {v!r}")
        return v

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
