#include "nginxconf.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <glob.h>
#include <map>
#include <set>
#include <sstream>
#include <sys/stat.h>
#include <unistd.h>

#include "logfollow.hpp"
#include "nginx.hpp"

namespace n502 {

namespace {

constexpr size_t kMaxFileBytes = 8 << 20;
constexpr int kMaxIncludeDepth = 16;
constexpr size_t kMaxFiles = 512;

// *cut: the file is longer than kMaxFileBytes, only its beginning read.
std::optional<std::string> read_in_root(const std::string &root, const std::string &path, std::string *why, bool *cut)
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
    *cut = n > 0;
    return out;
}

std::string dirname_of(const std::string &p)
{
    auto slash = p.rfind('/');
    return slash == std::string::npos ? "." : slash == 0 ? "/" : p.substr(0, slash);
}

// glob(3)'s reads of directories, confined to the root as every open here.
// GLOB_ALTDIRFUNC's functions take no context: the include being expanded.
struct GlobIn {
    const std::string *root;
    const std::string *pattern;
    std::vector<std::string> *problems;
};
thread_local GlobIn *glob_in = nullptr;

void *glob_opendir(const char *dir)
{
    int fd = open_in_root(*glob_in->root, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return nullptr;
    DIR *d = fdopendir(fd);
    if (!d)
        close(fd);
    return d;
}

void glob_closedir(void *d) { closedir(static_cast<DIR *>(d)); }

dirent *glob_readdir(void *d) { return readdir(static_cast<DIR *>(d)); }

int glob_stat_in_root(const char *path, struct stat *st, int flags)
{
    int fd = open_in_root(*glob_in->root, path, O_PATH | O_CLOEXEC | flags);
    if (fd < 0)
        return -1;
    int r = fstat(fd, st);
    close(fd);
    return r;
}

int glob_stat(const char *path, struct stat *st) { return glob_stat_in_root(path, st, 0); }

int glob_lstat(const char *path, struct stat *st) { return glob_stat_in_root(path, st, O_NOFOLLOW); }

// A directory on the way that cannot be read may hold files Nginx read: a
// problem, unless it does not exist (nothing matches). glob goes on.
int glob_error(const char *dir, int err)
{
    if (err != ENOENT)
        glob_in->problems->push_back(
            fmt::format("cannot read {}: {} (include {})", dir, strerror(err), *glob_in->pattern));
    return 0;
}

// include's argument: absolute, or relative to the main file's directory,
// with wildcards in any component (vhosts/*/site.conf): glob(3), as Nginx.
std::vector<std::string> expand_include(const std::string &root, const std::string &base_dir, const std::string &arg,
                                        std::vector<std::string> *problems)
{
    std::string pat = arg[0] == '/' ? arg : base_dir + "/" + arg;
    if (pat.find_first_of("*?[") == std::string::npos)
        return {pat};
    GlobIn in{&root, &pat, problems};
    glob_in = &in;
    glob_t g{};
    g.gl_opendir = glob_opendir;
    g.gl_readdir = glob_readdir;
    g.gl_closedir = glob_closedir;
    g.gl_stat = glob_stat;
    g.gl_lstat = glob_lstat;
    int rc = glob(pat.c_str(), GLOB_ALTDIRFUNC, glob_error, &g);
    glob_in = nullptr;
    std::vector<std::string> out;
    if (rc == 0)
        out.assign(g.gl_pathv, g.gl_pathv + g.gl_pathc); // sorted, as Nginx's
    else if (rc != GLOB_NOMATCH)
        problems->push_back(fmt::format("cannot expand include {}: glob error {}", pat, rc));
    globfree(&g);
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
        bool cut = false;
        auto text = read_in_root(root_, path, &why, &cut);
        if (!text) {
            conf_.problems.push_back(fmt::format("cannot read {}: {}", path, why));
            return;
        }
        if (cut)
            conf_.problems.push_back(fmt::format("{}: only its first {} MiB read", path, kMaxFileBytes >> 20));
        conf_.files.push_back(path);
        auto toks = tokenize_nginx_conf(*text);
        std::vector<ConfToken> words;
        for (const auto &t : toks) {
            if (!t.quoted && t.text == ";") {
                statement(words, path, depth);
                words.clear();
            } else if (!t.quoted && t.text == "{") {
                if (in_upstream() && !words.empty() && words[0].text == "balancer_by_lua_block")
                    lua_balanced_.insert(group_key(blocks_.back()[1].text));
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
            auto g = groups_.find(p.group_key);
            if (!p.up.has_variables && g != groups_.end()) {
                for (auto s : g->second) {
                    // A Lua balancer's servers are placeholders: it picks the
                    // peer per request.
                    s.has_variables = s.has_variables || lua_balanced_.count(p.group_key);
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
        std::string group_key; // the host part's, to match an upstream{} name
    };

    bool in_upstream() const
    {
        return !blocks_.empty() && blocks_.back().size() >= 2 && blocks_.back()[0].text == "upstream";
    }

    // Nginx matches upstream{} names ignoring case, http's apart from
    // stream's (the outermost block).
    std::string group_key(const std::string &name) const
    {
        std::string key = blocks_.empty() || blocks_[0].empty() ? "" : blocks_[0][0].text;
        key += ' ';
        for (char c : name)
            key += static_cast<char>(tolower(static_cast<unsigned char>(c)));
        return key;
    }

    void statement(const std::vector<ConfToken> &w, const std::string &path, int depth)
    {
        if (w.empty())
            return;
        const std::string &name = w[0].text;
        if (name == "include" && w.size() == 2) {
            for (const auto &f : expand_include(root_, dirname_of(main_), w[1].text, &conf_.problems))
                file(f, depth + 1);
            return;
        }
        if (in_upstream() && name == "server" && w.size() >= 2) {
            ConfUpstream u;
            u.directive = "server";
            u.group = blocks_.back()[1].text;
            u.file = path;
            u.line = w[0].line;
            u.address = normalise(w[1].text, "", &u.has_variables);
            groups_[group_key(u.group)].push_back(u);
            return;
        }
        if (in_upstream() && name == "balancer_by_lua_file") {
            lua_balanced_.insert(group_key(blocks_.back()[1].text));
            return;
        }
        if ((name == "error_log" || name == "access_log") && w.size() >= 2 && w[1].text != "off" &&
            w[1].text.find('$') == std::string::npos) {
            conf_.logs.push_back({name == "error_log", w[1].text, path, w[0].line});
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
                std::string host;
                ps.up.address = normalise(w[1].text, name, &ps.up.has_variables, &host);
                ps.group_key = group_key(host);
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
    std::map<std::string, std::vector<ConfUpstream>> groups_; // by group_key
    std::set<std::string> lua_balanced_;                       // groups with a balancer_by_lua_*
    std::vector<Pass> passes_;

public:
    void set_main(const std::string &m) { main_ = m; }
};

// The body of a *_by_lua_block is Lua, not Nginx's syntax: from s[i], just
// after its '{', to its closing '}' (the index returned, n when there is
// none), braces counted outside Lua's strings ('...', "...", [[...]],
// [==[...]==]) and comments (-- to the line's end, --[[...]]).
size_t skip_lua_block(const std::string &s, size_t i, int &line)
{
    size_t n = s.size();
    // The length of a long bracket "[[" or "[==[" opening at `at`, 0 if none.
    auto long_bracket = [&](size_t at) -> size_t {
        if (at >= n || s[at] != '[')
            return 0;
        size_t k = at + 1;
        while (k < n && s[k] == '=')
            k++;
        return k < n && s[k] == '[' ? k + 1 - at : 0;
    };
    auto skip_to = [&](size_t end) {
        line += static_cast<int>(std::count(s.data() + i, s.data() + end, '\n'));
        i = end;
    };
    int depth = 1;
    while (i < n) {
        char c = s[i];
        bool comment = c == '-' && i + 1 < n && s[i + 1] == '-';
        size_t from = comment ? i + 2 : i;
        if (size_t open = long_bracket(from)) {
            std::string close = "]" + std::string(open - 2, '=') + "]";
            size_t end = s.find(close, from + open);
            skip_to(end == std::string::npos ? n : end + close.size());
        } else if (comment) {
            size_t end = s.find('\n', i);
            skip_to(end == std::string::npos ? n : end);
        } else if (c == '\'' || c == '"') {
            size_t end = i + 1;
            while (end < n && s[end] != c)
                end += s[end] == '\\' ? 2 : 1;
            skip_to(std::min(end + 1, n));
        } else if (c == '{' || c == '}') {
            depth += c == '{' ? 1 : -1;
            if (depth == 0)
                return i;
            i++;
        } else {
            skip_to(i + 1);
        }
    }
    return n;
}

} // namespace

std::vector<ConfToken> tokenize_nginx_conf(const std::string &s)
{
    std::vector<ConfToken> out;
    int line = 1;
    size_t i = 0, n = s.size();
    size_t directive = 0; // the index of the statement's first word
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
            // A *_by_lua_block's body: an empty block here.
            if (c == '{' && directive + 1 < out.size() && out[directive].text.ends_with("_by_lua_block")) {
                i = skip_lua_block(s, i, line);
                if (i < n)
                    out.push_back({"}", false, line});
                i++;
            }
            directive = out.size();
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
        // A word ends at a space, ';' or '{', but not at a '{' just after a
        // '$' (${name}); '}' does not end one (ngx_conf_read_token).
        bool variable = false;
        while (i < n && !isspace(static_cast<unsigned char>(s[i])) && s[i] != ';' && (s[i] != '{' || variable)) {
            variable = s[i] == '$';
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
    // As ngx_get_options reads them: flags may be combined (-qc), and -c,
    // -p, -g and -s take the rest of their word (-c/etc/nginx/b.conf) or
    // the next one. Words with no '-' are the title, the binary, or the
    // rest of an argument with spaces (-g "daemon off;").
    for (size_t k = 0; k < words.size(); k++) {
        const std::string &w = words[k];
        if (w[0] != '-')
            continue;
        for (size_t j = 1; j < w.size(); j++) {
            char o = w[j];
            if (o == 'c' || o == 'p' || o == 'g' || o == 's') {
                std::string value = j + 1 < w.size() ? w.substr(j + 1) : k + 1 < words.size() ? words[++k] : "";
                if (o == 'c')
                    out.conf = value;
                else if (o == 'p')
                    out.prefix = value;
                break;
            }
            if (!strchr("?hvVtTq", o))
                break; // (Nginx refuses it)
        }
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
