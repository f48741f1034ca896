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


CLI_ERROR_PREFIX = "mma-broker: error: "
"""How every error the ``mma-broker`` command prints starts (one line each)."""


def cli_error_lines(error: object) -> list[str]:
    """The lines the CLI prints on stderr for an error: ``mma-broker: error: <one line>``.

    Parameters
    ----------
    error : BaseException or str
        A :class:`BrokerError` (or message) gives one line per line of its message (a
        ``SettingsError`` has one per invalid setting); any other exception gives one
        line, its type name first.

    Returns
    -------
    list of str
        Printable: control characters escaped, each line at most 2,000 characters.
    """
    from broker.text import one_line

    if isinstance(error, BaseException) and not isinstance(error, BrokerError):
        lines = [f"{type(error).__name__}: {error}" if str(error) else type(error).__name__]
    else:
        lines = [line for line in str(error).splitlines() if line.strip()] or ["(no message)"]
    return [CLI_ERROR_PREFIX + one_line(line, 2000) for line in lines]
