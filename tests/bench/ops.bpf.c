// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * What each kind of BPF work costs on this machine (scripts/bench.sh
 * --op-costs): one operation, chosen before load, on the two TCP tracepoints
 * n502trace runs most often per request. Run under load with
 * kernel.bpf_stats_enabled, the difference to the `empty` operation is the
 * operation's cost in the same context the real programs run in (the same
 * caches, the same TLB flushes on every kernel entry). The maps have the
 * shapes of n502trace's own (bpf/common.bpf.h).
 */
#include "vmlinux/vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "n502/events.h"
#include "ops.h"

const volatile __u32 op = N502_OP_EMPTY;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct n502_sock);
} op_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct n502_proc);
} op_procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} op_counter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} op_ring SEC(".maps");

/* Socket-local storage (kernel 5.11+ for tracing programs): the other way to
 * keep a socket's entry, freed with the socket instead of by a delete. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct n502_sock);
} op_sk_storage SEC(".maps");

/* Written so that no operation's result can be optimised away. */
__u64 sink = 0;
/* Runs where an operation that should succeed did not (a map full, no
 * memory): its time would be a failure's, not the operation's. */
__u64 failed = 0;

static __always_inline void run_op(struct sock *sk)
{
	__u64 key = (__u64)sk;
	__u64 acc = 0;

	switch (op) {
	case N502_OP_LOOKUP_MISS:
		acc = bpf_map_lookup_elem(&op_socks, &key) != 0;
		break;
	case N502_OP_LOOKUP_HIT: {
		__u64 k = N502_OP_HIT_KEY;
		struct n502_sock *s = bpf_map_lookup_elem(&op_socks, &k);
		acc = s ? s->flags + 1 : 0;
		break;
	}
	case N502_OP_LOOKUP_MISS_X4:
		for (int i = 0; i < 4; i++) {
			__u64 k = key + i;
			acc += bpf_map_lookup_elem(&op_socks, &k) != 0;
		}
		break;
	case N502_OP_UPDATE_DELETE: {
		struct n502_sock v = { .role = 1 };
		acc = bpf_map_update_elem(&op_socks, &key, &v, BPF_ANY);
		if (acc)
			failed++;
		bpf_map_delete_elem(&op_socks, &key);
		break;
	}
	case N502_OP_PID_LOOKUP: {
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;
		acc = bpf_map_lookup_elem(&op_procs, &tgid) != 0;
		break;
	}
	case N502_OP_COUNTER: {
		__u32 i = 0;
		__u64 *v = bpf_map_lookup_elem(&op_counter, &i);
		if (v)
			*v += 1;
		break;
	}
	case N502_OP_KTIME:
		acc = bpf_ktime_get_boot_ns();
		break;
	case N502_OP_COMM: {
		char comm[N502_COMM_LEN];
		bpf_get_current_comm(comm, sizeof(comm));
		acc = comm[0];
		break;
	}
	case N502_OP_PROBE_READ:
		acc = BPF_CORE_READ((struct tcp_sock *)sk, bytes_sent);
		break;
	case N502_OP_RING_EVENT: {
		/* The size of n502trace's story event, filled and submitted
		 * without a wakeup; the loader drains the ring every 10 ms. */
		struct n502_conn_event *e = bpf_ringbuf_reserve(&op_ring, sizeof(*e), 0);
		if (e) {
			__builtin_memset(e, 0, sizeof(*e));
			e->sk = key;
			bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
		} else {
			failed++;
		}
		break;
	}
	case N502_OP_SK_STORAGE_MISS:
		acc = bpf_sk_storage_get(&op_sk_storage, sk, 0, 0) != 0;
		break;
	case N502_OP_SK_STORAGE_CREATE_DELETE: {
		struct n502_sock *s = bpf_sk_storage_get(&op_sk_storage, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (s) {
			s->role = 1;
			acc = bpf_sk_storage_delete(&op_sk_storage, sk);
		} else {
			failed++;
		}
		break;
	}
	}
	if (acc == 1)
		sink = acc;
}

/* N502_OP_MINIMAL (scripts/bench.sh, mode `minimal`): the least a tool that
 * follows Nginx's upstream sockets from these tracepoints must do, to bound
 * what any design could cost. One entry per Nginx socket, made at connect
 * (the only time its owner is the current task) and removed at CLOSE; every
 * other transition of every socket looks itself up once (after the filters
 * n502trace has too); an event only for a transition with a socket error.
 * Nothing about the upstream's end, no story, no clock, no receive hook
 * (bench_hooks does not attach op_rcv_space_adjust for it). The process
 * lookup is the one that would pick Nginx's connects; on the bench host
 * every connect is Nginx's, so all are kept. */
static __always_inline void minimal_tracking(const struct sock *sk, int oldstate, int newstate)
{
	__u64 key = (__u64)sk;
	struct n502_sock *s;
	int err;

	if (oldstate == N502_TCP_CLOSE && newstate == N502_TCP_SYN_SENT) {
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;
		struct n502_sock v = { .role = N502_SOCK_NGINX, .owner_tgid = tgid };

		if (bpf_map_lookup_elem(&op_procs, &tgid))
			sink++;
		if (bpf_map_update_elem(&op_socks, &key, &v, BPF_ANY))
			failed++;
		return;
	}
	if (oldstate == N502_TCP_CLOSE && newstate == N502_TCP_SYN_RECV)
		return;
	err = sk->sk_err;
	if ((newstate == N502_TCP_FIN_WAIT2 || newstate == N502_TCP_TIME_WAIT) && !err)
		return;
	s = bpf_map_lookup_elem(&op_socks, &key);
	if (!s)
		return;
	if (err) {
		struct n502_state_event *e = bpf_ringbuf_reserve(&op_ring, sizeof(*e), 0);
		if (e) {
			__builtin_memset(e, 0, sizeof(*e));
			e->sk = key;
			e->owner_tgid = s->owner_tgid;
			bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
		}
	}
	if (newstate == N502_TCP_CLOSE)
		bpf_map_delete_elem(&op_socks, &key);
}

/* N502_OP_OWNERLESS (scripts/bench.sh, mode `ownerless`): what an
 * anomaly-only kernel side would do per state change, with no state per
 * socket at all. A socket is one of Nginx's upstream connections (either end)
 * when its remote or local port is in a bitmap of the upstream ports the
 * configuration names, read from the socket itself; here user space sets every
 * bit, so every socket passes, as on the bench host. An event only for a
 * transition with a socket error, or for a socket leaving ESTABLISHED in a
 * task that is exiting (an upstream killed while holding it). Everything else
 * (who owns it, when it was established, the upstream's end) is not known. */
__u64 port_bits[1024];

static __always_inline int port_watched(__u16 port)
{
	return (port_bits[(port >> 6) & 1023] >> (port & 63)) & 1;
}

static __always_inline void ownerless_tracking(const struct sock *sk, int oldstate, int newstate)
{
	__u16 rport = bpf_ntohs(sk->__sk_common.skc_dport);
	__u16 lport = sk->__sk_common.skc_num;
	int err, exiting = 0;

	if (!port_watched(rport) && !port_watched(lport))
		return;
	err = sk->sk_err;
	if (!err && oldstate == N502_TCP_ESTABLISHED) {
		struct task_struct *t = bpf_get_current_task_btf();
		exiting = (t->flags & N502_PF_EXITING) != 0;
	}
	if (!err && !exiting)
		return;
	struct n502_state_event *e = bpf_ringbuf_reserve(&op_ring, sizeof(*e), 0);
	if (e) {
		__builtin_memset(e, 0, sizeof(*e));
		e->sk = (__u64)sk;
		e->oldstate = oldstate;
		e->newstate = newstate;
		e->sk_err = err;
		bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	}
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(op_set_state, const struct sock *sk, int oldstate, int newstate)
{
	if (op == N502_OP_MINIMAL)
		minimal_tracking(sk, oldstate, newstate);
	else if (op == N502_OP_OWNERLESS)
		ownerless_tracking(sk, oldstate, newstate);
	else
		run_op((struct sock *)sk);
	return 0;
}

SEC("tp_btf/tcp_rcv_space_adjust")
int BPF_PROG(op_rcv_space_adjust, struct sock *sk)
{
	run_op(sk);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
