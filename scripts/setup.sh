#!/usr/bin/env bash
# Set up appliance on a fresh Debian/Ubuntu machine with Python 3.11+:
# system packages (apt-get), a hash-pinned uv, and the project venv from uv.lock.
# Idempotent: each step is skipped when already done. Needs root (or sudo) for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# Everything the product and its tests call: gpg/gpgv (signatures), podman/skopeo/registry
# (images), bubblewrap (tool sandbox), runc (podman runtime here), iproute2/util-linux (unshare -n).
PKGS=(ca-certificates gnupg gpgv podman skopeo docker-registry bubblewrap runc uidmap
      fuse-overlayfs busybox-static catatonit iproute2 util-linux)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then missing+=(python3-venv); fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# uv itself, pinned by hash (lockfiles/bootstrap.txt), in a bootstrap venv.
if [ ! -x .cache/bootstrap/bin/uv ]; then
  echo "setup: installing uv from lockfiles/bootstrap.txt (hash-pinned)"
  python3 -m venv .cache/bootstrap
  .cache/bootstrap/bin/python -m pip install -q --require-hashes --no-deps -r lockfiles/bootstrap.txt
fi
export PATH="$PWD/.cache/bootstrap/bin:$PATH"

echo "setup: syncing .venv from uv.lock (--locked: the lock must match pyproject.toml)"
uv sync --locked --quiet
echo "setup: done ($(.venv/bin/appliance --version))"
