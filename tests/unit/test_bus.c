/*
 * tests/unit/test_bus.c: src/bus/local.c, the in-process bus: topic owners
 * sequencing publishes from every worker thread, one hand-off per worker,
 * per-topic order on every worker, interest, the subscribe/live seam
 * (stitched to exactly once), presence, disconnect fan-in, history of an
 * unknown topic, and completions when the bus is freed with requests
 * queued. Tests named test_thread_* run workers on threads: ctest label
 * "tsan" runs them under ThreadSanitizer too.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "bus/bus.h"
#include "net/loop.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define NW 3
#define NTOPIC 4
#define NPUB 300 /* per worker per topic */

typedef struct wstate {
    unsigned index;
    dx_loop *loop;
    pthread_t th;
    /* written on this worker's thread only */
    uint64_t last[NTOPIC];     /* last offset delivered per topic */
    uint64_t got[NTOPIC];
    uint64_t disorder;
    size_t disc_users;         /* what disconnect_user answers */
    dx__gw_stitch st;          /* test_thread_subscribe_seam */
    uint64_t st_next, st_bad, st_n;
    bool stitching;
    uint64_t flushes;          /* batches the bus reported done */
} wstate;

typedef struct bus_fx {
    dx__bus *bus;
    wstate w[NW];
    _Atomic unsigned done;
    _Atomic unsigned errors;
    _Atomic uint64_t offsets_sum;
} bus_fx;

static int topic_index(const dx__bus_topic *t)
{
    return t->name[1] - '0'; /* "t0".."t3" */
}

static void ev_deliver(void *ud, dx__bus_topic *t, dx__gw_entry *e)
{
    wstate *w = ud;
    if (w->stitching && strcmp(t->name, "seam") == 0) {
        if (dx__gw_stitch_live(&w->st, e) != 0)
            w->st_bad++;
        return;
    }
    if (t->name[0] != 't')
        return;
    int i = topic_index(t);
    uint64_t off = dx__gw_entry_offset(e);
    if (off != w->last[i] + 1)
        w->disorder++;
    w->last[i] = off;
    w->got[i]++;
}

static size_t ev_disconnect(void *ud, const char *user, size_t len)
{
    wstate *w = ud;
    return len == 3 && memcmp(user, "bob", 3) == 0 ? w->disc_users : 0;
}

static void ev_flush(void *ud)
{
    ((wstate *)ud)->flushes++;
}

static const dx__bus_events events = {ev_deliver, ev_disconnect, ev_flush, NULL};

static void fx_start(bus_fx *f, bool threads)
{
    memset(f, 0, sizeof *f);
    dx__bus_local_opts o = {.workers = NW};
    dx__gw_log_opts_default(&o.history);
    int err = 0;
    f->bus = dx__bus_local_new(&o, &err);
    assert_non_null(f->bus);
    for (unsigned i = 0; i < NW; i++) {
        f->w[i].index = i;
        f->w[i].loop = dx_loop_new(NULL, &err);
        assert_non_null(f->w[i].loop);
        assert_int_equal(dx__bus_attach(f->bus, i, f->w[i].loop, &events, &f->w[i]), 0);
        if (threads)
            assert_int_equal(pthread_create(&f->w[i].th, NULL, dx_test_loop_thread, f->w[i].loop), 0);
    }
}

static void sync_loop(void *arg)
{
    wstate **pw = arg;
    (void)pw;
}

static void fx_stop(bus_fx *f, bool threads)
{
    for (unsigned i = 0; i < NW; i++) {
        if (threads) {
            dx_test_on_loop(f->w[i].loop, sync_loop, NULL);
            dx_loop_stop(f->w[i].loop);
            pthread_join(f->w[i].th, NULL);
        }
    }
    dx__bus_free(f->bus);
    for (unsigned i = 0; i < NW; i++)
        dx_loop_free(f->w[i].loop);
}

/* ---- publishing from every worker ------------------------------------------------ */

static void pub_done(void *ud, int err, uint64_t offset, const char *epoch)
{
    bus_fx *f = ud;
    if (err || strlen(epoch) != DX__GW_EPOCH_LEN || offset == 0)
        atomic_fetch_add(&f->errors, 1);
    atomic_fetch_add(&f->offsets_sum, offset);
    atomic_fetch_add(&f->done, 1);
}

typedef struct pub_arg {
    bus_fx *f;
    unsigned w;
} pub_arg;

static void publish_many(void *arg)
{
    pub_arg *a = arg;
    char name[3] = {'t', '0', 0};
    for (int k = 0; k < NPUB; k++) {
        for (int t = 0; t < NTOPIC; t++) {
            name[1] = (char)('0' + t);
            assert_int_equal(dx__bus_publish(a->f->bus, a->w, name, 2, DX__GW_KIND_TEXT, "x", 1, pub_done, a->f), 0);
        }
    }
}

static void set_interest(void *arg)
{
    pub_arg *a = arg;
    dx__bus_interest(a->f->bus, a->w, 1);
}

static void wait_done(bus_fx *f, unsigned n)
{
    uint64_t until = dx_test_mono_ms() + 30000;
    while (atomic_load(&f->done) < n) {
        if (dx_test_mono_ms() > until)
            fail_msg("only %u of %u completions", atomic_load(&f->done), n);
        usleep(1000);
    }
}

typedef struct read_arg {
    wstate *w;
    uint64_t got[NTOPIC], last[NTOPIC], disorder, flushes;
} read_arg;

static void read_state(void *arg)
{
    read_arg *r = arg;
    memcpy(r->got, r->w->got, sizeof r->got);
    memcpy(r->last, r->w->last, sizeof r->last);
    r->disorder = r->w->disorder;
    r->flushes = r->w->flushes;
}

/* Every worker publishes on 4 topics at once; workers 0 and 2 hold
 * interest, worker 1 none. Each interested worker sees every topic's
 * offsets 1..N in order exactly once; worker 1 sees nothing; each offset
 * was given once (their sum is N(N+1)/2 per topic). */
static void test_thread_fanout_order(void **state)
{
    (void)state;
    bus_fx f;
    fx_start(&f, true);
    pub_arg a[NW];
    for (unsigned i = 0; i < NW; i++) {
        a[i] = (pub_arg){&f, i};
        if (i != 1)
            dx_test_on_loop(f.w[i].loop, set_interest, &a[i]);
    }
    for (unsigned i = 0; i < NW; i++)
        assert_int_equal(dx_loop_post(f.w[i].loop, publish_many, &a[i]), 0);
    const unsigned total = NW * NPUB * NTOPIC;
    wait_done(&f, total);
    assert_int_equal(atomic_load(&f.errors), 0);
    uint64_t n = NW * NPUB;
    assert_int_equal(atomic_load(&f.offsets_sum), NTOPIC * n * (n + 1) / 2);
    /* deliveries reach the workers in their queues after the completions of
     * other workers' publishes: wait until both interested workers have all */
    uint64_t until = dx_test_mono_ms() + 30000;
    for (unsigned i = 0; i < NW; i++) {
        read_arg r = {.w = &f.w[i]};
        for (;;) {
            dx_test_on_loop(f.w[i].loop, read_state, &r);
            bool all = true;
            for (int t = 0; t < NTOPIC; t++)
                if (r.got[t] != (i == 1 ? 0 : n))
                    all = false;
            if (all || i == 1 || dx_test_mono_ms() > until)
                break;
            usleep(1000);
        }
        assert_int_equal(r.disorder, 0);
        if (i != 1) /* deliveries come in batches, each followed by a flush */
            assert_true(r.flushes >= 1 && r.flushes <= r.got[0] * NTOPIC + 3 * NW * NPUB * NTOPIC);
        for (int t = 0; t < NTOPIC; t++) {
            assert_int_equal(r.got[t], i == 1 ? 0 : n);
            if (i != 1)
                assert_int_equal(r.last[t], n);
        }
    }
    dx__bus_stats st;
    dx__bus_stats_get(f.bus, &st);
    assert_int_equal(st.topics, NTOPIC);
    assert_int_equal(st.history_msgs, NTOPIC * n);
    /* one hand-off per publish per other interested worker: at most 2 per publish */
    assert_true(st.handoffs <= 2 * NTOPIC * n);
    assert_true(st.handoffs >= NTOPIC * n);
    fx_stop(&f, true);
}

/* ---- the subscribe/live seam ------------------------------------------------------- */

static void seam_deliver(void *ud, dx__gw_entry *e)
{
    wstate *w = ud;
    if (dx__gw_entry_offset(e) != w->st_next)
        w->st_bad++;
    w->st_next = dx__gw_entry_offset(e) + 1;
    w->st_n++;
}

static void seam_gap(void *ud, uint64_t from, uint64_t to)
{
    (void)from;
    (void)to;
    ((wstate *)ud)->st_bad++;
}

static const dx__gw_stitch_ops seam_ops = {seam_deliver, seam_gap};

static void seam_snap(void *ud, int err, dx__bus_topic *t, dx__gw_snapshot *snap)
{
    wstate *w = ud;
    (void)t;
    if (err || !snap->recovered)
        w->st_bad++;
    assert_int_equal(dx__gw_stitch_history(&w->st, snap), 0);
}

typedef struct seam_arg {
    bus_fx *f;
    unsigned w;
    int n;
} seam_arg;

static void seam_publish(void *arg)
{
    seam_arg *a = arg;
    for (int k = 0; k < a->n; k++)
        assert_int_equal(dx__bus_publish(a->f->bus, a->w, "seam", 4, DX__GW_KIND_TEXT, "y", 1, pub_done, a->f), 0);
}

static void seam_subscribe(void *arg)
{
    seam_arg *a = arg;
    wstate *w = &a->f->w[a->w];
    dx__gw_stitch_init(&w->st, NULL, &seam_ops, w);
    w->st_next = 1;
    w->stitching = true;
    dx__bus_interest(a->f->bus, a->w, 1); /* registered before the read */
    assert_int_equal(dx__bus_subscribe(a->f->bus, a->w, "seam", 4, NULL, 0, true, true, 0, NULL, 0, seam_snap, w), 0);
}

static void seam_read(void *arg)
{
    seam_arg *a = arg;
    wstate *w = &a->f->w[a->w];
    a->n = (int)w->st_n;
    if (w->st_bad)
        a->n = -1;
}

static void seam_end(void *arg)
{
    seam_arg *a = arg;
    wstate *w = &a->f->w[a->w];
    w->stitching = false;
    dx__gw_stitch_deinit(&w->st);
}

/* A worker subscribes with since 0 while two others publish: whatever the
 * interleaving of the snapshot and the live entries, the subscriber sees
 * 1..N once each, in order. Repeated with the subscriber on each worker
 * (one of them owns "seam"). */
static void test_thread_subscribe_seam(void **state)
{
    (void)state;
    for (unsigned sw = 0; sw < NW; sw++) {
        bus_fx f;
        fx_start(&f, true);
        seam_arg p1 = {&f, (sw + 1) % NW, 400}, p2 = {&f, (sw + 2) % NW, 400}, s = {&f, sw, 0};
        assert_int_equal(dx_loop_post(f.w[p1.w].loop, seam_publish, &p1), 0);
        assert_int_equal(dx_loop_post(f.w[p2.w].loop, seam_publish, &p2), 0);
        dx_test_on_loop(f.w[sw].loop, seam_subscribe, &s);
        assert_int_equal(dx_loop_post(f.w[p1.w].loop, seam_publish, &p1), 0);
        wait_done(&f, 1200);
        uint64_t until = dx_test_mono_ms() + 30000;
        for (;;) {
            dx_test_on_loop(f.w[sw].loop, seam_read, &s);
            assert_true(s.n >= 0);
            if (s.n == 1200 || dx_test_mono_ms() > until)
                break;
            usleep(1000);
        }
        assert_int_equal(s.n, 1200);
        dx_test_on_loop(f.w[sw].loop, seam_end, &s);
        fx_stop(&f, true);
    }
}

/* ---- presence, disconnect, history ------------------------------------------------------ */

typedef struct res {
    int err;
    uint64_t count;
    size_t nusers;
    char users[4][16];
    char epoch[DX__GW_EPOCH_LEN + 1];
    uint64_t offset;
    size_t n;
    int calls;
} res;

static void pres_done(void *ud, int err, uint64_t count, const char *const *users, const size_t *lens, size_t n)
{
    res *r = ud;
    r->calls++;
    r->err = err;
    r->count = count;
    r->nusers = n;
    for (size_t i = 0; i < n && i < 4; i++)
        snprintf(r->users[i], sizeof r->users[i], "%.*s", (int)lens[i], users[i]);
}

static void snap_done(void *ud, int err, dx__bus_topic *t, dx__gw_snapshot *snap)
{
    res *r = ud;
    (void)t;
    r->calls++;
    r->err = err;
    if (!err) {
        memcpy(r->epoch, snap->epoch, sizeof r->epoch);
        r->offset = snap->offset;
        r->n = snap->n;
    }
}

static void count_done(void *ud, int err, uint64_t count)
{
    res *r = ud;
    r->calls++;
    r->err = err;
    r->count = count;
}

/* Runs every worker's queue once, on this thread (no threads in these tests). */
static void run_all(bus_fx *f)
{
    for (int round = 0; round < 4; round++)
        for (unsigned i = 0; i < NW; i++)
            dx__posts_run(f->w[i].loop); /* what the loop does for posts */
}

static void test_presence_disconnect_history(void **state)
{
    (void)state;
    bus_fx f;
    fx_start(&f, false);
    res r = {0};
    /* two of alice, one of bob, one anonymous, from different workers */
    assert_int_equal(dx__bus_subscribe(f.bus, 0, "room", 4, "alice", 5, true, false, 0, NULL, 0, snap_done, &r), 0);
    assert_int_equal(dx__bus_subscribe(f.bus, 1, "room", 4, "alice", 5, true, false, 0, NULL, 0, snap_done, &r), 0);
    assert_int_equal(dx__bus_subscribe(f.bus, 2, "room", 4, "bob", 3, true, false, 0, NULL, 0, snap_done, &r), 0);
    assert_int_equal(dx__bus_subscribe(f.bus, 2, "room", 4, NULL, 0, true, false, 0, NULL, 0, snap_done, &r), 0);
    run_all(&f);
    assert_int_equal(r.calls, 4);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.offset, 0);
    res p = {0};
    assert_int_equal(dx__bus_presence(f.bus, 1, "room", 4, pres_done, &p), 0);
    assert_int_equal(p.calls, 0); /* never inside the call */
    run_all(&f);
    assert_int_equal(p.calls, 1);
    assert_int_equal(p.count, 4);
    assert_int_equal(p.nusers, 2);
    dx__bus_leave(f.bus, 0, "room", 4, "alice", 5);
    dx__bus_leave(f.bus, 2, "room", 4, "bob", 3);
    memset(&p, 0, sizeof p);
    assert_int_equal(dx__bus_presence(f.bus, 0, "room", 4, pres_done, &p), 0);
    run_all(&f);
    assert_int_equal(p.count, 2);
    assert_int_equal(p.nusers, 1);
    assert_string_equal(p.users[0], "alice");
    /* disconnect: every worker answers, the counts add up */
    f.w[0].disc_users = 2;
    f.w[2].disc_users = 3;
    res d = {0};
    assert_int_equal(dx__bus_disconnect_user(f.bus, 1, "bob", 3, count_done, &d), 0);
    run_all(&f);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.count, 5);
    /* history of a topic nobody used: offset 0, no epoch, no messages */
    res h = {0};
    assert_int_equal(dx__bus_history(f.bus, 2, "never.used", 10, 0, 100, snap_done, &h), 0);
    run_all(&f);
    assert_int_equal(h.calls, 1);
    assert_int_equal(h.err, 0);
    assert_int_equal(h.offset, 0);
    assert_int_equal(h.n, 0);
    assert_string_equal(h.epoch, "");
    fx_stop(&f, false);
}

/* dx__bus_user_conns: +1/-1 from any worker add up in one count per user
 * (the owner's), 0 reads, the count never goes below 0, completions never
 * inside the call. */
static void test_user_conns(void **state)
{
    (void)state;
    bus_fx f;
    fx_start(&f, false);
    res r = {0};
    for (unsigned i = 0; i < 5; i++)
        assert_int_equal(dx__bus_user_conns(f.bus, i % NW, "carol", 5, 1, 0, count_done, &r), 0);
    assert_int_equal(r.calls, 0);
    run_all(&f);
    assert_int_equal(r.calls, 5);
    assert_int_equal(r.err, 0);
    res o = {0};
    assert_int_equal(dx__bus_user_conns(f.bus, 2, "dave", 4, 1, 0, count_done, &o), 0);
    run_all(&f);
    assert_int_equal(o.count, 1);
    memset(&r, 0, sizeof r);
    assert_int_equal(dx__bus_user_conns(f.bus, 1, "carol", 5, 0, 0, count_done, &r), 0);
    run_all(&f);
    assert_int_equal(r.count, 5);
    for (int i = 0; i < 7; i++) /* two more -1 than +1: floored at 0 */
        assert_int_equal(dx__bus_user_conns(f.bus, (unsigned)i % NW, "carol", 5, -1, 0, count_done, &r), 0);
    run_all(&f);
    assert_int_equal(r.count, 0);
    assert_int_equal(dx__bus_user_conns(f.bus, 0, "carol", 5, 1, 0, NULL, NULL), 0); /* nobody to tell */
    run_all(&f);
    memset(&r, 0, sizeof r);
    assert_int_equal(dx__bus_user_conns(f.bus, 0, "carol", 5, 0, 0, count_done, &r), 0);
    run_all(&f);
    assert_int_equal(r.count, 1);
    /* with a limit: +1 within it is added, past it refused (DX_ELIMIT, the count unchanged) */
    memset(&r, 0, sizeof r);
    assert_int_equal(dx__bus_user_conns(f.bus, 1, "carol", 5, 1, 2, count_done, &r), 0);
    run_all(&f);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.count, 2);
    memset(&r, 0, sizeof r);
    assert_int_equal(dx__bus_user_conns(f.bus, 2, "carol", 5, 1, 2, count_done, &r), 0);
    run_all(&f);
    assert_int_equal(r.err, DX_ELIMIT);
    assert_int_equal(r.count, 2);
    memset(&r, 0, sizeof r);
    assert_int_equal(dx__bus_user_conns(f.bus, 0, "carol", 5, 0, 0, count_done, &r), 0);
    run_all(&f);
    assert_int_equal(r.count, 2);
    fx_stop(&f, false); /* the remaining counts are freed (ASan: no leak) */
}

/* Requests still queued when the bus is freed are completed with
 * DX_ECLOSED (nothing leaks under ASan, nothing is called twice). */
static void test_free_with_pending(void **state)
{
    (void)state;
    bus_fx f;
    fx_start(&f, false);
    res r = {0}, p = {0}, d = {0};
    for (int i = 0; i < 10; i++)
        assert_int_equal(dx__bus_publish(f.bus, (unsigned)i % NW, "t0", 2, DX__GW_KIND_BINARY, "z", 1, pub_done, &f), 0);
    assert_int_equal(dx__bus_subscribe(f.bus, 1, "t1", 2, "u", 1, true, true, 5, "e", 1, snap_done, &r), 0);
    assert_int_equal(dx__bus_presence(f.bus, 2, "t1", 2, pres_done, &p), 0);
    assert_int_equal(dx__bus_disconnect_user(f.bus, 0, "bob", 3, count_done, &d), 0);
    dx__bus_free(f.bus);
    f.bus = NULL;
    assert_int_equal(atomic_load(&f.done), 10);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.err, DX_ECLOSED);
    assert_int_equal(p.calls, 1);
    assert_int_equal(p.err, DX_ECLOSED);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.err, DX_ECLOSED);
    for (unsigned i = 0; i < NW; i++)
        dx_loop_free(f.w[i].loop);
}

int main(void)
{
    dx_test_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_thread_fanout_order),
        cmocka_unit_test(test_thread_subscribe_seam),
        cmocka_unit_test(test_presence_disconnect_history),
        cmocka_unit_test(test_user_conns),
        cmocka_unit_test(test_free_with_pending),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
