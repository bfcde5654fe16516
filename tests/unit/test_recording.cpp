// Recordings: the file format (round trip, a file cut off, a corrupt record,
// a newer format, not a recording, segments under a bound) and the engine's
// replay giving the live verdicts.
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fmt/format.h>
#include <functional>
#include <sys/socket.h>
#include <fstream>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.hpp"
#include "n502/events.h"
#include "recording.hpp"

using namespace n502;

namespace {

// The tests' scratch directory, removed when the test program exits.
struct ScratchDir {
    std::string path;
    ScratchDir()
    {
        char t[] = "/tmp/n502-rec-test-XXXXXX";
        path = mkdtemp(t) ? t : "";
    }
    ~ScratchDir()
    {
        if (!path.empty())
            (void)!std::system(("rm -rf '" + path + "'").c_str());
    }
};

std::string tmp_path(const std::string &name)
{
    static ScratchDir dir;
    REQUIRE(!dir.path.empty());
    std::string p = dir.path + "/" + name;
    for (int i = 0; i < 8; i++)
        unlink(i ? (p + "." + std::to_string(i)).c_str() : p.c_str());
    return p;
}

std::string slurp(const std::string &p)
{
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

void spit(const std::string &p, const std::string &s)
{
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f << s;
}

bool exists(const std::string &p)
{
    struct stat st;
    return stat(p.c_str(), &st) == 0;
}

class FakeFacts : public FactsSource {
public:
    ProcFacts proc(uint32_t pid, uint64_t) override
    {
        ProcFacts f;
        f.memory_cgroup = "/test/" + std::to_string(pid);
        f.ns_pid = pid % 100;
        return f;
    }
    std::optional<ContainerInfo> container(const std::string &path) override
    {
        return ContainerInfo{"docker", "id" + path, "web"};
    }
};

class FakeHost : public Host {
public:
    std::optional<ListenerQueue> listener(const Addr &, uint32_t) override { return std::nullopt; }
    FileFacts file(const std::string &) override { return {}; }
    std::optional<Creds> creds(uint32_t) override { return std::nullopt; }
    std::string activity(uint32_t) override { return "S (sleeping)"; }
    std::string port_range(uint32_t) override { return "32768-60999"; }
    int tcp_abort_on_overflow(uint32_t) override { return 0; }
    std::map<std::string, int> sockets_to(const Addr &, uint32_t) override { return {{"ESTABLISHED", 1}}; }
    std::optional<SocketHolder> holder(const Addr &, const Addr &, uint32_t) override
    {
        return SocketHolder{4242, "slow-app"};
    }
};

std::string refused_line(uint32_t pid, int conn, int port)
{
    return "2026/11/23 03:03:47 [error] " + std::to_string(pid) + "#" + std::to_string(pid) + ": *" +
           std::to_string(conn) +
           " connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.1, server: "
           "localhost, request: \"GET /" +
           std::to_string(conn) + " HTTP/1.1\", upstream: \"http://127.0.0.1:" + std::to_string(port) +
           "/\", host: \"localhost\"";
}

// What a live run feeds the engine after its start (now: its boot clock;
// offset: real minus boot). nullptr: `lines` refused connects.
using Scenario = std::function<void(Engine &eng, uint64_t &now, int64_t offset)>;

// A live run of the engine, recorded: Nginx processes, a listener, lines
// that become verdicts; returns the verdict lines it printed.
std::vector<std::string> live_run(const std::string &path, uint64_t max_bytes, int lines, std::string *out_json,
                                  const Scenario &scenario = nullptr,
                                  const std::function<void(EngineConfig &)> &configure = nullptr)
{
    std::string err;
    auto rec = Recorder::open(path, max_bytes, &err);
    REQUIRE(rec);
    char *buf = nullptr;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    {
        FakeFacts ff;
        FakeHost fh;
        RecordingFacts rf(ff, *rec);
        RecordingHost rh(fh, *rec);
        JsonSink sink(mem, Timebase(1'700'000'000'000'000'000LL));
        EngineConfig cfg;
        cfg.tb_offset_ns = 1'700'000'000'000'000'000LL;
        cfg.boot_ns = 5'000'000'000ULL;
        cfg.real_ns = cfg.boot_ns + cfg.tb_offset_ns;
        cfg.max_verdicts_per_sec = 0;
        if (configure)
            configure(cfg);
        Engine eng(cfg, sink, &rh, rf, rec.get());
        rec->on_segment = [&]() {
            rec->put(Rec::SnapshotBegin, std::string());
            eng.write_config();
            rf.write_known();
            eng.write_snapshot_state();
            rec->put(Rec::SnapshotEnd, std::string());
        };
        rec->put(Rec::SnapshotBegin, std::string());
        eng.write_config();
        eng.add_process(100, N502_PROC_NGINX, "nginx", 0);
        eng.add_process(101, N502_PROC_NGINX, "nginx", 100);
        eng.add_listener(Addr::ipv4(0x7f000001, 9000), 300, "python3");
        rec->put(Rec::SnapshotEnd, std::string());
        eng.ready(ReadyInfo{});
        uint64_t now = cfg.boot_ns;
        if (scenario)
            scenario(eng, now, cfg.tb_offset_ns);
        for (int i = 0; i < (scenario ? 0 : lines); i++) {
            rec->maybe_rotate();
            now += 50'000'000ULL;
            eng.tick(now, static_cast<int64_t>(now) + cfg.tb_offset_ns + 7);
            eng.log_line(refused_line(101, i + 1, 9000 + i % 3), [](uint32_t p) { return p; });
            eng.counters({0, 0});
            eng.step();
            rec->flush();
            eng.check_recorder();
        }
        eng.tick(now + 1'000'000'000ULL, static_cast<int64_t>(now) + cfg.tb_offset_ns + 1'000'000'007LL);
        eng.finish(1.5, 1234);
    }
    rec.reset();
    fclose(mem);
    std::string json(buf, len);
    free(buf);
    if (out_json)
        *out_json = json;
    std::vector<std::string> verdicts;
    std::istringstream in(json);
    for (std::string l; std::getline(in, l);)
        if (l.find("\"type\": \"verdict\"") != std::string::npos || l.find("\"type\":\"verdict\"") != std::string::npos)
            verdicts.push_back(l);
    return verdicts;
}

template <typename T> T kernel_event(uint16_t type, uint64_t ts, uint32_t tgid, const char *comm)
{
    T e{};
    e.hdr.type = type;
    e.hdr.size = sizeof(T);
    e.hdr.ts_ns = ts;
    e.hdr.tgid = e.hdr.tid = tgid;
    std::snprintf(e.hdr.comm, sizeof(e.hdr.comm), "%s", comm);
    return e;
}

n502_addr loopback(uint16_t port)
{
    n502_addr a{};
    a.family = AF_INET;
    a.port = port;
    a.addr[0] = 127;
    a.addr[3] = 1;
    return a;
}

// Nginx worker 101 connects to 127.0.0.1:port (socket 0x1000 + i, local
// port 40000 + i); the upstream's end is linked to it but its owner is never
// named (a server that speaks first, then hangs).
void hanging_connect(Engine &eng, uint64_t now, int i, uint16_t port = 9000)
{
    for (int to : {2, 1}) { // CLOSE -> SYN_SENT -> ESTABLISHED
        auto st = kernel_event<n502_state_event>(N502_EV_STATE, now, 101, "nginx");
        st.sk = 0x1000 + i;
        st.oldstate = to == 2 ? 7 : 2;
        st.newstate = to;
        st.sock_role = N502_SOCK_NGINX;
        st.owner_tgid = 101;
        st.src = loopback(static_cast<uint16_t>(40000 + i));
        st.dst = loopback(port);
        eng.kernel(&st, sizeof(st));
    }
    auto ac = kernel_event<n502_accept_event>(N502_EV_ACCEPT, now + 1000, 0, "swapper/0");
    ac.sk = 0x2000 + i;
    ac.nginx_sk = 0x1000 + i;
    ac.fd = -1;
    ac.nginx_tgid = 101;
    ac.local = loopback(port);
    ac.peer = loopback(static_cast<uint16_t>(40000 + i));
    ac.how = N502_TOOK_UNKNOWN;
    eng.kernel(&ac, sizeof(ac));
}

// Nginx's line for request *conn timing out on 127.0.0.1:port, at `now`;
// with `step`, the engine then explains what it can.
void timeout_line(Engine &eng, uint64_t now, int64_t offset, int conn, bool step = true, int port = 9000)
{
    int64_t real = static_cast<int64_t>(now) + offset;
    eng.tick(now, real);
    time_t sec = static_cast<time_t>(real / 1'000'000'000LL);
    struct tm tm;
    localtime_r(&sec, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof(stamp), "%Y/%m/%d %H:%M:%S", &tm);
    eng.log_line(std::string(stamp) + " [error] 101#101: *" + std::to_string(conn) +
                     " upstream timed out (110: Connection timed out) while reading response "
                     "header from upstream, client: 127.0.0.1, server: localhost, request: \"GET / HTTP/1.1\", "
                     "upstream: \"http://127.0.0.1:" + std::to_string(port) + "/\", host: \"localhost\"",
                 [](uint32_t p) { return p; });
    if (step)
        eng.step();
}

// One hanging connection; a second later Nginx times out (proxy_read_timeout
// 1s): the verdict asks the host who holds the upstream's end (FakeHost: 4242).
void timeout_scenario(Engine &eng, uint64_t &now, int64_t offset)
{
    now += 50'000'000ULL;
    hanging_connect(eng, now, 0);
    now += 1'000'000'000ULL;
    timeout_line(eng, now, offset, 1);
}

// Four hanging connections time out under a limit of one verdict a second
// per cause and upstream: the first line is shown; a second later, in one
// step, two more to the same upstream are repeats the output does not show,
// and the fourth, to another upstream, is shown.
void timeouts_scenario(Engine &eng, uint64_t &now, int64_t offset)
{
    now += 50'000'000ULL;
    for (int i = 0; i < 4; i++)
        hanging_connect(eng, now, i, i < 3 ? 9000 : 9001);
    now += 1'000'000'000ULL;
    timeout_line(eng, now, offset, 1);
    now += 100'000'000ULL;
    timeout_line(eng, now, offset, 2, false);
    timeout_line(eng, now, offset, 3, false);
    timeout_line(eng, now, offset, 4, true, 9001);
}

// The recording without its records of one type (each record carries its
// own checksum), and with the given format version.
std::string without_records(const std::string &bytes, Rec type, uint32_t version)
{
    std::string out = bytes.substr(0, kRecHeaderSize);
    std::memcpy(&out[8], &version, 4);
    for (size_t off = kRecHeaderSize; off + 6 <= bytes.size();) {
        uint32_t len;
        uint16_t t;
        std::memcpy(&len, &bytes[off], 4);
        std::memcpy(&t, &bytes[off + 4], 2);
        size_t whole = 4 + 2 + len + 4;
        if (t != static_cast<uint16_t>(type))
            out += bytes.substr(off, whole);
        off += whole;
    }
    return out;
}

// The recording with its configuration record's payload edited by `edit`
// (and its length and checksum made again).
std::string with_config(const std::string &bytes, const std::function<void(std::string &)> &edit)
{
    for (size_t off = kRecHeaderSize; off + 6 <= bytes.size();) {
        uint32_t len;
        uint16_t t;
        std::memcpy(&len, &bytes[off], 4);
        std::memcpy(&t, &bytes[off + 4], 2);
        if (t == static_cast<uint16_t>(Rec::Config)) {
            std::string payload = bytes.substr(off + 6, len);
            edit(payload);
            uint32_t n = static_cast<uint32_t>(payload.size());
            std::string rec(4 + 2 + n + 4, '\0');
            std::memcpy(&rec[0], &n, 4);
            std::memcpy(&rec[4], &t, 2);
            std::memcpy(&rec[6], payload.data(), n);
            uint32_t crc = crc32(&rec[4], 2 + n);
            std::memcpy(&rec[6 + n], &crc, 4);
            return bytes.substr(0, off) + rec + bytes.substr(off + 4 + 2 + len + 4);
        }
        off += 4 + 2 + len + 4;
    }
    FAIL("no configuration record");
    return bytes;
}

// The recording as if another build of n502trace had made it: the version
// it names (the same length as this one's) and the look-ups it made (its
// kRecLookups, the last field; 0: a build that did not write one).
std::string recorded_by(const std::string &bytes, const std::string &version, uint32_t lookups)
{
    REQUIRE(version.size() == std::string(N502_VERSION).size());
    return with_config(bytes, [&](std::string &payload) {
        auto at = payload.find(N502_VERSION);
        REQUIRE(at != std::string::npos);
        payload.replace(at, version.size(), version);
        REQUIRE(payload.size() >= 4);
        if (lookups)
            std::memcpy(&payload[payload.size() - 4], &lookups, 4);
        else
            payload.resize(payload.size() - 4);
    });
}

// Where the first record of `type` starts (npos: none).
size_t record_offset(const std::string &bytes, Rec type)
{
    for (size_t off = kRecHeaderSize; off + 6 <= bytes.size();) {
        uint32_t len;
        uint16_t t;
        std::memcpy(&len, &bytes[off], 4);
        std::memcpy(&t, &bytes[off + 4], 2);
        if (t == static_cast<uint16_t>(type))
            return off;
        off += 4 + 2 + len + 4;
    }
    return std::string::npos;
}

// A verdict without its "ts" (when it was made): a line still waiting for
// evidence where a recording ends is explained at its end, not when the live
// run explained it.
std::string strip_ts(std::string line)
{
    auto ts = line.find("\"ts\":\"");
    if (ts != std::string::npos)
        line.erase(ts, line.find('"', ts + 6) + 2 - ts);
    return line;
}

std::vector<std::string> verdict_lines(const std::string &json)
{
    std::vector<std::string> v;
    std::istringstream in(json);
    for (std::string l; std::getline(in, l);)
        if (l.find("\"type\": \"verdict\"") != std::string::npos || l.find("\"type\":\"verdict\"") != std::string::npos)
            v.push_back(l);
    return v;
}

} // namespace

TEST_CASE("records round-trip through the file with their types and payloads", "[recording]")
{
    std::string p = tmp_path("roundtrip.rec");
    {
        std::string err;
        auto r = Recorder::open(p, 0, &err);
        REQUIRE(r);
        r->put(Rec::Tick, Enc().u64(42).i64(-7));
        r->put(Rec::LogLine, Enc().u32(5).str("a line\nwith a newline"));
        r->put(Rec::Kernel, std::string(3000, '\xab'));
    }
    RecordingReader rd(p);
    auto a = rd.next();
    REQUIRE(a);
    CHECK(a->type == static_cast<uint16_t>(Rec::Tick));
    Dec d(a->payload, a->type);
    CHECK(d.u64() == 42);
    CHECK(d.i64() == -7);
    CHECK_THROWS_AS(d.u8(), RecordingError); // reading past the payload is refused
    auto b = rd.next();
    REQUIRE(b);
    Dec db(b->payload, b->type);
    CHECK(db.u32() == 5);
    CHECK(db.str() == "a line\nwith a newline");
    auto c = rd.next();
    REQUIRE(c);
    CHECK(c->payload == std::string(3000, '\xab'));
    CHECK(!rd.next());
    CHECK(rd.warnings.empty());
}

TEST_CASE("the replay of a recorded engine run gives the live verdicts and summary", "[recording]")
{
    std::string p = tmp_path("engine.rec");
    std::string live_json;
    auto live = live_run(p, 0, 6, &live_json);
    REQUIRE(live.size() == 6);
    std::vector<std::string> warnings;
    std::string replayed = replay_to_json(p, &warnings);
    CHECK(warnings.empty());
    CHECK(verdict_lines(replayed) == live);
    // The recorded wall clock stamps the verdicts (not the replay's).
    CHECK(live[0].find("2023-11-14T") != std::string::npos);
    auto summary = [](const std::string &j) {
        auto at = j.find("\"type\":\"summary\"");
        REQUIRE(at != std::string::npos);
        auto line = j.substr(j.rfind('\n', at) + 1);
        line = line.substr(0, line.find('\n'));
        return line; // stamped with the recorded clock too
    };
    CHECK(summary(replayed) == summary(live_json));
}

TEST_CASE("a recording cut off inside a record replays up to its last whole record, with a warning",
          "[recording]")
{
    std::string p = tmp_path("cut.rec");
    auto live = live_run(p, 0, 6, nullptr);
    std::string bytes = slurp(p);
    // Cut in the middle of the records: find the 4th log line's record and cut inside it.
    auto at = bytes.find("*4 connect()");
    REQUIRE(at != std::string::npos);
    spit(p, bytes.substr(0, at));
    std::vector<std::string> warnings;
    std::string replayed = replay_to_json(p, &warnings);
    auto got = verdict_lines(replayed);
    REQUIRE(got.size() == 3); // lines 1-3 were whole; pending ones are explained at the end
    for (size_t i = 0; i < got.size(); i++)
        CHECK(strip_ts(got[i]) == strip_ts(live[i]));
    CHECK(got[0] != live[0]); // explained at the end of what was recorded, not 300 ms after the line
    REQUIRE(warnings.size() >= 2);
    CHECK(warnings[0].find("cut off inside a record") != std::string::npos);
    CHECK(warnings[1].find("no end record") != std::string::npos);
}

TEST_CASE("a record whose checksum fails is refused as corrupt", "[recording]")
{
    std::string p = tmp_path("corrupt.rec");
    live_run(p, 0, 3, nullptr);
    std::string bytes = slurp(p);
    auto at = bytes.find("*2 connect()");
    REQUIRE(at != std::string::npos);
    bytes[at + 1] = '9';
    spit(p, bytes);
    std::vector<std::string> warnings;
    CHECK_THROWS_WITH(replay_to_json(p, &warnings), Catch::Contains("corrupt") && Catch::Contains("checksum"));
}

TEST_CASE("a recording of a newer format version is refused by name", "[recording]")
{
    std::string p = tmp_path("future.rec");
    live_run(p, 0, 1, nullptr);
    std::string bytes = slurp(p);
    uint32_t v = kRecVersion + 1;
    std::memcpy(&bytes[8], &v, 4);
    spit(p, bytes);
    std::vector<std::string> warnings;
    CHECK_THROWS_WITH(replay_to_json(p, &warnings),
                      Catch::Contains("format version " + std::to_string(v)) && Catch::Contains("newer n502trace"));
}

TEST_CASE("holder answers: replayed; missing from a format 1 recording means not asked, from format 2 a warning",
          "[recording]")
{
    std::string p = tmp_path("holder.rec");
    auto live = live_run(p, 0, 0, nullptr, timeout_scenario);
    REQUIRE(live.size() == 1);
    CHECK(live[0].find("\"cause\":\"upstream_timeout\"") != std::string::npos);
    CHECK(live[0].find("\"upstream_pid\":4242") != std::string::npos);
    std::vector<std::string> warnings;
    CHECK(verdict_lines(replay_to_json(p, &warnings)) == live);
    CHECK(warnings.empty());

    std::string bytes = slurp(p);
    // Written before the look-up existed: the replay does not expect it.
    spit(p, without_records(bytes, Rec::AnsHolder, 1));
    warnings.clear();
    auto old = verdict_lines(replay_to_json(p, &warnings));
    CHECK(warnings.empty());
    REQUIRE(old.size() == 1);
    CHECK(old[0].find("\"cause\":\"upstream_timeout\"") != std::string::npos);
    CHECK(old[0].find("4242") == std::string::npos);

    // A whole current recording without the answer is damaged.
    std::string stripped = without_records(bytes, Rec::AnsHolder, kRecVersion);
    spit(p, stripped);
    warnings.clear();
    replay_to_json(p, &warnings);
    REQUIRE(warnings.size() == 1);
    // (the holder's, and those the verdict then took another way for)
    CHECK(warnings[0].find("look-ups the replay made are not in the recording") != std::string::npos);
    CHECK(warnings[0].find("please report it") != std::string::npos);

    // Made by a build that made other look-ups: that one may not have asked.
    spit(p, recorded_by(stripped, "9.9.9", kRecLookups + 1));
    warnings.clear();
    replay_to_json(p, &warnings);
    REQUIRE(warnings.size() == 1);
    CHECK(warnings[0].find("recorded by n502trace 9.9.9 (look-ups " + std::to_string(kRecLookups + 1) +
                           "), this is " N502_VERSION " (look-ups " + std::to_string(kRecLookups) + ")") !=
          std::string::npos);

    // By a build that did not say (older than the field), even with this
    // version's name: it replays, and is not taken for damage.
    spit(p, recorded_by(stripped, N502_VERSION, 0));
    warnings.clear();
    replay_to_json(p, &warnings);
    REQUIRE(warnings.size() == 1);
    CHECK(warnings[0].find("recorded by n502trace " N502_VERSION " (an earlier build)") != std::string::npos);
    spit(p, recorded_by(bytes, N502_VERSION, 0)); // whole, it replays as this build's own
    warnings.clear();
    CHECK(verdict_lines(replay_to_json(p, &warnings)) == live);
    CHECK(warnings.empty());

    // Another version's name with the same look-ups explains nothing.
    spit(p, recorded_by(stripped, "9.9.9", kRecLookups));
    warnings.clear();
    replay_to_json(p, &warnings);
    REQUIRE(warnings.size() == 1);
    CHECK(warnings[0].find("please report it") != std::string::npos);
}

TEST_CASE("a recording from before suppressed verdicts skipped their look-ups replays as it ran", "[recording]")
{
    // An earlier build (look-ups 1) explained every verdict and then asked
    // the rate limit, so the recording holds the look-ups of verdicts it did
    // not show. Made here by running the engine that way.
    std::string p = tmp_path("eager.rec");
    std::string live_json;
    auto live = live_run(p, 0, 0, &live_json, timeouts_scenario, [](EngineConfig &c) {
        c.max_verdicts_per_sec = 1;
        c.lazy_render = false;
    });
    REQUIRE(live.size() == 2);
    CHECK(live_json.find("\"suppressed\":2,") != std::string::npos);
    for (const auto &v : live)
        CHECK(v.find("\"upstream_pid\":4242") != std::string::npos);
    std::string eager = recorded_by(slurp(p), N502_VERSION, 1);
    spit(p, eager);
    std::vector<std::string> warnings;
    CHECK(verdict_lines(replay_to_json(p, &warnings)) == live);
    CHECK(warnings.empty());

    // Read as this build's (look-ups 2), the suppressed verdicts' answers
    // are left unasked and the next verdict's questions meet them.
    spit(p, recorded_by(eager, N502_VERSION, 2));
    warnings.clear();
    auto wrong = verdict_lines(replay_to_json(p, &warnings));
    CHECK(wrong != live);
    CHECK(!warnings.empty());

    // This build records a suppressed verdict without those look-ups, and
    // replays its own recording as it ran.
    live = live_run(p, 0, 0, nullptr, timeouts_scenario, [](EngineConfig &c) { c.max_verdicts_per_sec = 1; });
    REQUIRE(live.size() == 2);
    warnings.clear();
    CHECK(verdict_lines(replay_to_json(p, &warnings)) == live);
    CHECK(warnings.empty());
    CHECK(slurp(p).size() < eager.size());
}

TEST_CASE("look-ups missing from a recording without its end: cut off at the end, or damage before it",
          "[recording]")
{
    std::string p = tmp_path("holder-cut.rec");
    auto live = live_run(p, 0, 0, nullptr, timeout_scenario);
    REQUIRE(live.size() == 1);
    std::string bytes = slurp(p);
    size_t holder = record_offset(bytes, Rec::AnsHolder);
    REQUIRE(holder != std::string::npos);

    // Cut off between the input and its answer (at a record's edge): the
    // answers that were never written are blamed on the cut.
    spit(p, bytes.substr(0, holder));
    std::vector<std::string> warnings;
    replay_to_json(p, &warnings);
    REQUIRE(warnings.size() == 2);
    CHECK(warnings[0].find("no end record") != std::string::npos);
    CHECK(warnings[1].find("not in the recording (the recording was cut off before their answers were written)") !=
          std::string::npos);

    // The answer gone from the middle of a recording that also lost its
    // end: inputs follow the one that asked, so the cut does not explain it.
    std::string damaged = without_records(without_records(bytes, Rec::AnsHolder, kRecVersion), Rec::Finish,
                                          kRecVersion);
    REQUIRE(record_offset(damaged, Rec::Tick) != std::string::npos);
    spit(p, damaged);
    warnings.clear();
    replay_to_json(p, &warnings);
    REQUIRE(warnings.size() == 2);
    CHECK(warnings[0].find("no end record") != std::string::npos);
    CHECK(warnings[1].find("before the recording's last input") != std::string::npos);
    CHECK(warnings[1].find("cut off before") == std::string::npos);
    CHECK(warnings[1].find("please report it") != std::string::npos);
}

TEST_CASE("a file that is not a recording is refused", "[recording]")
{
    std::string p = tmp_path("not.rec");
    spit(p, "{\"type\": \"ready\"}\n");
    std::vector<std::string> warnings;
    CHECK_THROWS_WITH(replay_to_json(p, &warnings), Catch::Contains("is not an n502trace recording"));
    spit(p, "");
    CHECK_THROWS_WITH(replay_to_json(p, &warnings), Catch::Contains("is empty"));
    CHECK_THROWS_WITH(replay_to_json(tmp_path("missing.rec"), &warnings), Catch::Contains("cannot read"));
    CHECK(!looks_like_recording(p));
}

TEST_CASE("--record-max: segments rotate, the oldest is dropped, each segment replays on its own", "[recording]")
{
    std::string p = tmp_path("bounded.rec");
    const uint64_t max = 64 * 1024;
    auto live = live_run(p, max, 600, nullptr);
    REQUIRE(live.size() == 600);
    CHECK(exists(p));
    CHECK(exists(p + ".1"));
    CHECK(exists(p + ".3"));
    CHECK(!exists(p + ".4"));
    uint64_t total = 0;
    for (const auto &f : {p, p + ".1", p + ".2", p + ".3"}) {
        struct stat st;
        REQUIRE(stat(f.c_str(), &st) == 0);
        total += static_cast<uint64_t>(st.st_size);
    }
    CHECK(total <= max + 8192); // a segment ends after the record that passed its share

    // All kept segments, oldest first: says what was dropped; the verdicts
    // are the live ones' last part (every line is its own verdict here).
    std::vector<std::string> warnings;
    std::string replayed = replay_to_json(p, &warnings);
    REQUIRE(!warnings.empty());
    CHECK(warnings[0].find("were dropped") != std::string::npos);
    auto got = verdict_lines(replayed);
    REQUIRE(!got.empty());
    REQUIRE(got.size() < live.size());
    for (size_t i = 0; i < got.size(); i++)
        CHECK(got[i] == live[live.size() - got.size() + i]);

    // The oldest kept segment alone (copied away from its siblings).
    std::string alone = tmp_path("alone.rec");
    spit(alone, slurp(p + ".3"));
    warnings.clear();
    auto seg = verdict_lines(replay_to_json(alone, &warnings));
    REQUIRE(seg.size() > 20);
    // Equal, but for the lines still waiting where the segment ends (the
    // grace period is 300 ms, six of the 50 ms ticks): those are explained at
    // its end.
    for (size_t i = 0; i < seg.size(); i++)
        CHECK((i + 10 < seg.size() ? seg[i] : strip_ts(seg[i])) == (i + 10 < seg.size() ? got[i] : strip_ts(got[i])));
}

TEST_CASE("--record-max: a rotation that cannot be made stops the recording, and keeps it whole", "[recording]")
{
    std::string p = tmp_path("stuck.rec");
    // The oldest segment's name is taken by a directory that is not empty:
    // the rotation cannot remove it (even as root).
    std::string blocker = p + ".3";
    REQUIRE(mkdir(blocker.c_str(), 0700) == 0);
    spit(blocker + "/x", "not ours");
    std::string json;
    auto live = live_run(p, 64 * 1024, 600, &json);
    CHECK(json.find("\"code\":\"record_failed\"") != std::string::npos);
    CHECK(json.find("cannot remove " + blocker) != std::string::npos);
    CHECK(exists(blocker + "/x")); // not ours: left alone
    CHECK(!exists(p + ".1"));      // nothing rotated
    // The one segment holds everything up to the failure, whole (the lines
    // still waiting for evidence there are explained at its end).
    std::vector<std::string> warnings;
    auto got = verdict_lines(replay_to_json(p, &warnings));
    REQUIRE(warnings.size() == 1);
    CHECK(warnings[0].find("has no end record") != std::string::npos);
    REQUIRE(got.size() > 20);
    REQUIRE(got.size() < live.size());
    for (size_t i = 0; i + 10 < got.size(); i++)
        CHECK(got[i] == live[i]);
    unlink((blocker + "/x").c_str());
    rmdir(blocker.c_str());
}

TEST_CASE("--record FILE leaves FILE.N alone unless it is a recording", "[recording]")
{
    std::string p = tmp_path("keep.rec");
    spit(p + ".1", "a rotated log, not a recording\n");
    std::string older = tmp_path("older.rec");
    live_run(older, 0, 1, nullptr);
    spit(p + ".2", slurp(older)); // an earlier run's segment
    live_run(p, 0, 1, nullptr);
    CHECK(slurp(p + ".1") == "a rotated log, not a recording\n");
    CHECK(!exists(p + ".2"));
    unlink((p + ".1").c_str());
}

TEST_CASE("a cut-off record in a segment that newer ones follow is corruption", "[recording]")
{
    std::string p = tmp_path("midcut.rec");
    live_run(p, 64 * 1024, 600, nullptr);
    REQUIRE(exists(p + ".2"));
    std::string bytes = slurp(p + ".2");
    spit(p + ".2", bytes.substr(0, bytes.size() - 3));
    std::vector<std::string> warnings;
    CHECK_THROWS_WITH(replay_to_json(p, &warnings),
                      Catch::Contains("is corrupt") && Catch::Contains("newer segments follow"));
}

TEST_CASE("sizes for --record-max", "[recording]")
{
    CHECK(parse_size("64M") == 64ULL << 20);
    CHECK(parse_size("1G") == 1ULL << 30);
    CHECK(parse_size("512k") == 512ULL << 10);
    CHECK(parse_size("4096") == 4096);
    CHECK(parse_size("64MiB") == 64ULL << 20);
    CHECK(!parse_size("M"));
    CHECK(!parse_size("-1"));
    CHECK(!parse_size("12x"));
}

TEST_CASE("a verdict says events were lost when they were counted while its line waited, however late",
          "[recording]")
{
    // A tool far behind (one drain of the ring buffer that took seconds)
    // counts a loss long before the verdicts of the lines it read after; and
    // the last counters, read at exit, count for the last verdicts.
    std::string p = tmp_path("losses.rec");
    std::string json;
    auto verdicts = live_run(p, 0, 0, &json, [](Engine &eng, uint64_t &now, int64_t offset) {
        auto at = [&](uint64_t t) { eng.tick(t, static_cast<int64_t>(t) + offset); };
        at(now += 1'000'000'000ULL);
        eng.log_line(refused_line(101, 1, 9000), [](uint32_t pid) { return pid; });
        at(now += 100'000'000ULL);
        eng.counters({5, 0});
        eng.step(); // the loss is counted: the line waits on
        at(now += 20'000'000'000ULL);
        eng.step(); // its verdict, 20 s later
        at(now += 1'000'000'000ULL);
        eng.log_line(refused_line(101, 2, 9001), [](uint32_t pid) { return pid; });
        at(now += 50'000'000ULL);
        eng.counters({9, 0}); // read at exit: finish() counts them
    });
    REQUIRE(verdicts.size() == 2);
    for (const auto &v : verdicts) {
        CHECK(v.find("kernel events were lost") != std::string::npos);
        CHECK(v.find("\"confidence\":\"high\"") == std::string::npos);
    }
    // A line taken well after a loss, with none since, says nothing of it.
    auto clean = live_run(tmp_path("losses2.rec"), 0, 0, nullptr, [](Engine &eng, uint64_t &now, int64_t offset) {
        auto at = [&](uint64_t t) { eng.tick(t, static_cast<int64_t>(t) + offset); };
        at(now += 1'000'000'000ULL);
        eng.counters({5, 0});
        eng.step();
        at(now += 30'000'000'000ULL);
        eng.log_line(refused_line(101, 3, 9000), [](uint32_t pid) { return pid; });
        at(now += 1'000'000'000ULL);
        eng.step();
    });
    REQUIRE(clean.size() == 1);
    CHECK(clean[0].find("kernel events were lost") == std::string::npos);
}

// A captured write (Nginx's log is a pipe) as the kernel side sends it:
// at most N502_LOG_MAX bytes, and how many more there were.
static std::string log_write(uint32_t tgid, const std::string &text, uint32_t cut, uint64_t ts)
{
    n502_log_event r;
    std::memset(&r, 0, sizeof(r));
    r.hdr.type = N502_EV_LOG;
    r.hdr.ts_ns = ts;
    r.hdr.tgid = r.hdr.tid = tgid;
    std::memcpy(r.hdr.comm, "nginx", 5);
    r.dev = 13;
    r.ino = 4242;
    r.fd = 2;
    size_t n = std::min<size_t>(text.size(), N502_LOG_MAX);
    std::memcpy(r.data, text.data(), n);
    r.len = static_cast<uint32_t>(n);
    r.cut = cut;
    size_t size = offsetof(n502_log_event, data) + n;
    r.hdr.size = static_cast<uint16_t>(size);
    return std::string(reinterpret_cast<const char *>(&r), size);
}

TEST_CASE("a captured write cut in the kernel ends its line: the next write is a line of its own", "[recording]")
{
    auto verdicts = live_run(tmp_path("cut.rec"), 0, 0, nullptr, [](Engine &eng, uint64_t &now, int64_t offset) {
        auto at = [&](uint64_t t) { eng.tick(t, static_cast<int64_t>(t) + offset); };
        eng.add_capture(13, 4242, "pipe:[4242]");
        at(now += 1'000'000'000ULL);
        // An access line with a long URL, cut at N502_LOG_MAX (no newline captured).
        std::string longline = "127.0.0.1 - - [23/Nov/2026:03:03:47 +0000] \"GET /" + std::string(5000, 'a');
        std::string w1 = log_write(101, longline, static_cast<uint32_t>(longline.size() + 40 - N502_LOG_MAX), now);
        eng.kernel(w1.data(), w1.size());
        std::string w2 = log_write(101, refused_line(101, 7, 9000) + "\n", 0, now + 1000);
        eng.kernel(w2.data(), w2.size());
        at(now += 1'000'000'000ULL);
        eng.step();
    });
    REQUIRE(verdicts.size() == 1);
    CHECK(verdicts[0].find("GET /7 HTTP/1.1") != std::string::npos);
}

TEST_CASE("a captured access log in a layout not read is said once; error lines among it do not count",
          "[recording]")
{
    auto run = [](bool json_layout) {
        std::string out;
        live_run(tmp_path("capfmt.rec"), 0, 0, &out, [&](Engine &eng, uint64_t &now, int64_t offset) {
            auto at = [&](uint64_t t) { eng.tick(t, static_cast<int64_t>(t) + offset); };
            eng.add_capture(13, 4242, "pipe:[4242] (stdout)");
            at(now += 1'000'000'000ULL);
            for (int i = 0; i < 120; i++) {
                std::string line =
                    json_layout ? fmt::format("{{\"status\":200,\"request\":\"GET /{} HTTP/1.1\"}}\n", i)
                                : fmt::format("127.0.0.1 - - [23/Nov/2026:03:03:47 +0000] \"GET /{} HTTP/1.1\" 200 "
                                              "5 \"-\" \"curl\"\n", i);
                if (i % 3 == 0) // (stderr and stdout to one pipe: error lines among them)
                    line += "2026/11/23 03:03:47 [notice] 1#1: signal process started\n";
                std::string w = log_write(101, line, 0, now + static_cast<uint64_t>(i));
                eng.kernel(w.data(), w.size());
            }
            at(now += 1'000'000'000ULL);
            eng.step();
        });
        return out;
    };
    std::string json = run(true);
    CHECK(json.find("\"code\":\"access_log_format\"") != std::string::npos);
    CHECK(json.find("pipe:[4242] (stdout)") != std::string::npos);
    size_t first = json.find("access_log_format");
    CHECK(json.find("access_log_format", first + 1) == std::string::npos); // once
    std::string combined = run(false);
    CHECK(combined.find("access_log_format") == std::string::npos);
}

TEST_CASE("a full kernel table is said and noted like lost events", "[recording]")
{
    std::string json;
    auto verdicts = live_run(tmp_path("mapfull.rec"), 0, 0, &json, [](Engine &eng, uint64_t &now, int64_t offset) {
        auto at = [&](uint64_t t) { eng.tick(t, static_cast<int64_t>(t) + offset); };
        at(now += 1'000'000'000ULL);
        eng.counters({0, 3});
        eng.step();
        at(now += 100'000'000ULL);
        eng.log_line(refused_line(101, 1, 9000), [](uint32_t pid) { return pid; });
        at(now += 1'000'000'000ULL);
        eng.step();
    });
    REQUIRE(verdicts.size() == 1);
    CHECK(verdicts[0].find("a kernel table was full") != std::string::npos);
    CHECK(verdicts[0].find("\"confidence\":\"high\"") == std::string::npos);
    CHECK(json.find("\"code\":\"map_full\"") != std::string::npos);
    CHECK(json.find("3 kernel table entries were not made or were forgotten") != std::string::npos);
}

TEST_CASE("a segment is kept for min_segment_ns however fast it fills, and the overrun is said once", "[recording]")
{
    std::string p = tmp_path("minseg.rec");
    std::string err;
    auto rec = Recorder::open(p, 64 * 1024, &err); // four segments of 16 KiB
    REQUIRE(rec);
    rec->min_segment_ns = 1'000'000'000ULL;
    uint64_t t = 5'000'000'000ULL;
    int rotations = 0;
    for (int i = 0; i < 100; i++) { // 100 KiB within 10 ms
        rec->put(Rec::LogLine, std::string(1024, 'x'));
        rotations += rec->maybe_rotate(t + static_cast<uint64_t>(i) * 100'000ULL);
    }
    CHECK(rotations == 1); // the first segment had no age limit yet to wait for: it began before now
    CHECK(rec->notice.find("small for this input rate") != std::string::npos);
    rec->notice.clear();
    for (int i = 0; i < 40; i++) {
        rec->put(Rec::LogLine, std::string(1024, 'x'));
        rotations += rec->maybe_rotate(t + 20'000'000ULL);
    }
    CHECK(rotations == 1);
    CHECK(rec->notice.empty()); // said once
    CHECK(rec->maybe_rotate(t + 1'100'000'000ULL)); // a second on: full, and old enough
    CHECK(rec->segment() == 2);
}

// A refused connect of worker 101 whose request line is `request`, cut as
// Nginx cuts an error-log line (2047 bytes).
static std::string cut_refused_line(const std::string &request)
{
    std::string raw = "2026/11/23 03:03:47 [error] 101#101: *1 connect() failed (111: Connection refused) while "
                      "connecting to upstream, client: 127.0.0.1, server: localhost, request: \"" +
                      request + "\", upstream: \"http://127.0.0.1:9000/\", host: \"localhost\"";
    raw.resize(std::min<size_t>(raw.size(), 2047));
    return raw;
}

TEST_CASE("an access line is covered by its request's error-log line from when that is read, however late its verdict",
          "[recording][accesslog]")
{
    // The access line is read first (Nginx writes it after the error line,
    // but n502trace read the error log just before); the error line comes
    // with the next read, and waits its grace for kernel evidence that never
    // comes, past the time the access line is checked: the access line must
    // not become a verdict of its own.
    const char *old = std::getenv("TZ");
    std::string saved = old ? old : "";
    set_local_zone("UTC");
    std::string json, path = tmp_path("access-wait.rec");
    // The same with a request line the error log cut short (matched by its
    // beginning), and another client's access line, which waits for nothing.
    const std::string long_request = "GET /" + std::string(3000, 'a') + " HTTP/1.1";
    auto verdicts = live_run(path, 0, 0, &json, [&](Engine &eng, uint64_t &now, int64_t offset) {
        auto at = [&](uint64_t t) { eng.tick(t, static_cast<int64_t>(t) + offset); };
        at(now += 1'000'000'000ULL);
        eng.log_line(R"(127.0.0.1 - - [23/Nov/2026:03:03:47 +0000] "GET /1 HTTP/1.1" 502 157 "-" "curl/7.88")",
                     [](uint32_t pid) { return pid; });
        at(now += 350'000'000ULL);
        eng.log_line(refused_line(101, 1, 9000), [](uint32_t pid) { return pid; });
        for (int i = 0; i < 20; i++) {
            at(now += 50'000'000ULL);
            eng.step();
        }
        eng.log_line("127.0.0.1 - - [23/Nov/2026:03:03:48 +0000] \"" + long_request + "\" 502 157 \"-\" \"curl\"",
                     [](uint32_t pid) { return pid; });
        at(now += 350'000'000ULL);
        eng.log_line(cut_refused_line(long_request), [](uint32_t pid) { return pid; });
        for (int i = 0; i < 20; i++) {
            at(now += 50'000'000ULL);
            eng.step();
        }
    });
    std::vector<std::string> warnings;
    std::string replayed = replay_to_json(path, &warnings);
    set_local_zone(old ? saved.c_str() : nullptr);
    REQUIRE(verdicts.size() == 2);
    for (const auto &v : verdicts)
        CHECK(v.find("(no error-log line for this request)") == std::string::npos);
    CHECK(warnings.empty());
    CHECK(verdict_lines(replayed) == verdicts); // the replay covers as the run did
    CHECK((json.find("\"access_only\":0") != std::string::npos ||
           json.find("\"access_only\": 0") != std::string::npos));
}
