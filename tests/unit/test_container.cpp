// Containers from the host's side: cgroup layouts, runtime state on disk,
// --cgroup arguments, and files opened confined to a container's root.
#include <catch2/catch.hpp>
#include <cstdlib>
#include <fcntl.h>
#include <fstream>
#include <string>
#include <csignal>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "container.hpp"
#include "logfollow.hpp"
#include "nginx.hpp"
#include "state.hpp"

using namespace n502;

namespace {

const std::string kId1 = "8e74fdc81d1baae43036d2c4f28e515787a1ff133a559c006ef401042b3a3ab0";
const std::string kId2 = "0c3c56294a66fe47951f35173c771574ef86b68266a2d4efaf6a23acacdbf030";

// A scratch directory tree, removed at the end of the test.
struct TempDir {
    std::string path;
    TempDir()
    {
        char tmpl[] = "/tmp/n502-unit-XXXXXX";
        path = mkdtemp(tmpl);
    }
    ~TempDir() { std::system(("rm -rf '" + path + "'").c_str()); }
    std::string mk(const std::string &rel) const
    {
        std::system(("mkdir -p '" + path + "/" + rel + "'").c_str());
        return path + "/" + rel;
    }
    void write(const std::string &rel, const std::string &text) const
    {
        auto slash = rel.rfind('/');
        if (slash != std::string::npos)
            mk(rel.substr(0, slash));
        std::ofstream(path + "/" + rel) << text;
    }
};

std::string docker_config(const std::string &id, const std::string &name, bool running, int pid)
{
    // The fields n502trace reads, among others of the same names deeper down.
    return "{\"ID\":\"" + id + "\",\"Name\":\"/" + name + "\",\"State\":{\"Running\":" + (running ? "true" : "false") +
           ",\"Pid\":" + std::to_string(pid) + "},\"Config\":{\"Hostname\":\"x\"},\"MountPoints\":{\"/data\":{\"Name\":\"vol\"}}}";
}

} // namespace

TEST_CASE("container layouts: the runtime and id from a cgroup path", "[container]")
{
    RuntimeDirs none{"/nonexistent/docker", "/nonexistent/containerd", "/nonexistent/crio", "/nonexistent/crio"};
    auto c = container_from_cgroup("/docker/" + kId1, none);
    REQUIRE(c);
    CHECK(c->runtime == "docker");
    CHECK(c->id == kId1);
    CHECK(c->name.empty());

    c = container_from_cgroup("/system.slice/docker-" + kId1 + ".scope", none);
    REQUIRE(c);
    CHECK(c->runtime == "docker");
    CHECK(c->id == kId1);

    c = container_from_cgroup("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/"
                              "cri-containerd-" + kId2 + ".scope",
                              none);
    REQUIRE(c);
    CHECK(c->runtime == "containerd");
    CHECK(c->id == kId2);

    c = container_from_cgroup("/kubepods.slice/kubepods-pod99.slice/crio-" + kId2 + ".scope", none);
    REQUIRE(c);
    CHECK(c->runtime == "cri-o");

    c = container_from_cgroup("/machine.slice/libpod-" + kId1 + ".scope/container", none);
    REQUIRE(c);
    CHECK(c->runtime == "podman");

    // cgroupfs driver under Kubernetes: the innermost id wins, runtime unknown.
    c = container_from_cgroup("/kubepods/burstable/pod1234/" + kId2, none);
    REQUIRE(c);
    CHECK(c->runtime == "kubernetes");
    CHECK(c->id == kId2);

    // Conmon's own scope and plain host cgroups are not containers.
    CHECK_FALSE(container_from_cgroup("/machine.slice/libpod-conmon-" + kId1 + ".scope", none));
    CHECK_FALSE(container_from_cgroup("/", none));
    CHECK_FALSE(container_from_cgroup("/user.slice/user-0.slice/session-1.scope", none));
    CHECK_FALSE(container_from_cgroup("/docker/" + kId1.substr(0, 12), none)); // not a full id
}

TEST_CASE("container names come from the runtime's state on disk", "[container]")
{
    TempDir t;
    RuntimeDirs d{t.path + "/docker", t.path + "/containerd", t.path + "/crio-run", t.path + "/crio-lib"};
    t.write("docker/containers/" + kId1 + "/config.v2.json", docker_config(kId1, "web", true, getpid()));
    auto c = container_from_cgroup("/docker/" + kId1, d);
    REQUIRE(c);
    CHECK(c->name == "web");

    // containerd's CRI plugin: pod/container from the bundle's annotations.
    t.write("containerd/io.containerd.runtime.v2.task/k8s.io/" + kId2 + "/config.json",
            "{\"annotations\":{\"io.kubernetes.cri.sandbox-name\":\"shop-7f9\",\"io.kubernetes.cri.container-name\":"
            "\"php\"}}");
    c = container_from_cgroup("/kubepods/burstable/pod1/" + kId2, d);
    REQUIRE(c);
    CHECK(c->runtime == "containerd");
    CHECK(c->name == "shop-7f9/php");
    CHECK(describe(*c) == "containerd container shop-7f9/php (" + kId2.substr(0, 12) + ")");

    // A corrupt state file: the container is still named by id, nothing throws.
    t.write("docker/containers/" + kId2 + "/config.v2.json", "{\"Name\": \"/broken");
    c = container_from_cgroup("/docker/" + kId2, d);
    REQUIRE(c);
    CHECK(c->name.empty());
}

TEST_CASE("--container: by name, full id, unique prefix; clear errors otherwise", "[container]")
{
    TempDir t;
    RuntimeDirs d{t.path + "/docker", t.path + "/containerd", t.path + "/crio-run", t.path + "/crio-lib"};
    uint32_t me = static_cast<uint32_t>(getpid());
    t.write("docker/containers/" + kId1 + "/config.v2.json", docker_config(kId1, "web", true, static_cast<int>(me)));
    t.write("docker/containers/" + kId2 + "/config.v2.json", docker_config(kId2, "old", false, 0));
    std::string err;

    auto r = resolve_container("web", d, &err);
    REQUIRE(r);
    CHECK(r->info.id == kId1);
    CHECK(r->pid == me);
    CHECK(resolve_container("/web", d, &err)); // as `docker inspect` prints names
    CHECK(resolve_container(kId1, d, &err));
    r = resolve_container(kId1.substr(0, 12), d, &err); // what `docker ps` shows
    REQUIRE(r);
    CHECK(r->info.name == "web");

    CHECK_FALSE(resolve_container("nosuch", d, &err));
    CHECK(err.find("no container matches \"nosuch\"") != std::string::npos);
    CHECK(err.find("web (docker)") != std::string::npos); // the running ones are listed

    CHECK_FALSE(resolve_container("old", d, &err));
    CHECK(err.find("is not running") != std::string::npos);
    std::optional<ContainerInfo> stopped;
    CHECK_FALSE(resolve_container("old", d, &err, &stopped));
    REQUIRE(stopped);
    CHECK(stopped->name == "old");
    stopped.reset();
    CHECK_FALSE(resolve_container("nosuch", d, &err, &stopped));
    CHECK_FALSE(stopped); // not a stopped container: none at all

    // Both ids start with a hex digit; "0c3" and "8e7" are unique, "" is not a reference.
    CHECK_FALSE(resolve_container("", d, &err));
    // One or two characters are too few to pick a container by: said so.
    CHECK_FALSE(resolve_container(kId1.substr(0, 2), d, &err));
    CHECK(err.find("at least 3 characters") != std::string::npos);
    CHECK(resolve_container(kId1.substr(0, 3), d, &err));
    t.write("docker/containers/" + std::string(kId1).replace(20, 5, "fffff") + "/config.v2.json",
            docker_config(std::string(kId1).replace(20, 5, "fffff"), "web2", true, static_cast<int>(me)));
    CHECK_FALSE(resolve_container(kId1.substr(0, 12), d, &err));
    CHECK(err.find("matches 2 containers") != std::string::npos);
}

TEST_CASE("--cgroup arguments: absolute, as /proc shows them, or refused", "[container]")
{
    TempDir t;
    t.mk("docker/" + kId1);
    std::string err;
    auto r = normalise_cgroup_arg(t.path + "/docker/" + kId1 + "/", t.path, &err);
    REQUIRE(r);
    CHECK(*r == "/docker/" + kId1);
    r = normalise_cgroup_arg("/docker/" + kId1, t.path, &err);
    REQUIRE(r);
    CHECK(*r == "/docker/" + kId1);
    r = normalise_cgroup_arg("0::/docker/" + kId1, t.path, &err); // /proc/PID/cgroup's line, pasted
    REQUIRE(r);
    CHECK(*r == "/docker/" + kId1);
    CHECK_FALSE(normalise_cgroup_arg("4:memory:/docker/" + kId1, t.path, &err)); // a v1 line: not v2's
    CHECK_FALSE(normalise_cgroup_arg("/docker/nosuch", t.path, &err));
    CHECK(err.find("not a cgroup directory") != std::string::npos);
    CHECK_FALSE(normalise_cgroup_arg("/docker/../..", t.path, &err));
    CHECK_FALSE(normalise_cgroup_arg("relative/path", t.path, &err));
    CHECK_FALSE(normalise_cgroup_arg("/docker", "", &err));
    CHECK(err.find("no cgroup v2 hierarchy") != std::string::npos);

    // The tree below a cgroup, each with its id (the directory's inode).
    t.mk("docker/" + kId1 + "/child");
    auto tree = cgroup_tree(t.path, "/docker/" + kId1);
    REQUIRE(tree.size() == 2);
    struct stat st{};
    REQUIRE(stat((t.path + "/docker/" + kId1).c_str(), &st) == 0);
    CHECK(tree[0].id == static_cast<uint64_t>(st.st_ino));
}

TEST_CASE("pid namespaces: our own pid is our own in our namespace", "[container]")
{
    auto n = ns_pid(static_cast<uint32_t>(getpid()));
    REQUIRE(n);
    CHECK(netns_of(static_cast<uint32_t>(getpid())) != 0);
    CHECK_FALSE(ns_pid(0xfffffff0u));
}

TEST_CASE("open_in_root: symlinks are resolved inside the root, never out of it", "[container]")
{
    TempDir outside;
    outside.write("secret", "host secret\n");
    TempDir root;
    root.write("var/log/nginx/real.log", "inside\n");
    root.mk("var/log/nginx");
    // An absolute symlink to a path that exists on the host but not in the root.
    REQUIRE(symlink((outside.path + "/secret").c_str(), (root.path + "/var/log/nginx/error.log").c_str()) == 0);
    // A relative symlink that climbs: clamped at the root.
    std::string climb = "../../../../../../../.." + outside.path + "/secret";
    REQUIRE(symlink(climb.c_str(), (root.path + "/var/log/nginx/climb.log").c_str()) == 0);
    // An absolute symlink that stays inside once read against the root.
    REQUIRE(symlink("/var/log/nginx/real.log", (root.path + "/var/log/nginx/access.log").c_str()) == 0);

    errno = 0;
    int fd = open_in_root(root.path, "/var/log/nginx/error.log", O_RDONLY | O_CLOEXEC);
    CHECK(fd < 0);
    CHECK(errno == ENOENT);
    fd = open_in_root(root.path, "/var/log/nginx/climb.log", O_RDONLY | O_CLOEXEC);
    CHECK(fd < 0);
    fd = open_in_root(root.path, "/../../" + outside.path + "/secret", O_RDONLY | O_CLOEXEC);
    CHECK(fd < 0);

    fd = open_in_root(root.path, "/var/log/nginx/access.log", O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    char buf[16] = {};
    CHECK(read(fd, buf, sizeof(buf) - 1) == 7);
    CHECK(std::string(buf) == "inside\n");
    close(fd);

    // The follower says where it looked, and that it would not leave the root.
    LogFollower f("/var/log/nginx/error.log", 1024, root.path);
    std::string err;
    CHECK_FALSE(f.open(true, &err));
    CHECK(err.find("symlinks are not followed out of it") != std::string::npos);
    CHECK(err.find("host secret") == std::string::npos);
    LogFollower ok("/var/log/nginx/access.log", 1024, root.path);
    CHECK(ok.open(false, &err));
    CHECK(ok.display() == root.path + "/var/log/nginx/access.log");
}

TEST_CASE("a log that is a pipe is captured, not followed", "[container]")
{
    // This process as "Nginx": its fd 2 is whatever the test runner gave it;
    // point fds 1 and 2 at a pipe in a child and look from outside.
    int p[2];
    REQUIRE(pipe(p) == 0);
    pid_t child = fork();
    if (child == 0) {
        dup2(p[1], 1);
        dup2(p[1], 2);
        pause();
        _exit(0);
    }
    REQUIRE(child > 0);
    NginxInfo n;
    n.master = static_cast<uint32_t>(child);
    struct stat st{};
    REQUIRE(fstat(p[1], &st) == 0);
    std::vector<LogCapture> caps;
    // Until the child has dup2'd both: between the two, fd 1 is the pipe and
    // fd 2 still the runner's (two captures, or one that is not ours).
    auto settled = [&]() { return caps.size() == 1 && caps[0].ino == static_cast<uint64_t>(st.st_ino); };
    for (int i = 0; i < 400; i++) {
        caps = find_log_captures(n);
        if (settled())
            break;
        usleep(5000);
    }
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    close(p[0]);
    close(p[1]);
    REQUIRE(caps.size() == 1); // fds 1 and 2 are the same pipe: captured once
    CHECK(caps[0].ino == static_cast<uint64_t>(st.st_ino));
    CHECK(caps[0].desc.find("pipe:[") == 0);
}

TEST_CASE("network namespaces: 127.0.0.1:9000 in two pods are two places", "[container]")
{
    State st;
    Addr a = Addr::ipv4(0x7f000001, 9000);
    a.netns = 1001;
    Addr b = a;
    b.netns = 2002;
    st.add_listener(a, 100, "php-a");
    st.add_listener(b, 200, "php-b");
    auto in_a = st.listeners_on(a);
    REQUIRE(in_a.size() == 1);
    CHECK(in_a[0]->pid == 100);
    auto in_b = st.listeners_on(b);
    REQUIRE(in_b.size() == 1);
    CHECK(in_b[0]->pid == 200);
    // A wildcard listener in pod B does not serve pod A's loopback.
    Addr any = Addr::ipv4(0, 9001);
    any.netns = 2002;
    st.add_listener(any, 300, "app-b");
    Addr a9001 = Addr::ipv4(0x7f000001, 9001);
    a9001.netns = 1001;
    CHECK(st.listeners_on(a9001).empty());
    // Addresses that are not loopback may be reached across namespaces (veth).
    Addr veth = Addr::ipv4(0xc0000202, 9001); // 192.0.2.2
    veth.netns = 1001;
    REQUIRE(st.listeners_on(veth).size() == 1);
    CHECK(st.listeners_on(veth)[0]->pid == 300);
}

TEST_CASE("listener history is kept per network namespace", "[container]")
{
    State st;
    Addr mine = Addr::ipv4(0x7f000001, 9000);
    mine.netns = 1001;
    st.add_listener(mine, 100, "app");
    // Five other pods listen on the same loopback address afterwards.
    for (uint32_t i = 0; i < 5; i++) {
        Addr other = mine;
        other.netns = 2000 + i;
        st.add_listener(other, 200 + i, "neighbour");
    }
    auto ls = st.listeners_on(mine);
    REQUIRE(ls.size() == 1);
    CHECK(ls[0]->pid == 100);
    // Within one namespace the history is bounded (oldest dropped).
    for (uint32_t i = 0; i < 10; i++)
        st.add_listener(mine, 300 + i, "app");
    ls = st.listeners_on(mine);
    CHECK(ls.size() == StateLimits{}.max_listeners_per_addr);
    CHECK(ls.back()->pid == 309);
}

TEST_CASE("Docker on the system containerd: one container, not two", "[container]")
{
    // dockerd on containerd's v2 shim also leaves the task under
    // <containerd>/io.containerd.runtime.v2.task/moby/<id>.
    TempDir t;
    RuntimeDirs d{t.path + "/docker", t.path + "/containerd", t.path + "/crio-run", t.path + "/crio-lib"};
    uint32_t me = static_cast<uint32_t>(getpid());
    t.write("docker/containers/" + kId1 + "/config.v2.json", docker_config(kId1, "web", true, static_cast<int>(me)));
    t.write("containerd/io.containerd.runtime.v2.task/moby/" + kId1 + "/init.pid", std::to_string(me));
    t.write("containerd/io.containerd.runtime.v2.task/moby/" + kId1 + "/config.json", "{}");
    std::string err;
    for (const std::string &ref : {kId1, kId1.substr(0, 12), std::string("web")}) {
        auto r = resolve_container(ref, d, &err);
        INFO(ref << ": " << err);
        REQUIRE(r);
        CHECK(r->info.runtime == "docker");
        CHECK(r->info.name == "web");
    }
}

TEST_CASE("the evidence window: what ended before it is let go and counted", "[window]")
{
    StateLimits lim;
    lim.window_ns = 1'000'000'000ULL; // 1 s
    State st(lim);
    Event listen;
    listen.type = N502_EV_LISTEN;
    listen.ts = 1'000'000'000ULL;
    listen.tgid = 77;
    listen.comm = "app";
    listen.sk = 0x5000;
    listen.src = Addr::ipv4(0x7f000001, 9000);
    st.apply(listen);
    Event close = listen;
    close.type = N502_EV_STATE;
    close.ts = 2'000'000'000ULL;
    close.sock_role = N502_SOCK_LISTENER;
    close.oldstate = 10;
    close.newstate = 7;
    st.apply(close);
    Event exit;
    exit.type = N502_EV_EXIT;
    exit.ts = 2'000'000'000ULL;
    exit.tgid = 77;
    exit.comm = "app";
    exit.exit_code = 9;
    st.apply(exit);

    st.expire(2'500'000'000ULL); // within the window: kept
    REQUIRE(st.listeners_on(listen.src).size() == 1);
    CHECK(st.proc(77));
    CHECK_FALSE(st.listener_aged_out(listen.src));

    st.expire(3'500'000'000ULL); // 1.5 s after it ended: let go
    CHECK(st.listeners_on(listen.src).empty());
    CHECK_FALSE(st.proc(77));
    CHECK(st.listener_aged_out(listen.src));
    CHECK(st.listener_aged_out(Addr::ipv4(0x7f000001, 9000)));
    CHECK_FALSE(st.listener_aged_out(Addr::ipv4(0x7f000001, 9001)));
    CHECK(st.stats().listeners_expired == 1);
    CHECK(st.stats().procs_expired == 1);
}

TEST_CASE("Nginx in a selection: by its name or title, and not an operator's one-shot command", "[container]")
{
    auto proc = [](std::string comm, std::string cmdline) {
        ProcInfo p;
        p.comm = std::move(comm);
        p.cmdline = std::move(cmdline);
        return p;
    };
    CHECK(named_nginx(proc("nginx", "nginx: master process /usr/sbin/nginx -g daemon off;")));
    CHECK(named_nginx(proc("nginx-debug", "/usr/sbin/nginx-debug -c /etc/n502/nginx.conf")));
    CHECK(named_nginx(proc("openresty", "openresty -g daemon off;")));
    CHECK(named_nginx(proc("sh", "nginx: worker process")));
    CHECK_FALSE(named_nginx(proc("nginx-agent", "/usr/bin/nginx-agent")));
    CHECK_FALSE(named_nginx(proc("nginx-ingress-c", "/nginx-ingress-controller --configmap=x")));
    CHECK_FALSE(named_nginx(proc("nginx-prometheu", "/usr/bin/nginx-prometheus-exporter")));

    CHECK(is_nginx_oneshot(proc("nginx", "nginx -T -c /etc/n502/nginx.conf")));
    CHECK(is_nginx_oneshot(proc("nginx", "nginx -qt")));
    CHECK(is_nginx_oneshot(proc("nginx", "nginx -s reload")));
    CHECK(is_nginx_oneshot(proc("nginx", "/usr/sbin/nginx -V")));
    CHECK_FALSE(is_nginx_oneshot(proc("nginx", "nginx -q -g daemon off;")));        // quiet, not one-shot
    CHECK_FALSE(is_nginx_oneshot(proc("nginx", "nginx -c /etc/t/nginx.conf")));     // a path with a t in it
    CHECK_FALSE(is_nginx_oneshot(proc("nginx", "nginx -p /tmp/v -g daemon off;"))); // values are not flags
    CHECK_FALSE(is_nginx_oneshot(proc("nginx", "nginx: master process nginx -t")));   // titled: running
}
