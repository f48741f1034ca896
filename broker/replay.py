"""``mma-broker replay``: publish alert files, byte for byte, to the local Kafka under
the upstream topic name each would have had (``igwn.gwalert``,
``gcn.classic.voevent.FERMI_GBM_FLT_POS``, ``gcn.notices.swift.bat.guano``,
``ztf_20231012_programid1``, ...), optionally at a fixed rate."""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path, PurePath

from broker.errors import BrokerError
from broker.text import printable

log = logging.getLogger(__name__)

ALERT_SUFFIXES = (".json", ".xml", ".avro")

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest alert file read (an IGWN alert with its sky map is a few MB)."""

OnError = Callable[[Path, str], None]


def display_path(path: Path | str) -> str:
    """``path`` as text that can always be printed: bytes of a file name that are not
    UTF-8 (kept by Python as surrogate escapes) are shown as ``\\xNN``."""
    return printable(os.fsencode(path).decode("utf-8", "backslashreplace"))


def failure_reason(exc: BaseException) -> str:
    """One printable line saying why a file failed (no traceback)."""
    if isinstance(exc, BrokerError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    elif isinstance(exc, RecursionError):
        text = "nested too deeply (RecursionError)"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = " ".join(text.split()).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= 500 else text[:499] + "…"


def _log_error(path: Path, reason: str) -> None:
    log.warning("%s: %s", display_path(path), reason)


def read_alert_file(path: Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of one alert file: a regular file (symlinks followed), at most ``max_bytes``.

    Raises
    ------
    BrokerError
        One line: broken symbolic link, not a regular file (a folder, a FIFO that
        would block), or too large.
    OSError
        If the file cannot be read (permission denied, I/O error).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise BrokerError("broken symbolic link") from None
        raise
    if stat.S_ISDIR(st.st_mode):
        raise BrokerError("is a folder")
    if not stat.S_ISREG(st.st_mode):
        raise BrokerError("not a regular file")
    if st.st_size > max_bytes:
        raise BrokerError(f"file is {st.st_size:,} bytes, over the {max_bytes:,}-byte limit")
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BrokerError(f"file grew over the {max_bytes:,}-byte limit while read")
    return data


def _walk(root: Path, on_error: OnError) -> list[Path]:
    """Alert files under ``root``, sorted; iterative (no recursion limit), symlinked
    folders not followed (no loops), unreadable folders and broken links reported."""
    found: list[Path] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            on_error(folder, f"cannot read folder: {failure_reason(exc)}")
            continue
        for entry in entries:
            p = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(p)
                elif p.suffix in ALERT_SUFFIXES:
                    if entry.is_file():
                        found.append(p)
                    elif entry.is_symlink() and not os.path.exists(p):
                        on_error(p, "broken symbolic link")
            except OSError as exc:
                on_error(p, failure_reason(exc))
    return sorted(found)


def expand_paths(paths: Iterable[Path], on_error: OnError | None = None) -> Iterator[Path]:
    """Files as given; folders recursively (sorted), alert suffixes only.

    Parameters
    ----------
    paths : iterable of Path
    on_error : callable, optional
        Called with (path, reason) for each folder or entry that cannot be read; the
        walk goes on. Default: log a warning.
    """
    report = on_error or _log_error
    for p in paths:
        try:
            is_dir = stat.S_ISDIR(os.stat(p).st_mode)
        except OSError:
            is_dir = False  # reported when the file is read
        except ValueError as exc:  # e.g. an embedded NUL byte
            report(p, failure_reason(exc))
            continue
        if is_dir:
            yield from _walk(p, report)
        else:
            yield p


def demo_dir() -> Path:
    """The real demo alerts shipped in the package (``broker/data/demo``; origins,
    licenses and checksums in its ``README.md``), for ``mma-broker replay --demo``.

    A real directory: setuptools installs package data as plain files (a zipped
    installation is not supported)."""
    return Path(str(files("broker") / "data" / "demo"))


def demo_files() -> list[Path]:
    """Every alert file of :func:`demo_dir`, sorted (a superevent's preliminary alert
    comes before its retraction)."""
    return list(expand_paths([demo_dir()]))


def _manifest_root(path: Path) -> Path:
    root = path.resolve().parent
    while not (root / "pyproject.toml").exists() and root != root.parent:
        root = root.parent
    return root if (root / "pyproject.toml").exists() else path.resolve().parent


def read_manifest(path: Path) -> list[Path]:
    """A manifest lists one path or glob per line, relative to the repository root above
    the manifest (the nearest folder with a ``pyproject.toml``; else the manifest's own
    folder). Lines starting with ``#`` are comments.

    Every entry must stay inside that root: absolute paths, ``..`` and files whose real
    path (symlinks resolved) is outside are refused.

    Raises
    ------
    BrokerError
        One line naming the manifest line: unreadable manifest, absolute path, a path
        leaving the root, a bad pattern, or a pattern that matches no file.
    """
    root = _manifest_root(path)
    real_root = root.resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BrokerError(f"manifest {display_path(path)}: {failure_reason(exc)}") from None
    except UnicodeDecodeError:
        raise BrokerError(f"manifest {display_path(path)}: not UTF-8 text") from None
    out: list[Path] = []
    for number, line in enumerate(text.splitlines(), 1):
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        where = f"{display_path(path)}:{number}"
        if PurePath(pattern).is_absolute():
            raise BrokerError(f"{where}: {pattern!r} is an absolute path; give paths relative to {display_path(root)}")
        if ".." in PurePath(pattern).parts:
            raise BrokerError(f"{where}: {pattern!r} leaves {display_path(root)} ('..' is not allowed)")
        try:
            matches = sorted(root.glob(pattern))
        except (ValueError, NotImplementedError, OSError) as exc:
            raise BrokerError(f"{where}: pattern {pattern!r}: {failure_reason(exc)}") from None
        if not matches:
            raise BrokerError(f"{where}: pattern {pattern!r} matches no file")
        for match in matches:
            if not match.resolve().is_relative_to(real_root):
                raise BrokerError(f"{where}: {display_path(match)} resolves outside {display_path(root)}")
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


_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
"""A legal Kafka topic name (Kafka's ``Topic.validate``)."""


def check_topic_name(name: str) -> str:
    """``name`` if Kafka accepts it as a topic name.

    Raises
    ------
    BrokerError
        Naming the topic (derived from a file's content, e.g. a GCN ``$schema`` path).
    """
    if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
        raise BrokerError(f"the topic derived from its content, {name[:300]!r}, is not a valid Kafka topic name "
                          "(letters, digits, '.', '_', '-'; at most 249 characters)")
    return name


def replay_files(files: list[Path], producer, *, topic_prefix: str = "", topic: str | None = None,
                 rate: float | None = None, progress=None, create_topics=None,
                 on_error: OnError | None = None) -> ReplayResult:
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
        create them (e.g. :func:`broker.kafka.ensure_topics`, which also waits until
        every partition takes writes). A partition that refuses the first batch while
        a later batch in flight is accepted makes librdkafka's idempotent producer
        report the refused batch delivered (confluent-kafka-go issue 921): the first
        message of a fresh topic was lost that way, with a successful delivery report.
    on_error : callable, optional
        Also called with (path, reason) as each file fails (e.g. to print it at once,
        before a Kafka error could end the replay).

    Returns
    -------
    ReplayResult
        Counts per topic and the files that could not be read or routed, each with a
        one-line reason (any exception of one file is caught: the others still go).
    """
    result = ReplayResult()
    from confluent_kafka import KafkaException  # here: inspect uses this module without Kafka

    from broker.kafka import DeliveryTracker, flush_or_raise

    tracker = DeliveryTracker()

    def failed(path: Path, exc: BaseException) -> None:
        reason = failure_reason(exc)
        result.errors.append((path, reason))
        if on_error is not None:
            on_error(path, reason)

    routed: list[tuple[Path, str | None]] = []
    for path in files:
        try:
            routed.append((path, check_topic_name(topic_prefix + route(read_alert_file(path), topic))))
        except Exception as exc:  # noqa: BLE001 - one file (or a routing bug) must not stop the replay
            failed(path, exc)
            routed.append((path, None))
    names = {name for _, name in routed if name is not None}
    if create_topics is not None and names:
        create_topics(names)
    t_start = time.monotonic()
    for i, (path, name) in enumerate(routed):
        if name is not None:
            try:
                data = read_alert_file(path)
            except Exception as exc:  # noqa: BLE001 - changed since it was routed
                failed(path, exc)
            else:
                try:
                    producer.produce(name, value=data, headers=[("mma.replay.file", os.fsencode(path.name))],
                                     on_delivery=tracker.callback)
                except (BufferError, KafkaException) as exc:  # e.g. larger than message.max.bytes
                    failed(path, exc)
                    continue
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
