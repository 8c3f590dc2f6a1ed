/* tests/unit/test_seams.c: src/core/seams.c — default seams, the dx__ helpers, the test seams. */
#define _POSIX_C_SOURCE 200809L
#include "testutil.h"

#include "core/seams.h"

#include <string.h>
#include <time.h>

static int all_zero(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i])
            return 0;
    return 1;
}

static void test_default_is_complete(void **state)
{
    (void)state;
    const dx_seams *s = dx_seams_default();
    assert_non_null(s);
    assert_ptr_equal(dx_seams_default(), s);
    assert_non_null(s->realloc);
    assert_non_null(s->random);
    assert_non_null(s->now_ns);
    assert_ptr_equal(dx__seams(NULL), s);
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    assert_ptr_equal(dx__seams(&ts.seams), &ts.seams);
}

static void test_default_random(void **state)
{
    (void)state;
    uint8_t a[64], b[64];
    memset(a, 0, sizeof a);
    memset(b, 0, sizeof b);
    assert_int_equal(dx__random(NULL, a, sizeof a), 0);
    assert_int_equal(dx__random(NULL, b, sizeof b), 0);
    /* 2^-512 chance of a false failure each. */
    assert_false(all_zero(a, sizeof a));
    assert_false(all_zero(b, sizeof b));
    assert_memory_not_equal(a, b, sizeof a);
    /* Through the struct directly, a large request (getrandom may return
     * short reads above 256 bytes; the seam must loop). */
    static uint8_t big[100000];
    const dx_seams *s = dx_seams_default();
    assert_int_equal(s->random(s->ud, big, sizeof big), 0);
    assert_false(all_zero(big + sizeof big - 64, 64));
    /* Zero length is fine. */
    assert_int_equal(dx__random(NULL, a, 0), 0);
}

static void test_default_clock_monotonic(void **state)
{
    (void)state;
    uint64_t prev = dx__now_ns(NULL);
    assert_true(prev > 0);
    for (int i = 0; i < 100000; i++) {
        uint64_t now = dx__now_ns(NULL);
        assert_true(now >= prev);
        prev = now;
    }
    /* It advances with real time: 2 ms of sleep is at least 2 ms. */
    uint64_t t0 = dx__now_ns(NULL);
    struct timespec d = {0, 2000000};
    while (nanosleep(&d, &d) != 0) {
    }
    uint64_t t1 = dx__now_ns(NULL);
    assert_true(t1 - t0 >= 2000000u);
    /* And agrees with CLOCK_MONOTONIC in nanoseconds (not µs or ms). */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t mono = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    uint64_t t2 = dx__now_ns(NULL);
    assert_true(t2 >= mono && t2 - mono < 1000000000u);
}

static void test_default_realloc(void **state)
{
    (void)state;
    const dx_seams *s = dx_seams_default();
    uint8_t *p = s->realloc(s->ud, NULL, 16);
    assert_non_null(p);
    for (int i = 0; i < 16; i++)
        p[i] = (uint8_t)i;
    p = s->realloc(s->ud, p, 100000); /* grows, keeps the contents */
    assert_non_null(p);
    for (int i = 0; i < 16; i++)
        assert_int_equal(p[i], i);
    p[99999] = 1;
    p = s->realloc(s->ud, p, 4); /* shrinks */
    assert_non_null(p);
    assert_int_equal(p[3], 3);
    /* Size 0 frees and returns NULL (ASan reports the leak otherwise). */
    assert_null(s->realloc(s->ud, p, 0));
    /* Size 0 on NULL: nothing to free, NULL. */
    assert_null(s->realloc(s->ud, NULL, 0));
}

static void test_alloc_helpers(void **state)
{
    (void)state;
    /* dx__alloc(0) gives a usable (one-byte) block, never NULL-as-success. */
    uint8_t *p = dx__alloc(NULL, 0);
    assert_non_null(p);
    p[0] = 0x5A;
    assert_int_equal(p[0], 0x5A);
    dx__free(NULL, p);
    dx__free(NULL, NULL); /* no-op */

    uint8_t *q = dx__alloc(NULL, 32);
    assert_non_null(q);
    memset(q, 7, 32);
    q = dx__realloc(NULL, q, 64);
    assert_non_null(q);
    assert_int_equal(q[31], 7);
    dx__free(NULL, q);

    /* Through test seams: each helper goes through the seam, and is counted. */
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    p = dx__alloc(&ts.seams, 0);
    assert_non_null(p);
    assert_int_equal(ts.calls, 1);
    assert_int_equal(ts.live, 1);
    p = dx__realloc(&ts.seams, p, 10);
    assert_non_null(p);
    assert_int_equal(ts.calls, 2);
    assert_int_equal(ts.live, 1);
    dx__free(&ts.seams, p);
    assert_int_equal(ts.live, 0);
    dx__free(&ts.seams, NULL); /* does not reach the seam */
    assert_int_equal(ts.live, 0);
    assert_int_equal(ts.calls, 2);
}

static void test_test_seams_fail_at(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    ts.fail_at = 3;
    void *a = dx__alloc(&ts.seams, 8);
    void *b = dx__alloc(&ts.seams, 8);
    assert_non_null(a);
    assert_non_null(b);
    /* Third call fails, even as a realloc: the old block stays valid. */
    assert_null(dx__realloc(&ts.seams, a, 64));
    assert_int_equal(ts.calls, 3);
    assert_int_equal(ts.live, 2);
    void *c = dx__alloc(&ts.seams, 8); /* fourth call works again */
    assert_non_null(c);
    assert_int_equal(ts.live, 3);
    dx__free(&ts.seams, a);
    dx__free(&ts.seams, b);
    dx__free(&ts.seams, c);
    assert_int_equal(ts.live, 0);
    assert_int_equal(ts.calls, 4); /* frees are not counted as calls */
}

static void test_test_seams_deterministic(void **state)
{
    (void)state;
    dx_test_seams a, b;
    dx_test_seams_init(&a);
    dx_test_seams_init(&b);
    uint8_t x[256], y[256];
    assert_int_equal(dx__random(&a.seams, x, sizeof x), 0);
    assert_int_equal(dx__random(&b.seams, y, sizeof y), 0);
    assert_memory_equal(x, y, sizeof x); /* same seed, same bytes */
    assert_false(all_zero(x, sizeof x));
    /* The stream continues rather than repeating. */
    uint8_t x2[256];
    assert_int_equal(dx__random(&a.seams, x2, sizeof x2), 0);
    assert_memory_not_equal(x, x2, sizeof x);
    /* Split requests give the same stream as one request. */
    dx_test_seams_init(&b);
    assert_int_equal(dx__random(&b.seams, y, 100), 0);
    assert_int_equal(dx__random(&b.seams, y + 100, 156), 0);
    assert_memory_equal(x, y, sizeof x);
    /* Another seed, other bytes; the same other seed, the same bytes. */
    dx_test_seams_init(&a);
    dx_test_seams_init(&b);
    a.rng = b.rng = 0x9E3779B97F4A7C15u;
    assert_int_equal(dx__random(&a.seams, x2, sizeof x2), 0);
    assert_int_equal(dx__random(&b.seams, y, sizeof y), 0);
    assert_memory_equal(x2, y, sizeof y);
    assert_memory_not_equal(x, x2, sizeof x);
}

static void test_test_seams_clock(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    assert_int_equal(dx__now_ns(&ts.seams), 0);
    assert_int_equal(dx__now_ns(&ts.seams), 0); /* time stands still */
    ts.now = 5000000000u;
    assert_int_equal(dx__now_ns(&ts.seams), 5000000000u);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_is_complete),
        cmocka_unit_test(test_default_random),
        cmocka_unit_test(test_default_clock_monotonic),
        cmocka_unit_test(test_default_realloc),
        cmocka_unit_test(test_alloc_helpers),
        cmocka_unit_test(test_test_seams_fail_at),
        cmocka_unit_test(test_test_seams_deterministic),
        cmocka_unit_test(test_test_seams_clock),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
