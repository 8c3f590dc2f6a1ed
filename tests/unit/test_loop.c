/*
 * tests/unit/test_loop.c: src/net/loop.c — loop lifecycle (new/free, every
 * allocation failing once, no descriptors left), deferred work, the ready
 * list across a stop, "later" work, layers, and the coarse timer wheel.
 * The posting queue and cross-thread stop are in test_post.c, the public
 * ms timers in test_timer.c, fd watches in test_watch.c.
 *
 * The wheel is driven two ways. Most wheel tests replace the loop's timerfd
 * with an eventfd the test writes to: writing k there is "k ticks elapsed",
 * and calling the tick handler directly makes the wheel's behaviour exact
 * and instant (no sleeping, no machine-speed assumptions). One test runs the
 * real timerfd through dx_loop_run, with only lower bounds on elapsed time.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "net/loop.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

/* ---- lifecycle --------------------------------------------------------------- */

static void test_new_free(void **state)
{
    (void)state;
    int fds = count_fds();
    int err = 1;
    dx_loop_options o = {.log = &dx_test_quiet_log};
    dx_loop *loop = dx_loop_new(&o, &err);
    assert_non_null(loop);
    assert_int_equal(err, 0);
    assert_int_equal(loop->timers, 0);
    assert_int_equal(loop->tick, 0);
    dx_loop_free(loop);
    dx_loop_free(NULL);
    assert_int_equal(count_fds(), fds);
    /* NULL options and NULL err are allowed */
    loop = dx_loop_new(NULL, NULL);
    assert_non_null(loop);
    dx_loop_free(loop);
}

static void test_new_every_allocation_fails_once(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx_loop_options o = {.seams = &ts.seams, .log = &dx_test_quiet_log};
    dx_loop *loop = dx_loop_new(&o, NULL);
    assert_non_null(loop);
    long n = ts.calls;
    assert_true(n >= 1);
    dx_loop_free(loop);
    assert_int_equal(ts.live, 0);
    int fds = count_fds();
    for (long i = 1; i <= n; i++) {
        dx_test_seams_init(&ts);
        ts.fail_at = i;
        int err = 0;
        loop = dx_loop_new(&o, &err);
        assert_null(loop);
        assert_int_equal(err, DX_ENOMEM);
        assert_int_equal(ts.live, 0);
        assert_int_equal(count_fds(), fds);
    }
}

/* Descriptor exhaustion at each of epoll, eventfd and timerfd: DX_EIO, no
 * descriptor or memory leaked. */
static void test_new_without_descriptors(void **state)
{
    (void)state;
    struct rlimit old;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
    /* the lowest free descriptor: the limit is set just above it */
    int probe = dup(0);
    assert_true(probe >= 0);
    close(probe);
    int fds = count_fds();
    for (int k = 0; k < 3; k++) {
        dx_test_seams ts;
        dx_test_seams_init(&ts);
        dx_loop_options o = {.seams = &ts.seams, .log = &dx_test_quiet_log};
        struct rlimit lim = old;
        lim.rlim_cur = (rlim_t)(probe + k);
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &lim), 0);
        int err = 0;
        dx_loop *loop = dx_loop_new(&o, &err);
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
        assert_null(loop);
        assert_int_equal(err, DX_EIO);
        assert_int_equal(ts.live, 0);
        assert_int_equal(count_fds(), fds);
    }
}

/* ---- deferred work --------------------------------------------------------------- */

typedef struct defer_fx {
    dx_loop *loop;
    dx__deferred d[3];
    int ran[3];
    int seq;
    int ran_inside_post;
} defer_fx;

/* The deferreds sit in an array inside the fixture: find it from d. */
static defer_fx *g_defer;

static void deferred_record(dx_loop *loop, dx__deferred *d)
{
    (void)loop;
    defer_fx *f = g_defer;
    size_t i = (size_t)(d - f->d);
    f->ran[i] = ++f->seq;
    if (i == 2)
        dx_loop_stop(f->loop);
}

static void post_defers(void *p)
{
    defer_fx *f = p;
    /* inside a batch (posts run from the wake-up event): not yet */
    dx__loop_defer(f->loop, &f->d[1]);
    dx__loop_defer(f->loop, &f->d[2]);
    f->ran_inside_post = f->ran[1] || f->ran[2];
}

static void test_defer_runs_after_batch(void **state)
{
    (void)state;
    static defer_fx f;
    memset(&f, 0, sizeof f);
    g_defer = &f;
    dx_loop_options o = {.log = &dx_test_quiet_log};
    f.loop = dx_loop_new(&o, NULL);
    assert_non_null(f.loop);
    for (int i = 0; i < 3; i++)
        f.d[i].fn = deferred_record;
    /* outside a batch: at once */
    dx__loop_defer(f.loop, &f.d[0]);
    assert_int_equal(f.ran[0], 1);
    assert_int_equal(dx_loop_post(f.loop, post_defers, &f), 0);
    assert_int_equal(dx_loop_run(f.loop), 0);
    assert_int_equal(f.ran_inside_post, 0);
    assert_int_equal(f.ran[1], 2); /* in the order deferred */
    assert_int_equal(f.ran[2], 3);
    dx_loop_free(f.loop);
    g_defer = NULL;
}

/* ---- the ready list --------------------------------------------------------------- */

/* Three descriptors whose transports "hold input" (marked ready by hand).
 * In the first round, 0 stops and frees 1 (same round: 1 must not be
 * served), then 2 stops and frees 0, which had marked itself for the next
 * round (it must leave that list too). As a connection's callback closing a
 * TLS connection with buffered input would: under ASan a stale entry is a
 * use-after-free. */
typedef struct rio {
    dx__io io;
    int idx;
} rio;

static rio *g_rio[3];
static int g_served[3];
static const int g_kill[3] = {1, -1, 0};
static dx_loop *g_rloop;

static void rio_free(int i)
{
    dx__io_stop(g_rloop, &g_rio[i]->io);
    close(g_rio[i]->io.fd);
    free(g_rio[i]);
    g_rio[i] = NULL;
}

static void rio_cb(dx__io *io, uint32_t events)
{
    (void)events;
    rio *r = dx_list_entry(io, rio, io);
    g_served[r->idx]++;
    int k = g_kill[r->idx];
    if (k >= 0 && g_rio[k])
        rio_free(k);
    dx__loop_ready(g_rloop, io); /* again: the next round, not this one */
    dx__loop_ready(g_rloop, io); /* twice is once */
    dx_loop_stop(g_rloop);
}

static void test_ready_entry_leaves_on_stop(void **state)
{
    (void)state;
    dx_loop_options o = {.log = &dx_test_quiet_log};
    g_rloop = dx_loop_new(&o, NULL);
    assert_non_null(g_rloop);
    for (int i = 0; i < 3; i++) {
        g_rio[i] = calloc(1, sizeof *g_rio[i]);
        assert_non_null(g_rio[i]);
        g_rio[i]->idx = i;
        g_rio[i]->io = (dx__io){.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), .cb = rio_cb};
        assert_int_equal(dx__io_start(g_rloop, &g_rio[i]->io, EPOLLIN), 0); /* never readable */
        dx__loop_ready(g_rloop, &g_rio[i]->io);
    }
    assert_int_equal(dx_loop_run(g_rloop), 0); /* returns: nothing blocks with ready work */
    assert_int_equal(g_served[0], 1);
    assert_int_equal(g_served[1], 0); /* freed by 0 in the same round */
    assert_int_equal(g_served[2], 1);
    assert_null(g_rio[0]);
    assert_null(g_rio[1]);
    assert_int_equal(dx_loop_run(g_rloop), 0); /* only 2 is left, marked once */
    assert_int_equal(g_served[0], 1);
    assert_int_equal(g_served[2], 2);
    rio_free(2); /* leaves the list: the loop may be freed */
    dx_loop_free(g_rloop);
}

/* Deferred work queued outside dx_loop_run waits for it (no callback runs
 * inside the caller), and deferred work queued by deferred work runs in the
 * next iteration of the same dx_loop_run (no sleep in between), still
 * "dispatching". */
static int g_later_ran, g_later_dispatching;
static dx__deferred g_later[2];
static void later_fn(dx_loop *loop, dx__deferred *d)
{
    g_later_ran++;
    g_later_dispatching += dx__loop_dispatching(loop);
    if (d == &g_later[0])
        dx__loop_later(loop, &g_later[1]);
    else
        dx_loop_stop(loop);
}

static void test_later_waits_for_the_loop(void **state)
{
    (void)state;
    dx_loop_options o = {.log = &dx_test_quiet_log};
    dx_loop *loop = dx_loop_new(&o, NULL);
    assert_non_null(loop);
    g_later[0].fn = g_later[1].fn = later_fn;
    dx_list_init(&g_later[1].node);
    dx__loop_later(loop, &g_later[0]);
    assert_int_equal(g_later_ran, 0);
    dx__loop_cancel(&g_later[1]); /* not queued: a no-op */
    assert_int_equal(dx_loop_run(loop), 0); /* does not sleep: work is waiting */
    assert_int_equal(g_later_ran, 2);
    assert_int_equal(g_later_dispatching, 2);
    /* cancelled work does not run */
    dx__loop_later(loop, &g_later[0]);
    dx__loop_cancel(&g_later[0]);
    dx_loop_stop(loop);
    assert_int_equal(dx_loop_run(loop), 0);
    assert_int_equal(g_later_ran, 2);
    dx_loop_free(loop);
}

/* ---- layers: per-loop contexts and the before-sleep hook ---------------------- */

typedef struct layer_fx {
    dx_loop *loop;
    int sleeps;       /* before_sleep calls */
    int destroyed;
    int posted_ran;   /* the post ran before the hook that follows it */
    int order_ok;
    dx__deferred d;
    int deferred_ran;
} layer_fx;

static const char layer_key_a, layer_key_b;

static void layer_deferred(dx_loop *loop, dx__deferred *d)
{
    (void)loop;
    layer_fx *f = dx_list_entry(d, layer_fx, d);
    f->deferred_ran++;
}

static void layer_sleep(dx_loop *loop, void *ctx)
{
    layer_fx *f = ctx;
    f->sleeps++;
    if (f->posted_ran && f->sleeps >= 2) {
        /* work deferred by a hook runs before the loop sleeps, then the
         * hook runs again (it may have produced more for the hook) */
        if (f->deferred_ran == 0 && !dx_list_linked(&f->d.node)) {
            f->d.fn = layer_deferred;
            dx__loop_defer(loop, &f->d);
            f->order_ok = loop->in_batch; /* hooks run as part of a batch */
        } else if (f->deferred_ran) {
            dx_loop_stop(loop);
        }
    }
}

static void layer_destroy(dx_loop *loop, void *ctx)
{
    (void)loop;
    ((layer_fx *)ctx)->destroyed++;
}

static void layer_post(void *arg) { ((layer_fx *)arg)->posted_ran = 1; }

static void test_layers(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx_loop_options o = {.seams = &ts.seams, .log = &dx_test_quiet_log};
    layer_fx f = {0};
    dx_list_init(&f.d.node);
    f.loop = dx_loop_new(&o, NULL);
    assert_non_null(f.loop);
    assert_null(dx__loop_ctx(f.loop, &layer_key_a));
    dx__loop_layer l = {.key = &layer_key_a, .ctx = &f, .before_sleep = layer_sleep, .destroy = layer_destroy};
    assert_int_equal(dx__loop_attach(f.loop, &l), 0);
    assert_ptr_equal(dx__loop_ctx(f.loop, &layer_key_a), &f);
    assert_null(dx__loop_ctx(f.loop, &layer_key_b));
    assert_int_equal(dx__loop_attach(f.loop, &l), DX_EINVAL); /* the same key twice */
    /* a bounded number of layers */
    static const char more[DX_LOOP_LAYERS];
    for (size_t i = 1; i < DX_LOOP_LAYERS; i++) {
        dx__loop_layer x = {.key = &more[i]};
        assert_int_equal(dx__loop_attach(f.loop, &x), 0);
    }
    dx__loop_layer x = {.key = &layer_key_b};
    assert_int_equal(dx__loop_attach(f.loop, &x), DX_ELIMIT);

    assert_int_equal(dx_loop_post(f.loop, layer_post, &f), 0);
    assert_int_equal(dx_loop_run(f.loop), 0);
    assert_true(f.sleeps >= 3);
    assert_int_equal(f.deferred_ran, 1);
    assert_true(f.order_ok);
    assert_int_equal(f.destroyed, 0);
    dx_loop_free(f.loop);
    assert_int_equal(f.destroyed, 1); /* the destructor runs once, at free */
    assert_int_equal(ts.live, 0);
}

/* ---- timers, driven tick by tick ------------------------------------------------- */

/* Swaps the loop's timerfd for an eventfd the test controls. */
static void fake_clock(dx_loop *loop)
{
    dx__io_stop(loop, &loop->timer_io);
    close(loop->timerfd);
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    assert_true(efd >= 0);
    loop->timerfd = efd;
    loop->timer_io.fd = efd;
}

/* `n` ticks elapse and the loop notices them in one wake-up. */
static void ticks(dx_loop *loop, uint64_t n)
{
    assert_int_equal(write(loop->timerfd, &n, sizeof n), (ssize_t)sizeof n);
    loop->timer_io.cb(&loop->timer_io, EPOLLIN);
}

typedef struct tfx {
    dx_loop *loop;
    dx_test_seams ts;
    struct tm_ {
        dx__timer t;
        struct tfx *f;
        int fired;
        uint64_t fired_tick;
        int action;      /* what the callback does */
        struct tm_ *other;
        uint64_t ms;
        int limit;
    } tm[8];
    int order[64];
    int norder;
} tfx;

typedef struct tm_ tm_;

enum { ACT_NONE, ACT_STOP_OTHER, ACT_RESTART_OTHER, ACT_REARM_SELF, ACT_STOP_SELF };

static void tm_cb(dx__timer *t)
{
    tm_ *m = dx_list_entry(t, tm_, t);
    tfx *f = m->f;
    m->fired++;
    m->fired_tick = f->loop->tick;
    if (f->norder < 64)
        f->order[f->norder++] = (int)(m - f->tm);
    assert_false(dx__timer_armed(t)); /* unlinked before its callback */
    switch (m->action) {
    case ACT_STOP_OTHER:
        dx__timer_stop(f->loop, &m->other->t);
        break;
    case ACT_RESTART_OTHER:
        dx__timer_start(f->loop, &m->other->t, m->ms);
        break;
    case ACT_REARM_SELF:
        if (m->fired < m->limit)
            dx__timer_start(f->loop, t, m->ms);
        break;
    case ACT_STOP_SELF:
        dx__timer_stop(f->loop, t); /* already unlinked: a no-op */
        break;
    default:
        break;
    }
}

static int tfx_setup(void **state)
{
    tfx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    dx_test_seams_init(&f->ts);
    dx_loop_options o = {.seams = &f->ts.seams, .log = &dx_test_quiet_log};
    f->loop = dx_loop_new(&o, NULL);
    assert_non_null(f->loop);
    fake_clock(f->loop);
    for (int i = 0; i < 8; i++) {
        dx__timer_init(&f->tm[i].t, tm_cb);
        f->tm[i].f = f;
    }
    *state = f;
    return 0;
}

static int tfx_teardown(void **state)
{
    tfx *f = *state;
    for (int i = 0; i < 8; i++)
        dx__timer_stop(f->loop, &f->tm[i].t);
    assert_int_equal(f->loop->timers, 0);
    dx_loop_free(f->loop);
    assert_int_equal(f->ts.live, 0);
    free(f);
    return 0;
}

static void test_timer_rounding_and_exact_tick(void **state)
{
    tfx *f = *state;
    /* ms → ticks: rounded up, at least one */
    const uint64_t ms[] = {0, 1, 250, 251, 500, 1000};
    const uint64_t want[] = {1, 1, 1, 2, 2, 4};
    for (int i = 0; i < 6; i++)
        dx__timer_start(f->loop, &f->tm[i].t, ms[i]);
    assert_int_equal(f->loop->timers, 6);
    for (int i = 0; i < 6; i++)
        assert_true(dx__timer_armed(&f->tm[i].t));
    for (uint64_t k = 1; k <= 5; k++) {
        ticks(f->loop, 1);
        for (int i = 0; i < 6; i++)
            assert_int_equal(f->tm[i].fired, k >= want[i] ? 1 : 0);
    }
    for (int i = 0; i < 6; i++) {
        assert_int_equal(f->tm[i].fired_tick, want[i]);
        assert_false(dx__timer_armed(&f->tm[i].t));
    }
    assert_int_equal(f->loop->timers, 0);
}

static void test_timer_catch_up_and_clock(void **state)
{
    tfx *f = *state;
    dx__timer_start(f->loop, &f->tm[0].t, 750);  /* tick 3 */
    dx__timer_start(f->loop, &f->tm[1].t, 2500); /* tick 10 */
    f->ts.now = 123456789000000ull; /* ns */
    ticks(f->loop, 12); /* a late wake-up: every missed tick is visited */
    assert_int_equal(f->loop->tick, 12);
    assert_int_equal(f->tm[0].fired_tick, 3);
    assert_int_equal(f->tm[1].fired_tick, 10);
    assert_int_equal(f->loop->now_ms, 123456789u); /* refreshed from the seams' clock */
    assert_int_equal(f->order[0], 0);
    assert_int_equal(f->order[1], 1);
    /* a very late wake-up catches up at most one wheel's worth of ticks */
    ticks(f->loop, 3 * DX_WHEEL_SLOTS);
    assert_int_equal(f->loop->tick, 12 + DX_WHEEL_SLOTS);
}

static void test_timer_stop_and_restart(void **state)
{
    tfx *f = *state;
    dx__timer_start(f->loop, &f->tm[0].t, 500);
    dx__timer_stop(f->loop, &f->tm[0].t);
    dx__timer_stop(f->loop, &f->tm[0].t); /* twice: harmless */
    assert_int_equal(f->loop->timers, 0);
    /* an initialised, never-started timer can be stopped */
    dx__timer_stop(f->loop, &f->tm[2].t);
    /* restarting an armed timer moves it */
    dx__timer_start(f->loop, &f->tm[1].t, 1000); /* due 4 */
    ticks(f->loop, 2);
    dx__timer_start(f->loop, &f->tm[1].t, 1000); /* now due 6 */
    assert_int_equal(f->loop->timers, 1);
    ticks(f->loop, 3);
    assert_int_equal(f->tm[1].fired, 0);
    ticks(f->loop, 1);
    assert_int_equal(f->tm[1].fired, 1);
    assert_int_equal(f->tm[1].fired_tick, 6);
    ticks(f->loop, 10);
    assert_int_equal(f->tm[0].fired, 0);
    assert_int_equal(f->tm[1].fired, 1);
    assert_int_equal(f->loop->timers, 0);
}

static void test_timer_stops_other_expired_same_tick(void **state)
{
    tfx *f = *state;
    /* 0 fires first (armed first) and stops 1, due the same tick */
    f->tm[0].action = ACT_STOP_OTHER;
    f->tm[0].other = &f->tm[1];
    dx__timer_start(f->loop, &f->tm[0].t, 500);
    dx__timer_start(f->loop, &f->tm[1].t, 500);
    /* 2 restarts 3 (same tick) for one tick later: 3 must not fire now */
    f->tm[2].action = ACT_RESTART_OTHER;
    f->tm[2].other = &f->tm[3];
    f->tm[2].ms = 0;
    dx__timer_start(f->loop, &f->tm[2].t, 500);
    dx__timer_start(f->loop, &f->tm[3].t, 500);
    /* 4 stops itself inside its callback: no double decrement */
    f->tm[4].action = ACT_STOP_SELF;
    dx__timer_start(f->loop, &f->tm[4].t, 500);
    assert_int_equal(f->loop->timers, 5);
    ticks(f->loop, 2);
    assert_int_equal(f->tm[0].fired, 1);
    assert_int_equal(f->tm[1].fired, 0);
    assert_int_equal(f->tm[2].fired, 1);
    assert_int_equal(f->tm[3].fired, 0);
    assert_int_equal(f->tm[4].fired, 1);
    assert_int_equal(f->loop->timers, 1); /* 3, re-armed */
    ticks(f->loop, 1);
    assert_int_equal(f->tm[3].fired, 1);
    assert_int_equal(f->tm[3].fired_tick, 3);
    ticks(f->loop, 300);
    assert_int_equal(f->tm[1].fired, 0);
    assert_int_equal(f->loop->timers, 0);
}

static void test_timer_rearms_itself(void **state)
{
    tfx *f = *state;
    f->tm[0].action = ACT_REARM_SELF;
    f->tm[0].ms = 0; /* the next tick, not this one again */
    f->tm[0].limit = 10;
    f->tm[1].action = ACT_REARM_SELF;
    f->tm[1].ms = 750;
    f->tm[1].limit = 3;
    dx__timer_start(f->loop, &f->tm[0].t, 0);
    dx__timer_start(f->loop, &f->tm[1].t, 750);
    ticks(f->loop, 1);
    assert_int_equal(f->tm[0].fired, 1); /* once per tick, no spin */
    ticks(f->loop, 20);
    assert_int_equal(f->tm[0].fired, 10);
    assert_int_equal(f->tm[0].fired_tick, 10);
    assert_int_equal(f->tm[1].fired, 3);
    assert_int_equal(f->tm[1].fired_tick, 9);
    assert_int_equal(f->loop->timers, 0);
}

typedef struct many {
    dx__timer t;
    uint64_t fired_tick;
    int fired;
} many;

static dx_loop *g_many_loop;

static void many_cb(dx__timer *t)
{
    many *m = dx_list_entry(t, many, t);
    m->fired++;
    m->fired_tick = g_many_loop->tick;
}

static void test_timer_many_in_one_slot_and_beyond_horizon(void **state)
{
    tfx *f = *state;
    enum { N = 3000 };
    many *m = calloc(N, sizeof *m);
    assert_non_null(m);
    g_many_loop = f->loop;
    /* timers that share slot 5: due 5, 5 + 256, 5 + 512, 5 + 1024 (the
     * horizon is DX_WHEEL_SLOTS ticks: the later rounds must wait) */
    const uint64_t rounds[] = {0, 1, 2, 4};
    for (size_t i = 0; i < N; i++) {
        dx__timer_init(&m[i].t, many_cb);
        uint64_t due = 5 + rounds[i % 4] * DX_WHEEL_SLOTS;
        dx__timer_start(f->loop, &m[i].t, due * DX_TICK_MS);
    }
    /* exactly one horizon, and one tick either side of it */
    dx__timer_start(f->loop, &f->tm[0].t, (uint64_t)DX_WHEEL_SLOTS * DX_TICK_MS);
    dx__timer_start(f->loop, &f->tm[1].t, (uint64_t)(DX_WHEEL_SLOTS - 1) * DX_TICK_MS);
    dx__timer_start(f->loop, &f->tm[2].t, (uint64_t)(DX_WHEEL_SLOTS + 1) * DX_TICK_MS);
    assert_int_equal(f->loop->timers, N + 3);
    uint64_t end = 5 + 4 * DX_WHEEL_SLOTS + 3;
    while (f->loop->tick < end) {
        uint64_t step = (f->loop->tick * 7 + 3) % 40 + 1; /* uneven wake-ups */
        if (f->loop->tick + step > end)
            step = end - f->loop->tick;
        ticks(f->loop, step);
        for (size_t i = 0; i < N; i++) {
            uint64_t due = 5 + rounds[i % 4] * DX_WHEEL_SLOTS;
            assert_int_equal(m[i].fired, f->loop->tick >= due ? 1 : 0);
        }
    }
    for (size_t i = 0; i < N; i++)
        assert_int_equal(m[i].fired_tick, 5 + rounds[i % 4] * DX_WHEEL_SLOTS);
    assert_int_equal(f->tm[0].fired_tick, DX_WHEEL_SLOTS);
    assert_int_equal(f->tm[1].fired_tick, DX_WHEEL_SLOTS - 1);
    assert_int_equal(f->tm[2].fired_tick, DX_WHEEL_SLOTS + 1);
    assert_int_equal(f->loop->timers, 0);
    free(m);
}

/* ---- the real timerfd ----------------------------------------------------------- */

typedef struct real_fx {
    dx_loop *loop;
    dx__timer t, guard;
    uint64_t started_ms, fired_ms, due, fired_tick;
    int fired, guard_fired;
} real_fx;

static real_fx *g_real;

static void real_cb(dx__timer *t)
{
    (void)t;
    real_fx *f = g_real;
    f->fired++;
    f->fired_ms = dx_test_mono_ms();
    f->fired_tick = f->loop->tick;
    dx_loop_stop(f->loop);
}

static void guard_cb(dx__timer *t)
{
    (void)t;
    g_real->guard_fired = 1;
    dx_loop_stop(g_real->loop);
}

static void test_timer_real_ticks(void **state)
{
    (void)state;
    static real_fx f;
    memset(&f, 0, sizeof f);
    g_real = &f;
    dx_loop_options o = {.log = &dx_test_quiet_log};
    f.loop = dx_loop_new(&o, NULL);
    assert_non_null(f.loop);
    dx__timer_init(&f.t, real_cb);
    dx__timer_init(&f.guard, guard_cb);
    f.started_ms = dx_test_mono_ms();
    dx__timer_start(f.loop, &f.t, 3 * DX_TICK_MS);
    f.due = f.loop->tick + 3;
    dx__timer_start(f.loop, &f.guard, 200 * DX_TICK_MS); /* 50 s: only if broken */
    assert_int_equal(dx_loop_run(f.loop), 0);
    assert_int_equal(f.guard_fired, 0);
    assert_int_equal(f.fired, 1);
    assert_int_equal(f.fired_tick, f.due);
    /* not early: at least two whole ticks passed (the first may be partial) */
    assert_true(f.fired_ms - f.started_ms >= 2 * DX_TICK_MS - 5);
    dx__timer_stop(f.loop, &f.guard);
    assert_int_equal(f.loop->timers, 0);
    dx_loop_free(f.loop);
    g_real = NULL;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_free),
        cmocka_unit_test(test_new_every_allocation_fails_once),
        cmocka_unit_test(test_new_without_descriptors),
        cmocka_unit_test(test_defer_runs_after_batch),
        cmocka_unit_test(test_ready_entry_leaves_on_stop),
        cmocka_unit_test(test_later_waits_for_the_loop),
        cmocka_unit_test(test_layers),
        cmocka_unit_test_setup_teardown(test_timer_rounding_and_exact_tick, tfx_setup, tfx_teardown),
        cmocka_unit_test_setup_teardown(test_timer_catch_up_and_clock, tfx_setup, tfx_teardown),
        cmocka_unit_test_setup_teardown(test_timer_stop_and_restart, tfx_setup, tfx_teardown),
        cmocka_unit_test_setup_teardown(test_timer_stops_other_expired_same_tick, tfx_setup, tfx_teardown),
        cmocka_unit_test_setup_teardown(test_timer_rearms_itself, tfx_setup, tfx_teardown),
        cmocka_unit_test_setup_teardown(test_timer_many_in_one_slot_and_beyond_horizon, tfx_setup, tfx_teardown),
        cmocka_unit_test(test_timer_real_ticks),
    };
    dx_test_filter_from_env();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
