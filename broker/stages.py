"""Stages as plugins: what ``mma-broker run`` and ``mma-broker stages list`` run.

A distribution registers a *stage factory* under the entry-point group
``mma_broker.stages`` (:mod:`broker.plugins`)::

    [project.entry-points."mma_broker.stages"]
    ingest = "broker.pipeline.ingest:stages"
    followup = "followup.worker:stages"

A factory is called as ``factory(app, until_caught_up=...)`` with the
:class:`broker.app.App` and returns a list of :class:`StageSpec` — one per consumer
loop (ingest: one per upstream; follow-up: trigger and worker), each a
:class:`broker.pipeline.runner.StageRunner` ready to run. The core never imports a
plugin: it finds stages by name here.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker import plugins
from broker.errors import BrokerError

log = logging.getLogger(__name__)


@dataclass
class StageSpec:
    """One consumer loop of a stage, ready to run.

    Attributes
    ----------
    name : str
        Unique name (``ingest.notices``, ``followup.worker``): logs, metrics, the
        consumer group suffix and the transactional id.
    runner : StageRunner
    inputs : list of str
        Topics (or ``^regex`` patterns) it reads.
    outputs : list of str
        Topics it writes (besides the dead-letter topic).
    after : list of str
        Names of loops that feed it: with ``--until-caught-up`` it stops only after
        they stopped (so it cannot look caught up before its input arrived). A name
        also stands for the loops named ``<name>.<anything>`` (``filters`` for the lanes'
        ``filters.notices`` and ``filters.optical``, ``followup`` for ``followup.worker``).
    summary : callable, optional
        Returns a list of lines or rich renderables for the end-of-run summary
        (called after the loops stopped, before ``close``).
    close : callable, optional
        Releases what the factory opened (archive, clients), after the loop ends.
    """

    name: str
    runner: Any
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    summary: Callable[[], Any] | None = None
    close: Callable[[], None] | None = None


def registered() -> dict[str, Any]:
    """Entry points of ``mma_broker.stages`` by name (none imported)."""
    return plugins.available(plugins.STAGES)


def build(app: Any, names: Sequence[str], *, until_caught_up: bool = False) -> list[StageSpec]:
    """Build the stages ``names`` (``["all"]``: every registered stage, by name).

    Raises
    ------
    broker.plugins.PluginError
        An unknown stage name (the message lists the known ones) or a plugin that
        fails to load.
    """
    known = registered()
    if list(names) == ["all"]:
        names = list(known)
    specs: list[StageSpec] = []
    for name in names:
        factory = plugins.load(plugins.STAGES, name)
        specs += factory(app, until_caught_up=until_caught_up)
    return _feeders_first(specs)


def _feeders(spec: StageSpec, names: Sequence[str]) -> list[str]:
    """The loops among ``names`` that ``spec.after`` names (exactly, or as ``<name>.*``)."""
    return [n for n in names if n != spec.name and any(n == a or n.startswith(a + ".") for a in spec.after)]


def _feeders_first(specs: list[StageSpec]) -> list[StageSpec]:
    """``specs`` ordered so that a loop comes after the loops it names in ``after``."""
    by_name = {s.name: s for s in specs}
    depth: dict[str, int] = {}

    def d(name: str, seen: frozenset = frozenset()) -> int:
        if name not in depth:
            spec = by_name[name]
            ups = [u for u in _feeders(spec, list(by_name)) if u not in seen]
            depth[name] = 1 + max((d(u, seen | {name}) for u in ups), default=-1)
        return depth[name]

    return sorted(specs, key=lambda s: d(s.name))


def run(specs: Sequence[StageSpec], stop: threading.Event, *, until_caught_up: bool = False,
        idle_s: float = 3.0) -> None:
    """Run every loop on its own thread until ``stop`` (SIGTERM) or, with
    ``until_caught_up``, until each is caught up, idle, and the loops it comes
    ``after`` have stopped.

    Raises
    ------
    Exception
        The first error of any loop (the others are stopped first).
    """
    done = {s.name: threading.Event() for s in specs}
    errors: list[BaseException] = []

    def upstream_done(spec: StageSpec) -> Callable[[], bool]:
        feeders = [done[n] for n in _feeders(spec, list(done))]
        return lambda: all(e.is_set() for e in feeders)

    def target(spec: StageSpec) -> None:
        try:
            spec.runner.run(stop, until_caught_up=until_caught_up, idle_s=idle_s, upstream_done=upstream_done(spec))
        except BaseException as exc:  # surfaced below; stops the others
            log.error("%s: stopped by %s: %s", spec.name, type(exc).__name__, exc)
            errors.append(exc)
            stop.set()
        finally:
            done[spec.name].set()

    # What start-up built (modules, numba, settings, clients: ~300,000 objects) lives as long
    # as the process: out of the collector's full passes, which otherwise walked it every few
    # batches (200 µs of CPU per ZTF alert in the filter stage; docs/filters-speed.md, third
    # pass). Once per process (tests call run() many times)
    if not gc.get_freeze_count():
        gc.collect()
        gc.freeze()
    threads = [threading.Thread(target=target, args=(s,), name=s.name) for s in specs]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(0.2)
    if errors:
        raise errors[0]


def close(specs: Sequence[StageSpec]) -> None:
    """Release what the factories opened (after the summaries were taken)."""
    for s in specs:
        if s.close is not None:
            try:
                s.close()
            except Exception as exc:  # noqa: BLE001 - closing must not hide the run's outcome
                log.warning("%s: close failed: %s", s.name, exc)


def check_unique(specs: Sequence[StageSpec]) -> None:
    """Raise BrokerError when two loops share a name (consumer groups would collide)."""
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise BrokerError(f"two stage loops are named {s.name!r}")
        seen.add(s.name)
