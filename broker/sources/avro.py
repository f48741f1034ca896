"""Avro object-container files: header parsing, schema cache, block iteration.

Every upstream Avro message (a ZTF alert, an IGWN ``gwalert`` in Avro) is a complete
Avro object container file (Apache Avro 1.11 specification, "Object Container Files"):

.. code-block:: text

    'O' 'b' 'j' 0x01                 magic
    map<bytes>                       file metadata ("avro.schema", "avro.codec", ...)
    fixed(16)                        sync marker
    { long count, long size, bytes[size] data, fixed(16) sync }*   data blocks

The header is tiny and parsed here in plain Python. What is not tiny is the writer
schema it carries: every ZTF alert repeats the same ~10 kB schema JSON, and parsing
and compiling it per message is most of what makes a naive ``fastavro.reader`` per
message slow. :func:`read_header` therefore memoizes the parsed and compiled schema
keyed by the exact schema JSON bytes (a bounded :func:`functools.lru_cache`; a pure
function of immutable bytes, so it carries no state a caller can observe). Schemas
returned from the cache are shared: callers must not mutate them.
"""

from __future__ import annotations

import bz2
import json
import lzma
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import fastavro

from broker.errors import DecodeError

MAGIC = b"Obj\x01"
SYNC_SIZE = 16

#: Distinct writer schemas kept parsed (ZTF has had a handful of versions; IGWN one).
SCHEMA_CACHE_SIZE = 64


@dataclass(frozen=True, slots=True)
class AvroHeader:
    """The parsed header of an Avro object container.

    Attributes
    ----------
    schema : dict
        The writer schema as parsed JSON (shared through the cache: do not mutate).
    schema_name : str
        Full name of the top-level named schema, e.g. ``"ztf.alert"``; ``""`` when the
        top-level schema is not a named type.
    schema_json : bytes
        The ``avro.schema`` metadata value exactly as written.
    codec : str
        The ``avro.codec`` metadata value (``"null"`` when absent, as the spec says).
    sync : bytes
        The 16-byte sync marker that ends every data block.
    data_offset : int
        Byte offset of the first data block in the container.
    metadata : dict of str to bytes
        Every metadata entry, including the two above.
    parsed_schema : dict
        The writer schema compiled by :func:`fastavro.parse_schema` (cached alongside
        ``schema``), ready for :func:`fastavro.schemaless_reader`.
    """

    schema: dict[str, Any]
    schema_name: str
    schema_json: bytes
    codec: str
    sync: bytes
    data_offset: int
    metadata: dict[str, bytes] = field(repr=False)
    parsed_schema: dict[str, Any] = field(repr=False)


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """Decode one zig-zag varint ``long`` at ``pos``; return (value, next position)."""
    shift = 0
    acc = 0
    while True:
        try:
            b = data[pos]
        except IndexError:
            raise DecodeError(f"truncated Avro container: varint runs past the end at byte {pos}") from None
        pos += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            return (acc >> 1) ^ -(acc & 1), pos
        shift += 7
        if shift > 63:
            raise DecodeError(f"corrupt Avro container: varint longer than 10 bytes at byte {pos}")


def _read_bytes(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    size, pos = _read_long(data, pos)
    end = pos + size
    if size < 0:
        raise DecodeError(f"corrupt Avro container: {what} has negative length {size} at byte {pos}")
    if end > len(data):
        raise DecodeError(f"truncated Avro container: {what} of {size} bytes at byte {pos} runs past the end ({len(data)} bytes)")
    return data[pos:end], end


def _full_name(schema: Any) -> str:
    if not isinstance(schema, dict) or "name" not in schema:
        return ""
    name = schema["name"]
    if "." in name or not schema.get("namespace"):
        return name
    return f"{schema['namespace']}.{name}"


@lru_cache(maxsize=SCHEMA_CACHE_SIZE)
def parse_schema_json(schema_json: bytes) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Parse and compile an Avro writer schema, memoized by its exact JSON bytes.

    Parameters
    ----------
    schema_json : bytes
        The ``avro.schema`` metadata value of a container.

    Returns
    -------
    schema : dict
        The JSON schema as written (shared: do not mutate).
    parsed : dict
        The same schema compiled by :func:`fastavro.parse_schema` (shared).
    name : str
        Full name of the top-level named type (``""`` if it is not a named type).

    Raises
    ------
    DecodeError
        If the bytes are not JSON or not a valid Avro schema.
    """
    try:
        schema = json.loads(schema_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"corrupt Avro header: avro.schema is not JSON ({exc})") from None
    try:
        parsed = fastavro.parse_schema(schema)
    except Exception as exc:  # fastavro raises SchemaParseException, KeyError, TypeError...
        raise DecodeError(f"corrupt Avro header: avro.schema is not a valid Avro schema ({type(exc).__name__}: {exc})") from None
    return schema, parsed, _full_name(schema)


def read_header(data: bytes) -> AvroHeader:
    """Parse the header of an Avro object container (Avro 1.11 spec, "Object Container Files").

    Parameters
    ----------
    data : bytes
        The whole container (one Kafka message value, or one file).

    Returns
    -------
    AvroHeader
        Writer schema (parsed and compiled, cached by its JSON bytes), codec, sync
        marker and the offset of the first data block.

    Raises
    ------
    DecodeError
        If the magic is wrong, the metadata map or sync marker is truncated, the
        schema is missing or invalid.
    """
    if data[:4] != MAGIC:
        raise DecodeError(f"not an Avro container: starts with {data[:4]!r}, expected {MAGIC!r}")
    pos = 4
    metadata: dict[str, bytes] = {}
    while True:
        count, pos = _read_long(data, pos)
        if count == 0:
            break
        if count < 0:  # a negative count is followed by the block's size in bytes
            count = -count
            _, pos = _read_long(data, pos)
        for _ in range(count):
            key, pos = _read_bytes(data, pos, "metadata key")
            value, pos = _read_bytes(data, pos, "metadata value")
            try:
                metadata[key.decode("utf-8")] = value
            except UnicodeDecodeError:
                raise DecodeError(f"corrupt Avro header: metadata key {key[:32]!r} is not UTF-8") from None
    sync = data[pos : pos + SYNC_SIZE]
    if len(sync) != SYNC_SIZE:
        raise DecodeError(f"truncated Avro container: header ends before the 16-byte sync marker at byte {pos}")
    schema_json = metadata.get("avro.schema")
    if schema_json is None:
        raise DecodeError("corrupt Avro header: no 'avro.schema' metadata entry")
    schema, parsed, name = parse_schema_json(schema_json)
    codec = metadata.get("avro.codec", b"null").decode("ascii", "replace") or "null"
    return AvroHeader(
        schema=schema,
        schema_name=name,
        schema_json=schema_json,
        codec=codec,
        sync=sync,
        data_offset=pos + SYNC_SIZE,
        metadata=metadata,
        parsed_schema=parsed,
    )


def _decompress(codec: str, block: bytes) -> bytes:
    """Decompress one data block per the Avro spec's codec definitions."""
    if codec == "null":
        return block
    try:
        if codec == "deflate":
            return zlib.decompress(block, -15)  # raw RFC 1951, no zlib header
        if codec == "bzip2":
            return bz2.decompress(block)
        if codec == "xz":
            return lzma.decompress(block)
        if codec == "snappy":  # snappy-compressed data followed by a 4-byte CRC32
            try:
                from cramjam import snappy as _snappy

                out = bytes(_snappy.decompress_raw(block[:-4]))
            except ImportError:
                try:
                    import snappy as _snappy  # type: ignore[no-redef]
                except ImportError:
                    raise DecodeError("Avro codec 'snappy' needs the 'cramjam' or 'python-snappy' package") from None
                out = _snappy.decompress(block[:-4])
            if zlib.crc32(out) != int.from_bytes(block[-4:], "big"):
                raise DecodeError("corrupt Avro block: snappy CRC32 mismatch")
            return out
        if codec == "zstandard":
            try:
                import zstandard
            except ImportError:
                raise DecodeError("Avro codec 'zstandard' needs the 'zstandard' package") from None
            return zstandard.ZstdDecompressor().decompressobj().decompress(block)
    except DecodeError:
        raise
    except Exception as exc:  # zlib.error, OSError, LZMAError, ...
        raise DecodeError(f"corrupt Avro block: {codec} decompression failed ({type(exc).__name__}: {exc})") from None
    raise DecodeError(f"unsupported Avro codec {codec!r} (known: null, deflate, bzip2, xz, snappy, zstandard)")


def iter_blocks(data: bytes, header: AvroHeader) -> Iterator[tuple[int, bytes]]:
    """Yield the data blocks of a container, decompressed, checking each sync marker.

    Parameters
    ----------
    data : bytes
        The whole container.
    header : AvroHeader
        Its parsed header (:func:`read_header`).

    Yields
    ------
    count : int
        Number of records serialized in the block.
    block : bytes
        The block's records, decompressed, ready for :func:`fastavro.schemaless_reader`.

    Raises
    ------
    DecodeError
        If a block is truncated, its count or size is negative, its sync marker
        differs from the header's, or it fails to decompress.
    """
    pos = header.data_offset
    end = len(data)
    index = 0
    while pos < end:
        count, pos = _read_long(data, pos)
        size, pos = _read_long(data, pos)
        if count < 0 or size < 0:
            raise DecodeError(f"corrupt Avro block {index}: negative record count {count} or size {size} at byte {pos}")
        stop = pos + size
        if stop + SYNC_SIZE > end:
            raise DecodeError(
                f"truncated Avro container: block {index} needs {size + SYNC_SIZE} bytes at byte {pos}, only {end - pos} left"
            )
        if data[stop : stop + SYNC_SIZE] != header.sync:
            raise DecodeError(f"corrupt Avro block {index}: sync marker after the block at byte {stop} does not match the header's")
        yield count, _decompress(header.codec, data[pos:stop])
        pos = stop + SYNC_SIZE
        index += 1
