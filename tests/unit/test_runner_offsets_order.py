"""The offsets go into the transaction while Kafka acknowledges the batch's records.

``StageRunner`` sends the consumed offsets (``send_offsets_to_transaction``: two round
trips to the coordinators) right after producing the batch's records and before waiting
for their acknowledgements (``flush``), so the two overlap instead of adding up on every
hop of the notice path (docs/publishing-latency.md). A record Kafka refuses meanwhile
puts the transaction in an abortable state and the offsets call fails with it: the
delivery report is collected, the transaction aborted and made again without the
refused output, the message it came from dead-lettered, nothing committed twice.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from tests.unit.test_runner_init import UnstableUntilInit, run_echo


class AckingProducer:
    """A transactional producer whose records are acknowledged (or refused) at ``flush``,
    as librdkafka serves delivery reports; it records its calls in ``log``."""

    def __init__(self, log: list[str], refuse: bytes | None = None) -> None:
        self.log, self.refuse = log, refuse
        self.produced: list[tuple[str, bytes]] = []
        self.commits = 0

    def init_transactions(self, timeout=None):
        self.log.append("init")

    def begin_transaction(self):
        self.log.append("begin")
        self.pending, self.unacked, self.abortable = [], [], False

    def produce(self, topic, key=None, value=None, headers=None, on_delivery=None):
        self.log.append("produce")
        self.pending.append((topic, value))
        self.unacked.append((topic, value, on_delivery))

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        self.log.append("flush")
        for topic, value, cb in self.unacked:
            if topic != "dlq" and value == self.refuse:
                self.abortable = True
                cb(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)
            else:
                cb(None, None)
        self.unacked = []
        return 0

    def send_offsets_to_transaction(self, offsets, metadata, timeout=None):
        self.log.append("send_offsets")
        if self.abortable or any(t != "dlq" and v == self.refuse for t, v, _ in self.unacked):
            # the refused record's error, as librdkafka raises it once the transaction must abort
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, txn_requires_abort=True))
        self.offsets = offsets

    def abort_transaction(self, timeout=None):
        self.log.append("abort")
        self.pending = []

    def commit_transaction(self, timeout=None):
        assert not self.unacked, "commit_transaction before every record was acknowledged (flush)"
        self.log.append("commit")
        self.commits += 1
        self.produced += self.pending
        self.consumer.commit(self.offsets)


def run(refuse: bytes | None = None) -> tuple[list[str], AckingProducer, UnstableUntilInit]:
    log: list[str] = []
    producer = AckingProducer(log, refuse)
    consumer = run_echo(producer, log)
    return [e for e in log if e != "consume"], producer, consumer


def transactions(log: list[str]) -> list[list[str]]:
    """``log`` cut into transactions: each from ``begin`` to its ``commit`` or ``abort``."""
    out: list[list[str]] = []
    for e in log:
        if e == "begin":
            out.append([])
        if out:
            out[-1].append(e)
    return out


def test_the_offsets_are_sent_before_the_records_are_acknowledged():
    log, producer, _ = run()
    txns = transactions(log)
    assert txns and all(t[-1] == "commit" for t in txns)
    for t in txns:  # produce..., offsets, then the wait for the acknowledgements, then commit
        n = t.count("produce")
        assert n >= 1 and t == ["begin", *["produce"] * n, "send_offsets", "flush", "commit"], t
    assert producer.produced == [("out", b"a"), ("out", b"b"), ("out", b"c")]


def test_a_record_refused_while_the_offsets_were_sent_dead_letters_its_message_once():
    log, producer, _ = run(refuse=b"b")
    txns = transactions(log)
    aborted = [t for t in txns if t[-1] == "abort"]
    # the offsets call failed with the refusal; the delivery report was read, the transaction aborted
    assert len(aborted) == 1 and aborted[0][-4:] == ["send_offsets", "flush", "flush", "abort"], aborted
    assert all(t[-1] == "commit" for t in txns if t is not aborted[0])
    outputs = [(t, v) for t, v in producer.produced if t == "out"]
    assert outputs == [("out", b"a"), ("out", b"c")]
    assert [t for t, _ in producer.produced].count("dlq") == 1
