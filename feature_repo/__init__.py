"""Relay's Feast definitions, split by kind and built from the feature catalog.

Nothing is built at import: :func:`feature_repo.definitions.definitions` builds every object
from the paths the library passes (``relay features apply``), so this package reads no settings
and touches no disk.
"""
