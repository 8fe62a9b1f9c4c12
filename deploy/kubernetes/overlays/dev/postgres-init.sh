#!/bin/sh
# The services' database role: an ordinary one (no superuser, no BYPASSRLS),
# owner of the database `crm`. Superusers ignore row-level security, which
# keeps the orgs apart (README: "Organizations"). Runs once, on a new volume.
# Shared by docker-compose.yml and this overlay (postgres.yaml).
set -eu
psql -v ON_ERROR_STOP=1 -v password="$CRM_DB_PASSWORD" \
     --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE crm LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD :'password';
CREATE DATABASE crm OWNER crm;
SQL
