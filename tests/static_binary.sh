#!/usr/bin/env bash
# The n502trace binary is self-contained: no dynamic section, and it runs in
# an empty root that holds nothing but itself (no libc, libbpf, libelf, zlib).
set -euo pipefail
bin=$1
if file -L "$bin" | grep -q "dynamically linked"; then
  echo "FAIL: $bin is dynamically linked:"; file -L "$bin"; exit 1
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
cp "$bin" "$root/n502trace"
out=$(chroot "$root" /n502trace --version)
echo "$out"
case "$out" in
  "n502trace "*) echo "PASS: runs alone in an empty root" ;;
  *) echo "FAIL: unexpected output"; exit 1 ;;
esac
