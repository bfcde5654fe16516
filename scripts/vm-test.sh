#!/usr/bin/env bash
# The kernel matrix: boots a Debian release's own kernel under qemu and runs
# n502trace there: `n502trace --check`, the kernel tests and the core
# end-to-end scenarios. Prints one row per kernel and test.
#
#   sudo scripts/vm-test.sh bookworm                  # Debian 12, kernel 6.1
#   sudo scripts/vm-test.sh bullseye                  # Debian 11's kernel 5.10
#   sudo scripts/vm-test.sh bookworm-backports        # Debian 12 + backports kernel (6.12)
#   sudo scripts/vm-test.sh bookworm killed reset     # only these scenarios
#   sudo scripts/vm-test.sh bookworm all              # every scenario of tests/e2e/run.py --list
#   sudo scripts/vm-test.sh --image bullseye          # only build (or check) the cached image
#
# The VM image (a debootstrapped Debian 12 root on an ext4 disk image with
# nginx-light, php-fpm, python3, iproute2, procps, nftables, and RELEASE's
# linux-image-amd64: the user space is the same for every kernel) is built
# once and cached under /var/tmp/n502trace-vm/RELEASE/,
# keyed by a recipe version: nothing but Debian packages is ever fetched,
# and a cached run fetches nothing. The guest has no network (-nic none);
# all test traffic is on its loopback. The disk is used copy-on-write
# (-snapshot), so the cached image never changes.
#
# What the guest runs comes from the host, copied per run into a directory
# the guest mounts over 9p: build/n502trace, build/tests/kernel_tests (and
# the host's libraries it is linked against: it runs with the host's ld.so,
# so the guest's glibc does not matter), tests/e2e/ and tests/vm/. The guest
# (tests/vm/guest-init.sh, PID 1) mounts what Debian would (tracefs, bpffs,
# cgroups as the v1+v2 hybrid), runs the tests, writes results into that
# directory and powers off. The host enforces a timeout and prints the
# guest's console tail when anything failed.
#
# Exit code: 0 all passed, 1 a test failed or the VM did not finish, 2 usage.
#
# Environment:
#   N502_VM_CACHE      cache root (default /var/tmp/n502trace-vm)
#   N502_VM_ACCEL      kvm | tcg (default: kvm if it starts a guest here, else tcg)
#   N502_VM_TIMEOUT    whole-VM timeout, seconds (default 1800 under tcg, 600 under kvm)
#   N502_VM_TEST_TIMEOUT  per-test timeout inside the guest, seconds (default 300)
#   N502_VM_CGROUPS    hybrid (v1 controllers + v2 at /sys/fs/cgroup/unified, what the
#                      oom scenario needs) | v2 (Debian's default; oom is then SKIP)
#   N502_VM_EXTRA      a shell script to run in the guest too (row "extra"; its output in
#                      results/extra.log), e.g. to look at something on that kernel;
#                      scenario list `none` runs no scenario
#   N502_VM_MEM, N502_VM_SMP   (default 2048, 2)
#   N502_VM_NICE       niceness of qemu (default 10)
#   N502_MIRROR        Debian mirror (default: the first URI in apt's sources)
#   BUILD_DIR          where n502trace and tests/kernel_tests are (default build)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

# Bump when the image recipe (packages, bootstrap init, initramfs set-up) changes.
RECIPE=3
# The cgroup filter reads a socket's cgroup through a layout that changed in 5.15:
# adaptive_same_user_client and adaptive_worker_moved check it on each kernel.
# self_connect checks the SYN_SENT -> SYN_RECV transition a connection to
# itself makes, in both kernel-side modes' paths.
CORE_SCENARIOS="no_listener listener_stopped killed oom segv exit reset close worker_pid reload socket_missing connect_timeout"
CORE_SCENARIOS="$CORE_SCENARIOS adaptive_same_user_client adaptive_worker_moved self_connect"
GUEST_PKGS=nginx-light,python3,procps,iproute2,nftables,kmod,php-fpm
# The user space is always Debian 12's (the Nginx 1.22.1 and Python 3.11 the
# end-to-end tests are written against: bullseye's Nginx 1.18 has no -e);
# only the kernel package comes from RELEASE's suite.
SUITE=bookworm

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

IMAGE_ONLY=0
if [ "${1:-}" = "--image" ]; then IMAGE_ONLY=1; shift; fi
[ $# -ge 1 ] || usage
RELEASE=$1; shift
case "$RELEASE" in
  bullseye)           KERNEL_SUITE=bullseye ;;
  bookworm)           KERNEL_SUITE=bookworm ;;
  bookworm-backports) KERNEL_SUITE=bookworm-backports ;;
  -h|--help) usage ;;
  *) echo "vm-test.sh: unknown release '$RELEASE' (bullseye | bookworm | bookworm-backports)" >&2; exit 2 ;;
esac
SCENARIOS=${*:-$CORE_SCENARIOS}

if [ "$(id -u)" -ne 0 ]; then
  echo "vm-test.sh: run as root (debootstrap, and the cached images are root's)" >&2
  exit 2
fi
for c in qemu-system-x86_64 debootstrap mkfs.ext4; do
  command -v "$c" >/dev/null || { echo "vm-test.sh: $c missing (apt-get install qemu-system-x86 debootstrap e2fsprogs)" >&2; exit 2; }
done

CACHE_ROOT=${N502_VM_CACHE:-/var/tmp/n502trace-vm}
CACHE=$CACHE_ROOT/$RELEASE
IMG_DIR=$CACHE/recipe-$RECIPE
BUILD=${BUILD_DIR:-build}
log() { echo "vm-test.sh[$RELEASE]: $*" >&2; }

mirror() {
  if [ -n "${N502_MIRROR:-}" ]; then echo "$N502_MIRROR"; return; fi
  local uri
  uri=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
        grep -v security | head -n1 | awk '{print $2}')
  echo "${uri:-http://deb.debian.org/debian}"
}

# ------------------------------------------------------------------ image

# PID 1 of the image: mounts the 9p share and hands over to the run's
# tests/vm/guest-init.sh (so changes to the guest side need no rebuild).
BOOT_INIT='#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /mnt/n502
modprobe -q 9pnet_virtio; modprobe -q 9p
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 n502share /mnt/n502 &&
   [ -f /mnt/n502/tests/vm/guest-init.sh ]; then
  exec /bin/bash /mnt/n502/tests/vm/guest-init.sh
fi
echo "n502vm: cannot mount the 9p share n502share" >/dev/console
echo o >/proc/sysrq-trigger
sleep 5
echo b >/proc/sysrq-trigger
'

build_image() {
  local work=$CACHE/build.tmp root mir
  root=$work/root
  mir=$(mirror)
  rm -rf "$work"
  mkdir -p "$work"
  log "building the image (recipe $RECIPE): debootstrap $SUITE from $mir, kernel from $KERNEL_SUITE"
  local t0=$SECONDS
  debootstrap --variant=minbase --include="$GUEST_PKGS" "$SUITE" "$root" "$mir" >"$work/debootstrap.log" 2>&1 || {
    log "debootstrap failed, see $work/debootstrap.log"; tail -n 20 "$work/debootstrap.log" >&2; return 1; }

  # The kernel (and its initramfs) through apt inside the root.
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod +x "$root/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
  echo "deb $mir $SUITE main" >"$root/etc/apt/sources.list"
  local kpkgs=(linux-image-amd64 initramfs-tools)
  case "$KERNEL_SUITE" in
    "$SUITE") ;;
    *-backports)
      echo "deb $mir $KERNEL_SUITE main" >>"$root/etc/apt/sources.list"
      kpkgs=(-t "$KERNEL_SUITE" "${kpkgs[@]}") ;;
    *)  # an older release's kernel on this user space (its dependencies from $SUITE)
      echo "deb $mir $KERNEL_SUITE main" >>"$root/etc/apt/sources.list"
      kpkgs=("linux-image-amd64/$KERNEL_SUITE" initramfs-tools) ;;
  esac
  mkdir -p "$root/etc/initramfs-tools"
  # No udev in the image: the initramfs loads these explicitly.
  printf '%s\n' virtio_pci virtio_blk ext4 >>"$root/etc/initramfs-tools/modules"
  mount -t proc proc "$root/proc"
  mount --bind /dev "$root/dev"
  mount -t sysfs sysfs "$root/sys"
  local rc=0
  {
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${kpkgs[@]}"
  } >"$work/kernel.log" 2>&1 || rc=$?
  umount "$root/sys" "$root/dev" "$root/proc"
  if [ $rc -ne 0 ]; then
    log "installing linux-image-amd64 failed, see $work/kernel.log"; tail -n 20 "$work/kernel.log" >&2; return 1
  fi

  local kver
  kver=$(ls "$root/lib/modules" | sort -V | tail -n1)
  [ -f "$root/boot/vmlinuz-$kver" ] && [ -f "$root/boot/initrd.img-$kver" ] || {
    log "no /boot/vmlinuz-$kver or initrd.img-$kver in the root"; return 1; }
  [ -f "$root/boot/config-$kver" ] && ! grep -q '^CONFIG_DEBUG_INFO_BTF=y' "$root/boot/config-$kver" &&
    log "warning: $kver has no CONFIG_DEBUG_INFO_BTF=y"

  printf '%s' "$BOOT_INIT" >"$root/sbin/n502-vm-init"
  chmod 755 "$root/sbin/n502-vm-init"
  echo n502vm >"$root/etc/hostname"
  : >"$root/etc/resolv.conf"
  # nginx-light's postinst may have left a default site on :80.
  rm -f "$root/etc/nginx/sites-enabled/default"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
         "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*

  cp "$root/boot/vmlinuz-$kver" "$work/vmlinuz"
  cp "$root/boot/initrd.img-$kver" "$work/initrd.img"
  echo "$kver" >"$work/kernel-release"
  local mb
  mb=$(du -sm "$root" | cut -f1)
  mkfs.ext4 -q -F -L n502root -E root_owner=0:0 -d "$root" "$work/root.img" "$(( mb + mb / 2 + 512 ))M" \
    >"$work/mkfs.log" 2>&1 || { log "mkfs.ext4 -d failed"; cat "$work/mkfs.log" >&2; return 1; }
  rm -rf "$root"
  rm -rf "$IMG_DIR"
  mv "$work" "$IMG_DIR"
  log "image ready: kernel $kver, $(du -sh --apparent-size "$IMG_DIR/root.img" | cut -f1) disk, $((SECONDS - t0)) s"
}

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [ ! -f "$IMG_DIR/root.img" ]; then
  # Older recipes are stale: remove them.
  find "$CACHE" -maxdepth 1 -name 'recipe-*' ! -name "recipe-$RECIPE" -exec rm -rf {} +
  build_image
fi
KVER=$(cat "$IMG_DIR/kernel-release")
if [ $IMAGE_ONLY = 1 ]; then
  echo "$IMG_DIR (kernel $KVER)"
  exit 0
fi

# ------------------------------------------------------------------ the run's share

BIN=$BUILD/n502trace
KTESTS=$BUILD/tests/kernel_tests
[ -x "$BIN" ] || { echo "vm-test.sh: $BIN missing (build first: cmake --build $BUILD)" >&2; exit 2; }
RUN=$CACHE/run
rm -rf "$RUN"
SHARE=$RUN/share
mkdir -p "$SHARE/build/tests" "$SHARE/tests" "$SHARE/lib" "$SHARE/results"
cp "$BIN" "$SHARE/build/n502trace"
cp -r tests/e2e tests/vm "$SHARE/tests/"
rm -rf "$SHARE/tests/e2e/__pycache__"
if [ -x "$KTESTS" ]; then
  cp "$KTESTS" "$SHARE/build/tests/kernel_tests"
  # A dynamically linked test binary runs with the host's loader and libraries.
  if ldd "$KTESTS" >/dev/null 2>&1; then
    ldd "$KTESTS" | awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}' | while read -r lib; do
      cp -L "$lib" "$SHARE/lib/"
    done
  fi
else
  log "warning: $KTESTS missing: kernel_tests will be reported MISSING"
fi
if [ -n "${N502_VM_EXTRA:-}" ]; then
  cp "$N502_VM_EXTRA" "$SHARE/extra.sh"
fi
[ "$SCENARIOS" = none ] && SCENARIOS=
{
  echo "SCENARIOS='$SCENARIOS'"
  echo "TEST_TIMEOUT=${N502_VM_TEST_TIMEOUT:-300}"
  echo "CGROUPS=${N502_VM_CGROUPS:-hybrid}"
  echo "HOST_START=$(date +%s)"
} >"$SHARE/vm.conf"

# ------------------------------------------------------------------ boot

kvm_works() {
  [ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
  # Opening /dev/kvm is not enough (nested set-ups refuse to run a vCPU):
  # boot the kernel for a moment and look for its first console line.
  local out
  out=$(timeout 20 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nic none -display none -monitor none \
        -serial stdio -no-reboot -kernel "$IMG_DIR/vmlinuz" -append "console=ttyS0 panic=-1 root=/dev/nonexistent" \
        </dev/null 2>&1 | head -c 20000 || true)
  grep -q 'Linux version' <<<"$out"
}
ACCEL=${N502_VM_ACCEL:-}
if [ -z "$ACCEL" ]; then
  if kvm_works; then ACCEL=kvm; else ACCEL=tcg; fi
fi
if [ "$ACCEL" = kvm ]; then
  CPU=(-accel kvm -cpu host)
  TIMEOUT=${N502_VM_TIMEOUT:-600}
else
  # tcg: the "max" CPU model gives the guest every feature qemu can emulate.
  CPU=(-accel tcg,thread=multi -cpu max)
  TIMEOUT=${N502_VM_TIMEOUT:-1800}
fi

CONSOLE=$RUN/console.log
log "booting $KVER under $ACCEL ($SCENARIOS; timeout ${TIMEOUT}s)"
T0=$SECONDS
set +e
timeout -k 10 "$TIMEOUT" nice -n "${N502_VM_NICE:-10}" qemu-system-x86_64 \
  "${CPU[@]}" -m "${N502_VM_MEM:-2048}" -smp "${N502_VM_SMP:-2}" \
  -nic none -display none -monitor none -serial stdio -no-reboot \
  -kernel "$IMG_DIR/vmlinuz" -initrd "$IMG_DIR/initrd.img" \
  -append "root=/dev/vda rootfstype=ext4 rw console=ttyS0 init=/sbin/n502-vm-init panic=-1 loglevel=4 net.ifnames=0" \
  -drive "file=$IMG_DIR/root.img,if=virtio,format=raw,snapshot=on" \
  -virtfs "local,path=$SHARE,mount_tag=n502share,security_model=none,id=n502share" \
  </dev/null >"$CONSOLE" 2>&1 &
QEMU=$!
# Follow the rows as the guest prints them.
tail --pid="$QEMU" -n +1 -F "$CONSOLE" 2>/dev/null | sed -u -n 's/\r$//; s/^n502vm-row /  /p' >&2 &
TAIL=$!
wait $QEMU
QRC=$?
set -e
wait "$TAIL" 2>/dev/null || true   # tail --pid ends within a second of qemu
WALL=$((SECONDS - T0))

RES=$SHARE/results/results.tsv
FAIL=0
echo
printf '%-24s %-24s %-8s %8s\n' KERNEL TEST RESULT SECONDS
if [ -s "$RES" ]; then
  while IFS=$'\t' read -r k t r s; do
    printf '%-24s %-24s %-8s %8s\n' "$k" "$t" "$r" "$s"
    case "$r" in PASS|SKIP) ;; *) FAIL=1 ;; esac
  done <"$RES"
fi
DONE=0
[ -f "$SHARE/results/done" ] && DONE=1
if [ $DONE = 0 ]; then
  FAIL=1
  if [ $QRC = 124 ] || [ $QRC = 137 ]; then
    printf '%-24s %-24s %-8s %8s\n' "$KVER" vm TIMEOUT "$WALL"
  else
    printf '%-24s %-24s %-8s %8s\n' "$KVER" vm "EXIT$QRC" "$WALL"
  fi
fi
echo "($ACCEL, VM wall time ${WALL}s; logs: $SHARE/results, console: $CONSOLE)"

if [ $FAIL = 1 ]; then
  echo
  echo "== guest console (last 60 lines)"
  tr -d '\r' <"$CONSOLE" | grep -v '^n502vm-row' | tail -n 60
  if [ -s "$RES" ]; then
    while IFS=$'\t' read -r k t r s; do
      case "$r" in PASS|SKIP) continue ;; esac
      f=$SHARE/results/$t.log
      [ -f "$f" ] || continue
      echo
      echo "== $t ($r): last 40 lines of $f"
      tail -n 40 "$f"
    done <"$RES"
    # Why each failed, last: a log's tail is often Nginx's, and CI may keep
    # only the end of the output.
    echo
    echo "== why"
    while IFS=$'\t' read -r k t r s; do
      case "$r" in PASS|SKIP) continue ;; esac
      f=$SHARE/results/$t.log
      [ -f "$f" ] || continue
      grep -m 3 -A 3 -E '^==== FAIL|FAILED:' "$f" | cut -c1-300 | sed "s|^|$t: |"
    done <"$RES"
  fi
  exit 1
fi
exit 0
