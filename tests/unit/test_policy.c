/*
 * tests/unit/test_policy.c: src/gateway/policy.c, the gateway's decisions
 * with no configuration: who may subscribe to a user: topic, and which
 * Origin a handshake may carry (GATEWAY.md "With no configuration"); a
 * token's subscribe/publish claims and anonymous publishing (auth).
 */
#define _POSIX_C_SOURCE 200809L
#include "testutil.h"

#include "gateway/gw.h"

#include <fcntl.h>
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
    dx_gateway_options o = {0};
    gw_worker k = {0};
    k.pol = gw_policy_new(&o, NULL, 0); /* open: no key source */
    assert_non_null(k.pol);
    gw_conn anon = {.k = &k}, bob = {.k = &k};
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
    gw_policy_unref(k.pol);
}

/* A token's subscribe/publish claims, and anonymous publishing once a key
 * source is configured (auth.c, policy.c). */
static void test_claims(void **state)
{
    (void)state;
    dx_gateway_options o = {0};
    o.auth.jwt_secret = "0123456789abcdef0123456789abcdef";
    gw_worker k = {0};
    char why[200] = "";
    k.pol = gw_policy_new(&o, why, sizeof why);
    assert_non_null(k.pol);
    assert_true(k.pol->jwt);
    assert_false(k.pol->anonymous);
    assert_false(k.pol->anonymous_publish);
    char *sub_pats[] = {"chat.>", "news"}, *pub_pats[] = {"chat.room1"};
    size_t sub_lens[] = {6, 4}, pub_lens[] = {10};
    dx__jwt_claims c = {.sub = "carol", .sub_len = 5, .has_subscribe = true, .n_subscribe = 2,
                        .subscribe = sub_pats, .subscribe_len = sub_lens, .has_publish = true, .n_publish = 1,
                        .publish = pub_pats, .publish_len = pub_lens};
    gw_conn carol = {.k = &k, .user = "carol", .ulen = 5, .claims = &c}, anon = {.k = &k};
    assert_int_equal(gw_policy_check(&carol, GW_ACT_SUBSCRIBE, "chat.a", 6), 0);
    assert_int_equal(gw_policy_check(&carol, GW_ACT_SUBSCRIBE, "chat.a.b", 8), 0);
    assert_int_equal(gw_policy_check(&carol, GW_ACT_SUBSCRIBE, "chat.*", 6), 0);
    assert_int_equal(gw_policy_check(&carol, GW_ACT_SUBSCRIBE, "news", 4), 0);
    assert_int_equal(gw_policy_check(&carol, GW_ACT_SUBSCRIBE, "news.x", 6), 4403);
    assert_int_equal(gw_policy_check(&carol, GW_ACT_SUBSCRIBE, ">", 1), 4403);
    assert_int_equal(gw_policy_check(&carol, GW_ACT_SUBSCRIBE, "user:carol", 10), 0); /* always its own */
    assert_int_equal(gw_policy_check(&carol, GW_ACT_SUBSCRIBE, "user:dave", 9), 4403);
    assert_int_equal(gw_policy_check(&carol, GW_ACT_PRESENCE, "prices", 6), 4403);
    assert_int_equal(gw_policy_check(&carol, GW_ACT_HISTORY, "chat.x", 6), 0);
    assert_int_equal(gw_policy_check(&carol, GW_ACT_PUBLISH, "chat.room1", 10), 0);
    assert_int_equal(gw_policy_check(&carol, GW_ACT_PUBLISH, "chat.room2", 10), 4403);
    /* no claims: no restriction; anonymous: no publishing with a key source */
    c.has_subscribe = c.has_publish = false;
    assert_int_equal(gw_policy_check(&carol, GW_ACT_SUBSCRIBE, "prices", 6), 0);
    assert_int_equal(gw_policy_check(&carol, GW_ACT_PUBLISH, "prices", 6), 0);
    assert_int_equal(gw_policy_check(&anon, GW_ACT_SUBSCRIBE, "prices", 6), 0);
    assert_int_equal(gw_policy_check(&anon, GW_ACT_PUBLISH, "prices", 6), 4403);
    /* an empty publish claim: nothing */
    c.has_publish = true;
    c.n_publish = 0;
    assert_int_equal(gw_policy_check(&carol, GW_ACT_PUBLISH, "chat.room1", 10), 4403);
    gw_policy_unref(k.pol);
    /* anonymous publish turned on explicitly; a short secret refused with a reason */
    o.auth.anonymous_publish = 1;
    k.pol = gw_policy_new(&o, why, sizeof why);
    assert_non_null(k.pol);
    assert_int_equal(gw_policy_check(&anon, GW_ACT_PUBLISH, "prices", 6), 0);
    gw_policy_unref(k.pol);
    o.auth.jwt_secret = "short";
    assert_null(gw_policy_new(&o, why, sizeof why));
    assert_non_null(strstr(why, "at least 32"));
    o.auth.jwt_secret = NULL;
    o.api_keys_file = "/nonexistent/keys";
    assert_null(gw_policy_new(&o, why, sizeof why));
    assert_non_null(strstr(why, "/nonexistent/keys"));
    /* an API key file: names, comments; a malformed line named by number, never quoting a key */
    char path[] = "/tmp/dx_test_policy_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *good = "# comment\n\nci  s3cret-ci\nbackend\ts3cret-be\n";
    assert_int_equal(write(fd, good, strlen(good)), (ssize_t)strlen(good));
    close(fd);
    o.api_keys_file = path;
    o.api_key = "k0";
    gw_policy *p = gw_policy_new(&o, why, sizeof why);
    assert_non_null(p);
    assert_int_equal(p->n_api_keys, 3);
    assert_string_equal(gw_policy_api_key(p, "s3cret-be", 9)->name, "backend");
    assert_string_equal(gw_policy_api_key(p, "k0", 2)->name, "default");
    assert_null(gw_policy_api_key(p, "s3cret-b", 8));
    gw_policy_unref(p);
    const char *bads[] = {"ci s3cret-ci extra\n", "lonely-s3cret\n", "ci s3cret-1\nci s3cret-2\n", "default s3cret\n"};
    for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++) {
        fd = open(path, O_WRONLY | O_TRUNC);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, bads[i], strlen(bads[i])), (ssize_t)strlen(bads[i]));
        close(fd);
        assert_null(gw_policy_new(&o, why, sizeof why));
        assert_non_null(strstr(why, path));
        assert_null(strstr(why, "s3cret"));
    }
    unlink(path);
}

int main(void)
{
    dx_test_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_origin),
        cmocka_unit_test(test_user_topics),
        cmocka_unit_test(test_claims),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
