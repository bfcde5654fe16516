// A keyed 64-bit hash (SipHash-2-4) of strings that come from outside, such
// as the request lines of Nginx's logs: whoever writes them cannot pick ones
// that collide, since the key is drawn at random when the process starts.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string_view>

namespace n502 {

// SipHash-2-4 of data under the 128-bit key (k0, k1).
uint64_t siphash24(uint64_t k0, uint64_t k1, std::string_view data);
// The same of the pieces' concatenation, read in place.
uint64_t siphash24(uint64_t k0, uint64_t k1, std::initializer_list<std::string_view> pieces);

// siphash24 under this process's key (random, drawn once).
uint64_t keyed_hash(std::string_view data);
// The same over the pair (a, b) in one pass: a's length, a, then b.
uint64_t keyed_hash(std::string_view a, std::string_view b);

} // namespace n502
