"""Data an analysis needs beyond the normalized Event: the sky map in the raw alert.

The Event keeps only a summary of a HEALPix localization (areas, maximum); the full
multi-order map travels inside the upstream message, which the archive keeps byte for
byte (``Archive.raw(event_id)``). :func:`skymap_from_raw` finds it again:

* IGWN ``igwn.gwalert`` JSON: ``event.skymap`` (base64 multi-order FITS);
* IGWN Avro containers: the record of this superevent and alert type, ``event.skymap``
  (bytes);
* GCN unified-schema JSON notices: ``healpix_file`` (base64 FITS).

VOEvents carry only a URL; then there is no map and the caller falls back to the
Event's most probable position.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
from typing import Any

import numpy as np

from broker.errors import DecodeError
from broker.event import Event

logger = logging.getLogger(__name__)


def _decode_blob(blob: Any) -> bytes | None:
    if isinstance(blob, (bytes, bytearray)) and blob:
        return bytes(blob)
    if isinstance(blob, str) and blob:
        try:
            return base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            return None
    return None


def _avro_skymap(raw: bytes, event: Event) -> bytes | None:
    import fastavro

    try:
        records = list(fastavro.reader(io.BytesIO(raw)))
    except Exception:  # noqa: BLE001 - not an Avro container we can read
        return None
    for rec in records:
        if rec.get("superevent_id") == event.upstream_id and str(rec.get("alert_type", "")).lower() == event.alert_type:
            return _decode_blob((rec.get("event") or {}).get("skymap"))
    return None


def skymap_bytes(event: Event, raw: bytes) -> bytes | None:
    """The FITS sky map embedded in the raw alert ``event`` was decoded from, or None.

    Parameters
    ----------
    event : broker.event.Event
    raw : bytes
        The upstream message, as archived.
    """
    if event.format == "avro":
        return _avro_skymap(raw, event)
    if event.format != "json":
        return None
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    if event.source == "igwn":
        return _decode_blob((obj.get("event") or {}).get("skymap"))
    return _decode_blob(obj.get("healpix_file"))


def skymap_from_raw(event: Event, raw: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """NUNIQ indices and probability densities (sr⁻¹) of the map in the raw alert.

    Returns
    -------
    (uniq, probdensity) or None
        Arrays of shape (n,); None when the alert embeds no readable map (logged).
    """
    if event.localization is None or event.localization.type != "healpix":
        return None
    blob = skymap_bytes(event, raw)
    if blob is None:
        logger.info("%s: no sky map embedded in the raw alert; using the most probable position", event.id)
        return None
    from broker.skymap import read_multiorder

    try:
        uniq, probdensity, _ = read_multiorder(blob)
    except DecodeError as exc:
        logger.warning("%s: embedded sky map unreadable (%s); using the most probable position", event.id, exc)
        return None
    return uniq, probdensity
