#include "logfollow.hpp"

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

LogFollower::~LogFollower()
{
    if (fd_ >= 0)
        ::close(fd_);
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
    if (fd_ >= 0)
        ::close(fd_);
    fd_ = fd;
    ino_ = st.st_ino;
    dev_ = st.st_dev;
    offset_ = from_end ? static_cast<uint64_t>(st.st_size) : 0;
    partial_.clear();
    partial_cut_ = false;
    return true;
}

void LogFollower::split(const char *data, size_t n, std::vector<FollowEvent> &out)
{
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (data[i] != '\n')
            continue;
        size_t take = i - start;
        if (partial_.size() + take > max_line_) {
            take = max_line_ > partial_.size() ? max_line_ - partial_.size() : 0;
            partial_cut_ = true;
        }
        partial_.append(data + start, take);
        FollowEvent ev;
        ev.kind = FollowEvent::Line;
        ev.text = std::move(partial_);
        ev.truncated_line = partial_cut_;
        out.push_back(std::move(ev));
        partial_.clear();
        partial_cut_ = false;
        start = i + 1;
    }
    size_t rest = n - start;
    if (partial_.size() + rest > max_line_) {
        rest = max_line_ > partial_.size() ? max_line_ - partial_.size() : 0;
        partial_cut_ = true;
    }
    partial_.append(data + start, rest);
}

void LogFollower::read_available(std::vector<FollowEvent> &out)
{
    char buf[65536];
    for (int rounds = 0; rounds < 256; rounds++) { // at most 16 MiB per poll
        ssize_t n = pread(fd_, buf, sizeof(buf), static_cast<off_t>(offset_));
        if (n <= 0)
            break;
        offset_ += static_cast<uint64_t>(n);
        split(buf, static_cast<size_t>(n), out);
    }
}

std::vector<FollowEvent> LogFollower::poll(uint64_t now_ns)
{
    std::vector<FollowEvent> out;
    if (fd_ < 0) {
        if (!open(false, nullptr))
            return out;
    }
    struct stat st{};
    bool sized = fstat(fd_, &st) == 0;
    if (sized && static_cast<uint64_t>(st.st_size) < offset_) {
        out.push_back({FollowEvent::Truncated, fmt::format("{} was truncated; reading it from the start", display())});
        offset_ = 0;
        partial_.clear();
    }
    if (!sized || static_cast<uint64_t>(st.st_size) > offset_)
        read_available(out); // (what is appended meanwhile comes with the next poll)

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
        // Rotated: the old file is drained above; follow the new one from its start.
        read_available(out);
        if (open(false, nullptr)) {
            out.push_back({FollowEvent::Rotated, fmt::format("{} was rotated; following the new file", display())});
            read_available(out);
        }
    }
    return out;
}

} // namespace n502
