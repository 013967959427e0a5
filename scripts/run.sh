#!/usr/bin/env bash
# Installs dependencies, builds, and runs the default scenario (extra arguments go to `run`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build
./build/kvmscale info
exec ./build/kvmscale run "$@"
