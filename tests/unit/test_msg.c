/*
 * tests/unit/test_msg.c: src/ws/msg.c (prepared messages) and the send path
 * of src/ws/conn.c + ws_loop.c that carries them: dx_msg_new's errors and
 * header boundaries, references across threads, fan-out to slow readers,
 * references released at close, partial writes inside a shared frame, order
 * with private sends, send errors, a dropped connection leaving the flush
 * list. The same path under stress (TLS retries, allocations failing, churn,
 * two loop threads, allocations per delivery, client-side masking) is in
 * test_msg_send.c; the fixture both use is msg_fx.[ch].
 *
 * A real dx_loop + dx_server on 127.0.0.1 runs in its own thread; the
 * clients are raw blocking sockets in the test thread that speak just
 * enough WebSocket (a fixed upgrade request, unmasked frames in, masked
 * frames out). Work on the loop's thread is posted and waited for; the
 * test reads internals (queues, reference counts) only from there.
 */
#define _GNU_SOURCE
#include "msg_fx.h"

/* ---- dx_msg itself -------------------------------------------------------------- */

static void test_new_errors(void **state)
{
    (void)state;
    int err = 0;
    assert_null(dx_msg_new(DX_OP_PING, "x", 1, &err));
    assert_int_equal(err, DX_EINVAL);
    assert_null(dx_msg_new(DX_OP_CLOSE, "x", 1, &err));
    assert_int_equal(err, DX_EINVAL);
    assert_null(dx_msg_new(DX_OP_CONT, "x", 1, &err));
    assert_int_equal(err, DX_EINVAL);
    assert_null(dx_msg_new(DX_OP_BINARY, NULL, 3, &err));
    assert_int_equal(err, DX_EINVAL);
    /* invalid UTF-8: a bad byte, a cut-off character, a surrogate, overlong */
    static const char *const bad[] = {"\xff", "ok\xc3", "\xed\xa0\x80", "\xc0\xaf"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err = 0;
        assert_null(dx_msg_new(DX_OP_TEXT, bad[i], strlen(bad[i]), &err));
        assert_int_equal(err, DX_EUTF8);
        /* the same bytes are fine as binary */
        dx_msg *m = dx_msg_new(DX_OP_BINARY, bad[i], strlen(bad[i]), &err);
        assert_non_null(m);
        assert_int_equal(err, 0);
        dx_msg_unref(m);
    }
    assert_null(dx_msg_new(DX_OP_TEXT, "\xff", 1, NULL)); /* err may be NULL */
    /* zero length, with and without a pointer */
    dx_msg *z = dx_msg_new(DX_OP_TEXT, NULL, 0, &err);
    assert_non_null(z);
    assert_int_equal(dx_msg_len(z), 0);
    unsigned op;
    size_t hl;
    dx_rcbuf *f = dx__msg_frame(z, &op, &hl);
    assert_int_equal(op, DX_OP_TEXT);
    assert_int_equal(hl, 2);
    assert_int_equal(dx_rcbuf_len(f), 2);
    assert_int_equal(dx_rcbuf_data(f)[0], 0x81);
    assert_int_equal(dx_rcbuf_data(f)[1], 0x00);
    dx_msg_unref(z);
    dx_msg_unref(NULL);
    /* valid multi-byte text */
    dx_msg *t = dx_msg_new(DX_OP_TEXT, "h\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 10, &err);
    assert_non_null(t);
    assert_int_equal(dx_msg_len(t), 10);
    dx_msg_unref(t);
}

/* 125/126/65535/65536: the header's three length encodings (§5.2). */
static void test_header_boundaries(void **state)
{
    (void)state;
    static const size_t lens[] = {0, 1, 125, 126, 127, 65535, 65536, 70000};
    for (size_t i = 0; i < sizeof lens / sizeof *lens; i++) {
        size_t len = lens[i];
        uint8_t *p = pattern(len, (unsigned)i);
        dx_msg *m = dx_msg_new(DX_OP_BINARY, p, len, NULL);
        assert_non_null(m);
        assert_int_equal(dx_msg_len(m), len);
        unsigned op;
        size_t hl;
        dx_rcbuf *f = dx__msg_frame(m, &op, &hl);
        const uint8_t *b = dx_rcbuf_data(f);
        assert_int_equal(op, DX_OP_BINARY);
        assert_int_equal(b[0], 0x82);
        if (len <= 125) {
            assert_int_equal(hl, 2);
            assert_int_equal(b[1], len);
        } else if (len <= 65535) {
            assert_int_equal(hl, 4);
            assert_int_equal(b[1], 126);
            assert_int_equal((size_t)b[2] << 8 | b[3], len);
        } else {
            assert_int_equal(hl, 10);
            assert_int_equal(b[1], 127);
            uint64_t n = 0;
            for (int k = 0; k < 8; k++)
                n = n << 8 | b[2 + k];
            assert_int_equal(n, len);
        }
        assert_int_equal(dx_rcbuf_len(f), hl + len);
        assert_memory_equal(b + hl, p, len);
        free(p);
        dx_msg_unref(m);
    }
}

typedef struct ref_arg {
    dx_msg *m;
    atomic_int *go;
} ref_arg;

static void *ref_worker(void *p)
{
    ref_arg *a = p;
    while (!atomic_load(a->go))
        ;
    for (int i = 0; i < 20000; i++) {
        dx_msg *r = dx_msg_ref(a->m);
        assert_true(dx_msg_len(r) == 5);
        dx_msg_unref(r);
    }
    dx_msg_unref(a->m); /* the reference this thread was handed */
    return NULL;
}

/* References taken and dropped on many threads at once: the count stays
 * exact (ASan would see a double free or a use after free), and the last
 * drop, on whichever thread, frees. */
static void test_refs_across_threads(void **state)
{
    (void)state;
    enum { T = 8 };
    dx_msg *m = dx_msg_new(DX_OP_TEXT, "hello", 5, NULL);
    assert_non_null(m);
    atomic_int go = 0;
    pthread_t th[T];
    ref_arg a[T];
    for (int i = 0; i < T; i++) {
        a[i] = (ref_arg){.m = dx_msg_ref(m), .go = &go};
        assert_int_equal(pthread_create(&th[i], NULL, ref_worker, &a[i]), 0);
    }
    assert_int_equal(dx__msg_refs(m), T + 1);
    atomic_store(&go, 1);
    for (int i = 0; i < T; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(dx__msg_refs(m), 1);
    dx_msg_unref(m);

    /* the last reference dropped on another thread frees it */
    m = dx_msg_new(DX_OP_BINARY, "12345", 5, NULL);
    go = 1;
    ref_arg last = {.m = m, .go = &go};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, ref_worker, &last), 0);
    pthread_join(t, NULL);
}

/* Many connections, some of which stop reading: their queues hold
 * references to the one frame (not copies), send_max still applies (1008,
 * counted), and every reference comes back when they are gone. */
static void test_fanout_slow_readers(void **state)
{
    (void)state;
    enum { N = 24, SLOW = 8, SZ = 4000 };
    mfx *f = start(64 * 1024, 16 * 1024, 1000);
    f->small_sndbuf = 1;
    rc *cls[N];
    open_clients(f, cls, N, 4096);
    uint8_t *p = pattern(SZ, 7);
    send_arg a = {.from = 0, .to = N, .times = 10};
    a.m = dx_msg_new(DX_OP_BINARY, p, SZ, NULL);
    assert_non_null(a.m);
    on_loop(f, do_send, &a);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(a.rc[i], 0);
    /* 40 KB each, more than a 4 KiB socket buffer pair takes: queued, and
     * only as references to the one frame */
    send_arg q = {.m = a.m};
    on_loop(f, do_count, &q);
    assert_true(q.seg_refs > 0);
    assert_int_equal(q.refs, 1 + q.seg_refs);
    assert_int_equal(q.copies, 0);
    /* the fast readers take everything */
    for (size_t i = SLOW; i < N; i++)
        for (int k = 0; k < 10; k++)
            rc_expect(cls[i], DX_OP_BINARY, p, SZ, 1 << 16);
    /* more, a little at a time so the readers keep up: the slow ones pass
     * send_max (64 KiB) and are closed with 1008 */
    a.times = 2;
    for (int step = 0; step < 10; step++) {
        on_loop(f, do_send, &a);
        for (size_t i = SLOW; i < N; i++)
            for (int k = 0; k < 2; k++)
                rc_expect(cls[i], DX_OP_BINARY, p, SZ, 1 << 16);
    }
    wait_count(f, &f->nclosed, SLOW); /* the close timeout (1 s) ends them: they never read */
    pthread_mutex_lock(&f->mu);
    for (size_t i = 0; i < SLOW; i++)
        assert_int_equal(f->codes[i], DX_CLOSE_POLICY);
    pthread_mutex_unlock(&f->mu);
    dx_server_stats st;
    on_loop(f, do_stats, &st);
    assert_int_equal(st.dropped_slow, SLOW);
    /* every queued reference is back: only ours is left */
    for (int i = 0; i < WAIT_MS / 10; i++) {
        on_loop(f, do_count, &q);
        if (q.refs == 1)
            break;
        usleep(10000);
    }
    assert_int_equal(q.refs, 1);
    /* What a slow reader finds when it reads at last: whole frames of the
     * shared message (the stream was cut when the close timeout dropped the
     * connection, so the last one may be partial), never garbage. */
    size_t cap = 1 << 20, got = 0;
    uint8_t *all = malloc(cap);
    assert_non_null(all);
    for (;;) {
        assert_true(got < cap);
        ssize_t r = recv(cls[0]->fd, all + got, cap - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    size_t at = 0, whole = 0;
    while (got - at >= 4) {
        assert_true(all[at] == 0x82 || all[at] == 0x88);
        size_t fl = all[at + 1] == 126 ? 4 + ((size_t)all[at + 2] << 8 | all[at + 3]) : 2u + all[at + 1];
        if (got - at < fl)
            break;
        if (all[at] == 0x82) {
            assert_int_equal(fl, 4 + SZ);
            assert_memory_equal(all + at + 4, p, SZ);
        }
        at += fl;
        whole++;
    }
    assert_true(whole >= 1);
    free(all);
    for (size_t i = 0; i < N; i++)
        rc_free(cls[i]);
    dx_msg_unref(a.m);
    free(p);
    stop(f);
}

/* Connections that hold references and go away (reset by the peer, or
 * dropped with their server) release them. */
static void test_close_releases_references(void **state)
{
    (void)state;
    enum { N = 6, SZ = 3000 };
    mfx *f = start(1 << 20, 64 * 1024, 1000);
    f->small_sndbuf = 1;
    rc *cls[N];
    open_clients(f, cls, N, 4096);
    uint8_t *p = pattern(SZ, 3);
    send_arg a = {.from = 0, .to = N, .times = 20};
    a.m = dx_msg_new(DX_OP_BINARY, p, SZ, NULL);
    on_loop(f, do_send, &a);
    send_arg q = {.m = a.m};
    on_loop(f, do_count, &q);
    assert_true(q.seg_refs >= N);
    assert_int_equal(q.refs, 1 + q.seg_refs);
    /* half reset their connection (RST) */
    for (size_t i = 0; i < N / 2; i++) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(cls[i]->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(cls[i]->fd);
        cls[i]->fd = -1;
    }
    wait_count(f, &f->nclosed, N / 2);
    on_loop(f, do_count, &q);
    assert_int_equal(q.refs, 1 + q.seg_refs);
    assert_true(q.seg_refs > 0); /* the others still hold theirs */
    /* the rest go with the server */
    dx_loop_stop(f->loop);
    pthread_join(f->th, NULL);
    dx_server_free(f->srv);
    f->srv = NULL;
    unsigned op;
    size_t hl;
    assert_int_equal(dx_rcbuf_refs(dx__msg_frame(a.m, &op, &hl)), 1);
    dx_loop_free(f->loop);
    assert_int_equal(f->ts.live, 0);
    for (size_t i = 0; i < N; i++)
        rc_free(cls[i]);
    dx_msg_unref(a.m);
    free(p);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

/* A shared frame larger than both socket buffers together is written in
 * many pieces: each resumes inside the segment where the last one stopped. */
typedef struct big_arg {
    dx_msg *m1, *m2;
    const uint8_t *priv;
    size_t priv_len;
    int rc[4];
} big_arg;

static void do_send_big(mfx *f, void *p)
{
    big_arg *a = p;
    dx_conn *c = f->conns[0];
    a->rc[0] = dx_conn_send_msg(c, a->m1);
    a->rc[1] = dx_conn_send(c, DX_OP_BINARY, a->priv, a->priv_len);
    a->rc[2] = dx_conn_send_msg(c, a->m2);
    a->rc[3] = dx_conn_send(c, DX_OP_TEXT, "tail", 4);
}

static void test_partial_write_inside_shared_frame(void **state)
{
    (void)state;
    mfx *f = start(8u << 20, 64 * 1024, 1000);
    f->small_sndbuf = 1;
    rc *cl[1];
    open_clients(f, cl, 1, 4096);
    size_t l1 = 1000003, l2 = 70001, lp = 20000;
    uint8_t *p1 = pattern(l1, 11), *p2 = pattern(l2, 12), *pp = pattern(lp, 13);
    big_arg a = {.m1 = dx_msg_new(DX_OP_BINARY, p1, l1, NULL), .m2 = dx_msg_new(DX_OP_BINARY, p2, l2, NULL),
                 .priv = pp, .priv_len = lp};
    on_loop(f, do_send_big, &a);
    for (int i = 0; i < 4; i++)
        assert_int_equal(a.rc[i], 0);
    /* the caller's buffer may change at once: the queue copied what it needed */
    memset(pp, 0xEE, lp);
    uint8_t *want = pattern(lp, 13);
    rc_expect(cl[0], DX_OP_BINARY, p1, l1, 777); /* small reads: the server resumes often */
    rc_expect(cl[0], DX_OP_BINARY, want, lp, 1000);
    rc_expect(cl[0], DX_OP_BINARY, p2, l2, 333);
    rc_expect(cl[0], DX_OP_TEXT, "tail", 4, 100);
    send_arg q = {.m = a.m1};
    for (int i = 0; i < WAIT_MS / 10; i++) {
        on_loop(f, do_count, &q);
        if (q.refs == 1 && q.buffered[0] == 0)
            break;
        usleep(10000);
    }
    assert_int_equal(q.refs, 1);
    assert_int_equal(q.buffered[0], 0);
    rc_free(cl[0]);
    dx_msg_unref(a.m1);
    dx_msg_unref(a.m2);
    free(p1);
    free(p2);
    free(pp);
    free(want);
    stop(f);
}

/* Shared and private sends to one connection, small and large, in one
 * callback and over several iterations, arrive in the order made. */
typedef struct mix_arg {
    dx_msg *m[3];
    const uint8_t *big;
    size_t big_len;
    int round;
    int bad;
} mix_arg;

static void do_mix(mfx *f, void *p)
{
    mix_arg *a = p;
    for (size_t i = 0; i < 4; i++) {
        dx_conn *c = f->conns[i];
        char t[32];
        int n = snprintf(t, sizeof t, "p%d-%zu", a->round, i);
        a->bad |= dx_conn_send_msg(c, a->m[0]);
        a->bad |= dx_conn_send(c, DX_OP_TEXT, t, (size_t)n);
        a->bad |= dx_conn_send_msg(c, a->m[1]);
        a->bad |= dx_conn_send(c, DX_OP_BINARY, a->big, a->big_len); /* written at once */
        a->bad |= dx_conn_send_msg(c, a->m[0]);
        a->bad |= dx_conn_send_msg(c, a->m[2]); /* 200 KB: past the gather limit */
        a->bad |= dx_conn_send(c, DX_OP_TEXT, t, (size_t)n);
    }
}

static void test_order_shared_and_private(void **state)
{
    (void)state;
    mfx *f = start(4u << 20, 64 * 1024, 1000);
    rc *cls[4];
    open_clients(f, cls, 4, 0);
    uint8_t *big = pattern(50000, 5), *huge = pattern(200000, 6);
    mix_arg a = {.big = big, .big_len = 50000};
    a.m[0] = dx_msg_new(DX_OP_TEXT, "shared-0", 8, NULL);
    a.m[1] = dx_msg_new(DX_OP_BINARY, NULL, 0, NULL);
    a.m[2] = dx_msg_new(DX_OP_BINARY, huge, 200000, NULL);
    for (a.round = 0; a.round < 3; a.round++) {
        on_loop(f, do_mix, &a);
        assert_int_equal(a.bad, 0);
        for (size_t i = 0; i < 4; i++) {
            char t[32];
            int n = snprintf(t, sizeof t, "p%d-%zu", a.round, i);
            rc_expect(cls[i], DX_OP_TEXT, "shared-0", 8, 1 << 16);
            rc_expect(cls[i], DX_OP_TEXT, t, (size_t)n, 1 << 16);
            rc_expect(cls[i], DX_OP_BINARY, "", 0, 1 << 16);
            rc_expect(cls[i], DX_OP_BINARY, big, 50000, 1 << 16);
            rc_expect(cls[i], DX_OP_TEXT, "shared-0", 8, 1 << 16);
            rc_expect(cls[i], DX_OP_BINARY, huge, 200000, 1 << 16);
            rc_expect(cls[i], DX_OP_TEXT, t, (size_t)n, 1 << 16);
        }
    }
    for (size_t i = 0; i < 4; i++)
        rc_free(cls[i]);
    for (int i = 0; i < 3; i++)
        dx_msg_unref(a.m[i]);
    free(big);
    free(huge);
    stop(f);
}

/* Errors: a closed connection, NULL arguments. */
typedef struct err_arg {
    dx_msg *m;
    int rc_null_c, rc_null_m, rc_after_close;
} err_arg;

static void do_errs(mfx *f, void *p)
{
    err_arg *a = p;
    a->rc_null_c = dx_conn_send_msg(NULL, a->m);
    a->rc_null_m = dx_conn_send_msg(f->conns[0], NULL);
    (void)dx_conn_close(f->conns[0], 1000, NULL, 0);
    a->rc_after_close = dx_conn_send_msg(f->conns[0], a->m);
}

static void test_send_errors(void **state)
{
    (void)state;
    mfx *f = start(0, 0, 1000);
    rc *cl[1];
    open_clients(f, cl, 1, 0);
    err_arg a = {.m = dx_msg_new(DX_OP_TEXT, "x", 1, NULL)};
    on_loop(f, do_errs, &a);
    assert_int_equal(a.rc_null_c, DX_EINVAL);
    assert_int_equal(a.rc_null_m, DX_EINVAL);
    assert_int_equal(a.rc_after_close, DX_ECLOSED);
    rc_expect_close(cl[0], 1000);
    rc_free(cl[0]);
    dx_msg_unref(a.m);
    stop(f);
}

/* A connection that got output this iteration and is dropped before the
 * loop's flush leaves the flush list at once: the flush never sees freed
 * memory (ASan), and the others still get their bytes. */
typedef struct drop_arg {
    dx_msg *m;
    size_t pend_before, pend_after;
} drop_arg;

static void do_send_then_drop(mfx *f, void *p)
{
    drop_arg *a = p;
    for (size_t i = 0; i < 4; i++)
        (void)dx_conn_send_msg(f->conns[i], a->m);
    (void)dx_conn_send(f->conns[1], DX_OP_TEXT, "private", 7); /* an arena copy too */
    dx__wsl *w = dx__conn_ep(f->conns[0])->wsl;
    a->pend_before = 0;
    dx_list_foreach(it, &w->pend) a->pend_before++;
    dx__conn_abort(f->conns[1], DX_CLOSE_ABNORMAL, "test: dropped with output pending");
    dx__conn_abort(f->conns[2], DX_CLOSE_ABNORMAL, "test: dropped with output pending");
    a->pend_after = 0;
    dx_list_foreach(it, &w->pend) a->pend_after++;
}

static void test_dropped_connection_leaves_flush_list(void **state)
{
    (void)state;
    mfx *f = start(0, 0, 1000);
    rc *cls[4];
    open_clients(f, cls, 4, 0);
    drop_arg a = {.m = dx_msg_new(DX_OP_TEXT, "to everyone", 11, NULL)};
    on_loop(f, do_send_then_drop, &a);
    assert_int_equal(a.pend_before, 4);
    assert_int_equal(a.pend_after, 2);
    rc_expect(cls[0], DX_OP_TEXT, "to everyone", 11, 1 << 16);
    rc_expect(cls[3], DX_OP_TEXT, "to everyone", 11, 1 << 16);
    for (size_t i = 1; i < 3; i++) {
        uint8_t b;
        ssize_t r = recv(cls[i]->fd, &b, 1, 0);
        assert_true(r <= 0); /* dropped: nothing was written to them */
    }
    send_arg q = {.m = a.m};
    on_loop(f, do_count, &q);
    assert_int_equal(q.refs, 1);
    for (size_t i = 0; i < 4; i++)
        rc_free(cls[i]);
    dx_msg_unref(a.m);
    stop(f);
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_errors),
        cmocka_unit_test(test_header_boundaries),
        cmocka_unit_test(test_refs_across_threads),
        cmocka_unit_test(test_fanout_slow_readers),
        cmocka_unit_test(test_close_releases_references),
        cmocka_unit_test(test_partial_write_inside_shared_frame),
        cmocka_unit_test(test_order_shared_and_private),
        cmocka_unit_test(test_send_errors),
        cmocka_unit_test(test_dropped_connection_leaves_flush_list),
    };
    dx_test_filter_from_env();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
