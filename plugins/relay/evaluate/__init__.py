"""Judging a model offline: holdout metrics and slices, the report, the champion/challenger gate."""
