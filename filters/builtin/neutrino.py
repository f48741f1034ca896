"""``neutrino-track``: IceCube Gold and Bronze track alerts.

IceCube's track alerts come in two streams (Blaufuss et al. 2019, "The Next Generation
of IceCube Real-time Neutrino Alerts", PoS(ICRC2019)1021): **Gold**, neutrino
candidates at least 50 % likely to be astrophysical (~10 per year), and **Bronze**,
30–50 % (~20 per year). GCN distributes them as Classic ``ICECUBE_ASTROTRACK_GOLD`` /
``_BRONZE`` notices (AMON, gcn.gsfc.nasa.gov/amon.html: "GOLD ... about 12/yr; >50 %
are astrophysical", "BRONZE ... about 16/yr; >30 %") and as GCN Kafka JSON
``gcn.notices.icecube.single_neutrino_alerts`` (gcn-schema
``icecube/single_neutrino_alerts.schema.json``: ``pipeline`` "Gold Track Alert",
"Bronze Track Alert" or "Cascade Alert"). The per-event probability of astrophysical
origin is the Classic ``signalness`` or the JSON ``p_astro``; the FAR is given in
yr⁻¹ by the Classic notices and in Hz by the JSON ones (``far_hz`` in both Events).

Selection:

1. not a retraction, group not retracted, not a test notice unless ``allow_test``
   (``retraction``, ``group_retracted``, ``test_notice``);
2. a Gold or Bronze **track** in ``streams`` (``not_gold_bronze_track``: cascades,
   HESE/EHE, KM3NeT, IceCube's LVK Nu Track Search; ``stream_not_selected``), as
   recognised by the enrich stage (:func:`broker.enrich.coinc.track_stream`);
3. signalness (or ``p_astro``) at least ``min_signalness`` (``signalness_below_threshold``;
   ``signalness_missing`` when the cut is set and the notice has none);
4. FAR at most ``max_far_per_yr`` (``far_above_threshold``; ``far_missing``);
5. error radius at most ``max_error_radius_deg`` (``error_radius_above_threshold``;
   ``error_radius_missing``) — the radius of the Event's point localization, at the
   containment the notice states (90 % for the GCN notices of IceCube).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from broker.enrich.coinc import track_stream  # the enrich stage's reader; imported when the plugin loads,
from broker.event import PointLocalization     # not in apply(), where its import time would count
from filters.api import Filter, FilterConfig, FilterInput, FilterResult
from filters.builtin import is_test_notice, number

__all__ = ["NeutrinoTrackConfig", "NeutrinoTrack", "JULIAN_YEAR_S"]

JULIAN_YEAR_S = 365.25 * 86400.0
"""Seconds per year in FAR conversions, s (the Julian year the VOEvent decoder uses to
turn the notices' yr⁻¹ into ``far_hz``, so a notice's own figure compares exactly)."""


class NeutrinoTrackConfig(FilterConfig):
    """Which IceCube track alerts pass (module docstring)."""

    streams: tuple[Literal["gold", "bronze"], ...] = ("gold", "bronze")
    """Track streams accepted."""
    min_signalness: float | None = Field(None, ge=0, le=1)
    """Lower bound on the probability of astrophysical origin (``signalness``/``p_astro``)."""
    max_far_per_yr: float | None = Field(None, ge=0)
    """Ceiling on the notice's false alarm rate, per year (Julian); None: no cut."""
    max_error_radius_deg: float | None = Field(None, gt=0, le=180)
    """Ceiling on the error radius of the position, deg; None: no cut."""
    allow_test: bool = False
    """Accept notices marked as tests."""


class NeutrinoTrack(Filter[NeutrinoTrackConfig]):
    """IceCube Gold/Bronze track alerts, with signalness, FAR and error-radius cuts."""

    name = "neutrino-track"
    version = "1"
    sources = frozenset({"gcn"})

    def apply(self, alert: FilterInput) -> FilterResult:
        """Decide on one GCN notice (module docstring: selection and reasons).

        Parameters
        ----------
        alert : FilterInput
            A GCN Event (``properties``: ``pipeline``/``packet_type_name``/``notice_type``,
            ``signalness`` or ``p_astro``, ``far_hz``; point localization) and its
            enrichment (``group.retracted``).

        Returns
        -------
        FilterResult
            Accepted (``gold_track`` / ``bronze_track``) with tags ``neutrino``, ``track``
            and the stream.
        """
        c, ev = self.config, alert.event
        p = ev.properties
        if ev.is_retraction:
            return FilterResult.reject("retraction")
        if alert.group.get("retracted"):
            return FilterResult.reject("group_retracted", detail=f"group {alert.group.get('key')} was retracted")
        if not c.allow_test and is_test_notice(ev):
            return FilterResult.reject("test_notice")
        if ev.messenger != "neutrino":
            return FilterResult.reject("not_gold_bronze_track", detail=f"messenger {ev.messenger}")
        stream = track_stream(ev)
        if stream is None:
            what = p.get("pipeline") or p.get("packet_type_name") or p.get("notice_type") or ev.alert_type
            return FilterResult.reject("not_gold_bronze_track", detail=f"{ev.mission}: {what}")
        if stream not in c.streams:
            return FilterResult.reject("stream_not_selected", detail=stream)
        signalness = number(p.get("signalness"))
        if signalness is None:
            signalness = number(p.get("p_astro"))
        if c.min_signalness is not None:
            if signalness is None:
                return FilterResult.reject("signalness_missing")
            if signalness < c.min_signalness:
                return FilterResult.reject("signalness_below_threshold",
                                           detail=f"signalness {signalness:.3g} < {c.min_signalness:g}")
        far_hz = number(p.get("far_hz"))
        far_yr = None if far_hz is None else far_hz * JULIAN_YEAR_S
        if c.max_far_per_yr is not None:
            if far_yr is None:
                return FilterResult.reject("far_missing")
            if far_yr > c.max_far_per_yr:
                return FilterResult.reject("far_above_threshold",
                                           detail=f"FAR {far_yr:.5g}/yr > {c.max_far_per_yr:g}/yr")
        if c.max_error_radius_deg is not None:
            loc = ev.localization
            radius = loc.error_radius if isinstance(loc, PointLocalization) else None
            if radius is None:
                return FilterResult.reject("error_radius_missing")
            if radius > c.max_error_radius_deg:
                return FilterResult.reject("error_radius_above_threshold",
                                           detail=f"{radius:g} deg > {c.max_error_radius_deg:g} deg")
        far_text = "?" if far_yr is None else f"{far_yr:.3g}"
        return FilterResult.accept(f"{stream}_track", tags=("neutrino", "track", stream),
                                   detail=f"{stream} track, signalness {signalness}, FAR {far_text}/yr")
