"""Canary rollouts: the pure step rules and the driver that measures, asks them and acts."""
