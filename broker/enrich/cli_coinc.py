"""``mma-broker coinc GW_ALERT EXT_ALERT``: one GW–GRB coincidence, RAVEN's way, no server.

A CLI plugin (entry point ``coinc`` of ``mma_broker.cli`` in ``pyproject.toml``): the
command is this Typer's callback, so ``mma-broker coinc A B`` takes the two files
directly. Mounting imports typer only; the command imports the rest when it runs.

Both files are decoded by the broker's decoders (:func:`broker.sources.decode`: IGWN
JSON/Avro with their base64 multi-order maps, GCN Kafka JSON with ``healpix_file``, GCN
Classic VOEvent XML). The localization of an alert is
:func:`broker.enrich.localization.extract_localization`'s (the embedded map, flat maps
kept flat, or the point); a point localization counts as a point; a VOEvent
carries only a map URL, so ``--gw-skymap`` / ``--ext-skymap`` take a local FITS map
instead (the Fermi GBM HEALPix map, say). An embedded map that cannot be read (NaN,
negative, not FITS) is an error naming the file, never silently dropped.

Output: :meth:`broker.enrich.coinc.GwGrbCoincidence.to_json_dict` with ``--json`` (one
object: ``coincident``, ``dt_s``, ``window_s``, ``overlap_integral``,
``temporal_far_hz``, ``joint_far_hz``, plus the inputs used and notes), else a few lines
of text. Errors: one line on stderr naming the file, exit code 1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

if TYPE_CHECKING:
    from broker.enrich.coinc import Sky
    from broker.event import Event

app = typer.Typer(name="coinc", add_completion=False, invoke_without_command=True,
                  context_settings={"allow_interspersed_args": True}, subcommand_metavar="",
                  help="GW–GRB coincidence of two alert files (RAVEN's windows, overlap integral and FARs).")


def load_alert(path: Path, role: str, skymap_file: Optional[Path], limits=None) -> tuple["Event", "Sky | None"]:
    """Decode an alert file and find its localization.

    Parameters
    ----------
    path : Path
        The alert file; its first alert is used (the GW alert for ``role`` GW_ALERT).
    role : str
        ``"GW_ALERT"`` or ``"EXT_ALERT"``, for messages.
    skymap_file : Path, optional
        A FITS sky map to use instead of the alert's own localization.

    Returns
    -------
    (Event, MultiOrderSkyMap or PointRegion or None)
        The localization from :func:`broker.enrich.localization.extract_localization`
        (flat maps not merged), or the given FITS map.

    Raises
    ------
    BrokerError
        One line naming the role and file: unreadable or undecodable alert, no alert,
        a GW_ALERT that is not a GW alert, an unreadable embedded or given sky map.
    """
    from broker.enrich.localization import extract_localization
    from broker.errors import BrokerError
    from broker.replay import display_path, failure_reason, read_alert_file
    from broker.skymap import read_skymap
    from broker.sources import decode

    where = f"{role} {display_path(path)}"
    try:
        raw = read_alert_file(path)
        events = decode(raw, limits)
    except Exception as exc:  # noqa: BLE001 - one line naming the file
        raise BrokerError(f"{where}: {failure_reason(exc)}") from None
    if role == "GW_ALERT":
        events = [e for e in events if e.messenger == "gw"] or events
    if not events:
        raise BrokerError(f"{where}: holds no alert")
    event = events[0]
    if role == "GW_ALERT" and event.messenger != "gw":
        raise BrokerError(f"{where}: not a gravitational-wave alert ({event.mission} {event.messenger})")
    try:
        if skymap_file is not None:
            fits_bytes = read_alert_file(skymap_file, max_bytes=1 << 31)
            where = f"{role} sky map {display_path(skymap_file)}"
            return event, read_skymap(fits_bytes)
        where = f"{where}: embedded sky map"
        # flat maps kept flat: RAVEN's flat-map overlap branches want them so
        return event, extract_localization(event, raw, merge_flat=False)
    except Exception as exc:  # noqa: BLE001
        raise BrokerError(f"{where}: {failure_reason(exc)}") from None


def _fmt(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.4g}{unit}"


@app.callback()
def coinc(
    gw_alert: Path = typer.Argument(..., metavar="GW_ALERT", help="The GW alert file (IGWN JSON/Avro, LVK VOEvent)."),
    ext_alert: Path = typer.Argument(..., metavar="EXT_ALERT", help="The external trigger's alert file (GCN JSON, VOEvent)."),
    search: Optional[str] = typer.Option(None, "--search", help="cbc ([-1, +5] s) or burst ([-60, +600] s); "
                                                                 "default: the GW alert's group."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
    gw_skymap: Optional[Path] = typer.Option(None, "--gw-skymap", help="FITS sky map to use for the GW alert."),
    ext_skymap: Optional[Path] = typer.Option(None, "--ext-skymap", help="FITS sky map to use for the external trigger."),
    window: Optional[tuple[float, float]] = typer.Option(None, "--window", help="Window LOW HIGH on t_ext - t_gw, s."),
    rate_per_yr: Optional[float] = typer.Option(None, "--rate-per-yr",
                                                help="External trigger rate, per year (default 310, ligo-raven's)."),
    overlap: str = typer.Option("raven", "--overlap", help="raven (ligo-raven's discretization) or exact."),
) -> None:
    """GW–GRB coincidence of two alert files: time window, sky-map overlap integral, FARs."""
    from broker.app import current_app
    from broker.enrich.coinc import CoincidenceSettings, gw_grb_coincidence
    from broker.errors import BrokerError

    if search is not None and search not in ("cbc", "burst"):
        raise BrokerError(f"--search {search!r}: expected cbc or burst")
    if overlap not in ("raven", "exact"):
        raise BrokerError(f"--overlap {overlap!r}: expected raven or exact")
    kw: dict[str, Any] = {"overlap_method": overlap}
    if rate_per_yr is not None:
        if not (math.isfinite(rate_per_yr) and rate_per_yr > 0):
            raise BrokerError(f"--rate-per-yr {rate_per_yr}: must be a positive number")
        kw["grb_rate_per_yr"] = rate_per_yr
    if window is not None:
        lo, hi = window
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise BrokerError(f"--window {lo} {hi}: must be finite with LOW <= HIGH")
        kw["cbc_window_s"] = kw["burst_window_s"] = (lo, hi)
    settings = CoincidenceSettings(**kw)
    try:
        limits = current_app().settings.limits
    except Exception:  # noqa: BLE001 - settings problems are not this command's; use the default limits
        limits = None
    gw, gw_sky = load_alert(gw_alert, "GW_ALERT", gw_skymap, limits)
    ext, ext_sky = load_alert(ext_alert, "EXT_ALERT", ext_skymap, limits)
    result = gw_grb_coincidence(gw, ext, gw_sky, ext_sky, search=search, settings=settings)  # type: ignore[arg-type]
    if as_json:
        print(json.dumps(result.to_json_dict(), allow_nan=False))
        return
    from broker.text import printable

    lo, hi = result.window_s
    print(printable(f"{gw.upstream_id} ({gw.alert_type}) × {ext.mission} {ext.instrument or ''} {ext.upstream_id}"))
    print(f"  dt = t_ext - t_gw = {result.dt_s:+.3f} s, {result.search} window [{lo:+g}, {hi:+g}] s: "
          f"{'coincident' if result.coincident else 'not coincident'}")
    print(f"  overlap integral ({result.overlap_method}, {result.gw_localization} x {result.ext_localization}): "
          f"{_fmt(result.overlap_integral)}")
    print(f"  temporal FAR {_fmt(result.temporal_far_hz, ' Hz')}, joint FAR {_fmt(result.joint_far_hz, ' Hz')} "
          f"(GW FAR {_fmt(result.gw_far_hz, ' Hz')}, external rate {result.ext_rate_hz * 365 * 86400:g} / yr)")
    for note in result.notes:
        print(f"  note: {printable(note)}")
