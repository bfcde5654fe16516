// What n502trace concludes for one Nginx upstream error, and the kernel
// evidence it rests on. Sinks (text, JSON) render this and nothing else.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "container.hpp"

namespace n502 {

struct Evidence {
    uint64_t ts = 0;          // CLOCK_BOOTTIME ns (0: not from the kernel)
    std::string event;        // connect, accept, close, state, rst_received, rst_sent, signal, exit, oom_kill, listen, unlisten, fork, omitted (records of a long connection not kept)
    uint32_t pid = 0;         // the actor: who did it (socket owner for softirq events)
    std::string comm;
    std::string detail;       // one human sentence fragment
    // Machine-readable extras; absent when not meaningful for the event.
    std::optional<uint32_t> target_pid;
    std::optional<int> sig;
    std::optional<int> exit_code;
    std::optional<int> exit_signal;
    std::optional<int> error;
    std::string from, to;     // state changes
    std::string cause, upstream; // earlier_failure
    std::optional<uint64_t> count; // earlier_failure: how many of that cause on that upstream (ts: the last)
};

// A fact looked up for a verdict (socket mode, queue length, ...).
using FactValue = std::variant<std::string, int64_t, bool>;

struct Verdict {
    int64_t ts_real_ns = 0;   // when the verdict was made
    int64_t logged_real_ns = 0; // when Nginx's line was read, within a poll of its writing (0: not known)
    int status = 502;         // what Nginx's error means: 504 for a timeout, else 502
    // What the client was sent for this line: "status" (that 502/504, unless a
    // later attempt answered), "cut_short" (the response had begun: it was cut
    // short), "http09" (what the upstream sent, passed on as HTTP/0.9).
    std::string client_got = "status";
    uint32_t nginx_pid = 0;
    uint64_t nginx_conn = 0;  // Nginx's "*N" connection number
    std::string upstream;     // "127.0.0.1:8080", "[::1]:8080", "unix:/path"
    std::string request, client, server, host;
    std::string nginx_message;
    std::string log_only_cause; // what the message alone suggests
    std::string cause;
    std::string confidence;   // high | medium | low
    std::string explanation;  // one sentence
    std::optional<uint32_t> upstream_pid;
    std::string upstream_comm;
    std::vector<Evidence> evidence; // sorted by ts
    std::vector<std::string> notes; // e.g. "events were lost while this connection lived"
    std::vector<std::pair<std::string, FactValue>> facts;
    int attempt = 1;          // 1-based try within one client request
    std::string request_key;  // the same for every attempt of one request
    // Where Nginx and the upstream process live (containers, namespaces).
    std::optional<uint32_t> nginx_ns_pid;    // the pid Nginx logged (its own pid namespace)
    std::optional<uint32_t> upstream_ns_pid; // the upstream's pid in its innermost pid namespace
    std::string nginx_cgroup, upstream_cgroup; // cgroup v2 paths ("" unknown)
    std::optional<ContainerInfo> nginx_container, upstream_container;
    // false: a repeat the output rate limit suppresses. Only what counts it
    // is filled (status, nginx_pid, upstream, cause, attempt); the rest of
    // the verdict was not worked out.
    bool rendered = true;

    void fact(std::string k, FactValue v) { facts.emplace_back(std::move(k), std::move(v)); }
};

} // namespace n502
