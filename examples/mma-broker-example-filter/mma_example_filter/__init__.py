"""An example mma-broker filter plugin (docs/writing-a-filter.md)."""

__version__ = "0.1.0"
