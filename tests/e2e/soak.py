#!/usr/bin/python3
"""Soak: n502trace attached to a real Nginx for N minutes (default 10) under
steady load (a new upstream connection per request), with recurring faults
(upstream killed mid-request, nothing listening, reset, exit), log rotations
(rename + USR1) and reloads (HUP). Reports n502trace's RSS over time, kernel
events lost, and verdicts produced against faults injected, per cause.
Must run as root.

    soak.py --bin build/n502trace [--minutes 10]
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check  # noqa: E402

EXPECTED = {"killed": "upstream_killed", "no_listener": "upstream_not_listening",
            "reset": "upstream_reset", "exit": "upstream_exited"}


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def inject(h, nginx, port, kind):
    """One fault on /fault; returns once Nginx answered 502."""
    if kind == "killed":
        up = h.start_upstream("hang", port=port)
        req = harness.BackgroundRequest(nginx.port, "/fault")
        req.start()
        up.wait_request(1)
        harness.spawn_kill(signal.SIGKILL, up.pid)
        r = req.result()
        up.wait_exit()
    elif kind == "no_listener":
        harness.wait_port_refusing(port)
        r = harness.http_get(nginx.port, "/fault")
    else:
        up = h.start_upstream(kind, port=port)
        r = harness.http_get(nginx.port, "/fault")
        up.wait_request(1)
        if kind == "exit":
            up.wait_exit()
        else:
            up.stop()
    check(r.status == 502, "%s: status %r, want 502" % (kind, r.status))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--minutes", type=float, default=10)
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    duration = args.minutes * 60
    h = harness.Harness("soak")
    wrk = None
    ok = False
    try:
        ok_port, fault_port = harness.free_port(), harness.free_port()
        nginx = h.start_nginx([("/ok", "http://127.0.0.1:%d" % ok_port), ("/fault", "http://127.0.0.1:%d" % fault_port)],
                              http_extra='server { listen 127.0.0.1:%d; location / { return 200 "ok\\n"; } }' % ok_port)
        tool = h.start_tool(binary)
        t0 = time.monotonic()
        wrk = subprocess.Popen(["wrk", "-t1", "-c4", "-d%ds" % int(duration + 5), "http://127.0.0.1:%d/ok" % nginx.port],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        faults = {k: 0 for k in EXPECTED}
        rss = []
        rotations = reloads = 0
        next_rss = next_rotate = next_reload = 0.0
        kinds = list(EXPECTED)
        i = 0
        while time.monotonic() - t0 < duration:
            now = time.monotonic() - t0
            if now >= next_rss:
                rss.append((int(now), rss_mib(tool.proc.pid)))
                next_rss += 30
            if now >= next_rotate and now > 0:
                os.rename(nginx.error_log, nginx.error_log + ".%d" % rotations)
                os.kill(nginx.master_pid, signal.SIGUSR1)
                harness.wait_until(lambda: os.path.exists(nginx.error_log) or None, 10, "nginx to reopen its log")
                rotations += 1
            if now >= next_rotate:
                next_rotate += 60
            if now >= next_reload and now > 0:
                old = set(nginx.worker_pids())
                os.kill(nginx.master_pid, signal.SIGHUP)
                harness.wait_until(lambda: (lambda k: k if k and not (set(k) & old) else None)(nginx.worker_pids()),
                                   30, "new workers after a reload")
                reloads += 1
            if now >= next_reload:
                next_reload += 90
            kind = kinds[i % len(kinds)]
            inject(h, nginx, fault_port, kind)
            faults[kind] += 1
            i += 1
            time.sleep(0.5)  # pacing between faults, not synchronisation
        rss.append((int(time.monotonic() - t0), rss_mib(tool.proc.pid)))
        total = sum(faults.values())
        harness.wait_until(lambda: len(tool.records("verdict")) >= total or None, 5, "%d verdicts" % total)
        wrk.send_signal(signal.SIGINT)
        out = wrk.communicate(timeout=30)[0].decode(errors="replace")
        wrk = None
        tool.stop()
        summary = tool.records("summary")[-1]
        by_cause = {}
        for v in tool.records("verdict"):
            by_cause[v["cause"]] = by_cause.get(v["cause"], 0) + 1
        print("soak: %.1f min, %d faults injected, %d rotations, %d reloads" % (args.minutes, total, rotations, reloads))
        print("load: " + " ".join(l.strip() for l in out.splitlines() if "Requests/sec" in l or "requests in" in l))
        print("| fault | injected | expected cause | verdicts with that cause |")
        print("|---|---:|---|---:|")
        for k, n in faults.items():
            print("| %s | %d | %s | %d |" % (k, n, EXPECTED[k], by_cause.get(EXPECTED[k], 0)))
        print("other verdicts: %r" % {c: n for c, n in by_cause.items() if c not in EXPECTED.values()})
        print("kernel events: %d seen, %d lost" % (summary["events"], summary["events_lost"]))
        print("n502trace RSS (MiB) every 30 s: " + ", ".join("%ds %.1f" % (t, m) for t, m in rss))
        check(summary["events_lost"] == 0, "%d events lost" % summary["events_lost"])
        check(max(m for _, m in rss) < 30, "RSS reached %.1f MiB" % max(m for _, m in rss))
        for k, n in faults.items():
            check(by_cause.get(EXPECTED[k], 0) == n, "%s: %d injected, %d %s verdicts" % (
                k, n, by_cause.get(EXPECTED[k], 0), EXPECTED[k]))
        check(summary["verdicts"] == total, "%d verdicts for %d faults" % (summary["verdicts"], total))
        ok = True
    except harness.Failure as e:
        print("FAIL soak: %s" % e)
    finally:
        if wrk is not None:
            wrk.kill()
            wrk.wait()
        h.close()
    print("PASS soak" if ok else "FAIL soak")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
