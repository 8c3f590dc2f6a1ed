/*
 * src/gateway/limits.c: token buckets, the bounded handshake table, live
 * connections per user, Origin parsing and the allow-list, the namespace
 * table (see limits.h).
 *
 * Layer: gateway (core and ws/ipcount only); no loop, no clock read: the
 * caller passes the time. Nothing here fires a callback.
 *
 * Invariants: the handshake table never holds more than its slots (no
 * allocation after init); a user entry exists only while its count is
 * above zero; the namespace array is sorted bytewise and each entry's
 * `parent` is its longest proper prefix in the array, which makes the
 * longest-prefix lookup a binary search plus a walk up the parents.
 */
#define _GNU_SOURCE
#include "gateway/limits.h"

#include "core/seams.h"
#include "gateway/gw.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

/* ---- token bucket ------------------------------------------------------------ */

void gw_bucket_init(gw_bucket *b, double burst, uint64_t now_ns)
{
    b->tokens = burst;
    b->last_ns = now_ns;
}

static void refill(gw_bucket *b, double rate, double burst, uint64_t now_ns)
{
    if (now_ns > b->last_ns) {
        b->tokens += (double)(now_ns - b->last_ns) / 1e9 * rate;
        if (b->tokens > burst)
            b->tokens = burst;
    }
    b->last_ns = now_ns; /* a clock that steps back refills nothing */
}

static uint64_t wait_for_one(const gw_bucket *b, double rate)
{
    if (b->tokens >= 1.0)
        return 0;
    double ns = (1.0 - b->tokens) / rate * 1e9;
    uint64_t w = (uint64_t)ns; /* rounded up, without libm */
    return (double)w < ns ? w + 1 : w;
}

bool gw_bucket_take(gw_bucket *b, double rate, double burst, uint64_t now_ns, uint64_t *wait_ns)
{
    if (rate <= 0)
        return true;
    refill(b, rate, burst, now_ns);
    if (b->tokens >= 1.0) {
        b->tokens -= 1.0;
        return true;
    }
    if (wait_ns)
        *wait_ns = wait_for_one(b, rate);
    return false;
}

uint64_t gw_bucket_force(gw_bucket *b, double rate, double burst, uint64_t now_ns)
{
    if (rate <= 0)
        return 0;
    refill(b, rate, burst, now_ns);
    b->tokens -= 1.0;
    if (b->tokens < -burst)
        b->tokens = -burst;
    return wait_for_one(b, rate);
}

/* ---- addresses ------------------------------------------------------------------- */

bool gw_addr_key(const char *remote, int *family, uint64_t *key)
{
    char buf[64];
    const char *s = remote, *e;
    if (!remote)
        return false;
    if (*s == '[') {
        s++;
        e = strchr(s, ']');
    } else {
        e = strrchr(s, ':');
    }
    if (!e || (size_t)(e - s) >= sizeof buf)
        return false;
    memcpy(buf, s, (size_t)(e - s));
    buf[e - s] = 0;
    uint8_t a[16];
    if (inet_pton(AF_INET, buf, a) == 1) {
        *family = AF_INET;
        *key = dx__ipcount_key(AF_INET, a);
        return true;
    }
    if (inet_pton(AF_INET6, buf, a) == 1) {
        static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (!memcmp(a, v4mapped, 12)) { /* ::ffff:1.2.3.4 is 1.2.3.4 */
            *family = AF_INET;
            *key = dx__ipcount_key(AF_INET, a + 12);
            return true;
        }
        *family = AF_INET6;
        *key = dx__ipcount_key(AF_INET6, a);
        return true;
    }
    return false;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* ---- handshake table ---------------------------------------------------------------- */

struct gw_hs_slot {
    uint64_t key;
    uint32_t family;       /* 0: free */
    gw_bucket b;
};

int gw_hstable_init(gw_hstable *t, size_t cap, uint64_t seed)
{
    memset(t, 0, sizeof *t);
    if (!cap)
        cap = 65536;
    size_t sets = 1;
    while (sets * GW_HS_WAYS < cap)
        sets <<= 1;
    t->slots = dx__alloc(NULL, sets * GW_HS_WAYS * sizeof *t->slots);
    if (!t->slots)
        return DX_ENOMEM;
    memset(t->slots, 0, sets * GW_HS_WAYS * sizeof *t->slots);
    t->nsets = sets;
    t->seed = seed;
    return 0;
}

void gw_hstable_deinit(gw_hstable *t)
{
    dx__free(NULL, t->slots);
    memset(t, 0, sizeof *t);
}

bool gw_hstable_take(gw_hstable *t, int family, uint64_t key, double rate, double burst, uint64_t now_ns,
                     unsigned *retry_s)
{
    if (rate <= 0 || !t->slots)
        return true;
    gw_hs_slot *set = t->slots + (mix64(key ^ t->seed ^ ((uint64_t)(unsigned)family << 56)) & (t->nsets - 1)) *
                                     GW_HS_WAYS;
    gw_hs_slot *s = NULL, *free_slot = NULL, *full = NULL, *lru = NULL;
    for (int i = 0; i < GW_HS_WAYS; i++) {
        gw_hs_slot *x = &set[i];
        if (!x->family) {
            if (!free_slot)
                free_slot = x;
            continue;
        }
        if (x->key == key && x->family == (uint32_t)family) {
            s = x;
            break;
        }
        double elapsed = now_ns > x->b.last_ns ? (double)(now_ns - x->b.last_ns) / 1e9 : 0;
        if (!full && x->b.tokens + elapsed * rate >= burst)
            full = x;
        if (!lru || x->b.last_ns < lru->b.last_ns)
            lru = x;
    }
    if (!s) {
        s = free_slot ? free_slot : full ? full : lru;
        if (!free_slot && !full)
            t->evictions++;
        if (free_slot)
            t->used++;
        s->key = key;
        s->family = (uint32_t)family;
        gw_bucket_init(&s->b, burst, now_ns);
    }
    uint64_t wait = 0;
    if (gw_bucket_take(&s->b, rate, burst, now_ns, &wait))
        return true;
    if (retry_s) {
        uint64_t sec = (wait + 999999999u) / 1000000000u;
        *retry_s = sec < 1 ? 1 : sec > 3600 ? 3600 : (unsigned)sec;
    }
    return false;
}

/* ---- users -------------------------------------------------------------------------------- */

struct gw_user_ent {
    gw_user_ent *next;
    size_t n;
    size_t len;
    char name[];
};

static uint64_t hash_str(uint64_t seed, const char *s, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ULL ^ seed; /* FNV-1a, finalized: keyed by the seed */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)s[i]) * 0x100000001b3ULL;
    return mix64(h);
}

static gw_user_ent **user_slot(const gw_users *u, const char *user, size_t len)
{
    gw_user_ent **p = &u->b[hash_str(u->seed, user, len) & (u->nb - 1)];
    while (*p && !((*p)->len == len && !memcmp((*p)->name, user, len)))
        p = &(*p)->next;
    return p;
}

static int users_grow(gw_users *u)
{
    size_t nb = u->nb ? u->nb * 2 : 64;
    gw_user_ent **b = dx__alloc(NULL, nb * sizeof *b);
    if (!b)
        return DX_ENOMEM;
    memset(b, 0, nb * sizeof *b);
    for (size_t i = 0; i < u->nb; i++) {
        gw_user_ent *e = u->b[i];
        while (e) {
            gw_user_ent *next = e->next;
            size_t j = hash_str(u->seed, e->name, e->len) & (nb - 1);
            e->next = b[j];
            b[j] = e;
            e = next;
        }
    }
    dx__free(NULL, u->b);
    u->b = b;
    u->nb = nb;
    return 0;
}

int gw_users_add(gw_users *u, const char *user, size_t len, size_t limit)
{
    if (!u->nb || u->n >= u->nb) {
        int rc = users_grow(u);
        if (rc && !u->nb)
            return rc; /* else: longer chains, still correct */
    }
    gw_user_ent **p = user_slot(u, user, len);
    if (*p) {
        if (limit && (*p)->n >= limit)
            return DX_ELIMIT;
        (*p)->n++;
        return 0;
    }
    gw_user_ent *e = dx__alloc(NULL, sizeof *e + len);
    if (!e)
        return DX_ENOMEM;
    e->next = NULL;
    e->n = 1;
    e->len = len;
    memcpy(e->name, user, len);
    *p = e;
    u->n++;
    return 0;
}

void gw_users_remove(gw_users *u, const char *user, size_t len)
{
    if (!u->nb)
        return;
    gw_user_ent **p = user_slot(u, user, len);
    if (!*p)
        return;
    if (--(*p)->n == 0) {
        gw_user_ent *e = *p;
        *p = e->next;
        dx__free(NULL, e);
        u->n--;
    }
}

size_t gw_users_get(const gw_users *u, const char *user, size_t len)
{
    if (!u->nb)
        return 0;
    gw_user_ent **p = user_slot(u, user, len);
    return *p ? (*p)->n : 0;
}

void gw_users_deinit(gw_users *u)
{
    for (size_t i = 0; i < u->nb; i++) {
        gw_user_ent *e = u->b[i];
        while (e) {
            gw_user_ent *next = e->next;
            dx__free(NULL, e);
            e = next;
        }
    }
    dx__free(NULL, u->b);
    memset(u, 0, sizeof *u);
}

/* ---- shared counters ------------------------------------------------------------------------ */

int gw_counts_init(gw_counts *c, size_t hs_cap)
{
    memset(c, 0, sizeof *c);
    uint64_t seed[2] = {0, 0};
    (void)dx__random(NULL, seed, sizeof seed);
    c->ip.seed = seed[0];
    c->users.seed = seed[1];
    if (pthread_mutex_init(&c->mu, NULL) != 0)
        return DX_ENOMEM;
    int rc = gw_hstable_init(&c->hs, hs_cap, seed[0] ^ seed[1]);
    if (rc)
        pthread_mutex_destroy(&c->mu);
    return rc;
}

void gw_counts_deinit(gw_counts *c)
{
    dx__ipcount_free(&c->ip, NULL);
    gw_users_deinit(&c->users);
    gw_hstable_deinit(&c->hs);
    pthread_mutex_destroy(&c->mu);
}

/* ---- origins ----------------------------------------------------------------------------------- */

static bool host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_';
}

bool gw_origin_parse(const char *s, size_t len, char *scheme, size_t scap, char *host, size_t hcap, unsigned *port)
{
    const char *p = memchr(s, ':', len);
    if (!p || p == s || (size_t)(p - s) >= scap || (size_t)(s + len - p) < 4 || p[1] != '/' || p[2] != '/')
        return false;
    size_t sl = (size_t)(p - s);
    for (size_t i = 0; i < sl; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (i && ((c >= '0' && c <= '9') || c == '+' ||
                                                                         c == '-' || c == '.'))))
            return false;
        scheme[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    scheme[sl] = 0;
    const char *h = p + 3, *end = s + len;
    if (end > h && end[-1] == '/')
        end--; /* a trailing slash some clients add */
    const char *he;
    if (h < end && *h == '[') { /* IPv6 literal */
        he = memchr(h, ']', (size_t)(end - h));
        if (!he)
            return false;
        for (const char *q = h + 1; q < he; q++)
            if (!((*q >= '0' && *q <= '9') || (*q >= 'a' && *q <= 'f') || (*q >= 'A' && *q <= 'F') || *q == ':' ||
                  *q == '.'))
                return false;
        he++;
    } else {
        he = h;
        while (he < end && host_char(*he))
            he++;
    }
    size_t hl = (size_t)(he - h);
    if (!hl || hl >= hcap || (hl == 2 && *h == '['))
        return false;
    for (size_t i = 0; i < hl; i++)
        host[i] = (char)(h[i] >= 'A' && h[i] <= 'Z' ? h[i] + 32 : h[i]);
    host[hl] = 0;
    if (host[hl - 1] == '.' || host[0] == '.')
        return false;
    unsigned pt = 0;
    if (he < end && *he == ':') {
        const char *q = he + 1;
        if (q == end || end - q > 5)
            return false;
        for (; q < end; q++) {
            if (*q < '0' || *q > '9')
                return false;
            pt = pt * 10 + (unsigned)(*q - '0');
        }
        if (pt == 0 || pt > 65535)
            return false;
        he = end;
    }
    if (he != end)
        return false; /* userinfo, a path, a query: not an origin */
    if (!pt)
        pt = !strcmp(scheme, "https") || !strcmp(scheme, "wss") ? 443 : !strcmp(scheme, "http") || !strcmp(scheme, "ws") ? 80 : 0;
    *port = pt;
    return true;
}

bool gw_limits_origin_ok(const gw_limits_cfg *c, const char *origin, size_t olen, const char *host, size_t hlen)
{
    if (!origin)
        return c->allow_no_origin;
    if (!c->norigins)
        return gw_policy_origin(origin, olen, host, hlen);
    char scheme[32], h[256];
    unsigned port;
    if (!gw_origin_parse(origin, olen, scheme, sizeof scheme, h, sizeof h, &port))
        return false;
    size_t hl = strlen(h);
    for (size_t i = 0; i < c->norigins; i++) {
        const gw_origin *o = &c->origins[i];
        if (o->port != port || strcmp(o->scheme, scheme) != 0)
            continue;
        if (!o->wildcard) {
            if (!strcmp(o->host, h))
                return true;
            continue;
        }
        /* "*.example.com" is stored as ".example.com": one or more labels
         * before it, never the bare domain */
        size_t sl = strlen(o->host);
        if (hl > sl && !memcmp(h + hl - sl, o->host, sl) && h[0] != '.')
            return true;
    }
    return false;
}

/* ---- namespaces ------------------------------------------------------------------------------------ */

static int ns_cmp(const void *a, const void *b)
{
    const gw_nspace *x = a, *y = b;
    size_t n = x->plen < y->plen ? x->plen : y->plen;
    int c = memcmp(x->prefix, y->prefix, n);
    if (c)
        return c;
    return x->plen < y->plen ? -1 : x->plen > y->plen;
}

static bool is_prefix(const gw_nspace *p, const char *s, size_t len)
{
    return p->plen <= len && !memcmp(p->prefix, s, p->plen);
}

const gw_nspace *gw_limits_ns(const gw_limits_cfg *c, const char *topic, size_t len)
{
    if (!c || !c->nns)
        return NULL;
    /* the last prefix <= topic, bytewise */
    size_t lo = 0, hi = c->nns;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const gw_nspace *m = &c->ns[mid];
        size_t n = m->plen < len ? m->plen : len;
        int r = memcmp(m->prefix, topic, n);
        if (r < 0 || (r == 0 && m->plen <= len))
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return NULL;
    /* the longest prefix of the topic is that entry or one of its own
     * prefixes (every string between a prefix of t and t starts with it) */
    size_t i = lo - 1;
    while (i != (size_t)-1) {
        if (is_prefix(&c->ns[i], topic, len))
            return &c->ns[i];
        i = c->ns[i].parent;
    }
    return NULL;
}

static void why_set(char *why, size_t why_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void why_set(char *why, size_t why_len, const char *fmt, ...)
{
    if (!why || !why_len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
}

void gw_limits_cfg_free(gw_limits_cfg *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->norigins; i++) {
        dx__free(NULL, c->origins[i].scheme);
        dx__free(NULL, c->origins[i].host);
    }
    dx__free(NULL, c->origins);
    for (size_t i = 0; i < c->nns; i++)
        dx__free(NULL, c->ns[i].prefix);
    dx__free(NULL, c->ns);
    dx__free(NULL, c);
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s);
    char *d = dx__alloc(NULL, n + 1);
    if (d)
        memcpy(d, s, n + 1);
    return d;
}

static size_t lim_size(size_t v, size_t dflt)
{
    return v == (size_t)-1 ? SIZE_MAX : v ? v : dflt;
}

static double lim_rate(double v, double dflt)
{
    return v < 0 ? 0 : v > 0 ? v : dflt;
}

gw_limits_cfg *gw_limits_cfg_new(const dx_gateway_options *o, char *why, size_t why_len, int *err)
{
    *err = DX_ENOMEM;
    gw_limits_cfg *c = dx__alloc(NULL, sizeof *c);
    if (!c) {
        why_set(why, why_len, "%s", "out of memory");
        return NULL;
    }
    memset(c, 0, sizeof *c);
    const dx_gateway_limits *l = &o->limits;
    size_t max_message = o->max_message; /* 0 on a reload: not checked here */
    c->allow_no_origin = o->allow_no_origin >= 0;
    c->conns_per_user = lim_size(l->conns_per_user, SIZE_MAX);
    c->conns_per_ip = lim_size(l->conns_per_ip, 1000);
    c->handshakes_per_ip = lim_rate(l->handshakes_per_ip, 200);
    /* the default pair lets one address open its 1,000 connections at once
     * (GATEWAY.md: local testing); a rate given alone is its own burst */
    c->handshake_burst = l->handshake_burst > 0 ? l->handshake_burst : l->handshakes_per_ip == 0 ? 1000
                                                                                             : c->handshakes_per_ip;
    c->msg_rate = lim_rate(l->msg_rate, 1000);
    c->msg_burst = l->msg_burst > 0 ? l->msg_burst : c->msg_rate;
    /* a bucket smaller than one token would refuse everything */
    if (c->handshake_burst < 1)
        c->handshake_burst = 1;
    if (c->msg_burst < 1)
        c->msg_burst = 1;
    c->rate_policy = l->rate_policy;
    c->max_topic = l->max_topic ? l->max_topic : DX__GW_TOPIC_MAX;
    c->max_api_body = l->max_api_body == (size_t)-1 ? 0 : l->max_api_body;
    c->drain_ms = o->drain_ms ? o->drain_ms : 10000;
    c->reconnect_hint_ms = o->reconnect_hint_ms ? o->reconnect_hint_ms : 2000;
    *err = DX_EINVAL;
    if (c->rate_policy < DX_GW_RATE_PAUSE || c->rate_policy > DX_GW_RATE_CLOSE) {
        why_set(why, why_len, "%s", "limits.rate_policy must be pause, refuse or close");
        goto fail;
    }
    if (c->max_topic > DX__GW_TOPIC_MAX) {
        why_set(why, why_len, "%s", "limits.max_topic is at most 200 bytes");
        goto fail;
    }
    if (o->n_origins) {
        *err = DX_ENOMEM;
        c->origins = dx__alloc(NULL, o->n_origins * sizeof *c->origins);
        if (!c->origins)
            goto fail;
        memset(c->origins, 0, o->n_origins * sizeof *c->origins);
        for (size_t i = 0; i < o->n_origins; i++) {
            const char *s = o->origins[i];
            char scheme[32], host[256];
            unsigned port;
            bool wild = s && strstr(s, "://*.") != NULL;
            char tmp[320];
            *err = DX_EINVAL;
            if (!s || strlen(s) >= sizeof tmp) {
                why_set(why, why_len, "bad origin '%.200s'", s ? s : "(null)");
                goto fail;
            }
            /* a wildcard is parsed with its star as a plain label "x",
             * and the host kept without it (".domain") */
            snprintf(tmp, sizeof tmp, "%s", s);
            char *star = wild ? strstr(tmp, "://*.") + 3 : NULL;
            if (star)
                *star = 'x';
            if (!gw_origin_parse(tmp, strlen(tmp), scheme, sizeof scheme, host, sizeof host, &port)) {
                why_set(why, why_len, "bad origin '%.200s' (scheme://host[:port], or scheme://*.domain)", s);
                goto fail;
            }
            if (!port) {
                why_set(why, why_len, "bad origin '%.200s': give the port of a scheme other than http(s)", s);
                goto fail;
            }
            if (wild && (host[0] == '[' || !strchr(host + 2, '.'))) {
                why_set(why, why_len, "bad origin '%.200s': a wildcard needs a domain of two labels or more", s);
                goto fail;
            }
            *err = DX_ENOMEM;
            c->origins[i].scheme = dup_str(scheme);
            c->origins[i].host = dup_str(wild ? host + 1 : host);
            c->origins[i].port = port;
            c->origins[i].wildcard = wild;
            c->norigins = i + 1;
            if (!c->origins[i].scheme || !c->origins[i].host)
                goto fail;
        }
    }
    if (o->n_namespaces) {
        *err = DX_ENOMEM;
        c->ns = dx__alloc(NULL, o->n_namespaces * sizeof *c->ns);
        if (!c->ns)
            goto fail;
        memset(c->ns, 0, o->n_namespaces * sizeof *c->ns);
        for (size_t i = 0; i < o->n_namespaces; i++) {
            const dx_gateway_namespace *s = &o->namespaces[i];
            gw_nspace *n = &c->ns[i];
            *err = DX_EINVAL;
            if (!s->prefix || strlen(s->prefix) > DX__GW_TOPIC_MAX) {
                why_set(why, why_len, "%s", "a namespace needs a prefix of at most 200 bytes (\"\" for every topic)");
                goto fail;
            }
            if (s->slow_policy < 0 || s->slow_policy > DX_GW_SLOW_DROP_OLDEST + 1 || s->rate_policy < 0 ||
                s->rate_policy > DX_GW_RATE_CLOSE + 1) {
                why_set(why, why_len, "namespace '%.200s': bad slow or rate policy", s->prefix);
                goto fail;
            }
            if (max_message && s->max_message > max_message) {
                why_set(why, why_len, "namespace '%.200s': max_message above the gateway's", s->prefix);
                goto fail;
            }
            *err = DX_ENOMEM;
            n->prefix = dup_str(s->prefix);
            c->nns = i + 1;
            if (!n->prefix)
                goto fail;
            n->plen = strlen(s->prefix);
            n->index = i;
            n->history_set = s->history_count != 0;
            n->history_count = s->history_count == (size_t)-1 ? 0 : s->history_count;
            n->age_set = s->history_age_ms != 0;
            n->history_age_ms = s->history_age_ms == UINT64_MAX ? 0 : s->history_age_ms;
            n->publish = s->publish >= 0;
            n->presence = s->presence >= 0;
            n->slow_policy = s->slow_policy ? s->slow_policy - 1 : -1;
            n->msg_rate = s->msg_rate > 0 ? s->msg_rate : 0;
            n->msg_burst = s->msg_burst >= 1 ? s->msg_burst : n->msg_rate >= 1 ? n->msg_rate : 1;
            n->rate_policy = s->rate_policy ? s->rate_policy - 1 : c->rate_policy;
            n->max_message = s->max_message;
        }
        qsort(c->ns, c->nns, sizeof *c->ns, ns_cmp);
        for (size_t i = 0; i < c->nns; i++) {
            if (i && c->ns[i].plen == c->ns[i - 1].plen && !memcmp(c->ns[i].prefix, c->ns[i - 1].prefix, c->ns[i].plen)) {
                *err = DX_EINVAL;
                why_set(why, why_len, "namespace prefix '%.200s' given twice", c->ns[i].prefix);
                goto fail;
            }
            /* the parent is the nearest earlier entry that is a prefix: the
             * candidates are i-1 and its own chain of parents */
            size_t j = i - 1;
            while (j != (size_t)-1 && !is_prefix(&c->ns[j], c->ns[i].prefix, c->ns[i].plen))
                j = c->ns[j].parent;
            c->ns[i].parent = j;
        }
    }
    *err = 0;
    return c;
fail:
    if (*err == DX_ENOMEM)
        why_set(why, why_len, "%s", "out of memory"); /* the caller tells DX_ENOMEM by this text */
    gw_limits_cfg_free(c);
    return NULL;
}
