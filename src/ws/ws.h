/*
 * src/ws/ws.h: internals shared by the server endpoint (server.c), its
 * connections (conn.c) and the plain-HTTP side (http.c).
 *
 * Layer: ws. Depends on proto (session, handshake, http) and net (loop,
 * transports). Owns the RFC's connection behaviour: close handshake,
 * heartbeat, limits, backpressure.
 */
#ifndef DX_WS_WS_H
#define DX_WS_WS_H

#include "core/rcbuf.h"
#include "core/slab.h"
#include "duplex/server.h"
#include "net/loop.h"
#include "net/transport.h"
#include "proto/handshake.h"
#include "proto/http.h"
#include "proto/session.h"
#include "ws/ipcount.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Connection states, in order. */
enum {
    CS_CONNECT = 0, /* client: TCP connect in progress */
    CS_PROXY,   /* client: HTTP CONNECT sent to the proxy, reading its answer */
    CS_TLS,     /* TLS handshake */
    CS_HEAD,    /* reading the HTTP request head (server) or response head (client) */
    CS_HTTP,    /* server: a plain HTTP request's body, its answer, the answer's bytes (http.c) */
    CS_OPEN,    /* WebSocket session running (open, or close sent) */
    CS_DRAIN,   /* last bytes (close frame, HTTP response) being flushed */
    CS_LINGER,  /* FIN sent; reading until the peer's EOF */
    CS_DEAD     /* closed: socket, timer and I/O gone, nothing more delivered;
                   on_close and the free run from the loop's deferred list */
};

enum {
    CF_OPENED = 1u << 0,       /* on_open fired: on_close is owed */
    CF_PING_OUT = 1u << 1,     /* a heartbeat ping awaits its pong */
    CF_DRAIN_ARMED = 1u << 2,  /* queue passed the high-water mark */
    CF_TIMER = 1u << 3,        /* deadline armed: `link` in the loop's connection wheel, due at tick `due` */
    CF_SESSION = 1u << 4,      /* the session was started (dx__conn_opened) */
    CF_WANT_WRITE = 1u << 5,   /* EPOLLOUT registered */
    CF_DEFERRED = 1u << 6,     /* CS_HEAD: on_upgrade deferred, no answer yet (c->upg set) */
    CF_OPEN_PENDING = 1u << 7, /* CS_HEAD: deferred upgrade accepted, on_open not fired yet */
    CF_PAUSED = 1u << 8,       /* CS_OPEN: dx_conn_pause, reading off */
    CF_IPCOUNTED = 1u << 9,    /* counted in the server's per-address table */
    CF_HTTP_IDLE = 1u << 10,   /* CS_HEAD on a kept-alive connection, before the next request's first byte */
    CF_READ_OFF = 1u << 11,    /* EPOLLIN off (an HTTP answer is pending or being sent) */
    CF_READ_HUP = 1u << 12,    /* with CF_READ_OFF: still watch EPOLLRDHUP (the peer leaving) */
    CF_OPEN_OWED = 1u << 13,   /* CS_DEAD: died while CF_OPEN_PENDING; on_open, then on_close, are owed */
};

/* What connections need from whoever owns them, server or client: the
 * loop, the settings and callbacks, the session configuration, counters. */
typedef struct dx__ep {
    dx_loop *loop;
    dx_server_options opt;   /* limits and callbacks (a client fills it from its own options) */
    dx__session_cfg scfg;
    dx_server_stats st;
    dx_list conns;           /* live connections without an armed deadline (the others are in
                                the loop's connection wheel, wsl->wheel) */
    size_t nconns;           /* live connections, wherever they are linked */
    uint64_t next_id;
    struct dx_server *srv;   /* the owner: exactly one of srv and cl is set */
    struct dx_client *cl;
    /* The owner is being freed: no callback fires any more; its dead
     * connections still waiting in the loop's dead list (wsl->dead, reaped
     * from the deferred list) release their memory silently, then `dfree`
     * (queued after the reaper) frees the owner. */
    bool freeing;
    dx__deferred dfree;
    size_t nstreams;         /* of nconns, streamed HTTP answers (http.c): not handshaking */
    struct dx__wsl *wsl;     /* the loop's ws context (set by the first connection) */
    /* The plain HTTP request being answered, while dx__http_serve runs (for
     * the log line of the answer); NULL otherwise. */
    const struct dx_http_request *http_req;
    const struct dx_conn *http_conn;
    /* permessage-deflate: what the endpoint's connections share (zlib
     * settings, memory account, shared streams); NULL when off. */
    dx__pmd_ctx *pmd;
} dx__ep;

/* ---- the send queue -------------------------------------------------------
 *
 * A connection's unsent bytes are a list of segments, each a pointer into
 * memory that something keeps alive, never a private copy of a shared
 * frame. What keeps a segment's bytes alive is in the low bits of `ref`:
 *  SEG_RC     a dx_rcbuf (a dx_msg, or a large private frame): one reference;
 *  SEG_ARENA  the loop's gather arena (ws_loop.c): valid until the loop's
 *             before-sleep flush, which writes or moves every such segment;
 *  SEG_OWN    a dx__own buffer of this connection (bytes the kernel refused):
 *             freed with the segment;
 *  SEG_BORROW the caller's memory, only inside one call: written at once or
 *             moved to SEG_OWN before the call returns.
 * Segments live in fixed-size blocks from the loop's pool, so queueing costs
 * no allocation once the pool is warm, and an idle connection holds none.
 */
enum { SEG_RC = 0, SEG_ARENA = 1, SEG_OWN = 2, SEG_BORROW = 3, SEG_TAG = 3 };

typedef struct dx__seg {
    const uint8_t *p; /* next unsent byte */
    size_t len;       /* unsent bytes */
    uintptr_t ref;    /* owner pointer | SEG_* tag */
} dx__seg;

/* A copy the kernel refused, owned by one segment. */
typedef struct dx__own {
    size_t cap, used;
    uint8_t data[];
} dx__own;

#define DX_WQ_SEGS 19 /* a block is 512 bytes on LP64 */

typedef struct dx__wq dx__wq;
struct dx__wq {
    dx__wq *next;     /* the queue's next block (in the pool: the next free one) */
    /* head block only */
    dx__wq *tail;     /* the last block */
    struct dx_conn *conn;
    dx_list pend;     /* in the loop's gathered list (wsl->pend) while linked */
    size_t len;       /* bytes queued in every block */
    /* every block */
    uint16_t first, n; /* live segments: seg[first .. first + n) */
    dx__seg seg[DX_WQ_SEGS];
};

/* The ws layer's per-loop context (ws_loop.c), hung on the loop with
 * dx__loop_attach: what its connections share on one thread. */
typedef struct dx__chunk dx__chunk;
#define DX_WS_SLABS 4 /* connection sizes with a slab of their own, per loop */
typedef struct dx__wsl {
    dx_loop *loop;
    const dx_seams *seams;
    dx_list pend;          /* head blocks of queues gathered this iteration */
    dx__chunk *chunks;     /* the gather arena: chunks in use order */
    dx__chunk *cur;        /* the chunk being filled */
    size_t nchunks;
    size_t arena_used;     /* chunks used in this pass */
    size_t arena_peak, arena_keep; /* most used in a pass: this period, the last one */
    uint64_t arena_since;  /* loop ms when this period began */
    dx__wq *free;          /* pooled queue blocks */
    size_t nfree, inuse, peak;
    uint8_t *scratch;      /* DX_WS_SCRATCH bytes: masking large client frames */
    uint64_t writes;       /* transport writes made for this loop's connections */
    uint64_t copied;       /* bytes copied into the arena or a backlog (not references) */
    size_t key_pos;
    uint8_t keys[4096];    /* mask keys: one getrandom per 1024 client frames */
    /* Connection deadlines (conn.c): a wheel of DX_WHEEL_SLOTS lists, one
     * per tick like the loop's, holding each armed connection by its
     * `link` in slot due % DX_WHEEL_SLOTS; `tick`, a loop timer, turns it
     * (one slot a tick) while any is armed. A connection needs no timer of
     * its own: its 16-byte link is in this wheel or in its endpoint's list. */
    dx_list wheel[DX_WHEEL_SLOTS];
    /* During a tick: the connections due, fired one at a time (still
     * CF_TIMER until fired); an endpoint's walk finds its own here too. */
    dx_list expired;
    size_t armed;          /* connections in the wheel or expired (CF_TIMER) */
    dx__timer tick;
    /* Dead connections (CS_DEAD) waiting for their on_close and free, by
     * `link`, oldest first; `reap` is queued in the loop's deferred list
     * while any is (conn.c dx__conn_reap). */
    dx_list dead;
    dx__deferred reap;
    /* The loop's connections, one slab per size (a server's conn_ext_size
     * makes its own); a fifth size, or one too large for a slab page,
     * comes from the allocator. */
    dx__slab conns[DX_WS_SLABS];
} dx__wsl;

#define DX_WS_CHUNK (64u * 1024u)   /* one arena chunk */
#define DX_WS_SCRATCH (64u * 1024u) /* the masking scratch buffer */

/* One chunk of the gather arena (ws_loop.c; send.c appends to the current
 * one in its fast path). */
struct dx__chunk {
    dx__chunk *next;
    size_t used;
    uint8_t data[DX_WS_CHUNK];
};

/* A request (or response) head being read during CS_HEAD, when it did not
 * come in one read: cap starts at what arrived (at least 512) and doubles up
 * to max_head; ps keeps the parser's progress, so each byte is examined
 * once. Once open: the peer's close reason if its close frame had one.
 * Allocated only then. */
typedef struct dx__head {
    size_t len, cap;
    dx_http_head ps;
    uint8_t data[];
} dx__head;

typedef struct dx__http dx__http;

/* A connection's rare state: what only a handshake, a plain HTTP request,
 * a pause, a close reason or a subprotocol needs, out of the hot struct so
 * an idle connection does not pay for it. Allocated on first need
 * (dx__conn_cold), freed once all of it is gone (dx__conn_cold_trim: at the
 * end of a head, of a stash, at open) or with the connection. Never cache
 * c->cold across a call that may trim it. */
typedef struct dx__cold {
    dx__head *head;          /* CS_HEAD: the head gathered in pieces; open: the peer's close reason */
    dx__head *stash;         /* bytes read but not yet processed: behind a deferred head, or after a
                                pause from a handler; fed before the socket is read again */
    struct dx_upgrade *upg;  /* the application's handle while CF_DEFERRED */
    dx__http *http;          /* plain HTTP state (http.c), from the first request on */
    char *protocol;          /* the subprotocol agreed on (owned), or NULL */
    uint8_t addr6[16];       /* the peer's address when family is AF_INET6 (kept for life) */
} dx__cold;

/* A rare field of c, NULL when c has no cold block. */
#define DX_COLD(c, f) ((c)->cold ? (c)->cold->f : NULL)

#define WQ_LEN(c) ((c)->wq ? (c)->wq->len : 0u)

/* send.c: the send queue. */
/* Session output: one frame (the session's `put`). */
int dx__conn_put(dx__session *s, int kind, unsigned opcode, bool fin, unsigned rsv, const uint8_t *data,
                 size_t len);
/* One frame out; `frame` (when given) is the whole frame encoded once,
 * queued by reference. 0, DX_ECLOSED, DX_ELIMIT (slow consumer: 1008 sent),
 * DX_ENOMEM, DX_ERANDOM. */
int dx__conn_put_frame(dx_conn *c, int kind, unsigned opcode, bool fin, unsigned rsv, const uint8_t *data,
                       size_t len, dx_rcbuf *frame);
/* Gives the queue back (references released) and leaves the pending list. */
void dx__wq_release(dx_conn *c);
/* After a write: empty queue released (a draining connection sends FIN);
 * what is left moves to the connection's memory and waits for EPOLLOUT.
 * `from_loop`: on_drain may fire. */
int dx__wq_done(dx_conn *c, bool from_loop);

/* ws_loop.c */
/* The loop's ws context, created (and attached) on first use. NULL: DX_ENOMEM. */
dx__wsl *dx__wsl_get(dx_loop *loop);
/* `len` (<= DX_WS_CHUNK) bytes of the gather arena, valid until the next
 * flush before sleep. NULL: DX_ENOMEM. */
uint8_t *dx__wsl_arena(dx__wsl *w, size_t len);
/* A queue block from the pool (fields zeroed), NULL: DX_ENOMEM; back to it.
 * Inline: a reply batch takes one and gives it back per wake-up (the depth-1
 * echo path); the pool's misses and trims are the out-of-line halves. */
#define DX_WS_KEEP_BLOCKS 65536 /* pooled queue blocks kept at most (32 MiB) */
dx__wq *dx__wsl_block_new(dx__wsl *w);
void dx__wsl_unblock_free(dx__wsl *w, dx__wq *b);
/* b, taken from the pool or just allocated, empty and counted in use. */
static inline dx__wq *dx__wsl_block_fresh(dx__wsl *w, dx__wq *b)
{
    b->next = b->tail = NULL;
    b->conn = NULL;
    dx_list_init(&b->pend);
    b->len = 0;
    b->first = b->n = 0;
    if (++w->inuse > w->peak)
        w->peak = w->inuse;
    return b;
}
static inline dx__wq *dx__wsl_block(dx__wsl *w)
{
    dx__wq *b = w->free;
    if (!b)
        return dx__wsl_block_new(w);
    w->free = b->next;
    w->nfree--;
    return dx__wsl_block_fresh(w, b);
}
static inline void dx__wsl_unblock(dx__wsl *w, dx__wq *b)
{
    /* Keep as many as were ever needed at once (at most
     * DX_WS_KEEP_BLOCKS): a fan-out that filled them will again, and its
     * steady state then allocates nothing. */
    if (w->nfree >= w->peak || w->nfree >= DX_WS_KEEP_BLOCKS) {
        dx__wsl_unblock_free(w, b);
        return;
    }
    w->inuse--;
    b->next = w->free;
    w->free = b;
    w->nfree++;
}
/* A connection's memory (`size` bytes, uninitialised, aligned for
 * max_align_t) from the loop's slabs, NULL: DX_ENOMEM; back to them. */
void *dx__wsl_conn_alloc(dx__wsl *w, size_t size);
void dx__wsl_conn_free(dx__wsl *w, void *p);
/* The loop's ws context if it has one (no allocation), else NULL. */
dx__wsl *dx__wsl_find(dx_loop *loop);
/* A fresh 4-byte mask key from the pool (refilled from the seams). */
int dx__wsl_mask_key(dx__wsl *w, uint8_t key[4]);

struct dx_conn {
    dx__session s; /* first: session handlers find the connection. s.cfg is &ep->scfg from
                      creation on (dx__conn_ep: the endpoint needs no pointer of its own);
                      the session itself starts at open (CF_SESSION) */
    dx__io io;
    dx__stream st;
    /* Alive: in a slot of the loop's connection wheel (wsl->wheel) while
     * its deadline is armed (CF_TIMER), else in ep->conns. Dead: in
     * wsl->dead until on_close and the free (conn.c). */
    dx_list link;
    void *user;
    dx__wq *wq;
    dx__cold *cold;          /* rare state, NULL when none (ws.h dx__cold) */
    uint64_t id;
    uint64_t bytes_in, bytes_out;
    uint32_t msgs_in, msgs_out;
    uint32_t last_rx_tick; /* open: the loop tick of the last read (idle timeout); before: of the
                              accept (the handshake deadline counts from it) */
    uint32_t opened_ms;    /* loop->now_ms at open, low 32 bits; with opened_ms_hi, 40 bits (34
                              years): the close line's duration to the millisecond */
    union {
        uint32_t due;      /* alive, CF_TIMER: the loop tick (low 32 bits) the deadline falls on */
        uint16_t code;     /* dead: the close code reported (set as it dies, conn.c conn_mark) */
    };
    uint8_t addr[4]; /* the peer's IPv4 address (v4-mapped ones included); IPv6: cold->addr6 */
    uint16_t port;
    uint8_t family; /* AF_INET, AF_INET6 (then c->cold is never NULL), AF_UNIX */
    uint8_t state;
    uint16_t flags;
    uint8_t opened_ms_hi;  /* bits 32-39 of loop->now_ms at open */
};

/* The connection's endpoint: its session configuration's owner. */
static inline dx__ep *dx__conn_ep(const struct dx_conn *c)
{
    return (dx__ep *)(uintptr_t)((const char *)c->s.cfg - offsetof(dx__ep, scfg));
}

static inline const uint8_t *dx__conn_addr(const struct dx_conn *c)
{
    return c->family == AF_INET6 ? c->cold->addr6 : c->addr;
}

/* The connection's inline user memory starts here (conn_ext_size bytes). */
#define DX__CONN_EXT_OFF ((sizeof(struct dx_conn) + _Alignof(max_align_t) - 1) / _Alignof(max_align_t) * _Alignof(max_align_t))


struct dx_server {
    dx__ep ep;               /* first */
    char *host, *unix_path, *static_root;
    dx__tls_ctx *tls;        /* the loop thread's; replaced by tls_next at the next accept */
    _Atomic(dx__tls_ctx *) tls_next; /* dx_server_reload_tls's new context, from any thread */
    dx__io lio;
    dx__timer accept_timer;
    unsigned port;
    unsigned accept_errors_burst;
    bool shutting_down;
    dx__ipcount ipc;         /* live connections per client address (max_conns_per_ip) */
    dx__timer limit_timer;   /* ends a burst of limit refusals (one log line per burst) */
    uint64_t limit_burst[2]; /* refusals in the current burst: per-IP, handshaking */
    uint64_t limit_fresh[2]; /* refusals since the last tick of limit_timer */
};

/* conn.c */
/* c's cold block, made (zeroed) if it has none; NULL: DX_ENOMEM. */
dx__cold *dx__conn_cold(dx_conn *c);
/* The peer's address: 4 bytes (AF_INET) or 16 (AF_INET6). */
static inline const uint8_t *dx__conn_addr(const struct dx_conn *c);
/* Frees c's cold block if every field of it is NULL (and it holds no IPv6
 * address). */
void dx__conn_cold_trim(dx_conn *c);
/* "a.b.c.d:port" (port < 65536) into t, NUL-terminated; its length. */
size_t dx__ipv4_port(char t[22], const uint8_t a[4], unsigned port);
/* A connection on `fd` owned by `ep`, registered for `events`, starting in
 * `state`, with its first deadline after timeout_ms. NULL on DX_ENOMEM or
 * when epoll refuses (the caller closes fd then). */
dx_conn *dx__conn_open(dx__ep *ep, int fd, const struct sockaddr *sa, int state, uint32_t events,
                       unsigned timeout_ms);
/* The server's TLS context for a new connection (NULL: plain TCP), after
 * taking the one dx_server_reload_tls left, if any. Loop thread. */
dx__tls_ctx *dx__server_tls(dx_server *srv);
/* A server-side connection for an accepted fd (TLS started when configured). */
dx_conn *dx__conn_new(dx_server *srv, int fd, const struct sockaddr *sa, socklen_t salen);
/* Drops the connection (no close frame), reporting `code` if opened. Only
 * marks it: state CS_DEAD, socket closed, out of every loop list, nothing
 * more delivered; on_close (and the client's follow-up) fire from the
 * loop's deferred list once the callback stack has unwound. Never fires a
 * callback itself, so it is safe anywhere (write paths included). */
void dx__conn_abort(dx_conn *c, unsigned code, const char *why);
/* The clean end, now (as LINGER's EOF would): marks c dead, reporting the
 * close codes exchanged; like dx__conn_abort, never fires a callback. */
void dx__conn_finish(dx_conn *c);
/* Queues a copy of bytes in order after whatever is queued (gathered and
 * written before the loop sleeps; a large one is written at once). */
int dx__conn_write(dx_conn *c, const void *data, size_t len);
/* send.c: queues a reference to len bytes at p inside rb (a dx_msg's
 * payload, for a streamed HTTP answer): no copy. 0, DX_ECLOSED, DX_ENOMEM. */
int dx__conn_write_ref(dx_conn *c, dx_rcbuf *rb, const uint8_t *p, size_t len);
/* Writes what `c` gathered (ws_loop.c's flush before sleep). */
void dx__conn_flush(dx_conn *c);
/* Flushes, then FIN, then waits for EOF (bounded by close_timeout_ms). */
void dx__conn_finish_after_flush(dx_conn *c);
/* The owner of `ep` is being freed: sets ep->freeing, drops every live
 * connection without callbacks, and, outside a dispatch, frees at once the
 * dead ones still waiting in the loop's deferred list. Returns true when the
 * owner must defer its own free (the loop is dispatching: queue ep->dfree). */
bool dx__ep_drop_conns(dx__ep *ep);
/* The handshake succeeded: start the session, heartbeat and counters. */
void dx__conn_opened(dx_conn *c);
/* Drives the TLS handshake (client.c starts it after connect/proxy). */
void dx__conn_drive_tls(dx_conn *c);
/* Sets/clears EPOLLOUT interest. */
void dx__conn_want_write(dx_conn *c, bool on);
/* The connection's deadline: fires its timeout handling after about `ms`
 * milliseconds (rounded up to a tick, at least one); re-arming moves it.
 * O(1), no allocation. Stop: no deadline. */
void dx__conn_timer_start(dx_conn *c, uint64_t ms);
void dx__conn_timer_stop(dx_conn *c);
/* ws_loop.c's wheel timer and deferred reaper (conn.c). */
void dx__conn_wheel_tick(dx__timer *t);
void dx__conn_reap(dx_loop *loop, dx__deferred *d);
/* Every live connection of `ep` (parked or in the wheel) moved onto
 * `todo` (initialised here), for a walk that may change any of them; each
 * must go back with dx__conn_put_back (to the wheel slot or list it left)
 * before anything else touches it. */
void dx__ep_take_conns(dx__ep *ep, dx_list *todo);
void dx__conn_put_back(dx_conn *c);

/* msg.c: the frame a dx_msg holds (header then payload), its opcode and
 * header length. */
dx_rcbuf *dx__msg_frame(const dx_msg *m, unsigned *opcode, size_t *hl);
/* msg.c: the message's frame compressed with no context and window `bits`
 * (9-15), RSV1 set, built on first use with ctx's shared compressor and
 * kept with the message (borrowed: valid while the caller holds m; queue it
 * by reference). NULL when it cannot be built (no memory): compress per
 * connection instead. Thread-safe. */
dx_rcbuf *dx__msg_zframe(dx_msg *m, dx__pmd_ctx *ctx, unsigned bits);
/* The message's reference count (tests). */
size_t dx__msg_refs(const dx_msg *m);
/* Header bytes of such a frame. */
size_t dx__msg_zframe_hl(const dx_rcbuf *z);

/* server.c: fills zero options with their defaults. */
void dx__options_defaults(dx_server_options *o);
/* server.c: a server-side connection ends: its per-address count goes. */
void dx__server_conn_gone(dx_conn *c);
/* conn.c: releases what the upgrade/pause hooks hold (stash, deferred
 * handle, per-address count); called once as the connection ends. */
void dx__conn_hooks_release(dx_conn *c);

/* client.c: the client's part of a client-side connection's life. */
void dx__client_io(dx_conn *c, uint32_t events);          /* CS_CONNECT, CS_PROXY */
void dx__client_transport_ready(dx_conn *c);               /* TCP/TLS up: send the request */
void dx__client_response(dx_conn *c, const dx_http_response *resp); /* the 101 (or not) */
void dx__client_conn_marked(dx_conn *c, const char *why);  /* the connection was marked dead (no callback) */
void dx__client_conn_end(dx_conn *c);                      /* from the loop: after its on_close */

/* http.c: the plain HTTP side of a server connection. */
/* A complete request head (not an upgrade) arrived in buf[0..len): take it
 * (copied), then read its body (CS_HTTP) or answer it. */
void dx__http_begin(dx_conn *c, const dx_http_request *req, const char *buf, size_t len);
/* Input while CS_HTTP: returns the bytes taken (body), or keeps the rest for
 * later when the answer is pending (reading is off then). */
size_t dx__http_input(dx_conn *c, const uint8_t *p, size_t n);
/* Readiness while CS_HTTP: returns true when the caller should read. */
bool dx__http_io(dx_conn *c, uint32_t events);
/* True while an answer is being sent (it goes on at EPOLLOUT once the send
 * queue, gathered output included, is empty). */
bool dx__http_sending(const dx_conn *c);
/* Input kept from an earlier read, if any, processed now (keep-alive). */
void dx__http_resume(dx_conn *c);
/* The connection's timer fired while CS_HTTP. */
void dx__http_timeout(dx_conn *c);
/* The connection is going away: releases the HTTP state; a request the
 * application holds is detached (its answer will return DX_ECLOSED). */
void dx__http_conn_gone(dx_conn *c);
/* The server shuts down: a streamed answer on `c` is ended cleanly (last
 * chunk, flush, close); true when it was, false when `c` is no stream. */
bool dx__http_stream_shutdown(dx_conn *c);
/* The loop is being freed: streams whose on_close is still queued are
 * released without it (ws_loop.c's destroy). */
void dx__http_streams_drop(dx_loop *loop);
/* conn.c: after a session call (send.c's dx_conn_send): a session that
 * ended (closed or failed) moves the connection on to DRAIN. */
void dx__conn_after_session(dx_conn *c);
/* conn.c: feeds input to the connection as if just read. */
void dx__conn_process(dx_conn *c, uint8_t *p, size_t n);
/* conn.c: reading on (READ_ON), off but watching the peer leave (READ_HUP),
 * or off (READ_OFF). */
enum { DX__READ_ON, DX__READ_HUP, DX__READ_OFF };
void dx__conn_reading(dx_conn *c, int mode);

/* upgrade.c: the application's decision on a valid upgrade request. */
enum { DX__DECIDE_ACCEPT = 0, DX__DECIDE_REFUSE, DX__DECIDE_DEFER };
typedef struct dx__decision {
    char *protocol;             /* ACCEPT: owned, passed on to the connection */
    void *user;                 /* ACCEPT */
    int status;                 /* REFUSE: 400-599 */
    char *headers;              /* REFUSE: extra header lines or NULL (dx__decision_done frees) */
    struct dx_upgrade *deferred; /* DEFER: the handle, already pointing at the connection */
} dx__decision;
/* Calls on_upgrade (if any) and says what it decided. */
int dx__upgrade_decide(dx_conn *c, const dx_http_request *req, const dx_ws_request *ws, dx__decision *d);
void dx__decision_done(dx_conn *c, dx__decision *d);
/* The connection of a pending handle ended: its answer will get DX_ECLOSED. */
void dx__upgrade_detach(struct dx_upgrade *h);
/* conn.c: acting on a deferred answer. Accept writes the 101 (taking
 * `protocol`) and schedules on_open from the loop; returns 0 or DX_ECLOSED.
 * Refuse answers `status` and closes. Neither fires a callback. */
int dx__conn_upgrade_accept(dx_conn *c, const dx_ws_request *ws, char *protocol, void *user);
void dx__conn_upgrade_refuse(dx_conn *c, int status, const char *headers, const char *why);

/* conn_deflate.c: the server's answer to the request's permessage-deflate
 * offers (RFC 7692 §7) under the endpoint's memory budget: sets c->s.pmd
 * when one is accepted (nothing when none is, or out of memory). */
void dx__conn_negotiate_deflate(dx_conn *c, const dx_ws_request *ws);
/* conn_deflate.c: permessage-deflate. dx__ep_deflate_start makes ep->pmd when
 * opt.deflate.enable is set (0 or DX_ENOMEM); dx__ep_deflate_stats adds its
 * counters to *st. */
int dx__ep_deflate_start(dx__ep *ep);
/* The deflate options are usable: windows 0 or 8-15, level 0-9, mem_level 0-9. */
bool dx__deflate_options_valid(const dx_deflate_options *o);
void dx__ep_deflate_stats(const dx__ep *ep, dx_server_stats *st);

/* conn.c: the session configuration shared by a server's connections. */
void dx__ws_session_cfg(dx__ep *ep, int role);

#endif
