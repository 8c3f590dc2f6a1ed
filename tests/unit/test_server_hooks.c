/*
 * tests/unit/test_server_hooks.c: the server's hooks for applications
 * (src/ws/conn.c, server.c): pause/resume of reading, inline
 * per-connection memory, and the admission limits (max_conns_per_ip,
 * max_handshaking) with their counters and log lines. Deferred upgrade
 * decisions are in test_upgrade.c; both use the fixture of hooks_fx.c (a
 * server on its own loop thread whose callbacks record events; blocking
 * raw clients, some bound to 127.0.0.2 / 127.0.0.3).
 */
#define _GNU_SOURCE
#include "hooks_fx.h"

#include <fcntl.h>
#include <poll.h>

/* ---- pause / resume ------------------------------------------------------------------------- */

static void do_pause0(fx *f, void *arg)
{
    (void)arg;
    f->pause_rc = f->conns[0] ? dx_conn_pause(f->conns[0]) : -999;
}

static void do_resume0(fx *f, void *arg)
{
    (void)arg;
    f->resume_rc = f->conns[0] ? dx_conn_resume(f->conns[0]) : -999;
}

static void do_flood_state(fx *f, void *arg)
{
    long *out = arg;
    out[0] = f->flood_got;
    out[1] = f->flood_order_bad;
}

/* Paused from outside (a posted function) while the peer keeps sending:
 * on_message stops, the peer's writes block (the kernel's buffers fill),
 * other connections are served; resume delivers everything in order. */
static void test_pause_backpressure(void **state)
{
    fx *f = *state;
    dx_server_options o = opts(f);
    start(f, &o);
    cl *c = cl_open(f, NULL, "/p");
    wait_ev(f, EV_OPEN);
    cl *other = cl_open(f, NULL, "/other");
    wait_ev(f, EV_OPEN);
    on_loop(f, do_pause0, NULL);
    assert_int_equal(f->pause_rc, 0);
    on_loop(f, do_pause0, NULL); /* twice: still 0 */
    assert_int_equal(f->pause_rc, 0);
    /* flood until the kernel refuses more (non-blocking) */
    int fl = fcntl(c->fd, F_GETFL);
    assert_int_equal(fcntl(c->fd, F_SETFL, fl | O_NONBLOCK), 0);
    uint8_t msg[1024], fr[1100];
    long sent = 0;
    size_t pend = 0, off = 0;
    for (;;) {
        if (off == pend) {
            memset(msg, 'x', sizeof msg);
            msg[0] = 'F';
            msg[1] = (uint8_t)(sent >> 24);
            msg[2] = (uint8_t)(sent >> 16);
            msg[3] = (uint8_t)(sent >> 8);
            msg[4] = (uint8_t)sent;
            pend = frame_bytes(fr, DX_OP_BINARY, msg, sizeof msg);
            off = 0;
            sent++;
        }
        ssize_t w = send(c->fd, fr + off, pend - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EAGAIN) {
            /* wait a little for room: none comes while the server does not read */
            struct pollfd p = {.fd = c->fd, .events = POLLOUT};
            if (poll(&p, 1, 200) == 0)
                break;
            continue;
        }
        assert_true(w > 0);
        off += (size_t)w;
        assert_true(sent < 1000000); /* the server would have to be reading */
    }
    assert_true(sent > 16); /* the kernel took some, then blocked */
    assert_true(loop_cpu_ms_over_1s(f) < 100); /* the unread input does not keep the loop busy */
    /* the paused connection received nothing; another one is served */
    cl_frame(other, DX_OP_TEXT, "alive", 5);
    expect_text(other, "alive");
    barrier(f);
    long st[2];
    on_loop(f, do_flood_state, st);
    assert_int_equal(st[0], 0);
    assert_int_equal(stats(f).messages_in, 1); /* "alive" */
    on_loop(f, do_resume0, NULL);
    assert_int_equal(f->resume_rc, 0);
    /* finish the partial frame and send a marker; all arrive in order */
    assert_int_equal(fcntl(c->fd, F_SETFL, fl), 0);
    cl_send(c, fr + off, pend - off);
    cl_frame(c, DX_OP_TEXT, "end", 3);
    expect_text(c, "end");
    on_loop(f, do_flood_state, st);
    assert_int_equal(st[0], sent);
    assert_int_equal(st[1], 0);
    cl_free(other);
    cl_free(c);
}

/* Paused from inside on_message: the messages behind it in the same read
 * wait; resumed from another connection's on_message, they come in order.
 * Pause then resume inside one on_message changes nothing. */
static void test_pause_inside_on_message(void **state)
{
    fx *f = *state;
    dx_server_options o = opts(f);
    o.ping_interval_ms = (unsigned)-1;
    start(f, &o);
    cl *c = cl_open(f, NULL, "/a");
    wait_ev(f, EV_OPEN);
    cl *b = cl_open(f, NULL, "/b");
    wait_ev(f, EV_OPEN);
    uint8_t burst[256];
    size_t n = 0;
    n += frame_bytes(burst + n, DX_OP_TEXT, "pause", 5);
    n += frame_bytes(burst + n, DX_OP_TEXT, "m1", 2);
    n += frame_bytes(burst + n, DX_OP_TEXT, "m2", 2);
    n += frame_bytes(burst + n, DX_OP_TEXT, "m3", 2);
    cl_send(c, burst, n); /* one write: usually one read on the server */
    ev e = wait_ev(f, EV_MESSAGE);
    assert_string_equal(e.data, "pause");
    assert_int_equal(f->pause_rc, 0);
    barrier(f);
    barrier(f);
    assert_int_equal(count_ev(f, EV_MESSAGE), 1);
    f->resume_rc = -1;
    cl_frame(b, DX_OP_TEXT, "resume:0", 8);
    e = wait_ev(f, EV_MESSAGE);
    assert_string_equal(e.data, "resume:0");
    assert_int_equal(f->resume_rc, 0);
    const char *want[] = {"m1", "m2", "m3"};
    for (int i = 0; i < 3; i++) {
        e = wait_ev(f, EV_MESSAGE);
        assert_string_equal(e.data, want[i]);
    }
    for (int i = 0; i < 3; i++)
        expect_text(c, want[i]);
    f->pause_rc = f->resume_rc = -1;
    n = 0;
    n += frame_bytes(burst + n, DX_OP_TEXT, "pauseresume", 11);
    n += frame_bytes(burst + n, DX_OP_TEXT, "after", 5);
    cl_send(c, burst, n);
    e = wait_ev(f, EV_MESSAGE);
    assert_string_equal(e.data, "pauseresume");
    e = wait_ev(f, EV_MESSAGE);
    assert_string_equal(e.data, "after");
    assert_int_equal(f->pause_rc, 0);
    assert_int_equal(f->resume_rc, 0);
    expect_text(c, "after");
    assert_int_equal(count_ev(f, EV_CLOSE), 0);
    cl_free(b);
    cl_free(c);
    wait_ev(f, EV_CLOSE);
    wait_ev(f, EV_CLOSE);
    on_loop(f, do_pause0, NULL); /* no connection left */
    assert_int_equal(f->pause_rc, -999);
}

/* While paused the heartbeat is suspended: the pong to a ping may sit
 * unread behind the pause, so it must not drop the connection (it would at
 * ping + pong timeout = 600 ms); the idle timeout still applies. */
static void test_pause_heartbeat_and_idle(void **state)
{
    fx *f = *state;
    dx_server_options o = opts(f);
    o.ping_interval_ms = 300;
    o.pong_timeout_ms = 300;
    start(f, &o);
    cl *c = cl_open(f, NULL, "/hb");
    wait_ev(f, EV_OPEN);
    cl_frame(c, DX_OP_TEXT, "pause", 5);
    wait_ev(f, EV_MESSAGE);
    assert_int_equal(f->pause_rc, 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        barrier(f);
        clock_gettime(CLOCK_MONOTONIC, &t1);
    } while ((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 < 2000);
    assert_int_equal(count_ev(f, EV_CLOSE), 0);
    cl_free(c);
    wait_ev(f, EV_CLOSE);
}

static void test_pause_idle_timeout(void **state)
{
    fx *f = *state;
    dx_server_options o = opts(f);
    o.ping_interval_ms = (unsigned)-1;
    o.idle_timeout_ms = 500;
    start(f, &o);
    cl *c = cl_open(f, NULL, "/idle");
    wait_ev(f, EV_OPEN);
    cl_frame(c, DX_OP_TEXT, "pause", 5);
    wait_ev(f, EV_MESSAGE);
    assert_int_equal(f->pause_rc, 0);
    /* the server closes with 1001; dx_conn_close resumed reading, so our
     * close reply is read and the code is the peer's echo, not 1006 */
    char buf[64];
    size_t len;
    assert_int_equal(cl_read_frame(c, buf, sizeof buf, &len), DX_OP_CLOSE);
    assert_true(len >= 2 && ((uint8_t)buf[0] << 8 | (uint8_t)buf[1]) == DX_CLOSE_GOING_AWAY);
    uint8_t cp[2] = {0x03, 0xE9};
    cl_frame(c, DX_OP_CLOSE, cp, 2);
    ev e = wait_ev(f, EV_CLOSE);
    assert_int_equal(e.code, DX_CLOSE_GOING_AWAY);
    cl_free(c);
}

/* A paused connection whose peer resets is noticed (1006), and a paused
 * connection closed by the application still finishes its close handshake. */
static void do_close0(fx *f, void *arg)
{
    (void)arg;
    f->resume_rc = f->conns[0] ? dx_conn_close(f->conns[0], 4000, "done", 4) : -999;
}

static void test_pause_then_reset_or_close(void **state)
{
    fx *f = *state;
    dx_server_options o = opts(f);
    start(f, &o);
    cl *c = cl_open(f, NULL, "/r");
    wait_ev(f, EV_OPEN);
    on_loop(f, do_pause0, NULL);
    assert_int_equal(f->pause_rc, 0);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    cl_free(c);
    ev e = wait_ev(f, EV_CLOSE);
    assert_int_equal(e.code, DX_CLOSE_ABNORMAL);

    c = cl_open(f, NULL, "/c");
    wait_ev(f, EV_OPEN);
    on_loop(f, do_pause0, NULL);
    on_loop(f, do_close0, NULL);
    assert_int_equal(f->resume_rc, 0);
    char buf[64];
    size_t len;
    assert_int_equal(cl_read_frame(c, buf, sizeof buf, &len), DX_OP_CLOSE);
    uint8_t cp[2] = {0x0F, 0xA0}; /* 4000 */
    cl_frame(c, DX_OP_CLOSE, cp, 2);
    e = wait_ev(f, EV_CLOSE);
    assert_int_equal(e.code, 4000); /* the peer's echo was read: not 1006 at a timeout */
    assert_true(cl_eof(c));
    cl_free(c);
}

/* ---- per-connection memory ------------------------------------------------------------------ */

static void test_conn_ext(void **state)
{
    fx *f = *state;
    f->ext_size = 100; /* not a multiple of the alignment */
    dx_server_options o = opts(f);
    start(f, &o);
    cl *c[4];
    for (int i = 0; i < 4; i++) {
        c[i] = cl_open(f, NULL, "/e");
        wait_ev(f, EV_OPEN);
    }
    for (int i = 0; i < 4; i++) {
        cl_frame(c[i], DX_OP_TEXT, "x", 1);
        expect_text(c[i], "x");
    }
    for (int i = 0; i < 4; i++)
        cl_free(c[i]);
    for (int i = 0; i < 4; i++)
        wait_ev(f, EV_CLOSE);
    barrier(f);
    assert_int_equal(f->ext_zero_bad, 0);
    assert_int_equal(f->ext_align_bad, 0);
    assert_int_equal(f->ext_kept_bad, 0); /* each kept its own pattern until on_close */
}

static void test_conn_ext_none(void **state)
{
    fx *f = *state;
    dx_server_options o = opts(f);
    start(f, &o);
    cl *c = cl_open(f, NULL, "/n");
    wait_ev(f, EV_OPEN);
    cl_free(c);
    wait_ev(f, EV_CLOSE);
    assert_int_equal(f->ext_align_bad, 0); /* dx_conn_ext was NULL */
}

/* ---- admission limits ----------------------------------------------------------------------- */

static void test_limit_per_ip(void **state)
{
    fx *f = *state;
    dx_server_options o = opts(f);
    o.max_conns_per_ip = 2;
    start(f, &o);
    cl *a1 = cl_open(f, "127.0.0.2", "/a");
    cl *a2 = cl_open(f, "127.0.0.2", "/a");
    /* the third from 127.0.0.2: 503 with Retry-After, then the end */
    for (int i = 0; i < 6; i++) {
        cl *x = cl_new(f, "127.0.0.2");
        cl_request(f, x, "/a", NULL, 0);
        char head[1024];
        assert_int_equal(cl_response(x, head, sizeof head), 503);
        assert_non_null(strstr(head, "Retry-After: "));
        assert_true(cl_eof(x));
        cl_free(x);
    }
    /* another address is not affected */
    cl *b1 = cl_open(f, "127.0.0.3", "/b");
    cl *b2 = cl_open(f, "127.0.0.3", "/b");
    dx_server_stats s = stats(f);
    assert_int_equal(s.refused_per_ip, 6);
    assert_int_equal(s.open, 4);
    assert_int_equal(s.handshakes_failed, 0);
    /* one line for the burst so far, the summary once it is over */
    assert_int_equal(count_log(f, "max_conns_per_ip (2) reached"), 1);
    wait_log(f, "max_conns_per_ip burst over: 6 connections refused");
    assert_int_equal(count_log(f, "max_conns_per_ip"), 2);
    /* a slot frees when a connection ends */
    cl_free(a1);
    wait_ev(f, EV_CLOSE);
    cl *a3 = cl_open(f, "127.0.0.2", "/a");
    assert_int_equal(stats(f).refused_per_ip, 6);
    cl_free(a2);
    cl_free(a3);
    cl_free(b1);
    cl_free(b2);
    wait_conns(f, 0);
    /* all gone: the counts went back to zero (two more fit again) */
    a1 = cl_open(f, "127.0.0.2", "/a");
    a2 = cl_open(f, "127.0.0.2", "/a");
    cl_free(a1);
    cl_free(a2);
}

static void test_limit_handshaking(void **state)
{
    fx *f = *state;
    f->mode = M_DEFER;
    dx_server_options o = opts(f);
    o.max_handshaking = 2;
    start(f, &o);
    /* one silent connection and one deferred upgrade: both count */
    cl *silent = cl_new(f, NULL);
    cl *def = cl_new(f, NULL);
    cl_request(f, def, "/d", NULL, 0);
    wait_ev(f, EV_UPGRADE);
    wait_conns(f, 2);
    for (int i = 0; i < 3; i++) {
        cl *x = cl_new(f, NULL);
        cl_request(f, x, "/x", NULL, 0);
        assert_true(cl_eof(x)); /* closed at accept: no response */
        assert_int_equal(x->len, 0);
        cl_free(x);
    }
    dx_server_stats s = stats(f);
    assert_int_equal(s.refused_handshaking, 3);
    assert_int_equal(count_log(f, "max_handshaking (2) reached"), 1);
    /* the deferred one opens: room for one more */
    answer a = {.protocol = NULL};
    on_loop(f, do_accept, &a);
    assert_int_equal(a.rc, 0);
    char head[1024];
    assert_int_equal(cl_response(def, head, sizeof head), 101);
    wait_ev(f, EV_OPEN);
    f->mode = M_ACCEPT;
    cl *ok = cl_open(f, NULL, "/ok");
    wait_ev(f, EV_OPEN);
    wait_log(f, "max_handshaking burst over: 3 connections refused");
    cl_free(ok);
    cl_free(def);
    cl_free(silent);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pause_backpressure, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_pause_inside_on_message, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_pause_heartbeat_and_idle, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_pause_idle_timeout, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_pause_then_reset_or_close, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_conn_ext, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_conn_ext_none, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_limit_per_ip, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_limit_handshaking, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
