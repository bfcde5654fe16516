// Sockets as the kernel lists them through NETLINK_SOCK_DIAG (what ss uses),
// per network namespace: no text tables to parse, and the same view for
// TCP over IPv4 and IPv6 and for unix sockets.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "decoder.hpp" // Addr

struct nlmsghdr;

namespace n502 {

struct DiagSock {
    Addr local, remote;       // unix: local is the bound path (remote unset)
    int state = 0;            // TCP_* (unix: 1 connected, 10 listening)
    uint64_t inode = 0;
    uint32_t rqueue = 0;      // listeners: connections waiting; else bytes unread
    uint32_t wqueue = 0;      // listeners: the backlog
    uint64_t peer_inode = 0;  // unix: the other end's inode (0: none or not asked)
    std::string name;         // unix: the bound name as the kernel gives it (abstract ones too)
};

// Runs fn in a thread that has joined the network namespace of pid (when it
// differs from ours; pid 0: ours): sockets opened there see that namespace.
// When that namespace cannot be entered (pid gone) fn is not run and false
// is returned: another namespace's answer would be a wrong one.
bool in_netns(uint32_t pid, const std::function<void()> &fn);

// How many TCP dumps the kernel refused so far (no inet_diag/tcp_diag:
// listeners and connections from before the start cannot be found).
uint64_t diag_failures();

// One NETLINK_SOCK_DIAG dump in the calling thread's namespace; on_msg for
// every message. False when the dump failed.
bool diag_dump(const void *req, size_t len, const std::function<void(const nlmsghdr *)> &on_msg);

// TCP sockets whose state is in states (bit 1 << TCP_*), in the network
// namespace of net_pid (0: ours); addresses carry netns. family: AF_INET or
// AF_INET6, 0 for both.
std::vector<DiagSock> diag_tcp(uint32_t net_pid, uint32_t states, uint32_t netns, int family = 0);

// Unix stream sockets whose state is in states, with their bound path and
// peer inode, in the network namespace of net_pid.
std::vector<DiagSock> diag_unix(uint32_t net_pid, uint32_t states, uint32_t netns);

} // namespace n502
