"""The live stream ``GET /api/stream`` on the real Kafka, over a real uvicorn server.

The app ``mma-broker serve`` builds (broker.sinks.web.make_app) runs on uvicorn on a free
port; two clients open ``/api/stream`` over HTTP (one filtered to ``source=ztf``, one to a
filter topic). Then records are produced the way the pipeline writes them: a real ZTF
alert and a real Fermi GBM notice of tests/data, decoded by the broker's decoders, as the
enrich stage encodes its ``mma.events.enriched`` records
(``EnrichHandler._enriched_record``), in one Kafka transaction of a transactional
producer (the stages' ``read_committed`` guarantee); and the ZTF one again on
``mma.filter.web-test`` as the filter stage encodes it (``filters.stage.filtered_values``).
Each client must get its record within a few seconds, and not the other one.
"""

from __future__ import annotations

import json
import threading
import time
import types
import uuid

import httpx
import pytest

from broker.archive import Archive, PostgresRawStore
from broker.config import settings_class
from broker.sinks.web import make_app
from broker.sources import decode
from tests.conftest import DATA

pytestmark = pytest.mark.integration

ZTF = sorted((DATA / "ztf").rglob("*.avro"))[0]
GBM = DATA / "gcn/gwcelery-kafka/kafka_alert_fermi_ground.json"


class _Reader(threading.Thread):
    """Reads one SSE response line by line into (event, id, data) messages."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.messages, self.status = url, [], None
        self.opened = threading.Event()
        self.client = httpx.Client(timeout=httpx.Timeout(5.0, read=30.0))

    def run(self) -> None:
        try:
            with self.client.stream("GET", self.url) as r:
                self.status = r.status_code
                self.opened.set()
                msg: dict = {}
                for line in r.iter_lines():
                    if not line:
                        if msg:
                            self.messages.append(msg)
                        msg = {}
                    elif not line.startswith(":"):
                        field, _, value = line.partition(": ")
                        msg[field] = value
        except (httpx.HTTPError, RuntimeError):
            pass  # closed by the test

    def events(self, kind: str = "event") -> list[dict]:
        return [m for m in list(self.messages) if m.get("event") == kind]

    def wait(self, cond, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if cond():
                return True
            time.sleep(0.05)
        return cond()


@pytest.fixture()
def server(kafka_bootstrap, fresh_db, tmp_path):
    """(base URL, settings): the app on uvicorn, a topic prefix of its own."""
    from broker.kafka import ensure_topics
    from broker.web.live import uvicorn_server
    from tests.conftest import delete_topics

    tag = uuid.uuid4().hex[:8]
    settings = settings_class()(home=tmp_path / "home", group_id=f"test-{tag}",
                                kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": f"t{tag}."})
    ensure_topics(settings, [settings.topic(settings.enrich.enriched_topic),
                             settings.topic(settings.filters.topic_prefix + "web-test")], partitions=2)
    archive = Archive(fresh_db, PostgresRawStore())
    archive.migrate()
    app = make_app(lambda _: None, "http://127.0.0.1", archive.engine, settings)
    srv = uvicorn_server(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=3)
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", settings
    finally:
        t_stop = time.monotonic()
        srv.should_exit = True
        t.join(10)
        assert time.monotonic() - t_stop < 2.5, "the open streams held the shutdown"
        archive.close()
        delete_topics(kafka_bootstrap, f"t{tag}.")
    assert not t.is_alive(), "uvicorn did not stop with a stream open"


def _produce_like_the_pipeline(settings, records: list[tuple[str, bytes, bytes]]) -> None:
    """One transaction of a transactional producer, as the stages write (broker.kafka)."""
    from broker.kafka import make_producer

    p = make_producer(settings, **{"transactional.id": f"{settings.group_id}.web-test", "transaction.timeout.ms": 60_000})
    p.init_transactions(30)
    p.begin_transaction()
    for topic, key, value in records:
        p.produce(topic, value, key)
    p.commit_transaction(30)


def test_stream_delivers_new_enriched_events_filtered_per_client(server):
    from broker.pipeline.enrich import EnrichHandler
    from filters.api import FilterResult
    from filters.engine import Decision
    from filters.stage import filtered_values

    base, settings = server
    enriched = settings.topic(settings.enrich.enriched_topic)
    ftopic = settings.topic(settings.filters.topic_prefix + "web-test")
    ztf_reader = _Reader(base + "/api/stream?source=ztf")
    topic_reader = _Reader(base + "/api/stream?topic=mma.filter.web-test")
    for r in (ztf_reader, topic_reader):
        r.start()
        assert r.opened.wait(10) and r.status == 200
    # the consumer says "live" once it has assigned the topics at their end offsets
    for r in (ztf_reader, topic_reader):
        assert r.wait(lambda r=r: any(json.loads(m["data"])["state"] == "live" for m in r.events("status")), 15)

    ztf = decode(ZTF.read_bytes())[0]
    gbm = decode(GBM.read_bytes())[0]
    handler = types.SimpleNamespace(enriched_topic=enriched)  # _enriched_record only reads the topic
    recs = []
    for ev in (gbm, ztf):
        enrichment = {"localization": None, "group": {"key": f"{ev.source}:{ev.upstream_id}", "revision": 1,
                                                      "n_revisions": 1, "latest": ev.id, "retracted": False,
                                                      "t0": ev.time},
                      "crossmatch": {}, "coincidences": [], "error": None, "provenance": {}}
        out = EnrichHandler._enriched_record(handler, ev, enrichment)
        recs.append((out.topic, out.key, out.value))
    decision = Decision("web-test", "test-plugin", "1", "0" * 16, FilterResult(accepted=True, reason="accepted"))
    recs.append((ftopic, ztf.upstream_id.encode(), filtered_values(recs[1][2], [decision])[0]))
    t_sent = time.monotonic()
    _produce_like_the_pipeline(settings, recs)

    assert ztf_reader.wait(lambda: ztf_reader.events(), 5), ztf_reader.messages
    latency = time.monotonic() - t_sent
    assert topic_reader.wait(lambda: topic_reader.events(), 5), topic_reader.messages
    time.sleep(0.5)  # anything else would have come by now
    (got,) = ztf_reader.events()  # the GBM notice and the filter-topic copy are not for this client
    item = json.loads(got["data"])
    topic, part, offset = got["id"].rsplit("/", 2)
    assert topic == enriched and int(part) in (0, 1) and int(offset) >= 0
    assert item["id"] == ztf.id and item["topic"] == enriched and item["source"] == "ztf"
    assert item["group_key"] == f"ztf:{ztf.upstream_id}" and item["url"] == f"/api/events/{ztf.id}"
    assert item["localization"]["kind"] == "point" and item["localization"]["ra_deg"] == ztf.localization.ra
    assert item["t0"] == ztf.time and item["received_at"].endswith("Z") and item["retracted"] is False
    (fgot,) = topic_reader.events()
    assert json.loads(fgot["data"])["id"] == ztf.id and fgot["id"].startswith(ftopic + "/")
    print(f"stream latency (produce -> SSE client): {latency * 1000:.0f} ms")
    # the streams stay open: the server must still stop at once (the fixture checks)
