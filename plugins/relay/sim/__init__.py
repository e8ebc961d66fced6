"""Simulated production: replaying orders against the endpoint with delayed labels, and the demo."""
