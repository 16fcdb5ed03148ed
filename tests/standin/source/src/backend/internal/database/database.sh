# Stand-in for internal/database (linked into every "binary" by the builder stage).
# The database is the postgres stand-in: HTTP on DB_HOST:DB_PORT, whose CGIs keep the
# databases and schema markers in its data directory (tests/standin/images/README.md).
# Config names and defaults are upstream's internal/config (config.Load).
DB_HOST=${DB_HOST:-localhost}
DB_PORT=${DB_PORT:-5432}
DB_NAME=${DB_NAME:-ansible_playbook_generator}
APP_VERSION=${APP_VERSION:-dev}

fatal() {
  echo "FATAL: $*" >&2
  exit 1
}

# database.Connect: retry for DB_CONNECT_TIMEOUT seconds (default 15), then give up.
db_connect() {
  tries=0
  until nc-z "$DB_HOST" "$DB_PORT"; do
    tries=$((tries + 1))
    [ "$tries" -lt "${DB_CONNECT_TIMEOUT:-15}" ] || return 1
    echo "Database ${DB_HOST}:${DB_PORT} is unavailable - retrying"
    sleep 1
  done
}

db_get() {
  wget -q -O - "http://${DB_HOST}:${DB_PORT}/cgi-bin/$1" 2>/dev/null
}

db_post() {
  wget -q -O - --post-data "" "http://${DB_HOST}:${DB_PORT}/cgi-bin/$1"
}
