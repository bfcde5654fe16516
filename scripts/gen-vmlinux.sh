#!/usr/bin/env bash
# Regenerates the vendored vmlinux.h from a kernel's BTF. Run on purpose when
# a newer kernel's types are needed; the build itself never reads the build
# host's BTF. CO-RE relocates every field access at load time, so one header
# serves kernels from 5.10 on.
#
#   scripts/gen-vmlinux.sh [BTF_FILE]     # default /sys/kernel/btf/vmlinux
set -euo pipefail
cd "$(dirname "$0")/.."
btf=${1:-/sys/kernel/btf/vmlinux}
arch=$(uname -m)
case "$arch" in
  x86_64) dir=x86 ;;
  aarch64) dir=arm64 ;;
  *) echo "gen-vmlinux.sh: unsupported architecture $arch" >&2; exit 1 ;;
esac
release=$(uname -r | cut -d. -f1,2)
mkdir -p "bpf/vmlinux/$dir"
out="bpf/vmlinux/$dir/vmlinux_$release.h"
bpftool btf dump file "$btf" format c > "$out"
echo "wrote $out; point bpf/vmlinux/vmlinux.h at it"
