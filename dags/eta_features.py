"""Hourly ETA features: the 24-hour snapshot views brought up to the hour, from order events.

The live views (the last hour's order counts, the zone's weather) are pushed by
``POST /v1/events`` as events arrive. This DAG computes the slow ones once an hour — each
courier's deliveries and mean delivery time, each merchant's orders and mean preparation time,
each zone's mean delivery time, over the 24 hours before the hour — with the function the
training flow uses, lands them in the lake and materializes them to the online store.

Keyed on ``data_interval_end``: a cleared or retried run rewrites the same hour.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, task

from relay.airflow.assets import FEATURE_TABLES
from relay.airflow.notifier import RelayNotifier


@dag(
    dag_id="eta_features",
    schedule="@hourly",
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["relay", "eta", "features"],
    doc_md=__doc__,
    default_args={
        "owner": "relay",
        "retries": 2,
        "retry_delay": dt.timedelta(minutes=2),
        "execution_timeout": dt.timedelta(minutes=20),
    },
    on_failure_callback=RelayNotifier(),
)
def eta_features() -> None:
    @task(outlets=[FEATURE_TABLES])
    def snapshots(data_interval_end: dt.datetime | None = None) -> dict:
        from relay.flows.eta_features import refresh_snapshots

        result = refresh_snapshots(data_interval_end or dt.datetime.now(dt.UTC))
        print(result.summary())
        return {"hour": result.hour.isoformat(), "rows": result.rows, "files": result.files}

    snapshots()


eta_features()
