/*
 * tests/unit/test_policy.c: src/gateway/policy.c, the gateway's decisions
 * with no configuration: who may subscribe to a user: topic, and which
 * Origin a handshake may carry (GATEWAY.md "With no configuration").
 */
#include "testutil.h"

#include "gateway/gw.h"

#include <string.h>

static bool origin_ok(const char *origin, const char *host)
{
    return gw_policy_origin(origin, origin ? strlen(origin) : 0, host, host ? strlen(host) : 0);
}

static void test_origin(void **state)
{
    (void)state;
    /* no Origin: not a browser, accepted */
    assert_true(origin_ok(NULL, "example.com"));
    assert_true(origin_ok(NULL, NULL));
    /* the same host and port, any scheme, any case, a trailing slash */
    assert_true(origin_ok("http://127.0.0.1:8080", "127.0.0.1:8080"));
    assert_true(origin_ok("https://Example.COM", "example.com"));
    assert_true(origin_ok("http://[::1]:9000", "[::1]:9000"));
    assert_true(origin_ok("http://a.example/", "a.example"));
    /* default ports spelled on one side only */
    assert_true(origin_ok("http://a.example", "a.example:80"));
    assert_true(origin_ok("http://a.example:80", "a.example"));
    assert_true(origin_ok("https://a.example", "a.example:443"));
    assert_true(origin_ok("https://a.example:443", "a.example"));
    /* anything else is another origin */
    assert_false(origin_ok("http://evil.example", "a.example"));
    assert_false(origin_ok("http://a.example:8080", "a.example"));
    assert_false(origin_ok("http://a.example", "a.example:443"));
    assert_false(origin_ok("https://a.example", "a.example:80"));
    assert_false(origin_ok("http://a.example.evil", "a.example"));
    assert_false(origin_ok("http://a.exampl", "a.example"));
    assert_false(origin_ok("null", "a.example"));
    assert_false(origin_ok("a.example", "a.example"));
    assert_false(origin_ok("http:/a.example", "a.example"));
    assert_false(origin_ok("http://a.example", NULL));
    assert_false(origin_ok("http://a.example", ""));
    assert_false(origin_ok("", "a.example"));
}

static void test_user_topics(void **state)
{
    (void)state;
    gw_conn anon = {0}, bob = {0};
    bob.user = "bob";
    bob.ulen = 3;
    assert_int_equal(gw_policy_check(&anon, GW_ACT_SUBSCRIBE, "user:bob", 8), 4403);
    assert_int_equal(gw_policy_check(&bob, GW_ACT_SUBSCRIBE, "user:bob", 8), 0);
    assert_int_equal(gw_policy_check(&bob, GW_ACT_SUBSCRIBE, "user:bo", 7), 4403);
    assert_int_equal(gw_policy_check(&bob, GW_ACT_SUBSCRIBE, "user:bobby", 10), 4403);
    assert_int_equal(gw_policy_check(&anon, GW_ACT_SUBSCRIBE, "chat.x", 6), 0);
    assert_int_equal(gw_policy_check(&anon, GW_ACT_SUBSCRIBE, "User:bob", 8), 0); /* an ordinary topic */
    /* publishing to a user's topic is allowed (backends notify users) */
    assert_int_equal(gw_policy_check(&anon, GW_ACT_PUBLISH, "user:bob", 8), 0);
}

int main(void)
{
    dx_test_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_origin),
        cmocka_unit_test(test_user_topics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
