#include "report.hpp"

#include <sstream>

#include "engine.hpp"
#include "recording.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fmt/format.h>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sys/stat.h>
#include <vector>

#include "app.hpp"

namespace n502 {

namespace {

using nlohmann::json;

std::string esc(const std::string &s)
{
    std::string out;
    out.reserve(s.size());
    for (char c : s) {
        switch (c) {
        case '&': out += "&amp;"; break;
        case '<': out += "&lt;"; break;
        case '>': out += "&gt;"; break;
        case '"': out += "&quot;"; break;
        case '\'': out += "&#39;"; break;
        default: out += c;
        }
    }
    return out;
}

std::string str(const json &j, const char *k)
{
    auto it = j.find(k);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// A verdict's time: when its failure was logged (older outputs: when it was made).
std::string when(const json &v)
{
    std::string t = str(v, "logged");
    return t.empty() ? str(v, "ts") : t;
}

std::string num(const json &j, const char *k)
{
    auto it = j.find(k);
    if (it == j.end() || it->is_null())
        return "";
    if (it->is_number_integer())
        return std::to_string(it->get<int64_t>());
    if (it->is_number())
        return fmt::format("{}", it->get<double>());
    return it->is_string() ? it->get<std::string>() : it->dump();
}

// "2026-11-23T05:39:42.631351Z" -> seconds since the epoch (UTC); NaN if not one.
double parse_ts(const std::string &s)
{
    struct tm tm {};
    int frac_len = 0;
    unsigned long frac = 0;
    if (s.size() < 20 || sscanf(s.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                                &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6)
        return NAN;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    auto dot = s.find('.');
    if (dot != std::string::npos) {
        size_t i = dot + 1;
        while (i < s.size() && isdigit(static_cast<unsigned char>(s[i])) && frac_len < 9) {
            frac = frac * 10 + static_cast<unsigned long>(s[i] - '0');
            frac_len++;
            i++;
        }
    }
    return static_cast<double>(timegm(&tm)) + static_cast<double>(frac) / std::pow(10.0, frac_len);
}

std::string hhmmss(double t)
{
    time_t sec = static_cast<time_t>(t);
    struct tm tm {};
    gmtime_r(&sec, &tm);
    return fmt::format("{:04}-{:02}-{:02} {:02}:{:02}:{:02}", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                       tm.tm_min, tm.tm_sec);
}

// Distinct colours, assigned in order of first appearance.
const char *colour(size_t i)
{
    static const char *p[] = {"#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b",
                              "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939"};
    return p[i % (sizeof(p) / sizeof(p[0]))];
}

struct Row {
    double t;
    std::string cause, upstream;
};

// Stacked bars of 502/504s over time, one colour per key (cause or upstream).
std::string timeline_svg(const std::vector<Row> &rows, bool by_cause, const std::vector<std::string> &keys, double t0,
                         double t1, const char *title)
{
    static const double sizes[] = {1, 5, 10, 30, 60, 300, 600, 1800, 3600, 21600, 86400};
    double span = std::max(1.0, t1 - t0);
    double bucket = sizes[0];
    for (double sz : sizes) {
        bucket = sz;
        if (span / sz <= 60)
            break;
    }
    size_t n = static_cast<size_t>(span / bucket) + 1;
    std::vector<std::map<std::string, size_t>> counts(n);
    size_t peak = 1;
    for (const auto &r : rows) {
        size_t b = std::min(n - 1, static_cast<size_t>((r.t - t0) / bucket));
        counts[b][by_cause ? r.cause : r.upstream]++;
    }
    for (const auto &c : counts) {
        size_t total = 0;
        for (const auto &kv : c)
            total += kv.second;
        peak = std::max(peak, total);
    }
    const double W = 900, H = 180, left = 40, bottom = 24, top = 8;
    double bw = (W - left - 10) / static_cast<double>(n);
    std::string svg = fmt::format("<figure><figcaption>{} (bars of {:.0f} s; tallest {})</figcaption>"
                                  "<svg viewBox=\"0 0 {} {}\" width=\"100%\" role=\"img\" aria-label=\"{}\">",
                                  esc(title), bucket, peak, W, H, esc(title));
    svg += fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/>", left, H - bottom, W - 10,
                       H - bottom);
    svg += fmt::format("<text x=\"2\" y=\"{}\" class=\"ax\">{}</text><text x=\"2\" y=\"{}\" class=\"ax\">0</text>",
                       top + 10, peak, H - bottom);
    for (size_t b = 0; b < n; b++) {
        double y = H - bottom;
        for (size_t k = 0; k < keys.size(); k++) {
            auto it = counts[b].find(keys[k]);
            if (it == counts[b].end())
                continue;
            double h = (H - bottom - top) * static_cast<double>(it->second) / static_cast<double>(peak);
            y -= h;
            svg += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"{}\">"
                               "<title>{} {}: {}</title></rect>",
                               left + static_cast<double>(b) * bw, y, std::max(1.0, bw - 1), h, colour(k),
                               hhmmss(t0 + static_cast<double>(b) * bucket), esc(keys[k]), it->second);
        }
    }
    svg += fmt::format("<text x=\"{}\" y=\"{}\" class=\"ax\">{}</text>", left, H - 6, hhmmss(t0));
    svg += fmt::format("<text x=\"{}\" y=\"{}\" class=\"ax\" text-anchor=\"end\">{}</text>", W - 10, H - 6,
                       hhmmss(t0 + static_cast<double>(n) * bucket));
    svg += "</svg><div class=\"legend\">";
    for (size_t k = 0; k < keys.size(); k++)
        svg += fmt::format("<span><i style=\"background:{}\"></i>{}</span>", colour(k), esc(keys[k]));
    return svg + "</div></figure>";
}

} // namespace

std::optional<Report> build_report(std::istream &in, const std::string &source, std::string *error)
{
    std::vector<json> verdicts;
    std::vector<json> warnings;
    json summary, ready;
    std::map<std::string, uint64_t> suppressed; // cause -> count (rate-limited, not printed)
    std::string line;
    size_t lineno = 0, records = 0, bad = 0;
    std::string first_bad;
    while (std::getline(in, line)) {
        lineno++;
        if (line.empty())
            continue;
        auto j = json::parse(line, nullptr, false);
        if (j.is_discarded() || !j.is_object() || !j.contains("type") || !j["type"].is_string()) {
            if (bad++ == 0)
                first_bad = fmt::format("line {}: {}", lineno, visible_text(line.substr(0, 80)));
            continue;
        }
        records++;
        std::string type = j["type"].get<std::string>();
        if (type == "verdict")
            verdicts.push_back(std::move(j));
        else if (type == "warning")
            warnings.push_back(std::move(j));
        else if (type == "summary")
            summary = std::move(j);
        else if (type == "ready" && ready.is_null())
            ready = std::move(j);
        else if (type == "suppressed") {
            auto c = j.find("count");
            if (c != j.end() && c->is_number_unsigned())
                suppressed[str(j, "cause")] += c->get<uint64_t>();
        }
    }
    if (records == 0) {
        *error = fmt::format("{} is not n502trace --json output (no JSON record with a \"type\"{})", source,
                             first_bad.empty() ? "" : "; first bad " + first_bad);
        return std::nullopt;
    }

    std::vector<Row> rows;
    std::vector<std::string> causes, upstreams;
    struct Agg {
        size_t n = 0;
        double first = INFINITY, last = -INFINITY;
        std::set<std::string> upstreams;
    };
    std::map<std::string, Agg> by_cause, by_upstream;
    for (const auto &v : verdicts) {
        double t = parse_ts(when(v));
        std::string cause = str(v, "cause"), up = str(v, "upstream");
        if (std::find(causes.begin(), causes.end(), cause) == causes.end())
            causes.push_back(cause);
        if (std::find(upstreams.begin(), upstreams.end(), up) == upstreams.end())
            upstreams.push_back(up);
        for (auto *agg : {&by_cause[cause], &by_upstream[up]}) {
            agg->n++;
            if (!std::isnan(t)) {
                agg->first = std::min(agg->first, t);
                agg->last = std::max(agg->last, t);
            }
        }
        by_cause[cause].upstreams.insert(up);
        if (!std::isnan(t))
            rows.push_back({t, cause, up});
    }
    double t0 = INFINITY, t1 = -INFINITY;
    for (const auto &r : rows) {
        t0 = std::min(t0, r.t);
        t1 = std::max(t1, r.t);
    }
    std::sort(causes.begin(), causes.end(),
              [&](const std::string &a, const std::string &b) { return by_cause[a].n > by_cause[b].n; });
    std::sort(upstreams.begin(), upstreams.end(),
              [&](const std::string &a, const std::string &b) { return by_upstream[a].n > by_upstream[b].n; });

    Report rep;
    rep.verdicts = verdicts.size();
    uint64_t total_suppressed = 0;
    for (const auto &[c, n] : suppressed)
        total_suppressed += n;

    // Plain text first: it is also what the page's header says.
    std::string range = rows.empty() ? "no timestamps" : hhmmss(t0) + " .. " + hhmmss(t1) + " UTC";
    rep.text = fmt::format("n502trace report: {} verdicts in {} ({}){}\n", verdicts.size(), source, range,
                           total_suppressed ? fmt::format(", plus {} rate-limited (not printed)", total_suppressed) : "");
    for (const auto &c : causes)
        rep.text += fmt::format("  cause    {:<28} {:>6}  {} .. {}\n", c, by_cause[c].n, hhmmss(by_cause[c].first),
                                hhmmss(by_cause[c].last));
    for (const auto &u : upstreams)
        rep.text += fmt::format("  upstream {:<28} {:>6}\n", u, by_upstream[u].n);
    if (bad)
        rep.text += fmt::format("  {} lines were not JSON records and were skipped ({})\n", bad, first_bad);

    std::string h;
    h += "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
         "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
         "img-src data:\">"
         "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">";
    h += fmt::format("<title>n502trace report: {}</title>", esc(source));
    h += "<style>body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}"
         "h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}"
         "table{border-collapse:collapse;width:100%}td,th{padding:4px 8px;border-bottom:1px solid #eee;"
         "text-align:left;vertical-align:top}th{background:#f6f6f6}td.n{text-align:right;font-variant-numeric:"
         "tabular-nums}.ax{font-size:11px;fill:#555}.legend span{margin-right:14px;white-space:nowrap}"
         ".legend i{display:inline-block;width:10px;height:10px;margin-right:4px}details{border:1px solid #e4e4e4;"
         "border-radius:4px;margin:6px 0;padding:4px 8px}summary{cursor:pointer}code{background:#f3f3f3;"
         "padding:0 3px}.ev td{font-size:12px}.meta{color:#555}.cause{font-weight:600}</style></head><body>";
    h += fmt::format("<h1>n502trace report</h1><p class=\"meta\">{} &middot; <span id=\"verdict-count\">{}</span> "
                     "verdicts &middot; {}{}</p>",
                     esc(source), verdicts.size(), esc(range),
                     total_suppressed ? fmt::format(" &middot; {} more rate-limited", total_suppressed) : "");
    if (!ready.is_null())
        h += fmt::format("<p class=\"meta\">n502trace {} watching Nginx master {}</p>", esc(str(ready, "version")),
                         esc(num(ready, "nginx_pid")));

    h += "<h2>Timeline</h2>";
    if (rows.empty())
        h += "<p>No verdicts.</p>";
    else {
        h += timeline_svg(rows, true, causes, t0, t1, "502/504s by cause");
        h += timeline_svg(rows, false, upstreams, t0, t1, "502/504s by upstream");
    }

    h += "<h2>Causes</h2><table id=\"causes\"><tr><th>cause</th><th>count</th><th>first</th><th>last</th>"
         "<th>upstreams</th></tr>";
    for (const auto &c : causes) {
        std::string ups;
        for (const auto &u : by_cause[c].upstreams)
            ups += (ups.empty() ? "" : ", ") + esc(u);
        h += fmt::format("<tr><td class=\"cause\">{}</td><td class=\"n\" data-cause=\"{}\">{}</td><td>{}</td>"
                         "<td>{}</td><td>{}</td></tr>",
                         esc(c), esc(c), by_cause[c].n, hhmmss(by_cause[c].first), hhmmss(by_cause[c].last), ups);
    }
    h += "</table>";

    h += "<h2>Upstreams</h2><table id=\"upstreams\"><tr><th>upstream</th><th>count</th></tr>";
    for (const auto &u : upstreams)
        h += fmt::format("<tr><td>{}</td><td class=\"n\">{}</td></tr>", esc(u), by_upstream[u].n);
    h += "</table>";

    constexpr size_t kMaxShown = 2000;
    h += fmt::format("<h2>Verdicts</h2>{}", verdicts.size() > kMaxShown
                                                ? fmt::format("<p>The first {} of {} are shown.</p>", kMaxShown,
                                                              verdicts.size())
                                                : "");
    for (size_t i = 0; i < verdicts.size() && i < kMaxShown; i++) {
        const json &v = verdicts[i];
        std::string got = str(v, "client_got");
        std::string status = got == "http09"      ? "009 (no " + num(v, "status") + " sent: HTTP/0.9)"
                              : got == "cut_short" ? "cut short (no " + num(v, "status") + " sent)"
                                                   : num(v, "status");
        h += fmt::format("<details class=\"verdict\"><summary><code>{}</code> {} <span class=\"cause\">{}</span> "
                         "&rarr; {} &middot; {} ({} confidence)</summary>",
                         esc(when(v)), esc(status), esc(str(v, "cause")), esc(str(v, "upstream")),
                         esc(str(v, "request")), esc(str(v, "confidence")));
        h += fmt::format("<p>{}</p><p class=\"meta\">Nginx worker {} said: <code>{}</code></p>", esc(str(v, "explanation")),
                         esc(num(v, "nginx_pid")), esc(str(v, "nginx_message")));
        if (!num(v, "upstream_pid").empty())
            h += fmt::format("<p class=\"meta\">Upstream process {} ({})</p>", esc(num(v, "upstream_pid")),
                             esc(str(v, "upstream_comm")));
        auto ev = v.find("evidence");
        if (ev != v.end() && ev->is_array() && !ev->empty()) {
            h += "<table class=\"ev\"><tr><th>time</th><th>event</th><th>pid</th><th>detail</th></tr>";
            for (const auto &e : *ev)
                if (e.is_object())
                    h += fmt::format("<tr><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td></tr>",
                                     e.contains("ts") && e["ts"].is_string() ? esc(e["ts"].get<std::string>())
                                                                             : "(before start)",
                                     esc(str(e, "event")), esc(num(e, "pid")), esc(str(e, "comm")),
                                     esc(str(e, "detail")));
            h += "</table>";
        }
        h += "</details>";
    }
    if (!warnings.empty()) {
        h += "<h2>Warnings</h2><ul>";
        for (const auto &w : warnings)
            h += fmt::format("<li><code>{}</code> {}: {}</li>", esc(str(w, "ts")), esc(str(w, "code")),
                             esc(str(w, "message")));
        h += "</ul>";
    }
    if (!summary.is_null())
        h += fmt::format("<h2>Summary</h2><p>{} verdicts from {} upstream error lines in {} s; kernel events {} seen, "
                         "{} lost; {} kernel table entries not made or forgotten (a full table).</p>",
                         esc(num(summary, "verdicts")), esc(num(summary, "log_lines")), esc(num(summary, "duration_s")),
                         esc(num(summary, "events")), esc(num(summary, "events_lost")),
                         esc(num(summary, "map_full").empty() ? std::string("0") : num(summary, "map_full")));
    h += "</body></html>\n";
    rep.html = std::move(h);
    return rep;
}

int run_report(const std::string &input, const std::string &output)
{
    std::string out = output.empty() ? input + ".html" : output;
    if (std::string why = input_file_problem(input); !why.empty()) {
        fmt::print(stderr, "n502trace: error: {}\n", why);
        return EXIT_USAGE;
    }
    struct stat in_st{}, out_st{};
    if (stat(input.c_str(), &in_st) == 0 && stat(out.c_str(), &out_st) == 0 && in_st.st_dev == out_st.st_dev &&
        in_st.st_ino == out_st.st_ino) {
        fmt::print(stderr, "n502trace: error: -o {} is the input file itself: give the report another name\n", out);
        return EXIT_USAGE;
    }
    std::ifstream in(input);
    if (!in) {
        fmt::print(stderr, "n502trace: error: cannot read {}: {}\n", input, strerror(errno));
        return EXIT_USAGE;
    }
    std::string err;
    std::optional<Report> rep;
    if (looks_like_recording(input)) {
        // A recording: its replay's --json output is the report's input.
        std::vector<std::string> warnings;
        std::string lines;
        try {
            lines = replay_to_json(input, &warnings);
        } catch (const RecordingError &e) {
            fmt::print(stderr, "n502trace: error: {}\n", e.what());
            return EXIT_USAGE;
        } catch (const std::exception &e) {
            fmt::print(stderr, "n502trace: error: {}: cannot be replayed: {}\n", input, e.what());
            return EXIT_USAGE;
        }
        for (const auto &w : warnings)
            fmt::print(stderr, "n502trace: warning: {}\n", w);
        std::istringstream replayed(lines);
        rep = build_report(replayed, input, &err);
    } else {
        rep = build_report(in, input, &err);
    }
    if (!rep) {
        fmt::print(stderr, "n502trace: error: {}\n", err);
        return EXIT_USAGE;
    }
    errno = 0;
    std::ofstream f(out, std::ios::trunc);
    if (!f || !(f << rep->html) || !f.flush()) {
        fmt::print(stderr, "n502trace: error: cannot write {}{}\n", out,
                   errno ? fmt::format(": {}", strerror(errno)) : std::string());
        return EXIT_RUNTIME;
    }
    fmt::print("{}  report written to {}\n", rep->text, out);
    return EXIT_OK;
}

} // namespace n502
