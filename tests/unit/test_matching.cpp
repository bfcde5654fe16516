// Which connection a log line is matched to (Correlator::find_conn), where
// healthy connections are in the window too: an upstream that answered and
// closed first (HTTP/1.0 to the upstream, Nginx's default), a php-fpm
// child's close(). From a review of the cause rules (helper-39).
#include <catch2/catch.hpp>
#include <cerrno>
#include <fmt/format.h>
#include <sys/socket.h>

#include "accesslog.hpp"
#include "correlator.hpp"
#include "host.hpp"
#include "logline.hpp"
#include "state.hpp"

using namespace n502;

namespace {

constexpr uint32_t NGX = 500, NGX2 = 501, UP1 = 600, UP2 = 601, KILLER = 700, MASTER = 599;
constexpr uint64_t T0 = 1'000'000'000'000ULL; // boot ns of 03:00:00 in the line
constexpr uint64_t MS = 1'000'000ULL, SEC = 1'000'000'000ULL;

Addr lo(uint16_t p) { return Addr::ipv4(0x7f000001, p); }

struct W {
    State st;
    W() { st.add_process(NGX, N502_PROC_NGINX, "nginx"); st.add_process(NGX2, N502_PROC_NGINX, "nginx"); }
    Event base(n502_event_type t, uint64_t ts, uint32_t tgid, const char *comm)
    {
        Event e;
        e.type = t;
        e.ts = ts;
        e.tgid = tgid;
        e.tid = tgid;
        e.comm = comm;
        return e;
    }
    void nstate(uint64_t ts, uint64_t sk, uint16_t sport, int from, int to, uint64_t rx = 0, int err = 0,
                uint32_t cur = NGX, uint32_t owner = NGX, uint16_t dport = 8080)
    {
        Event e = base(N502_EV_STATE, ts, cur, cur == owner ? "nginx" : "python3");
        e.sk = sk;
        e.sock_role = N502_SOCK_NGINX;
        e.owner = owner;
        e.oldstate = from;
        e.newstate = to;
        e.sk_err = err;
        e.bytes_received = rx;
        e.segs_out = 1;
        e.src = lo(sport);
        e.dst = lo(dport);
        st.apply(e);
    }
    void ustate(uint64_t ts, uint64_t upsk, uint16_t sport, int from, int to, uint32_t cur, uint32_t owner,
                uint16_t dport = 8080)
    {
        Event e = base(N502_EV_STATE, ts, cur, "python3");
        e.sk = upsk;
        e.sock_role = N502_SOCK_UPSTREAM;
        e.owner = owner;
        e.oldstate = from;
        e.newstate = to;
        e.src = lo(dport);
        e.dst = lo(sport);
        st.apply(e);
    }
    void connect(uint64_t ts, uint64_t sk, uint32_t ngx = NGX, uint16_t dport = 8080)
    {
        Event e = base(N502_EV_CONNECT, ts, ngx, "nginx");
        e.sk = sk;
        e.ret = -EINPROGRESS;
        e.dst = lo(dport);
        st.apply(e);
    }
    void accept(uint64_t ts, uint64_t sk, uint64_t upsk, uint32_t up, uint16_t sport, uint16_t dport = 8080)
    {
        Event e = base(N502_EV_ACCEPT, ts, up, "python3");
        e.sk = upsk;
        e.peer_sk = sk;
        e.src = lo(dport);
        e.dst = lo(sport);
        e.took = N502_TOOK_READ;
        st.apply(e);
    }
    // Connected and accepted (first read) by up at ts.
    void open(uint64_t ts, uint64_t sk, uint64_t upsk, uint16_t sport, uint32_t up, uint32_t ngx = NGX,
              uint16_t dport = 8080)
    {
        nstate(ts, sk, sport, 7, 2, 0, 0, ngx, ngx, dport);
        nstate(ts + 50'000, sk, sport, 2, 1, 0, 0, ngx, ngx, dport);
        connect(ts + 60'000, sk, ngx, dport);
        accept(ts + 100'000, sk, upsk, up, sport, dport);
    }
    // The upstream answered (rx bytes) and closed first (HTTP/1.0, or its keep-alive timeout); Nginx then closed.
    void upstream_closes(uint64_t ts, uint64_t sk, uint64_t upsk, uint16_t sport, uint32_t up, uint64_t rx,
                         uint32_t ngx = NGX, uint16_t dport = 8080)
    {
        ustate(ts, upsk, sport, 1, 4, up, up, dport);
        nstate(ts + 20'000, sk, sport, 1, 8, rx, 0, up, ngx, dport);
        nstate(ts + 200'000, sk, sport, 8, 9, rx, 0, ngx, ngx, dport);
        nstate(ts + 300'000, sk, sport, 9, 7, rx, 0, 0, ngx, dport);
    }
    // Nginx closes first (its timeout): ESTABLISHED -> FIN_WAIT1.
    void nginx_closes_first(uint64_t ts, uint64_t sk, uint16_t sport, uint64_t rx = 0, uint32_t ngx = NGX)
    {
        nstate(ts, sk, sport, 1, 4, rx, 0, ngx, ngx);
    }
    void signal(uint64_t ts, uint32_t from, const char *comm, uint32_t to, int sig, int code = 0)
    {
        Event e = base(N502_EV_SIGNAL, ts, from, comm);
        e.target = to;
        e.sig = sig;
        e.code = code;
        e.target_comm = "python3";
        st.apply(e);
    }
    void exit(uint64_t ts, uint32_t pid, int status)
    {
        Event e = base(N502_EV_EXIT, ts, pid, "python3");
        e.exit_code = status;
        st.apply(e);
    }
    void fork(uint64_t ts, uint32_t parent, uint32_t child)
    {
        Event e = base(N502_EV_FORK, ts, parent, "gunicorn");
        e.target = child;
        st.apply(e);
    }
    void listen(uint64_t ts, uint32_t pid, uint64_t sk, uint16_t port = 8080, uint32_t netns = 0)
    {
        Event e = base(N502_EV_LISTEN, ts, pid, "python3");
        e.sk = sk;
        e.backlog = 128;
        e.src = lo(port);
        e.src.netns = netns;
        st.apply(e);
    }
};

LogLine mkline(const std::string &msg, uint32_t pid = NGX, int sec = 0, uint16_t port = 8080, int conn = 7)
{
    auto l = parse_upstream_error(fmt::format(
        "2026/11/23 03:00:{:02} [error] {}#{}: *{} {}, client: 127.0.0.1, server: localhost, request: \"GET / "
        "HTTP/1.1\", upstream: \"http://127.0.0.1:{}/\", host: \"localhost\"",
        sec, pid, pid, conn, msg, port));
    REQUIRE(l);
    return *l;
}


Verdict decide(W &w, const LogLine &l, Host *h = nullptr)
{
    // Kernel time T0 is 03:00:00.
    auto l0 = mkline("upstream timed out (110: Connection timed out) while reading response header from upstream");
    Timebase tb(l0.wall_sec * 1'000'000'000LL - static_cast<int64_t>(T0));
    Correlator c(w.st, tb, CorrelatorOptions{}, h);
    auto v = c.explain(l, true);
    REQUIRE(v);
    return *v;
}

std::string pid_of(const Verdict &v) { return v.upstream_pid ? std::to_string(*v.upstream_pid) : "-"; }

} // namespace

// A line after the response header's phase ("while reading upstream", "while sending request"):
// every connection that ended with the upstream's FIN first (HTTP/1.0 to the upstream) has ended
// as a failed one would, and the bytes received tell nothing there.
TEST_CASE("a failure after the header, its upstream killed: the killed one's, not an earlier healthy one's", "[correlator]")
{
    W w;
    // A healthy request 2 s before: upstream UP1 answered 900 bytes and closed (HTTP/1.0).
    w.open(T0 - 2 * SEC, 0xa000, 0xb000, 40001, UP1);
    w.upstream_closes(T0 - 2 * SEC + 5 * MS, 0xa000, 0xb000, 40001, UP1, 900);
    // The failing request: UP2 sends part of the body, then is SIGKILLed.
    w.open(T0 + 100 * MS, 0xa100, 0xb100, 40002, UP2);
    w.signal(T0 + 300 * MS, KILLER, "kill", UP2, 9);
    w.exit(T0 + 301 * MS, UP2, 9);
    w.upstream_closes(T0 + 302 * MS, 0xa100, 0xb100, 40002, UP2, 4000);
    Verdict v = decide(w, mkline("upstream prematurely closed connection while reading upstream"));
    INFO(v.cause << " " << v.confidence << " pid " << pid_of(v) << ": " << v.explanation);
    CHECK(v.cause == "upstream_killed");
    CHECK(pid_of(v) == std::to_string(UP2));
}

TEST_CASE("a broken pipe while sending the request, its upstream crashed: the crashed one's", "[correlator]")
{
    W w;
    w.open(T0 - 3 * SEC, 0xa000, 0xb000, 40001, UP1);
    w.upstream_closes(T0 - 3 * SEC + 5 * MS, 0xa000, 0xb000, 40001, UP1, 900);
    // UP2 crashes (SIGSEGV) while Nginx is still sending a large body.
    w.open(T0 + 100 * MS, 0xa100, 0xb100, 40002, UP2);
    w.signal(T0 + 300 * MS, UP2, "python3", UP2, 11, 1);
    w.exit(T0 + 301 * MS, UP2, 11 | 0x80);
    w.upstream_closes(T0 + 302 * MS, 0xa100, 0xb100, 40002, UP2, 0);
    Verdict v = decide(w, mkline("writev() failed (32: Broken pipe) while sending request to upstream"));
    INFO(v.cause << " " << v.confidence << " pid " << pid_of(v) << ": " << v.explanation);
    CHECK(v.cause == "upstream_crashed");
}

// A worker recycled by max_requests exits while its connection idles in Nginx's keep-alive pool:
// the exit closes it (FIN), Nginx's request arrives after that (RST).
TEST_CASE("a keep-alive race with a worker that exited while the connection idled is keepalive_race", "[correlator]")
{
    W w;
    w.open(T0 - 30 * SEC, 0xa000, 0xb000, 40001, UP1);
    // Served earlier requests (bytes received); idle now. Worker exits normally (max_requests).
    w.exit(T0 + 100 * MS, UP1, 0);
    w.ustate(T0 + 100 * MS + 10'000, 0xb000, 40001, 1, 4, UP1, UP1); // FIN from the exit
    // Nginx had already picked the connection and written the request: the closed socket answers with RST.
    Event r = w.base(N502_EV_RESET, T0 + 100 * MS + 20'000, 0, "swapper");
    r.sk = 0xb000; r.sock_role = N502_SOCK_UPSTREAM; r.owner = UP1; r.dir = N502_RST_SENT;
    w.st.apply(r);
    Event r2 = w.base(N502_EV_RESET, T0 + 100 * MS + 25'000, 0, "swapper");
    r2.sk = 0xa000; r2.sock_role = N502_SOCK_NGINX; r2.owner = NGX; r2.dir = N502_RST_RECEIVED; r2.tcp_state = 1;
    w.st.apply(r2);
    w.nstate(T0 + 100 * MS + 26'000, 0xa000, 40001, 1, 7, 12000, ECONNRESET, 0);
    Verdict v = decide(w, mkline("recv() failed (104: Connection reset by peer) while reading response header from upstream"));
    INFO(v.cause << " " << v.confidence << " pid " << pid_of(v) << ": " << v.explanation);
    CHECK(v.cause == "keepalive_race");
}


// An access-log 502 without an error-log line (the upstream's own 502 response, or an error_log
// level above 'error'): a connection that only ended, as healthy ones do, does not explain it.
TEST_CASE("an access-log 502 with only healthy connections around is unknown: it may be the upstream's own", "[correlator]")
{
    W w;
    // The request itself: upstream UP1 answered "HTTP/1.0 502 Bad Gateway" (its own gateway error) and closed.
    w.open(T0 + 100 * MS, 0xa000, 0xb000, 40001, UP1);
    w.upstream_closes(T0 + 150 * MS, 0xa000, 0xb000, 40001, UP1, 180);
    auto l0 = mkline("x");
    AccessLine a;
    a.wall_sec = l0.wall_sec;
    a.client = "127.0.0.1";
    a.request = "GET /api HTTP/1.1";
    a.status = 502;
    Correlator c(w.st, Timebase(l0.wall_sec * 1'000'000'000LL - static_cast<int64_t>(T0)));
    Verdict v = c.explain_access(a);
    INFO(v.cause << " " << v.confidence << " pid " << pid_of(v) << ": " << v.explanation);
    CHECK(v.cause == "unknown");
}

namespace {
const std::string FPM = "/run/php/php-fpm.sock";
void unix_req(W &w, uint64_t ts, uint64_t sk, uint64_t upsk, uint32_t up, bool upstream_closes, bool nginx_closes)
{
    Event a = w.base(N502_EV_ACCEPT, ts + 10'000, up, "php-fpm8.2");
    a.sk = upsk; a.peer_sk = sk; a.owner = NGX; a.took = N502_TOOK_ACCEPT;
    a.src = Addr::unix_path(FPM); a.dst = Addr::unix_path("");
    Event c = w.base(N502_EV_CONNECT, ts, NGX, "nginx");
    c.sk = sk; c.ret = 0; c.dst = Addr::unix_path(FPM);
    w.st.apply(c);
    w.st.apply(a);
    if (upstream_closes) {
        Event u = w.base(N502_EV_CLOSE, ts + 40 * MS, up, "php-fpm8.2");
        u.sk = upsk; u.sock_role = N502_SOCK_UPSTREAM; u.owner = up; u.src.family = AF_UNIX;
        w.st.apply(u);
    }
    if (nginx_closes) {
        Event n = w.base(N502_EV_CLOSE, ts + 41 * MS, NGX, "nginx");
        n.sk = sk; n.sock_role = N502_SOCK_NGINX; n.owner = NGX; n.src.family = AF_UNIX;
        w.st.apply(n);
    }
}
} // namespace

// php-fpm over a unix socket: a child killed mid-request (its exit closes its end, no close()),
// while a request of the same worker finished normally a second earlier (the child's close()).
TEST_CASE("php-fpm: a child killed mid-request, a healthy request a second before: the killed child's", "[correlator]")
{
    W w;
    unix_req(w, T0 - 1 * SEC, 0xa000, 0xb000, UP1, true, true); // healthy, child UP1
    unix_req(w, T0 + 100 * MS, 0xa100, 0xb100, UP2, false, false);
    w.signal(T0 + 300 * MS, MASTER, "php-fpm8.2", UP2, 15); // request_terminate_timeout
    w.exit(T0 + 301 * MS, UP2, 15);
    Event n = w.base(N502_EV_CLOSE, T0 + 302 * MS, NGX, "nginx");
    n.sk = 0xa100; n.sock_role = N502_SOCK_NGINX; n.owner = NGX; n.src.family = AF_UNIX;
    w.st.apply(n);
    auto l = parse_upstream_error("2026/11/23 03:00:00 [error] 500#500: *7 recv() failed (104: Connection reset by "
                                  "peer) while reading response header from upstream, client: 127.0.0.1, server: "
                                  "localhost, request: \"GET /index.php HTTP/1.1\", upstream: "
                                  "\"fastcgi://unix:/run/php/php-fpm.sock:\", host: \"localhost\"");
    REQUIRE(l);
    Verdict v = decide(w, *l);
    INFO(v.cause << " " << v.confidence << " pid " << pid_of(v) << ": " << v.explanation);
    CHECK(v.cause == "upstream_killed");
    CHECK(pid_of(v) == std::to_string(UP2));
}

namespace {
// A host whose look-ups answer as a test sets them (q), the upstream sleeping.
struct FwHost : Host {
    std::optional<ListenerQueue> q;
    std::optional<ListenerQueue> listener(const Addr &, uint32_t) override { return q; }
    FileFacts file(const std::string &) override { return {}; }
    std::optional<Creds> creds(uint32_t) override { return std::nullopt; }
    std::string activity(uint32_t) override { return "S (sleeping)"; }
    std::string port_range(uint32_t) override { return "32768-60999"; }
    int tcp_abort_on_overflow(uint32_t) override { return 0; }
    std::map<std::string, int> sockets_to(const Addr &, uint32_t) override { return {}; }
    std::optional<SocketHolder> holder(const Addr &, const Addr &, uint32_t) override { return std::nullopt; }
};
} // namespace

// A read timeout: the connection Nginx gave up on (closed first, right after its line), not the
// most recently active one (a healthy request that ended just after).
TEST_CASE("a read timeout is the connection Nginx gave up on, not a healthy one that ended after it", "[correlator]")
{
    W w;
    // The stuck one: accepted by UP1 60 s ago, Nginx gives up at T0+500ms.
    w.open(T0 - 60 * SEC, 0xa000, 0xb000, 40001, UP1);
    w.nginx_closes_first(T0 + 500 * MS, 0xa000, 40001);
    // A healthy request served by UP2 that ends 1 ms later; UP2 then recycles (max_requests) and exits 0.
    w.open(T0 + 400 * MS, 0xa100, 0xb100, 40002, UP2);
    w.upstream_closes(T0 + 501 * MS, 0xa100, 0xb100, 40002, UP2, 900);
    w.exit(T0 + 510 * MS, UP2, 0);
    Verdict v = decide(w, mkline("upstream timed out (110: Connection timed out) while reading response header from upstream"));
    INFO(v.cause << " " << v.confidence << " pid " << pid_of(v) << ": " << v.explanation);
    CHECK(pid_of(v) == std::to_string(UP1));
    CHECK(v.cause == "upstream_timeout");
}

TEST_CASE("a read timeout names the process holding the connection given up on", "[correlator]")
{
    W w;
    w.open(T0 - 60 * SEC, 0xa000, 0xb000, 40001, UP1);
    w.nginx_closes_first(T0 + 500 * MS, 0xa000, 40001);
    w.open(T0 + 400 * MS, 0xa100, 0xb100, 40002, UP2);
    w.upstream_closes(T0 + 501 * MS, 0xa100, 0xb100, 40002, UP2, 900);
    FwHost h;
    Verdict v = decide(w, mkline("upstream timed out (110: Connection timed out) while reading response header from upstream"), &h);
    INFO(v.cause << " " << v.confidence << " pid " << pid_of(v) << ": " << v.explanation);
    CHECK(pid_of(v) == std::to_string(UP1));
}

// A worker recycled after max_requests exits by itself (code 0) while its
// connection idles in Nginx's pool: no request failed with it. A real
// failure of another connection just before is the line's.
TEST_CASE("a worker that exits by itself holding an idle connection does not take another's failure",
          "[correlator]")
{
    W w;
    w.open(T0 - 20 * SEC, 0xa000, 0xb000, 40001, UP1); // pooled, idle
    w.open(T0 + 50 * MS, 0xa100, 0xb100, 40002, UP2);
    w.upstream_closes(T0 + 100 * MS, 0xa100, 0xb100, 40002, UP2, 4000); // cut mid-body by a live UP2
    w.exit(T0 + 200 * MS, UP1, 0);
    w.upstream_closes(T0 + 200 * MS + 10'000, 0xa000, 0xb000, 40001, UP1, 12000);
    Verdict v = decide(w, mkline("upstream prematurely closed connection while reading upstream"));
    INFO(v.cause << " " << v.confidence << " pid " << pid_of(v) << ": " << v.explanation);
    CHECK(pid_of(v) == std::to_string(UP2));
    CHECK(v.cause != "upstream_exited");
}

// With proxy_http_version 1.1 and no keep-alive pool, Nginx closes first
// after every healthy response too: one that got its response is not the
// connection that timed out waiting for a header.
TEST_CASE("a read timeout is not a healthy connection Nginx closed first after its response", "[correlator]")
{
    W w;
    w.open(T0 - 60 * SEC, 0xa000, 0xb000, 40001, UP1);
    w.nginx_closes_first(T0 + 500 * MS, 0xa000, 40001);
    w.open(T0 + 400 * MS, 0xa100, 0xb100, 40002, UP2);
    w.nginx_closes_first(T0 + 530 * MS, 0xa100, 40002, 900);
    FwHost h;
    Verdict v = decide(w, mkline("upstream timed out (110: Connection timed out) while reading response header from upstream"), &h);
    INFO(v.cause << " " << v.confidence << " pid " << pid_of(v) << ": " << v.explanation);
    CHECK(pid_of(v) == std::to_string(UP1));
    CHECK(v.cause == "upstream_timeout");
}
