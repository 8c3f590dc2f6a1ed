/*
 * tests/unit/test_watch.c: src/net/watch.c — the public fd watches
 * (dx_watch_*) on real pipes: read and write readiness, a watch freed in a
 * callback with another event pending, hang-up reported as an error, bad
 * descriptors refused.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "net/loop.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    dx_loop_options o = {.log = &dx_test_quiet_log};
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
    assert_null(dx_watch_new(f.loop, file, DX_WATCH_READ, dx_test_noop_watch, NULL, &err));
    assert_int_equal(err, DX_EINVAL); /* a regular file: epoll refuses it */
    err = 0;
    assert_null(dx_watch_new(f.loop, file, 0, dx_test_noop_watch, NULL, &err));
    assert_int_equal(err, DX_EINVAL); /* even when asking for nothing yet */
    close(file);
    err = 0;
    assert_null(dx_watch_new(f.loop, file, DX_WATCH_READ, dx_test_noop_watch, NULL, &err));
    assert_int_equal(err, DX_EINVAL); /* closed */
    err = 0;
    assert_null(dx_watch_new(f.loop, -1, DX_WATCH_READ, dx_test_noop_watch, NULL, &err));
    assert_int_equal(err, DX_EINVAL);
    err = 0;
    assert_null(dx_watch_new(f.loop, f.a[0], DX_WATCH_READ | 8u, dx_test_noop_watch, NULL, &err));
    assert_int_equal(err, DX_EINVAL);
    assert_null(dx_watch_new(f.loop, f.a[0], DX_WATCH_READ, NULL, NULL, &err));
    f.wa = dx_watch_new(f.loop, f.a[0], DX_WATCH_READ, dx_test_noop_watch, NULL, &err);
    assert_non_null(f.wa);
    err = 0;
    assert_null(dx_watch_new(f.loop, f.a[0], DX_WATCH_WRITE, dx_test_noop_watch, NULL, &err));
    assert_int_equal(err, DX_EINVAL); /* already watched */
    wfx_close(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_watch_pipe_read_write),
        cmocka_unit_test(test_watch_free_in_callback_with_pending_event),
        cmocka_unit_test(test_watch_hup_is_error),
        cmocka_unit_test(test_watch_refuses_bad_descriptors),
    };
    dx_test_filter_from_env();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
