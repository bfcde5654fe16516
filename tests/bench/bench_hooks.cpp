// The benchmark's floor (scripts/bench.sh, mode `hooks`): loads and attaches
// empty programs on n502trace's TCP tracepoints, prints {"type":"ready"} and
// holds them until SIGINT or SIGTERM. Exit 1 when anything fails to load or
// attach (with libbpf's reason on stderr), 2 on a bad argument.
//
// `bench_hooks --op NAME` attaches one operation of tests/bench/ops.bpf.c
// instead (scripts/bench.sh --op-costs): what that kind of BPF work costs,
// measured against `--op empty` under the same load. `--op minimal` is not an
// operation but the least tracking of Nginx's sockets any design would do
// (scripts/bench.sh mode `minimal`), on inet_sock_set_state only; `--op
// ownerless` an anomaly-only kernel side with no state per socket (mode
// `ownerless`), likewise.
//
// `bench_hooks --sockops DIR` attaches an empty sock_ops program to the
// cgroup v2 directory DIR instead (tests/bench/sockops.bpf.c; mode
// `sockops`).
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <csignal>
#include <fcntl.h>
#include <unistd.h>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "../../include/n502/events.h"
#include "bench_hooks.skel.h"
#include "bench_ops.skel.h"
#include "bench_sockops.skel.h"
#include "ops.h"

namespace {

const char *const kOpNames[N502_OP_COUNT] = {
    "empty",         "lookup_miss", "lookup_hit", "lookup_miss_x4", "update_delete", "pid_lookup",
    "counter",       "ktime",       "comm",       "probe_read",     "ring_event",
    "sk_storage_miss", "sk_storage_create_delete", "minimal", "ownerless",
};

int drain(void *, void *, size_t) { return 0; }

int run_op(unsigned op, const sigset_t &stop)
{
    bench_ops_bpf *skel = bench_ops_bpf__open();
    if (!skel) {
        std::fprintf(stderr, "bench_hooks: cannot open the operation programs\n");
        return 1;
    }
    skel->rodata->op = op;
    // The least tracking (mode `minimal`) and the anomaly-only kernel side
    // (mode `ownerless`) have no receive hook at all.
    if (op == N502_OP_MINIMAL || op == N502_OP_OWNERLESS)
        bpf_program__set_autoload(skel->progs.op_rcv_space_adjust, false);
    // Every port is an upstream's: on the bench host every socket is one.
    for (auto &bits : skel->bss->port_bits)
        bits = ~0ULL;
    ring_buffer *rb = nullptr;
    int rc = 1;
    if (bench_ops_bpf__load(skel) != 0) {
        std::fprintf(stderr, "bench_hooks: cannot load the operation programs (root? BTF?)\n");
        goto out;
    }
    {
        // The key lookup_hit finds.
        unsigned long long key = N502_OP_HIT_KEY;
        n502_sock value{};
        if (bpf_map_update_elem(bpf_map__fd(skel->maps.op_socks), &key, &value, BPF_ANY) != 0) {
            std::fprintf(stderr, "bench_hooks: cannot fill the map: %s\n", std::strerror(errno));
            goto out;
        }
    }
    rb = ring_buffer__new(bpf_map__fd(skel->maps.op_ring), drain, nullptr, nullptr);
    if (!rb || bench_ops_bpf__attach(skel) != 0) {
        std::fprintf(stderr, "bench_hooks: cannot attach the operation programs\n");
        goto out;
    }
    std::printf("{\"type\":\"ready\",\"op\":\"%s\"}\n", kOpNames[op]);
    std::fflush(stdout);
    // Drained every 10 ms, as n502trace drains its own ring.
    for (;;) {
        timespec tick{0, 10 * 1000 * 1000};
        if (sigtimedwait(&stop, nullptr, &tick) >= 0)
            break;
        ring_buffer__consume(rb);
    }
    // How many runs the operation failed in (the bench refuses to report
    // the cost of an operation that did not happen).
    std::printf("{\"type\":\"done\",\"op\":\"%s\",\"failed\":%llu}\n", kOpNames[op],
                static_cast<unsigned long long>(skel->bss->failed));
    std::fflush(stdout);
    rc = 0;
out:
    ring_buffer__free(rb);
    bench_ops_bpf__destroy(skel);
    return rc;
}

int run_sockops(const char *dir, const sigset_t &stop)
{
    int cg = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cg < 0) {
        std::fprintf(stderr, "bench_hooks: cannot open cgroup directory %s: %s\n", dir, std::strerror(errno));
        return 1;
    }
    bench_sockops_bpf *skel = bench_sockops_bpf__open_and_load();
    bpf_link *link = skel ? bpf_program__attach_cgroup(skel->progs.empty_sockops, cg) : nullptr;
    if (!link) {
        std::fprintf(stderr, "bench_hooks: cannot %s the sock_ops program on %s\n", skel ? "attach" : "load", dir);
        bench_sockops_bpf__destroy(skel);
        close(cg);
        return 1;
    }
    std::printf("{\"type\":\"ready\",\"sockops\":\"%s\"}\n", dir);
    std::fflush(stdout);
    int sig = 0;
    sigwait(&stop, &sig);
    bpf_link__destroy(link);
    bench_sockops_bpf__destroy(skel);
    close(cg);
    return 0;
}

} // namespace

int main(int argc, char **argv)
{
    // SIGINT and SIGTERM are waited for, not handled: none can slip in
    // between a check and a pause.
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    sigprocmask(SIG_BLOCK, &stop, nullptr);
    if (argc == 3 && std::strcmp(argv[1], "--op") == 0) {
        for (unsigned op = 0; op < N502_OP_COUNT; op++)
            if (std::strcmp(argv[2], kOpNames[op]) == 0)
                return run_op(op, stop);
    }
    if (argc == 3 && std::strcmp(argv[1], "--sockops") == 0)
        return run_sockops(argv[2], stop);
    if (argc != 1) {
        std::fprintf(stderr, "usage: bench_hooks [--op NAME | --sockops CGROUP2_DIR]\n  NAME:");
        for (const char *n : kOpNames)
            std::fprintf(stderr, " %s", n);
        std::fprintf(stderr, "\n");
        return 2;
    }
    bench_hooks_bpf *skel = bench_hooks_bpf__open_and_load();
    if (!skel) {
        std::fprintf(stderr, "bench_hooks: cannot load the empty programs (root? BTF?)\n");
        return 1;
    }
    if (bench_hooks_bpf__attach(skel) != 0) {
        std::fprintf(stderr, "bench_hooks: cannot attach the empty programs\n");
        bench_hooks_bpf__destroy(skel);
        return 1;
    }
    std::printf("{\"type\":\"ready\"}\n");
    std::fflush(stdout);
    int sig = 0;
    sigwait(&stop, &sig);
    bench_hooks_bpf__destroy(skel);
    return 0;
}
