# Sourced by the stand-in "PostgreSQL" CGIs in /www/cgi-bin (busybox httpd runs them,
# so the postgres stand-in answers them on 5432). State lives in the data directory,
# i.e. the postgres_data volume: database NAME is the folder $PGDATA/standin-db/NAME,
# its migrated schema the file $PGDATA/standin-db/NAME/schema.
DBROOT="${PGDATA:-/var/lib/postgresql/data}/standin-db"

# param NAME: the value of NAME=... in the query string (values are not URL-decoded).
param() {
  printf '%s\n' "$QUERY_STRING" | tr '&' '\n' | sed -n "s/^$1=//p" | head -n 1
}

# reply "CODE TEXT" LINE...: a text/plain answer; busybox httpd turns Status: into the status line.
reply() {
  printf 'Status: %s\r\nContent-Type: text/plain\r\n\r\n' "$1"
  shift
  [ $# -gt 0 ] && printf '%s\n' "$@"
  exit 0
}

# require METHOD: answer 405 to any other request method.
require() {
  [ "$REQUEST_METHOD" = "$1" ] || reply "405 Method Not Allowed" "use $1"
}

db=$(param db)
case "$db" in
  "" | *[!A-Za-z0-9_-]*) reply "400 Bad Request" "need db=NAME (letters, digits, _ and -)" ;;
esac
