#!/usr/bin/env bash
# The embedded demo: set up this machine, start the local test engine and the
# loopback registry (a docker.io mirror holding stand-ins of every upstream
# image), then bundle the AI-Infra Matrix v0.3.5 stack from the stand-in source
# tree into dist/aimatrix-v0.3.5.tar.zst, signed with a demo key, and verify it.
# Needs root (dockerd, network namespaces) and nothing from the internet.
set -euo pipefail
cd "$(dirname "$0")"

bash scripts/setup.sh
python3 -m tests.harness up
eval "$(python3 -m tests.harness env)"
export DOCKER_HOST="$BUILD_DOCKER_HOST"

bundle() { python3 -m bundler.cli "$@"; }   # the same as the airgap-bundle command
if [ ! -f dist/demo-keys/release.key ]; then
    bundle keygen -o dist/demo-keys/release.key
fi
bundle build manifests/aimatrix.yaml \
    --registry aiharbor.msxf.local/aihpc --tag v0.3.5 \
    --source tests/standin/source \
    --key dist/demo-keys/release.key --lock dist/aimatrix.lock.json -o dist
bundle verify dist/aimatrix-v0.3.5.tar.zst --pubkey dist/demo-keys/release.pub
bundle inspect dist/aimatrix-v0.3.5.tar.zst
