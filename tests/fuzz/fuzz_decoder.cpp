// libFuzzer target: the event decoder takes any ring-buffer record (short,
// oversized, wrong type or size) safely, and whatever it accepts can be fed
// to the state and the correlator.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "correlator.hpp"
#include "decoder.hpp"
#include "state.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static n502::State state;
    static n502::Correlator correlator(state, n502::Timebase(0));
    // The input is a sequence of records, each prefixed by one length byte.
    size_t pos = 0;
    while (pos < size) {
        size_t n = data[pos++];
        n = n > size - pos ? size - pos : n;
        std::string why;
        if (auto ev = n502::decode(data + pos, n, &why))
            state.apply(*ev);
        pos += n;
    }
    n502::LogLine line;
    line.pid = 1;
    line.upstream_peer = "127.0.0.1:8080";
    line.kind = n502::LogKind::PrematureClose;
    (void)correlator.explain(line, true);
    return 0;
}
