"""What an alert decoder plugin is: the contract between :func:`broker.sources.decode`
and one upstream format.

A decoder registers under the entry-point group ``mma_broker.sources``
(:mod:`broker.plugins`) with an :class:`AlertDecoder` value; the built-in ones
(``broker.sources.ztf:DECODER``, ...) register the same way in ``pyproject.toml``.

The dispatcher keeps what every decoder must not have to repeat: it sniffs the wire
format, applies the size limit, parses the Avro container header or the JSON text
(within the decode limits, :mod:`broker.limits`) once, and asks the decoders of that
format in order of ``priority`` whether they take the message (``accepts``, which must
be cheap and must not raise); the first that does decodes it. Whatever a decoder
raises other than :class:`~broker.errors.DecodeError` is turned into one by
:func:`broker.sources.decode`, so a decoder bug never stops a stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from broker.event import Event

Format = Literal["avro", "voevent", "json"]
"""Wire formats :func:`broker.sources.sniff_format` tells apart."""


@dataclass(frozen=True)
class AlertDecoder:
    """One upstream alert format.

    Attributes
    ----------
    name : str
        Label for logs (the entry point's name is the registry key).
    format : {"avro", "voevent", "json"}
        The wire format it reads.
    accepts : callable
        ``accepts(parsed) -> bool``: whether this decoder takes the message. ``parsed``
        is the :class:`~broker.sources.avro.AvroHeader` for Avro, the raw bytes for
        VOEvent XML, the parsed object (a dict) for JSON.
    decode : callable
        ``decode(data, parsed) -> list[Event]``: the Events of the message (an Avro
        container may hold several), or :class:`~broker.errors.DecodeError`.
    upstream_topic : callable
        ``upstream_topic(data, parsed) -> str``: the Kafka topic upstream publishes such
        a message on (``mma-broker replay``).
    priority : int
        Order among the decoders of one format, lowest first (ties: by entry-point name).
    describes : str
        What it takes, for the error when no decoder of the format does, e.g. ``"an
        IGWN gwalert (no 'superevent_id')"``.
    """

    name: str
    format: Format
    accepts: Callable[[Any], bool]
    decode: Callable[[bytes, Any], list[Event]]
    upstream_topic: Callable[[bytes, Any], str]
    priority: int = 100
    describes: str = ""
