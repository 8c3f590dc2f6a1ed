/* tests/unit/hooks_fx.c: see hooks_fx.h. */
#define _GNU_SOURCE
#include "hooks_fx.h"

#include <stdalign.h>

int user_marker;

static void add_ev(fx *f, int type, uint64_t id, unsigned code, const void *data, size_t len)
{
    ev e = {.type = type, .id = id, .code = code};
    dx_test_rec_add(&f->rec, &e, data, len);
}

ev wait_ev(fx *f, int type) { return dx_test_rec_wait(&f->rec, type); }

size_t count_ev(fx *f, int type) { return dx_test_rec_count(&f->rec, type); }

/* Log lines containing `needle`. */
size_t count_log(fx *f, const char *needle)
{
    pthread_mutex_lock(&f->mu);
    size_t n = 0;
    for (size_t i = 0; i < f->nlogs; i++)
        n += strstr(f->logs[i], needle) != NULL;
    pthread_mutex_unlock(&f->mu);
    return n;
}

void wait_log(fx *f, const char *needle)
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
    if (f->mode == M_FREE_INSIDE) {
        dx_server_free(srv); /* deferred, then the server freed before returning */
        f->srv = NULL;
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

DX_TEST_ON_LOOP_DEFINE(, on_loop, fx)

static void do_nothing(fx *f, void *arg)
{
    (void)f;
    (void)arg;
}

/* Two trips through the loop: whatever was already due has run. */
void barrier(fx *f)
{
    on_loop(f, do_nothing, NULL);
    on_loop(f, do_nothing, NULL);
}

static void do_stats(fx *f, void *out) { dx_server_stats_get(f->srv, out); }
static void do_conns(fx *f, void *out) { *(size_t *)out = dx_server_connections(f->srv); }

dx_server_stats stats(fx *f)
{
    dx_server_stats s;
    on_loop(f, do_stats, &s);
    return s;
}

size_t conns(fx *f)
{
    size_t n;
    on_loop(f, do_conns, &n);
    return n;
}

void wait_conns(fx *f, size_t want)
{
    for (int i = 0; conns(f) != want; i++) {
        assert_true(i < WAIT_MS / 5);
        usleep(5000);
    }
}

int fx_setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    dx_test_rec_init(&f->rec, &f->mu, &f->cv, f->evs, MAXEV, WAIT_MS);
    *state = f;
    return 0;
}

static dx_log g_log;

dx_server_options opts(fx *f)
{
    dx_server_options o = {.host = "127.0.0.1", .port = DX_PORT_EPHEMERAL};
    o.cb = (dx_server_callbacks){
        .on_upgrade = cb_upgrade, .on_open = cb_open, .on_message = cb_message, .on_close = cb_close};
    o.ud = f;
    o.conn_ext_size = f->ext_size;
    return o;
}

void start(fx *f, const dx_server_options *o)
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
    assert_int_equal(pthread_create(&f->th, NULL, dx_test_loop_thread, f->loop), 0);
}

void do_free_server(fx *f, void *arg)
{
    (void)arg;
    dx_server_free(f->srv);
    f->srv = NULL;
}

void do_shutdown(fx *f, void *arg)
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

int fx_teardown(void **state)
{
    fx *f = *state;
    if (f->loop) {
        on_loop(f, answer_leftover, NULL);
        dx_loop_stop(f->loop);
        pthread_join(f->th, NULL);
    }
    dx_server_free(f->srv);
    dx_loop_free(f->loop);
    dx_test_rec_free(&f->rec);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f);
    return 0;
}

/* ---- client ------------------------------------------------------------------------------ */

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
    dx_test_io_timeouts(fd, WAIT_MS);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

cl *cl_new(fx *f, const char *src)
{
    cl *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->fd = tcp_from(f, src);
    return c;
}

void cl_free(cl *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c->buf);
    free(c);
}

void cl_send(cl *c, const void *p, size_t len) { dx_test_send_all(c->fd, p, len); }

/* True when the server ended the connection (EOF or reset) with nothing more sent. */
int cl_eof(cl *c) { return dx_test_peer_eof(c); }

size_t frame_bytes(uint8_t *out, unsigned opcode, const void *data, size_t len)
{
    uint8_t key[4] = {0x12, 0x34, 0x56, 0x78};
    size_t hl = dx__frame_header_write(out, opcode, true, 0, len, key);
    dx__mask_copy(out + hl, data, len, key, 0);
    return hl + len;
}

void cl_frame(cl *c, unsigned opcode, const void *data, size_t len)
{
    uint8_t b[256];
    assert_true(len + DX_FRAME_HEADER_MAX <= sizeof b);
    cl_send(c, b, frame_bytes(b, opcode, data, len));
}

/* Reads one unmasked server frame; returns its opcode, payload in out. */
int cl_read_frame(cl *c, char *out, size_t cap, size_t *len)
{
    dx_test_peer_need(c, 2);
    size_t n = c->buf[1] & 0x7F, hl = 2;
    if (n == 126) {
        dx_test_peer_need(c, 4);
        n = (size_t)c->buf[2] << 8 | c->buf[3];
        hl = 4;
    }
    assert_true(n < 127 * 1024);
    dx_test_peer_need(c, hl + n);
    int op = c->buf[0] & 0x0F;
    size_t k = n < cap - 1 ? n : cap - 1;
    memcpy(out, c->buf + hl, k);
    out[k] = 0;
    *len = n;
    dx_test_peer_consume(c, hl + n);
    return op;
}

void expect_text(cl *c, const char *s)
{
    char b[256];
    size_t n;
    assert_int_equal(cl_read_frame(c, b, sizeof b, &n), DX_OP_TEXT);
    assert_int_equal(n, strlen(s));
    assert_string_equal(b, s);
}

/* The upgrade request (plus `extra` bytes sent in the same write). */
void cl_request(fx *f, cl *c, const char *path, const void *extra, size_t extra_len)
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
int cl_response(cl *c, char *head, size_t cap)
{
    size_t hl = dx_test_peer_head(c);
    dx_http_header h[32];
    dx_http_response resp;
    assert_int_equal(dx__http_parse_response((const char *)c->buf, hl, &resp, h, 32, 0), (int)hl);
    size_t k = hl < cap - 1 ? hl : cap - 1;
    memcpy(head, c->buf, k);
    head[k] = 0;
    dx_test_peer_consume(c, hl);
    return resp.status;
}

cl *cl_open(fx *f, const char *src, const char *path)
{
    cl *c = cl_new(f, src);
    cl_request(f, c, path, NULL, 0);
    char head[1024];
    assert_int_equal(cl_response(c, head, sizeof head), 101);
    return c;
}

long loop_cpu_ms_over_1s(fx *f)
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

/* ---- answers to a deferred upgrade ---------------------------------------------------- */

static void copy_n(char *dst, size_t cap, const char *s, size_t len)
{
    if (!s)
        s = "(null)", len = 6;
    if (len >= cap)
        len = cap - 1;
    memcpy(dst, s, len);
    dst[len] = 0;
}

void do_accept(fx *f, void *arg)
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

void do_refuse(fx *f, void *arg)
{
    answer *a = arg;
    a->rc = dx_upgrade_refuse(f->h, a->status, a->headers);
    f->h = NULL;
}
