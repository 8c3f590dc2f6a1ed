/*
 * tests/unit/test_upgrade.c: deferred upgrade decisions (src/ws/upgrade.c,
 * with conn.c and server.c): dx_request_defer, then dx_upgrade_accept or
 * dx_upgrade_refuse later (from a post, from inside on_upgrade, from
 * another connection's callback), or never (the handshake timeout); the
 * client leaving first, a shutdown or the server's free while a decision
 * is pending, and frames pipelined behind the request held until it.
 *
 * The fixture (a server on its own loop thread whose callbacks record
 * events; blocking raw clients) is hooks_fx.c, shared with
 * test_server_hooks.c.
 */
#define _GNU_SOURCE
#include "hooks_fx.h"

/* ---- deferred upgrades ----------------------------------------------------------------------- */

/* Accepted from a posted function, long after the head buffer was reused:
 * the copied request is intact, nothing fires inside the call, on_open
 * follows, and the frames pipelined right behind the request (held while
 * the decision was pending) arrive after it, in order. */
static void test_defer_accept_later(void **state)
{
    fx *f = *state;
    f->mode = M_DEFER;
    dx_server_options o = opts(f);
    start(f, &o);
    cl *c = cl_new(f, NULL);
    uint8_t extra[128];
    size_t n = 0;
    n += frame_bytes(extra + n, DX_OP_TEXT, "one", 3);
    n += frame_bytes(extra + n, DX_OP_TEXT, "two", 3);
    n += frame_bytes(extra + n, DX_OP_TEXT, "three", 5);
    cl_request(f, c, "/room/7?token=abc", extra, n);
    wait_ev(f, EV_UPGRADE);
    /* more frames in a later write: these stay in the kernel meanwhile */
    n = frame_bytes(extra, DX_OP_TEXT, "four", 4);
    cl_send(c, extra, n);
    long cpu = loop_cpu_ms_over_1s(f);
    assert_true(cpu < 100);
    /* other connections are served meanwhile: a second client, accepted later too */
    barrier(f);
    assert_int_equal(count_ev(f, EV_OPEN), 0);
    assert_int_equal(count_ev(f, EV_MESSAGE), 0);
    dx_server_stats s = stats(f);
    assert_int_equal(s.upgrades_deferred, 1);
    assert_int_equal(s.open, 0);
    answer a = {.protocol = "p2"};
    on_loop(f, do_accept, &a);
    assert_int_equal(a.rc, 0);
    assert_int_equal(a.opens_during, 0);
    assert_string_equal(a.path, "/room/7");
    assert_string_equal(a.query, "token=abc");
    assert_string_equal(a.xtest, "kept");
    assert_string_equal(a.protos, "p1,p2");
    assert_true(strncmp(a.remote, "127.0.0.1:", 10) == 0);
    char head[1024];
    assert_int_equal(cl_response(c, head, sizeof head), 101);
    assert_non_null(strstr(head, "Sec-WebSocket-Protocol: p2"));
    ev e = wait_ev(f, EV_OPEN);
    assert_string_equal(e.data, "p2");
    assert_int_equal(e.code, 1); /* the user pointer given at accept */
    const char *want[] = {"one", "two", "three", "four"};
    for (int i = 0; i < 4; i++) {
        ev m = wait_ev(f, EV_MESSAGE);
        assert_string_equal(m.data, want[i]);
        expect_text(c, want[i]);
    }
    cl_frame(c, DX_OP_TEXT, "five", 4); /* and reading goes on */
    expect_text(c, "five");
    cl_free(c);
    wait_ev(f, EV_CLOSE);
}

/* A deferred request with extension offers (3 in one header, then 13 more
 * in a second: DX_WS_DEFAULT_MAX_EXTS in all): the handle copies exactly
 * as many as the request made, and the accept still answers 101. */
static void test_defer_with_extension_offers(void **state)
{
    fx *f = *state;
    f->mode = M_DEFER;
    dx_server_options o = opts(f);
    start(f, &o);
    cl *c = cl_new(f, NULL);
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                     "Sec-WebSocket-Protocol: p1, p2\r\n"
                     "Sec-WebSocket-Extensions: foo; a=1; b, bar, x-webkit-deflate-frame\r\n"
                     "Sec-WebSocket-Extensions: e4, e5, e6, e7, e8, e9, e10, e11, e12, e13, e14, e15; q=\"v\", e16\r\n"
                     "\r\n");
    assert_true(n > 0 && (size_t)n < sizeof req);
    cl_send(c, req, (size_t)n);
    wait_ev(f, EV_UPGRADE);
    barrier(f);
    answer a = {.protocol = "p1"};
    on_loop(f, do_accept, &a);
    assert_int_equal(a.rc, 0);
    assert_string_equal(a.path, "/x");
    char head[1024];
    assert_int_equal(cl_response(c, head, sizeof head), 101);
    wait_ev(f, EV_OPEN);
    cl_frame(c, DX_OP_TEXT, "hi", 2);
    expect_text(c, "hi");
    cl_free(c);
    wait_ev(f, EV_CLOSE);
}

/* Answered inside on_upgrade (accept, and refuse with a status): applied
 * when on_upgrade returns, whatever it returned. */
static void test_defer_answer_inside(void **state)
{
    fx *f = *state;
    f->mode = M_ANSWER_INSIDE;
    dx_server_options o = opts(f);
    start(f, &o);
    cl *c = cl_open(f, NULL, "/ok");
    ev e = wait_ev(f, EV_OPEN);
    assert_string_equal(e.data, "p2");
    assert_int_equal(e.code, 1);
    cl_frame(c, DX_OP_TEXT, "hi", 2);
    expect_text(c, "hi");
    cl *r = cl_new(f, NULL);
    cl_request(f, r, "/refuse", NULL, 0);
    char head[1024];
    assert_int_equal(cl_response(r, head, sizeof head), 418);
    assert_true(cl_eof(r));
    cl_free(r);
    cl_free(c);
    wait_ev(f, EV_CLOSE);
}

static void test_defer_refuse(void **state)
{
    fx *f = *state;
    f->mode = M_DEFER;
    dx_server_options o = opts(f);
    start(f, &o);
    cl *c = cl_new(f, NULL);
    cl_request(f, c, "/private", NULL, 0);
    wait_ev(f, EV_UPGRADE);
    answer a = {.status = 401, .headers = "WWW-Authenticate: Bearer\r\n"};
    on_loop(f, do_refuse, &a);
    assert_int_equal(a.rc, 0);
    char head[1024];
    assert_int_equal(cl_response(c, head, sizeof head), 401);
    assert_non_null(strstr(head, "WWW-Authenticate: Bearer\r\n"));
    assert_true(cl_eof(c));
    cl_free(c);
    wait_conns(f, 0);
    dx_server_stats s = stats(f);
    assert_int_equal(s.handshakes_failed, 1);
    assert_int_equal(count_ev(f, EV_OPEN), 0);
    /* an out-of-range status becomes 500 */
    c = cl_new(f, NULL);
    cl_request(f, c, "/x", NULL, 0);
    wait_ev(f, EV_UPGRADE);
    a = (answer){.status = 42};
    on_loop(f, do_refuse, &a);
    assert_int_equal(cl_response(c, head, sizeof head), 500);
    cl_free(c);
}

/* No answer within the handshake timeout: dropped, counted, logged; the
 * late answer gets DX_ECLOSED and frees the handle (ASan: no leak). */
static void test_defer_timeout(void **state)
{
    fx *f = *state;
    f->mode = M_DEFER;
    dx_server_options o = opts(f);
    o.handshake_timeout_ms = 300;
    start(f, &o);
    cl *c = cl_new(f, NULL);
    cl_request(f, c, "/slow", NULL, 0);
    wait_ev(f, EV_UPGRADE);
    assert_true(cl_eof(c)); /* nothing but the end */
    assert_int_equal(c->len, 0);
    wait_conns(f, 0);
    dx_server_stats s = stats(f);
    assert_int_equal(s.upgrade_timeouts, 1);
    assert_int_equal(s.handshakes_failed, 1);
    wait_log(f, "upgrade decision not made within handshake_timeout_ms");
    answer a = {.protocol = NULL};
    on_loop(f, do_accept, &a);
    assert_int_equal(a.rc, DX_ECLOSED);
    assert_int_equal(count_ev(f, EV_OPEN), 0);
    cl_free(c);
}

/* The client leaves while the decision is pending: a reset, and a FIN.
 * Noticed at once (not at the timeout); the answers get DX_ECLOSED. */
static void test_defer_client_leaves(void **state)
{
    fx *f = *state;
    f->mode = M_DEFER;
    dx_server_options o = opts(f);
    o.handshake_timeout_ms = 60000; /* only noticing the peer can end it in time */
    start(f, &o);
    for (int how = 0; how < 2; how++) {
        cl *c = cl_new(f, NULL);
        cl_request(f, c, "/bye", NULL, 0);
        wait_ev(f, EV_UPGRADE);
        wait_conns(f, 1);
        if (how == 0) {
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            assert_int_equal(setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
            close(c->fd); /* RST */
            c->fd = -1;
        } else {
            shutdown(c->fd, SHUT_WR); /* FIN */
        }
        wait_conns(f, 0);
        answer a = {.protocol = "p1"};
        on_loop(f, do_accept, &a);
        assert_int_equal(a.rc, DX_ECLOSED);
        cl_free(c);
    }
    assert_int_equal(count_ev(f, EV_OPEN), 0);
    assert_int_equal(stats(f).upgrade_timeouts, 0);
}

/* The peer leaves (FIN, RST) or the server shuts down after the answer but
 * before the loop has opened the connection. dx_upgrade_accept returned 0,
 * so on_open is owed (with the user pointer), then on_close; before the
 * fix the connection was dropped without either (test_hammer_features
 * found it). An accept that notices the loss itself says DX_ECLOSED and
 * nothing follows. */
typedef struct leave {
    cl *c;
    int how; /* 0 FIN, 1 RST, 2 dx_server_shutdown */
    int rc;
} leave;

static void do_leave_then_accept(fx *f, void *arg)
{
    leave *l = arg;
    if (l->how == 0) {
        shutdown(l->c->fd, SHUT_WR);
    } else if (l->how == 1) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(l->c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(l->c->fd);
        l->c->fd = -1;
    }
    l->rc = dx_upgrade_accept(f->h, "p1", &user_marker);
    f->h = NULL;
    if (l->how == 2)
        (void)dx_server_shutdown(f->srv, 1001, NULL);
}

static void test_defer_accepted_then_lost(void **state)
{
    fx *f = *state;
    f->mode = M_DEFER;
    dx_server_options o = opts(f);
    start(f, &o);
    size_t opens = 0;
    for (int how = 0; how < 3; how++) {
        cl *c = cl_new(f, NULL);
        cl_request(f, c, "/lost", NULL, 0);
        wait_ev(f, EV_UPGRADE);
        wait_conns(f, 1);
        leave l = {.c = c, .how = how};
        on_loop(f, do_leave_then_accept, &l);
        if (l.rc == 0) {
            ev e = wait_ev(f, EV_OPEN);
            assert_int_equal(e.code, 1); /* the user pointer given at accept */
            ev x = wait_ev(f, EV_CLOSE);
            assert_int_equal(x.id, e.id);
            assert_int_equal(x.code, how == 2 ? 1001 : 1006);
            opens++;
        } else {
            assert_int_equal(l.rc, DX_ECLOSED);
        }
        wait_conns(f, 0);
        cl_free(c);
    }
    barrier(f);
    assert_int_equal(count_ev(f, EV_OPEN), opens);
    assert_int_equal(count_ev(f, EV_CLOSE), opens);
    assert_true(opens >= 2); /* FIN and shutdown always reach the loop after a successful write */
}

/* Answered from a later callback (another connection's on_close); a
 * handle outliving a shutdown, or the server itself, gets DX_ECLOSED and
 * is freed. */
static void test_defer_answer_from_callback_and_shutdown(void **state)
{
    fx *f = *state;
    f->mode = M_ACCEPT;
    dx_server_options o = opts(f);
    start(f, &o);
    cl *trigger = cl_open(f, NULL, "/t");
    wait_ev(f, EV_UPGRADE); /* the trigger's own */
    wait_ev(f, EV_OPEN);
    f->mode = M_DEFER;
    cl *c = cl_new(f, NULL);
    cl_request(f, c, "/later", NULL, 0);
    wait_ev(f, EV_UPGRADE);
    f->answer_on_close = 1;
    f->close_answer_rc = -1;
    cl_free(trigger); /* its on_close accepts the pending upgrade */
    wait_ev(f, EV_CLOSE);
    char head[1024];
    assert_int_equal(cl_response(c, head, sizeof head), 101);
    ev e = wait_ev(f, EV_OPEN);
    assert_string_equal(e.data, "p1");
    assert_int_equal(f->close_answer_rc, 0);
    f->answer_on_close = 0;
    cl_frame(c, DX_OP_TEXT, "ok", 2);
    expect_text(c, "ok");

    /* a shutdown drops the pending one; its answer gets DX_ECLOSED */
    cl *d = cl_new(f, NULL);
    cl_request(f, d, "/shut", NULL, 0);
    wait_ev(f, EV_UPGRADE);
    on_loop(f, do_shutdown, NULL);
    assert_true(cl_eof(d));
    answer a = {.status = 403};
    on_loop(f, do_refuse, &a);
    assert_int_equal(a.rc, DX_ECLOSED);
    cl_free(d);
    cl_free(c);
    wait_ev(f, EV_CLOSE);
    wait_conns(f, 0);
}

static void test_defer_outlives_server(void **state)
{
    fx *f = *state;
    f->mode = M_DEFER;
    dx_server_options o = opts(f);
    start(f, &o);
    cl *c = cl_new(f, NULL);
    cl_request(f, c, "/gone", NULL, 0);
    wait_ev(f, EV_UPGRADE);
    on_loop(f, do_free_server, NULL); /* drops the connection without callbacks */
    assert_true(cl_eof(c));
    answer a = {.protocol = "p1"};
    on_loop(f, do_accept, &a);
    assert_int_equal(a.rc, DX_ECLOSED); /* the handle is freed: ASan checks */
    cl_free(c);
}

/* Deferred, then the server freed inside the same on_upgrade: the
 * connection is dropped, and the handle's later answer gets DX_ECLOSED
 * (nothing is armed on the dead connection: ASan checks). */
static void test_defer_then_free_inside(void **state)
{
    fx *f = *state;
    f->mode = M_FREE_INSIDE;
    dx_server_options o = opts(f);
    start(f, &o);
    cl *c = cl_new(f, NULL);
    cl_request(f, c, "/gone", NULL, 0);
    wait_ev(f, EV_UPGRADE);
    assert_true(cl_eof(c));
    answer a = {.protocol = "p1"};
    on_loop(f, do_accept, &a);
    assert_int_equal(a.rc, DX_ECLOSED);
    cl_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defer_accept_later, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_defer_with_extension_offers, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_defer_answer_inside, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_defer_refuse, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_defer_timeout, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_defer_client_leaves, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_defer_accepted_then_lost, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_defer_answer_from_callback_and_shutdown, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_defer_outlives_server, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_defer_then_free_inside, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
