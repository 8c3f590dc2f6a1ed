/*
 * tests/unit/test_timer.c: src/net/timer.c — the public millisecond timers
 * (dx_timer_*): order and rounding, repeat/stop/free from callbacks, a timer
 * freed by another in the same pass, every allocation failing once (timers
 * and watches) and those left alive at dx_loop_free. They are driven by a
 * settable clock (the test seams) and expiry passes called directly; one
 * test uses the real clock with lower bounds and a 10 s upper bound (the
 * 250 ms wheel of loop.c would need 25 s).
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "net/loop.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
    dx_loop_options o = {.seams = &f->ts.seams, .log = &dx_test_quiet_log};
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
        dx_loop_options o = {.seams = &ts.seams, .log = &dx_test_quiet_log};
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
        dx_watch *w = dx_watch_new(loop, p[0], DX_WATCH_READ, dx_test_noop_watch, NULL, &err);
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
    dx_loop_options o = {.log = &dx_test_quiet_log};
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ptimer_order_and_rounding, pfx_setup, pfx_teardown),
        cmocka_unit_test_setup_teardown(test_ptimer_repeat_stop_free_in_callbacks, pfx_setup, pfx_teardown),
        cmocka_unit_test_setup_teardown(test_ptimer_freed_by_other_in_same_pass, pfx_setup, pfx_teardown),
        cmocka_unit_test(test_timer_watch_enomem_and_left_at_free),
        cmocka_unit_test(test_timer_real_clock_ms),
    };
    dx_test_filter_from_env();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
