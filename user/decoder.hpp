// Decoder: raw ring-buffer records (include/n502/events.h) -> Event.
// Every record is checked for type and size before it is read; anything
// malformed is rejected with a reason, never read past its end.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "n502/events.h"

namespace n502 {

struct Addr {
    uint16_t family = 0; // AF_INET, AF_INET6, AF_UNIX, 0 = unknown
    uint16_t port = 0;
    uint32_t netns = 0;  // network namespace inode number (0: unknown); not part of str()
    std::array<uint8_t, 16> ip{};
    std::string path; // unix

    // "127.0.0.1:8080", "[::1]:8080", "unix:/run/app.sock"; "" when unknown.
    std::string str() const;
    // Would str() be the same? (netns aside), without making the strings.
    bool same_place(const Addr &o) const;
    bool known() const { return family != 0; }
    // 127.0.0.0/8, ::1, ::ffff:127.x: an address that means something only inside its network namespace.
    bool loopback() const;
    static Addr from_raw(const n502_addr &a);
    static Addr unix_path(std::string p);
    static Addr ipv4(uint32_t host_order, uint16_t port);
    // The inverse of str(): "127.0.0.1:8080", "[::1]:8080" (port required),
    // "unix:/run/app.sock"; nullopt for anything else (a host name).
    static std::optional<Addr> parse(std::string_view s);
};

// Addresses as keys of the state's indexes: equal when they are the same
// place (same_place: netns aside), hashed by what same_place compares.
struct AddrPlaceHash {
    size_t operator()(const Addr &a) const;
};
struct AddrPlaceEq {
    bool operator()(const Addr &a, const Addr &b) const { return a.same_place(b); }
};

// One kernel event, flattened. Only the fields of its type are meaningful.
struct Event {
    n502_event_type type{};
    uint64_t ts = 0;   // CLOCK_BOOTTIME ns
    uint32_t tgid = 0; // current task when the event fired
    uint32_t tid = 0;
    std::string comm;
    uint32_t cpu = 0;

    uint64_t sk = 0;
    uint64_t peer_sk = 0;  // CONNECT (unix): server-side socket; ACCEPT: Nginx's socket
    int fd = -1;
    int ret = 0;           // CONNECT: connect() return
    Addr src, dst;         // STATE/RESET: local, remote; CONNECT: dst; ACCEPT: src=local, dst=nginx; LISTEN: src
    int oldstate = 0, newstate = 0, sk_err = 0;
    uint16_t sock_role = 0; // enum n502_sock_role, without N502_SOCK_UNTRACKED (below)
    uint32_t owner = 0;    // socket owner recorded at connect/accept/listen
    bool untracked = false; // STATE/RESET/RETRANS: from the anomaly-only path (N502_SOCK_UNTRACKED)
    // STATE/RESET of the anomaly-only path: a socket of Nginx's uid in a
    // cgroup no worker was seen in (N502_SOCK_OTHER_CGROUP), which user space
    // did not claim for Nginx: another service's. Never applied.
    bool other_cgroup = false;
    uint32_t dir = 0;      // RESET
    int tcp_state = 0;     // RESET
    uint32_t target = 0;   // SIGNAL: target tgid; FORK: child; OOM: victim
    uint32_t target_tid = 0;
    int sig = 0, code = 0, result = 0;
    std::string target_comm;
    int exit_code = 0;
    uint32_t role = 0;
    int backlog = 0;
    uint64_t bytes_received = 0; // STATE
    uint64_t bytes_acked = 0;    // STATE
    uint32_t retransmits = 0;    // STATE: the socket's timer-driven resends so far
    uint32_t segs_out = 0;       // STATE: segments the socket has sent
    uint64_t ino = 0;            // LOG: inode of the file written; CLOSE: the socket's inode
    bool adopted = false;        // CLOSE: a unix connection older than us, first seen now
    uint32_t dev = 0;            // LOG: its device (kernel encoding)
    std::string data;            // LOG: the bytes written (at most N502_LOG_MAX)
    uint32_t cut = 0;            // LOG: bytes of the write not captured
    uint64_t cgroup_id = 0;      // ACCEPT/LISTEN: the process's cgroup v2 id
    uint32_t ns_tgid = 0;        // ACCEPT/LISTEN: its pid in its own pid namespace
    uint32_t took = 0;           // ACCEPT: enum n502_took without the flag (how the owner became known)
    bool exiting = false;        // ACCEPT: the owner was exiting (N502_TOOK_EXITING)
    n502_story story{};          // CONN: the connection's story (up_comm also in target_comm, cleaned)
};

// Returns nullopt and sets *why for records that are too short, of an unknown
// type, or whose size field disagrees with their type.
std::optional<Event> decode(const void *data, size_t len, std::string *why = nullptr);

// A raw record the kernel side left for user space to place
// (N502_SOCK_OTHER_CGROUP, on STATE and RESET records): where its role field
// is, and its socket. nullopt for any other record.
struct UnplacedRecord {
    size_t role_at;
    uint64_t sk;
};
std::optional<UnplacedRecord> unplaced_record(const void *data, size_t len);
// Placed as Nginx's: the flag cleared in the record itself.
void place_record(void *data, const UnplacedRecord &r);

// The events an N502_EV_CONN stands for, in the order they happened: Nginx's
// end established, the upstream's end linked (with its process when known)
// and leaving ESTABLISHED, the upstream's FIN, and the transition that
// emitted the story (none when it was emitted early).
std::vector<Event> expand_story(const Event &conn);
// The same without allocating on the hot path: fills slots (reused from call
// to call, grown as needed) and order, the indexes of the slots in time
// order; returns how many.
constexpr size_t kStoryEventsMax = 5;
size_t expand_story(const Event &conn, std::vector<Event> &slots, size_t order[kStoryEventsMax]);

const char *tcp_state_name(int state);
const char *signal_name(int sig);
const char *event_type_name(n502_event_type t);

} // namespace n502
