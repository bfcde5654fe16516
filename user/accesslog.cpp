#include "accesslog.hpp"

#include <cstring>
#include <ctime>

namespace n502 {

static int month_index(std::string_view m)
{
    static const char *names[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    for (int i = 0; i < 12; i++)
        if (m == names[i])
            return i;
    return -1;
}

static bool digits(std::string_view s, size_t pos, size_t n, int &out)
{
    if (pos + n > s.size())
        return false;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[pos + i];
        if (c < '0' || c > '9')
            return false;
        v = v * 10 + (c - '0');
    }
    out = v;
    return true;
}

// "23/Nov/2026:03:00:00 +0000"
static bool parse_time_local(std::string_view t, int64_t &out)
{
    if (t.size() != 26 || t[2] != '/' || t[6] != '/' || t[11] != ':' || t[14] != ':' || t[17] != ':' ||
        t[20] != ' ' || (t[21] != '+' && t[21] != '-'))
        return false;
    tm tmv{};
    int day, year, h, m, s, oh, om;
    int mon = month_index(t.substr(3, 3));
    if (mon < 0 || !digits(t, 0, 2, day) || !digits(t, 7, 4, year) || !digits(t, 12, 2, h) || !digits(t, 15, 2, m) ||
        !digits(t, 18, 2, s) || !digits(t, 22, 2, oh) || !digits(t, 24, 2, om))
        return false;
    tmv.tm_mday = day;
    tmv.tm_mon = mon;
    tmv.tm_year = year - 1900;
    tmv.tm_hour = h;
    tmv.tm_min = m;
    tmv.tm_sec = s;
    int64_t utc = static_cast<int64_t>(timegm(&tmv));
    int64_t offset = (oh * 3600 + om * 60) * (t[21] == '-' ? -1 : 1);
    out = utc - offset;
    return true;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

std::string unescape_access(std::string_view s)
{
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size(); i++) {
        int hi, lo;
        if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] == 'x' && (hi = hex_value(s[i + 2])) >= 0 &&
            (lo = hex_value(s[i + 3])) >= 0) {
            out.push_back(static_cast<char>(hi * 16 + lo));
            i += 3;
        } else {
            out.push_back(s[i]);
        }
    }
    return out;
}

std::optional<AccessLine> parse_access_error(std::string_view line)
{
    auto a = parse_access_line(line);
    if (!a || (a->status != 502 && a->status != 504))
        return std::nullopt;
    return a;
}

std::optional<AccessLine> parse_access_line(std::string_view line)
{
    AccessLine a;
    size_t sp = line.find(' ');
    if (sp == std::string_view::npos || sp == 0 || sp > 64)
        return std::nullopt;
    a.client = std::string(line.substr(0, sp));
    size_t lb = line.find(" [", sp);
    if (lb == std::string_view::npos)
        return std::nullopt;
    size_t rb = line.find("] \"", lb);
    if (rb == std::string_view::npos || rb - lb - 2 != 26)
        return std::nullopt;
    if (!parse_time_local(line.substr(lb + 2, 26), a.wall_sec))
        return std::nullopt;
    size_t rq = rb + 3;
    // Nginx escapes '"' inside $request as \x22: the next quote ends it.
    size_t rq_end = line.find("\" ", rq);
    if (rq_end == std::string_view::npos)
        return std::nullopt;
    a.request = unescape_access(line.substr(rq, rq_end - rq));
    int status;
    if (!digits(line, rq_end + 2, 3, status))
        return std::nullopt;
    if (rq_end + 5 < line.size() && line[rq_end + 5] != ' ')
        return std::nullopt;
    a.status = status;
    return a;
}

} // namespace n502
