// Decoder: raw records as the BPF side writes them -> Event, and rejection of
// anything malformed.
#include <catch2/catch.hpp>
#include <cstddef>
#include <cstring>
#include <sys/socket.h>
#include <vector>

#include "decoder.hpp"

using namespace n502;

template <typename T> static T raw(uint16_t type)
{
    T r;
    std::memset(&r, 0, sizeof(r));
    r.hdr.type = type;
    r.hdr.size = sizeof(T);
    r.hdr.ts_ns = 123456789;
    r.hdr.tgid = 42;
    r.hdr.tid = 43;
    std::memcpy(r.hdr.comm, "nginx", 5);
    return r;
}

TEST_CASE("decodes a connect event with an IPv4 destination", "[decoder]")
{
    auto r = raw<n502_connect_event>(N502_EV_CONNECT);
    r.sk = 0xffff888104a9ca00ULL;
    r.fd = 12;
    r.ret = -115;
    r.dst.family = AF_INET;
    r.dst.port = 8080;
    uint8_t ip[4] = {127, 0, 0, 1};
    std::memcpy(r.dst.addr, ip, 4);
    std::string why;
    auto e = decode(&r, sizeof(r), &why);
    REQUIRE(e);
    CHECK(e->type == N502_EV_CONNECT);
    CHECK(e->ts == 123456789);
    CHECK(e->tgid == 42);
    CHECK(e->tid == 43);
    CHECK(e->comm == "nginx");
    CHECK(e->sk == 0xffff888104a9ca00ULL);
    CHECK(e->ret == -115);
    CHECK(e->dst.str() == "127.0.0.1:8080");
}

TEST_CASE("decodes unix and IPv6 addresses", "[decoder]")
{
    auto r = raw<n502_connect_event>(N502_EV_CONNECT);
    r.dst.family = AF_UNIX;
    std::strcpy(r.path, "/run/php/php8.2-fpm.sock");
    auto e = decode(&r, sizeof(r));
    REQUIRE(e);
    CHECK(e->dst.str() == "unix:/run/php/php8.2-fpm.sock");

    auto s = raw<n502_state_event>(N502_EV_STATE);
    s.dst.family = AF_INET6;
    s.dst.port = 9000;
    s.dst.addr[15] = 1;
    s.oldstate = 2;
    s.newstate = 7;
    s.sk_err = 111;
    auto e2 = decode(&s, sizeof(s));
    REQUIRE(e2);
    CHECK(e2->dst.str() == "[::1]:9000");
    CHECK(e2->sk_err == 111);
    CHECK(std::string(tcp_state_name(e2->newstate)) == "CLOSE");
}

TEST_CASE("addresses print as Nginx writes them, and compare without printing", "[decoder]")
{
    CHECK(Addr::ipv4(0, 0).str() == "0.0.0.0:0");
    CHECK(Addr::ipv4(0xffffffffu, 65535).str() == "255.255.255.255:65535");
    CHECK(Addr::ipv4(0x0a000102u, 80).str() == "10.0.1.2:80");
    CHECK(Addr::ipv4(0x7f000001u, 9000).str() == "127.0.0.1:9000");
    Addr v6;
    v6.family = AF_INET6;
    v6.port = 443;
    v6.ip = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10};
    CHECK(v6.str() == "[2001:db8::10]:443");
    v6.ip.fill(0);
    CHECK(v6.str() == "[::]:443");
    CHECK(Addr::unix_path("/run/app.sock").str() == "unix:/run/app.sock");
    CHECK(Addr().str().empty());

    Addr a = Addr::ipv4(0x7f000001u, 9000), b = a;
    b.netns = 4026531840u; // the namespace is not part of the place
    CHECK(a.same_place(b));
    b.port = 9001;
    CHECK_FALSE(a.same_place(b));
    b = Addr::ipv4(0x7f000002u, 9000);
    CHECK_FALSE(a.same_place(b));
    CHECK_FALSE(a.same_place(v6));
    CHECK(Addr::unix_path("/a").same_place(Addr::unix_path("/a")));
    CHECK_FALSE(Addr::unix_path("/a").same_place(Addr::unix_path("/b")));
    Addr unknown1, unknown2;
    unknown2.port = 7;
    CHECK(unknown1.same_place(unknown2)); // both print as ""

    // The kernel writes 4 of the 16 address bytes for IPv4; the rest are
    // whatever the ring buffer held. Two records of one address are one place.
    n502_addr r1{}, r2{};
    r1.family = r2.family = AF_INET;
    r1.port = r2.port = 9000;
    const uint8_t lo[4] = {127, 0, 0, 1};
    std::memcpy(r1.addr, lo, 4);
    std::memcpy(r2.addr, lo, 4);
    std::memset(r1.addr + 4, 0xaa, 12);
    std::memset(r2.addr + 4, 0x55, 12);
    Addr x = Addr::from_raw(r1), y = Addr::from_raw(r2);
    CHECK(x.str() == "127.0.0.1:9000");
    CHECK(x.same_place(y));
    CHECK(x.ip == y.ip);
    CHECK(x.ip == Addr::ipv4(0x7f000001u, 9000).ip);
}

TEST_CASE("addresses read back from what they print; index keys agree with same_place", "[decoder]")
{
    for (const char *text : {"127.0.0.1:9000", "0.0.0.0:1", "255.255.255.255:65535", "[::1]:8080", "[::]:443",
                             "[2001:db8::10]:443", "[::ffff:127.0.0.1]:80", "unix:/run/php/php-fpm.sock"}) {
        auto a = Addr::parse(text);
        REQUIRE(a);
        CHECK(a->str() == text);
    }
    // What Nginx can log that is not an address: nothing to look up by.
    for (const char *text : {"", "backend", "backend:80", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0",
                             "127.0.0.1:65536", "127.0.0.1:123456", "127.0.0.1:80x", "::1:8080", "[::1]",
                             "[127.0.0.1]:80", "[::1:8080", "256.0.0.1:80", "unix:"}) {
        INFO(text);
        CHECK_FALSE(Addr::parse(text));
    }
    CHECK(Addr::parse("127.0.0.1:9000")->same_place(Addr::ipv4(0x7f000001u, 9000)));

    AddrPlaceHash h;
    n502_addr r{};
    r.family = AF_INET;
    r.port = 9000;
    const uint8_t lo[4] = {127, 0, 0, 1};
    std::memcpy(r.addr, lo, 4);
    Addr x = Addr::from_raw(r), y = Addr::ipv4(0x7f000001u, 9000);
    y.netns = 4026531840u;
    CHECK(h(x) == h(y)); // one place, one key
    CHECK(h(x) != h(Addr::ipv4(0x7f000001u, 9001)));
    Addr u1, u2;
    u2.port = 7;
    CHECK(h(u1) == h(u2));
    CHECK(h(Addr::unix_path("/a")) == h(Addr::unix_path("/a")));
}

TEST_CASE("a unix path without a terminating NUL stays in bounds", "[decoder]")
{
    auto r = raw<n502_connect_event>(N502_EV_CONNECT);
    r.dst.family = AF_UNIX;
    std::memset(r.path, 'a', sizeof(r.path));
    auto e = decode(&r, sizeof(r));
    REQUIRE(e);
    CHECK(e->dst.path.size() == sizeof(r.path));
}

TEST_CASE("malformed records are rejected with a reason", "[decoder]")
{
    std::string why;
    uint8_t tiny[8] = {};
    CHECK_FALSE(decode(tiny, sizeof(tiny), &why));
    CHECK(why.find("shorter") != std::string::npos);

    auto r = raw<n502_signal_event>(N502_EV_SIGNAL);
    CHECK_FALSE(decode(&r, sizeof(r) - 1, &why)); // truncated record
    r.hdr.size = 12;                              // size field disagrees with the type
    CHECK_FALSE(decode(&r, sizeof(r), &why));
    CHECK(why.find("expected") != std::string::npos);

    auto u = raw<n502_exit_event>(N502_EV_EXIT);
    u.hdr.type = 999;
    CHECK_FALSE(decode(&u, sizeof(u), &why));
    CHECK(why.find("unknown event type 999") != std::string::npos);
}

TEST_CASE("every event type decodes at its exact size", "[decoder]")
{
    auto a = raw<n502_accept_event>(N502_EV_ACCEPT);
    a.nginx_sk = 7;
    auto ea = decode(&a, sizeof(a));
    REQUIRE(ea);
    CHECK(ea->peer_sk == 7);
    auto c = raw<n502_close_event>(N502_EV_CLOSE);
    c.sock_role = N502_SOCK_UPSTREAM;
    REQUIRE(decode(&c, sizeof(c)));
    auto rs = raw<n502_reset_event>(N502_EV_RESET);
    rs.dir = N502_RST_SENT;
    auto ers = decode(&rs, sizeof(rs));
    REQUIRE(ers);
    CHECK(ers->dir == N502_RST_SENT);
    auto sg = raw<n502_signal_event>(N502_EV_SIGNAL);
    sg.sig = 9;
    sg.target_tgid = 77;
    std::memcpy(sg.target_comm, "python3", 7);
    auto esg = decode(&sg, sizeof(sg));
    REQUIRE(esg);
    CHECK(esg->target == 77);
    CHECK(esg->target_comm == "python3");
    auto ex = raw<n502_exit_event>(N502_EV_EXIT);
    ex.exit_code = 3 << 8;
    auto eex = decode(&ex, sizeof(ex));
    REQUIRE(eex);
    CHECK(eex->exit_code == 0x300);
    auto f = raw<n502_fork_event>(N502_EV_FORK);
    f.child_tgid = 99;
    REQUIRE(decode(&f, sizeof(f))->target == 99);
    auto o = raw<n502_oom_event>(N502_EV_OOM);
    o.victim_pid = 55;
    REQUIRE(decode(&o, sizeof(o))->target == 55);
    auto l = raw<n502_listen_event>(N502_EV_LISTEN);
    l.backlog = 128;
    REQUIRE(decode(&l, sizeof(l))->backlog == 128);
}

TEST_CASE("control characters in comm are neutralised", "[decoder]")
{
    auto r = raw<n502_exit_event>(N502_EV_EXIT);
    std::memcpy(r.hdr.comm, "ev\nil\x1b", 6);
    auto e = decode(&r, sizeof(r));
    REQUIRE(e);
    CHECK(e->comm == "ev?il?");
}

TEST_CASE("log events carry exactly the bytes written; anything else is rejected", "[decoder]")
{
    auto r = raw<n502_log_event>(N502_EV_LOG);
    const std::string line = "2026/11/23 05:00:00 [error] 7#7: *1 connect() failed\n";
    std::memcpy(r.data, line.data(), line.size());
    r.len = static_cast<uint32_t>(line.size());
    r.ino = 54684398;
    r.fd = 2;
    size_t size = offsetof(n502_log_event, data) + line.size();
    r.hdr.size = static_cast<uint16_t>(size);
    std::string why;
    auto e = decode(&r, size, &why);
    REQUIRE(e);
    CHECK(e->type == N502_EV_LOG);
    CHECK(e->data == line);
    CHECK(e->ino == 54684398);
    CHECK(e->fd == 2);

    // The length field disagrees with the record's size.
    r.len = static_cast<uint32_t>(line.size() + 1);
    CHECK_FALSE(decode(&r, size, &why));
    CHECK(why.find("carries") != std::string::npos);
    // The record is shorter than its size field says.
    r.len = static_cast<uint32_t>(line.size());
    CHECK_FALSE(decode(&r, size - 1, &why));
    // Shorter than the fixed part.
    r.hdr.size = 50;
    CHECK_FALSE(decode(&r, 50, &why));
    // Netns survives decoding (loopback addresses are per namespace).
    auto st = raw<n502_state_event>(N502_EV_STATE);
    st.dst.family = AF_INET;
    st.dst.netns = 4026531840u;
    st.dst.addr[0] = 127;
    auto es = decode(&st, sizeof(st));
    REQUIRE(es);
    CHECK(es->dst.netns == 4026531840u);
    CHECK(es->dst.loopback());
}

// A story as the kernel emits it at Nginx's LAST_ACK -> CLOSE: established,
// the upstream's first read, its close, the FIN at Nginx's end.
static n502_conn_event story_record()
{
    auto c = raw<n502_conn_event>(N502_EV_CONN);
    c.hdr.ts_ns = 5000;
    c.sk = 0xa000;
    c.oldstate = 9;  // LAST_ACK
    c.newstate = 7;  // CLOSE
    c.owner_tgid = 42;
    c.src.family = AF_INET;
    c.src.port = 40000;
    c.dst.family = AF_INET;
    c.dst.port = 9000;
    c.bytes_received = 9;
    c.story.est_ns = 1000;
    c.story.up_sk = 0xb000;
    c.story.up_ns = 2000;
    c.story.up_tgid = 77;
    c.story.up_how = N502_TOOK_READ;
    std::memcpy(c.story.up_comm, "gunicorn\x01", 9);
    c.story.up_oldstate = 1;
    c.story.up_newstate = 4;
    c.story.up_leave_ns = 3000;
    c.story.fin_ns = 4000;
    c.story.fin_bytes = 9;
    c.story.sport = 40000;
    return c;
}

TEST_CASE("a connection's story expands into the events it stands for, in time order", "[decoder]")
{
    auto c = story_record();
    auto e = decode(&c, sizeof(c));
    REQUIRE(e);
    CHECK(e->type == N502_EV_CONN);
    CHECK(e->target_comm == "gunicorn?"); // cleaned like any comm
    auto evs = expand_story(*e);
    REQUIRE(evs.size() == 5);
    // Nginx's end established
    CHECK(evs[0].type == N502_EV_STATE);
    CHECK(evs[0].ts == 1000);
    CHECK(evs[0].sk == 0xa000);
    CHECK(evs[0].sock_role == N502_SOCK_NGINX);
    CHECK(evs[0].newstate == 1);
    CHECK(evs[0].owner == 42);
    CHECK(evs[0].dst.port == 9000);
    // the upstream's first read names it
    CHECK(evs[1].type == N502_EV_ACCEPT);
    CHECK(evs[1].ts == 2000);
    CHECK(evs[1].sk == 0xb000);
    CHECK(evs[1].peer_sk == 0xa000);
    CHECK(evs[1].tgid == 77);
    CHECK(evs[1].comm == "gunicorn?");
    CHECK(evs[1].took == N502_TOOK_READ);
    CHECK_FALSE(evs[1].exiting);
    CHECK(evs[1].src.port == 9000); // where it accepted
    CHECK(evs[1].dst.port == 40000);
    // its own close
    CHECK(evs[2].type == N502_EV_STATE);
    CHECK(evs[2].sock_role == N502_SOCK_UPSTREAM);
    CHECK(evs[2].ts == 3000);
    CHECK(evs[2].owner == 77);
    CHECK(evs[2].newstate == 4);
    // the FIN at Nginx's end, with the bytes received by then
    CHECK(evs[3].ts == 4000);
    CHECK(evs[3].newstate == 8);
    CHECK(evs[3].bytes_received == 9);
    // the transition that emitted it
    CHECK(evs[4].ts == 5000);
    CHECK(evs[4].oldstate == 9);
    CHECK(evs[4].newstate == 7);
    CHECK(evs[4].tgid == 42);
    CHECK(evs[4].bytes_received == 9);
}

TEST_CASE("a story emitted early, or of an upstream announced on its own, stands for less", "[decoder]")
{
    auto c = story_record();
    c.oldstate = c.newstate = 0; // a reset came: the rest follows one by one
    c.story.fin_ns = 0;
    c.story.up_how = N502_TOOK_CLOSE | N502_TOOK_EXITING | N502_TOOK_ANNOUNCED;
    auto e = decode(&c, sizeof(c));
    REQUIRE(e);
    auto evs = expand_story(*e);
    // established and the upstream's close; its accept event came on its own
    REQUIRE(evs.size() == 2);
    CHECK(evs[0].newstate == 1);
    CHECK(evs[1].sock_role == N502_SOCK_UPSTREAM);
    CHECK(evs[1].owner == 77);
    // No owner known: the upstream's end is only linked.
    c.story.up_tgid = 0;
    c.story.up_oldstate = 0;
    evs = expand_story(*decode(&c, sizeof(c)));
    REQUIRE(evs.size() == 2);
    CHECK(evs[1].type == N502_EV_ACCEPT);
    CHECK(evs[1].took == N502_TOOK_UNKNOWN);
    CHECK(evs[1].tgid == 0);
    CHECK(evs[1].ts == 1000);
    // Out-of-range states are rejected, not replayed.
    c.story.up_newstate = 200;
    std::string why;
    CHECK_FALSE(decode(&c, sizeof(c), &why));
    CHECK(why.find("out-of-range") != std::string::npos);
}

TEST_CASE("the anomaly-only path's flags are apart from the socket's role", "[decoder]")
{
    auto s = raw<n502_state_event>(N502_EV_STATE);
    s.sock_role = N502_SOCK_NGINX | N502_SOCK_UNTRACKED;
    auto e = decode(&s, sizeof(s));
    REQUIRE(e);
    CHECK(e->sock_role == N502_SOCK_NGINX);
    CHECK(e->untracked);
    CHECK_FALSE(e->other_cgroup);

    // Left for user space to place: another service's unless claimed.
    auto r = raw<n502_reset_event>(N502_EV_RESET);
    r.sock_role = N502_SOCK_NGINX | N502_SOCK_UNTRACKED | N502_SOCK_OTHER_CGROUP;
    e = decode(&r, sizeof(r));
    REQUIRE(e);
    CHECK(e->sock_role == N502_SOCK_NGINX);
    CHECK(e->untracked);
    CHECK(e->other_cgroup);
}

TEST_CASE("a record left for user space to place is found, and placed in place", "[decoder]")
{
    auto s = raw<n502_state_event>(N502_EV_STATE);
    s.sk = 0xabc;
    s.sock_role = N502_SOCK_NGINX | N502_SOCK_UNTRACKED | N502_SOCK_OTHER_CGROUP;
    auto u = unplaced_record(&s, sizeof(s));
    REQUIRE(u);
    CHECK(u->sk == 0xabc);
    CHECK(u->role_at == offsetof(n502_state_event, sock_role));
    place_record(&s, *u);
    CHECK(s.sock_role == (N502_SOCK_NGINX | N502_SOCK_UNTRACKED));
    CHECK_FALSE(unplaced_record(&s, sizeof(s)));
    auto e = decode(&s, sizeof(s));
    REQUIRE(e);
    CHECK_FALSE(e->other_cgroup);

    auto r = raw<n502_reset_event>(N502_EV_RESET);
    r.sk = 0xdef;
    r.sock_role = N502_SOCK_NGINX | N502_SOCK_UNTRACKED | N502_SOCK_OTHER_CGROUP;
    u = unplaced_record(&r, sizeof(r));
    REQUIRE(u);
    CHECK(u->sk == 0xdef);
    place_record(&r, *u);
    CHECK(r.sock_role == (N502_SOCK_NGINX | N502_SOCK_UNTRACKED));

    // Not flagged, too short, or of a type that never carries the flag.
    r.sock_role = N502_SOCK_NGINX | N502_SOCK_UNTRACKED;
    CHECK_FALSE(unplaced_record(&r, sizeof(r)));
    r.sock_role |= N502_SOCK_OTHER_CGROUP;
    CHECK_FALSE(unplaced_record(&r, sizeof(r) - 1));
    auto t = raw<n502_retrans_event>(N502_EV_RETRANS);
    t.sock_role = N502_SOCK_NGINX | N502_SOCK_OTHER_CGROUP;
    CHECK_FALSE(unplaced_record(&t, sizeof(t)));
}
