// The keyed hash of strings from outside (request lines): SipHash-2-4 as
// its authors define it, and a key that differs by process.
#include <catch2/catch.hpp>
#include <string>

#include "keyedhash.hpp"

using namespace n502;

TEST_CASE("siphash24 gives the reference outputs", "[keyedhash]")
{
    // Key 00 01 .. 0f; the SipHash paper's example message 00 01 .. 0e, and
    // the empty message (the first of the reference implementation's vectors).
    const uint64_t k0 = 0x0706050403020100ULL, k1 = 0x0f0e0d0c0b0a0908ULL;
    std::string m;
    for (int i = 0; i < 15; i++)
        m.push_back(static_cast<char>(i));
    CHECK(siphash24(k0, k1, m) == 0xa129ca6149be45e5ULL);
    CHECK(siphash24(k0, k1, "") == 0x726fdb47dd0e0e31ULL);
    // Just short of a word, a word, two words (the tail then empty).
    CHECK(siphash24(k0, k1, m.substr(0, 7)) == 0xab0200f58b01d137ULL);
    m.push_back(15);
    CHECK(siphash24(k0, k1, m.substr(0, 8)) == 0x93f5f5799a932462ULL);
    CHECK(siphash24(k0, k1, m) == 0x3f2acc7f57c29bdbULL);
}

TEST_CASE("siphash24 of pieces is that of their concatenation, wherever they are cut", "[keyedhash]")
{
    const uint64_t k0 = 0x0706050403020100ULL, k1 = 0x0f0e0d0c0b0a0908ULL;
    std::string m;
    for (int i = 0; i < 40; i++)
        m.push_back(static_cast<char>(i * 7));
    std::string_view v = m;
    for (size_t n = 0; n <= m.size(); n++)
        for (size_t a = 0; a <= n; a++)
            for (size_t b = a; b <= n; b += 3)
                REQUIRE(siphash24(k0, k1, {v.substr(0, a), v.substr(a, b - a), v.substr(b, n - b)}) ==
                        siphash24(k0, k1, v.substr(0, n)));
}

TEST_CASE("keyed_hash of a pair: the pair, not the concatenation", "[keyedhash]")
{
    CHECK(keyed_hash("10.0.0.1", "GET / HTTP/1.1") == keyed_hash("10.0.0.1", "GET / HTTP/1.1"));
    CHECK(keyed_hash("10.0.0.1", "GET / HTTP/1.1") != keyed_hash("10.0.0.1G", "ET / HTTP/1.1"));
    CHECK(keyed_hash("10.0.0.1", "GET / HTTP/1.1") != keyed_hash("10.0.0.2", "GET / HTTP/1.1"));
    CHECK(keyed_hash("", "x") != keyed_hash("x", ""));
    // The first layout (a, then its length, then b) hashed these two alike.
    using namespace std::string_literals;
    CHECK(keyed_hash("", "\x08\0\0\0\0\0\0\0GET /"s) != keyed_hash(std::string(8, '\0'), "GET /"));
}

TEST_CASE("keyed_hash: stable within a process, its key not a constant", "[keyedhash]")
{
    CHECK(keyed_hash("GET / HTTP/1.1") == keyed_hash("GET / HTTP/1.1"));
    CHECK(keyed_hash("GET / HTTP/1.1") != keyed_hash("GET / HTTP/1.0"));
    // Under the all-zero key the hash would be this; a random key is not zero.
    CHECK(keyed_hash("GET / HTTP/1.1") != siphash24(0, 0, "GET / HTTP/1.1"));
}
