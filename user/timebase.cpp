#include "timebase.hpp"

#include <ctime>
#include <fmt/format.h>

namespace n502 {

static int64_t clock_ns(clockid_t id)
{
    timespec ts{};
    clock_gettime(id, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

uint64_t boot_now_ns() { return static_cast<uint64_t>(clock_ns(CLOCK_BOOTTIME)); }
int64_t real_now_ns() { return clock_ns(CLOCK_REALTIME); }

Timebase Timebase::measure()
{
    // Bracket the realtime read with two boottime reads and take the middle.
    int64_t b1 = clock_ns(CLOCK_BOOTTIME);
    int64_t r = clock_ns(CLOCK_REALTIME);
    int64_t b2 = clock_ns(CLOCK_BOOTTIME);
    return Timebase(r - (b1 + (b2 - b1) / 2));
}

static void split(int64_t real_ns, time_t &sec, long &usec)
{
    sec = static_cast<time_t>(real_ns / 1000000000LL);
    int64_t rem = real_ns % 1000000000LL;
    if (rem < 0) {
        rem += 1000000000LL;
        sec -= 1;
    }
    usec = static_cast<long>(rem / 1000);
}

std::string rfc3339_utc(int64_t real_ns)
{
    time_t sec;
    long usec;
    split(real_ns, sec, usec);
    tm t{};
    gmtime_r(&sec, &t);
    return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z", t.tm_year + 1900, t.tm_mon + 1, t.tm_mday,
                       t.tm_hour, t.tm_min, t.tm_sec, usec);
}

std::string clock_local(int64_t real_ns)
{
    time_t sec;
    long usec;
    split(real_ns, sec, usec);
    tm t{};
    localtime_r(&sec, &t);
    return fmt::format("{:02}:{:02}:{:02}.{:06}", t.tm_hour, t.tm_min, t.tm_sec, usec);
}

} // namespace n502
