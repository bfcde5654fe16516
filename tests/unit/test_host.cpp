// The real host's look-ups that need no privilege: the process holding a TCP
// connection's end, found through sock_diag and /proc (this test process
// holds both ends of real loopback connections).
#include <arpa/inet.h>
#include <catch2/catch.hpp>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "host.hpp"
#include "sockdiag.hpp"

using namespace n502;

namespace {

uint16_t port_of(int fd)
{
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    REQUIRE(getsockname(fd, reinterpret_cast<sockaddr *>(&ss), &len) == 0);
    return ntohs(ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in *>(&ss)->sin_port
                                         : reinterpret_cast<sockaddr_in6 *>(&ss)->sin6_port);
}

// A listener (IPv4 on 127.0.0.1, or dual-stack IPv6 on ::), an IPv4 client
// connected to it, and the accepted end; closed at the end of the scope.
struct Pair {
    int listener = -1, client = -1, accepted = -1;
    uint16_t server_port = 0, client_port = 0;
    Pair() = default;
    Pair(const Pair &) = delete;
    Pair &operator=(const Pair &) = delete;
    ~Pair()
    {
        for (int fd : {accepted, client, listener})
            if (fd >= 0)
                close(fd);
    }
};

void loopback_pair(bool dual_stack, Pair &p)
{
    p.listener = socket(dual_stack ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(p.listener >= 0);
    if (dual_stack) {
        int off = 0;
        REQUIRE(setsockopt(p.listener, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off)) == 0);
        sockaddr_in6 a{};
        a.sin6_family = AF_INET6;
        a.sin6_addr = in6addr_any;
        REQUIRE(bind(p.listener, reinterpret_cast<sockaddr *>(&a), sizeof(a)) == 0);
    } else {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(bind(p.listener, reinterpret_cast<sockaddr *>(&a), sizeof(a)) == 0);
    }
    REQUIRE(listen(p.listener, 4) == 0);
    p.server_port = port_of(p.listener);
    p.client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(p.client >= 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(p.server_port);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(connect(p.client, reinterpret_cast<sockaddr *>(&to), sizeof(to)) == 0);
    p.accepted = accept4(p.listener, nullptr, nullptr, SOCK_CLOEXEC);
    REQUIRE(p.accepted >= 0);
    p.client_port = port_of(p.client);
}

} // namespace

TEST_CASE("RealHost::holder names the process holding a TCP connection's end", "[host]")
{
    for (bool dual_stack : {false, true}) {
        CAPTURE(dual_stack);
        Pair p;
        loopback_pair(dual_stack, p);
        RealHost host;
        // As Nginx's connection names them: the upstream's end (the
        // address Nginx connected to), then Nginx's own address. A
        // dual-stack server sees ::ffff:127.0.0.1; the look-up matches it.
        Addr up = Addr::ipv4(0x7f000001, p.server_port), nginx = Addr::ipv4(0x7f000001, p.client_port);
        auto h = host.holder(up, nginx, static_cast<uint32_t>(getpid()));
        REQUIRE(h);
        CHECK(h->pid == static_cast<uint32_t>(getpid()));
        CHECK_FALSE(h->comm.empty());
        // No such connection: nothing, not a guess.
        Addr other = Addr::ipv4(0x7f000001, static_cast<uint16_t>(p.client_port ^ 1));
        CHECK_FALSE(host.holder(up, other, static_cast<uint32_t>(getpid())));
        // A pid that does not exist: its namespace cannot be entered.
        CHECK_FALSE(host.holder(up, nginx, 0x7ffffff0));
    }
}

TEST_CASE("a look-up in the network namespace of a process that is gone is not made in ours", "[host]")
{
    // A listener in this test's own namespace: asked for a pid that does not
    // exist (a worker that has exited), it must not be found.
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(lfd >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(bind(lfd, reinterpret_cast<sockaddr *>(&a), sizeof(a)) == 0);
    REQUIRE(listen(lfd, 8) == 0);
    Addr addr = Addr::ipv4(0x7f000001, port_of(lfd));
    bool ran = false;
    CHECK_FALSE(in_netns(4194303, [&] { ran = true; }));
    CHECK_FALSE(ran);
    CHECK(in_netns(static_cast<uint32_t>(getpid()), [&] { ran = true; }));
    CHECK(ran);
    RealHost host;
    CHECK(host.listener(addr, static_cast<uint32_t>(getpid())));
    CHECK_FALSE(host.listener(addr, 4194303));
    close(lfd);
}

TEST_CASE("RealHost::listener: a wildcard listener takes this host's addresses, not another host's", "[host]")
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    REQUIRE(bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a)) == 0);
    REQUIRE(listen(fd, 7) == 0);
    uint16_t port = port_of(fd);
    RealHost h;
    auto here = h.listener(Addr::ipv4(0x7f000001, port), 0);
    CHECK(here);
    if (here)
        CHECK(here->pid == static_cast<uint32_t>(getpid()));
    // 192.0.2.1 (TEST-NET-1) is no address of this host: Nginx's connect
    // there goes elsewhere, whatever listens here on that port.
    CHECK_FALSE(h.listener(Addr::ipv4(0xc0000201, port), 0));
    close(fd);
}
