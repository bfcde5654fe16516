// Causes. Each cause is one named rule: a predicate over the connection Nginx
// failed on and the processes around it, which, when it holds, fills the
// verdict's cause, explanation and evidence. Rules run in order; the first
// that holds wins; `unknown` is the last and always holds. Adding a cause means
// adding one entry to the table in rules.cpp. A rule that holds names its
// cause first (base() in rules.cpp) and explains it only when the verdict
// will be shown (RuleInput::admit).
#pragma once
#include <deque>
#include <functional>
#include <string>
#include <vector>

#include "host.hpp"
#include "logline.hpp"
#include "state.hpp"
#include "timebase.hpp"
#include "verdict.hpp"

namespace n502 {

// One worker's failures on one upstream with one cause, for causes that
// point back (no_live_upstreams): counted however many there are (a storm's
// thousands), and started again after a minute without one.
constexpr int64_t kTallyIdleNs = 60'000'000'000LL;
struct FailureTally {
    std::string upstream;
    std::string cause;
    uint64_t count = 0;
    int64_t first_real_ns = 0, last_real_ns = 0; // when the verdicts were made
    uint64_t last_boot_ns = 0;                    // the last failure's kernel time (0: none seen)
    std::string explanation;                      // the last one written out (empty: the rate limit printed none)
};

struct RuleInput {
    const LogLine &line;
    const Conn *conn;      // the connection Nginx failed on, or null
    const Proc *upstream;  // the process that held the other end, or null
    const State &state;
    const Timebase &tb;
    Host *host = nullptr;  // null: no host lookups (replays, tests)
    const std::vector<FailureTally> *tallies = nullptr; // the line's worker's
    // Asked once per verdict, by the rule that holds, with its cause and the
    // line's upstream: will the verdict be shown? (The engine's output rate
    // limit.) No: the rule stops at its cause (Verdict::rendered is false).
    // Null: every verdict is shown.
    const std::function<bool(const std::string &cause, const std::string &upstream)> *admit = nullptr;
    // A refused connect whose address's last listener was found at the start
    // and still lives: ask the host whether anything listens there now.
    bool recheck_listener = false;
};

struct Rule {
    const char *cause;
    const char *summary; // for --help and the README
    bool (*apply)(const RuleInput &, Verdict &);
};

const std::vector<Rule> &rules();

// What the error-log message alone suggests (the usual checklist).
std::string log_only_cause(const LogLine &line);

} // namespace n502
