/*
 * src/gateway/limits.h: the gateway's abuse limits and per-prefix
 * settings (issue 10, docs/security.md): token buckets, the bounded
 * per-address handshake-rate table, live connections per address and per
 * user, the Origin allow-list, and the namespace table (longest prefix).
 *
 * Layer: gateway; uses core and ws/ipcount only, no loop and no socket:
 * every function takes the time as an argument, so tests drive it with a
 * fake clock.
 *
 * Two kinds of state:
 *  - gw_limits_cfg: immutable, built from dx_gateway_options by
 *    gw_limits_cfg_new (strings deep-copied, defaults resolved), shared by
 *    every worker; replaced whole on reload (it belongs in gw_policy);
 *  - gw_counts: live counters shared by every worker (connections per
 *    address and per user, the handshake buckets), behind one mutex taken
 *    only at handshakes and at the end of a connection, never per message.
 */
#ifndef DX_GATEWAY_LIMITS_H
#define DX_GATEWAY_LIMITS_H

#include "duplex/gateway.h"
#include "ws/ipcount.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- token bucket ---------------------------------------------------------- */

/* `tokens` refill at `rate` per second up to `burst`, computed from the
 * time given at each take (no timer). */
typedef struct gw_bucket {
    double tokens;
    uint64_t last_ns;
} gw_bucket;

/* A full bucket at now_ns. */
void gw_bucket_init(gw_bucket *b, double burst, uint64_t now_ns);

/* Refills up to now_ns, then takes one token: true. Without a whole token:
 * false, nothing taken, and *wait_ns (when not NULL) gets the time until
 * one is back. rate <= 0: no limit (always true). */
bool gw_bucket_take(gw_bucket *b, double rate, double burst, uint64_t now_ns, uint64_t *wait_ns);

/* Takes one token even without one (a message already read): the bucket
 * goes into debt, at most one burst deep. Returns the time until a whole
 * token is back (0: one is there). */
uint64_t gw_bucket_force(gw_bucket *b, double rate, double burst, uint64_t now_ns);

/* ---- client addresses ------------------------------------------------------- */

/* The key of a remote address as the server spells it ("1.2.3.4:5678",
 * "[2001:db8::1]:5678"): IPv4 whole, IPv6 by its /64. False for "unix"
 * and anything unparsable (those are not counted). */
bool gw_addr_key(const char *remote, int *family, uint64_t *key);

/* ---- handshakes per second per address ------------------------------------------ */

/* A set-associative table of token buckets keyed by address: `cap` slots
 * (rounded up to a multiple of the 8 ways), never more, so a flood from
 * spoofed or rotating addresses costs a bounded amount of memory. A new
 * address takes, in its set, a free slot, else a slot whose bucket has
 * refilled to full (forgetting it loses nothing), else the least recently
 * used one (counted in `evictions`: that address starts again full). */
typedef struct gw_hs_slot gw_hs_slot;
typedef struct gw_hstable {
    gw_hs_slot *slots;
    size_t nsets;        /* a power of two */
    uint64_t seed;
    uint64_t evictions;  /* a live bucket forgotten for a new address */
    size_t used;
} gw_hstable;

#define GW_HS_WAYS 8

/* 0, DX_ENOMEM. cap 0: 65536 slots. */
int gw_hstable_init(gw_hstable *t, size_t cap, uint64_t seed);
void gw_hstable_deinit(gw_hstable *t);
/* One handshake from (family, key) at now_ns: true when allowed; else
 * *retry_s (when not NULL) gets the whole seconds to wait (at least 1). */
bool gw_hstable_take(gw_hstable *t, int family, uint64_t key, double rate, double burst, uint64_t now_ns,
                     unsigned *retry_s);

/* ---- live connections per user ----------------------------------------------------- */

typedef struct gw_user_ent gw_user_ent;
typedef struct gw_users {
    gw_user_ent **b;     /* chains */
    size_t nb;           /* a power of two, or 0 */
    size_t n;            /* users with a live connection */
    uint64_t seed;
} gw_users;

/* Adds a connection of user (len bytes) unless it has `limit` or more
 * (limit 0: none): 0, DX_ELIMIT, DX_ENOMEM. */
int gw_users_add(gw_users *u, const char *user, size_t len, size_t limit);
void gw_users_remove(gw_users *u, const char *user, size_t len);
size_t gw_users_get(const gw_users *u, const char *user, size_t len);
void gw_users_deinit(gw_users *u);

/* ---- the gateway's shared counters ------------------------------------------------ */

typedef struct gw_counts {
    pthread_mutex_t mu;
    dx__ipcount ip;      /* live gateway connections per address */
    gw_users users;      /* live gateway connections per authenticated user */
    gw_hstable hs;       /* handshake buckets */
} gw_counts;

int gw_counts_init(gw_counts *c, size_t hs_cap);
void gw_counts_deinit(gw_counts *c);

/* ---- origins ----------------------------------------------------------------------- */

/* One allowed origin: scheme, host (lowercase; for a wildcard, the part
 * after "*.", with its leading dot), port (the scheme's default filled in). */
typedef struct gw_origin {
    char *scheme;
    char *host;
    unsigned port;
    bool wildcard;
} gw_origin;

/* Parses an Origin value (scheme "://" host [":" port], an optional
 * trailing "/"; no userinfo, path, query or fragment) into lowercase
 * scheme and host, NUL-terminated in the caller's buffers; *port gets the
 * port, or the scheme's default (http/ws 80, https/wss 443, else 0).
 * False when it is not one (e.g. "null") or does not fit. */
bool gw_origin_parse(const char *s, size_t len, char *scheme, size_t scap, char *host, size_t hcap, unsigned *port);

/* ---- namespaces ------------------------------------------------------------------------- */

/* A namespace resolved from the policy fields alone (a reload passes
 * those only): what it inherits from the gateway's other settings
 * (history, slow policy, max_message) is marked and resolved at use. */
typedef struct gw_nspace {
    char *prefix;
    size_t plen;
    bool history_set;       /* else the gateway's history bounds */
    size_t history_count;   /* 0: none */
    bool age_set;
    uint64_t history_age_ms; /* 0: no bound */
    bool publish;           /* clients may publish (before authentication's own rules) */
    bool presence;
    int slow_policy;        /* DX_GW_SLOW_*, -1: the gateway's */
    double msg_rate;        /* 0: no own bucket */
    double msg_burst;
    int rate_policy;        /* DX_GW_RATE_* */
    size_t max_message;     /* 0: the gateway's */
    size_t parent;          /* the longest other prefix of `prefix`, or (size_t)-1 */
    size_t index;           /* in the caller's order (dx_gateway_options.namespaces) */
} gw_nspace;

/* ---- the immutable configuration ---------------------------------------------------- */

typedef struct gw_limits_cfg {
    gw_origin *origins;
    size_t norigins;
    bool allow_no_origin;
    /* resolved limits: SIZE_MAX / a rate <= 0 for none */
    size_t conns_per_user;
    size_t conns_per_ip;
    double handshakes_per_ip, handshake_burst;
    double msg_rate, msg_burst;
    int rate_policy;
    size_t max_topic;
    size_t max_api_body;     /* 0: the gateway's max_message */
    unsigned drain_ms;
    unsigned reconnect_hint_ms;
    gw_nspace *ns;          /* sorted by prefix (bytewise) */
    size_t nns;
} gw_limits_cfg;

/* Builds the configuration from opt's policy fields (origins onwards;
 * max_message, when set, bounds the namespaces' own). NULL with a one-line
 * reason in why and *err (DX_EINVAL: a bad origin or namespace; DX_ENOMEM). */
gw_limits_cfg *gw_limits_cfg_new(const dx_gateway_options *opt, char *why, size_t why_len, int *err);
void gw_limits_cfg_free(gw_limits_cfg *c);

/* May a request with this Origin (NULL: none) and Host proceed? With an
 * allow-list, the origin must be in it; without one, it must name Host
 * (gw_policy_origin). */
bool gw_limits_origin_ok(const gw_limits_cfg *c, const char *origin, size_t olen, const char *host, size_t hlen);

/* The namespace of a topic (the longest prefix), or NULL. O(log n + depth). */
const gw_nspace *gw_limits_ns(const gw_limits_cfg *c, const char *topic, size_t len);

/* Per-connection namespace buckets: a small array made on first use. */
typedef struct gw_ns_bucket {
    size_t ns;              /* gw_ns.index */
    gw_bucket b;
} gw_ns_bucket;

#endif
