/*
 * tests/unit/test_server.c: src/ws/server.c, upgrade.c and http.c — the
 * server endpoint: the upgrade as the application sees it (view, protocol,
 * refusal, bad handshakes), plain HTTP (answers at once and later, static
 * files), a Unix socket, each connection's remote address, option
 * validation and every allocation of dx_server_new failing once. The
 * connection itself (messages, closing, backpressure, timeouts) is tested in
 * test_conn.c; the fixture both use is server_fx.[ch]: a real dx_loop +
 * dx_server on 127.0.0.1 (ephemeral port) or a Unix socket, running in its
 * own thread, against a client written with blocking sockets and the
 * sans-I/O helpers of src/proto (handshake request and check, frame headers,
 * masking) or raw bytes.
 *
 * Callbacks run on the loop's thread: they only record events (under a
 * mutex) and never assert; the test thread waits for events with a generous
 * deadline instead of sleeping. Work that must run on the loop's thread
 * (shutdown, counters) is posted with dx_loop_post and waited for.
 */
#define _GNU_SOURCE
#include "server_fx.h"
#include "ws/ws.h"

#include <arpa/inet.h>
#include <netinet/tcp.h>

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

static char remote_a[64], remote_b[64];
static int nodelay_a = -1;

static void do_remotes(sfx *f, void *arg)
{
    (void)arg;
    /* an accepted socket has TCP_NODELAY, inherited from the listener */
    int v = 0;
    socklen_t vl = sizeof v;
    nodelay_a = getsockopt(f->conns[0]->io.fd, IPPROTO_TCP, TCP_NODELAY, &v, &vl) == 0 ? v : -1;
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
    assert_int_equal(nodelay_a, 1);
    /* IPv4 is formatted by hand (conn.c): exactly "127.0.0.1:PORT", the
     * port the client's socket got */
    char want1[64], want2[64];
    struct sockaddr_in la;
    socklen_t ll = sizeof la;
    assert_int_equal(getsockname(c1->fd, (struct sockaddr *)&la, &ll), 0);
    snprintf(want1, sizeof want1, "127.0.0.1:%u", (unsigned)ntohs(la.sin_port));
    ll = sizeof la;
    assert_int_equal(getsockname(c2->fd, (struct sockaddr *)&la, &ll), 0);
    snprintf(want2, sizeof want2, "127.0.0.1:%u", (unsigned)ntohs(la.sin_port));
    assert_true((strcmp(remote_a, want1) == 0 && strcmp(remote_b, want2) == 0) ||
                (strcmp(remote_a, want2) == 0 && strcmp(remote_b, want1) == 0));
    close_normally(f, c1, 1000);
    close_normally(f, c2, 1000);
}

/* conn.c: the hand-written IPv4 formatter says what inet_ntop and
 * snprintf say, for every digit count of every octet and of the port. */
static void test_ipv4_port_format(void **state)
{
    (void)state;
    static const unsigned oct[] = {0, 1, 9, 10, 99, 100, 199, 255};
    static const unsigned ports[] = {0, 7, 80, 443, 8080, 12345, 65535};
    for (size_t i = 0; i < 8; i++)
        for (size_t p = 0; p < 7; p++) {
            uint8_t a[4] = {(uint8_t)oct[i], (uint8_t)oct[(i + 3) % 8], (uint8_t)oct[(i + 5) % 8], (uint8_t)oct[7 - i]};
            char want[64], ip[INET_ADDRSTRLEN], got[22];
            assert_non_null(inet_ntop(AF_INET, a, ip, sizeof ip));
            int n = snprintf(want, sizeof want, "%s:%u", ip, ports[p]);
            assert_int_equal(dx__ipv4_port(got, a, ports[p]), (size_t)n);
            assert_string_equal(got, want);
        }
}

static void test_new_rejects_bad_options(void **state)
{
    (void)state;
    dx_loop_options lo = {.log = &dx_test_quiet_log};
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
    dx_loop_options lo = {.seams = &ts.seams, .log = &dx_test_quiet_log};
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
        T(test_on_http_reply),
        T(test_static_files),
        T(test_unix_socket),
        T(test_conn_remote_per_connection),
        cmocka_unit_test(test_ipv4_port_format),
        cmocka_unit_test(test_new_rejects_bad_options),
        cmocka_unit_test(test_new_every_allocation_fails_once),
    };
    dx_test_filter_from_env();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
