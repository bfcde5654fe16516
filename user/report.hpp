// `n502trace report FILE`: a postmortem page from a --json output. One
// self-contained HTML file (inline CSS and SVG, a Content-Security-Policy
// that forbids every fetch) and a short plain-text summary.
#pragma once
#include <istream>
#include <optional>
#include <string>

namespace n502 {

struct Report {
    std::string html;
    std::string text; // the plain-text summary
    size_t verdicts = 0;
};

// Reads JSON Lines as `n502trace --json` writes them. Returns nullopt and
// sets *error when the input is not such an output.
std::optional<Report> build_report(std::istream &in, const std::string &source, std::string *error);

// The subcommand: reads `input`, writes `output` (default: input + ".html"),
// prints the summary. Returns the process exit code.
int run_report(const std::string &input, const std::string &output);

} // namespace n502
