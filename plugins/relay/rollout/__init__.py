"""Rollouts: a persisted record, the pure judgement of a tick, and the controller that acts."""
