"""Build the follow-up's collaborators from :class:`broker.config.Settings`, in one place.

No module-level clients: every source, client and cache is made here from settings
and passed down (STYLE.md §4). Nothing is contacted while building.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from broker.config import Settings
from broker.errors import BrokerError
from followup.attitude import HttpOrbitSource, LocalOrbitFiles
from followup.availability import RetryPolicy
from followup.cache import DirectoryCache, SqlCache
from followup.datasources import (
    DEFAULT_ISDC_SPIACS_URL, DEFAULT_MMODA_URL, IsdcSpiAcsSource, LocalFitsSource, MmodaSource,
)
from followup.isgri import IsgriClient
from followup.service import FollowupParams, FollowupSources

logger = logging.getLogger(__name__)


def retry_policy(settings: Settings) -> Any:
    """Backoff for data services (``followup.retry_attempts`` attempts)."""
    return RetryPolicy(attempts=max(1, settings.followup.retry_attempts))


def _mmoda(settings: Settings) -> Any:
    f = settings.followup
    token = f.mmoda_token.get_secret_value() if f.mmoda_token is not None else None
    url = f.mmoda_url or (f.lightcurves.url if f.lightcurves.kind == "mmoda" and f.lightcurves.url else None)
    return MmodaSource(url=url or DEFAULT_MMODA_URL, token=token, time_bin_s=f.lightcurves.time_bin_s,
                       retry=retry_policy(settings))


def build_lightcurve_source(settings: Settings) -> Any:
    """The configured SPI-ACS light-curve source.

    Raises
    ------
    broker.errors.BrokerError
        ``kind = "local"`` without a directory.
    """
    lc = settings.followup.lightcurves
    if lc.kind == "local":
        if lc.directory is None:
            raise BrokerError("followup.lightcurves.kind = 'local' needs followup.lightcurves.directory")
        return LocalFitsSource(lc.directory)
    if lc.kind == "isdc":
        return IsdcSpiAcsSource(url=lc.url or DEFAULT_ISDC_SPIACS_URL, retry=retry_policy(settings))
    source = _mmoda(settings)
    if lc.url:
        source = MmodaSource(url=lc.url, token=source._token, time_bin_s=lc.time_bin_s, retry=source.retry)
    return source


def build_sources(settings: Settings) -> FollowupSources:
    """Light curves, attitude (orbit files or an orbit service) and the ISGRI client."""
    f = settings.followup
    attitude = None
    if f.orbit_directory is not None:
        attitude = LocalOrbitFiles(f.orbit_directory)
    elif f.orbit_url_template:
        attitude = HttpOrbitSource(f.orbit_url_template, retry=retry_policy(settings))
    isgri = IsgriClient(_mmoda(settings)) if "isgri" in f.analyses else None
    return FollowupSources(lightcurves=build_lightcurve_source(settings), attitude=attitude, isgri=isgri)


def build_cache(settings: Settings, engine: Any = None) -> Any:
    """The provenance cache: a directory (default ``<home>/followup-cache``) or the
    archive's ``followup_cache`` table (``engine`` required, schema migrated)."""
    f = settings.followup
    if f.cache == "database":
        if engine is None:
            raise ValueError("build_cache: the database cache needs the archive engine")
        return SqlCache(engine, create_table=False)
    return DirectoryCache(f.cache_directory or settings.home / "followup-cache")


def followup_params(settings: Settings) -> FollowupParams:
    """Analysis parameters from settings."""
    f = settings.followup
    return FollowupParams(window_s=f.window_s, max_sky_samples=f.max_sky_samples)


def request_params(settings: Settings) -> dict[str, Any]:
    """The parameters carried by (and hashed into the id of) a follow-up request."""
    p = followup_params(settings)
    return {"window_s": p.window_s, "max_sky_samples": p.max_sky_samples}


def output_directory(settings: Settings) -> Path:
    """Where PNG plots are written (``<home>/followup`` by default)."""
    return settings.followup.output_directory or settings.home / "followup"
