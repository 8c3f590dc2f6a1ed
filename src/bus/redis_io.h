/*
 * src/bus/redis_io.h: one asynchronous connection to Redis on a dx_loop
 * (the Redis bus's transport, in place of hiredis's async API): TCP or a
 * Unix socket, TLS through src/net's transport (rediss://), commands encoded
 * with hiredis's formatter, replies parsed with hiredis's redisReader and
 * handed to a FIFO of callbacks, or (pub/sub) to one push handler.
 *
 * All on the loop's thread. No thread, no blocking call: the address is
 * numeric (resolved by the caller), connect and the TLS handshake are
 * driven by a dx_watch. Bounded: bytes queued for Redis (out_max), one
 * reply's bytes (reply_max) and elements of one array (elements_max); a
 * command past out_max is refused, a reply past its limits drops the
 * connection with a reason.
 *
 * Lifetime: the owner frees with dx__rio_free, at any time, including from
 * inside any of its callbacks (the memory goes once the callback stack has
 * unwound). The connection lost (connect refused, TLS handshake failed, the
 * peer closed, a read or write failed, a protocol error, a limit): first
 * every pending callback gets reply NULL, oldest first, then on_disconnect
 * once with the reason; the connection is then dead (commands DX_EIO) but
 * stays allocated until freed. dx__rio_free also calls the pending callbacks
 * with NULL (not on_disconnect); after it returns, nothing is ever called.
 */
#ifndef DX_BUS_REDIS_IO_H
#define DX_BUS_REDIS_IO_H

#include "duplex/loop.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct dx__rio dx__rio;
struct dx__tls_ctx;

/* A reply (a redisReply *, borrowed until the callback returns; NULL when
 * the connection went before it came). */
typedef void dx__rio_fn(dx__rio *io, void *reply, void *privdata);

/* Limits' defaults (0 in dx__rio_opts). */
#define DX__RIO_OUT_MAX ((size_t)256 << 20)     /* bytes of commands not yet written */
#define DX__RIO_REPLY_MAX ((size_t)512 << 20)   /* bytes of one reply on the wire */
#define DX__RIO_ELEMENTS_MAX (16u << 20)        /* elements of one array (nested ones each) */

typedef struct dx__rio_opts {
    const dx_seams *seams;       /* our allocations (NULL: the default; hiredis's reader and
                                    formatter use malloc); must outlive the connection */
    const char *addr;            /* TCP: a numeric IPv4 or IPv6 address (no DNS here) */
    int port;                    /* TCP */
    const char *unix_path;       /* non-NULL: a Unix socket instead of TCP */
    struct dx__tls_ctx *tls;     /* non-NULL: TLS (a client context, dx__tls_client_ctx_new;
                                    borrowed: it must outlive the connection) */
    const char *tls_host;        /* TLS: SNI and the name (or IP) the certificate must match */
    size_t out_max;              /* [DX__RIO_OUT_MAX] */
    size_t reply_max;            /* [DX__RIO_REPLY_MAX] */
    unsigned elements_max;       /* [DX__RIO_ELEMENTS_MAX] */
    /* Connected (the TLS handshake done). May be NULL. */
    void (*on_connect)(dx__rio *io, void *ud);
    /* Lost, once (see above); `why` is one line, borrowed. */
    void (*on_disconnect)(dx__rio *io, const char *why, void *ud);
    /* After every batch of events on the socket (the callbacks it ran),
     * even when the connection was freed meanwhile. May be NULL. */
    void (*after)(void *ud);
    void *ud;
} dx__rio_opts;

/* Starts connecting; the events come from `loop`. NULL with *err:
 * DX_EINVAL (bad address or path: `why` says), DX_ENOMEM, DX_ETLS, or
 * dx_watch_new's error. A connect refused at once is not an error here: it
 * comes as on_disconnect from the loop. Fires no callback. */
dx__rio *dx__rio_new(dx_loop *loop, const dx__rio_opts *o, int *err, char *why, size_t why_len);

/* Frees io (NULL ignored): pending callbacks get NULL now, nothing after. */
void dx__rio_free(dx__rio *io);

/* Queues one command (argv, lens as redisFormatCommandArgv); `fn(io, reply,
 * pd)` gets its reply (fn NULL: the reply is dropped). SUBSCRIBE,
 * PSUBSCRIBE, SSUBSCRIBE and their UN- forms are the pub/sub commands: they
 * take no place in the FIFO, and one with fn puts the connection in pub/sub
 * mode with (fn, pd) as its push handler (below). Queued commands may be
 * written before the connection is up. 0, DX_EIO (the connection is dead
 * or freed), DX_ELIMIT (out_max would be passed), DX_ENOMEM. Fires no
 * callback. */
int dx__rio_argv(dx__rio *io, dx__rio_fn *fn, void *pd, int argc, const char **argv, const size_t *lens);

/* The same with hiredis's printf-like format (redisvFormatCommand: %s, %b
 * with a length, %d ...). */
int dx__rio_fmt(dx__rio *io, dx__rio_fn *fn, void *pd, const char *fmt, ...);

/* Pub/sub mode with push handler fn(io, reply, pd): an array reply whose
 * first element is one of message, pmessage, smessage, subscribe,
 * unsubscribe, psubscribe, punsubscribe, ssubscribe, sunsubscribe goes to
 * it; so does any reply while no callback waits. Other replies (AUTH's,
 * SELECT's, an error) answer the FIFO's oldest command as usual. The push
 * handler is not called with NULL. */
void dx__rio_set_push(dx__rio *io, dx__rio_fn *fn, void *pd);

/* True once connected (and the TLS handshake done), until lost. */
bool dx__rio_up(const dx__rio *io);

/* Commands waiting for their reply; bytes not yet written. */
size_t dx__rio_pending(const dx__rio *io);
size_t dx__rio_queued_bytes(const dx__rio *io);

#endif
