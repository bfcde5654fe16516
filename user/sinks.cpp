#include "sinks.hpp"

#include "decoder.hpp"

#include <cerrno>
#include <iterator>
#include <stdio_ext.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

namespace n502 {

namespace {
int g_output_errno = 0;

// Flushes f; the first failure is kept in *failed (and, for stdout, for
// output_error()).
void flush_out(FILE *f, int *failed)
{
    if ((fflush(f) == EOF || ferror(f)) && !*failed) {
        *failed = errno ? errno : EIO;
        if (f == stdout && !g_output_errno)
            g_output_errno = *failed;
        __fpurge(f); // what could not be written is dropped: nothing retries it
    }
}
} // namespace

int output_error()
{
    return g_output_errno;
}

// Length of the well-formed UTF-8 sequence at s[i] (strict: no overlong
// forms, no surrogates, nothing past U+10FFFF), or 0.
static size_t utf8_len(std::string_view s, size_t i)
{
    auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
    unsigned char c = b(0);
    size_t n = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (n == 0 || i + n > s.size())
        return 0;
    unsigned char lo = 0x80, hi = 0xBF; // the second byte's range
    if (c == 0xE0)
        lo = 0xA0;
    else if (c == 0xED)
        hi = 0x9F;
    else if (c == 0xF0)
        lo = 0x90;
    else if (c == 0xF4)
        hi = 0x8F;
    if (b(1) < lo || b(1) > hi)
        return 0;
    for (size_t k = 2; k < n; k++)
        if ((b(k) & 0xC0) != 0x80)
            return 0;
    return n;
}

std::string json_escape(const std::string &s)
{
    std::string out;
    out.reserve(s.size() + 2);
    out += '"';
    for (unsigned char c : s) {
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
            if (c < 0x20 || c == 0x7f)
                out += fmt::format("\\u{:04x}", c);
            else
                out += static_cast<char>(c);
        }
    }
    out += '"';
    // Invalid UTF-8 from a log line must not make the line unparsable:
    // replace bytes that do not form well-formed sequences.
    std::string clean;
    clean.reserve(out.size());
    for (size_t i = 0; i < out.size();) {
        size_t n = static_cast<unsigned char>(out[i]) < 0x80 ? 1 : utf8_len(out, i);
        if (n) {
            clean.append(out, i, n);
            i += n;
        } else {
            clean += "\\ufffd";
            i += 1;
        }
    }
    return clean;
}

static std::string jstr(const std::string &s) { return json_escape(s); }

std::string visible_text(std::string_view s)
{
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        unsigned char c = s[i];
        if (c >= 0x20 && c < 0x7f) {
            out += static_cast<char>(c);
            i++;
            continue;
        }
        size_t n = c >= 0x80 ? utf8_len(s, i) : 0;
        // U+0080..U+009F (C2 80..9F) are control characters too: 0x9B is CSI.
        if (n && !(c == 0xC2 && static_cast<unsigned char>(s[i + 1]) < 0xA0)) {
            out.append(s, i, n);
            i += n;
        } else {
            out += fmt::format("\\x{:02X}", c);
            i++;
        }
    }
    return out;
}

static std::string vis(const std::string &s) { return visible_text(s); }

template <typename T> static std::string jopt(const std::optional<T> &v)
{
    return v ? fmt::format("{}", *v) : std::string("null");
}

static std::string jarr_u32(const std::vector<uint32_t> &v)
{
    std::string s = "[";
    for (size_t i = 0; i < v.size(); i++) {
        if (i)
            s += ',';
        s += std::to_string(v[i]);
    }
    return s + "]";
}

static std::string jarr_str(const std::vector<std::string> &v)
{
    std::string s = "[";
    for (size_t i = 0; i < v.size(); i++) {
        if (i)
            s += ',';
        s += jstr(v[i]);
    }
    return s + "]";
}

static std::string jcontainer(const std::optional<ContainerInfo> &c)
{
    if (!c)
        return "null";
    return fmt::format("{{\"runtime\":{},\"id\":{},\"name\":{}}}", jstr(c->runtime), jstr(c->id),
                       c->name.empty() ? std::string("null") : jstr(c->name));
}

static std::string jstr_or_null(const std::string &s) { return s.empty() ? std::string("null") : jstr(s); }

static std::string ev_ts(const Timebase &tb, uint64_t ts)
{
    return ts ? jstr(rfc3339_utc(tb.to_real_ns(ts))) : std::string("null");
}

std::string verdict_json(const Verdict &v, const Timebase &tb)
{
    std::string ev = "[";
    for (size_t i = 0; i < v.evidence.size(); i++) {
        const Evidence &e = v.evidence[i];
        ev += fmt::format("{}{{\"ts\":{},\"event\":{},\"pid\":{},\"comm\":{},\"detail\":{}", i ? "," : "",
                          ev_ts(tb, e.ts), jstr(e.event), e.pid, jstr(e.comm), jstr(e.detail));
        if (e.target_pid)
            ev += fmt::format(",\"target_pid\":{}", *e.target_pid);
        if (e.sig)
            ev += fmt::format(",\"sig\":{},\"signal\":{}", *e.sig, jstr(signal_name(*e.sig)));
        if (e.event == "exit")
            ev += fmt::format(",\"exit_code\":{},\"exit_signal\":{}", jopt(e.exit_code), jopt(e.exit_signal));
        if (e.error)
            ev += fmt::format(",\"error\":{}", *e.error);
        if (!e.from.empty())
            ev += fmt::format(",\"from\":{},\"to\":{}", jstr(e.from), jstr(e.to));
        if (!e.cause.empty())
            ev += fmt::format(",\"cause\":{},\"upstream\":{}", jstr(e.cause), jstr(e.upstream));
        if (e.count)
            ev += fmt::format(",\"count\":{}", *e.count);
        ev += "}";
    }
    ev += "]";
    std::string facts = "{";
    for (size_t i = 0; i < v.facts.size(); i++) {
        const auto &[k, val] = v.facts[i];
        facts += fmt::format("{}{}:", i ? "," : "", jstr(k));
        if (const auto *str = std::get_if<std::string>(&val))
            facts += jstr(*str);
        else if (const auto *num = std::get_if<int64_t>(&val))
            facts += std::to_string(*num);
        else
            facts += std::get<bool>(val) ? "true" : "false";
    }
    facts += "}";
    return fmt::format(
        "{{\"type\":\"verdict\",\"ts\":{},\"logged\":{},\"status\":{},\"client_got\":{},\"nginx_pid\":{},\"nginx_conn\":{},\"upstream\":{},"
        "\"request\":{},\"client\":{},\"server\":{},\"host\":{},\"nginx_message\":{},\"log_only_cause\":{},"
        "\"cause\":{},\"confidence\":{},\"explanation\":{},\"upstream_pid\":{},\"upstream_comm\":{},"
        "\"attempt\":{},\"request_key\":{},\"nginx_ns_pid\":{},\"upstream_ns_pid\":{},\"nginx_cgroup\":{},"
        "\"upstream_cgroup\":{},\"nginx_container\":{},\"upstream_container\":{},\"facts\":{},\"notes\":{},"
        "\"evidence\":{}}}",
        jstr(rfc3339_utc(v.ts_real_ns)),
        v.logged_real_ns ? jstr(rfc3339_utc(v.logged_real_ns)) : std::string("null"), v.status, jstr(v.client_got), v.nginx_pid, v.nginx_conn, jstr(v.upstream), jstr(v.request),
        jstr(v.client), jstr(v.server), jstr(v.host), jstr(v.nginx_message), jstr(v.log_only_cause), jstr(v.cause),
        jstr(v.confidence), jstr(v.explanation), jopt(v.upstream_pid),
        v.upstream_pid ? jstr(v.upstream_comm) : std::string("null"), v.attempt, jstr(v.request_key),
        jopt(v.nginx_ns_pid), jopt(v.upstream_ns_pid), jstr_or_null(v.nginx_cgroup), jstr_or_null(v.upstream_cgroup),
        jcontainer(v.nginx_container), jcontainer(v.upstream_container), facts, jarr_str(v.notes), ev);
}

void JsonSink::emit(const std::string &line)
{
    if (failed_)
        return; // nobody reads it (or it cannot be written): the run is stopping
    fputs(line.c_str(), out_);
    fputc('\n', out_);
    flush_out(out_, &failed_);
}

void JsonSink::ready(const ReadyInfo &r)
{
    std::string inst = "[";
    for (size_t i = 0; i < r.instances.size(); i++) {
        const InstanceInfo &n = r.instances[i];
        std::string ups = "[";
        for (size_t k = 0; k < n.upstreams.size(); k++) {
            const auto &u = n.upstreams[k];
            ups += fmt::format("{}{{\"address\":{},\"group\":{},\"where\":{},\"listening\":{}}}", k ? "," : "",
                               jstr(u.address), jstr_or_null(u.group), jstr(u.where),
                               u.listening ? (*u.listening ? "true" : "false") : "null");
        }
        ups += "]";
        inst += fmt::format("{}{{\"master\":{},\"master_ns_pid\":{},\"workers\":{},\"error_logs\":{},"
                            "\"access_logs\":{},\"captured_logs\":{},\"cgroup\":{},\"container\":{},"
                            "\"config\":{},\"upstreams\":{}}}",
                            i ? "," : "", n.master, jopt(n.master_ns_pid), jarr_u32(n.workers), jarr_str(n.error_logs),
                            jarr_str(n.access_logs), jarr_str(n.captured_logs), jstr_or_null(n.cgroup),
                            jcontainer(n.container), jstr_or_null(n.config), ups);
    }
    inst += "]";
    std::string cgs = "[";
    for (size_t i = 0; i < r.cgroups.size(); i++)
        cgs += fmt::format("{}{{\"path\":{},\"id\":{}}}", i ? "," : "", jstr(r.cgroups[i].first), r.cgroups[i].second);
    cgs += "]";
    emit(fmt::format("{{\"type\":\"ready\",\"ts\":{},\"version\":{},\"nginx_pid\":{},\"workers\":{},"
                     "\"error_logs\":{},\"access_logs\":{},\"instances\":{},\"cgroups\":{},\"preexisting_connections\":{},\"probes\":{},"
                     "\"probes_failed\":{},\"attach_ms\":{},\"capabilities\":{}}}",
                     jstr(rfc3339_utc(clock())), jstr(N502_VERSION), r.nginx_pid, jarr_u32(r.workers),
                     jarr_str(r.error_logs), jarr_str(r.access_logs), inst, cgs, r.preexisting, jarr_str(r.probes),
                     jarr_str(r.probes_failed), r.attach_ms, jarr_str(r.capabilities)));
}

void JsonSink::verdict(const Verdict &v) { emit(verdict_json(v, tb_)); }

void JsonSink::warning(const Warning &w)
{
    emit(fmt::format("{{\"type\":\"warning\",\"ts\":{},\"code\":{},\"message\":{},\"count\":{}}}",
                     jstr(rfc3339_utc(clock())), jstr(w.code), jstr(w.message), w.count));
}

static std::string jmap(const std::map<std::string, uint64_t> &m)
{
    std::string s = "{";
    bool first = true;
    for (const auto &[k, v] : m) {
        s += fmt::format("{}{}:{}", first ? "" : ",", jstr(k), v);
        first = false;
    }
    return s + "}";
}

void JsonSink::suppressed(const std::string &cause, const std::string &upstream, uint64_t count, double window_s)
{
    emit(fmt::format("{{\"type\":\"suppressed\",\"ts\":{},\"cause\":{},\"upstream\":{},\"count\":{},"
                     "\"window_s\":{:.1f}}}",
                     jstr(rfc3339_utc(clock())), jstr(cause), jstr(upstream), count, window_s));
}

void JsonSink::summary(const Summary &s)
{
    emit(fmt::format("{{\"type\":\"summary\",\"ts\":{},\"duration_s\":{:.3f},\"verdicts\":{},\"suppressed\":{},\"by_cause\":{},"
                     "\"by_upstream\":{},\"log_lines\":{},\"access_lines\":{},\"access_only\":{},\"events\":{},\"events_lost\":{},\"events_malformed\":{},"
                     "\"map_full\":{},\"window_s\":{:.0f},\"expired\":{},\"dropped\":{},\"conns_held\":{},\"procs_held\":{},"
                     "\"rss_kib\":{}}}",
                     jstr(rfc3339_utc(clock())), s.duration_s, s.verdicts, s.suppressed, jmap(s.by_cause),
                     jmap(s.by_upstream), s.log_lines, s.access_lines, s.access_only, s.events, s.events_lost, s.events_malformed, s.map_full,
                     s.window_s, s.expired, s.dropped, s.conns_held, s.procs_held, s.rss_kib));
}

// ---------------------------------------------------------------------------

// A record is formatted whole, then written: a write that fails (a reader
// gone) cannot interrupt it, and after one nothing more is written.
void TextSink::write_out()
{
    if (!failed_) {
        fwrite(buf_.data(), 1, buf_.size(), out_);
        flush_out(out_, &failed_);
    }
    buf_.clear();
}

void TextSink::ready(const ReadyInfo &r)
{
    std::string workers;
    for (size_t i = 0; i < r.workers.size(); i++) {
        if (i)
            workers += ' ';
        workers += std::to_string(r.workers[i]);
    }
    if (r.instances.size() <= 1 && (r.instances.empty() || (!r.instances[0].container && r.instances[0].captured_logs.empty())))
        fmt::format_to(std::back_inserter(buf_), "n502trace: ready: watching nginx master {} (workers {}), following {}; {} probes attached in {} ms\n",
                   r.nginx_pid, workers, vis(fmt::format("{}", fmt::join(r.error_logs, ", "))), r.probes.size(), r.attach_ms);
    else {
        fmt::format_to(std::back_inserter(buf_), "n502trace: ready: watching {} nginx instance{}; {} probes attached in {} ms\n",
                   r.instances.size(), r.instances.size() == 1 ? "" : "s", r.probes.size(), r.attach_ms);
        for (const auto &n : r.instances) {
            std::vector<std::string> logs = n.error_logs;
            for (const auto &c : n.captured_logs)
                logs.push_back(c + " captured from the kernel");
            fmt::format_to(std::back_inserter(buf_), "    master {}{}{}: workers {}, following {}\n", n.master,
                       n.master_ns_pid && *n.master_ns_pid != n.master ? fmt::format(" (pid {} inside)", *n.master_ns_pid) : "",
                       vis(n.container ? " in " + describe(*n.container) : (n.cgroup.empty() ? "" : " in cgroup " + n.cgroup)),
                       fmt::format("{}", fmt::join(n.workers, " ")), vis(fmt::format("{}", fmt::join(logs, ", "))));
        }
    }
    for (const auto &f : r.probes_failed)
        fmt::format_to(std::back_inserter(buf_), "n502trace: warning: probe not attached: {}\n", vis(f));
    write_out();
}

void TextSink::verdict(const Verdict &v)
{
    // "pid 4242 (7 in its namespace) in docker container web (3f2a...)"
    auto where = [](uint32_t pid, const std::optional<uint32_t> &nsp, const std::optional<ContainerInfo> &c) {
        std::string s = nsp && *nsp != pid ? fmt::format(", pid {} inside", *nsp) : "";
        if (c)
            s += ", " + vis(describe(*c));
        return s;
    };
    // The first word is what the client got: the status, or (no 502/504 was
    // sent) "009" for an HTTP/0.9 pass-through, "cut" for a response cut short.
    std::string got = v.client_got == "http09"      ? std::string("009")
                      : v.client_got == "cut_short" ? std::string("cut")
                                                    : std::to_string(v.status);
    // The time is the failure's (its line read), to be found in the error log.
    fmt::format_to(std::back_inserter(buf_), "{} {}  {}  {} -> {}  cause: {} ({} confidence)\n", got,
               clock_local(v.logged_real_ns ? v.logged_real_ns : v.ts_real_ns),
               v.request.empty() ? "-" : vis(v.request), v.client.empty() ? "-" : vis(v.client), vis(v.upstream), v.cause,
               v.confidence);
    fmt::format_to(std::back_inserter(buf_), "    {}\n", vis(v.explanation));
    fmt::format_to(std::back_inserter(buf_), "    nginx (worker {}{}, *{}): {}\n", v.nginx_pid, where(v.nginx_pid, v.nginx_ns_pid, v.nginx_container),
               v.nginx_conn, vis(v.nginx_message));
    if (v.upstream_pid && (v.upstream_container || (v.upstream_ns_pid && *v.upstream_ns_pid != *v.upstream_pid)))
        fmt::format_to(std::back_inserter(buf_), "    upstream process: pid {} ({}){}\n", *v.upstream_pid, vis(v.upstream_comm),
                   where(*v.upstream_pid, v.upstream_ns_pid, v.upstream_container));
    if (v.log_only_cause != v.cause)
        fmt::format_to(std::back_inserter(buf_), "    the log alone would suggest: {}\n", v.log_only_cause);
    if (v.attempt > 1)
        fmt::format_to(std::back_inserter(buf_), "    attempt {} of request {}\n", v.attempt, v.request_key);
    if (!v.facts.empty()) {
        std::string f;
        for (const auto &[k, val] : v.facts) {
            f += f.empty() ? "" : ", ";
            f += k + "=";
            if (const auto *str = std::get_if<std::string>(&val))
                f += vis(*str);
            else if (const auto *num = std::get_if<int64_t>(&val))
                f += std::to_string(*num);
            else
                f += std::get<bool>(val) ? "yes" : "no";
        }
        fmt::format_to(std::back_inserter(buf_), "    facts: {}\n", f);
    }
    for (const auto &n : v.notes)
        fmt::format_to(std::back_inserter(buf_), "    note: {}\n", vis(n));
    for (const auto &e : v.evidence) {
        std::string ts = e.ts ? clock_local(tb_.to_real_ns(e.ts)) : std::string("(before start)  ");
        std::string actor = e.comm.empty() ? fmt::format("pid {}", e.pid) : fmt::format("pid {} ({})", e.pid, vis(e.comm));
        fmt::format_to(std::back_inserter(buf_), "      {}  {:<12} {:<24} {}\n", ts, e.event, actor, vis(e.detail));
    }
    buf_ += '\n';
    write_out();
}

void TextSink::warning(const Warning &w)
{
    fmt::format_to(std::back_inserter(buf_), "n502trace: warning: {}\n", vis(w.message));
    write_out();
}

void TextSink::suppressed(const std::string &cause, const std::string &upstream, uint64_t count, double window_s)
{
    fmt::format_to(std::back_inserter(buf_), "n502trace: {} more {} verdicts for {} in the last {:.0f} s (not printed; counted in the summary)\n",
               count, cause, vis(upstream), window_s);
    write_out();
}

void TextSink::summary(const Summary &s)
{
    // "1 verdict", "2 verdicts"
    auto n = [](uint64_t count, const char *one, const char *many) { return fmt::format("{} {}", count, count == 1 ? one : many); };
    fmt::format_to(std::back_inserter(buf_), "n502trace: summary after {:.1f} s: {} from {}{}\n", s.duration_s,
               n(s.verdicts, "verdict", "verdicts"), n(s.log_lines, "upstream error line", "upstream error lines"),
               s.suppressed ? fmt::format(" ({} not printed: rate limit)", s.suppressed) : std::string());
    if (s.access_lines)
        fmt::format_to(std::back_inserter(buf_), "    access-log 502/504 lines: {}, {} of them without an error-log line\n", s.access_lines,
                   s.access_only);
    for (const auto &[k, v] : s.by_cause)
        fmt::format_to(std::back_inserter(buf_), "    cause    {:<28} {}\n", k, v);
    for (const auto &[k, v] : s.by_upstream)
        fmt::format_to(std::back_inserter(buf_), "    upstream {:<28} {}\n", vis(k), v);
    fmt::format_to(std::back_inserter(buf_), "    kernel events: {} seen, {} lost, {} malformed, {} table entries not made or forgotten{}\n",
               s.events, s.events_lost, s.events_malformed, s.map_full,
               s.events_lost || s.map_full ? "  (verdicts during losses may be incomplete)" : "");
    fmt::format_to(std::back_inserter(buf_), "    evidence window {:.0f} s: {} and {} held, {} aged out, {} dropped over the bounds; {} "
                     "KiB resident\n",
               s.window_s, n(s.conns_held, "connection", "connections"), n(s.procs_held, "process", "processes"),
               n(s.expired, "record", "records"), s.dropped, s.rss_kib);
    write_out();
}

} // namespace n502
