/*
 * src/bus/redis.h: the Redis bus (bus.h) for several `duplex serve` nodes
 * sharing one Redis: offsets, history (Redis Streams), epochs and presence
 * live in Redis; live messages travel by Redis pub/sub. docs/gateway.md,
 * "The Redis bus", has the keys, the scripts and the fault behaviour.
 *
 * Driven by each worker's own loop through our own Redis connections
 * (redis_io.h: dx_watch, TLS for rediss://, hiredis's reply parser and
 * command formatter): no thread of its own, no blocking call on a loop (the
 * host name is resolved and the TLS files are loaded once, when the bus is
 * made).
 */
#ifndef DX_BUS_REDIS_H
#define DX_BUS_REDIS_H

#include "bus/bus.h"

#include <stdbool.h>
#include <stddef.h>

/* A parsed Redis URL:
 *   redis://[[user]:pass@]host[:port][/db]   (host: a name, IPv4, or [IPv6])
 *   rediss://...                             (TLS: the certificate must match host)
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

/* Formats a one-line reason into why (when given); returns DX_EINVAL. */
int dx__redis_why(char *why, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Parses url into *out. 0, or DX_EINVAL with a one-line reason in why. */
int dx__redis_url_parse(const char *url, dx__redis_url *out, char *why, size_t why_len);

/* Client-side sharding: at most this many servers in the URL list. */
#define DX__REDIS_SHARDS_MAX 16
/* Points per server on the hash ring (consistent hashing of topic names). */
#define DX__REDIS_RING_POINTS 128
/* Redis Cluster: MOVED/ASK redirections followed per command before it fails. */
#define DX__REDIS_REDIRECTS_MAX 5
/* Redis Cluster: the slot map is read again at most this often (ms). */
#define DX__REDIS_MAP_MIN_MS 200

typedef void (*dx__bus_log_fn)(void *ud, int level, const char *msg);

typedef struct dx__bus_redis_opts {
    unsigned workers;            /* N >= 1 */
    bool cluster;                /* the URLs are seed nodes of a Redis Cluster (Redis 7): topics
                                    routed by slot, sharded pub/sub (SSUBSCRIBE/SPUBLISH) */
    const char *url;             /* see dx__redis_url; several, separated by commas (at most
                                    DX__REDIS_SHARDS_MAX): client-side sharding, each topic on one
                                    server (consistent hashing). Every node lists the same servers
                                    in the same order. */
    const char *tls_ca;          /* rediss://: PEM CA file the server's certificate must chain to
                                    (NULL: the system store) */
    const char *tls_cert;        /* rediss://: a PEM client certificate (Redis tls-auth-clients), */
    const char *tls_key;         /* and its PEM key: both or neither */
    dx__gw_log_opts history;     /* per topic: the stream's MAXLEN and MINID age */
    size_t pending_max;          /* [64 MiB] payload bytes of publishes awaiting Redis; past it a
                                    publish is refused at once (the gateway answers 503) */
    unsigned presence_ttl_ms;    /* [15000] a node's presence and user counts expire this long after
                                    its last refresh (refreshed every third of it) */
    unsigned connect_timeout_ms; /* [3000] connect, and a PING unanswered this long: reconnect */
    dx__bus_log_fn log;          /* NULL: silent */
    void *log_ud;
} dx__bus_redis_opts;

/* NULL with *err: DX_EINVAL (bad options or URL; `why` says why), DX_ETLS
 * (rediss://: the CA file, client certificate or key unusable), DX_EADDR
 * (the host does not resolve), DX_ENOMEM. Nothing connects until a worker
 * attaches. */
dx__bus *dx__bus_redis_new(const dx__bus_redis_opts *o, int *err, char *why, size_t why_len);

/* ---- the pieces (redis_lua.c; the connections: redis_io.h) ---------------- */

/* The scripts, by use; redis_lua.c documents each one's keys and arguments. */
enum {
    DX__REDIS_LUA_PUB = 0, /* one publish: sequence, append, trim, PUBLISH */
    DX__REDIS_LUA_READ,    /* offset, epoch, resume snapshot or history; then a barrier */
    DX__REDIS_LUA_PRES,    /* presence: write one worker's entry, or read all live ones */
    DX__REDIS_LUA_UC,      /* connections per user, cluster-wide */
    DX__REDIS_LUA_N
};
extern const char *const dx__redis_lua[DX__REDIS_LUA_N];

#endif
