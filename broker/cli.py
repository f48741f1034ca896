"""The ``mma-broker`` command line (also ``python -m broker``).

Errors print one line on stderr and exit 1; ``--debug`` shows the traceback
(the hop-client convention).

No module state: :func:`main` creates the :class:`broker.app.App` of the invocation
and passes it as the click context's ``obj``; commands reach it through
:func:`settings` (or :func:`broker.app.current_app`). Sub-commands of plugins (entry
points ``mma_broker.cli``, e.g. ``mma-broker followup``) are mounted by :func:`main`;
the core never imports them.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from enum import Enum
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from broker.app import App, current_app
from broker.errors import BrokerError, cli_error_lines
from broker.text import one_line, printable

if TYPE_CHECKING:
    from broker.config import Settings

# Start-up (``--help``, ``inspect FILE``): this module imports typer, the standard
# library and broker.app/errors/text only. Kafka, SQLAlchemy, rich, numpy, astropy,
# pydantic-settings and fastavro load inside the commands that use them
# (benchmarks/bench_cli_startup.py measures it).

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Multi-messenger alert broker.")
events_app = typer.Typer(no_args_is_help=True, help="Read the alert archive.")
app.add_typer(events_app, name="events")
dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters: the messages a stage refused, with reasons.")
app.add_typer(dlq_app, name="dlq")


class _LazyConsole:
    """A rich ``Console`` built on first use (rich costs start-up time that most
    commands do not need); ``.real`` is the Console itself."""

    def __init__(self, **options: object) -> None:
        self._options = options
        self._console = None

    @property
    def real(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str):
        return getattr(self.real, name)


# markup and emoji codes off: what we print comes from alerts ("[/x]" in an id would
# raise MarkupError, "[link=...]" would emit a terminal hyperlink, ":x:" an emoji)
out = _LazyConsole(highlight=False, soft_wrap=True, markup=False, emoji=False)
err = _LazyConsole(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)


def settings() -> Settings:
    """The settings of this invocation: ``click.get_current_context().find_object(App).settings``,
    loaded on first use (``--config``, environment, secrets; :func:`broker.config.load_settings`)."""
    return current_app().settings


@app.callback()
def _main(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML settings (see deploy/presets/)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress at INFO level."),
    debug: bool = typer.Option(False, "--debug", help="Full tracebacks and DEBUG logs."),
) -> None:
    application = ctx.find_object(App)
    if application is None:  # invoked without main(), e.g. typer's CliRunner
        application = ctx.obj = App()
    application.config = config
    application.debug = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # broker.kafka.LIBRDKAFKA_LOGGER, spelled out: importing broker.kafka loads confluent-kafka
    logging.getLogger("broker.librdkafka").setLevel(level if (verbose or debug) else logging.ERROR)


# ---------------------------------------------------------------- inspect
@app.command()
def inspect(
    paths: list[Path] = typer.Argument(..., help="Alert files (JSON, VOEvent XML, Avro: one or many alerts) "
                                                 "or folders (searched recursively for .json, .xml, .avro)."),
    as_json: bool = typer.Option(False, "--json", help="JSON Lines, one normalized Event per alert."),
) -> None:
    """Decode and normalize alert files without any server.

    A file that fails gives one line on stderr (file: reason) and the others go on;
    the exit code is then 1."""
    from broker.records import describe_event
    from broker.replay import display_path, expand_paths, failure_reason, read_alert_file
    from broker.sources import decode

    failed = 0

    def report(path: Path, reason: str) -> None:
        nonlocal failed
        failed += 1
        _error(f"{display_path(path)}: {reason}")

    limits = settings().limits
    from broker.sources import lsst

    lsst.configure(getattr(settings(), "lsst", None))  # Rubin schemas by id: registry if configured, else bundled
    for path in expand_paths(paths, on_error=report):
        try:
            events = decode(read_alert_file(path), limits)
            lines = [ev.to_json() if as_json else describe_event(ev, display_path(path)) for ev in events]
        except Exception as exc:  # noqa: BLE001 - one file must not stop the others
            report(path, failure_reason(exc))
            continue
        for line in lines:  # printable already (describe_event) or JSON
            print(line)
    raise typer.Exit(1 if failed else 0)


# ---------------------------------------------------------------- replay
@app.command()
def replay(
    paths: list[Path] = typer.Argument(None, help="Files or folders of alerts."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Messages per second (default: as fast as possible)."),
    topic: Optional[str] = typer.Option(None, "--topic", help="Force this topic instead of the upstream one."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="File listing alert paths/globs."),
    demo: bool = typer.Option(False, "--demo", help="Also the real alerts shipped with the package (broker/data/demo)."),
) -> None:
    """Publish alert files byte for byte to the local Kafka under their upstream topic names."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from broker.kafka import ensure_topics, make_producer
    from broker.replay import demo_files, display_path, expand_paths, read_manifest, replay_files

    s = settings()
    failed: list[Path] = []

    def report(path: Path, reason: str) -> None:
        failed.append(path)
        _error(f"{display_path(path)}: {reason}")

    files = list(expand_paths(paths or [], on_error=report))
    if manifest:
        files += read_manifest(manifest)
    if demo:
        files += demo_files()
    if not files:
        if failed:
            raise typer.Exit(1)
        raise BrokerError("nothing to replay: give files, folders, --manifest or --demo")
    producer = make_producer(s)
    with Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err.real,
                  disable=not err.is_terminal) as bar:
        task = bar.add_task("replay", total=len(files))
        result = replay_files(files, producer, topic_prefix=s.kafka.topic_prefix, topic=topic, rate=rate,
                              progress=lambda n: bar.update(task, completed=n),
                              create_topics=lambda names: ensure_topics(s, sorted(names)), on_error=report)
    from rich.table import Table

    table = Table(title=f"replayed {result.sent} file(s) to {s.kafka.bootstrap_servers}")
    table.add_column("topic")
    table.add_column("messages", justify="right")
    for name, n in sorted(result.per_topic.items()):
        table.add_row(name, str(n))
    err.print(table)
    raise typer.Exit(1 if failed else 0)


# ---------------------------------------------------------------- run
@app.command()
def run(
    stage: list[str] = typer.Option(["all"], "--stage",
                                    help="A registered stage (see `mma-broker stages list`); repeat for several. "
                                         "Default: all."),
    until_caught_up: bool = typer.Option(False, "--until-caught-up", help="Stop when all input partitions are consumed."),
    idle: float = typer.Option(3.0, "--idle", min=0.0, max=3600.0,
                               help="With --until-caught-up: seconds without messages before stopping."),
    lane: list[str] = typer.Option([], "--lane",
                                   help="Run only this lane's enrich and filters loops (a name of [lanes]); "
                                        "repeat for several. Default: every lane. Other stages are not affected."),
    upstream: list[str] = typer.Option([], "--upstream",
                                       help="Run only this [[upstreams]] entry's ingest loop (by name); repeat for "
                                            "several. Default: every upstream. Other stages are not affected."),
) -> None:
    """Run the broker's stages: by default every registered one — ingest (upstreams →
    decode → archive → mma.events) and the INTEGRAL follow-up (mma.events → rules →
    requests → results). With [lanes], enrich and filters run one loop per lane
    (docs/publishing-latency.md); --lane picks them, e.g. one process per lane, the
    optical one under `nice`; --upstream does the same for ingest's loops (the notices'
    upstreams in one process, ZTF's in another)."""
    from broker import stages as registry

    known = registry.registered()
    names = ["all"] if "all" in stage else list(dict.fromkeys(stage))
    unknown = [n for n in names if n != "all" and n not in known]
    if unknown:
        raise BrokerError(f"unknown stage {unknown[0]!r}; registered: {', '.join(known) or 'none'} (or all)")
    app_ = current_app()
    s = app_.settings
    if lane:
        from broker.lanes import lanes_of

        lanes_of(s, lane)  # an unknown lane fails here, before anything starts
        app_.run_lanes = list(dict.fromkeys(lane))
    if upstream:
        names = [up.name for up in s.upstreams]
        unknown = [n for n in upstream if n not in names]
        if unknown:
            raise BrokerError(f"--upstream {unknown[0]}: not an [[upstreams]] entry ({', '.join(names) or 'none'})")
        app_.run_upstreams = list(dict.fromkeys(upstream))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    specs = registry.build(app_, names, until_caught_up=until_caught_up)
    registry.check_unique(specs)
    server = app_.metrics.serve_settings(s.metrics) if not until_caught_up else None
    if server is not None:
        err.print(f"metrics and health: {server.url}/metrics {server.url}/health", markup=False)
    try:
        registry.run(specs, stop, until_caught_up=until_caught_up, idle_s=idle)
        for spec in specs:
            for item in (spec.summary() if spec.summary else []):
                out.print(item, markup=False) if isinstance(item, str) else out.print(item)
    finally:
        registry.close(specs)
        if server is not None:
            server.close()


stages_app = typer.Typer(no_args_is_help=True, help="The registered stages (entry points mma_broker.stages).")
app.add_typer(stages_app, name="stages")


@stages_app.command("list")
def stages_list(as_json: bool = typer.Option(False, "--json", help="JSON Lines.")) -> None:
    """List the registered stages: name, where it comes from, and what it reads and writes.

    Reading the registry imports no stage; the topics shown are those of the
    configured settings."""
    from broker import stages as registry

    rows = []
    for name, ep in registry.registered().items():
        dist = getattr(ep, "dist", None)
        rows.append({"stage": name, "factory": ep.value,
                     "distribution": f"{dist.name} {dist.version}" if dist is not None else None})
    if as_json:
        for r in rows:
            print(json.dumps(r))
        return
    from rich.table import Table

    t = Table(title=f"{len(rows)} registered stage(s); run one with `mma-broker run --stage NAME`")
    for c in ("stage", "factory", "distribution"):
        t.add_column(c)
    for r in rows:
        t.add_row(*(printable(str(r[c] or "-")) for c in ("stage", "factory", "distribution")))
    out.print(t)


# ---------------------------------------------------------------- subscribe
_TOPIC_NAME = "^[A-Za-z0-9._-]{1,249}$"


def _check_topic_name(name: str) -> str:
    import re

    if not re.fullmatch(_TOPIC_NAME, name):
        raise typer.BadParameter(f"'{printable(name)}': a Kafka topic name has 1 to 249 letters, digits, "
                                 "'.', '_' or '-'", param_hint="'TOPIC'")
    return name


def _check_group(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        ok = 0 < len(name.encode("utf-8")) <= 255 and printable(name) == name and name.strip() == name
    except UnicodeEncodeError:
        ok = False
    if not ok:
        raise typer.BadParameter(f"'{printable(name)}': 1 to 255 bytes of printable UTF-8 without surrounding "
                                 "spaces", param_hint="'--group'")
    return name


def _check_seconds(value: float | None, option: str) -> float | None:
    import math

    if value is not None and not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"{value!r}: expected a finite number of seconds >= 0", param_hint=f"'{option}'")
    return value


@app.command()
def subscribe(
    topics: list[str] = typer.Argument(..., metavar="TOPIC", help="Topics to read: mma.events, mma.events.enriched, "
                                                 "mma.coincidences, mma.followup.requests, "
                                                 "mma.followup.results, mma.dlq (the configured topic prefix is "
                                                 "added)."),
    group: Optional[str] = typer.Option(None, "--group", help="A named consumer group that commits what was read, "
                                        "so the next run continues after it. Default: a throw-away group that "
                                        "never commits."),
    from_beginning: bool = typer.Option(True, "--from-beginning/--from-now",
                                        help="Without --since: start at the oldest record, or read only new ones "
                                             "(with --group: only for a group that never committed)."),
    since: Optional[str] = typer.Option(None, "--since", help="Start at the first record written at/after this "
                                        "ISO 8601 time, e.g. 2026-11-30T06:00Z (naive: UTC)."),
    max_messages: Optional[int] = typer.Option(None, "--max", min=0, max=2**63 - 1,
                                               help="Stop after this many records (0: only show the lag)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop after this many seconds without a "
                                            "record (default: read until Ctrl-C)."),
    as_json: bool = typer.Option(False, "--json", help="JSON Lines: one object per record, with its topic, "
                                 "partition, offset and headers."),
) -> None:
    """Read the broker's topics as a user would, decoded: Events on mma.events, JSON
    documents on the follow-up topics, dead letters with their reasons on mma.dlq.

    Reads committed transactions only (isolation.level=read_committed). At the end,
    stderr says how many records were read and how many offsets remain behind the
    end of each topic (with --group: the group's lag; transaction markers take an
    offset each, so a reader part way counts a few more offsets than records).
    """
    from broker.client import Subscription, parse_time
    from broker.records import to_json_line

    for name in topics:
        _check_topic_name(name)
    _check_group(group)
    _check_seconds(timeout, "--timeout")
    start = parse_time(since, "--since") if since is not None else None
    s = settings()
    from broker.kafka import client_config

    names = [s.topic(name) for name in topics]
    read: dict[str, int] = {name: 0 for name in names}

    def _stop(*_: object) -> None:  # SIGTERM ends the reading like Ctrl-C: commit, then the lag
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    sub = Subscription(names, client_config(s), group_id=group, since=start, from_beginning=from_beginning,
                       timeout_s=timeout, max_records=max_messages)
    with sub:
        try:
            for rec in sub:
                read[rec.topic] = read.get(rec.topic, 0) + 1
                print(to_json_line(rec) if as_json else rec.describe(), flush=True)
        except KeyboardInterrupt:
            pass
        except BrokenPipeError:  # `| head`: stop reading, say nothing on the closed pipe
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sub.commit()
        try:
            lags = sub.lag()
        except BrokerError as exc:  # the records were read: say so, and why the lag is missing
            for name in names:
                print(printable(f"{name}: read {read.get(name, 0)} record(s); {one_line(exc, 300)}"), file=sys.stderr)
            return
    for lag in lags:
        whose = f"group {lag.group}: " if lag.group else ""
        never = f", {lag.uncommitted} never committed" if lag.uncommitted else ""
        print(printable(f"{lag.topic}: read {read.get(lag.topic, 0)} record(s); {whose}{lag.behind} offset(s) "
                        f"behind the end on {lag.partitions} partition(s){never}"), file=sys.stderr)


# ---------------------------------------------------------------- events
class SourceName(str, Enum):
    """Values of ``Event.source``."""

    igwn = "igwn"
    gcn = "gcn"
    ztf = "ztf"
    lsst = "lsst"
    voevent = "voevent"


def _parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except (ValueError, TypeError):
        raise BrokerError(f"--since {one_line(repr(value), 80)}: expected an ISO 8601 date/time, e.g. 2023-03-07 or "
                          "2023-03-07T15:44Z") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _where(loc) -> str:
    if loc is None:
        return "-"
    if loc.type == "point":
        return f"{loc.ra:.2f} {loc.dec:+.2f}"
    return f"{loc.area_90:,.0f} deg²"


@events_app.command("list")
def events_list(
    source: Optional[SourceName] = typer.Option(None, "--source", help="Only this source.", case_sensitive=False),
    category: Optional[str] = typer.Option(None, "--category", help="Only this category (grb, gw_cbc, "
                                           "neutrino_track, ...: docs/categories.md)."),
    since: Optional[str] = typer.Option(None, "--since", help="Only events with T0 at/after this ISO time."),
    limit: int = typer.Option(50, "--limit", min=1, max=100_000, help="At most this many."),
    as_json: bool = typer.Option(False, "--json", help="JSON Lines."),
    wide: bool = typer.Option(False, "--wide", help="Whole ids and times, however wide the table gets."),
) -> None:
    """List archived events, newest T0 first.

    The table fits the terminal (COLUMNS): long ids are cut in the middle, keeping
    their head and tail; --wide shows everything. "where" is RA Dec (deg) of a point
    localization or the 90% area of a sky map. "category" is "-" for events archived
    before categories existed (`mma-broker events recategorize` fills them).
    """
    from broker.app import open_archive
    from broker.category import CATEGORIES
    from broker.tables import Column, render

    since_t = _parse_since(since)  # every argument is checked before the database is asked
    if category is not None and category not in CATEGORIES:
        raise typer.BadParameter(f"unknown category {one_line(repr(category), 60)}; one of "
                                 f"{', '.join(CATEGORIES)}", param_hint="'--category'")
    rows = open_archive(settings(), read_only=True).list(source=source.value if source else None,
                                                        since=since_t, limit=limit, category=category)
    if as_json:
        for r in rows:
            d = r.event.to_json_dict()
            d["retracted"] = r.retracted
            print(json.dumps(d))
        return
    more = " (--limit reached: there may be more)" if len(rows) == limit else ""
    print(f"{len(rows)} event(s), newest T0 first{more}; R: retracted")
    if not rows:
        return
    columns = [Column("T0"), Column("id", cut="middle"), Column("mission", cut="end"), Column("type", cut="end"),
               Column("category", cut="end"), Column("where", right=True), Column("R")]
    cells = []
    for r in rows:
        ev = r.event
        t0 = ev.time if wide else ev.time[:16].replace("T", " ")
        cells.append([printable(c) for c in (t0, ev.id, ev.mission + (f"/{ev.instrument}" if ev.instrument else ""),
                                             ev.alert_type, ev.category or "-", _where(ev.localization),
                                             "R" if r.retracted else "")])
    # mission, type, category, then the id give way
    order = [(2, 12), (3, 12), (4, 12), (1, 20), (2, 7), (3, 8), (4, 8), (1, 12)]
    print(render(columns, cells, wide=wide, order=order))


@events_app.command("show")
def events_show(event_id: str = typer.Argument(...), raw: bool = typer.Option(False, "--raw", help="Write the original upstream bytes to stdout.")) -> None:
    """Show one archived event (normalized JSON plus archive metadata)."""
    from broker.app import open_archive
    from broker.event import MAX_ID_CHARS

    if not 0 < len(event_id) <= MAX_ID_CHARS or printable(event_id) != event_id:
        raise typer.BadParameter(f"expected an Event id of 1 to {MAX_ID_CHARS} printable characters "
                                 "(see `mma-broker events list --wide`)", param_hint="'EVENT_ID'")
    archive = open_archive(settings(), read_only=True)
    rec = archive.get(event_id)
    if rec is None:
        raise BrokerError(f"no event {event_id!r} in the archive (try `mma-broker events list`)")
    if raw:
        sys.stdout.buffer.write(archive.raw(event_id))
        return
    d = rec.event.to_json_dict()
    d["archive"] = {
        "retracted": rec.retracted,
        "retracted_by": rec.retracted_by,
        "ingested_at": rec.ingested_at.isoformat(),
        "kafka": None if rec.kafka is None else {"topic": rec.kafka.topic, "partition": rec.kafka.partition,
                                                 "offset": rec.kafka.offset},
        "raw_sha256": rec.raw.sha256,
    }
    print(json.dumps(d, indent=2))


@events_app.command("recategorize")
def events_recategorize(
    all_rows: bool = typer.Option(False, "--all", help="Recompute every row (after a change of the rules), "
                                  "not only those archived before categories existed."),
    page_size: int = typer.Option(2000, "--page-size", min=1, max=100_000, help="Rows per transaction."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Fill the category of archived events that have none (archived before migration 0008).

    The category is computed from the archived Event's own columns (docs/categories.md);
    no raw bytes are decoded. Pages commit one by one: an interrupted pass keeps what it
    wrote, and running it again goes on with the rows still without a category.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from broker.app import open_archive
    from broker.archive.recategorize import recategorize

    archive = open_archive(settings())  # a writer: upgrades the schema to 0008 first
    try:
        with Progress(TextColumn("recategorize"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err.real, disable=not err.is_terminal) as bar:
            task = bar.add_task("recategorize", total=None)
            result = recategorize(archive.engine, all_rows=all_rows, page_size=page_size,
                                  progress=lambda done, total: bar.update(task, completed=done, total=total))
    finally:
        archive.close()
    if as_json:
        print(json.dumps(result.to_json_dict()))
        return
    print(f"{result.examined} event(s) examined, {result.updated} updated")
    for name, n in sorted(result.categories.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {name}: {n}")


# events group / events in-region (issue 9): defined beside the stores they read
from broker.enrich.cli_events import register as _register_events_commands  # noqa: E402 - imports typer only

_register_events_commands(events_app)

# archive export / import / gc (issue 14): broker/archive_cli.py imports typer only
from broker.archive_cli import app as _archive_app  # noqa: E402

app.add_typer(_archive_app, name="archive")


# ---------------------------------------------------------------- dlq
@dlq_app.command("raw")
def dlq_raw(
    offset: int = typer.Argument(..., min=0, max=2**63 - 1,
                                 help="Offset of the dead letter on mma.dlq (see `subscribe mma.dlq`)."),
    partition: int = typer.Option(0, "--partition", "-p", min=0, max=2**31 - 1, help="Its partition."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
) -> None:
    """Write the whole original bytes of one dead letter (the DLQ copy of a large one is cut).

    The dead letter's headers give the sha256, size and raw-store location of the
    original; the bytes are read from the raw store and checked against the sha256.
    """
    from confluent_kafka import TopicPartition

    from broker.app import open_archive
    from broker.archive.raw import RawRef
    from broker.kafka import make_consumer

    s = settings()
    topic = s.topic(s.dlq_topic)
    consumer = make_consumer(s, f"{s.group_id}.dlq-raw")
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None or partition not in meta.partitions:
            n = len(meta.partitions) if meta is not None and meta.error is None else 0
            raise BrokerError(f"{topic} has no partition {partition} ({n} partition(s))")
        consumer.assign([TopicPartition(topic, partition, offset)])
        msg = consumer.poll(10)
    finally:
        consumer.close()
    if msg is None or msg.error() or msg.offset() != offset:
        raise BrokerError(f"no dead letter at {topic}[{partition}]@{offset}")
    h = {k: (v or b"").decode("utf-8", "replace") for k, v in msg.headers() or []}
    value = msg.value()
    if h.get("mma.dlq.truncated") == "true" or value is None:
        if not h.get("mma.dlq.sha256"):
            raise BrokerError(f"{topic}[{partition}]@{offset} has no mma.dlq.sha256 header (written by an older broker)")
        seg, off = h.get("mma.dlq.raw.segment") or None, h.get("mma.dlq.raw.offset")
        ref = RawRef(sha256=h["mma.dlq.sha256"], length=int(h.get("mma.dlq.size", "0")), segment=seg,
                     offset=int(off) if off else None)
        value = open_archive(s, read_only=True).raw_by_ref(ref)
    if output is None:
        sys.stdout.buffer.write(value)
    else:
        output.write_bytes(value)
        print(f"{output}: {len(value):,} bytes, sha256 {h.get('mma.dlq.sha256', '-')}", file=sys.stderr)


def _error(message: str) -> None:
    """Print one error line on stderr: ``mma-broker: error: <message on one line>``."""
    for line in cli_error_lines(BrokerError(" ".join(message.split()))):
        print(line, file=sys.stderr, flush=True)


def _show_click_error(exc) -> int:
    """Print a click/typer error as ``mma-broker: error: <one line>`` on stderr, after
    the usage and help hint lines of a usage error; return its exit code."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # its message is the help page
        exc.show()
        return exc.exit_code
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        print(ctx.get_usage(), file=sys.stderr)
        names = ctx.command.get_help_option_names(ctx) if ctx.command.get_help_option(ctx) is not None else ()
        if names:
            print(f"Try '{ctx.command_path} {max(names, key=len)}' for help.", file=sys.stderr)
    _error(exc.format_message())
    return exc.exit_code


def _mount_plugins() -> None:
    """Mount every CLI plugin (entry-point group ``mma_broker.cli``) as ``mma-broker NAME``.

    A plugin that fails to load (or is no ``typer.Typer``, or takes the name of a
    core command) costs one line on stderr naming it and why; the other commands
    still work. Loading imports only the plugin's CLI module, which must stay cheap
    (``followup.cli`` imports typer alone; its commands import the rest).
    """
    from broker import plugins

    groups = {g.name: g.typer_instance for g in app.registered_groups}
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    for name in plugins.available(plugins.CLI):
        try:
            sub = plugins.load(plugins.CLI, name)
            if groups.get(name) is sub:  # main() ran before in this process
                continue
            if not isinstance(sub, typer.Typer):
                raise plugins.PluginError(f"plugin {name!r} ({plugins.CLI}) is not a typer.Typer")
            if name in groups or name in commands:
                raise plugins.PluginError(f"plugin {name!r} ({plugins.CLI}) has the name of a core command")
        except plugins.PluginError as exc:
            _error(one_line(str(exc), 300))
            continue
        app.add_typer(sub, name=name)


def main() -> None:
    """Entry point: run the app, turning BrokerError into a one-line message."""
    import warnings

    # pgserver's platformdirs warns on every start when XDG_RUNTIME_DIR is unset (CI,
    # containers); it changes nothing for us
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    # file names that are not UTF-8 and odd alert text must never crash a print
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    _mount_plugins()
    application = App()
    try:
        code = app(obj=application, standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the CLI boundary
        import click

        # typer may ship its own copy of click: recognise its exceptions by shape
        if isinstance(exc, click.ClickException) or (hasattr(exc, "show") and hasattr(exc, "exit_code")):
            sys.exit(_show_click_error(exc))
        if application.debug:
            raise
        for line in cli_error_lines(exc):  # a SettingsError has one line per problem
            print(line, file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
