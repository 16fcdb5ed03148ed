#!/bin/sh
# Creates the databases the stack's services use, on the first start of postgres.
set -e
for db in jupyterhub_db gitea; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c "CREATE DATABASE $db" || true
done
