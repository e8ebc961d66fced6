"""The ETA endpoint: request schemas, the traffic split, answers, the serving log, live metrics, control."""
