// Kernel tests: the real BPF skeleton, loaded and attached, observing real
// syscalls made by this test and its children. Only events of our own pids
// are looked at: the rest of the machine makes the same syscalls. Needs root.
#include <algorithm>
#include <arpa/inet.h>
#include <catch2/catch.hpp>
#include <cerrno>
#include <csignal>
#include <dirent.h>
#include <cstring>
#include <fcntl.h>
#include <functional>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include "decoder.hpp"
#include "loader.hpp"
#include "n502/events.h"
#include "timebase.hpp"

using namespace n502;

namespace {

struct Kernel {
    Loader loader;
    std::vector<Event> events;
    bool ok = false;
    std::string error;

    Kernel()
    {
        LoaderOptions opt;
        opt.ringbuf_bytes = 1u << 20;
        opt.capture_logs = true;
        if (!loader.load(opt, &error) || !loader.attach(&error))
            return;
        if (!loader.track_process(static_cast<uint32_t>(getpid()), N502_PROC_NGINX, &error))
            return;
        ok = loader.start_ring(
            [this](const void *d, size_t n) {
                auto e = decode(d, n);
                if (!e)
                    return;
                events.push_back(*e);
                // A connection's story, then the events it stands for.
                if (e->type == N502_EV_CONN)
                    for (Event &x : expand_story(*e))
                        events.push_back(std::move(x));
            },
            &error);
    }

    size_t from = 0; // events before this index belong to earlier cases

    // From now on only newer events are looked at: a socket address of an
    // earlier case may be reused by this one.
    void mark()
    {
        loader.consume();
        from = events.size();
    }

    // Drains events until pred holds for one of ours, or timeout_ms pass.
    const Event *wait_for(const std::function<bool(const Event &)> &pred, uint64_t timeout_ms = 5000)
    {
        uint64_t deadline = boot_now_ns() + timeout_ms * 1'000'000ULL;
        size_t seen = from;
        for (;;) {
            loader.consume();
            for (; seen < events.size(); seen++)
                if (pred(events[seen]))
                    return &events[seen];
            if (boot_now_ns() > deadline)
                return nullptr;
            pollfd p{loader.ring_epoll_fd(), POLLIN, 0};
            poll(&p, 1, 50);
        }
    }
};

Kernel &kernel()
{
    static Kernel k;
    if (!k.ok)
        FAIL("loading the BPF programs failed: " << k.error);
    k.mark();
    return k;
}

uint32_t self() { return static_cast<uint32_t>(getpid()); }

// A listening TCP socket on 127.0.0.1, ephemeral port.
int tcp_listener(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a)) == 0);
    REQUIRE(listen(fd, 16) == 0);
    socklen_t len = sizeof(a);
    getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len);
    *port = ntohs(a.sin_port);
    return fd;
}

int tcp_connect(uint16_t port, bool nonblock)
{
    int fd = socket(AF_INET, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a));
    return fd;
}

// Until every thread of pid sleeps (state S), up to 5 s; false if it did
// not. A task that holds a socket locked (in send(), recv(), connect()) is
// running, not asleep: a packet sent to such a socket from now on is taken
// in softirq, not from its backlog in its owner's context (which a busy
// single CPU gives otherwise, the owner preempted with the lock held).
bool wait_asleep(pid_t pid)
{
    for (int i = 0; i < 5000; i++) {
        bool all = true;
        std::string dir = "/proc/" + std::to_string(pid) + "/task";
        DIR *d = opendir(dir.c_str());
        if (!d)
            return true; // gone
        while (dirent *t = readdir(d)) {
            if (t->d_name[0] == '.')
                continue;
            std::string stat = dir + "/" + t->d_name + "/stat", text;
            FILE *f = fopen(stat.c_str(), "r");
            char buf[512];
            if (f && fgets(buf, sizeof(buf), f))
                text = buf;
            if (f)
                fclose(f);
            size_t paren = text.rfind(')');
            if (paren != std::string::npos && paren + 2 < text.size() && text[paren + 2] != 'S')
                all = false;
        }
        closedir(d);
        if (all)
            return true;
        usleep(1000);
    }
    return false;
}

// Forks a child that runs fn (then _exit(0)); a pipe tells when it is ready.
pid_t child(const std::function<void(int ready_fd)> &fn, int *ready_read)
{
    int p[2];
    REQUIRE(pipe(p) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        fn(p[1]);
        _exit(0);
    }
    close(p[1]);
    *ready_read = p[0];
    return pid;
}

// Forks an upstream that listens (its port is the first thing on the ready
// pipe), accepts one connection, sends `first` if given, reads the parent's
// bytes, says "r", then reads until the parent closes and closes.
pid_t one_request_upstream(uint16_t *port, int *ready_read, const char *first)
{
    return child(
        [=](int ready) {
            int l = tcp_listener(port);
            (void)!write(ready, port, sizeof(*port));
            int c = accept(l, nullptr, nullptr);
            if (first)
                (void)!write(c, first, strlen(first));
            char buf[16];
            (void)!read(c, buf, sizeof(buf)); // the parent's bytes
            (void)!write(ready, "r", 1);
            (void)!read(c, buf, sizeof(buf)); // until the parent closes
            close(c);
        },
        ready_read);
}

// Starts l's ring buffer, every record decoded into out.
bool ring_into(Loader &l, std::vector<Event> &out, std::string *error)
{
    return l.start_ring(
        [&out](const void *d, size_t n) {
            if (auto e = decode(d, n))
                out.push_back(*e);
        },
        error);
}

// Options for a test's own loader: a 64 KiB ring buffer, adaptive tracking when asked.
LoaderOptions own_options(bool adaptive = false)
{
    LoaderOptions opt;
    opt.ringbuf_bytes = 1u << 16;
    opt.adaptive = adaptive;
    return opt;
}

void load_attach(Loader &l, const LoaderOptions &opt)
{
    std::string error;
    REQUIRE(l.load(opt, &error));
    REQUIRE(l.attach(&error));
}

// A loader of its own in adaptive tracking (lean), this process taken for
// Nginx, its events into evs.
void lean_as_nginx(Loader &l, std::vector<Event> &evs)
{
    load_attach(l, own_options(true));
    std::string error;
    REQUIRE(l.track_process(self(), N502_PROC_NGINX, &error));
    REQUIRE(ring_into(l, evs, &error));
}

void wait_ready(int fd)
{
    char c;
    REQUIRE(read(fd, &c, 1) == 1);
}

} // namespace

TEST_CASE("TCP: no syscall tracepoint is attached unless unix sockets are asked for", "[kernel]")
{
    Loader l;
    load_attach(l, own_options());
    std::string error;
    size_t syscall_hooks = 0;
    for (const auto &p : l.probes()) {
        bool syscall = p.hook.rfind("tracepoint/syscalls/", 0) == 0;
        syscall_hooks += syscall;
        CHECK(p.attached == !syscall);
    }
    CHECK(syscall_hooks >= 7); // connect x2, accept x2, close, listen x2 (and write)
    CHECK_FALSE(l.unix_sockets_enabled());
    REQUIRE(l.enable_unix_sockets(&error));
    CHECK(l.unix_sockets_enabled());
    for (const auto &p : l.probes())
        CHECK(p.attached == (p.program != "handle_sys_enter_write"));
}

TEST_CASE("--btf: the hooks attach as raw tracepoints, typed by the BTF file, and see the same events", "[kernel]")
{
    // The kernel's own BTF, copied to a file, stands in for a BTFHub file.
    std::string copy = "/tmp/n502-kernel-test-" + std::to_string(getpid()) + ".btf";
    {
        FILE *in = fopen("/sys/kernel/btf/vmlinux", "rb");
        REQUIRE(in);
        FILE *out = fopen(copy.c_str(), "wb");
        REQUIRE(out);
        char buf[1 << 16];
        size_t n;
        while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
            REQUIRE(fwrite(buf, 1, n, out) == n);
        fclose(in);
        fclose(out);
    }
    Loader l;
    LoaderOptions opt = own_options();
    opt.btf_path = copy;
    load_attach(l, opt);
    std::string error;
    unlink(copy.c_str());
    size_t raw = 0;
    for (const auto &p : l.probes()) {
        CHECK(p.hook.rfind("tp_btf/", 0) != 0);
        if (p.hook.rfind("raw_tp/", 0) == 0) {
            raw++;
            CHECK(p.attached);
        }
    }
    CHECK(raw == 10);
    REQUIRE(l.track_process(self(), N502_PROC_NGINX, &error));
    std::vector<Event> got;
    REQUIRE(ring_into(l, got, &error));
    uint16_t port = 0;
    int lfd = tcp_listener(&port);
    int fd = tcp_connect(port, false);
    close(fd); // its story comes when we close it
    bool seen = false;
    for (int i = 0; i < 100 && !seen; i++) {
        l.consume();
        for (const auto &e : got)
            seen = seen || (e.type == N502_EV_CONN && e.owner == self() && e.dst.port == port && e.story.est_ns);
        if (!seen) {
            pollfd pf{l.ring_epoll_fd(), POLLIN, 0};
            poll(&pf, 1, 50);
        }
    }
    CHECK(seen);
    close(lfd);

    // A file that is not BTF: a clear error.
    Loader bad;
    opt.btf_path = "/etc/hostname";
    CHECK_FALSE(bad.load(opt, &error));
    CHECK(error.find("--btf /etc/hostname: not a readable BTF file") != std::string::npos);
}

TEST_CASE("TCP connect, listen and the upstream's first read are attributed to their processes", "[kernel]")
{
    Kernel &k = kernel();
    uint16_t port = 0;
    int rd;
    pid_t up = one_request_upstream(&port, &rd, nullptr);
    REQUIRE(read(rd, &port, sizeof(port)) == sizeof(port));
    uint32_t upid = static_cast<uint32_t>(up);

    // listen() is CLOSE -> LISTEN, in the listener's context.
    const Event *l = k.wait_for([&](const Event &e) { return e.type == N502_EV_LISTEN && e.tgid == upid; });
    REQUIRE(l);
    CHECK(l->src.port == port);
    CHECK(l->backlog == 16);

    // connect() is CLOSE -> SYN_SENT in our context; the upstream reads.
    int fd = tcp_connect(port, false);
    REQUIRE(write(fd, "hello", 5) == 5);
    wait_ready(rd);
    // A connection that looks normal emits nothing while it lasts: its story
    // is kept in the kernel (no connect event for TCP either).
    auto ours = [&](const Event &e) {
        return (e.type == N502_EV_CONN || e.type == N502_EV_STATE || e.type == N502_EV_CONNECT) &&
               e.owner == self() && e.dst.port == port;
    };
    CHECK_FALSE(k.wait_for(ours, 200));
    uint64_t t_closed = boot_now_ns();
    close(fd);
    // Nginx's close() (ESTABLISHED -> FIN_WAIT1) emits the story whole.
    const Event *cp = k.wait_for([&](const Event &e) {
        return e.type == N502_EV_CONN && e.owner == self() && e.dst.port == port;
    });
    REQUIRE(cp);
    const Event conn = *cp; // (later waits grow the vector)
    CHECK(conn.oldstate == 1);
    CHECK(conn.newstate == 4 /* FIN_WAIT1 */);
    CHECK(conn.story.est_ns > 0);
    CHECK(conn.story.est_ns < t_closed);
    CHECK(conn.story.fin_ns == 0);
    CHECK(conn.story.up_sk != 0);
    CHECK(conn.story.up_oldstate == 0); // the upstream had not closed yet
    uint64_t sk = conn.sk;
    CHECK_FALSE(k.wait_for([&](const Event &e) { return e.type == N502_EV_CONNECT && e.tgid == self(); }, 0));
    // The first read named the upstream: replayed as its accept, at that time.
    const Event *ap = k.wait_for([&](const Event &e) { return e.type == N502_EV_ACCEPT && e.peer_sk == sk; });
    REQUIRE(ap);
    const Event acc = *ap;
    CHECK(acc.tgid == upid);
    CHECK(acc.took == N502_TOOK_READ);
    CHECK_FALSE(acc.exiting);
    CHECK(acc.src.port == port);
    CHECK(acc.sk == conn.story.up_sk);
    CHECK(acc.ts > conn.story.est_ns);
    CHECK(acc.ts < t_closed);
    const Event *est = k.wait_for([&](const Event &e) {
        return e.type == N502_EV_STATE && e.sk == sk && e.newstate == 1 /* ESTABLISHED */;
    });
    REQUIRE(est);
    CHECK(est->sock_role == N502_SOCK_NGINX);
    CHECK(est->ts == conn.story.est_ns);

    int status;
    waitpid(up, &status, 0);
    // After Nginx closed first, the connection goes event by event: the
    // upstream's end leaving ESTABLISHED (CLOSE_WAIT) is seen, attributed to
    // its owner although it ran in softirq.
    const Event *cl = k.wait_for([&](const Event &e) {
        return e.type == N502_EV_STATE && e.owner == upid && e.sock_role == N502_SOCK_UPSTREAM &&
               e.oldstate == 1 && e.newstate == 8 /* CLOSE_WAIT */;
    });
    CHECK(cl);
    close(rd);
}

TEST_CASE("TCP: a server that sends before it reads is named by its close, not by its read", "[kernel]")
{
    // The receive hook lets go of any socket that has sent payload (every
    // read after the first of a request/response server) before a lookup.
    Kernel &k = kernel();
    uint16_t port = 0;
    int rd;
    pid_t up = one_request_upstream(&port, &rd, "banner"); // speaks first
    REQUIRE(read(rd, &port, sizeof(port)) == sizeof(port));
    uint32_t upid = static_cast<uint32_t>(up);
    int fd = tcp_connect(port, false);
    REQUIRE(write(fd, "hello", 5) == 5);
    char banner[16];
    REQUIRE(read(fd, banner, sizeof(banner)) == 6); // (unread data would make our close a RST)
    wait_ready(rd);
    close(fd);
    const Event *cp = k.wait_for([&](const Event &e) {
        return e.type == N502_EV_CONN && e.owner == self() && e.dst.port == port;
    });
    REQUIRE(cp);
    const Event conn = *cp;
    CHECK(conn.story.up_sk != 0);
    CHECK(conn.story.up_tgid == 0); // its read came after its write: not named there
    int status;
    waitpid(up, &status, 0);
    const Event *ap = k.wait_for([&](const Event &e) {
        return e.type == N502_EV_ACCEPT && e.peer_sk == conn.sk && e.took == N502_TOOK_CLOSE;
    });
    REQUIRE(ap);
    CHECK(ap->tgid == upid);
    CHECK(ap->sk == conn.story.up_sk);
    CHECK_FALSE(k.wait_for([&](const Event &e) {
        return e.type == N502_EV_ACCEPT && e.peer_sk == conn.sk && e.took == N502_TOOK_READ;
    }, 0));
    close(rd);
}

TEST_CASE("TCP: a connection that ends normally is one event, its story", "[kernel]")
{
    Kernel &k = kernel();
    uint16_t port = 0;
    int rd;
    pid_t up = child(
        [&](int ready) {
            int l = tcp_listener(&port);
            (void)!write(ready, &port, sizeof(port));
            for (int i = 0; i < 2; i++) {
                int c = accept(l, nullptr, nullptr);
                char buf[16];
                (void)!read(c, buf, sizeof(buf));
                (void)!write(c, "response", 8);
                close(c); // the upstream closes first, as after an HTTP/1.0 response
            }
            pause();
        },
        &rd);
    REQUIRE(read(rd, &port, sizeof(port)) == sizeof(port));
    uint32_t upid = static_cast<uint32_t>(up);
    auto exchange = [&] {
        int fd = tcp_connect(port, false);
        REQUIRE(write(fd, "request", 7) == 7);
        char buf[16];
        REQUIRE(read(fd, buf, sizeof(buf)) == 8);
        REQUIRE(read(fd, buf, sizeof(buf)) == 0); // its FIN
        close(fd);
        const Event *cp = k.wait_for([&](const Event &e) {
            return e.type == N502_EV_CONN && e.owner == self() && e.dst.port == port;
        });
        REQUIRE(cp);
        Event conn = *cp;
        k.mark();
        return conn;
    };
    // The process's first connection announces it at once (user space reads
    // its cgroups while it lives) ...
    Event first = exchange();
    CHECK(first.story.up_tgid == upid);
    CHECK((first.story.up_how & N502_TOOK_ANNOUNCED) != 0);
    CHECK(first.story.up_sk != 0);
    // ... later ones are told by the story alone.
    Event conn = exchange();
    CHECK(conn.oldstate == 9 /* LAST_ACK */);
    CHECK(conn.newstate == 7 /* CLOSE */);
    CHECK(conn.sk_err == 0);
    CHECK(conn.src.port == conn.story.sport); // released at CLOSE: the one read at ESTABLISHED
    CHECK(conn.src.port != 0);
    CHECK(conn.bytes_received == 9); // the response and the FIN's sequence number
    CHECK(conn.story.fin_ns > conn.story.est_ns);
    CHECK(conn.story.fin_bytes == 9);
    CHECK(conn.story.up_tgid == upid);
    CHECK(conn.story.up_how == N502_TOOK_READ); // not announced on its own
    CHECK(conn.story.up_oldstate == 1);
    CHECK(conn.story.up_newstate == 4 /* FIN_WAIT1: its own close */);
    CHECK(conn.story.up_leave_ns <= conn.story.fin_ns);
    char self_comm[32] = {};
    FILE *cf = fopen("/proc/self/comm", "r"); // (under qemu the tests run through ld.so)
    REQUIRE(cf);
    REQUIRE(fgets(self_comm, sizeof(self_comm), cf));
    fclose(cf);
    self_comm[strcspn(self_comm, "\n")] = 0;
    CHECK(conn.target_comm == self_comm);
    // Nothing else for this connection, from either end.
    kill(up, SIGKILL);
    int status;
    waitpid(up, &status, 0);
    REQUIRE(k.wait_for([&](const Event &e) { return e.type == N502_EV_EXIT && e.tgid == upid; }));
    size_t n = 0;
    for (size_t i = k.from; i < k.events.size(); i++) {
        const Event &e = k.events[i];
        if (e.type != N502_EV_EXIT && (e.sk == conn.sk || e.sk == conn.story.up_sk || e.peer_sk == conn.sk))
            n++;
    }
    CHECK(n == 0);
    close(rd);
}

TEST_CASE("TCP: an upstream killed before reading is named by its dying close", "[kernel]")
{
    Kernel &k = kernel();
    uint16_t port = 0;
    int rd;
    pid_t up = child(
        [&](int ready) {
            int l = tcp_listener(&port);
            (void)!write(ready, &port, sizeof(port));
            int c = accept(l, nullptr, nullptr);
            (void)c;
            (void)!write(ready, "a", 1);
            pause();
        },
        &rd);
    REQUIRE(read(rd, &port, sizeof(port)) == sizeof(port));
    uint32_t upid = static_cast<uint32_t>(up);
    int fd = tcp_connect(port, false);
    wait_ready(rd); // accepted
    REQUIRE(write(fd, "unread", 6) == 6);
    kill(up, SIGKILL);
    int status;
    waitpid(up, &status, 0);
    // The reset of its abortive close is abnormal: the story so far comes
    // first (emitted early: no transition of Nginx's end with it).
    const Event *cp = k.wait_for([&](const Event &e) {
        return e.type == N502_EV_CONN && e.owner == self() && e.dst.port == port;
    });
    REQUIRE(cp);
    const Event conn = *cp;
    CHECK(conn.newstate == 0);
    CHECK(conn.story.up_oldstate == 1);
    CHECK(conn.story.up_newstate == 7 /* CLOSE: an abort */);
    uint64_t sk = conn.sk;
    const Event *ap = k.wait_for([&](const Event &e) { return e.type == N502_EV_ACCEPT && e.peer_sk == sk; });
    REQUIRE(ap);
    const Event acc = *ap;
    CHECK(acc.tgid == upid);
    CHECK(acc.took == N502_TOOK_CLOSE);
    CHECK(acc.exiting);
    // Its exit came first (sched_process_exit runs before the files close).
    const Event *x = k.wait_for([&](const Event &e) { return e.type == N502_EV_EXIT && e.tgid == upid; });
    REQUIRE(x);
    CHECK(x->ts <= acc.ts);
    // Unread data: the close was an abort, a RST to Nginx.
    const Event *r = k.wait_for([&](const Event &e) { return e.type == N502_EV_RESET && e.sk == sk; });
    REQUIRE(r);
    CHECK(r->dir == N502_RST_RECEIVED);
    close(fd);
    close(rd);
}

TEST_CASE("a refused non-blocking connect shows ECONNREFUSED at SYN_SENT -> CLOSE", "[kernel]")
{
    Kernel &k = kernel();
    uint16_t port = 0;
    int l = tcp_listener(&port);
    close(l); // nothing listens there now
    int fd = tcp_connect(port, true);
    // A non-blocking connect in progress emits no connect event: the refusal
    // is the state change, with the socket's error.
    const Event *st = k.wait_for([&](const Event &e) {
        return e.type == N502_EV_STATE && e.owner == self() && e.dst.port == port && e.oldstate == 2 &&
               e.newstate == 7;
    });
    REQUIRE(st);
    uint64_t sk = st->sk;
    CHECK(st->sk_err == ECONNREFUSED);
    CHECK(st->owner == self());
    const Event *r = k.wait_for([&](const Event &e) { return e.type == N502_EV_RESET && e.sk == sk; });
    REQUIRE(r);
    CHECK(r->dir == N502_RST_RECEIVED);
    close(fd);
}

namespace {

// A non-blocking socket bound to 127.0.0.1, an ephemeral port (*port).
int bound_socket(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    REQUIRE(fd >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a)) == 0);
    socklen_t len = sizeof(a);
    REQUIRE(getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len) == 0);
    *port = ntohs(a.sin_port);
    return fd;
}

// fd (bound_socket) connects to its own address, where nothing listens: its
// SYN comes back to it and the kernel completes the connection to itself.
void connect_to_itself(int fd, uint16_t port)
{
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a));
    pollfd p{fd, POLLOUT, 0};
    REQUIRE(poll(&p, 1, 2000) == 1);
    int err = -1;
    socklen_t el = sizeof(err);
    REQUIRE(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0);
    REQUIRE(err == 0); // connected, to itself
}

void check_met_itself(const Event *e, uint16_t port, bool untracked)
{
    REQUIRE(e);
    CHECK(e->sock_role == N502_SOCK_NGINX);
    CHECK(e->untracked == untracked);
    // The SYN comes back through the socket's backlog, in our context; or in
    // ksoftirqd's, once connect() has returned (no owner: user space takes
    // the worker from the log line).
    CHECK((e->owner == self() || e->owner == 0));
    CHECK(e->src.port == port);
    CHECK(e->dst.port == port);
    CHECK(e->src.same_place(e->dst));
}

} // namespace

TEST_CASE("a connect to its own address meets itself: SYN_SENT -> SYN_RECV with one address at both ends",
          "[kernel]")
{
    auto met = [](uint16_t port) {
        return [port](const Event &e) {
            return e.type == N502_EV_STATE && e.oldstate == N502_TCP_SYN_SENT && e.newstate == N502_TCP_SYN_RECV &&
                   e.dst.port == port;
        };
    };
    SECTION("full tracking: the tracked socket's transition")
    {
        Kernel &k = kernel();
        uint16_t port = 0;
        int fd = bound_socket(&port);
        connect_to_itself(fd, port);
        check_met_itself(k.wait_for(met(port)), port, false);
        close(fd);
    }
    SECTION("adaptive tracking, lean: an anomaly on a watched port")
    {
        Loader l;
        std::vector<Event> evs;
        lean_as_nginx(l, evs);
        uint16_t port = 0;
        int fd = bound_socket(&port);
        l.watch_ports({port}, false);
        REQUIRE_FALSE(l.tracking_full());
        connect_to_itself(fd, port);
        l.consume();
        auto it = std::find_if(evs.begin(), evs.end(), met(port));
        check_met_itself(it == evs.end() ? nullptr : &*it, port, true);
        CHECK(l.tracking_full()); // an anomaly: every connection followed whole from now on
        // Its close, which nothing else would report (the socket has no
        // record in full tracking either), in our context.
        close(fd);
        const Event *closed = nullptr;
        for (int i = 0; i < 100 && !closed; i++) {
            l.consume();
            for (const Event &e : evs)
                if (e.type == N502_EV_STATE && e.dst.port == port && e.oldstate == N502_TCP_ESTABLISHED &&
                    e.newstate == N502_TCP_FIN_WAIT1)
                    closed = &e;
            if (!closed) {
                pollfd p{l.ring_epoll_fd(), POLLIN, 0};
                poll(&p, 1, 50);
            }
        }
        REQUIRE(closed);
        CHECK(closed->untracked);
        CHECK(closed->sock_role == N502_SOCK_NGINX);
        CHECK(closed->owner == self());
        CHECK(closed->src.same_place(closed->dst));
    }
}

TEST_CASE("an abortive close (SO_LINGER 0) is a RST seen on both ends", "[kernel]")
{
    Kernel &k = kernel();
    uint16_t port = 0;
    int rd;
    pid_t up = child(
        [&](int ready) {
            int l = tcp_listener(&port);
            (void)!write(ready, &port, sizeof(port));
            int c = accept(l, nullptr, nullptr);
            linger lg{1, 0};
            setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            close(c);
            pause();
        },
        &rd);
    REQUIRE(read(rd, &port, sizeof(port)) == sizeof(port));
    int fd = tcp_connect(port, false);
    uint32_t upid = static_cast<uint32_t>(up);
    const Event *c = k.wait_for([&](const Event &e) {
        return e.type == N502_EV_STATE && e.owner == self() && e.dst.port == port && e.oldstate == 2;
    });
    REQUIRE(c);
    uint64_t sk = c->sk;
    const Event *r = k.wait_for([&](const Event &e) { return e.type == N502_EV_RESET && e.sk == sk; });
    REQUIRE(r);
    CHECK(r->dir == N502_RST_RECEIVED);
    CHECK(r->owner == self());
    const Event *s = k.wait_for([&](const Event &e) {
        return e.type == N502_EV_RESET && e.owner == upid && e.dir == N502_RST_SENT;
    });
    CHECK(s);
    // The owner closed it without reading: that close named it.
    const Event *acc = k.wait_for([&](const Event &e) { return e.type == N502_EV_ACCEPT && e.peer_sk == sk; });
    REQUIRE(acc);
    CHECK(acc->tgid == upid);
    CHECK(acc->took == N502_TOOK_CLOSE);
    CHECK_FALSE(acc->exiting);
    kill(up, SIGKILL);
    int status;
    waitpid(up, &status, 0);
    close(fd);
    close(rd);
}

TEST_CASE("signals to tracked processes name the sender; exits carry the wait status", "[kernel]")
{
    Kernel &k = kernel();
    int rd;
    pid_t a = child([](int ready) { (void)!write(ready, "x", 1); pause(); }, &rd);
    wait_ready(rd);
    close(rd);
    uint32_t apid = static_cast<uint32_t>(a);
    // Forked from a tracked (Nginx-role) process: tracked through fork.
    const Event *f = k.wait_for([&](const Event &e) { return e.type == N502_EV_FORK && e.target == apid; });
    REQUIRE(f);
    CHECK(f->tgid == self());
    CHECK(f->role == N502_PROC_NGINX);

    kill(a, SIGKILL);
    int status;
    waitpid(a, &status, 0);
    const Event *s = k.wait_for([&](const Event &e) { return e.type == N502_EV_SIGNAL && e.target == apid; });
    REQUIRE(s);
    CHECK(s->sig == SIGKILL);
    CHECK(s->tgid == self());
    CHECK(s->code == 0); // SI_USER
    const Event *x = k.wait_for([&](const Event &e) { return e.type == N502_EV_EXIT && e.tgid == apid; });
    REQUIRE(x);
    CHECK((x->exit_code & 0x7f) == SIGKILL);

    pid_t b = child([](int) { _exit(3); }, &rd);
    close(rd);
    waitpid(b, &status, 0);
    const Event *y =
        k.wait_for([&](const Event &e) { return e.type == N502_EV_EXIT && e.tgid == static_cast<uint32_t>(b); });
    REQUIRE(y);
    CHECK(((y->exit_code >> 8) & 0xff) == 3);
}

TEST_CASE("a process's own SIGURG is not sent (Go's runtime sends itself many); another's is", "[kernel]")
{
    Kernel &k = kernel();
    int rd;
    pid_t a = child(
        [](int ready) {
            signal(SIGURG, SIG_IGN);
            for (int i = 0; i < 5; i++)
                kill(getpid(), SIGURG);
            (void)!write(ready, "x", 1);
            pause();
        },
        &rd);
    wait_ready(rd);
    close(rd);
    uint32_t apid = static_cast<uint32_t>(a);
    kill(a, SIGURG);
    kill(a, SIGWINCH); // ignored by default, but a graceful stop for Apache and Nginx: kept
    kill(a, SIGKILL);
    int status;
    waitpid(a, &status, 0);
    REQUIRE(k.wait_for([&](const Event &e) { return e.type == N502_EV_EXIT && e.tgid == apid; }));
    int own = 0, others = 0, winch = 0;
    for (size_t i = k.from; i < k.events.size(); i++) {
        const Event &e = k.events[i];
        if (e.type != N502_EV_SIGNAL || e.target != apid)
            continue;
        own += e.sig == SIGURG && e.tgid == apid;
        others += e.sig == SIGURG && e.tgid == self();
        winch += e.sig == SIGWINCH;
    }
    CHECK(own == 0);
    CHECK(others == 1);
    CHECK(winch == 1);
}

TEST_CASE("a real segfault is a self-generated SIGSEGV with a fault code", "[kernel]")
{
    Kernel &k = kernel();
    int rd;
    pid_t c = child(
        [](int) {
            signal(SIGSEGV, SIG_DFL); // (sanitizer builds install their own handler)
            // An unmapped, non-null address: a real fault that UBSan's null check does not intercept.
            // Read through a volatile so the compiler cannot see the constant (-Warray-bounds).
            static volatile uintptr_t unmapped = 8;
            volatile int *p = reinterpret_cast<volatile int *>(unmapped);
            *p = 1;
        },
        &rd);
    close(rd);
    int status;
    waitpid(c, &status, 0);
    uint32_t cpid = static_cast<uint32_t>(c);
    const Event *s = k.wait_for([&](const Event &e) { return e.type == N502_EV_SIGNAL && e.target == cpid; });
    REQUIRE(s);
    CHECK(s->sig == SIGSEGV);
    CHECK(s->tgid == cpid); // raised in the faulting process itself
    CHECK(s->code > 0);     // SEGV_MAPERR / SEGV_ACCERR
    const Event *x = k.wait_for([&](const Event &e) { return e.type == N502_EV_EXIT && e.tgid == cpid; });
    REQUIRE(x);
    CHECK((x->exit_code & 0x7f) == SIGSEGV);
}

TEST_CASE("unix stream connect and accept are linked through the peer socket", "[kernel]")
{
    Kernel &k = kernel();
    std::string uerr;
    REQUIRE(k.loader.enable_unix_sockets(&uerr));
    std::string path = "/tmp/n502-kernel-test-" + std::to_string(getpid()) + ".sock";
    unlink(path.c_str());
    int rd;
    pid_t up = child(
        [&](int ready) {
            int l = socket(AF_UNIX, SOCK_STREAM, 0);
            sockaddr_un a{};
            a.sun_family = AF_UNIX;
            std::strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
            bind(l, reinterpret_cast<sockaddr *>(&a), sizeof(a));
            listen(l, 8);
            (void)!write(ready, "x", 1);
            int c = accept(l, nullptr, nullptr);
            char buf[8];
            (void)!read(c, buf, sizeof(buf));
        },
        &rd);
    wait_ready(rd);
    close(rd);
    uint32_t upid = static_cast<uint32_t>(up);
    const Event *l = k.wait_for([&](const Event &e) { return e.type == N502_EV_LISTEN && e.tgid == upid; });
    REQUIRE(l);
    CHECK(l->src.str() == "unix:" + path);

    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
    REQUIRE(connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a)) == 0);
    const Event *c = k.wait_for([&](const Event &e) { return e.type == N502_EV_CONNECT && e.tgid == self() &&
                                                             e.dst.family == AF_UNIX; });
    REQUIRE(c);
    CHECK(c->ret == 0);
    CHECK(c->dst.str() == "unix:" + path);
    CHECK(c->peer_sk != 0);
    const Event *acc = k.wait_for([&](const Event &e) { return e.type == N502_EV_ACCEPT && e.tgid == upid; });
    REQUIRE(acc);
    CHECK(acc->sk == c->peer_sk);
    CHECK(acc->peer_sk == c->sk);
    close(fd);
    int status;
    waitpid(up, &status, 0);
    unlink(path.c_str());

    // A connect to a path that does not exist fails at once with ENOENT.
    int fd2 = socket(AF_UNIX, SOCK_STREAM, 0);
    std::string missing = path + ".missing";
    std::strncpy(a.sun_path, missing.c_str(), sizeof(a.sun_path) - 1);
    CHECK(connect(fd2, reinterpret_cast<sockaddr *>(&a), sizeof(a)) == -1);
    const Event *m = k.wait_for([&](const Event &e) { return e.type == N502_EV_CONNECT && e.tgid == self() &&
                                                             e.dst.path == missing; });
    REQUIRE(m);
    CHECK(m->ret == -ENOENT);
    close(fd2);
}

TEST_CASE("log capture: an Nginx process's writes to a captured pipe arrive whole, others do not", "[kernel]")
{
    Kernel &k = kernel();
    REQUIRE(k.ok);
    int captured[2], other[2];
    REQUIRE(pipe(captured) == 0);
    REQUIRE(pipe(other) == 0);
    struct stat st{};
    REQUIRE(fstat(captured[1], &st) == 0);
    std::string error;
    uint32_t dev = (static_cast<uint32_t>(major(st.st_dev)) << 20) | static_cast<uint32_t>(minor(st.st_dev));
    REQUIRE(k.loader.capture_file(dev, st.st_ino, &error));
    const std::string ignored = "not captured: another pipe\n";
    REQUIRE(write(other[1], ignored.data(), ignored.size()) == static_cast<ssize_t>(ignored.size()));
    const std::string line = "2026/11/23 05:00:00 [error] 7#7: *1 upstream prematurely closed connection\n";
    REQUIRE(write(captured[1], line.data(), line.size()) == static_cast<ssize_t>(line.size()));
    // A write longer than the capture limit is cut, and says by how much.
    std::string big(N502_LOG_MAX + 100, 'x');
    REQUIRE(fcntl(captured[1], F_SETPIPE_SZ, 1 << 16) >= 0);
    REQUIRE(write(captured[1], big.data(), big.size()) == static_cast<ssize_t>(big.size()));
    const Event *e = k.wait_for([&](const Event &ev) { return ev.type == N502_EV_LOG && ev.tgid == self() &&
                                                               ev.data == line; });
    REQUIRE(e);
    CHECK(e->ino == static_cast<uint64_t>(st.st_ino));
    CHECK(e->dev == dev);
    CHECK(e->fd == captured[1]);
    CHECK(e->cut == 0);
    const Event *b = k.wait_for([&](const Event &ev) { return ev.type == N502_EV_LOG && ev.cut > 0; });
    REQUIRE(b);
    CHECK(b->data.size() == N502_LOG_MAX);
    CHECK(b->cut == 100);
    for (const auto &ev : k.events)
        CHECK_FALSE((ev.type == N502_EV_LOG && ev.data == ignored));
    for (int fd : {captured[0], captured[1], other[0], other[1]})
        close(fd);
}

TEST_CASE("counters: events are counted and none were lost", "[kernel]")
{
    Kernel &k = kernel();
    k.loader.consume();
    KernelCounters c = k.loader.counters();
    CHECK(c.emitted > 0);
    CHECK(c.lost == 0);
    // The unix hooks were enabled and the log capture used by earlier cases.
    for (const auto &p : k.loader.probes())
        CHECK(p.attached);
}

TEST_CASE("a full ring buffer loses events, and every loss is counted", "[kernel]")
{
    // A second instance with a one-page ring that nobody reads.
    Loader small;
    LoaderOptions opt;
    opt.ringbuf_bytes = static_cast<uint32_t>(sysconf(_SC_PAGESIZE));
    std::string error;
    REQUIRE(small.load(opt, &error));
    REQUIRE(small.attach(&error));
    REQUIRE(small.track_process(self(), N502_PROC_NGINX, &error));
    // Each child gives a fork and an exit event (48 bytes + 8 header each):
    // 200 children cannot fit in one page.
    for (int i = 0; i < 200; i++) {
        pid_t c = fork();
        REQUIRE(c >= 0);
        if (c == 0)
            _exit(0);
        int status;
        waitpid(c, &status, 0);
    }
    KernelCounters c = small.counters();
    CHECK(c.lost > 0);
    CHECK(c.emitted > 0);
    CHECK(c.emitted + c.lost >= 400);
    // Nothing lost in the big ring of the main instance, which is read.
    Kernel &k = kernel();
    k.loader.consume();
    CHECK(k.loader.counters().lost == 0);
}

namespace {

// The cgroup v2 mount point ("" when there is none).
std::string cgroup2_root()
{
    std::string root;
    FILE *m = fopen("/proc/self/mounts", "r");
    char dev[256], dir[512], type[64];
    while (m && fscanf(m, "%255s %511s %63s %*[^\n]", dev, dir, type) == 3)
        if (std::string(type) == "cgroup2")
            root = dir;
    if (m)
        fclose(m);
    return root;
}

// Runs `program` (a path whose name is what the kernel calls the process)
// as `sh -c "true & wait"` in a child: one fork of its own. into: a cgroup
// directory to run it in ("": ours). listener: the child is tracked by it
// as a listener's child before it execs. Returns the child's pid once it ended.
pid_t exec_forking(const std::string &program, const std::string &into, Loader *listener = nullptr)
{
    int go[2];
    REQUIRE(pipe(go) == 0);
    pid_t c = fork();
    REQUIRE(c >= 0);
    if (c == 0) {
        char b;
        close(go[1]);
        if (read(go[0], &b, 1) != 1)
            _exit(89);
        if (!into.empty()) {
            FILE *f = fopen((into + "/cgroup.procs").c_str(), "w");
            if (!f || fprintf(f, "%d\n", getpid()) < 0 || fclose(f) != 0)
                _exit(90);
        }
        execl(program.c_str(), "sh", "-c", "true & wait", static_cast<char *>(nullptr));
        _exit(91);
    }
    close(go[0]);
    std::string error;
    if (listener)
        CHECK(listener->track_process(static_cast<uint32_t>(c), N502_PROC_LISTENER, &error));
    REQUIRE(write(go[1], "x", 1) == 1);
    close(go[1]);
    int status = 0;
    REQUIRE(waitpid(c, &status, 0) == c);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
    return c;
}

} // namespace

TEST_CASE("an Nginx that starts where a followed one ran is tracked from its exec", "[kernel]")
{
    std::string root = cgroup2_root();
    REQUIRE_FALSE(root.empty()); // (every kernel the tests run on has one)
    Loader l;
    load_attach(l, own_options());
    std::string error;
    std::vector<Event> evs;
    REQUIRE(ring_into(l, evs, &error));
    // A place (a cgroup, by its directory's name), and /bin/sh under the
    // names of Nginx and of others. The place is a cgroup by its parent's
    // id and its name; a cgroup of that name under another parent is another.
    std::string place = "n502-kt-place-" + std::to_string(getpid());
    std::string dir = root + "/" + place, other = root + "/n502-kt-other-" + std::to_string(getpid());
    std::string namesake = other + "/" + place;
    for (const std::string &d : {dir, other, namesake})
        REQUIRE(mkdir(d.c_str(), 0755) == 0);
    struct stat rs{};
    REQUIRE(stat(root.c_str(), &rs) == 0);
    const uint64_t parent = rs.st_ino;
    char tmpl[] = "/tmp/n502-kt-exec-XXXXXX";
    REQUIRE(mkdtemp(tmpl));
    std::string bin = tmpl;
    static const char *const names[] = {"nginx", "nginx-debug", "openresty", "nginxx", "nginx-agent"};
    for (const char *name : names)
        REQUIRE(symlink("/bin/sh", (bin + "/" + name).c_str()) == 0);
    struct Cleanup {
        std::vector<std::string> dirs;
        std::string bin;
        ~Cleanup()
        {
            for (const auto &d : dirs)
                rmdir(d.c_str());
            for (const char *name : names)
                unlink((bin + "/" + name).c_str());
            rmdir(bin.c_str());
        }
    } cleanup{{namesake, other, dir}, bin};
    auto forked_tracked = [&](pid_t pid) {
        l.consume();
        for (const Event &e : evs)
            if (e.type == N502_EV_FORK && e.tgid == static_cast<uint32_t>(pid))
                return e.role == N502_PROC_NGINX;
        return false;
    };

    // No place set: an Nginx starting there is nobody's.
    CHECK_FALSE(forked_tracked(exec_forking(bin + "/nginx", dir)));
    REQUIRE(l.set_nginx_places({{parent, place}, {parent, "some-other-service.scope"}}));
    // There: tracked from its exec, as Nginx, so its children are.
    CHECK(forked_tracked(exec_forking(bin + "/nginx", dir)));
    CHECK(forked_tracked(exec_forking(bin + "/nginx-debug", dir)));
    CHECK(forked_tracked(exec_forking(bin + "/openresty", dir)));
    // Also when it was tracked already as something else (a child of a
    // listener: runc's, forked by containerd).
    CHECK(forked_tracked(exec_forking(bin + "/nginx", dir, &l)));
    // Not Nginx there (nginx-agent is not Nginx), or Nginx elsewhere (in a
    // cgroup of the same name under another parent, or in ours): not.
    CHECK_FALSE(forked_tracked(exec_forking(bin + "/nginxx", dir)));
    CHECK_FALSE(forked_tracked(exec_forking(bin + "/nginx-agent", dir)));
    CHECK_FALSE(forked_tracked(exec_forking("/bin/sh", dir)));
    CHECK_FALSE(forked_tracked(exec_forking(bin + "/nginx", namesake)));
    CHECK_FALSE(forked_tracked(exec_forking(bin + "/nginx", "")));
    // Emptied: no more.
    REQUIRE(l.set_nginx_places({}));
    CHECK_FALSE(forked_tracked(exec_forking(bin + "/nginx", dir)));
    // A name that cannot be a key is refused, the others set.
    CHECK_FALSE(l.set_nginx_places({{parent, std::string(200, 'x')}, {parent, place}}));
    CHECK(forked_tracked(exec_forking(bin + "/nginx", dir)));
}

namespace {

// A second instance following every connection of ours (as Nginx's), with
// socket tables of 1024 entries looked at whenever asked. Its ring is not read.
struct SmallTables {
    Loader l;
    rlimit was{};
    uint16_t port = 0;
    int lfd = -1;
    std::vector<int> fds;

    explicit SmallTables(uint64_t look_ns = 0)
    {
        LoaderOptions opt;
        opt.ringbuf_bytes = 1u << 16;
        opt.table_entries = 1024;
        opt.table_look_ns = look_ns;
        std::string error;
        REQUIRE(l.load(opt, &error));
        REQUIRE(l.attach(&error));
        REQUIRE(l.track_process(self(), N502_PROC_NGINX, &error));
        rlimit more{4096, 4096};
        REQUIRE(getrlimit(RLIMIT_NOFILE, &was) == 0);
        if (was.rlim_max > more.rlim_max)
            more.rlim_max = was.rlim_max;
        REQUIRE(setrlimit(RLIMIT_NOFILE, &more) == 0);
        lfd = tcp_listener(&port);
    }
    ~SmallTables()
    {
        close_all();
        close(lfd);
        setrlimit(RLIMIT_NOFILE, &was);
    }
    // n connections, both ends kept open: two entries of socks (its two
    // ends) and one of tuples each.
    void connect_n(int n)
    {
        for (int i = 0; i < n; i++) {
            int c = tcp_connect(port, false);
            int a = accept(lfd, nullptr, nullptr);
            REQUIRE(c >= 0);
            REQUIRE(a >= 0);
            fds.push_back(c);
            fds.push_back(a);
        }
    }
    void close_all()
    {
        for (int fd : fds)
            close(fd);
        fds.clear();
    }
    // What the tables forgot, as two looks in a row find it.
    uint64_t evicted()
    {
        l.counters();
        return l.counters().evicted;
    }
};

} // namespace

TEST_CASE("a cgroup made while cgroups are selected is told at once, by its id; none when none are", "[kernel]")
{
    std::string root = cgroup2_root();
    REQUIRE_FALSE(root.empty());
    std::string name = "n502-kt-made-" + std::to_string(getpid());
    std::string v2 = root + "/" + name, v1 = "/sys/fs/cgroup/memory/" + name;
    struct Cleanup {
        std::vector<std::string> dirs;
        ~Cleanup()
        {
            for (const auto &d : dirs)
                rmdir(d.c_str());
        }
    } cleanup{{v2 + "/inner", v2, v1}};
    auto made = [](Loader &l, std::vector<Event> &evs) {
        l.consume();
        std::vector<uint64_t> ids;
        for (const Event &e : evs)
            if (e.type == N502_EV_CGROUP)
                ids.push_back(e.cgroup_id);
        evs.clear();
        return ids;
    };
    auto ino = [](const std::string &d) {
        struct stat st{};
        REQUIRE(stat(d.c_str(), &st) == 0);
        return static_cast<uint64_t>(st.st_ino);
    };
    std::string error;
    {
        // Nothing selected: nothing told.
        Loader l;
        load_attach(l, own_options());
        std::vector<Event> evs;
        REQUIRE(ring_into(l, evs, &error));
        REQUIRE(mkdir(v2.c_str(), 0755) == 0);
        CHECK(made(l, evs).empty());
        REQUIRE(rmdir(v2.c_str()) == 0);
    }
    LoaderOptions opt = own_options();
    opt.filter_cgroups = true;
    Loader l;
    load_attach(l, opt);
    std::vector<Event> evs;
    REQUIRE(ring_into(l, evs, &error));
    REQUIRE(mkdir(v2.c_str(), 0755) == 0);
    REQUIRE(mkdir((v2 + "/inner").c_str(), 0755) == 0);
    // (a v1 hierarchy's cgroup is not one: its ids are another numbering)
    const bool have_v1 = access("/sys/fs/cgroup/memory", F_OK) == 0 && mkdir(v1.c_str(), 0755) == 0;
    CHECK(made(l, evs) == std::vector<uint64_t>{ino(v2), ino(v2 + "/inner")});
    if (have_v1)
        CHECK(ino(v1) != 0); // (made, and not told above)
}

TEST_CASE("a full socket table forgets its oldest entries, and every one forgotten is counted", "[kernel]")
{
    SmallTables t;
    t.connect_n(100); // 201 entries with the listener's: nothing forgotten
    CHECK(t.evicted() == 0);
    t.connect_n(700); // 1601 in a table of 1024: at least 577 forgotten
    uint64_t forgot = t.evicted();
    CHECK(forgot >= 1601 - 1024);
    CHECK(forgot <= 1601 + 800);
    CHECK(t.l.counters().map_full == 0); // an LRU table makes room: no update failed
    // Removing the rest counts as removed: the same number forgotten, not more.
    t.close_all();
    CHECK(t.evicted() == forgot);
}

TEST_CASE("entries forgotten since the last look are counted at exit, whatever the time between looks", "[kernel]")
{
    SmallTables t(3'600'000'000'000ULL); // looked at once an hour
    t.connect_n(100);
    CHECK(t.l.counters().evicted == 0); // the first look
    t.connect_n(700);
    CHECK(t.l.counters().evicted == 0); // not looked at again within the hour
    uint64_t forgot = t.l.final_counters().evicted;
    CHECK(forgot >= 1601 - 1024);
    CHECK(forgot <= 1601 + 800);
}

TEST_CASE("socket tables: connections that come and go, and records declared dead, are not counted as forgotten",
          "[kernel]")
{
    SmallTables t;
    // Many more connections than the tables hold, a few at a time, ended
    // in order or aborted (SO_LINGER 0: the record waits for its RST).
    for (int i = 0; i < 1500; i++) {
        t.connect_n(1);
        if (i % 2) {
            linger lg{1, 0};
            setsockopt(t.fds[0], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        }
        t.close_all();
        if (i % 100 == 0)
            t.l.counters();
    }
    CHECK(t.evicted() == 0);
    // 300 connections followed whole, then tracking goes lean and back to
    // full: their records are dead (their ends are not followed any more,
    // and nobody removes their records but n502trace); then 300 more.
    // Together 1201 records in a table of 1024, of which 601 live.
    t.connect_n(300);
    uint64_t before = t.evicted();
    std::string error;
    REQUIRE(t.l.set_tracking_full(false, &error));
    REQUIRE(t.l.set_tracking_full(true, &error));
    std::vector<int> old = std::move(t.fds);
    t.fds.clear();
    t.connect_n(300);
    CHECK(t.evicted() == before);
    t.close_all();
    t.fds = std::move(old);
}

TEST_CASE("the softirq filters fill up to their maps' sizes, then stay off", "[kernel]")
{
    Loader l;
    LoaderOptions opt;
    opt.ringbuf_bytes = 1u << 16;
    opt.adaptive = true;
    std::string error;
    REQUIRE(l.load(opt, &error));
    for (uint32_t uid = 1000; uid < 1000 + 64; uid++)
        REQUIRE(l.add_nginx_uid(uid));
    CHECK(l.add_nginx_uid(1000)); // known already: no room needed
    CHECK_FALSE(l.add_nginx_uid(5000));
    CHECK_FALSE(l.add_nginx_uid(1000)); // off for good: a uid left out would hide Nginx's failures
    for (uint64_t id = 1; id <= 256; id++)
        REQUIRE(l.add_nginx_cgroup(id));
    // Emptied when Nginx goes away: restarts into new cgroups never fill it.
    l.clear_nginx_cgroups();
    for (uint64_t id = 1001; id <= 1256; id++)
        REQUIRE(l.add_nginx_cgroup(id));
    CHECK_FALSE(l.add_nginx_cgroup(257));
    CHECK_FALSE(l.add_nginx_cgroup(1001));
}

namespace {

// This process's cgroup (v2) id: the inode of its directory; 0 when unknown.
uint64_t own_cgroup_id()
{
    std::string root = cgroup2_root(), path;
    FILE *c = fopen("/proc/self/cgroup", "r");
    char buf[1024];
    while (c && fgets(buf, sizeof(buf), c))
        if (strncmp(buf, "0::", 3) == 0)
            path = std::string(buf + 3, strcspn(buf + 3, "\n"));
    if (c)
        fclose(c);
    struct stat st{};
    if (root.empty() || path.empty() || stat((root + path).c_str(), &st) != 0)
        return 0;
    return st.st_ino;
}

} // namespace

TEST_CASE("lean: a softirq failure of Nginx's uid in another cgroup is left to user space, not while found foreign",
          "[kernel]")
{
    Loader l;
    load_attach(l, own_options(true));
    std::string error;
    std::vector<Event> evs;
    REQUIRE(ring_into(l, evs, &error));
    // An upstream that aborts each connection it takes (a RST) once we,
    // its peer, sleep: our end takes the RST in the upstream's context,
    // softirq for it.
    uint16_t port = 0;
    int rd;
    pid_t up = child(
        [&](int ready) {
            int lfd = tcp_listener(&port);
            (void)!write(ready, &port, sizeof(port));
            for (;;) {
                int c = accept(lfd, nullptr, nullptr);
                linger lg{1, 0};
                setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
                if (!wait_asleep(getppid()))
                    _exit(3);
                close(c);
                (void)!write(ready, "x", 1);
            }
        },
        &rd);
    struct Reap {
        pid_t pid;
        int fd;
        ~Reap()
        {
            int status;
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            close(fd);
        }
    } reap{up, rd};
    REQUIRE(read(rd, &port, sizeof(port)) == sizeof(port));
    // We are "Nginx's uid" (root), and Nginx's workers run in another cgroup only
    // (not 1: the root cgroup's id, where this test may well run).
    l.watch_ports({port}, false);
    REQUIRE(l.add_nginx_uid(getuid()));
    REQUIRE(l.add_nginx_cgroup(0xdead0001ULL));
    // One reset connection; its records, once they are all out.
    auto reset_once = [&]() {
        int fd = tcp_connect(port, false);
        char c;
        REQUIRE(read(rd, &c, 1) == 1); // aborted
        char buf[8];
        CHECK(read(fd, buf, sizeof(buf)) < 0); // ECONNRESET: the RST was taken before
        close(fd);
        l.consume();
        std::vector<Event> ours;
        for (const Event &e : evs)
            if (e.dst.port == port && (e.type == N502_EV_STATE || e.type == N502_EV_RESET))
                ours.push_back(e);
        evs.clear();
        return ours;
    };
    auto first = reset_once();
    REQUIRE(first.size() == 2); // the RST, then ESTABLISHED -> CLOSE with its error
    for (const Event &e : first) {
        INFO("type " << e.type << " sk " << e.sk << " role " << e.sock_role << " err " << e.sk_err << " owner "
                     << e.owner << " " << e.oldstate << "->" << e.newstate);
        CHECK(e.other_cgroup);
        CHECK(e.untracked);
        CHECK(e.sock_role == N502_SOCK_NGINX);
        CHECK(e.sk == first[0].sk);
    }
    CHECK(((first[0].type == N502_EV_RESET && first[1].type == N502_EV_STATE && first[1].sk_err == ECONNRESET)));
    // The cgroup is there for both records to read, and is ours.
    auto id = l.other_cgroup(first[0].sk);
    REQUIRE(id);
    CHECK(l.other_cgroup(first[1].sk) == id);
    if (uint64_t own = own_cgroup_id())
        CHECK(*id == own);
    // Left to user space: the kernel side did not switch to full tracking.
    CHECK_FALSE(l.tracking_full());

    // Found foreign for the next 5 s: nothing about it until then.
    l.foreign_cgroup(*id, boot_now_ns() + 5'000'000'000ULL);
    CHECK(reset_once().empty());
    // Until then only: past it, announced again.
    l.foreign_cgroup(*id, boot_now_ns());
    CHECK(reset_once().size() == 2);
}

TEST_CASE("adaptive tracking, lean: a fork of Nginx watches every port until the configuration is read again",
          "[kernel]")
{
    // A reload's new workers may run a configuration naming other ports:
    // from the fork until user space has read it, every port counts.
    Loader l;
    std::vector<Event> evs;
    lean_as_nginx(l, evs);
    l.watch_ports({}, false);
    auto met = [&](uint16_t port) {
        l.consume();
        return std::any_of(evs.begin(), evs.end(), [&](const Event &e) {
            return e.type == N502_EV_STATE && e.oldstate == N502_TCP_SYN_SENT && e.newstate == N502_TCP_SYN_RECV &&
                   e.dst.port == port;
        });
    };
    uint16_t a = 0;
    int fa = bound_socket(&a);
    connect_to_itself(fa, a);
    CHECK_FALSE(met(a)); // not a watched port: nothing
    CHECK_FALSE(l.ports_unsure());
    pid_t kid = fork();
    if (kid == 0)
        _exit(0);
    int status;
    REQUIRE(waitpid(kid, &status, 0) == kid);
    CHECK(l.ports_unsure());
    uint16_t b = 0;
    int fb = bound_socket(&b);
    connect_to_itself(fb, b);
    CHECK(met(b)); // any port, until the ports are settled
    l.ports_settled();
    CHECK_FALSE(l.ports_unsure());
    close(fa);
    close(fb);
}
