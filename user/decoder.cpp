#include "decoder.hpp"

#include <algorithm>
#include <arpa/inet.h>
#include <cstddef>
#include <cstring>
#include <functional>
#include <new>
#include <type_traits>
#include <fmt/format.h>
#include <sys/socket.h>

namespace n502 {

// Decimal digits of v at *p, advancing it.
static void put_uint(char *&p, unsigned v)
{
    char tmp[10];
    int n = 0;
    do {
        tmp[n++] = static_cast<char>('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
}

// Formatted by hand: the state keys its indexes by this string, so it is
// made for every connection (inet_ntop + fmt cost ten times as much).
std::string Addr::str() const
{
    if (family == AF_INET) {
        char buf[sizeof("255.255.255.255:65535")];
        char *p = buf;
        for (int i = 0; i < 4; i++) {
            put_uint(p, ip[i]);
            *p++ = i < 3 ? '.' : ':';
        }
        put_uint(p, port);
        return std::string(buf, p);
    }
    if (family == AF_INET6) {
        char buf[INET6_ADDRSTRLEN + sizeof("[]:65535")] = "[";
        inet_ntop(AF_INET6, ip.data(), buf + 1, INET6_ADDRSTRLEN);
        char *p = buf + std::strlen(buf);
        *p++ = ']';
        *p++ = ':';
        put_uint(p, port);
        return std::string(buf, p);
    }
    if (family == AF_UNIX)
        return "unix:" + path;
    return "";
}

bool Addr::same_place(const Addr &o) const
{
    if (family != o.family)
        return false;
    if (family == AF_UNIX)
        return path == o.path;
    if (family == AF_INET)
        return port == o.port && std::memcmp(ip.data(), o.ip.data(), 4) == 0;
    if (family == AF_INET6)
        return port == o.port && ip == o.ip;
    return true; // unknown: both print as ""
}

Addr Addr::from_raw(const n502_addr &a)
{
    Addr r;
    r.family = a.family;
    r.port = a.port;
    r.netns = a.netns;
    // Only the bytes of the family: the kernel fills 4 of the 16 for IPv4
    // and leaves the rest as the ring buffer had them.
    if (a.family == AF_INET)
        std::memcpy(r.ip.data(), a.addr, 4);
    else if (a.family == AF_INET6)
        std::memcpy(r.ip.data(), a.addr, 16);
    return r;
}

bool Addr::loopback() const
{
    if (family == AF_INET)
        return ip[0] == 127;
    if (family == AF_INET6) {
        static const uint8_t one[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        return std::memcmp(ip.data(), one, 16) == 0 || (std::memcmp(ip.data(), mapped, 12) == 0 && ip[12] == 127);
    }
    return false;
}

Addr Addr::unix_path(std::string p)
{
    Addr r;
    r.family = AF_UNIX;
    r.path = std::move(p);
    return r;
}

std::optional<Addr> Addr::parse(std::string_view s)
{
    if (s.rfind("unix:", 0) == 0) {
        if (s.size() == 5)
            return std::nullopt;
        return unix_path(std::string(s.substr(5)));
    }
    size_t colon = s.rfind(':');
    if (colon == std::string_view::npos || colon + 1 == s.size() || s.size() - colon - 1 > 5)
        return std::nullopt;
    unsigned port = 0;
    for (char ch : s.substr(colon + 1)) {
        if (ch < '0' || ch > '9')
            return std::nullopt;
        port = port * 10 + static_cast<unsigned>(ch - '0');
    }
    if (port == 0 || port > 65535)
        return std::nullopt;
    std::string_view host = s.substr(0, colon);
    bool bracketed = host.size() >= 2 && host.front() == '[' && host.back() == ']';
    if (bracketed)
        host = host.substr(1, host.size() - 2);
    char buf[INET6_ADDRSTRLEN];
    if (host.empty() || host.size() >= sizeof(buf))
        return std::nullopt;
    std::memcpy(buf, host.data(), host.size());
    buf[host.size()] = 0;
    Addr r;
    r.port = static_cast<uint16_t>(port);
    if (!bracketed && inet_pton(AF_INET, buf, r.ip.data()) == 1)
        r.family = AF_INET;
    else if (bracketed && inet_pton(AF_INET6, buf, r.ip.data()) == 1)
        r.family = AF_INET6;
    else
        return std::nullopt;
    return r;
}

size_t AddrPlaceHash::operator()(const Addr &a) const
{
    if (a.family == AF_UNIX)
        return std::hash<std::string>()(a.path) ^ AF_UNIX;
    if (a.family != AF_INET && a.family != AF_INET6)
        return a.family; // same_place: every address of an unknown family is one place
    size_t n = a.family == AF_INET ? 4 : 16;
    uint64_t h = (uint64_t{a.family} << 16 | a.port) * 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ a.ip[i]) * 0x100000001b3ULL;
    return static_cast<size_t>(h ^ (h >> 29));
}

Addr Addr::ipv4(uint32_t host_order, uint16_t port)
{
    Addr r;
    r.family = AF_INET;
    r.port = port;
    uint32_t n = htonl(host_order);
    std::memcpy(r.ip.data(), &n, 4);
    return r;
}

static std::string cstr(const char *s, size_t max)
{
    size_t n = strnlen(s, max);
    std::string out(s, n);
    for (char &c : out)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
            c = '?';
    return out;
}

template <typename T> static bool fits(size_t len, const n502_hdr &h, std::string *why)
{
    if (len < sizeof(T) || h.size != sizeof(T)) {
        if (why)
            *why = fmt::format("event type {} has size {} (record {} bytes), expected {}", h.type, h.size, len,
                               sizeof(T));
        return false;
    }
    return true;
}

namespace {

// Every ring record passes here: only the role is read, then the socket.
template <typename T> std::optional<UnplacedRecord> unplaced_as(const void *data, size_t len)
{
    if (len < sizeof(T))
        return std::nullopt;
    const auto *p = static_cast<const unsigned char *>(data);
    uint16_t role;
    std::memcpy(&role, p + offsetof(T, sock_role), sizeof(role));
    if (!(role & N502_SOCK_OTHER_CGROUP))
        return std::nullopt;
    uint64_t sk;
    std::memcpy(&sk, p + offsetof(T, sk), sizeof(sk));
    return UnplacedRecord{offsetof(T, sock_role), sk};
}

} // namespace

std::optional<UnplacedRecord> unplaced_record(const void *data, size_t len)
{
    n502_hdr h;
    if (len < sizeof(h))
        return std::nullopt;
    std::memcpy(&h, data, sizeof(h));
    if (h.type == N502_EV_STATE)
        return unplaced_as<n502_state_event>(data, len);
    if (h.type == N502_EV_RESET)
        return unplaced_as<n502_reset_event>(data, len);
    return std::nullopt;
}

void place_record(void *data, const UnplacedRecord &r)
{
    auto *role = static_cast<unsigned char *>(data) + r.role_at;
    uint16_t v;
    std::memcpy(&v, role, sizeof(v));
    v = static_cast<uint16_t>(v & ~N502_SOCK_OTHER_CGROUP);
    std::memcpy(role, &v, sizeof(v));
}

// Fills e (default-constructed) from a record at least a header long;
// false, with *why, when it is not one.
// A socket role as events carry it: the anomaly-only path's flag apart.
static void set_role(Event &e, uint16_t role)
{
    e.sock_role = role & ~(N502_SOCK_UNTRACKED | N502_SOCK_OTHER_CGROUP);
    e.untracked = (role & N502_SOCK_UNTRACKED) != 0;
    e.other_cgroup = (role & N502_SOCK_OTHER_CGROUP) != 0;
}

static bool fill(const void *data, size_t len, Event &e, std::string *why)
{
    n502_hdr h;
    std::memcpy(&h, data, sizeof(h));
    e.type = static_cast<n502_event_type>(h.type);
    e.ts = h.ts_ns;
    e.tgid = h.tgid;
    e.tid = h.tid;
    e.cpu = h.cpu;
    e.comm = cstr(h.comm, sizeof(h.comm));

    switch (h.type) {
    case N502_EV_CONNECT: {
        if (!fits<n502_connect_event>(len, h, why))
            return false;
        n502_connect_event r;
        std::memcpy(&r, data, sizeof(r));
        e.sk = r.sk;
        e.peer_sk = r.peer_sk;
        e.fd = r.fd;
        e.ret = r.ret;
        e.dst = Addr::from_raw(r.dst);
        if (e.dst.family == AF_UNIX)
            e.dst.path = cstr(r.path, sizeof(r.path));
        return true;
    }
    case N502_EV_ACCEPT: {
        if (!fits<n502_accept_event>(len, h, why))
            return false;
        n502_accept_event r;
        std::memcpy(&r, data, sizeof(r));
        e.sk = r.sk;
        e.peer_sk = r.nginx_sk;
        e.owner = r.nginx_tgid;
        e.fd = r.fd;
        e.src = Addr::from_raw(r.local);
        e.dst = Addr::from_raw(r.peer);
        e.cgroup_id = r.cgroup_id;
        e.ns_tgid = r.ns_tgid;
        e.took = r.how & 0xff;
        e.exiting = (r.how & N502_TOOK_EXITING) != 0;
        if (e.took > N502_TOOK_UNKNOWN) {
            if (why)
                *why = fmt::format("accept record with an unknown 'how' {}", r.how);
            return false;
        }
        if (e.took == N502_TOOK_UNKNOWN) { // the task that ran the hook is not the owner
            e.tgid = 0;
            e.tid = 0;
            e.comm.clear();
        }
        return true;
    }
    case N502_EV_CLOSE: {
        if (!fits<n502_close_event>(len, h, why))
            return false;
        n502_close_event r;
        std::memcpy(&r, data, sizeof(r));
        e.sk = r.sk;
        e.fd = r.fd;
        e.sock_role = r.sock_role;
        e.src.family = r.family;
        e.owner = r.owner_tgid;
        e.ino = r.inode;
        e.adopted = r.adopted != 0;
        return true;
    }
    case N502_EV_STATE: {
        if (!fits<n502_state_event>(len, h, why))
            return false;
        n502_state_event r;
        std::memcpy(&r, data, sizeof(r));
        e.sk = r.sk;
        e.oldstate = r.oldstate;
        e.newstate = r.newstate;
        e.sk_err = r.sk_err;
        set_role(e, r.sock_role);
        e.owner = r.owner_tgid;
        e.src = Addr::from_raw(r.src);
        e.dst = Addr::from_raw(r.dst);
        e.bytes_received = r.bytes_received;
        e.bytes_acked = r.bytes_acked;
        e.retransmits = r.retransmits;
        e.segs_out = r.segs_out;
        return true;
    }
    case N502_EV_CONN: {
        if (!fits<n502_conn_event>(len, h, why))
            return false;
        n502_conn_event r;
        std::memcpy(&r, data, sizeof(r));
        e.sk = r.sk;
        e.oldstate = r.oldstate;
        e.newstate = r.newstate;
        e.sk_err = r.sk_err;
        e.sock_role = N502_SOCK_NGINX;
        e.owner = r.owner_tgid;
        e.src = Addr::from_raw(r.src);
        e.dst = Addr::from_raw(r.dst);
        e.bytes_received = r.bytes_received;
        e.bytes_acked = r.bytes_acked;
        e.retransmits = r.retransmits;
        e.segs_out = r.segs_out;
        e.story = r.story;
        e.target_comm = cstr(r.story.up_comm, sizeof(r.story.up_comm));
        auto state_ok = [](int s) { return s >= 0 && s <= 12; };
        if (!state_ok(r.oldstate) || !state_ok(r.newstate) || !state_ok(r.story.up_oldstate) ||
            !state_ok(r.story.up_newstate) || (r.story.up_how & 0xff) > N502_TOOK_UNKNOWN) {
            if (why)
                *why = fmt::format("connection record with out-of-range states ({} -> {}, upstream {} -> {}) or "
                                   "'how' {}",
                                   r.oldstate, r.newstate, int(r.story.up_oldstate), int(r.story.up_newstate), r.story.up_how);
            return false;
        }
        return true;
    }
    case N502_EV_RETRANS: {
        if (!fits<n502_retrans_event>(len, h, why))
            return false;
        n502_retrans_event r;
        std::memcpy(&r, data, sizeof(r));
        e.sk = r.sk;
        e.tcp_state = r.state;
        set_role(e, r.sock_role);
        e.owner = r.owner_tgid;
        e.src = Addr::from_raw(r.src);
        e.dst = Addr::from_raw(r.dst);
        return true;
    }
    case N502_EV_RESET: {
        if (!fits<n502_reset_event>(len, h, why))
            return false;
        n502_reset_event r;
        std::memcpy(&r, data, sizeof(r));
        e.sk = r.sk;
        e.dir = r.dir;
        e.tcp_state = r.state;
        set_role(e, r.sock_role);
        e.owner = r.owner_tgid;
        e.src = Addr::from_raw(r.src);
        e.dst = Addr::from_raw(r.dst);
        return true;
    }
    case N502_EV_SIGNAL: {
        if (!fits<n502_signal_event>(len, h, why))
            return false;
        n502_signal_event r;
        std::memcpy(&r, data, sizeof(r));
        e.target = r.target_tgid;
        e.target_tid = r.target_tid;
        e.sig = r.sig;
        e.code = r.code;
        e.result = r.result;
        e.role = r.target_role;
        e.target_comm = cstr(r.target_comm, sizeof(r.target_comm));
        return true;
    }
    case N502_EV_EXIT: {
        if (!fits<n502_exit_event>(len, h, why))
            return false;
        n502_exit_event r;
        std::memcpy(&r, data, sizeof(r));
        e.exit_code = r.exit_code;
        e.role = r.role;
        return true;
    }
    case N502_EV_FORK: {
        if (!fits<n502_fork_event>(len, h, why))
            return false;
        n502_fork_event r;
        std::memcpy(&r, data, sizeof(r));
        e.target = r.child_tgid;
        e.role = r.role;
        return true;
    }
    case N502_EV_OOM: {
        if (!fits<n502_oom_event>(len, h, why))
            return false;
        n502_oom_event r;
        std::memcpy(&r, data, sizeof(r));
        e.target = r.victim_pid;
        e.role = r.victim_role;
        return true;
    }
    case N502_EV_CGROUP: {
        if (!fits<n502_cgroup_event>(len, h, why))
            return false;
        n502_cgroup_event r;
        std::memcpy(&r, data, sizeof(r));
        e.cgroup_id = r.cgroup_id;
        return true;
    }
    case N502_EV_LOG: {
        // Variable size: the header, then len bytes of what Nginx wrote.
        constexpr size_t head = offsetof(n502_log_event, data);
        n502_log_event r;
        if (len < head || h.size < head || h.size > len || h.size > sizeof(r)) {
            if (why)
                *why = fmt::format("log event has size {} (record {} bytes), expected {}..{}", h.size, len, head,
                                   sizeof(r));
            return false;
        }
        std::memcpy(&r, data, h.size);
        if (r.len != h.size - head) {
            if (why)
                *why = fmt::format("log event says {} bytes of data but carries {}", r.len, h.size - head);
            return false;
        }
        e.fd = r.fd;
        e.ino = r.ino;
        e.dev = r.dev;
        e.data.assign(r.data, r.len);
        e.cut = r.cut;
        return true;
    }
    case N502_EV_LISTEN: {
        if (!fits<n502_listen_event>(len, h, why))
            return false;
        n502_listen_event r;
        std::memcpy(&r, data, sizeof(r));
        e.sk = r.sk;
        e.fd = r.fd;
        e.backlog = r.backlog;
        e.src = Addr::from_raw(r.local);
        if (e.src.family == AF_UNIX)
            e.src.path = cstr(r.path, sizeof(r.path));
        e.cgroup_id = r.cgroup_id;
        e.ns_tgid = r.ns_tgid;
        return true;
    }
    default:
        if (why)
            *why = fmt::format("unknown event type {}", h.type);
        return false;
    }
}

std::optional<Event> decode(const void *data, size_t len, std::string *why)
{
    // Built in place and returned as the one object (every return is out):
    // an Event is large, and moving it into the optional cost as much as
    // decoding it.
    std::optional<Event> out;
    if (len < sizeof(n502_hdr)) {
        if (why)
            *why = fmt::format("record of {} bytes is shorter than the event header", len);
        return out;
    }
    out.emplace();
    if (!fill(data, len, *out, why))
        out.reset();
    return out;
}

size_t expand_story(const Event &e, std::vector<Event> &evs, size_t order[kStoryEventsMax])
{
    const n502_story &st = e.story;
    size_t n = 0;
    // Slots are reused from call to call: each is reset before it is filled.
    // A throw between destroy and construct would leave a dead slot for the vector to destroy again.
    static_assert(std::is_nothrow_default_constructible_v<Event> && std::is_nothrow_destructible_v<Event>);
    auto next = [&]() -> Event & {
        if (evs.size() <= n)
            evs.resize(n + 1);
        Event &x = evs[n++];
        x.~Event(); // cheaper than assigning a fresh one
        new (&x) Event();
        return x;
    };
    auto nginx_state = [&](uint64_t ts, int oldstate, int newstate) -> Event & {
        Event &s = next();
        s.type = N502_EV_STATE;
        s.ts = ts;
        s.tgid = e.owner;
        s.sk = e.sk;
        s.sock_role = N502_SOCK_NGINX;
        s.owner = e.owner;
        s.oldstate = oldstate;
        s.newstate = newstate;
        s.src = e.src;
        s.dst = e.dst;
        return s;
    };
    if (st.est_ns)
        nginx_state(st.est_ns, 2 /* SYN_SENT */, 1 /* ESTABLISHED */);
    // Its owner's first connection was announced on its own (an accept
    // event before this one): not again.
    if (st.up_sk && !(st.up_tgid && (st.up_how & N502_TOOK_ANNOUNCED))) {
        // The upstream's end: linked to Nginx's, with its process if known.
        Event &a = next();
        a.type = N502_EV_ACCEPT;
        a.sk = st.up_sk;
        a.peer_sk = e.sk;
        a.owner = e.owner;
        a.src = e.dst; // the address it accepted on
        a.dst = e.src; // Nginx's
        a.took = st.up_tgid ? (st.up_how & 0xff) : static_cast<uint32_t>(N502_TOOK_UNKNOWN);
        a.exiting = st.up_tgid && (st.up_how & N502_TOOK_EXITING);
        a.ts = st.up_tgid ? st.up_ns : st.est_ns;
        if (st.up_tgid) {
            a.tgid = st.up_tgid;
            a.tid = st.up_tgid;
            a.comm = e.target_comm;
        }
    }
    if (st.up_sk && st.up_oldstate) {
        Event &u = next();
        u.type = N502_EV_STATE;
        u.ts = st.up_leave_ns;
        u.tgid = st.up_tgid;
        u.sk = st.up_sk;
        u.sock_role = N502_SOCK_UPSTREAM;
        u.owner = st.up_tgid;
        u.oldstate = st.up_oldstate;
        u.newstate = st.up_newstate;
        u.src = e.dst;
        u.dst = e.src;
    }
    if (st.fin_ns)
        nginx_state(st.fin_ns, 1 /* ESTABLISHED */, 8 /* CLOSE_WAIT */).bytes_received = st.fin_bytes;
    if (e.newstate) { // the transition that emitted it, as it happened
        Event &t = next();
        t = e;
        t.type = N502_EV_STATE;
        t.story = {};
        t.target_comm.clear();
    }
    // Time order, ties in the order above: an insertion sort of indexes
    // (at most kStoryEventsMax), the events themselves stay put.
    for (size_t i = 0; i < n; i++) {
        size_t j = i;
        for (; j > 0 && evs[order[j - 1]].ts > evs[i].ts; j--)
            order[j] = order[j - 1];
        order[j] = i;
    }
    return n;
}

std::vector<Event> expand_story(const Event &conn)
{
    std::vector<Event> slots;
    size_t order[kStoryEventsMax];
    size_t n = expand_story(conn, slots, order);
    std::vector<Event> out;
    out.reserve(n);
    for (size_t i = 0; i < n; i++)
        out.push_back(std::move(slots[order[i]]));
    return out;
}

const char *tcp_state_name(int s)
{
    static const char *names[] = {"?",         "ESTABLISHED", "SYN_SENT", "SYN_RECV",   "FIN_WAIT1",
                                  "FIN_WAIT2", "TIME_WAIT",   "CLOSE",    "CLOSE_WAIT", "LAST_ACK",
                                  "LISTEN",    "CLOSING",     "NEW_SYN_RECV"};
    if (s < 0 || s >= static_cast<int>(sizeof(names) / sizeof(names[0])))
        return "?";
    return names[s];
}

const char *signal_name(int sig)
{
    switch (sig) {
    case 1: return "SIGHUP";
    case 2: return "SIGINT";
    case 3: return "SIGQUIT";
    case 4: return "SIGILL";
    case 5: return "SIGTRAP";
    case 6: return "SIGABRT";
    case 7: return "SIGBUS";
    case 8: return "SIGFPE";
    case 9: return "SIGKILL";
    case 10: return "SIGUSR1";
    case 11: return "SIGSEGV";
    case 12: return "SIGUSR2";
    case 13: return "SIGPIPE";
    case 14: return "SIGALRM";
    case 15: return "SIGTERM";
    case 17: return "SIGCHLD";
    case 18: return "SIGCONT";
    case 19: return "SIGSTOP";
    case 20: return "SIGTSTP";
    case 24: return "SIGXCPU";
    case 25: return "SIGXFSZ";
    case 28: return "SIGWINCH";
    case 31: return "SIGSYS";
    default: return "SIG?";
    }
}

const char *event_type_name(n502_event_type t)
{
    switch (t) {
    case N502_EV_CONNECT: return "connect";
    case N502_EV_ACCEPT: return "accept";
    case N502_EV_CLOSE: return "close";
    case N502_EV_STATE: return "state";
    case N502_EV_RESET: return "reset";
    case N502_EV_SIGNAL: return "signal";
    case N502_EV_EXIT: return "exit";
    case N502_EV_FORK: return "fork";
    case N502_EV_OOM: return "oom";
    case N502_EV_LISTEN: return "listen";
    case N502_EV_RETRANS: return "retrans";
    case N502_EV_LOG: return "log";
    case N502_EV_CONN: return "conn";
    case N502_EV_CGROUP: return "cgroup";
    default: return "unknown";
    }
}

} // namespace n502
