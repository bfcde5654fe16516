#include "app.hpp"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <deque>
#include <dirent.h>
#include <malloc.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <memory>
#include <linux/capability.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "accesslog.hpp"
#include "correlator.hpp"
#include "decoder.hpp"
#include "loader.hpp"
#include "logfollow.hpp"
#include "logline.hpp"
#include "n502/events.h"
#include "nginx.hpp"
#include "procscan.hpp"
#include "ratelimit.hpp"
#include "sinks.hpp"
#include "state.hpp"
#include "timebase.hpp"

namespace n502 {

namespace {

void error(const std::string &msg) { fmt::print(stderr, "n502trace: error: {}\n", msg); }

struct Pending {
    LogLine line;
    uint64_t deadline;     // boot ns: explain with what is known by then
    uint64_t next_try = 0; // a line waiting for evidence is retried at most every 20 ms
};

// Lines waiting for kernel evidence; beyond this many (a storm the tool is
// behind on) the oldest are explained at once with what is known.
constexpr size_t kMaxPending = 20000;

class Fd {
public:
    explicit Fd(int fd = -1) : fd_(fd) {}
    ~Fd()
    {
        if (fd_ >= 0)
            close(fd_);
    }
    Fd(const Fd &) = delete;
    Fd &operator=(const Fd &) = delete;
    int get() const { return fd_; }

private:
    int fd_;
};

// Alive: in /proc and neither a zombie nor dead.
bool process_alive(uint32_t pid)
{
    FILE *f = fopen(fmt::format("/proc/{}/stat", pid).c_str(), "r");
    if (!f)
        return false;
    char buf[512] = {};
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    std::string st(buf, n);
    auto close = st.rfind(')');
    char state = close != std::string::npos && close + 2 < st.size() ? st[close + 2] : '?';
    return state != 'Z' && state != 'X';
}

// An Nginx master whose command line is exactly `cmdline`, or 0.
uint32_t find_master(const std::string &cmdline)
{
    uint32_t found = 0;
    if (DIR *d = opendir("/proc")) {
        while (dirent *de = readdir(d)) {
            char *end = nullptr;
            unsigned long pid = strtoul(de->d_name, &end, 10);
            if (!end || *end || pid == 0)
                continue;
            auto pi = read_proc(static_cast<uint32_t>(pid));
            if (pi && pi->cmdline == cmdline && process_alive(pi->pid))
                found = pi->pid;
        }
        closedir(d);
    }
    return found;
}

// After attaching, keep only what the remaining work needs: CAP_BPF and
// CAP_SYS_ADMIN (map reads and updates; setns into an upstream's network
// namespace), CAP_SYS_PTRACE (other processes' /proc/PID/fd), and
// CAP_DAC_READ_SEARCH (logs and /proc files). Everything else leaves the
// effective, permitted, inheritable and bounding sets, and no_new_privs is
// set. Returns the kept capabilities' names, or an error.
std::vector<std::string> drop_capabilities(std::string *err)
{
    static const std::pair<int, const char *> keep[] = {
        {2, "CAP_DAC_READ_SEARCH"}, {19, "CAP_SYS_PTRACE"}, {21, "CAP_SYS_ADMIN"}, {39, "CAP_BPF"}};
    int last = 40;
    if (FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "r")) {
        if (fscanf(f, "%d", &last) != 1)
            last = 40;
        fclose(f);
    }
    auto kept = [&](int cap) {
        for (const auto &k : keep)
            if (k.first == cap)
                return true;
        return false;
    };
    for (int cap = 0; cap <= last; cap++) // the bounding set first: it needs CAP_SETPCAP
        if (!kept(cap))
            prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2]{};
    if (syscall(SYS_capget, &hdr, data) != 0) {
        *err = fmt::format("capget: {}", strerror(errno));
        return {};
    }
    uint32_t mask[2] = {0, 0};
    std::vector<std::string> names;
    for (const auto &k : keep)
        if (k.first <= last && ((data[k.first / 32].permitted >> (k.first % 32)) & 1u)) {
            mask[k.first / 32] |= 1u << (k.first % 32);
            names.push_back(k.second);
        }
    for (int i = 0; i < 2; i++) {
        data[i].effective = mask[i];
        data[i].permitted = mask[i];
        data[i].inheritable = 0;
    }
    if (syscall(SYS_capset, &hdr, data) != 0) {
        *err = fmt::format("capset: {}", strerror(errno));
        return {};
    }
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    return names;
}

// CAP_BPF (Linux 5.8+) or CAP_SYS_ADMIN in the effective set.
bool have_bpf_privileges()
{
    if (geteuid() == 0)
        return true;
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2]{};
    if (syscall(SYS_capget, &hdr, data) != 0)
        return false;
    auto has = [&](int cap) { return (data[cap / 32].effective >> (cap % 32)) & 1u; };
    return has(39 /* CAP_BPF */) || has(21 /* CAP_SYS_ADMIN */);
}

} // namespace

int run_check()
{
    bool ok = true;
    fmt::print("n502trace {} preflight (nothing is attached):\n", N502_VERSION);
    for (const auto &[what, result] : Loader::preflight()) {
        fmt::print("  {:<44} {}\n", what, result);
        if (result.rfind("MISSING", 0) == 0 || result.rfind("no:", 0) == 0)
            ok = false;
    }
    fmt::print("{}\n", ok ? "all checks passed" : "some checks failed: see above");
    return ok ? EXIT_OK : EXIT_RUNTIME;
}

int run(const Options &opt)
{
    auto t_start = std::chrono::steady_clock::now();
    Timebase tb = Timebase::measure();
    std::unique_ptr<Sink> sink;
    if (opt.json)
        sink = std::make_unique<JsonSink>(stdout, tb);
    else
        sink = std::make_unique<TextSink>(stdout, tb);

    // Without privileges every later step fails in a less helpful way: say so first.
    if (!have_bpf_privileges()) {
        error("n502trace needs root (or the capabilities CAP_BPF, CAP_PERFMON, CAP_SYS_RESOURCE, CAP_SYS_PTRACE "
              "and CAP_DAC_READ_SEARCH) to load its BPF programs and read Nginx's files: run it with sudo. "
              "`n502trace --check` reports what this host supports.");
        return EXIT_RUNTIME;
    }
    std::string err;
    auto nginx = discover_nginx(opt.nginx_pid, &err);
    if (!nginx) {
        error(err);
        return EXIT_USAGE;
    }
    std::vector<std::string> logs = opt.error_logs.empty() ? nginx->error_logs : opt.error_logs;
    if (logs.empty()) {
        error(fmt::format("could not find the error log of Nginx (master {}) among its open files; pass it with "
                          "--error-log PATH",
                          nginx->master));
        return EXIT_USAGE;
    }
    std::vector<std::unique_ptr<LogFollower>> followers;
    for (const auto &path : logs) {
        auto f = std::make_unique<LogFollower>(path);
        if (!f->open(true, &err)) {
            error(err);
            return EXIT_USAGE;
        }
        followers.push_back(std::move(f));
    }
    // Access logs: for 502/504 requests that left no error-log line.
    std::vector<std::string> access_logs;
    if (!opt.no_access_log)
        access_logs = opt.access_logs.empty() ? nginx->access_logs : opt.access_logs;
    std::vector<std::unique_ptr<LogFollower>> access_followers;
    for (const auto &path : access_logs) {
        auto f = std::make_unique<LogFollower>(path);
        if (!f->open(true, &err)) {
            error(err);
            return EXIT_USAGE;
        }
        access_followers.push_back(std::move(f));
    }

    // SIGINT/SIGTERM arrive through a signalfd so the loop can stop cleanly.
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigprocmask(SIG_BLOCK, &mask, nullptr);
    signal(SIGPIPE, SIG_IGN);
    Fd sfd(signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));

    State state;
    RealHost host;
    Correlator correlator(state, tb, CorrelatorOptions{}, &host);
    Summary summary;
    uint64_t malformed = 0;

    Loader loader;
    LoaderOptions lo;
    lo.ringbuf_bytes = opt.ringbuf_kb * 1024u;
    lo.verbose = opt.verbose;
    if (!loader.load(lo, &err) || !loader.attach(&err)) {
        error(err);
        return EXIT_RUNTIME;
    }
    // Loading parsed the kernel's BTF (megabytes, now freed): give it back.
    malloc_trim(0);
    std::vector<uint32_t> nginx_pids = nginx->workers;
    nginx_pids.push_back(nginx->master);
    for (uint32_t pid : nginx_pids) {
        if (!loader.track_process(pid, N502_PROC_NGINX, &err)) {
            error(err);
            return EXIT_RUNTIME;
        }
        auto pi = read_proc(pid);
        state.add_process(pid, N502_PROC_NGINX, pi ? pi->comm : "nginx", pid == nginx->master ? 0 : nginx->master);
    }
    // Listeners that predate us: who holds them, so that their death is seen.
    // Every holder counts: the children of a pre-fork server (PHP-FPM,
    // gunicorn) accept on the socket their parent opened.
    for (const auto &l : scan_tcp_listeners()) {
        if (!l.pid)
            continue;
        for (uint32_t holder : l.holders)
            if (!loader.track_process(holder, N502_PROC_LISTENER, &err))
                sink->warning({"map_full", err, 0});
        state.add_listener(l.addr, l.pid, l.comm);
    }
    std::unique_ptr<FILE, int (*)(FILE *)> raw(nullptr, fclose);
    if (!opt.raw_record.empty()) {
        raw.reset(fopen(opt.raw_record.c_str(), "wb"));
        if (!raw) {
            error(fmt::format("cannot write {}: {}", opt.raw_record, strerror(errno)));
            return EXIT_USAGE;
        }
    }
    bool ring_ok = loader.start_ring(
        [&](const void *data, size_t len) {
            if (raw) {
                uint32_t n = static_cast<uint32_t>(len);
                fwrite(&n, sizeof(n), 1, raw.get());
                fwrite(data, 1, len, raw.get());
            }
            std::string why;
            auto ev = decode(data, len, &why);
            if (!ev) {
                if (malformed++ == 0)
                    sink->warning({"event_malformed", "malformed kernel event: " + why, 1});
                return;
            }
            if (opt.dump_events)
                fmt::print(stderr, "event {} ts={} tgid={} comm={} sk={:#x} peer={:#x} ret={} src={} dst={} {}->{} err={} role={} owner={} dir={} target={} sig={} code={} exit={:#x}\n",
                           event_type_name(ev->type), ev->ts, ev->tgid, ev->comm, ev->sk, ev->peer_sk, ev->ret,
                           ev->src.str(), ev->dst.str(), ev->oldstate, ev->newstate, ev->sk_err, ev->sock_role,
                           ev->owner, ev->dir, ev->target, ev->sig, ev->code, ev->exit_code);
            state.apply(*ev);
            if (ev->type == N502_EV_OOM) {
                // Read now: the victim may have moved cgroups since we first saw it.
                if (Proc *p = state.proc(ev->target)) {
                    std::string cg = memory_cgroup(ev->target);
                    if (!cg.empty()) {
                        p->cgroup = cg;
                        p->memory_limit = memory_limit(cg);
                    }
                }
            }
            if (ev->type == N502_EV_ACCEPT || ev->type == N502_EV_LISTEN) {
                if (Proc *p = state.proc(ev->tgid); p && !p->facts_read) {
                    p->facts_read = true;
                    p->cgroup = memory_cgroup(ev->tgid);
                    p->memory_limit = memory_limit(p->cgroup);
                }
            }
        },
        &err);
    if (!ring_ok) {
        error(err);
        return EXIT_RUNTIME;
    }

    ReadyInfo ready;
    ready.nginx_pid = nginx->master;
    ready.workers = nginx->workers;
    ready.error_logs = logs;
    ready.access_logs = access_logs;
    for (const auto &p : loader.probes()) {
        if (p.attached)
            ready.probes.push_back(p.hook);
        else
            ready.probes_failed.push_back(fmt::format("{}: {}", p.hook, p.error));
    }
    ready.attach_ms = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t_start).count());
    for (const auto &p : loader.probes())
        if (!p.attached)
            sink->warning({"probe_missing",
                           fmt::format("{} is not attached ({}): verdicts that need it are degraded", p.hook, p.error),
                           0});
    {
        std::string cerr;
        ready.capabilities = drop_capabilities(&cerr);
        if (!cerr.empty())
            sink->warning({"capabilities", "could not drop capabilities after attaching: " + cerr, 0});
    }
    sink->ready(ready);

    Fd ep(epoll_create1(EPOLL_CLOEXEC));
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = loader.ring_epoll_fd();
    epoll_ctl(ep.get(), EPOLL_CTL_ADD, loader.ring_epoll_fd(), &ev);
    ev.data.fd = sfd.get();
    epoll_ctl(ep.get(), EPOLL_CTL_ADD, sfd.get(), &ev);

    std::deque<Pending> pending;
    struct PendingAccess {
        AccessLine line;
        uint64_t deadline;
    };
    std::deque<PendingAccess> pending_access;
    uint64_t grace_ns = static_cast<uint64_t>(opt.grace_ms) * 1'000'000ULL;
    uint64_t last_lost = 0;
    uint64_t next_stats = boot_now_ns() + 1'000'000'000ULL;
    uint64_t next_rebase = boot_now_ns() + 60'000'000'000ULL;
    uint64_t stop_at = opt.duration_s > 0 ? boot_now_ns() + static_cast<uint64_t>(opt.duration_s * 1e9) : 0;
    bool stop = false;
    bool master_gone = false;
    int exit_code = EXIT_OK;
    std::string master_cmdline;
    if (auto pi = read_proc(nginx->master))
        master_cmdline = pi->cmdline;
    unsigned trim_tick = 0;

    RateLimiter limiter(opt.max_verdicts_per_sec);
    uint64_t last_loss_ns = 0; // boot ns when kernel event losses were last seen
    auto check_losses = [&]() {
        KernelCounters kc = loader.counters();
        if (kc.lost > last_lost) {
            sink->warning({"events_lost",
                           fmt::format("{} kernel events lost (ring buffer full); verdicts in this period may be "
                                       "incomplete",
                                       kc.lost - last_lost),
                           kc.lost - last_lost});
            last_lost = kc.lost;
            last_loss_ns = boot_now_ns();
        }
    };
    auto emit = [&](const Verdict &given) {
        Verdict v = given;
        // Evidence may be missing when events were lost around this failure.
        if (last_loss_ns && boot_now_ns() - last_loss_ns < 10'000'000'000ULL) {
            v.notes.push_back("kernel events were lost in the 10 s before this verdict: evidence may be missing");
            v.confidence = v.confidence == "high" ? "medium" : "low";
        }
        if (opt.redact) {
            // Query strings and client addresses stay out of the output.
            auto q = v.request.find('?');
            if (q != std::string::npos) {
                auto sp = v.request.find(' ', q);
                v.request = v.request.substr(0, q) + "?<redacted>" + (sp == std::string::npos ? "" : v.request.substr(sp));
            }
            if (!v.client.empty())
                v.client = "<redacted>";
        }
        if (limiter.admit(v.cause + "\n" + v.upstream, real_now_ns()))
            sink->verdict(v);
        else
            summary.suppressed++;
        summary.verdicts++;
        summary.by_cause[v.cause]++;
        summary.by_upstream[v.upstream]++;
    };
    auto report_suppressed = [&]() {
        for (const auto &[key, count] : limiter.take_suppressed(real_now_ns())) {
            auto nl = key.find('\n');
            sink->suppressed(key.substr(0, nl), key.substr(nl + 1), count, 1.0);
        }
    };
    auto read_logs = [&]() {
        bool any = false;
        for (auto &f : followers) {
            for (auto &fe : f->poll()) {
                if (fe.kind != FollowEvent::Line) {
                    sink->warning({"log_" + std::string(fe.kind == FollowEvent::Rotated     ? "rotated"
                                                        : fe.kind == FollowEvent::Truncated ? "truncated"
                                                                                            : "vanished"),
                                   fe.text, 0});
                    continue;
                }
                auto line = parse_upstream_error(fe.text);
                if (!line)
                    continue;
                summary.log_lines++;
                pending.push_back({std::move(*line), boot_now_ns() + grace_ns});
                any = true;
            }
        }
        return any;
    };
    auto read_access = [&]() {
        for (auto &f : access_followers)
            for (auto &fe : f->poll()) {
                if (fe.kind != FollowEvent::Line)
                    continue;
                if (auto a = parse_access_error(fe.text))
                    // Wait for the error-log line of the same request, and its verdict.
                    pending_access.push_back({std::move(*a), boot_now_ns() + grace_ns + 100'000'000ULL});
            }
    };
    auto resolve_access = [&](bool final_all) {
        uint64_t now = boot_now_ns();
        while (!pending_access.empty() && (final_all || now >= pending_access.front().deadline)) {
            const AccessLine &a = pending_access.front().line;
            if (!correlator.covered(a)) {
                summary.access_only++;
                emit(correlator.explain_access(a));
            }
            pending_access.pop_front();
        }
    };
    auto resolve = [&](bool final_all) {
        uint64_t now = boot_now_ns();
        std::deque<Pending> waiting;
        size_t over = pending.size() > kMaxPending ? pending.size() - kMaxPending : 0;
        for (auto &p : pending) {
            bool final = final_all || now >= p.deadline || over > 0;
            if (over > 0)
                over--;
            if (!final && now < p.next_try) {
                waiting.push_back(std::move(p));
                continue;
            }
            if (auto v = correlator.explain(p.line, final)) {
                emit(*v);
            } else {
                p.next_try = now + 20'000'000ULL;
                waiting.push_back(std::move(p));
            }
        }
        pending.swap(waiting);
    };

    while (!stop) {
        epoll_event evs[4];
        // The kernel side wakes us only for bursts: poll every 10 ms.
        int n = epoll_wait(ep.get(), evs, 4, 10);
        if (n < 0 && errno != EINTR) {
            error(fmt::format("epoll_wait: {}", strerror(errno)));
            break;
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.fd == sfd.get()) {
                signalfd_siginfo si{};
                while (read(sfd.get(), &si, sizeof(si)) == sizeof(si))
                    stop = true;
            }
        }
        if (loader.consume() < 0)
            sink->warning({"ring_error", "reading the ring buffer failed", 0});
        if (read_logs()) {
            // The kernel events behind a line were produced before Nginx wrote
            // it: drain them before correlating.
            loader.consume();
        }
        if (!pending.empty())
            check_losses(); // before verdicts: a loss in their window lowers their confidence
        resolve(false);
        read_access();
        resolve_access(false);

        uint64_t now = boot_now_ns();
        if (now >= next_stats) {
            next_stats = now + 1'000'000'000ULL;
            report_suppressed();
            if (++trim_tick % 10 == 0)
                malloc_trim(0); // bursts (502 storms) should not leave the heap grown
            check_losses();
            if (!master_gone && !process_alive(nginx->master)) {
                // A binary upgrade (USR2, then QUIT to the old master) leaves
                // a new master that the old one forked: we already track it.
                uint32_t successor = 0;
                for (uint32_t pid : state.nginx_pids())
                    if (pid != nginx->master && process_alive(pid))
                        if (auto pi = read_proc(pid); pi && pi->cmdline.find("master process") != std::string::npos)
                            successor = pid;
                if (successor) {
                    sink->warning({"nginx_new_master",
                                   fmt::format("the Nginx master {} has exited; following its successor {} (binary "
                                               "upgrade)",
                                               nginx->master, successor),
                                   0});
                    nginx->master = successor;
                } else if (opt.follow) {
                    master_gone = true;
                    sink->warning({"nginx_gone",
                                   fmt::format("the Nginx master {} has exited; waiting for a new one (--follow)",
                                               nginx->master),
                                   0});
                } else {
                    sink->warning({"nginx_gone",
                                   fmt::format("the Nginx master {} has exited; stopping (--follow waits for a new "
                                               "one)",
                                               nginx->master),
                                   0});
                    exit_code = EXIT_RUNTIME;
                    stop = true;
                }
            } else if (master_gone) {
                // --follow: a new master started with the same command line.
                if (uint32_t pid = find_master(master_cmdline); pid) {
                    std::string derr;
                    if (auto again = discover_nginx(pid, &derr)) {
                        std::vector<uint32_t> pids = again->workers;
                        pids.push_back(again->master);
                        for (uint32_t p2 : pids) {
                            if (!loader.track_process(p2, N502_PROC_NGINX, &derr))
                                sink->warning({"map_full", derr, 0});
                            auto pi = read_proc(p2);
                            state.add_process(p2, N502_PROC_NGINX, pi ? pi->comm : "nginx",
                                              p2 == again->master ? 0 : again->master);
                        }
                        sink->warning({"nginx_restarted",
                                       fmt::format("a new Nginx master {} started (workers {}); following it",
                                                   again->master, fmt::join(again->workers, " ")),
                                       0});
                        *nginx = *again;
                        master_gone = false;
                    }
                }
            }
        }
        if (now >= next_rebase) {
            next_rebase = now + 60'000'000'000ULL;
            tb = Timebase::measure(); // follow wall-clock steps (NTP)
            correlator.set_timebase(tb);
        }
        if (stop_at && now >= stop_at)
            stop = true;
    }

    // Drain: kernel events and log lines already written still count.
    loader.consume();
    read_logs();
    loader.consume();
    resolve(true);
    read_access();
    resolve_access(true);
    report_suppressed();

    KernelCounters kc = loader.counters();
    summary.events = state.stats().events;
    summary.events_lost = kc.lost;
    summary.events_malformed = malformed;
    summary.map_full = kc.map_full;
    summary.duration_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    sink->summary(summary);
    return exit_code;
}

} // namespace n502
