"""An Event's localization, taken out of its raw alert once: a sky map or a point.

:func:`extract_localization` is the one place that finds the sky map inside an
archived alert (it replaces three copies: the follow-up's ``eventdata``, the
``coinc`` command's and the ``crossmatch`` command's):

* IGWN ``igwn.gwalert`` JSON: ``event.skymap``, base64 multi-order FITS;
* IGWN Avro containers: the record of this superevent and alert type,
  ``event.skymap`` (bytes);
* GCN unified-schema JSON notices: ``healpix_file`` (base64 FITS, multi-order or
  flat);
* otherwise the Event's point localization (position, error radius, containment) as
  a :class:`PointRegion`; VOEvents carry no map (only its URL), so a VOEvent with a
  point gives that point and an LVK VOEvent gives nothing.

Flat (single-order RING/NESTED) maps are merged into multi-order form the way
``ligo.skymap.io.read_sky_map(..., moc=True)`` does
(:func:`broker.enrich.crossmatch.merge_equal_siblings`), unless asked not to
(``merge_flat=False``: RAVEN's flat-map branches want them flat).

A bad map is refused with one line naming the event and the field
(:class:`broker.errors.DecodeError`): not base64, not FITS, an unknown ordering, NaN,
negative or infinite densities (all :func:`broker.skymap.read_skymap`'s checks), a map
whose total probability is zero, pixels that overlap, and a flat map whose
``ORDERING`` keyword is the wrong one of RING/NESTED (:func:`check_ordering`).

A map given only by URL (LVK VOEvents' ``skymap_fits``, GCN ``healpix_url``) is
downloaded by :func:`fetch_localization` when the enrich stage is told to
(``[enrich] fetch_skymap_urls``); an unreachable URL is :class:`SkymapUnreachable`.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from broker.enrich.coinc import PointSource
from broker.errors import BrokerError, DecodeError
from broker.event import Event, HealpixLocalization, PointLocalization
from broker.skymap import MultiOrderSkyMap

__all__ = ["PointRegion", "Sky", "extract_localization", "embedded_skymap_bytes", "check_ordering",
           "check_skymap", "point_region"]


@dataclass(frozen=True)
class PointRegion(PointSource):
    """A point localization with its error circle (a :class:`~broker.enrich.coinc.PointSource`).

    Attributes
    ----------
    ra_deg, dec_deg : float
        ICRS position, deg.
    error_radius_deg : float or None
        Error-circle radius, deg (None: upstream gives no error).
    containment : float or None
        Probability inside the circle, 0..1 (None: not stated; taken as 0.9 where a
        containment is needed, as the follow-up rules do).
    """

    error_radius_deg: float | None = None
    containment: float | None = None


Sky = Union[MultiOrderSkyMap, PointRegion]
"""What :func:`extract_localization` returns: a multi-order sky map or a point region."""


def point_region(event: Event) -> PointRegion | None:
    """The Event's point localization as a :class:`PointRegion`, or None."""
    loc = event.localization
    if not isinstance(loc, PointLocalization):
        return None
    return PointRegion(ra_deg=loc.ra, dec_deg=loc.dec, error_radius_deg=loc.error_radius,
                       containment=loc.containment)


def _b64(blob: Any, what: str) -> bytes | None:
    """Bytes of a map field: None when absent or empty; DecodeError when not base64."""
    if isinstance(blob, (bytes, bytearray)):
        return bytes(blob) or None
    if blob is None or blob == "":
        return None
    if not isinstance(blob, str):
        raise DecodeError(f"{what} is a JSON {type(blob).__name__}, not a base64 string")
    from broker.limits import current_limits, over_limit

    if len(blob) // 4 * 3 > current_limits().max_skymap_bytes:
        raise over_limit("max_skymap_bytes", len(blob) // 4 * 3, f"{what} decoded size in bytes")
    try:
        return base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(f"{what} is not valid base64 ({exc})") from None


def embedded_skymap_bytes(event: Event, raw: bytes) -> tuple[bytes | None, str]:
    """The FITS bytes of the sky map the raw alert embeds, and the field they came from.

    Parameters
    ----------
    event : broker.event.Event
        The Event decoded from ``raw`` (its format, source, superevent id and alert
        type choose the record of an Avro container).
    raw : bytes
        The upstream message, as archived.

    Returns
    -------
    (bytes or None, str)
        ``(None, "")`` when the alert embeds no map (VOEvents, retractions, notices
        without ``healpix_file``).

    Raises
    ------
    DecodeError
        The map field is present but not base64, or the container is unreadable.
    """
    if event.is_retraction or not raw:  # a retraction embeds no map; no bytes, nothing to look in
        return None, ""
    if event.format == "avro":
        if event.source != "igwn":
            return None, ""
        import fastavro

        try:
            records = list(fastavro.reader(io.BytesIO(raw)))
        except Exception as exc:  # noqa: BLE001 - fastavro raises anything on a bad container
            raise DecodeError(f"unreadable Avro container ({type(exc).__name__}: {exc})") from None
        for rec in records:
            if (rec or {}).get("superevent_id") == event.upstream_id and \
                    str(rec.get("alert_type", "")).lower() == event.alert_type:
                return _b64((rec.get("event") or {}).get("skymap"), "event.skymap"), "event.skymap"
        return None, ""
    if event.format != "json":
        return None, ""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, ""
    if not isinstance(obj, dict):
        return None, ""
    if event.source == "igwn":
        inner = obj.get("event")
        return (_b64(inner.get("skymap"), "event.skymap"), "event.skymap") if isinstance(inner, dict) else (None, "")
    return _b64(obj.get("healpix_file"), "healpix_file"), "healpix_file"


# ------------------------------------------------------------------ map checks
_FLAT = ("RING", "NESTED", "NEST")


def _coherence(nested_ipix: np.ndarray, nside: int) -> float:
    """Fraction of the 8 neighbours of each pixel of a set that are in the set too."""
    from astropy_healpix.core import neighbours

    with np.errstate(invalid="ignore"):  # the 8 corner pixels have 7 neighbours (-1)
        nb = np.asarray(neighbours(nested_ipix.astype(np.int64), nside, order="nested"))
    members = np.sort(nested_ipix)
    pos = np.clip(np.searchsorted(members, nb), 0, members.size - 1)
    inside = (members[pos] == nb) & (nb >= 0)
    return float(inside.mean())


def check_ordering(sky: MultiOrderSkyMap, *, max_pixels: int = 20_000) -> None:
    """Refuse a flat map whose ``ORDERING`` keyword is the wrong one of RING and NESTED.

    A probability sky map is spatially smooth: the pixels of its 90 % credible region
    are neighbours of each other. Read in the wrong ordering, the same values land on
    scattered pixels. The check takes the densest pixels (the 90 % region, at most
    ``max_pixels`` of them) and compares the fraction of their 8 HEALPix neighbours
    that are in the set (the *coherence*) as the file declares it with the coherence
    under the other ordering. A map is refused when the other ordering's is at least
    0.5 and exceeds the declared one by 0.25 or more. Measured: the bundled Fermi GBM
    map (NSIDE 8, 26 pixels in its 90 % region) 0.73 as labelled, 0.33 relabelled;
    the LVK and Swift maps of tests/data rasterized to NSIDE 64 and 256: 0.83-0.95 as
    labelled, 0.11-0.64 relabelled (a RING map read as NESTED keeps some coherence:
    runs along a ring become groups of nested siblings), so the margin is >= 0.31
    (tests/unit/test_localization_store.py).

    Multi-order (NUNIQ) maps, partial maps, maps below NSIDE 8 and maps whose 90 %
    region holds fewer than 8 pixels pass unchecked (nothing to decide on).

    Parameters
    ----------
    sky : broker.skymap.MultiOrderSkyMap
        As :func:`broker.skymap.read_skymap` returns it (flat maps: all pixels at one
        order, NESTED ascending, ``meta['ORDERING']`` as in the file).

    Raises
    ------
    DecodeError
        Naming the declared and the apparent ordering.
    """
    from astropy_healpix.core import nested_to_ring, ring_to_nested, uniq_to_level_ipix

    ordering = str(sky.meta.get("ORDERING", "")).strip().upper()
    if ordering not in _FLAT or not sky.uniq.size:
        return
    level, ipix = uniq_to_level_ipix(sky.uniq)
    order = int(level[0])
    nside = 1 << order
    if nside < 8 or sky.uniq.size != 12 * nside * nside or np.any(level != order):
        return
    dens = sky.probdensity  # flat: equal pixel areas, density order = probability order
    total = float(dens.sum())
    if not (math.isfinite(total) and total > 0):
        return
    if dens.size > max_pixels:  # only the densest max_pixels can matter: no full sort of 12M pixels
        head = np.argpartition(-dens, max_pixels - 1)[:max_pixels]
        rank = head[np.argsort(-dens[head], kind="stable")]
    else:
        rank = np.argsort(-dens, kind="stable")
    cum = np.cumsum(dens[rank])
    n = int(min(np.searchsorted(cum, 0.9 * total) + 1, rank.size))
    if n < 8:
        return
    top = np.asarray(ipix[rank[:n]], dtype=np.int64)  # nested, as declared
    if ordering == "RING":
        other = np.asarray(nested_to_ring(top, nside), dtype=np.int64)  # the file index read as NESTED
    else:
        other = np.asarray(ring_to_nested(top, nside), dtype=np.int64)  # the file index read as RING
    declared, alternative = _coherence(top, nside), _coherence(other, nside)
    if alternative >= 0.5 and alternative - declared >= 0.25:
        apparent = "NESTED" if ordering == "RING" else "RING"
        raise DecodeError(f"sky map: ORDERING={ordering!r} looks wrong: its densest pixels are scattered as "
                          f"{ordering} (neighbour fraction {declared:.2f}) and contiguous as {apparent} "
                          f"({alternative:.2f})")


def check_skymap(sky: MultiOrderSkyMap) -> None:
    """Checks beyond :func:`broker.skymap.read_skymap`'s: a usable probability map.

    Raises
    ------
    DecodeError
        Total probability zero or not finite; pixels covering more than the sky (they
        overlap); a flat map with the wrong ``ORDERING`` (:func:`check_ordering`).
    """
    from broker.skymap import FULL_SKY_DEG2, SQDEG_PER_SR, pixel_area_sr

    area = pixel_area_sr(sky.uniq)
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.sum(sky.probdensity * area))
    if not (math.isfinite(total) and total > 0):
        raise DecodeError(f"sky map: total probability is {total:g}; no localization")
    if float(area.sum()) * SQDEG_PER_SR > FULL_SKY_DEG2 * (1 + 1e-9):
        raise DecodeError("sky map: its pixels cover more than the whole sky (NUNIQ pixels overlap)")
    check_ordering(sky)


def read_checked(fits_bytes: bytes, *, merge_flat: bool = True) -> MultiOrderSkyMap:
    """:func:`broker.skymap.read_skymap`, then :func:`check_skymap`, then the flat merge.

    Raises
    ------
    DecodeError
        See both.
    """
    from broker.enrich.crossmatch import merge_equal_siblings
    from broker.skymap import read_skymap

    sky = read_skymap(fits_bytes)
    check_skymap(sky)
    if merge_flat and str(sky.meta.get("ORDERING", "")).strip().upper() in _FLAT:
        sky = merge_equal_siblings(sky)
    return sky


def extract_localization(event: Event, raw: bytes, *, merge_flat: bool = True) -> Sky | None:
    """The event's localization from its raw alert bytes, decoded once.

    Parameters
    ----------
    event : broker.event.Event
        The Event decoded from ``raw``.
    raw : bytes
        The upstream message as archived (``Archive.raw(event.id)``).
    merge_flat : bool
        Merge flat maps into multi-order form as ``read_sky_map(moc=True)`` does
        (default); False keeps them flat (RAVEN's flat-map overlap branches).

    Returns
    -------
    broker.skymap.MultiOrderSkyMap, PointRegion or None
        The embedded sky map when the alert has one (IGWN ``event.skymap``, GCN
        ``healpix_file``); else the Event's point localization with its error circle;
        None when the alert has neither (retractions, VOEvents giving only a URL,
        notices without a position).

    Raises
    ------
    DecodeError
        One line ``<event id>: <field>: <what>`` for a map that is present but bad
        (not base64, not FITS, wrong or unknown ordering, negative, NaN or infinite
        probabilities, zero total probability, overlapping pixels, over a decode
        limit).
    """
    try:
        blob, where = embedded_skymap_bytes(event, raw)
    except DecodeError as exc:
        raise DecodeError(f"{event.id}: {exc}") from None
    if blob is not None:
        try:
            return read_checked(blob, merge_flat=merge_flat)
        except DecodeError as exc:
            raise DecodeError(f"{event.id}: {where}: {exc}") from None
    return point_region(event)


# ------------------------------------------------------------------ maps given by URL
class SkymapUnreachable(BrokerError):
    """A sky map URL that could not be fetched (network error, HTTP status, a scheme not
    allowed, over the size limit). The message is one line starting with the URL."""


def skymap_url_of(event: Event) -> str | None:
    """The URL of the Event's sky map when upstream gives one: LVK VOEvents'
    ``skymap_fits`` and GCN notices' ``healpix_url`` (both decoded into
    ``properties["skymap_url"]``), or the HEALPix localization's ``skymap_url``."""
    url = (event.properties or {}).get("skymap_url")
    if not url and isinstance(event.localization, HealpixLocalization):
        url = event.localization.skymap_url
    return url if isinstance(url, str) and url else None


def fetch_skymap_bytes(url: str, *, timeout_s: float = 20.0, max_bytes: int = 256 * 1024 * 1024,
                       schemes: tuple[str, ...] | list[str] = ("https", "http"), transport: Any = None) -> bytes:
    """Download a sky map's FITS bytes (gzip or not) with httpx.

    Parameters
    ----------
    url : str
    timeout_s : float
        Connect and read timeout, s (each; the whole download may take longer while
        bytes keep arriving).
    max_bytes : int
        Largest body accepted, bytes as sent (before any gunzip of a ``.fits.gz``).
    schemes : sequence of str
        URL schemes allowed, also for the target of a redirect (at most 5 followed).
    transport : httpx.BaseTransport, optional
        For tests.

    Returns
    -------
    bytes

    Raises
    ------
    SkymapUnreachable
        One line ``<url>: <reason>``: a scheme not allowed, a connection or timeout
        error, an HTTP status other than 200, a body over ``max_bytes``.
    """
    import httpx

    from broker.text import one_line

    shown = one_line(url, 200)
    allowed = {s.lower() for s in schemes}

    def check_scheme(u: Any) -> None:
        scheme = str(getattr(u, "scheme", "") or "").lower()
        if scheme not in allowed:
            raise SkymapUnreachable(f"{shown}: scheme {scheme or '(none)'!r} not allowed "
                                    f"(allowed: {', '.join(sorted(allowed)) or 'none'})")

    try:
        check_scheme(httpx.URL(url))
    except httpx.InvalidURL as exc:
        raise SkymapUnreachable(f"{shown}: not a URL ({one_line(str(exc), 120)})") from None
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=True, max_redirects=5, transport=transport,
                          event_hooks={"request": [lambda req: check_scheme(req.url)]}) as client:
            with client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as resp:
                if resp.status_code != 200:
                    raise SkymapUnreachable(f"{shown}: HTTP {resp.status_code} {one_line(resp.reason_phrase, 60)}")
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise SkymapUnreachable(f"{shown}: {int(declared):,} bytes is over the limit {max_bytes:,}")
                chunks, n = [], 0
                for chunk in resp.iter_raw():
                    n += len(chunk)
                    if n > max_bytes:
                        raise SkymapUnreachable(f"{shown}: more than {max_bytes:,} bytes (the limit)")
                    chunks.append(chunk)
                return b"".join(chunks)
    except SkymapUnreachable:
        raise
    except httpx.HTTPError as exc:
        raise SkymapUnreachable(f"{shown}: {type(exc).__name__}: {one_line(str(exc) or 'no detail', 160)}") from None


def fetch_localization(event: Event, *, timeout_s: float = 20.0, max_bytes: int = 256 * 1024 * 1024,
                       schemes: tuple[str, ...] | list[str] = ("https", "http"), merge_flat: bool = True,
                       transport: Any = None) -> MultiOrderSkyMap | None:
    """The sky map an Event gives only by URL, downloaded and checked like an embedded one.

    Parameters
    ----------
    event : broker.event.Event
    timeout_s, max_bytes, schemes, transport
        As :func:`fetch_skymap_bytes`.
    merge_flat : bool
        As :func:`extract_localization` (flat maps — LVK O3 VOEvents' ``bayestar.fits.gz``,
        Fermi GBM's ``healpix_url`` — merged as ``read_sky_map(moc=True)`` does).

    Returns
    -------
    MultiOrderSkyMap or None
        None when the Event gives no URL.

    Raises
    ------
    SkymapUnreachable
        ``<event id>: <url>: <reason>`` (see :func:`fetch_skymap_bytes`).
    DecodeError
        ``<event id>: <url>: <what>`` for a map that arrives but is bad (the checks of
        :func:`read_checked`, the decode limits in force).
    """
    url = skymap_url_of(event)
    if url is None:
        return None
    try:
        data = fetch_skymap_bytes(url, timeout_s=timeout_s, max_bytes=max_bytes, schemes=schemes, transport=transport)
    except SkymapUnreachable as exc:
        raise SkymapUnreachable(f"{event.id}: {exc}") from None
    try:
        return read_checked(data, merge_flat=merge_flat)
    except DecodeError as exc:
        from broker.text import one_line

        raise DecodeError(f"{event.id}: {one_line(url, 200)}: {exc}") from None
