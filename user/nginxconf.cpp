#include "nginxconf.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <fnmatch.h>
#include <map>
#include <sstream>
#include <unistd.h>

#include "logfollow.hpp"
#include "nginx.hpp"

namespace n502 {

namespace {

constexpr size_t kMaxFileBytes = 8 << 20;
constexpr int kMaxIncludeDepth = 16;
constexpr size_t kMaxFiles = 512;

std::optional<std::string> read_in_root(const std::string &root, const std::string &path, std::string *why)
{
    int fd = open_in_root(root, path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        *why = strerror(errno);
        return std::nullopt;
    }
    std::string out;
    char buf[65536];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0 && out.size() < kMaxFileBytes)
        out.append(buf, static_cast<size_t>(n));
    close(fd);
    if (n < 0) {
        *why = strerror(errno);
        return std::nullopt;
    }
    return out;
}

std::string dirname_of(const std::string &p)
{
    auto slash = p.rfind('/');
    return slash == std::string::npos ? "." : slash == 0 ? "/" : p.substr(0, slash);
}

// include's argument: absolute, or relative to the main file's directory;
// a wildcard is allowed in the last component (conf.d/*.conf).
std::vector<std::string> expand_include(const std::string &root, const std::string &base_dir, const std::string &arg)
{
    std::string pat = arg[0] == '/' ? arg : base_dir + "/" + arg;
    if (pat.find_first_of("*?[") == std::string::npos)
        return {pat};
    std::string dir = dirname_of(pat), name = pat.substr(pat.rfind('/') + 1);
    std::vector<std::string> out;
    int dfd = open_in_root(root, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return out;
    if (DIR *d = fdopendir(dfd)) {
        while (dirent *de = readdir(d))
            if (de->d_name[0] != '.' && fnmatch(name.c_str(), de->d_name, 0) == 0)
                out.push_back(dir + "/" + de->d_name);
        closedir(d);
    } else {
        close(dfd);
    }
    std::sort(out.begin(), out.end()); // Nginx sorts glob results too
    return out;
}

struct Statement {
    std::vector<ConfToken> words;
    std::string file;
};

class Parser {
public:
    Parser(std::string root, NginxConf &conf) : root_(std::move(root)), conf_(conf) {}

    void file(const std::string &path, int depth)
    {
        if (depth > kMaxIncludeDepth || conf_.files.size() >= kMaxFiles) {
            conf_.problems.push_back(fmt::format("{}: include nesting or file count over the limit", path));
            return;
        }
        std::string why;
        auto text = read_in_root(root_, path, &why);
        if (!text) {
            conf_.problems.push_back(fmt::format("cannot read {}: {}", path, why));
            return;
        }
        conf_.files.push_back(path);
        auto toks = tokenize_nginx_conf(*text);
        std::vector<ConfToken> words;
        for (const auto &t : toks) {
            if (!t.quoted && t.text == ";") {
                statement(words, path, depth);
                words.clear();
            } else if (!t.quoted && t.text == "{") {
                blocks_.push_back(words);
                words.clear();
            } else if (!t.quoted && t.text == "}") {
                if (!blocks_.empty())
                    blocks_.pop_back();
                words.clear();
            } else {
                words.push_back(t);
            }
        }
    }

    // Group references are resolved once every upstream{} block is known.
    void finish()
    {
        for (auto &p : passes_) {
            auto g = groups_.find(p.host_only);
            if (!p.up.has_variables && g != groups_.end()) {
                for (auto s : g->second) {
                    s.group = p.host_only;
                    conf_.upstreams.push_back(s);
                }
                continue;
            }
            conf_.upstreams.push_back(p.up);
        }
        // One entry per address: the first place that names it.
        std::vector<ConfUpstream> unique;
        for (const auto &u : conf_.upstreams) {
            bool seen = false;
            for (const auto &x : unique)
                seen = seen || (x.address == u.address && x.group == u.group);
            if (!seen)
                unique.push_back(u);
        }
        conf_.upstreams.swap(unique);
    }

private:
    struct Pass {
        ConfUpstream up;
        std::string host_only; // the host part, to match an upstream{} name
    };

    void statement(const std::vector<ConfToken> &w, const std::string &path, int depth)
    {
        if (w.empty())
            return;
        const std::string &name = w[0].text;
        if (name == "include" && w.size() == 2) {
            for (const auto &f : expand_include(root_, dirname_of(main_), w[1].text))
                file(f, depth + 1);
            return;
        }
        bool in_upstream = !blocks_.empty() && !blocks_.back().empty() && blocks_.back()[0].text == "upstream" &&
                           blocks_.back().size() >= 2;
        if (in_upstream && name == "server" && w.size() >= 2) {
            ConfUpstream u;
            u.directive = "server";
            u.file = path;
            u.line = w[0].line;
            u.address = normalise(w[1].text, "", &u.has_variables);
            groups_[blocks_.back()[1].text].push_back(u);
            return;
        }
        static const char *passes[] = {"proxy_pass", "fastcgi_pass", "uwsgi_pass", "scgi_pass", "grpc_pass",
                                       "memcached_pass"};
        for (const char *p : passes)
            if (name == p && w.size() >= 2) {
                Pass ps;
                ps.up.directive = name;
                ps.up.file = path;
                ps.up.line = w[0].line;
                ps.up.address = normalise(w[1].text, name, &ps.up.has_variables, &ps.host_only);
                passes_.push_back(ps);
                return;
            }
    }

    // "http://127.0.0.1:8080/x" -> "127.0.0.1:8080"; "http://unix:/s.sock:/x"
    // -> "unix:/s.sock"; "backend" stays (a group, or a host with the
    // scheme's default port).
    static std::string normalise(std::string t, const std::string &directive, bool *vars, std::string *host_only = nullptr)
    {
        *vars = t.find('$') != std::string::npos;
        int default_port = 0;
        static const std::pair<const char *, int> schemes[] = {{"http://", 80},   {"https://", 443}, {"grpc://", 80},
                                                               {"grpcs://", 443}, {"uwsgi://", 0},   {"suwsgi://", 0}};
        for (const auto &[s, port] : schemes)
            if (t.rfind(s, 0) == 0) {
                t = t.substr(strlen(s));
                default_port = port;
                break;
            }
        if (t.rfind("unix:", 0) == 0) {
            // proxy_pass ends the path with ':' before the URI; the *_pass
            // directives without a scheme take the rest as the path.
            std::string path = t.substr(5);
            if (directive == "proxy_pass" || directive == "grpc_pass") {
                auto colon = path.find(':');
                if (colon != std::string::npos)
                    path = path.substr(0, colon);
            }
            if (host_only)
                *host_only = "";
            return "unix:" + path;
        }
        auto slash = t.find('/');
        if (slash != std::string::npos)
            t = t.substr(0, slash);
        if (host_only)
            *host_only = t;
        bool has_port = t.size() && (t[0] == '[' ? t.find("]:") != std::string::npos
                                                   : t.find(':') != std::string::npos);
        if (!has_port && default_port)
            t += fmt::format(":{}", default_port);
        return t;
    }

    std::string root_;
    NginxConf &conf_;
    std::string main_;
    std::vector<std::vector<ConfToken>> blocks_;
    std::map<std::string, std::vector<ConfUpstream>> groups_;
    std::vector<Pass> passes_;

public:
    void set_main(const std::string &m) { main_ = m; }
};

} // namespace

std::vector<ConfToken> tokenize_nginx_conf(const std::string &s)
{
    std::vector<ConfToken> out;
    int line = 1;
    size_t i = 0, n = s.size();
    while (i < n) {
        char c = s[i];
        if (c == '\n') {
            line++;
            i++;
            continue;
        }
        if (isspace(static_cast<unsigned char>(c))) {
            i++;
            continue;
        }
        if (c == '#') {
            while (i < n && s[i] != '\n')
                i++;
            continue;
        }
        if (c == ';' || c == '{' || c == '}') {
            out.push_back({std::string(1, c), false, line});
            i++;
            continue;
        }
        ConfToken t;
        t.line = line;
        if (c == '"' || c == '\'') {
            t.quoted = true;
            i++;
            while (i < n && s[i] != c) {
                if (s[i] == '\\' && i + 1 < n && (s[i + 1] == c || s[i + 1] == '\\')) {
                    t.text += s[i + 1];
                    i += 2;
                    continue;
                }
                if (s[i] == '\n')
                    line++;
                t.text += s[i++];
            }
            i++; // the closing quote
            out.push_back(t);
            continue;
        }
        while (i < n && !isspace(static_cast<unsigned char>(s[i])) && s[i] != ';' && s[i] != '{' && s[i] != '}') {
            if (s[i] == '\\' && i + 1 < n) {
                t.text += s[i + 1];
                i += 2;
                continue;
            }
            t.text += s[i++];
        }
        out.push_back(t);
    }
    return out;
}

NginxConf parse_nginx_conf(const std::string &root, const std::string &main_file)
{
    NginxConf conf;
    conf.main_file = main_file;
    Parser p(root, conf);
    p.set_main(main_file);
    p.file(main_file, 0);
    p.finish();
    return conf;
}

NginxPaths nginx_paths(uint32_t master, const std::string &proc_root)
{
    NginxPaths out;
    // The master's title keeps the command line: "nginx: master process
    // /usr/sbin/nginx -p /srv -c conf/nginx.conf -g daemon off;".
    std::vector<std::string> words;
    if (auto pi = read_proc(master, proc_root)) {
        std::istringstream in(pi->cmdline);
        std::string w;
        while (in >> w)
            words.push_back(w);
    }
    for (size_t k = 0; k + 1 < words.size(); k++) {
        if (words[k] == "-c")
            out.conf = words[k + 1];
        else if (words[k] == "-p")
            out.prefix = words[k + 1];
    }
    if (out.conf.empty() || out.prefix.empty()) {
        // Compiled-in defaults, from the binary's "configure arguments".
        std::string bin;
        if (FILE *f = fopen(fmt::format("{}/{}/exe", proc_root, master).c_str(), "rb")) {
            std::string chunk(1 << 20, '\0');
            size_t n;
            while ((n = fread(chunk.data(), 1, chunk.size(), f)) > 0 && bin.size() < (64u << 20))
                bin.append(chunk.data(), n);
            fclose(f);
        }
        auto arg = [&](const char *key) {
            auto at = bin.find(key);
            if (at == std::string::npos)
                return std::string();
            at += strlen(key);
            auto end = bin.find_first_of(std::string(" \n\0'\"", 5), at);
            return bin.substr(at, end == std::string::npos ? std::string::npos : end - at);
        };
        if (out.prefix.empty())
            out.prefix = arg("--prefix=");
        if (out.conf.empty())
            out.conf = arg("--conf-path=");
        if (out.prefix.empty())
            out.prefix = "/usr/local/nginx";
        if (out.conf.empty())
            out.conf = "conf/nginx.conf";
    }
    if (!out.prefix.empty() && out.prefix.back() != '/')
        out.prefix += '/';
    if (out.conf[0] != '/')
        out.conf = out.prefix + out.conf;
    return out;
}

std::optional<uint16_t> upstream_tcp_port(const ConfUpstream &u)
{
    if (u.has_variables)
        return std::nullopt;
    const std::string &a = u.address;
    if (a.empty())
        return std::nullopt;
    if (a.rfind("unix:", 0) == 0)
        return 0;
    size_t colon = a[0] == '[' ? a.find("]:") : a.rfind(':');
    if (colon == std::string::npos)
        return std::nullopt;
    std::string digits = a.substr(colon + (a[0] == '[' ? 2 : 1));
    if (digits.empty() || digits.size() > 5 || digits.find_first_not_of("0123456789") != std::string::npos)
        return std::nullopt;
    unsigned long port = std::stoul(digits);
    if (port == 0 || port > 65535)
        return std::nullopt;
    return static_cast<uint16_t>(port);
}

} // namespace n502
