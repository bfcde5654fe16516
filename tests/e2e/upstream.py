#!/usr/bin/python3
"""A real upstream HTTP/1.x server with fault modes, for n502trace's e2e tests.

    upstream.py (--listen HOST:PORT | --unix PATH) --mode MODE

Prints "LISTENING <pid>" once listening and "REQUEST <pid>" once it has read
the headers of a request (both flushed), then acts out MODE:

  ok     200 with a small body, Connection: close
  close  close without sending anything (a FIN)
  reset  SO_LINGER {on, 0} then close (a RST)
  hang   never answer; keep the socket open
  segv   a real SIGSEGV raised by the kernel (a read of address 0)
  exit   os._exit(3) while still holding the connection
  oom    allocate and touch memory until killed (run it in a small memory cgroup)

Connections are served one after another in this one process (no fork, no
threads), so the pid that accepted the connection is the pid that faults.
Standard library only; runs under Debian's /usr/bin/python3.
"""
import argparse
import ctypes
import os
import resource
import socket
import struct
import sys

MODES = ("ok", "close", "reset", "hang", "segv", "exit", "oom")


def say(word):
    sys.stdout.write("%s %d\n" % (word, os.getpid()))
    sys.stdout.flush()


def read_headers(conn):
    """Read until the end of the request headers. Returns False on EOF first."""
    buf = b""
    while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
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


def serve(lsock, mode):
    held = []  # connections kept open by "hang"
    while True:
        conn, _ = lsock.accept()
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
            conn.close()
        elif mode == "hang":
            held.append(conn)
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
    args = ap.parse_args()

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
        os.chmod(args.unix, 0o666)  # Nginx workers run as www-data
    lsock.listen(64)
    say("LISTENING")
    serve(lsock, args.mode)


if __name__ == "__main__":
    main()
