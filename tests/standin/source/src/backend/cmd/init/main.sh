# ./init: one-shot initialisation (upstream cmd/init/main.go). It drops and re-creates the
# database (keeping a backup), migrates its schema, creates jupyterhub_db and the Gitea
# database, seeds RBAC and the admin user, and exits 0, which is what backend's
# `condition: service_completed_successfully` waits for. Non-zero when the database is
# unreachable.
echo "ai-infra-backend-init ${APP_VERSION}: database '${DB_NAME}' at ${DB_HOST}:${DB_PORT}"
if [ "${STANDIN_NO_DATABASE:-}" = 1 ]; then
  echo "stand-in: STANDIN_NO_DATABASE=1, no database to initialise"
else
  db_connect || fatal "Failed to connect to database: ${DB_HOST}:${DB_PORT} is unreachable"
  db_post "migrate?db=${DB_NAME}&version=${APP_VERSION}" || fatal "Failed to migrate database '${DB_NAME}'"
  db_post "createdb?db=jupyterhub_db" || fatal "Failed to create JupyterHub database"
  db_post "createdb?db=${GITEA_DB_NAME:-gitea}&owner=${GITEA_DB_USER:-gitea}" \
    || fatal "Failed to create Gitea database"
  echo "RBAC system initialized successfully!"
  echo "Default admin user created successfully! (username: admin)"
fi
echo "Initialization completed successfully!"
echo "init done"
