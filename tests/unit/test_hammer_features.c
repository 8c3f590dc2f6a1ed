/*
 * tests/unit/test_hammer_features.c: a randomized hammer on the features
 * added for the gateway (issue 7), all at once, in src/ws and src/net:
 * shared dx_msg fan-out, pause/resume, deferred upgrades, inline ext
 * memory, public timers, fd watches and posts, under server shutdowns and
 * frees from inside callbacks. test_hammer.c covers the base lifecycle
 * (clients, garbage, half-closes); this one the new calls.
 *
 * test_features (one loop, the test's thread): a server and raw TCP peers
 * written here. A driver posted every iteration takes random steps and
 * advances a virtual clock (the loop's now_ns seam) by 2 ms, so timeouts
 * (handshake, close, heartbeat) fire after counted steps, not wall time.
 *  - on_upgrade accepts, refuses, or defers; deferred handles are answered
 *    later (accept or refuse) from the driver, a dx_timer, a dx_loop_post,
 *    a dx_watch callback, another connection's callback, or never (the
 *    handshake timeout drops the connection; the late answer must give
 *    DX_ECLOSED);
 *  - the server sends sequence-numbered messages with dx_conn_send and
 *    shared dx_msg to random subsets; some peers never read (SO_RCVBUF
 *    small) so send_max is passed (DX_ELIMIT, 1008);
 *  - dx_conn_pause/resume at random, from callbacks and the driver;
 *  - timers and watches created and freed from callbacks;
 *  - peers send sequence-numbered frames (some fragmented), pings' pongs,
 *    close frames, half-closes, RSTs, and stop reading.
 * Invariants: on_open only for an accepted upgrade; on_close exactly once
 * per on_open (or dropped by the server's free); nothing after on_close;
 * no on_message/on_pong while paused (unless a close resumed it); what a
 * peer receives is exactly, in order, a prefix of what was queued for its
 * connection; what the server receives is the peer's sequence in order;
 * the ext memory keeps its per-connection pattern until on_close; each
 * deferred answer returns 0 or DX_ECLOSED (only DX_ECLOSED after the
 * server's free); every dx_msg's reference count is back to 1 once the
 * server is freed; no leak, no use-after-free (ASan).
 *
 * The cross-thread part (test_xthread_fanout) is test_hammer_xthread.c;
 * what the hammers share (random stream, seed, raw peers' socket and
 * frames) is hammer_fx.c; this hammer's state, helpers and peers (raw and
 * dx_client) are features_fx.[ch]; here: the server side, deferred
 * answers, timers, watches, the driver and the test.
 *
 * Seeded (printed): DX_HAMMER_SEED=n replays the random choices (the
 * kernel's timing still varies), DX_HAMMER_ROUNDS=n sets the rounds,
 * DX_HAMMER_VERBOSE=1 logs the library at DEBUG and details an accepted
 * upgrade that never opened (grep the log for its remote address).
 */
#define _GNU_SOURCE
#include "features_fx.h"

#include "core/rcbuf.h"
#include "duplex/client.h"
#include "duplex/server.h"
#include "ws/ws.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- actions on connections ----------------------------------------------------------- */

static void send_result(crec *r, int rc, uint32_t seq)
{
    if (rc == 0)
        sent_push(r, seq);
    else if (rc == DX_ELIMIT) {
        H.elimits++;
        r->closing = 1;
    } else if (rc != DX_ECLOSED)
        violation("send failed", rc, 0);
}

static size_t rand_len(void) { return chance(30) ? 1000 + pick(40000) : 8 + pick(300); }

static void send_copied(crec *r)
{
    uint8_t buf[41000];
    uint32_t seq = ++H.seq;
    size_t len = make_payload(buf, seq, rand_len());
    int rc = dx_conn_send(r->c, chance(50) ? DX_OP_BINARY : DX_OP_TEXT, buf, len);
    H.copied_sends++;
    send_result(r, rc, seq);
}

/* One shared message to a random subset of the open connections. */
static void fan_out(void)
{
    if (H.srv_freed || !H.nopen || H.nmsgs >= MAX_MSGS)
        return;
    uint8_t buf[41000];
    uint32_t seq = ++H.seq;
    /* Now and then a flood aimed at the peers that do not read, so that
     * their queues pass send_max (the kernel's loopback buffers take MBs). */
    int flood = chance(25);
    size_t len = make_payload(buf, seq, flood ? 30000 + pick(10000) : rand_len());
    int err = 0;
    dx_msg *m = dx_msg_new(chance(50) ? DX_OP_BINARY : DX_OP_TEXT, buf, len, &err);
    if (!m) {
        violation("dx_msg_new", err, 0);
        return;
    }
    H.msgs[H.nmsgs++] = m;
    unsigned pct = 20 + pick(80);
    /* A copy of the table: nothing may change it now (no callback runs inside a send). */
    size_t n = H.nopen;
    for (size_t i = 0; i < n; i++) {
        crec *r = H.open[i];
        const peer *p = &H.peers[r->peer];
        if (flood ? r->is_cl || !(p->noread && p->gen == r->gen) : !chance(pct))
            continue;
        send_result(r, dx_conn_send_msg(r->c, m), seq);
        H.shared_sends++;
    }
    if (n != H.nopen)
        violation("a send changed the open table", (long)n, (long)H.nopen);
}

static void toggle_pause(crec *r)
{
    if (!r)
        return;
    if (!r->paused) {
        int rc = dx_conn_pause(r->c);
        if (rc == 0 && !r->closing) {
            r->paused = 1;
            H.pauses++;
        } else if (rc != 0 && rc != DX_ECLOSED)
            violation("dx_conn_pause", rc, 0);
    } else {
        int rc = dx_conn_resume(r->c);
        if (rc != 0 && rc != DX_ECLOSED)
            violation("dx_conn_resume", rc, 0);
        r->paused = 0;
        H.resumes++;
    }
}

static void answer_random(void)
{
    if (!H.npend)
        return;
    size_t i = pick((unsigned)H.npend);
    if (H.round_steps >= H.pends[i]->not_before)
        answer(i);
}

static void post_answer(void *arg)
{
    (void)arg;
    event();
    H.posts_run++;
    answer_random();
}

static void timer_new(void);
static void watch_poke(void);
static void srv_free(void);
static void check_accepted_opened(void);
static void maybe_free_srv(int where);

void srv_acts(crec *self)
{
    unsigned n = pick(4);
    for (unsigned i = 0; i < n && !H.srv_freed; i++) {
        crec *r = self && chance(30) ? self : random_open();
        switch (pick(16)) {
        case 0:
            if (r) {
                if (dx_conn_close(r->c, 1000, "bye", 3) == 0)
                    r->closing = 1;
            }
            break;
        case 1:
        case 2:
            toggle_pause(r);
            break;
        case 3:
            if (r)
                (void)dx_conn_send(r->c, DX_OP_PING, "hb", 2);
            break;
        case 4:
        case 5:
            answer_random();
            break;
        case 6:
            if (dx_loop_post(H.loop, post_answer, NULL) != 0)
                violation("dx_loop_post", 0, 0);
            break;
        case 7:
            timer_new();
            break;
        case 8:
            watch_poke();
            break;
        case 9:
        case 10:
        case 11:
            fan_out();
            break;
        default:
            if (r)
                send_copied(r);
            break;
        }
    }
}

/* ---- deferred upgrades --------------------------------------------------------------- */

void answer(size_t i)
{
    pend *p = H.pends[i];
    H.pends[i] = H.pends[--H.npend];
    int rc;
    int acc = chance(70);
    if (acc)
        rc = dx_upgrade_accept(p->h, NULL, p->r);
    else
        rc = dx_upgrade_refuse(p->h, chance(50) ? 403 : 503, chance(50) ? "Retry-After: 1\r\n" : NULL);
    if (rc == 0) {
        H.answered_ok++;
        if (H.srv_freed)
            violation("an answer after the server's free gave 0", 0, 0);
        if (acc) {
            crec *r = p->r;
            r->accepted = 1;
            r->acc_step = H.steps;
            if (r->is_cl && H.cl[r->peer] && H.cl[r->peer]->gen == r->gen)
                r->ci = H.cl[r->peer];
            r->dbg = r->is_cl * 100 + H.tls * 1000 +
                     (r->is_cl ? 0 : (H.peers[r->peer].fd < 0 || H.peers[r->peer].gen != r->gen) * 10);
        }
        else
            p->r->state = R_NEVER;
    } else if (rc == DX_ECLOSED) {
        H.answered_closed++;
        p->r->state = R_NEVER;
    } else {
        violation("deferred answer", rc, acc);
    }
    free(p);
}

static int parse_path(const char *p, size_t len, crec *r)
{
    char tmp[64], kind = 0;
    if (len >= sizeof tmp)
        return -1;
    memcpy(tmp, p, len);
    tmp[len] = 0;
    if (sscanf(tmp, "/%c%dg%u", &kind, &r->peer, &r->gen) != 3 || (kind != 'p' && kind != 'c'))
        return -1;
    r->is_cl = kind == 'c';
    return r->peer >= 0 && r->peer < (r->is_cl ? MAX_CL : MAX_PEER) ? 0 : -1;
}

static int s_upgrade(dx_server *srv, dx_request *req, void *ud)
{
    (void)srv;
    event();
    if (ud != &H || H.srv_freed) {
        violation("on_upgrade after free", 0, 0);
        return 500;
    }
    crec *r = calloc(1, sizeof *r);
    if (!r)
        abort();
    r->next = H.recs;
    H.recs = r;
    r->tag = ++H.tags;
    snprintf(r->remote, sizeof r->remote, "%s", req->remote);
    if (parse_path(req->path, req->path_len, r) != 0)
        violation("bad path", 0, 0);
    srv_acts(NULL); /* other connections, from inside on_upgrade */
    unsigned what = pick(10);
    if (what < 3) {
        dx_request_set_user(req, r);
        r->accepted = 1;
        return 0;
    }
    if (what < 4) {
        r->state = R_NEVER;
        H.refused_now++;
        return 403;
    }
    dx_upgrade *h = dx_request_defer(req);
    if (!h) {
        violation("dx_request_defer", 0, 0);
        return 500;
    }
    if (dx_request_defer(req) != h)
        violation("dx_request_defer twice gave another handle", 0, 0);
    H.deferred++;
    pend *p = calloc(1, sizeof *p);
    if (!p)
        abort();
    p->h = h;
    p->r = r;
    p->not_before = chance(25) ? H.round_steps + 150 + pick(150) : 0; /* timeout: 200 steps */
    if (H.npend < MAX_PEND)
        H.pends[H.npend++] = p;
    else
        violation("pending table full", 0, 0);
    if (chance(10))
        answer(H.npend - 1); /* answered inside on_upgrade itself */
    return DX_UPGRADE_DEFER;
}

/* ---- timers and watches ----------------------------------------------------------------- */

static void timer_fn(dx_timer *t, void *ud)
{
    htimer *ht = ud;
    event();
    H.timers_fired++;
    if (ht->t != t || H.timers[ht->slot] != ht)
        violation("timer: wrong handle or freed", 0, 0);
    int slot = ht->slot;
    answer_random();
    if (!H.srv_freed)
        srv_acts(NULL);
    if (H.timers[slot] != ht)
        return; /* freed (or replaced) by what it just did */
    maybe_free_srv(4);
    if (H.endgame && H.free_where == 4 && !H.srv_freed) {
        dx_timer_start(t, 1, 0); /* keep one alive until it frees the server */
        return;
    }
    /* free another timer (maybe due in this same pass), or this one, or re-arm */
    int other = (int)pick(MAX_TIMERS);
    if (chance(30) && H.timers[other] && other != ht->slot) {
        dx_timer_free(H.timers[other]->t);
        free(H.timers[other]);
        H.timers[other] = NULL;
    }
    if (chance(50)) {
        H.timers[ht->slot] = NULL;
        dx_timer_free(t);
        free(ht);
    } else {
        dx_timer_start(t, pick(30), 0);
    }
}

static void timer_new(void)
{
    int slot = (int)pick(MAX_TIMERS);
    if (H.timers[slot]) {
        if (chance(50)) { /* free it from here instead */
            dx_timer_free(H.timers[slot]->t);
            free(H.timers[slot]);
            H.timers[slot] = NULL;
        } else {
            dx_timer_start(H.timers[slot]->t, pick(40), chance(20) ? 1 + pick(10) : 0);
        }
        return;
    }
    htimer *ht = calloc(1, sizeof *ht);
    if (!ht)
        abort();
    ht->slot = slot;
    ht->t = dx_timer_new(H.loop, timer_fn, ht);
    if (!ht->t) {
        violation("dx_timer_new", 0, 0);
        free(ht);
        return;
    }
    H.timers[slot] = ht;
    dx_timer_start(ht->t, pick(40), chance(20) ? 1 + pick(10) : 0);
}

static void watch_fn(dx_watch *w, int fd, unsigned events, void *ud)
{
    int i = (int)(intptr_t)ud;
    event();
    H.watches_fired++;
    if (H.watch[i] != w || fd != H.pipes[i][0] || !(events & DX_WATCH_READ))
        violation("watch: wrong handle, fd or events", i, (long)events);
    char b[16];
    (void)read(fd, b, sizeof b);
    answer_random();
    if (!H.srv_freed)
        srv_acts(NULL);
    if (H.watch[i] != w)
        return; /* freed by what it just did */
    if (chance(30) && H.watch[!i]) { /* free the other one, maybe ready in this batch */
        dx_watch_free(H.watch[!i]);
        H.watch[!i] = NULL;
    }
    if (chance(50)) {
        dx_watch_free(w);
        H.watch[i] = NULL;
    }
}

static void watch_poke(void)
{
    int i = (int)pick(2);
    if (!H.watch[i]) {
        int err = 0;
        H.watch[i] = dx_watch_new(H.loop, H.pipes[i][0], DX_WATCH_READ, watch_fn, (void *)(intptr_t)i, &err);
        if (!H.watch[i])
            violation("dx_watch_new", err, 0);
    } else if (chance(20)) {
        dx_watch_free(H.watch[i]);
        H.watch[i] = NULL;
    }
    (void)write(H.pipes[i][1], "x", 1);
}

/* ---- server callbacks ------------------------------------------------------------------ */


static void s_open(dx_conn *c, void *ud)
{
    event();
    if (ud != &H || H.srv_freed) {
        violation("on_open after free", 0, 0);
        return;
    }
    crec *r = dx_conn_user(c);
    if (!r || !r->accepted || r->state != R_NEW) {
        violation("on_open for an upgrade not accepted, or twice", r ? r->state : -1, r ? r->accepted : -1);
        return;
    }
    const uint8_t *e = dx_conn_ext(c);
    for (size_t i = 0; e && i < EXT_SIZE; i++)
        if (e[i])
            violation("ext memory not zeroed", (long)i, e[i]);
    ext_fill(c, r->tag);
    r->state = R_OPEN;
    r->c = c;
    H.opens++;
    if (H.nopen < MAX_OPEN)
        H.open[H.nopen++] = r;
    else
        violation("open table full", 0, 0);
    if (r->is_cl) {
        clinst *ci = H.cl[r->peer];
        if (ci && ci->gen == r->gen)
            ci->rec = r;
    } else {
        peer *p = &H.peers[r->peer];
        if (p->fd >= 0 && p->gen == r->gen)
            p->rec = r;
    }
    srv_acts(r);
    maybe_free_srv(0);
}

static void s_message(dx_conn *c, int op, const uint8_t *data, size_t len, void *ud)
{
    (void)op;
    event();
    crec *r = live_rec(c, ud, "on_message after close or free");
    if (!r)
        return;
    if (r->paused && !r->closing)
        violation("on_message while paused", r->tag, 0);
    uint32_t seq;
    if (!check_payload(data, len, &seq) || seq != r->last_in + 1)
        violation("server got a message out of order or corrupt", (long)seq, (long)r->last_in);
    r->last_in = seq;
    H.srv_msgs_ok++;
    srv_acts(r);
    if (H.do_shut && !H.srv_freed && !H.shut && H.round_events > EVENT_BUDGET * 3 / 4 && chance(3)) {
        H.shut = 1;
        for (size_t i = 0; i < H.nopen; i++)
            H.open[i]->closing = 1;
        (void)dx_server_shutdown(H.srv, 1001, "going away");
    }
    maybe_free_srv(1);
}

static void s_pong(dx_conn *c, const uint8_t *p, size_t len, void *ud)
{
    (void)p;
    (void)len;
    event();
    crec *r = live_rec(c, ud, "on_pong after close or free");
    if (r && r->paused && !r->closing)
        violation("on_pong while paused", r->tag, 0);
}

static void s_drain(dx_conn *c, void *ud)
{
    event();
    crec *r = live_rec(c, ud, "on_drain after close or free");
    if (r && chance(30))
        fan_out();
}

static void s_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    (void)code;
    (void)reason;
    (void)len;
    event();
    crec *r = live_rec(c, ud, "on_close twice, without on_open, or after free");
    if (!r)
        return;
    r->state = R_CLOSED;
    H.closes++;
    for (size_t i = 0; i < H.nopen; i++)
        if (H.open[i] == r) {
            H.open[i] = H.open[--H.nopen];
            break;
        }
    if (dx_conn_send(c, DX_OP_TEXT, "late", 4) != DX_ECLOSED)
        violation("send inside its own on_close", 0, 0);
    if (dx_conn_pause(c) != DX_ECLOSED)
        violation("pause inside its own on_close", 0, 0);
    srv_acts(NULL);
    maybe_free_srv(2);
}

static void start_server(void)
{
    dx_server_options o = {.host = "127.0.0.1", .port = DX_PORT_EPHEMERAL, .close_timeout_ms = 300,
                           .handshake_timeout_ms = 400, .send_high_water = 4096, .send_max = 32768,
                           .max_message = 65536, .ping_interval_ms = 500, .pong_timeout_ms = 600,
                           .conn_ext_size = EXT_SIZE, .max_head = 2048,
                           .idle_timeout_ms = chance(50) ? 1500 : 0,
                           .max_conns_per_ip = chance(30) ? 40 : 0, /* refusals (503, TCP close) in between */
                           .max_handshaking = chance(30) ? 16 : 0, .ud = &H};
    /* permessage-deflate on most servers: compress-once fan-out to
     * no-context-takeover connections, per connection otherwise. */
    o.deflate.enable = chance(75);
    o.deflate.server_no_context_takeover = chance(50);
    o.deflate.min_size = 1 + pick(200);
    dx_tls_cert cert = {H.crt, H.key};
    if (H.tls) {
        o.tls = &cert;
        o.n_tls = 1;
    }
    o.cb.on_upgrade = s_upgrade;
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
    H.srv_freed = H.shut = H.shut_checked = 0;
}

/* dx_upgrade_accept returned 0: on_open must follow from the loop (the
 * ready list serves it after this batch), even if the peer left or a
 * shutdown came meanwhile; only the server's free may come first. */
static void check_accepted_opened(void)
{
    for (crec *r = H.recs; r; r = r->next) {
        if (r->state != R_NEW || r->lost)
            continue;
        if (r->acc_step && r->acc_step + 3 < H.steps) {
            if (getenv("DX_HAMMER_VERBOSE"))
                printf("hammer_features: remote %s tag %u dbg %ld ci %p cl %p open %d opens %d closes %d acc_step %ld now %ld\n", r->remote, r->tag, r->dbg,
                       (void *)r->ci, r->ci ? (void *)r->ci->cl : NULL, r->ci ? r->ci->open : -1,
                       r->ci ? r->ci->opens : -1, r->ci ? r->ci->closes : -1, r->acc_step, H.steps);
            violation(r->left ? "dx_upgrade_accept gave 0 but on_open never came (peer left)"
                              : "dx_upgrade_accept gave 0 but on_open never came",
                      r->dbg, H.steps - r->acc_step);
        }
        r->lost = 1;
    }
}

static void srv_free(void)
{
    check_accepted_opened();
    for (size_t i = 0; i < H.nopen; i++) {
        H.open[i]->state = R_DROPPED;
        H.dropped++;
    }
    H.nopen = 0;
    dx_server_free(H.srv);
    H.srv = NULL;
    H.srv_freed = 1;
}

static void maybe_free_srv(int where)
{
    if (H.endgame && !H.srv_freed && H.free_where == where) {
        srv_free();
        H.frees_in_cb++;
    }
}

/* ---- the driver ------------------------------------------------------------------------ */

static void end_round(void)
{
    /* Every handle still pending is answered now: its connection is gone. */
    while (H.npend) {
        pend *p = H.pends[--H.npend];
        int rc = chance(50) ? dx_upgrade_accept(p->h, NULL, p->r) : dx_upgrade_refuse(p->h, 503, NULL);
        if (rc != DX_ECLOSED)
            violation("an answer after the server's free", rc, 0);
        H.answered_closed++;
        p->r->state = R_NEVER;
        free(p);
    }
    for (int i = 0; i < MAX_PEER; i++)
        peer_close(&H.peers[i], (int)pick(2));
    for (int i = 0; i < MAX_CL; i++)
        if (H.cl[i])
            cl_free(H.cl[i], 0);
    for (int i = 0; i < MAX_TIMERS; i++)
        if (H.timers[i]) {
            dx_timer_free(H.timers[i]->t);
            free(H.timers[i]);
            H.timers[i] = NULL;
        }
    for (int i = 0; i < 2; i++) {
        dx_watch_free(H.watch[i]);
        H.watch[i] = NULL;
        char b[256];
        while (read(H.pipes[i][0], b, sizeof b) > 0)
            ;
    }
}

static void check_msg_refs(const char *what)
{
    for (size_t i = 0; i < H.nmsgs; i++) {
        unsigned op;
        size_t hl;
        size_t refs = dx_rcbuf_refs(dx__msg_frame(H.msgs[i], &op, &hl));
        if (refs != 1)
            violation(what, (long)i, (long)refs);
    }
}

static void driver(void *arg)
{
    (void)arg;
    /* A shutdown finished: every connection closed, every queue let go. */
    if (H.shut && !H.srv_freed && !H.shut_checked && dx_server_connections(H.srv) == 0) {
        H.shut_checked = 1;
        H.shut_checks++;
        check_msg_refs("a dx_msg kept references after every connection closed");
    }
    /* No connection open (each on_close returned): no queue holds a message. */
    if (!H.srv_freed && H.nopen == 0 && H.nmsgs) {
        H.idle_checks++;
        check_msg_refs("a dx_msg kept references with no connection open");
    }
    H.steps++;
    H.round_steps++;
    H.vnow += 2000000u; /* 2 ms of virtual time per step */
    if (!H.endgame && (H.round_events >= EVENT_BUDGET || H.round_steps >= STEP_BUDGET))
        H.endgame = 1;
    if (H.endgame) {
        if (!H.srv_freed && (H.free_where == 3 || H.round_steps >= STEP_BUDGET + 400))
            srv_free();
        if (H.srv_freed) {
            end_round();
            H.round_done = 1;
            dx_loop_stop(H.loop);
            return;
        }
    }
    for (unsigned k = 0; k < 4; k++) {
        unsigned what = pick(10);
        if (what < 6 && (H.tls || chance(30)))
            cl_step();
        else if (what < 6)
            peer_step((int)pick(MAX_PEER));
        else if (what < 7 && H.npend && chance(30))
            answer_random();
        else if (what < 7 && H.npend)
            answer_then_leave();
        else if (what < 8 && !H.srv_freed)
            toggle_pause(random_open());
        else if (!H.srv_freed)
            srv_acts(NULL);
    }
    if (dx_loop_post(H.loop, driver, NULL) != 0)
        violation("cannot post the driver", 0, 0);
}

static void test_features(void **state)
{
    (void)state;
    uint64_t seed = hx_seed();
    int rounds = hx_rounds("hammer_features", seed, 6);
    memset(&H, 0, sizeof H);
    H.rng = seed;
    for (int i = 0; i < MAX_PEER; i++)
        H.peers[i].fd = -1;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pipe2(H.pipes[i], O_NONBLOCK | O_CLOEXEC), 0);
    }
    /* A certificate for the TLS rounds (as test_tls.c makes its own). */
    snprintf(H.dir, sizeof H.dir, "/tmp/dx_hammer_XXXXXX");
    assert_non_null(mkdtemp(H.dir));
    dx_test_self_signed(H.dir, "h.test", H.crt, H.key);
    dx_test_seams_init(&H.ts);
    H.ts.seams.now_ns = vnow;
    H.vnow = 1000000000u;
    static const dx_log debug_log = {.sink = NULL, .ud = NULL, .level = DX_LOG_DEBUG};
    dx_loop_options lo = {.seams = &H.ts.seams,
                          .log = getenv("DX_HAMMER_VERBOSE") ? &debug_log : &dx_test_quiet_log};
    H.loop = dx_loop_new(&lo, NULL);
    assert_non_null(H.loop);
    uint64_t end = dx_test_mono_ms() + SAFETY_MS;
    for (int r = 0; r < rounds; r++) {
        H.tls = r % 3 == 2;
        start_server();
        H.endgame = 0;
        H.free_where = r % 5; /* 0 on_open, 1 on_message, 2 on_close, 3 the driver, 4 a timer */
        H.tls = r % 3 == 2;   /* TLS rounds: dx_client peers over wss:// */
        H.tls_rounds += H.tls;
        H.do_shut = (H.free_where >= 2) && chance(60);
        if (H.free_where == 4)
            timer_new(); /* at least one timer runs in the endgame */
        H.round_done = 0;
        H.round_events = H.round_steps = 0;
        assert_int_equal(dx_loop_post(H.loop, driver, NULL), 0);
        while (!H.round_done) {
            assert_true(dx_test_mono_ms() < end);
            assert_int_equal(dx_loop_run(H.loop), 0);
        }
        assert_int_equal(H.nopen, 0);
        /* The server is gone: every queue that held a message let go of it. */
        check_msg_refs("a dx_msg kept references after the server's free");
        for (size_t i = 0; i < H.nmsgs; i++)
            dx_msg_unref(H.msgs[i]);
        H.nmsgs = 0;
    }
    long before = H.events;
    dx_loop_stop(H.loop);
    assert_int_equal(dx_loop_run(H.loop), 0);
    assert_int_equal(H.events, before);
    dx_loop_free(H.loop);
    for (int i = 0; i < 2; i++) {
        close(H.pipes[i][0]);
        close(H.pipes[i][1]);
    }
    assert_int_equal(dx_test_rm_rf(H.dir), 0);
    printf("hammer_features: %ld events, %ld steps; %ld opens, %ld closes, %ld dropped (%ld frees in callbacks); "
           "upgrades: %ld deferred, %ld answered 0, %ld DX_ECLOSED, %ld refused at once; %ld shared + %ld copied "
           "sends, %ld DX_ELIMIT; clients: %ld opens, %ld messages checked, %ld frees in callbacks, %ld TLS rounds; %ld shutdowns drained, %ld idle checks; %ld pauses, %ld resumes; %ld timer, %ld watch, %ld post callbacks; messages "
           "checked: %ld at peers, %ld at the server\n",
           H.events, H.steps, H.opens, H.closes, H.dropped, H.frees_in_cb, H.deferred, H.answered_ok,
           H.answered_closed, H.refused_now, H.shared_sends, H.copied_sends, H.elimits, H.cl_opens, H.cl_msgs_ok, H.cl_frees_in_cb, H.tls_rounds, H.shut_checks, H.idle_checks, H.pauses, H.resumes,
           H.timers_fired, H.watches_fired, H.posts_run, H.peer_msgs_ok, H.srv_msgs_ok);
    if (H.violations)
        printf("hammer_features: %ld violations, first: %s (seed %llu)\n", H.violations, H.first_violation,
               (unsigned long long)seed);
    assert_int_equal(H.violations, 0);
    long closed = 0, dropped = 0;
    while (H.recs) {
        crec *r = H.recs;
        H.recs = r->next;
        assert_true(r->state != R_OPEN);
        closed += r->state == R_CLOSED;
        dropped += r->state == R_DROPPED;
        free(r->sent);
        free(r);
    }
    assert_int_equal(closed + dropped, H.opens);
    while (H.clinsts) {
        clinst *ci = H.clinsts;
        H.clinsts = ci->next;
        assert_null(ci->cl);
        assert_true(ci->opens <= 1 && ci->closes <= ci->opens);
        free(ci);
    }
    assert_int_equal(H.ts.live, 0);
    /* It really hammered. */
    assert_true(H.opens >= 50);
    assert_true(H.deferred > 0 && H.answered_ok > 0 && H.answered_closed > 0);
    assert_true(H.shared_sends > 0 && H.elimits > 0 && H.pauses > 0);
    assert_true(H.timers_fired > 0 && H.watches_fired > 0 && H.posts_run > 0);
    assert_true(H.peer_msgs_ok > 0 && H.srv_msgs_ok > 0);
    assert_true(H.cl_opens > 0 && H.cl_msgs_ok > 0);
}

int main(void)
{
    /* The loop blocks SIGPIPE while it runs; one left pending by a write to
     * a reset peer must not kill the test when cmocka restores the mask. */
    signal(SIGPIPE, SIG_IGN);
    dx_test_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_features),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
