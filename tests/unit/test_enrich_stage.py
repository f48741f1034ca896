"""The enrich stage's handler (broker.pipeline.enrich) with in-memory stores.

The localization and group stores are small in-memory stand-ins with the interface of
broker.enrich.store.LocalizationStore and broker.enrich.groups.GroupStore (the real ones
are tested on PostgreSQL in tests/integration/test_localization_db.py and end to end in
tests/integration/test_enrich_e2e.py). Alerts are the repository's real ones: the LVK
user-guide mock superevent MS181101ab (preliminary alert with its multi-order map, and
its retraction), the Fermi GBM ground notice of trigger 745121685 and the IceCube Gold
track of run 137841 (gwcelery's GCN Kafka examples), real ZTF packets. The GRB and the
neutrino are *moved in time* here (their trigger_time edited, said at each place):
no real coincident pair is bundled.
"""

from __future__ import annotations

import base64
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from broker.enrich.coinc import density_at
from broker.enrich.config import EnrichSettings
from broker.enrich.groups import category_of, group_key
from broker.enrich.points import SourceErrors, crossmatch_point
from broker.errors import DecodeError
from broker.event import PointLocalization
from broker.pipeline.enrich import (
    CatalogArrays, EnrichHandler, coincidence_id, crossmatch_point_fast,
)
from broker.serde import EventCodec, Provenance
from broker.sources import decode
from tests.conftest import DATA, ROOT

GW_JSON = DATA / "igwn/userguide/MS181101ab-preliminary.json"
GW_RETRACTION = DATA / "igwn/userguide/MS181101ab-retraction.json"
GBM_JSON = DATA / "gcn/gwcelery-kafka/kafka_alert_fermi_ground.json"
ICECUBE_GOLD = DATA / "gcn/gwcelery-kafka/kafka_alert_icecube_gold.json"
GW_T0 = "2018-11-01T22:22:46.654"  # MS181101ab's merger time (its alert's event.time)
SCHEMAS = ROOT / "broker/schemas/mma"
PROV = Provenance("enrich", "test", "0" * 16)


# ------------------------------------------------------------------ in-memory stores
@dataclass(frozen=True)
class Ref:
    id: str
    kind: str
    area_50_deg2: float | None
    area_90_deg2: float | None
    n_tiles: int

    def to_json_dict(self):
        return {"id": self.id, "kind": self.kind, "area_50_deg2": self.area_50_deg2,
                "area_90_deg2": self.area_90_deg2, "n_tiles": self.n_tiles}


class MemLocalizations:
    def __init__(self):
        self.skies, self.links, self.positions, self.loads = {}, {}, {}, 0

    def put(self, event_id, sky):
        from broker.enrich.store import content_id

        rid = content_id(sky)
        self.skies[rid] = sky
        self.links[event_id] = rid
        if hasattr(sky, "ra_deg"):
            r = sky.error_radius_deg
            area = None if r is None else math.pi * r * r
            return Ref(rid, "point", area, area, 0)
        from broker.enrich.crossmatch import prepare

        a50, a90 = prepare(sky).credible_areas_deg2((0.5, 0.9))
        return Ref(rid, "skymap", float(a50), float(a90), int(sky.uniq.size))

    def load(self, ref_id):
        self.loads += 1
        return self.skies[ref_id]

    def events_in_region(self, ref_id, level=0.9, *, sources=None, since=None, until=None, limit=1000):
        from broker.enrich.coinc import credible_level_at
        from broker.skymap import MultiOrderSkyMap

        sky = self.skies[ref_id]
        out = []
        for eid, (src, t, ra, dec) in self.positions.items():
            if sources and src not in sources or since and t < since or until and t >= until:
                continue
            if isinstance(sky, MultiOrderSkyMap) and credible_level_at(sky, ra, dec)[0] <= level:
                out.append(eid)
        return out[:limit]

    def index(self, events):
        for e in events:
            self.positions[e.id] = (e.source, e.time, e.localization.ra, e.localization.dec)
        return len(events)


@dataclass
class State:
    key: str
    revisions: list
    latest: str
    best_localization: Ref | None
    retracted: bool
    t0: str
    category: str


@dataclass
class MemGroups:
    groups: dict = field(default_factory=dict)
    areas: dict = field(default_factory=dict)

    def add(self, event, ref):
        key = group_key(event)
        g = self.groups.setdefault(key, {"events": [], "cat": category_of(event)})
        if event.id not in [e.id for e in g["events"]]:
            g["events"].append(event)
        if ref is not None:
            self.areas[event.id] = ref
        return self.get(key)

    def get(self, key):
        g = self.groups[key]
        evs = g["events"]
        refs = [self.areas[e.id] for e in evs if e.id in self.areas]
        best = min(reversed(refs), key=lambda r: r.area_90_deg2 if r.area_90_deg2 is not None else math.inf,
                   default=None)
        kept = [e for e in evs if not e.is_retraction] or evs
        return State(key, [e.id for e in evs], evs[-1].id, best, any(e.is_retraction for e in evs), kept[-1].time,
                     g["cat"])

    def in_time_window(self, t0, lo_s, hi_s, *, categories=None):
        from broker.enrich.coinc import seconds_between

        out = []
        for key in self.groups:
            st = self.get(key)
            if categories is not None and st.category not in categories:
                continue
            if lo_s <= seconds_between(t0, st.t0) <= hi_s:
                out.append(st)
        return out


class MemArchive:
    def __init__(self):
        self.raws, self.events, self.raw_reads = {}, {}, []

    def add(self, raw):
        evs = decode(raw)
        for e in evs:  # the first form archived keeps its row and raw bytes, as Archive.write_batch
            self.raws.setdefault(e.id, raw)
            self.events.setdefault(e.id, e)
        return evs

    def raw(self, event_id):
        self.raw_reads.append(event_id)
        return self.raws[event_id]

    def get(self, event_id):
        e = self.events.get(event_id)
        return None if e is None else type("Rec", (), {"event": e})()


class Msg:
    def __init__(self, value):
        self._v = value

    def value(self):
        return self._v


@pytest.fixture()
def stage():
    locs, groups, archive = MemLocalizations(), MemGroups(), MemArchive()
    h = EnrichHandler(localizations=locs, groups=groups, archive=archive, settings=EnrichSettings(),
                      enriched_topic="mma.events.enriched", coincidences_topic="mma.coincidences", provenance=PROV,
                      index_positions=locs.index)
    h.mem = (locs, groups, archive)
    return h


CODEC = EventCodec()


def feed(h, raw: bytes):
    """Archive an alert's Events (as ingest does), then handle each as read from mma.events."""
    out = []
    for ev in h.mem[2].add(raw):
        handled = h.handle(Msg(CODEC.encode(ev, PROV)))
        if handled.write is not None:
            h.write([handled])
        h.committed([handled], [])
        out.append(handled)
    return out


def feed_batch(h, events):
    """Handle several Events as one batch (write and commit after the last)."""
    handled = []
    for ev in events:
        h.mem[2].events[ev.id] = ev
        handled.append(h.handle(Msg(CODEC.encode(ev, PROV))))
    h.write([x for x in handled if x.write is not None])
    h.committed(handled, [])
    return handled


def docs(handled, topic):
    return [json.loads(r.value) for hd in handled for r in hd.outputs if r.topic == topic]


def moved(path: Path, t0: str) -> bytes:
    """The real GCN notice with its trigger_time replaced (made for this test: no real
    coincident pair is bundled)."""
    obj = json.loads(path.read_text())
    obj["trigger_time"] = t0
    return json.dumps(obj).encode()


def _schema(name):
    return json.loads((SCHEMAS / name).read_text())


# ------------------------------------------------------------------ tests
def test_gw_alert_is_enriched_with_its_map_group_and_schema(stage):
    (h,) = feed(stage, GW_JSON.read_bytes())
    (doc,) = docs([h], "mma.events.enriched")
    jsonschema.validate(doc, _schema("enriched_event.json"))
    enr = doc["enrichment"]
    assert enr["error"] is None and enr["localization"]["kind"] == "skymap"
    assert enr["localization"]["n_tiles"] == 19200  # the user guide's BAYESTAR map
    assert 0 < enr["localization"]["area_50_deg2"] < enr["localization"]["area_90_deg2"]
    assert enr["group"] == {"key": "igwn:MS181101ab", "category": "gw", "revision": 1, "n_revisions": 1,
                            "latest": doc["id"], "retracted": False, "t0": doc["time"],
                            "best_localization": enr["localization"]["id"]}
    assert h.outputs[0].key == b"MS181101ab"
    assert stage.mem[2].raw_reads == [doc["id"]]  # the raw alert read once, to decode its map


def test_gw_then_grb_in_window_gives_one_coincidence_with_ravens_joint_far(stage):
    (gw,) = feed(stage, GW_JSON.read_bytes())
    assert docs([gw], "mma.coincidences") == []
    (grb,) = feed(stage, moved(GBM_JSON, "2018-11-01T22:22:48.654"))  # moved: dt = +2 s
    (c,) = docs([grb], "mma.coincidences")
    jsonschema.validate(c, _schema("coincidence.json"))
    assert c["id"] == "gw-grb:igwn:MS181101ab+gcn:fermi:745121685" == grb.outputs[1].key.decode()
    assert c["kind"] == "gw-grb" and not c["retracted"] and c["search"] == "cbc"
    assert c["dt_s"] == pytest.approx(2.0) and c["window_s"] == [-1.0, 5.0]
    # RAVEN, independently: I = 4π ρ_gw(point) / ∫ρ_gw dΩ; temporal = FAR·R·Δt; joint = temporal / I
    locs = stage.mem[0]
    gw_sky = locs.skies[locs.links[c["members"][0]["event_id"]]]
    area = 4 * math.pi / 12 * np.ldexp(1.0, -2 * (np.floor(np.log2(gw_sky.uniq) / 2) - 1).astype(int))
    total = float(np.sum(gw_sky.probdensity * area))
    ra, dec = 90.56, -67.87  # the notice's position
    overlap = 4 * math.pi * float(density_at(gw_sky, ra, dec)[0]) / total
    temporal = 9.11069936486e-14 * (310.0 / (365 * 86400)) * 6.0
    assert c["overlap_integral"] == pytest.approx(overlap, rel=1e-9)
    assert c["temporal_far_hz"] == pytest.approx(temporal, rel=1e-12)
    assert c["joint_far_hz"] == pytest.approx(temporal / overlap, rel=1e-9)
    (enriched,) = docs([grb], "mma.events.enriched")
    assert enriched["enrichment"]["coincidences"] == [c["id"]]
    assert stage.stats.coincidences["gw-grb"] == 1


def test_grb_first_then_gw_gives_the_same_coincidence_id(stage):
    (grb,) = feed(stage, moved(GBM_JSON, "2018-11-01T22:22:50.000"))  # moved: dt = +3.346 s
    assert docs([grb], "mma.coincidences") == []
    (gw,) = feed(stage, GW_JSON.read_bytes())
    (c,) = docs([gw], "mma.coincidences")
    assert c["id"] == coincidence_id("gw-grb", "igwn:MS181101ab", "gcn:fermi:745121685")
    assert c["dt_s"] == pytest.approx(3.346, abs=1e-6) and c["computed_from"] == gw.info.event.id


@pytest.mark.parametrize("t0", ["2018-11-01T22:22:45.000", "2018-11-01T22:22:52.000", "2018-11-02T22:22:48.654"])
def test_grb_outside_the_cbc_window_gives_none(stage, t0):
    feed(stage, GW_JSON.read_bytes())
    (grb,) = feed(stage, moved(GBM_JSON, t0))  # moved outside [-1, +5] s
    assert docs([grb], "mma.coincidences") == []
    assert stage.stats.coincidences == {}


def test_retraction_republishes_the_coincidence_retracted(stage):
    feed(stage, GW_JSON.read_bytes())
    (grb,) = feed(stage, moved(GBM_JSON, "2018-11-01T22:22:48.654"))
    (first,) = docs([grb], "mma.coincidences")
    (ret,) = feed(stage, GW_RETRACTION.read_bytes())
    (again,) = docs([ret], "mma.coincidences")
    assert again["id"] == first["id"] and again["retracted"] is True
    assert again["retracted_by"] == again["computed_from"] == ret.info.event.id
    assert again["joint_far_hz"] == first["joint_far_hz"]
    (enriched,) = docs([ret], "mma.events.enriched")
    assert enriched["enrichment"]["group"]["retracted"] is True
    assert stage.stats.retracted_coincidences == 1
    # a GRB arriving after the retraction finds no live GW group
    (late,) = feed(stage, moved(GBM_JSON, "2018-11-01T22:22:49.000").replace(b"745121685", b"745121686"))
    assert docs([late], "mma.coincidences") == []


def test_gw_neutrino_gold_track_within_500_s(stage):
    feed(stage, GW_JSON.read_bytes())
    (nu,) = feed(stage, moved(ICECUBE_GOLD, "2018-11-01T22:25:00.000"))  # moved: dt = +133.346 s
    (c,) = docs([nu], "mma.coincidences")
    assert c["kind"] == "gw-neutrino" and c["stream"] == "gold"
    assert c["dt_s"] == pytest.approx(133.346, abs=1e-6)
    assert c["members"][0]["group"] == "igwn:MS181101ab" and c["members"][1]["role"] == "neutrino"
    jsonschema.validate(c, _schema("coincidence.json"))
    (far,) = feed(stage, moved(ICECUBE_GOLD, "2018-11-01T22:40:00.000").replace(b"137841", b"137842"))
    assert docs([far], "mma.coincidences") == []  # +1033 s: outside ±500 s


def _notice_with_map(blob: bytes) -> bytes:
    """The real GBM notice carrying ``blob`` as its ``healpix_file`` (made for this test).
    The GCN decoder keeps such a notice (the map's problem goes to its properties), so
    the Event is archived and reaches the enrich stage."""
    obj = json.loads(moved(GBM_JSON, "2018-11-01T22:22:48.654"))
    obj["healpix_file"] = base64.b64encode(blob).decode()
    return json.dumps(obj).encode()


def _bayestar(edit) -> bytes:
    import io

    from astropy.io import fits

    with fits.open(DATA / "igwn/userguide/bayestar.multiorder.fits") as hdul:
        edit(hdul[1].data)
        buf = io.BytesIO()
        hdul.writeto(buf)
    return buf.getvalue()


def _negative(data):
    data["PROBDENSITY"][:10] = -1.0


def _nan(data):
    data["PROBDENSITY"][5] = np.nan


@pytest.mark.parametrize("blob, says", [
    (b"not a FITS file at all" * 10, "not a FITS"),
    (lambda: _bayestar(_negative), "negative"),
    (lambda: _bayestar(_nan), "NaN"),
])
def test_bad_sky_map_is_published_with_the_reason_not_dead_lettered(stage, blob, says):
    blob = blob() if callable(blob) else blob
    (h,) = feed(stage, _notice_with_map(blob))
    (doc,) = docs([h], "mma.events.enriched")
    enr = doc["enrichment"]
    assert enr["error"].startswith("localization not decoded:") and doc["id"] in enr["error"]
    assert "healpix_file" in enr["error"] and says in enr["error"], enr["error"]
    assert enr["localization"] is None and enr["crossmatch"] == {}
    assert stage.stats.bad_localizations == 1 and stage.stats.dead_letters == 0
    jsonschema.validate(doc, _schema("enriched_event.json"))


def test_good_healpix_file_is_the_notice_localization(stage):
    (h,) = feed(stage, _notice_with_map((DATA / "igwn/userguide/bayestar.multiorder.fits").read_bytes()))
    (doc,) = docs([h], "mma.events.enriched")
    assert doc["enrichment"]["error"] is None and doc["enrichment"]["localization"]["kind"] == "skymap"


def test_not_an_event_is_a_dead_letter(stage):
    with pytest.raises(DecodeError, match="^enrich: "):
        stage.handle(Msg(b'{"not": "an event"}'))


def test_ztf_alert_reads_no_raw_bytes_and_indexes_its_position(stage):
    packets = sorted((DATA / "ztf").rglob("*.avro"))[:5]
    assert packets
    seen = 0
    for p in packets:
        try:
            hs = feed(stage, p.read_bytes())
        except DecodeError:
            continue
        for h in hs:
            (doc,) = docs([h], "mma.events.enriched")
            assert doc["enrichment"]["localization"]["kind"] == "point"
            assert doc["enrichment"]["group"]["key"].startswith("ztf:")
            seen += 1
    assert seen and stage.mem[2].raw_reads == []
    assert len(stage.mem[0].positions) == seen


def test_replaying_a_message_gives_the_same_records(stage):
    feed(stage, GW_JSON.read_bytes())
    raw = moved(GBM_JSON, "2018-11-01T22:22:48.654")
    (a,) = feed(stage, raw)
    (b,) = feed(stage, raw)
    assert [(r.topic, r.key, r.value) for r in a.outputs] == [(r.topic, r.key, r.value) for r in b.outputs]


def _fgl() -> CatalogArrays:
    from broker.enrich.catalogs import read_catalog

    cat = read_catalog(DATA / "catalogs/4FGL-DR4_gll_psc_v35_positions.fits", "4FGL")
    ok = np.flatnonzero(cat.accepted)
    e = cat.errors
    errors = SourceErrors(major_deg=e.major_deg[ok], minor_deg=e.minor_deg[ok], pa_deg=e.pa_deg[ok],
                          containment=e.containment)
    return CatalogArrays("4FGL", 1, ok, cat.ra_deg[ok], cat.dec_deg[ok], None, errors, None)


def test_point_crossmatch_through_the_tree_equals_the_whole_catalog_scan():
    cat = _fgl()
    rng = np.random.default_rng(9)
    # positions on 4FGL sources (offset by up to 0.1 deg) and random ones, radii 0..2 deg
    idx = rng.integers(0, cat.rows.size, 60)
    ras = np.concatenate((cat.ra_deg[idx] + rng.normal(0, 0.05, 60), rng.uniform(0, 360, 60))) % 360
    decs = np.clip(np.concatenate((cat.dec_deg[idx] + rng.normal(0, 0.05, 60), np.degrees(np.arcsin(
        rng.uniform(-1, 1, 60))))), -90, 90)
    radii = rng.uniform(0, 2, 120)
    n_matched = 0
    for ra, dec, r in zip(ras, decs, radii):
        point = PointLocalization(ra=float(ra), dec=float(dec), error_radius=float(r), containment=0.68)
        fast = crossmatch_point_fast(point, cat, 0.9)
        full = crossmatch_point(point, cat.ra_deg, cat.dec_deg, cat.errors, 0.9)
        assert fast.rows.tolist() == full.rows.tolist()
        np.testing.assert_allclose(fast.separation_deg, full.separation_deg, rtol=1e-12)
        assert fast.nearest_row == full.nearest_row
        assert fast.nearest_separation_deg == pytest.approx(full.nearest_separation_deg, abs=1e-9)
        n_matched += fast.rows.size
    assert n_matched > 50  # the comparison covers matches, not only empty results


def test_point_event_is_crossmatched_with_a_cached_catalog(stage):
    cat = _fgl()

    class Cats:
        def catalogs(self):
            return [cat]

        def labels(self, c, rows):
            return {int(r): f"src{int(r)}" for r in rows}

    stage.catalogs = Cats()
    # the real AGILE ground alert: 3 deg error circle, 11 4FGL sources within the combined 90 % error
    (h,) = feed(stage, (DATA / "gcn/gcn-schema-pr161-classic/gcn/notices/classic/agile/Ground_alert.example.json")
                .read_bytes())
    (doc,) = docs([h], "mma.events.enriched")
    x = doc["enrichment"]["crossmatch"]["4FGL"]
    assert x["kind"] == "point" and x["n_matched"] == 11
    seps = [m["separation_deg"] for m in x["matches"]]
    assert seps == sorted(seps) and len(seps) == min(20, x["n_matched"])
    assert x["matches"][0]["name"] == f"src{x['matches'][0]['row']}"


def test_enrich_settings_load_without_numpy_and_stage_is_registered(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[enrich]\ncatalogs = ["glade"]\ntop_n = 5\n[enrich.coincidences]\ngrb_rate_per_yr = 305\n'
                   'cbc_window_s = [-2, 6]\n')
    code = ("import sys\nfrom broker.config import load_settings\n"
            f"s = load_settings({str(cfg)!r})\n"
            "print(s.enrich.catalogs, s.enrich.top_n, s.enrich.coincidences.grb_rate_per_yr,"
            " s.enrich.coincidences.cbc_window_s, 'numpy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.stdout.split() == ["['glade']", "5", "305.0", "(-2.0,", "6.0)", "False"], out.stderr
    from broker import plugins

    assert plugins.available(plugins.STAGES)["enrich"].value == "broker.pipeline.enrich:stages"


def _candidate(n: int, days_after: float, ra: float, dec: float):
    """A ZTF candidate *made for this test* (not an alert): position and time chosen
    inside MS181101ab's 90 % region, ``days_after`` its T0; no earlier detection."""
    from datetime import datetime, timedelta, timezone

    from broker.event import Event, format_time

    t = datetime(2018, 11, 1, 22, 22, 46, 654000, tzinfo=timezone.utc) + timedelta(days=days_after)
    jd = t.timestamp() / 86400 + 2440587.5
    return Event(id=f"ztf:test{n}:1", source="ztf", messenger="em", mission="ZTF", upstream_id=f"ZTF18test{n}",
                 alert_type="candidate", time=format_time(t),
                 localization=PointLocalization(ra=ra, dec=dec, error_radius=1 / 3600, containment=0.68),
                 properties={"jdstarthist": jd, "candid": n}, format="avro")


def _peak(stage):
    locs = stage.mem[0]
    (gw_ref,) = [r for e, r in locs.links.items() if e.startswith("igwn:")]
    sky = locs.skies[gw_ref]
    from astropy_healpix import uniq_to_level_ipix
    from astropy_healpix.core import healpix_to_lonlat

    level, ipix = uniq_to_level_ipix(sky.uniq[np.argmax(sky.probdensity)])
    lon, lat = healpix_to_lonlat(ipix, 2 ** int(level), order="nested")
    return float(lon.deg), float(lat.deg)


@pytest.mark.parametrize("order", ["gw_first", "same_batch_candidate_first"])
def test_ztf_candidate_in_the_gw_region_after_t0_is_an_optical_coincidence(stage, order):
    if order == "gw_first":
        feed(stage, GW_JSON.read_bytes())
        ra, dec = _peak(stage)
        (h,) = feed_batch(stage, [_candidate(1, 1.0, ra, dec)])
        found = docs([h], "mma.coincidences")
    else:
        gw = stage.mem[2].add(GW_JSON.read_bytes())
        # the candidate is handled first, in the same batch: not indexed yet when the GW looks
        stage.mem[0].put(gw[0].id, stage.extract(gw[0], stage.mem[2].raws[gw[0].id]))
        ra, dec = _peak(stage)
        handled = feed_batch(stage, [_candidate(1, 1.0, ra, dec), *gw])
        found = docs(handled, "mma.coincidences")
    (c,) = found
    assert c["kind"] == "gw-optical" and c["id"] == "gw-optical:igwn:MS181101ab+ztf:ZTF18test1"
    assert c["dt_days"] == pytest.approx(1.0) and c["credible_level"] < 0.9 and c["history_checked"] is False
    jsonschema.validate(c, _schema("coincidence.json"))


def test_ztf_candidate_before_t0_or_outside_the_region_is_not(stage):
    feed(stage, GW_JSON.read_bytes())
    ra, dec = _peak(stage)
    handled = feed_batch(stage, [_candidate(2, -0.5, ra, dec), _candidate(3, 1.0, (ra + 180) % 360, -dec),
                                 _candidate(4, 3.5, ra, dec)])
    assert docs(handled, "mma.coincidences") == []


def test_avro_form_of_an_alert_archived_as_json_is_decoded_from_the_archived_form(stage):
    """An LVK alert's JSON and Avro forms share one Event id; the archive keeps the bytes of
    the form it saw first, so the map is read with that form's Event."""
    (js,) = feed(stage, GW_JSON.read_bytes())
    avro = decode((DATA / "igwn/userguide/MS181101ab-preliminary.avro").read_bytes())
    (ev,) = [e for e in avro if e.alert_type == "preliminary"]
    assert ev.id == js.info.event.id and ev.format == "avro"
    stage.mem[2].add((DATA / "igwn/userguide/MS181101ab-preliminary.avro").read_bytes())
    h = stage.handle(Msg(CODEC.encode(ev, PROV)))
    (doc,) = docs([h], "mma.events.enriched")
    (first,) = docs([js], "mma.events.enriched")
    assert doc["format"] == "avro" and doc["enrichment"]["error"] is None
    assert doc["enrichment"]["localization"]["id"] == first["enrichment"]["localization"]["id"]


def _gw_revision_at(path: Path, t0: str) -> bytes:
    """A real LVK alert with its merger time edited (made for this test: a later revision
    whose preferred event has another T0, as happens when LVK changes it)."""
    obj = json.loads(path.read_text())
    obj["event"]["time"] = t0
    return json.dumps(obj).encode()


def test_gw_revision_moving_t0_out_of_the_window_supersedes_the_coincidence(stage):
    feed(stage, GW_JSON.read_bytes())
    (grb,) = feed(stage, moved(GBM_JSON, "2018-11-01T22:22:48.654"))
    (first,) = docs([grb], "mma.coincidences")
    (upd,) = feed(stage, _gw_revision_at(DATA / "igwn/userguide/MS181101ab-update.json", "2018-11-01T22:22:56.654Z"))
    (again,) = docs([upd], "mma.coincidences")
    jsonschema.validate(again, _schema("coincidence.json"))
    assert again["id"] == first["id"] and first["coincident"] is True and again["coincident"] is False
    assert again["dt_s"] == pytest.approx(-8.0) and again["joint_far_hz"] is None
    assert "no longer coincident" in again["notes"][-1] and first["members"][0]["event_id"] in again["notes"][-1]
    # each later revision restates it (the latest record of a key is the coincidence's state)
    (upd2,) = feed(stage, _gw_revision_at(DATA / "igwn/userguide/MS181101ab-initial.json", "2018-11-01T23:22:56.654Z"))
    assert [d["coincident"] for d in docs([upd2], "mma.coincidences")] == [False]


def test_grb_revision_moving_out_of_the_window_supersedes_the_coincidence(stage):
    feed(stage, GW_JSON.read_bytes())
    (grb,) = feed(stage, moved(GBM_JSON, "2018-11-01T22:22:48.654"))
    assert [d["coincident"] for d in docs([grb], "mma.coincidences")] == [True]
    later = json.loads(moved(GBM_JSON, "2018-11-01T22:23:48.654"))  # moved: a later notice with another T0
    later["record_number"] = 7
    (h,) = feed(stage, json.dumps(later).encode())
    (again,) = docs([h], "mma.coincidences")
    assert again["coincident"] is False and again["dt_s"] == pytest.approx(62.0)
