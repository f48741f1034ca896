"""The web interface of issue 13 (``mma-broker serve``): the read JSON API under ``/api``.

Kept apart from :mod:`broker.sinks` (the publishing outbox and the artifact routes of
issue 11): the pages, the live stream and the approval desk of issue 13 will grow here,
on top of :mod:`broker.web.api`. :func:`broker.sinks.web.make_app` mounts it.
"""
