// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * TCP socket life: state changes and resets of the sockets we track.
 *
 * These hooks run in softirq as often as in process context, so the event
 * carries the owner recorded at connect/accept/listen time (socks map), not
 * the current task. All three use tp_btf: the first argument (the socket) has
 * kept its type on every kernel from 5.10 on, whereas the classic tracepoint
 * records of tcp_send_reset changed (6.10 added the reset reason and dropped
 * the port/family fields in favour of sockaddr blobs).
 */
#include "common.bpf.h"

/* The socks entry of sk; for a socket of a connection that predates us
 * (preexisting map), adopt it first. *adopted says which. */
static __always_inline struct n502_sock *lookup_or_adopt(const struct sock *sk, __u64 key, int *adopted)
{
	struct n502_sock *s = bpf_map_lookup_elem(&socks, &key);
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
	if (bpf_map_update_elem(&socks, &key, pre, BPF_ANY)) {
		count(N502_CNT_MAP_FULL);
		return 0;
	}
	bpf_map_delete_elem(&preexisting, &t);
	*adopted = 1;
	return bpf_map_lookup_elem(&socks, &key);
}

static __always_inline void emit_state(const struct sock *sk, struct n502_sock *s, int oldstate,
				       int newstate, int adopted)
{
	struct n502_state_event *e = reserve(sizeof(*e), N502_EV_STATE);
	if (!e)
		return;
	e->sk = (__u64)sk;
	e->oldstate = oldstate;
	e->newstate = newstate;
	e->sk_err = BPF_CORE_READ(sk, sk_err);
	e->sock_role = s->role;
	/* The retransmission tracepoint can miss a resend (kernels before 6.x
	 * fire it only for resends that left the host); the socket's own count
	 * does not. */
	e->retransmits = BPF_CORE_READ((struct inet_connection_sock *)sk, icsk_retransmits);
	e->owner_tgid = s->owner_tgid;
	e->_pad2 = 0;
	/* Addresses are final at ESTABLISHED and known to user space from then
	 * on; a connect that fails in SYN_SENT is the other first sighting. */
	if (newstate == N502_TCP_ESTABLISHED || oldstate == N502_TCP_SYN_SENT || s->role != N502_SOCK_NGINX ||
	    adopted) {
		read_inet_addrs(sk, &e->src, &e->dst);
	} else {
		__builtin_memset(&e->src, 0, sizeof(e->src));
		__builtin_memset(&e->dst, 0, sizeof(e->dst));
	}
	e->bytes_received = BPF_CORE_READ((struct tcp_sock *)sk, bytes_received);
	e->bytes_acked = BPF_CORE_READ((struct tcp_sock *)sk, bytes_acked);
	submit(e);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_sock__inet_sock_set_state, const struct sock *sk, const int oldstate,
	     const int newstate)
{
	__u64 key = (__u64)sk;
	int adopted;
	struct n502_sock *s = lookup_or_adopt(sk, key, &adopted);

	if (!s)
		return 0;
	if (s->role & N502_SOCK_CLOSED) {
		/* A closed socket's memory now serves a new socket: forget it. */
		bpf_map_delete_elem(&socks, &key);
		return 0;
	}
	/* Only the transitions the rules use are emitted; the orderly tail of a
	 * close (FIN_WAIT2, LAST_ACK, CLOSING, TIME_WAIT) explains nothing, and
	 * SYN_SENT is implied by what follows it.
	 *   Nginx's end: ESTABLISHED, CLOSE_WAIT (FIN received), FIN_WAIT1
	 *     (Nginx closed first), CLOSE (the end: user space forgets it).
	 *   The upstream's end: only leaving ESTABLISHED (its FIN or abort).
	 *   Any transition with a socket error. */
	int emit = BPF_CORE_READ(sk, sk_err) != 0 || adopted;
	if (s->role == N502_SOCK_NGINX)
		emit = emit || newstate == N502_TCP_ESTABLISHED || newstate == N502_TCP_CLOSE_WAIT ||
		       newstate == N502_TCP_FIN_WAIT1 || newstate == N502_TCP_CLOSE;
	else if (s->role == N502_SOCK_UPSTREAM)
		emit = emit || oldstate == N502_TCP_ESTABLISHED;
	else
		emit = emit || newstate == N502_TCP_CLOSE;
	if (emit)
		emit_state(sk, s, oldstate, newstate, adopted);

	if (s->role == N502_SOCK_NGINX && newstate == N502_TCP_ESTABLISHED) {
		/* Ports and addresses are final now: remember the 4-tuple so the
		 * accept() of the other end can be matched to this socket. */
		struct n502_addr src = {}, dst = {};
		struct n502_tuple t = {};

		read_inet_addrs(sk, &src, &dst);
		tuple_from_addrs(&t, &src, &dst);
		if (bpf_map_update_elem(&tuples, &t, &key, BPF_ANY))
			count(N502_CNT_MAP_FULL);
	}
	if (newstate == N502_TCP_CLOSE) {
		if (s->role == N502_SOCK_NGINX) {
			struct n502_addr src = {}, dst = {};
			struct n502_tuple t = {};

			read_inet_addrs(sk, &src, &dst);
			tuple_from_addrs(&t, &src, &dst);
			bpf_map_delete_elem(&tuples, &t);
		}
		/* An abortive close (SO_LINGER 0, unread data) moves to CLOSE
		 * first and sends its RST right after: keep the entry, flagged,
		 * for that RST. The reset handler or the next life of this
		 * address removes it. */
		if (s->role == N502_SOCK_LISTENER)
			bpf_map_delete_elem(&socks, &key);
		else
			s->role |= N502_SOCK_CLOSED;
	}
	return 0;
}

static __always_inline void emit_reset(const struct sock *sk, __u32 dir)
{
	__u64 key = (__u64)sk;
	struct n502_sock *s;
	struct n502_reset_event *e;

	int adopted;

	if (!sk)
		return; /* a reset for a packet that matched no socket */
	s = lookup_or_adopt(sk, key, &adopted);
	if (!s)
		return;
	if (s->role & N502_SOCK_CLOSED) {
		int state = BPF_CORE_READ(sk, __sk_common.skc_state);
		bpf_map_delete_elem(&socks, &key);
		if (state != N502_TCP_CLOSE)
			return; /* not the socket we tracked any more */
	}
	e = reserve(sizeof(*e), N502_EV_RESET);
	if (!e)
		return;
	e->sk = key;
	e->dir = dir;
	e->state = BPF_CORE_READ(sk, __sk_common.skc_state);
	e->sock_role = s->role & ~N502_SOCK_CLOSED;
	e->_pad = 0;
	e->owner_tgid = s->owner_tgid;
	read_inet_addrs(sk, &e->src, &e->dst);
	submit(e);
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(handle_tcp__receive_reset, struct sock *sk)
{
	emit_reset(sk, N502_RST_RECEIVED);
	return 0;
}

/* Since 6.10 the reset reason is a third argument and sk may be NULL for a
 * reset that answers a packet without a socket; only the first argument is
 * read here, which every kernel from 5.10 on passes the same way. */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(handle_tcp__send_reset, const struct sock *sk)
{
	emit_reset(sk, N502_RST_SENT);
	return 0;
}

/* A retransmission on a tracked socket. In SYN_SENT it is an unanswered SYN:
 * a firewall dropping it, or a listener whose accept queue is full. The
 * prototype gained an error argument in 6.x; only the first is read. */
SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(handle_tcp__retransmit_skb, const struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct n502_sock *s = bpf_map_lookup_elem(&socks, &key);
	struct n502_retrans_event *e;

	if (!s || (s->role & N502_SOCK_CLOSED))
		return 0;
	e = reserve(sizeof(*e), N502_EV_RETRANS);
	if (!e)
		return 0;
	e->sk = key;
	e->state = BPF_CORE_READ(sk, __sk_common.skc_state);
	e->sock_role = s->role;
	e->_pad = 0;
	e->owner_tgid = s->owner_tgid;
	e->_pad2 = 0;
	read_inet_addrs(sk, &e->src, &e->dst);
	submit(e);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
