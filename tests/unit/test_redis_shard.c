/*
 * tests/unit/test_redis_shard.c: the Redis bus's server list and hash ring
 * (src/bus/redis_shard.c): topics spread over every server; the same list
 * gives the same owner in every process; a server added at the end of the
 * list takes about 1/N of the topics, all moved to it, none moved between
 * the old ones; bad lists are refused with a message naming the URL. No
 * Redis is needed: nothing connects until a worker attaches.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "bus/redis_int.h"

#include <string.h>

#define NTOPICS 20000

static rbus *bus_new(const char *urls)
{
    int err = 0;
    char why[256];
    dx__bus_redis_opts o = {.workers = 2, .url = urls};
    dx__bus *b = dx__bus_redis_new(&o, &err, why, sizeof why);
    if (!b)
        fail_msg("dx__bus_redis_new(%s): %s (%s)", urls, dx_strerror(err), why);
    return (rbus *)b;
}

static unsigned owner(rbus *b, unsigned i)
{
    char name[64];
    int n = snprintf(name, sizeof name, "room.%u", i);
    return dx__rb_server_of(b, name, (size_t)n);
}

static void test_spread_and_same_everywhere(void **state)
{
    (void)state;
    rbus *a = bus_new("redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003");
    rbus *b = bus_new("redis://127.0.0.1:7001, redis://127.0.0.1:7002 ,redis://127.0.0.1:7003");
    assert_int_equal(a->nsrv, 3);
    unsigned count[3] = {0};
    for (unsigned i = 0; i < NTOPICS; i++) {
        unsigned s = owner(a, i);
        assert_true(s < 3);
        assert_int_equal(s, owner(b, i)); /* another process, the same list: the same owner */
        count[s]++;
    }
    for (int s = 0; s < 3; s++) /* 1/3 each, within +-25% of it */
        assert_in_range(count[s], NTOPICS / 4, NTOPICS * 5 / 12);
    /* a worker's connections for a name are those of its owner */
    rshard *sh = dx__rb_shard_of(&a->w[1], "room.7", 6);
    assert_ptr_equal(sh, &a->w[1].sh[owner(a, 7)]);
    assert_ptr_equal(sh->w, &a->w[1]);
    dx__bus_free(&a->base);
    dx__bus_free(&b->base);
}

static void test_added_server_moves_one_nth(void **state)
{
    (void)state;
    rbus *three = bus_new("redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003");
    rbus *four = bus_new("redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003,"
                         "redis://127.0.0.1:7004");
    unsigned moved = 0;
    for (unsigned i = 0; i < NTOPICS; i++) {
        unsigned x = owner(three, i), y = owner(four, i);
        if (x != y) {
            assert_int_equal(y, 3); /* only to the new server */
            moved++;
        }
    }
    /* 1/4 expected: 17.5% .. 32.5% */
    assert_in_range(moved, NTOPICS * 7 / 40, NTOPICS * 13 / 40);
    print_message("a 4th server took %u of %u topics (%.1f%%)\n", moved, NTOPICS, 100.0 * moved / NTOPICS);
    dx__bus_free(&three->base);
    dx__bus_free(&four->base);
}

static void test_one_server_owns_all(void **state)
{
    (void)state;
    rbus *a = bus_new("redis://127.0.0.1:7001");
    for (unsigned i = 0; i < 1000; i++)
        assert_int_equal(owner(a, i), 0);
    dx__bus_free(&a->base);
}

static void refused(const char *urls, int want, const char *msg)
{
    int err = 0;
    char why[256] = "";
    dx__bus_redis_opts o = {.workers = 1, .url = urls};
    assert_null(dx__bus_redis_new(&o, &err, why, sizeof why));
    assert_int_equal(err, want);
    if (!strstr(why, msg))
        fail_msg("%s: expected '%s' in '%s'", urls, msg, why);
}

static void test_bad_lists(void **state)
{
    (void)state;
    refused("redis://127.0.0.1:7001,,redis://127.0.0.1:7002", DX_EINVAL, "URL 2 of the list is empty");
    refused("redis://127.0.0.1:7001,", DX_EINVAL, "URL 2 of the list is empty");
    refused("redis://127.0.0.1:7001,http://x", DX_EINVAL, "URL 2 of the list");
    refused("redis://127.0.0.1:7001,redis://127.0.0.1:7001", DX_EINVAL, "name the same server");
    refused("redis://127.0.0.1:7001,redis://nonexistent.invalid:7002", DX_EADDR, "does not resolve");
    char many[2048] = "";
    for (int i = 0; i <= DX__REDIS_SHARDS_MAX; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%sredis://127.0.0.1:%d", i ? "," : "", 7000 + i);
    refused(many, DX_EINVAL, "at most 16");
    /* another database of the same server: refused too (pub/sub channels
     * are not per database) */
    refused("redis://127.0.0.1:7001/0,redis://127.0.0.1:7001/1", DX_EINVAL, "name the same server");
    rbus *a = bus_new("redis://127.0.0.1:7001/2");
    assert_int_equal(a->nsrv, 1);
    dx__bus_free(&a->base);
    /* TLS to some servers only: each connection uses TLS as its URL says */
    rbus *t = bus_new("redis://127.0.0.1:7001,rediss://127.0.0.1:7002");
    assert_int_equal(t->nsrv, 2);
    assert_non_null(t->w[0].tls);
    assert_false(t->srv[0].url.tls);
    assert_true(t->srv[1].url.tls);
    dx__bus_free(&t->base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spread_and_same_everywhere),
        cmocka_unit_test(test_added_server_moves_one_nth),
        cmocka_unit_test(test_one_server_owns_all),
        cmocka_unit_test(test_bad_lists),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
