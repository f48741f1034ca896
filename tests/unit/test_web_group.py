"""The event group page (broker/web/group.py) on the real PostgreSQL with real alerts.

Seeded as tests/unit/test_web_api.py seeds the archive: the LVK user-guide mock
superevent MS181101ab (preliminary with its multi-order sky map, initial, retraction),
Fermi GBM trigger 745121685 (alert, flight, ground, final circles) and three real ZTF
packets, archived, localized and grouped as the enrich stage stores them. On top: the
real cross-match of the MS181101ab map with the 50 Mpc Galaxy Catalog (short) ranked as
the enrich stage ranks it, and a GW-GRB coincidence record computed by
``gw_grb_coincidence`` (the GBM notice moved to T0 + 2.02 s, as tests/unit/test_coinc.py
does) put in the outbox as the reports stage puts it (``coincidence_message``).
"""

from __future__ import annotations

import io
import json
import math
import re
import warnings
from datetime import datetime, timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient

from broker.archive import Archive, ArchiveItem, KafkaMeta, PostgresRawStore
from broker.config import settings_class
from broker.enrich.groups import GroupStore
from broker.enrich.localization import extract_localization
from broker.enrich.store import LocalizationStore, index_positions
from broker.event import format_time
from broker.sinks.web import make_app
from broker.sources import decode
from tests.conftest import DATA, _new_database

GW = [DATA / "igwn/userguide" / n for n in ("MS181101ab-preliminary.json", "MS181101ab-initial.json",
                                             "MS181101ab-retraction.json")]
GBM = [DATA / "gcn/gwcelery-kafka" / f"kafka_alert_fermi_{k}.json" for k in ("alert", "flight", "ground", "final")]
ZTF = sorted((DATA / "ztf").rglob("*.avro"))[:3]
GWKEY = "igwn:MS181101ab"


def _crossmatch(sky) -> dict:
    """The 50MGC cross-match of a map, as the enrich stage publishes it (broker/pipeline/enrich.py)."""
    from astropy.table import Table

    from broker.enrich.crossmatch import crossmatch_skymap, prepare

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cat = Table.read(DATA / "catalogs" / "50MGC_catalog_short.fits")
    ra, dec = np.asarray(cat["ra"], float), np.asarray(cat["dec"], float)
    dist = np.ma.filled(np.ma.asarray(cat["bestdist"], dtype=float), np.nan)
    m = crossmatch_skymap(prepare(sky), ra, dec, dist)
    ranked = m.ranked(0.9)
    names = cat["name"] if "name" in cat.colnames else None
    matches = [{"row": int(i), "name": None if names is None else str(names[i]).strip(),
                "ra_deg": float(ra[i]), "dec_deg": float(dec[i]), "dist_mpc": float(dist[i]),
                "searched_prob": float(m.searched_prob[i]),
                "searched_prob_vol": None if m.searched_prob_vol is None else float(m.searched_prob_vol[i])}
               for i in ranked[:10].tolist()]
    return {"50MGC": {"kind": "skymap", "level": 0.9, "three_d": m.searched_prob_vol is not None,
                      "n_inside": int(ranked.size), "matches": matches}}


def _coincidence(gw, gw_sky, gw_ref, gbm, gbm_ref) -> dict:
    """A gw-grb record as broker.pipeline.enrich builds it, for the GBM notice moved to T0 + 2.02 s."""
    from broker.enrich.coinc import gw_grb_coincidence
    from broker.enrich.localization import PointRegion

    t = datetime.fromisoformat(gw.time[:-1]) + timedelta(seconds=2.02)
    moved = gbm.model_copy(update={"time": format_time(t)})
    point = PointRegion(ra_deg=gw.localization.ra_max, dec_deg=gw.localization.dec_max, error_radius_deg=1.0,
                        containment=0.68)
    c = gw_grb_coincidence(gw, moved, gw_sky, point)
    assert c.coincident
    fields = {k: v for k, v in c.to_json_dict().items() if k not in ("gw_id", "ext_id")}
    gbm_key = f"gcn:fermi:{gbm.upstream_id}"
    members = [{"role": "gw", "group": GWKEY, "event_id": gw.id, "source": gw.source, "mission": gw.mission,
                "upstream_id": gw.upstream_id, "t0": gw.time, "n_revisions": 3, "localization": gw_ref.id},
               {"role": "grb", "group": gbm_key, "event_id": gbm.id, "source": gbm.source, "mission": gbm.mission,
                "upstream_id": gbm.upstream_id, "t0": moved.time, "n_revisions": 4, "localization": gbm_ref.id}]
    return {"schema": "mma.coincidence/1", "id": f"gw-grb:{GWKEY}+{gbm_key}", "kind": "gw-grb",
            "members": members, "coincident": True, **fields, "retracted": False, "retracted_by": None,
            "computed_from": gw.id}


@pytest.fixture(scope="module")
def world(pg_url, tmp_path_factory):
    """(client, events by id, facts): the alerts archived, localized, grouped, cross-matched, and
    one coincidence in table ``coincidences`` (as the enrich stage writes it) and in the outbox
    (as the reports stage puts it)."""
    from broker.enrich.matchstore import crossmatch_rows, put_crossmatches
    from broker.sinks.outbox import Outbox
    from followup.reports.hermes import HermesOptions, coincidence_message

    with _new_database(pg_url) as url:
        archive = Archive(url, PostgresRawStore())
        archive.migrate()
        decoded = [(ev, p.read_bytes()) for p in GW + GBM + ZTF for ev in decode(p.read_bytes())]
        archive.write_batch([ArchiveItem(event=ev, raw=raw, kafka=KafkaMeta("t", 0, i))
                             for i, (ev, raw) in enumerate(decoded)])
        locs, groups = LocalizationStore(archive.engine), GroupStore(archive.engine)
        skies, refs = {}, {}
        for ev, raw in decoded:
            sky = extract_localization(ev, raw)
            ref = locs.put(ev.id, sky) if sky is not None else None
            skies[ev.id], refs[ev.id] = sky, ref
            groups.add(ev, ref)
        index_positions(archive.engine, [ev for ev, _ in decoded if ev.source == "ztf"])
        evs = {ev.id: ev for ev, _ in decoded}
        gw = next(e for e in evs.values() if e.source == "igwn" and e.alert_type == "preliminary")
        gbm = next(e for e in evs.values() if e.source == "gcn" and e.id.split(":")[4] == "7")  # the final circle
        xm = _crossmatch(skies[gw.id])
        with archive.engine.begin() as conn:
            put_crossmatches(conn, crossmatch_rows(gw.id, xm, refs[gw.id].id))
        rec = _coincidence(gw, skies[gw.id], refs[gw.id], gbm, refs[gbm.id])
        from broker.enrich.coincidence_store import write_coincidences

        write_coincidences(archive.engine, [rec])
        payload = coincidence_message(rec, HermesOptions())
        Outbox(archive.engine).put(f"hermes:coincidence:{rec['id']}:{rec['computed_from']}", "hermes", payload,
                                   group_key=rec["id"], source_event_id=gw.id)
        settings = settings_class()(home=tmp_path_factory.mktemp("home"), archive={"raw_store": "postgres"})
        client = TestClient(make_app(lambda _: None, "https://broker.example.org", archive.engine, settings),
                            raise_server_exceptions=False)
        try:
            yield client, evs, {"gw": gw, "gbm": gbm, "xm": xm, "coinc": rec, "gw_ref": refs[gw.id],
                                "engine": archive.engine, "archive": archive}
        finally:
            archive.close()


class _Doc:
    """An lxml tree with ``cssselect`` for the few selectors used here (tag, #id, .class,
    [attr], [attr='v'], descendants), translated to XPath (lxml's own needs cssselect)."""

    _PART = re.compile(r"^([a-z0-9]*)(?:#([\w-]+))?(?:\.([\w-]+))?(?:\[([\w-]+)(?:='([^']*)')?\])?$")

    def __init__(self, node):
        self.node = node

    def __getattr__(self, name):
        return getattr(self.node, name)

    def cssselect(self, sel: str) -> list["_Doc"]:
        xp = "."
        for part in sel.split():
            tag, id_, cls, attr, val = self._PART.match(part).groups()
            cond = []
            if id_:
                cond.append(f"@id='{id_}'")
            if cls:
                cond.append(f"contains(concat(' ', @class, ' '), ' {cls} ')")
            if attr:
                cond.append(f"@{attr}='{val}'" if val is not None else f"@{attr}")
            xp += "//" + (tag or "*") + "".join(f"[{c}]" for c in cond)
        return [_Doc(n) for n in self.node.xpath(xp)]


def _html(client, path):
    from lxml import html

    r = client.get(path)
    return r, _Doc(html.fromstring(r.text))


def test_page_lists_every_revision_in_order_with_its_notice(world):
    client, evs, f = world
    r, doc = _html(client, f"/groups/{GWKEY}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    rows = doc.cssselect("section#revisions tr[data-event-id]")
    api = client.get(f"/api/groups/{GWKEY}").json()
    assert [tr.get("data-event-id") for tr in rows] == [x["event_id"] for x in api["revisions"]]
    assert len(rows) == 3 and rows[-1].get("data-event-id").split(":")[2] == "retraction"
    pre = rows[0].cssselect("details pre")[0].text_content()
    notice = json.loads(pre)  # the IGWN JSON, pretty-printed, its base64 map shortened
    assert notice["superevent_id"] == "MS181101ab" and notice["alert_type"] == "PRELIMINARY"
    assert "characters, shortened" in notice["event"]["skymap"]
    assert "/" not in pre.split("skymap")[0][-5:]  # sanity: the page shows text, not a path


def test_avro_notice_is_shown_decoded_and_gbm_page(world):
    client, evs, f = world
    z = next(e for e in evs.values() if e.source == "ztf")
    r, doc = _html(client, f"/groups/ztf:{z.upstream_id}")
    assert r.status_code == 200
    pre = doc.cssselect("section#revisions tr[data-event-id] details pre")[0].text_content()
    rec = json.loads(pre)
    assert rec["objectId"] == z.upstream_id and "bytes>" in rec["cutoutScience"]["stampData"]
    r, doc = _html(client, f"/groups/gcn:fermi:{f['gbm'].upstream_id}")
    assert r.status_code == 200 and len(doc.cssselect("section#revisions tr[data-event-id]")) == 4


def test_sections_coincidences_crossmatches_published(world):
    client, evs, f = world
    r, doc = _html(client, f"/groups/{GWKEY}")
    for sel in ("img#skymap", "div#aladin", "section#coincidences", "section#crossmatches", "section#ztf",
                "section#followup", "section#published"):
        assert doc.cssselect(sel), sel
    rec = f["coinc"]
    row = doc.cssselect(f"section#coincidences tr[data-coincidence-id='{rec['id']}']")[0]
    text = row.text_content()
    assert f"{rec['dt_s']:+.3f} s" in text and f"{rec['overlap_integral']:.4g}" in text
    assert f"{rec['joint_far_hz']:.3g} Hz" in text
    link = row.cssselect("a")[0].get("href")
    assert link == f"/groups/{rec['members'][1]['group']}"
    # the other member's page shows the same coincidence, linking back
    _, other = _html(client, link)
    assert other.cssselect(f"section#coincidences a[href='/groups/{GWKEY}']")
    # catalog matches in the enrich stage's order
    xm = f["xm"]["50MGC"]
    names = [tr.cssselect("td")[1].text_content() for tr in doc.cssselect("section#crossmatches tbody tr")]
    assert names == [m["name"] or f"row {m['row']}" for m in xm["matches"]] and len(names) == 10
    assert f"{xm['n_inside']} sources" in doc.cssselect("section#crossmatches h3")[0].text_content()
    pub = doc.cssselect("section#published tr[data-outbox-id]")
    assert len(pub) == 1 and "hermes" in pub[0].text_content()
    assert pub[0].cssselect("a")[0].get("href") == f"/desk/{pub[0].get('data-outbox-id')}"


def test_coincidences_come_from_the_table_latest_version_either_side_and_in_the_api(world):
    import sqlalchemy as sa

    from broker.enrich.coincidence_store import write_coincidences

    client, evs, f = world
    rec = f["coinc"]
    gbm_key = rec["members"][1]["group"]
    for key, other in ((GWKEY, gbm_key), (gbm_key, GWKEY)):
        (c,) = client.get(f"/api/groups/{key}").json()["coincidences"]
        assert (c["id"], c["version"], c["other_group"], c["other_url"]) == (
            rec["id"], rec["computed_from"], other, f"/api/groups/{other}")
        assert c["role"] == ("trigger" if key == GWKEY else "other")
        assert c["dt_s"] == pytest.approx(rec["dt_s"]) and c["overlap_integral"] == pytest.approx(
            rec["overlap_integral"]) and c["joint_far_hz"] == pytest.approx(rec["joint_far_hz"])
        assert c["coincident"] is True and c["retracted"] is False and c["record"]["kind"] == "gw-grb"
    retraction = next(e for e in evs.values() if e.source == "igwn" and e.is_retraction)
    later = rec | {"retracted": True, "retracted_by": retraction.id, "computed_from": retraction.id}
    engine = f["engine"]
    try:
        write_coincidences(engine, [later])  # the GW's retraction republishes it: a new version
        for key in (GWKEY, gbm_key):
            _, doc = _html(client, f"/groups/{key}")
            rows = doc.cssselect("section#coincidences tr[data-coincidence-id]")
            assert len(rows) == 1 and rows[0].get("data-version") == retraction.id, key
            assert rows[0].cssselect("td")[-1].text_content().strip() == "retracted"
        (c,) = client.get(f"/api/groups/{GWKEY}").json()["coincidences"]
        assert (c["version"], c["retracted"], c["retracted_by"]) == (retraction.id, True, retraction.id)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM coincidences WHERE computed_from = :v"), {"v": retraction.id})
    # a hermes:coincidence outbox entry without its row (the reports stage's copy) is not read
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE coincidences SET id = 'x' || id WHERE id = :i"), {"i": rec["id"]})
    try:
        for key in (GWKEY, gbm_key):
            _, doc = _html(client, f"/groups/{key}")
            assert [r.get("data-coincidence-id") for r in doc.cssselect("section#coincidences tr[data-coincidence-id]")] \
                == ["x" + rec["id"]]
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE coincidences SET id = :i WHERE id = :x"), {"i": rec["id"], "x": "x" + rec["id"]})
    z = next(e for e in evs.values() if e.source == "ztf")
    r, doc = _html(client, f"/groups/ztf:{z.upstream_id}")
    assert r.status_code == 200 and not doc.cssselect("section#coincidences tr[data-coincidence-id]")
    assert "No coincidence of this group is recorded" in doc.cssselect("section#coincidences")[0].text_content()
    assert client.get(f"/api/groups/ztf:{z.upstream_id}").json()["coincidences"] == []


def test_hermes_sent_payload_inline(world):
    import sqlalchemy as sa

    client, evs, f = world
    _, doc = _html(client, f"/groups/{GWKEY}")
    assert not doc.cssselect("section#published details")  # queued: not inline yet
    with f["engine"].begin() as conn:
        conn.execute(sa.text("UPDATE outbox SET state = 'sent', sent_at = now(), receipt = '{\"uuid\": \"x\"}'"))
    _, doc = _html(client, f"/groups/{GWKEY}")
    det = doc.cssselect("section#published details pre")
    assert det and json.loads(det[0].text_content())["title"].startswith("GW-GRB coincidence")


def test_skymap_png_is_a_png_of_the_right_size_and_not_blank(world):
    from PIL import Image

    from broker.web import skyplot

    client, evs, f = world
    r = client.get(f"/groups/{GWKEY}/skymap.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(r.content))
    assert im.size == (skyplot.WIDTH_PX, skyplot.HEIGHT_PX)
    assert not any("/" in str(v) for v in im.info.values())  # no path (nor software string) in the metadata
    px = np.asarray(im.convert("RGB"), dtype=int)
    assert px.std() > 10 and len(np.unique(px.reshape(-1, 3), axis=0)) > 100
    # the map is drawn: red-ish probability pixels (the cylon map's high end) are present
    red = (px[..., 0] > 150) & (px[..., 1] < 80) & (px[..., 2] < 80)
    assert red.sum() > 200
    # cached: the second request is the same bytes without a new drawing
    renderer = client.app.state.group_skyplot
    n = renderer.renders
    r2 = client.get(f"/groups/{GWKEY}/skymap.png")
    assert r2.content == r.content and r2.headers["etag"] == r.headers["etag"] and renderer.renders == n
    # a point localization: the GBM final circle
    r = client.get(f"/groups/gcn:fermi:{f['gbm'].upstream_id}/skymap.png")
    im = Image.open(io.BytesIO(r.content))
    assert r.status_code == 200 and im.size == (skyplot.WIDTH_PX, skyplot.HEIGHT_PX)


def test_png_cache_is_bounded_and_renders_once():
    import asyncio

    from broker.web.group import PngCache, SkyRenderer

    c = PngCache(max_entries=2, max_bytes=10)
    c.put("a", b"1234"), c.put("b", b"5678"), c.put("c", b"9")
    assert c.get("a") is None and c.get("b") == b"5678" and c.get("c") == b"9"
    c.put("d", b"123456789")
    assert c.get("b") is None and len(c) == 2
    calls = []
    r = SkyRenderer(PngCache(), timeout_s=5)

    async def twice():
        return await asyncio.gather(r.png("k", lambda: calls.append(1) or b"png"),
                                    r.png("k", lambda: calls.append(1) or b"png"))

    assert asyncio.run(twice()) == [b"png", b"png"] and calls == [1]
    slow = SkyRenderer(PngCache(), timeout_s=0.05)
    import time

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(slow.png("s", lambda: time.sleep(0.5) or b"x"))
    r.close(), slow.close()


def test_moc_json_holds_the_90_percent_area(world):
    from mocpy import MOC

    client, evs, f = world
    r = client.get(f"/groups/{GWKEY}/moc.json")
    assert r.status_code == 200
    body = r.json()
    ref = f["gw_ref"]
    # the latest member with a localization: the initial notice (the retraction has none)
    assert body["event_id"].split(":")[2] == "initial" and body["localization_id"].startswith("sha256:")
    moc = MOC.from_json({k: v for k, v in body["moc"].items()})
    area = moc.sky_fraction * 4 * math.pi * (180 / math.pi) ** 2
    assert area == pytest.approx(body["area_deg2"], rel=1e-9)
    assert area == pytest.approx(ref.area_90_deg2, rel=0.03)  # the stored 90 % area, within 3 %
    # the extent holds every cell (the region of MS181101ab is ~20 deg long, not sqrt(31) deg)
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy_healpix import HEALPix

    centre = SkyCoord(body["center_ra_deg"] * u.deg, body["center_dec_deg"] * u.deg)
    far = max(float(centre.separation(SkyCoord(*HEALPix(nside=2 ** int(o), order="nested").healpix_to_lonlat(ipix)))
                    .deg.max()) for o, ipix in body["moc"].items() if ipix)
    assert far < body["radius_deg"] < far + 1.0 and far > 8
    half = client.get(f"/groups/{GWKEY}/moc.json", params={"level": 0.5}).json()
    assert half["area_deg2"] == pytest.approx(ref.area_50_deg2, rel=0.05)
    assert client.get(f"/groups/{GWKEY}/moc.json", params={"level": "2"}).status_code == 400
    # a point: its error region (tiles of the Rayleigh disc), 90 % ~ pi r90^2
    body = client.get(f"/groups/gcn:fermi:{f['gbm'].upstream_id}/moc.json").json()
    assert body["n_tiles"] > 0 and body["area_deg2"] > 0


def test_aladin_div_and_its_config(world):
    from broker.web.group import _aladin_installed

    client, evs, f = world
    _, doc = _html(client, f"/groups/{GWKEY}")
    div = doc.cssselect("div#aladin")[0]
    cfg = json.loads(div.get("data-config"))
    assert cfg["moc_url"] == f"/groups/{GWKEY}/moc.json"
    kinds = {m["kind"] for m in cfg["markers"]}
    assert kinds == {"counterpart", "catalog"}
    scripts = [s.get("src") for s in doc.cssselect("script")]
    if _aladin_installed():
        assert "/static/group.js" in scripts
        assert client.get("/static/vendor/aladin-lite/aladin.js").status_code == 200
    else:
        assert doc.cssselect("#aladin-missing") and "/static/group.js" not in scripts


def test_aladin_missing_says_so(world, monkeypatch):
    from broker.web import group

    client, evs, f = world
    monkeypatch.setattr(group, "_aladin_installed", lambda: False)
    _, doc = _html(client, f"/groups/{GWKEY}")
    assert "not installed" in doc.cssselect("#aladin-missing")[0].text_content()
    assert doc.cssselect("img#skymap")


@pytest.mark.parametrize("key,status", [
    ("igwn:S000000zz", 404),
    ("igwn:%00x", 400),
    ("igwn:%FF%FE", 400),
    ("x" * 5000, 400),
])
def test_hostile_and_unknown_keys(world, key, status):
    client, evs, f = world
    for suffix in ("", "/skymap.png"):
        r = client.get(f"/groups/{key}{suffix}")
        assert r.status_code == status, (key[:20], suffix, r.text[:200])
        assert "text/html" in r.headers["content-type"]
        assert "Traceback" not in r.text and "/work/" not in r.text and "/tmp" not in r.text
        if status == 400:
            assert "key" in r.text and "x" * 100 not in r.text  # names the parameter, never echoes the key
    r = client.get(f"/groups/{key}/moc.json")
    assert r.status_code == status and r.json()["parameter"] == "key"


def test_member_event_id_is_accepted_and_event_param_checked(world):
    client, evs, f = world
    gw = f["gw"]
    r, doc = _html(client, f"/groups/{gw.id}")
    assert r.status_code == 200 and len(doc.cssselect("section#revisions tr[data-event-id]")) == 3
    r = client.get(f"/groups/{GWKEY}/skymap.png", params={"event": gw.id})
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get(f"/groups/{GWKEY}/skymap.png", params={"event": "igwn:other"}).status_code == 404


def test_followup_only_group_has_a_page(world, tmp_path):
    """An ad-hoc follow-up (``mma-broker followup request --name "GRB 230307A"``: no archived
    Event, no event group) has a page: its results, no revisions, an empty sky."""
    from broker.event import PointLocalization
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

    client, evs, f = world
    key = "user:GRB 230307A"
    assert client.get(f"/groups/{key}").status_code == 404  # nothing yet
    data = bundled_data_dir()
    sources = FollowupSources(LocalFitsSource(data), LocalOrbitFiles(data), IsgriClient(
        MmodaSource(url="http://127.0.0.1:9/dispatch-data", retry=RetryPolicy(attempts=1, base_delay_s=0.01))))
    worker = WorkerHandler(store=FollowupStore(f["engine"]), archive=f["archive"], sources=sources,
                           cache=DirectoryCache(tmp_path / "cache"), results_topic="r",
                           provenance=Provenance(component="test", version="0", config_hash="0"),
                           stats=FollowupStats())
    grb = adhoc_event("2023-03-07T15:44:06.670Z", "GRB 230307A",
                      PointLocalization(ra=60.85935, dec=-75.3788, error_radius=0.00094, containment=0.9))
    worker.execute(FollowupRequest(kind="analyze", event=grb, analyses=("spiacs",),
                                   params={"window_s": 300.0, "max_sky_samples": 1000}, requested_by="cli"))
    r, doc = _html(client, f"/groups/{key}")
    assert r.status_code == 200, r.text[:300]
    assert doc.cssselect("section#revisions") and not doc.cssselect("section#revisions tr[data-event-id]")
    assert "SPI-ACS" in doc.cssselect("section#followup")[0].text_content()
    png = client.get(f"/groups/{key}/skymap.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get(f"/groups/{key}/moc.json").json()["moc"] == {}


def test_a_failing_extra_section_leaves_the_page_standing(world, monkeypatch):
    from broker.web import group_extra

    client, evs, f = world

    def broken(ctx, group):
        raise RuntimeError("boom")

    monkeypatch.setattr(group_extra, "ztf_section", broken)
    r, doc = _html(client, f"/groups/{GWKEY}")
    assert r.status_code == 200 and "boom" not in r.text
    assert "unavailable" in doc.cssselect("section#ztf")[0].text_content()
    assert doc.cssselect("section#followup") and doc.cssselect("section#revisions tr[data-event-id]")


def test_older_notices_are_links_to_the_notice_route(world, monkeypatch):
    from broker.web import group

    client, evs, f = world
    monkeypatch.setattr(group, "NOTICES_INLINE", 1)
    _, doc = _html(client, f"/groups/{GWKEY}")
    rows = doc.cssselect("section#revisions tr[data-event-id]")
    assert [bool(tr.cssselect("details pre")) for tr in rows] == [False, False, True]
    link = next(a.get("href") for a in rows[0].cssselect("a") if "/notice?event=" in a.get("href"))
    r = client.get(link)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert json.loads(r.text)["alert_type"] == "PRELIMINARY"
    maps = [a.get("href") for tr in rows for a in tr.cssselect("a") if "skymap.png?event=" in a.get("href")]
    assert len(maps) == 2 and client.get(maps[0]).content[:8] == b"\x89PNG\r\n\x1a\n"  # the two map revisions
    assert client.get(f"/groups/{GWKEY}/notice", params={"event": "igwn:x"}).status_code == 404
    assert client.get(f"/groups/{GWKEY}/notice").status_code == 404


def test_unreadable_notice_bytes_leave_the_page_standing(world, monkeypatch):
    from broker.archive.raw import PostgresRawStore, RawStoreError

    client, evs, f = world
    client.app.state.group_notice_cache.__init__()  # emptied: the bytes are read again
    monkeypatch.setattr(PostgresRawStore, "get_many",
                        lambda self, refs, connection=None, verify=True: [RawStoreError("gone")] * len(refs))
    r, doc = _html(client, f"/groups/gcn:fermi:{f['gbm'].upstream_id}")
    assert r.status_code == 200 and "gone" not in r.text
    cells = [tr.cssselect("td.notice")[0].text_content() for tr in doc.cssselect("section#revisions tr[data-event-id]")]
    assert len(cells) == 4 and all("could not be read" in c for c in cells)
    monkeypatch.undo()
    _, doc = _html(client, f"/groups/gcn:fermi:{f['gbm'].upstream_id}")
    assert len(doc.cssselect("section#revisions details pre")) == 4  # not cached as errors


def test_revisions_show_when_issued_and_say_when_they_arrived_out_of_order(world):
    """The real MS181101ab alerts again, under a new superevent id, archived and grouped
    in the reverse of their issue order (as a replay over several partitions can): the page
    shows each one's time_created and says the arrival order is not the issue order."""
    client, evs, f = world
    engine = f["engine"]
    r, doc = _html(client, f"/groups/{GWKEY}")  # issued and arrived in the same order: no note
    assert not doc.cssselect("#out-of-order")
    cells = [tr.cssselect("td")[3].text_content().strip() for tr in doc.cssselect("section#revisions tr[data-event-id]")]
    assert cells == [evs[tr].properties["time_created"] for tr in
                     [x["event_id"] for x in client.get(f"/api/groups/{GWKEY}").json()["revisions"]]]
    mine = [e for e in evs.values() if e.upstream_id == "MS181101ab"]
    copies = [e.model_copy(update={"id": e.id.replace("MS181101ab", "MS181101zz"), "upstream_id": "MS181101zz"})
              for e in reversed(mine)]
    f["archive"].write_batch([ArchiveItem(event=e, raw=b"{}", kafka=KafkaMeta("t", 1, i))
                              for i, e in enumerate(copies)])
    groups = GroupStore(engine)
    for e in copies:
        groups.add(e, None)
    body = client.get("/api/groups/igwn:MS181101zz").json()
    issued = [x["issued"] for x in body["revisions"]]
    assert issued == sorted(issued, reverse=True) and issued != sorted(issued)
    r, doc = _html(client, "/groups/igwn:MS181101zz")
    assert r.status_code == 200 and doc.cssselect("#out-of-order")
