"""The home (live) page, the search page, the HTML error pages and the live stream's
parts that need no Kafka (broker/web/home.py, broker/web/live.py), on the real PostgreSQL.

The archive holds real alerts of tests/data archived and enriched as in
tests/unit/test_web_api.py: the LVK user-guide mock superevent MS181101ab (preliminary
with its sky map, initial, retraction), Fermi GBM trigger 745121685 (four notices) and
three real ZTF packets. Pages are asked through FastAPI's TestClient of the app
``mma-broker serve`` builds (broker.sinks.web.make_app with settings: pages mounted).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from broker.archive import Archive, ArchiveItem, KafkaMeta, PostgresRawStore
from broker.config import settings_class
from broker.enrich.enriched import ENRICHED_SCHEMA, EnrichedEvent
from broker.enrich.groups import GroupStore
from broker.enrich.localization import extract_localization
from broker.enrich.store import LocalizationStore, index_positions
from broker.errors import DecodeError
from broker.sinks.web import make_app
from broker.sources import decode
from broker.web.live import StreamFilter, StreamHub, decode_record, sse, stream_item
from tests.conftest import DATA, _new_database

GW = [DATA / "igwn/userguide" / n for n in ("MS181101ab-preliminary.json", "MS181101ab-initial.json",
                                             "MS181101ab-retraction.json")]
GBM = [DATA / "gcn/gwcelery-kafka" / f"kafka_alert_fermi_{k}.json" for k in ("alert", "flight", "ground", "final")]
ZTF = sorted((DATA / "ztf").rglob("*.avro"))[:3]
ROW = re.compile(r'<tr data-event-id="([^"]+)"')


def _settings(**env):
    return settings_class()(**env)


@pytest.fixture(scope="module")
def world(pg_url, tmp_path_factory):
    """(client, events by id, engine): the alerts archived, localized and grouped once."""
    with _new_database(pg_url) as url:
        archive = Archive(url, PostgresRawStore())
        archive.migrate()
        decoded = [(ev, p.read_bytes()) for p in GW + GBM + ZTF for ev in decode(p.read_bytes())]
        archive.write_batch([ArchiveItem(event=ev, raw=raw, kafka=KafkaMeta("t", 0, i))
                             for i, (ev, raw) in enumerate(decoded)])
        locs, groups = LocalizationStore(archive.engine), GroupStore(archive.engine)
        for ev, raw in decoded:
            if ev.source == "ztf":
                continue
            sky = extract_localization(ev, raw)
            groups.add(ev, locs.put(ev.id, sky) if sky is not None else None)
        index_positions(archive.engine, [ev for ev, _ in decoded if ev.source == "ztf"])
        settings = _settings(home=tmp_path_factory.mktemp("home"))
        client = TestClient(make_app(lambda _: None, "https://broker.example.org", archive.engine, settings),
                            raise_server_exceptions=False)
        try:
            yield client, {ev.id: ev for ev, _ in decoded}, archive.engine
        finally:
            archive.close()


def _rows(html: str) -> list[str]:
    import html as h

    return [h.unescape(m) for m in ROW.findall(html)]


def _api_ids(client, **params) -> list[str]:
    r = client.get("/api/events", params={"limit": 500, **params})
    assert r.status_code == 200, r.text
    return [it["id"] for it in r.json()["items"]]


# ------------------------------------------------------------------ home
def test_home_lists_the_newest_events_with_group_links_and_the_live_hooks(world):
    client, evs, _ = world
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), r.text[-800:]
    html = r.text
    assert _rows(html) == _api_ids(client)  # the API's order: newest T0 first
    assert 'id="live-filter"' in html and 'id="stream-status"' in html and "/static/live.js" in html
    assert 'href="/groups/igwn:MS181101ab"' in html and 'href="/groups/gcn:fermi:745121685"' in html
    z = next(e for e in evs.values() if e.source == "ztf")
    assert f'href="/groups/ztf:{z.upstream_id}"' in html
    # MS181101ab's revisions carry the retracted badge, GBM's do not
    gw_row = html[html.index('data-event-id="igwn:MS181101ab:preliminary'):]
    gw_row = gw_row[:gw_row.index("</tr>")]
    assert "retracted" in gw_row and "sky map, 90 % 31 deg²" in gw_row and "gw_cbc" in gw_row
    gbm_row = html[html.index('data-event-id="gcn:fermi-gbm:745121685:update:6'):]
    gbm_row = gbm_row[:gbm_row.index("</tr>")]
    assert "retracted-badge" not in gbm_row and re.search(r"RA \d+\.\d{3}°, Dec [+-]\d+\.\d{3}° ± ", gbm_row)


def test_home_filters_are_the_apis_and_empty_fields_mean_unset(world):
    client, evs, _ = world
    assert _rows(client.get("/", params={"source": "gcn"}).text) == _api_ids(client, source="gcn")
    assert _rows(client.get("/", params={"mission": "FERMI", "alert_type": "update"}).text) == \
        _api_ids(client, mission="fermi", alert_type="update") != []
    assert _rows(client.get("/", params={"category": "gw_cbc"}).text) == _api_ids(client, category="gw_cbc")
    empty = client.get("/?source=&category=&mission=&alert_type=&topic=")
    assert empty.status_code == 200 and _rows(empty.text) == _api_ids(client)
    page = client.get("/", params={"source": "ztf"}).text  # the form keeps the choice for live.js
    assert re.search(r"<option selected>ztf</option>", page)


def test_home_topic_lists_what_that_filter_accepted(world):
    client, evs, engine = world
    ztf = sorted(i for i, e in evs.items() if e.source == "ztf")
    decisions = sa.table("filter_decisions", sa.column("event_id"), sa.column("run"), sa.column("decided_at"),
                         sa.column("decisions", sa.JSON))
    entry = lambda name, ok: [name, "0" * 16, "ztf-quality", "1", ok, "r", None, [], None, 0.1, None]  # noqa: E731
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        conn.execute(sa.insert(decisions), [
            {"event_id": ztf[0], "run": "live", "decided_at": now,
             "decisions": [entry("ztf-decent", True), entry("other", False)]},
            {"event_id": ztf[1], "run": "live", "decided_at": now,
             "decisions": [entry("ztf-decent", False), entry("other", True)]}])
    try:
        assert _rows(client.get("/", params={"topic": "mma.filter.ztf-decent"}).text) == [ztf[0]]
        assert _rows(client.get("/", params={"topic": "mma.filter.other"}).text) == [ztf[1]]
        assert _rows(client.get("/", params={"topic": "mma.filter.none-such"}).text) == []
    finally:
        with engine.begin() as conn:
            conn.execute(sa.delete(decisions))


# ------------------------------------------------------------------ search
def test_search_by_cone_time_and_id(world):
    client, evs, _ = world
    z = next(e for e in evs.values() if e.source == "ztf")
    r = client.get("/search", params={"ra_deg": z.localization.ra, "dec_deg": z.localization.dec,
                                      "radius_deg": 1 / 3600})
    assert r.status_code == 200 and z.id in _rows(r.text)
    assert _rows(r.text) == _api_ids(client, ra_deg=z.localization.ra, dec_deg=z.localization.dec,
                                     radius_deg=1 / 3600)
    assert _rows(client.get("/search", params={"q": "MS1811", "source": "igwn"}).text) == \
        _api_ids(client, q="MS1811") != []
    t = sorted({e.time for e in evs.values()})[3]
    assert _rows(client.get("/search", params={"since": t, "ra_deg": "", "category": ""}).text) == \
        _api_ids(client, since=t)


def test_search_pages_with_the_next_link_visit_every_event_once(world):
    client, evs, _ = world
    url, seen, pages = "/search?limit=3&source=", [], 0
    while url:
        html = client.get(url).text
        seen += _rows(html)
        pages += 1
        m = re.search(r'<a href="([^"]+)" id="next-page"', html)
        url = m.group(1).replace("&amp;", "&") if m else None
        assert pages <= len(evs)
    assert seen == _api_ids(client) and pages == -(-len(evs) // 3)


@pytest.mark.parametrize("params, name", [
    ({"ra_deg": "abc", "dec_deg": "0", "radius_deg": "1"}, "ra_deg"),
    ({"ra_deg": "nan", "dec_deg": "0", "radius_deg": "1"}, "ra_deg"),
    ({"ra_deg": "10", "dec_deg": "95", "radius_deg": "1"}, "dec_deg"),
    ({"ra_deg": "10", "dec_deg": "0"}, "radius_deg"),
    ({"ra_deg": "10", "dec_deg": "0", "radius_deg": "-1"}, "radius_deg"),
    ({"since": "last tuesday"}, "since"), ({"until": "2019-02-30"}, "until"),
    ({"category": "<script>alert(1)</script>"}, "category"), ({"q": "S1\x00"}, "q"),
    ({"source": "x" * 5000}, "source"), ({"q": "\x1b[2J"}, "q"), ({"cursor": "garbage"}, "cursor"),
    ({"limit": "9999"}, "limit"),
])
def test_search_shows_the_named_400_next_to_the_field(world, params, name):
    client, _, _ = world
    r = client.get("/search", params=params)
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")
    m = re.search(rf'<[a-z]+ class="error" id="error-{name}">([^<]*)<', r.text)
    assert m and name in m.group(1), r.text[-1500:]
    assert "Traceback" not in r.text and "/tmp" not in r.text and "<script>alert" not in r.text
    assert 'id="search"' in r.text and 'id="results"' not in r.text  # the form stays, no results


@pytest.mark.parametrize("params, name", [
    ({"category": "supernova"}, "category"), ({"mission": "\x00"}, "mission"), ({"topic": "mma.events"}, "topic"),
    ({"topic": "mma.filter."}, "topic"), ({"alert_type": "y" * 300}, "alert_type"), ({"source": "%FF"}, "source"),
    ({"source": "fink"}, "source"),
])
def test_home_bad_filters_are_400_pages_naming_the_field(world, params, name):
    client, _, _ = world
    r = client.get("/", params=params)
    assert r.status_code == 400 and f'id="error-{name}"' in r.text and "Traceback" not in r.text
    assert "/static/live.js" not in r.text  # no stream for a bad filter


def test_undecodable_bytes_on_pages_are_400s(world):
    client, _, _ = world
    for path, name in (("/search?q=%FF%FE", "q"), ("/?mission=%C3%28", "mission")):
        r = client.get(path)
        assert r.status_code == 400 and f'id="error-{name}"' in r.text, path


def test_html_404_for_pages_and_json_for_the_api(world):
    client, _, _ = world
    r = client.get("/no/such/page")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert 'id="error-message"' in r.text and "no such page" in r.text
    r = client.get("/api/events/igwn:none")
    assert r.status_code == 404 and r.json()["parameter"] == "id"
    r = client.get("/artifacts/sha256/" + "0" * 64)
    assert r.status_code == 404 and r.json()["detail"] == "no such artifact"
    assert client.post("/search").status_code == 405


def test_pages_answer_503_pages_when_the_database_is_unreachable(tmp_path):
    dead = sa.create_engine("postgresql+psycopg://nobody:secret@127.0.0.1:1/nothing")
    app = make_app(lambda _: None, "https://broker.example.org", dead, _settings(home=tmp_path))
    client = TestClient(app, raise_server_exceptions=False)
    for path in ("/", "/search?q=S1"):
        r = client.get(path)
        assert r.status_code == 503 and "secret" not in r.text and "127.0.0.1" not in r.text, path
        assert r.headers["content-type"].startswith("text/html")


# ------------------------------------------------------------------ live stream without Kafka
def test_stream_parameters_are_checked_like_the_api(world):
    client, _, _ = world
    for params, name in (({"category": "supernova"}, "category"), ({"source": "a\x00"}, "source"),
                         ({"topic": "mma.events.enriched"}, "topic"), ({"mission": ""}, "mission")):
        r = client.get("/api/stream", params=params)
        assert r.status_code == 400 and r.json()["parameter"] == name, params
    assert "/api/stream" in client.get("/openapi.json").json()["paths"]


def test_stream_items_are_the_api_items_plus_topic(world):
    """The same Event gives the same fields on the stream as in /api/events (received_at aside:
    the stream's is the Kafka record's time)."""
    client, evs, _ = world
    api = {it["id"]: it for it in client.get("/api/events", params={"limit": 500}).json()["items"]}
    for eid, ev in evs.items():
        enrichment = {"group": {"key": api[eid]["group_key"], "retracted": api[eid]["retracted"]}}
        item = stream_item(EnrichedEvent(event=ev, enrichment=enrichment), topic="mma.events.enriched",
                           received_ms=1_700_000_000_000)
        assert item.pop("topic") == "mma.events.enriched" and item.pop("received_at") == "2023-11-14T22:13:20.000Z"
        want = dict(api[eid])
        want.pop("received_at")
        assert item == want, eid


def test_filtered_records_decode_and_garbage_is_a_decode_error(world):
    _, evs, _ = world
    ev = next(e for e in evs.values() if e.source == "gcn")
    doc = {"schema": ENRICHED_SCHEMA, **ev.to_json_dict(), "enrichment": {"group": {"key": "gcn:x"}}}
    assert decode_record(json.dumps(doc).encode()).event == ev
    filtered = {**doc, "schema": "mma.event.filtered/1", "filter": {"filter": "f", "accepted": True}}
    rec = decode_record(json.dumps(filtered).encode())
    assert rec.event == ev and rec.group_key == "gcn:x"
    for bad in (b"", b"\xff\xfe", b"[1]", b'{"schema": "mma.event.filtered/1", "id": 3}', b"{" * 100_000,
                json.dumps({**doc, "schema": "other/1"}).encode()):
        with pytest.raises(DecodeError):
            decode_record(bad)


def test_stream_filter_matches_per_client(tmp_path):
    s = _settings(home=tmp_path, kafka={"topic_prefix": "p."})
    item = {"topic": "p.mma.events.enriched", "source": "gcn", "category": "grb", "mission": "Fermi",
            "alert_type": "final"}
    assert StreamFilter.from_params(s).accepts(item)
    assert StreamFilter.from_params(s, mission="FERMI", source="gcn", category="grb", alert_type="final").accepts(item)
    assert not StreamFilter.from_params(s, source="igwn").accepts(item)
    assert not StreamFilter.from_params(s, alert_type="flight").accepts(item)
    f = StreamFilter.from_params(s, topic="mma.filter.grb-good")
    assert f.topic == "p.mma.filter.grb-good" == StreamFilter.from_params(s, topic="p.mma.filter.grb-good").topic
    assert not f.accepts(item) and f.accepts({**item, "topic": "p.mma.filter.grb-good"})


def test_a_slow_client_is_told_to_reload_and_dropped_without_blocking_others(tmp_path):
    hub = StreamHub(_settings(home=tmp_path), queue_size=5)
    hub.start = lambda: None  # no consumer thread: the fan-out alone

    async def scenario():
        slow = hub.subscribe(StreamFilter.from_params(hub.settings))
        fast = hub.subscribe(StreamFilter.from_params(hub.settings, source="gcn"))
        got = []
        for i in range(20):
            item = {"topic": hub.enriched_topic, "source": "gcn", "category": None, "mission": "Fermi",
                    "alert_type": "final", "id": str(i)}
            hub._broadcast(sse("event", item, f"t/0/{i}"), item)
            got += fast.take()
        return slow, fast, got

    slow, fast, got = asyncio.run(scenario())
    assert slow.dropped and not fast.dropped and hub.n_clients == 1
    assert len(got) == 21 and got[-1].startswith(b"id: t/0/19\nevent: event\n")  # status + 20 events


def test_an_unreachable_kafka_is_a_status_message_not_an_error(tmp_path):
    s = _settings(home=tmp_path, kafka={"bootstrap_servers": "127.0.0.1:1"})
    hub = StreamHub(s, metadata_timeout_s=0.5, retry_s=0.2)

    async def scenario():
        client = hub.subscribe(StreamFilter.from_params(s))
        deadline = time.monotonic() + 10
        seen = b""
        while b'"unreachable"' not in seen and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(client.wake.wait(), 0.5)
            except asyncio.TimeoutError:
                continue
            client.wake.clear()
            seen += b"".join(client.take())
        return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        hub.stop()
    assert seen.startswith(b'event: status\ndata: {"state":"connecting"')
    assert b'event: status\ndata: {"state":"unreachable","detail":"Kafka is unreachable; retrying"}' in seen
    assert b"127.0.0.1" not in seen


def test_streams_beyond_the_limit_are_503s(tmp_path):
    dead = sa.create_engine("postgresql+psycopg://nobody:secret@127.0.0.1:1/nothing")
    app = make_app(lambda _: None, "https://broker.example.org", dead, _settings(home=tmp_path))
    app.state.live_hub.max_clients = 0
    r = TestClient(app, raise_server_exceptions=False).get("/api/stream")
    assert r.status_code == 503 and r.headers["retry-after"] == "30" and "live streams are open" in r.json()["detail"]
