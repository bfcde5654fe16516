// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Unix-socket syscalls: who owns which end of an Nginx upstream connection
 * over a unix socket, which has no state tracepoints. (TCP is followed from
 * its own tracepoints in sock.bpf.c.) User space attaches these only when an
 * Nginx configuration names a unix-socket upstream: once one syscall
 * tracepoint is attached, every syscall of every task on the host takes the
 * slower path.
 *
 *   connect  (Nginx only)   records Nginx's socket; the exit reports the
 *                           result (unix connects complete in the syscall).
 *   accept   (listeners)    recognises the other end of an Nginx connection
 *                           by its peer socket and marks the acceptor as an
 *                           upstream.
 *   close    (tracked)      an explicit close() of a tracked socket.
 *   listen   (everyone)     remembers listeners: who listened where, so that
 *                           a failed connect can name the last listener.
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
	if (!sk || family != N502_AF_UNIX)
		return 0;

	__u64 id = bpf_get_current_pid_tgid();
	track_sock((__u64)sk, id >> 32, N502_SOCK_NGINX, family);
	a.sk = (__u64)sk;
	a.uaddr = ctx->args[1];
	a.addrlen = (int)ctx->args[2];
	if (bpf_map_update_elem(&connect_args, &id, &a, BPF_ANY))
		count(N502_CNT_MAP_FULL); /* its outcome will not be seen */
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int handle_sys_exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct connect_args *ap = bpf_map_lookup_elem(&connect_args, &id);
	struct connect_args a;
	struct n502_connect_event *e;

	if (!ap)
		return 0;
	a = *ap;
	bpf_map_delete_elem(&connect_args, &id);

	e = reserve(sizeof(*e), N502_EV_CONNECT);
	if (!e)
		return 0;
	e->sk = a.sk;
	e->peer_sk = 0;
	e->fd = a.fd;
	e->ret = (int)ctx->ret;
	__builtin_memset(&e->dst, 0, sizeof(e->dst));
	e->dst.family = N502_AF_UNIX;
	e->dst.netns = sock_netns((const struct sock *)a.sk);
	if (bpf_probe_read_user_str(e->path, sizeof(e->path), (void *)(a.uaddr + 2)) < 0)
		e->path[0] = 0;
	if (e->ret == 0) {
		struct unix_sock *us = (struct unix_sock *)a.sk;
		e->peer_sk = (__u64)BPF_CORE_READ(us, peer);
	} else {
		socks_del(&a.sk);
	}
	submit(e);
	return 0;
}

static __always_inline int on_accept_exit(long ret)
{
	struct socket *sock;
	struct sock *sk;
	__u64 key, nginx_sk;
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
	if (!sk || BPF_CORE_READ(sk, __sk_common.skc_family) != N502_AF_UNIX)
		return 0;
	key = (__u64)sk;
	/* The accepted unix socket's peer is the connecting socket itself,
	 * tracked since Nginx's connect() began. (The acceptor can return
	 * before Nginx's connect() does: do not wait for its exit.) */
	nginx_sk = (__u64)BPF_CORE_READ((struct unix_sock *)sk, peer);
	local.family = N502_AF_UNIX;
	peer.family = N502_AF_UNIX;
	local.netns = sock_netns(sk);
	peer.netns = local.netns;
	if (!nginx_sk)
		return 0;
	ns = bpf_map_lookup_elem(&socks, &nginx_sk);
	if (!ns || (ns->role & ~N502_SOCK_CLOSED) != N502_SOCK_NGINX)
		return 0;

	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	track_proc(tgid, N502_PROC_UPSTREAM);
	struct n502_sock v = { .owner_tgid = tgid, .role = N502_SOCK_UPSTREAM, .family = N502_AF_UNIX,
			       .peer_sk = nginx_sk, .flags = N502_SOCKF_ANNOUNCED };
	socks_put(&key, &v);

	struct n502_accept_event *e = reserve(sizeof(*e), N502_EV_ACCEPT);
	if (!e)
		return 0;
	e->sk = key;
	e->nginx_sk = nginx_sk;
	e->fd = (int)ret;
	e->nginx_tgid = ns->owner_tgid;
	e->local = local;
	e->peer = peer;
	/* Where the acceptor lives, read now: it may be gone (killed, its
	 * container removed) before user space could look in /proc. */
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->ns_tgid = current_ns_tgid();
	e->how = N502_TOOK_ACCEPT;
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
	__u64 ino = BPF_CORE_READ(sock, file, f_inode, i_ino);
	int adopted = 0;
	s = bpf_map_lookup_elem(&socks, &key);
	if (!s && adopt_preexisting) {
		/* A unix connection older than us (a keep-alive pool), known to
		 * user space by its inode: its close is its first sight. */
		struct n502_tuple t = { .family = N502_AF_UNIX };
		struct n502_sock *pre;

		__builtin_memcpy(t.saddr, &ino, sizeof(ino));
		pre = bpf_map_lookup_elem(&preexisting, &t);
		if (pre && !socks_put(&key, pre)) {
			bpf_map_delete_elem(&preexisting, &t);
			s = bpf_map_lookup_elem(&socks, &key);
			adopted = 1;
		}
	}
	/* TCP sockets tell their story through state changes (a close is a FIN
	 * or an abort, attributed to its owner): close() matters for unix
	 * sockets only, which have no states. */
	if (!s || (s->role & N502_SOCK_CLOSED) || s->family != N502_AF_UNIX)
		return 0;

	struct n502_close_event *e = reserve(sizeof(*e), N502_EV_CLOSE);
	if (e) {
		e->sk = key;
		e->fd = fd;
		e->sock_role = s->role;
		e->family = s->family;
		e->owner_tgid = s->owner_tgid;
		e->adopted = adopted;
		e->inode = ino;
		submit(e);
	}
	socks_del(&key);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_listen")
int handle_sys_enter_listen(struct trace_event_raw_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct listen_args a = { .fd = (int)ctx->args[0], .backlog = (int)ctx->args[1] };

	if (bpf_map_update_elem(&listen_args, &id, &a, BPF_ANY))
		count(N502_CNT_MAP_FULL);
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
	if (!sk || family != N502_AF_UNIX)
		return 0; /* TCP listeners: CLOSE -> LISTEN in sock.bpf.c */

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
	struct unix_address *ua = BPF_CORE_READ((struct unix_sock *)sk, addr);
	e->local.family = family;
	e->local.netns = sock_netns(sk);
	if (ua)
		bpf_probe_read_kernel_str(e->path, sizeof(e->path),
					  __builtin_preserve_access_index(&ua->name[0].sun_path));
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->ns_tgid = current_ns_tgid();
	e->_pad = 0;
	submit(e);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
