"""Exceptions a user can act on: each names what was wrong and where."""


class BrokerError(Exception):
    """Base class of every error mma-broker raises on purpose."""


class DecodeError(BrokerError):
    """An alert could not be decoded or normalized.

    The message is one line, says what was wrong and, where known, where (file name
    or topic/partition/offset). It is what lands in the dead-letter topic's
    ``reason`` header, so it must never contain credentials.

    Whatever a decoder puts in it (an ivorn, a mission, a superevent id quoted from
    the alert), the message is made one printable line of at most
    :data:`MAX_REASON_CHARS` characters here: control and bidi characters escaped
    (:func:`broker.text.one_line`), so no alert can write escapes into a log or a
    terminal through its own error.
    """

    MAX_REASON_CHARS = 1000

    def __init__(self, message: object = "", *args: object) -> None:
        from broker.text import one_line

        super().__init__(one_line(message, self.MAX_REASON_CHARS), *args)
