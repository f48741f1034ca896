"""INTEGRAL attitude at T0 and directions in the spacecraft frame.

The orbit/attitude product ``INTL-ORBI-SCP`` (one per science window, ISDC file
``sc_orbit_param.fits.gz``) samples, every 8 s, the revolution number and phase, the
geocentric distance and the J2000 RA/Dec of the spacecraft X axis (the pointing
direction of all instruments) and Z axis. astro-gdt-integral reads the same table
(:class:`gdt.missions.integral.orbit.IntegralOrbit`); we read it with astropy so that
bytes fetched from a service work too, and the tests check our frame against gdt's.

Time axis. The table's only time column is ``OB_TIME``, the on-board time: four
16-bit words, unit 2**-20 s. OBT→UTC needs ISDC's time-correlation tables; without
them we anchor the clock on the file header (``OBTSTART`` ↔ ``ERTFIRST``, the Earth
received time of the first packet), which is good to a few seconds (light time plus
ground latency; checked on the sample file: the OBT span and the ERT span of its
science window agree to 3 s). Attitude is steady within a pointing, so this matters
only during slews. A better clock can be passed as ``obt_to_utc``.

Spacecraft frame convention (the SPI-ACS response and IBIS field of view use it):
``Y = Z × X`` completes a right-handed triad; ``theta`` is the angle from +X (the
pointing axis), ``phi`` the azimuth around X measured from +Z towards +Y, in [0, 360).
"""

from __future__ import annotations

import gzip
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.time import Time

from followup.bundled import folder_label
from followup.availability import NoData, OrbitState, RetryPolicy, TimeLike, as_time, http_get_bytes, iso_utc

logger = logging.getLogger(__name__)

#: Unit of INTEGRAL on-board time, s.
OBT_TICK_S = 2.0**-20
ORBIT_EXTNAME = "INTL-ORBI-SCP"


def _unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    ra = np.radians(np.asarray(ra_deg, dtype=float))
    dec = np.radians(np.asarray(dec_deg, dtype=float))
    cd = np.cos(dec)
    return np.stack([cd * np.cos(ra), cd * np.sin(ra), np.sin(dec)], axis=-1)


def _radec(v: np.ndarray) -> tuple[float, float]:
    v = v / np.linalg.norm(v)
    return float(np.degrees(np.arctan2(v[1], v[0])) % 360.0), float(np.degrees(np.arcsin(np.clip(v[2], -1, 1))))


@dataclass(frozen=True)
class Pointing:
    """INTEGRAL attitude at one time.

    Attributes
    ----------
    ra_scx, dec_scx : float
        J2000 RA/Dec of the spacecraft X axis (instrument pointing), deg.
    ra_scz, dec_scz : float
        J2000 RA/Dec of the spacecraft Z axis, deg (orthogonal to X).
    time : str
        ISO UTC time of the attitude.
    """

    ra_scx: float
    dec_scx: float
    ra_scz: float
    dec_scz: float
    time: str

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return the unit vectors X, Y, Z (J2000 Cartesian, shape (3,)), Y = Z × X."""
        x = _unit_vectors(self.ra_scx, self.dec_scx)
        z = _unit_vectors(self.ra_scz, self.dec_scz)
        z = z - np.dot(z, x) * x  # remove the small non-orthogonality of rounded angles
        z /= np.linalg.norm(z)
        return x, np.cross(z, x), z


def to_spacecraft_frame(pointing: Pointing, ra, dec) -> tuple[np.ndarray, np.ndarray]:
    """Direction(s) on the sky in the INTEGRAL spacecraft frame.

    Parameters
    ----------
    pointing : Pointing
        Spacecraft attitude.
    ra, dec : float or array_like, shape (n,)
        J2000 RA/Dec of the directions, deg. Vectorized (a sky map of 10**6 pixels is
        one call).

    Returns
    -------
    theta_deg : numpy.ndarray
        Angle from the +X (pointing) axis, deg, in [0, 180].
    phi_deg : numpy.ndarray
        Azimuth around X from +Z towards +Y (Y = Z × X), deg, in [0, 360).
    """
    x, y, z = pointing.axes()
    d = _unit_vectors(ra, dec)
    cx, cy, cz = d @ x, d @ y, d @ z
    theta = np.degrees(np.arccos(np.clip(cx, -1.0, 1.0)))
    phi = np.degrees(np.arctan2(cy, cz)) % 360.0
    phi = np.where(phi >= 360.0, 0.0, phi)  # -0.0 % 360 rounds to 360.0
    return theta, phi


def spacecraft_components(pointing: Pointing, ra, dec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cartesian components (along X, Y, Z) of unit vectors towards ``ra, dec`` (deg)."""
    x, y, z = pointing.axes()
    d = _unit_vectors(ra, dec)
    return d @ x, d @ y, d @ z


# ----------------------------------------------------------------------------- orbit table


ObtToUtc = Callable[[np.ndarray], Time]


def header_clock(header: fits.Header) -> ObtToUtc:
    """OBT→UTC clock anchored on a science-window header (OBTSTART ↔ ERTFIRST).

    Raises
    ------
    ValueError
        If the header lacks OBTSTART or ERTFIRST.
    """
    try:
        obt0 = int(str(header["OBTSTART"]).strip())
        utc0 = Time(str(header["ERTFIRST"]).strip(), scale="utc")
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{ORBIT_EXTNAME} header: cannot anchor the OBT clock ({exc})") from exc

    def convert(obt_ticks: np.ndarray) -> Time:
        return utc0 + ((np.asarray(obt_ticks, dtype=np.int64) - obt0) * OBT_TICK_S) * u.s

    return convert


@dataclass(frozen=True)
class OrbitTable:
    """Samples of one ``INTL-ORBI-SCP`` table with their UTC times.

    Attributes
    ----------
    mjd_utc : numpy.ndarray, shape (n,)
        Sample times, MJD (UTC), increasing.
    revol : numpy.ndarray, shape (n,)
        Revolution number.
    revol_phase, distance_km : numpy.ndarray, shape (n,)
        Revolution phase (0 = perigee) and geocentric distance, km.
    x_vec, z_vec : numpy.ndarray, shape (n, 3)
        Unit vectors of the spacecraft X and Z axes (J2000).
    source : str
        Where the table came from (file name, never a directory path; ``<bytes>``), for messages.
    """

    mjd_utc: np.ndarray
    revol: np.ndarray
    revol_phase: np.ndarray
    distance_km: np.ndarray
    x_vec: np.ndarray
    z_vec: np.ndarray
    source: str

    @classmethod
    def read(cls, path_or_bytes: str | os.PathLike | bytes, obt_to_utc: ObtToUtc | None = None) -> OrbitTable:
        """Read an ``INTL-ORBI-SCP`` FITS file (path or bytes, gzip accepted).

        Raises
        ------
        ValueError
            If the file has no ``INTL-ORBI-SCP`` table or misses a needed column.
        """
        if isinstance(path_or_bytes, bytes):
            body = gzip.decompress(path_or_bytes) if path_or_bytes[:2] == b"\x1f\x8b" else path_or_bytes
            source, opened = "<bytes>", fits.open(io.BytesIO(body))
        else:
            # the file name only: the source appears in messages, which never carry a host path
            source, opened = Path(path_or_bytes).name, fits.open(path_or_bytes)
        with opened as hdul:
            if ORBIT_EXTNAME not in hdul:
                raise ValueError(f"{source}: no {ORBIT_EXTNAME} table (not an INTEGRAL orbit file)")
            hdu = hdul[ORBIT_EXTNAME]
            data, header = hdu.data, hdu.header
            try:
                words = np.asarray(data["OB_TIME"], dtype=np.int64)
                obt = (words[:, 0] << 48) + (words[:, 1] << 32) + (words[:, 2] << 16) + words[:, 3]
                cols = {n: np.asarray(data[n], dtype=float) for n in
                        ("REVOL_PHASE", "DISTANCE", "RA_SCX", "DEC_SCX", "RA_SCZ", "DEC_SCZ")}
                revol = np.asarray(data["REVOL"], dtype=int)
            except KeyError as exc:
                raise ValueError(f"{source}: {ORBIT_EXTNAME} lacks column {exc}") from exc
            clock = obt_to_utc or header_clock(header)
        order = np.argsort(obt)
        return cls(
            mjd_utc=clock(obt[order]).utc.mjd,
            revol=revol[order],
            revol_phase=cols["REVOL_PHASE"][order],
            distance_km=cols["DISTANCE"][order],
            x_vec=_unit_vectors(cols["RA_SCX"], cols["DEC_SCX"])[order],
            z_vec=_unit_vectors(cols["RA_SCZ"], cols["DEC_SCZ"])[order],
            source=source,
        )

    @property
    def start(self) -> Time:
        """UTC time of the first sample."""
        return Time(self.mjd_utc[0], format="mjd", scale="utc")

    @property
    def stop(self) -> Time:
        """UTC time of the last sample."""
        return Time(self.mjd_utc[-1], format="mjd", scale="utc")

    def covers(self, t0: TimeLike) -> bool:
        """True if ``t0`` lies between the first and last sample."""
        mjd = as_time(t0).mjd
        return bool(self.mjd_utc[0] <= mjd <= self.mjd_utc[-1])

    def _bracket(self, t0: TimeLike) -> tuple[int, float] | None:
        mjd = as_time(t0).mjd
        if not self.covers(t0):
            return None
        i = int(np.clip(np.searchsorted(self.mjd_utc, mjd) - 1, 0, len(self.mjd_utc) - 2)) if len(self.mjd_utc) > 1 else 0
        if len(self.mjd_utc) == 1:
            return 0, 0.0
        span = self.mjd_utc[i + 1] - self.mjd_utc[i]
        return i, float((mjd - self.mjd_utc[i]) / span) if span > 0 else 0.0

    def state_at(self, t0: TimeLike) -> OrbitState | None:
        """Revolution, phase and distance at ``t0`` (linear interpolation), or None outside."""
        b = self._bracket(t0)
        if b is None:
            return None
        i, f = b
        j = min(i + 1, len(self.mjd_utc) - 1)
        return OrbitState(
            time=iso_utc(as_time(t0)),
            revol=int(self.revol[i]),
            revol_phase=float(self.revol_phase[i] + f * (self.revol_phase[j] - self.revol_phase[i])),
            distance_km=float(self.distance_km[i] + f * (self.distance_km[j] - self.distance_km[i])),
            source=f"orbit file {self.source}",
        )

    def pointing_at(self, t0: TimeLike) -> Pointing | NoData:
        """Attitude at ``t0``: axis vectors interpolated linearly and renormalized."""
        t = as_time(t0)
        b = self._bracket(t)
        if b is None:
            return NoData(
                f"no attitude for {iso_utc(t)} in {self.source} "
                f"(covers {iso_utc(self.start)} to {iso_utc(self.stop)})",
                "data_gap",
            )
        i, f = b
        j = min(i + 1, len(self.mjd_utc) - 1)
        x = self.x_vec[i] + f * (self.x_vec[j] - self.x_vec[i])
        z = self.z_vec[i] + f * (self.z_vec[j] - self.z_vec[i])
        x /= np.linalg.norm(x)
        z = z - np.dot(z, x) * x
        ra_x, dec_x = _radec(x)
        ra_z, dec_z = _radec(z)
        return Pointing(ra_scx=ra_x, dec_scx=dec_x, ra_scz=ra_z, dec_scz=dec_z, time=iso_utc(t))


def pointing_at(t0: TimeLike, orbit_file: str | os.PathLike | bytes) -> Pointing | NoData:
    """INTEGRAL pointing at ``t0`` from one orbit file.

    Parameters
    ----------
    t0 : Time, datetime, str or float
        Time (UTC).
    orbit_file : path or bytes
        An ``INTL-ORBI-SCP`` FITS file.

    Returns
    -------
    Pointing or NoData
        The interpolated attitude, or ``NoData(kind="data_gap")`` when T0 is outside
        the file's time span.
    """
    return OrbitTable.read(orbit_file).pointing_at(t0)


# ----------------------------------------------------------------------------- sources


class AttitudeSource(Protocol):
    """Anything that can tell the INTEGRAL attitude (and orbit) at a time."""

    def orbit_at(self, t0: TimeLike) -> OrbitTable | NoData:
        """The orbit table covering ``t0``, or NoData saying why there is none."""
        ...

    def pointing_at(self, t0: TimeLike) -> Pointing | NoData:
        """The attitude at ``t0``, or NoData saying why there is none."""
        ...


class LocalOrbitFiles:
    """Attitude from a directory of ``INTL-ORBI-SCP`` files (``*.fits``, ``*.fits.gz``).

    Parameters
    ----------
    directory : path
        Searched recursively; files without an ``INTL-ORBI-SCP`` table are skipped.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self._tables: list[OrbitTable] | None = None

    def _load(self) -> list[OrbitTable]:
        if self._tables is None:
            tables = []
            for path in sorted(self.directory.rglob("*")):
                if not path.is_file() or not path.name.lower().endswith((".fits", ".fits.gz", ".fit", ".fit.gz")):
                    continue
                try:
                    tables.append(OrbitTable.read(path))
                except (OSError, ValueError) as exc:
                    logger.debug("skipping %s: %s", path, exc)
            self._tables = tables
        return self._tables

    def orbit_at(self, t0: TimeLike) -> OrbitTable | NoData:
        for table in self._load():
            if table.covers(t0):
                return table
        return NoData(f"no orbit file in {folder_label(self.directory)} covers {iso_utc(as_time(t0))}", "data_gap")

    def pointing_at(self, t0: TimeLike) -> Pointing | NoData:
        table = self.orbit_at(t0)
        return table if isinstance(table, NoData) else table.pointing_at(t0)


class HttpOrbitSource:
    """Attitude from an HTTP service returning an ``INTL-ORBI-SCP`` file for a time.

    The hook for MMODA/ISDC auxiliary data: ``url_template`` is configuration, with
    ``{utc}`` replaced by the ISO UTC time, e.g.
    ``"https://example.org/aux/orbit?utc={utc}"`` (no default: ISDC serves the files in
    its archive per science window, and the mapping time→science window is itself a
    service). Transient failures are retried (:class:`followup.availability.RetryPolicy`);
    when the service stays unreachable the result is ``NoData("service_unavailable")``.

    Parameters
    ----------
    url_template : str
        URL with a ``{utc}`` placeholder.
    retry : followup.availability.RetryPolicy, optional
        Attempts and backoff.
    timeout_s : float
        Per-request timeout, s.
    """

    def __init__(self, url_template: str, retry=None, timeout_s: float = 30.0) -> None:
        self.url_template = url_template
        self.retry = retry or RetryPolicy()
        self.timeout_s = timeout_s

    def orbit_at(self, t0: TimeLike) -> OrbitTable | NoData:
        t = as_time(t0)
        url = self.url_template.format(utc=t.utc.isot)
        body = http_get_bytes(url, None, self.retry, self.timeout_s, what="orbit service")
        if isinstance(body, NoData):
            return body
        try:
            table = OrbitTable.read(body)
        except (OSError, ValueError) as exc:
            return NoData(f"orbit service returned an unreadable file: {exc}", "service_unavailable")
        return table if table.covers(t) else NoData(
            f"orbit service file does not cover {iso_utc(t)}", "data_gap")

    def pointing_at(self, t0: TimeLike) -> Pointing | NoData:
        table = self.orbit_at(t0)
        return table if isinstance(table, NoData) else table.pointing_at(t0)
