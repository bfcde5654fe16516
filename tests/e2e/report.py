#!/usr/bin/python3
"""`n502trace report` end to end: real faults behind a real Nginx, the tool's
--json output, the report built from it, and the page rendered in a real
headless Chromium (Debian's).

    report.py --bin build/n502trace [--screenshot PATH]

Checks: the plain-text summary's counts are the file's; the page renders in
Chromium, and the counts it shows (verdict total, per cause) are the counts
in the file; the page can fetch nothing (a Content-Security-Policy of
default-src 'none', and no URL in it); a file that is not --json output is
refused with exit 2. --screenshot keeps a PNG of the rendered page.
Exit 77 (skipped, loudly) when Chromium is not installed.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for a closed network (see the machine notes): no background fetches.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars"]


def chromium(args, profile, timeout=90):
    return subprocess.run([CHROMIUM] + CHROMIUM_FLAGS + ["--user-data-dir=" + profile] + args,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)


def make_incident(h, binary, out_path, spread=0.0):
    """A small incident: upstreams killed mid-request, refused connects, a
    reset. Returns the verdict records the tool printed. spread: seconds
    between the faults (a longer timeline for the README's screenshot)."""
    import time

    def pause():
        if spread:
            t = time.monotonic()
            harness.wait_until(lambda: time.monotonic() - t >= spread, spread + 5, "the incident to go on")
    live = [h.start_upstream("hang") for _ in range(2)]
    dead_port = harness.free_port()
    reset = h.start_upstream("reset")
    nginx = h.start_nginx([("/a", live[0].proxy_target), ("/b", live[1].proxy_target),
                           ("/dead", "http://127.0.0.1:%d" % dead_port), ("/reset", reset.proxy_target)])
    tool = h.start_tool(binary)
    for up, path in ((live[0], "/a"), (live[1], "/b")):
        req = harness.BackgroundRequest(nginx.port, path)
        req.start()
        up.wait_request(1)
        harness.spawn_kill(signal.SIGKILL, up.pid)
        check(req.result().status == 502, "%s: not a 502" % path)
        pause()
    for _ in range(3):
        check(harness.http_get(nginx.port, "/dead").status == 502, "/dead: not a 502")
        pause()
    check(harness.http_get(nginx.port, "/reset").status == 502, "/reset: not a 502")
    want = 6
    tool.out.wait_for(lambda: len(tool.records("verdict")) >= want or None, 10, "%d verdicts" % want,
                      alive=tool.alive)
    tool.stop()
    with open(out_path, "w") as f:
        for _, rec in tool.out.records:
            f.write(json.dumps(rec) + "\n")
    return tool.records("verdict")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--screenshot", help="keep a PNG of the rendered report here")
    ap.add_argument("--spread", type=float, default=0.0, help="seconds between the faults (default 0)")
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    if not CHROMIUM:
        print("*" * 70 + "\nSKIP report.py: Chromium is not installed (Debian package chromium)\n" + "*" * 70)
        return 77
    h = harness.Harness("report")
    work = tempfile.mkdtemp(prefix="n502-report-")
    try:
        jsonl = os.path.join(work, "incident.jsonl")
        verdicts = make_incident(h, binary, jsonl, args.spread)
        by_cause = {}
        for v in verdicts:
            by_cause[v["cause"]] = by_cause.get(v["cause"], 0) + 1
        check(by_cause.get("upstream_killed") == 2 and by_cause.get("upstream_not_listening") == 3,
              "unexpected verdicts from the incident: %r" % by_cause)

        html = os.path.join(work, "incident.html")
        r = subprocess.run([binary, "report", jsonl, "-o", html], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=30)
        text = r.stdout.decode()
        check(r.returncode == 0, "report exit %d: %s" % (r.returncode, r.stderr.decode()))
        check(("%d verdicts" % len(verdicts)) in text, "summary does not count %d verdicts: %s" % (len(verdicts), text))
        for cause, n in by_cause.items():
            check(re.search(r"cause\s+%s\s+%d\b" % (re.escape(cause), n), text),
                  "summary lacks %s %d: %s" % (cause, n, text))

        page = open(html).read()
        check("default-src 'none'" in page, "no Content-Security-Policy forbidding fetches")
        check(not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page), "the page references a URL")
        check("<script" not in page, "the page has a script")

        profile = os.path.join(work, "profile")
        dom = chromium(["--dump-dom", "file://" + html], profile)
        check(dom.returncode == 0, "chromium --dump-dom exit %d: %s" % (dom.returncode, dom.stderr.decode()[-500:]))
        d = dom.stdout.decode()
        m = re.search(r'id="verdict-count">(\d+)<', d)
        check(m and int(m.group(1)) == len(verdicts), "rendered verdict count %r, want %d" % (
            m and m.group(1), len(verdicts)))
        for cause, n in by_cause.items():
            check(re.search(r'data-cause="%s">%d<' % (re.escape(cause), n), d),
                  "rendered page does not show %s %d" % (cause, n))
        check(d.count('class="verdict"') == len(verdicts), "rendered %d verdict entries, want %d" % (
            d.count('class="verdict"'), len(verdicts)))

        png = args.screenshot or os.path.join(work, "report.png")
        shot = chromium(["--screenshot=" + os.path.abspath(png), "--window-size=1100,900", "file://" + html], profile)
        check(shot.returncode == 0 and os.path.getsize(png) > 10000, "screenshot failed: %s" % shot.stderr.decode()[-500:])

        # Not --json output: refused, exit 2, saying what it is not.
        junk = os.path.join(work, "junk.txt")
        with open(junk, "w") as f:
            f.write("2026/11/23 05:00:00 [error] 7#7: *1 connect() failed\nnot json either\n")
        r = subprocess.run([binary, "report", junk], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        check(r.returncode == 2 and b"is not n502trace --json output" in r.stderr,
              "junk input: exit %d, stderr %r" % (r.returncode, r.stderr))
        r = subprocess.run([binary, "report", os.path.join(work, "missing.jsonl")], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        check(r.returncode == 2 and b"cannot read" in r.stderr, "missing input: exit %d" % r.returncode)
        print("PASS report (%d verdicts; causes %s)" % (len(verdicts), by_cause))
        return 0
    except harness.Failure as e:
        print("FAIL report: %s" % e)
        return 1
    finally:
        h.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
