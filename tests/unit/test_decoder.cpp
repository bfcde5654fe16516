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
