#include "logfollow.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace n502 {

int open_in_root_fd(int rootfd, const std::string &path, int flags)
{
    open_how how{};
    how.flags = static_cast<uint64_t>(flags);
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    return static_cast<int>(syscall(SYS_openat2, rootfd, path.c_str(), &how, sizeof(how)));
}

int open_in_root(const std::string &root, const std::string &path, int flags)
{
    if (root.empty())
        return ::open(path.c_str(), flags);
    int dirfd = ::open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0)
        return -1;
    int fd = open_in_root_fd(dirfd, path, flags);
    int saved = errno;
    ::close(dirfd);
    errno = saved;
    return fd;
}

int LogFollower::open_file(int flags)
{
    if (root_.empty())
        return ::open(path_.c_str(), flags);
    if (root_fd_ < 0) {
        root_fd_ = ::open(root_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (root_fd_ < 0)
            return -1;
    }
    return open_in_root_fd(root_fd_, path_, flags);
}

void LogFollower::Reader::rewind()
{
    offset = 0;
    partial.clear();
    partial_cut = false;
    line_start = 0;
    mark_pos = 0;
    mark.clear();
}

bool LogFollower::Reader::still_there() const
{
    if (mark.empty())
        return true;
    char buf[kMarkBytes];
    ssize_t n = pread(fd, buf, mark.size(), static_cast<off_t>(mark_pos));
    // A failed read says nothing either way: the read that follows meets it.
    return n < 0 || (static_cast<size_t>(n) == mark.size() && memcmp(buf, mark.data(), mark.size()) == 0);
}

void LogFollower::Reader::close()
{
    if (fd >= 0)
        ::close(fd);
    fd = -1;
    rewind();
}

LogFollower::~LogFollower()
{
    cur_.close();
    for (auto &o : olds_)
        o.r.close();
    if (root_fd_ >= 0)
        ::close(root_fd_);
}

bool LogFollower::open(bool from_end, std::string *error)
{
    int fd = open_file(O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        if (error)
            *error = root_.empty() ? fmt::format("cannot open error log {}: {}", path_, strerror(errno))
                                   : fmt::format("cannot open error log {} inside {} (symlinks are not followed out "
                                                 "of it): {}",
                                                 path_, root_, strerror(errno));
        return false;
    }
    struct stat st{};
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (error)
            *error = fmt::format("error log {} is not a regular file", display());
        ::close(fd);
        return false;
    }
    cur_.close();
    cur_.fd = fd;
    cur_.error_said = false;
    cur_.start_at(from_end ? static_cast<uint64_t>(st.st_size) : 0);
    ino_ = st.st_ino;
    dev_ = st.st_dev;
    return true;
}

void LogFollower::Reader::start_at(uint64_t pos)
{
    offset = line_start = pos;
    partial.clear();
    partial_cut = false;
    mark.clear();
    mark_pos = 0;
    if (pos == 0)
        return;
    // The bytes just before where reading starts stand for the file until a
    // line is read (a truncation written past them, another follower going
    // on from here: resume_from).
    char buf[kMarkBytes];
    size_t n = std::min<uint64_t>(pos, kMarkBytes - 1);
    ssize_t got = pread(fd, buf, n, static_cast<off_t>(pos - n));
    if (got == static_cast<ssize_t>(n)) {
        mark.assign(buf, n);
        mark_pos = pos - n;
    }
}

uint64_t LogFollower::back_to(const StampOf &stamp_of, int64_t from, int64_t to, uint64_t max_back, bool *bounded)
{
    *bounded = false;
    const uint64_t end = cur_.offset;
    if (cur_.fd < 0 || end == 0 || max_back == 0)
        return 0;
    const uint64_t begin = end > max_back ? end - max_back : 0;
    std::string buf(end - begin, '\0');
    size_t have = 0;
    while (have < buf.size()) {
        ssize_t got = pread(cur_.fd, buf.data() + have, buf.size() - have, static_cast<off_t>(begin + have));
        if (got <= 0)
            return 0; // (an error, or cut meanwhile: from the end, as opened)
        have += static_cast<size_t>(got);
    }
    // Whole lines, newest first: [start, stop) each, stop at a '\n' (the
    // file's last line is whole: reading starts at the end).
    uint64_t at = end;
    size_t stop = buf.size();
    if (stop == 0 || buf[stop - 1] != '\n')
        return 0; // (a line being written: from the end, as opened)
    bool out_of_window = false, in_window = false;
    while (stop > 0) {
        size_t nl = stop >= 2 ? buf.rfind('\n', stop - 2) : std::string::npos;
        if (nl == std::string::npos && begin > 0)
            break; // the line before may be cut: the bound
        size_t start = nl == std::string::npos ? 0 : nl + 1;
        std::string_view line(buf.data() + start, stop - 1 - start);
        if (auto t = stamp_of(line)) {
            if (*t < from || *t > to) {
                out_of_window = true;
                break;
            }
            at = begin + start;
            in_window = true;
        }
        stop = start;
    }
    *bounded = in_window && !out_of_window && begin > 0; // (no stamp read: nothing was taken for one)
    if (at != end)
        cur_.start_at(at);
    return end - at;
}

bool LogFollower::resume_from(const LogFollower &before)
{
    const Reader &b = before.cur_;
    if (cur_.fd < 0 || b.fd < 0)
        return false;
    struct stat st{};
    if (fstat(cur_.fd, &st) != 0 || static_cast<uint64_t>(st.st_size) < b.offset)
        return false;
    // (an empty file opened at its end and nothing read since: the size
    // alone, a weak sign; callers match on the file's place first)
    Reader probe;
    probe.fd = cur_.fd;
    probe.mark = b.mark;
    probe.mark_pos = b.mark_pos;
    bool same = probe.still_there();
    probe.fd = -1; // (cur_'s)
    if (!same)
        return false;
    int fd = cur_.fd; // (ours: only where reading is at is taken)
    cur_ = b;
    cur_.fd = fd;
    cur_.error_said = false;
    return true;
}

bool LogFollower::has_unread() const
{
    return size() > cur_.offset;
}

uint64_t LogFollower::size() const
{
    struct stat st{};
    return cur_.fd >= 0 && fstat(cur_.fd, &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

void LogFollower::split(Reader &r, const char *data, size_t n, std::vector<FollowEvent> &out)
{
    const uint64_t base = r.offset - n; // where data begins in the file
    size_t start = 0;
    size_t lines = out.size();
    uint64_t last_start = 0;
    for (size_t i = 0; i < n; i++) {
        if (data[i] != '\n')
            continue;
        size_t take = i - start;
        if (r.partial.size() + take > max_line_) {
            take = max_line_ > r.partial.size() ? max_line_ - r.partial.size() : 0;
            r.partial_cut = true;
        }
        r.partial.append(data + start, take);
        FollowEvent ev;
        ev.kind = FollowEvent::Line;
        ev.text = std::move(r.partial);
        ev.truncated_line = r.partial_cut;
        out.push_back(std::move(ev));
        r.partial.clear();
        r.partial_cut = false;
        start = i + 1;
        last_start = r.line_start;
        r.line_start = base + start;
    }
    if (out.size() != lines) {
        // Only the last line's mark is kept (its start: the line is cut at
        // the end, never at the start).
        const std::string &text = out.back().text;
        r.mark_pos = last_start;
        r.mark.assign(text, 0, std::min(text.size(), kMarkBytes - 1));
        if (r.mark.size() == text.size() && !out.back().truncated_line)
            r.mark.push_back('\n');
    }
    size_t rest = n - start;
    if (r.partial.size() + rest > max_line_) {
        rest = max_line_ > r.partial.size() ? max_line_ - r.partial.size() : 0;
        r.partial_cut = true;
    }
    r.partial.append(data + start, rest);
}

bool LogFollower::read_available(Reader &r, std::vector<FollowEvent> &out, size_t chunks)
{
    char buf[kChunk];
    for (size_t i = 0; i < chunks; i++) {
        ssize_t n = pread(r.fd, buf, sizeof(buf), static_cast<off_t>(r.offset));
        if (n < 0 && r.fd >= 0 && errno != EINTR && errno != EAGAIN && !r.error_said) {
            // (an I/O error, a stale network file: tried again at every poll)
            out.push_back({FollowEvent::Error, fmt::format("reading {} failed ({}); it is read again at every poll",
                                                          display(), strerror(errno))});
            r.error_said = true;
        }
        if (n >= 0)
            r.error_said = false;
        if (n <= 0)
            return false;
        r.offset += static_cast<uint64_t>(n);
        split(r, buf, static_cast<size_t>(n), out);
        if (static_cast<size_t>(n) < sizeof(buf))
            return false; // the end, as of now
    }
    return chunks > 0; // stopped at the limit
}

void LogFollower::read_olds(uint64_t now_ns, std::vector<FollowEvent> &out)
{
    for (size_t i = 0; i < olds_.size(); i++) {
        Old &o = olds_[i];
        if (o.r.fd < 0)
            continue;
        // An older file not read to its end yet is read on first: lines come
        // in the order they were written. (This one is not read now: not
        // taken for quiet either.)
        if (capped_)
            continue;
        uint64_t before = o.r.offset;
        capped_ = read_available(o.r, out, kPollChunks);
        if (o.r.offset != before)
            o.written = now_ns;
        if (capped_)
            continue; // (not let go with more to read, in a drain either)
        // Let go once quiet, and once Nginx writes to a newer file (its
        // workers have reopened), or after kOldMaxNs whatever it does (a
        // reopen that never comes: nothing more is written to it then either).
        // The next newer file still open (a closed one says nothing).
        const Reader *newer = &cur_;
        for (size_t k = i + 1; k < olds_.size(); k++)
            if (olds_[k].r.fd >= 0) {
                newer = &olds_[k].r;
                break;
            }
        bool quiet = now_ns - o.written >= kOldQuietNs;
        if (now_ns == kCheckPath || (quiet && (newer->offset > 0 || now_ns - o.since >= kOldMaxNs)))
            o.r.close();
    }
    olds_.erase(std::remove_if(olds_.begin(), olds_.end(), [](const Old &o) { return o.r.fd < 0; }), olds_.end());
}

std::vector<FollowEvent> LogFollower::poll(uint64_t now_ns)
{
    std::vector<FollowEvent> out;
    capped_ = false;
    read_olds(now_ns, out);
    if (cur_.fd < 0) {
        if (!open(false, nullptr))
            return out;
    }
    struct stat st{};
    bool sized = fstat(cur_.fd, &st) == 0;
    // Truncated: shorter than what was read, or (written again past that
    // before this poll) the last line read is no longer where it was.
    if (sized && (static_cast<uint64_t>(st.st_size) < cur_.offset ||
                  (static_cast<uint64_t>(st.st_size) > cur_.offset && !cur_.still_there()))) {
        out.push_back({FollowEvent::Truncated, fmt::format("{} was truncated; reading it from the start", display())});
        cur_.rewind();
    }
    // (what is appended meanwhile comes with the next poll; nothing while an
    // older file is read on)
    if (!capped_ && (!sized || static_cast<uint64_t>(st.st_size) > cur_.offset))
        capped_ = read_available(cur_, out, kPollChunks);

    if (now_ns != kCheckPath && now_ns < next_path_check_)
        return out;
    next_path_check_ = now_ns == kCheckPath ? 0 : now_ns + kPathCheckNs;
    struct stat now{};
    int pfd = open_file(O_PATH | O_CLOEXEC);
    bool found = pfd >= 0 && fstat(pfd, &now) == 0;
    if (pfd >= 0)
        ::close(pfd);
    if (!found) {
        if (!vanished_reported_) {
            out.push_back({FollowEvent::Vanished, fmt::format("{} was removed; still reading the open file", display())});
            vanished_reported_ = true;
        }
        return out;
    }
    vanished_reported_ = false;
    if (static_cast<uint64_t>(now.st_ino) != ino_ || static_cast<uint64_t>(now.st_dev) != dev_) {
        // Rotated: the file read so far is read on as an old one, the new
        // one from its start. Past kMaxOld old files, the oldest is read one
        // last time and let go.
        // (behind: queued as an old file, read on in its turn)
        if (!capped_)
            capped_ = read_available(cur_, out, kPollChunks);
        if (now_ns == kCheckPath && !capped_) {
            read_olds(kCheckPath, out);
            cur_.close(); // a last look (a drain): read above, one last time
        } else {
            if (olds_.size() >= kMaxOld) {
                Reader &oldest = olds_.front().r;
                if (read_available(oldest, out, kLastChunks))
                    out.push_back({FollowEvent::Error,
                                   fmt::format("{}: more than {} old files to read on after rotations; the oldest "
                                               "was let go with {} MiB of it read last and more unread",
                                               display(), kMaxOld, kLastChunks * kChunk >> 20)});
                oldest.close();
                olds_.pop_front();
            }
            uint64_t t = now_ns == kCheckPath ? 0 : now_ns; // (a drain behind: read on by the next)
            olds_.push_back({std::move(cur_), t, t});
            cur_ = Reader{};
        }
        std::string why;
        if (open(false, &why)) {
            out.push_back({FollowEvent::Rotated, fmt::format("{} was rotated; following the new file", display())});
            if (!capped_)
                capped_ = read_available(cur_, out, kPollChunks);
        } else {
            // Said now: the open that succeeds later (every poll tries) says nothing.
            out.push_back({FollowEvent::Rotated, fmt::format("{} was rotated, and the new file cannot be read yet "
                                                             "({}); it is tried again at every poll",
                                                             display(), why)});
        }
    }
    return out;
}

} // namespace n502
