#!/usr/bin/python3
"""n502trace's performance benchmark (run it through scripts/bench.sh, as root).

One real Debian Nginx (temp prefix, loopback only, `user www-data`, one worker
pinned to CPU 0) proxies its front server block to a second server block of
the same Nginx that answers `return 200 "ok\\n";`. wrk (pinned to CPU 1) loads
the front with 32 keep-alive client connections, so the only connection churn
is on the upstream side:

  new_conn   plain proxy_pass: HTTP/1.0 to the upstream, a new upstream
             connection (connect, accept, close) per request: the worst case
             for n502trace, which traces exactly those.
  keepalive  an upstream block with `keepalive 32`, HTTP/1.1 and
             `Connection ""`: upstream connections are reused.

Modes, interleaved in one run; each round starts one mode later than the
one before (--order rotate, the default: every mode runs in every position
equally often over len(modes) rounds, so a mode is not favoured by always
running first, or right after another one's tracer detached; --order fixed
keeps the order given):

  none       no tracing
  hooks      the floor of any tool on these tracepoints: empty BPF programs
             attached where n502trace attaches for TCP upstreams
             (build/tests/bench_hooks); n502trace's own cost is what it adds
  minimal    (only when named in --modes) the least any tracking of Nginx's
             sockets on these tracepoints would do: one map entry per Nginx
             socket, a lookup per state change, nothing for the upstream's
             end, no receive hook (bench_hooks --op minimal): what a redesign
             keeping a record per Nginx socket could reach at best
  ownerless  (only when named in --modes) an anomaly-only kernel side with no
             state per socket: a port bitmap read from the socket, an event
             only for a socket error or an exiting holder, no receive hook
             (bench_hooks --op ownerless)
  sockops    (only when named in --modes) an empty sock_ops program on the
             cgroup v2 root instead of the tracepoints (bench_hooks --sockops
             DIR): the floor of a kernel side built on sock_ops callbacks,
             which run at connect and establishment, and at state changes only
             for the sockets that ask for them
  baseline   another n502trace binary (--baseline-bin, e.g. an older build),
             attached the same way: an A/B of two versions in one run
  n502trace  `n502trace --nginx-pid MASTER --json` attached (ready before wrk
             starts; VmRSS read before SIGINT; events and events_lost from its
             summary record): its default, adaptive tracking, which while
             Nginx is healthy (as here) watches only failures
  full       the same with --tracking full: every connection followed whole
  tcpdump    `tcpdump -i lo -w FILE -U 'tcp port UPSTREAM'`, capturing
             (checked with a request) before wrk starts
  debug      Nginx reloaded with `error_log FILE debug;` (and back after)

Per variant: medians over the rounds, the ratio of each mode's median to
none's, and the median of the per-round ratios (each run against the `none`
run of the same round, which cancels the machine's drift between rounds: the
statistic the throughput target is checked on), as Markdown tables,
then the machine and the targets (PASS/FAIL); printed and written to --out.
--soak-minutes N then runs n502trace under new_conn load for N minutes,
sampling its VmRSS every 30 s.

--op-costs replaces the modes: one kind of BPF work at a time (a map lookup,
an insert and delete, a clock read, a ring-buffer event, ...) on the two TCP
tracepoints n502trace runs most, under the new_conn load, timed by the kernel
and set against an empty program in the same round: what each costs on this
machine, the unit the cost of n502trace's own programs is made of.

Exit status: 0 when every target that was measured passes, 3 when one fails,
1 when the benchmark itself failed, 2 for bad usage.
Standard library only (Debian's /usr/bin/python3).
"""

import argparse
import datetime
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

NGINX = "/usr/sbin/nginx"
POLL = 0.002
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONNECTIONS = 32
MODES = ("none", "hooks", "n502trace", "full", "baseline", "tcpdump", "debug")
# Modes that run only when named in --modes.
EXTRA_MODES = ("minimal", "ownerless", "sockops")
# n502trace with extra arguments.
TOOL_MODES = {"full": ["--tracking", "full"]}

# --op-costs: the operations of tests/bench/ops.bpf.c (bench_hooks --op NAME),
# "empty" first: every other one is measured against it.
OPS = ("empty", "lookup_miss", "lookup_hit", "lookup_miss_x4", "update_delete", "pid_lookup", "counter",
       "ktime", "comm", "probe_read", "ring_event", "sk_storage_miss", "sk_storage_create_delete")
OP_TEXT = {
    "empty": "nothing (the program's own cost, with the kernel's timing of it)",
    "lookup_miss": "hash lookup that misses (socks-shaped LRU hash, key: the socket)",
    "lookup_hit": "hash lookup that hits (the same map)",
    "lookup_miss_x4": "four hash lookups that miss",
    "update_delete": "LRU hash insert of the socket's entry, then its delete",
    "pid_lookup": "hash lookup of the current process (procs-shaped)",
    "counter": "per-CPU array counter += 1",
    "ktime": "bpf_ktime_get_boot_ns()",
    "comm": "bpf_get_current_comm()",
    "probe_read": "one tcp_sock field through bpf_probe_read_kernel",
    "ring_event": "a ring-buffer event the size of a story (struct n502_conn_event): reserved, filled, submitted",
    "sk_storage_miss": "socket-local storage lookup of a socket that has none (bpf_sk_storage_get)",
    "sk_storage_create_delete": "socket-local storage created for the socket, then deleted",
}
OP_PROGRAMS = (("op_set_state", "inet_sock_set_state"), ("op_rcv_space_adjust", "tcp_rcv_space_adjust"))
VARIANTS = ("new_conn", "keepalive")
RSS_LIMIT_MIB = 30.0
THROUGHPUT_TARGET = 0.98
ATTACH_LIMIT_MS = 1000.0
SOAK_TARGET_MIN = 10
SOAK_SAMPLE_S = 30.0


class BenchError(Exception):
    pass


def log(msg):
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


# ---------------------------------------------------------------- processes

LIVE = []  # Popen objects to stop at exit, newest last


def spawn(argv, **kw):
    kw.setdefault("stdin", subprocess.DEVNULL)
    # Own session: a Ctrl-C on the terminal reaches only this script, which
    # then stops everything in order.
    p = subprocess.Popen(argv, start_new_session=True, **kw)
    LIVE.append(p)
    return p


def stop_proc(p, sig=signal.SIGTERM, timeout=10):
    """Signal p and wait; SIGKILL after timeout. Returns the exit code."""
    if p.poll() is None:
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    if p in LIVE:
        LIVE.remove(p)
    return p.returncode


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def children_of(ppid):
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[1]) == ppid:
            kids.append(int(d))
    return sorted(kids)


def cpu_seconds(pid):
    """utime + stime of pid in seconds, or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_wait_seconds(pid):
    """(time on CPU, time runnable but waiting for a CPU) of pid, in seconds."""
    try:
        with open("/proc/%d/schedstat" % pid) as f:
            run_ns, wait_ns = f.read().split()[:2]
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return 0.0, 0.0
    return int(run_ns) / 1e9, int(wait_ns) / 1e9


def vmrss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


def wait_until(fn, timeout, what, proc=None):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            raise BenchError("%s: the process exited (%s) first" % (what, proc.returncode))
        if time.monotonic() > deadline:
            raise BenchError("timed out after %gs waiting for %s" % (timeout, what))
        time.sleep(POLL)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, timeout=5):
    """One HTTP/1.0 GET on a fresh connection; returns the status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


def read_records(path):
    """The complete JSON lines of a file written by n502trace --json."""
    out = []
    try:
        with open(path, errors="replace") as f:
            data = f.read()
    except FileNotFoundError:
        return out
    for line in data.split("\n")[:-1]:  # the last piece may be partial
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def find_record(path, rtype):
    for r in read_records(path):
        if r.get("type") == rtype:
            return r
    return None


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "\n".join(f.read().splitlines()[-n:])
    except FileNotFoundError:
        return "(no %s)" % path


# ---------------------------------------------------------------- nginx

NGINX_CONF = """\
# generated by scripts/bench.py ({variant})
user www-data;
worker_processes 1;
{affinity}
worker_rlimit_nofile 65536;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {error_log} {level};

events {{
    worker_connections 8192;
}}

http {{
    # The cost measured is tracing, not logging.
    access_log off;
    # wrk's 32 client connections (and kept-alive upstream connections) are
    # never closed by Nginx during a run: the only churn is what the variant asks.
    keepalive_requests 100000000;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
{upstream_block}
    server {{
        listen 127.0.0.1:{front};
        server_name front;
        location / {{
            proxy_pass http://{target};
{proxy_extra}        }}
    }}

    server {{
        listen 127.0.0.1:{up};
        server_name upstream;
        location / {{
            return 200 "ok\\n";
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, workdir, variant, cpu):
        self.dir = os.path.join(workdir, "nginx-" + variant)
        self.variant = variant
        self.cpu = cpu
        self.front = free_port()
        self.up = free_port()
        while self.up == self.front:
            self.up = free_port()
        self.conf = os.path.join(self.dir, "nginx.conf")
        self.error_log = os.path.join(self.dir, "error.log")
        self.debug_log = os.path.join(self.dir, "debug.log")
        self.proc = None
        self.workers = []

    @property
    def master(self):
        return self.proc.pid

    def write_conf(self, debug=False):
        if self.variant == "keepalive":
            upstream_block = ("    upstream backend {\n"
                              "        server 127.0.0.1:%d;\n"
                              "        keepalive %d;\n"
                              "        keepalive_requests 100000000;\n"
                              "    }\n" % (self.up, CONNECTIONS))
            target = "backend"
            proxy_extra = ("            proxy_http_version 1.1;\n"
                           "            proxy_set_header Connection \"\";\n")
        else:
            upstream_block = ""
            target = "127.0.0.1:%d" % self.up
            proxy_extra = ""
        affinity = ("worker_cpu_affinity %s;" % format(1 << self.cpu, "b")) if self.cpu is not None else ""
        text = NGINX_CONF.format(
            variant=self.variant, dir=self.dir, affinity=affinity,
            error_log=self.debug_log if debug else self.error_log,
            level="debug" if debug else "error",
            upstream_block=upstream_block, front=self.front, up=self.up,
            target=target, proxy_extra=proxy_extra)
        with open(self.conf, "w") as f:
            f.write(text)

    def start(self, timeout=15):
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        os.chmod(self.dir, 0o755)
        os.chmod(os.path.join(self.dir, "tmp"), 0o755)
        self.write_conf()
        out = open(os.path.join(self.dir, "nginx.stderr"), "w")
        # -e: the log used before the config is read (Debian's default is stderr)
        self.proc = spawn([NGINX, "-p", self.dir, "-c", self.conf, "-e", self.error_log],
                          stdout=out, stderr=subprocess.STDOUT)
        out.close()
        try:
            self.workers = wait_until(lambda: children_of(self.master), timeout,
                                      "the nginx worker", proc=self.proc)
            for port in (self.front, self.up):
                wait_until(lambda: self._accepting(port), timeout,
                           "nginx on 127.0.0.1:%d" % port, proc=self.proc)
            status = http_get(self.front)
        except BenchError as e:
            raise BenchError("%s\n%s\n%s" % (e, tail(os.path.join(self.dir, "nginx.stderr")),
                                             tail(self.error_log)))
        if " 200 " not in status + " ":
            raise BenchError("nginx answered %r through the proxy, not 200" % status)

    @staticmethod
    def _accepting(port):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def reload(self, debug, timeout=30):
        """Rewrite the config (debug log or not), SIGHUP, and wait until the
        old worker is gone and a new one runs."""
        self.write_conf(debug)
        old = set(children_of(self.master))
        os.kill(self.master, signal.SIGHUP)

        def done():
            kids = set(children_of(self.master))
            return sorted(kids) if kids and not (kids & old) else None
        try:
            self.workers = wait_until(done, timeout, "nginx reload (old workers %s)" % sorted(old),
                                      proc=self.proc)
        except BenchError as e:
            raise BenchError("%s\n%s" % (e, tail(self.error_log)))

    def worker_cpu(self):
        """CPU time and run-queue wait of the workers, in seconds."""
        run = wait = 0.0
        for p in self.workers:
            r, w = run_wait_seconds(p)
            run += r
            wait += w
        return run, wait

    def stop(self):
        if self.proc is None:
            return
        pids = [self.master] + children_of(self.master)
        stop_proc(self.proc, signal.SIGQUIT, timeout=10)
        for p in pids:  # workers outliving the master
            if pid_alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc = None


def nginx_info():
    r = subprocess.run([NGINX, "-V"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    text = r.stdout.decode(errors="replace")
    m = re.search(r"nginx version: (\S+)", text)
    return (m.group(1) if m else "nginx (unknown version)"), ("--with-debug" in text)


# ---------------------------------------------------------------- wrk

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def parse_wrk(text):
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
    r["p99_ms"] = float(m.group(1)) * UNIT_MS[m.group(2)] if m else None
    m = re.search(r"(\d+) requests in", text)
    r["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    r["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    r["socket_errors_text"] = m.group(0) if m else ""
    return r


class Wrk:
    """wrk in the background (pinned to a CPU); reaped with wait4 for its CPU time."""

    def __init__(self, workdir, port, duration, cpu, tag):
        self.out_path = os.path.join(workdir, "wrk-%s.out" % tag)
        argv = ["wrk", "-t1", "-c%d" % CONNECTIONS, "-d%ds" % duration, "--latency",
                "http://127.0.0.1:%d/" % port]
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu)] + argv  # taskset execs wrk: same pid
        self.duration = duration
        self.started = time.monotonic()
        with open(self.out_path, "w") as out:
            self.proc = spawn(argv, stdout=out, stderr=subprocess.STDOUT)
        self.cpu_s = None

    def poll(self):
        """True once wrk has exited (and been reaped)."""
        if self.proc.returncode is not None:
            return True
        pid, status, ru = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_s = ru.ru_utime + ru.ru_stime
        if self.proc in LIVE:
            LIVE.remove(self.proc)
        return True

    def wait(self, on_tick=None):
        deadline = self.started + self.duration + 60
        while not self.poll():
            if on_tick is not None:
                on_tick()
            if time.monotonic() > deadline:
                stop_proc(self.proc, signal.SIGKILL)
                raise BenchError("wrk did not finish within %ds" % (self.duration + 60))
            time.sleep(0.01)
        wall = time.monotonic() - self.started
        with open(self.out_path, errors="replace") as f:
            text = f.read()
        r = parse_wrk(text)
        if self.proc.returncode != 0 or r["rps"] is None or r["p99_ms"] is None:
            raise BenchError("wrk failed (exit %s):\n%s" % (self.proc.returncode, text))
        r["wrk_cpu"] = (self.cpu_s or 0.0) / wall
        os.unlink(self.out_path)
        return r


# ---------------------------------------------------------------- modes

class Bench:
    def __init__(self, args, workdir, cpus):
        self.args = args
        self.dir = workdir
        self.nginx_cpu, self.wrk_cpu = cpus
        self.nginx = None
        self.runs = 0

    def wrk(self, duration):
        self.runs += 1
        return Wrk(self.dir, self.nginx.front, duration, self.wrk_cpu, self.runs)

    def measured_wrk(self, duration, tracer_pid=None):
        """wrk for duration s; the Nginx worker's (and a tracer's) CPU share."""
        n0 = self.nginx.worker_cpu()
        t0 = cpu_seconds(tracer_pid) if tracer_pid else None
        start = time.monotonic()
        r = self.wrk(duration).wait()
        wall = time.monotonic() - start
        n1 = self.nginx.worker_cpu()
        r["nginx_cpu"] = (n1[0] - n0[0]) / wall
        r["nginx_wait"] = (n1[1] - n0[1]) / wall  # runnable, but CPU 0 ran something else
        if tracer_pid:
            t1 = cpu_seconds(tracer_pid)
            r["tracer_cpu"] = (t1 - t0) / wall if t0 is not None and t1 is not None else None
        return r

    # -- n502trace
    def start_tool(self, tag, binary=None, extra=()):
        out_path = os.path.join(self.dir, "n502trace-%s.jsonl" % tag)
        err_path = os.path.join(self.dir, "n502trace-%s.stderr" % tag)
        out, err = open(out_path, "w"), open(err_path, "w")
        t0 = time.monotonic()
        p = spawn([binary or self.args.bin, "--nginx-pid", str(self.nginx.master), "--json"] + list(extra),
                  stdout=out, stderr=err)
        out.close()
        err.close()
        try:
            ready = wait_until(lambda: find_record(out_path, "ready"), 15,
                               "n502trace's ready record", proc=p)
        except BenchError as e:
            stop_proc(p, signal.SIGINT)
            raise BenchError("%s\nstderr:\n%s" % (e, tail(err_path)))
        wall_ms = (time.monotonic() - t0) * 1000.0
        if sorted(ready.get("workers") or []) != sorted(self.nginx.workers):
            stop_proc(p, signal.SIGINT)
            raise BenchError("n502trace ready.workers %r, nginx's workers are %r" % (
                ready.get("workers"), self.nginx.workers))
        return p, out_path, err_path, ready, wall_ms

    def stop_tool(self, p, out_path, err_path):
        rc = stop_proc(p, signal.SIGINT, timeout=15)
        summary = find_record(out_path, "summary")
        if summary is None:
            raise BenchError("n502trace (exit %s) printed no summary\nstderr:\n%s" % (rc, tail(err_path)))
        records = read_records(out_path)
        warnings = [r for r in records if r.get("type") == "warning"]
        verdicts = sum(1 for r in records if r.get("type") == "verdict")
        return rc, summary, warnings, verdicts

    def run_n502trace(self, duration, tag, binary=None, extra=()):
        p, out_path, err_path, ready, wall_ms = self.start_tool(tag, binary, extra)
        stats0 = bpf_prog_stats(p.pid) if self.args.bpf_stats else None
        r = self.measured_wrk(duration, tracer_pid=p.pid)
        if stats0 is not None:
            r["bpf"] = stats_delta(stats0, bpf_prog_stats(p.pid))
        rss = vmrss_kib(p.pid)
        rc, summary, warnings, verdicts = self.stop_tool(p, out_path, err_path)
        r.update(events=summary.get("events"), events_lost=summary.get("events_lost"),
                 events_malformed=summary.get("events_malformed"), map_full=summary.get("map_full"),
                 tool_rc=rc, rss_kib=rss, attach_ms=ready.get("attach_ms"), ready_wall_ms=wall_ms,
                 lost_warnings=sum(1 for w in warnings if w.get("code") == "events_lost"),
                 other_warnings=sorted({w.get("code") for w in warnings if w.get("code") != "events_lost"}),
                 verdicts=verdicts)
        os.unlink(out_path)
        os.unlink(err_path)
        return r

    # -- tcpdump
    def run_tcpdump(self, duration, tag):
        pcap = os.path.join(self.dir, "upstream-%s.pcap" % tag)
        err_path = os.path.join(self.dir, "tcpdump-%s.stderr" % tag)
        with open(err_path, "w") as err:
            # -Z root: keep writing the file as root (Debian's tcpdump would
            # drop to user tcpdump, which may not write to the temp dir).
            p = spawn(["tcpdump", "-i", "lo", "-w", pcap, "-U", "-Z", "root",
                       "tcp port %d" % self.nginx.up], stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_until(lambda: "listening on" in tail(err_path, 50), 15, "tcpdump's 'listening on'", proc=p)
            # Really capturing: one request through the proxy lands in the file.
            http_get(self.nginx.front)
            wait_until(lambda: os.path.exists(pcap) and os.path.getsize(pcap) > 24, 10,
                       "packets in tcpdump's file", proc=p)
        except BenchError as e:
            stop_proc(p, signal.SIGINT)
            raise BenchError("%s\n%s" % (e, tail(err_path)))
        r = self.measured_wrk(duration, tracer_pid=p.pid)
        rc = stop_proc(p, signal.SIGINT, timeout=30)
        text = tail(err_path, 50)
        m = re.search(r"(\d+) packets? captured", text)
        r["captured"] = int(m.group(1)) if m else None
        m = re.search(r"(\d+) packets? dropped by kernel", text)
        r["dropped"] = int(m.group(1)) if m else None
        r["pcap_bytes"] = os.path.getsize(pcap) if os.path.exists(pcap) else 0
        r["tcpdump_rc"] = rc
        for f in (pcap, err_path):
            if os.path.exists(f):
                os.unlink(f)
        return r

    # -- debug log
    def run_debug(self, duration, tag):
        self.nginx.reload(debug=True)
        if not os.path.exists(self.nginx.debug_log):
            raise BenchError("nginx reloaded but %s does not exist" % self.nginx.debug_log)
        try:
            r = self.measured_wrk(duration)
        finally:
            self.nginx.reload(debug=False)  # the old worker (and the debug log) closed
        r["debug_log_bytes"] = os.path.getsize(self.nginx.debug_log)
        os.unlink(self.nginx.debug_log)
        return r

    # -- empty programs on the same tracepoints
    def run_hooks(self, duration, tag, op=None):
        out_path = os.path.join(self.dir, "hooks-%s.out" % tag)
        if op == "sockops":
            argv = [self.args.hooks_bin, "--sockops", cgroup2_root()]
            op = None  # no done line
        else:
            argv = [self.args.hooks_bin] + (["--op", op] if op else [])
        with open(out_path, "w") as out:
            p = spawn(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: '"type":"ready"' in tail(out_path, 5), 15, "bench_hooks' ready line", proc=p)
        except BenchError as e:
            stop_proc(p, signal.SIGINT)
            raise BenchError("%s\n%s" % (e, tail(out_path)))
        stats0 = bpf_prog_stats(p.pid) if self.args.bpf_stats else None
        r = self.measured_wrk(duration, tracer_pid=p.pid)
        if stats0 is not None:
            r["bpf"] = stats_delta(stats0, bpf_prog_stats(p.pid))
        rc = stop_proc(p, signal.SIGINT)
        if rc != 0:
            raise BenchError("bench_hooks exited %s:\n%s" % (rc, tail(out_path)))
        if op:
            done = [json.loads(l) for l in tail(out_path, 5).splitlines() if '"type":"done"' in l]
            if not done:
                raise BenchError("bench_hooks --op %s printed no done line:\n%s" % (op, tail(out_path)))
            if done[-1]["failed"]:
                raise BenchError("operation %s failed in %d runs: its time would be a failure's, not its own"
                                 % (op, done[-1]["failed"]))
        os.unlink(out_path)
        return r

    def run_mode(self, mode, duration, tag):
        if mode == "none":
            return self.measured_wrk(duration)
        if mode == "hooks":
            return self.run_hooks(duration, tag)
        if mode in EXTRA_MODES:
            return self.run_hooks(duration, tag, op=mode)
        if mode in TOOL_MODES:
            return self.run_n502trace(duration, tag, extra=TOOL_MODES[mode])
        if mode == "n502trace":
            return self.run_n502trace(duration, tag)
        if mode == "baseline":
            return self.run_n502trace(duration, tag, self.args.baseline_bin, extra=self.args.baseline_args.split())
        if mode == "tcpdump":
            return self.run_tcpdump(duration, tag)
        if mode == "debug":
            return self.run_debug(duration, tag)
        raise BenchError("unknown mode %r" % mode)

    # -- the interleaved rounds
    def rounds(self, variant, modes):
        self.nginx = Nginx(self.dir, variant, self.nginx_cpu)
        self.nginx.start()
        log("variant %s: nginx master %d, worker %s, front 127.0.0.1:%d -> upstream 127.0.0.1:%d" % (
            variant, self.nginx.master, self.nginx.workers, self.nginx.front, self.nginx.up))
        warm = 1 if self.args.duration <= 2 else 3
        log("variant %s: warm-up %ds" % (variant, warm))
        self.wrk(warm).wait()
        results = {m: [] for m in modes}
        try:
            for rnd in range(1, self.args.rounds + 1):
                k = (rnd - 1) % len(modes) if self.args.order == "rotate" else 0
                for mode in modes[k:] + modes[:k]:
                    time.sleep(0.5)  # let the previous run's sockets and softirqs settle
                    r = self.run_mode(mode, self.args.duration, "%s-%d" % (variant, rnd))
                    results[mode].append(r)
                    log("variant %s round %d/%d %-9s %9.0f req/s  p99 %7.3f ms  nginx cpu %3.0f%% (waiting %2.0f%%)  wrk cpu %3.0f%%%s" % (
                        variant, rnd, self.args.rounds, mode, r["rps"], r["p99_ms"],
                        100 * r["nginx_cpu"], 100 * r["nginx_wait"], 100 * r["wrk_cpu"], short_note(mode, r)))
        finally:
            self.nginx.stop()
            self.nginx = None
        return results

    # -- what each kind of BPF work costs
    def op_costs(self):
        """Each operation of tests/bench/ops.bpf.c under the new_conn load,
        round after round: {op: [{program: ns per run}, ...]}."""
        self.nginx = Nginx(self.dir, "new_conn", self.nginx_cpu)
        self.nginx.start()
        warm = 1 if self.args.duration <= 2 else 3
        self.wrk(warm).wait()
        results = {op: [] for op in self.args.ops}
        try:
            for rnd in range(1, self.args.rounds + 1):
                for op in self.args.ops:
                    time.sleep(0.5)
                    r = self.run_hooks(self.args.duration, "op-%s-%d" % (op, rnd), op)
                    per_run = {name: ns / n for name, (n, ns) in r["bpf"].items() if n}
                    results[op].append(per_run)
                    log("op costs round %d/%d %-15s %s" % (rnd, self.args.rounds, op, "  ".join(
                        "%s %.0f ns/run" % (name, v) for name, v in sorted(per_run.items()))))
        finally:
            self.nginx.stop()
            self.nginx = None
        return results

    # -- soak
    def soak(self, minutes):
        log("soak: n502trace under new_conn load for %g min, VmRSS every %ds" % (minutes, SOAK_SAMPLE_S))
        self.nginx = Nginx(self.dir, "new_conn", self.nginx_cpu)
        self.nginx.start()
        try:
            p, out_path, err_path, ready, wall_ms = self.start_tool("soak")
            duration = int(round(minutes * 60))
            samples = []
            w = self.wrk(duration)
            start = w.started
            next_at = [start]

            def sample():
                now = time.monotonic()
                if now >= next_at[0]:
                    rss = vmrss_kib(p.pid)
                    samples.append((now - start, rss))
                    next_at[0] += SOAK_SAMPLE_S
                    if len(samples) > 1:
                        log("soak: t=%4.0fs VmRSS %.1f MiB" % (now - start, (rss or 0) / 1024.0))
            r = w.wait(on_tick=sample)
            if time.monotonic() - start - samples[-1][0] > 2:
                samples.append((time.monotonic() - start, vmrss_kib(p.pid)))  # at the end of the load
            rc, summary, warnings, verdicts = self.stop_tool(p, out_path, err_path)
        finally:
            self.nginx.stop()
            self.nginx = None
        return dict(minutes=minutes, rps=r["rps"], p99_ms=r["p99_ms"], non2xx=r["non2xx"],
                    socket_errors=r["socket_errors"], samples=samples,
                    events=summary.get("events"), events_lost=summary.get("events_lost"),
                    tool_rc=rc, attach_ms=ready.get("attach_ms"), ready_wall_ms=wall_ms)


# ---------------------------------------------------------------- BPF run time

BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"


def prog_ids(pid):
    """Ids of the BPF programs pid holds open (from its descriptors' fdinfo)."""
    ids = set()
    fd_dir = "/proc/%d/fd" % pid
    try:
        fds = os.listdir(fd_dir)
    except (FileNotFoundError, ProcessLookupError):
        raise BenchError("the process %d holding the BPF programs is gone" % pid)
    for fd in fds:
        try:
            if os.readlink(os.path.join(fd_dir, fd)) != "anon_inode:bpf-prog":
                continue
            with open("/proc/%d/fdinfo/%s" % (pid, fd)) as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return ids


def bpf_prog_stats(pid):
    """{program name: (runs, run time ns)} of the BPF programs pid holds
    (bpftool prog show; counted only while kernel.bpf_stats_enabled is 1)."""
    ids = prog_ids(pid)
    if not ids:
        raise BenchError("n502trace (pid %d) holds no BPF program" % pid)
    r = subprocess.run(["bpftool", "--json", "prog", "show"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise BenchError("bpftool prog show failed: %s" % r.stderr.decode(errors="replace").strip())
    out = {}
    for prog in json.loads(r.stdout or b"[]"):
        if prog.get("id") not in ids:
            continue
        name = prog.get("name", "?")
        runs, ns = out.get(name, (0, 0))
        out[name] = (runs + prog.get("run_cnt", 0), ns + prog.get("run_time_ns", 0))
    return out


def stats_delta(a, b):
    return {k: (b[k][0] - a.get(k, (0, 0))[0], b[k][1] - a.get(k, (0, 0))[1]) for k in b}


def bpf_table(runs):
    """Per program: runs and run time per proxied request, summed over runs."""
    total_req = sum(r["requests"] for r in runs if r.get("bpf"))
    if not total_req:
        return ["(no requests measured)"]
    progs = {}
    for r in runs:
        for name, (n, ns) in (r.get("bpf") or {}).items():
            a, b = progs.get(name, (0, 0))
            progs[name] = (a + n, b + ns)
    lines = ["| BPF program | runs per request | ns per run | ns per request |", "|---|---:|---:|---:|"]
    tot_n = tot_ns = 0
    for name, (n, ns) in sorted(progs.items(), key=lambda kv: -kv[1][1]):
        if not n:
            continue
        tot_n += n
        tot_ns += ns
        lines.append("| %s | %.2f | %.0f | %.0f |" % (name, n / total_req, ns / n, ns / total_req))
    lines.append("| total | %.2f | %s | %.0f |" % (tot_n / total_req, fmt(tot_ns / tot_n if tot_n else None, ".0f"),
                                                   tot_ns / total_req))
    return lines


def short_note(mode, r):
    s = ""
    if mode in ("n502trace", "baseline") or mode in TOOL_MODES:
        s = "  events %s lost %s RSS %.1f MiB attach %s ms ready %.0f ms" % (
            r["events"], r["events_lost"], (r["rss_kib"] or 0) / 1024.0, r["attach_ms"], r["ready_wall_ms"])
    elif mode == "tcpdump":
        s = "  pcap %.0f MB dropped %s" % (r["pcap_bytes"] / 1e6, r["dropped"])
    elif mode == "debug":
        s = "  debug log %.0f MB" % (r["debug_log_bytes"] / 1e6)
    if r["non2xx"] or r["socket_errors"]:
        s += "  non-2xx %d, %s" % (r["non2xx"], r["socket_errors_text"])
    return s


# ---------------------------------------------------------------- report

def paired_ratios(base, runs):
    """Each run's req/s over the `none` run of the same round."""
    return [r["rps"] / b["rps"] for b, r in zip(base, runs) if b["rps"]]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def median_interval(xs, level=0.95):
    """A distribution-free interval for the median of xs: the order
    statistics (k-th smallest, k-th largest) that bracket the true median
    with probability >= level (a binomial argument: each round lands above or
    below it at even odds). Returns (low, high, coverage), or None when too
    few rounds give that level (6 are needed for 95%)."""
    xs = sorted(x for x in xs if x is not None)
    n = len(xs)
    best = None
    for k in range(1, n // 2 + 1):
        # P(fewer than k of n below the median) on each side
        tail = sum(math.comb(n, i) for i in range(k)) / 2.0 ** n
        coverage = 1 - 2 * tail
        if coverage < level:
            break
        best = (xs[k - 1], xs[n - k], coverage)
    return best


def fmt_interval(xs):
    ci = median_interval(xs)
    if not ci:
        return "too few rounds for a 95% interval"
    return "95%% interval of the median %.3f-%.3f (order statistics, coverage %.1f%%)" % (
        ci[0], ci[1], 100 * ci[2])


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def mode_notes(mode, runs):
    notes = []
    if mode in ("n502trace", "baseline") or mode in TOOL_MODES:
        ev = med([r["events"] for r in runs])
        rate = med([r["events"] / r["requests"] for r in runs if r["events"] is not None and r["requests"]])
        # Few events: either no connection was made (keep-alive reuses
        # them) or the tool stayed lean, where a healthy connection makes none.
        lean = "tracking_lean" in {c for r in runs for c in r["other_warnings"]} and \
            not any("tracking_full" in r["other_warnings"] for r in runs)
        notes.append("events/run %s (%s per request%s)" % (
            fmt(ev, ",.0f"), fmt(rate, ".1f"),
            "" if rate is None or rate >= 0.1
            else ": adaptive tracking stayed lean, where a healthy connection makes none" if lean
            else ": reused connections make none"))
        notes.append("events lost total %d" % sum(r["events_lost"] or 0 for r in runs))
        bpf = [r for r in runs if r.get("bpf")]
        if bpf:
            ns = sum(sum(v[1] for v in r["bpf"].values()) for r in bpf)
            notes.append("BPF run time %.2f us per request" % (ns / 1000.0 / sum(r["requests"] for r in bpf)))
        notes.append("RSS max %.1f MiB" % (max(r["rss_kib"] or 0 for r in runs) / 1024.0))
        t = med([r.get("tracer_cpu") for r in runs])
        notes.append("tool CPU %s%%" % fmt(None if t is None else 100 * t, ".0f"))
        bad = [r["tool_rc"] for r in runs if r["tool_rc"] != 0]
        if bad:
            notes.append("tool exit codes %s" % bad)
        v = sum(r["verdicts"] for r in runs)
        if v:
            notes.append("%d verdicts (expected none)" % v)
        full = sum(1 for r in runs if "tracking_full" in r["other_warnings"])
        if full and mode != "full":
            # Adaptive tracking saw a failure, or Nginx logged one: that run
            # measured full tracking for a while, not the healthy case.
            notes.append("**switched to full tracking in %d of %d runs**" % (full, len(runs)))
        other = sorted({c for r in runs for c in r["other_warnings"]})
        if other:
            notes.append("warnings %s" % ", ".join(other))
    elif mode == "tcpdump":
        notes.append("pcap %s MB/run" % fmt(med([r["pcap_bytes"] / 1e6 for r in runs]), ".0f"))
        notes.append("dropped by kernel %d" % sum(r["dropped"] or 0 for r in runs))
        t = med([r.get("tracer_cpu") for r in runs])
        notes.append("tcpdump CPU %s%%" % fmt(None if t is None else 100 * t, ".0f"))
    elif mode == "debug":
        notes.append("debug log %s MB/run" % fmt(med([r["debug_log_bytes"] / 1e6 for r in runs]), ".0f"))
    n2 = sum(r["non2xx"] for r in runs)
    se = sum(r["socket_errors"] for r in runs)
    if n2 or se:
        notes.append("**non-2xx %d, socket errors %d**" % (n2, se))
    return "; ".join(notes)


def cgroup2_root():
    """Where the cgroup v2 hierarchy is mounted (pure v2 or a hybrid's unified)."""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return fields[1]
    raise BenchError("mode sockops needs a cgroup v2 hierarchy mounted")


def variant_table(variant, results, modes, ab_mode="n502trace"):
    base = results.get("none")
    base_rps = med([r["rps"] for r in base]) if base else None
    base_p99 = med([r["p99_ms"] for r in base]) if base else None
    lines = ["| mode | median req/s | ratio of medians | median of per-round ratios | median p99 ms | ratio to none | nginx worker CPU | nginx waiting for CPU | wrk CPU | notes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    ratios = {}
    for mode in modes:
        runs = results[mode]
        rps = med([r["rps"] for r in runs])
        p99 = med([r["p99_ms"] for r in runs])
        rr = rps / base_rps if base_rps and rps is not None else None
        pr = p99 / base_p99 if base_p99 and p99 is not None else None
        paired = med(paired_ratios(base, runs)) if base else None
        ratios[mode] = paired
        lines.append("| %s | %s | %s | %s | %s | %s | %s%% | %s%% | %s%% | %s |" % (
            mode, fmt(rps, ",.0f"), fmt(rr, ".3f"), fmt(paired, ".3f"), fmt(p99, ".3f"), fmt(pr, ".2f"),
            fmt(100 * med([r["nginx_cpu"] for r in runs]), ".0f"),
            fmt(100 * med([r["nginx_wait"] for r in runs]), ".0f"),
            fmt(100 * med([r["wrk_cpu"] for r in runs]), ".0f"),
            mode_notes(mode, runs) or "-"))
    lines.append("")
    if base and "n502trace" in modes:
        lines.append("n502trace, median of per-round ratios %s: %s" % (
            fmt(ratios.get("n502trace"), ".3f"), fmt_interval(paired_ratios(base, results["n502trace"]))))
        lines.append("")
    lines.append("Per-round ratios to none (req/s): " + "; ".join(
        "%s %s" % (m, ", ".join("%.3f" % x for x in paired_ratios(base, results[m])))
        for m in modes if m != "none" and base))
    if base and "hooks" in modes and "n502trace" in modes:
        over = [t / h for t, h in zip([r["rps"] for r in results["n502trace"]],
                                      [r["rps"] for r in results["hooks"]]) if h]
        lines.append("")
        lines.append("n502trace against the floor (per-round ratio to hooks, median): %s; %s" % (
            fmt(med(over), ".3f"), fmt_interval(over)))
    lines.append("")
    lines.append("Per round, req/s (p99 ms):")
    lines.append("")
    n = max(len(results[m]) for m in modes)
    lines.append("| mode | " + " | ".join("round %d" % (i + 1) for i in range(n)) + " |")
    lines.append("|---|" + "---:|" * n)
    for mode in modes:
        lines.append("| %s | " % mode + " | ".join(
            "%.0f (%.2f)" % (r["rps"], r["p99_ms"]) for r in results[mode]) + " |")
    if base and "baseline" in modes and ab_mode in modes:
        ab = [t / b for t, b in zip([r["rps"] for r in results[ab_mode]],
                                    [r["rps"] for r in results["baseline"]]) if b]
        lines.append("")
        lines.append("%s against the baseline binary (per-round ratio of req/s, median): %s" % (
            ab_mode, fmt(med(ab), ".3f")))

        def bpf_per_req(r):
            return sum(v[1] for v in r["bpf"].values()) / r["requests"] if r.get("bpf") and r["requests"] else None
        bt = [t / b for t, b in zip([bpf_per_req(r) for r in results[ab_mode]],
                                    [bpf_per_req(r) for r in results["baseline"]]) if t is not None and b]
        if bt:
            lines.append("")
            lines.append("%s's BPF run time per request against the baseline's (per-round ratio, median): %s" % (
                ab_mode, fmt(med(bt), ".3f")))
    for mode in modes:
        if any(r.get("bpf") for r in results.get(mode, [])):
            lines.append("")
            lines.append("BPF run time of the programs of %s (kernel.bpf_stats_enabled, all its runs):" % mode)
            lines.append("")
            lines += bpf_table(results[mode])
    return lines, ratios


def machine_lines(nginx_version, has_debug, load_start):
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/etc/debian_version") as f:
            debian = "Debian " + f.read().strip()
    except OSError:
        debian = "unknown distribution"
    try:
        wrk_v = subprocess.run(["wrk", "-v"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout.decode(
            errors="replace").split("\n")[0].split(" Copyright")[0].strip()
    except OSError:
        wrk_v = "wrk"
    with open("/proc/loadavg") as f:
        load_end = " ".join(f.read().split()[:3])
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return [
        "- CPUs (`nproc`): %d, %s; %.1f GiB RAM" % (os.cpu_count(), model, mem_kib / 1048576.0),
        "- kernel %s, %s, %s (%s), %s" % (os.uname().release, debian, nginx_version,
                                         "built --with-debug" if has_debug else "NOT built --with-debug",
                                         wrk_v),
        "- load average at start %s, at end %s" % (load_start, load_end),
        "- %s" % datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    ]


def main():
    ap = argparse.ArgumentParser(description="n502trace performance benchmark (see scripts/bench.sh)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--out", default="bench-results.md")
    ap.add_argument("--bin", default="build/n502trace")
    ap.add_argument("--baseline-bin", help="another n502trace binary for mode baseline (an A/B of two versions)")
    ap.add_argument("--baseline-args", default="",
                    help="arguments mode baseline adds, e.g. \"--tracking full\" to set it against mode full")
    ap.add_argument("--hooks-bin", default="build/tests/bench_hooks",
                    help="the floor's loader (mode hooks; built with the tests)")
    ap.add_argument("--order", choices=("rotate", "fixed"), default="rotate",
                    help="rotate (default): each round starts one mode later, so that every mode runs in every "
                         "position equally often; fixed: --modes' order every round")
    ap.add_argument("--quick", action="store_true", help="5 rounds of 2 s (a smoke test)")
    ap.add_argument("--soak-minutes", type=float, default=0)
    ap.add_argument("--soak-only", action="store_true")
    ap.add_argument("--op-costs", action="store_true",
                    help="instead of the modes: what each kind of BPF work (a map lookup, an insert and delete, "
                         "a clock read, a ring-buffer event...) costs on this machine under the new_conn load, "
                         "against an empty program (bench_hooks --op; implies --bpf-stats)")
    ap.add_argument("--ops", default=",".join(OPS),
                    help="with --op-costs: the operations to measure, comma-separated (empty, the reference, is "
                         "always measured); have: " + ", ".join(OPS))
    ap.add_argument("--bpf-stats", action="store_true",
                    help="also measure each BPF program's run time (kernel.bpf_stats_enabled during the "
                         "run; it adds its own cost, so use it to find where the cost is, not for ratios)")
    args = ap.parse_args()
    if args.op_costs:
        if args.soak_only or args.soak_minutes > 0 or args.baseline_bin:
            ap.error("--op-costs runs on its own (no soak, no baseline)")
        args.bpf_stats = True
    ops = [o for o in args.ops.split(",") if o]
    for o in ops:
        if o not in OPS:
            ap.error("unknown operation %r (have %s)" % (o, ", ".join(OPS)))
    args.ops = ["empty"] + [o for o in OPS if o in ops and o != "empty"]
    if args.quick:
        args.rounds, args.duration = 5, 2
    variants = [v for v in args.variants.split(",") if v]
    modes = [m for m in args.modes.split(",") if m]
    for v in variants:
        if v not in VARIANTS:
            ap.error("unknown variant %r (have %s)" % (v, ", ".join(VARIANTS)))
    for m in modes:
        if m not in MODES + EXTRA_MODES + tuple(TOOL_MODES):
            ap.error("unknown mode %r (have %s)" % (m, ", ".join(MODES + EXTRA_MODES + tuple(TOOL_MODES))))
    if args.rounds < 1 or args.duration < 1:
        ap.error("--rounds and --duration must be >= 1")
    if args.soak_only and args.soak_minutes <= 0:
        ap.error("--soak-only needs --soak-minutes N")
    if os.geteuid() != 0:
        sys.exit("bench.py: run as root (BPF, nginx with user www-data, tcpdump)")
    args.bin = os.path.abspath(args.bin)
    if not os.access(args.bin, os.X_OK):
        sys.exit("bench.py: %s is not built (run scripts/test.sh or cmake --build build)" % args.bin)
    for tool in ("wrk", "tcpdump", "taskset"):
        if shutil.which(tool) is None:
            sys.exit("bench.py: %s is missing (scripts/install-deps.sh)" % tool)

    nginx_version, has_debug = nginx_info()
    if args.baseline_bin:
        args.baseline_bin = os.path.abspath(args.baseline_bin)
        if not os.access(args.baseline_bin, os.X_OK):
            sys.exit("bench.py: --baseline-bin %s is not an executable" % args.baseline_bin)
        if "baseline" not in modes:
            modes.insert(modes.index("n502trace") if "n502trace" in modes else len(modes), "baseline")
    elif "baseline" in modes:
        if args.modes != ",".join(MODES):
            sys.exit("bench.py: mode baseline needs --baseline-bin PATH")
        modes.remove("baseline")
    args.hooks_bin = os.path.abspath(args.hooks_bin)
    if args.op_costs and not os.access(args.hooks_bin, os.X_OK):
        sys.exit("bench.py: %s is not built (cmake --build build --target bench_hooks)" % args.hooks_bin)
    if any(m in modes for m in EXTRA_MODES) and not os.access(args.hooks_bin, os.X_OK):
        sys.exit("bench.py: %s is not built (cmake --build build --target bench_hooks)" % args.hooks_bin)
    if "hooks" in modes and not os.access(args.hooks_bin, os.X_OK):
        if args.modes != ",".join(MODES):
            sys.exit("bench.py: %s is not built (cmake --build build --target bench_hooks)" % args.hooks_bin)
        log("%s is not built: skipping the hooks mode" % args.hooks_bin)
        modes.remove("hooks")
    if "debug" in modes and not has_debug:
        log("%s was not built --with-debug: skipping the debug mode" % NGINX)
        modes.remove("debug")
    if "none" not in modes:
        modes.insert(0, "none")  # the baseline every ratio needs
    ncpu = os.cpu_count() or 1
    cpus = (0, 1) if ncpu >= 2 else (None, None)
    with open("/proc/loadavg") as f:
        load_start = " ".join(f.read().split()[:3])

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    bpf_stats_old = None
    if args.bpf_stats:
        if shutil.which("bpftool") is None:
            sys.exit("bench.py: --bpf-stats needs bpftool (scripts/install-deps.sh)")
        with open(BPF_STATS) as f:
            bpf_stats_old = f.read().strip()
        with open(BPF_STATS, "w") as f:
            f.write("1")
    try:
        return run(args, variants, modes, nginx_version, has_debug, cpus, load_start)
    finally:
        if bpf_stats_old is not None:
            with open(BPF_STATS, "w") as f:
                f.write(bpf_stats_old)


def run(args, variants, modes, nginx_version, has_debug, cpus, load_start):
    workdir = tempfile.mkdtemp(prefix="n502-bench-")
    os.chmod(workdir, 0o755)  # the workers (www-data) traverse it
    bench = Bench(args, workdir, cpus)
    all_results = {}
    soak = None
    t_start = time.monotonic()
    try:
        log("%s; %s%s; workdir %s" % (nginx_version, "built --with-debug" if has_debug else "NOT built --with-debug",
                                      "" if cpus[0] is None else "; nginx worker on CPU 0, wrk on CPU 1",
                                      workdir))
        if args.op_costs:
            log("op costs: %d rounds x %ds per operation; operations %s" % (args.rounds, args.duration, ", ".join(args.ops)))
            op_results = bench.op_costs()
        elif not args.soak_only:
            log("%d rounds x %ds per mode; variants %s; modes %s" % (
                args.rounds, args.duration, ", ".join(variants), ", ".join(modes)))
            for v in variants:
                all_results[v] = bench.rounds(v, modes)
        if args.soak_minutes > 0:
            soak = bench.soak(args.soak_minutes)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        cleanup(bench, workdir)
        return 130
    except BenchError as e:
        log("FAILED: %s" % e)
        cleanup(bench, workdir)
        return 1
    cleanup(bench, workdir)
    if args.op_costs:
        return op_report(args, op_results, nginx_version, has_debug, load_start, t_start)

    # ---- report
    out = ["# n502trace benchmark", ""]
    if not args.soak_only:
        out.append("Nginx (one worker, CPU 0) proxies to a second server block of the same Nginx "
                   "(`return 200`); wrk (`-t1 -c%d`, CPU 1) on loopback. Modes interleaved in one run "
                   "(%s, %s), %d rounds x %d s; medians over the rounds. "
                   "`debug` = `error_log FILE debug;` (%s)." % (
                       CONNECTIONS, ", ".join(modes),
                       "each round starting one mode later" if args.order == "rotate" else "same order every round",
                       args.rounds, args.duration,
                       "nginx built --with-debug" if has_debug else "not available: nginx lacks --with-debug"))
        out.append("CPU columns are shares of one CPU over the run: the worker's CPU time, the time it was "
                   "runnable but CPU 0 ran something else (the tracer, other load), and wrk's CPU time "
                   "(wrk would be the bottleneck only near 100%).")
    if args.quick:
        out.append("")
        out.append("**--quick: smoke numbers (2 s runs), not a measurement.**")
    checks = []
    for v in variants if not args.soak_only else []:
        out.append("")
        title = {"new_conn": "new upstream connection per request (worst case)",
                 "keepalive": "upstream keep-alive (`keepalive %d`)" % CONNECTIONS}[v]
        out.append("## %s: %s" % (v, title))
        out.append("")
        lines, ratios = variant_table(v, all_results[v], modes,
                                      "full" if "full" in args.baseline_args.split() else "n502trace")
        out += lines
        if v == "new_conn" and "n502trace" in modes and args.bpf_stats:
            out.append("")
            out.append("(--bpf-stats: the kernel timed every BPF program run, which costs time of its own: "
                       "the throughput target is not checked on this run.)")
        elif v == "new_conn" and "n502trace" in modes:
            rr = ratios.get("n502trace")
            base = all_results[v].get("none")
            spread = fmt_interval(paired_ratios(base, all_results[v]["n502trace"])) if base else ""
            checks.append(("n502trace keeps >= %d%% of the untraced throughput (new_conn, median of per-round ratios): %s (%s)" % (
                THROUGHPUT_TARGET * 100, fmt(rr, ".3f"), spread), rr is not None and rr >= THROUGHPUT_TARGET))
    tool_runs = [r for v in all_results for r in all_results[v].get("n502trace", [])]
    if tool_runs:
        nc = all_results.get("new_conn", {}).get("n502trace", [])
        if nc:
            lost = sum(r["events_lost"] or 0 for r in nc)
            checks.append(("zero events lost at that rate (new_conn, %d runs, %s events/run): %d lost" % (
                len(nc), fmt(med([r["events"] for r in nc]), ",.0f"), lost),
                lost == 0 and all(r["events_lost"] is not None for r in nc)))
        am = max(r["attach_ms"] or 0 for r in tool_runs)
        wm = max(r["ready_wall_ms"] for r in tool_runs)
        checks.append(("attached and ready in < 1 s (%d starts): attach_ms max %s, exec to ready max %.0f ms" % (
            len(tool_runs), am, wm), am < ATTACH_LIMIT_MS and wm < ATTACH_LIMIT_MS))
    if soak is not None:
        if out[-1] != "":
            out.append("")
        out.append("## soak: n502trace under new_conn load for %g min" % soak["minutes"])
        out.append("")
        out.append("The new_conn Nginx as above, loaded by wrk (`-t1 -c%d`) for the whole time, "
                   "n502trace attached; its VmRSS every %d s." % (CONNECTIONS, SOAK_SAMPLE_S))
        out.append("")
        out.append("%s req/s, p99 %.3f ms; %s events, %s lost; attach_ms %s, exec to ready %.0f ms%s." % (
            fmt(soak["rps"], ",.0f"), soak["p99_ms"], fmt(soak["events"], ",d"), soak["events_lost"],
            soak["attach_ms"], soak["ready_wall_ms"],
            "; **non-2xx %d, socket errors %d**" % (soak["non2xx"], soak["socket_errors"])
            if soak["non2xx"] or soak["socket_errors"] else ""))
        out.append("")
        out.append("| t (s) | VmRSS (MiB) |")
        out.append("|---:|---:|")
        for t, kib in soak["samples"]:
            out.append("| %.0f | %s |" % (t, fmt(kib and kib / 1024.0, ".1f")))
        mx = max((k or 0) for _, k in soak["samples"]) / 1024.0
        short = "" if soak["minutes"] >= SOAK_TARGET_MIN else " (only %g min; the target is after %d min)" % (
            soak["minutes"], SOAK_TARGET_MIN)
        checks.append(("resident memory < %d MiB under load for %g min: max %.1f MiB%s" % (
            RSS_LIMIT_MIB, soak["minutes"], mx, short), mx < RSS_LIMIT_MIB))
        checks.append(("zero events lost during the soak: %s lost" % soak["events_lost"], soak["events_lost"] == 0))
    else:
        out.append("")
        out.append("(Resident memory after 10 minutes: not measured in this run; `--soak-minutes 10`.)")
    out.append("")
    out.append("## machine")
    out.append("")
    out += machine_lines(nginx_version, has_debug, load_start)
    out.append("- benchmark wall time %.0f s" % (time.monotonic() - t_start))
    out.append("")
    out.append("## targets")
    out.append("")
    for text, ok in checks:
        out.append("- %s: %s" % ("PASS" if ok else "FAIL", text))
    write_report(args.out, out)
    return 0 if all(ok for _, ok in checks) else 3


def write_report(path, lines):
    """Print the report and write it to path."""
    report = "\n".join(lines) + "\n"
    sys.stdout.write(report)
    sys.stdout.flush()
    with open(path, "w") as f:
        f.write(report)
    log("written to %s" % path)


def op_report(args, results, nginx_version, has_debug, load_start, t_start):
    out = ["# n502trace benchmark: what BPF work costs on this machine", ""]
    out.append("Each operation runs once per call of a BPF program on `inet_sock_set_state` and on "
               "`tcp_rcv_space_adjust` (tests/bench/ops.bpf.c, `bench_hooks --op NAME`), the two tracepoints "
               "n502trace's TCP programs run on most, while the new_conn load runs (Nginx, one worker on CPU 0, "
               "a new upstream connection per request; wrk on CPU 1). The kernel times every run "
               "(kernel.bpf_stats_enabled); an operation's cost is its ns per run less the `empty` program's "
               "in the same round, median over %d rounds of %d s. The timing itself reads the clock twice per "
               "run, which the `empty` row includes." % (args.rounds, args.duration))
    out.append("")
    head = "| operation |"
    rule = "|---|"
    for _, tp in OP_PROGRAMS:
        head += " `%s` ns per run | cost |" % tp
        rule += "---:|---:|"
    out += [head, rule]
    for op in args.ops:
        row = "| %s: %s |" % (op, OP_TEXT[op])
        for prog, _ in OP_PROGRAMS:
            per_run = [r.get(prog) for r in results[op]]
            row += " %s |" % fmt(med([v for v in per_run if v is not None]), ".0f")
            if op == "empty":
                row += " - |"
                continue
            diffs = [a.get(prog) - e.get(prog) for a, e in zip(results[op], results["empty"])
                     if a.get(prog) is not None and e.get(prog) is not None]
            row += " %s |" % fmt(med(diffs), "+.0f")
        out.append(row)
    out.append("")
    out.append("## machine")
    out.append("")
    out += machine_lines(nginx_version, has_debug, load_start)
    out.append("- benchmark wall time %.0f s" % (time.monotonic() - t_start))
    write_report(args.out, out)
    return 0


def cleanup(bench, workdir):
    # Stop what runs, newest first (wrk, tcpdump, n502trace), then Nginx.
    for p in list(reversed(LIVE)):
        if bench.nginx is not None and bench.nginx.proc is p:
            continue
        try:
            stop_proc(p, signal.SIGINT, timeout=10)
        except Exception as e:  # keep cleaning
            log("cleanup: %s" % e)
    if bench.nginx is not None:
        try:
            bench.nginx.stop()
        except Exception as e:
            log("cleanup: nginx: %s" % e)
    for p in list(LIVE):
        try:
            stop_proc(p, signal.SIGKILL, timeout=5)
        except Exception:
            pass
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
