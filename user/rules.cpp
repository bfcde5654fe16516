#include "rules.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fmt/format.h>

namespace n502 {
namespace {

bool is_crash_signal(int sig)
{
    switch (sig) {
    case 4:  // SIGILL
    case 5:  // SIGTRAP
    case 6:  // SIGABRT
    case 7:  // SIGBUS
    case 8:  // SIGFPE
    case 11: // SIGSEGV
    case 31: // SIGSYS
        return true;
    default:
        return false;
    }
}

std::string who(uint32_t pid, const std::string &comm)
{
    return comm.empty() ? fmt::format("pid {}", pid) : fmt::format("pid {} ({})", pid, comm);
}

std::string at(const RuleInput &in, uint64_t ts) { return clock_local(in.tb.to_real_ns(ts)); }

Evidence exit_evidence(const Proc &p)
{
    Evidence ev;
    ev.ts = p.exit->ts;
    ev.event = "exit";
    ev.pid = p.pid;
    ev.comm = p.comm;
    if (p.exit->signaled()) {
        ev.exit_signal = p.exit->signal();
        ev.detail = fmt::format("process exited: killed by {}{}", signal_name(p.exit->signal()),
                                p.exit->core() ? " (core dumped)" : "");
    } else {
        ev.exit_code = p.exit->code();
        ev.detail = fmt::format("process exited with code {}", p.exit->code());
    }
    return ev;
}

Evidence signal_evidence(const Proc &target, const SignalRec &s)
{
    Evidence ev;
    ev.ts = s.ts;
    ev.event = "signal";
    ev.pid = s.sender;
    ev.comm = s.sender_comm;
    ev.target_pid = target.pid;
    ev.sig = s.sig;
    std::string how;
    if (s.sender == target.pid && s.code > 0)
        how = " (raised by the kernel for a fault in the process itself)";
    else if (s.code == 0x80)
        how = " (sent by the kernel)";
    ev.detail = fmt::format("{} to {}{}", signal_name(s.sig), who(target.pid, target.comm), how);
    return ev;
}

Evidence oom_evidence(const Proc &p)
{
    Evidence ev;
    ev.ts = *p.oom_ts;
    ev.event = "oom_kill";
    ev.pid = p.pid;
    ev.comm = p.comm;
    ev.detail = p.cgroup.empty() ? fmt::format("the OOM killer chose {}", who(p.pid, p.comm))
                                 : fmt::format("the OOM killer chose {} in memory cgroup {}{}", who(p.pid, p.comm),
                                               p.cgroup,
                                               p.memory_limit ? fmt::format(" (limit {} MiB)", p.memory_limit >> 20)
                                                              : std::string());
    return ev;
}

// The signal that killed p: the last one of that number generated before its exit.
const SignalRec *killing_signal(const Proc &p)
{
    if (!p.exit || !p.exit->signaled())
        return nullptr;
    for (auto it = p.signals.rbegin(); it != p.signals.rend(); ++it)
        if (it->sig == p.exit->signal() && it->ts <= p.exit->ts)
            return &*it;
    return nullptr;
}

// The upstream process died while it held the connection: its exit came
// before Nginx's side saw the connection fail, and it did not close the
// socket itself first.
bool died_holding(const RuleInput &in)
{
    if (!in.conn || !in.upstream || !in.upstream->exit)
        return false;
    uint64_t fail = in.conn->failure_ts();
    uint64_t dead = in.upstream->exit->ts;
    if (fail && dead > fail)
        return false;
    if (in.conn->t_accept && dead < *in.conn->t_accept)
        return false;
    if (in.conn->t_up_close && *in.conn->t_up_close < dead)
        return false;
    return true;
}

bool alive_at_failure(const RuleInput &in)
{
    if (!in.conn || !in.upstream)
        return false;
    return !in.upstream->exit || in.upstream->exit->ts > in.conn->failure_ts();
}

void base(Verdict &v, const RuleInput &in, const char *cause, const char *confidence)
{
    v.cause = cause;
    v.confidence = confidence;
    if (in.conn)
        v.evidence = in.conn->timeline;
    if (in.upstream) {
        v.upstream_pid = in.upstream->pid;
        v.upstream_comm = in.upstream->comm;
    }
}

bool rule_not_listening(const RuleInput &in, Verdict &v)
{
    if (!in.conn || in.conn->error != ECONNREFUSED || in.conn->t_established)
        return false;
    auto ls = in.state.listeners_on(in.conn->dst);
    const Listener *last = ls.empty() ? nullptr : ls.back();
    if (last && !last->t_unlisten) {
        const Proc *lp = in.state.proc(last->pid);
        if (!lp || !lp->exit)
            return false; // someone still listens there: not this cause
    }
    base(v, in, "upstream_not_listening", "high");
    v.upstream_pid.reset();
    v.upstream_comm.clear();
    std::string dst = in.conn->dst.str();
    if (!last) {
        v.explanation = fmt::format("Nothing was listening on {}: the connection was refused, and no process has "
                                    "listened there since n502trace started.",
                                    dst);
        return true;
    }
    Evidence l;
    l.ts = last->t_listen;
    l.event = "listen";
    l.pid = last->pid;
    l.comm = last->comm;
    l.detail = last->t_listen ? fmt::format("{} started listening on {} (backlog {})", who(last->pid, last->comm),
                                            last->addr.str(), last->backlog)
                              : fmt::format("{} was listening on {} when n502trace started",
                                            who(last->pid, last->comm), last->addr.str());
    v.evidence.push_back(l);
    std::string how;
    const Proc *lp = in.state.proc(last->pid);
    if (last->t_unlisten) {
        Evidence u;
        u.ts = *last->t_unlisten;
        u.event = "unlisten";
        u.pid = last->pid;
        u.comm = last->comm;
        u.detail = fmt::format("the listening socket on {} was closed", last->addr.str());
        v.evidence.push_back(u);
    }
    if (lp) {
        const SignalRec *ks = killing_signal(*lp);
        // Signals up to the exit (or up to the unlisten) tell how it went away.
        uint64_t until = lp->exit ? lp->exit->ts : last->t_unlisten.value_or(UINT64_MAX);
        for (const auto &s : lp->signals)
            if (s.ts <= until && s.ts >= last->t_listen)
                v.evidence.push_back(signal_evidence(*lp, s));
        if (lp->oom_ts)
            v.evidence.push_back(oom_evidence(*lp));
        if (lp->exit) {
            v.evidence.push_back(exit_evidence(*lp));
            if (lp->oom_ts)
                how = "it was OOM-killed";
            else if (ks && ks->sender != lp->pid)
                how = fmt::format("it was killed by {} from {}", signal_name(ks->sig), who(ks->sender, ks->sender_comm));
            else if (lp->exit->signaled())
                how = fmt::format("it died of {}", signal_name(lp->exit->signal()));
            else
                how = fmt::format("it exited with code {}", lp->exit->code());
            if (!lp->exit->signaled() && !lp->signals.empty()) {
                const SignalRec &s = lp->signals.back();
                if (s.sender != lp->pid)
                    how += fmt::format(" after {} from {}", signal_name(s.sig), who(s.sender, s.sender_comm));
            }
        }
    }
    std::string when = last->t_unlisten ? " at " + at(in, *last->t_unlisten)
                       : (lp && lp->exit) ? " when it exited at " + at(in, lp->exit->ts)
                                          : "";
    if (how.empty())
        how = "it closed its listening socket";
    v.explanation = fmt::format("Nothing was listening on {}: the last listener, {}, stopped listening{}; {}.", dst,
                                who(last->pid, last->comm), when, how);
    return true;
}

bool rule_oom_killed(const RuleInput &in, Verdict &v)
{
    if (!died_holding(in) || !in.upstream->oom_ts)
        return false;
    const Proc &p = *in.upstream;
    base(v, in, "upstream_oom_killed", "high");
    v.evidence.push_back(oom_evidence(p));
    for (const auto &s : p.signals)
        if (s.ts >= *p.oom_ts && s.ts <= p.exit->ts)
            v.evidence.push_back(signal_evidence(p, s));
    v.evidence.push_back(exit_evidence(p));
    std::string where;
    if (!p.cgroup.empty())
        where = p.memory_limit ? fmt::format(" in memory cgroup {} (limit {} MiB)", p.cgroup, p.memory_limit >> 20)
                               : fmt::format(" in memory cgroup {}", p.cgroup);
    v.explanation = fmt::format("Upstream {} was OOM-killed at {}{} while it held Nginx's connection.",
                                who(p.pid, p.comm), at(in, *p.oom_ts), where);
    return true;
}

bool rule_killed(const RuleInput &in, Verdict &v)
{
    if (!died_holding(in) || !in.upstream->exit->signaled())
        return false;
    const Proc &p = *in.upstream;
    const SignalRec *s = killing_signal(p);
    if (s && s->sender == p.pid && (is_crash_signal(s->sig) || s->code > 0))
        return false; // its own fault: crashed
    if (!s && is_crash_signal(p.exit->signal()))
        return false;
    base(v, in, "upstream_killed", s ? "high" : "medium");
    if (s)
        v.evidence.push_back(signal_evidence(p, *s));
    v.evidence.push_back(exit_evidence(p));
    if (s)
        v.explanation = fmt::format("Upstream {} was killed by {} from {} at {} while it held Nginx's connection.",
                                    who(p.pid, p.comm), signal_name(s->sig), who(s->sender, s->sender_comm),
                                    at(in, s->ts));
    else
        v.explanation = fmt::format("Upstream {} was killed by {} at {} while it held Nginx's connection (the sender "
                                    "was not seen).",
                                    who(p.pid, p.comm), signal_name(p.exit->signal()), at(in, p.exit->ts));
    return true;
}

bool rule_crashed(const RuleInput &in, Verdict &v)
{
    if (!died_holding(in) || !in.upstream->exit->signaled() || !is_crash_signal(in.upstream->exit->signal()))
        return false;
    const Proc &p = *in.upstream;
    const SignalRec *s = killing_signal(p);
    base(v, in, "upstream_crashed", s ? "high" : "medium");
    if (s)
        v.evidence.push_back(signal_evidence(p, *s));
    v.evidence.push_back(exit_evidence(p));
    v.explanation = fmt::format("Upstream {} crashed with {}{} at {} while it held Nginx's connection.",
                                who(p.pid, p.comm), signal_name(p.exit->signal()),
                                p.exit->core() ? " (core dumped)" : "", at(in, p.exit->ts));
    return true;
}

bool rule_exited(const RuleInput &in, Verdict &v)
{
    if (!died_holding(in) || in.upstream->exit->signaled())
        return false;
    const Proc &p = *in.upstream;
    base(v, in, "upstream_exited", "high");
    v.evidence.push_back(exit_evidence(p));
    v.explanation = fmt::format("Upstream {} exited with code {} at {} while it held Nginx's connection.",
                                who(p.pid, p.comm), p.exit->code(), at(in, p.exit->ts));
    return true;
}

bool rule_reset(const RuleInput &in, Verdict &v)
{
    if (!in.conn || !in.conn->t_rst_recv || !in.conn->t_established || !alive_at_failure(in))
        return false;
    const Proc &p = *in.upstream;
    base(v, in, "upstream_reset", "high");
    v.explanation = fmt::format("Upstream {} is alive and its socket reset the connection (RST) at {} before a "
                                "complete response header.",
                                who(p.pid, p.comm), at(in, *in.conn->t_rst_recv));
    return true;
}

bool rule_closed_early(const RuleInput &in, Verdict &v)
{
    if (!in.conn || !in.conn->t_established || !alive_at_failure(in))
        return false;
    std::optional<uint64_t> t = in.conn->t_fin_recv;
    if (!t)
        t = in.conn->t_up_fin ? in.conn->t_up_fin : in.conn->t_up_close;
    if (!t || in.conn->t_rst_recv)
        return false;
    const Proc &p = *in.upstream;
    base(v, in, "upstream_closed_early", "high");
    v.explanation = fmt::format("Upstream {} is alive and closed the connection (FIN) at {} before a complete "
                                "response header.",
                                who(p.pid, p.comm), at(in, *t));
    return true;
}

bool rule_unknown(const RuleInput &in, Verdict &v)
{
    base(v, in, "unknown", "low");
    if (!in.conn) {
        v.explanation = "No kernel evidence matched this error: no connection from this Nginx worker to that upstream "
                        "was seen failing.";
        return true;
    }
    std::vector<std::string> seen;
    if (in.conn->error)
        seen.push_back(fmt::format("the connection failed with {} ({})", strerror(in.conn->error), in.conn->error));
    if (in.conn->t_rst_recv)
        seen.push_back("Nginx received a RST");
    if (in.conn->t_fin_recv)
        seen.push_back("Nginx received a FIN");
    if (!in.conn->t_accept && in.conn->t_established)
        seen.push_back("no process was seen accepting the connection");
    if (in.upstream)
        seen.push_back(fmt::format("the upstream was {}", who(in.upstream->pid, in.upstream->comm)));
    std::string s;
    for (size_t i = 0; i < seen.size(); i++) {
        if (i)
            s += "; ";
        s += seen[i];
    }
    v.explanation = seen.empty() ? "The connection was seen, but no decisive kernel evidence."
                                 : fmt::format("No rule matched the kernel evidence: {}.", s);
    return true;
}

} // namespace

const std::vector<Rule> &rules()
{
    static const std::vector<Rule> table = {
        {"upstream_not_listening", "connect refused: nothing listens on the address; names the last listener and how it went away", rule_not_listening},
        {"upstream_oom_killed", "the process holding the upstream end was OOM-killed", rule_oom_killed},
        {"upstream_killed", "the process holding the upstream end was killed by a signal from another process", rule_killed},
        {"upstream_crashed", "the process died of its own fatal signal (SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL)", rule_crashed},
        {"upstream_exited", "the process exited normally while holding the connection", rule_exited},
        {"upstream_reset", "the upstream process is alive and its socket sent a RST", rule_reset},
        {"upstream_closed_early", "the upstream process is alive and closed the connection before a full response header", rule_closed_early},
        {"unknown", "no decisive kernel evidence: what was seen is listed", rule_unknown},
    };
    return table;
}

std::string log_only_cause(const LogLine &line)
{
    switch (line.kind) {
    case LogKind::ConnectRefused: return "upstream_down";
    case LogKind::ConnectFailed: return "upstream_unreachable";
    case LogKind::PrematureClose: return "upstream_crashed_or_overloaded";
    case LogKind::Reset: return "upstream_reset";
    case LogKind::Timeout: return "upstream_slow";
    case LogKind::NoLiveUpstreams: return "all_upstreams_down";
    case LogKind::InvalidResponse: return "upstream_bug";
    default: return "unknown";
    }
}

} // namespace n502
