// n502trace: why did Nginx return 502? Command line only; the work is in app.cpp.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fmt/format.h>
#include <string>
#include <vector>

#include "app.hpp"
#include "engine.hpp"
#include "loader.hpp"
#include "recording.hpp"
#include "report.hpp"
#include "rules.hpp"

namespace {

// A number of seconds: finite and within [lo, hi] (above lo when open_lo).
// CLI11's own range checks let "nan" through and word their message for any
// double.
CLI::Validator seconds_in(double lo, double hi, bool open_lo)
{
    std::string range = fmt::format("{} {} to {} seconds", open_lo ? "more than" : "from", lo, hi);
    return CLI::Validator(
        [=](std::string &s) -> std::string {
            char *end = nullptr;
            double d = std::strtod(s.c_str(), &end);
            if (s.empty() || end == s.c_str() || *end != '\0')
                return fmt::format("'{}' is not a number (of seconds)", s);
            if (!std::isfinite(d) || (open_lo ? d <= lo : d < lo) || d > hi)
                return fmt::format("{} is out of range: give {}", s, range);
            return std::string();
        },
        "SECONDS", "seconds");
}

// The first of each, in order: a log named twice is followed once.
void dedupe(std::vector<std::string> &v)
{
    std::vector<std::string> out;
    for (auto &s : v)
        if (std::find(out.begin(), out.end(), s) == out.end())
            out.push_back(std::move(s));
    v = std::move(out);
}

} // namespace

int main(int argc, char **argv)
{
    n502::Options opt;
    bool check = false;
    bool version = false;
    std::string causes = "\nCauses (the `cause` field):\n";
    for (const auto &r : n502::rules())
        causes += fmt::format("  {:<27} {}\n", r.cause, r.summary);

    CLI::App app{"n502trace: explains every Nginx 502/504 from the kernel.\n\n"
                 "It follows the error log of a running Nginx and, for each upstream error line, prints one verdict:\n"
                 "the cause, the upstream process involved, and the kernel evidence (connects, resets, closes,\n"
                 "signals, exits, OOM kills) with timestamps. Run it as root on the Nginx host:\n\n"
                 "  sudo n502trace --nginx-pid $(pgrep -o nginx)          # human output until Ctrl-C\n"
                 "  sudo n502trace --nginx-pid PID --json --duration 600 # JSON Lines for scripts\n"
                 "  sudo n502trace --container web                        # the Nginx in a container (from the host)\n"
                 "  sudo n502trace --cgroup /sys/fs/cgroup/unified/docker/ID --json\n"
                 "  sudo n502trace --check                                # what this kernel supports\n\n"
                 "Containers: --container takes a Docker, containerd (Kubernetes) or CRI-O container's name, full id or\n"
                 "id prefix, read from the runtime's state on disk; --cgroup takes a cgroup v2 directory (or the path\n"
                 "/proc/PID/cgroup shows). Both repeat and combine with --nginx-pid; every Nginx found is followed, its\n"
                 "logs through /proc/PID/root (or captured from its stderr), and the kernel side watches only those\n"
                 "cgroups. Upstreams are found through the connection wherever they run. Verdicts show host pids and\n"
                 "the pids inside the container, the container and the cgroup of Nginx and of the upstream process.\n",
                 "n502trace"};
    app.footer(causes + "\nJSON records: ready (first, once attached), verdict, warning, suppressed (verdicts over "
                        "--max-verdicts-per-sec, counted), summary (on exit).\n"
                        "Exit codes: 0 ok, 1 runtime failure (cannot attach, Nginx stopped without --follow, ...), "
                        "2 bad usage or input.\n");
    app.add_option("-p,--nginx-pid", opt.nginx_pid, "PID (host pid) of the Nginx master or of any worker");
    app.add_option("-c,--container", opt.containers,
                   "Follow the Nginx in this container: name, full id or id prefix of 3 or more characters "
                   "(repeatable; a stopped one among others is followed once it starts, with cgroup v2)");
    app.add_option("--cgroup", opt.cgroups,
                   "Follow every Nginx in this cgroup v2 directory and below it (repeatable): "
                   "/sys/fs/cgroup/.../docker/ID, or as /proc/PID/cgroup shows it (/docker/ID, 0::/docker/ID)");
    app.add_option("--error-log", opt.error_logs,
                   "Error log of the Nginx given with --nginx-pid (repeatable); default: found from Nginx's open "
                   "files");
    app.add_option("--access-log", opt.access_logs,
                   "Access log of the Nginx given with --nginx-pid, for 502/504s with no error-log line "
                   "(repeatable); default: found from Nginx's open files");
    app.add_flag("--no-access-log", opt.no_access_log, "Do not follow access logs");
    app.add_flag("--json", opt.json, "Print JSON Lines instead of text");
    app.add_flag("--follow", opt.follow,
                 "When Nginx stops, wait for a new master with the same command line, started after it stopped, and "
                 "follow it (without it, n502trace stops with exit code 1); binary upgrades (USR2) are followed "
                 "either way, and so is a restart in a --container/--cgroup selection");
    app.add_flag("--redact", opt.redact, "Remove query strings and client addresses from the output");
    app.add_option("--duration", opt.duration_s, "Stop after SECONDS (default: run until SIGINT/SIGTERM)")
        ->check(seconds_in(0, 315'360'000, true)); // up to ten years
    app.add_option("--window", opt.window_s,
                   "Keep kernel evidence this many seconds (default 300): a 502 is explained by a kill, an OOM kill "
                   "or a listener that went away within it; older records are dropped and counted in the summary")
        ->check(seconds_in(1, 86400, false));
    app.add_flag("--unix-sockets", opt.unix_sockets,
                 "Follow unix-socket upstreams from the start even when Nginx's configuration does not name one "
                 "(it is read at start: a unix: upstream in it, or a configuration that cannot be read, turns "
                 "this on). The unix hooks are syscall tracepoints, which cost every syscall on the host a "
                 "little; TCP upstreams need none");
    app.add_option("--btf", opt.btf_path,
                   "The running kernel's BTF, for kernels built without it (no /sys/kernel/btf/vmlinux): a file "
                   "from BTFHub or made with `pahole --btf_encode_detached`. The hooks then attach as raw "
                   "tracepoints, typed by this file. Also with --check");
    app.add_option("--tracking", opt.tracking,
                   "How the kernel side follows Nginx's upstream connections. adaptive (default): while Nginx "
                   "is healthy, only failures on sockets toward the upstream ports its configuration names (a "
                   "refused or timed-out connect, a reset, a SYN resent, an upstream dying, aborting or closing "
                   "with a connection open and unanswered), which costs about what empty programs on the same "
                   "tracepoints cost; the first such failure, or the first upstream error in the log, switches "
                   "to full until Nginx has been calm for --calm-after seconds. Those first failures are "
                   "explained from what they showed (the verdict says so); one the kernel cannot tell from a "
                   "normal close (a timeout, which Nginx ends as it ends a request whose client left; an "
                   "upstream that answered something first: an invalid response, a keep-alive race) is "
                   "`unknown` with the log's cause, and explained from its next occurrence. full: every "
                   "connection whole from the start, so even the first failure of any kind is explained with its "
                   "whole story, at about three times the kernel time per new upstream connection (see the "
                   "README's Performance)")
        ->check(CLI::IsMember({"full", "adaptive"}));
    app.add_option("--calm-after", opt.calm_s,
                   "Adaptive tracking: go back to watching failures only after this many seconds without "
                   "an upstream error line or a failure seen by the kernel (default 300)")
        ->check(seconds_in(1, 86400, false));
    app.add_option("--table-entries", opt.table_entries,
                   "Size of the kernel side's socket tables (default 65536): one entry per socket followed whole "
                   "(two per upstream connection whose both ends are on this host). Past it the oldest are "
                   "forgotten, and counted (warning map_full): raise it for more connections at once")
        ->check(CLI::Range(1024u, 1u << 20));
    app.add_option("--ringbuf-kb", opt.ringbuf_kb, "Kernel ring buffer size in KiB, a power of two (default 2048)")
        ->check(CLI::Range(4u, 1u << 20))
        ->check(CLI::Validator(
            [](std::string &s) -> std::string {
                unsigned long n = std::strtoul(s.c_str(), nullptr, 10);
                return n && !(n & (n - 1)) ? std::string()
                                           : fmt::format("{} is not a power of two (4, 8, ..., 2048, ...)", s);
            },
            "POWER OF TWO", "power of two"));
    app.add_option("--max-verdicts-per-sec", opt.max_verdicts_per_sec,
                   "Print at most N verdicts per second for each cause and upstream; the rest are counted and "
                   "reported in one line per second (default 20; 0: no limit)");
    app.add_flag("--check", check, "Print a preflight report of what this kernel and host support, attach nothing");
    app.add_flag("-v,--verbose", opt.verbose, "Print libbpf's messages (verifier log on load failures)");
    app.add_flag("--version", version, "Print the version");
    app.add_flag("--dump-events", opt.dump_events, "Print every kernel event to stderr (for debugging)");
    app.add_option("--raw-record", opt.raw_record,
                   "Write every raw kernel event to FILE (u32 length + record), for measuring the user-space "
                   "pipeline (the project's scripts/bench-pipeline.sh)");

    std::string record_max;
    app.add_option("--record", opt.record,
                   "Record everything the verdicts are made from (start-up snapshot, kernel events, log lines, "
                   "process facts, host look-ups) to FILE, for `n502trace replay FILE` on any machine (a file that "
                   "exists and is not a recording is never written over)");
    app.add_option("--record-max", record_max,
                   "Bound the recording to SIZE bytes (suffixes k, M, G: 64M): it is split into four segments "
                   "(FILE newest, then FILE.1, FILE.2, FILE.3) and the oldest is deleted when a new one starts; each "
                   "segment starts with a snapshot and replays on its own, and holds at least a second of input "
                   "(at least 64k; default: one file, unbounded)");

    std::string replay_in;
    bool replay_json = false;
    CLI::App *replay = app.add_subcommand(
        "replay", "Replay a recording made with --record: the same verdicts, offline, without root or BPF "
                  "(n502trace replay FILE [--json]); older segments FILE.1, FILE.2, ... are replayed first");
    replay->add_option("file", replay_in, "Recording written by n502trace --record")->required();
    replay->add_flag("--json", replay_json, "Print JSON Lines instead of text");
    replay->footer("Exit codes: 0 ok, 1 the output could not be written, 2 bad input (not a recording, unreadable, "
                   "corrupt).");

    std::string report_in, report_out;
    CLI::App *report = app.add_subcommand(
        "report", "Write a self-contained HTML postmortem page from a --json output or a --record recording "
                  "(n502trace report FILE [-o OUT.html]) and print a short summary");
    report->add_option("file", report_in, "JSON Lines written by n502trace --json, or a recording (--record)")
        ->required();
    report->add_option("-o,--output", report_out, "HTML file to write (default: FILE.html)");
    report->footer("Exit codes: 0 ok, 1 cannot write the report, 2 bad input.");

    app.failure_message([](const CLI::App *, const CLI::Error &e) {
        return fmt::format("n502trace: error: {}\nRun with --help for more information.\n", e.what());
    });
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError &e) {
        int rc = app.exit(e);
        return rc == 0 ? 0 : n502::EXIT_USAGE;
    }
    if (version) {
        fmt::print("n502trace {}\n", N502_VERSION);
        return 0;
    }
    auto usage = [](const std::string &msg) {
        fmt::print(stderr, "n502trace: error: {}\n", msg);
        return n502::EXIT_USAGE;
    };
    if (*replay || *report) {
        // Options given before the subcommand are the live run's: they would
        // be dropped without a word.
        for (const CLI::Option *o : app.get_options())
            if (o->count() > 0)
                return usage(fmt::format("{} is an option of a live run, not of `{}`; the subcommand's own options "
                                         "come after it (n502trace replay FILE [--json], n502trace report FILE [-o "
                                         "OUT])",
                                         o->get_name(), *replay ? "replay" : "report"));
        if (*report && report->count("-o") && report_out.empty())
            return usage("-o: give the name of the HTML file to write");
    }
    if (*replay)
        return n502::run_replay(replay_in, replay_json);
    if (*report)
        return n502::run_report(report_in, report_out);
    if (!opt.btf_path.empty()) {
        std::string why;
        if (!n502::Loader::check_btf_file(opt.btf_path, &why))
            return usage(why);
    }
    if (check)
        return n502::run_check(opt.btf_path);
    if (app.count("--nginx-pid") && opt.nginx_pid == 0)
        return usage("--nginx-pid 0: give the pid of the Nginx master or of any worker (`pgrep -a nginx`)");
    if (app.count("--record") && opt.record.empty())
        return usage("--record: give the name of the file to record to");
    if ((!opt.error_logs.empty() || !opt.access_logs.empty()) && !app.count("--nginx-pid"))
        return usage("--error-log and --access-log name the logs of the Nginx given with --nginx-pid; with "
                     "--container or --cgroup alone each Nginx's logs are found from its open files");
    dedupe(opt.error_logs);
    dedupe(opt.access_logs);
    if (!record_max.empty()) {
        auto n = n502::parse_size(record_max);
        if (!n || *n < 64 * 1024) {
            fmt::print(stderr, "n502trace: error: --record-max {}: {}\n", record_max,
                       n ? "give at least 64k (e.g. 64M, 1G)"
                         : "not a size: a number with an optional suffix k, M or G (e.g. 64M, 1G), at least 64k");
            return n502::EXIT_USAGE;
        }
        if (opt.record.empty()) {
            fmt::print(stderr, "n502trace: error: --record-max bounds a recording: give --record FILE too\n");
            return n502::EXIT_USAGE;
        }
        opt.record_max = *n;
    }
    if (opt.nginx_pid == 0 && opt.containers.empty() && opt.cgroups.empty()) {
        fmt::print(stderr, "n502trace: error: say which Nginx: --nginx-pid PID (the master or any worker; `pgrep -a "
                           "nginx` lists them), --container NAME or --cgroup PATH. See --help.\n");
        return n502::EXIT_USAGE;
    }
    return n502::run(opt);
}
