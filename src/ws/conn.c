/*
 * src/ws/conn.c: one server-side connection, from accept to close.
 *
 * Layer: ws. States (ws.h): TLS → HEAD → OPEN → DRAIN → LINGER → DEAD.
 *
 * Reading: bytes land in the loop's shared buffer (loop->rbuf) and go to the
 * session straight from there; a connection owns memory only for a partial
 * head (HEAD), a partial message (the session's rx) or unsent bytes (wq).
 *
 * Writing: while the connection processes a read, frames it sends are
 * gathered in the loop's cork buffer and written with one call afterwards
 * (an echo of 16 pipelined messages is one write, not 16). Otherwise a frame
 * is written straight to the socket; whatever the kernel does not take is
 * queued in wq, bounded by send_max.
 *
 * Closing: a session that is CLOSED (handshake done) or FAILED (we sent our
 * error close) moves to DRAIN; once wq is empty we send FIN (LINGER) and
 * read until the peer's EOF, so our close frame is not lost to a reset
 * (RFC 6455 §7.1.1: the server closes the TCP connection first). Every wait
 * is bounded by close_timeout_ms. Memory is freed after the current batch
 * of events (habit 6).
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
static const dx_log *LOG(const dx_conn *c) { return c->ep->loop->log; }

static void conn_finish(dx_conn *c, const char *why);
static void flush_queue(dx_conn *c);
static void after_session(dx_conn *c);
static void arm_heartbeat(dx_conn *c);

/* ---- addresses ----------------------------------------------------------- */

size_t dx_conn_remote(const dx_conn *c, char *buf, size_t cap)
{
    char h[INET6_ADDRSTRLEN] = "";
    int n;
    if (c->family == AF_INET || c->family == AF_INET6)
        inet_ntop(c->family, c->addr, h, sizeof h);
    if (c->family == AF_INET)
        n = snprintf(buf, cap, "%s:%u", h, c->port);
    else if (c->family == AF_INET6)
        n = snprintf(buf, cap, "[%s]:%u", h, c->port);
    else
        n = snprintf(buf, cap, "unix");
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

static void store_addr(dx_conn *c, const struct sockaddr *sa)
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
            memcpy(c->addr, &in6->sin6_addr, 16);
        }
        c->port = ntohs(in6->sin6_port);
    }
}

/* ---- writing ------------------------------------------------------------- */

/* The read side of the epoll interest: plain HTTP turns reading off while
 * an answer is pending (http.c), watching only for the peer leaving. */
static uint32_t read_events(const dx_conn *c)
{
    if (!(c->flags & CF_READ_OFF))
        return EPOLLIN | EPOLLRDHUP;
    return (c->flags & CF_READ_HUP) ? EPOLLRDHUP : 0u;
}

static void want_write(dx_conn *c, bool on)
{
    if (c->state == CS_DEAD || !!(c->flags & CF_WANT_WRITE) == on)
        return;
    if (on)
        c->flags |= CF_WANT_WRITE;
    else
        c->flags &= (uint16_t)~CF_WANT_WRITE;
    (void)dx__io_modify(c->ep->loop, &c->io, read_events(c) | (on ? EPOLLOUT : 0u));
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
    (void)dx__io_modify(c->ep->loop, &c->io, read_events(c) | ((c->flags & CF_WANT_WRITE) ? EPOLLOUT : 0u));
}

static int wq_append(dx_conn *c, const void *p, size_t len)
{
    if (len == 0)
        return 0;
    dx__wq *q = c->wq;
    if (q && q->off && q->len + len > q->cap) {
        memmove(q->data, q->data + q->off, q->len);
        q->off = 0;
    }
    if (!q || q->off + q->len + len > q->cap) {
        size_t have = q ? q->len : 0;
        size_t cap = q ? q->cap : 4096;
        while (cap < have + len)
            cap *= 2;
        dx__wq *n = dx__realloc(c->ep->loop->seams, q, sizeof *n + cap);
        if (!n)
            return DX_ENOMEM;
        if (!q)
            n->off = n->len = 0;
        n->cap = cap;
        c->wq = q = n;
    }
    memcpy(q->data + q->off + q->len, p, len);
    q->len += len;
    if (q->len > c->ep->opt.send_high_water)
        c->flags |= CF_DRAIN_ARMED;
    want_write(c, true);
    return 0;
}

/* Writes iov now; queues what the kernel did not take. */
static int write_now(dx_conn *c, struct iovec *iov, int n)
{
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    ssize_t w = c->st.t->writev(&c->st, iov, n);
    if (w < 0 && w != DX_EAGAIN) {
        /* The peer is gone; the read side will notice and report 1006. */
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, "write failed");
        return DX_ECLOSED;
    }
    size_t done = w > 0 ? (size_t)w : 0;
    c->bytes_out += done;
    c->ep->st.bytes_out += done;
    if (done == total)
        return 0;
    for (int i = 0; i < n; i++) {
        if (done >= iov[i].iov_len) {
            done -= iov[i].iov_len;
            continue;
        }
        int rc = wq_append(c, (const uint8_t *)iov[i].iov_base + done, iov[i].iov_len - done);
        if (rc)
            return rc;
        done = 0;
    }
    return 0;
}

static int flush_cork(dx_conn *c)
{
    dx_loop *loop = c->ep->loop;
    if (loop->cork_owner != c || loop->cork_len == 0)
        return 0;
    struct iovec iov = {loop->cork, loop->cork_len};
    loop->cork_len = 0;
    if (WQ_LEN(c))
        return wq_append(c, iov.iov_base, iov.iov_len);
    return write_now(c, &iov, 1);
}

int dx__conn_write(dx_conn *c, const void *data, size_t len)
{
    if (c->state == CS_DEAD)
        return DX_ECLOSED;
    int rc = flush_cork(c);
    if (rc)
        return rc;
    if (WQ_LEN(c))
        return wq_append(c, data, len);
    struct iovec iov = {(void *)(uintptr_t)data, len};
    return write_now(c, &iov, 1);
}

/* Session output: one frame. Server frames are unmasked. */
/* Appends a frame to wq, masking the payload there in the client role. */
static int queue_frame(dx_conn *c, const uint8_t *hdr, size_t hl, const uint8_t *data, size_t len, const uint8_t *key)
{
    int rc = wq_append(c, hdr, hl);
    if (rc || len == 0)
        return rc;
    if (!key)
        return wq_append(c, data, len);
    size_t at = c->wq->off + c->wq->len;
    rc = wq_append(c, data, len);
    if (rc == 0)
        dx__mask(c->wq->data + at, len, key, 0);
    return rc;
}

/* A client frame larger than the cork: masked into the cork a piece at a
 * time and written, so a big message costs no allocation while the kernel
 * takes it; what it refuses (the rest of the piece and of the payload,
 * masked) goes to wq. The cork is free or ours and empty here. */
static int write_masked(dx_conn *c, const uint8_t *hdr, size_t hl, const uint8_t *data, size_t len,
                        const uint8_t *key)
{
    dx_loop *loop = c->ep->loop;
    void *owner = loop->cork_owner;
    size_t off = 0;
    bool first = true;
    while (first || off < len) {
        size_t n = 0;
        if (first) {
            memcpy(loop->cork, hdr, hl);
            n = hl;
        }
        size_t take = len - off < DX_LOOP_CORK - n ? len - off : DX_LOOP_CORK - n;
        dx__mask_copy(loop->cork + n, data + off, take, key, off & 3);
        n += take;
        off += take;
        first = false;
        struct iovec iov = {loop->cork, n};
        ssize_t w = c->st.t->writev(&c->st, &iov, 1);
        if (w < 0 && w != DX_EAGAIN) {
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "write failed");
            return DX_ECLOSED;
        }
        size_t done = w > 0 ? (size_t)w : 0;
        c->bytes_out += done;
        c->ep->st.bytes_out += done;
        if (done < n) {
            int rc = wq_append(c, loop->cork + done, n - done);
            if (rc == 0 && off < len) {
                size_t at = c->wq->off + c->wq->len;
                rc = wq_append(c, data + off, len - off);
                if (rc == 0)
                    dx__mask(c->wq->data + at, len - off, key, off & 3);
            }
            loop->cork_owner = owner;
            loop->cork_len = 0;
            return rc;
        }
    }
    loop->cork_owner = owner;
    loop->cork_len = 0;
    return 0;
}

/* Session output: one frame. Server frames go out unmasked; client frames
 * are masked with a fresh key from the loop's pool (RFC 6455 §5.3). */
static int conn_put(dx__session *s, int kind, unsigned opcode, bool fin, const uint8_t *data, size_t len)
{
    dx_conn *c = conn_of(s);
    dx__ep *ep = c->ep;
    dx_loop *loop = ep->loop;
    if (c->state == CS_DEAD)
        return DX_ECLOSED;
    bool masked = ep->scfg.role == DX_ROLE_CLIENT;
    uint8_t key[4];
    if (masked && dx__loop_mask_key(loop, key))
        return DX_ERANDOM;
    uint8_t hdr[DX_FRAME_HEADER_MAX];
    size_t hl = dx__frame_header_write(hdr, opcode, fin, 0, len, masked ? key : NULL);
    size_t total = hl + len;
    /* The cap applies to what waits in the queue: a frame larger than
     * send_max still goes out when nothing is queued, so the queue holds at
     * most send_max plus one frame. */
    if ((kind == DX__PUT_DATA || kind == DX__PUT_PONG) && WQ_LEN(c) && WQ_LEN(c) + total > ep->opt.send_max) {
        if (kind == DX__PUT_PONG) {
            ep->st.pongs_dropped++;
            return DX_ELIMIT;
        }
        /* The peer does not read fast enough: drop it (1008), count it. */
        ep->st.dropped_slow++;
        dx__log(LOG(c), DX_LOG_WARN,
                "conn=%llu slow consumer: %zu bytes queued, send_max %zu; closing with 1008",
                (unsigned long long)c->id, WQ_LEN(c), ep->opt.send_max);
        dx__session_fail(s, DX_EPOLICY, DX_CLOSE_POLICY, "send queue full");
        return DX_ELIMIT;
    }
    if (kind == DX__PUT_DATA) {
        c->msgs_out++;
        ep->st.messages_out++;
    }
    if (ep->opt.cb.on_frame)
        ep->opt.cb.on_frame(c, '>', opcode, fin, 0, len, masked, data, len < 16 ? len : 16, ep->opt.ud);
    if (WQ_LEN(c))
        return queue_frame(c, hdr, hl, data, len, masked ? key : NULL);
    /* The cork: while this connection processes a read (or, for a masked
     * frame, whenever the cork is free: masking needs a copy anyway). */
    bool corked = loop->cork_owner == c;
    if (corked) {
        if (loop->cork_len + total <= DX_LOOP_CORK) {
            memcpy(loop->cork + loop->cork_len, hdr, hl);
            if (len && masked)
                dx__mask_copy(loop->cork + loop->cork_len + hl, data, len, key, 0);
            else if (len)
                memcpy(loop->cork + loop->cork_len + hl, data, len);
            loop->cork_len += total;
            return 0;
        }
        int rc = flush_cork(c);
        if (rc)
            return rc;
    }
    if (WQ_LEN(c))
        return queue_frame(c, hdr, hl, data, len, masked ? key : NULL);
    if (masked && (loop->cork_owner == NULL || loop->cork_owner == c))
        return write_masked(c, hdr, hl, data, len, key);
    if (masked) {
        int rc = queue_frame(c, hdr, hl, data, len, key);
        if (rc == 0)
            flush_queue(c);
        return rc;
    }
    struct iovec iov[2] = {{hdr, hl}, {(void *)(uintptr_t)data, len}};
    return write_now(c, iov, len ? 2 : 1);
}

static void flush_queue(dx_conn *c)
{
    dx__wq *q = c->wq;
    while (q && q->len) {
        struct iovec iov = {q->data + q->off, q->len};
        ssize_t w = c->st.t->writev(&c->st, &iov, 1);
        if (w == DX_EAGAIN)
            return;
        if (w <= 0) {
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "write failed");
            return;
        }
        c->bytes_out += (size_t)w;
        c->ep->st.bytes_out += (size_t)w;
        q->off += (size_t)w;
        q->len -= (size_t)w;
    }
    /* Empty: give the memory back (an idle connection holds no buffers). */
    dx__free(c->ep->loop->seams, q);
    c->wq = NULL;
    want_write(c, false);
    if (c->state == CS_DRAIN) {
        c->st.t->shutdown(&c->st);
        c->state = CS_LINGER;
        return;
    }
    if ((c->flags & CF_DRAIN_ARMED) && c->state == CS_OPEN) {
        c->flags &= (uint16_t)~CF_DRAIN_ARMED;
        if (c->ep->opt.cb.on_drain)
            c->ep->opt.cb.on_drain(c, c->ep->opt.ud);
    }
}

/* ---- session events -------------------------------------------------------- */

static void h_message(dx__session *s, int op, const uint8_t *p, size_t len)
{
    dx_conn *c = conn_of(s);
    c->msgs_in++;
    c->ep->st.messages_in++;
    if (c->ep->opt.cb.on_message)
        c->ep->opt.cb.on_message(c, op, p, len, c->ep->opt.ud);
}

static void h_pong(dx__session *s, const uint8_t *p, size_t len)
{
    dx_conn *c = conn_of(s);
    if (c->ep->opt.cb.on_pong)
        c->ep->opt.cb.on_pong(c, p, len, c->ep->opt.ud);
    if (c->flags & CF_PING_OUT) {
        c->flags &= (uint16_t)~CF_PING_OUT;
        arm_heartbeat(c);
    }
}

static void h_frame(dx__session *s, const dx_frame_header *h, const uint8_t *head, size_t n)
{
    dx_conn *c = conn_of(s);
    if (c->ep->opt.cb.on_frame)
        c->ep->opt.cb.on_frame(c, '<', h->opcode, h->fin, h->rsv, h->len, h->masked, head, n, c->ep->opt.ud);
}

static void h_close(dx__session *s, unsigned code, const char *reason, size_t len)
{
    dx_conn *c = conn_of(s);
    /* Keep the reason for on_close (the head slot is free once open). */
    if (len && !c->head) {
        c->head = dx__alloc(c->ep->loop->seams, sizeof *c->head + len + 1);
        if (c->head) {
            c->head->len = len;
            memcpy(c->head->data, reason, len);
            c->head->data[len] = 0;
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
        .put = conn_put,
    };
}

/* ---- lifecycle -------------------------------------------------------------- */

/* The last step: only the struct is left (conn_finish released the rest),
 * and its endpoint may already be gone, so the loop's seams free it. */
static void deferred_free(dx_loop *loop, dx__deferred *d)
{
    dx_conn *c = dx_list_entry(d, dx_conn, dfree);
    dx__free(loop->seams, c);
}

/* Frees a live connection at once: its endpoint is going away. */
static void conn_free_now(dx_conn *c)
{
    dx_loop *loop = c->ep->loop;
    dx__timer_stop(loop, &c->timer);
    dx__io_stop(loop, &c->io);
    c->st.t->close(&c->st);
    if (c->s.cfg)
        dx__session_deinit(&c->s); /* only upgraded connections have a session */
    dx__http_conn_gone(c);
    dx__free(loop->seams, c->wq);
    dx__free(loop->seams, c->head);
    dx__free(loop->seams, c->protocol);
    dx__free(loop->seams, c);
}

void dx__ep_drop_conns(dx__ep *ep)
{
    /* Connections that already ended are not in the list: their deferred
     * free needs only the loop. */
    dx_list *it;
    while ((it = dx_list_first(&ep->conns)) != NULL) {
        dx_list_remove(it);
        conn_free_now(dx_list_entry(it, dx_conn, link));
    }
    ep->nconns = 0;
}

/* Closes the socket, reports on_close once, frees after the batch. */
static void conn_finish(dx_conn *c, const char *why)
{
    if (c->state == CS_DEAD)
        return;
    dx__ep *ep = c->ep;
    dx_loop *loop = ep->loop;
    /* What the application is told: an explicit code (TLS failure), else
     * the peer's close code, else ours when we failed the session, else
     * 1006: the connection was lost without a close frame. */
    unsigned code = DX_CLOSE_ABNORMAL;
    if (c->code)
        code = c->code;
    else if (c->s.close_recv)
        code = c->s.close_recv;
    else if (c->s.state == DX_CODEC_FAILED && c->s.close_sent)
        code = c->s.close_sent;
    if (loop->cork_owner == c) {
        loop->cork_owner = NULL;
        loop->cork_len = 0;
    }
    c->state = CS_DEAD;
    dx__timer_stop(loop, &c->timer);
    dx__io_stop(loop, &c->io);
    c->st.t->close(&c->st);
    c->io.fd = -1;
    dx_list_remove(&c->link);
    ep->nconns--;
    ep->st.closed++;
    /* Release what the callbacks below do not need now: a callback may free
     * the endpoint (the session's config lives there). */
    const dx_seams *seams = loop->seams;
    if (c->s.cfg)
        dx__session_deinit(&c->s);
    dx__free(seams, c->wq);
    c->wq = NULL;
    dx__http_conn_gone(c);
    struct dx_client *cl = ep->cl;
    if (c->flags & CF_OPENED) {
        ep->st.open--;
        dx__log(LOG(c), DX_LOG_INFO,
                "conn=%llu close remote=%s code=%u duration_ms=%llu bytes_in=%llu bytes_out=%llu msgs_in=%llu "
                "msgs_out=%llu",
                (unsigned long long)c->id, REMOTE(c).s, code,
                (unsigned long long)(loop->tick - c->opened_tick) * DX_TICK_MS, (unsigned long long)c->bytes_in,
                (unsigned long long)c->bytes_out, (unsigned long long)c->msgs_in, (unsigned long long)c->msgs_out);
        const char *reason = c->head ? (const char *)c->head->data : "";
        size_t rlen = c->head ? c->head->len : 0;
        if (ep->opt.cb.on_close)
            ep->opt.cb.on_close(c, code, reason, rlen, ep->opt.ud);
    }
    dx__free(seams, c->head);
    dx__free(seams, c->protocol);
    c->head = NULL;
    c->protocol = NULL;
    if (cl)
        dx__client_conn_end(c, why); /* may reconnect, report, or free nothing more of c */
    c->dfree.fn = deferred_free;
    dx__loop_defer(loop, &c->dfree);
}

void dx__conn_abort(dx_conn *c, unsigned code, const char *why)
{
    if (c->state == CS_DEAD)
        return;
    if (code != DX_CLOSE_ABNORMAL)
        c->code = (uint16_t)code;
    dx__log(LOG(c), (c->flags & CF_OPENED) ? DX_LOG_INFO : DX_LOG_DEBUG, "conn=%llu dropped remote=%s: %s",
            (unsigned long long)c->id, REMOTE(c).s, why);
    conn_finish(c, why);
}

void dx__conn_finish_after_flush(dx_conn *c)
{
    if (c->state >= CS_DRAIN)
        return;
    c->state = CS_DRAIN;
    dx__timer_start(c->ep->loop, &c->timer, c->ep->opt.close_timeout_ms);
    if (c->ep->loop->cork_owner != c && WQ_LEN(c) == 0)
        flush_queue(c); /* nothing queued: FIN now */
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

/* ---- heartbeat and timeouts ------------------------------------------------ */

/* Milliseconds since the last read (tick precision). */
static uint64_t quiet_ms(const dx_conn *c)
{
    return (uint64_t)((uint32_t)c->ep->loop->tick - c->last_rx_tick) * DX_TICK_MS;
}

static void arm_heartbeat(dx_conn *c)
{
    const dx_server_options *o = &c->ep->opt;
    if (c->s.state != DX_CODEC_OPEN)
        return; /* the close timeout owns the timer now */
    uint64_t next = o->ping_interval_ms == (unsigned)-1 ? 0 : o->ping_interval_ms;
    if (o->idle_timeout_ms && (!next || o->idle_timeout_ms < next))
        next = o->idle_timeout_ms;
    if (next)
        dx__timer_start(c->ep->loop, &c->timer, next);
    else
        dx__timer_stop(c->ep->loop, &c->timer);
}

static void on_timer(dx__timer *t)
{
    dx_conn *c = dx_list_entry(t, dx_conn, timer);
    dx__ep *ep = c->ep;
    const dx_server_options *o = &ep->opt;
    uint64_t now = ep->loop->now_ms;
    switch (c->state) {
    case CS_CONNECT:
    case CS_PROXY:
    case CS_TLS:
    case CS_HEAD:
        if (c->flags & CF_HTTP_IDLE) {
            /* A kept-alive connection with no new request: a quiet end. */
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "keep-alive idle timeout");
            return;
        }
        ep->st.handshakes_failed++;
        if (ep->cl) {
            /* A client names the phase that did not finish. */
            static const char *const phase[] = {"TCP connect timed out", "proxy answer to CONNECT timed out",
                                                "TLS handshake timed out", "HTTP response to the upgrade timed out"};
            char why[128];
            snprintf(why, sizeof why, "%s (%u ms)", phase[c->state], o->handshake_timeout_ms);
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, why);
            return;
        }
        dx__log(LOG(c), DX_LOG_INFO, "conn=%llu handshake timeout remote=%s after %u ms (%zu head bytes)",
                (unsigned long long)c->id, REMOTE(c).s, o->handshake_timeout_ms, c->head ? c->head->len : 0);
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, "handshake timeout");
        return;
    case CS_OPEN:
        if (c->s.state == DX_CODEC_CLOSE_SENT) {
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "close timeout: no close frame from the peer");
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
                if (dx__session_control(&c->s, DX_OP_PING, payload, sizeof payload) == 0) {
                    c->flags |= CF_PING_OUT;
                    dx__timer_start(ep->loop, &c->timer, o->pong_timeout_ms);
                    return;
                }
            }
            /* Traffic arrived meanwhile: wake when the next deadline (ping
             * or idle) would pass if the line stays quiet. */
            uint64_t next = ping_on && quiet < o->ping_interval_ms ? o->ping_interval_ms - quiet : UINT64_MAX;
            if (o->idle_timeout_ms && o->idle_timeout_ms - quiet < next)
                next = o->idle_timeout_ms - quiet;
            if (next != UINT64_MAX)
                dx__timer_start(ep->loop, &c->timer, next);
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

typedef struct upgrade_ctx {
    dx_request pub; /* first: the application's view */
    const dx_ws_request *ws;
    const dx_http_request *http;
    dx_conn *conn;
    char *protocol;
    void *user;
    int rc;
} upgrade_ctx;

const char *dx_request_header(const dx_request *req, const char *name, size_t *len)
{
    const upgrade_ctx *u = (const upgrade_ctx *)(const void *)req;
    const dx_http_header *h = dx__http_find(u->http->headers, u->http->n_headers, name);
    if (!h)
        return NULL;
    if (len)
        *len = h->value_len;
    return h->value;
}

int dx_request_protocol(const dx_request *req, size_t *cursor, const char **name, size_t *len)
{
    const upgrade_ctx *u = (const upgrade_ctx *)(const void *)req;
    dx_ws_protocol_iter it;
    dx__ws_protocol_iter_init(&it, u->ws);
    for (size_t i = 0;; i++) {
        if (!dx__ws_protocol_next(&it, name, len))
            return 0;
        if (i == *cursor) {
            (*cursor)++;
            return 1;
        }
    }
}

int dx_request_select_protocol(dx_request *req, const char *name, size_t len)
{
    upgrade_ctx *u = (upgrade_ctx *)(void *)req;
    if (!dx__ws_protocol_offered(u->ws, name, len))
        return DX_EINVAL;
    char *p = dx__alloc(u->conn->ep->loop->seams, len + 1);
    if (!p)
        return DX_ENOMEM;
    memcpy(p, name, len);
    p[len] = 0;
    dx__free(u->conn->ep->loop->seams, u->protocol);
    u->protocol = p;
    return 0;
}

void dx_request_set_user(dx_request *req, void *user) { ((upgrade_ctx *)(void *)req)->user = user; }

static void refuse(dx_conn *c, int status, const char *extra, const char *why)
{
    dx__ep *ep = c->ep;
    ep->st.handshakes_failed++;
    dx__log(LOG(c), DX_LOG_INFO, "conn=%llu handshake refused remote=%s status=%d: %s", (unsigned long long)c->id,
            REMOTE(c).s, status, why);
    char buf[1024];
    int n = dx__http_error_response(buf, sizeof buf, status, extra, why);
    if (n > 0)
        (void)dx__conn_write(c, buf, (size_t)n);
    dx__conn_finish_after_flush(c);
}

/* A complete request head arrived: answer plain HTTP, refuse a bad upgrade,
 * or accept it and start the session. */
static void handle_head(dx_conn *c, const dx_http_request *req)
{
    dx__ep *ep = c->ep;
    dx_ws_ext_offer exts[DX_WS_DEFAULT_MAX_EXTS];
    dx_ws_request ws;
    int rc = dx__ws_server_check(req, &ws, exts, DX_WS_DEFAULT_MAX_EXTS);
    if (rc) {
        int status = dx_http_status_for_error(rc);
        refuse(c, status, dx__ws_error_headers(rc), dx_strerror(rc));
        return;
    }
    upgrade_ctx u = {.ws = &ws, .http = req, .conn = c};
    u.pub.path = ws.path;
    u.pub.path_len = ws.path_len;
    u.pub.query = ws.query;
    u.pub.query_len = ws.query_len;
    u.pub.origin = ws.origin;
    u.pub.origin_len = ws.origin_len;
    addr_str remote = REMOTE(c);
    u.pub.remote = remote.s;
    int status = ep->opt.cb.on_upgrade ? ep->opt.cb.on_upgrade(ep->srv, &u.pub, ep->opt.ud) : 0;
    if (status) {
        dx__free(ep->loop->seams, u.protocol);
        if (status < 400 || status > 599)
            status = 500;
        refuse(c, status, NULL, "refused by the application");
        return;
    }
    char resp[512];
    int n = dx__ws_server_response(resp, sizeof resp, &ws, u.protocol, NULL, NULL);
    if (n < 0) {
        dx__free(ep->loop->seams, u.protocol);
        refuse(c, 500, NULL, "cannot build the response");
        return;
    }
    c->protocol = u.protocol;
    c->user = u.user;
    dx__log(LOG(c), DX_LOG_INFO, "conn=%llu open remote=%s path=%.*s protocol=%s", (unsigned long long)c->id,
            u.pub.remote, (int)ws.path_len, ws.path, c->protocol ? c->protocol : "-");
    if (dx__conn_write(c, resp, (size_t)n))
        return;
    dx__conn_opened(c);
    if (ep->opt.cb.on_open)
        ep->opt.cb.on_open(c, ep->opt.ud);
}

void dx__conn_opened(dx_conn *c)
{
    dx__ep *ep = c->ep;
    dx__session_init(&c->s, &ep->scfg, 0);
    c->state = CS_OPEN;
    c->flags |= CF_OPENED;
    c->opened_tick = c->last_rx_tick = (uint32_t)ep->loop->tick;
    ep->st.open++;
    arm_heartbeat(c);
}

/* Room for `need` head bytes: the buffer starts at what arrived (at least
 * 512 bytes) and doubles up to max_head, so a slow or small head does not
 * cost max_head. */
static dx__head *head_room(dx_conn *c, size_t need, size_t max)
{
    dx__head *h = c->head;
    if (h && need <= h->cap)
        return h;
    size_t cap = h ? h->cap : 512;
    while (cap < need)
        cap *= 2;
    if (cap > max)
        cap = max;
    dx__head *n = dx__realloc(c->ep->loop->seams, h, sizeof *n + cap);
    if (!n)
        return NULL;
    if (!h)
        n->len = 0;
    n->cap = cap;
    c->head = n;
    return n;
}

/* Bytes of the request head arrived. Returns how many of `p` belong to the
 * head (the rest are WebSocket frames, a body or the next request sent
 * right behind it). The parser resumes where it stopped: a head trickled in
 * n pieces is examined once, not n times. */
static size_t feed_head(dx_conn *c, const uint8_t *p, size_t len)
{
    dx__ep *ep = c->ep;
    size_t max = ep->opt.max_head;
    size_t maxh = ep->opt.max_headers < 256 ? ep->opt.max_headers : 256;
    const uint8_t *buf = p;
    size_t blen = len, before = 0;
    int rc;
    if (c->flags & CF_HTTP_IDLE) {
        /* The next request on a kept-alive connection has begun: its head
         * gets the handshake deadline, like a first one. */
        c->flags &= (uint16_t)~CF_HTTP_IDLE;
        dx__timer_start(ep->loop, &c->timer, ep->opt.handshake_timeout_ms);
    }
    if (!c->head) {
        /* The usual case: the whole head is in this read, parsed where it
         * landed (the loop's buffer), with no allocation. */
        dx_http_head ps;
        dx__http_head_init(&ps, ep->cl != NULL);
        rc = dx__http_head_feed(&ps, (const char *)p, len, maxh, max);
        if (rc == DX_EAGAIN) {
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
        before = c->head->len;
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
        blen = h->len;
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
    /* Complete: one stateless pass over the head for its fields (the same
     * grammar, so the same verdict). */
    (void)blen;
    dx_http_header headers[256];
    dx_http_request req;
    dx_http_response resp;
    int rc2 = ep->cl ? dx__http_parse_response((const char *)buf, (size_t)rc, &resp, headers, maxh, max)
                     : dx__http_parse_request((const char *)buf, (size_t)rc, &req, headers, maxh, max);
    if (rc2 != rc) {
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, "internal error: head parsers disagree");
        return len;
    }
    size_t used = (size_t)rc - before; /* bytes of `p` that were head */
    dx__timer_stop(ep->loop, &c->timer);
    if (ep->cl)
        dx__client_response(c, &resp);
    else if (!dx__http_find(req.headers, req.n_headers, "upgrade"))
        dx__http_begin(c, &req, (const char *)buf, (size_t)rc);
    else
        handle_head(c, &req);
    dx__free(ep->loop->seams, c->head);
    c->head = NULL;
    return used;
}

/* ---- reading ----------------------------------------------------------------- */

static void process(dx_conn *c, uint8_t *p, size_t n)
{
    dx_loop *loop = c->ep->loop;
    /* A head, then (plain HTTP) a body and perhaps the next request on a
     * kept-alive connection, or (upgrade) frames. */
    while (n && (c->state == CS_HEAD || c->state == CS_HTTP)) {
        size_t used = c->state == CS_HEAD ? feed_head(c, p, n) : dx__http_input(c, p, n);
        p += used;
        n -= used;
    }
    /* DRAIN, LINGER: input is discarded (§5.5.1: nothing after a close). */
    if (c->state != CS_OPEN || n == 0)
        return;
    c->last_rx_tick = (uint32_t)loop->tick;
    loop->cork_owner = c;
    loop->cork_len = 0;
    (void)dx__session_recv(&c->s, p, n);
    if (loop->cork_owner == c) {
        (void)flush_cork(c);
        loop->cork_owner = NULL;
    }
    after_session(c);
}

void dx__conn_process(dx_conn *c, uint8_t *p, size_t n) { process(c, p, n); }

void dx__conn_want_write(dx_conn *c, bool on) { want_write(c, on); }

static void on_readable(dx_conn *c)
{
    dx_loop *loop = c->ep->loop;
    /* Stops as soon as reading is turned off (a plain HTTP answer is
     * pending: what follows it waits in the kernel, not in our memory). */
    for (int i = 0; i < READS_PER_EVENT && c->state != CS_DEAD && !(c->flags & CF_READ_OFF); i++) {
        ssize_t n = c->st.t->read(&c->st, loop->rbuf, DX_LOOP_RBUF);
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
        c->ep->st.bytes_in += (size_t)n;
        process(c, loop->rbuf, (size_t)n);
        if ((size_t)n < DX_LOOP_RBUF && !c->st.t->pending(&c->st))
            return; /* drained: another read would only say EAGAIN */
    }
    /* Fairness: others get their turn. Input still in the kernel wakes epoll
     * again; input already inside the transport (TLS) would not, so ask the
     * loop to come back after this batch. */
    if (c->state != CS_DEAD && c->st.t->pending(&c->st))
        dx__loop_ready(loop, &c->io);
}

static void drive_tls(dx_conn *c)
{
    int rc = c->st.t->handshake(&c->st);
    if (rc == DX_EAGAIN) {
        want_write(c, c->st.want == DX__WANT_WRITE);
        return;
    }
    if (rc) {
        char why[256];
        dx__tls_describe_failure(&c->st, why, sizeof why);
        c->ep->st.handshakes_failed++;
        dx__log(LOG(c), DX_LOG_INFO, "conn=%llu TLS handshake failed remote=%s: %s", (unsigned long long)c->id,
                REMOTE(c).s, why);
        dx__conn_abort(c, DX_CLOSE_TLS_HANDSHAKE, why);
        return;
    }
    want_write(c, false);
    if (c->ep->cl)
        dx__client_transport_ready(c); /* sends the upgrade request, then CS_HEAD */
    else
        c->state = CS_HEAD;
}

void dx__conn_drive_tls(dx_conn *c) { drive_tls(c); }

static void on_io(dx__io *io, uint32_t events)
{
    dx_conn *c = dx_list_entry(io, dx_conn, io);
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
    if ((events & EPOLLOUT) && WQ_LEN(c))
        flush_queue(c);
    if (c->state == CS_HTTP && !dx__http_io(c, events))
        return; /* an answer pending or being sent: not reading */
    if (c->state == CS_HEAD && c->http)
        dx__http_resume(c); /* input kept while the last answer was pending */
    if (c->state != CS_DEAD && !(c->flags & CF_READ_OFF) && (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
        on_readable(c);
}

dx_conn *dx__conn_open(dx__ep *ep, int fd, const struct sockaddr *sa, int state, uint32_t events,
                       unsigned timeout_ms)
{
    dx_loop *loop = ep->loop;
    dx_conn *c = dx__alloc(loop->seams, sizeof *c);
    if (!c)
        return NULL;
    memset(c, 0, sizeof *c);
    c->ep = ep;
    c->id = ep->next_id;
    ep->next_id += ep->opt.instances;
    c->io = (dx__io){.fd = fd, .cb = on_io};
    c->st = (dx__stream){.t = &dx__tcp_transport, .fd = fd};
    if (sa)
        store_addr(c, sa);
    dx__timer_init(&c->timer, on_timer);
    c->state = (uint8_t)state;
    if (!sa || sa->sa_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (dx__io_start(loop, &c->io, events)) {
        dx__free(loop->seams, c);
        return NULL;
    }
    if (events & EPOLLOUT)
        c->flags |= CF_WANT_WRITE;
    dx_list_push_back(&ep->conns, &c->link);
    ep->nconns++;
    dx__timer_start(loop, &c->timer, timeout_ms);
    return c;
}

dx_conn *dx__conn_new(dx_server *srv, int fd, const struct sockaddr *sa, socklen_t salen)
{
    (void)salen;
    dx_conn *c = dx__conn_open(&srv->ep, fd, sa, srv->tls ? CS_TLS : CS_HEAD, EPOLLIN | EPOLLRDHUP,
                               srv->ep.opt.handshake_timeout_ms);
    if (!c)
        return NULL;
    if (srv->tls && dx__tls_accept(srv->tls, &c->st)) {
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, "cannot start TLS");
        return c; /* accepted and dropped: the fd is closed */
    }
    return c;
}

/* ---- public connection API --------------------------------------------------- */

int dx_conn_send(dx_conn *c, int opcode, const void *data, size_t len)
{
    if (c->state != CS_OPEN)
        return DX_ECLOSED;
    int rc = opcode == DX_OP_PING ? dx__session_control(&c->s, DX_OP_PING, data, len)
                                  : dx__session_send(&c->s, opcode, data, len, 0, 1);
    after_session(c);
    return rc;
}

int dx_conn_close(dx_conn *c, unsigned code, const char *reason, size_t len)
{
    if (c->state != CS_OPEN)
        return DX_ECLOSED;
    int rc = dx__session_close(&c->s, code, reason, len);
    if (rc == 0)
        dx__timer_start(c->ep->loop, &c->timer, c->ep->opt.close_timeout_ms);
    after_session(c);
    return rc;
}

size_t dx_conn_buffered(const dx_conn *c)
{
    size_t n = WQ_LEN(c);
    if (c->ep->loop->cork_owner == c)
        n += c->ep->loop->cork_len;
    return n;
}

const char *dx_conn_protocol(const dx_conn *c) { return c->protocol; }
void *dx_conn_user(const dx_conn *c) { return c->user; }
void dx_conn_set_user(dx_conn *c, void *user) { c->user = user; }
dx_server *dx_conn_server(const dx_conn *c) { return c->ep->srv; }
struct dx_client *dx_conn_client(const dx_conn *c) { return c->ep->cl; }
uint64_t dx_conn_id(const dx_conn *c) { return c->id; }
