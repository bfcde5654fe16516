// Follows a log file from its end, like `tail -F`: new complete lines only,
// across renames (rotation: the old file is drained, then the new one is read
// from its start) and truncation (copytruncate: read again from the start).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace n502 {

struct FollowEvent {
    enum Kind { Line, Rotated, Truncated, Vanished, Error } kind = Line;
    std::string text;
    bool truncated_line = false; // a line longer than the limit was cut
};

class LogFollower {
public:
    explicit LogFollower(std::string path, size_t max_line = 64 * 1024) : path_(std::move(path)), max_line_(max_line) {}
    ~LogFollower();
    LogFollower(const LogFollower &) = delete;
    LogFollower &operator=(const LogFollower &) = delete;

    // Opens the file; from_end: start at its current end. Returns false and
    // sets *error when it cannot be opened.
    bool open(bool from_end, std::string *error);
    // Reads what was appended since the last call.
    std::vector<FollowEvent> poll();
    const std::string &path() const { return path_; }

private:
    void read_available(std::vector<FollowEvent> &out);
    void split(const char *data, size_t n, std::vector<FollowEvent> &out);

    std::string path_;
    size_t max_line_;
    int fd_ = -1;
    uint64_t ino_ = 0, dev_ = 0;
    uint64_t offset_ = 0;
    std::string partial_;
    bool partial_cut_ = false;
    bool vanished_reported_ = false;
};

} // namespace n502
