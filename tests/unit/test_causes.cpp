// The causes that need host facts (socket modes, listener queues, port
// ranges, process activity) and those that point back at earlier verdicts.
// Event sequences follow what the kernel tests and e2e runs record; host
// facts come from a fake host.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cerrno>
#include <fmt/format.h>
#include <map>
#include <set>
#include <sys/socket.h>

#include "accesslog.hpp"
#include "correlator.hpp"
#include "host.hpp"
#include "logline.hpp"
#include "sinks.hpp"
#include "state.hpp"

using namespace n502;

namespace {

constexpr uint32_t NGINX = 500, UP = 600;
constexpr uint64_t SK = 0xa000, UPSK = 0xb000;
constexpr uint64_t T0 = 1'000'000'000'000ULL;

class FakeHost : public Host {
public:
    std::optional<ListenerQueue> queue;
    std::map<std::string, FileFacts> files;
    Creds worker{33, 33, {33}};
    std::string range = "32768-60999";
    std::string doing = "S (sleeping) in unix_stream_read_generic";
    int abort_on_overflow = 0;

    std::optional<ListenerQueue> listener(const Addr &, uint32_t) override { return queue; }
    FileFacts file(const std::string &p) override
    {
        auto it = files.find(p);
        return it == files.end() ? FileFacts{} : it->second;
    }
    std::optional<Creds> creds(uint32_t) override { return worker; }
    std::string activity(uint32_t) override { return doing; }
    std::string port_range(uint32_t) override { return range; }
    int tcp_abort_on_overflow(uint32_t) override { return abort_on_overflow; }
    std::map<std::string, int> sockets = {};
    std::map<std::string, int> sockets_to(const Addr &, uint32_t) override { return sockets; }
    std::optional<SocketHolder> held_by;
    std::vector<std::string> holder_asked; // "local>remote@ns_pid"
    std::optional<SocketHolder> holder(const Addr &l, const Addr &r, uint32_t ns_pid) override
    {
        holder_asked.push_back(l.str() + ">" + r.str() + "@" + std::to_string(ns_pid));
        return held_by;
    }
};

FileFacts dir(uint32_t mode = 0755) { return FileFacts{mode, 0, 0, "root", "root", true}; }

struct Seq {
    State st;
    uint64_t t = T0;
    explicit Seq(StateLimits limits = {}) : st(limits)
    {
        st.add_process(NGINX, N502_PROC_NGINX, "nginx");
    }
    Event &add(n502_event_type type, uint32_t tgid)
    {
        t += 100'000;
        Event e;
        e.type = type;
        e.ts = t;
        e.tgid = tgid;
        e.comm = tgid == NGINX ? "nginx" : "python3";
        ev.push_back(e);
        return ev.back();
    }
    void flush()
    {
        for (auto &e : ev)
            st.apply(e);
        ev.clear();
    }
    void connect(const Addr &dst, int ret)
    {
        Event &e = add(N502_EV_CONNECT, NGINX);
        e.sk = SK;
        e.ret = ret;
        e.dst = dst;
    }
    Event &state(uint64_t sk, uint16_t role, uint32_t owner, int from, int to, int err = 0, uint64_t rx = 0)
    {
        Event &e = add(N502_EV_STATE, owner);
        e.sk = sk;
        e.sock_role = role;
        e.owner = owner;
        e.oldstate = from;
        e.newstate = to;
        e.sk_err = err;
        e.bytes_received = rx;
        e.segs_out = 1; // its SYN left
        e.dst = Addr::ipv4(0x7f000001, 8080);
        e.src = Addr::ipv4(0x7f000001, 40000);
        if (role == N502_SOCK_UPSTREAM)
            std::swap(e.src, e.dst);
        return e;
    }
    void established()
    {
        state(SK, N502_SOCK_NGINX, NGINX, 7, 2);
        state(SK, N502_SOCK_NGINX, NGINX, 2, 1);
        connect(Addr::ipv4(0x7f000001, 8080), -EINPROGRESS);
        Event &a = add(N502_EV_ACCEPT, UP);
        a.sk = UPSK;
        a.peer_sk = SK;
    }
    // Established, and the upstream's end linked to Nginx's without an owner:
    // TCP owners are named by their first read, close or exit, and this one
    // did none of them.
    void unnamed_upstream()
    {
        state(SK, N502_SOCK_NGINX, NGINX, 7, 2);
        state(SK, N502_SOCK_NGINX, NGINX, 2, 1);
        Event &a = add(N502_EV_ACCEPT, 0);
        a.sk = UPSK;
        a.peer_sk = SK;
        a.took = N502_TOOK_UNKNOWN;
    }
    void retrans()
    {
        Event &e = add(N502_EV_RETRANS, 0);
        e.sk = SK;
        e.sock_role = N502_SOCK_NGINX;
        e.owner = NGINX;
        e.tcp_state = 2;
    }
    void reset(uint64_t sk, uint16_t role, uint32_t owner, uint32_t dir)
    {
        Event &e = add(N502_EV_RESET, owner);
        e.sk = sk;
        e.sock_role = role;
        e.owner = owner;
        e.dir = dir;
    }
    // A connect of Nginx's socket sk refused by 127.0.0.1:port, applied at
    // once (after flush()), 1 us after the last; returns its time.
    uint64_t refuse(uint64_t sk, uint16_t port, uint32_t owner = NGINX)
    {
        Event a;
        a.type = N502_EV_STATE;
        a.ts = (t += 1000);
        a.sk = sk;
        a.sock_role = N502_SOCK_NGINX;
        a.owner = owner;
        a.oldstate = 2;
        a.newstate = 7;
        a.sk_err = ECONNREFUSED;
        a.dst = Addr::ipv4(0x7f000001, port);
        st.apply(a);
        return a.ts;
    }
    std::vector<Event> ev;
};

LogLine line(const std::string &message, const std::string &upstream, int pid = NGINX, int conn = 7)
{
    std::string raw = fmt::format("2026/11/23 03:00:00 [error] {}#{}: *{} {}, client: 127.0.0.1, server: localhost, "
                                  "request: \"GET / HTTP/1.1\", upstream: \"{}\", host: \"localhost\"",
                                  pid, pid, conn, message, upstream);
    auto l = parse_upstream_error(raw);
    REQUIRE(l);
    return *l;
}

Verdict explain(Seq &s, const LogLine &l, Host *host)
{
    s.flush();
    Timebase tb(l.wall_sec * 1'000'000'000LL - static_cast<int64_t>(T0));
    Correlator c(s.st, tb, CorrelatorOptions{}, host);
    auto v = c.explain(l, true);
    REQUIRE(v);
    return *v;
}

template <typename T> T fact(const Verdict &v, const std::string &k)
{
    for (const auto &[key, val] : v.facts)
        if (key == k)
            return std::get<T>(val);
    FAIL("no fact " << k);
    return T{};
}

const std::string SOCK = "/run/app/app.sock";

} // namespace

TEST_CASE("unix socket path missing", "[causes]")
{
    Seq s;
    s.connect(Addr::unix_path(SOCK), -ENOENT);
    Verdict v = explain(s, line("connect() to unix:" + SOCK + " failed (2: No such file or directory) while connecting "
                                "to upstream",
                                "http://unix:" + SOCK + ":/"),
                        nullptr);
    CHECK(v.cause == "upstream_socket_missing");
    CHECK(v.upstream == "unix:" + SOCK);
    CHECK(v.evidence.at(0).error == ENOENT);
}

TEST_CASE("permission denied explained by the socket's mode", "[causes]")
{
    FakeHost h;
    h.files["/run"] = dir();
    h.files["/run/app"] = dir();
    h.files[SOCK] = FileFacts{0600, 0, 0, "root", "root", true};
    Seq s;
    s.connect(Addr::unix_path(SOCK), -EACCES);
    auto l = line("connect() to unix:" + SOCK + " failed (13: Permission denied) while connecting to upstream",
                  "http://unix:" + SOCK + ":/");
    Verdict v = explain(s, l, &h);
    CHECK(v.cause == "upstream_permission_denied");
    CHECK(fact<std::string>(v, "socket_mode") == "0600");
    CHECK(fact<int64_t>(v, "worker_uid") == 33);
    CHECK(fact<bool>(v, "mode_explains"));
    CHECK(v.explanation.find("not writable by uid 33") != std::string::npos);

    SECTION("a directory without search permission explains it too")
    {
        FakeHost h2 = h;
        h2.files[SOCK].mode = 0666;
        h2.files["/run/app"] = dir(0700);
        Seq s2;
        s2.connect(Addr::unix_path(SOCK), -EACCES);
        Verdict v2 = explain(s2, l, &h2);
        CHECK(fact<bool>(v2, "mode_explains"));
        CHECK(v2.explanation.find("/run/app") != std::string::npos);
    }
    SECTION("a mode that allows it points at something else")
    {
        FakeHost h3 = h;
        h3.files[SOCK].mode = 0666;
        Seq s3;
        s3.connect(Addr::unix_path(SOCK), -EACCES);
        Verdict v3 = explain(s3, l, &h3);
        CHECK_FALSE(fact<bool>(v3, "mode_explains"));
        CHECK(v3.explanation.find("security module") != std::string::npos);
    }
}

TEST_CASE("unix accept queue full", "[causes]")
{
    FakeHost h;
    h.queue = ListenerQueue{UP, "python3", 1, 0};
    Seq s;
    s.connect(Addr::unix_path(SOCK), -EAGAIN);
    Verdict v = explain(s, line("connect() to unix:" + SOCK + " failed (11: Resource temporarily unavailable) while "
                                "connecting to upstream",
                                "http://unix:" + SOCK + ":/"),
                        &h);
    CHECK(v.cause == "upstream_backlog_full");
    CHECK(fact<int64_t>(v, "listener_pid") == UP);
    CHECK(fact<int64_t>(v, "backlog") == 0);
    CHECK(*v.upstream_pid == UP);
}

TEST_CASE("unanswered SYNs: full accept queue vs a dropping firewall", "[causes]")
{
    auto timeout = line("upstream timed out (110: Connection timed out) while connecting to upstream",
                        "http://127.0.0.1:8080/");
    auto build = [](Seq &s) {
        s.state(SK, N502_SOCK_NGINX, NGINX, 7, 2);
        s.connect(Addr::ipv4(0x7f000001, 8080), -EINPROGRESS);
        s.retrans();
    };
    SECTION("listener with a full queue")
    {
        FakeHost h;
        h.queue = ListenerQueue{UP, "python3", 2, 1};
        Seq s;
        build(s);
        Verdict v = explain(s, timeout, &h);
        CHECK(v.cause == "upstream_backlog_full");
        CHECK(v.status == 504);
        CHECK(fact<int64_t>(v, "queue_len") == 2);
    }
    SECTION("no listener: dropped on the way")
    {
        FakeHost h;
        Seq s;
        build(s);
        Verdict v = explain(s, timeout, &h);
        CHECK(v.cause == "connect_timeout");
        CHECK(v.confidence == "high");
        bool seen = false;
        for (const auto &e : v.evidence)
            seen = seen || e.event == "syn_retransmit";
        CHECK(seen);
    }
    SECTION("resends the tracepoint missed: the socket's own count at SYN_SENT -> CLOSE")
    {
        FakeHost h;
        Seq s;
        s.state(SK, N502_SOCK_NGINX, NGINX, 7, 2);
        s.connect(Addr::ipv4(0x7f000001, 8080), -EINPROGRESS);
        s.state(SK, N502_SOCK_NGINX, NGINX, 2, 7).retransmits = 2;
        Verdict v = explain(s, timeout, &h);
        CHECK(v.cause == "connect_timeout");
        CHECK(v.confidence == "high");
        CHECK(fact<int64_t>(v, "syn_retransmits") == 2);
        bool gave_up = false;
        for (const auto &e : v.evidence)
            gave_up = gave_up || (e.event == "state" && e.detail.find("sent 3 times") != std::string::npos);
        CHECK(gave_up);
    }
    SECTION("no resend at all: Nginx gave up within the first second")
    {
        FakeHost h;
        Seq s;
        s.state(SK, N502_SOCK_NGINX, NGINX, 7, 2);
        s.connect(Addr::ipv4(0x7f000001, 8080), -EINPROGRESS);
        s.state(SK, N502_SOCK_NGINX, NGINX, 2, 7);
        Verdict v = explain(s, timeout, &h);
        CHECK(v.cause == "connect_timeout");
        CHECK(v.confidence == "medium");
        CHECK(fact<int64_t>(v, "syn_retransmits") == 0);
    }
    SECTION("listener with room: not a backlog problem")
    {
        FakeHost h;
        h.queue = ListenerQueue{UP, "python3", 0, 128};
        Seq s;
        build(s);
        CHECK(explain(s, timeout, &h).cause == "connect_timeout");
    }
}

TEST_CASE("a connect the kernel ended: SYN retries run out, or the host or network unreachable", "[causes]")
{
    const Addr up = Addr::ipv4(0x0a000002, 8080); // 10.0.0.2
    const std::string field = "http://10.0.0.2:8080/";
    // Nginx's SYN and its resends, then the kernel's end to the connect with err.
    auto ended = [&](Seq &s, int err, uint32_t resends) {
        s.state(SK, N502_SOCK_NGINX, NGINX, 7, 2).dst = up;
        s.connect(up, -EINPROGRESS);
        s.retrans();
        Event &e = s.state(SK, N502_SOCK_NGINX, NGINX, 2, 7, err);
        e.dst = up;
        e.retransmits = resends;
    };
    SECTION("SYN retries run out before Nginx's connect timeout (ETIMEDOUT): a 502")
    {
        FakeHost h;
        Seq s;
        ended(s, ETIMEDOUT, 6);
        Verdict v = explain(s, line("connect() failed (110: Connection timed out) while connecting to upstream", field),
                            &h);
        CHECK(v.cause == "connect_timeout");
        CHECK(v.status == 502);
        CHECK(v.confidence == "high");
        CHECK(fact<int64_t>(v, "syn_retransmits") == 6); // the socket's own count
        CHECK(v.explanation.find("until the kernel gave up (ETIMEDOUT") != std::string::npos);
        CHECK(std::any_of(v.evidence.begin(), v.evidence.end(), [](const Evidence &e) { return e.error == ETIMEDOUT; }));
    }
    SECTION("the same behind a listener whose accept queue is full")
    {
        FakeHost h;
        h.queue = ListenerQueue{UP, "python3", 2, 1};
        Seq s;
        ended(s, ETIMEDOUT, 6);
        Verdict v = explain(s, line("connect() failed (110: Connection timed out) while connecting to upstream", field),
                            &h);
        CHECK(v.cause == "upstream_backlog_full");
        CHECK(v.status == 502);
    }
    SECTION("no route to host (EHOSTUNREACH), after resends")
    {
        Seq s;
        ended(s, EHOSTUNREACH, 2);
        Verdict v = explain(s, line("connect() failed (113: No route to host) while connecting to upstream", field),
                            nullptr);
        CHECK(v.cause == "connect_timeout");
        CHECK(v.status == 502);
        CHECK(v.confidence == "high");
        CHECK(v.explanation.find("EHOSTUNREACH") != std::string::npos);
        CHECK(v.explanation.find("after 2 SYN retransmissions") != std::string::npos);
    }
    SECTION("network unreachable at once, in connect() itself (ENETUNREACH)")
    {
        Seq s;
        s.connect(up, -ENETUNREACH);
        Verdict v = explain(s, line("connect() to 10.0.0.2:8080 failed (101: Network is unreachable) while connecting "
                                    "to upstream",
                                    field),
                            nullptr);
        CHECK(v.cause == "connect_timeout");
        CHECK(v.explanation.find("ENETUNREACH") != std::string::npos);
        CHECK(v.explanation.find("retransmissions") == std::string::npos);
    }
    SECTION("an access-log 502 without an error line, from the same connection")
    {
        Seq s;
        ended(s, EHOSTUNREACH, 0);
        s.flush();
        AccessLine a;
        a.wall_sec = line("connect() failed (113: No route to host) while connecting to upstream", field).wall_sec;
        a.client = "127.0.0.1";
        a.request = "GET / HTTP/1.1";
        a.status = 502;
        Correlator c(s.st, Timebase(a.wall_sec * 1'000'000'000LL - static_cast<int64_t>(T0)));
        Verdict v = c.explain_access(a);
        CHECK(v.cause == "connect_timeout");
        CHECK(v.confidence == "medium");
    }
}

TEST_CASE("a reset SYN while a listener exists is a firewall", "[causes]")
{
    auto refused = line("connect() failed (111: Connection refused) while connecting to upstream",
                        "http://127.0.0.1:8080/");
    auto build = [](Seq &s) {
        s.state(SK, N502_SOCK_NGINX, NGINX, 7, 2);
        s.reset(SK, N502_SOCK_NGINX, NGINX, N502_RST_RECEIVED);
        s.state(SK, N502_SOCK_NGINX, NGINX, 2, 7, ECONNREFUSED);
        s.connect(Addr::ipv4(0x7f000001, 8080), -EINPROGRESS);
    };
    FakeHost h;
    h.queue = ListenerQueue{UP, "python3", 0, 128};
    Seq s;
    build(s);
    Verdict v = explain(s, refused, &h);
    CHECK(v.cause == "firewall_reset");
    CHECK(fact<int64_t>(v, "listener_pid") == UP);

    SECTION("without a listener it is not listening")
    {
        FakeHost none;
        Seq s2;
        build(s2);
        CHECK(explain(s2, refused, &none).cause == "upstream_not_listening");
    }
    SECTION("a full queue with tcp_abort_on_overflow is the kernel, not a firewall")
    {
        FakeHost full;
        full.queue = ListenerQueue{UP, "python3", 129, 128};
        full.abort_on_overflow = 1;
        Seq s3;
        build(s3);
        CHECK(explain(s3, refused, &full).cause != "firewall_reset");
    }
}

TEST_CASE("a listener found at the start that closed unseen: refused while its process lives", "[causes]")
{
    // A server that was listening before n502trace started stops gracefully:
    // it closes its listener (no kernel record: its close is not seen) and
    // drains its last requests.
    auto refused = line("connect() failed (111: Connection refused) while connecting to upstream",
                        "http://127.0.0.1:8080/");
    auto build = [](Seq &s) {
        s.st.add_process(UP, N502_PROC_LISTENER, "gunicorn");
        s.st.add_listener(Addr::ipv4(0x7f000001, 8080), UP, "gunicorn", 0);
        s.state(SK, N502_SOCK_NGINX, NGINX, 7, 2);
        s.reset(SK, N502_SOCK_NGINX, NGINX, N502_RST_RECEIVED);
        s.state(SK, N502_SOCK_NGINX, NGINX, 2, 7, ECONNREFUSED);
        s.connect(Addr::ipv4(0x7f000001, 8080), -EINPROGRESS);
    };
    FakeHost none; // nothing listens there now
    Seq s;
    build(s);
    Verdict v = explain(s, refused, &none);
    CHECK(v.cause == "upstream_not_listening");
    CHECK(v.confidence == "medium");
    CHECK(v.explanation.find("no longer listens") != std::string::npos);

    SECTION("still listening there: not this cause")
    {
        FakeHost h;
        h.queue = ListenerQueue{UP, "gunicorn", 0, 128};
        Seq s2;
        build(s2);
        CHECK(explain(s2, refused, &h).cause != "upstream_not_listening");
    }
    SECTION("replaying a recording made before the host was asked this: as it was")
    {
        Seq s3;
        build(s3);
        s3.flush();
        Timebase tb(refused.wall_sec * 1'000'000'000LL - static_cast<int64_t>(T0));
        CorrelatorOptions o;
        o.recheck_listener = false;
        Correlator c(s3.st, tb, o, &none);
        auto v3 = c.explain(refused, true);
        REQUIRE(v3);
        CHECK(v3->cause != "upstream_not_listening");
    }
}

TEST_CASE("local ports exhausted", "[causes]")
{
    FakeHost h;
    h.range = "40000-40000";
    h.sockets = {{"ESTABLISHED", 1}, {"TIME_WAIT", 2}};
    Seq s;
    // One connection holds the only port ...
    s.state(0xc000, N502_SOCK_NGINX, NGINX, 7, 2);
    s.state(0xc000, N502_SOCK_NGINX, NGINX, 2, 1);
    // ... the next connect fails at once: back to CLOSE before its SYN was
    // sent (no connect event for TCP; the state change says it).
    s.state(SK, N502_SOCK_NGINX, NGINX, 7, 2);
    s.state(SK, N502_SOCK_NGINX, NGINX, 2, 7).segs_out = 0;
    Verdict v = explain(s, line("connect() failed (99: Cannot assign requested address) while connecting to upstream",
                                "http://127.0.0.1:8080/"),
                        &h);
    CHECK(v.cause == "local_ports_exhausted");
    CHECK(fact<std::string>(v, "port_range") == "40000-40000");
    CHECK(fact<int64_t>(v, "nginx_sockets") == 3);
    CHECK(fact<int64_t>(v, "nginx_sockets_ESTABLISHED") == 1);
    CHECK(fact<int64_t>(v, "nginx_sockets_TIME_WAIT") == 2);
    CHECK(v.explanation.find("1 ESTABLISHED, 2 TIME_WAIT") != std::string::npos);
}

namespace {

// An established connection that Nginx closed first after 16 KiB, and the
// verdict for its line with this message.
Verdict after_nginx_closed(const std::string &message)
{
    Seq s;
    s.established();
    s.state(SK, N502_SOCK_NGINX, NGINX, 1, 4, 0, 16384); // Nginx closes first
    return explain(s, line(message, "http://127.0.0.1:8080/"), nullptr);
}

} // namespace

TEST_CASE("invalid response over a clean transport", "[causes]")
{
    Verdict v = after_nginx_closed("upstream sent too big header while reading response header from upstream");
    CHECK(v.cause == "upstream_invalid_response");
    CHECK(fact<std::string>(v, "closed_by") == "nginx");
    CHECK(fact<int64_t>(v, "bytes_received") == 16384);
    CHECK(*v.upstream_pid == UP);
}

TEST_CASE("read timeout with the upstream alive", "[causes]")
{
    FakeHost h;
    Seq s;
    s.established();
    Verdict v = explain(s, line("upstream timed out (110: Connection timed out) while reading response header from "
                                "upstream",
                                "http://127.0.0.1:8080/"),
                        &h);
    CHECK(v.cause == "upstream_timeout");
    CHECK(v.status == 504);
    CHECK(fact<std::string>(v, "upstream_state").rfind("S ", 0) == 0);
}

TEST_CASE("read timeout: an upstream that holds the connection unnamed is found through the host", "[causes]")
{
    // TCP owners are named by their close or exit; this one took the request
    // and does nothing: the kernel only linked its socket to Nginx's.
    FakeHost h;
    h.held_by = SocketHolder{UP, "slow-app"};
    Seq s;
    s.unnamed_upstream();
    auto timeout = line("upstream timed out (110: Connection timed out) while reading response header from upstream",
                        "http://127.0.0.1:8080/");
    Verdict v = explain(s, timeout, &h);
    CHECK(v.cause == "upstream_timeout");
    CHECK(v.confidence == "high");
    REQUIRE(v.upstream_pid);
    CHECK(*v.upstream_pid == UP);
    // Asked for the upstream's end (its address first) in Nginx's namespace.
    REQUIRE(h.holder_asked.size() == 1);
    CHECK(h.holder_asked[0] == fmt::format("127.0.0.1:8080>127.0.0.1:40000@{}", NGINX));
    auto held = std::find_if(v.evidence.begin(), v.evidence.end(), [](const Evidence &e) { return e.event == "accept"; });
    REQUIRE(held != v.evidence.end());
    CHECK(held->pid == UP);
    CHECK(held->ts > s.t); // seen holding it at the verdict, after everything else
    CHECK(held->detail.find("found through its open descriptors") != std::string::npos);

    // Nobody holds it (it was passed on, or the host cannot tell): as before.
    FakeHost none;
    Seq s2;
    s2.unnamed_upstream();
    Verdict v2 = explain(s2, timeout, &none);
    CHECK(v2.cause == "upstream_timeout");
    CHECK(v2.confidence == "medium");
    CHECK_FALSE(v2.upstream_pid);
    CHECK(none.holder_asked.size() == 1);
}

TEST_CASE("a long connection's timeline keeps its first and latest records, and says what it left out",
          "[causes]")
{
    FakeHost h;
    h.held_by = SocketHolder{UP, "slow-app"};
    Seq s;
    s.unnamed_upstream();
    // More records than a connection keeps (resets Nginx sent are not a
    // failure of the connection: the holder is still asked).
    for (int i = 0; i < 40; i++)
        s.reset(SK, N502_SOCK_NGINX, NGINX, N502_RST_SENT);
    Verdict v = explain(s, line("upstream timed out (110: Connection timed out) while reading response header "
                                "from upstream",
                                "http://127.0.0.1:8080/"),
                        &h);
    CHECK(v.cause == "upstream_timeout");
    REQUIRE(v.upstream_pid);
    CHECK(*v.upstream_pid == UP);
    // The holder, found last, is kept: the newest records are what a verdict is about.
    CHECK(std::any_of(v.evidence.begin(), v.evidence.end(), [](const Evidence &e) {
        return e.event == "accept" && e.detail.find("found through its open descriptors") != std::string::npos;
    }));
    // The first records stay (the connection's establishment) ...
    CHECK(v.evidence.front().event == "state");
    // ... and the gap is said, with its count: 1 established + 40 resets + 1 holder = 42, 32 kept.
    auto gap = std::find_if(v.evidence.begin(), v.evidence.end(), [](const Evidence &e) { return e.event == "omitted"; });
    REQUIRE(gap != v.evidence.end());
    CHECK(gap->detail.rfind("10 earlier records of this connection not kept", 0) == 0);
    CHECK(std::count_if(v.evidence.begin(), v.evidence.end(), [](const Evidence &e) { return e.event == "rst_sent"; }) ==
          30);
}

TEST_CASE("keep-alive race: data after the upstream's orderly close", "[causes]")
{
    Seq s;
    s.established();
    s.state(UPSK, N502_SOCK_UPSTREAM, UP, 1, 4); // the upstream closes the idle connection (FIN lost)
    s.t += 5'000'000'000ULL;                     // Nginx sends its next request later
    s.reset(UPSK, N502_SOCK_UPSTREAM, UP, N502_RST_SENT);
    s.reset(SK, N502_SOCK_NGINX, NGINX, N502_RST_RECEIVED);
    s.state(SK, N502_SOCK_NGINX, NGINX, 1, 7, ECONNRESET);
    auto l = line("recv() failed (104: Connection reset by peer) while reading response header from upstream",
                  "http://127.0.0.1:8080/");
    l.wall_sec += 5;
    Verdict v = explain(s, l, nullptr);
    CHECK(v.cause == "keepalive_race");
    CHECK(*v.upstream_pid == UP);
}

TEST_CASE("no live upstreams names the failures that marked the peers down; retries are grouped", "[causes]")
{
    Seq s;
    FakeHost h;
    s.flush();
    Timebase tb;
    s.refuse(0xd000, 8081);
    s.refuse(0xe000, 8082);
    auto l1 = line("connect() failed (111: Connection refused) while connecting to upstream", "http://127.0.0.1:8081/");
    auto l2 = line("connect() failed (111: Connection refused) while connecting to upstream", "http://127.0.0.1:8082/");
    auto l3 = line("no live upstreams while connecting to upstream", "http://pool/", NGINX, 9);
    Correlator c(s.st, Timebase(l1.wall_sec * 1'000'000'000LL - static_cast<int64_t>(T0)), CorrelatorOptions{}, &h);
    auto v1 = c.explain(l1, true);
    auto v2 = c.explain(l2, true);
    auto v3 = c.explain(l3, true);
    REQUIRE(v1);
    REQUIRE(v2);
    REQUIRE(v3);
    CHECK(v1->cause == "upstream_not_listening");
    CHECK(v2->cause == "upstream_not_listening");
    CHECK(v1->attempt == 1);
    CHECK(v2->attempt == 2);
    CHECK(v1->request_key == v2->request_key);
    CHECK(v3->cause == "no_live_upstreams");
    CHECK(v3->attempt == 1);
    CHECK(v3->request_key != v1->request_key);
    int earlier = 0;
    for (const auto &e : v3->evidence)
        if (e.event == "earlier_failure" && e.cause == "upstream_not_listening")
            earlier++;
    CHECK(earlier == 2);
}

TEST_CASE("a verdict the rate limit will not show is decided and counted, not explained", "[causes][ratelimit]")
{
    Seq s;
    FakeHost h;
    s.flush();
    s.refuse(0xd000, 8081);
    s.refuse(0xe000, 8082);
    auto l1 = line("connect() failed (111: Connection refused) while connecting to upstream", "http://127.0.0.1:8081/");
    auto l2 = line("connect() failed (111: Connection refused) while connecting to upstream", "http://127.0.0.1:8082/");
    auto l3 = line("no live upstreams while connecting to upstream", "http://pool/", NGINX, 9);
    std::vector<std::string> asked;
    CorrelatorOptions opt;
    // Shows the first verdict and the no-live-upstreams one, not the second.
    opt.admit = [&](const std::string &cause, const std::string &upstream) {
        asked.push_back(cause + " " + upstream);
        return asked.size() != 2;
    };
    Correlator c(s.st, Timebase(l1.wall_sec * 1'000'000'000LL - static_cast<int64_t>(T0)), opt, &h);
    auto v1 = c.explain(l1, true);
    auto v2 = c.explain(l2, true);
    auto v3 = c.explain(l3, true);
    REQUIRE(v1);
    REQUIRE(v2);
    REQUIRE(v3);
    // Asked once per verdict, with the cause the rules decided.
    REQUIRE(asked.size() == 3);
    CHECK(asked[0] == "upstream_not_listening 127.0.0.1:8081");
    CHECK(asked[1] == "upstream_not_listening 127.0.0.1:8082");
    CHECK(asked[2] == "no_live_upstreams pool");
    CHECK(v1->rendered);
    CHECK_FALSE(v1->explanation.empty());
    CHECK_FALSE(v1->evidence.empty());
    CHECK(v1->request == l1.request);
    CHECK_FALSE(v1->request_key.empty());
    // The suppressed one: what counts it, and nothing worked out.
    CHECK_FALSE(v2->rendered);
    CHECK(v2->cause == "upstream_not_listening");
    CHECK(v2->upstream == "127.0.0.1:8082");
    CHECK(v2->nginx_pid == NGINX);
    CHECK(v2->explanation.empty());
    CHECK(v2->evidence.empty());
    CHECK(v2->request.empty());
    CHECK(v2->request_key.empty());
    // Retries are still grouped through it.
    CHECK(v2->attempt == 2);
    // A later verdict that points back still sees it, and says it was not printed.
    CHECK(v3->rendered);
    int earlier = 0, unprinted = 0;
    for (const auto &e : v3->evidence) {
        if (e.event != "earlier_failure")
            continue;
        earlier++;
        unprinted += e.detail.find("printed none") != std::string::npos;
    }
    CHECK(earlier == 2);
    CHECK(unprinted == 1);
}

TEST_CASE("no live upstreams after a storm: one entry per upstream and cause, counted, and a short sentence",
          "[causes][ratelimit]")
{
    Seq s;
    FakeHost h;
    s.flush();
    uint64_t last_9000 = 0;
    // 600 refused connects to 127.0.0.1:9000 (more than any fixed history
    // of verdicts would hold), then one to each of 9001-9011; another worker
    // fails on 9000 too, which is not this worker's; the rate limit shows the
    // first of each worker's upstream only.
    std::vector<LogLine> lines;
    int conn = 100;
    for (int i = 0; i < 611; i++) {
        uint16_t port = static_cast<uint16_t>(i < 600 ? 9000 : 9000 + i - 599);
        uint64_t ts = s.refuse(0x100000 + static_cast<uint64_t>(i) * 0x100, port);
        if (port == 9000)
            last_9000 = ts;
        lines.push_back(line("connect() failed (111: Connection refused) while connecting to upstream",
                             fmt::format("http://127.0.0.1:{}/", port), NGINX, conn++));
        if (i % 100 == 0) {
            s.refuse(0x900000 + static_cast<uint64_t>(i) * 0x100, 9000, NGINX + 1);
            lines.push_back(line("connect() failed (111: Connection refused) while connecting to upstream",
                                 "http://127.0.0.1:9000/", NGINX + 1, conn++));
        }
    }
    std::set<std::string> shown;
    CorrelatorOptions opt;
    opt.admit = [&](const std::string &cause, const std::string &upstream) {
        return cause == "no_live_upstreams" || shown.insert(cause + " " + upstream).second;
    };
    Timebase tb(lines[0].wall_sec * 1'000'000'000LL - static_cast<int64_t>(T0));
    int64_t now = tb.to_real_ns(T0);
    opt.now_real = [&] { return now += 1'000'000; }; // a verdict a millisecond
    Correlator c(s.st, tb, opt, &h);
    for (const auto &l : lines)
        REQUIRE(c.explain(l, true));
    auto v = c.explain(line("no live upstreams while connecting to upstream", "http://pool/", NGINX, conn), true);
    REQUIRE(v);
    CHECK(v->cause == "no_live_upstreams");
    std::map<std::string, uint64_t> counted;
    for (const auto &e : v->evidence) {
        if (e.event != "earlier_failure")
            continue;
        CHECK(e.cause == "upstream_not_listening");
        CHECK(e.pid == static_cast<uint32_t>(NGINX));
        REQUIRE(e.count);
        counted[e.upstream] += *e.count;
        // The explanation that was written out, not a placeholder.
        CHECK(e.detail.find("printed none") == std::string::npos);
        if (e.upstream == "127.0.0.1:9000") {
            CHECK(e.detail.find("(600 failures since ") != std::string::npos);
            CHECK(e.ts == last_9000); // the last failure's kernel time
        }
    }
    CHECK(counted.size() == 12);
    CHECK(counted["127.0.0.1:9000"] == 600);
    CHECK(counted["127.0.0.1:9011"] == 1);
    // The sentence names eight and says how many more.
    CHECK(v->explanation.find("127.0.0.1:9000 (upstream_not_listening, 600 times since ") != std::string::npos);
    CHECK(v->explanation.find("and 4 more (see the evidence)") != std::string::npos);
    CHECK(v->explanation.find("127.0.0.1:9011") == std::string::npos);
    CHECK(v->explanation.size() < 600);
    CHECK(verdict_json(*v, Timebase()).find("\"count\":600") != std::string::npos);
    // A minute later they are no longer what marked the servers down.
    now += 61'000'000'000LL;
    auto later = c.explain(line("no live upstreams while connecting to upstream", "http://pool/", NGINX, conn + 1), true);
    REQUIRE(later);
    CHECK(later->confidence == "medium");
    CHECK(later->evidence.empty());
}

TEST_CASE("access-log 502s during a storm of distinct requests are covered by their error-log verdicts",
          "[causes][accesslog]")
{
    // 5,000 failures of distinct requests from distinct clients within one
    // second: each one's access line finds its verdict however many came
    // after it.
    Seq s;
    s.flush();
    Correlator c(s.st, Timebase());
    std::vector<AccessLine> access;
    for (int i = 0; i < 5000; i++) {
        std::string raw = fmt::format("2026/11/23 03:00:00 [error] {}#{}: *{} connect() failed (111: Connection refused) "
                                      "while connecting to upstream, client: 10.0.{}.{}, server: localhost, "
                                      "request: \"GET /item/{} HTTP/1.1\", upstream: \"http://127.0.0.1:9000/item/{}\", "
                                      "host: \"localhost\"",
                                      NGINX, NGINX, i + 1, i / 250, i % 250, i, i);
        auto l = parse_upstream_error(raw);
        REQUIRE(l);
        REQUIRE(c.explain(*l, true));
        AccessLine a;
        a.wall_sec = l->wall_sec;
        a.client = l->client;
        a.request = l->request;
        a.status = 502;
        access.push_back(a);
    }
    size_t covered = 0;
    for (const auto &a : access)
        covered += c.covered(a);
    CHECK(covered == access.size());
    AccessLine other = access[0];
    other.request = "GET /item/none HTTP/1.1";
    CHECK_FALSE(c.covered(other));
    other = access[0];
    other.wall_sec += 20; // the same request much later: another one
    CHECK_FALSE(c.covered(other));
}

TEST_CASE("recent requests: kept while 65,536 lines follow, dropped before twice that; bounded slots",
          "[causes][accesslog]")
{
    RecentRequests r;
    const size_t gen = RecentRequests::kGenLines;
    for (uint64_t i = 1; i <= gen; i++)
        r.add(i * 0x9e3779b97f4a7c15ULL, 1000);
    // The first generation is full: the next line starts the second one.
    for (uint64_t i = gen + 1; i <= 2 * gen; i++)
        r.add(i * 0x9e3779b97f4a7c15ULL, 1000);
    CHECK(r.held() == 2 * gen);
    CHECK(r.slots() <= 2 * 2 * gen); // at most half full: 2^17 slots a generation
    size_t seen = 0;
    for (uint64_t i = 1; i <= 2 * gen; i++)
        seen += r.seen_near(i * 0x9e3779b97f4a7c15ULL, 1000, 3);
    CHECK(seen == 2 * gen);
    CHECK_FALSE(r.seen_near(12345, 1000, 3));
    CHECK_FALSE(r.seen_near(1 * 0x9e3779b97f4a7c15ULL, 1004, 3)); // seen at 1000: not within 3 s of 1004
    // One more line: the first generation goes whole.
    r.add(0x1234, 1000);
    CHECK(r.held() == gen + 1);
    CHECK_FALSE(r.seen_near(1 * 0x9e3779b97f4a7c15ULL, 1000, 3));
    CHECK(r.seen_near((gen + 1) * 0x9e3779b97f4a7c15ULL, 1000, 3));
    CHECK(r.seen_near(0x1234, 1000, 3));
}

TEST_CASE("recent requests: one request's seconds out of order, a hash of 0, a clock far off", "[causes][accesslog]")
{
    RecentRequests r;
    r.add(7, 100);
    r.add(7, 90); // 10 s before the newest: among the 16 before it
    r.add(7, 80); // 20 s before: not remembered
    CHECK(r.seen_near(7, 100, 0));
    CHECK(r.seen_near(7, 90, 0));
    CHECK_FALSE(r.seen_near(7, 80, 0));
    CHECK_FALSE(r.seen_near(7, 95, 0));
    r.add(7, 130); // 30 s on: a new newest, the earlier seconds forgotten
    CHECK(r.seen_near(7, 130, 0));
    CHECK_FALSE(r.seen_near(7, 100, 2));
    r.add(0, 100);
    CHECK(r.seen_near(0, 100, 0));
    r.add(9, 100 + (int64_t{1} << 40)); // a clock set far ahead: a generation of its own
    CHECK(r.seen_near(9, 100 + (int64_t{1} << 40), 0));
    CHECK(r.seen_near(0, 100, 0));
    r.add(11, 100); // and back: another (the first goes)
    CHECK(r.seen_near(11, 100, 0));
    CHECK(r.seen_near(9, 100 + (int64_t{1} << 40), 0));
    CHECK_FALSE(r.seen_near(0, 100, 0));
}

TEST_CASE("access-log 502s: the same request seen again later still covers the earlier one; the window and the bound",
          "[causes][accesslog]")
{
    Seq s;
    s.flush();
    auto error_at = [](int64_t sec_offset, int i) {
        std::string raw = fmt::format("2026/11/23 03:00:{:02} [error] {}#{}: *{} connect() failed (111: Connection "
                                      "refused) while connecting to upstream, client: 10.0.0.1, server: localhost, "
                                      "request: \"GET /health/{} HTTP/1.1\", upstream: \"http://127.0.0.1:9000/\", "
                                      "host: \"localhost\"",
                                      sec_offset, NGINX, NGINX, i + 1, i);
        auto l = parse_upstream_error(raw);
        REQUIRE(l);
        return *l;
    };
    auto access_of = [](const LogLine &l) {
        AccessLine a;
        a.wall_sec = l.wall_sec;
        a.client = l.client;
        a.request = l.request;
        a.status = 502;
        return a;
    };
    SECTION("a health check failing at S and again at S+5: the access line of S is covered")
    {
        Correlator c(s.st, Timebase());
        auto first = error_at(0, 0), again = error_at(5, 0);
        REQUIRE(c.explain(first, true));
        REQUIRE(c.explain(again, true));
        CHECK(c.covered(access_of(first)));
        CHECK(c.covered(access_of(again)));
        AccessLine between = access_of(first);
        between.wall_sec += 9; // 4 s after the second: neither
        CHECK_FALSE(c.covered(between));
    }
    SECTION("a line is kept two minutes of log time at least, forgotten after four")
    {
        Correlator c(s.st, Timebase());
        auto first = error_at(0, 0);
        REQUIRE(c.explain(first, true));
        LogLine later = error_at(0, 1);
        later.wall_sec += 121; // two minutes on: the first is in the older generation
        REQUIRE(c.explain(later, true));
        CHECK(c.covered(access_of(first)));
        LogLine much_later = error_at(0, 2);
        much_later.wall_sec += 242; // two more: the first's generation is dropped
        REQUIRE(c.explain(much_later, true));
        CHECK_FALSE(c.covered(access_of(first)));
        CHECK(c.covered(access_of(later)));
        CHECK(c.covered(access_of(much_later)));
    }
    SECTION("an access-only verdict covers nothing")
    {
        Correlator c(s.st, Timebase());
        AccessLine a = access_of(error_at(0, 0));
        c.explain_access(a);
        CHECK_FALSE(c.covered(a));
    }
}

TEST_CASE("access-log 502s: a request line the error log cut short, or the access log escaped, is still covered",
          "[causes][accesslog]")
{
    Seq s;
    s.flush();
    // Nginx writes at most 2047 bytes of an error line: a long request line
    // loses its end (and the fields after it).
    auto cut_error = [](const std::string &request) {
        std::string raw = fmt::format("2026/11/23 03:00:00 [error] {}#{}: *7 connect() failed (111: Connection "
                                      "refused) while connecting to upstream, client: 10.0.0.1, server: localhost, "
                                      "request: \"{}\", upstream: \"http://127.0.0.1:9000/\", host: \"localhost\"",
                                      NGINX, NGINX, request);
        raw.resize(std::min<size_t>(raw.size(), 2047));
        auto l = parse_upstream_error(raw);
        REQUIRE(l);
        return *l;
    };
    auto access = [](const std::string &line) {
        auto a = parse_access_error(line);
        REQUIRE(a);
        return *a;
    };
    std::string long_path = "/search?q=" + std::string(3000, 'x');
    SECTION("a request line longer than the error line")
    {
        Correlator c(s.st, Timebase());
        LogLine l = cut_error("GET " + long_path + " HTTP/1.1");
        CHECK(l.request_cut);
        CHECK(l.request.size() < 2000);
        auto v = c.explain(l, true);
        REQUIRE(v);
        CHECK(std::any_of(v->notes.begin(), v->notes.end(),
                          [](const std::string &n) { return n.find("cut its error-log line") != std::string::npos; }));
        CHECK(c.covered(access("10.0.0.1 - - [23/Nov/2026:03:00:01 +0000] \"GET " + long_path +
                               " HTTP/1.1\" 502 157 \"-\" \"curl\"")));
        // Another request, or the same one from another client, is not.
        CHECK_FALSE(c.covered(access("10.0.0.1 - - [23/Nov/2026:03:00:01 +0000] \"GET /search?q=y" +
                                     std::string(3000, 'x') + " HTTP/1.1\" 502 157 \"-\" \"curl\"")));
        CHECK_FALSE(c.covered(access("10.0.0.2 - - [23/Nov/2026:03:00:01 +0000] \"GET " + long_path +
                                     " HTTP/1.1\" 502 157 \"-\" \"curl\"")));
        // Nor a short request that is only the beginning of the cut one.
        CHECK_FALSE(c.covered(access("10.0.0.1 - - [23/Nov/2026:03:00:01 +0000] \"GET /search?q=xx HTTP/1.1\" 502 1")));
    }
    SECTION("the cut line is matched to the worker's failed connection, which names the upstream")
    {
        FakeHost h;
        s.refuse(0xd000, 8081);
        LogLine l = cut_error("GET " + long_path + " HTTP/1.1");
        CHECK(l.upstream_peer.empty());
        Correlator c(s.st, Timebase(l.wall_sec * 1'000'000'000LL - static_cast<int64_t>(T0)), CorrelatorOptions{}, &h);
        auto v = c.explain(l, true);
        REQUIRE(v);
        CHECK(v->cause == "upstream_not_listening");
        CHECK(v->upstream == "127.0.0.1:8081");
        CHECK(std::any_of(v->notes.begin(), v->notes.end(), [](const std::string &n) {
            return n.find("the one of the failed connection matched to it") != std::string::npos;
        }));
    }
    SECTION("cut lines of many clients, each kept to another length: every access line is covered")
    {
        Correlator c(s.st, Timebase());
        std::vector<AccessLine> lines;
        for (int i = 0; i < 100; i++) {
            // The server name's length moves where each line is cut.
            std::string raw = fmt::format("2026/11/23 03:00:00 [error] {}#{}: *{} connect() failed (111: Connection "
                                          "refused) while connecting to upstream, client: 10.1.{}.{}, server: s{}, "
                                          "request: \"GET {}/{} HTTP/1.1\", upstream: \"http://127.0.0.1:9000/\"",
                                          NGINX, NGINX, i + 1, i / 10, i % 10, std::string(i, 'x'), long_path, i);
            raw.resize(2047);
            auto l = parse_upstream_error(raw);
            REQUIRE(l);
            REQUIRE(l->request_cut);
            REQUIRE(c.explain(*l, true));
            lines.push_back(access(fmt::format("{} - - [23/Nov/2026:03:00:01 +0000] \"GET {}/{} HTTP/1.1\" 502 1",
                                               l->client, long_path, i)));
        }
        size_t n = 0;
        for (const auto &a : lines)
            n += c.covered(a);
        CHECK(n == lines.size());
    }
    SECTION("a cut line never takes a healthy connection for its upstream")
    {
        FakeHost h;
        s.established(); // a live connection to 127.0.0.1:8080, nothing wrong with it
        s.flush();
        for (const char *msg : {"upstream timed out (110: Connection timed out) while reading response header from "
                                "upstream",
                                "upstream prematurely closed connection while reading response header from upstream"}) {
            std::string raw = fmt::format("2026/11/23 03:00:00 [error] {}#{}: *7 {}, client: 10.0.0.1, server: "
                                          "localhost, request: \"GET {} HTTP/1.1\", upstream: \"http://127.0.0.1:8080/\"",
                                          NGINX, NGINX, msg, long_path);
            raw.resize(2047);
            auto l = parse_upstream_error(raw);
            REQUIRE(l);
            CHECK(l->upstream_cut);
            Correlator c(s.st, Timebase(l->wall_sec * 1'000'000'000LL - static_cast<int64_t>(T0)), CorrelatorOptions{},
                         &h);
            auto v = c.explain(*l, true);
            REQUIRE(v);
            CHECK(v->upstream.empty());
            CHECK_FALSE(v->upstream_pid);
            CHECK(std::any_of(v->notes.begin(), v->notes.end(), [](const std::string &n) {
                return n.find("no failed connection stood in for it") != std::string::npos;
            }));
        }
    }
    SECTION("cut just after the request, or inside the upstream: the request is whole, the upstream unknown")
    {
        FakeHost h;
        std::string head = fmt::format("2026/11/23 03:00:00 [error] {}#{}: *7 connect() failed (111: Connection "
                                       "refused) while connecting to upstream, client: 10.0.0.1, server: localhost, "
                                       "request: \"",
                                       NGINX, NGINX);
        std::string tail = " HTTP/1.1\", upstream: \"http://127.0.0.1:8081/\", host: \"localhost\"";
        // Where the cut falls: n bytes kept from the request's closing quote on: '"' (which could as well
        // be a quote inside a longer request: taken for a cut request), '",', '", ', '", ups',
        // '", upstream: "', '", upstream: "http://127.0.0'.
        for (size_t n : {1, 2, 3, 6, 14, 28}) {
            s.refuse(0xd000 + n, 8081); // each line's own failure
            std::string request = "GET /" + std::string(2047 - head.size() - 5 - 9 - n, 'p') + " HTTP/1.1";
            std::string raw = head + request.substr(0, request.size() - 9) + tail;
            raw.resize(2047);
            auto l = parse_upstream_error(raw);
            REQUIRE(l);
            INFO("cut " << n << " bytes after the request: " << raw.substr(raw.size() - 40));
            CHECK(l->request == request);
            // Before the whole ', upstream: "' the request may have been longer: tried as a beginning too.
            CHECK(l->request_cut == (n < 14));
            CHECK(l->upstream_cut);
            CHECK(l->upstream_peer.empty()); // never "127.0.0", an address it is not
            Correlator c(s.st, Timebase(l->wall_sec * 1'000'000'000LL - static_cast<int64_t>(T0)), CorrelatorOptions{},
                         &h);
            auto v = c.explain(*l, true);
            REQUIRE(v);
            CHECK(v->upstream == "127.0.0.1:8081");
            CHECK(v->cause == "upstream_not_listening");
            CHECK(v->request == request);
            CHECK(c.covered(access("10.0.0.1 - - [23/Nov/2026:03:00:00 +0000] \"" + request + "\" 502 1")));
        }
    }
    SECTION("cut inside the upstream's URI: the address is whole and names the upstream")
    {
        std::string request = "GET /" + std::string(1000, 'u') + " HTTP/1.1";
        std::string raw = fmt::format("2026/11/23 03:00:00 [error] {}#{}: *7 connect() failed (111: Connection "
                                      "refused) while connecting to upstream, client: 10.0.0.1, server: localhost, "
                                      "request: \"{}\", upstream: \"http://127.0.0.1:8081/{}\", host: \"localhost\"",
                                      NGINX, NGINX, request, std::string(1000, 'u'));
        raw.resize(2047);
        auto l = parse_upstream_error(raw);
        REQUIRE(l);
        CHECK(l->upstream_peer == "127.0.0.1:8081");
        CHECK_FALSE(l->upstream_cut);
        CHECK_FALSE(l->request_cut);
        CHECK(l->request == request);
    }
    SECTION("cut before the request field (a long message): the upstream is unknown, not absent")
    {
        // Cut before the client, inside the server name, after it.
        for (size_t n : {1930, 1900, 1885}) {
            std::string raw = fmt::format("2026/11/23 03:00:00 [error] {}#{}: *7 upstream sent invalid header: "
                                          "\"{}\" while reading response header from upstream, client: 10.0.0.1, "
                                          "server: example.com, request: \"GET / HTTP/1.1\", upstream: "
                                          "\"http://127.0.0.1:8081/\"",
                                          NGINX, NGINX, std::string(n, 'h'));
            raw.resize(2047);
            INFO(raw.substr(raw.size() - 40));
            auto l = parse_upstream_error(raw);
            REQUIRE(l);
            CHECK(l->upstream_peer.empty());
            CHECK(l->upstream_cut);
        }
    }
    SECTION("cut just after a quote inside the request: it looks whole, but fills the line")
    {
        Correlator c(s.st, Timebase());
        LogLine probe = cut_error("GET " + long_path + " HTTP/1.1");
        size_t keep = probe.request.size(); // the request bytes a full-length line holds
        std::string request = "GET /" + std::string(keep - 6, 'q') + "\"" + std::string(100, 'r') + " HTTP/1.1";
        LogLine l = cut_error(request);
        CHECK(l.request == request.substr(0, keep - 1)); // the quote taken for the closing one
        CHECK(l.request_cut);
        REQUIRE(c.explain(l, true));
        std::string escaped = "GET /" + std::string(keep - 6, 'q') + "\\x22" + std::string(100, 'r') + " HTTP/1.1";
        CHECK(c.covered(access("10.0.0.1 - - [23/Nov/2026:03:00:00 +0000] \"" + escaped + "\" 502 1")));
    }
    SECTION("cut inside the request just after a quote and a comma or more of the next field")
    {
        LogLine probe = cut_error("GET " + long_path + " HTTP/1.1");
        size_t keep = probe.request.size();
        for (std::string inner : {"\",", "\", ", "\", up", "\", upstream: \"", "\", upstream: \"http://127.0"}) {
            Correlator c(s.st, Timebase());
            // The line ends exactly after `inner`, which is inside the request.
            std::string request =
                "GET /" + std::string(keep - 5 - inner.size(), 'q') + inner + std::string(100, 'r') + " HTTP/1.1";
            LogLine l = cut_error(request);
            INFO("cut after " << inner << ": request ends " << l.request.substr(l.request.size() - 20));
            // A whole `", upstream: "` looks like the end of a whole request
            // (request_cut false), the line cut in the upstream field.
            CHECK((l.request_cut || l.upstream_cut));
            REQUIRE(c.explain(l, true));
            std::string escaped = request;
            for (size_t at = escaped.find('"'); at != std::string::npos; at = escaped.find('"', at + 4))
                escaped.replace(at, 1, "\\x22");
            CHECK(c.covered(access("10.0.0.1 - - [23/Nov/2026:03:00:00 +0000] \"" + escaped + "\" 502 1")));
        }
    }
    SECTION("bytes the access log escapes and the error log writes as they came")
    {
        Correlator c(s.st, Timebase());
        LogLine l = cut_error("GET /caf\xc3\xa9/\"x\"\\y HTTP/1.1");
        CHECK_FALSE(l.request_cut);
        auto v = c.explain(l, true);
        REQUIRE(v);
        CHECK(v->notes.empty());
        CHECK(c.covered(access("10.0.0.1 - - [23/Nov/2026:03:00:00 +0000] "
                               "\"GET /caf\\xC3\\xA9/\\x22x\\x22\\x5Cy HTTP/1.1\" 502 1")));
        CHECK_FALSE(c.covered(access("10.0.0.1 - - [23/Nov/2026:03:00:00 +0000] "
                                     "\"GET /caf\\xC3\\xA9/\\x22x\\x22\\x5Cz HTTP/1.1\" 502 1")));
    }
}

TEST_CASE("retry grouping stays bounded when thousands of client connections fail at once", "[causes]")
{
    Seq s;
    CorrelatorOptions opt;
    opt.attempts_max = 64;
    int64_t now = 1'000'000'000'000LL;
    opt.now_real = [&] { return now; };
    Correlator c(s.st, Timebase(), opt);
    size_t most = 0;
    for (int conn = 1; conn <= 1000; conn++) {
        now += 1'000'000; // 1000 requests in 1 s: none is stale
        auto l = line("connect() failed (111: Connection refused) while connecting to upstream",
                      "http://127.0.0.1:8081/", NGINX, conn);
        auto v = c.explain(l, true);
        REQUIRE(v);
        CHECK(v->attempt == 1);
        most = std::max(most, c.attempts_held());
    }
    CHECK(most <= 2 * opt.attempts_max);
    CHECK(c.attempts_held() >= opt.attempts_max / 2);
    // The newest request's retry (another server of the group) is still one request.
    auto retry = line("connect() failed (111: Connection refused) while connecting to upstream",
                      "http://127.0.0.1:8082/", NGINX, 1000);
    auto v = c.explain(retry, true);
    REQUIRE(v);
    CHECK(v->attempt == 2);
    // Once they are stale, the first sweep lets them all go: what is left
    // is exactly the requests since.
    now += 6'000'000'000LL;
    size_t fresh = 0, before = c.attempts_held();
    bool swept = false;
    for (int conn = 2000; conn < 2000 + 4 * static_cast<int>(opt.attempts_max) && !swept; conn++) {
        c.explain(line("connect() failed (111: Connection refused) while connecting to upstream",
                       "http://127.0.0.1:8081/", NGINX, conn),
                  true);
        fresh++;
        swept = c.attempts_held() < before + 1;
        before = c.attempts_held();
    }
    REQUIRE(swept);
    CHECK(c.attempts_held() == fresh);

    // Verdicts of one pass of the event loop share a time: still bounded.
    Correlator same_time(s.st, Timebase(), opt);
    most = 0;
    for (int conn = 1; conn <= 1000; conn++) {
        same_time.explain(line("connect() failed (111: Connection refused) while connecting to upstream",
                               "http://127.0.0.1:8081/", NGINX, conn),
                          true);
        most = std::max(most, same_time.attempts_held());
    }
    CHECK(most <= 2 * opt.attempts_max + 1);
}

TEST_CASE("access-log 502s: covered by an error-log verdict, or explained from the closest failed connection",
          "[causes][accesslog]")
{
    Seq s;
    s.established();
    Event &sig = s.add(N502_EV_SIGNAL, 777);
    sig.target = UP;
    sig.sig = 9;
    s.add(N502_EV_EXIT, UP).exit_code = 9;
    s.state(UPSK, N502_SOCK_UPSTREAM, UP, 1, 4, 0, 0);
    s.state(SK, N502_SOCK_NGINX, NGINX, 1, 8);
    s.flush();
    auto l = line("upstream prematurely closed connection while reading response header from upstream",
                  "http://127.0.0.1:8080/");
    Timebase tb(l.wall_sec * 1'000'000'000LL - static_cast<int64_t>(T0));
    AccessLine a;
    a.wall_sec = l.wall_sec;
    a.client = "127.0.0.1";
    a.request = "GET / HTTP/1.1";
    a.status = 502;
    SECTION("no error-log line: the failed connection explains it, with medium confidence")
    {
        Correlator c(s.st, tb);
        CHECK_FALSE(c.covered(a));
        Verdict v = c.explain_access(a);
        CHECK(v.cause == "upstream_killed");
        CHECK(v.confidence == "medium");
        CHECK(*v.upstream_pid == UP);
        CHECK_FALSE(v.notes.empty());
    }
    SECTION("an error-log verdict for the same request covers it")
    {
        Correlator c(s.st, tb);
        REQUIRE(c.explain(l, true));
        CHECK(c.covered(a));
        a.request = "GET /other HTTP/1.1";
        CHECK_FALSE(c.covered(a));
    }
    SECTION("no failed connection at all: unknown, and it says what that means")
    {
        State empty;
        Correlator c(empty, tb);
        Verdict v = c.explain_access(a);
        CHECK(v.cause == "unknown");
        CHECK(v.explanation.find("return 502") != std::string::npos);
    }
}

TEST_CASE("a connection Nginx closed itself is not the one an upstream closed prematurely", "[causes]")
{
    // Recorded in the churn scenario: a client went away, so Nginx closed an
    // upstream connection itself (no bytes yet), just before the real
    // premature close by a killed upstream process on another connection.
    Seq s;
    // Connection A: Nginx closes first (FIN_WAIT1, 0 bytes), then the end.
    s.state(0xf000, N502_SOCK_NGINX, NGINX, 7, 2);
    s.state(0xf000, N502_SOCK_NGINX, NGINX, 2, 1);
    s.state(0xf000, N502_SOCK_NGINX, NGINX, 1, 4, 0, 0);
    s.state(0xf000, N502_SOCK_NGINX, NGINX, 5, 7);
    // Connection B: accepted by UP, which is killed: FIN to Nginx, 0 bytes.
    s.established();
    Event &sig = s.add(N502_EV_SIGNAL, 777);
    sig.target = UP;
    sig.sig = 9;
    s.add(N502_EV_EXIT, UP).exit_code = 9;
    s.state(UPSK, N502_SOCK_UPSTREAM, UP, 1, 4);
    s.state(SK, N502_SOCK_NGINX, NGINX, 1, 8);
    Verdict v = explain(s, line("upstream prematurely closed connection while reading response header from upstream",
                                "http://127.0.0.1:8080/"),
                        nullptr);
    CHECK(v.cause == "upstream_killed");
    CHECK(*v.upstream_pid == UP);
}

TEST_CASE("unix: the acceptor seen before Nginx's connect() returns", "[causes]")
{
    // On two CPUs a PHP-FPM child can return from accept() before Nginx
    // returns from connect(): the accept event comes first in the stream.
    Seq s;
    Event &a = s.add(N502_EV_ACCEPT, UP);
    a.sk = UPSK;
    a.peer_sk = SK;
    a.owner = NGINX; // Nginx's socket owner, recorded at its connect
    s.connect(Addr::unix_path(SOCK), 0);
    Event &sig = s.add(N502_EV_SIGNAL, 777);
    sig.target = UP;
    sig.sig = 9;
    s.add(N502_EV_EXIT, UP).exit_code = 9;
    Verdict v = explain(s, line("recv() failed (104: Connection reset by peer) while reading response header from "
                                "upstream",
                                "fastcgi://unix:" + SOCK + ":"),
                        nullptr);
    CHECK(v.cause == "upstream_killed");
    CHECK(*v.upstream_pid == UP);
}

// --tracking adaptive: what the kernel's anomaly-only path emits (no connect,
// no accept; Nginx's end without an owner when seen in softirq; the
// upstream's end named by its own close), as the e2e runs see it with the default adaptive tracking.
namespace {

void untracked_holder_close(Seq &s, int from, int to, bool exiting = false)
{
    Event &a = s.add(N502_EV_ACCEPT, UP);
    a.sk = UPSK;
    a.peer_sk = 0;
    a.took = N502_TOOK_CLOSE;
    a.exiting = exiting;
    a.src = Addr::ipv4(0x7f000001, 8080);  // the upstream's local address
    a.dst = Addr::ipv4(0x7f000001, 40000); // Nginx's end
    Event &e = s.state(UPSK, N502_SOCK_UPSTREAM, UP, from, to);
    e.untracked = true;
}

bool has_note(const Verdict &v, const std::string &part)
{
    return std::any_of(v.notes.begin(), v.notes.end(), [&](const std::string &n) { return n.find(part) != n.npos; });
}

} // namespace

TEST_CASE("anomaly-only: an upstream closing unanswered, matched to Nginx's end by 4-tuple", "[causes][adaptive]")
{
    Seq s;
    untracked_holder_close(s, 1, 4); // ESTABLISHED -> FIN_WAIT1, nothing sent
    Event &e = s.state(SK, N502_SOCK_NGINX, 0, 1, 8, 0, 1); // CLOSE_WAIT in softirq: owner unknown, the FIN's byte
    e.untracked = true;
    auto v = explain(s, line("upstream prematurely closed connection while reading response header from upstream",
                             "http://127.0.0.1:8080/"),
                     nullptr);
    CHECK(v.cause == "upstream_closed_early");
    CHECK(v.upstream_pid == UP);
    CHECK(v.nginx_pid == NGINX);
    CHECK(has_note(v, "only from its failure on"));
}

TEST_CASE("anomaly-only: a stop signal shortly before an upstream's unanswered close is what ended it",
          "[causes][adaptive]")
{
    // Seen only from its failure on: the signal counts when it came within a
    // minute of the close (the connection's start is not known).
    uint64_t before = GENERATE(uint64_t{1'000'000'000}, uint64_t{61'000'000'000});
    CAPTURE(before);
    Seq s;
    s.st.add_process(UP, N502_PROC_LISTENER, "gunicorn", 599);
    Event &sig = s.add(N502_EV_SIGNAL, 599);
    sig.comm = "gunicorn";
    sig.target = UP;
    sig.sig = 6;
    s.t += before;
    untracked_holder_close(s, 1, 4);
    Event &e = s.state(SK, N502_SOCK_NGINX, 0, 1, 8, 0, 1);
    e.untracked = true;
    auto v = explain(s, line("upstream prematurely closed connection while reading response header from upstream",
                             "http://127.0.0.1:8080/"),
                     nullptr);
    if (before < 60'000'000'000ULL) {
        CHECK(v.cause == "upstream_killed");
        CHECK(v.confidence == "medium");
        CHECK(v.explanation.find("by pid 599 (gunicorn), its parent,") != std::string::npos);
    } else {
        CHECK(v.cause == "upstream_closed_early");
    }
}

TEST_CASE("anomaly-only: an aborted connection is the upstream's reset", "[causes][adaptive]")
{
    Seq s;
    untracked_holder_close(s, 1, 7); // ESTABLISHED -> CLOSE: an abortive close
    Event &r = s.add(N502_EV_RESET, UP); // processed in the sender's context, not Nginx's
    r.sk = SK;
    r.sock_role = N502_SOCK_NGINX;
    r.owner = 0;
    r.dir = N502_RST_RECEIVED;
    r.tcp_state = 1;
    r.untracked = true;
    r.src = Addr::ipv4(0x7f000001, 40000);
    r.dst = Addr::ipv4(0x7f000001, 8080);
    auto v = explain(s, line("recv() failed (104: Connection reset by peer) while reading response header from upstream",
                             "http://127.0.0.1:8080/"),
                     nullptr);
    CHECK(v.cause == "upstream_reset");
    CHECK(v.upstream_pid == UP);
}

TEST_CASE("anomaly-only: an upstream's abort seen only from its end may be another client's", "[causes][adaptive]")
{
    // Nginx's end showed nothing: the upstream reset someone else's
    // connection. A later error line of Nginx about that upstream is not
    // explained by it, whichever worker logged it.
    Seq s;
    untracked_holder_close(s, 1, 7);
    auto v = explain(s, line("upstream sent too big header while reading response header from upstream",
                             "http://127.0.0.1:8080/"),
                     nullptr);
    CHECK(v.cause == "unknown");
    CHECK(!v.upstream_pid);

    // The same holder dying with the connection open fails whoever it
    // served: that one still explains a line about its upstream.
    Seq s2;
    untracked_holder_close(s2, 1, 4, true);
    auto v2 = explain(s2, line("upstream prematurely closed connection while reading upstream",
                               "http://127.0.0.1:8080/"),
                      nullptr);
    CHECK(v2.upstream_pid == UP);
    CHECK(v2.cause == "upstream_closed_early"); // no exit event in this sequence
}

TEST_CASE("anomaly-only: a line from a lean period with nothing seen says why it is unknown", "[causes][adaptive]")
{
    Seq s;
    auto l = line("upstream sent too big header while reading response header from upstream", "http://127.0.0.1:8080/");
    l.lean = true;
    auto v = explain(s, l, nullptr);
    CHECK(v.cause == "unknown");
    CHECK(has_note(v, "adaptive tracking, the default"));
    l.lean = false;
    Seq s2;
    auto v2 = explain(s2, l, nullptr);
    CHECK_FALSE(has_note(v2, "--tracking adaptive"));
}

namespace {

// Nginx's connect to 127.0.0.1:port from that same port: its SYN comes back
// (SYN_SENT -> SYN_RECV), as the kernel reports it in full tracking, or on
// the anomaly-only path (untracked: the socket had no record).
void met_itself(Seq &s, uint16_t port, bool untracked, uint16_t src_port = 0)
{
    if (!untracked)
        s.state(SK, N502_SOCK_NGINX, NGINX, 7, 2);
    s.connect(Addr::ipv4(0x7f000001, port), -EINPROGRESS);
    Event &e = s.state(SK, N502_SOCK_NGINX, NGINX, 2, 3);
    e.untracked = untracked;
    e.dst = Addr::ipv4(0x7f000001, port);
    e.src = Addr::ipv4(0x7f000001, src_port ? src_port : port);
}

const char *kNoValidHeader = "upstream sent no valid HTTP/1.0 header while reading response header from upstream";

// Nginx closes the connection that met itself, secs after the last event;
// untracked: as the anomaly-only path reports it.
void closes_itself(Seq &s, uint16_t port, bool untracked, uint64_t secs)
{
    s.t += secs * 1'000'000'000ULL;
    Event &e = s.state(SK, N502_SOCK_NGINX, NGINX, 1, 4); // ESTABLISHED -> FIN_WAIT1
    e.untracked = untracked;
    e.dst = Addr::ipv4(0x7f000001, port);
    e.src = e.dst;
    s.flush();
}

// Nginx's read-timeout line for it, secs after 03:00:00.
LogLine body_timeout(uint16_t port, int secs)
{
    auto l = parse_upstream_error(fmt::format(
        "2026/11/23 03:{:02}:{:02} [error] {}#{}: *7 upstream timed out (110: Connection timed out) while reading "
        "upstream, client: 127.0.0.1, server: localhost, request: \"GET / HTTP/1.1\", upstream: "
        "\"http://127.0.0.1:{}/\", host: \"localhost\"",
        secs / 60, secs % 60, NGINX, NGINX, port));
    REQUIRE(l);
    return *l;
}

// A connection to 127.0.0.1:47002 that met itself, the line Nginx logs for
// it, and a correlator (with a fake host) over its state.
struct SelfConnected {
    FakeHost h;
    Seq s;
    LogLine first;
    Correlator c;
    explicit SelfConnected(bool untracked, StateLimits limits = {})
        : s(limits), first(line(kNoValidHeader, "http://127.0.0.1:47002/")),
          c(s.st, Timebase(first.wall_sec * 1'000'000'000LL - static_cast<int64_t>(T0)), CorrelatorOptions{}, &h)
    {
        met_itself(s, 47002, untracked);
        s.flush();
    }
};

} // namespace

TEST_CASE("a connection that met itself: the line about its own request read back, then its timeout", "[causes]")
{
    bool untracked = GENERATE(false, true);
    CAPTURE(untracked);
    SelfConnected sc(untracked);
    Correlator &c = sc.c;
    // Decided at once, not on the last try: the connection has failed.
    auto v = c.explain(sc.first, false);
    REQUIRE(v);
    CHECK(v->cause == "upstream_self_connect");
    CHECK(v->confidence == "high");
    CHECK(v->upstream == "127.0.0.1:47002");
    CHECK(fact<std::string>(*v, "local_address") == "127.0.0.1:47002");
    CHECK(fact<std::string>(*v, "port_range") == "32768-60999");
    CHECK(fact<bool>(*v, "port_in_range"));
    CHECK(v->explanation.find("connected to itself") != std::string::npos);
    CHECK(v->explanation.find("ip_local_reserved_ports") != std::string::npos);
    auto met = std::find_if(v->evidence.begin(), v->evidence.end(),
                            [](const Evidence &e) { return e.from == "SYN_SENT" && e.to == "SYN_RECV"; });
    REQUIRE(met != v->evidence.end());
    CHECK(met->detail.find("met itself") != std::string::npos);
    CHECK(met->pid == NGINX);
    CHECK(has_note(*v, "headerless HTTP/0.9 response"));
    CHECK(has_note(*v, "its own request to the upstream"));
    CHECK(v->client_got == "http09");

    // Nginx passed the bytes on as HTTP/0.9 and read on until its timeout:
    // the same connection, the same cause.
    auto v2 = c.explain(line("upstream timed out (110: Connection timed out) while reading upstream",
                             "http://127.0.0.1:47002/"),
                        true);
    REQUIRE(v2);
    CHECK(v2->cause == "upstream_self_connect");
    CHECK(v2->status == 504);
    CHECK(v2->client_got == "cut_short");
    CHECK_FALSE(has_note(*v2, "HTTP/0.9"));
    CHECK_FALSE(v2->upstream_pid);
    // Any other line to that upstream is not about this connection: it has
    // explained its two.
    auto v3 = c.explain(line(kNoValidHeader, "http://127.0.0.1:47002/"), true);
    REQUIRE(v3);
    CHECK(v3->cause == "unknown");
    auto v4 = c.explain(line("upstream timed out (110: Connection timed out) while reading upstream",
                             "http://127.0.0.1:47002/"),
                        true);
    REQUIRE(v4);
    CHECK(v4->cause == "unknown");
}

TEST_CASE("a line after Nginx's response had begun says the client got no 502/504", "[causes]")
{
    Verdict v = after_nginx_closed("upstream sent invalid chunked response while reading upstream");
    CHECK(has_note(v, "its response to the client had begun"));
    CHECK_FALSE(has_note(v, "HTTP/0.9"));
    CHECK(v.client_got == "cut_short");
    // Unbuffered, read on from the client's write handler; a WebSocket after its 101.
    for (const char *m : {"upstream prematurely closed connection while sending to client",
                          "recv() failed (104: Connection reset by peer) while proxying upgraded connection"}) {
        Seq s;
        s.established();
        s.reset(SK, N502_SOCK_NGINX, NGINX, N502_RST_RECEIVED);
        Verdict w = explain(s, line(m, "http://127.0.0.1:8080/"), nullptr);
        CAPTURE(m);
        CHECK(w.client_got == "cut_short");
        CHECK(has_note(w, "its response to the client had begun"));
    }
    Seq s2;
    s2.established();
    Verdict v2 = explain(s2, line("upstream timed out (110: Connection timed out) while reading response header "
                                  "from upstream",
                                  "http://127.0.0.1:8080/"),
                         nullptr);
    CHECK_FALSE(has_note(v2, "Nginx sent no"));
    CHECK(v2.client_got == "status");
}

TEST_CASE("no valid HTTP/1.0 header: the bytes were passed on as HTTP/0.9, not rejected", "[causes]")
{
    // ngx_http_proxy_process_status_line (1.22) logs it and goes on: an HTTP/0.9
    // response, read until the upstream closes.
    SECTION("the upstream closed: that ended the response")
    {
        Seq s;
        s.established();
        s.state(UPSK, N502_SOCK_UPSTREAM, UP, 1, 4);
        s.state(SK, N502_SOCK_NGINX, NGINX, 1, 8, 0, 300); // Nginx's end receives its FIN after 300 bytes
        Verdict v = explain(s, line(kNoValidHeader, "http://127.0.0.1:8080/"), nullptr);
        CHECK(v.cause == "upstream_invalid_response");
        CHECK(fact<std::string>(v, "closed_by") == "upstream");
        CHECK(v.explanation.find("rejected") == std::string::npos);
        CHECK(v.explanation.find("passed them on to the client as a headerless HTTP/0.9 response") !=
              std::string::npos);
        CHECK(v.explanation.find("which ends such a response") != std::string::npos);
        CHECK(v.client_got == "http09");
    }
    SECTION("Nginx closed it")
    {
        Verdict v = after_nginx_closed(kNoValidHeader);
        CHECK(v.cause == "upstream_invalid_response");
        CHECK(fact<std::string>(v, "closed_by") == "nginx");
        CHECK(v.explanation.find("rejected") == std::string::npos);
        CHECK(v.explanation.find("HTTP/0.9") != std::string::npos);
        CHECK(has_note(v, "headerless HTTP/0.9 response"));
    }
    SECTION("a header Nginx rejects is still said so")
    {
        Verdict v = after_nginx_closed("upstream sent invalid header while reading response header from upstream");
        CHECK(v.explanation.find("that Nginx rejected") != std::string::npos);
    }
}

TEST_CASE("a connection that met itself from a port outside the local range was bound there", "[causes]")
{
    FakeHost h;
    Seq s;
    met_itself(s, 8080, false);
    Verdict v = explain(s, line(kNoValidHeader, "http://127.0.0.1:8080/"), &h);
    CHECK(v.cause == "upstream_self_connect");
    CHECK_FALSE(fact<bool>(v, "port_in_range"));
    CHECK(v.explanation.find("bound to it explicitly") != std::string::npos);
}

TEST_CASE("a simultaneous open between two ports is not a connection to itself", "[causes]")
{
    Seq s;
    met_itself(s, 8080, false, 40000);
    s.flush();
    auto conns = s.st.conns_to(NGINX, Addr::ipv4(0x7f000001, 8080));
    REQUIRE(conns.size() == 1);
    const Conn *c = conns[0];
    CHECK_FALSE(c->to_itself());
    CHECK_FALSE(c->t_met_itself);
    CHECK_FALSE(c->failed());
    REQUIRE(c->evidence().size() == 2);
    CHECK(c->evidence()[1].detail.find("received a SYN instead of a SYN-ACK") != std::string::npos);
    Verdict v = explain(s, line(kNoValidHeader, "http://127.0.0.1:8080/"), nullptr);
    CHECK(v.cause == "unknown");
}

TEST_CASE("a connection that met itself: its timeout line a minute later, once Nginx has closed it", "[causes]")
{
    // Nginx's default read timeout is 60 s: far outside the window a line
    // looks back for connections; Nginx's close right after the line brings
    // the connection back into it.
    bool untracked = GENERATE(false, true);
    CAPTURE(untracked);
    SelfConnected sc(untracked);
    Seq &s = sc.s;
    Correlator &c = sc.c;
    auto v1 = c.explain(sc.first, false);
    REQUIRE(v1);
    CHECK(v1->cause == "upstream_self_connect");
    LogLine l2 = body_timeout(47002, 60);
    CHECK_FALSE(c.explain(l2, false)); // waits: nothing in the window yet
    closes_itself(s, 47002, untracked, 60);
    auto v2 = c.explain(l2, false);
    REQUIRE(v2);
    CHECK(v2->cause == "upstream_self_connect");
    CHECK(has_note(*v2, "Nginx sent no 502/504 for this line"));
    CHECK_FALSE(has_note(*v2, "its own request to the upstream"));
    // Followed, its CLOSE comes (CLOSING -> CLOSE, after its own FIN came
    // back); on the anomaly-only path its close was the last report. Either
    // way the record is finished: a new socket there is a new connection.
    if (!untracked) {
        Event &e = s.state(SK, N502_SOCK_NGINX, NGINX, 11, 7);
        e.dst = e.src = Addr::ipv4(0x7f000001, 47002);
    }
    s.state(SK, N502_SOCK_NGINX, NGINX, 7, 2);
    s.flush();
    auto conns = s.st.conns_to(NGINX, Addr::ipv4(0x7f000001, 8080));
    REQUIRE(conns.size() == 1);
    CHECK_FALSE(conns[0]->t_met_itself);
}

TEST_CASE("a claimed connection that met itself leaves the index when it is let go", "[causes]")
{
    // It stays indexed after its line (its timeout line may follow); once
    // the bound lets it go, its memory serves other connections and no line
    // may find it.
    StateLimits lim;
    lim.max_finished_conns = 4;
    SelfConnected sc(true, lim);
    Seq &s = sc.s;
    Correlator &c = sc.c;
    auto v1 = c.explain(sc.first, true);
    REQUIRE(v1);
    CHECK(v1->cause == "upstream_self_connect");
    closes_itself(s, 47002, true, 1);
    for (uint64_t i = 1; i <= 8; i++)
        s.refuse(SK + 0x100 * i, 47002);
    auto v2 = c.explain(body_timeout(47002, 1), true);
    REQUIRE(v2);
    CHECK(v2->cause == "unknown");
    CHECK(s.st.stats().conns_dropped >= 5);
}

TEST_CASE("an upstream name Nginx could not resolve is no connection's failure: upstream_unresolvable, at once",
          "[causes]")
{
    auto parse = [](const std::string &message) {
        auto l = parse_upstream_error(fmt::format(
            "2026/11/23 03:00:00 [error] {}#{}: *7 {}, client: 127.0.0.1, server: localhost, request: \"GET / "
            "HTTP/1.1\", host: \"localhost\"",
            NGINX, NGINX, message));
        REQUIRE(l);
        return *l;
    };
    auto nx = parse("backend.svc.cluster.local could not be resolved (3: Host not found)");
    CHECK(nx.kind == LogKind::ResolveFailed);
    CHECK(nx.status == 502);
    CHECK(nx.upstream_peer == "backend.svc.cluster.local");
    auto slow = parse("app.internal could not be resolved (110: Operation timed out)");
    CHECK(slow.kind == LogKind::ResolveFailed);
    CHECK(slow.status == 502); // (the resolver's timeout is a 502, not the upstream's 504)
    auto none = parse("no resolver defined to resolve app.internal");
    CHECK(none.kind == LogKind::ResolveFailed);
    CHECK(none.upstream_peer == "app.internal");
    CHECK(to_string(none.kind) == std::string("resolve_failed"));
    // An OCSP responder's name (ssl_stapling) is no request's upstream.
    CHECK_FALSE(parse_upstream_error("2026/11/23 03:00:00 [warn] 1#1: ocsp.example.com could not be resolved (3: "
                                     "Host not found) while requesting certificate status, responder: "
                                     "ocsp.example.com, certificate: \"/etc/ssl/a.pem\""));

    // Another upstream's refused connect in the same second is not its cause.
    Seq s;
    FakeHost h;
    s.refuse(0xd000, 8081);
    s.flush();
    Correlator c(s.st, Timebase(nx.wall_sec * 1'000'000'000LL - static_cast<int64_t>(T0)), CorrelatorOptions{}, &h);
    for (const LogLine *l : {&nx, &slow, &none}) {
        auto v = c.explain(*l, false); // (no evidence to wait for: decided at the first try)
        REQUIRE(v);
        CHECK(v->cause == "upstream_unresolvable");
        CHECK(v->confidence == "high");
        CHECK(v->upstream == l->upstream_peer);
        CHECK(v->evidence.empty());
        CHECK(v->explanation.find(l->upstream_peer) != std::string::npos);
    }
    CHECK(c.explain(none, true)->explanation.find("no `resolver` is configured") != std::string::npos);
    CHECK(c.explain(nx, true)->explanation.find("3: Host not found") != std::string::npos);
    CHECK(log_only_cause(none) == "upstream_unresolvable");
}
