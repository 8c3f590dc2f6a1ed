/*
 * src/gateway/admit.c: the gateway's limits applied (docs/security.md,
 * docs/gateway.md "Limits", "Namespaces", "Drain"): Origin and CORS, the
 * handshake rate and live connections per address and per user, the
 * message rate per connection (pause, refuse or close), the namespace
 * rules on a publish (allowed, size, own rate), and the drain on shutdown.
 * The data structures are in limits.c; this file holds their use by a
 * worker: logging (at most one line per limit per second per worker, with
 * the count of those not logged), counters for /metrics, and the rate
 * pauses.
 *
 * Threading: the shared counts (gw->counts) are taken under their mutex,
 * at handshakes and at the end of a connection only; the rest belongs to
 * the worker's thread. No callback fires inside these calls:
 * dx_conn_pause/resume/close defer theirs to the loop.
 *
 * Rate pauses: a connection over its rate has its reading paused and sits
 * in the worker's `rpaused` list with the time its bucket has a token
 * again; one timer per worker, armed for the earliest of those, resumes
 * them. No timer per connection, nothing scanned while nobody is paused.
 */
#define _GNU_SOURCE
#include "gateway/gw.h"

#include "core/seams.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const lim_name[GW_NLIM] = {"origin",     "no_origin",    "handshake_rate", "conns_per_ip",
                                              "conns_per_user", "topic_length", "message_size", "api_body",
                                              "namespace_publish", "namespace_presence", "conns_per_user_unavailable"};

/* Counts a refusal by limit `l` and logs it, at most once a second per
 * limit on this worker (a flood must not flood the log). */
static void refused(gw_worker *k, enum gw_limit l, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void refused(gw_worker *k, enum gw_limit l, const char *fmt, ...)
{
    static _Thread_local uint64_t last[GW_NLIM], quiet[GW_NLIM];
    gw_inc(&k->m.limit[l], 1);
    uint64_t now = dx__now_ns(NULL);
    if (last[l] && now - last[l] < 1000000000u) {
        quiet[l]++;
        return;
    }
    last[l] = now;
    char line[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (quiet[l])
        gw_logf(k, DX_LOG_INFO, "%s (limit %s; %llu more not logged)", line, lim_name[l],
                (unsigned long long)quiet[l]);
    else
        gw_logf(k, DX_LOG_INFO, "%s (limit %s)", line, lim_name[l]);
    quiet[l] = 0;
}

/* ---- handshakes ----------------------------------------------------------------- */

int gw_admit_request(gw_worker *k, const char *path, const char *remote, const char *origin, size_t olen,
                     const char *host, size_t hlen, char *hdr, size_t hdrcap)
{
    const gw_limits_cfg *c = gw_lim(k);
    hdr[0] = 0;
    if (!gw_limits_origin_ok(c, origin, olen, host, hlen)) {
        if (origin)
            refused(k, GW_LIM_ORIGIN, "gateway: %s %s refused 403: Origin '%.*s' is not allowed%s", remote, path,
                    (int)(olen > 200 ? 200 : olen), origin,
                    c->norigins ? " (not in --origin)" : " (does not match Host; see --origin)");
        else
            refused(k, GW_LIM_NO_ORIGIN, "gateway: %s %s refused 403: no Origin header (--allow-no-origin off)",
                    remote, path);
        return 403;
    }
    int fam;
    uint64_t key;
    if (!gw_addr_key(remote, &fam, &key))
        return 0; /* unix socket: no address to count */
    unsigned retry = 1;
    gw_counts *cn = &k->gw->counts;
    pthread_mutex_lock(&cn->mu);
    bool ok = gw_hstable_take(&cn->hs, fam, key, c->handshakes_per_ip, c->handshake_burst, dx__now_ns(NULL), &retry);
    size_t live = ok ? dx__ipcount_get(&cn->ip, fam, key) : 0;
    pthread_mutex_unlock(&cn->mu);
    if (!ok) {
        refused(k, GW_LIM_HANDSHAKE_RATE,
                "gateway: %s %s refused 429: more than %g handshakes per second from this address (burst %g)",
                remote, path, c->handshakes_per_ip, c->handshake_burst);
        snprintf(hdr, hdrcap, "Retry-After: %u\r\n", retry);
        return 429;
    }
    if (live >= c->conns_per_ip) {
        refused(k, GW_LIM_CONNS_IP, "gateway: %s %s refused 429: %zu connections from this address already",
                remote, path, live);
        snprintf(hdr, hdrcap, "Retry-After: 5\r\n");
        return 429;
    }
    return 0;
}

int gw_admit_count_ip(gw_conn *g, const char *remote, bool strict)
{
    gw_worker *k = g->k;
    const gw_limits_cfg *c = gw_lim(k);
    int fam;
    uint64_t key;
    if (g->ipfam || !gw_addr_key(remote, &fam, &key))
        return 0;
    size_t limit = !strict || c->conns_per_ip == SIZE_MAX ? 0 : c->conns_per_ip;
    gw_counts *cn = &k->gw->counts;
    pthread_mutex_lock(&cn->mu);
    int rc = dx__ipcount_add(&cn->ip, NULL, fam, key, limit);
    pthread_mutex_unlock(&cn->mu);
    if (rc == DX_ELIMIT) {
        refused(k, GW_LIM_CONNS_IP, "gateway: %s refused 429: %zu connections from this address already", remote,
                c->conns_per_ip);
        return DX_ELIMIT;
    }
    if (rc == 0) {
        g->ipfam = (uint8_t)fam;
        g->ipkey = key;
    }
    return 0; /* out of memory: not counted, not refused */
}

static void user_refused(gw_worker *k, const char *who, const char *user, size_t len, size_t limit)
{
    refused(k, GW_LIM_CONNS_USER, "gateway: %s user '%.*s' refused 429: %zu connections already", who,
            (int)(len > 100 ? 100 : len), user, limit);
}

bool gw_admit_user_room(gw_worker *k, const char *remote, const char *user, size_t len)
{
    const gw_limits_cfg *c = gw_lim(k);
    if (!user || c->conns_per_user == SIZE_MAX)
        return true;
    gw_counts *cn = &k->gw->counts;
    pthread_mutex_lock(&cn->mu);
    size_t live = gw_users_get(&cn->users, user, len);
    pthread_mutex_unlock(&cn->mu);
    if (live < c->conns_per_user)
        return true;
    user_refused(k, remote, user, len, c->conns_per_user);
    return false;
}

int gw_admit_count_user(gw_conn *g, bool strict)
{
    gw_worker *k = g->k;
    const gw_limits_cfg *c = gw_lim(k);
    if (!g->user || g->user_counted)
        return 0;
    size_t limit = !strict || c->conns_per_user == SIZE_MAX ? 0 : c->conns_per_user;
    gw_counts *cn = &k->gw->counts;
    pthread_mutex_lock(&cn->mu);
    int rc = gw_users_add(&cn->users, g->user, g->ulen, limit);
    pthread_mutex_unlock(&cn->mu);
    if (rc == DX_ELIMIT) {
        char who[32];
        snprintf(who, sizeof who, "conn=%llu", (unsigned long long)g->id);
        user_refused(k, who, g->user, g->ulen, c->conns_per_user);
        return DX_ELIMIT;
    }
    g->user_counted = rc == 0;
    return 0;
}

/* ---- connections per user, cluster-wide ---------------------------------------------- */

/* A +1 asked of the bus for g's user (gw_admit_bus_user). */
typedef struct gw_ucreq {
    dx_list node;         /* in k->ucq until its deadline or g goes, then in k->uclate */
    gw_worker *k;
    gw_conn *g;           /* NULL: timed out or gone; an admitted answer is given back (-1) */
    uint64_t deadline_ns;
    size_t ulen;
    char user[];
} gw_ucreq;

static void on_uctimer(dx_timer *t, void *ud);

/* The timer for the oldest count out (all have the same timeout: the
 * queue is in deadline order). */
static void uc_arm(gw_worker *k)
{
    if (dx_list_empty(&k->ucq)) {
        if (k->uctimer)
            dx_timer_stop(k->uctimer);
        return;
    }
    if (!k->uctimer && !(k->uctimer = dx_timer_new(k->loop, on_uctimer, k)))
        return; /* the 1 s tick expires them (gw_admit_tick) */
    gw_ucreq *r = dx_list_entry(k->ucq.next, gw_ucreq, node);
    uint64_t now = dx__now_ns(NULL);
    uint64_t ms = r->deadline_ns > now ? (r->deadline_ns - now + 999999u) / 1000000u : 0;
    dx_timer_start(k->uctimer, ms ? ms : 1, 0);
}

/* r leaves the queue without its answer: g's handshake goes on without it. */
static void uc_detach(gw_ucreq *r)
{
    dx_list_remove(&r->node);
    dx_list_push_back(&r->k->uclate, &r->node);
    if (r->g)
        r->g->ucreq = NULL;
    r->g = NULL;
}

static void uc_expire(gw_worker *k)
{
    uint64_t now = dx__now_ns(NULL);
    while (!dx_list_empty(&k->ucq)) {
        gw_ucreq *r = dx_list_entry(k->ucq.next, gw_ucreq, node);
        if (r->deadline_ns > now + 500000u)
            break;
        gw_conn *g = r->g;
        uc_detach(r);
        refused(k, GW_LIM_CONNS_USER_BUS,
                "gateway: conn=%llu user '%.*s' refused 503: no cluster-wide connection count within %u ms",
                (unsigned long long)g->id, (int)(g->ulen > 100 ? 100 : g->ulen), g->user, GW_USER_COUNT_TIMEOUT_MS);
        if (!g->fail_status)
            g->fail_status = 503;
        if (--g->waiting == 0)
            gw_conn_ready(g);
    }
    uc_arm(k);
}

static void on_uctimer(dx_timer *t, void *ud)
{
    (void)t;
    uc_expire(ud);
}

static void uc_done(void *ud, int err, uint64_t count)
{
    gw_ucreq *r = ud;
    gw_worker *k = r->k;
    gw_conn *g = r->g;
    dx_list_remove(&r->node);
    if (!g) { /* nobody waits: a slot it got goes back */
        if (!err && !k->gw->freeing)
            (void)dx__bus_user_conns(k->gw->bus, k->index, r->user, r->ulen, -1, 0, NULL, NULL);
        dx__free(NULL, r);
        return;
    }
    dx__free(NULL, r);
    g->ucreq = NULL;
    if (err == DX_ELIMIT) {
        refused(k, GW_LIM_CONNS_USER, "gateway: conn=%llu user '%.*s' refused 429: %llu connections already, cluster-wide",
                (unsigned long long)g->id, (int)(g->ulen > 100 ? 100 : g->ulen), g->user, (unsigned long long)count);
        if (!g->fail_status)
            g->fail_status = 429;
    } else if (err) {
        refused(k, GW_LIM_CONNS_USER_BUS,
                "gateway: conn=%llu user '%.*s' refused 503: the cluster-wide connection count failed: %s",
                (unsigned long long)g->id, (int)(g->ulen > 100 ? 100 : g->ulen), g->user, dx_strerror(err));
        if (!g->fail_status)
            g->fail_status = 503;
    } else {
        g->bus_counted = true;
    }
    uc_arm(k);
    if (--g->waiting == 0)
        gw_conn_ready(g);
}

int gw_admit_bus_user(gw_conn *g)
{
    gw_worker *k = g->k;
    const gw_limits_cfg *c = gw_lim(k);
    if (!k->gw->users_on_bus || !g->user || c->conns_per_user == SIZE_MAX || g->bus_counted || g->ucreq)
        return 0;
    gw_ucreq *r = dx__alloc(NULL, sizeof *r + g->ulen + 1);
    if (!r)
        return 503;
    memset(r, 0, sizeof *r);
    r->k = k;
    r->g = g;
    r->ulen = g->ulen;
    memcpy(r->user, g->user, g->ulen + 1);
    int rc = dx__bus_user_conns(k->gw->bus, k->index, g->user, g->ulen, 1, (uint64_t)c->conns_per_user, uc_done, r);
    if (rc) {
        dx__free(NULL, r);
        refused(k, GW_LIM_CONNS_USER_BUS,
                "gateway: conn=%llu user '%.*s' refused 503: the cluster-wide connection count is unavailable: %s",
                (unsigned long long)g->id, (int)(g->ulen > 100 ? 100 : g->ulen), g->user, dx_strerror(rc));
        return 503;
    }
    r->deadline_ns = dx__now_ns(NULL) + (uint64_t)GW_USER_COUNT_TIMEOUT_MS * 1000000u;
    bool first = dx_list_empty(&k->ucq);
    dx_list_push_back(&k->ucq, &r->node);
    g->ucreq = r;
    g->waiting++;
    if (first)
        uc_arm(k);
    return 0;
}

void gw_admit_bus_free(gw_worker *k)
{
    dx_list *ls[2] = {&k->ucq, &k->uclate};
    for (int i = 0; i < 2; i++)
        while (!dx_list_empty(ls[i])) {
            gw_ucreq *r = dx_list_entry(ls[i]->next, gw_ucreq, node);
            dx_list_remove(&r->node);
            dx__free(NULL, r);
        }
}

void gw_admit_release(gw_conn *g)
{
    gw_counts *cn = &g->k->gw->counts;
    if (g->ucreq)
        uc_detach(g->ucreq);
    if (g->bus_counted && !g->k->gw->freeing)
        (void)dx__bus_user_conns(g->k->gw->bus, g->k->index, g->user, g->ulen, -1, 0, NULL, NULL);
    g->bus_counted = false;
    if (g->ipfam || g->user_counted) {
        pthread_mutex_lock(&cn->mu);
        if (g->ipfam)
            dx__ipcount_remove(&cn->ip, NULL, g->ipfam, g->ipkey);
        if (g->user_counted)
            gw_users_remove(&cn->users, g->user, g->ulen);
        pthread_mutex_unlock(&cn->mu);
        g->ipfam = 0;
        g->user_counted = false;
    }
    if (g->rate_paused) {
        dx_list_remove(&g->rnode);
        g->rate_paused = false;
    }
    dx__free(NULL, g->nsb);
    g->nsb = NULL;
    g->nnsb = 0;
}

/* ---- message rate ------------------------------------------------------------------ */

void gw_admit_resume(gw_conn *g)
{
    if (!g->paused && !g->rate_paused && g->c && !g->gone)
        (void)dx_conn_resume(g->c);
}

static void on_rtimer(dx_timer *t, void *ud);

static void rtimer_arm(gw_worker *k, uint64_t at, uint64_t now)
{
    if (k->rtimer_at && k->rtimer_at <= at)
        return;
    if (!k->rtimer) {
        k->rtimer = dx_timer_new(k->loop, on_rtimer, k);
        if (!k->rtimer)
            return; /* the 1 s tick resumes them (gw_admit_tick) */
    }
    uint64_t ms = at > now ? (at - now + 999999u) / 1000000u : 0;
    dx_timer_start(k->rtimer, ms ? ms : 1, 0);
    k->rtimer_at = at;
}

static void rate_pause(gw_conn *g, uint64_t until, uint64_t now)
{
    gw_worker *k = g->k;
    if (!g->rate_paused) {
        g->rate_paused = true;
        dx_list_push_back(&k->rpaused, &g->rnode);
        gw_inc(&k->m.rate[GW_RATE_PAUSED], 1);
        if (!g->paused && g->c)
            (void)dx_conn_pause(g->c);
        g->resume_ns = until;
    } else if (until > g->resume_ns) {
        g->resume_ns = until;
    }
    rtimer_arm(k, g->resume_ns, now);
}

/* Resumes the connections whose time has come; re-arms for the next. */
static void resume_due(gw_worker *k)
{
    uint64_t now = dx__now_ns(NULL), next = 0;
    dx_list due;
    dx_list_init(&due);
    dx_list_foreach_safe(it, tmp, &k->rpaused) {
        gw_conn *g = dx_list_entry(it, gw_conn, rnode);
        if (g->resume_ns <= now + 500000u) { /* within half a millisecond: the timer's grain */
            dx_list_remove(&g->rnode);
            dx_list_push_back(&due, &g->rnode);
        } else if (!next || g->resume_ns < next) {
            next = g->resume_ns;
        }
    }
    k->rtimer_at = 0;
    while (!dx_list_empty(&due)) {
        gw_conn *g = dx_list_entry(due.next, gw_conn, rnode);
        dx_list_remove(&g->rnode);
        dx_list_init(&g->rnode);
        g->rate_paused = false;
        gw_admit_resume(g);
    }
    if (next)
        rtimer_arm(k, next, now);
}

static void on_rtimer(dx_timer *t, void *ud)
{
    (void)t;
    resume_due(ud);
}

void gw_admit_tick(gw_worker *k)
{
    if (!dx_list_empty(&k->rpaused) && !k->rtimer_at) /* no timer could be made */
        resume_due(k);
    if (!dx_list_empty(&k->ucq) && !k->uctimer)
        uc_expire(k);
}

/* Over a rate: what the policy says. True when the message is handled. */
static bool over_rate(gw_conn *g, gw_bucket *b, double rate, double burst, int policy, uint64_t now, bool has_id,
                      uint64_t id, const char *what)
{
    gw_worker *k = g->k;
    switch (policy) {
    case DX_GW_RATE_PAUSE:
        rate_pause(g, now + gw_bucket_force(b, rate, burst, now), now);
        return true;
    case DX_GW_RATE_REFUSE:
        gw_inc(&k->m.rate[GW_RATE_REFUSED], 1);
        if (g->dialect == GW_JSON) {
            gw_send_err(g, has_id, id, DX__GW_E_RATE, "rate limit: slow down");
            return false;
        }
        gw_logf(k, DX_LOG_INFO, "gateway: conn=%llu raw client over %g %s per second: message dropped, closed 1008",
                (unsigned long long)g->id, rate, what);
        gw_conn_close(g, 1008, "rate limit");
        return false;
    default:
        gw_inc(&k->m.rate[GW_RATE_CLOSED], 1);
        gw_logf(k, DX_LOG_INFO, "gateway: conn=%llu over %g %s per second: closed 1008", (unsigned long long)g->id,
                rate, what);
        gw_conn_close(g, 1008, "rate limit");
        return false;
    }
}

bool gw_admit_message(gw_conn *g, bool has_id, uint64_t id)
{
    const gw_limits_cfg *c = gw_lim(g->k);
    if (c->msg_rate <= 0)
        return true;
    uint64_t now = dx__now_ns(NULL);
    if (!g->rate.last_ns)
        gw_bucket_init(&g->rate, c->msg_burst, now);
    if (gw_bucket_take(&g->rate, c->msg_rate, c->msg_burst, now, NULL))
        return true;
    return over_rate(g, &g->rate, c->msg_rate, c->msg_burst, c->rate_policy, now, has_id, id, "messages");
}

/* g's bucket for namespace ns, made on first use (NULL: out of memory). */
static gw_bucket *ns_bucket(gw_conn *g, const gw_nspace *ns, uint64_t now)
{
    const gw_limits_cfg *cfg = gw_lim(g->k);
    if (g->nsb_cfg != cfg) { /* the namespaces were reloaded: start afresh */
        g->nnsb = 0;
        g->nsb_cfg = cfg;
    }
    for (size_t i = 0; i < g->nnsb; i++)
        if (g->nsb[i].ns == ns->index)
            return &g->nsb[i].b;
    gw_ns_bucket *v = dx__realloc(NULL, g->nsb, (g->nnsb + 1) * sizeof *v);
    if (!v)
        return NULL;
    g->nsb = v;
    v[g->nnsb].ns = ns->index;
    gw_bucket_init(&v[g->nnsb].b, ns->msg_burst, now);
    return &v[g->nnsb++].b;
}

bool gw_admit_topic(gw_worker *k, const char *topic, size_t len)
{
    const gw_limits_cfg *c = gw_lim(k);
    if (len <= c->max_topic)
        return true;
    refused(k, GW_LIM_TOPIC_LEN, "gateway: topic '%.*s...' of %zu bytes refused: longer than max_topic (%zu)",
            (int)(len < 40 ? len : 40), topic, len, c->max_topic);
    return false;
}

int gw_admit_publish(gw_conn *g, const char *topic, size_t len, size_t dlen, bool has_id, uint64_t id,
                     const char **why)
{
    gw_worker *k = g->k;
    const gw_limits_cfg *c = gw_lim(k);
    const gw_nspace *ns = gw_limits_ns(c, topic, len);
    size_t maxm = ns && ns->max_message ? ns->max_message : k->gw->o.max_message;
    if (dlen > maxm) {
        refused(k, GW_LIM_MESSAGE_SIZE, "gateway: conn=%llu publish of %zu bytes on '%.*s' refused: above %zu",
                (unsigned long long)g->id, dlen, (int)len, topic, maxm);
        *why = "message larger than this namespace allows";
        return DX__GW_E_TOOBIG;
    }
    if (ns && ns->msg_rate > 0) {
        uint64_t now = dx__now_ns(NULL);
        gw_bucket *b = ns_bucket(g, ns, now);
        if (b && !gw_bucket_take(b, ns->msg_rate, ns->msg_burst, now, NULL)) {
            /* the policy answered (refuse: err sent; close: closed) */
            if (!over_rate(g, b, ns->msg_rate, ns->msg_burst, ns->rate_policy, now, has_id, id, "publishes"))
                return -1;
        }
    }
    return 0;
}

/* ---- namespace rules in gw_policy_check ------------------------------------------ */

int gw_policy_check_ns(const gw_conn *g, enum gw_action act, const char *topic, size_t len)
{
    gw_worker *k = g->k;
    if ((act != GW_ACT_PUBLISH && act != GW_ACT_PRESENCE) || !k || !k->pol)
        return 0;
    const gw_nspace *ns = gw_limits_ns(gw_lim(k), topic, len);
    if (!ns)
        return 0;
    if (act == GW_ACT_PUBLISH && !ns->publish) {
        refused(k, GW_LIM_NS_PUBLISH, "gateway: conn=%llu publish on '%.*s' refused: namespace '%s' is read-only",
                (unsigned long long)g->id, (int)len, topic, ns->prefix);
        return DX__GW_E_FORBIDDEN;
    }
    if (act == GW_ACT_PRESENCE && !ns->presence) {
        refused(k, GW_LIM_NS_PRESENCE, "gateway: conn=%llu presence on '%.*s' refused: off in namespace '%s'",
                (unsigned long long)g->id, (int)len, topic, ns->prefix);
        return DX__GW_E_FORBIDDEN;
    }
    return 0;
}

void gw_admit_history_for(void *ud, unsigned w, const char *topic, size_t len, dx__gw_log_opts *out)
{
    dx_gateway *gw = ud;
    if (w >= gw->n || !gw->w[w].pol)
        return;
    const gw_nspace *ns = gw_limits_ns(gw_lim(&gw->w[w]), topic, len);
    if (!ns)
        return;
    if (ns->history_set)
        out->max_count = ns->history_count;
    if (ns->age_set)
        out->max_age_ns = ns->history_age_ms * 1000000u;
}

/* ---- drain ---------------------------------------------------------------------------- */

static void drain_close(gw_conn *g)
{
    gw_worker *k = g->k;
    char why[32];
    snprintf(why, sizeof why, "retry=%u", gw_lim(k)->reconnect_hint_ms);
    gw_inc(&k->m.drained, 1);
    gw_conn_close(g, 1012, why);
}

void gw_admit_drain_check(gw_conn *g)
{
    if (!g->draining || g->closing || g->gone)
        return;
    if (g->nheld || g->ngaps || g->inflight || (g->c && dx_conn_buffered(g->c)))
        return; /* its backlog is still going out */
    drain_close(g);
}

static void on_dtimer(dx_timer *t, void *ud)
{
    gw_worker *k = ud;
    bool late = dx__now_ns(NULL) >= k->drain_end_ns;
    dx_list_foreach_safe(it, tmp, &k->conns) {
        gw_conn *g = dx_list_entry(it, gw_conn, node);
        if (!g->draining || g->closing)
            continue;
        if (late)
            drain_close(g); /* the close frame still goes after what is queued */
        else
            gw_admit_drain_check(g);
    }
    if (late)
        dx_timer_stop(t);
}

/* Starts the drain of worker k (dx_gateway_shutdown's first call). */
void gw_admit_drain_start(gw_worker *k)
{
    const gw_limits_cfg *c = gw_lim(k);
    k->drain_end_ns = dx__now_ns(NULL) + (uint64_t)c->drain_ms * 1000000u;
    char retry[48];
    int rl = snprintf(retry, sizeof retry, "retry: %u\n\n", c->reconnect_hint_ms);
    dx_list_foreach_safe(it, tmp, &k->conns) {
        gw_conn *g = dx_list_entry(it, gw_conn, node);
        if (g->dialect == GW_ECHO || g->closing)
            continue;
        if (g->up || g->hreq) {
            g->fail_status = 503;
            gw_conn_gone(g);
            continue;
        }
        if (g->dialect == GW_SSE) {
            /* EventSource waits `retry` before it reconnects (elsewhere) */
            if (g->s)
                (void)dx_http_stream_send(g->s, retry, (size_t)rl);
            gw_inc(&k->m.drained, 1);
            gw_sse_close(g, "draining");
            continue;
        }
        g->draining = true;
        gw_admit_drain_check(g);
    }
    if (!k->dtimer)
        k->dtimer = dx_timer_new(k->loop, on_dtimer, k);
    if (k->dtimer)
        dx_timer_start(k->dtimer, 50, 50);
    else
        k->drain_end_ns = 0; /* no timer: close everything now */
    if (!k->dtimer)
        on_dtimer(NULL, k);
}

void gw_admit_worker_free(gw_worker *k)
{
    if (k->rtimer)
        dx_timer_free(k->rtimer);
    if (k->dtimer)
        dx_timer_free(k->dtimer);
    if (k->uctimer)
        dx_timer_free(k->uctimer);
    k->rtimer = k->dtimer = k->uctimer = NULL;
}

/* ---- SSE and CORS -------------------------------------------------------------------------- */

static bool header_safe(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return true;
}

size_t gw_admit_cors_headers(gw_worker *k, const char *origin, size_t olen, char *hdr, size_t cap)
{
    (void)k;
    hdr[0] = 0;
    if (!origin || !olen || olen > 300 || !header_safe(origin, olen))
        return 0;
    int n = snprintf(hdr, cap, "Access-Control-Allow-Origin: %.*s\r\nVary: Origin\r\n", (int)olen, origin);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

bool gw_admit_sse_preflight(gw_worker *k, dx_http_req *req)
{
    if (strcmp(req->method, "OPTIONS") != 0)
        return false;
    size_t ol = 0, hl = 0, ml = 0;
    const char *origin = dx_http_req_header(req, "Origin", &ol);
    const char *host = dx_http_req_header(req, "Host", &hl);
    const char *method = dx_http_req_header(req, "Access-Control-Request-Method", &ml);
    char hdr[512];
    if (!origin || !method) {
        (void)dx_http_reply(req, 405, NULL, "Allow: GET, HEAD, OPTIONS\r\n", "405 Method Not Allowed\n", 23);
        return true;
    }
    if (!gw_limits_origin_ok(gw_lim(k), origin, ol, host, hl) || !header_safe(origin, ol)) {
        refused(k, GW_LIM_ORIGIN, "gateway: %s OPTIONS /sse refused 403: Origin '%.*s' is not allowed", req->remote,
                (int)(ol > 200 ? 200 : ol), origin);
        (void)dx_http_reply(req, 403, "application/json", "Vary: Origin\r\n", "{\"error\":\"origin not allowed\"}",
                            30);
        return true;
    }
    if (!((ml == 3 && !memcmp(method, "GET", 3)) || (ml == 4 && !memcmp(method, "HEAD", 4)))) {
        (void)dx_http_reply(req, 403, "application/json", "Vary: Origin\r\n", "{\"error\":\"method not allowed\"}",
                            30);
        return true;
    }
    size_t n = gw_admit_cors_headers(k, origin, ol, hdr, sizeof hdr);
    snprintf(hdr + n, sizeof hdr - n,
             "Access-Control-Allow-Methods: GET, HEAD\r\nAccess-Control-Allow-Headers: Last-Event-ID\r\n"
             "Access-Control-Max-Age: 600\r\n");
    (void)dx_http_reply(req, 204, NULL, hdr, NULL, 0);
    return true;
}
