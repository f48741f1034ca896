"""Exceptions a user can act on: each names what was wrong and where."""


class BrokerError(Exception):
    """Base class of every error mma-broker raises on purpose."""


class DecodeError(BrokerError):
    """An alert could not be decoded or normalized.

    The message is one line, says what was wrong and, where known, where (file name
    or topic/partition/offset). It is what lands in the dead-letter topic's
    ``reason`` header, so it must never contain credentials.
    """
