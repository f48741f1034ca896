"""broker.metrics: counters and histograms scraped over real HTTP, /health and /ready,
a busy port, consumer lag from a fake consumer, label budgets, the [metrics] settings."""

from __future__ import annotations

import json
import logging
import os
import socket
import urllib.error
import urllib.request

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.config import MetricsSettings, Settings, SettingsError
from broker.metrics import OTHER, Metrics
from broker.pipeline.deadletter import reason_kind


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, 4xx/5xx included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def scrape(server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by prometheus_client's own parser."""
    status, _, text = get(server.url + "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def sample(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def metrics(clock) -> Metrics:
    return Metrics(clock=clock)


@pytest.fixture()
def server(metrics):
    srv = metrics.serve("127.0.0.1", 0, max_poll_age_s=60.0)
    assert srv is not None
    yield srv
    srv.close()


# ---------------------------------------------------------------- /metrics
def test_counters_and_histograms_move_in_a_real_scrape(metrics, server):
    st = metrics.stage("ingest.notices")
    before = scrape(server)
    assert sample(before, "mma_broker_messages_in_total", stage="ingest.notices", topic="gcn.x") is None
    assert sample(before, "mma_broker_batch_seconds_count", stage="ingest.notices") == 0
    assert sample(before, "mma_broker_stage_up", stage="ingest.notices") == 0
    assert sample(before, "mma_broker_last_poll_timestamp_seconds", stage="ingest.notices") is None

    st.consumed("gcn.x", 3)
    st.consumed("gcn.x", 2)
    st.consumed("igwn.gwalert", 1)
    st.produced("mma.events", 5)
    st.dead_lettered(reason_kind("invalid value: dec = 200.0 deg is outside [-90, 90]"))
    st.dead_lettered("schema violation", 2)
    st.batch(0.004, 6)
    st.batch(240.0, 1)  # a follow-up batch that waited four minutes for MMODA
    st.polled()
    st.state("running")

    after = scrape(server)
    assert sample(after, "mma_broker_messages_in_total", stage="ingest.notices", topic="gcn.x") == 5
    assert sample(after, "mma_broker_messages_in_total", stage="ingest.notices", topic="igwn.gwalert") == 1
    assert sample(after, "mma_broker_messages_out_total", stage="ingest.notices", topic="mma.events") == 5
    assert sample(after, "mma_broker_dead_letters_total", stage="ingest.notices", kind="value out of range") == 1
    assert sample(after, "mma_broker_dead_letters_total", stage="ingest.notices", kind="schema violation") == 2
    assert sample(after, "mma_broker_batch_seconds_count", stage="ingest.notices") == 2
    assert sample(after, "mma_broker_batch_seconds_sum", stage="ingest.notices") == pytest.approx(240.004)
    assert sample(after, "mma_broker_batch_seconds_bucket", stage="ingest.notices", le="0.005") == 1
    assert sample(after, "mma_broker_batch_seconds_bucket", stage="ingest.notices", le="120.0") == 1
    assert sample(after, "mma_broker_batch_seconds_bucket", stage="ingest.notices", le="300.0") == 2
    assert sample(after, "mma_broker_batch_seconds_bucket", stage="ingest.notices", le="600.0") == 2
    assert sample(after, "mma_broker_batch_messages_sum", stage="ingest.notices") == 7
    assert sample(after, "mma_broker_batch_messages_bucket", stage="ingest.notices", le="5.0") == 1
    assert sample(after, "mma_broker_stage_up", stage="ingest.notices") == 1
    assert sample(after, "mma_broker_last_poll_timestamp_seconds", stage="ingest.notices") > 1.7e9
    assert sample(after, "process_cpu_seconds_total") is not None


def test_openmetrics_when_asked_and_404_elsewhere(metrics, server):
    metrics.stage("s").consumed("t", 1)
    req = urllib.request.Request(server.url + "/metrics", headers={"Accept": "application/openmetrics-text"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert resp.read().decode().rstrip().endswith("# EOF")
    status, _, body = get(server.url + "/nope")
    assert status == 404 and "/metrics" in body


def test_each_metrics_has_its_own_registry(metrics):
    other = Metrics()
    metrics.stage("a").consumed("t", 4)
    assert other.registry.get_sample_value("mma_broker_messages_in_total", {"stage": "a", "topic": "t"}) is None
    assert metrics.registry.get_sample_value("mma_broker_messages_in_total", {"stage": "a", "topic": "t"}) == 4
    assert prometheus_client.REGISTRY.get_sample_value("mma_broker_messages_in_total",
                                                       {"stage": "a", "topic": "t"}) is None
    assert metrics.stage("a") is metrics.stage("a")


def test_negative_counts_are_refused(metrics):
    with pytest.raises(ValueError):
        metrics.stage("s").consumed("t", -1)


# ---------------------------------------------------------------- label budgets
def test_topics_and_kinds_past_the_budget_count_as_other():
    m = Metrics(max_topics=2, max_kinds=2)
    st = m.stage("ingest.ztf")
    for night in ("20240101", "20240102", "20240103", "20240104"):
        st.consumed(f"ztf_{night}_programid1", 10)
    for kind in ("schema violation", "over max_json_depth", "invalid JSON"):
        st.dead_lettered(kind)
    value = m.registry.get_sample_value
    assert value("mma_broker_messages_in_total", {"stage": "ingest.ztf", "topic": "ztf_20240101_programid1"}) == 10
    assert value("mma_broker_messages_in_total", {"stage": "ingest.ztf", "topic": OTHER}) == 20
    assert value("mma_broker_dead_letters_total", {"stage": "ingest.ztf", "kind": "invalid JSON"}) is None
    assert value("mma_broker_dead_letters_total", {"stage": "ingest.ztf", "kind": OTHER}) == 1


# ---------------------------------------------------------------- /health and /ready
def test_health_200_then_503_when_a_stage_stops_polling(metrics, server, clock):
    a, b = metrics.stage("ingest.notices"), metrics.stage("followup")
    for st in (a, b):
        st.state("running")
        st.polled()
    status, ctype, body = get(server.url + "/health")
    assert (status, ctype) == (200, "application/json")
    doc = json.loads(body)
    assert doc["status"] == "ok"
    assert doc["stages"]["followup"] == {"ok": True, "state": "running", "seconds_since_poll": 0.0,
                                         "seconds_in_state": 0.0, "last_error": None,
                                         "seconds_since_error": None, "ready": True}

    clock.now += 59.0
    a.polled()
    assert get(server.url + "/health")[0] == 200
    clock.now += 2.0  # followup: 61 s without a poll, over the 60 s limit
    status, _, body = get(server.url + "/health")
    doc = json.loads(body)
    assert status == 503 and doc["status"] == "unhealthy"
    assert doc["stages"]["followup"]["ok"] is False
    assert doc["stages"]["followup"]["seconds_since_poll"] == pytest.approx(61.0)
    assert doc["stages"]["ingest.notices"]["ok"] is True

    b.polled()
    assert get(server.url + "/health")[0] == 200


def test_health_503_on_failure_keeps_the_error_without_secrets(metrics, server):
    st = metrics.stage("ingest.ztf")
    st.state("running")
    st.polled()
    st.state("waiting", error=ConnectionError("postgresql://mma:hunter22@db:5432/mma refused\nsecond line"))
    doc = json.loads(get(server.url + "/health")[2])
    assert doc["status"] == "ok" and doc["stages"]["ingest.ztf"]["state"] == "waiting"
    error = doc["stages"]["ingest.ztf"]["last_error"]
    assert error == "ConnectionError: postgresql://mma:***@db:5432/mma refused second line"
    assert metrics.registry.get_sample_value("mma_broker_stage_up", {"stage": "ingest.ztf"}) == 1

    st.state("running")
    assert json.loads(get(server.url + "/health")[2])["stages"]["ingest.ztf"]["last_error"] == error
    st.state("failed", error="archive refused: disk full")
    status, _, body = get(server.url + "/health")
    assert status == 503
    assert json.loads(body)["stages"]["ingest.ztf"]["last_error"] == "archive refused: disk full"
    assert metrics.registry.get_sample_value("mma_broker_stage_up", {"stage": "ingest.ztf"}) == 0


@pytest.mark.parametrize("state,code", [("starting", 503), ("running", 200), ("waiting", 200),
                                        ("stopped", 503), ("failed", 503)])
def test_health_by_state(metrics, server, state, code):
    st = metrics.stage("s")
    st.polled()
    st.state(state)
    assert get(server.url + "/health")[0] == code


def test_before_the_first_poll_the_time_in_state_counts(metrics, server, clock):
    st = metrics.stage("s")
    st.state("running")
    clock.now += 30.0
    doc = json.loads(get(server.url + "/health")[2])
    assert doc["status"] == "ok" and doc["stages"]["s"]["seconds_since_poll"] is None
    clock.now += 31.0
    assert get(server.url + "/health")[0] == 503


def test_no_stage_is_not_healthy_nor_ready(server):
    assert get(server.url + "/health")[0] == 503
    assert get(server.url + "/ready")[0] == 503


def test_ready_once_every_stage_has_polled(metrics, server):
    a, b = metrics.stage("a"), metrics.stage("b")
    a.polled()
    assert get(server.url + "/ready")[:3:2] == (503, "not ready\n")
    b.polled()
    assert get(server.url + "/ready")[:3:2] == (200, "ready\n")


def test_unknown_state_is_refused(metrics):
    with pytest.raises(ValueError, match="unknown stage state"):
        metrics.stage("s").state("sleeping")  # type: ignore[arg-type]


# ---------------------------------------------------------------- server life
def test_busy_port_gives_none_and_one_warning(metrics, caplog):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="broker.metrics"):
            assert metrics.serve("127.0.0.1", port) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"127.0.0.1:{port}" in warnings[0].getMessage()
    assert "MMA_BROKER_METRICS__PORT" in warnings[0].getMessage()


def test_close_frees_the_port(metrics):
    srv = metrics.serve("127.0.0.1", 0)
    port = srv.port
    assert get(srv.url + "/")[0] == 200
    srv.close()
    srv.close()  # idempotent
    with metrics.serve("127.0.0.1", port) as again:
        assert again.port == port
        assert get(again.url + "/")[0] == 200


def test_serve_settings(metrics):
    assert metrics.serve_settings(MetricsSettings(enabled=False)) is None
    with metrics.serve_settings(MetricsSettings(port=0, max_poll_age_s=5)) as srv:
        assert srv.port > 0
        assert json.loads(get(srv.url + "/health")[2])["max_poll_age_s"] == 5


# ---------------------------------------------------------------- lag
class TP:
    def __init__(self, topic: str, partition: int, offset: int = -1001, error=None) -> None:
        self.topic, self.partition, self.offset, self.error = topic, partition, offset, error


class FakeConsumer:
    """assignment/position/get_watermark_offsets(cached=True) as confluent_kafka's Consumer."""

    def __init__(self, positions: dict[tuple[str, int], int], highs: dict[tuple[str, int], int]) -> None:
        self.positions, self.highs = positions, highs
        self.cached_only = True

    def assignment(self):
        return [TP(t, p) for t, p in self.positions]

    def position(self, partitions):
        return [TP(tp.topic, tp.partition, self.positions[(tp.topic, tp.partition)]) for tp in partitions]

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        self.cached_only &= cached
        return 0, self.highs.get((tp.topic, tp.partition), -1001)


def test_lag_from_a_fake_consumer(metrics):
    st = metrics.stage("ingest.notices")
    consumer = FakeConsumer(
        positions={("gcn.a", 0): 10, ("gcn.a", 1): -1001, ("gcn.b", 0): 7, ("gcn.c", 0): 3},
        highs={("gcn.a", 0): 25, ("gcn.a", 1): 4, ("gcn.b", 0): 7},  # gcn.c: no cached watermark
    )
    assert st.lag(consumer) == {("gcn.a", 0): 15, ("gcn.b", 0): 0}
    assert consumer.cached_only
    value = metrics.registry.get_sample_value
    assert value("mma_broker_consumer_lag", {"stage": "ingest.notices", "topic": "gcn.a", "partition": "0"}) == 15
    assert value("mma_broker_consumer_lag", {"stage": "ingest.notices", "topic": "gcn.b", "partition": "0"}) == 0
    assert value("mma_broker_consumer_lag", {"stage": "ingest.notices", "topic": "gcn.a", "partition": "1"}) is None

    # a rebalance took gcn.a away: its series goes
    consumer.positions = {("gcn.b", 0): 8}
    consumer.highs = {("gcn.b", 0): 9}
    assert st.lag(consumer) == {("gcn.b", 0): 1}
    assert value("mma_broker_consumer_lag", {"stage": "ingest.notices", "topic": "gcn.a", "partition": "0"}) is None
    assert value("mma_broker_consumer_lag", {"stage": "ingest.notices", "topic": "gcn.b", "partition": "0"}) == 1


def test_lag_of_a_broken_consumer_is_empty_not_an_error(metrics, caplog):
    class Closed:
        def assignment(self):
            raise RuntimeError("Consumer closed")

    st = metrics.stage("s")
    with caplog.at_level(logging.DEBUG, logger="broker.metrics"):
        assert st.lag(Closed()) == {}
        assert st.lag(object()) == {}
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.DEBUG]
    assert st.lag(FakeConsumer({}, {})) == {}


def test_lag_folds_topics_past_the_budget():
    m = Metrics(max_topics=1)
    st = m.stage("ztf")
    consumer = FakeConsumer({("ztf_1", 0): 0, ("ztf_2", 0): 0, ("ztf_3", 0): 1}, {("ztf_1", 0): 5,
                            ("ztf_2", 0): 2, ("ztf_3", 0): 4})
    assert st.lag(consumer) == {("ztf_1", 0): 5, ("ztf_2", 0): 2, ("ztf_3", 0): 3}
    assert m.registry.get_sample_value("mma_broker_consumer_lag",
                                       {"stage": "ztf", "topic": OTHER, "partition": "0"}) == 5


# ---------------------------------------------------------------- settings
@pytest.fixture()
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("MMA_BROKER_"):
            monkeypatch.delenv(key)


def test_metrics_settings_defaults_and_environment(clean_env, monkeypatch):
    s = Settings().metrics
    assert (s.enabled, s.host, s.port, s.max_poll_age_s) == (True, "127.0.0.1", 9108, 300.0)
    monkeypatch.setenv("MMA_BROKER_METRICS__PORT", "0")
    monkeypatch.setenv("MMA_BROKER_METRICS__ENABLED", "false")
    monkeypatch.setenv("MMA_BROKER_METRICS__MAX_POLL_AGE_S", "30")
    s = Settings().metrics
    assert (s.enabled, s.port, s.max_poll_age_s) == (False, 0, 30.0)


@pytest.mark.parametrize("port", ["-1", "65536"])
def test_metrics_port_out_of_range_is_a_settings_error(clean_env, monkeypatch, port):
    monkeypatch.setenv("MMA_BROKER_METRICS__PORT", port)
    with pytest.raises(SettingsError, match="invalid setting metrics.port"):
        Settings()
