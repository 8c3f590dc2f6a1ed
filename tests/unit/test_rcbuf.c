/* tests/unit/test_rcbuf.c: src/core/rcbuf.c — reference-counted immutable buffer. */
#include "testutil.h"

#include "core/rcbuf.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

static void test_new_with_data(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    char src[] = "broadcast frame";
    dx_rcbuf *rb = dx_rcbuf_new(&ts.seams, src, sizeof src - 1);
    assert_non_null(rb);
    assert_int_equal(ts.calls, 1); /* header and bytes in one allocation */
    assert_int_equal(ts.live, 1);
    assert_int_equal(dx_rcbuf_len(rb), sizeof src - 1);
    assert_int_equal(dx_rcbuf_refs(rb), 1);
    /* A copy: changing the source does not change the buffer. */
    memset(src, 'X', sizeof src - 1);
    assert_memory_equal(dx_rcbuf_data(rb), "broadcast frame", sizeof src - 1);
    assert_ptr_equal(dx_rcbuf_mut(rb), dx_rcbuf_data(rb));
    dx_rcbuf_unref(rb);
    assert_int_equal(ts.live, 0);
}

static void test_new_null_is_zeroed_and_mutable(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx_rcbuf *rb = dx_rcbuf_new(&ts.seams, NULL, 4096);
    assert_non_null(rb);
    assert_int_equal(dx_rcbuf_len(rb), 4096);
    const uint8_t *d = dx_rcbuf_data(rb);
    for (size_t i = 0; i < 4096; i++)
        assert_int_equal(d[i], 0);
    uint8_t *m = dx_rcbuf_mut(rb);
    for (size_t i = 0; i < 4096; i++)
        m[i] = (uint8_t)i;
    for (size_t i = 0; i < 4096; i++)
        assert_int_equal(dx_rcbuf_data(rb)[i], (uint8_t)i);
    dx_rcbuf_unref(rb);
    assert_int_equal(ts.live, 0);
}

static void test_new_empty(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx_rcbuf *rb = dx_rcbuf_new(&ts.seams, NULL, 0);
    assert_non_null(rb);
    assert_int_equal(dx_rcbuf_len(rb), 0);
    dx_rcbuf *rb2 = dx_rcbuf_new(&ts.seams, "ignored", 0);
    assert_non_null(rb2);
    assert_int_equal(dx_rcbuf_len(rb2), 0);
    assert_int_equal(ts.live, 2);
    dx_rcbuf_unref(rb);
    dx_rcbuf_unref(rb2);
    assert_int_equal(ts.live, 0);
}

static void test_default_seams(void **state)
{
    (void)state;
    dx_rcbuf *rb = dx_rcbuf_new(NULL, "abc", 3);
    assert_non_null(rb);
    assert_memory_equal(dx_rcbuf_data(rb), "abc", 3);
    assert_ptr_equal(dx_rcbuf_ref(rb), rb);
    dx_rcbuf_unref(rb);
    dx_rcbuf_unref(rb); /* ASan reports a leak if the last unref did not free */
}

static void test_refs_counting_last_unref_frees(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx_rcbuf *rb = dx_rcbuf_new(&ts.seams, "x", 1);
    assert_non_null(rb);
    for (size_t i = 2; i <= 10; i++) {
        assert_ptr_equal(dx_rcbuf_ref(rb), rb);
        assert_int_equal(dx_rcbuf_refs(rb), i);
    }
    for (size_t i = 10; i >= 2; i--) {
        dx_rcbuf_unref(rb);
        assert_int_equal(dx_rcbuf_refs(rb), i - 1);
        assert_int_equal(ts.live, 1);
        assert_memory_equal(dx_rcbuf_data(rb), "x", 1);
    }
    dx_rcbuf_unref(rb);
    assert_int_equal(ts.live, 0);
    /* NULL is ignored. */
    dx_rcbuf_unref(NULL);
    assert_int_equal(ts.calls, 1);
}

static void test_alloc_failure(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    ts.fail_at = 1;
    assert_null(dx_rcbuf_new(&ts.seams, "abc", 3));
    assert_int_equal(ts.calls, 1);
    assert_int_equal(ts.live, 0);
    ts.fail_at = 2;
    assert_null(dx_rcbuf_new(&ts.seams, NULL, 0));
    assert_int_equal(ts.live, 0);
    /* The next allocation succeeds again. */
    dx_test_seams_init(&ts);
    ts.fail_at = 2;
    dx_rcbuf *a = dx_rcbuf_new(&ts.seams, "a", 1);
    assert_non_null(a);
    assert_null(dx_rcbuf_new(&ts.seams, "b", 1));
    assert_int_equal(ts.live, 1);
    dx_rcbuf_unref(a);
    assert_int_equal(ts.live, 0);
}

static void test_size_overflow(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    /* Header + len would wrap: refused before asking the allocator. */
    assert_null(dx_rcbuf_new(&ts.seams, NULL, SIZE_MAX));
    assert_null(dx_rcbuf_new(&ts.seams, NULL, SIZE_MAX - 1));
    assert_int_equal(ts.calls, 0);
    assert_int_equal(ts.live, 0);
}

/*
 * Threads: each owns one reference handed over by the main thread, churns
 * ref+unref on the shared buffer, then drops its own. Exactly one free must
 * happen, by whichever thread drops last, and only after every thread is done.
 */
enum { RACE_THREADS = 4, RACE_ITERS = 100000 };

typedef struct race {
    dx_seams seams;
    dx_test_seams ts;
    atomic_long frees;
    atomic_int running;
    atomic_int bad; /* set from threads; cmocka asserts only on the main thread */
    dx_rcbuf *rb;
} race;

static void *race_realloc(void *ud, void *ptr, size_t size)
{
    race *r = ud;
    if (size == 0 && ptr) {
        atomic_fetch_add(&r->frees, 1);
        /* Freed while another thread still churns on it: a use-after-free
         * ASan would also catch, reported here by name. */
        if (atomic_load(&r->running) != 0)
            atomic_fetch_add(&r->bad, 1);
    }
    return r->ts.seams.realloc(r->ts.seams.ud, ptr, size);
}

static void *race_thread(void *arg)
{
    race *r = arg;
    dx_rcbuf *rb = r->rb;
    for (int i = 0; i < RACE_ITERS; i++) {
        dx_rcbuf *mine = dx_rcbuf_ref(rb);
        if (mine != rb || dx_rcbuf_data(mine)[0] != 's')
            atomic_fetch_add(&r->bad, 1);
        dx_rcbuf_unref(mine);
    }
    atomic_fetch_sub(&r->running, 1);
    dx_rcbuf_unref(rb); /* the reference the main thread gave us */
    return NULL;
}

static void test_thread_race(void **state)
{
    (void)state;
    race r;
    memset(&r, 0, sizeof r);
    dx_test_seams_init(&r.ts);
    r.seams = r.ts.seams;
    r.seams.realloc = race_realloc;
    r.seams.ud = &r;
    atomic_init(&r.frees, 0);
    atomic_init(&r.running, RACE_THREADS);
    atomic_init(&r.bad, 0);
    r.rb = dx_rcbuf_new(&r.seams, "shared", 6);
    assert_non_null(r.rb);
    for (int i = 0; i < RACE_THREADS; i++)
        dx_rcbuf_ref(r.rb);
    dx_rcbuf_unref(r.rb); /* main's own reference: the threads hold the rest */
    assert_int_equal(dx_rcbuf_refs(r.rb), RACE_THREADS);

    pthread_t th[RACE_THREADS];
    for (int i = 0; i < RACE_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, race_thread, &r), 0);
    for (int i = 0; i < RACE_THREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);

    assert_int_equal(atomic_load(&r.bad), 0);
    assert_int_equal(atomic_load(&r.frees), 1);
    assert_int_equal(r.ts.calls, 1);
    assert_int_equal(r.ts.live, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_with_data),
        cmocka_unit_test(test_new_null_is_zeroed_and_mutable),
        cmocka_unit_test(test_new_empty),
        cmocka_unit_test(test_default_seams),
        cmocka_unit_test(test_refs_counting_last_unref_frees),
        cmocka_unit_test(test_alloc_failure),
        cmocka_unit_test(test_size_overflow),
        cmocka_unit_test(test_thread_race),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
