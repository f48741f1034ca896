"""Catalogs for cross-matching: read from files, stored in PostgreSQL with a HEALPix index.

:func:`read_catalog` reads FITS, CSV (and other astropy ASCII tables), Parquet,
VOTable or HDF5 through ``astropy.table.Table.read`` and finds the position, distance,
name and error columns (given, or by their usual names: ``ra``/``RAJ2000``/``RA_OBJ``...,
``distmpc``/``bestdist``/``d_L``..., ``name``/``objname``/``BAT_NAME``..., the 4FGL
95 % ellipse ``Conf_95_SemiMajor/SemiMinor/PosAng``). A text file whose suffix names
no format (``.txt``, ``.dat``, ``.tbl`` ...) is read by astropy's ASCII format guessing
(``astropy.io.ascii.read``): e.g. a pipe-separated table with a header line and a
units line commented out with ``#`` (the Swift-BAT 105-month catalog), or an IPAC
table. Source errors are a radius column, a fixed radius for every row, per-axis
errors along RA and Dec (an ellipse aligned with the axes, e.g. the VLASS
``E_RA``/``E_DEC``), or the 4FGL ellipses. Units come from the columns when they have
them (deg, Mpc), else the defaults (deg, Mpc, ``err_unit``). Rows whose position is
not finite or out of range are refused, and counted per reason.

:func:`store_catalog` writes a catalog into the tables of migration 0004:
``catalogs`` (one row per catalog: name, file name and sha256, columns used, counts)
and ``catalog_sources`` (one row per accepted source: its 0-based row in the file,
position, ``hpx`` — a ``healpix_alchemy.Point``, the nested HEALPix index at order 29
of the position —, distance, error and the other columns as JSON), indexed on
``(catalog_id, hpx)`` so that a cone or a sky-map region (healpix-alchemy ``Tile``
ranges) is a range join in the database (:func:`cone_search`).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from healpix_alchemy import Point
from sqlalchemy.dialects.postgresql import JSONB

from broker.errors import BrokerError
from broker.enrich.points import SourceErrors

RA_NAMES = ("ra", "raj2000", "_raj2000", "ra_obj", "objra", "ra_deg", "radeg", "ra_icrs")
DEC_NAMES = ("dec", "dej2000", "_dej2000", "dec_obj", "objdec", "dec_deg", "dedeg", "de_icrs", "decj2000")
DIST_NAMES = ("distmpc", "dist_mpc", "bestdist", "d_l", "dist", "distance")
NAME_NAMES = ("name", "objname", "component_name", "source_name", "bat_name", "main_id", "glade no",
              "gwgc name", "objectid", "source_id", "id")
"""Name-column candidates, in order, compared case-insensitively: the first present is
the catalog's ``name`` column (the label of its sources in cross-match output)."""
ELLIPSE_4FGL = ("Conf_95_SemiMajor", "Conf_95_SemiMinor", "Conf_95_PosAng")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"
_FORMATS = {".fits": "fits", ".fit": "fits", ".fts": "fits", ".csv": "ascii.csv", ".tsv": "ascii.tab",
            ".parquet": "parquet", ".vot": "votable", ".votable": "votable", ".xml": "votable",
            ".hdf5": "hdf5", ".h5": "hdf5", ".ecsv": "ascii.ecsv", ".txt": "ascii", ".dat": "ascii",
            ".tbl": "ascii", ".ipac": "ascii.ipac", ".asc": "ascii", ".ascii": "ascii"}
"""File suffix → astropy format; ``ascii`` is astropy's format guessing over its ASCII
readers (basic with ``|``, ``,``, tab or space delimiters, IPAC, fixed width ...)."""
ONE_SIGMA_2D = 1.0 - math.exp(-0.5)
"""Probability inside the 1σ ellipse of a 2D Gaussian (0.3935): the containment of
per-axis 1σ errors such as VLASS ``E_RA``/``E_DEC``."""


class CatalogError(BrokerError):
    """A catalog file or catalog name cannot be used (one line, naming the file)."""


@dataclass
class Catalog:
    """A catalog read from a file: positions and what the cross-match needs.

    Attributes
    ----------
    name : str
    ra_deg, dec_deg : numpy.ndarray, shape (m,)
        ICRS positions, deg; NaN in refused rows.
    dist_mpc : numpy.ndarray, shape (m,) or None
        Luminosity distance, Mpc (NaN: unknown).
    errors : broker.enrich.points.SourceErrors or None
    accepted : numpy.ndarray, shape (m,), bool
        Rows with a usable position.
    refused : dict of str to int
        Refused rows per reason.
    columns : dict of str to str
        The columns used (``ra``, ``dec``, ``dist``, ``err`` ...).
    table : astropy.table.Table
        The whole table as read.
    """

    name: str
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    dist_mpc: np.ndarray | None
    errors: SourceErrors | None
    accepted: np.ndarray
    refused: dict[str, int]
    columns: dict[str, str]
    table: Any = field(repr=False)

    def __len__(self) -> int:
        return int(self.ra_deg.size)


def _read_table(path: Path):
    from astropy.table import Table

    try:
        head = path.open("rb").read(9)
    except OSError as exc:
        raise CatalogError(f"catalog {path.name}: cannot read ({exc.strerror or exc})") from None
    suffixes = [s.lower() for s in path.suffixes]
    if head.startswith(b"SIMPLE  =") or head[:2] == b"\x1f\x8b" and ".csv" not in suffixes:
        fmt = "fits"
    else:
        fmt = next((_FORMATS[s] for s in reversed(suffixes) if s in _FORMATS), None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "fits":
                from astropy.io import fits

                with fits.open(path, memmap=False) as hdul:  # the first table HDU
                    hdu = next((h for h in hdul[1:] if isinstance(h, (fits.BinTableHDU, fits.TableHDU))), None)
                    if hdu is None:
                        raise CatalogError(f"catalog {path.name}: FITS file without a table HDU")
                    return Table.read(hdu)
            if fmt:
                return Table.read(path, format=fmt)
            from astropy.io.registry import IORegistryError

            try:
                return Table.read(path)
            except IORegistryError:  # no format from the name or content: guess an ASCII table
                return Table.read(path, format="ascii")
    except CatalogError:
        raise
    except Exception as exc:  # noqa: BLE001 - astropy raises anything on a bad file
        text = " ".join(str(exc).split())[:200]
        raise CatalogError(f"catalog {path.name}: unreadable ({type(exc).__name__}: {text})") from None


def _find(table, given: str | None, names: tuple[str, ...], what: str, path: Path, required: bool) -> str | None:
    if given:
        if given in table.colnames:
            return given
        lower = {c.lower(): c for c in table.colnames}
        if given.lower() in lower:
            return lower[given.lower()]
        raise CatalogError(f"catalog {path.name}: no column {given!r} (columns: {', '.join(table.colnames[:30])})")
    lower = {c.lower(): c for c in table.colnames}
    for n in names:
        if n in lower:
            return lower[n]
    if required:
        raise CatalogError(f"catalog {path.name}: no {what} column found; name it with --{what}-col "
                           f"(columns: {', '.join(table.colnames[:30])})")
    return None


def _values(table, col: str, unit: str, path: Path) -> np.ndarray:
    """A column as float64 in ``unit`` (its own unit converted when it has one); masked → NaN."""
    import astropy.units as u

    c = table[col]
    if c.dtype.kind not in "biuf":
        try:
            data = np.array([float(str(v).strip() or "nan") for v in np.asarray(c)], dtype=np.float64)
        except ValueError:
            raise CatalogError(f"catalog {path.name}: column {col!r} is not numeric") from None
    else:
        data = np.ma.filled(np.ma.asarray(c).astype(np.float64), np.nan)
        if data.ndim != 1:
            raise CatalogError(f"catalog {path.name}: column {col!r} holds arrays, not numbers")
    cu = getattr(c, "unit", None)
    if cu is not None and str(cu) not in ("", "dimensionless"):
        try:
            data = (data * u.Unit(cu)).to_value(u.Unit(unit))
        except (u.UnitConversionError, ValueError, TypeError):
            raise CatalogError(f"catalog {path.name}: column {col!r} is in {cu}, not convertible to {unit}") from None
    return np.asarray(data, dtype=np.float64)


def read_catalog(path: str | Path, name: str | None = None, *, ra_col: str | None = None,
                 dec_col: str | None = None, dist_col: str | None = None, err_col: str | None = None,
                 err_unit: str = "deg", err_containment: float | None = None, name_col: str | None = None,
                 err_radius: float | None = None, err_ra_col: str | None = None,
                 err_dec_col: str | None = None) -> Catalog:
    """Read a catalog file and check its rows.

    Parameters
    ----------
    path : str or pathlib.Path
        FITS (first table HDU), CSV/ECSV/TSV, Parquet, VOTable, HDF5, or any text table
        astropy's ASCII guessing reads (``.txt``, ``.dat``, ``.tbl`` or an unknown suffix).
    name : str, optional
        Catalog name (default: the file name without suffixes).
    ra_col, dec_col : str, optional
        Position columns (deg unless the column has a unit); found by name otherwise.
    dist_col : str, optional
        Luminosity distance column (Mpc unless it has a unit); found by name otherwise
        (``distmpc``, ``bestdist``, ``d_L`` ...), none if absent.
    err_col : str, optional
        Error-circle radius column. Without it (and without ``err_radius`` or
        ``err_ra_col``/``err_dec_col``), a file with the 4FGL columns
        ``Conf_95_SemiMajor/SemiMinor/PosAng`` gets those ellipses (containment 0.95).
    err_unit : str
        Unit of ``err_col``, ``err_ra_col``, ``err_dec_col`` when the column has none, and
        of ``err_radius`` (``deg``, ``arcmin``, ``arcsec``).
    err_containment : float, optional
        Containment of the error region (default 0.68 for circles and ``err_radius``,
        0.3935 — the 2D Gaussian 1σ ellipse, :data:`ONE_SIGMA_2D` — for per-axis errors,
        0.95 for the 4FGL ellipses).
    name_col : str, optional
        Source-name column; found by name otherwise (:data:`NAME_NAMES`), none if absent.
    err_radius : float, optional
        One error radius for every row, in ``err_unit``: for catalogs that give none per
        row (the Swift-BAT 105-month catalog). Not with ``err_col``.
    err_ra_col, err_dec_col : str, optional
        Per-axis position errors (both or neither), as angles on the sky (the RA error
        is not divided by cos Dec): stored as an ellipse aligned with the axes,
        semi-axes the larger and the smaller of the two, position angle 0 (north) when
        the Dec error is the larger, else 90 deg. A row with one of them missing gets a
        circle of the other. Not with ``err_col`` or ``err_radius``.

    Returns
    -------
    Catalog

    Raises
    ------
    CatalogError
        Unreadable file, unknown or non-numeric column, no position column found, an
        empty table, no row with a usable position, a negative or non-finite
        ``err_radius``, or error options that exclude each other.
    """
    path = Path(path)
    modes = [m for m, given in (("--err-col", err_col is not None), ("--err-radius", err_radius is not None),
                                ("--err-ra-col/--err-dec-col", err_ra_col is not None or err_dec_col is not None))
             if given]
    if len(modes) > 1:
        raise CatalogError(f"give one source error: {' or '.join(modes)}, not several")
    if (err_ra_col is None) != (err_dec_col is None):
        raise CatalogError("--err-ra-col and --err-dec-col go together")
    if err_radius is not None and not (math.isfinite(err_radius) and err_radius >= 0):
        raise CatalogError(f"--err-radius {err_radius!r} must be a finite angle >= 0")
    table = _read_table(path)
    if len(table) == 0:
        raise CatalogError(f"catalog {path.name}: the table has no rows")
    ra_name = _find(table, ra_col, RA_NAMES, "ra", path, True)
    dec_name = _find(table, dec_col, DEC_NAMES, "dec", path, True)
    dist_name = _find(table, dist_col, DIST_NAMES, "dist", path, False)
    label_name = _find(table, name_col, NAME_NAMES, "name", path, False)
    ra = _values(table, ra_name, "deg", path)
    dec = _values(table, dec_name, "deg", path)
    refused: dict[str, int] = {}
    bad = ~(np.isfinite(ra) & np.isfinite(dec))
    if bad.any():
        refused["position not a finite number"] = int(bad.sum())
    with np.errstate(invalid="ignore"):
        out_ra = ~bad & ((ra < 0) | (ra > 360))
        out_dec = ~bad & (np.abs(dec) > 90)
    if out_ra.any():
        refused["RA outside [0, 360] deg"] = int(out_ra.sum())
    if out_dec.any():
        refused["Dec outside [-90, 90] deg"] = int(out_dec.sum())
    accepted = ~(bad | out_ra | out_dec)
    if not accepted.any():
        raise CatalogError(f"catalog {path.name}: no row has a usable position ({len(table)} rows refused: "
                           + "; ".join(f"{k}: {v}" for k, v in refused.items()) + ")")
    with np.errstate(invalid="ignore"):
        ra = np.where(accepted, np.mod(ra, 360.0), np.nan)
    dec = np.where(accepted, dec, np.nan)
    columns = {"ra": ra_name, "dec": dec_name}
    dist = None
    if dist_name is not None:
        dist = _values(table, dist_name, "Mpc", path)
        with np.errstate(invalid="ignore"):
            dist = np.where(np.isfinite(dist) & (dist >= 0) & accepted, dist, np.nan)
        columns["dist"] = dist_name
    if label_name is not None:
        columns["name"] = label_name
    errors = None
    if err_col is not None or err_radius is not None or err_ra_col is not None:
        import astropy.units as u

        try:
            factor = u.Unit(err_unit).to(u.deg)
        except (ValueError, u.UnitConversionError, TypeError):
            raise CatalogError(f"--err-unit {err_unit!r} is not an angle unit") from None

        def angles(col: str) -> np.ndarray:
            name = _find(table, col, (), "err", path, True)
            values = _values(table, name, "deg", path)
            return values * factor if getattr(table[name], "unit", None) is None else values

        if err_col is not None:
            errors = SourceErrors(major_deg=angles(err_col), containment=err_containment or 0.68)
            columns["err"] = _find(table, err_col, (), "err", path, True)
        elif err_radius is not None:
            errors = SourceErrors(major_deg=np.full(len(table), err_radius * factor),
                                  containment=err_containment or 0.68)
            columns["err"] = f"fixed {err_radius:g} {err_unit}"
        else:
            e_ra, e_dec = angles(err_ra_col), angles(err_dec_col)
            major, minor = np.fmax(e_ra, e_dec), np.fmin(e_ra, e_dec)
            pa = np.where(np.isnan(e_ra) | (e_dec >= e_ra), 0.0, 90.0)
            errors = SourceErrors(major_deg=major, minor_deg=minor, pa_deg=pa,
                                  containment=err_containment or ONE_SIGMA_2D)
            columns["err"] = ",".join(_find(table, c, (), "err", path, True) for c in (err_ra_col, err_dec_col))
    elif all(c in table.colnames for c in ELLIPSE_4FGL):
        a, b, pa = (_values(table, c, "deg", path) for c in ELLIPSE_4FGL)
        errors = SourceErrors(major_deg=a, minor_deg=b, pa_deg=pa, containment=err_containment or 0.95)
        columns["err"] = ",".join(ELLIPSE_4FGL)
    stem = path.name.split(".")[0]
    return Catalog(name=name or stem, ra_deg=ra, dec_deg=dec, dist_mpc=dist, errors=errors, accepted=accepted,
                   refused=refused, columns=columns, table=table)


# ---------------------------------------------------------------- database
def catalog_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """Define ``catalogs`` and ``catalog_sources`` (as migration 0004 creates them) on ``metadata``."""
    catalogs = sa.Table(
        "catalogs", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("file_name", sa.Text, nullable=True, comment="file name only, no folder"),
        sa.Column("file_sha256", sa.Text, nullable=True),
        sa.Column("origin", sa.Text, nullable=True, comment="e.g. 'vizier:VII/281/glade2'"),
        sa.Column("n_rows", sa.Integer, nullable=False, comment="rows in the file"),
        sa.Column("n_sources", sa.Integer, nullable=False, comment="rows stored"),
        sa.Column("refused", JSONB, nullable=False, comment="refused rows per reason"),
        sa.Column("columns", JSONB, nullable=False, comment="columns used: ra, dec, dist, err"),
        sa.Column("err_containment", sa.Float(precision=53), nullable=True),
        sa.Column("loaded_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    sources = sa.Table(
        "catalog_sources", metadata,
        sa.Column("catalog_id", sa.Integer, sa.ForeignKey("catalogs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("row", sa.Integer, primary_key=True, comment="0-based row in the catalog file"),
        sa.Column("ra_deg", sa.Float(precision=53), nullable=False),
        sa.Column("dec_deg", sa.Float(precision=53), nullable=False),
        sa.Column("hpx", Point, nullable=False, comment="nested HEALPix index, order 29, of the position"),
        sa.Column("dist_mpc", sa.Float(precision=53), nullable=True),
        sa.Column("err_major_deg", sa.Float(precision=53), nullable=True),
        sa.Column("err_minor_deg", sa.Float(precision=53), nullable=True),
        sa.Column("err_pa_deg", sa.Float(precision=53), nullable=True),
        sa.Column("properties", JSONB, nullable=False, comment="the file's other columns"),
        sa.Index("ix_catalog_sources_hpx", "catalog_id", "hpx"),
    )
    return catalogs, sources


CATALOGS, SOURCES = catalog_tables(sa.MetaData())


def _json_value(v: Any) -> Any:
    if v is np.ma.masked or v is None:
        return None
    if isinstance(v, np.ma.MaskedArray):
        return [_json_value(x) for x in v.tolist()]
    if isinstance(v, (bytes, np.bytes_)):
        v = v.decode("utf-8", "replace")
    if isinstance(v, str):
        return v.strip()
    if isinstance(v, (np.ndarray, list, tuple)):
        return [_json_value(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(v) else None
    return str(v)


def _hpx(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    import astropy.units as u
    from healpix_alchemy.constants import HPX

    return np.asarray(HPX.lonlat_to_healpix(ra_deg * u.deg, dec_deg * u.deg), dtype=np.int64)


def store_catalog(engine: sa.Engine, cat: Catalog, *, file_sha256: str | None = None, file_name: str | None = None,
                  origin: str | None = None, replace: bool = False) -> int:
    """Write a catalog's accepted rows into ``catalogs`` / ``catalog_sources``.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The archive's database, migrated to 0004 or later.
    cat : Catalog
    file_sha256, file_name, origin : str, optional
        Provenance kept in ``catalogs`` (a file name, never its folder).
    replace : bool
        Replace a catalog of the same name (else that is an error).

    Returns
    -------
    int
        Sources stored.

    Raises
    ------
    CatalogError
        When a catalog of that name exists and ``replace`` is False.
    """
    import re

    if not re.match(NAME_PATTERN, cat.name):
        raise CatalogError(f"catalog name {cat.name[:80]!r}: use 1-64 letters, digits, '_', '.', '+', '-'")
    rows = np.flatnonzero(cat.accepted)
    hpx = _hpx(cat.ra_deg[rows], cat.dec_deg[rows])
    skip = {cat.columns.get("ra"), cat.columns.get("dec"), cat.columns.get("dist")}
    other = [c for c in cat.table.colnames if c not in skip]
    err = cat.errors
    with engine.begin() as conn:
        existing = conn.execute(sa.select(CATALOGS.c.id).where(CATALOGS.c.name == cat.name)).scalar()
        if existing is not None:
            if not replace:
                raise CatalogError(f"catalog {cat.name!r} is already loaded (use --replace to load it again)")
            conn.execute(sa.delete(CATALOGS).where(CATALOGS.c.id == existing))
        cid = conn.execute(sa.insert(CATALOGS).values(
            name=cat.name, file_name=file_name, file_sha256=file_sha256, origin=origin, n_rows=len(cat),
            n_sources=int(rows.size), refused=cat.refused, columns=cat.columns,
            err_containment=err.containment if err is not None else None).returning(CATALOGS.c.id)).scalar_one()
        dbapi = conn.connection.dbapi_connection
        cols = ("catalog_id", "row", "ra_deg", "dec_deg", "hpx", "dist_mpc", "err_major_deg", "err_minor_deg",
                "err_pa_deg", "properties")

        def opt(a: np.ndarray | None, i: int) -> float | None:
            if a is None:
                return None
            v = float(a[i])
            return v if math.isfinite(v) else None

        data = {c: cat.table[c] for c in other}
        with dbapi.cursor() as cur:
            with cur.copy(f"COPY catalog_sources ({', '.join(cols)}) FROM STDIN") as copy:
                for k, i in enumerate(rows.tolist()):
                    props = {c: _json_value(data[c][i]) for c in other}
                    copy.write_row((cid, i, float(cat.ra_deg[i]), float(cat.dec_deg[i]), int(hpx[k]),
                                    opt(cat.dist_mpc, i), opt(err.major_deg if err else None, i),
                                    opt(err.minor_deg if err else None, i), opt(err.pa_deg if err else None, i),
                                    json.dumps(props, allow_nan=False)))
    return int(rows.size)


def list_catalogs(engine: sa.Engine) -> list[dict[str, Any]]:
    """Every stored catalog: name, counts, columns, provenance and load time, by name."""
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(CATALOGS).order_by(CATALOGS.c.name))]


def cone_ranges(ra_deg: float, dec_deg: float, radius_deg: float, max_depth: int) -> np.ndarray:
    """Order-29 nested HEALPix index ranges covering a cone (a superset: every cell it overlaps).

    The cone is a mocpy MOC (``MOC.from_cone``) of cells down to ``max_depth``; its
    ranges are what healpix-alchemy's ``hpx`` columns (order 29) are compared with, so
    a cone is a range join or range test on a B-tree index. Callers remove the cells'
    margin with the exact separation.

    Parameters
    ----------
    ra_deg, dec_deg : float
        Centre, ICRS, deg.
    radius_deg : float
        Radius, deg (> 0).
    max_depth : int
        Deepest MOC order (0-29): deeper is a tighter cover with more ranges.

    Returns
    -------
    numpy.ndarray, shape (n, 2), int64
        ``[lo, hi)`` per range, sorted and merged.
    """
    import astropy.units as u
    from astropy.coordinates import Latitude, Longitude
    from mocpy import MOC

    moc = MOC.from_cone(lon=Longitude(ra_deg * u.deg), lat=Latitude(dec_deg * u.deg), radius=radius_deg * u.deg,
                        max_depth=max_depth)
    return np.asarray(moc.to_depth29_ranges, dtype=np.int64).reshape(-1, 2)


def cone_search(engine: sa.Engine, name: str, ra_deg: float, dec_deg: float, radius_deg: float) -> list[int]:
    """Rows (0-based, in the file) of the sources of catalog ``name`` within a cone.

    The cone becomes a mocpy MOC, its healpix-alchemy ``Tile`` ranges (order 29) are
    joined with ``catalog_sources.hpx`` on the ``(catalog_id, hpx)`` index, and the
    MOC's pixel margin is removed by the exact separation.

    Raises
    ------
    CatalogError
        For an unknown catalog.
    """
    from astropy.coordinates import angular_separation

    ranges = cone_ranges(ra_deg, dec_deg, radius_deg, max_depth=14)
    with engine.connect() as conn:
        cid = conn.execute(sa.select(CATALOGS.c.id).where(CATALOGS.c.name == name)).scalar()
        if cid is None:
            raise CatalogError(f"no catalog {name!r} (see `mma-broker catalog list`)")
        tiles = sa.select(sa.func.unnest(sa.cast(ranges[:, 0].tolist(), sa.ARRAY(sa.BigInteger))).label("lo"),
                          sa.func.unnest(sa.cast(ranges[:, 1].tolist(), sa.ARRAY(sa.BigInteger))).label("hi")
                          ).subquery()
        q = (sa.select(SOURCES.c.row, SOURCES.c.ra_deg, SOURCES.c.dec_deg)
             .join(tiles, sa.and_(SOURCES.c.hpx >= tiles.c.lo, SOURCES.c.hpx < tiles.c.hi))
             .where(SOURCES.c.catalog_id == cid))
        found = conn.execute(q).all()
    if not found:
        return []
    rows = np.array([f[0] for f in found])
    sep = np.degrees(angular_separation(np.radians([f[1] for f in found]), np.radians([f[2] for f in found]),
                                        math.radians(ra_deg), math.radians(dec_deg)))
    return sorted(rows[sep <= radius_deg].tolist())


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, hex."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
