// The user-space pipeline alone: replays a recorded raw event stream
// (n502trace --raw-record) through decoder + state + correlator, as many
// times as needed to reach at least --events events, on one core, and
// reports events per second. Each replay shifts timestamps and socket
// addresses so that replays do not alias each other.
//
//   bench_pipeline FILE [--events N] [--log ERROR_LOG] [--per-sec N]
//
// With --log (the error log written while FILE was recorded), every replay
// also feeds those lines to the correlator, with the clock shifted like the
// events, so each line meets the connections it was written about (each line
// is parsed again every time, in the correlator's share of the time). Verdicts
// pass the output rate limit as in the tool (--per-sec, the tool's
// --max-verdicts-per-sec: 20 by default; 0 explains every verdict in full),
// on the recording's clock: a storm's repeats are counted, not explained.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fmt/format.h>
#include <string>
#include <vector>

#include "correlator.hpp"
#include "decoder.hpp"
#include "logline.hpp"
#include "n502/events.h"
#include "ratelimit.hpp"
#include "state.hpp"

using namespace n502;

int main(int argc, char **argv)
{
    if (argc < 2) {
        fmt::print(stderr, "usage: bench_pipeline FILE [--events N] [--log ERROR_LOG] [--per-sec N]\n");
        return 2;
    }
    uint64_t want = 1'000'000;
    uint32_t per_sec = 20;
    std::string log_path;
    for (int i = 2; i + 1 < argc; i++) {
        if (std::string(argv[i]) == "--events")
            want = std::stoull(argv[i + 1]);
        if (std::string(argv[i]) == "--log")
            log_path = argv[i + 1];
        if (std::string(argv[i]) == "--per-sec")
            per_sec = static_cast<uint32_t>(std::stoul(argv[i + 1]));
    }
    std::vector<LogLine> lines;
    std::vector<std::string> texts; // each line as Nginx wrote it: parsed again in every replay, as live
    if (!log_path.empty()) {
        FILE *lf = fopen(log_path.c_str(), "r");
        if (!lf) {
            fmt::print(stderr, "bench_pipeline: cannot open {}: {}\n", log_path, strerror(errno));
            return 2;
        }
        char buf[8192];
        while (fgets(buf, sizeof(buf), lf)) {
            std::string l(buf);
            while (!l.empty() && (l.back() == '\n' || l.back() == '\r'))
                l.pop_back();
            if (auto parsed = parse_upstream_error(l)) {
                lines.push_back(*parsed);
                texts.push_back(l);
            }
        }
        fclose(lf);
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        fmt::print(stderr, "bench_pipeline: cannot open {}: {}\n", argv[1], strerror(errno));
        return 2;
    }
    std::vector<std::vector<uint8_t>> recs;
    uint32_t n;
    while (fread(&n, sizeof(n), 1, f) == 1) {
        if (n > 4096)
            break;
        std::vector<uint8_t> r(n);
        if (fread(r.data(), 1, n, f) != n)
            break;
        recs.push_back(std::move(r));
    }
    fclose(f);
    if (recs.empty()) {
        fmt::print(stderr, "bench_pipeline: {} holds no events\n", argv[1]);
        return 2;
    }
    uint64_t span = 0;
    {
        n502_hdr first, last;
        std::memcpy(&first, recs.front().data(), sizeof(first));
        std::memcpy(&last, recs.back().data(), sizeof(last));
        span = last.ts_ns - first.ts_ns + 1'000'000;
    }
    // The recording's own clock: its first event maps to its first log line's second.
    n502_hdr first;
    std::memcpy(&first, recs.front().data(), sizeof(first));
    int64_t base_real = lines.empty() ? 0 : lines.front().wall_sec * 1'000'000'000LL;
    State state;
    RateLimiter limiter(per_sec);
    uint64_t last_ts = first.ts_ns; // of the latest event applied: the replay's clock
    Correlator *corr = nullptr;
    auto now_real = [&] { return corr->timebase().to_real_ns(last_ts); };
    CorrelatorOptions opt;
    opt.now_real = now_real;
    opt.admit = [&](const std::string &cause, const std::string &upstream) {
        return limiter.admit(cause + "\n" + upstream, now_real());
    };
    Correlator correlator(state, Timebase(base_real - static_cast<int64_t>(first.ts_ns)), opt);
    corr = &correlator;
    uint64_t events = 0, bad = 0, verdicts = 0, explained = 0, shown = 0;
    std::chrono::steady_clock::duration in_lines{}; // the correlator's share of the run
    auto t0 = std::chrono::steady_clock::now();
    for (uint64_t round = 0; events < want; round++) {
        // Lines are spread evenly through the events, as they arrive live
        // (the state keeps a bounded number of connections, so feeding them
        // all at the end would find most connections forgotten).
        size_t next_line = 0;
        LogLine l;
        int64_t shift_ns = static_cast<int64_t>(round * span);
        Timebase tb(base_real - static_cast<int64_t>(first.ts_ns));
        auto feed_lines = [&](size_t upto) {
            if (next_line >= upto || next_line >= lines.size())
                return;
            auto l0 = std::chrono::steady_clock::now();
            for (; next_line < upto && next_line < lines.size(); next_line++) {
                // Parsed here, in the timed part: the tool parses every line it follows.
                // Into one LogLine, as the tool parses into the strings of
                // lines it has explained.
                if (!parse_upstream_error(texts[next_line], l))
                    continue;
                // Shift the line like the events; keep the sub-second part in the clock.
                l.wall_sec += shift_ns / 1'000'000'000LL;
                correlator.set_timebase(Timebase(tb.offset_ns() + (shift_ns / 1'000'000'000LL) * 1'000'000'000LL -
                                                 shift_ns));
                if (auto v = correlator.explain(l, true)) {
                    verdicts++;
                    explained += v->cause != "unknown";
                    shown += v->rendered;
                }
            }
            in_lines += std::chrono::steady_clock::now() - l0;
        };
        for (size_t i = 0; i < recs.size(); i++) {
            auto ev = decode(recs[i].data(), recs[i].size());
            if (!ev) {
                bad++;
                continue;
            }
            ev->ts += round * span;
            last_ts = ev->ts;
            state.apply(*ev);
            events++;
            if (!lines.empty())
                feed_lines((i + 1) * lines.size() / recs.size());
        }
        feed_lines(lines.size());
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print("{} events ({} recorded, replayed) in {:.3f} s: {:.0f} events/s on one core ({} malformed)\n", events,
               recs.size(), secs, events / secs, bad);
    if (!lines.empty()) {
        double line_secs = std::chrono::duration<double>(in_lines).count();
        fmt::print("{} log lines correlated in the same run ({} with a kernel explanation): {:.0f} lines/s\n",
                   verdicts, explained, verdicts / secs);
        fmt::print("{} verdicts explained in full, {} counted as repeats ({})\n", shown, verdicts - shown,
                   per_sec ? fmt::format("at most {} a second per cause and upstream", per_sec)
                           : std::string("no rate limit"));
        fmt::print("of the {:.3f} s: decoder + state {:.3f} s ({:.0f} events/s), correlator {:.3f} s ({:.0f} lines/s)\n",
                   secs, secs - line_secs, events / std::max(secs - line_secs, 1e-9), line_secs,
                   verdicts / std::max(line_secs, 1e-9));
    }
    fmt::print("state: {} connections, {} dropped (bounded)\n", state.stats().conns, state.stats().conns_dropped);
    return 0;
}
