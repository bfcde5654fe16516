#!/usr/bin/python3
"""Docker helpers for n502trace's container end-to-end tests (docker_e2e.py).

What this module guarantees:
  - prepare(): a Docker engine that answers (dockerd started here when none
    does, with Docker's networking off, and left running) and the test image
    (scripts/docker-image.sh). Anything missing raises Skip with a message
    that says exactly what; the caller exits 77.
  - DockerEnv: the containers, attached network namespaces and veth pairs of
    one scenario, every one named n502-e2e-..., all removed by close()
    whatever happened.

Network rules: containers run with --network none, --network container:<web>
(a pod) or --network host, never on Docker's bridge. The test reaches a
container's loopback by entering its network namespace (`ip netns attach`
binds /proc/PID/ns/net at /run/netns/<name>; harness.in_netns enters it).

Synchronisation: no sleeps; every wait polls an observable fact (docker
info answering, a pid in docker inspect, a line in a file, a port that
accepts) with a bounded deadline, like harness.py.
"""
import fcntl
import json
import os
import random
import re
import shutil
import subprocess
import time

import harness
from harness import Failure, check

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
IMAGE_SCRIPT = os.path.join(REPO, "scripts", "docker-image.sh")
SKIP_CODE = 77
PREFIX = "n502-e2e-"
DOCKERD_ARGS = ["--iptables=false", "--ip6tables=false", "--bridge=none"]
DOCKERD_LOG = "/var/tmp/n502trace-dockerd.log"
DOCKERD_START_TIMEOUT = 60
PREPARE_LOCK = "/var/tmp/n502trace-docker-prepare.lock"
IP = harness.IP

# Paths inside the containers.
T_DIR = "/t"  # tests/e2e, read-only
CONF_DIR = "/etc/n502"  # the generated nginx.conf, read-only
OUT_DIR = "/out"  # upstream.py's stdout/stderr, written for the test to read
C_PYTHON = "/usr/bin/python3"
C_NGINX = "/usr/sbin/nginx"
NGINX_PORT = 8080  # Nginx's listener on the loopback of its own network namespace
UPSTREAM_PORT = 9000


class Skip(Exception):
    """The host lacks what the Docker tests need; exit with SKIP_CODE."""


# ---------------------------------------------------------------- the engine


def _docker_bin():
    return shutil.which("docker")


def docker(*args, timeout=60, ok=True, input=None):
    """Run the docker CLI; returns stdout (stripped). ok=True: a non-zero exit is a Failure."""
    argv = [_docker_bin() or "docker"] + [str(a) for a in args]
    try:
        r = subprocess.run(argv, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failure("%s: no answer within %ds" % (" ".join(argv), timeout))
    if ok and r.returncode != 0:
        raise Failure("%s failed (%d): %s" % (" ".join(argv), r.returncode, r.stderr.decode(errors="replace").strip()))
    return r.stdout.decode(errors="replace").strip()


def daemon_answers():
    try:
        r = subprocess.run([_docker_bin(), "info", "--format", "{{.ServerVersion}}"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0 and r.stdout.strip() != b""


def _log_tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "\n".join(f.read().splitlines()[-n:])
    except OSError:
        return "(no log)"


def ensure_daemon():
    """A Docker engine that answers `docker info`: the running one, or a
    dockerd started here (Docker's networking off: no bridge, no iptables),
    logging to DOCKERD_LOG and left running after the tests."""
    if _docker_bin() is None:
        raise Skip("the docker CLI is not installed (apt-get install docker.io)")
    if daemon_answers():
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise Skip("no Docker engine answers and dockerd is not installed (apt-get install docker.io)")
    harness.log("no Docker engine answers: starting %s %s (log %s)" % (dockerd, " ".join(DOCKERD_ARGS), DOCKERD_LOG))
    log = open(DOCKERD_LOG, "ab")
    # A session of its own: it must outlive this test and not get our signals.
    proc = subprocess.Popen([dockerd] + DOCKERD_ARGS, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + DOCKERD_START_TIMEOUT
    exited_at = None
    while not daemon_answers():
        now = time.monotonic()
        if proc.poll() is not None and exited_at is None:
            # Another test may have started one at the same moment: give it a few seconds.
            exited_at = now
        if (exited_at is not None and now - exited_at > 5) or now > deadline:
            raise Skip("dockerd could not be started (%s); last lines of %s:\n%s" % (
                harness.describe_status(proc.poll()), DOCKERD_LOG, _log_tail(DOCKERD_LOG)))
        time.sleep(0.2)
    harness.log("dockerd (pid %d) answers" % proc.pid)


def ensure_image():
    """The image name printed by scripts/docker-image.sh (built on first use)."""
    r = subprocess.run([IMAGE_SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=1800)
    err = r.stderr.decode(errors="replace").strip()
    if r.returncode != 0:
        if shutil.which("debootstrap") is None:
            raise Skip("debootstrap is not installed (apt-get install debootstrap): "
                       "cannot build the test image: %s" % err)
        raise Failure("%s failed (%d): %s" % (IMAGE_SCRIPT, r.returncode, err))
    name = r.stdout.decode().strip().splitlines()[-1]
    check(name, "%s printed no image name" % IMAGE_SCRIPT)
    return name


def prepare():
    """Engine and image, or Skip. Returns the image name. Several test
    processes may call it at once (ctest -j): one at a time starts dockerd
    or builds the image, the others then find them ready."""
    if os.geteuid() != 0:
        raise Skip("must run as root")
    if not os.access(IP, os.X_OK):
        raise Skip("%s is missing (apt-get install iproute2)" % IP)
    with open(PREPARE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_daemon()
        return ensure_image()


def run_cmd(argv, what, timeout=10):
    """Run a host command; its stdout, or Failure naming what failed."""
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    if r.returncode != 0:
        raise Failure("%s failed (%d): %s" % (what, r.returncode, r.stderr.decode(errors="replace").strip()))
    return r.stdout.decode(errors="replace")


def established_to(netns, port):
    """[(local, peer)] of the established TCP connections to port in /run/netns/<netns>."""
    out = run_cmd([IP, "netns", "exec", netns, "ss", "-tnH", "state", "established", "dport = :%d" % port],
                  "ss in netns %s" % netns)
    return [tuple(l.split()[2:4]) for l in out.splitlines() if l.strip()]


# ---------------------------------------------------------------- /proc helpers


def ns_pids(pid):
    """The NSpid line of /proc/PID/status: [host pid, ..., innermost pid]."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    raise Failure("no NSpid in /proc/%d/status" % pid)


def proc_cgroups(pid):
    """/proc/PID/cgroup as {controller: path}; the unified (v2) hierarchy is ""."""
    out = {}
    with open("/proc/%d/cgroup" % pid) as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out


def netns_name(role):
    return "%s%s-%04x" % (PREFIX, role, random.randrange(1 << 16))


# ---------------------------------------------------------------- containers


class Container:
    """One container of the test's: `docker run -d --name n502-e2e-...`."""

    def __init__(self, env, role, argv, network="none", mounts=(), extra=(), out=False):
        self.env = env
        self.role = role
        self.name = "%s%s-%s-%04x" % (PREFIX, env.tag, role, random.randrange(1 << 16))
        self.argv = list(argv)
        self.network = network
        self.mounts = list(mounts)
        self.extra = list(extra)
        self.id = None
        self.pid = None  # host pid of the container's PID 1 while it runs
        self.netns = None  # /run/netns name of its network namespace, once attached
        self.cgroups = {}  # /proc/PID/cgroup of its PID 1: {controller: path}, "" for cgroup v2
        self.outdir = None
        if out:  # a writable dir for what the container's command prints
            self.outdir = env.h.path("out-%s" % role)
            os.makedirs(self.outdir, exist_ok=True)
            self.mounts.append((self.outdir, OUT_DIR, "rw"))

    def run(self, timeout=30):
        argv = ["run", "-d", "--name", self.name, "--network", self.network]
        for src, dst, mode in self.mounts:
            argv += ["-v", "%s:%s:%s" % (src, dst, mode)]
        argv += self.extra + [self.env.image] + self.argv
        self.env.containers.append(self)  # before it exists: close() removes it by name
        self.id = docker(*argv, timeout=timeout).splitlines()[-1]
        check(re.fullmatch(r"[0-9a-f]{64}", self.id or ""), "docker run printed %r, not a container id" % self.id)
        self.pid = self.wait_running()
        return self

    def inspect(self, fmt):
        return docker("inspect", "-f", fmt, self.name)

    def state(self):
        return json.loads(self.inspect("{{json .State}}"))

    def wait_running(self, timeout=15):
        def running_pid():
            st = self.state()
            if st.get("Running") and st.get("Pid"):
                return st["Pid"]
            if st.get("Status") in ("exited", "dead"):
                raise Failure("container %s %s (exit code %s): %s" % (
                    self.name, st.get("Status"), st.get("ExitCode"), self.logs()[-2000:]))
            return None
        pid = harness.wait_until(running_pid, timeout, "container %s running" % self.name)
        self.cgroups = proc_cgroups(pid)
        check(self.id in self.cgroups.get("", ""), "container %s (pid %d): cgroup v2 path %r does not name its id" % (
            self.name, pid, self.cgroups.get("")))
        return pid

    def wait_exited(self, timeout=20):
        def gone():
            st = self.state()
            return st if not st.get("Running") and st.get("Status") in ("exited", "dead") else None
        return harness.wait_until(gone, timeout, "container %s to exit" % self.name)

    def logs(self):
        """The container's stdout and stderr as Docker recorded them."""
        r = subprocess.run([_docker_bin(), "logs", self.name], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        return r.stdout.decode(errors="replace")

    def info(self):
        """As n502trace's verdicts and ready record name a container."""
        return {"runtime": "docker", "id": self.id, "name": self.name}

    @property
    def cgroup(self):
        """Its cgroup v2 path, as /proc/PID/cgroup's "0::" line shows it:
        /docker/<id> with Docker's cgroupfs driver."""
        return self.cgroups[""]

    def start(self):
        """docker start (after a stop): waits until it runs; returns the new host pid."""
        old = self.pid
        docker("start", self.name)
        self.pid = self.wait_running()
        check(self.pid != old, "container %s runs with its old pid %d after docker start" % (self.name, old))
        return self.pid

    def remove(self):
        docker("rm", "-f", "-v", self.name, ok=False, timeout=60)
        left = docker("ps", "-aq", "--filter", "name=^/%s$" % self.name, ok=False)
        check(not left, "container %s still exists after docker rm -f" % self.name)


class NginxContainer(Container):
    """Nginx as PID 1 of a container: nginx -c /etc/n502/nginx.conf -g 'daemon off;'.

    The error log lives in the container's own file system (not a bind mount):
    the test reads it through /proc/<master>/root, as the tool must."""

    ERROR_LOG = "/var/log/nginx/error.log"

    def __init__(self, env, role, conf, network="none", prelude=None, extra=(), binary=C_NGINX, name=None):
        confdir = env.h.path("conf-%s" % role)
        os.makedirs(confdir, exist_ok=True)
        with open(os.path.join(confdir, "nginx.conf"), "w") as f:
            f.write(conf)
        # binary: another name for Nginx (a link made by prelude), as the
        # official image's nginx-debug
        cmd = "exec %s -c %s/nginx.conf -g 'daemon off;'" % (binary, CONF_DIR)
        self.comm = os.path.basename(binary)[:15]
        if prelude:  # shell commands run in the container before Nginx replaces the shell
            cmd = "%s && %s" % (prelude, cmd)
        super().__init__(env, role, ["/bin/sh", "-c", cmd], network=network,
                         mounts=[(confdir, CONF_DIR, "ro")], extra=extra)
        if name:  # a container made again under an earlier one's name
            self.name = name
        self.port = NGINX_PORT
        self.stderr_log = False  # the error log goes to Docker's pipe, not a file
        self.workers = []

    def run(self, timeout=30):
        super().run(timeout)
        self.serving()
        return self

    def serving(self):
        """Nginx is PID 1 (self.pid), has its workers and accepts, in the
        network namespace self.netns names (attached again after a restart)."""
        harness.wait_until(lambda: harness.proc_comm(self.pid) == self.comm, 10,
                           "container %s's PID 1 (%d) to be %s" % (self.name, self.pid, self.comm))
        self.workers = harness.wait_until(lambda: harness.children_of(self.pid), 10,
                                          "nginx workers in %s" % self.name)
        self.netns = self.env.attach_netns(self)
        harness.wait_port_accepting(self.port, 10, netns=self.netns)

    def restart(self):
        """docker restart: a new master (new host pid, new network namespace)."""
        old = self.pid
        docker("restart", "-t", "1", self.name)
        self.pid = self.wait_running()
        check(self.pid != old, "container %s runs with its old pid %d after docker restart" % (self.name, old))
        self.serving()
        return self.pid

    def worker_pids(self):
        return harness.children_of(self.pid)

    def read_error_log(self):
        if self.stderr_log:
            return self.logs()
        try:
            with open("/proc/%d/root%s" % (self.pid, self.ERROR_LOG), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_error(self, substring, timeout=5, nth=1):
        def find():
            hits = [l for l in self.read_error_log().splitlines() if substring in l]
            return hits[nth - 1] if len(hits) >= nth else None
        return harness.wait_until(find, timeout, "nginx (%s) error line #%d containing %r" % (self.name, nth, substring))

    def get(self, path="/", want=None, timeout=25, source_port=None):
        r = harness.http_get(self.port, path, timeout=timeout, netns=self.netns, source_port=source_port)
        if want is not None:
            check(r.status == want, "GET %s via %s: status %r, want %d" % (path, self.name, r.status, want))
        return r

    def background_get(self, path="/", source_port=None):
        req = harness.BackgroundRequest(self.port, path, netns=self.netns, source_port=source_port)
        req.start()
        return req


class UpstreamContainer(Container):
    """tests/e2e/upstream.py as PID 1 of a container; its stdout is appended
    to a file the test reads (LISTENING/REQUEST lines carry its pid in the
    container's pid namespace)."""

    def __init__(self, env, role, mode, listen, network="none", args=(), extra=()):
        cmd = "exec %s %s/upstream.py --listen %s --mode %s %s >>%s/stdout 2>>%s/stderr" % (
            C_PYTHON, T_DIR, listen, mode, " ".join(args), OUT_DIR, OUT_DIR)
        super().__init__(env, role, ["/bin/sh", "-c", cmd], network=network, extra=extra, out=True,
                         mounts=[(HERE, T_DIR, "ro")])
        self.mode = mode
        self.listen = listen
        self.ns_pid = None  # its pid inside its pid namespace, from LISTENING

    def lines(self, word):
        try:
            with open(os.path.join(self.outdir, "stdout"), errors="replace") as f:
                return [l.strip() for l in f if l.split()[:1] == [word]]
        except FileNotFoundError:
            return []

    def stderr_text(self):
        try:
            with open(os.path.join(self.outdir, "stderr"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_word(self, word, nth=1, timeout=10):
        def find():
            hits = self.lines(word)
            if len(hits) >= nth:
                return hits[nth - 1]
            if self.state().get("Status") in ("exited", "dead"):
                raise Failure("upstream container %s exited before %s #%d: %s" % (
                    self.name, word, nth, self.stderr_text()[-2000:]))
            return None
        return harness.wait_until(find, timeout, "%s #%d from upstream.py in %s" % (word, nth, self.name))

    def wait_listening(self, nth=1):
        line = self.wait_word("LISTENING", nth)
        self.ns_pid = int(line.split()[1])
        check(harness.proc_comm(self.pid) == "python3", "container %s's PID 1 (%d) is %r, not python3" % (
            self.name, self.pid, harness.proc_comm(self.pid)))
        inner = ns_pids(self.pid)[-1]
        check(inner == self.ns_pid, "upstream.py says pid %d, /proc/%d/status NSpid ends %d" % (
            self.ns_pid, self.pid, inner))
        return self

    def run(self, timeout=30):
        super().run(timeout)
        return self.wait_listening()


# ---------------------------------------------------------------- one scenario's world


class DockerEnv:
    """The containers, netns names and veth pairs of one scenario."""

    def __init__(self, h, image, tag):
        self.h = h
        self.image = image
        self.tag = tag.replace("_", "-")
        self.containers = []
        self.netnses = []  # /run/netns names we attached
        self.veths = []  # host-side names of veth pairs we created
        self.snapshots = {}  # name -> text kept for the failure report

    def nginx(self, role, conf, **kw):
        return NginxContainer(self, role, conf, **kw).run()

    def upstream(self, role, mode, listen, **kw):
        return UpstreamContainer(self, role, mode, listen, **kw).run()

    def attach_netns(self, container):
        """/run/netns/<name> for the container's network namespace (ip netns attach)."""
        name = netns_name(container.role)
        run_cmd([IP, "netns", "attach", name, str(container.pid)], "ip netns attach %s %d" % (name, container.pid))
        self.netnses.append(name)
        return name

    def veth(self, a, a_addr, b, b_addr):
        """A veth pair with one end in each container's network namespace
        (ip link set X netns PID), addresses assigned, both up. Returns the
        two interface names."""
        base = "%s%04x" % (PREFIX, random.randrange(1 << 16))  # 13 chars; + 1 < IFNAMSIZ
        ea, eb = base + "a", base + "b"
        run_cmd([IP, "link", "add", ea, "type", "veth", "peer", "name", eb], "ip link add %s" % ea)
        self.veths.append(ea)
        for end, ct, addr in ((ea, a, a_addr), (eb, b, b_addr)):
            ns = ct.netns or self.attach_netns(ct)
            ct.netns = ns
            run_cmd([IP, "link", "set", end, "netns", str(ct.pid)], "ip link set %s netns %d" % (end, ct.pid))
            run_cmd([IP, "-n", ns, "addr", "add", addr, "dev", end], "ip -n %s addr add %s" % (ns, addr))
            run_cmd([IP, "-n", ns, "link", "set", end, "up"], "ip -n %s link set %s up" % (ns, end))
        return ea, eb

    def snapshot(self):
        """Keep the containers' logs for the failure report (before they go)."""
        for c in self.containers:
            if c.id is None:
                continue
            try:
                text = c.logs()
                if isinstance(c, NginxContainer) and not c.stderr_log and c.pid and harness.pid_alive(c.pid):
                    text += "\n-- %s:\n%s" % (c.ERROR_LOG, c.read_error_log())
                if isinstance(c, UpstreamContainer):
                    text += "\n-- upstream.py stderr:\n%s" % c.stderr_text()
                self.snapshots[c.name] = text
            except Exception as e:  # diagnostics only
                self.snapshots[c.name] = "(could not read: %s)" % e

    def close(self):
        """Remove everything; raise Failure listing what could not be removed."""
        errors = []
        try:
            self.snapshot()
        except Exception:
            pass
        for c in reversed(self.containers):
            try:
                c.remove()
            except Exception as e:
                errors.append(str(e))
        for ns in self.netnses:
            if os.path.exists("/run/netns/%s" % ns):
                r = subprocess.run([IP, "netns", "del", ns], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
                if r.returncode != 0:
                    errors.append("ip netns del %s: %s" % (ns, r.stderr.decode(errors="replace").strip()))
        for v in self.veths:
            # Normally gone with its namespaces; still on the host if the move failed.
            if os.path.exists("/sys/class/net/%s" % v):
                r = subprocess.run([IP, "link", "del", v], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
                if r.returncode != 0:
                    errors.append("ip link del %s: %s" % (v, r.stderr.decode(errors="replace").strip()))
        self.containers, self.netnses, self.veths = [], [], []
        if errors:
            raise Failure("; ".join(errors))
