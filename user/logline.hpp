#pragma once
// Parser for Nginx error-log lines that report an upstream failure (502/504).
//
// Line format (nginx 1.22):
//   YYYY/MM/DD HH:MM:SS [level] PID#TID: *CONN message, client: ADDR, server: NAME,
//   request: "...", [subrequest: "...", ] upstream: "...", host: "...", referrer: "..."
// All context fields after "server" are optional; nginx truncates lines at 2047 bytes,
// so the context may be cut anywhere.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace n502 {

enum class LogKind {
  ConnectRefused,   // connect() failed (111: Connection refused) / connect() to unix:... failed (111: ...)
  ConnectFailed,    // connect() failed with any other errno (2, 13, 11, 99, 113, ...)
  PrematureClose,   // upstream prematurely closed connection while ... / peer closed connection in SSL handshake
  Reset,            // recv()/readv()/writev()/send()/sendfile() failed (104: Connection reset by peer), also (32: Broken pipe)
                    // and connect() failed (104: ...) (peer accepted, then RST before nginx's connect check)
  Timeout,          // upstream timed out (110: Connection timed out) while ... -> 504
  NoLiveUpstreams,  // no live upstreams while connecting to upstream
  InvalidResponse,  // upstream sent invalid header / too big header / no valid HTTP/1.0 header / FastCGI errors, etc.;
                    // gRPC's "upstream rejected request with error N", "upstream violated ... flow control";
                    // "memcached sent invalid ..."
  OtherUpstream,    // any other line that names an upstream: "...", i.e. an upstream-related error
  ResolveFailed,    // "NAME could not be resolved (3: Host not found)", "no resolver defined to resolve NAME":
                    // the upstream's name found no address (upstream_peer is the name) -> 502, no connection
};

// parse_upstream_error(line, out) sets every field: a new one must be set there (and compared in
// tests/unit/test_logline.cpp's fields()).
struct LogLine {
  int64_t wall_sec = 0;      // seconds since the epoch of the timestamp "2026/11/23 02:50:01", read as LOCAL time (mktime)
  std::string level;         // "error", "crit", "warn", ...
  uint32_t pid = 0, tid = 0; // "1235#1235"
  uint64_t conn = 0;         // "*7" -> 7, 0 when absent
  std::string message;       // text after "*N " up to ", client:" (or end)
  int err_no = 0;            // 111 from "(111: Connection refused)", 0 if none
  std::string err_text;      // "Connection refused"
  std::string client, server, request, upstream, host; // request/upstream/host without quotes
  std::string upstream_peer; // normalised peer: "127.0.0.1:8080", "[::1]:8080", "unix:/run/php/php-fpm.sock"
                             // (scheme, URI and trailing ':' removed); for "no live upstreams" the upstream{} name
  LogKind kind = LogKind::OtherUpstream;
  int status = 502;          // 504 for Timeout, else 502
  bool lean = false;         // read while adaptive tracking watched failures only (set by the engine)

  // Extras (not part of the original interface).
  std::string scheme;        // "http", "https", "fastcgi", "uwsgi", "scgi", "grpc", "grpcs" ("" if no upstream field)
  std::string phase;         // text after the last " while " in message, e.g. "reading response header from upstream"
  std::string referrer;      // unquoted referrer field, if present
  bool truncated = false;    // context fields were cut off (nginx truncates at 2047 bytes) or unparseable
  // The line ends inside the request field (a long request line): `request` is only its beginning.
  bool request_cut = false;
  // The line ends before its upstream field was whole (inside or just after the request, or inside
  // the upstream value) and the message does not name it either: `upstream_peer` is empty.
  bool upstream_cut = false;
  // True when the failure happened after the response header had already been passed to the client
  // (phase "reading upstream", "sending to client" or "proxying upgraded connection", or "upstream
  // sent no valid HTTP/1.0 header", which nginx passes through as an HTTP/0.9 200 response): the
  // client did NOT see 502/504 but a truncated/garbled response (or a WebSocket cut after its 101).
  bool mid_response = false;
  // The message is "upstream sent no valid HTTP/1.0 header": Nginx passed what it read on to the
  // client as a headerless HTTP/0.9 response (one kind of mid_response).
  bool http09 = false;
};

// Parses one line of an Nginx error log (without the trailing newline; a trailing "\r" or "\n" is ignored).
// Returns nullopt for lines that are not Nginx error-log lines at all, or that are not upstream errors
// (e.g. "signal process started", "open() ... failed" for static files, lines without an upstream,
// lines of level warn/notice/info/debug such as "upstream server temporarily disabled", and lines
// about an upstream for which Nginx sent no 502/504, such as "FastCGI sent in stderr: ...").
// Never throws.
std::optional<LogLine> parse_upstream_error(std::string_view line);
// The same into `out`, whose strings keep their buffers: a caller that parses
// line after line into one LogLine allocates nothing once they are big enough.
// On false, `out` holds nothing meaningful.
bool parse_upstream_error(std::string_view line, LogLine& out);

// Whether the line begins as every error-log line does ("YYYY/MM/DD HH:MM:SS ["),
// whatever its level and message.
bool is_error_log_line(std::string_view line);
// That stamp in seconds since the epoch, read as local time (as wall_sec
// above); nullopt for a line without it.
std::optional<int64_t> error_line_wall_sec(std::string_view line);

// Sets TZ (unsets it for nullptr) and tzset()s. Error-log stamps are local
// time: the parser converts them under the zone last set here or inherited
// at start. TZ changed any other way is not noticed by the parser.
void set_local_zone(const char* tz);

// "connect_refused", "connect_failed", "premature_close", "reset", "timeout", "no_live_upstreams",
// "invalid_response", "other_upstream"
const char* to_string(LogKind);

// Normalises an upstream field value ("http://127.0.0.1:8080/x", "fastcgi://unix:/run/x.sock:",
// "http://[::1]:8080/") to the peer ("127.0.0.1:8080", "unix:/run/x.sock", "[::1]:8080").
std::string normalise_upstream_peer(std::string_view upstream);

}  // namespace n502
