/*
 * tests/unit/test_tls.c: src/net/tls.c — the TLS transport under a real
 * dx_server: certificate loading errors, SNI choosing among certificates,
 * ALPN, a WebSocket session (echo, large messages, close handshake) over
 * TLS, a client that does not speak TLS, and certificate reload
 * (dx_server_reload_tls) with connections open and mid-handshake.
 *
 * Certificates are generated per run with the `openssl` command into a
 * temporary directory (EC P-256, self-signed; the client does not verify
 * the chain, it checks which certificate the server chose). The client
 * side is OpenSSL in blocking mode plus the sans-I/O helpers of src/proto.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "duplex/server.h"
#include "net/transport.h"
#include "proto/frame.h"
#include "proto/handshake.h"
#include "proto/http.h"
#include "proto/mask.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WAIT_MS 15000

static char g_dir[64];
static char g_crt[2][128], g_key[2][128];

static int make_cert(const char *name, const char *crt, const char *key)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
             "-subj /CN=%s -addext subjectAltName=DNS:%s -keyout '%s' -out '%s' >/dev/null 2>&1",
             name, name, key, crt);
    return system(cmd);
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/dx_tls_XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    const char *names[2] = {"a.test", "b.test"};
    for (int i = 0; i < 2; i++) {
        snprintf(g_crt[i], sizeof g_crt[i], "%s/%s.crt", g_dir, names[i]);
        snprintf(g_key[i], sizeof g_key[i], "%s/%s.key", g_dir, names[i]);
        if (make_cert(names[i], g_crt[i], g_key[i]) != 0) {
            fprintf(stderr, "test_tls: the openssl command failed\n");
            return -1;
        }
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    return dx_test_rm_rf(g_dir);
}

/* ---- certificate loading --------------------------------------------------------- */

static void test_ctx_errors(void **state)
{
    (void)state;
    char why[512];
    int err = 0;
    dx_tls_cert good[2] = {{g_crt[0], g_key[0]}, {g_crt[1], g_key[1]}};
    dx__tls_ctx *ctx = dx__tls_server_ctx_new(good, 2, why, sizeof why, &err);
    assert_non_null(ctx);
    dx__tls_ctx_free(ctx);
    dx__tls_ctx_free(NULL);

    dx_tls_cert missing = {"/nonexistent/dx.crt", g_key[0]};
    why[0] = 0;
    assert_null(dx__tls_server_ctx_new(&missing, 1, why, sizeof why, &err));
    assert_int_equal(err, DX_ETLS);
    assert_true(strlen(why) > 0);

    dx_tls_cert nokey = {g_crt[0], "/nonexistent/dx.key"};
    assert_null(dx__tls_server_ctx_new(&nokey, 1, why, sizeof why, &err));
    assert_int_equal(err, DX_ETLS);

    dx_tls_cert mismatch = {g_crt[0], g_key[1]}; /* a's certificate, b's key */
    why[0] = 0;
    assert_null(dx__tls_server_ctx_new(&mismatch, 1, why, sizeof why, &err));
    assert_int_equal(err, DX_ETLS);
    assert_true(strlen(why) > 0);

    /* through the public API */
    dx_loop_options lo = {.log = &dx_test_quiet_log};
    dx_loop *loop = dx_loop_new(&lo, NULL);
    assert_non_null(loop);
    dx_server_options o = {.host = "127.0.0.1", .port = DX_PORT_EPHEMERAL, .tls = &mismatch, .n_tls = 1};
    assert_null(dx_server_new(loop, &o, &err));
    assert_int_equal(err, DX_ETLS);
    dx_loop_free(loop);
}

/* ---- a TLS server in a thread ------------------------------------------------------ */

typedef struct tfx {
    dx_loop *loop;
    dx_server *srv;
    pthread_t th;
    unsigned port;
    _Atomic int opens, closes, messages;
    _Atomic unsigned last_code;
    _Atomic int stats_done;
    dx_server_stats st;
    dx_conn *paused; /* loop thread: the connection that asked to be paused */
    _Atomic int pause_rc, resumed;
} tfx;

static void t_open(dx_conn *c, void *ud)
{
    (void)c;
    atomic_fetch_add(&((tfx *)ud)->opens, 1);
}

static void t_message(dx_conn *c, int op, const uint8_t *p, size_t len, void *ud)
{
    tfx *f = ud;
    atomic_fetch_add(&f->messages, 1);
    (void)dx_conn_send(c, op, p, len);
    if (op == DX_OP_TEXT && len == 5 && memcmp(p, "pause", 5) == 0) {
        f->paused = c;
        atomic_store(&f->pause_rc, dx_conn_pause(c) == 0 ? 1 : -1);
    }
}

static void t_close(dx_conn *c, unsigned code, const char *r, size_t len, void *ud)
{
    (void)c;
    (void)r;
    (void)len;
    tfx *f = ud;
    atomic_store(&f->last_code, code);
    atomic_fetch_add(&f->closes, 1);
}

static void *t_thread(void *p)
{
    (void)dx_loop_run(((tfx *)p)->loop);
    return NULL;
}

static int t_setup(void **state)
{
    tfx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    dx_loop_options lo = {.log = &dx_test_quiet_log};
    f->loop = dx_loop_new(&lo, NULL);
    assert_non_null(f->loop);
    dx_tls_cert certs[2] = {{g_crt[0], g_key[0]}, {g_crt[1], g_key[1]}};
    dx_server_options o = {.host = "127.0.0.1", .port = DX_PORT_EPHEMERAL, .tls = certs, .n_tls = 2,
                           .handshake_timeout_ms = 2000, .max_message = 8u << 20, .send_max = 16u << 20,
                           .ping_interval_ms = (unsigned)-1, /* no heartbeat read could hide a stall */
                           .ud = f};
    o.cb.on_open = t_open;
    o.cb.on_message = t_message;
    o.cb.on_close = t_close;
    int err = 1;
    f->srv = dx_server_new(f->loop, &o, &err);
    assert_non_null(f->srv);
    assert_int_equal(dx_server_start(f->srv), 0);
    f->port = dx_server_port(f->srv);
    assert_int_equal(pthread_create(&f->th, NULL, t_thread, f), 0);
    *state = f;
    return 0;
}

static int t_teardown(void **state)
{
    tfx *f = *state;
    dx_loop_stop(f->loop);
    pthread_join(f->th, NULL);
    dx_server_free(f->srv);
    dx_loop_free(f->loop);
    free(f);
    return 0;
}

static void get_stats(void *p)
{
    tfx *f = p;
    dx_server_stats_get(f->srv, &f->st);
    atomic_store(&f->stats_done, 1);
}

static dx_server_stats stats(tfx *f)
{
    atomic_store(&f->stats_done, 0);
    assert_int_equal(dx_loop_post(f->loop, get_stats, f), 0);
    uint64_t t0 = dx_test_mono_ms();
    while (!atomic_load(&f->stats_done)) {
        assert_true(dx_test_mono_ms() - t0 < WAIT_MS);
        usleep(1000);
    }
    return f->st;
}

static void wait_atomic(_Atomic int *v, int want)
{
    uint64_t t0 = dx_test_mono_ms();
    while (atomic_load(v) < want) {
        assert_true(dx_test_mono_ms() - t0 < WAIT_MS);
        usleep(2000);
    }
}

/* ---- the TLS client ------------------------------------------------------------------- */

typedef struct tcl {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    uint8_t *buf;
    size_t len, cap;
} tcl;

static int tcp_connect(unsigned port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct timeval tv = {.tv_sec = WAIT_MS / 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

/* Connects with TLS, offering SNI `sni` (NULL: none) and ALPN http/1.1.
 * Returns the CN of the certificate the server chose. */
static void tcl_open_fd(tcl *c, int fd, const char *sni, char *cn, size_t cn_cap, char *alpn, size_t alpn_cap);
static void tcl_open(tcl *c, unsigned port, const char *sni, char *cn, size_t cn_cap, char *alpn, size_t alpn_cap)
{
    tcl_open_fd(c, tcp_connect(port), sni, cn, cn_cap, alpn, alpn_cap);
}

/* The same on a TCP connection already made. */
static void tcl_open_fd(tcl *c, int fd, const char *sni, char *cn, size_t cn_cap, char *alpn, size_t alpn_cap)
{
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(c->ctx);
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
    static const unsigned char protos[] = "\x08http/1.1";
    assert_int_equal(SSL_CTX_set_alpn_protos(c->ctx, protos, sizeof protos - 1), 0);
    c->ssl = SSL_new(c->ctx);
    assert_non_null(c->ssl);
    if (sni)
        assert_int_equal(SSL_set_tlsext_host_name(c->ssl, sni), 1);
    assert_int_equal(SSL_set_fd(c->ssl, c->fd), 1);
    assert_int_equal(SSL_connect(c->ssl), 1);
    X509 *peer = SSL_get1_peer_certificate(c->ssl);
    assert_non_null(peer);
    cn[0] = 0;
    X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn, (int)cn_cap);
    X509_free(peer);
    const unsigned char *ap = NULL;
    unsigned al = 0;
    SSL_get0_alpn_selected(c->ssl, &ap, &al);
    snprintf(alpn, alpn_cap, "%.*s", (int)al, ap ? (const char *)ap : "");
    c->cap = 1u << 20;
    c->buf = malloc(c->cap);
    assert_non_null(c->buf);
}

static void tcl_free(tcl *c)
{
    if (c->ssl)
        SSL_free(c->ssl);
    if (c->ctx)
        SSL_CTX_free(c->ctx);
    if (c->fd >= 0)
        close(c->fd);
    free(c->buf);
    memset(c, 0, sizeof *c);
    c->fd = -1;
}

static void tcl_send(tcl *c, const void *p, size_t len)
{
    size_t w = 0;
    assert_int_equal(SSL_write_ex(c->ssl, p, len, &w), 1);
    assert_int_equal(w, len);
}

/* > 0 bytes; 0 at the end of the stream (close_notify or EOF). */
static int tcl_fill(tcl *c)
{
    if (c->len == c->cap) {
        c->cap *= 2;
        c->buf = realloc(c->buf, c->cap);
        assert_non_null(c->buf);
    }
    size_t r = 0;
    if (SSL_read_ex(c->ssl, c->buf + c->len, c->cap - c->len, &r) == 1) {
        c->len += r;
        return 1;
    }
    int e = SSL_get_error(c->ssl, 0);
    if (e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL)
        return 0;
    fail_msg("TLS read failed: SSL error %d", e);
    return -1;
}

static void tcl_need(tcl *c, size_t n)
{
    while (c->len < n)
        if (tcl_fill(c) <= 0)
            fail_msg("TLS client: end of stream with %zu of %zu bytes", c->len, n);
}

static void tcl_consume(tcl *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

static void tcl_handshake(tcl *c, unsigned port)
{
    dx_ws_client_opts o = {.host = "a.test", .port = port, .tls = true, .path = "/tls"};
    char req[2048], key[25];
    int n = dx__ws_client_request(req, sizeof req, &o, NULL, key);
    assert_true(n > 0);
    tcl_send(c, req, (size_t)n);
    size_t hl = 0;
    for (;;) {
        for (size_t i = 0; i + 4 <= c->len && !hl; i++)
            if (memcmp(c->buf + i, "\r\n\r\n", 4) == 0)
                hl = i + 4;
        if (hl)
            break;
        assert_true(tcl_fill(c) > 0);
    }
    dx_http_header h[32];
    dx_http_response resp;
    assert_int_equal(dx__http_parse_response((const char *)c->buf, hl, &resp, h, 32, 0), (int)hl);
    assert_int_equal(resp.status, 101);
    const char *p;
    size_t pl, ne;
    dx_ws_ext_offer exts[2];
    assert_int_equal(dx__ws_client_check(&resp, key, &o, &p, &pl, exts, 2, &ne), 0);
    tcl_consume(c, hl);
}

static void tcl_frame(tcl *c, unsigned op, const void *data, size_t len)
{
    uint8_t *b = malloc(len + DX_FRAME_HEADER_MAX);
    assert_non_null(b);
    const uint8_t key[4] = {9, 8, 7, 6};
    size_t hl = dx__frame_header_write(b, op, true, 0, len, key);
    dx__mask_copy(b + hl, data, len, key, 0);
    tcl_send(c, b, hl + len);
    free(b);
}

/* One server frame: opcode `op` and payload `data` (NULL: a close frame
 * whose code is `len`, reason not checked). */
static void tcl_expect(tcl *c, unsigned op, const void *data, size_t len)
{
    tcl_need(c, 2);
    assert_int_equal(c->buf[0], 0x80 | op);
    uint64_t l = c->buf[1] & 0x7F;
    size_t hl = 2;
    if (l == 126) {
        tcl_need(c, 4);
        l = (uint64_t)c->buf[2] << 8 | c->buf[3];
        hl = 4;
    } else if (l == 127) {
        tcl_need(c, 10);
        l = 0;
        for (int i = 0; i < 8; i++)
            l = l << 8 | c->buf[2 + i];
        hl = 10;
    }
    if (!data) {
        assert_true(l >= 2 && l <= 125);
        tcl_need(c, hl + (size_t)l);
        assert_int_equal((unsigned)c->buf[hl] << 8 | c->buf[hl + 1], len);
        tcl_consume(c, hl + (size_t)l);
        return;
    }
    assert_int_equal(l, len);
    tcl_need(c, hl + len);
    if (len)
        assert_memory_equal(c->buf + hl, data, len);
    tcl_consume(c, hl + len);
}

/* ---- tests over TLS ---------------------------------------------------------------------- */

static void test_sni_and_alpn(void **state)
{
    tfx *f = *state;
    struct {
        const char *sni, *cn;
    } cases[] = {{"b.test", "b.test"}, {"a.test", "a.test"}, {NULL, "a.test"}, {"other.test", "a.test"}};
    for (size_t i = 0; i < 4; i++) {
        tcl c;
        char cn[64], alpn[32];
        tcl_open(&c, f->port, cases[i].sni, cn, sizeof cn, alpn, sizeof alpn);
        assert_string_equal(cn, cases[i].cn);
        assert_string_equal(alpn, "http/1.1");
        tcl_free(&c);
    }
}

static void test_echo_and_close_over_tls(void **state)
{
    tfx *f = *state;
    tcl c;
    char cn[64], alpn[32];
    tcl_open(&c, f->port, "b.test", cn, sizeof cn, alpn, sizeof alpn);
    tcl_handshake(&c, f->port);
    wait_atomic(&f->opens, 1);
    tcl_frame(&c, DX_OP_TEXT, "over tls", 8);
    tcl_expect(&c, DX_OP_TEXT, "over tls", 8);
    /* larger than a TLS record (16 KiB): several records each way */
    size_t n = 300000;
    uint8_t *m = malloc(n);
    assert_non_null(m);
    for (size_t i = 0; i < n; i++)
        m[i] = (uint8_t)(i * 13 + 1);
    for (int k = 0; k < 3; k++)
        tcl_frame(&c, DX_OP_BINARY, m, n);
    for (int k = 0; k < 3; k++)
        tcl_expect(&c, DX_OP_BINARY, m, n);
    free(m);
    tcl_frame(&c, DX_OP_PING, "pp", 2);
    tcl_expect(&c, DX_OP_PONG, "pp", 2);
    const uint8_t close_payload[] = {0x03, 0xE8, 'o', 'k'};
    tcl_frame(&c, DX_OP_CLOSE, close_payload, sizeof close_payload);
    tcl_expect(&c, DX_OP_CLOSE, NULL, 1000);
    /* then close_notify / EOF */
    assert_int_equal(c.len, 0);
    assert_int_equal(tcl_fill(&c), 0);
    tcl_free(&c);
    wait_atomic(&f->closes, 1);
    assert_int_equal(atomic_load(&f->last_code), 1000);
    assert_int_equal(atomic_load(&f->messages), 4);
    dx_server_stats s = stats(f);
    assert_int_equal(s.handshakes_failed, 0);
    assert_int_equal(s.messages_in, 4);
    assert_int_equal(s.messages_out, 4);
    assert_true(s.bytes_in > 3 * 300000);
}

/* Holds the server's loop until the client has written everything. */
static _Atomic int g_blocked, g_release;

static void block_loop(void *arg)
{
    (void)arg;
    atomic_store(&g_blocked, 1);
    while (!atomic_load(&g_release)) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

/* One wake-up reads at most 4 x 256 KiB. When exactly that much is read and
 * the rest of the last TLS record sits inside OpenSSL (the socket is empty),
 * epoll will not report it: the server must come back for it by itself (it
 * once stalled until the next heartbeat). Layout: a 106-byte frame, then a
 * frame of 1 MiB on the wire, so byte 1 MiB falls 106 bytes before the end
 * of a record. */
static void test_large_burst_over_tls(void **state)
{
    tfx *f = *state;
    tcl c;
    char cn[64], alpn[32];
    tcl_open(&c, f->port, "a.test", cn, sizeof cn, alpn, sizeof alpn);
    tcl_handshake(&c, f->port);
    wait_atomic(&f->opens, 1);
    atomic_store(&g_blocked, 0);
    atomic_store(&g_release, 0);
    assert_int_equal(dx_loop_post(f->loop, block_loop, NULL), 0);
    while (!atomic_load(&g_blocked)) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    uint8_t small[100];
    memset(small, 's', sizeof small);
    tcl_frame(&c, DX_OP_BINARY, small, sizeof small);        /* 6 + 100 bytes, its own record */
    size_t n = (1u << 20) - DX_FRAME_HEADER_MAX;               /* 14-byte header: 1 MiB on the wire */
    uint8_t *m = malloc(n);
    assert_non_null(m);
    for (size_t i = 0; i < n; i++)
        m[i] = (uint8_t)(i * 7 + 3);
    tcl_frame(&c, DX_OP_BINARY, m, n);
    atomic_store(&g_release, 1);
    tcl_expect(&c, DX_OP_BINARY, small, sizeof small);
    tcl_expect(&c, DX_OP_BINARY, m, n); /* a stall fails at the socket's receive timeout */
    free(m);
    tcl_free(&c);
}

static void do_resume(void *arg)
{
    tfx *f = arg;
    atomic_store(&f->resumed, dx_conn_resume(f->paused) == 0 ? 1 : -1);
}

/* Paused from on_message in the middle of a burst of TLS records: what was
 * decrypted stays queued, what sits inside OpenSSL (invisible to epoll)
 * and in the socket waits; resume delivers all of it, in order. Written
 * while the loop is held, so the server gets the burst in one go: n = 60
 * fits in one read (the socket is then empty: only the resume itself can
 * bring the rest), n = 100 does not. */
static void pause_burst(tfx *f, tcl *c, int n, int base)
{
    atomic_store(&g_blocked, 0);
    atomic_store(&g_release, 0);
    atomic_store(&f->pause_rc, 0);
    atomic_store(&f->resumed, 0);
    assert_int_equal(dx_loop_post(f->loop, block_loop, NULL), 0);
    while (!atomic_load(&g_blocked)) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    enum { SIZE = 3000 };
    tcl_frame(c, DX_OP_TEXT, "pause", 5);
    uint8_t m[SIZE];
    for (int i = 0; i < n; i++) {
        memset(m, 'a' + i % 26, sizeof m);
        m[0] = (uint8_t)i;
        tcl_frame(c, DX_OP_BINARY, m, sizeof m); /* one record each */
    }
    atomic_store(&g_release, 1);
    tcl_expect(c, DX_OP_TEXT, "pause", 5);
    wait_atomic(&f->pause_rc, 1);
    /* Two trips through the loop: nothing more is delivered while paused. */
    (void)stats(f);
    (void)stats(f);
    assert_int_equal(atomic_load(&f->messages), base + 1);
    assert_int_equal(stats(f).messages_in, (uint64_t)base + 1);
    assert_int_equal(dx_loop_post(f->loop, do_resume, f), 0);
    wait_atomic(&f->resumed, 1);
    for (int i = 0; i < n; i++) {
        memset(m, 'a' + i % 26, sizeof m);
        m[0] = (uint8_t)i;
        tcl_expect(c, DX_OP_BINARY, m, sizeof m); /* a stall fails at the receive timeout */
    }
    assert_int_equal(atomic_load(&f->messages), base + 1 + n);
}

static void test_pause_resume_over_tls(void **state)
{
    tfx *f = *state;
    tcl c;
    char cn[64], alpn[32];
    tcl_open(&c, f->port, "a.test", cn, sizeof cn, alpn, sizeof alpn);
    tcl_handshake(&c, f->port);
    wait_atomic(&f->opens, 1);
    pause_burst(f, &c, 60, 0);
    pause_burst(f, &c, 100, 61);
    tcl_free(&c);
}

static void test_plain_client_on_tls_port(void **state)
{
    tfx *f = *state;
    int fd = tcp_connect(f->port);
    const char *req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(send(fd, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
    /* the server gives up (maybe after an alert) and closes */
    char b[512];
    for (;;) {
        ssize_t r = recv(fd, b, sizeof b, 0);
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            break;
        assert_true(r > 0);
    }
    close(fd);
    uint64_t t0 = dx_test_mono_ms();
    while (stats(f).handshakes_failed < 1) {
        assert_true(dx_test_mono_ms() - t0 < WAIT_MS);
        usleep(2000);
    }
    assert_int_equal(atomic_load(&f->opens), 0);
    /* a client that connects and says nothing is dropped at the handshake timeout */
    fd = tcp_connect(f->port);
    for (;;) {
        ssize_t r = recv(fd, b, sizeof b, 0);
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            break;
        assert_true(r > 0);
    }
    close(fd);
    t0 = dx_test_mono_ms();
    while (stats(f).handshakes_failed < 2) {
        assert_true(dx_test_mono_ms() - t0 < WAIT_MS);
        usleep(2000);
    }
    /* the server still serves TLS clients */
    tcl c;
    char cn[64], alpn[32];
    tcl_open(&c, f->port, NULL, cn, sizeof cn, alpn, sizeof alpn);
    tcl_handshake(&c, f->port);
    wait_atomic(&f->opens, 1);
    tcl_free(&c); /* dropped without a close frame: 1006 */
    wait_atomic(&f->closes, 1);
    assert_int_equal(atomic_load(&f->last_code), DX_CLOSE_ABNORMAL);
}

/* ---- certificate reload (dx_server_reload_tls) ---------------------------------------- */

static _Atomic size_t g_nconns;
static _Atomic int g_nconns_done;

static void get_nconns(void *p)
{
    atomic_store(&g_nconns, dx_server_connections(((tfx *)p)->srv));
    atomic_store(&g_nconns_done, 1);
}

/* Waits until the server counts `want` connections (accepted ones included). */
static void wait_conns(tfx *f, size_t want)
{
    uint64_t t0 = dx_test_mono_ms();
    for (;;) {
        atomic_store(&g_nconns_done, 0);
        assert_int_equal(dx_loop_post(f->loop, get_nconns, f), 0);
        while (!atomic_load(&g_nconns_done)) {
            assert_true(dx_test_mono_ms() - t0 < WAIT_MS);
            usleep(1000);
        }
        if (atomic_load(&g_nconns) == want)
            return;
        assert_true(dx_test_mono_ms() - t0 < WAIT_MS);
        usleep(2000);
    }
}

static void expect_cn(tfx *f, const char *sni, const char *want)
{
    tcl c;
    char cn[64], alpn[32];
    tcl_open(&c, f->port, sni, cn, sizeof cn, alpn, sizeof alpn);
    assert_string_equal(cn, want);
    tcl_free(&c);
}

/* The certificates are swapped from this (non-loop) thread for the
 * handshakes that start afterwards; an open connection and one accepted
 * before the swap whose handshake (with its SNI callback) runs after it
 * keep the old context, which is freed once they close (ASan: no leak, no
 * use after free). Bad files are refused and the current certificates stay. */
static void test_reload_tls(void **state)
{
    tfx *f = *state;
    char cn[64], alpn[32], why[256];
    tcl open_c;
    tcl_open(&open_c, f->port, NULL, cn, sizeof cn, alpn, sizeof alpn);
    assert_string_equal(cn, "a.test");
    tcl_handshake(&open_c, f->port);
    wait_atomic(&f->opens, 1);
    int early = tcp_connect(f->port);
    wait_conns(f, 2); /* accepted: its SSL exists, its handshake has not begun */

    dx_tls_cert only_b[1] = {{g_crt[1], g_key[1]}};
    assert_int_equal(dx_server_reload_tls(f->srv, only_b, 1, why, sizeof why), 0);
    expect_cn(f, NULL, "b.test");
    expect_cn(f, "a.test", "b.test"); /* a is gone from the new list */

    /* the early connection's handshake runs on the old context: SNI a.test still finds a */
    tcl e;
    tcl_open_fd(&e, early, "a.test", cn, sizeof cn, alpn, sizeof alpn);
    assert_string_equal(cn, "a.test");
    tcl_handshake(&e, f->port);
    tcl_frame(&e, DX_OP_TEXT, "early", 5);
    tcl_expect(&e, DX_OP_TEXT, "early", 5);
    /* the connection open before the reload carries on */
    tcl_frame(&open_c, DX_OP_TEXT, "still", 5);
    tcl_expect(&open_c, DX_OP_TEXT, "still", 5);

    /* refused: a key that does not match, a missing file, nothing */
    dx_tls_cert mismatch[1] = {{g_crt[1], g_key[0]}};
    why[0] = 0;
    assert_int_equal(dx_server_reload_tls(f->srv, mismatch, 1, why, sizeof why), DX_ETLS);
    assert_non_null(strstr(why, "private key"));
    dx_tls_cert missing[1] = {{"/nonexistent/x.crt", g_key[0]}};
    assert_int_equal(dx_server_reload_tls(f->srv, missing, 1, why, sizeof why), DX_ETLS);
    assert_non_null(strstr(why, "/nonexistent/x.crt"));
    assert_int_equal(dx_server_reload_tls(f->srv, only_b, 0, NULL, 0), DX_EINVAL);
    expect_cn(f, NULL, "b.test");

    /* two swaps before any accept: the first, never used, is freed */
    dx_tls_cert both[2] = {{g_crt[0], g_key[0]}, {g_crt[1], g_key[1]}};
    assert_int_equal(dx_server_reload_tls(f->srv, only_b, 1, NULL, 0), 0);
    assert_int_equal(dx_server_reload_tls(f->srv, both, 2, NULL, 0), 0);
    expect_cn(f, NULL, "a.test");
    expect_cn(f, "b.test", "b.test");
    /* one left pending at free time is freed with the server (teardown) */
    assert_int_equal(dx_server_reload_tls(f->srv, only_b, 1, NULL, 0), 0);
    tcl_free(&e);
    tcl_free(&open_c);
}

/* A server without TLS cannot get certificates by a reload. */
static void test_reload_tls_plain_server(void **state)
{
    (void)state;
    dx_loop_options lo = {.log = &dx_test_quiet_log};
    dx_loop *loop = dx_loop_new(&lo, NULL);
    assert_non_null(loop);
    dx_server_options o = {.host = "127.0.0.1", .port = DX_PORT_EPHEMERAL};
    dx_server *srv = dx_server_new(loop, &o, NULL);
    assert_non_null(srv);
    char why[256];
    dx_tls_cert c[1] = {{g_crt[0], g_key[0]}};
    assert_int_equal(dx_server_reload_tls(srv, c, 1, why, sizeof why), DX_EINVAL);
    assert_non_null(strstr(why, "restart"));
    dx_server_free(srv);
    dx_loop_free(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ctx_errors),
        cmocka_unit_test_setup_teardown(test_sni_and_alpn, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_echo_and_close_over_tls, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_large_burst_over_tls, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_plain_client_on_tls_port, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_pause_resume_over_tls, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_reload_tls, t_setup, t_teardown),
        cmocka_unit_test(test_reload_tls_plain_server),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
