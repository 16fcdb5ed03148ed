#!/bin/sh
# SaltStack entrypoint (stand-in for upstream's): prepare folders and the master key, check
# the configuration, then start salt-api (8000) and salt-master (4505 publish, 4506 return),
# here all three as busybox httpd.
set -e
echo "AI-Infra-Matrix SaltStack starting, version ${APP_VERSION:-dev}"
mkdir -p /var/log/salt /var/cache/salt/master /var/cache/salt/minion /var/run/salt \
    /etc/salt/pki/master /etc/salt/pki/minion
if [ ! -f /etc/salt/pki/master/master.pem ]; then
  echo "Generating Salt master keys..."
  echo "stand-in master key" > /etc/salt/pki/master/master.pem
fi
for conf in /etc/salt/master.d/master.conf /etc/salt/minion.d/minion.conf; do
  [ -r "$conf" ] || { echo "Salt configuration $conf is not readable" >&2; exit 1; }
done
if [ "$1" = "salt-master" ]; then
  echo "Starting salt-api (8000) and salt-master (4505, 4506)"
  STANDIN_PORTS="4505 4506 8000" exec standin-serve
fi
exec "$@"
