// Correlator and cause rules, fed event sequences recorded from real runs
// (tests/e2e with --dump-events) and variations of them that must NOT produce
// a confident verdict.
#include <catch2/catch.hpp>
#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <sys/socket.h>

#include "correlator.hpp"
#include "logline.hpp"
#include "state.hpp"

using namespace n502;

namespace {

constexpr uint32_t NGINX = 9862, UPSTREAM = 9865, KILLER = 9868, NGINX_MASTER = 9861;
constexpr uint64_t NGX_SK = 0xffff888104a9ca00ULL, UP_SK = 0xffff888104a98000ULL, LSN_SK = 0xffff88811fb2ae40ULL;
constexpr uint16_t PORT = 39843, NGX_PORT = 36426;
constexpr uint64_t T0 = 777232090817ULL; // boot ns of the first recorded event

Addr lo(uint16_t port) { return Addr::ipv4(0x7f000001, port); }

struct Rec {
    std::vector<Event> evs;
    uint64_t t = T0;

    Event &add(n502_event_type type, uint32_t tgid, const char *comm, uint64_t dt_us = 100)
    {
        t += dt_us * 1000;
        Event e;
        e.type = type;
        e.ts = t;
        e.tgid = tgid;
        e.tid = tgid;
        e.comm = comm;
        evs.push_back(e);
        return evs.back();
    }
    void listen(uint32_t pid = UPSTREAM, uint64_t sk = LSN_SK)
    {
        Event &e = add(N502_EV_LISTEN, pid, "python3");
        e.sk = sk;
        e.backlog = 128;
        e.src = lo(PORT);
    }
    void state(uint64_t sk, uint16_t role, uint32_t owner, int from, int to, int err = 0, uint32_t current = 0)
    {
        Event &e = add(N502_EV_STATE, current ? current : owner, current == UPSTREAM ? "python3" : "nginx");
        e.sk = sk;
        e.sock_role = role;
        e.owner = owner;
        e.oldstate = from;
        e.newstate = to;
        e.sk_err = err;
        bool ngx = role == N502_SOCK_NGINX;
        e.src = ngx ? lo(NGX_PORT) : lo(PORT);
        e.dst = ngx ? lo(PORT) : lo(NGX_PORT);
    }
    void connect(int ret)
    {
        Event &e = add(N502_EV_CONNECT, NGINX, "nginx");
        e.sk = NGX_SK;
        e.ret = ret;
        e.dst = lo(PORT);
    }
    // A connection that reached the upstream and was accepted by UPSTREAM.
    void established()
    {
        state(NGX_SK, N502_SOCK_NGINX, NGINX, 7, 2);
        state(NGX_SK, N502_SOCK_NGINX, NGINX, 2, 1);
        connect(-EINPROGRESS);
        Event &a = add(N502_EV_ACCEPT, UPSTREAM, "python3");
        a.sk = UP_SK;
        a.peer_sk = NGX_SK;
        a.src = lo(PORT);
        a.dst = lo(NGX_PORT);
    }
    void refused()
    {
        state(NGX_SK, N502_SOCK_NGINX, NGINX, 7, 2);
        Event &r = add(N502_EV_RESET, NGINX, "nginx");
        r.sk = NGX_SK;
        r.sock_role = N502_SOCK_NGINX;
        r.owner = NGINX;
        r.dir = N502_RST_RECEIVED;
        r.tcp_state = 2;
        state(NGX_SK, N502_SOCK_NGINX, NGINX, 2, 7, ECONNREFUSED);
        connect(-EINPROGRESS);
    }
    void signal(uint32_t sender, const char *comm, uint32_t target, int sig, int code = 0)
    {
        Event &e = add(N502_EV_SIGNAL, sender, comm);
        e.target = target;
        e.sig = sig;
        e.code = code;
        e.target_comm = "python3";
    }
    void exit(uint32_t pid, int status) { add(N502_EV_EXIT, pid, "python3").exit_code = status; }
    void oom(uint32_t victim) { add(N502_EV_OOM, victim, "python3").target = victim; }
    // The kernel closes the upstream's socket: FIN from its side, CLOSE_WAIT at Nginx.
    void fin_from_upstream(uint32_t current)
    {
        state(UP_SK, N502_SOCK_UPSTREAM, UPSTREAM, 1, 4, 0, current);
        state(NGX_SK, N502_SOCK_NGINX, NGINX, 1, 8, 0, current);
    }
    void rst_to_nginx()
    {
        Event &s = add(N502_EV_RESET, UPSTREAM, "python3");
        s.sk = UP_SK;
        s.sock_role = N502_SOCK_UPSTREAM;
        s.owner = UPSTREAM;
        s.dir = N502_RST_SENT;
        state(UP_SK, N502_SOCK_UPSTREAM, UPSTREAM, 1, 7, 0, UPSTREAM);
        Event &r = add(N502_EV_RESET, UPSTREAM, "python3");
        r.sk = NGX_SK;
        r.sock_role = N502_SOCK_NGINX;
        r.owner = NGINX;
        r.dir = N502_RST_RECEIVED;
        r.tcp_state = 1;
        state(NGX_SK, N502_SOCK_NGINX, NGINX, 1, 7, ECONNRESET, UPSTREAM);
    }
    void nginx_closes()
    {
        Event &c = add(N502_EV_CLOSE, NGINX, "nginx");
        c.sk = NGX_SK;
        c.sock_role = N502_SOCK_NGINX;
        c.owner = NGINX;
        c.src.family = AF_INET;
        state(NGX_SK, N502_SOCK_NGINX, NGINX, 8, 9);
        state(NGX_SK, N502_SOCK_NGINX, NGINX, 9, 7);
    }
};

const char *PREMATURE = "upstream prematurely closed connection while reading response header from upstream";
const char *REFUSED = "connect() failed (111: Connection refused) while connecting to upstream";
const char *RESET = "recv() failed (104: Connection reset by peer) while reading response header from upstream";

struct World {
    State state;
    LogLine line;
    Timebase tb{0};

    explicit World(const Rec &r, const char *message, uint32_t pid = NGINX, uint16_t port = PORT)
    {
        state.add_process(NGINX_MASTER, N502_PROC_NGINX, "nginx");
        state.add_process(NGINX, N502_PROC_NGINX, "nginx", NGINX_MASTER);
        for (const auto &e : r.evs)
            state.apply(e);
        std::string raw = fmt::format("2026/11/23 02:55:09 [error] {}#{}: *2 {}, client: 127.0.0.1, server: "
                                      "localhost, request: \"GET / HTTP/1.1\", upstream: \"http://127.0.0.1:{}/\", "
                                      "host: \"localhost\"",
                                      pid, pid, message, port);
        auto parsed = parse_upstream_error(raw);
        REQUIRE(parsed);
        line = *parsed;
        // Kernel time T0 is the line's second.
        tb = Timebase(line.wall_sec * 1'000'000'000LL - static_cast<int64_t>(T0));
    }
    Verdict verdict(bool final = true)
    {
        Correlator c(state, tb);
        auto v = c.explain(line, final);
        REQUIRE(v);
        return *v;
    }
};

const Evidence *find(const Verdict &v, const std::string &event)
{
    for (const auto &e : v.evidence)
        if (e.event == event)
            return &e;
    return nullptr;
}

} // namespace

TEST_CASE("upstream SIGKILLed by another process (recorded)", "[correlator]")
{
    Rec r;
    r.listen();
    r.established();
    r.signal(KILLER, "kill", UPSTREAM, 9);
    r.exit(UPSTREAM, 9);
    r.fin_from_upstream(UPSTREAM);
    r.nginx_closes();
    World w(r, PREMATURE);
    Verdict v = w.verdict();
    CHECK(v.cause == "upstream_killed");
    CHECK(v.confidence == "high");
    REQUIRE(v.upstream_pid);
    CHECK(*v.upstream_pid == UPSTREAM);
    const Evidence *s = find(v, "signal");
    REQUIRE(s);
    CHECK(s->pid == KILLER);
    CHECK(s->target_pid == UPSTREAM);
    CHECK(s->sig == 9);
    const Evidence *x = find(v, "exit");
    REQUIRE(x);
    CHECK(x->exit_signal == 9);
    CHECK(v.explanation.find("SIGKILL from pid 9868 (kill)") != std::string::npos);
    CHECK(v.log_only_cause == "upstream_crashed_or_overloaded");
    // Evidence is a timeline.
    for (size_t i = 1; i < v.evidence.size(); i++)
        CHECK(v.evidence[i - 1].ts <= v.evidence[i].ts);
}

TEST_CASE("killed without the signal seen: named with medium confidence", "[correlator]")
{
    Rec r;
    r.established();
    r.exit(UPSTREAM, 9); // the signal event was lost
    r.fin_from_upstream(UPSTREAM);
    World w(r, PREMATURE);
    Verdict v = w.verdict();
    CHECK(v.cause == "upstream_killed");
    CHECK(v.confidence == "medium");
    CHECK(v.explanation.find("sender was not seen") != std::string::npos);
}

TEST_CASE("OOM kill wins over the SIGKILL it sends", "[correlator]")
{
    Rec r;
    r.established();
    r.oom(UPSTREAM);
    r.signal(UPSTREAM, "python3", UPSTREAM, 9, 0x80); // the victim allocating: current is itself
    r.exit(UPSTREAM, 9);
    r.fin_from_upstream(UPSTREAM);
    World w(r, PREMATURE);
    Verdict v = w.verdict();
    CHECK(v.cause == "upstream_oom_killed");
    CHECK(find(v, "oom_kill"));
    CHECK(*v.upstream_pid == UPSTREAM);
}

TEST_CASE("a segfault is a crash, not a kill", "[correlator]")
{
    Rec r;
    r.established();
    r.signal(UPSTREAM, "python3", UPSTREAM, 11, 1); // SEGV_MAPERR from the kernel
    r.exit(UPSTREAM, 11);
    r.fin_from_upstream(UPSTREAM);
    World w(r, PREMATURE);
    Verdict v = w.verdict();
    CHECK(v.cause == "upstream_crashed");
    CHECK(v.explanation.find("SIGSEGV") != std::string::npos);
    CHECK(find(v, "exit")->exit_signal == 11);
}

TEST_CASE("SIGSEGV sent by another process is a kill", "[correlator]")
{
    Rec r;
    r.established();
    r.signal(KILLER, "kill", UPSTREAM, 11, 0);
    r.exit(UPSTREAM, 11);
    r.fin_from_upstream(UPSTREAM);
    World w(r, PREMATURE);
    CHECK(w.verdict().cause == "upstream_killed");
}

TEST_CASE("a normal exit while holding the connection", "[correlator]")
{
    Rec r;
    r.established();
    r.exit(UPSTREAM, 3 << 8);
    r.fin_from_upstream(UPSTREAM);
    World w(r, PREMATURE);
    Verdict v = w.verdict();
    CHECK(v.cause == "upstream_exited");
    CHECK(find(v, "exit")->exit_code == 3);
}

TEST_CASE("an exit after the upstream closed is not the cause", "[correlator]")
{
    Rec r;
    r.established();
    r.fin_from_upstream(UPSTREAM); // the process closed first ...
    r.exit(UPSTREAM, 0);           // ... and exited later
    World w(r, PREMATURE);
    CHECK(w.verdict().cause == "upstream_closed_early");
}

TEST_CASE("RST from a live upstream", "[correlator]")
{
    Rec r;
    r.established();
    r.rst_to_nginx();
    World w(r, RESET);
    Verdict v = w.verdict();
    CHECK(v.cause == "upstream_reset");
    CHECK(find(v, "rst_received"));
    CHECK(find(v, "rst_sent"));
}

TEST_CASE("FIN from a live upstream", "[correlator]")
{
    Rec r;
    r.established();
    Event &c = r.add(N502_EV_CLOSE, UPSTREAM, "python3");
    c.sk = UP_SK;
    c.sock_role = N502_SOCK_UPSTREAM;
    c.owner = UPSTREAM;
    c.src.family = AF_INET;
    r.fin_from_upstream(UPSTREAM);
    World w(r, PREMATURE);
    Verdict v = w.verdict();
    CHECK(v.cause == "upstream_closed_early");
    const Evidence *e = find(v, "close");
    REQUIRE(e);
    CHECK(e->pid == UPSTREAM);
}

TEST_CASE("refused with no listener ever seen", "[correlator]")
{
    Rec r;
    r.refused();
    World w(r, REFUSED);
    Verdict v = w.verdict();
    CHECK(v.cause == "upstream_not_listening");
    CHECK_FALSE(v.upstream_pid);
    CHECK(v.explanation.find("no process has listened there") != std::string::npos);
}

TEST_CASE("refused after the listener was stopped by SIGTERM (recorded)", "[correlator]")
{
    Rec r;
    r.listen();
    r.signal(KILLER, "kill", UPSTREAM, 15);
    r.exit(UPSTREAM, 15);
    r.state(LSN_SK, N502_SOCK_LISTENER, UPSTREAM, 10, 7, 0, UPSTREAM);
    r.refused();
    World w(r, REFUSED);
    Verdict v = w.verdict();
    CHECK(v.cause == "upstream_not_listening");
    const Evidence *l = find(v, "listen");
    REQUIRE(l);
    CHECK(l->pid == UPSTREAM);
    REQUIRE(find(v, "unlisten"));
    const Evidence *s = find(v, "signal");
    REQUIRE(s);
    CHECK(s->pid == KILLER);
    CHECK(s->sig == 15);
    CHECK(find(v, "exit")->exit_signal == 15);
    CHECK(v.explanation.find("killed by SIGTERM from pid 9868 (kill)") != std::string::npos);
}

TEST_CASE("refused while a live process listens there: no guess", "[correlator]")
{
    Rec r;
    r.listen();
    r.refused();
    World w(r, REFUSED);
    CHECK(w.verdict().cause == "unknown");
}

TEST_CASE("no kernel evidence: unknown, and only once final", "[correlator]")
{
    Rec r;
    World w(r, PREMATURE);
    Correlator c(w.state, w.tb);
    CHECK_FALSE(c.explain(w.line, false)); // keep waiting for events
    auto v = c.explain(w.line, true);
    REQUIRE(v);
    CHECK(v->cause == "unknown");
    CHECK(v->confidence == "low");
}

TEST_CASE("a line about another worker or another upstream does not match", "[correlator]")
{
    Rec r;
    r.established();
    r.signal(KILLER, "kill", UPSTREAM, 9);
    r.exit(UPSTREAM, 9);
    r.fin_from_upstream(UPSTREAM);
    {
        World w(r, PREMATURE, NGINX + 1);
        CHECK(w.verdict().cause == "unknown");
    }
    {
        World w(r, PREMATURE, NGINX, PORT + 1);
        CHECK(w.verdict().cause == "unknown");
    }
}

TEST_CASE("each connection explains one line only", "[correlator]")
{
    Rec r;
    r.established();
    r.signal(KILLER, "kill", UPSTREAM, 9);
    r.exit(UPSTREAM, 9);
    r.fin_from_upstream(UPSTREAM);
    World w(r, PREMATURE);
    Correlator c(w.state, w.tb);
    auto first = c.explain(w.line, true);
    REQUIRE(first);
    CHECK(first->cause == "upstream_killed");
    auto second = c.explain(w.line, true);
    REQUIRE(second);
    CHECK(second->cause == "unknown");
}

TEST_CASE("connections older than the line's time window are not matched", "[correlator]")
{
    Rec r;
    r.established();
    r.exit(UPSTREAM, 9);
    r.fin_from_upstream(UPSTREAM);
    World w(r, PREMATURE);
    // The same events, but the line is written a minute later.
    w.line.wall_sec += 60;
    CHECK(w.verdict().cause == "unknown");
}

TEST_CASE("state stays bounded", "[state]")
{
    StateLimits lim;
    lim.max_finished_conns = 16;
    lim.max_dead_procs = 8;
    State s(lim);
    uint64_t t = 1;
    for (uint32_t i = 0; i < 1000; i++) {
        Event e;
        e.type = N502_EV_STATE;
        e.ts = t++;
        e.sk = 0x1000 + i;
        e.sock_role = N502_SOCK_NGINX;
        e.owner = NGINX;
        e.oldstate = 2;
        e.newstate = 7;
        e.sk_err = ECONNREFUSED;
        e.dst = lo(PORT);
        s.apply(e);
        Event x;
        x.type = N502_EV_EXIT;
        x.ts = t++;
        x.tgid = 20000 + i;
        s.apply(x);
    }
    CHECK(s.conns_to(NGINX, lo(PORT)).size() == 16);
    CHECK(s.stats().conns_dropped == 1000 - 16);
    CHECK(s.stats().procs_dropped == 1000 - 8);
}

TEST_CASE("upstream addresses leave the indexes when their connections do", "[state]")
{
    // Upstreams that come and go (pods, rotating resolver answers): each
    // address's finished connection falls out of a later line's window.
    StateLimits lim;
    lim.max_finished_conns = 100000;
    State s(lim);
    uint64_t t = 1;
    for (uint32_t i = 0; i < 3000; i++) {
        Event e;
        e.type = N502_EV_STATE;
        e.ts = t;
        e.sk = 0x1000 + i;
        e.sock_role = N502_SOCK_NGINX;
        e.owner = NGINX;
        e.oldstate = 2;
        e.newstate = 7;
        e.sk_err = ECONNREFUSED;
        e.dst = Addr::ipv4(0x0a000000u + i, 8080);
        s.apply(e);
        t += 1000;
        // A later line about the same address: its one connection is too old.
        CHECK(s.conns_to(NGINX, e.dst, t).empty());
    }
    CHECK(s.index_keys() <= 2 * 257);
    // An address of no family an upstream can have is not indexed at all.
    Event odd;
    odd.type = N502_EV_STATE;
    odd.ts = t;
    odd.sk = 0x9999;
    odd.sock_role = N502_SOCK_NGINX;
    odd.owner = NGINX;
    odd.oldstate = 2;
    odd.newstate = 7;
    odd.sk_err = ECONNREFUSED;
    odd.dst.family = 42;
    odd.dst.port = 1;
    size_t before = s.index_keys();
    s.apply(odd);
    CHECK(s.index_keys() == before);
}

TEST_CASE("time matching across second boundaries", "[correlator][time]")
{
    // Nginx stamps a line with its cached time (whole seconds, refreshed once
    // per event-loop iteration): the failure may be a little before the
    // stamped second, or after it.
    auto killed = [] {
        Rec r;
        r.established();
        r.signal(KILLER, "kill", UPSTREAM, 9);
        r.exit(UPSTREAM, 9);
        r.fin_from_upstream(UPSTREAM);
        return r;
    };
    SECTION("failure at .999 of the previous second")
    {
        Rec r = killed();
        World w(r, PREMATURE);
        // Shift the clock so the last event lands 1 ms before the line's second.
        w.tb = Timebase(w.line.wall_sec * 1'000'000'000LL - 1'000'000 - static_cast<int64_t>(r.t));
        CHECK(w.verdict().cause == "upstream_killed");
    }
    SECTION("failure 0.9 s after the stamped second (Nginx's cached time lagging)")
    {
        Rec r = killed();
        World w(r, PREMATURE);
        w.tb = Timebase(w.line.wall_sec * 1'000'000'000LL + 900'000'000 - static_cast<int64_t>(r.t));
        CHECK(w.verdict().cause == "upstream_killed");
    }
    SECTION("a failure 6 s before the line's second is someone else's")
    {
        Rec r = killed();
        World w(r, PREMATURE);
        w.tb = Timebase(w.line.wall_sec * 1'000'000'000LL - 6'000'000'000LL - static_cast<int64_t>(r.t));
        CHECK(w.verdict().cause == "unknown");
    }
}

TEST_CASE("a reused pid is a new process", "[state]")
{
    Rec r;
    r.listen();
    r.exit(UPSTREAM, 9); // the first process with this pid dies ...
    r.established();     // ... and a new one with the same pid accepts
    r.fin_from_upstream(UPSTREAM);
    World w(r, PREMATURE);
    Verdict v = w.verdict();
    // The old process's death is not this one's: it is alive and closed the connection.
    CHECK(v.cause == "upstream_closed_early");
    CHECK(*v.upstream_pid == UPSTREAM);
}

TEST_CASE("a connection's story that arrives after the upstream's death still names it", "[correlator]")
{
    // The kernel held the connection's story until Nginx closed it: the
    // signal and the exit were emitted live, before it.
    Rec r;
    uint64_t t_est = r.t + 100'000, t_read = r.t + 200'000;
    r.t += 300'000;
    r.signal(KILLER, "kill", UPSTREAM, 9);
    r.exit(UPSTREAM, 9);
    uint64_t t_leave = r.t + 100'000, t_fin = r.t + 150'000;
    Event &c = r.add(N502_EV_CONN, NGINX, "nginx", 300);
    c.sk = NGX_SK;
    c.sock_role = N502_SOCK_NGINX;
    c.owner = NGINX;
    c.oldstate = 9; // LAST_ACK
    c.newstate = 7; // CLOSE
    c.src = lo(NGX_PORT);
    c.dst = lo(PORT);
    c.story.est_ns = t_est;
    c.story.up_sk = UP_SK;
    c.story.up_ns = t_read;
    c.story.up_tgid = UPSTREAM;
    c.story.up_how = N502_TOOK_READ;
    c.target_comm = "python3";
    c.story.up_oldstate = 1;
    c.story.up_newstate = 4;
    c.story.up_leave_ns = t_leave;
    c.story.fin_ns = t_fin;
    World w(r, PREMATURE);
    Verdict v = w.verdict(false); // not the last try: the story made it a failure
    CHECK(v.cause == "upstream_killed");
    CHECK(v.confidence == "high");
    REQUIRE(v.upstream_pid);
    CHECK(*v.upstream_pid == UPSTREAM);
    REQUIRE(find(v, "exit"));
    REQUIRE(find(v, "accept"));
    CHECK(find(v, "accept")->ts == t_read);
    for (size_t i = 1; i < v.evidence.size(); i++)
        CHECK(v.evidence[i - 1].ts <= v.evidence[i].ts);
}

// A supervisor's stop signal that the upstream handled: it closed (or reset)
// Nginx's connection, or exited holding it, on that signal (gunicorn's worker
// timeout: SIGABRT from its master, and the worker exits with code 1).
namespace {

Rec handled_stop(int sig, const char *sender_comm)
{
    Rec r;
    r.listen();
    r.established();
    r.signal(KILLER, sender_comm, UPSTREAM, sig);
    return r;
}

bool says(const Verdict &v, const char *part) { return v.explanation.find(part) != std::string::npos; }

} // namespace

TEST_CASE("an upstream that closed the connection on its supervisor's stop signal was killed by it", "[correlator]")
{
    Rec r = handled_stop(6, "gunicorn");
    r.fin_from_upstream(UPSTREAM);
    bool exited = GENERATE(false, true);
    CAPTURE(exited);
    if (exited)
        r.exit(UPSTREAM, 1 << 8); // the worker's sys.exit(1), after the close
    World w(r, PREMATURE);
    Verdict v = w.verdict();
    CHECK(v.cause == "upstream_killed");
    CHECK(v.confidence == "high");
    CHECK(*v.upstream_pid == UPSTREAM);
    const Evidence *s = find(v, "signal");
    REQUIRE(s);
    CHECK(s->pid == KILLER);
    CHECK(s->sig == 6);
    CHECK(says(v, "told to stop with SIGABRT by pid 9868 (gunicorn)"));
    CHECK(says(v, "closed it"));
    CHECK(says(v, "WORKER TIMEOUT"));
    CHECK(says(v, "then exited with code 1 at") == exited);
    CHECK((find(v, "exit") != nullptr) == exited);
    REQUIRE(v.facts.size() == 1);
    CHECK(v.facts[0].first == "signal_handled");
}

TEST_CASE("a stop signal is not pushed out by the signals a process sends itself (a profiler's SIGPROF)",
          "[correlator]")
{
    Rec r = handled_stop(15, "supervisord");
    for (int i = 0; i < 20; i++)
        r.signal(UPSTREAM, "python3", UPSTREAM, 27); // SIGPROF, self-sent, handled
    r.fin_from_upstream(UPSTREAM);
    r.exit(UPSTREAM, 0);
    Verdict v = World(r, PREMATURE).verdict();
    CHECK(v.cause == "upstream_killed");
    CHECK(says(v, "SIGTERM by pid 9868 (supervisord)"));
}

TEST_CASE("a stop signal handled by resetting the connection, or by exiting with it open", "[correlator]")
{
    Rec r = handled_stop(15, "systemd");
    r.rst_to_nginx();
    Verdict v = World(r, RESET).verdict();
    CHECK(v.cause == "upstream_killed");
    CHECK(says(v, "SIGTERM by pid 9868 (systemd)"));
    CHECK(says(v, "reset it"));
    CHECK_FALSE(says(v, "WORKER TIMEOUT"));

    Rec r2 = handled_stop(3, "supervisord");
    r2.exit(UPSTREAM, 0); // a graceful exit that left the connection to the kernel
    r2.fin_from_upstream(0);
    Verdict v2 = World(r2, PREMATURE).verdict();
    CHECK(v2.cause == "upstream_killed");
    CHECK(says(v2, "SIGQUIT"));
    INFO(v2.explanation);
    CHECK(says(v2, "exited 100 µs later with code 0, still holding it"));
}

TEST_CASE("signals that did not end the connection do not make it a kill", "[correlator]")
{
    auto cause_with = [](auto &&signal_at) {
        Rec r;
        r.listen();
        signal_at(r, 0); // before the connection
        r.established();
        signal_at(r, 1); // while it is held
        r.fin_from_upstream(UPSTREAM);
        return World(r, PREMATURE).verdict().cause;
    };
    // Only before the upstream took the connection.
    CHECK(cause_with([](Rec &r, int when) {
              if (when == 0)
                  r.signal(KILLER, "gunicorn", UPSTREAM, 15);
          }) == "upstream_closed_early");
    // Raised by the process itself, ignored, or not a stop signal.
    CHECK(cause_with([](Rec &r, int when) {
              if (when == 1)
                  r.signal(UPSTREAM, "python3", UPSTREAM, 15);
          }) == "upstream_closed_early");
    CHECK(cause_with([](Rec &r, int when) {
              if (when == 1) {
                  r.signal(KILLER, "gunicorn", UPSTREAM, 15);
                  r.evs.back().result = 1; // TRACE_SIGNAL_IGNORED
              }
          }) == "upstream_closed_early");
    CHECK(cause_with([](Rec &r, int when) {
              if (when == 1)
                  r.signal(KILLER, "gunicorn", UPSTREAM, 1); // SIGHUP: a reload, not a stop
          }) == "upstream_closed_early");
    // The control: the same sequence with a stop signal while it is held.
    CHECK(cause_with([](Rec &r, int when) {
              if (when == 1)
                  r.signal(KILLER, "gunicorn", UPSTREAM, 15);
          }) == "upstream_killed");
}

TEST_CASE("a stop signal long before the end counts only when the process then exited", "[correlator]")
{
    // A JVM's SIGQUIT is a thread dump: it serves on, and resets a
    // connection ten minutes later for reasons of its own.
    Rec r = handled_stop(3, "jcmd");
    r.t += 600'000'000'000ULL;
    r.rst_to_nginx();
    CHECK(World(r, RESET).verdict().cause == "upstream_reset");
    // A graceful stop that took 10 s and ended with the process: its signal.
    Rec g = handled_stop(15, "systemd");
    g.t += 10'000'000'000ULL;
    g.fin_from_upstream(UPSTREAM);
    g.exit(UPSTREAM, 0);
    Verdict v = World(g, PREMATURE).verdict();
    CHECK(v.cause == "upstream_killed");
    CHECK(says(v, "closed it 10.0 s later (it then exited with code 0"));
    // The same without the exit: alive, and the close was not on the signal.
    Rec a = handled_stop(15, "systemd");
    a.t += 10'000'000'000ULL;
    a.fin_from_upstream(UPSTREAM);
    CHECK(World(a, PREMATURE).verdict().cause == "upstream_closed_early");
}

TEST_CASE("a keep-alive race stays a race when a stop signal made the upstream close its idle connection",
          "[correlator]")
{
    Rec r = handled_stop(15, "systemd");
    r.state(UP_SK, N502_SOCK_UPSTREAM, UPSTREAM, 1, 4, 0, UPSTREAM); // closes the idle connection
    r.t += 2'000'000; // Nginx's request crosses the FIN
    Event &s = r.add(N502_EV_RESET, UPSTREAM, "python3");
    s.sk = UP_SK;
    s.sock_role = N502_SOCK_UPSTREAM;
    s.owner = UPSTREAM;
    s.dir = N502_RST_SENT;
    Event &g = r.add(N502_EV_RESET, UPSTREAM, "python3");
    g.sk = NGX_SK;
    g.sock_role = N502_SOCK_NGINX;
    g.owner = NGINX;
    g.dir = N502_RST_RECEIVED;
    g.tcp_state = 8;
    r.state(NGX_SK, N502_SOCK_NGINX, NGINX, 8, 7, ECONNRESET, UPSTREAM);
    Verdict v = World(r, RESET).verdict();
    CHECK(v.cause == "keepalive_race");
}

TEST_CASE("a signal the killed process raised again itself is named by its first sender", "[correlator]")
{
    // PHP-FPM: the master's SIGTERM is deferred by the Zend engine, which
    // then resets the default action and sends it to itself.
    Rec r = handled_stop(15, "php-fpm8.2");
    r.signal(UPSTREAM, "php-fpm8.2", UPSTREAM, 15);
    r.exit(UPSTREAM, 15);
    r.rst_to_nginx();
    Verdict v = World(r, RESET).verdict();
    CHECK(v.cause == "upstream_killed");
    CHECK(find(v, "signal")->pid == KILLER);
    CHECK(says(v, "killed by SIGTERM from pid 9868 (php-fpm8.2)"));
    CHECK(says(v, "request_terminate_timeout"));
    // A fault the kernel raised is the process's own, whatever came before.
    Rec c = handled_stop(11, "kill");
    c.signal(UPSTREAM, "python3", UPSTREAM, 11, 1); // SEGV_MAPERR
    c.exit(UPSTREAM, 11);
    c.fin_from_upstream(UPSTREAM);
    CHECK(World(c, PREMATURE).verdict().cause == "upstream_crashed");
}
