"""What an alert file gives a cross-match: its sky map, or its position and error.

``mma-broker crossmatch ALERT_OR_MAP`` takes any of:

* a FITS sky map, multi-order (NUNIQ) or flat (RING/NESTED), gzip or not
  (:func:`broker.skymap.read_skymap`);
* an IGWN ``igwn.gwalert`` alert, JSON (``event.skymap``, base64) or Avro
  (``event.skymap``, bytes; the first record of the container that has one);
* a GCN unified-schema JSON notice with ``healpix_file`` (base64 FITS);
  (maps found and checked by :func:`broker.enrich.localization.extract_localization`);
* any alert the broker decodes (:func:`broker.sources.decode`) whose Event has a point
  localization (position and error circle) and no embedded map.

Alert files go through the broker's own decoder first (schemas, limits), so a file
that would be refused on the stream is refused here with the same one-line reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.errors import DecodeError
from broker.event import PointLocalization
from broker.limits import DecodeLimits, decode_scope
from broker.skymap import GZIP_MAGIC, MultiOrderSkyMap

FILE_LIMITS = DecodeLimits(max_message_bytes=512 * 1024 * 1024, max_skymap_bytes=2048 * 1024 * 1024,
                           max_decode_cpu_s=120.0, max_json_items=10_000_000, max_array_items=10_000_000,
                           max_decompressed_bytes=1024 * 1024 * 1024)
"""Limits for a file the user names on the command line: room for a flat NSIDE-2048
map (800 MB of FITS with distance layers), still bounded against a gzip bomb."""


@dataclass(frozen=True)
class AlertInput:
    """The localization an alert file gives.

    Attributes
    ----------
    name : str
        What it is: the alert's superevent or Event id, or "sky map".
    skymap : broker.skymap.MultiOrderSkyMap or None
        The sky map, when the file is or embeds one.
    point : broker.event.PointLocalization or None
        The position and error circle, for alerts without a map.
    """

    name: str
    skymap: MultiOrderSkyMap | None = None
    point: PointLocalization | None = None


def read_alert_or_map(data: bytes, limits: DecodeLimits = FILE_LIMITS) -> AlertInput:
    """Read a sky map or an alert file into the localization a cross-match needs.

    Parameters
    ----------
    data : bytes
        The file's bytes.
    limits : broker.limits.DecodeLimits
        Decode limits (defaults: :data:`FILE_LIMITS`).

    Returns
    -------
    AlertInput
        With ``skymap`` for maps and alerts embedding one, else ``point``.

    Raises
    ------
    DecodeError
        A file that is neither a sky map nor a decodable alert, an alert without a sky
        map and without a position (a retraction, a VOEvent giving only the map's URL),
        or an unreadable embedded map (the reason says which field).
    """
    from broker.enrich.localization import extract_localization
    from broker.skymap import read_skymap

    with decode_scope(limits):
        if data.startswith(b"SIMPLE  =") or data[:2] == GZIP_MAGIC:
            return AlertInput(name="sky map", skymap=read_skymap(data))
        from broker.sources import decode

        events = decode(data, limits)
        name = events[0].upstream_id if events else "alert"
        for ev in events:  # a map first (any record of a container), then a point
            try:
                sky = extract_localization(ev, data)
            except DecodeError as exc:
                raise DecodeError(f"{name}: {str(exc).removeprefix(ev.id + ': ')}") from None
            if isinstance(sky, MultiOrderSkyMap):
                return AlertInput(name=ev.upstream_id, skymap=sky)
        for ev in events:
            if isinstance(ev.localization, PointLocalization):
                return AlertInput(name=ev.upstream_id, point=ev.localization)
        url = next((ev.properties.get("skymap_url") for ev in events if ev.properties.get("skymap_url")), None)
        if url:
            raise DecodeError(f"{name}: the alert gives only a sky-map URL; download the map and pass the FITS file")
        kind = events[0].alert_type if events else "alert"
        raise DecodeError(f"{name} ({kind}): no sky map and no position to cross-match")
