#!/usr/bin/python3
"""A 502 storm: Nginx in front of a port where nothing listens, loaded by wrk
for a few seconds (thousands of 502s per second). n502trace must keep up:
every upstream error line gets a verdict (printed or counted by the rate
limit), the printed output stays bounded, no kernel event is lost, every
line is accounted for within 2.5 s of the storm's end, and its memory stays
bounded. Must run as root.

With --close every request comes on a new client connection (wrk sends
"Connection: close"), as when thousands of clients each get their 502:
every line then names another Nginx connection (*N), and grouping retries
per connection must not slow the tool down as their number grows. More than
20,000 of them are required: past the 8192 the retry grouping keeps, so its
bounded eviction runs.

With --record-max SIZE the tool also records the storm, rotating through
four files of SIZE/4: at this rate a segment fills in well under the second
a segment holds at least, so the tool must say (warning `record`) that the
files total more than asked, keep up all the same, and leave a recording
whose kept segments replay.

    storm.py --bin build/n502trace [--seconds N] [--close] [--record-max SIZE]
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check  # noqa: E402


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def scenario(h, binary, name, args):
    port = harness.free_port_outside_range()  # no connect of the storm can meet itself
    nginx = h.start_nginx([("/", "http://127.0.0.1:%d" % port)])
    rec = os.path.join(h.dir, "storm.rec")
    tool = h.start_tool(binary, args=["--record", rec, "--record-max", args.record_max] if args.record_max else ())
    t0 = time.monotonic()
    close = ["-H", "Connection: close"] if args.close else []
    # Every request distinct (/r1, /r2, ...), as a storm of real clients'
    # requests is: each access-log 502 must find its own error-log
    # verdict, however many came after it.
    script = os.path.join(h.dir, "distinct.lua")
    with open(script, "w") as f:
        f.write("local n = 0\nrequest = function()\n  n = n + 1\n  return wrk.format(nil, \"/r\" .. n)\nend\n")
    r = subprocess.run(["wrk", "-t1", "-c8", "-d%ds" % args.seconds, "-s", script] + close +
                       ["http://127.0.0.1:%d/" % nginx.port],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=args.seconds + 30)
    t_end = time.monotonic()
    out = r.stdout.decode(errors="replace")
    check(r.returncode == 0, "wrk failed: %s" % out)
    lines = sum(1 for l in nginx.read_error_log().splitlines() if "Connection refused" in l)
    rate = lines / max(0.001, t_end - t0)
    harness.log("wrk: %d error lines in %.1fs (%.0f 502/s)" % (lines, t_end - t0, rate))
    check(lines >= 1000, "only %d 502s: not a storm" % lines)
    if args.close:
        conns = set(l.split("*", 1)[1].split(" ", 1)[0] for l in nginx.read_error_log().splitlines()
                    if "Connection refused" in l and "*" in l)
        harness.log("%d distinct client connections" % len(conns))
        # More than the retry grouping keeps (CorrelatorOptions::attempts_max, 8192, and up to
        # twice that before a sweep): its bounded eviction must have run, more than once.
        check(len(conns) > 20000, "only %d client connections: too few to make the retry grouping evict" %
              len(conns))

    def accounted():
        recs = tool.records()
        printed = sum(1 for x in recs if x.get("type") == "verdict")
        suppressed = sum(x.get("count", 0) for x in recs if x.get("type") == "suppressed")
        return printed, suppressed
    # Every line is accounted for (printed, or counted in a suppressed record) within
    # the verdict deadline plus the one-second suppressed-report period.
    deadline = t_end + 2.5
    while time.monotonic() < deadline and sum(accounted()) < lines:
        time.sleep(0.05)
    printed, suppressed = accounted()
    lag = time.monotonic() - t_end
    harness.log("n502trace: %d verdicts printed, %d counted as suppressed, %.2fs after the storm" % (
        printed, suppressed, lag))
    check(printed + suppressed == lines, "%d error lines but %d printed + %d suppressed" % (
        lines, printed, suppressed))
    rss = rss_kib(tool.proc.pid)
    harness.log("n502trace RSS after the storm: %d KiB" % rss)
    check(rss < 30 * 1024, "RSS %d KiB >= 30 MiB" % rss)
    # Printed output is bounded by the rate limit (20/s per cause and upstream, plus the burst).
    check(printed <= 20 * (args.seconds + 4), "%d verdicts printed for one cause/upstream in %ds" % (
        printed, args.seconds))
    tool.stop()
    summary = tool.records("summary")[-1]
    harness.log("summary by cause: %r" % summary.get("by_cause"))
    bad = [x for x in tool.records("verdict") if x.get("cause") != "upstream_not_listening"]
    check(not bad, "%d verdicts with another cause, e.g. %r" % (len(bad), bad[:1]))
    with open(os.path.join(nginx.prefix, "access.log"), errors="replace") as f:
        access_502 = sum(1 for l in f if '" 502 ' in l)
    harness.log("access log: %d 502s; n502trace read %r" % (access_502, summary.get("access_lines")))
    check(access_502 >= lines, "the access log has %d 502s for %d error lines" % (access_502, lines))
    check(summary.get("access_lines") == access_502, "n502trace read %r access-log 502s, the log has %d" % (
        summary.get("access_lines"), access_502))
    check(summary.get("access_only") == 0, "%r access-log 502s were not matched to their error-log verdicts" %
          summary.get("access_only"))
    check(summary.get("verdicts") == lines, "summary counts %r verdicts, want %d" % (summary.get("verdicts"), lines))
    check(summary.get("suppressed") == suppressed, "summary suppressed %r != %d" % (summary.get("suppressed"), suppressed))
    check(summary.get("events_lost") == 0, "%r kernel events lost" % summary.get("events_lost"))
    harness.log("summary: %d events, %d lost" % (summary.get("events"), summary.get("events_lost")))
    if args.record_max:
        notes = [x["message"] for x in tool.records("warning") if x.get("code") == "record"]
        harness.log("record warnings: %r" % notes)
        check(any("is small for this input rate" in m for m in notes),
              "no warning that --record-max %s is small for %.0f 502/s: %r" % (args.record_max, rate, notes))
        segs = sorted(f for f in os.listdir(h.dir) if f.startswith("storm.rec"))
        harness.log("recording: %s" % ", ".join("%s %d B" % (f, os.path.getsize(os.path.join(h.dir, f)))
                                                for f in segs))
        check(segs and len(segs) <= 4, "recording files %r: want 1 to 4" % segs)
        r = subprocess.run([binary, "replay", rec, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=120)
        check(r.returncode == 0, "replay of the kept segments: exit %d: %s" % (r.returncode, r.stderr.decode()))
        replayed = [json.loads(l) for l in r.stdout.decode().splitlines() if '"type":"verdict"' in l]
        check(replayed, "the kept segments replay no verdict")
        # Each is for a line Nginx logged. Which lines are printed is the
        # rate limit's choice, replayed from the segment's start (not the
        # live run's), and the first kept segment lacks what was in
        # flight when it began (README, Record and replay).
        logged = set(l.split('request: "', 1)[1].split('"', 1)[0] for l in nginx.read_error_log().splitlines()
                     if "Connection refused" in l and 'request: "' in l)
        foreign = [x for x in replayed if x.get("request") not in logged]
        explained = [x for x in replayed if x.get("cause") == "upstream_not_listening"]
        harness.log("replayed %d verdicts from the kept segments, %d of them upstream_not_listening" % (
            len(replayed), len(explained)))
        check(not foreign, "%d replayed verdicts for lines Nginx did not log, e.g. %r" % (len(foreign), foreign[:1]))
        check(explained, "the replay explained none of the storm's lines")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--seconds", type=int, help="how long wrk runs (3 s; 5 s with --close)")
    ap.add_argument("--close", action="store_true", help="a new client connection for every request")
    ap.add_argument("--record-max", help="record with this --record-max (64k: four segments of 16 KiB)")
    args = ap.parse_args()
    if args.seconds is None:
        # With --close, 5 s keeps well above the 20,000 client connections the
        # check needs when the machine is busy (a core taken: 5,500 502/s).
        args.seconds = 5 if args.close else 3
    binary = os.path.abspath(args.bin)
    name = "storm_close" if args.close else "storm_record" if args.record_max else "storm"
    return harness.run_single(name, lambda h: scenario(h, binary, name, args))


if __name__ == "__main__":
    sys.exit(main())
