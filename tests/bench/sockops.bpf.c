// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Mode `sockops` of scripts/bench.sh (bench_hooks --sockops DIR): an empty
 * sock_ops program on a cgroup v2 directory (the hierarchy's root reaches
 * every TCP socket on the host). The floor of a kernel side built on
 * sock_ops callbacks instead of the TCP tracepoints: the kernel calls it at
 * a connect, at either end's establishment and for its TCP parameter
 * questions, and for the state changes of only those sockets that ask for
 * them (bpf_sock_ops_cb_flags_set), where the tracepoint runs for every
 * state change of every socket.
 */
#include "vmlinux/vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("sockops")
int empty_sockops(struct bpf_sock_ops *ctx)
{
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
