#!/bin/sh
# Nginx gateway entrypoint, shaped like upstream's: drop the default site, fill the admin
# identity into conf.d, disable the 8001 debug server unless DEBUG_MODE=true, check the
# configuration, then start. The stand-in base has no nginx: standin-entrypoint serves
# /www (= /usr/share/nginx/html) on 80, and on 8001 in debug mode.
set -e
echo "AI-Infra-Matrix nginx gateway starting: build env ${BUILD_ENV:-production}, debug mode ${DEBUG_MODE:-false}"

rm -f /etc/nginx/conf.d/default.conf

export GITEA_ALIAS_ADMIN_TO="${GITEA_ALIAS_ADMIN_TO:-admin}"
export GITEA_ADMIN_EMAIL="${GITEA_ADMIN_EMAIL:-admin@example.com}"
# (a read-only bind-mounted .conf cannot be edited: find ignores sed's failure, as upstream)
find /etc/nginx/conf.d/ -name "*.conf" -type f -exec sed -i "s/\${GITEA_ALIAS_ADMIN_TO}/${GITEA_ALIAS_ADMIN_TO}/g" {} \;
find /etc/nginx/conf.d/ -name "*.conf" -type f -exec sed -i "s/\${GITEA_ADMIN_EMAIL}/${GITEA_ADMIN_EMAIL}/g" {} \;

if [ "${DEBUG_MODE}" = "true" ]; then
  echo "Debug mode: debug server on 8001"
  export STANDIN_PORTS="${STANDIN_PORTS:-80 8001}"
else
  echo "Production mode: debug server on 8001 disabled"
  if [ -f /etc/nginx/conf.d/server-debug-jupyterhub.conf ]; then
    mv /etc/nginx/conf.d/server-debug-jupyterhub.conf /etc/nginx/conf.d/server-debug-jupyterhub.conf.disabled || true
  fi
  echo "<html><body><h1>Debug tools are disabled in production mode</h1></body></html>" > /usr/share/nginx/html/debug/index.html
fi

# Stand-in for `nginx -t`
if [ -r /etc/nginx/nginx.conf ] && [ -r /etc/nginx/conf.d/server-main.conf ]; then
  echo "nginx: the configuration file /etc/nginx/nginx.conf test is successful"
else
  echo "nginx: [emerg] /etc/nginx/nginx.conf or conf.d/server-main.conf missing" >&2
  exit 1
fi

if [ -n "$BACKEND_HOST" ]; then
  echo "Backend: ${BACKEND_HOST}:${BACKEND_PORT:-8082}  JupyterHub: ${JUPYTERHUB_HOST}:${JUPYTERHUB_PORT:-8000}  Frontend: ${FRONTEND_HOST}:${FRONTEND_PORT:-80}"
fi

exec standin-entrypoint "$@"
