// State: what the kernel events say about processes, sockets, connections
// and listeners. Fed in event order; bounded in memory (old finished records
// are dropped first and counted).
#pragma once
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "container.hpp"
#include "decoder.hpp"
#include "verdict.hpp"

namespace n502 {

struct SignalRec {
    uint64_t ts = 0;
    int sig = 0;
    int code = 0;
    int result = 0;
    uint32_t sender = 0;
    std::string sender_comm;
};

struct ExitRec {
    uint64_t ts = 0;
    int status = 0; // wait status
    bool signaled() const { return (status & 0x7f) != 0; }
    int signal() const { return status & 0x7f; }
    int code() const { return (status >> 8) & 0xff; }
    bool core() const { return (status & 0x80) != 0; }
};

struct Proc {
    uint32_t pid = 0;
    std::string comm;
    uint32_t role = 0;
    uint32_t parent = 0;
    uint64_t first_seen = 0;
    std::vector<SignalRec> signals; // last few, oldest first
    std::optional<uint64_t> oom_ts;
    std::optional<ExitRec> exit;
    std::string cgroup;       // memory cgroup, looked up once from /proc when first seen
    uint64_t memory_limit = 0; // bytes, 0 when unlimited or unknown
    bool facts_read = false;
    // Where it lives, read from /proc with the facts above.
    std::optional<uint32_t> ns_pid; // pid inside its own pid namespace
    std::string cgroup2;            // cgroup v2 path
    uint64_t cgroup_id = 0;         // from the kernel at accept/listen: the path when /proc is gone
    std::optional<ContainerInfo> container;
};

// Conn::took (and an Accept record's a) for an owner that user space found
// holding the upstream's end at the verdict (no hook named it): not a kernel
// enum n502_took value.
constexpr int kTookHeld = -2;

// One Nginx -> upstream connection, from Nginx's socket.
// One piece of kernel evidence on a connection, kept compact (rendered into
// an Evidence with its sentence only when a verdict needs it).
enum class EvKind : uint8_t {
    ConnectOk, ConnectInProgress, ConnectFailed, // a = errno
    Established, FinReceived, ConnectError,      // a = sk_err
    NginxClosedFirst,                            // n = bytes received
    GaveUp, NginxState,                          // a = from, b = to, c = sk_err
    UpFin, UpAbort, UpState,                     // a = from, b = to
    RstReceived, RstSent,                        // a = TCP state (Nginx side)
    UpRstSent, UpRstReceived,
    SynRetransmit,                               // a = count
    Accept, NginxClose, UpClose,
    MetItself,                                   // SYN_SENT -> SYN_RECV (a simultaneous open)
};

struct EvRec {
    uint64_t ts = 0;
    uint64_t n = 0;
    uint32_t pid = 0;
    int16_t a = 0, b = 0;
    int16_t c = 0;
    EvKind kind{};
};

struct Conn {
    uint64_t id = 0;
    uint64_t sk = 0;
    uint32_t nginx_pid = 0;
    std::string nginx_comm;
    Addr dst, src;
    bool indexed = false; // in live_by_dst_/fin_by_dst_ under dst (a known address, not claimed: see State::claim)
    uint64_t t_first = 0, t_last = 0;
    bool have_connect = false;
    int connect_ret = 0;
    int error = 0;                       // errno that failed the connection (from connect() or sk_err)
    std::optional<uint64_t> t_established, t_refused, t_rst_recv, t_fin_recv, t_closed, t_nginx_close;
    uint64_t up_sk = 0;
    uint32_t up_pid = 0;
    std::string up_comm;
    std::optional<uint64_t> t_accept, t_up_close, t_up_fin, t_up_abort, t_up_rst_sent;
    uint32_t took = 0;                   // enum n502_took: how up_pid became known
    uint32_t up_close_pid = 0;
    int tcp_state = 0;                   // Nginx's side, last seen
    uint64_t bytes_received = 0, bytes_acked = 0; // Nginx's side, at its last state change
    std::optional<uint64_t> bytes_at_end;         // bytes Nginx had received when its side ended (FIN/RST/close)
    std::optional<uint64_t> t_nginx_fin; // Nginx closed first (ESTABLISHED -> FIN_WAIT1 on its side)
    // Connected to itself: its SYN came back to it (a simultaneous open with
    // the same address at both ends). A failure: Nginx reads its own request.
    std::optional<uint64_t> t_met_itself;
    int syn_retransmits = 0;
    // Bounded: past kTimelineMax records the oldest after the first
    // kTimelineHead are let go (counted in omitted), so the newest, which a
    // verdict is about, always stay.
    static constexpr size_t kTimelineMax = 32, kTimelineHead = 8;
    std::vector<EvRec> timeline;
    uint32_t omitted = 0;
    bool claimed = false;
    bool finished = false;
    // Seen only from its failure on (the kernel side's anomaly-only path:
    // adaptive tracking, or a connection older than its last switch to full
    // tracking): no story before it, nginx_pid 0 until a log line claims it
    // when the event did not run in Nginx's context, t_established the first
    // sight of an established connection.
    bool untracked = false;
    // Untracked and seen only from the upstream's end, its holder aborting
    // or closing it unanswered without dying (Nginx's end showed no failure
    // of its own): it may be another client's connection to that upstream,
    // so it is neither failed nor any worker's. A holder that died with it
    // failed whoever it served.
    bool maybe_foreign = false;

    // The timeline as evidence records with their sentences.
    std::vector<Evidence> evidence() const;

    bool failed() const
    {
        return t_refused || t_rst_recv || t_fin_recv || t_closed || t_met_itself || (have_connect && error) ||
               (dst.family == 1 /* AF_UNIX */ && t_up_close) ||
               (untracked && (t_up_fin || t_up_abort) && !maybe_foreign);
    }
    // When Nginx's side saw the failure (the earliest sign), or 0.
    uint64_t failure_ts() const;
    // Both ends one address: a TCP connection to itself.
    bool to_itself() const { return src.port != 0 && src.same_place(dst); }
};

struct Listener {
    Addr addr;
    uint64_t sk = 0;
    uint32_t pid = 0;
    std::string comm;
    int backlog = 0;
    uint64_t t_listen = 0;              // 0: was listening before n502trace started
    std::optional<uint64_t> t_unlisten;
    uint32_t unlisten_pid = 0;
    std::string unlisten_comm;
};

struct StateLimits {
    size_t max_finished_conns = 8192;
    size_t max_dead_procs = 4096;
    size_t max_listeners_per_addr = 4;
    uint64_t window_ns = 300'000'000'000ULL; // evidence kept this long (--window); 0: only the count bounds
};

struct StateStats {
    uint64_t events = 0;
    uint64_t conns = 0;
    uint64_t conns_dropped = 0;     // over the count bound, oldest first
    uint64_t procs_dropped = 0;
    uint64_t conns_expired = 0;     // older than the window
    uint64_t procs_expired = 0;
    uint64_t listeners_expired = 0;
};

class State {
public:
    explicit State(StateLimits limits = {}) : limits_(limits) {}

    void apply(const Event &e);
    // Forgets what ended before now - window: finished connections, dead
    // processes, listeners that stopped (counted in stats()).
    void expire(uint64_t now);
    // What is held now (for the summary).
    size_t conns_held() const { return finished_.size() + live_.size(); }
    size_t procs_held() const { return procs_.size(); }

    // Facts learned outside the event stream (start-up scans).
    void add_process(uint32_t pid, uint32_t role, std::string comm, uint32_t parent = 0);
    void add_listener(const Addr &a, uint32_t pid, std::string comm, uint64_t sk = 0);
    // A connection that was open before we started (a keep-alive pool): it
    // is a live connection from now on, bound to its sockets when the kernel
    // adopts them (their first state change or reset).
    // inode, up_inode: the sockets' inodes; unix sockets are adopted by them
    // (at their close()), TCP ones by 4-tuple (at a state change or reset).
    void add_preexisting(uint32_t nginx_pid, const Addr &local, const Addr &remote, uint32_t up_pid,
                         std::string up_comm, const Addr &up_local, const Addr &up_remote, uint64_t inode = 0,
                         uint64_t up_inode = 0);

    Proc *proc(uint32_t pid);
    const Proc *proc(uint32_t pid) const;
    // Unclaimed connections (and claimed ones to themselves, see claim) of an
    // Nginx worker to an upstream whose last
    // activity is not older than `oldest` (boot ns): every live one, then the
    // finished ones in the order they finished, oldest first (at most
    // `max_finished`). Finished ones older than `oldest` leave the index.
    std::vector<Conn *> conns_to(uint32_t nginx_pid, const Addr &upstream, uint64_t oldest = 0,
                                 size_t max_finished = 4096);
    // The same, visited in place; `fn(Conn *)` returns true to stop.
    // Whether a line of worker nginx_pid may be about c: its own, or one
    // whose owner the anomaly-only path could not tell (any worker's), but
    // not one that may be another client's (Conn::maybe_foreign).
    static bool owned_by(const Conn *c, uint32_t nginx_pid)
    {
        return c->nginx_pid == nginx_pid || (c->untracked && c->nginx_pid == 0 && !c->maybe_foreign);
    }
    template <typename F>
    void visit_conns(uint32_t nginx_pid, const Addr &upstream, uint64_t oldest, F &&fn)
    {
        if (auto it = live_by_dst_.find(upstream); it != live_by_dst_.end())
            for (Conn *c : it->second)
                if (owned_by(c, nginx_pid) && c->t_last >= oldest && fn(c))
                    return;
        if (auto it = fin_by_dst_.find(upstream); it != fin_by_dst_.end()) {
            auto &dq = it->second;
            while (!dq.empty() && dq.front()->t_last < oldest) {
                dq.front()->indexed = false;
                dq.pop_front(); // out of every future line's window
            }
            if (dq.empty()) {
                // Nothing else would erase it (its connections are no
                // longer indexed): the same bound as unindex() keeps.
                if (fin_by_dst_.size() > kEmptyKeysKept)
                    fin_by_dst_.erase(it);
                return;
            }
            for (Conn *c : dq)
                if (owned_by(c, nginx_pid) && fn(c))
                    return;
        }
    }
    // Every upstream address some connection in the index went to.
    std::vector<Addr> destinations() const;
    // A claimed connection explains one line only: it leaves the index.
    // Except one connected to itself (Conn::t_met_itself): Nginx goes on
    // reading from it until its read timeout, whose line is about it too
    // (and takes it out of the index).
    void claim(Conn *c);
    // pid (comm) was found holding the upstream's end of c at ts, which no
    // event named (an owner that neither closed nor left it): c's upstream.
    void holder_found(Conn &c, uint32_t pid, std::string comm, uint64_t ts);
    // Listeners that ever listened on addr (newest last). Matches 0.0.0.0/:: wildcards too.
    std::vector<const Listener *> listeners_on(const Addr &a) const;
    // A listener on a (as listeners_on matches it) was let go for age.
    bool listener_aged_out(const Addr &a) const;
    std::vector<uint32_t> nginx_pids() const;
    // How many Nginx forks (new workers, a new master) have been applied:
    // tells a caller when nginx_pids() is worth looking at again.
    uint64_t nginx_forks() const { return nginx_forks_; }
    // How many Nginx processes have exited (a master among them: a restart).
    uint64_t nginx_exits() const { return nginx_exits_; }
    // The latest exit by a signal of any process seen (boot ns), or 0.
    uint64_t last_signaled_exit() const { return last_signaled_exit_; }
    // How many children of parent exited in (after, until].
    size_t children_exited(uint32_t parent, uint64_t after, uint64_t until) const;
    const StateLimits &limits() const { return limits_; }
    // Every connection still remembered, live and finished.
    std::vector<Conn *> recent_conns();
    // Nginx's live sockets toward an upstream, by TCP state name.
    std::map<std::string, int> nginx_sockets_to(const Addr &upstream) const;
    const StateStats &stats() const { return stats_; }
    // Upstream addresses in the connection indexes (live + finished): bounded.
    size_t index_keys() const { return live_by_dst_.size() + fin_by_dst_.size(); }

private:
    void apply_event(const Event &e);
    // An Nginx TCP connection's story (N502_EV_CONN): applied as the events
    // it stands for, in the order they happened.
    void replay_story(const Event &e);

    Conn &conn_for(uint64_t sk, uint64_t ts, uint32_t owner);
    Conn *live_conn(uint64_t sk);
    Conn *conn_by_up_sk(uint64_t up_sk);
    // The connection of an anomaly-only event on Nginx's end (a new one
    // unless an earlier anomaly-only event of this socket began it).
    Conn &untracked_conn(const Event &e, bool established);
    // An exiting process's end of a connection whose Nginx end is unknown.
    void untracked_holder(const Event &e);
    // A recent unclaimed anomaly-only connection with this 4-tuple (Nginx's view).
    Conn *untracked_by_tuple(const Addr &src, const Addr &dst);
    void finish(uint64_t sk);
    Proc &proc_or_new(uint32_t pid, uint64_t ts);
    void rec(Conn &c, EvKind kind, uint64_t ts, uint32_t pid, int a = 0, int b = 0, int cc = 0, uint64_t n = 0);
    void set_dst(Conn &c, const Addr &dst);
    void link_up_sk(Conn *c, uint64_t up_sk); // c's upstream end, indexed
    void remember_listener(Listener l);
    void unlisten(const Event &e); // a listening socket closed
    void unindex(Conn *c, bool oldest = false); // oldest: search from the front
    void adopt(const Event &e);                 // binds a preexisting connection's socket
    void trim();
    void drop_oldest_finished(); // forgets finished_.front() and its index entries

    StateLimits limits_;
    StateStats stats_;
    uint64_t nginx_forks_ = 0;
    uint64_t nginx_exits_ = 0;
    uint64_t last_signaled_exit_ = 0;
    uint64_t next_id_ = 1;
    std::unordered_map<uint64_t, std::unique_ptr<Conn>> live_;   // Nginx sk -> connection
    std::deque<std::unique_ptr<Conn>> finished_;                 // oldest first
    std::vector<std::unique_ptr<Conn>> spare_;                   // forgotten ones, reused by conn_for()
    static constexpr size_t kSpareConns = 64;
    static constexpr size_t kTimelineStart = 8; // room a new connection's timeline starts with
    std::unordered_map<uint64_t, Conn *> by_up_sk_;              // upstream's sk -> connection
    // Keyed by address, not by its text: no string is made per connection.
    template <typename V> using ByAddr = std::unordered_map<Addr, V, AddrPlaceHash, AddrPlaceEq>;
    ByAddr<std::vector<Conn *>> live_by_dst_; // upstream address -> live connections
    ByAddr<std::deque<Conn *>> fin_by_dst_;   // ... -> finished ones, in finish order
    // An upstream's entry outlives its last connection while there are few
    // upstreams: one connection at a time to an upstream would otherwise
    // make and free its entry (and a deque's blocks) every time.
    static constexpr size_t kEmptyKeysKept = 256;
    std::unordered_map<uint32_t, Proc> procs_;
    std::deque<uint32_t> dead_order_;
    ByAddr<std::vector<Listener>> listeners_;                    // address -> history
    std::unordered_map<uint64_t, Addr> listener_sk_;             // listener sk -> its address
    std::deque<Addr> aged_out_;                                  // addresses whose listeners aged out (bounded)
    std::vector<Event> story_slots_; // replay_story()'s scratch, reused from story to story
    std::unordered_map<std::string, uint64_t> pre_nginx_;        // "local>remote#ns" -> placeholder sk
    std::unordered_map<std::string, uint64_t> pre_up_;           // the upstream's view -> Nginx's sk (placeholder until adopted)
};

} // namespace n502
