#!/usr/bin/env bash
# n502trace demo: a throwaway Nginx on loopback whose locations fail in six
# different ways, n502trace attached to it (human output), one request per
# location, then SIGINT so the tool prints its summary. Cleans up on exit.
#
# Run as root (no sudo needed):  scripts/demo.sh
# Environment (optional):
#   DEMO_SKIP_BUILD=1        skip install-deps.sh and the build
#   N502TRACE_BIN=PATH       the binary to run (default: build/n502trace)
#   DEMO_TIMEOUT=SECONDS     how long to wait for ready / for verdicts (default 30)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=/usr/bin/python3
DEMO="$ROOT/tests/e2e/demo.py"
BIN=${N502TRACE_BIN:-$ROOT/build/n502trace}
TIMEOUT=${DEMO_TIMEOUT:-30}

say() { printf '\033[1mdemo:\033[0m %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (n502trace loads BPF programs; Nginx runs as www-data)"

if [ "${DEMO_SKIP_BUILD:-0}" != 1 ]; then
    say "installing dependencies (scripts/install-deps.sh)"
    bash scripts/install-deps.sh
    say "building"
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
    cmake --build build -j2
fi
[ -x "$BIN" ] || die "$BIN is not an executable (build failed?)"
[ -x /usr/sbin/nginx ] || die "/usr/sbin/nginx is missing (install-deps.sh installs nginx)"
[ -x "$PY" ] || die "$PY is missing"

WORK=$(mktemp -d /tmp/n502-demo.XXXXXX)
TOOL_PID=
cleanup() {
    local rc=$?
    set +e
    if [ -n "$TOOL_PID" ] && kill -0 "$TOOL_PID" 2>/dev/null; then
        kill -INT "$TOOL_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$TOOL_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$TOOL_PID" 2>/dev/null
        wait "$TOOL_PID" 2>/dev/null
    fi
    "$PY" "$DEMO" down "$WORK"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting a throwaway Nginx and faulty upstreams in $WORK"
NGINX_PID=$("$PY" "$DEMO" up "$WORK")
NLOC=$("$PY" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["locations"]))' "$WORK/state.json")
say "nginx master pid $NGINX_PID; $NLOC locations: no_listener reset close segv exit killed"

# The tool's output goes to the terminal and to a file we poll.
say "starting: $BIN --nginx-pid $NGINX_PID"
# set -m: without job control bash starts background commands with SIGINT
# ignored, and we want `kill -INT` (and only that, from us) to reach the tool.
set -m
"$BIN" --nginx-pid "$NGINX_PID" < /dev/null > >(tee "$WORK/tool.out") 2>&1 &
TOOL_PID=$!
set +m

# wait_for DESC CMD...: poll CMD every 0.1 s for up to $TIMEOUT s while the tool lives
wait_for() {
    local desc=$1; shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@"; do
        kill -0 "$TOOL_PID" 2>/dev/null || die "n502trace exited while waiting for $desc"
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}
is_ready() { grep -qE '(^n502trace: ready|"type": ?"ready")' "$WORK/tool.out" 2>/dev/null; }
headlines() { local n; n=$(grep -cE '^(502|504) ' "$WORK/tool.out" 2>/dev/null) || true; echo "${n:-0}"; }
all_verdicts() { [ "$(headlines)" -ge "$NLOC" ]; }

wait_for "its ready line" is_ready || die "n502trace not ready after ${TIMEOUT}s"

say "firing one request per location"
"$PY" "$DEMO" fire "$WORK" || say "warning: not every request got a 502"

if wait_for "verdicts" all_verdicts; then
    say "all $NLOC verdicts printed"
else
    say "warning: only $(headlines) of $NLOC verdict headlines after ${TIMEOUT}s"
fi

say "stopping n502trace (SIGINT) for its summary"
kill -INT "$TOOL_PID"
rc=0
wait "$TOOL_PID" || rc=$?
TOOL_PID=
[ "$rc" -eq 0 ] || die "n502trace exited with status $rc"
say "done"
