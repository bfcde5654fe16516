// Recordings (--record FILE, `n502trace replay FILE`): every input the
// verdicts are made from, in the order the engine took it.
//
// File layout (all integers little-endian):
//   header   "N502REC\n" (8 bytes), u32 format version, u32 reserved (0),
//            u64 segment number (0 for the first segment of a run)
//   records  u32 payload length, u16 type, payload, u32 CRC-32 of type+payload
// Writes only append whole records, so a copy taken while the file is written
// is a valid prefix; a file cut off inside a record replays up to the last
// whole one. With --record-max the run is split into segments (FILE is the
// newest, FILE.1 the one before, ...; the oldest is deleted when the total
// would exceed the bound); each segment starts with a snapshot of what the
// engine knows, so it replays on its own.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "container.hpp"
#include "decoder.hpp"

namespace n502 {

constexpr char kRecMagic[8] = {'N', '5', '0', '2', 'R', 'E', 'C', '\n'};
// Format versions: 1, the first; 2, every holder look-up's answer is there
// (answer:holder). Version 1 files written before the look-up existed lack
// them, and replay treats a missing one as "not asked".
constexpr uint32_t kRecVersion = 2;
constexpr size_t kRecHeaderSize = 24;
constexpr uint32_t kRecMaxPayload = 16u << 20;

enum class Rec : uint16_t {
    Config = 1,        // options and the clock at the start of the segment
    SnapshotBegin = 2, // what the engine knew when the segment started ...
    SnapshotEnd = 3,   // ... (skipped when segments are replayed one after another)
    AddProcess = 10,
    AddListener = 11,
    AddPreexisting = 12,
    AddCapture = 13,
    RemoveCapture = 14,
    Tick = 20,         // boot ns, wall-clock ns
    Timebase = 21,
    Kernel = 22,       // one raw ring-buffer record
    LogLine = 23,      // host pid the line was mapped to, text
    Counters = 24,     // kernel loss counters
    Step = 25,
    Ready = 26,
    Warning = 27,
    Finish = 28,
    // Answers looked up while an input was taken (they follow it).
    AnsFacts = 40,
    AnsContainer = 41,
    AnsListener = 42,
    AnsFile = 43,
    AnsCreds = 44,
    AnsActivity = 45,
    AnsPortRange = 46,
    AnsAbortOnOverflow = 47,
    AnsSocketsTo = 48,
    AnsHolder = 49,
};

// Which look-ups a run makes, and when: written in the Config record so a
// replay can tell a recording made by a build that asked less (answers it
// never wrote) from a damaged one. Bump it whenever a look-up is added (a
// new Ans* type, a new Host or FactsSource method) or an existing one is
// asked in a case it was not before; the version string alone cannot say
// (builds between releases share it). 0: not written (builds before this
// number existed). 2: a verdict the output rate limit suppresses makes
// none of the look-ups that only explaining it needs (a recording saying 1
// is replayed the old way; the two development builds before this number
// was raised, 9c821bf and 936cbfb, skipped those look-ups but wrote 1).
// 3: a listener found at the start has its process's facts looked up then.
// 4: a refused connect whose address's last listener was found at the start
// and still lives asks whether anything listens there now (that listener's
// close is not seen: it had no kernel record).
// 5: an error-log line's request covers its access line from when the line
// is taken, not once its verdict is made (fewer access-only verdicts, whose
// look-ups are then not asked).
constexpr uint32_t kRecLookups = 5;
// Does a replay of a recording saying `lookups` ask what its run asked? This
// build's number, and 1 to 4, which are replayed the old way (lazy
// rendering off below 2, no listener facts below 3, no listener asked
// again below 4, requests remembered at their verdicts below 5).
constexpr bool replays_as_recorded(uint32_t lookups)
{
    return lookups >= 1 && lookups <= kRecLookups;
}
// Whether a replay renders lazily, as the run that wrote `lookups` did.
constexpr bool lazy_render_for(uint32_t lookups) { return lookups >= 2; }
// Whether a replay looks up a starting listener's facts, as that run did.
constexpr bool listener_facts_for(uint32_t lookups) { return lookups >= 3; }
// Whether a replay asks again if a preexisting listener still listens.
constexpr bool listener_recheck_for(uint32_t lookups) { return lookups >= 4; }
// Whether a replay remembers an error-log line's request when it takes the
// line (CorrelatorOptions::remember_when_taken).
constexpr bool remember_when_taken_for(uint32_t lookups) { return lookups >= 5; }

const char *rec_name(uint16_t type);
uint32_t crc32(const void *data, size_t len, uint32_t crc = 0);

// Bad recordings: not one, a newer format, a corrupt record.
struct RecordingError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Payload encoding.
class Enc {
public:
    Enc &u8(uint8_t v) { return raw(&v, 1); }
    Enc &u16(uint16_t v) { return raw(&v, 2); }
    Enc &u32(uint32_t v) { return raw(&v, 4); }
    Enc &u64(uint64_t v) { return raw(&v, 8); }
    Enc &i64(int64_t v) { return raw(&v, 8); }
    Enc &str(const std::string &s)
    {
        u32(static_cast<uint32_t>(s.size()));
        return raw(s.data(), s.size());
    }
    Enc &addr(const Addr &a);
    Enc &container(const std::optional<ContainerInfo> &c);
    Enc &raw(const void *p, size_t n)
    {
        buf.append(static_cast<const char *>(p), n);
        return *this;
    }
    std::string buf;
};

class Dec {
public:
    Dec(const std::string &s, uint16_t type) : s_(s), type_(type) {}
    uint8_t u8() { return get<uint8_t>(); }
    uint16_t u16() { return get<uint16_t>(); }
    uint32_t u32() { return get<uint32_t>(); }
    uint64_t u64() { return get<uint64_t>(); }
    int64_t i64() { return get<int64_t>(); }
    std::string str();
    Addr addr();
    std::optional<ContainerInfo> container();
    // True when the payload is read to its end (a field added later is absent).
    bool at_end() const { return pos_ == s_.size(); }

private:
    template <typename T> T get()
    {
        need(sizeof(T));
        T v;
        std::memcpy(&v, s_.data() + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }
    void need(size_t n);
    const std::string &s_;
    uint16_t type_;
    size_t pos_ = 0;
};

// "64M", "1G", "4096", "512k" -> bytes; nullopt when not a size.
std::optional<uint64_t> parse_size(const std::string &s);

// The writer. Records are buffered and written whole (flush(), or when the
// buffer passes 64 KiB); a write error stops the recording (said once).
class Recorder {
public:
    // max_bytes 0: one file, unbounded.
    static std::unique_ptr<Recorder> open(const std::string &path, uint64_t max_bytes, std::string *err);
    ~Recorder();

    void put(Rec type, const std::string &payload);
    void put(Rec type, const Enc &e) { put(type, e.buf); }
    void flush();
    // Between inputs: when the current segment is full, start the next one
    // (the oldest is deleted to stay under the bound) and call on_segment to
    // write the new segment's snapshot. Returns true when it rotated.
    // now_ns: a monotonic clock, for min_segment_ns.
    bool maybe_rotate(uint64_t now_ns = 0);
    // A segment is kept at least this long, whatever its size: a snapshot
    // costs a scan of the host, and a bound too small for the input rate
    // would take one every few milliseconds and fall behind the kernel's
    // events (a notice says the files then total more than asked).
    uint64_t min_segment_ns = 0;
    std::function<void()> on_segment;
    // Set once when a write or a rotation failed (the recording stopped there).
    std::string failure;
    // Set once for something worth a warning that does not stop it.
    std::string notice;
    uint64_t segment() const { return seq_; }
    uint64_t segment_limit() const { return seg_max_; }

private:
    Recorder() = default;
    bool start_segment(std::string *err);
    std::string path_;
    uint64_t max_ = 0, seg_max_ = 0;
    int fd_ = -1;
    uint64_t seq_ = 0;
    uint64_t written_ = 0; // bytes in the current segment (file + buffer)
    uint64_t snapshot_ = 0; // bytes of the current segment's opening snapshot
    unsigned keep_ = 1;    // segments kept, FILE included
    std::string buf_;
    bool warned_small_ = false;
    bool warned_fast_ = false;
    uint64_t seg_started_ = 0; // now_ns when the current segment began
};

// The reader: records of one file, or of a base file and its older segments
// (FILE.N ... FILE.1, FILE) one after another.
struct RawRecord {
    uint16_t type = 0;
    std::string payload;
    uint64_t offset = 0; // in its file
};

class RecordingReader {
public:
    // Opens `path` and, when they exist, its older segments (path.1, path.2,
    // ...). Throws RecordingError for a missing file, not a recording, or a
    // newer format.
    explicit RecordingReader(const std::string &path);
    ~RecordingReader();
    RecordingReader(const RecordingReader &) = delete;
    RecordingReader &operator=(const RecordingReader &) = delete;
    // The next record, nullopt at the end. Snapshots of later segments are
    // skipped (the engine already knows what they say). Throws RecordingError
    // on a corrupt record; a file cut off inside a record ends its segment and
    // adds a note to warnings.
    std::optional<RawRecord> next();
    // Looks at the type of the next record without taking it (0 at the end).
    uint16_t peek_type();
    std::vector<std::string> warnings;
    uint64_t first_segment() const { return first_seq_; }
    // The format version of the segment being read.
    uint32_t version() const { return version_; }
    const std::vector<std::string> &files() const { return files_; }

private:
    std::optional<RawRecord> read_one();
    bool open_file(size_t i);
    // A record cut off: the end of a file still being written (a warning),
    // or, in an older segment that newer ones followed, corruption (throws).
    void cut_or_corrupt(const std::function<void()> &cut);
    std::vector<std::string> files_;
    size_t cur_ = 0;
    FILE *f_ = nullptr;
    std::string name_;
    uint64_t off_ = 0;
    uint64_t first_seq_ = 0, seq_ = 0;
    uint32_t version_ = kRecVersion;
    bool skipping_ = false;
    std::optional<RawRecord> peeked_;
};

// Reads the header of `path`: throws RecordingError when it is not a
// recording or is of a newer format; returns the segment number (and the
// format version in *version).
uint64_t read_recording_header(FILE *f, const std::string &name, uint32_t *version = nullptr);
// True when the file starts with the recording magic.
bool looks_like_recording(const std::string &path);
// Why `path` cannot be read as an input file (missing, unreadable, a
// directory, a device or a pipe), or "" when it is a readable regular file.
std::string input_file_problem(const std::string &path);

} // namespace n502
