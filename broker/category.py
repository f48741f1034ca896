"""Normalized category of an Event: what kind of thing the alert reports, and the rule that said so.

A filter should select "gamma-ray bursts" without knowing that a SVOM ECLAIRs notice can
name the known X-ray binary Cen X-3, that a Fermi GBM flight position may be classified
``BELOW_HORIZON``, or that IceCube's Gold and Bronze streams are tracks. This module reads
what each alert itself says (IGWN ``group``, GCN ``classification``, Swift catalog flags,
the SVOM ``Source_Name``, the notice schema or GCN Classic packet type...) and returns one
category from :data:`CATEGORIES` with the id of the rule that decided it
(:data:`RULES`, documented in ``docs/categories.md``).

:func:`categorize` is pure: it reads only the Event (``source``, ``mission``,
``instrument``, ``alert_type`` and ``properties``), so the category of any archived Event
can be recomputed from the archive row. The rules are tried in order and the first that
decides wins; ``unknown`` (rule ``fallback``) when none does — a category is never
guessed from a mission name alone, except for the gamma-ray burst monitors listed in
:data:`GRB_MONITORS`, whose unclassified triggers are *presumed* GRBs under their own rule
id (``grb_monitor_presumed``) so a strict filter can tell presumed from stated.

:func:`set_category` fills ``Event.category``/``Event.category_rule`` of a freshly decoded
Event; :func:`broker.sources.decode` calls it for every Event it returns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.event import Event

__all__ = ["CATEGORIES", "RULES", "GRB_MONITORS", "SSO_MATCH_RADIUS_ARCSEC", "categorize", "set_category"]

#: Category → one-line meaning (docs/categories.md has the rules and the fields read).
CATEGORIES: dict[str, str] = {
    "grb": "gamma-ray burst (stated by the alert, or presumed for an unclassified trigger of a GRB monitor)",
    "sgr_burst": "soft gamma repeater / magnetar burst (GBM flight-software class GENERIC_SGR, SGR_1806_20)",
    "gw_cbc": "gravitational-wave candidate of a compact-binary-coalescence search (IGWN group CBC)",
    "gw_burst": "gravitational-wave candidate of an unmodelled burst search (IGWN group Burst)",
    "neutrino_track": "single track-like high-energy neutrino (IceCube Gold/Bronze, EHE, HESE; KM3NeT track)",
    "neutrino_cascade": "single cascade-like high-energy neutrino (IceCube Cascade)",
    "neutrino_multiplet": "several neutrinos clustered in space and time (KM3NeT multiplet)",
    "supernova_neutrinos": "burst of MeV neutrinos from a Galactic core collapse (SNEWS, Super-Kamiokande)",
    "frb": "fast radio burst (CHIME/FRB, DSA-110), repeats of a known FRB included",
    "x_ray_transient": "new X-ray source or outburst not in the instrument's catalog (EP WXT, MAXI unknown)",
    "known_source": "trigger the alert attributes to a catalogued, non-GRB source (X-ray binary, blazar flare ...)",
    "optical_transient": "optical difference-image detection (ZTF candidate) or optical transient report",
    "microlensing": "gravitational microlensing event (MOA, OGLE)",
    "solar_system_object": "ZTF candidate within the match radius of a known solar-system object",
    "solar_flare": "solar flare (instrument classification)",
    "tgf": "terrestrial gamma-ray flash (instrument classification)",
    "not_astrophysical": "trigger the instrument classifies as particles or below the Earth's horizon",
    "coincidence": "result of a joint search across messengers or instruments (AMON, IceCube LVK search)",
    "counterpart": "report of a follow-up counterpart to an earlier trigger (GCN counterpart notices)",
    "archive_data": "notice that an observation's data are public in an archive (HEASARC), not a detection",
    "unknown": "no rule decided (heartbeats, pointing notices, retractions without a class, new kinds)",
}

#: Rule id → what it reads and where that field is specified.
RULES: dict[str, str] = {}

SSO_MATCH_RADIUS_ARCSEC = 5.0
"""ZTF ``ssdistnr`` up to which a candidate is the known solar-system object ``ssnamenr``,
arcsec. ZTF fills ``ssnamenr``/``ssdistnr`` for the nearest known object within 30 arcsec
(ZTF alert schema, ``candidate.ssdistnr``); 5 arcsec is well above ZTF's astrometric
error and the few-arcsec ephemeris error of numbered asteroids, and below the 20 arcsec
veto radius a filter such as AMPEL's DecentFilter (``min_sso_dist``) may choose."""

#: (mission, instrument) of gamma-ray burst monitors; instrument None: any.
GRB_MONITORS: frozenset[tuple[str, str | None]] = frozenset({
    ("fermi", "gbm"), ("swift", "bat"), ("swift", "bat-guano"), ("swift", "xrt"), ("swift", "uvot"),
    ("integral", None), ("konus-wind", None), ("gecam", None), ("calet", "gbm"), ("agile", None),
    ("svom", "eclairs"), ("svom", "grm"), ("burstcube", None), ("glowbug", None), ("suzaku", "wam"),
    ("hete", None), ("bepposax", None), ("rxte", "asm"), ("ipn", None), ("near", None), ("milagro", None),
    ("hawc", None),
})
"""Missions (and instruments), lower case, whose triggers are searches for GRBs: their notices of a
trigger with no classification, no catalog flag and no "not a GRB" flag are presumed GRBs
(rule ``grb_monitor_presumed``). Swift XRT/UVOT positions are revisions of a BAT trigger.
RXTE ASM, NEAR, MILAGRO and IPN notices were GRB positions (GCN Classic notice types)."""


def _rule(rule_id: str, doc: str) -> str:
    RULES[rule_id] = doc
    return rule_id


# --- labels of upstream classifications -------------------------------------------------

#: Upper-cased classification label (spaces and '-' → '_') → category. Fermi GBM flight
#: software classes (GCN socket packet definition, FERMI_GBM_FLT_POS ``Most_Likely_Index``;
#: the same names in the ``classification`` of gcn/notices/fermi/gbm/trigger), BurstCube
#: (``SF``: solar flare, ``Local Particles``), GECAM (``KNOWN_SOURCE``), MAXI Classic JSON
#: (``x-ray-star``). GBM's ``ERROR``, ``UNRELIABLE_LOCATION`` and ``GENERIC_TRANSIENT``
#: give ``unknown`` (the instrument's own doubt stops the GRB presumption); labels not
#: listed (the GW classes BNS/NSBH/BBH of the core example GLOWBUG copies) decide nothing.
CLASS_LABELS: dict[str, str] = {
    "GRB": "grb",
    "GENERIC_SGR": "sgr_burst", "SGR": "sgr_burst", "SGR_1806_20": "sgr_burst",
    "KNOWN_SOURCE": "known_source", "CYG_X1": "known_source", "GROJ_0422_32": "known_source",
    "X_RAY_STAR": "known_source", "KNOWN": "known_source",
    "SOLAR_FLARE": "solar_flare", "SF": "solar_flare",
    "TGF": "tgf",
    "LOCAL_PARTICLES": "not_astrophysical", "DISTANT_PARTICLES": "not_astrophysical",
    "BELOW_HORIZON": "not_astrophysical",
    # the instrument says it is not sure what this is: no GRB presumption either
    "UNRELIABLE_LOCATION": "unknown", "ERROR": "unknown", "GENERIC_TRANSIENT": "unknown",
}

#: GCN Classic ``packet_type_name`` (VOEvent ``Packet_Type``, broker.sources.gcn_packets) → category.
PACKET_CATEGORIES: dict[str, str] = {
    "SWIFT_BAT_KNOWN_SRC": "known_source",
    "MAXI_KNOWN": "known_source",
    "MAXI_UNKNOWN": "x_ray_transient",
    "SWIFT_BAT_TRANS": "x_ray_transient",
    "ICECUBE_ASTROTRACK_GOLD": "neutrino_track",
    "ICECUBE_ASTROTRACK_BRONZE": "neutrino_track",
    "AMON_ICECUBE_HESE": "neutrino_track",
    "AMON_ICECUBE_EHE": "neutrino_track",
    "ICECUBE_CASCADE": "neutrino_cascade",
    "AMON_ICECUBE_COINC": "coincidence",
    "AMON_NU_EM_COINC": "coincidence",
    "GWHEN_COINC": "coincidence",
    "COINCIDENCE": "coincidence",
    "HAWC_BURST_MONITOR": "grb",
    "SNEWS": "supernova_neutrinos",
    "SK_SN": "supernova_neutrinos",
    "GRB_CNTRPART": "counterpart",
    "LVC_COUNTERPART": "counterpart",
    "MOA": "microlensing",
    "OGLE": "microlensing",
}

#: gcn-schema notice path (``properties["schema"]``, longest prefix wins) → category.
SCHEMA_CATEGORIES: dict[str, str] = {
    "chime/frb": "frb",
    "dsa110/frb": "frb",
    "einstein_probe/wxt": "x_ray_transient",
    "maxi/gsc.known": "known_source",
    "maxi/gsc.unknown": "x_ray_transient",
    "fermi/lat/flare": "known_source",
    "heasarc/archive_alert": "archive_data",
    "icecube/lvk_nu_track_search": "coincidence",
    "superk/sn_alert": "supernova_neutrinos",
    "classic/sk_sn": "supernova_neutrinos",
    "classic/snews": "supernova_neutrinos",
    "classic/counterpart": "counterpart",
    "classic/moa": "microlensing",
    "icecube/GoldAndBronze": "neutrino_track",  # gcn-schema v1.x path of the Gold/Bronze track alerts
}

#: VOEvent stream (``properties["stream"]``, the IVORN before '#') → category, for streams whose
#: every event is of one kind and that carry no Packet_Type: ANTARES real-time alerts through
#: GCN (upgoing muon-neutrino track candidates; Ageron et al. 2012, Astropart. Phys. 35, 530),
#: Gaia Science Alerts (Hodgkin et al. 2021, A&A 652, A76) and ASAS-SN transients (4PiSky relay).
STREAM_CATEGORIES: dict[str, str] = {
    "ivo://nasa.gsfc.gcn/Antares_Alert": "neutrino_track",
    "ivo://gaia.cam.uk/alerts": "optical_transient",
    "ivo://voevent.4pisky.org/ASASSN": "optical_transient",
}

#: GCN ``alert_topology`` (IceCube, KM3NeT, core neutrino schema) → category.
TOPOLOGIES: dict[str, str] = {
    "track": "neutrino_track", "cascade": "neutrino_cascade", "shower": "neutrino_cascade",
    "multiplet": "neutrino_multiplet",
}

#: Classic AMON ``notice_type`` (gcn-schema PR 161 classic/amon) → category.
AMON_NOTICE_TYPES: dict[str, str] = {
    "astrotrack gold": "neutrino_track", "astrotrack bronze": "neutrino_track", "ehe": "neutrino_track",
    "hese": "neutrino_track", "cascade": "neutrino_cascade", "neutrino-em coincidence": "coincidence",
    "burst": "grb",  # HAWC burst monitor (the notice's additional_info; GCN packet HAWC_BURST_MONITOR)
}

_GRB_NAME = re.compile(r"GRB ?\d{6}[A-Z]?$")
"""An IAU-style GRB designation (``GRB 230220A``) in a notice's ``event_name``."""


def _label(value: str) -> str:
    return re.sub(r"[\s\-]+", "_", value.strip()).upper()


def _classification(props: Mapping[str, Any]) -> tuple[str, str] | None:
    """The most probable class of a ``classification`` dict (core/Statistics), if it maps."""
    cls = props.get("classification")
    if not isinstance(cls, dict) or not cls:
        return None
    scores = [(v, k) for k, v in cls.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not scores:
        return None
    best = max(scores, key=lambda s: s[0])[1]  # first of equal maxima: dict order
    category = CLASS_LABELS.get(_label(best))
    return (category, best) if category else None


def _bat_source_name(props: Mapping[str, Any]) -> bool:
    """Whether a Swift BAT ``classification``'s most probable label names a catalog source.

    Swift BAT notices (gcn-schema PR 306) score ``known``/``unknown`` or, for an on-board
    catalog match, the source's name (``{"EXO_0748-676": 1.0, "unknown": 0.0}``).
    """
    cls = props.get("classification")
    if not isinstance(cls, dict):
        return False
    scores = [(v, k) for k, v in cls.items()
              if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not scores:
        return False
    score, label = max(scores, key=lambda s: s[0])
    return score > 0 and _label(label) not in CLASS_LABELS and _label(label) != "UNKNOWN"


def _schema_category(schema: str) -> str | None:
    for prefix in sorted(SCHEMA_CATEGORIES, key=len, reverse=True):
        if schema == prefix or schema.startswith(prefix + ".") or schema.startswith(prefix + "/"):
            return SCHEMA_CATEGORIES[prefix]
    return None


def _event_names(props: Mapping[str, Any]) -> list[str]:
    name = props.get("event_name")
    if isinstance(name, str):
        return [name]
    if isinstance(name, list):
        return [n for n in name if isinstance(n, str)]
    return []


def _is_grb_monitor(mission: str, instrument: str | None) -> bool:
    m = mission.lower()
    return (m, None) in GRB_MONITORS or (instrument is not None and (m, instrument.lower()) in GRB_MONITORS)


# --- rule ids (docs/categories.md describes each with the fields and specs) -------------

R_ZTF = _rule("ztf_candidate", "ZTF alert packet: a difference-image candidate → optical_transient "
              "(ZTF alert schema; every packet is one candidate)")
R_ZTF_SSO = _rule("ztf_ssnamenr", "ZTF candidate.ssnamenr set and 0 <= candidate.ssdistnr <= "
                  f"{SSO_MATCH_RADIUS_ARCSEC:g} arcsec → solar_system_object (ZTF alert schema)")
R_LSST_SSO = _rule("lsst_ss_object", "LSST/Rubin diaSource.ssObjectId > 0 (0 or null: not associated) or an "
                   "ssSource/ssObject record: associated with a known solar-system object → solar_system_object "
                   "(Rubin alert schema, lsst.v10_0)")
R_LSST = _rule("lsst_dia_source", "LSST/Rubin alert: a difference-image source → optical_transient")
R_IGWN_GROUP = _rule("igwn_group", "IGWN alert event.group: CBC → gw_cbc, Burst → gw_burst "
                     "(igwn.gwalert schema; LVC VOEvent Param 'Group')")
R_IGWN_NONE = _rule("igwn_no_group", "IGWN alert without event.group (a retraction carries no event) → unknown")
R_KNOWN_SOURCE_NAME = _rule("known_source_name", "VOEvent Param Source_Name (SVOM ECLAIRs catalog notices) "
                            "names the catalogued source that triggered → known_source")
R_SVOM_EVENT_NAME = _rule("svom_event_name", "SVOM JSON notice (gcn/notices/svom/trigger) with an event_name "
                          "that is not a GRB designation: the catalog source ECLAIRs matched → known_source")
R_SWIFT_CATALOG = _rule("swift_catalog_flag", "Swift VOEvent Target_in_Flt_Catalog or Target_in_Gnd_Catalog "
                        "true (BAT solution status: the source is in the on-board / ground catalog) → known_source")
R_PACKET = _rule("gcn_packet_type", "GCN Classic Packet_Type (VOEvent) implies the class: "
                 "SWIFT_BAT_KNOWN_SRC, MAXI_KNOWN/UNKNOWN, ICECUBE_*, SNEWS, MOA ... (table PACKET_CATEGORIES)")
R_NOT_A_GRB = _rule("def_not_a_grb", "VOEvent Def_NOT_a_GRB true (GCN: 'definitely not a GRB') and no catalog "
                    "flag or class says what it is → unknown")
R_CLASSIFICATION = _rule("classification", "most probable label of the notice's classification "
                         "(gcn-schema core/Statistics; Fermi GBM, BurstCube, GECAM, MAXI labels; table CLASS_LABELS)")
R_GBM_MOST_LIKELY = _rule("gbm_most_likely", "Fermi GBM VOEvent Most_Likely_Index (flight-software source class, "
                          "GCN socket packet definition) → table CLASS_LABELS")
R_GRB_IDENTIFIED = _rule("grb_identified", "Swift VOEvent GRB_Identified true → grb")
R_SCHEMA = _rule("gcn_schema", "gcn-schema notice path ($schema) implies the class: chime/frb, "
                 "einstein_probe/wxt, maxi/gsc.known, fermi/lat/flare ... (table SCHEMA_CATEGORIES)")
R_TOPOLOGY = _rule("alert_topology", "neutrino notice alert_topology: Track / Cascade / Multiplet "
                   "(gcn-schema icecube/single_neutrino_alerts, km3net/alert)")
R_AMON = _rule("amon_notice_type", "GCN Classic AMON JSON notice_type: Astrotrack Gold/Bronze, EHE, HESE → "
               "neutrino_track; Cascade → neutrino_cascade; Neutrino-EM Coincidence → coincidence; "
               "Burst (HAWC burst monitor) → grb")
R_MAXI_NOTICE = _rule("maxi_notice_type", "GCN Classic MAXI JSON notice_type Known → known_source, "
                      "Unknown → x_ray_transient")
R_GRB_NAME = _rule("grb_event_name", "notice event_name is a GRB designation (GRB yymmddX) → grb")
R_GRB_MONITOR = _rule("grb_monitor_presumed", "an unclassified trigger of a gamma-ray burst monitor "
                      "(GRB_MONITORS) → grb, presumed (no field states it)")
R_SWIFT_BAT_SOURCE = _rule("swift_bat_source_name", "Swift BAT notice (gcn/notices/swift/bat, gcn-schema "
                            "PR 306) whose most probable classification label is a catalog source name "
                            "(e.g. EXO_0748-676), not 'unknown' nor a class label → known_source")
R_STREAM = _rule("voevent_stream", "VOEvent stream of one kind of event (table STREAM_CATEGORIES): ANTARES "
                 "alerts → neutrino_track; Gaia Science Alerts, ASAS-SN → optical_transient")
R_FALLBACK = _rule("fallback", "no rule decided → unknown")


def categorize(event: Event) -> tuple[str, str]:
    """The normalized category of an Event and the id of the rule that decided it.

    Parameters
    ----------
    event : broker.event.Event
        A decoded Event; only ``source``, ``mission``, ``instrument`` and ``properties``
        are read (the fields the decoders in :mod:`broker.sources` fill from the alert).

    Returns
    -------
    category : str
        A key of :data:`CATEGORIES`.
    rule : str
        A key of :data:`RULES` (docs/categories.md): which alert field decided.

    Notes
    -----
    Order matters and is, first match winning: the source (ZTF, LSST, IGWN); explicit
    known-source statements (SVOM ``Source_Name``/``event_name``, Swift catalog flags,
    GCN Classic packet types and notice schemas of known sources); Def_NOT_a_GRB; the
    instrument's own classification (``classification``, GBM ``Most_Likely_Index``,
    Swift ``GRB_Identified``); a GRB designation in ``event_name``; the notice's type
    (packet type, schema, topology, AMON and MAXI ``notice_type``); the GRB-monitor presumption;
    ``unknown``. Never raises on odd property values (wrong types decide nothing).
    """
    source = event.source
    props = event.properties
    if source == "ztf":
        name = props.get("ssnamenr")
        if name:
            dist = props.get("ssdistnr")
            if isinstance(dist, (int, float)) and 0 <= dist <= SSO_MATCH_RADIUS_ARCSEC:
                return "solar_system_object", R_ZTF_SSO
        return "optical_transient", R_ZTF
    if source == "lsst":
        ss_id = props.get("ssObjectId")
        if (isinstance(ss_id, int) and not isinstance(ss_id, bool) and ss_id > 0) or \
                isinstance(props.get("ssSource"), dict) or isinstance(props.get("ssObject"), dict):
            return "solar_system_object", R_LSST_SSO
        return "optical_transient", R_LSST
    if source == "igwn":
        group = props.get("group")
        if isinstance(group, str):
            g = group.strip().lower()
            if g == "cbc":
                return "gw_cbc", R_IGWN_GROUP
            if g == "burst":
                return "gw_burst", R_IGWN_GROUP
        return "unknown", R_IGWN_NONE

    mission, instrument = event.mission, event.instrument
    packet = props.get("packet_type_name")
    schema = props.get("schema") if isinstance(props.get("schema"), str) else None

    # 1. the alert names a catalogued source or says it is one
    known = props.get("known_source")
    if packet is not None and isinstance(known, str) and known.strip() and not _GRB_NAME.match(known.strip()):
        return "known_source", R_KNOWN_SOURCE_NAME  # VOEvent Source_Name (SVOM catalog notices)
    if schema is not None and schema.startswith("svom/"):
        names = _event_names(props)
        if names and not any(_GRB_NAME.match(n.strip()) for n in names):
            return "known_source", R_SVOM_EVENT_NAME
    if props.get("in_flight_catalog") is True or props.get("in_ground_catalog") is True:
        return "known_source", R_SWIFT_CATALOG
    if packet in ("SWIFT_BAT_KNOWN_SRC", "MAXI_KNOWN"):
        return "known_source", R_PACKET
    if props.get("not_a_grb") is True:
        found = _classification(props)
        if found is not None and found[0] != "grb":
            return found[0], R_CLASSIFICATION
        return "unknown", R_NOT_A_GRB

    # 2. the instrument's own classification
    found = _classification(props)
    if found is not None:
        return found[0], R_CLASSIFICATION
    if mission.lower() == "swift" and (instrument or "").lower() == "bat" and _bat_source_name(props):
        return "known_source", R_SWIFT_BAT_SOURCE
    most_likely = props.get("most_likely")
    if isinstance(most_likely, str) and (cat := CLASS_LABELS.get(_label(most_likely))):
        return cat, R_GBM_MOST_LIKELY
    if props.get("grb_identified") is True:
        return "grb", R_GRB_IDENTIFIED

    if any(_GRB_NAME.match(n.strip()) for n in _event_names(props)):
        return "grb", R_GRB_NAME  # e.g. a MAXI unknown-source notice of GRB 230220A

    # 3. the kind of notice
    if isinstance(packet, str) and (cat := PACKET_CATEGORIES.get(packet)):
        return cat, R_PACKET
    if schema is not None and (cat := _schema_category(schema)):
        return cat, R_SCHEMA
    topology = props.get("alert_topology")
    if isinstance(topology, str) and (cat := TOPOLOGIES.get(topology.strip().lower())):
        return cat, R_TOPOLOGY
    notice_type = props.get("notice_type")
    if isinstance(notice_type, str) and schema is not None:
        nt = notice_type.strip().lower()
        if schema.startswith("classic/amon") and (cat := AMON_NOTICE_TYPES.get(nt)):
            return cat, R_AMON
        if schema.startswith("classic/maxi") and nt in ("known", "unknown"):
            return ("known_source" if nt == "known" else "x_ray_transient"), R_MAXI_NOTICE
    stream = props.get("stream")
    if isinstance(stream, str) and (cat := STREAM_CATEGORIES.get(stream.strip())):
        return cat, R_STREAM
    # 4. a trigger of a GRB monitor that nothing above classified
    if _is_grb_monitor(mission, instrument) and _is_trigger(packet, event.alert_type):
        return "grb", R_GRB_MONITOR
    return "unknown", R_FALLBACK


#: GCN Classic packet names that are not triggers (pointing, slews, heartbeats, tests of
#: the notice chain): a GRB monitor's notice of these kinds is no presumed GRB.
_NOT_TRIGGERS = re.compile(r"POINTDIR|SC_SLEW|IM_ALIVE|TOO_|FOM_PPT|FOM_SAFE|FOM_SLEW|_TEST$|EMERGENCY")


def _is_trigger(packet: Any, alert_type: str) -> bool:
    if isinstance(packet, str):
        return _NOT_TRIGGERS.search(packet) is None
    return alert_type not in ("pointdir", "test")


def set_category(event: Event) -> Event:
    """Fill ``category`` and ``category_rule`` of a freshly decoded Event, in place.

    Only for an Event no one else holds yet (the decoder's output, before
    :func:`broker.sources.decode` returns it): Events are frozen, and this writes the two
    fields once, without a copy (a copy per ZTF alert would cost more than the rules).
    An Event that already has a category keeps it.

    Returns
    -------
    Event
        The same object.
    """
    if event.category is None:
        category, rule = categorize(event)
        d = event.__dict__
        d["category"] = category
        d["category_rule"] = rule
        event.__pydantic_fields_set__.update(("category", "category_rule"))
    return event
