// Sinks: JSON Lines stay valid whatever the log line contained.
#include <catch2/catch.hpp>
#include <cstdio>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <string>
#include <unistd.h>

#include "sinks.hpp"
#include "timebase.hpp"

using namespace n502;

TEST_CASE("json_escape escapes quotes, control bytes and invalid UTF-8", "[sinks]")
{
    CHECK(json_escape("a\"b\\c") == "\"a\\\"b\\\\c\"");
    CHECK(json_escape("x\ny\t\x01") == "\"x\\ny\\t\\u0001\"");
    CHECK(json_escape("caf\xc3\xa9") == "\"caf\xc3\xa9\"");
    CHECK(json_escape("bad\xff") == "\"bad\\ufffd\"");
    CHECK(json_escape("cut\xe2\x82") == "\"cut\\ufffd\\ufffd\"");
    // Overlong forms and surrogates are not UTF-8 either (a strict reader refuses the line).
    CHECK(json_escape("\xc0\xaf") == "\"\\ufffd\\ufffd\"");
    CHECK(json_escape("\xed\xa0\x80") == "\"\\ufffd\\ufffd\\ufffd\"");
}

// A verdict of the upstream_killed kind, with the given request and upstream process name.
static Verdict sample_verdict(const std::string &request, const std::string &comm)
{
    Verdict v;
    v.ts_real_ns = 1'700'000'000'000'000'000LL;
    v.nginx_pid = 10;
    v.upstream = "127.0.0.1:8080";
    v.request = request;
    v.cause = "upstream_killed";
    v.confidence = "high";
    v.explanation = "e";
    v.upstream_pid = 42;
    v.upstream_comm = comm;
    return v;
}

// The text sink's rendering of one verdict.
static std::string as_text(const Verdict &v)
{
    char *buf = nullptr;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    REQUIRE(f);
    {
        TextSink sink(f, Timebase(0));
        sink.verdict(v);
    }
    fclose(f);
    std::string text(buf, len);
    free(buf);
    return text;
}

TEST_CASE("a verdict renders as one JSON object with the contract's fields", "[sinks]")
{
    Verdict v = sample_verdict("GET /\"quoted\" HTTP/1.1", "python3");
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
    for (const char *k : {"\"type\":\"verdict\"", "\"ts\":\"2023-11-14T22:13:20.000000Z\"", "\"status\":502,\"client_got\":\"status\"",
                          "\"nginx_pid\":10", "\"upstream\":\"127.0.0.1:8080\"", "\"cause\":\"upstream_killed\"",
                          "\"confidence\":\"high\"", "\"upstream_pid\":42", "\"upstream_comm\":\"python3\"",
                          "\"sig\":9,\"signal\":\"SIGKILL\"", "\"target_pid\":42", "\"exit_code\":null,\"exit_signal\":9",
                          "GET /\\\"quoted\\\" HTTP/1.1"})
        CHECK(j.find(k) != std::string::npos);
    v.upstream_pid.reset();
    CHECK(verdict_json(v, Timebase(0)).find("\"upstream_pid\":null,\"upstream_comm\":null") != std::string::npos);
    // When its line was logged: null when not known (a verdict made outside the engine).
    CHECK(j.find("\"ts\":\"2023-11-14T22:13:20.000000Z\",\"logged\":null,") != std::string::npos);
    v.logged_real_ns = v.ts_real_ns - 750'000'000;
    CHECK(verdict_json(v, Timebase(0)).find("\"logged\":\"2023-11-14T22:13:19.250000Z\"") != std::string::npos);
}

TEST_CASE("the text output's time is the failure's: when its line was logged, not when the verdict was made", "[sinks]")
{
    Verdict v = sample_verdict("GET / HTTP/1.1", "python3");
    auto header_time = [](const Verdict &x) {
        std::string text = as_text(x);
        auto sp = text.find(' ');
        return text.substr(sp + 1, text.find(' ', sp + 1) - sp - 1);
    };
    CHECK(header_time(v) == clock_local(v.ts_real_ns));
    v.logged_real_ns = v.ts_real_ns - 2'500'000'000LL;
    CHECK(header_time(v) == clock_local(v.logged_real_ns));
    CHECK(header_time(v) != clock_local(v.ts_real_ns));
}

TEST_CASE("text output shows control characters and stray bytes as \\xHH, UTF-8 as it is", "[sinks]")
{
    CHECK(visible_text("GET /\x1b]0;owned\x07 HTTP/1.1") == "GET /\\x1B]0;owned\\x07 HTTP/1.1");
    CHECK(visible_text("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80") == "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    CHECK(visible_text("c1 \xc2\x9b[2J del \x7f") == "c1 \\xC2\\x9B[2J del \\x7F");
    CHECK(visible_text("lone \x9b and cut \xe2\x82") == "lone \\x9B and cut \\xE2\\x82");
    CHECK(visible_text("tab\there\nforged line") == "tab\\x09here\\x0Aforged line");
    // Overlong forms (here U+009B, CSI, in three bytes), surrogates, past U+10FFFF: not UTF-8.
    CHECK(visible_text("\xe0\x82\x9b") == "\\xE0\\x82\\x9B");
    CHECK(visible_text("\xc0\xaf") == "\\xC0\\xAF");
    CHECK(visible_text("\xed\xa0\x80") == "\\xED\\xA0\\x80");
    CHECK(visible_text("\xf4\x90\x80\x80") == "\\xF4\\x90\\x80\\x80");

    // A whole verdict, as the text sink writes it.
    Verdict v = sample_verdict("GET /\x1b[2J HTTP/1.1", "evil\x1b[31m");
    v.notes.push_back("a note\nforged line");
    std::string text = as_text(v);
    CHECK(text.find('\x1b') == std::string::npos);
    CHECK(text.find("GET /\\x1B[2J HTTP/1.1") != std::string::npos);
    CHECK(text.find("\nforged") == std::string::npos);
}

TEST_CASE("the text output's first word is what the client got", "[sinks]")
{
    auto first_word = [](const Verdict &v) {
        std::string text = as_text(v);
        return text.substr(0, text.find(' '));
    };
    Verdict v = sample_verdict("GET / HTTP/1.1", "python3");
    CHECK(first_word(v) == "502");
    v.status = 504;
    CHECK(first_word(v) == "504");
    v.client_got = "cut_short";
    CHECK(first_word(v) == "cut");
    CHECK(verdict_json(v, Timebase(0)).find("\"status\":504,\"client_got\":\"cut_short\"") != std::string::npos);
    v.client_got = "http09";
    CHECK(first_word(v) == "009");
}

TEST_CASE("a reader that has gone: the text sink stops writing, and nothing throws", "[sinks]")
{
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    close(fds[0]); // the reader is gone: writes fail with EPIPE (SIGPIPE is ignored here)
    struct sigaction ign{}, old{};
    ign.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &ign, &old);
    FILE *f = fdopen(fds[1], "w");
    REQUIRE(f);
    {
        TextSink sink(f, Timebase(0));
        Verdict v = sample_verdict("GET / HTTP/1.1", "python3");
        v.explanation = std::string(20000, 'e'); // longer than stdio's buffer
        CHECK_NOTHROW(sink.verdict(v));
        CHECK(sink.failed() == EPIPE);
        CHECK(output_error() == 0); // (stdout's, which this is not)
        CHECK_NOTHROW(sink.verdict(v));
        CHECK_NOTHROW(sink.summary(Summary{}));
    }
    fclose(f);
    sigaction(SIGPIPE, &old, nullptr);
}
