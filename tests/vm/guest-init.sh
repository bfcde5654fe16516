#!/bin/bash
# PID 1 of a scripts/vm-test.sh guest (exec'd by the image's /sbin/n502-vm-init
# once the 9p share is mounted at /mnt/n502). Mounts what a Debian system
# has, runs `n502trace --check`, the kernel tests and the end-to-end scenarios
# named in /mnt/n502/vm.conf, writes one row per test to
# /mnt/n502/results/results.tsv (kernel, test, PASS|FAIL|SKIP|TIMEOUT, seconds)
# and each test's output to /mnt/n502/results/TEST.log, then powers off.
#
# bash as PID 1 also reaps orphans: it waits with waitpid(-1), so a daemonised
# Nginx's master is reaped when it exits, as under a real init.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export LANG=C.UTF-8 HOME=/root
SHARE=/mnt/n502
OUT=$SHARE/results
mkdir -p "$OUT"

say() { echo "n502vm: $*" >/dev/console; }

poweroff_now() {
  sync
  echo o >/proc/sysrq-trigger
  sleep 10
  echo b >/proc/sysrq-trigger
  sleep 100
}

mnt() {  # mnt TYPE SOURCE DIR [OPTIONS]
  mkdir -p "$3"
  mountpoint -q "$3" && return 0
  mount -t "$1" ${4:+-o "$4"} "$2" "$3" && return 0
  say "mount -t $1 $3 failed"
  rmdir "$3" 2>/dev/null  # no empty directory where a hierarchy would be
  return 0
}

# ---------------------------------------------------------------- system set-up

mnt proc proc /proc
mnt sysfs sysfs /sys
mnt devtmpfs devtmpfs /dev
mnt devpts devpts /dev/pts "gid=5,mode=620,ptmxmode=000"
mnt tmpfs tmpfs /dev/shm "mode=1777,nosuid,nodev"
mnt tmpfs tmpfs /run "mode=755,nosuid,nodev"
mnt tmpfs tmpfs /tmp "mode=1777,nosuid,nodev"
mkdir -p /run/lock /run/nginx
mnt securityfs securityfs /sys/kernel/security
mnt debugfs debugfs /sys/kernel/debug
mnt tracefs tracefs /sys/kernel/tracing
mnt bpf bpf /sys/fs/bpf "mode=700"
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr

. "$SHARE/vm.conf"
CGROUPS=${CGROUPS:-hybrid}

# cgroups: the layout of a Debian system booted with
# systemd.unified_cgroup_hierarchy=0 (v1 controllers, v2 at /sys/fs/cgroup/unified),
# which the oom scenario needs (a v1 memory cgroup); or plain v2.
if [ "$CGROUPS" = v2 ]; then
  mnt cgroup2 cgroup2 /sys/fs/cgroup "nsdelegate"
else
  mnt tmpfs cgroup /sys/fs/cgroup "mode=755,nosuid,nodev,noexec"
  mnt cgroup2 cgroup2 /sys/fs/cgroup/unified "nsdelegate"
  mnt cgroup cgroup /sys/fs/cgroup/systemd "none,name=systemd"
  while read -r name _ _ enabled; do
    case "$name" in '#'*|'') continue ;; esac
    [ "$enabled" = 1 ] || continue
    case "$name" in
      cpu|cpuacct) mnt cgroup cgroup /sys/fs/cgroup/cpu,cpuacct "cpu,cpuacct"
                   ln -sfn cpu,cpuacct /sys/fs/cgroup/cpu; ln -sfn cpu,cpuacct /sys/fs/cgroup/cpuacct ;;
      net_cls|net_prio) mnt cgroup cgroup /sys/fs/cgroup/net_cls,net_prio "net_cls,net_prio"
                   ln -sfn net_cls,net_prio /sys/fs/cgroup/net_cls; ln -sfn net_cls,net_prio /sys/fs/cgroup/net_prio ;;
      *) mnt cgroup cgroup "/sys/fs/cgroup/$name" "$name" ;;
    esac
  done </proc/cgroups
fi

hostname n502vm
ip link set lo up
ulimit -c 0
echo 0 >/proc/sys/kernel/printk_ratelimit 2>/dev/null
# Kernel messages above warnings only (they interleave with our rows otherwise).
echo 4 >/proc/sys/kernel/printk

KVER=$(uname -r)
RES=$OUT/results.tsv
: >"$RES"
FAILED=0

row() {  # row TEST RESULT SECONDS
  printf '%s\t%s\t%s\t%s\n' "$KVER" "$1" "$2" "$3" >>"$RES"
  printf 'n502vm-row %-24s %-24s %-8s %6s\n' "$KVER" "$1" "$2" "$3" >/dev/console
  sync
}

# run TEST COMMAND...: output to TEST.log; exit 0 PASS, 77 SKIP, timeout TIMEOUT, else FAIL.
run() {
  local name=$1; shift
  local t0 t1 rc res
  t0=$(date +%s.%N)
  timeout -k 5 "$TEST_TIMEOUT" "$@" >"$OUT/$name.log" 2>&1 </dev/null
  rc=$?
  t1=$(date +%s.%N)
  case $rc in
    0) res=PASS ;;
    77) res=SKIP ;;
    124|137) res=TIMEOUT ;;
    *) res=FAIL ;;
  esac
  echo "exit code $rc" >>"$OUT/$name.log"
  [ "$res" = PASS ] || [ "$res" = SKIP ] || FAILED=1
  row "$name" "$res" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')"
}

{
  echo "kernel: $(uname -a)"
  echo "btf: $(ls -l /sys/kernel/btf/vmlinux 2>&1)"
  echo "tracefs: $(ls /sys/kernel/tracing/events 2>/dev/null | wc -l) event groups"
  echo "cgroups ($CGROUPS):"; mount -t cgroup,cgroup2
  echo "memlock: $(ulimit -l)"
  echo "nginx: $(/usr/sbin/nginx -v 2>&1)"
  echo "python: $(/usr/bin/python3 --version 2>&1)"
  echo "nft: $(/usr/sbin/nft --version 2>&1)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo)"
} >"$OUT/environment.log" 2>&1
say "kernel $KVER up after $(cut -d' ' -f1 /proc/uptime) s; running tests"

BIN=$SHARE/build/n502trace
run check "$BIN" --check

KT=$SHARE/build/tests/kernel_tests
if [ ! -e "$KT" ]; then
  row kernel_tests MISSING 0
  FAILED=1
elif [ -e "$SHARE/lib/ld-linux-x86-64.so.2" ]; then
  # Linked against the host's libraries: run it with the host's loader.
  run kernel_tests "$SHARE/lib/ld-linux-x86-64.so.2" --library-path "$SHARE/lib" "$KT"
else
  run kernel_tests "$KT"
fi

if [ -f "$SHARE/extra.sh" ]; then
  run extra /bin/bash "$SHARE/extra.sh"
fi

cd "$SHARE/tests/e2e"
[ "$SCENARIOS" = all ] && SCENARIOS=$(/usr/bin/python3 "$SHARE/tests/e2e/run.py" --list)
for s in $SCENARIOS; do
  if [ "$s" = oom ] && ! mountpoint -q /sys/fs/cgroup/memory &&
     ! grep -qsw memory /sys/fs/cgroup/unified/cgroup.controllers /sys/fs/cgroup/cgroup.controllers; then
    # Debian's 6.12 has no v1 memory controller (# CONFIG_MEMCG_V1 is not set):
    # the test then uses the v2 one; with neither there is nothing to limit.
    echo "no memory cgroup controller, v1 or v2 (CGROUPS=$CGROUPS;" \
      "$(grep -s MEMCG_V1 /boot/config-"$KVER")); the oom scenario needs one" >"$OUT/$s.log"
    row "$s" SKIP 0
    continue
  fi
  run "$s" /usr/bin/python3 "$SHARE/tests/e2e/run.py" --bin "$BIN" "$s"
done

{
  echo "== processes left"
  ps -eo pid,ppid,stat,comm
  echo "== dmesg (warnings and worse)"
  dmesg --level=emerg,alert,crit,err,warn 2>&1 | tail -n 100
} >"$OUT/after.log" 2>&1
echo "$FAILED" >"$OUT/done"
say "done (failed=$FAILED) after $(cut -d' ' -f1 /proc/uptime) s"
poweroff_now
