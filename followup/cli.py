"""``mma-broker followup`` commands.

A CLI plugin: ``pyproject.toml`` registers :data:`app` under the entry-point group
``mma_broker.cli`` as ``followup``, and ``mma-broker``'s ``main()`` mounts it as
``mma-broker followup``. Commands get the invocation's settings from the
:class:`broker.app.App` in the click context (:func:`broker.app.current_app`), never
from :mod:`broker.cli`.

Start-up: mounting imports this module on every ``mma-broker`` command, so it imports
typer and the standard library only; each command imports what it needs when it runs.
``followup run EVENT_ID`` publishes a follow-up request for an archived event (or,
with ``--local``, runs it here and prints the summary); ``followup worker`` runs the
follow-up stage (:func:`followup.worker.run_followup_stage`); ``followup results``
lists stored results.
``followup excess LIGHTCURVE --t0 ISO`` reads any OGIP light-curve FITS file, runs the
SPI-ACS analysis of :mod:`followup.spiacs` and prints either the plain-text summary
or, with ``--json``, one JSON object. A bad file or time gives one line on stderr
naming it and why, and exit code 1.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(name="followup", no_args_is_help=True, add_completion=False,
                  help="INTEGRAL follow-up: requests, workers, results and offline light-curve search.")

logger = logging.getLogger(__name__)


@app.callback()
def _group() -> None:
    """INTEGRAL follow-up analyses."""


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def summary_json(result, lightcurve_path: str) -> dict:
    """The ``--json`` object: the search outcome, per-scale limits and the response used.

    Parameters
    ----------
    result : followup.spiacs.SpiAcsResult
    lightcurve_path : str
        Path of the light-curve file, echoed back.

    Returns
    -------
    dict
        JSON-ready; keys ``detected``, ``best_time`` (ISO UTC), ``best_offset_s``,
        ``best_timescale_s``, ``best_snr``, ``fap``, ``n_trials``, ``upper_limits``
        (one entry per time scale: ``counts`` and, with a direction, ``fluence_erg_cm2``
        for the short-GRB spectrum and ``peak_flux_erg_cm2_s`` for the long-GRB one).
    """
    ex = result.excess
    limits = []
    for row in result.limits:
        entry = {
            "scale_s": row.scale_s,
            "requested_scale_s": row.requested_scale_s,
            "counts": row.upper_limit_counts,
            "excess_variance_factor": row.excess_variance_factor,
        }
        if row.short_grb_fluence_erg_cm2 is not None:
            entry["fluence_erg_cm2"] = row.short_grb_fluence_erg_cm2.best
            entry["peak_flux_erg_cm2_s"] = row.long_grb_peak_flux_erg_cm2_s.best
            entry["direction_quality"] = row.short_grb_fluence_erg_cm2.best_direction_quality
        limits.append(entry)
    return {
        "lightcurve": lightcurve_path,
        "instrument": result.instrument,
        "t0": ex.t0_utc,
        "detected": ex.detected,
        "best_time": ex.best_time_utc,
        "best_offset_s": ex.best_offset_s,
        "best_timescale_s": ex.best_timescale_s,
        "best_snr": _finite(ex.best_snr),
        "fap": ex.fap,
        "detection_fap": ex.detection_fap,
        "n_trials": ex.n_trials,
        "search_window_s": list(ex.search_window_s),
        "background_order": ex.background.order,
        "upper_limit_sigma": result.params.search.upper_limit_sigma,
        "upper_limits": limits,
        "fluence_band_kev": list(result.fluence_band_kev),
        "short_grb_spectrum": result.short_grb_spectrum,
        "long_grb_spectrum": result.long_grb_spectrum,
        "response_source": result.response_source,
        "response_systematic": result.response_systematic,
    }


@app.command("excess")
def excess(
    lightcurve: Path = typer.Argument(..., help="OGIP light-curve FITS file (TIME and RATE or COUNTS)."),
    t0: str = typer.Option(..., "--t0", help="Event time T0, ISO 8601 UTC, e.g. 2023-03-07T15:44:06.67Z."),
    window: float = typer.Option(300.0, "--window", help="Search half-window around T0, seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the text summary."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also write a PNG light-curve plot here."),
    theta_deg: Optional[float] = typer.Option(None, "--theta-deg", help="Source angle from the pointing axis, deg."),
    phi_deg: float = typer.Option(0.0, "--phi-deg", help="Source azimuth around the pointing axis, deg."),
) -> None:
    """Search a light curve for an excess around T0 and give 3-sigma upper limits."""
    from broker.errors import BrokerError, cli_error_lines
    from followup.excess import ExcessSearchParams
    from followup.lightcurve import read_ogip_lightcurve, to_utc_time
    from followup.report import spiacs_summary_text
    from followup.spiacs import SkyDirection, SpiAcsParams, run_spiacs_analysis

    try:
        t0_time = to_utc_time(t0)
    except ValueError:
        typer.echo(cli_error_lines(f"--t0 {t0!r}: not an ISO 8601 UTC time such as 2023-03-07T15:44:06.67Z")[0], err=True)
        raise typer.Exit(1) from None
    directions = None if theta_deg is None else [SkyDirection(theta_deg, phi_deg, 1.0)]
    params = SpiAcsParams(search=ExcessSearchParams(search_half_window_s=window))
    try:
        lc = read_ogip_lightcurve(lightcurve)
        result = run_spiacs_analysis(lc, t0_time, directions, params)
    except (BrokerError, ValueError) as exc:
        message = " ".join(str(exc).split())
        if str(lightcurve) not in message:
            message = f"{lightcurve}: {message}"
        typer.echo(cli_error_lines(message)[0], err=True)
        raise typer.Exit(1)
    if plot is not None:
        from followup.plot import plot_lightcurve

        try:
            plot_lightcurve(lc, result, plot)
        except OSError as exc:
            typer.echo(cli_error_lines(f"{plot}: cannot write plot ({exc})")[0], err=True)
            raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(summary_json(result, str(lightcurve))))
    else:
        typer.echo(spiacs_summary_text(result, event_name=f"the event at {result.t0_utc}"), nl=False)


def _settings():
    """The invocation's settings: those of the App in the click context (``mma-broker
    --config`` etc.), loaded on first use."""
    from broker.app import current_app  # at call time: module-level imports stay typer + stdlib

    return current_app().settings


@app.command("run")
def run(
    event_id: str = typer.Argument(..., help="Archived Event id (see `mma-broker events list`)."),
    analysis: str = typer.Option("spiacs,isgri", "--analysis", help="Comma-separated: spiacs, isgri."),
    local: bool = typer.Option(False, "--local", help="Run here and print the summary instead of publishing a request."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="With --local: write the PNG here."),
    as_json: bool = typer.Option(False, "--json", help="With --local: print the result as JSON."),
) -> None:
    """Request the INTEGRAL follow-up of one archived event (or run it with --local)."""
    from broker.app import open_archive, provenance
    from broker.errors import BrokerError
    from followup.build import build_cache, build_sources, followup_params, output_directory, request_params
    from followup.messages import FollowupRequest
    from followup.service import ANALYSES

    s = _settings()
    analyses = tuple(sorted({a.strip().lower() for a in analysis.split(",") if a.strip()}))
    bad = set(analyses) - set(ANALYSES)
    if bad or not analyses:
        raise BrokerError(f"--analysis {analysis!r}: choose from {', '.join(ANALYSES)}")
    archive = open_archive(s, read_only=True)
    record = archive.get(event_id)
    if record is None:
        raise BrokerError(f"no event {event_id!r} in the archive (try `mma-broker events list`)")
    event = record.event
    if not local:
        from broker.kafka import DeliveryTracker, ensure_topics, flush_or_raise, make_producer
        from followup.worker import publish_request

        topic = s.topic(s.followup.requests_topic)
        ensure_topics(s, [topic])
        request = FollowupRequest(kind="analyze", event=event, analyses=analyses, params=request_params(s),
                                  requested_by="cli", provenance=provenance(s, "followup.cli"))
        producer, tracker = make_producer(s), DeliveryTracker()
        publish_request(producer, topic, request, tracker.callback)
        flush_or_raise(producer, tracker)
        typer.echo(f"requested {request.request_id} ({', '.join(analyses)}) for {event.id} on {topic}")
        return
    from followup.eventdata import skymap_from_raw
    from followup.service import run_followup

    skymap = None
    if event.localization is not None and event.localization.type == "healpix":
        from broker.archive.raw import RawStoreError

        try:
            skymap = skymap_from_raw(event, archive.raw(event_id))
        except RawStoreError as exc:
            logger.warning("%s: raw alert unreadable (%s); limits at the most probable position", event_id, exc)
    result = run_followup(event, analyses, build_sources(s), build_cache(s, archive.engine), followup_params(s),
                          skymap)
    if result.plot_png is not None:
        path = plot or output_directory(s) / f"{event_id.replace('/', '_').replace(':', '_')}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(result.plot_png)
        logger.info("plot written to %s", path)
    else:
        path = None
    if as_json:
        typer.echo(json.dumps(result.to_dict() | {"plot_path": str(path) if path else None}, default=str))
        return
    typer.echo(result.summary_text, nl=False)
    hits = sum(r.hit for r in result.lineage)
    typer.echo(f"\nstatus: {result.status}; steps: {len(result.lineage)} ({hits} from the cache)"
               + (f"; plot: {path}" if path else ""))


@app.command("worker")
def worker(
    until_caught_up: bool = typer.Option(False, "--until-caught-up", help="Stop when all input is consumed."),
    idle: float = typer.Option(3.0, "--idle", help="With --until-caught-up: idle seconds before stopping."),
) -> None:
    """Run the follow-up stage: trigger rules on mma.events and workers on mma.followup.requests."""
    import signal
    import threading

    from followup.worker import run_followup_stage

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stats = run_followup_stage(_settings(), stop, until_caught_up=until_caught_up, idle_s=idle)
    typer.echo(stats.summary())


@app.command("results")
def results(
    upstream_id: Optional[str] = typer.Option(None, "--upstream-id", help="Only this trigger/superevent id."),
    limit: int = typer.Option(20, "--limit", min=1, max=100_000, help="At most this many (newest first)."),
    as_json: bool = typer.Option(False, "--json", help="JSON Lines of the stored documents."),
    wide: bool = typer.Option(False, "--wide", help="Whole ids, however wide the table gets."),
) -> None:
    """List stored follow-up results, newest first: "showing N of M" (M: all stored,
    or all of --upstream-id), then one row each; long ids are cut in the middle to
    fit the terminal (COLUMNS) unless --wide."""
    if upstream_id is not None and not (0 < len(upstream_id) <= 256 and upstream_id.isprintable()
                                        and upstream_id.encode("utf-8", "surrogatepass").decode("utf-8", "ignore")
                                        == upstream_id):
        raise typer.BadParameter("expected 1 to 256 printable characters, e.g. S230518h or 745121685",
                                 param_hint="'--upstream-id'")
    from broker.app import open_archive
    from broker.tables import Column, render
    from broker.text import printable
    from followup.store import FollowupStore

    store = FollowupStore(open_archive(_settings(), read_only=True).engine)
    rows = store.list(upstream_id=upstream_id, limit=limit)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row.document | {"withdrawn": row.withdrawn, "withdrawn_by": row.withdrawn_by}))
        return
    total = store.count(upstream_id=upstream_id)
    which = f" of {printable(upstream_id)}" if upstream_id is not None else ""
    more = f" (--limit {limit})" if len(rows) < total else ""
    typer.echo(f"showing {len(rows)} of {total} follow-up result(s){which}, newest first{more}")
    if not rows:
        return
    columns = [Column("created"), Column("request", cut="middle"), Column("kind"), Column("status"),
               Column("event", cut="middle")]
    if wide:  # the retraction that withdrew a result (its status says "withdrawn" anyway)
        columns.append(Column("withdrawn by"))
    cells = []
    for row in rows:
        created = str(row.document.get("created_at") or "")
        line = [created if wide else created[:16].replace("T", " "), row.request_id, row.kind, row.status,
                row.event_id] + ([row.withdrawn_by or ""] if wide else [])
        cells.append([printable(c) for c in line])
    order = [(1, 17), (4, 24), (1, 12), (4, 16)]  # the request id (a hash) gives way first; the event id keeps the most
    typer.echo(render(columns, cells, wide=wide, order=order))
