"""Lanes: the enrich and filters stages as several loops, each for some Event sources.

Issue 11's latency target (a GCN notice in → its HERMES message out, p50 ≤ 100 ms under
1,000 ZTF alerts/s) cannot be met while a notice waits in ``mma.events`` behind the ZTF
Events queued before it (docs/publishing-latency.md). With ``[lanes]`` the enrich and
filters stages run one loop per lane instead of one, each with its own consumer group
(``<group_id>.<stage>.<lane>``) and transactional id (``<group_id>.<stage>.<lane>.<instance>``),
all reading the same topic and writing the same output topics::

    [lanes]
    notices = ["*"]            # every source no other lane names (gcn, igwn, voevent, ...)
    optical = ["ztf", "lsst"]

A loop looks at each record's ``mma.event.id`` header (``<source>:<upstream id>``, set by
ingest on ``mma.events`` and by enrich on ``mma.events.enriched``) and skips the records
of other lanes' sources without decoding them; their offsets are committed with its own
(:class:`broker.pipeline.runner.StageRunner`, ``accept``). A record without the header
belongs to the ``*`` lane. ``mma-broker run --lane NAME`` runs one lane's loops only, so
each lane can be its own process (with its own OS priority: ``nice``) or Deployment.

No ``[lanes]`` (the default): one loop per stage, named ``enrich`` / ``filters``, with
the consumer groups and transactional ids of before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from broker.errors import BrokerError
from broker.event import SURVEY_SOURCES

EVENT_ID_HEADER = "mma.event.id"
"""Header naming the Event of a record (``<source>:<upstream id>``)."""
REST = "*"
"""A lane's source list entry meaning "every source no other lane names"."""
LANE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")


@dataclass(frozen=True)
class Lane:
    """One lane of the enrich and filters stages.

    Attributes
    ----------
    name : str or None
        None: the default single lane (every source; loops named as before lanes).
    sources : frozenset of str
        The Event sources it names (``ztf``, ``gcn``, ...).
    rest : bool
        It also takes every source no other lane names, and records without the header.
    others : frozenset of str
        The sources the other lanes name (what a ``rest`` lane skips).
    """

    name: str | None
    sources: frozenset[str] = frozenset()
    rest: bool = True
    others: frozenset[str] = frozenset()

    def loop(self, stage: str) -> str:
        """The loop's name: ``stage`` for the default lane, else ``<stage>.<lane>`` (consumer
        group suffix, transactional id, metrics and logs)."""
        return stage if self.name is None else f"{stage}.{self.name}"

    def takes(self, source: str | None) -> bool:
        """Whether Events of ``source`` (None: unknown) are this lane's."""
        if source is None:
            return self.rest
        return source in self.sources or (self.rest and source not in self.others)

    def takes_survey(self) -> bool:
        """Whether this lane takes a survey source (:data:`broker.event.SURVEY_SOURCES`):
        its loops see a stream of candidates (full batches; the optical side of
        cross-lane coincidences)."""
        return any(self.takes(src) for src in SURVEY_SOURCES)

    def fill_s(self, default: float) -> float:
        """``fill_s`` of this lane's loops (:class:`~broker.pipeline.runner.StageRunner`).

        A named lane that takes no survey source (:data:`SURVEY_SOURCES`; e.g. the
        ``notices`` lane: GCN, IGWN, VOEvent) is idle most of the time: 0, each record
        is handed over as it arrives, with whatever arrived with it, instead of waiting
        up to ``default`` for more (issue 11's latency, docs/publishing-latency.md). A
        lane carrying a survey stream, and the default single lane, keep ``default``
        (windows that make batches of a trickling stream, full batches of a backlog).

        Parameters
        ----------
        default : float
            The stage's ``fill_s``, s.

        Returns
        -------
        float
            s.
        """
        if self.name is None or self.takes_survey():
            return default
        return 0.0

    def accept(self, msg: Any) -> bool:
        """Whether the record ``msg`` (a confluent_kafka.Message) is this lane's, from its
        ``mma.event.id`` header alone (no decoding)."""
        for k, v in msg.headers() or ():
            if k == EVENT_ID_HEADER:
                if not v:
                    return self.rest
                if not isinstance(v, bytes):
                    v = str(v).encode("utf-8", "replace")
                i = v.find(b":")
                return self.takes(v[:i].decode("ascii", "replace") if i > 0 else None)
        return self.rest

    def accept_fn(self) -> Any:
        """``accept`` for :class:`~broker.pipeline.runner.StageRunner`: None for the default
        lane (every record handled, no header read)."""
        if self.name is None:
            return None
        return self.accept


def check_lanes(lanes: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Validate a ``[lanes]`` table (lane name → sources).

    Raises
    ------
    ValueError
        A bad lane or source name, an empty lane, a source in two lanes, or not exactly
        one lane holding ``"*"`` (every source must belong to one lane, or its Events
        would never be enriched).
    """
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    rest = []
    for name, sources in lanes.items():
        if not LANE_NAME.match(name):
            raise ValueError(f"lane name {name!r}: lower-case letters, digits, '-' and '_' (at most 40)")
        if not sources:
            raise ValueError(f"lane {name!r} names no source")
        for src in sources:
            if src == REST:
                rest.append(name)
                continue
            if not SOURCE_NAME.match(src):
                raise ValueError(f"lane {name!r}: {src!r} is not a source name (as in an Event id: ztf, gcn, ...)")
            if src in owner:
                raise ValueError(f"source {src!r} is in lanes {owner[src]!r} and {name!r}; one lane per source")
            owner[src] = name
        out[name] = list(dict.fromkeys(sources))
    if out and len(rest) != 1:
        raise ValueError(f'exactly one lane must hold "*" (the sources no other lane names); '
                         f'{"none does" if not rest else "these do: " + ", ".join(rest)}')
    return out


def lanes_of(settings: Any, only: Iterable[str] | None = None) -> list[Lane]:
    """The lanes of ``settings.lanes`` (or the one default lane), restricted to ``only``.

    Parameters
    ----------
    settings : broker.config.Settings
    only : iterable of str, optional
        Lane names (``mma-broker run --lane``); None: every lane.

    Raises
    ------
    BrokerError
        ``only`` names a lane ``[lanes]`` does not define.
    """
    table: Mapping[str, Sequence[str]] = getattr(settings, "lanes", None) or {}
    only = list(only) if only is not None else None
    if not table:
        if only:
            raise BrokerError(f"--lane {only[0]}: no [lanes] are configured (the stages run as one lane)")
        return [Lane(None)]
    named = {src for sources in table.values() for src in sources if src != REST}
    out = []
    for name, sources in table.items():
        own = frozenset(s for s in sources if s != REST)
        out.append(Lane(name, own, REST in sources, frozenset(named - own)))
    if only is not None:
        unknown = [n for n in only if n not in table]
        if unknown:
            raise BrokerError(f"--lane {unknown[0]}: not a lane of [lanes] ({', '.join(table)})")
        out = [lane for lane in out if lane.name in only]
    return out


def lane_clients(settings: Any, loop: str, topic: str, *, until_caught_up: bool) -> tuple[Any, Any, Any]:
    """The Kafka clients of one lane's loop: its consumer (group ``<group_id>.<loop>``,
    subscribed to ``topic``), its instance slot (:func:`broker.kafka.claim_instance`, for
    the transactional id) and, with ``until_caught_up``, an admin client for end offsets.

    Returns
    -------
    consumer : confluent_kafka.Consumer
    slot : broker.kafka instance slot (``release()`` when the loop ends)
    admin : confluent_kafka.admin.AdminClient or None
    """
    from broker.kafka import claim_instance, client_config, make_consumer

    consumer = make_consumer(settings, f"{settings.group_id}.{loop}")
    consumer.subscribe([topic])
    slot = claim_instance(settings, loop)
    admin = None
    if until_caught_up:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(client_config(settings))
    return consumer, slot, admin
