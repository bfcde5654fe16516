#include "app.hpp"

#include <arpa/inet.h>
#include <cerrno>
#include <cinttypes>
#include <chrono>
#include <csignal>
#include <cstring>
#include <deque>
#include <dirent.h>
#include <fcntl.h>
#include <malloc.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <initializer_list>
#include <map>
#include <set>
#include <tuple>
#include <memory>
#include <unordered_map>
#include <linux/capability.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "accesslog.hpp"
#include "container.hpp"
#include "correlator.hpp"
#include "decoder.hpp"
#include "engine.hpp"
#include "loader.hpp"
#include "logfollow.hpp"
#include "logline.hpp"
#include "n502/events.h"
#include "nginx.hpp"
#include "nginxconf.hpp"
#include "procscan.hpp"
#include "recording.hpp"
#include "sockdiag.hpp"
#include "sinks.hpp"
#include "state.hpp"
#include "timebase.hpp"

namespace n502 {

namespace {

void error(const std::string &msg) { fmt::print(stderr, "n502trace: error: {}\n", msg); }

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

// A process's state letter, flags and start time from /proc/PID/stat (after
// the comm, which may hold anything, ')' included: the last ')' ends it).
struct StatState {
    char state = '?';
    unsigned long flags = 0;
    unsigned long long start_ticks = 0; // clock ticks since boot (0: not read)
};
std::optional<StatState> read_stat_state(uint32_t pid)
{
    FILE *f = fopen(fmt::format("/proc/{}/stat", pid).c_str(), "r");
    if (!f)
        return std::nullopt;
    char buf[512] = {};
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    std::string st(buf, n);
    auto close = st.rfind(')');
    StatState s;
    if (close == std::string::npos ||
        std::sscanf(st.c_str() + close + 1, " %c %*d %*d %*d %*d %*d %lu %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
                    &s.state, &s.flags, &s.start_ticks) < 2)
        return std::nullopt;
    return s;
}

// Alive: in /proc and neither a zombie nor dead.
bool process_alive(uint32_t pid)
{
    auto s = read_stat_state(pid);
    return s && s->state != 'Z' && s->state != 'X';
}

// Alive and not on its way out: a task in do_exit() (PF_EXITING) may already
// have left its cgroup, which can then be gone.
bool process_staying(uint32_t pid)
{
    auto s = read_stat_state(pid);
    return s && s->state != 'Z' && s->state != 'X' && !(s->flags & N502_PF_EXITING);
}

// When a process started (field 22 of /proc/PID/stat, clock ticks since
// boot), 0 when unreadable.
uint64_t proc_start_ticks(uint32_t pid)
{
    auto s = read_stat_state(pid);
    return s ? s->start_ticks : 0;
}

// Now, in the clock ticks /proc/PID/stat's start time counts (since boot).
uint64_t boot_ticks_now()
{
    timespec ts{};
    clock_gettime(CLOCK_BOOTTIME, &ts);
    long hz = sysconf(_SC_CLK_TCK);
    return static_cast<uint64_t>(ts.tv_sec) * static_cast<uint64_t>(hz) +
           static_cast<uint64_t>(ts.tv_nsec) / (1000000000ULL / static_cast<uint64_t>(hz));
}

// An Nginx master whose command line is exactly `cmdline` and that started
// no earlier than `after_ticks` (when the master it replaces was last seen
// alive: an Nginx that was already running then, such as another container
// made from the same image, is not its successor), preferring one in the
// same cgroup; or 0.
uint32_t find_master(const std::string &cmdline, uint64_t after_ticks, const std::string &cgroup,
                     const std::function<std::string(uint32_t)> &cgroup_of,
                     const std::function<bool(uint32_t)> &followed)
{
    uint32_t found = 0;
    bool found_same_cgroup = false;
    if (DIR *d = opendir("/proc")) {
        while (dirent *de = readdir(d)) {
            char *end = nullptr;
            unsigned long pid = strtoul(de->d_name, &end, 10);
            if (!end || *end || pid == 0)
                continue;
            auto pi = read_proc(static_cast<uint32_t>(pid));
            if (!pi || pi->cmdline != cmdline || !process_alive(pi->pid) || followed(pi->pid))
                continue;
            if (after_ticks && proc_start_ticks(pi->pid) < after_ticks)
                continue;
            bool same = !cgroup.empty() && cgroup_of(pi->pid) == cgroup;
            if (!found || (same && !found_same_cgroup)) {
                found = pi->pid;
                found_same_cgroup = same;
            }
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

int run_check(const std::string &btf_path)
{
    bool ok = true;
    fmt::print("n502trace {} preflight (nothing is attached):\n", N502_VERSION);
    auto facts = Loader::preflight(btf_path);
    // Containers: the cgroup v2 hierarchy (kernel-side selection) and
    // openat2 (logs read inside a container's root without leaving it).
    std::string uroot = unified_root();
    facts.emplace_back("cgroup v2 hierarchy (--container, --cgroup)",
                       uroot.empty() ? "none: containers are selected from /proc/PID/cgroup and --cgroup is "
                                       "unavailable (not a failure)"
                                     : "yes (" + uroot + (uroot == "/sys/fs/cgroup" ? ")" : ", hybrid)"));
    {
        bool ok2 = false;
        // Our own root through openat2: tests the syscall itself.
        int dfd = open("/proc/self/root", O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            int f = open_in_root_fd(dfd, "/", O_PATH | O_DIRECTORY | O_CLOEXEC);
            ok2 = f >= 0;
            if (f >= 0)
                close(f);
            close(dfd);
        }
        facts.emplace_back("openat2 RESOLVE_IN_ROOT (container logs)",
                           ok2 ? "yes" : "no: Linux 5.6+ is needed to read logs inside a container's root");
    }
    {
        uint64_t before = diag_failures();
        diag_tcp(0, 1u << 10 /* TCP_LISTEN */, 0, 0);
        facts.emplace_back("sock_diag (sockets from before the start)",
                           diag_failures() == before
                               ? "yes"
                               : "partial: no TCP socket dumps (`modprobe tcp_diag`): what predates the start is "
                                 "not known");
    }
    for (const auto &[what, result] : facts) {
        fmt::print("  {:<44} {}\n", what, result);
        if (result.rfind("MISSING", 0) == 0 || result.rfind("no:", 0) == 0)
            ok = false;
    }
    fmt::print("{}\n", ok ? "all checks passed" : "some checks failed: see above");
    return ok ? EXIT_OK : EXIT_RUNTIME;
}

namespace {

// One Nginx being followed: its processes, logs and where it lives.
struct Instance {
    NginxInfo info;
    std::string cmdline;                            // the master's, to recognise a restart (--follow)
    uint64_t alive_ticks = 0;                       // when the master was last seen alive (its successor starts later)
    bool own_pidns = false;                         // Nginx logs pids of another pid namespace
    std::unordered_map<uint32_t, uint32_t> host_of; // pid as logged -> host pid
    std::optional<uint32_t> master_ns_pid;
    std::string cgroup;                             // v2 path of the master
    std::optional<ContainerInfo> container;
    std::vector<std::unique_ptr<LogFollower>> errors, access;
    std::string config;                             // main configuration file read
    std::vector<InstanceInfo::Upstream> upstreams;  // what it names, checked at start
    std::vector<std::string> down;                  // warnings for the ones nothing listens on
    std::set<std::string> said;                     // upstream_down, nginx_config warnings said already (code + message)
    uint64_t hup_seen = 0;                          // the last SIGHUP to the master whose reload was read
    bool selected = false;                          // found through --container/--cgroup
    bool gone = false;
    uint64_t access_polled = 0;                     // (boot ns) its access logs were last read
    std::optional<std::pair<uint64_t, std::string>> place; // its cgroup as a place watched for its restart
    uint64_t read_back = 0;                         // bytes of its logs written before it was found, read

    // Merged, never cleared: a worker that has exited (killed, OOM) keeps
    // its mapping for the lines it logged before it went.
    void map_pids()
    {
        if (host_of.size() > 4096)
            host_of.clear(); // many reloads: start again from the living
        std::vector<uint32_t> pids = children_of(info.master);
        pids.push_back(info.master);
        for (uint32_t pid : pids)
            if (auto n = ns_pid(pid))
                host_of[*n] = pid;
    }
    // The host pid of a pid Nginx logged (0: not one of its processes now).
    uint32_t host_pid(uint32_t logged)
    {
        if (!own_pidns)
            return logged;
        auto it = host_of.find(logged);
        if (it == host_of.end()) {
            map_pids(); // a reload forked new workers
            it = host_of.find(logged);
        }
        return it == host_of.end() ? 0 : it->second;
    }
};

// Whether the process's title (its cmdline, which Nginx rewrites) has one
// of these in it.
bool has_title(uint32_t pid, std::initializer_list<const char *> titles)
{
    auto cmd = read_file(fmt::format("/proc/{}/cmdline", pid), 256);
    if (!cmd)
        return false;
    for (const char *title : titles)
        if (cmd->find(title) != std::string::npos)
            return true;
    return false;
}

// A child of an Nginx master that has taken the user it runs as: Nginx sets a
// worker's (or cache process's) title after it changed its uid
// (ngx_worker_process_init). A new master (binary upgrade) never gets one.
bool nginx_child_settled(uint32_t pid)
{
    return has_title(pid, {": worker process", ": cache manager process", ": cache loader process"});
}

// Who Nginx's workers are, for the kernel side's softirq filter
// (bpf/common.bpf.h nginx_uids, nginx_cgroups): the uids they run as and
// the cgroups (v2) they run in, learnt from the workers at start and from
// every worker an Nginx master forks later, since a reload may have changed
// Nginx's `user`. A worker is read once it has its title (see
// nginx_child_settled), within a few milliseconds of its fork; its failures
// seen in softirq before that are filtered out. One that has no title after
// 2 s is not a worker and is let go.
class WorkerIdentity {
public:
    // Told once when a filter is turned off for good: (why, what it costs).
    using Warn = std::function<void(const std::string &)>;
    // uroot: the cgroup v2 root ("": no v2 hierarchy, no cgroup filter).
    WorkerIdentity(Host &host, Loader &loader, std::string uroot, Warn warn)
        : host_(host), loader_(loader), uroot_(std::move(uroot)), warn_(std::move(warn))
    {
    }

    // Learns pid's uid and cgroup; returns its uid when that is new.
    std::optional<uint32_t> learn(uint32_t pid)
    {
        learn_cgroup(pid);
        learnt_pids_.insert(pid);
        auto c = host_.creds(pid);
        if (!c || !uids_.insert(c->uid).second)
            return std::nullopt;
        if (!loader_.add_nginx_uid(c->uid) && uid_filter_) {
            uid_filter_ = false;
            warn_(fmt::format("Nginx's workers run as more uids than the kernel side holds ({}){}", uids_.size() - 1,
                              filter_off("toward an upstream port", "whoever created it")));
        }
        return c->uid;
    }
    // A child of a master, looked at until it has its title (as poll does
    // with the ones it finds).
    void watch(uint32_t pid, uint64_t now) { pending_.push_back({pid, now}); }
    // A worker moved to another cgroup after it was read (cgrulesengd, a
    // write to cgroup.procs).
    struct Moved {
        uint32_t pid;
        std::string cgroup; // its path now
    };
    // The kernel side saw a socket of Nginx's uid fail in softirq in cgroup
    // id, which no worker was seen in (N502_SOCK_OTHER_CGROUP). It is
    // Nginx's when a living worker (or a single-process Nginx) runs there
    // now: their cgroups are read again, and every one new to the filter is
    // learnt (*moved: the workers read before, elsewhere). Else it is another
    // service running as Nginx's user: for a second neither the kernel side
    // announces that cgroup's failures again nor is it looked at again here
    // (the records already on their way). A worker moved into that cgroup
    // within that second has its failures there dropped until it ends.
    bool claim(uint64_t id, const State &state, uint64_t now, std::vector<Moved> *moved)
    {
        constexpr uint64_t kForeignNs = 1'000'000'000ULL;
        if (!cgroup_filter_ || cgroups_.count(id))
            return true;
        auto recent = foreign_.find(id);
        if (recent != foreign_.end() && now - recent->second < kForeignNs)
            return false;
        for (uint32_t pid : state.nginx_pids()) {
            if (!learnt_pids_.count(pid) && !nginx_child_settled(pid))
                continue; // the master of workers, a child not yet a worker (poll's)
            bool added = learn_cgroup(pid);
            if (!cgroup_filter_)
                return true; // turned off (unreadable, or full): nothing is filtered by cgroup
            if (added && learnt_pids_.count(pid)) // (else a worker poll has yet to read, just forked)
                moved->push_back({pid, cgroup_v2_path(pid)});
        }
        if (cgroups_.count(id)) {
            foreign_.erase(id);
            return true;
        }
        if (foreign_.size() >= 1024)
            foreign_.clear();
        foreign_[id] = now;
        loader_.foreign_cgroup(id, now + kForeignNs);
        return false;
    }
    // Nginx went away: a new one (a restart) may run in a new cgroup, which
    // must be learnt before any socket is filtered by cgroup again.
    void forget_cgroups()
    {
        cgroups_.clear();
        loader_.clear_nginx_cgroups();
    }
    // Every pass of the main loop: nothing to do unless Nginx forked or a
    // child is being waited for. Returns the uids learnt that were not known
    // before.
    std::vector<uint32_t> poll(const State &state, uint64_t now)
    {
        std::vector<uint32_t> learnt;
        if (state.nginx_forks() != forks_seen_) {
            forks_seen_ = state.nginx_forks();
            std::set<uint32_t> living;
            for (uint32_t pid : state.nginx_pids()) {
                living.insert(pid);
                const Proc *p = state.proc(pid);
                // A master's child (not, say, a program a worker runs), of
                // a followed master or of its successor (binary upgrade).
                if (p && p->parent && !looked_at_.count(pid) && has_title(p->parent, {": master process"}))
                    pending_.push_back({pid, now});
            }
            for (auto it = learnt_pids_.begin(); it != learnt_pids_.end();)
                it = living.count(*it) ? std::next(it) : learnt_pids_.erase(it);
            looked_at_ = std::move(living); // a pid reused later is looked at again
        }
        for (size_t i = 0; i < pending_.size();) {
            bool settled = nginx_child_settled(pending_[i].pid);
            if (settled)
                if (auto uid = learn(pending_[i].pid))
                    learnt.push_back(*uid);
            if (settled || now - pending_[i].since > 2'000'000'000ULL) {
                pending_[i] = pending_.back();
                pending_.pop_back();
            } else {
                i++;
            }
        }
        return learnt;
    }

private:
    // The id of pid's cgroup (v2): the inode number of its directory, which
    // is the kernel's id on 64-bit kernels. Only a path inside the hierarchy
    // as mounted here counts (from a cgroup namespace of our own, a cgroup
    // outside it reads "/../..").
    std::optional<uint64_t> cgroup_id(uint32_t pid) const
    {
        std::string rel = cgroup_v2_path(pid);
        if (rel.empty() || rel[0] != '/' || rel.find("/..") != std::string::npos)
            return std::nullopt;
        struct stat root{}, st{};
        if (stat(uroot_.c_str(), &root) != 0 || stat((uroot_ + rel).c_str(), &st) != 0 || !S_ISDIR(st.st_mode) ||
            st.st_dev != root.st_dev)
            return std::nullopt;
        return static_cast<uint64_t>(st.st_ino);
    }
    // pid's cgroup into the kernel side's filter; true when it was new to
    // it. A living pid whose cgroup cannot be read, or a filter that fills
    // up, turns the cgroup filter off for good (cgroup_filter_ false); a pid
    // on its way out is let be.
    bool learn_cgroup(uint32_t pid)
    {
        if (uroot_.empty() || !cgroup_filter_)
            return false;
        auto id = cgroup_id(pid);
        if (!id) {
            if (process_staying(pid))
                stop_cgroup_filter(fmt::format("the cgroup of Nginx worker {} cannot be read", pid));
            return false;
        }
        if (!cgroups_.insert(*id).second)
            return false;
        if (loader_.add_nginx_cgroup(*id))
            return true;
        cgroup_filter_ = false;
        warn_(fmt::format("Nginx's workers run in more cgroups than the kernel side holds ({}){}",
                          cgroups_.size() - 1, no_cgroup_filter()));
        return false;
    }
    // A worker's cgroup unknown: no socket may be filtered by cgroup.
    void stop_cgroup_filter(const std::string &why)
    {
        cgroup_filter_ = false;
        loader_.clear_nginx_cgroups(true);
        warn_(why + no_cgroup_filter());
    }
    // What a filter turned off costs.
    static std::string filter_off(const char *socket, const char *counts)
    {
        return fmt::format(": while tracking is lean, a failure seen in softirq on a socket {} counts as Nginx's "
                           "{} (matched to Nginx's errors by upstream and time)",
                           socket, counts);
    }
    static std::string no_cgroup_filter()
    {
        return filter_off("of Nginx's user toward an upstream port", "whatever cgroup created it");
    }

    struct Pending {
        uint32_t pid;
        uint64_t since;
    };
    Host &host_;
    Loader &loader_;
    std::string uroot_;
    std::set<uint32_t> uids_;
    std::set<uint64_t> cgroups_;
    std::unordered_map<uint64_t, uint64_t> foreign_; // cgroup claim() found no worker in -> when
    std::set<uint32_t> learnt_pids_;                  // living processes learn() read
    Warn warn_;
    bool cgroup_filter_ = true; // false: a worker's cgroup could not be known, no filter from then on
    bool uid_filter_ = true;    // false: more uids than the kernel side holds
    std::set<uint32_t> looked_at_; // living Nginx processes, as of the last fork
    std::vector<Pending> pending_;
    uint64_t forks_seen_ = 0;
};

// An Nginx master still starting: not titled "master process" yet, which it
// is once it has read its configuration and opened its logs, and younger
// than 10 s (a configuration can take seconds: names to resolve, many
// certificates). A single-process Nginx is never titled: it is followed
// 10 s after its start.
bool still_starting(uint32_t pid)
{
    auto pi = read_proc(pid);
    if (!pi || pi->cmdline.find("master process") != std::string::npos)
        return false;
    uint64_t started = proc_start_ticks(pid);
    return started && boot_ticks_now() - started < 10 * static_cast<uint64_t>(sysconf(_SC_CLK_TCK));
}

// Nginx masters among these processes (a single-process Nginx counts too).
std::vector<uint32_t> nginx_masters_among(const std::vector<uint32_t> &pids)
{
    std::vector<uint32_t> out;
    for (uint32_t pid : pids) {
        auto pi = read_proc(pid);
        // nginx, nginx-debug (the official image), openresty: by name or title,
        // as discover_nginx() recognises them.
        if (!pi || !named_nginx(*pi) || is_nginx_oneshot(*pi))
            continue;
        auto parent = read_proc(pi->ppid);
        bool parent_nginx = parent && named_nginx(*parent) &&
                            parent->cmdline.find("master process") != std::string::npos;
        if (!parent_nginx && process_alive(pid))
            out.push_back(pid);
    }
    return out;
}

} // namespace

int run(const Options &opt)
{
    auto t_start = std::chrono::steady_clock::now();
    const uint64_t start_ticks = boot_ticks_now(); // (an Nginx started since: its logs are read from its start)
    Timebase tb = Timebase::measure();
    std::unique_ptr<Sink> sink;
    if (opt.json)
        sink = std::make_unique<JsonSink>(stdout, tb);
    else
        sink = std::make_unique<TextSink>(stdout, tb);

    if (!opt.btf_path.empty()) {
        std::string why;
        if (!Loader::check_btf_file(opt.btf_path, &why)) {
            error(why);
            return EXIT_USAGE;
        }
    }
    // Without privileges every later step fails in a less helpful way: say so first.
    if (!have_bpf_privileges()) {
        error("n502trace needs root (or the capabilities CAP_BPF, CAP_PERFMON, CAP_SYS_RESOURCE, CAP_SYS_PTRACE "
              "and CAP_DAC_READ_SEARCH) to load its BPF programs and read Nginx's files: run it with sudo. "
              "`n502trace --check` reports what this host supports.");
        return EXIT_RUNTIME;
    }
    std::string err;
    const RuntimeDirs dirs = RuntimeDirs::from_env();
    const std::string uroot = unified_root();

    // --record: every input of the engine below, as it takes it.
    std::unique_ptr<Recorder> rec;
    if (!opt.record.empty()) {
        rec = Recorder::open(opt.record, opt.record_max, &err);
        if (!rec) {
            error(err);
            return EXIT_USAGE;
        }
        rec->min_segment_ns = 1'000'000'000ULL;
    }
    // What turns inputs into verdicts; with --record its host look-ups and
    // /proc facts are recorded too.
    RealHost real_host;
    LiveFacts live_facts(uroot, dirs);
    std::unique_ptr<RecordingHost> rec_host;
    std::unique_ptr<RecordingFacts> rec_facts;
    if (rec) {
        rec_host = std::make_unique<RecordingHost>(real_host, *rec);
        rec_facts = std::make_unique<RecordingFacts>(live_facts, *rec);
    }
    EngineConfig ecfg;
    ecfg.window_ns = static_cast<uint64_t>(opt.window_s * 1e9);
    ecfg.window_s = opt.window_s;
    ecfg.max_verdicts_per_sec = opt.max_verdicts_per_sec;
    ecfg.grace_ms = opt.grace_ms;
    ecfg.redact = opt.redact;
    ecfg.no_access_log = opt.no_access_log;
    ecfg.dump_events = opt.dump_events;
    ecfg.tb_offset_ns = tb.offset_ns();
    ecfg.boot_ns = boot_now_ns();
    ecfg.real_ns = real_now_ns();
    Engine engine(ecfg, *sink, rec_host ? static_cast<Host *>(rec_host.get()) : &real_host,
                  rec_facts ? static_cast<FactsSource &>(*rec_facts) : live_facts, rec.get());
    if (rec) {
        rec->put(Rec::SnapshotBegin, std::string());
        engine.write_config();
    }

    // --container and --cgroup: the cgroups to watch (v2 paths). On a host
    // without a v2 hierarchy the membership is read from /proc instead.
    struct Selected {
        std::string what;   // as the user gave it
        std::string path;   // cgroup path (v2, or v1 on v1-only hosts)
        std::optional<ContainerInfo> container;
        bool v1 = false;    // path is a v1 cgroup: membership from /proc, no kernel filter
        std::string ref;    // --container REF: resolved again when its container is made again
        uint64_t next_resolve = 0; // (boot ns)
        uint64_t waiting_since = 0; // (boot ns) a container not running: first looked for
    };
    std::vector<Selected> selection;
    for (const auto &ref : opt.containers) {
        std::optional<ContainerInfo> stopped;
        auto rc = resolve_container(ref, dirs, &err, &stopped);
        if (!rc && stopped && !uroot.empty()) {
            // Stopped now (docker stop, a restart policy's back-off): waited
            // for as a container without Nginx is, and followed once it runs
            // (no cgroup until then: its path is learnt when it starts).
            selection.push_back({"container " + ref, "", stopped, false, ref});
            continue;
        }
        if (!rc) {
            error(err);
            return EXIT_USAGE;
        }
        std::string path = uroot.empty() ? memory_cgroup(rc->pid) : cgroup_v2_path(rc->pid);
        // A runtime that does not join the v2 hierarchy (older runc on a
        // hybrid host) leaves its containers in a service's v2 cgroup:
        // selecting that would select every container under it.
        if (!uroot.empty()) {
            auto c2 = container_from_cgroup(path, dirs);
            if (!c2 || c2->id != rc->info.id) {
                std::string v1 = memory_cgroup(rc->pid);
                auto c1 = container_from_cgroup(v1, dirs);
                if (!c1 || c1->id != rc->info.id) {
                    error(fmt::format("container {} ({}): neither its cgroup v2 path {} nor its memory cgroup {} "
                                      "belongs to it alone; select its Nginx with --nginx-pid",
                                      ref, rc->info.id.substr(0, 12), path, v1));
                    return EXIT_RUNTIME;
                }
                engine.warning({"cgroup_v1_only",
                               fmt::format("container {} is not in a cgroup v2 of its own ({}): its processes are "
                                           "found through its v1 cgroup {}, and the kernel filters on the Nginx "
                                           "processes instead of cgroup ids",
                                           ref, path, v1),
                               0});
                selection.push_back({"container " + ref, v1, rc->info, true, ref});
                continue;
            }
        }
        if (path.empty() || path == "/") {
            error(fmt::format("container {} ({}): its cgroup could not be read from /proc/{}/cgroup", ref,
                              rc->info.id.substr(0, 12), rc->pid));
            return EXIT_RUNTIME;
        }
        selection.push_back({"container " + ref, path, rc->info, uroot.empty(), ref});
    }
    for (const auto &arg : opt.cgroups) {
        auto rel = normalise_cgroup_arg(arg, uroot, &err);
        if (!rel) {
            error(err);
            return EXIT_USAGE;
        }
        selection.push_back({"cgroup " + arg, *rel, container_from_cgroup(*rel, dirs), false, ""});
    }
    // The kernel filters by cgroup id: every selected cgroup and those below it.
    std::vector<CgroupRef> selected_cgroups;
    auto walk_selection = [&]() {
        std::vector<CgroupRef> all;
        for (const auto &sel : selection)
            if (!sel.v1 && !sel.path.empty())
                for (auto &cg : cgroup_tree(uroot, sel.path))
                    all.push_back(std::move(cg));
        return all;
    };
    auto pids_in_selection = [&](const Selected &sel) {
        if (sel.path.empty())
            return std::vector<uint32_t>{}; // (a container not running)
        return uroot.empty() || sel.v1 ? pids_with_cgroup_path(sel.path)
                                       : pids_in_cgroups(uroot, cgroup_tree(uroot, sel.path));
    };
    if (!selection.empty() && uroot.empty())
        engine.warning({"cgroup_v1_only",
                       "this host has no cgroup v2 hierarchy: the selected containers' processes are found from "
                       "/proc/PID/cgroup, and the kernel side filters on the Nginx processes themselves instead of "
                       "cgroup ids (verdicts are the same; an Nginx that starts later is found within a second)",
                       0});

    std::vector<std::unique_ptr<Instance>> instances;
    // The logs of an Nginx that went away, where they were read to: a
    // restart in the same place (a container's) writes on in them, and its
    // first lines come before the new master is found.
    struct Parked {
        std::string place; // where its Nginx ran: the container, else the cgroup ("": not known)
        std::string path;
        bool is_error_log = true; // (else an access log)
        std::unique_ptr<LogFollower> f;
        uint64_t since = 0;
        uint64_t size_seen = 0; // at the last look: a successor writing makes it grow
    };
    std::vector<Parked> parked;
    // A place shared by unrelated Nginx (the host's root cgroup, a service's
    // cgroup several containers sit in) is none.
    auto place_of = [](const Instance &in) {
        if (in.container)
            return in.container->runtime + ":" + in.container->id;
        return in.cgroup.empty() || in.cgroup == "/" ? std::string() : "cgroup:" + in.cgroup;
    };
    auto resume_parked = [&](LogFollower &f, const std::string &place, const std::string &path, bool is_error_log) {
        if (place.empty())
            return false;
        for (auto it = parked.begin(); it != parked.end(); ++it)
            if (it->place == place && it->path == path && it->is_error_log == is_error_log && f.resume_from(*it->f)) {
                parked.erase(it);
                return true;
            }
        return false;
    };
    auto have_master = [&](uint32_t master) {
        for (const auto &in : instances)
            if (in->info.master == master)
                return true;
        return false;
    };
    // The cgroup an instance is known by: v2's, or the memory controller's on
    // a host without a v2 hierarchy.
    auto cgroup_of = [&](uint32_t pid) { return uroot.empty() ? memory_cgroup(pid) : cgroup_v2_path(pid); };
    // Where an instance lives, and its log files opened (confined to its root).
    // An Nginx found after it started (started: its master's start, seconds
    // since the epoch; 0 for one running when n502trace started) has its
    // logs read from that start, unless they go on where its predecessor's
    // were parked: the lines it wrote before it was found are explained too
    // (the kernel side followed it from its exec when it started in a place
    // watched). At most the last 4 MiB of each log; more is said.
    constexpr uint64_t kReadBackMax = 4u << 20;
    auto read_back = [&](Instance &in, LogFollower &f, bool is_error_log, int64_t started) {
        bool bounded = false;
        const int64_t now_sec = real_now_ns() / 1'000'000'000;
        LogFollower::StampOf stamp_of;
        if (is_error_log)
            stamp_of = error_line_wall_sec;
        else
            stamp_of = [](std::string_view line) -> std::optional<int64_t> {
                auto a = parse_access_line(line);
                return a ? std::optional<int64_t>(a->wall_sec) : std::nullopt;
            };
        in.read_back += f.back_to(stamp_of, started, now_sec + 2, kReadBackMax, &bounded);
        if (bounded)
            engine.warning({"log_error",
                           fmt::format("{}: Nginx {} wrote more than 4 MiB of it between its start and being found "
                                       "by n502trace: only the last 4 MiB of those lines are read",
                                       f.display(), in.info.master),
                           0});
    };
    auto make_instance = [&](NginxInfo info, bool selected, std::string *why,
                             int64_t started = 0) -> std::unique_ptr<Instance> {
        auto in = std::make_unique<Instance>();
        in->info = std::move(info);
        in->selected = selected;
        if (auto pi = read_proc(in->info.master))
            in->cmdline = pi->cmdline;
        in->alive_ticks = boot_ticks_now();
        uint64_t ours = pidns_of(static_cast<uint32_t>(getpid())), theirs = pidns_of(in->info.master);
        in->own_pidns = ours && theirs && ours != theirs;
        in->master_ns_pid = ns_pid(in->info.master);
        in->map_pids();
        in->cgroup = cgroup_of(in->info.master);
        in->container = container_from_cgroup(in->cgroup, dirs);
        for (const auto &path : in->info.error_logs) {
            auto f = std::make_unique<LogFollower>(path, 64 * 1024, in->info.root);
            if (!f->open(true, why))
                return nullptr;
            if (!resume_parked(*f, place_of(*in), path, true) && started)
                read_back(*in, *f, true, started);
            in->errors.push_back(std::move(f));
        }
        if (!opt.no_access_log)
            for (const auto &path : in->info.access_logs) {
                auto f = std::make_unique<LogFollower>(path, 64 * 1024, in->info.root);
                if (!f->open(true, why))
                    return nullptr;
                if (!resume_parked(*f, place_of(*in), path, false) && started)
                    read_back(*in, *f, false, started);
                in->access.push_back(std::move(f));
            }
        if (in->errors.empty() && in->info.captures.empty()) {
            *why = fmt::format("could not find the error log of Nginx (master {}) among its open files{}; pass it "
                               "with --error-log PATH",
                               in->info.master, in->info.root.empty() ? "" : " (looked inside " + in->info.root + ")");
            return nullptr;
        }
        return in;
    };

    if (opt.nginx_pid) {
        auto nginx = discover_nginx(opt.nginx_pid, &err);
        if (!nginx) {
            error(err);
            return EXIT_USAGE;
        }
        // --error-log/--access-log name this Nginx's logs, as host paths.
        if (!opt.error_logs.empty()) {
            nginx->error_logs = opt.error_logs;
            nginx->root.clear();
            nginx->captures.clear();
        }
        if (!opt.access_logs.empty())
            nginx->access_logs = opt.access_logs;
        auto in = make_instance(*nginx, false, &err);
        if (!in) {
            error(err);
            return EXIT_USAGE;
        }
        instances.push_back(std::move(in));
    }
    std::vector<const Selected *> empty_selections;
    for (const auto &sel : selection) {
        auto masters = nginx_masters_among(pids_in_selection(sel));
        if (masters.empty()) {
            empty_selections.push_back(&sel);
            continue;
        }
        for (uint32_t m : masters) {
            if (have_master(m)) {
                // Also given with --nginx-pid: it is in a selection all the
                // same, so a restart is waited for, not a reason to stop.
                for (auto &in : instances)
                    if (in->info.master == m)
                        in->selected = true;
                continue;
            }
            auto nginx = discover_nginx(m, &err);
            if (!nginx)
                continue; // exited meanwhile
            auto in = make_instance(*nginx, true, &err);
            if (!in) {
                error(err);
                return EXIT_USAGE;
            }
            instances.push_back(std::move(in));
        }
    }
    if (instances.empty()) {
        std::string what;
        for (const auto &sel : selection)
            what += (what.empty() ? "" : ", ") + sel.what + (sel.path.empty() ? " (not running)" : "");
        error(fmt::format("no Nginx master process found in {} (`pgrep -af 'nginx: master'` on the "
                          "host lists masters; give one with --nginx-pid)",
                          what));
        return EXIT_USAGE;
    }
    for (const Selected *sel : empty_selections)
        engine.warning(sel->path.empty()
                           ? Warning{"container_not_running",
                                     fmt::format("{} ({}) is not running: it is followed when it starts",
                                                 sel->what, describe(*sel->container)),
                                     0}
                           : Warning{"no_nginx_in_selection",
                                     fmt::format("no Nginx master runs in {} (cgroup {}) yet: it is followed when "
                                                 "one starts",
                                                 sel->what, sel->path),
                                     0});
    // SIGINT/SIGTERM arrive through a signalfd so the loop can stop cleanly.
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigprocmask(SIG_BLOCK, &mask, nullptr);
    signal(SIGPIPE, SIG_IGN);
    Fd sfd(signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));

    State &state = engine.state();

    // Connections Nginx holds to its upstreams since before we started (a
    // keep-alive pool): found now, adopted by the kernel side at their next
    // state change, and as good as new ones from then on.
    // One process per network namespace: where listeners and older
    // connections are looked for (one /proc walk for both).
    const std::vector<uint32_t> every_netns = one_pid_per_netns();
    std::vector<ExistingConn> existing;
    {
        std::vector<uint32_t> owners;
        for (const auto &in : instances) {
            owners.insert(owners.end(), in->info.workers.begin(), in->info.workers.end());
            owners.push_back(in->info.master);
        }
        existing = scan_connections(owners, every_netns);
    }

    Loader loader;
    LoaderOptions lo;
    lo.adopt_preexisting = !existing.empty();
    lo.ringbuf_bytes = opt.ringbuf_kb * 1024u;
    lo.table_entries = opt.table_entries;
    lo.verbose = opt.verbose;
    lo.unix_sockets = opt.unix_sockets;
    lo.btf_path = opt.btf_path;
    lo.adaptive = opt.tracking == "adaptive";
    lo.filter_cgroups = !selection.empty() && !uroot.empty();
    for (const auto &sel : selection)
        lo.filter_cgroups = lo.filter_cgroups && !sel.v1;
    // With a selection, an Nginx that starts later may log to stderr too.
    lo.capture_logs = !selection.empty();
    for (const auto &in : instances)
        lo.capture_logs = lo.capture_logs || !in->info.captures.empty();
    if (!loader.load(lo, &err) || !loader.attach(&err)) {
        error(err);
        return EXIT_RUNTIME;
    }
    // Loading parsed the kernel's BTF (megabytes, now freed): give it back.
    malloc_trim(0);

    // The kernel-side selection: every selected cgroup (and those below),
    // plus the cgroup of an Nginx given by pid next to them.
    std::unordered_map<uint64_t, std::string> filter_ids;
    uint64_t select_failures = 0;
    auto select_cgroup = [&](const CgroupRef &cg) {
        if (!lo.filter_cgroups || filter_ids.count(cg.id))
            return;
        std::string serr;
        if (loader.select_cgroup(cg.id, &serr))
            filter_ids[cg.id] = cg.path;
        else if (select_failures++ == 0)
            engine.warning({"map_full", serr + " (Nginx in further cgroups is not watched)", 0});
    };
    if (lo.filter_cgroups) {
        for (const auto &cg : walk_selection())
            select_cgroup(cg);
        for (const auto &in : instances)
            for (const auto &cg : cgroup_tree(uroot, in->cgroup.empty() ? "/" : in->cgroup))
                if (cg.path == in->cgroup)
                    select_cgroup(cg);
    }

    // Captured logs (stderr pipes): inode -> the instance that writes there.
    auto start_instance = [&](Instance &in) {
        std::vector<uint32_t> pids = in.info.workers;
        pids.push_back(in.info.master);
        for (uint32_t pid : pids) {
            if (!loader.track_process(pid, N502_PROC_NGINX, &err))
                engine.warning({"map_full", err, 0});
            auto pi = read_proc(pid);
            engine.add_process(pid, N502_PROC_NGINX, pi ? pi->comm : "nginx", pid == in.info.master ? 0 : in.info.master);
        }
        for (const auto &c : in.info.captures) {
            std::string cerr;
            if (!loader.capture_file(c.dev, c.ino, &cerr))
                engine.warning({"log_capture", cerr, 0});
            engine.add_capture(c.dev, c.ino, in.info.captures.front().desc);
        }
    };
    for (auto &in : instances)
        start_instance(*in);
    auto tuple_of = [](const Addr &local, const Addr &remote, uint64_t inode) {
        n502_tuple t{};
        if (local.family == AF_UNIX) { // by inode (see n502_tuple)
            t.family = AF_UNIX;
            std::memcpy(t.saddr, &inode, sizeof(inode));
            return t;
        }
        std::memcpy(t.saddr, local.ip.data(), 16);
        std::memcpy(t.daddr, remote.ip.data(), 16);
        t.sport = local.port;
        t.dport = remote.port;
        t.family = local.family;
        t.netns = remote.loopback() ? remote.netns : 0;
        return t;
    };
    for (const auto &c : existing) {
        std::string perr;
        // Its story began before us: traced event by event from its adoption.
        n502_sock nv{c.nginx_pid, N502_SOCK_NGINX, c.local.family, 0, N502_SOCKF_LIVE, 0, {}};
        if (!loader.add_preexisting(tuple_of(c.local, c.remote, c.inode), nv, &perr))
            engine.warning({"map_full", perr, 0});
        if (c.up_pid) {
            n502_sock uv{c.up_pid, N502_SOCK_UPSTREAM, c.up_local.family, 0, N502_SOCKF_ANNOUNCED, 0, {}};
            if (!loader.add_preexisting(tuple_of(c.up_local, c.up_remote, c.up_inode), uv, &perr))
                engine.warning({"map_full", perr, 0});
            if (!loader.track_process(c.up_pid, N502_PROC_UPSTREAM, &perr))
                engine.warning({"map_full", perr, 0});
        }
        engine.add_preexisting(c.nginx_pid, c.local, c.remote, c.up_pid, c.up_comm, c.up_local, c.up_remote, c.inode,
                               c.up_inode);
    }

    // Listeners that predate us: who holds them, so that their death is seen
    // and their accepts are (the kernel side only looks at accepts by
    // processes it knows). Every holder counts: the children of a pre-fork
    // server (PHP-FPM, gunicorn) accept on the socket their parent opened.
    // Every network namespace: an upstream may sit behind a veth pair in
    // a namespace of its own.
    std::vector<uint64_t> scanned_netns;
    auto scan_listeners = [&](const std::vector<uint32_t> &net_pids) {
        std::vector<uint32_t> todo;
        for (uint32_t pid : net_pids) {
            uint64_t ns = netns_of(pid);
            if (!ns || std::find(scanned_netns.begin(), scanned_netns.end(), ns) != scanned_netns.end())
                continue;
            scanned_netns.push_back(ns);
            todo.push_back(pid);
        }
        if (todo.empty())
            return;
        for (const auto &l : scan_tcp_listeners("/proc", todo)) {
            if (!l.pid)
                continue;
            for (uint32_t holder : l.holders)
                if (!loader.track_process(holder, N502_PROC_LISTENER, &err))
                    engine.warning({"map_full", err, 0});
            engine.add_listener(l.addr, l.pid, l.comm);
        }
    };
    scan_listeners(every_netns);

    // The configuration each Nginx runs with: the upstreams it names, and
    // whether anything listens there now. Many 502 incidents are visible
    // before the first request.
    // A warning about an instance's configuration, once: a reload reads it
    // again and says only what is new.
    auto say_once = [&](Instance &in, const char *code, const std::string &msg) {
        if (in.said.insert(std::string(code) + '\n' + msg).second)
            engine.warning({code, msg, 0});
    };
    auto report_down = [&](Instance &in) {
        for (const auto &msg : in.down)
            say_once(in, "upstream_down", msg);
        in.down.clear();
    };
    // Unix-socket upstreams need the syscall hooks (they have no state
    // tracepoints): attached when a configuration names one, may name one
    // through a variable, or cannot be read.
    auto need_unix = [&](const std::string &why) {
        if (loader.unix_sockets_enabled())
            return;
        std::string uerr;
        if (!loader.enable_unix_sockets(&uerr))
            engine.warning({"unix_sockets", uerr, 0});
        else if (opt.verbose)
            fmt::print(stderr, "n502trace: following unix-socket upstreams: {}\n", why);
    };
    // The ports the kernel's anomaly-only path watches: every upstream's of
    // every configuration followed (all ports when one cannot be known).
    std::set<uint16_t> watched_ports;
    bool watch_all_ports = false;
    auto watch_ports = [&](const NginxConf &conf) {
        // (a file it could not read whole may name upstreams: every port)
        watch_all_ports = watch_all_ports || conf.files.empty() || !conf.problems.empty();
        for (const auto &u : conf.upstreams) {
            auto port = upstream_tcp_port(u);
            if (!port)
                watch_all_ports = true;
            else if (*port)
                watched_ports.insert(*port);
        }
        loader.watch_ports(std::vector<uint16_t>(watched_ports.begin(), watched_ports.end()), watch_all_ports);
    };
    // The uids and cgroups of Nginx's workers: in softirq the kernel side
    // tells Nginx's failing sockets from other clients' of an upstream port
    // by them.
    WorkerIdentity workers_are(real_host, loader, uroot, [&](const std::string &message) {
        if (lo.adaptive) // (full tracking has no such filter)
            engine.warning({"nginx_filter_off", message, 0});
    });
    auto learn_workers = [&](const Instance &in) {
        std::vector<uint32_t> children = children_of(in.info.master);
        if (children.empty())
            workers_are.learn(in.info.master); // no workers: the master connects itself
        for (uint32_t pid : children) {
            if (nginx_child_settled(pid))
                workers_are.learn(pid);
            else
                workers_are.watch(pid, boot_now_ns()); // forked this instant: not its user yet
        }
    };
    // learn: take the workers' uids and cgroups now (a start, a new master);
    // a reload's new workers are learnt by workers_are.poll, which says
    // when their uid is new (warning nginx_user).
    auto check_config = [&](Instance &in, bool report, bool learn = true) {
        if (learn)
            learn_workers(in);
        NginxPaths paths = nginx_paths(in.info.master);
        NginxConf conf = parse_nginx_conf(in.info.root, paths.conf);
        watch_ports(conf);
        if (conf.files.empty())
            need_unix("Nginx's configuration could not be read");
        else if (!conf.problems.empty()) // (what it could not read may name one, as for the ports)
            need_unix("part of Nginx's configuration could not be read: " + conf.problems.front());
        for (const auto &u : conf.upstreams)
            if (u.has_variables || u.address.rfind("unix:", 0) == 0)
                need_unix(fmt::format("{} at {}:{}", u.address, u.file, u.line));
        if (conf.files.empty()) {
            say_once(in, "nginx_config",
                     fmt::format("could not read Nginx's configuration {}{}: {}", paths.conf,
                                 in.info.root.empty() ? "" : " (inside " + in.info.root + ")",
                                 conf.problems.empty() ? "no file" : conf.problems.front()));
            return;
        }
        in.config = conf.main_file;
        for (const auto &pr : conf.problems)
            say_once(in, "nginx_config", pr);
        // Logs the configuration names that the look at Nginx's open files
        // missed (a name that does not say error or access and log: an
        // error_log /var/log/nginx/shop.err in a server{}), followed when
        // Nginx has them open (from now: a reload adding one included); an
        // error_log n502trace cannot read is said. (--error-log and
        // --access-log name the logs themselves.)
        for (const auto &lg : conf.logs) {
            const std::string &t = lg.target;
            const bool unreadable = t.rfind("syslog:", 0) == 0 || t.rfind("memory:", 0) == 0;
            if (lg.error && unreadable)
                say_once(in, "nginx_logs",
                         fmt::format("error_log {} ({}:{}): n502trace cannot read what Nginx logs there; a 502 or "
                                     "504 logged only there is explained from an access log that records it",
                                     t, lg.file, lg.line));
            if (unreadable || t == "stderr" || t.empty() ||
                (lg.error ? !opt.error_logs.empty() : !opt.access_logs.empty() || opt.no_access_log))
                continue;
            std::string path = t[0] == '/' ? t
                                           : paths.prefix + (!paths.prefix.empty() && paths.prefix.back() == '/' ? ""
                                                                                                                 : "/") +
                                                 t;
            auto &named = lg.error ? in.info.error_logs : in.info.access_logs;
            if (std::find(named.begin(), named.end(), path) != named.end() || !nginx_has_open(in.info, path))
                continue;
            auto f = std::make_unique<LogFollower>(path, 64 * 1024, in.info.root);
            std::string why;
            if (!f->open(true, &why)) {
                say_once(in, "nginx_logs", why);
                continue;
            }
            named.push_back(path);
            (lg.error ? in.errors : in.access).push_back(std::move(f));
        }
        uint32_t netns = static_cast<uint32_t>(netns_of(in.info.master));
        in.upstreams.clear();
        in.down.clear();
        for (const auto &u : conf.upstreams) {
            InstanceInfo::Upstream out{u.address, u.group, fmt::format("{}:{}", u.file, u.line), std::nullopt};
            std::optional<Addr> addr;
            if (!u.has_variables) {
                // Only addresses that mean this host: unix sockets, loopback (and "localhost").
                std::string text = u.address;
                if (text.rfind("localhost:", 0) == 0)
                    text = "127.0.0.1" + text.substr(9);
                addr = Addr::parse(text);
                if (addr && addr->family != AF_UNIX) {
                    addr->netns = netns;
                    if (!addr->loopback())
                        addr.reset();
                }
            }
            if (addr) {
                bool up = false;
                for (const Listener *l : state.listeners_on(*addr))
                    up = up || !l->t_unlisten;
                out.listening = up;
                if (!up)
                    in.down.push_back(fmt::format("nothing listens on upstream {}{} ({} {}): requests to it will "
                                                  "fail with 502 until something does",
                                                  u.address, u.group.empty() ? "" : " of upstream " + u.group,
                                                  u.directive, out.where));
            }
            in.upstreams.push_back(out);
        }
        if (report)
            report_down(in);
    };
    for (auto &in : instances)
        check_config(*in, false); // reported right after ready
    loader.ports_settled(); // (a fork since attaching is in what was just read)

    std::unique_ptr<FILE, int (*)(FILE *)> raw(nullptr, fclose);
    if (!opt.raw_record.empty()) {
        raw.reset(fopen(opt.raw_record.c_str(), "wb"));
        if (!raw) {
            error(fmt::format("cannot write {}: {}", opt.raw_record, strerror(errno)));
            return EXIT_USAGE;
        }
    }

    // A socket of Nginx's uid failing in a cgroup no worker was seen in
    // (N502_SOCK_OTHER_CGROUP): Nginx's when a worker was moved there since
    // (its cgroup is learnt, and the record goes on as any other), else
    // another service's, dropped as the kernel side would have.
    std::vector<unsigned char> claimed;
    bool failure_claimed = false;
    uint64_t unplaced_lost = 0;
    auto claim_record = [&](const void *data, size_t len) -> const void * {
        auto u = unplaced_record(data, len);
        if (!u)
            return data;
        auto id = loader.other_cgroup(u->sk);
        if (!id) {
            // Evicted before it was read: whose it was is not known. Told
            // at the 1st, 2nd, 4th, 8th... with the count so far.
            unplaced_lost++;
            if (unplaced_lost & (unplaced_lost - 1))
                return nullptr;
            engine.warning({"events_unplaced",
                            fmt::format("{} failure record(s) seen in softirq on sockets of Nginx's user in cgroups "
                                        "no worker was seen in could not be placed (their cgroup was no longer "
                                        "recorded) and were dropped",
                                        unplaced_lost),
                            unplaced_lost});
            return nullptr;
        }
        std::vector<WorkerIdentity::Moved> moved;
        bool nginx = workers_are.claim(*id, state, boot_now_ns(), &moved);
        if (opt.dump_events) // (placed ones are printed again as they reach the engine)
            if (auto ev = decode(data, len))
                fmt::print(stderr, "unplaced {} sk={:#x} src={} dst={} cgroup={}: {}\n", event_type_name(ev->type),
                           ev->sk, ev->src.str(), ev->dst.str(), *id,
                           nginx ? "Nginx's (a worker runs there)" : "another service's (dropped)");
        for (const auto &m : moved)
            engine.warning({"nginx_cgroup",
                            fmt::format("Nginx worker {} now runs in cgroup {}, not where it was first seen: "
                                        "failures seen in softirq of the sockets it creates there count as "
                                        "Nginx's",
                                        m.pid, m.cgroup.empty() ? "(unknown)" : m.cgroup),
                            0});
        if (!nginx)
            return nullptr;
        claimed.assign(static_cast<const unsigned char *>(data), static_cast<const unsigned char *>(data) + len);
        place_record(claimed.data(), *u);
        failure_claimed = true;
        return claimed.data();
    };
    bool ring_ok = loader.start_ring(
        [&](const void *record, size_t len) {
            const void *data = claim_record(record, len);
            if (!data)
                return;
            if (raw) {
                uint32_t n = static_cast<uint32_t>(len);
                fwrite(&n, sizeof(n), 1, raw.get());
                fwrite(data, 1, len, raw.get());
            }
            // A drain can be megabytes: the bound is checked between records.
            if (rec && rec->on_segment)
                rec->maybe_rotate(boot_now_ns());
            engine.kernel(data, len);
        },
        &err);
    if (!ring_ok) {
        error(err);
        return EXIT_RUNTIME;
    }

    auto instance_info = [&](const Instance &in) {
        InstanceInfo ii;
        ii.master = in.info.master;
        ii.master_ns_pid = in.master_ns_pid;
        ii.workers = in.info.workers;
        for (const auto &f : in.errors)
            ii.error_logs.push_back(f->display());
        for (const auto &f : in.access)
            ii.access_logs.push_back(f->display());
        for (const auto &c : in.info.captures)
            ii.captured_logs.push_back(c.desc);
        ii.cgroup = in.cgroup;
        ii.container = in.container;
        ii.config = in.config;
        ii.upstreams = in.upstreams;
        return ii;
    };
    ReadyInfo ready;
    for (const auto &in : instances)
        ready.instances.push_back(instance_info(*in));
    ready.preexisting = existing.size();
    ready.nginx_pid = instances.front()->info.master;
    ready.workers = instances.front()->info.workers;
    ready.error_logs = ready.instances.front().error_logs;
    ready.access_logs = ready.instances.front().access_logs;
    for (const auto &[id, path] : filter_ids)
        ready.cgroups.emplace_back(path, id);
    std::sort(ready.cgroups.begin(), ready.cgroups.end());
    for (const auto &p : loader.probes()) {
        if (p.attached)
            ready.probes.push_back(p.hook);
        else if (!p.skipped)
            ready.probes_failed.push_back(fmt::format("{}: {}", p.hook, p.error));
    }
    ready.attach_ms = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t_start).count());
    for (const auto &p : loader.probes())
        if (!p.attached && !p.skipped)
            engine.warning({"probe_missing",
                           fmt::format("{} is not attached ({}): verdicts that need it are degraded", p.hook, p.error),
                           0});
    {
        std::string cerr;
        ready.capabilities = drop_capabilities(&cerr);
        if (!cerr.empty())
            engine.warning({"capabilities", "could not drop capabilities after attaching: " + cerr, 0});
    }
    if (rec) {
        rec->put(Rec::SnapshotEnd, std::string());
        // A new segment (--record-max) replays on its own: it starts with what
        // a fresh start would find (Nginx's processes, the listeners, older
        // connections) and the facts already read about processes.
        rec->on_segment = [&]() {
            rec->put(Rec::SnapshotBegin, std::string());
            engine.write_config();
            rec_facts->write_known();
            engine.write_snapshot_state();
            std::vector<uint32_t> net_pids = one_pid_per_netns();
            for (const auto &l : scan_tcp_listeners("/proc", net_pids))
                if (l.pid)
                    rec->put(Rec::AddListener, enc_listener(l.addr, l.pid, l.comm));
            std::vector<uint32_t> owners;
            for (const auto &in : instances)
                if (!in->gone) {
                    owners.insert(owners.end(), in->info.workers.begin(), in->info.workers.end());
                    owners.push_back(in->info.master);
                }
            for (const auto &c : scan_connections(owners, net_pids))
                rec->put(Rec::AddPreexisting, enc_preexisting(c.nginx_pid, c.local, c.remote, c.up_pid, c.up_comm,
                                                              c.up_local, c.up_remote, c.inode, c.up_inode));
            rec->put(Rec::SnapshotEnd, std::string());
        };
    }
    engine.ready(ready);
    if (diag_failures())
        engine.warning({"sock_diag",
                       "the kernel answered no socket dump (sock_diag: inet_diag and tcp_diag not available): "
                       "listeners and connections from before the start are not known, so a failure of one of "
                       "them is explained from what is seen from now on (`modprobe tcp_diag`)",
                       0});
    for (auto &in : instances)
        report_down(*in);
    const bool adaptive = lo.adaptive;
    auto ports_text = [&]() {
        if (watch_all_ports)
            return std::string("every port (a configuration names an upstream whose port cannot be known, or could "
                               "not be read whole)");
        if (watched_ports.empty())
            return std::string("none yet (no TCP upstream in the configuration)");
        return fmt::format("{}", fmt::join(watched_ports, ", "));
    };
    if (adaptive)
        engine.warning({"tracking_lean",
                       fmt::format("adaptive tracking (the default; --tracking full follows every connection "
                                   "whole from the start): watching only failures on sockets toward upstream "
                                   "ports ({}); every connection is followed whole from the first failure or "
                                   "upstream error line on",
                                   ports_text()),
                       0});

    Fd ep(epoll_create1(EPOLL_CLOEXEC));
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = loader.ring_epoll_fd();
    epoll_ctl(ep.get(), EPOLL_CTL_ADD, loader.ring_epoll_fd(), &ev);
    ev.data.fd = sfd.get();
    epoll_ctl(ep.get(), EPOLL_CTL_ADD, sfd.get(), &ev);

    uint64_t next_rebase = boot_now_ns() + 60'000'000'000ULL;
    uint64_t stop_at = opt.duration_s > 0 ? boot_now_ns() + static_cast<uint64_t>(opt.duration_s * 1e9) : 0;
    bool stop = false;
    int exit_code = EXIT_OK;
    uint64_t config_forks_seen = state.nginx_forks();
    uint64_t exits_seen = state.nginx_exits(), next_quick_look = 0, quick_until = 0, next_parked_look = 0;
    // Where a followed Nginx runs, and for a minute where one ran: an Nginx
    // that starts there is tracked by the kernel side from its exec on
    // (Loader::set_nginx_places), before it can be found here. A place is a
    // cgroup (v2) by its parent's id and its name, which a restarted
    // container's or service's cgroup keeps; only a cgroup of Nginx's own (no
    // process in it but the master, its children and its ancestors): not one
    // shared with other services (a runtime's cgroup, on a host where
    // containers have no v2 cgroup of their own).
    struct Place {
        std::string path; // the cgroup's
        uint64_t until;    // boot ns; 0 while its Nginx lives
    };
    std::map<std::pair<uint64_t, std::string>, Place> places; // the kernel side holds 64
    bool places_said = false;
    auto set_places = [&]() {
        std::vector<std::pair<uint64_t, std::string>> keys;
        for (const auto &[key, place] : places)
            keys.push_back(key);
        if (!loader.set_nginx_places(keys) && !std::exchange(places_said, true))
            engine.warning({"nginx_places",
                           fmt::format("the kernel side cannot watch every place a followed Nginx runs or ran for "
                                       "its restart (cgroup names of 120 characters or more, or more than 64 "
                                       "places): an Nginx that starts again there is found by looking, up to 100 "
                                       "ms after its start, and requests before are explained from Nginx's log "
                                       "alone"),
                           0});
    };
    auto place_key = [&](const std::string &cgroup) -> std::optional<std::pair<uint64_t, std::string>> {
        if (uroot.empty() || cgroup.size() < 2 || cgroup[0] != '/')
            return std::nullopt; // (no v2 hierarchy; the root cgroup: every Nginx of the host)
        size_t slash = cgroup.rfind('/');
        struct stat st{};
        if (stat((uroot + cgroup.substr(0, slash)).c_str(), &st) != 0)
            return std::nullopt;
        return std::make_pair(static_cast<uint64_t>(st.st_ino), cgroup.substr(slash + 1));
    };
    auto own_cgroup = [&](const Instance &in) {
        std::set<uint32_t> ancestors;
        for (uint32_t p = in.info.master; p > 1 && ancestors.size() < 64;) {
            auto pi = read_proc(p);
            if (!pi || !ancestors.insert(pi->ppid).second)
                break;
            p = pi->ppid;
        }
        auto pids = pids_in_cgroups(uroot, {{in.cgroup, 0}});
        if (pids.empty())
            return false; // (gone already, or not where it was read: its master at least is in it)
        for (uint32_t pid : pids) {
            bool kin = pid == in.info.master || ancestors.count(pid);
            for (uint32_t p = pid, steps = 0; !kin && p > 1 && steps < 64; steps++) {
                auto pi = read_proc(p);
                if (!pi)
                    break;
                p = pi->ppid;
                kin = p == in.info.master;
            }
            if (!kin && process_staying(pid))
                return false;
        }
        return true;
    };
    // A place no longer watched: the cgroup the kernel side let through for
    // an exec there (if that Nginx was never followed) leaves the selection.
    auto drop_place = [&](decltype(places)::iterator it) {
        struct stat st{};
        if (lo.filter_cgroups && stat((uroot + it->second.path).c_str(), &st) == 0 &&
            !filter_ids.count(static_cast<uint64_t>(st.st_ino)))
            loader.unselect_cgroup(static_cast<uint64_t>(st.st_ino));
        return places.erase(it);
    };
    // A followed Nginx (one that is waited for when it goes) runs here. A
    // place known already is taken again whatever else runs there now (a
    // shell of `docker exec`); a new one only when the cgroup is Nginx's own.
    // Past 64, a place whose Nginx went the longest ago makes room; one of a
    // living Nginx never does.
    auto place_living = [&](Instance &in) {
        if (!opt.follow && !in.selected)
            return;
        auto key = place_key(in.cgroup);
        if (!key || (!places.count(*key) && !own_cgroup(in)))
            return;
        if (!places.count(*key) && places.size() >= 64) {
            auto oldest = places.end();
            for (auto it = places.begin(); it != places.end(); ++it)
                if (it->second.until && (oldest == places.end() || it->second.until < oldest->second.until))
                    oldest = it;
            if (oldest == places.end()) {
                if (!std::exchange(places_said, true))
                    engine.warning({"nginx_places",
                                   fmt::format("more than 64 followed Nginx: the kernel side does not watch the "
                                               "place of {} ({}) for its restart, which is found by looking, up to "
                                               "100 ms after its start",
                                               in.info.master, in.cgroup),
                                   0});
                return;
            }
            drop_place(oldest);
        }
        places[*key] = {in.cgroup, 0};
        in.place = key;
        set_places();
    };
    for (const auto &in : instances)
        place_living(*in);
    std::string exit_reason; // said on stderr too when stdout is for a program
    unsigned trim_tick = 0;

    // now: boot ns (LogFollower::kCheckPath: look for rotations whatever the time).
    uint64_t lines_read = 0; // log lines of any kind, for the poll interval
    // An access log in a format not understood gives nothing, silently:
    // said once per file when none of its first 50 lines parses.
    std::unordered_map<std::string, std::pair<int, int>> access_format; // path -> seen, understood
    auto check_access_format = [&](const LogFollower &f, const std::string &line) {
        if (access_format.size() > 1024)
            return; // (paths beyond: not checked)
        auto &[seen, ok] = access_format[f.path()];
        if (seen >= 50)
            return;
        seen++;
        ok += parse_access_line(line).has_value();
        if (seen == 50 && ok == 0)
            engine.warning({"access_log_format",
                           fmt::format("none of the first 50 lines of access log {} is in the layout n502trace reads "
                                       "(the combined format's start: $remote_addr - $remote_user [$time_local] "
                                       "\"$request\" $status): a 502 or 504 that Nginx answered without an error-log "
                                       "line is not found from it (--no-access-log stops reading it)",
                                       f.path()),
                           0});
    };
    uint64_t untracked_seen = 0;
    auto take_counters = [&](bool final = false) {
        KernelCounters kc = final ? loader.final_counters() : loader.counters();
        engine.counters({kc.lost, kc.map_full + kc.evicted}); // (a table entry not made, or forgotten)
        bool more = kc.untracked > untracked_seen || failure_claimed;
        untracked_seen = kc.untracked;
        return more;
    };
    // Between batches of log lines read while draining (at exit, or a
    // departed Nginx's logs): the kernel's events so far, then the lines
    // whose wait is over are explained (what waits stays bounded), each
    // verdict seeing every loss counted so far.
    auto drain_step = [&]() {
        loader.consume();
        engine.tick(boot_now_ns(), real_now_ns());
        if (engine.has_pending())
            take_counters();
        engine.step();
    };
    // A poll reads at most 1 MiB of each log (LogFollower::capped): while
    // one is behind, the loop polls again at once, and an instance's access
    // logs wait for its error logs (an access line is checked for its
    // error-log verdict soon after it is read), for 200 ms at most (their
    // rotations are looked for too).
    bool logs_behind = false;
    auto read_logs = [&](uint64_t now) {
        bool any = false;
        logs_behind = false;
        const bool drain = now == LogFollower::kCheckPath;
        const uint64_t at = drain ? 0 : now;
        for (auto &in : instances) {
            bool errors_behind = false;
            const bool access_due = drain || at - in->access_polled >= 200'000'000;
            for (auto *list : {&in->errors, &in->access})
                for (auto &f : *list) {
                    if (list == &in->access && errors_behind && !access_due)
                        continue;
                    auto got = f->poll(now);
                    if (f->capped()) {
                        logs_behind = true;
                        errors_behind = errors_behind || list == &in->errors;
                    }
                    for (auto &fe : got) {
                        if (fe.kind != FollowEvent::Line) {
                            if (list == &in->errors || fe.kind == FollowEvent::Error)
                                engine.warning({"log_" + std::string(fe.kind == FollowEvent::Rotated     ? "rotated"
                                                                    : fe.kind == FollowEvent::Truncated ? "truncated"
                                                                    : fe.kind == FollowEvent::Error     ? "error"
                                                                                                        : "vanished"),
                                               fe.text, 0});
                            continue;
                        }
                        Instance *inp = in.get();
                        lines_read++;
                        if (list == &in->access)
                            check_access_format(*f, fe.text);
                        if (rec)
                            rec->maybe_rotate(now == LogFollower::kCheckPath ? boot_now_ns() : now);
                        any = engine.log_line(fe.text, [inp](uint32_t logged) { return inp->host_pid(logged); }) ||
                              any;
                    }
                }
            if (!errors_behind || access_due)
                in->access_polled = at;
        }
        return any;
    };
    // A new Nginx master to follow (restart with --follow, or one that
    // started in a selected container).
    std::unordered_map<uint32_t, bool> adopt_failed; // masters whose logs could not be found: said once
    auto adopt = [&](uint32_t master, bool selected, const char *code, const std::string &why) {
        if (adopt_failed.count(master) || still_starting(master))
            return false; // (starting: looked at again at the next poll)
        std::string derr;
        auto again = discover_nginx(master, &derr);
        if (!again)
            return false;
        // Started since n502trace did: when, in the wall clock's seconds
        // (its lines' stamps are cut to the second; the start is known to a
        // clock tick, 20 ms allowed for that).
        int64_t started = 0;
        if (uint64_t st = proc_start_ticks(master); st && st >= start_ticks) {
            const auto tick_ns = static_cast<int64_t>(1'000'000'000 / sysconf(_SC_CLK_TCK));
            const int64_t ago_ns = static_cast<int64_t>(boot_ticks_now() - st) * tick_ns;
            started = (real_now_ns() - ago_ns - 20'000'000) / 1'000'000'000;
        }
        auto in = make_instance(*again, selected, &derr, started);
        if (!in) {
            if (adopt_failed.size() > 4096)
                adopt_failed.clear();
            adopt_failed[master] = true;
            engine.warning({"nginx_logs", derr, 0});
            return false;
        }
        start_instance(*in);
        scan_listeners({in->info.master});
        check_config(*in, false); // its upstreams' state is said after it is
        place_living(*in);
        if (lo.filter_cgroups)
            for (const auto &cg : cgroup_tree(uroot, in->cgroup.empty() ? "/" : in->cgroup))
                if (cg.path == in->cgroup)
                    select_cgroup(cg);
        InstanceInfo ii = instance_info(*in);
        std::vector<std::string> logs = ii.error_logs;
        logs.insert(logs.end(), ii.captured_logs.begin(), ii.captured_logs.end());
        engine.warning({code,
                       fmt::format("{}: following Nginx master {}{} (workers {}; logs {}){}", why, in->info.master,
                                   in->container ? " in " + describe(*in->container) : "",
                                   fmt::format("{}", fmt::join(in->info.workers, " ")),
                                   fmt::format("{}", fmt::join(logs, ", ")),
                                   in->read_back ? fmt::format("; {} bytes of its log lines from before it was "
                                                               "found are read too",
                                                               in->read_back)
                                                 : ""),
                       0});
        report_down(*in);
        instances.push_back(std::move(in));
        return true;
    };
    auto check_instances = [&]() {
        // A parked log is kept two minutes for a successor (a container's
        // restart takes seconds), at most 64 of them.
        uint64_t now_parked = boot_now_ns();
        parked.erase(std::remove_if(parked.begin(), parked.end(),
                                    [&](const Parked &p) { return now_parked - p.since > 120'000'000'000ULL; }),
                     parked.end());
        if (parked.size() > 64)
            parked.erase(parked.begin(), parked.begin() + static_cast<long>(parked.size() - 64));
        for (auto &inp : instances) {
            Instance &in = *inp;
            if (in.gone)
                continue;
            if (process_staying(in.info.master)) { // (a master in do_exit() is gone)
                in.alive_ticks = boot_ticks_now();
                continue;
            }
            // A binary upgrade (USR2, then QUIT to the old master) leaves a
            // new master that the old one forked: we already track it.
            uint32_t successor = 0;
            for (uint32_t pid : state.nginx_pids()) {
                if (pid == in.info.master || have_master(pid) || !process_alive(pid))
                    continue;
                const Proc *p = state.proc(pid);
                auto pi = read_proc(pid);
                if (p && p->parent == in.info.master && pi && pi->cmdline.find("master process") != std::string::npos)
                    successor = pid;
            }
            if (successor) {
                engine.warning({"nginx_new_master",
                               fmt::format("the Nginx master {} has exited; following its successor {} (binary "
                                           "upgrade)",
                                           in.info.master, successor),
                               0});
                in.info.master = successor;
                in.info.workers = children_of(successor);
                in.map_pids();
                continue;
            }
            in.gone = true;
            // Its successor (a restart) may run in a new cgroup: no socket
            // is filtered by cgroup until the living instances' are relearnt.
            workers_are.forget_cgroups();
            for (auto &other : instances)
                if (!other->gone)
                    learn_workers(*other);
            // What it wrote before it went still counts; then its logs are
            // parked where they were read to (a restarted Nginx is followed
            // as a new instance, from there when it writes to the same file).
            const std::string place = place_of(in);
            for (auto *list : {&in.errors, &in.access}) {
                for (auto &f : *list) {
                    // (1 MiB at a time: LogFollower::capped; the kernel's
                    // events drained in between; 256 MiB at most)
                    for (int batch = 0; batch < 256 && (batch == 0 || f->capped()); batch++) {
                        for (auto &fe : f->poll()) {
                            if (fe.kind == FollowEvent::Line)
                                engine.log_line(fe.text, [&in](uint32_t logged) { return in.host_pid(logged); });
                            else if (fe.kind == FollowEvent::Error)
                                engine.warning({"log_error", fe.text, 0});
                        }
                        drain_step();
                    }
                    if (f->capped())
                        engine.warning({"log_error",
                                       fmt::format("{}: Nginx {} went with 256 MiB of its log read since and more "
                                                   "unread: the rest is not read",
                                                   f->display(), in.info.master),
                                       0});
                    if (!place.empty()) {
                        uint64_t size = f->size();
                        parked.push_back({place, f->path(), list == &in.errors, std::move(f), boot_now_ns(), size});
                    }
                }
                list->clear();
            }
            for (const auto &c : in.info.captures) {
                loader.uncapture_file(c.dev, c.ino);
                engine.remove_capture(c.dev, c.ino);
            }
            bool waits = opt.follow || in.selected;
            if (waits)
                quick_until = boot_now_ns() + 60'000'000'000ULL;
            // Its place is watched a minute more, unless another followed Nginx
            // lives there (still watched in the kernel: nothing to set).
            if (in.place && waits && places.count(*in.place) &&
                std::none_of(instances.begin(), instances.end(),
                             [&](const auto &o) { return !o->gone && o->place == in.place; }))
                places[*in.place].until = quick_until;
            engine.warning({"nginx_gone",
                           fmt::format("the Nginx master {} has exited{}", in.info.master,
                                       in.selected ? "; waiting for Nginx to start again in the selection"
                                       : opt.follow ? "; waiting for a new one (--follow)"
                                                    : "; stopping (--follow waits for a new one)"),
                           0});
            if (!waits) {
                exit_code = EXIT_RUNTIME;
                exit_reason = fmt::format("the Nginx master {} has exited; stopping (--follow waits for a new one)",
                                          in.info.master);
                stop = true;
            }
        }
        // --follow: a new master started with the same command line.
        for (size_t i = 0; i < instances.size(); i++) {
            Instance &in = *instances[i];
            if (!in.gone || in.selected || !opt.follow || in.cmdline.empty())
                continue;
            if (uint32_t pid = find_master(in.cmdline, in.alive_ticks, in.cgroup, cgroup_of, have_master); pid)
                if (adopt(pid, false, "nginx_restarted", fmt::format("a new Nginx master {} started", pid)))
                    instances[i]->cmdline.clear(); // followed: do not adopt twice
        }
        // The selection: new cgroups (a restarted container) and new masters;
        // cgroups that are gone leave the kernel's map.
        if (!selection.empty()) {
            // --container NAME: a container removed and made again under
            // the same name (docker compose up, docker rm + run) has a new
            // id and cgroup; follow the name, as the user gave it.
            for (auto &sel : selection) {
                if (sel.ref.empty() || sel.v1 || !sel.container || uroot.empty() || now_parked < sel.next_resolve)
                    continue;
                // A container not running when n502trace started has no
                // path yet: looked for every second until it runs.
                const bool waiting = sel.path.empty();
                struct stat st{};
                if (!waiting && stat((uroot + sel.path).c_str(), &st) == 0)
                    continue;
                // (reads the runtimes' state: not at every look; more often
                // in the minute after a master went)
                // (a container not running: every second for its first
                // minute of waiting, every 5 s after)
                if (waiting && !sel.waiting_since)
                    sel.waiting_since = now_parked;
                const bool quick = now_parked < quick_until;
                const bool waiting_quick = waiting && now_parked - sel.waiting_since < 60'000'000'000ULL;
                sel.next_resolve = now_parked + (quick           ? 500'000'000ULL
                                                 : waiting_quick ? 1'000'000'000ULL
                                                                 : 5'000'000'000ULL);
                std::string rerr;
                auto rc = resolve_container(sel.ref, dirs, &rerr);
                if (!rc || (!waiting && rc->info.id == sel.container->id))
                    continue;
                std::string path = cgroup_v2_path(rc->pid);
                auto c2 = container_from_cgroup(path, dirs);
                const bool own_v2 = !path.empty() && path != "/" && c2 && c2->id == rc->info.id;
                // (a path read, and its process still there: not a crash
                // between the look-up and the read, tried again then)
                if (waiting && rc->info.id == sel.container->id && !own_v2 && !path.empty() &&
                    access(fmt::format("/proc/{}", rc->pid).c_str(), F_OK) == 0) {
                    // Not in a cgroup v2 of its own (older runc on a hybrid
                    // host): the kernel side filters on cgroup ids, set at
                    // start; this container cannot be added now.
                    engine.warning({"cgroup_v1_only",
                                   fmt::format("{} ({}) started, but not in a cgroup v2 of its own ({}): it is not "
                                               "followed; run n502trace again, or give its Nginx with --nginx-pid",
                                               sel.what, describe(rc->info), path),
                                   0});
                    sel.ref.clear(); // (not looked for again)
                    continue;
                }
                if (!own_v2)
                    continue;
                if (waiting && rc->info.id == sel.container->id)
                    engine.warning({"container_started",
                                   fmt::format("{} ({}) started: following it (cgroup {})", sel.what,
                                               describe(rc->info), path),
                                   0});
                else
                    engine.warning({"container_recreated",
                                   fmt::format("container {} was made again: following {} (cgroup {}) instead of {}",
                                               sel.ref, describe(rc->info), path, describe(*sel.container)),
                                   0});
                sel.path = path;
                sel.container = rc->info;
            }
            if (lo.filter_cgroups) {
                std::unordered_map<uint64_t, bool> present;
                for (const auto &cg : walk_selection()) {
                    present[cg.id] = true;
                    select_cgroup(cg);
                }
                for (const auto &in : instances)
                    if (!in->gone)
                        for (const auto &cg : cgroup_tree(uroot, in->cgroup.empty() ? "/" : in->cgroup))
                            if (cg.path == in->cgroup)
                                present[cg.id] = true;
                for (auto it = filter_ids.begin(); it != filter_ids.end();) {
                    if (present.count(it->first)) {
                        ++it;
                        continue;
                    }
                    loader.unselect_cgroup(it->first);
                    it = filter_ids.erase(it);
                }
            }
            for (const auto &sel : selection)
                for (uint32_t m : nginx_masters_among(pids_in_selection(sel)))
                    if (!have_master(m))
                        adopt(m, true, "nginx_started", fmt::format("Nginx started in {}", sel.what));
        }
    };

    // Cgroups made since the last look (the kernel side's N502_EV_CGROUP,
    // sent while containers or cgroups are selected): a selected container
    // that starts, or is made again under its name, is followed from its
    // cgroup's making on, before the runtime starts anything in it: the
    // cgroup is let through the kernel side's selection and watched as a
    // place (its Nginx tracked from its exec), and the selection is looked
    // at every 100 ms for its Nginx. Its next look would have come up to 5 s
    // later, with the first requests' kernel evidence (and, before its logs
    // were read from its start, their log lines) lost. A cgroup made below
    // a selected one is let through as walk_selection would.
    auto cgroups_made = [&](uint64_t now) {
        bool overflow = false;
        auto ids = engine.take_made_cgroups(&overflow);
        bool any = overflow; // (some not listed: the looks find them)
        for (uint64_t id : ids) {
            std::string path = uroot.empty() ? std::string() : cgroup_path_by_id(uroot, id);
            if (path.empty() || path == "/")
                continue; // (gone already)
            for (auto &sel : selection) {
                if (sel.v1)
                    continue;
                const bool under = !sel.path.empty() && (path == sel.path || path.rfind(sel.path + "/", 0) == 0);
                if (!under) {
                    if (sel.ref.empty() || !sel.container)
                        continue;
                    auto c = container_from_cgroup(path, dirs);
                    const bool same = c && c->id == sel.container->id;
                    // (made again: only when it was given by that name)
                    const bool renamed = c && !same && !c->name.empty() && c->name == sel.container->name &&
                                         (sel.ref == c->name || sel.ref == "/" + c->name);
                    if (!same && !renamed)
                        continue;
                    if (same && sel.path.empty())
                        engine.warning({"container_started",
                                       fmt::format("{} ({}) started: following it (cgroup {})", sel.what,
                                                   describe(*c), path),
                                       0});
                    else
                        engine.warning({"container_recreated",
                                       fmt::format("container {} was made again: following {} (cgroup {}) instead "
                                                   "of {}",
                                                   sel.ref, describe(*c), path, describe(*sel.container)),
                                       0});
                    sel.path = path;
                    sel.container = *c;
                    if (auto key = place_key(path); key && !places.count(*key) && places.size() < 64) {
                        places[*key] = {path, now + 60'000'000'000ULL};
                        set_places();
                    }
                }
                select_cgroup({path, id});
                any = true;
            }
        }
        if (any) {
            quick_until = std::max<uint64_t>(quick_until, now + 60'000'000'000ULL);
            next_quick_look = 0;
        }
    };

    // --tracking adaptive: full from the first failure the kernel saw (it
    // switched itself) or upstream error line, lean again after calm_ns of
    // neither.
    bool full_now = !adaptive;
    uint64_t last_trouble = 0;
    const uint64_t calm_ns = static_cast<uint64_t>(opt.calm_s * 1e9);
    auto track = [&](uint64_t now, bool error_line, bool kernel_failure) {
        bool claimed_now = std::exchange(failure_claimed, false); // a failure the kernel side left to us
        if (!adaptive)
            return;
        if (error_line || kernel_failure)
            last_trouble = now;
        if (!full_now && (error_line || claimed_now || loader.tracking_full())) {
            std::string terr;
            if (!loader.set_tracking_full(true, &terr))
                engine.warning({"tracking", terr, 0});
            full_now = true;
            last_trouble = now;
            engine.warning({"tracking_full",
                           fmt::format("following every upstream connection whole from now on: {}; failures only "
                                       "again after {:g} s without one (--calm-after)",
                                       error_line ? "Nginx logged an upstream error"
                                                  : "the kernel saw a failure on a socket toward an upstream port",
                                       opt.calm_s),
                           0});
        } else if (full_now && now - last_trouble > calm_ns) {
            std::string terr;
            loader.set_tracking_full(false, &terr);
            full_now = false;
            engine.warning({"tracking_lean",
                           fmt::format("no upstream error or failure for {:g} s: watching only failures on sockets "
                                       "toward upstream ports ({}) again",
                                       opt.calm_s, ports_text()),
                           0});
        }
    };
    // A reload: the master read its configuration again before forking new
    // workers (a reload that fails forks none), so the file on disk is what
    // they run. Its upstreams' ports are watched from then on (the old
    // workers' stay watched while they drain). From the fork until then the
    // kernel side watches every port (ports_unsure).
    // Nginx's master forks a worker at once when one dies unasked: new
    // workers each of which came within a second of a worker's death (after
    // the SIGHUP) replace the dead. A reload's come before any old one exits.
    auto respawned = [&](uint32_t master, const std::vector<uint32_t> &fresh, uint64_t hup) {
        uint64_t first = UINT64_MAX, last = 0;
        for (uint32_t k : fresh) {
            const Proc *p = state.proc(k);
            if (!p)
                return false; // its fork was not seen
            first = std::min(first, p->first_seen);
            last = std::max(last, p->first_seen);
        }
        uint64_t from = std::max<uint64_t>(hup, first > 1'000'000'000ULL ? first - 1'000'000'000ULL : 0);
        return state.children_exited(master, from, last) >= fresh.size();
    };
    auto follow_reloads = [&]() {
        if (state.nginx_forks() == config_forks_seen)
            return;
        config_forks_seen = state.nginx_forks();
        for (auto &inp : instances) {
            Instance &in = *inp;
            if (in.gone)
                continue;
            std::vector<uint32_t> kids = children_of(in.info.master);
            std::vector<uint32_t> fresh;
            for (uint32_t k : kids)
                if (std::find(in.info.workers.begin(), in.info.workers.end(), k) == in.info.workers.end())
                    fresh.push_back(k);
            if (fresh.empty())
                continue;
            in.info.workers = kids;
            in.map_pids();
            // Only a reload (SIGHUP to the master) reads the configuration
            // again. A worker respawned after one died runs the one already
            // read, whatever the file says now: also after a SIGHUP whose
            // reload failed (the file did not pass; no worker was forked).
            uint64_t hup = 0;
            if (const Proc *mp = state.proc(in.info.master))
                for (const SignalRec &sr : mp->signals)
                    if (sr.sig == SIGHUP && sr.ts > in.hup_seen)
                        hup = sr.ts;
            if (!hup || respawned(in.info.master, fresh, hup))
                continue;
            in.hup_seen = hup;
            auto addresses = [&in]() {
                std::vector<std::string> out;
                for (const auto &u : in.upstreams)
                    out.push_back(u.address);
                return out;
            };
            std::vector<std::string> before = addresses();
            check_config(in, true, false);
            std::vector<std::string> after = addresses();
            if (after != before)
                engine.warning({"nginx_reloaded",
                               fmt::format("Nginx master {} runs a new configuration ({}): its upstreams are now "
                                           "{}; {}",
                                           in.info.master, in.config.empty() ? "not readable" : in.config,
                                           after.empty() ? "none" : fmt::format("{}", fmt::join(after, ", ")),
                                           adaptive ? "watching failures toward ports " + ports_text()
                                                    : "every connection is followed (full tracking)"),
                               0});
        }
        // The kernel side watched every port since the fork: the ports are
        // known again.
        loader.ports_settled();
    };
    // The kernel side wakes us only for bursts (bpf/common.bpf.h): we poll,
    // every 10 ms while there is something to do, every 50 ms while neither
    // the kernel side nor the logs had anything (each wakeup costs a few
    // syscalls and may take a CPU from Nginx). The kernel side's counters
    // are read every 100 ms, and on every loop while lines wait.
    constexpr int kBusyPollMs = 10, kIdlePollMs = 50;
    constexpr uint64_t kCountersNs = 100'000'000;
    bool busy = true;
    uint64_t next_counters = 0;
    while (!stop) {
        epoll_event evs[4];
        int n = epoll_wait(ep.get(), evs, 4, logs_behind ? 0 : busy ? kBusyPollMs : kIdlePollMs);
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
        if (rec)
            rec->maybe_rotate(boot_now_ns()); // between inputs: a new segment starts with a snapshot
        uint64_t now = boot_now_ns();
        engine.tick(now, real_now_ns());
        int consumed = loader.consume();
        if (consumed < 0)
            engine.warning({"ring_error", "reading the ring buffer failed", 0});
        cgroups_made(now);
        uint64_t lines_before = lines_read;
        bool error_line = read_logs(now);
        if (error_line) {
            // The kernel events behind a line were produced before Nginx wrote
            // it: drain them before correlating.
            loader.consume();
        }
        bool pending = engine.has_pending();
        busy = consumed > 0 || lines_read != lines_before || pending;
        bool kernel_failure = failure_claimed;
        // A line about to be explained sees every loss counted so far (its
        // verdict says when events were lost).
        if (now >= next_counters || error_line || pending) {
            next_counters = now + kCountersNs;
            kernel_failure = take_counters() || kernel_failure;
        }
        track(now, error_line, kernel_failure);
        follow_reloads();
        for (uint32_t uid : workers_are.poll(state, now))
            if (lo.adaptive)
                engine.warning({"nginx_user",
                               fmt::format("new Nginx workers run as uid {}, which none ran as before (a reload "
                                           "changed Nginx's `user`): while tracking is lean, their connections' "
                                           "failures seen in softirq count as Nginx's from now on",
                                           uid),
                               0});
        // Nginx's processes are looked at once a second; and at most every
        // 100 ms when an Nginx process exited (a master gone: its logs are
        // parked before a successor writes to them), for a minute after a
        // master went, or while a parked log grows (a successor starting:
        // its cgroup, new with a container's restart, is let through the
        // kernel side's filter before its first request).
        if (now >= next_quick_look) {
            bool grew = false;
            if (!parked.empty() && now >= next_parked_look) { // (fstat each: every 100 ms, not every poll)
                next_parked_look = now + 100'000'000ULL;
                for (auto &p : parked) {
                    uint64_t size = p.f->size();
                    grew = grew || size != p.size_seen;
                    p.size_seen = size;
                }
            }
            if (grew || now < quick_until || state.nginx_exits() != exits_seen) {
                next_quick_look = now + 100'000'000ULL;
                exits_seen = state.nginx_exits();
                check_instances();
            }
            // A place no Nginx came back to for a minute: no longer watched.
            bool expired = false;
            for (auto it = places.begin(); it != places.end();) {
                if (!it->second.until || now < it->second.until) {
                    ++it;
                    continue;
                }
                it = drop_place(it);
                expired = true;
            }
            if (expired)
                set_places();
        }
        if (engine.step()) { // once a second
            if (++trim_tick % 10 == 0)
                malloc_trim(0); // bursts (502 storms) should not leave the heap grown
            check_instances();
        }
        if (now >= next_rebase) {
            next_rebase = now + 60'000'000'000ULL;
            tb = Timebase::measure(); // follow wall-clock steps (NTP)
            engine.set_timebase(tb);
        }
        if (rec) {
            rec->flush();
            engine.check_recorder();
        }
        if (stop_at && now >= stop_at)
            stop = true;
        if (output_error())
            stop = true; // nobody reads the verdicts (or they cannot be written)
    }

    // Drain: kernel events and log lines already written still count.
    engine.tick(boot_now_ns(), real_now_ns());
    loader.consume();
    // (1 MiB of each log at a time: LogFollower::capped; for 10 s at most)
    const uint64_t drain_until = boot_now_ns() + 10'000'000'000ULL;
    do {
        read_logs(LogFollower::kCheckPath);
        drain_step();
    } while (logs_behind && boot_now_ns() < drain_until);
    if (logs_behind)
        engine.warning({"log_error",
                       "stopped reading the logs at exit after 10 s with more of them unread: lines written while "
                       "n502trace was behind were not all read",
                       0});
    take_counters(true);
    uint64_t rss_kib = 0;
    if (FILE *f = fopen("/proc/self/status", "r")) {
        char line[256];
        while (fgets(line, sizeof(line), f))
            if (sscanf(line, "VmRSS: %" SCNu64, &rss_kib) == 1)
                break;
        fclose(f);
    }
    engine.finish(std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count(), rss_kib);
    if (rec)
        engine.check_recorder();
    if (!exit_reason.empty() && (opt.json || !isatty(STDOUT_FILENO)))
        error(exit_reason);
    if (int e = output_error()) {
        // A reader that has gone (`| head -1`) took what it wanted; anything
        // else lost output.
        if (e == EPIPE)
            return exit_code;
        error(fmt::format("writing the output failed ({}): stopped", strerror(e)));
        return EXIT_RUNTIME;
    }
    return exit_code;
}

} // namespace n502
