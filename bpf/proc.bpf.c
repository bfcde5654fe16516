// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Process life of tracked processes: signals sent to them (and by whom),
 * their exit (and how), their children, and OOM kills.
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
