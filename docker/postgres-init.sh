#!/bin/sh
# The event store's role and database (POST /v1/events), created on PostgreSQL's first start.
# The password comes from the environment (EVENTS_DB_PASSWORD, docker/.env), never from here.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v password="$EVENTS_DB_PASSWORD" <<'SQL'
CREATE ROLE relay_events LOGIN PASSWORD :'password';
CREATE DATABASE relay_events OWNER relay_events;
SQL
