"""The ETA endpoint: request schemas, traffic split, answers, serving log, live metrics, control."""
