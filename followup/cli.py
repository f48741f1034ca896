"""``mma-broker followup`` commands.

A CLI plugin: ``pyproject.toml`` registers :data:`app` under the entry-point group
``mma_broker.cli`` as ``followup``, and ``mma-broker``'s ``main()`` mounts it as
``mma-broker followup``. Commands get the invocation's settings from the
:class:`broker.app.App` in the click context (:func:`broker.app.current_app`), never
from :mod:`broker.cli`.

Start-up: mounting imports this module on every ``mma-broker`` command, so it imports
typer and the standard library only; each command imports what it needs when it runs.
``followup run EVENT_ID`` publishes a follow-up request for an archived event (or,
with ``--local``, runs it here and prints the summary); ``followup request --t0 ISO
[--ra --dec --error-deg | --skymap FILE] [--name NAME]`` publishes an ad-hoc request
for an event the archive does not hold (a GRB from a circular, an archival campaign)
through Kafka like the automatic ones; ``followup worker`` runs the follow-up stage
(:func:`followup.worker.run_followup_stage`); ``followup results`` lists stored
results and ``followup show ID`` prints one (its text report, ``--json``, and with
``--plot FILE`` its PNG read from the archive).
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
    plot: Optional[Path] = typer.Option(None, "--plot", help="With --local: write the PNG here (default: "
                                        "<home>/followup/<event>.png)."),
    as_json: bool = typer.Option(False, "--json", help="With --local: print the result as JSON."),
) -> None:
    """Request the INTEGRAL follow-up of one archived event (or run it with --local)."""
    from broker.app import open_archive, provenance
    from broker.errors import BrokerError
    from followup.build import build_cache, build_sources, followup_params, output_directory, request_params
    from followup.messages import FollowupRequest
    from followup.worker import stored_enrichment, stored_skymap

    s = _settings()
    analyses = _analyses(analysis)
    if plot is not None and not local:
        raise BrokerError("--plot needs --local; a published request's plot is in the archive: "
                          "`mma-broker followup show REQUEST_ID --plot FILE` once the worker has run")
    archive = open_archive(s, read_only=True)
    record = archive.get(event_id)
    if record is None:
        raise BrokerError(f"no event {event_id!r} in the archive (try `mma-broker events list`)")
    event = record.event
    group, skymap_ref = stored_enrichment(archive.engine, event)
    if not local:
        request = FollowupRequest(kind="analyze", event=event, analyses=analyses, params=request_params(s),
                                  requested_by="cli", provenance=provenance(s, "followup.cli"), group=group,
                                  localization_ref=skymap_ref)
        topic = _publish(s, request)
        typer.echo(f"requested {request.request_id} ({', '.join(analyses)}) for {event.id} on {topic}")
        return
    from broker.enrich.store import LocalizationStore
    from followup.service import run_followup

    skymap = stored_skymap(LocalizationStore(archive.engine), skymap_ref, event_id)
    if skymap is None and event.localization is not None and event.localization.type == "healpix":
        typer.echo(f"{event_id}: no stored sky map (the enrich stage has not processed it, or its map was "
                   f"unreadable); limits at the most probable position", err=True)
    result = run_followup(event, analyses, build_sources(s), build_cache(s, archive.engine), followup_params(s),
                          skymap)
    path = None
    if result.plot_png is not None:
        path = plot or output_directory(s) / f"{event_id.replace('/', '_').replace(':', '_')}.png"
        _write_plot(path, result.plot_png)
    elif plot is not None:
        typer.echo(f"no plot written to {plot}: no SPI-ACS light curve was analysed ({result.status})", err=True)
    if as_json:
        typer.echo(json.dumps(result.to_dict() | {"plot_path": str(path) if path else None}, default=str))
        return
    typer.echo(result.summary_text, nl=False)
    hits = sum(r.hit for r in result.lineage)
    typer.echo(f"\nstatus: {result.status}; steps: {len(result.lineage)} ({hits} from the cache)")
    if path is not None:
        typer.echo(f"plot: {path}")


def _analyses(analysis: str) -> tuple[str, ...]:
    """The ``--analysis`` list, checked."""
    from broker.errors import BrokerError
    from followup.service import ANALYSES

    analyses = tuple(sorted({a.strip().lower() for a in analysis.split(",") if a.strip()}))
    if set(analyses) - set(ANALYSES) or not analyses:
        raise BrokerError(f"--analysis {analysis!r}: choose from {', '.join(ANALYSES)}")
    return analyses


def _publish(settings, request) -> str:
    """Publish one request on the requests topic (hop headers, delivery awaited); return the topic."""
    from broker.kafka import DeliveryTracker, ensure_topics, flush_or_raise, make_producer
    from followup.worker import publish_request

    topic = settings.topic(settings.followup.requests_topic)
    ensure_topics(settings, [topic])
    producer, tracker = make_producer(settings), DeliveryTracker()
    publish_request(producer, topic, request, tracker.callback)
    flush_or_raise(producer, tracker)
    return topic


def _write_plot(path: Path, png: bytes) -> None:
    """Write a PNG, or raise a one-line BrokerError naming the file."""
    from broker.errors import BrokerError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
    except OSError as exc:
        raise BrokerError(f"{path}: cannot write the plot ({exc.strerror or exc})") from None


MAX_NAME_CHARS = 256
"""Longest ``--name`` of an ad-hoc request (it becomes the upstream id and Kafka key)."""


def parse_t0(value: str, now=None) -> str:
    """``--t0`` as ISO 8601 UTC with milliseconds and ``Z``.

    Accepts ``2023-03-07T15:44:06.67``, with ``Z`` or a ``+00:00``-style offset, or a
    space instead of ``T``; a time without offset is UTC.

    Raises
    ------
    broker.errors.BrokerError
        Not a date and time, before 1900, or in the future (``now``, default the
        current UTC time).
    """
    from datetime import datetime, timezone

    from broker.errors import BrokerError
    from broker.event import EARLIEST_TIME, format_time

    text = value.strip()
    try:
        t = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        t = None
    if t is None or len(text) < 16:  # a date alone is no T0
        raise BrokerError(f"--t0 {value!r}: not an ISO 8601 UTC date and time such as 2023-03-07T15:44:06.67Z")
    t = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    now = now or datetime.now(timezone.utc)
    if t.replace(tzinfo=None) < EARLIEST_TIME or t > now:
        raise BrokerError(f"--t0 {value!r}: outside {EARLIEST_TIME:%Y}..now")
    return format_time(t)


def parse_position(ra: float | None, dec: float | None, error_deg: float | None):
    """``--ra --dec --error-deg`` as a point localization (90 % containment), or None.

    Raises
    ------
    broker.errors.BrokerError
        Only some of the three given; NaN or infinite; RA outside [0, 360] deg, Dec
        outside [-90, 90] deg, error radius not in (0, 180] deg.
    """
    from broker.errors import BrokerError
    from broker.event import PointLocalization

    given = {"--ra": ra, "--dec": dec, "--error-deg": error_deg}
    if all(v is None for v in given.values()):
        return None
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise BrokerError(f"--ra, --dec and --error-deg go together: {' and '.join(missing)} missing")
    for name, v in given.items():
        if not math.isfinite(v):
            raise BrokerError(f"{name} {v}: not a finite number")
    if not 0.0 <= ra <= 360.0:
        raise BrokerError(f"--ra {ra:g}: right ascension must be in [0, 360] deg")
    if not -90.0 <= dec <= 90.0:
        raise BrokerError(f"--dec {dec:g}: declination must be in [-90, 90] deg")
    if not 0.0 < error_deg <= 180.0:
        raise BrokerError(f"--error-deg {error_deg:g}: the error radius must be > 0 and <= 180 deg")
    return PointLocalization(ra=ra, dec=dec, error_radius=error_deg, containment=0.9)


def read_user_skymap(path: Path):
    """Read ``--skymap FILE``: its bytes and its localization summary.

    Returns
    -------
    (bytes, broker.event.HealpixLocalization)

    Raises
    ------
    broker.errors.BrokerError
        The file cannot be read, or is not a readable multi-order (NUNIQ) or flat
        (RING/NESTED) HEALPix FITS map, gzipped or not (:func:`broker.skymap.read_skymap`).
    """
    from broker.errors import BrokerError, DecodeError
    from broker.skymap import read_skymap, summarize

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BrokerError(f"--skymap {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        localization = summarize(read_skymap(data))
    except DecodeError as exc:
        raise BrokerError(f"--skymap {path}: not a readable HEALPix sky map ({exc})") from None
    return data, localization


def check_name(name: str | None) -> str | None:
    """``--name``: 1 to :data:`MAX_NAME_CHARS` printable characters, or None.

    Raises
    ------
    broker.errors.BrokerError
    """
    from broker.errors import BrokerError

    if name is None:
        return None
    if not (0 < len(name.strip()) and len(name) <= MAX_NAME_CHARS and name.isprintable()):
        raise BrokerError(f"--name: expected 1 to {MAX_NAME_CHARS} printable characters, e.g. 'GRB 230307A'")
    return name.strip()


@app.command("request")
def request(
    t0: str = typer.Option(..., "--t0", help="Event time T0, ISO 8601 UTC, e.g. 2023-03-07T15:44:06.67Z."),
    ra: Optional[float] = typer.Option(None, "--ra", help="Right ascension, deg (J2000), with --dec and --error-deg."),
    dec: Optional[float] = typer.Option(None, "--dec", help="Declination, deg (J2000)."),
    error_deg: Optional[float] = typer.Option(None, "--error-deg", help="Error radius (90 % containment), deg."),
    skymap: Optional[Path] = typer.Option(None, "--skymap", help="HEALPix sky map FITS (multi-order or flat) "
                                          "instead of a position."),
    name: Optional[str] = typer.Option(None, "--name", help="Event name, e.g. 'GRB 230307A' (default: 'T0 <t0>'). "
                                       "Requests of one name form one follow-up."),
    note: Optional[str] = typer.Option(None, "--note", help="Where the values come from (kept in the request)."),
    analysis: str = typer.Option("spiacs,isgri", "--analysis", help="Comma-separated: spiacs, isgri."),
    as_json: bool = typer.Option(False, "--json", help="Print {request_id, event_id, topic} as JSON."),
) -> None:
    """Ask for the INTEGRAL follow-up of any event: published on mma.followup.requests
    like the automatic requests; prints the request id for `followup show`."""
    from broker.app import open_archive, provenance
    from broker.errors import BrokerError
    from followup.build import request_params
    from followup.messages import FollowupRequest, adhoc_event

    s = _settings()
    t0_iso = parse_t0(t0)
    localization = parse_position(ra, dec, error_deg)
    if skymap is not None and localization is not None:
        raise BrokerError("give either --ra/--dec/--error-deg or --skymap, not both")
    name = check_name(name)
    if note is not None and not (len(note) <= 1000 and note.isprintable()):
        raise BrokerError("--note: expected at most 1,000 printable characters")
    analyses = _analyses(analysis)
    artifact = None
    if skymap is not None:
        data, localization = read_user_skymap(skymap)
        from followup.store import ArtifactStore

        archive = open_archive(s)
        try:
            artifact = ArtifactStore(archive).put(data, "application/fits")
        finally:
            archive.close()
    try:
        event = adhoc_event(t0_iso, name, localization, artifact, note)
    except ValueError as exc:
        from broker.event import validation_reason

        raise BrokerError(f"cannot make an event of these values: {validation_reason(exc)}") from None
    req = FollowupRequest(kind="analyze", event=event, analyses=analyses, params=request_params(s),
                          requested_by="cli", provenance=provenance(s, "followup.cli"))
    topic = _publish(s, req)
    if as_json:
        typer.echo(json.dumps({"request_id": req.request_id, "event_id": event.id, "topic": topic}))
        return
    typer.echo(f"requested {req.request_id} ({', '.join(analyses)}) for {event.upstream_id} "
               f"(T0 {t0_iso}) on {topic}")
    typer.echo(f"once the worker has run: mma-broker followup show {req.request_id[:12]}")


@app.command("worker")
def worker(
    until_caught_up: bool = typer.Option(False, "--until-caught-up", help="Stop when all input is consumed."),
    idle: float = typer.Option(3.0, "--idle", help="With --until-caught-up: idle seconds before stopping."),
) -> None:
    """Run the follow-up workers on mma.followup.requests (the filters stage and `followup run|request` write them)."""
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
    show_all: bool = typer.Option(False, "--all", help="Also requests not analysed (a revision that added "
                                  "nothing to its trigger's follow-up, or of a retracted trigger)."),
) -> None:
    """List stored follow-up results, newest first: "showing N of M" (M: all stored,
    or all of --upstream-id), then one row each; long ids are cut in the middle to
    fit the terminal (COLUMNS) unless --wide. A result replaced by a newer one of its
    trigger says "superseded"; `followup show ID` prints one."""
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
    kinds = None if show_all else ("result", "withdrawal")
    rows = store.list(upstream_id=upstream_id, limit=limit, kinds=kinds)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row.document | {"withdrawn": row.withdrawn, "withdrawn_by": row.withdrawn_by}))
        return
    total = store.count(upstream_id=upstream_id, kinds=kinds)
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
        status = row.status + (", superseded" if row.superseded_by else "")
        line = [created if wide else created[:16].replace("T", " "), row.request_id, row.kind, status,
                row.event_id] + ([row.withdrawn_by or ""] if wide else [])
        cells.append([printable(c) for c in line])
    order = [(1, 17), (4, 24), (1, 12), (4, 16)]  # the request id (a hash) gives way first; the event id keeps the most
    typer.echo(render(columns, cells, wide=wide, order=order))


def _find(store, request_id: str):
    """The stored row of a request id or of a unique prefix of one (>= 6 hex digits)."""
    from broker.errors import BrokerError
    from broker.text import printable

    rid = request_id.strip().lower()
    row = store.get(rid) if len(rid) == 32 else None
    if row is None and len(rid) >= 6:
        found = store.resolve(rid)
        if len(found) > 1:
            raise BrokerError(f"{printable(request_id)}: more than one follow-up starts with it; give more digits")
        row = store.get(found[0]) if found else None
    if row is None:
        raise BrokerError(f"no follow-up result {printable(request_id)!r} (a request waits for `mma-broker followup "
                          f"worker` or `mma-broker run`; stored ones: `mma-broker followup results`)")
    return row


def show_text(row, plot_written: str | None = None) -> str:
    """The text `followup show` prints: the report, then the result's place in its group.

    Parameters
    ----------
    row : followup.store.StoredResult
    plot_written : str, optional
        Where ``--plot`` wrote the PNG (as the user gave it).
    """
    doc = row.document
    lines = [row.summary_text.rstrip("\n"), ""]
    lines.append(f"request {row.request_id}: {row.kind}, status {row.status}; event {row.event_id}")
    if doc.get("group"):
        lines.append(f"follow-up of {doc['group']}" + (f" ({doc['revision_reason']})" if doc.get("revision_reason")
                                                        else ""))
    if doc.get("supersedes"):
        lines.append(f"supersedes {doc['supersedes']}")
    if row.superseded_by:
        lines.append(f"superseded by {row.superseded_by}: see `mma-broker followup show {row.superseded_by[:12]}`")
    if row.kind == "skipped" and doc.get("same_as"):
        lines.append(f"not analysed again: see `mma-broker followup show {doc['same_as'][:12]}`")
    if row.withdrawn:
        lines.append(f"withdrawn: retracted by {row.withdrawn_by}")
    plot = doc.get("plot") or {}
    if plot_written:
        lines.append(f"plot written to {plot_written}")
    elif plot.get("ref") or row.plot_png:
        lines.append(f"plot: {plot.get('ref', 'stored with the result')} "
                     f"(write it with --plot FILE)")
    return "\n".join(lines) + "\n"


@app.command("show")
def show(
    request_id: str = typer.Argument(..., help="Request id (or its first 6+ hex digits), as `followup request` "
                                     "or `followup results` print it."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the result's PNG plot here."),
    as_json: bool = typer.Option(False, "--json", help="Print the stored result document as JSON."),
) -> None:
    """Print one stored follow-up result: its text report, or --json; --plot writes its PNG from the archive."""
    from broker.app import open_archive
    from broker.errors import BrokerError
    from followup.store import ArtifactStore, FollowupStore

    archive = open_archive(_settings(), read_only=True)
    try:
        store = FollowupStore(archive.engine)
        row = _find(store, request_id)
        written = None
        if plot is not None:
            ref = (row.document.get("plot") or {}).get("ref")
            if ref is not None:
                from broker.archive.raw import RawStoreError

                try:
                    png, _ = ArtifactStore(archive).get(ref)
                except (KeyError, RawStoreError) as exc:
                    raise BrokerError(f"the plot of {row.request_id} is not readable from the archive ({exc})") \
                        from None
            elif row.plot_png is not None:  # results stored before artifacts (migration 0003)
                png = row.plot_png
            else:
                raise BrokerError(f"{row.request_id} has no plot ({row.status}: no SPI-ACS light curve was analysed)")
            _write_plot(plot, png)
            written = str(plot)
        if as_json:
            typer.echo(json.dumps(row.document | {"withdrawn": row.withdrawn, "withdrawn_by": row.withdrawn_by,
                                                  "superseded_by": row.superseded_by}))
            if written:
                typer.echo(f"plot written to {written}", err=True)
            return
        typer.echo(show_text(row, written), nl=False)
    finally:
        archive.close()
