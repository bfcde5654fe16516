#include "correlator.hpp"

#include "keyedhash.hpp"

#include <cassert>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <sys/socket.h>
#include <fmt/format.h>

namespace n502 {

static bool is_connect_line(const LogLine &l)
{
    return l.kind == LogKind::ConnectRefused || l.kind == LogKind::ConnectFailed;
}

uint64_t Correlator::died_holding(const Conn &c) const
{
    // (by a signal: killed, crashed, OOM-killed. A worker that exits by
    // itself, recycled after max_requests, does so between requests, its
    // idle keep-alive connections with it: no failure of a request.)
    const Proc *p = c.up_pid ? state_.proc(c.up_pid) : nullptr;
    if (!p || !p->exit || !p->exit->signaled())
        return 0;
    const uint64_t dead = p->exit->ts;
    if (c.t_accept && dead < *c.t_accept)
        return 0; // (another process of that pid)
    // (a dying task's files close after its exit is seen: an end before it
    // was the connection's own, by whichever side)
    for (const auto &t : {c.t_up_close, c.t_up_fin, c.t_up_abort, c.t_fin_recv, c.t_rst_recv, c.t_nginx_fin,
                          c.t_nginx_close, c.t_closed})
        if (t && *t < dead)
            return 0;
    return dead;
}

bool Correlator::broken(const Conn &c) const
{
    return c.error || c.t_refused || c.t_rst_recv || c.t_met_itself || died_holding(c) ||
           (c.t_fin_recv && c.bytes_at_end && *c.bytes_at_end == 0) ||
           (c.untracked && (c.t_up_fin || c.t_up_abort) && !c.maybe_foreign);
}

Conn *Correlator::find_conn(const LogLine &line)
{
    std::vector<Addr> peers;
    if (!line.upstream_peer.empty()) {
        // A storm names one upstream line after line: parsed once.
        if (line.upstream_peer != peer_text_) {
            peer_text_.clear(); // the pair stays consistent if a copy below throws
            peer_addr_ = Addr::parse(line.upstream_peer);
            peer_text_ = line.upstream_peer;
        }
        if (!peer_addr_)
            return nullptr; // not an address (a name Nginx could not resolve): no connection went there
        peers.push_back(*peer_addr_);
    } else if (line.upstream_cut) {
        // Nginx cut the line before its upstream field: any upstream, but
        // only a connection that failed (below) can stand in for the field.
        peers = state_.destinations();
    } else {
        return nullptr;
    }
    int64_t oldest_real = line.wall_sec * 1'000'000'000LL - opt_.max_skew_ns;
    int64_t oldest_boot = oldest_real - tb_.offset_ns();
    bool connecting = line.phase.find("connecting") != std::string::npos;
    bool header_phase = line.phase.find("response header") != std::string::npos;
    auto ended = [](const Conn *c) { return c->failure_ts() ? c->failure_ts() : c->t_last; };
    // Nginx logs failures in the order it meets them: the earliest unclaimed
    // failure is the line's (first in, first out). Connections that ended
    // after a response had begun are not "before the response header"
    // failures; they are kept as a fallback (a reused keep-alive connection
    // has bytes from earlier requests).
    Conn *primary = nullptr, *fallback = nullptr, *newest = nullptr, *itself = nullptr, *dying = nullptr,
         *gave_up = nullptr;
    uint64_t dying_at = 0;
    // Nginx ended the connection first (its FIN or close before any end of
    // the upstream's): what a timeout is, right after its line; a healthy
    // connection's upstream ends first, or it stays open in the pool.
    auto nginx_ended_first = [](const Conn *c) -> uint64_t {
        uint64_t nginx_end = std::min(c->t_nginx_fin.value_or(UINT64_MAX), c->t_nginx_close.value_or(UINT64_MAX));
        uint64_t upstream_end = UINT64_MAX;
        for (const auto &t : {c->t_fin_recv, c->t_rst_recv, c->t_up_close, c->t_up_fin, c->t_up_abort})
            if (t)
                upstream_end = std::min(upstream_end, *t);
        return nginx_end != UINT64_MAX && nginx_end < upstream_end ? nginx_end : 0;
    };
    uint64_t gave_up_at = 0;
    // Where a primary candidate is the line's whatever died (the response
    // header phase on TCP: see dying below), the first one found ends the
    // look; elsewhere every connection is looked at, for a dying one.
    const bool tcp_header = header_phase && std::none_of(peers.begin(), peers.end(), [](const Addr &a) {
                                return a.family == AF_UNIX;
                            });
    // (no process died of a signal in the window: no dying candidate, and the
    // first primary one ends the look as on TCP in the header phase)
    const uint64_t line_boot = static_cast<uint64_t>(std::max<int64_t>(0, line.wall_sec * 1'000'000'000LL - tb_.offset_ns()));
    const bool deaths = state_.last_signaled_exit() >= static_cast<uint64_t>(std::max<int64_t>(0, oldest_boot));
    const bool stop_early = tcp_header || !deaths;
    auto earlier = [&](Conn *best, Conn *c) { return !best || ended(c) < ended(best); };
    auto later = [&](Conn *best, Conn *c) { return !best || c->t_last > best->t_last; };
    // Finished connections come in the order they finished: once one is a
    // primary candidate, no later finished one can be earlier.
    auto visit = [&](Conn *c) {
        if (c->claimed) {
            // A connection to itself goes on failing after its first line:
            // Nginx reads its own request back until it times out, and closes
            // it then (which brings it into the window). The last resort for
            // such a line: another connection's is its own.
            if (c->t_met_itself && line.kind == LogKind::Timeout && !connecting && later(itself, c))
                itself = c;
            return false;
        }
        // An upstream that died holding its connection (killed, crashed,
        // OOM-killed, exited with it open): the first such is the line's
        // before any other in the window, whose ends may be healthy ones
        // (an upstream answering and closing first, HTTP/1.0's way; a
        // php-fpm child's close()), which only the response header phase
        // on TCP tells apart (by the bytes received).
        if (deaths && !is_connect_line(line) && line.kind != LogKind::Timeout)
            if (uint64_t dead = died_holding(*c);
                dead && dead <= line_boot + 2'000'000'000ULL && (!dying || dead < dying_at)) {
                dying = c;
                dying_at = dead;
            }
        if (is_connect_line(line)) {
            if (c->error && !c->t_established && earlier(primary, c)) {
                primary = c;
                return c->finished;
            }
        } else if (line.kind == LogKind::Timeout) {
            // The one that timed out: for connects the oldest still trying;
            // for reads the most recently active established one.
            if (connecting && !c->t_established && earlier(primary, c))
                primary = c;
            if (!connecting && c->t_established && later(newest, c))
                newest = c;
            // ... unless Nginx gave one up first, the latest (it closes the
            // one that timed out right after writing the line).
            // (bounded: the close right after its line, not a 499's or a
            // healthy response's Nginx closed long after or before)
            if (uint64_t at = !connecting && c->t_established ? nginx_ended_first(c) : 0;
                at > gave_up_at && at + 1'000'000'000ULL >= line_boot && at <= line_boot + 2'000'000'000ULL &&
                (!c->bytes_at_end || line.phase.find("response header") == std::string::npos ||
                 *c->bytes_at_end == 0)) {
                gave_up = c;
                gave_up_at = at;
            }
            return false;
        } else if (c->t_established) {
            bool failed = c->failed();
            bool got_data = c->bytes_at_end && *c->bytes_at_end > 0;
            // "Prematurely closed" and "reset by peer" mean the upstream ended
            // first: a connection Nginx closed itself (a client gone, a
            // response read) is not one of those.
            uint64_t upstream_end = std::min(c->t_fin_recv.value_or(UINT64_MAX), c->t_rst_recv.value_or(UINT64_MAX));
            uint64_t nginx_end = std::min(c->t_nginx_fin.value_or(UINT64_MAX), c->t_nginx_close.value_or(UINT64_MAX));
            bool nginx_first = (line.kind == LogKind::PrematureClose || line.kind == LogKind::Reset) &&
                               nginx_end < upstream_end;
            if (failed && !nginx_first && !(header_phase && got_data) && earlier(primary, c)) {
                primary = c;
                return c->finished && stop_early;
            }
            if (failed && later(fallback, c))
                fallback = c;
            else if (!failed && later(newest, c))
                newest = c;
        }
        return false;
    };
    for (const Addr &peer : peers)
        state_.visit_conns(line.pid, peer, oldest_boot > 0 ? oldest_boot : 0, visit);
    if (dying && (!primary || !tcp_header))
        return dying;
    if (primary)
        return primary;
    if (line.upstream_peer.empty())
        return nullptr; // a live or healthy connection could be any upstream's
    if (gave_up)
        return gave_up;
    if (fallback)
        return fallback;
    return newest ? newest : itself;
}

void Correlator::group_attempts(const LogLine &line, Verdict &v)
{
    Attempts &a = attempts_[AttemptsKey{line.pid, line.conn}];
    // A retry goes to another server of the group; the same server again
    // means a new request on the same client connection (keep-alive).
    bool new_peer = std::find(a.peers.begin(), a.peers.end(), line.upstream_peer) == a.peers.end();
    bool same = a.count > 0 && line.conn != 0 && a.request == line.request && new_peer &&
                line.kind != LogKind::NoLiveUpstreams && v.ts_real_ns - a.last_real_ns < kRetryWindowNs;
    if (!same) {
        a.request = line.request;
        a.first_sec = line.wall_sec;
        a.count = 0;
        a.peers.clear();
    }
    a.peers.push_back(line.upstream_peer);
    a.count++;
    a.last_real_ns = v.ts_real_ns;
    v.attempt = a.count;
    if (v.rendered)
        v.request_key = fmt::format("{}#{}@{}", line.pid, line.conn, a.first_sec);
    if (attempts_.size() > attempts_sweep_at_)
        sweep_attempts(v.ts_real_ns);
}

void Correlator::sweep_attempts(int64_t now_real_ns)
{
    for (auto it = attempts_.begin(); it != attempts_.end();)
        it = now_real_ns - it->second.last_real_ns > kRetryWindowNs ? attempts_.erase(it) : std::next(it);
    if (attempts_.size() > opt_.attempts_max) {
        // All recent: keep the newer half.
        std::vector<int64_t> ts;
        ts.reserve(attempts_.size());
        for (const auto &[k, a] : attempts_)
            ts.push_back(a.last_real_ns);
        auto mid = ts.begin() + static_cast<std::ptrdiff_t>(ts.size() / 2);
        std::nth_element(ts.begin(), mid, ts.end());
        int64_t cut = *mid;
        for (auto it = attempts_.begin(); it != attempts_.end();)
            it = it->second.last_real_ns < cut ? attempts_.erase(it) : std::next(it);
        // Verdicts of one pass of the event loop share a time: the cut may
        // be where most of them are.
        for (auto it = attempts_.begin(); it != attempts_.end() && attempts_.size() > opt_.attempts_max;)
            it = it->second.last_real_ns == cut ? attempts_.erase(it) : std::next(it);
    }
    attempts_sweep_at_ = std::max(std::min(kAttemptsSweep, opt_.attempts_max), attempts_.size() * 2);
}

std::optional<Verdict> Correlator::explain(const LogLine &line, bool final)
{
    // "no live upstreams" is about Nginx's own peer state, a name not
    // resolved about its resolver: no connection was made.
    const bool connectionless = line.kind == LogKind::NoLiveUpstreams || line.kind == LogKind::ResolveFailed;
    Conn *conn = connectionless ? nullptr : find_conn(line);
    if (connectionless)
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

    if (!line.request_cut && !line.upstream_cut)
        return decide(line, conn);
    // The line lost its upstream field: the connection matched to it names
    // the upstream, so the rules see the line as Nginx meant to write it.
    LogLine whole = line;
    if (line.upstream_cut && conn && conn->dst.known())
        whole.upstream_peer = conn->dst.str();
    Verdict v = decide(whole, conn);
    if (v.rendered)
        v.notes.push_back(fmt::format(
            "Nginx cut its error-log line at 2047 bytes{}{}",
            line.request_cut ? ", in or just after the request line: the request shown may be only its beginning" : "",
            !line.upstream_cut             ? ""
            : whole.upstream_peer.empty() ? "; its upstream field was cut off, and no failed connection stood in for it"
                                          : "; its upstream field was cut off: the upstream is the one of the failed "
                                            "connection matched to it"));
    return v;
}

void Correlator::find_holder(const LogLine &line, Conn &conn, int64_t now_real_ns)
{
    // A TCP upstream is named by its own close or exit; one that still holds
    // the connection (a timeout: it took the request and sent nothing) is
    // named by whoever holds its socket now. Its end is in Nginx's network
    // namespace (loopback) or in a listener's (a veth peer).
    // Only while the connection can still be whole: once Nginx received a
    // FIN or RST the upstream's end may be gone and its 4-tuple reused.
    if (!host_ || !conn.t_established || conn.t_up_close || conn.t_up_fin || conn.t_up_abort || conn.t_fin_recv ||
        conn.t_rst_recv || (conn.dst.family != AF_INET && conn.dst.family != AF_INET6) ||
        conn.src.family != conn.dst.family || conn.to_itself())
        return; // (to itself: Nginx holds both ends)
    std::vector<uint32_t> net_pids{line.pid};
    auto listeners = state_.listeners_on(conn.dst); // oldest first
    for (auto it = listeners.rbegin(); it != listeners.rend() && net_pids.size() < 3; ++it) {
        const Listener *l = *it;
        const Proc *p = l->pid ? state_.proc(l->pid) : nullptr;
        if (l->t_unlisten || (p && p->exit) ||
            std::find(net_pids.begin(), net_pids.end(), l->pid) != net_pids.end() || !l->pid)
            continue;
        net_pids.push_back(l->pid);
    }
    for (uint32_t ns_pid : net_pids) {
        auto h = host_->holder(conn.dst, conn.src, ns_pid);
        if (!h || !h->pid)
            continue;
        // Stamped with the verdict's time: that is when it was seen holding it.
        int64_t now_boot = now_real_ns - tb_.offset_ns();
        state_.holder_found(conn, h->pid, h->comm, now_boot > 0 ? static_cast<uint64_t>(now_boot) : conn.t_last);
        if (Proc *p = state_.proc(h->pid); p && opt_.on_holder)
            opt_.on_holder(*p);
        return;
    }
}

Verdict Correlator::decide(const LogLine &line, Conn *conn)
{
    Verdict v;
    v.ts_real_ns = opt_.now_real ? opt_.now_real() : real_now_ns();
    v.status = line.status;
    v.nginx_pid = line.pid;
    v.nginx_conn = line.conn;
    v.upstream = line.upstream_peer;

    const Proc *up = nullptr;
    if (conn) {
        state_.claim(conn);
        if (conn->untracked && !conn->nginx_pid) {
            // Whose it was is what the line says: the worker's namespace
            // and credentials are what the rules look up.
            conn->nginx_pid = line.pid;
            const Proc *w = state_.proc(line.pid);
            conn->nginx_comm = w && !w->comm.empty() ? w->comm : "nginx";
        }
        if (!conn->up_pid)
            find_holder(line, *conn, v.ts_real_ns);
        if (conn->up_pid)
            up = state_.proc(conn->up_pid);
    }
    auto worker = tallies_.find(line.pid);
    RuleInput in{line, conn,   up, state_, tb_, host_, worker == tallies_.end() ? nullptr : &worker->second,
                 opt_.admit ? &opt_.admit : nullptr, opt_.recheck_listener};
    for (const Rule &r : rules())
        if (r.apply(in, v))
            break;
    if (v.rendered) {
        v.request = line.request;
        v.client = line.client;
        v.server = line.server;
        v.host = line.host;
        v.nginx_message = line.message;
        v.log_only_cause = log_only_cause(line);
    }
    if (line.mid_response)
        v.client_got = line.http09 ? "http09" : "cut_short";
    if (line.mid_response && v.rendered)
        v.notes.push_back(line.http09
                              ? "Nginx sent no 502 for this line: it passed what the upstream sent on to the client "
                                "as a headerless HTTP/0.9 response (status 009 in the access log)"
                              : "Nginx sent no 502/504 for this line: its response to the client had begun, and the "
                                "client got it cut short");
    if (conn && conn->untracked && v.rendered)
        v.notes.push_back("n502trace saw this connection only from its failure on (adaptive tracking, the "
                          "default, was watching failures only, or the connection is older than the switch to "
                          "full tracking): what came before the failure was not recorded (--tracking full "
                          "records it)");
    else if (line.lean && v.rendered && v.cause == "unknown")
        v.notes.push_back("n502trace was watching only for failures the kernel can tell from a normal close "
                          "(adaptive tracking, the default) when Nginx logged this, and saw none on this "
                          "connection: an upstream that timed out or answered something before it failed (an "
                          "invalid response, a keep-alive connection closed under Nginx) is explained from its "
                          "next occurrence on, now that every connection is followed whole (--tracking full: from "
                          "the first)");
    group_attempts(line, v);
    tally(v, conn);
    if (!opt_.remember_when_taken)
        remember_request(line);
    // Mostly in order already (a connection's timeline is): stable_sort
    // allocates a buffer even then.
    auto by_time = [](const Evidence &a, const Evidence &b) { return a.ts < b.ts; };
    if (!std::is_sorted(v.evidence.begin(), v.evidence.end(), by_time))
        std::stable_sort(v.evidence.begin(), v.evidence.end(), by_time);
    return v;
}

} // namespace n502

namespace n502 {

namespace {

uint64_t request_hash(std::string_view client, std::string_view request)
{
    return keyed_hash(client, request);
}

} // namespace

void Correlator::tally(const Verdict &v, const Conn *conn)
{
    if (v.cause == "no_live_upstreams")
        return;
    if (tallies_.size() > 64 && !tallies_.count(v.nginx_pid)) // workers gone (reloads)
        for (auto it = tallies_.begin(); it != tallies_.end();) {
            bool live = false;
            for (const FailureTally &t : it->second)
                live = live || v.ts_real_ns - t.last_real_ns <= kTallyIdleNs;
            it = live ? std::next(it) : tallies_.erase(it);
        }
    auto &list = tallies_[v.nginx_pid];
    auto t = std::find_if(list.begin(), list.end(),
                          [&](const FailureTally &x) { return x.upstream == v.upstream && x.cause == v.cause; });
    if (t == list.end()) {
        if (list.size() < kTalliesPerWorker) {
            t = list.insert(list.end(), FailureTally{});
        } else { // the one idle longest makes room
            t = std::min_element(list.begin(), list.end(), [](const FailureTally &a, const FailureTally &b) {
                return a.last_real_ns < b.last_real_ns;
            });
            *t = FailureTally{};
        }
        t->upstream = v.upstream;
        t->cause = v.cause;
    }
    if (t->count == 0 || v.ts_real_ns - t->last_real_ns > kTallyIdleNs) {
        t->count = 0;
        t->first_real_ns = v.ts_real_ns;
        t->explanation.clear();
    }
    t->count++;
    t->last_real_ns = v.ts_real_ns;
    t->last_boot_ns = conn ? conn->failure_ts() : 0;
    if (v.rendered)
        t->explanation = v.explanation;
}

void Correlator::remember_request(const LogLine &line)
{
    if (line.level == "access")
        return; // an access-only verdict covers nothing: the next 502 of that request is another
    recent_.add(request_hash(line.client, line.request), line.wall_sec);
    // A line cut after its request, in the upstream field, may have been cut
    // inside the request instead: a request line can itself hold
    // `", upstream: "`. It covers the access line that begins with it too.
    if (line.request_cut || (line.upstream_cut && !line.request.empty()))
        remember_cut(line.client, line.request.size(), line.wall_sec);
}

void Correlator::remember_cut(std::string_view client, size_t len, int64_t sec)
{
    uint64_t self = keyed_hash(client);
    CutLengths &c = cut_lengths_[self];
    auto end = c.at.begin() + c.n;
    auto it = std::find_if(c.at.begin(), end, [&](const CutLength &x) { return x.len == len; });
    if (it != end)
        it->sec = std::max(it->sec, sec);
    else if (c.n < c.at.size())
        c.at[c.n++] = {len, sec};
    else // the one seen longest ago makes room
        *std::min_element(c.at.begin(), end, [](const CutLength &x, const CutLength &y) { return x.sec < y.sec; }) =
            CutLength{len, sec};
    c.newest = std::max(c.newest, sec);
    if (cut_lengths_.size() <= kCutClients)
        return;
    // Over the bound: the clients seen most recently keep their lengths (half
    // the bound, so that this runs once per kCutClients / 2 new clients).
    std::vector<int64_t> newest;
    newest.reserve(cut_lengths_.size());
    for (const auto &[k, v] : cut_lengths_)
        newest.push_back(v.newest);
    auto mid = newest.end() - static_cast<std::ptrdiff_t>(kCutClients / 2);
    std::nth_element(newest.begin(), mid, newest.end());
    int64_t keep_from = *mid;
    for (auto i = cut_lengths_.begin(); i != cut_lengths_.end();)
        i = i->second.newest < keep_from && i->first != self ? cut_lengths_.erase(i) : std::next(i);
    // Ties at keep_from: any of them may go.
    for (auto i = cut_lengths_.begin(); i != cut_lengths_.end() && cut_lengths_.size() > kCutClients / 2;)
        i = i->second.newest == keep_from && i->first != self ? cut_lengths_.erase(i) : std::next(i);
}

size_t RecentRequests::probe(const Gen &g, uint64_t hash)
{
    size_t mask = g.slots.size() - 1;
    size_t i = hash & mask;
    while (g.slots[i].hash != hash && g.slots[i].hash != 0) // never full: an empty slot ends the probe
        i = (i + 1) & mask;
    return i;
}

void RecentRequests::grow(Gen &g)
{
    std::vector<Slot> old = std::move(g.slots);
    g.slots.assign(old.empty() ? 1024 : old.size() * 2, Slot{});
    for (const Slot &o : old)
        if (o.hash != 0)
            g.slots[probe(g, o.hash)] = o;
}

void RecentRequests::add(uint64_t hash, int64_t sec)
{
    hash = hash ? hash : 1;
    Gen *g = &gen_[cur_];
    // (A second far from the base, a clock set years away, starts a
    // generation too: seconds are kept as 32-bit offsets.)
    if (g->lines > 0 && (g->lines >= kGenLines || sec - g->base > kGenSec || sec - g->base < -(1LL << 30))) {
        cur_ ^= 1;
        g = &gen_[cur_];
        *g = Gen{};
    }
    if (g->lines++ == 0)
        g->base = sec;
    if ((g->used + 1) * 2 > g->slots.size())
        grow(*g);
    auto rel = static_cast<int32_t>(sec - g->base); // within [-2^30, kGenSec]: checked above
    Slot *s = &g->slots[probe(*g, hash)];
    if (s->hash == 0) {
        *s = Slot{hash, rel, 0};
        g->used++;
        return;
    }
    // The newest second and the 16 before it (lines of one request come
    // out of order across workers by a second or two).
    if (rel > s->newest + 16) {
        s->before = 0;
        s->newest = rel;
    } else if (rel > s->newest) {
        auto d = static_cast<unsigned>(rel - s->newest);
        s->before = static_cast<uint16_t>((static_cast<uint32_t>(s->before) << d) | (1u << (d - 1)));
        s->newest = rel;
    } else if (rel < s->newest && s->newest - rel <= 16) {
        s->before |= static_cast<uint16_t>(1u << (s->newest - rel - 1));
    }
}

bool RecentRequests::seen_near(uint64_t hash, int64_t sec, int64_t within) const
{
    hash = hash ? hash : 1;
    for (const Gen &g : gen_) {
        if (g.slots.empty())
            continue;
        const Slot *s = &g.slots[probe(g, hash)];
        if (s->hash == 0)
            continue;
        auto near = [&](int64_t rel) { return std::abs(g.base + rel - sec) <= within; };
        if (near(s->newest))
            return true;
        for (int i = 0; i < 16; i++)
            if (((s->before >> i) & 1) && near(s->newest - 1 - i))
                return true;
    }
    return false;
}

bool Correlator::covered(const AccessLine &a) const
{
    if (recent_.seen_near(request_hash(a.client, a.request), a.wall_sec, kCoverSec))
        return true;
    // The error-log line may have kept only the request's beginning.
    auto it = cut_lengths_.find(keyed_hash(a.client));
    if (it == cut_lengths_.end())
        return false;
    std::string_view request = a.request;
    for (size_t i = 0; i < it->second.n; i++) {
        const CutLength &c = it->second.at[i];
        if (c.len <= request.size() && c.sec >= a.wall_sec - kCoverSec &&
            recent_.seen_near(request_hash(a.client, request.substr(0, c.len)), a.wall_sec, kCoverSec))
            return true;
    }
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
        if (c->claimed || !broken(*c)) // (a healthy one's end is no failure: the status may be the upstream's)
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
    // Without a connection only rule `unknown` holds: the cause the rate
    // limit was asked about is the one shown.
    assert(best || v.cause == "unknown");
    if (!v.rendered)
        return v;
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
