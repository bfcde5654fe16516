// Finding a running Nginx from /proc: its master, workers and error logs.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace n502 {

// A log Nginx writes to a pipe, socket or terminal (stderr in a container):
// its lines are captured from the kernel, from Nginx's write()s.
struct LogCapture {
    uint32_t dev = 0; // kernel encoding (major << 20 | minor), as the BPF side reads it
    uint64_t ino = 0;
    std::string desc; // "pipe:[12345] (fd 2)"
};

struct NginxInfo {
    uint32_t master = 0;
    std::vector<uint32_t> workers; // every child of the master (workers, cache manager/loader)
    // "" when Nginx shares our mount namespace, else "/proc/MASTER/root":
    // the log paths below are inside it and are opened confined to it.
    std::string root;
    std::string root_prefix; // Nginx is chrooted here (as /proc/PID/fd shows it): stripped from its paths
    std::vector<std::string> error_logs;
    std::vector<std::string> access_logs;
    std::vector<LogCapture> captures; // when the error log (or access log) is not a file
};

struct ProcInfo {
    uint32_t pid = 0;
    uint32_t ppid = 0;
    std::string comm;
    std::string cmdline; // NULs replaced by spaces
    char state = '?';    // R, S, D, Z, ...
};

std::optional<ProcInfo> read_proc(uint32_t pid, const std::string &proc_root = "/proc");
// Nginx by its name or title: nginx, nginx-debug (the official image's
// debug binary), openresty, or a process titled "nginx: ...".
bool looks_like_nginx(const ProcInfo &p);
// Nginx in a selection of cgroups, where any process may run: its exact name
// (nginx, nginx-debug, openresty) or Nginx's title "nginx: ...".
bool named_nginx(const ProcInfo &p);
// An operator's `nginx -t`, `-T`, `-s reload`, `-v`, `-V`, `-h` (also
// combined, -qt): a process that ends at once, no master to follow.
bool is_nginx_oneshot(const ProcInfo &p);
std::vector<uint32_t> children_of(uint32_t pid, const std::string &proc_root = "/proc");

// Resolves PID (master or any worker). On failure returns nullopt and sets
// *error to a message for the user.
std::optional<NginxInfo> discover_nginx(uint32_t pid, std::string *error, const std::string &proc_root = "/proc");

// The error logs a running Nginx writes to, from its open descriptors:
// stderr (Nginx points it at its main error log) and any open *error*log file.
std::vector<std::string> find_error_logs(const NginxInfo &n, const std::string &proc_root = "/proc");

// Whether Nginx's master has this file (a path as Nginx names it, inside
// its root) open: a log its configuration names that the names above miss.
bool nginx_has_open(const NginxInfo &n, const std::string &path, const std::string &proc_root = "/proc");

// Logs that are pipes, sockets or terminals (see LogCapture).
std::vector<LogCapture> find_log_captures(const NginxInfo &n, const std::string &proc_root = "/proc");

// Open *access*log files of a running Nginx.
std::vector<std::string> find_access_logs(const NginxInfo &n, const std::string &proc_root = "/proc");

// The memory cgroup of a process ("" when none or unknown).
std::string memory_cgroup(uint32_t pid, const std::string &proc_root = "/proc");

// The memory limit of a memory cgroup path (v1 memory.limit_in_bytes or v2
// memory.max) in bytes; 0 when unlimited or unknown.
uint64_t memory_limit(const std::string &cgroup_path, const std::string &cgroup_root = "/sys/fs/cgroup");

} // namespace n502
