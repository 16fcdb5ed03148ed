#!/usr/bin/env bash
# The embedded demo, end to end, on this machine alone (root, no internet):
#  1. set up: Debian's docker.io, compose v1 and v2, registry, busybox, zstd, this package
#  2. start the harness: a loopback registry acting as docker.io mirror (stand-ins of every
#     upstream image), a build engine, and an air-gapped target engine in the network
#     namespace "airgap" (loopback only)
#  3. connected side: bundle AI-Infra Matrix v0.3.5 from the stand-in source tree into
#     dist/aimatrix-v0.3.5.tar.zst plus the offline installer kit, both signed with a demo key
#  4. isolated side, inside the namespace: install airgap-install from the kit, install the
#     archive into the target engine, wait until healthy, show the status and an endpoint
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)

bash scripts/setup.sh
python3 -m tests.harness up
eval "$(python3 -m tests.harness env)"

echo "== connected machine: bundle"
bundle() { DOCKER_HOST="$BUILD_DOCKER_HOST" python3 -m bundler.cli "$@"; }   # = airgap-bundle
if [ ! -f dist/demo-keys/release.key ]; then
    bundle keygen -o dist/demo-keys/release.key
fi
bundle build manifests/aimatrix.yaml \
    --registry aiharbor.msxf.local/aihpc --tag v0.3.5 \
    --source tests/standin/source \
    --key dist/demo-keys/release.key --lock dist/aimatrix.lock.json -o dist
bundle inspect dist/aimatrix-v0.3.5.tar.zst

echo "== isolated host (network namespace $HARNESS_NETNS, loopback only), starting from an empty engine"
python3 -m tests.harness reset-target
rm -rf dist/demo-host
isolated() { nsenter --net="/var/run/netns/$HARNESS_NETNS" env DOCKER_HOST="$TARGET_DOCKER_HOST" "$@"; }
isolated ip -4 route show default | grep -q . && { echo "the namespace has a route out" >&2; exit 1; }
# the release key's fingerprint, as its owner gives it to the site (keygen printed it); the kit must be signed by it
fingerprint=$(python3 -c 'import sys; from installer.signing import fingerprint, load_public_key; print(fingerprint(load_public_key(sys.argv[1])))' dist/demo-keys/release.pub)
isolated sh dist/airgap-install-kit-*/install.sh --fingerprint "$fingerprint" --prefix "$here/dist/demo-host/airgap-install" --no-link
install_tool="$here/dist/demo-host/airgap-install/bin/airgap-install"
isolated "$install_tool" install dist/aimatrix-v0.3.5.tar.zst \
    --pubkey dist/demo-keys/release.pub --prefix "$here/dist/demo-host/aimatrix"
isolated "$install_tool" status --prefix "$here/dist/demo-host/aimatrix"
echo "GET http://127.0.0.1:8080/health inside the namespace: $(isolated wget -qO- http://127.0.0.1:8080/health)"
