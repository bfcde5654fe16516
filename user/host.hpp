// Host facts looked up at verdict time (not from the event stream): listener
// queues through sock_diag, socket file permissions, a process's credentials
// and what it is doing, the local port range of a network namespace. An
// interface so that the rules can be tested with recorded facts.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "decoder.hpp"

namespace n502 {

struct ListenerQueue {
    uint32_t pid = 0;       // a process holding the listening socket, 0 if not found
    std::string comm;
    uint32_t queue_len = 0; // connections waiting to be accepted
    uint32_t backlog = 0;   // the listen() backlog (as the kernel clamps it)
};

// The process holding an open socket (found through its descriptors).
struct SocketHolder {
    uint32_t pid = 0;
    std::string comm;
};

struct FileFacts {
    uint32_t mode = 0; // permission bits
    uint32_t uid = 0, gid = 0;
    std::string owner, group;
    bool exists = false;
};

struct Creds {
    uint32_t uid = 0, gid = 0;
    std::vector<uint32_t> groups;
};

// Every answer is recorded (RecordingHost): a look-up added here, or asked
// where it was not before, bumps kRecLookups in recording.hpp.
class Host {
public:
    virtual ~Host() = default;
    // The listener on addr (TCP, or unix path) in the network namespace of `ns_pid`.
    virtual std::optional<ListenerQueue> listener(const Addr &addr, uint32_t ns_pid) = 0;
    virtual FileFacts file(const std::string &path) = 0;
    virtual std::optional<Creds> creds(uint32_t pid) = 0;
    // "S (sleeping) in unix_stream_read_generic", "" when the process is gone.
    virtual std::string activity(uint32_t pid) = 0;
    // "32768-60999" in the network namespace of pid.
    virtual std::string port_range(uint32_t pid) = 0;
    virtual int tcp_abort_on_overflow(uint32_t pid) = 0;
    // TCP sockets in the network namespace of ns_pid whose remote end is dst,
    // counted by state ("ESTABLISHED", "TIME_WAIT", ...): what holds the
    // local ports toward dst.
    virtual std::map<std::string, int> sockets_to(const Addr &dst, uint32_t ns_pid) = 0;
    // The process holding the TCP socket local <-> remote in the network
    // namespace of ns_pid, now: the owner of an upstream's end that it has
    // neither closed nor given up (a timeout), which no hook names.
    virtual std::optional<SocketHolder> holder(const Addr &local, const Addr &remote, uint32_t ns_pid) = 0;
};

// The real host, through /proc, stat(2) and NETLINK_SOCK_DIAG. Listener
// lookups are cached for 200 ms: a storm of refused connects to one address
// costs one sock_diag dump per 200 ms, not one per line.
class RealHost : public Host {
public:
    std::optional<ListenerQueue> listener(const Addr &addr, uint32_t ns_pid) override;
    FileFacts file(const std::string &path) override;
    std::optional<Creds> creds(uint32_t pid) override;
    std::string activity(uint32_t pid) override;
    std::string port_range(uint32_t pid) override;
    int tcp_abort_on_overflow(uint32_t pid) override;
    std::map<std::string, int> sockets_to(const Addr &dst, uint32_t ns_pid) override;
    std::optional<SocketHolder> holder(const Addr &local, const Addr &remote, uint32_t ns_pid) override;

private:
    struct Cached {
        int64_t at_ns = 0;
        std::optional<ListenerQueue> value;
    };
    std::map<std::string, Cached> listener_cache_;
    struct CachedCount {
        int64_t at_ns = 0;
        std::map<std::string, int> value;
    };
    std::map<std::string, CachedCount> sockets_cache_; // a storm of EADDRNOTAVAIL: one dump per 200 ms
    // For holder(): each network namespace's TCP connections ("local>remote"
    // -> inode, by namespace inode) and the processes holding them (inode ->
    // pid), kept 200 ms: a storm of timeouts costs one sock_diag dump per
    // namespace and one /proc walk per 200 ms, not one per line.
    struct CachedConns {
        int64_t at_ns = 0;
        std::map<std::string, uint64_t> inode_of;
    };
    std::map<uint64_t, CachedConns> conns_cache_;
    int64_t fds_at_ns_ = 0;
    std::set<uint64_t> covered_; // the inodes the last walk looked for
    std::map<uint64_t, uint32_t> pid_of_inode_;
};

// May `c` connect to the unix socket at path? (write on the socket, search on
// every directory above it). Sets *why to the first refusal found.
bool may_connect(const Creds &c, const std::string &path, Host &host, std::string *why);

} // namespace n502
