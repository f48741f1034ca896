"""Data an analysis needs beyond the normalized Event: the sky map in the raw alert.

The Event keeps only a summary of a HEALPix localization (areas, maximum); the full
multi-order map travels inside the upstream message, which the archive keeps byte for
byte (``Archive.raw(event_id)``). :func:`skymap_from_raw` finds it again:

* IGWN ``igwn.gwalert`` JSON: ``event.skymap`` (base64 multi-order FITS);
* IGWN Avro containers: the record of this superevent and alert type, ``event.skymap``
  (bytes);
* GCN unified-schema JSON notices: ``healpix_file`` (base64 FITS).

Both are :mod:`broker.enrich.localization`'s (one copy for the whole broker).

VOEvents carry only a URL; then there is no map and the caller falls back to the
Event's most probable position.
"""

from __future__ import annotations

import logging

import numpy as np

from broker.errors import DecodeError
from broker.event import Event

logger = logging.getLogger(__name__)


def skymap_bytes(event: Event, raw: bytes) -> bytes | None:
    """The FITS sky map embedded in the raw alert ``event`` was decoded from, or None.

    :func:`broker.enrich.localization.embedded_skymap_bytes`; a map field that is not
    base64 (or an unreadable container) counts as no map here.

    Parameters
    ----------
    event : broker.event.Event
    raw : bytes
        The upstream message, as archived.
    """
    from broker.enrich.localization import embedded_skymap_bytes

    try:
        return embedded_skymap_bytes(event, raw)[0]
    except DecodeError:
        return None


def skymap_from_raw(event: Event, raw: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """NUNIQ indices and probability densities (sr⁻¹) of the map in the raw alert.

    Returns
    -------
    (uniq, probdensity) or None
        Arrays of shape (n,); None when the alert embeds no readable map (logged).
    """
    if event.localization is None or event.localization.type != "healpix":
        return None
    from broker.enrich.localization import extract_localization
    from broker.skymap import MultiOrderSkyMap

    try:  # flat maps kept flat, as read_multiorder gave them
        sky = extract_localization(event, raw, merge_flat=False)
    except DecodeError as exc:
        logger.warning("%s: embedded sky map unreadable (%s); using the most probable position", event.id, exc)
        return None
    if not isinstance(sky, MultiOrderSkyMap):
        logger.info("%s: no sky map embedded in the raw alert; using the most probable position", event.id)
        return None
    return sky.uniq, sky.probdensity
