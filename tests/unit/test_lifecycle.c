/*
 * tests/unit/test_lifecycle.c: the lifecycle rules of src/ws (conn.c,
 * server.c, client.c) and src/net/loop.c, one regression test per case of
 * issue 7:
 *
 *  (a) a write failure in the middle of a read: nothing is delivered after
 *      on_close, and a trailing partial message leaks nothing;
 *  (b) dx_server_shutdown while on_close handlers send to / close the other
 *      connections;
 *  (c) a client freed from on_error, on_reconnect, on_done, on_open,
 *      on_message, on_close; a server freed from on_upgrade, on_open,
 *      on_message, on_close;
 *  (e) dx_conn_send / dx_conn_close on a connection whose write fails never
 *      run on_close before they return (from main and from a callback).
 *
 *  (d) TLS connections with input buffered in user space (on the loop's
 *      ready list) while another connection's callback frees the server in
 *      the same pass; the loop-level version, deterministic, is in
 *      test_loop.c (test_ready_entry_leaves_on_stop).
 *
 * Everything runs on the test's thread: one loop, the server and clients on
 * it, and raw peers written here with blocking sockets (a handshake request,
 * frames masked with the zero key, RST by SO_LINGER 0). The loop is pumped
 * until a condition holds; a repeating timer stops it every tick so the
 * condition is rechecked, and a wide deadline turns a hang into a failure.
 * The allocator counts live blocks: every test ends with none.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "duplex/client.h"
#include "duplex/server.h"
#include "net/loop.h"
#include "proto/handshake.h"
#include "ws/ws.h" /* struct dx_conn: is its io on the loop's ready list? */

#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DEADLINE_MS 20000 /* only a broken library takes this long */
#define MAXC 32

/* ---- fixture ------------------------------------------------------------------------ */

typedef struct lf lf;
typedef bool (*cond_fn)(lf *f);

struct lf {
    dx_test_seams ts;
    dx_loop *loop;
    dx_server *srv;
    dx_client *cl;
    dx__timer tick;
    unsigned ticks;
    /* server side */
    dx_conn *conns[MAXC];
    size_t nconns;
    int opens, closes, msgs, msgs_after_close, close_codes[MAXC];
    int echo;
    int in_call;          /* set around calls the test makes: callbacks must not run then */
    int cb_in_call;       /* callbacks that ran while in_call was set */
    int fan_out_on_close; /* on_close sends to (and closes one of) the others */
    dx_conn *victim;      /* on_message resets its peer, then sends to and closes it */
    int victim_fd;
    int hits;
    int rst_fds[MAXC];    /* peers the "shutdown" message resets just before the shutdown */
    size_t n_rst;
    int shut;
    int ready_probe, ready_hits; /* (d) */
    int shutdown_on_msg;
    int free_srv_in;      /* which server callback frees the server (enum below) */
    int srv_freed, srv_cb_after_free;
    /* client side */
    int free_cl_in;
    int cl_freed, cl_cb_after_free;
    int cl_opens, cl_closes, cl_errors, cl_reconnects, cl_dones, cl_msgs;
};

enum { IN_NONE = 0, IN_UPGRADE, IN_OPEN, IN_MESSAGE, IN_CLOSE, IN_ERROR, IN_RECONNECT, IN_DONE, IN_PONG };

static void on_tick(dx__timer *t)
{
    lf *f = dx_list_entry(t, lf, tick);
    f->ticks++;
    dx__timer_start(f->loop, &f->tick, DX_TICK_MS);
    dx_loop_stop(f->loop);
}

/* Runs the loop until cond holds (or the deadline: a failure). */
static void pump(lf *f, cond_fn cond)
{
    uint64_t end = dx_test_mono_ms() + DEADLINE_MS;
    while (!cond(f)) {
        assert_true(dx_test_mono_ms() < end);
        assert_int_equal(dx_loop_run(f->loop), 0);
    }
}

/* Runs the loop for `n` more ticks: a bounded look at "nothing more happens". */
static unsigned g_until;
static bool ticks_done(lf *f) { return f->ticks >= g_until; }
static void pump_ticks(lf *f, unsigned n)
{
    g_until = f->ticks + n;
    pump(f, ticks_done);
}


static void srv_free_now(lf *f)
{
    dx_server_free(f->srv);
    f->srv = NULL;
    f->srv_freed = 1;
    f->nconns = 0;
}

static void check_srv_cb(lf *f)
{
    if (f->srv_freed)
        f->srv_cb_after_free++;
    if (f->in_call)
        f->cb_in_call++;
}

static int s_upgrade(dx_server *srv, dx_request *req, void *ud)
{
    (void)srv;
    (void)req;
    lf *f = ud;
    check_srv_cb(f);
    if (f->free_srv_in == IN_UPGRADE) {
        srv_free_now(f);
        dx_loop_stop(f->loop);
    }
    return 0;
}

static void s_open(dx_conn *c, void *ud)
{
    lf *f = ud;
    check_srv_cb(f);
    f->opens++;
    if (f->nconns < MAXC)
        f->conns[f->nconns++] = c;
    if (f->echo == 2)
        (void)dx_conn_send(c, DX_OP_TEXT, "hello", 5);
    if (f->echo == 3)
        (void)dx_conn_close(c, 1000, "go", 2);
    if (f->free_srv_in == IN_OPEN)
        srv_free_now(f);
    dx_loop_stop(f->loop);
}

static void drop_conn(lf *f, dx_conn *c)
{
    for (size_t i = 0; i < f->nconns; i++)
        if (f->conns[i] == c) {
            f->conns[i] = f->conns[--f->nconns];
            return;
        }
}

static bool is_open(lf *f, dx_conn *c)
{
    for (size_t i = 0; i < f->nconns; i++)
        if (f->conns[i] == c)
            return true;
    return false;
}

static void s_message(dx_conn *c, int op, const uint8_t *p, size_t len, void *ud)
{
    lf *f = ud;
    check_srv_cb(f);
    if (!is_open(f, c))
        f->msgs_after_close++;
    f->msgs++;
    if (f->echo == 1)
        (void)dx_conn_send(c, op, p, len);
    if (f->victim && f->victim != c) {
        static uint8_t big[200000];
        f->hits++;
        dx_test_close_rst(f->victim_fd); /* now: so no read of this loop saw it before */
        f->in_call = 1;
        (void)dx_conn_send(f->victim, DX_OP_BINARY, big, sizeof big);
        (void)dx_conn_close(f->victim, 1000, NULL, 0);
        f->in_call = 0;
        f->victim = NULL;
    }
    if (f->shutdown_on_msg && len == 8 && memcmp(p, "shutdown", 8) == 0) {
        for (size_t i = 0; i < f->n_rst; i++)
            dx_test_close_rst(f->rst_fds[i]);
        f->in_call = 1;
        (void)dx_server_shutdown(f->srv, 1001, "bye");
        f->in_call = 0;
        f->shut = 1;
        dx_loop_stop(f->loop);
    }
    if (f->free_srv_in == IN_MESSAGE) {
        srv_free_now(f);
        dx_loop_stop(f->loop);
    }
    /* (d): another connection is on the ready list (TLS input already read
     * from the socket, to be served after this batch): free the server now,
     * from this callback, in the same pass. */
    for (size_t i = 0; f->ready_probe && !f->srv_freed && i < f->nconns; i++) {
        if (f->conns[i] != c && dx__io_is_ready(&f->conns[i]->io)) {
            f->ready_hits++;
            srv_free_now(f);
            dx_loop_stop(f->loop);
        }
    }
}

static void s_pong(dx_conn *c, const uint8_t *p, size_t len, void *ud)
{
    (void)p;
    (void)len;
    lf *f = ud;
    check_srv_cb(f);
    if (!is_open(f, c))
        f->msgs_after_close++;
    if (f->free_srv_in == IN_PONG) {
        srv_free_now(f);
        dx_loop_stop(f->loop);
    }
}

static void s_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    (void)reason;
    (void)len;
    lf *f = ud;
    check_srv_cb(f);
    if (!is_open(f, c))
        f->msgs_after_close += 1000; /* a second on_close, or one without on_open */
    drop_conn(f, c);
    if (f->closes < MAXC)
        f->close_codes[f->closes] = (int)code;
    f->closes++;
    if (f->fan_out_on_close) {
        for (size_t i = 0; i < f->nconns; i++)
            (void)dx_conn_send(f->conns[i], DX_OP_TEXT, "peer left", 9);
        if (f->nconns)
            (void)dx_conn_close(f->conns[f->nconns - 1], 1000, NULL, 0);
    }
    if (f->free_srv_in == IN_CLOSE)
        srv_free_now(f);
    dx_loop_stop(f->loop);
}

static void setup_loop(lf *f)
{
    memset(f, 0, sizeof *f);
    dx_test_seams_init(&f->ts);
    dx_loop_options lo = {.seams = &f->ts.seams, .log = &dx_test_quiet_log};
    f->loop = dx_loop_new(&lo, NULL);
    assert_non_null(f->loop);
    dx__timer_init(&f->tick, on_tick);
    dx__timer_start(f->loop, &f->tick, DX_TICK_MS);
}

static void start_server(lf *f)
{
    dx_server_options o = {.host = "127.0.0.1", .port = DX_PORT_EPHEMERAL, .close_timeout_ms = 500, .ud = f};
    o.cb.on_upgrade = s_upgrade;
    o.cb.on_open = s_open;
    o.cb.on_message = s_message;
    o.cb.on_pong = s_pong;
    o.cb.on_close = s_close;
    int err = 0;
    f->srv = dx_server_new(f->loop, &o, &err);
    assert_non_null(f->srv);
    assert_int_equal(dx_server_start(f->srv), 0);
}

static void teardown(lf *f)
{
    if (f->cl)
        dx_client_free(f->cl);
    if (f->srv)
        dx_server_free(f->srv);
    dx__timer_stop(f->loop, &f->tick);
    dx_loop_free(f->loop);
    assert_int_equal(f->ts.live, 0); /* nothing leaked, partial messages included */
}

/* ---- raw peers ------------------------------------------------------------------------ */

static const char REQ[] = "GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n" DX_TEST_UPGRADE_HEADERS;

static int raw_connect(unsigned port)
{
    int fd = dx_test_dial(port, 0);
    assert_true(fd >= 0);
    dx_test_io_timeouts(fd, 10000);
    return fd;
}

static int g_opens;
static bool opened_enough(lf *f) { return f->opens >= g_opens; }

/* Opens a WebSocket connection to the fixture's server and reads the 101. */
static int raw_open(lf *f)
{
    int fd = raw_connect(dx_server_port(f->srv));
    dx_test_send_all(fd, REQ, sizeof REQ - 1);
    g_opens = f->opens + 1;
    pump(f, opened_enough);
    char buf[1024];
    size_t got = 0;
    while (got < 4 || memcmp(buf + got - 4, "\r\n\r\n", 4) != 0) {
        ssize_t n = recv(fd, buf + got, 1, 0); /* byte by byte: frames may follow the head */
        assert_int_equal(n, 1);
        got++;
        assert_true(got < sizeof buf);
    }
    assert_memory_equal(buf, "HTTP/1.1 101", 12);
    return fd;
}

/* A client frame masked with the zero key (the payload is sent as is). */
static size_t frame(uint8_t *out, unsigned op, const void *p, size_t len, size_t claimed)
{
    size_t n = 0;
    out[n++] = (uint8_t)(0x80 | op);
    if (claimed < 126) {
        out[n++] = (uint8_t)(0x80 | claimed);
    } else {
        out[n++] = 0x80 | 126;
        out[n++] = (uint8_t)(claimed >> 8);
        out[n++] = (uint8_t)claimed;
    }
    memset(out + n, 0, 4);
    n += 4;
    memcpy(out + n, p, len);
    return n + len;
}

/* Waits until the kernel delivered everything fd sent (the peer's receive
 * queue holds it), so a RST sent next cannot overtake it. */
static void wait_sent(int fd)
{
    uint64_t end = dx_test_mono_ms() + DEADLINE_MS;
    for (;;) {
        int q = 0;
        assert_int_equal(ioctl(fd, TIOCOUTQ, &q), 0);
        if (q == 0)
            return;
        assert_true(dx_test_mono_ms() < end);
        poll(NULL, 0, 1);
    }
}

static int g_closes;
static bool closed_enough(lf *f) { return f->closes >= g_closes; }

/* ---- (a) a write failure in the middle of a read -------------------------------------- */

static void test_write_failure_mid_read(void **state)
{
    (void)state;
    static lf f;
    setup_loop(&f);
    f.echo = 1;
    start_server(&f);
    int fd = raw_open(&f);
    /* 1800 small messages: their echoes (1800 * 42 bytes) overflow the
     * 64 KiB cork in the middle of the read, where the write fails; then a
     * message cut short, whose receive buffer must not leak. */
    enum { N = 1800, LEN = 40 };
    size_t cap = N * (LEN + 6) + 256;
    uint8_t *buf = malloc(cap);
    assert_non_null(buf);
    size_t n = 0;
    char msg[LEN];
    memset(msg, 'm', sizeof msg);
    for (int i = 0; i < N; i++)
        n += frame(buf + n, DX_OP_TEXT, msg, LEN, LEN);
    n += frame(buf + n, DX_OP_TEXT, msg, 10, 200); /* 10 of 200 bytes */
    dx_test_send_all(fd, buf, n);
    free(buf);
    wait_sent(fd);
    dx_test_close_rst(fd);
    g_closes = 1;
    pump(&f, closed_enough);
    assert_int_equal(f.closes, 1);
    assert_int_equal(f.close_codes[0], DX_CLOSE_ABNORMAL);
    assert_int_equal(f.msgs_after_close, 0);
    assert_true(f.msgs >= 1);
    assert_true(f.msgs < N); /* the write failed mid-read: the rest was not delivered */
    teardown(&f);
}

/* ---- (e) send / close on a connection whose write fails -------------------------------- */

static void test_send_close_never_fire_on_close(void **state)
{
    (void)state;
    static lf f;
    setup_loop(&f);
    start_server(&f);
    int fa = raw_open(&f), fb = raw_open(&f);
    dx_conn *a = f.conns[0], *b = f.conns[1];
    dx_test_close_rst(fa);
    dx_test_close_rst(fb);
    /* From the application's own code (outside the loop). */
    static uint8_t big[200000];
    f.in_call = 1;
    int rc = dx_conn_send(a, DX_OP_BINARY, big, sizeof big);
    f.in_call = 0;
    assert_int_equal(rc, DX_ECLOSED);
    assert_int_equal(f.closes, 0);
    assert_int_equal(dx_conn_send(a, DX_OP_TEXT, "x", 1), DX_ECLOSED); /* marked: no more */
    f.in_call = 1;
    (void)dx_conn_close(b, 1000, "bye", 3);
    f.in_call = 0;
    assert_int_equal(f.closes, 0);
    g_closes = 2;
    pump(&f, closed_enough);
    assert_int_equal(f.closes, 2);
    assert_int_equal(f.cb_in_call, 0);
    pump_ticks(&f, 1);
    assert_int_equal(f.closes, 2);
    teardown(&f);
}

/* From inside a callback: C's message makes the server send to and close
 * D, whose peer is gone; D's on_close must not run inside those calls. */
static void test_send_in_callback_to_failing_conn(void **state)
{
    (void)state;
    static lf f;
    setup_loop(&f);
    start_server(&f);
    int fc = raw_open(&f), fd = raw_open(&f);
    f.victim = f.conns[1];
    /* C's message arrives; inside its callback D's peer resets, then the
     * server writes to D: the write fails inside dx_conn_send. */
    f.victim_fd = fd;
    uint8_t fr[64];
    dx_test_send_all(fc, fr, frame(fr, DX_OP_TEXT, "go", 2, 2));
    g_closes = 1;
    pump(&f, closed_enough);
    assert_int_equal(f.cb_in_call, 0);
    assert_int_equal(f.msgs, 1);
    assert_int_equal(f.hits, 1);
    close(fc);
    g_closes = 2;
    pump(&f, closed_enough);
    assert_int_equal(f.msgs_after_close, 0);
    teardown(&f);
}

/* ---- (d) TLS input buffered in user space, freed in the same pass ------------------ */

/* A TLS peer on its own thread: handshake, upgrade, then binary messages of
 * 1000 bytes as fast as the server takes them, until told to stop or the
 * server goes away. The server (slower: it decrypts, unmasks and delivers
 * every message) falls behind, reads full buffers and puts the connection
 * on the ready list with records still inside OpenSSL. */
typedef struct tpeer {
    unsigned port;
    atomic_int *stop;
    size_t sent;
} tpeer;

static atomic_int g_blasters_done;

static void *tls_blaster(void *arg)
{
    tpeer *p = arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = NULL;
    if (fd < 0 || !ctx || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        goto out;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    ssl = SSL_new(ctx);
    if (!ssl || SSL_set_fd(ssl, fd) != 1 || SSL_connect(ssl) != 1)
        goto out;
    size_t w;
    if (SSL_write_ex(ssl, REQ, sizeof REQ - 1, &w) != 1)
        goto out;
    char head[1024];
    size_t got = 0;
    while (got < 4 || memcmp(head + got - 4, "\r\n\r\n", 4) != 0) {
        size_t r;
        if (got == sizeof head || SSL_read_ex(ssl, head + got, 1, &r) != 1)
            goto out;
        got += r;
    }
    static uint8_t chunk[65 * 1008];
    uint8_t msg[1000];
    memset(msg, 'z', sizeof msg);
    size_t n = 0;
    while (n + 1008 <= sizeof chunk)
        n += frame(chunk + n, DX_OP_BINARY, msg, sizeof msg, sizeof msg);
    while (!atomic_load(p->stop) && p->sent < (256u << 20)) {
        if (SSL_write_ex(ssl, chunk, n, &w) != 1)
            break; /* the server dropped us */
        p->sent += w;
    }
out:
    atomic_fetch_add(&g_blasters_done, 1);
    if (ssl)
        SSL_free(ssl);
    if (ctx)
        SSL_CTX_free(ctx);
    if (fd >= 0)
        close(fd);
    return NULL;
}

static bool srv_gone(lf *f) { return f->srv_freed != 0 || atomic_load(&g_blasters_done) == 2; }

static void test_tls_ready_list_freed_in_same_pass(void **state)
{
    (void)state;
    char dir[] = "/tmp/dx_life_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char crt[128], key[128];
    dx_test_self_signed(dir, "t", crt, key);
    static lf f;
    setup_loop(&f);
    dx_tls_cert cert = {crt, key};
    dx_server_options o = {.host = "127.0.0.1", .port = DX_PORT_EPHEMERAL, .tls = &cert, .n_tls = 1, .ud = &f};
    o.cb.on_open = s_open;
    o.cb.on_message = s_message;
    o.cb.on_close = s_close;
    f.srv = dx_server_new(f.loop, &o, NULL);
    assert_non_null(f.srv);
    assert_int_equal(dx_server_start(f.srv), 0);
    f.ready_probe = 1;
    atomic_int stop;
    atomic_init(&stop, 0);
    tpeer peers[2] = {{dx_server_port(f.srv), &stop, 0}, {dx_server_port(f.srv), &stop, 0}};
    pthread_t th[2];
    atomic_store(&g_blasters_done, 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, tls_blaster, &peers[i]), 0);
    pump(&f, srv_gone); /* ends when a callback freed the server (or a peer's budget ran out: below) */
    atomic_store(&stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    /* The path was taken: a connection was on the ready list when another
     * one's callback freed the server; it was not served afterwards (under
     * ASan a stale entry is a use-after-free in the loop's ready pass). */
    assert_int_equal(f.ready_hits, 1);
    assert_int_equal(f.srv_cb_after_free, 0);
    pump_ticks(&f, 1);
    teardown(&f);
    assert_int_equal(dx_test_rm_rf(dir), 0);
}

/* ---- (b) shutdown while on_close handlers send to the others --------------------------- */

static bool shut_done(lf *f) { return f->shut != 0; }

static void shutdown_case(bool from_callback)
{
    static lf f;
    setup_loop(&f);
    start_server(&f);
    f.fan_out_on_close = 1;
    f.shutdown_on_msg = 1;
    enum { N = 16 };
    int fds[N];
    for (int i = 0; i < N; i++)
        fds[i] = raw_open(&f);
    /* Half the peers are gone: closing them fails their writes. From a
     * callback, they go inside it, right before the shutdown, so no read
     * notices them first. */
    if (from_callback) {
        for (int i = 0; i < N; i += 2)
            f.rst_fds[f.n_rst++] = fds[i];
        uint8_t fr[64];
        dx_test_send_all(fds[1], fr, frame(fr, DX_OP_TEXT, "shutdown", 8, 8));
        pump(&f, shut_done);
    } else {
        for (int i = 0; i < N; i += 2)
            dx_test_close_rst(fds[i]);
        f.in_call = 1;
        size_t left = dx_server_shutdown(f.srv, 1001, "bye");
        f.in_call = 0;
        assert_true(left <= N);
        assert_int_equal(f.closes, 0); /* nothing fired inside the call */
    }
    /* The others leave too: some reset, some close cleanly. */
    for (int i = 1; i < N; i += 2) {
        if (i % 4 == 1)
            dx_test_close_rst(fds[i]);
        else
            close(fds[i]);
    }
    g_closes = N;
    pump(&f, closed_enough);
    assert_int_equal(f.closes, N);
    assert_int_equal(f.msgs_after_close, 0);
    assert_int_equal(f.cb_in_call, 0);
    assert_int_equal(dx_server_connections(f.srv), 0);
    teardown(&f);
}

static void test_shutdown_with_fan_out_on_close(void **state)
{
    (void)state;
    shutdown_case(false);
}

static void test_shutdown_from_callback_with_fan_out(void **state)
{
    (void)state;
    shutdown_case(true);
}

/* ---- (c) freeing a server from its callbacks ----------------------------------------- */

static void server_free_case(int where)
{
    static lf f;
    setup_loop(&f);
    start_server(&f);
    f.free_srv_in = where;
    if (where == IN_CLOSE)
        f.fan_out_on_close = 1;
    int fd = raw_connect(dx_server_port(f.srv));
    int other = -1;
    dx_test_send_all(fd, REQ, sizeof REQ - 1);
    if (where == IN_MESSAGE || where == IN_CLOSE || where == IN_PONG) {
        f.free_srv_in = IN_NONE;
        g_opens = 1;
        pump(&f, opened_enough);
        /* A second connection, so the freed server has another to drop. */
        other = raw_connect(dx_server_port(f.srv));
        dx_test_send_all(other, REQ, sizeof REQ - 1);
        g_opens = 2;
        pump(&f, opened_enough);
        f.free_srv_in = where;
        if (where == IN_MESSAGE || where == IN_PONG) {
            /* a pong then a message in one read: nothing after the free */
            uint8_t fr[64];
            size_t n = frame(fr, where == IN_PONG ? DX_OP_PONG : DX_OP_TEXT, "hi", 2, 2);
            n += frame(fr + n, DX_OP_TEXT, "more", 4, 4);
            dx_test_send_all(fd, fr, n);
        } else {
            dx_test_close_rst(fd);
            fd = -1;
        }
    }
    uint64_t end = dx_test_mono_ms() + DEADLINE_MS;
    while (!f.srv_freed) {
        assert_true(dx_test_mono_ms() < end);
        dx_loop_run(f.loop);
    }
    /* Its connections were dropped at once: the peers see the end. */
    int peers[2] = {fd, other};
    for (int i = 0; i < 2; i++) {
        if (peers[i] < 0)
            continue;
        char buf[4096];
        ssize_t n;
        while ((n = recv(peers[i], buf, sizeof buf, 0)) > 0)
            ;
        assert_true(n == 0 || (n < 0 && errno == ECONNRESET));
        close(peers[i]);
    }
    pump_ticks(&f, 2);
    assert_int_equal(f.srv_cb_after_free, 0);
    teardown(&f);
}

static void test_server_free_in_upgrade(void **state)
{
    (void)state;
    server_free_case(IN_UPGRADE);
}
static void test_server_free_in_open(void **state)
{
    (void)state;
    server_free_case(IN_OPEN);
}
static void test_server_free_in_message(void **state)
{
    (void)state;
    server_free_case(IN_MESSAGE);
}
static void test_server_free_in_pong(void **state)
{
    (void)state;
    server_free_case(IN_PONG);
}
static void test_server_free_in_close(void **state)
{
    (void)state;
    server_free_case(IN_CLOSE);
}

/* ---- (c) freeing a client from its callbacks ----------------------------------------- */

static void cl_check(lf *f)
{
    if (f->cl_freed)
        f->cl_cb_after_free++;
    if (f->in_call)
        f->cb_in_call++;
}

static void cl_free_if(lf *f, int where)
{
    if (f->free_cl_in == where && !f->cl_freed) {
        f->in_call = 1;
        dx_client_free(f->cl);
        f->in_call = 0;
        f->cl = NULL;
        f->cl_freed = 1;
        dx_loop_stop(f->loop);
    }
}

static void c_open(dx_conn *c, void *ud)
{
    (void)c;
    lf *f = ud;
    cl_check(f);
    f->cl_opens++;
    cl_free_if(f, IN_OPEN);
}
static void c_message(dx_conn *c, int op, const uint8_t *p, size_t len, void *ud)
{
    (void)c;
    (void)op;
    (void)p;
    (void)len;
    lf *f = ud;
    cl_check(f);
    f->cl_msgs++;
    cl_free_if(f, IN_MESSAGE);
}
static void c_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    (void)c;
    (void)code;
    (void)reason;
    (void)len;
    lf *f = ud;
    cl_check(f);
    f->cl_closes++;
    cl_free_if(f, IN_CLOSE);
}
static void c_error(dx_client *cl, int err, const char *what, void *ud)
{
    (void)cl;
    (void)err;
    (void)what;
    lf *f = ud;
    cl_check(f);
    f->cl_errors++;
    cl_free_if(f, IN_ERROR);
}
static void c_reconnect(dx_client *cl, unsigned attempt, unsigned delay, void *ud)
{
    (void)cl;
    (void)attempt;
    (void)delay;
    lf *f = ud;
    cl_check(f);
    f->cl_reconnects++;
    cl_free_if(f, IN_RECONNECT);
}
static void c_done(dx_client *cl, void *ud)
{
    (void)cl;
    lf *f = ud;
    cl_check(f);
    f->cl_dones++;
    cl_free_if(f, IN_DONE);
}

/* A port nothing listens on: connecting is refused at once. */
static unsigned refused_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &sl), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static bool cl_gone(lf *f) { return f->cl_freed != 0; }

static void client_free_case(int where, bool with_server, int reconnect)
{
    static lf f;
    setup_loop(&f);
    f.free_cl_in = where;
    char url[64];
    if (with_server) {
        start_server(&f);
        f.echo = where == IN_MESSAGE ? 2 : where == IN_CLOSE ? 3 : 0;
        snprintf(url, sizeof url, "ws://127.0.0.1:%u/x", dx_server_port(f.srv));
    } else {
        snprintf(url, sizeof url, "ws://127.0.0.1:%u/x", refused_port());
    }
    dx_client_options o = {.url = url, .reconnect = reconnect, .backoff_base_ms = 1, .backoff_cap_ms = 1,
                           .close_timeout_ms = 500, .ud = &f};
    o.cb.on_open = c_open;
    o.cb.on_message = c_message;
    o.cb.on_close = c_close;
    o.cb.on_error = c_error;
    o.cb.on_reconnect = c_reconnect;
    o.cb.on_done = c_done;
    f.cl = dx_client_new(f.loop, &o, NULL);
    assert_non_null(f.cl);
    f.in_call = 1;
    assert_int_equal(dx_client_connect(f.cl), 0); /* a refused literal address: on_error comes later */
    f.in_call = 0;
    assert_int_equal(f.cl_errors, 0);
    pump(&f, cl_gone);
    if (with_server && where != IN_CLOSE) {
        /* The server sees the dropped connection. */
        g_closes = 1;
        pump(&f, closed_enough);
    }
    pump_ticks(&f, 2);
    assert_int_equal(f.cl_cb_after_free, 0);
    assert_int_equal(f.cb_in_call, 0);
    teardown(&f);
}

static void test_client_free_in_error(void **state)
{
    (void)state;
    client_free_case(IN_ERROR, false, 1);
}
static void test_client_free_in_reconnect(void **state)
{
    (void)state;
    client_free_case(IN_RECONNECT, false, 1);
}
static void test_client_free_in_done(void **state)
{
    (void)state;
    client_free_case(IN_DONE, false, 0);
}
static void test_client_free_in_open(void **state)
{
    (void)state;
    client_free_case(IN_OPEN, true, 1);
}
static void test_client_free_in_message(void **state)
{
    (void)state;
    client_free_case(IN_MESSAGE, true, 1);
}
static void test_client_free_in_close(void **state)
{
    (void)state;
    client_free_case(IN_CLOSE, true, 1);
}

/* dx_client_close never fires on_done (or on_close) inside the call. */
static void test_client_close_is_asynchronous(void **state)
{
    (void)state;
    static lf f;
    setup_loop(&f);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/x", refused_port());
    dx_client_options o = {.url = url, .reconnect = 1, .backoff_base_ms = 5000, .backoff_cap_ms = 5000, .ud = &f};
    o.cb.on_error = c_error;
    o.cb.on_reconnect = c_reconnect;
    o.cb.on_done = c_done;
    f.cl = dx_client_new(f.loop, &o, NULL);
    assert_non_null(f.cl);
    assert_int_equal(dx_client_connect(f.cl), 0);
    f.in_call = 1;
    assert_int_equal(dx_client_close(f.cl, 1000, NULL, 0), 0); /* before the attempt even started */
    f.in_call = 0;
    assert_int_equal(f.cl_dones, 0);
    pump_ticks(&f, 1);
    assert_int_equal(f.cl_dones, 1);
    assert_int_equal(f.cl_errors, 0); /* the abandoned attempt never ran */
    assert_int_equal(f.cb_in_call, 0);
    teardown(&f);
}

/* The client's queued messages are written right after the 101, before
 * on_open. When that write fails (the server answered 101 and reset at
 * once) the application never saw the connection open: it gets on_error,
 * never an on_close without an on_open. */
typedef struct fake_srv {
    int lfd, fd;
    char req[4096];
    size_t len;
} fake_srv;
static fake_srv g_fake;

static bool fake_got_request(lf *f)
{
    (void)f;
    if (g_fake.fd < 0) {
        g_fake.fd = accept4(g_fake.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (g_fake.fd < 0)
            return false;
    }
    ssize_t n = recv(g_fake.fd, g_fake.req + g_fake.len, sizeof g_fake.req - 1 - g_fake.len, 0);
    if (n > 0)
        g_fake.len += (size_t)n;
    g_fake.req[g_fake.len] = 0;
    return strstr(g_fake.req, "\r\n\r\n") != NULL;
}

static bool cl_reported(lf *f) { return f->cl_errors + f->cl_closes > 0; }

static void test_client_queue_flush_fails_before_open(void **state)
{
    (void)state;
    static lf f;
    setup_loop(&f);
    g_fake.lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    g_fake.fd = -1;
    g_fake.len = 0;
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof a;
    assert_int_equal(bind(g_fake.lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(g_fake.lfd, 4), 0);
    assert_int_equal(getsockname(g_fake.lfd, (struct sockaddr *)&a, &sl), 0);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/x", ntohs(a.sin_port));
    dx_client_options o = {.url = url, .queue_max_messages = 4, .ud = &f};
    o.cb.on_open = c_open;
    o.cb.on_close = c_close;
    o.cb.on_error = c_error;
    o.cb.on_done = c_done;
    f.cl = dx_client_new(f.loop, &o, NULL);
    assert_non_null(f.cl);
    assert_int_equal(dx_client_send(f.cl, DX_OP_TEXT, "queued", 6), 0);
    assert_int_equal(dx_client_connect(f.cl), 0);
    pump(&f, fake_got_request);
    const char *k = strstr(g_fake.req, "Sec-WebSocket-Key: ");
    assert_non_null(k);
    k += 19;
    char acc[29];
    assert_int_equal(dx__ws_accept_key(k, 24, acc), 0);
    char resp[256];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n",
                     acc);
    dx_test_send_all(g_fake.fd, resp, (size_t)n);
    wait_sent(g_fake.fd);
    dx_test_close_rst(g_fake.fd);
    pump(&f, cl_reported);
    pump_ticks(&f, 1);
    /* Output is gathered and written before the loop sleeps, so the queued
     * message's write may fail after on_open (then on_close follows) or,
     * when the reset is read first, before it (a failed attempt, on_error).
     * Either way: never an on_close without on_open, one report, one done. */
    assert_int_equal(f.cl_closes, f.cl_opens);
    assert_int_equal(f.cl_opens + f.cl_errors, 1);
    assert_int_equal(f.cl_dones, 1);
    close(g_fake.lfd);
    teardown(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_failure_mid_read),
        cmocka_unit_test(test_send_close_never_fire_on_close),
        cmocka_unit_test(test_send_in_callback_to_failing_conn),
        cmocka_unit_test(test_tls_ready_list_freed_in_same_pass),
        cmocka_unit_test(test_shutdown_with_fan_out_on_close),
        cmocka_unit_test(test_shutdown_from_callback_with_fan_out),
        cmocka_unit_test(test_server_free_in_upgrade),
        cmocka_unit_test(test_server_free_in_open),
        cmocka_unit_test(test_server_free_in_message),
        cmocka_unit_test(test_server_free_in_pong),
        cmocka_unit_test(test_server_free_in_close),
        cmocka_unit_test(test_client_free_in_error),
        cmocka_unit_test(test_client_free_in_reconnect),
        cmocka_unit_test(test_client_free_in_done),
        cmocka_unit_test(test_client_free_in_open),
        cmocka_unit_test(test_client_free_in_message),
        cmocka_unit_test(test_client_free_in_close),
        cmocka_unit_test(test_client_close_is_asynchronous),
        cmocka_unit_test(test_client_queue_flush_fails_before_open),
    };
    if (getenv("DX_TEST_FILTER")) /* e.g. DX_TEST_FILTER='test_client_*' */
        cmocka_set_test_filter(getenv("DX_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
