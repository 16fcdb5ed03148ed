#!/usr/bin/env bash
# Install what the project and its real-engine tests need on Debian 12, as root.
# Idempotent: apt runs only for missing packages; pip installs the project
# (editable, with the `test` extra) from the repository root.
set -euo pipefail

cd "$(dirname "$0")/.."

PACKAGES=(docker.io docker-compose docker-registry busybox-static zstd iproute2 util-linux)

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
