"""``relay events …``: the order events path (``POST /v1/events``) from the command line."""

from __future__ import annotations

from typing import Annotated

import typer

from relay.cli.common import DateOpt, console, fail, progress, run

app = typer.Typer(help="Order events: play a day's lives through the API, land events.")


@app.command("play")
def events_play(
    date: DateOpt,
    from_hour: Annotated[
        int, typer.Option(min=1, max=23, help="First order: the day's first created then (UTC)")
    ] = 8,
    orders: Annotated[int, typer.Option(min=1, help="Orders to play")] = 1000,
    url: Annotated[
        str | None, typer.Option(help="Endpoint base URL, loopback only; default the stack's")
    ] = None,
    materialize_hourly: Annotated[
        bool, typer.Option(help="Materialize the hourly snapshots as the clock crosses hours")
    ] = True,
) -> None:
    """Play a landed day order by order: created event, ETA, pickup and delivery events, the
    hourly snapshots materialized on the hour (`relay features skew` then finds none)."""
    import pandas as pd

    from relay.data.lake import VALIDATED_ORDERS, Lake
    from relay.serve.auth import read_secret
    from relay.settings import get_settings
    from relay.sim.lifecycle import play

    s = get_settings()
    day = date.date()
    frame = run(lambda: Lake(s).read(VALIDATED_ORDERS, day))
    frame = frame.sort_values("created_at", kind="stable").reset_index(drop=True)
    start = pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=from_hour)
    later = frame["created_at"] >= start
    if not later.any():
        raise fail(f"no order of {day} was created at {from_hour}:00 or later")
    first = int(later.to_numpy().argmax())
    key = read_secret(s.serving.api_keys_file, "API_KEYS_FILE")
    with progress() as p:
        task = p.add_task("orders", total=min(orders, len(frame) - first))
        result = run(
            lambda: play(
                frame,
                first,
                orders,
                url or s.serving.url,
                s,
                api_key=key,
                materialize_hourly=materialize_hourly,
                on_progress=lambda done, _: p.update(task, completed=done),
            )
        )
    console.print(result.summary())


@app.command("land")
def events_land() -> None:
    """Copy stored events not yet in the lake to it now (and the labels they complete)."""
    from relay.data.lake import Lake
    from relay.ingest.event_sink import land
    from relay.ingest.event_store import EventStore
    from relay.settings import get_settings

    s = get_settings()
    if s.events.database_url is None:  # pragma: no cover, the settings validator fills it
        raise fail("RELAY_EVENTS__DATABASE_URL is not set")
    store = EventStore(s.events.database_url)
    try:
        n = run(lambda: land(store, Lake(s), s.events.land_max_events))
    finally:
        store.close()
    console.print(f"landed {n} events")


@app.command("consume")
def events_consume(
    name: Annotated[
        str | None,
        typer.Option(help="This consumer's name in the group; default host and process id"),
    ] = None,
    max_entries: Annotated[
        int | None, typer.Option(min=1, help="Stop once this many entries were consumed")
    ] = None,
) -> None:
    """Consume the order-events stream (RELAY_EVENTS__STREAM_URL) until Ctrl-C: each entry
    validated, stored, pushed, then acknowledged (the prod router's consumer, run by hand)."""
    import json
    import os
    import signal
    import socket
    import threading

    from relay.ingest.event_log import Polled, open_consumer
    from relay.ingest.event_sink import open_sink
    from relay.settings import get_settings

    s = get_settings()
    if not s.events.stream_url:
        raise fail("no order-events stream is configured: set RELAY_EVENTS__STREAM_URL")
    sink = run(lambda: open_sink(s))
    consumer = run(lambda: open_consumer(s, sink, name or f"{socket.gethostname()}-{os.getpid()}"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def report(polled: Polled) -> None:
        t = consumer.totals
        console.print(
            f"{t['entries']} entries: {t['stored']} stored, {t['duplicates']} already known, "
            f"{t['dead']} refused (dead letter), {t['claimed']} claimed from dead consumers"
        )
        if max_entries is not None and t["entries"] >= max_entries:
            stop.set()

    console.print(f"consuming {s.events.stream_name} as {consumer.consumer} (Ctrl-C stops)")
    try:
        consumer.run(stop, report)
    except KeyboardInterrupt:
        pass
    finally:
        sink.close()
    t = consumer.totals
    summary = f"stopped after {t['entries']} entries, {t['claimed']} claimed: {json.dumps(t)}"
    console.print(summary, soft_wrap=True, markup=False)
