"""Unit tests of the Event ↔ archive row mapping (no database needed)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from lxml import etree

from broker.archive.raw import RawRef
from broker.archive.rows import (
    ArchiveDataError,
    ArchiveItem,
    KafkaMeta,
    archived_from_row,
    event_rows,
    healpix_index,
)
from broker.event import Event

DATA = Path(__file__).resolve().parents[1] / "data"
GBM = DATA / "voevent/pygcn/gbm_flt_pos.xml"
REF = RawRef(sha256="ab" * 32, length=123, segment="20250101/x.seg", offset=7)


def gbm_values() -> dict:
    """Values read straight from the real Fermi GBM VOEvent with lxml."""
    root = etree.parse(str(GBM)).getroot()
    params = {p.get("name"): p.get("value") for p in root.iter("Param")}
    pos = root.find(".//{*}Position2D")
    return {
        "ivorn": root.get("ivorn"),
        "trig_id": params["TrigID"],
        "iso": root.find(".//{*}ISOTime").text.strip(),
        "ra": float(pos.find(".//{*}C1").text),
        "dec": float(pos.find(".//{*}C2").text),
        "err": float(pos.find("{*}Error2Radius").text),
        "signif": float(params["Data_Signif"]),
    }


def gbm_event() -> Event:
    # Built by hand from tests/data/voevent/pygcn/gbm_flt_pos.xml (no GCN VOEvent decoder yet).
    v = gbm_values()
    return Event(
        id=f"gcn:{v['ivorn']}",
        source="gcn",
        messenger="em",
        mission="Fermi",
        instrument="GBM",
        upstream_id=v["trig_id"],
        alert_type="flt_pos",
        time=v["iso"] + "0Z",  # 2011-09-04T03:54:36.02 -> millisecond precision
        localization={"type": "point", "ra": v["ra"], "dec": v["dec"], "error_radius": v["err"]},
        properties={"data_signif_sigma": v["signif"]},
        format="voevent",
    )


def igwn_event() -> Event:
    from broker.sources import igwn

    return igwn.decode_json(json.loads((DATA / "igwn/userguide/MS181101ab-preliminary.json").read_bytes()))


def decoded_gbm_event() -> Event:
    """The same VOEvent through the production decoders: category and rule set."""
    from broker.sources import decode

    (ev,) = decode(GBM.read_bytes())
    return ev


def as_db_row(row: dict) -> dict:
    """What the database adds to an inserted row (server defaults)."""
    return {**row, "retracted": False, "retracted_by": None, "ingested_at": datetime.now(timezone.utc)}


def test_point_localization_row() -> None:
    v = gbm_values()
    ev = gbm_event()
    (row,) = event_rows([ArchiveItem(ev, b"raw", KafkaMeta("gcn.classic.voevent.FERMI_GBM_FLT_POS", 0, 42))], [REF])
    assert row["id"] == v["ivorn"].join(["gcn:", ""])
    assert (row["ra_deg"], row["dec_deg"], row["error_radius_deg"]) == (193.0, -31.75, 17.4333)
    assert row["area_90_deg2"] is None
    assert row["time"] == datetime(2011, 9, 4, 3, 54, 36, 20000, tzinfo=timezone.utc)
    assert row["upstream_id"] == "336801278"
    assert (row["kafka_topic"], row["kafka_partition"], row["kafka_offset"]) == (
        "gcn.classic.voevent.FERMI_GBM_FLT_POS", 0, 42,
    )
    assert (row["raw_sha256"], row["raw_segment"], row["raw_offset"], row["raw_length"]) == (
        REF.sha256, REF.segment, REF.offset, REF.length,
    )


def test_healpix_index_matches_healpix_alchemy() -> None:
    import astropy.units as u
    from healpix_alchemy.constants import HPX

    (row,) = event_rows([ArchiveItem(gbm_event(), b"raw")], [REF])
    assert row["hpx"] == int(HPX.lonlat_to_healpix(193.0 * u.deg, -31.75 * u.deg))
    lon, lat = HPX.healpix_to_lonlat(row["hpx"])
    # order-29 pixels are ~0.39 mas = 1.1e-7 deg across: the centre is within one pixel
    assert abs(lon.deg - 193.0) < 1.1e-7 and abs(lat.deg + 31.75) < 1.1e-7
    assert isinstance(row["hpx"], int)
    assert healpix_index([0.0, 359.9999], [90.0, -90.0]).dtype.name == "int64"


def test_healpix_localization_row_uses_max_pixel_and_area() -> None:
    ev = igwn_event()
    alert = json.loads((DATA / "igwn/userguide/MS181101ab-preliminary.json").read_bytes())
    (row,) = event_rows([ArchiveItem(ev, b"raw")], [REF])
    assert row["upstream_id"] == alert["superevent_id"]
    assert row["alert_type"] == alert["alert_type"].lower()
    assert row["ra_deg"] == ev.localization.ra_max
    assert row["dec_deg"] == ev.localization.dec_max
    assert row["area_90_deg2"] == ev.localization.area_90
    assert row["error_radius_deg"] is None
    assert row["hpx"] is not None
    assert (row["kafka_topic"], row["kafka_partition"], row["kafka_offset"]) == (None, None, None)


@pytest.mark.parametrize("make", [gbm_event, igwn_event, decoded_gbm_event])
def test_round_trip(make) -> None:
    ev = make()
    kafka = KafkaMeta("t", 3, 99)
    (row,) = event_rows([ArchiveItem(ev, b"raw", kafka)], [REF])
    assert (row["category"], row["category_rule"]) == (ev.category, ev.category_rule)
    back = archived_from_row(as_db_row(row))
    assert back.event == ev
    assert (back.event.category, back.event.category_rule) == (ev.category, ev.category_rule)
    assert back.kafka == kafka
    assert back.raw == REF
    assert back.retracted is False and back.retracted_by is None


def test_json_strings_from_driver_are_parsed() -> None:
    ev = gbm_event()
    (row,) = event_rows([ArchiveItem(ev, b"raw")], [REF])
    row = as_db_row(row)
    row["localization"] = json.dumps(row["localization"])
    row["properties"] = json.dumps(row["properties"])
    assert archived_from_row(row).event == ev


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_json_value_rejected(bad: float) -> None:
    ev = gbm_event().model_copy(update={"properties": {"nested": {"far_hz": [1.0, bad]}}})
    with pytest.raises(ArchiveDataError, match=r"properties\.nested\.far_hz\[1\]"):
        event_rows([ArchiveItem(ev, b"raw")], [REF])


def test_no_localization() -> None:
    ev = gbm_event().model_copy(update={"localization": None})
    (row,) = event_rows([ArchiveItem(ev, b"raw")], [REF])
    assert row["localization"] is None
    assert row["ra_deg"] is row["dec_deg"] is row["hpx"] is None


def test_category_is_kept_and_null_rows_read_back_without_one() -> None:
    from broker.category import categorize

    ev = decoded_gbm_event()
    # the real GBM flight position: its Most_Likely_Index (flight-software class) is a GRB
    assert (ev.category, ev.category_rule) == ("grb", "gbm_most_likely") == categorize(ev)
    (row,) = event_rows([ArchiveItem(ev, b"raw")], [REF])
    assert archived_from_row(as_db_row(row)).event.category == ev.category
    # a row archived before migration 0008: NULL stays None (not guessed on read)
    old = as_db_row({**row, "category": None, "category_rule": None})
    back = archived_from_row(old).event
    assert back.category is None and back.category_rule is None
    assert back == ev.model_copy(update={"category": None, "category_rule": None})
    assert categorize(back) == (ev.category, ev.category_rule)  # what `events recategorize` stores
