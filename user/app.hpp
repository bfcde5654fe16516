// The running tool: discovery, loader, log followers, state, correlator and
// sinks wired into one event loop.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace n502 {

struct Options {
    uint32_t nginx_pid = 0;
    std::vector<std::string> containers; // --container: name, id or id prefix
    std::vector<std::string> cgroups;    // --cgroup: cgroup v2 paths
    std::vector<std::string> error_logs;
    std::vector<std::string> access_logs;
    bool no_access_log = false;
    bool json = false;
    bool redact = false;
    bool follow = false; // when the Nginx master exits, wait for a new one // no query strings or client addresses in the output
    double duration_s = 0; // 0: until SIGINT/SIGTERM
    uint32_t ringbuf_kb = 2048;
    uint32_t table_entries = 65536; // --table-entries: the kernel side's socket tables' size
    bool verbose = false;
    bool dump_events = false; // print every kernel event to stderr (debugging)
    std::string raw_record;   // write every raw ring-buffer record to this file (benchmarks, debugging)
    std::string record;       // --record: every input of the verdicts, for `n502trace replay`
    uint64_t record_max = 0;  // --record-max: bound on the recording's segments together (0: one file, unbounded)
    uint32_t max_verdicts_per_sec = 20; // per cause and upstream; 0: no limit
    uint32_t grace_ms = 300; // how long a log line waits for its kernel evidence
    double window_s = 300;   // kernel evidence kept this long (--window)
    bool unix_sockets = false; // follow unix-socket upstreams even when no configuration names one
    std::string btf_path;      // --btf: the kernel's types from this file (kernels without BTF)
    std::string tracking = "adaptive"; // --tracking: adaptive (failures only while Nginx is calm), or full
    double calm_s = 300;           // --calm-after: adaptive tracking's calm period before going lean again
};

enum ExitCode {
    EXIT_OK = 0,
    EXIT_RUNTIME = 1,  // could not attach, Nginx vanished, ...
    EXIT_USAGE = 2,    // bad command line or bad input
};

int run(const Options &opt);
int run_check(const std::string &btf_path = "");

} // namespace n502
