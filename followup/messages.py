"""Messages of ``mma.followup.requests`` and ``mma.followup.results`` (JSON).

Both topics carry UTF-8 JSON documents validated by JSON Schemas shipped in
``followup/schemas/`` (``followup_request.json``, ``followup_result.json``; package data,
:func:`json_schema` reads them with :mod:`importlib.resources`). JSON rather than Avro because
the result is a nested, per-analysis document (limits per time scale, sky-map
containment levels, "no data" reasons) that its readers — people, HERMES messages,
circular drafts — consume as JSON, and that grows with new analyses; the topics carry
a handful of messages per GRB or GW alert, so Avro's compactness buys nothing here.

The request id is deterministic: a sha256 of the canonical JSON of (kind, event id,
analyses, parameters), so a replayed alert gives the same request id and the worker
recognises it as done (:func:`request_id`).

Ad-hoc requests (``mma-broker followup request``) carry a hand-made Event of source
``user`` (:func:`adhoc_event`): T0, an optional position or sky map, and a name. Its
id is deterministic too, so the same request made twice is recognised as done.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.resources import files
from typing import Any, Literal, Mapping

from broker.event import Event
from broker.serde import Provenance
from followup.cache import canonical_json

REQUEST_SCHEMA = "mma.followup.request/1"
RESULT_SCHEMA = "mma.followup.result/1"
CONTENT_TYPE = "application/json"
JSON_SCHEMAS = ("followup_request.json", "followup_result.json")
"""The JSON Schemas of the two topics, package data in ``followup/schemas/``."""

RequestKind = Literal["analyze", "withdraw"]

USER_SOURCE = "user"
"""``Event.source`` of the hand-made events of ad-hoc requests."""
ADHOC_MISSION = "ad-hoc"
"""``Event.mission`` of ad-hoc events (their group key is ``user:ad-hoc:<name>``)."""


def json_schema(name: str) -> dict[str, Any]:
    """One of :data:`JSON_SCHEMAS` (Draft 2020-12), parsed.

    Raises
    ------
    ValueError
        ``name`` is not one of :data:`JSON_SCHEMAS`.
    """
    if name not in JSON_SCHEMAS:
        raise ValueError(f"unknown follow-up schema {name!r}; choose one of {', '.join(JSON_SCHEMAS)}")
    return json.loads((files("followup") / "schemas" / name).read_text(encoding="utf-8"))


def utc_now() -> str:
    """Current time, ISO 8601 UTC with milliseconds and ``Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def request_id(kind: str, event_id: str, analyses: tuple[str, ...], params: Mapping[str, Any]) -> str:
    """Deterministic request id: 32 hex digits of sha256 over the canonical request.

    Parameters
    ----------
    kind : {"analyze", "withdraw"}
    event_id : str
        ``Event.id`` of the revision (or retraction) the request is about.
    analyses : tuple of str
        Analyses, any order (sorted here).
    params : mapping
        Analysis parameters (``window_s``, ...).
    """
    doc = {"kind": kind, "event_id": event_id, "analyses": sorted(analyses), "params": dict(params)}
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class FollowupRequest:
    """One follow-up request (a message of ``mma.followup.requests``).

    Attributes
    ----------
    kind : {"analyze", "withdraw"}
        Run the analyses on ``event``, or withdraw the results of every earlier
        revision of ``event.upstream_id`` (``event`` is then the retraction).
    event : broker.event.Event
    analyses : tuple of str
    params : dict
        ``window_s`` (s) and ``max_sky_samples``.
    requested_by : str
        ``"rule:<name>"``, ``"cli"`` or ``"filter:<name>"``.
    created_at : str
        ISO UTC; not part of the request id.
    provenance : Provenance or None
    group : str or None
        The event group (:func:`broker.enrich.groups.group_key`: one superevent or
        trigger) as the enrich stage stored it; None on requests made before the
        enrich stage saw the event (the worker then computes the same key).
    localization_ref : str or None
        Id of the stored sky map (``sha256:<hex>``,
        :class:`broker.enrich.store.LocalizationRef`) the analysis samples: the
        event's own or its group's best. None: the event's point localization, or
        its most probable position. Neither field is part of the request id.
    """

    kind: RequestKind
    event: Event
    analyses: tuple[str, ...]
    params: Mapping[str, Any]
    requested_by: str
    created_at: str = field(default_factory=utc_now)
    provenance: Provenance | None = None
    group: str | None = None
    localization_ref: str | None = None

    @property
    def request_id(self) -> str:
        """See :func:`request_id`."""
        return request_id(self.kind, self.event.id, self.analyses, self.params)

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON form (``followup/schemas/followup_request.json``)."""
        return {
            "schema": REQUEST_SCHEMA,
            "request_id": self.request_id,
            "kind": self.kind,
            "event": self.event.to_json_dict(),
            "analyses": sorted(self.analyses),
            "params": json.loads(canonical_json(dict(self.params))),
            "requested_by": self.requested_by,
            "created_at": self.created_at,
            "provenance": asdict(self.provenance) if self.provenance else None,
            "group": self.group,
            "localization_ref": self.localization_ref,
        }

    def encode(self) -> bytes:
        """UTF-8 JSON bytes for Kafka."""
        return json.dumps(self.to_json_dict(), separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def decode(cls, data: bytes) -> "FollowupRequest":
        """Inverse of :meth:`encode`.

        Raises
        ------
        ValueError
            Not a follow-up request (bad JSON, wrong schema tag, missing field, or a
            request id that does not match its content).
        """
        try:
            obj = json.loads(data)
            if obj.get("schema") != REQUEST_SCHEMA:
                raise ValueError(f"schema tag {obj.get('schema')!r}, expected {REQUEST_SCHEMA!r}")
            prov = obj.get("provenance")
            req = cls(
                kind=obj["kind"], event=Event.model_validate(obj["event"]), analyses=tuple(obj["analyses"]),
                params=obj["params"], requested_by=obj["requested_by"], created_at=obj["created_at"],
                provenance=Provenance(**prov) if prov else None,
                group=obj.get("group"), localization_ref=obj.get("localization_ref"),
            )
            for name in ("group", "localization_ref"):
                if not isinstance(getattr(req, name), (str, type(None))):
                    raise ValueError(f"{name} {getattr(req, name)!r} is not a string")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a follow-up request: {' '.join(str(exc).split())[:300]}") from None
        if req.kind not in ("analyze", "withdraw"):
            raise ValueError(f"not a follow-up request: kind {req.kind!r}")
        if obj.get("request_id") != req.request_id:
            raise ValueError(f"follow-up request id {obj.get('request_id')!r} does not match its content")
        return req


def result_message(record: Mapping[str, Any]) -> bytes:
    """UTF-8 JSON bytes of a result or withdrawal document (``followup_result.json``)."""
    return json.dumps(dict(record), separators=(",", ":"), allow_nan=False, default=str).encode()


def adhoc_event(t0: str, name: str | None = None, localization: Any = None,
                skymap: Mapping[str, Any] | None = None, note: str | None = None) -> Event:
    """The Event of an ad-hoc follow-up request.

    Parameters
    ----------
    t0 : str
        Event time T0, ISO 8601 UTC ending in ``Z`` (as :class:`broker.event.Event` wants).
    name : str, optional
        The event's name (``GRB 230307A``); it becomes ``upstream_id``, so ad-hoc
        requests of one name form one follow-up group. Default: ``T0 <t0>``.
    localization : PointLocalization, HealpixLocalization or None
    skymap : mapping, optional
        The artifact description of a user sky map (``sha256``, ``ref``, ...,
        :meth:`followup.store.ArtifactStore.put`), kept in ``properties.skymap``.
    note : str, optional
        Free text kept in ``properties.note`` (where the values come from).

    Returns
    -------
    broker.event.Event
        ``source="user"``, ``mission="ad-hoc"``, ``alert_type="request"``; ``id`` is
        ``user:<name>:<12 hex digits of sha256 over t0, localization, map and note>``.

    Raises
    ------
    ValueError
        (pydantic ValidationError) a value the Event model refuses (T0 out of range,
        control characters in the name, ...).
    """
    upstream = name if name else f"T0 {t0}"
    loc = localization.model_dump(mode="json") if localization is not None else None
    properties: dict[str, Any] = {"name": upstream, "requested_via": "mma-broker followup request"}
    if skymap is not None:
        properties["skymap"] = dict(skymap)
    if note:
        properties["note"] = note
    digest = hashlib.sha256(canonical_json({"t0": t0, "name": upstream, "localization": loc,
                                            "skymap": properties.get("skymap"), "note": note}).encode())
    return Event(id=f"{USER_SOURCE}:{upstream}:{digest.hexdigest()[:12]}", source=USER_SOURCE, messenger="em",
                 mission=ADHOC_MISSION, instrument=None, upstream_id=upstream, alert_type="request", time=t0,
                 localization=localization, properties=properties, format="json")
