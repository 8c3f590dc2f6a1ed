/* tests/unit/test_buf.c: src/core/buf.c — growable byte buffer with a read cursor. */
#include "testutil.h"

#include "core/buf.h"

#include <stdlib.h>
#include <string.h>

/*
 * A spy allocator over dx_test_seams: records the largest size ever asked
 * for, and refuses (NULL, like realloc(3)) anything above `limit`, so the
 * overflow tests never ask the real heap (or ASan) for SIZE_MAX bytes.
 */
typedef struct spy {
    dx_seams seams;
    dx_test_seams ts;
    size_t max_req;
    size_t limit;
} spy;

static void *spy_realloc(void *ud, void *ptr, size_t size)
{
    spy *s = ud;
    if (size > s->max_req)
        s->max_req = size;
    if (size > s->limit)
        return NULL;
    return s->ts.seams.realloc(s->ts.seams.ud, ptr, size);
}

static void spy_init(spy *s)
{
    memset(s, 0, sizeof *s);
    dx_test_seams_init(&s->ts);
    s->seams = s->ts.seams;
    s->seams.realloc = spy_realloc;
    s->seams.ud = s;
    s->limit = (size_t)1 << 28;
}

/* Byte i of a test stream: a pattern that catches reordering and offsets. */
static uint8_t pat(size_t i) { return (uint8_t)(i * 131u + (i >> 8) * 7u + 1u); }

static void fill_pat(uint8_t *p, size_t from, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = pat(from + i);
}

static void assert_buf_pat(const dx_buf *b, size_t from, size_t n)
{
    assert_int_equal(b->len, n);
    const uint8_t *h = dx_buf_head(b);
    for (size_t i = 0; i < n; i++) {
        if (h[i] != pat(from + i))
            fail_msg("byte %zu: got %u want %u", i, h[i], pat(from + i));
    }
}

static void assert_invariants(const dx_buf *b)
{
    assert_true(b->off + b->len <= b->cap);
    assert_true((b->data == NULL) == (b->cap == 0));
}

static void test_init_empty(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx_buf b;
    memset(&b, 0xA5, sizeof b);
    dx_buf_init(&b, &ts.seams);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.off, 0);
    assert_int_equal(b.cap, 0);
    assert_ptr_equal(b.seams, &ts.seams);
    /* An empty, never-grown buffer: head and tail are callable (NULL, not
     * NULL + 0, which UBSan rejects), length 0. */
    assert_null(dx_buf_head(&b));
    assert_int_equal(dx_buf_reserve(&b, 0, 0), 0);
    assert_null(dx_buf_tail(&b));
    dx_buf_commit(&b, 0);
    assert_int_equal(dx_buf_append(&b, "", 0, 0), 0);
    assert_int_equal(ts.calls, 0);
    dx_buf_consume(&b, 0);
    dx_buf_clear(&b);
    dx_buf_deinit(&b);
    assert_int_equal(ts.live, 0);
    assert_ptr_equal(b.seams, &ts.seams);
}

static void test_zeroed_buffer_uses_default_seams(void **state)
{
    (void)state;
    dx_buf b = {0};
    assert_int_equal(dx_buf_append(&b, "hello", 5, 0), 0);
    assert_int_equal(b.len, 5);
    assert_memory_equal(dx_buf_head(&b), "hello", 5);
    dx_buf_deinit(&b); /* ASan reports a leak if this did not free */
    assert_null(b.data);
    assert_null(b.seams);
}

static void test_append_consume_basic(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx_buf b;
    dx_buf_init(&b, &ts.seams);
    assert_int_equal(dx_buf_append(&b, "abc", 3, 0), 0);
    assert_int_equal(dx_buf_append(&b, "defg", 4, 0), 0);
    assert_int_equal(b.len, 7);
    assert_int_equal(b.cap, 256); /* first growth */
    assert_int_equal(ts.calls, 1);
    assert_memory_equal(dx_buf_head(&b), "abcdefg", 7);
    dx_buf_consume(&b, 2);
    assert_int_equal(b.len, 5);
    assert_int_equal(b.off, 2);
    assert_memory_equal(dx_buf_head(&b), "cdefg", 5);
    dx_buf_consume(&b, 5); /* emptying resets the cursor */
    assert_int_equal(b.len, 0);
    assert_int_equal(b.off, 0);
    assert_int_equal(dx_buf_append(&b, "xy", 2, 0), 0);
    assert_memory_equal(dx_buf_head(&b), "xy", 2);
    assert_ptr_equal(dx_buf_head(&b), b.data);
    assert_invariants(&b);
    dx_buf_deinit(&b);
    assert_int_equal(ts.live, 0);
    assert_int_equal(b.cap, 0);
    /* Reusable after deinit. */
    assert_int_equal(dx_buf_append(&b, "z", 1, 0), 0);
    assert_memory_equal(dx_buf_head(&b), "z", 1);
    dx_buf_deinit(&b);
    assert_int_equal(ts.live, 0);
}

static void test_reserve_commit(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx_buf b;
    dx_buf_init(&b, &ts.seams);
    assert_int_equal(dx_buf_reserve(&b, 1000, 0), 0);
    assert_true(b.cap >= 1000);
    assert_int_equal(b.len, 0);
    uint8_t *t = dx_buf_tail(&b);
    fill_pat(t, 0, 600);
    dx_buf_commit(&b, 600);
    assert_buf_pat(&b, 0, 600);
    /* Reserving what is already there does not allocate. */
    long calls = ts.calls;
    assert_int_equal(dx_buf_reserve(&b, b.cap - b.len, 0), 0);
    assert_int_equal(ts.calls, calls);
    /* A reserve of 0 is always fine. */
    assert_int_equal(dx_buf_reserve(&b, 0, 0), 0);
    /* Partial commit: reserve 100, use 40. */
    assert_int_equal(dx_buf_reserve(&b, 100, 0), 0);
    fill_pat(dx_buf_tail(&b), 600, 40);
    dx_buf_commit(&b, 40);
    assert_buf_pat(&b, 0, 640);
    assert_invariants(&b);
    dx_buf_deinit(&b);
    assert_int_equal(ts.live, 0);
}

static void test_clear_keeps_storage(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx_buf b;
    dx_buf_init(&b, &ts.seams);
    uint8_t chunk[300];
    fill_pat(chunk, 0, sizeof chunk);
    assert_int_equal(dx_buf_append(&b, chunk, sizeof chunk, 0), 0);
    dx_buf_consume(&b, 10);
    uint8_t *data = b.data;
    size_t cap = b.cap;
    long calls = ts.calls;
    dx_buf_clear(&b);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.off, 0);
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.cap, cap);
    assert_int_equal(ts.live, 1);
    assert_int_equal(dx_buf_append(&b, chunk, sizeof chunk, 0), 0);
    assert_int_equal(ts.calls, calls); /* refilled without allocating */
    assert_buf_pat(&b, 0, sizeof chunk);
    dx_buf_deinit(&b);
    assert_int_equal(ts.live, 0);
}

static void test_growth_many_doublings(void **state)
{
    (void)state;
    spy s;
    spy_init(&s);
    dx_buf b;
    dx_buf_init(&b, &s.seams);
    /* Byte-by-byte and odd-sized appends past 256 -> 512 -> ... -> 256 KiB. */
    size_t total = 0;
    size_t last_cap = 0;
    int growths = 0;
    uint8_t chunk[977];
    while (total < 200000) {
        size_t n = total < 3000 ? 1 : (total % 977) + 1;
        fill_pat(chunk, total, n);
        assert_int_equal(dx_buf_append(&b, chunk, n, 0), 0);
        total += n;
        assert_invariants(&b);
        if (b.cap != last_cap) {
            /* Doubling from 256: always a power-of-two multiple of 256. */
            assert_int_equal(b.cap % 256, 0);
            assert_int_equal((b.cap / 256) & (b.cap / 256 - 1), 0);
            if (last_cap)
                assert_int_equal(b.cap, last_cap * 2);
            last_cap = b.cap;
            growths++;
        }
    }
    assert_true(growths >= 10);
    assert_buf_pat(&b, 0, total);
    assert_int_equal(s.ts.live, 1);
    /* One big reserve jumps several doublings at once. */
    size_t cap = b.cap;
    assert_int_equal(dx_buf_reserve(&b, cap * 5, 0), 0);
    assert_int_equal(b.cap, cap * 8);
    assert_buf_pat(&b, 0, total);
    dx_buf_deinit(&b);
    assert_int_equal(s.ts.live, 0);
}

static void test_compaction_reuses_front(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx_buf b;
    dx_buf_init(&b, &ts.seams);
    uint8_t chunk[256];
    fill_pat(chunk, 0, 256);
    assert_int_equal(dx_buf_append(&b, chunk, 256, 0), 0);
    assert_int_equal(b.cap, 256);
    uint8_t *data = b.data;
    dx_buf_consume(&b, 200);
    assert_int_equal(b.off, 200);
    /* 56 left + 150 new = 206 <= 256: fits after moving the 56 to the front. */
    fill_pat(chunk, 256, 150);
    long calls = ts.calls;
    assert_int_equal(dx_buf_append(&b, chunk, 150, 0), 0);
    assert_int_equal(ts.calls, calls);
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.cap, 256);
    assert_int_equal(b.off, 0);
    assert_buf_pat(&b, 200, 206);
    /* Fits behind the cursor: no move at all. */
    dx_buf_consume(&b, 6);
    fill_pat(chunk, 406, 50);
    assert_int_equal(dx_buf_append(&b, chunk, 50, 0), 0);
    assert_int_equal(b.off, 6);
    assert_buf_pat(&b, 206, 250);
    /* Needs more than cap with a consumed front: a fresh block, order kept. */
    dx_buf_consume(&b, 100);
    fill_pat(chunk, 456, 200);
    assert_int_equal(dx_buf_append(&b, chunk, 200, 0), 0);
    assert_int_equal(b.cap, 512);
    assert_int_equal(b.off, 0);
    assert_buf_pat(&b, 306, 350);
    assert_int_equal(ts.live, 1);
    assert_invariants(&b);
    dx_buf_deinit(&b);
    assert_int_equal(ts.live, 0);
}

/* A FIFO that drains slower than it fills, with a model to compare against. */
static void test_fifo_model(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx_buf b;
    dx_buf_init(&b, &ts.seams);
    size_t produced = 0, consumed = 0;
    uint8_t chunk[700];
    for (int step = 0; step < 5000; step++) {
        uint8_t r;
        ts.seams.random(ts.seams.ud, &r, 1);
        size_t n = (size_t)r * 3 % 700;
        fill_pat(chunk, produced, n);
        assert_int_equal(dx_buf_append(&b, chunk, n, 0), 0);
        produced += n;
        ts.seams.random(ts.seams.ud, &r, 1);
        size_t c = (size_t)r * 3 % 700;
        if (c > b.len)
            c = b.len;
        dx_buf_consume(&b, c);
        consumed += c;
        assert_invariants(&b);
        assert_int_equal(b.len, produced - consumed);
        if (b.len)
            assert_int_equal(dx_buf_head(&b)[0], pat(consumed));
    }
    assert_buf_pat(&b, consumed, produced - consumed);
    dx_buf_deinit(&b);
    assert_int_equal(ts.live, 0);
}

static void test_max_limit_exact(void **state)
{
    (void)state;
    spy s;
    spy_init(&s);
    dx_buf b;
    dx_buf_init(&b, &s.seams);
    const size_t max = 1000;
    uint8_t chunk[64];
    size_t total = 0;
    while (total < max) {
        size_t n = max - total < 37 ? max - total : 37;
        fill_pat(chunk, total, n);
        assert_int_equal(dx_buf_append(&b, chunk, n, max), 0);
        total += n;
        assert_true(b.cap <= max);
    }
    assert_int_equal(b.len, max);
    assert_int_equal(b.cap, max); /* clamped: 1024 would exceed the bound */
    /* max + 1: refused, nothing changes. */
    size_t cap = b.cap;
    long calls = s.ts.calls;
    chunk[0] = 0xEE;
    assert_int_equal(dx_buf_append(&b, chunk, 1, max), DX_ELIMIT);
    assert_int_equal(dx_buf_reserve(&b, 1, max), DX_ELIMIT);
    assert_int_equal(b.cap, cap);
    assert_int_equal(s.ts.calls, calls);
    assert_buf_pat(&b, 0, max);
    assert_true(s.max_req <= max);
    /* Consuming makes room again within the same storage. */
    dx_buf_consume(&b, 1);
    assert_int_equal(dx_buf_reserve(&b, 1, max), 0);
    assert_int_equal(dx_buf_reserve(&b, 2, max), DX_ELIMIT);
    assert_int_equal(b.cap, max);
    dx_buf_deinit(&b);

    /* One reserve of exactly max from empty, then of max + 1. */
    assert_int_equal(dx_buf_reserve(&b, max + 1, max), DX_ELIMIT);
    assert_null(b.data);
    assert_int_equal(dx_buf_reserve(&b, max, max), 0);
    assert_int_equal(b.cap, max);
    dx_buf_deinit(&b);

    /* A small max below the first growth step (256) clamps the first block. */
    s.max_req = 0;
    assert_int_equal(dx_buf_append(&b, "0123456789", 10, 10), 0);
    assert_int_equal(b.cap, 10);
    assert_int_equal(dx_buf_append(&b, "x", 1, 10), DX_ELIMIT);
    assert_memory_equal(dx_buf_head(&b), "0123456789", 10);
    assert_true(s.max_req <= 10);
    dx_buf_deinit(&b);
    assert_int_equal(s.ts.live, 0);
}

static void test_max_never_allocates_more(void **state)
{
    (void)state;
    /* For many bounds, fill to the bound in uneven steps with a consumed
     * front; no single allocation may ever exceed the bound. */
    for (size_t max = 1; max < 3000; max += 97) {
        spy s;
        spy_init(&s);
        dx_buf b;
        dx_buf_init(&b, &s.seams);
        size_t produced = 0, consumed = 0;
        uint8_t chunk[300];
        for (int step = 0; step < 60; step++) {
            size_t n = (size_t)(step * 53 % 300);
            fill_pat(chunk, produced, n);
            int over = b.len + n > max && n > 0;
            int rc = dx_buf_append(&b, chunk, n, max);
            if (over) {
                assert_int_equal(rc, DX_ELIMIT);
            } else {
                assert_int_equal(rc, 0);
                produced += n;
            }
            if (step % 3 == 2) {
                size_t c = b.len / 2;
                dx_buf_consume(&b, c);
                consumed += c;
            }
            assert_true(b.cap <= max);
            assert_invariants(&b);
        }
        assert_buf_pat(&b, consumed, produced - consumed);
        assert_true(s.max_req <= max);
        dx_buf_deinit(&b);
        assert_int_equal(s.ts.live, 0);
    }
}

static void test_huge_extra_is_overflow_safe(void **state)
{
    (void)state;
    spy s;
    spy_init(&s);
    dx_buf b;
    dx_buf_init(&b, &s.seams);

    /* Empty buffer, no bound: SIZE_MAX is a legal request the heap refuses. */
    assert_int_equal(dx_buf_reserve(&b, SIZE_MAX, 0), DX_ENOMEM);
    assert_null(b.data);
    assert_int_equal(s.max_req, SIZE_MAX);
    assert_int_equal(dx_buf_reserve(&b, SIZE_MAX, SIZE_MAX), DX_ENOMEM);
    /* Above SIZE_MAX / 2: doubling must saturate, not wrap. */
    assert_int_equal(dx_buf_reserve(&b, SIZE_MAX / 2 + 2, 0), DX_ENOMEM);
    assert_null(b.data);
    assert_int_equal(b.cap, 0);

    /* With content: len + extra would wrap. */
    assert_int_equal(dx_buf_append(&b, "hello world", 11, 0), 0);
    assert_int_equal(dx_buf_reserve(&b, SIZE_MAX, 0), DX_ELIMIT);
    assert_int_equal(dx_buf_reserve(&b, SIZE_MAX - 10, 0), DX_ELIMIT);
    assert_int_equal(dx_buf_append(&b, "x", SIZE_MAX, 0), DX_ELIMIT);
    assert_int_equal(dx_buf_reserve(&b, SIZE_MAX, 100), DX_ELIMIT);
    /* len + extra == SIZE_MAX exactly: allowed by the bound, refused by the heap. */
    assert_int_equal(dx_buf_reserve(&b, SIZE_MAX - 11, 0), DX_ENOMEM);
    assert_memory_equal(dx_buf_head(&b), "hello world", 11);

    /* With a consumed front: off + len + extra must not wrap either (it
     * would claim the room exists and let the caller write past the end). */
    dx_buf_consume(&b, 6);
    assert_int_equal(b.off, 6);
    assert_int_equal(dx_buf_reserve(&b, SIZE_MAX - 5, 0), DX_ENOMEM);
    assert_int_equal(dx_buf_reserve(&b, SIZE_MAX - 6, 0), DX_ENOMEM);
    assert_int_equal(dx_buf_reserve(&b, SIZE_MAX - 5 - 250, 0), DX_ENOMEM);
    assert_int_equal(b.len, 5);
    assert_memory_equal(dx_buf_head(&b), "world", 5);
    assert_invariants(&b);

    /* Still usable. */
    assert_int_equal(dx_buf_append(&b, "!", 1, 0), 0);
    assert_memory_equal(dx_buf_head(&b), "world!", 6);
    dx_buf_deinit(&b);
    assert_int_equal(s.ts.live, 0);
}

/*
 * A scenario exercising every allocation path: first growth, realloc growth
 * (off == 0), fresh block + copy (off > 0), compaction (no allocation),
 * clear-and-refill, reserve/commit. The model is the byte stream: bytes
 * [consumed, produced) of pat() must be what the buffer holds.
 */
typedef struct op {
    char kind; /* 'a' append n, 'c' consume n, 'r' reserve n + commit n/2, 'x' clear */
    size_t n;
} op;

static const op scenario[] = {
    {'a', 10},  {'a', 300},  {'a', 1},   {'c', 5},  {'a', 400},  {'c', 600}, {'a', 900},
    {'r', 2000}, {'c', 100}, {'a', 3000}, {'a', 1}, {'c', 5000}, {'a', 50},  {'x', 0},
    {'a', 8000}, {'c', 1},   {'r', 9000}, {'a', 7}, {'c', 20000},{'a', 100},
};

/* Runs the scenario with ts.fail_at armed; returns how many failures it saw. */
static int run_scenario(dx_test_seams *ts)
{
    static uint8_t chunk[20000];
    dx_buf b;
    dx_buf_init(&b, &ts->seams);
    size_t produced = 0, consumed = 0;
    int failures = 0;
    for (size_t i = 0; i < sizeof scenario / sizeof scenario[0]; i++) {
        const op *o = &scenario[i];
        for (int attempt = 0; attempt < 2; attempt++) {
            int rc = 0;
            size_t cap_before = b.cap;
            uint8_t *data_before = b.data;
            switch (o->kind) {
            case 'a':
                fill_pat(chunk, produced, o->n);
                rc = dx_buf_append(&b, chunk, o->n, 0);
                if (rc == 0)
                    produced += o->n;
                break;
            case 'r':
                rc = dx_buf_reserve(&b, o->n, 0);
                if (rc == 0) {
                    assert_true(b.cap - b.off - b.len >= o->n);
                    fill_pat(dx_buf_tail(&b), produced, o->n / 2);
                    dx_buf_commit(&b, o->n / 2);
                    produced += o->n / 2;
                }
                break;
            case 'c': {
                size_t c = o->n < b.len ? o->n : b.len;
                dx_buf_consume(&b, c);
                consumed += c;
                break;
            }
            case 'x':
                dx_buf_clear(&b);
                consumed = produced;
                break;
            }
            if (rc == 0)
                break;
            /* The armed allocation failed: a clean error, nothing changed. */
            assert_int_equal(rc, DX_ENOMEM);
            assert_int_equal(ts->calls, ts->fail_at);
            assert_int_equal(attempt, 0);
            assert_int_equal(b.cap, cap_before);
            assert_ptr_equal(b.data, data_before);
            assert_int_equal(ts->live, b.data ? 1 : 0);
            assert_buf_pat(&b, consumed, produced - consumed);
            assert_invariants(&b);
            failures++;
            /* Usable afterwards: the retry (calls has passed fail_at) must work. */
        }
        assert_invariants(&b);
        assert_int_equal(ts->live, b.data ? 1 : 0);
        assert_buf_pat(&b, consumed, produced - consumed);
    }
    dx_buf_deinit(&b);
    assert_int_equal(ts->live, 0);
    return failures;
}

static void test_fail_every_allocation(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    assert_int_equal(run_scenario(&ts), 0);
    long total = ts.calls;
    assert_true(total >= 6); /* the scenario does allocate on several paths */
    long fail_at;
    for (fail_at = 1;; fail_at++) {
        dx_test_seams_init(&ts);
        ts.fail_at = fail_at;
        int failures = run_scenario(&ts);
        assert_int_equal(ts.live, 0);
        if (failures == 0)
            break;
        assert_int_equal(failures, 1);
    }
    /* Every allocation was failed once, then a clean run. */
    assert_int_equal(fail_at, total + 1);
    print_message("failed each of %ld allocations once: clean errors, no leak\n", total);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_empty),
        cmocka_unit_test(test_zeroed_buffer_uses_default_seams),
        cmocka_unit_test(test_append_consume_basic),
        cmocka_unit_test(test_reserve_commit),
        cmocka_unit_test(test_clear_keeps_storage),
        cmocka_unit_test(test_growth_many_doublings),
        cmocka_unit_test(test_compaction_reuses_front),
        cmocka_unit_test(test_fifo_model),
        cmocka_unit_test(test_max_limit_exact),
        cmocka_unit_test(test_max_never_allocates_more),
        cmocka_unit_test(test_huge_extra_is_overflow_safe),
        cmocka_unit_test(test_fail_every_allocation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
