/* tests/unit/client_fx.c: see client_fx.h. */
#define _GNU_SOURCE
#include "client_fx.h"

static const char *ev_name(int t)
{
    static const char *names[] = {"?", "S_UPGRADE", "S_OPEN", "S_MSG", "S_CLOSE", "C_OPEN",
                                  "C_MSG", "C_CLOSE", "C_ERROR", "C_RECONNECT", "C_DONE", "C_PONG"};
    return t > 0 && t <= C_PONG ? names[t] : "?";
}

static void add_ev(fx *f, const ev *e, const void *data, size_t len) { dx_test_rec_add(&f->rec, e, data, len); }

ev wait_ev(fx *f, int type) { return dx_test_rec_wait(&f->rec, type); }

void drain_ev(fx *f, int type) { dx_test_rec_drain(&f->rec, type); }

size_t count_ev(fx *f, int type) { return dx_test_rec_count(&f->rec, type); }

void wait_count(fx *f, const unsigned *counter, unsigned want, const char *what)
{
    struct timespec dl;
    dx_test_deadline_in(&dl, WAIT_MS);
    pthread_mutex_lock(&f->mu);
    while (*counter < want) {
        if (pthread_cond_timedwait(&f->cv, &f->mu, &dl) == ETIMEDOUT) {
            pthread_mutex_unlock(&f->mu);
            fail_msg("timed out waiting for %s (%u < %u)", what, *counter, want);
        }
    }
    pthread_mutex_unlock(&f->mu);
}

void settle(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

void copy_str(char *dst, size_t cap, const char *s, size_t len)
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
        pthread_mutex_lock(&f->mu); /* start_client may be reading it: on_done can follow the posted call */
        f->cl = NULL;
        pthread_mutex_unlock(&f->mu);
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

DX_TEST_ON_LOOP_DEFINE(, run, fx)

void default_client(fx *f, const char *url)
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

int fx_setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    f->evs = calloc(MAXEV, sizeof *f->evs);
    if (!f->evs)
        return -1;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    dx_test_rec_init(&f->rec, &f->mu, &f->cv, f->evs, MAXEV, WAIT_MS);
    f->rec.name = ev_name;
    dx_loop_options lo = {.log = &dx_test_quiet_log};
    f->loop = dx_loop_new(&lo, NULL);
    if (!f->loop)
        return -1;
    f->s_host = "127.0.0.1";
    if (pthread_create(&f->th, NULL, dx_test_loop_thread, f->loop) != 0)
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

int fx_teardown(void **state)
{
    fx *f = *state;
    dx_loop_stop(f->loop);
    pthread_join(f->th, NULL);
    L_free_all(f, NULL);
    dx_loop_free(f->loop);
    dx_test_rec_free(&f->rec);
    free(f->evs);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f);
    return 0;
}

void L_server_start(fx *f, void *arg)
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

void L_accept_all(fx *f, void *arg)
{
    (void)arg;
    f->upgrade_status = 0;
}

void L_server_free(fx *f, void *arg)
{
    (void)arg;
    dx_server_free(f->srv);
    f->srv = NULL;
}

void L_client_start(fx *f, void *arg)
{
    (void)arg;
    f->cl = dx_client_new(f->loop, &f->copt, &f->c_new_err);
    f->c_connect_rc = f->cl ? dx_client_connect(f->cl) : f->c_new_err;
}

void L_client_connect(fx *f, void *arg)
{
    (void)arg;
    f->c_connect_rc = dx_client_connect(f->cl);
}

static void L_send(fx *f, void *arg)
{
    send_arg *a = arg;
    a->rc = dx_client_send(f->cl, a->opcode, a->data, a->len);
}

static void L_close(fx *f, void *arg)
{
    close_arg *a = arg;
    a->rc = dx_client_close(f->cl, a->code, a->reason, a->reason ? strlen(a->reason) : 0);
}

void L_stats(fx *f, void *arg)
{
    dx_client_stats_get(f->cl, arg);
}

int csend(fx *f, int opcode, const void *data, size_t len)
{
    send_arg a = {opcode, data, len, 0};
    run(f, L_send, &a);
    return a.rc;
}

int cclose(fx *f, unsigned code, const char *reason)
{
    close_arg a = {code, reason, 0};
    run(f, L_close, &a);
    return a.rc;
}

void start_server(fx *f)
{
    run(f, L_server_start, NULL);
    assert_int_equal(f->s_rc, 0);
    assert_true(f->port > 0);
}

void start_client(fx *f)
{
    run(f, L_client_start, NULL);
    /* A refused connect on loopback can fail at once, inside
     * dx_client_connect: with free_in_done the client is then already gone. */
    pthread_mutex_lock(&f->mu);
    int none = f->cl == NULL;
    pthread_mutex_unlock(&f->mu);
    if (none && !f->free_in_done)
        fail_msg("dx_client_new failed: %d", f->c_new_err);
    assert_int_equal(f->c_connect_rc, 0);
}

ev expect_error(fx *f, int err, const char *needle)
{
    ev e = wait_ev(f, C_ERROR);
    if (e.rc != err || !e.data || !strstr(e.data, needle))
        fail_msg("on_error(%d \"%s\"), expected %d with \"%s\"", e.rc, e.data ? e.data : "", err, needle);
    wait_ev(f, C_DONE);
    assert_int_equal(count_ev(f, C_OPEN), 0);
    assert_int_equal(count_ev(f, C_CLOSE), 0); /* no on_close without on_open */
    return e;
}

uint8_t *pattern(size_t n, unsigned seed)
{
    uint8_t *p = malloc(n ? n : 1);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 31u + seed);
    return p;
}

unsigned dead_port(void)
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

int listener(int backlog, unsigned *port)
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
