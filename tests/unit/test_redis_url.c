/*
 * tests/unit/test_redis_url.c: src/bus/redis.c's URL parser (redis.h:
 * redis://, rediss://, unix://) at and past each limit, and the Redis bus's
 * refusals at creation (bad URL, TLS in this build, no workers). The bus
 * itself is tested against a real redis-server in tests/gateway/test_redis.py.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "bus/redis.h"

#include <string.h>

static void ok(const char *url, dx__redis_url *u)
{
    char why[200];
    int rc = dx__redis_url_parse(url, u, why, sizeof why);
    if (rc != 0)
        fail_msg("%s: refused: %s", url, why);
}

static void bad(const char *url, const char *want)
{
    dx__redis_url u;
    char why[200] = "";
    assert_int_equal(dx__redis_url_parse(url, &u, why, sizeof why), DX_EINVAL);
    if (!strstr(why, want))
        fail_msg("%s: reason '%s' lacks '%s'", url ? url : "(null)", why, want);
}

static void test_tcp(void **state)
{
    (void)state;
    dx__redis_url u;
    ok("redis://127.0.0.1", &u);
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 0);
    assert_false(u.tls);
    assert_false(u.unix_socket);
    assert_string_equal(u.pass, "");
    ok("redis://h.example:6380/3", &u);
    assert_string_equal(u.host, "h.example");
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 3);
    ok("redis://:s%40cret@h:1/", &u);
    assert_string_equal(u.user, "");
    assert_string_equal(u.pass, "s@cret");
    assert_int_equal(u.port, 1);
    ok("redis://bob:p%3Aw@[::1]:65535/15", &u);
    assert_string_equal(u.user, "bob");
    assert_string_equal(u.pass, "p:w");
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 65535);
    assert_int_equal(u.db, 15);
    ok("redis://pw@h", &u); /* no colon: a password alone */
    assert_string_equal(u.pass, "pw");
    ok("rediss://h:6380", &u);
    assert_true(u.tls);
}

static void test_unix(void **state)
{
    (void)state;
    dx__redis_url u;
    ok("unix:///run/redis/redis.sock", &u);
    assert_true(u.unix_socket);
    assert_string_equal(u.path, "/run/redis/redis.sock");
    ok("unix:///tmp/r.sock?db=2", &u);
    assert_int_equal(u.db, 2);
    /* the path at the limit (107 bytes + NUL) and one past */
    char url[200] = "unix:///";
    memset(url + 8, 'a', 106);
    url[8 + 106] = 0;
    ok(url, &u);
    assert_int_equal(strlen(u.path), 107);
    url[8 + 106] = 'a';
    url[8 + 107] = 0;
    bad(url, "too long");
    bad("unix://relative", "absolute path");
    ok("unix:///tmp/r.sock?password=a%20b&db=4&user=u", &u);
    assert_string_equal(u.pass, "a b");
    assert_string_equal(u.user, "u");
    assert_int_equal(u.db, 4);
    bad("unix:///x?database=1", "?db=N");
    bad("unix:///x?db=", "?db=N");
}

static void test_bad(void **state)
{
    (void)state;
    bad(NULL, "no Redis URL");
    bad("", "must start with");
    bad("http://h", "must start with");
    bad("redis://", "host");
    bad("redis://h:", "bad port");
    bad("redis://h:0", "bad port");
    bad("redis://h:65536", "bad port");
    bad("redis://h:12x", "bad port");
    bad("redis://h/x", "database number");
    bad("redis://h/1/2", "database number");
    bad("redis://[::1", "unterminated");
    bad("redis://u:%zz@h", "badly encoded");
    bad("redis://u:%4@h", "badly encoded");
    char url[400] = "redis://";
    memset(url + 8, 'h', 255);
    url[8 + 255] = 0;
    dx__redis_url u;
    ok(url, &u); /* 255 bytes of host: the limit */
    url[8 + 255] = 'h';
    url[8 + 256] = 0;
    bad(url, "host");
}

static void test_bus_refusals(void **state)
{
    (void)state;
    char why[300];
    int err = 0;
    /* rediss://: made (the system CA store), never attached */
    dx__bus_redis_opts o = {.workers = 1, .url = "rediss://127.0.0.1:6380"};
    dx__bus *tb = dx__bus_redis_new(&o, &err, why, sizeof why);
    assert_non_null(tb);
    dx__bus_free(tb);
    /* its files: unreadable CA file, a certificate without its key, TLS
     * options on a redis:// URL */
    o.tls_ca = "/nonexistent/ca.pem";
    assert_null(dx__bus_redis_new(&o, &err, why, sizeof why));
    assert_int_equal(err, DX_ETLS);
    assert_non_null(strstr(why, "CA file"));
    o.tls_ca = NULL;
    o.tls_cert = "/nonexistent/cert.pem";
    assert_null(dx__bus_redis_new(&o, &err, why, sizeof why));
    assert_int_equal(err, DX_EINVAL);
    assert_non_null(strstr(why, "go together"));
    o.tls_key = "/nonexistent/key.pem";
    assert_null(dx__bus_redis_new(&o, &err, why, sizeof why));
    assert_int_equal(err, DX_ETLS);
    assert_non_null(strstr(why, "client certificate"));
    o.url = "redis://127.0.0.1:6380";
    assert_null(dx__bus_redis_new(&o, &err, why, sizeof why));
    assert_int_equal(err, DX_EINVAL);
    assert_non_null(strstr(why, "rediss://"));
    o.tls_cert = o.tls_key = NULL;
    o.url = "redis://h:99999";
    assert_null(dx__bus_redis_new(&o, &err, why, sizeof why));
    assert_int_equal(err, DX_EINVAL);
    o.workers = 0;
    o.url = "redis://127.0.0.1";
    assert_null(dx__bus_redis_new(&o, &err, why, sizeof why));
    assert_int_equal(err, DX_EINVAL);
    /* made, never attached: not healthy, freed without a connection */
    o.workers = 2;
    dx__bus *b = dx__bus_redis_new(&o, &err, why, sizeof why);
    assert_non_null(b);
    assert_false(dx__bus_healthy(b));
    dx__bus_stats st;
    dx__bus_stats_get(b, &st);
    assert_int_equal(st.pending_bytes, 0);
    dx__bus_free(b);
}

int main(void)
{
    dx_test_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tcp),
        cmocka_unit_test(test_unix),
        cmocka_unit_test(test_bad),
        cmocka_unit_test(test_bus_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
