"""Relay: from raw data to a live, monitored ETA endpoint."""

__version__ = "0.1.0"
