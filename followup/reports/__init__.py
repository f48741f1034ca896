"""Report builders: follow-up results, coincidences and optical candidates as messages.

``hermes`` (HERMES messages), ``gcn`` (GCN notices and Circular drafts), ``tns`` (TNS
AT reports), and the ``reports`` stage (:mod:`followup.reports.stage`) that turns the
records of ``mma.followup.results``, ``mma.coincidences`` and
``mma.filter.optical-counterpart`` into outbox entries (:mod:`broker.sinks.outbox`).
"""
