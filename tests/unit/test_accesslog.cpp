// Access-log lines: which are 502/504s, and how they are parsed.
#include <catch2/catch.hpp>

#include "accesslog.hpp"

using namespace n502;

TEST_CASE("combined-format 502 and 504 lines parse", "[accesslog]")
{
    auto a = parse_access_error(
        R"(127.0.0.1 - - [23/Nov/2026:03:19:41 +0000] "GET /x?y=1 HTTP/1.1" 502 157 "-" "Python-urllib/3.11")");
    REQUIRE(a);
    CHECK(a->client == "127.0.0.1");
    CHECK(a->request == "GET /x?y=1 HTTP/1.1");
    CHECK(a->status == 502);
    CHECK(a->wall_sec == 1795403981);
    auto b = parse_access_error(R"(::1 - bob [23/Nov/2026:04:19:41 +0100] "POST / HTTP/2.0" 504 0)");
    REQUIRE(b);
    CHECK(b->status == 504);
    CHECK(b->wall_sec == 1795403981); // the offset is applied
}

TEST_CASE("other statuses and junk are not access errors", "[accesslog]")
{
    CHECK_FALSE(parse_access_error(R"(127.0.0.1 - - [23/Nov/2026:03:19:41 +0000] "GET / HTTP/1.1" 200 12 "-" "x")"));
    CHECK_FALSE(parse_access_error(R"(127.0.0.1 - - [23/Nov/2026:03:19:41 +0000] "GET / HTTP/1.1" 5020 1)"));
    CHECK_FALSE(parse_access_error(R"(127.0.0.1 - - [23/Bad/2026:03:19:41 +0000] "GET / HTTP/1.1" 502 1)"));
    CHECK_FALSE(parse_access_error(R"(127.0.0.1 - - [23/Nov/2026:03:19:41 +0000] "GET / HTTP/1.1)"));
    CHECK_FALSE(parse_access_error(""));
    CHECK_FALSE(parse_access_error("\x01\x02\xff garbage [ ] \" 502"));
    CHECK_FALSE(parse_access_error("2026/11/23 03:00:00 [error] 1#1: *1 connect() failed"));
}

TEST_CASE("the access log's \\xHH escapes are undone: the request as Nginx received it", "[accesslog]")
{
    CHECK(unescape_access(R"(GET /caf\xC3\xA9/\x22q\x22 HTTP/1.1)") == "GET /caf\xc3\xa9/\"q\" HTTP/1.1");
    CHECK(unescape_access(R"(\x5Cx22)") == "\\x22"); // an escaped backslash stays one
    CHECK(unescape_access(R"(\x7f\x1B)") == "\x7f\x1b");
    CHECK(unescape_access(R"(a\x4 \xZZ \x)") == R"(a\x4 \xZZ \x)"); // not escapes: as they are
    CHECK(unescape_access("") == "");
    auto a = parse_access_error(R"(127.0.0.1 - - [23/Nov/2026:03:19:41 +0000] "GET /\x22a\x22 HTTP/1.1" 502 157)");
    REQUIRE(a);
    CHECK(a->request == "GET /\"a\" HTTP/1.1");
}
