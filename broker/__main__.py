"""``python -m broker`` is the same as the ``mma-broker`` command."""

from broker.cli import main

if __name__ == "__main__":
    main()
