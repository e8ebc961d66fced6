"""Watching production: drift and live quality of what the endpoint served, and the verdict."""
