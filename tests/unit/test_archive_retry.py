"""Unit tests of the transient-error retry loop of the archive."""

from __future__ import annotations

import logging

import psycopg
import pytest
import sqlalchemy.exc as sa_exc

from broker.archive.retry import describe, is_transient, retry_transient


def _operational(msg: str) -> sa_exc.OperationalError:
    return sa_exc.OperationalError("INSERT INTO events VALUES (...)", {"p": 1}, psycopg.OperationalError(msg))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s

    def __call__(self) -> float:
        return self.now


def test_retries_until_success_with_capped_backoff(caplog) -> None:
    clock = FakeClock()
    failures = iter([_operational("terminating connection due to administrator command")] * 5)

    def fn() -> str:
        exc = next(failures, None)
        if exc is not None:
            raise exc
        return "done"

    with caplog.at_level(logging.WARNING, logger="broker.archive.retry"):
        out = retry_transient(fn, what="write", initial_delay_s=0.5, max_delay_s=2.0, sleep=clock.sleep, clock=clock)
    assert out == "done"
    assert clock.sleeps == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert len(caplog.records) == 5
    assert "administrator command" in caplog.records[0].getMessage()
    assert "INSERT" not in caplog.records[0].getMessage()  # no SQL nor parameters in logs


def test_deadline_reraises_last_error() -> None:
    clock = FakeClock()

    def fn() -> None:
        raise _operational("connection refused")

    with pytest.raises(sa_exc.OperationalError):
        retry_transient(fn, what="write", deadline_s=3.0, initial_delay_s=1.0, sleep=clock.sleep, clock=clock)
    assert clock.sleeps == [1.0, 2.0]  # the next wait (4 s) would pass the 3 s deadline


def test_non_transient_error_raised_at_once() -> None:
    clock = FakeClock()
    err = sa_exc.IntegrityError("INSERT", {}, psycopg.IntegrityError("duplicate key"))

    def fn() -> None:
        raise err

    with pytest.raises(sa_exc.IntegrityError):
        retry_transient(fn, what="write", sleep=clock.sleep, clock=clock)
    assert clock.sleeps == []


@pytest.mark.parametrize(
    "exc, transient",
    [
        (_operational("server closed the connection unexpectedly"), True),
        (sa_exc.DBAPIError("x", {}, psycopg.InterfaceError("gone"), connection_invalidated=True), True),
        (sa_exc.ProgrammingError("x", {}, psycopg.ProgrammingError("syntax error")), False),
    ],
)
def test_is_transient(exc: Exception, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_describe_masks_secret() -> None:
    exc = _operational('password authentication failed for user "broker" (password s3cr3t)')
    text = describe(exc, secret="s3cr3t")
    assert "s3cr3t" not in text
    assert text.startswith("OperationalError: password authentication failed")
