/*
 * tests/unit/test_post.c: src/net/post.c — the loop's bounded cross-thread
 * queue (dx_loop_post, dx_loop_post_ex) and dx_loop_stop from another
 * thread: order, the exact limit, drops at free and on ENOMEM, no starvation
 * by reposting. Tests named test_xthread_* are the cross-thread ones under
 * load: ctest label "tsan" runs them under ThreadSanitizer too
 * (tests/unit/CMakeLists.txt).
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "net/loop.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- posts and stop ------------------------------------------------------------ */

#define NPOSTS 2000

typedef struct post_fx {
    dx_loop *loop;
    pthread_t loop_thread;
    _Atomic int running;
    int order[NPOSTS];
    size_t n;
    int wrong_thread;
    int rc;
} post_fx;

typedef struct post_arg {
    post_fx *f;
    int i;
} post_arg;

static void *run_thread(void *p)
{
    post_fx *f = p;
    f->rc = dx_loop_run(f->loop);
    return NULL;
}

static void mark_running(void *p)
{
    post_fx *f = p;
    atomic_store(&f->running, 1);
}

static void record_post(void *p)
{
    post_arg *a = p;
    post_fx *f = a->f;
    if (!pthread_equal(pthread_self(), f->loop_thread))
        f->wrong_thread++;
    f->order[f->n++] = a->i;
    if (f->n == NPOSTS)
        dx_loop_stop(f->loop); /* from the loop's own thread */
}

static void wait_running(post_fx *f)
{
    uint64_t t0 = dx_test_mono_ms();
    while (!atomic_load(&f->running)) {
        assert_true(dx_test_mono_ms() - t0 < 20000);
        usleep(1000);
    }
}

static void test_post_from_other_thread_in_order(void **state)
{
    (void)state;
    static post_fx f;
    static post_arg args[NPOSTS];
    memset(&f, 0, sizeof f);
    dx_loop_options o = {.log = &dx_test_quiet_log};
    f.loop = dx_loop_new(&o, NULL);
    assert_non_null(f.loop);
    assert_int_equal(pthread_create(&f.loop_thread, NULL, run_thread, &f), 0);
    assert_int_equal(dx_loop_post(f.loop, mark_running, &f), 0);
    wait_running(&f);
    for (int i = 0; i < NPOSTS; i++) {
        args[i] = (post_arg){&f, i};
        assert_int_equal(dx_loop_post(f.loop, record_post, &args[i]), 0);
        if (i % 97 == 0)
            sched_yield(); /* let some batches run while others are queued */
    }
    assert_int_equal(pthread_join(f.loop_thread, NULL), 0);
    assert_int_equal(f.rc, 0);
    assert_int_equal(f.n, NPOSTS);
    assert_int_equal(f.wrong_thread, 0);
    for (int i = 0; i < NPOSTS; i++)
        assert_int_equal(f.order[i], i);
    dx_loop_free(f.loop);
}

static void test_stop_from_other_thread(void **state)
{
    (void)state;
    static post_fx f;
    memset(&f, 0, sizeof f);
    dx_loop_options o = {.log = &dx_test_quiet_log};
    f.loop = dx_loop_new(&o, NULL);
    assert_non_null(f.loop);
    for (int round = 0; round < 3; round++) { /* a stopped loop can run again */
        atomic_store(&f.running, 0);
        f.rc = -1;
        assert_int_equal(pthread_create(&f.loop_thread, NULL, run_thread, &f), 0);
        assert_int_equal(dx_loop_post(f.loop, mark_running, &f), 0);
        wait_running(&f);
        dx_loop_stop(f.loop);
        assert_int_equal(pthread_join(f.loop_thread, NULL), 0);
        assert_int_equal(f.rc, 0);
    }
    dx_loop_free(f.loop);
}

/*
 * dx_loop_stop called from another thread before that thread's dx_loop_run
 * has started must still make it return ("Thread-safe"): a program that
 * spawns the loop thread and is told to quit at once must not hang.
 */
static void test_stop_before_run_starts(void **state)
{
    (void)state;
    static post_fx f;
    memset(&f, 0, sizeof f);
    dx_loop_options o = {.log = &dx_test_quiet_log};
    f.loop = dx_loop_new(&o, NULL);
    assert_non_null(f.loop);
    f.rc = -1;
    dx_loop_stop(f.loop);
    assert_int_equal(pthread_create(&f.loop_thread, NULL, run_thread, &f), 0);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 3;
    int jr = pthread_timedjoin_np(f.loop_thread, NULL, &dl);
    if (jr != 0) {
        dx_loop_stop(f.loop); /* rescue the thread, then report */
        assert_int_equal(pthread_join(f.loop_thread, NULL), 0);
    }
    dx_loop_free(f.loop);
    assert_int_equal(jr, 0); /* the early stop was lost */
}

static void never_called(void *p)
{
    (void)p;
    fail_msg("a post ran after its loop was freed");
}

static int g_ran, g_dropped;
static void count_ran(void *p)
{
    (void)p;
    g_ran++;
}
static void count_drop(void *p)
{
    (void)p;
    g_dropped++;
}

/* The queue starts with 256 slots; growing past them can fail (nothing is
 * queued then, and neither fn nor drop runs), and every post left at free
 * is dropped exactly once. */
static void test_post_dropped_at_free_and_enomem(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx_loop_options o = {.seams = &ts.seams, .log = &dx_test_quiet_log, .post_max = 1000};
    dx_loop *loop = dx_loop_new(&o, NULL);
    assert_non_null(loop);
    g_ran = g_dropped = 0;
    long calls = ts.calls;
    for (int i = 0; i < 256; i++)
        assert_int_equal(dx_loop_post_ex(loop, count_ran, count_drop, NULL), 0);
    assert_int_equal(ts.calls, calls); /* no allocation per post */
    ts.fail_at = ts.calls + 1;
    assert_int_equal(dx_loop_post_ex(loop, count_ran, count_drop, NULL), DX_ENOMEM);
    ts.fail_at = 0;
    assert_int_equal(dx_loop_post_ex(loop, count_ran, count_drop, NULL), 0); /* grows now */
    assert_int_equal(dx_loop_post(loop, never_called, NULL), 0);             /* no drop: nothing to call */
    assert_int_equal(dx_loop_post(loop, NULL, NULL), DX_EINVAL);
    assert_int_equal(atomic_load(&loop->post_queued), 258);
    dx_loop_free(loop);
    assert_int_equal(g_ran, 0);
    assert_int_equal(g_dropped, 257);
    assert_int_equal(ts.live, 0);
}

/* post_max is exact; the count drops as items run (a running fn may post
 * at the bound); steady traffic allocates nothing once the arrays grew. */
typedef struct limit_fx {
    dx_loop *loop;
    int ran, reposts, limit_inside;
    int target;
} limit_fx;

static void limit_item(void *p)
{
    limit_fx *f = p;
    f->ran++;
    if (f->reposts > 0) {
        f->reposts--;
        /* the queue is full again only if this item still counted */
        if (dx_loop_post(f->loop, limit_item, f) != 0)
            f->limit_inside++;
    }
    if (f->ran == f->target)
        dx_loop_stop(f->loop);
}

static void test_post_limit_exact(void **state)
{
    (void)state;
    static limit_fx f;
    memset(&f, 0, sizeof f);
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx_loop_options o = {.seams = &ts.seams, .log = &dx_test_quiet_log, .post_max = 3};
    f.loop = dx_loop_new(&o, NULL);
    assert_non_null(f.loop);
    for (int i = 0; i < 3; i++)
        assert_int_equal(dx_loop_post(f.loop, limit_item, &f), 0);
    assert_int_equal(dx_loop_post(f.loop, limit_item, &f), DX_ELIMIT);
    assert_int_equal(dx_loop_post_ex(f.loop, limit_item, count_drop, &f), DX_ELIMIT);
    f.reposts = 10;
    f.target = 13;
    assert_int_equal(dx_loop_run(f.loop), 0);
    assert_int_equal(f.ran, 13);
    assert_int_equal(f.limit_inside, 0);
    assert_int_equal(atomic_load(&f.loop->post_queued), 0);
    dx_loop_free(f.loop);
    assert_int_equal(ts.live, 0);

    /* steady state: rounds of 1000 posts run, with no allocation after the
     * arrays have grown */
    o.post_max = 0; /* default */
    f.loop = dx_loop_new(&o, NULL);
    assert_non_null(f.loop);
    long calls = 0;
    for (int round = 0; round < 5; round++) {
        f.ran = 0;
        f.target = 1000;
        for (int i = 0; i < 1000; i++)
            assert_int_equal(dx_loop_post(f.loop, limit_item, &f), 0);
        assert_int_equal(dx_loop_run(f.loop), 0);
        assert_int_equal(f.ran, 1000);
        if (round == 1) /* both arrays (they swap each batch) have grown */
            calls = ts.calls;
        if (round >= 1)
            assert_int_equal(ts.calls, calls);
    }
    dx_loop_free(f.loop);
    assert_int_equal(ts.live, 0);
}

/*
 * A post that re-posts itself forever runs once per iteration: descriptors
 * and timers still get their turn (no starvation), and the re-post never
 * runs in the batch that made it.
 */
typedef struct starve_fx {
    dx_loop *loop;
    int p[2];
    dx_watch *w;
    dx_timer *t;
    int spins, in_spin;
    int spins_at_watch, spins_at_timer;
    int nested; /* the re-post ran while its poster was running or in its batch */
} starve_fx;

static void starve_spin(void *arg)
{
    starve_fx *f = arg;
    if (f->in_spin)
        f->nested++;
    f->in_spin = 1;
    f->spins++;
    if (f->spins == 1) {
        assert_int_equal(write(f->p[1], "x", 1), 1);
        dx_timer_start(f->t, 0, 0);
    }
    if (f->spins < 100000 && !(f->spins_at_watch && f->spins_at_timer))
        assert_int_equal(dx_loop_post(f->loop, starve_spin, f), 0);
    else
        dx_loop_stop(f->loop);
    f->in_spin = 0;
}

static void starve_watch(dx_watch *w, int fd, unsigned events, void *ud)
{
    starve_fx *f = ud;
    char c;
    assert_int_equal(events, DX_WATCH_READ);
    assert_int_equal(read(fd, &c, 1), 1);
    f->spins_at_watch = f->spins;
    dx_watch_free(w);
    f->w = NULL;
}

static void starve_timer(dx_timer *t, void *ud)
{
    (void)t;
    starve_fx *f = ud;
    f->spins_at_timer = f->spins;
}

static void test_post_reposting_does_not_starve(void **state)
{
    (void)state;
    static starve_fx f;
    memset(&f, 0, sizeof f);
    dx_loop_options o = {.log = &dx_test_quiet_log};
    f.loop = dx_loop_new(&o, NULL);
    assert_non_null(f.loop);
    assert_int_equal(pipe(f.p), 0);
    f.w = dx_watch_new(f.loop, f.p[0], DX_WATCH_READ, starve_watch, &f, NULL);
    assert_non_null(f.w);
    f.t = dx_timer_new(f.loop, starve_timer, &f);
    assert_non_null(f.t);
    assert_int_equal(dx_loop_post(f.loop, starve_spin, &f), 0);
    assert_int_equal(dx_loop_run(f.loop), 0);
    assert_int_equal(f.nested, 0);
    /* the pipe became readable in spin 1: the very next poll reports it */
    assert_true(f.spins_at_watch >= 1 && f.spins_at_watch <= 2);
    assert_true(f.spins_at_timer >= 1 && f.spins_at_timer <= 2);
    assert_true(f.spins <= 3);
    dx_timer_free(f.t);
    dx_loop_free(f.loop);
    close(f.p[0]);
    close(f.p[1]);
}

/* ---- cross-thread (ctest label tsan: also run under ThreadSanitizer) ------------ */

typedef struct xloop {
    dx_loop *loop;
    pthread_t th;
    int rc;
    dx_timer *guard;
    int guard_fired;
} xloop;

static void *xloop_main(void *p)
{
    xloop *x = p;
    x->rc = dx_loop_run(x->loop);
    return NULL;
}

static void xguard(dx_timer *t, void *ud)
{
    (void)t;
    xloop *x = ud;
    x->guard_fired = 1;
    dx_loop_stop(x->loop);
}

/* A loop running on its own thread, stopped by a guard timer after 120 s
 * only if the test is broken (a lost item would otherwise hang it). */
static void xloop_start(xloop *x, size_t post_max)
{
    memset(x, 0, sizeof *x);
    dx_loop_options o = {.log = &dx_test_quiet_log, .post_max = post_max};
    x->loop = dx_loop_new(&o, NULL);
    assert_non_null(x->loop);
    x->guard = dx_timer_new(x->loop, xguard, x);
    assert_non_null(x->guard);
    dx_timer_start(x->guard, 120000, 0);
    assert_int_equal(pthread_create(&x->th, NULL, xloop_main, x), 0);
}

static void xloop_join(xloop *x)
{
    assert_int_equal(pthread_join(x->th, NULL), 0);
    assert_int_equal(x->rc, 0);
    assert_int_equal(x->guard_fired, 0);
}

#define XPROD 4
#define XPER 100000

typedef struct xq {
    dx_loop *loop;
    uint32_t next[XPROD]; /* loop thread only */
    uint64_t total, expect;
    long bad_order;
    int wrong_thread;
    pthread_t loop_th;
    /* a post that blocks the loop inside a batch until released */
    _Atomic int blocked, release;
    /* producers */
    _Atomic int go;
    _Atomic long elimit, errors;
    long accepted[XPROD];
    int per, stop_at_limit;
} xq;

static xq g_xq;

static void *xarg(unsigned pid, uint32_t seq) { return (void *)(((uintptr_t)pid << 32) | seq); }

static void xq_item(void *arg)
{
    xq *q = &g_xq;
    unsigned pid = (unsigned)((uintptr_t)arg >> 32);
    uint32_t seq = (uint32_t)(uintptr_t)arg;
    if (!pthread_equal(pthread_self(), q->loop_th))
        q->wrong_thread++;
    if (pid >= XPROD || seq != q->next[pid])
        q->bad_order++;
    else
        q->next[pid] = seq + 1;
    if (++q->total == q->expect)
        dx_loop_stop(q->loop);
}

static void xq_block(void *arg)
{
    (void)arg;
    xq *q = &g_xq;
    q->loop_th = pthread_self();
    atomic_store(&q->blocked, 1);
    while (!atomic_load(&q->release))
        sched_yield();
}

static void *xq_producer(void *p)
{
    unsigned pid = (unsigned)(uintptr_t)p;
    xq *q = &g_xq;
    while (!atomic_load(&q->go))
        sched_yield();
    for (uint32_t seq = 0; seq < (uint32_t)q->per; seq++) {
        int r;
        while ((r = dx_loop_post(q->loop, xq_item, xarg(pid, seq))) == DX_ELIMIT) {
            atomic_fetch_add(&q->elimit, 1);
            if (q->stop_at_limit) {
                /* full: every further try must be refused too (nothing runs) */
                for (int k = 0; k < 100; k++)
                    if (dx_loop_post(q->loop, xq_item, xarg(pid, seq)) != DX_ELIMIT)
                        atomic_fetch_add(&q->errors, 1);
                return NULL;
            }
            sched_yield();
        }
        if (r != 0) {
            atomic_fetch_add(&q->errors, 1);
            return NULL;
        }
        q->accepted[pid]++;
    }
    return NULL;
}

static void xq_run_producers(int per)
{
    xq *q = &g_xq;
    pthread_t th[XPROD];
    q->per = per;
    for (unsigned i = 0; i < XPROD; i++)
        assert_int_equal(pthread_create(&th[i], NULL, xq_producer, (void *)(uintptr_t)i), 0);
    atomic_store(&q->go, 1);
    for (unsigned i = 0; i < XPROD; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
}

static void xq_block_loop(xloop *x)
{
    assert_int_equal(dx_loop_post(x->loop, xq_block, NULL), 0);
    uint64_t t0 = dx_test_mono_ms();
    while (!atomic_load(&g_xq.blocked)) {
        assert_true(dx_test_mono_ms() - t0 < 60000);
        usleep(1000);
    }
}

/* Four producers post 100,000 items each while the loop drains: every item
 * runs once, on the loop's thread, in each producer's order; and wake-ups
 * are coalesced (far fewer eventfd writes than posts). */
static void test_xthread_producers_count_and_order(void **state)
{
    (void)state;
    static xloop x;
    memset(&g_xq, 0, sizeof g_xq);
    xloop_start(&x, 0);
    g_xq.loop = x.loop;
    g_xq.loop_th = x.th;
    g_xq.expect = (uint64_t)XPROD * XPER;
    xq_run_producers(XPER);
    xloop_join(&x);
    assert_int_equal(atomic_load(&g_xq.errors), 0);
    assert_int_equal(g_xq.total, (uint64_t)XPROD * XPER);
    assert_int_equal(g_xq.bad_order, 0);
    assert_int_equal(g_xq.wrong_thread, 0);
    for (unsigned i = 0; i < XPROD; i++) {
        assert_int_equal(g_xq.next[i], XPER);
        assert_int_equal(g_xq.accepted[i], XPER);
    }
    uint64_t wakes = atomic_load(&x.loop->post_wakes);
    print_message("%llu posts, %llu eventfd writes (%.4f per post), %ld DX_ELIMIT retries\n",
                  (unsigned long long)g_xq.total, (unsigned long long)wakes, (double)wakes / (double)g_xq.total,
                  atomic_load(&g_xq.elimit));
    assert_true(wakes >= 1);
    assert_true(wakes * 4 <= g_xq.total);
    dx_timer_free(x.guard);
    dx_loop_free(x.loop);
}

/* While the loop is busy inside a batch, a burst of 40,000 posts from four
 * threads writes the eventfd exactly once. */
static void test_xthread_burst_wakes_once(void **state)
{
    (void)state;
    static xloop x;
    memset(&g_xq, 0, sizeof g_xq);
    xloop_start(&x, 0);
    g_xq.loop = x.loop;
    g_xq.expect = XPROD * 10000;
    xq_block_loop(&x);
    uint64_t w0 = atomic_load(&x.loop->post_wakes);
    xq_run_producers(10000);
    uint64_t w1 = atomic_load(&x.loop->post_wakes);
    atomic_store(&g_xq.release, 1);
    xloop_join(&x);
    assert_int_equal(w1 - w0, 1);
    assert_int_equal(atomic_load(&g_xq.errors), 0);
    assert_int_equal(atomic_load(&g_xq.elimit), 0);
    assert_int_equal(g_xq.total, XPROD * 10000);
    assert_int_equal(g_xq.bad_order, 0);
    dx_timer_free(x.guard);
    dx_loop_free(x.loop);
}

/* A full queue refuses with DX_ELIMIT (exactly post_max accepted while the
 * loop is blocked, whoever posts) and loses no accepted item. */
static void test_xthread_full_refuses_and_loses_nothing(void **state)
{
    (void)state;
    static xloop x;
    enum { MAX = 5000 };
    memset(&g_xq, 0, sizeof g_xq);
    xloop_start(&x, MAX);
    g_xq.loop = x.loop;
    g_xq.expect = MAX;
    g_xq.stop_at_limit = 1;
    xq_block_loop(&x);
    xq_run_producers(XPER);
    long sum = 0;
    for (unsigned i = 0; i < XPROD; i++) {
        sum += g_xq.accepted[i];
        assert_true(g_xq.accepted[i] < XPER);
    }
    assert_int_equal(sum, MAX);
    assert_int_equal(atomic_load(&g_xq.elimit), XPROD);
    assert_int_equal(atomic_load(&g_xq.errors), 0);
    atomic_store(&g_xq.release, 1);
    xloop_join(&x);
    assert_int_equal(g_xq.total, MAX);
    assert_int_equal(g_xq.bad_order, 0);
    for (unsigned i = 0; i < XPROD; i++)
        assert_int_equal(g_xq.next[i], (uint32_t)g_xq.accepted[i]);
    /* drained: room again */
    assert_int_equal(atomic_load(&x.loop->post_queued), 0);
    assert_int_equal(dx_loop_post_ex(x.loop, count_ran, count_drop, NULL), 0);
    g_ran = g_dropped = 0;
    dx_timer_free(x.guard);
    dx_loop_free(x.loop);
    assert_int_equal(g_dropped, 1);
    assert_int_equal(g_ran, 0);
}

/*
 * Producers post with drop callbacks while the loop runs; the loop stops
 * part-way (from an item) and is freed on this thread: every accepted item
 * either ran or was dropped, exactly once, drops on the freeing thread;
 * a refused one did neither.
 */
#define XDROP_PER 20000
typedef struct xdrop {
    dx_loop *loop;
    _Atomic int go;
    uint8_t ran[XPROD][XDROP_PER];     /* loop thread */
    uint8_t dropped[XPROD][XDROP_PER]; /* freeing thread */
    uint8_t refused[XPROD][XDROP_PER]; /* producer pid */
    long runs;
    pthread_t freeing;
    int drop_wrong_thread;
} xdrop;

static xdrop *g_xd;

static void xd_item(void *arg)
{
    unsigned pid = (unsigned)((uintptr_t)arg >> 32);
    uint32_t seq = (uint32_t)(uintptr_t)arg;
    g_xd->ran[pid][seq]++;
    if (++g_xd->runs == XPROD * XDROP_PER / 3)
        dx_loop_stop(g_xd->loop);
}

static void xd_drop(void *arg)
{
    unsigned pid = (unsigned)((uintptr_t)arg >> 32);
    uint32_t seq = (uint32_t)(uintptr_t)arg;
    g_xd->dropped[pid][seq]++;
    if (!pthread_equal(pthread_self(), g_xd->freeing))
        g_xd->drop_wrong_thread++;
}

static void *xd_producer(void *p)
{
    unsigned pid = (unsigned)(uintptr_t)p;
    while (!atomic_load(&g_xd->go))
        sched_yield();
    for (uint32_t seq = 0; seq < XDROP_PER; seq++)
        if (dx_loop_post_ex(g_xd->loop, xd_item, xd_drop, xarg(pid, seq)) != 0)
            g_xd->refused[pid][seq] = 1;
    return NULL;
}

static void test_xthread_drop_exactly_once_at_free(void **state)
{
    (void)state;
    static xloop x;
    g_xd = calloc(1, sizeof *g_xd);
    assert_non_null(g_xd);
    xloop_start(&x, 30000);
    g_xd->loop = x.loop;
    g_xd->freeing = pthread_self();
    pthread_t th[XPROD];
    for (unsigned i = 0; i < XPROD; i++)
        assert_int_equal(pthread_create(&th[i], NULL, xd_producer, (void *)(uintptr_t)i), 0);
    atomic_store(&g_xd->go, 1);
    for (unsigned i = 0; i < XPROD; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    xloop_join(&x);
    dx_timer_free(x.guard);
    dx_loop_free(x.loop);
    long ran = 0, dropped = 0, refused = 0;
    for (unsigned p = 0; p < XPROD; p++)
        for (unsigned i = 0; i < XDROP_PER; i++) {
            ran += g_xd->ran[p][i];
            dropped += g_xd->dropped[p][i];
            refused += g_xd->refused[p][i];
            assert_int_equal(g_xd->ran[p][i] + g_xd->dropped[p][i] + g_xd->refused[p][i], 1);
        }
    print_message("ran %ld, dropped %ld, refused (DX_ELIMIT) %ld\n", ran, dropped, refused);
    assert_true(ran >= XPROD * XDROP_PER / 3);
    assert_int_equal(ran + dropped + refused, XPROD * XDROP_PER);
    assert_int_equal(g_xd->drop_wrong_thread, 0);
    free(g_xd);
    g_xd = NULL;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_post_from_other_thread_in_order),
        cmocka_unit_test(test_stop_from_other_thread),
        cmocka_unit_test(test_stop_before_run_starts),
        cmocka_unit_test(test_post_dropped_at_free_and_enomem),
        cmocka_unit_test(test_post_limit_exact),
        cmocka_unit_test(test_post_reposting_does_not_starve),
        cmocka_unit_test(test_xthread_producers_count_and_order),
        cmocka_unit_test(test_xthread_burst_wakes_once),
        cmocka_unit_test(test_xthread_full_refuses_and_loses_nothing),
        cmocka_unit_test(test_xthread_drop_exactly_once_at_free),
    };
    dx_test_filter_from_env();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
