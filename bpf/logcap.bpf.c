// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Log capture: Nginx's own write()s to a log that is not a file.
 *
 * In containers Nginx often logs to stderr (`error_log stderr`, or the
 * official image's /var/log/nginx/error.log -> /dev/stderr), a pipe that a
 * logging driver drains and may never store. The lines are taken here, from
 * the write() of an Nginx process to a descriptor whose file (device and
 * inode) user space named in log_inodes (the pipe, socket or tty behind its fd 2).
 *
 * Only loaded when there is something to capture: sys_enter_write runs for
 * every write() on the host, so the filter is the first thing it does.
 */
#include "common.bpf.h"

/* The captured files (value unused). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct n502_file_key);
	__type(value, __u8);
} log_inodes SEC(".maps");

/* The event is built here (too big for the stack), then copied into the
 * ring buffer at its real length. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct n502_log_event);
} log_scratch SEC(".maps");

/* fd -> device and inode number of the current task's open file; 0 when
 * there is none. */
static __always_inline int file_of_fd(int fd, struct n502_file_key *key)
{
	struct file *file = file_from_fd(fd);

	if (!file)
		return 0;
	key->ino = BPF_CORE_READ(file, f_inode, i_ino);
	key->dev = BPF_CORE_READ(file, f_inode, i_sb, s_dev);
	key->_pad = 0;
	return key->ino != 0;
}

SEC("tracepoint/syscalls/sys_enter_write")
int handle_sys_enter_write(struct trace_event_raw_sys_enter *ctx)
{
	struct n502_proc *p = current_proc();
	struct n502_log_event *e;
	__u32 zero = 0;
	struct n502_file_key key = {};
	__u64 nbytes;
	__u32 len;
	int fd;

	if (!p || !(p->role & N502_PROC_NGINX))
		return 0;
	fd = (int)ctx->args[0];
	if (!file_of_fd(fd, &key) || !bpf_map_lookup_elem(&log_inodes, &key) || !cgroup_selected())
		return 0;
	e = bpf_map_lookup_elem(&log_scratch, &zero);
	if (!e)
		return 0;
	nbytes = ctx->args[2];
	len = nbytes > N502_LOG_MAX ? N502_LOG_MAX : (__u32)nbytes;
	e->ino = key.ino;
	e->dev = key.dev;
	e->fd = fd;
	e->cut = nbytes > N502_LOG_MAX ? (__u32)(nbytes - N502_LOG_MAX) : 0;
	if (len == 0)
		return 0;
	/* Bounded for the verifier: 1 <= len <= N502_LOG_MAX. */
	len &= (N502_LOG_MAX << 1) - 1;
	if (len > N502_LOG_MAX)
		return 0;
	if (bpf_probe_read_user(e->data, len, (void *)ctx->args[1])) {
		count(N502_CNT_LOST); /* (a buffer not in memory: a line Nginx wrote is not seen) */
		return 0;
	}
	e->len = len;

	__u64 id = bpf_get_current_pid_tgid();
	e->hdr.type = N502_EV_LOG;
	e->hdr.size = (__u16)(__builtin_offsetof(struct n502_log_event, data) + len);
	e->hdr.cpu = bpf_get_smp_processor_id();
	e->hdr.ts_ns = bpf_ktime_get_boot_ns();
	e->hdr.tgid = id >> 32;
	e->hdr.tid = (__u32)id;
	bpf_get_current_comm(e->hdr.comm, sizeof(e->hdr.comm));

	__u64 size = __builtin_offsetof(struct n502_log_event, data) + len;
	if (size > sizeof(*e))
		return 0;
	/* Log lines are rare and someone waits for them: wake the reader. */
	if (bpf_ringbuf_output(&events, e, size, 0)) {
		count(N502_CNT_LOST);
		return 0;
	}
	count(N502_CNT_EMITTED);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
