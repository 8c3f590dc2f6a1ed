/*
 * src/gateway/gateway.c: the gateway's workers and connections: the
 * WebSocket endpoints (/ws in its raw and JSON dialects, /echo), subscribing,
 * and the lifecycle glue between the server's callbacks and
 * the bus's completions. The HTTP API is in api.c, SSE in sse.c, the
 * decisions in policy.c.
 *
 * A connection (gw_conn) is reference-counted on its worker's thread: one
 * reference for the connection itself (dropped when it is gone), one per
 * request out at the bus (publish, subscribe, presence), so a completion
 * that comes after the connection ended finds its memory and sees `gone`.
 *
 * Delivery (frames built once and shared, slow consumers, the bus's
 * events) is in deliver.c.
 */
#define _GNU_SOURCE
#include "gateway/gw.h"

#include "bus/redis.h"
#include "core/seams.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const double gw_lat_bounds[GW_LAT_N - 1] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                            0.005,   0.01,   0.025,   0.1,    1.0};

void gw_logf(gw_worker *k, int level, const char *fmt, ...)
{
    if (!k->gw->o.log)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    k->gw->o.log(k->gw->o.log_ud, level, line);
}

/* ---- connections ---------------------------------------------------------- */

gw_conn *gw_conn_new(gw_worker *k, int dialect)
{
    gw_conn *g = dx__alloc(NULL, sizeof *g);
    if (!g)
        return NULL;
    memset(g, 0, sizeof *g);
    g->k = k;
    g->dialect = (uint8_t)dialect;
    g->refs = 1;
    dx_list_push_back(&k->conns, &g->node);
    return g;
}

static void sub_free(gw_sub *s)
{
    dx__gw_stitch_deinit(&s->st);
    dx__bus_topic_unref(s->t);
    dx__free(NULL, s->name);
    dx__free(NULL, s);
}


static void held_clear(gw_conn *g)
{
    for (size_t i = 0; i < g->nheld; i++)
        gw_held_release(&g->held[(g->headheld + i) % g->capheld]);
    g->nheld = g->headheld = 0;
    g->heldbytes = 0;
    for (size_t i = 0; i < g->ngaps; i++)
        dx__bus_topic_unref(g->gaps[i].t);
    g->ngaps = 0;
}

void gw_conn_unref(gw_conn *g)
{
    if (--g->refs)
        return;
    held_clear(g);
    dx__free(NULL, g->held);
    dx__free(NULL, g->gaps);
    dx__free(NULL, g->subs);
    dx__jwt_claims_free(g->claims);
    dx__free(NULL, g->user);
    dx__free(NULL, g->pub);
    dx__free(NULL, g);
}

/* Removes subscription i of g (already out of the index); `leave`: tell
 * the topic's owner (presence), false when its subscribe failed there. */
void gw_sub_drop(gw_conn *g, size_t i, bool leave)
{
    gw_worker *k = g->k;
    gw_sub *s = g->subs[i];
    g->subs[i] = g->subs[--g->nsubs];
    dx__bus_interest(k->gw->bus, k->index, -1);
    gw_dec(&k->m.subscriptions, 1);
    if (!s->pattern && leave)
        dx__bus_leave(k->gw->bus, k->index, s->name, s->len, g->user, g->ulen);
    if (s->pattern)
        dx__bus_pattern(k->gw->bus, k->index, s->name, s->len, -1);
    if (s->pending)
        s->dead = true; /* the completion frees it */
    else
        sub_free(s);
}

/* The connection ended (or never opened): out of the index, presence left,
 * nothing more delivered; drops the connection's reference. Idempotent. */
void gw_conn_gone(gw_conn *g)
{
    if (g->gone)
        return;
    gw_worker *k = g->k;
    g->gone = true;
    g->closing = true;
    if (g->up) {
        (void)dx_upgrade_refuse(g->up, 503, NULL);
        g->up = NULL;
    }
    if (g->hreq) {
        (void)dx_http_reply(g->hreq, 503, "application/json", NULL, "{\"error\":\"shutting down\"}", 25);
        g->hreq = NULL;
    }
    gw_admit_release(g); /* before the user goes */
    gw_auth_detach(g);
    (void)dx__gw_topic_remove_subscriber(k->ix, g);
    while (g->nsubs)
        gw_sub_drop(g, g->nsubs - 1, true);
    held_clear(g);
    if (g->open)
        gw_dec(&k->m.conns[g->dialect], 1);
    g->open = false;
    g->c = NULL;
    g->s = NULL;
    dx_list_remove(&g->node);
    dx_list_init(&g->node);
    gw_conn_unref(g);
}

gw_sub *gw_sub_find(gw_conn *g, const char *name, size_t len, size_t *at)
{
    for (size_t i = 0; i < g->nsubs; i++) {
        gw_sub *s = g->subs[i];
        if (s->len == len && memcmp(s->name, name, len) == 0) {
            if (at)
                *at = i;
            return s;
        }
    }
    return NULL;
}

/* ---- subscribing ----------------------------------------------------------- */

static void sub_done(void *ud, int err, dx__bus_topic *t, dx__gw_snapshot *snap)
{
    gw_sub *s = ud;
    gw_conn *g = s->g;
    gw_worker *k = g->k;
    gw_flush_pending(k); /* what came before this answer goes through the stitcher first */
    s->pending = false;
    g->npending--;
    if (s->dead) {
        sub_free(s);
        gw_conn_unref(g);
        return;
    }
    bool quiet = s->quiet; /* a handshake's subscription (s may be freed below) */
    if (err) {
        gw_logf(k, DX_LOG_WARN, "gateway: conn=%llu subscribe %s failed: %s", (unsigned long long)g->id, s->name,
                dx_strerror(err));
        size_t at;
        if (gw_sub_find(g, s->name, s->len, &at) == s) {
            (void)dx__gw_topic_unsubscribe(k->ix, s->name, s->len, g);
            bool has_id = s->has_id;
            uint64_t id = s->id;
            gw_sub_drop(g, at, false); /* frees s; the owner kept no presence for it */
            if (g->dialect == GW_JSON && !quiet)
                gw_send_err(g, has_id, id, DX__GW_E_UNAVAILABLE, "subscribe failed: try again");
        }
        if (g->dialect != GW_JSON || quiet) {
            g->fail_status = 503;
            if (--g->waiting == 0)
                gw_conn_ready(g);
        }
        gw_conn_unref(g);
        return;
    }
    s->t = dx__bus_topic_ref(t);
    if (g->dialect == GW_JSON && !quiet) {
        dx_buf_clear(&k->scratch);
        if (dx__gw_ack_sub_encode(&k->scratch, 0, gw_req_id(s->has_id, s->id), s->name, s->len, snap->offset,
                                  snap->epoch, strlen(snap->epoch), snap->recovered) == 0)
            gw_send_scratch(g);
    }
    s->last = snap->recovered ? snap->offset - snap->n : snap->offset;
    s->ack_offset = snap->offset;
    s->ack_recovered = snap->recovered;
    (void)dx__gw_stitch_history(&s->st, snap);
    dx__gw_stitch_deinit(&s->st);
    if ((g->dialect != GW_JSON || quiet) && --g->waiting == 0)
        gw_conn_ready(g);
    gw_conn_unref(g);
}

int gw_subscribe(gw_conn *g, const char *name, size_t len, bool has_id, uint64_t id, bool resume, uint64_t since,
                 const char *epoch, size_t elen)
{
    gw_worker *k = g->k;
    gw_flush_pending(k); /* messages handed over before this subscription are not for it */
    if (g->nsubs == g->capsubs) {
        size_t cap = g->capsubs ? g->capsubs * 2 : 2;
        gw_sub **n = dx__realloc(NULL, g->subs, cap * sizeof *n);
        if (!n)
            return DX_ENOMEM;
        g->subs = n;
        g->capsubs = cap;
    }
    gw_sub *s = dx__alloc(NULL, sizeof *s);
    if (!s)
        return DX_ENOMEM;
    memset(s, 0, sizeof *s);
    s->name = dx__alloc(NULL, len + 1);
    if (!s->name) {
        dx__free(NULL, s);
        return DX_ENOMEM;
    }
    memcpy(s->name, name, len);
    s->name[len] = 0;
    s->len = len;
    s->g = g;
    s->has_id = has_id;
    s->id = id;
    s->quiet = g->dialect == GW_JSON && g->up != NULL; /* the JSON dialect's handshake: user: topic */
    s->pattern = dx__gw_topic_classify(name, len) == DX__GW_TOPIC_PATTERN;
    int rc = dx__gw_topic_subscribe(k->ix, name, len, g);
    if (rc != 0) {
        sub_free(s);
        return rc < 0 ? rc : DX_ESTATE;
    }
    g->subs[g->nsubs++] = s;
    dx__bus_interest(k->gw->bus, k->index, 1);
    gw_inc(&k->m.subscriptions, 1);
    if (s->pattern) {
        dx__bus_pattern(k->gw->bus, k->index, name, len, 1);
        return 0;
    }
    dx__gw_stitch_init(&s->st, NULL, &gw_stitch_ops, s);
    s->pending = true;
    g->npending++;
    g->refs++;
    rc = dx__bus_subscribe(k->gw->bus, k->index, name, len, g->user, g->ulen, true, resume, since, epoch, elen,
                           sub_done, s);
    if (rc != 0) {
        s->pending = false;
        g->npending--;
        g->refs--;
        (void)dx__gw_topic_unsubscribe(k->ix, name, len, g);
        g->nsubs--;
        dx__bus_interest(k->gw->bus, k->index, -1);
        gw_dec(&k->m.subscriptions, 1);
        sub_free(s);
        return rc;
    }
    return 0;
}

/* ---- server callbacks -------------------------------------------------------------- */

static bool offered(const dx_request *req, const char *name)
{
    size_t cur = 0, len;
    const char *p;
    size_t nl = strlen(name);
    while (dx_request_protocol(req, &cur, &p, &len))
        if (len == nl && memcmp(p, name, nl) == 0)
            return true;
    return false;
}

#define GW_LIST_MAX 256 /* topics in one subscribe= / since= list */

bool gw_subscribe_list(gw_conn *g, const char *const *names, const size_t *lens, size_t n, const dx__gw_pos *pos,
                       size_t npos)
{
    g->waiting++; /* held until every subscribe is out (a cluster-wide user count may be awaited too) */
    for (size_t i = 0; i < n; i++) {
        const dx__gw_pos *p = NULL;
        for (size_t j = 0; j < npos; j++)
            if (pos[j].topic_len == lens[i] && !memcmp(pos[j].topic, names[i], lens[i]))
                p = &pos[j];
        bool pattern = dx__gw_topic_classify(names[i], lens[i]) == DX__GW_TOPIC_PATTERN;
        if (pattern)
            p = NULL; /* live only: a position names topics */
        else
            g->waiting++;
        if (gw_subscribe(g, names[i], lens[i], false, 0, p != NULL, p ? p->offset : 0, p ? p->epoch : NULL,
                         p ? p->epoch_len : 0) != 0) {
            if (!pattern)
                g->waiting--;
            g->fail_status = 503;
            break;
        }
    }
    return --g->waiting == 0;
}

static void ready_post(void *arg)
{
    gw_conn *g = arg;
    gw_conn_ready(g);
    gw_conn_unref(g);
}

static void ready_drop(void *arg)
{
    gw_conn_unref(arg);
}

/* Answers g's deferred upgrade from the loop, not inside on_upgrade (see
 * on_upgrade: only a deferred accept guarantees on_open). */
static void answer_later(gw_conn *g)
{
    g->refs++;
    if (dx_loop_post_ex(g->k->loop, ready_post, ready_drop, g) != 0) {
        g->refs--;
        g->fail_status = 503;
        gw_conn_ready(g);
    }
}

/* JSON dialect with a token: deferred like a raw one, so that its user:
 * topic is subscribed (quietly: no ack) before the 101 and the
 * connection carries its claims from the start. claims: owned. */
static int json_upgrade(gw_worker *k, dx_request *req, dx__jwt_claims *claims)
{
    gw_conn *g = gw_conn_new(k, GW_JSON);
    if (!g) {
        dx__jwt_claims_free(claims);
        return 503;
    }
    if (gw_auth_attach(g, claims) != 0) {
        gw_conn_gone(g);
        return 503;
    }
    /* the limits counted now, strictly (anonymous JSON ones: at on_open) */
    if (gw_admit_count_ip(g, req->remote, true) != 0 || gw_admit_count_user(g, true) != 0) {
        gw_conn_gone(g);
        return 429;
    }
    int st = gw_admit_bus_user(g); /* cluster-wide: its answer is awaited like a subscription */
    if (st || !(g->up = dx_request_defer(req))) {
        gw_conn_gone(g);
        return st ? st : 503;
    }
    char ut[DX__GW_TOPIC_MAX + 1];
    const char *name = ut;
    size_t len = gw_auth_user_topic(g->claims, ut);
    if (gw_subscribe_list(g, &name, &len, 1, NULL, 0))
        answer_later(g); /* the subscribe could not go out: 503 */
    return DX_UPGRADE_DEFER;
}

/* The checks of a raw request's query (GATEWAY.md "Raw dialect"): 0 or
 * the HTTP status refusing it. */
static int raw_parse(gw_worker *k, dx_request *req, const char **names, size_t *lens, int *nsubp, long *plenp,
                     char *pubbuf, size_t pubcap, dx__gw_pos *pos, int *nposp)
{
    dx_gateway *gw = k->gw;
    const char *v;
    size_t vlen;
    static _Thread_local char subbuf[8192], sincebuf[8192];
    int nsub = 0;
    if (gw_query_get(req->query, req->query_len, "subscribe", &v, &vlen) && vlen) {
        nsub = gw_split_list(v, vlen, subbuf, sizeof subbuf, names, lens, GW_LIST_MAX);
        if (nsub < 0) {
            gw_logf(k, DX_LOG_INFO, "gateway: %s /ws refused 400: malformed subscribe list", req->remote);
            return 400;
        }
    }
    if ((size_t)nsub > gw->o.max_subs) {
        gw_logf(k, DX_LOG_INFO, "gateway: %s /ws refused 400: more than %zu subscriptions", req->remote,
                gw->o.max_subs);
        return 400;
    }
    for (int i = 0; i < nsub; i++) {
        if (dx__gw_topic_check_sub(names[i], lens[i]) != 0) {
            gw_logf(k, DX_LOG_INFO, "gateway: %s /ws refused 400: bad topic '%.*s'", req->remote, (int)lens[i] % 201,
                    names[i]);
            return 400;
        }
        if (!gw_admit_topic(k, names[i], lens[i]))
            return 400;
        for (int j = 0; j < i; j++)
            if (lens[j] == lens[i] && !memcmp(names[j], names[i], lens[i])) {
                gw_logf(k, DX_LOG_INFO, "gateway: %s /ws refused 400: topic listed twice", req->remote);
                return 400;
            }
    }
    long plen = -1;
    if (gw_query_get(req->query, req->query_len, "publish", &v, &vlen) && vlen) {
        plen = gw_pct_decode(v, vlen, pubbuf, pubcap);
        if (plen < 0 || dx__gw_topic_check(pubbuf, (size_t)plen) != 0) {
            gw_logf(k, DX_LOG_INFO, "gateway: %s /ws refused 400: bad publish topic (a pattern cannot be published to)",
                    req->remote);
            return 400;
        }
        if (!gw_admit_topic(k, pubbuf, (size_t)plen))
            return 400;
    }
    int npos = 0;
    if (gw_query_get(req->query, req->query_len, "since", &v, &vlen) && vlen) {
        long sl = gw_pct_decode(v, vlen, sincebuf, sizeof sincebuf);
        npos = sl < 0 ? -1 : dx__gw_pos_parse(sincebuf, (size_t)sl, false, pos, GW_LIST_MAX);
        if (npos < 0) {
            gw_logf(k, DX_LOG_INFO, "gateway: %s /ws refused 400: malformed since", req->remote);
            return 400;
        }
        for (int i = 0; i < npos; i++) {
            int j;
            for (j = 0; j < nsub; j++)
                if (lens[j] == pos[i].topic_len && !memcmp(names[j], pos[i].topic, lens[j]))
                    break;
            if (j == nsub || dx__gw_topic_check(pos[i].topic, pos[i].topic_len) != 0) {
                gw_logf(k, DX_LOG_INFO, "gateway: %s /ws refused 400: since names a topic not subscribed", req->remote);
                return 400;
            }
        }
    }
    *nsubp = nsub;
    *plenp = plen;
    *nposp = npos;
    return 0;
}

/* claims: the token's (owned from here on), NULL: anonymous. */
static int raw_upgrade(gw_worker *k, dx_request *req, dx__jwt_claims *claims)
{
    static _Thread_local char pubbuf[256], userbuf[DX__GW_TOPIC_MAX + 1];
    const char *names[GW_LIST_MAX + 1];
    size_t lens[GW_LIST_MAX + 1];
    dx__gw_pos pos[GW_LIST_MAX];
    int nsub = 0, npos = 0;
    long plen = -1;
    int st = raw_parse(k, req, names, lens, &nsub, &plen, pubbuf, sizeof pubbuf, pos, &npos);
    if (st) {
        dx__jwt_claims_free(claims);
        return st;
    }
    gw_conn *g = gw_conn_new(k, GW_RAW);
    if (!g) {
        dx__jwt_claims_free(claims);
        return 503;
    }
    if (claims) {
        if (gw_auth_attach(g, claims) != 0) {
            gw_conn_gone(g);
            return 503;
        }
    }
    if (gw_admit_count_ip(g, req->remote, true) != 0) {
        gw_conn_gone(g);
        return 429;
    }
    for (int i = 0; i < nsub; i++) {
        if (gw_policy_check(g, GW_ACT_SUBSCRIBE, names[i], lens[i]) != 0) {
            gw_logf(k, DX_LOG_INFO, "gateway: %s /ws refused 403: may not subscribe to '%.*s'", req->remote,
                    (int)lens[i], names[i]);
            gw_conn_gone(g);
            return 403;
        }
    }
    nsub = (int)gw_auth_list_user_topic(g, userbuf, names, lens, (size_t)nsub); /* unless listed */
    if (gw_admit_count_user(g, true) != 0) { /* an authenticated user past conns_per_user */
        gw_conn_gone(g);
        return 429;
    }
    if ((st = gw_admit_bus_user(g)) != 0) { /* cluster-wide: awaited like a subscription */
        gw_conn_gone(g);
        return st;
    }
    if (plen >= 0) {
        if (gw_policy_check(g, GW_ACT_PUBLISH, pubbuf, (size_t)plen) != 0) {
            gw_logf(k, DX_LOG_INFO, "gateway: %s /ws refused 403: may not publish to '%.*s'", req->remote, (int)plen,
                    pubbuf);
            gw_conn_gone(g);
            return 403;
        }
        g->pub = dx__alloc(NULL, (size_t)plen + 1);
        if (!g->pub) {
            gw_conn_gone(g);
            return 503;
        }
        memcpy(g->pub, pubbuf, (size_t)plen + 1);
        g->pub_len = (size_t)plen;
    }
    /* Deferred, so that on_open is certain once accepted (see
     * dx_upgrade_accept) and the subscriptions are in before the 101. */
    g->up = dx_request_defer(req);
    if (!g->up) {
        gw_conn_gone(g);
        return 503;
    }
    if (nsub == 0 ? g->waiting == 0 : gw_subscribe_list(g, names, lens, (size_t)nsub, pos, (size_t)npos))
        answer_later(g); /* nothing awaited (patterns only) */
    return DX_UPGRADE_DEFER;
}

void gw_conn_ready(gw_conn *g)
{
    gw_worker *k = g->k;
    if (g->dialect == GW_SSE) {
        gw_sse_ready(g);
        return;
    }
    dx_upgrade *h = g->up;
    g->up = NULL;
    if (!h)
        return;
    if (g->fail_status || g->gone) {
        (void)dx_upgrade_refuse(h, g->fail_status ? g->fail_status : 503, "Retry-After: 1\r\n");
        gw_inc(&k->m.handshakes_refused, 1);
        gw_conn_gone(g);
        return;
    }
    /* JSON: duplex.v1, never a token.<jwt> the client also offered */
    if (dx_upgrade_accept(h, g->dialect == GW_JSON ? "duplex.v1" : NULL, g) != 0) {
        gw_conn_gone(g); /* on_open never comes */
        return;
    }
    gw_inc(&k->m.handshakes, 1);
}

/* Only their addresses matter. tag_echo stays an /echo connection's user
 * pointer for its whole life: it needs no gw_conn (nothing but the echo and
 * the open-connections gauge), so an idle one costs the gateway nothing. */
static char tag_echo, tag_json;

static int on_upgrade(dx_server *srv, dx_request *req, void *ud)
{
    gw_worker *k = ud;
    (void)srv;
    if (k->stopping)
        return 503;
    /* JSON and echo connections get their gw_conn in on_open (a 101 that
     * cannot be written never reaches on_open, and nothing would free it);
     * the user pointer says which. Raw ones are deferred (raw_upgrade). */
    if (req->path_len == 5 && memcmp(req->path, "/echo", 5) == 0) {
        dx_request_set_user(req, &tag_echo);
        return 0;
    }
    if (!(req->path_len == 3 && memcmp(req->path, "/ws", 3) == 0))
        return 404;
    size_t hlen = 0;
    const char *host = dx_request_header(req, "Host", &hlen);
    char hdr[64];
    int st = gw_admit_request(k, "/ws", req->remote, req->origin, req->origin_len, host, hlen, hdr, sizeof hdr);
    if (st) {
        gw_inc(&k->m.handshakes_refused, 1);
        dx_upgrade *h = hdr[0] ? dx_request_defer(req) : NULL;
        if (!h)
            return st;
        (void)dx_upgrade_refuse(h, st, hdr); /* applied when on_upgrade returns: with Retry-After */
        return DX_UPGRADE_DEFER;
    }
    dx__jwt_claims *claims = NULL;
    st = gw_auth_upgrade(k, req, &claims); /* auth.c: who is this */
    if (st) {
        gw_inc(&k->m.handshakes_refused, 1);
        return st;
    }
    if (offered(req, "duplex.v1")) {
        if (claims) {
            st = json_upgrade(k, req, claims);
            if (st != DX_UPGRADE_DEFER)
                gw_inc(&k->m.handshakes_refused, 1);
            return st;
        }
        if (dx_request_select_protocol(req, "duplex.v1", 9) != 0)
            return 500;
        dx_request_set_user(req, &tag_json);
        gw_inc(&k->m.handshakes, 1);
        return 0;
    }
    st = raw_upgrade(k, req, claims);
    if (st != 0 && st != DX_UPGRADE_DEFER)
        gw_inc(&k->m.handshakes_refused, 1);
    return st;
}

static void on_open(dx_conn *c, void *ud)
{
    gw_worker *k = ud;
    gw_conn *g = dx_conn_user(c);
    if (g == (void *)&tag_echo) {
        gw_inc(&k->m.conns[GW_ECHO], 1);
        if (k->stopping) { /* opened while draining: straight to the 1012 */
            char why[32];
            snprintf(why, sizeof why, "retry=%u", gw_lim(k)->reconnect_hint_ms);
            (void)dx_conn_close(c, 1012, why, strlen(why));
        }
        return;
    }
    if (g == (void *)&tag_json) {
        g = gw_conn_new(k, GW_JSON);
        dx_conn_set_user(c, g);
    }
    if (!g) {
        (void)dx_conn_close(c, 1011, "out of memory", 13);
        return;
    }
    g->c = c;
    g->id = dx_conn_id(c);
    g->open = true;
    gw_inc(&k->m.conns[g->dialect], 1);
    if (g->dialect == GW_JSON) { /* checked at on_upgrade; counted from here (raw: at its upgrade) */
        char remote[64];
        if (dx_conn_remote(c, remote, sizeof remote) < sizeof remote)
            (void)gw_admit_count_ip(g, remote, false);
        (void)gw_admit_count_user(g, false); /* checked at on_upgrade (gw_admit_user_room) */
    }
    if (k->stopping) { /* opened while draining: straight to the 1012 */
        char why[32];
        snprintf(why, sizeof why, "retry=%u", gw_lim(k)->reconnect_hint_ms);
        g->closing = false;
        gw_conn_close(g, 1012, why);
        return;
    }
    if (g->early_code) { /* closed while the 101 was on its way */
        g->closing = false;
        gw_conn_close(g, g->early_code, g->early_why);
        return;
    }
    if (g->overflowed) { /* more arrived than the budget while the 101 was on its way */
        g->closing = false;
        gw_conn_close(g, 1013, "slow consumer");
        return;
    }
    gw_flush_held(g);
}

static void gw_message(gw_conn *g, int opcode, const uint8_t *data, size_t len, gw_worker *k);

/* /echo first, with nothing to save: the rest (gw_message) is out of line,
 * so the echo's per-message call does not pay its prologue. */
static void on_message(dx_conn *c, int opcode, const uint8_t *data, size_t len, void *ud)
{
    gw_conn *g = dx_conn_user(c);
    if (g == (void *)&tag_echo) {
        (void)dx_conn_send(c, opcode, data, len);
        return;
    }
    gw_message(g, opcode, data, len, ud);
}

__attribute__((noinline)) static void gw_message(gw_conn *g, int opcode, const uint8_t *data, size_t len,
                                                 gw_worker *k)
{
    if (!g || g->closing)
        return;
    switch (g->dialect) {
    case GW_JSON:
        if (opcode != DX_OP_TEXT) {
            if (gw_admit_message(g, false, 0))
                gw_send_err(g, false, 0, DX__GW_E_MALFORMED, "binary frames are not part of the JSON dialect");
            return;
        }
        gw_json_message(g, data, len);
        return;
    default:
        break;
    }
    if (!g->pub) {
        gw_logf(k, DX_LOG_INFO, "gateway: conn=%llu raw client sent a message without ?publish=: closed 1008",
                (unsigned long long)g->id);
        gw_conn_close(g, 1008, "no publish topic");
        return;
    }
    if (!gw_admit_message(g, false, 0))
        return; /* refused (closed 1008) */
    const char *why = NULL;
    int ac = gw_admit_publish(g, g->pub, g->pub_len, len, false, 0, &why);
    if (ac == DX__GW_E_TOOBIG) {
        gw_conn_close(g, 1009, "message too big for this namespace");
        return;
    }
    if (ac)
        return;
    int rc = gw_publish(g, g->pub, g->pub_len, opcode == DX_OP_BINARY ? DX__GW_KIND_BINARY : DX__GW_KIND_TEXT, data,
                     len, false, 0);
    if (rc) {
        gw_inc(&k->m.publishes_refused, 1);
        /* the bus unreachable or full (Redis): try again later, like a 503 */
        gw_conn_close(g, rc == DX_EIO || rc == DX_ELIMIT ? 1013 : 1011, "publish failed");
    }
}

static void on_drain(dx_conn *c, void *ud)
{
    (void)ud;
    gw_conn *g = dx_conn_user(c);
    if (g == (void *)&tag_echo)
        return;
    if (g && (g->nheld || g->ngaps))
        gw_flush_held(g);
    if (g && g->draining)
        gw_admit_drain_check(g);
}

static void on_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    (void)code;
    (void)reason;
    (void)len;
    gw_conn *g = dx_conn_user(c);
    if (g == (void *)&tag_echo) {
        gw_worker *k = ud;
        gw_dec(&k->m.conns[GW_ECHO], 1);
        return;
    }
    if (g)
        gw_conn_gone(g);
}

static int on_http(dx_server *srv, dx_http_req *req, void *ud)
{
    (void)srv;
    return gw_api_http(ud, req);
}

/* ---- workers ---------------------------------------------------------------------- */

static void on_tick(dx_timer *t, void *ud)
{
    (void)t;
    gw_worker *k = ud;
    uint64_t q = 0;
    dx_list_foreach(it, &k->conns) {
        gw_conn *g = dx_list_entry(it, gw_conn, node);
        if (g->c && !g->gone)
            q += dx_conn_buffered(g->c);
        else if (g->s && !g->gone)
            q += gw_sse_buffered(g);
        if (g->open && !g->closing && (g->nheld || g->ngaps) && !g->recheck)
            gw_recheck_later(g); /* not here: flushing may close, and this walks the list */
    }
    atomic_store_explicit(&k->m.queued_bytes, q, memory_order_relaxed);
    if (k->srv) {
        dx_server_stats st;
        dx_server_stats_get(k->srv, &st);
        const uint64_t v[GW_NPMD] = {
            [GW_PMD_MSGS_OUT] = st.deflate_messages_out, [GW_PMD_RAW_OUT] = st.deflate_bytes_raw,
            [GW_PMD_WIRE_OUT] = st.deflate_bytes_wire,   [GW_PMD_MSGS_IN] = st.inflate_messages_in,
            [GW_PMD_WIRE_IN] = st.inflate_bytes_wire,    [GW_PMD_RAW_IN] = st.inflate_bytes_raw,
            [GW_PMD_DOWNGRADES] = st.deflate_downgrades, [GW_PMD_REFUSED] = st.deflate_refused,
            [GW_PMD_MEM] = st.deflate_mem,
        };
        for (int i = 0; i < GW_NPMD; i++)
            atomic_store_explicit(&k->m.pmd[i], v[i], memory_order_relaxed);
    }
    gw_sse_tick(k);
    gw_auth_tick(k);
    gw_admit_tick(k);
    /* a reload whose post to this worker could not be queued */
    pthread_mutex_lock(&k->gw->pol_mu);
    bool stale = k->pol != k->gw->pol;
    pthread_mutex_unlock(&k->gw->pol_mu);
    if (stale)
        gw_policy_take(k);
}

static void on_demo(dx_timer *t, void *ud)
{
    (void)t;
    gw_worker *k = ud;
    char buf[128];
    uint64_t n = ++k->demo_n;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    /* A made-up price around 100, deterministic from n (a triangle wave
     * plus a little jitter): the demo page draws it. */
    uint64_t ph = n % 40;
    double price = 100.0 + (double)(ph < 20 ? ph : 40 - ph) / 4.0 + (double)((n * 7919) % 11) / 20.0;
    int len = snprintf(buf, sizeof buf, "{\"n\":%llu,\"t\":%llu,\"price\":%.2f}", (unsigned long long)n,
                       (unsigned long long)ms, price);
    (void)dx__bus_publish(k->gw->bus, k->index, "demo.ticker", 11, DX__GW_KIND_JSON, buf, (size_t)len, NULL, NULL);
}

dx_gateway *dx_gateway_new_sized(const dx_gateway_options *opt, size_t opt_size, unsigned workers, int *err)
{
    int e = DX_EINVAL;
    dx_gateway *gw = NULL;
    char why[256];
    if (workers == 0 || workers > 1024 || opt_size > sizeof(dx_gateway_options))
        goto fail;
    e = DX_ENOMEM;
    gw = dx__alloc(NULL, sizeof *gw);
    if (!gw)
        goto fail;
    memset(gw, 0, sizeof *gw);
    if (opt)
        memcpy(&gw->o, opt, opt_size);
    dx_gateway_options *o = &gw->o;
    if (!o->sub_queue)
        o->sub_queue = (size_t)1 << 20;
    if (!o->max_subs)
        o->max_subs = 100;
    if (!o->max_message)
        o->max_message = (size_t)1 << 20;
    if (!o->sse_heartbeat_ms)
        o->sse_heartbeat_ms = 15000;
    if (!o->max_inflight)
        o->max_inflight = 256;
    if (!o->demo_interval_ms)
        o->demo_interval_ms = 1000;
    pthread_mutex_init(&gw->pol_mu, NULL);
    gw->pol = gw_policy_new(o, why, sizeof why);
    if (!gw->pol) {
        e = strcmp(why, "out of memory") == 0 ? DX_ENOMEM : DX_EINVAL;
        if (o->log)
            o->log(o->log_ud, DX_LOG_ERROR, why);
        goto fail;
    }
    /* the cluster settings are read here, before the policy part is cleared */
    const char *redis_url = o->redis_url;
    size_t redis_pending_max = o->redis_pending_max;
    bool redis_cluster = o->redis_cluster != 0;
    unsigned presence_ttl_ms = o->presence_ttl_ms;
    const char *redis_tls[3] = {o->redis_tls_ca, o->redis_tls_cert, o->redis_tls_key};
    /* the policy is read from gw->pol only: nothing borrowed is kept */
    o->api_key = NULL;
    memset(&o->auth, 0, sizeof *o - offsetof(dx_gateway_options, auth));
    if ((e = gw_counts_init(&gw->counts, 0)) != 0)
        goto fail;
    gw->users_on_bus = redis_url != NULL;
    gw->counts_ok = true;
    e = DX_ENOMEM;
    dx__bus_local_opts bo = {.workers = workers, .history_for = gw_admit_history_for, .history_ud = gw};
    dx__gw_log_opts_default(&bo.history);
    if (o->history_count == (size_t)-1)
        bo.history.max_count = 0;
    else if (o->history_count)
        bo.history.max_count = o->history_count;
    if (o->history_age_ms == UINT64_MAX)
        bo.history.max_age_ns = 0;
    else if (o->history_age_ms)
        bo.history.max_age_ns = o->history_age_ms * 1000000u;
    gw->n = workers;
    gw->start_ns = dx__now_ns(NULL);
    if (redis_url) {
        dx__bus_redis_opts ro = {.workers = workers, .url = redis_url, .cluster = redis_cluster, .tls_ca = redis_tls[0],
                                 .tls_cert = redis_tls[1], .tls_key = redis_tls[2], .history = bo.history,
                                 .pending_max = redis_pending_max, .presence_ttl_ms = presence_ttl_ms,
                                 .log = o->log, .log_ud = o->log_ud};
        gw->bus = dx__bus_redis_new(&ro, &e, why, sizeof why);
        if (!gw->bus && o->log)
            o->log(o->log_ud, DX_LOG_ERROR, why);
    } else {
        gw->bus = dx__bus_local_new(&bo, &e);
    }
    if (!gw->bus)
        goto fail;
    gw->w = dx__alloc(NULL, workers * sizeof *gw->w);
    if (!gw->w)
        goto fail;
    memset(gw->w, 0, workers * sizeof *gw->w);
    for (unsigned i = 0; i < workers; i++) {
        gw_worker *k = &gw->w[i];
        k->gw = gw;
        k->index = i;
        dx_list_init(&k->conns);
        dx_list_init(&k->rpaused);
        dx_list_init(&k->ucq);
        dx_list_init(&k->uclate);
        dx_buf_init(&k->scratch, NULL);
        dx_buf_init(&k->scratch2, NULL);
        dx_buf_init(&k->sse_msg, NULL);
        if ((e = dx__gw_topic_index_new(NULL, &k->ix)) != 0)
            goto fail;
    }
    return gw;
fail:
    if (gw) {
        if (gw->w)
            for (unsigned i = 0; i < workers; i++)
                dx__gw_topic_index_free(gw->w[i].ix);
        dx__free(NULL, gw->w);
        dx__bus_free(gw->bus);
        gw_policy_unref(gw->pol);
        if (gw->counts_ok)
            gw_counts_deinit(&gw->counts);
        dx__free(NULL, gw);
    }
    if (err)
        *err = e;
    return NULL;
}

int dx_gateway_server_options(dx_gateway *gw, unsigned i, dx_server_options *so)
{
    if (!gw || i >= gw->n || !so)
        return DX_EINVAL;
    so->cb.on_upgrade = on_upgrade;
    so->cb.on_http = on_http;
    so->cb.on_open = on_open;
    so->cb.on_message = on_message;
    so->cb.on_drain = on_drain;
    so->cb.on_close = on_close;
    so->ud = &gw->w[i];
    so->max_message = gw->o.max_message;
    /* The API checks the key before the size (GATEWAY.md): the server
     * reads bodies up to twice the limit, the API answers 413 past it. */
    if (!so->max_http_body)
        so->max_http_body = 2 * gw->o.max_message;
    if (!so->http_max_requests)
        so->http_max_requests = 100000; /* a backend publishes on one kept-alive connection */
    /* The gateway applies its own budget (sub_queue) before the server's
     * send_max: by default send_max stays above it by a message and the
     * replies around it; a send_max the user chose is kept, and the budget
     * shrinks to half of it when it would not fit (logged once). */
    if (!so->send_max) {
        so->send_max = gw->o.sub_queue + 2 * gw->o.max_message + 65536;
    } else if (gw->o.sub_queue + 65536 > so->send_max) {
        size_t was = gw->o.sub_queue;
        gw->o.sub_queue = so->send_max / 2;
        gw_logf(&gw->w[i], DX_LOG_WARN, "gateway: the subscriber budget (%zu bytes) does not fit under send_max "
                "(%zu): using %zu", was, so->send_max, gw->o.sub_queue);
    }
    /* on_drain must be reachable below the subscriber budget (drop-oldest
     * also re-checks from the loop, so a larger value only delays it) */
    if (!so->send_high_water)
        so->send_high_water = gw->o.sub_queue / 4 < 65536 ? gw->o.sub_queue / 4 : 65536;
    return 0;
}

int dx_gateway_attach(dx_gateway *gw, unsigned i, dx_loop *loop, dx_server *srv)
{
    if (!gw || i >= gw->n || !loop || !srv)
        return DX_EINVAL;
    gw_worker *k = &gw->w[i];
    k->loop = loop;
    k->srv = srv;
    gw_policy_take(k);
    int rc = dx__bus_attach(gw->bus, i, loop, &gw_bus_events, k);
    if (rc)
        return rc;
    k->tick = dx_timer_new(loop, on_tick, k);
    if (!k->tick)
        return DX_ENOMEM;
    dx_timer_start(k->tick, 1000, 1000);
    if (gw->o.demo && i == 0) {
        k->demo = dx_timer_new(loop, on_demo, k);
        if (!k->demo)
            return DX_ENOMEM;
        dx_timer_start(k->demo, gw->o.demo_interval_ms, gw->o.demo_interval_ms);
    }
    return 0;
}

/* The first call starts the drain (admit.c): new requests get 503 and
 * /healthz "draining"; each connection is closed 1012 "retry=MS" once its
 * backlog is out, all by drain_ms. Later calls only count. */
size_t dx_gateway_shutdown(dx_gateway *gw, unsigned i)
{
    gw_worker *k = &gw->w[i];
    if (!k->stopping) {
        k->stopping = true;
        if (k->demo)
            dx_timer_stop(k->demo);
        if (k->loop) /* attached: it may have connections */
            gw_admit_drain_start(k);
    }
    size_t n = 0;
    dx_list_foreach(it, &k->conns) {
        gw_conn *g = dx_list_entry(it, gw_conn, node);
        n += g->dialect != GW_ECHO && !g->gone;
    }
    return n;
}

void dx_gateway_free(dx_gateway *gw)
{
    if (!gw)
        return;
    gw->freeing = true;
    for (unsigned i = 0; i < gw->n; i++) {
        gw_worker *k = &gw->w[i];
        dx_list_foreach_safe(it, tmp, &k->conns) {
            gw_conn *g = dx_list_entry(it, gw_conn, node);
            if (g->c)
                dx_conn_set_user(g->c, NULL); /* the server, freed after, finds no gw_conn */
            gw_conn_gone(g);
        }
        if (k->tick)
            dx_timer_free(k->tick);
        if (k->demo)
            dx_timer_free(k->demo);
        k->tick = k->demo = NULL;
        gw_admit_worker_free(k);
    }
    dx__bus_free(gw->bus); /* completions of pending requests run now, with DX_ECLOSED */
    for (unsigned i = 0; i < gw->n; i++) {
        gw_worker *k = &gw->w[i];
        for (size_t j = 0; j < k->npend; j++) {
            dx__bus_topic_unref(k->pend[j].t);
            dx__gw_entry_unref(k->pend[j].e);
        }
        dx__free(NULL, k->pend);
        dx__free(NULL, k->pend_spare);
        gw_pcache_reset(k);
        gw_admit_bus_free(k);
        dx__gw_topic_index_free(k->ix);
        dx_buf_deinit(&k->scratch);
        dx_buf_deinit(&k->scratch2);
        gw_sse_release(k);
        gw_auth_worker_free(k);
    }
    for (unsigned i = 0; i < gw->n; i++)
        gw_policy_unref(gw->w[i].pol);
    dx__free(NULL, gw->w);
    gw_policy_unref(gw->pol);
    pthread_mutex_destroy(&gw->pol_mu);
    gw_counts_deinit(&gw->counts);
    dx__free(NULL, gw);
}
