"""Content-addressed store of raw upstream bytes, exactly as upstream sent them.

Three implementations behind one small interface (:class:`RawStore`):

:class:`SegmentFileStore`
    One append-only segment file per batch, fsynced (file and directory) before
    :meth:`put_many` returns, so the bytes are durable before the archive commits and
    before Kafka offsets are committed. Writing 35 MB of a 500-alert ZTF batch is one
    ``write`` + one ``fsync``: this is sequential I/O that does not touch PostgreSQL's
    WAL, so raw bytes never make the database the bottleneck. Trade-off: every worker
    must see the same directory (local disk for one machine, a shared file system
    such as NFS/CephFS on a cluster) and backups must cover it as well as the
    database. A redelivered batch, or a batch whose database transaction failed, leaves
    its segment unreferenced (garbage, never corruption); rows keep the first ref.
:class:`PostgresRawStore`
    ``bytea`` rows keyed by sha256 in table ``raw_messages`` (``INSERT ... ON CONFLICT
    DO NOTHING``), written in the same transaction as the event rows. For clusters
    without a shared file system: one thing to back up, true deduplication across
    batches, at the cost of sending every byte through the WAL (roughly 2x the raw
    volume in disk writes, and slower; see benchmarks/bench_archive.py).
:class:`RoutedRawStore` (default)
    Both: the Events of some sources (by default the notices: gcn, igwn, voevent, user)
    in ``raw_messages``, all other bytes (the surveys' alerts, dead letters, artifacts)
    in segment files; reads go by the ref (no segment: the table). Why: a notice's
    segment ``fsync`` waits behind the survey stream's dirty data on a shared file
    system, and the surveys' bytes in the table would load the WAL every commit flushes
    (docs/publishing-latency.md).

Either way, :meth:`RawStore.get` and :meth:`RawStore.get_many` verify the sha256 of what
they read, unless the caller passes ``verify=False``. Only the live filter stage does
(:func:`filters.stage.fetch_raw_many`): it reads back, seconds after the ingest stage
wrote and fsynced them, the bytes of every ZTF/LSST alert, and hashing 80 kB per alert
was 40 µs of its CPU per alert (docs/filters-speed.md, third pass). Every other reader
verifies: ``events show --raw``, ``dlq raw``, the enrich stage, the time machine
(``filters run``, whose results are the reproducible ones) and ``archive export``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

from broker.errors import BrokerError

if TYPE_CHECKING:
    import sqlalchemy as sa

log = logging.getLogger(__name__)


class RawStoreError(BrokerError):
    """Raw bytes missing, unreadable, or not matching their sha256."""


@dataclass(frozen=True, slots=True)
class RawRef:
    """Where one raw message is stored.

    Attributes
    ----------
    sha256 : str
        Hex SHA-256 of the bytes (the content address).
    length : int
        Size in bytes.
    segment : str or None
        Segment file name relative to the store directory (``YYYYMMDD/<name>.seg``),
        None for :class:`PostgresRawStore`.
    offset : int or None
        Byte offset in the segment, None for :class:`PostgresRawStore`.
    """

    sha256: str
    length: int
    segment: str | None = None
    offset: int | None = None


class RawStore(Protocol):
    """Interface of the raw-bytes stores.

    ``transactional`` says whether :meth:`put_many` must run inside the archive's
    database transaction (it then receives that ``connection``).
    """

    transactional: bool

    def put_many(self, blobs: Sequence[bytes], connection: "sa.Connection | None" = None) -> list[RawRef]:
        """Store ``blobs`` durably; return one ref per blob, in order."""
        ...

    def get(self, ref: RawRef, connection: "sa.Connection | None" = None, *, verify: bool = True) -> bytes:
        """Return the bytes of ``ref``, verified against ``ref.sha256`` unless ``verify`` is False."""
        ...

    def get_many(self, refs: Sequence[RawRef], connection: "sa.Connection | None" = None, *,
                 verify: bool = True) -> "list[bytes | RawStoreError]":
        """The bytes of each ref, in order, or the :class:`RawStoreError` that ref met (not raised)."""
        ...


def _dedupe(blobs: Sequence[bytes]) -> tuple[list[str], dict[str, bytes]]:
    """Hash each blob once (the same object repeated is hashed once); keep first copy."""
    by_obj: dict[int, str] = {}
    digests: list[str] = []
    unique: dict[str, bytes] = {}
    for blob in blobs:
        digest = by_obj.get(id(blob))
        if digest is None:
            digest = hashlib.sha256(blob).hexdigest()
            by_obj[id(blob)] = digest
        digests.append(digest)
        unique.setdefault(digest, blob)
    return digests, unique


def _verified(data: bytes, ref: RawRef, where: str, verify: bool = True) -> bytes:
    if not verify:
        return data
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise RawStoreError(f"raw bytes at {where} have sha256 {digest}, expected {ref.sha256}")
    return data


WRITEBACK_CHUNK = 1 << 20
"""Bytes of a segment after which :meth:`SegmentFileStore.put_many` starts their writeback
(Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``: asynchronous, no metadata, no
durability by itself; the ``fsync`` at the end still makes the segment durable) while it
writes the rest.

Why: a ZTF batch is ~40 MB written at once and then fsynced. Until then it sits in the
page cache; its fsync then puts it all in the disk's queue, and every other flush on
the same disk meanwhile (a notice's PostgreSQL commit, ext4's journal) waits behind it.
Written back a MiB at a time, the queue never holds more than a few MiB. Measured with
``benchmarks/bench_latency.py`` under 1,000 ZTF alerts/s, A/B in one run
(docs/publishing-latency.md, "A raw store per upstream")."""
_SYNC_FILE_RANGE_WRITE = 2
"""``SYNC_FILE_RANGE_WRITE`` of ``<fcntl.h>``: start writeback of the range's dirty pages."""


def _load_sync_file_range():
    """libc's ``sync_file_range`` (Linux), or None where there is none (then segments are
    written in one go, as before)."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentFileStore:
    """Raw bytes in append-only segment files, one per batch, under ``directory``.

    Parameters
    ----------
    directory : Path
        Root directory; segments go into one sub-directory per UTC day. Created if
        missing. Must be shared by all workers that read raw bytes back.
    fsync : bool
        Flush file and directory to stable storage before returning (default). Only
        benchmarks of the rest of the pipeline should turn it off.
    """

    transactional = False

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.fsync = fsync

    def __repr__(self) -> str:
        return f"SegmentFileStore({str(self.directory)!r})"

    def put_many(self, blobs: Sequence[bytes], connection: "sa.Connection | None" = None) -> list[RawRef]:
        """Write the distinct blobs into one new segment file and fsync it.

        Parameters
        ----------
        blobs : sequence of bytes
            Raw messages, possibly repeated (several Events of one Avro container).
        connection : ignored
            Present for interface compatibility.

        Returns
        -------
        list of RawRef
            One per input blob, in input order; equal blobs share one ref.

        Raises
        ------
        OSError
            If the directory cannot be written (disk full, permissions).
        """
        if not blobs:
            return []
        digests, unique = _dedupe(blobs)
        now = datetime.now(timezone.utc)
        day = now.strftime("%Y%m%d")
        day_dir = self.directory / day
        if not day_dir.is_dir():
            day_dir.mkdir(parents=True, exist_ok=True)
            if self.fsync:
                _fsync_dir(self.directory)
        name = f"{day}/{now.strftime('%H%M%S%f')}-{os.getpid()}-{uuid.uuid4().hex[:8]}.seg"
        path = self.directory / name
        placed: dict[str, RawRef] = {}
        offset = 0
        for digest, blob in unique.items():
            placed[digest] = RawRef(sha256=digest, length=len(blob), segment=name, offset=offset)
            offset += len(blob)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb", buffering=0, closefd=False) as fh:
                if self.fsync and _sync_file_range is not None and offset > WRITEBACK_CHUNK:
                    # start the writeback of each MiB written (asynchronous), so that the
                    # fsync below, and any other writer's flush meanwhile, does not find
                    # a whole 40 MB batch queued at once (see WRITEBACK_CHUNK)
                    done = started = 0
                    for blob in unique.values():
                        fh.write(blob)
                        done += len(blob)
                        if done - started >= WRITEBACK_CHUNK:
                            _sync_file_range(fd, started, done - started, _SYNC_FILE_RANGE_WRITE)
                            started = done
                else:
                    fh.writelines(unique.values())
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if self.fsync:
            _fsync_dir(day_dir)
        log.debug("wrote %d raw messages, %d bytes, to segment %s", len(unique), offset, name)
        return [placed[d] for d in digests]

    def get(self, ref: RawRef, connection: "sa.Connection | None" = None, *, verify: bool = True) -> bytes:
        """Read the bytes of ``ref`` and verify them against its sha256.

        Parameters
        ----------
        ref : RawRef
        connection : ignored
        verify : bool
            Hash what was read and compare (default). False skips the hash (the length
            is still checked): see the module docstring for who may.

        Raises
        ------
        RawStoreError
            If the segment is missing, too short, or the bytes do not match the hash.
        """
        got = self.get_many([ref], verify=verify)[0]
        if isinstance(got, RawStoreError):
            raise got
        return got

    def get_many(self, refs: Sequence[RawRef], connection: "sa.Connection | None" = None, *,
                 verify: bool = True) -> "list[bytes | RawStoreError]":
        """Read several refs, each segment file opened once (``os.pread`` per ref).

        Parameters
        ----------
        refs : sequence of RawRef
        connection : ignored
        verify : bool
            As in :meth:`get`.

        Returns
        -------
        list
            Per ref, in order: its bytes, or the :class:`RawStoreError` it met (a missing
            or short segment, a hash mismatch, a ref without segment); one bad ref does
            not hide the others.
        """
        out: list[bytes | RawStoreError] = []
        with self.reader(verify=verify) as reader:
            for ref in refs:
                try:
                    out.append(reader.read(ref))
                except RawStoreError as exc:
                    out.append(exc)
        return out

    def reader(self, *, verify: bool = True) -> "SegmentReader":
        """A :class:`SegmentReader`: refs read one at a time, each segment file opened once."""
        return SegmentReader(self.directory, verify=verify)


class SegmentReader:
    """Reads refs of a :class:`SegmentFileStore` one at a time, keeping each segment open.

    A batch of ZTF alerts lies in one or two segments (one per ingest batch): one
    ``open`` for the batch, then one ``os.pread`` per alert, when its bytes are needed
    (so that a reader of 500 alerts does not hold their 40 MB at once). Close it (or use
    it as a context manager) to release the files.

    Parameters
    ----------
    directory : Path
        The store's root directory.
    verify : bool
        Hash each read and compare with the ref's sha256 (see the module docstring).
    """

    def __init__(self, directory: Path, *, verify: bool = True) -> None:
        self.directory = Path(directory)
        self.verify = verify
        self._fds: dict[str, int | RawStoreError] = {}

    def read(self, ref: RawRef) -> bytes:
        """The bytes of ``ref``.

        Raises
        ------
        RawStoreError
            A ref without segment, a segment missing or too short, or (``verify``) bytes
            not matching the sha256. The message names the segment as the ref does
            (relative to the store), never the host's directory: it can reach a published
            record (the enrich stage's ``enrichment.error``).
        """
        if ref.segment is None or ref.offset is None:
            raise RawStoreError(f"raw ref {ref.sha256} has no segment: it belongs to a PostgresRawStore")
        fd = self._fds.get(ref.segment)
        if fd is None:
            try:
                fd = os.open(self.directory / ref.segment, os.O_RDONLY)
            except OSError as exc:
                fd = RawStoreError(f"cannot read raw segment {ref.segment}: {exc.strerror}")
            self._fds[ref.segment] = fd
        if isinstance(fd, RawStoreError):
            raise fd
        try:
            data = os.pread(fd, ref.length, ref.offset)
        except OSError as exc:
            raise RawStoreError(f"cannot read raw segment {ref.segment}: {exc.strerror}") from None
        if len(data) != ref.length:
            raise RawStoreError(f"raw segment {ref.segment} ends before offset "
                                f"{ref.offset}+{ref.length}")
        return _verified(data, ref, f"segment {ref.segment}@{ref.offset}", self.verify)

    def close(self) -> None:
        """Close the segment files opened so far (the reader can still be used: it opens them again)."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            if isinstance(fd, int):
                os.close(fd)

    def __enter__(self) -> "SegmentReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit os may be gone already
            pass


class PostgresRawStore:
    """Raw bytes as ``bytea`` rows of table ``raw_messages``, keyed by sha256.

    Parameters
    ----------
    engine : sqlalchemy.Engine or None
        Used by :meth:`get` and :meth:`put_many` when no connection is passed. The
        :class:`~broker.archive.store.Archive` always passes its own connection, so
        ``None`` is fine there.
    """

    transactional = True

    def __init__(self, engine: "sa.Engine | None" = None) -> None:
        self.engine = engine

    def __repr__(self) -> str:
        return "PostgresRawStore()"

    def _run(self, connection: "sa.Connection | None", fn):
        if connection is not None:
            return fn(connection)
        if self.engine is None:
            raise RawStoreError("PostgresRawStore needs a connection or an engine")
        with self.engine.begin() as conn:
            return fn(conn)

    def put_many(self, blobs: Sequence[bytes], connection: "sa.Connection | None" = None) -> list[RawRef]:
        """Insert the distinct blobs, skipping those already stored.

        The bytes travel as binary parameters (``%b``: no hex escaping) in one
        pipelined ``executemany``. Runs inside ``connection``'s transaction.

        Returns
        -------
        list of RawRef
            One per input blob, in input order (``segment`` and ``offset`` None).
        """
        if not blobs:
            return []
        digests, unique = _dedupe(blobs)

        def insert(conn: "sa.Connection") -> None:
            dbapi = conn.connection.driver_connection
            with dbapi.cursor() as cur:
                cur.executemany(
                    "INSERT INTO raw_messages (sha256, data) VALUES (%s, %b) ON CONFLICT (sha256) DO NOTHING",
                    list(unique.items()),
                )

        self._run(connection, insert)
        sizes = {d: len(b) for d, b in unique.items()}
        return [RawRef(sha256=d, length=sizes[d]) for d in digests]

    def get(self, ref: RawRef, connection: "sa.Connection | None" = None, *, verify: bool = True) -> bytes:
        """Fetch the bytes of ``ref`` and verify them (unless ``verify`` is False; see the module docstring).

        Raises
        ------
        RawStoreError
            If no row has this sha256, or the bytes do not match it.
        """
        got = self.get_many([ref], connection, verify=verify)[0]
        if isinstance(got, RawStoreError):
            raise got
        return got

    def get_many(self, refs: Sequence[RawRef], connection: "sa.Connection | None" = None, *,
                 verify: bool = True) -> "list[bytes | RawStoreError]":
        """Fetch several refs in one query (``sha256 = ANY(...)``).

        Returns
        -------
        list
            Per ref, in order: its bytes, or the :class:`RawStoreError` it met (no such
            row, or bytes not matching the sha256).
        """
        import sqlalchemy as sa

        if not refs:
            return []
        wanted = list(dict.fromkeys(r.sha256 for r in refs))

        def fetch(conn: "sa.Connection") -> dict[str, bytes]:
            rows = conn.execute(sa.text("SELECT sha256, data FROM raw_messages WHERE sha256 = ANY(:h)"),
                                {"h": wanted})
            return {h: bytes(d) for h, d in rows}

        found = self._run(connection, fetch)
        out: list[bytes | RawStoreError] = []
        for ref in refs:
            data = found.get(ref.sha256)
            if data is None:
                out.append(RawStoreError(f"raw message {ref.sha256} not found in table raw_messages"))
                continue
            try:
                out.append(_verified(data, ref, f"raw_messages[{ref.sha256}]", verify))
            except RawStoreError as exc:
                out.append(exc)
        return out


class RoutedRawStore:
    """Raw bytes of some sources in PostgreSQL, of all others in segment files.

    Why: a GCN or IGWN notice is a few kB and on the latency path (notice in → HERMES
    out); a ZTF or LSST alert is ~80 kB, a thousand a second. In one segment file store
    a notice's ``fsync`` waits, on ext4 ``data=ordered``, for the journal commit that
    flushes the survey ingest's dirty segment data written meanwhile (raw-store p99 of
    the notices' ingest 124 ms under 1,000 ZTF alerts/s, docs/publishing-latency.md),
    and all in PostgreSQL sends the survey bytes through the WAL that every commit of
    the notice path flushes (measured worse). Routed, the notices' bytes go in the
    rows' own transaction (one WAL flush, which the commit needs anyway) and the
    surveys' stay sequential file I/O outside the database.

    Writes route by the Event's source (:meth:`store_for`, used by
    :meth:`broker.archive.Archive.write_batch`); bytes without an Event (dead letters,
    follow-up artifacts, :meth:`put_many` without a source, ``archive import``) go to
    the segment files. Reads route by the ref: ``segment`` None → ``raw_messages``, else
    the segment file, so an archive holding refs of both kinds (and one whose setting
    changed over time) reads back whole.

    Parameters
    ----------
    files : SegmentFileStore
    postgres : PostgresRawStore
    postgres_sources : iterable of str
        Event sources (``Event.source``: ``gcn``, ``igwn``, ...) whose bytes go to
        PostgreSQL.

    Attributes
    ----------
    transactional : bool
        True: readers pass a connection (the PostgreSQL half reads with it; the file
        half ignores it). Writers route with :meth:`store_for` and ask each half.
    """

    transactional = True

    def __init__(self, files: SegmentFileStore, postgres: PostgresRawStore, postgres_sources) -> None:
        self.files = files
        self.postgres = postgres
        self.postgres_sources = frozenset(postgres_sources)

    @property
    def directory(self) -> Path:
        """The segment files' root directory (``archive gc``, the writers' touch of a segment)."""
        return self.files.directory

    @property
    def engine(self) -> "sa.Engine | None":
        """The PostgreSQL half's engine (lazy reads of :meth:`reader`); the Archive lends its own."""
        return self.postgres.engine

    @engine.setter
    def engine(self, value: "sa.Engine | None") -> None:
        self.postgres.engine = value

    def __repr__(self) -> str:
        return f"RoutedRawStore({self.files!r}, postgres for {sorted(self.postgres_sources)})"

    def store_for(self, source: str | None) -> "SegmentFileStore | PostgresRawStore":
        """The half that keeps the bytes of an Event of ``source`` (None: bytes without an Event)."""
        return self.postgres if source in self.postgres_sources else self.files

    def put_many(self, blobs: Sequence[bytes], connection: "sa.Connection | None" = None) -> list[RawRef]:
        """Store bytes without a source (dead letters, artifacts, imports) in the segment files.

        Returns
        -------
        list of RawRef
            One per blob, in order (:meth:`SegmentFileStore.put_many`).
        """
        return self.files.put_many(blobs)

    def get(self, ref: RawRef, connection: "sa.Connection | None" = None, *, verify: bool = True) -> bytes:
        """The bytes of ``ref`` from the half it names (see :meth:`get_many`).

        Raises
        ------
        RawStoreError
            As the half's ``get``.
        """
        if ref.segment is None:
            return self.postgres.get(ref, connection, verify=verify)
        return self.files.get(ref, verify=verify)

    def get_many(self, refs: Sequence[RawRef], connection: "sa.Connection | None" = None, *,
                 verify: bool = True) -> "list[bytes | RawStoreError]":
        """Per ref, in order, its bytes or the :class:`RawStoreError` it met: the refs
        without segment in one query on ``connection``, the others from their segment files."""
        out: list[bytes | RawStoreError | None] = [None] * len(refs)
        pg = [i for i, r in enumerate(refs) if r.segment is None]
        fs = [i for i, r in enumerate(refs) if r.segment is not None]
        for idx, half in ((pg, self.postgres), (fs, self.files)):
            if idx:
                got = half.get_many([refs[i] for i in idx], connection if half is self.postgres else None,
                                    verify=verify)
                for i, g in zip(idx, got):
                    out[i] = g
        return out  # type: ignore[return-value]

    def reader(self, *, verify: bool = True) -> "RoutedReader":
        """A :class:`RoutedReader`: segment refs as :class:`SegmentReader` reads them, the
        others one query each on the PostgreSQL half's engine."""
        return RoutedReader(SegmentReader(self.files.directory, verify=verify), self.postgres, verify=verify)


class RoutedReader:
    """Reads refs of a :class:`RoutedRawStore` one at a time (the filters' :class:`~filters.stage.LazyRaw`).

    A ref with a segment is read by the :class:`SegmentReader` (the survey alerts of a
    batch: each segment opened once, one ``pread`` per alert); a ref without one (a
    notice, a few per batch at most) by one query on the PostgreSQL half's engine.

    Parameters
    ----------
    segments : SegmentReader
    postgres : PostgresRawStore
        Its ``engine`` must be set (:class:`broker.archive.Archive` lends its own).
    verify : bool
        Hash what is read (see the module docstring).
    """

    def __init__(self, segments: SegmentReader, postgres: PostgresRawStore, *, verify: bool = True) -> None:
        self.segments = segments
        self.postgres = postgres
        self.verify = verify

    def read(self, ref: RawRef) -> bytes:
        """The bytes of ``ref``.

        Raises
        ------
        RawStoreError
            As :meth:`SegmentReader.read` or :meth:`PostgresRawStore.get`.
        """
        if ref.segment is None:
            return self.postgres.get(ref, verify=self.verify)
        return self.segments.read(ref)

    def close(self) -> None:
        """Close the segment files opened so far."""
        self.segments.close()

    def __enter__(self) -> "RoutedReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
