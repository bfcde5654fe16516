// Pins the event ABI: the BPF side and the user side compile the same header,
// and these sizes and offsets must not drift (a change here is an ABI change).
#include <catch2/catch.hpp>
#include <cstddef>

#include "n502/events.h"

#define PIN_OFFSET(T, F, O) static_assert(offsetof(T, F) == (O), #T "." #F " moved")
#define PIN_SIZE(T, S) static_assert(sizeof(T) == (S), #T " changed size")

PIN_SIZE(struct n502_addr, 24);
PIN_OFFSET(struct n502_addr, netns, 4);
PIN_OFFSET(struct n502_addr, addr, 8);
PIN_SIZE(struct n502_hdr, 40);
PIN_OFFSET(struct n502_hdr, type, 0);
PIN_OFFSET(struct n502_hdr, size, 2);
PIN_OFFSET(struct n502_hdr, cpu, 4);
PIN_OFFSET(struct n502_hdr, ts_ns, 8);
PIN_OFFSET(struct n502_hdr, tgid, 16);
PIN_OFFSET(struct n502_hdr, tid, 20);
PIN_OFFSET(struct n502_hdr, comm, 24);

PIN_SIZE(struct n502_connect_event, 200);
PIN_OFFSET(struct n502_connect_event, sk, 40);
PIN_OFFSET(struct n502_connect_event, peer_sk, 48);
PIN_OFFSET(struct n502_connect_event, fd, 56);
PIN_OFFSET(struct n502_connect_event, ret, 60);
PIN_OFFSET(struct n502_connect_event, dst, 64);
PIN_OFFSET(struct n502_connect_event, path, 88);

PIN_SIZE(struct n502_accept_event, 128);
PIN_OFFSET(struct n502_accept_event, cgroup_id, 112);
PIN_OFFSET(struct n502_accept_event, ns_tgid, 120);
PIN_OFFSET(struct n502_accept_event, how, 124);
PIN_OFFSET(struct n502_accept_event, nginx_sk, 48);
PIN_OFFSET(struct n502_accept_event, local, 64);
PIN_OFFSET(struct n502_accept_event, peer, 88);

PIN_SIZE(struct n502_close_event, 72);
PIN_OFFSET(struct n502_close_event, inode, 64);
PIN_SIZE(struct n502_state_event, 136);
PIN_OFFSET(struct n502_state_event, bytes_received, 120);
PIN_SIZE(struct n502_retrans_event, 112);
PIN_OFFSET(struct n502_state_event, oldstate, 48);
PIN_OFFSET(struct n502_state_event, sk_err, 56);
PIN_OFFSET(struct n502_state_event, retransmits, 62);
PIN_OFFSET(struct n502_state_event, owner_tgid, 64);
PIN_OFFSET(struct n502_state_event, src, 72);
PIN_OFFSET(struct n502_state_event, dst, 96);
PIN_SIZE(struct n502_reset_event, 112);
PIN_SIZE(struct n502_signal_event, 80);
PIN_OFFSET(struct n502_signal_event, target_tgid, 40);
PIN_OFFSET(struct n502_signal_event, sig, 48);
PIN_OFFSET(struct n502_signal_event, target_comm, 64);
PIN_SIZE(struct n502_exit_event, 48);
PIN_SIZE(struct n502_fork_event, 48);
PIN_SIZE(struct n502_oom_event, 48);
PIN_SIZE(struct n502_listen_event, 208);
PIN_OFFSET(struct n502_listen_event, cgroup_id, 192);
PIN_OFFSET(struct n502_listen_event, ns_tgid, 200);
PIN_OFFSET(struct n502_listen_event, path, 80);
PIN_SIZE(struct n502_tuple, 44);
PIN_SIZE(struct n502_log_event, 64 + N502_LOG_MAX);
PIN_OFFSET(struct n502_log_event, ino, 40);
PIN_OFFSET(struct n502_log_event, len, 52);
PIN_OFFSET(struct n502_log_event, dev, 60);
PIN_OFFSET(struct n502_log_event, data, 64);
PIN_SIZE(struct n502_file_key, 16);
PIN_SIZE(struct n502_story, 80);
PIN_OFFSET(struct n502_story, up_leave_ns, 40);
PIN_OFFSET(struct n502_story, up_tgid, 48);
PIN_OFFSET(struct n502_story, sport, 58);
PIN_OFFSET(struct n502_story, up_comm, 64);
PIN_SIZE(struct n502_sock, 104);
PIN_OFFSET(struct n502_sock, peer_sk, 8);
PIN_OFFSET(struct n502_sock, gen, 20);
PIN_OFFSET(struct n502_sock, story, 24);
PIN_SIZE(struct n502_conn_event, 216);
PIN_OFFSET(struct n502_conn_event, owner_tgid, 64);
PIN_OFFSET(struct n502_conn_event, src, 72);
PIN_OFFSET(struct n502_conn_event, bytes_received, 120);
PIN_OFFSET(struct n502_conn_event, story, 136);
PIN_SIZE(struct n502_proc, 8);
PIN_SIZE(struct n502_cgroup_event, 56);
PIN_OFFSET(struct n502_cgroup_event, cgroup_id, 40);

TEST_CASE("event type numbers are stable", "[abi]")
{
    CHECK(N502_EV_CONNECT == 1);
    CHECK(N502_EV_ACCEPT == 2);
    CHECK(N502_EV_CLOSE == 3);
    CHECK(N502_EV_STATE == 4);
    CHECK(N502_EV_RESET == 5);
    CHECK(N502_EV_SIGNAL == 6);
    CHECK(N502_EV_EXIT == 7);
    CHECK(N502_EV_FORK == 8);
    CHECK(N502_EV_OOM == 9);
    CHECK(N502_EV_LISTEN == 10);
    CHECK(N502_EV_RETRANS == 11);
    CHECK(N502_EV_LOG == 12);
    CHECK(N502_EV_CONN == 13);
    CHECK(N502_EV_CGROUP == 14);
    CHECK(N502_ABI_VERSION == 7);
}
