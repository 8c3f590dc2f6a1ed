/*
 * tests/unit/test_loop.c: src/net/loop.c, post.c, timer.c, watch.c — loop
 * lifecycle, the bounded cross-thread queue and stop, deferred work, mask
 * keys, the timer wheel, public ms timers and fd watches. Tests named
 * test_xthread_* are the cross-thread ones: ctest label "tsan" runs them
 * under ThreadSanitizer too (tests/unit/CMakeLists.txt).
 *
 * The wheel is driven two ways. Most timer tests replace the loop's timerfd
 * with an eventfd the test writes to: writing k there is "k ticks elapsed",
 * and calling the tick handler directly makes the wheel's behaviour exact
 * and instant (no sleeping, no machine-speed assumptions). One test runs the
 * real timerfd through dx_loop_run, with only lower bounds on elapsed time.
 * The public timers are driven the same way: a settable clock (the test
 * seams) and expiry passes called directly; one test uses the real clock
 * with lower bounds and a 10 s upper bound (the wheel would need 25 s).
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "net/loop.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static const dx_log quiet_log = {.sink = NULL, .ud = NULL, .level = DX_LOG_ERROR};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

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
    dx_loop_options o = {.log = &quiet_log};
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
    dx_loop_options o = {.seams = &ts.seams, .log = &quiet_log};
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
        dx_loop_options o = {.seams = &ts.seams, .log = &quiet_log};
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
    uint64_t t0 = mono_ms();
    while (!atomic_load(&f->running)) {
        assert_true(mono_ms() - t0 < 20000);
        usleep(1000);
    }
}

static void test_post_from_other_thread_in_order(void **state)
{
    (void)state;
    static post_fx f;
    static post_arg args[NPOSTS];
    memset(&f, 0, sizeof f);
    dx_loop_options o = {.log = &quiet_log};
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
    dx_loop_options o = {.log = &quiet_log};
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
    dx_loop_options o = {.log = &quiet_log};
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
    dx_loop_options o = {.seams = &ts.seams, .log = &quiet_log, .post_max = 1000};
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
    dx_loop_options o = {.seams = &ts.seams, .log = &quiet_log, .post_max = 3};
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
    dx_loop_options o = {.log = &quiet_log};
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
    dx_loop_options o = {.log = &quiet_log, .post_max = post_max};
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
    uint64_t t0 = mono_ms();
    while (!atomic_load(&g_xq.blocked)) {
        assert_true(mono_ms() - t0 < 60000);
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
    dx_loop_options o = {.log = &quiet_log};
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
    dx_loop_options o = {.log = &quiet_log};
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
    dx_loop_options o = {.log = &quiet_log};
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
    dx_loop_options o = {.seams = &ts.seams, .log = &quiet_log};
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
    dx_loop_options o = {.seams = &f->ts.seams, .log = &quiet_log};
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
    f->fired_ms = mono_ms();
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
    dx_loop_options o = {.log = &quiet_log};
    f.loop = dx_loop_new(&o, NULL);
    assert_non_null(f.loop);
    dx__timer_init(&f.t, real_cb);
    dx__timer_init(&f.guard, guard_cb);
    f.started_ms = mono_ms();
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

/* ---- public timers: a fake clock, expiry passes called directly ---------------- */

typedef struct ptimer {
    dx_timer *t;
    int fired;
    int order; /* position in the fire sequence */
    uint64_t fired_ns;
    int action;
    struct ptimer *other, *other2;
    uint64_t ms;
} ptimer;

enum { PT_NONE, PT_STOP_SELF_AT_2, PT_FREE_SELF, PT_RESTART_SELF_0, PT_FREE_OTHER };

typedef struct pfx {
    dx_test_seams ts;
    dx_loop *loop;
    ptimer pt[8];
    int seq;
} pfx;

static pfx *g_pfx;

static void pt_cb(dx_timer *t, void *ud)
{
    ptimer *p = ud;
    assert_ptr_equal(p->t, t);
    p->fired++;
    p->order = ++g_pfx->seq;
    p->fired_ns = g_pfx->ts.now;
    switch (p->action) {
    case PT_STOP_SELF_AT_2:
        if (p->fired == 2)
            dx_timer_stop(t);
        break;
    case PT_FREE_SELF:
        dx_timer_free(t);
        p->t = NULL;
        break;
    case PT_RESTART_SELF_0:
        dx_timer_start(t, 0, 0);
        break;
    case PT_FREE_OTHER:
        /* another timer expired in the same pass: freed before its turn */
        dx_timer_free(p->other->t);
        p->other->t = NULL;
        if (p->other2) /* and one restarted: not in this pass any more */
            dx_timer_start(p->other2->t, p->other2->ms, 0);
        break;
    default:
        break;
    }
}

static int pfx_setup(void **state)
{
    pfx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    dx_test_seams_init(&f->ts);
    f->ts.now = 1000000000u + 1; /* not on a millisecond */
    dx_loop_options o = {.seams = &f->ts.seams, .log = &quiet_log};
    f->loop = dx_loop_new(&o, NULL);
    assert_non_null(f->loop);
    for (int i = 0; i < 8; i++) {
        f->pt[i].t = dx_timer_new(f->loop, pt_cb, &f->pt[i]);
        assert_non_null(f->pt[i].t);
    }
    g_pfx = f;
    *state = f;
    return 0;
}

static int pfx_teardown(void **state)
{
    pfx *f = *state;
    for (int i = 0; i < 8; i++)
        dx_timer_free(f->pt[i].t);
    assert_int_equal(f->loop->ntimers, 0);
    dx_loop_free(f->loop);
    assert_int_equal(f->ts.live, 0);
    free(f);
    g_pfx = NULL;
    return 0;
}

static void advance_ms(pfx *f, double ms)
{
    f->ts.now += (uint64_t)(ms * 1e6);
    dx__timers_run(f->loop);
}

static void test_ptimer_order_and_rounding(void **state)
{
    pfx *f = *state;
    ptimer *p = f->pt;
    assert_int_equal(dx__timers_timeout(f->loop), -1); /* nothing armed: sleep */
    dx_timer_start(p[0].t, 30, 0);
    dx_timer_start(p[1].t, 10, 0);
    dx_timer_start(p[2].t, 20, 0);
    dx_timer_start(p[3].t, 15, 0);
    dx_timer_start(p[4].t, 15, 0); /* same deadline as 3, started after */
    assert_int_equal(dx__timers_timeout(f->loop), 10);
    advance_ms(f, 9.5);
    assert_int_equal(p[1].fired, 0); /* never early */
    assert_int_equal(dx__timers_timeout(f->loop), 1); /* half a ms left: rounded up */
    advance_ms(f, 0.5);
    assert_int_equal(p[1].fired, 1);
    assert_int_equal(dx__timers_timeout(f->loop), 5);
    advance_ms(f, 100);
    assert_int_equal(p[3].order, 2);
    assert_int_equal(p[4].order, 3);
    assert_int_equal(p[2].order, 4);
    assert_int_equal(p[0].order, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(p[i].fired, 1);
    assert_int_equal(dx__timers_timeout(f->loop), -1);
    /* restarting an armed timer replaces its deadline; stop disarms */
    dx_timer_start(p[5].t, 50, 0);
    dx_timer_start(p[5].t, 5, 0);
    dx_timer_start(p[6].t, 1, 0);
    dx_timer_stop(p[6].t);
    dx_timer_stop(p[6].t); /* twice: harmless */
    dx_timer_stop(p[7].t); /* never started */
    advance_ms(f, 5);
    assert_int_equal(p[5].fired, 1);
    advance_ms(f, 100);
    assert_int_equal(p[5].fired, 1);
    assert_int_equal(p[6].fired, 0);
    assert_int_equal(f->loop->theap_n, 0);
}

static void test_ptimer_repeat_stop_free_in_callbacks(void **state)
{
    pfx *f = *state;
    ptimer *p = f->pt;
    dx_timer_start(p[0].t, 5, 5); /* repeats until the test stops it */
    p[1].action = PT_STOP_SELF_AT_2;
    dx_timer_start(p[1].t, 5, 5);
    p[2].action = PT_FREE_SELF;
    dx_timer_start(p[2].t, 5, 5);
    p[3].action = PT_RESTART_SELF_0;
    dx_timer_start(p[3].t, 5, 0);
    advance_ms(f, 5);
    for (int i = 0; i < 4; i++)
        assert_int_equal(p[i].fired, 1);
    assert_null(p[2].t);
    advance_ms(f, 4);
    assert_int_equal(p[0].fired, 1); /* the repeat is measured from the expiry */
    assert_int_equal(p[3].fired, 2); /* restarted with 0 ms: the next pass, not this one again */
    advance_ms(f, 1);
    assert_int_equal(p[0].fired, 2);
    assert_int_equal(p[1].fired, 2); /* stopped itself now */
    assert_int_equal(p[3].fired, 3);
    advance_ms(f, 1000); /* a late loop: one expiry, not a burst of 200 */
    assert_int_equal(p[0].fired, 3);
    assert_int_equal(p[1].fired, 2);
    advance_ms(f, 5);
    assert_int_equal(p[0].fired, 4);
    dx_timer_stop(p[0].t);
    dx_timer_stop(p[3].t);
    advance_ms(f, 1000);
    assert_int_equal(p[0].fired, 4);
    assert_int_equal(p[3].fired, 5);
    assert_int_equal(f->loop->theap_n, 0);
}

static void test_ptimer_freed_by_other_in_same_pass(void **state)
{
    pfx *f = *state;
    ptimer *p = f->pt;
    /* 0, 1, 2 and 3 expire in one pass; 0 fires first and frees 1, restarts 2 */
    p[0].action = PT_FREE_OTHER;
    p[0].other = &p[1];
    p[0].other2 = &p[2];
    p[2].ms = 50;
    dx_timer_start(p[0].t, 10, 0);
    dx_timer_start(p[1].t, 10, 10);
    dx_timer_start(p[2].t, 10, 0);
    dx_timer_start(p[3].t, 11, 0);
    /* 4 frees itself and 5 frees 4's neighbour 6 in the same pass */
    p[4].action = PT_FREE_SELF;
    dx_timer_start(p[4].t, 12, 0);
    p[5].action = PT_FREE_OTHER;
    p[5].other = &p[6];
    dx_timer_start(p[5].t, 12, 0);
    dx_timer_start(p[6].t, 12, 0);
    advance_ms(f, 20);
    assert_int_equal(p[0].fired, 1);
    assert_int_equal(p[1].fired, 0);
    assert_null(p[1].t);
    assert_int_equal(p[2].fired, 0);
    assert_int_equal(p[3].fired, 1);
    assert_int_equal(p[4].fired, 1);
    assert_int_equal(p[5].fired, 1);
    assert_int_equal(p[6].fired, 0);
    advance_ms(f, 49);
    assert_int_equal(p[2].fired, 0);
    advance_ms(f, 1);
    assert_int_equal(p[2].fired, 1);
    advance_ms(f, 1000);
    assert_int_equal(p[1].fired, 0);
    assert_int_equal(p[6].fired, 0);
    assert_int_equal(f->loop->theap_n, 0);
}

static void noop_timer(dx_timer *t, void *ud)
{
    (void)t;
    (void)ud;
}

static void noop_watch(dx_watch *w, int fd, unsigned events, void *ud)
{
    (void)w;
    (void)fd;
    (void)events;
    (void)ud;
}

/* Every allocation of dx_timer_new and dx_watch_new fails once: NULL, no
 * leak; timers and watches left alive are freed with the loop. */
static void test_timer_watch_enomem_and_left_at_free(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    for (long k = 1;; k++) {
        dx_test_seams ts;
        dx_test_seams_init(&ts);
        dx_loop_options o = {.seams = &ts.seams, .log = &quiet_log};
        dx_loop *loop = dx_loop_new(&o, NULL);
        assert_non_null(loop);
        ts.fail_at = ts.calls + k;
        int failed = 0, err = 0;
        for (int i = 0; i < 20; i++) { /* past the heap's first 16 slots */
            dx_timer *t = dx_timer_new(loop, noop_timer, NULL);
            if (!t)
                failed++;
            else if (i % 2)
                dx_timer_start(t, 1000, 0);
        }
        dx_watch *w = dx_watch_new(loop, p[0], DX_WATCH_READ, noop_watch, NULL, &err);
        if (!w) {
            assert_int_equal(err, DX_ENOMEM);
            failed++;
        }
        dx_loop_free(loop);
        assert_int_equal(ts.live, 0);
        if (!failed)
            break;
        assert_int_equal(failed, 1);
        assert_true(k < 100);
    }
    close(p[0]);
    close(p[1]);
}

/* ---- public timers on the real clock ---------------------------------------- */

typedef struct rt_fx {
    dx_loop *loop;
    dx_timer *once, *rep, *guard;
    uint64_t start_ns, once_ns, rep_start_ns;
    uint64_t rep_ns[100];
    int reps, guard_fired;
} rt_fx;

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void rt_once(dx_timer *t, void *ud)
{
    (void)t;
    rt_fx *f = ud;
    f->once_ns = mono_ns();
}

static void rt_rep(dx_timer *t, void *ud)
{
    rt_fx *f = ud;
    f->rep_ns[f->reps++] = mono_ns();
    if (f->reps == 100) {
        dx_timer_free(t); /* a repeating timer freed inside its callback */
        f->rep = NULL;
        dx_loop_stop(f->loop);
    }
}

static void rt_guard(dx_timer *t, void *ud)
{
    (void)t;
    rt_fx *f = ud;
    f->guard_fired = 1;
    dx_loop_stop(f->loop);
}

/* Milliseconds, not wheel ticks: a 7 ms timer never fires early, and 100
 * repeats of 1 ms finish long before 100 ticks of 250 ms (25 s) would. */
static void test_timer_real_clock_ms(void **state)
{
    (void)state;
    static rt_fx f;
    memset(&f, 0, sizeof f);
    dx_loop_options o = {.log = &quiet_log};
    f.loop = dx_loop_new(&o, NULL);
    assert_non_null(f.loop);
    f.once = dx_timer_new(f.loop, rt_once, &f);
    f.rep = dx_timer_new(f.loop, rt_rep, &f);
    f.guard = dx_timer_new(f.loop, rt_guard, &f);
    assert_true(f.once && f.rep && f.guard);
    dx_timer_start(f.guard, 60000, 0);
    f.start_ns = mono_ns();
    dx_timer_start(f.once, 7, 0);
    f.rep_start_ns = mono_ns();
    dx_timer_start(f.rep, 1, 1);
    assert_int_equal(dx_loop_run(f.loop), 0);
    uint64_t end = mono_ns();
    assert_int_equal(f.guard_fired, 0);
    assert_int_equal(f.reps, 100);
    assert_true(f.once_ns >= f.start_ns + 7000000u);
    for (int k = 0; k < 100; k++)
        assert_true(f.rep_ns[k] >= f.rep_start_ns + (uint64_t)(k + 1) * 1000000u);
    print_message("7 ms timer fired after %.3f ms; 100 x 1 ms repeats took %.1f ms\n",
                  (double)(f.once_ns - f.start_ns) / 1e6, (double)(end - f.rep_start_ns) / 1e6);
    assert_true(end - f.rep_start_ns < 10000000000u);
    dx_timer_free(f.once);
    dx_timer_free(f.guard);
    dx_timer_free(NULL);
    dx_loop_free(f.loop);
}

/* ---- fd watches ----------------------------------------------------------------- */

typedef struct wfx {
    dx_loop *loop;
    int a[2], b[2];
    dx_watch *wa, *wb, *ww;
    dx_timer *stop;
    int fired_a, fired_b, fired_w;
    unsigned ev_a, ev_w;
    int reads;
} wfx;

static void wfx_stop(dx_timer *t, void *ud)
{
    (void)t;
    wfx *f = ud;
    dx_loop_stop(f->loop);
}

static void wfx_init(wfx *f)
{
    memset(f, 0, sizeof *f);
    dx_loop_options o = {.log = &quiet_log};
    f->loop = dx_loop_new(&o, NULL);
    assert_non_null(f->loop);
    assert_int_equal(pipe(f->a), 0);
    assert_int_equal(pipe(f->b), 0);
    f->stop = dx_timer_new(f->loop, wfx_stop, f);
    assert_non_null(f->stop);
}

static void wfx_close(wfx *f)
{
    dx_timer_free(f->stop);
    dx_watch_free(f->wa);
    dx_watch_free(f->wb);
    dx_watch_free(f->ww);
    dx_loop_free(f->loop);
    for (int i = 0; i < 2; i++) {
        if (f->a[i] >= 0)
            close(f->a[i]);
        if (f->b[i] >= 0)
            close(f->b[i]);
    }
}

/* The write end is writable at once: write a byte, stop asking. The read
 * end then reports it. After that nothing is asked and nothing fires. */
static void rw_writer(dx_watch *w, int fd, unsigned events, void *ud)
{
    wfx *f = ud;
    f->fired_w++;
    f->ev_w = events;
    assert_int_equal(write(fd, "x", 1), 1);
    assert_int_equal(dx_watch_set(w, 0), 0);
}

static void rw_reader(dx_watch *w, int fd, unsigned events, void *ud)
{
    (void)w;
    wfx *f = ud;
    char c;
    f->fired_a++;
    f->ev_a = events;
    assert_int_equal(read(fd, &c, 1), 1);
    dx_timer_start(f->stop, 20, 0); /* let a few iterations show that nothing more fires */
}

static void test_watch_pipe_read_write(void **state)
{
    (void)state;
    static wfx f;
    wfx_init(&f);
    int err = 1;
    f.wa = dx_watch_new(f.loop, f.a[0], DX_WATCH_READ, rw_reader, &f, &err);
    assert_non_null(f.wa);
    assert_int_equal(err, 0);
    f.ww = dx_watch_new(f.loop, f.a[1], DX_WATCH_WRITE, rw_writer, &f, &err);
    assert_non_null(f.ww);
    assert_int_equal(dx_loop_run(f.loop), 0);
    assert_int_equal(f.fired_w, 1);
    assert_int_equal(f.ev_w, DX_WATCH_WRITE);
    assert_int_equal(f.fired_a, 1);
    assert_int_equal(f.ev_a, DX_WATCH_READ);
    /* asking again works; unknown bits are refused */
    assert_int_equal(dx_watch_set(f.ww, DX_WATCH_WRITE | DX_WATCH_READ), 0);
    assert_int_equal(dx_watch_set(f.ww, 8), DX_EINVAL);
    assert_int_equal(dx_watch_set(f.ww, DX_WATCH_ERROR), DX_EINVAL);
    dx_timer_start(f.stop, 20, 0);
    assert_int_equal(dx_loop_run(f.loop), 0);
    assert_int_equal(f.fired_w, 2);
    wfx_close(&f);
}

/* Two watches readable in the same batch; whichever runs first frees both
 * (itself included): the other's event, already collected, is not
 * delivered, and neither fires again although both stay readable. */
static void free_both(dx_watch *w, int fd, unsigned events, void *ud)
{
    (void)fd;
    (void)events;
    wfx *f = ud;
    if (w == f->wa)
        f->fired_a++;
    else
        f->fired_b++;
    dx_watch_free(f->wa);
    dx_watch_free(f->wb);
    f->wa = f->wb = NULL;
    dx_timer_start(f->stop, 20, 0);
}

static void test_watch_free_in_callback_with_pending_event(void **state)
{
    (void)state;
    static wfx f;
    wfx_init(&f);
    assert_int_equal(write(f.a[1], "x", 1), 1);
    assert_int_equal(write(f.b[1], "y", 1), 1);
    f.wa = dx_watch_new(f.loop, f.a[0], DX_WATCH_READ, free_both, &f, NULL);
    f.wb = dx_watch_new(f.loop, f.b[0], DX_WATCH_READ, free_both, &f, NULL);
    assert_true(f.wa && f.wb);
    assert_int_equal(dx_loop_run(f.loop), 0);
    assert_int_equal(f.fired_a + f.fired_b, 1);
    /* the descriptors are the application's: still open, still readable */
    char c;
    assert_int_equal(read(f.a[0], &c, 1), 1);
    assert_int_equal(read(f.b[0], &c, 1), 1);
    wfx_close(&f);
}

/* EPOLLHUP (read end, writer gone) and EPOLLERR (write end, reader gone)
 * arrive as DX_WATCH_ERROR; asking for nothing silences them. */
static void hup_cb(dx_watch *w, int fd, unsigned events, void *ud)
{
    (void)fd;
    wfx *f = ud;
    if (w == f->wa) {
        f->fired_a++;
        f->ev_a = events;
    } else {
        f->fired_w++;
        f->ev_w = events;
    }
    assert_int_equal(dx_watch_set(w, 0), 0);
    if (f->fired_a && f->fired_w)
        dx_timer_start(f->stop, 20, 0);
}

static void test_watch_hup_is_error(void **state)
{
    (void)state;
    static wfx f;
    wfx_init(&f);
    close(f.a[1]);
    f.a[1] = -1;
    close(f.b[0]);
    f.b[0] = -1;
    f.wa = dx_watch_new(f.loop, f.a[0], DX_WATCH_READ, hup_cb, &f, NULL);
    /* the write end of a full pipe is not writable: only the error wakes it */
    f.ww = dx_watch_new(f.loop, f.b[1], DX_WATCH_WRITE, hup_cb, &f, NULL);
    assert_true(f.wa && f.ww);
    assert_int_equal(dx_loop_run(f.loop), 0);
    assert_int_equal(f.fired_a, 1);
    assert_true(f.ev_a & DX_WATCH_ERROR);
    assert_false(f.ev_a & DX_WATCH_WRITE);
    assert_int_equal(f.fired_w, 1);
    assert_true(f.ev_w & DX_WATCH_ERROR);
    assert_false(f.ev_w & DX_WATCH_READ);
    wfx_close(&f);
}

static void test_watch_refuses_bad_descriptors(void **state)
{
    (void)state;
    static wfx f;
    wfx_init(&f);
    char path[] = "/tmp/dx_test_loop_XXXXXX";
    int file = mkstemp(path);
    assert_true(file >= 0);
    unlink(path);
    int err = 0;
    assert_null(dx_watch_new(f.loop, file, DX_WATCH_READ, noop_watch, NULL, &err));
    assert_int_equal(err, DX_EINVAL); /* a regular file: epoll refuses it */
    err = 0;
    assert_null(dx_watch_new(f.loop, file, 0, noop_watch, NULL, &err));
    assert_int_equal(err, DX_EINVAL); /* even when asking for nothing yet */
    close(file);
    err = 0;
    assert_null(dx_watch_new(f.loop, file, DX_WATCH_READ, noop_watch, NULL, &err));
    assert_int_equal(err, DX_EINVAL); /* closed */
    err = 0;
    assert_null(dx_watch_new(f.loop, -1, DX_WATCH_READ, noop_watch, NULL, &err));
    assert_int_equal(err, DX_EINVAL);
    err = 0;
    assert_null(dx_watch_new(f.loop, f.a[0], DX_WATCH_READ | 8u, noop_watch, NULL, &err));
    assert_int_equal(err, DX_EINVAL);
    assert_null(dx_watch_new(f.loop, f.a[0], DX_WATCH_READ, NULL, NULL, &err));
    f.wa = dx_watch_new(f.loop, f.a[0], DX_WATCH_READ, noop_watch, NULL, &err);
    assert_non_null(f.wa);
    err = 0;
    assert_null(dx_watch_new(f.loop, f.a[0], DX_WATCH_WRITE, noop_watch, NULL, &err));
    assert_int_equal(err, DX_EINVAL); /* already watched */
    wfx_close(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_free),
        cmocka_unit_test(test_new_every_allocation_fails_once),
        cmocka_unit_test(test_new_without_descriptors),
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
        cmocka_unit_test_setup_teardown(test_ptimer_order_and_rounding, pfx_setup, pfx_teardown),
        cmocka_unit_test_setup_teardown(test_ptimer_repeat_stop_free_in_callbacks, pfx_setup, pfx_teardown),
        cmocka_unit_test_setup_teardown(test_ptimer_freed_by_other_in_same_pass, pfx_setup, pfx_teardown),
        cmocka_unit_test(test_timer_watch_enomem_and_left_at_free),
        cmocka_unit_test(test_timer_real_clock_ms),
        cmocka_unit_test(test_watch_pipe_read_write),
        cmocka_unit_test(test_watch_free_in_callback_with_pending_event),
        cmocka_unit_test(test_watch_hup_is_error),
        cmocka_unit_test(test_watch_refuses_bad_descriptors),
    };
    dx_test_filter_from_env();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
