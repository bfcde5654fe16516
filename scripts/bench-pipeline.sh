#!/usr/bin/env bash
# The user-space pipeline alone (decoder + state + correlator), on one core.
# Records a real event stream: n502trace --raw-record while wrk drives an
# Nginx whose upstream alternates between answering (new connection per
# request) and refusing (a 502 storm), then replays that stream through the
# pipeline until at least 1 million events have passed, correlating the error
# log recorded with it. Target: >= 1,000,000 events/s. Needs root.
#
#   sudo scripts/bench-pipeline.sh [--bin build/n502trace] [--replay build/tests/bench_pipeline]
#                                  [--events 2000000] [--per-sec 20] [--keep DIR | --from DIR]
#
# Verdicts pass the output rate limit as in the tool (--per-sec is its
# --max-verdicts-per-sec, 20 by default): a storm's repeats are decided and
# counted, not explained. --per-sec 0 explains every verdict in full (the
# measure of builds before the correlator asked the limit).
#
# --keep DIR saves the recorded stream and its error log (DIR/events.raw,
# DIR/error.log); --from DIR replays a saved pair instead of recording one,
# so that two builds (--replay) can be compared on the same stream.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/build/n502trace
REPLAY=$ROOT/build/tests/bench_pipeline
EVENTS=2000000
PER_SEC=20
KEEP=""
FROM=""
usage="usage: scripts/bench-pipeline.sh [--bin PATH] [--replay PATH] [--events N] [--per-sec N] [--keep DIR | --from DIR]"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin|--replay|--events|--per-sec|--keep|--from)
      [ $# -ge 2 ] || { echo "bench-pipeline.sh: $1 needs a value" >&2; echo "$usage" >&2; exit 2; } ;;
  esac
  case "$1" in
    --bin) BIN=$2; shift 2 ;;
    --replay) REPLAY=$2; shift 2 ;;
    --events) EVENTS=$2; shift 2 ;;
    --per-sec) PER_SEC=$2; shift 2 ;;
    --keep) KEEP=$2; shift 2 ;;
    --from) FROM=$2; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
# Paths given are the caller's: made absolute before moving to the tree.
for v in BIN REPLAY KEEP FROM; do
  [ -n "${!v}" ] && printf -v "$v" '%s' "$(realpath -m -- "${!v}")"
done
cd "$ROOT"
[[ $EVENTS =~ ^[0-9]+$ ]] || { echo "bench-pipeline.sh: --events must be a whole number, not '$EVENTS'" >&2; exit 2; }
[[ $PER_SEC =~ ^[0-9]+$ ]] || { echo "bench-pipeline.sh: --per-sec must be a whole number, not '$PER_SEC'" >&2; exit 2; }
if [ -n "$KEEP" ] && [ -n "$FROM" ]; then
  echo "bench-pipeline.sh: --keep records a new stream, --from replays a saved one: give one of them" >&2
  exit 2
fi
if [ -n "$KEEP" ]; then
  mkdir -p -- "$KEEP" && [ -w "$KEEP" ] || { echo "bench-pipeline.sh: cannot write to $KEEP" >&2; exit 2; }
fi
[ -x "$REPLAY" ] || { echo "bench-pipeline.sh: $REPLAY is not built (cmake --build build)" >&2; exit 2; }
if [ -n "$FROM" ]; then
  for f in "$FROM/events.raw" "$FROM/error.log"; do
    [ -s "$f" ] || { echo "bench-pipeline.sh: $f is missing or empty (save one with --keep $FROM)" >&2; exit 2; }
  done
  taskset -c 0 "$REPLAY" "$FROM/events.raw" --events "$EVENTS" --log "$FROM/error.log" --per-sec "$PER_SEC"
  exit
fi
[ -x "$BIN" ] || { echo "bench-pipeline.sh: $BIN is not built (cmake --build build)" >&2; exit 2; }
command -v wrk >/dev/null || scripts/install-deps.sh

dir=$(mktemp -d /tmp/n502-pipeline-XXXXXX)
tool=""
cleanup() {
  [ -n "$tool" ] && kill -INT "$tool" 2>/dev/null && wait "$tool" 2>/dev/null || true
  [ -f "$dir/nginx.pid" ] && nginx -p "$dir" -c "$dir/nginx.conf" -s stop 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# The dead port from outside the local port range: one inside it is, sooner
# or later, the source port the kernel gives a connect to it, which then
# meets itself (cause upstream_self_connect, and a worker connection held
# until Nginx's read timeout).
free_port_outside_range() {
  /usr/bin/python3 -c '
import random, socket, sys
lo, hi = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
ports = list(range(max(1024, lo - 8192), lo)) + list(range(hi + 1, min(65536, hi + 4097)))
if not ports:  # the range is everything: a port inside it (a connect may meet itself)
    print("bench-pipeline.sh: no port outside the local port range %d-%d" % (lo, hi), file=sys.stderr)
    ports = [0]
random.shuffle(ports)
for p in ports:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        print(s.getsockname()[1])
        break
    except OSError:
        continue
    finally:
        s.close()
else:
    sys.exit("no free port outside the local port range %d-%d" % (lo, hi))'
}
front=$(free_port); ok=$(free_port); dead=$(free_port_outside_range)
cat > "$dir/nginx.conf" <<CONF
user www-data;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log error;
events { worker_connections 1024; }
http {
  access_log off;
  upstream mixed { server 127.0.0.1:$ok; server 127.0.0.1:$dead max_fails=0; }
  server { listen 127.0.0.1:$front; location / { proxy_pass http://mixed; proxy_next_upstream off; } }
  server { listen 127.0.0.1:$ok; location / { return 200 "ok\n"; } }
}
CONF
nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
for _ in $(seq 100); do [ -s "$dir/nginx.pid" ] && break; sleep 0.05; done
"$BIN" --nginx-pid "$(cat "$dir/nginx.pid")" --json --raw-record "$dir/events.raw" > "$dir/out.json" 2> "$dir/err.txt" &
tool=$!
for _ in $(seq 200); do grep -q '"type":"ready"' "$dir/out.json" 2>/dev/null && break; sleep 0.05; done
grep -q '"type":"ready"' "$dir/out.json" || { echo "n502trace did not become ready:"; cat "$dir/err.txt"; exit 1; }
wrk -t1 -c8 -d3s "http://127.0.0.1:$front/" | grep -E "Requests/sec|Non-2xx" || true
kill -INT "$tool"; wait "$tool" || true; tool=""
tail -1 "$dir/out.json"
echo "recorded $(stat -c %s "$dir/events.raw") bytes of events, $(grep -c 'Connection refused' "$dir/error.log") error lines"
if [ -n "$KEEP" ]; then
  cp "$dir/events.raw" "$dir/error.log" "$KEEP/"
  echo "saved to $KEEP (replay it: scripts/bench-pipeline.sh --from $KEEP)"
fi
taskset -c 0 "$REPLAY" "$dir/events.raw" --events "$EVENTS" --log "$dir/error.log" --per-sec "$PER_SEC"
