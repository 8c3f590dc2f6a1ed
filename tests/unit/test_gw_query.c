/*
 * tests/unit/test_gw_query.c: the gateway's query-string helpers
 * (src/gateway/gateway.c: gw_query_get, gw_pct_decode), which read every
 * ?subscribe=, ?publish=, ?since=, ?topic= a peer sends.
 */
#include "testutil.h"

#include "gateway/gw.h"

#include <string.h>

static bool get(const char *q, const char *key, char *out, size_t cap)
{
    const char *v;
    size_t n;
    if (!gw_query_get(q, q ? strlen(q) : 0, key, &v, &n))
        return false;
    snprintf(out, cap, "%.*s", (int)n, v);
    return true;
}

static void test_query_get(void **state)
{
    (void)state;
    char v[64];
    assert_true(get("subscribe=a,b&publish=c", "subscribe", v, sizeof v));
    assert_string_equal(v, "a,b");
    assert_true(get("subscribe=a,b&publish=c", "publish", v, sizeof v));
    assert_string_equal(v, "c");
    assert_false(get("subscribe=a,b&publish=c", "since", v, sizeof v));
    /* a key is a whole name: no prefix or suffix match */
    assert_false(get("subscriber=x", "subscribe", v, sizeof v));
    assert_false(get("xsubscribe=x", "subscribe", v, sizeof v));
    /* present without '=' or empty: an empty value; the first one wins */
    assert_true(get("a&b=1", "a", v, sizeof v));
    assert_string_equal(v, "");
    assert_true(get("a=&b=1", "a", v, sizeof v));
    assert_string_equal(v, "");
    assert_true(get("a=1&a=2", "a", v, sizeof v));
    assert_string_equal(v, "1");
    assert_true(get("&&a=1&", "a", v, sizeof v));
    assert_string_equal(v, "1");
    assert_false(get(NULL, "a", v, sizeof v));
    assert_false(get("", "a", v, sizeof v));
}

static void test_pct_decode(void **state)
{
    (void)state;
    char out[16];
    assert_int_equal(gw_pct_decode("user%3Abob", 10, out, sizeof out), 8);
    assert_string_equal(out, "user:bob");
    assert_int_equal(gw_pct_decode("a%2fb+c", 7, out, sizeof out), 5);
    assert_string_equal(out, "a/b c");
    assert_int_equal(gw_pct_decode("", 0, out, sizeof out), 0);
    assert_string_equal(out, "");
    /* truncated or bad escapes, and output that does not fit, are refused */
    assert_int_equal(gw_pct_decode("a%2", 3, out, sizeof out), -1);
    assert_int_equal(gw_pct_decode("a%", 2, out, sizeof out), -1);
    assert_int_equal(gw_pct_decode("%zz", 3, out, sizeof out), -1);
    assert_int_equal(gw_pct_decode("0123456789abcdef", 16, out, sizeof out), -1); /* 16 + NUL > 16 */
    assert_int_equal(gw_pct_decode("0123456789abcde", 15, out, sizeof out), 15);
    /* %00 decodes (a NUL is then refused by the topic rules, not here) */
    assert_int_equal(gw_pct_decode("a%00b", 5, out, sizeof out), 3);
    assert_memory_equal(out, "a\0b", 3);
}

int main(void)
{
    dx_test_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_get),
        cmocka_unit_test(test_pct_decode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
