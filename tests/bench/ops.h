/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The operations of tests/bench/ops.bpf.c, shared with its loader
 * (bench_hooks --op NAME). */
#ifndef N502_BENCH_OPS_H
#define N502_BENCH_OPS_H

enum n502_op {
	N502_OP_EMPTY,
	N502_OP_LOOKUP_MISS,    /* socks-shaped LRU hash, the socket's address: not there */
	N502_OP_LOOKUP_HIT,     /* the same map, a key that is there */
	N502_OP_LOOKUP_MISS_X4, /* four lookups that miss */
	N502_OP_UPDATE_DELETE,  /* insert the socket's entry, delete it */
	N502_OP_PID_LOOKUP,     /* procs-shaped hash, the current tgid */
	N502_OP_COUNTER,        /* per-CPU array counter += 1 */
	N502_OP_KTIME,          /* bpf_ktime_get_boot_ns() */
	N502_OP_COMM,           /* bpf_get_current_comm() */
	N502_OP_PROBE_READ,     /* one tcp_sock field through bpf_probe_read_kernel */
	N502_OP_RING_EVENT,     /* a story-sized ring-buffer event, reserved, filled, submitted */
	N502_OP_SK_STORAGE_MISS, /* socket-local storage of the socket: it has none */
	N502_OP_SK_STORAGE_CREATE_DELETE, /* the socket's local storage created, then deleted */
	N502_OP_MINIMAL, /* not an operation: the least any tracking of Nginx's sockets does (see ops.bpf.c) */
	N502_OP_OWNERLESS, /* not an operation: an anomaly-only kernel side, no per-socket state (see ops.bpf.c) */
	N502_OP_COUNT
};

#define N502_OP_HIT_KEY 1ULL

#endif
