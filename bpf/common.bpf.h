/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Shared maps and helpers for every n502trace BPF program.
 *
 * Every program follows the same order: filter on a map lookup first (is
 * this process / socket one we watch?), then reserve ring-buffer space, then
 * fill the event. Nothing is reserved for traffic that is not Nginx <->
 * upstream.
 *
 * The maps are defined __weak here so that each .bpf.c file can include this
 * header and `bpftool gen object` merges them into one map per name.
 */
#ifndef N502_COMMON_BPF_H
#define N502_COMMON_BPF_H

#include "vmlinux/vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "n502/events.h"

#define N502_AF_UNIX 1
#define N502_AF_INET 2
#define N502_AF_INET6 10
#define N502_SOCK_STREAM 1
#define N502_IPPROTO_TCP 6
#define N502_S_IFMT 00170000
#define N502_S_IFSOCK 0140000
#define N502_SIGCHLD 17
#define N502_SIGURG 23   /* (Go's runtime preempts its threads with it: many a second) */

/* Tracked processes: Nginx (filled by user space at start, then through
 * fork), upstream processes (added when they take a connection), listeners
 * (added at listen, and their children). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct n502_proc);
} procs SEC(".maps") __weak;

/* Tracked sockets, keyed by the kernel's struct sock address. Ownership is
 * recorded here in process context (connect, listen, the upstream's first
 * read or close; unix sockets: connect/accept/listen) because state, reset
 * and drop tracepoints often run in softirq where current is not the
 * socket's owner. LRU: a socket that we never see closing is forgotten. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct n502_sock);
} socks SEC(".maps") __weak;

/* Nginx's established TCP connections by 4-tuple (Nginx's view), so that the
 * other end can be recognised when it is established. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct n502_tuple);
	__type(value, __u64);
} tuples SEC(".maps") __weak;

/* Connections that predate n502trace (a keep-alive pool): found by user
 * space at start from /proc, keyed by the 4-tuple as each end sees it
 * (local first). The first state change or reset of such a socket adopts it
 * into socks. Only consulted when adopt_preexisting is set before load. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct n502_tuple);
	__type(value, struct n502_sock);
} preexisting SEC(".maps") __weak;

const volatile __u8 adopt_preexisting __weak = 0;

/* connect() arguments between sys_enter and sys_exit, per thread. */
struct connect_args {
	__u64 sk;
	__u64 uaddr;
	__s32 fd;
	__s32 addrlen;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct connect_args);
} connect_args SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, N502_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps") __weak;

/* Selected cgroups (--container, --cgroup): cgroup v2 ids, the value is
 * unused. Only consulted when filter_cgroups is set before load; on hosts
 * with v1 controllers and a v2 unified hierarchy the ids are the unified
 * hierarchy's, which is what bpf_get_current_cgroup_id() returns. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} cgroup_sel SEC(".maps") __weak;

const volatile __u8 filter_cgroups __weak = 0;

/* Where a followed Nginx runs or ran: its cgroup v2 directory, known by its
 * parent directory's id and its name, which a restart (a container's, a
 * service's) makes again. Set by user space while that Nginx lives and for a
 * minute after it goes: an Nginx that execs in such a cgroup is tracked from
 * its first instant (proc.bpf.c, on_sched__process_exec). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct n502_place);
	__type(value, __u8);
} nginx_places SEC(".maps") __weak;
volatile __u32 nginx_places_known __weak = 0;

/* Adaptive tracking (the default; set before load: with --tracking full the
 * anomaly-only path never runs and sockets with no record are ignored).
 * While track_full is 0 no socket gets a record: a state change costs a look
 * at the socket's ports and one bit of watched_ports, and only an anomaly on
 * a socket with a watched port is emitted, by the anomaly-only path (sock.bpf.c:
 * a connect that did not complete, a socket error, a reset, a SYN resent, a
 * connection the upstream ended unanswered, an upstream's end closed by its
 * dying, aborting or unanswering holder). Each of those but an abort or an
 * unanswered close seen from the upstream's end (which may be another
 * client's) sets track_full itself: the very next connection is followed
 * whole. User space sets it
 * back to 0 when Nginx has been calm for a while, and then bumps track_gen
 * so that the records of that period (whose sockets' ends nobody watches any
 * more) count as dead. Both are written at run time (.data), not before
 * load. */
const volatile __u8 adaptive_tracking __weak = 0;
volatile __u32 track_full __weak = 1;
volatile __u32 track_gen __weak = 0;
/* Bit p: port p is an upstream's (the ports Nginx's configuration names;
 * every bit when it names one through a variable or cannot be read). */
volatile __u64 watched_ports[1024] __weak;
/* Set when Nginx forks (a reload's new workers may run a configuration that
 * names other upstreams): every port counts as watched until user space has
 * read the configuration again, set watched_ports and cleared it. */
volatile __u32 ports_unsure __weak;

static __always_inline int port_watched(__u16 port)
{
	return ports_unsure || ((watched_ports[(port >> 6) & 1023] >> (port & 63)) & 1);
}

/* The uids Nginx's workers run as (user space fills it; empty: not known).
 * A socket toward an upstream port that fails in softirq, where nobody owns
 * it, counts as Nginx's only when its creator's uid (sk_uid) is one of them:
 * a health check or another client of the upstream run by another user is
 * not Nginx's. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u8);
} nginx_uids SEC(".maps") __weak;
volatile __u32 nginx_uids_known __weak = 0;

/* The cgroup v2 ids Nginx's workers run in (user space fills it; empty: not
 * known). A socket of Nginx's uid created in another cgroup is not Nginx's
 * either: PHP-FPM's pool, say, runs as www-data too, but in its own service
 * or container. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u64);
	__type(value, __u8);
} nginx_cgroups SEC(".maps") __weak;
volatile __u32 nginx_cgroups_known __weak = 0;

/* The cgroup of a socket announced with N502_SOCK_OTHER_CGROUP, by socket
 * address: user space reads it to tell a worker moved to another cgroup
 * (relearn it) from another service running as Nginx's user. A socket's
 * entry is rewritten before each of its events. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u64);
} other_cgroup_socks SEC(".maps") __weak;

/* Cgroups user space found no Nginx worker in, each until a boot-clock
 * time: their sockets' failures are not announced again before then (a
 * failing service of Nginx's user costs one event a second, not one each). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 256);
	__type(key, __u64);
	__type(value, __u64);
} foreign_cgroups SEC(".maps") __weak;

/* struct sock_cgroup_data before 5.15: the cgroup pointer, or (bit 0 set)
 * net_cls/net_prio data in its place. */
struct sock_cgroup_data___pre515 {
	__u64 val;
} __attribute__((preserve_access_index));
struct sock___pre515 {
	struct sock_cgroup_data___pre515 sk_cgrp_data;
} __attribute__((preserve_access_index));

/* The cgroup v2 id of the task that created sk (what
 * bpf_get_current_cgroup_id() gave it), 0 when the socket no longer says
 * (before 5.15, once net_cls or net_prio data took the pointer's place).
 * Probe reads: only for a failure, never on a normal connection's path. */
static __always_inline __u64 sock_cgroup_id(const struct sock *sk)
{
	struct cgroup *cg;

	if (!bpf_core_field_exists(struct sock, sk_cgrp_data)) /* no CONFIG_SOCK_CGROUP_DATA */
		return 0;
	if (bpf_core_field_exists(struct sock_cgroup_data, cgroup)) {
		cg = BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
	} else {
		__u64 v = BPF_CORE_READ((struct sock___pre515 *)sk, sk_cgrp_data.val);
		if (v & 3) /* is_data or no_refcnt (sock_cgroup_ptr): no pointer */
			return 0;
		cg = (struct cgroup *)v;
	}
	if (!cg)
		return 0;
	return BPF_CORE_READ(cg, kn, id);
}

/* In a selected cgroup, or no selection by cgroup at all. */
static __always_inline int cgroup_selected(void)
{
	if (!filter_cgroups)
		return 1;
	__u64 id = bpf_get_current_cgroup_id();
	return bpf_map_lookup_elem(&cgroup_sel, &id) != 0;
}

/* Size set by user space before load (--ringbuf-kb). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps") __weak;

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

/* An entry into socks or tuples, LRU tables: one that is full forgets its
 * least recently used entry to make room, without a word. So each entry made
 * is counted (added: N502_CNT_SOCKS_ADDED or N502_CNT_TUPLES_ADDED), and so is
 * each one removed (lru_del): user space tells from those and the entries
 * there how many were forgotten. A key already there is overwritten (looked
 * up first: a failed BPF_NOEXIST would take a free node, or evict one, for
 * nothing). The increments are atomic: a hook in softirq may interrupt
 * another halfway through one on the same CPU, and a removal lost would
 * count as an entry forgotten for good. */
static __always_inline void count_atomic(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline int lru_put(void *map, const void *key, const void *val, __u32 added)
{
	if (bpf_map_lookup_elem(map, key)) {
		if (!bpf_map_update_elem(map, key, val, BPF_ANY))
			return 0;
	} else if (!bpf_map_update_elem(map, key, val, BPF_NOEXIST)) {
		count_atomic(added);
		return 0;
	} else if (!bpf_map_update_elem(map, key, val, BPF_ANY)) {
		return 0; /* (made meanwhile by another CPU) */
	}
	count(N502_CNT_MAP_FULL);
	return -1;
}

static __always_inline void lru_del(void *map, const void *key, __u32 removed)
{
	if (!bpf_map_delete_elem(map, key))
		count_atomic(removed);
}

#define socks_put(key, val) lru_put(&socks, key, val, N502_CNT_SOCKS_ADDED)
#define socks_del(key) lru_del(&socks, key, N502_CNT_SOCKS_REMOVED)
#define tuples_put(key, val) lru_put(&tuples, key, val, N502_CNT_TUPLES_ADDED)
#define tuples_del(key) lru_del(&tuples, key, N502_CNT_TUPLES_REMOVED)

/* Reserve an event and fill its header; counts the loss when the ring is
 * full. The caller must submit what it got. */
static __always_inline void *reserve(__u32 size, __u16 type)
{
	struct n502_hdr *h = bpf_ringbuf_reserve(&events, size, 0);
	if (!h) {
		count(N502_CNT_LOST);
		return 0;
	}
	__u64 id = bpf_get_current_pid_tgid();
	h->type = type;
	h->size = size;
	h->cpu = bpf_get_smp_processor_id();
	h->ts_ns = bpf_ktime_get_boot_ns();
	h->tgid = id >> 32;
	h->tid = (__u32)id;
	bpf_get_current_comm(h->comm, sizeof(h->comm));
	return h;
}

/* Set by user space before load: wake the reader only when this much data
 * waits. A wakeup per event costs an irq_work self-IPI in the traced task's
 * context (a VM exit on virtual machines): user space polls on a short timer
 * instead, and forced wakeups only keep a burst from filling the ring. */
const volatile __u64 wakeup_bytes __weak = 256 * 1024;

static __always_inline void submit(void *ev)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	bpf_ringbuf_submit(ev, avail >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	count(N502_CNT_EMITTED);
}

/* The same, waking the reader at once: for the rare event user space acts
 * on before what follows it (a cgroup made: a container starting). */
static __always_inline void submit_wake(void *ev)
{
	bpf_ringbuf_submit(ev, BPF_RB_FORCE_WAKEUP);
	count(N502_CNT_EMITTED);
}

/* The current process's pid as its own (innermost) pid namespace sees it:
 * what a containerised process logs and what `docker top` does not show. */
static __always_inline __u32 current_ns_tgid(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct pid *pid = BPF_CORE_READ(task, group_leader, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);

	return BPF_CORE_READ(pid, numbers[level].nr);
}

static __always_inline struct n502_proc *current_proc(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	return bpf_map_lookup_elem(&procs, &tgid);
}

/* fd -> struct file of the current task, or NULL. */
static __always_inline struct file *file_from_fd(int fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *file;

	if (!fdt || fd < 0 || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]))
		return 0;
	return file;
}

/* fd -> struct socket of the current task, or NULL when fd is not a socket. */
static __always_inline struct socket *socket_from_fd(int fd)
{
	struct file *file = file_from_fd(fd);

	if (!file)
		return 0;
	umode_t mode = BPF_CORE_READ(file, f_inode, i_mode);
	if ((mode & N502_S_IFMT) != N502_S_IFSOCK)
		return 0;
	return (struct socket *)BPF_CORE_READ(file, private_data);
}

/* Reads of struct sock fields. Where a hook's arguments are typed (tp_btf,
 * N502_DIRECT) they are plain loads, which the verifier checks against the
 * kernel's BTF and makes fault-safe: about a nanosecond each. Elsewhere (raw_tp
 * with --btf, sockets found through a descriptor) they are
 * bpf_probe_read_kernel calls, tens of nanoseconds each. Both are CO-RE
 * relocated. Fields past struct sock: TCP_SOCK and TCP_FIELD below. */
#ifndef N502_DIRECT
#define N502_DIRECT 0
#endif
#if N502_DIRECT
#define SK_READ(sk, field) ((sk)->field)
#else
#define SK_READ(sk, field) BPF_CORE_READ(sk, field)
#endif

/* The struct tcp_sock a hook's own socket argument is part of, and its
 * fields (inet_connection_sock's through inet_conn). The verifier knows the
 * argument only as a struct sock, so under N502_DIRECT bpf_skc_to_tcp_sock
 * (5.9; a check of the socket's kind, no copy) gives the typed pointer, NULL
 * for a socket that is not a full TCP one (whose fields then read 0), and a
 * field is a plain load. Elsewhere a probe read. Only for a typed argument: a
 * socket known by its address alone takes BPF_CORE_READ. */
#if N502_DIRECT
#define TCP_SOCK(sk) ((const struct tcp_sock *)bpf_skc_to_tcp_sock((void *)(sk)))
#define TCP_FIELD(tp, field) ((tp) ? (tp)->field : 0)
#else
#define TCP_SOCK(sk) ((const struct tcp_sock *)(sk))
#define TCP_FIELD(tp, field) BPF_CORE_READ(tp, field)
#endif
#define TCP_READ(sk, field)                                  \
	({                                                   \
		const struct tcp_sock *__tp = TCP_SOCK(sk);  \
		TCP_FIELD(__tp, field);                      \
	})

/* The current task's flags (N502_PF_EXITING): a plain load where the kernel
 * has bpf_get_current_task_btf (5.11; the branch is relocated away before
 * load on 5.10), a probe read elsewhere. */
static __always_inline unsigned int current_task_flags(void)
{
#if N502_DIRECT
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_current_task_btf))
		return bpf_get_current_task_btf()->flags;
#endif
	return BPF_CORE_READ((struct task_struct *)bpf_get_current_task(), flags);
}

/* Inode number of the socket's network namespace. */
static __always_inline __u32 sock_netns(const struct sock *sk)
{
	struct net *net = SK_READ(sk, __sk_common.skc_net.net);

	return SK_READ(net, ns.inum);
}

/* Local (src) and remote (dst) endpoints of an inet socket, through
 * bpf_probe_read_kernel: for a socket known only by its address. */
/* An IPv4 connection on a dual-stack IPv6 socket (a server on [::], as
 * Node, Go and Java listen by default) has IPv4-mapped addresses
 * (::ffff:a.b.c.d): said as the IPv4 connection it is, the one Nginx's IPv4
 * socket is the other end of (its tuple, its address). */
static __always_inline int v4_mapped(const __u8 *a)
{
	__u32 w0, w1, w2;

	__builtin_memcpy(&w0, a, 4);
	__builtin_memcpy(&w1, a + 4, 4);
	__builtin_memcpy(&w2, a + 8, 4);
	return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff);
}

static __always_inline void unmap_v4(struct n502_addr *src, struct n502_addr *dst)
{
	__u32 s, d, zero = 0;

	if (!v4_mapped(src->addr) || !v4_mapped(dst->addr))
		return;
	__builtin_memcpy(&s, src->addr + 12, 4);
	__builtin_memcpy(&d, dst->addr + 12, 4);
	__builtin_memcpy(src->addr, &s, 4);
	__builtin_memcpy(dst->addr, &d, 4);
	for (int i = 4; i < 16; i += 4) {
		__builtin_memcpy(src->addr + i, &zero, 4);
		__builtin_memcpy(dst->addr + i, &zero, 4);
	}
	src->family = N502_AF_INET;
	dst->family = N502_AF_INET;
}

static __always_inline void read_inet_addrs_probe(const struct sock *sk, struct n502_addr *src,
						  struct n502_addr *dst)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	__u32 netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);

	src->family = family;
	dst->family = family;
	src->netns = netns;
	dst->netns = netns;
	src->port = BPF_CORE_READ(sk, __sk_common.skc_num);
	dst->port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	/* Explicit sizes: BPF_CORE_READ_INTO would take sizeof(*addr), one byte. */
	if (family == N502_AF_INET) {
		bpf_core_read(src->addr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(dst->addr, 4, &sk->__sk_common.skc_daddr);
	} else if (family == N502_AF_INET6) {
		bpf_core_read(src->addr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(dst->addr, 16, &sk->__sk_common.skc_v6_daddr);
		unmap_v4(src, dst);
	}
}

/* The same for a hook's own socket argument (plain loads under N502_DIRECT). */
static __always_inline void read_inet_addrs(const struct sock *sk, struct n502_addr *src, struct n502_addr *dst)
{
#if N502_DIRECT
	__u16 family = sk->__sk_common.skc_family;
	__u32 netns = sock_netns(sk);

	src->family = family;
	dst->family = family;
	src->netns = netns;
	dst->netns = netns;
	src->port = sk->__sk_common.skc_num;
	dst->port = bpf_ntohs(sk->__sk_common.skc_dport);
	if (family == N502_AF_INET) {
		__u32 a = sk->__sk_common.skc_rcv_saddr, b = sk->__sk_common.skc_daddr;
		__builtin_memcpy(src->addr, &a, 4);
		__builtin_memcpy(dst->addr, &b, 4);
	} else if (family == N502_AF_INET6) {
		for (int i = 0; i < 4; i++) {
			__u32 a = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[i];
			__u32 b = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[i];
			__builtin_memcpy(src->addr + 4 * i, &a, 4);
			__builtin_memcpy(dst->addr + 4 * i, &b, 4);
		}
		unmap_v4(src, dst);
	}
#else
	read_inet_addrs_probe(sk, src, dst);
#endif
}

static __always_inline void tuple_from_addrs(struct n502_tuple *t, const struct n502_addr *local,
					     const struct n502_addr *remote)
{
	__builtin_memcpy(t->saddr, local->addr, 16);
	__builtin_memcpy(t->daddr, remote->addr, 16);
	t->sport = local->port;
	t->dport = remote->port;
	t->family = local->family;
	t->_pad = 0;
	/* Loopback stays inside its namespace; anything else may cross one
	 * (veth), so it matches whatever namespace the other end is in. */
	__u8 a0 = remote->addr[0];
	int loopback = remote->family == N502_AF_INET ? a0 == 127 : 0;
	if (remote->family == N502_AF_INET6) {
		/* ::1 and ::ffff:127.x.y.z */
		__u64 hi, lo;
		__builtin_memcpy(&hi, remote->addr, 8);
		__builtin_memcpy(&lo, remote->addr + 8, 8);
		loopback = (hi == 0 && lo == bpf_cpu_to_be64(1)) ||
			   (hi == 0 && (lo & bpf_cpu_to_be64(0xffffffff00000000ULL)) == bpf_cpu_to_be64(0x0000ffff00000000ULL) &&
			    remote->addr[12] == 127);
	}
	t->netns = loopback ? remote->netns : 0;
}

/* The socks entry of key, unless it was made before the last switch to
 * anomaly-only tracking (its socket may have died unseen since; listeners
 * are followed in every mode). */
static __always_inline struct n502_sock *sock_entry(__u64 key)
{
	struct n502_sock *s = bpf_map_lookup_elem(&socks, &key);

	if (s && s->gen != track_gen && s->role != N502_SOCK_LISTENER)
		return 0;
	return s;
}

/* Adds role to the process; returns 1 when it did not have it yet. */
static __always_inline int track_proc(__u32 tgid, __u32 role)
{
	struct n502_proc *p = bpf_map_lookup_elem(&procs, &tgid);
	if (p) {
		if ((p->role & role) == role)
			return 0;
		/* Not atomic (5.10 has no BPF atomic OR); roles are only ever
		 * added, so a lost race loses at most one bit until the next
		 * event sets it again. */
		p->role |= role;
		return 1;
	}
	struct n502_proc np = { .role = role };
	if (bpf_map_update_elem(&procs, &tgid, &np, BPF_NOEXIST))
		count(N502_CNT_MAP_FULL);
	return 1;
}

static __always_inline void track_sock(__u64 sk, __u32 tgid, __u16 role, __u16 family)
{
	struct n502_sock s = { .owner_tgid = tgid, .role = role, .family = family, .gen = track_gen };
	socks_put(&sk, &s);
}

#endif /* N502_COMMON_BPF_H */
