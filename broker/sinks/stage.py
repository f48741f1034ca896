"""The sender stage ``publish``: claims due outbox entries, sends them, records the outcome.

Unlike the Kafka-driven stages (:class:`broker.pipeline.runner.StageRunner`), the
sender is driven by the database: its input is the ``outbox`` table
(:mod:`broker.sinks.outbox`). It keeps the runner's manners:

* **SIGTERM** (``stop``) ends the loop after the entry being sent (a wait between two
  tries is cut short, and the entries claimed but not begun go back to ``queued``);
* **metrics**: the stage's :class:`broker.metrics.StageMetrics` (``publish``): a
  heartbeat every round, ``messages_out`` per channel, ``dead_letters`` per outcome
  (``outbox failed``, ``outbox unknown``), batch time and size, state ``running`` /
  ``waiting`` / ``stopped`` / ``failed`` for ``/health``;
* **waiting out the database**: an infrastructure error
  (:func:`broker.archive.retry.is_infrastructure_error`) makes the loop wait with
  capped exponential backoff and go on; an outcome it could not record (the database
  went away after a send) is kept in memory and recorded first when the database is
  back, so a sent message is never sent again because its record was lost;
* **a summary** at the end (sent per channel, failed, unknown, recovered, polled);
* ``--until-caught-up``: stops once the stages it comes after (``reports``) stopped,
  nothing was due for ``idle_s`` seconds and no entry of its channels is due.

Per round (:meth:`Sender.round`):

1. **Recovery** (at start, then every ``sweep_s``): the ``sending`` entries of senders
   that are gone (:meth:`Outbox.orphans`) are given to their channel's ``recover``: a
   receipt → ``sent``; None (it did not go out) → ``queued``; a non-retryable
   :class:`ChannelError` (cannot tell: SMTP, TNS) → ``unknown``, never re-sent
   automatically; a retryable one → asked again at the next sweep.
2. **Claim** up to ``[publish] batch_size`` due entries of the channels this sender has
   (:meth:`Outbox.claim`, ``SKIP LOCKED``), and for each: ``validate`` (a ValueError →
   ``failed`` with no ``retry_at``: an invalid message is never sent), then ``send``
   with up to ``attempts_per_claim`` tries, exponential backoff with jitter in between
   (tenacity: ``wait_exponential`` + ``wait_random``), only while the error is retryable; success →
   ``sent`` with the receipt; else ``failed`` with ``retry_at`` = now + ``failed_retry_initial_s``
   × 2^(failed claims − 1) (capped at ``failed_retry_max_s``, plus jitter), or no
   ``retry_at`` once ``max_attempts`` sends were tried or the error is not retryable.
3. **Poll** the replies of ``sent`` entries whose receipt says ``pending: true`` (TNS
   bulk reports): :meth:`Channel.poll` → :meth:`Outbox.update_receipt`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy.exc as sa_exc

from broker.sinks.channels import ChannelError
from broker.sinks.outbox import Outbox, OutboxEntry
from broker.text import one_line

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL_S = 30.0
"""Delay between two polls of a pending reply when the channel names none, s."""


@dataclass
class SenderStats:
    """What the sender did (the end-of-run summary)."""

    sent: Counter = field(default_factory=Counter)
    """Entries sent, per channel."""
    failed: Counter = field(default_factory=Counter)
    """Claims that ended ``failed``, per channel."""
    invalid: int = 0
    """Entries refused by their channel's ``validate`` (never sent)."""
    tries: int = 0
    """Sends tried in all (first tries and retries)."""
    recovered_sent: int = 0
    """Orphans found sent by their channel (recorded, not sent again)."""
    requeued: int = 0
    """Orphans that demonstrably had not gone out, queued again."""
    unknown: int = 0
    """Orphans whose channel cannot tell (``unknown``)."""
    polled: int = 0
    """Replies asked for."""
    replies: int = 0
    """Replies that changed a receipt."""
    lost_claims: int = 0
    """Outcomes not recorded because another sender had taken the entry over."""

    def summary(self) -> str:
        sent = ", ".join(f"{n} {c}" for c, n in sorted(self.sent.items())) or "0"
        failed = sum(self.failed.values())
        text = f"publish: sent {sent}; failed {failed}, invalid {self.invalid}, tries {self.tries}"
        if self.recovered_sent or self.requeued or self.unknown:
            text += (f"; after a crash: {self.recovered_sent} found sent, {self.requeued} queued again, "
                     f"{self.unknown} unknown")
        if self.polled:
            text += f"; replies polled {self.polled} ({self.replies} changed)"
        return text


class _Null:
    """Metrics that do nothing (a sender built without a StageMetrics)."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **k: None


class Sender:
    """The database-driven send loop.

    Parameters
    ----------
    outbox : Outbox
    channels : dict of str to Channel
        From :func:`broker.sinks.build.build_channels`; entries of other channels are
        left alone (neither claimed nor recovered).
    settings : broker.sinks.config.PublishSettings
    metrics : broker.metrics.StageMetrics, optional
    sweep_s : float
        Interval of the recovery of other senders' orphans, s.
    sleep : callable, optional
        ``sleep(seconds, stop)``; default waits on the stop event. Injected by tests.
    """

    name = "publish"

    def __init__(self, outbox: Outbox, channels: dict[str, Any], settings: Any, *, metrics: Any = None,
                 sweep_s: float = 30.0, sleep: Callable[[float, threading.Event], None] | None = None,
                 rng: random.Random | None = None) -> None:
        self.outbox = outbox
        self.channels = channels
        self.settings = settings
        self.metrics = metrics if metrics is not None else _Null()
        self.sweep_s = sweep_s
        self._sleep = sleep or (lambda s, stop: stop.wait(s))
        self._rng = rng or random.Random()
        self.stats = SenderStats()
        self._unrecorded: list[tuple[Callable[[], bool], int]] = []
        self._last_sweep = -float("inf")
        self.stop = threading.Event()

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event, *, until_caught_up: bool = False, idle_s: float = 3.0,
            upstream_done: Callable[[], bool] = lambda: True,
            on_batch: Callable[[SenderStats], None] | None = None) -> SenderStats:
        """Send until ``stop`` (SIGTERM) or, with ``until_caught_up``, until nothing is due.

        Parameters
        ----------
        stop : threading.Event
        until_caught_up : bool
            Stop once ``upstream_done()``, nothing was sent for ``idle_s`` seconds and no
            entry of this sender's channels is due.
        on_batch : callable, optional
            Called with the statistics after each round that did something.

        Raises
        ------
        Exception
            Anything that is not an infrastructure error (a bug): the stage fails.
        """
        from broker.archive.retry import is_infrastructure_error
        from broker.kafka import Backoff, StageStopped
        from broker.pipeline.deadletter import error_text

        self.stop = stop
        backoff = Backoff(self.name, initial_s=0.5, max_s=30.0, sleep=lambda s: stop.wait(s))
        self.metrics.state("running")
        if not self.channels:
            log.warning("publish: no channel is enabled; entries wait in the outbox")
        last = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    n = self.round(stop)
                    backoff.reset()
                    self.metrics.state("running")
                except Exception as exc:
                    if not is_infrastructure_error(exc):
                        raise
                    self.metrics.state("waiting", error=one_line(error_text(exc), 300))
                    backoff.wait(f"database unavailable ({type(exc).__name__}: {one_line(str(exc), 200)}); "
                                 "the outbox will be read again", stop)
                    continue
                self.metrics.polled()
                if n:
                    last = time.monotonic()
                    if on_batch:
                        on_batch(self.stats)
                    continue
                if (until_caught_up and upstream_done() and time.monotonic() - last >= idle_s
                        and not self._unrecorded and self.outbox.due_count(channels=self.channels) == 0):
                    break
                self._idle(stop)
            self.metrics.state("stopped")
        except StageStopped as exc:
            log.info("%s", exc)
            self.metrics.state("stopped")
        except BaseException as exc:
            self.metrics.state("failed", error=one_line(error_text(exc), 300))
            raise
        return self.stats

    def _idle(self, stop: threading.Event) -> None:
        """Nothing was due: wait for a NOTIFY of a new due entry, at most ``poll_interval_s``."""
        from broker.archive.retry import is_infrastructure_error

        wait = getattr(self.outbox, "wait", None)
        if wait is None:
            stop.wait(self.settings.poll_interval_s)
            return
        try:
            wait(self.settings.poll_interval_s)
        except Exception as exc:
            if not is_infrastructure_error(exc) and not isinstance(exc, sa_exc.DBAPIError):
                raise
            stop.wait(self.settings.poll_interval_s)  # the next round waits out the database

    def close(self) -> None:
        """Release the claim lock and the channels' clients."""
        try:
            self.outbox.close()
        finally:
            for ch in self.channels.values():
                close = getattr(ch, "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception as exc:  # noqa: BLE001 - closing must not hide the run's outcome
                        log.warning("publish: closing channel %s failed: %s", ch.name, _scrub(exc))

    def round(self, stop: threading.Event | None = None) -> int:
        """One round: record what could not be recorded, recover, claim and send, poll.

        Returns
        -------
        int
            Entries handled (sent, failed, recovered, replies changed).
        """
        stop = stop or self.stop
        self._flush_unrecorded()
        n = 0
        if time.monotonic() - self._last_sweep >= self.sweep_s:
            n += self.recover()
            self._last_sweep = time.monotonic()
        t0 = time.monotonic()
        batch = self.outbox.claim(self.settings.batch_size, channels=self.channels) if self.channels else []
        for i, entry in enumerate(batch):
            if stop.is_set():  # hand the rest back, due at once
                for rest in batch[i:]:
                    self._record(lambda e=rest: self.outbox.requeue(e.id, ""), rest.id)
                break
            try:
                self.send_one(entry, stop)
            except Exception:
                # the database went away while recording: the entries not begun go back
                # to the queue first thing when it is back (none of them was sent)
                self._unrecorded += [(lambda e=rest: self.outbox.requeue(e.id, ""), rest.id) for rest in batch[i + 1:]]
                raise
            n += 1
        if batch:
            self.metrics.batch(time.monotonic() - t0, len(batch))
        n += self.poll_replies()
        return n

    # ------------------------------------------------------------------ recording
    def _record(self, mark: Callable[[], bool], entry_id: int) -> None:
        """Run ``mark`` (an Outbox.mark_*); if the database is away, keep it for later."""
        from broker.archive.retry import is_infrastructure_error

        try:
            if not mark():
                self.stats.lost_claims += 1
        except Exception as exc:
            if not is_infrastructure_error(exc):
                raise
            self._unrecorded.append((mark, entry_id))
            raise

    def _flush_unrecorded(self) -> None:
        while self._unrecorded:
            mark, _ = self._unrecorded[0]
            if not mark():
                self.stats.lost_claims += 1
            self._unrecorded.pop(0)

    # ------------------------------------------------------------------ sending
    def send_one(self, entry: OutboxEntry, stop: threading.Event | None = None) -> str:
        """Validate and send one claimed entry, with retries; record the outcome.

        Returns
        -------
        str
            ``"sent"``, ``"failed"`` or ``"invalid"``.
        """
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_when_event_set, wait_exponential, \
            wait_random

        stop = stop or self.stop
        ch = self.channels[entry.channel]
        p = self.settings
        try:
            ch.validate(entry.payload)
        except ValueError as exc:
            self.stats.invalid += 1
            self.metrics.dead_lettered("outbox invalid")
            why = _scrub(f"invalid {entry.channel} message: {exc}")
            log.error("outbox entry %s (%s): %s", entry.id, entry.key, why)
            self._record(lambda: self.outbox.mark_failed(entry.id, why, None, tries=0), entry.id)
            return "invalid"
        tries = 0

        def attempt() -> dict:
            nonlocal tries
            tries += 1
            self.stats.tries += 1
            return ch.send(entry)

        retrying = Retrying(
            stop=stop_after_attempt(p.attempts_per_claim) | stop_when_event_set(stop),
            # retry_initial_s * 2**(try - 1), capped, plus a uniform jitter of up to retry_initial_s;
            # at least what the other side asked for (an error's retry_after_s: TNS's rate limit)
            wait=_at_least_retry_after(wait_exponential(multiplier=p.retry_initial_s, max=p.retry_max_s)
                                       + wait_random(0, p.retry_initial_s)),
            retry=retry_if_exception(_retryable), sleep=lambda s: self._sleep(s, stop), reraise=True,
            before_sleep=lambda rs: log.warning("outbox entry %s (%s): try %d failed (%s); again in %.1f s",
                                                entry.id, entry.channel, rs.attempt_number,
                                                _scrub(rs.outcome.exception()), rs.upcoming_sleep))
        try:
            receipt = retrying(attempt)
        except Exception as exc:  # noqa: BLE001 - a channel's failure is the entry's, never the stage's
            retryable = _retryable(exc)
            total = entry.attempts + tries
            retry_at = self.next_retry(total) if retryable and total < p.max_attempts else None
            after = getattr(exc, "retry_after_s", None)
            if retry_at is not None and after:
                retry_at = max(retry_at, datetime.now(timezone.utc) + timedelta(seconds=float(after)))
            why = _scrub(f"{type(exc).__name__}: {exc}" if not isinstance(exc, ChannelError) else str(exc))
            log.warning("outbox entry %s (%s, %s): failed after %d tries: %s; %s", entry.id, entry.channel,
                        entry.key, tries, why,
                        f"claimed again at {retry_at:%Y-%m-%dT%H:%M:%SZ}" if retry_at else
                        "not retried automatically (mma-broker outbox retry ID)")
            self.stats.failed[entry.channel] += 1
            self.metrics.dead_lettered("outbox failed")
            self._record(lambda: self.outbox.mark_failed(entry.id, why, retry_at, tries=tries), entry.id)
            return "failed"
        if not isinstance(receipt, dict):
            receipt = {"receipt": receipt}
        self._record(lambda: self.outbox.mark_sent(entry.id, receipt, tries=tries,
                                                   poll_after_s=_poll_interval(ch)), entry.id)
        self.stats.sent[entry.channel] += 1
        self.metrics.produced(entry.channel, 1)
        log.info("outbox entry %s (%s) sent: %s", entry.id, entry.key, _receipt_text(receipt))
        return "sent"

    def next_retry(self, attempts: int, now: datetime | None = None) -> datetime:
        """When a failed entry is claimed again after ``attempts`` sends in all (UTC).

        ``failed_retry_initial_s`` × 2^(failed claims − 1), capped at ``failed_retry_max_s``,
        plus a uniform jitter of up to 10 % (so entries failed together spread out).
        """
        p = self.settings
        claims = max(1, -(-attempts // p.attempts_per_claim))
        delay = min(p.failed_retry_initial_s * 2 ** min(claims - 1, 30), p.failed_retry_max_s)
        delay += self._rng.uniform(0, 0.1 * delay)
        return (now or datetime.now(timezone.utc)) + timedelta(seconds=delay)

    # ------------------------------------------------------------------ recovery
    def recover(self) -> int:
        """Settle the ``sending`` entries of senders that are gone (and this one's leftovers).

        Returns
        -------
        int
            Entries settled (sent, queued again or unknown).
        """
        n = 0
        in_flight = [i for _, i in self._unrecorded]
        for entry in self.outbox.orphans(channels=self.channels, own_except=in_flight):
            ch = self.channels[entry.channel]
            try:
                receipt = ch.recover(entry)
            except ChannelError as exc:
                if exc.retryable:
                    log.warning("outbox entry %s (%s): recovery postponed: %s", entry.id, entry.key, _scrub(exc))
                    continue
                why = _scrub(f"a sender stopped while sending it; {exc}")
                log.error("outbox entry %s (%s) is unknown: %s; check, then `mma-broker outbox retry %s` or "
                          "`reject`", entry.id, entry.key, why, entry.id)
                self._record(lambda e=entry, w=why: self.outbox.mark_unknown(e.id, w), entry.id)
                self.stats.unknown += 1
                self.metrics.dead_lettered("outbox unknown")
                n += 1
                continue
            if receipt is not None:
                self._record(lambda e=entry, r=receipt: self.outbox.mark_sent(e.id, r, poll_after_s=_poll_interval(ch)),
                             entry.id)
                self.stats.recovered_sent += 1
                log.warning("outbox entry %s (%s): a sender stopped after sending it; found: %s", entry.id,
                            entry.key, _receipt_text(receipt))
            else:
                self._record(lambda e=entry: self.outbox.requeue(
                    e.id, f"a sender stopped before sending it; not found on {e.channel}"), entry.id)
                self.stats.requeued += 1
                log.warning("outbox entry %s (%s): a sender stopped before sending it; queued again",
                            entry.id, entry.key)
            n += 1
        return n

    # ------------------------------------------------------------------ replies
    def poll_replies(self) -> int:
        """Ask for the pending replies that are due (TNS); returns the receipts changed."""
        n = 0
        for entry in self.outbox.due_polls(self.settings.batch_size):
            ch = self.channels.get(entry.channel)
            if ch is None:
                continue
            self.stats.polled += 1
            interval = _poll_interval(ch)
            try:
                receipt = ch.poll(entry)
            except Exception as exc:  # noqa: BLE001 - asked again at the next poll
                log.warning("outbox entry %s (%s): reply not available: %s", entry.id, entry.key, _scrub(exc))
                receipt = None
            if receipt is None:  # nothing new: ask again later
                self.outbox.update_receipt(entry.id, entry.receipt or {"pending": True}, poll_after_s=interval)
                continue
            self.outbox.update_receipt(entry.id, receipt, poll_after_s=interval)
            self.stats.replies += 1
            n += 1
            log.info("outbox entry %s (%s): reply %s", entry.id, entry.key, _receipt_text(receipt))
        return n


def _at_least_retry_after(wait: Callable[[Any], float]) -> Callable[[Any], float]:
    """A tenacity wait that is never shorter than the failed try's ``retry_after_s``."""

    def w(retry_state: Any) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
        return max(wait(retry_state), float(getattr(exc, "retry_after_s", 0) or 0))

    return w


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, ChannelError):
        return exc.retryable
    return not isinstance(exc, (ValueError, TypeError))


def _poll_interval(ch: Any) -> float:
    return float(getattr(ch, "poll_interval_s", DEFAULT_POLL_INTERVAL_S))


def _scrub(text: object) -> str:
    from broker.config import scrub_secrets

    return scrub_secrets(one_line(str(text), 2000))


def _receipt_text(receipt: dict) -> str:
    return one_line(", ".join(f"{k}={v}" for k, v in receipt.items()), 300)


def stages(app: Any, *, until_caught_up: bool = False) -> list[Any]:
    """The sender loop (``mma_broker.stages`` entry ``publish``); empty when ``[publish] enabled = false``.

    Reads the archive's ``outbox`` table (no input topic); sends through the channels
    :func:`broker.sinks.build.build_channels` makes from ``[publish]``. Comes after the
    ``reports`` loop (followup/reports), which writes the entries.

    Raises
    ------
    broker.plugins.PluginError
        A channel that fails to load or start.
    """
    from broker.app import open_archive
    from broker.sinks.build import build_channels
    from broker.stages import StageSpec

    s = app.settings
    p = getattr(s, "publish", None)
    if p is None or not getattr(p, "enabled", False):
        return []
    channels = build_channels(s)
    archive = open_archive(s)
    outbox = Outbox(archive.engine, channels=channels, approval=p.requires_approval)
    sender = Sender(outbox, channels, p, metrics=app.metrics.stage("publish"))
    log.info("publish: channels %s", ", ".join(sorted(channels)) or "none")

    def close() -> None:
        try:
            sender.close()
        finally:
            archive.close()

    return [StageSpec("publish", sender, inputs=[], outputs=sorted(channels), after=["reports"],
                      summary=lambda: [sender.stats.summary()], close=close)]
