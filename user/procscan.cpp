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

namespace n502 {

// "0100007F:1F90" -> 127.0.0.1:8080 (each 32-bit word in host byte order).
static bool parse_hex_endpoint(const std::string &hex, bool v6, Addr *out)
{
    auto colon = hex.find(':');
    size_t hexlen = v6 ? 32 : 8;
    if (colon != hexlen || hex.size() < colon + 2)
        return false;
    char *end = nullptr;
    unsigned long port = strtoul(hex.c_str() + colon + 1, &end, 16);
    if (*end || port > 65535)
        return false;
    Addr a;
    a.family = v6 ? AF_INET6 : AF_INET;
    a.port = static_cast<uint16_t>(port);
    for (size_t w = 0; w < hexlen / 8; w++) {
        std::string word = hex.substr(w * 8, 8);
        uint32_t v = static_cast<uint32_t>(strtoul(word.c_str(), &end, 16));
        if (*end)
            return false;
        std::memcpy(a.ip.data() + w * 4, &v, 4);
    }
    *out = a;
    return true;
}

bool parse_proc_net_tcp_line(const std::string &line, bool v6, Addr *local, int *state, uint64_t *inode,
                             Addr *remote)
{
    std::istringstream in(line);
    std::string sl, loc, rem, st, queues, timer, retr, uid, timeout;
    if (!(in >> sl >> loc >> rem >> st >> queues >> timer >> retr >> uid >> timeout >> *inode))
        return false;
    if (sl.empty() || sl.back() != ':')
        return false;
    char *end = nullptr;
    *state = static_cast<int>(strtol(st.c_str(), &end, 16));
    if (*end)
        return false;
    Addr a, r;
    if (!parse_hex_endpoint(loc, v6, &a) || !parse_hex_endpoint(rem, v6, &r))
        return false;
    if (remote)
        *remote = r;
    *local = a;
    return true;
}

// The listeners of one network namespace, seen through /proc/NET_PID/net
// (net_pid 0: ours); appended to out, indexed by socket inode.
static void listeners_of_netns(const std::string &root, uint32_t net_pid, std::vector<ExistingListener> &out,
                               std::unordered_map<uint64_t, size_t> &by_inode)
{
    std::string net = net_pid ? fmt::format("{}/{}/net", root, net_pid) : root + "/net";
    uint32_t netns = static_cast<uint32_t>(net_pid ? netns_of(net_pid, root) : netns_of(static_cast<uint32_t>(getpid()), root));
    for (bool v6 : {false, true}) {
        std::ifstream f(net + (v6 ? "/tcp6" : "/tcp"));
        std::string line;
        while (std::getline(f, line)) {
            Addr a;
            int st = 0;
            uint64_t ino = 0;
            if (!parse_proc_net_tcp_line(line, v6, &a, &st, &ino) || st != 10 /* LISTEN */ || ino == 0)
                continue;
            a.netns = netns;
            if (by_inode.count(ino))
                continue;
            by_inode[ino] = out.size();
            out.push_back({a, ino, 0, "", {}});
        }
    }
    // Unix stream listeners: "Num RefCount Protocol Flags Type St Inode Path";
    // Flags has __SO_ACCEPTCON (0x10000) for a listening socket.
    {
        std::ifstream f(net + "/unix");
        std::string line;
        std::getline(f, line); // header
        while (std::getline(f, line)) {
            std::istringstream in(line);
            std::string num, refcnt, proto, flags, type, st, path;
            uint64_t ino = 0;
            if (!(in >> num >> refcnt >> proto >> flags >> type >> st >> ino >> path))
                continue; // unnamed sockets have no path
            unsigned long fl = strtoul(flags.c_str(), nullptr, 16);
            if (!(fl & 0x10000) || type != "0001" || path.empty() || path[0] != '/')
                continue;
            if (by_inode.count(ino))
                continue;
            by_inode[ino] = out.size();
            Addr ua = Addr::unix_path(path);
            ua.netns = netns;
            out.push_back({ua, ino, 0, "", {}});
        }
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
        for (bool v6 : {false, true}) {
            std::ifstream f(fmt::format("{}/{}/net/{}", root, np, v6 ? "tcp6" : "tcp"));
            std::string line;
            while (std::getline(f, line)) {
                Sock s{};
                if (!parse_proc_net_tcp_line(line, v6, &s.local, &s.state, &s.ino, &s.remote) || !s.ino)
                    continue;
                s.local.netns = netns;
                s.remote.netns = netns;
                if (s.state == 10 && mine.count(s.ino))
                    listen_ports.push_back(s.local.port);
                all.push_back(s);
            }
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
