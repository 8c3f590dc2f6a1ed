/*
 * duplex/gateway.h: the pub/sub gateway (GATEWAY.md, docs/gateway.md) on
 * top of the server: topics, the raw and JSON dialects on /ws, SSE on /sse,
 * the HTTP API (/api/...), /metrics, /healthz, /echo, presence, history and
 * resume, across N worker threads, each with its own loop and server.
 *
 * Use (cmd/duplex/serve.c does exactly this):
 *   gw = dx_gateway_new(&opt, nworkers, &err);          any thread
 *   for each worker i, on any thread before its loop runs:
 *       dx_gateway_server_options(gw, i, &server_opt);  fills callbacks and ud
 *       srv = dx_server_new(loop_i, &server_opt, &err);
 *       dx_gateway_attach(gw, i, loop_i, srv);
 *   run the loops; to stop: on each worker's thread dx_gateway_shutdown(gw, i)
 *   (the drain: gateway connections get 1012 "retry=MS" once their queues are
 *   out, SSE streams end), again until it returns 0 or drain_ms passed, then
 *   dx_server_shutdown (the rest: 1001); after every loop returned:
 *   dx_gateway_free(gw), then
 *   the servers, then the loops.
 */
#ifndef DUPLEX_GATEWAY_H
#define DUPLEX_GATEWAY_H

#include "duplex/duplex.h"
#include "duplex/loop.h"
#include "duplex/server.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dx_gateway dx_gateway;

enum dx_gateway_slow_policy {
    DX_GW_SLOW_DISCONNECT = 0, /* close 1013 (default) */
    DX_GW_SLOW_DROP_OLDEST = 1 /* JSON dialect: drop the oldest undelivered, then send `gap`; raw and SSE: disconnect */
};

/* Log sink: the gateway's own lines (handshakes refused, slow consumers,
 * API errors) go through it. NULL: nothing logged. */
typedef void (*dx_gateway_log_fn)(void *ud, int level, const char *msg);

/* JWT authentication at the handshake (GATEWAY.md "Authentication"). At
 * most one of the key sources may be set; none: no JWT auth. */
typedef struct dx_gateway_auth {
    const char *jwt_secret;       /* HS256 shared secret (bytes up to NUL) */
    const char *jwt_public_key;   /* file: PEM public key (RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA) */
    const char *jwks_file;        /* file: JSON Web Key Set; the token's `kid` picks the key */
    const char *audience;         /* NULL: `aud` not checked; else must be (or contain) this */
    const char *issuer;           /* NULL: `iss` not checked; else must equal this */
    unsigned leeway_s;            /* [30] clock skew allowed on exp/nbf; (unsigned)-1 for 0 */
    unsigned refresh_grace_ms;    /* [0: none] time after `exp` during which a `refresh` is still
                                     accepted before the connection is closed with 4001 */
    const char *cookie;           /* NULL: no cookie source; else the cookie holding the token */
    int anonymous;                /* [1 without a key source, 0 with one]: anonymous connections
                                     allowed (set -1 for 0) */
    int anonymous_publish;        /* [1 without a key source, 0 with one] (set -1 for 0) */
} dx_gateway_auth;

/* A named API key (the name appears in logs and metrics, never the key). */
typedef struct dx_gateway_api_key {
    const char *name;
    const char *key;
} dx_gateway_api_key;

/* What to do with a connection publishing (or requesting) faster than its rate. */
enum dx_gateway_rate_policy {
    DX_GW_RATE_PAUSE = 0,  /* stop reading it until tokens are back (TCP backpressure; default) */
    DX_GW_RATE_REFUSE = 1, /* JSON dialect: err 4429 for that request; raw: the message is dropped,
                              counted, and the connection closed with 1008 */
    DX_GW_RATE_CLOSE = 2   /* close 1008 */
};

/* Limits; zero means the default in brackets, (size_t)-1 / (unsigned)-1 / a
 * negative rate means "no limit". Each has a metric (docs/gateway.md). */
typedef struct dx_gateway_limits {
    size_t conns_per_user;        /* [0: none] live gateway connections per authenticated user (this
                                     node; cluster-wide with a shared bus) → HTTP 429 at the handshake */
    size_t conns_per_ip;          /* [1000] live connections per client address (IPv6: /64) → 429 */
    double handshakes_per_ip;     /* [200] per second per client address, token bucket → 429 +
                                     Retry-After */
    double handshake_burst;       /* [= handshakes_per_ip when that is set; 1000 with its default, so
                                     one address may open its 1,000 connections at once] bucket size */
    double msg_rate;              /* [1000] messages per second per connection (token bucket) */
    double msg_burst;             /* [= msg_rate] bucket size */
    int rate_policy;              /* [DX_GW_RATE_PAUSE] over msg_rate */
    size_t max_topic;             /* [200] bytes in a topic name or pattern (≤ 200) → 4400 / 400 */
    size_t max_api_body;          /* [max_message] bytes of an /api/publish body → 413 */
} dx_gateway_limits;

/* Settings of the topics under one prefix (zero: inherit the gateway's). */
typedef struct dx_gateway_namespace {
    const char *prefix;           /* e.g. "chat." ; "" matches every topic */
    size_t history_count;         /* retained messages per topic; (size_t)-1: none */
    uint64_t history_age_ms;      /* UINT64_MAX: no age bound */
    int publish;                  /* clients may publish (1) or not (-1) [1 in open mode, else auth's
                                     anonymous_publish for anonymous and 1 for authenticated] */
    int presence;                 /* presence tracked (1) or not (-1) [1] */
    int slow_policy;              /* DX_GW_SLOW_* + 1 (0: inherit) */
    double msg_rate;              /* per connection per second for publishes into this namespace
                                     (its own bucket per connection, made on first use) [0: none] */
    double msg_burst;             /* [= msg_rate] */
    int rate_policy;              /* DX_GW_RATE_* + 1 (0: inherit limits.rate_policy) */
    size_t max_message;           /* bytes of a message published into it (≤ the gateway's) */
} dx_gateway_namespace;

/* Settings; zero means the default in brackets. Grows only at its end. */
typedef struct dx_gateway_options {
    const char *api_key;          /* Bearer key for /api/...; NULL: those answer 403 */
    size_t history_count;         /* [1000] retained messages per topic; (size_t)-1: none */
    uint64_t history_age_ms;      /* [600000] retained for at most; UINT64_MAX: no age bound */
    int slow_policy;              /* [DX_GW_SLOW_DISCONNECT] */
    size_t sub_queue;             /* [1 MiB] queued bytes past which a subscriber is slow */
    size_t max_subs;              /* [100] subscriptions per connection → err 4413 */
    size_t max_message;           /* [1 MiB] the server's max_message (API bodies, JSON requests) */
    unsigned sse_heartbeat_ms;    /* [15000] comment line on an idle SSE stream */
    unsigned max_inflight;        /* [256] publishes per connection awaiting sequencing before
                                     its reading pauses */
    int demo;                     /* publish on demo.ticker every demo_interval_ms */
    unsigned demo_interval_ms;    /* [1000] */
    dx_gateway_log_fn log;
    void *log_ud;

    /* ---- policy (issue 10; docs/configuration.md, docs/security.md) ----
     * Everything below is reloadable with dx_gateway_reload. */
    dx_gateway_auth auth;
    const dx_gateway_api_key *api_keys; /* several named keys for /api/...; api_key above, when set,
                                           is one more, named "default" */
    size_t n_api_keys;
    const char *api_keys_file;    /* NULL or a file of "name key" lines, re-read on reload */
    /* Origin: requests whose Origin header is in this list (exact, or a
     * wildcard whose host is "*.example.com" after the scheme: any subdomain,
     * one or more labels, never the bare domain; scheme and port must match;
     * case-insensitive)
     * are allowed. Empty list: Origin must match Host (default ports
     * equivalent). Anything else → 403. */
    const char *const *origins;
    size_t n_origins;
    int allow_no_origin;          /* [1] requests without Origin (non-browser clients); 0 → 403;
                                     set -1 for 0 (zero means the default) */
    dx_gateway_limits limits;
    /* Namespaces, keyed by topic prefix; the longest matching prefix wins;
     * a topic no prefix matches uses the gateway-wide settings above. */
    const dx_gateway_namespace *namespaces;
    size_t n_namespaces;
    unsigned drain_ms;            /* [10000] on dx_gateway_shutdown: time given to queued messages to
                                     flush before connections are closed */
    unsigned reconnect_hint_ms;   /* [2000] the retry delay put in the 1012 close reason ("retry=MS"),
                                     clients add jitter (duplex.js: up to 2x) */

    /* ---- cluster (issue 11; docs/gateway.md "The Redis bus"): read by
     * dx_gateway_new only, not reloadable ---- */
    const char *redis_url;        /* NULL: the in-process bus; else redis://[user:pass@]host:port/db,
                                     rediss://... (TLS) or unix:///path: every node with the same URL
                                     acts as one gateway */
    size_t redis_pending_max;     /* [64 MiB] payload bytes of publishes awaiting Redis; past it → 503 */
    int redis_cluster;            /* [0] nonzero: redis_url names seed nodes of a Redis Cluster (Redis 7):
                                     topics routed by hash slot, sharded pub/sub */
    unsigned presence_ttl_ms;     /* [15000] Redis bus: a dead node's presence and user counts expire
                                     within this */
    const char *redis_tls_ca;     /* rediss://: PEM CA file the server's certificate must chain to
                                     (NULL: the system store) */
    const char *redis_tls_cert;   /* rediss://: PEM client certificate (Redis tls-auth-clients) and */
    const char *redis_tls_key;    /* its PEM key: both or neither */
} dx_gateway_options;

#define dx_gateway_new(opt, workers, err) dx_gateway_new_sized((opt), sizeof(dx_gateway_options), (workers), (err))
DX_API dx_gateway *dx_gateway_new_sized(const dx_gateway_options *opt, size_t opt_size, unsigned workers,
                                        int *err);

/* Sets so->cb, so->ud (and the gateway's needs, e.g. max_message) for worker i's server. */
DX_API int dx_gateway_server_options(dx_gateway *gw, unsigned i, dx_server_options *so);

/* Worker i runs on `loop` with server `srv`. Before the loop runs. */
DX_API int dx_gateway_attach(dx_gateway *gw, unsigned i, dx_loop *loop, dx_server *srv);

/* On worker i's thread. The first call starts the drain: /healthz answers
 * 503 "draining", new /ws and /sse requests 503, held handshakes are refused
 * 503, SSE streams get "retry: MS" and end, the demo publisher stops, and
 * each WebSocket connection is closed with 1012 "retry=MS"
 * (reconnect_hint_ms) once its queue is out, all of them by drain_ms. Every
 * call returns the gateway connections not yet gone (call it again, e.g.
 * from a timer, until 0 or drain_ms, then dx_server_shutdown). Fires no
 * callback. */
DX_API size_t dx_gateway_shutdown(dx_gateway *gw, unsigned i);

/* Replaces the policy part of the settings (auth and its key files, API
 * keys, origins, limits, namespaces, drain) with `opt`'s, from any thread,
 * without touching a connection: connections already open keep their
 * authentication; new handshakes and requests see the new policy once each
 * worker has taken it (within one loop iteration). Files named by `opt` are
 * read during the call. Returns 0, or DX_EINVAL with a one-line reason in
 * why[0..why_len) (the old policy stays). */
DX_API int dx_gateway_reload_sized(dx_gateway *gw, const dx_gateway_options *opt, size_t opt_size, char *why,
                                   size_t why_len);
#define dx_gateway_reload(gw, opt, why, why_len) \
    dx_gateway_reload_sized((gw), (opt), sizeof(dx_gateway_options), (why), (why_len))

/* After every worker loop has returned. */
DX_API void dx_gateway_free(dx_gateway *gw);

#ifdef __cplusplus
}
#endif

#endif
