// Loader: the BPF skeleton with RAII, in the order
//   open -> probe features -> configure (autoload, ring size) -> load ->
//   fill maps -> attach -> poll.
// Every step has its own error message, turned into advice where we can.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "n502/events.h"

struct n502_bpf;
struct ring_buffer;
struct bpf_link;
struct bpf_program;
struct bpf_map;

namespace n502 {

struct ProbeStatus {
    std::string program;  // handle_tcp__receive_reset
    std::string hook;     // tp_btf/tcp_receive_reset
    bool available = false;
    bool attached = false;
    bool skipped = false; // not wanted for this run (e.g. log capture with nothing to capture)
    std::string error;
};

struct KernelCounters {
    uint64_t emitted = 0;
    uint64_t lost = 0;
    uint64_t map_full = 0;
    uint64_t untracked = 0; // anomaly-only events (N502_SOCK_UNTRACKED)
    uint64_t evicted = 0;   // socket table entries forgotten to make room, at least (Loader::counters)
};

struct LoaderOptions {
    uint32_t ringbuf_bytes = 4u << 20;
    bool verbose = false;
    bool capture_logs = false;   // load the write() hook (logs that are pipes: stderr in containers)
    bool filter_cgroups = false; // Nginx's hooks only fire in the cgroups given to select_cgroup()
    bool adopt_preexisting = false; // sockets of connections older than us are adopted (add_preexisting)
    bool unix_sockets = false;   // attach the unix-socket syscall hooks now (else on enable_unix_sockets())
    bool adaptive = false;       // start with anomaly-only tracking (set_tracking_full; bpf/common.bpf.h)
    std::string btf_path;        // --btf: the kernel's types from this file; hooks attach as raw_tp
    uint32_t table_entries = 0;  // size of the socket tables (socks, tuples); 0: the default (65536)
    uint64_t table_look_ns = 1'000'000'000; // socket tables near their size looked at at most this often (counters)
};

// Programs attached only on demand: the syscall tracepoints (once one is
// attached, every syscall of every task on the host takes the slower path),
// and the receive hook (every TCP read on the host), needed only while
// adaptive tracking follows connections whole.
enum class OnDemand { LogCapture, UnixSockets, FullTracking };

class Loader {
public:
    using Callback = std::function<void(const void *data, size_t len)>;

    Loader();
    ~Loader();
    Loader(const Loader &) = delete;
    Loader &operator=(const Loader &) = delete;

    // Opens, probes every hook, and loads. On failure *error says what and why.
    bool load(const LoaderOptions &opt, std::string *error);
    // Attaches every available program; failures are recorded in probes().
    bool attach(std::string *error);
    const std::vector<ProbeStatus> &probes() const { return probes_; }

    bool track_process(uint32_t pid, uint32_t role, std::string *error);
    // Adds a cgroup v2 id to the kernel-side selection (LoaderOptions::filter_cgroups).
    bool select_cgroup(uint64_t id, std::string *error);
    // Captures Nginx's writes to this file (kernel dev_t encoding, inode
    // number); the write() hook is attached on the first call.
    bool capture_file(uint32_t dev, uint64_t ino, std::string *error);
    // Stops capturing it.
    void uncapture_file(uint32_t dev, uint64_t ino);
    // Follows unix-socket upstream connections from now on (attaches the
    // connect/accept/close/listen syscall hooks; TCP needs none of them).
    bool enable_unix_sockets(std::string *error);
    bool unix_sockets_enabled() const { return unix_enabled_; }
    // A socket of a connection that predates us, by its 4-tuple (its own
    // end first), to be adopted at its next state change or reset.
    bool add_preexisting(const n502_tuple &key, const n502_sock &value, std::string *error);
    // Adaptive tracking. Whether connections are followed whole now: user
    // space sets it, and the kernel side sets it itself at its first anomaly.
    bool tracking_full() const;
    // Full: the receive hook attached, then the flag set. Anomaly-only: the
    // flag cleared, the records of the full period declared dead, the
    // receive hook detached (it would cost every TCP read on the host).
    bool set_tracking_full(bool full, std::string *error);
    // The ports the anomaly-only path watches (an upstream's): these, or all.
    void watch_ports(const std::vector<uint16_t> &ports, bool all);
    // Nginx forked: the kernel side counts every port as watched until this
    // is called, once the configuration has been read again.
    void ports_settled();
    bool ports_unsure() const;
    // A uid an Nginx worker runs as (bpf/common.bpf.h nginx_uids); false
    // when the map is full (the kernel side then stops filtering by uid).
    bool add_nginx_uid(uint32_t uid);
    // A cgroup (v2 id) an Nginx worker runs in (nginx_cgroups); false when
    // the map is full, and from then on no socket is filtered by cgroup.
    bool add_nginx_cgroup(uint64_t id);
    // Empties the cgroup filter: no socket filtered by cgroup until the next
    // add_nginx_cgroup; with forever, never again.
    void clear_nginx_cgroups(bool forever = false);
    // The places where an Nginx that starts is tracked from its exec on
    // (nginx_places: where a followed Nginx runs or ran, for its restart):
    // cgroup v2 directories by their parent's id and their name. Replaces
    // the set; an empty one stops it. False when a name does not fit or the
    // map is full (the others are set).
    bool set_nginx_places(const std::vector<std::pair<uint64_t, std::string>> &places);
    // The cgroup of a socket the kernel side announced with
    // N502_SOCK_OTHER_CGROUP; nullopt when it is not there (evicted: the
    // LRU map holds 1024).
    std::optional<uint64_t> other_cgroup(uint64_t sk) const;
    // A cgroup found to hold no Nginx worker: its sockets' failures are not
    // announced again until then (CLOCK_BOOTTIME ns).
    void foreign_cgroup(uint64_t id, uint64_t until_boot_ns);
    // Removes a cgroup id from the kernel-side selection.
    void unselect_cgroup(uint64_t id);
    bool start_ring(Callback cb, std::string *error);
    int ring_epoll_fd() const;
    // Consumes every record available now; returns how many, or < 0 on error.
    int consume();
    // The kernel side's counters. evicted: entries of the socket tables
    // (LRU: a full one forgets its oldest entry to make room) that are
    // missing beyond those removed, worked out by counting a table's entries
    // when it has come near its size, at most once a second.
    KernelCounters counters();
    // The same at exit: the socket tables are looked at now whatever
    // table_look_ns says (twice in a row, as an excess needs to count), so
    // that entries forgotten in the last second are not missed.
    KernelCounters final_counters();

    // Preflight facts for --check; btf_path: the file a run would get with --btf.
    static std::vector<std::pair<std::string, std::string>> preflight(const std::string &btf_path = "");
    // Whether path is a BTF file libbpf can read (for --btf); *why if not.
    static bool check_btf_file(const std::string &path, std::string *why);

private:
    static int on_record(void *ctx, void *data, size_t len);
    // Attaches the on-demand group's programs that are not attached yet.
    bool attach_group(OnDemand group, std::string *error);
    void detach_group(OnDemand group);

    n502_bpf *skel_ = nullptr;
    ring_buffer *rb_ = nullptr;
    std::vector<ProbeStatus> probes_;
    std::vector<bpf_program *> progs_; // the program of each probes_ entry
    std::vector<bpf_link *> links_;    // its link while attached (else null)
    bool raw_mode_ = false;            // raw_tp flavour (no kernel BTF: --btf)
    Callback cb_;
    bool unix_enabled_ = false;
    bool uids_overflow_ = false; // nginx_uids filled up: no uid filter from then on
    bool cgroups_overflow_ = false; // nginx_cgroups likewise
    // An LRU table's forgotten entries (counters): a lower bound, kept.
    struct Lru {
        uint64_t evicted = 0;
        uint64_t last_estimate = 0; // (an excess counts once two looks in a row find it)
        uint64_t removed_here = 0;  // dead entries removed by user space
    };
    uint64_t forgotten();
    std::optional<uint64_t> counter(uint32_t idx) const;
    uint64_t table_look_ns_ = 1'000'000'000, tables_checked_ns_ = 0;
    bool look_now_ = false;
    Lru socks_lru_, tuples_lru_;
    bool unix_at_start_ = false;
    bool full_at_start_ = true;
};

// --check's reading of /sys/kernel/security/lockdown's contents.
std::string lockdown_verdict(const std::string &file);

// Makes sure tracefs is mounted (classic tracepoints need its event ids).
bool ensure_tracefs(std::string *error);

} // namespace n502
