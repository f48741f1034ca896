"""The channels by name, built once from the ``[publish]`` settings.

The sender stage and ``mma-broker outbox`` never import a channel: they get the dict
:func:`build_channels` returns. A channel comes from

1. the entry-point group :data:`CHANNELS` (``mma_broker.channels``): name → a factory
   ``factory(settings) -> Channel | None`` (None: the channel is disabled or not
   configured). The built-in names — ``hermes``, ``gcn-notice``, ``gcn-circular``,
   ``tns`` — are skipped without loading when their section says ``enabled = false``;
2. ``[publish] channels``: name → ``"module:factory"`` with the same signature, for a
   channel that is not packaged (a site's own, or a test's fake channel). These win
   over entry points of the same name.

A factory that fails raises :class:`broker.plugins.PluginError` naming the channel:
a misconfigured channel is a start-up error, not a silent drop.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from broker import plugins

log = logging.getLogger(__name__)

CHANNELS = "mma_broker.channels"
"""Entry-point group of channel factories."""


def _call(name: str, where: str, factory: Any, settings: Any) -> Any:
    try:
        return factory(settings)
    except Exception as exc:  # noqa: BLE001 - named, one line
        from broker.config import scrub_secrets

        raise plugins.PluginError(scrub_secrets(f"channel {name!r} ({where}) failed to start: "
                                                f"{type(exc).__name__}: {exc}")) from exc


def load_factory(target: str) -> Any:
    """Import ``"module:attribute"``.

    Raises
    ------
    broker.plugins.PluginError
        Not of that form, or the import fails.
    """
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise plugins.PluginError(f"channel factory {target!r}: expected 'module:factory'")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise plugins.PluginError(f"channel factory {target!r} failed to load: {type(exc).__name__}: {exc}") from exc
    return obj


def build_channels(settings: Any, *, names: list[str] | None = None) -> dict[str, Any]:
    """The enabled channels by name.

    Parameters
    ----------
    settings : broker.config.Settings
        With the ``[publish]`` section (:class:`broker.sinks.config.PublishSettings`).
    names : list of str, optional
        Build only these.

    Returns
    -------
    dict of str to Channel

    Raises
    ------
    broker.plugins.PluginError
        A channel's factory fails to load or to start.
    """
    p = settings.publish
    out: dict[str, Any] = {}
    for name in plugins.available(CHANNELS):
        if names is not None and name not in names or name in p.channels:
            continue
        section = p.channel_settings(name)
        if section is not None and not getattr(section, "enabled", True):
            continue
        factory = plugins.load(CHANNELS, name)
        ch = _call(name, CHANNELS, factory, settings)
        if ch is not None:
            out[name] = ch
    for name, target in p.channels.items():
        if names is not None and name not in names:
            continue
        ch = _call(name, "[publish] channels", load_factory(target), settings)
        if ch is not None:
            out[name] = ch
    return out


def make_outbox(settings: Any, engine: Any, *, channels: dict[str, Any] | None = None) -> Any:
    """The :class:`broker.sinks.outbox.Outbox` of the archive ``engine`` with the operator's
    approval policy (``[publish.approval]``) and, when given, the channels whose
    ``validate`` checks each payload before it is stored. What the reports stage uses."""
    from broker.sinks.outbox import Outbox

    return Outbox(engine, channels=channels, approval=settings.publish.requires_approval)


def our_kafka_config(settings: Any) -> dict[str, Any]:
    """librdkafka settings of our own Kafka (``[kafka]``), for channels that publish there."""
    from broker.kafka import client_config

    return client_config(settings)
