"""Run every benchmark in turn (``make bench``)."""

from bench import foundation, freshness, monitoring, serving, serving_log, training

if __name__ == "__main__":
    foundation.main()
    training.main()
    serving.main()
    freshness.main()
    serving_log.main()
    monitoring.main([])
