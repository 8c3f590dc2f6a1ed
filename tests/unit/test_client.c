/*
 * tests/unit/test_client.c: src/ws/client.c — the client endpoint against a
 * real dx_server, both on one dx_loop running in its own thread, over
 * loopback only.
 *
 * Covers: echo (text, binary, sizes around the length encodings, a few
 * MiB), subprotocol offer/selection, Origin and extra headers as the server
 * sees them, ping/pong, close codes and reasons both ways, the frame trace
 * (client frames masked), errors reported through on_error (refused, 404,
 * DNS failure, connect and handshake timeouts, TLS verification, proxy 407),
 * TLS success with a CA file and with insecure, an HTTP CONNECT proxy,
 * reconnect with backoff bounds, the offline queue (order, exactly once,
 * bounds), max_attempts, bind_addr, and option validation.
 *
 * Callbacks run on the loop's thread: they only record events (under a
 * mutex) and never assert. The test thread waits for events with a generous
 * deadline; work that must run on the loop's thread (creating, sending,
 * freeing) is posted with dx_loop_post and waited for. No assertion depends
 * on machine speed. TLS certificates come from the `openssl` command, made
 * per run in a temporary directory (a test CA; a certificate for "a.test"
 * and one for IP 127.0.0.1 + DNS localhost, both signed by it). The HTTP
 * CONNECT proxy is a small blocking relay on its own thread.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "duplex/client.h"
#include "duplex/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WAIT_MS 20000 /* generous: only a broken client takes this long */
#define MAXEV 4096

static const dx_log quiet_log = {.sink = NULL, .ud = NULL, .level = DX_LOG_ERROR};

static char g_dir[64];
static char g_ca[128], g_a_crt[128], g_a_key[128], g_ip_crt[128], g_ip_key[128];

/* ---- events ------------------------------------------------------------------- */

enum {
    S_UPGRADE = 1, S_OPEN, S_MSG, S_CLOSE,
    C_OPEN, C_MSG, C_CLOSE, C_ERROR, C_RECONNECT, C_DONE, C_PONG,
};

typedef struct ev {
    int type;
    int taken;
    int opcode;
    int rc;      /* C_ERROR: err */
    unsigned code; /* close code; C_RECONNECT: delay */
    unsigned n;    /* C_RECONNECT: attempt */
    char *data;    /* NUL-terminated copy (message, reason, what) */
    size_t len;
} ev;

typedef struct fx {
    dx_loop *loop;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ev *evs;
    size_t nev;

    /* server, set before L_server_start */
    dx_server *srv;
    const char *s_host;
    unsigned s_port_want; /* 0: ephemeral */
    const dx_tls_cert *s_tls;
    int upgrade_status;
    const char *select;
    unsigned port;        /* bound */
    int s_rc;
    /* what on_upgrade saw */
    char up_path[128], up_origin[128], up_xtest[64], up_xother[64], up_protos[128], up_remote[64];
    int up_has_origin;

    /* client */
    dx_client *cl;
    dx_client_options copt;
    int c_new_err, c_connect_rc;
    char c_protocol[32];
    int c_open_conn_ok;
    int free_in_done;   /* on_done frees the client */
    int free_in_sclose; /* the server's on_close frees the server */

    /* frame trace counters: [0] client, [1] server; [dir '>'=0 '<'=1][masked] */
    unsigned frames[2][2][2];
    unsigned c_pongs_in;
    char c_first_text_head[17];

    /* posted calls */
    void (*call_fn)(struct fx *f, void *arg);
    void *call_arg;
    int call_done;
} fx;

static void add_ev(fx *f, const ev *e, const void *data, size_t len)
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

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static const char *ev_name(int t)
{
    static const char *names[] = {"?", "S_UPGRADE", "S_OPEN", "S_MSG", "S_CLOSE", "C_OPEN",
                                  "C_MSG", "C_CLOSE", "C_ERROR", "C_RECONNECT", "C_DONE", "C_PONG"};
    return t > 0 && t <= C_PONG ? names[t] : "?";
}

/* The oldest event of `type` not yet taken; waits for it (fails after WAIT_MS). */
static ev wait_ev(fx *f, int type)
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
            fail_msg("timed out waiting for %s", ev_name(type));
        }
    }
}

/* Marks every event of `type` so far as taken. */
static void drain_ev(fx *f, int type)
{
    pthread_mutex_lock(&f->mu);
    for (size_t i = 0; i < f->nev; i++)
        if (f->evs[i].type == type)
            f->evs[i].taken = 1;
    pthread_mutex_unlock(&f->mu);
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

/* Waits until a frame counter reaches `want`. */
static void wait_count(fx *f, const unsigned *counter, unsigned want, const char *what)
{
    struct timespec dl;
    deadline_in(&dl, WAIT_MS);
    pthread_mutex_lock(&f->mu);
    while (*counter < want) {
        if (pthread_cond_timedwait(&f->cv, &f->mu, &dl) == ETIMEDOUT) {
            pthread_mutex_unlock(&f->mu);
            fail_msg("timed out waiting for %s (%u < %u)", what, *counter, want);
        }
    }
    pthread_mutex_unlock(&f->mu);
}

/* Waits `ms` while events keep arriving (to check that nothing more comes). */
static void settle(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void copy_str(char *dst, size_t cap, const char *s, size_t len)
{
    if (len >= cap)
        len = cap - 1;
    if (len)
        memcpy(dst, s, len);
    dst[len] = 0;
}

/* ---- server callbacks (loop thread) -------------------------------------------- */

static int s_upgrade(dx_server *srv, dx_request *req, void *ud)
{
    (void)srv;
    fx *f = ud;
    copy_str(f->up_path, sizeof f->up_path, req->path, req->path_len + (req->query ? req->query_len + 1 : 0));
    f->up_has_origin = req->origin != NULL;
    copy_str(f->up_origin, sizeof f->up_origin, req->origin ? req->origin : "", req->origin_len);
    copy_str(f->up_remote, sizeof f->up_remote, req->remote, strlen(req->remote));
    size_t hl = 0;
    const char *h = dx_request_header(req, "X-Test", &hl);
    copy_str(f->up_xtest, sizeof f->up_xtest, h ? h : "(none)", h ? hl : 6);
    h = dx_request_header(req, "X-Other", &hl);
    copy_str(f->up_xother, sizeof f->up_xother, h ? h : "(none)", h ? hl : 6);
    f->up_protos[0] = 0;
    size_t cursor = 0, nl;
    const char *name;
    while (dx_request_protocol(req, &cursor, &name, &nl)) {
        size_t o = strlen(f->up_protos);
        snprintf(f->up_protos + o, sizeof f->up_protos - o, "%s%.*s", o ? "," : "", (int)nl, name);
    }
    if (f->select)
        (void)dx_request_select_protocol(req, f->select, strlen(f->select));
    ev e = {.type = S_UPGRADE};
    add_ev(f, &e, NULL, 0);
    return f->upgrade_status;
}

static void s_open(dx_conn *c, void *ud)
{
    (void)c;
    ev e = {.type = S_OPEN};
    add_ev(ud, &e, NULL, 0);
}

static void s_message(dx_conn *c, int opcode, const uint8_t *data, size_t len, void *ud)
{
    ev e = {.type = S_MSG, .opcode = opcode};
    if (opcode == DX_OP_TEXT && len == 8 && memcmp(data, "close-me", 8) == 0)
        e.rc = dx_conn_close(c, 4002, "srv", 3);
    else
        e.rc = dx_conn_send(c, opcode, data, len);
    add_ev(ud, &e, data, len);
}

static void s_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    fx *f = ud;
    ev e = {.type = S_CLOSE, .code = code};
    add_ev(f, &e, reason, len);
    if (f->free_in_sclose && dx_conn_server(c) == f->srv) {
        dx_server_free(f->srv);
        f->srv = NULL;
    }
}

static void count_frame(fx *f, int who, int dir, unsigned opcode, int masked, const uint8_t *head, size_t hl)
{
    pthread_mutex_lock(&f->mu);
    f->frames[who][dir == '<'][masked != 0]++;
    if (who == 0 && dir == '<' && opcode == DX_OP_PONG)
        f->c_pongs_in++;
    if (who == 0 && dir == '>' && opcode == DX_OP_TEXT && !f->c_first_text_head[0])
        copy_str(f->c_first_text_head, sizeof f->c_first_text_head, (const char *)head, hl);
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static void s_frame(dx_conn *c, int dir, unsigned opcode, int fin, unsigned rsv, uint64_t len, int masked,
                    const uint8_t *head, size_t head_len, void *ud)
{
    (void)c, (void)fin, (void)rsv, (void)len;
    count_frame(ud, 1, dir, opcode, masked, head, head_len);
}

/* ---- client callbacks (loop thread) -------------------------------------------- */

static void c_open(dx_conn *c, void *ud)
{
    fx *f = ud;
    const char *p = dx_conn_protocol(c);
    copy_str(f->c_protocol, sizeof f->c_protocol, p ? p : "(none)", strlen(p ? p : "(none)"));
    f->c_open_conn_ok = dx_conn_client(c) == f->cl && dx_client_conn(f->cl) == c && dx_conn_server(c) == NULL;
    ev e = {.type = C_OPEN};
    add_ev(f, &e, NULL, 0);
}

static void c_message(dx_conn *c, int opcode, const uint8_t *data, size_t len, void *ud)
{
    (void)c;
    ev e = {.type = C_MSG, .opcode = opcode};
    add_ev(ud, &e, data, len);
}

static void c_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    (void)c;
    ev e = {.type = C_CLOSE, .code = code};
    add_ev(ud, &e, reason, len);
}

static void c_error(dx_client *cl, int err, const char *what, void *ud)
{
    (void)cl;
    if (getenv("DX_TEST_VERBOSE"))
        fprintf(stderr, "# on_error(%s): %s\n", dx_strerror(err), what);
    ev e = {.type = C_ERROR, .rc = err};
    add_ev(ud, &e, what, strlen(what));
}

static void c_reconnect(dx_client *cl, unsigned attempt, unsigned delay_ms, void *ud)
{
    (void)cl;
    ev e = {.type = C_RECONNECT, .n = attempt, .code = delay_ms};
    add_ev(ud, &e, NULL, 0);
}

static void c_done(dx_client *cl, void *ud)
{
    fx *f = ud;
    if (f->free_in_done && cl == f->cl) {
        dx_client_free(cl);
        f->cl = NULL;
    }
    ev e = {.type = C_DONE};
    add_ev(f, &e, NULL, 0);
}

static void c_pong(dx_conn *c, const uint8_t *data, size_t len, void *ud)
{
    (void)c;
    ev e = {.type = C_PONG};
    add_ev(ud, &e, data, len);
}

static void c_frame(dx_conn *c, int dir, unsigned opcode, int fin, unsigned rsv, uint64_t len, int masked,
                    const uint8_t *head, size_t head_len, void *ud)
{
    (void)c, (void)fin, (void)rsv, (void)len;
    count_frame(ud, 0, dir, opcode, masked, head, head_len);
}

/* ---- the fixture ------------------------------------------------------------------ */

static void *loop_thread(void *p)
{
    fx *f = p;
    (void)dx_loop_run(f->loop);
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

/* Runs fn(f, arg) on the loop's thread and waits for it. */
static void run(fx *f, void (*fn)(fx *, void *), void *arg)
{
    pthread_mutex_lock(&f->mu);
    f->call_fn = fn;
    f->call_arg = arg;
    f->call_done = 0;
    pthread_mutex_unlock(&f->mu);
    assert_int_equal(dx_loop_post(f->loop, call_tramp, f), 0);
    struct timespec dl;
    deadline_in(&dl, WAIT_MS);
    pthread_mutex_lock(&f->mu);
    while (!f->call_done) {
        if (pthread_cond_timedwait(&f->cv, &f->mu, &dl) == ETIMEDOUT) {
            pthread_mutex_unlock(&f->mu);
            fail_msg("timed out waiting for a posted call");
        }
    }
    pthread_mutex_unlock(&f->mu);
}

static void default_client(fx *f, const char *url)
{
    memset(&f->copt, 0, sizeof f->copt);
    f->copt.url = url;
    f->copt.cb = (dx_client_callbacks){.on_open = c_open,
                                       .on_message = c_message,
                                       .on_close = c_close,
                                       .on_error = c_error,
                                       .on_reconnect = c_reconnect,
                                       .on_done = c_done,
                                       .on_frame = c_frame,
                                       .on_pong = c_pong};
    f->copt.ud = f;
}

static int fx_setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    f->evs = calloc(MAXEV, sizeof *f->evs);
    if (!f->evs)
        return -1;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    dx_loop_options lo = {.log = &quiet_log};
    f->loop = dx_loop_new(&lo, NULL);
    if (!f->loop)
        return -1;
    f->s_host = "127.0.0.1";
    if (pthread_create(&f->th, NULL, loop_thread, f) != 0)
        return -1;
    *state = f;
    return 0;
}

static void L_free_all(fx *f, void *arg)
{
    (void)arg;
    dx_client_free(f->cl);
    f->cl = NULL;
    dx_server_free(f->srv);
    f->srv = NULL;
}

/* Stops the loop first, then frees: dx_loop_run returns only after its
 * deferred frees ran, so no dead connection still points at the endpoints. */
static int fx_teardown(void **state)
{
    fx *f = *state;
    dx_loop_stop(f->loop);
    pthread_join(f->th, NULL);
    L_free_all(f, NULL);
    dx_loop_free(f->loop);
    for (size_t i = 0; i < f->nev; i++)
        free(f->evs[i].data);
    free(f->evs);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f);
    return 0;
}

/* ---- loop-side actions --------------------------------------------------------------- */

static void L_server_start(fx *f, void *arg)
{
    (void)arg;
    dx_server_options o = {
        .host = f->s_host,
        .port = f->s_port_want ? f->s_port_want : DX_PORT_EPHEMERAL,
        .tls = f->s_tls,
        .n_tls = f->s_tls ? 1 : 0,
        .max_message = 8u << 20,
        .send_max = 16u << 20,
        .cb = {.on_upgrade = s_upgrade, .on_open = s_open, .on_message = s_message, .on_close = s_close,
               .on_frame = s_frame},
        .ud = f,
    };
    int err = 0;
    f->srv = dx_server_new(f->loop, &o, &err);
    f->s_rc = f->srv ? dx_server_start(f->srv) : err;
    f->port = f->s_rc == 0 ? dx_server_port(f->srv) : 0;
}

static void L_accept_all(fx *f, void *arg)
{
    (void)arg;
    f->upgrade_status = 0;
}

static void L_server_free(fx *f, void *arg)
{
    (void)arg;
    dx_server_free(f->srv);
    f->srv = NULL;
}

static void L_client_start(fx *f, void *arg)
{
    (void)arg;
    f->cl = dx_client_new(f->loop, &f->copt, &f->c_new_err);
    f->c_connect_rc = f->cl ? dx_client_connect(f->cl) : f->c_new_err;
}

static void L_client_connect(fx *f, void *arg)
{
    (void)arg;
    f->c_connect_rc = dx_client_connect(f->cl);
}

typedef struct send_arg {
    int opcode;
    const void *data;
    size_t len;
    int rc;
} send_arg;

static void L_send(fx *f, void *arg)
{
    send_arg *a = arg;
    a->rc = dx_client_send(f->cl, a->opcode, a->data, a->len);
}

typedef struct close_arg {
    unsigned code;
    const char *reason;
    int rc;
} close_arg;

static void L_close(fx *f, void *arg)
{
    close_arg *a = arg;
    a->rc = dx_client_close(f->cl, a->code, a->reason, a->reason ? strlen(a->reason) : 0);
}

static void L_stats(fx *f, void *arg)
{
    dx_client_stats_get(f->cl, arg);
}

static int csend(fx *f, int opcode, const void *data, size_t len)
{
    send_arg a = {opcode, data, len, 0};
    run(f, L_send, &a);
    return a.rc;
}

static int cclose(fx *f, unsigned code, const char *reason)
{
    close_arg a = {code, reason, 0};
    run(f, L_close, &a);
    return a.rc;
}

static void start_server(fx *f)
{
    run(f, L_server_start, NULL);
    assert_int_equal(f->s_rc, 0);
    assert_true(f->port > 0);
}

static void start_client(fx *f)
{
    run(f, L_client_start, NULL);
    /* A refused connect on loopback can fail at once, inside
     * dx_client_connect: with free_in_done the client is then already gone. */
    if (!f->cl && !f->free_in_done)
        fail_msg("dx_client_new failed: %d", f->c_new_err);
    assert_int_equal(f->c_connect_rc, 0);
}

/* Expects exactly one error then on_done; returns the error's text (owned by the event list). */
static ev expect_error(fx *f, int err, const char *needle)
{
    ev e = wait_ev(f, C_ERROR);
    if (e.rc != err || !e.data || !strstr(e.data, needle))
        fail_msg("on_error(%d \"%s\"), expected %d with \"%s\"", e.rc, e.data ? e.data : "", err, needle);
    wait_ev(f, C_DONE);
    assert_int_equal(count_ev(f, C_OPEN), 0);
    assert_int_equal(count_ev(f, C_CLOSE), 0); /* no on_close without on_open */
    return e;
}

static uint8_t *pattern(size_t n, unsigned seed)
{
    uint8_t *p = malloc(n ? n : 1);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 31u + seed);
    return p;
}

/* A port on 127.0.0.1 that nothing listens on (bound then closed). */
static unsigned dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t sl = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &sl), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static int listener(int backlog, unsigned *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, backlog), 0);
    socklen_t sl = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &sl), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

/* ---- echo, protocols, headers, trace, ping, close ----------------------------------------- */

static void test_echo_and_handshake_view(void **state)
{
    fx *f = *state;
    f->select = "chat.v2";
    start_server(f);
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/echo?a=1#frag", f->port);
    default_client(f, url);
    static const char *const protos[] = {"chat.v1", "chat.v2"};
    static const char *const hdrs[] = {"X-Test: hello there", "X-Other:\tv"};
    f->copt.protocols = protos;
    f->copt.n_protocols = 2;
    f->copt.headers = hdrs;
    f->copt.n_headers = 2;
    f->copt.origin = "http://origin.test";
    f->copt.max_message = 8u << 20;
    f->copt.send_max = 16u << 20;
    start_client(f);
    wait_ev(f, S_UPGRADE);
    wait_ev(f, S_OPEN);
    wait_ev(f, C_OPEN);
    assert_true(f->c_open_conn_ok);
    assert_string_equal(f->c_protocol, "chat.v2");
    assert_string_equal(f->up_path, "/echo?a=1");
    assert_true(f->up_has_origin);
    assert_string_equal(f->up_origin, "http://origin.test");
    assert_string_equal(f->up_xtest, "hello there");
    assert_string_equal(f->up_xother, "v");
    assert_string_equal(f->up_protos, "chat.v1,chat.v2");
    assert_true(strncmp(f->up_remote, "127.0.0.1:", 10) == 0);

    /* a second connect while open is refused */
    run(f, L_client_connect, NULL);
    assert_int_equal(f->c_connect_rc, DX_ESTATE);

    /* text */
    assert_int_equal(csend(f, DX_OP_TEXT, "hello", 5), 0);
    ev m = wait_ev(f, C_MSG);
    assert_int_equal(m.opcode, DX_OP_TEXT);
    assert_int_equal(m.len, 5);
    assert_memory_equal(m.data, "hello", 5);
    assert_string_equal(f->c_first_text_head, "hello");
    /* invalid UTF-8 text is refused before it is sent */
    assert_int_equal(csend(f, DX_OP_TEXT, "\xc3\x28", 2), DX_EUTF8);

    /* binary of sizes around the length encodings, and a few MiB */
    static const size_t sizes[] = {0, 1, 125, 126, 127, 65535, 65536, 65537, 300000, 3u << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        uint8_t *p = pattern(sizes[i], (unsigned)i);
        assert_int_equal(csend(f, DX_OP_BINARY, p, sizes[i]), 0);
        m = wait_ev(f, C_MSG);
        if (m.opcode != DX_OP_BINARY || m.len != sizes[i] || (sizes[i] && memcmp(m.data, p, sizes[i]) != 0))
            fail_msg("echo of %zu bytes: got opcode %d, %zu bytes", sizes[i], m.opcode, m.len);
        free(p);
    }
    /* a large text message (multi-byte UTF-8) */
    size_t tl = 200000;
    char *t = malloc(tl);
    assert_non_null(t);
    for (size_t i = 0; i < tl; i += 2) {
        t[i] = (char)0xc3;
        t[i + 1] = (char)0xa9; /* é */
    }
    assert_int_equal(csend(f, DX_OP_TEXT, t, tl), 0);
    m = wait_ev(f, C_MSG);
    assert_int_equal(m.opcode, DX_OP_TEXT);
    assert_int_equal(m.len, tl);
    assert_memory_equal(m.data, t, tl);
    free(t);

    /* ping: the server answers with a pong the trace shows */
    assert_int_equal(csend(f, DX_OP_PING, "p1", 2), 0);
    wait_count(f, &f->c_pongs_in, 1, "a pong");
    ev pong = wait_ev(f, C_PONG);
    assert_int_equal(pong.len, 2);
    assert_string_equal(pong.data, "p1");
    /* a ping payload over 125 bytes is refused */
    uint8_t big[126] = {0};
    assert_int_equal(csend(f, DX_OP_PING, big, sizeof big), DX_EINVAL);

    /* frame trace: client frames are masked, server frames are not, both ways */
    pthread_mutex_lock(&f->mu);
    unsigned c_out_m = f->frames[0][0][1], c_out_u = f->frames[0][0][0];
    unsigned c_in_m = f->frames[0][1][1], c_in_u = f->frames[0][1][0];
    unsigned s_in_m = f->frames[1][1][1], s_in_u = f->frames[1][1][0];
    unsigned s_out_m = f->frames[1][0][1], s_out_u = f->frames[1][0][0];
    pthread_mutex_unlock(&f->mu);
    assert_true(c_out_m >= 13);
    assert_int_equal(c_out_u, 0);
    assert_int_equal(c_in_m, 0);
    assert_true(c_in_u >= 12);
    assert_true(s_in_m >= 13);
    assert_int_equal(s_in_u, 0);
    assert_int_equal(s_out_m, 0);
    assert_true(s_out_u >= 12);

    dx_client_stats st;
    run(f, L_stats, &st);
    assert_int_equal(st.opens, 1);
    assert_int_equal(st.attempts, 1);
    assert_int_equal(st.messages_in, 12);
    assert_true(st.messages_out >= 12);
    assert_true(st.bytes_in >= (3u << 20));
    assert_int_equal(st.queued, 0);

    /* close 4001 with a reason: both sides see it, then on_done */
    assert_int_equal(cclose(f, 4001, "bye"), 0);
    ev sc = wait_ev(f, S_CLOSE);
    assert_int_equal(sc.code, 4001);
    assert_string_equal(sc.data, "bye");
    ev cc = wait_ev(f, C_CLOSE);
    assert_int_equal(cc.code, 4001);
    wait_ev(f, C_DONE);
    assert_int_equal(count_ev(f, C_ERROR), 0);
    assert_int_equal(count_ev(f, C_RECONNECT), 0);
    /* closed: sends are refused (no queue), a second close too */
    assert_int_equal(csend(f, DX_OP_TEXT, "x", 1), DX_ECLOSED);
    assert_int_equal(cclose(f, 1000, NULL), DX_ECLOSED);
}

static void test_server_closes_with_reason(void **state)
{
    fx *f = *state;
    start_server(f);
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/", f->port);
    default_client(f, url);
    start_client(f);
    wait_ev(f, C_OPEN);
    assert_string_equal(f->c_protocol, "(none)");
    assert_string_equal(f->up_path, "/");
    assert_false(f->up_has_origin);
    assert_string_equal(f->up_xtest, "(none)");
    assert_int_equal(csend(f, DX_OP_TEXT, "close-me", 8), 0);
    ev cc = wait_ev(f, C_CLOSE);
    assert_int_equal(cc.code, 4002);
    assert_string_equal(cc.data, "srv");
    ev sc = wait_ev(f, S_CLOSE);
    assert_int_equal(sc.code, 4002);
    wait_ev(f, C_DONE);
    assert_int_equal(count_ev(f, C_RECONNECT), 0);
    /* the client can connect again after on_done */
    run(f, L_client_connect, NULL);
    assert_int_equal(f->c_connect_rc, 0);
    wait_ev(f, C_OPEN);
    assert_int_equal(csend(f, DX_OP_TEXT, "again", 5), 0);
    ev m = wait_ev(f, C_MSG);
    assert_string_equal(m.data, "again");
    assert_int_equal(cclose(f, 1000, NULL), 0);
    cc = wait_ev(f, C_CLOSE);
    assert_int_equal(cc.code, 1000);
    wait_ev(f, C_DONE);
}

static void test_ipv6_loopback(void **state)
{
    fx *f = *state;
    f->s_host = "::1";
    run(f, L_server_start, NULL);
    if (f->s_rc != 0) {
        /* no IPv6 on this machine's loopback: nothing to test */
        print_message("skipped: cannot listen on [::1] (%d)\n", f->s_rc);
        return;
    }
    char url[128];
    snprintf(url, sizeof url, "ws://[::1]:%u/v6", f->port);
    default_client(f, url);
    start_client(f);
    wait_ev(f, C_OPEN);
    assert_true(strncmp(f->up_remote, "[::1]:", 6) == 0);
    assert_string_equal(f->up_path, "/v6");
    assert_int_equal(csend(f, DX_OP_TEXT, "six", 3), 0);
    ev m = wait_ev(f, C_MSG);
    assert_string_equal(m.data, "six");
}

/* ---- errors -------------------------------------------------------------------------- */

static void test_connection_refused(void **state)
{
    fx *f = *state;
    char url[128];
    unsigned port = dead_port();
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/", port);
    default_client(f, url);
    start_client(f);
    ev e = expect_error(f, DX_EADDR, "refused");
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%u", port);
    if (!strstr(e.data, want))
        fail_msg("the message names no address: \"%s\"", e.data);
    /* again, after on_done */
    run(f, L_client_connect, NULL);
    assert_int_equal(f->c_connect_rc, 0);
    e = wait_ev(f, C_ERROR);
    assert_int_equal(e.rc, DX_EADDR);
    wait_ev(f, C_DONE);
    dx_client_stats st;
    run(f, L_stats, &st);
    assert_int_equal(st.attempts, 2);
    assert_int_equal(st.opens, 0);
}

static void test_refused_404(void **state)
{
    fx *f = *state;
    f->upgrade_status = 404;
    start_server(f);
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/nowhere", f->port);
    default_client(f, url);
    start_client(f);
    wait_ev(f, S_UPGRADE);
    expect_error(f, DX_EHANDSHAKE, "404");
    assert_int_equal(count_ev(f, S_OPEN), 0);
}

static void test_dns_failure(void **state)
{
    fx *f = *state;
    default_client(f, "ws://no-such-host.invalid:9/");
    f->copt.connect_timeout_ms = 15000;
    start_client(f);
    ev e = wait_ev(f, C_ERROR);
    if (e.rc != DX_EADDR || !strstr(e.data, "no-such-host.invalid"))
        fail_msg("on_error(%d \"%s\"), expected DX_EADDR naming the host", e.rc, e.data);
    wait_ev(f, C_DONE);
}

/* unix_path to a socket that is not there: the failure comes from the loop
 * (on_error, then on_done), never inside dx_client_connect. */
static void test_unix_path_missing(void **state)
{
    fx *f = *state;
    default_client(f, "ws://localhost/echo");
    f->copt.unix_path = "/nonexistent-dx-dir/s.sock";
    start_client(f);
    assert_non_null(f->cl);
    ev e = wait_ev(f, C_ERROR);
    if (e.rc != DX_EADDR || !strstr(e.data, "unix:/nonexistent-dx-dir/s.sock"))
        fail_msg("on_error(%d \"%s\"), expected DX_EADDR naming the socket", e.rc, e.data);
    wait_ev(f, C_DONE);
}

static void test_connect_timeout_full_backlog(void **state)
{
    fx *f = *state;
    /* A listener that never accepts, with the smallest backlog, filled by
     * connections of our own: the kernel drops further SYNs, so the
     * client's connect hangs until its deadline. (Should a kernel still
     * complete it, the upgrade gets no answer: a timeout all the same.) */
    unsigned port;
    int lfd = listener(0, &port);
    int fill[8];
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < 8; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        assert_true(fill[i] >= 0);
        (void)connect(fill[i], (struct sockaddr *)&a, sizeof a);
    }
    settle(100);
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/", port);
    default_client(f, url);
    f->copt.connect_timeout_ms = 1000;
    uint64_t t0 = mono_ms();
    start_client(f);
    ev e = wait_ev(f, C_ERROR);
    uint64_t el = mono_ms() - t0;
    if (e.rc != DX_ETIMEDOUT || !strstr(e.data, "TCP connect timed out"))
        fail_msg("on_error(%d \"%s\"), expected DX_ETIMEDOUT naming the connect", e.rc, e.data);
    if (el < 500)
        fail_msg("timed out after %llu ms, before the 1000 ms deadline", (unsigned long long)el);
    wait_ev(f, C_DONE);
    for (int i = 0; i < 8; i++)
        close(fill[i]);
    close(lfd);
}

static void test_handshake_timeout_silent_server(void **state)
{
    fx *f = *state;
    unsigned port;
    int lfd = listener(16, &port); /* the kernel completes the connect; nobody answers */
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/", port);
    default_client(f, url);
    f->copt.connect_timeout_ms = 800;
    start_client(f);
    ev e = wait_ev(f, C_ERROR);
    if (e.rc != DX_ETIMEDOUT || !strstr(e.data, "HTTP response to the upgrade timed out"))
        fail_msg("on_error(%d \"%s\"), expected DX_ETIMEDOUT naming the missing response", e.rc, e.data);
    wait_ev(f, C_DONE);
    close(lfd);
}

static void test_not_websocket_server(void **state)
{
    fx *f = *state;
    /* an HTTP server that answers 200 to everything: not an upgrade */
    unsigned port;
    int lfd = listener(4, &port);
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/", port);
    default_client(f, url);
    start_client(f);
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    assert_int_equal(poll(&p, 1, WAIT_MS), 1);
    int fd = accept(lfd, NULL, NULL);
    assert_true(fd >= 0);
    char buf[4096];
    size_t got = 0;
    while (got < sizeof buf - 1) {
        ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
        buf[got] = 0;
        if (strstr(buf, "\r\n\r\n"))
            break;
    }
    assert_true(strncmp(buf, "GET / HTTP/1.1\r\n", 16) == 0);
    assert_non_null(strcasestr(buf, "\r\nSec-WebSocket-Key: "));
    assert_non_null(strcasestr(buf, "\r\nHost: 127.0.0.1:"));
    const char *resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    assert_int_equal(write(fd, resp, strlen(resp)), (ssize_t)strlen(resp));
    expect_error(f, DX_EHANDSHAKE, "200");
    close(fd);
    close(lfd);
}

static void test_bad_options(void **state)
{
    fx *f = *state;
    static const char *const bad_urls[] = {"http://127.0.0.1/", "ws://", "ws://u@h/", "ws://h:0/", "ws://h /"};
    for (size_t i = 0; i < sizeof bad_urls / sizeof *bad_urls; i++) {
        default_client(f, bad_urls[i]);
        run(f, L_client_start, NULL);
        assert_null(f->cl);
        assert_int_equal(f->c_new_err, DX_EINVAL);
    }
    default_client(f, NULL);
    run(f, L_client_start, NULL);
    assert_null(f->cl);
    assert_int_equal(f->c_new_err, DX_EINVAL);

    static const char *const nocolon[] = {"X-Test hello"};
    default_client(f, "ws://127.0.0.1:9/");
    f->copt.headers = nocolon;
    f->copt.n_headers = 1;
    run(f, L_client_start, NULL);
    assert_null(f->cl);
    assert_int_equal(f->c_new_err, DX_EINVAL);

    default_client(f, "ws://127.0.0.1:9/");
    f->copt.proxy = "socks4://127.0.0.1:1080"; /* socks5:// and http:// only */
    run(f, L_client_start, NULL);
    assert_null(f->cl);
    assert_int_equal(f->c_new_err, DX_EINVAL);

    default_client(f, "ws://127.0.0.1:9/");
    f->copt.proxy = "socks5://127.0.0.1:99999";
    run(f, L_client_start, NULL);
    assert_null(f->cl);
    assert_int_equal(f->c_new_err, DX_EINVAL);

    default_client(f, "wss://127.0.0.1:9/");
    f->copt.cert_file = "/nonexistent/client.pem"; /* without key_file */
    run(f, L_client_start, NULL);
    assert_null(f->cl);
    assert_int_equal(f->c_new_err, DX_EINVAL);

    default_client(f, "ws://127.0.0.1:9/");
    f->copt.unix_path = "/tmp/x.sock";
    f->copt.proxy = "http://127.0.0.1:3128";
    run(f, L_client_start, NULL);
    assert_null(f->cl);
    assert_int_equal(f->c_new_err, DX_EINVAL);

    default_client(f, "ws://127.0.0.1:9/");
    f->copt.bind_addr = "not-an-address";
    run(f, L_client_start, NULL);
    assert_null(f->cl);
    assert_int_equal(f->c_new_err, DX_EINVAL);

    default_client(f, "wss://127.0.0.1:9/");
    f->copt.ca_file = "/nonexistent/ca.pem";
    run(f, L_client_start, NULL);
    assert_null(f->cl);
    assert_int_equal(f->c_new_err, DX_ETLS);

    /* an unreadable client certificate is DX_ETLS at creation */
    default_client(f, "wss://127.0.0.1:9/");
    f->copt.insecure = 1;
    f->copt.cert_file = "/nonexistent/client.pem";
    f->copt.key_file = "/nonexistent/client.key";
    run(f, L_client_start, NULL);
    assert_null(f->cl);
    assert_int_equal(f->c_new_err, DX_ETLS);

    /* a subprotocol that is not a token */
    static const char *const badproto[] = {"a b"};
    default_client(f, "ws://127.0.0.1:9/");
    f->copt.protocols = badproto;
    f->copt.n_protocols = 1;
    run(f, L_client_start, NULL);
    assert_null(f->cl);
    assert_int_equal(f->c_new_err, DX_EINVAL);

    /* a valid client that is never connected: close says nothing is open */
    default_client(f, "ws://127.0.0.1:9/");
    run(f, L_client_start, NULL); /* connects: we close at once */
    assert_non_null(f->cl);
    int rc = cclose(f, 1000, NULL);
    assert_true(rc == 0 || rc == DX_ECLOSED);
    wait_ev(f, C_DONE);
    assert_int_equal(cclose(f, 1000, NULL), DX_ECLOSED);
}

/* ---- TLS ---------------------------------------------------------------------------------- */

static int run_cmd(const char *cmd)
{
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "test_client: command failed (%d): %s\n", rc, cmd);
    return rc;
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/dx_client_XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    snprintf(g_ca, sizeof g_ca, "%s/ca.pem", g_dir);
    snprintf(g_a_crt, sizeof g_a_crt, "%s/a.pem", g_dir);
    snprintf(g_a_key, sizeof g_a_key, "%s/a.key", g_dir);
    snprintf(g_ip_crt, sizeof g_ip_crt, "%s/ip.pem", g_dir);
    snprintf(g_ip_key, sizeof g_ip_key, "%s/ip.key", g_dir);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && "
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
             "-subj '/CN=duplex client test CA' -addext basicConstraints=critical,CA:TRUE "
             "-addext keyUsage=critical,keyCertSign,cRLSign -keyout ca.key -out ca.pem >/dev/null 2>&1 && "
             "printf 'basicConstraints=critical,CA:FALSE\\nextendedKeyUsage=serverAuth\\n"
             "subjectAltName=DNS:a.test\\n' > a.ext && "
             "printf 'basicConstraints=critical,CA:FALSE\\nextendedKeyUsage=serverAuth\\n"
             "subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ip.ext && "
             "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=a.test "
             "-keyout a.key -out a.csr >/dev/null 2>&1 && "
             "openssl x509 -req -in a.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
             "-extfile a.ext -out a.pem >/dev/null 2>&1 && "
             "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 "
             "-keyout ip.key -out ip.csr >/dev/null 2>&1 && "
             "openssl x509 -req -in ip.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
             "-extfile ip.ext -out ip.pem >/dev/null 2>&1",
             g_dir);
    return run_cmd(cmd) == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static dx_tls_cert cert_a, cert_ip;

static void tls_server(fx *f, const dx_tls_cert *cert)
{
    f->s_tls = cert;
    start_server(f);
}

static void test_tls_ca_file_success(void **state)
{
    fx *f = *state;
    cert_ip = (dx_tls_cert){g_ip_crt, g_ip_key};
    tls_server(f, &cert_ip);
    char url[128];
    snprintf(url, sizeof url, "wss://127.0.0.1:%u/secure", f->port);
    default_client(f, url);
    f->copt.ca_file = g_ca;
    start_client(f);
    wait_ev(f, C_OPEN);
    assert_string_equal(f->up_path, "/secure");
    uint8_t *p = pattern(200000, 3);
    assert_int_equal(csend(f, DX_OP_BINARY, p, 200000), 0);
    ev m = wait_ev(f, C_MSG);
    assert_int_equal(m.len, 200000);
    assert_memory_equal(m.data, p, 200000);
    free(p);
    assert_int_equal(cclose(f, 4001, "tls bye"), 0);
    ev sc = wait_ev(f, S_CLOSE);
    assert_int_equal(sc.code, 4001);
    assert_string_equal(sc.data, "tls bye");
    assert_int_equal(wait_ev(f, C_CLOSE).code, 4001);
    wait_ev(f, C_DONE);
}

static void test_tls_localhost_name(void **state)
{
    fx *f = *state;
    cert_ip = (dx_tls_cert){g_ip_crt, g_ip_key};
    tls_server(f, &cert_ip);
    char url[128];
    snprintf(url, sizeof url, "wss://localhost:%u/", f->port); /* resolved off the loop; may try ::1 first */
    default_client(f, url);
    f->copt.ca_file = g_ca;
    start_client(f);
    wait_ev(f, C_OPEN);
    assert_int_equal(csend(f, DX_OP_TEXT, "named", 5), 0);
    assert_string_equal(wait_ev(f, C_MSG).data, "named");
}

static void test_tls_unknown_ca(void **state)
{
    fx *f = *state;
    cert_ip = (dx_tls_cert){g_ip_crt, g_ip_key};
    tls_server(f, &cert_ip);
    char url[128];
    snprintf(url, sizeof url, "wss://127.0.0.1:%u/", f->port);
    default_client(f, url); /* the system store does not know our CA */
    start_client(f);
    expect_error(f, DX_ETLS, "certificate verify failed");
    assert_int_equal(count_ev(f, S_OPEN), 0);
}

static void test_tls_wrong_host(void **state)
{
    fx *f = *state;
    cert_a = (dx_tls_cert){g_a_crt, g_a_key};
    tls_server(f, &cert_a); /* names only a.test */
    char url[128];
    snprintf(url, sizeof url, "wss://127.0.0.1:%u/", f->port);
    default_client(f, url);
    f->copt.ca_file = g_ca;
    start_client(f);
    ev e = expect_error(f, DX_ETLS, "certificate verify failed");
    if (!strcasestr(e.data, "mismatch"))
        fail_msg("the message does not say the name/address mismatched: \"%s\"", e.data);
    assert_int_equal(count_ev(f, S_OPEN), 0);
}

static void test_tls_insecure(void **state)
{
    fx *f = *state;
    cert_a = (dx_tls_cert){g_a_crt, g_a_key};
    tls_server(f, &cert_a);
    char url[128];
    snprintf(url, sizeof url, "wss://127.0.0.1:%u/", f->port);
    default_client(f, url);
    f->copt.insecure = 1; /* neither the CA nor the name are checked */
    start_client(f);
    wait_ev(f, C_OPEN);
    assert_int_equal(csend(f, DX_OP_TEXT, "insecure", 8), 0);
    assert_string_equal(wait_ev(f, C_MSG).data, "insecure");
}

static void test_plain_client_to_tls_server(void **state)
{
    fx *f = *state;
    cert_ip = (dx_tls_cert){g_ip_crt, g_ip_key};
    tls_server(f, &cert_ip);
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/", f->port);
    default_client(f, url);
    f->copt.connect_timeout_ms = 3000;
    start_client(f);
    ev e = wait_ev(f, C_ERROR); /* the server drops a non-TLS client, or the deadline passes */
    assert_true(e.rc != 0);
    assert_true(e.len > 0);
    wait_ev(f, C_DONE);
    assert_int_equal(count_ev(f, C_OPEN), 0);
}

/* ---- HTTP CONNECT proxy ---------------------------------------------------------------------- */

typedef struct proxy {
    int lfd;
    unsigned port;
    int refuse;           /* answer 407 */
    pthread_t th;
    atomic_int stop;
    char line[256];       /* the CONNECT request line */
    char host_hdr[128];
    int relayed;
} proxy;

static ssize_t read_head(int fd, char *buf, size_t cap)
{
    size_t got = 0;
    while (got < cap - 1) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, WAIT_MS) != 1)
            return -1;
        ssize_t n = read(fd, buf + got, cap - 1 - got);
        if (n <= 0)
            return -1;
        got += (size_t)n;
        buf[got] = 0;
        if (strstr(buf, "\r\n\r\n"))
            return (ssize_t)got;
    }
    return -1;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static void *proxy_thread(void *arg)
{
    proxy *px = arg;
    int fd = -1;
    while (!atomic_load(&px->stop)) {
        struct pollfd p = {.fd = px->lfd, .events = POLLIN};
        if (poll(&p, 1, 100) == 1) {
            fd = accept(px->lfd, NULL, NULL);
            break;
        }
    }
    if (fd < 0)
        return NULL;
    char head[4096];
    ssize_t hl = read_head(fd, head, sizeof head);
    if (hl < 0) {
        close(fd);
        return NULL;
    }
    char *eol = strstr(head, "\r\n");
    copy_str(px->line, sizeof px->line, head, (size_t)(eol - head));
    char *h = strcasestr(head, "\r\nHost: ");
    if (h) {
        h += 8;
        copy_str(px->host_hdr, sizeof px->host_hdr, h, strcspn(h, "\r"));
    }
    if (px->refuse) {
        const char *r = "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"t\"\r\n"
                        "Content-Length: 0\r\n\r\n";
        (void)write_all(fd, r, strlen(r));
        settle(50);
        close(fd);
        return NULL;
    }
    /* "CONNECT host:port HTTP/1.1": we only relay to 127.0.0.1 */
    unsigned port = 0;
    char *sp = strchr(px->line + 8, ' ');
    char *colon = sp ? memrchr(px->line, ':', (size_t)(sp - px->line)) : NULL;
    if (colon)
        port = (unsigned)strtoul(colon + 1, NULL, 10);
    int up = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (up < 0 || connect(up, (struct sockaddr *)&a, sizeof a) != 0) {
        const char *r = "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n";
        (void)write_all(fd, r, strlen(r));
        close(fd);
        if (up >= 0)
            close(up);
        return NULL;
    }
    const char *ok = "HTTP/1.1 200 Connection established\r\n\r\n";
    (void)write_all(fd, ok, strlen(ok));
    char buf[65536];
    while (!atomic_load(&px->stop)) {
        struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = up, .events = POLLIN}};
        int n = poll(p, 2, 100);
        if (n <= 0)
            continue;
        int done = 0;
        for (int i = 0; i < 2; i++) {
            if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t r = read(p[i].fd, buf, sizeof buf);
            if (r <= 0 || write_all(p[1 - i].fd, buf, (size_t)r) != 0) {
                done = 1;
                break;
            }
            px->relayed = 1;
        }
        if (done)
            break;
    }
    close(fd);
    close(up);
    return NULL;
}

static void proxy_start(proxy *px, int refuse)
{
    memset(px, 0, sizeof *px);
    px->refuse = refuse;
    px->lfd = listener(8, &px->port);
    assert_int_equal(pthread_create(&px->th, NULL, proxy_thread, px), 0);
}

static void proxy_stop(proxy *px)
{
    atomic_store(&px->stop, 1);
    pthread_join(px->th, NULL);
    close(px->lfd);
}

static void test_proxy_connect(void **state)
{
    fx *f = *state;
    start_server(f);
    proxy px;
    proxy_start(&px, 0);
    char url[128], purl[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/through", f->port);
    snprintf(purl, sizeof purl, "http://127.0.0.1:%u", px.port);
    default_client(f, url);
    f->copt.proxy = purl;
    start_client(f);
    wait_ev(f, C_OPEN);
    char want[64];
    snprintf(want, sizeof want, "CONNECT 127.0.0.1:%u HTTP/1.1", f->port);
    assert_string_equal(px.line, want);
    snprintf(want, sizeof want, "127.0.0.1:%u", f->port);
    assert_string_equal(px.host_hdr, want);
    assert_string_equal(f->up_path, "/through");
    uint8_t *p = pattern(100000, 9);
    assert_int_equal(csend(f, DX_OP_BINARY, p, 100000), 0);
    ev m = wait_ev(f, C_MSG);
    assert_int_equal(m.len, 100000);
    assert_memory_equal(m.data, p, 100000);
    free(p);
    assert_int_equal(cclose(f, 4001, "via proxy"), 0);
    assert_int_equal(wait_ev(f, S_CLOSE).code, 4001);
    assert_int_equal(wait_ev(f, C_CLOSE).code, 4001);
    wait_ev(f, C_DONE);
    proxy_stop(&px);
}

static void test_proxy_tls(void **state)
{
    fx *f = *state;
    cert_ip = (dx_tls_cert){g_ip_crt, g_ip_key};
    tls_server(f, &cert_ip);
    proxy px;
    proxy_start(&px, 0);
    char url[128], purl[128];
    snprintf(url, sizeof url, "wss://127.0.0.1:%u/", f->port);
    snprintf(purl, sizeof purl, "http://127.0.0.1:%u", px.port);
    default_client(f, url);
    f->copt.proxy = purl;
    f->copt.ca_file = g_ca;
    start_client(f);
    wait_ev(f, C_OPEN);
    assert_int_equal(csend(f, DX_OP_TEXT, "tunnelled", 9), 0);
    assert_string_equal(wait_ev(f, C_MSG).data, "tunnelled");
    proxy_stop(&px);
}

static void test_proxy_407(void **state)
{
    fx *f = *state;
    start_server(f);
    proxy px;
    proxy_start(&px, 1);
    char url[128], purl[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/", f->port);
    snprintf(purl, sizeof purl, "http://127.0.0.1:%u", px.port);
    default_client(f, url);
    f->copt.proxy = purl;
    start_client(f);
    ev e = expect_error(f, DX_EHANDSHAKE, "407");
    if (!strstr(e.data, "proxy"))
        fail_msg("the message does not name the proxy: \"%s\"", e.data);
    assert_int_equal(count_ev(f, S_UPGRADE), 0);
    proxy_stop(&px);
}

static void test_proxy_refused(void **state)
{
    fx *f = *state;
    char url[128], purl[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:9/");
    unsigned port = dead_port();
    snprintf(purl, sizeof purl, "http://127.0.0.1:%u", port);
    default_client(f, url);
    f->copt.proxy = purl;
    start_client(f);
    ev e = expect_error(f, DX_EADDR, "refused");
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%u", port); /* the proxy's address, not the server's */
    if (!strstr(e.data, want))
        fail_msg("the message does not name the proxy's address: \"%s\"", e.data);
}

/* ---- reconnect and the offline queue -------------------------------------------------------- */

static unsigned bound_for(unsigned attempt, unsigned base, unsigned cap)
{
    uint64_t b = base;
    for (unsigned i = 1; i < attempt && b < cap; i++)
        b *= 2;
    return b > cap ? cap : (unsigned)b;
}

static void test_reconnect_and_queue(void **state)
{
    fx *f = *state;
    start_server(f);
    unsigned port = f->port;
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/", port);
    default_client(f, url);
    f->copt.reconnect = 1;
    f->copt.backoff_base_ms = 40;
    f->copt.backoff_cap_ms = 150;
    f->copt.queue_max_messages = 3;
    start_client(f);
    wait_ev(f, C_OPEN);
    wait_ev(f, S_OPEN);

    /* the server goes away without a close frame */
    run(f, L_server_free, NULL);
    ev cc = wait_ev(f, C_CLOSE);
    assert_int_equal(cc.code, 1006);

    /* while down: three messages queue, the fourth is refused */
    assert_int_equal(csend(f, DX_OP_TEXT, "q1", 2), 0);
    assert_int_equal(csend(f, DX_OP_BINARY, "q2", 2), 0);
    assert_int_equal(csend(f, DX_OP_TEXT, "q3", 2), 0);
    assert_int_equal(csend(f, DX_OP_TEXT, "q4", 2), DX_ELIMIT);
    assert_int_equal(csend(f, DX_OP_PING, "p", 1), DX_ECLOSED); /* pings are not queued */
    assert_int_equal(csend(f, DX_OP_TEXT, "\xff", 1), DX_EUTF8);
    dx_client_stats st;
    run(f, L_stats, &st);
    assert_int_equal(st.queued, 3);
    assert_int_equal(st.dropped, 1);

    /* attempts 1, 2, 3, ... with delays within the full-jitter bound */
    for (unsigned k = 1; k <= 4; k++) {
        ev r = wait_ev(f, C_RECONNECT);
        assert_int_equal(r.n, k);
        if (r.code > bound_for(k, 40, 150))
            fail_msg("attempt %u: delay %u ms > bound %u", k, r.code, bound_for(k, 40, 150));
    }
    /* each failed attempt was reported */
    assert_true(count_ev(f, C_ERROR) >= 3);

    /* the server comes back on the same port */
    f->s_port_want = port;
    start_server(f);
    assert_int_equal(f->port, port);
    wait_ev(f, C_OPEN);
    assert_true(f->c_open_conn_ok);
    /* queued messages arrive in order, once, before anything sent later */
    assert_int_equal(csend(f, DX_OP_TEXT, "after", 5), 0);
    static const char *const want[] = {"q1", "q2", "q3", "after"};
    static const int ops[] = {DX_OP_TEXT, DX_OP_BINARY, DX_OP_TEXT, DX_OP_TEXT};
    for (size_t i = 0; i < 4; i++) {
        ev m = wait_ev(f, S_MSG);
        if (strcmp(m.data, want[i]) != 0 || m.opcode != ops[i])
            fail_msg("server message %zu: \"%s\" (op %d), expected \"%s\" (op %d)", i, m.data, m.opcode, want[i],
                     ops[i]);
        ev e = wait_ev(f, C_MSG); /* and their echoes */
        assert_string_equal(e.data, want[i]);
    }
    settle(200);
    assert_int_equal(count_ev(f, S_MSG), 4);
    run(f, L_stats, &st);
    assert_int_equal(st.opens, 2);
    assert_int_equal(st.flushed, 3);
    assert_int_equal(st.dropped, 1);
    assert_true(st.reconnects >= 4);

    /* the reconnect counter starts again after an open: drop once more */
    drain_ev(f, C_RECONNECT);
    run(f, L_server_free, NULL);
    assert_int_equal(wait_ev(f, C_CLOSE).code, 1006);
    assert_int_equal(wait_ev(f, C_RECONNECT).n, 1);
    /* a user close while waiting stops the reconnects */
    int rc = cclose(f, 1000, NULL);
    assert_true(rc == 0 || rc == DX_ECLOSED);
    wait_ev(f, C_DONE);
    size_t after = count_ev(f, C_RECONNECT);
    settle(400);
    assert_int_equal(count_ev(f, C_RECONNECT), after);
}

/* Reconnect after the server refuses the handshake, then accepts it. */
static void test_reconnect_after_refusal(void **state)
{
    fx *f = *state;
    f->upgrade_status = 503;
    start_server(f);
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/", f->port);
    default_client(f, url);
    f->copt.reconnect = 1;
    f->copt.backoff_base_ms = 20;
    f->copt.backoff_cap_ms = 60;
    start_client(f);
    ev e = wait_ev(f, C_ERROR);
    assert_int_equal(e.rc, DX_EHANDSHAKE);
    assert_non_null(strstr(e.data, "503"));
    wait_ev(f, C_RECONNECT);
    run(f, L_accept_all, NULL);
    wait_ev(f, C_OPEN);
    assert_int_equal(csend(f, DX_OP_TEXT, "finally", 7), 0);
    assert_string_equal(wait_ev(f, C_MSG).data, "finally");
}

static void test_queue_byte_bound(void **state)
{
    fx *f = *state;
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/", dead_port());
    default_client(f, url);
    f->copt.reconnect = 1;
    f->copt.backoff_base_ms = 1000;
    f->copt.queue_max_messages = 100;
    f->copt.queue_max_bytes = 10;
    start_client(f);
    assert_int_equal(csend(f, DX_OP_BINARY, "123456", 6), 0);
    assert_int_equal(csend(f, DX_OP_BINARY, "12345", 5), DX_ELIMIT);
    assert_int_equal(csend(f, DX_OP_BINARY, "1234", 4), 0);
    assert_int_equal(csend(f, DX_OP_BINARY, "", 0), 0); /* empty messages fit */
    assert_int_equal(csend(f, DX_OP_BINARY, "1", 1), DX_ELIMIT);
    dx_client_stats st;
    run(f, L_stats, &st);
    assert_int_equal(st.queued, 3);
    assert_int_equal(st.dropped, 2);
    /* the teardown frees the client with its queue (ASan checks) */
}

static void test_no_queue_while_down(void **state)
{
    fx *f = *state;
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/", dead_port());
    default_client(f, url);
    f->copt.reconnect = 1;
    f->copt.backoff_base_ms = 1000;
    start_client(f);
    assert_int_equal(csend(f, DX_OP_TEXT, "x", 1), DX_ECLOSED);
}

static void test_max_attempts(void **state)
{
    fx *f = *state;
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/", dead_port());
    default_client(f, url);
    f->copt.reconnect = 1;
    f->copt.backoff_base_ms = 10;
    f->copt.backoff_cap_ms = 20;
    f->copt.max_attempts = 3;
    start_client(f);
    wait_ev(f, C_DONE);
    settle(100);
    /* the first attempt and max_attempts reconnects failed, then on_done */
    assert_int_equal(count_ev(f, C_RECONNECT), 3);
    assert_int_equal(count_ev(f, C_ERROR), 4);
    assert_int_equal(count_ev(f, C_DONE), 1);
    for (unsigned k = 1; k <= 3; k++) {
        ev r = wait_ev(f, C_RECONNECT);
        assert_int_equal(r.n, k);
        assert_true(r.code <= bound_for(k, 10, 20));
    }
    dx_client_stats st;
    run(f, L_stats, &st);
    assert_int_equal(st.attempts, 4);
    assert_int_equal(st.reconnects, 3);
}

/* ---- bind_addr --------------------------------------------------------------------------------- */

static void test_bind_addr(void **state)
{
    fx *f = *state;
    start_server(f);
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/", f->port);
    default_client(f, url);
    f->copt.bind_addr = "127.0.0.2";
    start_client(f);
    wait_ev(f, C_OPEN);
    if (strncmp(f->up_remote, "127.0.0.2:", 10) != 0)
        fail_msg("the server saw %s, expected 127.0.0.2:*", f->up_remote);
}

static void test_bind_addr_family_mismatch(void **state)
{
    fx *f = *state;
    start_server(f);
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/", f->port);
    default_client(f, url);
    f->copt.bind_addr = "::1"; /* IPv6 source for an IPv4 server */
    start_client(f);
    ev e = expect_error(f, DX_EADDR, "bind");
    (void)e;
}

/* ---- regressions: bugs these tests found, fixed ------------------------------------------- */

/* Freeing the client in on_done (the natural end of a client's life): the
 * connection that just failed is dead but its deferred free still reads
 * c->ep->loop and c->s.cfg, which lived inside the freed client. */
static void test_free_client_in_on_done(void **state)
{
    fx *f = *state;
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/", dead_port());
    default_client(f, url);
    f->free_in_done = 1;
    start_client(f);
    wait_ev(f, C_DONE);
    settle(100); /* the deferred free runs at the end of the batch */
    assert_null(f->cl);
}

/* The same with a server freed from its on_close. */
static void test_free_server_in_on_close(void **state)
{
    fx *f = *state;
    start_server(f);
    f->free_in_sclose = 1;
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/", f->port);
    default_client(f, url);
    start_client(f);
    wait_ev(f, C_OPEN);
    assert_int_equal(cclose(f, 1000, NULL), 0);
    wait_ev(f, S_CLOSE);
    settle(100);
}

/* An IPv6 zone is written "%25" in a URL (RFC 6874) and url.c keeps it so,
 * but getaddrinfo wants "%": "ws://[::1%25lo]:P/" never resolves. */
static void test_ipv6_zone(void **state)
{
    fx *f = *state;
    f->s_host = "::1";
    run(f, L_server_start, NULL);
    if (f->s_rc != 0)
        return; /* no IPv6 loopback */
    char url[128];
    /* glibc takes a zone on ::1 only as an index; lo is interface 1 */
    snprintf(url, sizeof url, "ws://[::1%%251]:%u/", f->port);
    default_client(f, url);
    start_client(f);
    wait_ev(f, C_OPEN);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_echo_and_handshake_view),
        T(test_server_closes_with_reason),
        T(test_ipv6_loopback),
        T(test_connection_refused),
        T(test_refused_404),
        T(test_dns_failure),
        T(test_unix_path_missing),
        T(test_connect_timeout_full_backlog),
        T(test_handshake_timeout_silent_server),
        T(test_not_websocket_server),
        T(test_bad_options),
        T(test_tls_ca_file_success),
        T(test_tls_localhost_name),
        T(test_tls_unknown_ca),
        T(test_tls_wrong_host),
        T(test_tls_insecure),
        T(test_plain_client_to_tls_server),
        T(test_proxy_connect),
        T(test_proxy_tls),
        T(test_proxy_407),
        T(test_proxy_refused),
        T(test_reconnect_and_queue),
        T(test_reconnect_after_refusal),
        T(test_queue_byte_bound),
        T(test_no_queue_while_down),
        T(test_max_attempts),
        T(test_bind_addr),
        T(test_bind_addr_family_mismatch),
        T(test_free_client_in_on_done),
        T(test_free_server_in_on_close),
        T(test_ipv6_zone),
    };
    /* DX_TEST_FILTER=pattern runs only the matching tests (cmocka's wildcards). */
    if (getenv("DX_TEST_FILTER"))
        cmocka_set_test_filter(getenv("DX_TEST_FILTER"));
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
