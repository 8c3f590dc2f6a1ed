/*
 * src/ws/send.c: a connection's send queue: frames in, one writev per
 * connection per loop iteration out.
 *
 * Layer: ws. Depends on proto (frame headers, masking) and net (the
 * transport); the loop's ws context (ws_loop.c) gives the gather arena, the
 * queue-block pool and the list of connections with gathered output, which
 * it flushes before the loop sleeps.
 *
 * A queue (dx__wq, ws.h) is a list of segments: pointer + length into a
 * shared frame (a dx_msg, by reference), the arena (small private frames,
 * copied once), the connection's own memory (bytes the kernel refused) or
 * the caller's memory (only within one call). Invariants: a queue with
 * gathered output is on the loop's pending list; a connection waiting for
 * EPOLLOUT (CF_WANT_WRITE) is "backlogged": new frames go behind what the
 * kernel refused, in its own memory; what waits because the kernel refused
 * it is bounded by send_max (slow consumer: 1008, counted); an empty queue
 * is given back (an idle connection holds no buffers). Nothing here fires a
 * callback inside a call the application made: on_drain comes only from a
 * flush the loop runs (dx__conn_flush, from_loop).
 *
 * Fast paths (docs/performance.md "Small messages"): dx_conn_send, which
 * lives here, writes a small reply of a server connection straight into the
 * arena (put_small_fast: what put_private's arena branch does, minus its
 * general cases); the flush writes and releases a one-block queue in one
 * step. Both are compared with the general path by tests/unit/test_conn.c.
 */
#define _GNU_SOURCE
#include "ws/ws.h"

#include "core/log.h"
#include "core/seams.h"
#include "proto/mask.h"

#include <string.h>
#include <sys/epoll.h>
#include <sys/uio.h>

#define DIRECT_MIN (8u * 1024u) /* a private frame this big is written from the caller's memory, not copied */
#define TINY_COPY 48u           /* a shared frame this small is copied to a backlog (a segment costs 24 bytes) */
#define IOV_BATCH 64            /* segments per writev */
#define OWN_MIN 1024u           /* room left at the end of a backlog copy for the next ones */

/* Waiting for EPOLLOUT: the kernel refused bytes; new ones queue behind them. */
static bool backlogged(const dx_conn *c) { return (c->flags & CF_WANT_WRITE) != 0; }

/* Gathered bytes past which a queue is offered to the kernel at once rather
 * than before sleep (so what waits unoffered stays small next to send_max). */
static size_t gather_max(const dx_conn *c)
{
    size_t m = dx__conn_ep(c)->opt.send_max;
    return m < DX_WS_CHUNK ? m : DX_WS_CHUNK;
}

static void seg_release(dx__wsl *w, const dx__seg *s)
{
    void *o = (void *)(s->ref & ~(uintptr_t)SEG_TAG);
    if ((s->ref & SEG_TAG) == SEG_RC)
        dx_rcbuf_unref(o);
    else if ((s->ref & SEG_TAG) == SEG_OWN)
        dx__free(w->seams, o);
}

/* Drops every segment (releasing what they hold) and block; leaves the
 * loop's gathered list. */
void dx__wq_release(dx_conn *c)
{
    dx__wq *q = c->wq;
    if (!q)
        return;
    dx__wsl *w = dx__conn_ep(c)->wsl;
    dx_list_remove(&q->pend);
    while (q) {
        for (unsigned i = q->first; i < (unsigned)q->first + q->n; i++)
            seg_release(w, &q->seg[i]);
        dx__wq *next = q->next;
        dx__wsl_unblock(w, q);
        q = next;
    }
    c->wq = NULL;
}

/* Makes room for k (<= DX_WQ_SEGS) more segments at the tail. */
static int wq_room(dx_conn *c, unsigned k)
{
    dx__wsl *w = dx__conn_ep(c)->wsl;
    if (!c->wq) {
        dx__wq *q = dx__wsl_block(w);
        if (!q)
            return DX_ENOMEM;
        q->tail = q;
        q->conn = c;
        c->wq = q;
    }
    dx__wq *t = c->wq->tail;
    if ((unsigned)t->first + t->n + k <= DX_WQ_SEGS)
        return 0;
    if (t->first && (unsigned)t->n + k <= DX_WQ_SEGS) {
        memmove(t->seg, t->seg + t->first, t->n * sizeof *t->seg);
        t->first = 0;
        return 0;
    }
    dx__wq *nb = dx__wsl_block(w);
    if (!nb)
        return DX_ENOMEM;
    t->next = nb;
    c->wq->tail = nb;
    return 0;
}

/* Appends a segment (room was made). Arena bytes that follow the last
 * segment extend it: an echo of many messages is one iovec. */
static void wq_push(dx_conn *c, const uint8_t *p, size_t len, uintptr_t ref)
{
    dx__wq *q = c->wq, *t = q->tail;
    q->len += len;
    if (t->n && ref == SEG_ARENA) {
        dx__seg *last = &t->seg[t->first + t->n - 1];
        if (last->ref == SEG_ARENA && last->p + last->len == p) {
            last->len += len;
            return;
        }
    }
    t->seg[t->first + t->n] = (dx__seg){.p = p, .len = len, .ref = ref};
    t->n++;
}

/* The queue got bytes to write before the loop sleeps. */
static void wq_gathered(dx_conn *c)
{
    if (!dx_list_linked(&c->wq->pend))
        dx_list_push_back(&dx__conn_ep(c)->wsl->pend, &c->wq->pend);
}

/* Drops `done` written bytes from the front. */
static void wq_consume(dx_conn *c, size_t done)
{
    dx__wq *q = c->wq;
    dx__wsl *w = dx__conn_ep(c)->wsl;
    q->len -= done;
    while (done && q->n) {
        dx__seg *s = &q->seg[q->first];
        if (done < s->len) {
            s->p += done;
            s->len -= done;
            return;
        }
        done -= s->len;
        seg_release(w, s);
        q->first++;
        q->n--;
        if (q->n == 0 && q->next) {
            /* The head block keeps the queue's fields: pull the next one in. */
            dx__wq *nb = q->next;
            memcpy(q->seg, nb->seg + nb->first, nb->n * sizeof *q->seg);
            q->first = 0;
            q->n = nb->n;
            q->next = nb->next;
            if (q->tail == nb)
                q->tail = q;
            dx__wsl_unblock(w, nb);
        }
    }
}

/* `len` writable bytes at the end of the queue, in the connection's own
 * memory (the backlog): the last own buffer grows in place when it can. */
static uint8_t *own_reserve(dx_conn *c, size_t len)
{
    if (wq_room(c, 1))
        return NULL;
    dx__wq *t = c->wq->tail;
    if (t->n) {
        dx__seg *last = &t->seg[t->first + t->n - 1];
        if ((last->ref & SEG_TAG) == SEG_OWN) {
            dx__own *o = (dx__own *)(last->ref & ~(uintptr_t)SEG_TAG);
            if (last->p + last->len == o->data + o->used && o->cap - o->used >= len) {
                uint8_t *d = o->data + o->used;
                o->used += len;
                last->len += len;
                c->wq->len += len;
                dx__conn_ep(c)->wsl->copied += len;
                return d;
            }
        }
    }
    size_t cap = len < OWN_MIN ? OWN_MIN : len;
    if (cap > SIZE_MAX - sizeof(dx__own))
        return NULL;
    dx__own *o = dx__alloc(dx__conn_ep(c)->wsl->seams, sizeof *o + cap);
    if (!o)
        return NULL;
    o->cap = cap;
    o->used = len;
    wq_push(c, o->data, len, (uintptr_t)o | SEG_OWN);
    dx__conn_ep(c)->wsl->copied += len;
    return o->data;
}

/* Connections whose queue holds only the room made by a failed call give
 * the block back (an idle connection holds no buffers). */
static void wq_trim(dx_conn *c)
{
    if (c->wq && c->wq->len == 0)
        dx__wq_release(c);
}

/* Offers the queue to the kernel, IOV_BATCH segments per writev, until it
 * is empty or the kernel refuses. 0, or DX_ECLOSED when the
 * write failed (the connection was aborted and its queue released). */
static int wq_write(dx_conn *c)
{
    dx__wsl *w = dx__conn_ep(c)->wsl;
    while (c->wq && c->wq->len) {
        struct iovec iov[IOV_BATCH];
        int n = 0;
        for (const dx__wq *b = c->wq; b && n < IOV_BATCH; b = b->next)
            for (unsigned i = b->first; i < (unsigned)b->first + b->n && n < IOV_BATCH; i++)
                iov[n++] = (struct iovec){(void *)(uintptr_t)b->seg[i].p, b->seg[i].len};
        w->writes++;
        ssize_t r = dx__stream_writev(&c->st, c->io.fd, iov, n);
        if (r < 0 && r != DX_EAGAIN) {
            /* The peer is gone; the read side will notice and report 1006. */
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "write failed");
            return DX_ECLOSED;
        }
        if (r <= 0)
            return 0; /* full: EPOLLOUT will say when to go on */
        c->bytes_out += (size_t)r;
        dx__conn_ep(c)->st.bytes_out += (size_t)r;
        wq_consume(c, (size_t)r);
        /* A short write may be a transport's unit (one TLS record), not a
         * full socket: go on until the kernel refuses. */
    }
    return 0;
}

/* The queue is empty (released): FIN for a draining connection, on_drain
 * when owed and `from_loop`. */
static int queue_emptied(dx_conn *c, bool from_loop)
{
    /* The common case, an open connection flushed by the loop with no
     * EPOLLOUT and no drain owed: nothing below applies. */
    if (from_loop && c->state == CS_OPEN && !(c->flags & (CF_WANT_WRITE | CF_DRAIN_ARMED)))
        return 0;
    /* A drain owed to a call made outside the loop keeps EPOLLOUT: on_io
     * reports it from the loop, never from inside that call. */
    /* An HTTP answer being sent goes on at EPOLLOUT too (its next piece
     * must follow what was just flushed, gathered output included). */
    dx__conn_want_write(c, (!from_loop && c->state == CS_OPEN && (c->flags & CF_DRAIN_ARMED)) ||
                               (c->state == CS_HTTP && dx__http_sending(c)));
    if (c->state == CS_DRAIN) {
        if (!c->st.tls && (c->flags & CF_SESSION) && c->s.close_recv &&
            dx__conn_ep(c)->scfg.role == DX_ROLE_SERVER) {
            /* The close handshake is complete: the peer's close frame
             * came (after it the peer sends nothing, §5.5.1) and ours is
             * written. The server closes the TCP connection first (§7.1.1),
             * at once: nothing is left unread that would turn the FIN
             * into a reset, so waiting for the peer's EOF (LINGER) would
             * only cost a shutdown, a wake-up and a read per connection.
             * TLS keeps LINGER (its close_notify), and so does a close the
             * peer has not answered (it may still be sending) and a client
             * (it waits for the server to close, §7.1.1). */
            dx__conn_finish(c);
            return 0;
        }
        dx__stream_shutdown(&c->st, c->io.fd);
        c->state = CS_LINGER;
        return 0;
    }
    if (from_loop && (c->flags & CF_DRAIN_ARMED) && c->state == CS_OPEN) {
        c->flags &= (uint16_t)~CF_DRAIN_ARMED;
        if (dx__conn_ep(c)->opt.cb.on_drain)
            dx__conn_ep(c)->opt.cb.on_drain(c, dx__conn_ep(c)->opt.ud);
    }
    return 0;
}

/* After a write: an empty queue goes back to the pool (and a draining
 * connection sends FIN); what is left waits for EPOLLOUT, moved out of the
 * arena and the caller's memory into the connection's own. `from_loop`:
 * called by the loop (not inside an application call), so on_drain may fire. */
int dx__wq_done(dx_conn *c, bool from_loop)
{
    if (c->state == CS_DEAD)
        return DX_ECLOSED;
    dx__wq *q = c->wq;
    if (!q || q->len == 0) {
        dx__wq_release(c);
        return queue_emptied(c, from_loop);
    }
    dx_list_remove(&q->pend);
    for (dx__wq *b = q; b; b = b->next)
        for (unsigned i = b->first; i < (unsigned)b->first + b->n; i++) {
            dx__seg *s = &b->seg[i];
            unsigned tag = s->ref & SEG_TAG;
            if (tag != SEG_ARENA && tag != SEG_BORROW)
                continue;
            bool last = b == q->tail && i + 1 == (unsigned)b->first + b->n;
            size_t cap = last && s->len < OWN_MIN ? OWN_MIN : s->len;
            dx__own *o = dx__alloc(dx__conn_ep(c)->wsl->seams, sizeof *o + cap);
            if (!o) {
                dx__conn_abort(c, DX_CLOSE_ABNORMAL, "out of memory for the send queue");
                return DX_ENOMEM;
            }
            o->cap = cap;
            o->used = s->len;
            memcpy(o->data, s->p, s->len);
            dx__conn_ep(c)->wsl->copied += s->len;
            s->p = o->data;
            s->ref = (uintptr_t)o | SEG_OWN;
        }
    if (q->len > dx__conn_ep(c)->opt.send_high_water)
        c->flags |= CF_DRAIN_ARMED;
    dx__conn_want_write(c, true);
    return 0;
}

/* Writes what is queued now (inside a call: no callback but an abort's).
 * Out of line: the fast paths that end in it stay small. */
__attribute__((noinline)) static int flush_now(dx_conn *c)
{
    int rc = wq_write(c);
    return rc ? rc : dx__wq_done(c, false);
}

void dx__conn_flush(dx_conn *c)
{
    dx__wq *q = c->wq;
    if (q && !q->next && q->len) {
        /* The common case (the replies gathered in one iteration): one
         * block, one writev, and the kernel takes all of it. */
        struct iovec iov[DX_WQ_SEGS];
        const dx__seg *sg = q->seg + q->first;
        int n = q->n;
        if (n == 1) { /* the replies to one read: one arena segment */
            iov[0] = (struct iovec){(void *)(uintptr_t)sg[0].p, sg[0].len};
        } else {
            for (int i = 0; i < n; i++)
                iov[i] = (struct iovec){(void *)(uintptr_t)sg[i].p, sg[i].len};
        }
        dx__wsl *w = dx__conn_ep(c)->wsl;
        w->writes++;
        ssize_t r = dx__stream_writev(&c->st, c->io.fd, iov, n);
        if (r < 0 && r != DX_EAGAIN) {
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "write failed"); /* as wq_write */
            return;
        }
        if (r > 0) {
            c->bytes_out += (size_t)r;
            dx__conn_ep(c)->st.bytes_out += (size_t)r;
            if ((size_t)r == q->len) {
                /* dx__wq_release for one block: arena segments own nothing. */
                if (n != 1 || sg[0].ref != SEG_ARENA)
                    for (int i = 0; i < n; i++)
                        if (sg[i].ref != SEG_ARENA)
                            seg_release(w, &sg[i]);
                if (dx_list_linked(&q->pend)) /* before_sleep unlinked it already */
                    dx_list_remove(&q->pend);
                c->wq = NULL;
                dx__wsl_unblock(w, q);
                /* queue_emptied's common case inline: nothing applies. */
                if (c->state != CS_OPEN || (c->flags & (CF_WANT_WRITE | CF_DRAIN_ARMED)))
                    (void)queue_emptied(c, true);
                return;
            }
            wq_consume(c, (size_t)r); /* a short write: go on as wq_write does */
        } else {
            (void)dx__wq_done(c, true); /* refused: wait for EPOLLOUT */
            return;
        }
    }
    if (wq_write(c) == 0)
        (void)dx__wq_done(c, true);
}

/* Appended to a backlog: note when it passes the high-water mark. */
static void backlog_grew(dx_conn *c)
{
    if (WQ_LEN(c) > dx__conn_ep(c)->opt.send_high_water)
        c->flags |= CF_DRAIN_ARMED;
}

/* A client frame too large for the arena: masked a scratch-full at a time
 * and written, so it costs no allocation while the kernel takes it; what
 * the kernel refuses (the rest of the piece and of the payload, masked)
 * goes to the backlog. Nothing is queued before it here. */
static int write_masked(dx_conn *c, const uint8_t *hdr, size_t hl, const uint8_t *data, size_t len,
                        const uint8_t *key)
{
    dx__wsl *w = dx__conn_ep(c)->wsl;
    uint8_t *sc = w->scratch;
    size_t off = 0;
    bool first = true;
    while (first || off < len) {
        size_t n = 0;
        if (first) {
            memcpy(sc, hdr, hl);
            n = hl;
        }
        size_t take = len - off < DX_WS_SCRATCH - n ? len - off : DX_WS_SCRATCH - n;
        dx__mask_copy(sc + n, data + off, take, key, off & 3);
        n += take;
        off += take;
        first = false;
        size_t done = 0;
        while (done < n) { /* a short write may be one TLS record: go on until refused */
            struct iovec iov = {sc + done, n - done};
            w->writes++;
            ssize_t r = dx__stream_writev(&c->st, c->io.fd, &iov, 1);
            if (r < 0 && r != DX_EAGAIN) {
                dx__conn_abort(c, DX_CLOSE_ABNORMAL, "write failed");
                return DX_ECLOSED;
            }
            if (r <= 0)
                break;
            done += (size_t)r;
            c->bytes_out += (size_t)r;
            dx__conn_ep(c)->st.bytes_out += (size_t)r;
        }
        if (done < n) {
            uint8_t *d = own_reserve(c, (n - done) + (len - off));
            if (!d) {
                dx__conn_abort(c, DX_CLOSE_ABNORMAL, "out of memory for the send queue");
                return DX_ENOMEM;
            }
            memcpy(d, sc + done, n - done);
            dx__mask_copy(d + (n - done), data + off, len - off, key, off & 3);
            return dx__wq_done(c, false);
        }
    }
    return 0;
}

/* A frame's header and payload (masked with `key` in the client role) into d. */
static void frame_copy(uint8_t *d, const uint8_t *hdr, size_t hl, const uint8_t *data, size_t len,
                       const uint8_t *key)
{
    if (hl)
        memcpy(d, hdr, hl);
    if (key)
        dx__mask_copy(d + hl, data, len, key, 0);
    else if (len)
        memcpy(d + hl, data, len);
}

/* Queues a frame of private bytes (the caller's memory, borrowed for this
 * call): header `hdr` (hl may be 0) and payload, masked with `key` when
 * given. Small ones are copied into the loop's arena and written before
 * the loop sleeps; large ones are written at once from the caller's memory
 * (with what was gathered before them) and only what the kernel refuses is
 * copied; behind a backlog, they are copied to it. */
static int put_private(dx_conn *c, const uint8_t *hdr, size_t hl, const uint8_t *data, size_t len,
                       const uint8_t *key)
{
    size_t total = hl + len;
    if (total == 0)
        return 0;
    if (backlogged(c)) {
        uint8_t *d = own_reserve(c, total);
        if (!d) {
            wq_trim(c);
            return DX_ENOMEM;
        }
        frame_copy(d, hdr, hl, data, len, key);
        backlog_grew(c);
        return 0;
    }
    if (len < DIRECT_MIN) {
        uint8_t *d = wq_room(c, 1) ? NULL : dx__wsl_arena(dx__conn_ep(c)->wsl, total);
        if (!d) {
            wq_trim(c);
            return DX_ENOMEM;
        }
        frame_copy(d, hdr, hl, data, len, key);
        wq_push(c, d, total, SEG_ARENA);
        dx__conn_ep(c)->wsl->copied += total;
        wq_gathered(c);
        return c->wq->len >= gather_max(c) ? flush_now(c) : 0;
    }
    if (key) {
        if (WQ_LEN(c)) {
            int rc = flush_now(c); /* what came before goes first */
            if (rc)
                return rc;
            if (backlogged(c))
                return put_private(c, hdr, hl, data, len, key);
        }
        return write_masked(c, hdr, hl, data, len, key);
    }
    if (wq_room(c, 2)) {
        wq_trim(c);
        return DX_ENOMEM;
    }
    if (hl)
        wq_push(c, hdr, hl, SEG_BORROW);
    wq_push(c, data, len, SEG_BORROW);
    return flush_now(c);
}

/* Copies a small payload with a few moves instead of a call (n <= 16 is
 * the common echo and chat size); larger ones go to memcpy. */
__attribute__((always_inline)) static inline void copy_small(uint8_t *d, const uint8_t *src, size_t n)
{
    if (n > 16) {
        memcpy(d, src, n);
    } else if (n >= 8) {
        uint64_t a, b;
        memcpy(&a, src, 8);
        memcpy(&b, src + n - 8, 8);
        memcpy(d, &a, 8);
        memcpy(d + n - 8, &b, 8);
    } else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, src, 4);
        memcpy(&b, src + n - 4, 4);
        memcpy(d, &a, 4);
        memcpy(d + n - 4, &b, 4);
    } else {
        for (size_t i = 0; i < n; i++)
            d[i] = src[i];
    }
}

/* The common frame on the common path: a small unmasked private frame for
 * a connection that is not backlogged, with room for it in the arena's
 * current chunk. The frame is written there, header and payload; when the
 * queue's last segment ends right where it starts (the replies to a batch
 * of messages read at once) that segment grows, else a segment is added.
 * What put_private's arena branch does, minus its general cases (a new
 * chunk, a full block). False when it does not apply (nothing was done). */
__attribute__((always_inline)) static inline bool put_small_fast(dx_conn *c, unsigned opcode, bool fin,
                                                                unsigned rsv, const uint8_t *data, size_t len)
{
    dx__wsl *w = dx__conn_ep(c)->wsl;
    dx__chunk *ch = w->cur;
    if (!ch || len >= DIRECT_MIN)
        return false;
    size_t hl = len <= 125 ? 2 : 4; /* DIRECT_MIN < 65536: never the 64-bit form */
    size_t total = hl + len;
    if (ch->used + total > DX_WS_CHUNK)
        return false;
    uint8_t *d = ch->data + ch->used;
    dx__wq *q = c->wq;
    dx__seg *last = NULL;
    if (q) {
        dx__wq *t = q->tail;
        if (t->n)
            last = &t->seg[t->first + t->n - 1];
        if (last && (last->ref != SEG_ARENA || last->p + last->len != d))
            last = NULL; /* not contiguous: a new segment */
        if (!last && (unsigned)t->first + t->n >= DX_WQ_SEGS)
            return false; /* the tail block is full: wq_room's general case */
    } else {
        if (!(q = dx__wsl_block(w)))
            return false;
        q->tail = q;
        q->conn = c;
        c->wq = q;
    }
    if (ch->used == 0)
        w->arena_used++; /* as dx__wsl_arena counts a chunk's first use */
    d[0] = (uint8_t)((fin ? 0x80u : 0) | ((rsv & 0x7u) << 4) | (opcode & 0x0Fu));
    if (hl == 2) {
        d[1] = (uint8_t)len;
    } else {
        d[1] = 126;
        d[2] = (uint8_t)(len >> 8);
        d[3] = (uint8_t)len;
    }
    copy_small(d + hl, data, len);
    ch->used += total;
    q->len += total;
    w->copied += total;
    if (last) {
        last->len += total;
    } else {
        dx__wq *t = q->tail;
        t->seg[t->first + t->n] = (dx__seg){.p = d, .len = total, .ref = SEG_ARENA};
        t->n++;
        wq_gathered(c);
    }
    return true;
}

static int send_general(dx_conn *c, int opcode, const void *data, size_t len);

/* dx_conn_send (duplex/server.h). The common case, a small whole message
 * from a server connection that is not backlogged (a reply inside a
 * batch), skips the session and the general put: the same frame and
 * counters, the same checks (dx__session_plain_send, put_small_fast).
 * Everything else is send_general, out of line, so this path saves few
 * registers. */
int dx_conn_send(dx_conn *c, int opcode, const void *data, size_t len)
{
    if (c->state == CS_OPEN && (opcode == DX_OP_BINARY || (opcode == DX_OP_TEXT && dx__utf8_valid(data, len))) &&
        dx__session_plain_send(&c->s) && dx__conn_ep(c)->scfg.role == DX_ROLE_SERVER && !backlogged(c) &&
        !dx__conn_ep(c)->opt.cb.on_frame && put_small_fast(c, (unsigned)opcode, true, 0, data, len)) {
        c->msgs_out++;
        dx__conn_ep(c)->st.messages_out++;
        return c->wq->len >= gather_max(c) ? flush_now(c) : 0;
    }
    return send_general(c, opcode, data, len);
}

/* dx_conn_send's other cases (put_small_fast refused, or did not apply):
 * nothing was done yet. */
__attribute__((noinline)) static int send_general(dx_conn *c, int opcode, const void *data, size_t len)
{
    if (c->state != CS_OPEN)
        return DX_ECLOSED;
    int rc;
    if ((opcode == DX_OP_BINARY || (opcode == DX_OP_TEXT && dx__utf8_valid(data, len))) &&
        dx__session_plain_send(&c->s)) {
        dx__ep *ep = dx__conn_ep(c);
        if (ep->scfg.role == DX_ROLE_SERVER && !backlogged(c) && !ep->opt.cb.on_frame) {
            /* dx__conn_put_frame's path for this case: no queue limit
             * applies (not backlogged), no trace. */
            c->msgs_out++;
            ep->st.messages_out++;
            uint8_t hdr[DX_FRAME_HEADER_MAX];
            size_t hl = dx__frame_header_write(hdr, (unsigned)opcode, true, 0, len, NULL);
            return put_private(c, hdr, hl, data, len, NULL);
        }
        rc = dx__session_send_valid(&c->s, opcode, data, len); /* validated once, above */
    } else {
        rc = opcode == DX_OP_PING ? dx__session_control(&c->s, DX_OP_PING, data, len)
                                  : dx__session_send(&c->s, opcode, data, len, 0, 1);
    }
    dx__conn_after_session(c);
    return rc;
}

/* Queues a reference to len bytes at p inside the shared buffer rb: no copy. */
static int put_ref(dx_conn *c, dx_rcbuf *rb, const uint8_t *p, size_t len)
{
    if (backlogged(c) && len <= TINY_COPY)
        return put_private(c, NULL, 0, p, len, NULL);
    if (wq_room(c, 1))
        return DX_ENOMEM;
    wq_push(c, p, len, (uintptr_t)dx_rcbuf_ref(rb) | SEG_RC);
    if (backlogged(c)) {
        backlog_grew(c);
        return 0;
    }
    wq_gathered(c);
    return c->wq->len >= gather_max(c) ? flush_now(c) : 0;
}

/* Queues a reference to a shared, encoded frame (a dx_msg): no copy. */
static int put_shared(dx_conn *c, dx_rcbuf *frame)
{
    return put_ref(c, frame, dx_rcbuf_data(frame), dx_rcbuf_len(frame));
}

int dx__conn_write_ref(dx_conn *c, dx_rcbuf *rb, const uint8_t *p, size_t len)
{
    if (c->state == CS_DEAD)
        return DX_ECLOSED;
    return len ? put_ref(c, rb, p, len) : 0;
}

int dx__conn_write(dx_conn *c, const void *data, size_t len)
{
    if (c->state == CS_DEAD)
        return DX_ECLOSED;
    return put_private(c, NULL, 0, data, len, NULL);
}

/* One frame out. Server frames go out unmasked, `frame` (when given: the
 * whole frame, encoded once) by reference; client frames are masked with a
 * fresh key from the loop's pool (RFC 6455 §5.3), so they are copied. */
int dx__conn_put_frame(dx_conn *c, int kind, unsigned opcode, bool fin, unsigned rsv, const uint8_t *data,
                       size_t len, dx_rcbuf *frame)
{
    dx__ep *ep = dx__conn_ep(c);
    if (c->state == CS_DEAD)
        return DX_ECLOSED;
    /* The fast path: what the general path below does for a small server
     * frame when nothing is backlogged (so no queue limit applies) and no
     * trace is set. */
    if (!frame && ep->scfg.role == DX_ROLE_SERVER && !backlogged(c) && !ep->opt.cb.on_frame &&
        put_small_fast(c, opcode, fin, rsv, data, len)) {
        if (kind == DX__PUT_DATA) {
            c->msgs_out++;
            ep->st.messages_out++;
        }
        return c->wq->len >= gather_max(c) ? flush_now(c) : 0;
    }
    bool masked = ep->scfg.role == DX_ROLE_CLIENT;
    uint8_t key[4];
    if (masked && dx__wsl_mask_key(ep->wsl, key))
        return DX_ERANDOM;
    uint8_t hdr[DX_FRAME_HEADER_MAX];
    bool shared = frame && !masked; /* the header was encoded once, with the frame */
    size_t hl = shared ? dx_rcbuf_len(frame) - len
                       : dx__frame_header_write(hdr, opcode, fin, rsv, len, masked ? key : NULL);
    size_t total = hl + len;
    /* The cap applies to what waits in the queue because the kernel refused
     * it: a frame larger than send_max still goes out when nothing waits,
     * so the queue holds at most send_max plus one frame. */
    if ((kind == DX__PUT_DATA || kind == DX__PUT_PONG) && backlogged(c) && WQ_LEN(c) &&
        WQ_LEN(c) + total > ep->opt.send_max) {
        if (kind == DX__PUT_PONG) {
            ep->st.pongs_dropped++;
            return DX_ELIMIT;
        }
        /* The peer does not read fast enough: drop it (1008), count it. */
        ep->st.dropped_slow++;
        dx__log(dx__conn_ep(c)->loop->log, DX_LOG_WARN,
                "conn=%llu slow consumer: %zu bytes queued, send_max %zu; closing with 1008",
                (unsigned long long)c->id, WQ_LEN(c), ep->opt.send_max);
        dx__session_fail(&c->s, DX_EPOLICY, DX_CLOSE_POLICY, "send queue full");
        return DX_ELIMIT;
    }
    if (kind == DX__PUT_DATA) {
        c->msgs_out++;
        ep->st.messages_out++;
    }
    if (ep->opt.cb.on_frame)
        ep->opt.cb.on_frame(c, '>', opcode, fin, rsv, len, masked, data, len < 16 ? len : 16, ep->opt.ud);
    if (c->state == CS_DEAD)
        return DX_ECLOSED; /* the trace freed its endpoint: the transport is closed */
    if (shared)
        return put_shared(c, frame);
    return put_private(c, hdr, hl, data, len, masked ? key : NULL);
}

/* Session output: one frame. */
int dx__conn_put(dx__session *s, int kind, unsigned opcode, bool fin, unsigned rsv, const uint8_t *data,
                 size_t len)
{
    return dx__conn_put_frame((dx_conn *)(void *)s, kind, opcode, fin, rsv, data, len, NULL);
}
