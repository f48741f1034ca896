"""``mma-broker filters`` commands: list, try, explain and re-run filters.

A CLI plugin: ``pyproject.toml`` registers :data:`app` under the entry-point group
``mma_broker.cli`` as ``filters``. Mounting imports this module on every
``mma-broker`` command, so it imports typer and the standard library only; each
command imports what it needs when it runs.

* ``filters list [--json]``: the installed filter plugins (name, version, package,
  sources, description, parameters with their types, bounds, defaults and docs) and
  the filters the settings enable (``[[filters.filters]]``), each built to check its
  parameters.
* ``filters test NAME FILE... [--set KEY=VALUE ...] [--json]``: runs one filter on
  alert files offline — decode (:func:`broker.sources.decode`, every alert of a
  multi-alert file) → enrich what the bytes determine
  (:class:`filters.offline.OfflineEnricher`) → :class:`filters.engine.FilterSet`
  (so a filter that raises or overruns is isolated as in the stage). NAME is a plugin
  or an instance the settings enable (its parameters, then ``--set`` over them).
  ``--json`` prints one line per alert, exactly ``{"id", "accepted", "reason"}``.
* ``filters why EVENT_ID``: every archived decision on the Event (:mod:`filters.store`).
* ``filters run NAME --since T --until T [--to-topic T | --out FILE]``: the time
  machine (:func:`filters.rerun.rerun`) with a progress bar and a summary.

Errors are one line on stderr, ``mma-broker: error: ...``; a file that fails does not
stop the others, and the exit code is then 1.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(name="filters", no_args_is_help=True, add_completion=False,
                  help="Filter plugins: list them, try one on alert files, explain and re-run decisions.")


@app.callback()
def _group() -> None:
    """Filter plugins and their decisions."""


class _Failed(Exception):
    """A command's own error: printed as one line, exit code 1."""


def _error(message: object) -> None:
    from broker.errors import BrokerError, cli_error_lines

    for line in cli_error_lines(BrokerError(" ".join(str(message).split()))):
        print(line, file=sys.stderr, flush=True)


def _fail(message: object) -> typer.Exit:
    _error(message)
    return typer.Exit(1)


def _settings():
    from broker.app import current_app

    return current_app().settings


def _console(stderr: bool = False):
    # markup and emoji off: ids, reasons and details come from alerts and plugins
    from rich.console import Console

    con = Console(stderr=stderr, highlight=False, markup=False, emoji=False, soft_wrap=True)
    if not con.is_terminal:  # a file or a pipe: tables as wide as they need, not 80 columns
        con.width = 160
    return con


def _text(value: object, limit: int = 300):
    """Printable one-line rich Text (never markup); leading spaces kept as indentation."""
    from rich.text import Text

    from broker.text import one_line

    text = "" if value is None else str(value)
    indent = len(text) - len(text.lstrip(" "))
    return Text(" " * indent + one_line(text, limit))


# ------------------------------------------------------------------ parameters
def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` options as a dict: VALUE as JSON when it parses, else the string.

    Parameters
    ----------
    items : list of str
        ``max_magpsf_mag=18.5``, ``min_drb=null``, ``sources=["a","b"]``, ``name=x``.

    Returns
    -------
    dict

    Raises
    ------
    ValueError
        No ``=``, an empty key, a key given twice, or a non-finite number (``NaN``,
        ``Infinity``, or a literal that overflows a float); the message names the key.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {item[:60]!r}: expected KEY=VALUE")
        if key in out:
            raise ValueError(f"--set {key}: given twice")
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            value = text  # not JSON: a string
        except _NonFinite:
            raise ValueError(f"--set {key}: {text[:40]!r} is not a finite number") from None
        if not _finite(value):
            raise ValueError(f"--set {key}: {text[:40]!r} holds a number that is not finite")
        out[key] = value
    return out


class _NonFinite(Exception):
    pass


def _no_constant(name: str) -> Any:
    raise _NonFinite(name)


def _finite(value: Any, depth: int = 0) -> bool:
    if depth > 50:
        return True  # deeper values are refused by the config's types
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v, depth + 1) for v in value)
    return True


def field_docs(config_cls: type) -> dict[str, str]:
    """Each field's documentation: ``Field(description=...)`` or the docstring under it.

    Parameters
    ----------
    config_cls : type
        A :class:`filters.api.FilterConfig` subclass.

    Returns
    -------
    dict
        Field name → first paragraph of its documentation (fields without one left out).
    """
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(config_cls.__mro__):
        if klass.__module__.startswith("pydantic") or klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(inspect.cleandoc(nxt.value.value).split("\n\n")[0].split())
    for name, info in getattr(config_cls, "model_fields", {}).items():
        if info.description:
            docs[name] = " ".join(info.description.split())
    return docs


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _bounds(info: Any) -> str:
    marks = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "len >=", "max_length": "len <="}
    out = []
    for meta in info.metadata:
        for attr, sign in marks.items():
            value = getattr(meta, attr, None)
            if value is not None:
                out.append(f"{sign} {value!r}")
    return ", ".join(out)


def describe_plugin(name: str) -> dict[str, Any]:
    """What ``filters list`` says of one installed plugin (JSON-ready).

    Returns
    -------
    dict
        ``name``, ``target`` (``module:Class``), ``package``, ``version``,
        ``description``, ``sources`` (sorted, or None: all), ``parameters`` (list of
        ``{name, type, default, bounds, doc}``), ``error`` (None, or why it cannot be
        loaded: then the other fields may be None).
    """
    from broker import plugins
    from filters.api import FilterConfigError
    from filters.registry import filter_class

    ep = plugins.available(plugins.FILTERS).get(name)
    out: dict[str, Any] = {"name": name, "target": ep.value if ep else None,
                           "package": getattr(getattr(ep, "dist", None), "name", None), "version": None,
                           "description": None, "sources": None, "parameters": [], "error": None}
    try:
        cls = filter_class(name)
    except FilterConfigError as exc:
        out["error"] = str(exc)
        return out
    out.update(version=str(cls.version), description=cls.description,
               sources=None if cls.sources is None else sorted(cls.sources))
    docs = field_docs(cls.Config)
    for field, info in cls.Config.model_fields.items():
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        try:
            json.dumps(default, allow_nan=False)
        except (TypeError, ValueError):
            default = repr(default)
        out["parameters"].append({"name": field, "type": _type_name(info.annotation), "default": default,
                                  "required": info.is_required(), "bounds": _bounds(info),
                                  "doc": docs.get(field, "")})
    return out


def _enabled(settings: Any) -> list[dict[str, Any]]:
    """The enabled filter instances, each built to check its parameters."""
    from filters.api import FilterConfigError
    from filters.registry import filter_class

    section = getattr(settings, "filters", None)
    if section is None:
        return []
    prefix = settings.kafka.topic_prefix + section.topic_prefix
    rows = []
    for entry in section.filters:
        row = {"name": entry.name, "plugin": entry.plugin_name, "params": dict(entry.params),
               "time_budget_ms": entry.time_budget_ms, "publish": entry.publish,
               "topic": prefix + entry.name if entry.publish else None, "stage_enabled": section.enabled,
               "config_hash": None, "error": None}
        try:
            row["config_hash"] = filter_class(entry.plugin_name).from_params(entry.params).config_hash
        except FilterConfigError as exc:
            row["error"] = str(exc)
        rows.append(row)
    return rows


@app.command("list")
def list_filters(as_json: bool = typer.Option(False, "--json", help="JSON Lines: one object per plugin, "
                                                                     "then one per enabled instance.")) -> None:
    """The installed filter plugins with their parameters, and the filters the settings enable."""
    from broker.errors import BrokerError
    from filters.registry import available

    try:
        names = list(available())
    except BrokerError as exc:
        raise _fail(exc) from None
    plugins_ = [describe_plugin(n) for n in names]
    failed = [p for p in plugins_ if p["error"]]
    try:
        enabled = _enabled(_settings())
    except BrokerError as exc:  # settings that do not load: the plugins are still listed
        enabled, settings_error = [], exc
    else:
        settings_error = None
    if as_json:
        for p in plugins_:
            print(json.dumps({"kind": "plugin", **p}, default=str))
        for e in enabled:
            print(json.dumps({"kind": "enabled", **e}, default=str))
    else:
        _print_list(plugins_, enabled)
    for p in failed:
        _error(p["error"])
    for e in enabled:
        if e["error"]:
            _error(f"[filters] {e['name']}: {e['error']}")
    if settings_error is not None:
        _error(settings_error)
    raise typer.Exit(1 if failed or settings_error or any(e["error"] for e in enabled) else 0)


def _print_list(plugins_: list[dict[str, Any]], enabled: list[dict[str, Any]]) -> None:
    con = _console()
    if not plugins_:
        con.print("no filter plugins installed (entry-point group mma_broker.filters)")
    for p in plugins_:
        title = f"{p['name']} {p['version'] or ''}".strip()
        con.print(_text(f"{title}  ({p['package'] or '?'}: {p['target'] or '?'})"))
        if p["error"]:
            con.print(_text(f"  cannot load: {p['error']}"))
            con.print()
            continue
        con.print(_text(f"  {p['description']}"))
        con.print(_text(f"  sources: {', '.join(p['sources']) if p['sources'] is not None else 'all'}"))
        for q in p["parameters"]:
            default = "(required)" if q["required"] else "= " + json.dumps(q["default"], default=str)
            bounds = f"  ({q['bounds']})" if q["bounds"] else ""
            con.print(_text(f"  {q['name']}: {q['type']} {default}{bounds}", 2000))
            if q["doc"]:
                con.print(_text("      " + q["doc"].replace("``", ""), 2000))
        con.print()
    if not enabled:
        con.print("enabled in the settings: none (add [[filters.filters]] entries)")
        return
    con.print("enabled in the settings ([filters] filters):")
    for e in enabled:
        topic = e["topic"] or "(decisions archived, not published)"
        state = f"config hash {e['config_hash']}" if e["config_hash"] else "BAD PARAMETERS (see below)"
        con.print(_text(f"  {e['name']}: plugin {e['plugin']} -> {topic}, budget {e['time_budget_ms']:g} ms, {state}",
                        2000))
        con.print(_text(f"      params {json.dumps(e['params'], sort_keys=True, default=str)}", 2000))
    if not enabled[0]["stage_enabled"]:
        con.print("the filter stage is off ([filters] enabled = false)")


# ------------------------------------------------------------------ test
def build_test_filter(name: str, overrides: dict[str, Any], settings: Any, time_budget_ms: float | None = None):
    """The :class:`filters.engine.FilterSet` of one filter for ``filters test``.

    Parameters
    ----------
    name : str
        An instance enabled in ``[filters] filters`` (its plugin and parameters are
        used) or a plugin name (its defaults).
    overrides : dict
        ``--set`` values, over the instance's parameters.
    settings : broker.config.Settings
    time_budget_ms : float or None
        None: the instance's budget, else 20 ms.

    Returns
    -------
    (filters.engine.FilterSet, dict)
        The set and the parameters used.

    Raises
    ------
    filters.api.FilterConfigError
        Unknown plugin, a ``--set`` key the filter does not have (named, with the
        keys it has), or a value its config refuses (named).
    """
    from filters.api import FilterConfigError
    from filters.engine import ConfiguredFilter, FilterSet
    from filters.registry import filter_class

    section = getattr(settings, "filters", None)
    entry = next((e for e in section.filters if e.name == name), None) if section is not None else None
    plugin = entry.plugin_name if entry is not None else name
    cls = filter_class(plugin)
    known = list(cls.Config.model_fields)
    for key in overrides:
        if key not in known:
            raise FilterConfigError(f"--set {key}: filter {plugin!r} has no parameter {key!r} "
                                    f"(its parameters: {', '.join(known) or 'none'})")
    params = {**(dict(entry.params) if entry is not None else {}), **overrides}
    try:
        f = cls.from_params(params)
    except FilterConfigError as exc:
        raise FilterConfigError(f"{exc} (--set or [filters] params)") from None
    budget = time_budget_ms if time_budget_ms is not None else entry.time_budget_ms if entry is not None else 20.0
    quarantine = section.quarantine_after if section is not None else 100
    return FilterSet([ConfiguredFilter(name, f, budget)], quarantine_after=quarantine), params


@app.command("test")
def test(
    name: str = typer.Argument(..., help="Filter plugin, or an instance enabled in the settings (filters.filters)."),
    files: list[Path] = typer.Argument(..., help="Alert files (JSON, VOEvent XML, Avro with one or many alerts) "
                                                "or folders (searched for .json, .xml, .avro)."),
    sets: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="A filter parameter (VALUE read as JSON when it parses, else a string); "
                                        "repeat for several."),
    as_json: bool = typer.Option(False, "--json", help='One line per alert: {"id", "accepted", "reason"}.'),
    time_budget_ms: Optional[float] = typer.Option(None, "--time-budget-ms", min=0.001, max=60_000,
                                                   help="Per-call budget, ms (default: the instance's, else 20)."),
) -> None:
    """Run one filter on alert files offline: decode, enrich what the bytes give, filter."""
    from broker.errors import BrokerError

    try:
        overrides = parse_set(sets)
    except ValueError as exc:
        raise _fail(exc) from None
    try:
        settings = _settings()
        fs, params = build_test_filter(name, overrides, settings, time_budget_ms)
    except BrokerError as exc:
        raise _fail(exc) from None
    import logging

    from broker.app import provenance
    from filters.offline import OfflineEnricher

    rows: list[tuple[str, str, Any]] = []
    cf = fs.filters[0]
    enricher = OfflineEnricher(provenance(settings, "filters.test").__dict__)
    # a filter's failures are reported below, one line each: the engine's warnings would repeat
    # them (kept with --verbose/--debug); restored after, the process may run other commands
    engine_log = logging.getLogger("filters.engine")
    saved_level = engine_log.level
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        engine_log.setLevel(logging.ERROR)
    try:
        failed = _run_test(fs, files, settings, enricher, as_json, rows)
    finally:
        engine_log.setLevel(saved_level)
    if not as_json:
        _print_test(cf, params, rows)
    raise typer.Exit(1 if failed else 0)


def _run_test(fs: Any, files: list[Path], settings: Any, enricher: Any, as_json: bool,
              rows: list[tuple[str, str, Any]]) -> int:
    """Decode, enrich and filter each file (``filters test``); the number of failures."""
    from broker.errors import BrokerError
    from broker.replay import display_path, expand_paths, failure_reason, read_alert_file
    from broker.sources import decode
    from filters.api import FilterInput

    cf = fs.filters[0]
    failed = 0

    def report(path: Path | str, reason: str) -> None:
        nonlocal failed
        failed += 1
        _error(f"{display_path(path)}: {reason}")

    for given in files:
        found = False
        for path in expand_paths([given], on_error=report):
            found = True
            shown = display_path(path)
            try:
                raw = read_alert_file(path)
                events = decode(raw, settings.limits)
                if not events:
                    raise BrokerError("holds no alert")
            except Exception as exc:  # noqa: BLE001 - one file must not stop the others
                report(path, failure_reason(exc))
                continue
            for ev in events:
                try:
                    alert = FilterInput(ev, enricher.enrich(ev, raw), raw=raw)
                except Exception as exc:  # noqa: BLE001 - an enrichment bug: this alert only
                    report(path, f"{ev.id}: enrichment failed: {failure_reason(exc)}")
                    continue
                decisions = fs.evaluate(alert)
                d = decisions[0] if decisions else None
                if d is not None and d.error is not None:
                    report(path, f"{ev.id}: filter {cf.name}: {d.error}")
                accepted = d.accepted if d is not None else False
                reason = d.reason if d is not None else "source_not_handled"
                if as_json:
                    print(json.dumps({"id": ev.id, "accepted": accepted, "reason": reason}), flush=True)
                else:
                    rows.append((shown, ev.id, d))
        if not found and Path(given).is_dir():
            report(given, "no alert files (.json, .xml, .avro) in this folder")
    return failed


def _print_test(cf: Any, params: dict[str, Any], rows: list[tuple[str, str, Any]]) -> None:
    from rich.table import Table

    f = cf.filter
    con = _console()
    con.print(_text(f"filter {cf.name} (plugin {f.name} {f.version}, config hash {f.config_hash}, "
                    f"params {json.dumps(params, sort_keys=True, default=str)})", 2000))
    t = Table(box=None, pad_edge=False, show_edge=False)
    t.add_column("event", no_wrap=True)
    t.add_column("accepted", no_wrap=True)
    t.add_column("reason", no_wrap=True)
    t.add_column("detail", overflow="fold", min_width=20)
    t.add_column("ms", justify="right", no_wrap=True)
    n_acc = 0
    for shown, event_id, d in rows:
        if d is None:
            verdict, reason, detail, ms = "-", "source_not_handled", f"{f.name} reads {', '.join(sorted(f.sources))}", ""
        else:
            n_acc += d.accepted
            verdict = "ERROR" if d.error else "yes" if d.accepted else "no"
            reason = d.reason
            detail = d.error or (d.result.detail if d.result is not None else "") or ""
            ms = f"{d.elapsed_ms:.2f}" + (" (over budget)" if d.over_budget else "")
        t.add_row(_text(event_id, 80), _text(verdict), _text(reason), _text(detail), _text(ms))
    if rows:
        con.print(t)
    con.print(f"{len(rows)} alert(s), {n_acc} accepted")


# ------------------------------------------------------------------ why
@app.command("why")
def why(
    event_id: str = typer.Argument(..., metavar="EVENT_ID", help="Event id (mma-broker events list shows them)."),
    run: Optional[str] = typer.Option(None, "--run", help="Only this run: 'live' or a re-run id."),
    as_json: bool = typer.Option(False, "--json", help="JSON Lines: one archived decision per line."),
) -> None:
    """Every archived filter decision on an Event: live ones first, then re-runs."""
    from broker.app import open_archive
    from broker.errors import BrokerError
    from broker.event import MAX_ID_CHARS
    from broker.text import printable

    if not 0 < len(event_id) <= MAX_ID_CHARS or printable(event_id) != event_id:
        raise _fail(f"EVENT_ID: expected 1 to {MAX_ID_CHARS} printable characters")
    try:
        archive = open_archive(_settings(), read_only=True)
    except BrokerError as exc:
        raise _fail(exc) from None
    try:
        from filters.store import DecisionStore

        rows = DecisionStore(archive.engine).why(event_id, run=run)
        known = bool(rows) or archive.get(event_id) is not None
    finally:
        archive.close()
    if not known:
        raise _fail(f"{event_id}: no such Event in the archive")
    if as_json:
        for r in rows:
            print(json.dumps(r.to_json_dict(), default=str))
        return
    _print_why(event_id, rows)


def _print_why(event_id: str, rows: list[Any]) -> None:
    from rich.table import Table

    con = _console()
    if not rows:
        con.print(_text(f"{event_id}: no filter decision archived (the filter stage has not seen it yet, or "
                        "no enabled filter handles its source)", 2000))
        return
    n_acc = sum(r.accepted for r in rows)
    con.print(_text(f"{event_id}: {len(rows)} decision(s), {n_acc} accepted", 2000))
    t = Table(box=None, pad_edge=False, show_edge=False)
    for col in ("run", "filter", "plugin", "config hash", "accepted", "reason", "detail", "decided at"):
        t.add_column(col, no_wrap=col != "detail", overflow="fold")
    for r in rows:
        verdict = "ERROR" if r.error else "yes" if r.accepted else "no"
        detail = r.error or r.detail or ""
        if r.tags:
            detail = f"{detail} [tags: {', '.join(r.tags)}]".strip()
        if r.followup:
            detail = f"{detail} [follow-up: {', '.join(f['kind'] for f in r.followup)}]".strip()
        t.add_row(_text(r.run), _text(r.filter), _text(f"{r.plugin} {r.version}"), _text(r.config_hash),
                  _text(verdict), _text(r.reason), _text(detail),
                  _text(r.to_json_dict()["decided_at"]))
    con.print(t)


# ------------------------------------------------------------------ run (time machine)
def _iso_time(value: str, option: str):
    from datetime import datetime, timezone

    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{option} {value[:40]!r}: not an ISO 8601 time such as 2023-10-12T00:00:00Z") from None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


@app.command("run")
def run(
    name: str = typer.Argument(..., help="Filter plugin, or an instance enabled in the settings (filters.filters)."),
    since: str = typer.Option(..., "--since", help="Start of the period of event time T0 (ISO 8601 UTC, included)."),
    until: str = typer.Option(..., "--until", help="End of the period (ISO 8601 UTC, excluded)."),
    to_topic: Optional[str] = typer.Option(None, "--to-topic",
                                           help="Publish the accepted records to this topic (the Kafka topic_prefix "
                                                "in front), one Kafka transaction per page."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the accepted records to this JSON Lines file."),
    sets: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="A filter parameter, over the instance's (VALUE as JSON when it parses)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Time machine: re-run a filter over the archived alerts of a period, from their raw bytes.

    Every decision is archived under a new run id (``filters why`` shows it); the
    accepted Events go to --to-topic or --out marked as a re-run with the filter
    version, or nowhere (decisions only)."""
    from broker.errors import BrokerError

    if to_topic and out is not None:
        raise _fail("give --to-topic or --out, not both")
    try:
        lo, hi = _iso_time(since, "--since"), _iso_time(until, "--until")
        overrides = parse_set(sets)
    except ValueError as exc:
        raise _fail(exc) from None
    try:
        settings = _settings()
        params = None
        if overrides:
            _, params_used = build_test_filter(name, overrides, settings)
            params = {name: params_used}
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from filters.rerun import rerun

        err = _console(stderr=True)
        with Progress(TextColumn(f"filters run {name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, disable=not err.is_terminal) as bar:
            task = bar.add_task("rerun", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            summary = rerun(settings, [name], lo, hi, to_topic=to_topic, out=out, progress=progress, params=params)
    except (BrokerError, ValueError) as exc:
        raise _fail(exc) from None
    except OSError as exc:  # --out not writable
        raise _fail(f"{out}: {exc.strerror or exc}") from None
    if as_json:
        print(json.dumps(summary.to_json_dict(), default=str))
        return
    con = _console()
    for line in summary.lines():
        con.print(_text(line, 4000))
    con.print(_text(f"  decisions archived under run {summary.run_id}: mma-broker filters why EVENT_ID --run "
                    f"{summary.run_id}", 2000))
