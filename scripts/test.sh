#!/usr/bin/env bash
# Run the whole test suite on a fresh Debian/Ubuntu machine: set-up, test assets, then
# pytest inside a network namespace with loopback only (`unshare -n`), so every test
# proves it needs no network. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# Assets fetched while the network is still there (real uv wheels, the CPU vLLM venv and model).
bash scripts/fetch-test-wheels.sh
# The real-vLLM integration tests: required (never skipped) when their set-up ran.
if [ "${APPLIANCE_SKIP_VLLM:-0}" != 1 ]; then
  bash scripts/setup-vllm.sh
  export APPLIANCE_REQUIRE_VLLM=1
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo -E"; fi
echo "test: running pytest offline (unshare -n, loopback only)"
exec $SUDO unshare -n -- bash -c '
  set -e
  ip link set lo up
  export APPLIANCE_REQUIRE_OFFLINE=1
  exec .venv/bin/python -m pytest "$@"
' bash -ra "$@"
