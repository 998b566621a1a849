#!/bin/sh
# PostgreSQL's image runs this once, when it creates the database (docker-compose.yml mounts this directory as
# /docker-entrypoint-initdb.d): the application's role, from deploy/postgres/app-role.sql.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v app_role=ephemera_app -v app_password="$APP_DB_PASSWORD" -v app_database="$POSTGRES_DB" \
  -f /deploy/app-role.sql
