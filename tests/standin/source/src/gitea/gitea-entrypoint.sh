#!/bin/sh
# Renders /data/gitea/conf/app.ini from the environment (skipping the install wizard), or
# updates the URL settings of an existing one, then hands off to the image's own entrypoint.
# Shaped like upstream's gitea-entrypoint.sh (bash there, busybox sh here).
set -eu

: "${GITEA_DB_TYPE:=postgres}"
: "${GITEA_DB_HOST:=postgres:5432}"
: "${GITEA_DB_NAME:=gitea}"
: "${GITEA_DB_USER:=gitea}"
: "${GITEA_DB_PASSWD:=gitea-password}"
: "${ROOT_URL:=http://localhost:8080/gitea/}"
: "${SUBURL:=/gitea}"
: "${GITEA__storage__STORAGE_TYPE:=local}"
: "${DATA_PATH:=/data/gitea}"
: "${MINIO_ENDPOINT:=minio:9000}"
: "${MINIO_BUCKET:=gitea}"
: "${INITIAL_ADMIN_USERNAME:=${GITEA_ALIAS_ADMIN_TO:-}}"

APP_INI=/data/gitea/conf/app.ini

log() { echo "[gitea-init] $*"; }

render_app_ini() {
  mkdir -p "$(dirname "$APP_INI")"
  cat > "$APP_INI" <<INI
APP_NAME = Gitea: Git with a cup of tea
RUN_MODE = prod

[server]
DOMAIN = ${DOMAIN:-localhost}
HTTP_PORT = ${HTTP_PORT:-3000}
ROOT_URL = ${ROOT_URL}
SUBURL = ${SUBURL}
STATIC_URL_PREFIX = ${STATIC_URL_PREFIX:-/gitea}

[database]
DB_TYPE = ${GITEA_DB_TYPE}
HOST = ${GITEA_DB_HOST}
NAME = ${GITEA_DB_NAME}
USER = ${GITEA_DB_USER}
PASSWD = ${GITEA_DB_PASSWD}

[security]
INSTALL_LOCK = true

[storage]
STORAGE_TYPE = ${GITEA__storage__STORAGE_TYPE}
INI
  if [ "$GITEA__storage__STORAGE_TYPE" = minio ] || [ "$GITEA__storage__STORAGE_TYPE" = s3 ]; then
    printf 'MINIO_ENDPOINT = %s\nMINIO_BUCKET = %s\n' "$MINIO_ENDPOINT" "$MINIO_BUCKET" >> "$APP_INI"
  else
    printf 'PATH = %s\n' "$DATA_PATH" >> "$APP_INI"
  fi
}

if [ ! -f "$APP_INI" ] || ! grep -q '^INSTALL_LOCK *= *true' "$APP_INI"; then
  log "rendering app.ini"
  render_app_ini
else
  log "app.ini exists with INSTALL_LOCK=true, updating URL settings"
  sed -i "s#^ROOT_URL *=.*#ROOT_URL = ${ROOT_URL}#; s#^SUBURL *=.*#SUBURL = ${SUBURL}#" "$APP_INI"
fi

mkdir -p "$DATA_PATH" /data/git/repositories
chown -R 1000:1000 /data || true

if [ -n "$INITIAL_ADMIN_USERNAME" ] && [ "$INITIAL_ADMIN_USERNAME" != admin ]; then
  log "initial SSO admin user '$INITIAL_ADMIN_USERNAME' (stand-in: not created)"
else
  log "skip creating default 'admin'; relying on reverse-proxy SSO auto-create and backend sync"
fi

# Upstream: exec /usr/bin/entrypoint "$@" (the gitea image's own); the stand-in's is standin-entrypoint.
exec standin-entrypoint "$@"
