#!/usr/bin/python3
"""A stand-in for n502trace, for testing the e2e harness and demo.sh only.

It reads nothing from the kernel: it tails Nginx's error log and guesses the
cause from the message alone, with no evidence. So with it run.py should
PASS no_listener and FAIL the others on missing evidence / wrong cause,
printing the failure report; that exercises the harness's tool path.

    fake_n502trace.py --nginx-pid PID [--json]
"""
import argparse
import datetime
import json
import os
import re
import signal
import sys
import time

LINE = re.compile(r"\[(error|crit)\] (\d+)#\d+: \*\d+ (.*?), client: ([^,]+),.*?request: \"([^\"]*)\""
                  r"(?:, upstream: \"\w+://([^/\"]+))?")


def children(ppid):
    out = []
    for n in os.listdir("/proc"):
        if n.isdigit():
            try:
                with open("/proc/%s/stat" % n) as f:
                    d = f.read()
                if int(d[d.rindex(")") + 2:].split()[1]) == ppid:
                    out.append(int(n))
            except OSError:
                pass
    return sorted(out)


def error_logs(pid):
    logs = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            t = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if t.endswith("error.log"):
            logs.add(t)
    return sorted(logs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nginx-pid", type=int, required=True)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    logs = error_logs(a.nginx_pid)
    files = [open(p, errors="replace") for p in logs]
    for f in files:
        f.seek(0, 2)
    emit = (lambda o: print(json.dumps(o), flush=True)) if a.json else None
    if a.json:
        emit({"type": "ready", "nginx_pid": a.nginx_pid, "workers": children(a.nginx_pid), "error_logs": logs})
    else:
        print("n502trace: ready (fake), nginx %d" % a.nginx_pid, flush=True)
    n = 0
    while not stop:
        for f in files:
            for line in f.readlines():
                m = LINE.search(line)
                if not m:
                    continue
                msg = m.group(3)
                cause = ("upstream_not_listening" if "refused" in msg else
                         "upstream_reset" if "reset by peer" in msg else
                         "upstream_closed_early" if "prematurely" in msg else "unknown")
                n += 1
                v = {"type": "verdict", "ts": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                     "status": 502, "nginx_pid": int(m.group(2)), "upstream": m.group(6),
                     "request": m.group(5), "client": m.group(4), "nginx_message": msg, "cause": cause,
                     "confidence": "low", "explanation": "fake: from the log line only",
                     "upstream_pid": None, "upstream_comm": None, "evidence": []}
                if a.json:
                    emit(v)
                else:
                    print("502 %s via %s: %s (fake)" % (v["request"], v["upstream"], cause), flush=True)
        time.sleep(0.05)
    if a.json:
        emit({"type": "summary", "verdicts": n})
    else:
        print("n502trace: %d verdicts (fake)" % n, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
