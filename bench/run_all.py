"""Run every benchmark in turn (``make bench``)."""

from bench import foundation, freshness, serving, training

if __name__ == "__main__":
    foundation.main()
    training.main()
    serving.main()
    freshness.main()
