// Correlator: one Nginx error-log line <-> the kernel's story of the
// connection it is about, then the cause rules.
//
// Matching rule: the line names the worker (PID#TID) and the upstream peer.
// Candidates are that worker's connections to that peer which no earlier
// line has claimed and whose last kernel activity is no older than the line's
// timestamp minus `max_skew` (Nginx stamps lines with its cached time, which
// lags by at most one event-loop iteration, and has 1 s resolution). Among
// them, a connection whose failure matches the message wins (a refused or
// failed connect for connect() lines; a RST/FIN/close for the others), the
// newest first.
#pragma once
#include <cstdint>
#include <optional>

#include "logline.hpp"
#include "rules.hpp"
#include "state.hpp"
#include "timebase.hpp"
#include "verdict.hpp"

namespace n502 {

struct CorrelatorOptions {
    int64_t max_skew_ns = 5'000'000'000LL;
};

class Correlator {
public:
    Correlator(State &state, Timebase tb, CorrelatorOptions opt = {}) : state_(state), tb_(tb), opt_(opt) {}

    // The verdict for the line, or nullopt when no connection matches yet and
    // `final` is false (the caller retries after draining more events).
    std::optional<Verdict> explain(const LogLine &line, bool final);

    void set_timebase(Timebase tb) { tb_ = tb; }
    const Timebase &timebase() const { return tb_; }

private:
    Conn *find_conn(const LogLine &line);

    State &state_;
    Timebase tb_;
    CorrelatorOptions opt_;
};

} // namespace n502
