"""The event store: every order event Relay acknowledged, durable and queryable.

One SQL table (SQLite under ``RELAY_HOME`` in the local profile, PostgreSQL in prod:
``RELAY_EVENTS__DATABASE_URL``). It is what makes the events API trustworthy:

* **durable**: an event is acknowledged only once its transaction committed;
* **idempotent**: ``(order_id, type)`` is unique, so a re-sent event changes nothing;
* **queryable**: the live features of an entity are computed from its stored ``created``
  events (:func:`relay.features.live.latest_rows`), so every replica computes the same value
  whichever replica received the event;
* **landed**: each row is copied once to the lake (``raw/order_events``, with the labels in
  ``serving/actuals``) and marked, so a crash between the two is repaired by the next landing.

Times are stored as integer microseconds since the epoch (UTC), exact on both databases.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

EVENTS = sa.MetaData()
ORDER_EVENTS = sa.Table(
    "order_events",
    EVENTS,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("order_id", sa.String(64), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("occurred_us", sa.BigInteger, nullable=False),
    sa.Column("received_us", sa.BigInteger, nullable=False),
    sa.Column("courier_id", sa.String(64)),
    sa.Column("merchant_id", sa.String(64)),
    sa.Column("zone_id", sa.String(32)),
    sa.Column("distance_km", sa.Float),
    sa.Column("weather", sa.String(16)),
    sa.Column("prep_minutes", sa.Float),
    sa.Column("landed", sa.Boolean, nullable=False, default=False),
    sa.UniqueConstraint("order_id", "type", name="uq_order_event"),
    sa.Index("ix_created_courier", "type", "courier_id", "occurred_us"),
    sa.Index("ix_created_merchant", "type", "merchant_id", "occurred_us"),
    sa.Index("ix_created_zone", "type", "zone_id", "occurred_us"),
    sa.Index("ix_unlanded", "landed", "seq"),
)
EVENT_FIELDS = ("courier_id", "merchant_id", "zone_id", "distance_km", "weather", "prep_minutes")
ORDER_COLUMNS = (
    "order_id",
    "created_at",
    "picked_up_at",
    "delivered_at",
    "courier_id",
    "merchant_id",
    "zone_id",
    "distance_km",
    "weather",
    "prep_minutes",
    "delivery_minutes",
)
"""The columns of :meth:`EventStore.orders`: the validated orders' names for the same facts."""
LABEL_DECIMALS = 3
"""Decimals of ``delivery_minutes`` in the validated orders."""
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def to_us(value: dt.datetime) -> int:
    """A UTC datetime as integer microseconds since the epoch."""
    delta = value.astimezone(dt.UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _times(us: pd.Series) -> pd.Series:
    return pd.to_datetime(us.astype("int64"), unit="us", utc=True)


def engine_for(url: str) -> sa.Engine:
    """An engine for the store's URL; SQLite in WAL mode (readers never block the writer)
    and waiting for the lock rather than failing at once when two processes write."""
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    path = sa.engine.make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(conn: Any, _: Any) -> None:
        cur = conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.close()

    return engine


class EventStore:
    """The ``order_events`` table (created on first use)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)
        EVENTS.create_all(self.engine)
        _add_missing_columns(self.engine)

    def add(self, rows: Sequence[dict[str, Any]], received_at: dt.datetime) -> list[bool]:
        """Store events in one transaction; which of them were new (by ``(order_id, type)``).

        Args:
            rows: events as :func:`relay.serve.events.parse_events` gives them.
            received_at: when Relay received them (UTC).
        """
        if not rows:
            return []
        t = ORDER_EVENTS.c
        keys = [(r["order_id"], r["type"]) for r in rows]
        received = to_us(received_at)
        with self.engine.begin() as conn:
            known = {
                (k[0], k[1])
                for k in conn.execute(
                    sa.select(t.order_id, t.type).where(sa.tuple_(t.order_id, t.type).in_(keys))
                )
            }
            new = []
            for k in keys:  # a key twice in one group: the first is the new one
                new.append(k not in known)
                known.add(k)
            values = []
            for row, fresh in zip(rows, new, strict=True):
                if fresh:
                    values.append(
                        {
                            "order_id": row["order_id"],
                            "type": row["type"],
                            "occurred_us": to_us(row["occurred_at"]),
                            "received_us": received,
                            "landed": False,
                            **{f: row.get(f) for f in EVENT_FIELDS},
                        }
                    )
            if values:
                conn.execute(_insert_ignoring_duplicates(self.engine), values)
        return new

    def created(self, key: str, ids: Iterable[str], since: dt.datetime) -> pd.DataFrame:
        """The ``created`` events of entities ``ids`` (by join key ``key``) after ``since``,
        as :data:`relay.features.live.EVENT_COLUMNS`."""
        t = ORDER_EVENTS.c
        ids = sorted(set(ids))
        query = sa.select(
            t.order_id, t.occurred_us, t.courier_id, t.merchant_id, t.zone_id, t.weather
        ).where(t.type == "created", t[key].in_(ids), t.occurred_us > to_us(since))
        df = self._read(query)
        df.insert(1, "created_at", _times(df.pop("occurred_us")))
        return df

    def orders(self, since: dt.datetime, until: dt.datetime) -> pd.DataFrame:
        """Orders created in ``[since, until)`` with what their events told by ``until``: one
        row per order as :data:`ORDER_COLUMNS` (a pickup or delivery at or after ``until``, or
        never reported, is NaT; ``delivery_minutes`` is NaN until delivered).

        This is the offline feature code's input (:mod:`relay.features.tables`) rebuilt from
        events alone, so the hourly snapshots need no order dump from the order service.
        """
        t = ORDER_EVENTS.c
        lo, hi = to_us(since), to_us(until)
        created = sa.select(
            t.order_id,
            t.occurred_us,
            t.courier_id,
            t.merchant_id,
            t.zone_id,
            t.distance_km,
            t.weather,
        ).where(t.type == "created", t.occurred_us >= lo, t.occurred_us < hi)
        orders = self._read(created.order_by(t.occurred_us, t.order_id))
        out = pd.DataFrame({"order_id": orders["order_id"].astype(object)})
        out["created_at"] = _times(orders["occurred_us"])
        ids = created.with_only_columns(t.order_id).scalar_subquery()
        later = {
            kind: self._read(
                sa.select(t.order_id, t.occurred_us, t.prep_minutes).where(
                    t.type == kind, t.occurred_us < hi, t.order_id.in_(ids)
                )
            ).set_index("order_id")
            for kind in ("picked_up", "delivered")
        }
        for kind, column in (("picked_up", "picked_up_at"), ("delivered", "delivered_at")):
            at = out["order_id"].map(later[kind]["occurred_us"])
            out[column] = pd.to_datetime(at, unit="us", utc=True)
        for column in ("courier_id", "merchant_id", "zone_id", "distance_km", "weather"):
            out[column] = orders[column].to_numpy()
        out["prep_minutes"] = out["order_id"].map(later["picked_up"]["prep_minutes"]).astype(float)
        minutes = (out["delivered_at"] - out["created_at"]).dt.total_seconds() / 60.0
        # Rounded as the validated orders carry it (to the millisecond's order), so the
        # snapshots computed from events equal the training flow's.
        out["delivery_minutes"] = minutes.astype(float).round(LABEL_DECIMALS)
        return out[list(ORDER_COLUMNS)]

    def frame(self, where: Any = None, limit: int | None = None) -> pd.DataFrame:
        """Stored events (all columns, times as UTC timestamps), in arrival order."""
        query = sa.select(ORDER_EVENTS).order_by(ORDER_EVENTS.c.seq)
        if where is not None:
            query = query.where(where)
        if limit is not None:
            query = query.limit(limit)
        df = self._read(query)
        df["occurred_at"] = _times(df.pop("occurred_us"))
        df["received_at"] = _times(df.pop("received_us"))
        return df

    def unlanded(self, limit: int) -> pd.DataFrame:
        """Up to ``limit`` events not yet landed in the lake, oldest first."""
        return self.frame(ORDER_EVENTS.c.landed.is_(False), limit)

    def occurred_at_of(self, kind: str, order_ids: Iterable[str]) -> dict[str, dt.datetime]:
        """When each of ``order_ids`` the store has a ``kind`` event for had it (UTC)."""
        t = ORDER_EVENTS.c
        ids = sorted(set(order_ids))
        query = sa.select(t.order_id, t.occurred_us).where(t.type == kind, t.order_id.in_(ids))
        with self.engine.connect() as conn:
            return {oid: _EPOCH + dt.timedelta(microseconds=us) for oid, us in conn.execute(query)}

    def mark_landed(self, seqs: Sequence[int]) -> None:
        """Record that these events are in the lake."""
        if not seqs:
            return
        t = ORDER_EVENTS.c
        with self.engine.begin() as conn:
            conn.execute(sa.update(ORDER_EVENTS).where(t.seq.in_(list(seqs))).values(landed=True))

    def count(self) -> int:
        """Events stored."""
        query = sa.select(sa.func.count()).select_from(ORDER_EVENTS)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def _read(self, query: Any) -> pd.DataFrame:
        with self.engine.connect() as conn:
            rows = conn.execute(query).fetchall()
        return pd.DataFrame(rows, columns=list(query.selected_columns.keys()))

    def close(self) -> None:
        self.engine.dispose()


def _add_missing_columns(engine: sa.Engine) -> None:
    """Columns added to ``order_events`` after a store was created (``prep_minutes``), added
    to it: both databases add a nullable column in place, and old rows read as null."""
    have = {c["name"] for c in sa.inspect(engine).get_columns(ORDER_EVENTS.name)}
    missing = [c for c in ORDER_EVENTS.columns if c.name not in have]
    if not missing:
        return
    for column in missing:
        kind = column.type.compile(dialect=engine.dialect)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE order_events ADD COLUMN {column.name} {kind}"))
        except sa.exc.DBAPIError:
            # Another process opening the store at the same moment added it first.
            have = {c["name"] for c in sa.inspect(engine).get_columns(ORDER_EVENTS.name)}
            if column.name not in have:
                raise


def _insert_ignoring_duplicates(engine: sa.Engine) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING``: another replica may store the same event between
    our check and our insert; the first one stays."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(ORDER_EVENTS).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(ORDER_EVENTS).on_conflict_do_nothing()
