#!/usr/bin/python3
"""n502trace end-to-end scenarios against a real Nginx and real upstreams.

    run.py --list
    run.py --bin build/n502trace SCENARIO
    run.py --bin build/n502trace --all
    run.py --no-tool SCENARIO|--all     # Nginx's side only (no n502trace)

Each scenario causes exactly one 502 and asserts n502trace's verdict for it.
Must run as root (BPF, cgroups, Nginx with `user www-data`).

What Nginx 1.22.1 (Debian 12) logged for each scenario, as observed with
--no-tool on kernel 6.18 (error_log level info):

  no_listener       connect() failed (111: Connection refused) while connecting to upstream
  listener_stopped  connect() failed (111: Connection refused) while connecting to upstream
  killed            upstream prematurely closed connection while reading response header from upstream
  oom               upstream prematurely closed connection while reading response header from upstream
  segv              upstream prematurely closed connection while reading response header from upstream
  exit              upstream prematurely closed connection while reading response header from upstream
  reset             recv() failed (104: Connection reset by peer) while reading response header from upstream
  close             upstream prematurely closed connection while reading response header from upstream

(The kernel closes a dead process's sockets with a FIN when the receive queue
is empty, which it is: upstream.py has read the whole request. So killed/oom/
segv/exit look exactly like "close" from Nginx's side; only kernel evidence
tells them apart.) Nginx does not retry: there is one server per location,
and every 502 is one upstream attempt.
"""
import argparse
import json
import os
import signal
import sys
import time
import traceback

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Failure, check  # noqa: E402

MSG_REFUSED = "connect() failed (111: Connection refused) while connecting to upstream"
MSG_PREMATURE = "upstream prematurely closed connection while reading response header from upstream"
MSG_RESET = "recv() failed (104: Connection reset by peer) while reading response header from upstream"

VERDICT_DEADLINE = 1.0  # seconds from the 502 response to the verdict record (the README's promise)


class Scenario:
    def __init__(self, h, binary, use_tool):
        self.h = h
        self.binary = binary
        self.use_tool = use_tool
        self.tool = None
        self.nginx = None
        self.verdict = None
        self.notes = []

    def note(self, msg):
        self.notes.append(msg)
        harness.log(msg)

    # -- setup in the order every scenario uses: Nginx, then the tool
    def setup(self, upstream_target):
        self.nginx = self.h.start_nginx([("/", upstream_target)])
        self.note("nginx master %d workers %s on 127.0.0.1:%d -> %s" % (
            self.nginx.master_pid, self.nginx.workers, self.nginx.port, upstream_target))
        if self.use_tool:
            self.tool = self.h.start_tool(self.binary)
            ready = self.tool.ready
            check(ready.get("nginx_pid") == self.nginx.master_pid,
                  "ready.nginx_pid %r != nginx master %d" % (ready.get("nginx_pid"), self.nginx.master_pid))
            check(sorted(ready.get("workers") or []) == sorted(self.nginx.workers),
                  "ready.workers %r != nginx workers %r" % (ready.get("workers"), self.nginx.workers))

    def get(self, path="/", want=502):
        r = harness.http_get(self.nginx.port, path)
        check(r.status == want, "GET %s: status %r, want %d" % (path, r.status, want))
        return r

    def expect_nginx_message(self, msg):
        line = self.nginx.wait_error(msg)
        self.note("nginx logged: %s" % line)
        return line

    def expect_death(self, up, rc_want, timeout=10):
        rc = up.wait_exit(timeout)
        check(rc == rc_want, "upstream pid %d %s, want %s" % (
            up.pid, harness.describe_status(rc), harness.describe_status(rc_want)))
        self.note("upstream pid %d %s" % (up.pid, harness.describe_status(rc)))

    # -- the verdict
    def expect_verdict(self, resp, cause, upstream, nginx_msg, upstream_pid=None, evidence=()):
        """Assert the one verdict for this test's 502.

        evidence: list of requirements; each requirement is a list of
        alternative dicts, one of which must be a subset of some entry."""
        if not self.use_tool:
            return
        left = max(0.0, resp.t_done + VERDICT_DEADLINE - time.monotonic())
        try:
            t, v = self.tool.wait_record("verdict", timeout=left + 0.05)
        except Failure as e:
            raise Failure("no verdict within %.0fs of the 502 (%s)" % (VERDICT_DEADLINE, e))
        self.verdict = v
        late = t - resp.t_done
        check(late <= VERDICT_DEADLINE, "verdict came %.2fs after the 502 (limit %.0fs)" % (late, VERDICT_DEADLINE))
        check(v.get("status") == 502, "verdict status %r, want 502" % v.get("status"))
        workers = set(self.nginx.workers) | set(self.nginx.worker_pids())
        check(v.get("nginx_pid") in workers, "verdict nginx_pid %r not a worker %s" % (v.get("nginx_pid"), sorted(workers)))
        check(v.get("upstream") == upstream, "verdict upstream %r, want %r" % (v.get("upstream"), upstream))
        check(nginx_msg in (v.get("nginx_message") or ""),
              "verdict nginx_message %r does not contain %r" % (v.get("nginx_message"), nginx_msg))
        check(v.get("cause") == cause, "verdict cause %r, want %r" % (v.get("cause"), cause))
        if upstream_pid is not None:
            check(v.get("upstream_pid") == upstream_pid,
                  "verdict upstream_pid %r, want %d" % (v.get("upstream_pid"), upstream_pid))
        ev = v.get("evidence")
        check(isinstance(ev, list), "verdict evidence is not a list: %r" % (ev,))
        for alternatives in evidence:
            if not any(any(all(e.get(k) == val for k, val in alt.items()) for e in ev if isinstance(e, dict))
                       for alt in alternatives):
                raise Failure("verdict evidence has no entry matching %s" % " or ".join(
                    json.dumps(a, sort_keys=True) for a in alternatives))
        self.note("verdict ok: cause %s, %.2fs after the 502" % (cause, late))

    def after_teardown(self):
        """Checks that need the tool stopped (all its output read)."""
        if not self.use_tool or self.tool is None:
            return
        verdicts = self.tool.records("verdict")
        check(len(verdicts) == 1, "want exactly 1 verdict (one 502 was caused), got %d" % len(verdicts))


# ---------------------------------------------------------------- scenarios


def sc_no_listener(s):
    port = harness.free_port()
    check(not harness.port_accepts(port), "port %d unexpectedly accepts" % port)
    s.setup("http://127.0.0.1:%d" % port)
    r = s.get()
    s.expect_nginx_message(MSG_REFUSED)
    s.expect_verdict(r, "upstream_not_listening", "127.0.0.1:%d" % port, "Connection refused")


def sc_listener_stopped(s):
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)  # the tool is ready before the upstream listens
    up = s.h.start_upstream("ok", port=port)
    s.get(want=200)
    up.wait_request(1)
    killer = harness.spawn_kill(signal.SIGTERM, up.pid)
    s.note("/bin/kill -TERM %d ran as pid %d" % (up.pid, killer))
    s.expect_death(up, -signal.SIGTERM)
    harness.wait_port_refusing(port)
    r = s.get()
    s.expect_nginx_message(MSG_REFUSED)
    s.expect_verdict(r, "upstream_not_listening", up.address, "Connection refused", evidence=[
        [{"event": "listen", "pid": up.pid}],
        [{"event": "signal", "pid": killer, "target_pid": up.pid, "sig": 15}],
        [{"event": "exit", "pid": up.pid, "exit_signal": 15}],
    ])


def sc_killed(s):
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)
    up = s.h.start_upstream("hang", port=port)
    req = harness.BackgroundRequest(s.nginx.port)
    req.start()
    up.wait_request(1)
    killer = harness.spawn_kill(signal.SIGKILL, up.pid)
    s.note("/bin/kill -KILL %d ran as pid %d" % (up.pid, killer))
    r = req.result()
    check(r.status == 502, "status %r, want 502" % r.status)
    s.expect_death(up, -signal.SIGKILL)
    s.expect_nginx_message(MSG_PREMATURE)
    s.expect_verdict(r, "upstream_killed", up.address, "prematurely closed", upstream_pid=up.pid, evidence=[
        [{"event": "signal", "pid": killer, "target_pid": up.pid, "sig": 9}],
    ])


def sc_oom(s):
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)
    cg = s.h.memory_cgroup("64M")
    up = s.h.start_upstream("oom", port=port, cgroup=cg)  # moved in before any request
    s.note("upstream pid %d in %s" % (up.pid, cg.path))
    before = cg.oom_control().get("oom_kill", 0)
    r = s.get()
    up.wait_request(1)
    s.expect_death(up, -signal.SIGKILL)
    after = cg.oom_control().get("oom_kill")
    if after is not None:  # kernels since 4.13 count OOM kills per memcg
        check(after > before, "memory.oom_control oom_kill %r -> %r: the kernel did not OOM-kill" % (before, after))
        s.note("memory.oom_control oom_kill %d -> %d" % (before, after))
    s.expect_nginx_message(MSG_PREMATURE)
    s.expect_verdict(r, "upstream_oom_killed", up.address, "prematurely closed", upstream_pid=up.pid, evidence=[
        [{"event": "oom_kill", "pid": up.pid}],
    ])


def sc_segv(s):
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)
    up = s.h.start_upstream("segv", port=port)
    r = s.get()
    up.wait_request(1)
    s.expect_death(up, -signal.SIGSEGV)
    s.expect_nginx_message(MSG_PREMATURE)
    s.expect_verdict(r, "upstream_crashed", up.address, "prematurely closed", upstream_pid=up.pid, evidence=[
        [{"event": "exit", "pid": up.pid, "exit_signal": 11}],
    ])


def sc_exit(s):
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)
    up = s.h.start_upstream("exit", port=port)
    r = s.get()
    up.wait_request(1)
    s.expect_death(up, 3)
    s.expect_nginx_message(MSG_PREMATURE)
    s.expect_verdict(r, "upstream_exited", up.address, "prematurely closed", upstream_pid=up.pid, evidence=[
        [{"event": "exit", "pid": up.pid, "exit_code": 3}],
    ])


def sc_reset(s):
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)
    up = s.h.start_upstream("reset", port=port)
    r = s.get()
    up.wait_request(1)
    s.expect_nginx_message(MSG_RESET)
    s.expect_verdict(r, "upstream_reset", up.address, "Connection reset by peer", upstream_pid=up.pid, evidence=[
        [{"event": "rst_received"}],
    ])


def sc_close(s):
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)
    up = s.h.start_upstream("close", port=port)
    r = s.get()
    up.wait_request(1)
    s.expect_nginx_message(MSG_PREMATURE)
    s.expect_verdict(r, "upstream_closed_early", up.address, "prematurely closed", upstream_pid=up.pid, evidence=[
        [{"event": "close", "pid": up.pid}, {"event": "state", "pid": up.pid, "to": "FIN_WAIT1"}],
    ])


def sc_listener_preexisting(s):
    """The upstream listened before n502trace started: it is found by the
    start-up scan, and its later death still names it."""
    port = harness.free_port()
    s.nginx = s.h.start_nginx([("/", "http://127.0.0.1:%d" % port)])
    up = s.h.start_upstream("ok", port=port)
    if s.use_tool:
        s.tool = s.h.start_tool(s.binary)
    killer = harness.spawn_kill(signal.SIGTERM, up.pid)
    s.note("/bin/kill -TERM %d ran as pid %d" % (up.pid, killer))
    s.expect_death(up, -signal.SIGTERM)
    harness.wait_port_refusing(port)
    r = s.get()
    s.expect_nginx_message(MSG_REFUSED)
    s.expect_verdict(r, "upstream_not_listening", up.address, "Connection refused", evidence=[
        [{"event": "listen", "pid": up.pid}],
        [{"event": "signal", "pid": killer, "target_pid": up.pid, "sig": 15}],
        [{"event": "exit", "pid": up.pid, "exit_signal": 15}],
    ])


def sc_worker_pid(s):
    """--nginx-pid may name a worker: the tool finds the master and all workers."""
    port = harness.free_port()
    s.nginx = s.h.start_nginx([("/", "http://127.0.0.1:%d" % port)])
    worker = s.nginx.workers[-1]
    if s.use_tool:
        s.h.tool = harness.Tool(s.h, s.binary, worker)
        s.tool = s.h.tool.start()
        check(s.tool.ready.get("nginx_pid") == s.nginx.master_pid,
              "ready.nginx_pid %r, want the master %d (given worker %d)" % (
                  s.tool.ready.get("nginx_pid"), s.nginx.master_pid, worker))
        check(sorted(s.tool.ready.get("workers") or []) == sorted(s.nginx.workers),
              "ready.workers %r != %r" % (s.tool.ready.get("workers"), s.nginx.workers))
    up = s.h.start_upstream("segv", port=port)
    r = s.get()
    up.wait_request(1)
    s.expect_death(up, -signal.SIGSEGV)
    s.expect_nginx_message(MSG_PREMATURE)
    s.expect_verdict(r, "upstream_crashed", up.address, "prematurely closed", upstream_pid=up.pid)


def sc_reload(s):
    """After a reload (SIGHUP) the old workers go and new ones serve: the tool
    follows them (fork tracking) and explains their 502s."""
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)
    old = set(s.nginx.workers)
    os.kill(s.nginx.master_pid, signal.SIGHUP)
    new = harness.wait_until(
        lambda: (lambda k: k if len(k) >= s.nginx.nworkers and not (set(k) & old) else None)(
            s.nginx.worker_pids()), 15, "new nginx workers after SIGHUP")
    s.note("reload: workers %s -> %s" % (sorted(old), sorted(new)))
    up = s.h.start_upstream("exit", port=port)
    r = s.get()
    up.wait_request(1)
    s.expect_death(up, 3)
    s.expect_nginx_message(MSG_PREMATURE)
    s.expect_verdict(r, "upstream_exited", up.address, "prematurely closed", upstream_pid=up.pid)
    if s.use_tool:
        check(s.verdict.get("nginx_pid") in new, "verdict from worker %r, not one of the new workers %s" % (
            s.verdict.get("nginx_pid"), sorted(new)))


SCENARIOS = {
    "no_listener": sc_no_listener,
    "listener_stopped": sc_listener_stopped,
    "killed": sc_killed,
    "oom": sc_oom,
    "segv": sc_segv,
    "exit": sc_exit,
    "reset": sc_reset,
    "close": sc_close,
    "listener_preexisting": sc_listener_preexisting,
    "worker_pid": sc_worker_pid,
    "reload": sc_reload,
}

TIME_LIMIT = 30.0


# ---------------------------------------------------------------- runner


def report_failure(name, s, h, err):
    out = sys.stderr
    out.write("\n==== FAIL %s: %s\n" % (name, err))
    tool = h.tool
    if tool is not None:
        out.write("---- n502trace stderr:\n%s\n" % tool.stderr_text().rstrip())
        recs = tool.records() if tool.out else []
        verdicts = [r for r in recs if r.get("type") == "verdict"]
        out.write("---- verdict record(s):\n%s\n" % (
            "\n".join(json.dumps(v, indent=2, sort_keys=True) for v in verdicts) or "(none)"))
        others = [r for r in recs if r.get("type") != "verdict"]
        out.write("---- other records:\n%s\n" % ("\n".join(json.dumps(r, sort_keys=True) for r in others) or "(none)"))
        if tool.out and tool.out.bad:
            out.write("---- non-JSON stdout lines:\n%s\n" % "\n".join(tool.out.bad[:20]))
    if h.nginx is not None:
        out.write("---- nginx error.log (tail):\n%s\n" % h.nginx.tail())
    for u in h.upstreams:
        text = u.stderr_text().strip()
        if text:
            out.write("---- upstream.py (%s, pid %d) stderr:\n%s\n" % (u.mode, u.pid, text[-3000:]))
    out.write("==== end %s\n" % name)
    out.flush()


def run_one(name, binary, use_tool, keep=False):
    fn = SCENARIOS[name]
    h = harness.Harness(name, keep=keep)
    s = Scenario(h, binary, use_tool)
    t0 = time.monotonic()
    errors = []
    try:
        fn(s)
    except Failure as e:
        errors.append(str(e))
    except Exception:
        errors.append("error in test: " + traceback.format_exc())
    finally:
        h.close(remove_dir=False)  # keep error.log etc. for the report
    errors += ["teardown: " + e for e in h.close_errors]
    if not errors:
        try:
            s.after_teardown()
        except Failure as e:
            errors.append(str(e))
    elapsed = time.monotonic() - t0
    if not errors and elapsed > TIME_LIMIT:
        errors.append("took %.1fs (limit %.0fs)" % (elapsed, TIME_LIMIT))
    if errors:
        report_failure(name, s, h, "\n  ".join(errors))
    elif use_tool and s.tool is not None:
        # Show what was asserted on, so a CI log tells what the tool said.
        for v in s.tool.records("verdict"):
            print("[e2e] verdict: cause=%s upstream_pid=%s: %s" % (v.get("cause"), v.get("upstream_pid"),
                                                                  v.get("explanation")))
            if os.environ.get("N502_SHOW_VERDICT"):
                print(json.dumps(v))
    h.remove_dir()
    print("%s %s (%.1fs)%s" % ("FAIL" if errors else "PASS", name, elapsed, "" if use_tool else " [no-tool]"))
    sys.stdout.flush()
    return not errors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="path to the n502trace binary")
    ap.add_argument("--list", action="store_true", help="print scenario names")
    ap.add_argument("--all", action="store_true", help="run every scenario")
    ap.add_argument("--no-tool", action="store_true", help="check only Nginx's side, without n502trace")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs")
    ap.add_argument("scenario", nargs="*")
    args = ap.parse_args()

    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    names = list(SCENARIOS) if args.all else args.scenario
    if not names:
        ap.error("name a scenario, or --all, or --list")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error("unknown scenario(s): %s (see --list)" % ", ".join(unknown))
    if os.geteuid() != 0:
        sys.stderr.write("run.py: must run as root\n")
        return 2
    use_tool = not args.no_tool
    binary = None
    if use_tool:
        if not args.bin:
            ap.error("--bin PATH is required (or --no-tool)")
        binary = os.path.abspath(args.bin)
        if not os.access(binary, os.X_OK):
            sys.stderr.write("run.py: %s is not an executable file\n" % binary)
            return 2
    failed = [n for n in names if not run_one(n, binary, use_tool, keep=args.keep)]
    if len(names) > 1:
        print("%d/%d passed%s" % (len(names) - len(failed), len(names),
                                  (": failed " + " ".join(failed)) if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
