// libFuzzer target: `n502trace replay` and `report` read files from anywhere
// (a colleague's laptop, a cut-off copy). Any bytes must give verdicts or a
// clear error (RecordingError, or another std::exception turned into exit 2
// by the callers), never a crash, undefined behaviour, or a hang.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <unistd.h>
#include <vector>

#include "engine.hpp"
#include "recording.hpp"

// The checksums would stop random inputs at the first record. With the
// first byte odd, the rest is read as records without them ([u16 length]
// [u16 type][payload], length capped by what is left) and written as a
// well-formed recording, header and CRCs included: that reaches the
// decoding of every record type. Even: the bytes as they are.
static std::string as_recording(const uint8_t *data, size_t size)
{
    std::string out(n502::kRecMagic, 8);
    uint32_t version = n502::kRecVersion, zero = 0;
    uint64_t seq = 0;
    out.append(reinterpret_cast<const char *>(&version), 4);
    out.append(reinterpret_cast<const char *>(&zero), 4);
    out.append(reinterpret_cast<const char *>(&seq), 8);
    size_t pos = 0;
    while (pos + 4 <= size) {
        uint16_t len, type;
        std::memcpy(&len, data + pos, 2);
        std::memcpy(&type, data + pos + 2, 2);
        pos += 4;
        size_t n = len > size - pos ? size - pos : len;
        uint32_t n32 = static_cast<uint32_t>(n);
        std::string rec(reinterpret_cast<const char *>(&type), 2);
        rec.append(reinterpret_cast<const char *>(data + pos), n);
        uint32_t crc = n502::crc32(rec.data(), rec.size());
        out.append(reinterpret_cast<const char *>(&n32), 4);
        out += rec;
        out.append(reinterpret_cast<const char *>(&crc), 4);
        pos += n;
    }
    return out;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    // One scratch file per process, removed when the fuzzer exits.
    static struct Scratch {
        std::string path = "/tmp/n502-fuzz-recording-" + std::to_string(getpid()) + ".rec";
        ~Scratch() { unlink(path.c_str()); }
    } scratch;
    const std::string &path = scratch.path;
    std::string bytes = size && (data[0] & 1) ? as_recording(data + 1, size - 1)
                                              : std::string(reinterpret_cast<const char *>(data), size);
    FILE *f = fopen(path.c_str(), "wb");
    if (!f)
        return 0;
    fwrite(bytes.data(), 1, bytes.size(), f);
    fclose(f);
    std::vector<std::string> warnings;
    try {
        (void)n502::replay_to_json(path, &warnings);
    } catch (const std::exception &) {
    }
    return 0;
}
