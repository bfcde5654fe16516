#include "host.hpp"

#include <arpa/inet.h>
#include <cerrno>
#include <climits>
#include <ctime>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <fstream>
#include <functional>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <set>
#include <sstream>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "container.hpp"
#include "nginx.hpp"
#include "procscan.hpp"
#include "sockdiag.hpp"

namespace n502 {

namespace {

std::string read_first_line(const std::string &path)
{
    std::ifstream f(path);
    std::string line;
    std::getline(f, line);
    return line;
}

// For the look-up caches.
int64_t monotonic_ns()
{
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000LL + ts.tv_nsec;
}

// The process holding a listening socket, by its inode.
void name_holder(ListenerQueue &q, uint64_t inode)
{
    q.pid = pid_for_socket_inode(inode);
    if (auto p = read_proc(q.pid))
        q.comm = p->comm;
}

// Is a one of the current network namespace's own addresses (loopback, or
// an interface's)? A wildcard listener there takes connections to it only.
bool own_address(const Addr &a)
{
    if (a.loopback())
        return true;
    ifaddrs *all = nullptr;
    if (getifaddrs(&all) != 0)
        return false;
    bool own = false;
    for (const ifaddrs *i = all; i && !own; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != a.family)
            continue;
        if (a.family == AF_INET)
            own = std::memcmp(&reinterpret_cast<const sockaddr_in *>(i->ifa_addr)->sin_addr, a.ip.data(), 4) == 0;
        else if (a.family == AF_INET6)
            own = std::memcmp(&reinterpret_cast<const sockaddr_in6 *>(i->ifa_addr)->sin6_addr, a.ip.data(), 16) == 0;
    }
    freeifaddrs(all);
    return own;
}

std::optional<ListenerQueue> tcp_listener(const Addr &a)
{
    std::optional<ListenerQueue> best;
    uint64_t inode = 0;
    size_t n = a.family == AF_INET ? 4 : 16;
    std::optional<bool> own; // (looked up once, if a wildcard listener is on the port)
    for (const DiagSock &d : diag_tcp(0, 1u << 10 /* LISTEN */, 0, a.family)) {
        if (d.local.port != a.port)
            continue;
        bool wildcard = true;
        for (size_t i = 0; i < n; i++)
            wildcard = wildcard && d.local.ip[i] == 0;
        bool exact = std::memcmp(d.local.ip.data(), a.ip.data(), n) == 0;
        if ((!exact && !wildcard) || (best && !exact))
            continue;
        // A wildcard listener does not take connections to another host's
        // address (an upstream on 10.0.0.5:80 while Nginx listens on *:80).
        if (!exact && !(own ? *own : *(own = own_address(a))))
            continue;
        best = ListenerQueue{};
        best->queue_len = d.rqueue;
        best->backlog = d.wqueue;
        inode = d.inode;
    }
    if (best && inode)
        name_holder(*best, inode);
    return best;
}

std::optional<ListenerQueue> unix_listener(const std::string &path)
{
    std::optional<ListenerQueue> found;
    uint64_t inode = 0;
    for (const DiagSock &d : diag_unix(0, 1u << 10 /* LISTEN */, 0)) {
        if (d.name != path)
            continue;
        found = ListenerQueue{};
        found->queue_len = d.rqueue;
        found->backlog = d.wqueue;
        inode = d.inode;
    }
    if (found && inode)
        name_holder(*found, inode);
    return found;
}

// The name for a numeric id from /etc/passwd or /etc/group (read directly:
// a static binary cannot rely on the host's NSS modules).
std::string name_of_id(const char *file, uint32_t id)
{
    std::ifstream f(file);
    std::string line;
    while (std::getline(f, line)) {
        auto a = line.find(':');
        auto b = a == std::string::npos ? a : line.find(':', a + 1);
        auto c = b == std::string::npos ? b : line.find(':', b + 1);
        if (c == std::string::npos)
            continue;
        if (line.substr(b + 1, c - b - 1) == std::to_string(id))
            return line.substr(0, a);
    }
    return std::to_string(id);
}

} // namespace

std::optional<ListenerQueue> RealHost::listener(const Addr &addr, uint32_t ns_pid)
{
    int64_t now = monotonic_ns();
    std::string key = fmt::format("{}|{}", addr.str(), ns_pid);
    if (auto it = listener_cache_.find(key); it != listener_cache_.end() && now - it->second.at_ns < 200'000'000LL)
        return it->second.value;
    if (listener_cache_.size() > 1024)
        listener_cache_.clear();
    std::optional<ListenerQueue> out;
    in_netns(ns_pid, [&] {
        if (addr.family == AF_UNIX)
            out = unix_listener(addr.path);
        else if (addr.family == AF_INET || addr.family == AF_INET6)
            out = tcp_listener(addr);
    });
    listener_cache_[key] = Cached{now, out};
    return out;
}

FileFacts RealHost::file(const std::string &path)
{
    FileFacts f;
    struct stat st{};
    if (stat(path.c_str(), &st) != 0)
        return f;
    f.exists = true;
    f.mode = st.st_mode & 07777;
    f.uid = st.st_uid;
    f.gid = st.st_gid;
    f.owner = name_of_id("/etc/passwd", st.st_uid);
    f.group = name_of_id("/etc/group", st.st_gid);
    return f;
}

std::optional<Creds> RealHost::creds(uint32_t pid)
{
    std::ifstream f(fmt::format("/proc/{}/status", pid));
    if (!f)
        return std::nullopt;
    Creds c;
    std::string line;
    bool have = false;
    while (std::getline(f, line)) {
        std::istringstream in(line);
        std::string key;
        in >> key;
        if (key == "Uid:") {
            in >> c.uid; // real uid; effective is next, same for Nginx workers
            uint32_t euid;
            if (in >> euid)
                c.uid = euid;
            have = true;
        } else if (key == "Gid:") {
            in >> c.gid;
            uint32_t egid;
            if (in >> egid)
                c.gid = egid;
        } else if (key == "Groups:") {
            uint32_t g;
            while (in >> g)
                c.groups.push_back(g);
        }
    }
    if (!have)
        return std::nullopt;
    return c;
}

std::string RealHost::activity(uint32_t pid)
{
    auto p = read_proc(pid);
    if (!p)
        return "";
    std::string stat = read_first_line(fmt::format("/proc/{}/stat", pid));
    auto close = stat.rfind(')');
    char st = close != std::string::npos && close + 2 < stat.size() ? stat[close + 2] : '?';
    const char *name = "unknown";
    switch (st) {
    case 'R': name = "running"; break;
    case 'S': name = "sleeping"; break;
    case 'D': name = "in uninterruptible sleep (usually I/O)"; break;
    case 'T': name = "stopped"; break;
    case 't': name = "stopped by a tracer"; break;
    case 'Z': name = "a zombie"; break;
    case 'X': name = "dead"; break;
    case 'I': name = "idle"; break;
    default: break;
    }
    std::string wchan = read_first_line(fmt::format("/proc/{}/wchan", pid));
    std::string out = fmt::format("{} ({})", st, name);
    if (!wchan.empty() && wchan != "0")
        out += " in " + wchan;
    return out;
}

std::string RealHost::port_range(uint32_t pid)
{
    std::string out;
    in_netns(pid, [&] { out = read_first_line("/proc/sys/net/ipv4/ip_local_port_range"); });
    std::istringstream in(out);
    unsigned lo = 0, hi = 0;
    if (!(in >> lo >> hi))
        return "";
    return fmt::format("{}-{}", lo, hi);
}

int RealHost::tcp_abort_on_overflow(uint32_t pid)
{
    std::string out;
    in_netns(pid, [&] { out = read_first_line("/proc/sys/net/ipv4/tcp_abort_on_overflow"); });
    return out.empty() ? -1 : atoi(out.c_str());
}

static bool allowed(const Creds &c, const FileFacts &f, uint32_t owner_bit, uint32_t group_bit, uint32_t other_bit)
{
    if (c.uid == 0)
        return true;
    if (c.uid == f.uid)
        return f.mode & owner_bit;
    bool in_group = c.gid == f.gid;
    for (uint32_t g : c.groups)
        in_group = in_group || g == f.gid;
    if (in_group)
        return f.mode & group_bit;
    return f.mode & other_bit;
}

bool may_connect(const Creds &c, const std::string &path, Host &host, std::string *why)
{
    // Search permission on every directory from / down to the socket's.
    std::string dir;
    size_t pos = 0;
    while ((pos = path.find('/', pos + 1)) != std::string::npos) {
        dir = path.substr(0, pos);
        FileFacts d = host.file(dir);
        if (d.exists && !allowed(c, d, 0100, 0010, 0001)) {
            *why = fmt::format("directory {} ({:04o} {}:{}) is not searchable by uid {}", dir, d.mode, d.owner,
                               d.group, c.uid);
            return false;
        }
    }
    FileFacts f = host.file(path);
    if (f.exists && !allowed(c, f, 0200, 0020, 0002)) {
        *why = fmt::format("socket {} ({:04o} {}:{}) is not writable by uid {} gid {}", path, f.mode, f.owner,
                           f.group, c.uid, c.gid);
        return false;
    }
    return true;
}

std::map<std::string, int> RealHost::sockets_to(const Addr &dst, uint32_t ns_pid)
{
    if (dst.family != AF_INET && dst.family != AF_INET6)
        return {};
    int64_t now = monotonic_ns();
    std::string key = fmt::format("{}|{}", dst.str(), ns_pid);
    if (auto it = sockets_cache_.find(key); it != sockets_cache_.end() && now - it->second.at_ns < 200'000'000LL)
        return it->second.value;
    if (sockets_cache_.size() > 1024)
        sockets_cache_.clear();
    std::map<std::string, int> out;
    size_t n = dst.family == AF_INET ? 4 : 16;
    // Every state but LISTEN: TIME_WAIT sockets hold their ports too.
    for (const DiagSock &d : diag_tcp(ns_pid, 0xffff & ~(1u << 10), 0, dst.family))
        if (d.remote.port == dst.port && std::memcmp(d.remote.ip.data(), dst.ip.data(), n) == 0)
            out[tcp_state_name(d.state)]++;
    sockets_cache_[key] = {now, out};
    return out;
}

namespace {

// One end of a connection as a key; an IPv4-mapped IPv6 address (a dual-stack
// socket's view of an IPv4 peer) written as the IPv4 address it stands for.
std::string end_key(const Addr &a)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (a.family != AF_INET6 || std::memcmp(a.ip.data(), mapped, sizeof(mapped)) != 0)
        return a.str();
    Addr v4 = a;
    v4.family = AF_INET;
    v4.ip = {};
    std::memcpy(v4.ip.data(), a.ip.data() + 12, 4);
    return v4.str();
}

} // namespace

std::optional<SocketHolder> RealHost::holder(const Addr &local, const Addr &remote, uint32_t ns_pid)
{
    if ((local.family != AF_INET && local.family != AF_INET6) || remote.family != local.family)
        return std::nullopt;
    // The namespace to look in must be ns_pid's (a pid that is gone would
    // leave us looking in our own), and a loopback end lives only in its own.
    uint64_t ns = netns_of(ns_pid);
    if (!ns || (local.loopback() && local.netns && local.netns != ns))
        return std::nullopt;
    int64_t now = monotonic_ns();
    const int64_t fresh = 200'000'000LL; // as the other look-ups' caches
    for (auto it = conns_cache_.begin(); it != conns_cache_.end();) // nothing outlives a storm
        it = now - it->second.at_ns >= fresh ? conns_cache_.erase(it) : std::next(it);
    auto [cc, added] = conns_cache_.try_emplace(ns);
    if (added) {
        for (const DiagSock &d : diag_tcp(ns_pid, 0xffff & ~(1u << 10) /* all but LISTEN */, 0))
            if (d.inode)
                cc->second.inode_of[end_key(d.local) + ">" + end_key(d.remote)] = d.inode;
        cc->second.at_ns = now;
    }
    auto it = cc->second.inode_of.find(end_key(local) + ">" + end_key(remote));
    if (it == cc->second.inode_of.end())
        return std::nullopt;
    uint64_t inode = it->second;
    // One walk of /proc/*/fd serves every namespace looked in since the last
    // one; it keeps only the sockets of those namespaces' connections.
    if (now - fds_at_ns_ >= fresh || !covered_.count(inode)) {
        covered_.clear();
        for (const auto &[n, c] : conns_cache_)
            for (const auto &[pair, i] : c.inode_of)
                covered_.insert(i);
        pid_of_inode_.clear();
        for_each_socket_fd([&](uint32_t p, uint64_t i) {
            if (covered_.count(i))
                pid_of_inode_.emplace(i, p);
            return false;
        });
        fds_at_ns_ = now;
    }
    auto pid = pid_of_inode_.find(inode);
    if (pid == pid_of_inode_.end())
        return std::nullopt;
    SocketHolder h;
    h.pid = pid->second;
    if (auto p = read_proc(h.pid))
        h.comm = p->comm;
    return h;
}

} // namespace n502
