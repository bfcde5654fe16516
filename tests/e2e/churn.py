#!/usr/bin/python3
"""Thousands of short-lived upstream processes: a CGI-style upstream forks a
process per request (each accepts one connection and exits) while wrk loads
it through Nginx. Then one of those processes is killed mid-request: the
verdict must name that very process, with nothing lost, no map full, and
memory bounded. Must run as root.

    churn.py --bin build/n502trace [--seconds 5]
"""
import argparse
import os
import signal
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check  # noqa: E402

PROCESSES = 1000  # upstream processes that must have served a request
MAX_RUNS = 4      # wrk runs of --seconds each, at most


def scenario(h, binary, seconds):
    port = harness.free_port()
    nginx = h.start_nginx([("/", "http://127.0.0.1:%d" % port)])
    tool = h.start_tool(binary)
    up = h.start_upstream("churn", port=port)
    # Load until a thousand processes have served a request (on a slow
    # machine that takes longer than one run), within a bound.
    n = 0
    for _ in range(MAX_RUNS):
        r = subprocess.run(["wrk", "-t1", "-c4", "-d%ds" % seconds, "http://127.0.0.1:%d/" % nginx.port],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=seconds + 30)
        out = r.stdout.decode(errors="replace")
        reqs = [l for l in out.splitlines() if "requests in" in l]
        check(reqs and "Non-2xx" not in out, "wrk: %s" % out)
        n += int(reqs[0].split()[0])
        if n >= PROCESSES:
            break
    harness.log("%d requests, each served by its own upstream process" % n)
    check(n >= PROCESSES, "only %d requests in %d runs of %d s: not thousands of processes" % (
        n, MAX_RUNS, seconds))
    req = harness.BackgroundRequest(nginx.port, "/hang")
    req.start()
    line = up.out.wait_for(lambda: next((t for _, t in up.out.lines if t.startswith("REQUEST")), None),
                           10, "REQUEST from a child")
    child = int(line.split()[1])
    check(child != up.pid, "the parent answered, not a child")
    killer = harness.spawn_kill(signal.SIGKILL, child)
    resp = req.result()
    check(resp.status == 502, "status %r" % resp.status)
    _, v = tool.wait_record("verdict", timeout=5)
    harness.log("verdict: %s (upstream_pid %s)" % (v["cause"], v["upstream_pid"]))
    check(v["cause"] == "upstream_killed", "cause %r: %s" % (v["cause"], v["explanation"]))
    check(v["upstream_pid"] == child, "upstream_pid %r, want the child %d" % (v["upstream_pid"], child))
    check(any(e.get("event") == "signal" and e.get("pid") == killer for e in v["evidence"]),
          "no signal evidence from the killer")
    with open("/proc/%d/status" % tool.proc.pid) as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    # (Sanitizer builds carry shadow memory: their RSS says nothing about ours.)
    if not os.environ.get("N502_SANITIZED"):
        check(rss < 30 * 1024, "RSS %d KiB" % rss)
    tool.stop()
    s = tool.records("summary")[-1]
    harness.log("summary: %d events, %d lost, %d map full; RSS %d KiB" % (
        s["events"], s["events_lost"], s["map_full"], rss))
    check(s["events_lost"] == 0 and s["map_full"] == 0, "lost %r, map full %r" % (s["events_lost"], s["map_full"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    return harness.run_single("churn", lambda h: scenario(h, os.path.abspath(args.bin), args.seconds))


if __name__ == "__main__":
    sys.exit(main())
