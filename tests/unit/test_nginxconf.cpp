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
