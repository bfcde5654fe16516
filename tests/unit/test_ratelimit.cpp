// The verdict rate limit: a storm of identical verdicts prints a bounded
// number per second and counts the rest.
#include <catch2/catch.hpp>

#include "ratelimit.hpp"

using namespace n502;

TEST_CASE("a storm is cut to the per-second budget and the rest is counted", "[ratelimit]")
{
    RateLimiter rl(5);
    int64_t t = 1'000'000'000LL;
    int printed = 0;
    for (int i = 0; i < 1000; i++) // 1000 verdicts within one millisecond
        printed += rl.admit("upstream_not_listening\n127.0.0.1:8080", t + i * 1000);
    CHECK(printed == 5);
    auto s = rl.take_suppressed(t + 1'000'000);
    REQUIRE(s.size() == 1);
    CHECK(s[0].second == 995);
    CHECK(rl.take_suppressed(t + 2'000'000).empty()); // reported once

    // One second later the budget is back.
    printed = 0;
    for (int i = 0; i < 10; i++)
        printed += rl.admit("upstream_not_listening\n127.0.0.1:8080", t + 1'001'000'000LL);
    CHECK(printed == 5);
}

TEST_CASE("keys are limited independently; 0 means no limit", "[ratelimit]")
{
    RateLimiter rl(1);
    CHECK(rl.admit("a", 0));
    CHECK_FALSE(rl.admit("a", 1));
    CHECK(rl.admit("b", 1));
    RateLimiter off(0);
    for (int i = 0; i < 100; i++)
        CHECK(off.admit("a", i));
    CHECK(off.take_suppressed(0).empty());
}
