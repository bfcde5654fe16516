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

#include "nginx.hpp"

namespace n502 {

bool parse_proc_net_tcp_line(const std::string &line, bool v6, Addr *local, int *state, uint64_t *inode)
{
    std::istringstream in(line);
    std::string sl, loc, rem, st, queues, timer, retr, uid, timeout;
    if (!(in >> sl >> loc >> rem >> st >> queues >> timer >> retr >> uid >> timeout >> *inode))
        return false;
    if (sl.empty() || sl.back() != ':')
        return false;
    auto colon = loc.find(':');
    size_t hexlen = v6 ? 32 : 8;
    if (colon != hexlen || loc.size() < colon + 2)
        return false;
    char *end = nullptr;
    *state = static_cast<int>(strtol(st.c_str(), &end, 16));
    if (*end)
        return false;
    unsigned long port = strtoul(loc.c_str() + colon + 1, &end, 16);
    if (*end || port > 65535)
        return false;
    Addr a;
    a.family = v6 ? AF_INET6 : AF_INET;
    a.port = static_cast<uint16_t>(port);
    // The kernel prints each 32-bit word in host byte order.
    for (size_t w = 0; w < hexlen / 8; w++) {
        std::string word = loc.substr(w * 8, 8);
        uint32_t v = static_cast<uint32_t>(strtoul(word.c_str(), &end, 16));
        if (*end)
            return false;
        std::memcpy(a.ip.data() + w * 4, &v, 4);
    }
    *local = a;
    return true;
}

// The listeners of one network namespace, seen through /proc/NET_PID/net
// (net_pid 0: ours); appended to out, indexed by socket inode.
static void listeners_of_netns(const std::string &root, uint32_t net_pid, std::vector<ExistingListener> &out,
                               std::unordered_map<uint64_t, size_t> &by_inode)
{
    std::string net = net_pid ? fmt::format("{}/{}/net", root, net_pid) : root + "/net";
    struct stat nst{};
    uint32_t netns = stat(net_pid ? fmt::format("{}/{}/ns/net", root, net_pid).c_str() : (root + "/self/ns/net").c_str(),
                          &nst) == 0
                         ? static_cast<uint32_t>(nst.st_ino)
                         : 0;
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
        std::string fddir = fmt::format("{}/{}/fd", root, pid);
        DIR *fds = opendir(fddir.c_str());
        if (!fds)
            continue;
        while (dirent *fe = readdir(fds)) {
            char buf[64];
            ssize_t n = readlink((fddir + "/" + fe->d_name).c_str(), buf, sizeof(buf) - 1);
            if (n <= 8 || strncmp(buf, "socket:[", 8) != 0)
                continue;
            buf[n] = 0;
            if (fn(static_cast<uint32_t>(pid), strtoull(buf + 8, nullptr, 10))) {
                stop = true;
                break;
            }
        }
        closedir(fds);
    }
    closedir(d);
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
            struct stat st{};
            if (stat(fmt::format("{}/{}/ns/net", root, pid).c_str(), &st) != 0)
                continue;
            if (seen.emplace(static_cast<uint64_t>(st.st_ino), true).second)
                out.push_back(static_cast<uint32_t>(pid));
        }
        closedir(d);
    }
    return out;
}

} // namespace n502
