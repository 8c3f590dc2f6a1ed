/*
 * tests/unit/test_server.c: src/ws/server.c, conn.c and http.c — a
 * real dx_loop + dx_server on 127.0.0.1 (ephemeral port) or a Unix socket,
 * running in its own thread, against a client written here with blocking
 * sockets and the sans-I/O helpers of src/proto (handshake request and
 * check, frame headers, masking) or raw bytes.
 *
 * Callbacks run on the loop's thread: they only record events (under a
 * mutex) and never assert; the test thread waits for events with a generous
 * deadline instead of sleeping. Work that must run on the loop's thread
 * (shutdown, counters) is posted with dx_loop_post and waited for.
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
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define WAIT_MS 15000 /* generous: only a broken server takes this long */
#define MAXEV 1024
#define MAXCL 16

static const dx_log quiet_log = {.sink = NULL, .ud = NULL, .level = DX_LOG_ERROR};

/* ---- events recorded by the callbacks ------------------------------------------- */

enum { EV_UPGRADE = 1, EV_OPEN, EV_MESSAGE, EV_DRAIN, EV_CLOSE, EV_HTTP, EV_CMD_DONE };

typedef struct ev {
    int type;
    int taken;
    uint64_t id;
    int opcode;
    unsigned code;
    char *data; /* NUL-terminated copy */
    size_t len;
    long n;     /* EV_CMD_DONE: a count; EV_CLOSE: reason length */
    int rc;
} ev;

typedef struct cl {
    int fd;
    uint8_t *buf;
    size_t len, cap;
} cl;

typedef struct sfx {
    dx_loop *loop;
    dx_server *srv;
    pthread_t th;
    int running;
    unsigned port;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ev evs[MAXEV];
    size_t nev;
    cl cls[MAXCL];
    size_t ncl;
    char dir[64];
    /* behaviour, set before the server starts */
    int upgrade_status;
    const char *select;
    int echo;
    /* what on_upgrade / on_open saw (written on the loop thread before the
     * event that announces them) */
    char path[128], query[128], origin[128], xtest[64], protos[128], remote[64];
    int has_query, has_origin, select_bad_rc, select_rc;
    char open_protocol[32];
    int open_user_ok;
    char open_remote[64];
    dx_conn *conns[MAXCL]; /* loop thread only */
    /* posted calls */
    void (*call_fn)(struct sfx *f, void *arg);
    void *call_arg;
    int call_done;
    size_t shutdown_ret;
} sfx;

static int user_marker;

static void add_ev(sfx *f, const ev *e, const void *data, size_t len)
{
    pthread_mutex_lock(&f->mu);
    if (f->nev < MAXEV) {
        ev *d = &f->evs[f->nev++];
        *d = *e;
        d->taken = 0;
        d->data = malloc(len + 1);
        if (d->data) {
            if (len)
                memcpy(d->data, data, len);
            d->data[len] = 0;
        }
        d->len = len;
    }
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static void deadline_in(struct timespec *ts, unsigned ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* The oldest event of `type` not yet taken; waits for it. */
static ev wait_ev(sfx *f, int type)
{
    struct timespec dl;
    deadline_in(&dl, WAIT_MS);
    pthread_mutex_lock(&f->mu);
    for (;;) {
        for (size_t i = 0; i < f->nev; i++) {
            if (f->evs[i].type == type && !f->evs[i].taken) {
                f->evs[i].taken = 1;
                ev e = f->evs[i];
                pthread_mutex_unlock(&f->mu);
                return e;
            }
        }
        if (pthread_cond_timedwait(&f->cv, &f->mu, &dl) == ETIMEDOUT) {
            pthread_mutex_unlock(&f->mu);
            fail_msg("timed out waiting for event %d", type);
        }
    }
}

/* How many events of `type` were recorded (taken or not). */
static size_t count_ev(sfx *f, int type)
{
    pthread_mutex_lock(&f->mu);
    size_t n = 0;
    for (size_t i = 0; i < f->nev; i++)
        n += f->evs[i].type == type;
    pthread_mutex_unlock(&f->mu);
    return n;
}

/* ---- callbacks (loop thread) ------------------------------------------------- */

static void copy_str(char *dst, size_t cap, const char *s, size_t len)
{
    if (len >= cap)
        len = cap - 1;
    if (len)
        memcpy(dst, s, len);
    dst[len] = 0;
}

static int cb_upgrade(dx_server *srv, dx_request *req, void *ud)
{
    (void)srv;
    sfx *f = ud;
    copy_str(f->path, sizeof f->path, req->path, req->path_len);
    f->has_query = req->query != NULL;
    copy_str(f->query, sizeof f->query, req->query ? req->query : "", req->query_len);
    f->has_origin = req->origin != NULL;
    copy_str(f->origin, sizeof f->origin, req->origin ? req->origin : "", req->origin_len);
    copy_str(f->remote, sizeof f->remote, req->remote, strlen(req->remote));
    size_t hl = 0;
    const char *h = dx_request_header(req, "X-Test", &hl);
    copy_str(f->xtest, sizeof f->xtest, h ? h : "(none)", h ? hl : 6);
    f->protos[0] = 0;
    size_t cursor = 0;
    const char *name;
    size_t nl;
    while (dx_request_protocol(req, &cursor, &name, &nl)) {
        size_t o = strlen(f->protos);
        snprintf(f->protos + o, sizeof f->protos - o, "%s%.*s", o ? "," : "", (int)nl, name);
    }
    f->select_bad_rc = dx_request_select_protocol(req, "nope", 4);
    f->select_rc = f->select ? dx_request_select_protocol(req, f->select, strlen(f->select)) : 0;
    dx_request_set_user(req, &user_marker);
    ev e = {.type = EV_UPGRADE};
    add_ev(f, &e, NULL, 0);
    return f->upgrade_status;
}

static void cb_open(dx_conn *c, void *ud)
{
    sfx *f = ud;
    const char *p = dx_conn_protocol(c);
    copy_str(f->open_protocol, sizeof f->open_protocol, p ? p : "(none)", strlen(p ? p : "(none)"));
    f->open_user_ok = dx_conn_user(c) == &user_marker && dx_conn_server(c) == f->srv;
    char remote[64];
    size_t rl = dx_conn_remote(c, remote, sizeof remote);
    copy_str(f->open_remote, sizeof f->open_remote, remote, rl);
    for (size_t i = 0; i < MAXCL; i++)
        if (!f->conns[i]) {
            f->conns[i] = c;
            break;
        }
    ev e = {.type = EV_OPEN, .id = dx_conn_id(c)};
    add_ev(f, &e, NULL, 0);
}

/* Sends `size`-byte binary messages (byte i of message k is k + i) while
 * `more` says so; returns how many were accepted and the last result. */
static long flood(dx_conn *c, size_t size, size_t stop_above, long cap, int *rc)
{
    uint8_t *m = malloc(size);
    long k = 0;
    *rc = 0;
    if (!m) {
        *rc = DX_ENOMEM;
        return 0;
    }
    while (k < cap && dx_conn_buffered(c) <= stop_above) {
        for (size_t i = 0; i < size; i++)
            m[i] = (uint8_t)(k + (long)i);
        *rc = dx_conn_send(c, DX_OP_BINARY, m, size);
        if (*rc)
            break;
        k++;
    }
    free(m);
    return k;
}

static void cb_message(dx_conn *c, int opcode, const uint8_t *data, size_t len, void *ud)
{
    sfx *f = ud;
    ev e = {.type = EV_MESSAGE, .id = dx_conn_id(c), .opcode = opcode};
    if (opcode == DX_OP_TEXT && len >= 4 && memcmp(data, "cmd:", 4) == 0) {
        ev done = {.type = EV_CMD_DONE, .id = dx_conn_id(c)};
        if (len == 9 && memcmp(data, "cmd:close", 9) == 0) {
            done.rc = dx_conn_close(c, 4001, "bye", 3);
            /* a second close and a send are refused now */
            if (done.rc == 0 && dx_conn_close(c, 1000, NULL, 0) != DX_ECLOSED)
                done.rc = -12345;
        } else if (len == 9 && memcmp(data, "cmd:flood", 9) == 0) {
            /* queue more than the high-water mark (+ up to 64 KiB gathered before a write) */
            done.n = flood(c, 16384, 16384 + 70000, 100000, &done.rc);
            done.code = (unsigned)dx_conn_buffered(c);
        } else if (len == 8 && memcmp(data, "cmd:slow", 8) == 0) {
            done.n = flood(c, 16384, (size_t)-1, 100000, &done.rc);
        } else if (len == 8 && memcmp(data, "cmd:ping", 8) == 0) {
            done.rc = dx_conn_send(c, DX_OP_PING, "srv", 3);
        } else if (len == 11 && memcmp(data, "cmd:badutf8", 11) == 0) {
            done.rc = dx_conn_send(c, DX_OP_TEXT, "\xff", 1);
        }
        add_ev(f, &done, NULL, 0);
    } else if (f->echo) {
        e.rc = dx_conn_send(c, opcode, data, len);
    }
    add_ev(f, &e, data, len);
}

static void cb_drain(dx_conn *c, void *ud)
{
    ev e = {.type = EV_DRAIN, .id = dx_conn_id(c)};
    add_ev(ud, &e, NULL, 0);
}

static void cb_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    sfx *f = ud;
    for (size_t i = 0; i < MAXCL; i++)
        if (f->conns[i] == c)
            f->conns[i] = NULL;
    ev e = {.type = EV_CLOSE, .id = dx_conn_id(c), .code = code};
    add_ev(f, &e, reason, len);
}

static dx_http_req *held_req; /* loop thread only */

static int cb_http(dx_server *srv, dx_http_req *req, void *ud)
{
    (void)srv;
    sfx *f = ud;
    char p[256];
    copy_str(p, sizeof p, req->path, req->path_len);
    ev e = {.type = EV_HTTP, .id = req->conn_id};
    char rec[300];
    snprintf(rec, sizeof rec, "%s %s", req->method, p);
    int ret = 0;
    if (strcmp(p, "/hello") == 0) {
        e.rc = dx_http_reply(req, 200, "text/plain", "X-Test: 1\r\n", "hi", 2);
        ret = 1;
    } else if (strcmp(p, "/twice") == 0) {
        e.rc = dx_http_reply(req, 201, NULL, NULL, "one", 3);
        e.n = dx_http_reply(req, 202, NULL, NULL, "two", 3);
        ret = 1;
    } else if (strcmp(p, "/badstatus") == 0) {
        e.rc = dx_http_reply(req, 42, NULL, NULL, "x", 1); /* refused: the server answers 500 */
        ret = 1;
    } else if (strcmp(p, "/claim") == 0) {
        held_req = req; /* answered later, from a posted function */
        ret = 1;
    }
    add_ev(f, &e, rec, strlen(rec));
    return ret;
}

/* ---- the fixture --------------------------------------------------------------- */

static void *loop_thread(void *p)
{
    sfx *f = p;
    (void)dx_loop_run(f->loop);
    return NULL;
}

static void call_tramp(void *p)
{
    sfx *f = p;
    f->call_fn(f, f->call_arg);
    pthread_mutex_lock(&f->mu);
    f->call_done = 1;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

/* Runs fn(f, arg) on the loop's thread and waits for it. */
static void on_loop(sfx *f, void (*fn)(sfx *f, void *arg), void *arg)
{
    f->call_fn = fn;
    f->call_arg = arg;
    f->call_done = 0;
    assert_int_equal(dx_loop_post(f->loop, call_tramp, f), 0);
    struct timespec dl;
    deadline_in(&dl, WAIT_MS);
    pthread_mutex_lock(&f->mu);
    while (!f->call_done) {
        if (pthread_cond_timedwait(&f->cv, &f->mu, &dl) == ETIMEDOUT) {
            pthread_mutex_unlock(&f->mu);
            fail_msg("timed out waiting for the loop");
        }
    }
    pthread_mutex_unlock(&f->mu);
}

static void do_stats(sfx *f, void *out) { dx_server_stats_get(f->srv, out); }
static void do_conns(sfx *f, void *out) { *(size_t *)out = dx_server_connections(f->srv); }
static void do_shutdown(sfx *f, void *arg)
{
    (void)arg;
    f->shutdown_ret = dx_server_shutdown(f->srv, DX_CLOSE_GOING_AWAY, "bye");
}

static dx_server_stats stats(sfx *f)
{
    dx_server_stats s;
    on_loop(f, do_stats, &s);
    return s;
}

static size_t conns(sfx *f)
{
    size_t n;
    on_loop(f, do_conns, &n);
    return n;
}

/* Polls until the server has no connection left. */
static void wait_no_conns(sfx *f)
{
    for (int i = 0; conns(f) != 0; i++) {
        assert_true(i < WAIT_MS / 5);
        usleep(5000);
    }
}

static int sfx_setup(void **state)
{
    sfx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    f->echo = 1;
    for (size_t i = 0; i < MAXCL; i++)
        f->cls[i].fd = -1;
    *state = f;
    return 0;
}

/* Options every test starts from: callbacks to the recorder. */
static dx_server_options base_opts(sfx *f)
{
    dx_server_options o = {.host = "127.0.0.1", .port = DX_PORT_EPHEMERAL};
    o.cb = (dx_server_callbacks){.on_upgrade = cb_upgrade, .on_http = cb_http, .on_open = cb_open,
                                 .on_message = cb_message, .on_drain = cb_drain, .on_close = cb_close};
    o.ud = f;
    return o;
}

static void start(sfx *f, const dx_server_options *o)
{
    dx_loop_options lo = {.log = &quiet_log};
    int err = 1;
    f->loop = dx_loop_new(&lo, &err);
    assert_non_null(f->loop);
    f->srv = dx_server_new(f->loop, o, &err);
    assert_non_null(f->srv);
    assert_int_equal(err, 0);
    assert_int_equal(dx_server_start(f->srv), 0);
    f->port = dx_server_port(f->srv);
    if (!o->unix_path)
        assert_true(f->port > 0 && f->port < 65536);
    assert_int_equal(pthread_create(&f->th, NULL, loop_thread, f), 0);
    f->running = 1;
}

static void rm_tree(const char *dir)
{
    char cmd[128];
    if (dir[0]) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", dir);
    }
}

static int sfx_teardown(void **state)
{
    sfx *f = *state;
    if (f->running) {
        dx_loop_stop(f->loop);
        pthread_join(f->th, NULL);
    }
    dx_server_free(f->srv);
    dx_loop_free(f->loop);
    for (size_t i = 0; i < MAXCL; i++) {
        if (f->cls[i].fd >= 0)
            close(f->cls[i].fd);
        free(f->cls[i].buf);
    }
    for (size_t i = 0; i < f->nev; i++)
        free(f->evs[i].data);
    rm_tree(f->dir);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f);
    return 0;
}

static void make_dir(sfx *f)
{
    snprintf(f->dir, sizeof f->dir, "/tmp/dx_srv_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
}

/* ---- the client --------------------------------------------------------------- */

static cl *cl_wrap(sfx *f, int fd)
{
    assert_true(f->ncl < MAXCL);
    cl *c = &f->cls[f->ncl++];
    c->fd = fd;
    c->cap = 1u << 20;
    c->buf = malloc(c->cap);
    assert_non_null(c->buf);
    c->len = 0;
    struct timeval tv = {.tv_sec = WAIT_MS / 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return c;
}

static cl *cl_tcp(sfx *f, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    if (rcvbuf)
        assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return cl_wrap(f, fd);
}

static cl *cl_unix(sfx *f, const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return cl_wrap(f, fd);
}

static void cl_close(cl *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
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

/* One recv into the buffer: > 0 bytes, 0 at EOF, -1 on error (errno). */
static ssize_t cl_fill(cl *c)
{
    if (c->len == c->cap) {
        c->cap *= 2;
        c->buf = realloc(c->buf, c->cap);
        assert_non_null(c->buf);
    }
    ssize_t r = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
    if (r > 0)
        c->len += (size_t)r;
    return r;
}

static void cl_need(cl *c, size_t n)
{
    while (c->len < n) {
        ssize_t r = cl_fill(c);
        if (r <= 0)
            fail_msg("client: %s while %zu of %zu bytes were buffered", r == 0 ? "EOF" : strerror(errno), c->len,
                     n);
    }
}

static void cl_consume(cl *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

/* Reads until the peer's EOF (a reset counts as the end too). */
static void cl_read_to_eof(cl *c)
{
    for (;;) {
        ssize_t r = cl_fill(c);
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            return;
        if (r < 0)
            fail_msg("client: %s before EOF", strerror(errno));
    }
}

/* The length of the response head at the front of the buffer. */
static size_t cl_head(cl *c)
{
    for (;;) {
        for (size_t i = 0; i + 4 <= c->len; i++)
            if (memcmp(c->buf + i, "\r\n\r\n", 4) == 0)
                return i + 4;
        ssize_t r = cl_fill(c);
        if (r <= 0)
            fail_msg("client: %s before the end of the head", r == 0 ? "EOF" : strerror(errno));
    }
}

typedef struct hs {
    int status;
    char protocol[32];
    char body[256];
} hs;

static hs cl_handshake_opts(sfx *f, cl *c, const dx_ws_client_opts *o, const void *extra, size_t extra_len,
                            int bytewise)
{
    (void)f;
    char req[4096];
    char key[25];
    int n = dx__ws_client_request(req, sizeof req, o, NULL, key);
    assert_true(n > 0);
    assert_true((size_t)n + extra_len <= sizeof req);
    if (extra_len)
        memcpy(req + n, extra, extra_len);
    if (bytewise) {
        for (size_t i = 0; i < (size_t)n + extra_len; i++)
            cl_send(c, req + i, 1);
    } else {
        cl_send(c, req, (size_t)n + extra_len);
    }
    size_t hl = cl_head(c);
    dx_http_header h[32];
    dx_http_response resp;
    assert_int_equal(dx__http_parse_response((const char *)c->buf, hl, &resp, h, 32, 0), (int)hl);
    hs r = {.status = resp.status};
    strcpy(r.protocol, "(none)");
    if (resp.status == 101) {
        const char *p = NULL;
        size_t pl = 0, ne = 0;
        dx_ws_ext_offer exts[4];
        assert_int_equal(dx__ws_client_check(&resp, key, o, &p, &pl, exts, 4, &ne), 0);
        if (p)
            copy_str(r.protocol, sizeof r.protocol, p, pl);
        cl_consume(c, hl);
    }
    return r;
}

static hs cl_handshake(sfx *f, cl *c, const char *path)
{
    dx_ws_client_opts o = {.host = "127.0.0.1", .port = f->port, .path = path};
    return cl_handshake_opts(f, c, &o, NULL, 0, 0);
}

static size_t frame_bytes(uint8_t *out, unsigned opcode, bool fin, const void *data, size_t len, bool masked)
{
    static uint8_t k = 0;
    uint8_t key[4] = {(uint8_t)(0x11 + k), 0x22, (uint8_t)(0x33 ^ k), 0x44};
    k++;
    size_t hl = dx__frame_header_write(out, opcode, fin, 0, len, masked ? key : NULL);
    if (masked)
        dx__mask_copy(out + hl, data, len, key, 0);
    else if (len)
        memcpy(out + hl, data, len);
    return hl + len;
}

static void cl_frame(cl *c, unsigned opcode, bool fin, const void *data, size_t len)
{
    uint8_t *b = malloc(len + DX_FRAME_HEADER_MAX);
    assert_non_null(b);
    size_t n = frame_bytes(b, opcode, fin, data, len, true);
    cl_send(c, b, n);
    free(b);
}

static void cl_close_frame(cl *c, unsigned code, const char *reason)
{
    uint8_t p[125];
    size_t rl = strlen(reason);
    p[0] = (uint8_t)(code >> 8);
    p[1] = (uint8_t)code;
    memcpy(p + 2, reason, rl);
    cl_frame(c, DX_OP_CLOSE, true, p, 2 + rl);
}

typedef struct frm {
    int opcode;
    bool fin;
    uint8_t *data; /* malloc'd, NUL-terminated */
    size_t len;
} frm;

/* Reads one server frame (which must be unmasked). */
static frm cl_read_frame(cl *c)
{
    cl_need(c, 2);
    frm fr = {.opcode = c->buf[0] & 0x0F, .fin = (c->buf[0] & 0x80) != 0};
    assert_int_equal(c->buf[0] & 0x70, 0); /* no RSV bits */
    assert_int_equal(c->buf[1] & 0x80, 0); /* servers do not mask */
    uint64_t len = c->buf[1] & 0x7F;
    size_t hl = 2;
    if (len == 126) {
        cl_need(c, 4);
        len = (uint64_t)c->buf[2] << 8 | c->buf[3];
        hl = 4;
    } else if (len == 127) {
        cl_need(c, 10);
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | c->buf[2 + i];
        hl = 10;
    }
    assert_true(len < (1u << 26));
    cl_need(c, hl + (size_t)len);
    fr.data = malloc((size_t)len + 1);
    assert_non_null(fr.data);
    memcpy(fr.data, c->buf + hl, (size_t)len);
    fr.data[len] = 0;
    fr.len = (size_t)len;
    cl_consume(c, hl + (size_t)len);
    return fr;
}

static void expect_frame(cl *c, int opcode, const void *data, size_t len)
{
    frm fr = cl_read_frame(c);
    assert_int_equal(fr.opcode, opcode);
    assert_true(fr.fin);
    assert_int_equal(fr.len, len);
    if (len)
        assert_memory_equal(fr.data, data, len);
    free(fr.data);
}

static void expect_close(cl *c, unsigned code, const char *reason)
{
    frm fr = cl_read_frame(c);
    assert_int_equal(fr.opcode, DX_OP_CLOSE);
    assert_true(fr.len >= 2);
    assert_int_equal((unsigned)fr.data[0] << 8 | fr.data[1], code);
    if (reason)
        assert_string_equal((const char *)fr.data + 2, reason);
    free(fr.data);
}

/* The server ends the TCP connection after the close handshake. */
static void expect_eof(cl *c)
{
    assert_int_equal(c->len, 0);
    cl_read_to_eof(c);
    assert_int_equal(c->len, 0);
}

/* The usual ending: we close, the server echoes, then sends FIN. */
static void close_normally(sfx *f, cl *c, unsigned code)
{
    cl_close_frame(c, code, "done");
    expect_close(c, code, NULL);
    expect_eof(c);
    cl_close(c);
    ev e = wait_ev(f, EV_CLOSE);
    assert_int_equal(e.code, code);
}

/* ---- HTTP helpers --------------------------------------------------------------- */

typedef struct http_res {
    int status;
    char head[2048];
    size_t head_len;
    char body[4096];
    size_t body_len;
    long content_length;
} http_res;

/* Sends `request` (with "Connection: close" added when it ends its head
 * there, so the server closes after answering) and reads to EOF. */
static http_res http(sfx *f, const char *request)
{
    cl *c = cl_tcp(f, 0);
    size_t rl = strlen(request);
    if (rl >= 4 && strcmp(request + rl - 4, "\r\n\r\n") == 0) {
        cl_send(c, request, rl - 2);
        cl_send(c, "Connection: close\r\n\r\n", 21);
    } else {
        cl_send(c, request, rl);
    }
    cl_read_to_eof(c);
    cl_close(c);
    http_res r = {0};
    dx_http_header h[32];
    dx_http_response resp;
    int hl = dx__http_parse_response((const char *)c->buf, c->len, &resp, h, 32, 0);
    assert_true(hl > 0);
    r.status = resp.status;
    assert_true((size_t)hl < sizeof r.head);
    memcpy(r.head, c->buf, (size_t)hl);
    r.head_len = (size_t)hl;
    r.body_len = c->len - (size_t)hl;
    assert_true(r.body_len < sizeof r.body);
    memcpy(r.body, c->buf + hl, r.body_len);
    r.content_length = -1;
    const dx_http_header *cl_h = dx__http_find(h, resp.n_headers, "content-length");
    if (cl_h)
        r.content_length = strtol(cl_h->value, NULL, 10);
    const dx_http_header *conn_h = dx__http_find(h, resp.n_headers, "connection");
    assert_non_null(conn_h);
    assert_true(dx__http_list_has(conn_h->value, conn_h->value_len, "close"));
    return r;
}

/* ---- tests: the handshake ----------------------------------------------------------- */

static void test_upgrade_view_and_protocol(void **state)
{
    sfx *f = *state;
    f->select = "p2";
    dx_server_options o = base_opts(f);
    start(f, &o);
    cl *c = cl_tcp(f, 0);
    const char *protos[] = {"p1", "p2"};
    dx_http_header extra[] = {{"X-Test", 6, "yes  ", 5}};
    dx_ws_client_opts co = {.host = "127.0.0.1", .port = f->port, .path = "/chat/room?id=7&x=%20",
                            .protocols = protos, .n_protocols = 2, .origin = "https://example.com",
                            .headers = extra, .n_headers = 1};
    hs r = cl_handshake_opts(f, c, &co, NULL, 0, 0);
    assert_int_equal(r.status, 101);
    assert_string_equal(r.protocol, "p2");
    wait_ev(f, EV_UPGRADE);
    wait_ev(f, EV_OPEN);
    assert_string_equal(f->path, "/chat/room");
    assert_true(f->has_query);
    assert_string_equal(f->query, "id=7&x=%20");
    assert_true(f->has_origin);
    assert_string_equal(f->origin, "https://example.com");
    assert_string_equal(f->xtest, "yes");
    assert_string_equal(f->protos, "p1,p2");
    assert_int_equal(f->select_bad_rc, DX_EINVAL);
    assert_int_equal(f->select_rc, 0);
    assert_string_equal(f->open_protocol, "p2");
    assert_true(f->open_user_ok);
    int fam;
    struct sockaddr_in me;
    socklen_t ml = sizeof me;
    assert_int_equal(getsockname(c->fd, (struct sockaddr *)&me, &ml), 0);
    (void)fam;
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%u", ntohs(me.sin_port));
    assert_string_equal(f->remote, want);
    assert_string_equal(f->open_remote, want);
    close_normally(f, c, 1000);

    /* no query, no origin, no protocols: none selected */
    f->select = NULL;
    c = cl_tcp(f, 0);
    r = cl_handshake(f, c, "/");
    assert_int_equal(r.status, 101);
    assert_string_equal(r.protocol, "(none)");
    wait_ev(f, EV_OPEN);
    assert_false(f->has_query);
    assert_false(f->has_origin);
    assert_string_equal(f->path, "/");
    assert_string_equal(f->protos, "");
    assert_string_equal(f->xtest, "(none)");
    assert_string_equal(f->open_protocol, "(none)");
    close_normally(f, c, 1000);
}

static void test_refuse_403(void **state)
{
    sfx *f = *state;
    f->upgrade_status = 403;
    dx_server_options o = base_opts(f);
    start(f, &o);
    cl *c = cl_tcp(f, 0);
    hs r = cl_handshake(f, c, "/secret");
    assert_int_equal(r.status, 403);
    cl_read_to_eof(c);
    cl_close(c);
    wait_ev(f, EV_UPGRADE);
    wait_no_conns(f);
    assert_int_equal(count_ev(f, EV_OPEN), 0);
    assert_int_equal(count_ev(f, EV_CLOSE), 0);
    dx_server_stats s = stats(f);
    assert_int_equal(s.accepted, 1);
    assert_int_equal(s.handshakes_failed, 1);
    assert_int_equal(s.open, 0);

    /* a status outside 400-599 becomes 500 */
    f->upgrade_status = 302;
    c = cl_tcp(f, 0);
    r = cl_handshake(f, c, "/");
    assert_int_equal(r.status, 500);
    cl_close(c);
}

static void test_bad_handshakes(void **state)
{
    sfx *f = *state;
    dx_server_options o = base_opts(f);
    start(f, &o);
    /* no Sec-WebSocket-Key */
    http_res r = http(f, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n");
    assert_int_equal(r.status, 400);
    /* version 8 → 426 with Sec-WebSocket-Version: 13 */
    r = http(f, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n");
    assert_int_equal(r.status, 426);
    assert_non_null(strstr(r.head, "Sec-WebSocket-Version: 13\r\n"));
    /* garbage → 400 */
    r = http(f, "NOT HTTP\r\n\r\n");
    assert_int_equal(r.status, 400);
    /* a head over max_head → 431 */
    char big[12000];
    int n = snprintf(big, sizeof big, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(big + n, 'a', sizeof big - (size_t)n - 5);
    memcpy(big + sizeof big - 5, "\r\n\r\n", 5);
    r = http(f, big);
    assert_int_equal(r.status, 431);
    assert_int_equal(count_ev(f, EV_UPGRADE), 0);
    assert_int_equal(count_ev(f, EV_OPEN), 0);
    wait_no_conns(f);
    dx_server_stats s = stats(f);
    assert_int_equal(s.accepted, 4);
    assert_int_equal(s.handshakes_failed, 4);
}

/* ---- tests: messages ---------------------------------------------------------------- */

static void test_echo_text_binary_fragmented(void **state)
{
    sfx *f = *state;
    dx_server_options o = base_opts(f);
    start(f, &o);
    cl *c = cl_tcp(f, 0);
    assert_int_equal(cl_handshake(f, c, "/echo").status, 101);
    wait_ev(f, EV_OPEN);

    cl_frame(c, DX_OP_TEXT, true, "hello", 5);
    expect_frame(c, DX_OP_TEXT, "hello", 5);
    ev e = wait_ev(f, EV_MESSAGE);
    assert_int_equal(e.opcode, DX_OP_TEXT);
    assert_string_equal(e.data, "hello");
    assert_int_equal(e.rc, 0);

    const uint8_t bin[] = {0, 1, 0xFF, 0, 0x80};
    cl_frame(c, DX_OP_BINARY, true, bin, sizeof bin);
    expect_frame(c, DX_OP_BINARY, bin, sizeof bin);
    e = wait_ev(f, EV_MESSAGE);
    assert_int_equal(e.opcode, DX_OP_BINARY);
    assert_int_equal(e.len, sizeof bin);
    assert_memory_equal(e.data, bin, sizeof bin);

    /* empty text */
    cl_frame(c, DX_OP_TEXT, true, "", 0);
    expect_frame(c, DX_OP_TEXT, "", 0);
    wait_ev(f, EV_MESSAGE);

    /* fragmented, with a ping between the fragments: one message */
    cl_frame(c, DX_OP_TEXT, false, "hel", 3);
    cl_frame(c, DX_OP_PING, true, "p", 1);
    cl_frame(c, DX_OP_CONT, false, "l", 1);
    cl_frame(c, DX_OP_CONT, true, "o \xc3\xa9", 4);
    expect_frame(c, DX_OP_PONG, "p", 1);
    expect_frame(c, DX_OP_TEXT, "hello \xc3\xa9", 8);
    e = wait_ev(f, EV_MESSAGE);
    assert_int_equal(e.opcode, DX_OP_TEXT);
    assert_string_equal(e.data, "hello \xc3\xa9");

    /* 16-bit and 64-bit lengths */
    size_t sizes[] = {125, 126, 65535, 65536, 200000};
    for (size_t k = 0; k < 5; k++) {
        size_t n = sizes[k];
        uint8_t *m = malloc(n);
        assert_non_null(m);
        for (size_t i = 0; i < n; i++)
            m[i] = (uint8_t)(i * 7 + k);
        cl_frame(c, DX_OP_BINARY, true, m, n);
        expect_frame(c, DX_OP_BINARY, m, n);
        e = wait_ev(f, EV_MESSAGE);
        assert_int_equal(e.len, n);
        free(m);
    }
    /* several messages in one write come back in order */
    uint8_t batch[64];
    size_t bl = 0;
    for (int i = 0; i < 4; i++) {
        char s[2] = {(char)('a' + i), 0};
        bl += frame_bytes(batch + bl, DX_OP_TEXT, true, s, 1, true);
    }
    cl_send(c, batch, bl);
    for (int i = 0; i < 4; i++) {
        char s[2] = {(char)('a' + i), 0};
        expect_frame(c, DX_OP_TEXT, s, 1);
        wait_ev(f, EV_MESSAGE);
    }
    const size_t msgs = 3 + 1 + 5 + 4;

    dx_server_stats s = stats(f);
    assert_int_equal(s.accepted, 1);
    assert_int_equal(s.open, 1);
    assert_int_equal(s.messages_in, msgs);
    assert_int_equal(s.messages_out, msgs);
    assert_true(s.bytes_in > 200000 + 65536 + 65535);
    assert_true(s.bytes_out > 200000 + 65536 + 65535);
    assert_int_equal(s.closed, 0);

    close_normally(f, c, 1000);
    s = stats(f);
    assert_int_equal(s.open, 0);
    assert_int_equal(s.closed, 1);
    assert_int_equal(s.handshakes_failed, 0);
    wait_no_conns(f);
}

static void test_ping_pong_and_server_ping(void **state)
{
    sfx *f = *state;
    dx_server_options o = base_opts(f);
    start(f, &o);
    cl *c = cl_tcp(f, 0);
    assert_int_equal(cl_handshake(f, c, "/").status, 101);
    wait_ev(f, EV_OPEN);
    cl_frame(c, DX_OP_PING, true, "are you there", 13);
    expect_frame(c, DX_OP_PONG, "are you there", 13);
    cl_frame(c, DX_OP_PING, true, "", 0);
    expect_frame(c, DX_OP_PONG, "", 0);
    /* an unsolicited pong is ignored */
    cl_frame(c, DX_OP_PONG, true, "x", 1);
    /* dx_conn_send(PING) */
    cl_frame(c, DX_OP_TEXT, true, "cmd:ping", 8);
    expect_frame(c, DX_OP_PING, "srv", 3);
    assert_int_equal(wait_ev(f, EV_CMD_DONE).rc, 0);
    /* invalid UTF-8 text is refused by dx_conn_send */
    cl_frame(c, DX_OP_TEXT, true, "cmd:badutf8", 11);
    assert_int_equal(wait_ev(f, EV_CMD_DONE).rc, DX_EUTF8);
    assert_string_equal(wait_ev(f, EV_MESSAGE).data, "cmd:ping");
    assert_string_equal(wait_ev(f, EV_MESSAGE).data, "cmd:badutf8");
    close_normally(f, c, 1000);
    assert_int_equal(count_ev(f, EV_MESSAGE), 2); /* the pong was not a message */
}

/* ---- tests: closing ---------------------------------------------------------------- */

static void test_server_close_4001(void **state)
{
    sfx *f = *state;
    dx_server_options o = base_opts(f);
    start(f, &o);
    cl *c = cl_tcp(f, 0);
    assert_int_equal(cl_handshake(f, c, "/").status, 101);
    wait_ev(f, EV_OPEN);
    cl_frame(c, DX_OP_TEXT, true, "cmd:close", 9);
    expect_close(c, 4001, "bye");
    assert_int_equal(wait_ev(f, EV_CMD_DONE).rc, 0);
    assert_int_equal(count_ev(f, EV_CLOSE), 0); /* waits for our answer */
    /* a message the peer sent before it saw our close may still arrive
     * (RFC 6455 §7.1: only after *receiving* a close is data discarded);
     * answering it is refused: we are closing */
    cl_frame(c, DX_OP_TEXT, true, "late", 4);
    wait_ev(f, EV_MESSAGE); /* cmd:close */
    ev late = wait_ev(f, EV_MESSAGE);
    assert_string_equal(late.data, "late");
    assert_int_equal(late.rc, DX_ECLOSED);
    cl_close_frame(c, 4001, "");
    expect_eof(c); /* nothing after the close frame, then FIN */
    cl_close(c);
    ev e = wait_ev(f, EV_CLOSE);
    assert_int_equal(e.code, 4001);
    wait_no_conns(f);
}

static void test_peer_close_codes(void **state)
{
    sfx *f = *state;
    dx_server_options o = base_opts(f);
    start(f, &o);
    const unsigned codes[] = {1000, 1001, 4002, 3000};
    for (size_t i = 0; i < 4; i++) {
        cl *c = cl_tcp(f, 0);
        assert_int_equal(cl_handshake(f, c, "/").status, 101);
        wait_ev(f, EV_OPEN);
        close_normally(f, c, codes[i]);
    }
    /* a close frame with no code: on_close reports 1005 */
    cl *c = cl_tcp(f, 0);
    assert_int_equal(cl_handshake(f, c, "/").status, 101);
    wait_ev(f, EV_OPEN);
    cl_frame(c, DX_OP_CLOSE, true, "", 0);
    frm fr = cl_read_frame(c);
    assert_int_equal(fr.opcode, DX_OP_CLOSE);
    assert_int_equal(fr.len, 0);
    free(fr.data);
    expect_eof(c);
    cl_close(c);
    assert_int_equal(wait_ev(f, EV_CLOSE).code, DX_CLOSE_NO_STATUS);
    /* TCP dropped without a close frame: 1006 */
    c = cl_tcp(f, 0);
    assert_int_equal(cl_handshake(f, c, "/").status, 101);
    wait_ev(f, EV_OPEN);
    cl_close(c);
    assert_int_equal(wait_ev(f, EV_CLOSE).code, DX_CLOSE_ABNORMAL);
    wait_no_conns(f);
    dx_server_stats s = stats(f);
    assert_int_equal(s.closed, 6);
    assert_int_equal(s.open, 0);
}

static void test_protocol_error_1002(void **state)
{
    sfx *f = *state;
    dx_server_options o = base_opts(f);
    start(f, &o);
    cl *c = cl_tcp(f, 0);
    assert_int_equal(cl_handshake(f, c, "/").status, 101);
    wait_ev(f, EV_OPEN);
    uint8_t b[16];
    size_t n = frame_bytes(b, DX_OP_TEXT, true, "hi", 2, false); /* unmasked */
    cl_send(c, b, n);
    expect_close(c, 1002, NULL);
    expect_eof(c);
    cl_close(c);
    assert_int_equal(wait_ev(f, EV_CLOSE).code, 1002);
    assert_int_equal(count_ev(f, EV_MESSAGE), 0);

    /* invalid UTF-8 in a text message: 1007 */
    c = cl_tcp(f, 0);
    assert_int_equal(cl_handshake(f, c, "/").status, 101);
    wait_ev(f, EV_OPEN);
    cl_frame(c, DX_OP_TEXT, true, "\xc3\x28", 2);
    expect_close(c, 1007, NULL);
    expect_eof(c);
    cl_close(c);
    assert_int_equal(wait_ev(f, EV_CLOSE).code, 1007);
    wait_no_conns(f);
}

static void test_message_limits(void **state)
{
    sfx *f = *state;
    dx_server_options o = base_opts(f);
    o.max_message = 1000;
    o.max_fragments = 4;
    start(f, &o);
    cl *c = cl_tcp(f, 0);
    assert_int_equal(cl_handshake(f, c, "/").status, 101);
    wait_ev(f, EV_OPEN);
    uint8_t m[1001] = {0};
    cl_frame(c, DX_OP_BINARY, true, m, 1000); /* at the limit: fine */
    expect_frame(c, DX_OP_BINARY, m, 1000);
    cl_frame(c, DX_OP_BINARY, true, m, 1001);
    expect_close(c, 1009, NULL);
    expect_eof(c);
    cl_close(c);
    assert_int_equal(wait_ev(f, EV_CLOSE).code, 1009);

    c = cl_tcp(f, 0);
    assert_int_equal(cl_handshake(f, c, "/").status, 101);
    wait_ev(f, EV_OPEN);
    for (int i = 0; i < 5; i++)
        cl_frame(c, i ? DX_OP_CONT : DX_OP_TEXT, false, "x", 1);
    expect_close(c, 1008, NULL);
    expect_eof(c);
    cl_close(c);
    assert_int_equal(wait_ev(f, EV_CLOSE).code, 1008);
}

static void test_shutdown_1001(void **state)
{
    sfx *f = *state;
    dx_server_options o = base_opts(f);
    start(f, &o);
    cl *c[3];
    for (int i = 0; i < 3; i++) {
        c[i] = cl_tcp(f, 0);
        assert_int_equal(cl_handshake(f, c[i], "/").status, 101);
        wait_ev(f, EV_OPEN);
    }
    /* one more still in its handshake (connected, no request yet) */
    cl *raw = cl_tcp(f, 0);
    for (int i = 0; stats(f).accepted < 4; i++) {
        assert_true(i < WAIT_MS / 5);
        usleep(5000);
    }
    assert_int_equal(conns(f), 4);
    on_loop(f, do_shutdown, NULL);
    assert_int_equal(f->shutdown_ret, 3);
    cl_read_to_eof(raw); /* dropped */
    cl_close(raw);
    for (int i = 0; i < 3; i++) {
        expect_close(c[i], 1001, "bye");
        cl_close_frame(c[i], 1001, "");
        expect_eof(c[i]);
        cl_close(c[i]);
    }
    for (int i = 0; i < 3; i++)
        assert_int_equal(wait_ev(f, EV_CLOSE).code, 1001);
    wait_no_conns(f);
    /* the listener is gone */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), -1);
    assert_int_equal(errno, ECONNREFUSED);
    close(fd);
    /* shutting down again is harmless */
    on_loop(f, do_shutdown, NULL);
    assert_int_equal(f->shutdown_ret, 0);
}

/* ---- tests: backpressure --------------------------------------------------------------- */

static void test_drain_after_high_water(void **state)
{
    sfx *f = *state;
    dx_server_options o = base_opts(f);
    o.send_high_water = 16384;
    o.send_max = 64u << 20;
    start(f, &o);
    cl *c = cl_tcp(f, 4096); /* a small window: the server's queue fills fast */
    assert_int_equal(cl_handshake(f, c, "/").status, 101);
    wait_ev(f, EV_OPEN);
    cl_frame(c, DX_OP_TEXT, true, "cmd:flood", 9);
    ev done = wait_ev(f, EV_CMD_DONE); /* we have not read anything yet */
    assert_int_equal(done.rc, 0);
    assert_true(done.n > 0);
    assert_true(done.code > 16384 + 65536); /* queued past the high-water mark */
    assert_int_equal(count_ev(f, EV_DRAIN), 0);
    usleep(100000);
    assert_int_equal(count_ev(f, EV_DRAIN), 0); /* still not: nothing was read */
    /* now read everything: the queue empties and on_drain fires once */
    uint8_t *want = malloc(16384);
    assert_non_null(want);
    for (long k = 0; k < done.n; k++) {
        for (size_t i = 0; i < 16384; i++)
            want[i] = (uint8_t)(k + (long)i);
        expect_frame(c, DX_OP_BINARY, want, 16384);
    }
    free(want);
    wait_ev(f, EV_DRAIN);
    /* the connection is still fine */
    cl_frame(c, DX_OP_TEXT, true, "after", 5);
    expect_frame(c, DX_OP_TEXT, "after", 5);
    dx_server_stats s = stats(f);
    assert_int_equal(s.dropped_slow, 0);
    assert_int_equal(s.messages_out, (uint64_t)done.n + 1);
    close_normally(f, c, 1000);
    assert_int_equal(count_ev(f, EV_DRAIN), 1);
}

static void test_slow_consumer_1008(void **state)
{
    sfx *f = *state;
    dx_server_options o = base_opts(f);
    o.send_high_water = 16384;
    o.send_max = 256u * 1024u;
    start(f, &o);
    cl *c = cl_tcp(f, 4096);
    assert_int_equal(cl_handshake(f, c, "/").status, 101);
    wait_ev(f, EV_OPEN);
    cl_frame(c, DX_OP_TEXT, true, "cmd:slow", 8);
    ev done = wait_ev(f, EV_CMD_DONE);
    assert_int_equal(done.rc, DX_ELIMIT);
    assert_true(done.n > 0);
    /* what was accepted arrives, then close 1008 */
    long got = 0;
    for (;;) {
        frm fr = cl_read_frame(c);
        if (fr.opcode == DX_OP_CLOSE) {
            assert_true(fr.len >= 2);
            assert_int_equal((unsigned)fr.data[0] << 8 | fr.data[1], 1008);
            free(fr.data);
            break;
        }
        assert_int_equal(fr.opcode, DX_OP_BINARY);
        assert_int_equal(fr.len, 16384);
        free(fr.data);
        got++;
    }
    assert_int_equal(got, done.n);
    expect_eof(c);
    cl_close(c);
    assert_int_equal(wait_ev(f, EV_CLOSE).code, 1008);
    dx_server_stats s = stats(f);
    assert_int_equal(s.dropped_slow, 1);
}

/* ---- tests: plain HTTP ---------------------------------------------------------------- */

static void answer_held(sfx *f, void *arg)
{
    (void)f;
    *(int *)arg = dx_http_reply(held_req, 202, NULL, NULL, "later", 5);
    held_req = NULL;
}

static void test_on_http_reply(void **state)
{
    sfx *f = *state;
    dx_server_options o = base_opts(f);
    start(f, &o);
    http_res r = http(f, "GET /hello?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.head, "X-Test: 1\r\n"));
    assert_non_null(strstr(r.head, "Content-Type: text/plain\r\n"));
    assert_int_equal(r.content_length, 2);
    assert_int_equal(r.body_len, 2);
    assert_memory_equal(r.body, "hi", 2);
    ev e = wait_ev(f, EV_HTTP);
    assert_string_equal(e.data, "GET /hello"); /* the path without the query */
    assert_int_equal(e.rc, 0);

    r = http(f, "GET /twice HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(r.status, 201);
    assert_int_equal(r.body_len, 3);
    assert_memory_equal(r.body, "one", 3);
    e = wait_ev(f, EV_HTTP);
    assert_int_equal(e.rc, 0);
    assert_int_equal(e.n, DX_ESTATE);

    r = http(f, "GET /badstatus HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(r.status, 500);
    assert_int_equal(wait_ev(f, EV_HTTP).rc, DX_EINVAL);

    /* kept by on_http, answered from a posted function */
    cl *c = cl_tcp(f, 0);
    const char *claim = "DELETE /claim HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    cl_send(c, claim, strlen(claim));
    assert_string_equal(wait_ev(f, EV_HTTP).data, "DELETE /claim");
    int late = 1;
    on_loop(f, answer_held, &late);
    assert_int_equal(late, 0);
    cl_read_to_eof(c);
    assert_true(c->len > 12 && memcmp(c->buf, "HTTP/1.1 202 ", 13) == 0);
    assert_true(c->len >= 5 && memcmp(c->buf + c->len - 5, "later", 5) == 0);
    cl_close(c);

    /* not handled, no static root: 404 for GET, 405 for others */
    r = http(f, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(r.status, 404);
    r = http(f, "PUT /other HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_int_equal(r.status, 405);
    assert_non_null(strstr(r.head, "Allow: GET, HEAD\r\n"));
    assert_int_equal(count_ev(f, EV_OPEN), 0);
    wait_no_conns(f);
}

static void write_file(const char *dir, const char *name, const char *content)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *fp = fopen(p, "w");
    assert_non_null(fp);
    fputs(content, fp);
    fclose(fp);
}

static void test_static_files(void **state)
{
    sfx *f = *state;
    make_dir(f);
    char root[128], sub[160], link[160];
    snprintf(root, sizeof root, "%s/www", f->dir);
    assert_int_equal(mkdir(root, 0755), 0);
    write_file(root, "index.html", "<h1>hi</h1>\n");
    write_file(root, "a.txt", "text");
    snprintf(sub, sizeof sub, "%s/sub", root);
    assert_int_equal(mkdir(sub, 0755), 0);
    write_file(sub, "index.html", "sub");
    write_file(f->dir, "secret.txt", "outside the root");
    snprintf(link, sizeof link, "%s/escape.txt", root);
    char target[160];
    snprintf(target, sizeof target, "%s/secret.txt", f->dir);
    assert_int_equal(symlink(target, link), 0);

    dx_server_options o = base_opts(f);
    o.cb.on_http = NULL;
    o.static_dir = root;
    start(f, &o);

    http_res r = http(f, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.head, "Content-Type: text/html; charset=utf-8\r\n"));
    assert_int_equal(r.content_length, 12);
    assert_int_equal(r.body_len, 12);
    assert_memory_equal(r.body, "<h1>hi</h1>\n", 12);

    r = http(f, "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(r.status, 200);
    assert_int_equal(r.content_length, 12);
    assert_int_equal(r.body_len, 0);

    r = http(f, "GET /a.txt?v=2 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.head, "Content-Type: text/plain; charset=utf-8\r\n"));
    assert_int_equal(r.body_len, 4);
    assert_memory_equal(r.body, "text", 4);

    r = http(f, "GET /%61.txt HTTP/1.1\r\nHost: x\r\n\r\n"); /* percent-decoded */
    assert_int_equal(r.status, 200);
    r = http(f, "GET /sub HTTP/1.1\r\nHost: x\r\n\r\n"); /* a directory's index.html */
    assert_int_equal(r.status, 200);
    assert_memory_equal(r.body, "sub", 3);

    r = http(f, "GET /../secret.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(r.status, 400);
    r = http(f, "GET /sub/../../secret.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(r.status, 400);
    r = http(f, "GET /%2e%2e/secret.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(r.status, 400);
    r = http(f, "GET /a%00.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(r.status, 400);
    r = http(f, "HEAD /../secret.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(r.status, 400);
    assert_int_equal(r.body_len, 0);

    r = http(f, "GET /escape.txt HTTP/1.1\r\nHost: x\r\n\r\n"); /* a symlink out of the root */
    assert_int_equal(r.status, 404);
    r = http(f, "GET /missing.html HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(r.status, 404);
    r = http(f, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_int_equal(r.status, 405);
    assert_non_null(strstr(r.head, "Allow: GET, HEAD\r\n"));
    wait_no_conns(f);
}

/* ---- tests: transports and timing ------------------------------------------------------ */

static void test_unix_socket(void **state)
{
    sfx *f = *state;
    make_dir(f);
    char path[128];
    snprintf(path, sizeof path, "%s/ws.sock", f->dir);
    dx_server_options o = base_opts(f);
    o.host = NULL;
    o.unix_path = path;
    start(f, &o);
    assert_int_equal(dx_server_port(f->srv), 0);
    cl *c = cl_unix(f, path);
    dx_ws_client_opts co = {.host = "localhost", .path = "/u"};
    assert_int_equal(cl_handshake_opts(f, c, &co, NULL, 0, 0).status, 101);
    wait_ev(f, EV_OPEN);
    assert_string_equal(f->remote, "unix");
    assert_string_equal(f->open_remote, "unix");
    cl_frame(c, DX_OP_TEXT, true, "over unix", 9);
    expect_frame(c, DX_OP_TEXT, "over unix", 9);
    close_normally(f, c, 1000);
    /* plain HTTP on the same socket */
    c = cl_unix(f, path);
    const char *req = "GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n";
    cl_send(c, req, strlen(req));
    cl_read_to_eof(c);
    assert_true(c->len > 12);
    assert_memory_equal(c->buf, "HTTP/1.1 404", 12);
    cl_close(c);
    /* the socket file goes away with the server */
    dx_loop_stop(f->loop);
    pthread_join(f->th, NULL);
    f->running = 0;
    dx_server_free(f->srv);
    f->srv = NULL;
    struct stat st;
    assert_int_equal(stat(path, &st), -1);
}

static void test_pipelined_and_bytewise(void **state)
{
    sfx *f = *state;
    dx_server_options o = base_opts(f);
    start(f, &o);
    /* the first frames right behind the request head, in one write */
    cl *c = cl_tcp(f, 0);
    uint8_t extra[64];
    size_t el = frame_bytes(extra, DX_OP_TEXT, true, "first", 5, true);
    el += frame_bytes(extra + el, DX_OP_BINARY, true, "2nd", 3, true);
    dx_ws_client_opts co = {.host = "127.0.0.1", .port = f->port, .path = "/p"};
    assert_int_equal(cl_handshake_opts(f, c, &co, extra, el, 0).status, 101);
    expect_frame(c, DX_OP_TEXT, "first", 5);
    expect_frame(c, DX_OP_BINARY, "2nd", 3);
    close_normally(f, c, 1000);
    /* the same, one byte per write */
    c = cl_tcp(f, 0);
    assert_int_equal(cl_handshake_opts(f, c, &co, extra, el, 1).status, 101);
    expect_frame(c, DX_OP_TEXT, "first", 5);
    expect_frame(c, DX_OP_BINARY, "2nd", 3);
    uint8_t fr[32];
    size_t n = frame_bytes(fr, DX_OP_TEXT, true, "slowly", 6, true);
    for (size_t i = 0; i < n; i++)
        cl_send(c, fr + i, 1);
    expect_frame(c, DX_OP_TEXT, "slowly", 6);
    close_normally(f, c, 1000);
}

static void test_handshake_and_close_timeouts(void **state)
{
    sfx *f = *state;
    dx_server_options o = base_opts(f);
    o.handshake_timeout_ms = 500;
    o.close_timeout_ms = 500;
    start(f, &o);
    /* no request at all: dropped after the handshake timeout */
    cl *raw = cl_tcp(f, 0);
    const char *part = "GET / HTTP/1.1\r\nHost:";
    cl_send(raw, part, strlen(part));
    cl_read_to_eof(raw);
    cl_close(raw);
    wait_no_conns(f);
    assert_int_equal(stats(f).handshakes_failed, 1);
    /* the server closes, we never answer: on_close(1006) after the timeout */
    cl *c = cl_tcp(f, 0);
    assert_int_equal(cl_handshake(f, c, "/").status, 101);
    wait_ev(f, EV_OPEN);
    cl_frame(c, DX_OP_TEXT, true, "cmd:close", 9);
    expect_close(c, 4001, "bye");
    assert_int_equal(wait_ev(f, EV_CLOSE).code, DX_CLOSE_ABNORMAL);
    cl_read_to_eof(c);
    cl_close(c);
    wait_no_conns(f);
}

static void test_heartbeat(void **state)
{
    sfx *f = *state;
    dx_server_options o = base_opts(f);
    o.ping_interval_ms = 500;
    o.pong_timeout_ms = 500;
    start(f, &o);
    cl *c = cl_tcp(f, 0);
    assert_int_equal(cl_handshake(f, c, "/").status, 101);
    wait_ev(f, EV_OPEN);
    /* answered pings keep the connection */
    for (int i = 0; i < 2; i++) {
        frm p = cl_read_frame(c);
        assert_int_equal(p.opcode, DX_OP_PING);
        cl_frame(c, DX_OP_PONG, true, p.data, p.len);
        free(p.data);
    }
    assert_int_equal(count_ev(f, EV_CLOSE), 0);
    /* an unanswered one drops it: 1006 */
    frm p = cl_read_frame(c);
    assert_int_equal(p.opcode, DX_OP_PING);
    free(p.data);
    assert_int_equal(wait_ev(f, EV_CLOSE).code, DX_CLOSE_ABNORMAL);
    cl_read_to_eof(c);
    cl_close(c);
}

static void test_idle_timeout(void **state)
{
    sfx *f = *state;
    dx_server_options o = base_opts(f);
    o.idle_timeout_ms = 500;
    o.ping_interval_ms = (unsigned)-1; /* no heartbeat: only the idle timer */
    start(f, &o);
    cl *c = cl_tcp(f, 0);
    assert_int_equal(cl_handshake(f, c, "/").status, 101);
    wait_ev(f, EV_OPEN);
    expect_close(c, 1001, "idle timeout");
    cl_close_frame(c, 1001, "");
    expect_eof(c);
    cl_close(c);
    assert_int_equal(wait_ev(f, EV_CLOSE).code, 1001);
}

static char remote_a[64], remote_b[64];

static void do_remotes(sfx *f, void *arg)
{
    (void)arg;
    assert_true(dx_conn_remote(f->conns[0], remote_a, sizeof remote_a) < sizeof remote_a);
    assert_true(dx_conn_remote(f->conns[1], remote_b, sizeof remote_b) < sizeof remote_b);
    /* a buffer too small is cut, NUL-terminated, and the full length returned */
    char tiny[4];
    assert_int_equal(dx_conn_remote(f->conns[0], tiny, sizeof tiny), strlen(remote_a));
    assert_int_equal(strlen(tiny), 3);
}

/* server.h: dx_conn_remote formats each connection's own address. */
static void test_conn_remote_per_connection(void **state)
{
    sfx *f = *state;
    dx_server_options o = base_opts(f);
    start(f, &o);
    cl *c1 = cl_tcp(f, 0), *c2 = cl_tcp(f, 0);
    assert_int_equal(cl_handshake(f, c1, "/").status, 101);
    wait_ev(f, EV_OPEN);
    assert_int_equal(cl_handshake(f, c2, "/").status, 101);
    wait_ev(f, EV_OPEN);
    on_loop(f, do_remotes, NULL);
    assert_string_not_equal(remote_a, remote_b);
    close_normally(f, c1, 1000);
    close_normally(f, c2, 1000);
}

static void test_new_rejects_bad_options(void **state)
{
    (void)state;
    dx_loop_options lo = {.log = &quiet_log};
    dx_loop *loop = dx_loop_new(&lo, NULL);
    assert_non_null(loop);
    int err = 0;
    dx_server_options o = {.send_high_water = 100, .send_max = 10};
    assert_null(dx_server_new(loop, &o, &err));
    assert_int_equal(err, DX_EINVAL);
    dx_server_options o2 = {.instance = 2, .instances = 2};
    assert_null(dx_server_new(loop, &o2, &err));
    assert_int_equal(err, DX_EINVAL);
    dx_server_options o3 = {.static_dir = "/nonexistent/dx/dir"};
    assert_null(dx_server_new(loop, &o3, &err));
    assert_int_equal(err, DX_EINVAL);
    /* binding an address this host does not have */
    dx_server_options o4 = {.host = "192.0.2.1", .port = DX_PORT_EPHEMERAL};
    dx_server *srv = dx_server_new(loop, &o4, &err);
    assert_non_null(srv);
    assert_int_equal(dx_server_start(srv), DX_EADDR);
    dx_server_free(srv);
    dx_loop_free(loop);
}

/* Every allocation of dx_server_new fails once: NULL, DX_ENOMEM, no leak. */
static void test_new_every_allocation_fails_once(void **state)
{
    (void)state;
    char dir[] = "/tmp/dx_srvnew_XXXXXX";
    assert_non_null(mkdtemp(dir));
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx_loop_options lo = {.seams = &ts.seams, .log = &quiet_log};
    dx_loop *loop = dx_loop_new(&lo, NULL);
    assert_non_null(loop);
    dx_server_options o = {.host = "127.0.0.1", .unix_path = NULL, .static_dir = dir};
    long base = ts.calls, live = ts.live;
    dx_server *srv = dx_server_new(loop, &o, NULL);
    assert_non_null(srv);
    long n = ts.calls - base;
    dx_server_free(srv);
    assert_int_equal(ts.live, live);
    for (long i = 1; i <= n; i++) {
        ts.fail_at = ts.calls + i;
        int err = 0;
        assert_null(dx_server_new(loop, &o, &err));
        assert_int_equal(err, DX_ENOMEM);
        assert_int_equal(ts.live, live);
    }
    ts.fail_at = 0;
    dx_loop_free(loop);
    assert_int_equal(ts.live, 0);
    rmdir(dir);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, sfx_setup, sfx_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_upgrade_view_and_protocol),
        T(test_refuse_403),
        T(test_bad_handshakes),
        T(test_echo_text_binary_fragmented),
        T(test_ping_pong_and_server_ping),
        T(test_server_close_4001),
        T(test_peer_close_codes),
        T(test_protocol_error_1002),
        T(test_message_limits),
        T(test_shutdown_1001),
        T(test_drain_after_high_water),
        T(test_slow_consumer_1008),
        T(test_on_http_reply),
        T(test_static_files),
        T(test_unix_socket),
        T(test_pipelined_and_bytewise),
        T(test_handshake_and_close_timeouts),
        T(test_heartbeat),
        T(test_idle_timeout),
        T(test_conn_remote_per_connection),
        cmocka_unit_test(test_new_rejects_bad_options),
        cmocka_unit_test(test_new_every_allocation_fails_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
