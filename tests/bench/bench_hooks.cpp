// The benchmark's floor (scripts/bench.sh, mode `hooks`): loads and attaches
// empty programs on n502trace's TCP tracepoints, prints {"type":"ready"} and
// holds them until SIGINT or SIGTERM. Exit 1 when anything fails to load or
// attach (with libbpf's reason on stderr).
#include <bpf/libbpf.h>

#include <csignal>
#include <cstdio>

#include "bench_hooks.skel.h"

int main()
{
    // SIGINT and SIGTERM are waited for, not handled: none can slip in
    // between a check and a pause.
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    sigprocmask(SIG_BLOCK, &stop, nullptr);
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
