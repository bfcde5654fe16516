// Correlator: one Nginx error-log line <-> the kernel's story of the
// connection it is about, then the cause rules.
//
// Matching rule: the line names the worker (PID#TID) and the upstream peer.
// Candidates are that worker's connections to that peer which no earlier
// line has claimed and whose last kernel activity is no older than the line's
// timestamp minus `max_skew` (Nginx stamps lines with its cached time, which
// lags by at most one event-loop iteration, and has 1 s resolution). Among
// them, a connection whose failure matches the message wins (a refused or
// failed connect for connect() lines; a RST/FIN/close for the others), the
// newest first. Timeouts while connecting match a connection that never got
// established, timeouts while reading one that did.
//
// Retries: Nginx logs one line per failed attempt of a request. Lines of the
// same worker and client connection (*N) and request within 5 s are one
// request: their verdicts share `request_key` and count `attempt` from 1.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "accesslog.hpp"
#include "logline.hpp"
#include "rules.hpp"
#include "state.hpp"
#include "timebase.hpp"
#include "verdict.hpp"

namespace n502 {

struct CorrelatorOptions {
    int64_t max_skew_ns = 5'000'000'000LL;
    // The wall clock verdicts are stamped with (null: real_now_ns()); the
    // engine's, so that a replay stamps them as the live run did.
    std::function<int64_t()> now_real;
    // Called for an upstream process found through the host (Host::holder)
    // before the rules run: the engine reads where it lives.
    std::function<void(Proc &)> on_holder;
    // Retries are grouped per worker and client connection; a sweep of the
    // stale ones leaves at most this many (the map holds at most twice it):
    // more requests failing within 5 s over as many client connections, and
    // the older half is let go (a retry of one of those counts from 1 again).
    size_t attempts_max = 8192;
    // Will a verdict of this cause for this upstream be shown? Asked once per
    // verdict, as soon as its cause is known (the engine's output rate limit):
    // a verdict that will not be shown is not explained (Verdict::rendered),
    // though what decides its cause is still looked up. Null: every verdict
    // is.
    std::function<bool(const std::string &cause, const std::string &upstream)> admit;
    // RuleInput::recheck_listener (off replaying a recording made before it).
    bool recheck_listener = true;
    // An error-log line's request counts for covered() from when the caller
    // takes the line (taken()), not once its verdict is made: its access line
    // is covered while the verdict still waits for evidence. The engine's
    // way (off replaying a recording made before it, kRecLookups below 5);
    // off, as for a caller that never calls taken(): at the verdict.
    bool remember_when_taken = false;
};

// Requests that got an error-log verdict, for Correlator::covered(): a hash
// of the client and request line (a collision could only take an access line
// for covered) -> the newest error-log second it was seen at and the 16
// before it (bit i: newest - 1 - i).
//
// Two generations of open-addressed slots, 16 bytes each: lines go to the
// newer; once it holds kGenLines lines or a line comes more than kGenSec
// after its first, the older is dropped whole (its memory returned) and the
// newer takes its place. A line is kept until at least kGenLines more lines,
// or one stamped more than kGenSec later, have come, and while at most
// 2 x kGenLines lines follow it: a storm of distinct requests holds at most
// 2 x 2^17 slots (4 MiB; 5 while one grows), none allocated one by one.
class RecentRequests {
public:
    static constexpr size_t kGenLines = 1 << 16;
    static constexpr int64_t kGenSec = 120;

    void add(uint64_t hash, int64_t sec);
    // Whether the request was seen at a second within `within` of sec.
    bool seen_near(uint64_t hash, int64_t sec, int64_t within) const;
    // Requests held (a request seen in both generations counts twice).
    size_t held() const { return gen_[0].used + gen_[1].used; }
    // Slots allocated (a bound on memory: 16 bytes each).
    size_t slots() const { return gen_[0].slots.size() + gen_[1].slots.size(); }

private:
    struct Slot {
        uint64_t hash = 0; // 0: empty (a hash of 0 is taken as 1)
        int32_t newest = 0; // seconds from the generation's base
        uint16_t before = 0;
    };
    struct Gen {
        std::vector<Slot> slots; // a power of two, at most half used
        size_t used = 0, lines = 0;
        int64_t base = 0; // the log second of its first line
    };
    Gen gen_[2]; // gen_[cur_] is the newer
    int cur_ = 0;
    // Where hash is in g, or the empty slot it would take.
    static size_t probe(const Gen &g, uint64_t hash);
    static void grow(Gen &g);
};

class Correlator {
public:
    Correlator(State &state, Timebase tb, CorrelatorOptions opt = {}, Host *host = nullptr)
        : state_(state), tb_(tb), opt_(opt), host_(host), attempts_sweep_at_(std::min(kAttemptsSweep, opt_.attempts_max))
    {
    }

    // The verdict for the line, or nullopt when no connection matches yet and
    // `final` is false (the caller retries after draining more events).
    std::optional<Verdict> explain(const LogLine &line, bool final);

    // Access-log lines with a 502/504 status: covered() is true when an
    // error-log verdict already explained that request (same client and
    // request line, within 3 s). explain_access() explains one that has no
    // error-log line, from the failed connection closest in time: a weaker
    // match, so its confidence is at most medium.
    bool covered(const AccessLine &a) const;
    // An error-log line taken to be explained (CorrelatorOptions::remember_when_taken).
    void taken(const LogLine &line)
    {
        if (opt_.remember_when_taken)
            remember_request(line);
    }
    Verdict explain_access(const AccessLine &a);

    void set_timebase(Timebase tb) { tb_ = tb; }
    const Timebase &timebase() const { return tb_; }

private:
    Conn *find_conn(const LogLine &line);
    // When the upstream process died of a signal holding c (its exit before
    // any end of the connection by either side, after it took it), else 0: a
    // failure no healthy connection shows.
    uint64_t died_holding(const Conn &c) const;
    // c shows a failure no healthy connection shows: a socket error, a RST
    // received, a connection to itself, its upstream dying with it, or the
    // upstream's FIN before one byte of an answer.
    bool broken(const Conn &c) const;
    Verdict decide(const LogLine &line, Conn *conn);
    // Names the process holding conn's upstream end when no event did
    // (the verdict's wall-clock time stamps that evidence).
    void find_holder(const LogLine &line, Conn &conn, int64_t now_real_ns);
    void group_attempts(const LogLine &line, Verdict &v);
    void sweep_attempts(int64_t now_real_ns);
    static constexpr int64_t kRetryWindowNs = 5'000'000'000LL; // retries of one request: within 5 s

    State &state_;
    Timebase tb_;
    CorrelatorOptions opt_;
    Host *host_;
    // find_conn's memory: the upstream the last line named, and it as an address.
    std::string peer_text_;
    std::optional<Addr> peer_addr_;
    // Failures per worker (FailureTally): at most kTalliesPerWorker each;
    // workers without one in the last minute are let go.
    std::unordered_map<uint32_t, std::vector<FailureTally>> tallies_;
    static constexpr size_t kTalliesPerWorker = 64;
    void tally(const Verdict &v, const Conn *conn);
    // Requests that got an error-log verdict, for covered().
    RecentRequests recent_;
    void remember_request(const LogLine &line);
    // An access line is covered by an error-log line of its request within
    // kCoverSec of it.
    static constexpr int64_t kCoverSec = 3;
    // Error-log lines cut inside a long request line keep only its beginning:
    // they are remembered under that prefix, and the prefix lengths seen per
    // client (a hash of it; the last 8, each with the newest second it was
    // seen at) are what covered() tries on an access line that matches no
    // whole request. Beyond kCutClients clients, those seen least recently go.
    struct CutLength {
        size_t len = 0;
        int64_t sec = 0;
    };
    struct CutLengths {
        std::array<CutLength, 8> at{};
        size_t n = 0;
        int64_t newest = 0;
    };
    std::unordered_map<uint64_t, CutLengths> cut_lengths_;
    static constexpr size_t kCutClients = 8192;
    void remember_cut(std::string_view client, size_t len, int64_t sec);
    struct Attempts {
        std::string request;
        int64_t first_sec = 0; // of the request's first line: with the key's pid and conn, its request_key
        std::vector<std::string> peers;
        int count = 0;
        int64_t last_real_ns = 0;
    };
    struct AttemptsKey {
        uint32_t pid;
        uint64_t conn;
        bool operator==(const AttemptsKey &o) const { return pid == o.pid && conn == o.conn; }
    };
    struct AttemptsHash {
        size_t operator()(const AttemptsKey &k) const { return std::hash<uint64_t>()(k.conn * 0x9e3779b97f4a7c15ULL ^ k.pid); }
    };
    std::unordered_map<AttemptsKey, Attempts, AttemptsHash> attempts_; // by worker and client connection
    // Stale entries are swept when the map outgrows this (amortised: it
    // doubles past what a sweep leaves).
    static constexpr size_t kAttemptsSweep = 4096;
    size_t attempts_sweep_at_;

public:
    size_t attempts_held() const { return attempts_.size(); }
};

} // namespace n502
