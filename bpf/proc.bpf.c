// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Process life of tracked processes: signals sent to them (and by whom),
 * their exit (and how), their children, and OOM kills; an Nginx that starts
 * where a followed one ran; and cgroups made while containers are selected.
 *
 * signal_generate, sched_process_exit and sched_process_fork use tp_btf for
 * the task_struct arguments (the classic records only carry the thread id,
 * not the thread group). mark_victim uses the classic record: its tp_btf
 * prototype changed in 6.8 (int pid -> task_struct *), while the record's
 * `pid` field exists on every kernel and is relocated by CO-RE.
 *
 * As in sock.bpf.c, the argument-based hooks have a tp_btf and a raw_tp
 * entry point around one body (raw_tp for kernels without BTF).
 */
#include "common.bpf.h"

#define N502_SI_USER 0
#define N502_SI_KERNEL 0x80

static __always_inline int on_signal__generate(int sig, struct kernel_siginfo *info, struct task_struct *task, int group, int result)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);
	struct n502_proc *p = bpf_map_lookup_elem(&procs, &tgid);
	struct n502_signal_event *e;

	/* A child's end tells its parent nothing the rules use, and a Go
	 * upstream's runtime sends itself SIGURG many times a second (SIGURG
	 * from another process is kept). */
	if (!p || sig == N502_SIGCHLD ||
	    (sig == N502_SIGURG && (bpf_get_current_pid_tgid() >> 32) == tgid))
		return 0;
	e = reserve(sizeof(*e), N502_EV_SIGNAL);
	if (!e)
		return 0;
	e->target_tgid = tgid;
	e->target_tid = BPF_CORE_READ(task, pid);
	e->sig = sig;
	/* SEND_SIG_NOINFO (0) and SEND_SIG_PRIV (1) are not pointers. */
	if ((unsigned long)info == 0)
		e->code = N502_SI_USER;
	else if ((unsigned long)info == 1)
		e->code = N502_SI_KERNEL;
	else
		e->code = BPF_CORE_READ(info, si_code);
	e->result = result;
	e->target_role = p->role;
	BPF_CORE_READ_STR_INTO(&e->target_comm, task, comm);
	submit(e);
	return 0;
}

SEC("tp_btf/signal_generate")
int BPF_PROG(handle_signal__generate, int sig, struct kernel_siginfo *info, struct task_struct *task, int group, int result)
{
	return on_signal__generate(sig, info, task, group, result);
}

SEC("raw_tp/signal_generate")
int BPF_PROG(raw_signal__generate, int sig, struct kernel_siginfo *info, struct task_struct *task, int group, int result)
{
	return on_signal__generate(sig, info, task, group, result);
}

static __always_inline int on_sched__process_exit(struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);
	struct n502_proc *p = bpf_map_lookup_elem(&procs, &tgid);
	struct n502_exit_event *e;

	if (!p)
		return 0;
	/* Only the last thread: signal->live has dropped to zero by now. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	e = reserve(sizeof(*e), N502_EV_EXIT);
	if (e) {
		e->exit_code = BPF_CORE_READ(task, exit_code);
		e->role = p->role;
		submit(e);
	}
	bpf_map_delete_elem(&procs, &tgid);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle_sched__process_exit, struct task_struct *task)
{
	return on_sched__process_exit(task);
}

SEC("raw_tp/sched_process_exit")
int BPF_PROG(raw_sched__process_exit, struct task_struct *task)
{
	return on_sched__process_exit(task);
}

static __always_inline int on_sched__process_fork(struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	struct n502_proc *p;
	__u32 role;

	if (ptgid == ctgid)
		return 0; /* a new thread, not a new process */
	p = bpf_map_lookup_elem(&procs, &ptgid);
	if (!p)
		return 0;
	/* Nginx's children are Nginx; an upstream's or listener's children
	 * usually share its listening socket (pre-fork servers). */
	role = (p->role & N502_PROC_NGINX) ? N502_PROC_NGINX : N502_PROC_LISTENER;
	track_proc(ctgid, role);
	if (role == N502_PROC_NGINX && adaptive_tracking)
		ports_unsure = 1;

	struct n502_fork_event *e = reserve(sizeof(*e), N502_EV_FORK);
	if (!e)
		return 0;
	e->child_tgid = ctgid;
	e->role = role;
	submit(e);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(handle_sched__process_fork, struct task_struct *parent, struct task_struct *child)
{
	return on_sched__process_fork(parent, child);
}

SEC("raw_tp/sched_process_fork")
int BPF_PROG(raw_sched__process_fork, struct task_struct *parent, struct task_struct *child)
{
	return on_sched__process_fork(parent, child);
}

/* Nginx's names as a program: nginx, nginx-debug (the official image's
 * debug binary), openresty; not nginx-agent or any other nginx-*. comm is
 * the name it was executed by. */
static __always_inline int nginx_comm(const char *c)
{
	if (c[0] == 'n' && c[1] == 'g' && c[2] == 'i' && c[3] == 'n' && c[4] == 'x') {
		if (c[5] == 0)
			return 1;
		return c[5] == '-' && c[6] == 'd' && c[7] == 'e' && c[8] == 'b' && c[9] == 'u' && c[10] == 'g' &&
		       c[11] == 0;
	}
	return c[0] == 'o' && c[1] == 'p' && c[2] == 'e' && c[3] == 'n' && c[4] == 'r' && c[5] == 'e' &&
	       c[6] == 's' && c[7] == 't' && c[8] == 'y' && c[9] == 0;
}

/* A program was executed. An Nginx that starts where a followed one runs
 * or ran (nginx_places: its cgroup, by parent and name, since a restarted
 * container's or service's cgroup is made again under the same name) is
 * tracked from its exec on, and its cgroup let through the selection: its
 * workers are then tracked from their fork, before user space can have
 * found them (the first requests of a restarted Nginx come within
 * milliseconds). User space follows it as a new master as soon as it has
 * read its configuration. */
static __always_inline int on_sched__process_exec(void)
{
	struct n502_place place = {};
	struct task_struct *task;
	struct cgroup *cg;
	struct n502_proc *p;
	const char *name;
	char comm[N502_COMM_LEN];
	__u32 tgid;

	if (!nginx_places_known)
		return 0;
	bpf_get_current_comm(comm, sizeof(comm));
	if (!nginx_comm(comm))
		return 0;
	tgid = bpf_get_current_pid_tgid() >> 32;
	p = bpf_map_lookup_elem(&procs, &tgid);
	if (p && (p->role & N502_PROC_NGINX))
		return 0; /* Nginx already: a binary upgrade's new master, forked by the old */
	task = (struct task_struct *)bpf_get_current_task();
	cg = BPF_CORE_READ(task, cgroups, dfl_cgrp);
	name = BPF_CORE_READ(cg, kn, name);
	if (!name || bpf_probe_read_kernel_str(place.name, sizeof(place.name), name) <= 0)
		return 0;
	place.parent_id = BPF_CORE_READ(cg, self.parent, cgroup, kn, id);
	if (!bpf_map_lookup_elem(&nginx_places, &place))
		return 0;
	track_proc(tgid, N502_PROC_NGINX);
	if (filter_cgroups) {
		__u64 id = bpf_get_current_cgroup_id();
		__u8 one = 1;

		if (bpf_map_update_elem(&cgroup_sel, &id, &one, BPF_ANY))
			count(N502_CNT_MAP_FULL);
	}
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle_sched__process_exec)
{
	return on_sched__process_exec();
}

SEC("raw_tp/sched_process_exec")
int BPF_PROG(raw_sched__process_exec)
{
	return on_sched__process_exec();
}

/* A cgroup was made. While containers or cgroups are selected, one of the
 * v2 hierarchy (hierarchy id 0) is told to user space at once: a selected
 * container that starts, or is made again under its name, gets its cgroup
 * there, and user space lets it through the selection and watches it for
 * an Nginx's exec (nginx_places) before the runtime has started anything
 * in it, where its next look would come up to seconds later. Cgroups are
 * made seldom (a service, a session, a container starting). */
static __always_inline int on_cgroup__mkdir(struct cgroup *cgrp)
{
	struct n502_cgroup_event *e;

	if (!filter_cgroups || BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return 0;
	e = reserve(sizeof(*e), N502_EV_CGROUP);
	if (!e)
		return 0;
	e->cgroup_id = BPF_CORE_READ(cgrp, kn, id);
	e->level = BPF_CORE_READ(cgrp, level);
	e->pad = 0;
	submit_wake(e);
	return 0;
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(handle_cgroup__mkdir, struct cgroup *cgrp, const char *path)
{
	return on_cgroup__mkdir(cgrp);
}

SEC("raw_tp/cgroup_mkdir")
int BPF_PROG(raw_cgroup__mkdir, struct cgroup *cgrp, const char *path)
{
	return on_cgroup__mkdir(cgrp);
}

SEC("tracepoint/oom/mark_victim")
int handle_oom__mark_victim(struct trace_event_raw_mark_victim *ctx)
{
	__u32 pid = BPF_CORE_READ(ctx, pid);
	struct n502_proc *p = bpf_map_lookup_elem(&procs, &pid);
	struct n502_oom_event *e = reserve(sizeof(*e), N502_EV_OOM);

	if (!e)
		return 0;
	e->victim_pid = pid;
	e->victim_role = p ? p->role : 0;
	submit(e);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
