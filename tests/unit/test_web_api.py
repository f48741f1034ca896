"""The read JSON API of ``mma-broker serve`` (broker/web/api.py) on the real PostgreSQL.

Real alerts of tests/data are archived and enriched the way the pipeline stores them
(localizations and groups of broker.enrich, ZTF positions indexed): the LVK user-guide
mock superevent MS181101ab (preliminary with its multi-order sky map, initial,
retraction), Fermi GBM trigger 745121685 (alert, flight, ground, final circles) and
three real ZTF packets. Requests go through FastAPI's TestClient to the app
``mma-broker serve`` builds (broker.sinks.web.make_app).
"""

from __future__ import annotations

import math

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from broker.archive import Archive, ArchiveItem, KafkaMeta, PostgresRawStore
from broker.enrich.groups import GroupStore
from broker.enrich.localization import extract_localization
from broker.enrich.store import LocalizationStore, index_positions
from broker.sinks.web import make_app
from broker.sources import decode
from tests.conftest import DATA, _new_database

GW = [DATA / "igwn/userguide" / n for n in ("MS181101ab-preliminary.json", "MS181101ab-initial.json",
                                             "MS181101ab-retraction.json")]
GBM = [DATA / "gcn/gwcelery-kafka" / f"kafka_alert_fermi_{k}.json" for k in ("alert", "flight", "ground", "final")]
ZTF = sorted((DATA / "ztf").rglob("*.avro"))[:3]


@pytest.fixture(scope="module")
def world(pg_url):
    """(client, events by id): the alerts archived, localized and grouped once for the module."""
    with _new_database(pg_url) as url:
        archive = Archive(url, PostgresRawStore())
        archive.migrate()
        decoded = [(ev, p.read_bytes()) for p in GW + GBM + ZTF for ev in decode(p.read_bytes())]
        archive.write_batch([ArchiveItem(event=ev, raw=raw, kafka=KafkaMeta("t", 0, i))
                             for i, (ev, raw) in enumerate(decoded)])
        locs, groups = LocalizationStore(archive.engine), GroupStore(archive.engine)
        for ev, raw in decoded:
            if ev.source == "ztf":
                continue  # ZTF alerts left ungrouped: the API gives the key its rules give
            sky = extract_localization(ev, raw)
            groups.add(ev, locs.put(ev.id, sky) if sky is not None else None)
        index_positions(archive.engine, [ev for ev, _ in decoded if ev.source == "ztf"])
        client = TestClient(make_app(lambda _: None, "https://broker.example.org", archive.engine),
                            raise_server_exceptions=False)
        try:
            yield client, {ev.id: ev for ev, _ in decoded}
        finally:
            archive.close()


def _all(client, **params):
    r = client.get("/api/events", params={"limit": 500, **params})
    assert r.status_code == 200, r.text
    return [it["id"] for it in r.json()["items"]]


def test_list_is_newest_first_with_summaries_and_group_links(world):
    client, evs = world
    body = client.get("/api/events", params={"limit": 500}).json()
    items = body["items"]
    assert len(items) == len(evs) and body["next_cursor"] is None
    t0s = [it["t0"] for it in items]
    assert t0s == sorted(t0s, reverse=True)
    gw = next(it for it in items if it["alert_type"] == "preliminary" and it["source"] == "igwn")
    assert gw["group_key"] == "igwn:MS181101ab" and gw["group_url"] == "/api/groups/igwn:MS181101ab"
    assert gw["localization"]["kind"] == "healpix" and gw["localization"]["area_90_deg2"] > 0
    assert gw["retracted"] is True  # its retraction is archived
    ztf = next(it for it in items if it["source"] == "ztf")
    assert ztf["group_key"] == f"ztf:{ztf['upstream_id']}" and ztf["localization"]["kind"] == "point"
    assert ztf["t0"].endswith("Z") and ztf["received_at"].endswith("Z")


def test_keyset_paging_visits_every_event_once(world):
    client, evs = world
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        body = client.get("/api/events", params=params).json()
        seen += [it["id"] for it in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == math.ceil(len(evs) / 2)
    assert seen == _all(client) and len(set(seen)) == len(evs)


def test_filters(world):
    client, evs = world
    assert set(_all(client, source="ztf")) == {i for i, e in evs.items() if e.source == "ztf"}
    assert set(_all(client, mission="fermi")) == {i for i, e in evs.items() if e.mission.lower() == "fermi"}
    gbm = {i for i, e in evs.items() if (e.instrument or "").lower() == "gbm"}
    assert gbm and set(_all(client, instrument="GBM")) == gbm
    assert set(_all(client, alert_type="retraction")) == {i for i, e in evs.items() if e.alert_type == "retraction"}
    cats = {e.category for e in evs.values()}
    assert "gw_cbc" in cats
    assert set(_all(client, category="gw_cbc")) == {i for i, e in evs.items() if e.category == "gw_cbc"}
    # T0 window: since inclusive, until exclusive
    t = sorted({e.time for e in evs.values()})
    mid = t[len(t) // 2]
    assert set(_all(client, since=mid)) == {i for i, e in evs.items() if e.time >= mid}
    assert set(_all(client, until=mid)) == {i for i, e in evs.items() if e.time < mid}
    # text: exact and prefix of the upstream id
    assert set(_all(client, q="MS181101ab")) == {i for i, e in evs.items() if e.upstream_id == "MS181101ab"}
    assert set(_all(client, q="MS1811")) == {i for i, e in evs.items() if e.upstream_id.startswith("MS1811")}
    assert _all(client, q="MS1811%") == [] and _all(client, q="S_") == []  # LIKE wildcards are literal
    assert _all(client, source="lsst") == []


def test_cone_finds_a_ztf_alert_and_the_sky_map_holding_it(world):
    client, evs = world
    z = next(e for e in evs.values() if e.source == "ztf")
    ra, dec = z.localization.ra, z.localization.dec
    found = _all(client, ra_deg=ra, dec_deg=dec, radius_deg=1 / 3600)
    assert z.id in found and all(evs[i].source != "gcn" for i in found)
    far = _all(client, ra_deg=(ra + 180) % 360, dec_deg=-dec, radius_deg=1.0)
    assert z.id not in far


@pytest.mark.parametrize("pa_deg", [0.0, 90.0, 200.0])
def test_cone_edge_is_the_great_circle_distance(world, pa_deg):
    """A centre 0.9° from a ZTF alert (position angle pa_deg): inside a 0.95° cone, not a 0.85° one."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    client, evs = world
    z = next(e for e in evs.values() if e.source == "ztf")
    c = SkyCoord(z.localization.ra * u.deg, z.localization.dec * u.deg).directional_offset_by(pa_deg * u.deg,
                                                                                             0.9 * u.deg)
    ra, dec = float(c.ra.deg), float(c.dec.deg)
    assert z.id in _all(client, ra_deg=ra, dec_deg=dec, radius_deg=0.95)
    assert z.id not in _all(client, ra_deg=ra, dec_deg=dec, radius_deg=0.85)


def test_cone_finds_the_gbm_circle_and_gw_map_at_its_densest_pixel(world):
    client, evs = world
    final = next(e for e in evs.values() if e.source == "gcn" and e.id.split(":")[4] == "7")  # the final circle
    ra, dec = final.localization.ra, final.localization.dec
    assert final.id in _all(client, ra_deg=ra, dec_deg=dec, radius_deg=0.01)
    assert final.id not in _all(client, ra_deg=(ra + 90) % 360, dec_deg=0.0, radius_deg=0.01)
    gw = next(e for e in evs.values() if e.source == "igwn" and e.alert_type == "preliminary")
    loc = gw.localization
    inside = _all(client, ra_deg=loc.ra_max, dec_deg=loc.dec_max, radius_deg=0.01)
    assert gw.id in inside
    # the antipode of the most probable pixel is outside the 90 % region of this map
    outside = _all(client, ra_deg=(loc.ra_max + 180) % 360, dec_deg=-loc.dec_max, radius_deg=0.01)
    assert gw.id not in outside


def test_one_event_with_metadata_and_404(world):
    client, evs = world
    eid = next(i for i, e in evs.items() if e.source == "igwn" and e.alert_type == "initial")
    r = client.get(f"/api/events/{eid}")
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == eid and body["kafka"]["topic"] == "t" and len(body["raw_sha256"]) == 64
    assert body["raw_bytes"] > 0 and body["properties"] and body["group_key"] == "igwn:MS181101ab"
    assert body["retracted_by"] is not None and "/tmp" not in r.text
    r = client.get("/api/events/igwn:nope:preliminary:1")
    assert r.status_code == 404 and r.json()["parameter"] == "id"


def test_group_lists_revisions_in_order_with_the_latest_localization(world):
    client, evs = world
    body = client.get("/api/groups/igwn:MS181101ab").json()
    ids = [r["event_id"] for r in body["revisions"]]
    want = [e.id for e in evs.values() if e.upstream_id == "MS181101ab"]
    assert ids == want and body["n_revisions"] == len(want) and [r["n"] for r in body["revisions"]] == [1, 2, 3]
    assert body["retracted"] is True and body["latest"] == want[-1] and body["revisions"][-1]["latest"]
    assert body["best_localization"]["kind"] == "skymap" and body["best_localization"]["area_90_deg2"] > 0
    # the retraction has no localization: the latest one is the initial alert's map
    assert body["latest_localization_event"] == want[1] and body["latest_localization"]["kind"] == "healpix"
    # when each was issued: the IGWN alerts' own time_created, the GCN notices' alert_datetime
    assert [r["issued"] for r in body["revisions"]] == [evs[i].properties["time_created"] for i in want]
    assert all(r["issued"] is None or r["issued"].endswith("Z") for r in body["revisions"])
    gbm = client.get("/api/groups/gcn:fermi:745121685").json()
    assert [r["alert_type"] for r in gbm["revisions"]] == [evs[r["event_id"]].alert_type for r in gbm["revisions"]]
    assert len(gbm["revisions"]) == 4 and gbm["best_localization"]["kind"] == "point"
    # a member Event id finds its group; unknown keys are 404
    assert client.get(f"/api/groups/{want[0]}").json()["key"] == "igwn:MS181101ab"
    r = client.get("/api/groups/gcn:nope:1")
    assert r.status_code == 404 and r.json()["parameter"] == "key"


def _b64(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize("params, name", [
    ({"limit": 501}, "limit"), ({"limit": 0}, "limit"), ({"limit": "ten"}, "limit"),
    ({"ra_deg": "nan", "dec_deg": 0, "radius_deg": 1}, "ra_deg"),
    ({"ra_deg": 10, "dec_deg": "inf", "radius_deg": 1}, "dec_deg"),
    ({"ra_deg": 10, "dec_deg": 91, "radius_deg": 1}, "dec_deg"),
    ({"ra_deg": -1, "dec_deg": 0, "radius_deg": 1}, "ra_deg"),
    ({"ra_deg": 10, "dec_deg": 0, "radius_deg": 0}, "radius_deg"),
    ({"ra_deg": 10, "dec_deg": 0, "radius_deg": 200}, "radius_deg"),
    ({"ra_deg": 10, "dec_deg": 0}, "radius_deg"), ({"ra_deg": "x", "dec_deg": 0, "radius_deg": 1}, "ra_deg"),
    ({"category": "supernova"}, "category"), ({"source": "fink"}, "source"), ({"source": "IGWN"}, "source"),
    ({"since": "yesterday"}, "since"), ({"until": "2019-13-01"}, "until"),
    ({"q": "S1\x00"}, "q"), ({"source": "z" * 201}, "source"), ({"mission": "\x1b[31m"}, "mission"),
    ({"q": ""}, "q"), ({"cursor": "not-a-cursor"}, "cursor"), ({"since": "0001-01-01T00:00:00+01:00"}, "since"),
    ({"cursor": _b64('["2019-01-01T00:00:00+00:00", "a\\u0000b"]')}, "cursor"),
    ({"cursor": _b64('["2019-01-01T00:00:00", "abc"]')}, "cursor"), ({"cursor": _b64('{"a": 1}')}, "cursor"),
])
def test_bad_parameters_are_named_400s(world, params, name):
    client, _ = world
    r = client.get("/api/events", params=params)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["parameter"] == name and name in body["detail"] and "Traceback" not in r.text
    assert "/tmp" not in r.text and "\x00" not in r.text


def test_undecodable_bytes_and_nul_in_ids_are_400s(world):
    client, _ = world
    r = client.get("/api/events?q=%FF%FE")
    assert r.status_code == 400 and r.json()["parameter"] == "q"
    for path in ("/api/events/ab%00cd", "/api/groups/ab%00cd", "/api/events/" + "x" * 1025):
        r = client.get(path)
        assert r.status_code == 400 and r.json()["parameter"] in ("id", "key"), path


def test_an_unreachable_database_is_a_503_without_its_url(world):
    client, _ = world
    dead = sa.create_engine("postgresql+psycopg://nobody:secret@127.0.0.1:1/nothing", pool_pre_ping=False)
    app = make_app(lambda _: None, "https://broker.example.org", dead)
    r = TestClient(app, raise_server_exceptions=False).get("/api/events")
    assert r.status_code == 503 and "secret" not in r.text and "127.0.0.1" not in r.text


def test_openapi_lists_the_endpoints_with_units(world):
    client, _ = world
    spec = client.get("/openapi.json").json()
    assert {"/api/events", "/api/events/{event_id}", "/api/groups/{key}"} <= set(spec["paths"])
    params = {p["name"] for p in spec["paths"]["/api/events"]["get"]["parameters"]}
    assert {"ra_deg", "dec_deg", "radius_deg", "since", "until", "q", "category", "cursor", "limit"} <= params
    assert "area_90_deg2" in spec["components"]["schemas"]["LocalizationSummary"]["properties"]
    assert client.get("/health").json() == {"status": "ok"}  # the artifact app is the same app
    assert client.get("/artifacts/sha256/" + "0" * 64).status_code == 404
