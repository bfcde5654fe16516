// Start-up scan: TCP listeners that existed before n502trace started, and
// the processes that hold them, so a later refused connect can still name the
// last listener and how it went away.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "decoder.hpp"

namespace n502 {

struct ExistingListener {
    Addr addr;
    uint64_t inode = 0;
    uint32_t pid = 0; // the first process found holding it, 0 when none
    std::string comm;
    std::vector<uint32_t> holders; // every process holding it (pre-fork servers share it)
};

// Lists TCP listeners (IPv4, IPv6) and unix stream listeners bound to a path
// through sock_diag, and maps their socket inodes to processes through
// /proc/*/fd. net_pids: the network namespaces of these processes (entered
// with setns; empty: ours), each listener with Addr::netns set to its
// namespace.
std::vector<ExistingListener> scan_tcp_listeners(const std::string &proc_root = "/proc",
                                                 const std::vector<uint32_t> &net_pids = {});

// One process in each network namespace on the host (for scan_tcp_listeners).
std::vector<uint32_t> one_pid_per_netns(const std::string &proc_root = "/proc");

// Calls fn(pid, inode) for every socket descriptor of every process (through
// /proc/*/fd), until fn returns true.
void for_each_socket_fd(const std::function<bool(uint32_t pid, uint64_t inode)> &fn,
                        const std::string &proc_root = "/proc");

// Calls fn(inode) for every socket descriptor of one process, until fn
// returns true; returns whether it did.
bool socket_fds_of(uint32_t pid, const std::function<bool(uint64_t inode)> &fn, const std::string &proc_root = "/proc");

// pid of a process holding the socket inode, 0 when none.
uint32_t pid_for_socket_inode(uint64_t inode, const std::string &proc_root = "/proc");

// A TCP connection of one of `owners` (Nginx) to an upstream that existed
// before n502trace started (a keep-alive pool), and the process holding the
// other end when it is on this host.
struct ExistingConn {
    uint32_t nginx_pid = 0;
    Addr local, remote; // Nginx's view (unix: local unnamed, remote the upstream's path)
    int state = 0;      // TCP state (1 ESTABLISHED, 8 CLOSE_WAIT; unix: 1)
    uint64_t inode = 0; // Nginx's socket
    Addr up_local, up_remote;
    uint64_t up_inode = 0;
    uint32_t up_pid = 0;
    std::string up_comm;
};
// Looks in the network namespaces of net_pids (sock_diag, entered with
// setns), TCP and unix stream sockets; connections to the owners' own
// listening ports or paths (clients) are left out.
std::vector<ExistingConn> scan_connections(const std::vector<uint32_t> &owners, const std::vector<uint32_t> &net_pids,
                                           const std::string &proc_root = "/proc");

} // namespace n502
