#!/usr/bin/env bash
# Runs the whole end-to-end scenario suite against the real binary and prints,
# per asserted verdict: the scenario, Nginx's message, what the message alone
# suggests (log_only_cause), n502trace's cause, and whether that cause is the
# true one (the fault the scenario injected). Totals at the end. Needs root.
#
#   sudo scripts/accuracy.sh [--bin build/n502trace] [--out accuracy.md]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=build/n502trace
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "usage: scripts/accuracy.sh [--bin PATH] [--out FILE]" >&2; exit 2 ;;
  esac
done
if [ ! -x "$BIN" ]; then
  echo "accuracy.sh: $BIN is not built (run scripts/test.sh or cmake --build build)" >&2; exit 2
fi
results=$(mktemp)
trap 'rm -f "$results"' EXIT
/usr/bin/python3 tests/e2e/run.py --bin "$BIN" --all --results "$results" >&2 || true
table=$(/usr/bin/python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def cell(s):
    return (s or "-").replace("|", "\\|")
print("| scenario | Nginx's message | log-only cause | n502trace's cause | correct |")
print("|---|---|---|---|---|")
ok = 0
for r in rows:
    correct = r.get("cause") is not None and r.get("cause") == r.get("expected")
    ok += correct
    msg = r.get("nginx_message") or "-"
    if len(msg) > 70:
        msg = msg[:67] + "..."
    print("| %s | %s | %s | %s | %s |" % (r["scenario"], cell(msg), cell(r.get("log_only_cause")),
                                         cell(r.get("cause")), "yes" if correct else "NO (want %s)" % r.get("expected")))
lo = sum(1 for r in rows if r.get("log_only_cause") == r.get("expected"))
print()
print("n502trace: %d/%d verdicts name the true cause; the log message alone: %d/%d." % (ok, len(rows), lo, len(rows)))
PY
)
echo "$table"
if [ -n "$OUT" ]; then echo "$table" > "$OUT"; fi
