/*
 * src/bus/redis.h: the Redis bus (bus.h) for several `duplex serve` nodes
 * sharing one Redis: offsets, history (Redis Streams), epochs and presence
 * live in Redis; live messages travel by Redis pub/sub. docs/gateway.md,
 * "The Redis bus", has the keys, the scripts and the fault behaviour.
 *
 * Driven by each worker's own loop through hiredis's async API (an adapter
 * on dx_watch and dx_timer): no thread of its own, no blocking call on a
 * loop (the host name is resolved once, when the bus is made).
 */
#ifndef DX_BUS_REDIS_H
#define DX_BUS_REDIS_H

#include "bus/bus.h"

#include <stdbool.h>
#include <stddef.h>

/* A parsed Redis URL:
 *   redis://[[user]:pass@]host[:port][/db]   (host: a name, IPv4, or [IPv6])
 *   rediss://...                             (TLS: parsed, refused by this build)
 *   unix:///path/to/socket[?db=N&user=U&password=P]
 * user and pass are percent-decoded. */
typedef struct dx__redis_url {
    bool tls;
    bool unix_socket;
    char host[256];   /* TCP: the host as written (brackets removed) */
    int port;         /* [6379] */
    char path[108];   /* unix: the socket path */
    char user[128];   /* "" : none (AUTH pass only) */
    char pass[256];   /* "" : no AUTH */
    int db;           /* [0] */
} dx__redis_url;

/* Parses url into *out. 0, or DX_EINVAL with a one-line reason in why. */
int dx__redis_url_parse(const char *url, dx__redis_url *out, char *why, size_t why_len);

typedef void (*dx__bus_log_fn)(void *ud, int level, const char *msg);

typedef struct dx__bus_redis_opts {
    unsigned workers;            /* N >= 1 */
    const char *url;             /* see dx__redis_url */
    dx__gw_log_opts history;     /* per topic: the stream's MAXLEN and MINID age */
    size_t pending_max;          /* [64 MiB] payload bytes of publishes awaiting Redis; past it a
                                    publish is refused at once (the gateway answers 503) */
    unsigned presence_ttl_ms;    /* [15000] a node's presence and user counts expire this long after
                                    its last refresh (refreshed every third of it) */
    unsigned connect_timeout_ms; /* [3000] connect, and a PING unanswered this long: reconnect */
    dx__bus_log_fn log;          /* NULL: silent */
    void *log_ud;
} dx__bus_redis_opts;

/* NULL with *err: DX_EINVAL (bad options or URL; `why` says why), DX_EADDR
 * (the host does not resolve), DX_ENOMEM. Nothing connects until a worker
 * attaches. */
dx__bus *dx__bus_redis_new(const dx__bus_redis_opts *o, int *err, char *why, size_t why_len);

#endif
