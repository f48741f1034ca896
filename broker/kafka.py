"""Clients for our own Kafka cluster (topics ``mma.*`` and, locally, replayed upstreams).

Thin factories over confluent-kafka that add defaults and step aside for anything the
user set in ``[kafka] config`` (the gcn-kafka idea). Credentials never pass through
here as literals: they come from settings (SecretStr) and are not logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import confluent_kafka
from confluent_kafka.admin import AdminClient, NewTopic

from broker.config import Settings
from broker.errors import BrokerError

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""IGWN alerts carry their sky map (up to a few MB); deploy/kafka allows 16 MiB."""


LIBRDKAFKA_LOGGER = "broker.librdkafka"
"""librdkafka's own log lines go to this Python logger (the CLI shows its warnings
only with --verbose: during start-up they are routine retries)."""


def client_config(settings: Settings, **defaults: Any) -> dict[str, Any]:
    """librdkafka config for our cluster: defaults, then the user's ``[kafka] config``."""
    cfg: dict[str, Any] = {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "logger": logging.getLogger(LIBRDKAFKA_LOGGER),
        **defaults,
    }
    cfg.update(settings.kafka.config)
    return cfg


def make_producer(settings: Settings, **overrides: Any) -> confluent_kafka.Producer:
    """An idempotent producer (acks=all) sized for sky-map-carrying alerts."""
    cfg = client_config(
        settings,
        **{
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.max.bytes": MAX_MESSAGE_BYTES,
            "batch.size": 1_000_000,
            "queue.buffering.max.kbytes": 131_072,
        },
    )
    cfg.update(overrides)
    return confluent_kafka.Producer(cfg)


class InstanceSlot:
    """This process's claim on one transactional-id slot of a stage loop (see :func:`claim_instance`)."""

    def __init__(self, ident: str, handle: Any = None) -> None:
        self.id = ident
        self._handle = handle

    def release(self) -> None:
        """Give the slot back (also done by the OS when the process dies)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def claim_instance(settings: Settings, stage: str, max_slots: int = 4096) -> InstanceSlot:
    """Claim the lowest free instance slot of ``stage`` on this host.

    The ``transactional.id`` of a loop must be unique among live producers (a second
    producer with the same id fences the first) and should be the same after a
    restart (a restarted loop then aborts its crashed predecessor's open transaction
    at once, instead of ``read_committed`` readers waiting for the transaction
    timeout). Slot *n* is an exclusive ``flock`` on ``<home>/txn/<stage>.<n>.lock``,
    released by the OS when the process dies: the first process on a host gets
    ``<hostname>.0`` after every restart, a second concurrent one ``<hostname>.1``.
    ``[kafka] instance_id`` overrides it (then keep it unique yourself).

    Raises
    ------
    BrokerError
        When the lock folder cannot be written, or all ``max_slots`` are taken.
    """
    import fcntl
    import socket

    if settings.kafka.instance_id:
        return InstanceSlot(settings.kafka.instance_id)
    folder = settings.home / "txn"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        for n in range(max_slots):
            fh = open(folder / f"{stage}.{n}.lock", "a+")  # noqa: SIM115 - held for the process's life
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            return InstanceSlot(f"{host}.{n}", fh)
    except OSError as exc:
        raise BrokerError(f"cannot claim a transactional id slot under {folder}: {exc.strerror}") from None
    raise BrokerError(f"all {max_slots} transactional id slots of {stage} under {folder} are taken")


def transactional_id(settings: Settings, stage: str, instance: str) -> str:
    """The ``transactional.id`` of one stage loop: ``<group_id>.<stage>.<instance>``."""
    return f"{settings.group_id}.{stage}.{instance}"


def stage_producer(settings: Settings, stage: str, slot: InstanceSlot | None = None) -> confluent_kafka.Producer:
    """The producer of one stage loop: transactional (exactly once) unless
    ``[kafka] transactions = false`` (at least once). ``slot`` (:func:`claim_instance`)
    makes its transactional id."""
    if not settings.kafka.transactions:
        return make_producer(settings)
    if slot is None:
        raise BrokerError(f"{stage}: a transactional producer needs an instance slot (claim_instance)")
    return make_producer(settings, **{"transactional.id": transactional_id(settings, stage, slot.id),
                                      "transaction.timeout.ms": 60_000})


def make_consumer(settings: Settings, group_id: str, **overrides: Any) -> confluent_kafka.Consumer:
    """A consumer of our cluster with manual commits (offsets follow durable output)."""
    cfg = client_config(
        settings,
        **{
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 4 * MAX_MESSAGE_BYTES,
            "max.partition.fetch.bytes": MAX_MESSAGE_BYTES,
            "topic.metadata.refresh.interval.ms": 5000,
            "partition.assignment.strategy": "cooperative-sticky",
            # never see records of aborted or open transactions (also librdkafka's default)
            "isolation.level": "read_committed",
        },
    )
    cfg.update(overrides)
    return confluent_kafka.Consumer(cfg)


def ensure_topics(settings: Settings, names: Iterable[str], partitions: int = 4, timeout_s: float = 30.0,
                  *, admin: Any = None) -> None:
    """Create our topics if missing (idempotent; an existing topic is left as it is), and
    return only once every partition of each of ``names`` takes writes (:func:`wait_writable`).

    Kafka answers CreateTopics when its controller has recorded the topic; the broker
    that leads a partition creates its log afterwards (seconds later on a loaded
    broker), and until then answers a produce with NOT_LEADER_OR_FOLLOWER. An
    idempotent producer (ours, librdkafka) that sends into that window loses messages
    with a *successful* delivery report: its first batch is refused, a later batch
    in flight reaches the partition once it is online, the broker (with no state yet
    for that producer there) accepts it as the first, and librdkafka takes the
    refused batch as "implicitly acknowledged" (librdkafka debug: ``IMPLICITACK``;
    confluent-kafka-go issue 921). Waiting until the partitions are writable closes
    that window for every topic we create and then produce into at once (``mma-broker
    replay``, a stage's outputs, ``followup request``).

    Parameters
    ----------
    settings : Settings
    names : iterable of str
        Full topic names (prefix included).
    partitions : int
        Partitions of a topic created here.
    timeout_s : float
        Longest wait for Kafka to answer, and again for the partitions to be writable, s.
    admin : confluent_kafka.admin.AdminClient, optional
        Default: a new one on ``settings``' cluster (tests pass a fake).

    Replicas: a topic created here has ``[kafka] replication_factor`` replicas (1 by
    default; 3 on a three-broker cluster, whose ``min.insync.replicas`` then applies).

    Retention: a topic named in ``[kafka] retention_ms`` is created with that
    ``retention.ms``, and an existing one gets it when its value differs
    (:func:`apply_retention`).

    Raises
    ------
    BrokerError
        If Kafka does not answer, refuses to create a topic, or a partition is still
        not writable after ``timeout_s``.
    """
    names = list(dict.fromkeys(names))
    admin = admin if admin is not None else AdminClient(client_config(settings))
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except confluent_kafka.KafkaException as exc:
        raise BrokerError(f"Kafka at {settings.kafka.bootstrap_servers} did not answer: {exc}") from None
    retention = topic_retention(settings, names)
    todo = [NewTopic(n, num_partitions=partitions, replication_factor=settings.kafka.replication_factor,
                     config={"retention.ms": str(retention[n])} if n in retention else {})
            for n in names if n not in existing]
    apply_retention(admin, {n: ms for n, ms in retention.items() if n in existing}, timeout_s)
    if todo:
        for name, fut in admin.create_topics(todo, request_timeout=timeout_s).items():
            try:
                fut.result()
            except confluent_kafka.KafkaException as exc:
                if exc.args[0].code() != confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BrokerError(f"cannot create topic {name}: {exc}") from None
    wait_writable(admin, names, timeout_s)


def topic_retention(settings: Settings, names: Iterable[str]) -> dict[str, int]:
    """``retention.ms`` configured (``[kafka] retention_ms``, keys without the topic
    prefix) for each of the full topic ``names`` that has one."""
    prefix = settings.kafka.topic_prefix
    conf = settings.kafka.retention_ms
    out = {}
    for n in names:
        short = n[len(prefix):] if prefix and n.startswith(prefix) else n
        if short in conf:
            out[n] = conf[short]
    return out


def apply_retention(admin: Any, retention: dict[str, int], timeout_s: float = 30.0) -> list[str]:
    """Set ``retention.ms`` on existing topics whose value differs; return the topics changed.

    Uses DescribeConfigs, then IncrementalAlterConfigs (SET) for those that differ, so
    a restart changes nothing when the value is already there. A refusal (no AlterConfigs
    permission on a cluster with ACLs, an old Kafka) is one warning per topic: the stage
    runs on with the topic as it is.
    """
    if not retention:
        return []
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    changed = []
    resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in sorted(retention)]
    try:
        described = admin.describe_configs(resources, request_timeout=timeout_s)
    except (confluent_kafka.KafkaException, NotImplementedError, AttributeError) as exc:
        log.warning("cannot read the retention of %s: %s", ", ".join(sorted(retention)), exc)
        return []
    todo = []
    for res, fut in described.items():
        try:
            entry = fut.result().get("retention.ms")
        except confluent_kafka.KafkaException as exc:
            log.warning("cannot read the retention of topic %s: %s", res.name, exc)
            continue
        want = str(retention[res.name])
        if entry is None or entry.value != want:
            todo.append(ConfigResource(ConfigResource.Type.TOPIC, res.name, incremental_configs=[
                ConfigEntry("retention.ms", want, incremental_operation=AlterConfigOpType.SET)]))
    if not todo:
        return []
    for res, fut in admin.incremental_alter_configs(todo, request_timeout=timeout_s).items():
        try:
            fut.result()
            changed.append(res.name)
            log.info("topic %s: retention.ms set to %s", res.name, retention[res.name])
        except confluent_kafka.KafkaException as exc:
            log.warning("cannot set retention.ms of topic %s (it stays as it is): %s", res.name, exc)
    return changed


NOT_WRITABLE_YET = frozenset({
    confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION,  # NOT_LEADER_OR_FOLLOWER: log not created yet
    confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE,
    confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART,
    confluent_kafka.KafkaError.REPLICA_NOT_AVAILABLE,
    # the client's metadata has a newer leader epoch than the broker has applied yet
    confluent_kafka.KafkaError.UNKNOWN_LEADER_EPOCH,
    confluent_kafka.KafkaError.FENCED_LEADER_EPOCH,
    confluent_kafka.KafkaError.OFFSET_NOT_AVAILABLE,
    confluent_kafka.KafkaError._NOENT,  # the admin client's metadata does not hold the topic yet
    confluent_kafka.KafkaError._UNKNOWN_TOPIC,
    confluent_kafka.KafkaError._UNKNOWN_PARTITION,
    confluent_kafka.KafkaError._TIMED_OUT,
    confluent_kafka.KafkaError.REQUEST_TIMED_OUT,
})
"""ListOffsets errors that mean "this partition is not online on its leader yet"."""


def wait_writable(admin: Any, names: Sequence[str], timeout_s: float = 30.0, *, poll_s: float = 0.1,
                  clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    """Return once every partition of each topic in ``names`` is online on its leader.

    A partition is online when its leader answers a ListOffsets request for it (the
    broker serves it and a produce from the same checks: the partition must be hosted
    and led there), so after this returns a produce is not refused for the partition
    not being there yet (see :func:`ensure_topics` for what such a refusal costs).
    One metadata request and one ListOffsets request per round, a round every
    ``poll_s`` s.

    Raises
    ------
    BrokerError
        When a partition is still not online after ``timeout_s`` (the message names up
        to five), or ListOffsets fails for another reason than "not online yet" (e.g.
        not authorized).
    """
    deadline = clock() + timeout_s
    while True:
        pending = _not_writable(admin, names, timeout_s)
        if not pending:
            return
        if clock() >= deadline:
            raise BrokerError(f"{len(pending)} topic partition(s) still not writable after {timeout_s:.0f} s, "
                              f"first: {', '.join(pending[:5])}")
        sleep(poll_s)


def _not_writable(admin: Any, names: Sequence[str], timeout_s: float) -> list[str]:
    """What of ``names`` does not take writes yet, as readable lines (empty: all do)."""
    from confluent_kafka.admin import OffsetSpec

    try:
        topics = admin.list_topics(timeout=timeout_s).topics
    except confluent_kafka.KafkaException as exc:
        return [f"metadata ({exc.args[0].str()})"]
    pending: list[str] = []
    parts = []
    for name in names:
        meta = topics.get(name)
        if meta is None or meta.error is not None or not meta.partitions:
            why = "not in the metadata yet" if meta is None or meta.error is None else meta.error.str()
            pending.append(f"{name} ({why})")
            continue
        parts += [confluent_kafka.TopicPartition(name, p) for p in sorted(meta.partitions)]
    if not parts:
        return pending
    try:
        futures = admin.list_offsets({tp: OffsetSpec.latest() for tp in parts}, request_timeout=timeout_s)
    except confluent_kafka.KafkaException as exc:
        return pending + [f"ListOffsets ({exc.args[0].str()})"]
    for tp, fut in futures.items():
        try:
            fut.result()
        except confluent_kafka.KafkaException as exc:
            err = exc.args[0]
            if err.code() not in NOT_WRITABLE_YET:
                raise BrokerError(f"cannot read the end offset of {tp.topic} [{tp.partition}]: {err.str()}") from None
            pending.append(f"{tp.topic} [{tp.partition}] ({err.str()})")
    return pending


class DeliveryTracker:
    """Collects produce() delivery reports so a stage knows its output is durable.

    Use :meth:`callback` as ``on_delivery``; after ``producer.flush()`` call
    :meth:`raise_if_failed` before committing input offsets.
    """

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.delivered = 0

    def callback(self, err: confluent_kafka.KafkaError | None, msg: confluent_kafka.Message) -> None:
        if err is not None:
            self.failed.append(f"{msg.topic()}: {err}")
        else:
            self.delivered += 1

    def raise_if_failed(self) -> None:
        if self.failed:
            first, n = self.failed[0], len(self.failed)
            self.failed = []
            raise BrokerError(f"{n} message(s) not delivered, first: {first}")


def flush_or_raise(producer: confluent_kafka.Producer, tracker: DeliveryTracker, timeout_s: float = 60.0) -> None:
    """Wait until every produced message is acknowledged, or raise (for one-shot tools).

    Stages use :func:`publish`, which waits out a Kafka outage instead.

    Raises
    ------
    BrokerError
        On a delivery failure or when messages are still queued after ``timeout_s``.
    """
    remaining = producer.flush(timeout_s)
    if remaining:
        raise BrokerError(f"{remaining} message(s) still queued after {timeout_s:.0f} s (is Kafka up?)")
    tracker.raise_if_failed()


class StageStopped(BrokerError):
    """The stage was asked to stop while it waited for Kafka; nothing was committed."""


PERMANENT_DELIVERY_ERRORS = frozenset({
    confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE,
    confluent_kafka.KafkaError.RECORD_LIST_TOO_LARGE,
    confluent_kafka.KafkaError.INVALID_RECORD,
    confluent_kafka.KafkaError.INVALID_MSG,
    confluent_kafka.KafkaError.INVALID_MSG_SIZE,
    confluent_kafka.KafkaError._INVALID_ARG,
})
"""Delivery errors that depend on the message itself: sending it again cannot succeed.
Every other error (timeouts, no leader, transport, all brokers down) is Kafka being
away or busy, and is waited out."""


@dataclass
class Outgoing:
    """One record a stage wants on a topic; ``tag`` is the caller's handle on its origin."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    tag: Any = None


@dataclass
class Backoff:
    """Capped exponential backoff that logs what it is waiting for."""

    name: str
    initial_s: float = 0.5
    max_s: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    delay: float = 0.0
    on_wait: Callable[[str], None] | None = None
    """Called with what is waited for (the runner marks its stage ``waiting`` in the
    health endpoint: a loop waiting out Kafka or the database is alive)."""

    def wait(self, what: str, stop: Any = None) -> None:
        self.delay = self.initial_s if self.delay == 0 else min(self.delay * 2, self.max_s)
        log.warning("%s: %s; waiting %.1f s", self.name, what, self.delay)
        if self.on_wait is not None:
            self.on_wait(what)
        if stop is not None and stop.is_set():
            raise StageStopped(f"{self.name}: stopped while {what}")
        self.sleep(self.delay)

    def reset(self) -> None:
        self.delay = 0.0


def publish(producer: confluent_kafka.Producer, records: Sequence[Outgoing], *, name: str,
            stop: Any = None, flush_s: float = 10.0, backoff: Backoff | None = None,
            ) -> list[tuple[Outgoing, str]]:
    """Produce ``records`` and wait until Kafka acknowledged each, however long it is away.

    A record refused for what it is (:data:`PERMANENT_DELIVERY_ERRORS`, e.g. larger than
    the topic's ``max.message.bytes``) is returned with the reason; all others are
    produced again with capped exponential backoff until acknowledged. While Kafka is
    unreachable the stage therefore pauses (a warning every ``flush_s``) and resumes
    when it returns.

    Parameters
    ----------
    producer : confluent_kafka.Producer
    records : sequence of Outgoing
    name : str
        Stage name for the log.
    stop : threading.Event, optional
        When set during a wait, :class:`StageStopped` is raised (no offsets are
        committed, the batch will be consumed again).
    flush_s : float
        How long one ``flush()`` waits before the wait is logged, s.

    Returns
    -------
    list of (Outgoing, str)
        The records Kafka refused permanently, with the reason.

    Raises
    ------
    StageStopped
        If ``stop`` was set while waiting.
    """
    backoff = backoff or Backoff(name)
    refused: list[tuple[Outgoing, str]] = []
    pending = list(records)
    while pending:
        failed: list[tuple[Outgoing, confluent_kafka.KafkaError]] = []
        for rec in pending:
            _produce(producer, rec, failed, refused, name, stop, backoff)
        start = time.monotonic()
        while (remaining := producer.flush(flush_s)) > 0:
            if stop is not None and stop.is_set():
                raise StageStopped(f"{name}: stopped with {remaining} message(s) unacknowledged")
            log.warning("%s: waiting for Kafka: %d message(s) unacknowledged for %.0f s",
                        name, remaining, time.monotonic() - start)
        pending = []
        for rec, err in failed:
            if err.code() in PERMANENT_DELIVERY_ERRORS:
                refused.append((rec, f"Kafka refused the record for {rec.topic}: {err.str()}"))
            else:
                pending.append(rec)
        if pending:
            backoff.wait(f"{len(pending)} record(s) not delivered ({failed[0][1].str()}), producing them again", stop)
    backoff.reset()
    return refused


def _produce(producer: confluent_kafka.Producer, rec: Outgoing, failed: list, refused: list, name: str,
             stop: Any, backoff: Backoff) -> None:
    def on_delivery(err: confluent_kafka.KafkaError | None, _msg: Any, rec: Outgoing = rec) -> None:
        if err is not None:
            failed.append((rec, err))

    while True:
        try:
            producer.produce(rec.topic, key=rec.key, value=rec.value, headers=rec.headers, on_delivery=on_delivery)
            producer.poll(0)
            return
        except BufferError:  # local queue full: let deliveries drain
            producer.poll(1.0)
            if stop is not None and stop.is_set():
                raise StageStopped(f"{name}: stopped while the producer queue was full") from None
        except confluent_kafka.KafkaException as exc:
            err = exc.args[0]
            if err.code() in PERMANENT_DELIVERY_ERRORS:
                refused.append((rec, f"Kafka refused the record for {rec.topic}: {err.str()}"))
                return
            backoff.wait(f"produce to {rec.topic} failed ({err.str()})", stop)


# Commit errors that only mean "these partitions moved to another worker during a
# rebalance": the batch is already durable downstream; the new owner may redeliver
# it and the idempotent writes ignore what they already have.
REBALANCE_COMMIT_ERRORS = {
    confluent_kafka.KafkaError.ILLEGAL_GENERATION,
    confluent_kafka.KafkaError.UNKNOWN_MEMBER_ID,
    confluent_kafka.KafkaError.REBALANCE_IN_PROGRESS,
    confluent_kafka.KafkaError._ASSIGNMENT_LOST,
    confluent_kafka.KafkaError._NO_OFFSET,
}


def commit_offsets(consumer: confluent_kafka.Consumer, offsets: dict[tuple[str, int], int], name: str,
                   *, stop: Any = None, backoff: Backoff | None = None) -> bool:
    """Commit ``{(topic, partition): next offset}`` synchronously, waiting out Kafka.

    Returns False (and logs) when the partitions moved in a rebalance, which is not
    an error for an idempotent stage. Any other failure (Kafka away, coordinator
    moving) is retried with capped exponential backoff until it succeeds.

    Raises
    ------
    StageStopped
        If ``stop`` is set while waiting (the batch will be consumed again).
    """
    backoff = backoff or Backoff(name)
    tps = [confluent_kafka.TopicPartition(t, p, o) for (t, p), o in offsets.items()]
    while True:
        try:
            consumer.commit(offsets=tps, asynchronous=False)
        except confluent_kafka.KafkaException as exc:
            code = exc.args[0].code()
            if code in REBALANCE_COMMIT_ERRORS:
                log.warning("%s: offsets not committed, partitions moved in a rebalance (%s); the batch is "
                            "durable and may be redelivered to their new owner", name, exc.args[0].str())
                return False
            backoff.wait(f"offset commit failed ({exc.args[0].str()})", stop)
            continue
        backoff.reset()
        return True


def _subscribed(topic: str, subscription: Iterable[str]) -> bool:
    import re

    return any(re.search(s, topic) if s.startswith("^") else s == topic for s in subscription)


def caught_up(consumer: confluent_kafka.Consumer, admin: AdminClient | None = None,
              subscription: Iterable[str] | None = None) -> bool:
    """:func:`group_caught_up`, but False (logged) while Kafka does not answer.

    Right after an outage the group coordinator may time out ("Failed to get
    committed offsets: Local: Timed out"): that means "not known yet", not an error.
    """
    try:
        return group_caught_up(consumer, admin, subscription)
    except (confluent_kafka.KafkaException, KeyError) as exc:
        log.warning("caught-up check: Kafka did not answer (%s); will check again", exc)
        return False


def group_caught_up(consumer: confluent_kafka.Consumer, admin: AdminClient | None = None,
                    subscription: Iterable[str] | None = None) -> bool:
    """True when the consumer's group has committed every partition it reads up to its end.

    With ``admin`` and ``subscription`` the check covers every partition of every
    existing topic the subscription matches, whichever member of the group owns it:
    a worker that got no partition (more workers than partitions, or a rebalance in
    progress) waits until the group is done, and a subscription matching no topic has
    nothing to wait for. Without them, only the partitions assigned to this consumer
    count, and no assignment means "not yet". End offsets come in one ListOffsets
    request on the admin client's own connection; through the consumer each request
    would queue behind its long-poll fetch (~0.5 s apiece).
    """
    from confluent_kafka.admin import OffsetSpec

    if admin is not None and subscription is not None:
        subscription = list(subscription)
        topics = admin.list_topics(timeout=10).topics
        parts = [confluent_kafka.TopicPartition(name, p) for name, meta in topics.items()
                 if _subscribed(name, subscription) for p in meta.partitions]
        if not parts:
            return True
    else:
        parts = consumer.assignment()
        if not parts:
            return False
    committed = consumer.committed(parts, timeout=10)
    if admin is None:
        ends = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
                for tp in committed}
    else:
        futures = admin.list_offsets(
            {confluent_kafka.TopicPartition(tp.topic, tp.partition): OffsetSpec.latest() for tp in committed},
            request_timeout=10,
        )
        ends = {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}
    return all(not (ends[(tp.topic, tp.partition)] > 0 and tp.offset < ends[(tp.topic, tp.partition)])
               for tp in committed)
