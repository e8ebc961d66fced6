"""Run every benchmark in turn (``make bench``)."""

from bench import foundation

if __name__ == "__main__":
    foundation.main()
