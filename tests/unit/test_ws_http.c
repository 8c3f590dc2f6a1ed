/*
 * tests/unit/test_ws_http.c: src/ws/http.c — plain HTTP requests on a real
 * dx_loop + dx_server (127.0.0.1, ephemeral port, loop in its own thread)
 * against raw blocking sockets written here.
 *
 * What it tries to break: bodies by Content-Length and chunked (extensions,
 * trailers, trickled one byte per write), the body cap (413 and its log
 * line), malformed chunk sizes (400), keep-alive over 100 requests,
 * pipelined requests mixing immediate and deferred answers (answered in
 * order), an answer from a dx_loop_post'ed function, a client that leaves
 * before its deferred answer (DX_ECLOSED, no leak under ASan), HEAD on a
 * big file (reads nothing: /proc/self/io), a 16 MiB file over sendfile
 * (exact bytes) and 16 slow readers of it (VmRSS bound), and every
 * allocation of a pipelined chunked/deferred exchange failing once (a clean
 * drop, no leak, the next client served).
 *
 * Callbacks only record (under a mutex) and never assert; the test thread
 * waits for what it needs with generous deadlines.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "duplex/server.h"
#include "proto/http.h"

#include <fcntl.h>
#include <sys/stat.h>

#define WAIT_S 15
#define BIG (16u << 20)

typedef struct fx {
    dx_loop *loop;
    dx_server *srv;
    pthread_t th;
    unsigned port;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char dir[64];
    char logs[16384]; /* log lines of interest */
    size_t logs_len;
    dx_http_req *held;   /* loop thread only */
    int held_seen;       /* under mu */
    int late_rc;         /* under mu */
    int late_done;
    int calls;           /* on_http calls, under mu */
    int inject_rc;       /* under mu */
    int inject_done;
    const dx_seams *seams;
} fx;

static fx F;

/* ---- the loop side ------------------------------------------------------------ */

static void log_sink(void *ud, int level, const char *line, size_t len)
{
    (void)level;
    fx *f = ud;
    pthread_mutex_lock(&f->mu);
    if (f->logs_len + len + 1 < sizeof f->logs) {
        memcpy(f->logs + f->logs_len, line, len);
        f->logs_len += len;
        f->logs[f->logs_len++] = '\n';
        f->logs[f->logs_len] = 0;
    }
    pthread_mutex_unlock(&f->mu);
}

static const dx_log the_log = {.sink = log_sink, .ud = &F, .level = DX_LOG_INFO};

static void posted_answer(void *arg)
{
    dx_http_req *req = arg;
    char body[64];
    int n = snprintf(body, sizeof body, "posted %s", req->target);
    (void)dx_http_reply(req, 200, NULL, NULL, body, (size_t)n);
}

static int on_http(dx_server *srv, dx_http_req *req, void *ud)
{
    (void)srv;
    fx *f = ud;
    pthread_mutex_lock(&f->mu);
    f->calls++;
    pthread_mutex_unlock(&f->mu);
    if (req->path_len == 5 && memcmp(req->path, "/echo", 5) == 0) {
        char hdr[64];
        size_t tl = 0;
        const char *t = dx_http_req_header(req, "x-tag", &tl);
        snprintf(hdr, sizeof hdr, "X-Tag: %.*s\r\n", (int)(t ? tl : 1), t ? t : "-");
        (void)dx_http_reply(req, 200, "application/octet-stream", hdr, req->body, req->body_len);
        return 1;
    }
    if (req->path_len == 2 && memcmp(req->path, "/n", 2) == 0) {
        (void)dx_http_reply(req, 200, NULL, NULL, req->target, req->target_len);
        return 1;
    }
    if (req->path_len == 5 && memcmp(req->path, "/hdrs", 5) == 0) {
        /* every header line, in order, and the query */
        char out[512];
        size_t o = (size_t)snprintf(out, sizeof out, "q=%.*s", (int)req->query_len, req->query ? req->query : "");
        const char *n, *v;
        size_t nl, vl;
        for (size_t i = 0; dx_http_req_header_at(req, i, &n, &nl, &v, &vl) && o < sizeof out; i++)
            o += (size_t)snprintf(out + o, sizeof out - o, ";%.*s=%.*s", (int)nl, n, (int)vl, v);
        (void)dx_http_reply(req, 200, NULL, NULL, out, o < sizeof out ? o : sizeof out - 1);
        return 1;
    }
    if (req->path_len == 7 && memcmp(req->path, "/inject", 7) == 0) {
        int rc = dx_http_reply(req, 200, NULL, "X-A: 1\r\nX-B: 2", "no", 2); /* not a complete line */
        pthread_mutex_lock(&f->mu);
        f->inject_rc = rc;
        f->inject_done = 1;
        pthread_cond_broadcast(&f->cv);
        pthread_mutex_unlock(&f->mu);
        return 1;
    }
    if (req->path_len == 5 && memcmp(req->path, "/post", 5) == 0) {
        /* answered later, from a function posted to the loop */
        if (dx_loop_post(f->loop, posted_answer, req) != 0)
            (void)dx_http_reply(req, 503, NULL, NULL, "post failed", 11);
        return 1;
    }
    if (req->path_len == 5 && memcmp(req->path, "/hold", 5) == 0) {
        f->held = req;
        pthread_mutex_lock(&f->mu);
        f->held_seen++;
        pthread_cond_broadcast(&f->cv);
        pthread_mutex_unlock(&f->mu);
        return 1;
    }
    return 0; /* static files, 404, 405 */
}

static void answer_held(void *arg)
{
    fx *f = arg;
    int rc = dx_http_reply(f->held, 200, NULL, NULL, "late", 4);
    f->held = NULL;
    pthread_mutex_lock(&f->mu);
    f->late_rc = rc;
    f->late_done = 1;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

/* Waits on f->cv (f->mu held); on timeout unlocks before failing, so the
 * loop thread (which takes f->mu to log) can still be stopped. */
static void wait_cv(fx *f, const struct timespec *dl, const char *what)
{
    if (pthread_cond_timedwait(&f->cv, &f->mu, dl) == ETIMEDOUT) {
        pthread_mutex_unlock(&f->mu);
        fail_msg("timed out waiting for %s", what);
    }
}

static void start(fx *f, dx_server_options *o)
{
    dx_loop_options lo = {.log = &the_log, .seams = f->seams};
    int err = 0;
    f->loop = dx_loop_new(&lo, &err);
    assert_non_null(f->loop);
    o->host = "127.0.0.1";
    o->port = DX_PORT_EPHEMERAL;
    o->cb.on_http = on_http;
    o->ud = f;
    f->srv = dx_server_new(f->loop, o, &err);
    assert_non_null(f->srv);
    assert_int_equal(dx_server_start(f->srv), 0);
    f->port = dx_server_port(f->srv);
    assert_int_equal(pthread_create(&f->th, NULL, dx_test_loop_thread, f->loop), 0);
}

static int setup(void **state)
{
    memset(&F, 0, sizeof F);
    pthread_mutex_init(&F.mu, NULL);
    pthread_cond_init(&F.cv, NULL);
    snprintf(F.dir, sizeof F.dir, "/tmp/dx_http_XXXXXX");
    assert_non_null(mkdtemp(F.dir));
    *state = &F;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    if (f->loop) {
        dx_loop_stop(f->loop);
        pthread_join(f->th, NULL);
        dx_server_free(f->srv);
        dx_loop_free(f->loop);
    }
    assert_int_equal(dx_test_rm_rf(f->dir), 0);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    return 0;
}

/* on_loop(f, fn, arg): runs fn on the loop's thread and waits for it. */
DX_TEST_ON_LOOP_DEFINE(static, on_loop, fx)

static void do_conns(fx *f, void *out) { *(size_t *)out = dx_server_connections(f->srv); }
static void do_stats(fx *f, void *out) { dx_server_stats_get(f->srv, out); }

static size_t conns(fx *f)
{
    size_t n;
    on_loop(f, do_conns, &n);
    return n;
}

static void wait_conns(fx *f, size_t want)
{
    for (int i = 0; conns(f) != want; i++) {
        assert_true(i < WAIT_S * 200);
        usleep(5000);
    }
}

static bool logged(fx *f, const char *needle)
{
    pthread_mutex_lock(&f->mu);
    bool yes = strstr(f->logs, needle) != NULL;
    pthread_mutex_unlock(&f->mu);
    return yes;
}

/* ---- the client ------------------------------------------------------------------ */

typedef dx_test_peer cl;

static cl dial(fx *f, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    if (rcvbuf)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    dx_test_io_timeouts(fd, WAIT_S * 1000);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    cl c = {.fd = fd, .cap = 65536};
    c.buf = malloc(c.cap);
    assert_non_null(c.buf);
    return c;
}

static void hang_up(cl *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
}

static void put(cl *c, const void *p, size_t len) { dx_test_send_all(c->fd, p, len); }

static void puts_(cl *c, const char *s) { put(c, s, strlen(s)); }

/* The server may have dropped us meanwhile (allocation failure tests). */
static void puts_maybe(cl *c, const char *s) { (void)send(c->fd, s, strlen(s), MSG_NOSIGNAL); }

/* One byte per write, TCP_NODELAY: the server sees many small reads. */
static void trickle(cl *c, const char *s)
{
    for (size_t i = 0; s[i]; i++)
        put(c, s + i, 1);
}

typedef struct resp {
    int status;
    bool close;
    char body[1024];
    size_t body_len;
    long clen;
} resp;

/* Reads one response (head and Content-Length body) and consumes it.
 * `head_req`: the response to a HEAD request has no body. */
static resp get_resp(cl *c, bool head_req)
{
    resp r = {0};
    dx_http_header h[32];
    dx_http_response hr;
    int hl;
    while ((hl = dx__http_parse_response((const char *)c->buf, c->len, &hr, h, 32, 0)) == DX_EAGAIN)
        if (dx_test_peer_fill(c) <= 0)
            fail_msg("EOF or error (%s) before a complete response head", strerror(errno));
    assert_true(hl > 0);
    r.status = hr.status;
    const dx_http_header *x = dx__http_find(h, hr.n_headers, "content-length");
    assert_non_null(x);
    r.clen = strtol(x->value, NULL, 10);
    x = dx__http_find(h, hr.n_headers, "connection");
    r.close = x && dx__http_list_has(x->value, x->value_len, "close");
    size_t blen = head_req ? 0 : (size_t)r.clen;
    while (c->len < (size_t)hl + blen)
        if (dx_test_peer_fill(c) <= 0)
            fail_msg("EOF before the body's %zu bytes", blen);
    assert_true(blen < sizeof r.body);
    memcpy(r.body, c->buf + hl, blen);
    r.body[blen] = 0;
    r.body_len = blen;
    memmove(c->buf, c->buf + hl + blen, c->len - (size_t)hl - blen);
    c->len -= (size_t)hl + blen;
    return r;
}

static void expect_eof(cl *c)
{
    for (;;) {
        ssize_t r = dx_test_peer_fill(c);
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            return;
        assert_true(r > 0);
    }
}

static void check_resp(resp r, int status, const char *body)
{
    if (r.status != status || (body && strcmp(r.body, body) != 0))
        fail_msg("got %d [%s], want %d [%s]", r.status, r.body, status, body ? body : "(any)");
}

/* ---- tests: bodies ------------------------------------------------------------------- */

static void test_bodies(void **state)
{
    fx *f = *state;
    dx_server_options o = {.max_http_body = 1000};
    start(f, &o);
    cl c = dial(f, 0);
    /* Content-Length, whole */
    puts_(&c, "POST /echo HTTP/1.1\r\nHost: x\r\nX-Tag: a\r\nContent-Length: 5\r\n\r\nhello");
    check_resp(get_resp(&c, false), 200, "hello");
    /* Content-Length, one byte per write (head and body) on the same connection */
    trickle(&c, "PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world");
    check_resp(get_resp(&c, false), 200, "hello world");
    /* chunked with extensions and trailers */
    puts_(&c, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              "5;ext=1\r\nhello\r\n6 ; a=\"b\"\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
    check_resp(get_resp(&c, false), 200, "hello world");
    /* chunked, trickled */
    trickle(&c, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                "3\r\nabc\r\n1;x\r\nd\r\n0\r\n\r\n");
    check_resp(get_resp(&c, false), 200, "abcd");
    /* exactly at the cap */
    char big[1100];
    memset(big, 'z', sizeof big);
    char head[128];
    snprintf(head, sizeof head, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n");
    puts_(&c, head);
    put(&c, big, 1000);
    resp r = get_resp(&c, true); /* body longer than resp.body: skip it by hand */
    assert_int_equal(r.status, 200);
    assert_int_equal(r.clen, 1000);
    while (c.len < 1000)
        assert_true(dx_test_peer_fill(&c) > 0);
    c.len -= 1000;
    /* Expect: 100-continue gets its interim answer before the body */
    puts_(&c, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n");
    while (c.len < 25)
        assert_true(dx_test_peer_fill(&c) > 0);
    assert_memory_equal(c.buf, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    memmove(c.buf, c.buf + 25, c.len - 25);
    c.len -= 25;
    puts_(&c, "ok");
    check_resp(get_resp(&c, false), 200, "ok");
    hang_up(&c);
}

static void test_body_cap_and_bad_chunks(void **state)
{
    fx *f = *state;
    dx_server_options o = {.max_http_body = 1000};
    start(f, &o);
    /* over the cap by Content-Length: 413 at once, then the connection closes */
    cl c = dial(f, 0);
    puts_(&c, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n");
    resp r = get_resp(&c, false);
    check_resp(r, 413, NULL);
    assert_true(r.close);
    expect_eof(&c);
    hang_up(&c);
    assert_true(logged(f, "status=413: body of 1001 bytes over max_http_body 1000"));
    /* over the cap by chunks: 413 once the total passes it */
    c = dial(f, 0);
    puts_(&c, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    char chunk[600];
    memset(chunk, 'y', sizeof chunk);
    puts_(&c, "258\r\n");
    put(&c, chunk, 600);
    puts_(&c, "\r\n258\r\n");
    put(&c, chunk, 100);
    check_resp(get_resp(&c, false), 413, NULL);
    expect_eof(&c);
    hang_up(&c);
    assert_true(logged(f, "chunked body over max_http_body 1000"));
    /* malformed chunk sizes and framing: 400 */
    static const char *const bad[] = {
        "zz\r\nhello\r\n0\r\n\r\n", "-5\r\nhello\r\n0\r\n\r\n", "0x5\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX\r\n0\r\n\r\n", "FFFFFFFFFFFFFFFFFF\r\n", "5\nhello\r\n0\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        c = dial(f, 0);
        puts_(&c, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        puts_(&c, bad[i]);
        r = get_resp(&c, false);
        if (r.status != 400)
            fail_msg("bad chunk [%s]: status %d", bad[i], r.status);
        expect_eof(&c);
        hang_up(&c);
    }
    /* ambiguous framing: 400; a coding we do not know: 501 */
    static const struct {
        const char *req;
        int status;
    } frame[] = {
        {"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
        {"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400},
        {"POST /echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400},
        {"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
        {"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
    };
    for (size_t i = 0; i < sizeof frame / sizeof frame[0]; i++) {
        c = dial(f, 0);
        puts_(&c, frame[i].req);
        check_resp(get_resp(&c, false), frame[i].status, NULL);
        hang_up(&c);
    }
    /* the application's header block is checked: no injection, 500 instead */
    c = dial(f, 0);
    puts_(&c, "GET /inject HTTP/1.1\r\nHost: x\r\n\r\n");
    check_resp(get_resp(&c, false), 500, NULL);
    struct timespec dl;
    dx_test_deadline_in(&dl, WAIT_S * 1000);
    pthread_mutex_lock(&f->mu);
    while (!f->inject_done) /* the reply returns after the bytes left */
        wait_cv(f, &dl, "the reply's result");
    int inject_rc = f->inject_rc;
    pthread_mutex_unlock(&f->mu);
    assert_int_equal(inject_rc, DX_EINVAL);
    /* headers in order, query, through dx_http_req_header_at */
    puts_(&c, "GET /hdrs?a=1&b HTTP/1.1\r\nHost: x\r\nX-One:  1 \r\nx-two: two\r\n\r\n");
    check_resp(get_resp(&c, false), 200, "q=a=1&b;Host=x;X-One=1;x-two=two");
    hang_up(&c);
    /* and everyone else is still served */
    c = dial(f, 0);
    puts_(&c, "GET /n?alive HTTP/1.1\r\nHost: x\r\n\r\n");
    check_resp(get_resp(&c, false), 200, "/n?alive");
    hang_up(&c);
}

/* ---- tests: keep-alive, pipelining, deferred answers ------------------------------------ */

static void test_keepalive_100(void **state)
{
    fx *f = *state;
    dx_server_options o = {0};
    start(f, &o);
    cl c = dial(f, 0);
    for (int i = 0; i < 100; i++) {
        char req[96], want[32];
        snprintf(req, sizeof req, "GET /n?%d HTTP/1.1\r\nHost: x\r\n\r\n", i);
        snprintf(want, sizeof want, "/n?%d", i);
        puts_(&c, req);
        resp r = get_resp(&c, false);
        check_resp(r, 200, want);
        assert_false(r.close);
    }
    assert_int_equal(conns(f), 1);
    dx_server_stats st;
    on_loop(f, do_stats, &st);
    assert_int_equal(st.accepted, 1);
    /* HTTP/1.0 keeps alive only when asked */
    puts_(&c, "GET /n?10 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    check_resp(get_resp(&c, false), 200, "/n?10");
    /* Connection: close is honoured: the answer says so, then EOF */
    puts_(&c, "GET /n?last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    resp r = get_resp(&c, false);
    check_resp(r, 200, "/n?last");
    assert_true(r.close);
    expect_eof(&c);
    hang_up(&c);
    /* HTTP/1.0 without keep-alive closes */
    c = dial(f, 0);
    puts_(&c, "GET /n?old HTTP/1.0\r\n\r\n");
    check_resp(get_resp(&c, false), 200, "/n?old");
    expect_eof(&c);
    hang_up(&c);
}

static void test_keepalive_limits(void **state)
{
    fx *f = *state;
    dx_server_options o = {.http_max_requests = 3, .http_keepalive_ms = 300};
    start(f, &o);
    cl c = dial(f, 0);
    for (int i = 0; i < 3; i++) {
        puts_(&c, "GET /n HTTP/1.1\r\nHost: x\r\n\r\n");
        resp r = get_resp(&c, false);
        check_resp(r, 200, "/n");
        assert_int_equal(r.close, i == 2); /* the third answer closes */
    }
    expect_eof(&c);
    hang_up(&c);
    /* idle past the keep-alive timeout: closed by the server */
    c = dial(f, 0);
    puts_(&c, "GET /n HTTP/1.1\r\nHost: x\r\n\r\n");
    check_resp(get_resp(&c, false), 200, "/n");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    expect_eof(&c);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("keep-alive idle close after %.2f s (http_keepalive_ms 300)\n", s);
    assert_true(s >= 0.2 && s < 10.0);
    hang_up(&c);
    wait_conns(f, 0);
}

static void test_pipelined_in_order(void **state)
{
    fx *f = *state;
    dx_server_options o = {0};
    start(f, &o);
    cl c = dial(f, 0);
    /* one write: immediate, posted (deferred) and body-carrying requests */
    puts_(&c, "GET /n?1 HTTP/1.1\r\nHost: x\r\n\r\n"
              "GET /post?2 HTTP/1.1\r\nHost: x\r\n\r\n"
              "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n3"
              "GET /post?4 HTTP/1.1\r\nHost: x\r\n\r\n"
              "GET /n?5 HTTP/1.1\r\nHost: x\r\n\r\n"
              "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n6\r\n0\r\n\r\n"
              "HEAD /n?7 HTTP/1.1\r\nHost: x\r\n\r\n"
              "GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"
              "GET /n?9 HTTP/1.1\r\nHost: x\r\n\r\n");
    check_resp(get_resp(&c, false), 200, "/n?1");
    check_resp(get_resp(&c, false), 200, "posted /post?2");
    check_resp(get_resp(&c, false), 200, "3");
    check_resp(get_resp(&c, false), 200, "posted /post?4");
    check_resp(get_resp(&c, false), 200, "/n?5");
    check_resp(get_resp(&c, false), 200, "6");
    resp r = get_resp(&c, true);
    check_resp(r, 200, "");
    assert_int_equal(r.clen, 4); /* HEAD: the length of what GET would send */
    check_resp(get_resp(&c, false), 404, NULL);
    check_resp(get_resp(&c, false), 200, "/n?9");
    /* the same, one byte per write */
    trickle(&c, "GET /post?a HTTP/1.1\r\nHost: x\r\n\r\nGET /n?b HTTP/1.1\r\nHost: x\r\n\r\n");
    check_resp(get_resp(&c, false), 200, "posted /post?a");
    check_resp(get_resp(&c, false), 200, "/n?b");
    hang_up(&c);
}

static void test_deferred_after_client_left(void **state)
{
    fx *f = *state;
    dx_server_options o = {0};
    start(f, &o);
    /* held, then answered from a posted function: the peer gets it */
    cl c = dial(f, 0);
    puts_(&c, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
    struct timespec dl;
    dx_test_deadline_in(&dl, WAIT_S * 1000);
    pthread_mutex_lock(&f->mu);
    while (f->held_seen < 1)
        wait_cv(f, &dl, "the loop thread");
    pthread_mutex_unlock(&f->mu);
    assert_int_equal(dx_loop_post(f->loop, answer_held, f), 0);
    check_resp(get_resp(&c, false), 200, "late");
    dx_test_deadline_in(&dl, WAIT_S * 1000);
    pthread_mutex_lock(&f->mu);
    while (!f->late_done) /* the reply returns after the bytes left */
        wait_cv(f, &dl, "the loop thread");
    int late_rc = f->late_rc;
    f->late_done = 0;
    pthread_mutex_unlock(&f->mu);
    assert_int_equal(late_rc, 0);
    /* held, the client leaves (and more requests were pipelined behind it):
     * the answer returns DX_ECLOSED and frees the handle */
    puts_(&c, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\nGET /n HTTP/1.1\r\n\r\n");
    dx_test_deadline_in(&dl, WAIT_S * 1000);
    pthread_mutex_lock(&f->mu);
    while (f->held_seen < 2)
        wait_cv(f, &dl, "the loop thread");
    pthread_mutex_unlock(&f->mu);
    hang_up(&c);
    wait_conns(f, 0); /* the server noticed while the answer was pending */
    assert_int_equal(dx_loop_post(f->loop, answer_held, f), 0);
    dx_test_deadline_in(&dl, WAIT_S * 1000);
    pthread_mutex_lock(&f->mu);
    while (!f->late_done)
        wait_cv(f, &dl, "the loop thread");
    late_rc = f->late_rc;
    pthread_mutex_unlock(&f->mu);
    assert_int_equal(late_rc, DX_ECLOSED);
    assert_true(logged(f, "peer closed before the answer"));
    /* held when the server is freed: the handle is detached, answered after */
    c = dial(f, 0);
    puts_(&c, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
    dx_test_deadline_in(&dl, WAIT_S * 1000);
    pthread_mutex_lock(&f->mu);
    while (f->held_seen < 3)
        wait_cv(f, &dl, "the loop thread");
    pthread_mutex_unlock(&f->mu);
    dx_loop_stop(f->loop);
    pthread_join(f->th, NULL);
    dx_server_free(f->srv);
    f->srv = NULL;
    assert_int_equal(dx_http_reply(f->held, 200, NULL, NULL, "x", 1), DX_ECLOSED);
    dx_loop_free(f->loop);
    f->loop = NULL;
    expect_eof(&c);
    hang_up(&c);
}

/* ---- tests: static files ------------------------------------------------------------------ */

static uint8_t pattern(size_t i) { return (uint8_t)(i * 131u + (i >> 12)); }

static void make_big(fx *f, char *path, size_t cap)
{
    snprintf(path, cap, "%s/big.bin", f->dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    uint8_t blk[65536];
    for (size_t off = 0; off < BIG; off += sizeof blk) {
        for (size_t i = 0; i < sizeof blk; i++)
            blk[i] = pattern(off + i);
        assert_int_equal(write(fd, blk, sizeof blk), (ssize_t)sizeof blk);
    }
    close(fd);
}

static long proc_field(const char *file, const char *key)
{
    FILE *fp = fopen(file, "r");
    assert_non_null(fp);
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, fp))
        if (strncmp(line, key, kl) == 0)
            v = strtol(line + kl, NULL, 10);
    fclose(fp);
    assert_true(v >= 0);
    return v;
}

static void test_static_big(void **state)
{
    fx *f = *state;
    char path[128];
    make_big(f, path, sizeof path);
    dx_server_options o = {.static_dir = f->dir};
    start(f, &o);
    /* HEAD: the length, no body, and the file is not read */
    long rchar0 = proc_field("/proc/self/io", "rchar: ");
    cl c = dial(f, 0);
    puts_(&c, "HEAD /big.bin HTTP/1.1\r\nHost: x\r\n\r\n");
    resp r = get_resp(&c, true);
    check_resp(r, 200, "");
    assert_int_equal(r.clen, BIG);
    long rchar1 = proc_field("/proc/self/io", "rchar: ");
    printf("HEAD of a %u-byte file: process read %ld bytes meanwhile\n", BIG, rchar1 - rchar0);
    assert_true(rchar1 - rchar0 < 64 * 1024);
    /* GET on the same connection: exact bytes (sendfile path) */
    puts_(&c, "GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n");
    dx_http_header h[32];
    dx_http_response hr;
    int hl;
    while ((hl = dx__http_parse_response((const char *)c.buf, c.len, &hr, h, 32, 0)) == DX_EAGAIN)
        assert_true(dx_test_peer_fill(&c) > 0);
    assert_int_equal(hr.status, 200);
    size_t got = 0, bad = 0;
    size_t have = c.len - (size_t)hl;
    for (size_t i = 0; i < have; i++)
        bad += c.buf[hl + i] != pattern(got + i);
    got += have;
    uint8_t in[65536];
    while (got < BIG) {
        ssize_t n = recv(c.fd, in, sizeof in < BIG - got ? sizeof in : BIG - got, 0);
        assert_true(n > 0);
        for (ssize_t i = 0; i < n; i++)
            bad += in[i] != pattern(got + (size_t)i);
        got += (size_t)n;
    }
    assert_int_equal(bad, 0);
    c.len = 0;
    /* still kept alive after 16 MiB */
    puts_(&c, "GET /n?after HTTP/1.1\r\nHost: x\r\n\r\n");
    check_resp(get_resp(&c, false), 200, "/n?after");
    hang_up(&c);
}

static void test_slow_gets_bounded(void **state)
{
    fx *f = *state;
    char path[128];
    make_big(f, path, sizeof path);
    dx_server_options o = {.static_dir = f->dir, .close_timeout_ms = 60000};
    start(f, &o);
    long rss0 = proc_field("/proc/self/status", "VmRSS:");
    enum { N = 16 };
    cl cs[N];
    for (int i = 0; i < N; i++) {
        cs[i] = dial(f, 4096);
        puts_(&cs[i], "GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    /* each got its head: every answer has started */
    for (int i = 0; i < N; i++) {
        dx_http_header h[32];
        dx_http_response hr;
        int hl;
        while ((hl = dx__http_parse_response((const char *)cs[i].buf, cs[i].len, &hr, h, 32, 0)) == DX_EAGAIN)
            assert_true(dx_test_peer_fill(&cs[i]) > 0);
        assert_int_equal(hr.status, 200);
    }
    /* wait until the server stops making progress (the sockets are full) */
    dx_server_stats st;
    uint64_t last = 0;
    int stable = 0;
    for (int i = 0; stable < 5; i++) {
        assert_true(i < WAIT_S * 20);
        usleep(50000);
        on_loop(f, do_stats, &st);
        stable = st.bytes_out == last ? stable + 1 : 0;
        last = st.bytes_out;
    }
    long rss1 = proc_field("/proc/self/status", "VmRSS:");
    printf("16 slow GETs of a 16 MiB file: server sent %llu bytes, then stalled; VmRSS %ld KiB → %ld KiB (+%ld)\n",
           (unsigned long long)st.bytes_out, rss0, rss1, rss1 - rss0);
    /* send_max is 1 MiB: far below 16 x 16 MiB, and below 16 x send_max + 8 MiB */
    assert_true(rss1 - rss0 < 16 * 1024 + 8 * 1024);
    assert_true(st.bytes_out < (uint64_t)N * BIG);
    /* a normal client is served meanwhile */
    cl c = dial(f, 0);
    puts_(&c, "GET /n?meanwhile HTTP/1.1\r\nHost: x\r\n\r\n");
    check_resp(get_resp(&c, false), 200, "/n?meanwhile");
    hang_up(&c);
    for (int i = 0; i < N; i++)
        hang_up(&cs[i]);
    wait_conns(f, 0);
}

/* ---- every allocation fails once ------------------------------------------------------ */

/* An allocator that fails the Nth allocation made on the loop's thread
 * (posts from the test thread allocate too: they are not counted), and
 * counts live blocks from every thread. */
static _Atomic long t_live, t_calls, t_fail_at, t_max;
static pthread_t t_loop;
static _Atomic int t_loop_known;

static void *t_realloc(void *ud, void *p, size_t n)
{
    (void)ud;
    if (n == 0) {
        if (p) {
            t_live--;
            free(p);
        }
        return NULL;
    }
    if (t_loop_known && pthread_equal(pthread_self(), t_loop)) {
        long k = ++t_calls;
        if (t_fail_at && k == t_fail_at)
            return NULL;
        if ((long)n > t_max)
            t_max = (long)n;
    }
    void *q = realloc(p, n);
    if (q && !p)
        t_live++;
    return q;
}

static int t_random(void *ud, void *buf, size_t len)
{
    (void)ud;
    memset(buf, 0x5a, len);
    return 0;
}

static uint64_t t_now(void *ud)
{
    (void)ud;
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static const dx_seams t_seams = {.realloc = t_realloc, .random = t_random, .now_ns = t_now};

static void do_arm(fx *f, void *arg)
{
    (void)f;
    long n = *(long *)arg;
    t_fail_at = t_calls + n;
}

static void do_failed(fx *f, void *arg)
{
    (void)f;
    *(int *)arg = t_calls >= t_fail_at;
    t_fail_at = 0;
}

static void test_alloc_failures(void **state)
{
    fx *f = *state;
    t_live = t_calls = t_fail_at = 0;
    t_loop_known = 0;
    f->seams = &t_seams;
    dx_server_options o = {0};
    start(f, &o);
    t_loop = f->th;
    t_loop_known = 1;
    long n;
    int failed = 1;
    for (n = 1; failed && n < 200; n++) {
        on_loop(f, do_arm, &n);
        cl c = dial(f, 0);
        puts_(&c, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n");
        puts_maybe(&c, "\r\n5\r\nhello\r\n0\r\n\r\nGET /post?x HTTP/1.1\r\n\r\n"
                  "GET /n?y HTTP/1.1\r\nConnection: close\r\n\r\n");
        expect_eof(&c); /* all three answers then FIN, or a drop: either way an end */
        hang_up(&c);
        wait_conns(f, 0);
        on_loop(f, do_failed, &failed);
        c = dial(f, 0);
        puts_(&c, "GET /n?ok HTTP/1.1\r\nHost: x\r\n\r\n");
        check_resp(get_resp(&c, false), 200, "/n?ok");
        hang_up(&c);
    }
    printf("allocation failures injected: %ld (the run after them needed no more)\n", n - 2);
    assert_true(n > 5 && n < 200);
    wait_conns(f, 0);
    dx_loop_stop(f->loop);
    pthread_join(f->th, NULL);
    dx_server_free(f->srv);
    dx_loop_free(f->loop);
    f->loop = NULL;
    assert_int_equal(t_live, 0);
}

/* A head that arrives in pieces costs what it holds, not max_head: its
 * buffer starts at 512 bytes and doubles. */
static void test_head_buffer_grows(void **state)
{
    fx *f = *state;
    t_live = t_calls = t_fail_at = t_max = 0;
    t_loop_known = 0;
    f->seams = &t_seams;
    dx_server_options o = {.max_head = 1u << 20};
    start(f, &o);
    t_loop = f->th;
    t_loop_known = 1;
    /* Warm-up: the loop's one-time state (the ws layer's write arena, its
     * pools) is allocated by the first answer, not counted below. */
    cl w = dial(f, 0);
    puts_(&w, "GET /n?warm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    check_resp(get_resp(&w, false), 200, "/n?warm");
    hang_up(&w);
    wait_conns(f, 0);
    t_max = 0;
    cl c = dial(f, 0);
    long calls0 = t_calls;
    puts_(&c, "GET /n?grow HTTP/1.1\r\nHost: x\r\n");
    /* the server allocated the head buffer once it read these bytes */
    for (int i = 0; t_calls == calls0; i++) {
        assert_true(i < WAIT_S * 200);
        usleep(5000);
    }
    long first = t_max;
    char line[64];
    memset(line, 'v', sizeof line);
    for (int i = 0; i < 60; i++) { /* about 3.6 KiB more, in 60 pieces */
        char h[96];
        snprintf(h, sizeof h, "X-%02d: %.50s\r\n", i, line);
        puts_(&c, h);
    }
    puts_(&c, "\r\n");
    check_resp(get_resp(&c, false), 200, "/n?grow");
    printf("head of ~3.7 KiB in 61 pieces, max_head 1 MiB: first head buffer %ld bytes, largest allocation %ld\n",
           first, (long)t_max);
    assert_true(first < 2048);
    assert_true(t_max < 16384);
    hang_up(&c);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress visible even when piped */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bodies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_cap_and_bad_chunks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_100, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deferred_after_client_left, setup, teardown),
        cmocka_unit_test_setup_teardown(test_static_big, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slow_gets_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_alloc_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head_buffer_grows, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
