"""Reading ``mma.events.enriched``: an Event with its enrichment, for downstream stages.

The enrich stage (:mod:`broker.pipeline.enrich`) publishes each Event as JSON — the
fields of ``broker/schemas/mma/event.avsc`` plus ``schema`` and ``enrichment``
(``broker/schemas/mma/enriched_event.json``). A stage downstream of it (the
follow-up trigger, filters) reads the record back with :func:`decode_enriched` and
acts on the Event's *group* and *stored localization* instead of decoding raw alert
bytes again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic_core import from_json

from broker.errors import DecodeError
from broker.event import Event, validation_reason

ENRICHED_SCHEMA = "mma.event.enriched/1"
"""``schema`` of an enriched Event (``broker/schemas/mma/enriched_event.json``)."""

__all__ = ["ENRICHED_SCHEMA", "EnrichedEvent", "decode_enriched"]


@dataclass(frozen=True)
class EnrichedEvent:
    """One record of ``mma.events.enriched``.

    Attributes
    ----------
    event : broker.event.Event
    enrichment : dict
        As published: ``localization``, ``group``, ``crossmatch``, ``coincidences``,
        ``error``, ``provenance`` (see the schema).
    """

    event: Event
    enrichment: dict[str, Any]

    @property
    def group_key(self) -> str | None:
        """The Event's group (:func:`broker.enrich.groups.group_key`), or None if absent."""
        key = (self.enrichment.get("group") or {}).get("key")
        return key if isinstance(key, str) else None

    @property
    def localization(self) -> dict[str, Any] | None:
        """The stored localization the Event is linked to (its own, or its group's best), or None."""
        loc = self.enrichment.get("localization")
        return loc if isinstance(loc, dict) and isinstance(loc.get("id"), str) else None

    @property
    def skymap_ref(self) -> str | None:
        """Id of the stored *sky map* (``sha256:<hex>``) of :attr:`localization`; None for a point or none."""
        loc = self.localization
        return loc["id"] if loc is not None and loc.get("kind") == "skymap" else None


def _no_constant(name: str) -> Any:
    # RFC 8259 JSON has no NaN/Infinity; our stages never write them (allow_nan=False)
    raise ValueError(f"{name} is not a JSON value (RFC 8259)")


def decode_enriched(data: bytes) -> EnrichedEvent:
    """Parse one ``mma.events.enriched`` message value.

    Parameters
    ----------
    data : bytes
        UTF-8 JSON, as :class:`broker.pipeline.enrich.EnrichHandler` publishes it.

    Returns
    -------
    EnrichedEvent

    Raises
    ------
    broker.errors.DecodeError
        Not JSON (``NaN`` and ``Infinity`` included: RFC 8259 has neither), not an object, a ``schema`` tag other than :data:`ENRICHED_SCHEMA`,
        no ``enrichment`` object, or an Event that does not validate (one line: what
        and where).
    """
    try:
        # pydantic-core's parser (Rust): the same values as json.loads for the UTF-8 JSON
        # the enrich stage writes, twice as fast (4.5 against 9.5 µs per ZTF record;
        # docs/filters-speed.md, fourth pass). What it refuses goes through json.loads as
        # before: the same values or the same error for every input
        obj = from_json(data, allow_inf_nan=False)
    except ValueError:
        try:
            obj = json.loads(data, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"enriched event: not JSON ({' '.join(str(exc).split())[:200]})") from None
        except RecursionError:  # pydantic-core refuses the depth, json.loads then overflows the stack
            raise DecodeError("enriched event: nested too deeply (RecursionError)") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"enriched event: a JSON {type(obj).__name__}, expected an object")
    if obj.get("schema") != ENRICHED_SCHEMA:
        raise DecodeError(f"enriched event: schema tag {str(obj.get('schema'))[:80]!r}, expected {ENRICHED_SCHEMA!r}")
    enrichment = obj.pop("enrichment", None)
    obj.pop("schema")
    if not isinstance(enrichment, dict):
        raise DecodeError("enriched event: no 'enrichment' object")
    try:
        event = Event.model_validate(obj)
    except ValueError as exc:
        raise DecodeError(f"enriched event: {validation_reason(exc)}") from None
    return EnrichedEvent(event=event, enrichment=enrichment)
