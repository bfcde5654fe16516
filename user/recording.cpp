#include "recording.hpp"

#include "nginx.hpp"

#include <algorithm>
#include <functional>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/capability.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <zlib.h>

namespace n502 {

const char *rec_name(uint16_t t)
{
    switch (static_cast<Rec>(t)) {
    case Rec::Config: return "config";
    case Rec::SnapshotBegin: return "snapshot_begin";
    case Rec::SnapshotEnd: return "snapshot_end";
    case Rec::AddProcess: return "add_process";
    case Rec::AddListener: return "add_listener";
    case Rec::AddPreexisting: return "add_preexisting";
    case Rec::AddCapture: return "add_capture";
    case Rec::RemoveCapture: return "remove_capture";
    case Rec::Tick: return "tick";
    case Rec::Timebase: return "timebase";
    case Rec::Kernel: return "kernel";
    case Rec::LogLine: return "log_line";
    case Rec::Counters: return "counters";
    case Rec::Step: return "step";
    case Rec::Ready: return "ready";
    case Rec::Warning: return "warning";
    case Rec::Finish: return "finish";
    case Rec::AnsFacts: return "answer:facts";
    case Rec::AnsContainer: return "answer:container";
    case Rec::AnsListener: return "answer:listener";
    case Rec::AnsFile: return "answer:file";
    case Rec::AnsCreds: return "answer:creds";
    case Rec::AnsActivity: return "answer:activity";
    case Rec::AnsPortRange: return "answer:port_range";
    case Rec::AnsAbortOnOverflow: return "answer:tcp_abort_on_overflow";
    case Rec::AnsSocketsTo: return "answer:sockets_to";
    case Rec::AnsHolder: return "answer:holder";
    }
    return "unknown";
}

// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), as zlib computes it.
uint32_t crc32(const void *data, size_t len, uint32_t crc)
{
    // zlib's (the same CRC-32, chained the same way): a byte at a time
    // through one table was ten times slower, a third of a replay's time and
    // a cost on every record written live.
    const auto *p = static_cast<const Bytef *>(data);
    while (len > 0) {
        uInt n = static_cast<uInt>(std::min<size_t>(len, 1u << 30));
        crc = static_cast<uint32_t>(::crc32(crc, p, n));
        p += n;
        len -= n;
    }
    return crc;
}

Enc &Enc::addr(const Addr &a)
{
    u16(a.family).u16(a.port).u32(a.netns).raw(a.ip.data(), 16);
    return str(a.path);
}

Enc &Enc::container(const std::optional<ContainerInfo> &c)
{
    u8(c ? 1 : 0);
    if (c)
        str(c->runtime).str(c->id).str(c->name);
    return *this;
}

void Dec::need(size_t n)
{
    if (s_.size() - pos_ < n)
        throw RecordingError(fmt::format("a {} record is shorter than its contents", rec_name(type_)));
}

std::string Dec::str()
{
    uint32_t n = u32();
    need(n);
    std::string out = s_.substr(pos_, n);
    pos_ += n;
    return out;
}

Addr Dec::addr()
{
    Addr a;
    a.family = u16();
    a.port = u16();
    a.netns = u32();
    need(16);
    std::memcpy(a.ip.data(), s_.data() + pos_, 16);
    pos_ += 16;
    a.path = str();
    return a;
}

std::optional<ContainerInfo> Dec::container()
{
    if (!u8())
        return std::nullopt;
    ContainerInfo c;
    c.runtime = str();
    c.id = str();
    c.name = str();
    return c;
}

std::optional<uint64_t> parse_size(const std::string &s)
{
    if (s.empty() || !isdigit(static_cast<unsigned char>(s[0])))
        return std::nullopt;
    size_t pos = 0;
    unsigned long long v = 0;
    try {
        v = std::stoull(s, &pos);
    } catch (...) {
        return std::nullopt;
    }
    std::string suf = s.substr(pos);
    if (!suf.empty() && (suf.back() == 'B' || suf.back() == 'b') && suf.size() <= 3)
        suf.pop_back();
    if (suf.size() == 2 && (suf[1] == 'i' || suf[1] == 'I'))
        suf.pop_back();
    uint64_t mul = 1;
    if (suf.empty())
        mul = 1;
    else if (suf == "k" || suf == "K")
        mul = 1ULL << 10;
    else if (suf == "m" || suf == "M")
        mul = 1ULL << 20;
    else if (suf == "g" || suf == "G")
        mul = 1ULL << 30;
    else
        return std::nullopt;
    if (v > UINT64_MAX / mul)
        return std::nullopt;
    return v * mul;
}

// ------------------------------------------------------------------ writer

namespace {

// Whether this process may create and rename files in dir once it has
// dropped CAP_DAC_OVERRIDE and CAP_FOWNER after attaching (drop_capabilities
// in app.cpp): asked of the kernel itself (mode bits, ACLs, a read-only
// mount, security modules) with those two capabilities out of the effective
// set for the moment of the question.
bool dir_writable_without_override(const std::string &dir, std::string *why)
{
    constexpr int kDacOverride = 1, kFowner = 3;
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct saved[2]{};
    bool lowered = false;
    if (syscall(SYS_capget, &hdr, saved) == 0) {
        __user_cap_data_struct lower[2] = {saved[0], saved[1]};
        lower[0].effective &= ~((1u << kDacOverride) | (1u << kFowner));
        lowered = syscall(SYS_capset, &hdr, lower) == 0;
    }
    int rc = faccessat(AT_FDCWD, dir.c_str(), W_OK | X_OK, AT_EACCESS);
    int e = errno;
    if (lowered)
        syscall(SYS_capset, &hdr, saved);
    if (rc == 0 || e == ENOENT || e == ENOTDIR)
        return true; // (opening the file says what is wrong with a path that is not there)
    struct stat st{};
    *why = stat(dir.c_str(), &st) == 0 ? fmt::format("{}; owner uid {}, group {}, mode {:04o}", strerror(e),
                                                     st.st_uid, st.st_gid, st.st_mode & 07777)
                                       : std::string(strerror(e));
    return false;
}

} // namespace

// A process other than this one that holds the file open (0: none). Read
// only for an empty file, where the content cannot tell a log from nothing.
static uint32_t held_open_by(const struct stat &file, const std::string &proc_root = "/proc")
{
    uint32_t self = static_cast<uint32_t>(getpid());
    DIR *procs = opendir(proc_root.c_str());
    if (!procs)
        return 0;
    uint32_t found = 0;
    while (struct dirent *pe = readdir(procs)) {
        char *end = nullptr;
        unsigned long pid = strtoul(pe->d_name, &end, 10);
        if (!pid || *end || pid == self)
            continue;
        std::string fds = fmt::format("{}/{}/fd", proc_root, pe->d_name);
        DIR *d = opendir(fds.c_str());
        if (!d)
            continue;
        while (struct dirent *fe = readdir(d)) {
            // (cached attributes: a descriptor on a network file that does
            // not answer must not hold the start up)
            struct statx sx{};
            if (fe->d_name[0] == '.' ||
                statx(dirfd(d), fe->d_name, AT_STATX_DONT_SYNC, STATX_INO, &sx) != 0)
                continue;
            if (makedev(sx.stx_dev_major, sx.stx_dev_minor) == file.st_dev && sx.stx_ino == file.st_ino) {
                found = static_cast<uint32_t>(pid);
                break;
            }
        }
        closedir(d);
        if (found)
            break;
    }
    closedir(procs);
    return found;
}

std::unique_ptr<Recorder> Recorder::open(const std::string &path, uint64_t max_bytes, std::string *err)
{
    // Never written over: a file that is not a recording (an error log
    // given by mistake), nor, with rotation, a FILE.N that is not one. An
    // empty file is one only when another process holds it open: Nginx's
    // error log before its first line, which Nginx appends to.
    auto foreign = [](const std::string &p, std::string *why) {
        struct stat st{};
        if (stat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
            return false;
        if (st.st_size > 0) {
            *why = "exists and is not an n502trace recording";
            return !looks_like_recording(p);
        }
        uint32_t holder = held_open_by(st);
        if (!holder)
            return false;
        auto pi = read_proc(holder);
        std::string comm = pi ? pi->comm : "";
        *why = fmt::format("is empty but open in process {}{}: a log that process writes to, not an n502trace "
                           "recording",
                           holder, comm.empty() ? "" : " (" + comm + ")");
        return true;
    };
    std::string why;
    if (foreign(path, &why)) {
        *err = fmt::format("--record {}: the file {}; n502trace does not write over it (remove it, or record to "
                           "another file)",
                           path, why);
        return nullptr;
    }
    for (unsigned i = 1; max_bytes && i < 4; i++)
        if (foreign(fmt::format("{}.{}", path, i), &why)) {
            *err = fmt::format("--record-max rotates the recording through {0}.1 to {0}.3, and {0}.{1} {2}; "
                               "n502trace does not write over it (remove it, or record to another file)",
                               path, i, why);
            return nullptr;
        }
    if (max_bytes) {
        // Rotating creates and renames files beside path, after the drop.
        auto slash = path.rfind('/');
        std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
        std::string why;
        if (!dir_writable_without_override(dir, &why)) {
            *err = fmt::format("--record-max: {} cannot be rotated: n502trace gives up the right to write to others' "
                               "directories once attached, and {} is not its own to write ({}); record into a "
                               "directory it owns, such as /var/tmp",
                               path, dir, why);
            return nullptr;
        }
    }
    std::unique_ptr<Recorder> r(new Recorder());
    r->path_ = path;
    r->max_ = max_bytes;
    if (max_bytes) {
        // Four segments share the bound: the oldest goes when a fifth starts.
        r->keep_ = 4;
        r->seg_max_ = std::max<uint64_t>(max_bytes / r->keep_, 4096);
    }
    // Older segments of an earlier run would be taken for this run's; only
    // recordings are removed (FILE.1 may be someone's rotated log).
    for (unsigned i = 1; i < 64; i++) {
        std::string old = fmt::format("{}.{}", path, i);
        if (access(old.c_str(), F_OK) != 0) {
            if (i > 4)
                break;
            continue;
        }
        if (looks_like_recording(old))
            unlink(old.c_str());
    }
    if (!r->start_segment(err))
        return nullptr;
    return r;
}

Recorder::~Recorder()
{
    flush();
    if (fd_ >= 0)
        close(fd_);
}

bool Recorder::start_segment(std::string *err)
{
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd_ < 0) {
        *err = fmt::format("cannot write {}: {}", path_, strerror(errno));
        return false;
    }
    Enc h;
    h.raw(kRecMagic, 8).u32(kRecVersion).u32(0).u64(seq_);
    buf_ = h.buf;
    written_ = buf_.size();
    flush(); // a copy taken from now on is a recording, if an empty one
    if (fd_ < 0) {
        *err = failure;
        return false;
    }
    return true;
}

void Recorder::put(Rec type, const std::string &payload)
{
    if (fd_ < 0)
        return;
    Enc e;
    e.u32(static_cast<uint32_t>(payload.size())).u16(static_cast<uint16_t>(type));
    e.buf += payload;
    e.u32(crc32(e.buf.data() + 4, e.buf.size() - 4));
    buf_ += e.buf;
    written_ += e.buf.size();
    if (buf_.size() >= 64 * 1024)
        flush();
}

void Recorder::flush()
{
    size_t done = 0;
    while (fd_ >= 0 && done < buf_.size()) {
        ssize_t n = write(fd_, buf_.data() + done, buf_.size() - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            failure = fmt::format("writing {} failed ({}): the recording stops here", path_,
                                  n < 0 ? strerror(errno) : "nothing written");
            close(fd_);
            fd_ = -1;
            break;
        }
        done += static_cast<size_t>(n);
    }
    buf_.clear();
}

bool Recorder::maybe_rotate(uint64_t now_ns)
{
    // A segment holds at least twice its opening snapshot: a snapshot larger
    // than the share of --record-max would otherwise make every call rotate.
    uint64_t limit = std::max<uint64_t>(seg_max_, 2 * snapshot_);
    if (fd_ < 0 || !seg_max_ || written_ < limit)
        return false;
    if (min_segment_ns && now_ns < seg_started_ + min_segment_ns) { // (now_ns may be a little behind)
        if (written_ >= 2 * limit && !warned_fast_) {
            warned_fast_ = true;
            notice = fmt::format("--record-max {} is small for this input rate: a segment holds at least {:.0f} s "
                                 "of input ({} bytes now, against a share of {}), so the files may total more than "
                                 "asked",
                                 max_, static_cast<double>(min_segment_ns) / 1e9, written_, seg_max_);
        }
        return false;
    }
    seg_started_ = now_ns;
    flush();
    if (fd_ < 0)
        return false;
    // Renamed while still open: if the current segment cannot be moved
    // aside, it stays as it is and the recording stops (never truncated).
    auto moved = [&](const std::string &from, const std::string &to) {
        if (rename(from.c_str(), to.c_str()) == 0 || errno == ENOENT)
            return true;
        failure = fmt::format("cannot rotate the recording ({} -> {}: {}): it stops here, complete up to now", from,
                              to, strerror(errno));
        return false;
    };
    if (unlink(fmt::format("{}.{}", path_, keep_ - 1).c_str()) != 0 && errno != ENOENT) // the oldest
        failure = fmt::format("cannot remove {}.{}: {}: the recording stops here, complete up to now", path_,
                              keep_ - 1, strerror(errno));
    for (unsigned i = keep_ - 1; failure.empty() && i > 1; i--)
        moved(fmt::format("{}.{}", path_, i - 1), fmt::format("{}.{}", path_, i));
    if (failure.empty())
        moved(path_, path_ + ".1");
    close(fd_);
    fd_ = -1;
    if (!failure.empty())
        return false;
    seq_++;
    std::string err;
    if (!start_segment(&err)) {
        failure = err + ": the recording stops here";
        return false;
    }
    if (on_segment)
        on_segment();
    snapshot_ = written_;
    if (2 * snapshot_ > seg_max_ && !warned_small_) {
        warned_small_ = true;
        notice = fmt::format("--record-max {} is small for this host: a segment's opening snapshot alone is {} "
                             "bytes, so segments are {} bytes and the files may total more than asked",
                             max_, snapshot_, 2 * snapshot_);
    }
    return true;
}

// ------------------------------------------------------------------ reader

uint64_t read_recording_header(FILE *f, const std::string &name, uint32_t *version_out)
{
    unsigned char h[kRecHeaderSize];
    size_t n = fread(h, 1, sizeof(h), f);
    if (n == 0)
        throw RecordingError(fmt::format("{} is empty: not an n502trace recording, or one whose run had not "
                                         "started writing yet",
                                         name));
    if (n < 8 || std::memcmp(h, kRecMagic, 8) != 0)
        throw RecordingError(fmt::format("{} is not an n502trace recording (written by --record FILE)", name));
    if (n < sizeof(h))
        throw RecordingError(fmt::format("{} is an n502trace recording cut off inside its header: nothing to replay",
                                         name));
    uint32_t version;
    uint64_t seq;
    std::memcpy(&version, h + 8, 4);
    std::memcpy(&seq, h + 16, 8);
    if (version > kRecVersion)
        throw RecordingError(fmt::format("{} is a recording of format version {}, written by a newer n502trace; "
                                         "this one ({}) reads format versions up to {}",
                                         name, version, N502_VERSION, kRecVersion));
    if (version == 0)
        throw RecordingError(fmt::format("{} has an invalid recording format version 0", name));
    if (version_out)
        *version_out = version;
    return seq;
}

std::string input_file_problem(const std::string &path)
{
    struct stat st{};
    if (stat(path.c_str(), &st) != 0)
        return fmt::format("cannot read {}: {}", path, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return fmt::format("{} is a directory, not a file", path);
    if (!S_ISREG(st.st_mode))
        return fmt::format("{} is not a regular file (a device, pipe or socket)", path);
    if (access(path.c_str(), R_OK) != 0)
        return fmt::format("cannot read {}: {}", path, strerror(errno));
    return "";
}

bool looks_like_recording(const std::string &path)
{
    FILE *f = fopen(path.c_str(), "rb");
    if (!f)
        return false;
    char m[8];
    bool yes = fread(m, 1, 8, f) == 8 && std::memcmp(m, kRecMagic, 8) == 0;
    fclose(f);
    return yes;
}

RecordingReader::RecordingReader(const std::string &path)
{
    FILE *f = fopen(path.c_str(), "rb");
    if (!f)
        throw RecordingError(fmt::format("cannot read {}: {}", path, strerror(errno)));
    uint64_t seq;
    try {
        seq = read_recording_header(f, path);
    } catch (...) {
        fclose(f);
        throw;
    }
    fclose(f);
    // Older segments of the same run: path.1 is segment seq-1, and so on.
    std::vector<std::string> older;
    for (unsigned i = 1; i <= seq && i < 64; i++) {
        std::string p = fmt::format("{}.{}", path, i);
        FILE *g = fopen(p.c_str(), "rb");
        if (!g)
            break;
        uint64_t s = UINT64_MAX;
        try {
            s = read_recording_header(g, p);
        } catch (const RecordingError &) {
        }
        fclose(g);
        if (s != seq - i)
            break;
        older.push_back(p);
    }
    files_.assign(older.rbegin(), older.rend());
    files_.push_back(path);
    first_seq_ = seq - older.size();
    if (first_seq_ > 0)
        warnings.push_back(fmt::format("the recording starts at segment {}: the {} segment{} before it {} dropped "
                                       "(--record-max); what happened before that segment's snapshot is not in it",
                                       first_seq_, first_seq_, first_seq_ == 1 ? "" : "s",
                                       first_seq_ == 1 ? "was" : "were"));
    if (!open_file(0))
        throw RecordingError(fmt::format("cannot read {}", files_[0]));
}

RecordingReader::~RecordingReader()
{
    if (f_)
        fclose(f_);
}

bool RecordingReader::open_file(size_t i)
{
    if (f_)
        fclose(f_);
    f_ = nullptr;
    cur_ = i;
    if (i >= files_.size())
        return false;
    name_ = files_[i];
    f_ = fopen(name_.c_str(), "rb");
    if (!f_)
        throw RecordingError(fmt::format("cannot read {} (segment {} of the recording): {}", name_, i + 1,
                                         strerror(errno)));
    seq_ = read_recording_header(f_, name_, &version_);
    off_ = kRecHeaderSize;
    skipping_ = false;
    return true;
}

void RecordingReader::cut_or_corrupt(const std::function<void()> &cut)
{
    if (cur_ + 1 < files_.size())
        throw RecordingError(fmt::format("{} is corrupt: a record at byte {} runs past the end of the file, and "
                                         "newer segments follow it (only the newest can be cut off)",
                                         name_, off_));
    cut();
}

std::optional<RawRecord> RecordingReader::read_one()
{
    while (f_) {
        unsigned char h[6];
        // (unlocked: one reader; the lock per call showed in a replay's profile)
        size_t n = fread_unlocked(h, 1, sizeof(h), f_);
        auto cut = [&]() {
            warnings.push_back(fmt::format("{} is cut off inside a record at byte {} (the recording was interrupted "
                                           "or is still being written): replayed up to its last whole record",
                                           name_, off_));
        };
        if (n == 0) {
            open_file(cur_ + 1);
            continue;
        }
        if (n < sizeof(h)) {
            cut_or_corrupt(cut);
            open_file(cur_ + 1);
            continue;
        }
        uint32_t len;
        uint16_t type;
        std::memcpy(&len, h, 4);
        std::memcpy(&type, h + 4, 2);
        if (len > kRecMaxPayload)
            throw RecordingError(fmt::format("{} is corrupt: the record at byte {} claims {} bytes", name_, off_, len));
        RawRecord r;
        r.type = type;
        r.offset = off_;
        r.payload.resize(len);
        uint32_t want = 0;
        if (fread_unlocked(r.payload.data(), 1, len, f_) != len || fread_unlocked(&want, 1, 4, f_) != 4) {
            cut_or_corrupt(cut);
            open_file(cur_ + 1);
            continue;
        }
        uint32_t got = crc32(h + 4, 2);
        got = crc32(r.payload.data(), r.payload.size(), got);
        if (got != want)
            throw RecordingError(fmt::format("{} is corrupt: the {} record at byte {} fails its checksum", name_,
                                             rec_name(type), off_));
        off_ += sizeof(h) + len + 4;
        // A later segment's snapshot repeats what the engine already knows.
        if (cur_ > 0 && type == static_cast<uint16_t>(Rec::SnapshotBegin)) {
            skipping_ = true;
            continue;
        }
        if (skipping_) {
            if (type == static_cast<uint16_t>(Rec::SnapshotEnd))
                skipping_ = false;
            continue;
        }
        return r;
    }
    return std::nullopt;
}

std::optional<RawRecord> RecordingReader::next()
{
    if (peeked_) {
        auto r = std::move(peeked_);
        peeked_.reset();
        return r;
    }
    return read_one();
}

uint16_t RecordingReader::peek_type()
{
    if (!peeked_)
        peeked_ = read_one();
    return peeked_ ? peeked_->type : 0;
}

} // namespace n502
