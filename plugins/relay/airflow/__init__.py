"""Airflow front doors to the Relay library: operators and triggers. Import only from DAG task
bodies and Airflow's workers: this package imports Airflow."""
