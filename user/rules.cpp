#include "rules.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fmt/format.h>
#include <sys/socket.h>

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

// "40 µs", "4.2 ms", "3.1 s"
std::string duration_text(uint64_t ns)
{
    if (ns < 1'000'000)
        return fmt::format("{} µs", ns / 1000);
    if (ns < 1'000'000'000)
        return fmt::format("{:.1f} ms", static_cast<double>(ns) / 1e6);
    return fmt::format("{:.1f} s", static_cast<double>(ns) / 1e9);
}

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

// How soon after a signal from another process a process may raise the
// same one itself, passing it on: a runtime that defers signals during
// critical sections (PHP's Zend engine) resets the default action and
// raises the signal again once out of them.
constexpr uint64_t kReraiseNs = 5'000'000'000ULL;

// The signal that killed p: the last one of that number generated before its
// exit; when p raised that one itself (not a fault the kernel raised), the one
// from another process it passed on, if there was one just before.
const SignalRec *killing_signal(const Proc &p)
{
    if (!p.exit || !p.exit->signaled())
        return nullptr;
    const SignalRec *last = nullptr;
    for (auto it = p.signals.rbegin(); it != p.signals.rend(); ++it) {
        if (it->sig != p.exit->signal() || it->ts > p.exit->ts)
            continue;
        if (!last) {
            last = &*it;
            if (last->sender != p.pid || last->code > 0)
                return last;
        } else if (last->ts - it->ts > kReraiseNs) {
            break;
        } else if (it->sender != p.pid) {
            return &*it;
        }
    }
    return last;
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

// Signals that ask a process to stop and that it may handle, closing its
// connections or exiting by itself: gunicorn's worker on SIGABRT (its
// master's worker timeout), a server's graceful or fast stop on SIGTERM,
// SIGQUIT or SIGINT.
bool is_stop_signal(int sig)
{
    return sig == 2 || sig == 3 || sig == 6 || sig == 15;
}

// When the upstream ended its end of the connection (closed it, sent its FIN
// or an abort, exited holding it; or Nginx received its FIN or RST) before
// Nginx ended its own, or 0.
uint64_t upstream_ended(const RuleInput &in)
{
    const Conn &c = *in.conn;
    uint64_t end = 0;
    for (const auto &t : {c.t_up_close, c.t_up_fin, c.t_up_abort, c.t_fin_recv, c.t_rst_recv})
        if (t && (!end || *t < end))
            end = *t;
    if (in.upstream->exit && (!end || in.upstream->exit->ts < end))
        end = in.upstream->exit->ts;
    uint64_t nginx_end = std::min(c.t_nginx_fin.value_or(UINT64_MAX), c.t_nginx_close.value_or(UINT64_MAX));
    return end && end < nginx_end ? end : 0;
}

// An orderly close (FIN) by the upstream, then a RST from its socket: data
// (Nginx's request on a reused keep-alive connection) arrived after the
// close. An abortive close is upstream_reset.
bool raced(const RuleInput &in)
{
    const Conn *c = in.conn;
    return c && c->t_established && c->t_up_rst_sent && c->t_up_fin && !c->t_up_abort && *c->t_up_rst_sent > *c->t_up_fin;
}

// A connection seen only from its failure on: how long before its end a stop
// signal still counts as the one it ended on (Nginx's default read timeout).
constexpr uint64_t kStopBeforeNs = 60'000'000'000ULL;
// A process that did not exit after the signal (or whose exit is not known
// yet: gunicorn's worker closes the connection in its handler and exits a
// tenth of a second later) counts as stopped by it only when it ended the
// connection this soon after: a JVM's SIGQUIT is a thread dump, and a
// server may handle SIGTERM and serve on.
constexpr uint64_t kPromptNs = 2'000'000'000ULL;

// The last stop signal another process sent the upstream process while it
// held the connection, before it ended it, and not ignored, that the process
// stopped on: it exited after it, or ended the connection within kPromptNs.
// *bounded: the connection's start was seen (else the signal is one within
// kStopBeforeNs of its end). *end: upstream_ended().
const SignalRec *stop_signal(const RuleInput &in, bool *bounded, uint64_t *end_out)
{
    if (!in.conn || !in.upstream)
        return nullptr;
    const Conn &c = *in.conn;
    const Proc &p = *in.upstream;
    uint64_t end = *end_out = upstream_ended(in);
    // From the start of the connection as the upstream held it, or 0.
    uint64_t from = c.untracked ? 0 : c.t_accept ? *c.t_accept : c.t_established.value_or(0);
    if (!end || (!c.untracked && !from))
        return nullptr;
    *bounded = from != 0;
    for (auto it = p.signals.rbegin(); it != p.signals.rend(); ++it) {
        if (it->ts > end || it->sender == p.pid || !is_stop_signal(it->sig) || it->result == 1 /* ignored */)
            continue;
        if (from ? it->ts < from : end - it->ts > kStopBeforeNs)
            return nullptr; // older ones are older still
        bool stopped = p.exit && p.exit->ts >= it->ts;
        return stopped || end - it->ts <= kPromptNs ? &*it : nullptr; // (an older one is no sooner)
    }
    return nullptr;
}

// What a known supervisor means by a signal it sends its worker.
std::string supervisor_hint(const SignalRec &s)
{
    if (s.sender_comm.rfind("gunicorn", 0) == 0 && s.sig == 6) // ("gunicorn: maste" with setproctitle)
        return " gunicorn's master sends SIGABRT to a worker that has not checked in for longer than its --timeout "
               "(\"WORKER TIMEOUT\" in its log): the request ran too long.";
    if (s.sender_comm.rfind("php-fpm", 0) == 0 && s.sig == 15)
        return " php-fpm's master sends SIGTERM to a child whose request ran past request_terminate_timeout "
               "(\"execution timed out\" in its log).";
    return "";
}

// "pid 1 (gunicorn), its parent"
std::string sender_of(const Proc &p, const SignalRec &s)
{
    return who(s.sender, s.sender_comm) + (p.parent && p.parent == s.sender ? ", its parent," : "");
}

bool alive_at_failure(const RuleInput &in)
{
    if (!in.conn || !in.upstream)
        return false;
    if (!in.upstream->exit)
        return true;
    uint64_t fail = in.conn->failure_ts();
    return fail && in.upstream->exit->ts > fail;
}

// The rule holds: its cause. Returns whether to go on and explain it
// (evidence, explanation, facts, and the host look-ups only those need): a
// verdict the output rate limit will suppress (in.admit says so) is counted
// by its cause and upstream only, so a storm of 502s costs the rules'
// predicates, not their sentences. What decides the cause is still looked up
// for it: who holds the upstream's socket, the listener's queue,
// tcp_abort_on_overflow. A rule calls this once it holds, and holds whatever
// this returns.
[[nodiscard]] bool base(Verdict &v, const RuleInput &in, const char *cause, const char *confidence)
{
    v.cause = cause;
    v.confidence = confidence;
    v.rendered = !in.admit || (*in.admit)(v.cause, v.upstream);
    if (!v.rendered)
        return false;
    if (in.conn)
        v.evidence = in.conn->evidence();
    if (in.upstream) {
        v.upstream_pid = in.upstream->pid;
        v.upstream_comm = in.upstream->comm;
    }
    return true;
}

// "32768-60999": does it hold port?
bool in_port_range(const std::string &range, uint16_t port)
{
    unsigned lo = 0, hi = 0;
    return std::sscanf(range.c_str(), "%u-%u", &lo, &hi) == 2 && port >= lo && port <= hi;
}

bool rule_self_connect(const RuleInput &in, Verdict &v)
{
    if (!in.conn || !in.conn->t_met_itself)
        return false;
    if (!base(v, in, "upstream_self_connect", "high"))
        return true;
    const Conn &c = *in.conn;
    uint16_t port = c.dst.port;
    std::string range = in.host ? in.host->port_range(c.nginx_pid) : "";
    std::string how;
    if (!range.empty()) {
        bool ephemeral = in_port_range(range, port);
        v.fact("port_range", range);
        v.fact("port_in_range", ephemeral);
        how = ephemeral ? fmt::format(" Port {} is inside the local port range {}, from which the kernel picks the "
                                      "source port of a connect: with nothing listening on it, a connect that is "
                                      "given {} as its source meets itself. Move the upstream to a port outside the "
                                      "range, or reserve it (net.ipv4.ip_local_reserved_ports).",
                                      port, range, port)
                        : fmt::format(" Port {} is outside the local port range {}: the source was bound to it "
                                      "explicitly (proxy_bind, a transparent-proxy setup), or the range was "
                                      "another when it connected.",
                                      port, range);
    }
    v.fact("local_address", c.src.str());
    if (in.line.http09)
        v.notes.push_back("what Nginx passed on to the client as that HTTP/0.9 response was its own request to the "
                          "upstream, headers Nginx adds to it included (unless it still sat in Nginx's buffer); Nginx "
                          "then read on until its read timeout");
    v.explanation = fmt::format("Nginx's connection to {} was connected to itself at {}: nothing listened on {}, "
                                "its source was that same address, and its SYN came back to it (a TCP simultaneous "
                                "open), so Nginx read back its own request instead of a response. Until Nginx closes "
                                "it, the connection holds {}: an upstream starting there cannot bind it "
                                "(EADDRINUSE).{}",
                                c.dst.str(), at(in, *c.t_met_itself), c.dst.str(), c.dst.str(), how);
    return true;
}

bool rule_not_listening(const RuleInput &in, Verdict &v)
{
    if (!in.conn || in.conn->error != ECONNREFUSED || in.conn->t_established)
        return false;
    auto ls = in.state.listeners_on(in.conn->dst);
    const Listener *last = ls.empty() ? nullptr : ls.back();
    bool closed_unseen = false; // found at the start: its close had no kernel record
    if (last && !last->t_unlisten) {
        const Proc *lp = in.state.proc(last->pid);
        if (!lp || !lp->exit) {
            // Someone still listens there: not this cause. Unless it was
            // found at the start and listens no more (a graceful stop
            // that closed its listener first and drains).
            // (asked in the listener's own network namespace: it lives,
            // where Nginx's worker may have exited since)
            closed_unseen = !last->t_listen && in.recheck_listener && in.host && last->pid &&
                            !in.host->listener(in.conn->dst, last->pid);
            if (!closed_unseen)
                return false;
        }
    }
    if (!base(v, in, "upstream_not_listening", "high"))
        return true;
    v.upstream_pid.reset();
    v.upstream_comm.clear();
    std::string dst = in.conn->dst.str();
    if (!last) {
        v.explanation = in.state.listener_aged_out(in.conn->dst)
                            ? fmt::format("Nothing was listening on {}: the connection was refused; the last "
                                          "listener there stopped longer ago than the evidence window (--window).",
                                          dst)
                            : fmt::format("Nothing was listening on {}: the connection was refused, and no process "
                                          "has listened there since n502trace started.",
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
    if (closed_unseen) {
        how = "it is alive but no longer listens there (it closed its listening socket, as a server shutting down "
              "gracefully does before its last requests end)";
        v.confidence = "medium";
        v.notes.push_back("the listener was found when n502trace started, so its close was not seen: that nothing "
                          "listens there was asked when this verdict was made");
    }
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
    if (!base(v, in, "upstream_oom_killed", "high"))
        return true;
    v.evidence.push_back(oom_evidence(p));
    for (const auto &s : p.signals)
        if (s.ts >= *p.oom_ts && s.ts <= p.exit->ts)
            v.evidence.push_back(signal_evidence(p, s));
    v.evidence.push_back(exit_evidence(p));
    std::string where;
    if (!p.cgroup.empty())
        where = p.memory_limit ? fmt::format(" in memory cgroup {} (limit {} MiB)", p.cgroup, p.memory_limit >> 20)
                               : fmt::format(" in memory cgroup {}", p.cgroup);
    if (p.container)
        where = p.memory_limit ? fmt::format(" in {} under its memory limit of {} MiB", describe(*p.container),
                                             p.memory_limit >> 20)
                               : fmt::format(" in {}", describe(*p.container));
    if (!p.cgroup.empty())
        v.fact("memory_cgroup", p.cgroup);
    if (p.memory_limit)
        v.fact("memory_limit_bytes", static_cast<int64_t>(p.memory_limit));
    v.explanation = fmt::format("Upstream {} was OOM-killed at {}{} while it held Nginx's connection.",
                                who(p.pid, p.comm), at(in, *p.oom_ts), where);
    return true;
}

// A process that handled a stop signal from another process and then ended
// the connection (closed it, reset it, or exited holding it): killed all the
// same, by what the signal asked of it.
bool killed_by_handled_signal(const RuleInput &in, Verdict &v)
{
    bool bounded = false;
    uint64_t end = 0;
    const SignalRec *s = stop_signal(in, &bounded, &end);
    if (!s || raced(in))
        return false;
    if (!base(v, in, "upstream_killed", bounded ? "high" : "medium"))
        return true;
    const Proc &p = *in.upstream;
    const Conn &c = *in.conn;
    v.evidence.push_back(signal_evidence(p, *s));
    std::string later = duration_text(end - s->ts) + " later";
    const char *verb = c.t_up_abort || c.t_rst_recv == end ? "reset" : "closed";
    std::string what;
    if (p.exit) {
        v.evidence.push_back(exit_evidence(p));
        std::string status = p.exit->signaled() ? fmt::format("killed by {}", signal_name(p.exit->signal()))
                                                : fmt::format("with code {}", p.exit->code());
        if (p.exit->ts == end)
            what = fmt::format("exited {} {}, still holding it", later, status);
        else
            what = fmt::format("{} it {} (it {} {} at {})", verb, later, p.exit->signaled() ? "was then" : "then exited",
                               status, at(in, p.exit->ts));
    } else {
        what = fmt::format("{} it {}", verb, later);
    }
    v.fact("signal_handled", true);
    v.explanation = fmt::format("Upstream {} was told to stop with {} by {} at {} while it held Nginx's connection, "
                                "and {}: it ended the request on that signal.{}",
                                who(p.pid, p.comm), signal_name(s->sig), sender_of(p, *s), at(in, s->ts), what,
                                supervisor_hint(*s));
    return true;
}

bool rule_killed(const RuleInput &in, Verdict &v)
{
    if (!died_holding(in) || !in.upstream->exit->signaled())
        return killed_by_handled_signal(in, v);
    const Proc &p = *in.upstream;
    const SignalRec *s = killing_signal(p);
    if (s && s->sender == p.pid && (is_crash_signal(s->sig) || s->code > 0))
        return false; // its own fault: crashed
    if (!s && is_crash_signal(p.exit->signal()))
        return false;
    if (!base(v, in, "upstream_killed", s ? "high" : "medium"))
        return true;
    if (s)
        v.evidence.push_back(signal_evidence(p, *s));
    v.evidence.push_back(exit_evidence(p));
    if (s)
        v.explanation = fmt::format("Upstream {} was killed by {} from {} at {} while it held Nginx's connection.{}",
                                    who(p.pid, p.comm), signal_name(s->sig), sender_of(p, *s), at(in, s->ts),
                                    supervisor_hint(*s));
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
    if (!base(v, in, "upstream_crashed", s ? "high" : "medium"))
        return true;
    if (s)
        v.evidence.push_back(signal_evidence(p, *s));
    v.evidence.push_back(exit_evidence(p));
    v.explanation = fmt::format("Upstream {} crashed with {}{} at {} while it held Nginx's connection.",
                                who(p.pid, p.comm), signal_name(p.exit->signal()),
                                p.exit->core() ? " (core dumped)" : "", at(in, p.exit->ts));
    return true;
}

// An upstream that exited by itself while the connection idled in Nginx's
// keep-alive pool (a worker recycled after max_requests): its exit's FIN,
// then a RST for the request Nginx sent after it. A keep-alive race.
bool exited_idle(const RuleInput &in)
{
    return raced(in) && in.upstream && in.upstream->exit && !in.upstream->exit->signaled();
}

bool rule_exited(const RuleInput &in, Verdict &v)
{
    if (!died_holding(in) || in.upstream->exit->signaled() || exited_idle(in))
        return false;
    const Proc &p = *in.upstream;
    if (!base(v, in, "upstream_exited", "high"))
        return true;
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
    if (!base(v, in, "upstream_reset", "high"))
        return true;
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
    if (!base(v, in, "upstream_closed_early", "high"))
        return true;
    v.explanation = fmt::format("Upstream {} is alive and closed the connection (FIN) at {} before a complete "
                                "response header.",
                                who(p.pid, p.comm), at(in, *t));
    return true;
}

bool connect_failed_with(const RuleInput &in, int err)
{
    return in.conn && in.conn->error == err && !in.conn->t_established;
}

// Nginx's SYNs to a TCP upstream went unanswered until Nginx gave up
// (proxy_connect_timeout: its 504), or until the kernel did, its SYN retries
// run out first (ETIMEDOUT: "connect() failed (110: ...)", a 502).
bool syn_unanswered(const RuleInput &in)
{
    return in.conn && !in.conn->t_established && in.conn->dst.family != AF_UNIX &&
           (in.line.kind == LogKind::Timeout || in.conn->error == ETIMEDOUT);
}

bool rule_socket_missing(const RuleInput &in, Verdict &v)
{
    if (!connect_failed_with(in, ENOENT) || in.conn->dst.family != AF_UNIX)
        return false;
    if (!base(v, in, "upstream_socket_missing", "high"))
        return true;
    std::string path = in.conn->dst.path;
    auto ls = in.state.listeners_on(in.conn->dst);
    std::string last;
    if (!ls.empty()) {
        const Listener *l = ls.back();
        Evidence e;
        e.ts = l->t_listen;
        e.event = "listen";
        e.pid = l->pid;
        e.comm = l->comm;
        e.detail = fmt::format("{} listened on {}", who(l->pid, l->comm), l->addr.str());
        v.evidence.push_back(e);
        if (const Proc *lp = in.state.proc(l->pid); lp && lp->exit) {
            v.evidence.push_back(exit_evidence(*lp));
            last = fmt::format("; the last listener there, {}, has exited", who(l->pid, l->comm));
        } else {
            last = fmt::format("; the last listener there was {}", who(l->pid, l->comm));
        }
    }
    v.fact("socket_path", path);
    v.explanation = fmt::format("The unix socket {} does not exist (connect failed with ENOENT): the upstream is not "
                                "running or listens elsewhere{}.",
                                path, last);
    return true;
}

bool rule_permission_denied(const RuleInput &in, Verdict &v)
{
    if (!connect_failed_with(in, EACCES))
        return false;
    if (!base(v, in, "upstream_permission_denied", "high"))
        return true;
    std::string path = in.conn->dst.path;
    if (in.conn->dst.family != AF_UNIX || !in.host) {
        v.explanation = fmt::format("Connecting to {} was denied (EACCES).", in.conn->dst.str());
        return true;
    }
    FileFacts f = in.host->file(path);
    auto creds = in.host->creds(in.conn->nginx_pid);
    if (f.exists) {
        v.fact("socket_mode", fmt::format("{:04o}", f.mode));
        v.fact("socket_owner", f.owner + ":" + f.group);
    }
    if (creds) {
        v.fact("worker_uid", static_cast<int64_t>(creds->uid));
        v.fact("worker_gid", static_cast<int64_t>(creds->gid));
    }
    std::string why;
    if (f.exists && creds && !may_connect(*creds, path, *in.host, &why)) {
        v.fact("mode_explains", true);
        v.explanation = fmt::format("Nginx worker {} (uid {}, gid {}) may not connect to {}: {}.", in.conn->nginx_pid,
                                    creds->uid, creds->gid, path, why);
    } else if (f.exists && creds) {
        v.fact("mode_explains", false);
        v.explanation = fmt::format("Connecting to {} was denied although its mode ({:04o} {}:{}) allows uid {}: "
                                    "something else refused it, most likely a security module (AppArmor, SELinux).",
                                    path, f.mode, f.owner, f.group, creds->uid);
    } else {
        v.explanation = fmt::format("Connecting to {} was denied (EACCES); the socket file or the worker was gone "
                                    "when n502trace looked.",
                                    path);
    }
    return true;
}

void listener_facts(Verdict &v, const ListenerQueue &q)
{
    if (q.pid)
        v.fact("listener_pid", static_cast<int64_t>(q.pid));
    if (!q.comm.empty())
        v.fact("listener_comm", q.comm);
    v.fact("backlog", static_cast<int64_t>(q.backlog));
    v.fact("queue_len", static_cast<int64_t>(q.queue_len));
}

bool rule_backlog_full(const RuleInput &in, Verdict &v)
{
    if (!in.conn)
        return false;
    bool unix_full = connect_failed_with(in, EAGAIN) && in.conn->dst.family == AF_UNIX;
    bool unanswered = syn_unanswered(in);
    if (!unix_full && !unanswered)
        return false;
    std::optional<ListenerQueue> q;
    if (in.host)
        q = in.host->listener(in.conn->dst, in.conn->nginx_pid);
    if (unanswered && (!q || q->queue_len <= q->backlog))
        return false; // nothing listens, or its queue has room: not this cause
    if (!base(v, in, "upstream_backlog_full", q ? "high" : "medium"))
        return true;
    if (q) {
        listener_facts(v, *q);
        v.upstream_pid = q->pid ? std::optional<uint32_t>(q->pid) : std::nullopt;
        v.upstream_comm = q->comm;
    }
    std::string lst = q ? fmt::format("{} has {} connections waiting with a backlog of {}",
                                      q->pid ? who(q->pid, q->comm) : std::string("its listener"), q->queue_len,
                                      q->backlog)
                        : std::string("its listener could not be inspected");
    if (unix_full) {
        v.explanation = fmt::format("The accept queue of {} is full (connect failed with EAGAIN): {}; the upstream "
                                    "is not accepting fast enough.",
                                    in.conn->dst.str(), lst);
    } else {
        v.fact("syn_retransmits", static_cast<int64_t>(in.conn->syn_retransmits));
        v.explanation = fmt::format("Nginx's SYNs to {} went unanswered ({} retransmissions) because the listener's "
                                    "accept queue is full: {}.",
                                    in.conn->dst.str(), in.conn->syn_retransmits, lst);
    }
    return true;
}

bool rule_ports_exhausted(const RuleInput &in, Verdict &v)
{
    if (!connect_failed_with(in, EADDRNOTAVAIL))
        return false;
    if (!base(v, in, "local_ports_exhausted", "high"))
        return true;
    // The host's view (sock_diag) counts what the event stream cannot: sockets
    // in TIME_WAIT, and connections still open whose story the kernel holds.
    auto by_state = in.host ? in.host->sockets_to(in.conn->dst, in.conn->nginx_pid)
                            : in.state.nginx_sockets_to(in.conn->dst);
    int total = 0;
    std::string states;
    for (const auto &[st, n] : by_state) {
        total += n;
        states += fmt::format("{}{} {}", states.empty() ? "" : ", ", n, st);
        v.fact("nginx_sockets_" + st, static_cast<int64_t>(n));
    }
    v.fact("nginx_sockets", static_cast<int64_t>(total));
    std::string range = in.host ? in.host->port_range(in.conn->nginx_pid) : "";
    if (!range.empty())
        v.fact("port_range", range);
    v.explanation = fmt::format("No local port was free for a connection to {} (EADDRNOTAVAIL): Nginx's network "
                                "namespace has {} sockets to it{}{}.",
                                in.conn->dst.str(), total, states.empty() ? "" : " (" + states + ")",
                                range.empty() ? "" : "; the local port range is " + range);
    return true;
}

bool rule_firewall_reset(const RuleInput &in, Verdict &v)
{
    // (a worker not known by its host pid: in which network namespace it
    // connected is not known either)
    if (!connect_failed_with(in, ECONNREFUSED) || in.conn->dst.family == AF_UNIX || !in.host ||
        (!in.conn->nginx_pid && in.recheck_listener)) // (look-up set 4 on: older recordings asked anyway)
        return false;
    auto q = in.host->listener(in.conn->dst, in.conn->nginx_pid);
    if (!q)
        return false;
    if (q->queue_len > q->backlog && in.host->tcp_abort_on_overflow(in.conn->nginx_pid) == 1)
        return false; // the kernel itself resets on overflow with this setting
    if (!base(v, in, "firewall_reset", "high"))
        return true;
    listener_facts(v, *q);
    v.explanation = fmt::format("Nginx's connect to {} was reset although {} listens there and its queue has room: a "
                                "firewall rule (e.g. nftables/iptables REJECT with tcp-reset) answered the SYN.",
                                in.conn->dst.str(), q->pid ? who(q->pid, q->comm) : std::string("a process"));
    return true;
}

bool rule_connect_timeout(const RuleInput &in, Verdict &v)
{
    // Unanswered SYNs, or an unreachable host or network said by the kernel
    // (an ICMP unreachable came back, or no neighbour answered): "connect()
    // failed (113: No route to host)", "(101: Network is unreachable)".
    bool unreachable = in.conn && in.conn->dst.family != AF_UNIX &&
                       (connect_failed_with(in, EHOSTUNREACH) || connect_failed_with(in, ENETUNREACH));
    if (!syn_unanswered(in) && !unreachable)
        return false;
    const Conn &c = *in.conn;
    if (!base(v, in, "connect_timeout", c.syn_retransmits || unreachable ? "high" : "medium"))
        return true;
    v.fact("syn_retransmits", static_cast<int64_t>(c.syn_retransmits));
    std::string resent = fmt::format("{} retransmissions", c.syn_retransmits);
    std::string after = c.syn_retransmits ? fmt::format(" after {} SYN retransmissions", c.syn_retransmits) : "";
    if (c.error == EHOSTUNREACH)
        v.explanation = fmt::format("Nginx's connect to {} failed with EHOSTUNREACH (No route to host){}: the host "
                                    "did not answer on its network (no ARP or neighbour reply: down, or a wrong "
                                    "address), or a router or firewall answered with an ICMP host-unreachable (a "
                                    "REJECT rule's icmp-host-unreachable or icmp-host-prohibited).",
                                    c.dst.str(), after);
    else if (c.error == ENETUNREACH)
        v.explanation = fmt::format("Nginx's connect to {} failed with ENETUNREACH (Network is unreachable){}: no "
                                    "route leads to its network (none in the routing table, as for an IPv6 address "
                                    "on a host without IPv6 connectivity, or a router answered with an ICMP "
                                    "network-unreachable).",
                                    c.dst.str(), after);
    else if (c.error == ETIMEDOUT)
        v.explanation = fmt::format("Nginx's SYNs to {} went unanswered ({}) until the kernel gave up (ETIMEDOUT: "
                                    "its SYN retries, net.ipv4.tcp_syn_retries, ran out before Nginx's connect "
                                    "timeout): packets are dropped on the way (a firewall DROP rule, a down route or "
                                    "host).",
                                    c.dst.str(), resent);
    else
        v.explanation = fmt::format("Nginx's SYNs to {} went unanswered ({}) until Nginx gave up: packets are dropped "
                                    "on the way (a firewall DROP rule, a down route or host).",
                                    c.dst.str(),
                                    c.syn_retransmits
                                        ? resent
                                        // The count is the socket's own: none means Nginx gave up
                                        // within the initial retransmission timeout.
                                        : std::string("none retransmitted: Nginx gave up within the first second"));
    return true;
}

bool rule_keepalive_race(const RuleInput &in, Verdict &v)
{
    if (!raced(in) || (!alive_at_failure(in) && !exited_idle(in)))
        return false;
    std::optional<uint64_t> closed = in.conn->t_up_fin;
    const Proc &p = *in.upstream;
    if (!base(v, in, "keepalive_race", "high"))
        return true;
    if (p.exit)
        v.evidence.push_back(exit_evidence(p));
    v.explanation = fmt::format("Nginx reused an idle keep-alive connection that upstream {} had already closed at "
                                "{}{}; its request arrived after the close and the upstream's kernel answered with a "
                                "RST at {}.",
                                who(p.pid, p.comm), at(in, *closed),
                                p.exit ? fmt::format(" (it exited with code {} at {}, the connection idle)",
                                                     p.exit->code(), at(in, p.exit->ts))
                                       : "",
                                at(in, *in.conn->t_up_rst_sent));
    return true;
}

bool rule_invalid_response(const RuleInput &in, Verdict &v)
{
    if (in.line.kind != LogKind::InvalidResponse || !in.conn || !in.conn->t_established)
        return false;
    uint64_t nginx_end = std::min(in.conn->t_nginx_fin.value_or(UINT64_MAX), in.conn->t_nginx_close.value_or(UINT64_MAX));
    // What has no status line Nginx 1.22 passes on as an HTTP/0.9 response
    // (ngx_http_proxy_process_status_line), read until the upstream closes:
    // its FIN ends that response, only a RST breaks it.
    bool upstream_broke = std::min(in.conn->t_rst_recv.value_or(UINT64_MAX),
                                   in.line.http09 ? UINT64_MAX : in.conn->t_fin_recv.value_or(UINT64_MAX)) < nginx_end;
    if (upstream_broke)
        return false;
    if (!base(v, in, "upstream_invalid_response", "high"))
        return true;
    v.fact("bytes_received", static_cast<int64_t>(in.conn->bytes_received));
    // Nginx closed first: its FIN, or its close() before any FIN/RST from the upstream.
    uint64_t upstream_end = std::min(in.conn->t_rst_recv.value_or(UINT64_MAX), in.conn->t_fin_recv.value_or(UINT64_MAX));
    bool nginx_first = in.conn->t_nginx_fin || (in.conn->t_nginx_close && *in.conn->t_nginx_close < upstream_end);
    v.fact("closed_by", nginx_first ? "nginx" : upstream_end != UINT64_MAX ? "upstream" : "unknown");
    std::string sender = in.upstream ? who(in.upstream->pid, in.upstream->comm) : in.conn->dst.str();
    if (in.line.http09) {
        v.explanation = fmt::format("The transport was clean: {} sent {} bytes that do not begin with an HTTP status "
                                    "line ({}); Nginx did not reject them but passed them on to the client as a "
                                    "headerless HTTP/0.9 response, {}.",
                                    sender, in.conn->bytes_received, in.line.message,
                                    nginx_first                 ? "then closed the connection itself"
                                    : upstream_end != UINT64_MAX ? "until the upstream closed the connection, which "
                                                                   "ends such a response"
                                                                 : "reading on while the connection stayed open");
        return true;
    }
    v.explanation = fmt::format("The transport was clean: {} sent {} bytes that Nginx rejected ({}), and Nginx closed "
                                "the connection itself.",
                                sender, in.conn->bytes_received, in.line.message);
    return true;
}

bool rule_upstream_timeout(const RuleInput &in, Verdict &v)
{
    if (in.line.kind != LogKind::Timeout || !in.conn || !in.conn->t_established)
        return false;
    if (in.upstream && in.upstream->exit)
        return false;
    v.status = 504;
    if (!base(v, in, "upstream_timeout", in.upstream ? "high" : "medium"))
        return true;
    std::string doing;
    if (in.upstream && in.host)
        doing = in.host->activity(in.upstream->pid);
    if (!doing.empty())
        v.fact("upstream_state", doing);
    if (in.upstream)
        v.explanation = fmt::format("Upstream {} accepted the connection and is still alive{} but sent no response "
                                    "in time.",
                                    who(in.upstream->pid, in.upstream->comm),
                                    doing.empty() ? "" : " (" + doing + ")");
    else
        v.explanation = fmt::format("The connection to {} was established but no process was seen accepting it, and "
                                    "no response came in time.",
                                    in.conn->dst.str());
    return true;
}

bool rule_no_live_upstreams(const RuleInput &in, Verdict &v)
{
    if (in.line.kind != LogKind::NoLiveUpstreams)
        return false;
    if (!base(v, in, "no_live_upstreams", "high"))
        return true;
    constexpr size_t kListed = 8; // in the sentence; the evidence has them all
    // The worker's failures of the last minute, one entry per upstream and
    // cause, in the order they began (the correlator tallies no
    // no_live_upstreams verdicts).
    std::vector<const FailureTally *> groups;
    if (in.tallies)
        for (const FailureTally &t : *in.tallies)
            if (v.ts_real_ns - t.last_real_ns <= kTallyIdleNs)
                groups.push_back(&t);
    std::stable_sort(groups.begin(), groups.end(),
                     [](const FailureTally *a, const FailureTally *b) { return a->first_real_ns < b->first_real_ns; });
    std::vector<std::string> parts;
    for (const FailureTally *t : groups) {
        Evidence e;
        int64_t boot = t->last_real_ns - in.tb.offset_ns();
        e.ts = t->last_boot_ns ? t->last_boot_ns : boot > 0 ? static_cast<uint64_t>(boot) : 0;
        e.event = "earlier_failure";
        e.pid = in.line.pid;
        e.comm = "nginx";
        e.cause = t->cause;
        e.upstream = t->upstream;
        e.count = t->count;
        std::string since = t->count > 1 ? clock_local(t->first_real_ns) : "";
        e.detail = fmt::format("{}: {}{}", t->upstream,
                               t->explanation.empty() ? "(the output rate limit printed none of these)"
                                                      : t->explanation,
                               t->count > 1 ? fmt::format(" ({} failures since {}; the time is the last one's)",
                                                          t->count, since)
                                            : "");
        v.evidence.push_back(e);
        if (parts.size() < kListed)
            parts.push_back(t->count > 1 ? fmt::format("{} ({}, {} times since {})", t->upstream, t->cause, t->count,
                                                       since)
                                         : fmt::format("{} ({})", t->upstream, t->cause));
    }
    if (groups.size() > kListed)
        parts.push_back(fmt::format("and {} more (see the evidence)", groups.size() - kListed));
    std::string list;
    for (size_t i = 0; i < parts.size(); i++) {
        if (i)
            list += ", ";
        list += parts[i];
    }
    if (groups.empty()) {
        v.confidence = "medium";
        v.explanation = fmt::format("Nginx had marked every server of upstream group {} as failed; the failures that "
                                    "marked them happened before n502trace saw them.",
                                    in.line.upstream_peer);
    } else {
        v.explanation = fmt::format("Nginx had marked every server of upstream group {} as failed after earlier "
                                    "failures in this worker: {}.",
                                    in.line.upstream_peer, list);
    }
    return true;
}

bool rule_unresolvable(const RuleInput &in, Verdict &v)
{
    if (in.line.kind != LogKind::ResolveFailed)
        return false;
    if (!base(v, in, "upstream_unresolvable", "high"))
        return true;
    const std::string &name = in.line.upstream_peer;
    if (in.line.message.rfind("no resolver defined", 0) == 0)
        v.explanation = fmt::format("Nginx had to resolve the upstream name {} when the request came (its *_pass "
                                    "names it through a variable) and no `resolver` is configured: it made no "
                                    "connection. Configure a `resolver`, or name an upstream{{}} group or an address.",
                                    name);
    else
        v.explanation = fmt::format("Nginx could not resolve the upstream name {} ({}: {}): it made no connection. The "
                                    "name does not exist or the `resolver` Nginx uses did not answer in time.",
                                    name, in.line.err_no, in.line.err_text);
    return true;
}

bool rule_unknown(const RuleInput &in, Verdict &v)
{
    if (!base(v, in, "unknown", "low"))
        return true;
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
    if (!in.conn->t_accept && !in.conn->up_pid && in.conn->t_established)
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
        {"upstream_unresolvable", "the upstream's name found no address at request time (a *_pass with a variable): not found, the resolver did not answer, or no resolver is configured; no connection was made", rule_unresolvable},
        {"upstream_self_connect", "Nginx's connection met itself (source = destination): nothing listened on the upstream's port, which its source port happened to be", rule_self_connect},
        {"upstream_socket_missing", "connect to a unix socket path that does not exist (ENOENT)", rule_socket_missing},
        {"upstream_permission_denied", "connect denied (EACCES): whether the socket's mode/owner explains it, or something else (an LSM)", rule_permission_denied},
        {"upstream_backlog_full", "the listener's accept queue is full (unix: EAGAIN; TCP: SYNs unanswered)", rule_backlog_full},
        {"local_ports_exhausted", "no local port left for a new connection (EADDRNOTAVAIL)", rule_ports_exhausted},
        {"firewall_reset", "the connect was reset although a listener exists: a firewall REJECT", rule_firewall_reset},
        {"upstream_not_listening", "connect refused: nothing listens on the address; names the last listener and how it went away", rule_not_listening},
        {"connect_timeout", "SYNs went unanswered until Nginx (504) or the kernel (ETIMEDOUT, 502) gave up, or the host or network is unreachable (EHOSTUNREACH, ENETUNREACH): packets dropped on the way, e.g. by a firewall, or no route", rule_connect_timeout},
        {"upstream_oom_killed", "the process holding the upstream end was OOM-killed", rule_oom_killed},
        {"upstream_killed", "the process holding the upstream end was killed by a signal from another process, or ended the connection on a stop signal from one (a supervisor's timeout)", rule_killed},
        {"upstream_crashed", "the process died of its own fatal signal (SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL)", rule_crashed},
        {"upstream_exited", "the process exited normally while holding the connection", rule_exited},
        {"keepalive_race", "Nginx reused an idle keep-alive connection the upstream had already closed", rule_keepalive_race},
        {"upstream_invalid_response", "Nginx rejected what the upstream sent (or, sent without a status line, passed it on as HTTP/0.9); the transport was clean", rule_invalid_response},
        {"upstream_timeout", "the upstream accepted and is alive but sent nothing in time (504)", rule_upstream_timeout},
        {"upstream_reset", "the upstream process is alive and its socket sent a RST", rule_reset},
        {"upstream_closed_early", "the upstream process is alive and closed the connection before a full response header", rule_closed_early},
        {"no_live_upstreams", "every server of the group was marked failed: names the earlier failures", rule_no_live_upstreams},
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
    case LogKind::ResolveFailed: return "upstream_unresolvable";
    default: return "unknown";
    }
}

} // namespace n502
