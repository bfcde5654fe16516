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

TEST_CASE("keyed_hash: stable within a process, its key not a constant", "[keyedhash]")
{
    CHECK(keyed_hash("GET / HTTP/1.1") == keyed_hash("GET / HTTP/1.1"));
    CHECK(keyed_hash("GET / HTTP/1.1") != keyed_hash("GET / HTTP/1.0"));
    // Under the all-zero key the hash would be this; a random key is not zero.
    CHECK(keyed_hash("GET / HTTP/1.1") != siphash24(0, 0, "GET / HTTP/1.1"));
}
