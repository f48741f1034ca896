"""``mma-broker serve``: a small HTTP app (FastAPI on uvicorn) serving the artifacts.

Follow-up results refer to their light-curve and sky-map PNGs and JSON by content
address (``mma-broker://artifact/sha256/<hex>``, stored once in the archive's raw
store and indexed in the table ``followup_artifacts``); published messages link them
as ``<[publish] public_base_url>/artifacts/sha256/<hex>``
(:meth:`broker.sinks.config.PublishSettings.artifact_url`), and this app answers those
links. No host path is ever part of a URL or an answer.

Routes
------
``GET /artifacts/sha256/{hex}``
    The bytes, with their media type, ``ETag`` = the sha256 and an immutable
    ``Cache-Control`` (content-addressed bytes never change). 404 when unknown, 400
    when ``hex`` is not 64 lower-case hex digits. The bytes are sha256-verified
    before they are sent (a corrupt store answers 500, never wrong bytes).
``GET /artifacts/sha256/{hex}.json``
    ``{"sha256", "bytes", "media_type", "url"}`` (``url`` under the public base URL).
``GET /health``
    ``{"status": "ok"}``.
``GET /api/...``, ``GET /openapi.json``
    The archive's read JSON API (:mod:`broker.web.api`, docs/web.md) and its OpenAPI.

The core does not import ``followup/``: the artifact index is read by its table name
(:func:`archive_fetcher`), the schema migration 0003 made.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

HEX = re.compile(r"^[0-9a-f]{64}$")

Fetch = Callable[[str], "tuple[bytes, str] | None"]
"""sha256 hex → (bytes, media type), or None when unknown."""


def archive_fetcher(archive: Any) -> Fetch:
    """Read artifacts from the archive: ``followup_artifacts`` (index) + the raw store (bytes).

    Parameters
    ----------
    archive : broker.archive.Archive

    Returns
    -------
    callable
        sha256 hex → (bytes, media type) or None (no such artifact, or no follow-up
        tables in this archive).

    Raises
    ------
    broker.archive.raw.RawStoreError
        (from the callable) The bytes are missing or corrupt.
    """
    import sqlalchemy as sa

    from broker.archive.raw import RawRef

    t = sa.table("followup_artifacts", sa.column("sha256"), sa.column("media_type"), sa.column("length"),
                 sa.column("raw_segment"), sa.column("raw_offset"))

    def fetch(digest: str) -> tuple[bytes, str] | None:
        with archive.engine.connect() as conn:
            if conn.execute(sa.text("SELECT to_regclass('followup_artifacts')")).scalar() is None:
                return None
            row = conn.execute(sa.select(t).where(t.c.sha256 == digest)).mappings().first()
        if row is None:
            return None
        ref = RawRef(sha256=digest, length=row["length"], segment=row["raw_segment"], offset=row["raw_offset"])
        return archive.raw_by_ref(ref), row["media_type"]

    return fetch


def make_app(fetch: Fetch, public_base_url: str, engine: Any = None, settings: Any = None, *,
             write_engine: Any = None) -> Any:
    """The FastAPI application.

    Parameters
    ----------
    fetch : callable
        sha256 hex → (bytes, media type) or None (:func:`archive_fetcher`, or a fake).
    public_base_url : str
        ``[publish] public_base_url`` (no trailing slash), for the links it returns.
    engine : sqlalchemy.Engine, optional
        The archive's database: when given, the read JSON API of :mod:`broker.web.api`
        is mounted under ``/api`` (issue 13). OpenAPI is served at ``/openapi.json``.
    settings : broker.config.Settings, optional
        With ``engine``: the HTML pages of :mod:`broker.web.pages` (home, live stream,
        search, group pages, approval desk) are mounted too, built from these settings.
    write_engine : sqlalchemy.Engine, optional
        The engine the approval desk and the logins write with when ``engine`` is the
        read-only one (:func:`broker.web.readonly.read_engine_for`); default ``engine``.
    """
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse, Response

    app = FastAPI(title="mma-broker", docs_url=None, redoc_url=None, openapi_url="/openapi.json",
                  description="Artifacts of published messages and the archive's read API (docs/web.md).")
    if engine is not None:
        from broker.web.api import install

        install(app, engine)
        if settings is not None:
            from broker.web.pages import install as install_pages

            install_pages(app, engine=engine, settings=settings, fetch=fetch,
                          extra={"write_engine": write_engine if write_engine is not None else engine})
    base = public_base_url.rstrip("/")

    def _get(name: str) -> tuple[str, bytes, str]:
        if not HEX.match(name):
            raise HTTPException(400, "an artifact is named by 64 lower-case hex digits (its sha256)")
        try:
            found = fetch(name)
        except Exception as exc:  # noqa: BLE001 - never a traceback, a path or a secret to the client
            log.warning("artifact %s unreadable: %s", name[:12], type(exc).__name__)
            raise HTTPException(500, "artifact unreadable") from None
        if found is None:
            raise HTTPException(404, "no such artifact")
        data, media_type = found
        if hashlib.sha256(data).hexdigest() != name:
            raise HTTPException(500, "artifact unreadable")
        return name, data, media_type

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    # response_model=None: the bytes are the answer (and OpenAPI cannot resolve the local Response annotation)
    @app.get("/artifacts/sha256/{name}", response_model=None, summary="An artifact's bytes (or .json: its metadata)")
    def artifact(name: str) -> Response:
        if name.endswith(".json"):
            digest, data, media_type = _get(name.removesuffix(".json"))
            return JSONResponse({"sha256": digest, "bytes": len(data), "media_type": media_type,
                                 "url": f"{base}/artifacts/sha256/{digest}"})
        digest, data, media_type = _get(name)
        return Response(content=data, media_type=media_type,
                        headers={"ETag": f'"{digest}"', "Cache-Control": "public, max-age=31536000, immutable"})

    return app


def freeze_after_imports() -> None:
    """Import the plotting stack up front, then move every object alive into gc's permanent generation.

    The pages draw with matplotlib, astropy and ligo.skymap; imported lazily, their
    ~10^6 module objects sit in the collector's oldest generation, and each full
    collection walks them: ``bench_web_group.py --gc-freeze`` measured such pauses of
    ~170 ms inside single requests (``moc.json`` p95 136 → 22 ms with the freeze, at
    10^5 Events; docs/web.md). Objects made later are collected as usual.
    """
    import gc
    import warnings

    import astropy.units  # noqa: F401
    import matplotlib.figure  # noqa: F401
    from astropy.utils.exceptions import AstropyDeprecationWarning
    from astropy.visualization.wcsaxes import SphericalCircle  # noqa: F401

    with warnings.catch_warnings():  # ligo.skymap 2.5 imports a module reproject deprecated: not the user's concern
        warnings.simplefilter("ignore", AstropyDeprecationWarning)
        import ligo.skymap.plot  # noqa: F401  (registers the astro projections)

    gc.collect()
    gc.freeze()


def serve(settings: Any, *, host: str | None = None, port: int | None = None) -> None:
    """Run the app on uvicorn until SIGINT/SIGTERM (``mma-broker serve``)."""
    from broker.app import open_archive

    p = settings.publish
    archive = open_archive(settings, read_only=True)
    reader = None
    try:
        from broker.web.readonly import read_engine_for

        reader = read_engine_for(settings, archive.engine)  # pages and /api: SET ROLE, read-only transactions
        app = make_app(archive_fetcher(archive), p.public_base_url, reader, settings, write_engine=archive.engine)
        from broker.web.live import uvicorn_server  # ends open /api/stream responses at shutdown

        freeze_after_imports()

        uvicorn_server(app, host=host or p.serve_host, port=p.serve_port if port is None else port,
                       log_level="warning", access_log=False, timeout_graceful_shutdown=3).run()
    finally:
        if reader is not None:
            reader.dispose()
        archive.close()
