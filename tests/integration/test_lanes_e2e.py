"""Two enrich lanes on the real Kafka and PostgreSQL (:mod:`broker.lanes`).

``[lanes] notices = ["*"], optical = ["ztf", "lsst"]``: one ``mma-broker run`` with the
ingest stage and both enrich lanes (two loops, two consumer groups, two transactional
ids) over a real Swift BAT-GUANO notice moved onto a real ZTF candidate (ZTF20aakyoez,
12 h before its first detection) and the night's twelve real ZTF alerts. Each Event is
enriched exactly once, each lane's group has committed every offset of ``mma.events``
(the other lane's records included), and the GRB–optical pair across the lanes is one
coincidence (one id, one version).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

import pytest

from tests.conftest import read_to_end, run_cli
from tests.integration.test_tns_e2e import GUANO, KYOEZ, ZTF_DIR, _alert, _first_detection, _shifted

pytestmark = pytest.mark.integration

LANES = {"notices": ["*"], "optical": ["ztf", "lsst"]}


def _committed(bootstrap: str, group: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """(committed offset, end offset) per partition of ``topic`` for ``group``."""
    import confluent_kafka
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = admin.list_consumer_group_offsets([confluent_kafka.ConsumerGroupTopicPartitions(group)])
    done = {tp.partition: tp.offset for tp in res[group].result(timeout=10).topic_partitions if tp.topic == topic}
    probe = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": f"{group}.probe"})
    try:
        parts = probe.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: probe.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p), timeout=10)[1]
                for p in parts}
    finally:
        probe.close()
    return done, ends


def test_two_enrich_lanes_enrich_each_event_once_and_find_the_cross_lane_pair_once(broker_env, fresh_db, tmp_path,
                                                                                  kafka_bootstrap):
    env = dict(broker_env, MMA_BROKER_ARCHIVE__DATABASE_URL=fresh_db, MMA_BROKER_LANES=json.dumps(LANES),
               MMA_BROKER_ENRICH__COINCIDENCES__OPTICAL_DAYS="5", MMA_BROKER_FILTERS__ENABLED="false",
               MMA_BROKER_FOLLOWUP__ENABLED="false")
    kyoez = _alert(KYOEZ)
    c = kyoez["candidate"]
    guano = _shifted(json.loads((GUANO / "guano.loc_arc_min.example.json").read_text()),
                     _first_detection(kyoez) - timedelta(hours=12), c["ra"], c["dec"])
    notice = tmp_path / "guano.json"
    notice.write_text(json.dumps(guano))
    run_cli(env, "replay", str(notice), str(ZTF_DIR))
    run_cli(env, "run", "--stage", "ingest", "--stage", "enrich", "--until-caught-up", "--idle", "1.0")

    prefix, group = env["MMA_BROKER_KAFKA__TOPIC_PREFIX"], env["MMA_BROKER_GROUP_ID"]
    events = [dict(m.headers())["mma.event.id"].decode() for m in read_to_end(kafka_bootstrap, f"{prefix}mma.events")]
    enriched = Counter(json.loads(m.value())["id"]
                       for m in read_to_end(kafka_bootstrap, f"{prefix}mma.events.enriched"))
    assert len(events) == 13 and sum(e.startswith("ztf:") for e in events) == 12
    assert sorted(enriched) == sorted(events) and set(enriched.values()) == {1}  # each once, by one lane
    for lane in LANES:
        done, ends = _committed(kafka_bootstrap, f"{group}.enrich.{lane}", f"{prefix}mma.events")
        assert done == ends, lane  # the other lane's records are committed too

    coincs = [json.loads(m.value()) for m in read_to_end(kafka_bootstrap, f"{prefix}mma.coincidences")]
    pairs = {(d["id"], d["computed_from"]) for d in coincs}
    (pair,) = [p for p in pairs if p[0].endswith("+ztf:ZTF20aakyoez")]
    assert pair[0].startswith("grb-optical:gcn:swift:") and len(pairs) == 1, pairs
    assert len(coincs) == 1, coincs  # once, even when both lanes found it (the claim: broker/enrich/claims.py)
    # the version is the member archived last, whichever lane found the pair: one of the two
    # members' Event ids (which one depends on which ingest loop committed last: the notices and
    # ZTF upstreams are ingested by two loops at once), the same in every record (len(pairs) == 1)
    trigger = [e for e in events if not e.startswith("ztf:")]
    assert pair[1] in trigger or (pair[1].startswith("ztf:") and pair[1] in events), pair
