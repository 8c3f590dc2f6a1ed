/*
 * tests/unit/test_server_hooks.c: the server's hooks for applications
 * (src/ws/conn.c, server.c): deferred upgrade decisions, pause/resume of
 * reading, inline per-connection memory, and the admission limits
 * (max_conns_per_ip, max_handshaking) with their counters and log lines.
 *
 * A real dx_loop + dx_server on 127.0.0.1 in its own thread; clients are
 * blocking sockets (bound to 127.0.0.2 / 127.0.0.3 where the source address
 * matters) speaking through the sans-I/O helpers of src/proto. Callbacks
 * record events under a mutex and never assert; the test thread waits for
 * events (never for fixed sleeps). Work for the loop's thread is posted
 * with dx_loop_post and waited for; two such trips are the barrier used to
 * show that something did NOT happen.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "duplex/server.h"
#include "proto/frame.h"
#include "proto/handshake.h"
#include "proto/http.h"
#include "proto/mask.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WAIT_MS 15000
#define MAXEV 512
#define MAXC 16

enum { EV_UPGRADE = 1, EV_OPEN, EV_MESSAGE, EV_CLOSE };

typedef struct ev {
    int type, taken;
    uint64_t id;
    unsigned code;
    char data[64]; /* first bytes, NUL-terminated */
    size_t len;
} ev;

enum { M_ACCEPT = 0, M_DEFER, M_ANSWER_INSIDE };

typedef struct fx {
    dx_loop *loop;
    dx_server *srv;
    pthread_t th;
    unsigned port;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ev evs[MAXEV];
    size_t nev;
    char logs[64][256];
    size_t nlogs;
    /* behaviour */
    _Atomic int mode; /* set by the test thread, read by on_upgrade */
    size_t ext_size;
    /* loop thread only */
    dx_upgrade *h;
    dx_conn *conns[MAXC];
    int ext_zero_bad, ext_align_bad, ext_kept_bad;
    /* flood accounting (loop thread; read after a barrier) */
    long flood_got, flood_next, flood_order_bad;
    int pause_rc, resume_rc;
    _Atomic int answer_on_close;
    int close_answer_rc;
    /* posted calls */
    void (*call_fn)(struct fx *f, void *arg);
    void *call_arg;
    int call_done;
} fx;

static int user_marker;

static void add_ev(fx *f, int type, uint64_t id, unsigned code, const void *data, size_t len)
{
    pthread_mutex_lock(&f->mu);
    if (f->nev < MAXEV) {
        ev *e = &f->evs[f->nev++];
        memset(e, 0, sizeof *e);
        e->type = type;
        e->id = id;
        e->code = code;
        e->len = len;
        size_t n = len < sizeof e->data - 1 ? len : sizeof e->data - 1;
        if (n)
            memcpy(e->data, data, n);
    }
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static ev wait_ev(fx *f, int type)
{
    struct timespec dl;
    dx_test_deadline_in(&dl, WAIT_MS);
    pthread_mutex_lock(&f->mu);
    for (;;) {
        for (size_t i = 0; i < f->nev; i++)
            if (f->evs[i].type == type && !f->evs[i].taken) {
                f->evs[i].taken = 1;
                ev e = f->evs[i];
                pthread_mutex_unlock(&f->mu);
                return e;
            }
        if (pthread_cond_timedwait(&f->cv, &f->mu, &dl) == ETIMEDOUT) {
            pthread_mutex_unlock(&f->mu);
            fail_msg("timed out waiting for event %d", type);
        }
    }
}

static size_t count_ev(fx *f, int type)
{
    pthread_mutex_lock(&f->mu);
    size_t n = 0;
    for (size_t i = 0; i < f->nev; i++)
        n += f->evs[i].type == type;
    pthread_mutex_unlock(&f->mu);
    return n;
}

/* Log lines containing `needle`. */
static size_t count_log(fx *f, const char *needle)
{
    pthread_mutex_lock(&f->mu);
    size_t n = 0;
    for (size_t i = 0; i < f->nlogs; i++)
        n += strstr(f->logs[i], needle) != NULL;
    pthread_mutex_unlock(&f->mu);
    return n;
}

static void wait_log(fx *f, const char *needle)
{
    struct timespec dl;
    dx_test_deadline_in(&dl, WAIT_MS);
    pthread_mutex_lock(&f->mu);
    for (;;) {
        for (size_t i = 0; i < f->nlogs; i++)
            if (strstr(f->logs[i], needle)) {
                pthread_mutex_unlock(&f->mu);
                return;
            }
        if (pthread_cond_timedwait(&f->cv, &f->mu, &dl) == ETIMEDOUT) {
            pthread_mutex_unlock(&f->mu);
            fail_msg("timed out waiting for a log line with \"%s\"", needle);
        }
    }
}

static void log_sink(void *ud, int level, const char *line, size_t len)
{
    fx *f = ud;
    if (getenv("DX_TEST_DEBUG"))
        fprintf(stderr, "%.*s\n", (int)len, line);
    if (level > DX_LOG_WARN)
        return;
    pthread_mutex_lock(&f->mu);
    if (f->nlogs < 64) {
        size_t n = len < 255 ? len : 255;
        memcpy(f->logs[f->nlogs], line, n);
        f->logs[f->nlogs][n] = 0;
        f->nlogs++;
    }
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

/* ---- callbacks (loop thread) ---------------------------------------------------------- */

static int cb_upgrade(dx_server *srv, dx_request *req, void *ud)
{
    (void)srv;
    fx *f = ud;
    add_ev(f, EV_UPGRADE, 0, 0, req->path, req->path_len);
    if (f->mode == M_ACCEPT)
        return 0;
    f->h = dx_request_defer(req);
    if (f->mode == M_ANSWER_INSIDE) {
        /* answered before on_upgrade returns: applied on return */
        if (req->path_len == 7 && memcmp(req->path, "/refuse", 7) == 0)
            (void)dx_upgrade_refuse(f->h, 418, NULL);
        else
            (void)dx_upgrade_accept(f->h, "p2", &user_marker);
        f->h = NULL;
        return 0; /* ignored: the handle decided */
    }
    return DX_UPGRADE_DEFER;
}

static void cb_open(dx_conn *c, void *ud)
{
    fx *f = ud;
    uint8_t *ext = dx_conn_ext(c);
    if (f->ext_size) {
        if (!ext || (uintptr_t)ext % alignof(max_align_t))
            f->ext_align_bad++;
        for (size_t i = 0; ext && i < f->ext_size; i++)
            if (ext[i])
                f->ext_zero_bad++;
        if (ext)
            memset(ext, (int)(0x40 + dx_conn_id(c) % 64), f->ext_size); /* this connection's pattern */
    } else if (ext) {
        f->ext_align_bad++;
    }
    for (size_t i = 0; i < MAXC; i++)
        if (!f->conns[i]) {
            f->conns[i] = c;
            break;
        }
    const char *p = dx_conn_protocol(c);
    add_ev(f, EV_OPEN, dx_conn_id(c), dx_conn_user(c) == &user_marker, p ? p : "-", strlen(p ? p : "-"));
}

static int conn_index(fx *f, dx_conn *c)
{
    for (int i = 0; i < MAXC; i++)
        if (f->conns[i] == c)
            return i;
    return -1;
}

static void cb_message(dx_conn *c, int opcode, const uint8_t *data, size_t len, void *ud)
{
    fx *f = ud;
    if (opcode == DX_OP_BINARY && len >= 5 && data[0] == 'F') {
        /* flood: only counted, in order */
        long k = (long)data[1] << 24 | (long)data[2] << 16 | (long)data[3] << 8 | data[4];
        if (k != f->flood_next)
            f->flood_order_bad++;
        f->flood_next = k + 1;
        f->flood_got++;
        return;
    }
    if (len == 5 && memcmp(data, "pause", 5) == 0) {
        f->pause_rc = dx_conn_pause(c);
    } else if (len == 11 && memcmp(data, "pauseresume", 11) == 0) {
        f->pause_rc = dx_conn_pause(c);
        f->resume_rc = dx_conn_resume(c);
    } else if (len == 8 && memcmp(data, "resume:", 7) == 0) {
        /* resume another connection: "resume:N" with N its index */
        dx_conn *o = f->conns[data[7] - '0'];
        f->resume_rc = o ? dx_conn_resume(o) : -999;
    } else {
        (void)dx_conn_send(c, opcode, data, len);
    }
    add_ev(f, EV_MESSAGE, dx_conn_id(c), (unsigned)conn_index(f, c), data, len);
}

static void cb_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    (void)reason;
    (void)len;
    fx *f = ud;
    if (f->answer_on_close && f->h) {
        /* a later callback of another connection answers the pending handle */
        f->close_answer_rc = dx_upgrade_accept(f->h, "p1", &user_marker);
        f->h = NULL;
    }
    uint8_t *ext = dx_conn_ext(c);
    for (size_t i = 0; ext && i < f->ext_size; i++)
        if (ext[i] != (uint8_t)(0x40 + dx_conn_id(c) % 64))
            f->ext_kept_bad++;
    int i = conn_index(f, c);
    if (i >= 0)
        f->conns[i] = NULL;
    add_ev(f, EV_CLOSE, dx_conn_id(c), code, NULL, 0);
}

/* ---- fixture -------------------------------------------------------------------------- */

static void *loop_thread(void *p)
{
    (void)dx_loop_run(((fx *)p)->loop);
    return NULL;
}

static void call_tramp(void *p)
{
    fx *f = p;
    f->call_fn(f, f->call_arg);
    pthread_mutex_lock(&f->mu);
    f->call_done = 1;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static void on_loop(fx *f, void (*fn)(fx *f, void *arg), void *arg)
{
    f->call_fn = fn;
    f->call_arg = arg;
    f->call_done = 0;
    assert_int_equal(dx_loop_post(f->loop, call_tramp, f), 0);
    struct timespec dl;
    dx_test_deadline_in(&dl, WAIT_MS);
    pthread_mutex_lock(&f->mu);
    while (!f->call_done)
        if (pthread_cond_timedwait(&f->cv, &f->mu, &dl) == ETIMEDOUT) {
            pthread_mutex_unlock(&f->mu);
            fail_msg("timed out waiting for the loop");
        }
    pthread_mutex_unlock(&f->mu);
}

static void do_nothing(fx *f, void *arg)
{
    (void)f;
    (void)arg;
}

/* Two trips through the loop: whatever was already due has run. */
static void barrier(fx *f)
{
    on_loop(f, do_nothing, NULL);
    on_loop(f, do_nothing, NULL);
}

static void do_stats(fx *f, void *out) { dx_server_stats_get(f->srv, out); }
static void do_conns(fx *f, void *out) { *(size_t *)out = dx_server_connections(f->srv); }

static dx_server_stats stats(fx *f)
{
    dx_server_stats s;
    on_loop(f, do_stats, &s);
    return s;
}

static size_t conns(fx *f)
{
    size_t n;
    on_loop(f, do_conns, &n);
    return n;
}

static void wait_conns(fx *f, size_t want)
{
    for (int i = 0; conns(f) != want; i++) {
        assert_true(i < WAIT_MS / 5);
        usleep(5000);
    }
}

static int fx_setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    *state = f;
    return 0;
}

static dx_log g_log;

static dx_server_options opts(fx *f)
{
    dx_server_options o = {.host = "127.0.0.1", .port = DX_PORT_EPHEMERAL};
    o.cb = (dx_server_callbacks){
        .on_upgrade = cb_upgrade, .on_open = cb_open, .on_message = cb_message, .on_close = cb_close};
    o.ud = f;
    o.conn_ext_size = f->ext_size;
    return o;
}

static void start(fx *f, const dx_server_options *o)
{
    /* the sink keeps WARN and up: the limit and timeout lines */
    g_log = (dx_log){.sink = log_sink, .ud = f, .level = getenv("DX_TEST_DEBUG") ? DX_LOG_DEBUG : DX_LOG_WARN};
    dx_loop_options lo = {.log = &g_log};
    int err = 1;
    f->loop = dx_loop_new(&lo, &err);
    assert_non_null(f->loop);
    f->srv = dx_server_new(f->loop, o, &err);
    assert_non_null(f->srv);
    assert_int_equal(dx_server_start(f->srv), 0);
    f->port = dx_server_port(f->srv);
    assert_int_equal(pthread_create(&f->th, NULL, loop_thread, f), 0);
}

static void do_free_server(fx *f, void *arg)
{
    (void)arg;
    dx_server_free(f->srv);
    f->srv = NULL;
}

static void do_shutdown(fx *f, void *arg)
{
    (void)arg;
    (void)dx_server_shutdown(f->srv, DX_CLOSE_GOING_AWAY, "bye");
}

static void answer_leftover(fx *f, void *arg)
{
    (void)arg;
    if (f->h && f->srv)
        (void)dx_upgrade_refuse(f->h, 503, NULL);
    f->h = NULL;
}

static int fx_teardown(void **state)
{
    fx *f = *state;
    if (f->loop) {
        on_loop(f, answer_leftover, NULL);
        dx_loop_stop(f->loop);
        pthread_join(f->th, NULL);
    }
    dx_server_free(f->srv);
    dx_loop_free(f->loop);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f);
    return 0;
}

/* ---- client ------------------------------------------------------------------------------ */

typedef struct cl {
    int fd;
    uint8_t buf[1 << 16];
    size_t len;
} cl;

/* A TCP connection from `src` (e.g. "127.0.0.2"; NULL: any). */
static int tcp_from(fx *f, const char *src)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    if (src) {
        struct sockaddr_in b = {.sin_family = AF_INET};
        assert_int_equal(inet_pton(AF_INET, src, &b.sin_addr), 1);
        assert_int_equal(bind(fd, (struct sockaddr *)&b, sizeof b), 0);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {.tv_sec = WAIT_MS / 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static cl *cl_new(fx *f, const char *src)
{
    cl *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->fd = tcp_from(f, src);
    return c;
}

static void cl_free(cl *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

static void cl_send(cl *c, const void *p, size_t len)
{
    const uint8_t *b = p;
    while (len) {
        ssize_t w = send(c->fd, b, len, MSG_NOSIGNAL);
        assert_true(w > 0);
        b += w;
        len -= (size_t)w;
    }
}

static ssize_t cl_fill(cl *c)
{
    assert_true(c->len < sizeof c->buf);
    ssize_t r = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
    if (r > 0)
        c->len += (size_t)r;
    return r;
}

static void cl_need(cl *c, size_t n)
{
    while (c->len < n) {
        ssize_t r = cl_fill(c);
        if (r <= 0)
            fail_msg("client: %s with %zu of %zu bytes", r == 0 ? "EOF" : strerror(errno), c->len, n);
    }
}

static void cl_consume(cl *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

/* True when the server ended the connection (EOF or reset) with nothing more sent. */
static int cl_eof(cl *c)
{
    for (;;) {
        ssize_t r = cl_fill(c);
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            return 1;
        if (r < 0)
            return 0;
    }
}

static size_t frame_bytes(uint8_t *out, unsigned opcode, const void *data, size_t len)
{
    uint8_t key[4] = {0x12, 0x34, 0x56, 0x78};
    size_t hl = dx__frame_header_write(out, opcode, true, 0, len, key);
    dx__mask_copy(out + hl, data, len, key, 0);
    return hl + len;
}

static void cl_frame(cl *c, unsigned opcode, const void *data, size_t len)
{
    uint8_t b[256];
    assert_true(len + DX_FRAME_HEADER_MAX <= sizeof b);
    cl_send(c, b, frame_bytes(b, opcode, data, len));
}

/* Reads one unmasked server frame; returns its opcode, payload in out. */
static int cl_read_frame(cl *c, char *out, size_t cap, size_t *len)
{
    cl_need(c, 2);
    size_t n = c->buf[1] & 0x7F, hl = 2;
    if (n == 126) {
        cl_need(c, 4);
        n = (size_t)c->buf[2] << 8 | c->buf[3];
        hl = 4;
    }
    assert_true(n < 127 * 1024);
    cl_need(c, hl + n);
    int op = c->buf[0] & 0x0F;
    size_t k = n < cap - 1 ? n : cap - 1;
    memcpy(out, c->buf + hl, k);
    out[k] = 0;
    *len = n;
    cl_consume(c, hl + n);
    return op;
}

static void expect_text(cl *c, const char *s)
{
    char b[256];
    size_t n;
    assert_int_equal(cl_read_frame(c, b, sizeof b, &n), DX_OP_TEXT);
    assert_int_equal(n, strlen(s));
    assert_string_equal(b, s);
}

/* The upgrade request (plus `extra` bytes sent in the same write). */
static void cl_request(fx *f, cl *c, const char *path, const void *extra, size_t extra_len)
{
    static const char *const protos[] = {"p1", "p2"};
    static const dx_http_header xh = {.name = "X-Test", .name_len = 6, .value = "kept", .value_len = 4};
    dx_ws_client_opts o = {.host = "127.0.0.1", .port = f->port, .path = path, .protocols = protos,
                           .n_protocols = 2, .headers = &xh, .n_headers = 1};
    char req[2048];
    char key[25];
    int n = dx__ws_client_request(req, sizeof req, &o, NULL, key);
    assert_true(n > 0 && (size_t)n + extra_len <= sizeof req);
    if (extra_len)
        memcpy(req + n, extra, extra_len);
    cl_send(c, req, (size_t)n + extra_len);
}

/* Reads the response head; returns its status, head text in `head`. */
static int cl_response(cl *c, char *head, size_t cap)
{
    for (;;) {
        for (size_t i = 0; i + 4 <= c->len; i++)
            if (memcmp(c->buf + i, "\r\n\r\n", 4) == 0) {
                dx_http_header h[32];
                dx_http_response resp;
                assert_int_equal(dx__http_parse_response((const char *)c->buf, i + 4, &resp, h, 32, 0), (int)(i + 4));
                size_t k = i + 4 < cap - 1 ? i + 4 : cap - 1;
                memcpy(head, c->buf, k);
                head[k] = 0;
                cl_consume(c, i + 4);
                return resp.status;
            }
        ssize_t r = cl_fill(c);
        if (r <= 0)
            fail_msg("client: %s before the end of the response head", r == 0 ? "EOF" : strerror(errno));
    }
}

static cl *cl_open(fx *f, const char *src, const char *path)
{
    cl *c = cl_new(f, src);
    cl_request(f, c, path, NULL, 0);
    char head[1024];
    assert_int_equal(cl_response(c, head, sizeof head), 101);
    return c;
}

/* CPU time the loop's thread spends over one second of wall time: held
 * input must not keep waking epoll (level-triggered) in a busy loop. The
 * second is a measuring window, not a wait for an event; an idle loop uses
 * well under a millisecond of it, a spinning one most of it. */
static long loop_cpu_ms_over_1s(fx *f)
{
    clockid_t cid;
    assert_int_equal(pthread_getcpuclockid(f->th, &cid), 0);
    struct timespec a, b;
    assert_int_equal(clock_gettime(cid, &a), 0);
    struct timespec one = {1, 0};
    while (nanosleep(&one, &one) != 0 && errno == EINTR)
        ;
    assert_int_equal(clock_gettime(cid, &b), 0);
    return (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000;
}

/* ---- deferred upgrades ----------------------------------------------------------------------- */

typedef struct answer {
    int rc, opens_during;
    char path[64], query[64], xtest[64], protos[64], remote[64];
    const char *protocol;
    int status;
    const char *headers;
} answer;

static void copy_n(char *dst, size_t cap, const char *s, size_t len)
{
    if (!s)
        s = "(null)", len = 6;
    if (len >= cap)
        len = cap - 1;
    memcpy(dst, s, len);
    dst[len] = 0;
}

/* Reads the copied request, then accepts (loop thread, from a post). */
static void do_accept(fx *f, void *arg)
{
    answer *a = arg;
    const dx_request *r = dx_upgrade_request(f->h);
    copy_n(a->path, sizeof a->path, r->path, r->path_len);
    copy_n(a->query, sizeof a->query, r->query, r->query_len);
    copy_n(a->remote, sizeof a->remote, r->remote, strlen(r->remote));
    size_t hl = 0;
    const char *h = dx_request_header(r, "x-test", &hl);
    copy_n(a->xtest, sizeof a->xtest, h, hl);
    size_t cur = 0, nl;
    const char *name;
    a->protos[0] = 0;
    while (dx_request_protocol(r, &cur, &name, &nl)) {
        size_t o = strlen(a->protos);
        snprintf(a->protos + o, sizeof a->protos - o, "%s%.*s", o ? "," : "", (int)nl, name);
    }
    /* a subprotocol the client did not offer: refused, the handle still owed */
    int bad = dx_upgrade_accept(f->h, "nope", NULL);
    size_t before = count_ev(f, EV_OPEN);
    if (bad == DX_EINVAL)
        a->rc = dx_upgrade_accept(f->h, a->protocol, &user_marker);
    else
        a->rc = bad == DX_ECLOSED ? bad : -9999; /* DX_ECLOSED: the handle is freed already */
    a->opens_during = (int)(count_ev(f, EV_OPEN) - before);
    f->h = NULL;
}

static void do_refuse(fx *f, void *arg)
{
    answer *a = arg;
    a->rc = dx_upgrade_refuse(f->h, a->status, a->headers);
    f->h = NULL;
}

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
        cmocka_unit_test_setup_teardown(test_defer_accept_later, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_defer_answer_inside, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_defer_refuse, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_defer_timeout, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_defer_client_leaves, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_defer_accepted_then_lost, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_defer_answer_from_callback_and_shutdown, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_defer_outlives_server, fx_setup, fx_teardown),
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
