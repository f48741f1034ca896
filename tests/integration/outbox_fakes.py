"""Channels for the outbox tests, loaded by a real ``mma-broker run --stage publish``
through ``[publish] channels`` (``MMA_BROKER_PUBLISH__CHANNELS``).

:class:`RecordingChannel` appends every send to a JSON Lines file (``MMA_TEST_OUTBOX_RECORD``,
fsync'ed before it returns) and recovers by looking for the key in it: the file is the
"other side". :class:`KillingKafkaChannel` is the core's :class:`KafkaChannel` on a
test topic. Both ``kill -9`` their own process when ``MMA_TEST_OUTBOX_KILL`` is
``before-send:<key>`` (after the claim, before anything goes out) or
``after-send:<key>`` (after the send, before the outbox records it) — the two
moments a crash can hit.
"""

from __future__ import annotations

import json
import os
import signal

from broker.sinks.channels import BaseChannel, KafkaChannel

RECORD_ENV = "MMA_TEST_OUTBOX_RECORD"
KILL_ENV = "MMA_TEST_OUTBOX_KILL"


def _kill_if(moment: str, key: str) -> None:
    if os.environ.get(KILL_ENV) == f"{moment}:{key}":
        os.kill(os.getpid(), signal.SIGKILL)


class RecordingChannel(BaseChannel):
    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path

    def validate(self, payload: dict) -> None:
        if not isinstance(payload.get("text"), str):
            raise ValueError("$.text: a string is required")

    def _lines(self) -> list[dict]:
        try:
            with open(self.path) as fh:
                return [json.loads(line) for line in fh if line.strip()]
        except FileNotFoundError:
            return []

    def send(self, entry) -> dict:
        _kill_if("before-send", entry.key)
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"channel": self.name, "key": entry.key, "payload": entry.payload}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        _kill_if("after-send", entry.key)
        return {"line": len(self._lines())}

    def recover(self, entry) -> dict | None:
        for i, rec in enumerate(self._lines(), 1):
            if rec["key"] == entry.key and rec["channel"] == self.name:
                return {"line": i, "recovered": True}
        return None


def _recording(name: str) -> RecordingChannel:
    return RecordingChannel(name, os.environ[RECORD_ENV])


def fake(settings) -> RecordingChannel:
    return _recording("fake")


def gcn_circular(settings) -> RecordingChannel:
    return _recording("gcn-circular")


def tns(settings) -> RecordingChannel:
    return _recording("tns")


def hermes(settings) -> RecordingChannel:
    return _recording("hermes")


class KillingKafkaChannel(KafkaChannel):
    def send(self, entry) -> dict:
        _kill_if("before-send", entry.key)
        receipt = super().send(entry)
        _kill_if("after-send", entry.key)
        return receipt


KAFKA_TOPIC = "outbox.kafka-test"


def kafka(settings) -> KillingKafkaChannel:
    from broker.kafka import ensure_topics
    from broker.sinks.build import our_kafka_config

    topic = settings.topic(KAFKA_TOPIC)
    return KillingKafkaChannel("kafka-test", topic, our_kafka_config(settings), timeout_s=20,
                               ensure=lambda: ensure_topics(settings, [topic], partitions=2))
