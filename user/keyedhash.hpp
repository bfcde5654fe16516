// A keyed 64-bit hash (SipHash-2-4) of strings that come from outside, such
// as the request lines of Nginx's logs: whoever writes them cannot pick ones
// that collide, since the key is drawn at random when the process starts.
#pragma once

#include <cstdint>
#include <string_view>

namespace n502 {

// SipHash-2-4 of data under the 128-bit key (k0, k1).
uint64_t siphash24(uint64_t k0, uint64_t k1, std::string_view data);

// siphash24 under this process's key (random, drawn once).
uint64_t keyed_hash(std::string_view data);

} // namespace n502
