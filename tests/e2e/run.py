#!/usr/bin/python3
"""n502trace end-to-end scenarios against a real Nginx and real upstreams.

    run.py --list
    run.py --bin build/n502trace SCENARIO
    run.py --bin build/n502trace --all
    run.py --no-tool SCENARIO|--all     # Nginx's side only (no n502trace)

Each scenario causes one 502 (or 504) and asserts n502trace's verdict for it,
except no_live_upstreams (three error lines: three verdicts) and
backlog_full_tcp (the count is of verdicts for GET /target). Must run as root
(BPF, cgroups, netns, nftables, Nginx with `user www-data`). Needs the Debian
packages nginx, php-fpm (php8.2-fpm), gunicorn and nftables, plus iproute2 (ip, ss).

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

The scenarios for the newer causes (same Nginx, kernel, level info; [crit]
where shown, else [error]; DIR is the test's temp dir):

  socket_missing     [crit] connect() to unix:DIR/missing.sock failed (2: No such file or directory)
                       while connecting to upstream                                         -> 502
  permission_denied  [crit] connect() to unix:DIR/up.sock failed (13: Permission denied)
                       while connecting to upstream (socket 0600 root, workers www-data)   -> 502
  backlog_full_unix  connect() to unix:DIR/up.sock failed (11: Resource temporarily unavailable)
                       while connecting to upstream                                         -> 502
                     (listen backlog 0 on a unix socket queues exactly ONE connection on
                     6.18: the kernel refuses once queue length > backlog. The test waits
                     for `ss -xl` Recv-Q 1 before the second request.)
  backlog_full_tcp   upstream timed out (110: Connection timed out) while connecting to upstream -> 504
                     (listen backlog 0 on TCP: one connection, the test's own filler socket,
                     completes into the accept queue; `ss -ltn` Recv-Q 1 > Send-Q 0; then
                     SYNs are dropped. No filler goes through Nginx, so the only verdict
                     is for GET /target.)
  connect_timeout    upstream timed out (110: Connection timed out) while connecting to upstream -> 504
                     (nftables drops SYNs to the port; nothing listens there)
  firewall_reset     connect() failed (111: Connection refused) while connecting to upstream   -> 502
                     (nftables `reject with tcp reset` on output; upstream.py listens)
  ports_exhausted    [crit] connect() to 127.0.0.1:P failed (99: Cannot assign requested address)
                       while connecting to upstream                                         -> 502
                     (in a netns with ip_local_port_range 40000 40000; note the message is
                     "connect() to ADDR failed", the synchronous-connect form, not
                     "connect() failed")
  invalid_response   upstream sent too big header while reading response header from upstream -> 502
  resolve_failed     n502-e2e-upstream.invalid could not be resolved (110: Operation timed out)
                       (proxy_pass http://$up:8080, a resolver on a loopback UDP port nothing
                       listens on, resolver_timeout 1s; no upstream field)                  -> 502
  self_connect       upstream sent no valid HTTP/1.0 header while reading response header from
                       upstream, then upstream timed out (110: Connection timed out) while
                       reading upstream (proxy_bind to the upstream's own port, nothing listening:
                       the connection meets itself)                       -> no response (009)
  upstream_timeout   upstream timed out (110: Connection timed out) while reading response
                       header from upstream                                                 -> 504
  upstream_timeout_speaks_first  the same, from a server that sent the start of its response
                       before reading the request (named through its descriptors)         -> 504
  no_live_upstreams  request 1: connect() failed (111: Connection refused) while connecting to
                       upstream, twice (upstream "http://127.0.0.1:P1/one", then P2)      -> 502
                     request 2: no live upstreams while connecting to upstream
                       (upstream "http://pool/two")                                         -> 502
  keepalive_race     recv() failed (104: Connection reset by peer) while reading response header
                       from upstream                                                        -> 502
  fastcgi_php_fpm_killed
                     recv() failed (104: Connection reset by peer) while reading response header
                       from upstream                                                        -> 502
                     (NOT "prematurely closed": the FPM child had not read the empty
                     FCGI_STDIN record that came with the params, and a unix socket closed
                     with unread data gives its peer ECONNRESET; deterministic.)
  fastcgi_php_fpm_terminate_timeout
                     recv() failed (104: Connection reset by peer) while reading response header
                       from upstream (request_terminate_timeout 2s: the master's SIGTERM)  -> 502
  gunicorn_worker_timeout
                     upstream prematurely closed connection while reading response header
                       from upstream (gunicorn --timeout 2: its master's SIGABRT, handled) -> 502
  uwsgi_killed       upstream prematurely closed connection while reading response header
                       from upstream (upstream "uwsgi://127.0.0.1:P")                       -> 502
  grpc_killed        upstream prematurely closed connection while reading response header
                       from upstream (upstream "grpc://127.0.0.1:P"; an HTTP/1.1 client,
                       upstream.py reads the h2 preface and frames up to END_STREAM and
                       never answers)                                                       -> 502
  dual_stack_killed  as ipv6_killed, Nginx to 127.0.0.1 and the upstream listening on [::]
                     (dual-stack: it sees ::ffff:127.0.0.1)
  ipv6_killed        upstream prematurely closed connection while reading response header
                       from upstream (upstream "http://[::1]:P/")                           -> 502

proxy_connect_timeout is 2s, not 1s, where a SYN retransmission is asserted
(backlog_full_tcp, connect_timeout): the first retransmission comes 1 s after
the SYN (TCP_TIMEOUT_INIT), so a 1s connect timeout would race it.
"""
import argparse
import datetime
import errno
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import sys
import subprocess
import time
import traceback

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Failure, check  # noqa: E402

MSG_REFUSED = "connect() failed (111: Connection refused) while connecting to upstream"
MSG_PREMATURE = "upstream prematurely closed connection while reading response header from upstream"
MSG_RESET = "recv() failed (104: Connection reset by peer) while reading response header from upstream"
MSG_NO_VALID_HEADER = "upstream sent no valid HTTP/1.0 header while reading response header from upstream"
MSG_READ_TIMEOUT_BODY = "upstream timed out (110: Connection timed out) while reading upstream"

VERDICT_DEADLINE = 1.0  # seconds from the 502 response to the verdict record (the README's promise)


# n502trace's default, adaptive tracking, starts watching failures only (its
# tracking_lean warning) and follows every connection whole from the first
# failure on (tracking_full). Most failures are explained from that first
# sight as fully as with --tracking full (run.py --full checks that mode's
# promises); these differ, and are checked for what adaptive tracking
# promises instead:
ADAPTIVE = True
# The cause as in full tracking, but the evidence of what came before the
# failure is not there (an adopted connection).
ADAPTIVE_NO_EVIDENCE = {"preexisting_keepalive"}
# Failures the kernel cannot tell from a normal close (the upstream answered
# something first, or Nginx gave up waiting, as it does for a client gone):
# the first verdict is `unknown`, with the cause Nginx's
# message gives and a note saying why (adaptive_cycle shows the next one
# explained).
ADAPTIVE_FIRST_UNKNOWN = {
    "invalid_response": "upstream_bug",
    "upstream_timeout": "upstream_slow",
    "upstream_timeout_speaks_first": "upstream_slow",
    "keepalive_race": "upstream_reset",
}
LEAN_NOTE = "was watching only for failures the kernel can tell from a normal close"


def parse_rfc3339(text):
    """Seconds since the epoch of the tool's "2026-12-07T17:50:01.123456Z", or None."""
    if not isinstance(text, str) or not text.endswith("Z"):
        return None
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return None


class Scenario:
    def __init__(self, h, binary, use_tool):
        self.h = h
        self.name = None  # set by run_one
        self.binary = binary
        self.use_tool = use_tool
        self.tool = None
        self.nginx = None
        self.verdict = None
        self.notes = []
        # after_teardown: how many verdicts (of those count_filter accepts) the test caused
        self.want_verdicts = 1
        self.count_filter = None
        # after_teardown: {field: value} the tool's summary record must have
        self.want_summary = {}
        # after_teardown: checks of what the tool did NOT say, run once it
        # has stopped and every record it printed has been read (while it
        # runs, a record printed a moment ago may still be in the pipe)
        self.after_stop = []
        self.results = []  # one row per asserted verdict, for scripts/accuracy.sh

    def note(self, msg):
        self.notes.append(msg)
        harness.log(msg)

    # -- setup in the order every scenario uses: Nginx, then the tool
    def setup(self, upstream_target, directives=(), **nginx_kw):
        """Nginx with location / -> upstream_target (proxy_pass; None for none)
        plus directives; nginx_kw for harness.Nginx (http_extra, workers, netns)."""
        self.nginx = self.h.start_nginx([("/", upstream_target, list(directives))], **nginx_kw)
        self.note("nginx master %d workers %s on 127.0.0.1:%d -> %s" % (
            self.nginx.master_pid, self.nginx.workers, self.nginx.port, upstream_target))
        if self.use_tool:
            self.tool = self.h.start_tool(self.binary)
            ready = self.tool.ready
            check(ready.get("nginx_pid") == self.nginx.master_pid,
                  "ready.nginx_pid %r != nginx master %d" % (ready.get("nginx_pid"), self.nginx.master_pid))
            check(sorted(ready.get("workers") or []) == sorted(self.nginx.workers),
                  "ready.workers %r != nginx workers %r" % (ready.get("workers"), self.nginx.workers))
            # TCP needs no syscall tracepoint (they slow every syscall on the
            # host); the unix-socket hooks come with a unix: upstream in the
            # configuration, which the tool reads (or a variable in a target:
            # it may be one).
            names_unix = "unix:" in repr((upstream_target, list(directives), nginx_kw)) or "$" in str(upstream_target)
            syscall_hooks = [p for p in ready.get("probes") or [] if p.startswith("tracepoint/syscalls/")]
            if names_unix:
                check(len(syscall_hooks) == 7, "unix upstream configured, but the syscall hooks attached are %r"
                      % syscall_hooks)
            else:
                check(not syscall_hooks, "TCP upstreams only, but syscall hooks are attached: %r" % syscall_hooks)

    def get(self, path="/", want=502, source_port=None):
        r = harness.http_get(self.nginx.port, path, netns=self.nginx.netns, source_port=source_port)
        check(r.status == want, "GET %s: status %r, want %d" % (path, r.status, want))
        return r

    def expect_nginx_message(self, msg, nth=1):
        line = self.nginx.wait_error(msg, nth=nth)
        self.note("nginx logged: %s" % line)
        return line

    def expect_death(self, up, rc_want, timeout=10):
        rc = up.wait_exit(timeout)
        check(rc == rc_want, "upstream pid %d %s, want %s" % (
            up.pid, harness.describe_status(rc), harness.describe_status(rc_want)))
        self.note("upstream pid %d %s" % (up.pid, harness.describe_status(rc)))

    # -- the verdict
    def expect_verdict(self, resp, cause, upstream, nginx_msg, upstream_pid=None, evidence=(),
                       status=502, facts=None, match=None, attempt=None):
        """Assert the verdict for this test's 502 (or 504: status).

        upstream: the verdict's "upstream", or None not to check it.
        evidence: list of requirements; each requirement is a list of
        alternative dicts, one of which must be a subset of some entry.
        facts: {name: value or Pred}: verdict["facts"][name] must equal value
        (same JSON type: true is not 1) or satisfy the Pred.
        match: picks the verdict (a predicate on the record) when the test
        causes several; default the first verdict.
        attempt: the verdict's "attempt" must be this."""
        if not self.use_tool:
            return None
        left = max(0.0, resp.t_done + VERDICT_DEADLINE - time.monotonic())
        try:
            t, v = self.tool.wait_record("verdict", pred=match, timeout=left + 0.05)
        except Failure as e:
            raise Failure("no %sverdict within %.0fs of the %d (%s)" % (
                "matching " if match else "", VERDICT_DEADLINE, status, e))
        self.verdict = v
        msg = v.get("nginx_message") or ""
        got = "http09" if msg.startswith("upstream sent no valid HTTP/1.0 header") else \
            "cut_short" if "while reading upstream" in msg else "status"
        check(v.get("client_got") == got, "client_got %r, want %s" % (v.get("client_got"), got))
        # Every piece of evidence names its actor: a softirq record's is the
        # socket's owner, known by the verdict (never "pid 0 (nginx)").
        nameless = [e for e in v.get("evidence") or [] if e.get("pid") == 0 and e.get("comm") == "nginx"]
        check(not nameless, "evidence without its Nginx worker: %r" % nameless[:1])
        # The failure's time: its line read before the verdict was made,
        # and by the time the client had its response (a second of slack).
        logged, made = parse_rfc3339(v.get("logged")), parse_rfc3339(v.get("ts"))
        done_wall = time.time() - (time.monotonic() - resp.t_done)
        check(logged is not None and logged <= made and logged <= done_wall + 1.0,
              "logged %r: not before the verdict (%r) and by the response's end" % (v.get("logged"), v.get("ts")))
        if ADAPTIVE and not self.name.startswith("adaptive_") and self.adaptive_verdict(v, cause, evidence):
            return v
        if ADAPTIVE and self.name in ADAPTIVE_NO_EVIDENCE:
            evidence = ()
        self.results.append({"expected": cause, "cause": v.get("cause"), "status": v.get("status"),
                             "nginx_message": v.get("nginx_message"), "log_only_cause": v.get("log_only_cause")})
        late = t - resp.t_done
        check(late <= VERDICT_DEADLINE, "verdict came %.2fs after the %d (limit %.0fs)" % (late, status, VERDICT_DEADLINE))
        check(v.get("status") == status, "verdict status %r, want %d" % (v.get("status"), status))
        workers = set(self.nginx.workers) | set(self.nginx.worker_pids())
        check(v.get("nginx_pid") in workers, "verdict nginx_pid %r not a worker %s" % (v.get("nginx_pid"), sorted(workers)))
        if upstream is not None:
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
            if not any(any(all(fact_ok(e.get(k), val) for k, val in alt.items())
                               for e in ev if isinstance(e, dict))
                       for alt in alternatives):
                raise Failure("verdict evidence has no entry matching %s" % " or ".join(
                    json.dumps(a, sort_keys=True, default=str) for a in alternatives))
        if facts:
            got = v.get("facts")
            check(isinstance(got, dict), "verdict facts is not an object: %r" % (got,))
            for name, want in facts.items():
                check(name in got, "verdict facts has no %r (facts: %s)" % (name, json.dumps(got, sort_keys=True)))
                check(fact_ok(got[name], want), "verdict facts.%s = %s, want %s" % (
                    name, json.dumps(got[name]), want if isinstance(want, Pred) else json.dumps(want)))
        if attempt is not None:
            check(v.get("attempt") == attempt and not isinstance(v.get("attempt"), bool),
                  "verdict attempt %r, want %d" % (v.get("attempt"), attempt))
        self.note("verdict ok: cause %s, %.2fs after the %d" % (cause, late, status))
        return v

    def adaptive_verdict(self, v, cause, evidence):
        """Adaptive tracking (the default): lean at the start, full after the failure; True when
        the verdict was checked here (a first failure that stays unknown)."""
        self.tool.wait_record("warning", pred=lambda w: w.get("code") == "tracking_lean", timeout=1)
        self.tool.wait_record("warning", pred=lambda w: w.get("code") == "tracking_full", timeout=3)
        log_cause = ADAPTIVE_FIRST_UNKNOWN.get(self.name)
        if log_cause is None:
            return False
        self.results.append({"expected": "unknown", "cause": v.get("cause"), "status": v.get("status"),
                             "nginx_message": v.get("nginx_message"), "log_only_cause": v.get("log_only_cause")})
        check(v.get("cause") == "unknown", "first verdict in lean tracking: cause %r, want unknown" % v.get("cause"))
        check(v.get("log_only_cause") == log_cause, "verdict log_only_cause %r, want %r" % (
            v.get("log_only_cause"), log_cause))
        notes = v.get("notes") or []
        check(any(LEAN_NOTE in n or "only from its failure on" in n for n in notes),
              "the unknown verdict does not say adaptive tracking was lean: notes %r" % (notes,))
        self.note("verdict ok (adaptive, first failure): unknown, log cause %s (full tracking: %s)" % (log_cause, cause))
        return True

    def after_teardown(self):
        """Checks that need the tool stopped (all its output read)."""
        if not self.use_tool or self.tool is None:
            return
        verdicts = [v for v in self.tool.records("verdict") if self.count_filter is None or self.count_filter(v)]
        check(len(verdicts) == self.want_verdicts, "want exactly %d verdict(s)%s, got %d" % (
            self.want_verdicts, " (of those counted)" if self.count_filter else "", len(verdicts)))
        if self.want_summary:
            summary = self.tool.records("summary")[-1]
            for k, want in self.want_summary.items():
                check(fact_ok(summary.get(k), want), "summary %s = %r, want %r" % (k, summary.get(k), want))
        for fn in self.after_stop:
            fn()

    def lean_until(self, t_wall, why):
        """After the tool stopped: no tracking_full warning stamped before
        t_wall (time.time(), taken before the failure meant to switch it).
        (Checked while it runs, a switch a moment ago may not be read yet.)"""
        def lean():
            early = [w for w in self.tool.records("warning") if w.get("code") == "tracking_full" and
                     not (parse_rfc3339(w.get("ts")) or 0) >= t_wall]
            check(not early, "%s switched to full tracking: %r" % (why, [(w.get("ts"), w.get("message"))
                                                                       for w in early]))
        self.after_stop.append(lean)

    def never_warned(self, code, why):
        """After the tool stopped: no warning `code` in its output."""
        def absent():
            said = [w for w in self.tool.records("warning") if w.get("code") == code]
            check(not said, "%s: %r" % (why, [w.get("message") for w in said]))
        self.after_stop.append(absent)


class Pred:
    """A condition on a fact, with a description for failure messages."""

    def __init__(self, desc, fn):
        self.desc = desc
        self.fn = fn

    def __str__(self):
        return self.desc


def fact_ok(got, want):
    if isinstance(want, Pred):
        try:
            return bool(want.fn(got))
        except (TypeError, ValueError, AttributeError):
            return False
    if isinstance(want, bool):
        return got is want
    if isinstance(want, (int, float)):
        return isinstance(got, (int, float)) and not isinstance(got, bool) and got == want
    return got == want


def request_path_is(path):
    """A verdict predicate: its request line is GET path."""
    return lambda v: (v.get("request") or "").split(" ")[1:2] == [path]


# ---------------------------------------------------------------- scenarios


def sc_no_listener(s):
    port = harness.free_port()
    check(not harness.port_accepts(port), "port %d unexpectedly accepts" % port)
    s.setup("http://127.0.0.1:%d" % port)
    r = s.get()
    s.expect_nginx_message(MSG_REFUSED)
    s.expect_verdict(r, "upstream_not_listening", "127.0.0.1:%d" % port, "Connection refused")


def sc_resolve_failed(s):
    """proxy_pass names its upstream through a variable, resolved per
    request, and the resolver does not answer (a loopback UDP port nothing
    listens on): "could not be resolved (110: Operation timed out)", a 502
    with no connection. Not another upstream's failure, nor explained again
    from its access line."""
    dns = harness.free_port()
    name = "n502-e2e-upstream.invalid"
    s.setup("http://$up:8080", ["resolver 127.0.0.1:%d;" % dns, "resolver_timeout 1s;", "set $up %s;" % name])
    r = s.get()
    s.expect_nginx_message("%s could not be resolved (110: Operation timed out)" % name)
    s.expect_verdict(r, "upstream_unresolvable", name, "could not be resolved")
    check("could not resolve the upstream name %s" % name in s.verdict.get("explanation", ""),
          "explanation: %r" % s.verdict.get("explanation"))


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


def with_tool_args(args, fn):
    """Runs fn() with extra n502trace arguments for the tool it starts."""
    saved = os.environ.get("N502_EXTRA_ARGS")
    os.environ["N502_EXTRA_ARGS"] = ((saved or "") + " " + args).strip()
    try:
        return fn()
    finally:
        if saved is None:
            del os.environ["N502_EXTRA_ARGS"]
        else:
            os.environ["N502_EXTRA_ARGS"] = saved


def sc_window_expired(s):
    """--window: a listener that went away longer ago than the window is let
    go (counted in the summary), and the verdict says so instead of naming it."""
    port = harness.free_port()
    with_tool_args("--window 1", lambda: s.setup("http://127.0.0.1:%d" % port))
    up = s.h.start_upstream("ok", port=port)
    s.get(want=200)
    up.wait_request(1)
    up.stop()
    harness.wait_port_refusing(port)
    # The behaviour under test is time passing: the window (1 s) plus the
    # tool's once-a-second sweep, with margin.
    t_gone = time.monotonic()
    harness.wait_until(lambda: time.monotonic() - t_gone > 2.5, 5, "the window to pass")
    r = s.get()
    s.expect_nginx_message(MSG_REFUSED)
    v = s.expect_verdict(r, "upstream_not_listening", up.address, "Connection refused")
    if s.use_tool:
        check("longer ago than the evidence window" in v["explanation"], "explanation %r" % v["explanation"])
        check(not any(e["event"] == "listen" for e in v["evidence"]), "the expired listener is still named")
        s.tool.stop()
        summary = s.tool.records("summary")[-1]
        check(summary["window_s"] == 1 and summary["expired"] >= 2,
              "summary window_s %r expired %r, want 1 and >= 2 (the listener and its process)" % (
                  summary["window_s"], summary["expired"]))


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


def expect_reset(s, port, in_softirq=False):
    """An upstream on port that resets the connection it reads a request
    from: a 502 explained as upstream_reset, from the RST received. in_softirq:
    the RST is sent once the worker sleeps, so that it is taken in softirq
    (not from the socket's backlog in the worker's own context)."""
    up = s.h.start_upstream("reset", port=port, args=["--reset-when-asleep"] if in_softirq else [])
    r = s.get()
    up.wait_request(1)
    s.expect_nginx_message(MSG_RESET)
    if in_softirq:
        check("PEER_" not in up.stderr_text(), "the RST was not sent to a sleeping worker: %s" % up.stderr_text())
    s.expect_verdict(r, "upstream_reset", up.address, "Connection reset by peer", upstream_pid=up.pid, evidence=[
        [{"event": "rst_received"}],
    ])


def sc_reset(s):
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)
    expect_reset(s, port)


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


def sc_listener_preexisting_drain(s):
    """The upstream listened before n502trace started and stops gracefully:
    it closes its listening socket (which had no kernel record: that close
    is not seen) and lives on, draining. The refused connect is explained by
    asking the host whether anything listens there now."""
    port = harness.free_port()
    s.nginx = s.h.start_nginx([("/", "http://127.0.0.1:%d" % port)])
    up = s.h.start_upstream("drain", port=port)
    if s.use_tool:
        s.tool = s.h.start_tool(s.binary)
    os.kill(up.pid, signal.SIGTERM)
    up.out.wait_word("UNLISTENED", 10)
    harness.wait_port_refusing(port)
    r = s.get()
    s.expect_nginx_message(MSG_REFUSED)
    v = s.expect_verdict(r, "upstream_not_listening", up.address, "Connection refused", evidence=[
        [{"event": "listen", "pid": up.pid}],
    ])
    check(up.proc.poll() is None, "the draining upstream (pid %d) exited" % up.pid)
    if v is not None:
        check(v.get("confidence") == "medium", "confidence %r, want medium" % v.get("confidence"))
        check("no longer listens" in v.get("explanation", ""), "explanation: %r" % v.get("explanation"))


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
        s.never_warned("nginx_user", "a reload that kept Nginx's user gave an nginx_user warning")


def sc_reload_new_port(s):
    """A reload whose configuration names another upstream port: the tool
    reads the configuration again when the new workers come, watches the new
    port, says the new upstream is down, and explains the first 502 to it
    (while lean, a port it did not watch would make that one unknown)."""
    p1, p2 = harness.free_port(), harness.free_port()
    s.setup("http://127.0.0.1:%d" % p1)
    old = set(s.nginx.workers)
    with open(s.nginx.conf) as f:
        conf = f.read()
    check(conf.count("127.0.0.1:%d" % p1) == 1, "the upstream is not named once in %s" % s.nginx.conf)
    with open(s.nginx.conf, "w") as f:
        f.write(conf.replace("127.0.0.1:%d" % p1, "127.0.0.1:%d" % p2))
    os.kill(s.nginx.master_pid, signal.SIGHUP)
    new = harness.wait_until(
        lambda: (lambda k: k if len(k) >= s.nginx.nworkers and not (set(k) & old) else None)(
            s.nginx.worker_pids()), 15, "new nginx workers after SIGHUP")
    s.note("reload: workers %s -> %s, upstream port %d -> %d" % (sorted(old), sorted(new), p1, p2))
    # At once: the kernel side watches every port from Nginx's fork until the
    # tool has read the new configuration.
    r = s.get()
    if s.use_tool:
        _, w = s.tool.wait_record("warning", pred=lambda w: w.get("code") == "nginx_reloaded", timeout=5)
        check("127.0.0.1:%d" % p2 in w["message"], "nginx_reloaded does not name the new upstream: %r" % w["message"])
        if ADAPTIVE:
            check(str(p2) in w["message"].split("ports")[-1], "port %d not watched: %r" % (p2, w["message"]))
        s.tool.wait_record("warning", pred=lambda w: w.get("code") == "upstream_down" and
                           "127.0.0.1:%d" % p2 in w.get("message", ""), timeout=5)
    s.expect_nginx_message(MSG_REFUSED)
    s.expect_verdict(r, "upstream_not_listening", "127.0.0.1:%d" % p2, "Connection refused")
    if s.use_tool:
        check(s.verdict.get("nginx_pid") in new, "verdict from worker %r, not one of the new workers %s" % (
            s.verdict.get("nginx_pid"), sorted(new)))
    # A reload that fails (the file does not pass) forks no worker. A worker
    # that dies later is respawned with the configuration Nginx runs: the
    # file, which names another port now, is not what it runs.
    s.want_verdicts = 2
    p3 = harness.free_port()
    with open(s.nginx.conf) as f:
        conf = f.read()
    with open(s.nginx.conf, "w") as f:
        f.write(conf.replace("127.0.0.1:%d" % p2, "127.0.0.1:%d" % p3).replace(
            "http {", "http {\n    n502_no_such_directive on;", 1))
    os.kill(s.nginx.master_pid, signal.SIGHUP)
    s.expect_nginx_message('unknown directive "n502_no_such_directive"')
    victim = sorted(new)[0]
    os.kill(victim, signal.SIGKILL)
    respawned = harness.wait_until(
        lambda: (lambda k: k if len(k) >= s.nginx.nworkers and victim not in k else None)(
            s.nginx.worker_pids()), 15, "Nginx to respawn worker %d" % victim)
    s.note("failed reload, then worker %d killed: workers %s" % (victim, sorted(respawned)))
    r = harness.http_get(s.nginx.port, "/after-respawn")
    check(r.status == 502, "GET /after-respawn: status %r, want 502" % r.status)
    s.expect_nginx_message(MSG_REFUSED, nth=2)
    if s.use_tool:
        _, v = s.tool.wait_record("verdict", pred=lambda v: "/after-respawn" in v.get("request", ""), timeout=5)
        check(v.get("cause") == "upstream_not_listening" and v.get("upstream") == "127.0.0.1:%d" % p2,
              "after the respawn: %s toward %s" % (v.get("cause"), v.get("upstream")))
        def one_reload():
            reloads = [w for w in s.tool.records("warning") if w.get("code") == "nginx_reloaded"]
            check(len(reloads) == 1, "a failed reload and a respawn were taken for a reload: %r" %
                  [w["message"] for w in reloads[1:]])
        s.after_stop.append(one_reload)


# ---------------------------------------------------------------- scenarios for the newer causes


MSG_CONNECT_TIMEOUT = "upstream timed out (110: Connection timed out) while connecting to upstream"
MSG_READ_TIMEOUT = "upstream timed out (110: Connection timed out) while reading response header from upstream"
MSG_TOO_BIG = "upstream sent too big header while reading response header from upstream"
MSG_NO_LIVE = "no live upstreams while connecting to upstream"

# The first SYN retransmission comes 1 s (TCP_TIMEOUT_INIT) after the SYN. A
# proxy_connect_timeout of 1s would race it; 2s leaves it a whole second.
CONNECT_TIMEOUT = "2s"


def msg_unix_connect(sock, err):
    return "connect() to unix:%s failed (%s) while connecting to upstream" % (sock, err)


def tcp_syn_retrans():
    """TcpExt TCPSynRetrans of this network namespace (SYNs retransmitted)."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split()[1:], values.split()[1:]))["TCPSynRetrans"])
    raise Failure("no TcpExt TCPSynRetrans in /proc/net/netstat")


def ss_tcp_states(port, netns=None, side="sport"):
    """{(local, peer): state} of TCP sockets whose sport/dport is port."""
    out = {}
    for line in harness._ss(["-tanH", "%s = :%d" % (side, port)], netns):
        f = line.split()
        if len(f) >= 5:
            out[(f[3], f[4])] = f[0]
    return out


def killed_flow(s, up, path="/"):
    """A request that up holds; SIGKILL up from /bin/kill; returns (response, killer)."""
    req = harness.BackgroundRequest(s.nginx.port, path)
    req.start()
    up.wait_request(1)
    killer = harness.spawn_kill(signal.SIGKILL, up.pid)
    s.note("/bin/kill -KILL %d ran as pid %d" % (up.pid, killer))
    r = req.result()
    check(r.status == 502, "status %r, want 502" % r.status)
    s.expect_death(up, -signal.SIGKILL)
    return r, killer


def sc_socket_missing(s):
    sock = s.h.path("missing.sock")
    s.setup("http://unix:%s:" % sock)
    check(not os.path.exists(sock), "%s exists" % sock)
    r = s.get()
    s.expect_nginx_message(msg_unix_connect(sock, "2: No such file or directory"))
    s.expect_verdict(r, "upstream_socket_missing", "unix:" + sock, "No such file or directory", evidence=[
        [{"event": "connect", "error": 2}],
    ])


def sc_permission_denied(s):
    sock = s.h.path("up.sock")
    s.setup("http://unix:%s:" % sock)
    up = s.h.start_upstream("ok", unix=sock, args=["--sock-mode", "0600"])
    st = os.stat(sock)
    check(stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0,
          "%s mode %o uid %d, want 0600 root" % (sock, stat.S_IMODE(st.st_mode), st.st_uid))
    www = pwd.getpwnam("www-data").pw_uid
    for w in s.nginx.workers:
        check(proc_uid(w) == www, "nginx worker %d runs as uid %r, want www-data (%d)" % (w, proc_uid(w), www))
    r = s.get()
    s.expect_nginx_message(msg_unix_connect(sock, "13: Permission denied"))
    s.expect_verdict(r, "upstream_permission_denied", up.address, "Permission denied", facts={
        "socket_mode": "0600", "worker_uid": www, "mode_explains": True,
    })
    check(up.count_when_stopped("REQUEST") == 0, "the upstream got a request")


def sc_backlog_full_unix(s):
    """listen(0) on a unix socket lets ONE connection queue (the kernel refuses
    when the queue length > backlog); the second connect gets EAGAIN."""
    sock = s.h.path("up.sock")
    s.setup("http://unix:%s:" % sock)
    s.nginx.stop_signal = signal.SIGTERM  # the first request is left hanging
    up = s.h.start_upstream("noaccept", unix=sock)
    check(harness.unix_listen_queue(sock) == (0, 0), "listener queue %r, want (0, 0)" % (harness.unix_listen_queue(sock),))
    first = harness.BackgroundRequest(s.nginx.port, "/first")
    first.start()
    harness.wait_until(lambda: harness.unix_listen_queue(sock) == (1, 0), 5,
                       "Nginx's first connection to be queued on %s (ss -xl Recv-Q 1)" % sock)
    r = s.get("/second")
    s.expect_nginx_message(msg_unix_connect(sock, "11: Resource temporarily unavailable"))
    check(first.is_alive(), "the first request ended: %r %r" % (first.response, first.error))
    check(len(s.nginx.error_lines()) == 1, "want one error line, got:\n%s" % "\n".join(s.nginx.error_lines()))
    s.expect_verdict(r, "upstream_backlog_full", up.address, "Resource temporarily unavailable",
                     match=request_path_is("/second"), facts={"listener_pid": up.pid, "backlog": 0},
                     evidence=[[{"event": "connect", "error": 11}]])


def sc_backlog_full_tcp(s):
    """listen(0) on TCP: one connection completes into the accept queue; with
    the queue full the listener drops SYNs, so Nginx's connect times out."""
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port, ["proxy_connect_timeout %s;" % CONNECT_TIMEOUT])
    up = s.h.start_upstream("noaccept", port=port)
    check(harness.tcp_listen_queue(port) == (0, 0), "accept queue %r, want (0, 0)" % (harness.tcp_listen_queue(port),))
    # The filler: our own connection, which the kernel completes and queues.
    filler = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.h.on_close("close the filler connection", filler.close)
    q = harness.wait_until(lambda: (lambda q: q if q and q[0] > q[1] else None)(harness.tcp_listen_queue(port)), 5,
                           "the accept queue of port %d to be full (ss -ltn Recv-Q > Send-Q)" % port)
    s.note("accept queue of 127.0.0.1:%d full: Recv-Q %d > Send-Q (backlog) %d" % (port, q[0], q[1]))
    retrans = tcp_syn_retrans()
    r = s.get("/target", want=504)
    s.expect_nginx_message(MSG_CONNECT_TIMEOUT)
    check(tcp_syn_retrans() > retrans, "the kernel retransmitted no SYN (TCPSynRetrans %d)" % retrans)
    # (noaccept never accepts, so it never says REQUEST: the accept queue
    # tells whether Nginx's connection got in)
    check(harness.tcp_listen_queue(port) == q, "the accept queue of port %d is %r, was %r with the filler alone: "
          "Nginx's connection was queued" % (port, harness.tcp_listen_queue(port), q))
    s.count_filter = request_path_is("/target")
    s.expect_verdict(r, "upstream_backlog_full", up.address, "Connection timed out", status=504,
                     match=request_path_is("/target"),
                     facts={"listener_pid": up.pid, "backlog": q[1], "queue_len": q[0], "syn_retransmits": 1},
                     evidence=[[{"event": "state", "from": "SYN_SENT", "to": "CLOSE"}]])


def sc_connect_timeout(s):
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port, ["proxy_connect_timeout %s;" % CONNECT_TIMEOUT])
    # Dropped on the way in, as a remote firewall would: a drop in the output
    # hook fails the resend locally, which kernels before 6.x do not report.
    t = s.h.nft_table(['iifname "lo" ip daddr 127.0.0.1 tcp dport %d tcp flags & (syn | ack) == syn drop' % port],
                      hook="input")
    s.note("nft table inet %s drops SYNs to 127.0.0.1:%d (input hook)" % (t.name, port))
    retrans = tcp_syn_retrans()
    r = s.get(want=504)
    s.expect_nginx_message(MSG_CONNECT_TIMEOUT)
    check(tcp_syn_retrans() > retrans, "the kernel retransmitted no SYN (TCPSynRetrans %d)" % retrans)
    s.expect_verdict(r, "connect_timeout", "127.0.0.1:%d" % port, "Connection timed out", status=504,
                     facts={"syn_retransmits": 1},
                     evidence=[[{"event": "state", "from": "SYN_SENT", "to": "CLOSE"}]])


def sc_firewall_reset(s):
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)
    up = s.h.start_upstream("ok", port=port)
    t = s.h.nft_table(['oifname "lo" ip daddr 127.0.0.1 tcp dport %d reject with tcp reset' % port])
    s.note("nft table inet %s rejects with a reset everything to 127.0.0.1:%d" % (t.name, port))
    r = s.get()
    s.expect_nginx_message(MSG_REFUSED)
    check(harness.tcp_listen_queue(port) is not None, "nothing listens on %d any more" % port)
    s.expect_verdict(r, "firewall_reset", up.address, "Connection refused", facts={"listener_pid": up.pid})
    check(up.count_when_stopped("REQUEST") == 0, "the upstream got a request")


def sc_ports_exhausted(s):
    """A netns whose ephemeral range is one port: Nginx's one connection to the
    upstream holds it; the next connect() gets EADDRNOTAVAIL. Clients bind
    explicit source ports outside the range (they would need it too)."""
    ns = s.h.netns()
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40000")
    ports = set()
    while len(ports) < 2:
        p = harness.free_port()
        if p not in (40000, 41001, 41002):
            ports.add(p)
    up_port, nginx_port = sorted(ports)
    s.setup("http://127.0.0.1:%d" % up_port, port=nginx_port, netns=ns.name)
    s.nginx.stop_signal = signal.SIGTERM  # the first request is left hanging
    s.note("netns %s, ip_local_port_range 40000 40000" % ns.name)
    up = s.h.start_upstream("hang", port=up_port, netns=ns.name)
    first = harness.BackgroundRequest(s.nginx.port, "/first", netns=ns.name, source_port=41001)
    first.start()
    up.wait_request(1)
    conns = ss_tcp_states(up_port, ns.name, side="dport")
    check(conns.get(("127.0.0.1:40000", "127.0.0.1:%d" % up_port)) == "ESTAB",
          "Nginx's connection to the upstream is not from port 40000: %r" % conns)
    r = s.get("/second", source_port=41002)
    msg = "connect() to 127.0.0.1:%d failed (99: Cannot assign requested address) while connecting to upstream" % up_port
    s.expect_nginx_message(msg)
    check(first.is_alive(), "the first request ended: %r %r" % (first.response, first.error))
    s.expect_verdict(r, "local_ports_exhausted", up.address, "Cannot assign requested address",
                     match=request_path_is("/second"), facts={"port_range": "40000-40000", "nginx_sockets": 1})


def sc_invalid_response(s):
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)
    up = s.h.start_upstream("bigheader", port=port)
    r = s.get()
    up.wait_request(1)
    s.expect_nginx_message(MSG_TOO_BIG)
    check(harness.pid_alive(up.pid), "the upstream died")
    s.expect_verdict(r, "upstream_invalid_response", up.address, "too big header", upstream_pid=up.pid, facts={
        "closed_by": "nginx", "bytes_received": Pred(">= 4096", lambda n: not isinstance(n, bool) and n >= 4096),
    })


def sc_self_connect(s):
    """Nothing listens on the upstream's port P, and Nginx's connection to it
    has P as its source port too: its SYN comes back to it, the kernel
    completes the connection to itself (a simultaneous open), and Nginx reads
    back its own request. proxy_bind pins the source port here; unpinned, any
    connect the kernel happens to give P meets the same fate, which is why P
    comes from the local port range, as in the production case. Nginx passes
    what it read on as an HTTP/0.9 response and reads on until its read
    timeout: two lines, both about that connection. The timeout (6 s) is
    longer than the window a line looks back for connections (5 s), as
    Nginx's default (60 s) is: in adaptive tracking the connection is seen
    again only when Nginx closes it, after that line."""
    port = harness.free_port()  # the kernel picks it from the local port range
    lo, hi = harness.local_port_range()
    check(lo <= port <= hi, "port %d is outside the local port range %d-%d" % (port, lo, hi))
    s.setup("http://127.0.0.1:%d" % port, ["proxy_bind 127.0.0.1:%d;" % port, "proxy_read_timeout 6s;"])
    req = harness.BackgroundRequest(s.nginx.port)
    req.start()
    s.expect_nginx_message(MSG_NO_VALID_HEADER)
    # While Nginx holds it, the connection keeps the port: the upstream
    # cannot come back there (the verdict says so).
    probe = socket.socket()
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(("127.0.0.1", port))
        probe.listen(1)
        check(False, "a listener could bind 127.0.0.1:%d while Nginx's connection to itself held it" % port)
    except OSError as e:
        check(e.errno == errno.EADDRINUSE, "binding 127.0.0.1:%d: %s, want EADDRINUSE" % (port, e))
    finally:
        probe.close()
    r = req.result(timeout=15)
    check(r.status is None, "the client got an HTTP response: %r" % r.raw[:120])
    s.expect_nginx_message(MSG_READ_TIMEOUT_BODY)
    addr = "127.0.0.1:%d" % port
    facts = {"local_address": addr, "port_range": "%d-%d" % (lo, hi), "port_in_range": True}
    met = [{"event": "state", "from": "SYN_SENT", "to": "SYN_RECV"}]
    v = s.expect_verdict(r, "upstream_self_connect", addr, MSG_NO_VALID_HEADER, facts=facts, evidence=[met],
                         match=lambda v: MSG_NO_VALID_HEADER in (v.get("nginx_message") or ""))
    if v is not None:
        notes = v.get("notes") or []
        check(v.get("upstream_pid") is None, "a connection to itself named an upstream process: %r" % v.get("upstream_pid"))
        check(any("HTTP/0.9" in n for n in notes) and any("its own request" in n for n in notes),
              "no note on what the client got: %r" % notes)
        check("cannot bind it (EADDRINUSE)" in v.get("explanation", ""), "explanation: %r" % v.get("explanation"))
        check(v.get("client_got") == "http09", "client_got %r, want http09" % v.get("client_got"))
    v = s.expect_verdict(r, "upstream_self_connect", addr, MSG_READ_TIMEOUT_BODY, status=504, facts=facts,
                         evidence=[met], match=lambda v: MSG_READ_TIMEOUT_BODY in (v.get("nginx_message") or ""))
    if v is not None:
        check(any("Nginx sent no 502/504" in n for n in v.get("notes") or []), "notes: %r" % v.get("notes"))
        check(v.get("client_got") == "cut_short", "client_got %r, want cut_short" % v.get("client_got"))
    s.want_verdicts = 2


def timeout_flow(s, mode, named_by):
    """A request the upstream (MODE) takes and never answers: a 504 whose
    verdict names that process, with the accept evidence matching named_by."""
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port, ["proxy_read_timeout 1s;"])
    up = s.h.start_upstream(mode, port=port)
    r = s.get(want=504)
    up.wait_request(1)
    s.expect_nginx_message(MSG_READ_TIMEOUT)
    check(harness.proc_state(up.pid) == "S", "upstream state %r, want S" % harness.proc_state(up.pid))
    s.expect_verdict(r, "upstream_timeout", up.address, "Connection timed out", status=504, upstream_pid=up.pid,
                     facts={"upstream_state": Pred('starts with "S"', lambda x: x.startswith("S"))}, evidence=[
                         [dict({"event": "accept", "pid": up.pid}, **named_by)],
                     ])


def sc_upstream_timeout(s):
    timeout_flow(s, "hang", {"detail": Pred("named by its first read", lambda x: "(its first read)" in x)})


def sc_upstream_timeout_speaks_first(s):
    """A server that sends before it reads (the start of its response) and
    then hangs: no hook names it at its first read, so the verdict names the
    process that holds the upstream's end, found through its descriptors."""
    timeout_flow(s, "banner_hang", {"detail": Pred(
        "found through its descriptors", lambda x: "found through its open descriptors" in x)})


def sc_no_live_upstreams(s):
    """Two peers, max_fails=1, nothing listening: request 1 fails on both
    (two verdicts: attempts 1 and 2 of one request); then both are down and
    request 2 gets "no live upstreams". One worker: peer state is per worker."""
    p1 = harness.free_port()
    p2 = harness.wait_until(lambda: (lambda p: p if p != p1 else None)(harness.free_port()), 5, "a second port")
    peers = ["127.0.0.1:%d" % p for p in (p1, p2)]
    pool = "    upstream pool {\n%s    }\n" % "".join(
        "        server %s max_fails=1 fail_timeout=30s;\n" % a for a in peers)
    s.setup("http://pool", http_extra=pool, workers=1)
    s.want_verdicts = 3
    r1 = s.get("/one")
    lines = [s.expect_nginx_message(MSG_REFUSED, nth=n) for n in (1, 2)]
    order = [next(a for a in peers if '"http://%s/one"' % a in l) for l in lines]
    check(sorted(order) == sorted(peers), "the two connect() errors name %r, want both of %r" % (order, peers))
    r2 = s.get("/two")
    s.expect_nginx_message(MSG_NO_LIVE)
    check(len(s.nginx.error_lines()) == 3, "want 3 error lines, got:\n%s" % "\n".join(s.nginx.error_lines()))
    if not s.use_tool:
        return
    vs = [s.expect_verdict(r1, "upstream_not_listening", order[i], "Connection refused", attempt=i + 1,
                           match=lambda v, a=order[i]: request_path_is("/one")(v) and v.get("upstream") == a)
          for i in (0, 1)]
    key = vs[0].get("request_key")
    check(isinstance(key, str) and key, "verdict request_key %r is not a non-empty string" % (key,))
    check(vs[1].get("request_key") == key, "request_key %r != %r for two attempts of one request" % (
        vs[1].get("request_key"), key))
    v3 = s.expect_verdict(r2, "no_live_upstreams", None, "no live upstreams", match=request_path_is("/two"), evidence=[
        [{"event": "earlier_failure", "cause": "upstream_not_listening", "upstream": a, "count": 1}] for a in peers])
    check(v3.get("request_key") != key, "request 2 has request 1's request_key %r" % key)


def sc_keepalive_race(s):
    """A cached keep-alive connection the upstream closed, whose FIN Nginx never
    saw (nftables drops it): Nginx reuses it and the upstream's kernel resets."""
    port = harness.free_port()
    ka = "    upstream ka {\n        server 127.0.0.1:%d;\n        keepalive 4;\n    }\n" % port
    s.setup("http://ka", ["proxy_http_version 1.1;", 'proxy_set_header Connection "";', "proxy_next_upstream off;"],
            http_extra=ka, workers=1)
    up = s.h.start_upstream("ka_close", port=port)
    t = s.h.nft_table(['oifname "lo" ip saddr 127.0.0.1 tcp sport %d tcp flags & fin == fin drop' % port])
    s.note("nft table inet %s drops FINs from 127.0.0.1:%d" % (t.name, port))
    s.get("/one", want=200)
    up.wait_request(1)
    up.out.wait_word("IDLE_CLOSED", 5)
    states = ss_tcp_states(port, side="sport")
    check(sorted(states.values()) == ["FIN-WAIT-1", "LISTEN"], "upstream side sockets %r, want one FIN-WAIT-1" % states)
    nginx_side = ss_tcp_states(port, side="dport")
    check(list(nginx_side.values()) == ["ESTAB"], "Nginx's side %r, want one ESTAB (it never saw the FIN)" % nginx_side)
    r = s.get("/two")
    s.expect_nginx_message(MSG_RESET)
    s.expect_verdict(r, "keepalive_race", up.address, "Connection reset by peer", upstream_pid=up.pid, evidence=[
        [{"event": "state", "pid": up.pid, "to": "FIN_WAIT1"}],
        [{"event": "rst_sent", "pid": up.pid}],
    ])
    check(up.count_when_stopped("REQUEST") == 1, "the upstream read request 2")


def pooled_connection_killed(s, server, upstream_kw, address, pool_states=None):
    """A keep-alive pool to `server` (an upstream{} server line's address)
    filled by one request before n502trace starts, then the upstream killed
    while a second request waits on the pooled connection: the verdict must
    be the one a new connection gets. pool_states(): the states of Nginx's
    connections to the upstream (TCP: checked to be the one pooled
    connection, before and after)."""
    ka = "    upstream ka {\n        server %s;\n        keepalive 4;\n    }\n" % server
    use_tool = s.use_tool
    s.use_tool = False  # start it once the pool exists
    try:
        s.setup("http://ka", ["proxy_http_version 1.1;", 'proxy_set_header Connection "";',
                              "proxy_next_upstream off;"], http_extra=ka, workers=1)
    finally:
        s.use_tool = use_tool
    up = s.h.start_upstream("ka_once", **upstream_kw)
    s.get("/one", want=200)
    up.wait_request(1)
    if pool_states:
        check(pool_states() == ["ESTAB"], "Nginx's pool %r, want one ESTAB connection" % pool_states())
    if s.use_tool:
        s.tool = s.h.start_tool(s.binary)
        check(s.tool.ready.get("preexisting_connections") == 1,
              "ready.preexisting_connections %r, want 1" % s.tool.ready.get("preexisting_connections"))
    req = harness.BackgroundRequest(s.nginx.port, "/two")
    req.start()
    up.wait_request(2)  # on the pooled connection: ka_once answers only a connection's first request
    if pool_states:
        check(pool_states() == ["ESTAB"], "Nginx opened a new connection")
    killer = harness.spawn_kill(signal.SIGKILL, up.pid)
    s.note("/bin/kill -KILL %d ran as pid %d" % (up.pid, killer))
    r = req.result()
    check(r.status == 502, "status %r, want 502" % r.status)
    s.expect_death(up, -signal.SIGKILL)
    s.expect_nginx_message(MSG_PREMATURE)
    s.expect_verdict(r, "upstream_killed", address(up), "prematurely closed", upstream_pid=up.pid, evidence=[
        [{"event": "accept", "pid": up.pid, "ts": None}],
        [{"event": "signal", "pid": killer, "target_pid": up.pid, "sig": 9}],
    ])


def sc_preexisting_keepalive(s):
    """A keep-alive connection opened before n502trace started, then the
    upstream killed while a request waits on it: the same verdict as for a
    new connection (the kernel side adopts the old sockets)."""
    port = harness.free_port()
    pooled_connection_killed(s, "127.0.0.1:%d" % port, {"port": port}, lambda up: up.address,
                             pool_states=lambda: list(ss_tcp_states(port, side="dport").values()))


def sc_preexisting_keepalive_unix(s):
    """The same over a unix socket: a keep-alive connection to a unix:
    upstream opened before n502trace started (found through sock_diag, with
    its peer's inode), then the upstream killed while a request waits on it.
    Unix sockets have no state changes: Nginx's close() after the failure is
    the first sight of the old socket, adopted by its inode."""
    sock = s.h.path("up.sock")
    pooled_connection_killed(s, "unix:" + sock, {"unix": sock}, lambda up: "unix:" + sock)


PHP_SLEEP = """<?php
file_put_contents(%r, getmypid() . "\\n");
sleep(30);
echo "slept\\n";
"""


def php_fpm_sleeping(s, **fpm_kw):
    """Nginx -> one php-fpm child (fpm_kw for harness.PhpFpm) running a
    script that sleeps: (fpm, child, request), the request in the child."""
    www = s.h.path("www")
    os.mkdir(www)
    pw = pwd.getpwnam("www-data")
    os.chown(www, pw.pw_uid, pw.pw_gid)  # the script writes its marker there
    marker = os.path.join(www, "marker")
    script = os.path.join(www, "sleep.php")
    with open(script, "w") as f:
        f.write(PHP_SLEEP % marker)
    os.chmod(script, 0o644)
    fpm_sock = s.h.path("php-fpm", "php.sock")
    s.setup(None, ["fastcgi_pass unix:%s;" % fpm_sock, "include /etc/nginx/fastcgi_params;",
                   "fastcgi_param SCRIPT_FILENAME %s;" % script])
    fpm = s.h.start_php_fpm(**fpm_kw)
    check(fpm.sock == fpm_sock, "php-fpm socket %s" % fpm.sock)
    kids = fpm.workers()
    check(len(kids) == 1, "php-fpm children %r, want one" % kids)
    child = kids[0]
    s.note("php-fpm master %d child %d on %s" % (fpm.master_pid, child, fpm.sock))
    req = harness.BackgroundRequest(s.nginx.port, "/sleep.php")
    req.start()

    def marker_pid():
        try:
            with open(marker) as f:
                text = f.read()
        except FileNotFoundError:
            return None
        return int(text) if text.endswith("\n") else None
    got = harness.wait_until(marker_pid, 10, "the PHP script's marker file")
    check(got == child, "the script ran in pid %d, not the child %d" % (got, child))
    return fpm, child, req


def sc_fastcgi_php_fpm_killed(s):
    fpm, child, req = php_fpm_sleeping(s)
    killer = harness.spawn_kill(signal.SIGKILL, child)
    s.note("/bin/kill -KILL %d ran as pid %d" % (child, killer))
    r = req.result()
    check(r.status == 502, "status %r, want 502" % r.status)
    harness.wait_until(lambda: not harness.pid_alive(child), 5, "php-fpm child %d to die" % child)
    # Not "prematurely closed": the child had not read the (empty) FCGI_STDIN
    # record Nginx sent with the params, and a unix socket closed with unread
    # data gives its peer ECONNRESET.
    s.expect_nginx_message(MSG_RESET)
    s.expect_verdict(r, "upstream_killed", "unix:" + fpm.sock, "Connection reset by peer", upstream_pid=child, evidence=[
        [{"event": "signal", "pid": killer, "target_pid": child, "sig": 9}],
    ])


def sc_fastcgi_php_fpm_terminate_timeout(s):
    """php-fpm's own supervisor: past request_terminate_timeout its master
    ends the child with SIGTERM."""
    fpm, child, req = php_fpm_sleeping(s, pool_extra="request_terminate_timeout = 2s")
    r = req.result()
    check(r.status == 502, "status %r, want 502" % r.status)
    harness.wait_until(lambda: not harness.pid_alive(child) or harness.proc_state(child) == "Z", 5,
                       "php-fpm child %d to die" % child)
    check("execution timed out" in fpm.read_log(), "php-fpm did not log a timeout: %s" % fpm.read_log()[-400:])
    s.expect_nginx_message(MSG_RESET)
    v = s.expect_verdict(r, "upstream_killed", "unix:" + fpm.sock, "Connection reset by peer", upstream_pid=child,
                         evidence=[[{"event": "signal", "pid": fpm.master_pid, "target_pid": child, "sig": 15}],
                                   [{"event": "exit", "pid": child, "exit_signal": 15}]])
    if v is not None:
        check("request_terminate_timeout" in v.get("explanation", ""), "explanation: %r" % v.get("explanation"))


def sc_gunicorn_worker_timeout(s):
    """The mission's own example: a worker killed by its supervisor after a
    timeout. gunicorn's master sends SIGABRT to a worker silent for longer
    than --timeout; the worker handles it (closes the connection, exits with
    code 1): Nginx sees the upstream close the connection, not a crash."""
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)
    g = s.h.start_gunicorn(port, timeout=2)
    req = harness.BackgroundRequest(s.nginx.port)
    req.start()
    worker = harness.wait_until(g.serving_pid, 10, "the gunicorn worker's marker file")
    s.note("gunicorn master %d, worker %d took the request" % (g.master_pid, worker))
    r = req.result()
    check(r.status == 502, "status %r, want 502" % r.status)
    check("WORKER TIMEOUT (pid:%d)" % worker in g.read_log(), "gunicorn did not time the worker out: %s" % (
        g.read_log()[-400:]))
    s.expect_nginx_message(MSG_PREMATURE)
    v = s.expect_verdict(r, "upstream_killed", g.address, "prematurely closed", upstream_pid=worker,
                         evidence=[[{"event": "signal", "pid": g.master_pid, "target_pid": worker, "sig": 6}]],
                         facts={"signal_handled": True})
    if v is not None:
        check("WORKER TIMEOUT" in v.get("explanation", ""), "explanation: %r" % v.get("explanation"))
        check(v.get("confidence") == ("medium" if ADAPTIVE else "high"), "confidence %r" % v.get("confidence"))


def sc_uwsgi_killed(s):
    port = harness.free_port()
    s.setup(None, ["uwsgi_pass 127.0.0.1:%d;" % port, "include /etc/nginx/uwsgi_params;"])
    up = s.h.start_upstream("hang", port=port)
    r, killer = killed_flow(s, up)
    s.expect_nginx_message(MSG_PREMATURE)
    s.expect_verdict(r, "upstream_killed", up.address, "prematurely closed", upstream_pid=up.pid, evidence=[
        [{"event": "signal", "pid": killer, "target_pid": up.pid, "sig": 9}],
    ])


def sc_grpc_killed(s):
    port = harness.free_port()
    s.setup(None, ["grpc_pass grpc://127.0.0.1:%d;" % port])
    up = s.h.start_upstream("hang", port=port)
    r, killer = killed_flow(s, up)
    s.expect_nginx_message(MSG_PREMATURE)
    s.expect_verdict(r, "upstream_killed", up.address, "prematurely closed", upstream_pid=up.pid, evidence=[
        [{"event": "signal", "pid": killer, "target_pid": up.pid, "sig": 9}],
    ])


def sc_ipv6_killed(s):
    port = harness.free_port("::1")
    s.setup("http://[::1]:%d" % port)
    up = s.h.start_upstream("hang", port=port, host="::1")
    check(up.address == "[::1]:%d" % port, up.address)
    r, killer = killed_flow(s, up)
    s.expect_nginx_message(MSG_PREMATURE)
    s.expect_verdict(r, "upstream_killed", "[::1]:%d" % port, "prematurely closed", upstream_pid=up.pid, evidence=[
        [{"event": "signal", "pid": killer, "target_pid": up.pid, "sig": 9}],
    ])


def sc_dual_stack_killed(s):
    """An upstream listening on [::], dual-stack (Node's, Go's and Java's
    default), takes Nginx's IPv4 connection as ::ffff:127.0.0.1: the same
    connection, and the upstream killed holding it is named."""
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)
    up = s.h.start_upstream("hang", port=port, host="::")
    r, killer = killed_flow(s, up)
    s.expect_nginx_message(MSG_PREMATURE)
    s.expect_verdict(r, "upstream_killed", "127.0.0.1:%d" % port, "prematurely closed", upstream_pid=up.pid, evidence=[
        [{"event": "signal", "pid": killer, "target_pid": up.pid, "sig": 9}],
    ])


def proc_uid(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def sc_access_only(s):
    """The location's error_log level (crit) hides the upstream error: the
    access log's 502 is the only trace. The verdict comes from the failed
    connection closest in time, with at most medium confidence."""
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port, ["error_log %s crit;" % os.path.join(s.h.dir, "error.log")])
    up = s.h.start_upstream("hang", port=port)
    r, killer = killed_flow(s, up)
    if s.use_tool:
        ready_logs = s.tool.ready.get("access_logs") or []
        check(any(p.endswith("access.log") for p in ready_logs), "ready.access_logs %r lacks access.log" % ready_logs)
    v = s.expect_verdict(r, "upstream_killed", up.address, "no error-log line", upstream_pid=up.pid, evidence=[
        [{"event": "signal", "pid": killer, "target_pid": up.pid, "sig": 9}],
    ])
    check(MSG_PREMATURE not in s.nginx.read_error_log(), "Nginx logged the error although its level is crit")
    if s.use_tool:
        check(s.verdict.get("confidence") == "medium", "confidence %r, want medium" % s.verdict.get("confidence"))
        check(s.verdict.get("notes"), "no note saying the verdict comes from the access log")


def sc_long_request(s):
    """A request line too long for the error log (Nginx cuts its lines at 2047
    bytes, here inside the request) and one with bytes the access log escapes
    (a quote, a backslash, UTF-8) but the error log writes as they came: the
    access log's 502s are matched to their error-log verdicts all the same,
    not explained a second time as 502s without an error-log line."""
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)
    odd = b'/caf\xc3\xa9/"q"\\z'
    long_path = odd + b"/" + b"x" * 2500 + b"?end=1"
    for nth, path in enumerate((long_path, odd), 1):
        r = s.get(path)
        line = s.expect_nginx_message(MSG_REFUSED, nth=nth)
        if nth == 1:
            check(len(line) < 2100 and 'upstream: "' not in line,
                  "Nginx did not cut its error line inside the request (%d bytes)" % len(line))
        if nth == 1:  # the verdict has what the error line kept of the request
            match = lambda v: (v.get("request") or "").startswith("GET " + long_path[:200].decode())
        else:
            match = lambda v: v.get("request") == "GET " + odd.decode() + " HTTP/1.1"
        v = s.expect_verdict(r, "upstream_not_listening", "127.0.0.1:%d" % port, "Connection refused", match=match)
        if v is not None:
            cut_note = any("cut its error-log line" in n for n in v.get("notes") or [])
            check(cut_note == (nth == 1), "verdict %d: note on the cut line %s" % (nth, "missing" if nth == 1 else "wrong"))
    access = s.nginx.read_access_log()
    check(access.count('" 502 ') == 2 and "\\x22q\\x22" in access,
          "the access log does not show the two 502s with the quote escaped: %r" % access[-400:])
    s.want_verdicts = 2
    s.want_summary = {"access_lines": 2, "access_only": 0}


def sc_rotate_rename(s):
    """Log rotation by rename + USR1 (what logrotate does for Nginx): the tool
    drains the old file, follows the new one, and explains the next 502."""
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)
    log = s.nginx.error_log
    os.rename(log, log + ".1")
    os.kill(s.nginx.master_pid, signal.SIGUSR1)
    harness.wait_until(lambda: os.path.exists(log), 10, "nginx to reopen %s" % log)
    if s.use_tool:
        s.tool.wait_record("warning", pred=lambda w: w.get("code") == "log_rotated", timeout=5)
    r = s.get()
    s.expect_nginx_message(MSG_REFUSED)
    s.expect_verdict(r, "upstream_not_listening", "127.0.0.1:%d" % port, "Connection refused")


def sc_rotate_create(s):
    """logrotate's `create` for Nginx: rename, a new empty file at the path,
    and only then USR1. Meanwhile Nginx writes to the old file: a 502 logged
    there after the tool has moved on to the new one is still explained, and
    so is the next one, in the new file after USR1."""
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)
    log = s.nginx.error_log
    os.rename(log, log + ".1")
    open(log, "w").close()
    if s.use_tool:
        s.tool.wait_record("warning", pred=lambda w: w.get("code") == "log_rotated", timeout=5)
    r = s.get()
    harness.wait_until(lambda: MSG_REFUSED in open(log + ".1").read(), 5, "the 502 in the old file")
    check(MSG_REFUSED not in open(log).read(), "Nginx wrote to the new file before USR1")
    s.expect_verdict(r, "upstream_not_listening", "127.0.0.1:%d" % port, "Connection refused")
    os.kill(s.nginx.master_pid, signal.SIGUSR1)

    def reopened():
        """No worker holds the old file open any more."""
        for w in s.nginx.worker_pids():
            for fd in os.listdir("/proc/%d/fd" % w):
                try:
                    if os.readlink("/proc/%d/fd/%s" % (w, fd)) == log + ".1":
                        return False
                except OSError:
                    pass
        return True
    harness.wait_until(reopened, 5, "Nginx's workers to reopen their logs")
    r2 = s.get("/after")
    harness.wait_until(lambda: MSG_REFUSED in open(log).read(), 5, "the second 502 in the new file")
    s.expect_verdict(r2, "upstream_not_listening", "127.0.0.1:%d" % port, "Connection refused",
                     match=request_path_is("/after"))
    s.want_verdicts = 2


def sc_rotate_copytruncate(s):
    """copytruncate: the file is copied, then truncated in place; the tool
    notices the truncation and reads the file again from its start."""
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)
    log = s.nginx.error_log
    shutil.copyfile(log, log + ".1")
    os.truncate(log, 0)
    if s.use_tool:
        s.tool.wait_record("warning", pred=lambda w: w.get("code") == "log_truncated", timeout=5)
    r = s.get()
    s.expect_nginx_message(MSG_REFUSED)
    s.expect_verdict(r, "upstream_not_listening", "127.0.0.1:%d" % port, "Connection refused")


def sc_log_deleted(s):
    """The error log is deleted while followed: Nginx keeps writing to the
    open file, the tool says the path is gone and keeps reading it."""
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)
    os.unlink(s.nginx.error_log)
    if s.use_tool:
        s.tool.wait_record("warning", pred=lambda w: w.get("code") == "log_vanished", timeout=5)
    r = s.get()
    # The file is gone from the directory: read what Nginx wrote through its descriptor.
    s.nginx.error_log = "/proc/%d/fd/2" % s.nginx.workers[0]
    s.expect_nginx_message(MSG_REFUSED)
    s.expect_verdict(r, "upstream_not_listening", "127.0.0.1:%d" % port, "Connection refused")


def sc_binary_upgrade(s):
    """Binary upgrade: USR2 starts a new master (forked by the old one), QUIT
    retires the old one. The tool follows the successor without being told."""
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)
    old_master = s.nginx.master_pid

    def new_master():
        for c in harness.children_of(old_master):
            try:
                with open("/proc/%d/cmdline" % c, "rb") as f:
                    if b"master process" in f.read():
                        return c
            except OSError:
                pass
        return None
    os.kill(old_master, signal.SIGUSR2)
    new = harness.wait_until(new_master, 10, "the new nginx master after USR2")
    harness.wait_until(lambda: len(harness.children_of(new)) >= s.nginx.nworkers or None, 10,
                       "the new master's workers")
    os.kill(old_master, signal.SIGQUIT)
    harness.wait_until(lambda: not harness.pid_alive(old_master) or None, 15, "the old master to exit")
    s.nginx.master_pid = new
    s.nginx.workers = harness.children_of(new)
    s.note("binary upgrade: master %d -> %d, workers %s" % (old_master, new, s.nginx.workers))
    if s.use_tool:
        s.tool.wait_record("warning", pred=lambda w: w.get("code") == "nginx_new_master", timeout=5)
    r = s.get()
    s.expect_nginx_message(MSG_REFUSED)
    s.expect_verdict(r, "upstream_not_listening", "127.0.0.1:%d" % port, "Connection refused")
    if s.use_tool:
        # The new master and its workers run as the old ones did: no uid to learn.
        s.never_warned("nginx_user", "a binary upgrade gave an nginx_user warning")


def sc_restart_follow(s):
    """Nginx stopped and started again: with --follow the tool says so, waits,
    and follows the new master (same command line)."""
    port = harness.free_port()
    saved = os.environ.get("N502_EXTRA_ARGS")
    os.environ["N502_EXTRA_ARGS"] = ((saved or "") + " --follow").strip()
    try:
        s.setup("http://127.0.0.1:%d" % port)
    finally:
        if saved is None:
            del os.environ["N502_EXTRA_ARGS"]
        else:
            os.environ["N502_EXTRA_ARGS"] = saved
    s.nginx.stop()
    if s.use_tool:
        # (It would exit just after this record: whether it is alive now
        # tells nothing. The record says what it does next, and the wait for
        # nginx_restarted below fails if it exits.)
        _, w = s.tool.wait_record("warning", pred=lambda w: w.get("code") == "nginx_gone", timeout=5)
        check("waiting for a new one (--follow)" in w["message"],
              "n502trace --follow does not wait when Nginx stopped: %r" % w["message"])
    s.nginx.start()
    s.note("nginx restarted: master %d" % s.nginx.master_pid)
    if s.use_tool:
        s.tool.wait_record("warning", pred=lambda w: w.get("code") == "nginx_restarted", timeout=5)
    r = s.get()
    s.expect_nginx_message(MSG_REFUSED)
    s.expect_verdict(r, "upstream_not_listening", "127.0.0.1:%d" % port, "Connection refused")


def sc_adaptive_cycle(s):
    """--tracking adaptive --calm-after 1 through a whole cycle: lean at the
    start; a client gone mid-request (499) and its upstream stopping after
    that keep it lean; a failure the kernel cannot tell from a normal close (a response
    header too big) is `unknown` with a note and switches to full tracking;
    the same failure again is explained; after a calm second it is lean
    again, and a killed upstream then is explained from its first sight (the
    kernel side switches itself)."""
    port = harness.free_port()
    setup_lean(s, port, "--calm-after 1")
    if not s.use_tool:
        return
    s.want_verdicts = 3
    def warnings(code):
        return [w for _, w in s.tool.out.records if w.get("type") == "warning" and w.get("code") == code]
    seen = set()
    def new_verdict(r):
        return r.get("request_key") not in seen

    # A client that gives up mid-request (Nginx closes the upstream
    # connection unanswered: 499), then the upstream dying with its end of
    # that connection still open: a healthy host sees both all day, so
    # neither may switch to full tracking. Had either, the failure below would
    # be explained rather than unknown.
    up = s.h.start_upstream("hang", port=port)
    req = harness.BackgroundRequest(s.nginx.port, path="/abort", timeout=0.5)
    req.start()
    up.wait_request(1)
    req.join(10)
    check(req.error is not None and not req.is_alive(), "the client did not give up: %r" % (req.response,))
    harness.wait_until(lambda: any('"GET /abort ' in l and '" 499 ' in l
                                   for l in s.nginx.read_access_log().splitlines()) or None,
                       5, "Nginx's 499 for the client that gave up")
    up.stop()

    # Lean until the failure below: a switch before it is stamped before
    # now (one after now, before that failure, makes its verdict explained).
    s.lean_until(time.time(), "a client gone and an upstream stopping afterwards")
    up = s.h.start_upstream("bigheader", port=port)
    r = s.get()
    s.expect_nginx_message(MSG_TOO_BIG)
    v = s.expect_verdict(r, "unknown", up.address, "too big header", match=new_verdict)
    seen.add(v.get("request_key"))
    check(v.get("log_only_cause") == "upstream_bug",
          "log_only_cause %r, want upstream_bug" % v.get("log_only_cause"))
    check(any(LEAN_NOTE in n for n in v.get("notes") or []), "no note on lean tracking: %r" % v.get("notes"))
    s.tool.wait_record("warning", pred=lambda w: w.get("code") == "tracking_full", timeout=3)

    r = s.get()
    s.expect_nginx_message(MSG_TOO_BIG, nth=2)
    v = s.expect_verdict(r, "upstream_invalid_response", up.address, "too big header", upstream_pid=up.pid,
                         match=new_verdict, facts={"closed_by": "nginx"})
    seen.add(v.get("request_key"))
    check(not v.get("notes"), "a verdict in full tracking has notes %r" % v.get("notes"))
    up.stop()

    # Calm for --calm-after (1 s): lean again (its second tracking_lean).
    s.tool.out.wait_for(lambda: len(warnings("tracking_lean")) >= 2 or None, 5, "a second tracking_lean warning",
                        alive=s.tool.alive)
    up = s.h.start_upstream("hang", port=port)
    req = harness.BackgroundRequest(s.nginx.port)
    req.start()
    up.wait_request(1)
    killer = harness.spawn_kill(signal.SIGKILL, up.pid)
    r = req.result()
    check(r.status == 502, "status %r, want 502" % r.status)
    s.expect_death(up, -signal.SIGKILL)
    s.expect_nginx_message(MSG_PREMATURE)
    v = s.expect_verdict(r, "upstream_killed", up.address, "prematurely closed", upstream_pid=up.pid,
                         match=new_verdict, evidence=[
                             [{"event": "signal", "pid": killer, "target_pid": up.pid, "sig": 9}],
                         ])
    check(any("only from its failure on" in n for n in v.get("notes") or []),
          "a verdict from lean tracking lacks its note: %r" % v.get("notes"))
    s.tool.out.wait_for(lambda: len(warnings("tracking_full")) >= 2 or None, 3, "a second tracking_full warning",
                        alive=s.tool.alive)


def proc_cgroup2(pid):
    """pid's cgroup (v2) path, as /proc/PID/cgroup shows it."""
    with open("/proc/%d/cgroup" % pid) as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    raise Failure("process %d has no cgroup v2 line" % pid)


def cgroup2_root():
    """Where the cgroup v2 hierarchy is mounted (None: nowhere)."""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return fields[1]
    return None


def require_cgroup2():
    """The cgroup v2 root, which the cgroup filter's scenarios need."""
    root = cgroup2_root()
    if root is None:
        raise Failure("no cgroup v2 hierarchy mounted: the cgroup filter cannot be tested")
    return root


def setup_lean(s, port, args=""):
    """s.setup toward 127.0.0.1:port with adaptive tracking (and args), then
    waits until tracking is lean."""
    with_tool_args(("--tracking adaptive " + args).strip(), lambda: s.setup("http://127.0.0.1:%d" % port))
    if s.use_tool:
        s.tool.wait_record("warning", pred=lambda w: w.get("code") == "tracking_lean", timeout=2)


def adaptive_foreign_client(s, uid, cgroup_dir, who):
    """Adaptive tracking and a client of the upstream port that is not Nginx
    (`who`): a process running as uid (in cgroup_dir, a cgroup v2 directory,
    when given) talks to the upstream directly and is reset, in softirq where
    no task owns its socket. That is not Nginx's failure: tracking stays lean
    (the failure after it is the `unknown` of a lean period) and no verdict is
    built from it. With cgroup_dir, the reset reaches user space, which finds
    no worker in that cgroup; a second reset right after is not even sent
    (the cgroup is marked foreign for a second; --dump-events shows what was
    left to user space)."""
    port = harness.free_port()
    setup_lean(s, port, "--dump-events" if cgroup_dir else "")
    if not s.use_tool:
        return
    s.want_verdicts = 1
    up = s.h.start_upstream("reset", port=port, args=["--reset-when-asleep"])  # (in softirq, see expect_reset)
    # As root: into the cgroup first, then the user; then the client, which
    # prints the local port of each connection the upstream reset, the next
    # one when told to (a line on its stdin).
    client = ("import os, socket, sys\n"
              "if %r:\n"
              "    with open(os.path.join(%r, 'cgroup.procs'), 'w') as f:\n"
              "        f.write(str(os.getpid()))\n"
              "os.setgroups([]); os.setgid(%d); os.setuid(%d)\n"
              "while True:\n"
              "    c = socket.create_connection(('127.0.0.1', %d), timeout=10)\n"
              "    c.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
              "    try:\n"
              "        c.recv(100)\n"
              "        sys.exit(3)\n"
              "    except ConnectionResetError:\n"
              "        print(c.getsockname()[1], flush=True)\n"
              "    if not sys.stdin.readline():\n"
              "        sys.exit(0)\n" % (bool(cgroup_dir), cgroup_dir or "", uid, uid, port))
    proc = subprocess.Popen(["/usr/bin/python3", "-c", client], cwd="/", stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)

    def unplaced():
        with open(s.tool.errpath, errors="replace") as f:
            return [l for l in f.read().splitlines() if l.startswith("unplaced ")]

    try:
        ports = [int(proc.stdout.readline() or 0)]
        if cgroup_dir and ports[0]:
            # Left to user space, found another service's: dropped, and the
            # cgroup marked foreign for a second. The next reset comes within it.
            harness.wait_until(lambda: [l for l in unplaced() if "src=127.0.0.1:%d " % ports[0] in l] or None, 5,
                               "the first reset left to user space (--dump-events)")
            proc.stdin.write(b"again\n")
            proc.stdin.flush()
            ports.append(int(proc.stdout.readline() or 0))
        proc.stdin.close()
        rc = proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
    check(rc == 0 and all(ports), "the direct client (%s) was not reset by the upstream (exit %d, ports %r)" % (
        who, rc, ports))
    up.wait_request(len(ports))
    check("PEER_" not in up.stderr_text(), "a RST was not sent to a sleeping client: %s" % up.stderr_text())
    up.stop()

    # Lean until the failure below: a switch before it is stamped before
    # now (one after now, before that failure, makes its verdict explained).
    s.lean_until(time.time(), "%s reset by the upstream" % who)
    up = s.h.start_upstream("bigheader", port=port)
    r = s.get()
    s.expect_nginx_message(MSG_TOO_BIG)
    v = s.expect_verdict(r, "unknown", up.address, "too big header")
    check(any(LEAN_NOTE in n for n in v.get("notes") or []), "no note on lean tracking: %r" % v.get("notes"))
    if cgroup_dir:
        # The verdict came after the resets' records were read: all of them are in the file.
        lines = unplaced()
        check(all("another service's (dropped)" in l for l in lines),
              "a reset of the other cgroup's client was placed as Nginx's: %r" % lines)
        check(not [l for l in lines if "src=127.0.0.1:%d " % ports[1] in l],
              "the second reset, within a second of the first being found foreign, was sent again: %r" % lines)


def sc_adaptive_other_client(s):
    """Another user's client (uid 65534, Nginx's own cgroup) reset by the
    upstream: filtered by its uid."""
    adaptive_foreign_client(s, 65534, None, "another user's client (uid 65534)")


def sc_adaptive_same_user_client(s):
    """A client running as Nginx's own user (www-data, as PHP-FPM's pool does)
    but in another cgroup (its own service or container) reset by the
    upstream: filtered by its cgroup."""
    cg = os.path.join(require_cgroup2(), "n502-e2e-client-%d" % os.getpid())
    os.mkdir(cg)
    try:
        adaptive_foreign_client(s, pwd.getpwnam("www-data").pw_uid, cg, "a www-data client in another cgroup")
    finally:
        os.rmdir(cg)


def sc_adaptive_worker_moved(s):
    """Nginx's workers moved to another cgroup after n502trace read them (as
    cgrulesengd or a write to cgroup.procs does): the sockets they create
    there belong to a cgroup no worker was seen in. A reset of one, seen in
    softirq, is still Nginx's: the tool finds a worker in that cgroup now (a
    `nginx_cgroup` warning) and explains the failure from the kernel, where
    the cgroup filter alone would have dropped it as another service's."""
    root = require_cgroup2()
    port = harness.free_port()
    setup_lean(s, port)
    workers = s.nginx.worker_pids()
    cg = os.path.join(root, "n502-e2e-moved-%d" % os.getpid())
    os.mkdir(cg)
    was = {}
    try:
        for pid in workers:
            was[pid] = proc_cgroup2(pid)
            with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                f.write(str(pid))
        check(all(proc_cgroup2(p) == "/" + os.path.basename(cg) for p in workers),
              "the workers %s did not move to %s" % (workers, cg))
        s.note("workers %s moved from %s to %s" % (workers, sorted(set(was.values())), cg))
        expect_reset(s, port, in_softirq=True)
        if s.use_tool:
            s.tool.wait_record("warning", pred=lambda w: w.get("code") == "nginx_cgroup" and
                               any("worker %d " % p in w.get("message", "") for p in workers), timeout=3)
            # Both of the socket's records were placed: the RST, and the
            # state change that carries its error.
            check(any(e.get("event") == "state" and e.get("error") == errno.ECONNRESET and e.get("to") == "CLOSE"
                      for e in s.verdict.get("evidence") or []),
                  "no ESTABLISHED -> CLOSE with ECONNRESET of Nginx's socket in the evidence: %r" %
                  s.verdict.get("evidence"))
            # Nginx's failure, found by user space: full tracking from now on.
            s.tool.wait_record("warning", pred=lambda w: w.get("code") == "tracking_full", timeout=3)
    finally:
        for pid, path in was.items():
            try:
                with open(os.path.join(root, path.lstrip("/"), "cgroup.procs"), "w") as f:
                    f.write(str(pid))
            except OSError:
                pass  # exited
        os.rmdir(cg)


def sc_adaptive_restart_cgroup(s):
    """Nginx stopped and started again in a new cgroup, as a restarted service
    or container is: with --follow the tool learns the new workers' cgroup,
    so a reset of the new Nginx's connection, seen in softirq, is explained
    from the kernel at once (the old cgroup's id would filter it out)."""
    root = require_cgroup2()
    port = harness.free_port()
    setup_lean(s, port, "--follow")
    s.nginx.stop()
    if s.use_tool:
        s.tool.wait_record("warning", pred=lambda w: w.get("code") == "nginx_gone", timeout=5)
    cg = os.path.join(root, "n502-e2e-restarted-%d" % os.getpid())
    os.mkdir(cg)
    try:
        s.nginx.start(cgroup=cg)
        workers = s.nginx.worker_pids()
        check(workers and all(proc_cgroup2(p) == "/" + os.path.basename(cg) for p in workers),
              "the restarted workers %s are not in %s" % (workers, cg))
        s.note("nginx restarted in %s: master %d, workers %s" % (cg, s.nginx.master_pid, workers))
        if s.use_tool:
            s.tool.wait_record("warning", pred=lambda w: w.get("code") == "nginx_restarted", timeout=5)
        expect_reset(s, port, in_softirq=True)
        if s.use_tool:
            check(s.verdict.get("nginx_pid") in workers, "verdict from worker %r, not one of the restarted "
                  "workers %s" % (s.verdict.get("nginx_pid"), workers))
            # (A reset unplaced for want of that cgroup gives its warning
            # before its record reaches the verdict: read by now.)
            check(not [w for w in s.tool.records("warning") if w.get("code") == "nginx_cgroup"],
                  "the restarted workers' cgroup was not learnt when they were followed (nginx_cgroup warning)")
    finally:
        s.nginx.stop()
        harness.wait_until(lambda: not open(os.path.join(cg, "cgroup.procs")).read().strip() or None, 5,
                           "the restarted nginx to leave %s" % cg)
        os.rmdir(cg)


def sc_reload_user(s):
    """A reload that changes Nginx's `user` (www-data -> nobody): the new
    workers run as a uid n502trace did not see at start. With adaptive
    tracking, a reset of Nginx's end is seen in softirq and counts as
    Nginx's only by its creator's uid: the tool learns the new workers' uid
    (a `nginx_user` warning), so their first failure is explained from the
    kernel, not left `unknown` as another user's client's would be."""
    port = harness.free_port()
    s.setup("http://127.0.0.1:%d" % port)
    old = set(s.nginx.workers)
    with open(s.nginx.conf) as f:
        conf = f.read()
    check("\nuser www-data;\n" in conf, "the generated nginx.conf does not run its workers as www-data")
    with open(s.nginx.conf, "w") as f:
        f.write(conf.replace("\nuser www-data;\n", "\nuser nobody nogroup;\n"))
    os.kill(s.nginx.master_pid, signal.SIGHUP)
    new = harness.wait_until(
        lambda: (lambda k: k if len(k) >= s.nginx.nworkers and not (set(k) & old) and
                 all(proc_uid(p) == 65534 for p in k) else None)(s.nginx.worker_pids()),
        15, "new nginx workers running as uid 65534 after SIGHUP")
    s.note("reload: workers %s -> %s (uid 65534)" % (sorted(old), sorted(new)))
    if s.use_tool and ADAPTIVE:  # (full tracking does not filter by uid, and does not warn)
        s.tool.wait_record("warning", pred=lambda w: w.get("code") == "nginx_user" and
                           "uid 65534" in w.get("message", ""), timeout=5)
    expect_reset(s, port)
    if s.use_tool:
        check(s.verdict.get("nginx_pid") in new, "verdict from worker %r, not one of the new workers %s" % (
            s.verdict.get("nginx_pid"), sorted(new)))


SCENARIOS = {
    "no_listener": sc_no_listener,
    "resolve_failed": sc_resolve_failed,
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
    "reload_user": sc_reload_user,
    "reload_new_port": sc_reload_new_port,
    "listener_preexisting_drain": sc_listener_preexisting_drain,
    "adaptive_worker_moved": sc_adaptive_worker_moved,
    "adaptive_restart_cgroup": sc_adaptive_restart_cgroup,
    # newer causes
    "socket_missing": sc_socket_missing,
    "permission_denied": sc_permission_denied,
    "backlog_full_unix": sc_backlog_full_unix,
    "backlog_full_tcp": sc_backlog_full_tcp,
    "connect_timeout": sc_connect_timeout,
    "firewall_reset": sc_firewall_reset,
    "ports_exhausted": sc_ports_exhausted,
    "invalid_response": sc_invalid_response,
    "self_connect": sc_self_connect,
    "upstream_timeout": sc_upstream_timeout,
    "upstream_timeout_speaks_first": sc_upstream_timeout_speaks_first,
    "no_live_upstreams": sc_no_live_upstreams,
    "keepalive_race": sc_keepalive_race,
    "fastcgi_php_fpm_killed": sc_fastcgi_php_fpm_killed,
    "fastcgi_php_fpm_terminate_timeout": sc_fastcgi_php_fpm_terminate_timeout,
    "gunicorn_worker_timeout": sc_gunicorn_worker_timeout,
    "uwsgi_killed": sc_uwsgi_killed,
    "grpc_killed": sc_grpc_killed,
    "ipv6_killed": sc_ipv6_killed,
    "dual_stack_killed": sc_dual_stack_killed,
    "access_only": sc_access_only,
    "long_request": sc_long_request,
    "rotate_rename": sc_rotate_rename,
    "rotate_create": sc_rotate_create,
    "rotate_copytruncate": sc_rotate_copytruncate,
    "log_deleted": sc_log_deleted,
    "binary_upgrade": sc_binary_upgrade,
    "restart_follow": sc_restart_follow,
    "preexisting_keepalive": sc_preexisting_keepalive,
    "preexisting_keepalive_unix": sc_preexisting_keepalive_unix,
    "window_expired": sc_window_expired,
    "adaptive_cycle": sc_adaptive_cycle,
    "adaptive_other_client": sc_adaptive_other_client,
    "adaptive_same_user_client": sc_adaptive_same_user_client,
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


def run_one(name, binary, use_tool, keep=False, results=None):
    fn = SCENARIOS[name]
    h = harness.Harness(name, keep=keep)
    s = Scenario(h, binary, use_tool)
    s.name = name
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
    if results:
        with open(results, "a") as f:
            rows = s.results or [{"expected": None, "cause": None}]
            for row in rows:
                row.update({"scenario": name, "passed": not errors})
                f.write(json.dumps(row) + "\n")
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
    ap.add_argument("--full", action="store_true",
                    help="run n502trace with --tracking full and check what it promises: the whole story of "
                         "the first failure of every kind (default: n502trace's default, adaptive tracking)")
    ap.add_argument("--results", help="append one JSON line per asserted verdict to this file")
    ap.add_argument("scenario", nargs="*")
    args = ap.parse_args()

    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    names = list(SCENARIOS) if args.all else args.scenario
    if args.all and args.full:
        for n in ("adaptive_cycle", "adaptive_other_client", "adaptive_same_user_client", "adaptive_worker_moved",
                  "adaptive_restart_cgroup"):
            names.remove(n)  # they set their own --tracking
    if not names:
        ap.error("name a scenario, or --all, or --list")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error("unknown scenario(s): %s (see --list)" % ", ".join(unknown))
    if os.geteuid() != 0:
        sys.stderr.write("run.py: must run as root\n")
        return 2
    use_tool = not args.no_tool
    if args.full:
        global ADAPTIVE
        ADAPTIVE = False
        os.environ["N502_EXTRA_ARGS"] = (os.environ.get("N502_EXTRA_ARGS", "") + " --tracking full").strip()
    binary = None
    if use_tool:
        if not args.bin:
            ap.error("--bin PATH is required (or --no-tool)")
        binary = os.path.abspath(args.bin)
        if not os.access(binary, os.X_OK):
            sys.stderr.write("run.py: %s is not an executable file\n" % binary)
            return 2
    failed = [n for n in names if not run_one(n, binary, use_tool, keep=args.keep, results=args.results)]
    if len(names) > 1:
        print("%d/%d passed%s" % (len(names) - len(failed), len(names),
                                  (": failed " + " ".join(failed)) if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
