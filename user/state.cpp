#include "state.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <sys/socket.h>

namespace n502 {

static constexpr int TCP_ESTABLISHED_ = 1;
static constexpr int TCP_SYN_SENT_ = 2;
static constexpr int TCP_FIN_WAIT1_ = 4;
static constexpr int TCP_CLOSE_ = 7;
static constexpr int TCP_CLOSE_WAIT_ = 8;
static constexpr int TCP_LISTEN_ = 10;

static std::string errno_text(int err) { return fmt::format("{} ({})", strerror(err), err); }

uint64_t Conn::failure_ts() const
{
    uint64_t best = 0;
    for (const auto &t : {t_refused, t_rst_recv, t_fin_recv, t_closed})
        if (t && (best == 0 || *t < best))
            best = *t;
    // Unix sockets have no TCP states: the upstream's close() of its end is
    // the first sign Nginx can get.
    if (dst.family == AF_UNIX && t_up_close && (best == 0 || *t_up_close < best))
        best = *t_up_close;
    if (best == 0 && have_connect && error)
        best = t_first;
    return best;
}

Proc *State::proc(uint32_t pid)
{
    auto it = procs_.find(pid);
    return it == procs_.end() ? nullptr : &it->second;
}

const Proc *State::proc(uint32_t pid) const
{
    auto it = procs_.find(pid);
    return it == procs_.end() ? nullptr : &it->second;
}

Proc &State::proc_or_new(uint32_t pid, uint64_t ts)
{
    auto [it, inserted] = procs_.try_emplace(pid);
    if (inserted) {
        it->second.pid = pid;
        it->second.first_seen = ts;
    }
    return it->second;
}

void State::add_process(uint32_t pid, uint32_t role, std::string comm, uint32_t parent)
{
    Proc &p = proc_or_new(pid, 0);
    p.role |= role;
    if (!comm.empty())
        p.comm = std::move(comm);
    if (parent)
        p.parent = parent;
}

void State::add_listener(const Addr &a, uint32_t pid, std::string comm, uint64_t sk)
{
    Listener l;
    l.addr = a;
    l.sk = sk;
    l.pid = pid;
    l.comm = comm;
    auto &v = listeners_[a.str()];
    v.push_back(l);
    if (v.size() > limits_.max_listeners_per_addr)
        v.erase(v.begin());
    if (sk)
        listener_sk_[sk] = a.str();
    add_process(pid, N502_PROC_LISTENER, std::move(comm));
}

Conn *State::live_conn(uint64_t sk)
{
    auto it = live_.find(sk);
    return it == live_.end() ? nullptr : it->second.get();
}

Conn &State::conn_for(uint64_t sk, uint64_t ts, uint32_t owner)
{
    if (Conn *c = live_conn(sk))
        return *c;
    auto c = std::make_unique<Conn>();
    c->id = next_id_++;
    c->sk = sk;
    c->nginx_pid = owner;
    c->t_first = ts;
    c->t_last = ts;
    if (const Proc *p = proc(owner))
        c->nginx_comm = p->comm;
    Conn &ref = *c;
    live_[sk] = std::move(c);
    stats_.conns++;
    return ref;
}

Conn *State::conn_by_up_sk(uint64_t up_sk)
{
    auto it = by_up_sk_.find(up_sk);
    return it == by_up_sk_.end() ? nullptr : it->second;
}

void State::set_dst(Conn &c, const Addr &dst)
{
    std::string key = dst.str();
    if (key == c.dst_key) {
        c.dst = dst;
        return;
    }
    if (!c.dst_key.empty())
        unindex(&c);
    c.dst = dst;
    c.dst_key = std::move(key);
    by_dst_[c.dst_key].push_back(&c);
}

void State::unindex(Conn *c)
{
    auto it = by_dst_.find(c->dst_key);
    if (it == by_dst_.end())
        return;
    auto &dq = it->second;
    auto pos = std::find(dq.begin(), dq.end(), c); // nearly always at the front
    if (pos != dq.end())
        dq.erase(pos);
    if (dq.empty())
        by_dst_.erase(it);
}

void State::finish(uint64_t sk)
{
    auto it = live_.find(sk);
    if (it == live_.end())
        return;
    finished_.push_back(std::move(it->second));
    live_.erase(it);
    trim();
}

void State::trim()
{
    while (finished_.size() > limits_.max_finished_conns) {
        Conn *c = finished_.front().get();
        if (c->up_sk) {
            auto it = by_up_sk_.find(c->up_sk);
            if (it != by_up_sk_.end() && it->second == c)
                by_up_sk_.erase(it);
        }
        unindex(c);
        finished_.pop_front();
        stats_.conns_dropped++;
    }
    while (dead_order_.size() > limits_.max_dead_procs) {
        uint32_t pid = dead_order_.front();
        dead_order_.pop_front();
        auto it = procs_.find(pid);
        if (it != procs_.end() && it->second.exit) {
            procs_.erase(it);
            stats_.procs_dropped++;
        }
    }
}

void State::add_evidence(Conn &c, Evidence ev)
{
    c.t_last = std::max(c.t_last, ev.ts);
    if (c.timeline.size() < 64)
        c.timeline.push_back(std::move(ev));
}

static Evidence make_ev(const Event &e, const char *name, uint32_t pid, std::string comm, std::string detail)
{
    Evidence ev;
    ev.ts = e.ts;
    ev.event = name;
    ev.pid = pid;
    ev.comm = std::move(comm);
    ev.detail = std::move(detail);
    return ev;
}

void State::apply(const Event &e)
{
    stats_.events++;
    switch (e.type) {
    case N502_EV_CONNECT: {
        Conn *c = live_conn(e.sk);
        if (c && c->have_connect)
            c = nullptr; // a new connection on a reused socket address
        if (!c) {
            // The connect may have failed before its syscall returned (a
            // loopback RST processed inside connect()): attach to that one.
            for (auto it = finished_.rbegin(); it != finished_.rend() && it - finished_.rbegin() < 64; ++it)
                if ((*it)->sk == e.sk && !(*it)->have_connect && (*it)->nginx_pid == e.tgid) {
                    c = it->get();
                    break;
                }
        }
        if (!c)
            c = &conn_for(e.sk, e.ts, e.tgid);
        c->have_connect = true;
        c->connect_ret = e.ret;
        c->nginx_pid = e.tgid;
        c->nginx_comm = e.comm;
        if (e.dst.known())
            set_dst(*c, e.dst);
        Evidence ev = make_ev(e, "connect", e.tgid, e.comm, "");
        if (e.ret == 0) {
            ev.detail = fmt::format("connect() to {} succeeded", c->dst.str());
            if (c->dst.family == AF_UNIX)
                c->t_established = e.ts; // unix connects complete in the syscall
        }
        else if (e.ret == -EINPROGRESS)
            ev.detail = fmt::format("connect() to {} returned EINPROGRESS (non-blocking: the outcome comes later)", c->dst.str());
        else {
            ev.detail = fmt::format("connect() to {} failed: {}", c->dst.str(), errno_text(-e.ret));
            ev.error = -e.ret;
            c->error = -e.ret;
            if (e.ret == -ECONNREFUSED)
                c->t_refused = e.ts;
        }
        add_evidence(*c, std::move(ev));
        if (e.dst.family == AF_UNIX && e.ret == 0 && e.peer_sk)
            unix_peer_[e.peer_sk] = e.sk;
        // A connect that failed at once (unix errors, EADDRNOTAVAIL, ...) ends here.
        if (e.ret != 0 && e.ret != -EINPROGRESS && live_conn(e.sk) == c)
            finish(e.sk);
        break;
    }
    case N502_EV_STATE: {
        if (e.sock_role == N502_SOCK_LISTENER) {
            if (e.newstate == TCP_CLOSE_) {
                auto it = listener_sk_.find(e.sk);
                if (it != listener_sk_.end()) {
                    for (auto &l : listeners_[it->second])
                        if (l.sk == e.sk && !l.t_unlisten) {
                            l.t_unlisten = e.ts;
                            l.unlisten_pid = e.tgid;
                            l.unlisten_comm = e.comm;
                        }
                    listener_sk_.erase(it);
                }
            }
            break;
        }
        if (e.sock_role == N502_SOCK_NGINX) {
            Conn &c = conn_for(e.sk, e.ts, e.owner);
            if (e.dst.known() && e.dst.port)
                set_dst(c, e.dst);
            if (e.src.known() && e.src.port)
                c.src = e.src;
            c.tcp_state = e.newstate;
            c.bytes_received = e.bytes_received;
            c.bytes_acked = e.bytes_acked;
            if (e.oldstate == TCP_ESTABLISHED_ && e.newstate == TCP_FIN_WAIT1_)
                c.t_nginx_fin = e.ts;
            Evidence ev = make_ev(e, "state", e.owner, c.nginx_comm, "");
            ev.from = tcp_state_name(e.oldstate);
            ev.to = tcp_state_name(e.newstate);
            if (e.newstate == TCP_ESTABLISHED_) {
                c.t_established = e.ts;
                ev.detail = fmt::format("Nginx's connection {} -> {} established", c.src.str(), c.dst.str());
            } else if (e.newstate == TCP_CLOSE_WAIT_) {
                c.t_fin_recv = e.ts;
                ev.detail = "Nginx's socket received a FIN: the upstream end closed";
            } else if (e.oldstate == TCP_SYN_SENT_ && e.newstate == TCP_CLOSE_ && e.sk_err) {
                c.error = e.sk_err;
                if (e.sk_err == ECONNREFUSED)
                    c.t_refused = e.ts;
                ev.error = e.sk_err;
                ev.detail = fmt::format("connect to {} failed: {}", c.dst.str(), errno_text(e.sk_err));
            } else if (e.newstate == TCP_SYN_SENT_) {
                ev.detail.clear(); // the connect event says it
            } else if (e.oldstate == TCP_ESTABLISHED_ && e.newstate == TCP_FIN_WAIT1_) {
                ev.detail = fmt::format("Nginx closed the connection first, after receiving {} bytes", e.bytes_received);
            } else if (e.oldstate == TCP_SYN_SENT_ && e.newstate == TCP_CLOSE_) {
                ev.detail = fmt::format("Nginx gave up connecting to {}: no answer to its SYN", c.dst.str());
            } else if (e.sk_err || e.oldstate == TCP_ESTABLISHED_) {
                ev.detail = fmt::format("Nginx's socket {} -> {}", ev.from, ev.to);
                if (e.sk_err)
                    ev.error = e.sk_err;
            } else {
                ev.detail.clear(); // the orderly end of a close: not evidence
            }
            if (!ev.detail.empty())
                add_evidence(c, std::move(ev));
            if (e.newstate == TCP_CLOSE_) {
                c.t_closed = e.ts;
                if (!c.error && e.sk_err)
                    c.error = e.sk_err;
                finish(e.sk);
            }
        } else if (e.sock_role == N502_SOCK_UPSTREAM) {
            Conn *c = conn_by_up_sk(e.sk);
            if (!c)
                break;
            Evidence ev = make_ev(e, "state", e.owner, c->up_comm, "");
            ev.from = tcp_state_name(e.oldstate);
            ev.to = tcp_state_name(e.newstate);
            if (e.oldstate == TCP_ESTABLISHED_ && e.newstate == TCP_FIN_WAIT1_) {
                c->t_up_fin = e.ts;
                ev.detail = "the upstream's socket sent a FIN (its end was closed)";
            } else if (e.newstate == TCP_CLOSE_ && e.oldstate == TCP_ESTABLISHED_) {
                c->t_up_abort = e.ts;
                ev.detail = "the upstream's socket was aborted (ESTABLISHED -> CLOSE)";
            } else if (e.oldstate == TCP_ESTABLISHED_) {
                ev.detail = fmt::format("the upstream's socket {} -> {}", ev.from, ev.to);
            }
            // The mapping stays after CLOSE: an abortive close sends its RST
            // after the state change. A new accept on this address replaces it.
            if (!ev.detail.empty())
                add_evidence(*c, std::move(ev));
        }
        break;
    }
    case N502_EV_RESET: {
        if (e.sock_role == N502_SOCK_NGINX) {
            Conn *c = live_conn(e.sk);
            if (!c)
                break;
            Evidence ev = make_ev(e, e.dir == N502_RST_RECEIVED ? "rst_received" : "rst_sent", e.owner, c->nginx_comm,
                                  "");
            if (e.dir == N502_RST_RECEIVED) {
                c->t_rst_recv = e.ts;
                ev.detail = fmt::format("Nginx's socket received a RST from {} in state {}", c->dst.str(),
                                        tcp_state_name(e.tcp_state));
            } else {
                ev.detail = fmt::format("Nginx's socket sent a RST to {}", c->dst.str());
            }
            add_evidence(*c, std::move(ev));
        } else if (e.sock_role == N502_SOCK_UPSTREAM) {
            Conn *c = conn_by_up_sk(e.sk);
            if (!c)
                break;
            Evidence ev = make_ev(e, e.dir == N502_RST_RECEIVED ? "rst_received" : "rst_sent", e.owner, c->up_comm,
                                  "");
            if (e.dir == N502_RST_SENT) {
                c->t_up_rst_sent = e.ts;
                ev.detail = "the upstream's socket sent a RST to Nginx";
            } else {
                ev.detail = "the upstream's socket received a RST from Nginx";
            }
            add_evidence(*c, std::move(ev));
        }
        break;
    }
    case N502_EV_RETRANS: {
        if (e.sock_role != N502_SOCK_NGINX)
            break;
        Conn *c = live_conn(e.sk);
        if (!c)
            break;
        if (e.tcp_state == TCP_SYN_SENT_) {
            c->syn_retransmits++;
            if (c->syn_retransmits <= 3)
                add_evidence(*c, make_ev(e, "syn_retransmit", e.owner, c->nginx_comm,
                                         fmt::format("SYN to {} retransmitted (#{}): no answer yet", c->dst.str(),
                                                     c->syn_retransmits)));
        }
        break;
    }
    case N502_EV_ACCEPT: {
        Conn *c = live_conn(e.peer_sk);
        if (!c)
            if (auto it = unix_peer_.find(e.sk); it != unix_peer_.end())
                c = live_conn(it->second);
        if (!c)
            break;
        c->up_sk = e.sk;
        c->up_pid = e.tgid;
        c->up_comm = e.comm;
        c->t_accept = e.ts;
        by_up_sk_[e.sk] = c;
        Proc &p = proc_or_new(e.tgid, e.ts);
        if (p.exit) { // pid reused by a new process
            p = Proc{};
            p.pid = e.tgid;
            p.first_seen = e.ts;
        }
        p.role |= N502_PROC_UPSTREAM;
        p.comm = e.comm;
        Evidence ev = make_ev(e, "accept", e.tgid, e.comm,
                              c->dst.family == AF_UNIX ? fmt::format("accepted Nginx's connection on {}", c->dst.str())
                                                       : fmt::format("accepted Nginx's connection from {} on {}",
                                                                     e.dst.str(), e.src.str()));
        add_evidence(*c, std::move(ev));
        break;
    }
    case N502_EV_CLOSE: {
        if (e.sock_role == N502_SOCK_NGINX) {
            Conn *c = live_conn(e.sk);
            if (!c)
                break;
            c->t_nginx_close = e.ts;
            if (!c->failed()) // after a failure, Nginx's close is only the consequence
                add_evidence(*c, make_ev(e, "close", e.tgid, e.comm, "Nginx closed its end"));
            if (e.src.family == AF_UNIX)
                finish(e.sk);
        } else if (e.sock_role == N502_SOCK_UPSTREAM) {
            Conn *c = conn_by_up_sk(e.sk);
            if (!c)
                break;
            c->t_up_close = e.ts;
            c->up_close_pid = e.tgid;
            add_evidence(*c, make_ev(e, "close", e.tgid, e.comm, "the upstream process called close() on its end"));
            if (e.src.family == AF_UNIX)
                by_up_sk_.erase(e.sk);
        } else if (e.sock_role == N502_SOCK_LISTENER) {
            auto it = listener_sk_.find(e.sk);
            if (it != listener_sk_.end()) {
                for (auto &l : listeners_[it->second])
                    if (l.sk == e.sk && !l.t_unlisten) {
                        l.t_unlisten = e.ts;
                        l.unlisten_pid = e.tgid;
                        l.unlisten_comm = e.comm;
                    }
                listener_sk_.erase(it);
            }
        }
        break;
    }
    case N502_EV_LISTEN: {
        Proc &p = proc_or_new(e.tgid, e.ts);
        if (p.exit) {
            p = Proc{};
            p.pid = e.tgid;
            p.first_seen = e.ts;
        }
        p.comm = e.comm;
        Listener l;
        l.addr = e.src;
        l.sk = e.sk;
        l.pid = e.tgid;
        l.comm = e.comm;
        l.backlog = e.backlog;
        l.t_listen = e.ts;
        std::string key = e.src.str();
        auto &v = listeners_[key];
        v.push_back(l);
        if (v.size() > limits_.max_listeners_per_addr)
            v.erase(v.begin());
        listener_sk_[e.sk] = key;
        p.role |= N502_PROC_LISTENER;
        break;
    }
    case N502_EV_SIGNAL: {
        Proc &p = proc_or_new(e.target, e.ts);
        if (p.comm.empty())
            p.comm = e.target_comm;
        SignalRec s{e.ts, e.sig, e.code, e.result, e.tgid, e.comm};
        p.signals.push_back(std::move(s));
        if (p.signals.size() > 8)
            p.signals.erase(p.signals.begin());
        break;
    }
    case N502_EV_EXIT: {
        Proc &p = proc_or_new(e.tgid, e.ts);
        p.comm = e.comm;
        p.exit = ExitRec{e.ts, e.exit_code};
        dead_order_.push_back(e.tgid);
        trim();
        break;
    }
    case N502_EV_FORK: {
        Proc &child = proc_or_new(e.target, e.ts);
        if (child.exit) {
            child = Proc{};
            child.pid = e.target;
            child.first_seen = e.ts;
        }
        child.role |= e.role;
        child.parent = e.tgid;
        child.comm = e.comm;
        break;
    }
    case N502_EV_OOM: {
        Proc &p = proc_or_new(e.target, e.ts);
        p.oom_ts = e.ts;
        break;
    }
    default:
        break;
    }
}

std::vector<Conn *> State::conns_to(uint32_t nginx_pid, const std::string &upstream)
{
    std::vector<Conn *> out;
    auto it = by_dst_.find(upstream);
    if (it == by_dst_.end())
        return out;
    for (Conn *c : it->second)
        if (c->nginx_pid == nginx_pid)
            out.push_back(c);
    return out;
}

std::vector<const Listener *> State::listeners_on(const Addr &a) const
{
    std::vector<const Listener *> out;
    std::vector<std::string> keys{a.str()};
    if (a.family == AF_INET || a.family == AF_INET6) {
        keys.push_back(fmt::format("0.0.0.0:{}", a.port));
        keys.push_back(fmt::format("[::]:{}", a.port));
    }
    for (const auto &k : keys) {
        auto it = listeners_.find(k);
        if (it == listeners_.end())
            continue;
        for (const auto &l : it->second)
            out.push_back(&l);
    }
    std::stable_sort(out.begin(), out.end(), [](const Listener *x, const Listener *y) {
        uint64_t tx = x->t_unlisten.value_or(UINT64_MAX), ty = y->t_unlisten.value_or(UINT64_MAX);
        return tx < ty;
    });
    return out;
}

std::map<std::string, int> State::nginx_sockets_to(const std::string &upstream) const
{
    std::map<std::string, int> out;
    auto it = by_dst_.find(upstream);
    if (it == by_dst_.end())
        return out;
    for (const Conn *c : it->second)
        if (c->tcp_state && !c->t_closed && live_.count(c->sk) && live_.at(c->sk).get() == c)
            out[tcp_state_name(c->tcp_state)]++;
    return out;
}

std::vector<Conn *> State::recent_conns()
{
    std::vector<Conn *> out;
    out.reserve(finished_.size() + live_.size());
    for (auto &c : finished_)
        out.push_back(c.get());
    for (auto &[sk, c] : live_)
        out.push_back(c.get());
    return out;
}

std::vector<uint32_t> State::nginx_pids() const
{
    std::vector<uint32_t> out;
    for (const auto &[pid, p] : procs_)
        if ((p.role & N502_PROC_NGINX) && !p.exit)
            out.push_back(pid);
    std::sort(out.begin(), out.end());
    return out;
}

} // namespace n502
