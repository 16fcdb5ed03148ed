# ./main: the API server (upstream cmd/main.go). It connects to the database and refuses
# to start on one that backend-init has not migrated; then it serves /api/health (and
# /health) on PORT (8082).
PORT=${PORT:-8082}
echo "ai-infra-backend ${APP_VERSION}: database '${DB_NAME}' at ${DB_HOST}:${DB_PORT}"
if [ "${STANDIN_NO_DATABASE:-}" = 1 ]; then
  echo "stand-in: STANDIN_NO_DATABASE=1, starting without a database"
else
  db_connect || fatal "Failed to connect to database: ${DB_HOST}:${DB_PORT} is unreachable"
  echo "Database ready!"
  schema=$(db_get "schema?db=${DB_NAME}") \
    || fatal "database schema is not initialised (database '${DB_NAME}'): run backend-init first"
  echo "Database schema: ${schema}"
fi
echo "Server starting on :${PORT}"
STANDIN_PORTS=$PORT exec standin-serve
