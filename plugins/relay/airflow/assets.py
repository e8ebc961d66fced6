"""The data assets the DAGs produce, named once by layer (Airflow shows their lineage).

URIs name what each asset is, not where it lives: the paths come from the settings when a task
runs, while these are read when the scheduler parses a DAG file.
"""

from __future__ import annotations

from airflow.sdk import Asset

VALIDATED_ORDERS = Asset(name="relay_validated_orders", uri="relay://lake/validated/orders")
FEATURE_TABLES = Asset(name="relay_feature_tables", uri="relay://lake/features")
PRODUCTION_MODEL = Asset(name="relay_eta_production", uri="relay://registry/eta_mlp/production")
DRIFT_REPORTS = Asset(name="relay_drift_reports", uri="relay://reports/drift")
