#!/bin/sh
# Stand-in for the base image's ENTRYPOINT ["tini", "-g", "--"]: say what runs, then run it.
echo "ai-infra-singleuser ${APP_VERSION:-dev}: $*"
exec "$@"
