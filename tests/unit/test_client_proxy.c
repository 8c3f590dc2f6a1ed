/*
 * tests/unit/test_client_proxy.c: src/ws/client.c — the client's TLS setup
 * (verification with a CA file, by name and by IP, unknown CA, wrong host,
 * insecure, plain client to a TLS server) and its HTTP CONNECT proxy (plain
 * and TLS through the tunnel, 407, a refused proxy), against a real
 * dx_server on one dx_loop in its own thread (client_fx.[ch]), loopback only.
 *
 * TLS certificates come from the `openssl` command, made per run in a
 * temporary directory (a test CA; a certificate for "a.test" and one for IP
 * 127.0.0.1 + DNS localhost, both signed by it). The HTTP CONNECT proxy is a
 * small blocking relay on its own thread.
 */
#define _GNU_SOURCE
#include "client_fx.h"

static char g_dir[64];
static char g_ca[128], g_a_crt[128], g_a_key[128], g_ip_crt[128], g_ip_key[128];

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
    return dx_test_rm_rf(g_dir);
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

#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
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
    };
    dx_test_filter_from_env();
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
