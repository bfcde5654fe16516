#include "state.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <sys/socket.h>

namespace n502 {

static std::string errno_text(int err) { return fmt::format("{} ({})", strerror(err), err); }

uint64_t Conn::failure_ts() const
{
    uint64_t best = 0;
    for (const auto &t : {t_refused, t_rst_recv, t_fin_recv, t_closed, t_met_itself})
        if (t && (best == 0 || *t < best))
            best = *t;
    // Unix sockets have no TCP states: the upstream's close() of its end is
    // the first sign Nginx can get.
    if (dst.family == AF_UNIX && t_up_close && (best == 0 || *t_up_close < best))
        best = *t_up_close;
    // Seen only from the upstream's dying close: its FIN or RST is Nginx's
    // first sign (the other end is on this host).
    for (const auto &t : {t_up_fin, t_up_abort})
        if (untracked && t && (best == 0 || *t < best))
            best = *t;
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
    remember_listener(std::move(l));
    add_process(pid, N502_PROC_LISTENER, std::move(comm));
}

void State::remember_listener(Listener l)
{
    if (l.sk)
        listener_sk_[l.sk] = l.addr;
    auto &v = listeners_[l.addr];
    uint32_t ns = l.addr.netns;
    v.push_back(std::move(l));
    // The history is kept per network namespace: 127.0.0.1:9000 in other
    // pods must not push this pod's last listener out. An overall cap
    // bounds an address that thousands of namespaces listen on.
    size_t same = 0;
    for (const auto &x : v)
        same += x.addr.netns == ns;
    if (same > limits_.max_listeners_per_addr)
        for (auto it = v.begin(); it != v.end(); ++it)
            if (it->addr.netns == ns) {
                v.erase(it);
                break;
            }
    if (v.size() > limits_.max_listeners_per_addr * 16)
        v.erase(v.begin());
}

void State::unlisten(const Event &e)
{
    auto it = listener_sk_.find(e.sk);
    if (it == listener_sk_.end())
        return;
    for (auto &l : listeners_[it->second])
        if (l.sk == e.sk && !l.t_unlisten) {
            l.t_unlisten = e.ts;
            l.unlisten_pid = e.tgid;
            l.unlisten_comm = e.comm;
        }
    listener_sk_.erase(it);
}

// A connection's ends, as the kernel's tuple key has them: loopback stays
// in its network namespace.
static std::string tuple_key(const Addr &local, const Addr &remote)
{
    return fmt::format("{}>{}#{}", local.str(), remote.str(), remote.loopback() ? remote.netns : 0);
}

// The key an adopted socket is found by: 4-tuple for TCP, inode for unix.
static std::string pre_key(const Addr &local, const Addr &remote, uint64_t inode)
{
    return local.family == AF_UNIX ? fmt::format("unix inode {}", inode) : tuple_key(local, remote);
}

void State::add_preexisting(uint32_t nginx_pid, const Addr &local, const Addr &remote, uint32_t up_pid,
                            std::string up_comm, const Addr &up_local, const Addr &up_remote, uint64_t inode,
                            uint64_t up_inode)
{
    // A placeholder key until the kernel names the socket (no real socket
    // address has the top bit clear... on x86-64 they all have it set).
    uint64_t fake = 0x7f00000000000000ULL | next_id_;
    Conn &c = conn_for(fake, 0, nginx_pid);
    set_dst(c, remote);
    c.src = local;
    c.t_established = 0;
    c.tcp_state = N502_TCP_ESTABLISHED;
    rec(c, EvKind::Established, 0, nginx_pid);
    if (up_pid) {
        c.up_pid = up_pid;
        c.up_comm = up_comm;
        c.t_accept = 0;
        rec(c, EvKind::Accept, 0, up_pid, -1); // -1: open before we started
        pre_up_[pre_key(up_local, up_remote, up_inode)] = fake;
        proc_or_new(up_pid, 0).comm = up_comm;
    }
    pre_nginx_[pre_key(local, remote, inode)] = fake;
}

void State::adopt(const Event &e)
{
    // Only a socket we do not know yet can be an adopted one.
    bool nginx_side = e.sock_role == N502_SOCK_NGINX && !pre_nginx_.empty() && !live_conn(e.sk);
    bool up_side = e.sock_role == N502_SOCK_UPSTREAM && !pre_up_.empty() && !conn_by_up_sk(e.sk);
    bool by_inode = e.type == N502_EV_CLOSE && e.adopted && e.ino; // unix: at its close()
    if ((!nginx_side && !up_side) || (!by_inode && (!e.src.known() || !e.dst.known())))
        return;
    std::string key = by_inode ? fmt::format("unix inode {}", e.ino) : tuple_key(e.src, e.dst);
    if (nginx_side) {
        auto it = pre_nginx_.find(key);
        if (it == pre_nginx_.end())
            return;
        uint64_t fake = it->second;
        auto lit = live_.find(fake);
        if (lit != live_.end()) {
            std::unique_ptr<Conn> c = std::move(lit->second);
            live_.erase(lit);
            c->sk = e.sk;
            live_[e.sk] = std::move(c);
        }
        // The other end, if not adopted yet, now finds it under its real key.
        for (auto &[k, v] : pre_up_)
            if (v == fake)
                v = e.sk;
        pre_nginx_.erase(it);
        return;
    }
    auto it = pre_up_.find(key);
    if (it == pre_up_.end())
        return;
    if (Conn *c = live_conn(it->second)) {
        link_up_sk(c, e.sk);
    }
    pre_up_.erase(it);
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
    std::unique_ptr<Conn> c;
    if (spare_.empty()) {
        c = std::make_unique<Conn>();
        c->timeline.reserve(kTimelineStart);
    } else {
        c = std::move(spare_.back());
        spare_.pop_back();
        std::vector<EvRec> timeline = std::move(c->timeline);
        timeline.clear();
        *c = Conn{};
        c->timeline = std::move(timeline);
    }
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

void State::link_up_sk(Conn *c, uint64_t up_sk)
{
    // A connection re-linked (its Nginx socket reused after a lost close)
    // lets go of its old upstream end: no event of that one may land here.
    if (c->up_sk && c->up_sk != up_sk) {
        auto it = by_up_sk_.find(c->up_sk);
        if (it != by_up_sk_.end() && it->second == c)
            by_up_sk_.erase(it);
    }
    c->up_sk = up_sk;
    by_up_sk_[up_sk] = c;
}

Conn *State::conn_by_up_sk(uint64_t up_sk)
{
    auto it = by_up_sk_.find(up_sk);
    return it == by_up_sk_.end() ? nullptr : it->second;
}

Conn *State::untracked_by_tuple(const Addr &src, const Addr &dst)
{
    if (!src.port || !dst.port)
        return nullptr;
    auto same = [&](const Conn *c) {
        return c->untracked && !c->claimed && c->src.port == src.port && c->src.same_place(src) &&
               c->dst.same_place(dst);
    };
    // Anomalies are rare: a short look back, and at the live ones while
    // they are few (in full tracking there can be thousands).
    size_t looked = 0;
    for (auto it = finished_.rbegin(); it != finished_.rend() && looked < 64; ++it, ++looked)
        if (same(it->get()))
            return it->get();
    if (live_.size() <= 1024)
        for (auto &[sk, c] : live_)
            if (same(c.get()))
                return c.get();
    return nullptr;
}

Conn &State::untracked_conn(const Event &e, bool established)
{
    Conn *c = live_conn(e.sk);
    if (c && !c->untracked) {
        finish(e.sk); // a followed connection's socket, dead unseen: this is a new one
        c = nullptr;
    }
    // The same connection seen from the upstream's end (its holder closing it).
    if (!c) {
        c = untracked_by_tuple(e.src, e.dst);
        if (c)
            c->maybe_foreign = false; // Nginx's end failed too: it is Nginx's
    }
    if (!c) {
        c = &conn_for(e.sk, e.ts, e.owner);
        c->untracked = true;
        c->nginx_comm = e.owner ? e.comm : "";
    } else if (!c->nginx_pid && e.owner) {
        c->nginx_pid = e.owner;
        c->nginx_comm = e.comm;
    }
    if (e.dst.known() && e.dst.port)
        set_dst(*c, e.dst);
    if (e.src.known() && e.src.port)
        c->src = e.src;
    if (established && !c->t_established)
        c->t_established = e.ts;
    return *c;
}

void State::untracked_holder(const Event &e)
{
    // Nginx's end may have been seen already (its FIN or reset).
    if (Conn *c = untracked_by_tuple(e.dst, e.src)) {
        link_up_sk(c, e.sk);
        return;
    }
    // Keyed apart from any kernel socket address (those are aligned).
    uint64_t key = e.sk | 1;
    if (live_conn(key))
        finish(key);
    Conn &c = conn_for(key, e.ts, 0);
    c.untracked = true;
    c.maybe_foreign = !e.exiting;
    c.src = e.dst;
    set_dst(c, e.src);
    c.t_established = e.ts;
    link_up_sk(&c, e.sk);
    finish(key); // Nginx's end is never seen: nothing else would end it
}

void State::set_dst(Conn &c, const Addr &dst)
{
    if (dst.same_place(c.dst)) {
        c.dst = dst; // the same place (a netns learnt, say): the same key
        return;
    }
    if (c.indexed)
        unindex(&c);
    c.dst = dst;
    // Only what an upstream can be (and a log line can name).
    if (c.claimed || (dst.family != AF_INET && dst.family != AF_INET6 && dst.family != AF_UNIX))
        return;
    c.indexed = true;
    if (c.finished)
        fin_by_dst_[c.dst].push_back(&c);
    else
        live_by_dst_[c.dst].push_back(&c);
}

void State::unindex(Conn *c, bool oldest)
{
    c->indexed = false;
    if (c->finished) {
        auto it = fin_by_dst_.find(c->dst);
        if (it == fin_by_dst_.end())
            return;
        auto &dq = it->second;
        // Claims take recent ones (search from the back), trims old ones (front).
        if (oldest) {
            auto pos = std::find(dq.begin(), dq.end(), c);
            if (pos != dq.end())
                dq.erase(pos);
        } else {
            auto rpos = std::find(dq.rbegin(), dq.rend(), c);
            if (rpos != dq.rend())
                dq.erase(std::next(rpos).base());
        }
        if (dq.empty() && fin_by_dst_.size() > kEmptyKeysKept)
            fin_by_dst_.erase(it);
    } else {
        auto it = live_by_dst_.find(c->dst);
        if (it == live_by_dst_.end())
            return;
        auto &v = it->second;
        auto pos = std::find(v.begin(), v.end(), c);
        if (pos != v.end()) {
            *pos = v.back();
            v.pop_back();
        }
        if (v.empty() && live_by_dst_.size() > kEmptyKeysKept)
            live_by_dst_.erase(it);
    }
}

void State::claim(Conn *c)
{
    // A connection to itself stays where its next line (Nginx's read
    // timeout) can find it; claimed again by that line, it leaves.
    if (c->indexed && (c->claimed || !c->t_met_itself))
        unindex(c);
    c->claimed = true;
}

void State::finish(uint64_t sk)
{
    auto it = live_.find(sk);
    if (it == live_.end())
        return;
    Conn *c = it->second.get();
    bool indexed = c->indexed;
    if (indexed)
        unindex(c);
    c->finished = true;
    if (indexed) {
        fin_by_dst_[c->dst].push_back(c);
        c->indexed = true;
    }
    finished_.push_back(std::move(it->second));
    live_.erase(it);
    trim();
}

void State::drop_oldest_finished()
{
    Conn *c = finished_.front().get();
    if (c->up_sk) {
        auto it = by_up_sk_.find(c->up_sk);
        if (it != by_up_sk_.end() && it->second == c)
            by_up_sk_.erase(it);
    }
    if (c->indexed)
        unindex(c, true);
    // Kept for the next connection (with its timeline's memory) rather than
    // freed: under load a connection ends for every one that begins.
    if (spare_.size() < kSpareConns)
        spare_.push_back(std::move(finished_.front()));
    finished_.pop_front();
}

void State::trim()
{
    while (finished_.size() > limits_.max_finished_conns) {
        drop_oldest_finished();
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

void State::expire(uint64_t now)
{
    if (!limits_.window_ns || now < limits_.window_ns)
        return;
    uint64_t horizon = now - limits_.window_ns;
    while (!finished_.empty() && finished_.front()->t_last < horizon) {
        drop_oldest_finished();
        stats_.conns_expired++;
    }
    while (!dead_order_.empty()) {
        auto it = procs_.find(dead_order_.front());
        if (it != procs_.end() && it->second.exit && it->second.exit->ts >= horizon)
            break;
        if (it != procs_.end() && it->second.exit) {
            procs_.erase(it);
            stats_.procs_expired++;
        }
        dead_order_.pop_front();
    }
    for (auto it = listeners_.begin(); it != listeners_.end();) {
        auto &v = it->second;
        for (auto l = v.begin(); l != v.end();) {
            if (l->t_unlisten && *l->t_unlisten < horizon) {
                aged_out_.push_back(l->addr);
                if (aged_out_.size() > 1024)
                    aged_out_.pop_front();
                l = v.erase(l);
                stats_.listeners_expired++;
            } else {
                ++l;
            }
        }
        it = v.empty() ? listeners_.erase(it) : std::next(it);
    }
}

void State::rec(Conn &c, EvKind kind, uint64_t ts, uint32_t pid, int a, int b, int cc, uint64_t n)
{
    c.t_last = std::max(c.t_last, ts);
    if (c.timeline.size() >= Conn::kTimelineMax) {
        c.timeline.erase(c.timeline.begin() + Conn::kTimelineHead);
        c.omitted++;
    }
    EvRec r;
    r.ts = ts;
    r.n = n;
    r.pid = pid;
    r.a = static_cast<int16_t>(a);
    r.b = static_cast<int16_t>(b);
    r.c = static_cast<int16_t>(cc);
    r.kind = kind;
    c.timeline.push_back(r);
}

std::vector<Evidence> Conn::evidence() const
{
    std::vector<Evidence> out;
    out.reserve(timeline.size());
    std::string d = dst.str();
    for (size_t i = 0; i < timeline.size(); i++) {
        const EvRec &r = timeline[i];
        if (omitted && i == kTimelineHead) {
            // Stamped like the record after the gap: it sorts just before it.
            Evidence gap;
            gap.ts = r.ts;
            gap.event = "omitted";
            gap.detail = fmt::format("{} earlier record{} of this connection not kept (a connection keeps its first {} "
                                     "and its latest {})",
                                     omitted, omitted == 1 ? "" : "s", kTimelineHead, kTimelineMax - kTimelineHead);
            out.push_back(std::move(gap));
        }
        Evidence ev;
        ev.ts = r.ts;
        bool up_side = r.kind == EvKind::UpFin || r.kind == EvKind::UpAbort || r.kind == EvKind::UpState ||
                       r.kind == EvKind::UpRstSent || r.kind == EvKind::UpRstReceived || r.kind == EvKind::Accept ||
                       r.kind == EvKind::UpClose;
        // A record made in softirq with no owner known then (adaptive
        // tracking's first failure) is the socket's: its owner, known now
        // (the worker that logged the line, the upstream's holder).
        ev.pid = r.pid ? r.pid : up_side ? up_pid : nginx_pid;
        ev.comm = up_side ? up_comm : nginx_comm;
        switch (r.kind) {
        case EvKind::ConnectOk:
            ev.event = "connect";
            ev.detail = fmt::format("connect() to {} succeeded", d);
            break;
        case EvKind::ConnectInProgress:
            ev.event = "connect";
            ev.detail = fmt::format("connect() to {} returned EINPROGRESS (non-blocking: the outcome comes later)", d);
            break;
        case EvKind::ConnectFailed:
            ev.event = "connect";
            ev.error = r.a;
            ev.detail = fmt::format("connect() to {} failed: {}", d, errno_text(r.a));
            break;
        case EvKind::Established:
            ev.event = "state";
            ev.from = "SYN_SENT";
            ev.to = "ESTABLISHED";
            ev.detail = fmt::format("Nginx's connection {} -> {} established", src.str(), d);
            break;
        case EvKind::FinReceived:
            ev.event = "state";
            ev.from = tcp_state_name(r.a);
            ev.to = "CLOSE_WAIT";
            ev.detail = "Nginx's socket received a FIN: the upstream end closed";
            break;
        case EvKind::ConnectError:
            ev.event = "state";
            ev.from = "SYN_SENT";
            ev.to = "CLOSE";
            ev.error = r.a;
            ev.detail = fmt::format("connect to {} failed: {}", d, errno_text(r.a));
            break;
        case EvKind::NginxClosedFirst:
            ev.event = "state";
            ev.from = "ESTABLISHED";
            ev.to = "FIN_WAIT1";
            ev.detail = fmt::format("Nginx closed the connection first, after receiving {} bytes", r.n);
            break;
        case EvKind::GaveUp:
            ev.event = "state";
            ev.from = "SYN_SENT";
            ev.to = "CLOSE";
            ev.detail = r.a ? fmt::format("Nginx gave up connecting to {}: no answer to its SYN, sent {} times", d,
                                          r.a + 1)
                            : fmt::format("Nginx gave up connecting to {}: no answer to its SYN", d);
            break;
        case EvKind::NginxState:
            ev.event = "state";
            ev.from = tcp_state_name(r.a);
            ev.to = tcp_state_name(r.b);
            if (r.c)
                ev.error = r.c;
            ev.detail = fmt::format("Nginx's socket {} -> {}", ev.from, ev.to);
            break;
        case EvKind::UpFin:
            ev.event = "state";
            ev.from = "ESTABLISHED";
            ev.to = "FIN_WAIT1";
            ev.detail = "the upstream's socket sent a FIN (its end was closed)";
            break;
        case EvKind::UpAbort:
            ev.event = "state";
            ev.from = "ESTABLISHED";
            ev.to = "CLOSE";
            ev.detail = "the upstream's socket was aborted (ESTABLISHED -> CLOSE)";
            break;
        case EvKind::UpState:
            ev.event = "state";
            ev.from = tcp_state_name(r.a);
            ev.to = tcp_state_name(r.b);
            ev.detail = fmt::format("the upstream's socket {} -> {}", ev.from, ev.to);
            break;
        case EvKind::RstReceived:
            ev.event = "rst_received";
            ev.detail = fmt::format("Nginx's socket received a RST from {} in state {}", d, tcp_state_name(r.a));
            break;
        case EvKind::RstSent:
            ev.event = "rst_sent";
            ev.detail = fmt::format("Nginx's socket sent a RST to {}", d);
            break;
        case EvKind::UpRstSent:
            ev.event = "rst_sent";
            ev.detail = "the upstream's socket sent a RST to Nginx";
            break;
        case EvKind::UpRstReceived:
            ev.event = "rst_received";
            ev.detail = "the upstream's socket received a RST from Nginx";
            break;
        case EvKind::SynRetransmit:
            ev.event = "syn_retransmit";
            ev.detail = fmt::format("SYN to {} retransmitted (#{}): no answer yet", d, r.a);
            break;
        case EvKind::Accept:
            ev.event = "accept";
            if (r.a == -1)
                ev.detail = dst.family == AF_UNIX
                                ? fmt::format("held Nginx's connection on {} (open before n502trace started)", d)
                                : fmt::format("held Nginx's connection from {} on {} (open before n502trace started)",
                                              src.str(), d);
            else if (dst.family == AF_UNIX)
                ev.detail = fmt::format("accepted Nginx's connection on {}", d);
            else if (r.a == kTookHeld)
                ev.detail = fmt::format("holds Nginx's connection from {} on {} (found through its open descriptors "
                                        "when the verdict was made)",
                                        src.str(), d);
            else if (r.a == N502_TOOK_CLOSE)
                ev.detail = fmt::format(
                    "held Nginx's connection from {} on {} until its own close() or exit (its owner)", src.str(), d);
            else
                ev.detail = fmt::format("took Nginx's connection from {} on {} (its first read)", src.str(), d);
            break;
        case EvKind::NginxClose:
            ev.event = "close";
            ev.detail = "Nginx closed its end";
            break;
        case EvKind::UpClose:
            ev.event = "close";
            ev.detail = "the upstream process called close() on its end";
            break;
        case EvKind::MetItself:
            ev.event = "state";
            ev.from = "SYN_SENT";
            ev.to = "SYN_RECV";
            ev.detail = to_itself() ? fmt::format("Nginx's connection {} -> {} met itself: its own SYN came back to "
                                                  "it and the kernel completed it as a simultaneous open",
                                                  src.str(), d)
                                    : fmt::format("Nginx's connection {} -> {} received a SYN instead of a SYN-ACK "
                                                  "(a simultaneous open)",
                                                  src.str(), d);
            break;
        }
        out.push_back(std::move(ev));
    }
    return out;
}

void State::holder_found(Conn &c, uint32_t pid, std::string comm, uint64_t ts)
{
    if (c.up_pid || !pid)
        return;
    c.up_pid = pid;
    c.up_comm = comm;
    c.took = static_cast<uint32_t>(kTookHeld);
    Proc &p = proc_or_new(pid, ts);
    if (p.exit) { // it holds a socket now: an earlier process on a reused pid
        p = Proc{};
        p.pid = pid;
        p.first_seen = ts;
    }
    p.role |= N502_PROC_UPSTREAM;
    p.comm = std::move(comm);
    // Seen holding it when the verdict was made (when it took it is not known).
    rec(c, EvKind::Accept, ts, pid, kTookHeld);
}

void State::apply(const Event &e)
{
    stats_.events++;
    if (e.type == N502_EV_CONN)
        replay_story(e);
    else
        apply_event(e);
}

void State::replay_story(const Event &e)
{
    size_t order[kStoryEventsMax];
    size_t n = expand_story(e, story_slots_, order);
    for (size_t i = 0; i < n; i++)
        apply_event(story_slots_[order[i]]);
}

void State::apply_event(const Event &e)
{
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
        if (e.ret == 0) {
            rec(*c, EvKind::ConnectOk, e.ts, e.tgid);
            if (c->dst.family == AF_UNIX)
                c->t_established = e.ts; // unix connects complete in the syscall
        } else if (e.ret == -EINPROGRESS) {
            rec(*c, EvKind::ConnectInProgress, e.ts, e.tgid);
        } else {
            rec(*c, EvKind::ConnectFailed, e.ts, e.tgid, -e.ret);
            c->error = -e.ret;
            if (e.ret == -ECONNREFUSED)
                c->t_refused = e.ts;
        }
        // A connect that failed at once (unix errors, EADDRNOTAVAIL, ...) ends here.
        if (e.ret != 0 && e.ret != -EINPROGRESS && live_conn(e.sk) == c)
            finish(e.sk);
        break;
    }
    case N502_EV_STATE: {
        adopt(e);
        if (e.sock_role == N502_SOCK_LISTENER) {
            if (e.newstate == N502_TCP_CLOSE)
                unlisten(e);
            break;
        }
        if (e.sock_role == N502_SOCK_NGINX) {
            if (Conn *old = live_conn(e.sk); old && !e.untracked && old->untracked && old->t_met_itself)
                finish(e.sk); // a socket followed now: that one is dead, its end unreported (a ring buffer full)
            Conn &c = e.untracked ? untracked_conn(e, e.oldstate != N502_TCP_SYN_SENT)
                                  : conn_for(e.sk, e.ts, e.owner);
            if (e.dst.known() && e.dst.port)
                set_dst(c, e.dst);
            if (e.src.known() && e.src.port)
                c.src = e.src;
            c.tcp_state = e.newstate;
            c.bytes_received = e.bytes_received;
            if (!c.bytes_at_end && (e.newstate == N502_TCP_CLOSE_WAIT || e.newstate == N502_TCP_CLOSE ||
                                    (e.oldstate == N502_TCP_ESTABLISHED && e.newstate == N502_TCP_FIN_WAIT1)))
                c.bytes_at_end = e.bytes_received;
            c.bytes_acked = e.bytes_acked;
            if (e.oldstate == N502_TCP_ESTABLISHED && e.newstate == N502_TCP_FIN_WAIT1)
                c.t_nginx_fin = e.ts;
            if (e.newstate == N502_TCP_ESTABLISHED) {
                c.t_established = e.ts;
                rec(c, EvKind::Established, e.ts, e.owner);
            } else if (e.newstate == N502_TCP_CLOSE_WAIT) {
                c.t_fin_recv = e.ts;
                rec(c, EvKind::FinReceived, e.ts, e.owner, e.oldstate);
            } else if (e.oldstate == N502_TCP_SYN_SENT && e.newstate == N502_TCP_CLOSE && !e.sk_err && !e.segs_out) {
                // Back to CLOSE inside connect() before its SYN was sent: what
                // fails there is choosing the local port (tcp_v4/v6_connect ->
                // inet_hash_connect), which is EADDRNOTAVAIL.
                c.error = EADDRNOTAVAIL;
                rec(c, EvKind::ConnectError, e.ts, e.owner, EADDRNOTAVAIL);
            } else if (e.oldstate == N502_TCP_SYN_SENT && e.newstate == N502_TCP_CLOSE && e.sk_err) {
                c.error = e.sk_err;
                // The kernel's own end to the connect (ETIMEDOUT once its SYN
                // retries ran out): the socket's count of resends, as below.
                c.syn_retransmits = std::max(c.syn_retransmits, static_cast<int>(e.retransmits));
                if (e.sk_err == ECONNREFUSED)
                    c.t_refused = e.ts;
                rec(c, EvKind::ConnectError, e.ts, e.owner, e.sk_err);
            } else if (e.oldstate == N502_TCP_SYN_SENT && e.newstate == N502_TCP_SYN_RECV) {
                rec(c, EvKind::MetItself, e.ts, e.owner);
                // On one host only a socket's own SYN does this: it is
                // established at once (its own SYN-ACK acknowledges it),
                // which the kernel side does not report.
                if (c.to_itself()) {
                    c.t_met_itself = e.ts;
                    if (!c.t_established)
                        c.t_established = e.ts;
                }
            } else if (e.newstate == N502_TCP_SYN_SENT) {
                // the connect event says it
            } else if (e.oldstate == N502_TCP_ESTABLISHED && e.newstate == N502_TCP_FIN_WAIT1) {
                rec(c, EvKind::NginxClosedFirst, e.ts, e.owner, 0, 0, 0, e.bytes_received);
            } else if (e.oldstate == N502_TCP_SYN_SENT && e.newstate == N502_TCP_CLOSE) {
                // The socket's own count of resends: the retransmission
                // tracepoint can miss one that never left the host.
                c.syn_retransmits = std::max(c.syn_retransmits, static_cast<int>(e.retransmits));
                rec(c, EvKind::GaveUp, e.ts, e.owner, c.syn_retransmits);
            } else if (e.sk_err || e.oldstate == N502_TCP_ESTABLISHED) {
                rec(c, EvKind::NginxState, e.ts, e.owner, e.oldstate, e.newstate, e.sk_err);
            }
            c.t_last = std::max(c.t_last, e.ts);
            // Nginx aborting the connection itself (close() with unread data):
            // ESTABLISHED -> CLOSE in its own context, no RST received.
            if (e.oldstate == N502_TCP_ESTABLISHED && e.newstate == N502_TCP_CLOSE && e.tgid == e.owner && !c.t_rst_recv &&
                !c.t_nginx_close)
                c.t_nginx_close = e.ts;
            if (e.newstate == N502_TCP_CLOSE) {
                c.t_closed = e.ts;
                if (!c.error && e.sk_err)
                    c.error = e.sk_err;
                finish(e.sk);
            } else if (e.untracked && c.t_met_itself && e.oldstate == N502_TCP_ESTABLISHED) {
                // Nginx's close of a connection that met itself, seen on the
                // anomaly-only path: the last the kernel side reports of it.
                finish(e.sk);
            }
        } else if (e.sock_role == N502_SOCK_UPSTREAM) {
            Conn *c = conn_by_up_sk(e.sk);
            if (!c)
                break;
            if (e.oldstate == N502_TCP_ESTABLISHED && e.newstate == N502_TCP_FIN_WAIT1) {
                c->t_up_fin = e.ts;
                rec(*c, EvKind::UpFin, e.ts, e.owner);
            } else if (e.newstate == N502_TCP_CLOSE && e.oldstate == N502_TCP_ESTABLISHED) {
                c->t_up_abort = e.ts;
                rec(*c, EvKind::UpAbort, e.ts, e.owner);
            } else if (e.oldstate == N502_TCP_ESTABLISHED) {
                rec(*c, EvKind::UpState, e.ts, e.owner, e.oldstate, e.newstate);
            }
            // The mapping stays after CLOSE: an abortive close sends its RST
            // after the state change. A new accept on this address replaces it.
        }
        break;
    }
    case N502_EV_RESET: {
        adopt(e);
        if (e.sock_role == N502_SOCK_NGINX) {
            Conn *c = e.untracked ? &untracked_conn(e, e.tcp_state != N502_TCP_SYN_SENT) : live_conn(e.sk);
            if (!c)
                break;
            if (e.dir == N502_RST_RECEIVED) {
                c->t_rst_recv = e.ts;
                rec(*c, EvKind::RstReceived, e.ts, e.owner, e.tcp_state);
            } else {
                rec(*c, EvKind::RstSent, e.ts, e.owner);
            }
        } else if (e.sock_role == N502_SOCK_UPSTREAM) {
            Conn *c = conn_by_up_sk(e.sk);
            if (!c)
                break;
            if (e.dir == N502_RST_SENT) {
                c->t_up_rst_sent = e.ts;
                rec(*c, EvKind::UpRstSent, e.ts, e.owner);
            } else {
                rec(*c, EvKind::UpRstReceived, e.ts, e.owner);
            }
        }
        break;
    }
    case N502_EV_RETRANS: {
        if (e.sock_role != N502_SOCK_NGINX)
            break;
        // A connect still in SYN_SENT has emitted nothing else yet.
        Conn *c = e.untracked                        ? &untracked_conn(e, false)
                  : e.tcp_state == N502_TCP_SYN_SENT ? &conn_for(e.sk, e.ts, e.owner)
                                                     : live_conn(e.sk);
        if (!c)
            break;
        if (e.dst.known() && e.dst.port && !c->dst.known())
            set_dst(*c, e.dst);
        if (e.tcp_state == N502_TCP_SYN_SENT) {
            c->syn_retransmits++;
            if (c->syn_retransmits <= 3)
                rec(*c, EvKind::SynRetransmit, e.ts, e.owner, c->syn_retransmits);
        }
        break;
    }
    case N502_EV_ACCEPT: {
        Conn *c = live_conn(e.peer_sk); // the kernel matched it to Nginx's socket (TCP tuple, unix peer)
        // A unix connect completes inside the syscall: the acceptor may be
        // seen before Nginx's connect() returns. Start the connection here.
        if (!c && e.owner && e.peer_sk)
            c = &conn_for(e.peer_sk, e.ts, e.owner);
        // A holder seen by the anomaly-only path from its close (dying,
        // aborting, closing unanswered): Nginx's end is known only as the
        // peer's address.
        if (!c && !e.peer_sk && e.took == N502_TOOK_CLOSE) {
            untracked_holder(e);
            c = conn_by_up_sk(e.sk);
        }
        if (!c)
            break;
        link_up_sk(c, e.sk);
        if (!c->src.known() && e.dst.known())
            c->src = e.dst;
        if (e.took == N502_TOOK_UNKNOWN || !e.tgid)
            break; // linked; its owner comes with its first read or close
        c->up_pid = e.tgid;
        c->up_comm = e.comm;
        c->took = e.took;
        // When the owner was only learnt from its dying close, when it took
        // the connection is not known: it held it before its exit.
        if (e.took != N502_TOOK_CLOSE)
            c->t_accept = e.ts;
        Proc &p = proc_or_new(e.tgid, e.ts);
        // A story replayed after the process's exit was seen is not a new
        // process on a reused pid: its connection predates the exit.
        if (p.exit && !e.exiting && e.ts > p.exit->ts) { // pid reused by a new process
            p = Proc{};
            p.pid = e.tgid;
            p.first_seen = e.ts;
        }
        p.role |= N502_PROC_UPSTREAM;
        p.comm = e.comm;
        rec(*c, EvKind::Accept, e.ts, e.tgid, static_cast<int>(e.took));
        break;
    }
    case N502_EV_CLOSE: {
        adopt(e);
        if (e.sock_role == N502_SOCK_NGINX) {
            Conn *c = live_conn(e.sk);
            if (!c)
                break;
            c->t_nginx_close = e.ts;
            if (!c->failed()) // after a failure, Nginx's close is only the consequence
                rec(*c, EvKind::NginxClose, e.ts, e.tgid);
            if (e.src.family == AF_UNIX)
                finish(e.sk);
        } else if (e.sock_role == N502_SOCK_UPSTREAM) {
            Conn *c = conn_by_up_sk(e.sk);
            if (!c)
                break;
            c->t_up_close = e.ts;
            c->up_close_pid = e.tgid;
            rec(*c, EvKind::UpClose, e.ts, e.tgid);
            if (e.src.family == AF_UNIX)
                by_up_sk_.erase(e.sk);
        } else if (e.sock_role == N502_SOCK_LISTENER) {
            unlisten(e);
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
        remember_listener(std::move(l));
        p.role |= N502_PROC_LISTENER;
        break;
    }
    case N502_EV_SIGNAL: {
        Proc &p = proc_or_new(e.target, e.ts);
        if (p.comm.empty())
            p.comm = e.target_comm;
        SignalRec s{e.ts, e.sig, e.code, e.result, e.tgid, e.comm};
        p.signals.push_back(std::move(s));
        if (p.signals.size() > 8) {
            // A process that signals itself often (an interval timer, a
            // profiler's SIGPROF) must not push out what another process
            // sent it (a supervisor's SIGTERM): its oldest such signal goes
            // first, then the oldest of any.
            auto self = std::find_if(p.signals.begin(), p.signals.end() - 1,
                                     [&](const SignalRec &r) { return r.sender == e.target; });
            p.signals.erase(self != p.signals.end() - 1 ? self : p.signals.begin());
        }
        break;
    }
    case N502_EV_EXIT: {
        Proc &p = proc_or_new(e.tgid, e.ts);
        p.comm = e.comm;
        p.exit = ExitRec{e.ts, e.exit_code};
        if (p.exit->signaled())
            last_signaled_exit_ = std::max(last_signaled_exit_, e.ts);
        if (p.role & N502_PROC_NGINX)
            nginx_exits_++;
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
        if (e.role & N502_PROC_NGINX)
            nginx_forks_++;
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

std::vector<Conn *> State::conns_to(uint32_t nginx_pid, const Addr &upstream, uint64_t oldest,
                                    size_t max_finished)
{
    std::vector<Conn *> out;
    size_t finished = 0;
    visit_conns(nginx_pid, upstream, oldest, [&](Conn *c) {
        if (c->finished && ++finished > max_finished)
            return true;
        out.push_back(c);
        return false;
    });
    return out;
}

std::vector<Addr> State::destinations() const
{
    std::vector<Addr> out;
    for (const auto &[a, v] : live_by_dst_)
        if (!v.empty())
            out.push_back(a);
    for (const auto &[a, d] : fin_by_dst_) {
        auto live = live_by_dst_.find(a);
        if (!d.empty() && (live == live_by_dst_.end() || live->second.empty()))
            out.push_back(a);
    }
    return out;
}

std::vector<const Listener *> State::listeners_on(const Addr &a) const
{
    std::vector<const Listener *> out;
    Addr keys[3] = {a};
    size_t nkeys = 1;
    if (a.family == AF_INET || a.family == AF_INET6) {
        keys[nkeys++] = Addr::ipv4(0, a.port); // 0.0.0.0:port
        Addr any6;
        any6.family = AF_INET6;
        any6.port = a.port;
        keys[nkeys++] = any6; // [::]:port
    }
    for (size_t k = 0; k < nkeys; k++) {
        auto it = listeners_.find(keys[k]);
        if (it == listeners_.end())
            continue;
        for (const auto &l : it->second)
            // A loopback address is a different place in every network
            // namespace: only that namespace's listeners count.
            if (!a.loopback() || !a.netns || !l.addr.netns || l.addr.netns == a.netns)
                out.push_back(&l);
    }
    std::stable_sort(out.begin(), out.end(), [](const Listener *x, const Listener *y) {
        uint64_t tx = x->t_unlisten.value_or(UINT64_MAX), ty = y->t_unlisten.value_or(UINT64_MAX);
        return tx < ty;
    });
    return out;
}

bool State::listener_aged_out(const Addr &a) const
{
    for (const Addr &g : aged_out_) {
        bool same_port = g.port == a.port && g.family == a.family;
        bool wildcard = std::all_of(g.ip.begin(), g.ip.end(), [](uint8_t b) { return b == 0; });
        bool here = !a.loopback() || !a.netns || !g.netns || g.netns == a.netns;
        if ((g.same_place(a) || (same_port && wildcard)) && here)
            return true;
    }
    return false;
}

std::map<std::string, int> State::nginx_sockets_to(const Addr &upstream) const
{
    std::map<std::string, int> out;
    for (const auto &[sk, c] : live_)
        if (c->tcp_state && c->dst.same_place(upstream))
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

size_t State::children_exited(uint32_t parent, uint64_t after, uint64_t until) const
{
    size_t n = 0;
    for (const auto &[pid, p] : procs_)
        n += p.parent == parent && p.exit && p.exit->ts > after && p.exit->ts <= until;
    return n;
}

} // namespace n502
