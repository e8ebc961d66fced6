"""Synthetic delivery orders: the ETA world, daily batches and production-like scenarios."""
