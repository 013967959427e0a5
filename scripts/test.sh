#!/usr/bin/env bash
# Installs dependencies, builds, and runs the whole test suite (KVM tests skip without /dev/kvm).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build
ctest --test-dir build --output-on-failure -j"$(nproc)" --timeout 900
