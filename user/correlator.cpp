#include "correlator.hpp"

#include <algorithm>

namespace n502 {

static bool is_connect_line(const LogLine &l)
{
    return l.kind == LogKind::ConnectRefused || l.kind == LogKind::ConnectFailed;
}

Conn *Correlator::find_conn(const LogLine &line)
{
    if (line.upstream_peer.empty())
        return nullptr;
    auto cands = state_.conns_to(line.pid, line.upstream_peer);
    int64_t oldest = line.wall_sec * 1'000'000'000LL - opt_.max_skew_ns;
    Conn *fallback = nullptr;
    for (auto it = cands.rbegin(); it != cands.rend(); ++it) {
        Conn *c = *it;
        if (c->claimed || tb_.to_real_ns(c->t_last) < oldest)
            continue;
        bool connect_failed = c->error && !c->t_established;
        if (is_connect_line(line)) {
            if (connect_failed)
                return c;
            continue;
        }
        if (line.kind == LogKind::Timeout) {
            if (c->t_established)
                return c;
            continue;
        }
        if (c->t_established && c->failed())
            return c;
        if (!fallback && c->t_established)
            fallback = c;
    }
    return fallback;
}

std::optional<Verdict> Correlator::explain(const LogLine &line, bool final)
{
    Conn *conn = find_conn(line);
    if (!conn && !final)
        return std::nullopt;
    // A connection that has not failed yet may still be closing: wait for
    // the kernel's side unless this is the last try.
    if (conn && !final && !conn->failed() && line.kind != LogKind::Timeout)
        return std::nullopt;

    Verdict v;
    v.ts_real_ns = real_now_ns();
    v.status = line.status;
    v.nginx_pid = line.pid;
    v.nginx_conn = line.conn;
    v.upstream = line.upstream_peer;
    v.request = line.request;
    v.client = line.client;
    v.server = line.server;
    v.host = line.host;
    v.nginx_message = line.message;
    v.log_only_cause = log_only_cause(line);

    const Proc *up = nullptr;
    if (conn) {
        conn->claimed = true;
        if (conn->up_pid)
            up = state_.proc(conn->up_pid);
    }
    RuleInput in{line, conn, up, state_, tb_};
    for (const Rule &r : rules())
        if (r.apply(in, v))
            break;
    std::stable_sort(v.evidence.begin(), v.evidence.end(),
                     [](const Evidence &a, const Evidence &b) { return a.ts < b.ts; });
    return v;
}

} // namespace n502
