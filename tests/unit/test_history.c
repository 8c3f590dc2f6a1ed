/* tests/unit/test_history.c: src/gateway/history.c — a topic's sequencer,
 * bounded history, resume decisions and the live/history stitcher. */
#include "testutil.h"

#include "gateway/history.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SEC UINT64_C(1000000000)

static dx__gw_log *log_with(dx_test_seams *ts, size_t count, uint64_t age_ns)
{
    dx__gw_log_opts o = {.max_count = count, .max_age_ns = age_ns};
    int err = -1;
    dx__gw_log *log = dx__gw_log_new(&ts->seams, &o, &err);
    assert_non_null(log);
    assert_int_equal(err, 0);
    return log;
}

static void append_n(dx__gw_log *log, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char p[32];
        int len = snprintf(p, sizeof p, "m%llu", (unsigned long long)dx__gw_log_offset(log) + 1);
        assert_int_equal(dx__gw_log_append(log, DX__GW_KIND_TEXT, p, (size_t)len, NULL), 0);
    }
}

/* The snapshot holds exactly offsets from..to, each with its own payload. */
static void assert_snap_range(const dx__gw_snapshot *s, uint64_t from, uint64_t to)
{
    assert_int_equal(s->n, to >= from ? to - from + 1 : 0);
    for (size_t i = 0; i < s->n; i++) {
        assert_int_equal(dx__gw_entry_offset(s->entries[i]), from + i);
        char p[32];
        int len = snprintf(p, sizeof p, "m%llu", (unsigned long long)(from + i));
        assert_int_equal(dx__gw_entry_len(s->entries[i]), (size_t)len);
        assert_memory_equal(dx__gw_entry_data(s->entries[i]), p, (size_t)len);
    }
}

static void test_offsets_from_one_no_hole(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    int err = -1;
    dx__gw_log *log = dx__gw_log_new(&ts.seams, NULL, &err); /* the defaults */
    assert_non_null(log);
    assert_int_equal(dx__gw_log_offset(log), 0);
    assert_int_equal(dx__gw_log_count(log), 0);
    const char *ep = dx__gw_log_epoch(log);
    assert_int_equal(strlen(ep), DX__GW_EPOCH_LEN);
    assert_int_equal(strspn(ep, "0123456789abcdef"), DX__GW_EPOCH_LEN);

    static const dx__gw_kind kinds[] = {DX__GW_KIND_JSON, DX__GW_KIND_TEXT, DX__GW_KIND_BINARY};
    for (uint64_t i = 1; i <= 2500; i++) {
        dx__gw_entry *e = NULL;
        dx__gw_kind k = kinds[i % 3];
        ts.now = i * 1000; /* well inside 10 minutes */
        assert_int_equal(dx__gw_log_append(log, k, &i, sizeof i, &e), 0);
        assert_non_null(e);
        assert_int_equal(dx__gw_entry_offset(e), i);
        assert_int_equal(dx__gw_log_offset(log), i);
        assert_int_equal(dx__gw_entry_kind(e), k);
        assert_int_equal(dx__gw_entry_time_ns(e), i * 1000);
        assert_memory_equal(dx__gw_entry_data(e), &i, sizeof i);
        dx__gw_entry_unref(e);
    }
    /* The default count bound: the last 1,000, in order. */
    assert_int_equal(dx__gw_log_count(log), 1000);
    assert_int_equal(dx__gw_log_bytes(log), 1000 * sizeof(uint64_t));
    dx__gw_snapshot s;
    assert_int_equal(dx__gw_log_history(log, 0, 5000, &s), 0);
    assert_int_equal(s.n, DX__GW_HISTORY_LIMIT_MAX);
    assert_false(s.recovered); /* 1..1500 were trimmed */
    for (size_t i = 0; i < s.n; i++)
        assert_int_equal(dx__gw_entry_offset(s.entries[i]), 1501 + i);
    dx__gw_snapshot_deinit(&s);
    dx__gw_snapshot_deinit(&s); /* idempotent */

    assert_string_equal(dx__gw_kind_name(DX__GW_KIND_JSON), "json");
    assert_string_equal(dx__gw_kind_name(DX__GW_KIND_TEXT), "text");
    assert_string_equal(dx__gw_kind_name(DX__GW_KIND_BINARY), "binary");
    assert_string_equal(dx__gw_kind_name((dx__gw_kind)7), "?");

    /* A recreated log (continuity lost) starts over with another epoch. */
    char old[DX__GW_EPOCH_LEN + 1];
    memcpy(old, ep, sizeof old);
    dx__gw_log_free(log);
    log = dx__gw_log_new(&ts.seams, NULL, NULL);
    assert_non_null(log);
    assert_int_equal(dx__gw_log_offset(log), 0);
    assert_string_not_equal(dx__gw_log_epoch(log), old);
    dx__gw_log_free(log);
    assert_int_equal(ts.live, 0);
}

static void test_append_bad_arguments(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx__gw_log *log = log_with(&ts, 4, 0);
    dx__gw_entry *e = (dx__gw_entry *)&ts; /* must be reset to NULL */
    assert_int_equal(dx__gw_log_append(log, (dx__gw_kind)4, "x", 1, &e), DX_EINVAL);
    assert_int_equal(dx__gw_log_append(log, (dx__gw_kind)0, "x", 1, &e), DX_EINVAL); /* 0 is no kind */
    assert_null(e);
    assert_int_equal(dx__gw_log_append(log, DX__GW_KIND_TEXT, NULL, 1, NULL), DX_EINVAL);
    assert_int_equal(dx__gw_log_offset(log), 0);
    /* An empty payload is a message. */
    assert_int_equal(dx__gw_log_append(log, DX__GW_KIND_BINARY, NULL, 0, &e), 0);
    assert_int_equal(dx__gw_entry_len(e), 0);
    assert_int_equal(dx__gw_entry_offset(e), 1);
    dx__gw_entry_unref(e);
    dx__gw_entry_unref(NULL);
    dx__gw_log_free(log);
    dx__gw_log_free(NULL);
    assert_int_equal(ts.live, 0);
}

static void test_count_trimming(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx__gw_log *log = log_with(&ts, 5, 0);
    dx__gw_entry *first = NULL;
    assert_int_equal(dx__gw_log_append(log, DX__GW_KIND_TEXT, "m1", 2, &first), 0);
    append_n(log, 11);
    assert_int_equal(dx__gw_log_offset(log), 12);
    assert_int_equal(dx__gw_log_count(log), 5);
    assert_int_equal(dx__gw_log_bytes(log), 2 + 2 + 3 + 3 + 3); /* m8..m12 */
    /* A trimmed entry held elsewhere stays valid (refcounted, no copy). */
    assert_int_equal(dx__gw_entry_offset(first), 1);
    assert_memory_equal(dx__gw_entry_data(first), "m1", 2);
    dx__gw_entry_unref(first);

    dx__gw_snapshot s;
    assert_int_equal(dx__gw_log_history(log, 0, 100, &s), 0);
    assert_snap_range(&s, 8, 12);
    dx__gw_snapshot_deinit(&s);

    /* History off: offsets still advance, nothing is retained. */
    dx__gw_log *none = log_with(&ts, 0, 0);
    append_n(none, 3);
    assert_int_equal(dx__gw_log_offset(none), 3);
    assert_int_equal(dx__gw_log_count(none), 0);
    assert_int_equal(dx__gw_log_resume(none, 3, dx__gw_log_epoch(none), &s), 0);
    assert_true(s.recovered);
    assert_int_equal(dx__gw_log_resume(none, 2, dx__gw_log_epoch(none), &s), 0);
    assert_false(s.recovered);
    assert_int_equal(s.n, 0);
    assert_int_equal(dx__gw_log_history(none, 0, 100, &s), 0);
    assert_int_equal(s.n, 0);
    assert_int_equal(s.offset, 3);
    dx__gw_log_free(none);
    dx__gw_log_free(log);
    assert_int_equal(ts.live, 0);
}

static void test_age_trimming(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx__gw_log *log = log_with(&ts, 100, 10 * SEC);
    for (int i = 0; i < 10; i++) { /* offsets 1..10 at t = 0..9 s */
        ts.now = (uint64_t)i * SEC;
        append_n(log, 1);
    }
    assert_int_equal(dx__gw_log_count(log), 10);
    ts.now = 10 * SEC - 1; /* offset 1 is just under 10 s old */
    assert_int_equal(dx__gw_log_trim(log), 0);
    ts.now = 10 * SEC; /* now exactly 10 s old: gone */
    assert_int_equal(dx__gw_log_trim(log), 1);
    assert_int_equal(dx__gw_log_count(log), 9);

    /* Trimming on read: a resume at t=16 s sees offsets 8..10 only. */
    ts.now = 16 * SEC;
    dx__gw_snapshot s;
    assert_int_equal(dx__gw_log_resume(log, 5, dx__gw_log_epoch(log), &s), 0);
    assert_false(s.recovered); /* 6 was published at 5 s: 11 s old */
    assert_int_equal(s.n, 0);
    assert_int_equal(dx__gw_log_count(log), 3);
    assert_int_equal(dx__gw_log_resume(log, 7, dx__gw_log_epoch(log), &s), 0);
    assert_true(s.recovered);
    assert_snap_range(&s, 8, 10);
    dx__gw_snapshot_deinit(&s);

    /* Trimming on append: everything is older than 10 s at t=100 s. */
    ts.now = 100 * SEC;
    append_n(log, 1);
    assert_int_equal(dx__gw_log_count(log), 1);
    assert_int_equal(dx__gw_log_offset(log), 11);
    assert_int_equal(dx__gw_log_history(log, 0, 100, &s), 0);
    assert_snap_range(&s, 11, 11);
    dx__gw_snapshot_deinit(&s);

    /* Reading an idle topic empties it; its current offset stays. */
    ts.now = 200 * SEC;
    assert_int_equal(dx__gw_log_history(log, 0, 100, &s), 0);
    assert_int_equal(s.n, 0);
    assert_int_equal(s.offset, 11);
    assert_int_equal(dx__gw_log_count(log), 0);
    assert_int_equal(dx__gw_log_bytes(log), 0);
    /* A clock that goes backwards keeps entries rather than dropping. */
    append_n(log, 1);
    ts.now = 150 * SEC;
    assert_int_equal(dx__gw_log_trim(log), 0);
    assert_int_equal(dx__gw_log_count(log), 1);
    dx__gw_log_free(log);
    assert_int_equal(ts.live, 0);
}

/* Every resume case of GATEWAY.md "Delivery guarantees". */
static void test_resume_cases(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx__gw_log *log = log_with(&ts, 10, 0);
    const char *ep = dx__gw_log_epoch(log);
    dx__gw_snapshot s;

    /* N = 0 on a fresh topic: nothing missed. */
    assert_int_equal(dx__gw_log_resume(log, 0, ep, &s), 0);
    assert_true(s.recovered);
    assert_int_equal(s.offset, 0);
    assert_int_equal(s.n, 0);
    assert_string_equal(s.epoch, ep);
    /* Ahead on a fresh topic. */
    assert_int_equal(dx__gw_log_resume(log, 1, ep, &s), 0);
    assert_false(s.recovered);
    assert_int_equal(s.offset, 0);

    append_n(log, 25); /* retained: 16..25 */
    /* N is the current offset. */
    assert_int_equal(dx__gw_log_resume(log, 25, ep, &s), 0);
    assert_true(s.recovered);
    assert_int_equal(s.n, 0);
    assert_int_equal(s.offset, 25);
    /* N+1 retained, including the oldest retained one. */
    assert_int_equal(dx__gw_log_resume(log, 20, ep, &s), 0);
    assert_true(s.recovered);
    assert_snap_range(&s, 21, 25);
    dx__gw_snapshot_deinit(&s);
    assert_int_equal(dx__gw_log_resume(log, 15, ep, &s), 0);
    assert_true(s.recovered);
    assert_snap_range(&s, 16, 25);
    dx__gw_snapshot_deinit(&s);
    assert_int_equal(dx__gw_log_resume(log, 24, NULL, &s), 0); /* epoch assumed */
    assert_true(s.recovered);
    assert_snap_range(&s, 25, 25);
    dx__gw_snapshot_deinit(&s);
    /* N+1 trimmed. */
    assert_int_equal(dx__gw_log_resume(log, 14, ep, &s), 0);
    assert_false(s.recovered);
    assert_int_equal(s.n, 0);
    assert_int_equal(s.offset, 25);
    assert_string_equal(s.epoch, ep);
    assert_int_equal(dx__gw_log_resume(log, 0, ep, &s), 0);
    assert_false(s.recovered);
    /* Another epoch, even at the current offset. */
    assert_int_equal(dx__gw_log_resume(log, 25, "0000000000000000", &s), 0);
    assert_false(s.recovered);
    assert_int_equal(s.n, 0);
    assert_int_equal(s.offset, 25);
    assert_string_equal(s.epoch, ep);
    assert_int_equal(dx__gw_log_resume(log, 20, "", &s), 0);
    assert_false(s.recovered);
    /* N ahead of the current offset. */
    assert_int_equal(dx__gw_log_resume(log, 26, ep, &s), 0);
    assert_false(s.recovered);
    assert_int_equal(dx__gw_log_resume(log, DX__GW_OFFSET_MAX, ep, &s), 0);
    assert_false(s.recovered);
    assert_int_equal(dx__gw_log_resume(log, UINT64_MAX, ep, &s), 0);
    assert_false(s.recovered);
    dx__gw_log_free(log);

    /* Empty topic (history off or all aged out) with messages published. */
    log = log_with(&ts, 10, SEC);
    ep = dx__gw_log_epoch(log);
    append_n(log, 3);
    ts.now = 5 * SEC;
    assert_int_equal(dx__gw_log_resume(log, 3, ep, &s), 0);
    assert_true(s.recovered);
    assert_int_equal(s.offset, 3);
    assert_int_equal(dx__gw_log_resume(log, 2, ep, &s), 0);
    assert_false(s.recovered);
    assert_int_equal(s.n, 0);
    dx__gw_log_free(log);
    assert_int_equal(ts.live, 0);
}

static void test_history_reads(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx__gw_log *log = log_with(&ts, 2000, 0);
    dx__gw_snapshot s;
    /* An empty log: its shape, no message. */
    assert_int_equal(dx__gw_log_history(log, 0, DX__GW_HISTORY_LIMIT_DEFAULT, &s), 0);
    assert_int_equal(s.n, 0);
    assert_int_equal(s.offset, 0);
    assert_string_equal(s.epoch, dx__gw_log_epoch(log));
    append_n(log, 1500);
    assert_int_equal(dx__gw_log_history(log, 0, DX__GW_HISTORY_LIMIT_DEFAULT, &s), 0);
    assert_true(s.recovered);
    assert_int_equal(s.offset, 1500);
    assert_snap_range(&s, 1, 100);
    dx__gw_snapshot_deinit(&s);
    assert_int_equal(dx__gw_log_history(log, 1450, 100, &s), 0);
    assert_snap_range(&s, 1451, 1500);
    dx__gw_snapshot_deinit(&s);
    assert_int_equal(dx__gw_log_history(log, 10, 3, &s), 0);
    assert_snap_range(&s, 11, 13);
    dx__gw_snapshot_deinit(&s);
    assert_int_equal(dx__gw_log_history(log, 10, 0, &s), 0);
    assert_int_equal(s.n, 0);
    assert_int_equal(dx__gw_log_history(log, 0, SIZE_MAX, &s), 0); /* capped */
    assert_snap_range(&s, 1, 1000);
    dx__gw_snapshot_deinit(&s);
    assert_int_equal(dx__gw_log_history(log, 1500, 100, &s), 0);
    assert_int_equal(s.n, 0);
    assert_true(s.recovered);
    assert_int_equal(dx__gw_log_history(log, 9999, 100, &s), 0);
    assert_int_equal(s.n, 0);
    assert_false(s.recovered);
    assert_int_equal(s.offset, 1500);
    dx__gw_log_free(log);
    assert_int_equal(ts.live, 0);
}

static void test_offset_limit(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx__gw_log *log = log_with(&ts, 4, 0);
    assert_int_equal(dx__gw_log_seek(log, DX__GW_OFFSET_MAX + 1), DX_EINVAL);
    assert_int_equal(dx__gw_log_seek(log, DX__GW_OFFSET_MAX - 2), 0);
    assert_int_equal(dx__gw_log_seek(log, 5), DX_ESTATE);
    append_n(log, 2);
    assert_int_equal(dx__gw_log_offset(log), DX__GW_OFFSET_MAX);
    assert_int_equal(DX__GW_OFFSET_MAX, UINT64_C(9007199254740991));
    dx__gw_entry *e = NULL;
    assert_int_equal(dx__gw_log_append(log, DX__GW_KIND_TEXT, "x", 1, &e), DX_ELIMIT);
    assert_null(e);
    assert_int_equal(dx__gw_log_offset(log), DX__GW_OFFSET_MAX);
    assert_int_equal(dx__gw_log_count(log), 2);
    dx__gw_snapshot s;
    assert_int_equal(dx__gw_log_resume(log, DX__GW_OFFSET_MAX - 2, NULL, &s), 0);
    assert_true(s.recovered);
    assert_snap_range(&s, DX__GW_OFFSET_MAX - 1, DX__GW_OFFSET_MAX);
    dx__gw_snapshot_deinit(&s);
    dx__gw_log_free(log);

    log = log_with(&ts, 4, 0);
    append_n(log, 1);
    assert_int_equal(dx__gw_log_seek(log, 10), DX_ESTATE);
    dx__gw_log_free(log);
    assert_int_equal(ts.live, 0);
}

static void test_prepared_frames(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx__gw_log *log = log_with(&ts, 4, 0);
    dx__gw_entry *e = NULL;
    assert_int_equal(dx__gw_log_append(log, DX__GW_KIND_TEXT, "hello", 5, &e), 0);
    assert_null(dx__gw_entry_frame(e, DX__GW_FRAME_RAW));
    dx_msg *raw = dx_msg_new(DX_OP_TEXT, "hello", 5, NULL);
    assert_non_null(raw);
    assert_ptr_equal(dx__gw_entry_set_frame(e, DX__GW_FRAME_RAW, raw), raw);
    /* A second builder loses: its message is dropped, the first one stays. */
    dx_msg *raw2 = dx_msg_new(DX_OP_TEXT, "hello", 5, NULL);
    assert_ptr_equal(dx__gw_entry_set_frame(e, DX__GW_FRAME_RAW, raw2), raw);
    assert_ptr_equal(dx__gw_entry_frame(e, DX__GW_FRAME_RAW), raw);
    dx_msg *js = dx_msg_new(DX_OP_TEXT, "{\"op\":\"msg\"}", 12, NULL);
    assert_ptr_equal(dx__gw_entry_set_frame(e, DX__GW_FRAME_JSON, js), js);
    assert_null(dx__gw_entry_set_frame(e, DX__GW_FRAME_N, dx_msg_new(DX_OP_TEXT, "", 0, NULL)));
    assert_null(dx__gw_entry_set_frame(e, DX__GW_FRAME_RAW, NULL));
    assert_null(dx__gw_entry_frame(e, DX__GW_FRAME_N));
    /* The frames live as long as the entry: the log's reference and ours. */
    dx__gw_log_free(log);
    assert_int_equal(dx_msg_len(dx__gw_entry_frame(e, DX__GW_FRAME_JSON)), 12);
    dx__gw_entry_unref(e); /* ASan reports the messages if not dropped */
    assert_int_equal(ts.live, 0);
}

/* ---- the stitcher ------------------------------------------------------ */

typedef struct rec {
    uint64_t *got;
    size_t n, cap;
    size_t gaps;
    uint64_t gap_from, gap_to;
} rec;

static void rec_deliver(void *ud, dx__gw_entry *e)
{
    rec *r = ud;
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 64;
        r->got = realloc(r->got, r->cap * sizeof *r->got);
        assert_non_null(r->got);
    }
    r->got[r->n++] = dx__gw_entry_offset(e);
}

static void rec_gap(void *ud, uint64_t from, uint64_t to)
{
    rec *r = ud;
    r->gaps++;
    r->gap_from = from;
    r->gap_to = to;
}

static const dx__gw_stitch_ops rec_ops = {rec_deliver, rec_gap};

static uint64_t xs(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* A FIFO of entry references: the live path to one subscriber. */
typedef struct fifo {
    dx__gw_entry **v;
    size_t head, n, cap;
} fifo;

static void fifo_push(fifo *f, dx__gw_entry *e)
{
    if (f->head + f->n == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 64;
        f->v = realloc(f->v, f->cap * sizeof *f->v);
        assert_non_null(f->v);
    }
    f->v[f->head + f->n++] = e;
}

static dx__gw_entry *fifo_pop(fifo *f)
{
    f->n--;
    return f->v[f->head++];
}

/*
 * Random interleavings of appends, live deliveries and a subscribe with
 * since: the subscriber registers for live messages, then (after more
 * appends) the owner reads the log, and the snapshot reaches the subscriber
 * at a random point among the live entries. Every offset after the resume
 * point arrives exactly once, in order, with no gap.
 */
static void test_stitch_randomized(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    uint64_t seed = 0x9e3779b97f4a7c15u;
    size_t total = 0, recovered_n = 0, trials = 300;
    for (size_t t = 0; t < trials; t++) {
        size_t cap = 1 + (size_t)(xs(&seed) % 400);
        dx__gw_log *log = log_with(&ts, cap, 0);
        append_n(log, (size_t)(xs(&seed) % 600));
        uint64_t cur = dx__gw_log_offset(log);
        /* The client's resume point: current, a bit behind, far behind,
         * ahead, or another epoch. */
        uint64_t since;
        const char *ep = dx__gw_log_epoch(log);
        switch (xs(&seed) % 5) {
        case 0: since = cur; break;
        case 1: since = cur - (cur ? xs(&seed) % (cur < cap ? cur : cap) : 0); break;
        case 2: since = cur ? xs(&seed) % cur : 0; break;
        case 3: since = cur + 1 + xs(&seed) % 5; break;
        default: since = cur; ep = "ffffffffffffffff"; break;
        }

        fifo live = {0};
        rec r = {0};
        dx__gw_stitch st;
        dx__gw_stitch_init(&st, &ts.seams, &rec_ops, &r);
        /* Registered: every append from now on travels the live path. */
        size_t before_read = (size_t)(xs(&seed) % 20);
        for (size_t i = 0; i < before_read; i++) {
            dx__gw_entry *e;
            assert_int_equal(dx__gw_log_append(log, DX__GW_KIND_TEXT, "x", 1, &e), 0);
            fifo_push(&live, e);
            if (xs(&seed) % 3 == 0) { /* some reach the subscriber early */
                dx__gw_entry *l = fifo_pop(&live);
                assert_int_equal(dx__gw_stitch_live(&st, l), 0);
                dx__gw_entry_unref(l);
            }
        }
        uint64_t at_read = dx__gw_log_offset(log);
        uint64_t oldest = at_read - dx__gw_log_count(log) + 1;
        bool expect = strcmp(ep, dx__gw_log_epoch(log)) == 0 &&
                      (since == at_read || (since < at_read && since + 1 >= oldest));
        dx__gw_snapshot snap;
        assert_int_equal(dx__gw_log_resume(log, since, ep, &snap), 0);
        assert_int_equal(snap.recovered, expect);
        assert_int_equal(snap.offset, at_read);

        /* Then random steps until the snapshot arrived and more was sent. */
        bool given = false;
        size_t after = 5 + (size_t)(xs(&seed) % 30);
        while (!given || after || live.n) {
            uint64_t r3 = xs(&seed) % 3;
            if (r3 == 0 && after) {
                dx__gw_entry *e;
                assert_int_equal(dx__gw_log_append(log, DX__GW_KIND_TEXT, "y", 1, &e), 0);
                fifo_push(&live, e);
                after--;
            } else if (r3 == 1 && live.n) {
                dx__gw_entry *l = fifo_pop(&live);
                assert_int_equal(dx__gw_stitch_live(&st, l), 0);
                dx__gw_entry_unref(l);
            } else if (!given && (r3 == 2 || (!after && !live.n))) {
                assert_int_equal(dx__gw_stitch_history(&st, &snap), 0);
                assert_int_equal(dx__gw_stitch_history(&st, &snap), DX_ESTATE);
                given = true;
            } else if (!after && live.n) {
                dx__gw_entry *l = fifo_pop(&live);
                assert_int_equal(dx__gw_stitch_live(&st, l), 0);
                dx__gw_entry_unref(l);
            }
        }
        uint64_t end = dx__gw_log_offset(log);
        uint64_t from = expect ? since + 1 : at_read + 1;
        assert_int_equal(r.gaps, 0);
        assert_int_equal(r.n, end - from + 1);
        for (size_t i = 0; i < r.n; i++)
            assert_int_equal(r.got[i], from + i);
        total += r.n;
        recovered_n += expect;
        dx__gw_snapshot_deinit(&snap);
        dx__gw_stitch_deinit(&st);
        free(live.v);
        free(r.got);
        dx__gw_log_free(log);
        assert_int_equal(ts.live, 0);
    }
    /* The seed covers both outcomes and thousands of deliveries. */
    assert_true(recovered_n > trials / 4 && recovered_n < trials);
    assert_true(total > 5000);
}

/* Misuse of the seam (reading before registering) is reported, not hidden. */
static void test_stitch_gap_reported(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx__gw_log *log = log_with(&ts, 100, 0);
    append_n(log, 3);
    dx__gw_snapshot snap;
    assert_int_equal(dx__gw_log_resume(log, 1, NULL, &snap), 0);
    append_n(log, 2); /* 4 and 5: published before the registration, lost */
    rec r = {0};
    dx__gw_stitch st;
    dx__gw_stitch_init(&st, &ts.seams, &rec_ops, &r);
    dx__gw_entry *e;
    assert_int_equal(dx__gw_log_append(log, DX__GW_KIND_TEXT, "x", 1, &e), 0);
    assert_int_equal(dx__gw_stitch_live(&st, e), 0); /* 6, held */
    assert_int_equal(dx__gw_stitch_history(&st, &snap), 0);
    assert_int_equal(r.n, 3); /* 2, 3, then 6 after the gap */
    assert_int_equal(r.got[0], 2);
    assert_int_equal(r.got[1], 3);
    assert_int_equal(r.got[2], 6);
    assert_int_equal(r.gaps, 1);
    assert_int_equal(r.gap_from, 4);
    assert_int_equal(r.gap_to, 5);
    /* Passed straight through afterwards, duplicates dropped. */
    assert_int_equal(dx__gw_stitch_live(&st, e), 0);
    assert_int_equal(r.n, 3);
    dx__gw_entry_unref(e);
    dx__gw_snapshot_deinit(&snap);
    dx__gw_stitch_deinit(&st);
    free(r.got);
    dx__gw_log_free(log);
    assert_int_equal(ts.live, 0);
}

/* Entries cross threads: references dropped and frames offered concurrently
 * (the raw frame built lazily by whichever worker needs it first). */
typedef struct racer {
    dx__gw_entry *e;
    dx_msg *won;
} racer;

static void *race_main(void *arg)
{
    racer *r = arg;
    dx_msg *m = dx_msg_new(DX_OP_TEXT, "payload", 7, NULL);
    assert_non_null(m);
    r->won = dx__gw_entry_set_frame(r->e, DX__GW_FRAME_RAW, m);
    /* Still valid: the winner lives as long as the entry, and we hold it. */
    assert_int_equal(dx_msg_len(r->won), 7);
    dx__gw_entry_unref(r->e);
    return NULL;
}

static void test_thread_entries_shared(void **state)
{
    (void)state;
    for (int round = 0; round < 50; round++) {
        dx__gw_log *log = dx__gw_log_new(NULL, NULL, NULL);
        assert_non_null(log);
        dx__gw_entry *e = NULL;
        assert_int_equal(dx__gw_log_append(log, DX__GW_KIND_TEXT, "payload", 7, &e), 0);
        enum { N = 4 };
        racer r[N];
        pthread_t th[N];
        for (int i = 0; i < N; i++) {
            r[i].e = dx__gw_entry_ref(e);
            assert_int_equal(pthread_create(&th[i], NULL, race_main, &r[i]), 0);
        }
        if (round % 2)
            dx__gw_log_free(log); /* the log's reference goes while they run */
        for (int i = 0; i < N; i++)
            assert_int_equal(pthread_join(th[i], NULL), 0);
        for (int i = 1; i < N; i++)
            assert_ptr_equal(r[i].won, r[0].won); /* one winner for all */
        assert_ptr_equal(dx__gw_entry_frame(e, DX__GW_FRAME_RAW), r[0].won);
        dx__gw_entry_unref(e);
        if (!(round % 2))
            dx__gw_log_free(log);
    }
}

/* ---- every allocation failed once ---------------------------------------- */

/* A scenario over every allocating path; each failure must be DX_ENOMEM
 * with nothing changed and nothing leaked. Returns 0 when it ran whole. */
static int scenario(dx_test_seams *ts)
{
    int err = 0;
    dx__gw_log_opts o = {.max_count = 20, .max_age_ns = 0};
    dx__gw_log *log = dx__gw_log_new(&ts->seams, &o, &err);
    if (!log) {
        assert_int_equal(err, DX_ENOMEM);
        return err;
    }
    int rc = 0;
    dx__gw_snapshot s = {.n = 0};
    dx__gw_stitch st;
    rec r = {0};
    dx__gw_stitch_init(&st, &ts->seams, &rec_ops, &r);
    for (int i = 0; i < 25; i++) { /* the ring grows 8 → 16 → 20, then wraps */
        uint64_t before = dx__gw_log_offset(log);
        size_t count = dx__gw_log_count(log);
        dx__gw_entry *e = NULL;
        rc = dx__gw_log_append(log, DX__GW_KIND_BINARY, &i, sizeof i, &e);
        if (rc) {
            assert_int_equal(rc, DX_ENOMEM);
            assert_null(e);
            assert_int_equal(dx__gw_log_offset(log), before);
            assert_int_equal(dx__gw_log_count(log), count);
            goto out;
        }
        if (i >= 10) { /* the stitcher's held queue grows 8 → 16 */
            rc = dx__gw_stitch_live(&st, e);
            if (rc) {
                assert_int_equal(rc, DX_ENOMEM);
                dx__gw_entry_unref(e);
                goto out;
            }
        }
        dx__gw_entry_unref(e);
    }
    rc = dx__gw_log_resume(log, 9, NULL, &s);
    if (rc) {
        assert_int_equal(rc, DX_ENOMEM);
        assert_int_equal(s.n, 0);
        assert_null(s.entries);
        goto out;
    }
    assert_true(s.recovered);
    assert_int_equal(dx__gw_stitch_history(&st, &s), 0);
    assert_int_equal(r.n, 16); /* 10..25 */
    dx__gw_snapshot_deinit(&s);
    rc = dx__gw_log_history(log, 0, 100, &s);
    if (rc) {
        assert_int_equal(rc, DX_ENOMEM);
        assert_int_equal(s.n, 0);
        goto out;
    }
    assert_int_equal(s.n, 20);
out:
    dx__gw_snapshot_deinit(&s);
    dx__gw_stitch_deinit(&st);
    free(r.got);
    dx__gw_log_free(log);
    return rc;
}

static void test_every_allocation_failed_once(void **state)
{
    (void)state;
    long n;
    for (n = 1;; n++) {
        dx_test_seams ts;
        dx_test_seams_init(&ts);
        ts.fail_at = n;
        int rc = scenario(&ts);
        assert_int_equal(ts.live, 0);
        if (rc == 0) {
            assert_true(ts.calls < n); /* ran whole without reaching the failure */
            break;
        }
        assert_int_equal(rc, DX_ENOMEM);
    }
    assert_true(n > 30); /* 25 entries, 3 rings, 2 queues, 2 snapshots, the log */
}

static int failing_random(void *ud, void *buf, size_t len)
{
    (void)ud;
    (void)buf;
    (void)len;
    return DX_ERANDOM;
}

static void test_random_failure(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    ts.seams.random = failing_random;
    int err = 0;
    assert_null(dx__gw_log_new(&ts.seams, NULL, &err));
    assert_int_equal(err, DX_ERANDOM);
    assert_null(dx__gw_log_new(&ts.seams, NULL, NULL));
    assert_int_equal(ts.live, 0);
    /* The default seams work too. */
    dx__gw_log *log = dx__gw_log_new(NULL, NULL, &err);
    assert_non_null(log);
    append_n(log, 3);
    dx__gw_log_free(log);
}

int main(void)
{
    dx_test_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_offsets_from_one_no_hole),
        cmocka_unit_test(test_append_bad_arguments),
        cmocka_unit_test(test_count_trimming),
        cmocka_unit_test(test_age_trimming),
        cmocka_unit_test(test_resume_cases),
        cmocka_unit_test(test_history_reads),
        cmocka_unit_test(test_offset_limit),
        cmocka_unit_test(test_prepared_frames),
        cmocka_unit_test(test_thread_entries_shared),
        cmocka_unit_test(test_stitch_randomized),
        cmocka_unit_test(test_stitch_gap_reported),
        cmocka_unit_test(test_every_allocation_failed_once),
        cmocka_unit_test(test_random_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
