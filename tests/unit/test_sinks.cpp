// Sinks: JSON Lines stay valid whatever the log line contained.
#include <catch2/catch.hpp>
#include <cstdio>
#include <string>

#include "sinks.hpp"

using namespace n502;

TEST_CASE("json_escape escapes quotes, control bytes and invalid UTF-8", "[sinks]")
{
    CHECK(json_escape("a\"b\\c") == "\"a\\\"b\\\\c\"");
    CHECK(json_escape("x\ny\t\x01") == "\"x\\ny\\t\\u0001\"");
    CHECK(json_escape("caf\xc3\xa9") == "\"caf\xc3\xa9\"");
    CHECK(json_escape("bad\xff") == "\"bad\\ufffd\"");
    CHECK(json_escape("cut\xe2\x82") == "\"cut\\ufffd\\ufffd\"");
}

TEST_CASE("a verdict renders as one JSON object with the contract's fields", "[sinks]")
{
    Verdict v;
    v.ts_real_ns = 1'700'000'000'000'000'000LL;
    v.nginx_pid = 10;
    v.upstream = "127.0.0.1:8080";
    v.request = "GET /\"quoted\" HTTP/1.1";
    v.cause = "upstream_killed";
    v.confidence = "high";
    v.explanation = "e";
    v.upstream_pid = 42;
    v.upstream_comm = "python3";
    Evidence e;
    e.ts = 5;
    e.event = "signal";
    e.pid = 7;
    e.sig = 9;
    e.target_pid = 42;
    v.evidence.push_back(e);
    Evidence x;
    x.ts = 6;
    x.event = "exit";
    x.pid = 42;
    x.exit_signal = 9;
    v.evidence.push_back(x);
    std::string j = verdict_json(v, Timebase(0));
    CHECK(j.find('\n') == std::string::npos);
    for (const char *k : {"\"type\":\"verdict\"", "\"ts\":\"2023-11-14T22:13:20.000000Z\"", "\"status\":502",
                          "\"nginx_pid\":10", "\"upstream\":\"127.0.0.1:8080\"", "\"cause\":\"upstream_killed\"",
                          "\"confidence\":\"high\"", "\"upstream_pid\":42", "\"upstream_comm\":\"python3\"",
                          "\"sig\":9,\"signal\":\"SIGKILL\"", "\"target_pid\":42", "\"exit_code\":null,\"exit_signal\":9",
                          "GET /\\\"quoted\\\" HTTP/1.1"})
        CHECK(j.find(k) != std::string::npos);
    v.upstream_pid.reset();
    CHECK(verdict_json(v, Timebase(0)).find("\"upstream_pid\":null,\"upstream_comm\":null") != std::string::npos);
}
