"""The built-in filters, registered like any plugin (``mma_broker.filters`` in pyproject.toml).

Science filters (docs/filters-builtin.md gives each one's selection, parameters and
source):

* ``gw-significant`` (:mod:`filters.builtin.gw`): significant LVK candidates;
* ``grb-short`` (:mod:`filters.builtin.grb`): short gamma-ray bursts;
* ``gw-grb-coincidence`` (:mod:`filters.builtin.coinc`): Events in a GW–GRB coincidence;
* ``neutrino-track`` (:mod:`filters.builtin.neutrino`): IceCube Gold/Bronze tracks;
* ``optical-counterpart`` (:mod:`filters.builtin.optical`): ZTF candidates inside a
  GW/GRB region after T0.

This module holds only the small readers they share; it imports nothing heavy.
"""

from __future__ import annotations

import math
from typing import Any

from broker.event import Event

__all__ = ["number", "is_test_notice"]


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, text, bool, NaN, ±inf).

    Upstream values reach ``Event.properties`` as JSON numbers or null (NaN and
    infinities are stored as null), and a few missions write numbers as text; a filter
    treats anything that is not a finite number as missing.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def is_test_notice(event: Event) -> bool:
    """True for a notice its sender marks as a test (``properties.role == "test"``:
    VOEvent ``role="test"``, GCN ``alert_tense: "test"``)."""
    return event.properties.get("role") == "test"
