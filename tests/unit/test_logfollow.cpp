// The log follower: appended lines, rotation, truncation and removal, and how
// often it looks the path up again (the main loop polls it every 10-50 ms).
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include "logfollow.hpp"

using namespace n502;

namespace {

struct Dir {
    std::string path;
    Dir()
    {
        char t[] = "/tmp/n502-follow-XXXXXX";
        REQUIRE(mkdtemp(t));
        path = t;
    }
    ~Dir() { (void)!system(("rm -rf " + path).c_str()); }
};

void append(const std::string &file, const std::string &text)
{
    FILE *f = fopen(file.c_str(), "a");
    REQUIRE(f);
    REQUIRE(fwrite(text.data(), 1, text.size(), f) == text.size());
    fclose(f);
}

// error.log in a scratch directory, holding `initial`, followed from its end.
struct Followed {
    Dir d;
    std::string log = d.path + "/error.log";
    LogFollower f;
    explicit Followed(const std::string &initial, size_t max_line = 64 * 1024) : f((append(log, initial), log), max_line)
    {
        std::string err;
        REQUIRE(f.open(true, &err));
    }
    // A rename rotation: the file moves to error.log.1, a new empty one takes its place.
    void rotate()
    {
        REQUIRE(rename(log.c_str(), (log + ".1").c_str()) == 0);
        append(log, "");
    }
};

// The kinds and texts of what a poll gave, "L:text" for lines.
std::vector<std::string> kinds(const std::vector<FollowEvent> &evs)
{
    std::vector<std::string> out;
    for (const auto &e : evs)
        out.push_back(e.kind == FollowEvent::Line      ? "L:" + e.text
                      : e.kind == FollowEvent::Rotated ? std::string("rotated")
                      : e.kind == FollowEvent::Truncated ? std::string("truncated")
                      : e.kind == FollowEvent::Vanished  ? std::string("vanished")
                                                         : std::string("error"));
    return out;
}

using V = std::vector<std::string>;
constexpr uint64_t MS = 1'000'000;

// n lines of 100 bytes with the newline: "TAG I xxx...".
std::string numbered_lines(const std::string &tag, size_t n)
{
    std::string text;
    for (size_t i = 0; i < n; i++) {
        std::string line = tag + " " + std::to_string(i) + " ";
        line.resize(99, 'x');
        text += line + "\n";
    }
    return text;
}

// "TAG I" of such a line.
std::string numbered(const std::string &line)
{
    return line.substr(0, line.find(' ', line.find(' ') + 1));
}

} // namespace

TEST_CASE("the follower reads appended lines and looks for a rotation at most every 200 ms", "[follow]")
{
    Followed fl("before\n");
    std::string &log = fl.log;
    LogFollower &f = fl.f;
    uint64_t t = 1000 * MS;
    CHECK(f.poll(t).empty());
    append(log, "one\ntwo\n");
    CHECK(kinds(f.poll(t + 1 * MS)) == V{"L:one", "L:two"});

    // Rotated: renamed, a new file in its place.
    REQUIRE(rename(log.c_str(), (log + ".1").c_str()) == 0);
    append(log + ".1", "late in the old\n");
    append(log, "first in the new\n");
    // Within 200 ms of the last look at the path: the old file only.
    CHECK(kinds(f.poll(t + 100 * MS)) == V{"L:late in the old"});
    CHECK(kinds(f.poll(t + 199 * MS)).empty());
    // Then the new one, from its start.
    CHECK(kinds(f.poll(t + 200 * MS)) == V{"rotated", "L:first in the new"});
    // Nginx's workers write to the old file until they reopen their logs
    // (USR1): read on, ahead of the new one, a line begun before included.
    append(log + ".1", "a worker not reopened yet\nhalf ");
    append(log, "second in the new\n");
    CHECK(kinds(f.poll(t + 210 * MS)) == V{"L:a worker not reopened yet", "L:second in the new"});
    append(log + ".1", "a line\n");
    CHECK(kinds(f.poll(t + 1000 * MS)) == V{"L:half a line"});
    // Quiet for 2 s: let go.
    CHECK(kinds(f.poll(t + 3000 * MS)).empty());
    append(log + ".1", "too late\n");
    CHECK(kinds(f.poll(t + 3100 * MS)).empty());

    // Truncated (copytruncate): seen at once, whatever the time.
    REQUIRE(truncate(log.c_str(), 0) == 0);
    append(log, "after\n"); // shorter than what was read: a truncation shows
    CHECK(kinds(f.poll(t + 3101 * MS)) == V{"truncated", "L:after"});

    // Removed: said at the next look at the path, once; the open file is
    // still read.
    REQUIRE(unlink(log.c_str()) == 0);
    CHECK(kinds(f.poll(t + 3150 * MS)).empty());
    CHECK(kinds(f.poll(t + 3300 * MS)) == V{"vanished"});
    CHECK(kinds(f.poll(t + 3500 * MS)).empty());
}

TEST_CASE("a poll reads at most 1 MiB of a file and says so; a drain polls until it does not", "[follow]")
{
    Followed fl("");
    LogFollower &f = fl.f;
    // 3 MiB and a bit of 100-byte lines, appended before any poll (n502trace lagging behind a storm).
    const size_t n = 3 * 1024 * 1024 / 100 + 7;
    append(fl.log, numbered_lines("line", n));
    std::vector<std::string> got;
    auto take = [&](const std::vector<FollowEvent> &evs) {
        for (const auto &e : evs) {
            REQUIRE(e.kind == FollowEvent::Line);
            got.push_back(e.text);
        }
        return evs.size();
    };
    size_t first = take(f.poll(1000 * MS));
    CHECK(first * 100 <= 1024 * 1024);
    CHECK(first * 100 > 1024 * 1024 - 100);
    size_t second = take(f.poll(1010 * MS));
    CHECK(second * 100 <= 1024 * 1024 + 100);
    CHECK(second > 0);
    // A drain: 1 MiB at a time too, capped until the last.
    size_t drains = 0;
    do {
        take(f.poll());
        drains++;
    } while (f.capped() && drains < 10);
    CHECK(drains == 2); // 3 MiB + 7 lines: 1 MiB, then the rest
    REQUIRE(got.size() == n);
    for (size_t i = 0; i < n; i++)
        if (got[i].rfind("line " + std::to_string(i) + " ", 0) != 0 || got[i].size() != 99)
            FAIL("line " << i << " is " << got[i]);
    CHECK(f.poll(1020 * MS).empty());
}

TEST_CASE("a rotation while behind: the old file's lines all come before the new file's, none lost", "[follow]")
{
    Followed fl("");
    LogFollower &f = fl.f;
    const size_t n = 3 * 1024 * 1024 / 100; // 3 MiB: three timed polls' worth
    append(fl.log, numbered_lines("old", n));
    fl.rotate();
    append(fl.log, numbered_lines("new", 10));
    std::vector<std::string> got;
    uint64_t t = 1000 * MS;
    bool was_capped = false;
    for (int polls = 0; polls < 20 && got.size() < n + 10; polls++, t += 10 * MS) {
        for (const auto &e : f.poll(t))
            if (e.kind == FollowEvent::Line)
                got.push_back(numbered(e.text));
        was_capped = was_capped || f.capped();
        // Idle for long between polls (the old file's quiet time and more):
        // a file not read to its end is never let go.
        t += 3000 * MS;
    }
    CHECK(was_capped);
    CHECK_FALSE(f.capped());
    REQUIRE(got.size() == n + 10);
    for (size_t i = 0; i < n; i++)
        if (got[i] != "old " + std::to_string(i))
            FAIL("line " << i << " is " << got[i]);
    for (size_t i = 0; i < 10; i++)
        CHECK(got[n + i] == "new " + std::to_string(i));
}

TEST_CASE("two rotations while behind: each file is queued when noticed and read in turn, none skipped", "[follow]")
{
    Followed fl("");
    LogFollower &f = fl.f;
    const size_t n = 3 * 1024 * 1024 / 100 + 5; // more than three polls' worth
    append(fl.log, numbered_lines("one", n));
    std::vector<std::string> got;
    auto take = [&](const std::vector<FollowEvent> &evs) {
        for (const auto &e : evs)
            if (e.kind == FollowEvent::Line)
                got.push_back(numbered(e.text));
    };
    uint64_t t = 1000 * MS;
    take(f.poll(t));
    REQUIRE(f.capped());
    // Rotated (and written to) while n502trace is behind on the first file:
    // noticed at the next look at the path, 200 ms on.
    fl.rotate();
    append(fl.log, numbered_lines("two", 5));
    take(f.poll(t += 300 * MS));
    REQUIRE(f.capped());
    // Rotated again before the first file is read to its end.
    REQUIRE(rename(fl.log.c_str(), (fl.log + ".2").c_str()) == 0);
    append(fl.log, numbered_lines("three", 5));
    for (int polls = 0; polls < 10; polls++)
        take(f.poll(t += 300 * MS));
    CHECK_FALSE(f.capped());
    REQUIRE(got.size() == n + 10);
    for (size_t i = 0; i < n; i++)
        if (got[i] != "one " + std::to_string(i))
            FAIL("line " << i << " is " << got[i]);
    for (size_t i = 0; i < 5; i++) {
        CHECK(got[n + i] == "two " + std::to_string(i));
        CHECK(got[n + 5 + i] == "three " + std::to_string(i));
    }
}

TEST_CASE("a drain behind a rotation: the old file to its end, then the new one, none lost", "[follow]")
{
    Followed fl("");
    LogFollower &f = fl.f;
    const size_t n = 2 * 1024 * 1024 / 100 + 3;
    append(fl.log, numbered_lines("old", n));
    fl.rotate();
    append(fl.log, "new 0\nnew 1\n");
    std::vector<std::string> got;
    size_t drains = 0;
    do {
        for (const auto &e : f.poll())
            if (e.kind == FollowEvent::Line)
                got.push_back(numbered(e.text));
        drains++;
    } while (f.capped() && drains < 10);
    CHECK(drains == 3);
    REQUIRE(got.size() == n + 2);
    for (size_t i = 0; i < n; i++)
        if (got[i] != "old " + std::to_string(i))
            FAIL("line " << i << " is " << got[i]);
    CHECK(got[n] == "new 0");
    CHECK(got[n + 1] == "new 1");
    // The old file was let go: what is written to it now is not read.
    append(fl.log + ".1", "late\n");
    append(fl.log, "new 2\n");
    CHECK(kinds(f.poll()) == V{"L:new 2"});
}

TEST_CASE("the follower's poll without a time looks at the path at once", "[follow]")
{
    Followed fl("");
    std::string &log = fl.log;
    LogFollower &f = fl.f;
    CHECK(f.poll(1000 * MS).empty()); // looked: the next look is due at 1200 ms
    REQUIRE(unlink(log.c_str()) == 0);
    CHECK(kinds(f.poll(1001 * MS)).empty());
    CHECK(kinds(f.poll(LogFollower::kCheckPath)) == V{"vanished"});
    CHECK(kinds(f.poll(LogFollower::kCheckPath)).empty());
}

TEST_CASE("the follower's default poll looks at the path every time (a drain at exit)", "[follow]")
{
    Followed fl("");
    std::string &log = fl.log;
    LogFollower &f = fl.f;
    CHECK(f.poll(1000 * MS).empty()); // looked: the next timed look is due at 1200 ms
    REQUIRE(rename(log.c_str(), (log + ".1").c_str()) == 0);
    append(log, "new\n");
    CHECK(kinds(f.poll(1001 * MS)).empty());
    CHECK(kinds(f.poll()) == V{"rotated", "L:new"});
}

TEST_CASE("a rotation a drain notices: the file read so far is read one last time, not kept", "[follow]")
{
    Followed fl("");
    std::string &log = fl.log;
    LogFollower &f = fl.f;
    CHECK(f.poll(1000 * MS).empty());
    fl.rotate();
    append(log + ".1", "last\n");
    CHECK(kinds(f.poll()) == V{"L:last", "rotated"});
    append(log + ".1", "after the end\n");
    CHECK(kinds(f.poll(1100 * MS)).empty());
}

TEST_CASE("after a rotation the old file is kept while the new one stays empty, up to a minute", "[follow]")
{
    // A rename whose reopen comes late (mv, then `nginx -s reopen`): Nginx
    // writes nothing to the new file meanwhile.
    Followed fl("");
    std::string &log = fl.log;
    LogFollower &f = fl.f;
    fl.rotate();
    uint64_t t = 1000 * MS;
    CHECK(kinds(f.poll(t)) == V{"rotated"});
    append(log + ".1", "x\n");
    CHECK(kinds(f.poll(t + 10 * MS)) == V{"L:x"});
    CHECK(kinds(f.poll(t + 5000 * MS)).empty()); // quiet, but the new file is empty: kept
    append(log + ".1", "late\n");
    CHECK(kinds(f.poll(t + 6000 * MS)) == V{"L:late"});
    CHECK(kinds(f.poll(t + 61000 * MS)).empty()); // quiet, and a minute on: let go
    append(log + ".1", "gone\n");
    CHECK(kinds(f.poll(t + 62000 * MS)).empty());
}

TEST_CASE("two rotations within the old file's quiet time: both old files are read on, oldest first", "[follow]")
{
    // logrotate run twice in a row (size-based, a busy log): Nginx's workers
    // still write to the first file when the second rotation moves the next.
    Followed fl("");
    std::string &log = fl.log;
    LogFollower &f = fl.f;
    uint64_t t = 1000 * MS;
    fl.rotate(); // error.log -> error.log.1
    CHECK(kinds(f.poll(t)) == V{"rotated"});
    append(log, "in the second\n");
    CHECK(kinds(f.poll(t + 10 * MS)) == V{"L:in the second"});
    REQUIRE(rename((log + ".1").c_str(), (log + ".2").c_str()) == 0);
    fl.rotate(); // error.log -> error.log.1 again
    CHECK(kinds(f.poll(t + 500 * MS)) == V{"rotated"});
    append(log + ".2", "late in the first\n");
    append(log + ".1", "late in the second\n");
    append(log, "in the third\n");
    CHECK(kinds(f.poll(t + 600 * MS)) == V{"L:late in the first", "L:late in the second", "L:in the third"});
    // Each let go once quiet for 2 s with a newer file written to.
    CHECK(kinds(f.poll(t + 2700 * MS)).empty());
    append(log + ".2", "gone\n");
    append(log + ".1", "gone too\n");
    CHECK(kinds(f.poll(t + 2800 * MS)).empty());
}

TEST_CASE("more rotations than old files kept: the oldest is read one last time and let go", "[follow]")
{
    Followed fl("");
    std::string &log = fl.log;
    LogFollower &f = fl.f;
    uint64_t t = 1000 * MS;
    // Each rotation moves the file aside under its own name (error.log.rN).
    for (size_t i = 0; i <= LogFollower::kMaxOld; i++) {
        append(log, "line " + std::to_string(i) + "\n");
        CHECK(kinds(f.poll(t)) == V{"L:line " + std::to_string(i)});
        REQUIRE(rename(log.c_str(), (log + ".r" + std::to_string(i)).c_str()) == 0);
        append(log, "");
        append(log + ".r" + std::to_string(i), "after " + std::to_string(i) + "\n");
        t += 200 * MS;
        CHECK(kinds(f.poll(t)) == V{"L:after " + std::to_string(i), "rotated"});
    }
    // r0 was let go at the fifth rotation; r1..r4 are still read.
    append(log + ".r0", "not read\n");
    append(log + ".r1", "still read\n");
    CHECK(kinds(f.poll(t + 10 * MS)) == V{"L:still read"});
}

TEST_CASE("a follower of the same file goes on where another stopped, and not in another file", "[follow]")
{
    // A restarted container's Nginx writes on in the log its predecessor
    // wrote to: its follower (opened through the new root) takes over.
    Followed fl("2026/12/07 14:00:00 [error] 8#8: *1 before\n");
    std::string &log = fl.log;
    append(log, "2026/12/07 14:00:01 [error] 8#8: *2 read by the first\n");
    CHECK(kinds(fl.f.poll(1000 * MS)) == V{"L:2026/12/07 14:00:01 [error] 8#8: *2 read by the first"});
    append(log, "2026/12/07 14:00:03 [error] 8#8: *1 written before the second came\n");
    LogFollower second(log);
    std::string err;
    REQUIRE(second.open(true, &err));
    CHECK(second.resume_from(fl.f));
    CHECK(second.has_unread());
    CHECK(kinds(second.poll(2000 * MS)) == V{"L:2026/12/07 14:00:03 [error] 8#8: *1 written before the second came"});
    CHECK(!second.has_unread());

    // Another file at that path (the old one rotated away, or a new
    // container's): where the first stopped means nothing there.
    REQUIRE(unlink(log.c_str()) == 0);
    for (int i = 0; i < 3; i++) // longer than where the first stopped: only the line it read tells
        append(log, "2026/12/07 14:00:09 [notice] 1#1: a different file at the same path\n");
    LogFollower third(log);
    REQUIRE(third.open(true, &err));
    CHECK(!third.resume_from(fl.f));
    CHECK(!third.has_unread());
}

TEST_CASE("a follower that has read no line yet is known by the bytes before where it started", "[follow]")
{
    Followed fl("2026/12/07 14:00:00 [notice] 1#1: start worker processes\n");
    std::string &log = fl.log;
    // Nothing read since it opened at the end: another file at the path, as
    // long, is told from it.
    std::string other = fl.d.path + "/other.log";
    append(other, "2026/12/07 15:00:00 [notice] 1#1: a different file of some length....\n");
    REQUIRE(rename(other.c_str(), log.c_str()) == 0);
    LogFollower second(log);
    std::string err;
    REQUIRE(second.open(true, &err));
    CHECK_FALSE(second.resume_from(fl.f));
}

TEST_CASE("after a rotation, a drain reads the old file one last time", "[follow]")
{
    Followed fl("");
    std::string &log = fl.log;
    LogFollower &f = fl.f;
    fl.rotate();
    CHECK(kinds(f.poll(1000 * MS)) == V{"rotated"});
    append(log + ".1", "last words\n");
    CHECK(kinds(f.poll()) == V{"L:last words"});
    append(log + ".1", "after the end\n");
    CHECK(kinds(f.poll()).empty());
}

TEST_CASE("a copytruncate written past the offset before the next poll is seen by its last line", "[follow]")
{
    Followed fl("2026/12/07 14:00:00 [error] 10#10: *1 before\n");
    std::string &log = fl.log;
    LogFollower &f = fl.f;
    append(log, "2026/12/07 14:00:01 [error] 10#10: *2 one\n");
    CHECK(kinds(f.poll(1000 * MS)) == V{"L:2026/12/07 14:00:01 [error] 10#10: *2 one"});
    // Copied, truncated, and written again past where the follower was, all
    // between two polls: the size alone says nothing.
    REQUIRE(truncate(log.c_str(), 0) == 0);
    append(log, "2026/12/07 14:00:02 [error] 10#10: *3 after the truncation\n");
    append(log, "2026/12/07 14:00:02 [error] 10#10: *4 and another line past the old end\n");
    CHECK(kinds(f.poll(1010 * MS)) == V{"truncated", "L:2026/12/07 14:00:02 [error] 10#10: *3 after the truncation",
                                         "L:2026/12/07 14:00:02 [error] 10#10: *4 and another line past the old end"});
    // Appending is not a truncation, across short lines, an empty one, and a
    // partial line completed later.
    append(log, "a\n\nb");
    CHECK(kinds(f.poll(1020 * MS)) == V{"L:a", "L:"});
    append(log, "c\n");
    CHECK(kinds(f.poll(1030 * MS)) == V{"L:bc"});
    // The same again with the last line read an empty one, rewritten as the
    // same number of bytes of something else.
    append(log, "\n");
    CHECK(kinds(f.poll(1040 * MS)) == V{"L:"});
    std::string before;
    {
        FILE *r = fopen(log.c_str(), "r");
        REQUIRE(r);
        char buf[512];
        size_t n = fread(buf, 1, sizeof(buf), r);
        fclose(r);
        before.assign(buf, n);
    }
    REQUIRE(truncate(log.c_str(), 0) == 0);
    append(log, std::string(before.size(), 'x') + "\n");
    auto got = kinds(f.poll(1050 * MS));
    REQUIRE(got.size() == 2);
    CHECK(got[0] == "truncated");
    CHECK(got[1] == "L:" + std::string(before.size(), 'x'));
}

TEST_CASE("the truncation check holds for lines cut at the limit and a start inside a line", "[follow]")
{
    Followed fl("the end of a line begun before", 8);
    std::string &log = fl.log;
    LogFollower &f = fl.f;
    append(log, " and its end\n0123456789abcdef\nshort\n");
    CHECK(kinds(f.poll(1000 * MS)) == V{"L: and its", "L:01234567", "L:short"});
    append(log, "0123456789abcdef\n");
    CHECK(kinds(f.poll(1010 * MS)) == V{"L:01234567"}); // cut: its mark is its first bytes
    append(log, "more\n");
    CHECK(kinds(f.poll(1020 * MS)) == V{"L:more"});
    REQUIRE(truncate(log.c_str(), 0) == 0);
    append(log, std::string(100, 'y') + "\nz\n");
    CHECK(kinds(f.poll(1030 * MS)) == V{"truncated", "L:yyyyyyyy", "L:z"});
}

TEST_CASE("a rotation whose new file cannot be read yet is said at once, and the file read when it can be", "[follow]")
{
    Followed fl("");
    std::string &log = fl.log;
    LogFollower &f = fl.f;
    REQUIRE(rename(log.c_str(), (log + ".1").c_str()) == 0);
    REQUIRE(mkdir(log.c_str(), 0755) == 0); // not a file
    auto evs = f.poll(1000 * MS);
    REQUIRE(kinds(evs) == V{"rotated"});
    CHECK(evs[0].text.find("cannot be read yet") != std::string::npos);
    CHECK(evs[0].text.find("not a regular file") != std::string::npos);
    CHECK(kinds(f.poll(1300 * MS)).empty()); // said once
    REQUIRE(rmdir(log.c_str()) == 0);
    append(log, "now a file\n");
    CHECK(kinds(f.poll(1310 * MS)) == V{"L:now a file"});
    append(log, "more\n");
    CHECK(kinds(f.poll(1600 * MS)) == V{"L:more"});
}

// Lines "T n": stamped T (seconds), for back_to's windows.
static std::optional<int64_t> t_stamp(std::string_view line)
{
    if (line.size() < 3 || line[0] != 'T' || line[1] != ' ')
        return std::nullopt;
    return std::stoll(std::string(line.substr(2)));
}

TEST_CASE("an Nginx found after its start: its lines since then are read, an earlier run's are not", "[follow]")
{
    bool bounded = true;
    SECTION("lines stamped before the window stop the look back; lines without a stamp in it are kept")
    {
        Followed fl("T 90\nT 99\nT 100\nno stamp\nT 101\n");
        CHECK(fl.f.back_to(t_stamp, 100, 110, 1 << 20, &bounded) == std::string("T 100\nno stamp\nT 101\n").size());
        CHECK_FALSE(bounded);
        append(fl.log, "T 102\n");
        CHECK(kinds(fl.f.poll()) == std::vector<std::string>{"L:T 100", "L:no stamp", "L:T 101", "L:T 102"});
    }
    SECTION("a line stamped past the window (another zone's stamps) stops it too: nothing is read back")
    {
        Followed fl("T 100\nT 5000\n");
        CHECK(fl.f.back_to(t_stamp, 100, 110, 1 << 20, &bounded) == 0);
        CHECK_FALSE(bounded);
        CHECK(kinds(fl.f.poll()).empty());
    }
    SECTION("every line in the window: back to the file's start, not bounded")
    {
        Followed fl("T 100\nT 101\n");
        CHECK(fl.f.back_to(t_stamp, 100, 110, 1 << 20, &bounded) == 12);
        CHECK_FALSE(bounded);
        CHECK(kinds(fl.f.poll()) == std::vector<std::string>{"L:T 100", "L:T 101"});
    }
    SECTION("more than max_back in the window: the last whole lines within it, and said")
    {
        Followed fl("T 100\nT 101\nT 102\nT 103\n"); // 6 bytes each
        CHECK(fl.f.back_to(t_stamp, 100, 110, 15, &bounded) == 12);
        CHECK(bounded);
        CHECK(kinds(fl.f.poll()) == std::vector<std::string>{"L:T 102", "L:T 103"});
    }
    SECTION("a line being written at the end: nothing is read back (from the end, as opened)")
    {
        Followed fl("T 100\nT 101");
        CHECK(fl.f.back_to(t_stamp, 100, 110, 1 << 20, &bounded) == 0);
        append(fl.log, "\nT 102\n");
        CHECK(kinds(fl.f.poll()) == std::vector<std::string>{"L:", "L:T 102"});
    }
    SECTION("read back, then found by a follower going on from it (resume_from)")
    {
        Followed fl("T 90\nT 100\n");
        REQUIRE(fl.f.back_to(t_stamp, 100, 110, 1 << 20, &bounded) == 6);
        LogFollower next(fl.log);
        std::string err;
        REQUIRE(next.open(true, &err));
        CHECK(next.resume_from(fl.f));
        CHECK(kinds(next.poll()) == std::vector<std::string>{"L:T 100"});
    }
}

TEST_CASE("read back: lines without a stamp (a format not read) give nothing back and no bound said", "[follow]")
{
    bool bounded = true;
    Followed fl(std::string(40, 'x') + "\n" + std::string(40, 'y') + "\n");
    CHECK(fl.f.back_to(t_stamp, 100, 110, 20, &bounded) == 0);
    CHECK_FALSE(bounded);
}
