#include "loader.hpp"

#include <algorithm>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <cerrno>
#include <csignal>
#include <cstdarg>
#include <cstring>
#include <fmt/format.h>
#include <optional>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "n502.skel.h"
#include "n502/events.h"
#include "timebase.hpp"

namespace n502 {

static bool g_verbose = false;

static int libbpf_log(enum libbpf_print_level level, const char *fmt, va_list args)
{
    if (level == LIBBPF_DEBUG && !g_verbose)
        return 0;
    if (level == LIBBPF_INFO && !g_verbose)
        return 0;
    fputs("n502trace: libbpf: ", stderr);
    return vfprintf(stderr, fmt, args);
}

static std::string advice(int err)
{
    switch (err) {
    case EPERM:
    case EACCES:
        return " (needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_RESOURCE; a kernel in lockdown mode "
               "(/sys/kernel/security/lockdown) or kernel.unprivileged_bpf_disabled may also refuse it)";
    case ENOENT:
        return " (the hook does not exist on this kernel)";
    case E2BIG:
    case EINVAL:
        return " (the kernel rejected the program; run with -v for the verifier log)";
    case ENOMEM:
        return " (out of locked memory: try a smaller --ringbuf-kb or raise RLIMIT_MEMLOCK)";
    default:
        return "";
    }
}

std::string lockdown_verdict(const std::string &file)
{
    // The file lists the modes with the active one in brackets:
    // "none [integrity] confidentiality".
    auto open = file.find('['), close = file.find(']');
    if (open == std::string::npos || close == std::string::npos || close < open)
        return file.empty() || file == "unknown"
                   ? "unknown (no /sys/kernel/security/lockdown: securityfs not mounted, or no lockdown LSM)"
                   : "unknown (" + file + ")";
    std::string mode = file.substr(open + 1, close - open - 1);
    if (mode == "none")
        return "none";
    if (mode == "integrity")
        return "integrity: BPF tracing still works";
    if (mode == "confidentiality")
        return "MISSING: lockdown=confidentiality refuses BPF programs that read kernel memory; n502trace cannot "
               "attach (boot without it, or with lockdown=integrity)";
    return "unknown mode " + mode;
}

bool ensure_tracefs(std::string *error)
{
    if (access("/sys/kernel/tracing/events", F_OK) == 0 || access("/sys/kernel/debug/tracing/events", F_OK) == 0)
        return true;
    if (mount("tracefs", "/sys/kernel/tracing", "tracefs", 0, nullptr) == 0)
        return true;
    if (error)
        *error = fmt::format("tracefs is not mounted and mounting it on /sys/kernel/tracing failed: {}; mount it with "
                             "`mount -t tracefs nodev /sys/kernel/tracing`",
                             strerror(errno));
    return false;
}

Loader::Loader() { libbpf_set_print(libbpf_log); }

Loader::~Loader()
{
    if (rb_)
        ring_buffer__free(rb_);
    for (auto *l : links_)
        if (l)
            bpf_link__destroy(l);
    if (skel_)
        n502_bpf__destroy(skel_);
}

// The on-demand group a program belongs to, if any.
static std::optional<OnDemand> group_of(const std::string &program)
{
    if (program == "handle_sys_enter_write")
        return OnDemand::LogCapture;
    if (program.rfind("handle_sys_", 0) == 0)
        return OnDemand::UnixSockets;
    if (program == "handle_tcp__rcv_space_adjust" || program == "raw_tcp__rcv_space_adjust")
        return OnDemand::FullTracking;
    return std::nullopt;
}

static const char *group_reason(OnDemand g)
{
    return g == OnDemand::LogCapture    ? "attached when a log needs capturing"
           : g == OnDemand::UnixSockets ? "attached when an Nginx configuration names a unix-socket upstream"
                                        : "attached while connections are followed whole (adaptive tracking)";
}

static bool hook_available(const struct btf *vmlinux, const std::string &sec, std::string *why)
{
    if (sec.rfind("tp_btf/", 0) == 0) {
        std::string name = "btf_trace_" + sec.substr(7);
        if (!vmlinux) {
            *why = "kernel BTF (/sys/kernel/btf/vmlinux) is not available";
            return false;
        }
        if (btf__find_by_name_kind(vmlinux, name.c_str(), BTF_KIND_TYPEDEF) < 0) {
            *why = fmt::format("tracepoint {} does not exist on this kernel", sec.substr(7));
            return false;
        }
        return true;
    }
    if (sec.rfind("raw_tp/", 0) == 0) {
        // The BTF given with --btf describes the kernel's tracepoints too;
        // failing that, tracefs lists them.
        std::string name = sec.substr(7);
        if (vmlinux) {
            if (btf__find_by_name_kind(vmlinux, ("btf_trace_" + name).c_str(), BTF_KIND_TYPEDEF) >= 0)
                return true;
            *why = fmt::format("tracepoint {} does not exist on this kernel", name);
            return false;
        }
        for (const char *f : {"/sys/kernel/tracing/available_events", "/sys/kernel/debug/tracing/available_events"})
            if (FILE *fp = fopen(f, "r")) {
                char line[256];
                bool found = false;
                while (!found && fgets(line, sizeof(line), fp)) {
                    std::string l(line);
                    while (!l.empty() && l.back() == '\n')
                        l.pop_back();
                    auto colon = l.find(':');
                    found = colon != std::string::npos && l.substr(colon + 1) == name;
                }
                fclose(fp);
                if (!found)
                    *why = fmt::format("tracepoint {} does not exist on this kernel", name);
                return found;
            }
        return true; // cannot tell: attaching will say
    }
    if (sec.rfind("tracepoint/", 0) == 0) {
        std::string tp = sec.substr(11);
        for (const char *root : {"/sys/kernel/tracing/events/", "/sys/kernel/debug/tracing/events/"})
            if (access((root + tp).c_str(), F_OK) == 0)
                return true;
        *why = fmt::format("tracepoint {} does not exist on this kernel (or tracefs is not mounted)", tp);
        return false;
    }
    return true;
}

bool Loader::load(const LoaderOptions &opt, std::string *error)
{
    g_verbose = opt.verbose;
    struct rlimit rl = {RLIM_INFINITY, RLIM_INFINITY};
    if (setrlimit(RLIMIT_MEMLOCK, &rl) != 0 && opt.verbose)
        fmt::print(stderr, "n502trace: could not raise RLIMIT_MEMLOCK: {}\n", strerror(errno));

    std::string tf;
    if (!ensure_tracefs(&tf))
        fmt::print(stderr, "n502trace: warning: {}\n", tf);

    // Without the kernel's own BTF, the types for CO-RE come from --btf and
    // the hooks attach as raw tracepoints (tp_btf needs the kernel's BTF).
    raw_mode_ = !opt.btf_path.empty();
    if (!raw_mode_ && access("/sys/kernel/btf/vmlinux", R_OK) != 0) {
        *error = "this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing): give n502trace this kernel's BTF "
                 "with --btf FILE (e.g. from BTFHub, or made with `pahole --btf_encode_detached`), or use a kernel "
                 "built with CONFIG_DEBUG_INFO_BTF=y";
        return false;
    }
    struct btf *types = nullptr;
    if (raw_mode_) {
        types = btf__parse(opt.btf_path.c_str(), nullptr);
        if (!types || libbpf_get_error(types)) {
            int err = errno;
            *error = fmt::format("--btf {}: not a readable BTF file: {}", opt.btf_path, strerror(err));
            return false;
        }
    } else {
        types = btf__load_vmlinux_btf();
        if (!types || libbpf_get_error(types))
            types = nullptr;
    }
    LIBBPF_OPTS(bpf_object_open_opts, oo);
    if (raw_mode_)
        oo.btf_custom_path = opt.btf_path.c_str();
    skel_ = n502_bpf__open_opts(&oo);
    if (!skel_) {
        int err = errno;
        *error = fmt::format("opening the BPF object failed: {}{}", strerror(err), advice(err));
        if (types)
            btf__free(types);
        return false;
    }
    struct bpf_program *prog;
    bpf_object__for_each_program(prog, skel_->obj)
    {
        std::string sec = bpf_program__section_name(prog);
        // One flavour of each argument-based hook: the other is not loaded.
        if (sec.rfind(raw_mode_ ? "tp_btf/" : "raw_tp/", 0) == 0) {
            bpf_program__set_autoload(prog, false);
            continue;
        }
        ProbeStatus st;
        st.program = bpf_program__name(prog);
        st.hook = sec;
        st.available = hook_available(types, st.hook, &st.error);
        if (st.program == "handle_sys_enter_write" && !opt.capture_logs) {
            st.available = false;
            st.skipped = true;
            st.error = "not needed: no log to capture from the kernel";
        }
        if (!st.available)
            bpf_program__set_autoload(prog, false);
        probes_.push_back(st);
        progs_.push_back(prog);
        links_.push_back(nullptr);
    }
    if (types)
        btf__free(types);

    uint32_t size = opt.ringbuf_bytes;
    uint32_t page = static_cast<uint32_t>(sysconf(_SC_PAGESIZE));
    if (size < page || (size & (size - 1)) != 0) {
        *error = fmt::format("ring buffer size {} must be a power of two and at least one page ({} bytes)", size, page);
        return false;
    }
    bpf_map__set_max_entries(skel_->maps.events, size);
    table_look_ns_ = opt.table_look_ns;
    if (opt.table_entries) {
        bpf_map__set_max_entries(skel_->maps.socks, opt.table_entries);
        bpf_map__set_max_entries(skel_->maps.tuples, opt.table_entries);
    }
    // Wake the reader early only when an eighth of the ring is waiting; it
    // polls every 10-50 ms anyway (see wakeup_bytes in bpf/common.bpf.h).
    skel_->rodata->wakeup_bytes = size / 8;
    skel_->rodata->filter_cgroups = opt.filter_cgroups ? 1 : 0;
    skel_->rodata->adopt_preexisting = opt.adopt_preexisting ? 1 : 0;
    skel_->rodata->adaptive_tracking = opt.adaptive ? 1 : 0;
    skel_->data->track_full = opt.adaptive ? 0 : 1;
    unix_at_start_ = opt.unix_sockets;
    full_at_start_ = !opt.adaptive;

    int err = n502_bpf__load(skel_);
    if (err) {
        err = -err;
        *error = fmt::format("loading the BPF programs failed: {}{}", strerror(err), advice(err));
        return false;
    }
    return true;
}

bool Loader::attach(std::string *error)
{
    size_t attached = 0;
    for (size_t i = 0; i < probes_.size(); i++) {
        ProbeStatus &st = probes_[i];
        struct bpf_program *prog = progs_[i];
        if (!st.available)
            continue;
        auto group = group_of(st.program);
        if (group == OnDemand::LogCapture || (group == OnDemand::UnixSockets && !unix_at_start_) ||
            (group == OnDemand::FullTracking && !full_at_start_)) {
            st.skipped = true;
            st.error = group_reason(*group);
            continue;
        }
        struct bpf_link *link = bpf_program__attach(prog);
        if (!link) {
            int err = errno;
            st.error = fmt::format("attach failed: {}{}", strerror(err), advice(err));
            continue;
        }
        links_[i] = link;
        st.attached = true;
        attached++;
    }
    if (unix_at_start_)
        unix_enabled_ = true;
    if (attached == 0) {
        *error = "no BPF program could be attached";
        for (const auto &st : probes_)
            *error += fmt::format("\n  {} ({}): {}", st.program, st.hook, st.error);
        return false;
    }
    return true;
}

bool Loader::track_process(uint32_t pid, uint32_t role, std::string *error)
{
    n502_proc v{};
    if (bpf_map__lookup_elem(skel_->maps.procs, &pid, sizeof(pid), &v, sizeof(v), 0) != 0)
        v = n502_proc{};
    v.role |= role;
    if (bpf_map__update_elem(skel_->maps.procs, &pid, sizeof(pid), &v, sizeof(v), BPF_ANY) != 0) {
        *error = fmt::format("cannot add pid {} to the procs map: {}", pid, strerror(errno));
        return false;
    }
    return true;
}

bool Loader::select_cgroup(uint64_t id, std::string *error)
{
    uint8_t one = 1;
    if (bpf_map__update_elem(skel_->maps.cgroup_sel, &id, sizeof(id), &one, sizeof(one), BPF_ANY) != 0) {
        *error = fmt::format("cannot add cgroup id {} to the selection map: {}", id, strerror(errno));
        return false;
    }
    return true;
}

bool Loader::attach_group(OnDemand group, std::string *error)
{
    std::string failed;
    for (size_t i = 0; i < probes_.size(); i++) {
        ProbeStatus &st = probes_[i];
        struct bpf_program *prog = progs_[i];
        if (group_of(st.program) != group || st.attached)
            continue;
        if (!st.available) {
            failed += fmt::format("{}{} ({})", failed.empty() ? "" : "; ", st.hook, st.error);
            continue;
        }
        struct bpf_link *link = bpf_program__attach(prog);
        if (!link) {
            int err = errno;
            st.error = fmt::format("attach failed: {}{}", strerror(err), advice(err));
            failed += fmt::format("{}{}: {}", failed.empty() ? "" : "; ", st.hook, st.error);
            continue;
        }
        links_[i] = link;
        st.attached = true;
        st.skipped = false;
        st.error.clear();
    }
    if (!failed.empty()) {
        *error = failed;
        return false;
    }
    return true;
}

void Loader::detach_group(OnDemand group)
{
    for (size_t i = 0; i < probes_.size(); i++) {
        bpf_link *link = links_[i];
        if (group_of(probes_[i].program) != group || !link)
            continue;
        bpf_link__destroy(link);
        links_[i] = nullptr;
        probes_[i].attached = false;
        probes_[i].skipped = true;
        probes_[i].error = group_reason(group);
    }
}

bool Loader::tracking_full() const { return skel_ && skel_->data->track_full != 0; }

bool Loader::set_tracking_full(bool full, std::string *error)
{
    if (!skel_)
        return false;
    if (full) {
        // The hook first: a connection followed from now on is named at its
        // upstream's first read.
        std::string why;
        bool ok = attach_group(OnDemand::FullTracking, &why);
        skel_->data->track_full = 1;
        if (!ok)
            *error = "following connections whole without the receive hook (upstreams are named by their close "
                     "or exit only): " + why;
        return ok;
    }
    skel_->data->track_full = 0;
    // Records made until now may outlive their sockets unseen: dead, and
    // removed now (else a table fills with them, and the kernel forgetting
    // them to make room would read as a loss).
    skel_->bss->track_gen = skel_->bss->track_gen + 1;
    detach_group(OnDemand::FullTracking);
    look_now_ = true;
    forgotten();
    return true;
}

void Loader::watch_ports(const std::vector<uint16_t> &ports, bool all)
{
    if (!skel_)
        return;
    auto &bits = skel_->bss->watched_ports;
    for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); i++)
        bits[i] = all ? ~0ULL : 0;
    for (uint16_t p : ports)
        bits[p >> 6] = bits[p >> 6] | (1ULL << (p & 63));
}

void Loader::ports_settled()
{
    if (skel_)
        skel_->bss->ports_unsure = 0;
}

bool Loader::ports_unsure() const
{
    return skel_ && skel_->bss->ports_unsure;
}

// Adds key to one of the kernel side's filter sets (nginx_uids,
// nginx_cgroups) and marks the set known. A set that fills up is marked
// unknown for good (*overflow): a key left out would hide Nginx's own
// failures.
template <typename Known>
static bool add_to_filter(bpf_map *map, const void *key, size_t key_size, Known *known, bool *overflow)
{
    if (*overflow)
        return false;
    uint8_t one = 1;
    if (bpf_map__update_elem(map, key, key_size, &one, sizeof(one), BPF_ANY) != 0) {
        *overflow = true;
        *known = 0;
        return false;
    }
    *known = 1;
    return true;
}

bool Loader::add_nginx_uid(uint32_t uid)
{
    return skel_ && add_to_filter(skel_->maps.nginx_uids, &uid, sizeof(uid), &skel_->bss->nginx_uids_known,
                                  &uids_overflow_);
}

bool Loader::add_nginx_cgroup(uint64_t id)
{
    return skel_ && add_to_filter(skel_->maps.nginx_cgroups, &id, sizeof(id), &skel_->bss->nginx_cgroups_known,
                                  &cgroups_overflow_);
}

void Loader::clear_nginx_cgroups(bool forever)
{
    if (!skel_)
        return;
    skel_->bss->nginx_cgroups_known = 0;
    if (forever)
        cgroups_overflow_ = true;
    // Emptied, so that restarts into new cgroups (each one's id new) do not
    // fill it up. (Each key read before it is deleted: a walk from a
    // deleted key would start over.)
    bpf_map *m = skel_->maps.nginx_cgroups;
    uint64_t key;
    while (bpf_map__get_next_key(m, nullptr, &key, sizeof(key)) == 0)
        if (bpf_map__delete_elem(m, &key, sizeof(key), 0) != 0)
            break;
}

bool Loader::set_nginx_places(const std::vector<std::pair<uint64_t, std::string>> &places)
{
    if (!skel_)
        return false;
    // The new set first, then what left it: a place in both is watched all
    // along (an exec there at this moment is not missed).
    bpf_map *m = skel_->maps.nginx_places;
    std::vector<n502_place> want;
    bool all = true;
    uint8_t one = 1;
    for (const auto &[parent, name] : places) {
        if (name.empty() || name.size() >= sizeof(n502_place::name)) {
            all = false;
            continue;
        }
        n502_place key{};
        key.parent_id = parent;
        std::memcpy(key.name, name.data(), name.size());
        if (bpf_map__update_elem(m, &key, sizeof(key), &one, sizeof(one), BPF_ANY) == 0)
            want.push_back(key);
        else
            all = false;
    }
    if (!want.empty())
        skel_->bss->nginx_places_known = 1;
    std::vector<n502_place> gone;
    n502_place key{}, next{};
    for (bool first = true; bpf_map__get_next_key(m, first ? nullptr : &key, &next, sizeof(next)) == 0;
         first = false) {
        key = next;
        if (std::none_of(want.begin(), want.end(),
                         [&](const n502_place &w) { return std::memcmp(&w, &key, sizeof(key)) == 0; }))
            gone.push_back(key);
    }
    for (const auto &g : gone)
        bpf_map__delete_elem(m, &g, sizeof(g), 0);
    if (want.empty())
        skel_->bss->nginx_places_known = 0;
    return all;
}

bool Loader::enable_unix_sockets(std::string *error)
{
    if (unix_enabled_)
        return true;
    std::string why;
    bool ok = attach_group(OnDemand::UnixSockets, &why);
    unix_enabled_ = true; // what attached stays attached; what did not is in probes()
    if (!ok)
        *error = "cannot follow unix-socket upstreams fully: " + why;
    return ok;
}

bool Loader::capture_file(uint32_t dev, uint64_t ino, std::string *error)
{
    std::string why;
    if (!attach_group(OnDemand::LogCapture, &why)) {
        *error = "cannot capture Nginx's log writes: " + why;
        return false;
    }
    uint8_t one = 1;
    n502_file_key key{ino, dev, 0};
    if (bpf_map__update_elem(skel_->maps.log_inodes, &key, sizeof(key), &one, sizeof(one), BPF_ANY) != 0) {
        *error = fmt::format("cannot add inode {} to the log capture map: {}", ino, strerror(errno));
        return false;
    }
    return true;
}

bool Loader::add_preexisting(const n502_tuple &key, const n502_sock &value, std::string *error)
{
    if (bpf_map__update_elem(skel_->maps.preexisting, &key, sizeof(key), &value, sizeof(value), BPF_ANY) != 0) {
        *error = fmt::format("cannot add a connection to the preexisting map: {}", strerror(errno));
        return false;
    }
    return true;
}

void Loader::uncapture_file(uint32_t dev, uint64_t ino)
{
    n502_file_key key{ino, dev, 0};
    bpf_map__delete_elem(skel_->maps.log_inodes, &key, sizeof(key), 0);
}

std::optional<uint64_t> Loader::other_cgroup(uint64_t sk) const
{
    // Left in place: every event of the socket reads it (a reset, then its
    // state change), and the kernel side rewrites it before each.
    uint64_t id = 0;
    if (!skel_ || bpf_map__lookup_elem(skel_->maps.other_cgroup_socks, &sk, sizeof(sk), &id, sizeof(id), 0) != 0)
        return std::nullopt;
    return id;
}

void Loader::foreign_cgroup(uint64_t id, uint64_t until_boot_ns)
{
    if (skel_)
        bpf_map__update_elem(skel_->maps.foreign_cgroups, &id, sizeof(id), &until_boot_ns, sizeof(until_boot_ns),
                             BPF_ANY);
}

void Loader::unselect_cgroup(uint64_t id)
{
    bpf_map__delete_elem(skel_->maps.cgroup_sel, &id, sizeof(id), 0);
}

int Loader::on_record(void *ctx, void *data, size_t len)
{
    auto *self = static_cast<Loader *>(ctx);
    self->cb_(data, len);
    return 0;
}

bool Loader::start_ring(Callback cb, std::string *error)
{
    cb_ = std::move(cb);
    rb_ = ring_buffer__new(bpf_map__fd(skel_->maps.events), on_record, this, nullptr);
    if (!rb_) {
        *error = fmt::format("cannot open the ring buffer: {}", strerror(errno));
        return false;
    }
    return true;
}

int Loader::ring_epoll_fd() const { return rb_ ? ring_buffer__epoll_fd(rb_) : -1; }

int Loader::consume() { return rb_ ? ring_buffer__consume(rb_) : 0; }

std::optional<uint64_t> Loader::counter(uint32_t idx) const
{
    int ncpu = libbpf_num_possible_cpus();
    if (!skel_ || ncpu <= 0)
        return std::nullopt;
    std::vector<uint64_t> vals(static_cast<size_t>(ncpu));
    if (bpf_map__lookup_elem(skel_->maps.counters, &idx, sizeof(idx), vals.data(), vals.size() * sizeof(uint64_t),
                             0) != 0)
        return std::nullopt;
    uint64_t sum = 0;
    for (uint64_t v : vals)
        sum += v;
    return sum;
}

namespace {

// A hash table's entries now, each(key, value) for each (K and V: the
// table's key and value types), walked key by key (BPF_MAP_GET_NEXT_KEY,
// then a look-up: both lock-free in the kernel, unlike a batch look-up,
// which holds each bucket's lock while the kernel side updates the same
// table from its hooks). A walk whose key was removed meanwhile starts over
// from the first bucket: keys already seen are skipped, so every entry that
// stayed all along is seen exactly once. False when the walk cannot finish
// (more than four tables' worth of steps), or when the table's key or value
// is not of K's or V's size.
template <typename K, typename V, typename Each> bool each_entry(bpf_map *map, Each each)
{
    if (bpf_map__key_size(map) != sizeof(K) || bpf_map__value_size(map) != sizeof(V))
        return false;
    K key{}, next{};
    V value{};
    std::unordered_set<std::string> seen;
    const uint64_t limit = 4ULL * bpf_map__max_entries(map) + 16;
    for (uint64_t steps = 0; steps < limit; steps++) {
        if (bpf_map__get_next_key(map, steps ? &key : nullptr, &next, sizeof(K)) != 0)
            return errno == ENOENT; // that was the last of them
        key = next;
        if (!seen.insert(std::string(reinterpret_cast<const char *>(&key), sizeof(K))).second)
            continue;
        if (bpf_map__lookup_elem(map, &key, sizeof(K), &value, sizeof(V), 0) == 0)
            each(key, value);
    }
    return false;
}

} // namespace

// At least how many entries the socket tables (LRU) forgot to make room:
// those added and neither removed nor there. A, R: the kernel side's counts
// of entries added and removed; the entries are read between reading A and
// R, so that one added while reading (in A only if A was read after) or
// removed (in R, read after) never makes forgotten ones appear: A_before -
// R_after - entries is at most what was really forgotten (an entry read
// once counts once: each_entry). An excess is taken
// once two looks in a row find it (a removal whose count is not in yet).
//
// Entries nobody will remove are removed here first: records the kernel
// side declared dead (an older track_gen, when tracking went lean), the
// unix-socket records of processes that are gone (closed by their exit, not
// by close()), and tuples whose socket's record is gone; else the table
// fills with them, and the kernel forgetting them would read as a loss.
//
// A table well below its size (less what the CPUs may each hold back: LRU
// free lists are per CPU, up to 128 entries) forgets nothing: looked at only
// above that, at most once every table_look_ns; and when tracking goes lean
// (the records of the full period declared dead, removed at once).
uint64_t Loader::forgotten()
{
    // (its counters read at most every table_look_ns too: the main loop asks
    // every 100 ms, and more often while a line waits)
    uint64_t now = boot_now_ns();
    if (!look_now_ && tables_checked_ns_ && now - tables_checked_ns_ < table_look_ns_)
        return socks_lru_.evicted + tuples_lru_.evicted;
    tables_checked_ns_ = now;
    bpf_map *socks = skel_->maps.socks, *tuples = skel_->maps.tuples;
    auto sa = counter(N502_CNT_SOCKS_ADDED), sr = counter(N502_CNT_SOCKS_REMOVED);
    auto ta = counter(N502_CNT_TUPLES_ADDED), tr = counter(N502_CNT_TUPLES_REMOVED);
    if (!sa || !sr || !ta || !tr)
        return socks_lru_.evicted + tuples_lru_.evicted;
    uint64_t cpus = static_cast<uint64_t>(std::max(1, libbpf_num_possible_cpus()));
    auto near_full = [&](bpf_map *m, uint64_t added, uint64_t removed, const Lru &lru) {
        uint64_t size = bpf_map__max_entries(m), held_back = std::min(size, 256 * cpus + 256);
        uint64_t gone = removed + lru.removed_here + lru.evicted;
        return added > gone && added - gone > size - held_back;
    };
    if (!std::exchange(look_now_, false) && !near_full(socks, *sa, *sr, socks_lru_) &&
        !near_full(tuples, *ta, *tr, tuples_lru_))
        return socks_lru_.evicted + tuples_lru_.evicted;
    // Tuples first: a tuple is made after its socket's record, so one read
    // here whose record is not read after is one whose record is gone.
    std::vector<std::pair<n502_tuple, uint64_t>> tups;
    bool ok = each_entry<n502_tuple, uint64_t>(tuples, [&](const n502_tuple &key, uint64_t sk) {
        tups.emplace_back(key, sk);
    });
    const uint32_t gen = skel_->bss->track_gen;
    std::unordered_set<uint64_t> live;
    std::unordered_map<uint32_t, bool> alive;
    auto dead = [&](const n502_sock &v) {
        if (v.gen != gen && v.role != N502_SOCK_LISTENER)
            return true;
        if (v.family != AF_UNIX || !v.owner_tgid)
            return false;
        auto [it, fresh] = alive.try_emplace(v.owner_tgid, false);
        if (fresh)
            it->second = kill(static_cast<pid_t>(v.owner_tgid), 0) == 0 || errno != ESRCH;
        return !it->second;
    };
    uint64_t n_socks = 0, n_tuples = 0;
    ok = ok && each_entry<uint64_t, n502_sock>(socks, [&](uint64_t key, const n502_sock &v) {
        // (looked up again just before: a new socket at the same address
        // may have a live record there by now)
        n502_sock now_v;
        if (dead(v) && bpf_map__lookup_elem(socks, &key, sizeof(key), &now_v, sizeof(now_v), 0) == 0 &&
            now_v.gen == v.gen && now_v.owner_tgid == v.owner_tgid && dead(now_v) &&
            bpf_map__delete_elem(socks, &key, sizeof(key), 0) == 0) {
            socks_lru_.removed_here++;
            return;
        }
        n_socks++;
        live.insert(key);
    });
    if (!ok)
        return socks_lru_.evicted + tuples_lru_.evicted;
    for (const auto &[key, sk] : tups) {
        uint64_t now_sk = 0;
        if (!live.count(sk) && bpf_map__lookup_elem(tuples, &key, sizeof(key), &now_sk, sizeof(now_sk), 0) == 0 &&
            now_sk == sk && bpf_map__delete_elem(tuples, &key, sizeof(key), 0) == 0) {
            tuples_lru_.removed_here++;
            continue;
        }
        n_tuples++;
    }
    auto sr_after = counter(N502_CNT_SOCKS_REMOVED), tr_after = counter(N502_CNT_TUPLES_REMOVED);
    auto take = [](Lru &lru, uint64_t added, std::optional<uint64_t> removed, uint64_t n) {
        if (!removed)
            return;
        uint64_t gone = *removed + lru.removed_here + n;
        uint64_t estimate = added > gone ? added - gone : 0;
        lru.evicted = std::max(lru.evicted, std::min(estimate, lru.last_estimate));
        lru.last_estimate = estimate;
    };
    take(socks_lru_, *sa, sr_after, n_socks);
    take(tuples_lru_, *ta, tr_after, n_tuples);
    return socks_lru_.evicted + tuples_lru_.evicted;
}

KernelCounters Loader::counters()
{
    KernelCounters out;
    if (!skel_)
        return out;
    out.emitted = counter(N502_CNT_EMITTED).value_or(0);
    out.lost = counter(N502_CNT_LOST).value_or(0);
    out.map_full = counter(N502_CNT_MAP_FULL).value_or(0);
    out.untracked = counter(N502_CNT_UNTRACKED).value_or(0);
    out.evicted = forgotten();
    return out;
}

KernelCounters Loader::final_counters()
{
    if (!skel_)
        return {};
    tables_checked_ns_ = 0;
    forgotten();
    tables_checked_ns_ = 0;
    return counters();
}

bool Loader::check_btf_file(const std::string &path, std::string *why)
{
    if (access(path.c_str(), R_OK) != 0) {
        *why = fmt::format("--btf {}: {}", path, strerror(errno));
        return false;
    }
    // libbpf's own complaint ("failed to get EHDR") is not for the user:
    // the message below says what is wrong.
    libbpf_print_fn_t prev = libbpf_set_print(nullptr);
    struct btf *b = btf__parse(path.c_str(), nullptr);
    libbpf_set_print(prev);
    if (!b || libbpf_get_error(b)) {
        *why = fmt::format("--btf {}: not a readable BTF file (a kernel's BTF, raw or in an ELF .BTF section)", path);
        return false;
    }
    bool kernel = btf__find_by_name_kind(b, "task_struct", BTF_KIND_STRUCT) >= 0;
    btf__free(b);
    if (!kernel) {
        *why = fmt::format("--btf {}: BTF without the kernel's types (no struct task_struct): not a kernel's BTF",
                           path);
        return false;
    }
    return true;
}

std::vector<std::pair<std::string, std::string>> Loader::preflight(const std::string &btf_path)
{
    std::vector<std::pair<std::string, std::string>> out;
    out.emplace_back("root", geteuid() == 0 ? "yes" : "no: run as root (or with CAP_BPF, CAP_PERFMON, CAP_SYS_RESOURCE)");
    bool kernel_btf = access("/sys/kernel/btf/vmlinux", R_OK) == 0;
    bool raw = !btf_path.empty(); // a run with --btf uses the raw_tp flavour
    if (raw) {
        std::string why;
        out.emplace_back("BTF from --btf", check_btf_file(btf_path, &why) ? "yes (" + btf_path + "; raw tracepoints)"
                                                                           : "MISSING: " + why);
        out.emplace_back("kernel BTF", kernel_btf ? "yes (/sys/kernel/btf/vmlinux; --btf is used instead)"
                                                  : "no (not needed with --btf)");
    } else {
        out.emplace_back("kernel BTF", kernel_btf ? "yes (/sys/kernel/btf/vmlinux)"
                                                  : "MISSING: CO-RE needs the kernel's types: run with --btf FILE "
                                                    "(this kernel's BTF, e.g. from BTFHub) or use a kernel built "
                                                    "with CONFIG_DEBUG_INFO_BTF=y");
    }
    std::string tf;
    bool tracefs = ensure_tracefs(&tf);
    out.emplace_back("tracefs", tracefs ? "yes" : "MISSING: " + tf);
    std::string lockdown = "unknown";
    if (FILE *f = fopen("/sys/kernel/security/lockdown", "r")) {
        char buf[128] = {};
        if (fgets(buf, sizeof(buf), f))
            lockdown = buf;
        fclose(f);
        while (!lockdown.empty() && lockdown.back() == '\n')
            lockdown.pop_back();
    }
    out.emplace_back("lockdown", lockdown_verdict(lockdown));
    out.emplace_back("ring buffer", libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, nullptr) == 1
                                        ? "yes"
                                        : "MISSING: BPF ring buffers need Linux 5.8 or later");
    libbpf_print_fn_t prev = libbpf_set_print(nullptr);
    struct btf *vmlinux = raw ? btf__parse(btf_path.c_str(), nullptr) : btf__load_vmlinux_btf();
    libbpf_set_print(prev);
    if (vmlinux && libbpf_get_error(vmlinux))
        vmlinux = nullptr;
    n502_bpf *skel = n502_bpf__open();
    if (skel) {
        struct bpf_program *prog;
        bpf_object__for_each_program(prog, skel->obj)
        {
            std::string why;
            std::string sec = bpf_program__section_name(prog);
            // The flavour a run would use: tp_btf with the kernel's BTF,
            // raw_tp (with --btf) without it.
            if (sec.rfind(kernel_btf && !raw ? "raw_tp/" : "tp_btf/", 0) == 0)
                continue;
            out.emplace_back("hook " + sec, hook_available(vmlinux, sec, &why) ? "yes" : "MISSING: " + why);
        }
        n502_bpf__destroy(skel);
    }
    if (vmlinux)
        btf__free(vmlinux);
    return out;
}

} // namespace n502
