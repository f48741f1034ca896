"""``mma-broker replay``: publish alert files, byte for byte, to the local Kafka under
the upstream topic name each would have had (``igwn.gwalert``,
``gcn.classic.voevent.FERMI_GBM_FLT_POS``, ``gcn.notices.swift.bat.guano``,
``ztf_20231012_programid1``, ...), optionally at a fixed rate."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from broker.errors import BrokerError, DecodeError
from broker.kafka import DeliveryTracker, flush_or_raise

log = logging.getLogger(__name__)

ALERT_SUFFIXES = (".json", ".xml", ".avro")


def expand_paths(paths: Iterable[Path]) -> Iterator[Path]:
    """Files as given; directories recursively (sorted), alert suffixes only."""
    for p in paths:
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in ALERT_SUFFIXES)
        else:
            yield p


def read_manifest(path: Path) -> list[Path]:
    """A manifest lists one path or glob per line, relative to the manifest's folder's
    parent repository root (lines starting with ``#`` are comments)."""
    root = path.resolve().parent
    while not (root / "pyproject.toml").exists() and root != root.parent:
        root = root.parent
    out: list[Path] = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        matches = sorted(root.glob(line))
        if not matches:
            raise BrokerError(f"{path}: pattern {line!r} matches no file")
        out.extend(matches)
    return out


@dataclass
class ReplayResult:
    sent: int = 0
    per_topic: Counter = field(default_factory=Counter)
    errors: list[tuple[Path, str]] = field(default_factory=list)


def route(data: bytes, topic: str | None) -> str:
    """The upstream topic for one file (``topic`` forces it)."""
    if topic:
        return topic
    from broker.sources import upstream_topic

    return upstream_topic(data)


def replay_files(files: list[Path], producer, *, topic_prefix: str = "", topic: str | None = None,
                 rate: float | None = None, progress=None, create_topics=None) -> ReplayResult:
    """Publish each file as one message.

    Parameters
    ----------
    files : list of Path
    producer : confluent_kafka.Producer
    topic_prefix : str
        Prepended to every topic (test isolation).
    topic : str, optional
        Force this topic instead of the one derived from the content (e.g. to replay
        a malformed file onto the topic it arrived on).
    rate : float, optional
        Messages per second; as fast as possible when None.
    progress : callable, optional
        Called with the number of files done after each file (progress bar hook).
    create_topics : callable, optional
        Called once with the set of topic names before anything is produced, to
        create them (e.g. :func:`broker.kafka.ensure_topics`). Producing into topics
        that Kafka auto-creates on the first message lost that first message once in
        our CI runs (Kafka 4.1, fresh cluster), with a successful delivery report.

    Returns
    -------
    ReplayResult
        Counts per topic and the files that could not be routed, with the reason.
    """
    result = ReplayResult()
    tracker = DeliveryTracker()
    routed: list[tuple[Path, str | None]] = []
    for path in files:
        try:
            routed.append((path, topic_prefix + route(path.read_bytes(), topic)))
        except (OSError, DecodeError) as exc:
            result.errors.append((path, str(exc)))
            routed.append((path, None))
    if create_topics is not None:
        create_topics({name for _, name in routed if name is not None})
    t_start = time.monotonic()
    for i, (path, name) in enumerate(routed):
        if name is not None:
            try:
                data = path.read_bytes()
            except OSError as exc:
                result.errors.append((path, str(exc)))
            else:
                producer.produce(name, value=data, headers=[("mma.replay.file", path.name.encode())],
                                 on_delivery=tracker.callback)
                producer.poll(0)
                result.sent += 1
                result.per_topic[name] += 1
                if rate:
                    delay = t_start + result.sent / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
        if progress:
            progress(i + 1)
    flush_or_raise(producer, tracker)
    return result
