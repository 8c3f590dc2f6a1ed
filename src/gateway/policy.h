/*
 * src/gateway/policy.h: the gateway's policy snapshot: authentication,
 * API keys, origins, limits, namespaces, drain (include/duplex/gateway.h,
 * docs/configuration.md, docs/security.md).
 *
 * A gw_policy is built from dx_gateway_options by gw_policy_new (strings
 * and arrays deep-copied, files read, defaults resolved) and never changes
 * afterwards; it is reference-counted (atomic). The gateway holds the
 * current one in gw->pol (swapped under gw->pol_mu by dx_gateway_reload);
 * each worker holds its own reference in k->pol, taken on its own thread
 * (gw_policy_take) when the reload posts to it, so a worker reads k->pol
 * without a lock and sees one consistent policy per event. A connection
 * that needs its handshake's policy later keeps a reference of its own.
 */
#ifndef DX_GATEWAY_POLICY_H
#define DX_GATEWAY_POLICY_H

#include "duplex/gateway.h"
#include "gateway/jwt.h"
#include "gateway/limits.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct gw_api_key {
    char *name;
    char *key;
    size_t len;
} gw_api_key;

typedef struct gw_policy {
    atomic_size_t refs;
    char **owned; /* every string copied into this snapshot */
    size_t nowned, capowned;

    /* ---- auth (helper C) ---- */
    dx_gateway_auth auth;        /* strings point into owned */
    bool jwt;                    /* a key source is configured */
    gw_api_key *api_keys;        /* o.api_key as "default", then o.api_keys, then api_keys_file's */
    size_t n_api_keys;
    struct dx__jwt_keys *keys;   /* jwt: the key set (auth.c, jwt.h), files read at build */
    dx__jwt_rules rules;         /* audience, issuer, leeway resolved */
    bool anonymous;              /* connections without a token allowed */
    bool anonymous_publish;      /* ... and may publish */
    uint64_t grace_ms;           /* auth.refresh_grace_ms */

    /* ---- origins, limits, namespaces, drain (helper E) ---- */
    gw_limits_cfg *lim;          /* limits.h: origins parsed, limits resolved, namespaces sorted */
} gw_policy;

/* Builds a snapshot of o's policy fields. NULL on failure with a one-line
 * reason in why (DX_ENOMEM: "out of memory"). */
gw_policy *gw_policy_new(const dx_gateway_options *o, char *why, size_t why_len);
gw_policy *gw_policy_ref(gw_policy *p);
void gw_policy_unref(gw_policy *p);

/* A copy of s owned by p (NULL for NULL); NULL with errno ENOMEM. */
char *gw_policy_strdup(gw_policy *p, const char *s);

/* The API key matching [key, key+len) (constant time over every key), or NULL. */
const gw_api_key *gw_policy_api_key(const gw_policy *p, const char *key, size_t len);

#endif
