/*
 * tests/unit/test_msg_send.c: the send path of src/ws/conn.c + ws_loop.c
 * carrying prepared messages (src/ws/msg.c), under stress: a TLS queue of
 * many segments retried after blocked writes, every allocation of the send
 * path failing once, one message shared by two loops' threads, a randomized
 * fan-out under churn, no allocation per delivery, and client-side
 * connections masking a copy. Same fixture as test_msg.c (msg_fx.[ch]).
 */
#define _GNU_SOURCE
#include "msg_fx.h"

/* ---- TLS: a queue of many segments, retried after blocked writes ------------- */

static void go(rc *c, unsigned k)
{
    char m[32];
    int n = snprintf(m, sizeof m, "go:%u", k);
    uint8_t fr[6 + 32] = {0x81, (uint8_t)(0x80 | n), 0, 0, 0, 0}; /* masked with a zero key */
    memcpy(fr + 6, m, (size_t)n);
    rc_send(c, fr, 6 + (size_t)n);
}

static void test_tls_many_segments_retried(void **state)
{
    (void)state;
    char dir[] = "/tmp/dx_msg_tls_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char crt[128], key[128];
    dx_test_self_signed(dir, "t", crt, key);
    dx_tls_cert cert = {crt, key};
    mfx *f = start_tls(64u << 20, 64 * 1024, 1000, &cert, make_pool);
    f->small_sndbuf = 1;
    rc *c = rc_open_ex(f, 4096, 1);
    wait_count(f, &f->nopen, 1);
    enum { ROUNDS = 90, AHEAD = 2 };
    /* Two rounds always asked ahead: the server appends to a queue whose
     * last write blocked, so retries see more segments than the first try. */
    for (unsigned k = 0; k < AHEAD; k++)
        go(c, k);
    uint32_t x = 99;
    for (unsigned k = 0; k < ROUNDS; k++) {
        if (k + AHEAD < ROUNDS)
            go(c, k + AHEAD);
        item it[ROUND_MAX];
        size_t n = round_items(k, it);
        for (size_t j = 0; j < n; j++) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            size_t piece = 1 + x % 3000;
            uint8_t *want = pattern(it[j].len, it[j].shared ? 100 + (unsigned)(it[j].shared - 1) : it[j].seed);
            rc_expect(c, DX_OP_BINARY, want, it[j].len, piece);
            free(want);
        }
    }
    dx_server_stats st;
    on_loop(f, do_stats, &st);
    assert_int_equal(st.closed, 0); /* no write failed */
    rc_free(c);
    stop_pool(f);
    assert_int_equal(dx_test_rm_rf(dir), 0);
}

/* ---- every allocation of the send path fails once ------------------------------ */

typedef struct oom_arg {
    dx_msg *small, *big;
    const uint8_t *priv;
    long n;            /* which allocation from here fails */
    long base;         /* the loop's allocation count before the scenario */
    long calls_after;  /* allocations the scenario made, its flush included */
    int bad_rc;
} oom_arg;

static int rc_ok(int r) { return r == 0 || r == DX_ENOMEM || r == DX_ECLOSED || r == DX_ELIMIT; }

static void do_oom(mfx *f, void *p)
{
    oom_arg *a = p;
    f->fail_loop_at = a->n ? f->loop_calls + a->n : 0;
    a->base = f->loop_calls;
    for (size_t i = 0; i < 4; i++) {
        dx_conn *c = f->conns[i];
        if (!c)
            continue;
        int r[6];
        r[0] = dx_conn_send_msg(c, a->small);
        r[1] = dx_conn_send(c, DX_OP_TEXT, "private", 7);        /* arena */
        r[2] = dx_conn_send_msg(c, a->big);                      /* past the gather limit: written now */
        r[3] = dx_conn_send(c, DX_OP_BINARY, a->priv, 20000);    /* direct, remainder copied */
        r[4] = dx_conn_send_msg(c, a->small);                    /* behind a backlog */
        r[5] = dx_conn_send(c, DX_OP_TEXT, "again", 5);
        for (int k = 0; k < 6; k++)
            if (!rc_ok(r[k]))
                a->bad_rc = r[k];
    }
}

/* Runs after the flush that followed do_oom. */
static void do_after(mfx *f, void *p)
{
    oom_arg *a = p;
    a->calls_after = f->loop_calls - a->base;
}

static void test_every_allocation_fails_once(void **state)
{
    (void)state;
    uint8_t *priv = pattern(20000, 21), *bigp = pattern(300000, 22);
    long total = -1;
    for (long n = 0; total < 0 || n <= total + 2; n++) {
        mfx *f = start(1 << 20, 64 * 1024, 300);
        f->small_sndbuf = 1;
        rc *cls[4];
        open_clients(f, cls, 4, 4096);
        oom_arg a = {.small = dx_msg_new(DX_OP_TEXT, "small", 5, NULL),
                     .big = dx_msg_new(DX_OP_BINARY, bigp, 300000, NULL),
                     .priv = priv,
                     .n = n};
        on_loop(f, do_oom, &a);
        assert_int_equal(a.bad_rc, 0);
        on_loop(f, do_after, &a); /* the flush before sleep ran (with its allocations) */
        if (n == 0)
            total = a.calls_after; /* the number of allocations to fail in turn (at least) */
        f->fail_loop_at = 0;
        for (size_t i = 0; i < 4; i++)
            rc_free(cls[i]); /* RST or EOF: every connection goes, whatever it held */
        wait_count(f, &f->nclosed, f->nopen);
        send_arg q = {.m = a.big};
        on_loop(f, do_count, &q);
        assert_int_equal(q.refs, 1); /* no reference leaked on any failure path */
        dx_msg_unref(a.small);
        dx_msg_unref(a.big);
        stop(f); /* asserts that every block, chunk and copy was given back */
    }
    assert_true(total >= 4); /* blocks, an arena chunk, backlog copies */
    free(priv);
    free(bigp);
}

/* One message handed to two loops on two threads: each queues references
 * to it for its own connections while the other does the same, and the
 * creator drops its reference at once; the last drop (on either loop's
 * thread) frees it. */
typedef struct cross_arg {
    mfx *f;
    dx_msg *m; /* this loop's reference, dropped after its sends */
    int times;
    int bad;
} cross_arg;

static void cross_send(void *p)
{
    cross_arg *a = p;
    for (int t = 0; t < a->times; t++)
        for (size_t i = 0; i < 4; i++)
            a->bad |= dx_conn_send_msg(a->f->conns[i], a->m) != 0;
    dx_msg_unref(a->m); /* the queues hold their own */
}

static void test_shared_by_two_loop_threads(void **state)
{
    (void)state;
    enum { TIMES = 200, SZ = 1000 };
    mfx *f[2] = {start(0, 0, 1000), start(0, 0, 1000)};
    rc *cls[2][4];
    for (int l = 0; l < 2; l++)
        open_clients(f[l], cls[l], 4, 0);
    uint8_t *p = pattern(SZ, 77);
    dx_msg *m = dx_msg_new(DX_OP_BINARY, p, SZ, NULL);
    cross_arg a[2];
    for (int l = 0; l < 2; l++) {
        a[l] = (cross_arg){.f = f[l], .m = dx_msg_ref(m), .times = TIMES};
        assert_int_equal(dx_loop_post(f[l]->loop, cross_send, &a[l]), 0);
    }
    dx_msg_unref(m); /* ours goes at once: the loops own theirs */
    for (int k = 0; k < TIMES; k++)
        for (int l = 0; l < 2; l++)
            for (size_t i = 0; i < 4; i++)
                rc_expect(cls[l][i], DX_OP_BINARY, p, SZ, 1 << 16);
    for (int l = 0; l < 2; l++) {
        assert_int_equal(a[l].bad, 0);
        for (size_t i = 0; i < 4; i++)
            rc_free(cls[l][i]);
        wait_count(f[l], &f[l]->nclosed, 4);
        stop(f[l]);
    }
    free(p);
}

/* ---- a randomized fan-out under churn --------------------------------------------- */

typedef struct ham {
    mfx *f;
    dx_msg *pool[4];
    uint32_t rng;
    atomic_int ticks;
    atomic_long sends;
    atomic_int stop;
    int bad_rc;
} ham;

static uint32_t ham_rand(ham *h)
{
    h->rng ^= h->rng << 13;
    h->rng ^= h->rng >> 17;
    h->rng ^= h->rng << 5;
    return h->rng;
}

/* On the loop: random shared and private sends to random connections,
 * closes and drops among them, then again at the next iteration. */
static void ham_tick(void *p)
{
    ham *h = p;
    mfx *f = h->f;
    if (atomic_load(&h->stop))
        return;
    for (int op = 0; op < 64; op++) {
        uint32_t r = ham_rand(h);
        dx_conn *c = f->conns[r % MAXC];
        if (!c)
            continue;
        int e = 0;
        switch ((r >> 8) % 64) {
        case 0:
            e = dx_conn_close(c, 1000, NULL, 0);
            break;
        case 1:
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "test: random drop");
            break;
        case 2:
        case 3:
        case 4: {
            size_t len = (r >> 12) % 40000;
            uint8_t *b = malloc(len + 1);
            memset(b, (int)(r & 0xFF), len);
            e = dx_conn_send(c, DX_OP_BINARY, b, len);
            free(b);
            break;
        }
        default:
            e = dx_conn_send_msg(c, h->pool[(r >> 12) % 4]);
            break;
        }
        if (!rc_ok(e))
            h->bad_rc = e;
        if (e == 0)
            atomic_fetch_add(&h->sends, 1);
    }
    atomic_fetch_add(&h->ticks, 1);
    if (dx_loop_post(f->loop, ham_tick, h))
        h->bad_rc = -999;
}

static void ham_kick(mfx *f, void *p)
{
    (void)f;
    ham_tick(p);
}

static void ham_stop(mfx *f, void *p)
{
    (void)f;
    atomic_store(&((ham *)p)->stop, 1);
}

static void test_random_fanout_churn(void **state)
{
    (void)state;
    enum { N = 40, SENDS = 20000 };
    mfx *f = start(256 * 1024, 32 * 1024, 300);
    f->small_sndbuf = 1;
    ham h = {.f = f, .rng = 2463534242u};
    size_t sizes[4] = {0, 100, 5000, 100000};
    for (int i = 0; i < 4; i++) {
        uint8_t *p = pattern(sizes[i], 40 + (unsigned)i);
        h.pool[i] = dx_msg_new(DX_OP_BINARY, p, sizes[i], NULL);
        free(p);
    }
    int fds[N];
    rc *cls[N];
    open_clients(f, cls, N, 4096);
    for (size_t i = 0; i < N; i++)
        fds[i] = cls[i]->fd;
    on_loop(f, ham_kick, &h);
    /* Read (some slowly, some not at all) and reset some, until enough
     * ticks ran; the server drops, closes and fills queues meanwhile. */
    uint32_t x = 7;
    size_t opened = N;
    static uint8_t sink[1 << 16];
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (atomic_load(&h.sends) < SENDS) {
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        assert_true(t1.tv_sec - t0.tv_sec < WAIT_MS / 1000);
        struct pollfd pf[N];
        for (size_t i = 0; i < N; i++)
            pf[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
        (void)poll(pf, N, 10);
        for (size_t i = 0; i < N; i++) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if (fds[i] < 0) {
                /* the last new one was dropped before its 101 (a random
                 * drop right after on_open): try again */
                cls[i] = rc_try_open(f, 4096);
                fds[i] = cls[i] ? cls[i]->fd : -1;
                opened += cls[i] != NULL;
                continue;
            }
            if (!(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            if (i % 4 == 3)
                continue; /* never reads: a slow consumer */
            size_t want = i % 4 == 2 ? 512 : sizeof sink;
            ssize_t r = recv(fds[i], sink, want, MSG_DONTWAIT);
            if (r == 0 || (x % 500) == 0) {
                /* gone (closed or dropped by the server), or reset by us:
                 * a new connection takes its place */
                struct linger lg = {.l_onoff = 1, .l_linger = 0};
                setsockopt(fds[i], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
                rc_free(cls[i]);
                cls[i] = rc_try_open(f, 4096);
                fds[i] = cls[i] ? cls[i]->fd : -1;
                opened += cls[i] != NULL;
            }
        }
    }
    on_loop(f, ham_stop, &h);
    assert_int_equal(h.bad_rc, 0);
    assert_true(atomic_load(&h.ticks) > 10);
    assert_true(opened > N); /* connections came and went */
    for (size_t i = 0; i < N; i++)
        if (cls[i])
            rc_free(cls[i]);
    wait_count(f, &f->nclosed, f->nopen);
    for (int i = 0; i < 4; i++) {
        send_arg q = {.m = h.pool[i]};
        on_loop(f, do_count, &q);
        assert_int_equal(q.refs, 1);
        dx_msg_unref(h.pool[i]);
    }
    stop(f);
}

/* ---- allocations per delivery ------------------------------------------------------ */

typedef struct alloc_arg {
    dx_msg *m[4];
    size_t n;
    long calls;   /* the loop allocator's calls when the round began */
    uint64_t writes;
} alloc_arg;

static void do_round(mfx *f, void *p)
{
    alloc_arg *a = p;
    a->calls = f->loop_calls;
    a->writes = ((dx__wsl *)dx__conn_ep(f->conns[0])->wsl)->writes;
    for (size_t k = 0; k < 4; k++)
        for (size_t i = 0; i < a->n; i++)
            (void)dx_conn_send_msg(f->conns[i], a->m[k]);
}

static void do_writes(mfx *f, void *p)
{
    alloc_arg *a = p;
    a->calls = f->loop_calls;
    a->writes = ((dx__wsl *)dx__conn_ep(f->conns[0])->wsl)->writes;
}

static void test_no_allocation_per_delivery(void **state)
{
    (void)state;
    enum { N = 40, ROUNDS = 5 };
    mfx *f = start(0, 0, 1000);
    rc *cls[N];
    open_clients(f, cls, N, 0);
    alloc_arg a = {.n = N};
    char txt[4][64];
    for (int k = 0; k < 4; k++) {
        snprintf(txt[k], sizeof txt[k], "broadcast %d: the same bytes for everyone", k);
        a.m[k] = dx_msg_new(DX_OP_TEXT, txt[k], strlen(txt[k]), NULL);
    }
    long prev_calls = -1;
    uint64_t prev_writes = 0;
    for (int r = 0; r < ROUNDS; r++) {
        on_loop(f, do_round, &a);
        if (r >= 2) {
            /* the previous round (after its warm-up) allocated nothing, and
             * its 4 messages went to each connection in one write */
            assert_int_equal(a.calls, prev_calls);
            assert_int_equal(a.writes - prev_writes, N);
        }
        prev_calls = a.calls;
        prev_writes = a.writes;
        for (size_t i = 0; i < N; i++)
            for (int k = 0; k < 4; k++)
                rc_expect(cls[i], DX_OP_TEXT, txt[k], strlen(txt[k]), 1 << 16);
    }
    on_loop(f, do_writes, &a);
    assert_int_equal(a.calls, prev_calls);
    assert_int_equal(a.writes - prev_writes, N);
    for (size_t i = 0; i < N; i++)
        rc_free(cls[i]);
    for (int k = 0; k < 4; k++)
        dx_msg_unref(a.m[k]);
    stop(f);
}

/* ---- client-side connections mask a copy ------------------------------------------ */

typedef struct cl_fx {
    mfx *f;
    dx_msg *m;
    int rc;
    int opened;
} cl_fx;

static void ccb_open(dx_conn *c, void *ud)
{
    cl_fx *x = ud;
    x->rc = dx_conn_send_msg(c, x->m);
    x->rc |= dx_conn_send_msg(c, x->m); /* twice: each masked with its own key */
    x->opened = 1;
}

static void ccb_noop_msg(dx_conn *c, int op, const uint8_t *d, size_t len, void *ud)
{
    (void)c, (void)op, (void)d, (void)len, (void)ud;
}

typedef struct cl_start {
    dx_client *cl;
    cl_fx *x;
} cl_start;

static void do_client(mfx *f, void *p)
{
    cl_start *s = p;
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/", f->port);
    dx_client_options o = {.url = url, .ping_interval_ms = (unsigned)-1};
    o.cb.on_open = ccb_open;
    o.cb.on_message = ccb_noop_msg;
    o.ud = s->x;
    int err;
    s->cl = dx_client_new(f->loop, &o, &err);
    if (s->cl)
        (void)dx_client_connect(s->cl);
}

static void do_client_free(mfx *f, void *p)
{
    (void)f;
    dx_client_free(((cl_start *)p)->cl);
}

static void test_client_side_masks_a_copy(void **state)
{
    (void)state;
    mfx *f = start(0, 0, 1000);
    cl_fx x = {.f = f, .m = dx_msg_new(DX_OP_TEXT, "from the client", 15, NULL)};
    cl_start s = {.x = &x};
    on_loop(f, do_client, &s);
    assert_non_null(s.cl);
    /* the server checks the mask (a client frame must be masked) and UTF-8 */
    struct timespec dl;
    dx_test_deadline_in(&dl, WAIT_MS);
    pthread_mutex_lock(&f->mu);
    while (f->got_len == 0)
        if (pthread_cond_timedwait(&f->cv, &f->mu, &dl) == ETIMEDOUT)
            break;
    assert_int_equal(f->got_op, DX_OP_TEXT);
    assert_int_equal(f->got_len, 15);
    assert_memory_equal(f->got, "from the client", 15);
    pthread_mutex_unlock(&f->mu);
    assert_int_equal(x.rc, 0);
    /* the message itself was not changed by masking */
    unsigned op;
    size_t hl;
    dx_rcbuf *fr = dx__msg_frame(x.m, &op, &hl);
    assert_memory_equal(dx_rcbuf_data(fr) + hl, "from the client", 15);
    assert_int_equal(dx_rcbuf_refs(fr), 1); /* nothing kept a reference */
    on_loop(f, do_client_free, &s);
    dx_msg_unref(x.m);
    stop(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tls_many_segments_retried),
        cmocka_unit_test(test_every_allocation_fails_once),
        cmocka_unit_test(test_random_fanout_churn),
        cmocka_unit_test(test_shared_by_two_loop_threads),
        cmocka_unit_test(test_no_allocation_per_delivery),
        cmocka_unit_test(test_client_side_masks_a_copy),
    };
    dx_test_filter_from_env();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
