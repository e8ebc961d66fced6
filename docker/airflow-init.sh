#!/usr/bin/env bash
# One-shot set-up before the Airflow services start (compose service `airflow-init`):
#   1. migrate the metadata database (PostgreSQL) to Airflow 3.3.2's schema;
#   2. create the `ray_gpu` pool the training DAG's Ray jobs queue in (as `make up` does);
#   3. write the simple auth manager's password file from AIRFLOW_ADMIN_PASSWORD, so the admin's
#      password is the one in docker/.env and not a generated one printed to a log.
# Idempotent: safe on every `docker compose up`.
set -euo pipefail

: "${AIRFLOW_ADMIN_PASSWORD:?set AIRFLOW_ADMIN_PASSWORD in docker/.env}"
: "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?the compose file sets it}"

airflow db migrate
airflow pools set ray_gpu "${RELAY_AIRFLOW__GPU_POOL_SLOTS:-1}" "Ray jobs that may use a GPU"

python - <<'PY'
import json
import os
from pathlib import Path

path = Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
user = os.environ.get("AIRFLOW_ADMIN_USER", "admin")
path.parent.mkdir(parents=True, exist_ok=True)
tmp = path.with_suffix(".tmp")
tmp.write_text(json.dumps({user: os.environ["AIRFLOW_ADMIN_PASSWORD"]}) + "\n")
tmp.chmod(0o600)
tmp.replace(path)
print(f"airflow-init: password for {user!r} written to {path}")
PY
