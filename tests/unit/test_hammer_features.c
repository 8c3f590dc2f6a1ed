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
 * frames) is hammer_fx.c.
 *
 * Seeded (printed): DX_HAMMER_SEED=n replays the random choices (the
 * kernel's timing still varies), DX_HAMMER_ROUNDS=n sets the rounds,
 * DX_HAMMER_VERBOSE=1 logs the library at DEBUG and details an accepted
 * upgrade that never opened (grep the log for its remote address).
 */
#define _GNU_SOURCE
#include "hammer_fx.h"

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

#define MAX_PEER 48
#define MAX_CL 12
#define MAX_OPEN 256
#define MAX_PEND 256
#define MAX_TIMERS 32
#define MAX_MSGS 4096
#define EXT_SIZE 40
#define EVENT_BUDGET 5000
#define STEP_BUDGET 2000
#define SAFETY_MS 120000

/* ---- state --------------------------------------------------------------------------- */

enum { R_NEW = 0, R_OPEN, R_CLOSED, R_DROPPED, R_NEVER };

/* One server-side connection, from on_upgrade on. */
typedef struct crec {
    struct crec *next;
    int state;
    int accepted;  /* the upgrade was accepted: on_open may come */
    long acc_step; /* step at which dx_upgrade_accept returned 0 (0: it did not) */
    int lost;      /* a shutdown or free came before on_open */
    int left;      /* its peer left right after the answer */
    long dbg;
    char remote[64];
    struct clinst *ci;
    int is_cl;     /* its peer is a dx_client (else a raw peer) */
    int peer;      /* index and generation of the peer it belongs to */
    unsigned gen;
    unsigned tag;  /* ext pattern */
    int paused, closing;
    uint32_t last_in;
    uint32_t *sent; /* sequence numbers queued for the peer, in order */
    size_t nsent, capsent;
    dx_conn *c;
} crec;

typedef struct pend {
    dx_upgrade *h;
    crec *r;
    long not_before; /* round step before which it is not answered: past the handshake timeout */
} pend;

typedef struct peer {
    int fd; /* -1: none */
    unsigned gen;
    int noread, shut_wr, head_done, refused;
    uint32_t out_seq;
    crec *rec;
    size_t next_idx;
    uint8_t in[70000];
    size_t inlen;
} peer;

/* One dx_client (no reconnect: one connection at most); kept until the end
 * so that a callback after its free is seen, not a use-after-free. */
typedef struct clinst {
    struct clinst *next;
    dx_client *cl; /* NULL once freed */
    int slot;
    unsigned gen;
    int open, closes, opens, paused;
    crec *rec;
    size_t next_idx;
    uint32_t out_seq;
} clinst;

typedef struct htimer {
    dx_timer *t;
    int slot;
} htimer;

typedef struct hammer {
    uint64_t rng;
    uint64_t vnow;
    dx_test_seams ts;
    dx_loop *loop;
    dx_server *srv;
    unsigned port;
    int srv_freed, shut, shut_checked;
    crec *open[MAX_OPEN];
    size_t nopen;
    crec *recs;
    unsigned tags;
    pend *pends[MAX_PEND];
    size_t npend;
    peer peers[MAX_PEER];
    clinst *cl[MAX_CL];
    unsigned cl_gen[MAX_CL];
    clinst *clinsts;
    int tls;
    char crt[128], key[128], dir[64];
    htimer *timers[MAX_TIMERS];
    dx_watch *watch[2];
    int pipes[2][2];
    dx_msg *msgs[MAX_MSGS];
    size_t nmsgs;
    uint32_t seq;
    long events, steps, round_events, round_steps;
    int endgame, free_where, do_shut, round_done;
    long violations;
    char first_violation[240];
    /* counts */
    long opens, closes, dropped, deferred, answered_ok, answered_closed, refused_now, timers_fired, watches_fired,
        posts_run, shut_checks, idle_checks, shared_sends, copied_sends, elimits, cl_opens, cl_msgs_ok, cl_frees_in_cb, tls_rounds, pauses, resumes, peer_msgs_ok, srv_msgs_ok, frees_in_cb;
} hammer;

static hammer H;

static unsigned pick(unsigned n) { return hx_pick(&H.rng, n); }
static int chance(unsigned percent) { return hx_chance(&H.rng, percent); }

static void violation(const char *what, long a, long b)
{
    if (H.violations++ == 0)
        snprintf(H.first_violation, sizeof H.first_violation, "%s [%ld %ld] (event %ld, step %ld)", what, a, b,
                 H.events, H.steps);
}

static void event(void)
{
    H.events++;
    H.round_events++;
}

static uint64_t vnow(void *ud)
{
    (void)ud;
    return H.vnow;
}

/* ---- payloads: 4-byte big-endian sequence number, then bytes derived from it ------ */

static size_t make_payload(uint8_t *out, uint32_t seq, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    if (len < 8)
        len = 8;
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)hex[(seq >> (28 - 4 * i)) & 15u];
    for (size_t i = 8; i < len; i++)
        out[i] = (uint8_t)('a' + (seq + i) % 26);
    return len;
}

static int check_payload(const uint8_t *p, size_t len, uint32_t *seq)
{
    if (len < 8)
        return 0;
    uint32_t v = 0;
    for (int i = 0; i < 8; i++) {
        unsigned d = p[i] >= 'a' ? (unsigned)(p[i] - 'a' + 10) : (unsigned)(p[i] - '0');
        if (d > 15)
            return 0;
        v = v << 4 | d;
    }
    *seq = v;
    for (size_t i = 8; i < len; i++)
        if (p[i] != (uint8_t)('a' + (v + i) % 26))
            return 0;
    return 1;
}

/* ---- records and the ext pattern --------------------------------------------------- */

static void ext_fill(dx_conn *c, unsigned tag)
{
    uint8_t *e = dx_conn_ext(c);
    for (size_t i = 0; i < EXT_SIZE; i++)
        e[i] = (uint8_t)(tag * 7u + i);
}

static void ext_check(dx_conn *c, unsigned tag, const char *where)
{
    const uint8_t *e = dx_conn_ext(c);
    if (!e) {
        violation("no ext memory", 0, 0);
        return;
    }
    for (size_t i = 0; i < EXT_SIZE; i++)
        if (e[i] != (uint8_t)(tag * 7u + i)) {
            violation(where, (long)tag, (long)i);
            return;
        }
}

static void sent_push(crec *r, uint32_t seq)
{
    if (r->nsent == r->capsent) {
        r->capsent = r->capsent ? r->capsent * 2 : 16;
        r->sent = realloc(r->sent, r->capsent * sizeof *r->sent);
        if (!r->sent)
            abort();
    }
    r->sent[r->nsent++] = seq;
}

static crec *live_rec(dx_conn *c, void *ud, const char *what)
{
    if (ud != &H || H.srv_freed) {
        violation(what, 0, 0);
        return NULL;
    }
    crec *r = dx_conn_user(c);
    if (!r || r->state != R_OPEN || r->c != c) {
        violation(what, r ? r->state : -1, 0);
        return NULL;
    }
    ext_check(c, r->tag, "ext memory changed");
    return r;
}

static crec *random_open(void) { return H.nopen ? H.open[pick((unsigned)H.nopen)] : NULL; }

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

static void answer(size_t i);
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

static void srv_acts(crec *self)
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

static void answer(size_t i)
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

/* ---- raw peers ------------------------------------------------------------------------ */

static void peer_close(peer *p, int rst)
{
    if (p->fd < 0)
        return;
    if (rst)
        dx_test_close_rst(p->fd);
    else
        close(p->fd);
    p->fd = -1;
    p->rec = NULL;
}

/* Whole or nothing: a short write would cut a frame, so the peer resets. */
static void peer_send(peer *p, const void *b, size_t len)
{
    if (p->fd < 0 || p->shut_wr)
        return;
    ssize_t n = send(p->fd, b, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n != (ssize_t)len)
        peer_close(p, 1);
}

static size_t frame(uint8_t *out, unsigned op, int fin, const uint8_t *payload, size_t len)
{
    return hx_frame(&H.rng, out, op, fin, payload, len);
}

static void peer_open(int idx)
{
    peer *p = &H.peers[idx];
    if (H.srv_freed || H.shut)
        return;
    p->noread = chance(15);
    int fd = hx_peer_dial(H.port, p->noread ? 1024 : 0);
    if (fd < 0)
        return;
    p->fd = fd;
    p->gen++;
    p->shut_wr = p->head_done = p->refused = 0;
    p->out_seq = 0;
    p->rec = NULL;
    p->next_idx = 0;
    p->inlen = 0;
    char req[300];
    int n = snprintf(req, sizeof req,
                     "GET /p%dg%u HTTP/1.1\r\nHost: 127.0.0.1\r\n" DX_TEST_UPGRADE_HEADERS,
                     idx, p->gen);
    peer_send(p, req, (size_t)n);
    if (chance(40)) { /* frames right behind the request, maybe in the same segment: held while deferred */
        uint8_t pl[400], buf[3000];
        size_t m = 0;
        for (unsigned k = 1 + pick(12); k-- && m + 420 < sizeof buf;) {
            size_t len = make_payload(pl, ++p->out_seq, 8 + pick(300));
            m += frame(buf + m, chance(50) ? DX_OP_TEXT : DX_OP_BINARY, 1, pl, len);
        }
        peer_send(p, buf, m);
    }
}


/* Frames from the server: data must be the next queued sequence number. */
static void peer_parse(peer *p)
{
    size_t at = 0;
    if (!p->head_done) {
        uint8_t *end = memmem(p->in, p->inlen, "\r\n\r\n", 4);
        if (!end)
            return;
        if (p->inlen < 12 || memcmp(p->in, "HTTP/1.1 101", 12) != 0)
            p->refused = 1;
        p->head_done = 1;
        at = (size_t)(end - p->in) + 4;
    }
    if (p->refused) {
        p->inlen = 0;
        return;
    }
    for (;;) {
        if (p->inlen - at < 2)
            break;
        const uint8_t *f = p->in + at;
        unsigned op = f[0] & 0x0F;
        size_t len = f[1] & 0x7F, hl = 2;
        if (f[1] & 0x80)
            violation("server frame masked", 0, 0);
        if (len == 126) {
            if (p->inlen - at < 4)
                break;
            len = (size_t)f[2] << 8 | f[3];
            hl = 4;
        } else if (len == 127) {
            violation("frame too big for the test", 0, 0);
            p->inlen = 0;
            return;
        }
        if (p->inlen - at < hl + len)
            break;
        const uint8_t *pl = f + hl;
        if (op == DX_OP_TEXT || op == DX_OP_BINARY) {
            uint32_t seq;
            crec *r = p->rec;
            if (!(f[0] & 0x80))
                violation("server fragmented a message", 0, 0);
            if (!r)
                violation("data before on_open", 0, 0);
            else if (!check_payload(pl, len, &seq) || p->next_idx >= r->nsent || r->sent[p->next_idx] != seq)
                violation("peer got a message out of order, corrupt or never sent", (long)p->next_idx,
                          (long)r->nsent);
            else
                H.peer_msgs_ok++;
            p->next_idx++;
        } else if (op == DX_OP_PING && chance(70)) {
            uint8_t out[200];
            peer_send(p, out, frame(out, DX_OP_PONG, 1, pl, len));
            if (p->fd < 0)
                return;
        }
        at += hl + len;
    }
    memmove(p->in, p->in + at, p->inlen - at);
    p->inlen -= at;
}

static void peer_read(peer *p)
{
    while (p->fd >= 0 && p->inlen < sizeof p->in) {
        ssize_t n = recv(p->fd, p->in + p->inlen, sizeof p->in - p->inlen, MSG_DONTWAIT);
        if (n <= 0) {
            if (n == 0 || (errno != EAGAIN && errno != EINTR))
                peer_close(p, 0);
            return;
        }
        p->inlen += (size_t)n;
        peer_parse(p);
    }
}

static void peer_step(int idx)
{
    peer *p = &H.peers[idx];
    if (p->fd < 0) {
        if (chance(60))
            peer_open(idx);
        return;
    }
    if (!p->noread)
        peer_read(p);
    if (p->fd < 0)
        return;
    if (p->noread && chance(90))
        return; /* a peer that does not read mostly stays, until send_max drops it */
    uint8_t pl[400], buf[1000];
    size_t n = 0;
    switch (pick(30)) {
    case 0:
        peer_close(p, 1);
        return;
    case 1:
        peer_close(p, 0);
        return;
    case 2:
        if (!p->shut_wr) {
            shutdown(p->fd, SHUT_WR);
            p->shut_wr = 1;
        }
        return;
    case 3:
        pl[0] = 0x03;
        pl[1] = 0xE8;
        n = frame(buf, DX_OP_CLOSE, 1, pl, 2);
        break;
    case 4: /* a fragmented message with a ping between the fragments */
    {
        size_t len = make_payload(pl, ++p->out_seq, 8 + pick(200));
        size_t cut = pick((unsigned)len);
        n = frame(buf, DX_OP_TEXT, 0, pl, cut);
        n += frame(buf + n, DX_OP_PING, 1, pl, 3);
        n += frame(buf + n, DX_OP_CONT, 1, pl + cut, len - cut);
        break;
    }
    default:
        for (unsigned k = 1 + pick(4); k--;) {
            size_t len = make_payload(pl, ++p->out_seq, 8 + pick(150));
            n += frame(buf + n, chance(50) ? DX_OP_TEXT : DX_OP_BINARY, 1, pl, len);
        }
        break;
    }
    peer_send(p, buf, n);
}


/* ---- dx_client peers (the only peers of TLS rounds) ------------------------------------ */

static clinst *cl_of(void *ud, const char *what)
{
    clinst *ci = ud;
    if (!ci || !ci->cl) {
        violation(what, 0, 0);
        return NULL;
    }
    return ci;
}

static void cl_free(clinst *ci, int in_cb)
{
    dx_client_free(ci->cl);
    ci->cl = NULL;
    ci->open = 0;
    ci->rec = NULL;
    if (H.cl[ci->slot] == ci)
        H.cl[ci->slot] = NULL;
    H.cl_frees_in_cb += in_cb;
}

/* A sequence-numbered message from the client: copied, or as a dx_msg
 * (a client-side connection masks a copy of it). */
static void cl_send(clinst *ci)
{
    if (!ci->cl || !ci->open)
        return;
    uint8_t buf[2000];
    uint32_t seq = ci->out_seq + 1;
    size_t len = make_payload(buf, seq, 8 + pick(chance(20) ? 1900 : 200));
    int rc;
    if (chance(50)) {
        dx_msg *m = dx_msg_new(DX_OP_BINARY, buf, len, NULL);
        if (!m)
            abort();
        rc = dx_conn_send_msg(dx_client_conn(ci->cl), m);
        dx_msg_unref(m);
    } else {
        rc = dx_client_send(ci->cl, DX_OP_TEXT, buf, len);
    }
    if (rc == 0)
        ci->out_seq = seq;
}

static void cl_toggle_pause(clinst *ci)
{
    if (!ci->cl || !ci->open)
        return;
    dx_conn *c = dx_client_conn(ci->cl);
    if (!c)
        return;
    int pause = chance(50);
    int rc = pause ? dx_conn_pause(c) : dx_conn_resume(c);
    if (rc != 0 && rc != DX_ECLOSED)
        violation("client pause/resume", rc, 0);
    if (rc == 0)
        ci->paused = pause;
}

static void c_open(dx_conn *c, void *ud)
{
    (void)c;
    event();
    clinst *ci = cl_of(ud, "client on_open after free");
    if (!ci)
        return;
    if (ci->open || ci->opens)
        violation("client on_open twice", ci->opens, 0);
    ci->open = 1;
    ci->opens++;
    H.cl_opens++;
    cl_send(ci);
    if (chance(5))
        cl_free(ci, 1);
}

static void c_message(dx_conn *c, int op, const uint8_t *p, size_t len, void *ud)
{
    (void)c;
    (void)op;
    event();
    clinst *ci = cl_of(ud, "client on_message after free");
    if (!ci)
        return;
    uint32_t seq;
    crec *r = ci->rec;
    if (!ci->open)
        violation("client on_message while not open", 0, 0);
    if (ci->paused)
        violation("client on_message while paused", 0, 0);
    if (!r)
        violation("client data before the server's on_open", 0, 0);
    else if (!check_payload(p, len, &seq) || ci->next_idx >= r->nsent || r->sent[ci->next_idx] != seq)
        violation("client got a message out of order, corrupt or never sent", (long)ci->next_idx, (long)r->nsent);
    else
        H.cl_msgs_ok++;
    ci->next_idx++;
    switch (pick(30)) {
    case 0:
        cl_free(ci, 1);
        break;
    case 1:
        ci->paused = 0; /* a close resumes reading */
        (void)dx_client_close(ci->cl, 1000, "enough", 6);
        break;
    case 2:
    case 3:
        cl_toggle_pause(ci);
        break;
    case 4:
        if (!H.srv_freed)
            srv_acts(NULL); /* the server's calls from a client's callback */
        break;
    default:
        if (chance(20))
            cl_send(ci);
        break;
    }
}

static void c_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    (void)c;
    (void)code;
    (void)reason;
    (void)len;
    event();
    clinst *ci = cl_of(ud, "client on_close after free");
    if (!ci)
        return;
    if (!ci->open)
        violation("client on_close without on_open", 0, 0);
    ci->open = 0;
    ci->closes++;
    if (chance(20))
        cl_free(ci, 1);
}

static void c_error(dx_client *cl, int err, const char *what, void *ud)
{
    (void)cl;
    (void)err;
    (void)what;
    event();
    clinst *ci = cl_of(ud, "client on_error after free");
    if (ci && chance(20))
        cl_free(ci, 1);
}

static void c_done(dx_client *cl, void *ud)
{
    (void)cl;
    event();
    clinst *ci = cl_of(ud, "client on_done after free");
    if (ci)
        cl_free(ci, 1); /* no reconnect: the slot takes a new client */
}

static void cl_new(int slot)
{
    if (H.srv_freed || H.shut)
        return;
    clinst *ci = calloc(1, sizeof *ci);
    if (!ci)
        abort();
    ci->next = H.clinsts;
    H.clinsts = ci;
    ci->slot = slot;
    ci->gen = ++H.cl_gen[slot];
    char url[96];
    snprintf(url, sizeof url, "%s://127.0.0.1:%u/c%dg%u", H.tls ? "wss" : "ws", H.port, slot, ci->gen);
    dx_client_options o = {.url = url, .insecure = 1, .close_timeout_ms = 300, .connect_timeout_ms = 1000,
                           .send_max = 65536, .ud = ci};
    o.cb.on_open = c_open;
    o.cb.on_message = c_message;
    o.cb.on_close = c_close;
    o.cb.on_error = c_error;
    o.cb.on_done = c_done;
    int err = 0;
    ci->cl = dx_client_new(H.loop, &o, &err);
    if (!ci->cl) {
        violation("dx_client_new", err, 0);
        return;
    }
    H.cl[slot] = ci;
    if (dx_client_connect(ci->cl) != 0)
        violation("dx_client_connect", 0, 0);
}

static void cl_step(void)
{
    int slot = (int)pick(MAX_CL);
    clinst *ci = H.cl[slot];
    if (!ci) {
        if (chance(50))
            cl_new(slot);
        return;
    }
    switch (pick(12)) {
    case 0:
        cl_free(ci, 0);
        break;
    case 1:
        ci->paused = 0;
        (void)dx_client_close(ci->cl, 1000, NULL, 0);
        break;
    case 2:
    case 3:
        cl_toggle_pause(ci);
        break;
    default:
        cl_send(ci);
        break;
    }
}

/* An answer, and the peer leaves right behind it (FIN or RST) before the
 * loop has served the connection. */
static void answer_then_leave(void)
{
    size_t i = pick((unsigned)H.npend);
    crec *r = H.pends[i]->r;
    if (H.round_steps < H.pends[i]->not_before)
        return;
    answer(i);
    if (!r->is_cl && H.peers[r->peer].gen == r->gen) {
        r->left = 1;
        peer_close(&H.peers[r->peer], chance(50));
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
