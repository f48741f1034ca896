"""``mma-broker events group ID`` and ``mma-broker events in-region ID``.

Added to the core's ``events`` command group by :func:`register` (called from
``broker/cli.py``; a plugin cannot take the name ``events``). Importing this module
imports typer only; the commands import SQLAlchemy and the stores when they run.

* ``events group ID [--json]``: ID is a group key (``igwn:S230518h``,
  ``gcn:fermi:745121685``) or any member Event id. Prints the revisions in arrival
  order with their alert types, the latest, the best localization (kind, 50 % / 90 %
  areas) and whether the group is retracted.
* ``events in-region ID [--level 0.9] [--source S]... [--since T] [--until T]
  [--limit N] [--json]``: the Events (point-localized alerts, ZTF candidates) whose
  position lies in the credible region of a stored localization. ID is a
  localization id (``sha256:...``), an Event id (its localization) or a group key
  (the group's best localization).
* ``events crossmatch ID [--json]``: the catalog cross-match the enrich stage stored
  with the Event (table ``event_crossmatches``), ranked as published.
"""

from __future__ import annotations

import json
from typing import Any, List, Optional

import typer


def _engine():
    from broker.app import open_archive
    from broker.cli import settings

    return open_archive(settings(), read_only=True).engine


def _check_id(value: str, what: str) -> str:
    from broker.event import MAX_ID_CHARS
    from broker.text import printable

    if not 0 < len(value) <= MAX_ID_CHARS or printable(value) != value:
        raise typer.BadParameter(f"expected {what} of 1 to {MAX_ID_CHARS} printable characters", param_hint="'ID'")
    return value


def _area(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.4g} deg²"


def find_group(engine, ident: str):
    """The group of a group key or member Event id.

    Raises
    ------
    broker.errors.BrokerError
        No such group.
    """
    from broker.enrich.groups import GroupStore
    from broker.errors import BrokerError

    store = GroupStore(engine)
    state = store.get(ident) or store.of_event(ident)
    if state is None:
        raise BrokerError(f"no event group {ident!r} (give a group key such as igwn:S230518h or a member event id)")
    return state


def find_ref(engine, ident: str):
    """The LocalizationRef of a localization id, an Event id or a group key.

    Raises
    ------
    broker.errors.BrokerError
        Nothing stored under that id, or the group has no localization.
    """
    from broker.enrich.groups import GroupStore
    from broker.enrich.store import LocalizationStore
    from broker.errors import BrokerError

    store = LocalizationStore(engine)
    ref = store.get_ref(ident) if ident.startswith("sha256:") else None
    ref = ref or store.ref_of(ident)
    if ref is None:
        groups = GroupStore(engine)
        state = groups.get(ident) or groups.of_event(ident)
        if state is not None:
            if state.best_localization is None:
                raise BrokerError(f"event group {state.key!r} has no stored localization")
            ref = state.best_localization
    if ref is None:
        raise BrokerError(f"no stored localization for {ident!r} (a localization id sha256:..., an event id or a "
                          "group key)")
    return ref


def group(ident: str = typer.Argument(..., metavar="ID", help="Group key (igwn:S230518h) or a member event id."),
          as_json: bool = typer.Option(False, "--json", help="One JSON object.")) -> None:
    """Show an event group: revisions in order, latest, best localization, retraction."""
    from broker.text import printable

    _check_id(ident, "a group key or an Event id")
    state = find_group(_engine(), ident)
    if as_json:
        print(json.dumps(state.to_json_dict()))
        return
    print(printable(f"group {state.key} ({state.category}), T0 {state.t0}: {len(state.revisions)} revision(s)"
                    + (", RETRACTED" if state.retracted else "")))
    for i, (eid, kind) in enumerate(zip(state.revisions, state.alert_types), 1):
        mark = "  <- latest" if eid == state.latest else ""
        print(printable(f"  {i:3d}. {kind:<14} {eid}{mark}"))
    ref = state.best_localization
    if ref is None:
        print("  best localization: none stored")
    else:
        print(printable(f"  best localization: {ref.kind}, 50 % {_area(ref.area_50_deg2)}, 90 % "
                        f"{_area(ref.area_90_deg2)}, {ref.n_tiles} tiles ({ref.id[:19]}…)"))
    print(f"  retracted: {'yes' if state.retracted else 'no'}")


def in_region(ident: str = typer.Argument(..., metavar="ID",
                                          help="Localization id (sha256:...), event id or group key."),
              level: float = typer.Option(0.9, "--level", help="Credible level, in (0, 1]."),
              source: Optional[List[str]] = typer.Option(None, "--source", help="Only these sources (repeatable): "
                                                                                 "ztf, gcn, igwn, lsst."),
              since: Optional[str] = typer.Option(None, "--since", help="Only positions at/after this ISO time."),
              until: Optional[str] = typer.Option(None, "--until", help="Only positions before this ISO time."),
              limit: int = typer.Option(1000, "--limit", min=1, max=10_000_000, help="At most this many."),
              as_json: bool = typer.Option(False, "--json", help="One JSON object.")) -> None:
    """Events (alerts with a position, ZTF candidates) inside a localization's credible region."""
    from broker.errors import BrokerError
    from broker.text import printable

    _check_id(ident, "a localization id, an Event id or a group key")
    if not 0 < level <= 1:
        raise BrokerError(f"--level {level}: expected a credible level in (0, 1]")
    for name, value in (("--since", since), ("--until", until)):
        if value is not None:
            from broker.enrich.store import _utc

            try:
                _utc(value)
            except (ValueError, TypeError):
                raise BrokerError(f"{name} {value[:40]!r}: expected an ISO 8601 date/time, e.g. 2023-03-07T15:44Z") \
                    from None
    from broker.enrich.store import LocalizationStore

    engine = _engine()
    ref = find_ref(engine, ident)
    ids = LocalizationStore(engine).events_in_region(ref.id, level, sources=source or None, since=since, until=until,
                                                     limit=limit)
    if as_json:
        out: dict[str, Any] = {"localization": ref.to_json_dict(), "level": level, "events": ids,
                               "limit_reached": len(ids) == limit}
        print(json.dumps(out))
        return
    more = " (--limit reached: there may be more)" if len(ids) == limit else ""
    print(printable(f"{len(ids)} event(s) in the {level:.0%} region of {ref.kind} {ref.id[:19]}… "
                    f"(90 % area {_area(ref.area_90_deg2)}){more}"))
    for eid in ids:
        print(printable(f"  {eid}"))


def crossmatch(event_id: str = typer.Argument(..., metavar="ID", help="Event id."),
               as_json: bool = typer.Option(False, "--json", help="One JSON object: catalog name -> stored result.")
               ) -> None:
    """The catalog cross-match stored with an Event by the enrich stage (broker.enrich.matchstore)."""
    from broker.enrich.matchstore import crossmatches_of
    from broker.errors import BrokerError
    from broker.text import printable

    _check_id(event_id, "an Event id")
    stored = crossmatches_of(_engine(), event_id)
    if as_json:
        print(json.dumps(stored))
        return
    if not stored:
        raise BrokerError(f"no cross-match stored for {event_id!r} (not enriched yet, or no catalog configured in "
                          "[enrich] catalogs)")
    for name, row in stored.items():
        res = row["result"]
        where = (f"in the {res.get('level', 0.9):.0%} region" if row["kind"] == "skymap"
                 else f"within the error at {res.get('containment', 0.9):.0%}")
        print(printable(f"{name}: {row['n_matched']} source(s) {where} ({row['kind']}, "
                        f"{(row['localization_id'] or 'no localization')[:19]}…)"))
        for i, m in enumerate(res.get("matches", []), 1):
            label = m.get("name") or f"row {m['row']}"
            if row["kind"] == "skymap":
                extra = f"searched_prob {m['searched_prob']:.4g}"
                if m.get("searched_prob_vol") is not None:
                    extra += f", searched_prob_vol {m['searched_prob_vol']:.4g}"
            else:
                extra = f"separation {m['separation_deg']:.4g} deg"
            print(printable(f"  {i:3d}. {label} (RA {m['ra_deg']:.4f}, Dec {m['dec_deg']:.4f}): {extra}"))


def register(events_app: typer.Typer) -> None:
    """Add ``group``, ``in-region`` and ``crossmatch`` to the ``events`` command group."""
    events_app.command("group")(group)
    events_app.command("in-region")(in_region)
    events_app.command("crossmatch")(crossmatch)
