/*
 * tests/unit/test_conn.c: src/ws/conn.c — one server-side connection from
 * accept to close, through a real dx_server (server_fx.[ch]): echo of text,
 * binary and fragmented messages, ping/pong, closing both ways (codes,
 * 1002 on a protocol error, message limits, 1001 at shutdown), backpressure
 * (drain after the high-water mark, 1008 for a slow consumer), pipelined and
 * byte-by-byte input, the handshake and close timeouts, heartbeat and idle
 * timeout.
 */
#define _GNU_SOURCE
#include "server_fx.h"
#include "ws/ws.h"

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

/* dx_server_shutdown moves every connection aside, from the endpoint's
 * list and from the loop's deadline wheel (ws.h dx__wsl), and puts each
 * back before acting on it: one lingering after the close handshake (not
 * touched by the shutdown) keeps its close deadline in the wheel, so it
 * still ends, although the peer never sends its EOF. */
static void test_shutdown_keeps_deadlines(void **state)
{
    sfx *f = *state;
    dx_server_options o = base_opts(f);
    o.close_timeout_ms = 500;
    o.ping_interval_ms = (unsigned)-1;
    start(f, &o);
    cl *c[2];
    for (int i = 0; i < 2; i++) {
        c[i] = cl_tcp(f, 0);
        assert_int_equal(cl_handshake(f, c[i], "/").status, 101);
        wait_ev(f, EV_OPEN);
    }
    /* c[0]: a protocol error, the server's 1002 and its FIN; we keep the
     * socket open and send nothing, so the server lingers for our EOF (a
     * close we answer is not held: test_close_handshake_closes_at_once) */
    uint8_t b[16];
    size_t n = frame_bytes(b, DX_OP_TEXT, true, "hi", 2, false); /* unmasked */
    cl_send(c[0], b, n);
    expect_close(c[0], 1002, NULL);
    expect_eof(c[0]);
    assert_int_equal(conns(f), 2);
    on_loop(f, do_shutdown, NULL);
    assert_int_equal(f->shutdown_ret, 2);
    /* c[1] is closed by the shutdown; c[0] by its close deadline */
    expect_close(c[1], 1001, "bye");
    cl_close_frame(c[1], 1001, "");
    expect_eof(c[1]);
    cl_close(c[1]);
    wait_no_conns(f);
    size_t codes = 0;
    for (int i = 0; i < 2; i++)
        codes += wait_ev(f, EV_CLOSE).code;
    assert_int_equal(codes, 1002 + 1001);
    cl_close(c[0]);
}

/* A close handshake the peer started (or answered) over plain TCP: once the
 * server's close frame is written it closes the TCP connection at once
 * (§7.1.1, the server first), without waiting for the peer's EOF: the
 * peer that keeps its socket open still gets the close frame, then a clean
 * EOF (no reset), and the connection is gone on the server. */
static void test_close_handshake_closes_at_once(void **state)
{
    sfx *f = *state;
    dx_server_options o = base_opts(f);
    o.close_timeout_ms = 60000; /* a LINGER would outlive the test */
    start(f, &o);
    cl *c = cl_tcp(f, 0);
    assert_int_equal(cl_handshake(f, c, "/").status, 101);
    wait_ev(f, EV_OPEN);
    cl_close_frame(c, 1000, "done");
    expect_close(c, 1000, NULL);
    expect_eof(c); /* a reset would fail the read */
    wait_no_conns(f); /* gone while our socket is still open */
    assert_int_equal(wait_ev(f, EV_CLOSE).code, 1000);
    cl_close(c);
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

/* ---- memory per idle connection (issue 13) ------------------------------------- */

/* The hot struct's budget: what an idle, open connection costs in its
 * slab slot (ws.h struct dx_conn; docs/benchmarks.md "RSS per idle
 * connection"). Raising it needs a reason in the commit. */
#define CONN_BUDGET 176u

static size_t idle_seen, idle_bad, idle_live, idle_slot;

static void do_idle_state(sfx *f, void *arg)
{
    (void)arg;
    idle_seen = idle_bad = 0;
    for (size_t i = 0; i < MAXCL; i++) {
        dx_conn *c = f->conns[i];
        if (!c)
            continue;
        idle_seen++;
        /* nothing but the struct: no cold block (head, stash, protocol),
         * no send queue, no receive buffer */
        if (c->cold || c->wq || c->s.rx)
            idle_bad++;
    }
    dx__wsl *w = dx__wsl_find(f->loop);
    idle_live = idle_slot = 0;
    for (size_t i = 0; w && i < DX_WS_SLABS; i++) {
        idle_live += w->conns[i].live;
        if (w->conns[i].slot)
            idle_slot = w->conns[i].slot;
    }
}

static void test_idle_memory_budget(void **state)
{
    sfx *f = *state;
    assert_true(sizeof(struct dx_conn) <= CONN_BUDGET);
    assert_true(DX__CONN_EXT_OFF <= CONN_BUDGET);
    dx_server_options o = base_opts(f);
    start(f, &o);
    dx_ws_client_opts co = {.host = "127.0.0.1", .port = f->port, .path = "/"};
    cl *c[4];
    for (int i = 0; i < 4; i++) {
        c[i] = cl_tcp(f, 0);
        /* two heads one byte per write (gathered in the cold block), two whole */
        assert_int_equal(cl_handshake_opts(f, c[i], &co, NULL, 0, i < 2).status, 101);
        wait_ev(f, EV_OPEN);
    }
    /* traffic and a close reason's worth of state come and go */
    cl_frame(c[0], DX_OP_TEXT, true, "x", 1);
    expect_frame(c[0], DX_OP_TEXT, "x", 1);
    wait_ev(f, EV_MESSAGE);
    /* a fragmented message: its receive state (s.rx) lives only until its end */
    cl_frame(c[2], DX_OP_TEXT, false, "a", 1);
    cl_frame(c[2], DX_OP_CONT, true, "b", 1);
    expect_frame(c[2], DX_OP_TEXT, "ab", 2);
    wait_ev(f, EV_MESSAGE);
    on_loop(f, do_idle_state, NULL);
    assert_int_equal(idle_seen, 4);
    assert_int_equal(idle_bad, 0);
    assert_int_equal(idle_live, 4); /* from the loop's slab */
    assert_true(idle_slot > 0 && idle_slot <= CONN_BUDGET);
    /* one closed, one opened: the freed slot is reused, the others intact */
    close_normally(f, c[1], 1000);
    c[1] = cl_tcp(f, 0);
    assert_int_equal(cl_handshake(f, c[1], "/").status, 101);
    wait_ev(f, EV_OPEN);
    for (int i = 0; i < 4; i++) {
        cl_frame(c[i], DX_OP_BINARY, true, "ok", 2);
        expect_frame(c[i], DX_OP_BINARY, "ok", 2);
        wait_ev(f, EV_MESSAGE);
    }
    on_loop(f, do_idle_state, NULL);
    assert_int_equal(idle_seen, 4);
    assert_int_equal(idle_bad, 0);
    assert_int_equal(idle_live, 4);
    for (int i = 0; i < 4; i++)
        close_normally(f, c[i], 1000);
    wait_no_conns(f);
    on_loop(f, do_idle_state, NULL);
    assert_int_equal(idle_live, 0); /* every slot back */
}

/* ---- the send fast path against the general one ---------------------------------
 *
 * dx_conn_send writes a small reply of a server connection straight into
 * the gather arena (send.c's put_small_fast); a connection with a frame
 * trace takes the general path (session, put, put_private). Both must put
 * the same bytes on the wire: a burst of echoed messages of every size
 * class (empty, 7/8-byte and 16-bit header boundaries, the arena's direct
 * write at 8 KiB, 64-bit lengths), text and binary, arriving in few reads
 * so that replies follow each other in the arena, must come back exactly
 * as encoded here (minimal header, unmasked, in order). */

static void trace_noop(dx_conn *c, int dir, unsigned opcode, int fin, unsigned rsv, uint64_t len, int masked,
                       const uint8_t *head, size_t n, void *ud)
{
    (void)c, (void)dir, (void)opcode, (void)fin, (void)rsv, (void)len, (void)masked, (void)head, (void)n, (void)ud;
}

static void echo_burst_same_bytes(sfx *f, bool trace)
{
    dx_server_options o = base_opts(f);
    if (trace)
        o.cb.on_frame = trace_noop;
    start(f, &o);
    cl *c = cl_tcp(f, 0);
    assert_int_equal(cl_handshake(f, c, "/echo").status, 101);
    wait_ev(f, EV_OPEN);
    static const size_t sizes[] = {0, 1, 3, 7, 8, 9, 15, 16, 17, 64, 100, 125, 126, 127, 1000, 8191, 8192, 65535, 65536};
    enum { MSGS = 160, BIG = 2 };
    uint8_t *in = malloc(1u << 20), *want = malloc(1u << 20), *pay = malloc(65536);
    assert_true(in && want && pay);
    size_t in_len = 0, want_len = 0;
    uint32_t x = 7;
    unsigned big = 0;
    for (unsigned k = 0; k < MSGS; k++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        size_t len = sizes[x % (sizeof sizes / sizeof *sizes)];
        if (len >= 8192 && big++ >= BIG)
            len = x % 300;
        unsigned op = (x >> 8) & 1 ? DX_OP_TEXT : DX_OP_BINARY;
        for (size_t i = 0; i < len; i++)
            pay[i] = (uint8_t)(op == DX_OP_TEXT ? 'a' + (k + i) % 26 : k * 7 + i);
        in_len += frame_bytes(in + in_len, op, true, pay, len, true);
        want_len += frame_bytes(want + want_len, op, true, pay, len, false);
    }
    cl_send(c, in, in_len);
    dx_test_peer_need(c, want_len);
    assert_memory_equal(c->buf, want, want_len);
    dx_test_peer_consume(c, want_len);
    free(in);
    free(want);
    free(pay);
    close_normally(f, c, 1000);
}

static void test_send_fast_path_bytes(void **state) { echo_burst_same_bytes(*state, false); }
static void test_send_general_path_bytes(void **state) { echo_burst_same_bytes(*state, true); }

/* ---- the per-read path under short writes -----------------------------------------
 *
 * The depth-1 fast paths (conn.c on_io's open-connection test, send.c's
 * one-segment flush through send(2), the inline queue-block pool) against a
 * socket that takes only part of a write: the server's send buffer and the
 * client's receive buffer are tiny and the client reads nothing until it
 * has sent every frame, in pieces of every size (frames cut anywhere, many
 * frames per read or one). Replies then stop fitting mid-batch: a short
 * write, EAGAIN, the backlog, EPOLLOUT while input still arrives (on_io's
 * general path), and back. Every reply must come back whole and in order. */

static void set_sndbuf(sfx *f, void *arg)
{
    int sz = *(int *)arg;
    assert_non_null(f->conns[0]);
    assert_int_equal(setsockopt(f->conns[0]->io.fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz), 0);
}

static void test_echo_short_writes_in_order(void **state)
{
    sfx *f = *state;
    dx_server_options o = base_opts(f);
    start(f, &o);
    cl *c = cl_tcp(f, 4096);
    assert_int_equal(cl_handshake(f, c, "/echo").status, 101);
    wait_ev(f, EV_OPEN);
    int sz = 4096;
    on_loop(f, set_sndbuf, &sz);
    /* ~135 KB of replies: past both buffers, under send_max (1 MiB); and
     * fewer messages than the recorder holds (MAXEV), with room for the
     * drains and the close. */
    enum { MSGS = 900 };
    uint8_t *in = malloc(1u << 19), *want = malloc(1u << 19), pay[300];
    assert_true(in && want);
    size_t in_len = 0, want_len = 0;
    uint32_t x = 11;
    for (unsigned k = 0; k < MSGS; k++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        size_t len = 1 + x % 300; /* 7- and 16-bit lengths */
        for (size_t i = 0; i < len; i++)
            pay[i] = (uint8_t)(k * 31 + i);
        in_len += frame_bytes(in + in_len, DX_OP_BINARY, true, pay, len, true);
        want_len += frame_bytes(want + want_len, DX_OP_BINARY, true, pay, len, false);
    }
    assert_true(in_len <= (1u << 19) && want_len <= (1u << 19));
    for (size_t off = 0; off < in_len;) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        size_t n = x % 4 == 0 ? 1 + x % 7 : 1 + x % 3000; /* a frame cut anywhere, or many at once */
        if (n > in_len - off)
            n = in_len - off;
        cl_send(c, in + off, n);
        off += n;
    }
    dx_test_peer_need(c, want_len);
    assert_memory_equal(c->buf, want, want_len);
    dx_test_peer_consume(c, want_len);
    dx_server_stats st = stats(f);
    assert_int_equal(st.dropped_slow, 0);
    free(in);
    free(want);
    close_normally(f, c, 1000);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, sfx_setup, sfx_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_echo_text_binary_fragmented),
        T(test_ping_pong_and_server_ping),
        T(test_server_close_4001),
        T(test_peer_close_codes),
        T(test_protocol_error_1002),
        T(test_close_handshake_closes_at_once),
        T(test_message_limits),
        T(test_shutdown_1001),
        T(test_shutdown_keeps_deadlines),
        T(test_drain_after_high_water),
        T(test_slow_consumer_1008),
        T(test_pipelined_and_bytewise),
        T(test_handshake_and_close_timeouts),
        T(test_heartbeat),
        T(test_idle_timeout),
        T(test_idle_memory_budget),
        T(test_send_fast_path_bytes),
        T(test_send_general_path_bytes),
        T(test_echo_short_writes_in_order),
    };
    dx_test_filter_from_env();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
