// The configuration a running Nginx uses, read the way `nginx -T` would
// (its -c and -p from the master's command line, the compiled-in defaults
// from its binary, includes followed), and the upstream addresses it names.
// Files are opened inside Nginx's root (containers) with open_in_root.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace n502 {

struct ConfUpstream {
    std::string address;   // "127.0.0.1:9000", "[::1]:9000", "unix:/run/php.sock", "app.internal:80"
    std::string directive; // proxy_pass, fastcgi_pass, ..., or "server" (in an upstream{} block)
    std::string group;     // the upstream{} block's name, "" when named directly
    std::string file;      // where it is written
    int line = 0;
    bool has_variables = false; // "$..." in the target, or a server of an upstream{} whose
                                // balancer_by_lua_* picks the peer: resolved per request, cannot be checked
};

// The TCP port of an upstream address as ConfUpstream::address writes it:
// 0 for a unix socket (no port), nullopt when it cannot be known from the
// text (a variable, a name with no port and no scheme default).
std::optional<uint16_t> upstream_tcp_port(const ConfUpstream &u);

// A log an error_log or access_log directive names.
struct ConfLog {
    bool error = true;  // error_log, else access_log
    std::string target; // as written: a path (relative ones are to the prefix), "stderr", "syslog:...", "memory:..."
    std::string file;   // where it is written
    int line = 0;
};

struct NginxConf {
    std::string main_file;               // as Nginx names it (inside its root)
    std::vector<std::string> files;      // every file read, includes too
    std::vector<ConfUpstream> upstreams; // in file order, one per address
    std::vector<ConfLog> logs;           // in file order; not access_log off, nor paths with variables
    std::vector<std::string> problems;   // includes that could not be read, ...
};

// Reads the configuration from `text` as if it were file `path` (for tests
// and for the real files). root: "" or the directory Nginx's paths are
// confined to; prefix: Nginx's -p (relative paths in include are relative
// to the main file's directory, as in Nginx).
NginxConf parse_nginx_conf(const std::string &root, const std::string &main_file);

// -c and -p of a running master (its /proc cmdline), with the defaults
// compiled into its binary (--conf-path, --prefix) when absent.
struct NginxPaths {
    std::string conf;   // absolute, inside its root
    std::string prefix;
};
NginxPaths nginx_paths(uint32_t master, const std::string &proc_root = "/proc");

// Tokens of Nginx's configuration syntax (for the parser and its tests):
// words (quotes removed, escapes kept as Nginx does), "{", "}", ";"; the
// Lua body of a *_by_lua_block is skipped (an empty block).
struct ConfToken {
    std::string text;
    bool quoted = false;
    int line = 0;
};
std::vector<ConfToken> tokenize_nginx_conf(const std::string &text);

} // namespace n502
