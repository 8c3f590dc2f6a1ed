/*
 * tests/unit/test_hammer.c: a randomized hammer on the lifecycle of src/ws
 * (conn.c, server.c, client.c) and src/net/loop.c (STYLE.md habit 10).
 *
 * One loop on the test's thread holds a server, dx_client endpoints and raw
 * TCP peers written here. A driver posted to the loop on every iteration
 * takes random steps; the library's callbacks take random steps too, from
 * inside the callback stack:
 *
 *  - raw peers: connect + upgrade, valid frames, pings, garbage, frames cut
 *    short, half-close (SHUT_WR), RST (SO_LINGER 0), close, drain;
 *  - clients: create, connect, send, close, free (from the driver and from
 *    on_open / on_message / on_close / on_error / on_reconnect / on_done);
 *  - the server: send to / close random connections (from on_open,
 *    on_message, on_close), a dx_server_shutdown at a random point, and at
 *    the end of each round a dx_server_free from inside a random callback
 *    (or from the driver).
 *
 * Invariants, checked as events arrive: on_close at most once per on_open
 * and only after it; nothing (message, pong, drain, close) after on_close or
 * after the owner was freed; no callback of a freed client or server. At the
 * end: every connection that opened was closed exactly once or dropped by
 * its owner's free; no leak (counting allocator) and, under ASan, no
 * use-after-free.
 *
 * Bounded by counts, not wall clock: each round ends after a budget of
 * events or driver steps. Seeded: the seed is printed; DX_HAMMER_SEED=n
 * replays the same random choices (the kernel's timing, which decides what
 * each read returns, still varies: run a failing seed a few times), and
 * DX_HAMMER_ROUNDS=n makes a longer run (6 rounds by default; 80 rounds
 * take about 5 s under ASan).
 */
#define _GNU_SOURCE
#include "hammer_fx.h"

#include "duplex/client.h"
#include "duplex/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_RAW 48
#define MAX_CL 24
#define MAX_OPEN 512
#define EVENT_BUDGET 3000 /* callbacks per round */
#define STEP_BUDGET 2500  /* driver steps per round */
#define SAFETY_MS 120000  /* a hang is a failure, not a wait */

/* ---- state --------------------------------------------------------------------------- */

/* One server-side connection, from on_open on (user pointer). */
typedef struct rec {
    struct rec *next; /* every record, freed at the end */
    int state;        /* 0 open, 1 closed (on_close), 2 dropped (server freed) */
} rec;

typedef struct hcl {
    dx_client *cl;  /* NULL once freed */
    int freed, open, opens, closes, done;
} hcl;

typedef struct rawp {
    int fd; /* -1: none */
    int shut_wr;
} rawp;

typedef struct hammer {
    uint64_t rng;
    dx_test_seams ts;
    dx_loop *loop;
    dx_server *srv;
    unsigned port;
    int srv_freed, shut;
    dx_conn *open[MAX_OPEN]; /* server connections between on_open and on_close */
    size_t nopen;
    rec *recs;
    hcl cls[4096];    /* never reused within a run: a freed one must stay silent */
    size_t ncls;
    rawp raw[MAX_RAW];
    long events, steps, round_events, round_steps;
    int endgame, free_where, do_shut;
    int round_done;
    /* results */
    long violations;
    char first_violation[200];
    long srv_opens, srv_closes, srv_dropped, cl_opens, cl_closes, cl_frees_in_cb, srv_frees_in_cb;
    long raw_opens, rsts, half_closes, shutdowns;
} hammer;

static hammer H;

static unsigned pick(unsigned n) { return hx_pick(&H.rng, n); }
static int chance(unsigned percent) { return hx_chance(&H.rng, percent); }

static void violation(const char *what)
{
    if (H.violations++ == 0)
        snprintf(H.first_violation, sizeof H.first_violation, "%s (event %ld)", what, H.events);
}

static void event(void)
{
    H.events++;
    H.round_events++;
}

enum { W_OPEN = 0, W_MESSAGE, W_CLOSE, W_DRIVER };

/* ---- server callbacks ------------------------------------------------------------------ */

static void srv_free(void)
{
    for (size_t i = 0; i < H.nopen; i++) {
        rec *r = dx_conn_user(H.open[i]);
        r->state = 2; /* dropped without on_close */
        H.srv_dropped++;
    }
    H.nopen = 0;
    dx_server_free(H.srv);
    H.srv = NULL;
    H.srv_freed = 1;
}

static rec *srv_rec(dx_conn *c, void *ud, const char *what)
{
    if (ud != &H || H.srv_freed) {
        violation(what);
        return NULL;
    }
    rec *r = dx_conn_user(c);
    if (!r || r->state != 0) {
        violation(what);
        return NULL;
    }
    return r;
}

static void open_remove(dx_conn *c)
{
    for (size_t i = 0; i < H.nopen; i++)
        if (H.open[i] == c) {
            H.open[i] = H.open[--H.nopen];
            return;
        }
    violation("closed connection not in the open table");
}

static dx_conn *random_open(void) { return H.nopen ? H.open[pick((unsigned)H.nopen)] : NULL; }

static void srv_random_acts(dx_conn *self)
{
    static const char msg[] = "a message from the server to someone";
    unsigned n = pick(4);
    for (unsigned i = 0; i < n && !H.srv_freed; i++) {
        dx_conn *c = chance(30) ? self : random_open();
        if (!c)
            return;
        switch (pick(10)) {
        case 0:
            (void)dx_conn_close(c, 1000, "bye", 3);
            break;
        case 1:
            (void)dx_conn_send(c, DX_OP_PING, "p", 1);
            break;
        default:
            (void)dx_conn_send(c, chance(50) ? DX_OP_TEXT : DX_OP_BINARY, msg, pick(sizeof msg));
            break;
        }
    }
}

static void maybe_free_srv(int where)
{
    if (H.endgame && !H.srv_freed && H.free_where == where) {
        srv_free();
        H.srv_frees_in_cb++;
    }
}

static void s_open(dx_conn *c, void *ud)
{
    event();
    if (ud != &H || H.srv_freed) {
        violation("server on_open after free");
        return;
    }
    if (dx_conn_user(c))
        violation("on_open twice");
    rec *r = calloc(1, sizeof *r);
    if (!r)
        abort();
    r->next = H.recs;
    H.recs = r;
    dx_conn_set_user(c, r);
    if (H.nopen < MAX_OPEN)
        H.open[H.nopen++] = c;
    else
        violation("open table full");
    H.srv_opens++;
    if (chance(5))
        (void)dx_conn_close(c, 1001, NULL, 0);
    srv_random_acts(c);
    maybe_free_srv(W_OPEN);
}

static void s_message(dx_conn *c, int op, const uint8_t *p, size_t len, void *ud)
{
    event();
    if (!srv_rec(c, ud, "server on_message after close or free"))
        return;
    if (chance(50))
        (void)dx_conn_send(c, op, p, len);
    srv_random_acts(c);
    if (H.do_shut && !H.srv_freed && !H.shut && H.round_events > EVENT_BUDGET * 3 / 4 && chance(2)) {
        H.shut = 1;
        H.shutdowns++;
        (void)dx_server_shutdown(H.srv, 1001, "going away");
    }
    maybe_free_srv(W_MESSAGE);
}

static void s_pong(dx_conn *c, const uint8_t *p, size_t len, void *ud)
{
    (void)p;
    (void)len;
    event();
    (void)srv_rec(c, ud, "server on_pong after close or free");
}

static void s_drain(dx_conn *c, void *ud)
{
    event();
    (void)srv_rec(c, ud, "server on_drain after close or free");
}

static void s_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    (void)code;
    (void)reason;
    (void)len;
    event();
    rec *r = srv_rec(c, ud, "server on_close twice, without on_open, or after free");
    if (!r)
        return;
    r->state = 1;
    H.srv_closes++;
    open_remove(c);
    srv_random_acts(NULL); /* fan out to the others from inside on_close */
    maybe_free_srv(W_CLOSE);
}

static void start_server(void)
{
    dx_server_options o = {.host = "127.0.0.1", .port = DX_PORT_EPHEMERAL, .close_timeout_ms = 300,
                           .handshake_timeout_ms = 2000, .send_high_water = 2048, .send_max = 16384,
                           .max_message = 65536, .ud = &H};
    /* permessage-deflate on most servers, in both takeover modes, with a
     * budget that downgrades some connections (docs/deflate.md). */
    o.deflate.enable = chance(75);
    o.deflate.server_no_context_takeover = chance(50);
    o.deflate.min_size = 1 + hx_pick(&H.rng, 200);
    o.deflate.mem_budget = chance(30) ? 600 * 1024 : 0;
    o.cb.on_open = s_open;
    o.cb.on_message = s_message;
    o.cb.on_pong = s_pong;
    o.cb.on_drain = s_drain;
    o.cb.on_close = s_close;
    int err = 0;
    H.srv = dx_server_new(H.loop, &o, &err);
    assert_non_null(H.srv);
    assert_int_equal(dx_server_start(H.srv), 0);
    H.port = dx_server_port(H.srv);
    H.srv_freed = H.shut = 0;
}

/* ---- client callbacks ----------------------------------------------------------------- */

static hcl *cl_of(void *ud, const char *what)
{
    hcl *h = ud;
    if (h < H.cls || h >= H.cls + H.ncls || h->freed) {
        violation(what);
        return NULL;
    }
    return h;
}

static void cl_free(hcl *h, int in_cb)
{
    dx_client_free(h->cl);
    h->cl = NULL;
    h->freed = 1;
    h->open = 0; /* an open connection is dropped without callbacks */
    H.cl_frees_in_cb += in_cb;
}

static void c_open(dx_conn *c, void *ud)
{
    event();
    hcl *h = cl_of(ud, "client on_open after free");
    if (!h)
        return;
    if (h->open)
        violation("client on_open twice");
    h->open = 1;
    h->opens++;
    H.cl_opens++;
    (void)dx_conn_send(c, DX_OP_TEXT, "hello", 5);
    if (chance(5))
        cl_free(h, 1);
    else if (chance(5))
        (void)dx_client_close(h->cl, 1000, NULL, 0);
}

static void c_message(dx_conn *c, int op, const uint8_t *p, size_t len, void *ud)
{
    event();
    hcl *h = cl_of(ud, "client on_message after free");
    if (!h)
        return;
    if (!h->open)
        violation("client on_message while not open");
    if (chance(30))
        (void)dx_conn_send(c, op, p, len);
    if (chance(3))
        cl_free(h, 1);
    else if (chance(3))
        (void)dx_client_close(h->cl, 1000, "enough", 6);
}

static void c_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    (void)c;
    (void)code;
    (void)reason;
    (void)len;
    event();
    hcl *h = cl_of(ud, "client on_close after free");
    if (!h)
        return;
    if (!h->open)
        violation("client on_close without on_open");
    h->open = 0;
    h->closes++;
    H.cl_closes++;
    if (chance(10))
        cl_free(h, 1);
}

static void c_error(dx_client *cl, int err, const char *what, void *ud)
{
    (void)cl;
    (void)err;
    (void)what;
    event();
    hcl *h = cl_of(ud, "client on_error after free");
    if (h && chance(10))
        cl_free(h, 1);
}

static void c_reconnect(dx_client *cl, unsigned attempt, unsigned delay, void *ud)
{
    (void)cl;
    (void)attempt;
    (void)delay;
    event();
    hcl *h = cl_of(ud, "client on_reconnect after free");
    if (!h)
        return;
    if (chance(10))
        cl_free(h, 1);
    else if (chance(5))
        (void)dx_client_close(h->cl, 1000, NULL, 0);
}

static void c_done(dx_client *cl, void *ud)
{
    (void)cl;
    event();
    hcl *h = cl_of(ud, "client on_done after free");
    if (!h)
        return;
    h->done = 1;
    if (chance(30))
        cl_free(h, 1);
    else if (chance(30) && !H.endgame && dx_client_connect(h->cl) == 0)
        h->done = 0;
}

static void new_client(void)
{
    if (H.ncls >= sizeof H.cls / sizeof H.cls[0])
        return;
    hcl *h = &H.cls[H.ncls++];
    memset(h, 0, sizeof *h);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/h", H.port);
    dx_client_options o = {.url = url, .reconnect = chance(50), .backoff_base_ms = 1, .backoff_cap_ms = 1,
                           .max_attempts = 3, .close_timeout_ms = 300, .connect_timeout_ms = 2000,
                           .queue_max_messages = chance(50) ? 8 : 0, .ud = h};
    o.deflate.enable = chance(75);
    o.deflate.client_no_context_takeover = chance(50);
    o.deflate.server_max_window_bits = chance(30) ? 8 + hx_pick(&H.rng, 8) : 0;
    o.deflate.min_size = 1 + hx_pick(&H.rng, 200);
    o.cb.on_open = c_open;
    o.cb.on_message = c_message;
    o.cb.on_close = c_close;
    o.cb.on_error = c_error;
    o.cb.on_reconnect = c_reconnect;
    o.cb.on_done = c_done;
    h->cl = dx_client_new(H.loop, &o, NULL);
    assert_non_null(h->cl);
    assert_int_equal(dx_client_connect(h->cl), 0);
}

static size_t live_clients(void)
{
    size_t n = 0;
    for (size_t i = 0; i < H.ncls; i++)
        n += !H.cls[i].freed;
    return n;
}

static hcl *random_client(void)
{
    size_t n = live_clients();
    if (!n)
        return NULL;
    size_t k = pick((unsigned)n);
    for (size_t i = 0; i < H.ncls; i++)
        if (!H.cls[i].freed && k-- == 0)
            return &H.cls[i];
    return NULL;
}

/* ---- raw peers ------------------------------------------------------------------------ */

static const char REQ[] = "GET /raw HTTP/1.1\r\nHost: 127.0.0.1\r\n" DX_TEST_UPGRADE_HEADERS;

static void raw_send(rawp *p, const void *b, size_t len)
{
    if (p->fd >= 0 && !p->shut_wr)
        (void)send(p->fd, b, len, MSG_NOSIGNAL | MSG_DONTWAIT); /* short or failed: the peer's problem */
}

static void raw_close(rawp *p, int how)
{
    if (p->fd < 0)
        return;
    if (how == 1) {
        dx_test_close_rst(p->fd);
        H.rsts++;
    } else {
        close(p->fd);
    }
    p->fd = -1;
}

static void raw_open(rawp *p)
{
    if (H.srv_freed || H.shut)
        return;
    int fd = hx_peer_dial(H.port, 0);
    if (fd < 0)
        return;
    p->fd = fd;
    p->shut_wr = 0;
    H.raw_opens++;
    raw_send(p, REQ, sizeof REQ - 1);
}

static size_t frame(uint8_t *out, unsigned op, int fin, const uint8_t *payload, size_t len)
{
    return hx_frame(&H.rng, out, op, fin, payload, len);
}

static void raw_step(rawp *p)
{
    if (p->fd < 0) {
        if (chance(60))
            raw_open(p);
        return;
    }
    uint8_t buf[4096];
    while (recv(p->fd, buf, sizeof buf, MSG_DONTWAIT) > 0) /* drain, or the server sees a slow reader */
        ;
    uint8_t pl[100];
    for (size_t i = 0; i < sizeof pl; i++)
        pl[i] = (uint8_t)('a' + pick(26));
    size_t n = 0;
    switch (pick(20)) {
    case 0:
        raw_close(p, 1); /* RST */
        return;
    case 1:
        raw_close(p, 0);
        return;
    case 2:
        if (!p->shut_wr) {
            shutdown(p->fd, SHUT_WR); /* half-close */
            p->shut_wr = 1;
            H.half_closes++;
        }
        return;
    case 3: /* garbage: reserved bits and opcode → the server fails it (1002) */
        buf[0] = 0xF3;
        buf[1] = 0x85;
        raw_send(p, buf, 2 + pick(6));
        return;
    case 4: /* a frame cut short (the rest may never come) */
        n = frame(buf, DX_OP_BINARY, 1, pl, 90);
        raw_send(p, buf, 1 + pick((unsigned)n - 1));
        return;
    case 5:
        n = frame(buf, DX_OP_PING, 1, pl, pick(20));
        break;
    case 6: /* a close frame (1000) */
        pl[0] = 0x03;
        pl[1] = 0xE8;
        n = frame(buf, DX_OP_CLOSE, 1, pl, 2);
        break;
    case 7: /* a fragmented message */
        n = frame(buf, DX_OP_BINARY, 0, pl, pick(50));
        n += frame(buf + n, DX_OP_CONT, 1, pl, pick(50));
        break;
    default: /* a burst of small messages */
        for (unsigned k = 1 + pick(8); k-- && n + 120 < sizeof buf;)
            n += frame(buf + n, chance(50) ? DX_OP_TEXT : DX_OP_BINARY, 1, pl, pick(sizeof pl));
        break;
    }
    raw_send(p, buf, n);
}

/* ---- the driver ------------------------------------------------------------------------ */

static void end_round_now(void)
{
    for (size_t i = 0; i < H.ncls; i++)
        if (!H.cls[i].freed)
            cl_free(&H.cls[i], 0);
    for (int i = 0; i < MAX_RAW; i++)
        raw_close(&H.raw[i], pick(2));
}

static void driver(void *arg)
{
    (void)arg;
    H.steps++;
    H.round_steps++;
    if (!H.endgame && (H.round_events >= EVENT_BUDGET || H.round_steps >= STEP_BUDGET)) {
        H.endgame = 1;
        /* W_OPEN, W_MESSAGE, W_CLOSE: from a callback; W_DRIVER: from here.
         * Each round its own (set at its start). */
    }
    if (H.endgame) {
        /* A callback frees the server soon; make sure something happens,
         * and give up waiting after a while (then the driver frees it). */
        if (!H.srv_freed && (H.free_where == W_DRIVER || H.round_steps >= STEP_BUDGET + 400))
            srv_free();
        if (H.srv_freed) {
            if (getenv("DX_HAMMER_VERBOSE"))
                printf("hammer: round over: free_where %d, %ld events, %ld steps, shut %d\n", H.free_where,
                       H.round_events, H.round_steps, H.shut);
            end_round_now();
            H.round_done = 1;
            dx_loop_stop(H.loop);
            return;
        }
    }
    for (unsigned k = 0; k < 4; k++) {
        unsigned what = pick(10);
        if (what < 6) {
            raw_step(&H.raw[pick(MAX_RAW)]);
        } else if (what < 8) {
            if (live_clients() < MAX_CL && chance(40) && !H.srv_freed)
                new_client();
            hcl *h = random_client();
            if (!h)
                continue;
            switch (pick(8)) {
            case 0:
                cl_free(h, 0);
                break;
            case 1:
                (void)dx_client_close(h->cl, 1000, NULL, 0);
                break;
            case 2:
                if (dx_client_connect(h->cl) == 0)
                    h->done = 0;
                break;
            default:
                (void)dx_client_send(h->cl, DX_OP_TEXT, "from the driver", 15);
                break;
            }
        } else if (!H.srv_freed) {
            srv_random_acts(NULL);
        }
    }
    if (dx_loop_post(H.loop, driver, NULL) != 0)
        violation("cannot post the driver");
}

/* ---- the test ------------------------------------------------------------------------- */

static void stop_loop(void *arg)
{
    (void)arg;
    dx_loop_stop(H.loop);
}

static void test_hammer(void **state)
{
    (void)state;
    uint64_t seed = hx_seed();
    int rounds = hx_rounds("hammer", seed, 6);
    memset(&H, 0, sizeof H);
    H.rng = seed;
    for (int i = 0; i < MAX_RAW; i++)
        H.raw[i].fd = -1;
    dx_test_seams_init(&H.ts);
    dx_loop_options lo = {.seams = &H.ts.seams, .log = &dx_test_quiet_log};
    H.loop = dx_loop_new(&lo, NULL);
    assert_non_null(H.loop);
    uint64_t end = dx_test_mono_ms() + SAFETY_MS;
    for (int r = 0; r < rounds; r++) {
        start_server();
        H.endgame = 0;
        H.free_where = r % 4;
        /* Some rounds shut down gracefully before the free (those whose
         * free comes from on_close or the driver: after a shutdown no
         * connection opens and messages stop). */
        H.do_shut = (H.free_where == W_CLOSE || H.free_where == W_DRIVER) && chance(60);
        H.round_done = 0;
        H.round_events = H.round_steps = 0;
        assert_int_equal(dx_loop_post(H.loop, driver, NULL), 0);
        while (!H.round_done) {
            assert_true(dx_test_mono_ms() < end);
            assert_int_equal(dx_loop_run(H.loop), 0);
        }
        /* Everything the round created is gone: nothing is left to fire. */
        assert_int_equal(H.nopen, 0);
        assert_int_equal(live_clients(), 0);
    }
    /* One more pass of the loop: nothing may fire now. */
    long before = H.events;
    assert_int_equal(dx_loop_post(H.loop, stop_loop, NULL), 0);
    assert_int_equal(dx_loop_run(H.loop), 0);
    assert_int_equal(H.events, before);
    dx_loop_free(H.loop);
    printf("hammer: %ld events, %ld steps; server: %ld opens, %ld closes, %ld dropped by free (%ld frees in "
           "callbacks); clients: %zu made, %ld opens, %ld closes, %ld frees in callbacks; raw: %ld opens, %ld "
           "RST, %ld half-closes; %ld shutdowns\n",
           H.events, H.steps, H.srv_opens, H.srv_closes, H.srv_dropped, H.srv_frees_in_cb, H.ncls, H.cl_opens,
           H.cl_closes, H.cl_frees_in_cb, H.raw_opens, H.rsts, H.half_closes, H.shutdowns);
    if (H.violations)
        printf("hammer: %ld violations, first: %s (seed %llu)\n", H.violations, H.first_violation,
               (unsigned long long)seed);
    assert_int_equal(H.violations, 0);
    /* Exactly once: every server connection that opened was closed once or
     * dropped by the free, never left open. */
    long closed = 0, dropped = 0;
    while (H.recs) {
        rec *r = H.recs;
        H.recs = r->next;
        assert_true(r->state == 1 || r->state == 2);
        closed += r->state == 1;
        dropped += r->state == 2;
        free(r);
    }
    assert_int_equal(closed + dropped, H.srv_opens);
    for (size_t i = 0; i < H.ncls; i++)
        assert_true(H.cls[i].closes == H.cls[i].opens || H.cls[i].closes + 1 == H.cls[i].opens);
    assert_int_equal(H.ts.live, 0); /* no leak */
    /* It really hammered: connections opened and died every way. */
    assert_true(H.srv_opens >= 100);
    assert_true(H.cl_opens >= 10);
    assert_true(H.rsts > 0 && H.half_closes > 0);
    assert_true(H.srv_dropped > 0);     /* servers were freed with connections open */
    assert_true(H.srv_frees_in_cb > 0); /* from inside their callbacks */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hammer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
