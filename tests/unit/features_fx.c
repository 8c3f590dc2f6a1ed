/* tests/unit/features_fx.c: see features_fx.h. */
#define _GNU_SOURCE
#include "features_fx.h"

#include "core/rcbuf.h"
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

hammer H;

unsigned pick(unsigned n) { return hx_pick(&H.rng, n); }
int chance(unsigned percent) { return hx_chance(&H.rng, percent); }

void violation(const char *what, long a, long b)
{
    if (H.violations++ == 0)
        snprintf(H.first_violation, sizeof H.first_violation, "%s [%ld %ld] (event %ld, step %ld)", what, a, b,
                 H.events, H.steps);
}

void event(void)
{
    H.events++;
    H.round_events++;
}

uint64_t vnow(void *ud)
{
    (void)ud;
    return H.vnow;
}

/* ---- payloads: 4-byte big-endian sequence number, then bytes derived from it ------ */

size_t make_payload(uint8_t *out, uint32_t seq, size_t len)
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

int check_payload(const uint8_t *p, size_t len, uint32_t *seq)
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

void ext_fill(dx_conn *c, unsigned tag)
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

void sent_push(crec *r, uint32_t seq)
{
    if (r->nsent == r->capsent) {
        r->capsent = r->capsent ? r->capsent * 2 : 16;
        r->sent = realloc(r->sent, r->capsent * sizeof *r->sent);
        if (!r->sent)
            abort();
    }
    r->sent[r->nsent++] = seq;
}

crec *live_rec(dx_conn *c, void *ud, const char *what)
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

crec *random_open(void) { return H.nopen ? H.open[pick((unsigned)H.nopen)] : NULL; }

/* ---- raw peers ------------------------------------------------------------------------ */

void peer_close(peer *p, int rst)
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

void peer_step(int idx)
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

void cl_free(clinst *ci, int in_cb)
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
    o.deflate.enable = chance(75);
    o.deflate.client_no_context_takeover = chance(50);
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

void cl_step(void)
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
void answer_then_leave(void)
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
