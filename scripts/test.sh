#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds, and runs every test
# (unit, kernel, end-to-end). Needs root: the kernel and end-to-end tests load
# the real BPF programs and start a real Nginx.
#
#   sudo scripts/test.sh              # everything
#   sudo scripts/test.sh -L unit      # extra arguments go to ctest
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: run as root (the tests load BPF programs and start Nginx)" >&2
  exit 1
fi

scripts/install-deps.sh

BUILD=${BUILD_DIR:-build}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j"$(nproc)"

echo "== preflight"
"$BUILD"/n502trace --check

echo "== tests"
ctest --test-dir "$BUILD" --output-on-failure --timeout 300 "$@"
