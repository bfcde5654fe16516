#include "nginx.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fmt/format.h>
#include <fcntl.h>
#include <fstream>
#include <sstream>
#include <string_view>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "container.hpp"
#include "logfollow.hpp"

namespace n502 {

static std::optional<std::string> slurp(const std::string &path, size_t max = 1 << 16) { return read_file(path, max); }

std::optional<ProcInfo> read_proc(uint32_t pid, const std::string &root)
{
    auto stat = slurp(fmt::format("{}/{}/stat", root, pid));
    if (!stat)
        return std::nullopt;
    // pid (comm) state ppid ...: comm may contain spaces and parentheses.
    auto open = stat->find('(');
    auto close = stat->rfind(')');
    if (open == std::string::npos || close == std::string::npos || close < open)
        return std::nullopt;
    ProcInfo p;
    p.pid = pid;
    p.comm = stat->substr(open + 1, close - open - 1);
    std::istringstream rest(stat->substr(close + 1));
    std::string state;
    rest >> state >> p.ppid;
    if (!state.empty())
        p.state = state[0];
    if (auto cmd = slurp(fmt::format("{}/{}/cmdline", root, pid))) {
        std::replace(cmd->begin(), cmd->end(), '\0', ' ');
        while (!cmd->empty() && cmd->back() == ' ')
            cmd->pop_back();
        p.cmdline = *cmd;
    }
    return p;
}

std::vector<uint32_t> children_of(uint32_t pid, const std::string &root)
{
    std::vector<uint32_t> out;
    // /proc/PID/task/*/children lists children per thread (needs
    // CONFIG_PROC_CHILDREN); fall back to a scan of every process.
    bool have_children_file = false;
    if (DIR *d = opendir(fmt::format("{}/{}/task", root, pid).c_str())) {
        while (dirent *de = readdir(d)) {
            if (de->d_name[0] == '.')
                continue;
            if (auto s = slurp(fmt::format("{}/{}/task/{}/children", root, pid, de->d_name))) {
                have_children_file = true;
                std::istringstream in(*s);
                uint32_t c;
                while (in >> c)
                    out.push_back(c);
            }
        }
        closedir(d);
    }
    if (!have_children_file) {
        if (DIR *d = opendir(root.c_str())) {
            while (dirent *de = readdir(d)) {
                char *end = nullptr;
                unsigned long n = strtoul(de->d_name, &end, 10);
                if (!end || *end || n == 0 || n > UINT32_MAX)
                    continue;
                if (auto p = read_proc(static_cast<uint32_t>(n), root); p && p->ppid == pid)
                    out.push_back(p->pid);
            }
            closedir(d);
        }
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

// Nginx by its name (nginx, nginx-debug), its title ("nginx: master
// process ..."), or the program it runs (argv[0], before a title is set):
// not any process with "nginx" somewhere in its arguments (`tail -f
// /var/log/nginx/error.log`).
bool looks_like_nginx(const ProcInfo &p)
{
    std::string argv0 = p.cmdline.substr(0, p.cmdline.find(' '));
    std::string base = argv0.substr(argv0.rfind('/') + 1);
    return p.comm.rfind("nginx", 0) == 0 || p.comm == "openresty" || p.cmdline.rfind("nginx:", 0) == 0 ||
           base.rfind("nginx", 0) == 0;
}

// Nginx in a selection, where any process may run: by its exact name (nginx,
// the official image's nginx-debug, openresty) or Nginx's title, not any name
// that begins with nginx (nginx-agent, nginx-prometheus-exporter, ingress-
// nginx's controller).
bool named_nginx(const ProcInfo &p)
{
    std::string argv0 = p.cmdline.substr(0, p.cmdline.find(' '));
    std::string base = argv0.substr(argv0.rfind('/') + 1);
    for (const std::string &n : {p.comm, base})
        if (n == "nginx" || n == "nginx-debug" || n == "openresty")
            return true;
    return p.cmdline.rfind("nginx: ", 0) == 0;
}

// `nginx -t`, `nginx -T`, `nginx -s reload`, `nginx -V` run by an operator
// (docker exec) are no master to follow: they exit within moments.
bool is_nginx_oneshot(const ProcInfo &p)
{
    if (p.cmdline.find("master process") != std::string::npos)
        return false;
    std::istringstream in(p.cmdline);
    std::string arg;
    in >> arg; // argv[0]
    bool value_next = false;
    while (in >> arg) {
        if (value_next || arg.size() < 2 || arg[0] != '-') {
            value_next = false;
            continue;
        }
        // Letters as Nginx reads them: -qt is -q -t; -c, -e, -g and -p take
        // the rest of the argument, or the next one, as their value.
        for (size_t i = 1; i < arg.size(); i++) {
            char c = arg[i];
            if (c == 't' || c == 'T' || c == 's' || c == 'v' || c == 'V' || c == 'h' || c == '?')
                return true;
            if (c == 'c' || c == 'e' || c == 'g' || c == 'p') {
                value_next = i + 1 == arg.size();
                break;
            }
        }
    }
    return false;
}

static bool is_master(const ProcInfo &p) { return p.cmdline.find("master process") != std::string::npos; }

std::optional<NginxInfo> discover_nginx(uint32_t pid, std::string *error, const std::string &root)
{
    auto p = read_proc(pid, root);
    if (!p) {
        *error = fmt::format("no process with pid {} (is Nginx running? `pgrep -a nginx` lists its pids)", pid);
        return std::nullopt;
    }
    if (!looks_like_nginx(*p)) {
        *error = fmt::format("pid {} is `{}`, not Nginx (`pgrep -a nginx` lists Nginx's pids)", pid,
                             p->cmdline.empty() ? p->comm : p->cmdline);
        return std::nullopt;
    }
    if (p->state == 'Z') {
        *error = fmt::format("pid {} ({}) has exited and not been reaped yet (a zombie): give the pid of a running "
                             "Nginx master or worker (`pgrep -a nginx`)",
                             pid, p->comm);
        return std::nullopt;
    }
    NginxInfo n;
    // The parent first: a worker that has just been forked still carries
    // its master's title ("master process ...") for a moment.
    if (auto parent = read_proc(p->ppid, root); parent && looks_like_nginx(*parent) && is_master(*parent)) {
        n.master = parent->pid;
    } else if (is_master(*p)) {
        n.master = pid;
    } else if (parent && looks_like_nginx(*parent)) {
        n.master = parent->pid;
    } else {
        // Single-process Nginx (master_process off) or an unusual cmdline.
        n.master = pid;
    }
    n.workers = children_of(n.master, root);
    // In another mount namespace (a container), its paths mean something
    // only inside its root.
    // A chroot counts too (same mount namespace or not): /proc/PID/fd then
    // shows paths from the namespace's root, with the chroot in front.
    uint64_t ours = mntns_of(static_cast<uint32_t>(getpid()), root), theirs = mntns_of(n.master, root);
    std::string rootlink = fmt::format("{}/{}/root", root, n.master);
    char rbuf[PATH_MAX];
    ssize_t rlen = readlink(rootlink.c_str(), rbuf, sizeof(rbuf) - 1);
    std::string chroot_dir = rlen > 0 ? std::string(rbuf, static_cast<size_t>(rlen)) : "/";
    if ((ours && theirs && ours != theirs) || chroot_dir != "/") {
        n.root = rootlink;
        if (chroot_dir != "/" && chroot_dir[0] == '/')
            n.root_prefix = chroot_dir;
    }
    n.error_logs = find_error_logs(n, root);
    n.access_logs = find_access_logs(n, root);
    n.captures = find_log_captures(n, root);
    return n;
}

std::vector<LogCapture> find_log_captures(const NginxInfo &n, const std::string &root)
{
    std::vector<LogCapture> out;
    // fd 2 is the main error log (Nginx points it there when that is a
    // file: a pipe, socket or terminal there is the main error log, other
    // error logs in files or not); fd 1 carries the access log when it goes
    // to /dev/stdout.
    std::vector<int> fds{2};
    if (n.access_logs.empty())
        fds.push_back(1);
    for (int fd : fds) {
        std::string link = fmt::format("{}/{}/fd/{}", root, n.master, fd);
        char buf[PATH_MAX];
        struct stat st{}, again{};
        if (stat(link.c_str(), &st) != 0)
            continue;
        ssize_t len = readlink(link.c_str(), buf, sizeof(buf) - 1);
        // The name and the file must be of the same moment: a descriptor
        // replaced in between (dup2) is looked at again next time.
        if (len <= 0 || stat(link.c_str(), &again) != 0 || again.st_ino != st.st_ino || again.st_dev != st.st_dev)
            continue;
        std::string target(buf, static_cast<size_t>(len));
        bool stream = S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode) ||
                      (S_ISCHR(st.st_mode) && target.rfind("/dev/pts/", 0) == 0);
        if (!stream)
            continue;
        uint32_t dev = (static_cast<uint32_t>(major(st.st_dev)) << 20) | static_cast<uint32_t>(minor(st.st_dev));
        bool dup = false;
        for (const auto &c : out)
            dup = dup || (c.ino == static_cast<uint64_t>(st.st_ino) && c.dev == dev);
        if (!dup)
            out.push_back({dev, static_cast<uint64_t>(st.st_ino), fmt::format("{} (fd {})", target, fd)});
    }
    return out;
}

// Regular files open in one Nginx process (they all share their logs) whose
// name contains `word` and "log"; with_stderr: its fd 2 first (Nginx points
// stderr at its main error log).
static std::vector<std::string> open_logs(const NginxInfo &n, const std::string &root, const char *word,
                                          bool with_stderr)
{
    std::vector<std::string> out;
    auto add = [&](const std::string &given) {
        if (given.empty() || given[0] != '/' || given.rfind("/dev/", 0) == 0 || given.rfind("/proc/", 0) == 0)
            return;
        if (given.size() > 10 && given.compare(given.size() - 10, 10, " (deleted)") == 0)
            return;
        std::string path = given;
        if (!n.root_prefix.empty()) {
            if (path.rfind(n.root_prefix + "/", 0) != 0)
                return; // outside its chroot: not a path it can name
            path = path.substr(n.root_prefix.size());
        }
        // Inside Nginx's root when it has its own (a container): the same
        // path on the host may be another file.
        struct stat st{};
        int fd = open_in_root(n.root, path, O_PATH | O_CLOEXEC);
        bool regular = fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
        if (fd >= 0)
            close(fd);
        if (!regular)
            return;
        if (std::find(out.begin(), out.end(), path) == out.end())
            out.push_back(path);
    };
    std::vector<uint32_t> pids = n.workers;
    pids.push_back(n.master);
    for (uint32_t pid : pids) {
        std::string fddir = fmt::format("{}/{}/fd", root, pid);
        char buf[PATH_MAX];
        ssize_t len;
        if (with_stderr && (len = readlink((fddir + "/2").c_str(), buf, sizeof(buf) - 1)) > 0)
            add(std::string(buf, static_cast<size_t>(len)));
        if (DIR *d = opendir(fddir.c_str())) {
            while (dirent *de = readdir(d)) {
                if (de->d_name[0] == '.')
                    continue;
                len = readlink((fddir + "/" + de->d_name).c_str(), buf, sizeof(buf) - 1);
                if (len <= 0)
                    continue;
                std::string target(buf, static_cast<size_t>(len));
                auto slash = target.rfind('/');
                std::string base = slash == std::string::npos ? target : target.substr(slash + 1);
                if (base.find(word) != std::string::npos && base.find("log") != std::string::npos)
                    add(target);
            }
            closedir(d);
        }
        if (!out.empty())
            break; // every process of one Nginx shares its logs
    }
    return out;
}

bool nginx_has_open(const NginxInfo &n, const std::string &path, const std::string &root)
{
    const std::string want = n.root_prefix + path;
    std::string fddir = fmt::format("{}/{}/fd", root, n.master);
    DIR *d = opendir(fddir.c_str());
    if (!d)
        return false;
    bool found = false;
    char buf[PATH_MAX];
    while (!found)
        if (dirent *de = readdir(d)) {
            ssize_t len = de->d_name[0] == '.' ? 0 : readlink((fddir + "/" + de->d_name).c_str(), buf, sizeof(buf) - 1);
            found = len > 0 && std::string_view(buf, static_cast<size_t>(len)) == want;
        } else {
            break;
        }
    closedir(d);
    return found;
}

std::vector<std::string> find_error_logs(const NginxInfo &n, const std::string &root)
{
    return open_logs(n, root, "error", true);
}

std::vector<std::string> find_access_logs(const NginxInfo &n, const std::string &root)
{
    return open_logs(n, root, "access", false);
}

std::string memory_cgroup(uint32_t pid, const std::string &root)
{
    auto s = slurp(fmt::format("{}/{}/cgroup", root, pid));
    if (!s)
        return "";
    std::istringstream in(*s);
    std::string line, unified;
    while (std::getline(in, line)) {
        // hierarchy-ID:controller-list:path
        auto a = line.find(':');
        auto b = a == std::string::npos ? a : line.find(':', a + 1);
        if (b == std::string::npos)
            continue;
        std::string ctrls = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
        std::istringstream cs(ctrls);
        std::string c;
        while (std::getline(cs, c, ','))
            if (c == "memory")
                return path == "/" ? "" : path;
        if (ctrls.empty())
            unified = path;
    }
    return unified == "/" ? "" : unified;
}

uint64_t memory_limit(const std::string &cg, const std::string &root)
{
    if (cg.empty())
        return 0;
    for (const std::string &f : {root + "/memory" + cg + "/memory.limit_in_bytes", root + "/unified" + cg + "/memory.max",
                                 root + cg + "/memory.max"}) {
        auto s = slurp(f, 64);
        if (!s)
            continue;
        char *end = nullptr;
        unsigned long long v = strtoull(s->c_str(), &end, 10);
        if (end == s->c_str())
            return 0; // "max"
        // v1 reports "unlimited" as a huge page-rounded number.
        return v >= (1ULL << 62) ? 0 : static_cast<uint64_t>(v);
    }
    return 0;
}

} // namespace n502
