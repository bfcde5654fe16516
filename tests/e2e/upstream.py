#!/usr/bin/python3
"""A real upstream HTTP/1.x server with fault modes, for n502trace's e2e tests.

    upstream.py (--listen HOST:PORT | --unix PATH) --mode MODE

Prints "LISTENING <pid>" once listening and "REQUEST <pid>" once it has read
the headers of a request (both flushed), then acts out MODE:

  ok     200 with a small body, Connection: close
  close  close without sending anything (a FIN)
  reset  SO_LINGER {on, 0} then close (a RST)
  hang   never answer; keep the socket open
  banner_hang  send the start of a response ("HTTP/1.1 200 OK\r\n") as soon as the
         connection is accepted, before reading the request, then never finish it
         (a server that speaks first: its first read comes after it has sent)
  segv   a real SIGSEGV raised by the kernel (a read of address 0)
  exit   os._exit(3) while still holding the connection
  oom    allocate and touch memory until killed (run it in a small memory cgroup)
  noaccept  listen (backlog --backlog, default 0 here) and never accept
  bigheader  answer with a 16 KiB response header, then keep the connection open
  drain  as ok; on SIGTERM it closes its listening socket ("UNLISTENED <pid>") and
         lives on (a graceful stop draining its last requests)
  ka_once    HTTP/1.1 keep-alive: the first request of each connection gets a 200,
             later ones are read and never answered (kill it meanwhile)
  ka_close   HTTP/1.1 keep-alive 200s on any number of connections at once; a
             connection idle for 300 ms is closed ("IDLE_CLOSED <pid>" once closed)

Requests need not be HTTP: a uwsgi packet (first byte 0: 4-byte header with a
little-endian vars size) is read whole, and so is an HTTP/2 prior-knowledge
request (the preface, then frames until one with END_STREAM), so that the
receive queue is empty when REQUEST is printed (a later close sends a FIN).

  --sock-mode OCTAL  chmod of the unix socket file after bind (default 0666)
  --backlog N        listen() backlog (default 64; 0 for noaccept unless given)
  --reset-when-asleep  reset: send the RST only once every process holding the
         other end of the connection sleeps (all its threads in state S). A task
         holding its socket locked (in send() or recv()) is running, not asleep:
         the RST is then taken in softirq, never from the socket's backlog in the
         owner's own context, which is what a busy single CPU gives otherwise.

Connections are served one after another in this one process (no fork, no
threads), so the pid that accepted the connection is the pid that faults.
Standard library only; runs under Debian's /usr/bin/python3.
"""
import argparse
import select
import ctypes
import os
import resource
import signal
import socket
import struct
import sys
import time

MODES = ("ok", "close", "reset", "hang", "banner_hang", "segv", "exit", "oom", "noaccept", "bigheader", "ka_close",
         "ka_once", "churn", "drain")


class Draining(Exception):
    """SIGTERM in mode drain."""


def say(word):
    sys.stdout.write("%s %d\n" % (word, os.getpid()))
    sys.stdout.flush()


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def request_complete(buf):
    """True once buf holds a whole request: HTTP/1.x headers, a uwsgi packet,
    or an HTTP/2 prior-knowledge request up to a frame with END_STREAM."""
    if buf[:1] == b"\0":  # uwsgi: modifier1 0, u16le datasize, modifier2
        return len(buf) >= 4 and len(buf) >= 4 + struct.unpack_from("<H", buf, 1)[0]
    if buf.startswith(H2_PREFACE[:len(buf)]) and len(buf) <= len(H2_PREFACE):
        return False  # (the start of) the HTTP/2 preface
    if buf.startswith(H2_PREFACE):
        pos = len(H2_PREFACE)
        while len(buf) >= pos + 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            ftype, flags = buf[pos + 3], buf[pos + 4]
            if len(buf) < pos + 9 + length:
                return False
            if ftype in (0x0, 0x1) and flags & 0x1:  # DATA/HEADERS with END_STREAM
                return True
            pos += 9 + length
        return False
    return b"\r\n\r\n" in buf or b"\n\n" in buf


def read_headers(conn):
    """Read until the end of the request (see request_complete). Returns False on EOF first."""
    buf = b""
    while not request_complete(buf):
        try:
            chunk = conn.recv(65536)
        except OSError:
            return False
        if not chunk:
            return False
        buf += chunk
        if len(buf) > 1 << 20:
            break
    return True


def proc_net_addr(family, addr):
    """addr (host, port) as /proc/net/tcp{,6} writes it: each 32-bit word of
    the address in host byte order, in hex, then the port."""
    raw = socket.inet_pton(family, addr[0])
    words = struct.unpack("=%dI" % (len(raw) // 4), raw)
    return "".join("%08X" % w for w in words) + ":%04X" % addr[1]


def peer_pids(conn):
    """The processes holding the other end of conn (a TCP connection on this
    host, in this network namespace), found by its inode in /proc/net/tcp{,6}."""
    table = "/proc/net/tcp6" if conn.family == socket.AF_INET6 else "/proc/net/tcp"
    local = proc_net_addr(conn.family, conn.getpeername()[:2])
    remote = proc_net_addr(conn.family, conn.getsockname()[:2])
    inode = None
    with open(table) as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if cols[1] == local and cols[2] == remote:
                inode = cols[9]
    if not inode or inode == "0":
        return set()
    want = "socket:[%s]" % inode
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir("/proc/%s/fd" % pid)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink("/proc/%s/fd/%s" % (pid, fd)) == want:
                    pids.add(int(pid))
                    break
            except OSError:
                pass
    return pids


def asleep(pid):
    """Every thread of pid sleeps (state S); a gone pid counts as asleep."""
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return True
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "S":
            return False
    return True


def wait_peers_asleep(conn, timeout=5.0):
    """Until every process holding conn's other end sleeps (see
    --reset-when-asleep); says PEER_BUSY on stderr if that takes too long."""
    pids = peer_pids(conn)
    if not pids:
        sys.stderr.write("PEER_UNKNOWN: no process on this host holds the other end of %r\n" % (conn.getpeername(),))
        return
    deadline = time.monotonic() + timeout
    while not all(asleep(p) for p in pids):
        if time.monotonic() > deadline:
            sys.stderr.write("PEER_BUSY: %s still not asleep after %.0fs\n" % (sorted(pids), timeout))
            return
        time.sleep(0.001)


def crash_segv():
    # No core file: core_pattern may be a plain "core" in the cwd, or a slow
    # pipe helper. The process still dies by SIGSEGV (exit_signal 11).
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    ctypes.string_at(0)  # reads address 0: the kernel sends SIGSEGV
    os._exit(99)  # not reached


def eat_memory():
    hoard = []
    while True:
        # bytes * n writes every byte, so every page is really touched.
        hoard.append(b"\x5a" * (4 << 20))


KA_IDLE = 0.3  # ka_close: seconds of idleness after which a connection is closed


def serve_keepalive(lsock, once=False):
    """ka_close: HTTP/1.1 keep-alive on any number of connections; a connection
    idle for KA_IDLE seconds after a response is closed by this process.
    once (ka_once): connections are never closed for idleness, and only the
    first request of each is answered; later ones are read and left waiting."""
    conns = {}  # socket -> [buffer, idle since (monotonic) or None while reading]
    answered = set()
    while True:
        now = time.monotonic()
        timeout = None
        for c, (buf, since) in list(conns.items()):
            if since is not None and not once:
                left = since + KA_IDLE - now
                if left <= 0:
                    c.close()
                    del conns[c]
                    say("IDLE_CLOSED")
                    continue
                timeout = left if timeout is None else min(timeout, left)
        ready, _, _ = select.select([lsock] + list(conns), [], [], timeout)
        for s in ready:
            if s is lsock:
                conn, _ = lsock.accept()
                conns[conn] = [b"", None]
                continue
            try:
                chunk = s.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                s.close()
                del conns[s]
                continue
            st = conns[s]
            st[0] += chunk
            st[1] = None
            while b"\r\n\r\n" in st[0]:
                _, st[0] = st[0].split(b"\r\n\r\n", 1)
                say("REQUEST")
                if once and s in answered:
                    continue
                answered.add(s)
                body = b"hello from upstream %d\n" % os.getpid()
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                          b"Content-Length: %d\r\nConnection: keep-alive\r\n\r\n" % len(body) + body)
                st[1] = time.monotonic()


PR_SET_PDEATHSIG = 1


def serve_churn(lsock, workers=4):
    """A process per request (CGI-style): the parent keeps `workers` children,
    each accepts ONE connection, answers it and exits. A request for /hang
    makes its child print REQUEST <its pid> and wait instead."""
    children = set()
    parent = os.getpid()
    while True:
        while len(children) < workers:
            pid = os.fork()
            if pid == 0:
                # Killed with the parent (the test kills only the pid it
                # started): no child outlives the test, waiting in accept.
                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                if os.getppid() != parent:
                    os._exit(0)
                conn, _ = lsock.accept()
                first = conn.recv(65536, socket.MSG_PEEK).split(b"\r\n", 1)[0]
                if not read_headers(conn):
                    os._exit(0)
                if b" /hang" in first:
                    say("REQUEST")
                    while True:
                        signal.pause()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
                conn.close()
                os._exit(0)
            children.add(pid)
        pid, _ = os.wait()
        children.discard(pid)


def serve(lsock, mode, reset_when_asleep=False):
    if mode == "drain":
        def on_term(signum, frame):
            raise Draining()
        signal.signal(signal.SIGTERM, on_term)
        try:
            serve(lsock, "ok")
        except Draining:
            lsock.close()
            say("UNLISTENED")
            while True:
                signal.pause()
    if mode == "churn":
        serve_churn(lsock)
    if mode == "noaccept":
        while True:
            signal.pause()
    if mode == "ka_close":
        serve_keepalive(lsock)
    if mode == "ka_once":
        serve_keepalive(lsock, once=True)
    held = []  # connections kept open by "hang"
    while True:
        conn, _ = lsock.accept()
        if mode == "banner_hang":
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
        if not read_headers(conn):
            conn.close()
            continue
        say("REQUEST")
        if mode == "ok":
            body = b"hello from upstream %d\n" % os.getpid()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\n"
                b"Content-Type: text/plain\r\n"
                b"Content-Length: %d\r\n"
                b"Connection: close\r\n\r\n" % len(body) + body
            )
            conn.close()
        elif mode == "close":
            conn.close()
        elif mode == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if reset_when_asleep:
                wait_peers_asleep(conn)
            conn.close()
        elif mode in ("hang", "banner_hang"):
            held.append(conn)
        elif mode == "bigheader":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Big: "
                         + b"x" * (16 << 10) + b"\r\nContent-Length: 0\r\n\r\n")
            held.append(conn)  # Nginx is the one to close
        elif mode == "segv":
            crash_segv()
        elif mode == "exit":
            os._exit(3)
        elif mode == "oom":
            eat_memory()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--listen", metavar="HOST:PORT")
    where.add_argument("--unix", metavar="PATH")
    ap.add_argument("--mode", required=True, choices=MODES)
    ap.add_argument("--sock-mode", default="0666", help="chmod of the unix socket file (octal)")
    ap.add_argument("--backlog", type=int, default=None, help="listen() backlog")
    ap.add_argument("--reset-when-asleep", action="store_true",
                    help="reset: the RST once every holder of the other end sleeps")
    ap.add_argument("--comm", help="the process's name (prctl PR_SET_NAME), up to 15 bytes, as given")
    args = ap.parse_args()
    if args.comm is not None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(15, ctypes.c_char_p(args.comm.encode("utf-8", "surrogateescape")), 0, 0, 0) != 0:
            sys.exit("prctl(PR_SET_NAME): errno %d" % ctypes.get_errno())

    if args.listen:
        host, _, port = args.listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        lsock = socket.socket(family, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((host, int(port)))
    else:
        try:
            os.unlink(args.unix)
        except FileNotFoundError:
            pass
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(args.unix)
        os.chmod(args.unix, int(args.sock_mode, 8))  # 0666: Nginx workers run as www-data
    backlog = args.backlog if args.backlog is not None else (0 if args.mode == "noaccept" else 64)
    lsock.listen(backlog)
    say("LISTENING")
    serve(lsock, args.mode, args.reset_when_asleep)


if __name__ == "__main__":
    main()
