#!/usr/bin/python3
"""Helpers for n502trace's end-to-end tests: a real Nginx, real upstreams,
the tool under test, memory cgroups, and clean teardown.

Synchronisation rule: no sleeps as synchronisation. Everything waits for an
observable fact (a line printed, a record emitted, a pid file, a port that
accepts or refuses, a process gone) by polling with a short interval and a
bounded deadline.
"""
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = "/usr/bin/python3"
NGINX = "/usr/sbin/nginx"
KILL = "/bin/kill"
UPSTREAM_PY = os.path.join(HERE, "upstream.py")
IP = "/usr/sbin/ip"
NFT = "/usr/sbin/nft"
SS = "/usr/bin/ss"
PHP_FPM = "/usr/sbin/php-fpm8.2"
GUNICORN = "/usr/bin/gunicorn"
CGROUP_MEMORY_ROOT = "/sys/fs/cgroup/memory"
POLL = 0.02  # polling interval, seconds


class Failure(Exception):
    """A test assertion failed."""


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def wait_until(pred, timeout, what):
    """Poll pred() until it returns a truthy value; Failure after timeout s."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise Failure("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(POLL)


# ---------------------------------------------------------------- processes


def proc_state(pid):
    """The /proc state letter of pid, or None if it does not exist."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rindex(")") + 2:].split()[0]


def proc_comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return ""


def pid_alive(pid):
    st = proc_state(pid)
    return st is not None and st not in ("Z", "X")


def children_of(ppid):
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2:].split()
        if int(fields[1]) == ppid and fields[0] not in ("Z", "X"):
            kids.append(int(name))
    return sorted(kids)


def read_text(path):
    """The file's text, or "" when it does not exist (yet)."""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def describe_status(rc):
    if rc is None:
        return "still running"
    if rc < 0:
        return "killed by signal %d (%s)" % (-rc, signal.Signals(-rc).name)
    return "exited with code %d" % rc


def spawn_kill(sig, pid):
    """Send sig to pid from a SEPARATE process (/bin/kill). Returns its pid."""
    k = subprocess.Popen([KILL, "-%d" % sig, str(pid)])
    rc = k.wait(timeout=10)
    check(rc == 0, "%s -%d %d failed with %d" % (KILL, sig, pid, rc))
    return k.pid


# ---------------------------------------------------------------- network


def free_port(host="127.0.0.1"):
    """A loopback TCP port that nothing listens on right now."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def local_port_range():
    """The local port range (net.ipv4.ip_local_port_range) of this network namespace."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = (int(x) for x in f.read().split())
    return lo, hi


def free_port_outside_range(host="127.0.0.1"):
    """A free loopback port outside the local port range, for an upstream that
    stays down under many connects: a port inside it can be given to one of
    them as its source, and that connect meets itself (run.py self_connect)."""
    lo, hi = local_port_range()
    candidates = list(range(max(1024, lo - 8192), lo)) + list(range(hi + 1, min(65536, hi + 1 + 4096)))
    if not candidates:
        log("the local port range %d-%d leaves no port outside it: a port inside it (a connect may meet "
            "itself)" % (lo, hi))
        return free_port(host)
    random.shuffle(candidates)
    for port in candidates[:512]:
        s = socket.socket()
        try:
            s.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise Failure("no free port outside the local port range %d-%d" % (lo, hi))


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(netns):
    """Move the CALLING THREAD into network namespace /run/netns/<netns>.
    Sockets it creates afterwards live there. Use it in a thread of its own."""
    fd = os.open("/run/netns/%s" % netns, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, "setns(%s): %s" % (netns, os.strerror(e)))
    finally:
        os.close(fd)


def in_netns(netns, fn, *args, **kw):
    """fn(*args, **kw) in a thread inside netns (or here if netns is None)."""
    if netns is None:
        return fn(*args, **kw)
    box = {}

    def body():
        try:
            enter_netns(netns)
            box["v"] = fn(*args, **kw)
        except BaseException as e:
            box["e"] = e
    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]


def port_accepts(port, host="127.0.0.1", netns=None):
    def probe():
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False
    return in_netns(netns, probe)


def wait_port_accepting(port, timeout=10, host="127.0.0.1", netns=None):
    wait_until(lambda: port_accepts(port, host, netns), timeout, "port %d to accept" % port)


def wait_port_refusing(port, timeout=10):
    wait_until(lambda: not port_accepts(port), timeout, "port %d to stop accepting" % port)


class Response:
    def __init__(self, status, raw, t_done):
        self.status = status
        self.raw = raw
        self.t_done = t_done  # time.monotonic() when the response had arrived

    def __repr__(self):
        return "Response(status=%r, %d bytes)" % (self.status, len(self.raw))


def http_get(port, path="/", timeout=25, host="127.0.0.1", netns=None, source_port=None):
    """One HTTP/1.1 GET with Connection: close; returns a Response.
    netns: make it from inside that network namespace; source_port: bind the
    client socket to it (for namespaces whose ephemeral port range is tiny)."""
    if netns is not None:
        return in_netns(netns, http_get, port, path, timeout, host, None, source_port)
    src = (host, source_port) if source_port else None
    with socket.create_connection((host, port), timeout=timeout, source_address=src) as s:
        target = path if isinstance(path, bytes) else path.encode()  # bytes: sent as they are
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nUser-Agent: n502-e2e\r\n"
                  b"Connection: close\r\n\r\n")
        raw = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    t_done = time.monotonic()
    status = None
    first = raw.split(b"\r\n", 1)[0].split()
    if len(first) >= 2 and first[1].isdigit():
        status = int(first[1])
    return Response(status, raw, t_done)


class BackgroundRequest(threading.Thread):
    """http_get in a thread, for requests that only end once a fault happens."""

    def __init__(self, port, path="/", timeout=25, netns=None, source_port=None):
        super().__init__(daemon=True)
        self.args = (port, path, timeout, "127.0.0.1", None, source_port)
        self.netns = netns
        self.response = None
        self.error = None

    def run(self):
        try:
            if self.netns is not None:
                enter_netns(self.netns)  # this thread only
            self.response = http_get(*self.args)
        except Exception as e:  # reported by result()
            self.error = e

    def result(self, timeout=25):
        self.join(timeout)
        check(not self.is_alive(), "HTTP request still running after %ds" % timeout)
        if self.error:
            raise Failure("HTTP request failed: %r" % (self.error,))
        return self.response


def _ss(args, netns=None):
    argv = [SS] + args
    if netns is not None:
        argv = [IP, "netns", "exec", netns] + argv
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    if r.returncode != 0:
        raise Failure("%s failed: %s" % (" ".join(argv), r.stderr.decode(errors="replace")))
    return r.stdout.decode(errors="replace").splitlines()


def unix_listen_queue(path, netns=None):
    """(Recv-Q, Send-Q) of the listening unix socket at path: for a listener,
    connections queued and not yet accepted, and the backlog. None if none."""
    for line in _ss(["-xlnH"], netns):
        f = line.split()
        # u_str LISTEN RECVQ SENDQ PATH INODE * 0
        if len(f) >= 5 and f[1] == "LISTEN" and f[4] == path:
            return int(f[2]), int(f[3])
    return None


def tcp_listen_queue(port, netns=None):
    """(Recv-Q, Send-Q) of the TCP listener on port: the accept queue's length
    and the backlog. None if nothing listens."""
    for line in _ss(["-ltnH", "sport = :%d" % port], netns):
        f = line.split()
        # LISTEN RECVQ SENDQ LOCAL PEER
        if len(f) >= 4 and f[0] == "LISTEN" and f[3].rsplit(":", 1)[-1] == str(port):
            return int(f[1]), int(f[2])
    return None


# ---------------------------------------------------------------- line readers


class LineCollector:
    """Collects lines from a pipe in a thread; lets callers wait for them."""

    def __init__(self, pipe, name, parse_json=False, echo=None):
        self.name = name
        self.lines = []  # (monotonic time, text)
        self.records = []  # (monotonic time, dict) when parse_json
        self.bad = []  # non-JSON lines when parse_json
        self.eof = False
        self.cond = threading.Condition()
        self.parse_json = parse_json
        self.echo = echo
        self.thread = threading.Thread(target=self._run, args=(pipe,), daemon=True)
        self.thread.start()

    def _run(self, pipe):
        for raw in iter(pipe.readline, b""):
            now = time.monotonic()
            text = raw.decode("utf-8", "replace").rstrip("\n")
            if self.echo:
                self.echo.write(text + "\n")
                self.echo.flush()
            with self.cond:
                self.lines.append((now, text))
                if self.parse_json and text.strip():
                    try:
                        rec = json.loads(text)
                        if not isinstance(rec, dict):
                            raise ValueError("not an object")
                        self.records.append((now, rec))
                    except ValueError:
                        self.bad.append(text)
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_for(self, find, timeout, what, alive=None):
        """Wait until find() (called under the lock) returns non-None."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                v = find()
                if v is not None:
                    return v
                if self.eof:
                    raise Failure("%s: output ended while waiting for %s" % (self.name, what))
                if alive is not None and not alive():
                    # It has exited: what it wrote is read once the pipe is
                    # at its end (EOF), bounded in case a child holds it.
                    drain_until = time.monotonic() + 5
                    while not self.eof and time.monotonic() < drain_until:
                        self.cond.wait(max(0.01, drain_until - time.monotonic()))
                        v = find()
                        if v is not None:
                            return v
                    v = find()
                    if v is not None:
                        return v
                    raise Failure("%s exited while waiting for %s" % (self.name, what))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Failure("%s: timed out after %.1fs waiting for %s" % (self.name, timeout, what))
                self.cond.wait(min(left, 0.1))

    def count_lines(self, word):
        with self.cond:
            return sum(1 for _, t in self.lines if t.split()[:1] == [word])

    def wait_word(self, word, timeout, nth=1):
        """Wait for the nth line whose first word is word; returns that line."""
        def find():
            hits = [t for _, t in self.lines if t.split()[:1] == [word]]
            return hits[nth - 1] if len(hits) >= nth else None
        return self.wait_for(find, timeout, "%r line #%d" % (word, nth))


# ---------------------------------------------------------------- the test context


def run_single(name, body):
    """A script of one test: body(h) in a Harness of that name (kept with
    N502_KEEP=1); prints PASS or FAIL, the tool's stderr tail on a failure,
    and the count line; returns the exit code."""
    h = Harness(name, keep=bool(os.environ.get("N502_KEEP")))
    ok = False
    try:
        body(h)
        ok = True
    except Failure as e:
        print("FAIL %s: %s" % (name, e))
        if h.tool:
            print(h.tool.stderr_text()[-2000:])
    finally:
        h.close()
    print("%s %s" % ("PASS" if ok else "FAIL", name))
    print("%d passed, %d failed" % (1 if ok else 0, 0 if ok else 1))
    return 0 if ok else 1


class Harness:
    """One test's world. close() tears everything down, whatever happened."""

    def __init__(self, name="e2e", keep=False):
        self.dir = tempfile.mkdtemp(prefix="n502-%s-" % name)
        os.chmod(self.dir, 0o755)  # Nginx workers (www-data) may need to traverse it
        self.keep = keep
        self.nginx = None
        self.tool = None
        self.upstreams = []
        self.cgroups = []
        self.others = []  # other things with a stop(): PhpFpm, ...
        self.finalizers = []  # (what, fn): run right after the tool is stopped
        self.nft_tables = []
        self.netnses = []
        self.close_errors = []

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    # -- pieces
    def start_nginx(self, locations, **kw):
        self.nginx = Nginx(self.dir, locations, **kw)
        self.nginx.start()
        return self.nginx

    def start_upstream(self, mode, port=None, unix=None, cgroup=None, host="127.0.0.1",
                       netns=None, args=()):
        u = Upstream(self, mode, port=port, unix=unix, host=host, netns=netns, args=args)
        self.upstreams.append(u)
        u.start()
        if cgroup is not None:
            cgroup.add(u.pid)
        return u

    def start_tool(self, binary, json_mode=True, ready_timeout=20, args=(), nginx_pid=True):
        """nginx_pid=False: select Nginx with args only (--container, --cgroup)."""
        self.tool = Tool(self, binary, self.nginx.master_pid if nginx_pid else None, json_mode=json_mode, args=args)
        self.tool.start(ready_timeout=ready_timeout)
        return self.tool

    def memory_cgroup(self, limit="64M"):
        cg = MemoryCgroup(limit)
        self.cgroups.append(cg)
        return cg

    def on_close(self, what, fn):
        """Run fn() at close(), after the tool stops and before Nginx does."""
        self.finalizers.append((what, fn))

    def nft_table(self, rules, hook="output"):
        """An nftables table of our own with a chain on `hook` (output or
        input) holding rules (a list of rule strings); deleted by close()."""
        t = NftTable(rules, hook)
        self.nft_tables.append(t)
        t.create()
        return t

    def netns(self):
        """A network namespace of our own, loopback up; deleted by close()."""
        ns = Netns()
        self.netnses.append(ns)
        ns.create()
        return ns

    def start_php_fpm(self, **kw):
        f = PhpFpm(self, **kw)
        self.others.append(f)
        f.start()
        return f

    def start_gunicorn(self, port, **kw):
        g = Gunicorn(self, port, **kw)
        self.others.append(g)
        g.start()
        return g

    # -- teardown
    def close(self, remove_dir=True):
        """Stop the tool, Nginx, upstreams; remove cgroups and (unless keep or
        remove_dir=False) the temp dir; see remove_dir().

        Errors from stopping the tool (no summary, bad exit code) are kept in
        self.close_errors for the caller to report as a failure."""
        steps = []
        if self.tool is not None:
            steps.append(("stop n502trace", self.tool.stop))
        steps += list(self.finalizers)
        if self.nginx is not None:
            steps.append(("stop nginx", self.nginx.stop))
        for u in self.upstreams:
            steps.append(("stop upstream %s" % u.mode, u.stop))
        for o in self.others:
            steps.append(("stop %s" % o.name, o.stop))
        for cg in self.cgroups:
            steps.append(("remove cgroup %s" % cg.path, cg.remove))
        for t in self.nft_tables:
            steps.append(("delete nft table %s" % t.name, t.delete))
        for ns in self.netnses:
            steps.append(("delete netns %s" % ns.name, ns.delete))
        for what, fn in steps:
            try:
                fn()
            except Exception as e:
                self.close_errors.append("%s: %s" % (what, e))
        if remove_dir:
            self.remove_dir()

    def remove_dir(self):
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- Nginx


NGINX_CONF = """\
# generated by tests/e2e/harness.py
user www-data;
worker_processes {workers};
worker_rlimit_nofile {nofile};
daemon on;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;

events {{
    worker_connections {worker_connections};
}}

http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;

    # Generous, so a "hang" upstream is still waiting when the fault happens.
    proxy_connect_timeout 60s;
    proxy_read_timeout 120s;
    proxy_send_timeout 120s;
{http_extra}
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
{locations}
    }}
}}
"""


class Nginx:
    """The real Debian Nginx, daemonised, in a temp prefix.

    locations: list of (location, proxy_pass target) e.g. ("/", "http://127.0.0.1:8080"),
    or (location, target or None, [more directive lines]) (no proxy_pass if None).
    http_extra: text put in the http block (e.g. upstream blocks).
    netns: run it inside that network namespace (ip netns exec).
    """

    def __init__(self, prefix, locations, port=None, workers=2, http_extra="", netns=None, worker_connections=256):
        self.prefix = prefix
        self.worker_connections = worker_connections
        self.locations = locations
        self.port = port or free_port()
        self.nworkers = workers
        self.http_extra = http_extra
        self.netns = netns
        self.stop_signal = signal.SIGQUIT  # SIGTERM (fast) when requests are left hanging
        self.conf = os.path.join(prefix, "nginx.conf")
        self.pidfile = os.path.join(prefix, "nginx.pid")
        self.error_log = os.path.join(prefix, "error.log")
        self.master_pid = None
        self.workers = []

    def start(self, timeout=10, cgroup=None):
        """cgroup: a cgroup (v2) directory to start Nginx in."""
        os.makedirs(os.path.join(self.prefix, "tmp"), exist_ok=True)
        os.chmod(os.path.join(self.prefix, "tmp"), 0o755)
        locs = ""
        for entry in self.locations:
            loc, target = entry[0], entry[1]
            lines = (["proxy_pass %s;" % target] if target else []) + list(entry[2] if len(entry) > 2 else [])
            locs += "        location %s {\n%s        }\n" % (
                loc, "".join("            %s\n" % l for l in lines))
        with open(self.conf, "w") as f:
            f.write(NGINX_CONF.format(dir=self.prefix, port=self.port, locations=locs,
                                      workers=self.nworkers, http_extra=self.http_extra,
                                      worker_connections=self.worker_connections,
                                      nofile=max(1024, 2 * self.worker_connections + 64)))
        # -e: the log used before the config is read (Debian's default is stderr)
        argv = [NGINX, "-p", self.prefix, "-c", self.conf, "-e", self.error_log]
        if self.netns:
            argv = [IP, "netns", "exec", self.netns] + argv
        def enter_cgroup():
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        r = subprocess.run(argv, preexec_fn=enter_cgroup if cgroup else None,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        if r.returncode != 0:
            raise Failure("nginx failed to start (%d): %s\n%s" % (
                r.returncode, r.stdout.decode(errors="replace"), self.tail()))

        def read_pid():
            try:
                with open(self.pidfile) as f:
                    s = f.read().strip()
                return int(s) if s else None
            except (FileNotFoundError, ValueError):
                return None
        self.master_pid = wait_until(read_pid, timeout, "nginx pid file")
        self.workers = wait_until(
            lambda: (lambda k: k if len(k) >= self.nworkers else None)(children_of(self.master_pid)),
            timeout, "%d nginx workers" % self.nworkers)
        wait_port_accepting(self.port, timeout, netns=self.netns)

    def worker_pids(self):
        return children_of(self.master_pid) if self.master_pid else []

    def read_error_log(self):
        return read_text(self.error_log)

    def read_access_log(self):
        return read_text(os.path.join(self.prefix, "access.log"))

    def tail(self, n=40):
        lines = self.read_error_log().splitlines()
        return "\n".join(lines[-n:])

    def wait_error(self, substring, timeout=5, nth=1):
        """Wait for the nth line containing substring; returns it."""
        def find():
            hits = [l for l in self.read_error_log().splitlines() if substring in l]
            return hits[nth - 1] if len(hits) >= nth else None
        return wait_until(find, timeout, "nginx error.log line #%d containing %r" % (nth, substring))

    def error_lines(self, levels=("error", "crit", "alert", "emerg")):
        """The error.log lines at these levels."""
        return [l for l in self.read_error_log().splitlines()
                if any("[%s]" % lv in l for lv in levels)]

    def stop(self, timeout=5):
        if not self.master_pid:
            return
        pids = [self.master_pid] + self.worker_pids()
        try:
            os.kill(self.master_pid, self.stop_signal)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(POLL)
        for p in pids:
            if pid_alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        wait_until(lambda: not any(pid_alive(p) for p in pids), timeout, "nginx processes to exit")
        self.master_pid = None


# ---------------------------------------------------------------- upstream.py


class Upstream:
    """tests/e2e/upstream.py as a direct child: Popen.pid is the python process."""

    def __init__(self, h, mode, port=None, unix=None, host="127.0.0.1", netns=None, args=()):
        self.h = h
        self.mode = mode
        self.unix = unix
        self.host = host
        self.netns = netns
        self.args = list(args)
        self.port = None if unix else (port or free_port(host))
        self.proc = None
        self.out = None
        self.errpath = h.path("upstream-%s-%d.err" % (mode, random.randrange(1 << 30)))

    @property
    def pid(self):
        return self.proc.pid

    @property
    def hostport(self):
        return ("[%s]:%d" if ":" in self.host else "%s:%d") % (self.host, self.port)

    @property
    def address(self):
        """As n502trace names it: "unix:/path" for unix sockets (the existing
        scenarios' verdicts never named a unix upstream), else HOST:PORT."""
        return ("unix:%s" % self.unix) if self.unix else self.hostport

    @property
    def proxy_target(self):
        return ("http://unix:%s:" % self.unix) if self.unix else "http://%s" % self.hostport

    def start(self, timeout=10):
        where = ["--unix", self.unix] if self.unix else ["--listen", self.hostport]
        self.err = open(self.errpath, "wb")
        argv = [PYTHON, UPSTREAM_PY] + where + ["--mode", self.mode] + self.args
        if self.netns:
            # ip netns exec execs the command: the pid stays the python's
            argv = [IP, "netns", "exec", self.netns] + argv
        self.proc = subprocess.Popen(argv,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.err)
        self.out = LineCollector(self.proc.stdout, "upstream.py(%s)" % self.mode)
        line = self.out.wait_for(
            lambda: next((t for _, t in self.out.lines if t.startswith("LISTENING")), None),
            timeout, "LISTENING", alive=lambda: self.proc.poll() is None)
        check(line == "LISTENING %d" % self.pid, "unexpected upstream line %r (pid %d)" % (line, self.pid))

    def wait_request(self, nth=1, timeout=10):
        return self.out.wait_word("REQUEST", timeout, nth)

    def wait_exit(self, timeout=10):
        """waitpid; returns Popen.returncode (-SIG if killed by a signal)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failure("upstream.py (%s, pid %d) still running after %ds" % (self.mode, self.pid, timeout))

    def count_when_stopped(self, word):
        """Stops it, then counts its lines whose first word is word: all of
        them, its stdout read to its end (a count taken while it runs may
        miss a line still in the pipe)."""
        self.stop()
        self.out.thread.join(5)
        check(not self.out.thread.is_alive(), "upstream.py (%s, pid %d): its stdout did not end" % (
            self.mode, self.pid))
        return self.out.count_lines(word)

    def stderr_text(self):
        try:
            with open(self.errpath, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.err.close()


# ---------------------------------------------------------------- the tool


class Tool:
    """n502trace --nginx-pid MASTER [--json], stdout collected line by line."""

    def __init__(self, h, binary, master_pid=None, json_mode=True, args=()):
        """master_pid: passed as --nginx-pid (None: select with args only,
        e.g. ["--container", "web"] or ["--cgroup", PATH])."""
        self.h = h
        self.binary = binary
        self.master_pid = master_pid
        self.json_mode = json_mode
        self.args = list(args)
        self.proc = None
        self.out = None
        self.errpath = h.path("n502trace.stderr")
        self.stopped = False
        self.returncode = None
        # Every run is recorded; stop() replays the recording and checks that
        # the replay gives the live verdicts (n502trace replay FILE --json).
        Tool.runs += 1
        self.record_path = h.path("n502trace-%d.rec" % Tool.runs)
        self.replayed = None

    runs = 0

    def start(self, ready_timeout=20):
        argv = [self.binary]
        if self.master_pid is not None:
            argv += ["--nginx-pid", str(self.master_pid)]
        argv += self.args
        if "--record" in self.args:
            self.record_path = None  # the caller's recording: the caller checks it
        else:
            argv += ["--record", self.record_path]
        if self.json_mode:
            argv.append("--json")
        # Debugging aid: N502_EXTRA_ARGS="--dump-events" puts every kernel event in the stderr file.
        argv += os.environ.get("N502_EXTRA_ARGS", "").split()
        self.err = open(self.errpath, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.err)
        self.out = LineCollector(self.proc.stdout, "n502trace", parse_json=self.json_mode)
        if self.json_mode:
            self.ready = self.wait_record("ready", timeout=ready_timeout)
        return self

    def alive(self):
        return self.proc.poll() is None

    def records(self, rtype=None):
        with self.out.cond:
            return [r for _, r in self.out.records if rtype is None or r.get("type") == rtype]

    def wait_record(self, rtype, pred=None, timeout=10):
        """Wait for a record of type rtype matching pred; returns (recv_time, record)
        for rtype != "ready", the record for "ready"."""
        def find():
            for t, r in self.out.records:
                if r.get("type") == rtype and (pred is None or pred(r)):
                    return (t, r)
            return None
        what = "a %r record" % rtype
        try:
            t, r = self.out.wait_for(find, timeout, what, alive=self.alive)
        except Failure as e:
            rc = self.proc.poll()
            if rc is None:
                try:  # EOF on stdout usually means it is exiting: say how
                    rc = self.proc.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass
            raise Failure("%s [n502trace %s]" % (e, describe_status(rc)))
        return r if rtype == "ready" else (t, r)

    def stderr_text(self):
        try:
            with open(self.errpath, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self, timeout=10):
        """SIGINT; expect a summary record (JSON mode) and exit code 0."""
        if self.proc is None or self.stopped:
            return
        self.stopped = True
        was_running = self.proc.poll() is None
        if was_running:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.err.close()
            raise Failure("n502trace did not exit within %ds of SIGINT" % timeout)
        self.out.thread.join(5)
        self.err.close()
        problems = []
        if self.out.thread.is_alive():
            # Checks made after stop() take every record as read: they are not.
            problems.append("n502trace's stdout was not at its end 5 s after it exited (records may be unread)")
        if not was_running:
            problems.append("n502trace had already %s before SIGINT" % describe_status(self.returncode))
        elif self.returncode != 0:
            problems.append("n502trace %s after SIGINT (want exit code 0)" % describe_status(self.returncode))
        if self.json_mode and not self.records("summary"):
            problems.append("n502trace printed no {\"type\":\"summary\"} record")
        if self.json_mode and self.out.bad:
            problems.append("n502trace printed non-JSON lines on stdout: %r" % self.out.bad[:5])
        if problems:
            raise Failure("; ".join(problems))
        if self.record_path:
            self.check_replay()

    # Fields of a summary that describe the run itself, not what it concluded:
    # when it was printed, how long the live run lasted and how much memory it
    # used. A replay reports the recorded duration and RSS, but its record's
    # own "ts" is the time of the replay.
    SUMMARY_RUN_FIELDS = ("ts",)

    def check_replay(self):
        """Replay the recording offline and compare: every verdict record
        whole (the replay serves the recorded clock, so even "ts" is equal),
        and the summary's counts."""
        t0 = time.monotonic()
        p = subprocess.run([self.binary, "replay", self.record_path] + (["--json"] if self.json_mode else []),
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        took = time.monotonic() - t0
        if p.returncode != 0:
            raise Failure("n502trace replay %s exited with %d: %s" % (self.record_path, p.returncode,
                                                                       p.stderr.decode(errors="replace")[-2000:]))
        if not self.json_mode:
            return
        replayed = [json.loads(l) for l in p.stdout.decode().splitlines() if l.strip()]
        self.replayed = replayed
        live_v = self.records("verdict")
        rep_v = [r for r in replayed if r.get("type") == "verdict"]
        if live_v != rep_v:
            diff = ""
            for i, (a, b) in enumerate(zip(live_v, rep_v)):
                if a != b:
                    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                    diff = "first difference in verdict %d, fields %s: live %r, replayed %r" % (
                        i, keys, {k: a.get(k) for k in keys}, {k: b.get(k) for k in keys})
                    break
            raise Failure("the replay of %s gave %d verdicts, the live run %d; %s" % (
                self.record_path, len(rep_v), len(live_v), diff or "one list is a prefix of the other"))
        live_s = [{k: v for k, v in r.items() if k not in self.SUMMARY_RUN_FIELDS} for r in self.records("summary")]
        rep_s = [{k: v for k, v in r.items() if k not in self.SUMMARY_RUN_FIELDS}
                 for r in replayed if r.get("type") == "summary"]
        if live_s != rep_s:
            raise Failure("the replay's summary differs from the live one: live %r, replayed %r" % (live_s, rep_s))
        if took > 5:
            raise Failure("replaying %s took %.1f s" % (self.record_path, took))


# ---------------------------------------------------------------- memory cgroup (v1)


def _cgroup2_with_memory():
    """The cgroup v2 root whose subtree can use the memory controller (kernels
    built without the v1 memory controller, e.g. Debian's 6.12), or None."""
    for root in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        try:
            with open(os.path.join(root, "cgroup.controllers")) as f:
                if "memory" not in f.read().split():
                    continue
            with open(os.path.join(root, "cgroup.subtree_control"), "w") as f:
                f.write("+memory")
            return root
        except OSError:
            continue
    return None


class MemoryCgroup:
    """A memory cgroup n502-e2e-<random>: cgroup v1 under /sys/fs/cgroup/memory,
    or cgroup v2 (memory.max) where the kernel has no v1 memory controller."""

    def __init__(self, limit="64M"):
        self.v2 = False
        if os.path.isdir(CGROUP_MEMORY_ROOT):
            root = CGROUP_MEMORY_ROOT
        else:
            root = _cgroup2_with_memory()
            if root is None:
                raise Failure("no memory cgroup: neither v1 at %s nor a cgroup v2 hierarchy with the memory "
                              "controller" % CGROUP_MEMORY_ROOT)
            self.v2 = True
        self.path = os.path.join(root, "n502-e2e-%08x" % random.randrange(1 << 32))
        os.mkdir(self.path)
        if self.v2:
            self._write("memory.max", limit)
            if os.path.exists(self._p("memory.swap.max")):
                self._write("memory.swap.max", "0")  # no swapping out of trouble
            return
        self._write("memory.limit_in_bytes", limit)
        if os.path.exists(self._p("memory.memsw.limit_in_bytes")):
            self._write("memory.memsw.limit_in_bytes", limit)  # no swapping out of trouble
        if os.path.exists(self._p("memory.swappiness")):
            self._write("memory.swappiness", "0")

    def _p(self, name):
        return os.path.join(self.path, name)

    def _write(self, name, value):
        with open(self._p(name), "w") as f:
            f.write(str(value))

    def add(self, pid):
        self._write("cgroup.procs", pid)
        check(self.pids().count(pid) == 1, "pid %d not in %s after moving it" % (pid, self.path))

    def pids(self):
        with open(self._p("cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]

    def oom_control(self):
        """OOM counters: v1 memory.oom_control, or v2 memory.events (oom_kill)."""
        out = {}
        with open(self._p("memory.events" if self.v2 else "memory.oom_control")) as f:
            for line in f:
                k, _, v = line.partition(" ")
                out[k] = int(v)
        return out

    def remove(self, timeout=10):
        if not os.path.isdir(self.path):
            return
        for pid in self.pids():  # should be none: our upstream died
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        def try_rmdir():
            try:
                os.rmdir(self.path)
                return True
            except FileNotFoundError:
                return True
            except OSError:  # EBUSY while the last task is still exiting
                return False
        wait_until(try_rmdir, timeout, "rmdir %s" % self.path)


# ---------------------------------------------------------------- nftables, netns


def _run(argv, what, timeout=10, input=None):
    r = subprocess.run(argv, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    if r.returncode != 0:
        raise Failure("%s failed (%d): %s" % (what, r.returncode, r.stderr.decode(errors="replace").strip()))
    return r.stdout.decode(errors="replace")


class NftTable:
    """table inet n502e2e_<random> with one chain on the output (or input)
    hook. Rules must confine themselves to loopback (oifname/iifname "lo")
    and the test's ports."""

    def __init__(self, rules, hook="output"):
        self.name = "n502e2e_%08x" % random.randrange(1 << 32)
        self.rules = list(rules)
        self.hook = hook
        self.created = False

    def ruleset(self):
        return ("table inet %s {\n  chain c {\n    type filter hook %s priority 0; policy accept;\n%s  }\n}\n"
                % (self.name, self.hook, "".join("    %s\n" % r for r in self.rules)))

    def create(self):
        _run([NFT, "-f", "-"], "nft -f (table %s)" % self.name, input=self.ruleset().encode())
        self.created = True

    def listing(self):
        return _run([NFT, "list", "table", "inet", self.name], "nft list table")

    def delete(self):
        if not self.created:
            return
        # Only our own table, by name; gone already is fine.
        r = subprocess.run([NFT, "list", "table", "inet", self.name],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
        if r.returncode == 0:
            _run([NFT, "delete", "table", "inet", self.name], "nft delete table %s" % self.name)
        self.created = False


class Netns:
    """ip netns n502e2e_<random>, with lo up. Delete it after its processes."""

    def __init__(self):
        self.name = "n502e2e_%08x" % random.randrange(1 << 32)
        self.created = False

    def create(self):
        _run([IP, "netns", "add", self.name], "ip netns add %s" % self.name)
        self.created = True
        self.run(IP, "link", "set", "lo", "up")

    def run(self, *argv):
        return _run([IP, "netns", "exec", self.name] + list(argv), "ip netns exec %s %s" % (self.name, " ".join(argv)))

    def sysctl(self, key, value):
        self.run("/usr/sbin/sysctl", "-q", "-w", "%s=%s" % (key, value))

    def pids(self):
        r = subprocess.run([IP, "netns", "pids", self.name], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, timeout=10)
        return [int(x) for x in r.stdout.split()]

    def delete(self, timeout=10):
        if not self.created:
            return
        left = self.pids()  # our Nginx/upstreams were stopped before this
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: not any(pid_alive(p) for p in left), timeout, "processes in netns %s to exit" % self.name)
        _run([IP, "netns", "del", self.name], "ip netns del %s" % self.name)
        self.created = False
        if left:
            raise Failure("netns %s still had processes %s (killed)" % (self.name, left))


# ---------------------------------------------------------------- php-fpm


PHP_FPM_CONF = """\
; generated by tests/e2e/harness.py
[global]
pid = {dir}/php-fpm.pid
error_log = {dir}/php-fpm.log
log_level = notice
daemonize = no

[e2e]
user = www-data
group = www-data
listen = {sock}
listen.owner = www-data
listen.group = www-data
listen.mode = 0660
pm = static
pm.max_children = {children}
catch_workers_output = yes
{extra}
"""


class Supervisor:
    """A pre-fork server run in the foreground (self.proc: its master), its
    log in self.log (self.err: the file its output goes to)."""

    @property
    def master_pid(self):
        return self.proc.pid

    def workers(self):
        return children_of(self.proc.pid)

    def read_log(self):
        return read_text(self.log)

    def stop_master(self, comm_prefix, timeout=10):
        """SIGTERM to the master (a fast shutdown: it ends its children), then
        SIGKILL to any child left whose name still starts with comm_prefix
        (only its current children: a killed child's pid may be reused)."""
        if self.proc is None:
            return
        pids = set(self.workers() if self.proc.poll() is None else [])
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for p in pids:
            if pid_alive(p) and proc_comm(p).startswith(comm_prefix):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        wait_until(lambda: not any(pid_alive(p) and proc_comm(p).startswith(comm_prefix) for p in pids),
                   timeout, "%s children to exit" % comm_prefix)
        self.err.close()
        self.proc = None


class PhpFpm(Supervisor):
    """Debian's php-fpm8.2 in the foreground with a config of our own: one
    static pool on a unix socket in the test dir, workers as www-data."""

    name = "php-fpm"

    def __init__(self, h, children=1, pool_extra=""):
        self.h = h
        self.pool_extra = pool_extra  # more pool settings, one per line
        self.dir = h.path("php-fpm")
        self.sock = os.path.join(self.dir, "php.sock")
        self.conf = os.path.join(self.dir, "php-fpm.conf")
        self.log = os.path.join(self.dir, "php-fpm.log")
        self.children = children
        self.proc = None
        self.seen = set()

    def workers(self):
        kids = children_of(self.proc.pid)
        self.seen.update(kids)
        return kids

    def start(self, timeout=10):
        if not os.access(PHP_FPM, os.X_OK):
            raise Failure("%s not installed (apt-get install php-fpm)" % PHP_FPM)
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        with open(self.conf, "w") as f:
            f.write(PHP_FPM_CONF.format(dir=self.dir, sock=self.sock, children=self.children, extra=self.pool_extra))
        self.err = open(os.path.join(self.dir, "php-fpm.stderr"), "wb")
        # -n: no php.ini (nothing of the system's FPM set-up); -F: foreground
        self.proc = subprocess.Popen([PHP_FPM, "-n", "-F", "-y", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=self.err, stderr=subprocess.STDOUT)
        wait_until(lambda: "ready to handle connections" in self.read_log() or self.proc.poll() is not None,
                   timeout, "php-fpm 'ready to handle connections'")
        check(self.proc.poll() is None, "php-fpm %s: %s" % (describe_status(self.proc.poll()), self.read_log()))
        wait_until(lambda: len(self.workers()) >= self.children, timeout, "%d php-fpm children" % self.children)
        check(os.path.exists(self.sock), "php-fpm socket %s missing" % self.sock)

    def stop(self, timeout=10):
        self.stop_master("php-fpm", timeout)


GUNICORN_APP = """\
# generated by tests/e2e/harness.py: writes its pid to MARKER, then takes
# longer than any test waits
import os
import time


def application(environ, start_response):
    with open(%r, "w") as f:
        f.write("%%d\\n" %% os.getpid())
    time.sleep(60)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"slept\\n"]
"""


class Gunicorn(Supervisor):
    """Debian's gunicorn (sync workers) on 127.0.0.1:port with an app whose
    every request writes the worker's pid to self.marker and sleeps a minute;
    --timeout seconds without a word from a worker, and its master aborts it
    (SIGABRT; SIGKILL if that does not end it)."""

    name = "gunicorn"

    def __init__(self, h, port, workers=1, timeout=2):
        self.h = h
        self.port = port
        self.address = "127.0.0.1:%d" % port
        self.dir = h.path("gunicorn")
        self.marker = os.path.join(self.dir, "marker")
        self.log = os.path.join(self.dir, "gunicorn.log")
        self.nworkers = workers
        self.timeout = timeout
        self.proc = None

    def serving_pid(self):
        """The worker that took the request (its pid from the marker), or None."""
        text = read_text(self.marker)
        return int(text) if text.endswith("\n") else None

    def start(self, timeout=15):
        if not os.access(GUNICORN, os.X_OK):
            raise Failure("%s not installed (apt-get install gunicorn)" % GUNICORN)
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, "app.py"), "w") as f:
            f.write(GUNICORN_APP % self.marker)
        self.err = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [GUNICORN, "--chdir", self.dir, "--bind", self.address, "--workers", str(self.nworkers),
             "--timeout", str(self.timeout), "--graceful-timeout", "1", "app:application"],
            stdin=subprocess.DEVNULL, stdout=self.err, stderr=subprocess.STDOUT)
        wait_until(lambda: self.read_log().count("Booting worker") >= self.nworkers or self.proc.poll() is not None,
                   timeout, "gunicorn's %d worker(s)" % self.nworkers)
        check(self.proc.poll() is None, "gunicorn %s: %s" % (describe_status(self.proc.poll()), self.read_log()))
        wait_until(lambda: len(self.workers()) >= self.nworkers, timeout, "%d gunicorn workers" % self.nworkers)

    def stop(self, timeout=10):
        self.stop_master("gunicorn", timeout)



def kernel_log_tail(n=20, grep=None):
    """Best-effort dmesg tail (diagnostics only)."""
    try:
        r = subprocess.run(["dmesg"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = r.stdout.decode(errors="replace").splitlines()
    if grep:
        lines = [l for l in lines if grep in l]
    return "\n".join(lines[-n:])


def log(msg):
    sys.stderr.write("[e2e] %s\n" % msg)
    sys.stderr.flush()
