"""Judging a model offline: holdout metrics and slices, the HTML report, the champion/challenger gate."""
