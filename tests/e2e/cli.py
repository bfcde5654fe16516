#!/usr/bin/python3
"""Command-line behaviour of the real binary: bad input gets a clear message
and exit code 2, --duration stops by itself, SIGTERM detaches with a summary,
and the human output shows a verdict headline. Must run as root.

    cli.py --bin build/n502trace
"""
import argparse
import json
import re
import os
import select
import signal
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check  # noqa: E402

BIN = None
failures = []
ran = []


def run(args, timeout=20):
    return subprocess.run([BIN] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def case(name):
    def deco(fn):
        ran.append(name)
        try:
            fn()
            print("PASS cli %s" % name)
        except Exception as e:  # noqa: BLE001 - report any failure
            failures.append(name)
            print("FAIL cli %s: %s" % (name, e))
        sys.stdout.flush()
        return fn
    return deco


def expect_usage_error(args, needle):
    r = run(args)
    err = r.stderr.decode(errors="replace")
    check(r.returncode == 2, "%s: exit %d, want 2 (stderr: %s)" % (args, r.returncode, err.strip()))
    check(needle in err, "%s: stderr %r does not mention %r" % (args, err.strip(), needle))
    check(r.stdout == b"", "%s: wrote to stdout: %r" % (args, r.stdout[:200]))


def read_lines_until(proc, pred, timeout):
    """Lines from proc.stdout until pred(line) holds; returns all lines read.
    What was read past that line is kept for the next call (records written
    together arrive in one read)."""
    lines = []
    buf = getattr(proc, "n502_rest", b"")
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            lines.append(line.decode(errors="replace"))
            if pred(lines[-1]):
                proc.n502_rest = buf
                return lines
        if time.monotonic() >= deadline:
            break
        r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
    raise harness.Failure("timed out; output so far: %r" % lines[-20:])


def main():
    global BIN
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    BIN = os.path.abspath(ap.parse_args().bin)

    @case("no arguments")
    def _():
        expect_usage_error([], "--nginx-pid")

    @case("unknown option")
    def _():
        r = run(["--frobnicate"])
        check(r.returncode == 2, "exit %d, want 2" % r.returncode)

    @case("pid that does not exist")
    def _():
        expect_usage_error(["--nginx-pid", "4194303"], "no process with pid 4194303")

    @case("pid that is not nginx")
    def _():
        expect_usage_error(["--nginx-pid", str(os.getpid())], "not Nginx")

    @case("help teaches the causes")
    def _():
        r = run(["--help"])
        out = r.stdout.decode()
        check(r.returncode == 0, "exit %d" % r.returncode)
        for needle in ("--nginx-pid", "--json", "--error-log", "--duration", "upstream_oom_killed", "Exit codes"):
            check(needle in out, "--help lacks %r" % needle)

    @case("--container that does not exist: exit 2, naming it")
    def _():
        expect_usage_error(["--container", "n502-no-such-container"], 'no container matches "n502-no-such-container"')

    @case("--cgroup that is not a cgroup: exit 2")
    def _():
        expect_usage_error(["--cgroup", "/n502-no/such/cgroup"], "not a cgroup directory")

    @case("no BTF: --check says what is missing; a run refuses with the reason")
    def _():
        # Hide /sys/kernel/btf in a private mount namespace: the kernel is
        # the same, the tool just cannot see its BTF.
        hide = "mount -t tmpfs none /sys/kernel/btf && exec \"$@\""
        r = subprocess.run(["unshare", "-m", "sh", "-c", hide, "sh", BIN, "--check"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        out = r.stdout.decode(errors="replace")
        check(r.returncode == 1, "--check without BTF: exit %d, want 1" % r.returncode)
        check(re.search(r"kernel BTF\s+MISSING", out), "--check does not report missing BTF: %s" % out)
        check("hook tracepoint/syscalls/sys_enter_connect" in out and "yes" in out,
              "--check does not say what still works: %s" % out)
        r = subprocess.run(["unshare", "-m", "sh", "-c", hide, "sh", BIN, "--nginx-pid", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        err = r.stderr.decode(errors="replace")
        check(r.returncode in (1, 2), "run without BTF: exit %d" % r.returncode)

    @case("a host without cgroup v2 (simulated): --cgroup refused, saying what still works; --check says so")
    def _():
        hide = "umount /sys/fs/cgroup/unified 2>/dev/null; exec \"$@\""
        if not os.path.ismount("/sys/fs/cgroup/unified"):
            print("  (no /sys/fs/cgroup/unified mount here: simulated host not needed)")
            return
        r = subprocess.run(["unshare", "-m", "sh", "-c", hide, "sh", BIN, "--cgroup", "/docker/x"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        err = r.stderr.decode(errors="replace")
        check(r.returncode == 2, "exit %d, want 2 (%s)" % (r.returncode, err))
        check("no cgroup v2 hierarchy" in err and "--container and --nginx-pid still work" in err,
              "stderr does not say what still works: %r" % err)
        r = subprocess.run(["unshare", "-m", "sh", "-c", hide, "sh", BIN, "--check"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        out = r.stdout.decode(errors="replace")
        check(re.search(r"cgroup v2 hierarchy.*none: containers are selected from /proc", out),
              "--check does not report the missing v2 hierarchy: %s" % out)
        check(r.returncode == 0, "--check failed on a v1-only view (exit %d): %s" % (r.returncode, out))

    @case("lockdown: --check reads the mode and says whether n502trace can attach")
    def _():
        # A private securityfs stand-in: the host's kernel is not locked
        # down (and locking it down cannot be undone), the file is what
        # --check reads.
        for mode, rc, needle in (("[none] integrity confidentiality", 0, "lockdown"),
                                 ("none [integrity] confidentiality", 0, "integrity: BPF tracing still works"),
                                 ("none integrity [confidentiality]", 1, "MISSING: lockdown=confidentiality")):
            fake = ("mount -t tmpfs none /sys/kernel/security && printf '%s\\n' > /sys/kernel/security/lockdown "
                    "&& exec \"$@\"" % mode)
            r = subprocess.run(["unshare", "-m", "sh", "-c", fake, "sh", BIN, "--check"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=30)
            out = r.stdout.decode(errors="replace")
            line = next((l for l in out.splitlines() if l.strip().startswith("lockdown")), "")
            check(needle in line, "%s: lockdown line %r lacks %r" % (mode, line, needle))
            check(r.returncode == rc, "%s: exit %d, want %d" % (mode, r.returncode, rc))

    h = harness.Harness("cli")
    try:
        port = harness.free_port()
        nginx = h.start_nginx([("/", "http://127.0.0.1:%d" % port)])

        @case("missing error log")
        def _():
            expect_usage_error(["--nginx-pid", str(nginx.master_pid), "--error-log", "/nonexistent/error.log"],
                               "cannot open error log /nonexistent/error.log")

        @case("--duration stops by itself with a summary")
        def _():
            t0 = time.monotonic()
            r = run(["--nginx-pid", str(nginx.master_pid), "--json", "--duration", "1"], timeout=30)
            took = time.monotonic() - t0
            check(r.returncode == 0, "exit %d: %s" % (r.returncode, r.stderr.decode(errors="replace")))
            recs = [json.loads(x) for x in r.stdout.decode().splitlines() if x.strip()]
            check(recs and recs[0]["type"] == "ready", "first record is not ready: %r" % recs[:1])
            check(recs[-1]["type"] == "summary", "last record is not summary: %r" % recs[-1:])
            check(took < 10, "--duration 1 took %.1fs" % took)

        @case("record and replay: offline as nobody, report on a recording, bad recordings refused")
        def _():
            import shutil
            import tempfile
            rec = h.path("cli.rec")
            p = subprocess.Popen([BIN, "--nginx-pid", str(nginx.master_pid), "--json", "--record", rec],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            try:
                read_lines_until(p, lambda l: '"type":"ready"' in l, 20)
                for _i in range(2):
                    check(harness.http_get(nginx.port).status == 502, "no 502")
                    read_lines_until(p, lambda l: '"type":"verdict"' in l, 10)
            finally:
                p.send_signal(signal.SIGINT)
                out, _err = p.communicate(timeout=10)
            live = [json.loads(x) for x in out.decode().splitlines() if x.strip()]
            # read_lines_until consumed the lines it read: take the verdicts from the replay below and
            # count them against the summary the live run printed.
            summary = [x for x in live if x["type"] == "summary"]
            check(summary and summary[0]["verdicts"] == 2, "live summary %r" % summary)
            # Offline, without root or BPF: user nobody, every capability gone, a copy elsewhere.
            d = tempfile.mkdtemp(prefix="n502-replay-")
            try:
                os.chmod(d, 0o755)
                copy = os.path.join(d, "copy.rec")
                shutil.copy(rec, copy)
                os.chmod(copy, 0o644)
                r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                    "--inh-caps=-all", "--bounding-set=-all", BIN, "replay", copy, "--json"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
                check(r.returncode == 0, "replay as nobody: exit %d: %s" % (r.returncode, r.stderr.decode()))
                recs = [json.loads(x) for x in r.stdout.decode().splitlines() if x.strip()]
                verdicts = [x for x in recs if x["type"] == "verdict"]
                check(len(verdicts) == 2 and all(v["cause"] == "upstream_not_listening" for v in verdicts),
                      "replayed verdicts %r" % verdicts)
                check(recs[0]["type"] == "ready", "replay does not start with the recorded ready: %r" % recs[:1])
                # On a machine in another time zone: Nginx's local-time stamps are read in the
                # recording host's zone, so the verdicts are the same.
                r = subprocess.run([BIN, "replay", copy, "--json"], env=dict(os.environ, TZ="<JST>-09:00"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
                elsewhere = [json.loads(x) for x in r.stdout.decode().splitlines() if x.strip()]
                check(r.returncode == 0 and [x for x in elsewhere if x["type"] == "verdict"] == verdicts,
                      "replay in another time zone differs: %r" % elsewhere)
                # The human output too.
                r = run(["replay", copy])
                check(r.returncode == 0 and b"cause: upstream_not_listening" in r.stdout,
                      "text replay: exit %d, %r" % (r.returncode, r.stdout[:300]))

                # report reads a recording like a --json output.
                html = os.path.join(d, "out.html")
                r = run(["report", copy, "-o", html])
                check(r.returncode == 0, "report on a recording: exit %d: %s" % (r.returncode, r.stderr.decode()))
                with open(html) as f:
                    page = f.read()
                check("upstream_not_listening" in page, "the report lacks the cause")
                check("upstream_not_listening" in r.stdout.decode(), "report summary: %r" % r.stdout)

                # An output that cannot be written (a full disk): said, exit 1.
                with open("/dev/full", "w") as full:
                    r = subprocess.run([BIN, "replay", rec, "--json"], stdout=full, stderr=subprocess.PIPE,
                                       timeout=60)
                check(r.returncode == 1 and b"writing the output failed" in r.stderr,
                      "replay to a full disk: exit %d: %r" % (r.returncode, r.stderr))

                data = open(rec, "rb").read()
                # Cut off mid-record (the last 7 bytes gone): the whole records replay, with a warning.
                cut = os.path.join(d, "cut.rec")
                with open(cut, "wb") as f:
                    f.write(data[:-7])
                r = run(["replay", cut, "--json"])
                err = r.stderr.decode()
                check(r.returncode == 0, "cut recording: exit %d: %s" % (r.returncode, err))
                check("cut off inside a record" in err, "cut recording: no warning: %r" % err)
                recs = [json.loads(x) for x in r.stdout.decode().splitlines() if x.strip()]
                check(len([x for x in recs if x["type"] == "verdict"]) == 2, "cut recording lost verdicts: %r" % recs)
                # A newer format version.
                future = os.path.join(d, "future.rec")
                with open(future, "wb") as f:
                    f.write(data[:8] + (99).to_bytes(4, "little") + data[12:])
                expect_usage_error(["replay", future], "format version 99, written by a newer n502trace")
                expect_usage_error(["report", future], "format version 99, written by a newer n502trace")
                # A corrupt record.
                bad = os.path.join(d, "bad.rec")
                at = data.index(b"connect() failed")
                with open(bad, "wb") as f:
                    f.write(data[:at] + b"X" + data[at + 1:])
                r = run(["replay", bad, "--json"])
                check(r.returncode == 2 and b"fails its checksum" in r.stderr,
                      "corrupt: exit %d, %r" % (r.returncode, r.stderr))
                # Not a recording, and no file at all.
                expect_usage_error(["replay", nginx.conf], "is not an n502trace recording")
                expect_usage_error(["replay", os.path.join(d, "missing.rec")], "cannot read")
                expect_usage_error(["--nginx-pid", str(nginx.master_pid), "--record", copy, "--record-max", "12x"],
                                   "--record-max 12x")
                # Rotation writes beside the file after the capabilities are
                # dropped: a directory root may write only by CAP_DAC_OVERRIDE
                # is refused at the start, not when the first segment fills.
                theirs = os.path.join(d, "theirs")
                os.mkdir(theirs, 0o755)
                os.chown(theirs, 65534, 65534)
                expect_usage_error(["--nginx-pid", str(nginx.master_pid), "--record", os.path.join(theirs, "x.rec"),
                                    "--record-max", "1M"], "cannot be rotated")
                check(not os.listdir(theirs), "a refused recording left files: %r" % os.listdir(theirs))
            finally:
                shutil.rmtree(d, ignore_errors=True)

        @case("--error-log and --access-log override discovery; --no-access-log skips access logs")
        def _():
            elog = nginx.error_log
            alog = os.path.join(os.path.dirname(elog), "access.log")
            for extra, want_access in ((["--error-log", elog, "--access-log", alog], [alog]),
                                       (["--error-log", elog, "--no-access-log"], [])):
                p = subprocess.Popen([BIN, "--nginx-pid", str(nginx.master_pid), "--json"] + extra,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
                try:
                    lines = read_lines_until(p, lambda l: '"type":"ready"' in l, 20)
                    ready = json.loads(lines[-1])
                    check(ready["error_logs"] == [elog], "error_logs %r" % ready["error_logs"])
                    check(ready["access_logs"] == want_access, "access_logs %r, want %r" % (
                        ready["access_logs"], want_access))
                    r = harness.http_get(nginx.port)
                    check(r.status == 502, "status %r" % r.status)
                    lines = read_lines_until(p, lambda l: '"type":"verdict"' in l, 10)
                    check(json.loads(lines[-1])["cause"] == "upstream_not_listening", "verdict %s" % lines[-1])
                finally:
                    p.send_signal(signal.SIGINT)
                    p.communicate(timeout=10)

        @case("not root: a clear message and exit 1")
        def _():
            r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", BIN,
                                "--nginx-pid", str(nginx.master_pid)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
            err = r.stderr.decode(errors="replace")
            check(r.returncode == 1, "exit %d, want 1 (stderr: %s)" % (r.returncode, err.strip()))
            check("needs root" in err, "stderr does not say it needs root: %r" % err)

        @case("after attaching, only the needed capabilities remain")
        def _():
            p = subprocess.Popen([BIN, "--nginx-pid", str(nginx.master_pid), "--json"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            try:
                lines = read_lines_until(p, lambda l: '"type":"ready"' in l, 20)
                ready = json.loads(lines[-1])
                status = open("/proc/%d/status" % p.pid).read()
                caps = {k: int(v, 16) for k, v in (l.split(":\t") for l in status.splitlines()
                                                   if l.startswith(("CapEff", "CapPrm", "CapBnd", "CapInh")))}
                allowed = (1 << 2) | (1 << 19) | (1 << 21) | (1 << 39)
                for k in ("CapEff", "CapPrm", "CapBnd"):
                    check(caps[k] & ~allowed == 0, "%s %x has more than %x" % (k, caps[k], allowed))
                check(caps["CapInh"] == 0, "CapInh %x" % caps["CapInh"])
                check("NoNewPrivs:\t1" in status, "no_new_privs is not set")
                check("CAP_BPF" in ready.get("capabilities", []) or "CAP_SYS_ADMIN" in ready.get("capabilities", []),
                      "ready.capabilities %r" % ready.get("capabilities"))
                # It still works: a 502 gets its verdict.
                r = harness.http_get(nginx.port)
                check(r.status == 502, "status %r" % r.status)
                lines = read_lines_until(p, lambda l: '"type":"verdict"' in l, 10)
                check(json.loads(lines[-1])["cause"] == "upstream_not_listening", "verdict %s" % lines[-1])
            finally:
                p.send_signal(signal.SIGINT)
                p.communicate(timeout=10)
            check(p.returncode == 0, "exit %r after SIGINT" % p.returncode)

        @case("--redact removes query strings and client addresses")
        def _():
            p = subprocess.Popen([BIN, "--nginx-pid", str(nginx.master_pid), "--json", "--redact"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            try:
                read_lines_until(p, lambda l: '"type":"ready"' in l, 20)
                r = harness.http_get(nginx.port, "/path?secret=hunter2")
                check(r.status == 502, "status %r" % r.status)
                lines = read_lines_until(p, lambda l: '"type":"verdict"' in l, 10)
                v = json.loads(lines[-1])
                check("hunter2" not in lines[-1], "the query string leaked: %s" % lines[-1])
                check(v["request"].startswith("GET /path?<redacted>"), "request %r" % v["request"])
                check(v["client"] == "<redacted>", "client %r" % v["client"])
            finally:
                p.send_signal(signal.SIGINT)
                p.communicate(timeout=10)

        @case("lost kernel events are counted, warned about, and lower the confidence of verdicts")
        def _():
            p = subprocess.Popen([BIN, "--nginx-pid", str(nginx.master_pid), "--json", "--ringbuf-kb", "4",
                                  "--max-verdicts-per-sec", "0"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            try:
                read_lines_until(p, lambda l: '"type":"ready"' in l, 20)
                subprocess.run(["wrk", "-t1", "-c8", "-d2s", "http://127.0.0.1:%d/" % nginx.port],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
            finally:
                p.send_signal(signal.SIGINT)
                out, _ = p.communicate(timeout=20)
            recs = [json.loads(x) for x in out.decode().splitlines() if x.strip()]
            summary = [x for x in recs if x["type"] == "summary"][-1]
            check(summary["events_lost"] > 0, "a 4 KiB ring lost nothing under a storm: %r" % summary)
            check(any(x["type"] == "warning" and x["code"] == "events_lost" for x in recs), "no events_lost warning")
            noted = [x for x in recs if x["type"] == "verdict" and any("lost" in n for n in x["notes"])]
            check(noted, "no verdict notes the lost events")
            check(all(x["confidence"] != "high" for x in noted), "a verdict with losses in its window is 'high'")

        @case("human output: ready line, verdict headline, summary on SIGTERM")
        def _():
            p = subprocess.Popen([BIN, "--nginx-pid", str(nginx.master_pid)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            try:
                read_lines_until(p, lambda l: l.startswith("n502trace: ready"), 20)
                r = harness.http_get(nginx.port)
                check(r.status == 502, "status %r" % r.status)
                lines = read_lines_until(p, lambda l: "nginx (worker" in l, 10)
                head = [l for l in lines if l.startswith("502 ")]
                check(head and "cause: upstream_not_listening" in head[0], "no headline in %r" % lines)
                p.send_signal(signal.SIGTERM)
                out, _ = p.communicate(timeout=10)
                check(p.returncode == 0, "exit %d after SIGTERM" % p.returncode)
                check("n502trace: summary" in out.decode(), "no summary after SIGTERM: %r" % out[-500:])
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        @case("human output: a process name or request line with control characters reaches the terminal as text")
        def _():
            # An upstream that names itself with an OSC title sequence and a
            # colour, killed while it holds a request: its name is in the
            # verdict's evidence lines.
            up = h.start_upstream("hang", port=port, args=["--comm", "up\x1b]0;pwn\x07\x1b[31m"])
            check(harness.proc_comm(up.pid).startswith("up\x1b]0;pwn"), "comm %r" % harness.proc_comm(up.pid))
            p = subprocess.Popen([BIN, "--nginx-pid", str(nginx.master_pid)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            try:
                seen = read_lines_until(p, lambda l: l.startswith("n502trace: ready"), 20)
                req = harness.BackgroundRequest(nginx.port)
                req.start()
                up.wait_request(1)
                harness.spawn_kill(signal.SIGKILL, up.pid)
                check(req.result().status == 502, "status %r" % req.result().status)
                up.wait_exit(10)
                # A request line with a lone 0x9B byte (CSI on an 8-bit terminal): Nginx takes it.
                check(harness.http_get(nginx.port, b"/csi\x9b2J").status == 502, "the 0x9B request did not get a 502")
                seen += read_lines_until(p, lambda l: "/csi" in l, 10)
                p.send_signal(signal.SIGTERM)
                out, _ = p.communicate(timeout=10)
                check(p.returncode == 0, "exit %d after SIGTERM" % p.returncode)
                # (Bytes that are not UTF-8 decode to U+FFFD.)
                text = "\n".join(seen) + "\n" + out.decode("utf-8", "replace")
                check("cause: upstream_killed" in text, "no upstream_killed verdict in %r" % text[-3000:])
                check(not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\ufffd]", text),
                      "a control or stray byte reached the terminal: %r" % text[-3000:])
                check("GET /csi\\x9B2J HTTP/1.1" in text, "the request line is not shown escaped: %r" % text[-2000:])
                check(re.search(r"pid %d \(up(\\x1B|\?)\]0;pwn" % up.pid, text),
                      "the name is not shown, escaped: %r" % text[-2000:])
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()

        @case("no BTF: a run against a real Nginx refuses, naming BTF")
        def _():
            hide = "mount -t tmpfs none /sys/kernel/btf && exec \"$@\""
            r = subprocess.run(["unshare", "-m", "sh", "-c", hide, "sh", BIN, "--nginx-pid", str(nginx.master_pid)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
            err = r.stderr.decode(errors="replace")
            check(r.returncode == 1, "exit %d, want 1 (stderr %s)" % (r.returncode, err))
            check("no BTF" in err and "CONFIG_DEBUG_INFO_BTF" in err and "--btf FILE" in err,
                  "stderr does not name BTF and --btf: %r" % err)

        @case("no BTF, with --btf FILE: raw tracepoints typed by the file, and a real verdict")
        def _():
            d = tempfile.mkdtemp(prefix="n502-cli-btf-")
            try:
                # This kernel's BTF, copied before hiding it, stands in for a
                # BTFHub file: the tool sees a kernel without BTF.
                btf = os.path.join(d, "vmlinux.btf")
                shutil.copyfile("/sys/kernel/btf/vmlinux", btf)
                hide = "mount -t tmpfs none /sys/kernel/btf && exec \"$@\""
                r = subprocess.run(["unshare", "-m", "sh", "-c", hide, "sh", BIN, "--check", "--btf", btf],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
                out = r.stdout.decode(errors="replace")
                check(r.returncode == 0, "--check --btf without kernel BTF: exit %d: %s" % (r.returncode, out))
                check(re.search(r"BTF from --btf\s+yes", out), "--check does not accept the file: %s" % out)
                check(re.search(r"hook raw_tp/inet_sock_set_state\s+yes", out), "no raw_tp hooks in: %s" % out)
                p = subprocess.Popen(["unshare", "-m", "sh", "-c", hide, "sh", BIN, "--nginx-pid",
                                      str(nginx.master_pid), "--json", "--btf", btf],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
                try:
                    lines = read_lines_until(p, lambda l: '"type":"ready"' in l, 20)
                    ready = json.loads(lines[-1])
                    probes = ready["probes"]
                    check("raw_tp/inet_sock_set_state" in probes and "raw_tp/signal_generate" in probes and
                          not any(x.startswith("tp_btf/") for x in probes), "probes %r" % probes)
                    check(ready["probes_failed"] == [], "probes_failed %r" % ready["probes_failed"])
                    r = harness.http_get(nginx.port)
                    check(r.status == 502, "status %r" % r.status)
                    lines = read_lines_until(p, lambda l: '"type":"verdict"' in l, 10)
                    v = json.loads(lines[-1])
                    check(v["cause"] == "upstream_not_listening", "verdict %s" % lines[-1])
                    check(any(e["event"] == "state" and e.get("error") == 111 for e in v["evidence"]),
                          "no refused connect in the evidence: %r" % v["evidence"])
                finally:
                    p.send_signal(signal.SIGINT)
                    p.communicate(timeout=10)
                # A file that is not a kernel's BTF, or none at all: exit 2, naming it.
                expect_usage_error(["--nginx-pid", str(nginx.master_pid), "--btf", "/etc/hostname"],
                                   "--btf /etc/hostname: not a readable BTF file")
                expect_usage_error(["--nginx-pid", str(nginx.master_pid), "--btf", os.path.join(d, "missing")],
                                   "No such file or directory")
            finally:
                shutil.rmtree(d, ignore_errors=True)

        @case("missing tracepoints: the rest attaches, each missing hook is named")
        def _():
            # A tracefs without the syscall events: the classic tracepoints
            # are missing, the BTF ones (sockets, signals, exits) remain.
            fake = "mount -t tmpfs none /sys/kernel/tracing && mkdir -p /sys/kernel/tracing/events/oom && exec \"$@\""
            r = subprocess.run(["unshare", "-m", "sh", "-c", fake, "sh", BIN, "--nginx-pid", str(nginx.master_pid),
                                "--json", "--duration", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
            recs = [json.loads(x) for x in r.stdout.decode().splitlines() if x.strip()]
            check(r.returncode == 0, "exit %d: %s" % (r.returncode, r.stderr.decode(errors="replace")))
            ready = next((x for x in recs if x["type"] == "ready"), None)
            check(ready is not None, "no ready record: %r" % recs[:3])
            failed = " ".join(ready["probes_failed"])
            check("sys_enter_connect" in failed and "does not exist" in failed,
                  "probes_failed does not name the missing hook: %r" % ready["probes_failed"])
            check("tp_btf/inet_sock_set_state" in ready["probes"], "BTF hooks not attached: %r" % ready["probes"])
            warned = [x for x in recs if x["type"] == "warning" and x["code"] == "probe_missing"]
            check(any("sys_enter_connect" in w["message"] and "degraded" in w["message"] for w in warned),
                  "no probe_missing warning for sys_enter_connect: %r" % warned)

        @case("--cgroup with no Nginx in it: exit 2, saying so")
        def _():
            root = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified/") else "/sys/fs/cgroup"
            cg = os.path.join(root, "n502-cli-empty-%d" % os.getpid())
            os.mkdir(cg)
            try:
                expect_usage_error(["--cgroup", cg], "no Nginx master process found in cgroup " + cg)
                # Nginx given by pid next to an empty selection: followed, with a warning.
                p = subprocess.Popen([BIN, "--nginx-pid", str(nginx.master_pid), "--cgroup", cg, "--json"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
                try:
                    lines = read_lines_until(p, lambda l: '"type":"ready"' in l, 20)
                    check(len(lines) == 1, "records before ready: %r" % lines[:-1])
                    # (found before ready, said right after it)
                    lines += read_lines_until(p, lambda l: '"no_nginx_in_selection"' in l, 5)
                    recs = [json.loads(x) for x in lines]
                    ready = recs[0]
                    check([i["master"] for i in ready["instances"]] == [nginx.master_pid],
                          "instances %r" % ready["instances"])
                    # The kernel filter holds the selection and Nginx's own cgroup.
                    check(len(ready["cgroups"]) >= 1, "cgroups %r" % ready["cgroups"])
                    r = harness.http_get(nginx.port)
                    check(r.status == 502, "status %r" % r.status)
                    lines = read_lines_until(p, lambda l: '"type":"verdict"' in l, 10)
                    check(json.loads(lines[-1])["cause"] == "upstream_not_listening", "verdict %s" % lines[-1])
                finally:
                    p.send_signal(signal.SIGINT)
                    p.communicate(timeout=10)
            finally:
                os.rmdir(cg)

        @case("configured upstreams with no listener are reported at ready")
        def _():
            # A second Nginx whose configuration names one live upstream and
            # one dead one (a port nobody listens on, a unix socket path).
            h2 = harness.Harness("cli-config")
            try:
                up = h2.start_upstream("ok")
                dead = harness.free_port()
                sock = os.path.join(h2.dir, "gone.sock")
                n2 = h2.start_nginx([("/", "http://127.0.0.1:%d" % up.port),
                                     ("/dead", "http://127.0.0.1:%d" % dead),
                                     ("/sock", "http://unix:%s:" % sock)])
                r = run(["--nginx-pid", str(n2.master_pid), "--json", "--duration", "0.5"], timeout=30)
                check(r.returncode == 0, "exit %d: %s" % (r.returncode, r.stderr.decode(errors="replace")))
                recs = [json.loads(x) for x in r.stdout.decode().splitlines() if x.strip()]
                down = [x["message"] for x in recs if x["type"] == "warning" and x["code"] == "upstream_down"]
                check(len(down) == 2, "want 2 upstream_down warnings, got %r" % down)
                check(any("127.0.0.1:%d" % dead in m for m in down), "dead port not reported: %r" % down)
                check(any(sock in m for m in down), "missing socket not reported: %r" % down)
                check(not any("127.0.0.1:%d " % up.port in m for m in down), "live upstream reported: %r" % down)
                ready = next(x for x in recs if x["type"] == "ready")
                inst = ready["instances"][0]
                check(inst["config"] == n2.conf, "config %r, want %r" % (inst["config"], n2.conf))
                listening = {u["address"]: u["listening"] for u in inst["upstreams"]}
                check(listening.get("127.0.0.1:%d" % up.port) is True, "upstreams %r" % inst["upstreams"])
                check(listening.get("127.0.0.1:%d" % dead) is False, "upstreams %r" % inst["upstreams"])
                check(listening.get("unix:%s" % sock) is False, "upstreams %r" % inst["upstreams"])
            finally:
                h2.close()

        @case("option values: NaN, infinities, overflows and zero are refused with the range")
        def _():
            pid = str(nginx.master_pid)
            for opt, val, needle in (("--duration", "nan", "out of range"), ("--duration", "inf", "out of range"),
                                     ("--duration", "1e300", "out of range"), ("--duration", "0", "more than 0"),
                                     ("--duration", "10m", "not a number"), ("--window", "nan", "out of range"),
                                     ("--calm-after", "1e999", "out of range"),
                                     ("--ringbuf-kb", "100", "not a power of two")):
                expect_usage_error(["--nginx-pid", pid, opt, val], needle)
            expect_usage_error(["--nginx-pid", "0"], "--nginx-pid 0")
            expect_usage_error(["--nginx-pid", pid, "--record", ""], "--record: give the name")
            expect_usage_error(["--nginx-pid", pid, "--record", h.path("x.rec"), "--record-max", "12X"], "not a size")
            # A --btf file that is not BTF: bad input for --check too, in the tool's words, not libbpf's.
            for args in (["--check", "--btf", "/etc/passwd"], ["--nginx-pid", pid, "--btf", "/etc/passwd"]):
                expect_usage_error(args, "--btf /etc/passwd: not a readable BTF file")
                check(b"libbpf" not in run(args).stderr, "%s: libbpf's own message reached the user" % args)

        @case("options of a live run before a subcommand, and --error-log without --nginx-pid, are refused")
        def _():
            expect_usage_error(["--json", "replay", "/nonexistent.rec"], "--json is an option of a live run")
            expect_usage_error(["--redact", "report", "/nonexistent.jsonl"], "--redact is an option of a live run")
            expect_usage_error(["--cgroup", "/n502-no/such/cgroup", "--error-log", "/var/log/nginx/error.log"],
                               "--error-log and --access-log name the logs of the Nginx given with --nginx-pid")

        @case("replay and report take regular files only; a report never overwrites its input")
        def _():
            d = h.path("inputs")
            os.makedirs(d, exist_ok=True)
            fifo = os.path.join(d, "fifo")
            os.mkfifo(fifo)
            expect_usage_error(["replay", d], "is a directory")
            expect_usage_error(["replay", fifo], "not a regular file")
            expect_usage_error(["report", "/dev/zero"], "not a regular file")
            src = os.path.join(d, "out.jsonl")
            line = '{"type":"summary","duration_s":1}\n'
            with open(src, "w") as f:
                f.write(line)
            expect_usage_error(["report", src, "-o", src], "is the input file itself")
            with open(src) as f:
                check(f.read() == line, "the input was changed")

        @case("--record never writes over a file that is not a recording, nor over an empty log a process holds open")
        def _():
            precious = h.path("precious.log")
            with open(precious, "w") as f:
                f.write("keep me\n")
            expect_usage_error(["--nginx-pid", str(nginx.master_pid), "--record", precious],
                               "is not an n502trace recording")
            rec = h.path("seg.rec")
            with open(rec + ".2", "w") as f:
                f.write("keep me too\n")
            expect_usage_error(["--nginx-pid", str(nginx.master_pid), "--record", rec, "--record-max", "1M"],
                               "seg.rec.2 exists and is not an n502trace recording")
            for path, text in ((precious, "keep me\n"), (rec + ".2", "keep me too\n")):
                with open(path) as f:
                    check(f.read() == text, "%s was changed" % path)
            # An empty log, as Nginx's error log is before its first line:
            # only the process that holds it open tells it from nothing.
            empty = h.path("empty.log")
            with open(empty, "a") as f:
                holder = subprocess.Popen(["sleep", "600"], stdout=f)
            try:
                expect_usage_error(["--nginx-pid", str(nginx.master_pid), "--record", empty],
                                   "is empty but open in process %d (sleep)" % holder.pid)
                check(os.path.getsize(empty) == 0, "the empty log was written to")
            finally:
                holder.kill()
                holder.wait()

        @case("not Nginx: a command line that only mentions nginx, or a zombie named nginx")
        def _():
            t = subprocess.Popen(["tail", "-f", nginx.error_log], stdout=subprocess.DEVNULL)
            try:
                harness.wait_until(lambda: harness.proc_comm(t.pid) == "tail", 10, "tail to run")
                expect_usage_error(["--nginx-pid", str(t.pid)], "not Nginx")
            finally:
                t.kill()
                t.wait()
            fake = h.path("nginx")
            shutil.copy("/bin/true", fake)
            z = subprocess.Popen([fake])
            harness.wait_until(lambda: harness.proc_state(z.pid) == "Z", 10, "the zombie")
            try:
                expect_usage_error(["--nginx-pid", str(z.pid)], "zombie")
            finally:
                z.wait()

        @case("ready is the first record even with warnings found before it (a configuration it cannot read)")
        def _():
            away = nginx.conf + ".away"
            os.rename(nginx.conf, away)
            try:
                r = run(["--nginx-pid", str(nginx.master_pid), "--json", "--duration", "1"], timeout=30)
            finally:
                os.rename(away, nginx.conf)
            recs = [json.loads(x) for x in r.stdout.decode().splitlines() if x.strip()]
            check(r.returncode == 0, "exit %d: %s" % (r.returncode, r.stderr.decode(errors="replace")))
            check(recs and recs[0]["type"] == "ready", "first record: %r" % recs[:1])
            check(any(x["type"] == "warning" and x["code"] == "nginx_config" for x in recs),
                  "no nginx_config warning: %r" % recs)

        @case("a configuration read only in part (an include it cannot read): every port is watched, and unix "
              "sockets")
        def _():
            with open(nginx.conf) as f:
                conf = f.read()
            gone = h.path("gone.conf")
            try:
                with open(nginx.conf, "w") as f:
                    f.write(conf.replace("http {", "http {\n    include %s;" % gone, 1))
                r = run(["--nginx-pid", str(nginx.master_pid), "--json", "--duration", "1"], timeout=30)
            finally:
                with open(nginx.conf, "w") as f:
                    f.write(conf)
            recs = [json.loads(x) for x in r.stdout.decode().splitlines() if x.strip()]
            check(r.returncode == 0, "exit %d: %s" % (r.returncode, r.stderr.decode(errors="replace")))
            check(any(x["type"] == "warning" and x["code"] == "nginx_config" and gone in x["message"] for x in recs),
                  "no nginx_config warning naming %s: %r" % (gone, recs))
            lean = [x for x in recs if x["type"] == "warning" and x["code"] == "tracking_lean"]
            check(lean and "every port" in lean[0]["message"], "tracking_lean: %r" % lean)
            # (what it could not read may name a unix: upstream)
            hooks = [p for p in recs[0].get("probes") or [] if p.startswith("tracepoint/syscalls/sys_enter_connect")]
            check(hooks, "the unix-socket hooks are not attached: probes %r" % recs[0].get("probes"))

        @case("an access log in a format it does not read is said, once")
        def _():
            prefix = h.path("odd")
            os.makedirs(prefix, exist_ok=True)
            odd = harness.Nginx(prefix, [("/", "http://127.0.0.1:%d" % harness.free_port())],
                                http_extra="    log_format n502json escape=json '{\"status\":$status,\"uri\":\"$uri\"}';\n"
                                           "    access_log %s n502json;\n" % h.path("json-access.log"))
            odd.start()
            h.on_close("the second Nginx", odd.stop)
            p = subprocess.Popen([BIN, "--nginx-pid", str(odd.master_pid), "--json"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            try:
                read_lines_until(p, lambda l: '"type":"ready"' in l, 20)
                for _ in range(50):
                    harness.http_get(odd.port)
                lines = read_lines_until(p, lambda l: '"access_log_format"' in l, 10)
                check(any("json-access.log" in l for l in lines if '"access_log_format"' in l),
                      "the warning does not name the JSON access log: %r" % lines[-1:])
                for _ in range(60):
                    harness.http_get(odd.port)
            finally:
                p.send_signal(signal.SIGINT)
                out = p.communicate(timeout=20)[0].decode()
            # With what read_lines_until read past the warning and kept: a
            # second one printed at once with the first is there.
            out = getattr(p, "n502_rest", b"").decode() + out
            check(out.count('"access_log_format"') == 0, "said more than once: %r" % out[-500:])

        @case("a reader that goes away stops the tool (| head -1), text and JSON")
        def _():
            for fmt in ([], ["--json"]):
                p = subprocess.Popen([BIN, "--nginx-pid", str(nginx.master_pid)] + fmt, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
                try:
                    read_lines_until(p, lambda l: '"type":"ready"' in l or "n502trace: ready:" in l, 20)
                    p.stdout.close()  # the reader is gone
                    r = harness.http_get(nginx.port)  # a 502: its verdict cannot be written
                    check(r.status == 502, "status %r" % r.status)
                    rc = p.wait(timeout=10)
                finally:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
                err = p.stderr.read()
                p.stderr.close()
                check(rc == 0, "%s: exit %r, want 0 (stderr %r)" % (fmt or "text", rc, err))

        @case("Nginx stops: the tool says so and exits 1 (no --follow)")
        def _():
            p = subprocess.Popen([BIN, "--nginx-pid", str(nginx.master_pid), "--json"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            try:
                read_lines_until(p, lambda l: '"type":"ready"' in l, 20)
                nginx.stop()
                out, err = p.communicate(timeout=15)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            recs = [json.loads(x) for x in out.decode().splitlines() if x.strip()]
            check(p.returncode == 1, "exit %r, want 1" % p.returncode)
            check(b"has exited" in err, "stderr does not say why it exits 1: %r" % err)
            check(any(x["type"] == "warning" and x["code"] == "nginx_gone" for x in recs), "no nginx_gone warning")
            check(recs and recs[-1]["type"] == "summary", "no summary at the end")
    finally:
        h.close()
    print("%d passed, %d failed" % (len(ran) - len(failures), len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
