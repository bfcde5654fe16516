// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The benchmark's floor: empty programs on the tracepoints n502trace attaches
 * for TCP upstreams (scripts/bench.sh, mode `hooks`). What they cost is what
 * any tool built on these tracepoints pays before it does any work: the
 * tracepoint calls into BPF and back for every TCP state change and receive
 * on the host. n502trace's own cost is what it adds to this.
 */
#include "vmlinux/vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(floor_set_state, const struct sock *sk, int oldstate, int newstate) { return 0; }

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(floor_receive_reset, struct sock *sk) { return 0; }

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(floor_send_reset, const struct sock *sk) { return 0; }

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(floor_retransmit_skb, const struct sock *sk) { return 0; }

SEC("tp_btf/tcp_rcv_space_adjust")
int BPF_PROG(floor_rcv_space_adjust, struct sock *sk) { return 0; }

SEC("tp_btf/signal_generate")
int BPF_PROG(floor_signal_generate, int sig) { return 0; }

SEC("tp_btf/sched_process_exit")
int BPF_PROG(floor_process_exit, struct task_struct *p) { return 0; }

SEC("tp_btf/sched_process_fork")
int BPF_PROG(floor_process_fork, struct task_struct *parent, struct task_struct *child) { return 0; }

char LICENSE[] SEC("license") = "Dual BSD/GPL";
