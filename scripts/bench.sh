#!/usr/bin/env bash
# Performance benchmark: the cost of n502trace on a loaded Nginx, next to the
# usual alternatives (tcpdump on the upstream port, Nginx's debug log).
#
# A throwaway Nginx (temp prefix, loopback only) proxies to a second server
# block of the same Nginx, loaded by wrk. Modes are interleaved round by round
# (none, hooks, n502trace, full, tcpdump, debug, none, ...); medians and ratios to `none`
# are printed as Markdown tables and written to --out. Needs root.
#
#   sudo scripts/bench.sh                       # 7 rounds x 10 s per mode and variant (~15 min)
#   sudo scripts/bench.sh --quick               # smoke test: 5 rounds x 2 s (~2 min)
#   sudo scripts/bench.sh --soak-minutes 10     # then n502trace's RSS under 10 min of load
#   sudo scripts/bench.sh --soak-minutes 10 --soak-only
#   sudo scripts/bench.sh --op-costs            # what each kind of BPF work costs here (~5 min)
#
# Options: --rounds N --duration S --variants new_conn,keepalive
#          --modes none,hooks,n502trace,full,baseline,tcpdump,debug[,minimal,ownerless] --out FILE --bin PATH
#          --bpf-stats (also each BPF program's run time per request)
#          --baseline-bin PATH (mode baseline: another n502trace build, an A/B in one run)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "bench.sh: run as root (BPF, nginx with user www-data, tcpdump): sudo scripts/bench.sh" >&2
  exit 2
fi
if ! command -v wrk >/dev/null || ! command -v tcpdump >/dev/null || [ ! -x /usr/sbin/nginx ]; then
  scripts/install-deps.sh
fi
exec /usr/bin/python3 scripts/bench.py "$@"
