#!/bin/sh
# ledger-worker @WORKER_VERSION@ (stand-in): checks the cache, then touches a
# heartbeat file every $HEARTBEAT_EVERY seconds; the health check reads its age.
hostport="${REDIS_URL:-redis://cache:6379/0}"
hostport="${hostport#redis://}"
hostport="${hostport%%/*}"
if ! redis-cli -h "${hostport%:*}" -p "${hostport##*:}" ping >/dev/null; then
  echo "ledger-worker: cache $hostport unreachable" >&2
  exit 1
fi
beat="${HEARTBEAT_FILE:-/run/ledger/heartbeat}"
mkdir -p "$(dirname "$beat")"
trap 'echo "ledger-worker: stopping"; exit 0' TERM INT
echo "ledger-worker @WORKER_VERSION@: consuming ${WORKER_QUEUE:-default} (concurrency ${WORKER_CONCURRENCY:-1}), heartbeat every ${HEARTBEAT_EVERY:-5}s"
while :; do
  touch "$beat"
  sleep "${HEARTBEAT_EVERY:-5}" &
  wait $!
done
