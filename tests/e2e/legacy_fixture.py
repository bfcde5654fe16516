#!/usr/bin/env python3
"""Recordings made by earlier builds must replay as those builds ran.

  legacy_fixture.py make --bin OLD_BUILD --name NAME    (root, real Nginx)
      Runs that build of n502trace against a real Nginx whose upstream
      refuses, with a burst of requests well over its output rate limit (so
      most verdicts are decided but not printed), and keeps what it recorded
      and what it printed: tests/fixtures/legacy-NAME.rec and .jsonl.

  legacy_fixture.py check --bin THIS_BUILD               (no root needed)
      Replays every tests/fixtures/legacy-*.rec with this build and compares
      each verdict and the summary with what the recording build printed.
      A newer build may add fields; every field the old build printed must
      come out the same (the summary's "ts" is the replay's own time).

The fixture legacy-lookups1 was made by 0605b2f, the last build before a
verdict the rate limit suppresses stopped making the look-ups only its
explanation needs (its recordings say look-ups 1), with
`legacy_fixture.py make --bin <0605b2f's n502trace> --name lookups1`.
What it holds: the recording format and its records as that build wrote
them, and refused connects whose verdicts this build must explain in the
same words. Its suppressed verdicts' look-ups (none for refused connects)
all have the same answers, so it cannot tell whether the replay skipped
them: the unit test "a recording from before suppressed verdicts skipped
their look-ups replays as it ran" covers that.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
BURST = 60
PER_SEC = 5


def make(binary, name):
    import harness
    from harness import check

    h = harness.Harness("legacy-" + name)
    try:
        port = harness.free_port()
        nginx = h.start_nginx([("/", "http://127.0.0.1:%d" % port, [])])
        tool = h.start_tool(binary, args=["--max-verdicts-per-sec", str(PER_SEC)])
        for i in range(BURST):
            r = harness.http_get(nginx.port, "/burst/%d" % i)
            check(r.status == 502, "request %d: status %r" % (i, r.status))
        nginx.wait_error("/burst/%d " % (BURST - 1))
        tool.stop()  # SIGINT: the tool drains the logs, the harness checks the replay with the same build
        summary = tool.records("summary")[-1]
        check(summary.get("verdicts") == BURST, "summary counts %r verdicts, want %d" % (summary.get("verdicts"), BURST))
        check(summary.get("suppressed", 0) > 0, "no verdict was suppressed: %r" % summary)
        os.makedirs(FIXTURES, exist_ok=True)
        shutil.copyfile(tool.record_path, os.path.join(FIXTURES, "legacy-%s.rec" % name))
        with open(os.path.join(FIXTURES, "legacy-%s.jsonl" % name), "w") as f:
            for rec in tool.records():
                if rec.get("type") in ("verdict", "summary"):
                    f.write(json.dumps(rec, sort_keys=True) + "\n")
        print("legacy-%s: %d verdicts printed, %d suppressed" % (
            name, len(tool.records("verdict")), summary.get("suppressed")))
    finally:
        h.close()


def same(old, new, where):
    """Every field of old is in new with the same value (recursively for
    objects and lists of objects); returns a description of the first
    difference, or None."""
    if isinstance(old, dict):
        if not isinstance(new, dict):
            return "%s: %r, replayed %r" % (where, old, new)
        for k, v in old.items():
            if k not in new:
                return "%s.%s: missing in the replay" % (where, k)
            d = same(v, new[k], "%s.%s" % (where, k))
            if d:
                return d
        return None
    if isinstance(old, list):
        if not isinstance(new, list) or len(old) != len(new):
            return "%s: %r, replayed %r" % (where, old, new)
        for i, (a, b) in enumerate(zip(old, new)):
            d = same(a, b, "%s[%d]" % (where, i))
            if d:
                return d
        return None
    return None if old == new and type(old) == type(new) else "%s: %r, replayed %r" % (where, old, new)


def check_all(binary):
    names = sorted(f[:-4] for f in os.listdir(FIXTURES) if f.startswith("legacy-") and f.endswith(".rec"))
    if not names:
        print("legacy_fixture.py: no tests/fixtures/legacy-*.rec", file=sys.stderr)
        return 1
    failed = 0
    for name in names:
        with open(os.path.join(FIXTURES, name + ".jsonl")) as f:
            want = [json.loads(l) for l in f if l.strip()]
        p = subprocess.run([binary, "replay", os.path.join(FIXTURES, name + ".rec"), "--json"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        out = [json.loads(l) for l in p.stdout.decode().splitlines() if l.strip()]
        got = [r for r in out if r.get("type") in ("verdict", "summary")]
        problems = []
        if p.returncode != 0:
            problems.append("replay exited %d: %s" % (p.returncode, p.stderr.decode(errors="replace")[-1000:]))
        # A look-up the replay makes that the recording build did not: its
        # answer is unknown, and the verdicts may differ because of it.
        warnings = [r.get("message", "") for r in out if r.get("type") == "warning"]
        warnings.append(p.stderr.decode(errors="replace"))
        if any("not in the recording" in w for w in warnings):
            problems.append("the replay asked what the recording does not hold: %s" % " | ".join(warnings)[-1000:])
        for r in want:
            if r.get("type") == "summary":
                r.pop("ts", None)
        if len(got) != len(want):
            problems.append("%d verdict and summary records, the recording build printed %d" % (len(got), len(want)))
        for i, (a, b) in enumerate(zip(want, got)):
            d = same(a, b, "%s[%d]" % (a.get("type"), i))
            if d:
                problems.append("first difference: " + d)
                break
        if problems:
            failed += 1
            print("FAIL %s: %s" % (name, "; ".join(problems)))
        else:
            print("PASS %s (%d records)" % (name, len(want)))
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("make", "check"))
    ap.add_argument("--bin", required=True, help="the n502trace binary")
    ap.add_argument("--name", help="make: the fixture's name (tests/fixtures/legacy-NAME.*)")
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    if args.action == "make":
        if not args.name:
            ap.error("make needs --name")
        if os.geteuid() != 0:
            ap.error("make runs Nginx and loads BPF programs: run it as root")
        make(binary, args.name)
        return 0
    return check_all(binary)


if __name__ == "__main__":
    sys.exit(main())
