// Access-log lines with a 502/504 status. Nginx writes no error-log line for
// some of them (the error log's level hides it, or the upstream itself sent
// the 502); the access log is then the only trace of the request.
//
// Formats: `combined` and `common`, and any format that begins like them
// ($remote_addr - $remote_user [$time_local] "$request" $status ...).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace n502 {

struct AccessLine {
    int64_t wall_sec = 0; // from [$time_local], with its UTC offset applied
    std::string client;
    std::string request; // as Nginx received it: the log's \xHH escapes undone
    int status = 0;
};

// Undoes the escaping of Nginx's access log (escape=default, the default):
// it writes '"', '\\', control characters and bytes from 0x7f as \xHH, which
// its error log does not escape. The escaped '\\' (\x5C) keeps this exact.
std::string unescape_access(std::string_view s);

// Returns the line when it parses and its status is 502 or 504.
std::optional<AccessLine> parse_access_error(std::string_view line);
// Any status: whether the line is in the layout understood (the combined
// format's start: client [time_local] "request" status).
std::optional<AccessLine> parse_access_line(std::string_view line);

} // namespace n502
