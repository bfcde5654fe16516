#include "sockdiag.hpp"

#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <atomic>
#include <thread>
#include <unistd.h>

namespace n502 {

bool in_netns(uint32_t pid, const std::function<void()> &fn)
{
    if (pid == 0) {
        fn();
        return true;
    }
    struct stat mine{}, theirs{};
    std::string path = fmt::format("/proc/{}/ns/net", pid);
    if (stat(path.c_str(), &theirs) != 0)
        return false; // gone: its namespace is not ours to answer for
    if (stat("/proc/self/ns/net", &mine) == 0 && mine.st_dev == theirs.st_dev && mine.st_ino == theirs.st_ino) {
        fn();
        return true;
    }
    bool entered = false;
    std::thread t([&] {
        int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return;
        // The thread must not share its filesystem context for setns to be
        // allowed: unshare it first.
        entered = unshare(CLONE_FS) == 0 && setns(fd, CLONE_NEWNET) == 0;
        close(fd);
        if (entered)
            fn();
    });
    t.join();
    return entered;
}

bool diag_dump(const void *req, size_t len, const std::function<void(const nlmsghdr *)> &on_msg)
{
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0)
        return false;
    sockaddr_nl sa{};
    sa.nl_family = AF_NETLINK;
    if (sendto(fd, req, len, 0, reinterpret_cast<sockaddr *>(&sa), sizeof(sa)) < 0) {
        close(fd);
        return false;
    }
    alignas(nlmsghdr) char buf[32768];
    bool done = false, ok = true;
    while (!done) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) {
            ok = false;
            break;
        }
        for (auto *h = reinterpret_cast<nlmsghdr *>(buf); NLMSG_OK(h, static_cast<unsigned>(n));
             h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type == NLMSG_DONE) {
                done = true;
                break;
            }
            if (h->nlmsg_type == NLMSG_ERROR) {
                done = true;
                ok = false;
                break;
            }
            on_msg(h);
        }
    }
    close(fd);
    return ok;
}

namespace {
std::atomic<uint64_t> g_dump_failures{0};
} // namespace

uint64_t diag_failures()
{
    return g_dump_failures.load();
}

std::vector<DiagSock> diag_tcp(uint32_t net_pid, uint32_t states, uint32_t netns, int only)
{
    std::vector<DiagSock> out;
    in_netns(net_pid, [&] {
        for (int family : {AF_INET, AF_INET6}) {
            if (only && family != only)
                continue;
            struct {
                nlmsghdr nlh;
                inet_diag_req_v2 r;
            } req{};
            req.nlh.nlmsg_len = sizeof(req);
            req.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
            req.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
            req.r.sdiag_family = static_cast<uint8_t>(family);
            req.r.sdiag_protocol = IPPROTO_TCP;
            req.r.idiag_states = states;
            bool dumped = diag_dump(&req, sizeof(req), [&](const nlmsghdr *h) {
                auto *m = static_cast<const inet_diag_msg *>(NLMSG_DATA(h));
                DiagSock s;
                size_t n = m->idiag_family == AF_INET ? 4 : 16;
                for (Addr *a : {&s.local, &s.remote}) {
                    a->family = m->idiag_family;
                    a->netns = netns;
                }
                std::memcpy(s.local.ip.data(), m->id.idiag_src, n);
                std::memcpy(s.remote.ip.data(), m->id.idiag_dst, n);
                s.local.port = ntohs(m->id.idiag_sport);
                s.remote.port = ntohs(m->id.idiag_dport);
                s.state = m->idiag_state;
                s.inode = m->idiag_inode;
                s.rqueue = m->idiag_rqueue;
                s.wqueue = m->idiag_wqueue;
                out.push_back(s);
            });
            if (!dumped)
                g_dump_failures++;
        }
    });
    return out;
}

std::vector<DiagSock> diag_unix(uint32_t net_pid, uint32_t states, uint32_t netns)
{
    std::vector<DiagSock> out;
    in_netns(net_pid, [&] {
        struct {
            nlmsghdr nlh;
            unix_diag_req r;
        } req{};
        req.nlh.nlmsg_len = sizeof(req);
        req.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
        req.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
        req.r.sdiag_family = AF_UNIX;
        req.r.udiag_states = states;
        req.r.udiag_show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN;
        diag_dump(&req, sizeof(req), [&](const nlmsghdr *h) {
            auto *m = static_cast<const unix_diag_msg *>(NLMSG_DATA(h));
            if (m->udiag_type != SOCK_STREAM)
                return;
            DiagSock s;
            s.state = m->udiag_state;
            s.inode = m->udiag_ino;
            int len = static_cast<int>(h->nlmsg_len - NLMSG_LENGTH(sizeof(*m)));
            std::string name;
            for (auto *at = reinterpret_cast<const rtattr *>(m + 1); RTA_OK(at, len); at = RTA_NEXT(at, len)) {
                if (at->rta_type == UNIX_DIAG_NAME)
                    name.assign(static_cast<const char *>(RTA_DATA(at)), RTA_PAYLOAD(at));
                else if (at->rta_type == UNIX_DIAG_PEER && RTA_PAYLOAD(at) >= sizeof(uint32_t))
                    s.peer_inode = *static_cast<const uint32_t *>(RTA_DATA(at));
                else if (at->rta_type == UNIX_DIAG_RQLEN && RTA_PAYLOAD(at) >= sizeof(unix_diag_rqlen)) {
                    auto *rq = static_cast<const unix_diag_rqlen *>(RTA_DATA(at));
                    s.rqueue = rq->udiag_rqueue;
                    s.wqueue = rq->udiag_wqueue;
                }
            }
            while (!name.empty() && name.back() == '\0')
                name.pop_back();
            s.name = name;
            if (!name.empty() && name[0] == '/') {
                s.local = Addr::unix_path(name);
                s.local.netns = netns;
            } else {
                s.local.family = AF_UNIX;
                s.local.netns = netns;
            }
            out.push_back(s);
        });
    });
    return out;
}

} // namespace n502
