"""Bounds on the work one upstream message may cause (DESIGN.md, "Reliability rules").

Every decoder runs inside :func:`decode_scope`, which makes the active
:class:`DecodeLimits` and a CPU-time budget visible to the code below it through a
context variable, so the limits need not be threaded through every signature and
several ingest threads each keep their own. A message over any limit is a
:class:`~broker.errors.DecodeError` whose reason names the limit and its value (so it
goes to the dead-letter topic and the stream goes on).

The defaults fit every real alert stream we know with a wide margin:

=========================  ==========  =================================================
limit                      default     what it bounds (largest real value seen)
=========================  ==========  =================================================
max_message_bytes          16 MiB      one upstream message (bundled: IGWN JSON alert
                                       with two sky maps 2.1 MB; ZTF alert 90 kB)
max_json_depth             64          JSON nesting (bundled notices: at most 8)
max_xml_depth              64          XML nesting (bundled VOEvents: at most 8)
max_xml_elements           100,000     XML elements (bundled VOEvents: at most 123)
max_decompressed_bytes     32 MiB      Avro blocks after decompression, per message
                                       (bundled IGWN Avro alert: 0.8 MB; a 70 MB
                                       bzip2 block is refused after ~80 ms of CPU)
max_skymap_bytes           256 MiB     a FITS sky map after gunzip (O4 multi-order maps:
                                       a few MB; flat NSIDE 1024, 4 columns: 400 MB is
                                       over and refused)
max_array_items            1,000,000   Python values one Avro message decodes to:
                                       records' fields (recursively), array items, map
                                       entries; counted before they are built (largest
                                       real alert: 4,520, a ZTF alert with 65
                                       prv_candidates and 21 fp_hists; the bombs in
                                       tests/unit/test_hostile_xml_avro.py are refused
                                       in < 1 s of CPU and < 300 MB, asserted)
max_json_items             100,000     JSON array items and object members, summed per
                                       message (bundled notices: at most 403); schema
                                       validation of 99,000 undeclared keys took
                                       0.46-0.88 s of CPU in two runs
max_decode_cpu_s           2.0         CPU time of one decode (the bundled 2.1 MB IGWN
                                       alert with sky maps: 12 ms)
max_event_bytes            1 MiB       one normalized Event as published on mma.events
max_dlq_bytes              1 MiB       the copy of a bad message kept on mma.dlq; larger
                                       ones are truncated, the whole is in the raw store
=========================  ==========  =================================================
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from broker.errors import DecodeError

MiB = 1024 * 1024


class DecodeLimits(BaseModel):
    """Limits on one message, settable under ``[limits]`` (``MMA_BROKER_LIMITS__...``).

    See the module docstring for the defaults and what each bounds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_message_bytes: int = Field(16 * MiB, gt=0)
    """Largest upstream message decoded, bytes."""
    max_json_depth: int = Field(64, gt=0)
    """Deepest JSON nesting (objects and arrays)."""
    max_xml_depth: int = Field(64, gt=0)
    """Deepest XML element nesting."""
    max_xml_elements: int = Field(100_000, gt=0)
    """Most XML elements in one document."""
    max_decompressed_bytes: int = Field(32 * MiB, gt=0)
    """Most bytes all Avro blocks of one message may decompress to."""
    max_skymap_bytes: int = Field(256 * MiB, gt=0)
    """Largest FITS sky map after decompression, bytes."""
    max_array_items: int = Field(1_000_000, gt=0)
    """Most Python values one Avro message decodes to: one per record field
    (recursively), array item, map entry (and its key) and per record, array or map
    itself. Counted from the writer schema and block counts before fastavro builds
    them (the name is historical: items alone missed a 1-byte item that is a record of
    2,000 null fields)."""
    max_json_items: int = Field(100_000, gt=0)
    """Most JSON array items and object members in one message, summed."""
    max_decode_cpu_s: float = Field(2.0, gt=0, allow_inf_nan=False)
    """Most CPU time (this thread's) one message may take to decode, s."""
    max_event_bytes: int = Field(1 * MiB, gt=0)
    """Largest normalized Event (Avro-encoded) published on ``mma.events``, bytes."""
    max_dlq_bytes: int = Field(1 * MiB, gt=0)
    """Largest copy of a bad message put on ``mma.dlq``; longer ones are truncated
    (headers give the sha256 and size of the whole, which stays in the raw store)."""


DEFAULT_LIMITS = DecodeLimits()


@dataclass
class _Scope:
    limits: DecodeLimits
    deadline_cpu_s: float


_scope: ContextVar[_Scope | None] = ContextVar("mma_broker_decode_scope", default=None)


def current_limits() -> DecodeLimits:
    """The limits of the decode under way (the defaults outside :func:`decode_scope`)."""
    scope = _scope.get()
    return scope.limits if scope is not None else DEFAULT_LIMITS


@contextmanager
def decode_scope(limits: DecodeLimits | None = None) -> Iterator[DecodeLimits]:
    """Run a decode under ``limits`` and a fresh CPU-time budget.

    Nested scopes keep the outer one (a decoder calling another decoder shares its
    budget).
    """
    outer = _scope.get()
    if outer is not None:
        yield outer.limits
        return
    lim = limits or DEFAULT_LIMITS
    token = _scope.set(_Scope(lim, time.thread_time() + lim.max_decode_cpu_s))
    try:
        yield lim
    finally:
        _scope.reset(token)


def check_cpu(where: str) -> None:
    """Raise DecodeError when the current decode used more CPU than allowed.

    Called between steps of work that grows with the input (Avro records, XML
    elements, sky-map pixels): a pathological message stops at the next check.

    Raises
    ------
    DecodeError
        Naming ``max_decode_cpu_s`` and where the work was.
    """
    scope = _scope.get()
    if scope is not None and time.thread_time() > scope.deadline_cpu_s:
        raise DecodeError(
            f"decode took more than max_decode_cpu_s = {scope.limits.max_decode_cpu_s:g} s of CPU ({where})"
        )


def over_limit(name: str, value: float, what: str) -> DecodeError:
    """A DecodeError for ``what`` exceeding the limit ``name`` (value given)."""
    limit = getattr(current_limits(), name)
    return DecodeError(f"{what} is over the limit {name} = {limit:,}" + (f" (got {value:,})" if value else ""))
