#include "container.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

namespace n502 {

namespace {

std::optional<std::string> slurp(const std::string &path, size_t max = 4 << 20) { return read_file(path, max); }

std::optional<nlohmann::json> read_json(const std::string &path)
{
    auto s = slurp(path);
    if (!s)
        return std::nullopt;
    auto j = nlohmann::json::parse(*s, nullptr, false);
    if (j.is_discarded())
        return std::nullopt;
    return j;
}

std::string jstring(const nlohmann::json &j, const char *key)
{
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

bool is_hex_id(const std::string &s)
{
    return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) { return isxdigit(static_cast<unsigned char>(c)) && !isupper(static_cast<unsigned char>(c)); });
}

std::vector<std::string> list_dir(const std::string &path)
{
    std::vector<std::string> out;
    if (DIR *d = opendir(path.c_str())) {
        while (dirent *de = readdir(d))
            if (de->d_name[0] != '.')
                out.emplace_back(de->d_name);
        closedir(d);
    }
    std::sort(out.begin(), out.end());
    return out;
}

bool exists(const std::string &p) { return access(p.c_str(), F_OK) == 0; }

// "prefix<64 hex>.scope" -> the id, or "".
std::string scope_id(const std::string &comp, const char *prefix)
{
    size_t pl = strlen(prefix);
    if (comp.size() != pl + 64 + 6 || comp.compare(0, pl, prefix) != 0 || comp.compare(pl + 64, 6, ".scope") != 0)
        return "";
    std::string id = comp.substr(pl, 64);
    return is_hex_id(id) ? id : "";
}

// containerd keeps a task's bundle under <state>/io.containerd.runtime.v2.task/<namespace>/<id>.
std::string containerd_bundle(const RuntimeDirs &d, const std::string &id)
{
    std::string base = d.containerd + "/io.containerd.runtime.v2.task";
    for (const auto &ns : list_dir(base))
        if (exists(base + "/" + ns + "/" + id))
            return base + "/" + ns + "/" + id;
    return "";
}

// Kubernetes names from an OCI config's annotations (containerd's CRI plugin
// and CRI-O spell them differently), or nerdctl's name.
std::string name_from_annotations(const nlohmann::json &cfg)
{
    auto it = cfg.find("annotations");
    if (it == cfg.end() || !it->is_object())
        return "";
    const auto &a = *it;
    std::string pod = jstring(a, "io.kubernetes.cri.sandbox-name");
    std::string ctr = jstring(a, "io.kubernetes.cri.container-name");
    if (pod.empty())
        pod = jstring(a, "io.kubernetes.pod.name");
    if (ctr.empty())
        ctr = jstring(a, "io.kubernetes.container.name");
    if (!pod.empty() && !ctr.empty())
        return pod + "/" + ctr;
    if (!pod.empty())
        return pod; // the pod's sandbox ("pause") container
    return jstring(a, "nerdctl/name");
}

// CRI-O and Podman list their containers (with names) in containers.json.
std::string storage_name(const RuntimeDirs &d, const std::string &id)
{
    auto j = read_json(d.crio_root + "/overlay-containers/containers.json");
    if (!j || !j->is_array())
        return "";
    for (const auto &c : *j)
        if (c.is_object() && jstring(c, "id") == id) {
            auto n = c.find("names");
            if (n != c.end() && n->is_array() && !n->empty() && n->front().is_string())
                return n->front().get<std::string>();
        }
    return "";
}

void fill_name(ContainerInfo &c, const RuntimeDirs &d)
{
    // Docker puts a container started with --cgroup-parent at <parent>/<id>:
    // a bare id, which its state names all the same.
    if ((c.runtime == "container" || c.runtime == "kubernetes") &&
        exists(d.docker + "/containers/" + c.id + "/config.v2.json"))
        c.runtime = "docker";
    if (c.runtime == "docker") {
        if (auto j = read_json(d.docker + "/containers/" + c.id + "/config.v2.json")) {
            std::string n = jstring(*j, "Name");
            c.name = !n.empty() && n[0] == '/' ? n.substr(1) : n;
        }
        return;
    }
    if (c.runtime == "containerd" || c.runtime == "kubernetes" || c.runtime == "container") {
        std::string b = containerd_bundle(d, c.id);
        if (!b.empty()) {
            c.runtime = "containerd";
            if (auto j = read_json(b + "/config.json"))
                c.name = name_from_annotations(*j);
            return;
        }
    }
    if (c.runtime == "cri-o" || c.runtime == "podman" || c.runtime == "kubernetes" || c.runtime == "container") {
        std::string ud = d.crio_root + "/overlay-containers/" + c.id + "/userdata";
        if (auto j = read_json(ud + "/config.json")) {
            if (c.runtime != "podman")
                c.runtime = "cri-o";
            c.name = name_from_annotations(*j);
        }
        if (c.name.empty())
            c.name = storage_name(d, c.id);
    }
}

uint64_t ns_inode(uint32_t pid, const char *ns, const std::string &proc_root)
{
    struct stat st{};
    if (stat(fmt::format("{}/{}/ns/{}", proc_root, pid, ns).c_str(), &st) != 0)
        return 0;
    return static_cast<uint64_t>(st.st_ino);
}

std::optional<uint32_t> read_pidfile(const std::string &path)
{
    auto s = slurp(path, 64);
    if (!s)
        return std::nullopt;
    char *end = nullptr;
    unsigned long v = strtoul(s->c_str(), &end, 10);
    if (end == s->c_str() || v == 0)
        return std::nullopt;
    return static_cast<uint32_t>(v);
}

} // namespace

std::optional<std::string> read_file(const std::string &path, size_t max)
{
    std::ifstream f(path, std::ios::binary);
    if (!f)
        return std::nullopt;
    std::string out;
    char buf[16384];
    while (out.size() < max && f.read(buf, static_cast<std::streamsize>(std::min(sizeof(buf), max - out.size()))),
           f.gcount() > 0)
        out.append(buf, static_cast<size_t>(f.gcount()));
    return out;
}

RuntimeDirs RuntimeDirs::from_env()
{
    RuntimeDirs d;
    if (const char *v = getenv("N502_DOCKER_ROOT"))
        d.docker = v;
    if (const char *v = getenv("N502_CONTAINERD_STATE"))
        d.containerd = v;
    if (const char *v = getenv("N502_CRIO_STATE"))
        d.crio_state = v;
    if (const char *v = getenv("N502_CRIO_ROOT"))
        d.crio_root = v;
    return d;
}

std::string unified_root()
{
    constexpr long kCgroup2Magic = 0x63677270;
    for (const char *p : {"/sys/fs/cgroup/unified", "/sys/fs/cgroup"}) {
        struct statfs sf{};
        if (statfs(p, &sf) == 0 && static_cast<long>(sf.f_type) == kCgroup2Magic)
            return p;
    }
    return "";
}

std::vector<std::string> cgroup_paths(uint32_t pid, const std::string &proc_root)
{
    std::vector<std::string> out;
    auto s = slurp(fmt::format("{}/{}/cgroup", proc_root, pid), 1 << 16);
    if (!s)
        return out;
    std::istringstream in(*s);
    std::string line;
    while (std::getline(in, line)) {
        auto a = line.find(':');
        auto b = a == std::string::npos ? a : line.find(':', a + 1);
        if (b == std::string::npos)
            continue;
        std::string path = line.substr(b + 1);
        if (std::find(out.begin(), out.end(), path) == out.end())
            out.push_back(path);
    }
    return out;
}

std::string cgroup_v2_path(uint32_t pid, const std::string &proc_root)
{
    auto s = slurp(fmt::format("{}/{}/cgroup", proc_root, pid), 1 << 16);
    if (!s)
        return "";
    std::istringstream in(*s);
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("0::", 0) == 0)
            return line.substr(3);
    return "";
}

std::optional<ContainerInfo> container_from_cgroup(const std::string &path, const RuntimeDirs &dirs)
{
    std::vector<std::string> comps;
    std::istringstream in(path);
    std::string c;
    while (std::getline(in, c, '/'))
        if (!c.empty())
            comps.push_back(c);
    bool kube = path.find("kubepods") != std::string::npos;
    std::optional<ContainerInfo> found;
    for (size_t i = 0; i < comps.size(); i++) {
        const std::string &comp = comps[i];
        ContainerInfo ci;
        if (std::string id = scope_id(comp, "docker-"); !id.empty())
            ci = {"docker", id, ""};
        else if (comp == "docker" && i + 1 < comps.size() && is_hex_id(comps[i + 1]))
            ci = {"docker", comps[++i], ""};
        else if (std::string id2 = scope_id(comp, "cri-containerd-"); !id2.empty())
            ci = {"containerd", id2, ""};
        else if (std::string id3 = scope_id(comp, "crio-"); !id3.empty())
            ci = {"cri-o", id3, ""};
        else if (std::string id4 = scope_id(comp, "libpod-"); !id4.empty())
            ci = {"podman", id4, ""};
        else if (is_hex_id(comp))
            ci = {kube ? "kubernetes" : "container", comp, ""};
        else
            continue;
        found = ci; // the innermost one wins
    }
    if (found)
        fill_name(*found, dirs);
    return found;
}

std::optional<ResolvedContainer> resolve_container(const std::string &ref_in, const RuntimeDirs &dirs,
                                                   std::string *error, std::optional<ContainerInfo> *stopped)
{
    std::string ref = !ref_in.empty() && ref_in[0] == '/' ? ref_in.substr(1) : ref_in;
    if (ref.empty()) {
        *error = "--container needs a name or an id";
        return std::nullopt;
    }
    struct Candidate {
        ContainerInfo info;
        std::optional<uint32_t> pid;
        bool running = false;
    };
    std::vector<Candidate> all;
    // Docker: one directory per container with its config (name, state, pid).
    for (const auto &id : list_dir(dirs.docker + "/containers")) {
        if (!is_hex_id(id))
            continue;
        Candidate cand;
        cand.info = {"docker", id, ""};
        if (auto j = read_json(dirs.docker + "/containers/" + id + "/config.v2.json")) {
            std::string n = jstring(*j, "Name");
            cand.info.name = !n.empty() && n[0] == '/' ? n.substr(1) : n;
            auto st = j->find("State");
            if (st != j->end() && st->is_object()) {
                cand.running = st->value("Running", false);
                int64_t pid = st->value("Pid", static_cast<int64_t>(0));
                if (pid > 0)
                    cand.pid = static_cast<uint32_t>(pid);
            }
        }
        all.push_back(cand);
    }
    // containerd (also Kubernetes through its CRI plugin): running tasks' bundles.
    std::string base = dirs.containerd + "/io.containerd.runtime.v2.task";
    auto known = [&](const std::string &id) {
        for (const auto &c : all)
            if (c.info.id == id)
                return true;
        return false;
    };
    for (const auto &ns : list_dir(base))
        for (const auto &id : list_dir(base + "/" + ns)) {
            // Docker on the system containerd keeps its tasks in namespace
            // "moby": the same containers, already found (with names) above.
            if (ns == "moby" || known(id))
                continue;
            Candidate cand;
            cand.info = {"containerd", id, ""};
            if (auto j = read_json(base + "/" + ns + "/" + id + "/config.json"))
                cand.info.name = name_from_annotations(*j);
            cand.pid = read_pidfile(base + "/" + ns + "/" + id + "/init.pid");
            cand.running = cand.pid.has_value();
            all.push_back(cand);
        }
    // CRI-O and Podman: containers.json for names; CRI-O's pidfile for the pid.
    if (auto j = read_json(dirs.crio_root + "/overlay-containers/containers.json"); j && j->is_array())
        for (const auto &c : *j) {
            if (!c.is_object())
                continue;
            Candidate cand;
            cand.info = {"cri-o", jstring(c, "id"), ""};
            if (cand.info.id.empty() || known(cand.info.id))
                continue;
            fill_name(cand.info, dirs);
            cand.pid = read_pidfile(dirs.crio_state + "/overlay-containers/" + cand.info.id + "/userdata/pidfile");
            cand.running = cand.pid.has_value();
            all.push_back(cand);
        }

    // Docker's order: a full id, then a name, then a unique id prefix.
    std::vector<const Candidate *> match;
    for (const auto &cand : all)
        if (cand.info.id == ref)
            match.push_back(&cand);
    if (match.empty())
        for (const auto &cand : all)
            if (!cand.info.name.empty() && cand.info.name == ref)
                match.push_back(&cand);
    if (match.empty() && ref.size() >= 3)
        for (const auto &cand : all)
            if (cand.info.id.compare(0, ref.size(), ref) == 0)
                match.push_back(&cand);
    if (match.empty()) {
        std::string known;
        size_t n = 0;
        for (const auto &cand : all)
            if (cand.running && n++ < 8)
                known += fmt::format("{}{} ({})", known.empty() ? "" : ", ",
                                     cand.info.name.empty() ? cand.info.id.substr(0, 12) : cand.info.name,
                                     cand.info.runtime);
        *error = fmt::format("no container matches \"{}\"{} (looked in {}/containers, {} and {}); {}", ref_in,
                             ref.size() < 3 ? " (an id prefix needs at least 3 characters)" : "", dirs.docker, base,
                             dirs.crio_root,
                             known.empty() ? "no running container was found"
                                           : "running containers: " + known + (n > 8 ? ", ..." : ""));
        return std::nullopt;
    }
    if (match.size() > 1) {
        std::string ids;
        for (const auto *m : match)
            ids += fmt::format(" {} ({})", m->info.id.substr(0, 12), m->info.name);
        *error = fmt::format("\"{}\" matches {} containers:{}; give more of the id", ref_in, match.size(), ids);
        return std::nullopt;
    }
    const Candidate &m = *match.front();
    if (!m.running || !m.pid || access(fmt::format("/proc/{}", *m.pid).c_str(), F_OK) != 0) {
        *error = fmt::format("container {} ({} {}) is not running", ref_in, m.info.runtime, m.info.id.substr(0, 12));
        if (stopped)
            *stopped = m.info;
        return std::nullopt;
    }
    return ResolvedContainer{m.info, *m.pid};
}

std::optional<std::string> normalise_cgroup_arg(const std::string &arg, const std::string &root, std::string *error)
{
    if (root.empty()) {
        *error = "this host has no cgroup v2 hierarchy (neither /sys/fs/cgroup/unified nor /sys/fs/cgroup is "
                 "cgroup2): --cgroup needs one; --container and --nginx-pid still work";
        return std::nullopt;
    }
    std::string p = arg;
    // A /proc/PID/cgroup line as it is: "0::/docker/ID" (cgroup v2's).
    if (p.rfind("0::/", 0) == 0)
        p = p.substr(3);
    while (p.size() > 1 && p.back() == '/')
        p.pop_back();
    std::string rel;
    if (p == root)
        rel = "/";
    else if (p.rfind(root + "/", 0) == 0)
        rel = p.substr(root.size());
    else if (!p.empty() && p[0] == '/' && p.rfind("/sys/fs/cgroup", 0) != 0)
        rel = p;
    else {
        *error = fmt::format("--cgroup {}: give a cgroup v2 directory under {} or a path as /proc/PID/cgroup shows "
                             "it (\"0::/docker/ID\" -> /docker/ID)",
                             arg, root);
        return std::nullopt;
    }
    if (rel.find("/../") != std::string::npos || (rel.size() >= 3 && rel.compare(rel.size() - 3, 3, "/..") == 0)) {
        *error = fmt::format("--cgroup {}: \"..\" is not allowed", arg);
        return std::nullopt;
    }
    struct stat st{};
    errno = 0;
    if (stat((root + rel).c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        *error = fmt::format("--cgroup {}: {} is not a cgroup directory ({})", arg, root + rel,
                             errno ? strerror(errno) : "not a directory");
        return std::nullopt;
    }
    return rel;
}

std::string cgroup_path_by_id(const std::string &root, uint64_t id)
{
    if (root.empty() || id == 0)
        return "";
    int mfd = open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (mfd < 0)
        return "";
    // kernfs file handles are the node id (== the cgroup id) as 8 bytes.
    alignas(file_handle) unsigned char buf[sizeof(file_handle) + sizeof(uint64_t)];
    auto *fh = reinterpret_cast<file_handle *>(buf);
    fh->handle_bytes = sizeof(uint64_t);
    fh->handle_type = 0xfe; // FILEID_KERNFS
    std::memcpy(fh->f_handle, &id, sizeof(id));
    int fd = open_by_handle_at(mfd, fh, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    close(mfd);
    if (fd < 0)
        return "";
    char target[4096];
    ssize_t n = readlink(fmt::format("/proc/self/fd/{}", fd).c_str(), target, sizeof(target) - 1);
    close(fd);
    if (n <= 0)
        return "";
    std::string path(target, static_cast<size_t>(n));
    if (path == root)
        return "/";
    return path.rfind(root + "/", 0) == 0 ? path.substr(root.size()) : "";
}

std::vector<CgroupRef> cgroup_tree(const std::string &root, const std::string &path)
{
    std::vector<CgroupRef> out;
    std::vector<std::string> todo{path};
    while (!todo.empty() && out.size() < 4096) {
        std::string p = todo.back();
        todo.pop_back();
        std::string dir = root + (p == "/" ? "" : p);
        struct stat st{};
        if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
            continue;
        out.push_back({p, static_cast<uint64_t>(st.st_ino)});
        if (DIR *d = opendir(dir.c_str())) {
            while (dirent *de = readdir(d)) {
                if (de->d_name[0] == '.' || de->d_type != DT_DIR)
                    continue;
                todo.push_back((p == "/" ? "" : p) + "/" + de->d_name);
            }
            closedir(d);
        }
    }
    return out;
}

std::vector<uint32_t> pids_in_cgroups(const std::string &root, const std::vector<CgroupRef> &cgs)
{
    std::vector<uint32_t> out;
    for (const auto &cg : cgs) {
        auto s = slurp(root + (cg.path == "/" ? "" : cg.path) + "/cgroup.procs", 16 << 20);
        if (!s)
            continue;
        std::istringstream in(*s);
        uint32_t pid;
        while (in >> pid)
            out.push_back(pid);
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

std::vector<uint32_t> pids_with_cgroup_path(const std::string &path, const std::string &proc_root)
{
    std::vector<uint32_t> out;
    for (const auto &name : list_dir(proc_root)) {
        char *end = nullptr;
        unsigned long pid = strtoul(name.c_str(), &end, 10);
        if (!end || *end || pid == 0)
            continue;
        for (const auto &p : cgroup_paths(static_cast<uint32_t>(pid), proc_root))
            if (p == path || p.rfind(path + "/", 0) == 0) {
                out.push_back(static_cast<uint32_t>(pid));
                break;
            }
    }
    return out;
}

std::optional<uint32_t> ns_pid(uint32_t pid, const std::string &proc_root)
{
    auto s = slurp(fmt::format("{}/{}/status", proc_root, pid), 1 << 16);
    if (!s)
        return std::nullopt;
    auto at = s->find("\nNSpid:");
    if (at == std::string::npos)
        return pid; // kernels before 4.1: no pid namespaces shown
    std::istringstream in(s->substr(at + 7, s->find('\n', at + 7) - at - 7));
    uint32_t v = 0, last = 0;
    while (in >> v)
        last = v;
    return last ? std::optional<uint32_t>(last) : std::nullopt;
}

uint64_t netns_of(uint32_t pid, const std::string &proc_root) { return ns_inode(pid, "net", proc_root); }
uint64_t mntns_of(uint32_t pid, const std::string &proc_root) { return ns_inode(pid, "mnt", proc_root); }
uint64_t pidns_of(uint32_t pid, const std::string &proc_root) { return ns_inode(pid, "pid", proc_root); }

std::string describe(const ContainerInfo &c)
{
    return c.name.empty() ? fmt::format("{} container {}", c.runtime, c.id.substr(0, 12))
                          : fmt::format("{} container {} ({})", c.runtime, c.name, c.id.substr(0, 12));
}

} // namespace n502
