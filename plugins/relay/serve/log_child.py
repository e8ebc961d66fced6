"""The serving log's writes, in a child process of the replica (``RELAY_SERVING__LOG_WRITER``).

Tabulating a batch of records and writing its Parquet holds the GIL for about 17 ms per 1,000
records; in the replica's own writer thread that time is taken from the requests, which need the
GIL back after every step that releases it (32-order requests in process: p99 29.5 ms with the
log written there, 8.7 ms without it; README, fast serving). :class:`ChildWriter` hands each
batch to a child Python over a pipe instead and waits for its answer with the GIL released. The
buffer, its retries, its counts and the log's at-least-once delivery stay with
:class:`relay.serve.log.ServingLogWriter`; a child that dies fails that one write (retried, by
a new child), and a child whose parent died reads the end of its pipe and exits.

A plain ``subprocess`` and pickles on its stdin and stdout, not ``multiprocessing``: its spawn
start re-runs the parent's main script, which in a user's script without a main guard would
run the script again.

Run as ``python -m relay.serve.log_child``: reads the lake's settings, then batches of rows,
answering each with :func:`append_rows`'s result.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import pickle
import subprocess
import sys
from typing import IO, Any, cast

import pandas as pd

from relay.data.lake import SERVING_LOG, Lake
from relay.errors import RelayError
from relay.serve.log_schema import to_frame


class ChildWriter:
    """One child process that writes batches of serving-log rows to ``settings``' lake."""

    def __init__(self, settings: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._to: IO[bytes] = self.proc.stdin
        self._from: IO[bytes] = self.proc.stdout
        _send(self._to, settings)

    def append(self, rows: list[dict[str, Any]]) -> tuple[int, list[int], Exception | None]:
        """Write ``rows`` in the child: (written, positions not written, the first error).

        Raises:
            ChildGone: the child died (its pipe closed); nothing is known written.
            Untabulated: the rows do not make a frame.
        """
        try:  # whole, before any byte goes: a half-sent pickle would corrupt the stream
            data = pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise Untabulated(f"cannot hand the records over: {type(exc).__name__}: {exc}") from exc
        try:
            self._to.write(data)
            self._to.flush()
            kind, value = pickle.load(self._from)  # noqa: S301 (our own child's answer)
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            raise ChildGone(f"the serving log's writer process ended ({exc!r})") from exc
        if kind == "untabulated":
            raise Untabulated(value)
        written, failed, error = value
        return written, failed, None if error is None else RuntimeError(error)

    def close(self, timeout: float = 10.0) -> None:
        """End the child (it exits at the end of its input) and wait for it."""
        with contextlib.suppress(OSError):
            self._to.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._from.close()


class ChildGone(RuntimeError):
    """The serving log's writer process is gone: the write is retried by a new one."""


def _send(to: IO[bytes], value: Any) -> None:
    pickle.dump(value, to, protocol=pickle.HIGHEST_PROTOCOL)
    to.flush()


def main() -> None:
    """The child: the lake from the first pickle, then one answer per batch until EOF."""
    source, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed must not corrupt the answers
    try:
        # Pickles from the parent that started this process, over its own pipe.
        lake = Lake(pickle.load(source))  # noqa: S301
        while True:
            rows = pickle.load(source)  # noqa: S301
            try:
                written, failed, error = append_rows(lake, rows)
                text = None if error is None else f"{type(error).__name__}: {error}"
                _send(answers, ("ok", (written, failed, text)))
            except Untabulated as exc:
                _send(answers, ("untabulated", str(exc)))
    except EOFError:  # the writer closed, or its process died
        return


class Untabulated(RelayError):
    """Serving log records that do not make a frame (a bug: they are dropped, not retried)."""


def append_rows(lake: Lake, rows: list[dict[str, Any]]) -> tuple[int, list[int], Exception | None]:
    """Tabulate ``rows`` and append one file per UTC hour of ``requested_at``.

    Returns:
        How many rows were written, the positions of those not written (their hour's append
        failed, to be retried), and the first append's error.

    Raises:
        Untabulated: the rows do not make a frame.
    """
    try:
        df = to_frame(rows)
    except Exception as exc:
        raise Untabulated(f"{type(exc).__name__}: {exc}") from exc
    written, failed, error = 0, list[int](), None
    for day, hour, part in _by_hour(df):
        try:
            frame = part.reset_index(drop=True)
            lake.append(frame, SERVING_LOG, day, hour)
            written += len(part)
        except Exception as exc:  # retried on the next flush
            error = error or exc
            failed.extend(int(i) for i in part.index)
    return written, failed, error


def _by_hour(df: pd.DataFrame) -> list[tuple[dt.date, int, pd.DataFrame]]:
    """The rows of each UTC hour of ``requested_at``, in time order. A batch seldom spans
    two hours (it is at most a few seconds of requests): then it is one part, without the
    group-by, which took 1.9 ms of the 10 ms a 1,000-row batch costs the writer."""
    at = df["requested_at"]
    first, last = at.min(), at.max()
    if first.floor("h") == last.floor("h"):
        return [(first.date(), first.hour, df)]
    hours = at.dt
    return [
        (cast(dt.date, day), cast(int, hour), part)
        for (day, hour), part in df.groupby([hours.date, hours.hour], sort=True)
    ]


if __name__ == "__main__":
    main()
