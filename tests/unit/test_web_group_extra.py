"""Group-page sections for optical candidates and follow-up results, and the candidate pages
(broker/web/group_extra.py, broker/web/cutouts.py), on the real PostgreSQL.

Archived as the pipeline stores them (localizations and groups of broker.enrich): the LVK
user-guide mock superevent MS181101ab (preliminary with its multi-order sky map, initial)
and Fermi GBM trigger 745121685 (alert, flight: error circles). No real ZTF alert of
tests/data falls in those regions and days, so the candidates in the region are **made for
this test**: real ZTF packets (their raw bytes, history and cutouts unchanged) archived as
Events whose T0 and position are moved to chosen places around the triggers (ids
``ztf:9...``); each is labelled below. The hostile packets are a real ZTF packet re-encoded
with its stamps replaced (a 1 GiB gzip bomb, bytes that are not gzip, a truncated gzip).
The follow-up rows are real: the follow-up worker (followup.worker.WorkerHandler.execute)
analyses the quickstart's GRB 230307A request on the bundled SPI-ACS light curve, and the
GBM trigger (no light curve at its T0: "no data").
"""

from __future__ import annotations

import io
import zlib
from datetime import datetime, timedelta, timezone

import fastavro
import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from broker.archive import Archive, ArchiveItem, KafkaMeta, PostgresRawStore
from broker.config import Settings
from broker.enrich.coinc import credible_level_at
from broker.enrich.groups import GroupStore
from broker.enrich.localization import extract_localization
from broker.enrich.store import LocalizationStore
from broker.event import PointLocalization, format_time
from broker.sinks.web import archive_fetcher, make_app
from broker.sources import decode
from broker.web import cutouts, group_extra
from broker.web.pages import PageContext, make_templates
from tests.conftest import DATA, _new_database

GW = [DATA / "igwn/userguide" / n for n in ("MS181101ab-preliminary.json", "MS181101ab-initial.json")]
GBM = [DATA / "gcn/gwcelery-kafka" / f"kafka_alert_fermi_{k}.json" for k in ("alert", "flight")]
ZTF = sorted((DATA / "ztf/kowalski").rglob("*.avro"))
LSST = DATA / "relayed/fink/lsst/part-2-918301-first2.avro"  # two real Rubin alerts relayed by Fink
PNG = b"\x89PNG\r\n\x1a\n"


def _png_array(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _moved(ev, n: int, t: datetime, ra: float, dec: float):
    """A real ZTF Event moved to (t, ra, dec) with id ztf:9<n> (made for this test)."""
    return ev.model_copy(update={"id": f"ztf:9{n:018d}", "time": format_time(t),
                                 "localization": PointLocalization(ra=ra, dec=dec, error_radius=1e-4)})


def _bomb_packet(raw: bytes) -> bytes:
    """The real ZTF packet ``raw`` re-encoded with its stamps made hostile: science = a gzip
    stream inflating to 1 GiB of zeros, template = bytes that are not gzip, difference = a
    truncated gzip stream. Made for this test."""
    reader = fastavro.reader(io.BytesIO(raw))
    schema, recs = reader.writer_schema, list(reader)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 24)
    bomb = b"".join([c.compress(zeros) for _ in range(64)] + [c.flush()])
    rec = recs[0]
    rec["cutoutScience"]["stampData"] = bomb
    rec["cutoutTemplate"]["stampData"] = b"SIMPLE? not a stamp" * 50
    rec["cutoutDifference"]["stampData"] = rec["cutoutDifference"]["stampData"][:200]
    out = io.BytesIO()
    fastavro.writer(out, schema, [rec])
    return out.getvalue()


@pytest.fixture(scope="module")
def world(pg_url, tmp_path_factory):
    """(client, ctx, facts) — the alerts archived, localized and grouped once for the module."""
    from broker.serde import Provenance
    from followup.attitude import LocalOrbitFiles
    from followup.availability import RetryPolicy
    from followup.bundled import bundled_data_dir
    from followup.cache import DirectoryCache
    from followup.datasources import LocalFitsSource, MmodaSource
    from followup.isgri import IsgriClient
    from followup.messages import FollowupRequest, adhoc_event
    from followup.service import FollowupSources
    from followup.store import FollowupStore
    from followup.worker import FollowupStats, WorkerHandler

    with _new_database(pg_url) as url:
        archive = Archive(url, PostgresRawStore())
        archive.migrate()
        notices = [(ev, p.read_bytes()) for p in GW + GBM for ev in decode(p.read_bytes())]
        real = [(ev, p.read_bytes()) for p in ZTF[:6] for ev in decode(p.read_bytes())]
        gw = notices[0][0]
        gbm = next(ev for ev, _ in notices[len(GW):] if ev.localization is not None)  # the flight position
        sky = extract_localization(gw, notices[0][1])
        t_gw = datetime.fromisoformat(gw.time[:-1]).replace(tzinfo=timezone.utc)
        t_gbm = datetime.fromisoformat(gbm.time[:-1]).replace(tzinfo=timezone.utc)
        # positions: the GW map's densest tile centre and a grid around it, to have some in and some out
        peak_ra, peak_dec = 194.30419921874997, -17.856895095545468
        grid = [(peak_ra + dx, peak_dec + dy) for dx in (-6, -3, 0, 3, 6) for dy in (-4, 0, 4)]
        made, n = [], 0
        for k, (ra, dec) in enumerate(grid):  # T0 + 1 d (+ k hours): inside the window
            ev, raw = real[k % len(real)]
            made.append((_moved(ev, n, t_gw + timedelta(days=1, hours=k), ra % 360, dec), raw))
            n += 1
        for days in (-2.0, 15.0):  # at the map's peak but outside the window [-1, +14] d
            ev, raw = real[0]
            made.append((_moved(ev, n, t_gw + timedelta(days=days), peak_ra, peak_dec), raw))
            n += 1
        import astropy.units as u
        from astropy.coordinates import SkyCoord

        centre = SkyCoord(gbm.localization.ra * u.deg, gbm.localization.dec * u.deg)
        away = centre.directional_offset_by(180 * u.deg if centre.dec.deg > 0 else 0 * u.deg,
                                            (gbm.localization.error_radius * 4 + 1.0) * u.deg)
        from broker.enrich.coinc import radius_at_level

        r90 = radius_at_level(gbm.localization.error_radius, gbm.localization.containment, 0.9)
        edge_in = centre.directional_offset_by(40 * u.deg, 0.98 * r90 * u.deg)
        edge_out = centre.directional_offset_by(40 * u.deg, 1.02 * r90 * u.deg)
        # GBM circle: at its centre, 4 radii + 1 deg off, just inside and just outside its 90 % radius
        for c, hours in ((centre, 1), (away, 2), (edge_in, 3), (edge_out, 4)):
            ev, raw = real[1]
            made.append((_moved(ev, n, t_gbm + timedelta(hours=hours), float(c.ra.deg), float(c.dec.deg)), raw))
            n += 1
        hostile_raw = _bomb_packet(ZTF[7].read_bytes())
        hostile = decode(hostile_raw)[0]
        rubin = [(ev, LSST.read_bytes()) for ev in decode(LSST.read_bytes())]
        items = notices + real + made + [(hostile, hostile_raw)] + rubin
        archive.write_batch([ArchiveItem(event=ev, raw=raw, kafka=KafkaMeta("t", 0, i))
                             for i, (ev, raw) in enumerate(items)])
        locs, groups = LocalizationStore(archive.engine), GroupStore(archive.engine)
        for ev, raw in notices:
            s = extract_localization(ev, raw)
            groups.add(ev, locs.put(ev.id, s) if s is not None else None)
        for ev, _ in real[:2]:
            groups.add(ev, None)

        # follow-up: the quickstart's GRB 230307A request and the GBM trigger, run by the real worker
        data = bundled_data_dir()
        sources = FollowupSources(LocalFitsSource(data), LocalOrbitFiles(data), IsgriClient(
            MmodaSource(url="http://127.0.0.1:9/dispatch-data", retry=RetryPolicy(attempts=1, base_delay_s=0.01))))
        worker = WorkerHandler(store=FollowupStore(archive.engine), archive=archive, sources=sources,
                               cache=DirectoryCache(tmp_path_factory.mktemp("fcache")), results_topic="r",
                               provenance=Provenance(component="test", version="0", config_hash="0"),
                               stats=FollowupStats())
        grb = adhoc_event("2023-03-07T15:44:06.670Z", "GRB 230307A",
                          PointLocalization(ra=60.85935, dec=-75.3788, error_radius=0.00094, containment=0.9))
        params = {"window_s": 300.0, "max_sky_samples": 1000}
        for ev, group in ((grb, None), (gbm, "gcn:fermi:745121685")):
            worker.execute(FollowupRequest(kind="analyze", event=ev, analyses=("spiacs", "isgri"), params=params,
                                           requested_by="cli", group=group))

        settings = Settings(home=tmp_path_factory.mktemp("home"), archive={"raw_store": "postgres"})
        fetch = archive_fetcher(archive)
        app = make_app(fetch, "https://broker.example.org", archive.engine)
        ctx = PageContext(engine=archive.engine, settings=settings, fetch=fetch, templates=make_templates())
        group_extra.install(app, ctx)
        client = TestClient(app, raise_server_exceptions=False)
        levels = credible_level_at(sky, np.array([ra % 360 for ra, _ in grid]), np.array([d for _, d in grid]))
        facts = {"gw": gw, "gbm": gbm, "made": made, "grid_levels": levels, "hostile": hostile, "real": real,
                 "rubin": rubin}
        try:
            yield client, ctx, facts
        finally:
            archive.close()


def _group(client, key):
    r = client.get(f"/api/groups/{key}")
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------------ candidates in the region
def test_ztf_section_lists_the_candidates_in_the_90_region_and_window(world):
    client, ctx, f = world
    out = group_extra.ztf_section(ctx, _group(client, "igwn:MS181101ab"))
    assert out["mode"] == "region" and out["localization_kind"] == "skymap"
    assert out["localization_event"].startswith("igwn:MS181101ab:initial")  # the latest revision with a map
    inside = {f["made"][k][0].id for k, lv in enumerate(f["grid_levels"]) if lv <= 0.9}
    outside = {f["made"][k][0].id for k, lv in enumerate(f["grid_levels"]) if lv > 0.9}
    assert inside and outside  # the grid straddles the region's edge
    got = [r["event_id"] for r in out["rows"]]
    assert set(got) == inside and out["n_total"] == len(inside) and out["n_more"] == 0
    # ranked by credible level, which is ligo.skymap's searched_prob at the position
    lv = {f["made"][k][0].id: float(v) for k, v in enumerate(f["grid_levels"])}
    assert [r["credible_level"] for r in out["rows"]] == sorted(r["credible_level"] for r in out["rows"])
    for r in out["rows"]:
        assert r["credible_level"] == pytest.approx(lv[r["event_id"]], abs=1e-9)
        assert r["url"] == f"/candidates/{r['event_id']}?t0={f['gw'].time}" and r["object_id"].startswith("ZTF")
        assert 1.0 <= r["dt_days"] <= 2.0 and r["band"] in ("g", "r", "i") and r["probdensity_deg2"] > 0
        # ZTF's jdstarthist of these real packets (2020, 2023) is after this 2018 trigger
        assert r["detected_before_t0"] is False
    # the two at the map's peak but 2 d before and 15 d after T0 are not listed
    assert not {e.id for e, _ in f["made"][15:17]} & set(got)


def test_ztf_section_puts_the_enrich_coincidences_first(world):
    """Two gw-optical records in table ``coincidences`` (as the enrich stage writes them;
    made for this test, deleted after it): the candidate the map ranks last, with
    optical_verdict's real numbers on the real map, and one the latest window no longer
    holds (15 d after T0, as if recorded earlier). Both come first, flagged, the second after
    the first."""
    from broker.enrich.coinc import optical_verdict
    from broker.enrich.coincidence_store import write_coincidences

    client, ctx, f = world
    group = _group(client, "igwn:MS181101ab")
    before = group_extra.ztf_section(ctx, group)["rows"]
    last = next(e for e, _ in f["made"] if e.id == before[-1]["event_id"])  # the map ranks it last
    late = f["made"][16][0]
    sky = LocalizationStore(ctx.engine).load(group["best_localization"]["id"])
    recs = []
    for cand in (last, late):
        v = optical_verdict(f["gw"], sky, cand, [])
        recs.append({"id": f"gw-optical:igwn:MS181101ab+ztf:{cand.upstream_id}", "kind": "gw-optical",
                     "computed_from": cand.id, "coincident": True, "retracted": False,
                     "members": [{"group": "igwn:MS181101ab", "event_id": f["gw"].id},
                                 {"group": f"ztf:{cand.upstream_id}", "event_id": cand.id}],
                     "object_id": cand.upstream_id, "dt_days": v.dt_days, "credible_level": v.credible_level,
                     "history_checked": True})
    try:
        write_coincidences(ctx.engine, recs)
        out = group_extra.ztf_section(ctx, group)
        ids = [r["event_id"] for r in out["rows"]]
        # the recorded coincidences first (in the latest region, then not), then the others in their order
        assert ids[:2] == [last.id, late.id] and out["n_enrich"] == 2
        assert ids[2:] == [r["event_id"] for r in before[:-1]]
        first = out["rows"][0]
        assert first["enrich"]["current"] and first["enrich"]["history_checked"]
        assert first["enrich"]["credible_level"] == pytest.approx(first["credible_level"], abs=1e-9)
        assert out["rows"][1]["outside_region"] and out["n_total"] == len(before) + 1
        html = ctx.templates.env.get_template("_ztf.html").render(ztf=out)
        assert html.count(">coincidence</span>") == 2 and "outside the latest region or window" in html
    finally:
        with ctx.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM coincidences"))


def test_ztf_section_of_a_grb_error_circle(world):
    client, ctx, f = world
    out = group_extra.ztf_section(ctx, _group(client, "gcn:fermi:745121685"))
    assert out["mode"] == "region" and out["localization_kind"] == "point"
    # in the exact 90 % circle of optical_verdict (radius_at_level): the centre and 0.98 r90, nearest
    # first; not 1.02 r90 nor 4 radii off
    assert [r["event_id"] for r in out["rows"]] == [f["made"][17][0].id, f["made"][19][0].id]
    centre, edge = out["rows"]
    assert centre["separation_deg"] < 1e-6 and centre["credible_level"] < 1e-9
    assert edge["credible_level"] == pytest.approx(1 - 0.1 ** (0.98 ** 2), rel=1e-6)  # Rayleigh law at 0.98 r90
    assert centre["probdensity_deg2"] > edge["probdensity_deg2"] > 0
    assert centre["detected_before_t0"] is True  # jdstarthist 2020, the GBM trigger 2024


def test_ztf_section_is_bounded(world, monkeypatch):
    client, ctx, f = world
    monkeypatch.setattr(group_extra, "MAX_CANDIDATES", 2)
    out = group_extra.ztf_section(ctx, _group(client, "igwn:MS181101ab"))
    inside = int((f["grid_levels"] <= 0.9).sum())
    assert len(out["rows"]) == 2 and out["n_total"] == inside and out["n_more"] == inside - 2


def test_ztf_section_of_an_optical_group_lists_its_alerts(world):
    client, ctx, f = world
    ev = f["real"][0][0]
    out = group_extra.ztf_section(ctx, _group(client, f"ztf:{ev.upstream_id}"))
    assert out["mode"] == "own" and [r["event_id"] for r in out["rows"]] == [ev.id]
    assert out["rows"][0]["mag"] == pytest.approx(ev.properties["magpsf"])
    assert out["rows"][0]["detected_before_t0"] is None  # no trigger T0 to compare with


def test_ztf_section_without_localization(world):
    client, ctx, f = world
    out = group_extra.ztf_section(ctx, {"key": "x", "category": "gw", "t0": "2020-01-01T00:00:00Z",
                                        "revisions": [{"event_id": "nothing"}]})
    assert out["mode"] is None and "no stored localization" in out["reason"] and out["rows"] == []


# ------------------------------------------------------------------ candidate pages and PNGs
def test_candidate_page_and_lightcurve(world):
    client, ctx, f = world
    ev = f["real"][0][0]
    r = client.get(f"/candidates/{ev.id}")
    assert r.status_code == 200 and ev.upstream_id in r.text
    for kind in cutouts.CUTOUT_KINDS:
        assert f'src="/candidates/{ev.id}/cutout/{kind}.png"' in r.text
    assert f'src="/candidates/{ev.id}/lightcurve.png"' in r.text and "unavailable" not in r.text
    png = client.get(f"/candidates/{ev.id}/lightcurve.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:8] == PNG
    img = _png_array(png.content)
    assert img.shape == (cutouts.LIGHTCURVE_SIZE_PX[1], cutouts.LIGHTCURVE_SIZE_PX[0], 3)
    # the band colours are drawn (g green, r red), so the axes hold points, not only text
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert (44, 160, 44) in colours or (214, 39, 40) in colours
    assert b"/work" not in png.content and b"/home" not in png.content and b"/tmp" not in png.content


def test_rubin_candidate_page_flux_curve_and_cutouts(world):
    """The second alert of a two-alert container: its own history and stamps, drawn as fluxes."""
    from broker.sources import lsst

    client, ctx, f = world
    ev, raw = f["rubin"][1]
    sid = int(ev.id.split(":")[1])
    page = client.get(f"/candidates/{ev.id}")
    assert page.status_code == 200 and "unavailable" not in page.text and "nJy" in page.text
    hist = lsst.decode_history(raw, dia_source_id=sid)
    assert f"its {len(hist['prvDiaSources'])} history entries" in page.text
    data = group_extra.candidate_data(ctx, ev.id)
    assert data["flux"] and sum(p.current for p in data["points"]) == 1
    cur = next(p for p in data["points"] if p.current)
    assert cur.mag == pytest.approx(ev.properties["psfFlux_njy"])  # flux, nJy
    png = client.get(f"/candidates/{ev.id}/lightcurve.png")
    assert png.status_code == 200 and _png_array(png.content).std() > 10
    for kind in cutouts.CUTOUT_KINDS:
        r = client.get(f"/candidates/{ev.id}/cutout/{kind}.png")
        assert r.status_code == 200 and _png_array(r.content)[40:].std() > 5
        img = cutouts.stamp_image(hist["cutouts"][kind])
        assert img.ndim == 2 and np.isfinite(img).any()


def test_candidate_linked_from_a_trigger_marks_its_t0(world):
    client, ctx, f = world
    ztf = group_extra.ztf_section(ctx, _group(client, "igwn:MS181101ab"))
    row = ztf["rows"][0]
    page = client.get(row["url"])
    assert page.status_code == 200 and "after the trigger's T0 2018-11-01T22:22:46.654Z" in page.text
    assert f"lightcurve.png?t0={f['gw'].time}" in page.text
    plain = client.get(f"/candidates/{row['event_id']}/lightcurve.png").content
    marked = client.get(f"/candidates/{row['event_id']}/lightcurve.png", params={"t0": f["gw"].time}).content
    assert marked[:8] == PNG and marked != plain  # another image: the T0 line (and the wider time axis)


def test_lightcurve_points_come_from_the_history():
    raw = ZTF[0].read_bytes()
    from broker.sources import avro, ztf

    ev = decode(raw)[0]
    h = ztf.decode_history(raw, avro.read_header(raw), ev.properties["candid"])
    pts = cutouts.ztf_points(h["prv_candidates"], ev.properties)
    det = [p for p in h["prv_candidates"] if p.get("magpsf") is not None]
    lim = [p for p in h["prv_candidates"] if p.get("magpsf") is None and p.get("diffmaglim") is not None]
    assert sum(not p.upper_limit and not p.current for p in pts) == len(det)
    assert sum(p.upper_limit for p in pts) == len(lim)
    cur = [p for p in pts if p.current]
    assert len(cur) == 1 and cur[0].mag == pytest.approx(ev.properties["magpsf"])
    assert cur[0].mjd == pytest.approx(ev.properties["jd"] - 2400000.5)


def test_forced_photometry_points():
    """A schema-4 packet's fp_hists: S/N >= 3 fluxes become magzpsci - 2.5 log10(flux), others are left out."""
    import math

    from broker.sources import avro, ztf

    raw = (DATA / "ztf/kowalski/20231012/2475433850015010009.avro").read_bytes()
    ev = decode(raw)[0]
    h = ztf.decode_history(raw, avro.read_header(raw), ev.properties["candid"])
    assert h["fp_hists"]
    forced = [p for p in cutouts.ztf_points([], None, h["fp_hists"]) if p.forced]
    good = [p for p in h["fp_hists"] if p["procstatus"] == "0" and p["forcediffimflux"] > -99999
            and p["forcediffimflux"] / p["forcediffimfluxunc"] >= 3]
    assert 0 < len(forced) == len(good) < len(h["fp_hists"])
    for pt, fp in zip(forced, sorted(good, key=lambda q: q["jd"])):
        assert pt.mag == pytest.approx(fp["magzpsci"] - 2.5 * math.log10(fp["forcediffimflux"]))
        assert pt.mjd == pytest.approx(fp["jd"] - 2400000.5) and not pt.upper_limit


@pytest.mark.parametrize("kind", cutouts.CUTOUT_KINDS)
def test_cutout_pngs_are_the_stamps(world, kind):
    client, ctx, f = world
    ev = f["real"][0][0]
    r = client.get(f"/candidates/{ev.id}/cutout/{kind}.png")
    assert r.status_code == 200 and r.content[:8] == PNG
    img = _png_array(r.content)
    assert img.shape == (cutouts.STAMP_PX, cutouts.STAMP_PX, 3)
    grey = img[40:, :, 0].astype(float)  # below the label
    assert grey.std() > 10 and np.unique(grey).size > 50  # an image, not a blank square
    assert client.get(f"/candidates/{ev.id}/cutout/{kind}.png").content == r.content  # cached, same bytes


def test_hostile_stamps_answer_422_and_the_page_still_renders(world):
    client, ctx, f = world
    ev = f["hostile"]
    page = client.get(f"/candidates/{ev.id}")
    assert page.status_code == 200
    assert page.text.count("cutout unavailable") == 3 and "inflates beyond" in page.text
    for kind, words in (("science", "inflates beyond"), ("template", "not a FITS"), ("difference", "gzip")):
        r = client.get(f"/candidates/{ev.id}/cutout/{kind}.png")
        assert r.status_code == 422 and words in r.json()["detail"], r.text
    assert client.get(f"/candidates/{ev.id}/lightcurve.png").status_code == 200  # the history is fine


def test_gzip_bomb_is_refused_without_inflating_it():
    import tracemalloc

    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join([c.compress(bytes(1 << 24)) for _ in range(64)] + [c.flush()])  # 1 GiB of zeros
    tracemalloc.start()
    with pytest.raises(cutouts.StampError, match="inflates beyond"):
        cutouts.inflate_stamp(bomb)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 * cutouts.MAX_STAMP_BYTES
    with pytest.raises(cutouts.StampError, match="not a FITS"):
        cutouts.stamp_image(zlib.compress(b"x" * 1000))  # zlib, not gzip: taken as FITS, which it is not
    big = bytes(cutouts.MAX_STAMP_BYTES + 1)
    with pytest.raises(cutouts.StampError, match="larger"):
        cutouts.inflate_stamp(big)


@pytest.mark.parametrize("path, status", [
    ("/candidates/gcn:fermi:1", 400), ("/candidates/ztf:12a", 400), ("/candidates/ztf:%00", 400),
    ("/candidates/" + "9" * 5000, 400), ("/candidates/ztf:%C3%28", 400), ("/candidates/ztf:1", 404),
    ("/candidates/ztf:1/lightcurve.png", 404), ("/candidates/ztf:1/cutout/science.png", 404),
    ("/candidates/nope/lightcurve.png", 400), ("/candidates/ztf:1/cutout/other.png", 400),
    ("/candidates/ztf:1?t0=yesterday", 400), ("/candidates/ztf:1/lightcurve.png?t0=2020-13-01", 400),
])
def test_bad_and_unknown_ids(world, path, status):
    client, ctx, f = world
    r = client.get(path)
    assert r.status_code == status, r.text
    assert "Traceback" not in r.text and "/tmp" not in r.text and "/work" not in r.text


# ------------------------------------------------------------------ follow-up results
def test_followup_section_of_grb_230307a(world):
    client, ctx, f = world
    out = group_extra.followup_section(ctx, {"key": "user:GRB 230307A", "revisions": []})
    assert out["available"] and out["n_total"] == 1 and len(out["results"]) == 1
    res = out["results"][0]
    assert res["status"] == "done" and res["t0"] == "2023-03-07T15:44:06.670Z"
    spi = next(a for a in res["analyses"] if a["name"] == "spiacs")
    assert spi["instrument"] == "SPI-ACS" and spi["detected"] is True and spi["best_snr"] > 100
    assert 0 < spi["best_offset_s"] < 15  # the burst begins at the GBM trigger time
    assert [lim["scale_s"] for lim in spi["limits"]] == sorted(lim["scale_s"] for lim in spi["limits"])
    assert len(spi["limits"]) >= 6 and all(lim["upper_limit_counts"] > 0 for lim in spi["limits"])
    isgri = next(a for a in res["analyses"] if a["name"] == "isgri")
    assert isgri["instrument"] == "IBIS/ISGRI" and isgri["no_data"] and isgri["reason"]
    # the plot is the stored artifact, served by the artifact route
    assert res["plot_url"].startswith("/artifacts/sha256/")
    png = client.get(res["plot_url"])
    assert png.status_code == 200 and png.content[:8] == PNG
    assert _png_array(png.content).std() > 10


def test_followup_group_of_an_ad_hoc_request(world):
    client, ctx, f = world
    g = group_extra.followup_group(ctx, "user:GRB 230307A")
    assert g["key"] == "user:GRB 230307A" and g["t0"] == "2023-03-07T15:44:06.670Z" and g["revisions"] == []
    assert g["latest"].startswith("user:GRB 230307A:") and g["followup_only"] is True
    assert group_extra.followup_section(ctx, g)["results"][0]["status"] == "done"
    assert group_extra.ztf_section(ctx, g)["mode"] is None  # no stored localization: said, not an error
    assert group_extra.followup_group(ctx, "user:nobody") is None


def test_followup_section_of_a_trigger_group(world):
    client, ctx, f = world
    out = group_extra.followup_section(ctx, _group(client, "gcn:fermi:745121685"))
    assert out["available"] and len(out["results"]) == 1
    res = out["results"][0]
    assert res["event_id"] == f["gbm"].id and res["status"] in ("no_data", "done", "failed")
    assert group_extra.followup_section(ctx, _group(client, "igwn:MS181101ab"))["results"] == []


def test_sections_render_in_their_templates(world):
    client, ctx, f = world
    tpl = ctx.templates.env
    ztf = group_extra.ztf_section(ctx, _group(client, "igwn:MS181101ab"))
    html = tpl.get_template("_ztf.html").render(ztf=ztf)
    assert '<section id="ztf"' in html and html.count("<tr data-event-id=") == len(ztf["rows"])
    fu = group_extra.followup_section(ctx, {"key": "user:GRB 230307A", "revisions": []})
    html = tpl.get_template("_followup.html").render(followup=fu)
    assert '<section id="followup"' in html and 'class="followup-plot"' in html and "Excess found" in html
    assert "3σ upper limit (counts)" in html
    assert "Section unavailable" in tpl.get_template("_ztf.html").render(ztf=None)
