// Unit tests for the Nginx error-log line parser (user/logline.{hpp,cpp}).
#include <fmt/format.h>
#include <array>
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "logline.hpp"

#ifndef N502_FIXTURES_DIR
#error "N502_FIXTURES_DIR must be defined (path of tests/fixtures)"
#endif

using n502::LogKind;
using n502::LogLine;
using n502::parse_upstream_error;

namespace {

struct FixtureCase {
  std::string name;
  std::map<std::string, std::string> expect;  // empty when "none"
  bool none = false;
  std::string line;
  int lineno = 0;
};

std::vector<FixtureCase> load_fixture() {
  const std::string path = std::string(N502_FIXTURES_DIR) + "/error_log_lines.txt";
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::vector<FixtureCase> cases;
  std::string line;
  bool pending = false;
  FixtureCase cur;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.rfind("#>", 0) == 0) {
      REQUIRE_FALSE(pending);
      cur = FixtureCase{};
      std::istringstream ss(line.substr(2));
      std::string tok;
      while (ss >> tok) {
        if (tok == "#") break;  // trailing comment
        if (tok == "none") {
          cur.none = true;
          continue;
        }
        auto eq = tok.find('=');
        REQUIRE(eq != std::string::npos);
        std::string k = tok.substr(0, eq), v = tok.substr(eq + 1);
        if (k == "case")
          cur.name = v;
        else
          cur.expect[k] = v;
      }
      pending = true;
      continue;
    }
    if (line.empty() || line[0] == '#') continue;
    REQUIRE(pending);
    cur.line = line;
    cur.lineno = lineno;
    cases.push_back(cur);
    pending = false;
  }
  REQUIRE_FALSE(pending);
  return cases;
}

const FixtureCase& find_case(const std::vector<FixtureCase>& cases, const std::string& name) {
  for (const auto& c : cases)
    if (c.name == name) return c;
  FAIL("fixture case not found: " << name);
  return cases.front();  // unreachable
}

// Tiny deterministic PRNG (xorshift64*), so the fuzz-ish tests are reproducible.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed ? seed : 1) {}
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 2685821657736338717ULL;
  }
  size_t below(size_t n) { return n ? static_cast<size_t>(next() % n) : 0; }
};

// Checks invariants every successful parse must satisfy.
void check_invariants(const LogLine& l) {
  CHECK(l.status == (l.kind == LogKind::Timeout ? 504 : 502));
  CHECK((l.level == "error" || l.level == "crit" || l.level == "alert" || l.level == "emerg"));
  CHECK(l.err_no >= 0);
}

const std::string kRefused =
    "2026/11/23 02:47:09 [error] 2903#2903: *1 connect() failed (111: Connection refused) while connecting to "
    "upstream, client: 127.0.0.1, server: test.local, request: \"GET /refused HTTP/1.1\", upstream: "
    "\"http://127.0.0.1:18199/\", host: \"127.0.0.1:18080\"";

}  // namespace

TEST_CASE("logline: every captured nginx line parses as expected", "[logline][fixture]") {
  const auto cases = load_fixture();
  REQUIRE(cases.size() >= 50);
  std::set<std::string> kinds_seen;
  std::set<std::string> names;
  for (const auto& c : cases) {
    INFO("fixture line " << c.lineno << " case " << c.name << "\n  " << c.line);
    CHECK(names.insert(c.name).second);  // case names are unique
    auto r = parse_upstream_error(c.line);
    if (c.none) {
      CHECK_FALSE(r.has_value());
      continue;
    }
    REQUIRE(r.has_value());
    const LogLine& l = *r;
    check_invariants(l);
    kinds_seen.insert(n502::to_string(l.kind));
    CHECK(std::string(n502::to_string(l.kind)) == c.expect.at("kind"));
    CHECK(l.status == std::stoi(c.expect.at("status")));
    CHECK(l.pid == std::stoul(c.expect.at("pid")));
    CHECK(l.tid == l.pid);  // Linux nginx always logs PID#PID
    CHECK(l.conn == std::stoull(c.expect.at("conn")));
    CHECK(l.err_no == std::stoi(c.expect.at("errno")));
    CHECK(l.upstream_peer == c.expect.at("peer"));
    if (c.expect.count("scheme")) CHECK(l.scheme == c.expect.at("scheme"));
    if (c.expect.count("level")) CHECK(l.level == c.expect.at("level"));
    if (c.expect.count("client")) CHECK(l.client == c.expect.at("client"));
    if (c.expect.count("server")) CHECK(l.server == c.expect.at("server"));
    if (c.expect.count("host")) CHECK(l.host == c.expect.at("host"));
    CHECK(l.truncated == (c.expect.count("truncated") && c.expect.at("truncated") == "1"));
    CHECK(l.mid_response == (c.expect.count("mid") && c.expect.at("mid") == "1"));
    CHECK(l.http09 == (l.message.rfind("upstream sent no valid HTTP/1.0 header", 0) == 0));
    if (l.http09) CHECK(l.mid_response);
    // Structural checks that hold for every captured error line.
    CHECK_FALSE(l.message.empty());
    CHECK((l.message.find(", client: ") == std::string::npos || l.kind == LogKind::InvalidResponse));
    if (l.err_no != 0) CHECK_FALSE(l.err_text.empty());
    if (!l.truncated) {
      CHECK_FALSE(l.upstream.empty());
      CHECK(l.upstream.find("://") != std::string::npos);
      CHECK_FALSE(l.client.empty());
    }
    // Trailing CR (log copied from Windows) and LF are ignored.
    auto crlf = parse_upstream_error(c.line + "\r\n");
    REQUIRE(crlf.has_value());
    CHECK(crlf->kind == l.kind);
    CHECK(crlf->host == l.host);
  }
  // All eight kinds occur in real captured lines.
  CHECK(kinds_seen.size() == 8);
}

TEST_CASE("logline: all fields of a proxy connect() refused line", "[logline]") {
  auto r = parse_upstream_error(kRefused);
  REQUIRE(r);
  CHECK(r->level == "error");
  CHECK(r->pid == 2903);
  CHECK(r->tid == 2903);
  CHECK(r->conn == 1);
  CHECK(r->message == "connect() failed (111: Connection refused) while connecting to upstream");
  CHECK(r->err_no == 111);
  CHECK(r->err_text == "Connection refused");
  CHECK(r->client == "127.0.0.1");
  CHECK(r->server == "test.local");
  CHECK(r->request == "GET /refused HTTP/1.1");
  CHECK(r->upstream == "http://127.0.0.1:18199/");
  CHECK(r->host == "127.0.0.1:18080");
  CHECK(r->referrer.empty());
  CHECK(r->upstream_peer == "127.0.0.1:18199");
  CHECK(r->scheme == "http");
  CHECK(r->phase == "connecting to upstream");
  CHECK(r->kind == LogKind::ConnectRefused);
  CHECK(r->status == 502);
  CHECK_FALSE(r->truncated);
  CHECK_FALSE(r->mid_response);
}

TEST_CASE("logline: timestamp is read as local time", "[logline]") {
  const char* old = std::getenv("TZ");
  std::string saved = old ? old : "";
  n502::set_local_zone("UTC");
  auto utc = parse_upstream_error(kRefused);
  n502::set_local_zone("Asia/Kolkata");  // +05:30, no DST
  auto ist = parse_upstream_error(kRefused);
  n502::set_local_zone(old ? saved.c_str() : nullptr);
  REQUIRE(utc);
  REQUIRE(ist);
  CHECK(utc->wall_sec == 1795402029);  // 2026-11-23T02:47:09Z
  // Asia/Kolkata may be missing from a minimal tzdata; then mktime treats it as UTC.
  CHECK((ist->wall_sec == utc->wall_sec - 19800 || ist->wall_sec == utc->wall_sec));
}

TEST_CASE("logline: local time agrees with mktime second by second, across a DST change", "[logline]") {
  // The parser converts each minute once; every second must still come out
  // as mktime() would have it, including the minutes around a DST change.
  const char* old = std::getenv("TZ");
  std::string saved = old ? old : "";
  auto at = [](const std::string& stamp) {
    auto r = parse_upstream_error(stamp + kRefused.substr(19));
    REQUIRE(r);
    return r->wall_sec;
  };
  auto mk = [](int Y, int M, int D, int h, int m, int s) {
    std::tm tm{};
    tm.tm_year = Y - 1900, tm.tm_mon = M - 1, tm.tm_mday = D, tm.tm_hour = h, tm.tm_min = m, tm.tm_sec = s;
    tm.tm_isdst = -1;
    return static_cast<int64_t>(std::mktime(&tm));
  };
  for (const char* zone : {"UTC", "Europe/Berlin", "America/New_York"}) {
    n502::set_local_zone(zone);
    INFO(zone);
    // Spring forward in both zones' 2026 (Berlin 29 March 02:00, New York 8 March 02:00).
    for (auto [Y, M, D, h] : {std::array<int, 4>{2026, 3, 29, 1}, std::array<int, 4>{2026, 3, 8, 1},
                              std::array<int, 4>{2026, 11, 23, 2}}) {
      for (int m : {58, 59})
        for (int s : {0, 1, 30, 59})
          CHECK(at(fmt::format("{:04}/{:02}/{:02} {:02}:{:02}:{:02}", Y, M, D, h, m, s)) == mk(Y, M, D, h, m, s));
      CHECK(at(fmt::format("{:04}/{:02}/{:02} {:02}:00:00", Y, M, D, h + 2)) == mk(Y, M, D, h + 2, 0, 0));
    }
  }
  n502::set_local_zone(old ? saved.c_str() : nullptr);
}

TEST_CASE("logline: message text and quoted data from real lines", "[logline][fixture]") {
  const auto cases = load_fixture();

  SECTION("unix socket connect() to ... failed") {
    auto r = parse_upstream_error(find_case(cases, "fastcgi_unix_missing").line);
    REQUIRE(r);
    CHECK(r->level == "crit");
    CHECK(r->message ==
          "connect() to unix:/run/php/php8.2-fpm.sock failed (2: No such file or directory) while connecting to "
          "upstream");
    CHECK(r->err_text == "No such file or directory");
    CHECK(r->upstream == "fastcgi://unix:/run/php/php8.2-fpm.sock:");
    CHECK(r->upstream_peer == "unix:/run/php/php8.2-fpm.sock");
  }
  SECTION("invalid header with a fake context injected by the upstream") {
    auto r = parse_upstream_error(find_case(cases, "invalid_header_with_injected_fake_context").line);
    REQUIRE(r);
    CHECK(r->message.rfind("upstream sent invalid header: \"X-A: a, client: 6.6.6.6", 0) == 0);
    CHECK(r->phase == "reading response header from upstream");
    CHECK(r->client == "127.0.0.1");
    CHECK(r->request == "GET /inject HTTP/1.1");
    CHECK(r->upstream == "http://127.0.0.1:18120/inject");
    CHECK(r->host == "127.0.0.1:18080");
    CHECK(r->err_no == 0);
  }
  SECTION("referrer with a fake context injected by the client") {
    auto r = parse_upstream_error(find_case(cases, "referrer_with_fake_context").line);
    REQUIRE(r);
    CHECK(r->upstream == "http://127.0.0.1:18199/");
    CHECK(r->referrer == "http://example.com/a, client: 9.9.9.9, server: x, \"q\"");
    CHECK_FALSE(r->truncated);
  }
  SECTION("quotes inside request, upstream and host") {
    auto r = parse_upstream_error(find_case(cases, "quotes_in_uri_and_host").line);
    REQUIRE(r);
    CHECK(r->request == "GET /long/x\"y HTTP/1.1");
    CHECK(r->upstream == "http://127.0.0.1:18199/long/x\"y");
    CHECK(r->host == "h\"x");
  }
  SECTION("HTTP/0.9 request has no host field") {
    auto r = parse_upstream_error(find_case(cases, "http09_request_without_host").line);
    REQUIRE(r);
    CHECK(r->request == "GET /refused");
    CHECK(r->host.empty());
    CHECK(r->upstream == "http://127.0.0.1:18199/");
  }
  SECTION("line truncated by nginx at 2047 bytes") {
    const auto& c = find_case(cases, "long_uri_truncated_at_2047_bytes");
    CHECK(c.line.size() == 2047);
    auto r = parse_upstream_error(c.line);
    REQUIRE(r);
    CHECK(r->truncated);
    CHECK(r->kind == LogKind::ConnectRefused);
    CHECK(r->client == "127.0.0.1");
    CHECK(r->request.rfind("GET /long/aaaa", 0) == 0);
    CHECK(r->upstream.empty());
    CHECK(r->upstream_peer.empty());
  }
  SECTION("SSL handshake error text is not an errno") {
    auto r = parse_upstream_error(find_case(cases, "https_to_plaintext").line);
    REQUIRE(r);
    CHECK(r->err_no == 0);
    CHECK(r->phase == "SSL handshaking to upstream");
    CHECK(r->upstream_peer == "127.0.0.1:18103");
  }
  SECTION("no live upstreams names the upstream{} block") {
    auto r = parse_upstream_error(find_case(cases, "no_live_upstreams").line);
    REQUIRE(r);
    CHECK(r->upstream == "http://pool/pool");
    CHECK(r->upstream_peer == "pool");
  }
}

TEST_CASE("logline: wording not captured live (synthetic lines)", "[logline]") {
  // These errno/syscall combinations could not be provoked reliably on loopback; the wording follows
  // nginx's "%s() failed (%d: %s)" pattern seen in the captured lines.
  const std::string pre = "2026/11/23 02:50:01 [error] 1235#1235: *7 ";
  const std::string ctx =
      ", client: 10.0.0.1, server: example.org, request: \"POST /api HTTP/1.1\", upstream: "
      "\"http://10.0.0.2:8080/api\", host: \"example.org\"";
  struct Row {
    const char* msg;
    LogKind kind;
    int err;
  } rows[] = {
      {"send() failed (32: Broken pipe) while sending request to upstream", LogKind::Reset, 32},
      {"writev() failed (32: Broken pipe) while sending request to upstream", LogKind::Reset, 32},
      {"sendfile() failed (104: Connection reset by peer) while sending request to upstream", LogKind::Reset, 104},
      {"readv() failed (104: Connection reset by peer) while reading upstream", LogKind::Reset, 104},
      {"connect() failed (113: No route to host) while connecting to upstream", LogKind::ConnectFailed, 113},
      {"connect() failed (99: Cannot assign requested address) while connecting to upstream",
       LogKind::ConnectFailed, 99},
      {"connect() to unix:/run/app.sock failed (11: Resource temporarily unavailable) while connecting to upstream",
       LogKind::ConnectFailed, 11},
      {"recv() failed (110: Connection timed out) while reading response header from upstream",
       LogKind::OtherUpstream, 110},
      {"upstream timed out (110: Connection timed out) while SSL handshaking to upstream", LogKind::Timeout, 110},
  };
  for (const auto& row : rows) {
    INFO(row.msg);
    auto r = parse_upstream_error(pre + row.msg + ctx);
    REQUIRE(r);
    CHECK(r->kind == row.kind);
    CHECK(r->err_no == row.err);
    CHECK(r->message == row.msg);
    CHECK(r->conn == 7);
    CHECK(r->pid == 1235);
    CHECK(r->status == (row.kind == LogKind::Timeout ? 504 : 502));
    CHECK(r->upstream_peer == (std::string(row.msg).find("unix:") != std::string::npos ? "unix:/run/app.sock"
                                                                                        : "10.0.0.2:8080"));
  }
  SECTION("line without *conn") {
    auto r = parse_upstream_error(
        "2026/11/23 02:50:01 [error] 1235#1236: upstream timed out (110: Connection timed out) while reading "
        "upstream, client: 10.0.0.1, server: x, request: \"GET / HTTP/1.1\", upstream: \"grpc://[::1]:50051\", "
        "host: \"x\"");
    REQUIRE(r);
    CHECK(r->conn == 0);
    CHECK(r->tid == 1236);
    CHECK(r->upstream_peer == "[::1]:50051");
    CHECK(r->mid_response);
  }
  SECTION("subrequest field") {
    auto r = parse_upstream_error(
        "2026/11/23 02:50:01 [error] 9#9: *3 upstream prematurely closed connection while reading response "
        "header from upstream, client: 1.2.3.4, server: a, request: \"GET / HTTP/1.1\", subrequest: \"/auth\", "
        "upstream: \"http://127.0.0.1:9000/auth\", host: \"a\", referrer: \"http://a/\"");
    REQUIRE(r);
    CHECK(r->kind == LogKind::PrematureClose);
    CHECK(r->upstream_peer == "127.0.0.1:9000");
    CHECK(r->referrer == "http://a/");
    CHECK_FALSE(r->truncated);
  }
  SECTION("8 KB request line") {
    std::string uri(8192, 'b');
    auto r = parse_upstream_error(pre + "connect() failed (111: Connection refused) while connecting to upstream" +
                                  ", client: 10.0.0.1, server: s, request: \"GET /" + uri +
                                  " HTTP/1.1\", upstream: \"http://10.0.0.2:80/" + uri + "\", host: \"s\"");
    REQUIRE(r);
    CHECK(r->request.size() == 8192 + 14);
    CHECK(r->upstream_peer == "10.0.0.2:80");
    CHECK(r->host == "s");
  }
}

TEST_CASE("logline: lines that are not upstream errors", "[logline][junk]") {
  const char* not_upstream[] = {
      "",
      "\n",
      "2026/11/23",
      "2026/11/23 02:47:04 [notice] 2901#2901: using the \"epoll\" event method",
      "2026/11/23 02:48:19 [notice] 3852#3852: signal process started",
      "2026/11/23 02:47:28 [error] 2903#2903: *82 open() \"/tmp/ngx/www/x.html\" failed (2: No such file or "
      "directory), client: 127.0.0.1, server: test.local, request: \"GET /x.html HTTP/1.1\", host: \"h\"",
      "2026/11/23 02:47:04 [emerg] 2901#2901: bind() to 127.0.0.1:80 failed (98: Address already in use)",
      // level filter: warn/info lines that mention an upstream are not 502s
      "2026/11/23 02:48:23 [warn] 3854#3854: *85 upstream server temporarily disabled while connecting to "
      "upstream, client: 127.0.0.1, server: t, request: \"GET /pool HTTP/1.1\", upstream: "
      "\"http://127.0.0.1:18197/pool\", host: \"h\"",
      "2026/11/23 02:49:01 [info] 3854#3854: *120 client sent invalid request while reading client request line, "
      "client: 127.0.0.1, server: test.local, request: \"GET /refused\", upstream: \"http://6.6.6.6/ HTTP/1.1\"",
      // not nginx at all
      "[Mon Nov 23 02:47:09.123456 2026] [proxy:error] [pid 1234] (111)Connection refused: AH00957: connect to "
      "upstream failed",
      "Nov 23 02:47:09 host nginx[2903]: connect() failed (111: Connection refused) while connecting to upstream",
      "{\"time\":\"2026-11-23T02:47:09Z\",\"level\":\"error\",\"msg\":\"upstream timed out\"}",
      "127.0.0.1 - - [23/Nov/2026:02:47:09 +0000] \"GET / HTTP/1.1\" 502 166 \"-\" \"curl/7.88.1\"",
      // malformed headers
      "2026/13/23 02:47:09 [error] 1#1: *1 upstream timed out (110: x) while connecting to upstream",
      "2026/11/23 25:47:09 [error] 1#1: *1 upstream timed out (110: x) while connecting to upstream",
      "2026/11/23 02:47:09 [bogus] 1#1: *1 upstream timed out (110: x) while connecting to upstream",
      "2026/11/23 02:47:09 [error] 99999999999#1: *1 upstream timed out (110: x) while connecting to upstream",
      "2026/11/23 02:47:09 [error] #1: *1 upstream timed out (110: x) while connecting to upstream",
      "2026/11/23 02:47:09 [error] 1#: *1 upstream timed out (110: x) while connecting to upstream",
      "2026/11/23 02:47:09 [error 1#1: *1 upstream timed out (110: x) while connecting to upstream",
      "2026-11-23 02:47:09 [error] 1#1: *1 upstream timed out (110: x) while connecting to upstream",
  };
  for (const char* s : not_upstream) {
    INFO(s);
    CHECK_FALSE(parse_upstream_error(s).has_value());
  }
}

TEST_CASE("logline: FastCGI's stderr is no 502, whatever it says", "[logline]") {
  // ngx_http_fastcgi_module logs every stderr record at [error] and goes on: the client gets php-fpm's
  // own answer (its 404 for "Primary script unknown"). Parsed as a 502 such a line took the connection
  // of the request's real 502 line, which then had none.
  const std::string ctx =
      " while reading response header from upstream, client: 10.0.0.1, server: shop.example, request: \"GET "
      "/index.php HTTP/1.1\", upstream: \"fastcgi://unix:/run/php/php8.2-fpm.sock:\", host: \"shop.example\"";
  const char* messages[] = {
      "FastCGI sent in stderr: \"Primary script unknown\"",
      "FastCGI sent in stderr: \"PHP message: PHP Warning:  Undefined variable $x in /var/www/index.php on line "
      "3\"",
      // The record's text is the application's: a fake context in it changes nothing.
      "FastCGI sent in stderr: \"PHP message: upstream prematurely closed connection, client: 6.6.6.6, server: "
      "x\"",
  };
  for (const char* m : messages) {
    INFO(m);
    CHECK_FALSE(parse_upstream_error(std::string("2026/11/23 02:50:01 [error] 1235#1235: *7 ") + m + ctx));
  }
  // The request's real 502 line is one.
  auto r = parse_upstream_error("2026/11/23 02:50:01 [error] 1235#1235: *7 upstream prematurely closed FastCGI "
                                "stdout" + ctx);
  REQUIRE(r);
  CHECK(r->upstream_peer == "unix:/run/php/php8.2-fpm.sock");
}

TEST_CASE("logline: malformed responses worded otherwise than \"upstream sent\" are invalid_response", "[logline]") {
  // The nginx 1.22 texts (grpc and memcached modules).
  const std::string pre = "2026/11/23 02:50:01 [error] 1235#1235: *7 ";
  auto ctx = [](const std::string& m) {
    return fmt::format(", client: 10.0.0.1, server: example.org, request: \"GET /k HTTP/1.1\", upstream: "
                       "\"{}://10.0.0.2:{}\", host: \"example.org\"",
                       m.rfind("memcached", 0) == 0 ? "memcached" : "grpc",
                       m.rfind("memcached", 0) == 0 ? 11211 : 50051);
  };
  const char* messages[] = {
      "upstream rejected request with error 2 while reading response header from upstream",
      "upstream rejected request with error 0 while reading upstream",
      "upstream violated stream flow control, received 70000 data frame with window 65535 while reading upstream",
      "memcached sent invalid key in response \"VALUE x 0 5\" for key \"y\" while reading response header from "
      "upstream",
      "memcached sent invalid flags in response \"VALUE y z 5\" for key \"y\" while reading response header from "
      "upstream",
      "memcached sent invalid length in response \"VALUE y 0 z\" for key \"y\" while reading response header "
      "from upstream",
      "memcached sent invalid response: \"ERROR\" while reading response header from upstream",
      "memcached sent invalid trailer while reading upstream",
  };
  for (const char* m : messages) {
    INFO(m);
    auto r = parse_upstream_error(pre + m + ctx(m));
    REQUIRE(r);
    CHECK(r->upstream_peer.rfind("10.0.0.2:", 0) == 0);
    CHECK(r->kind == LogKind::InvalidResponse);
    CHECK(r->status == 502);
  }
  // An [alert] after which ngx_http_upstream_process_header answers 500 (NGX_ERROR), not 502.
  CHECK_FALSE(parse_upstream_error(
      "2026/11/23 02:50:01 [alert] 1235#1235: *7 invalid header after joining FastCGI records while reading "
      "response header from upstream, client: 10.0.0.1, server: example.org, request: \"GET / HTTP/1.1\", "
      "upstream: \"fastcgi://127.0.0.1:9000\", host: \"example.org\""));
}

TEST_CASE("logline: a connection Nginx could not set up is its 500, not a 502", "[logline]") {
  // ngx_event_connect_peer returns NGX_ERROR before any connect(): ngx_http_upstream_connect
  // finalizes the request with 500.
  const std::string ctx =
      " while connecting to upstream, client: 10.0.0.1, server: example.org, request: \"GET / HTTP/1.1\", "
      "upstream: \"http://10.0.0.2:8080/\", host: \"example.org\"";
  const char* lines[] = {
      "[alert] 1235#1235: *7 socket() failed (24: Too many open files)",
      "[alert] 1235#1235: *7 1024 worker_connections are not enough",
      "[crit] 1235#1235: *7 bind(10.0.0.5) failed (99: Cannot assign requested address)",
      "[alert] 1235#1235: *7 setsockopt(SO_RCVBUF) failed (22: Invalid argument)",
      "[alert] 1235#1235: *7 ioctl(FIONBIO) failed (9: Bad file descriptor)",
      "[alert] 1235#1235: *7 epoll_ctl(EPOLL_CTL_ADD, 12) failed (12: Cannot allocate memory)",
      "[alert] 1235#1235: *7 setsockopt(SO_KEEPALIVE) failed, ignored (22: Invalid argument)",
  };
  for (const char* l : lines) {
    INFO(l);
    CHECK_FALSE(parse_upstream_error(std::string("2026/11/23 02:50:01 ") + l + ctx));
  }
  // A connect() that failed at once is Nginx's 502 (NGX_DECLINED: the next server, or 502).
  auto r = parse_upstream_error("2026/11/23 02:50:01 [error] 1235#1235: *7 connect() to 10.0.0.2:8080 failed (113: "
                                "No route to host)" + ctx);
  REQUIRE(r);
  CHECK(r->kind == LogKind::ConnectFailed);
  CHECK(r->status == 502);
}

TEST_CASE("logline: failures after the response header was sent are mid-response", "[logline]") {
  // The client got the response's header (or a WebSocket's 101), then a cut: no 502/504.
  const std::string ctx =
      ", client: 10.0.0.1, server: example.org, request: \"GET /ws HTTP/1.1\", upstream: "
      "\"http://10.0.0.2:8080/ws\", host: \"example.org\"";
  struct Row {
    const char* msg;
    LogKind kind;
  } rows[] = {
      // ngx_http_upstream_process_non_buffered_request, called from the client's write handler
      {"upstream prematurely closed connection while sending to client", LogKind::PrematureClose},
      // ngx_http_upstream_process_upgraded
      {"recv() failed (104: Connection reset by peer) while proxying upgraded connection", LogKind::Reset},
      {"upstream timed out (110: Connection timed out) while proxying upgraded connection", LogKind::Timeout},
      {"upstream prematurely closed connection while reading upstream", LogKind::PrematureClose},
  };
  for (const auto& row : rows) {
    INFO(row.msg);
    auto r = parse_upstream_error(std::string("2026/11/23 02:50:01 [error] 1235#1235: *7 ") + row.msg + ctx);
    REQUIRE(r);
    CHECK(r->kind == row.kind);
    CHECK(r->mid_response);
    CHECK_FALSE(r->http09);
  }
  auto before = parse_upstream_error(std::string("2026/11/23 02:50:01 [error] 1235#1235: *7 upstream prematurely "
                                                 "closed connection while reading response header from upstream") +
                                     ctx);
  REQUIRE(before);
  CHECK_FALSE(before->mid_response);
}

TEST_CASE("logline: junk and hostile input never crashes", "[logline][junk]") {
  SECTION("every prefix of every captured line") {
    for (const auto& c : load_fixture()) {
      for (size_t n = 0; n <= c.line.size(); ++n) {
        auto r = parse_upstream_error(std::string_view(c.line).substr(0, n));
        if (r) check_invariants(*r);
        if (n < 44) CHECK_FALSE(r.has_value());  // no message yet
      }
    }
  }
  SECTION("embedded NUL and high bytes") {
    std::string s = kRefused;
    s.insert(60, std::string("\0\xff\x01\x80", 4));
    auto r = parse_upstream_error(s);
    REQUIRE(r);  // still an upstream error line; the junk ends up in the message
    CHECK(r->message.find('\0') != std::string::npos);
    CHECK(r->upstream_peer == "127.0.0.1:18199");
    // The real "client sent invalid request" line that carried raw bytes (level info -> ignored).
    CHECK_FALSE(parse_upstream_error(std::string_view(
        "2026/11/23 02:49:01 [info] 3854#3854: *127 client sent invalid request while reading client request "
        "line, client: 127.0.0.1, server: test.local, request: \"GET /long/a\xff\x01"
        "b HTTP/1.1\"")));
  }
  SECTION("random bytes") {
    Rng rng(42);
    for (int i = 0; i < 2000; ++i) {
      std::string s(rng.below(300), '\0');
      for (auto& ch : s) ch = static_cast<char>(rng.next() & 0xff);
      auto r = parse_upstream_error(s);
      if (r) check_invariants(*r);
    }
  }
  SECTION("mutated real lines") {
    const auto cases = load_fixture();
    Rng rng(7);
    const char alphabet[] = "\",: ()[]#*/\\\x00\xff" "0123456789aclientupstream";
    for (int i = 0; i < 20000; ++i) {
      std::string s = cases[rng.below(cases.size())].line;
      int edits = 1 + static_cast<int>(rng.below(6));
      for (int e = 0; e < edits && !s.empty(); ++e) {
        size_t pos = rng.below(s.size());
        switch (rng.below(4)) {
          case 0: s[pos] = alphabet[rng.below(sizeof alphabet - 1)]; break;
          case 1: s.erase(pos, 1 + rng.below(20)); break;
          case 2: s.insert(pos, 1, alphabet[rng.below(sizeof alphabet - 1)]); break;
          default: s.insert(pos, ", client: "); break;
        }
      }
      auto r = parse_upstream_error(s);
      if (r) check_invariants(*r);
    }
  }
  SECTION("many fake contexts and a 1 MB line") {
    std::string s = "2026/11/23 02:47:09 [error] 1#1: *1 upstream sent invalid header: \"";
    for (int i = 0; i < 5000; ++i) s += "x, client: 1.1.1.1, server: a, request: \"";
    s += "\" while reading response header from upstream";
    auto r = parse_upstream_error(s);
    REQUIRE(r);
    CHECK(r->kind == LogKind::InvalidResponse);
    std::string big = kRefused + ", referrer: \"" + std::string(1 << 20, 'r') + "\"";
    auto rb = parse_upstream_error(big);
    REQUIRE(rb);
    CHECK(rb->referrer.size() == (1u << 20));
  }
}

TEST_CASE("logline: normalise_upstream_peer", "[logline]") {
  using n502::normalise_upstream_peer;
  CHECK(normalise_upstream_peer("http://127.0.0.1:8080/") == "127.0.0.1:8080");
  CHECK(normalise_upstream_peer("http://127.0.0.1:8080/a/b?c=d") == "127.0.0.1:8080");
  CHECK(normalise_upstream_peer("http://[::1]:8080/") == "[::1]:8080");
  CHECK(normalise_upstream_peer("grpc://127.0.0.1:50051") == "127.0.0.1:50051");
  CHECK(normalise_upstream_peer("uwsgi://127.0.0.1:3031") == "127.0.0.1:3031");
  CHECK(normalise_upstream_peer("http://unix:/tmp/x.sock:/") == "unix:/tmp/x.sock");
  CHECK(normalise_upstream_peer("http://unix:/tmp/x.sock:/a/b") == "unix:/tmp/x.sock");
  CHECK(normalise_upstream_peer("fastcgi://unix:/run/php/php8.2-fpm.sock:") == "unix:/run/php/php8.2-fpm.sock");
  CHECK(normalise_upstream_peer("fastcgi://127.0.0.1:9000") == "127.0.0.1:9000");
  CHECK(normalise_upstream_peer("http://backend/x") == "backend");
  CHECK(normalise_upstream_peer("http://[::1") == "[::1");
  CHECK(normalise_upstream_peer("") == "");
  CHECK(normalise_upstream_peer("://") == "");
}

TEST_CASE("logline: to_string", "[logline]") {
  CHECK(std::string(n502::to_string(LogKind::ConnectRefused)) == "connect_refused");
  CHECK(std::string(n502::to_string(LogKind::ConnectFailed)) == "connect_failed");
  CHECK(std::string(n502::to_string(LogKind::PrematureClose)) == "premature_close");
  CHECK(std::string(n502::to_string(LogKind::Reset)) == "reset");
  CHECK(std::string(n502::to_string(LogKind::Timeout)) == "timeout");
  CHECK(std::string(n502::to_string(LogKind::NoLiveUpstreams)) == "no_live_upstreams");
  CHECK(std::string(n502::to_string(LogKind::InvalidResponse)) == "invalid_response");
  CHECK(std::string(n502::to_string(LogKind::OtherUpstream)) == "other_upstream");
}

namespace {

// Every field of a LogLine, for comparing two parses.
std::string fields(const LogLine& l) {
  return fmt::format("{}|{}|{}#{}|*{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}{}{}{}{}", l.wall_sec, l.level, l.pid,
                     l.tid, l.conn, l.message, l.err_no, l.err_text, l.client, l.server, l.request, l.upstream,
                     l.host, l.upstream_peer, n502::to_string(l.kind), l.status, l.scheme, l.phase, l.referrer,
                     l.truncated, l.request_cut, l.upstream_cut, l.mid_response, l.lean);
}

}  // namespace

TEST_CASE("logline: parsing into a used LogLine gives what a new one gets", "[logline]") {
  // The tool parses into lines it has explained: every field must be set by
  // every parse (and listed in fields() above). Each line is parsed into a
  // LogLine that held each of the others, with and without a context, errno,
  // referrer, scheme or unix peer.
  const std::string full =
      "2026/11/23 02:47:09 [error] 1235#1235: *7 readv() failed (104: Connection reset by peer) while reading "
      "upstream, client: 10.0.0.1, server: shop.example, request: \"GET /a/very/long/path/to/a/product?id=42 "
      "HTTP/1.1\", subrequest: \"/sub\", upstream: \"fastcgi://unix:/run/php/php8.2-fpm.sock:\", host: "
      "\"shop.example\", referrer: \"https://shop.example/from/somewhere/else\"";
  std::vector<std::string> lines{
      full,
      // no context at all
      "2026/11/23 02:47:10 [error] 1235#1235: *9 upstream timed out (110: Connection timed out) while reading "
      "response header from upstream",
      std::string(kRefused) + ", referrer: \"x\""};
  for (const FixtureCase& c : load_fixture()) lines.push_back(c.line);
  for (size_t cut : {40, 120, 200, 260}) lines.push_back(full.substr(0, cut));
  std::vector<std::string> parsing;
  for (const std::string& line : lines)
    if (parse_upstream_error(line)) parsing.push_back(line);
  REQUIRE(parsing.size() > 10);
  for (const std::string& before : parsing) {
    LogLine used;
    REQUIRE(parse_upstream_error(before, used));
    used.lean = true;
    const std::string held = fields(used);
    for (const std::string& line : lines) {
      LogLine again;
      REQUIRE(parse_upstream_error(before, again));
      again.lean = true;
      auto fresh = parse_upstream_error(line);
      bool ok = parse_upstream_error(line, again);
      REQUIRE(ok == fresh.has_value());
      if (ok && fields(again) != fields(*fresh)) {
        INFO("held: " << before);
        INFO("then: " << line);
        CHECK(fields(again) == fields(*fresh));
      }
    }
    CHECK(fields(used) == held);
  }
}

TEST_CASE("any error-log line's stamp, as local time", "[logline]")
{
    const char *old = getenv("TZ");
    std::string saved = old ? old : "";
    n502::set_local_zone("UTC");
    std::tm tm{};
    tm.tm_year = 2026 - 1900;
    tm.tm_mon = 11;
    tm.tm_mday = 8;
    tm.tm_hour = 2;
    tm.tm_min = 52;
    tm.tm_sec = 44;
    const int64_t utc = timegm(&tm);
    CHECK(n502::error_line_wall_sec("2026/12/08 02:52:44 [notice] 1#1: start worker processes") == utc);
    n502::set_local_zone("<P02>-02");
    CHECK(n502::error_line_wall_sec("2026/12/08 02:52:44 [notice] 1#1: start worker processes") == utc - 7200);
    n502::set_local_zone(old ? saved.c_str() : nullptr);
    CHECK_FALSE(n502::error_line_wall_sec("08/Dec/2026:02:52:44 +0000 GET /"));
    CHECK_FALSE(n502::error_line_wall_sec(""));
}

TEST_CASE("logline: the stream module's proxy lines are no 502/504", "[logline]")
{
    CHECK_FALSE(n502::parse_upstream_error(
        "2026/11/23 02:50:01 [error] 1235#1235: *7 connect() failed (111: Connection refused) while connecting to "
        "upstream, client: 10.0.0.1, server: 0.0.0.0:5432, upstream: \"127.0.0.1:5433\", bytes from/to client:0/0, "
        "bytes from/to upstream:0/0"));
    CHECK_FALSE(n502::parse_upstream_error(
        "2026/11/23 02:50:01 [error] 1235#1235: *7 upstream timed out (110: Connection timed out) while proxying "
        "connection, udp client: 10.0.0.1, server: 0.0.0.0:53, upstream: \"127.0.0.1:5353\", bytes from/to "
        "client:40/0, bytes from/to upstream:0/40"));
    // (an HTTP line whose request merely mentions it is one)
    CHECK(n502::parse_upstream_error(
        "2026/11/23 02:50:01 [error] 1235#1235: *7 connect() failed (111: Connection refused) while connecting to "
        "upstream, client: 10.0.0.1, server: localhost, request: \"GET /x?q=, bytes from/to upstream:0/0 "
        "HTTP/1.1\", upstream: \"http://127.0.0.1:8080/x\", host: \"localhost\""));
}

TEST_CASE("logline: a request holding '\", upstream: \"' cannot stand for the fields after it", "[logline]")
{
    // (Nginx takes spaces and quotes in a URI: the request line is the client's text.)
    auto l = n502::parse_upstream_error(
        "2026/11/23 02:50:01 [error] 1235#1235: *7 connect() failed (111: Connection refused) while connecting to "
        "upstream, client: 10.0.0.1, server: localhost, request: \"GET /x\", upstream: \"http://6.6.6.6:80/ "
        "HTTP/1.1\", upstream: \"http://10.0.0.2:8080/x\", host: \"localhost\"");
    REQUIRE(l);
    CHECK(l->upstream_peer == "10.0.0.2:8080");
    CHECK(l->request == "GET /x\", upstream: \"http://6.6.6.6:80/ HTTP/1.1");
    auto h = n502::parse_upstream_error(
        "2026/11/23 02:50:01 [error] 1235#1235: *7 connect() failed (111: Connection refused) while connecting to "
        "upstream, client: 10.0.0.1, server: localhost, request: \"GET /x\", host: \"y HTTP/1.1\", upstream: "
        "\"http://10.0.0.2:8080/x\", host: \"s\"");
    REQUIRE(h);
    CHECK(h->upstream_peer == "10.0.0.2:8080");
    CHECK(h->host == "s");
    // An HTTP/0.9 request has no version: the first end, as before.
    auto old = n502::parse_upstream_error(
        "2026/11/23 02:50:01 [error] 1235#1235: *7 connect() failed (111: Connection refused) while connecting to "
        "upstream, client: 10.0.0.1, server: localhost, request: \"GET /x\", upstream: \"http://10.0.0.2:8080/x\"");
    REQUIRE(old);
    CHECK(old->upstream_peer == "10.0.0.2:8080");
    CHECK(old->request == "GET /x");
}
