"""The HTML pages of ``mma-broker serve`` (issue 13): shared templates, static files, hooks.

Every page module (home and search, the event group page, the approval desk) renders a
Jinja2 template that extends ``base.html`` (blocks ``title``, ``head``, ``content``,
``scripts``) and registers its routes through an ``install(app, ctx)`` function, listed in
:data:`PAGE_MODULES`. :func:`broker.sinks.web.make_app` calls :func:`install`.

Static files (CSS, the page scripts, and the Aladin Lite bundle fetched from npm by
``deploy/setup.sh`` into ``static/vendor/``) are served under ``/static``; nothing a page
loads comes from another host, except the survey images Aladin Lite itself asks for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"

PAGE_MODULES: list[str] = ["broker.web.live", "broker.web.home", "broker.web.group", "broker.web.group_extra",
                          "broker.web.desk"]
"""Modules whose ``install(app, ctx)`` adds page routes, in order."""


@dataclass
class PageContext:
    """What page modules get from :func:`install`.

    Attributes
    ----------
    engine : sqlalchemy.Engine or None
        The archive's database (None: the app serves artifacts only, no pages).
    settings : broker.config.Settings or None
        The settings ``serve`` was built from (Kafka, publish, web...).
    fetch : callable
        sha256 hex → (bytes, media type) or None: the artifact reader.
    templates : starlette.templating.Jinja2Templates
        The shared template set (``base.html`` and every page's template).
    extra : dict
        Anything a page module shares with another (e.g. the live stream hub).
    """

    engine: Any
    settings: Any
    fetch: Any
    templates: Any
    extra: dict = field(default_factory=dict)


def make_templates() -> Any:
    """The shared :class:`~starlette.templating.Jinja2Templates` (autoescaping on)."""
    from fastapi.templating import Jinja2Templates

    return Jinja2Templates(directory=str(TEMPLATES_DIR))


def install(app: Any, *, engine: Any, settings: Any, fetch: Any, extra: dict | None = None) -> PageContext:
    """Mount ``/static`` and every page module of :data:`PAGE_MODULES` on ``app``.

    ``extra`` starts ``ctx.extra``: ``serve`` puts the broker's writing engine there as
    ``write_engine`` (the approval desk and the logins write; ``engine`` is then the
    read-only one of :mod:`broker.web.readonly`).

    Returns
    -------
    PageContext
        The context handed to each module's ``install(app, ctx)``.
    """
    from fastapi.staticfiles import StaticFiles

    ctx = PageContext(engine=engine, settings=settings, fetch=fetch, templates=make_templates(), extra=dict(extra or {}))
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    for name in PAGE_MODULES:
        importlib.import_module(name).install(app, ctx)
    return ctx


def raw_store(ctx: PageContext) -> Any:
    """The archive's raw store for the pages (notices, optical packets), made once per app.

    ``ctx.extra["archive"]``'s when the app shares its Archive, else one built from the
    settings (``[archive] raw_store``) that reads with ``ctx.engine``; kept in
    ``ctx.extra["raw_store"]``.
    """
    arch = ctx.extra.get("archive")
    if arch is not None:
        return arch.raw_store
    store = ctx.extra.get("raw_store")
    if store is None:
        from broker.app import raw_store as build

        store = build(ctx.settings)
        if getattr(store, "engine", False) is None:
            store.engine = ctx.engine
        ctx.extra["raw_store"] = store
    return store
