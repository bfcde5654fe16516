#include "engine.hpp"

#include <cstdlib>
#include <cstring>
#include <ctime>
#include <utility>
#include <fmt/format.h>

#include "app.hpp"
#include "nginx.hpp"

namespace n502 {

// ------------------------------------------------------------------ facts and host answers

ProcFacts LiveFacts::proc(uint32_t pid, uint64_t cgroup_id)
{
    ProcFacts f;
    f.memory_cgroup = memory_cgroup(pid);
    f.memory_limit = memory_limit(f.memory_cgroup);
    f.ns_pid = ns_pid(pid);
    f.cgroup2 = cgroup_v2_path(pid);
    if (f.cgroup2.empty() && cgroup_id) // gone from /proc: the kernel said where it was
        f.cgroup2 = cgroup_path_by_id(uroot_, cgroup_id);
    return f;
}

std::optional<ContainerInfo> LiveFacts::container(const std::string &cgroup_path)
{
    return container_from_cgroup(cgroup_path, dirs_);
}

static Enc enc_facts(uint32_t pid, uint64_t cgroup_id, const ProcFacts &f)
{
    Enc e;
    e.u32(pid).u64(cgroup_id).str(f.memory_cgroup).u64(f.memory_limit).u8(f.ns_pid ? 1 : 0).u32(f.ns_pid.value_or(0));
    e.str(f.cgroup2);
    return e;
}

static ProcFacts dec_facts(Dec &d, uint32_t *pid)
{
    ProcFacts f;
    *pid = d.u32();
    d.u64();
    f.memory_cgroup = d.str();
    f.memory_limit = d.u64();
    bool has = d.u8();
    uint32_t n = d.u32();
    if (has)
        f.ns_pid = n;
    f.cgroup2 = d.str();
    return f;
}

ProcFacts RecordingFacts::proc(uint32_t pid, uint64_t cgroup_id)
{
    ProcFacts f = inner_.proc(pid, cgroup_id);
    rec_.put(Rec::AnsFacts, enc_facts(pid, cgroup_id, f));
    if (known_.size() > 8192)
        known_.clear();
    known_[pid] = {cgroup_id, f};
    return f;
}

std::optional<ContainerInfo> RecordingFacts::container(const std::string &path)
{
    auto c = inner_.container(path);
    rec_.put(Rec::AnsContainer, Enc().str(path).container(c));
    if (containers_.size() > 4096)
        containers_.clear();
    containers_[path] = c;
    return c;
}

void RecordingFacts::write_known()
{
    for (const auto &[pid, v] : known_)
        rec_.put(Rec::AnsFacts, enc_facts(pid, v.first, v.second));
    for (const auto &[path, c] : containers_)
        rec_.put(Rec::AnsContainer, Enc().str(path).container(c));
}

std::optional<ListenerQueue> RecordingHost::listener(const Addr &addr, uint32_t ns_pid)
{
    auto q = inner_.listener(addr, ns_pid);
    Enc e;
    e.u8(q ? 1 : 0);
    if (q)
        e.u32(q->pid).str(q->comm).u32(q->queue_len).u32(q->backlog);
    rec_.put(Rec::AnsListener, e);
    return q;
}

FileFacts RecordingHost::file(const std::string &path)
{
    FileFacts f = inner_.file(path);
    rec_.put(Rec::AnsFile, Enc().u32(f.mode).u32(f.uid).u32(f.gid).str(f.owner).str(f.group).u8(f.exists));
    return f;
}

std::optional<Creds> RecordingHost::creds(uint32_t pid)
{
    auto c = inner_.creds(pid);
    Enc e;
    e.u8(c ? 1 : 0);
    if (c) {
        e.u32(c->uid).u32(c->gid).u32(static_cast<uint32_t>(c->groups.size()));
        for (uint32_t g : c->groups)
            e.u32(g);
    }
    rec_.put(Rec::AnsCreds, e);
    return c;
}

std::string RecordingHost::activity(uint32_t pid)
{
    std::string s = inner_.activity(pid);
    rec_.put(Rec::AnsActivity, Enc().str(s));
    return s;
}

std::string RecordingHost::port_range(uint32_t pid)
{
    std::string s = inner_.port_range(pid);
    rec_.put(Rec::AnsPortRange, Enc().str(s));
    return s;
}

std::map<std::string, int> RecordingHost::sockets_to(const Addr &dst, uint32_t ns_pid)
{
    auto m = inner_.sockets_to(dst, ns_pid);
    Enc e;
    e.u32(static_cast<uint32_t>(m.size()));
    for (const auto &[state, n] : m)
        e.str(state).u32(static_cast<uint32_t>(n));
    rec_.put(Rec::AnsSocketsTo, e);
    return m;
}

std::optional<SocketHolder> RecordingHost::holder(const Addr &local, const Addr &remote, uint32_t ns_pid)
{
    auto h = inner_.holder(local, remote, ns_pid);
    Enc e;
    e.u8(h ? 1 : 0);
    if (h)
        e.u32(h->pid).str(h->comm);
    rec_.put(Rec::AnsHolder, e);
    return h;
}

int RecordingHost::tcp_abort_on_overflow(uint32_t pid)
{
    int v = inner_.tcp_abort_on_overflow(pid);
    rec_.put(Rec::AnsAbortOnOverflow, Enc().u32(static_cast<uint32_t>(v)));
    return v;
}

// ------------------------------------------------------------------ ready record encoding

static void enc_strs(Enc &e, const std::vector<std::string> &v)
{
    e.u32(static_cast<uint32_t>(v.size()));
    for (const auto &s : v)
        e.str(s);
}
static std::vector<std::string> dec_strs(Dec &d)
{
    std::vector<std::string> v;
    for (uint32_t i = 0, n = d.u32(); i < n; i++)
        v.push_back(d.str());
    return v;
}
static void enc_u32s(Enc &e, const std::vector<uint32_t> &v)
{
    e.u32(static_cast<uint32_t>(v.size()));
    for (uint32_t x : v)
        e.u32(x);
}
static std::vector<uint32_t> dec_u32s(Dec &d)
{
    std::vector<uint32_t> v;
    for (uint32_t i = 0, n = d.u32(); i < n; i++)
        v.push_back(d.u32());
    return v;
}

void encode_ready(Enc &e, const ReadyInfo &r)
{
    e.u32(static_cast<uint32_t>(r.instances.size()));
    for (const auto &in : r.instances) {
        e.u32(in.master).u8(in.master_ns_pid ? 1 : 0).u32(in.master_ns_pid.value_or(0));
        enc_u32s(e, in.workers);
        enc_strs(e, in.error_logs);
        enc_strs(e, in.access_logs);
        enc_strs(e, in.captured_logs);
        e.str(in.cgroup).container(in.container).str(in.config);
        e.u32(static_cast<uint32_t>(in.upstreams.size()));
        for (const auto &u : in.upstreams)
            e.str(u.address).str(u.group).str(u.where).u8(u.listening ? (*u.listening ? 2 : 1) : 0);
    }
    e.u64(r.preexisting).u32(static_cast<uint32_t>(r.cgroups.size()));
    for (const auto &[path, id] : r.cgroups)
        e.str(path).u64(id);
    e.u32(r.nginx_pid);
    enc_u32s(e, r.workers);
    enc_strs(e, r.error_logs);
    enc_strs(e, r.access_logs);
    enc_strs(e, r.probes);
    enc_strs(e, r.probes_failed);
    e.u64(r.attach_ms);
    enc_strs(e, r.capabilities);
}

ReadyInfo decode_ready(Dec &d)
{
    ReadyInfo r;
    for (uint32_t i = 0, n = d.u32(); i < n; i++) {
        InstanceInfo in;
        in.master = d.u32();
        bool has = d.u8();
        uint32_t nsp = d.u32();
        if (has)
            in.master_ns_pid = nsp;
        in.workers = dec_u32s(d);
        in.error_logs = dec_strs(d);
        in.access_logs = dec_strs(d);
        in.captured_logs = dec_strs(d);
        in.cgroup = d.str();
        in.container = d.container();
        in.config = d.str();
        for (uint32_t j = 0, m = d.u32(); j < m; j++) {
            InstanceInfo::Upstream u;
            u.address = d.str();
            u.group = d.str();
            u.where = d.str();
            uint8_t l = d.u8();
            if (l)
                u.listening = l == 2;
            in.upstreams.push_back(std::move(u));
        }
        r.instances.push_back(std::move(in));
    }
    r.preexisting = d.u64();
    for (uint32_t i = 0, n = d.u32(); i < n; i++) {
        std::string path = d.str();
        r.cgroups.emplace_back(path, d.u64());
    }
    r.nginx_pid = d.u32();
    r.workers = dec_u32s(d);
    r.error_logs = dec_strs(d);
    r.access_logs = dec_strs(d);
    r.probes = dec_strs(d);
    r.probes_failed = dec_strs(d);
    r.attach_ms = d.u64();
    r.capabilities = dec_strs(d);
    return r;
}

// ------------------------------------------------------------------ the engine

static uint64_t bits_of(double d)
{
    uint64_t u;
    std::memcpy(&u, &d, 8);
    return u;
}
static double double_of(uint64_t u)
{
    double d;
    std::memcpy(&d, &u, 8);
    return d;
}

// The output rate limit's key for a cause and upstream (report_suppressed()
// splits it at the newline).
static std::string limit_key(const std::string &cause, const std::string &upstream)
{
    return cause + "\n" + upstream;
}

static StateLimits limits_of(const EngineConfig &cfg)
{
    StateLimits l;
    l.window_ns = cfg.window_ns;
    return l;
}

// Explained lines whose strings the next lines are parsed into.
constexpr size_t kSpareLines = 64;

// A line's strings keep the largest buffers they ever held: one that carried
// a long request or referrer is let go rather than handed on.
static bool small_enough(const LogLine &l)
{
    return l.message.capacity() + l.request.capacity() + l.referrer.capacity() + l.host.capacity() +
               l.upstream.capacity() <=
           4096;
}

Engine::Engine(const EngineConfig &cfg, Sink &sink, Host *host, FactsSource &facts, Recorder *rec)
    : cfg_(cfg), sink_(sink), facts_(facts), rec_(rec), now_boot_(cfg.boot_ns), now_real_(cfg.real_ns),
      state_(limits_of(cfg)),
      correlator_(state_, Timebase(cfg.tb_offset_ns),
                  [this, &cfg] {
                      CorrelatorOptions o;
                      o.now_real = [this] { return now_real_; };
                      o.on_holder = [this](Proc &p) { read_facts(p); };
                      o.recheck_listener = cfg.listener_recheck;
                      o.remember_when_taken = cfg.remember_when_taken;
                      // The rate limit is asked as soon as a verdict's cause is known:
                      // a storm's repeats are counted, not worked out.
                      if (cfg.lazy_render)
                          o.admit = [this](const std::string &cause, const std::string &upstream) {
                              return limiter_.admit(limit_key(cause, upstream), now_real_);
                          };
                      return o;
                  }(),
                  host),
      limiter_(cfg.max_verdicts_per_sec), next_stats_(cfg.boot_ns + 1'000'000'000ULL),
      grace_ns_(static_cast<uint64_t>(cfg.grace_ms) * 1'000'000ULL)
{
    sink_.clock = [this] { return now_real_; };
    spare_lines_.reserve(kSpareLines);
}

void Engine::write_config()
{
    if (!rec_)
        return;
    Enc e;
    e.u64(cfg_.window_ns).u64(bits_of(cfg_.window_s)).u32(cfg_.max_verdicts_per_sec).u32(cfg_.grace_ms);
    e.u8(cfg_.redact).u8(cfg_.no_access_log).i64(cfg_.tb_offset_ns).u64(now_boot_).i64(now_real_);
    e.i64(correlator_.timebase().offset_ns()).u64(next_stats_).str(N502_VERSION);
    // Nginx stamps its lines in local time: replay must read them in the
    // recording host's zone, not its own (the offset now; a DST change
    // during a recording is not followed).
    time_t t = static_cast<time_t>(now_real_ / 1'000'000'000);
    struct tm lt{};
    localtime_r(&t, &lt);
    e.i64(lt.tm_gmtoff);
    e.u32(kRecLookups);
    rec_->put(Rec::Config, e);
    rec_time_valid_ = false; // a chained replay skips this record: the next input writes the clock again
}

void Engine::check_recorder()
{
    if (rec_ && !rec_->failure.empty() && !recorder_failed_) {
        recorder_failed_ = true;
        sink_.warning({"record_failed", rec_->failure, 0});
    }
    if (rec_ && !rec_->notice.empty()) {
        sink_.warning({"record", rec_->notice, 0});
        rec_->notice.clear();
    }
}

void Engine::flush_time()
{
    if (rec_time_valid_ && rec_boot_ == now_boot_ && rec_real_ == now_real_)
        return;
    rec_->put(Rec::Tick, Enc().u64(now_boot_).i64(now_real_));
    rec_boot_ = now_boot_;
    rec_real_ = now_real_;
    rec_time_valid_ = true;
}

void Engine::rec(Rec type, const Enc &e)
{
    if (!rec_)
        return;
    flush_time();
    rec_->put(type, e);
}

void Engine::tick(uint64_t boot_ns, int64_t real_ns)
{
    now_boot_ = boot_ns;
    now_real_ = real_ns;
}

void Engine::set_timebase(Timebase tb)
{
    rec(Rec::Timebase, Enc().i64(tb.offset_ns()));
    correlator_.set_timebase(tb);
}

static Enc enc_process(uint32_t pid, uint32_t role, const std::string &comm, uint32_t parent)
{
    return std::move(Enc().u32(pid).u32(role).str(comm).u32(parent));
}

void Engine::add_process(uint32_t pid, uint32_t role, const std::string &comm, uint32_t parent)
{
    rec(Rec::AddProcess, enc_process(pid, role, comm, parent));
    state_.add_process(pid, role, comm, parent);
    if (Proc *p = state_.proc(pid))
        read_facts(*p);
}

Enc enc_listener(const Addr &a, uint32_t pid, const std::string &comm)
{
    return std::move(Enc().addr(a).u32(pid).str(comm));
}

void Engine::add_listener(const Addr &a, uint32_t pid, const std::string &comm)
{
    rec(Rec::AddListener, enc_listener(a, pid, comm));
    state_.add_listener(a, pid, comm);
    // Read while it lives: with adaptive tracking the first event naming a
    // listener may be its death (an OOM kill), too late for /proc.
    if (Proc *p = state_.proc(pid); p && cfg_.listener_facts)
        read_facts(*p);
}

Enc enc_preexisting(uint32_t nginx_pid, const Addr &local, const Addr &remote, uint32_t up_pid,
                    const std::string &up_comm, const Addr &up_local, const Addr &up_remote, uint64_t inode,
                    uint64_t up_inode)
{
    return std::move(Enc()
                         .u32(nginx_pid)
                         .addr(local)
                         .addr(remote)
                         .u32(up_pid)
                         .str(up_comm)
                         .addr(up_local)
                         .addr(up_remote)
                         .u64(inode)
                         .u64(up_inode));
}

void Engine::add_preexisting(uint32_t nginx_pid, const Addr &local, const Addr &remote, uint32_t up_pid,
                             const std::string &up_comm, const Addr &up_local, const Addr &up_remote, uint64_t inode,
                             uint64_t up_inode)
{
    rec(Rec::AddPreexisting,
        enc_preexisting(nginx_pid, local, remote, up_pid, up_comm, up_local, up_remote, inode, up_inode));
    state_.add_preexisting(nginx_pid, local, remote, up_pid, up_comm, up_local, up_remote, inode, up_inode);
    if (up_pid)
        if (Proc *p = state_.proc(up_pid))
            read_facts(*p);
}

void Engine::add_capture(uint32_t dev, uint64_t ino, const std::string &desc)
{
    rec(Rec::AddCapture, Enc().u32(dev).u64(ino).str(desc));
    capture_of_[{dev, ino}] = desc;
}

void Engine::remove_capture(uint32_t dev, uint64_t ino)
{
    rec(Rec::RemoveCapture, Enc().u32(dev).u64(ino));
    capture_of_.erase({dev, ino});
    capture_format_.erase({dev, ino});
    for (auto it = capture_partial_.begin(); it != capture_partial_.end();)
        it = std::get<0>(it->first) == dev && std::get<1>(it->first) == ino ? capture_partial_.erase(it) : std::next(it);
}

void Engine::write_snapshot_state()
{
    if (!rec_)
        return;
    for (const auto &[key, desc] : capture_of_)
        rec_->put(Rec::AddCapture, Enc().u32(key.first).u64(key.second).str(desc));
    for (uint32_t pid : state_.nginx_pids())
        if (const Proc *p = state_.proc(pid); p && !p->exit)
            rec_->put(Rec::AddProcess, enc_process(pid, p->role, p->comm, p->parent));
    // The kernel's loss counters so far (otherwise recorded only on change):
    // a segment replayed alone reports the same losses.
    rec_->put(Rec::Counters, Enc().u64(loss_.lost).u64(loss_.map_full));
}

// Facts about a process's whereabouts, read once while it lives.
void Engine::read_facts(Proc &p, bool again)
{
    if (p.facts_read && !again)
        return;
    p.facts_read = true;
    ProcFacts f = facts_.proc(p.pid, p.cgroup_id);
    if (!f.memory_cgroup.empty() || !again) {
        p.cgroup = f.memory_cgroup;
        p.memory_limit = f.memory_limit;
    }
    if (f.ns_pid)
        p.ns_pid = f.ns_pid;
    if (!f.cgroup2.empty())
        p.cgroup2 = f.cgroup2;
    const std::string &key = !p.cgroup2.empty() && p.cgroup2 != "/" ? p.cgroup2 : p.cgroup;
    if (key.empty())
        return;
    if (container_cache_.size() > 4096)
        container_cache_.clear();
    auto it = container_cache_.find(key);
    if (it == container_cache_.end())
        it = container_cache_.emplace(key, facts_.container(key)).first;
    p.container = it->second;
}

void Engine::kernel(const void *data, size_t len)
{
    if (rec_)
        rec(Rec::Kernel, Enc().raw(data, len));
    do_kernel(data, len);
}

void Engine::do_kernel(const void *data, size_t len)
{
    std::string why;
    auto ev = decode(data, len, &why);
    if (!ev) {
        if (malformed_++ == 0)
            sink_.warning({"event_malformed", "malformed kernel event: " + why, 1});
        return;
    }
    if (cfg_.dump_events)
        fmt::print(stderr,
                   "event {} ts={} tgid={} comm={} sk={:#x} peer={:#x} ret={} src={} dst={} {}->{} err={} role={} "
                   "owner={} dir={} target={} sig={} code={} exit={:#x}\n",
                   event_type_name(ev->type), ev->ts, ev->tgid, ev->comm, ev->sk, ev->peer_sk, ev->ret, ev->src.str(),
                   ev->dst.str(), ev->oldstate, ev->newstate, ev->sk_err, ev->sock_role, ev->owner, ev->dir,
                   ev->target, ev->sig, ev->code, ev->exit_code);
    if (ev->type == N502_EV_LOG) {
        do_capture(*ev);
        return;
    }
    if (ev->type == N502_EV_CGROUP) {
        if (made_cgroups_.size() < kMadeCgroupsMax)
            made_cgroups_.push_back(ev->cgroup_id);
        else
            made_cgroups_overflow_ = true;
        return;
    }
    if (ev->other_cgroup)
        return; // not claimed for Nginx (live, the app strips the flag of what it claims)
    state_.apply(*ev);
    if (ev->type == N502_EV_OOM) {
        // Read now: the victim may have moved cgroups since we first saw it.
        if (Proc *p = state_.proc(ev->target))
            read_facts(*p, true);
    }
    // Where a process that took or serves connections lives: its pid
    // namespace and cgroup as the kernel saw them, then what /proc adds.
    auto placed = [&](uint32_t pid, uint32_t ns_tgid, uint64_t cgroup_id) {
        if (Proc *p = state_.proc(pid)) {
            if (ns_tgid)
                p->ns_pid = ns_tgid;
            if (cgroup_id)
                p->cgroup_id = cgroup_id;
            read_facts(*p);
        }
    };
    if (ev->type == N502_EV_ACCEPT || ev->type == N502_EV_LISTEN)
        placed(ev->tgid, ev->ns_tgid, ev->cgroup_id);
}

bool Engine::log_line(const std::string &text, const std::function<uint32_t(uint32_t)> &map_pid)
{
    // Parsed once: what is recorded is the text, what goes on is the parse.
    uint32_t mapped = 0;
    std::optional<AccessLine> access;
    bool upstream = parse_upstream_error(text, scratch_);
    if (upstream) {
        // Nginx logs pids of its own namespace; the kernel speaks host pids.
        // A pid that cannot be mapped is not guessed at (0).
        mapped = map_pid(scratch_.pid);
    } else if (cfg_.no_access_log || !(access = parse_access_error(text))) {
        return false; // neither kind of line changes anything: not recorded
    }
    rec(Rec::LogLine, Enc().u32(mapped).str(text));
    if (upstream)
        return take_line(mapped);
    take_access(std::move(*access));
    return false;
}

// Adaptive tracking's switches are told by its warnings, live and replayed.
void Engine::note_tracking(const std::string &code)
{
    if (code == "tracking_lean")
        tracking_lean_ = true;
    else if (code == "tracking_full")
        tracking_lean_ = false;
}

// A log line: an upstream error waits for its evidence, a 502/504 access
// line for its error line.
bool Engine::do_line(const std::string &text, uint32_t mapped)
{
    if (parse_upstream_error(text, scratch_))
        return take_line(mapped);
    if (!cfg_.no_access_log)
        if (auto a = parse_access_error(text))
            take_access(std::move(*a));
    return false;
}

// A container's Nginx often writes its access log to stdout (a pipe, read
// from the kernel), as its error log to stderr. An access log in a layout
// not read (a JSON log_format) gives nothing, silently: said once per
// captured log when none of the first 50 lines that are not error-log lines
// ("YYYY/MM/DD HH:MM:SS [level]") is in the access layout read.
void Engine::check_capture_format(std::pair<uint32_t, uint64_t> log, const std::string &line)
{
    if (cfg_.no_access_log)
        return;
    if (is_error_log_line(line))
        return;
    auto &[seen, ok] = capture_format_[log];
    if (seen >= 50)
        return;
    seen++;
    ok += parse_access_line(line).has_value();
    if (seen < 50 || ok > 0)
        return;
    auto it = capture_of_.find(log);
    sink_.warning({"access_log_format",
                   fmt::format("none of the first 50 access lines Nginx wrote to {} is in the layout n502trace "
                               "reads (the combined format's start: $remote_addr - $remote_user [$time_local] "
                               "\"$request\" $status): a 502 or 504 that Nginx answered without an error-log line is "
                               "not found from it (--no-access-log stops reading it)",
                               it == capture_of_.end() || it->second.empty() ? "its captured log" : it->second),
                   0});
}

// The upstream error just parsed into scratch_ waits for its evidence. Its
// strings go with it; scratch_ takes those of a line explained earlier.
bool Engine::take_line(uint32_t mapped)
{
    summary_.log_lines++;
    uint32_t logged = scratch_.pid;
    scratch_.pid = mapped;
    scratch_.lean = tracking_lean_;
    correlator_.taken(scratch_);
    pending_.push_back({std::move(scratch_), now_boot_ + grace_ns_, 0, logged, taken_now()});
    if (!spare_lines_.empty()) {
        scratch_ = std::move(spare_lines_.back());
        spare_lines_.pop_back();
    }
    return true;
}

// Wait for the error-log line of the same request, and its verdict.
void Engine::take_access(AccessLine a)
{
    summary_.access_lines++;
    pending_access_.push_back({std::move(a), now_boot_ + grace_ns_ + 100'000'000ULL, taken_now()});
}

// Captured writes may split or join lines: complete lines only, per file and
// writer; a line that grows past 64 KiB is dropped whole.
void Engine::do_capture(const Event &ev)
{
    auto it = capture_of_.find({ev.dev, ev.ino});
    if (it == capture_of_.end())
        return;
    if (ev.cut && capture_cut_++ == 0)
        sink_.warning({"log_capture_cut",
                       fmt::format("Nginx wrote {} bytes at once to {}; only the first {} were captured",
                                   ev.cut + ev.data.size(), it->second.empty() ? "its log" : it->second,
                                   ev.data.size()),
                       1});
    auto key = std::make_tuple(ev.dev, ev.ino, ev.tgid);
    auto pit = capture_partial_.find(key);
    Partial scratch;
    Partial &part = pit == capture_partial_.end() ? scratch : pit->second;
    size_t start = 0;
    for (size_t i = 0; i < ev.data.size(); i++) {
        if (ev.data[i] != '\n')
            continue;
        if (!part.overflow) {
            part.text.append(ev.data, start, i - start);
            check_capture_format(it->first, part.text);
            do_line(part.text, ev.tgid);
        }
        part.text.clear();
        part.overflow = false;
        start = i + 1;
    }
    if (ev.cut) {
        // Nginx writes a log line whole in one write(): a write cut in the
        // kernel ends where it was cut, and the next write begins a line of
        // its own (not the rest of this one).
        if (!part.overflow) {
            part.text.append(ev.data, start, std::string::npos);
            do_line(part.text, ev.tgid);
        }
        part.text.clear();
        part.overflow = false;
    } else if (start < ev.data.size()) {
        if (part.text.size() + (ev.data.size() - start) > 64 * 1024) {
            part.text.clear();
            part.overflow = true;
        } else if (!part.overflow) {
            part.text.append(ev.data, start, std::string::npos);
        }
    }
    bool unfinished = !part.text.empty() || part.overflow;
    if (pit == capture_partial_.end() && unfinished) {
        if (capture_partial_.size() < 4096)
            capture_partial_.emplace(key, std::move(scratch));
    } else if (pit != capture_partial_.end() && !unfinished) {
        capture_partial_.erase(pit);
    }
}

void Engine::counters(const KernelLoss &k)
{
    if (k.lost == loss_.lost && k.map_full == loss_.map_full)
        return;
    rec(Rec::Counters, Enc().u64(k.lost).u64(k.map_full));
    loss_ = k;
}

void Engine::losses_said()
{
    last_lost_ = loss_.lost;
    last_map_full_ = loss_.map_full;
}

void Engine::check_losses()
{
    if (loss_.lost > last_lost_) {
        sink_.warning({"events_lost",
                       fmt::format("{} kernel events lost (ring buffer full); verdicts in this period may be "
                                   "incomplete",
                                   loss_.lost - last_lost_),
                       loss_.lost - last_lost_});
        last_lost_ = loss_.lost;
        last_loss_ns_ = now_boot_;
    }
    // A full kernel table loses what it would have followed (a process's
    // signals and exit, a socket's story) as surely as a full ring buffer.
    if (loss_.map_full > last_map_full_) {
        sink_.warning({"map_full",
                       fmt::format("{} kernel table entries were not made or were forgotten to make room (the "
                                   "tables of followed processes or sockets were full): what they would have "
                                   "followed is missing; verdicts in this period may be incomplete (the socket "
                                   "tables' size: --table-entries)",
                                   loss_.map_full - last_map_full_),
                       loss_.map_full - last_map_full_});
        last_map_full_ = loss_.map_full;
        last_loss_ns_ = now_boot_;
    }
}

// Where Nginx and the upstream live: pids in their namespaces, cgroups, containers.
void Engine::place(uint32_t pid, std::optional<uint32_t> &nsp, std::string &cgroup,
                   std::optional<ContainerInfo> &container)
{
    Proc *p = state_.proc(pid);
    if (!p)
        return;
    read_facts(*p);
    if (!nsp)
        nsp = p->ns_pid;
    cgroup = p->cgroup2.empty() ? p->cgroup : p->cgroup2;
    container = p->container;
}

Engine::Taken Engine::taken_now() const
{
    return {now_boot_, now_real_, state_.stats().conns_dropped};
}

void Engine::emit(const Verdict &given, uint32_t logged_pid, const Taken &taken)
{
    summary_.verdicts++;
    summary_.by_cause[given.cause]++;
    summary_.by_upstream[given.upstream]++;
    // A storm's repeats are counted, not printed: the correlator asked the
    // rate limit and did not explain them (or, replaying an older recording,
    // explained them and the limit is asked here); nothing more to do.
    if (!given.rendered || (!cfg_.lazy_render && !limiter_.admit(limit_key(given.cause, given.upstream), now_real_))) {
        summary_.suppressed++;
        return;
    }
    Verdict v = given;
    // The failure's time, as a reader compares it with the error log: the
    // verdict comes a grace period later (longer when behind).
    v.logged_real_ns = std::min(taken.real, v.ts_real_ns);
    if (logged_pid)
        v.nginx_ns_pid = logged_pid;
    if (v.nginx_pid == 0 && logged_pid)
        v.notes.push_back(fmt::format("Nginx logged pid {}, which is no process of its pid namespace now: "
                                      "its connections could not be looked up",
                                      logged_pid));
    place(v.nginx_pid, v.nginx_ns_pid, v.nginx_cgroup, v.nginx_container);
    if (v.upstream_pid)
        place(*v.upstream_pid, v.upstream_ns_pid, v.upstream_cgroup, v.upstream_container);
    // Evidence may be missing when events were lost around this failure:
    // in the 10 s before its line was read, or while the line waited (a
    // tool far behind counts a loss late).
    if (last_loss_ns_ && (now_boot_ - last_loss_ns_ < 10'000'000'000ULL || last_loss_ns_ + 10'000'000'000ULL >= taken.at)) {
        v.notes.push_back("kernel events were lost (or a kernel table was full) in the 10 s before this line was "
                          "read or while it waited: "
                          "evidence may be missing");
        v.confidence = v.confidence == "high" ? "medium" : "low";
    }
    // Behind on a storm, the state lets the oldest finished connections go
    // over its bound: this line's may have been one of them.
    uint64_t dropped = state_.stats().conns_dropped - taken.dropped;
    if (dropped && v.cause == "unknown")
        v.notes.push_back(fmt::format("n502trace was behind: {} finished connections were let go over its bound of "
                                      "{} while this line waited; this one's may have been among them",
                                      dropped, state_.limits().max_finished_conns));
    if (cfg_.redact) {
        // Query strings and client addresses stay out of the output.
        auto q = v.request.find('?');
        if (q != std::string::npos) {
            auto sp = v.request.find(' ', q);
            v.request = v.request.substr(0, q) + "?<redacted>" + (sp == std::string::npos ? "" : v.request.substr(sp));
        }
        if (!v.client.empty())
            v.client = "<redacted>";
    }
    sink_.verdict(v);
}

void Engine::report_suppressed()
{
    for (const auto &[key, count] : limiter_.take_suppressed(now_real_)) {
        auto nl = key.find('\n');
        sink_.suppressed(key.substr(0, nl), key.substr(nl + 1), count, 1.0);
    }
}

void Engine::resolve_access(bool final_all)
{
    while (!pending_access_.empty() && (final_all || now_boot_ >= pending_access_.front().deadline)) {
        const AccessLine &a = pending_access_.front().line;
        if (!correlator_.covered(a)) {
            summary_.access_only++;
            emit(correlator_.explain_access(a), 0, pending_access_.front().taken);
        }
        pending_access_.pop_front();
    }
}

// Lines waiting for kernel evidence; beyond this many (a storm the tool is
// behind on) the oldest are explained at once with what is known.
constexpr size_t kMaxPending = 20000;

void Engine::resolve(bool final_all)
{
    uint64_t now = now_boot_;
    std::deque<Pending> waiting;
    size_t over = pending_.size() > kMaxPending ? pending_.size() - kMaxPending : 0;
    for (auto &p : pending_) {
        bool final = final_all || now >= p.deadline || over > 0;
        if (over > 0)
            over--;
        if (!final && now < p.next_try) {
            waiting.push_back(std::move(p));
            continue;
        }
        if (auto v = correlator_.explain(p.line, final)) {
            emit(*v, p.logged_pid, p.taken);
            // (reserved: nothing here throws once the verdict is out)
            if (spare_lines_.size() < kSpareLines && small_enough(p.line))
                spare_lines_.push_back(std::move(p.line));
        } else {
            p.next_try = now + 20'000'000ULL;
            waiting.push_back(std::move(p));
        }
    }
    pending_.swap(waiting);
}

bool Engine::step()
{
    bool stats = now_boot_ >= next_stats_;
    if (pending_.empty() && pending_access_.empty() && !stats)
        return false; // nothing would change: not recorded
    rec(Rec::Step, Enc());
    return do_step();
}

bool Engine::do_step()
{
    if (!pending_.empty() || !pending_access_.empty())
        check_losses(); // before verdicts: a loss in their window lowers their confidence
    resolve(false);
    resolve_access(false);
    if (now_boot_ < next_stats_)
        return false;
    next_stats_ = now_boot_ + 1'000'000'000ULL;
    report_suppressed();
    check_losses();
    state_.expire(now_boot_);
    return true;
}

void Engine::ready(const ReadyInfo &r)
{
    if (rec_) {
        Enc e;
        encode_ready(e, r);
        rec(Rec::Ready, e);
    }
    sink_.ready(r);
    ready_sent_ = true;
    for (const Warning &w : std::exchange(held_warnings_, {}))
        warning(w);
}

void Engine::warning(const Warning &w)
{
    if (!ready_sent_) {
        held_warnings_.push_back(w);
        return;
    }
    rec(Rec::Warning, Enc().str(w.code).str(w.message).u64(w.count));
    note_tracking(w.code);
    sink_.warning(w);
}

void Engine::finish(double duration_s, uint64_t rss_kib)
{
    if (!ready_sent_) { // (a run that never got ready: its warnings still count)
        ready_sent_ = true;
        for (const Warning &w : std::exchange(held_warnings_, {}))
            warning(w);
    }
    rec(Rec::Finish, Enc().u64(bits_of(duration_s)).u64(rss_kib));
    if (rec_)
        rec_->flush();
    do_finish(duration_s, rss_kib);
    if (rec_)
        rec_->flush(); // the host lookups the last verdicts made
}

void Engine::do_finish(double duration_s, uint64_t rss_kib)
{
    check_losses(); // the last counters count for the last verdicts
    resolve(true);
    resolve_access(true);
    report_suppressed();
    summary_.events = state_.stats().events;
    summary_.events_lost = loss_.lost;
    summary_.events_malformed = malformed_;
    summary_.map_full = loss_.map_full;
    summary_.duration_s = duration_s;
    const StateStats &ss = state_.stats();
    summary_.window_s = cfg_.window_s;
    summary_.expired = ss.conns_expired + ss.procs_expired + ss.listeners_expired;
    summary_.dropped = ss.conns_dropped + ss.procs_dropped;
    summary_.conns_held = state_.conns_held();
    summary_.procs_held = state_.procs_held();
    summary_.rss_kib = rss_kib;
    sink_.summary(summary_);
}

// Clock values a real host produces: nanoseconds within about 146 years of
// boot and of the epoch. A corrupt recording's extremes would overflow the
// arithmetic on them.
static constexpr int64_t kClockMax = int64_t(1) << 62;

static uint64_t sane_boot(uint64_t v)
{
    if (v > static_cast<uint64_t>(kClockMax))
        throw RecordingError(fmt::format("a clock value ({} ns since boot) no host records: the recording is corrupt", v));
    return v;
}

static int64_t sane_real(int64_t v)
{
    if (v < -kClockMax || v > kClockMax)
        throw RecordingError(fmt::format("a clock value ({} ns) no host records: the recording is corrupt", v));
    return v;
}

void Engine::replay(const RawRecord &r)
{
    Dec d(r.payload, r.type);
    switch (static_cast<Rec>(r.type)) {
    case Rec::Tick: {
        uint64_t b = sane_boot(d.u64());
        tick(b, sane_real(d.i64()));
        break;
    }
    case Rec::Timebase:
        correlator_.set_timebase(Timebase(sane_real(d.i64())));
        break;
    case Rec::AddProcess: {
        uint32_t pid = d.u32(), role = d.u32();
        std::string comm = d.str();
        add_process(pid, role, comm, d.u32());
        break;
    }
    case Rec::AddListener: {
        Addr a = d.addr();
        uint32_t pid = d.u32();
        add_listener(a, pid, d.str());
        break;
    }
    case Rec::AddPreexisting: {
        uint32_t np = d.u32();
        Addr l = d.addr(), rm = d.addr();
        uint32_t up = d.u32();
        std::string comm = d.str();
        Addr ul = d.addr(), ur = d.addr();
        uint64_t ino = d.u64();
        add_preexisting(np, l, rm, up, comm, ul, ur, ino, d.u64());
        break;
    }
    case Rec::AddCapture: {
        uint32_t dev = d.u32();
        uint64_t ino = d.u64();
        add_capture(dev, ino, d.str());
        break;
    }
    case Rec::RemoveCapture: {
        uint32_t dev = d.u32();
        remove_capture(dev, d.u64());
        break;
    }
    case Rec::Kernel:
        do_kernel(r.payload.data(), r.payload.size());
        break;
    case Rec::LogLine: {
        uint32_t mapped = d.u32();
        do_line(d.str(), mapped);
        break;
    }
    case Rec::Counters: {
        uint64_t lost = d.u64();
        loss_ = {lost, d.u64()};
        break;
    }
    case Rec::Step:
        do_step();
        break;
    case Rec::Ready:
        sink_.ready(decode_ready(d));
        break;
    case Rec::Warning: {
        Warning w;
        w.code = d.str();
        w.message = d.str();
        w.count = d.u64();
        note_tracking(w.code);
        sink_.warning(w);
        break;
    }
    case Rec::Finish: {
        double dur = double_of(d.u64());
        do_finish(dur, d.u64());
        break;
    }
    default:
        break;
    }
}

// ------------------------------------------------------------------ replay

namespace {

// Answers served from the recording: the one that follows the input being
// replayed; process facts and containers also from a segment's snapshot.
class ReplaySource : public FactsSource, public Host {
public:
    explicit ReplaySource(RecordingReader &r) : r_(r) {}

    void learn(const RawRecord &rec)
    {
        Dec d(rec.payload, rec.type);
        if (rec.type == static_cast<uint16_t>(Rec::AnsFacts)) {
            uint32_t pid;
            ProcFacts f = dec_facts(d, &pid);
            facts_[pid] = f;
        } else if (rec.type == static_cast<uint16_t>(Rec::AnsContainer)) {
            std::string path = d.str();
            containers_[path] = d.container();
        } else {
            stray++;
        }
    }
    ProcFacts proc(uint32_t pid, uint64_t) override
    {
        while (r_.peek_type() == static_cast<uint16_t>(Rec::AnsFacts))
            learn(*r_.next());
        auto it = facts_.find(pid);
        if (it == facts_.end()) {
            missing++;
            return {};
        }
        return it->second;
    }
    std::optional<ContainerInfo> container(const std::string &path) override
    {
        while (r_.peek_type() == static_cast<uint16_t>(Rec::AnsContainer))
            learn(*r_.next());
        auto it = containers_.find(path);
        if (it == containers_.end()) {
            missing++;
            return std::nullopt;
        }
        return it->second;
    }
    std::optional<ListenerQueue> listener(const Addr &, uint32_t) override
    {
        auto rec = take(Rec::AnsListener);
        if (!rec)
            return std::nullopt;
        Dec d(rec->payload, rec->type);
        if (!d.u8())
            return std::nullopt;
        ListenerQueue q;
        q.pid = d.u32();
        q.comm = d.str();
        q.queue_len = d.u32();
        q.backlog = d.u32();
        return q;
    }
    FileFacts file(const std::string &) override
    {
        FileFacts f;
        auto rec = take(Rec::AnsFile);
        if (!rec)
            return f;
        Dec d(rec->payload, rec->type);
        f.mode = d.u32();
        f.uid = d.u32();
        f.gid = d.u32();
        f.owner = d.str();
        f.group = d.str();
        f.exists = d.u8();
        return f;
    }
    std::optional<Creds> creds(uint32_t) override
    {
        auto rec = take(Rec::AnsCreds);
        if (!rec)
            return std::nullopt;
        Dec d(rec->payload, rec->type);
        if (!d.u8())
            return std::nullopt;
        Creds c;
        c.uid = d.u32();
        c.gid = d.u32();
        for (uint32_t i = 0, n = d.u32(); i < n; i++)
            c.groups.push_back(d.u32());
        return c;
    }
    std::string activity(uint32_t) override { return take_str(Rec::AnsActivity); }
    std::string port_range(uint32_t) override { return take_str(Rec::AnsPortRange); }
    std::optional<SocketHolder> holder(const Addr &, const Addr &, uint32_t) override
    {
        // Format 1 may predate the look-up: no answer there means not asked.
        if (r_.version() < 2 && r_.peek_type() != static_cast<uint16_t>(Rec::AnsHolder))
            return std::nullopt;
        auto rec = take(Rec::AnsHolder);
        if (!rec)
            return std::nullopt;
        Dec d(rec->payload, rec->type);
        if (!d.u8())
            return std::nullopt;
        SocketHolder h;
        h.pid = d.u32();
        h.comm = d.str();
        return h;
    }
    std::map<std::string, int> sockets_to(const Addr &, uint32_t) override
    {
        std::map<std::string, int> m;
        auto rec = take(Rec::AnsSocketsTo);
        if (!rec)
            return m;
        Dec d(rec->payload, rec->type);
        for (uint32_t i = 0, n = d.u32(); i < n && i < 64; i++) {
            std::string state = d.str();
            m[state] = static_cast<int>(d.u32());
        }
        return m;
    }
    int tcp_abort_on_overflow(uint32_t) override
    {
        auto rec = take(Rec::AnsAbortOnOverflow);
        if (!rec)
            return -1;
        Dec d(rec->payload, rec->type);
        return static_cast<int>(d.u32());
    }

    uint64_t missing = 0, stray = 0;

private:
    std::optional<RawRecord> take(Rec type)
    {
        if (r_.peek_type() != static_cast<uint16_t>(type)) {
            missing++;
            return std::nullopt;
        }
        return r_.next();
    }
    std::string take_str(Rec type)
    {
        auto rec = take(type);
        if (!rec)
            return "";
        Dec d(rec->payload, rec->type);
        return d.str();
    }
    RecordingReader &r_;
    std::unordered_map<uint32_t, ProcFacts> facts_;
    std::unordered_map<std::string, std::optional<ContainerInfo>> containers_;
};

bool is_answer(uint16_t t) { return t >= static_cast<uint16_t>(Rec::AnsFacts) && t <= static_cast<uint16_t>(Rec::AnsHolder); }

// Replays `path` into the sink made by make_sink (given the recorded
// timebase). Throws RecordingError.
void replay_into(const std::string &path, const std::function<Sink &(Timebase)> &make_sink,
                 std::vector<std::string> *warnings)
{
    RecordingReader r(path);
    ReplaySource src(r);
    std::unique_ptr<Engine> engine;
    Sink *sink = nullptr;
    bool finished = false;
    std::string made_by;  // the version of n502trace that recorded it
    uint32_t lookups = 0; // its kRecLookups (0: written before there was one)
    // Look-ups missing before the last input was replayed: their answers
    // should precede it, so a file cut off after it does not explain them.
    uint64_t missing_before_last = 0;
    size_t said = 0;
    auto say_warnings = [&]() {
        for (; said < r.warnings.size(); said++) {
            warnings->push_back(r.warnings[said]);
            if (sink)
                sink->warning({"recording", r.warnings[said], 0});
        }
    };
    bool in_snapshot = false;
    while (auto rec = r.next()) {
        if (rec->type == static_cast<uint16_t>(Rec::Config)) {
            if (engine)
                continue;
            Dec d(rec->payload, rec->type);
            EngineConfig cfg;
            cfg.window_ns = d.u64();
            cfg.window_s = double_of(d.u64());
            if (cfg.window_ns > 86400'000'000'000ULL || !(cfg.window_s >= 0 && cfg.window_s <= 86400))
                throw RecordingError(fmt::format("{}: corrupt configuration record (window {})", path, cfg.window_s));
            cfg.max_verdicts_per_sec = d.u32();
            cfg.grace_ms = d.u32();
            cfg.redact = d.u8();
            cfg.no_access_log = d.u8();
            cfg.tb_offset_ns = sane_real(d.i64());
            cfg.boot_ns = sane_boot(d.u64());
            cfg.real_ns = sane_real(d.i64());
            int64_t corr_offset = sane_real(d.i64());
            uint64_t next_stats = sane_boot(d.u64());
            made_by = d.str(); // the recording tool's version
            int64_t gmtoff = d.i64();
            if (gmtoff < -86400 || gmtoff > 86400)
                throw RecordingError(fmt::format("{}: corrupt configuration record (UTC offset {})", path, gmtoff));
            // The recording host's zone, as a fixed offset (POSIX TZ counts
            // west of UTC as positive).
            int64_t a = gmtoff < 0 ? -gmtoff : gmtoff;
            std::string tz = fmt::format("<REC>{}{:02}:{:02}:{:02}", gmtoff > 0 ? '-' : '+', a / 3600, a / 60 % 60, a % 60);
            set_local_zone(tz.c_str());
            if (!d.at_end())
                lookups = d.u32();
            // Recorded before the correlator skipped a suppressed verdict's
            // look-ups: replay it as it ran, or its answers go to the wrong
            // questions.
            cfg.lazy_render = lazy_render_for(lookups);
            cfg.listener_facts = listener_facts_for(lookups);
            cfg.listener_recheck = listener_recheck_for(lookups);
            cfg.remember_when_taken = remember_when_taken_for(lookups);
            sink = &make_sink(Timebase(cfg.tb_offset_ns));
            engine = std::make_unique<Engine>(cfg, *sink, &src, src, nullptr);
            engine->replay_restore(Timebase(corr_offset), next_stats);
            say_warnings();
            continue;
        }
        if (rec->type == static_cast<uint16_t>(Rec::SnapshotBegin) ||
            rec->type == static_cast<uint16_t>(Rec::SnapshotEnd)) {
            in_snapshot = rec->type == static_cast<uint16_t>(Rec::SnapshotBegin);
            continue;
        }
        if (is_answer(rec->type)) {
            src.learn(*rec);
            continue;
        }
        if (!engine)
            throw RecordingError(fmt::format("{}: a {} record comes before the recording's configuration record",
                                             path, rec_name(rec->type)));
        if (rec->type == static_cast<uint16_t>(Rec::Finish))
            finished = true;
        missing_before_last = src.missing;
        engine->replay(*rec);
        // A later segment's snapshot says the losses so far: what the live
        // run had said already, not news (only that segment's is replayed).
        if (in_snapshot && rec->type == static_cast<uint16_t>(Rec::Counters))
            engine->losses_said();
    }
    if (!engine)
        throw RecordingError(fmt::format("{} holds no configuration record: nothing to replay", path));
    if (!finished) {
        r.warnings.push_back("the recording has no end record (the run was cut off or is still running): lines "
                             "still waiting for evidence were explained with what the recording holds");
        say_warnings();
        engine->replay(RawRecord{static_cast<uint16_t>(Rec::Finish), Enc().u64(bits_of(0.0)).u64(0).buf, 0});
    }
    if (src.missing) {
        // Why the replay asked what the recorded run did not.
        std::string why;
        if (r.first_segment() > 0)
            why = "the recording starts after earlier segments were dropped, without the history they held";
        else if (!replays_as_recorded(lookups))
            why = fmt::format("it was recorded by n502trace {} ({}), this is {} (look-ups {}), which looks up what "
                              "that one did not",
                              made_by.empty() ? "(unknown)" : made_by,
                              lookups ? fmt::format("look-ups {}", lookups) : std::string("an earlier build"),
                              N502_VERSION, kRecLookups);
        else if (!finished && missing_before_last == 0)
            why = "the recording was cut off before their answers were written";
        else if (!finished)
            why = fmt::format("{} of them before the recording's last input, which its end being cut off does not "
                              "explain: damage, please report it with the file",
                              missing_before_last);
        else
            why = "not expected of a whole recording made by this version: please report it with the file";
        r.warnings.push_back(fmt::format("{} look-up{} the replay made {} not in the recording ({}): answered as "
                                         "unknown",
                                         src.missing, src.missing == 1 ? "" : "s", src.missing == 1 ? "is" : "are",
                                         why));
    }
    say_warnings();
}

} // namespace

void Engine::replay_restore(Timebase corr, uint64_t next_stats)
{
    correlator_.set_timebase(corr);
    next_stats_ = next_stats;
}

int run_replay(const std::string &path, bool json)
{
    if (std::string why = input_file_problem(path); !why.empty()) {
        fmt::print(stderr, "n502trace: error: {}\n", why);
        return EXIT_USAGE;
    }
    std::unique_ptr<Sink> sink;
    std::vector<std::string> warnings;
    try {
        replay_into(
            path,
            [&](Timebase tb) -> Sink & {
                if (json)
                    sink = std::make_unique<JsonSink>(stdout, tb);
                else
                    sink = std::make_unique<TextSink>(stdout, tb);
                return *sink;
            },
            &warnings);
    } catch (const RecordingError &e) {
        fflush(stdout);
        fmt::print(stderr, "n502trace: error: {}\n", e.what());
        return EXIT_USAGE;
    } catch (const std::exception &e) { // e.g. out of memory on a hostile file
        fflush(stdout);
        fmt::print(stderr, "n502trace: error: {}: cannot be replayed: {}\n", path, e.what());
        return EXIT_USAGE;
    }
    int e = fflush(stdout) == EOF || ferror(stdout) ? (errno ? errno : EIO) : 0;
    if (output_error())
        e = output_error();
    for (const auto &w : warnings)
        fmt::print(stderr, "n502trace: warning: {}\n", w);
    if (e && e != EPIPE) { // (a reader that went away took what it wanted)
        fmt::print(stderr, "n502trace: error: writing the output failed ({}): the replay's output is incomplete\n",
                   strerror(e));
        return EXIT_RUNTIME;
    }
    return EXIT_OK;
}

std::string replay_to_json(const std::string &path, std::vector<std::string> *warnings)
{
    char *buf = nullptr;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    if (!mem)
        throw RecordingError("out of memory");
    std::unique_ptr<Sink> sink;
    try {
        replay_into(
            path,
            [&](Timebase tb) -> Sink & {
                sink = std::make_unique<JsonSink>(mem, tb);
                return *sink;
            },
            warnings);
    } catch (...) {
        fclose(mem);
        free(buf);
        throw;
    }
    fclose(mem);
    std::string out(buf, len);
    free(buf);
    return out;
}

} // namespace n502
