#include "correlator.hpp"

#include <algorithm>
#include <cerrno>
#include <fmt/format.h>

namespace n502 {

static bool is_connect_line(const LogLine &l)
{
    return l.kind == LogKind::ConnectRefused || l.kind == LogKind::ConnectFailed;
}

Conn *Correlator::find_conn(const LogLine &line)
{
    if (line.upstream_peer.empty())
        return nullptr;
    int64_t oldest = line.wall_sec * 1'000'000'000LL - opt_.max_skew_ns;
    bool connecting = line.phase.find("connecting") != std::string::npos;
    Conn *primary = nullptr, *fallback = nullptr;
    auto newer = [](Conn *best, Conn *c) { return !best || c->t_last > best->t_last; };
    for (Conn *c : state_.conns_to(line.pid, line.upstream_peer)) {
        if (c->claimed || tb_.to_real_ns(c->t_last) < oldest)
            continue;
        bool is_primary;
        if (is_connect_line(line))
            is_primary = c->error && !c->t_established;
        else if (line.kind == LogKind::Timeout)
            is_primary = connecting ? !c->t_established : bool(c->t_established);
        else {
            is_primary = c->t_established && c->failed();
            if (!is_primary && c->t_established && newer(fallback, c))
                fallback = c;
        }
        if (is_primary && newer(primary, c))
            primary = c;
    }
    return primary ? primary : fallback;
}

void Correlator::group_attempts(const LogLine &line, Verdict &v)
{
    std::string id = fmt::format("{}#{}", line.pid, line.conn);
    Attempts &a = attempts_[id];
    bool same = a.count > 0 && line.conn != 0 && a.request == line.request &&
                v.ts_real_ns - a.last_real_ns < 5'000'000'000LL;
    if (!same) {
        a.request = line.request;
        a.key = fmt::format("{}@{}", id, line.wall_sec);
        a.count = 0;
    }
    a.count++;
    a.last_real_ns = v.ts_real_ns;
    v.attempt = a.count;
    v.request_key = a.key;
    if (attempts_.size() > 4096) { // bounded: drop the stale ones
        for (auto it = attempts_.begin(); it != attempts_.end();)
            it = v.ts_real_ns - it->second.last_real_ns > 5'000'000'000LL ? attempts_.erase(it) : std::next(it);
    }
}

std::optional<Verdict> Correlator::explain(const LogLine &line, bool final)
{
    // "no live upstreams" is about Nginx's own peer state: no connection.
    Conn *conn = line.kind == LogKind::NoLiveUpstreams ? nullptr : find_conn(line);
    if (line.kind == LogKind::NoLiveUpstreams)
        final = true;
    if (!conn && !final)
        return std::nullopt;
    // A connection that has not failed yet may still be closing: wait for
    // the kernel's side unless this is the last try.
    if (conn && !final && !conn->failed() && line.kind != LogKind::Timeout) {
        // ... unless the process holding the other end is already dead.
        const Proc *p = conn->up_pid ? state_.proc(conn->up_pid) : nullptr;
        if (!p || !p->exit)
            return std::nullopt;
    }

    return decide(line, conn);
}

Verdict Correlator::decide(const LogLine &line, Conn *conn)
{
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
    RuleInput in{line, conn, up, state_, tb_, host_, &history_};
    for (const Rule &r : rules())
        if (r.apply(in, v))
            break;
    group_attempts(line, v);
    history_.push_back({v.ts_real_ns, v.nginx_pid, v.upstream, v.cause, v.explanation, line.client, line.request,
                        line.wall_sec});
    while (!history_.empty() && (history_.size() > 256 || v.ts_real_ns - history_.front().ts_real_ns > 60'000'000'000LL))
        history_.pop_front();
    std::stable_sort(v.evidence.begin(), v.evidence.end(),
                     [](const Evidence &a, const Evidence &b) { return a.ts < b.ts; });
    return v;
}

} // namespace n502

namespace n502 {

bool Correlator::covered(const AccessLine &a) const
{
    for (auto it = history_.rbegin(); it != history_.rend(); ++it)
        if (it->client == a.client && it->request == a.request && it->log_sec >= a.wall_sec - 3 &&
            it->log_sec <= a.wall_sec + 3)
            return true;
    return false;
}

Verdict Correlator::explain_access(const AccessLine &a)
{
    // The failed, unclaimed connection of any worker closest before the
    // access line (Nginx writes the access line when the request ends).
    int64_t newest = (a.wall_sec + 2) * 1'000'000'000LL;
    int64_t oldest = (a.wall_sec - 120) * 1'000'000'000LL;
    Conn *best = nullptr;
    for (Conn *c : state_.recent_conns()) {
        if (c->claimed || !c->failed())
            continue;
        int64_t t = tb_.to_real_ns(c->failure_ts() ? c->failure_ts() : c->t_last);
        if (t < oldest || t > newest)
            continue;
        if (!best || c->t_last > best->t_last)
            best = c;
    }
    LogLine line;
    line.wall_sec = a.wall_sec;
    line.level = "access";
    line.client = a.client;
    line.request = a.request;
    line.status = a.status;
    line.message = "(no error-log line for this request)";
    line.kind = a.status == 504 ? LogKind::Timeout : LogKind::OtherUpstream;
    if (best) {
        line.pid = best->nginx_pid;
        line.upstream_peer = best->dst.str();
        if (best->error == ECONNREFUSED)
            line.kind = LogKind::ConnectRefused;
        else if (best->error && !best->t_established)
            line.kind = a.status == 504 ? LogKind::Timeout : LogKind::ConnectFailed;
        else if (best->t_rst_recv)
            line.kind = LogKind::Reset;
        else if (a.status != 504)
            line.kind = LogKind::PrematureClose;
    }
    Verdict v = decide(line, best);
    v.status = a.status;
    if (v.confidence == "high")
        v.confidence = "medium";
    if (best) {
        v.notes.push_back("Nginx wrote no error-log line for this request (is the error_log level above 'error'?); it "
                          "was matched to the failed upstream connection closest in time.");
    } else {
        v.cause = "unknown";
        v.confidence = "low";
        v.explanation = "Nginx wrote no error-log line for this request and no upstream connection was seen failing: "
                        "the status came from the upstream's own response or from the configuration (e.g. `return "
                        "502`).";
    }
    return v;
}

} // namespace n502
