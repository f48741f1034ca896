"""Build the broker's parts from settings, in one place (no import-time singletons)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from broker import __version__
from broker.errors import BrokerError

if TYPE_CHECKING:  # the CLI imports this module at start-up: pydantic-settings and fastavro load on use
    from broker.config import Settings
    from broker.serde import Provenance

log = logging.getLogger(__name__)

class App:
    """The broker built once from settings and passed down: to CLI commands (as the
    click context's ``obj``) and to stage factories (:mod:`broker.pipeline.runner`).
    No module holds settings in a global.

    Parameters
    ----------
    settings : Settings, optional
        Already built settings; else they are loaded on first use from ``config``
        (:func:`broker.config.load_settings`), so ``--help`` never reads them.
    config : Path, optional
        TOML preset for the lazy load.
    debug : bool
        Show tracebacks (CLI ``--debug``).
    """

    def __init__(self, settings: Settings | None = None, *, config: Path | None = None, debug: bool = False,
                 loader: Callable[[Path | None], Settings] | None = None) -> None:
        self._settings = settings
        self.config = config
        self.debug = debug
        self._loader = loader
        self._metrics = None

    @property
    def metrics(self):
        """This process's :class:`broker.metrics.Metrics` (its own registry), made on first use."""
        if self._metrics is None:
            from broker.metrics import Metrics

            self._metrics = Metrics()
        return self._metrics

    @property
    def settings(self) -> Settings:
        """The settings, loaded on first access.

        Raises
        ------
        broker.config.SettingsError
            One line per invalid setting (never its value).
        """
        if self._settings is None:
            if self._loader is None:
                from broker.config import load_settings

                self._loader = load_settings
            self._settings = self._loader(self.config)
        return self._settings


def current_app() -> App:
    """The :class:`App` of the running CLI command: the click context's ``obj``.

    ``mma-broker``'s callback puts the App there (``main()`` creates it), so every
    command, a CLI plugin's too (``mma_broker.cli``), reaches the same settings without
    importing :mod:`broker.cli`. A command run outside ``mma-broker`` (a plugin's own
    Typer invoked alone, as tests do) gets a default App on the root context.

    Raises
    ------
    RuntimeError
        Called outside any click command.
    """
    ctx = _click_context()
    if ctx is None:
        raise RuntimeError("current_app() is only available inside an mma-broker command")
    return ctx.find_object(App) or ctx.find_root().ensure_object(App)


def _click_context():
    """The current click context, or None. Typer (>= 0.2x) runs commands on its own
    copy of click, so its copy is asked first; older typers use click itself."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # a typer that uses the click package
        from click import get_current_context
    return get_current_context(silent=True)


NOT_INITIALIZED = "archive not initialized: run `mma-broker run` once"
"""Error of a read command on an archive that was never migrated."""

READ_CONNECT_TIMEOUT_S = 5
"""Connect timeout of read-only commands, s: they fail fast instead of waiting."""

WRITE_CONNECT_TIMEOUT_S = 10
"""Connect timeout of one attempt of the writing stages (which retry), s."""


def database_url(settings: Settings, *, start: bool = True) -> str:
    """The archive URL: the configured one, or the embedded PostgreSQL (started if needed).

    Parameters
    ----------
    start : bool
        False: do not create an embedded data directory that does not exist yet
        (read commands), raise :data:`NOT_INITIALIZED` instead.
    """
    if settings.archive.database_url is not None:
        return settings.archive.database_url.get_secret_value()
    from broker.archive.embedded import embedded_initialized, ensure_embedded_postgres

    pgdata = settings.home / "postgres"
    if not start and not embedded_initialized(pgdata):
        raise BrokerError(NOT_INITIALIZED)
    return ensure_embedded_postgres(pgdata)


def describe_database(url: str) -> str:
    """``host:port/database`` of a URL, for messages: never the user or password."""
    import sqlalchemy as sa

    try:
        u = sa.engine.make_url(url)
    except Exception:  # noqa: BLE001 - validated in the settings; never echo the URL
        return "(unparsable URL)"
    host = u.host or u.query.get("host") or "localhost"
    if isinstance(host, tuple):
        host = ",".join(host)
    port = f":{u.port}" if u.port else ""
    return f"{host}{port}/{u.database or ''}"


def _with_connect_timeout(url: str, seconds: int) -> str:
    """``url`` with libpq's ``connect_timeout`` set, unless it sets one already."""
    import sqlalchemy as sa

    u = sa.engine.make_url(url)
    if not u.drivername.startswith("postgresql") or "connect_timeout" in u.query:
        return url
    return u.update_query_dict({"connect_timeout": str(seconds)}).render_as_string(hide_password=False)


def raw_store(settings: Settings):
    """The raw store of ``[archive]``: PostgreSQL (``raw_store = "postgres"``), segment
    files under ``<home>/raw`` (``file`` and no ``raw_store_postgres_sources``), or both,
    routed by Event source (:class:`~broker.archive.raw.RoutedRawStore`; the default)."""
    from broker.archive.raw import PostgresRawStore, RoutedRawStore, SegmentFileStore

    a = settings.archive
    if a.raw_store == "postgres":
        return PostgresRawStore()
    files = SegmentFileStore(settings.home / "raw")
    if not a.raw_store_postgres_sources:
        return files
    return RoutedRawStore(files, PostgresRawStore(), a.raw_store_postgres_sources)


def open_archive(settings: Settings, *, migrate: bool = True, read_only: bool = False):
    """An :class:`broker.archive.Archive` for these settings.

    Parameters
    ----------
    migrate : bool
        Upgrade the schema to the latest revision first (writers: ``run``, workers).
        Waits out an unreachable database, like writes do.
    read_only : bool
        For read commands: never migrate nor create the embedded database; connect with
        a short timeout and no retry, and check that the schema is the latest one.

    Raises
    ------
    BrokerError
        (read_only) One line: the database is unreachable (naming its host, never the
        password), the archive was never initialized, or its schema is out of date.
    """
    from broker.archive import Archive
    raw = raw_store(settings)
    if read_only:
        url = _with_connect_timeout(database_url(settings, start=False), READ_CONNECT_TIMEOUT_S)
        archive = Archive(url, raw_store=raw, retry_deadline_s=0)
        try:
            check_schema(archive, url)
        except BaseException:
            archive.close()
            raise
        return archive
    archive = Archive(_with_connect_timeout(database_url(settings), WRITE_CONNECT_TIMEOUT_S), raw_store=raw)
    if migrate:
        archive.migrate()
    return archive


def check_schema(archive, url: str) -> None:
    """Raise a one-line BrokerError unless the archive's schema is at the latest revisions.

    "Latest" are the heads of the combined script directory: the core's revisions and
    every migrations plugin's (:func:`broker.archive.store.version_locations`); the
    archive's ``alembic_version`` rows must be exactly those heads.
    """
    import sqlalchemy as sa
    from alembic.script import ScriptDirectory

    from broker.archive.retry import describe
    from broker.archive.store import alembic_config

    where = describe_database(url)
    try:
        with archive.engine.connect() as conn:
            if conn.execute(sa.text("SELECT to_regclass('alembic_version')")).scalar() is None:
                raise BrokerError(NOT_INITIALIZED)
            current = set(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())
    except sa.exc.DBAPIError as exc:
        reason = describe(exc, archive.engine.url.password)
        raise BrokerError(f"cannot reach the archive database at {where}: {reason}") from None
    script = ScriptDirectory.from_config(alembic_config())
    heads = set(script.get_heads())
    if not current:
        raise BrokerError(NOT_INITIALIZED)
    from broker.archive.store import check_not_newer

    check_not_newer(current, script)  # a newer schema: "run mma-broker run" would not help
    if current != heads:
        raise BrokerError(f"archive schema is at revision {', '.join(sorted(current))}, this mma-broker needs "
                          f"{', '.join(sorted(heads))}: run `mma-broker run` once to upgrade it")


def provenance(settings: Settings, component: str) -> Provenance:
    """Provenance stamp for outputs of ``component``."""
    from broker.serde import Provenance

    return Provenance(component=component, version=__version__, config_hash=settings.config_hash())
