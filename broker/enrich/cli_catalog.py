"""``mma-broker catalog`` and ``mma-broker crossmatch`` (CLI plugins).

``pyproject.toml`` registers :data:`catalog_app` and :data:`crossmatch_app` under the
entry-point group ``mma_broker.cli``; ``mma-broker``'s ``main()`` mounts them. Like
every CLI plugin module this one imports typer and the standard library only; each
command imports numpy, astropy and SQLAlchemy when it runs.

* ``catalog load NAME FILE [--ra-col --dec-col --dist-col --name-col --err-col
  --err-radius --err-ra-col --err-dec-col --err-unit --err-containment --replace]``
  reads a catalog file and stores it in the archive's PostgreSQL with a HEALPix index;
  refused rows are counted per reason on stderr.
* ``catalog list [--json]`` lists the stored catalogs.
* ``catalog fetch VIZIER_ID [--name NAME]`` downloads a VizieR table with astroquery
  (network needed) and stores it the same way.
* ``crossmatch ALERT_OR_MAP --catalog FILE [--ra-col --dec-col --dist-col --name-col
  --err-col --err-radius --err-ra-col --err-dec-col] [--json]`` cross-matches a sky map (or an alert's embedded map, or an alert's error
  circle) with a catalog file, no server needed.

Errors are one line, ``mma-broker: error: ...``, exit code 1.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

import typer

catalog_app = typer.Typer(name="catalog", no_args_is_help=True, add_completion=False,
                          help="Catalogs for cross-matching, stored in the archive's PostgreSQL.")
crossmatch_app = typer.Typer(name="crossmatch", add_completion=False, invoke_without_command=True,
                             context_settings={"allow_interspersed_args": True}, subcommand_metavar="",
                             help="Cross-match a sky map or alert with a catalog file (no server needed).")

VIZIER_ALIASES = {"glade2": "VII/281/glade2"}
"""Short names ``catalog fetch`` accepts besides VizieR ids (the GLADE 2 id is the one
ligo.skymap's crossmatch documentation fetches)."""


@catalog_app.callback()
def _group() -> None:
    """Catalogs for cross-matching."""


def _settings():
    from broker.app import current_app

    return current_app().settings


def _report_refused(cat) -> None:
    if cat.refused:
        parts = "; ".join(f"{reason}: {n:,}" for reason, n in cat.refused.items())
        print(f"{cat.name}: refused {sum(cat.refused.values()):,} of {len(cat):,} rows ({parts})", file=sys.stderr)


def _store(cat, *, file_name: str | None, sha256: str | None, origin: str | None, replace: bool) -> None:
    from broker.app import open_archive
    from broker.enrich.catalogs import store_catalog

    archive = open_archive(_settings(), migrate=True)
    try:
        n = store_catalog(archive.engine, cat, file_sha256=sha256, file_name=file_name, origin=origin,
                          replace=replace)
    finally:
        archive.close()
    extra = f", distances from {cat.columns['dist']!r}" if "dist" in cat.columns else ""
    extra += f", errors from {cat.columns['err']!r}" if "err" in cat.columns else ""
    extra += f", names from {cat.columns['name']!r}" if "name" in cat.columns else ""
    print(f"{cat.name}: stored {n:,} sources of {len(cat):,} rows{extra}")


@catalog_app.command("load")
def catalog_load(
    name: str = typer.Argument(..., help="Name to store the catalog under."),
    file: Path = typer.Argument(..., help="FITS, CSV, Parquet, VOTable, HDF5 or ASCII text table."),
    ra_col: Optional[str] = typer.Option(None, "--ra-col", help="RA column (deg); found by name if omitted."),
    dec_col: Optional[str] = typer.Option(None, "--dec-col", help="Dec column (deg); found by name if omitted."),
    dist_col: Optional[str] = typer.Option(None, "--dist-col", help="Luminosity distance column (Mpc)."),
    name_col: Optional[str] = typer.Option(None, "--name-col", help="Source-name column; found by name if omitted."),
    err_col: Optional[str] = typer.Option(None, "--err-col", help="Error-circle radius column."),
    err_radius: Optional[float] = typer.Option(None, "--err-radius",
                                               help="One error radius for every row (in --err-unit)."),
    err_ra_col: Optional[str] = typer.Option(None, "--err-ra-col", help="RA error column (angle on the sky)."),
    err_dec_col: Optional[str] = typer.Option(None, "--err-dec-col", help="Dec error column."),
    err_unit: str = typer.Option("deg", "--err-unit",
                                 help="Unit of --err-radius, and of error columns when the file gives none."),
    err_containment: Optional[float] = typer.Option(
        None, "--err-containment", min=0.01, max=0.9999,
        help="Containment of the errors (0.68; per-axis --err-ra-col/--err-dec-col 0.3935; 4FGL ellipses 0.95)."),
    replace: bool = typer.Option(False, "--replace", help="Replace a catalog of the same name."),
) -> None:
    """Load a catalog file into PostgreSQL with a HEALPix index."""
    from broker.enrich.catalogs import file_sha256, read_catalog

    cat = read_catalog(file, name, ra_col=ra_col, dec_col=dec_col, dist_col=dist_col, err_col=err_col,
                       err_unit=err_unit, err_containment=err_containment, name_col=name_col,
                       err_radius=err_radius, err_ra_col=err_ra_col, err_dec_col=err_dec_col)
    _report_refused(cat)
    _store(cat, file_name=file.name, sha256=file_sha256(file), origin=None, replace=replace)


@catalog_app.command("list")
def catalog_list(as_json: bool = typer.Option(False, "--json", help="JSON Lines.")) -> None:
    """List the stored catalogs."""
    from broker.app import open_archive
    from broker.enrich.catalogs import list_catalogs

    archive = open_archive(_settings(), read_only=True)
    try:
        rows = list_catalogs(archive.engine)
    finally:
        archive.close()
    if as_json:
        for r in rows:
            r["loaded_at"] = r["loaded_at"].isoformat()
            print(json.dumps(r))
        return
    print(f"{len(rows)} catalog(s)")
    for r in rows:
        cols = ", ".join(f"{k}={v}" for k, v in r["columns"].items())
        refused = sum(r["refused"].values())
        print(f"{r['name']:<24} {r['n_sources']:>10,} sources  {refused:>8,} refused  {cols}  "
              f"{r['file_name'] or r['origin'] or ''}")


@catalog_app.command("fetch")
def catalog_fetch(
    vizier_id: str = typer.Argument(..., help="VizieR table id (e.g. VII/281/glade2) or glade2."),
    name: Optional[str] = typer.Option(None, "--name", help="Name to store it under (default: the id's last part)."),
    row_limit: int = typer.Option(-1, "--row-limit", help="At most this many rows (-1: all)."),
    ra_col: Optional[str] = typer.Option(None, "--ra-col"),
    dec_col: Optional[str] = typer.Option(None, "--dec-col"),
    dist_col: Optional[str] = typer.Option(None, "--dist-col"),
    replace: bool = typer.Option(False, "--replace", help="Replace a catalog of the same name."),
) -> None:
    """Download a catalog from VizieR (astroquery; needs network) and store it."""
    import tempfile

    from broker.enrich.catalogs import CatalogError, read_catalog

    table_id = VIZIER_ALIASES.get(vizier_id.lower(), vizier_id)
    try:
        from astroquery.vizier import Vizier

        viz = Vizier(row_limit=row_limit, columns=["**", "_RAJ2000", "_DEJ2000"])
        tables = viz.get_catalogs(table_id)
    except Exception as exc:  # noqa: BLE001 - offline, DNS, HTTP errors: one line
        text = " ".join(str(exc).split())[:200]
        raise CatalogError(f"catalog fetch {table_id}: VizieR not reachable ({type(exc).__name__}: {text}); "
                           "fetch needs the network, or download the table and use `catalog load`") from None
    if len(tables) == 0:
        raise CatalogError(f"catalog fetch: VizieR has no table {table_id!r}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / (table_id.replace("/", "_") + ".ecsv")
        tables[0].write(path, format="ascii.ecsv")
        cat = read_catalog(path, name or table_id.rsplit("/", 1)[-1], ra_col=ra_col, dec_col=dec_col,
                           dist_col=dist_col)
    _report_refused(cat)
    _store(cat, file_name=None, sha256=None, origin=f"vizier:{table_id}", replace=replace)


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


@crossmatch_app.callback()
def crossmatch(
    ctx: typer.Context,
    alert_or_map: Path = typer.Argument(..., help="FITS sky map, or alert file (IGWN JSON/Avro, GCN JSON, VOEvent)."),
    catalog: Path = typer.Option(..., "--catalog", help="Catalog file (FITS, CSV, Parquet, VOTable, HDF5, ASCII)."),
    ra_col: Optional[str] = typer.Option(None, "--ra-col", help="RA column (deg); found by name if omitted."),
    dec_col: Optional[str] = typer.Option(None, "--dec-col", help="Dec column (deg); found by name if omitted."),
    dist_col: Optional[str] = typer.Option(None, "--dist-col", help="Distance column (Mpc): 3D cross-match."),
    name_col: Optional[str] = typer.Option(None, "--name-col", help="Source-name column; found by name if omitted."),
    err_col: Optional[str] = typer.Option(None, "--err-col", help="Source error radius column (point alerts)."),
    err_radius: Optional[float] = typer.Option(None, "--err-radius",
                                               help="One source error radius for every row (in --err-unit)."),
    err_ra_col: Optional[str] = typer.Option(None, "--err-ra-col", help="Source RA error column (angle on the sky)."),
    err_dec_col: Optional[str] = typer.Option(None, "--err-dec-col", help="Source Dec error column."),
    err_unit: str = typer.Option("deg", "--err-unit",
                                 help="Unit of --err-radius, and of error columns when the file gives none."),
    err_containment: Optional[float] = typer.Option(
        None, "--err-containment", min=0.01, max=0.9999,
        help="Containment of the source errors (0.68; per-axis 0.3935; 4FGL ellipses 0.95)."),
    level: float = typer.Option(0.9, "--level", min=0.01, max=0.9999,
                                help="Credible level (maps) or containment (points) of the listed matches."),
    as_json: bool = typer.Option(False, "--json", help="JSON Lines: one object per catalog row (maps) or match."),
    limit: int = typer.Option(20, "--limit", min=1, help="Matches shown in the text output."),
) -> None:
    """Cross-match a sky map or an alert with a catalog file.

    For a sky map, --json prints one object per catalog row, in row order: row,
    searched_prob, searched_area_deg2, probdensity_per_deg2 and, with distance layers
    and a distance column, searched_prob_vol and probdensity_vol_per_mpc3 (the
    quantities of ligo.skymap.postprocess.crossmatch). For an alert with an error
    circle it prints the sources inside the combined error, nearest first (--json:
    row, name when the catalog has a name column, separation_deg, radius_deg,
    normalized_separation, nearest).
    """
    from broker.enrich.catalogs import CatalogError, read_catalog
    from broker.enrich.inputs import read_alert_or_map

    try:
        data = alert_or_map.read_bytes()
    except OSError as exc:
        raise CatalogError(f"{alert_or_map.name}: cannot read ({exc.strerror or exc})") from None
    from broker.errors import DecodeError

    try:
        alert = read_alert_or_map(data)
    except DecodeError as exc:
        raise DecodeError(f"{alert_or_map.name}: {exc}") from None
    cat = read_catalog(catalog, ra_col=ra_col, dec_col=dec_col, dist_col=dist_col, err_col=err_col,
                       err_unit=err_unit, err_containment=err_containment, name_col=name_col,
                       err_radius=err_radius, err_ra_col=err_ra_col, err_dec_col=err_dec_col)
    _report_refused(cat)
    if alert.skymap is not None:
        _print_map_match(alert, cat, level, as_json, limit)
    else:
        _print_point_match(alert, cat, level, as_json, limit)


def _print_map_match(alert, cat, level: float, as_json: bool, limit: int) -> None:
    from broker.enrich.crossmatch import crossmatch_skymap

    match = crossmatch_skymap(alert.skymap, cat.ra_deg, cat.dec_deg, cat.dist_mpc)
    if as_json:
        out = sys.stdout
        for row in match.rows():
            out.write(json.dumps(row) + "\n")
        return
    three = match.searched_prob_vol is not None
    ranked = match.ranked(level)
    print(f"{alert.name}: 50 % / 90 % credible areas {match.area_50_deg2:,.1f} / {match.area_90_deg2:,.1f} deg²; "
          f"{len(ranked):,} of {len(match):,} sources of {cat.name} inside the {level:.0%} credible "
          f"{'volume' if three else 'region'}")
    for i in ranked[:limit]:
        who = _label(cat, i) or f"row {i}"
        text = (f"  {who:<24} RA {cat.ra_deg[i]:8.4f} Dec {cat.dec_deg[i]:+8.4f}  "
                f"searched prob {match.searched_prob[i]:.4f}  area {match.searched_area_deg2[i]:,.1f} deg²")
        if three:
            text += f"  searched prob (3D) {match.searched_prob_vol[i]:.4f}"
        print(text)


def _label(cat, row: int) -> str | None:
    """The source's name from the catalog's name column (``cat.columns['name']``), if any."""
    import numpy as np

    col = cat.columns.get("name")
    if col is None:
        return None
    value = cat.table[col][row]
    if value is None or value is np.ma.masked:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).strip()
    return text or None


def _print_point_match(alert, cat, level: float, as_json: bool, limit: int) -> None:
    from broker.enrich.points import crossmatch_point

    p = alert.point
    match = crossmatch_point(p, cat.ra_deg, cat.dec_deg, cat.errors, containment=level)
    if as_json:
        for row in match.to_json_rows():
            if "name" in cat.columns:
                row = {"row": row["row"], "name": _label(cat, row["row"]), **{k: v for k, v in row.items() if k != "row"}}
            print(json.dumps(row))
        return
    err = f"{p.error_radius:.4g} deg" if p.error_radius is not None else "no error radius"
    print(f"{alert.name}: RA {p.ra:.4f} Dec {p.dec:+.4f} ({err}); {len(match.rows):,} of {len(cat):,} sources of "
          f"{cat.name} within the combined {level:.0%} error")
    for r, s, x in list(zip(match.rows, match.separation_deg, match.radius_deg))[:limit]:
        who = _label(cat, int(r))
        print(f"  row {r:<8} {who + '  ' if who else ''}separation {s:.4f} deg  (combined radius {x:.4f} deg)")
    if match.nearest_row is not None:
        who = _label(cat, match.nearest_row)
        print(f"  nearest: row {match.nearest_row}{' ' + who if who else ''} at {match.nearest_separation_deg:.4f} deg")
