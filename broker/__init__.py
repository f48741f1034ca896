"""mma-broker: a real-time multi-messenger astronomy alert broker.

The streaming core lives here: configuration, upstream sources (one module per
protocol), the normalized :class:`~broker.event.Event`, the archive, the pipeline
stages and the ``mma-broker`` command line.
"""

__version__ = "0.1.0"
