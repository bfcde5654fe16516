// Containers from the host's side: cgroup paths, the runtime that made a
// cgroup (by the layouts Docker, containerd/Kubernetes, CRI-O and Podman
// use), container names from the runtime's on-disk state (no API, no
// socket), pid namespaces (NSpid) and network namespaces.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace n502 {

struct ContainerInfo {
    std::string runtime; // docker, containerd, cri-o, podman, kubernetes (runtime unknown), container
    std::string id;      // full id (64 hex digits for every runtime above)
    std::string name;    // "web"; Kubernetes: "pod/container"; "" when the state does not say
    bool operator==(const ContainerInfo &o) const { return runtime == o.runtime && id == o.id && name == o.name; }
};

// Where each runtime keeps its state; defaults are the packages' defaults,
// overridable for unusual installs (N502_DOCKER_ROOT, N502_CONTAINERD_STATE,
// N502_CRIO_STATE, N502_CRIO_ROOT).
struct RuntimeDirs {
    std::string docker = "/var/lib/docker";
    std::string containerd = "/run/containerd";
    std::string crio_state = "/run/containers/storage";
    std::string crio_root = "/var/lib/containers/storage";
    static RuntimeDirs from_env();
};

// At most `max` bytes of a file (procfs, cgroupfs and runtime state files
// are small); nullopt when it cannot be opened.
std::optional<std::string> read_file(const std::string &path, size_t max);

// The cgroup v2 hierarchy: "/sys/fs/cgroup/unified" on hybrid hosts,
// "/sys/fs/cgroup" on pure v2 ones, "" when there is none (v1 only).
std::string unified_root();

// A process's cgroup v2 path ("0::" line of /proc/PID/cgroup, e.g.
// "/docker/<id>"), "" when it has none.
std::string cgroup_v2_path(uint32_t pid, const std::string &proc_root = "/proc");
// Every cgroup path of a process (v2 and each v1 hierarchy), deduplicated.
std::vector<std::string> cgroup_paths(uint32_t pid, const std::string &proc_root = "/proc");

// The container a cgroup path belongs to, from the path's layout; the name
// is looked up in the runtime's state when it has one.
std::optional<ContainerInfo> container_from_cgroup(const std::string &path, const RuntimeDirs &dirs);

// --container REF: a name, a full id, or a unique id prefix. Returns the
// container and the host pid of its first process; on failure nullopt and
// *error says why (and what exists). A container that exists but does not
// run is also put in *stopped when given (else only in the error).
struct ResolvedContainer {
    ContainerInfo info;
    uint32_t pid = 0;
};
std::optional<ResolvedContainer> resolve_container(const std::string &ref, const RuntimeDirs &dirs,
                                                   std::string *error,
                                                   std::optional<ContainerInfo> *stopped = nullptr);

// --cgroup PATH: absolute under the v2 mount, or as /proc/PID/cgroup shows
// it. Returns the path relative to the v2 root ("/docker/<id>").
std::optional<std::string> normalise_cgroup_arg(const std::string &arg, const std::string &root, std::string *error);

struct CgroupRef {
    std::string path; // relative to the v2 root
    uint64_t id = 0;  // the kernel's cgroup id (inode number of its directory)
};
// The path (relative to the v2 root) of the cgroup with this id, through
// open_by_handle_at (needs CAP_DAC_READ_SEARCH); "" when it no longer exists.
std::string cgroup_path_by_id(const std::string &root, uint64_t id);

// The cgroup and every cgroup below it.
std::vector<CgroupRef> cgroup_tree(const std::string &root, const std::string &path);
// Pids in those cgroups (cgroup.procs).
std::vector<uint32_t> pids_in_cgroups(const std::string &root, const std::vector<CgroupRef> &cgs);
// Pids whose cgroup paths (any hierarchy) include `path`: the v1-only fallback.
std::vector<uint32_t> pids_with_cgroup_path(const std::string &path, const std::string &proc_root = "/proc");

// The pid as the process's innermost pid namespace sees it (last NSpid
// field), or nullopt.
std::optional<uint32_t> ns_pid(uint32_t pid, const std::string &proc_root = "/proc");
// Namespace inode numbers (0 when unreadable).
uint64_t netns_of(uint32_t pid, const std::string &proc_root = "/proc");
uint64_t mntns_of(uint32_t pid, const std::string &proc_root = "/proc");
uint64_t pidns_of(uint32_t pid, const std::string &proc_root = "/proc");

// "docker web (3f2a1b4c5d6e)": for sentences.
std::string describe(const ContainerInfo &c);

} // namespace n502
