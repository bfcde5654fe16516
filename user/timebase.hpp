// Kernel timestamps (CLOCK_BOOTTIME) to wall-clock time, and time formats.
#pragma once
#include <cstdint>
#include <string>

namespace n502 {

class Timebase {
public:
    // Measures the offset between CLOCK_REALTIME and CLOCK_BOOTTIME now.
    static Timebase measure();
    // A fixed offset, for tests and replays.
    explicit Timebase(int64_t boot_to_real_ns = 0) : offset_ns_(boot_to_real_ns) {}

    int64_t to_real_ns(uint64_t boot_ns) const { return static_cast<int64_t>(boot_ns) + offset_ns_; }
    int64_t offset_ns() const { return offset_ns_; }

private:
    int64_t offset_ns_;
};

uint64_t boot_now_ns();
int64_t real_now_ns();

// "2026-11-23T02:50:01.123456Z"
std::string rfc3339_utc(int64_t real_ns);
// "02:50:01.123456" in local time, for the human output.
std::string clock_local(int64_t real_ns);

} // namespace n502
