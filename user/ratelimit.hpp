// Output rate limit for verdict storms: while a fault lasts, Nginx can log
// thousands of identical 502s per second. Each (cause, upstream) key may
// print `per_sec` verdicts per second (a token bucket with that burst); the
// rest are counted and reported as one line per key and second. The summary
// counts every verdict, printed or not.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace n502 {

class RateLimiter {
public:
    explicit RateLimiter(uint32_t per_sec) : per_sec_(per_sec) {}

    // true: print it; false: suppressed (counted).
    bool admit(const std::string &key, int64_t now_ns);
    // Suppressed counts per key since the last call; forgets idle keys.
    std::vector<std::pair<std::string, uint64_t>> take_suppressed(int64_t now_ns);

private:
    struct Bucket {
        double tokens = 0;
        int64_t last_ns = 0;
        uint64_t suppressed = 0;
    };
    uint32_t per_sec_;
    std::map<std::string, Bucket> buckets_;
};

} // namespace n502
