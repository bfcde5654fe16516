#include "logline.hpp"

#include <array>
#include <atomic>
#include <ctime>
#include <cstdlib>
#include <string>

namespace n502 {
namespace {

using sv = std::string_view;

constexpr sv kClientKey = ", client: ";
constexpr size_t kNginxMaxLine = 2047;  // NGX_MAX_ERROR_STR (2048) less the newline
// Maximum number of ", client: " candidates examined per line (bounds work on hostile input).
constexpr int kMaxCandidates = 32;

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// The first byte before memcmp: most tries (which field is next, is this quote the value's end)
// fail on it.
bool starts_with(sv s, sv p) {
  return s.size() >= p.size() && (p.empty() || s[0] == p[0]) && s.compare(0, p.size(), p) == 0;
}
bool ends_with(sv s, sv p) { return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0; }

// The last " while " in s, or npos. (string_view::rfind compares the whole needle at every
// position from the end, a memcmp call each: the phase is looked for in every line of a storm.)
size_t rfind_while(sv s) {
  constexpr sv w = " while ";
  for (size_t i = s.size() < w.size() ? 0 : s.size() - w.size() + 1; i-- > 0;)
    if (s[i] == ' ' && s[i + 1] == 'w' && s.substr(i, w.size()) == w) return i;
  return sv::npos;
}

// Parses exactly `n` digits at s[pos...]; returns false if any is not a digit.
bool fixed_digits(sv s, size_t pos, size_t n, int& out) {
  if (pos + n > s.size()) return false;
  int v = 0;
  for (size_t i = 0; i < n; ++i) {
    char c = s[pos + i];
    if (!is_digit(c)) return false;
    v = v * 10 + (c - '0');
  }
  out = v;
  return true;
}

// Parses a run of 1..max_len digits at s[pos...]; advances pos. Rejects values above `max`.
bool parse_uint(sv s, size_t& pos, uint64_t max, uint64_t& out, size_t max_len = 20) {
  size_t start = pos;
  uint64_t v = 0;
  while (pos < s.size() && is_digit(s[pos]) && pos - start < max_len) {
    uint64_t d = static_cast<uint64_t>(s[pos] - '0');
    if (v > (max - d) / 10) return false;
    v = v * 10 + d;
    ++pos;
  }
  if (pos == start) return false;
  if (pos < s.size() && is_digit(s[pos])) return false;  // too many digits
  out = v;
  return true;
}

bool has_space(sv s) { return s.find(' ') != sv::npos; }

// A local time (the error log's stamp) in seconds since the epoch. mktime()
// checks the zone file on every call (with TZ unset, a stat() of
// /etc/localtime: a system call per line in a storm of 502s), so the start of
// the minute is converted once and remembered with the zone generation it was
// converted under (set_local_zone counts changes of TZ: asking getenv for it
// on every line was a scan of the environment per line); offsets change only
// on minute boundaries. A new zone file is seen from the next minute of the
// log on.
std::atomic<uint64_t> zone_generation{0};

int64_t local_epoch(int Y, int M, int D, int h, int m, int s) {
  struct Minute {
    int Y = -1, M = 0, D = 0, h = 0, m = 0;
    uint64_t zone = 0;
    int64_t at = 0;
  };
  thread_local Minute last;
  uint64_t zone = zone_generation.load(std::memory_order_relaxed);
  if (Y != last.Y || M != last.M || D != last.D || h != last.h || m != last.m || zone != last.zone) {
    std::tm tm{};
    tm.tm_year = Y - 1900;
    tm.tm_mon = M - 1;
    tm.tm_mday = D;
    tm.tm_hour = h;
    tm.tm_min = m;
    tm.tm_isdst = -1;
    time_t t = std::mktime(&tm);
    if (t == static_cast<time_t>(-1)) {  // not representable: not remembered
      tm = std::tm{};
      tm.tm_year = Y - 1900, tm.tm_mon = M - 1, tm.tm_mday = D, tm.tm_hour = h, tm.tm_min = m, tm.tm_sec = s;
      tm.tm_isdst = -1;
      return static_cast<int64_t>(std::mktime(&tm));
    }
    last = Minute{Y, M, D, h, m, zone, static_cast<int64_t>(t)};
  }
  return last.at + s;
}

bool accepted_level(sv level) {
  return level == "error" || level == "crit" || level == "alert" || level == "emerg";
}

bool known_level(sv level) {
  static constexpr std::array<sv, 8> levels{"debug", "info", "notice", "warn",
                                            "error", "crit", "alert", "emerg"};
  for (sv l : levels)
    if (l == level) return true;
  return false;
}

struct Context {
  sv client, server, request, subrequest, upstream, host, referrer;
  bool has_upstream = false;
  bool has_referrer = false;
  bool complete = false;  // the whole remainder was consumed by well-formed fields
  bool request_trunc = false;  // the line ends inside the request value (no closing quote)
  bool request_last = false;   // the request value ends the line
  bool upstream_lost = false;  // the line ends before the upstream value was whole
};

// Quoted keys in the order nginx emits them (ngx_http_log_error_handler).
constexpr std::array<sv, 5> kQuotedKeys{"request", "subrequest", "upstream", "host", "referrer"};

// Does a request line end with its version (" HTTP/1.1", " HTTP/2.0")? Nginx takes a space in
// the URI (space_in_uri), so a request's own text may hold '", upstream: "'; but once a space is
// followed by "HTTP/", Nginx reads the version there and takes nothing after it but the line's
// end: a request line that reached an upstream has " HTTP/d.d" only at its end.
bool ends_with_http_version(sv v) {
  size_t n = v.size();
  return n >= 9 && v.substr(n - 9, 6) == " HTTP/" && is_digit(v[n - 3]) && v[n - 2] == '.' && is_digit(v[n - 1]);
}

// Finds the end of a quoted value that starts at rest[0] (just after the opening quote).
// The value ends at a '"' that is followed by ", <later key>: \"" or by the end of the line; the
// request's at the first such quote after its version (else the first such quote: an HTTP/0.9
// request has none), so that a request holding '", upstream: "' cannot stand for the fields after it.
// Returns npos if no such quote exists (truncated line).
size_t find_quoted_end(sv rest, size_t key_index) {
  size_t first = sv::npos;
  for (size_t p = rest.find('"'); p != sv::npos; p = rest.find('"', p + 1)) {
    bool ends = p + 1 == rest.size();
    sv after = rest.substr(p + 1);
    if (!ends && starts_with(after, ", ")) {
      sv k = after.substr(2);
      for (size_t j = key_index + 1; j < kQuotedKeys.size() && !ends; ++j) {
        sv key = kQuotedKeys[j];
        ends = starts_with(k, key) && starts_with(k.substr(key.size()), ": \"");
      }
    }
    if (!ends) continue;
    if (kQuotedKeys[key_index] != "request" || ends_with_http_version(rest.substr(0, p))) return p;
    if (first == sv::npos) first = p;
  }
  return first;
}

// Is s a proper, non-empty prefix of "<key>: \"" for a key from index `from` on? Returns that
// index, or npos: the line was cut inside the name of that field.
size_t cut_key(sv s, size_t from) {
  for (size_t j = from; !s.empty() && j < kQuotedKeys.size(); ++j) {
    std::string full = std::string(kQuotedKeys[j]) + ": \"";
    if (s.size() < full.size() && sv(full).substr(0, s.size()) == s) return j;
  }
  return sv::npos;
}

// A value the line ends in without its closing quote may instead have been cut just after it,
// inside the ", <later key>: \"" that follows: the end of body is then ", " or a prefix of it, or
// ", " and a prefix of a later key. Returns where the value ends, and the cut key's index in
// *next (npos when the cut was in the ", " itself), or npos when the value itself was cut.
size_t cut_after_quote(sv body, size_t key_index, size_t* next) {
  constexpr sv sep = ", ";
  for (size_t p = body.find('"'); p != sv::npos; p = body.find('"', p + 1)) {
    sv after = body.substr(p + 1);
    if (after.empty()) continue;  // a quote that ends the line: find_quoted_end took it
    if (after.size() <= sep.size() && sep.substr(0, after.size()) == after) {
      *next = sv::npos;
      return p;
    }
    if (!starts_with(after, sep)) continue;
    if (size_t j = cut_key(after.substr(sep.size()), key_index + 1); j != sv::npos) {
      *next = j;
      return p;
    }
  }
  return sv::npos;
}

// An upstream value the line was cut in ("http://127.0.0.1:9000/pa"): is its address whole? It is
// once its URI has begun ("unix:/run/app.sock:/" for a unix socket).
bool upstream_address_whole(sv v) {
  size_t sch = v.find("://");
  sv rest = sch == sv::npos ? v : v.substr(sch + 3);
  if (starts_with(rest, "unix:")) return rest.find(":/", 5) != sv::npos;
  return rest.find_first_of("/?") != sv::npos;
}

// Parses the context that follows ", client: " (s starts at the client address).
// In strict mode returns true only if every byte is accounted for by well-formed fields.
// In lenient mode returns true if at least the client address is plausible, and fills what it can.
bool parse_context(sv s, Context& ctx, bool strict) {
  ctx = Context{};
  size_t comma = s.find(", ");
  sv client = s.substr(0, comma);
  if (client.empty() || has_space(client) || client.size() > 256) return false;
  ctx.client = client;
  if (comma == sv::npos) return !strict;
  sv rest = s.substr(comma + 2);
  if (!starts_with(rest, "server: ")) return !strict;
  rest.remove_prefix(8);
  comma = rest.find(", ");
  sv server = rest.substr(0, comma);
  if (has_space(server)) {
    if (strict) return false;
    server = server.substr(0, server.find(' '));
    ctx.server = server;
    return true;
  }
  ctx.server = server;
  if (comma == sv::npos) {
    ctx.complete = true;
    return true;
  }
  rest.remove_prefix(comma + 2);

  size_t next_key = 0;
  while (!rest.empty()) {
    bool matched = false;
    for (size_t i = next_key; i < kQuotedKeys.size(); ++i) {
      sv key = kQuotedKeys[i];
      if (!starts_with(rest, key) || !starts_with(rest.substr(key.size()), ": \"")) continue;
      sv body = rest.substr(key.size() + 3);
      size_t end = find_quoted_end(body, i);
      bool trunc = end == sv::npos;
      // Lenient only: the value may be whole, the line cut in what follows it.
      size_t cut_next = sv::npos;
      bool cut_after = false;
      if (trunc && !strict) {
        end = cut_after_quote(body, i, &cut_next);
        cut_after = end != sv::npos;
        trunc = !cut_after;
      }
      sv value = trunc ? body : body.substr(0, end);
      if (strict && (trunc || ((key == "upstream" || key == "host") && has_space(value)))) return false;
      switch (i) {
        case 0:
          ctx.request = value;
          ctx.request_trunc = trunc;
          ctx.request_last = trunc || cut_after || end + 1 == body.size();
          break;
        case 1: ctx.subrequest = value; break;
        case 2:
          // Cut inside its address ("http://127.0.0.1:90" of ...:9000) it would name a wrong peer;
          // cut inside its URI, the address is whole.
          ctx.upstream = trunc && !upstream_address_whole(value) ? sv() : value;
          ctx.has_upstream = true;
          break;
        case 3: ctx.host = value; break;
        default: ctx.referrer = value; ctx.has_referrer = true; break;
      }
      if (trunc) {  // lenient: line cut inside this value
        ctx.upstream_lost = i < 2 || (i == 2 && ctx.upstream.empty());
        return true;
      }
      if (cut_after) {  // lenient: line cut after this value, before or inside the next key
        ctx.upstream_lost = i < 2 && (cut_next == sv::npos || cut_next <= 2);
        return true;
      }
      rest = body.substr(end + 1);
      if (rest.empty()) {
        ctx.complete = true;
        return true;
      }
      // find_quoted_end guarantees ", <key>: \"" follows.
      rest.remove_prefix(2);
      next_key = i + 1;
      matched = true;
      break;
    }
    if (!matched) {  // unknown or out-of-order field, or truncated key
      if (!strict && !ctx.has_upstream) {
        size_t j = cut_key(rest, next_key);
        ctx.upstream_lost = j != sv::npos && j <= 2;
      }
      return !strict;
    }
  }
  ctx.complete = true;
  return true;
}

// Splits "message, client: ..." into message and context. Chooses the first ", client: " whose
// context parses strictly; if there is none (truncated line), the first that parses leniently.
// Client-controlled data (request URI, Host, Referer) comes after the real context, so picking the
// first strict candidate is robust against injection from clients.
void split_message(sv rest, sv& message, Context& ctx, bool& found_ctx) {
  found_ctx = false;
  message = rest;
  std::optional<size_t> lenient_pos;
  Context lenient_ctx;
  int tries = 0;
  for (size_t p = rest.find(kClientKey); p != sv::npos && tries < kMaxCandidates;
       p = rest.find(kClientKey, p + 1), ++tries) {
    sv tail = rest.substr(p + kClientKey.size());
    Context c;
    if (parse_context(tail, c, true)) {
      message = rest.substr(0, p);
      ctx = c;
      found_ctx = true;
      return;
    }
    if (!lenient_pos && parse_context(tail, c, false)) {
      lenient_pos = p;
      lenient_ctx = c;
    }
  }
  if (lenient_pos) {
    message = rest.substr(0, *lenient_pos);
    ctx = lenient_ctx;
    found_ctx = true;
  }
}

// Finds "(NNN: text)" in the nginx-generated part of the message (before any quoted data).
void parse_errno(sv message, int& err_no, sv& err_text) {
  sv head = message.substr(0, message.find('"'));
  for (size_t p = head.find('('); p != sv::npos; p = head.find('(', p + 1)) {
    size_t q = p + 1;
    uint64_t v = 0;
    if (!parse_uint(head, q, 100000, v, 6)) continue;
    if (!starts_with(head.substr(q), ": ")) continue;
    size_t close = head.find(')', q + 2);
    if (close == sv::npos) continue;
    err_no = static_cast<int>(v);
    err_text = head.substr(q + 2, close - (q + 2));
    return;
  }
}

// "connect() to unix:/path failed (...)" -> "unix:/path"
sv unix_path_from_message(sv message) {
  constexpr sv pre = "connect() to unix:";
  if (!starts_with(message, pre)) return {};
  size_t end = message.find(" failed", pre.size());
  if (end == sv::npos) return {};
  constexpr size_t skip = sv("connect() to ").size();
  return message.substr(skip, end - skip);  // keep "unix:"
}

LogKind classify(sv message, int err_no) {
  if (starts_with(message, "no live upstreams")) return LogKind::NoLiveUpstreams;
  if (starts_with(message, "upstream timed out")) return LogKind::Timeout;
  if (starts_with(message, "connect() failed") || starts_with(message, "connect() to ")) {
    if (err_no == 111) return LogKind::ConnectRefused;
    if (err_no == 104) return LogKind::Reset;
    return LogKind::ConnectFailed;
  }
  if (err_no == 104 || err_no == 32) return LogKind::Reset;
  if (starts_with(message, "upstream prematurely closed") ||
      starts_with(message, "peer closed connection in SSL handshake"))
    return LogKind::PrematureClose;
  // What the upstream sent broke its protocol: most messages begin "upstream sent "; gRPC's RST_STREAM
  // before the header and its flow-control violations, and memcached's, are worded otherwise.
  if (starts_with(message, "upstream sent ") || starts_with(message, "upstream rejected request with error ") ||
      starts_with(message, "upstream violated ") || starts_with(message, "memcached sent invalid "))
    return LogKind::InvalidResponse;
  // other I/O errnos (e.g. "recv() failed (110: ...)", a kernel-level timeout -> 502) stay OtherUpstream
  return LogKind::OtherUpstream;
}

// A line about an upstream for which Nginx sends no 502/504:
// - "FastCGI sent in stderr: \"...\"" (ngx_http_fastcgi_module) is logged for every stderr record of
//   the response (PHP's warnings and notices, php-fpm's "Primary script unknown"), and Nginx goes on:
//   the client gets what php-fpm answers (200, its 404, its 500). (With fastcgi_catch_stderr matching
//   it, Nginx answers 502 without another line: the access log's 502 gets the verdict.)
// - Nginx could not set a connection up: ngx_event_connect_peer returns NGX_ERROR when socket() fails
//   ("socket() failed (24: Too many open files)"), no connection is free ("1024 worker_connections are
//   not enough"), or bind() (proxy_bind), a socket option or the event method fails, and
//   ngx_http_upstream_connect answers 500; nothing was connected. (An option whose failure is
//   "ignored" is no failure at all.)
// - "invalid header after joining FastCGI records" ([alert]): ngx_http_fastcgi_process_header returns
//   NGX_ERROR, and ngx_http_upstream_process_header answers 500.
bool not_a_failure(sv message, sv phase) {
  if (starts_with(message, "FastCGI sent in stderr: ") ||
      starts_with(message, "invalid header after joining FastCGI records"))
    return true;
  if (phase != "connecting to upstream") return false;
  static constexpr std::array<sv, 6> setup{"socket() ", "bind(", "setsockopt(", "ioctl(", "fcntl(", "epoll_ctl("};
  for (sv p : setup)
    if (starts_with(message, p)) return true;
  return message.find(" worker_connections are not enough") != sv::npos;
}

// The upstream name Nginx could not resolve at request time (a *_pass with a variable, which Nginx
// resolves per request): "NAME could not be resolved (3: Host not found)" (ngx_http_upstream's
// resolve handler, a timeout too: "(110: Operation timed out)") or "no resolver defined to resolve
// NAME" (no `resolver`); Nginx answers 502 without connecting, and the line has no upstream field
// (the peer has no address yet). "" for any other message.
sv unresolved_name(sv message) {
  constexpr sv no_resolver = "no resolver defined to resolve ";
  if (starts_with(message, no_resolver)) {
    sv name = message.substr(no_resolver.size());
    return name.substr(0, name.find(' '));
  }
  size_t at = message.find(" could not be resolved (");
  if (at == sv::npos || at == 0 || message.substr(0, at).find(' ') != sv::npos) return {};
  return message.substr(0, at);
}

// Does the line end as the stream proxy's do: ", bytes from/to upstream:N/N"?
bool stream_tail(sv line) {
  size_t n = line.size();
  while (n > 0 && is_digit(line[n - 1])) n--;
  if (n == line.size() || n == 0 || line[n - 1] != '/') return false;
  size_t slash = --n;
  while (n > 0 && is_digit(line[n - 1])) n--;
  constexpr sv tail = ", bytes from/to upstream:";
  return n < slash && line.substr(0, n).size() >= tail.size() && ends_with(line.substr(0, n), tail);
}

// The peer of an upstream field's value (see normalise_upstream_peer): always a part of it.
sv upstream_peer(sv up) {
  size_t sch = up.find("://");
  if (sch != sv::npos) up.remove_prefix(sch + 3);
  if (starts_with(up, "unix:")) {
    // "unix:" PATH ":" URI, URI empty or starting with '/'.
    for (size_t p = up.find(':', 5); p != sv::npos; p = up.find(':', p + 1)) {
      if (p + 1 == up.size() || up[p + 1] == '/') return up.substr(0, p);
    }
    return up;
  }
  if (starts_with(up, "[")) {
    size_t rb = up.find(']');
    if (rb == sv::npos) return up;
    size_t end = rb + 1;
    if (end < up.size() && up[end] == ':') {
      size_t q = end + 1;
      while (q < up.size() && is_digit(up[q])) ++q;
      end = q == end + 1 ? end : q;  // drop a trailing ':' with no port
    }
    return up.substr(0, end);
  }
  size_t end = up.find_first_of("/?");
  sv peer = up.substr(0, end);
  while (!peer.empty() && peer.back() == ':') peer.remove_suffix(1);
  return peer;
}

// "YYYY/MM/DD HH:MM:SS [": the start of every error-log line.
bool parse_stamp(sv line, int& Y, int& M, int& D, int& h, int& m, int& s) {
  if (line.size() < 21) return false;
  if (!fixed_digits(line, 0, 4, Y) || line[4] != '/' || !fixed_digits(line, 5, 2, M) || line[7] != '/' ||
      !fixed_digits(line, 8, 2, D) || line[10] != ' ' || !fixed_digits(line, 11, 2, h) || line[13] != ':' ||
      !fixed_digits(line, 14, 2, m) || line[16] != ':' || !fixed_digits(line, 17, 2, s) || line[19] != ' ' ||
      line[20] != '[')
    return false;
  return Y >= 1970 && M >= 1 && M <= 12 && D >= 1 && D <= 31 && h <= 23 && m <= 59 && s <= 60;
}

bool parse_impl(sv line, LogLine& out) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);

  int Y, M, D, h, m, s;
  if (!parse_stamp(line, Y, M, D, h, m, s)) return false;

  // "[level] "
  size_t pos = 20;
  size_t close = line.find(']', pos);
  if (close == sv::npos || close - pos > 10) return false;
  sv level = line.substr(pos + 1, close - pos - 1);
  if (!known_level(level)) return false;
  if (!accepted_level(level)) return false;
  pos = close + 1;
  if (pos >= line.size() || line[pos] != ' ') return false;
  ++pos;

  // "PID#TID: "
  uint64_t pid = 0, tid = 0;
  if (!parse_uint(line, pos, UINT32_MAX, pid)) return false;
  if (pos >= line.size() || line[pos] != '#') return false;
  ++pos;
  if (!parse_uint(line, pos, UINT32_MAX, tid)) return false;
  if (!starts_with(line.substr(pos), ": ")) return false;
  pos += 2;

  // optional "*CONN "
  uint64_t conn = 0;
  if (pos < line.size() && line[pos] == '*') {
    size_t q = pos + 1;
    if (parse_uint(line, q, UINT64_MAX, conn) && q < line.size() && line[q] == ' ') {
      pos = q + 1;
    } else {
      conn = 0;
    }
  }

  sv rest = line.substr(pos);
  // The stream module's proxy (ngx_stream_proxy_module: a TCP or UDP session, no HTTP status) ends
  // its context with the bytes moved each way: its failures are no 502/504. (At the line's end,
  // unquoted: an HTTP line ends with a quoted value, whatever its request says.)
  if (stream_tail(line)) return false;
  sv message;
  Context ctx;
  bool found_ctx = false;
  split_message(rest, message, ctx, found_ctx);

  sv phase;
  if (size_t w = rfind_while(message); w != sv::npos) phase = message.substr(w + 7);

  // (a name not resolved: a request's only; an OCSP responder's, ssl_stapling, is none)
  sv unresolved = found_ctx && !ctx.request.empty() ? unresolved_name(message) : sv();
  bool upstream_related = (found_ctx && ctx.has_upstream) || ends_with(phase, "upstream") ||
                          starts_with(message, "no live upstreams") || starts_with(message, "upstream ") ||
                          !unresolved.empty();
  if (!upstream_related || not_a_failure(message, phase)) return false;

  out.wall_sec = local_epoch(Y, M, D, h, m, s);
  out.level.assign(level);
  out.pid = static_cast<uint32_t>(pid);
  out.tid = static_cast<uint32_t>(tid);
  out.conn = conn;
  out.message.assign(message);
  sv err_text;
  out.err_no = 0;
  parse_errno(message, out.err_no, err_text);
  out.err_text.assign(err_text);
  out.phase.assign(phase);
  // (ctx's fields are empty when no context was found.)
  out.client.assign(ctx.client);
  out.server.assign(ctx.server);
  out.request.assign(ctx.request);
  out.upstream.assign(ctx.upstream);
  out.host.assign(ctx.host);
  out.referrer.assign(ctx.referrer);
  out.truncated = !found_ctx || !ctx.complete;
  // Nginx cuts a line at 2047 bytes, inside the request when it is long: the value then has no
  // closing quote; or, cut at or just after a quote inside it (or its own), it looks whole but ends a
  // full-length line, and is taken for a beginning (which a whole request is too).
  out.request_cut = found_ctx && (ctx.request_trunc || (ctx.request_last && line.size() >= kNginxMaxLine));
  out.scheme.clear();
  if (found_ctx && ctx.has_upstream) {
    size_t sch = ctx.upstream.find("://");
    if (sch != sv::npos) out.scheme.assign(ctx.upstream.substr(0, sch));
  }
  sv unix_peer = unix_path_from_message(message);
  if (!unix_peer.empty())
    out.upstream_peer.assign(unix_peer);
  else if (found_ctx && ctx.has_upstream)
    out.upstream_peer.assign(upstream_peer(ctx.upstream));
  else
    out.upstream_peer.assign(unresolved);
  // (A unix upstream's path is in the message too: then nothing is missing.) A full-length line
  // without an upstream field may have been cut before it.
  out.upstream_cut = out.upstream_peer.empty() &&
                     (ctx.upstream_lost || out.request_cut || (!ctx.has_upstream && line.size() >= kNginxMaxLine));
  out.kind = unresolved.empty() ? classify(message, out.err_no) : LogKind::ResolveFailed;
  out.status = out.kind == LogKind::Timeout ? 504 : 502;
  out.http09 = starts_with(message, "upstream sent no valid HTTP/1.0 header");
  // After the response header was sent: Nginx reading the body ("reading upstream"), or writing it to
  // the client and reading on (ngx_http_upstream_process_non_buffered_request's "upstream prematurely
  // closed connection while sending to client"), or an upgraded connection (WebSocket) after its 101.
  out.mid_response = out.http09 || phase == "reading upstream" || phase == "sending to client" ||
                     phase == "proxying upgraded connection";
  out.lean = false;
  return true;
}

}  // namespace

std::string normalise_upstream_peer(std::string_view up) {
  try {
    return std::string(upstream_peer(up));
  } catch (...) {
    return {};
  }
}

bool parse_upstream_error(std::string_view line, LogLine& out) {
  try {
    return parse_impl(line, out);
  } catch (...) {  // only std::bad_alloc is possible; never propagate
    return false;
  }
}

bool is_error_log_line(std::string_view line) {
  int Y, M, D, h, m, s;
  return parse_stamp(line, Y, M, D, h, m, s);
}

std::optional<int64_t> error_line_wall_sec(std::string_view line) {
  int Y, M, D, h, m, s;
  if (!parse_stamp(line, Y, M, D, h, m, s)) return std::nullopt;
  return local_epoch(Y, M, D, h, m, s);
}

std::optional<LogLine> parse_upstream_error(std::string_view line) {
  try {
    std::optional<LogLine> out(std::in_place);
    if (!parse_impl(line, *out)) return std::nullopt;
    return out;
  } catch (...) {  // only std::bad_alloc is possible; never propagate
    return std::nullopt;
  }
}

void set_local_zone(const char* tz) {
  if (tz)
    setenv("TZ", tz, 1);
  else
    unsetenv("TZ");
  tzset();
  zone_generation.fetch_add(1, std::memory_order_relaxed);
}

const char* to_string(LogKind k) {
  switch (k) {
    case LogKind::ConnectRefused: return "connect_refused";
    case LogKind::ConnectFailed: return "connect_failed";
    case LogKind::PrematureClose: return "premature_close";
    case LogKind::Reset: return "reset";
    case LogKind::Timeout: return "timeout";
    case LogKind::NoLiveUpstreams: return "no_live_upstreams";
    case LogKind::InvalidResponse: return "invalid_response";
    case LogKind::OtherUpstream: return "other_upstream";
    case LogKind::ResolveFailed: return "resolve_failed";
  }
  return "other_upstream";
}

}  // namespace n502
