"""Publishing: the outbox, the channels that send its entries, the sender stage ``publish``.

* :mod:`broker.sinks.outbox` — the ``outbox`` table (:class:`~broker.sinks.outbox.Outbox`):
  every outgoing message is written there under an idempotency key before it is sent.
* :mod:`broker.sinks.channels` — the channel contract (validate, send, recover, poll)
  and a Kafka channel.
* :mod:`broker.sinks.build` — the channels by name, built from ``[publish]``.
* :mod:`broker.sinks.stage` — the sender loop (``mma-broker run --stage publish``).
* :mod:`broker.sinks.cli` — ``mma-broker outbox list|show|approve|reject|retry``.
* :mod:`broker.sinks.web` — ``mma-broker serve`` (artifacts by sha256).
* :mod:`broker.sinks.config` — the ``[publish]`` settings.

The core never imports ``followup/`` or ``filters/``: the report builders live in
``followup/reports/`` and write outbox entries; their channels register under the
entry-point group ``mma_broker.channels``. See docs/publishing.md.
"""
