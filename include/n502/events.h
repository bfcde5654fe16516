/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The event ABI: the one contract between the BPF programs (bpf/) and the
 * user side (user/). Both include this header and nothing else defines these
 * structs.
 *
 * Rules (pinned by tests/unit/test_abi.cpp):
 *   - fixed-width types only, explicit padding, no pointers, no bitfields;
 *   - no dependency on vmlinux.h or on libc headers;
 *   - every event begins with struct n502_hdr;
 *   - enum values are explicit and are never renumbered or reused.
 */
#ifndef N502_EVENTS_H
#define N502_EVENTS_H

#ifdef __BPF__
/* vmlinux.h already provides __u8 ... __u64 and __s32 */
#else
#include <linux/types.h>
#endif

#define N502_COMM_LEN 16
#define N502_UNIX_PATH_LEN 108
#define N502_ABI_VERSION 7
/* Largest log write captured from the kernel (N502_EV_LOG); longer ones are cut. */
#define N502_LOG_MAX 4096

enum n502_event_type {
	N502_EV_CONNECT = 1, /* an Nginx process returned from connect() on a stream socket */
	N502_EV_ACCEPT = 2,  /* a process accepted the other end of an Nginx connection */
	N502_EV_CLOSE = 3,   /* a tracked process called close() on a tracked socket */
	N502_EV_STATE = 4,   /* TCP state change of a tracked socket, or of any listener */
	N502_EV_RESET = 5,   /* a RST sent or received on a tracked socket */
	N502_EV_SIGNAL = 6,  /* a signal generated for a tracked process */
	N502_EV_EXIT = 7,    /* the last thread of a tracked process exited */
	N502_EV_FORK = 8,    /* a tracked process created a new process */
	N502_EV_OOM = 9,     /* the OOM killer chose a victim (any process) */
	N502_EV_LISTEN = 10, /* a process started listening on a stream socket */
	N502_EV_RETRANS = 11, /* a tracked TCP socket retransmitted (a SYN, in SYN_SENT) */
	N502_EV_LOG = 12,     /* Nginx wrote to a log that is a pipe/socket/tty (stderr in a container) */
	N502_EV_CONN = 13,    /* an Nginx TCP connection's story, held in the kernel until now */
	N502_EV_CGROUP = 14,  /* a cgroup (v2) was made, while containers or cgroups are selected */
	N502_EV_TYPE_MAX = 15,
};

/* Process roles: bits in the procs map value and in events. */
enum n502_proc_role {
	N502_PROC_NGINX = 1,
	N502_PROC_UPSTREAM = 2, /* took at least one Nginx connection */
	N502_PROC_LISTENER = 4, /* listened on a TCP port (or inherited a listener) */
};

/* Which end a tracked socket is. */
enum n502_sock_role {
	N502_SOCK_NGINX = 1,    /* Nginx's end of an upstream connection */
	N502_SOCK_UPSTREAM = 2, /* the upstream's end, owned by the process that took it */
	N502_SOCK_LISTENER = 3, /* a listening socket */
	/* Flag in the socks map only (never in events): the socket reached
	 * TCP_CLOSE but may still send the RST of an abortive close. */
	N502_SOCK_CLOSED = 0x8000,
	/* Flag in events only: sent by the anomaly-only path (adaptive
	 * tracking, or a socket the kernel side holds no record of). Nothing
	 * about the socket came before it; an Nginx end's owner is known only
	 * when the event ran in that owner's context (else 0). */
	N502_SOCK_UNTRACKED = 0x4000,
	/* Flag in events only, with N502_SOCK_UNTRACKED: a socket failing in
	 * softirq that was created by a uid Nginx's workers run as but in a
	 * cgroup none of them was seen in (map other_cgroup_socks holds which).
	 * User space decides: a worker moved there since, or another service
	 * running as Nginx's user (never reaches the correlator). */
	N502_SOCK_OTHER_CGROUP = 0x2000,
};

/* task_struct.flags (include/linux/sched.h), as the kernel side reads them
 * and /proc/PID/stat shows them: the task is exiting (in do_exit()). */
#define N502_PF_EXITING 0x00000004

/* TCP states (include/net/tcp_states.h), as the state tracepoint passes
 * them: stable kernel ABI. */
enum n502_tcp_state {
	N502_TCP_ESTABLISHED = 1,
	N502_TCP_SYN_SENT = 2,
	N502_TCP_SYN_RECV = 3,
	N502_TCP_FIN_WAIT1 = 4,
	N502_TCP_FIN_WAIT2 = 5,
	N502_TCP_TIME_WAIT = 6,
	N502_TCP_CLOSE = 7,
	N502_TCP_CLOSE_WAIT = 8,
	N502_TCP_LAST_ACK = 9,
	N502_TCP_LISTEN = 10,
	N502_TCP_CLOSING = 11,
	N502_TCP_NEW_SYN_RECV = 12,
};

enum n502_reset_dir {
	N502_RST_RECEIVED = 0,
	N502_RST_SENT = 1,
};

/* Indexes of the per-CPU counters map. */
enum n502_counter {
	N502_CNT_EMITTED = 0,  /* events written to the ring buffer */
	N502_CNT_LOST = 1,     /* events dropped: ring buffer full */
	N502_CNT_MAP_FULL = 2, /* map updates that failed (entry not tracked) */
	N502_CNT_UNTRACKED = 3, /* events of the anomaly-only path (N502_SOCK_UNTRACKED) */
	/* Entries the kernel side made in and removed from its LRU tables: what
	 * is missing from a table beyond them was evicted (forgotten), which
	 * user space works out when a table comes near its size. */
	N502_CNT_SOCKS_ADDED = 4,
	N502_CNT_SOCKS_REMOVED = 5,
	N502_CNT_TUPLES_ADDED = 6,
	N502_CNT_TUPLES_REMOVED = 7,
	N502_CNT_MAX = 8,
};

/* Key of the nginx_places map: a cgroup v2 directory where a followed Nginx
 * runs or ran, by its parent's id and its name (NUL-padded): what stays the
 * same when a container or a service is restarted and its cgroup made again. */
#define N502_PLACE_NAME_LEN 120
struct n502_place {
	__u64 parent_id;
	char name[N502_PLACE_NAME_LEN];
};

/* An endpoint: family is AF_INET (2), AF_INET6 (10) or AF_UNIX (1). */
struct n502_addr {
	__u16 family;
	__u16 port;    /* host byte order */
	__u32 netns;   /* inode number of the socket's network namespace (0: unknown) */
	__u8 addr[16]; /* IPv4 in the first 4 bytes, network byte order */
};

struct n502_hdr {
	__u16 type;    /* enum n502_event_type */
	__u16 size;    /* sizeof the whole event */
	__u32 cpu;
	__u64 ts_ns;   /* CLOCK_BOOTTIME, nanoseconds */
	__u32 tgid;    /* current task: in softirq this is NOT the socket's owner */
	__u32 tid;
	char comm[N502_COMM_LEN];
};

struct n502_connect_event {
	struct n502_hdr hdr;
	__u64 sk;      /* kernel socket address: the socket's identity while it lives */
	__u64 peer_sk; /* unix: the server-side socket created by the connect, else 0 */
	__s32 fd;
	__s32 ret;     /* connect()'s return: 0, -EINPROGRESS, -ECONNREFUSED, ... */
	struct n502_addr dst;
	char path[N502_UNIX_PATH_LEN]; /* unix: sun_path (abstract: leading NUL) */
};

/* How the process on the upstream's end of a connection became known.
 * Unix sockets: at accept(). TCP: accept() is not traced (a syscall
 * tracepoint would slow down every syscall on the host); the owner is the
 * process that first reads from the socket or closes it, both in its own
 * context. */
enum n502_took {
	N502_TOOK_ACCEPT = 0,  /* accept() returned it (unix sockets) */
	N502_TOOK_READ = 1,    /* first read of Nginx's request (TCP) */
	N502_TOOK_CLOSE = 2,   /* closed it without reading (TCP: its close, or its exit) */
	N502_TOOK_UNKNOWN = 3, /* linked to Nginx's end, owner not known yet: hdr's task is not it */
	N502_TOOK_EXITING = 0x100, /* flag: the owner was exiting (its death closed the socket) */
	N502_TOOK_ANNOUNCED = 0x200, /* flag, in a story only: its accept event was emitted on its own */
};

struct n502_accept_event {
	struct n502_hdr hdr;   /* the upstream process (unless how is N502_TOOK_UNKNOWN) */
	__u64 sk;              /* the upstream's end */
	__u64 nginx_sk;        /* Nginx's end of the same connection */
	__s32 fd;              /* unix: accept()'s result; TCP: -1 */
	__u32 nginx_tgid;      /* owner of Nginx's end (recorded at its connect) */
	struct n502_addr local; /* the address the upstream accepted on */
	struct n502_addr peer;  /* Nginx's address */
	__u64 cgroup_id;        /* the upstream process's cgroup v2 id */
	__u32 ns_tgid;          /* its pid inside its own pid namespace */
	__u32 how;              /* enum n502_took, with N502_TOOK_EXITING */
};

struct n502_close_event {
	struct n502_hdr hdr;
	__u64 sk;
	__s32 fd;
	__u16 sock_role; /* enum n502_sock_role */
	__u16 family;
	__u32 owner_tgid;
	__u32 adopted;   /* 1: first sight of a connection older than us (found by inode) */
	__u64 inode;     /* the socket's inode number */
};

struct n502_state_event {
	struct n502_hdr hdr;
	__u64 sk;
	__s32 oldstate;   /* TCP_* as in include/net/tcp_states.h */
	__s32 newstate;
	__s32 sk_err;     /* socket error at the change (ECONNREFUSED on a refused connect) */
	__u16 sock_role;  /* enum n502_sock_role */
	__u16 retransmits; /* icsk_retransmits: timer-driven resends so far (in SYN_SENT:
			    * SYNs), counted even when a resend failed to leave the host */
	__u32 owner_tgid; /* recorded at connect/accept/listen time */
	__u32 segs_out;   /* segments the socket has sent (0 at SYN_SENT -> CLOSE: no SYN left) */
	struct n502_addr src;
	struct n502_addr dst;
	__u64 bytes_received; /* payload bytes received so far (tcp_sock) */
	__u64 bytes_acked;    /* payload bytes sent and acknowledged so far */
};

struct n502_retrans_event {
	struct n502_hdr hdr;
	__u64 sk;
	__s32 state;      /* TCP state of the socket (SYN_SENT: a SYN retransmission) */
	__u16 sock_role;
	__u16 _pad;
	__u32 owner_tgid;
	__u32 _pad2;
	struct n502_addr src;
	struct n502_addr dst;
};

struct n502_reset_event {
	struct n502_hdr hdr;
	__u64 sk;
	__u32 dir;        /* enum n502_reset_dir */
	__s32 state;      /* socket state when the RST was handled */
	__u16 sock_role;
	__u16 _pad;
	__u32 owner_tgid;
	struct n502_addr src;
	struct n502_addr dst;
};

struct n502_signal_event {
	struct n502_hdr hdr;     /* the sender: current task when the signal was generated */
	__u32 target_tgid;
	__u32 target_tid;
	__s32 sig;
	__s32 code;              /* si_code: SI_USER 0, SI_KERNEL 0x80, SI_TKILL -6, fault codes > 0 */
	__s32 result;            /* TRACE_SIGNAL_DELIVERED 0, IGNORED 1, ... */
	__u32 target_role;       /* enum n502_proc_role bits */
	char target_comm[N502_COMM_LEN];
};

struct n502_exit_event {
	struct n502_hdr hdr;  /* the exiting task (last of its thread group) */
	__s32 exit_code;      /* wait status: (code << 8) or signal | 0x80 for a core dump */
	__u32 role;
};

struct n502_fork_event {
	struct n502_hdr hdr;  /* the parent */
	__u32 child_tgid;
	__u32 role;           /* role the child inherited */
};

struct n502_oom_event {
	struct n502_hdr hdr;  /* whoever triggered the kill, often not the victim */
	__u32 victim_pid;
	__u32 victim_role;    /* 0 when the victim is not tracked */
};

/* A cgroup of the v2 hierarchy was made (mkdir), while containers or
 * cgroups are selected: user space looks at once whether it is a selected
 * container's, starting or made again, rather than at its next look. */
struct n502_cgroup_event {
	struct n502_hdr hdr;  /* the task that made it (the container runtime) */
	__u64 cgroup_id;      /* the inode number of its directory */
	__u32 level;          /* its depth (1: a child of the root) */
	__u32 pad;
};

/* A write() by an Nginx process to a captured log descriptor. Variable
 * size: hdr.size == offsetof(data) + len. */
struct n502_log_event {
	struct n502_hdr hdr;
	__u64 ino;     /* inode number of the file written (the pipe, socket or tty) */
	__s32 fd;
	__u32 len;     /* bytes in data */
	__u32 cut;     /* the write was longer than N502_LOG_MAX: this many bytes were not copied */
	__u32 dev;     /* the file's device (kernel encoding: major << 20 | minor) */
	char data[N502_LOG_MAX];
};

/* Key of the log capture map: a file is its device and inode number (inode
 * numbers alone repeat across tmpfs, devpts and pipefs). */
struct n502_file_key {
	__u64 ino;
	__u32 dev; /* kernel encoding: major << 20 | minor */
	__u32 _pad;
};

struct n502_listen_event {
	struct n502_hdr hdr;
	__u64 sk;
	__s32 fd;
	__s32 backlog;
	struct n502_addr local;
	char path[N502_UNIX_PATH_LEN]; /* unix listeners: the bound path */
	__u64 cgroup_id;               /* the listening process's cgroup v2 id */
	__u32 ns_tgid;                 /* its pid inside its own pid namespace */
	__u32 _pad;
};

/* Value of the procs map (key: tgid). */
struct n502_proc {
	__u32 role;
	__u32 _pad;
};

/* What happened to an Nginx TCP connection while nothing about it was
 * abnormal. It is kept in the kernel, in the socks entry of Nginx's end, and
 * reaches user space whole in one N502_EV_CONN when Nginx closes the
 * connection, or earlier when something abnormal happens to it (an error, a
 * reset, a retransmission: then everything after it comes event by event).
 * A connection that ends normally costs one event instead of five. */
struct n502_story {
	__u64 est_ns;      /* SYN_SENT -> ESTABLISHED (0: not reached) */
	__u64 fin_ns;      /* the upstream's FIN arrived (ESTABLISHED -> CLOSE_WAIT; 0: not) */
	__u64 fin_bytes;   /* payload bytes Nginx had received by then */
	__u64 up_sk;       /* the upstream's end (0: not seen, e.g. on another host) */
	__u64 up_ns;       /* when the upstream's process became known (0: not known) */
	__u64 up_leave_ns;
	/* The process holding the upstream's end (0: not known). Its first
	 * connection is announced on its own (N502_EV_ACCEPT, with its pid
	 * namespace and cgroup): a story names only processes already known. */
	__u32 up_tgid;
	__u32 up_how;      /* enum n502_took, with N502_TOOK_EXITING */
	__u8 up_oldstate;  /* the upstream's end leaving ESTABLISHED (0: it has not) */
	__u8 up_newstate;
	__u16 sport;       /* Nginx's local port, read at ESTABLISHED (CLOSE releases it) */
	__u32 _pad;
	char up_comm[N502_COMM_LEN];
};

/* Value of the socks map (key: kernel socket address). */
struct n502_sock {
	__u32 owner_tgid; /* 0: not known yet (a TCP upstream end before its first read) */
	__u16 role;
	__u16 family;
	__u64 peer_sk;    /* an upstream end: Nginx's end of the connection */
	__u32 flags;      /* enum n502_sock_flag */
	__u32 gen;        /* track_gen when made: an older one is a dead socket's (listeners excepted) */
	struct n502_story story; /* Nginx's TCP end only */
};

enum n502_sock_flag {
	N502_SOCKF_ANNOUNCED = 1, /* an upstream end: user space has its accept event */
	N502_SOCKF_LIVE = 2,      /* Nginx's TCP end: its story was emitted; events follow one by one */
};

/* An Nginx TCP connection's story (struct n502_story), with the transition
 * of Nginx's end that emitted it: its close() (ESTABLISHED -> FIN_WAIT1), its
 * end (-> CLOSE); oldstate = newstate = 0 when something abnormal emitted it
 * early (the events that follow say what). User space replays it as the
 * events it stands for, at their own times. */
struct n502_conn_event {
	struct n502_hdr hdr;   /* the task that ran the hook */
	__u64 sk;              /* Nginx's end */
	__s32 oldstate;
	__s32 newstate;
	__s32 sk_err;
	__u16 retransmits;     /* icsk_retransmits at the transition */
	__u16 _pad;
	__u32 owner_tgid;      /* the Nginx process (recorded at its connect) */
	__u32 segs_out;
	struct n502_addr src;  /* Nginx's address */
	struct n502_addr dst;  /* the upstream's */
	__u64 bytes_received;
	__u64 bytes_acked;
	struct n502_story story;
};

/* Key of the tuples map: an Nginx TCP connection seen from Nginx's side.
 * netns is set for loopback destinations only: 127.0.0.1:9000 in two
 * network namespaces are two upstreams, while a connection through a veth
 * pair has its two ends in different namespaces. In the preexisting map a
 * unix socket is keyed by family AF_UNIX and its inode number in saddr's
 * first 8 bytes, the rest zero. */
struct n502_tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport; /* host byte order */
	__u16 dport; /* host byte order */
	__u16 family;
	__u16 _pad;
	__u32 netns;
};

#endif /* N502_EVENTS_H */
