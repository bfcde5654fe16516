#!/usr/bin/python3
"""More upstream connections at once than the kernel side's socket tables
hold: n502trace --tracking full --table-entries 1024, and 1,100 requests that
an upstream takes and never answers, each an upstream connection held open
(Nginx's end alone is more entries than a table holds). The tables forget
their oldest entries to make room: n502trace must say so within seconds
(warning map_full), count them in its summary, and when the upstream is then
killed, explain the connections it still follows (upstream_killed), mark
every verdict as possibly missing evidence, never a confident wrong answer,
and match every access-log 502 to its error line's verdict, however long
those took. Must run as root.

    table_full.py --bin build/n502trace
"""
import argparse
import os
import resource
import signal
import socket
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check  # noqa: E402

TABLE = 1024
HELD = 1100  # requests held open at once: more connections than TABLE


def scenario(h, binary):
    clients = []
    h.on_close("the clients' sockets", lambda: [c.close() for c in clients])
    port = harness.free_port()
    nginx = h.start_nginx([("/", "http://127.0.0.1:%d" % port)], workers=1, worker_connections=4096)
    up = h.start_upstream("hang", port=port)
    tool = h.start_tool(binary, args=[
        "--tracking", "full", "--table-entries", str(TABLE), "--max-verdicts-per-sec", "0"])
    for i in range(HELD):
        c = socket.create_connection(("127.0.0.1", nginx.port), timeout=30)
        c.sendall(b"GET /held/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % i)
        clients.append(c)
    up.out.wait_for(lambda: sum(1 for _, t in up.out.lines if t.startswith("REQUEST")) >= HELD or None,
                    60, "the upstream holding %d requests" % HELD)
    harness.log("%d requests held by the upstream (pid %d)" % (HELD, up.pid))
    _, w = tool.wait_record("warning", pred=lambda w: w.get("code") == "map_full", timeout=15)
    harness.log("warning: %s" % w["message"])
    check("forgotten" in w["message"] and "--table-entries" in w["message"],
          "map_full does not say the entries were forgotten, or what raises the size: %r" % w["message"])
    # (each warning counts what is new since the one before: a look while
    # the connections were still being made may have found part of it)
    total = harness.wait_until(
        lambda: (lambda n: n if n >= HELD - TABLE else None)(
            sum(x.get("count", 0) for x in tool.records("warning") if x.get("code") == "map_full")),
        15, "map_full warnings counting at least %d entries" % (HELD - TABLE))
    harness.log("map_full warnings count %d entries" % total)

    # The upstream dies with every request: a 502 for each.
    os.kill(up.pid, signal.SIGKILL)
    statuses = []
    for c in clients:
        data = b""
        while b"\r\n" not in data:
            chunk = c.recv(256)
            if not chunk:
                break
            data += chunk
        statuses.append(data.split(b" ", 2)[1] if data.startswith(b"HTTP/") else data[:20])
        c.close()
    clients.clear()
    bad = [st for st in statuses if st != b"502"]
    check(not bad, "%d responses were not 502, e.g. %r" % (len(bad), bad[:3]))
    lines = harness.wait_until(
        lambda: (lambda n: n if n >= HELD else None)(
            sum(1 for l in nginx.read_error_log().splitlines() if "prematurely closed" in l)),
        20, "Nginx's %d error lines" % HELD)
    harness.wait_until(lambda: len(tool.records("verdict")) >= lines, 20, "%d verdicts" % lines)
    tool.stop()
    verdicts = tool.records("verdict")
    by_cause = {}
    for v in verdicts:
        by_cause[v.get("cause")] = by_cause.get(v.get("cause"), 0) + 1
    harness.log("verdicts by cause: %r" % by_cause)
    check(len(verdicts) == lines, "%d verdicts for %d error lines" % (len(verdicts), lines))
    killed = [v for v in verdicts if v.get("cause") == "upstream_killed"]
    other = [v for v in verdicts if v.get("cause") not in ("upstream_killed", "unknown")]
    check(not other, "a forgotten connection got a cause of its own: %r" % other[:1])
    check(killed, "no verdict names the kill: the connections still followed were not explained")
    check(all(v.get("upstream_pid") == up.pid for v in killed), "an upstream_killed verdict names another pid")
    unsure = [v for v in verdicts if not any("a kernel table was full" in n for n in v.get("notes", []))]
    check(not unsure, "%d verdicts do not say evidence may be missing, e.g. %r" % (len(unsure), unsure[:1]))
    summary = tool.records("summary")[-1]
    harness.log("summary: %d events, %d lost, %d table entries not made or forgotten" % (
        summary.get("events"), summary.get("events_lost"), summary.get("map_full")))
    check(summary.get("map_full", 0) >= HELD - TABLE, "summary map_full %r, want at least %d" % (
        summary.get("map_full"), HELD - TABLE))
    check(summary.get("events_lost") == 0, "%r kernel events lost" % summary.get("events_lost"))
    # Each access-log 502 found its error line's verdict, however long
    # those took (a verdict without kernel evidence waits its grace).
    check(summary.get("access_lines") == HELD and summary.get("access_only") == 0,
          "access log: %r 502s read, %r without their error-log verdicts" % (
              summary.get("access_lines"), summary.get("access_only")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    args = ap.parse_args()
    # Our sockets, the upstream's (inherited) and Nginx's (worker_rlimit_nofile).
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
    return harness.run_single("table_full", lambda h: scenario(h, os.path.abspath(args.bin)))


if __name__ == "__main__":
    sys.exit(main())
