#include "keyedhash.hpp"

#include <cstring>
#include <sys/random.h>

namespace n502 {

namespace {

inline uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

struct SipState {
    uint64_t v0, v1, v2, v3;

    void round()
    {
        v0 += v1;
        v1 = rotl(v1, 13);
        v1 ^= v0;
        v0 = rotl(v0, 32);
        v2 += v3;
        v3 = rotl(v3, 16);
        v3 ^= v2;
        v0 += v3;
        v3 = rotl(v3, 21);
        v3 ^= v0;
        v2 += v1;
        v1 = rotl(v1, 17);
        v1 ^= v2;
        v2 = rotl(v2, 32);
    }
    void absorb(uint64_t m)
    {
        v3 ^= m;
        round();
        round();
        v0 ^= m;
    }
};

// Little-endian, whatever the host's order.
inline uint64_t load_le(const unsigned char *p, size_t n)
{
    uint64_t m = 0;
    for (size_t i = 0; i < n; i++)
        m |= static_cast<uint64_t>(p[i]) << (8 * i);
    return m;
}

struct ProcessKey {
    uint64_t k0 = 0, k1 = 0;
    ProcessKey()
    {
        unsigned char b[16];
        // getrandom() blocks only before the kernel's pool is first ready;
        // should it fail, the address of this object still varies by run (ASLR).
        if (getrandom(b, sizeof(b), 0) == static_cast<ssize_t>(sizeof(b))) {
            k0 = load_le(b, 8);
            k1 = load_le(b + 8, 8);
        } else {
            k0 = reinterpret_cast<uintptr_t>(this) * 0x9e3779b97f4a7c15ULL;
            k1 = ~k0;
        }
    }
};

} // namespace

namespace {

// SipHash-2-4 over bytes given in pieces: the same as over their concatenation.
class SipStream {
public:
    SipStream(uint64_t k0, uint64_t k1)
        : s_{k0 ^ 0x736f6d6570736575ULL, k1 ^ 0x646f72616e646f6dULL, k0 ^ 0x6c7967656e657261ULL,
             k1 ^ 0x7465646279746573ULL}
    {
    }
    SipStream &add(std::string_view data)
    {
        const auto *p = reinterpret_cast<const unsigned char *>(data.data());
        size_t n = data.size(), i = 0;
        total_ += n;
        // Complete the word begun by an earlier piece, then whole words.
        for (; ntail_ && ntail_ < 8 && i < n; i++)
            tail_ |= static_cast<uint64_t>(p[i]) << (8 * ntail_++);
        if (ntail_ == 8) {
            s_.absorb(tail_);
            tail_ = 0;
            ntail_ = 0;
        }
        for (; i + 8 <= n; i += 8)
            s_.absorb(load_le(p + i, 8));
        if (i < n) {
            tail_ = load_le(p + i, n - i);
            ntail_ = n - i;
        }
        return *this;
    }
    uint64_t finish()
    {
        s_.absorb(tail_ | (static_cast<uint64_t>(total_ & 0xff) << 56));
        s_.v2 ^= 0xff;
        for (int i = 0; i < 4; i++)
            s_.round();
        return s_.v0 ^ s_.v1 ^ s_.v2 ^ s_.v3;
    }

private:
    SipState s_;
    uint64_t tail_ = 0; // bytes of the word not yet absorbed
    size_t ntail_ = 0;
    uint64_t total_ = 0;
};

const ProcessKey &process_key()
{
    static const ProcessKey key;
    return key;
}

} // namespace

uint64_t siphash24(uint64_t k0, uint64_t k1, std::string_view data)
{
    return SipStream(k0, k1).add(data).finish();
}

uint64_t siphash24(uint64_t k0, uint64_t k1, std::initializer_list<std::string_view> pieces)
{
    SipStream s(k0, k1);
    for (std::string_view p : pieces)
        s.add(p);
    return s.finish();
}

uint64_t keyed_hash(std::string_view data)
{
    return siphash24(process_key().k0, process_key().k1, data);
}

uint64_t keyed_hash(std::string_view a, std::string_view b)
{
    // a's length first: ("ab", "c") and ("a", "bc") differ, and no a can
    // pass for another pair's length.
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = static_cast<unsigned char>(static_cast<uint64_t>(a.size()) >> (8 * i));
    return siphash24(process_key().k0, process_key().k1,
                     {std::string_view(reinterpret_cast<const char *>(len), sizeof(len)), a, b});
}

} // namespace n502
