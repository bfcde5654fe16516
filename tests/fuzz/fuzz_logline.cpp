// libFuzzer target: the error-log and access-log parsers, and the text
// sink's escaping, take any bytes (partial, huge, binary, hostile lines)
// without crashing or reading out of bounds, and what they return is
// consistent.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "accesslog.hpp"
#include "logline.hpp"
#include "sinks.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    std::string_view line(reinterpret_cast<const char *>(data), size);
    if (auto l = n502::parse_upstream_error(line)) {
        if (l->status != 502 && l->status != 504)
            __builtin_trap();
        (void)n502::to_string(l->kind);
        // A line cut before its upstream names no upstream (not a wrong one).
        if (l->upstream_cut && !l->upstream_peer.empty())
            __builtin_trap();
    }
    if (auto a = n502::parse_access_error(line)) {
        if (a->status != 502 && a->status != 504)
            __builtin_trap();
    }
    // What the terminal gets: no control character at all (C0, DEL, C1 as UTF-8).
    std::string shown = n502::visible_text(line);
    for (size_t i = 0; i < shown.size(); i++) {
        unsigned char c = shown[i];
        if (c < 0x20 || c == 0x7f ||
            (c == 0xC2 && i + 1 < shown.size() && static_cast<unsigned char>(shown[i + 1]) < 0xA0))
            __builtin_trap();
    }
    return 0;
}
