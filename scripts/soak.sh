#!/usr/bin/env bash
# Soak test: n502trace under steady load with recurring faults, rotations and
# reloads for MINUTES (default 10). See tests/e2e/soak.py. Needs root.
#
#   sudo scripts/soak.sh [--bin build/n502trace] [--minutes 10]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || scripts/install-deps.sh
BIN=build/n502trace
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=$2; shift 2 ;;
    --minutes) args+=(--minutes "$2"); shift 2 ;;
    *) echo "usage: scripts/soak.sh [--bin PATH] [--minutes N]" >&2; exit 2 ;;
  esac
done
exec /usr/bin/python3 tests/e2e/soak.py --bin "$BIN" "${args[@]}"
