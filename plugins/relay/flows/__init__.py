"""The Airflow-free steps of each DAG, one module per DAG, named after it."""
