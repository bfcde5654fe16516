// Follows a log file from its end, like `tail -F`: new complete lines only,
// across renames (rotation: the new file is read from its start, the old one
// on as long as Nginx may still write to it) and truncation (copytruncate:
// read again from the start).
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace n502 {

struct FollowEvent {
    enum Kind { Line, Rotated, Truncated, Vanished, Error } kind = Line;
    std::string text;
    bool truncated_line = false; // a line longer than the limit was cut
};

// Opens `path` inside the directory tree `root` (a container's
// /proc/PID/root): absolute symlinks are resolved against that root and no
// path, symlink or ".." can lead out of it; /proc magic links are refused.
// root "" opens path as is. Returns the fd, or -1 with errno set.
int open_in_root(const std::string &root, const std::string &path, int flags);
// The same below an open directory (O_PATH) instead of a path.
int open_in_root_fd(int rootfd, const std::string &path, int flags);

class LogFollower {
public:
    // root: "" for the host's file system, else the directory the path is
    // confined to (see open_in_root).
    explicit LogFollower(std::string path, size_t max_line = 64 * 1024, std::string root = "")
        : path_(std::move(path)), root_(std::move(root)), max_line_(max_line)
    {
    }
    ~LogFollower();
    LogFollower(const LogFollower &) = delete;
    LogFollower &operator=(const LogFollower &) = delete;

    // Opens the file; from_end: start at its current end. Returns false and
    // sets *error when it cannot be opened.
    bool open(bool from_end, std::string *error);
    // Goes on where `before` (another follower of the same file, opened
    // through another root: a restarted container's) stopped, when this file
    // is as long and still has the last line `before` read where it read it.
    // Returns whether it did (else it stays where it is).
    bool resume_from(const LogFollower &before);
    // Just opened at the end: goes back to the first of the last lines
    // whose stamps (stamp_of: seconds since the epoch, nullopt for a line
    // without one) are all within [from, to], looking back at most max_back
    // bytes. What an Nginx found some time after it started (at `from`)
    // wrote before it was found is then read too; a line stamped outside the
    // window (an earlier run's, or a zone the stamps are not read in) stops
    // the look back. Returns the bytes gone back; *bounded tells that the
    // look back stopped at max_back with every line before still in the
    // window (lines older than that are not read).
    using StampOf = std::function<std::optional<int64_t>(std::string_view)>;
    uint64_t back_to(const StampOf &stamp_of, int64_t from, int64_t to, uint64_t max_back, bool *bounded);
    // Whether the file has bytes not read yet (one fstat).
    bool has_unread() const;
    // The open file's size (0 when not open).
    uint64_t size() const;
    // Reads what was appended since the last call. now_ns (any monotonic
    // clock): the path is looked up again for a rotation or a removal at most
    // every kPathCheckNs (three syscalls, where a poll that finds nothing new
    // costs one, two while an old file is read on); kCheckPath: now,
    // whatever the time.
    static constexpr uint64_t kCheckPath = UINT64_MAX;
    static constexpr uint64_t kPathCheckNs = 200'000'000;
    std::vector<FollowEvent> poll(uint64_t now_ns = kCheckPath);
    // The last poll stopped at its limit, with more of a file to read: the
    // files are read in the order written (an old file to its end before a
    // newer one; a rotation noticed meanwhile queues the file behind), so a
    // drain (a poll without a time) is whole only once a poll is not capped.
    bool capped() const { return capped_; }
    // After a rename rotation the old file is read on, ahead of the new one:
    // Nginx's workers write there until they reopen their logs (after USR1,
    // which logrotate sends after it has created the new file). It is let go
    // once nothing was written to it for kOldQuietNs and something was to a
    // newer one, or once quiet after kOldMaxNs. Rotations faster than that
    // keep up to kMaxOld old files, each read on, oldest first. A poll
    // without a time reads them one last time (a rotation it notices: the
    // file read so far).
    static constexpr uint64_t kOldQuietNs = 2'000'000'000;
    static constexpr uint64_t kOldMaxNs = 60'000'000'000;
    static constexpr size_t kMaxOld = 4;
    const std::string &path() const { return path_; }
    // What to show the user: the path, and the root when there is one.
    std::string display() const { return root_.empty() ? path_ : root_ + path_; }

private:
    // One open file being read: where, and the line begun at its end.
    struct Reader {
        int fd = -1;
        uint64_t offset = 0;
        std::string partial;
        bool partial_cut = false;
        uint64_t line_start = 0; // where the partial line began
        // The first bytes of the last whole line read, and where it began: a
        // file truncated and written again past offset between two polls
        // (copytruncate) no longer has them there.
        uint64_t mark_pos = 0;
        std::string mark;
        void rewind(); // from the start again
        void start_at(uint64_t pos); // reading from pos, a line's start (the bytes before it its mark)
        void close();
        bool still_there() const; // the mark is where it was read
        bool error_said = false;  // a read failed and was said (until one succeeds)
    };
    static constexpr size_t kMarkBytes = 64;
    // Reads r on, kChunk bytes at a time, at most `chunks` of them; true
    // when it stopped there (more may be waiting). A poll reads kPollChunks
    // (1 MiB) of a file, so that what it hands over stays small when
    // n502trace lags behind a storm (capped(): the caller polls again at
    // once, and a drain until it is not); a file let go because more than
    // kMaxOld old files wait, up to kLastChunks (16 MiB), saying so if it
    // had more.
    static constexpr size_t kChunk = 65536, kPollChunks = 16, kLastChunks = 256;
    bool read_available(Reader &r, std::vector<FollowEvent> &out, size_t chunks);
    bool capped_ = false;
    void split(Reader &r, const char *data, size_t n, std::vector<FollowEvent> &out);
    void read_olds(uint64_t now_ns, std::vector<FollowEvent> &out);

    int open_file(int flags);

    std::string path_;
    std::string root_;
    int root_fd_ = -1; // root_ opened once: /proc/PID/root must not be looked up again (the pid may be reused)
    size_t max_line_;
    Reader cur_;              // the file at the path (as of the last look)
    // Files rotated away, oldest first, while they may still grow (Nginx's
    // workers write to the file they have open until they reopen): more than
    // one when rotations come faster than the old file goes quiet.
    struct Old {
        Reader r;
        uint64_t written = 0; // when it last grew (now_ns)
        uint64_t since = 0;   // when it was rotated away
    };
    std::deque<Old> olds_;
    uint64_t ino_ = 0, dev_ = 0;
    bool vanished_reported_ = false;
    uint64_t next_path_check_ = 0;
};

} // namespace n502
