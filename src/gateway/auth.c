/*
 * src/gateway/auth.c: the gateway's authentication (auth.h). Layer:
 * gateway, on jwt.c (pure verification) and the policy snapshot.
 *
 * Token sources, first present wins: `Authorization: Bearer`, an offered
 * subprotocol `token.<jwt>` (browsers cannot set headers; the gateway never
 * selects it), the configured cookie, `?token=`. A bad token is refused
 * (401) even where anonymous access is allowed: it never falls back to
 * anonymous silently. No token at all is anonymous, refused with 403 when
 * anonymous access is off.
 *
 * Log lines name the remote, the source and the reason, never the token
 * nor the secret.
 *
 * Expiry: each worker keeps a binary min-heap of its authenticated
 * connections by deadline (exp + leeway + refresh grace), each connection
 * knowing its slot; the 1 s tick pops what is due, so a tick costs
 * O(expired · log n), not a walk of every connection, and no connection
 * has a timer of its own.
 */
#define _POSIX_C_SOURCE 200809L
#include "gateway/auth.h"

#include "core/seams.h"
#include "gateway/gw.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

const char *gw_auth_reason(int r)
{
    switch (r) {
    case GW_AUTH_R_MISSING:
        return "missing";
    case GW_AUTH_R_ANONYMOUS:
        return "anonymous";
    case GW_AUTH_R_SUB:
        return "claim";
    default:
        return dx__jwt_reason(r);
    }
}

int64_t gw_auth_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- policy ------------------------------------------------------------------ */

int gw_auth_policy_init(gw_policy *p, char *why, size_t why_len)
{
    const dx_gateway_auth *a = &p->auth; /* already copied into p */
    dx__jwt_key_src src = {.secret = a->jwt_secret, .pem_file = a->jwt_public_key, .jwks_file = a->jwks_file};
    char sub[300] = "";
    int rc = dx__jwt_keys_load(&src, &p->keys, sub, sizeof sub);
    if (rc) {
        snprintf(why, why_len, "auth: %s", sub);
        return rc;
    }
    p->rules.audience = a->audience && *a->audience ? a->audience : NULL;
    p->rules.issuer = a->issuer && *a->issuer ? a->issuer : NULL;
    p->rules.leeway_s = a->leeway_s == (unsigned)-1 ? 0 : a->leeway_s ? (int64_t)a->leeway_s : 30;
    p->grace_ms = a->refresh_grace_ms;
    /* [1 without a key source, 0 with one]; -1 for 0 */
    p->anonymous = a->anonymous ? a->anonymous > 0 : !p->jwt;
    p->anonymous_publish = a->anonymous_publish ? a->anonymous_publish > 0 : !p->jwt;
    if (a->cookie && !*a->cookie)
        p->auth.cookie = NULL;
    return 0;
}

void gw_auth_policy_free(gw_policy *p)
{
    dx__jwt_keys_free(p->keys);
    p->keys = NULL;
}

/* ---- finding the token ------------------------------------------------------ */

/* The value of cookie `name` in a Cookie header (RFC 6265 §5.4: "a=b; c=d"). */
static bool cookie_get(const char *h, size_t hl, const char *name, const char **v, size_t *vl)
{
    size_t nl = strlen(name), i = 0;
    while (i < hl) {
        while (i < hl && (h[i] == ' ' || h[i] == ';'))
            i++;
        size_t j = i;
        while (j < hl && h[j] != ';')
            j++;
        if (j - i > nl && h[i + nl] == '=' && memcmp(h + i, name, nl) == 0) {
            *v = h + i + nl + 1;
            *vl = j - i - nl - 1;
            if (*vl >= 2 && (*v)[0] == '"' && (*v)[*vl - 1] == '"') {
                (*v)++;
                *vl -= 2;
            }
            return true;
        }
        i = j;
    }
    return false;
}

static void refused(gw_worker *k, const gw_auth_req *r, int status, int reason, const char *src, const char *detail)
{
    gw_inc(&k->m.auth_refused[reason], 1);
    gw_logf(k, DX_LOG_INFO, "gateway: %s %s refused %d: %s%s%s (reason=%s)", r->remote, r->what, status,
            src ? "token from " : "", src ? src : "", detail, gw_auth_reason(reason));
}

/* The user topic and claim patterns must be usable by the topic layer. */
static bool claims_usable(const dx__jwt_claims *c, const char **bad)
{
    char t[DX__GW_TOPIC_MAX + 1];
    int n = snprintf(t, sizeof t, "user:%s", c->sub);
    if (n < 0 || (size_t)n >= sizeof t || dx__gw_topic_check(t, (size_t)n) != 0) {
        *bad = "sub cannot name a user: topic ([A-Za-z0-9_.:@/-], no empty segment)";
        return false;
    }
    for (size_t i = 0; i < c->n_subscribe; i++)
        if (dx__gw_topic_check_sub(c->subscribe[i], c->subscribe_len[i]) != 0) {
            *bad = "a subscribe claim entry is not a topic or pattern";
            return false;
        }
    for (size_t i = 0; i < c->n_publish; i++)
        if (dx__gw_topic_check_sub(c->publish[i], c->publish_len[i]) != 0) {
            *bad = "a publish claim entry is not a topic or pattern";
            return false;
        }
    return true;
}

int gw_auth_handshake(gw_worker *k, const gw_auth_req *r, dx__jwt_claims **claims)
{
    const gw_policy *p = k->pol;
    *claims = NULL;
    if (!p->jwt)
        return 0; /* open: no key, tokens are not looked at */
    const char *tok = NULL, *src = NULL;
    size_t tl = 0;
    static _Thread_local char qbuf[DX__JWT_MAX_TOKEN + 2];
    /* "Bearer" alone (its trailing space trimmed as OWS) is an empty token */
    if (r->authz && r->authz_len >= 6 && strncasecmp(r->authz, "Bearer", 6) == 0 &&
        (r->authz_len == 6 || r->authz[6] == ' ')) {
        tok = r->authz + 6;
        tl = r->authz_len - 6;
        while (tl && *tok == ' ') {
            tok++;
            tl--;
        }
        src = "Authorization header";
    } else if (r->proto) {
        tok = r->proto;
        tl = r->proto_len;
        src = "subprotocol";
    } else if (p->auth.cookie && r->cookie && cookie_get(r->cookie, r->cookie_len, p->auth.cookie, &tok, &tl)) {
        src = "cookie";
    } else {
        const char *v;
        size_t vl;
        if (r->query && gw_query_get(r->query, r->query_len, "token", &v, &vl)) {
            src = "query";
            if (vl > 3 * (DX__JWT_MAX_TOKEN + 1)) {
                refused(k, r, 401, DX__JWT_E_TOO_LONG, src, "token longer than 8 KiB");
                return 401;
            }
            long n = gw_pct_decode(v, vl, qbuf, sizeof qbuf);
            if (n < 0) {
                refused(k, r, 401, n == -1 && vl > DX__JWT_MAX_TOKEN ? DX__JWT_E_TOO_LONG : DX__JWT_E_MALFORMED,
                        src, "token not decodable");
                return 401;
            }
            tok = qbuf;
            tl = (size_t)n;
        }
    }
    if (!src) {
        if (p->anonymous)
            return 0;
        refused(k, r, 403, GW_AUTH_R_ANONYMOUS, NULL, "no token and anonymous access is off");
        return 403;
    }
    if (!tl) {
        refused(k, r, 401, GW_AUTH_R_MISSING, src, ": empty");
        return 401;
    }
    dx__jwt_claims *c = NULL;
    int e = dx__jwt_verify(p->keys, &p->rules, tok, tl, gw_auth_now_ms() / 1000, &c);
    if (e == DX__JWT_E_NOMEM)
        return 503;
    if (e) {
        char d[96];
        snprintf(d, sizeof d, ": %s", dx__jwt_reason(e));
        refused(k, r, 401, e, src, d);
        return 401;
    }
    const char *bad = NULL;
    if (!claims_usable(c, &bad)) {
        char d[120];
        snprintf(d, sizeof d, ": %s", bad);
        refused(k, r, 401, GW_AUTH_R_SUB, src, d);
        dx__jwt_claims_free(c);
        return 401;
    }
    gw_inc(&k->m.auth_ok, 1);
    *claims = c;
    return 0;
}

int gw_auth_upgrade(gw_worker *k, dx_request *req, dx__jwt_claims **claims)
{
    gw_auth_req ar = {.query = req->query, .query_len = req->query_len, .remote = req->remote, .what = "/ws"};
    ar.authz = dx_request_header(req, "Authorization", &ar.authz_len);
    ar.cookie = dx_request_header(req, "Cookie", &ar.cookie_len);
    size_t cur = 0, pl;
    const char *pn;
    while (dx_request_protocol(req, &cur, &pn, &pl))
        if (pl >= 6 && !memcmp(pn, "token.", 6)) {
            ar.proto = pn + 6;
            ar.proto_len = pl - 6;
            break;
        }
    int st = gw_auth_handshake(k, &ar, claims);
    if (st == 401) {
        /* deferred only to answer with WWW-Authenticate (RFC 6750 §3) */
        dx_upgrade *h = dx_request_defer(req);
        if (h) {
            (void)dx_upgrade_refuse(h, 401, GW_AUTH_401_HEADERS);
            return DX_UPGRADE_DEFER;
        }
    }
    return st;
}

size_t gw_auth_user_topic(const dx__jwt_claims *c, char *buf)
{
    memcpy(buf, "user:", 5);
    memcpy(buf + 5, c->sub, c->sub_len + 1);
    return c->sub_len + 5;
}

size_t gw_auth_list_user_topic(const gw_conn *g, char *buf, const char **names, size_t *lens, size_t n)
{
    if (!g->claims)
        return n;
    size_t ul = gw_auth_user_topic(g->claims, buf);
    for (size_t i = 0; i < n; i++)
        if (lens[i] == ul && !memcmp(names[i], buf, ul))
            return n;
    names[n] = buf;
    lens[n] = ul;
    return n + 1;
}

/* ---- the expiry heap ------------------------------------------------------------ */

static void heap_set(gw_worker *k, size_t i, gw_conn *g)
{
    k->exph[i] = g;
    g->exp_ix = i + 1;
}

static void heap_up(gw_worker *k, size_t i)
{
    gw_conn *g = k->exph[i];
    while (i) {
        size_t p = (i - 1) / 2;
        if (k->exph[p]->exp_ms <= g->exp_ms)
            break;
        heap_set(k, i, k->exph[p]);
        i = p;
    }
    heap_set(k, i, g);
}

static void heap_down(gw_worker *k, size_t i)
{
    gw_conn *g = k->exph[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= k->nexp)
            break;
        if (c + 1 < k->nexp && k->exph[c + 1]->exp_ms < k->exph[c]->exp_ms)
            c++;
        if (k->exph[c]->exp_ms >= g->exp_ms)
            break;
        heap_set(k, i, k->exph[c]);
        i = c;
    }
    heap_set(k, i, g);
}

static void heap_remove(gw_worker *k, gw_conn *g)
{
    size_t i = g->exp_ix - 1;
    g->exp_ix = 0;
    gw_conn *last = k->exph[--k->nexp];
    if (i == k->nexp)
        return;
    k->exph[i] = last;
    last->exp_ix = i + 1;
    heap_up(k, i);
    heap_down(k, last->exp_ix - 1);
}

static int64_t deadline_ms(const gw_policy *p, const dx__jwt_claims *c)
{
    int64_t lw = p->rules.leeway_s;
    if (c->exp > INT64_MAX / 1000 - lw - (int64_t)(p->grace_ms / 1000) - 1)
        return INT64_MAX;
    return (c->exp + lw) * 1000 + (int64_t)p->grace_ms;
}

/* Queues (or requeues) g at its deadline. */
static int heap_put(gw_conn *g, int64_t at)
{
    gw_worker *k = g->k;
    g->exp_ms = at;
    if (g->exp_ix) {
        heap_up(k, g->exp_ix - 1);
        heap_down(k, g->exp_ix - 1);
        return 0;
    }
    if (k->nexp == k->capexp) {
        size_t cap = k->capexp ? 2 * k->capexp : 64;
        gw_conn **n = dx__realloc(NULL, k->exph, cap * sizeof *n);
        if (!n)
            return DX_ENOMEM;
        k->exph = n;
        k->capexp = cap;
    }
    k->exph[k->nexp++] = g;
    heap_up(k, k->nexp - 1);
    return 0;
}

int gw_auth_attach(gw_conn *g, dx__jwt_claims *c)
{
    g->user = dx__alloc(NULL, c->sub_len + 1);
    if (!g->user) {
        dx__jwt_claims_free(c);
        return DX_ENOMEM;
    }
    memcpy(g->user, c->sub, c->sub_len + 1);
    g->ulen = c->sub_len;
    g->claims = c;
    if (c->has_exp && heap_put(g, deadline_ms(g->k->pol, c)) != 0)
        return DX_ENOMEM; /* claims stay with g, freed when it goes */
    return 0;
}

void gw_auth_detach(gw_conn *g)
{
    if (g->exp_ix)
        heap_remove(g->k, g);
    dx__jwt_claims_free(g->claims);
    g->claims = NULL;
}

int gw_auth_refresh(gw_conn *g, const char *token, size_t len, const char **reason)
{
    gw_worker *k = g->k;
    const gw_policy *p = k->pol;
    if (!g->claims) {
        *reason = "not authenticated: refresh needs a connection that authenticated at its handshake";
        gw_inc(&k->m.refresh_refused, 1);
        return DX__GW_E_UNAUTH;
    }
    dx__jwt_claims *c = NULL;
    int e = p->jwt ? dx__jwt_verify(p->keys, &p->rules, token, len, gw_auth_now_ms() / 1000, &c) : DX__JWT_E_NO_KEY;
    const char *bad = NULL;
    if (e == DX__JWT_OK && !claims_usable(c, &bad))
        e = GW_AUTH_R_SUB;
    if (e == DX__JWT_OK && (c->sub_len != g->ulen || memcmp(c->sub, g->user, g->ulen) != 0)) {
        *reason = "token for another user";
        gw_logf(k, DX_LOG_INFO, "gateway: conn=%llu refresh refused: token for another sub",
                (unsigned long long)g->id);
        gw_inc(&k->m.refresh_refused, 1);
        dx__jwt_claims_free(c);
        return DX__GW_E_UNAUTH;
    }
    if (e != DX__JWT_OK) {
        static _Thread_local char why[96];
        snprintf(why, sizeof why, "invalid token: %s", gw_auth_reason(e));
        *reason = why;
        gw_logf(k, DX_LOG_INFO, "gateway: conn=%llu refresh refused: %s", (unsigned long long)g->id,
                gw_auth_reason(e));
        gw_inc(&k->m.refresh_refused, 1);
        dx__jwt_claims_free(c);
        return DX__GW_E_UNAUTH;
    }
    dx__jwt_claims_free(g->claims);
    g->claims = c;
    if (c->has_exp) {
        if (heap_put(g, deadline_ms(p, c)) != 0) {
            *reason = "out of memory";
            return DX__GW_E_UNAVAILABLE;
        }
    } else if (g->exp_ix) {
        heap_remove(k, g);
    }
    gw_inc(&k->m.refresh_ok, 1);
    return 0;
}

void gw_auth_tick(gw_worker *k)
{
    int64_t now = gw_auth_now_ms();
    while (k->nexp && k->exph[0]->exp_ms <= now) {
        gw_conn *g = k->exph[0];
        if (!g->open && !g->gone && !g->closing) {
            /* its handshake is still being answered: look again in a second */
            heap_put(g, now + 1000);
            continue;
        }
        heap_remove(k, g);
        if (g->closing || g->gone)
            continue;
        gw_inc(&k->m.auth_expired, 1);
        gw_logf(k, DX_LOG_INFO, "gateway: conn=%llu user '%.*s' token expired: closed 4001", (unsigned long long)g->id,
                (int)g->ulen, g->user);
        gw_conn_close(g, 4001, "token expired");
    }
}

void gw_auth_worker_free(gw_worker *k)
{
    dx__free(NULL, k->exph);
    k->exph = NULL;
    k->nexp = k->capexp = 0;
}

void gw_auth_count_key(gw_worker *k, const char *name)
{
    gw_metrics *m = &k->m;
    size_t n = atomic_load_explicit(&m->nkeystat, memory_order_relaxed);
    for (size_t i = 0; i < n; i++)
        if (!strncmp(m->keystat[i].name, name, GW_KEYSTAT_NAME - 1)) {
            gw_inc(&m->keystat[i].n, 1);
            return;
        }
    if (n == GW_KEYSTAT_MAX) { /* the last slot is "other" */
        gw_inc(&m->keystat[n - 1].n, 1);
        return;
    }
    snprintf(m->keystat[n].name, GW_KEYSTAT_NAME, "%s", n == GW_KEYSTAT_MAX - 1 ? "other" : name);
    atomic_store_explicit(&m->keystat[n].n, 1, memory_order_relaxed);
    /* the name is written before it is published to /metrics */
    atomic_store_explicit(&m->nkeystat, n + 1, memory_order_release);
}
