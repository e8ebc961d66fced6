"""``python -m relay.cli``: the ``relay`` command."""

from relay.cli import app

if __name__ == "__main__":  # pragma: no cover, entry point
    app()
