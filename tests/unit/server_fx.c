/* tests/unit/server_fx.c: see server_fx.h. */
#define _GNU_SOURCE
#include "server_fx.h"

static int user_marker;

static void add_ev(sfx *f, const ev *e, const void *data, size_t len) { dx_test_rec_add(&f->rec, e, data, len); }

ev wait_ev(sfx *f, int type) { return dx_test_rec_wait(&f->rec, type); }

size_t count_ev(sfx *f, int type) { return dx_test_rec_count(&f->rec, type); }

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

long flood(dx_conn *c, size_t size, size_t stop_above, long cap, int *rc)
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

dx_http_req *held_req; /* loop thread only */

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

DX_TEST_ON_LOOP_DEFINE(, on_loop, sfx)

static void do_stats(sfx *f, void *out) { dx_server_stats_get(f->srv, out); }

static void do_conns(sfx *f, void *out) { *(size_t *)out = dx_server_connections(f->srv); }

void do_shutdown(sfx *f, void *arg)
{
    (void)arg;
    f->shutdown_ret = dx_server_shutdown(f->srv, DX_CLOSE_GOING_AWAY, "bye");
}

dx_server_stats stats(sfx *f)
{
    dx_server_stats s;
    on_loop(f, do_stats, &s);
    return s;
}

size_t conns(sfx *f)
{
    size_t n;
    on_loop(f, do_conns, &n);
    return n;
}

void wait_no_conns(sfx *f)
{
    for (int i = 0; conns(f) != 0; i++) {
        assert_true(i < WAIT_MS / 5);
        usleep(5000);
    }
}

int sfx_setup(void **state)
{
    sfx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    dx_test_rec_init(&f->rec, &f->mu, &f->cv, f->evs, MAXEV, WAIT_MS);
    f->echo = 1;
    for (size_t i = 0; i < MAXCL; i++)
        f->cls[i].fd = -1;
    *state = f;
    return 0;
}

dx_server_options base_opts(sfx *f)
{
    dx_server_options o = {.host = "127.0.0.1", .port = DX_PORT_EPHEMERAL};
    o.cb = (dx_server_callbacks){.on_upgrade = cb_upgrade, .on_http = cb_http, .on_open = cb_open,
                                 .on_message = cb_message, .on_drain = cb_drain, .on_close = cb_close};
    o.ud = f;
    return o;
}

void start(sfx *f, const dx_server_options *o)
{
    dx_loop_options lo = {.log = &dx_test_quiet_log};
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
    assert_int_equal(pthread_create(&f->th, NULL, dx_test_loop_thread, f->loop), 0);
    f->running = 1;
}

static void rm_tree(const char *dir)
{
    if (dir[0] && dx_test_rm_rf(dir) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
}

int sfx_teardown(void **state)
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
    dx_test_rec_free(&f->rec);
    rm_tree(f->dir);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f);
    return 0;
}

void make_dir(sfx *f)
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
    dx_test_io_timeouts(fd, WAIT_MS);
    return c;
}

cl *cl_tcp(sfx *f, int rcvbuf)
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

cl *cl_unix(sfx *f, const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return cl_wrap(f, fd);
}

void cl_close(cl *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

void cl_send(cl *c, const void *p, size_t len) { dx_test_send_all(c->fd, p, len); }

void cl_read_to_eof(cl *c)
{
    if (!dx_test_peer_eof(c))
        fail_msg("client: %s before EOF", strerror(errno));
}

hs cl_handshake_opts(sfx *f, cl *c, const dx_ws_client_opts *o, const void *extra, size_t extra_len,
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
    size_t hl = dx_test_peer_head(c);
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
        dx_test_peer_consume(c, hl);
    }
    return r;
}

hs cl_handshake(sfx *f, cl *c, const char *path)
{
    dx_ws_client_opts o = {.host = "127.0.0.1", .port = f->port, .path = path};
    return cl_handshake_opts(f, c, &o, NULL, 0, 0);
}

size_t frame_bytes(uint8_t *out, unsigned opcode, bool fin, const void *data, size_t len, bool masked)
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

void cl_frame(cl *c, unsigned opcode, bool fin, const void *data, size_t len)
{
    uint8_t *b = malloc(len + DX_FRAME_HEADER_MAX);
    assert_non_null(b);
    size_t n = frame_bytes(b, opcode, fin, data, len, true);
    cl_send(c, b, n);
    free(b);
}

void cl_close_frame(cl *c, unsigned code, const char *reason)
{
    uint8_t p[125];
    size_t rl = strlen(reason);
    p[0] = (uint8_t)(code >> 8);
    p[1] = (uint8_t)code;
    memcpy(p + 2, reason, rl);
    cl_frame(c, DX_OP_CLOSE, true, p, 2 + rl);
}

frm cl_read_frame(cl *c)
{
    dx_test_peer_need(c, 2);
    frm fr = {.opcode = c->buf[0] & 0x0F, .fin = (c->buf[0] & 0x80) != 0};
    assert_int_equal(c->buf[0] & 0x70, 0); /* no RSV bits */
    assert_int_equal(c->buf[1] & 0x80, 0); /* servers do not mask */
    uint64_t len = c->buf[1] & 0x7F;
    size_t hl = 2;
    if (len == 126) {
        dx_test_peer_need(c, 4);
        len = (uint64_t)c->buf[2] << 8 | c->buf[3];
        hl = 4;
    } else if (len == 127) {
        dx_test_peer_need(c, 10);
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | c->buf[2 + i];
        hl = 10;
    }
    assert_true(len < (1u << 26));
    dx_test_peer_need(c, hl + (size_t)len);
    fr.data = malloc((size_t)len + 1);
    assert_non_null(fr.data);
    memcpy(fr.data, c->buf + hl, (size_t)len);
    fr.data[len] = 0;
    fr.len = (size_t)len;
    dx_test_peer_consume(c, hl + (size_t)len);
    return fr;
}

void expect_frame(cl *c, int opcode, const void *data, size_t len)
{
    frm fr = cl_read_frame(c);
    assert_int_equal(fr.opcode, opcode);
    assert_true(fr.fin);
    assert_int_equal(fr.len, len);
    if (len)
        assert_memory_equal(fr.data, data, len);
    free(fr.data);
}

void expect_close(cl *c, unsigned code, const char *reason)
{
    frm fr = cl_read_frame(c);
    assert_int_equal(fr.opcode, DX_OP_CLOSE);
    assert_true(fr.len >= 2);
    assert_int_equal((unsigned)fr.data[0] << 8 | fr.data[1], code);
    if (reason)
        assert_string_equal((const char *)fr.data + 2, reason);
    free(fr.data);
}

void expect_eof(cl *c)
{
    assert_int_equal(c->len, 0);
    cl_read_to_eof(c);
    assert_int_equal(c->len, 0);
}

void close_normally(sfx *f, cl *c, unsigned code)
{
    cl_close_frame(c, code, "done");
    expect_close(c, code, NULL);
    expect_eof(c);
    cl_close(c);
    ev e = wait_ev(f, EV_CLOSE);
    assert_int_equal(e.code, code);
}

http_res http(sfx *f, const char *request)
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
