// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Socket syscalls: who owns which end of an Nginx upstream connection.
 *
 *   connect  (Nginx only)   records Nginx's socket before the SYN leaves, so
 *                           that every later state change is attributed; the
 *                           exit reports the result (EINPROGRESS for TCP, the
 *                           final answer for unix sockets).
 *   accept   (everyone)     recognises the other end of an Nginx connection by
 *                           its 4-tuple (TCP) or peer socket (unix) and marks
 *                           the accepting process as an upstream.
 *   close    (tracked)      an explicit close() of a tracked socket.
 *   listen   (everyone)     remembers listeners: who listened where, so that a
 *                           refused connect can name the last listener.
 */
#include "common.bpf.h"

struct listen_args {
	__s32 fd;
	__s32 backlog;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, struct listen_args);
} listen_args SEC(".maps");

static __always_inline int is_stream_family(__u16 family)
{
	return family == N502_AF_INET || family == N502_AF_INET6 || family == N502_AF_UNIX;
}

SEC("tracepoint/syscalls/sys_enter_connect")
int handle_sys_enter_connect(struct trace_event_raw_sys_enter *ctx)
{
	struct n502_proc *p = current_proc();
	struct connect_args a = {};
	struct socket *sock;
	struct sock *sk;
	__u16 family;

	if (!p || !(p->role & N502_PROC_NGINX) || !cgroup_selected())
		return 0;
	a.fd = (int)ctx->args[0];
	sock = socket_from_fd(a.fd);
	if (!sock || BPF_CORE_READ(sock, type) != N502_SOCK_STREAM)
		return 0;
	sk = BPF_CORE_READ(sock, sk);
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (!sk || !is_stream_family(family))
		return 0;

	__u64 id = bpf_get_current_pid_tgid();
	track_sock((__u64)sk, id >> 32, N502_SOCK_NGINX, family);
	a.sk = (__u64)sk;
	a.uaddr = ctx->args[1];
	a.addrlen = (int)ctx->args[2];
	bpf_map_update_elem(&connect_args, &id, &a, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int handle_sys_exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct connect_args *ap = bpf_map_lookup_elem(&connect_args, &id);
	struct connect_args a;
	struct n502_connect_event *e;
	__u16 family = 0;

	if (!ap)
		return 0;
	a = *ap;
	bpf_map_delete_elem(&connect_args, &id);

	/* A TCP connect in progress says nothing its state changes will not
	 * say (ESTABLISHED, or SYN_SENT -> CLOSE with the error): only results
	 * are emitted. Unix connects complete here, so they always are. */
	bpf_probe_read_user(&family, sizeof(family), (void *)a.uaddr);
	if ((int)ctx->ret == -115 /* EINPROGRESS */ && (family == N502_AF_INET || family == N502_AF_INET6))
		return 0;
	e = reserve(sizeof(*e), N502_EV_CONNECT);
	if (!e)
		return 0;
	e->sk = a.sk;
	e->peer_sk = 0;
	e->fd = a.fd;
	e->ret = (int)ctx->ret;
	__builtin_memset(&e->dst, 0, sizeof(e->dst));
	e->path[0] = 0;
	e->dst.family = family;
	e->dst.netns = sock_netns((const struct sock *)a.sk);
	if (family == N502_AF_INET) {
		struct sockaddr_in sin = {};
		bpf_probe_read_user(&sin, sizeof(sin), (void *)a.uaddr);
		e->dst.port = bpf_ntohs(sin.sin_port);
		__builtin_memcpy(e->dst.addr, &sin.sin_addr.s_addr, 4);
	} else if (family == N502_AF_INET6) {
		struct sockaddr_in6 sin6 = {};
		bpf_probe_read_user(&sin6, sizeof(sin6), (void *)a.uaddr);
		e->dst.port = bpf_ntohs(sin6.sin6_port);
		__builtin_memcpy(e->dst.addr, sin6.sin6_addr.in6_u.u6_addr8, 16);
	} else if (family == N502_AF_UNIX) {
		if (bpf_probe_read_user_str(e->path, sizeof(e->path), (void *)(a.uaddr + 2)) < 0)
			e->path[0] = 0;
		if (e->ret == 0) {
			struct unix_sock *us = (struct unix_sock *)a.sk;
			__u64 peer = (__u64)BPF_CORE_READ(us, peer);
			e->peer_sk = peer;
		} else {
			bpf_map_delete_elem(&socks, &a.sk);
		}
	}
	submit(e);
	return 0;
}

static __always_inline int on_accept_exit(long ret)
{
	struct socket *sock;
	struct sock *sk;
	__u64 key, nginx_sk = 0;
	__u32 nginx_tgid = 0;
	__u16 family;
	struct n502_addr local = {}, peer = {};
	struct n502_sock *ns;

	/* Only processes that listen (seen at listen(), found listening at
	 * start, or forked from one) accept: everyone else returns here. */
	if (ret < 0 || !current_proc())
		return 0;
	sock = socket_from_fd((int)ret);
	if (!sock || BPF_CORE_READ(sock, type) != N502_SOCK_STREAM)
		return 0;
	sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return 0;
	key = (__u64)sk;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family == N502_AF_INET || family == N502_AF_INET6) {
		struct n502_tuple t = {};
		__u64 *found;
		read_inet_addrs(sk, &local, &peer);
		/* Nginx's view of the same connection: its address is our peer. */
		tuple_from_addrs(&t, &peer, &local);
		found = bpf_map_lookup_elem(&tuples, &t);
		if (found)
			nginx_sk = *found;
	} else if (family == N502_AF_UNIX) {
		/* The accepted unix socket's peer is the connecting socket itself,
		 * tracked since Nginx's connect() began. (The acceptor can return
		 * before Nginx's connect() does: do not wait for its exit.) */
		nginx_sk = (__u64)BPF_CORE_READ((struct unix_sock *)sk, peer);
		local.family = family;
		peer.family = family;
		local.netns = sock_netns(sk);
		peer.netns = local.netns;
	}
	if (!nginx_sk)
		return 0;
	ns = bpf_map_lookup_elem(&socks, &nginx_sk);
	if (!ns || (ns->role & ~N502_SOCK_CLOSED) != N502_SOCK_NGINX)
		return 0;
	nginx_tgid = ns->owner_tgid;

	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	track_proc(tgid, N502_PROC_UPSTREAM);
	track_sock(key, tgid, N502_SOCK_UPSTREAM, family);

	struct n502_accept_event *e = reserve(sizeof(*e), N502_EV_ACCEPT);
	if (!e)
		return 0;
	e->sk = key;
	e->nginx_sk = nginx_sk;
	e->fd = (int)ret;
	e->nginx_tgid = nginx_tgid;
	e->local = local;
	e->peer = peer;
	/* Where the acceptor lives, read now: it may be gone (killed, its
	 * container removed) before user space could look in /proc. */
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->ns_tgid = current_ns_tgid();
	e->_pad = 0;
	submit(e);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int handle_sys_exit_accept4(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int handle_sys_exit_accept(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_close")
int handle_sys_enter_close(struct trace_event_raw_sys_enter *ctx)
{
	struct n502_proc *p = current_proc();
	struct socket *sock;
	struct n502_sock *s;
	__u64 key;
	int fd = (int)ctx->args[0];

	if (!p)
		return 0;
	sock = socket_from_fd(fd);
	if (!sock)
		return 0;
	key = (__u64)BPF_CORE_READ(sock, sk);
	s = bpf_map_lookup_elem(&socks, &key);
	if (!s || (s->role & N502_SOCK_CLOSED))
		return 0;

	/* TCP sockets tell their story through state changes (a close is a FIN
	 * or an abort, attributed to its owner): close() itself is emitted for
	 * unix sockets only, which have no states. */
	struct n502_close_event *e = 0;
	if (s->family == N502_AF_UNIX)
		e = reserve(sizeof(*e), N502_EV_CLOSE);
	if (e) {
		e->sk = key;
		e->fd = fd;
		e->sock_role = s->role;
		e->family = s->family;
		e->owner_tgid = s->owner_tgid;
		e->_pad = 0;
		submit(e);
	}
	/* TCP sockets leave the map at TCP_CLOSE; unix ones have no states, and
	 * a TCP socket whose connect failed at once never left CLOSE. */
	if (s->family == N502_AF_UNIX ||
	    BPF_CORE_READ(sock, sk, __sk_common.skc_state) == N502_TCP_CLOSE)
		bpf_map_delete_elem(&socks, &key);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_listen")
int handle_sys_enter_listen(struct trace_event_raw_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct listen_args a = { .fd = (int)ctx->args[0], .backlog = (int)ctx->args[1] };

	bpf_map_update_elem(&listen_args, &id, &a, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_listen")
int handle_sys_exit_listen(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct listen_args *ap = bpf_map_lookup_elem(&listen_args, &id);
	struct listen_args a;
	struct socket *sock;
	struct sock *sk;
	__u16 family;

	if (!ap)
		return 0;
	a = *ap;
	bpf_map_delete_elem(&listen_args, &id);
	if (ctx->ret != 0)
		return 0;
	sock = socket_from_fd(a.fd);
	if (!sock || BPF_CORE_READ(sock, type) != N502_SOCK_STREAM)
		return 0;
	sk = BPF_CORE_READ(sock, sk);
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (!sk || !is_stream_family(family))
		return 0;

	track_proc(id >> 32, N502_PROC_LISTENER);
	track_sock((__u64)sk, id >> 32, N502_SOCK_LISTENER, family);

	struct n502_listen_event *e = reserve(sizeof(*e), N502_EV_LISTEN);
	if (!e)
		return 0;
	e->sk = (__u64)sk;
	e->fd = a.fd;
	e->backlog = a.backlog;
	__builtin_memset(&e->local, 0, sizeof(e->local));
	e->path[0] = 0;
	if (family == N502_AF_UNIX) {
		struct unix_address *ua = BPF_CORE_READ((struct unix_sock *)sk, addr);
		e->local.family = family;
		e->local.netns = sock_netns(sk);
		if (ua)
			bpf_probe_read_kernel_str(e->path, sizeof(e->path),
						  __builtin_preserve_access_index(&ua->name[0].sun_path));
	} else {
		struct n502_addr dst;
		read_inet_addrs(sk, &e->local, &dst);
	}
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->ns_tgid = current_ns_tgid();
	e->_pad = 0;
	submit(e);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
