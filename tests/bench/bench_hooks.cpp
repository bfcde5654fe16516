// The benchmark's floor (scripts/bench.sh, mode `hooks`): loads and attaches
// empty programs on n502trace's TCP tracepoints, prints {"type":"ready"} and
// holds them until SIGINT or SIGTERM. Exit 1 when anything fails to load or
// attach (with libbpf's reason on stderr).
#include <bpf/libbpf.h>

#include <csignal>
#include <cstdio>
#include <unistd.h>

#include "bench_hooks.skel.h"

static volatile std::sig_atomic_t stop_requested = 0;

static void on_signal(int) { stop_requested = 1; }

int main()
{
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
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
    while (!stop_requested)
        pause();
    bench_hooks_bpf__destroy(skel);
    return 0;
}
