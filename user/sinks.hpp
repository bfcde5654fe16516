// Sinks: render records for people (text) or programs (JSON Lines).
// Every record is written whole and flushed at once.
#pragma once
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "timebase.hpp"
#include "verdict.hpp"

namespace n502 {

// One Nginx followed (several with --container/--cgroup).
struct InstanceInfo {
    uint32_t master = 0;
    std::optional<uint32_t> master_ns_pid;
    std::vector<uint32_t> workers;
    std::vector<std::string> error_logs, access_logs;
    std::vector<std::string> captured_logs; // described, e.g. "pipe:[123] (fd 2)"
    std::string cgroup;
    std::optional<ContainerInfo> container;
    std::string config; // the main configuration file read ("" when none)
    struct Upstream {
        std::string address, group, where; // where: "file:line"
        std::optional<bool> listening;     // nullopt: not checkable from here
    };
    std::vector<Upstream> upstreams; // every upstream address the configuration names
};

struct ReadyInfo {
    std::vector<InstanceInfo> instances;
    uint64_t preexisting = 0; // Nginx's upstream connections open before we started (adopted on their next change)
    std::vector<std::pair<std::string, uint64_t>> cgroups; // the kernel-side selection: path, id
    uint32_t nginx_pid = 0;
    std::vector<uint32_t> workers;
    std::vector<std::string> error_logs;
    std::vector<std::string> access_logs;
    std::vector<std::string> probes;        // attached programs
    std::vector<std::string> probes_failed; // "name: reason"
    uint64_t attach_ms = 0;
    std::vector<std::string> capabilities; // kept after attaching
};

struct Summary {
    std::map<std::string, uint64_t> by_cause;
    std::map<std::string, uint64_t> by_upstream;
    uint64_t verdicts = 0;
    uint64_t suppressed = 0; // verdicts not printed because of the rate limit
    uint64_t events = 0;
    uint64_t events_lost = 0;
    uint64_t events_malformed = 0;
    uint64_t map_full = 0;
    uint64_t log_lines = 0;
    uint64_t access_lines = 0; // 502/504 access-log lines read
    uint64_t access_only = 0; // 502/504 access-log lines with no error-log line
    double duration_s = 0;
    // The look-back window: how long evidence is kept, what was let go (by
    // age, and over the count bounds), what is held, and the memory used.
    double window_s = 0;
    uint64_t expired = 0, dropped = 0;
    uint64_t conns_held = 0, procs_held = 0;
    uint64_t rss_kib = 0;
};

struct Warning {
    std::string code;    // events_lost, probe_missing, nginx_gone, log_unreadable, ...
    std::string message;
    uint64_t count = 0;
};

class Sink {
public:
    virtual ~Sink() = default;
    // Wall-clock ns stamped on ready, warning, suppressed and summary records:
    // the engine's clock, so that a replay stamps them as the live run did.
    std::function<int64_t()> clock = real_now_ns;
    virtual void ready(const ReadyInfo &) = 0;
    virtual void verdict(const Verdict &) = 0;
    virtual void warning(const Warning &) = 0;
    virtual void summary(const Summary &) = 0;
    // `count` more verdicts for (cause, upstream) in the last `window_s` seconds were not printed.
    virtual void suppressed(const std::string &cause, const std::string &upstream, uint64_t count, double window_s) = 0;
};

class JsonSink : public Sink {
public:
    JsonSink(FILE *out, Timebase tb) : out_(out), tb_(tb) {}
    void ready(const ReadyInfo &) override;
    void verdict(const Verdict &) override;
    void warning(const Warning &) override;
    void summary(const Summary &) override;
    void suppressed(const std::string &cause, const std::string &upstream, uint64_t count, double window_s) override;
    void set_timebase(Timebase tb) { tb_ = tb; }

    int failed() const { return failed_; } // the errno of its first failed write, or 0

private:
    void emit(const std::string &line);
    FILE *out_;
    Timebase tb_;
    int failed_ = 0;
};

class TextSink : public Sink {
public:
    TextSink(FILE *out, Timebase tb) : out_(out), tb_(tb) {}
    void ready(const ReadyInfo &) override;
    void verdict(const Verdict &) override;
    void warning(const Warning &) override;
    void summary(const Summary &) override;
    void suppressed(const std::string &cause, const std::string &upstream, uint64_t count, double window_s) override;
    void set_timebase(Timebase tb) { tb_ = tb; }

    int failed() const { return failed_; } // the errno of its first failed write, or 0

private:
    void write_out();
    FILE *out_;
    Timebase tb_;
    std::string buf_; // the record being formatted
    int failed_ = 0;
};

std::string json_escape(const std::string &s);
// Text for a terminal: control characters (C0 including the newline, DEL,
// C1) and bytes that are not well-formed UTF-8 become \xHH, so that a request
// line, a process name or a log message can neither move the cursor nor
// forge a line of output. The text sink passes every such field through it.
std::string visible_text(std::string_view s);
std::string verdict_json(const Verdict &v, const Timebase &tb);

// The errno of the first failed write of a sink's output to stdout (EPIPE:
// whoever read it is gone), or 0. A live run stops on it: verdicts nobody
// can read.
int output_error();

} // namespace n502
