#!/usr/bin/env bash
# One-shot set-up before the Airflow services start (compose service `airflow-init`):
#   1. migrate the metadata database (PostgreSQL) to Airflow 3.3.2's schema, FAB's tables with it;
#   2. create the `ray_gpu` pool the training DAG's Ray jobs queue in (as `make up` does);
#   3. create the FAB auth manager's admin (role Admin) from the airflow_admin_password secret
#      (a file: the password is in no environment variable, and in no log).
# Idempotent: safe on every `docker compose up` (an existing admin keeps its password; change it
# in the UI or with `airflow users reset-password`).
set -euo pipefail

: "${AIRFLOW_ADMIN_PASSWORD_FILE:?the compose file sets it}"
user="${AIRFLOW_ADMIN_USER:-admin}"

airflow db migrate
airflow pools set ray_gpu "${RELAY_AIRFLOW__GPU_POOL_SLOTS:-1}" "Ray jobs that may use a GPU"

if airflow users list --output json | tail -n 1 | grep -q "\"username\": \"${user}\""; then
  echo "airflow-init: admin ${user} exists"
else
  # Airflow's CLI takes the password as an argument or from a prompt; the prompt reads stdin.
  password="$(cat "${AIRFLOW_ADMIN_PASSWORD_FILE}")"
  : "${password:?set AIRFLOW_ADMIN_PASSWORD in docker/.env}"
  printf '%s\n%s\n' "${password}" "${password}" | airflow users create \
    --username "${user}" --role Admin --email "${user}@localhost" \
    --firstname Relay --lastname Admin
  echo "airflow-init: admin ${user} created"
fi
