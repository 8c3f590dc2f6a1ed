/*
 * src/ws/conn.c: one connection (server or client side), from accept or
 * connect to close. Its send queue is send.c; plain HTTP is http.c; the
 * upgrade request view and deferred decisions are upgrade.c.
 *
 * Layer: ws. States (ws.h): TLS → HEAD → OPEN → DRAIN → LINGER → DEAD.
 *
 * Reading: bytes land in the loop's shared buffer (loop->rbuf) and go to the
 * session straight from there; a connection owns memory only for a partial
 * head (HEAD), a partial message (the session's rx) or unsent bytes (wq).
 *
 * Writing (send.c): frames sent during a loop iteration, from any callback, are
 * gathered in the connection's queue (wq, ws.h): small private frames as
 * copies in the loop's arena, shared frames (dx_msg) as references, never
 * copied. Before the loop sleeps, each connection that got output is
 * written with one writev (an echo of 16 pipelined messages, or 16
 * broadcasts, is one write, not 16). A large private frame, or a queue
 * past gather_max, is written at once. Whatever the kernel does not take
 * waits for EPOLLOUT in memory the connection owns (or references),
 * bounded by send_max; an idle connection holds no queue at all.
 *
 * Closing: a session that is CLOSED (handshake done) or FAILED (we sent our
 * error close) moves to DRAIN; once wq is empty we send FIN (LINGER) and
 * read until the peer's EOF, so our close frame is not lost to a reset
 * (RFC 6455 §7.1.1: the server closes the TCP connection first). Every wait
 * is bounded by close_timeout_ms.
 *
 * Dying (habit 6): a connection is first marked dead (CS_DEAD: out of every
 * loop list, socket closed, nothing more delivered), which fires no
 * callback and may happen anywhere, inside a call the application made
 * included; on_close and the free run later from the loop's deferred list,
 * once the callback stack has unwound. See "lifecycle" below.
 *
 * Holding input: while an upgrade decision is deferred (CF_DEFERRED, then
 * CF_OPEN_PENDING until on_open fires from the loop) or the application
 * paused the connection (CF_PAUSED), epoll watches only for the peer
 * leaving, and bytes already read wait in c->stash, in order. Invariant:
 * the socket is never read while a stash exists; on_io feeds the stash
 * first. A deferred decision owns a dx_upgrade handle that outlives the
 * connection (c->upg and h->conn point at each other until either ends).
 */
#define _GNU_SOURCE
#include "ws/ws.h"

#include "core/log.h"
#include "core/seams.h"
#include "net/sock.h"
#include "proto/handshake.h"
#include "proto/mask.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define READS_PER_EVENT 4 /* fairness: at most this many full buffers per wake-up */

static dx_conn *conn_of(dx__session *s) { return (dx_conn *)(void *)s; }
static const dx_log *LOG(const dx_conn *c) { return dx__conn_ep(c)->loop->log; }

static void conn_finish(dx_conn *c, const char *why);
static void after_session(dx_conn *c);
static void arm_heartbeat(dx_conn *c);
static void on_io(dx__io *io, uint32_t events);
static void update_events(dx_conn *c);

/* ---- addresses ----------------------------------------------------------- */

/* Written by hand: inet_ntop and snprintf cost a thousand instructions per
 * handshake (the upgrade request's `remote`), this a few dozen. */
size_t dx__ipv4_port(char t[22], const uint8_t a[4], unsigned port)
{
    size_t n = 0;
    for (int i = 0; i < 4; i++) {
        unsigned v = a[i];
        if (v >= 100)
            t[n++] = (char)('0' + v / 100);
        if (v >= 10)
            t[n++] = (char)('0' + v / 10 % 10);
        t[n++] = (char)('0' + v % 10);
        t[n++] = i < 3 ? '.' : ':';
    }
    char d[5];
    int k = 0;
    do {
        d[k++] = (char)('0' + port % 10);
        port /= 10;
    } while (port && k < 5);
    while (k)
        t[n++] = d[--k];
    t[n] = 0;
    return n;
}

size_t dx_conn_remote(const dx_conn *c, char *buf, size_t cap)
{
    char h[INET6_ADDRSTRLEN] = "";
    int n;
    if (c->family == AF_INET) {
        char t[24];
        size_t len = dx__ipv4_port(t, c->addr, c->port);
        if (cap) {
            size_t m = len < cap ? len : cap - 1;
            memcpy(buf, t, m);
            buf[m] = 0;
        }
        return len;
    }
    if (c->family == AF_INET6) {
        inet_ntop(AF_INET6, c->cold->addr6, h, sizeof h);
        n = snprintf(buf, cap, "[%s]:%u", h, c->port);
    } else {
        n = snprintf(buf, cap, "unix");
    }
    return n < 0 ? 0 : (size_t)n;
}

/* The peer's address for a log line (a value, so several can coexist). */
typedef struct addr_str {
    char s[64];
} addr_str;

static addr_str REMOTE(const dx_conn *c)
{
    addr_str a;
    dx_conn_remote(c, a.s, sizeof a.s);
    return a;
}

/* Fails (DX_ENOMEM) only for an IPv6 peer whose cold block could not be
 * made. */
static int store_addr(dx_conn *c, const struct sockaddr *sa)
{
    c->family = (uint8_t)sa->sa_family;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        memcpy(c->addr, &in->sin_addr, 4);
        c->port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            c->family = AF_INET;
            memcpy(c->addr, &in6->sin6_addr.s6_addr[12], 4);
        } else {
            dx__cold *k = dx__conn_cold(c);
            if (!k)
                return DX_ENOMEM;
            memcpy(k->addr6, &in6->sin6_addr, 16);
        }
        c->port = ntohs(in6->sin6_port);
    }
    return 0;
}

/* ---- writing ------------------------------------------------------------- */

/* What epoll watches: input unless reading is held (a deferred upgrade or
 * a paused connection watches only for the peer's EOF or reset; plain HTTP
 * turns reading off while an answer is pending, http.c), output while
 * bytes wait. */
static uint32_t io_events(const dx_conn *c)
{
    uint32_t ev = (c->flags & CF_WANT_WRITE) ? (uint32_t)EPOLLOUT : 0u;
    if (c->flags & (CF_DEFERRED | CF_OPEN_PENDING | CF_PAUSED))
        return ev | EPOLLRDHUP;
    if (c->flags & CF_READ_OFF)
        return ev | ((c->flags & CF_READ_HUP) ? (uint32_t)EPOLLRDHUP : 0u);
    return ev | EPOLLIN | EPOLLRDHUP;
}

static void update_events(dx_conn *c)
{
    if (c->state != CS_DEAD)
        (void)dx__io_modify(dx__conn_ep(c)->loop, &c->io, io_events(c));
}

static void want_write(dx_conn *c, bool on)
{
    if (c->state == CS_DEAD || !!(c->flags & CF_WANT_WRITE) == on)
        return;
    if (on)
        c->flags |= CF_WANT_WRITE;
    else
        c->flags &= (uint16_t)~CF_WANT_WRITE;
    update_events(c);
}

void dx__conn_reading(dx_conn *c, int mode)
{
    if (c->state == CS_DEAD)
        return;
    c->flags &= (uint16_t)~(CF_READ_OFF | CF_READ_HUP);
    if (mode != DX__READ_ON)
        c->flags |= CF_READ_OFF;
    if (mode == DX__READ_HUP)
        c->flags |= CF_READ_HUP;
    update_events(c);
}

/* ---- session events -------------------------------------------------------- */

/* Session handlers: nothing is delivered for a connection marked dead while
 * its read was being processed (the session also stops at the next frame). */
static void h_message(dx__session *s, int op, const uint8_t *p, size_t len)
{
    dx_conn *c = conn_of(s);
    if (c->state == CS_DEAD)
        return;
    c->msgs_in++;
    dx__conn_ep(c)->st.messages_in++;
    if (dx__conn_ep(c)->opt.cb.on_message)
        dx__conn_ep(c)->opt.cb.on_message(c, op, p, len, dx__conn_ep(c)->opt.ud);
}

static void h_pong(dx__session *s, const uint8_t *p, size_t len)
{
    dx_conn *c = conn_of(s);
    if (c->state == CS_DEAD)
        return;
    if (dx__conn_ep(c)->opt.cb.on_pong)
        dx__conn_ep(c)->opt.cb.on_pong(c, p, len, dx__conn_ep(c)->opt.ud);
    if (c->state != CS_DEAD && (c->flags & CF_PING_OUT)) {
        c->flags &= (uint16_t)~CF_PING_OUT;
        arm_heartbeat(c);
    }
}

static void h_frame(dx__session *s, const dx_frame_header *h, const uint8_t *head, size_t n)
{
    dx_conn *c = conn_of(s);
    if (c->state != CS_DEAD && dx__conn_ep(c)->opt.cb.on_frame)
        dx__conn_ep(c)->opt.cb.on_frame(c, '<', h->opcode, h->fin, h->rsv, h->len, h->masked, head, n, dx__conn_ep(c)->opt.ud);
}

static void h_close(dx__session *s, unsigned code, const char *reason, size_t len)
{
    dx_conn *c = conn_of(s);
    if (c->state == CS_DEAD)
        return;
    /* Keep the reason for on_close (the head slot is free once open). */
    if (len && !DX_COLD(c, head)) {
        dx__cold *k = dx__conn_cold(c);
        dx__head *r = k ? dx__alloc(dx__conn_ep(c)->loop->seams, sizeof *r + len + 1) : NULL;
        if (r) {
            r->len = len;
            memcpy(r->data, reason, len);
            r->data[len] = 0;
            k->head = r;
        }
    }
    dx__log(LOG(c), DX_LOG_DEBUG, "conn=%llu peer closed code=%u reason=\"%.*s\"", (unsigned long long)c->id,
            code, (int)len, reason);
}


void dx__ws_session_cfg(dx__ep *ep, int role)
{
    ep->scfg = (dx__session_cfg){
        .limits = {.max_frame = ep->opt.max_message, .max_message = ep->opt.max_message},
        .max_fragments = ep->opt.max_fragments,
        .role = (uint8_t)role,
        .auto_pong = true,
        .seams = ep->loop->seams,
        .on_message = h_message,
        .on_pong = h_pong,
        .on_close = h_close,
        .on_frame = ep->opt.cb.on_frame ? h_frame : NULL,
        .put = dx__conn_put,
    };
}

/* ---- the cold block ---------------------------------------------------------- */

dx__cold *dx__conn_cold(dx_conn *c)
{
    if (!c->cold) {
        c->cold = dx__alloc(dx__conn_ep(c)->loop->seams, sizeof *c->cold);
        if (c->cold)
            memset(c->cold, 0, sizeof *c->cold);
    }
    return c->cold;
}

void dx__conn_cold_trim(dx_conn *c)
{
    dx__cold *k = c->cold;
    if (k && !k->head && !k->stash && !k->upg && !k->http && !k->protocol && c->family != AF_INET6) {
        c->cold = NULL;
        dx__free(dx__conn_ep(c)->loop->seams, k);
    }
}

/* ---- lifecycle -------------------------------------------------------------- */

/*
 * A connection dies in two steps (libuv's uv_close, uSockets' closed list):
 *
 * 1. conn_mark (dx__conn_abort, the clean end in LINGER, an endpoint being
 *    freed): may run anywhere, inside a write, a session handler or a call
 *    the application made. It fires no callback. It decides the close code,
 *    sets CS_DEAD, stops the session (so the rest of a read is not
 *    delivered), takes the connection out of every list (epoll, ready,
 *    timer wheel, the gathered-output list, ep->conns), closes the socket and
 *    appends it to the loop's dead list (wsl->dead, by its `link`).
 * 2. conn_closed, from the loop's deferred list (dx__conn_reap, queued while
 *    the dead list is not empty) once the callback stack has unwound: on_close (once, if on_open fired and the owner is not being
 *    freed), the client's follow-up (reconnect, on_error, on_done), then
 *    the memory: session receive buffer, queue, reason, protocol, struct.
 *
 * Between the two, code still on the stack may touch the struct (it is
 * alive) but every path checks CS_DEAD before acting.
 */

/* Releases what a dead connection still holds, then the struct. Its
 * endpoint may be gone: only the loop (seams) is used. */
static void conn_release(dx_loop *loop, dx_conn *c)
{
    const dx_seams *seams = loop->seams;
    if (c->flags & CF_SESSION)
        dx__session_deinit(&c->s); /* a trailing partial message's buffer too */
    else
        dx__pmd_free(c->s.pmd); /* negotiated, never opened */
    if (c->cold) { /* stash, upg and http went as it died (hooks_release, http_conn_gone) */
        dx__free(seams, c->cold->head);
        dx__free(seams, c->cold->protocol);
        dx__free(seams, c->cold);
    }
    dx__wsl_conn_free(dx__wsl_find(loop), c); /* the loop's: it made c */
}

static void conn_closed(dx_loop *loop, dx_conn *c)
{
    dx__ep *ep = dx__conn_ep(c); /* alive: its own free is queued after us */
    /* Accepted (dx_upgrade_accept returned 0) but lost before the loop
     * opened it: the application still gets on_open, then on_close, so
     * the user pointer it handed over comes back. */
    if (!ep->freeing && (c->flags & CF_OPEN_OWED) && ep->opt.cb.on_open)
        ep->opt.cb.on_open(c, ep->opt.ud);
    if (!ep->freeing && (c->flags & (CF_OPENED | CF_OPEN_OWED)) && ep->opt.cb.on_close) {
        const dx__head *r = DX_COLD(c, head);
        const char *reason = r ? (const char *)r->data : "";
        size_t rlen = r ? r->len : 0;
        ep->opt.cb.on_close(c, c->code, reason, rlen, ep->opt.ud);
    }
    /* on_close may have freed the endpoint (deferred: still readable). */
    if (ep->cl && !ep->freeing)
        dx__client_conn_end(c); /* may reconnect or report; creates new connections only */
    conn_release(loop, c);
}

/* Milliseconds since open, exact: the loop's clock at open is kept to 40
 * bits (34 years of milliseconds), so the difference modulo 2^40 is it. */
static uint64_t open_duration_ms(const dx_conn *c)
{
    const uint64_t mask = ((uint64_t)1 << 40) - 1;
    uint64_t opened = (uint64_t)c->opened_ms_hi << 32 | c->opened_ms;
    return (dx__conn_ep(c)->loop->now_ms - opened) & mask;
}

static void conn_mark(dx_conn *c, unsigned explicit_code, const char *why, bool silent)
{
    if (c->state == CS_DEAD)
        return;
    dx__ep *ep = dx__conn_ep(c);
    dx_loop *loop = ep->loop;
    /* What the application is told: an explicit code (TLS failure), else
     * the peer's close code, else ours when we failed the session, else
     * 1006: the connection was lost without a close frame. */
    unsigned code = DX_CLOSE_ABNORMAL;
    if (explicit_code)
        code = explicit_code;
    else if (c->s.close_recv)
        code = c->s.close_recv;
    else if (c->s.state == DX_CODEC_FAILED && c->s.close_sent)
        code = c->s.close_sent;
    if ((c->flags & CF_OPEN_PENDING) && !silent)
        c->flags |= CF_OPEN_OWED; /* cleared below by hooks_release: remember it */
    dx__conn_hooks_release(c);
    dx__http_conn_gone(c); /* a held request's handle answers DX_ECLOSED from now on */
    dx__wq_release(c); /* leaves the loop's gathered list at once */
    c->state = CS_DEAD;
    /* A session_recv on the stack stops at its next frame: the rest of the
     * read is discarded (nothing is delivered after the connection died). */
    if (c->flags & CF_SESSION)
        c->s.state = DX_CODEC_FAILED;
    dx__conn_timer_stop(c); /* back in ep->conns */
    c->code = (uint16_t)code; /* shares its bytes with `due`: set once no deadline is armed */
    dx__io_stop(loop, &c->io); /* epoll and the ready list */
    dx__stream_close(&c->st, c->io.fd);
    c->io.fd = -1;
    dx_list_remove(&c->link);
    ep->nconns--;
    ep->st.closed++;
    if (c->flags & CF_OPENED) {
        ep->st.open--;
        if (!silent && dx__log_on(LOG(c), DX_LOG_INFO))
            dx__log(LOG(c), DX_LOG_INFO,
                    "conn=%llu close remote=%s code=%u duration_ms=%llu bytes_in=%llu bytes_out=%llu "
                    "msgs_in=%llu msgs_out=%llu",
                    (unsigned long long)c->id, REMOTE(c).s, code,
                    (unsigned long long)open_duration_ms(c),
                    (unsigned long long)c->bytes_in, (unsigned long long)c->bytes_out,
                    (unsigned long long)c->msgs_in, (unsigned long long)c->msgs_out);
    }
    if (ep->cl && !silent)
        dx__client_conn_marked(c, why);
    dx__wsl *w = ep->wsl;
    dx_list_push_back(&w->dead, &c->link);
    if (!dx_list_linked(&w->reap.node))
        dx__loop_later(loop, &w->reap);
}

/* The dead connections queued before this pass, oldest first. Those that
 * die meanwhile (an on_close closing others) queue the reaper again, for
 * the next pass: behind whatever their death queued before (a client's
 * on_done), ahead of what is queued after (an endpoint's own free). */
void dx__conn_reap(dx_loop *loop, dx__deferred *d)
{
    dx__wsl *w = dx_list_entry(d, dx__wsl, reap);
    dx_list batch;
    if (dx_list_empty(&w->dead))
        return;
    dx_list_take(&batch, &w->dead);
    dx_list *it;
    while ((it = dx_list_first(&batch)) != NULL) {
        dx_list_remove(it);
        conn_closed(loop, dx_list_entry(it, dx_conn, link));
    }
}

/* The clean end (LINGER saw the peer's EOF). */
static void conn_finish(dx_conn *c, const char *why) { conn_mark(c, 0, why, false); }

void dx__ep_take_conns(dx__ep *ep, dx_list *todo)
{
    dx_list_take(todo, &ep->conns);
    dx__wsl *w = ep->wsl;
    if (!w || !w->armed)
        return;
    /* The armed ones share the loop's wheel (and, during a tick, its
     * expired list) with other endpoints'. A walk of every armed connection
     * of the loop: for an endpoint's shutdown or free, not for anything
     * per message or per tick. */
    for (size_t i = 0; i <= DX_WHEEL_SLOTS; i++) {
        dx_list *l = i < DX_WHEEL_SLOTS ? &w->wheel[i] : &w->expired;
        dx_list_foreach_safe(it, tmp, l)
        {
            if (dx__conn_ep(dx_list_entry(it, dx_conn, link)) != ep)
                continue;
            dx_list_remove(it);
            dx_list_push_back(todo, it);
        }
    }
}

void dx__conn_put_back(dx_conn *c)
{
    dx__ep *ep = dx__conn_ep(c);
    dx_list_remove(&c->link);
    if (c->flags & CF_TIMER) {
        /* Due now or earlier: it was taken from the expired list of the
         * tick running (every other armed one is due later). */
        dx__wsl *w = ep->wsl;
        if ((int32_t)(c->due - (uint32_t)ep->loop->tick) <= 0)
            dx_list_push_back(&w->expired, &c->link);
        else
            dx_list_push_back(&w->wheel[c->due % DX_WHEEL_SLOTS], &c->link);
    } else
        dx_list_push_back(&ep->conns, &c->link);
}

bool dx__ep_drop_conns(dx__ep *ep)
{
    dx_loop *loop = ep->loop;
    ep->freeing = true;
    dx_list todo;
    dx__ep_take_conns(ep, &todo);
    dx_list *it;
    while ((it = dx_list_first(&todo)) != NULL) {
        dx_conn *c = dx_list_entry(it, dx_conn, link);
        dx__conn_put_back(c);
        conn_mark(c, 0, NULL, true);
    }
    if (dx__loop_dispatching(loop) || !ep->wsl)
        return dx__loop_dispatching(loop); /* they, then the owner, are released from the deferred list */
    /* Nothing is on the stack: release this endpoint's dead connections now
     * (the others stay queued for the next dx_loop_run). */
    dx_list_foreach_safe(node, tmp, &ep->wsl->dead)
    {
        dx_conn *c = dx_list_entry(node, dx_conn, link);
        if (dx__conn_ep(c) != ep)
            continue;
        dx_list_remove(node);
        conn_release(loop, c);
    }
    return false;
}

void dx__conn_abort(dx_conn *c, unsigned code, const char *why)
{
    if (c->state == CS_DEAD)
        return;
    int level = (c->flags & CF_OPENED) ? DX_LOG_INFO : DX_LOG_DEBUG;
    if (dx__log_on(LOG(c), level))
        dx__log(LOG(c), level, "conn=%llu dropped remote=%s: %s", (unsigned long long)c->id, REMOTE(c).s, why);
    conn_mark(c, code != DX_CLOSE_ABNORMAL ? code : 0, why, false);
}

void dx__conn_finish(dx_conn *c) { conn_finish(c, NULL); }

void dx__conn_finish_after_flush(dx_conn *c)
{
    if (c->state >= CS_DRAIN)
        return;
    c->state = CS_DRAIN;
    if (c->flags & (CF_PAUSED | CF_DEFERRED | CF_OPEN_PENDING)) {
        /* Reading must go on: LINGER waits for the peer's EOF. */
        c->flags &= (uint16_t)~(CF_PAUSED | CF_DEFERRED | CF_OPEN_PENDING);
        update_events(c);
    }
    dx__conn_timer_start(c, dx__conn_ep(c)->opt.close_timeout_ms);
    if (WQ_LEN(c) == 0)
        (void)dx__wq_done(c, false); /* nothing queued: FIN now */
}

/* Called after every session call: move on when the session ended. */
static void after_session(dx_conn *c)
{
    if (c->state != CS_OPEN)
        return;
    if (c->s.state == DX_CODEC_CLOSED || c->s.state == DX_CODEC_FAILED) {
        if (c->s.state == DX_CODEC_FAILED && c->s.err)
            dx__log(LOG(c), DX_LOG_INFO, "conn=%llu protocol failure remote=%s: %s; sent close %u",
                    (unsigned long long)c->id, REMOTE(c).s, dx_strerror(c->s.err), c->s.close_sent);
        dx__conn_finish_after_flush(c);
    }
}

void dx__conn_after_session(dx_conn *c) { after_session(c); }

/* ---- heartbeat and timeouts ------------------------------------------------ */

/* The connection's deadline lives in the loop's connection wheel (ws.h
 * dx__wsl): the same ticks and rounding as a loop timer (dx__timer_start),
 * kept by the connection's `link` and 32-bit `due` instead of a timer of
 * its own. */
void dx__conn_timer_start(dx_conn *c, uint64_t ms)
{
    dx__wsl *w = dx__conn_ep(c)->wsl;
    dx_loop *loop = dx__conn_ep(c)->loop;
    uint64_t ticks = (ms + DX_TICK_MS - 1) / DX_TICK_MS;
    if (ticks == 0)
        ticks = 1;
    if (ticks > INT32_MAX)
        ticks = INT32_MAX; /* 17 years: due stays ahead in 32-bit arithmetic */
    c->due = (uint32_t)(loop->tick + ticks);
    dx_list_remove(&c->link);
    dx_list_push_back(&w->wheel[c->due % DX_WHEEL_SLOTS], &c->link);
    if (!(c->flags & CF_TIMER)) {
        c->flags |= CF_TIMER;
        w->armed++;
    }
    if (!dx__timer_armed(&w->tick))
        dx__timer_start(loop, &w->tick, DX_TICK_MS);
}

void dx__conn_timer_stop(dx_conn *c)
{
    if (!(c->flags & CF_TIMER))
        return;
    c->flags &= (uint16_t)~CF_TIMER;
    dx__conn_ep(c)->wsl->armed--;
    dx_list_remove(&c->link);
    dx_list_push_back(&dx__conn_ep(c)->conns, &c->link);
}

static void on_timer(dx_conn *c);

/* One tick of the connection wheel: the slot of this tick, its connections
 * due now fired one at a time (a handler may stop or restart any deadline,
 * those that expired with it included), those due in a later turn left. */
void dx__conn_wheel_tick(dx__timer *t)
{
    dx__wsl *w = dx_list_entry(t, dx__wsl, tick);
    dx_loop *loop = w->loop;
    uint32_t now = (uint32_t)loop->tick;
    dx_list_foreach_safe(it, tmp, &w->wheel[now % DX_WHEEL_SLOTS])
    {
        if ((int32_t)(dx_list_entry(it, dx_conn, link)->due - now) <= 0) {
            dx_list_remove(it);
            dx_list_push_back(&w->expired, it);
        }
    }
    /* In the wsl, not on the stack: a handler that frees or shuts down an
     * endpoint (on_io's fallback may reach on_open) finds its connections
     * here too (dx__ep_take_conns). */
    dx_list *it;
    while ((it = dx_list_first(&w->expired)) != NULL) {
        dx_conn *c = dx_list_entry(it, dx_conn, link);
        dx__conn_timer_stop(c);
        on_timer(c);
    }
    if (w->armed && !dx__timer_armed(&w->tick))
        dx__timer_start(loop, &w->tick, DX_TICK_MS);
}

/* Milliseconds since the last read (tick precision). */
static uint64_t quiet_ms(const dx_conn *c)
{
    return (uint64_t)((uint32_t)dx__conn_ep(c)->loop->tick - c->last_rx_tick) * DX_TICK_MS;
}

static void arm_heartbeat(dx_conn *c)
{
    const dx_server_options *o = &dx__conn_ep(c)->opt;
    if (c->state != CS_OPEN || c->s.state != DX_CODEC_OPEN)
        return; /* the close timeout owns the timer now (or it is dead) */
    uint64_t next = o->ping_interval_ms == (unsigned)-1 ? 0 : o->ping_interval_ms;
    if (o->idle_timeout_ms && (!next || o->idle_timeout_ms < next))
        next = o->idle_timeout_ms;
    if (next)
        dx__conn_timer_start(c, next);
    else
        dx__conn_timer_stop(c);
}

static void on_timer(dx_conn *c)
{
    dx__ep *ep = dx__conn_ep(c);
    const dx_server_options *o = &ep->opt;
    uint64_t now = ep->loop->now_ms;
    switch (c->state) {
    case CS_CONNECT:
    case CS_PROXY:
    case CS_TLS:
    case CS_HEAD:
        if (c->flags & CF_OPEN_PENDING) {
            on_io(&c->io, EPOLLIN); /* the fallback when the ready list could not take it */
            return;
        }
        if (c->flags & CF_HTTP_IDLE) {
            /* A kept-alive connection with no new request: a quiet end. */
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "keep-alive idle timeout");
            return;
        }
        ep->st.handshakes_failed++;
        if (c->flags & CF_DEFERRED) {
            ep->st.upgrade_timeouts++;
            dx__log(LOG(c), DX_LOG_WARN,
                    "conn=%llu upgrade decision not made within handshake_timeout_ms (%u ms) remote=%s; dropping",
                    (unsigned long long)c->id, o->handshake_timeout_ms, REMOTE(c).s);
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "upgrade decision timed out");
            return;
        }
        if (ep->cl) {
            /* A client names the phase that did not finish. */
            static const char *const phase[] = {"TCP connect timed out", "proxy answer to CONNECT timed out",
                                                "TLS handshake timed out", "HTTP response to the upgrade timed out"};
            char why[128];
            snprintf(why, sizeof why, "%s (%u ms)", phase[c->state], o->handshake_timeout_ms);
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, why);
            return;
        }
        const dx__head *part = DX_COLD(c, head);
        dx__log(LOG(c), DX_LOG_INFO, "conn=%llu handshake timeout remote=%s after %u ms (%zu head bytes)",
                (unsigned long long)c->id, REMOTE(c).s, o->handshake_timeout_ms, part ? part->len : 0);
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, "handshake timeout");
        return;
    case CS_OPEN:
        if (c->s.state == DX_CODEC_CLOSE_SENT) {
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "close timeout: no close frame from the peer");
            return;
        }
        if (c->flags & CF_PAUSED) {
            /* Heartbeat suspended (a pong may sit unread behind the pause);
             * the idle timeout still applies. */
            uint64_t quiet = quiet_ms(c);
            if (o->idle_timeout_ms && quiet >= o->idle_timeout_ms)
                (void)dx_conn_close(c, DX_CLOSE_GOING_AWAY, "idle timeout", 12);
            else if (o->idle_timeout_ms)
                dx__conn_timer_start(c, o->idle_timeout_ms - quiet);
            return;
        }
        if (c->flags & CF_PING_OUT) {
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "heartbeat timeout: no pong");
            return;
        }
        {
            uint64_t quiet = quiet_ms(c);
            bool ping_on = o->ping_interval_ms != (unsigned)-1;
            if (o->idle_timeout_ms && quiet >= o->idle_timeout_ms) {
                (void)dx_conn_close(c, DX_CLOSE_GOING_AWAY, "idle timeout", 12);
                return;
            }
            if (ping_on && quiet + DX_TICK_MS >= o->ping_interval_ms) {
                uint8_t payload[8];
                for (int i = 0; i < 8; i++)
                    payload[i] = (uint8_t)(now >> (56 - 8 * i));
                int rc = dx__session_control(&c->s, DX_OP_PING, payload, sizeof payload);
                if (c->state != CS_OPEN)
                    return; /* the write failed: marked dead */
                if (rc == 0) {
                    c->flags |= CF_PING_OUT;
                    dx__conn_timer_start(c, o->pong_timeout_ms);
                    return;
                }
            }
            /* Traffic arrived meanwhile: wake when the next deadline (ping
             * or idle) would pass if the line stays quiet. */
            uint64_t next = ping_on && quiet < o->ping_interval_ms ? o->ping_interval_ms - quiet : UINT64_MAX;
            if (o->idle_timeout_ms && o->idle_timeout_ms - quiet < next)
                next = o->idle_timeout_ms - quiet;
            if (next != UINT64_MAX)
                dx__conn_timer_start(c, next);
            return;
        }
    case CS_HTTP:
        dx__http_timeout(c);
        return;
    case CS_DRAIN:
    case CS_LINGER:
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, c->state == CS_DRAIN ? "close timeout while flushing"
                                                                  : "close timeout waiting for EOF");
        return;
    default:
        return;
    }
}

/* ---- the handshake --------------------------------------------------------- */

static void refuse(dx_conn *c, int status, const char *extra, const char *why)
{
    dx__ep *ep = dx__conn_ep(c);
    ep->st.handshakes_failed++;
    dx__log(LOG(c), DX_LOG_INFO, "conn=%llu handshake refused remote=%s status=%d: %s", (unsigned long long)c->id,
            REMOTE(c).s, status, why);
    char buf[1024];
    int n = dx__http_error_response(buf, sizeof buf, status, extra, why);
    if (n < 0 && extra) /* an application's header block that does not fit or is malformed */
        n = dx__http_error_response(buf, sizeof buf, status, NULL, why);
    if (n > 0)
        (void)dx__conn_write(c, buf, (size_t)n);
    dx__conn_finish_after_flush(c);
}

/* Writes the 101 and adopts protocol (owned) and user. Returns 0, or
 * DX_ECLOSED when the connection was refused (500) or dropped. */
static int write_101(dx_conn *c, const dx_ws_request *ws, char *protocol, void *user)
{
    char resp[640], ext[DX__PMD_RESPONSE_MAX];
    const char *exts = NULL;
    if (c->s.pmd) {
        const dx__pmd_params *p = dx__pmd_params_of(c->s.pmd);
        /* The element chosen at the head (dx__conn_negotiate_deflate), written again
         * from the parameters. */
        if (dx__pmd_response(p, ext, sizeof ext) > 0)
            exts = ext;
    }
    int n = dx__ws_server_response(resp, sizeof resp, ws, protocol, exts, NULL);
    if (n < 0) {
        dx__free(dx__conn_ep(c)->loop->seams, protocol);
        refuse(c, 500, NULL, "cannot build the response");
        return DX_ECLOSED;
    }
    if (protocol) {
        dx__cold *k = dx__conn_cold(c);
        if (!k) {
            dx__free(dx__conn_ep(c)->loop->seams, protocol);
            refuse(c, 500, NULL, "out of memory");
            return DX_ECLOSED;
        }
        k->protocol = protocol;
    }
    c->user = user;
    if (dx__log_on(LOG(c), DX_LOG_INFO))
        dx__log(LOG(c), DX_LOG_INFO, "conn=%llu open remote=%s path=%.*s protocol=%s%s%s",
                (unsigned long long)c->id, REMOTE(c).s, (int)ws->path_len, ws->path,
                protocol ? protocol : "-", exts ? " extensions=" : "", exts ? exts : "");
    if (dx__conn_write(c, resp, (size_t)n) || c->state == CS_DEAD)
        return DX_ECLOSED;
    return 0;
}

/* on_upgrade deferred without answering: hold reading, keep the deadline
 * counted from accept. */
static void defer_start(dx_conn *c, struct dx_upgrade *h)
{
    dx__ep *ep = dx__conn_ep(c);
    dx__cold *k = dx__conn_cold(c);
    if (!k) {
        dx__upgrade_detach(h); /* the application's answer will get DX_ECLOSED */
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, "out of memory");
        return;
    }
    k->upg = h;
    c->flags |= CF_DEFERRED;
    ep->st.upgrades_deferred++;
    update_events(c);
    uint64_t spent = (uint64_t)((uint32_t)ep->loop->tick - c->last_rx_tick) * DX_TICK_MS; /* since accept */
    uint64_t left = spent < ep->opt.handshake_timeout_ms ? ep->opt.handshake_timeout_ms - spent : 1;
    dx__conn_timer_start(c, left);
    dx__log(LOG(c), DX_LOG_DEBUG, "conn=%llu upgrade decision deferred remote=%s", (unsigned long long)c->id,
            REMOTE(c).s);
}

int dx__conn_upgrade_accept(dx_conn *c, const dx_ws_request *ws, char *protocol, void *user)
{
    if (c->cold)
        c->cold->upg = NULL;
    c->flags = (uint16_t)((c->flags & ~CF_DEFERRED) | CF_OPEN_PENDING);
    int rc = write_101(c, ws, protocol, user);
    if (rc) {
        c->flags &= (uint16_t)~CF_OPEN_OWED; /* DX_ECLOSED: on_open is not owed */
        return rc;
    }
    /* on_open and the bytes held behind the head come from the loop: the
     * ready list serves the connection after this batch; the timer (one
     * tick) is the fallback should the ready list be unable to grow. */
    dx__conn_timer_start(c, 0);
    dx__loop_ready(dx__conn_ep(c)->loop, &c->io);
    return 0;
}

void dx__conn_upgrade_refuse(dx_conn *c, int status, const char *headers, const char *why)
{
    if (c->cold)
        c->cold->upg = NULL;
    c->flags &= (uint16_t)~CF_DEFERRED;
    refuse(c, status, headers, why);
}

/* A complete request head arrived: answer plain HTTP, refuse a bad upgrade,
 * ask the application (now or later: upgrade.c), and accept it. */
static void handle_head(dx_conn *c, const dx_http_request *req)
{
    dx__ep *ep = dx__conn_ep(c);
    dx_ws_ext_offer exts[DX_WS_DEFAULT_MAX_EXTS];
    dx_ws_request ws;
    int rc = dx__ws_server_check(req, &ws, exts, DX_WS_DEFAULT_MAX_EXTS);
    if (rc) {
        int status = dx_http_status_for_error(rc);
        refuse(c, status, dx__ws_error_headers(rc), dx_strerror(rc));
        return;
    }
    dx__conn_negotiate_deflate(c, &ws);
    dx__decision d;
    int how = dx__upgrade_decide(c, req, &ws, &d);
    if (c->state == CS_DEAD) {
        /* Dropped inside on_upgrade (the server freed or shut down from it):
         * nothing to answer; a handle left pending gets DX_ECLOSED. */
        if (how == DX__DECIDE_DEFER)
            dx__upgrade_detach(d.deferred);
        dx__free(ep->loop->seams, d.protocol);
        dx__decision_done(c, &d);
        return;
    }
    switch (how) {
    case DX__DECIDE_DEFER:
        defer_start(c, d.deferred);
        return;
    case DX__DECIDE_REFUSE:
        refuse(c, d.status, d.headers, "refused by the application");
        dx__decision_done(c, &d);
        return;
    default:
        break;
    }
    if (write_101(c, &ws, d.protocol, d.user))
        return;
    dx__conn_opened(c);
    if (ep->opt.cb.on_open)
        ep->opt.cb.on_open(c, ep->opt.ud);
}

void dx__conn_opened(dx_conn *c)
{
    dx__ep *ep = dx__conn_ep(c);
    dx__pmd *pmd = c->s.pmd; /* negotiated during the handshake (or NULL) */
    dx__session_init(&c->s, &ep->scfg, 0);
    dx__session_set_pmd(&c->s, pmd);
    c->state = CS_OPEN;
    c->flags |= CF_OPENED | CF_SESSION;
    c->last_rx_tick = (uint32_t)ep->loop->tick;
    c->opened_ms = (uint32_t)ep->loop->now_ms;
    c->opened_ms_hi = (uint8_t)(ep->loop->now_ms >> 32);
    ep->st.open++;
    dx__conn_cold_trim(c); /* an idle open connection keeps none, unless a subprotocol or a stash */
    arm_heartbeat(c);
}

/* Room for `need` head bytes: the buffer starts at what arrived (at least
 * 512 bytes) and doubles up to max_head, so a slow or small head does not
 * cost max_head. */
static dx__head *head_room(dx_conn *c, size_t need, size_t max)
{
    dx__cold *k = dx__conn_cold(c);
    if (!k)
        return NULL;
    dx__head *h = k->head;
    if (h && need <= h->cap)
        return h;
    size_t cap = h ? h->cap : 512;
    while (cap < need)
        cap *= 2;
    if (cap > max)
        cap = max;
    dx__head *n = dx__realloc(dx__conn_ep(c)->loop->seams, h, sizeof *n + cap);
    if (!n)
        return NULL;
    if (!h)
        n->len = 0;
    n->cap = cap;
    k->head = n;
    return n;
}

/* Bytes of the request head arrived. Returns how many of `p` belong to the
 * head (the rest are WebSocket frames, a body or the next request sent
 * right behind it). The parser resumes where it stopped: a head trickled in
 * n pieces is examined once, not n times. */
static size_t feed_head(dx_conn *c, const uint8_t *p, size_t len)
{
    dx__ep *ep = dx__conn_ep(c);
    size_t max = ep->opt.max_head;
    size_t maxh = ep->opt.max_headers < 256 ? ep->opt.max_headers : 256;
    const uint8_t *buf = p;
    size_t before = 0;
    int rc;
    bool parsed = false; /* req/resp hold the fields already */
    dx_http_header headers[256];
    dx_http_request req;
    dx_http_response resp;
    if (c->flags & CF_HTTP_IDLE) {
        /* The next request on a kept-alive connection has begun: its head
         * gets the handshake deadline, like a first one. */
        c->flags &= (uint16_t)~CF_HTTP_IDLE;
        dx__conn_timer_start(c, ep->opt.handshake_timeout_ms);
    }
    if (!DX_COLD(c, head)) {
        /* The usual case: the whole head is in this read, parsed once for
         * its fields where it landed (the loop's buffer), with no
         * allocation. A part of a head: the incremental parser takes note
         * of its progress, so later pieces do not examine it again. */
        rc = ep->cl ? dx__http_parse_response((const char *)p, len, &resp, headers, maxh, max)
                    : dx__http_parse_request((const char *)p, len, &req, headers, maxh, max);
        parsed = true;
        if (rc == DX_EAGAIN) {
            dx_http_head ps;
            dx__http_head_init(&ps, ep->cl != NULL);
            (void)dx__http_head_feed(&ps, (const char *)p, len, maxh, max); /* the same verdict: DX_EAGAIN */
            dx__head *h = head_room(c, len, max); /* len < max here: the parser would have said too big */
            if (!h) {
                dx__conn_abort(c, DX_CLOSE_ABNORMAL, "out of memory");
                return len;
            }
            memcpy(h->data, p, len);
            h->len = len;
            h->ps = ps;
            return len;
        }
    } else {
        /* The head came in pieces: gather it (never past max_head). */
        before = c->cold->head->len;
        size_t take = len < max - before ? len : max - before;
        dx__head *h = head_room(c, before + take, max);
        if (!h) {
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "out of memory");
            return len;
        }
        memcpy(h->data + before, p, take);
        h->len += take;
        rc = dx__http_head_feed(&h->ps, (const char *)h->data, h->len, maxh, max);
        if (rc == DX_EAGAIN)
            return len; /* all consumed into the head */
        buf = h->data;
    }
    if (rc < 0) {
        if (ep->cl) {
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "malformed or oversized HTTP response from the server");
            return len;
        }
        int status = dx_http_status_for_error(rc);
        refuse(c, status, NULL, dx_strerror(rc));
        return len;
    }
    /* Complete. Gathered in pieces: one stateless pass over the head for
     * its fields (the same grammar, so the same verdict). */
    if (!parsed) {
        int rc2 = ep->cl ? dx__http_parse_response((const char *)buf, (size_t)rc, &resp, headers, maxh, max)
                         : dx__http_parse_request((const char *)buf, (size_t)rc, &req, headers, maxh, max);
        if (rc2 != rc) {
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "internal error: head parsers disagree");
            return len;
        }
    }
    size_t used = (size_t)rc - before; /* bytes of `p` that were head */
    dx__conn_timer_stop(c);
    if (ep->cl)
        dx__client_response(c, &resp);
    else if (!dx__http_find(req.headers, req.n_headers, "upgrade"))
        dx__http_begin(c, &req, (const char *)buf, (size_t)rc);
    else
        handle_head(c, &req);
    if (c->cold) { /* the gathered head (the request's fields pointed into it) */
        dx__free(ep->loop->seams, c->cold->head);
        c->cold->head = NULL;
        dx__conn_cold_trim(c);
    }
    return used;
}

/* ---- reading ----------------------------------------------------------------- */

/* Keeps bytes that were read but must wait (deferred upgrade, pause), in
 * order, for on_io to feed before the socket is read again. Bounded: one
 * read (at most max_head bytes while the head is read, else one loop
 * buffer), since nothing more is read while a stash exists. */
static void stash_keep(dx_conn *c, const uint8_t *p, size_t n)
{
    const dx_seams *seams = dx__conn_ep(c)->loop->seams;
    dx__cold *k = dx__conn_cold(c);
    size_t have = k && k->stash ? k->stash->len : 0;
    dx__head *s = k ? dx__realloc(seams, k->stash, sizeof *s + have + n) : NULL;
    if (!s) {
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, "out of memory");
        return;
    }
    memcpy(s->data + have, p, n);
    s->len = have + n;
    k->stash = s;
}

static bool reading_held(const dx_conn *c)
{
    return (c->flags & (CF_DEFERRED | CF_OPEN_PENDING | CF_PAUSED)) || DX_COLD(c, stash);
}

/* Frames for an open connection (process's common case, called straight
 * from on_readable): replies are gathered, written before sleep. */
static inline void process_open(dx_conn *c, uint8_t *p, size_t n)
{
    c->last_rx_tick = (uint32_t)dx__conn_ep(c)->loop->tick;
    size_t used = n;
    (void)dx__session_recv_ex(&c->s, p, n, &used);
    if (used < n && c->state == CS_OPEN && (c->flags & CF_PAUSED))
        stash_keep(c, p + used, n - used); /* paused by a handler: the rest waits */
    after_session(c);
}

static void process(dx_conn *c, uint8_t *p, size_t n)
{
    /* A head, then (plain HTTP) a body and perhaps the next request on a
     * kept-alive connection, or (upgrade) frames. */
    while (n && (c->state == CS_HEAD || c->state == CS_HTTP)) {
        size_t used = c->state == CS_HEAD ? feed_head(c, p, n) : dx__http_input(c, p, n);
        p += used;
        n -= used;
        if (n && c->state == CS_HEAD && (c->flags & CF_DEFERRED)) {
            stash_keep(c, p, n); /* frames right behind the request wait for the answer */
            return;
        }
    }
    /* DRAIN, LINGER: input is discarded (§5.5.1: nothing after a close). */
    if (c->state != CS_OPEN || n == 0)
        return;
    process_open(c, p, n);
}

void dx__conn_process(dx_conn *c, uint8_t *p, size_t n) { process(c, p, n); }

void dx__conn_want_write(dx_conn *c, bool on) { want_write(c, on); }

/* Feeds what was stashed, before anything newer from the socket. */
static void drain_stash(dx_conn *c)
{
    dx__head *s = c->cold->stash; /* called with a stash: the block exists */
    c->cold->stash = NULL;
    process(c, s->data, s->len); /* may stash a remainder again (paused once more) */
    dx__free(dx__conn_ep(c)->loop->seams, s);
    dx__conn_cold_trim(c);
}

/* A deferred upgrade was accepted: the connection opens now, from the loop. */
static void open_pending(dx_conn *c)
{
    dx__ep *ep = dx__conn_ep(c);
    c->flags &= (uint16_t)~CF_OPEN_PENDING;
    dx__conn_opened(c);
    update_events(c);
    if (ep->opt.cb.on_open)
        ep->opt.cb.on_open(c, ep->opt.ud);
}

static void on_readable(dx_conn *c)
{
    dx_loop *loop = dx__conn_ep(c)->loop;
    /* Stops as soon as reading is held: a deferred upgrade, a pause, or a
     * plain HTTP answer pending (what follows waits in the kernel, not in
     * our memory). */
    for (int i = 0; i < READS_PER_EVENT && c->state != CS_DEAD && !reading_held(c) && !(c->flags & CF_READ_OFF);
         i++) {
        /* While the head is read, read no more than a head: what follows
         * it may have to wait (deferred decision), and waits bounded. */
        size_t cap = DX_LOOP_RBUF;
        if (c->state == CS_HEAD && dx__conn_ep(c)->srv && dx__conn_ep(c)->opt.max_head < cap)
            cap = dx__conn_ep(c)->opt.max_head;
        ssize_t n = dx__stream_read(&c->st, c->io.fd, loop->rbuf, cap);
        if (n == DX_EAGAIN)
            return;
        if (n == 0) {
            if (c->state == CS_LINGER) {
                conn_finish(c, NULL); /* the clean end */
                return;
            }
            dx__conn_abort(c, DX_CLOSE_ABNORMAL,
                           c->state == CS_OPEN ? "peer closed TCP without a close frame" : "peer closed TCP");
            return;
        }
        if (n < 0) {
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, dx_strerror((int)n));
            return;
        }
        c->bytes_in += (size_t)n;
        dx__conn_ep(c)->st.bytes_in += (size_t)n;
        if (c->state == CS_OPEN)
            process_open(c, loop->rbuf, (size_t)n);
        else
            process(c, loop->rbuf, (size_t)n);
        if (c->state == CS_DEAD)
            return; /* the transport is closed */
        if ((size_t)n < cap && !dx__stream_pending(&c->st))
            return; /* drained: another read would only say EAGAIN */
    }
    /* Fairness: others get their turn. Input still in the kernel wakes epoll
     * again; input already inside the transport (TLS) would not, so ask the
     * loop to come back after this batch (or at resume, when held). */
    if (c->state != CS_DEAD && !reading_held(c) && dx__stream_pending(&c->st))
        dx__loop_ready(loop, &c->io);
}

static void drive_tls(dx_conn *c)
{
    int rc = dx__stream_handshake(&c->st);
    if (rc == DX_EAGAIN) {
        want_write(c, dx__stream_want(&c->st) == DX__WANT_WRITE);
        return;
    }
    if (rc) {
        char why[256];
        dx__tls_describe_failure(&c->st, why, sizeof why);
        dx__conn_ep(c)->st.handshakes_failed++;
        dx__log(LOG(c), DX_LOG_INFO, "conn=%llu TLS handshake failed remote=%s: %s", (unsigned long long)c->id,
                REMOTE(c).s, why);
        dx__conn_abort(c, DX_CLOSE_TLS_HANDSHAKE, why);
        return;
    }
    want_write(c, false);
    if (dx__conn_ep(c)->cl)
        dx__client_transport_ready(c); /* sends the upgrade request, then CS_HEAD */
    else
        c->state = CS_HEAD;
}

void dx__conn_drive_tls(dx_conn *c) { drive_tls(c); }

static void on_io(dx__io *io, uint32_t events)
{
    dx_conn *c = dx_list_entry(io, dx_conn, io);
    /* The common wake-up: input for an open connection, nothing held, no
     * EPOLLOUT: what the checks below come to (one test instead of ten). */
    if (c->state == CS_OPEN && !(events & EPOLLOUT) && (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) &&
        !(c->flags & (CF_DEFERRED | CF_OPEN_PENDING | CF_PAUSED | CF_READ_OFF)) && !DX_COLD(c, stash)) {
        on_readable(c);
        return;
    }
    if (c->state == CS_DEAD)
        return; /* closed earlier in this batch */
    if (c->state < CS_TLS) {
        dx__client_io(c, events); /* connect, proxy */
        return;
    }
    if (c->state == CS_TLS) {
        drive_tls(c);
        if (c->state != CS_HEAD)
            return;
    }
    /* Writable: flush what waits; an emptied queue reports on_drain here,
     * from the loop, never from inside a send (the queue keeps EPOLLOUT on
     * while a drain is owed). */
    if (events & EPOLLOUT)
        dx__conn_flush(c);
    if (c->state == CS_DEAD)
        return;
    if (c->flags & (CF_DEFERRED | CF_OPEN_PENDING)) {
        /* Nothing is read while the decision is pending, but a peer that
         * leaves is noticed (EPOLLRDHUP is watched for this). */
        if (!(c->flags & CF_OPEN_PENDING)) {
            if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                dx__conn_abort(c, DX_CLOSE_ABNORMAL, "peer closed while the upgrade decision was pending");
            return;
        }
        /* Accepted: dx_upgrade_accept returned 0, so on_open is owed even
         * if the peer has left meanwhile; the read below then delivers what
         * it sent and ends the connection (on_close 1006). */
        open_pending(c);
        if (c->state != CS_OPEN)
            return;
        events |= EPOLLIN;
    }
    if (c->flags & CF_PAUSED) {
        /* Only the peer leaving is watched while paused (level-triggered:
         * it repeats until handled). What it sent before is not read: a
         * peer that leaves without the close handshake gets 1006 anyway. */
        if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "peer left while the connection was paused (unread input dropped)");
        return;
    }
    if (DX_COLD(c, stash)) {
        drain_stash(c);
        if (c->state == CS_DEAD || reading_held(c))
            return;
        events |= EPOLLIN; /* then whatever came behind it */
    }
    if (c->state == CS_HTTP && !dx__http_io(c, events))
        return; /* an answer pending or being sent: not reading */
    if (c->state == CS_HEAD && DX_COLD(c, http))
        dx__http_resume(c); /* input kept while the last answer was pending */
    if (c->state != CS_DEAD && !(c->flags & CF_READ_OFF) && (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
        on_readable(c);
}

dx_conn *dx__conn_open(dx__ep *ep, int fd, const struct sockaddr *sa, int state, uint32_t events,
                       unsigned timeout_ms)
{
    dx_loop *loop = ep->loop;
    if (!ep->wsl && (ep->wsl = dx__wsl_get(loop)) == NULL)
        return NULL;
    /* One allocation: the connection, then its user memory (if any). */
    size_t ext = ep->srv ? ep->opt.conn_ext_size : 0;
    size_t size = ext ? DX__CONN_EXT_OFF + ext : sizeof(dx_conn);
    dx_conn *c = dx__wsl_conn_alloc(ep->wsl, size);
    if (!c)
        return NULL;
    memset(c, 0, size);
    c->s.cfg = &ep->scfg; /* the endpoint (dx__conn_ep); the session starts at open */
    c->id = ep->next_id;
    ep->next_id += ep->opt.instances;
    c->io = (dx__io){.fd = fd, .cb = on_io};
    if (sa && store_addr(c, sa)) {
        dx__wsl_conn_free(ep->wsl, c);
        return NULL;
    }
    c->last_rx_tick = (uint32_t)loop->tick; /* accept time until open (handshake deadline) */
    c->state = (uint8_t)state;
    if (!ep->srv && (!sa || sa->sa_family != AF_UNIX)) { /* accepted ones inherit it (dx_server_start) */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (dx__io_start(loop, &c->io, events)) {
        dx__free(loop->seams, c->cold); /* an IPv6 peer's address */
        dx__wsl_conn_free(ep->wsl, c);
        return NULL;
    }
    if (events & EPOLLOUT)
        c->flags |= CF_WANT_WRITE;
    dx_list_init(&c->link);
    dx_list_push_back(&ep->conns, &c->link);
    ep->nconns++;
    dx__conn_timer_start(c, timeout_ms);
    return c;
}

dx_conn *dx__conn_new(dx_server *srv, int fd, const struct sockaddr *sa, socklen_t salen)
{
    (void)salen;
    dx__tls_ctx *tls = dx__server_tls(srv);
    dx_conn *c = dx__conn_open(&srv->ep, fd, sa, tls ? CS_TLS : CS_HEAD, EPOLLIN | EPOLLRDHUP,
                               srv->ep.opt.handshake_timeout_ms);
    if (!c)
        return NULL;
    if (tls && dx__tls_accept(tls, &c->st, c->io.fd)) {
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, "cannot start TLS");
        return c; /* accepted and dropped: the fd is closed */
    }
    return c;
}

/* ---- public connection API --------------------------------------------------- */

/* ---- pause, resume, user memory ------------------------------------------------ */

static void resume_reading(dx_conn *c)
{
    c->flags &= (uint16_t)~CF_PAUSED;
    c->s.hold = false;
    update_events(c);
    arm_heartbeat(c);
    /* What epoll cannot announce: bytes kept here, records inside TLS. */
    if (DX_COLD(c, stash) || dx__stream_pending(&c->st))
        dx__loop_ready(dx__conn_ep(c)->loop, &c->io);
}

int dx_conn_pause(dx_conn *c)
{
    if (c->state != CS_OPEN || c->s.state != DX_CODEC_OPEN)
        return DX_ECLOSED;
    if (c->flags & CF_PAUSED)
        return 0;
    c->flags |= CF_PAUSED;
    c->flags &= (uint16_t)~CF_PING_OUT; /* the pong may sit unread behind the pause */
    c->s.hold = true;                   /* a handler pausing stops the session's current read */
    update_events(c);
    return 0;
}

int dx_conn_resume(dx_conn *c)
{
    if (c->state != CS_OPEN)
        return DX_ECLOSED;
    if (c->flags & CF_PAUSED)
        resume_reading(c);
    return 0;
}

void *dx_conn_ext(dx_conn *c)
{
    if (!dx__conn_ep(c)->srv || !dx__conn_ep(c)->opt.conn_ext_size)
        return NULL;
    return (char *)c + DX__CONN_EXT_OFF;
}

void dx__conn_hooks_release(dx_conn *c)
{
    if (c->cold) {
        dx__free(dx__conn_ep(c)->loop->seams, c->cold->stash);
        c->cold->stash = NULL;
        if (c->cold->upg) {
            dx__upgrade_detach(c->cold->upg); /* the application's answer will get DX_ECLOSED */
            c->cold->upg = NULL;
        }
    }
    c->flags &= (uint16_t)~(CF_DEFERRED | CF_OPEN_PENDING | CF_PAUSED);
    if (dx__conn_ep(c)->srv)
        dx__server_conn_gone(c);
}

int dx_conn_send_msg(dx_conn *c, dx_msg *m)
{
    if (!c || !m)
        return DX_EINVAL;
    if (c->state != CS_OPEN || c->s.state != DX_CODEC_OPEN)
        return DX_ECLOSED;
    if (c->s.tx_opcode)
        return DX_ESTATE; /* a fragmented message is open: no message may cut into it */
    unsigned opcode;
    size_t hl;
    dx_rcbuf *frame = dx__msg_frame(m, &opcode, &hl);
    size_t len = dx_rcbuf_len(frame) - hl;
    int rc;
    unsigned bits;
    if (c->s.pmd && dx__pmd_want_compress(c->s.pmd, len)) {
        /* Compressed: once per message and window for connections that keep
         * no context (server role: the frame is shared unmasked), else per
         * connection through the session. */
        dx_rcbuf *z = NULL;
        if (!dx__conn_ep(c)->cl && dx__pmd_tx_stateless(c->s.pmd, &bits))
            z = dx__msg_zframe(m, dx__conn_ep(c)->pmd, bits);
        if (z) {
            size_t zhl = dx__msg_zframe_hl(z);
            rc = dx__conn_put_frame(c, DX__PUT_DATA, opcode, true, DX_RSV1, dx_rcbuf_data(z) + zhl,
                                    dx_rcbuf_len(z) - zhl, z);
        } else {
            rc = dx__session_send_valid(&c->s, (int)opcode, dx_rcbuf_data(frame) + hl, len);
        }
    } else {
        rc = dx__conn_put_frame(c, DX__PUT_DATA, opcode, true, 0, dx_rcbuf_data(frame) + hl, len, frame);
    }
    after_session(c);
    return rc;
}

int dx_conn_close(dx_conn *c, unsigned code, const char *reason, size_t len)
{
    if (c->state != CS_OPEN)
        return DX_ECLOSED;
    if (c->flags & CF_PAUSED)
        resume_reading(c); /* the peer's close frame must be read */
    int rc = dx__session_close(&c->s, code, reason, len);
    if (rc == 0 && c->state == CS_OPEN)
        dx__conn_timer_start(c, dx__conn_ep(c)->opt.close_timeout_ms);
    after_session(c);
    return rc;
}

size_t dx_conn_buffered(const dx_conn *c)
{
    return WQ_LEN(c);
}

const char *dx_conn_protocol(const dx_conn *c) { return DX_COLD(c, protocol); }
void *dx_conn_user(const dx_conn *c) { return c->user; }
void dx_conn_set_user(dx_conn *c, void *user) { c->user = user; }
dx_server *dx_conn_server(const dx_conn *c) { return dx__conn_ep(c)->srv; }
struct dx_client *dx_conn_client(const dx_conn *c) { return dx__conn_ep(c)->cl; }
uint64_t dx_conn_id(const dx_conn *c) { return c->id; }
