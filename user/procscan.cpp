#include "procscan.hpp"

#include <arpa/inet.h>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fmt/format.h>
#include <fstream>
#include <sys/stat.h>
#include <sstream>
#include <sys/socket.h>
#include <unistd.h>
#include <unordered_map>

#include "container.hpp"
#include "nginx.hpp"
#include "sockdiag.hpp"

namespace n502 {

// The listeners of one network namespace (net_pid's; 0: ours), from
// sock_diag: TCP over IPv4 and IPv6, and unix stream sockets bound to a path.
// Appended to out, indexed by socket inode.
static void listeners_of_netns(const std::string &root, uint32_t net_pid, std::vector<ExistingListener> &out,
                               std::unordered_map<uint64_t, size_t> &by_inode)
{
    uint32_t netns = static_cast<uint32_t>(net_pid ? netns_of(net_pid, root) : netns_of(static_cast<uint32_t>(getpid()), root));
    std::vector<DiagSock> socks = diag_tcp(net_pid, 1u << 10 /* LISTEN */, netns);
    for (const DiagSock &u : diag_unix(net_pid, 1u << 10, netns))
        if (!u.local.path.empty())
            socks.push_back(u);
    for (const DiagSock &d : socks) {
        if (!d.inode || by_inode.count(d.inode))
            continue;
        by_inode[d.inode] = out.size();
        out.push_back({d.local, d.inode, 0, "", {}});
    }
}

std::vector<ExistingListener> scan_tcp_listeners(const std::string &root, const std::vector<uint32_t> &net_pids)
{
    std::vector<ExistingListener> out;
    std::unordered_map<uint64_t, size_t> by_inode;
    if (net_pids.empty())
        listeners_of_netns(root, 0, out, by_inode);
    for (uint32_t pid : net_pids)
        listeners_of_netns(root, pid, out, by_inode);
    if (out.empty())
        return out;
    for_each_socket_fd(
        [&](uint32_t pid, uint64_t ino) {
            auto it = by_inode.find(ino);
            if (it == by_inode.end())
                return false;
            ExistingListener &l = out[it->second];
            if (l.holders.empty() || l.holders.back() != pid)
                l.holders.push_back(pid);
            if (!l.pid) {
                l.pid = pid;
                if (auto p = read_proc(pid, root))
                    l.comm = p->comm;
            }
            return false;
        },
        root);
    return out;
}

void for_each_socket_fd(const std::function<bool(uint32_t pid, uint64_t inode)> &fn, const std::string &root)
{
    DIR *d = opendir(root.c_str());
    if (!d)
        return;
    bool stop = false;
    while (!stop) {
        dirent *de = readdir(d);
        if (!de)
            break;
        char *end = nullptr;
        unsigned long pid = strtoul(de->d_name, &end, 10);
        if (!end || *end || pid == 0 || pid > UINT32_MAX)
            continue;
        stop = socket_fds_of(static_cast<uint32_t>(pid), [&](uint64_t ino) { return fn(static_cast<uint32_t>(pid), ino); },
                             root);
    }
    closedir(d);
}

bool socket_fds_of(uint32_t pid, const std::function<bool(uint64_t inode)> &fn, const std::string &root)
{
    std::string fddir = fmt::format("{}/{}/fd", root, pid);
    DIR *fds = opendir(fddir.c_str());
    if (!fds)
        return false;
    bool stop = false;
    while (dirent *fe = readdir(fds)) {
        char buf[64];
        ssize_t n = readlink((fddir + "/" + fe->d_name).c_str(), buf, sizeof(buf) - 1);
        if (n <= 8 || strncmp(buf, "socket:[", 8) != 0)
            continue;
        buf[n] = 0;
        if (fn(strtoull(buf + 8, nullptr, 10))) {
            stop = true;
            break;
        }
    }
    closedir(fds);
    return stop;
}

uint32_t pid_for_socket_inode(uint64_t inode, const std::string &root)
{
    uint32_t found = 0;
    for_each_socket_fd(
        [&](uint32_t pid, uint64_t ino) {
            if (ino == inode)
                found = pid;
            return found != 0;
        },
        root);
    return found;
}

} // namespace n502

namespace n502 {

std::vector<uint32_t> one_pid_per_netns(const std::string &root)
{
    std::vector<uint32_t> out;
    std::unordered_map<uint64_t, bool> seen;
    if (DIR *d = opendir(root.c_str())) {
        while (dirent *de = readdir(d)) {
            char *end = nullptr;
            unsigned long pid = strtoul(de->d_name, &end, 10);
            if (!end || *end || pid == 0)
                continue;
            uint64_t ns = netns_of(static_cast<uint32_t>(pid), root);
            if (ns && seen.emplace(ns, true).second)
                out.push_back(static_cast<uint32_t>(pid));
        }
        closedir(d);
    }
    return out;
}

} // namespace n502

namespace n502 {

std::vector<ExistingConn> scan_connections(const std::vector<uint32_t> &owners, const std::vector<uint32_t> &net_pids,
                                           const std::string &root)
{
    std::vector<ExistingConn> out;
    // Socket inodes of the owners (Nginx's processes).
    std::unordered_map<uint64_t, uint32_t> mine;
    for (uint32_t pid : owners)
        socket_fds_of(
            pid,
            [&](uint64_t ino) {
                mine.emplace(ino, pid);
                return false;
            },
            root);
    struct Sock {
        Addr local, remote;
        int state;
        uint64_t ino;
    };
    // Every TCP socket of every namespace asked about, by namespace.
    std::vector<Sock> all;
    std::vector<uint16_t> listen_ports; // the owners' own listeners: their client side
    for (uint32_t np : net_pids) {
        uint32_t netns = static_cast<uint32_t>(netns_of(np, root));
        for (const DiagSock &d : diag_tcp(np, ~0u, netns)) {
            if (!d.inode)
                continue;
            if (d.state == 10 && mine.count(d.inode))
                listen_ports.push_back(d.local.port);
            all.push_back({d.local, d.remote, d.state, d.inode});
        }
    }
    auto same_ip = [](const Addr &a, const Addr &b) { return a.family == b.family && a.ip == b.ip && a.port == b.port; };
    std::unordered_map<uint64_t, size_t> want; // upstream socket inode -> index in out
    for (const Sock &s : all) {
        auto it = mine.find(s.ino);
        // ESTABLISHED (1) or CLOSE_WAIT (8): a connection still in use or in the pool.
        if (it == mine.end() || (s.state != 1 && s.state != 8))
            continue;
        if (std::find(listen_ports.begin(), listen_ports.end(), s.local.port) != listen_ports.end())
            continue; // a client's connection to Nginx
        ExistingConn c;
        c.nginx_pid = it->second;
        c.local = s.local;
        c.remote = s.remote;
        c.state = s.state;
        c.inode = s.ino;
        // The other end: the socket whose local end is our remote one (the
        // same namespace for loopback, any namespace otherwise).
        for (const Sock &o : all) {
            if (!same_ip(o.local, s.remote) || !same_ip(o.remote, s.local) || o.ino == s.ino)
                continue;
            if (s.remote.loopback() && o.local.netns != s.local.netns)
                continue;
            c.up_local = o.local;
            c.up_remote = o.remote;
            c.up_inode = o.ino;
            break;
        }
        if (c.up_inode)
            want[c.up_inode] = out.size();
        out.push_back(c);
    }
    // Unix stream connections: Nginx's end is unnamed (it connected); the
    // other end carries the listener's path, and sock_diag names the peer.
    for (uint32_t np : net_pids) {
        uint32_t netns = static_cast<uint32_t>(netns_of(np, root));
        std::vector<DiagSock> us = diag_unix(np, 1u << 1 /* connected */, netns);
        std::unordered_map<uint64_t, const DiagSock *> by_ino;
        for (const DiagSock &u : us)
            by_ino[u.inode] = &u;
        for (const DiagSock &u : us) {
            auto it = mine.find(u.inode);
            if (it == mine.end() || !u.local.path.empty() || !u.peer_inode)
                continue; // not Nginx's, or its client side (named: accepted on its listener)
            auto peer = by_ino.find(u.peer_inode);
            if (peer == by_ino.end() || peer->second->local.path.empty())
                continue;
            ExistingConn c;
            c.nginx_pid = it->second;
            c.local = u.local;
            c.remote = peer->second->local;
            c.state = 1;
            c.inode = u.inode;
            c.up_local = peer->second->local;
            c.up_remote = u.local;
            c.up_inode = u.peer_inode;
            want[c.up_inode] = out.size();
            out.push_back(c);
        }
    }
    if (!want.empty())
        for_each_socket_fd(
            [&](uint32_t pid, uint64_t ino) {
                auto it = want.find(ino);
                if (it != want.end() && !out[it->second].up_pid) {
                    out[it->second].up_pid = pid;
                    if (auto p = read_proc(pid, root))
                        out[it->second].up_comm = p->comm;
                }
                return false;
            },
            root);
    return out;
}

} // namespace n502
