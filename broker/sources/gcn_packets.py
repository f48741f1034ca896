"""GCN Classic packet types: number → notice type name, mission, instrument, messenger.

The names are the GCN Classic notice type names exactly as GCN Kafka spells them in its
topic names (``gcn.classic.voevent.<NAME>``), taken from the list that drives
gcn.nasa.gov's own subscription page (nasa-gcn/gcn.nasa.gov, ``NoticeTypeCheckboxes``).
The numbers are the ``Packet_Type`` values of the GCN socket packet definitions
(gcn.gsfc.nasa.gov/sock_pkt_def_doc.html, as listed in pygcn's ``gcn/notice_types.py``).

``alert_type`` is our lower-case revision label (DESIGN.md "Normalized Event"): the part
of the name after the mission and instrument, e.g. ``FERMI_GBM_FLT_POS`` → ``flt_pos``.

``CONTAINMENT`` gives, per (mission, instrument), the probability contained in the
VOEvent ``Error2Radius`` — VOEvents do not state it, the mission documentation does:

===================  ===========  =====================================================
mission, instrument  containment  source
===================  ===========  =====================================================
Fermi GBM            0.68         GBM notices: 1-sigma statistical radius (no systematic)
Swift BAT/XRT/UVOT   0.90         Swift notices: 90 % confidence radius
INTEGRAL IBAS        0.90         IBAS: 90 % confidence error radius
IceCube (AMON)       0.90         Gold/Bronze/Cascade: Error2Radius = ``src_error_90``
SVOM ECLAIRs         0.90         SVOM ECLAIRs notices: 90 % c.l. error radius
===================  ===========  =====================================================

Everything else: ``None`` (unknown, not guessed).
"""

from __future__ import annotations

from typing import NamedTuple


class PacketType(NamedTuple):
    """One GCN Classic notice type.

    Attributes
    ----------
    name : str
        GCN Classic notice type name (GCN Kafka topic suffix).
    mission, instrument : str, str or None
        Normalized mission and instrument names.
    messenger : {"em", "neutrino", "gw"}
    alert_type : str
        Lower-case revision label used as ``Event.alert_type``.
    """

    name: str
    mission: str
    instrument: str | None
    messenger: str
    alert_type: str


def _p(name: str, mission: str, instrument: str | None, messenger: str, alert_type: str) -> PacketType:
    return PacketType(name, mission, instrument, messenger, alert_type)


#: Packet_Type number → PacketType.
PACKET_TYPES: dict[int, PacketType] = {
    # Heartbeats (role="utility"), kept so that the name is known.
    3: _p("IM_ALIVE", "GCN", None, "em", "im_alive"),
    142: _p("VOE_11_IM_ALIVE", "GCN", None, "em", "im_alive"),
    143: _p("VOE_20_IM_ALIVE", "GCN", None, "em", "im_alive"),
    # IPN and historical missions
    25: _p("ALEXIS_SRC", "ALEXIS", None, "em", "src"),
    31: _p("IPN_RAW", "IPN", None, "em", "raw"),
    32: _p("IPN_SEG", "IPN", None, "em", "seg"),
    39: _p("IPN_POS", "IPN", None, "em", "pos"),
    45: _p("GRB_CNTRPART", "GCN", None, "em", "counterpart"),
    57: _p("AAVSO", "AAVSO", None, "em", "alert"),
    58: _p("MILAGRO_POS", "MILAGRO", None, "em", "pos"),
    59: _p("KONUS_LC", "Konus-Wind", None, "em", "lc"),
    # INTEGRAL
    51: _p("INTEGRAL_POINTDIR", "INTEGRAL", None, "em", "pointdir"),
    52: _p("INTEGRAL_SPIACS", "INTEGRAL", "SPI-ACS", "em", "spiacs"),
    53: _p("INTEGRAL_WAKEUP", "INTEGRAL", "IBAS", "em", "wakeup"),
    54: _p("INTEGRAL_REFINED", "INTEGRAL", "IBAS", "em", "refined"),
    55: _p("INTEGRAL_OFFLINE", "INTEGRAL", "IBAS", "em", "offline"),
    56: _p("INTEGRAL_WEAK", "INTEGRAL", "IBAS", "em", "weak"),
    # Swift
    46: _p("SWIFT_TOO_FOM", "Swift", None, "em", "too_fom"),
    47: _p("SWIFT_TOO_SC_SLEW", "Swift", None, "em", "too_sc_slew"),
    60: _p("SWIFT_BAT_GRB_ALERT", "Swift", "BAT", "em", "grb_alert"),
    61: _p("SWIFT_BAT_GRB_POS_ACK", "Swift", "BAT", "em", "grb_pos_ack"),
    62: _p("SWIFT_BAT_GRB_POS_NACK", "Swift", "BAT", "em", "grb_pos_nack"),
    63: _p("SWIFT_BAT_GRB_LC", "Swift", "BAT", "em", "grb_lc"),
    64: _p("SWIFT_BAT_SCALEDMAP", "Swift", "BAT", "em", "scaledmap"),
    65: _p("SWIFT_FOM_OBS", "Swift", None, "em", "fom_obs"),
    66: _p("SWIFT_SC_SLEW", "Swift", None, "em", "sc_slew"),
    67: _p("SWIFT_XRT_POSITION", "Swift", "XRT", "em", "position"),
    68: _p("SWIFT_XRT_SPECTRUM", "Swift", "XRT", "em", "spectrum"),
    69: _p("SWIFT_XRT_IMAGE", "Swift", "XRT", "em", "image"),
    70: _p("SWIFT_XRT_LC", "Swift", "XRT", "em", "lc"),
    71: _p("SWIFT_XRT_CENTROID", "Swift", "XRT", "em", "centroid"),
    72: _p("SWIFT_UVOT_DBURST", "Swift", "UVOT", "em", "dburst"),
    73: _p("SWIFT_UVOT_FCHART", "Swift", "UVOT", "em", "fchart"),
    76: _p("SWIFT_BAT_GRB_LC_PROC", "Swift", "BAT", "em", "grb_lc_proc"),
    77: _p("SWIFT_XRT_SPECTRUM_PROC", "Swift", "XRT", "em", "spectrum_proc"),
    78: _p("SWIFT_XRT_IMAGE_PROC", "Swift", "XRT", "em", "image_proc"),
    79: _p("SWIFT_UVOT_DBURST_PROC", "Swift", "UVOT", "em", "dburst_proc"),
    80: _p("SWIFT_UVOT_FCHART_PROC", "Swift", "UVOT", "em", "fchart_proc"),
    81: _p("SWIFT_UVOT_POS", "Swift", "UVOT", "em", "pos"),
    82: _p("SWIFT_BAT_GRB_POS_TEST", "Swift", "BAT", "em", "grb_pos_test"),
    83: _p("SWIFT_POINTDIR", "Swift", None, "em", "pointdir"),
    84: _p("SWIFT_BAT_TRANS", "Swift", "BAT", "em", "trans"),
    85: _p("SWIFT_XRT_THRESHPIX", "Swift", "XRT", "em", "threshpix"),
    86: _p("SWIFT_XRT_THRESHPIX_PROC", "Swift", "XRT", "em", "threshpix_proc"),
    87: _p("SWIFT_XRT_SPER", "Swift", "XRT", "em", "sper"),
    88: _p("SWIFT_XRT_SPER_PROC", "Swift", "XRT", "em", "sper_proc"),
    89: _p("SWIFT_UVOT_POS_NACK", "Swift", "UVOT", "em", "pos_nack"),
    90: _p("SWIFT_BAT_ALARM_SHORT", "Swift", "BAT", "em", "alarm_short"),
    91: _p("SWIFT_BAT_ALARM_LONG", "Swift", "BAT", "em", "alarm_long"),
    92: _p("SWIFT_UVOT_EMERGENCY", "Swift", "UVOT", "em", "emergency"),
    93: _p("SWIFT_XRT_EMERGENCY", "Swift", "XRT", "em", "emergency"),
    94: _p("SWIFT_FOM_PPT_ARG_ERR", "Swift", None, "em", "fom_ppt_arg_err"),
    95: _p("SWIFT_FOM_SAFE_POINT", "Swift", None, "em", "fom_safe_point"),
    96: _p("SWIFT_FOM_SLEW_ABORT", "Swift", None, "em", "fom_slew_abort"),
    97: _p("SWIFT_BAT_QL_POS", "Swift", "BAT", "em", "ql_pos"),
    98: _p("SWIFT_BAT_SUB_THRESHOLD", "Swift", "BAT", "em", "sub_threshold"),
    99: _p("SWIFT_BAT_SLEW_POS", "Swift", "BAT", "em", "slew_pos"),
    103: _p("SWIFT_ACTUAL_POINTDIR", "Swift", None, "em", "actual_pointdir"),
    133: _p("SWIFT_BAT_MONITOR", "Swift", "BAT", "em", "monitor"),
    140: _p("SWIFT_BAT_SUBSUB", "Swift", "BAT", "em", "subsub"),
    141: _p("SWIFT_BAT_KNOWN_SRC", "Swift", "BAT", "em", "known_src"),
    # AGILE
    100: _p("AGILE_GRB_WAKEUP", "AGILE", "SuperAGILE", "em", "grb_wakeup"),
    101: _p("AGILE_GRB_GROUND", "AGILE", "SuperAGILE", "em", "grb_ground"),
    102: _p("AGILE_GRB_REFINED", "AGILE", "SuperAGILE", "em", "grb_refined"),
    105: _p("AGILE_MCAL_ALERT", "AGILE", "MCAL", "em", "mcal_alert"),
    107: _p("AGILE_POINTDIR", "AGILE", None, "em", "pointdir"),
    108: _p("AGILE_TRANS", "AGILE", None, "em", "trans"),
    109: _p("AGILE_GRB_POS_TEST", "AGILE", None, "em", "grb_pos_test"),
    # Fermi
    110: _p("FERMI_GBM_ALERT", "Fermi", "GBM", "em", "alert"),
    111: _p("FERMI_GBM_FLT_POS", "Fermi", "GBM", "em", "flt_pos"),
    112: _p("FERMI_GBM_GND_POS", "Fermi", "GBM", "em", "gnd_pos"),
    113: _p("FERMI_GBM_LC", "Fermi", "GBM", "em", "lc"),
    115: _p("FERMI_GBM_FIN_POS", "Fermi", "GBM", "em", "fin_pos"),
    118: _p("FERMI_GBM_TRANS", "Fermi", "GBM", "em", "trans"),
    119: _p("FERMI_GBM_POS_TEST", "Fermi", "GBM", "em", "pos_test"),
    120: _p("FERMI_LAT_POS_INI", "Fermi", "LAT", "em", "pos_ini"),
    121: _p("FERMI_LAT_POS_UPD", "Fermi", "LAT", "em", "pos_upd"),
    122: _p("FERMI_LAT_POS_DIAG", "Fermi", "LAT", "em", "pos_diag"),
    123: _p("FERMI_LAT_TRANS", "Fermi", "LAT", "em", "trans"),
    124: _p("FERMI_LAT_POS_TEST", "Fermi", "LAT", "em", "pos_test"),
    125: _p("FERMI_LAT_MONITOR", "Fermi", "LAT", "em", "monitor"),
    126: _p("FERMI_SC_SLEW", "Fermi", None, "em", "sc_slew"),
    127: _p("FERMI_LAT_GND", "Fermi", "LAT", "em", "gnd"),
    128: _p("FERMI_LAT_OFFLINE", "Fermi", "LAT", "em", "offline"),
    129: _p("FERMI_POINTDIR", "Fermi", None, "em", "pointdir"),
    131: _p("FERMI_GBM_SUBTHRESH", "Fermi", "GBM", "em", "subthresh"),
    # MAXI, optical, misc
    130: _p("SIMBADNED", "GCN", None, "em", "simbadned"),
    134: _p("MAXI_UNKNOWN", "MAXI", "GSC", "em", "unknown"),
    135: _p("MAXI_KNOWN", "MAXI", "GSC", "em", "known"),
    136: _p("MAXI_TEST", "MAXI", "GSC", "em", "test"),
    137: _p("OGLE", "OGLE", None, "em", "alert"),
    138: _p("CBAT", "CBAT", None, "em", "alert"),
    139: _p("MOA", "MOA", None, "em", "alert"),
    145: _p("COINCIDENCE", "GCN", None, "em", "coincidence"),
    148: _p("SUZAKU_LC", "Suzaku", "WAM", "em", "lc"),
    160: _p("CALET_GBM_FLT_LC", "CALET", "GBM", "em", "flt_lc"),
    161: _p("CALET_GBM_GND_LC", "CALET", "GBM", "em", "gnd_lc"),
    188: _p("GECAM_FLT", "GECAM", None, "em", "flt"),
    189: _p("GECAM_GND", "GECAM", None, "em", "gnd"),
    # Neutrinos
    149: _p("SNEWS", "SNEWS", None, "neutrino", "alert"),
    157: _p("AMON_ICECUBE_COINC", "IceCube", None, "neutrino", "coinc"),
    158: _p("AMON_ICECUBE_HESE", "IceCube", None, "neutrino", "hese"),
    168: _p("GWHEN_COINC", "AMON", None, "neutrino", "coinc"),
    169: _p("AMON_ICECUBE_EHE", "IceCube", None, "neutrino", "ehe"),
    171: _p("HAWC_BURST_MONITOR", "HAWC", None, "em", "burst_monitor"),
    172: _p("AMON_NU_EM_COINC", "AMON", None, "neutrino", "nu_em_coinc"),
    173: _p("ICECUBE_ASTROTRACK_GOLD", "IceCube", None, "neutrino", "gold"),
    174: _p("ICECUBE_ASTROTRACK_BRONZE", "IceCube", None, "neutrino", "bronze"),
    175: _p("SK_SN", "Super-Kamiokande", None, "neutrino", "alert"),
    176: _p("ICECUBE_CASCADE", "IceCube", None, "neutrino", "cascade"),
    # LIGO/Virgo/KAGRA (these VOEvents are decoded by broker.sources.igwn)
    150: _p("LVC_PRELIMINARY", "LVK", None, "gw", "preliminary"),
    151: _p("LVC_INITIAL", "LVK", None, "gw", "initial"),
    152: _p("LVC_UPDATE", "LVK", None, "gw", "update"),
    153: _p("LVC_TEST", "LVK", None, "gw", "test"),
    154: _p("LVC_COUNTERPART", "LVK", None, "em", "counterpart"),
    163: _p("LVC_EARLY_WARNING", "LVK", None, "gw", "earlywarning"),
    164: _p("LVC_RETRACTION", "LVK", None, "gw", "retraction"),
}

#: (mission, instrument) → probability contained in a VOEvent Error2Radius (see module doc).
CONTAINMENT: dict[tuple[str, str | None], float] = {
    ("Fermi", "GBM"): 0.68,
    ("Swift", "BAT"): 0.90,
    ("Swift", "XRT"): 0.90,
    ("Swift", "UVOT"): 0.90,
    ("INTEGRAL", "IBAS"): 0.90,
    ("IceCube", None): 0.90,
    ("SVOM", "ECLAIRs"): 0.90,
}

#: Fermi GBM flight-software source classes (``Most_Likely_Index`` of FLT_POS notices;
#: the same names appear in the GBM JSON ``classification``).
GBM_SOURCE_CLASSES: dict[int, str] = {
    0: "ERROR",
    1: "UNRELIABLE_LOCATION",
    2: "LOCAL_PARTICLES",
    3: "BELOW_HORIZON",
    4: "GRB",
    5: "GENERIC_SGR",
    6: "GENERIC_TRANSIENT",
    7: "DISTANT_PARTICLES",
    8: "SOLAR_FLARE",
    9: "CYG_X1",
    10: "SGR_1806_20",
    11: "GROJ_0422_32",
    19: "TGF",
}
