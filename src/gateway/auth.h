/*
 * src/gateway/auth.h: "who is this" for the gateway (docs/gateway.md
 * "Authentication"): the token of a handshake (/ws, /sse) from its sources,
 * verified with the policy's keys (jwt.h); the connection's user and
 * claims; the per-worker expiry queue that closes connections whose token
 * ran out (4001) unless refreshed; the refusal counters.
 *
 * Everything here runs on the worker's thread and reads k->pol.
 */
#ifndef DX_GATEWAY_AUTH_H
#define DX_GATEWAY_AUTH_H

#include "gateway/jwt.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct gw_worker gw_worker;
typedef struct gw_conn gw_conn;
typedef struct gw_policy gw_policy;
typedef struct dx_request dx_request;

/* Refusal reasons (duplex_auth_refused_total{reason}): the JWT errors
 * (dx__jwt_reason) then these. */
enum {
    GW_AUTH_R_MISSING = DX__JWT_NERR, /* a token source present but empty */
    GW_AUTH_R_ANONYMOUS,              /* no token, anonymous access off (403) */
    GW_AUTH_R_SUB,                    /* sub not usable in user:<sub>, or a bad pattern in a claim */
    GW_AUTH_NREASON
};
const char *gw_auth_reason(int r);

/* Where a handshake's token may be: borrowed pointers, NULL when absent. */
typedef struct gw_auth_req {
    const char *authz;     /* Authorization header */
    size_t authz_len;
    const char *cookie;    /* Cookie header */
    size_t cookie_len;
    const char *query;     /* the query string (?token=) */
    size_t query_len;
    const char *proto;     /* the JWT of an offered "token.<jwt>" subprotocol */
    size_t proto_len;
    const char *remote;    /* for the log line */
    const char *what;      /* "/ws", "/sse" */
} gw_auth_req;

/* The auth part of a policy snapshot, built by gw_policy_new from p->auth
 * (already copied): the key set (files read now), rules, anonymous settings. 0 or DX_EINVAL/DX_ENOMEM
 * with a reason in why. gw_auth_policy_free releases what it built. */
int gw_auth_policy_init(gw_policy *p, char *why, size_t why_len);
void gw_auth_policy_free(gw_policy *p);

/* Decides a handshake: 0 (authenticated: *claims set, the caller owns it;
 * or anonymous allowed: *claims NULL), 401 (bad, expired or empty token)
 * or 403 (no token and anonymous access off). Logs the refusal (never the
 * token) and counts it. */
int gw_auth_handshake(gw_worker *k, const gw_auth_req *r, dx__jwt_claims **claims);

/* on_upgrade's part: the request's token sources (Authorization, Cookie,
 * ?token=, an offered "token.<jwt>" subprotocol) through
 * gw_auth_handshake. 0 (go on, *claims as there), or what on_upgrade
 * returns: a 401 is answered here with WWW-Authenticate (a deferred
 * refusal: DX_UPGRADE_DEFER), a 403 or 503 is returned as is. */
int gw_auth_upgrade(gw_worker *k, dx_request *req, dx__jwt_claims **claims);

/* "user:<sub>" into buf (DX__GW_TOPIC_MAX + 1 bytes: sub was checked at
 * verification); its length. */
size_t gw_auth_user_topic(const dx__jwt_claims *c, char *buf);

/* A raw or SSE subscribe list: an authenticated g's user: topic (written
 * to buf, as above) is appended to names/lens[0..n) unless listed already
 * (the arrays have room for one more). Returns the new count. */
size_t gw_auth_list_user_topic(const gw_conn *g, char *buf, const char **names, size_t *lens, size_t n);

/* The header line sent with a 401. */
#define GW_AUTH_401_HEADERS "WWW-Authenticate: Bearer realm=\"duplex\", error=\"invalid_token\"\r\n"

/* g authenticates as claims (owned by g from now on): g->user set, the
 * expiry queued. 0 or DX_ENOMEM (claims freed). */
int gw_auth_attach(gw_conn *g, dx__jwt_claims *claims);

/* The JSON dialect's refresh: 0 (g's expiry and claims replaced) or an err
 * code (4401) with a reason. */
int gw_auth_refresh(gw_conn *g, const char *token, size_t len, const char **reason);

/* g is gone: out of the expiry queue, claims freed. Idempotent. */
void gw_auth_detach(gw_conn *g);

/* Every second on the worker: closes (4001) the connections whose token
 * expired past the grace, O(expired). */
void gw_auth_tick(gw_worker *k);
void gw_auth_worker_free(gw_worker *k);

/* One /api/ request authenticated with the key named `name` (metrics). */
void gw_auth_count_key(gw_worker *k, const char *name);

/* Wall clock, seconds and milliseconds since the epoch. */
int64_t gw_auth_now_ms(void);

#endif
