#!/usr/bin/python3
"""Fixtures for scripts/demo.sh: a throwaway Nginx whose locations fail in
different ways, kept running between commands.

    demo.py up DIR      start upstreams + Nginx in DIR; prints Nginx's master pid
    demo.py fire DIR    one request per location (the "killed" one is SIGKILLed
                        by a separate /bin/kill once it holds the request)
    demo.py down DIR    stop Nginx and whatever upstreams are left (idempotent)

State lives in DIR/state.json. Processes are detached (own session), so they
outlive this script between `up` and `down`.
"""
import json
import os
import signal
import subprocess
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Failure  # noqa: E402

# (location name, upstream.py mode or None for "nothing listens", what to expect)
LOCATIONS = [
    ("no_listener", None, "upstream_not_listening"),
    ("reset", "reset", "upstream_reset"),
    ("close", "close", "upstream_closed_early"),
    ("segv", "segv", "upstream_crashed"),
    ("exit", "exit", "upstream_exited"),
    ("killed", "hang", "upstream_killed"),
]


def read_lines(path):
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def is_our_upstream(pid):
    """Guard against pid reuse before signalling a pid from state.json."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return harness.UPSTREAM_PY.encode() in f.read()
    except OSError:
        return False


def up(d):
    os.chmod(d, 0o755)
    state = {"dir": d, "locations": []}
    targets = []
    for name, mode, cause in LOCATIONS:
        port = harness.free_port()
        loc = {"name": name, "path": "/%s/" % name, "mode": mode, "port": port,
               "upstream": "127.0.0.1:%d" % port, "expect": cause, "pid": None}
        if mode:
            out = os.path.join(d, "upstream-%s.out" % name)
            with open(out, "wb") as o, open(os.path.join(d, "upstream-%s.err" % name), "wb") as e:
                p = subprocess.Popen([harness.PYTHON, harness.UPSTREAM_PY, "--listen", loc["upstream"], "--mode", mode],
                                     stdin=subprocess.DEVNULL, stdout=o, stderr=e, start_new_session=True)
            loc["pid"] = p.pid
            loc["out"] = out
            harness.wait_until(lambda: "LISTENING %d" % p.pid in read_lines(out) or p.poll() is not None,
                               10, "upstream %s to listen" % name)
            if p.poll() is not None:
                raise Failure("upstream %s exited at start: %s" % (name, harness.describe_status(p.returncode)))
        state["locations"].append(loc)
        targets.append((loc["path"], "http://%s" % loc["upstream"]))
        save(d, state)
    ngx = harness.Nginx(d, targets)
    try:
        ngx.start()
    finally:
        if ngx.master_pid:  # so that `down` can stop it even if start failed late
            state["nginx"] = {"master_pid": ngx.master_pid, "workers": ngx.workers, "port": ngx.port,
                              "error_log": ngx.error_log}
            save(d, state)
    print(ngx.master_pid)


def save(d, state):
    tmp = os.path.join(d, "state.json.tmp")
    with open(tmp, "w") as f:
        json.dump(state, f, indent=2)
    os.replace(tmp, os.path.join(d, "state.json"))


def load(d):
    with open(os.path.join(d, "state.json")) as f:
        return json.load(f)


def fire(d):
    state = load(d)
    port = state["nginx"]["port"]
    n502 = 0
    for loc in state["locations"]:
        if loc["name"] == "killed":
            req = harness.BackgroundRequest(port, loc["path"])
            req.start()
            harness.wait_until(lambda: "REQUEST %d" % loc["pid"] in read_lines(loc["out"]), 10,
                               "the hanging upstream to get the request")
            killer = harness.spawn_kill(signal.SIGKILL, loc["pid"])
            r = req.result()
            extra = " (upstream %d SIGKILLed by /bin/kill pid %d)" % (loc["pid"], killer)
        else:
            r = harness.http_get(port, loc["path"])
            extra = ""
        n502 += r.status == 502
        print("demo: GET %-14s -> %s   expect cause %s%s" % (loc["path"], r.status, loc["expect"], extra))
        sys.stdout.flush()
    return 0 if n502 == len(state["locations"]) else 1


def down(d):
    try:
        state = load(d)
    except (FileNotFoundError, ValueError):
        return
    ngx = state.get("nginx")
    if ngx:
        n = harness.Nginx(d, [], port=ngx["port"])
        n.master_pid = ngx["master_pid"] if harness.pid_alive(ngx["master_pid"]) else None
        try:
            n.stop()
        except Failure as e:
            sys.stderr.write("demo: %s\n" % e)
    for loc in state["locations"]:
        pid = loc.get("pid")
        if pid and harness.pid_alive(pid) and is_our_upstream(pid):
            os.kill(pid, signal.SIGKILL)
            harness.wait_until(lambda: not harness.pid_alive(pid), 5, "upstream %d to exit" % pid)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("up", "fire", "down"):
        sys.stderr.write(__doc__)
        return 2
    cmd, d = sys.argv[1], os.path.abspath(sys.argv[2])
    try:
        return {"up": up, "fire": fire, "down": down}[cmd](d) or 0
    except Failure as e:
        sys.stderr.write("demo.py %s: %s\n" % (cmd, e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
