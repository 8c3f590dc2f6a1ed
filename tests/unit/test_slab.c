/*
 * tests/unit/test_slab.c: src/core/slab.c — fixed-size slots in pages:
 * a random alloc/free model (every slot's bytes survive the others'
 * churn, alignment, no overlap), slot reuse, empty pages returned but one,
 * several slabs interleaved (as several loops would), every allocation
 * failed once, sizes refused, and under ASan a freed slot poisoned.
 */
#include "testutil.h"

#include "core/slab.h"

#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#define T_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define T_ASAN 1
#endif
#endif
#ifdef T_ASAN
#include <sanitizer/asan_interface.h>
#endif

static void fill(void *p, size_t n, uint32_t tag)
{
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(tag * 31u + i);
}

static int intact(const void *p, size_t n, uint32_t tag)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != (uint8_t)(tag * 31u + i))
            return 0;
    return 1;
}

/* Random allocs and frees against a model of what is live: each slot keeps
 * the bytes written into it while thousands of others come and go. */
static void test_random_model(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx__slab s;
    const size_t size = 344; /* rounded to 352 */
    assert_int_equal(dx__slab_init(&s, &ts.seams, size), 0);
    assert_int_equal(s.slot, 352);
    enum { N = 6000 };
    void **live = calloc(N, sizeof *live);
    uint32_t *tag = calloc(N, sizeof *tag);
    assert_non_null(live);
    assert_non_null(tag);
    size_t nlive = 0;
    uint32_t next = 1;
    srand(7);
    for (int step = 0; step < 60000; step++) {
        int want_alloc = nlive == 0 || (nlive < N && (rand() % 100) < (step < 30000 ? 60 : 40));
        if (want_alloc) {
            void *p = dx__slab_alloc(&s);
            assert_non_null(p);
            assert_int_equal((uintptr_t)p % DX_SLAB_ALIGN, 0);
            assert_true(dx__slab_owns(&s, p));
            fill(p, size, next);
            live[nlive] = p;
            tag[nlive] = next++;
            nlive++;
        } else {
            size_t i = (size_t)rand() % nlive;
            assert_true(intact(live[i], size, tag[i]));
            dx__slab_free(&s, live[i]);
            live[i] = live[nlive - 1];
            tag[i] = tag[nlive - 1];
            nlive--;
        }
        assert_int_equal(s.live, nlive);
    }
    for (size_t i = 0; i < nlive; i++) {
        assert_true(intact(live[i], size, tag[i]));
        dx__slab_free(&s, live[i]);
    }
    assert_int_equal(s.live, 0);
    /* every page emptied went back but the one kept for the next alloc */
    assert_int_equal(s.npages, 1);
    dx__slab_deinit(&s);
    assert_int_equal(ts.live, 0);
    free(live);
    free(tag);
}

/* A freed slot is the next one handed out (its page is reused first), and
 * a full page gets room again when one of its slots is freed. */
static void test_reuse_and_full_pages(void **state)
{
    (void)state;
    dx__slab s;
    assert_int_equal(dx__slab_init(&s, NULL, 1000), 0);
    size_t per = s.per_page;
    assert_true(per >= 2);
    void **v = calloc(per * 3, sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < per * 3; i++)
        assert_non_null(v[i] = dx__slab_alloc(&s));
    assert_int_equal(s.npages, 3);
    assert_null(s.partial); /* all full */
    void *x = v[per + 5];
    dx__slab_free(&s, x);
    assert_non_null(s.partial);
    assert_ptr_equal(dx__slab_alloc(&s), x);
    assert_null(s.partial);
    /* empty the middle page: it goes back; then the others */
    for (size_t i = per; i < 2 * per; i++)
        dx__slab_free(&s, v[i]);
    assert_int_equal(s.npages, 3); /* the only page with room is kept */
    dx__slab_free(&s, v[0]);
    for (size_t i = 1; i < per; i++)
        dx__slab_free(&s, v[i]);
    assert_int_equal(s.npages, 2); /* one of the two empty pages returned */
    for (size_t i = 2 * per; i < 3 * per; i++)
        dx__slab_free(&s, v[i]);
    assert_int_equal(s.npages, 1);
    assert_int_equal(s.live, 0);
    /* a pointer that is not a slot is not ours, and freeing it is a no-op */
    int local;
    assert_false(dx__slab_owns(&s, &local));
    dx__slab_free(&s, &local);
    dx__slab_free(&s, NULL);
    dx__slab_deinit(&s);
    free(v);
}

/* Several slabs interleaved (several loops, several connection sizes):
 * each finds only its own slots. */
static void test_many_slabs(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    enum { K = 8, M = 700 };
    dx__slab s[K];
    void *v[K][M];
    for (int k = 0; k < K; k++)
        assert_int_equal(dx__slab_init(&s[k], &ts.seams, 64 + 48 * (size_t)k), 0);
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++) {
            v[k][i] = dx__slab_alloc(&s[k]);
            assert_non_null(v[k][i]);
            fill(v[k][i], 64, (uint32_t)(k * M + i));
        }
    for (int k = 0; k < K; k++)
        for (int j = 0; j < K; j++)
            assert_int_equal(dx__slab_owns(&s[j], v[k][M / 2]) != 0, j == k);
    for (int i = M - 1; i >= 0; i -= 2)
        for (int k = 0; k < K; k++) {
            assert_true(intact(v[k][i], 64, (uint32_t)(k * M + i)));
            dx__slab_free(&s[k], v[k][i]);
        }
    for (int i = 0; i < M; i += 2)
        for (int k = 0; k < K; k++)
            assert_true(intact(v[k][i], 64, (uint32_t)(k * M + i)));
    for (int k = 0; k < K; k++)
        dx__slab_deinit(&s[k]); /* live slots included */
    assert_int_equal(ts.live, 0);
}

/* Fail every allocation once (a page, the page array): NULL, no leak, and
 * the slab goes on working once memory is back. */
static void test_fail_every_allocation(void **state)
{
    (void)state;
    for (long n = 1; n <= 12; n++) {
        dx_test_seams ts;
        dx_test_seams_init(&ts);
        ts.fail_at = n;
        dx__slab s;
        assert_int_equal(dx__slab_init(&s, &ts.seams, 8000), 0);
        void *v[40];
        size_t got = 0;
        int failed = 0;
        for (int i = 0; i < 40; i++) {
            void *p = dx__slab_alloc(&s);
            if (!p) {
                failed++;
                continue;
            }
            fill(p, 8000, (uint32_t)i);
            v[got++] = p;
        }
        assert_int_equal(s.live, got);
        if (n <= ts.calls)
            assert_int_equal(failed, 1); /* the failed call, then fine again */
        for (size_t i = 0; i < got; i++)
            dx__slab_free(&s, v[i]);
        dx__slab_deinit(&s);
        assert_int_equal(ts.live, 0);
    }
}

static void test_sizes(void **state)
{
    (void)state;
    dx__slab s;
    assert_int_equal(dx__slab_init(&s, NULL, DX_SLAB_PAGE), DX_EINVAL);
    assert_int_equal(dx__slab_init(&s, NULL, DX_SLAB_PAGE / 2), DX_EINVAL);
    assert_int_equal(dx__slab_init(&s, NULL, 1), 0);
    assert_int_equal(s.slot, DX_SLAB_ALIGN);
    void *p = dx__slab_alloc(&s);
    assert_non_null(p);
    dx__slab_free(&s, p);
    dx__slab_deinit(&s);
}

/* Under ASan a free slot is poisoned (a use after free is reported), a
 * handed-out one is not. */
static void test_poisoned_when_free(void **state)
{
    (void)state;
#ifdef T_ASAN
    dx__slab s;
    assert_int_equal(dx__slab_init(&s, NULL, 200), 0);
    void *a = dx__slab_alloc(&s), *b = dx__slab_alloc(&s);
    assert_int_equal(__asan_region_is_poisoned(a, 200), 0);
    /* slots never handed out are poisoned too */
    assert_true(__asan_address_is_poisoned((char *)b + s.slot));
    dx__slab_free(&s, a);
    assert_true(__asan_address_is_poisoned(a));
    assert_true(__asan_address_is_poisoned((char *)a + 199));
    assert_int_equal(__asan_region_is_poisoned(b, 200), 0);
    void *c = dx__slab_alloc(&s);
    assert_ptr_equal(c, a);
    assert_int_equal(__asan_region_is_poisoned(c, 200), 0);
    dx__slab_free(&s, b);
    dx__slab_free(&s, c);
    dx__slab_deinit(&s);
#else
    skip(); /* checked in the ASan build (make asan) */
#endif
}

int main(void)
{
    dx_test_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_model),
        cmocka_unit_test(test_reuse_and_full_pages),
        cmocka_unit_test(test_many_slabs),
        cmocka_unit_test(test_fail_every_allocation),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_poisoned_when_free),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
