// Engine: everything that turns inputs into verdicts. State, the correlator
// (and its rules through a Host), log-line grace periods, rate limiting, the
// verdict's placement (namespaced pids, cgroups, containers) and the summary
// counters. Every input comes through a method, so a recording of them
// (recording.hpp) replays into the same verdicts: live, app.cpp drives it from
// BPF, /proc and the log files; `n502trace replay` from a file.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "accesslog.hpp"
#include "correlator.hpp"
#include "host.hpp"
#include "logline.hpp"
#include "ratelimit.hpp"
#include "recording.hpp"
#include "sinks.hpp"
#include "state.hpp"
#include "timebase.hpp"

namespace n502 {

struct EngineConfig {
    uint64_t window_ns = 300'000'000'000ULL;
    double window_s = 300; // as given (the summary shows it)
    uint32_t max_verdicts_per_sec = 20;
    uint32_t grace_ms = 300;
    bool redact = false;
    bool no_access_log = false;
    bool dump_events = false; // not recorded: a live debugging aid
    // The correlator asks the output rate limit as soon as a verdict's cause
    // is known and does not explain (nor look up the host for) what it will
    // not show. Off only to replay a recording made before that (look-ups
    // below 2): its answers were recorded for every verdict, in order.
    bool lazy_render = true;
    // A listener found at the start has its process's facts read then (its
    // first event may be its death). Off only to replay a recording made
    // before that (look-ups below 3).
    bool listener_facts = true;
    bool listener_recheck = true; // RuleInput::recheck_listener
    bool remember_when_taken = true; // CorrelatorOptions::remember_when_taken
    int64_t tb_offset_ns = 0;  // boot -> wall clock at the start
    uint64_t boot_ns = 0;      // the clock at the start
    int64_t real_ns = 0;
};

// What /proc says about a process (read once while it lives).
struct ProcFacts {
    std::string memory_cgroup;
    uint64_t memory_limit = 0;
    std::optional<uint32_t> ns_pid;
    std::string cgroup2; // with the kernel's cgroup id as a fallback for a process gone from /proc
};

// Recorded like Host's look-ups: a new one, or one asked where it was not
// before, bumps kRecLookups in recording.hpp.
class FactsSource {
public:
    virtual ~FactsSource() = default;
    virtual ProcFacts proc(uint32_t pid, uint64_t cgroup_id) = 0;
    virtual std::optional<ContainerInfo> container(const std::string &cgroup_path) = 0;
};

// The live host: /proc and the runtimes' state on disk.
class LiveFacts : public FactsSource {
public:
    LiveFacts(std::string uroot, RuntimeDirs dirs) : uroot_(std::move(uroot)), dirs_(std::move(dirs)) {}
    ProcFacts proc(uint32_t pid, uint64_t cgroup_id) override;
    std::optional<ContainerInfo> container(const std::string &cgroup_path) override;

private:
    std::string uroot_;
    RuntimeDirs dirs_;
};

// Live sources that write every answer to the recording.
class RecordingFacts : public FactsSource {
public:
    RecordingFacts(FactsSource &inner, Recorder &rec) : inner_(inner), rec_(rec) {}
    ProcFacts proc(uint32_t pid, uint64_t cgroup_id) override;
    std::optional<ContainerInfo> container(const std::string &cgroup_path) override;
    // A new segment starts with what was learned (the engine keeps reading
    // its own cache, not /proc, for processes it has seen).
    void write_known();

private:
    FactsSource &inner_;
    Recorder &rec_;
    std::unordered_map<uint32_t, std::pair<uint64_t, ProcFacts>> known_;
    std::unordered_map<std::string, std::optional<ContainerInfo>> containers_;
};

class RecordingHost : public Host {
public:
    RecordingHost(Host &inner, Recorder &rec) : inner_(inner), rec_(rec) {}
    std::optional<ListenerQueue> listener(const Addr &addr, uint32_t ns_pid) override;
    FileFacts file(const std::string &path) override;
    std::optional<Creds> creds(uint32_t pid) override;
    std::string activity(uint32_t pid) override;
    std::string port_range(uint32_t pid) override;
    std::map<std::string, int> sockets_to(const Addr &dst, uint32_t ns_pid) override;
    int tcp_abort_on_overflow(uint32_t pid) override;
    std::optional<SocketHolder> holder(const Addr &local, const Addr &remote, uint32_t ns_pid) override;

private:
    Host &inner_;
    Recorder &rec_;
};

struct KernelLoss {
    uint64_t lost = 0;
    uint64_t map_full = 0;
};

class Engine {
public:
    // rec: where inputs are recorded (null: not recording).
    Engine(const EngineConfig &cfg, Sink &sink, Host *host, FactsSource &facts, Recorder *rec);
    ~Engine()
    {
        sink_.clock = real_now_ns; // the sink may outlive us
        // A run that stopped before ready (an attach that failed) still
        // says the warnings it had found.
        for (const Warning &w : held_warnings_)
            sink_.warning(w);
    }
    Engine(const Engine &) = delete;
    Engine &operator=(const Engine &) = delete;

    // ---- inputs (each recorded when recording)
    // The clock: boot ns and wall-clock ns. Written to the recording only
    // when an input that follows uses it.
    void tick(uint64_t boot_ns, int64_t real_ns);
    void set_timebase(Timebase tb);
    void add_process(uint32_t pid, uint32_t role, const std::string &comm, uint32_t parent);
    void add_listener(const Addr &a, uint32_t pid, const std::string &comm);
    // inode, up_inode: the sockets' inodes (how unix sockets are adopted).
    void add_preexisting(uint32_t nginx_pid, const Addr &local, const Addr &remote, uint32_t up_pid,
                         const std::string &up_comm, const Addr &up_local, const Addr &up_remote, uint64_t inode = 0,
                         uint64_t up_inode = 0);
    // A log Nginx writes to a pipe/socket: its lines come captured in kernel
    // events (dev, ino); desc names it in warnings.
    void add_capture(uint32_t dev, uint64_t ino, const std::string &desc);
    void remove_capture(uint32_t dev, uint64_t ino);
    // One raw ring-buffer record.
    void kernel(const void *data, size_t len);
    // A line from a log file. map_pid turns the pid Nginx logged into a host
    // pid (0: unknown). True when it was an upstream error line.
    bool log_line(const std::string &text, const std::function<uint32_t(uint32_t)> &map_pid);
    void counters(const KernelLoss &k);
    // Lines whose time came are explained; once a second the rate-limit
    // report, the loss check and the window. True when the once-a-second
    // work ran (the caller does its own then).
    bool step();
    void ready(const ReadyInfo &r);
    // Warnings before ready() are held and given right after it: `ready`
    // is the first record a script reads.
    void warning(const Warning &w);
    // The end: everything pending explained, the summary printed.
    void finish(double duration_s, uint64_t rss_kib);

    // ---- replay: the same inputs, decoded from a recording. Answers are
    // served by `host`/`facts` given at construction.
    void replay(const RawRecord &r);

    // For a new recording segment: what the engine knows that a fresh start
    // would have found (the caller adds listeners and older connections).
    void write_snapshot_state();
    // Replaying a later segment: the loss counters its snapshot holds were
    // said by the live run before that segment.
    void losses_said();
    void write_config();
    // A replay starting from a Config record: the clock state it describes.
    void replay_restore(Timebase correlator_tb, uint64_t next_stats);

    const State &state() const { return state_; }
    State &state() { return state_; }
    uint64_t now_boot() const { return now_boot_; }
    const Summary &summary() const { return summary_; }
    bool has_pending() const { return !pending_.empty() || !pending_access_.empty(); }
    // The first recording write failure, said once.
    void check_recorder();
    // Cgroups the kernel saw made since the last call (N502_EV_CGROUP), for
    // the caller's selection; *overflow: more than kMadeCgroupsMax were, and
    // those past it are not listed (look at every selected container).
    static constexpr size_t kMadeCgroupsMax = 1024;
    std::vector<uint64_t> take_made_cgroups(bool *overflow)
    {
        *overflow = std::exchange(made_cgroups_overflow_, false);
        return std::exchange(made_cgroups_, {});
    }

private:
    std::vector<uint64_t> made_cgroups_;
    bool made_cgroups_overflow_ = false;
    // When a line was taken, and the state's count of connections let go
    // over its bound then: what its verdict must say was missing.
    struct Taken {
        uint64_t at = 0;   // boot ns
        int64_t real = 0;  // the same moment, wall-clock ns
        uint64_t dropped = 0;
    };
    struct Pending {
        LogLine line;
        uint64_t deadline;
        uint64_t next_try = 0;
        uint32_t logged_pid = 0;
        Taken taken;
    };
    struct PendingAccess {
        AccessLine line;
        uint64_t deadline;
        Taken taken;
    };
    Taken taken_now() const;
    struct Partial {
        std::string text;
        bool overflow = false;
    };
    bool ready_sent_ = false;
    std::vector<Warning> held_warnings_;
    void rec(Rec type, const Enc &e);
    void flush_time();
    void do_kernel(const void *data, size_t len);
    bool do_line(const std::string &text, uint32_t mapped);
    bool take_line(uint32_t mapped);
    void take_access(AccessLine a);
    void note_tracking(const std::string &code);
    void do_capture(const Event &ev);
    bool do_step();
    void do_finish(double duration_s, uint64_t rss_kib);
    void read_facts(Proc &p, bool again = false);
    void place(uint32_t pid, std::optional<uint32_t> &nsp, std::string &cgroup, std::optional<ContainerInfo> &container);
    void emit(const Verdict &given, uint32_t logged_pid, const Taken &taken);
    void check_losses();
    void report_suppressed();
    void resolve(bool final_all);
    void resolve_access(bool final_all);

    EngineConfig cfg_;
    Sink &sink_;
    FactsSource &facts_;
    Recorder *rec_;
    uint64_t now_boot_ = 0;
    bool tracking_lean_ = false; // adaptive tracking watching failures only (its warnings say when)
    int64_t now_real_ = 0;
    uint64_t rec_boot_ = 0; // the clock as last written to the recording
    int64_t rec_real_ = 0;
    bool rec_time_valid_ = false;
    State state_;
    Correlator correlator_;
    RateLimiter limiter_;
    Summary summary_;
    uint64_t malformed_ = 0;
    KernelLoss loss_;
    uint64_t last_lost_ = 0;
    uint64_t last_map_full_ = 0;
    uint64_t last_loss_ns_ = 0;
    uint64_t next_stats_ = 0;
    uint64_t grace_ns_;
    std::deque<Pending> pending_;
    LogLine scratch_;                   // each upstream error line is parsed into this
    std::vector<LogLine> spare_lines_;  // explained lines' strings, for scratch_
    std::deque<PendingAccess> pending_access_;
    std::unordered_map<std::string, std::optional<ContainerInfo>> container_cache_;
    std::map<std::pair<uint32_t, uint64_t>, std::string> capture_of_; // (dev, ino) -> description
    std::map<std::tuple<uint32_t, uint64_t, uint32_t>, Partial> capture_partial_;
    uint64_t capture_cut_ = 0;
    // Per captured log: its lines that are not error-log lines, and how many
    // of them are in the access layout read (the first 50; said once).
    std::map<std::pair<uint32_t, uint64_t>, std::pair<int, int>> capture_format_;
    void check_capture_format(std::pair<uint32_t, uint64_t> log, const std::string &line);
    bool recorder_failed_ = false;
};

// Start-up records, for a new segment's snapshot written by the caller.
Enc enc_listener(const Addr &a, uint32_t pid, const std::string &comm);
Enc enc_preexisting(uint32_t nginx_pid, const Addr &local, const Addr &remote, uint32_t up_pid,
                    const std::string &up_comm, const Addr &up_local, const Addr &up_remote, uint64_t inode,
                    uint64_t up_inode);

// Encoding of what sinks print (ready, warnings), shared by record and replay.
void encode_ready(Enc &e, const ReadyInfo &r);
ReadyInfo decode_ready(Dec &d);

// `n502trace replay FILE [--json]`. Returns the process exit code.
int run_replay(const std::string &path, bool json);
// The replay's output as --json lines (for `report` on a recording). Throws
// RecordingError; warnings about the file are appended to *warnings.
std::string replay_to_json(const std::string &path, std::vector<std::string> *warnings);

} // namespace n502
