// Reading a running Nginx's configuration: the tokenizer, includes, and the
// upstream addresses every *_pass and upstream{} names.
#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <string>
#include <unistd.h>

#include "nginxconf.hpp"

using namespace n502;

namespace {

struct Tree {
    std::string path;
    Tree()
    {
        char tmpl[] = "/tmp/n502-conf-XXXXXX";
        path = mkdtemp(tmpl);
    }
    ~Tree() { std::system(("rm -rf '" + path + "'").c_str()); }
    void write(const std::string &rel, const std::string &text) const
    {
        auto slash = rel.rfind('/');
        if (slash != std::string::npos)
            std::system(("mkdir -p '" + path + "/" + rel.substr(0, slash) + "'").c_str());
        std::ofstream(path + "/" + rel) << text;
    }
};

const ConfUpstream *find(const NginxConf &c, const std::string &addr)
{
    for (const auto &u : c.upstreams)
        if (u.address == addr)
            return &u;
    return nullptr;
}

} // namespace

TEST_CASE("tokenizer: quotes, escapes, comments, braces", "[nginxconf]")
{
    auto t = tokenize_nginx_conf("a \"b c\" 'd\\'e' f\\ g; # comment ; {\n x{y;}");
    REQUIRE(t.size() == 10);
    CHECK(t[0].text == "a");
    CHECK(t[1].text == "b c");
    CHECK(t[1].quoted);
    CHECK(t[2].text == "d'e");
    CHECK(t[3].text == "f g");
    CHECK(t[4].text == ";");
    CHECK(t[5].text == "x");
    CHECK(t[5].line == 2);
    CHECK(t[6].text == "{");
    CHECK(t[7].text == "y");
    CHECK(t[9].text == "}");
    // A quoted brace is a word, not a block.
    auto q = tokenize_nginx_conf("return 200 \"{\";");
    REQUIRE(q.size() == 4);
    CHECK(q[2].quoted);
}

TEST_CASE("upstreams: direct, groups, unix sockets, variables, includes", "[nginxconf]")
{
    Tree t;
    t.write("etc/nginx/nginx.conf", R"(
user www-data;
events { worker_connections 64; }
http {
    include conf.d/*.conf;
    include /etc/nginx/missing-*.conf;   # a glob that matches nothing is fine
    upstream app {
        server 127.0.0.1:9001 max_fails=1;
        server [::1]:9002;
        server unix:/run/app.sock backup;
    }
    upstream unused { server 127.0.0.1:9999; }
    server {
        location / { proxy_pass http://app; }
        location /php { fastcgi_pass unix:/run/php/php8.2-fpm.sock; }
        location /u { proxy_pass http://unix:/run/u.sock:/uri/; }
        location /v { proxy_pass http://$host:9005; }
        location /g { grpc_pass grpc://127.0.0.1:50051; }
        location /w { uwsgi_pass 127.0.0.1:3031; }
        location /h { proxy_pass https://localhost/x; }
    }
}
)");
    t.write("etc/nginx/conf.d/b.conf", "server { location / { proxy_pass http://127.0.0.1:8081/; } }\n");
    t.write("etc/nginx/conf.d/a.conf", "server { location / { proxy_pass http://127.0.0.1:8080; } }\n");
    auto c = parse_nginx_conf(t.path, "/etc/nginx/nginx.conf");
    INFO(c.problems.size());
    CHECK(c.files.size() == 3);
    CHECK(c.problems.empty());
    // Includes are read where they stand, sorted like Nginx's glob.
    REQUIRE(c.upstreams.size() >= 2);
    CHECK(c.upstreams[0].address == "127.0.0.1:8080");
    CHECK(c.upstreams[0].file == "/etc/nginx/conf.d/a.conf");
    CHECK(c.upstreams[1].address == "127.0.0.1:8081");

    auto *s1 = find(c, "127.0.0.1:9001");
    REQUIRE(s1);
    CHECK(s1->group == "app");
    CHECK(s1->directive == "server");
    CHECK(s1->line == 8);
    CHECK(find(c, "[::1]:9002"));
    CHECK(find(c, "unix:/run/app.sock"));
    CHECK_FALSE(find(c, "127.0.0.1:9999")); // no location uses it
    auto *php = find(c, "unix:/run/php/php8.2-fpm.sock");
    REQUIRE(php);
    CHECK(php->directive == "fastcgi_pass");
    CHECK(find(c, "unix:/run/u.sock"));
    CHECK(find(c, "127.0.0.1:50051"));
    CHECK(find(c, "127.0.0.1:3031"));
    CHECK(find(c, "localhost:443"));
    bool vars = false;
    for (const auto &u : c.upstreams)
        vars = vars || u.has_variables;
    CHECK(vars);
}

TEST_CASE("includes are confined to the root; unreadable ones are reported", "[nginxconf]")
{
    Tree t;
    t.write("etc/nginx/nginx.conf", "http { include /etc/nginx/x.conf; include nope.conf; }\n");
    // An absolute symlink resolves inside the root, not on the host.
    REQUIRE(symlink("/etc/nginx/real.conf", (t.path + "/etc/nginx/x.conf").c_str()) == 0);
    t.write("etc/nginx/real.conf", "server { location / { proxy_pass http://127.0.0.1:7000; } }\n");
    auto c = parse_nginx_conf(t.path, "/etc/nginx/nginx.conf");
    CHECK(find(c, "127.0.0.1:7000"));
    REQUIRE(c.problems.size() == 1);
    CHECK(c.problems[0].find("nope.conf") != std::string::npos);
    // A missing main file: nothing read, said why.
    auto none = parse_nginx_conf(t.path, "/etc/nginx/absent.conf");
    CHECK(none.files.empty());
    CHECK_FALSE(none.problems.empty());
}

TEST_CASE("include loops stop at the nesting limit", "[nginxconf]")
{
    Tree t;
    t.write("etc/nginx/nginx.conf", "include /etc/nginx/nginx.conf;\n");
    auto c = parse_nginx_conf(t.path, "/etc/nginx/nginx.conf");
    CHECK(c.files.size() <= 17);
    CHECK_FALSE(c.problems.empty());
}

TEST_CASE("the TCP port adaptive tracking watches for an upstream", "[nginxconf][adaptive]")
{
    auto port = [](const std::string &address, bool vars = false) {
        ConfUpstream u;
        u.address = address;
        u.has_variables = vars;
        return upstream_tcp_port(u);
    };
    CHECK(port("127.0.0.1:9000") == std::optional<uint16_t>(9000));
    CHECK(port("[::1]:8080") == std::optional<uint16_t>(8080));
    CHECK(port("app.internal:80") == std::optional<uint16_t>(80));
    CHECK(port("unix:/run/php.sock") == std::optional<uint16_t>(0)); // no port to watch
    // Not knowable from the text: every port is watched.
    CHECK_FALSE(port("127.0.0.1:9000", true));
    CHECK_FALSE(port("backend"));
    CHECK_FALSE(port(""));
    CHECK_FALSE(port("[::1]"));
    CHECK_FALSE(port("127.0.0.1:0"));
    CHECK_FALSE(port("127.0.0.1:65536"));
    CHECK_FALSE(port("127.0.0.1:80x"));
}

TEST_CASE("${name} is part of its word, as in Nginx", "[nginxconf]")
{
    auto t = tokenize_nginx_conf("proxy_pass http://${svc}.prod:8080; set $a ${b}c;");
    REQUIRE(t.size() == 7);
    CHECK(t[1].text == "http://${svc}.prod:8080");
    CHECK(t[5].text == "${b}c");

    Tree tr;
    tr.write("etc/nginx/nginx.conf", R"(
http {
    upstream app { server 127.0.0.1:9001; }
    server {
        location / { set $svc api; proxy_pass http://${svc}.prod.svc.cluster.local:8080; }
        location /b { proxy_pass http://127.0.0.1:8081; }
    }
    upstream after { server 127.0.0.1:9002; }
    server { location / { proxy_pass http://after; } }
}
)");
    auto c = parse_nginx_conf(tr.path, "/etc/nginx/nginx.conf");
    CHECK(c.problems.empty());
    auto *v = find(c, "${svc}.prod.svc.cluster.local:8080");
    REQUIRE(v);
    CHECK(v->has_variables); // every port is watched
    CHECK_FALSE(upstream_tcp_port(*v));
    auto *b = find(c, "127.0.0.1:8081");
    REQUIRE(b);
    CHECK(b->line == 6);
    auto *after = find(c, "127.0.0.1:9002");
    REQUIRE(after);
    CHECK(after->group == "after");
}

TEST_CASE("*_by_lua_block bodies are Lua; a Lua balancer's servers are placeholders", "[nginxconf]")
{
    auto k = tokenize_nginx_conf("content_by_lua_block { ngx.say('{\"status\":\"ok\"}') }\nx;");
    REQUIRE(k.size() == 5);
    CHECK(k[1].text == "{");
    CHECK(k[2].text == "}");
    CHECK(k[3].text == "x");
    CHECK(k[3].line == 2);

    Tree t;
    t.write("etc/nginx/nginx.conf", R"(
http {
    server {
        location /health { content_by_lua_block { ngx.say('{"status":"ok"}') } }
        location / { proxy_pass http://127.0.0.1:8080; }
        location /lua {
            access_by_lua_block {
                local s = "}\"" .. [[ say "hi ]] .. [==[ ]] } ]==] -- a " and a }
                --[[ a } long
                comment } ]] local t = { n = #s }
                if t.n == 0 then ngx.exit(403) end
            }
            proxy_pass http://127.0.0.1:8082;
        }
        location /dyn { proxy_pass http://dyn; }
    }
    upstream dyn {
        balancer_by_lua_block {
            local peer = [[10.0.0.5 } ]]
            require("ngx.balancer").set_current_peer(peer, 7000)
        }
        server 127.0.0.1:1;
    }
    upstream dynfile {
        server 127.0.0.1:2;
        balancer_by_lua_file /etc/nginx/balancer.lua;
    }
    server { location / { proxy_pass http://dynfile; } }
}
)");
    auto c = parse_nginx_conf(t.path, "/etc/nginx/nginx.conf");
    CHECK(c.problems.empty());
    auto *a = find(c, "127.0.0.1:8080");
    REQUIRE(a);
    CHECK(a->line == 5);
    auto *b = find(c, "127.0.0.1:8082");
    REQUIRE(b);
    CHECK(b->line == 13);
    // The peer is picked at run time: the port cannot be known (every port
    // is watched), nor the server checked.
    for (const char *addr : {"127.0.0.1:1", "127.0.0.1:2"}) {
        INFO(addr);
        auto *d = find(c, addr);
        REQUIRE(d);
        CHECK(d->has_variables);
        CHECK_FALSE(upstream_tcp_port(*d));
    }
    CHECK(find(c, "127.0.0.1:1")->group == "dyn");
}

TEST_CASE("include globs every component, inside the root; unreadable directories are reported", "[nginxconf]")
{
    Tree t;
    t.write("etc/nginx/nginx.conf", "http { include vhosts/*/site.conf; include /etc/nginx/loop/*.conf; }\n");
    t.write("etc/nginx/vhosts/a/site.conf", "server { location / { proxy_pass http://127.0.0.1:7001; } }\n");
    t.write("etc/nginx/vhosts/c/other.conf", "server { location / { proxy_pass http://127.0.0.1:7009; } }\n");
    t.write("srv/b/site.conf", "server { location / { proxy_pass http://127.0.0.1:7002; } }\n");
    // An absolute symlink resolves inside the root; a loop cannot be read.
    REQUIRE(symlink("/srv/b", (t.path + "/etc/nginx/vhosts/b").c_str()) == 0);
    REQUIRE(symlink("loop", (t.path + "/etc/nginx/loop").c_str()) == 0);
    auto c = parse_nginx_conf(t.path, "/etc/nginx/nginx.conf");
    REQUIRE(c.files.size() == 3);
    CHECK(c.files[1] == "/etc/nginx/vhosts/a/site.conf");
    CHECK(c.files[2] == "/etc/nginx/vhosts/b/site.conf");
    CHECK(find(c, "127.0.0.1:7001"));
    CHECK(find(c, "127.0.0.1:7002"));
    CHECK_FALSE(find(c, "127.0.0.1:7009"));
    REQUIRE(c.problems.size() == 1);
    CHECK(c.problems[0].find("/etc/nginx/loop") != std::string::npos);
}

TEST_CASE("a file over the size limit is a problem", "[nginxconf]")
{
    Tree t;
    t.write("etc/nginx/nginx.conf", "http { server { location / { proxy_pass http://127.0.0.1:7100; } } }\n# " +
                                        std::string(9 << 20, 'x') + "\n");
    auto c = parse_nginx_conf(t.path, "/etc/nginx/nginx.conf");
    CHECK(find(c, "127.0.0.1:7100")); // its beginning is read
    REQUIRE(c.problems.size() == 1);
    CHECK(c.problems[0].find("/etc/nginx/nginx.conf") != std::string::npos);
}

TEST_CASE("upstream names: any case, http's apart from stream's", "[nginxconf]")
{
    Tree t;
    t.write("etc/nginx/nginx.conf", R"(
http {
    upstream Backend { server 127.0.0.1:9101; }
    server {
        location / { proxy_pass http://backend; }
        location /app { proxy_pass http://app; }
    }
}
stream {
    upstream app { server 127.0.0.1:9201; }
    upstream tcp { server 127.0.0.1:9202; }
    server { listen 12345; proxy_pass TCP; }
}
)");
    auto c = parse_nginx_conf(t.path, "/etc/nginx/nginx.conf");
    auto *b = find(c, "127.0.0.1:9101");
    REQUIRE(b);
    CHECK(b->group == "Backend");
    CHECK_FALSE(find(c, "backend:80"));
    // http's "app" is a host name: stream's group is not used.
    CHECK(find(c, "app:80"));
    CHECK_FALSE(find(c, "127.0.0.1:9201"));
    auto *tcp = find(c, "127.0.0.1:9202");
    REQUIRE(tcp);
    CHECK(tcp->group == "tcp");
}

TEST_CASE("-c and -p as Nginx reads its command line", "[nginxconf]")
{
    Tree t;
    auto paths = [&](const std::string &title) {
        t.write("proc/4242/stat", "4242 (nginx) S 1 4242 4242 0 -1\n");
        t.write("proc/4242/cmdline", title);
        return nginx_paths(4242, t.path + "/proc");
    };
    auto p = paths("nginx: master process /usr/sbin/nginx -p/srv/www -c/etc/nginx/b.conf");
    CHECK(p.prefix == "/srv/www/");
    CHECK(p.conf == "/etc/nginx/b.conf");
    p = paths("nginx: master process nginx -g daemon off; -qc conf/c.conf -p /srv");
    CHECK(p.prefix == "/srv/");
    CHECK(p.conf == "/srv/conf/c.conf");
    // -g takes the next word (its argument), even one that looks like -c.
    p = paths("nginx: master process nginx -p /srv/ -g -c -c d.conf");
    CHECK(p.conf == "/srv/d.conf");
    p = paths("nginx: master process nginx -c /etc/e.conf -p /srv");
    CHECK(p.conf == "/etc/e.conf");
}

TEST_CASE("the logs error_log and access_log name, at every level", "[nginxconf]")
{
    Tree t;
    t.write("nginx.conf", "error_log logs/main.err warn;\n"
                          "http {\n"
                          "  access_log /var/log/nginx/site.log combined buffer=32k;\n"
                          "  server { error_log syslog:server=unix:/dev/log; access_log off;\n"
                          "    location /a { error_log /var/log/nginx/a.err; access_log /var/log/$host.log; }\n"
                          "    location /b { error_log stderr; error_log memory:32m debug; }\n"
                          "  }\n"
                          "}\n");
    auto c = parse_nginx_conf("", t.path + "/nginx.conf");
    std::vector<std::string> got;
    for (const auto &l : c.logs)
        got.push_back(std::string(l.error ? "error " : "access ") + l.target + " @" + std::to_string(l.line));
    CHECK(got == std::vector<std::string>{"error logs/main.err @1", "access /var/log/nginx/site.log @3",
                                          "error syslog:server=unix:/dev/log @4", "error /var/log/nginx/a.err @5",
                                          "error stderr @6", "error memory:32m @6"});
    CHECK(c.logs[0].file == t.path + "/nginx.conf");
}
