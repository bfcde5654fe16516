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

# The kernel matrix: the same static binary and tests on Debian's own kernels
# under qemu (images cached under /var/tmp/n502trace-vm). CI runs 5.10 and 6.1;
# N502_VM_RELEASES="bullseye bookworm bookworm-backports" adds 6.12.
if [ "${N502_SKIP_VM:-0}" != 1 ] && [ $# -eq 0 ]; then
  for r in ${N502_VM_RELEASES:-bullseye bookworm}; do
    echo "== kernel matrix: $r (qemu)"
    BUILD_DIR="$BUILD" scripts/vm-test.sh "$r"
  done
fi

# The log parsers and the event decoder under libFuzzer, for a bounded time.
if [ "${N502_SKIP_FUZZ:-0}" != 1 ] && [ $# -eq 0 ]; then
  echo "== fuzzing"
  scripts/fuzz.sh "${N502_FUZZ_SECONDS:-30}"
fi

# The same suites under AddressSanitizer + UndefinedBehaviorSanitizer (a
# dynamically linked debug build; any report fails the test). The storm test
# is a throughput test and the static-binary test does not apply there.
if [ "${N502_SKIP_SANITIZERS:-0}" != 1 ] && [ $# -eq 0 ]; then
  echo "== tests under ASan + UBSan"
  cmake -S . -B "$BUILD-asan" -DCMAKE_BUILD_TYPE=Debug -DN502_SANITIZE=ON >/dev/null
  cmake --build "$BUILD-asan" -j"$(nproc)"
  N502_SANITIZED=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir "$BUILD-asan" --output-on-failure --timeout 300 -E 'static_binary|e2e_storm'
fi
