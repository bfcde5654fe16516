// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * TCP sockets: who owns which end of an Nginx upstream connection, and what
 * happened to it. Everything TCP is learnt here, from tracepoints that only
 * run for TCP work: no syscall tracepoint (attaching one makes every syscall
 * of every task on the host take the slow path).
 *
 *   CLOSE -> SYN_SENT     connect(), in the connecting task: an Nginx socket
 *   CLOSE -> LISTEN       listen(), in the listening task: a listener
 *   SYN_RECV -> ESTABLISHED  (softirq) the other end of an Nginx connection,
 *                         matched by 4-tuple; its owner is not known yet
 *   tcp_rcv_space_adjust  the upstream's first read, in its own task: the
 *                         owner (accept() itself has no TCP tracepoint)
 *   other transitions, resets, retransmissions: the story of tracked sockets
 *
 * A connection that looks normal emits nothing until Nginx closes it: its
 * story (struct n502_story) is kept in the socks entry of Nginx's end, the
 * upstream's end writing its part there too, and emitted whole as one
 * N502_EV_CONN. The first abnormal thing (a socket error, a reset, a
 * retransmission, a connection older than us) emits the story so far and
 * from then on the connection is followed event by event (N502_SOCKF_LIVE).
 *
 * These hooks run in softirq as often as in process context, so events carry
 * the owner recorded in the socks map, not the current task. All take the
 * tracepoint's arguments, not its record: the first argument (the socket) has
 * kept its type on every kernel from 5.10 on, whereas the classic tracepoint
 * records of tcp_send_reset changed (6.10 added the reset reason and dropped
 * the port/family fields in favour of sockaddr blobs).
 *
 * Each hook has two entry points with one body: tp_btf where the kernel has
 * BTF, raw_tp where it has none (--btf FILE supplies the types for CO-RE).
 * The body is compiled once per flavour: struct sock fields are plain loads
 * in the tp_btf one and probe reads in the raw_tp one (SK_READ); user space
 * loads one set.
 */
#include "common.bpf.h"

/* This file is compiled twice (CMakeLists.txt): N502_DIRECT=1 gives the
 * tp_btf programs, N502_DIRECT=0 the raw_tp ones. */
#if N502_DIRECT
#define N502_HOOK(tp, btf_name, raw_name, ...) SEC("tp_btf/" #tp) int BPF_PROG(btf_name, __VA_ARGS__)
#else
#define N502_HOOK(tp, btf_name, raw_name, ...) SEC("raw_tp/" #tp) int BPF_PROG(raw_name, __VA_ARGS__)
#endif

/* The socks entry of sk; for a socket of a connection that predates us
 * (preexisting map), adopt it first. *adopted says which. */
static __always_inline struct n502_sock *lookup_or_adopt(const struct sock *sk, __u64 key, int *adopted)
{
	struct n502_sock *s = sock_entry(key);
	struct n502_addr src = {}, dst = {};
	struct n502_tuple t = {};
	struct n502_sock *pre;

	*adopted = 0;
	if (s || !adopt_preexisting)
		return s;
	read_inet_addrs(sk, &src, &dst);
	tuple_from_addrs(&t, &src, &dst);
	pre = bpf_map_lookup_elem(&preexisting, &t);
	if (!pre)
		return 0;
	if (socks_put(&key, pre))
		return 0;
	bpf_map_delete_elem(&preexisting, &t);
	*adopted = 1;
	s = bpf_map_lookup_elem(&socks, &key);
	if (s) {
		s->flags |= N502_SOCKF_LIVE; /* its story began before us */
		s->gen = track_gen;
	}
	return s;
}

/* Is ns (a socks entry or NULL) Nginx's TCP end with its story still held? */
static __always_inline int story_held(const struct n502_sock *ns)
{
	return ns && ns->role == N502_SOCK_NGINX && !(ns->flags & N502_SOCKF_LIVE);
}

/* Nginx's TCP end whose story is still held in the kernel, or NULL. */
static __always_inline struct n502_sock *held_story(__u64 nginx_sk)
{
	struct n502_sock *ns = sock_entry(nginx_sk);

	return story_held(ns) ? ns : 0;
}

/* The story of Nginx's end sk (its address: nginx_sk) with the transition
 * that ends it; typed: sk is the hook's own argument, else only its address
 * is known (probe reads). oldstate = newstate = 0: emitted early. Events of
 * the connection come one by one after it. */
static __always_inline void emit_story(const struct sock *sk, struct n502_sock *s, int oldstate, int newstate,
				       int typed)
{
	struct n502_conn_event *e;

	s->flags |= N502_SOCKF_LIVE;
	e = reserve(sizeof(*e), N502_EV_CONN);
	if (!e)
		return;
	e->sk = (__u64)sk;
	e->oldstate = oldstate;
	e->newstate = newstate;
	e->_pad = 0;
	e->owner_tgid = s->owner_tgid;
	/* typed is a constant at each (inlined) call: the verifier sees one
	 * branch, and never a plain load from an address it knows as a number. */
	if (typed) {
		const struct tcp_sock *tp = TCP_SOCK(sk);

		e->sk_err = SK_READ(sk, sk_err);
		read_inet_addrs(sk, &e->src, &e->dst);
		e->retransmits = TCP_FIELD(tp, inet_conn.icsk_retransmits);
		e->segs_out = TCP_FIELD(tp, segs_out);
		e->bytes_received = TCP_FIELD(tp, bytes_received);
		e->bytes_acked = TCP_FIELD(tp, bytes_acked);
	} else {
		e->sk_err = BPF_CORE_READ(sk, sk_err);
		read_inet_addrs_probe(sk, &e->src, &e->dst);
		e->retransmits = BPF_CORE_READ((struct inet_connection_sock *)sk, icsk_retransmits);
		e->segs_out = BPF_CORE_READ((struct tcp_sock *)sk, segs_out);
		e->bytes_received = BPF_CORE_READ((struct tcp_sock *)sk, bytes_received);
		e->bytes_acked = BPF_CORE_READ((struct tcp_sock *)sk, bytes_acked);
	}
	if (s->story.sport)
		e->src.port = s->story.sport; /* released at CLOSE */
	__builtin_memcpy(&e->story, &s->story, sizeof(e->story));
	submit(e);
}

/* Something abnormal is about to be emitted for Nginx's end (or for the
 * upstream's end of its connection): user space must see the story so far
 * first. A story with nothing in it (still connecting) has nothing to say. */
static __always_inline void flush_story(__u64 nginx_sk, struct n502_sock *ns)
{
	if (ns->flags & N502_SOCKF_LIVE)
		return;
	if (!ns->story.est_ns) {
		ns->flags |= N502_SOCKF_LIVE;
		return;
	}
	emit_story((const struct sock *)nginx_sk, ns, 0, 0, 0);
}

/* A state event reserved and filled with what every sender of one fills the
 * same way: the caller adds the addresses, then submits. */
static __always_inline struct n502_state_event *state_event(const struct sock *sk, int oldstate, int newstate,
							    int err, __u16 role, __u32 owner)
{
	struct n502_state_event *e = reserve(sizeof(*e), N502_EV_STATE);
	const struct tcp_sock *tp = TCP_SOCK(sk);

	if (!e)
		return 0;
	e->sk = (__u64)sk;
	e->oldstate = oldstate;
	e->newstate = newstate;
	e->sk_err = err;
	e->sock_role = role;
	/* The retransmission tracepoint can miss a resend (kernels before 6.x
	 * fire it only for resends that left the host); the socket's own count
	 * does not. */
	e->retransmits = TCP_FIELD(tp, inet_conn.icsk_retransmits);
	e->owner_tgid = owner;
	e->segs_out = TCP_FIELD(tp, segs_out);
	e->bytes_received = TCP_FIELD(tp, bytes_received);
	e->bytes_acked = TCP_FIELD(tp, bytes_acked);
	return e;
}

static __always_inline void emit_state(const struct sock *sk, struct n502_sock *s, int oldstate,
				       int newstate, int adopted)
{
	struct n502_state_event *e = state_event(sk, oldstate, newstate, SK_READ(sk, sk_err), s->role, s->owner_tgid);

	if (!e)
		return;
	/* Addresses are final at ESTABLISHED and known to user space from then
	 * on; a connect that fails in SYN_SENT is the other first sighting. */
	if (newstate == N502_TCP_ESTABLISHED || oldstate == N502_TCP_SYN_SENT || s->role != N502_SOCK_NGINX ||
	    adopted) {
		read_inet_addrs(sk, &e->src, &e->dst);
	} else {
		__builtin_memset(&e->src, 0, sizeof(e->src));
		__builtin_memset(&e->dst, 0, sizeof(e->dst));
	}
	submit(e);
}

/* Is the current task the one working on sk under its socket lock? The
 * receive path and state changes also run in softirq, on top of whatever task
 * was interrupted (on loopback: the sender, Nginx itself). Softirq never
 * processes a socket a task holds locked (it queues to the backlog), so a
 * hook that finds sk locked runs in the locking task: recvmsg(), close(),
 * shutdown(), or the backlog processed at release_sock(), all in the owner's
 * own context. */
static __always_inline int in_owner_context(const struct sock *sk)
{
	return SK_READ(sk, sk_lock.owned) != 0;
}

/* Tell user space about the upstream's end of an Nginx connection. With a
 * known owner (how: READ or CLOSE) the current task is that owner: these
 * callers run in its context. UNKNOWN only links the socket to Nginx's end,
 * before one of its events that user space must be able to place. ns is
 * Nginx's socks entry when the caller has it (NULL: looked up here); now is
 * the caller's timestamp (0: taken here when needed). */
static __always_inline void announce_upstream(const struct sock *sk, struct n502_sock *s, __u32 how,
					      struct n502_sock *ns, __u64 now)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct n502_accept_event *e;
	__u64 nginx_sk = s->peer_sk;
	int first = 0;
	int held;

	if (how != N502_TOOK_UNKNOWN) {
		s->owner_tgid = tgid;
		first = track_proc(tgid, N502_PROC_UPSTREAM);
		/* A process killed while holding the connection closes it from
		 * do_exit(), after its exit was reported. */
		if (current_task_flags() & N502_PF_EXITING)
			how |= N502_TOOK_EXITING;
	}
	if (!ns)
		ns = sock_entry(nginx_sk);
	held = story_held(ns);
	/* Part of the story Nginx's end will tell (which links the two ends):
	 * nothing to emit now. Except a process's first connection: user space
	 * then learns of the process while it lives (its cgroups are read from
	 * /proc; an OOM-killed one is gone by the time its story arrives). */
	if (held && how == N502_TOOK_UNKNOWN)
		return;
	if (held) {
		ns->story.up_ns = now ? now : bpf_ktime_get_boot_ns();
		ns->story.up_tgid = tgid;
		ns->story.up_how = how | (first ? N502_TOOK_ANNOUNCED : 0);
		bpf_get_current_comm(ns->story.up_comm, sizeof(ns->story.up_comm));
		if (!first) {
			s->flags |= N502_SOCKF_ANNOUNCED;
			return;
		}
	}
	s->flags |= N502_SOCKF_ANNOUNCED;
	e = reserve(sizeof(*e), N502_EV_ACCEPT);
	if (!e)
		return;
	e->sk = (__u64)sk;
	e->nginx_sk = nginx_sk;
	e->fd = -1;
	e->nginx_tgid = ns ? ns->owner_tgid : 0;
	read_inet_addrs(sk, &e->local, &e->peer);
	if (how == N502_TOOK_UNKNOWN) {
		e->cgroup_id = 0;
		e->ns_tgid = 0;
	} else {
		e->cgroup_id = bpf_get_current_cgroup_id();
		e->ns_tgid = current_ns_tgid();
	}
	e->how = how;
	submit(e);
}

/* ---- The anomaly-only path: sockets the kernel side holds no record of
 * (all of them while track_full is 0, see common.bpf.h). It keeps nothing
 * and looks at nothing but the socket itself unless the socket has a
 * watched port and something went wrong. */

/* The socket's local port. A socket going to CLOSE has given its port back
 * (inet_num 0) by the time the state tracepoint runs; its source port (in
 * the headers it sends) stays. */
static __always_inline __u16 local_port(const struct sock *sk)
{
	__u16 port = SK_READ(sk, __sk_common.skc_num);

	return port ? port : bpf_ntohs(TCP_READ(sk, inet_conn.icsk_inet.inet_sport));
}

/* A socket with no record failed: from now on follow connections whole. */
static __always_inline void anomaly_seen(void)
{
	if (!track_full)
		track_full = 1;
}

/* The current task is exiting: do_exit() closing its files. */
static __always_inline int current_exiting(void)
{
	return (current_task_flags() & N502_PF_EXITING) != 0;
}

/* A state event of the anomaly-only path. role: N502_SOCK_NGINX or
 * N502_SOCK_UPSTREAM; owner: the socket's owner when known, else 0. */
static __always_inline void emit_untracked_state(const struct sock *sk, int oldstate, int newstate, int err,
						 __u16 role, __u32 owner)
{
	struct n502_state_event *e = state_event(sk, oldstate, newstate, err, role | N502_SOCK_UNTRACKED, owner);

	if (!e)
		return;
	if (role == N502_SOCK_UPSTREAM)
		e->retransmits = 0; /* the rules read Nginx's end's only */
	read_inet_addrs(sk, &e->src, &e->dst);
	e->src.port = local_port(sk);
	submit(e);
	if (!(role & N502_SOCK_OTHER_CGROUP)) /* user space's to count, if it takes it */
		count(N502_CNT_UNTRACKED);
}

/* Whose a failing socket toward an upstream port is (nginx_end_owner). */
enum n502_end_of {
	N502_END_OTHER = 0,        /* another process's own: not an Nginx connection */
	N502_END_NGINX = 1,        /* Nginx's */
	N502_END_OTHER_CGROUP = 2, /* Nginx's uid, a cgroup no worker was seen in */
};

/* The owner of Nginx's end sk as far as the current context tells: the
 * current task when it holds the socket (on loopback, a connect's refusal is
 * processed in the connecting task), 0 in softirq (user space matches the
 * event to a log line by upstream and time). In softirq a socket created by
 * a uid no Nginx worker runs as is another process's; one created by Nginx's
 * uid in a cgroup no worker was seen in is user space's to decide (a worker
 * may have been moved there since it was read), and its cgroup is left in
 * other_cgroup_socks for that, unless user space has just found that cgroup
 * to be another service's (foreign_cgroups). */
static __always_inline enum n502_end_of nginx_end_owner(const struct sock *sk, __u32 *owner)
{
	struct n502_proc *p;

	*owner = 0;
	if (!in_owner_context(sk)) {
		__u32 uid = SK_READ(sk, sk_uid.val);
		__u64 cgroup, key = (__u64)sk, *until;

		if (nginx_uids_known && !bpf_map_lookup_elem(&nginx_uids, &uid))
			return N502_END_OTHER;
		if (!nginx_cgroups_known)
			return N502_END_NGINX;
		cgroup = sock_cgroup_id(sk);
		if (!cgroup || bpf_map_lookup_elem(&nginx_cgroups, &cgroup))
			return N502_END_NGINX;
		until = bpf_map_lookup_elem(&foreign_cgroups, &cgroup);
		if (until && bpf_ktime_get_boot_ns() < *until)
			return N502_END_OTHER;
		if (bpf_map_update_elem(&other_cgroup_socks, &key, &cgroup, BPF_ANY))
			return N502_END_OTHER;
		return N502_END_OTHER_CGROUP;
	}
	p = current_proc();
	if (!p || !(p->role & N502_PROC_NGINX) || !cgroup_selected())
		return N502_END_OTHER;
	*owner = bpf_get_current_pid_tgid() >> 32;
	return N502_END_NGINX;
}

/* The socket role an anomaly-only event of Nginx's end carries; a failure
 * that is surely Nginx's switches to full tracking. */
static __always_inline __u16 nginx_end_role(enum n502_end_of whose)
{
	if (whose == N502_END_OTHER_CGROUP)
		return N502_SOCK_NGINX | N502_SOCK_OTHER_CGROUP;
	anomaly_seen();
	return N502_SOCK_NGINX;
}

/* Nginx's end had been closed by Nginx already (its FIN sent). A reset or an
 * error from then on is the upstream answering a connection Nginx gave up
 * on, which its error line explains (a timeout) or no error line follows (a
 * client gone: 499): not a failure of the upstream. */
static __always_inline int nginx_closed_first(int state)
{
	return state == N502_TCP_FIN_WAIT1 || state == N502_TCP_FIN_WAIT2 || state == N502_TCP_CLOSING ||
	       state == N502_TCP_TIME_WAIT;
}

/* A socket toward an upstream port failed: a connect that did not complete
 * (refused, timed out, given up by Nginx, no local port), an error on an
 * established connection (a reset), or a connection the upstream ended
 * unanswered. */
static __always_inline void untracked_connection_failed(const struct sock *sk, int oldstate, int newstate, int err)
{
	enum n502_end_of whose;
	__u32 owner;

	whose = nginx_end_owner(sk, &owner);
	if (whose == N502_END_OTHER)
		return;
	emit_untracked_state(sk, oldstate, newstate, err, nginx_end_role(whose), owner);
}

/* An upstream process ending a connection on an upstream port in a way no
 * answered request ends: dying with it open (do_exit() closes it in the
 * dying task's context), aborting it (a RST instead of a FIN), or closing it
 * without having sent one byte. Its close runs in its own context, so the
 * current task is the holder: its accept (how: that close) names it, then
 * the transition; Nginx's end is not known (nginx_sk 0, matched by tuple). */
static __always_inline void untracked_holder_close(const struct sock *sk, int oldstate, int newstate, int exiting)
{
	struct n502_accept_event *a;

	/* Only a death switches to full tracking from this end: the peer may be
	 * any client of the upstream, and on Nginx's own connections an abort or
	 * an unanswered FIN also shows at Nginx's end (a reset, a connection
	 * ended unanswered), where the uid tells Nginx's sockets apart. */
	if (exiting)
		anomaly_seen();
	a = reserve(sizeof(*a), N502_EV_ACCEPT);
	if (!a)
		return;
	a->sk = (__u64)sk;
	a->nginx_sk = 0;
	a->fd = -1;
	a->nginx_tgid = 0;
	read_inet_addrs(sk, &a->local, &a->peer);
	a->local.port = local_port(sk);
	a->cgroup_id = bpf_get_current_cgroup_id();
	a->ns_tgid = current_ns_tgid();
	a->how = N502_TOOK_CLOSE | (exiting ? N502_TOOK_EXITING : 0);
	submit(a);
	emit_untracked_state(sk, oldstate, newstate, 0, N502_SOCK_UPSTREAM, bpf_get_current_pid_tgid() >> 32);
}

/* SYN_SENT -> SYN_RECV is a simultaneous open: the SYN a connecting socket
 * received was not an answer to its own but a SYN to the same two ports. Two
 * connects crossing make one, and almost never do; on one host it is the
 * socket's own SYN come back: a connect to a port nothing listens on, from
 * that same port (a source port the kernel happened to pick, or one bound
 * with proxy_bind), completes as a connection to itself, and Nginx reads back
 * its own request. User space tells the two apart by the addresses. */
static __always_inline int met_itself(int oldstate, int newstate)
{
	return oldstate == N502_TCP_SYN_SENT && newstate == N502_TCP_SYN_RECV;
}

/* Are sk's two ends one address, lport (its local port) at both: a
 * connection that met itself? The ports are compared first: they differ on
 * every other connection. */
static __always_inline int to_itself(const struct sock *sk, __u16 lport)
{
	struct n502_addr src = {}, dst = {};
	int same = 1;

	if (lport != bpf_ntohs(SK_READ(sk, __sk_common.skc_dport)))
		return 0;
	read_inet_addrs(sk, &src, &dst);
	for (int i = 0; i < 16; i += 4) {
		__u32 a, b;

		__builtin_memcpy(&a, src.addr + i, 4);
		__builtin_memcpy(&b, dst.addr + i, 4);
		same = same && a == b;
	}
	return same;
}

/* A state change of a socket with no record. Cheapest tests first: most
 * transitions are neither a failure nor a close. */
static __always_inline void untracked_state(const struct sock *sk, int oldstate, int newstate, int err)
{
	/* A connect that failed, or one that met itself. */
	int failed = err || (oldstate == N502_TCP_SYN_SENT && newstate == N502_TCP_CLOSE) || met_itself(oldstate, newstate);
	/* The owner's close after the peer's FIN. */
	int closed_after_fin = oldstate == N502_TCP_CLOSE_WAIT &&
			       (newstate == N502_TCP_LAST_ACK || newstate == N502_TCP_CLOSE);
	/* The owner closing an open connection (its holder, on the upstream's
	 * side). Not after the peer's FIN: Nginx never half-closes an upstream
	 * connection, so by then Nginx has given up on it (a client gone, a
	 * timeout) and how the upstream closes no longer matters. */
	int closing = oldstate == N502_TCP_ESTABLISHED &&
		      (newstate == N502_TCP_FIN_WAIT1 || newstate == N502_TCP_CLOSE);
	/* An established connection ended by the upstream's FIN: a failure
	 * when not one byte of a reply came (HTTP, FastCGI, uwsgi and gRPC
	 * upstreams answer every request). Nginx's own close after that FIN
	 * runs in the worker: it names the owner. Nginx closing first is not
	 * one: it gave up on the request (a timeout, which its error line
	 * reports, or a client gone, a 499, which healthy hosts see all day);
	 * such a close carries nothing that would tell a timeout's connection
	 * from the 499's next to it. */
	int ended = closed_after_fin || (oldstate == N502_TCP_ESTABLISHED && newstate == N502_TCP_CLOSE_WAIT);
	int exiting;
	__u16 family, lport;

	if (!failed && !closing && !ended)
		return;
	family = SK_READ(sk, __sk_common.skc_family);
	if (family != N502_AF_INET && family != N502_AF_INET6)
		return;
	if ((failed || ended) && port_watched(bpf_ntohs(SK_READ(sk, __sk_common.skc_dport)))) {
		/* A FIN received counts one byte (it takes a sequence number). */
		__u64 fin = oldstate == N502_TCP_CLOSE_WAIT || newstate == N502_TCP_CLOSE_WAIT;
		if (nginx_closed_first(oldstate))
			return;
		if (failed || TCP_READ(sk, bytes_received) <= fin)
			untracked_connection_failed(sk, oldstate, newstate, err);
		return;
	}
	if (!closing)
		return;
	lport = local_port(sk);
	if (!port_watched(lport) || !in_owner_context(sk))
		return;
	/* Nginx closing a connection that met itself (its local port is the
	 * upstream's): the end of it, which nothing else would report. */
	if (to_itself(sk, lport)) {
		untracked_connection_failed(sk, oldstate, newstate, err);
		return;
	}
	/* The upstream's end, closed by its holder: dying, aborting (straight
	 * to CLOSE: a RST), or a FIN before any byte of an answer. */
	exiting = current_exiting();
	if (exiting || newstate == N502_TCP_CLOSE ||
	    (!err && newstate == N502_TCP_FIN_WAIT1 && !TCP_READ(sk, bytes_sent)))
		untracked_holder_close(sk, oldstate, newstate, exiting);
}

/* listen() on TCP, in the listening task. */
static __always_inline void on_listen(const struct sock *sk, __u64 key, __u16 family)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct n502_listen_event *e;
	struct n502_addr unused;

	track_proc(tgid, N502_PROC_LISTENER);
	track_sock(key, tgid, N502_SOCK_LISTENER, family);
	e = reserve(sizeof(*e), N502_EV_LISTEN);
	if (!e)
		return;
	e->sk = key;
	e->fd = -1;
	/* Set before the state change, and already capped by somaxconn. */
	e->backlog = SK_READ(sk, sk_max_ack_backlog);
	read_inet_addrs(sk, &e->local, &unused);
	e->path[0] = 0;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->ns_tgid = current_ns_tgid();
	e->_pad = 0;
	submit(e);
}

/* A passive connection completed: is it the other end of one of Nginx's? */
static __always_inline void on_passive_established(const struct sock *sk, __u64 key)
{
	struct n502_addr local = {}, peer = {};
	struct n502_tuple t = {};
	struct n502_sock *ns;
	__u64 nginx_sk;
	__u64 *found;

	read_inet_addrs(sk, &local, &peer);
	/* Nginx's view of the same connection: its address is our peer. */
	tuple_from_addrs(&t, &peer, &local);
	found = bpf_map_lookup_elem(&tuples, &t);
	if (!found)
		return;
	nginx_sk = *found;
	if (nginx_sk == key)
		return; /* its own tuple: a connection that met itself has one end */
	ns = sock_entry(nginx_sk);
	if (!ns || (ns->role & ~N502_SOCK_CLOSED) != N502_SOCK_NGINX)
		return;
	struct n502_sock v = {
		.role = N502_SOCK_UPSTREAM, .family = local.family, .peer_sk = nginx_sk, .gen = track_gen
	};
	if (socks_put(&key, &v))
		return;
	ns->story.up_sk = key; /* the story links the two ends */
}

/* The first transition of a socket we do not track yet. */
static __always_inline void begin_tracking(const struct sock *sk, __u64 key, int oldstate, int newstate)
{
	__u16 family = SK_READ(sk, __sk_common.skc_family);

	if (family != N502_AF_INET && family != N502_AF_INET6)
		return;
	if (oldstate == N502_TCP_CLOSE && newstate == N502_TCP_SYN_SENT) {
		/* tcp_v4/v6_connect(), in the connecting task, before the SYN. */
		struct n502_proc *p = current_proc();
		if (p && (p->role & N502_PROC_NGINX) && cgroup_selected())
			track_sock(key, bpf_get_current_pid_tgid() >> 32, N502_SOCK_NGINX, family);
	} else if (oldstate == N502_TCP_CLOSE && newstate == N502_TCP_LISTEN) {
		on_listen(sk, key, family);
	} else if (oldstate == N502_TCP_SYN_RECV && newstate == N502_TCP_ESTABLISHED) {
		on_passive_established(sk, key);
	}
}

/* A tracked socket reached CLOSE. An abortive close (SO_LINGER 0, unread
 * data: from ESTABLISHED or CLOSE_WAIT) sends its RST right after, and so
 * does a reset with an error set (data arriving after shutdown): keep the
 * entry, flagged, for that RST (the reset handler or the next life of this
 * address removes it). An orderly end frees it now. */
static __always_inline void closed(const struct sock *sk, struct n502_sock *s, __u64 key, int oldstate)
{
	if (s->role != N502_SOCK_LISTENER &&
	    (oldstate == N502_TCP_ESTABLISHED || oldstate == N502_TCP_CLOSE_WAIT || SK_READ(sk, sk_err)))
		s->role |= N502_SOCK_CLOSED;
	else
		socks_del(&key);
}

/* Remember an Nginx connection's 4-tuple, or forget it: the upstream's end
 * is matched to Nginx's through it when it is established. */
static __always_inline void remember_tuple(const struct sock *sk, __u64 key, struct n502_sock *s, int remember)
{
	struct n502_addr src = {}, dst = {};
	struct n502_tuple t = {};

	read_inet_addrs(sk, &src, &dst);
	/* At CLOSE the local port has already been released (0): use the one
	 * read at ESTABLISHED. */
	if (remember)
		s->story.sport = src.port;
	else
		src.port = s->story.sport;
	tuple_from_addrs(&t, &src, &dst);
	if (!remember)
		tuples_del(&t);
	else
		tuples_put(&t, &key);
}

/* A transition of Nginx's end while its story is held, without an error. */
static __always_inline int held_transition(const struct sock *sk, __u64 key, struct n502_sock *s, int oldstate,
					   int newstate)
{
	if (newstate == N502_TCP_ESTABLISHED) {
		s->story.est_ns = bpf_ktime_get_boot_ns();
		remember_tuple(sk, key, s, 1);
	} else if (oldstate == N502_TCP_ESTABLISHED && newstate == N502_TCP_CLOSE_WAIT) {
		s->story.fin_ns = bpf_ktime_get_boot_ns();
		s->story.fin_bytes = TCP_READ(sk, bytes_received);
	} else if (oldstate == N502_TCP_ESTABLISHED && newstate == N502_TCP_FIN_WAIT1) {
		/* Nginx closed first (a timeout, a client gone, a response read
		 * whole): what the upstream does next comes one by one. */
		emit_story(sk, s, oldstate, newstate, 1);
	} else if (newstate == N502_TCP_CLOSE) {
		/* The usual end: LAST_ACK -> CLOSE after the upstream's FIN. */
		emit_story(sk, s, oldstate, newstate, 1);
		if (oldstate != N502_TCP_SYN_SENT)
			remember_tuple(sk, key, s, 0);
		closed(sk, s, key, oldstate);
	}
	return 0;
}

/* A transition of the upstream's end while Nginx's end holds the story: it
 * becomes part of it. Only its owner's own close (or exit) runs in its
 * context and names it. */
static __always_inline void held_upstream_transition(const struct sock *sk, struct n502_sock *s,
						     struct n502_sock *ns, int oldstate, int newstate)
{
	int leaves = oldstate == N502_TCP_ESTABLISHED && !ns->story.up_oldstate;
	/* One timestamp for both, taken only when one of them needs it. */
	__u64 now = leaves ? bpf_ktime_get_boot_ns() : 0;

	if (!s->owner_tgid && in_owner_context(sk) &&
	    ((oldstate == N502_TCP_ESTABLISHED && (newstate == N502_TCP_FIN_WAIT1 || newstate == N502_TCP_CLOSE)) ||
	     (oldstate == N502_TCP_CLOSE_WAIT && (newstate == N502_TCP_LAST_ACK || newstate == N502_TCP_CLOSE))))
		announce_upstream(sk, s, N502_TOOK_CLOSE, ns, now);
	if (leaves) {
		ns->story.up_oldstate = oldstate;
		ns->story.up_newstate = newstate;
		ns->story.up_leave_ns = now;
	}
}

static __always_inline int on_sock__inet_sock_set_state(const struct sock *sk, const int oldstate, const int newstate)
{
	__u64 key = (__u64)sk;
	struct n502_sock *s, *ns = 0;
	int adopted, err;

	/* Transitions no rule and no bookkeeping needs, checked before any map
	 * lookup: a passive socket being created (its SYN_RECV -> ESTABLISHED
	 * is what matters), and the orderly middle of a close. */
	if (oldstate == N502_TCP_CLOSE && newstate == N502_TCP_SYN_RECV)
		return 0;
	err = SK_READ(sk, sk_err);
	if ((newstate == N502_TCP_FIN_WAIT2 || newstate == N502_TCP_TIME_WAIT) && !err)
		return 0;
	/* The tracepoint also fires for SCTP, DCCP and MPTCP sockets. */
	if (SK_READ(sk, sk_protocol) != N502_IPPROTO_TCP)
		return 0;
	if (!track_full) {
		/* Anomalies only; listeners are followed in every mode (rare,
		 * and what a refused connect is told by). */
		if (oldstate == N502_TCP_CLOSE && newstate == N502_TCP_LISTEN) {
			begin_tracking(sk, key, oldstate, newstate);
			return 0;
		}
		if (oldstate != N502_TCP_LISTEN) {
			untracked_state(sk, oldstate, newstate, err);
			return 0;
		}
	}
	/* A socket's first transition: whatever entry its address has is a
	 * dead socket's (tracking one overwrites it, and a stale entry flagged
	 * CLOSED is forgotten at its next use). No lookup. */
	if ((oldstate == N502_TCP_CLOSE && (newstate == N502_TCP_SYN_SENT || newstate == N502_TCP_LISTEN)) ||
	    (oldstate == N502_TCP_SYN_RECV && newstate == N502_TCP_ESTABLISHED)) {
		begin_tracking(sk, key, oldstate, newstate);
		return 0;
	}
	s = lookup_or_adopt(sk, key, &adopted);
	if (s && (s->role & N502_SOCK_CLOSED)) {
		/* A closed socket's memory now serves a new socket: forget it. */
		socks_del(&key);
		s = 0;
	}
	if (!s) {
		/* Not followed: a connection older than the last switch to
		 * full tracking, or not Nginx's. Its failures still count. */
		if (adaptive_tracking)
			untracked_state(sk, oldstate, newstate, err);
		return 0;
	}
	if (s->role == N502_SOCK_NGINX && !(s->flags & N502_SOCKF_LIVE)) {
		if (err || met_itself(oldstate, newstate))
			flush_story(key, s); /* then this transition, one by one */
		else
			return held_transition(sk, key, s, oldstate, newstate);
	}
	if (s->role == N502_SOCK_UPSTREAM) {
		/* The upstream's end matters when it leaves ESTABLISHED or
		 * CLOSE_WAIT (its close, its FIN, an abort), or on an error;
		 * the rest of an orderly close is only its end. */
		if (!err && !adopted && oldstate != N502_TCP_ESTABLISHED && oldstate != N502_TCP_CLOSE_WAIT) {
			if (newstate == N502_TCP_CLOSE)
				closed(sk, s, key, oldstate);
			return 0;
		}
		ns = held_story(s->peer_sk);
		if (ns && !err) {
			held_upstream_transition(sk, s, ns, oldstate, newstate);
			if (newstate == N502_TCP_CLOSE)
				closed(sk, s, key, oldstate);
			return 0;
		}
		if (ns)
			flush_story(s->peer_sk, ns);
	}
	/* Only the transitions the rules use are emitted; the orderly tail of a
	 * close (FIN_WAIT2, LAST_ACK, CLOSING, TIME_WAIT) explains nothing, and
	 * SYN_SENT is implied by what follows it.
	 *   Nginx's end: ESTABLISHED, CLOSE_WAIT (FIN received), FIN_WAIT1
	 *     (Nginx closed first), CLOSE (the end: user space forgets it),
	 *     SYN_RECV (met itself: its ESTABLISHED that follows is taken for a
	 *     passive socket's first transition above and not seen here).
	 *   The upstream's end: only leaving ESTABLISHED (its FIN or abort).
	 *   Any transition with a socket error. */
	int emit = err != 0 || adopted;
	if (s->role == N502_SOCK_NGINX)
		emit = emit || newstate == N502_TCP_ESTABLISHED || newstate == N502_TCP_CLOSE_WAIT ||
		       newstate == N502_TCP_FIN_WAIT1 || newstate == N502_TCP_CLOSE || met_itself(oldstate, newstate);
	else if (s->role == N502_SOCK_UPSTREAM)
		emit = emit || oldstate == N502_TCP_ESTABLISHED;
	else
		emit = emit || newstate == N502_TCP_CLOSE;
	if (s->role == N502_SOCK_UPSTREAM && !s->owner_tgid) {
		/* Transitions only the owner causes (its close(), shutdown() or
		 * exit) run in its context: that names it. Anything else is
		 * announced without an owner, so user space can place it. */
		int by_owner = !err && in_owner_context(sk) && ((oldstate == N502_TCP_ESTABLISHED &&
					 (newstate == N502_TCP_FIN_WAIT1 || newstate == N502_TCP_CLOSE)) ||
					(oldstate == N502_TCP_CLOSE_WAIT &&
					 (newstate == N502_TCP_LAST_ACK || newstate == N502_TCP_CLOSE)));
		if (by_owner)
			announce_upstream(sk, s, N502_TOOK_CLOSE, ns, 0);
		else if (emit && !(s->flags & N502_SOCKF_ANNOUNCED))
			announce_upstream(sk, s, N502_TOOK_UNKNOWN, ns, 0);
	}
	if (emit)
		emit_state(sk, s, oldstate, newstate, adopted);

	/* Ports and addresses are final at ESTABLISHED: the 4-tuple lets the
	 * other end be matched to this socket. */
	if (s->role == N502_SOCK_NGINX && newstate == N502_TCP_ESTABLISHED)
		remember_tuple(sk, key, s, 1);
	if (newstate == N502_TCP_CLOSE) {
		if (s->role == N502_SOCK_NGINX && oldstate != N502_TCP_SYN_SENT)
			remember_tuple(sk, key, s, 0);
		closed(sk, s, key, oldstate);
	}
	return 0;
}

N502_HOOK(inet_sock_set_state, handle_sock__inet_sock_set_state, raw_sock__inet_sock_set_state, const struct sock *sk, const int oldstate, const int newstate)
{
	return on_sock__inet_sock_set_state(sk, oldstate, newstate);
}

/* A socket with no record toward an upstream port received a RST: in
 * SYN_SENT a refusal, else the upstream (or something on the way) reset the
 * connection; the state it was in tells whether the upstream had closed
 * first (CLOSE_WAIT: a keep-alive connection reused too late). */
static __always_inline void untracked_reset_received(const struct sock *sk)
{
	struct n502_reset_event *e;
	__u16 family = SK_READ(sk, __sk_common.skc_family);
	int state = SK_READ(sk, __sk_common.skc_state);
	enum n502_end_of whose;
	__u16 role;
	__u32 owner;

	if ((family != N502_AF_INET && family != N502_AF_INET6) ||
	    !port_watched(bpf_ntohs(SK_READ(sk, __sk_common.skc_dport))) || nginx_closed_first(state))
		return;
	whose = nginx_end_owner(sk, &owner);
	if (whose == N502_END_OTHER)
		return;
	role = nginx_end_role(whose);
	e = reserve(sizeof(*e), N502_EV_RESET);
	if (!e)
		return;
	e->sk = (__u64)sk;
	e->dir = N502_RST_RECEIVED;
	e->state = state;
	e->sock_role = role | N502_SOCK_UNTRACKED;
	e->_pad = 0;
	e->owner_tgid = owner;
	read_inet_addrs(sk, &e->src, &e->dst);
	submit(e);
	if (whose == N502_END_NGINX)
		count(N502_CNT_UNTRACKED);
}

static __always_inline void emit_reset(const struct sock *sk, __u32 dir)
{
	__u64 key = (__u64)sk;
	struct n502_sock *s, *ns = 0;
	struct n502_reset_event *e;

	int adopted;

	if (!sk)
		return; /* a reset for a packet that matched no socket */
	s = lookup_or_adopt(sk, key, &adopted);
	if (!s) {
		if (adaptive_tracking && dir == N502_RST_RECEIVED)
			untracked_reset_received(sk);
		return;
	}
	if (s->role & N502_SOCK_CLOSED) {
		int state = SK_READ(sk, __sk_common.skc_state);
		socks_del(&key);
		if (state != N502_TCP_CLOSE)
			return; /* not the socket we tracked any more */
	}
	/* A reset is abnormal: the connection's story so far goes first. */
	if (s->role == N502_SOCK_NGINX) {
		flush_story(key, s);
	} else if (s->role == N502_SOCK_UPSTREAM) {
		ns = held_story(s->peer_sk);
		if (ns)
			flush_story(s->peer_sk, ns);
	}
	if (s->role == N502_SOCK_UPSTREAM && !s->owner_tgid && !(s->flags & N502_SOCKF_ANNOUNCED))
		announce_upstream(sk, s, N502_TOOK_UNKNOWN, ns, 0);
	e = reserve(sizeof(*e), N502_EV_RESET);
	if (!e)
		return;
	e->sk = key;
	e->dir = dir;
	e->state = SK_READ(sk, __sk_common.skc_state);
	e->sock_role = s->role & ~N502_SOCK_CLOSED;
	e->_pad = 0;
	e->owner_tgid = s->owner_tgid;
	read_inet_addrs(sk, &e->src, &e->dst);
	submit(e);
}

static __always_inline int on_tcp__receive_reset(struct sock *sk)
{
	emit_reset(sk, N502_RST_RECEIVED);
	return 0;
}

N502_HOOK(tcp_receive_reset, handle_tcp__receive_reset, raw_tcp__receive_reset, struct sock *sk)
{
	return on_tcp__receive_reset(sk);
}

/* Since 6.10 the reset reason is a third argument and sk may be NULL for a
 * reset that answers a packet without a socket; only the first argument is
 * read here, which every kernel from 5.10 on passes the same way. */
static __always_inline int on_tcp__send_reset(const struct sock *sk)
{
	emit_reset(sk, N502_RST_SENT);
	return 0;
}

N502_HOOK(tcp_send_reset, handle_tcp__send_reset, raw_tcp__send_reset, const struct sock *sk)
{
	return on_tcp__send_reset(sk);
}

/* A SYN resent toward an upstream port by a socket with no record: a
 * retransmission timer fires in softirq, so its owner is not known. */
static __always_inline void untracked_syn_resent(const struct sock *sk)
{
	struct n502_retrans_event *e;

	if (SK_READ(sk, __sk_common.skc_state) != N502_TCP_SYN_SENT ||
	    !port_watched(bpf_ntohs(SK_READ(sk, __sk_common.skc_dport))))
		return;
	anomaly_seen();
	e = reserve(sizeof(*e), N502_EV_RETRANS);
	if (!e)
		return;
	e->sk = (__u64)sk;
	e->state = N502_TCP_SYN_SENT;
	e->sock_role = N502_SOCK_NGINX | N502_SOCK_UNTRACKED;
	e->_pad = 0;
	e->owner_tgid = 0;
	e->_pad2 = 0;
	read_inet_addrs(sk, &e->src, &e->dst);
	submit(e);
	count(N502_CNT_UNTRACKED);
}

/* A retransmission on a tracked socket. In SYN_SENT it is an unanswered SYN:
 * a firewall dropping it, or a listener whose accept queue is full. The
 * prototype gained an error argument in 6.x; only the first is read. */
static __always_inline int on_tcp__retransmit_skb(const struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct n502_sock *s = sock_entry(key);
	struct n502_retrans_event *e;

	/* Nginx's end only: a SYN resent is what the rules use. */
	if (!s) {
		if (adaptive_tracking)
			untracked_syn_resent(sk);
		return 0;
	}
	if (s->role != N502_SOCK_NGINX)
		return 0;
	flush_story(key, s);
	e = reserve(sizeof(*e), N502_EV_RETRANS);
	if (!e)
		return 0;
	e->sk = key;
	e->state = SK_READ(sk, __sk_common.skc_state);
	e->sock_role = s->role;
	e->_pad = 0;
	e->owner_tgid = s->owner_tgid;
	e->_pad2 = 0;
	read_inet_addrs(sk, &e->src, &e->dst);
	submit(e);
	return 0;
}

N502_HOOK(tcp_retransmit_skb, handle_tcp__retransmit_skb, raw_tcp__retransmit_skb, const struct sock *sk)
{
	return on_tcp__retransmit_skb(sk);
}

/* The upstream's first read of a connection it took, in its own context:
 * this names the owner of a TCP upstream end. Also runs in softirq (receive
 * autotuning on arrival), which in_owner_context() tells apart. Runs for
 * every TCP receive on the host: one lookup for the rest. */
static __always_inline int on_tcp__rcv_space_adjust(struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct n502_sock *s;

	if (!track_full || !in_owner_context(sk)) /* plain loads: before the lookup */
		return 0;
	/* An upstream reads Nginx's request before it sends anything (HTTP,
	 * FastCGI, uwsgi: the client speaks first), so a socket that has sent
	 * payload is past its first read: every later read of every TCP
	 * socket on the host stops here, on a field of the socket itself,
	 * before any map is touched. A server that speaks first (an HTTP/2
	 * server's SETTINGS) is named by its close or exit instead. */
	if (TCP_READ(sk, bytes_sent))
		return 0;
	s = sock_entry(key);
	if (!s || s->role != N502_SOCK_UPSTREAM || s->owner_tgid)
		return 0;
	announce_upstream(sk, s, N502_TOOK_READ, 0, 0);
	return 0;
}

N502_HOOK(tcp_rcv_space_adjust, handle_tcp__rcv_space_adjust, raw_tcp__rcv_space_adjust, struct sock *sk)
{
	return on_tcp__rcv_space_adjust(sk);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
