#include "ratelimit.hpp"

#include <algorithm>

namespace n502 {

bool RateLimiter::admit(const std::string &key, int64_t now_ns)
{
    if (per_sec_ == 0)
        return true;
    auto [it, inserted] = buckets_.try_emplace(key);
    Bucket &b = it->second;
    if (inserted) {
        b.tokens = per_sec_;
        b.last_ns = now_ns;
    }
    double elapsed = static_cast<double>(std::max<int64_t>(0, now_ns - b.last_ns)) / 1e9;
    b.tokens = std::min<double>(per_sec_, b.tokens + elapsed * per_sec_);
    b.last_ns = now_ns;
    if (b.tokens >= 1) {
        b.tokens -= 1;
        return true;
    }
    b.suppressed++;
    return false;
}

std::vector<std::pair<std::string, uint64_t>> RateLimiter::take_suppressed(int64_t now_ns)
{
    std::vector<std::pair<std::string, uint64_t>> out;
    for (auto it = buckets_.begin(); it != buckets_.end();) {
        if (it->second.suppressed) {
            out.emplace_back(it->first, it->second.suppressed);
            it->second.suppressed = 0;
        }
        // A key idle for a minute starts again with a full bucket.
        if (now_ns - it->second.last_ns > 60'000'000'000LL)
            it = buckets_.erase(it);
        else
            ++it;
    }
    return out;
}

} // namespace n502
