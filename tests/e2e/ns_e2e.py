#!/usr/bin/python3
"""n502trace end-to-end scenarios for containers made without any container
engine: pid + mount namespaces (unshare), network namespaces (ip netns) and
cgroup v2 directories, as a host running containerd, CRI-O, LXC or a home-made
runtime has them.

    ns_e2e.py --list
    ns_e2e.py --bin build/n502trace SCENARIO...
    ns_e2e.py --bin build/n502trace --all
    ns_e2e.py --no-tool SCENARIO...|--all   # Nginx's side only (no n502trace)
    ns_e2e.py --prepare                     # build/extract the root file system only

A "container" here is:
  - a root file system: Debian 12 with nginx-light and python3, built offline
    by scripts/docker-image.sh --rootfs (debootstrap, cached under /var/tmp)
    and extracted once next to its tarball; it is bind-mounted read-only, with
    a per-container directory over /var/log/nginx, /tmp, /run and /srv/n502
    and tests/e2e read-only at /opt/n502-e2e;
  - `unshare --pid --mount --fork`: pid 1 is the container's main process
    (Nginx's master, or upstream.py), so Nginx logs namespace pids (2#2) that
    are not its host pids; pivot_root into the root, as runc and crun do
    (flavour "pivot"), or a plain chroot (flavour "chroot"; scenario
    cgroup_pidns_killed);
  - optionally a network namespace of the test's own (`ip netns add`), entered
    with nsenter --net before unshare;
  - a cgroup v2 directory <cgroup2 mount>/n502-e2e-<random>: the launching
    shell writes itself into cgroup.procs and then execs unshare, so every
    process of the container is in it from the start;
  - more processes are started in it with `nsenter --target PID1 --pid --mount
    --net --root --wd` (after joining the cgroup the same way).
All mounts are made inside the container's private mount namespace and vanish
with it. Traffic goes only to 127.0.0.1 inside the test's own namespaces, the
host's loopback, and 192.0.2.0/30 (TEST-NET-1) on a veth pair between two
namespaces the test made.

Scenarios:
  cgroup_pidns_killed    Nginx (chroot, pid+mount ns, own cgroup) in front of a host upstream;
                         --cgroup DIR only; upstream SIGKILLed mid-request
  two_netns_same_address two pods (netns + pid/mount ns + cgroup), each Nginx -> upstream on
                         127.0.0.1:9000; requests hang in both; A's upstream killed, then B's:
                         each verdict names its own pod's upstream; the other pod serves 200
  veth_upstream          Nginx in netns A -> upstream (pid 1 of its own container) in netns B
                         at 192.0.2.2:9000 over a veth pair; upstream (running before the
                         tool started) killed mid-request
  veth_upstream_late     the same with the upstream started after the tool attached
  symlink_escape         /var/log/nginx/error.log in the root is an ABSOLUTE symlink to
                         /tmp/n502-e2e-host-secret-X-error.log, which also exists on the host
                         (a secret and a fake 502 line): the tool never reads the host file (it
                         follows the in-root file Nginx created, or refuses: exit 2)
  symlink_escape_rotate  after the tool attached, the log is renamed and replaced by an
                         absolute symlink like the one above, then USR1
  symlink_escape_dotdot  the same with a RELATIVE link ../../..(x16)/tmp/..., in a chroot
                         container
  symlink_inside         error.log is a relative symlink that stays inside the root: followed
  cgroup_plus_pid        --cgroup A for a container Nginx plus --nginx-pid of a host Nginx: two
                         instances, each fault attributed to its own Nginx
  oom_in_netns           upstream inside a pod, in a 64 MiB v1 memory cgroup, OOM-killed

Facts these scenarios rest on (kernel 6.18, util-linux 2.38, observed):
  - readlink(/proc/PID/fd/N) from the host names the path from the root of
    PID's MOUNT NAMESPACE: after pivot_root that is the container's path
    (/var/log/nginx/error.log); in a chroot it is the host path of the root
    plus the container path (/var/tmp/.../ns-root-.../var/log/nginx/error.log),
    which, opened on the host, is the shared root's own file, not the one
    bind-mounted over it in the container. /proc/PID/root/<path> with the
    container path reaches the right file in both.
  - An absolute symlink in the container, opened from the host through
    /proc/PID/root/..., resolves against the HOST's root: it escapes from both
    flavours. A relative ../../.. link escapes from a chroot (its mount
    namespace still has the host's tree above the root) but not from a
    pivot_root container (nothing above its root).
  - Nginx (pid 1, daemon off) logs namespace pids: master 1, workers small
    numbers (11..14) that are not their host pids.
  - unshare cannot re-raise its child's SIGKILL (signal(SIGKILL, SIG_DFL) is
    EINVAL): it exits 1 with "sigprocmask unblock failed"; nsenter re-raises.

Exit codes: 0 all passed, 1 a failure, 2 bad usage, 77 (SKIP) the host lacks
something (named in a loud message): unshare, nsenter, a cgroup2 mount, ...
"""
import argparse
import fcntl
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402
from harness import Failure, check  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
ROOTFS_SCRIPT = os.path.join(REPO, "scripts", "docker-image.sh")
SH = "/bin/sh"
UNSHARE = "/usr/bin/unshare"
NSENTER = "/usr/bin/nsenter"
PIVOT_ROOT = "/usr/sbin/pivot_root"
CHROOT = "/usr/sbin/chroot"
MOUNT = "/usr/bin/mount"

# Inside the container root
CT_E2E = "/opt/n502-e2e"  # tests/e2e, read-only
CT_SRV = "/srv/n502"  # the container's own config dir
CT_OLDROOT = "/.n502-oldroot"  # pivot_root's put_old
CT_PYTHON = "/usr/bin/python3"
CT_NGINX = "/usr/sbin/nginx"
CT_ERROR_LOG = "/var/log/nginx/error.log"

SKIP = 77
VERDICT_DEADLINE = 1.0  # seconds from the 502 to its verdict (the README's promise)
TIME_LIMIT = 45.0  # per scenario

MSG_PREMATURE = "upstream prematurely closed connection while reading response header from upstream"
VETH_A, VETH_B = "192.0.2.1", "192.0.2.2"  # TEST-NET-1, a /30 between two namespaces of ours


class Skip(Exception):
    """The host lacks something this test needs."""


# ---------------------------------------------------------------- host facts


def cgroup2_mount():
    """Mount point of the cgroup v2 hierarchy, or None."""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "cgroup2":
                return fields[1]
    return None


def ns_pids(pid):
    """NSpid of pid: [host pid, ..., innermost pid], or [] if it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except OSError:
        pass
    return []


def innermost_pid(pid):
    p = ns_pids(pid)
    return p[-1] if p else None


def cgroup2_of(pid):
    """The "0::" path of /proc/PID/cgroup (the v2 cgroup), or None."""
    try:
        with open("/proc/%d/cgroup" % pid) as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        pass
    return None


def fd_targets(pid):
    """readlink of every /proc/PID/fd entry (as the host sees them)."""
    out = []
    d = "/proc/%d/fd" % pid
    try:
        names = os.listdir(d)
    except OSError:
        return out
    for n in names:
        try:
            out.append(os.readlink(os.path.join(d, n)))
        except OSError:
            pass
    return out


def preflight():
    """Raise Skip naming what is missing."""
    for path, what in ((UNSHARE, "unshare (util-linux)"), (NSENTER, "nsenter (util-linux)"),
                       (PIVOT_ROOT, "pivot_root (util-linux)"), (CHROOT, "chroot (coreutils)"),
                       (MOUNT, "mount (util-linux)"), (harness.IP, "ip (iproute2)"),
                       (harness.PYTHON, "python3")):
        if not os.access(path, os.X_OK):
            raise Skip("%s is missing (%s)" % (what, path))
    for ns in ("pid", "mnt", "net"):
        if not os.path.exists("/proc/self/ns/%s" % ns):
            raise Skip("the kernel has no %s namespaces (/proc/self/ns/%s)" % (ns, ns))
    mnt = cgroup2_mount()
    if mnt is None:
        raise Skip("no cgroup2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup/unified)")
    if not os.access(os.path.join(mnt, "cgroup.procs"), os.W_OK):
        raise Skip("cannot write %s/cgroup.procs" % mnt)
    if not os.path.exists(ROOTFS_SCRIPT):
        raise Skip("%s is missing" % ROOTFS_SCRIPT)


# ---------------------------------------------------------------- the root file system


def prepare_rootfs():
    """The extracted Debian root (read-only use), built and cached on first use.
    Returns its path."""
    cache = os.environ.get("N502_IMAGE_CACHE", "/var/tmp/n502trace-image")
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, "ns-root.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # scenarios started at once build the tarball once
        try:
            r = subprocess.run(["/bin/bash", ROOTFS_SCRIPT, "--rootfs"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=1800)
        except subprocess.TimeoutExpired:
            raise Failure("%s --rootfs took more than 30 minutes" % ROOTFS_SCRIPT)
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace").strip()
        if shutil.which("debootstrap") is None:
            raise Skip("no cached root file system and debootstrap is not installed "
                       "(apt-get install debootstrap): %s" % err)
        raise Failure("%s --rootfs failed (%d): %s" % (ROOTFS_SCRIPT, r.returncode, err))
    tarball = r.stdout.decode().strip().splitlines()[-1]
    check(os.path.isfile(tarball), "%s --rootfs printed %r, not a file" % (ROOTFS_SCRIPT, tarball))
    st = os.stat(tarball)
    cache = os.path.dirname(tarball)
    base = os.path.basename(tarball)
    if base.endswith(".tar"):
        base = base[:-4]
    # Keyed by the tarball's name, size and mtime: a rebuilt tarball gets a new root.
    name = "ns-root-%s-%d-%d" % (base, st.st_size, int(st.st_mtime))
    root = os.path.join(cache, name)
    ready = os.path.join(root, ".n502-ns-ready")
    with open(os.path.join(cache, "ns-root.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent tests extract once
        if os.path.exists(ready):
            return root
        tmp = "%s.tmp-%d" % (root, os.getpid())
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        harness.log("extracting %s into %s" % (tarball, root))
        rr = subprocess.run(["tar", "-C", tmp, "--numeric-owner", "-xpf", tarball],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
        if rr.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise Failure("tar -xpf %s failed: %s" % (tarball, rr.stdout.decode(errors="replace")))
        for d in (CT_E2E, CT_SRV, CT_OLDROOT):  # mount points
            os.makedirs(tmp + d, exist_ok=True)
        for check_path in (CT_NGINX, CT_PYTHON, "/usr/bin/umount", "/bin/sh", "/var/log/nginx"):
            if not os.path.lexists(tmp + check_path):
                shutil.rmtree(tmp, ignore_errors=True)
                raise Failure("the root file system %s has no %s" % (tarball, check_path))
        with open(os.path.join(tmp, ".n502-ns-ready"), "w") as f:
            f.write("extracted from %s\n" % tarball)
        os.rename(tmp, root)
        # Roots of older tarballs: no longer used by anyone.
        for other in os.listdir(cache):
            if other.startswith("ns-root-") and other != name and os.path.isdir(os.path.join(cache, other)):
                shutil.rmtree(os.path.join(cache, other), ignore_errors=True)
    return root


# ---------------------------------------------------------------- cgroup v2


class Cgroup2:
    """<cgroup2 mount>/n502-e2e-<random>: a container's cgroup."""

    def __init__(self):
        self.mount = cgroup2_mount()
        self.name = "n502-e2e-%08x" % random.randrange(1 << 32)
        self.path = os.path.join(self.mount, self.name)
        self.rel = "/" + self.name  # as /proc/PID/cgroup's 0:: line names it
        os.mkdir(self.path)

    @property
    def id(self):
        return os.stat(self.path).st_ino  # the kernel's cgroup id is the kernfs inode

    def pids(self):
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return []

    def remove(self, timeout=10):
        if not os.path.isdir(self.path):
            return
        left = self.pids()  # only processes of this test were ever put here
        for pid in left:
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
            except OSError:  # EBUSY while the last task exits
                return False
        harness.wait_until(try_rmdir, timeout, "rmdir %s" % self.path)
        if left:
            raise Failure("cgroup %s still had processes %s at teardown (killed)" % (self.path, left))


# ---------------------------------------------------------------- containers


INIT_SCRIPT = r"""
set -e
R=$1; D=$2; E2E=$3; FLAVOUR=$4; shift 4
mount --bind "$R" "$R"
mount -o remount,bind,ro "$R"
mount --bind "$D/log" "$R/var/log/nginx"
mount --bind "$D/tmp" "$R/tmp"
mount --bind "$D/run" "$R/run"
mount --bind "$D/srv" "$R{srv}"
mount --bind "$E2E" "$R{e2e}"
mount -o remount,bind,ro "$R{e2e}"
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
if [ "$FLAVOUR" = pivot ]; then
  cd "$R"
  {pivot_root} . .{oldroot}
  exec /bin/sh -c 'umount -l {oldroot} && exec "$@"' sh "$@"
fi
exec {chroot} "$R" "$@"
""".format(srv=CT_SRV, e2e=CT_E2E, oldroot=CT_OLDROOT, pivot_root=PIVOT_ROOT, chroot=CHROOT)


class Container:
    """pid + mount namespaces over the shared root, optionally in a netns of
    ours, in a cgroup v2 dir of ours. start() runs pid 1; exec() more."""

    def __init__(self, h, name, rootfs, cgroup, netns=None, flavour="pivot"):
        self.h = h
        self.name = "container %s" % name
        self.label = name
        self.rootfs = rootfs
        self.cgroup = cgroup
        self.netns = netns  # harness.Netns or None (the host's)
        self.flavour = flavour
        self.dir = h.path("ct-%s" % name)
        for sub, mode in (("log", 0o755), ("tmp", 0o1777), ("run", 0o755), ("srv", 0o755)):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
            os.chmod(os.path.join(self.dir, sub), mode)
        self.launcher = None  # Popen of `unshare` (host pid namespace)
        self.pid1 = None  # host pid of the container's pid 1
        self.execs = []  # (Popen of nsenter, stderr file)
        self.files = []

    def host_path(self, ct_path):
        """Where a path under one of the per-container mounts is on the host."""
        for ct, sub in (("/var/log/nginx", "log"), ("/tmp", "tmp"), ("/run", "run"), (CT_SRV, "srv")):
            if ct_path == ct or ct_path.startswith(ct + "/"):
                return os.path.join(self.dir, sub) + ct_path[len(ct):]
        raise ValueError("%s is not under a per-container mount" % ct_path)

    def _enter(self, argv):
        """sh: join the cgroup, then exec argv (in the netns if any)."""
        pre = []
        if self.netns is not None:
            pre = [NSENTER, "--net=/run/netns/%s" % self.netns.name]
        script = "echo $$ > %s && exec %s" % (shlex.quote(os.path.join(self.cgroup.path, "cgroup.procs")),
                                             " ".join(shlex.quote(a) for a in pre + argv))
        return [SH, "-c", script]

    def _open(self, what):
        f = open(os.path.join(self.dir, what), "wb")
        self.files.append(f)
        return f

    def start(self, argv, comm, stdout=None, timeout=10):
        """Run argv as pid 1; wait until it is there (comm) and return the Popen."""
        err = self._open("pid1.stderr")
        inner = [UNSHARE, "--pid", "--mount", "--fork", "--propagation", "private", "--",
                 SH, "-c", INIT_SCRIPT, "init", self.rootfs, self.dir, HERE, self.flavour] + list(argv)
        self.launcher = subprocess.Popen(self._enter(inner), stdin=subprocess.DEVNULL,
                                         stdout=stdout if stdout is not None else err, stderr=err)

        def find_pid1():
            if self.launcher.poll() is not None:
                raise Failure("%s: pid 1 (%s) %s before it started: %s" % (
                    self.name, " ".join(argv), harness.describe_status(self.launcher.returncode),
                    self.read("pid1.stderr")))
            for c in harness.children_of(self.launcher.pid):
                if ns_pids(c)[-1:] == [1] and harness.proc_comm(c) == comm:
                    return c
            return None
        self.pid1 = harness.wait_until(find_pid1, timeout, "%s: pid 1 %s" % (self.name, comm))
        got = cgroup2_of(self.pid1)
        check(got == self.cgroup.rel, "%s: pid 1 (host %d) is in cgroup %r, want %r" % (
            self.name, self.pid1, got, self.cgroup.rel))
        return self.launcher

    def exec(self, argv, stdout=None):
        """Another process in the container (nsenter forks: the Popen is
        nsenter, its only child is argv). Returns the Popen."""
        check(self.pid1 is not None and harness.pid_alive(self.pid1), "%s is not running" % self.name)
        err = self._open("exec-%d.stderr" % len(self.execs))
        # --net joins pid 1's network namespace (the host's if it has none of its own).
        argv = [NSENTER, "--target", str(self.pid1), "--pid", "--mount", "--net", "--root", "--wd", "--"] + list(argv)
        p = subprocess.Popen(self._enter(argv), stdin=subprocess.DEVNULL,
                             stdout=stdout if stdout is not None else err, stderr=err)
        self.execs.append((p, err.name))
        return p

    def read(self, what):
        try:
            with open(os.path.join(self.dir, what), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, timeout=5):
        """SIGTERM to an Nginx pid 1 (fast shutdown), else SIGKILL (a pid 1
        ignores signals it has no handler for); then SIGKILL whatever is left
        in the cgroup (every process of the container is there)."""
        if self.launcher is None:
            return
        if self.launcher.poll() is None and self.pid1 and harness.pid_alive(self.pid1):
            sig = signal.SIGTERM if harness.proc_comm(self.pid1) == "nginx" else signal.SIGKILL
            try:
                os.kill(self.pid1, sig)
            except ProcessLookupError:
                pass
        procs = [self.launcher] + [p for p, _ in self.execs]
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(harness.POLL)
        if any(p.poll() is None for p in procs):
            for pid in self.cgroup.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in procs:
            p.wait(timeout=timeout)
        for f in self.files:
            f.close()
        self.launcher = None


# ---------------------------------------------------------------- Nginx in a container


NS_NGINX_CONF = """\
# generated by tests/e2e/ns_e2e.py
user www-data;
worker_processes {workers};
daemon off;
master_process on;
pid /run/nginx.pid;
error_log {error_log} info;

events {{
    worker_connections 256;
}}

http {{
    access_log /var/log/nginx/access.log;
    client_body_temp_path /tmp/nginx-body;
    proxy_temp_path /tmp/nginx-proxy;
    fastcgi_temp_path /tmp/nginx-fastcgi;
    uwsgi_temp_path /tmp/nginx-uwsgi;
    scgi_temp_path /tmp/nginx-scgi;
    proxy_connect_timeout 60s;
    proxy_read_timeout 120s;
    proxy_send_timeout 120s;

    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
{locations}
    }}
}}
"""


class NsNginx:
    """Debian's Nginx as pid 1 of a container (daemon off, master + workers).
    error_log_host: where the file Nginx writes is on the host (default: the
    container's /var/log/nginx/error.log)."""

    def __init__(self, ct, locations, port=None, workers=2, error_log_host=None):
        self.ct = ct
        self.locations = locations
        self.netns = ct.netns.name if ct.netns is not None else None
        self.port = port or (8080 if self.netns else harness.free_port())
        self.nworkers = workers
        self.error_log = error_log_host or ct.host_path(CT_ERROR_LOG)
        self.master_pid = None
        self.workers = []

    @property
    def cgroup_rel(self):
        return self.ct.cgroup.rel

    def start(self, timeout=10):
        locs = "".join("        location %s {\n            proxy_pass %s;\n        }\n" % (loc, target)
                       for loc, target in self.locations)
        with open(self.ct.host_path(CT_SRV + "/nginx.conf"), "w") as f:
            f.write(NS_NGINX_CONF.format(workers=self.nworkers, error_log=CT_ERROR_LOG,
                                         port=self.port, locations=locs))
        self.ct.start([CT_NGINX, "-p", CT_SRV + "/", "-c", CT_SRV + "/nginx.conf", "-e", CT_ERROR_LOG],
                      comm="nginx", timeout=timeout)
        self.master_pid = self.ct.pid1
        self.workers = harness.wait_until(
            lambda: (lambda k: k if len(k) >= self.nworkers else None)(harness.children_of(self.master_pid)),
            timeout, "%d nginx workers in %s" % (self.nworkers, self.ct.name))
        harness.wait_port_accepting(self.port, timeout, netns=self.netns)
        check(innermost_pid(self.master_pid) == 1, "nginx master %d is not pid 1 in its namespace (NSpid %s)" % (
            self.master_pid, ns_pids(self.master_pid)))
        for w in self.workers:
            check(innermost_pid(w) != w, "nginx worker %d has the same pid in its namespace" % w)
        return self

    def worker_pids(self):
        return harness.children_of(self.master_pid) if self.master_pid else []

    def read_error_log(self):
        try:
            with open(self.error_log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def tail(self, n=40):
        return "\n".join(self.read_error_log().splitlines()[-n:])

    def wait_error(self, substring, timeout=5):
        def find():
            return next((l for l in self.read_error_log().splitlines() if substring in l), None)
        return harness.wait_until(find, timeout, "%s: error.log line containing %r" % (self.ct.name, substring))

    def stop(self):
        pass  # pid 1: the container's stop() ends it


def host_nginx_cgroup(n):
    return cgroup2_of(n.master_pid)


# ---------------------------------------------------------------- upstream.py in a container


class NsUpstream:
    """tests/e2e/upstream.py inside a container: as its pid 1, or exec'd into it."""

    def __init__(self, ct, mode, listen, as_pid1=False):
        self.ct = ct
        self.mode = mode
        self.listen = listen
        self.as_pid1 = as_pid1
        self.launcher = None
        self.pid = None  # host pid
        self.ns_pid = None  # what it printed (its pid in the container)
        self.out = None

    @property
    def address(self):
        return self.listen

    @property
    def cgroup_rel(self):
        return self.ct.cgroup.rel

    def start(self, timeout=10):
        argv = [CT_PYTHON, CT_E2E + "/upstream.py", "--listen", self.listen, "--mode", self.mode]
        if self.as_pid1:
            self.launcher = self.ct.start(argv, comm="python3", stdout=subprocess.PIPE, timeout=timeout)
        else:
            self.launcher = self.ct.exec(argv, stdout=subprocess.PIPE)
        self.out = harness.LineCollector(self.launcher.stdout, "upstream.py(%s) in %s" % (self.mode, self.ct.label))
        line = self.out.wait_for(
            lambda: next((t for _, t in self.out.lines if t.startswith("LISTENING")), None),
            timeout, "LISTENING", alive=lambda: self.launcher.poll() is None)
        self.ns_pid = int(line.split()[1])

        def host_pid():
            for c in harness.children_of(self.launcher.pid):
                if ns_pids(c)[-1:] == [self.ns_pid]:
                    return c
            return None
        self.pid = harness.wait_until(host_pid, timeout, "the host pid of upstream.py (ns pid %d)" % self.ns_pid)
        check(self.pid != self.ns_pid, "upstream.py has the same pid %d on the host and in its namespace" % self.pid)
        check(cgroup2_of(self.pid) == self.ct.cgroup.rel, "upstream pid %d in cgroup %r, want %r" % (
            self.pid, cgroup2_of(self.pid), self.ct.cgroup.rel))
        return self

    def wait_request(self, nth=1, timeout=10):
        return self.out.wait_word("REQUEST", timeout, nth)

    def wait_exit(self, timeout=10):
        """The launcher's status: unshare/nsenter pass their child's death on
        (a signal is re-raised: -SIG)."""
        try:
            rc = self.launcher.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failure("upstream.py (host pid %d) still running after %ds" % (self.pid, timeout))
        harness.wait_until(lambda: not harness.pid_alive(self.pid), timeout, "upstream pid %d gone" % self.pid)
        if (self.as_pid1 and rc == 1 and "sigprocmask unblock failed" in self.ct.read("pid1.stderr")):
            # util-linux 2.38's unshare cannot re-raise SIGKILL (signal(SIGKILL,
            # SIG_DFL) is EINVAL) and exits 1 instead: its child was killed by SIGKILL.
            return -signal.SIGKILL
        return rc


class HostUpstream:
    """What a verdict about a harness.Upstream on the host must say."""

    def __init__(self, up):
        self.up = up
        self.pid = up.pid
        self.ns_pid = up.pid  # the host's pid namespace is its innermost one
        self.address = up.address
        self.cgroup_rel = cgroup2_of(up.pid)

    def wait_request(self, nth=1, timeout=10):
        return self.up.wait_request(nth, timeout)

    def wait_exit(self, timeout=10):
        return self.up.wait_exit(timeout)


# ---------------------------------------------------------------- scenario context


LOG_RE = re.compile(r"\[(\w+)\] (\d+)#(\d+): (?:\*(\d+) )?(.*)")


class Ctx:
    def __init__(self, h, binary, use_tool, rootfs):
        self.h = h
        self.binary = binary
        self.use_tool = use_tool
        self.rootfs = rootfs
        self.tool = None
        self.nginxes = []
        self.containers = []
        self.want_verdicts = 0
        self.forbidden = []  # strings no record and no stderr line may contain
        self.tool_refused = False

    def note(self, msg):
        harness.log(msg)

    # -- pieces
    def cgroup(self):
        cg = Cgroup2()
        self.h.cgroups.append(cg)
        return cg

    def container(self, name, netns=None, flavour="pivot"):
        ct = Container(self.h, name, self.rootfs, self.cgroup(), netns=netns, flavour=flavour)
        self.containers.append(ct)
        self.h.others.append(ct)
        return ct

    def nginx(self, ct, locations, **kw):
        n = NsNginx(ct, locations, **kw)
        self.nginxes.append(n)  # before start(): a failure report shows its log
        n.start()
        self.note("%s: nginx master %d (ns pid %d), workers %s (ns pids %s), cgroup %s, on %s127.0.0.1:%d" % (
            ct.label, n.master_pid, innermost_pid(n.master_pid), n.workers,
            [innermost_pid(w) for w in n.workers], ct.cgroup.rel,
            ("netns %s " % n.netns) if n.netns else "", n.port))
        return n

    def ns_upstream(self, ct, mode, listen, as_pid1=False):
        u = NsUpstream(ct, mode, listen, as_pid1=as_pid1).start()
        self.note("%s: upstream.py %s on %s, host pid %d, ns pid %d" % (ct.label, mode, listen, u.pid, u.ns_pid))
        return u

    def host_upstream(self, mode):
        u = HostUpstream(self.h.start_upstream(mode))
        self.note("host: upstream.py %s on %s, pid %d, cgroup %s" % (mode, u.address, u.pid, u.cgroup_rel))
        return u

    # -- the tool
    def start_tool(self, args, nginx_pid=None, expect_instances=None):
        """expect_instances: [(nginx, cgroup_rel)] each must be in ready.instances."""
        if not self.use_tool:
            return None
        self.h.tool = harness.Tool(self.h, self.binary, nginx_pid, args=args)
        self.tool = self.h.tool.start()
        ready = self.tool.ready
        self.note("ready: instances %s cgroups %s" % (json.dumps(ready.get("instances")), json.dumps(ready.get("cgroups"))))
        for n, cg_rel in expect_instances or []:
            check_instance(ready, n, cg_rel)
        return self.tool

    def check_ready_cgroups(self, cgs):
        if not self.use_tool:
            return
        got = self.tool.ready.get("cgroups")
        check(isinstance(got, list), "ready.cgroups is not a list: %r" % (got,))
        for cg in cgs:
            check(any(isinstance(c, dict) and c.get("path") == cg.rel and c.get("id") == cg.id for c in got),
                  "ready.cgroups %s has no {\"path\": %r, \"id\": %d}" % (json.dumps(got), cg.rel, cg.id))

    # -- faults
    def kill_during_request(self, n, up, path, nth=1):
        """GET path through n (hangs at up), SIGKILL up from another process:
        a 502. Returns (response, killer pid, nginx's error line)."""
        req = harness.BackgroundRequest(n.port, path, netns=n.netns)
        req.start()
        up.wait_request(nth)
        killer = harness.spawn_kill(signal.SIGKILL, up.pid)
        self.note("/bin/kill -KILL %d ran as pid %d" % (up.pid, killer))
        r = req.result()
        check(r.status == 502, "GET %s: status %r, want 502" % (path, r.status))
        rc = up.wait_exit()
        check(rc in (-signal.SIGKILL, 128 + signal.SIGKILL), "upstream pid %d: launcher %s, want killed by SIGKILL" % (
            up.pid, harness.describe_status(rc)))
        line = n.wait_error('request: "GET %s ' % path)
        self.note("nginx logged: %s" % line)
        check(MSG_PREMATURE in line, "nginx's line for %s is not %r: %s" % (path, MSG_PREMATURE, line))
        return r, killer, line

    def expect_verdict(self, resp, n, path, line, cause, up, killer=None, evidence=(), facts=None):
        """The verdict for GET path (nginx n's line `line`), per the contract."""
        m = LOG_RE.search(line)
        check(m is not None, "cannot parse nginx's line: %s" % line)
        logged = int(m.group(2))
        workers = set(n.workers) | set(n.worker_pids())
        hosts = [w for w in workers if innermost_pid(w) == logged]
        check(len(hosts) == 1, "nginx logged pid %d, which is not exactly one worker's innermost NSpid (workers %s: %s)" % (
            logged, sorted(workers), {w: ns_pids(w) for w in workers}))
        host_worker = hosts[0]
        if n in self.nginxes:  # in a container: the logged pid is not the host pid
            check(logged != host_worker, "nginx in %s logged its host pid %d" % (n.ct.label, logged))
        if not self.use_tool:
            return None
        left = max(0.0, resp.t_done + VERDICT_DEADLINE - time.monotonic())
        want_req = "GET %s HTTP/1.1" % path
        try:
            t, v = self.tool.wait_record("verdict", pred=lambda r: r.get("request") == want_req, timeout=left + 0.05)
        except Failure as e:
            raise Failure("no verdict for GET %s within %.0fs of its 502 (%s)" % (path, VERDICT_DEADLINE, e))
        late = t - resp.t_done
        problems = []

        def want(field, expected, ok=None):
            got = v.get(field)
            good = ok(got) if ok else (got == expected and type(got) is type(expected))
            if not good:
                problems.append("%s %s, want %s" % (field, json.dumps(got), expected if ok else json.dumps(expected)))

        want("status", 502)
        want("cause", cause)
        want("upstream", up.address)
        want("upstream_pid", up.pid)
        if isinstance(up, HostUpstream):
            want("upstream_ns_pid", "%d (host pid) or null" % up.pid, lambda g: g is None or g == up.pid)
            want("upstream_cgroup", "%r or null" % up.cgroup_rel, lambda g: g is None or g == up.cgroup_rel)
        else:
            want("upstream_ns_pid", up.ns_pid)
            want("upstream_cgroup", up.cgroup_rel)
        want("upstream_container", None)
        want("nginx_pid", host_worker)
        want("nginx_ns_pid", logged)
        want("nginx_cgroup", n.cgroup_rel if n in self.nginxes else host_nginx_cgroup(n))
        want("nginx_container", None)
        if MSG_PREMATURE.split(" while")[0] not in (v.get("nginx_message") or ""):
            problems.append("nginx_message %r" % v.get("nginx_message"))
        ev = v.get("evidence") if isinstance(v.get("evidence"), list) else []
        reqs = list(evidence)
        if killer is not None:
            reqs.append({"event": "signal", "pid": killer, "target_pid": up.pid, "sig": 9})
        for e in reqs:
            if not any(isinstance(x, dict) and all(x.get(k) == val for k, val in e.items()) for x in ev):
                problems.append("no evidence entry matching %s" % json.dumps(e, sort_keys=True))
        for name, pred in (facts or {}).items():
            got = (v.get("facts") or {}).get(name)
            if not pred(got):
                problems.append("facts.%s %s, want %s" % (name, json.dumps(got), pred.__doc__ or "?"))
        if late > VERDICT_DEADLINE:
            problems.append("came %.2fs after the 502 (limit %.0fs)" % (late, VERDICT_DEADLINE))
        if problems:
            raise Failure("verdict for GET %s:\n    %s\n  the verdict: %s" % (path, "\n    ".join(problems), json.dumps(v, sort_keys=True)))
        self.note("verdict ok for GET %s: %s, upstream pid %d (ns %s), nginx %d (ns %d), %.2fs after the 502" % (
            path, cause, up.pid, v.get("upstream_ns_pid"), host_worker, logged, late))
        return v

    def after_teardown(self):
        if not self.use_tool or self.tool is None or self.tool_refused:
            return
        verdicts = self.tool.records("verdict")
        check(len(verdicts) == self.want_verdicts, "want exactly %d verdict(s), got %d: %s" % (
            self.want_verdicts, len(verdicts), [v.get("request") for v in verdicts]))
        self.check_forbidden()

    def check_forbidden(self):
        if not self.use_tool or self.tool is None or not self.forbidden:
            return
        with self.tool.out.cond:
            lines = [t for _, t in self.tool.out.lines]
        texts = [("stdout", l) for l in lines] + [("stderr", l) for l in self.tool.stderr_text().splitlines()]
        for word in self.forbidden:
            hits = ["%s: %s" % (where, l) for where, l in texts if word in l]
            check(not hits, "n502trace printed %r, which only the HOST's file holds (it read the host file):\n  %s" % (
                word, "\n  ".join(hits[:5])))


def check_instance(ready, n, cg_rel):
    """ready.instances has n: host master, master_ns_pid, workers, error_logs
    (naming, on the host, the very file Nginx writes), cgroup, container null."""
    insts = ready.get("instances")
    check(isinstance(insts, list), "ready.instances is not a list: %r" % (insts,))
    mine = [i for i in insts if isinstance(i, dict) and i.get("master") == n.master_pid]
    check(len(mine) == 1, "ready.instances has no entry with master %d: %s" % (n.master_pid, json.dumps(insts)))
    i = mine[0]
    problems = []
    if i.get("master_ns_pid") != innermost_pid(n.master_pid):
        problems.append("master_ns_pid %r, want %d" % (i.get("master_ns_pid"), innermost_pid(n.master_pid)))
    if sorted(i.get("workers") or []) != sorted(n.workers):
        problems.append("workers %r, want %r" % (i.get("workers"), sorted(n.workers)))
    logs = i.get("error_logs") or []
    same = []
    for p in logs:
        try:
            same.append(os.path.samefile(p, n.error_log))
        except (OSError, TypeError):
            same.append(False)
    if not any(same):
        problems.append("error_logs %r: none of them is, on the host, the file Nginx writes (%s)" % (logs, n.error_log))
    if i.get("cgroup") != cg_rel:
        problems.append("cgroup %r, want %r" % (i.get("cgroup"), cg_rel))
    if i.get("container", "absent") is not None:
        problems.append("container %r, want null (no container engine)" % (i.get("container", "(absent)"),))
    if problems:
        raise Failure("ready.instances entry for master %d: %s\n  the entry: %s" % (
            n.master_pid, "; ".join(problems), json.dumps(i, sort_keys=True)))


# ---------------------------------------------------------------- scenarios


def sc_cgroup_pidns_killed(s):
    """Nginx in its own pid + mount namespace (chroot) and cgroup; the tool
    selects it by --cgroup only; a host upstream is SIGKILLed mid-request."""
    up = s.host_upstream("hang")
    ct = s.container("web", flavour="chroot")
    n = s.nginx(ct, [("/", "http://%s" % up.address)])
    s.start_tool(["--cgroup", ct.cgroup.path], expect_instances=[(n, ct.cgroup.rel)])
    s.check_ready_cgroups([ct.cgroup])
    r, killer, line = s.kill_during_request(n, up, "/killed")
    s.want_verdicts = 1
    s.expect_verdict(r, n, "/killed", line, "upstream_killed", up, killer)


def sc_two_netns_same_address(s):
    """Two pods with the same addresses everywhere (Nginx 127.0.0.1:8080,
    upstreams 127.0.0.1:9000 and :9001) and the same namespace pids. Requests
    hang in both pods at once; A's upstream is killed, then B's."""
    pods = {}
    for name in ("a", "b"):
        ns = s.h.netns()
        ct = s.container("pod-%s" % name, netns=ns)
        n = s.nginx(ct, [("/", "http://127.0.0.1:9000"), ("/ok", "http://127.0.0.1:9001")], port=8080)
        hang = s.ns_upstream(ct, "hang", "127.0.0.1:9000")
        ok = s.ns_upstream(ct, "ok", "127.0.0.1:9001")
        pods[name] = (ct, n, hang, ok)
    ca, na, ha, oa = pods["a"]
    cb, nb, hb, ob = pods["b"]
    check(ha.ns_pid == hb.ns_pid, "the pods' upstreams have different ns pids (%d, %d): want the same, "
          "to make host pids the only way to tell them apart" % (ha.ns_pid, hb.ns_pid))
    # --cgroup in both accepted forms: the absolute directory and the 0:: path.
    s.start_tool(["--cgroup", ca.cgroup.path, "--cgroup", cb.cgroup.rel],
                 expect_instances=[(na, ca.cgroup.rel), (nb, cb.cgroup.rel)])
    s.check_ready_cgroups([ca.cgroup, cb.cgroup])
    s.want_verdicts = 2
    # B's request waits at B's upstream while A's fails.
    req_b = harness.BackgroundRequest(nb.port, "/pod-b", netns=nb.netns)
    req_b.start()
    hb.wait_request(1)
    r, killer, line = s.kill_during_request(na, ha, "/pod-a")
    check(req_b.is_alive(), "GET /pod-b in pod b ended when pod a's upstream was killed")
    s.expect_verdict(r, na, "/pod-a", line, "upstream_killed", ha, killer)
    for i in range(3):
        rb = harness.http_get(nb.port, "/ok", netns=nb.netns)
        check(rb.status == 200, "pod b GET /ok: %r, want 200 (pod a's failure leaked?)" % rb.status)
    ob.wait_request(3)
    # The reverse: the request waiting in pod b fails now, and pod a serves.
    killer_b = harness.spawn_kill(signal.SIGKILL, hb.pid)
    s.note("/bin/kill -KILL %d (pod b) ran as pid %d" % (hb.pid, killer_b))
    rb = req_b.result()
    check(rb.status == 502, "GET /pod-b: %r, want 502" % rb.status)
    rc = hb.wait_exit()
    check(rc == -signal.SIGKILL, "pod b's upstream: launcher %s" % harness.describe_status(rc))
    line_b = nb.wait_error('request: "GET /pod-b ')
    s.note("pod b nginx logged: %s" % line_b)
    s.expect_verdict(rb, nb, "/pod-b", line_b, "upstream_killed", hb, killer_b)
    ra = harness.http_get(na.port, "/ok", netns=na.netns)
    check(ra.status == 200, "pod a GET /ok: %r, want 200" % ra.status)


def setup_veth(a, b):
    """A veth pair n502a (in a, 192.0.2.1/30) <-> n502b (in b, 192.0.2.2/30),
    made inside a: it never exists in the host's namespace."""
    harness._run([harness.IP, "-n", a.name, "link", "add", "n502a", "type", "veth", "peer", "name", "n502b",
                  "netns", b.name], "ip link add veth")
    for ns, dev, addr in ((a, "n502a", VETH_A), (b, "n502b", VETH_B)):
        harness._run([harness.IP, "-n", ns.name, "addr", "add", "%s/30" % addr, "dev", dev], "ip addr add")
        harness._run([harness.IP, "-n", ns.name, "link", "set", dev, "up"], "ip link set up")


def sc_veth_upstream(s):
    """Nginx in netns A, upstream.py as pid 1 of its own container in netns B,
    joined by a veth pair; the upstream is SIGKILLed mid-request."""
    nsa, nsb = s.h.netns(), s.h.netns()
    setup_veth(nsa, nsb)
    ctb = s.container("upstream", netns=nsb)
    up = s.ns_upstream(ctb, "hang", "%s:9000" % VETH_B, as_pid1=True)
    check(up.ns_pid == 1, "upstream.py is ns pid %d, want 1" % up.ns_pid)
    cta = s.container("web", netns=nsa)
    n = s.nginx(cta, [("/", "http://%s:9000" % VETH_B)], port=8080)
    s.start_tool(["--cgroup", cta.cgroup.path], expect_instances=[(n, cta.cgroup.rel)])
    s.check_ready_cgroups([cta.cgroup])
    r, killer, line = s.kill_during_request(n, up, "/veth")
    s.want_verdicts = 1
    s.expect_verdict(r, n, "/veth", line, "upstream_killed", up, killer)


def sc_veth_upstream_late(s):
    """veth_upstream with the upstream started after the tool attached (its
    listen() is seen, not found by the start-up scan)."""
    nsa, nsb = s.h.netns(), s.h.netns()
    setup_veth(nsa, nsb)
    cta = s.container("web", netns=nsa)
    n = s.nginx(cta, [("/", "http://%s:9000" % VETH_B)], port=8080)
    s.start_tool(["--cgroup", cta.cgroup.path], expect_instances=[(n, cta.cgroup.rel)])
    ctb = s.container("upstream", netns=nsb)
    up = s.ns_upstream(ctb, "hang", "%s:9000" % VETH_B, as_pid1=True)
    r, killer, line = s.kill_during_request(n, up, "/veth-late")
    s.want_verdicts = 1
    s.expect_verdict(r, n, "/veth-late", line, "upstream_killed", up, killer)


def host_secret(s, tag):
    """A file on the HOST, /tmp/n502-e2e-host-secret-<rand>-error.log, whose
    content only the host has: a secret word and a fake 502 line for a request
    that never happened. Returns (path, secret word, fake request path)."""
    rnd = "%08x" % random.randrange(1 << 32)
    path = "/tmp/n502-e2e-host-secret-%s-error.log" % rnd
    secret = "N502-HOST-SECRET-%s" % rnd
    fake = "/host-file-%s" % rnd
    with open(path, "w") as f:
        f.write("%s %s\n" % (secret, tag))
    s.h.on_close("remove %s" % path, lambda: os.path.exists(path) and os.unlink(path))
    s.forbidden += [secret, fake]
    return path, secret, fake


def fake_line(pid, fake, port):
    return ('%s [error] %d#%d: *999 %s, client: 127.0.0.1, server: localhost, request: "GET %s HTTP/1.1", '
            'upstream: "http://127.0.0.1:%d/", host: "localhost"\n' % (
                time.strftime("%Y/%m/%d %H:%M:%S"), pid, pid, MSG_PREMATURE, fake, port))


def append(path, text):
    with open(path, "a") as f:
        f.write(text)


def sc_symlink_escape(s):
    """The container's /var/log/nginx/error.log is an absolute symlink to
    /tmp/n502-e2e-host-secret-X-error.log: inside the root Nginx creates and
    writes that file in the container's /tmp; on the host the same path is
    another file (secret, plus a fake 502 line). The tool must not read it."""
    up = s.host_upstream("hang")
    ct = s.container("web")
    secret_path, secret, fake = host_secret(s, "absolute symlink target")
    in_root = ct.host_path(secret_path)  # /tmp of the container on the host
    os.symlink(secret_path, ct.host_path(CT_ERROR_LOG))
    check(not os.path.exists(in_root), "%s exists before Nginx starts" % in_root)
    n = s.nginx(ct, [("/", "http://%s" % up.address)], error_log_host=in_root)
    check(os.path.isfile(in_root), "Nginx did not create its log at the in-root target %s" % in_root)
    wk = innermost_pid(n.workers[0])
    append(secret_path, fake_line(wk, fake, 9))
    with open(secret_path) as f:
        host_before = f.read()
    if s.use_tool:
        if not start_tool_maybe_refused(s, ["--cgroup", ct.cgroup.path], CT_ERROR_LOG, secret_path):
            return
        check_instance(s.tool.ready, n, ct.cgroup.rel)  # error_logs: the in-root file
        logs = s.tool.ready["instances"][0].get("error_logs") or []
        for p in logs:
            check(not (os.path.exists(p) and os.path.samefile(p, secret_path)),
                  "ready.instances[].error_logs lists %r, which on the host is the host's file %s" % (p, secret_path))
    append(secret_path, fake_line(wk, fake, 9))  # after ready: a follower from the end would see it
    r, killer, line = s.kill_during_request(n, up, "/escape")
    s.want_verdicts = 1
    s.expect_verdict(r, n, "/escape", line, "upstream_killed", up, killer)
    with open(secret_path) as f:
        check(f.read().startswith(host_before), "the host file %s was changed (by Nginx?)" % secret_path)
    check(fake not in n.read_error_log(), "the fake line is in Nginx's own log")
    s.check_forbidden()


def start_tool_maybe_refused(s, args, ct_log, secret_path):
    """Start the tool; a refusal (exit 2 before ready, naming the log) is an
    accepted outcome. Returns True if it attached."""
    s.h.tool = harness.Tool(s.h, s.binary, None, args=args)
    tool = s.h.tool
    try:
        tool.start()
    except Failure as e:
        try:
            rc = tool.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            raise e
        tool.stopped = True
        tool.err.close()
        # Its stdout read to its end: check_forbidden below sees every line.
        tool.out.thread.join(5)
        check(not tool.out.thread.is_alive(), "n502trace exited (%d) but its stdout did not end" % rc)
        err = tool.stderr_text()
        s.tool = tool
        s.tool_refused = True
        check(rc == 2, "n502trace %s before ready (want ready, or a refusal with exit code 2): %s" % (
            harness.describe_status(rc), err.strip()))
        check(os.path.basename(ct_log) in err or os.path.basename(secret_path) in err,
              "n502trace refused (exit 2) without naming the log: %s" % err.strip())
        s.check_forbidden()
        s.note("n502trace refused the symlinked log (exit 2): %s" % err.strip())
        return False
    s.tool = tool
    s.note("ready: instances %s" % json.dumps(tool.ready.get("instances")))
    return True


def swap_attack(s, flavour, relative):
    """Attached to a regular in-root log; then (as a process in the container
    could) the log is renamed and a symlink put in its place, and Nginx reopens
    (USR1). Inside the root the link names the container's /tmp/<name>, which
    Nginx creates; resolved from the host through /proc/PID/root it names the
    host's /tmp/<name> (secret, plus a fake 502 line). relative: the link is
    ../../..(x16)/tmp/<name>, which climbs out of a chroot's root from the
    host (not out of a pivot_root's: its mount namespace has nothing above)."""
    up = s.host_upstream("hang")
    ct = s.container("web", flavour=flavour)
    secret_path, secret, fake = host_secret(s, "symlink target")
    n = s.nginx(ct, [("/", "http://%s" % up.address)])
    wk = innermost_pid(n.workers[0])
    append(secret_path, fake_line(wk, fake, 9))
    s.start_tool(["--cgroup", ct.cgroup.path], expect_instances=[(n, ct.cgroup.rel)])
    r, killer, line = s.kill_during_request(n, up, "/before")
    s.expect_verdict(r, n, "/before", line, "upstream_killed", up, killer)
    log = ct.host_path(CT_ERROR_LOG)
    os.rename(log, log + ".1")
    os.symlink(("../" * 16 + secret_path.lstrip("/")) if relative else secret_path, log)
    in_root = ct.host_path(secret_path)
    os.kill(n.master_pid, signal.SIGUSR1)
    harness.wait_until(lambda: all(any(t.endswith(secret_path) for t in fd_targets(p))
                                   for p in [n.master_pid] + n.workers), 10,
                       "nginx to reopen its log (USR1) at the in-root %s" % secret_path)
    check(os.path.isfile(in_root), "Nginx did not create %s" % in_root)
    n.error_log = in_root
    append(secret_path, fake_line(wk, fake, 9))
    # A second upstream where Nginx's location points (the first one's port).
    up2 = HostUpstream(s.h.start_upstream("hang", port=up.up.port))
    s.note("host: upstream.py hang on %s, pid %d" % (up2.address, up2.pid))
    r2, killer2, line2 = s.kill_during_request(n, up2, "/after")
    if s.use_tool:
        # Following the in-root target is right; a warning that it will not
        # follow a symlink (naming the log) is acceptable; the host file never.
        try:
            s.expect_verdict(r2, n, "/after", line2, "upstream_killed", up2, killer2)
            s.want_verdicts = 2
        except Failure as e:
            def names_log(w):
                return "error.log" in (w.get("message") or "") or secret_path in (w.get("message") or "")
            try:  # (printed when the tool met the symlink: waited for, it may not be read yet)
                s.tool.wait_record("warning", pred=names_log, timeout=5)
            except Failure:
                raise Failure("after the swap to a symlink: %s (and no warning record names the log)" % e)
            warns = [w for w in s.tool.records("warning") if names_log(w)]
            s.note("no verdict after the swap; warning(s): %s" % json.dumps(warns))
            s.want_verdicts = 1
    s.check_forbidden()


def sc_symlink_escape_rotate(s):
    """The swap to an ABSOLUTE symlink (pivot_root container)."""
    swap_attack(s, "pivot", relative=False)


def sc_symlink_escape_dotdot(s):
    """The swap to a RELATIVE ../../.. symlink (chroot container)."""
    swap_attack(s, "chroot", relative=True)


def sc_symlink_inside(s):
    """error.log is a relative symlink that stays inside the root
    (../../../srv/n502/logs/error.log): Nginx writes there and the tool follows."""
    up = s.host_upstream("hang")
    ct = s.container("web")
    target = CT_SRV + "/logs/error.log"
    os.makedirs(os.path.dirname(ct.host_path(target)))
    os.symlink("../../.." + target, ct.host_path(CT_ERROR_LOG))
    n = s.nginx(ct, [("/", "http://%s" % up.address)], error_log_host=ct.host_path(target))
    check(os.path.isfile(ct.host_path(target)), "Nginx did not create %s in the root" % target)
    s.start_tool(["--cgroup", ct.cgroup.path], expect_instances=[(n, ct.cgroup.rel)])
    r, killer, line = s.kill_during_request(n, up, "/inside")
    s.want_verdicts = 1
    s.expect_verdict(r, n, "/inside", line, "upstream_killed", up, killer)


def sc_cgroup_plus_pid(s):
    """--cgroup A (a container Nginx) and --nginx-pid (a host Nginx) at once:
    two instances; each fault is attributed to its own Nginx."""
    up1 = s.host_upstream("hang")
    up2 = s.host_upstream("hang")
    ct = s.container("web")
    n1 = s.nginx(ct, [("/", "http://%s" % up1.address)])
    n2 = s.h.start_nginx([("/", "http://%s" % up2.address)])
    s.note("host: nginx master %d workers %s on 127.0.0.1:%d" % (n2.master_pid, n2.workers, n2.port))
    s.start_tool(["--cgroup", ct.cgroup.path], nginx_pid=n2.master_pid,
                 expect_instances=[(n1, ct.cgroup.rel), (n2, host_nginx_cgroup(n2))])
    if s.use_tool:
        check(len(s.tool.ready.get("instances") or []) == 2, "ready.instances: want 2, got %s" % json.dumps(
            s.tool.ready.get("instances")))
    s.want_verdicts = 2
    r1, k1, l1 = s.kill_during_request(n1, up1, "/container")
    v1 = s.expect_verdict(r1, n1, "/container", l1, "upstream_killed", up1, k1)
    r2, k2, l2 = s.kill_during_request(n2, up2, "/host")
    v2 = s.expect_verdict(r2, n2, "/host", l2, "upstream_killed", up2, k2)
    if v1 and v2:
        check(v1["nginx_pid"] != v2["nginx_pid"], "both verdicts name nginx_pid %r" % v1["nginx_pid"])


def sc_oom_in_netns(s):
    """A pod's upstream, in a 64 MiB v1 memory cgroup, OOM-killed mid-request."""
    ns = s.h.netns()
    ct = s.container("pod", netns=ns)
    n = s.nginx(ct, [("/", "http://127.0.0.1:9000")], port=8080)
    up = s.ns_upstream(ct, "oom", "127.0.0.1:9000")
    mem = s.h.memory_cgroup("64M")
    mem.add(up.pid)
    s.note("upstream host pid %d in %s" % (up.pid, mem.path))
    s.start_tool(["--cgroup", ct.cgroup.path], expect_instances=[(n, ct.cgroup.rel)])
    before = mem.oom_control().get("oom_kill", 0)
    r = harness.http_get(n.port, "/oom", netns=n.netns)
    check(r.status == 502, "GET /oom: %r, want 502" % r.status)
    rc = up.wait_exit()
    check(rc == -signal.SIGKILL, "the OOM-killed upstream's launcher %s" % harness.describe_status(rc))
    after = mem.oom_control().get("oom_kill")
    if after is not None:
        check(after > before, "memory.oom_control oom_kill %r -> %r: no OOM kill" % (before, after))
    line = n.wait_error('request: "GET /oom ')
    s.note("nginx logged: %s" % line)
    s.want_verdicts = 1
    mem_name = os.path.basename(mem.path)

    def limit_ok(g):
        """64 MiB (67108864)"""
        return g == 64 << 20 and not isinstance(g, bool)

    def cg_ok(g):
        """the memory cgroup's path (…/%s)"""
        return isinstance(g, str) and g.rstrip("/").endswith(mem_name)
    cg_ok.__doc__ = "a path ending in %s" % mem_name
    s.expect_verdict(r, n, "/oom", line, "upstream_oom_killed", up,
                     evidence=[{"event": "oom_kill", "pid": up.pid}],
                     facts={"memory_limit_bytes": limit_ok, "memory_cgroup": cg_ok})


SCENARIOS = {
    "cgroup_pidns_killed": sc_cgroup_pidns_killed,
    "two_netns_same_address": sc_two_netns_same_address,
    "veth_upstream": sc_veth_upstream,
    "veth_upstream_late": sc_veth_upstream_late,
    "symlink_escape": sc_symlink_escape,
    "symlink_escape_rotate": sc_symlink_escape_rotate,
    "symlink_escape_dotdot": sc_symlink_escape_dotdot,
    "symlink_inside": sc_symlink_inside,
    "cgroup_plus_pid": sc_cgroup_plus_pid,
    "oom_in_netns": sc_oom_in_netns,
}


# ---------------------------------------------------------------- runner


def report_failure(name, s, h, err):
    out = sys.stderr
    out.write("\n==== FAIL %s: %s\n" % (name, err))
    tool = h.tool
    if tool is not None:
        out.write("---- n502trace stderr:\n%s\n" % tool.stderr_text().rstrip())
        recs = tool.records() if tool.out else []
        out.write("---- records:\n%s\n" % ("\n".join(json.dumps(r, sort_keys=True) for r in recs) or "(none)"))
    for n in s.nginxes:
        out.write("---- %s: nginx error.log (tail):\n%s\n" % (n.ct.label, n.tail()))
    for ct in s.containers:
        for what in ["pid1.stderr"] + [os.path.basename(p) for _, p in ct.execs]:
            text = ct.read(what).strip()
            if text:
                out.write("---- %s: %s:\n%s\n" % (ct.label, what, text[-3000:]))
    if h.nginx is not None:
        out.write("---- host nginx error.log (tail):\n%s\n" % h.nginx.tail())
    out.write("==== end %s\n" % name)
    out.flush()


def leftovers(s):
    """What this test made on the host and did not remove: cgroups, network
    namespaces, mounts of its directory (there should be none: every mount is
    made inside a container's own mount namespace)."""
    left = [cg.path for cg in s.h.cgroups if os.path.isdir(cg.path)]
    left += ["/run/netns/" + ns.name for ns in s.h.netnses if os.path.exists("/run/netns/" + ns.name)]
    with open("/proc/self/mountinfo") as f:
        left += ["mount %s" % l.split()[4] for l in f if s.h.dir in l]
    return left


def run_one(name, binary, use_tool, rootfs, keep=False):
    h = harness.Harness("ns-" + name, keep=keep)
    s = Ctx(h, binary, use_tool, rootfs)
    t0 = time.monotonic()
    errors = []
    try:
        SCENARIOS[name](s)
    except Failure as e:
        errors.append(str(e))
    except Exception:
        errors.append("error in test: " + traceback.format_exc())
    finally:
        h.close(remove_dir=False)
    errors += ["teardown: " + e for e in h.close_errors]
    left = leftovers(s)
    if left:
        errors.append("left behind: %s" % left)
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
        for v in s.tool.records("verdict"):
            print("[e2e] verdict: %s cause=%s upstream_pid=%s (ns %s) nginx_pid=%s (ns %s): %s" % (
                v.get("request"), v.get("cause"), v.get("upstream_pid"), v.get("upstream_ns_pid"),
                v.get("nginx_pid"), v.get("nginx_ns_pid"), v.get("explanation")))
    h.remove_dir()
    print("%s %s (%.1fs)%s" % ("FAIL" if errors else "PASS", name, elapsed, "" if use_tool else " [no-tool]"))
    sys.stdout.flush()
    return not errors


def skip(msg):
    bar = "*" * 72
    sys.stderr.write("%s\nSKIP ns_e2e.py: %s\n%s\n" % (bar, msg, bar))
    print("SKIP: %s" % msg)
    return SKIP


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="path to the n502trace binary")
    ap.add_argument("--list", action="store_true", help="print scenario names")
    ap.add_argument("--all", action="store_true", help="run every scenario")
    ap.add_argument("--no-tool", action="store_true", help="check only Nginx's side, without n502trace")
    ap.add_argument("--prepare", action="store_true", help="only build/extract the container root file system")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs")
    ap.add_argument("scenario", nargs="*")
    args = ap.parse_args()

    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    names = list(SCENARIOS) if args.all else args.scenario
    if not names and not args.prepare:
        ap.error("name a scenario, or --all, --list, --prepare")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error("unknown scenario(s): %s (see --list)" % ", ".join(unknown))
    if os.geteuid() != 0:
        sys.stderr.write("ns_e2e.py: must run as root\n")
        return 2
    use_tool = not args.no_tool and not args.prepare
    binary = None
    if use_tool:
        if not args.bin:
            ap.error("--bin PATH is required (or --no-tool)")
        binary = os.path.abspath(args.bin)
        if not os.access(binary, os.X_OK):
            sys.stderr.write("ns_e2e.py: %s is not an executable file\n" % binary)
            return 2
    try:
        preflight()
        rootfs = prepare_rootfs()
    except Skip as e:
        return skip(str(e))
    except Failure as e:
        sys.stderr.write("ns_e2e.py: %s\n" % e)
        return 1
    if args.prepare:
        print(rootfs)
        return 0
    # ctest's timeout (and a user's kill) ends us with SIGTERM: tear down anyway.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("ns_e2e.py: SIGTERM"))
    t0 = time.monotonic()
    failed = [n for n in names if not run_one(n, binary, use_tool, rootfs, keep=args.keep)]
    if len(names) > 1:
        print("%d passed, %d failed (%.1fs)%s" % (len(names) - len(failed), len(failed), time.monotonic() - t0,
                                                 (": " + " ".join(failed)) if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
