#!/usr/bin/env bash
# Set up on a fresh Debian/Ubuntu machine, then run the main job on the embedded default:
# build a signed bundle from appliance/default.toml, verify it, and show the report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/appliance demo "$@"
