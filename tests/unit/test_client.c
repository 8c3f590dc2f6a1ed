/*
 * tests/unit/test_client.c: src/ws/client.c — the client endpoint against a
 * real dx_server, both on one dx_loop running in its own thread, over
 * loopback only. TLS verification and the HTTP CONNECT proxy are in
 * test_client_proxy.c; the fixture both use is client_fx.[ch].
 *
 * Covers: echo (text, binary, sizes around the length encodings, a few
 * MiB), subprotocol offer/selection, Origin and extra headers as the server
 * sees them, ping/pong, close codes and reasons both ways, the frame trace
 * (client frames masked), errors reported through on_error (refused, 404,
 * DNS failure, connect and handshake timeouts), reconnect with backoff
 * bounds, the offline queue (order, exactly once, bounds), max_attempts,
 * bind_addr, and option validation.
 *
 * Callbacks run on the loop's thread: they only record events (under a
 * mutex) and never assert. The test thread waits for events with a generous
 * deadline; work that must run on the loop's thread (creating, sending,
 * freeing) is posted with dx_loop_post and waited for. No assertion depends
 * on machine speed.
 */
#define _GNU_SOURCE
#include "client_fx.h"


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
    uint64_t t0 = dx_test_mono_ms();
    start_client(f);
    ev e = wait_ev(f, C_ERROR);
    uint64_t el = dx_test_mono_ms() - t0;
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
    dx_test_filter_from_env();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
