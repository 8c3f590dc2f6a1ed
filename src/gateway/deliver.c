/*
 * src/gateway/deliver.c: delivery of published messages to a worker's
 * subscribers (gw.h): frames built once per entry and shared by reference,
 * the held queue of a slow consumer and its policy (disconnect, or
 * drop-oldest with `gap`), the stitcher's operations, and the bus events
 * (deliver, flush, disconnect-user).
 *
 * The bus hands each worker one reference to each entry; the worker matches
 * it in its subscription index and, per subscriber, sends the entry's
 * prepared frame (raw: the payload; JSON: the msg envelope; built once per
 * entry, by whichever worker needs it first, and then shared) with
 * dx_conn_send_msg: no copy and no allocation per subscriber. A JSON
 * subscriber reached through a pattern gets the envelope with `pattern`,
 * built once per (entry, pattern) on each worker.
 */
#define _GNU_SOURCE
#include "gateway/gw.h"

#include "core/seams.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- frames ---------------------------------------------------------------- */

static dx_msg *raw_frame(dx__gw_entry *e)
{
    dx_msg *m = dx__gw_entry_frame(e, DX__GW_FRAME_RAW);
    if (m)
        return m;
    int op = dx__gw_entry_kind(e) == DX__GW_KIND_BINARY ? DX_OP_BINARY : DX_OP_TEXT;
    m = dx_msg_new(op, dx__gw_entry_data(e), dx__gw_entry_len(e), NULL);
    return m ? dx__gw_entry_set_frame(e, DX__GW_FRAME_RAW, m) : NULL;
}

/* A new reference to the msg envelope of e (with `pattern` when not NULL). */
static dx_msg *json_build(gw_worker *k, dx__bus_topic *t, dx__gw_entry *e, const char *pattern, size_t plen)
{
    dx_buf_clear(&k->scratch);
    if (dx__gw_msg_encode(&k->scratch, 0, t->name, t->len, dx__gw_entry_offset(e), t->epoch, strlen(t->epoch),
                          dx__gw_entry_kind(e), dx__gw_entry_data(e), dx__gw_entry_len(e), pattern, plen))
        return NULL;
    return dx_msg_new(DX_OP_TEXT, dx_buf_head(&k->scratch), k->scratch.len, NULL);
}

/* Borrowed: valid while the caller's reference to e lasts (and, for a
 * pattern frame, until the pattern cache is reset after the match). */
static dx_msg *json_frame(gw_worker *k, dx__bus_topic *t, dx__gw_entry *e, const char *pattern, size_t plen)
{
    if (!pattern) {
        dx_msg *m = dx__gw_entry_frame(e, DX__GW_FRAME_JSON);
        if (m)
            return m;
        m = json_build(k, t, e, NULL, 0);
        return m ? dx__gw_entry_set_frame(e, DX__GW_FRAME_JSON, m) : NULL;
    }
    for (size_t i = 0; i < k->npc; i++)
        if (k->pc[i].e == e && k->pc[i].plen == plen && memcmp(k->pc[i].pattern, pattern, plen) == 0)
            return k->pc[i].m;
    dx_msg *m = json_build(k, t, e, pattern, plen);
    if (!m)
        return NULL;
    if (k->npc == sizeof k->pc / sizeof k->pc[0]) {
        dx_msg_unref(k->pc[0].m); /* evict the oldest: its senders hold their own references */
        memmove(k->pc, k->pc + 1, (k->npc - 1) * sizeof k->pc[0]);
        k->npc--;
    }
    k->pc[k->npc++] = (gw_pcache){pattern, plen, e, m};
    return m;
}

void gw_pcache_reset(gw_worker *k)
{
    for (size_t i = 0; i < k->npc; i++)
        dx_msg_unref(k->pc[i].m);
    k->npc = 0;
}

/* ---- sending ---------------------------------------------------------------- */

void gw_conn_close(gw_conn *g, unsigned code, const char *why)
{
    if (g->closing)
        return;
    g->closing = true;
    if (g->dialect == GW_SSE) {
        gw_sse_close(g, why);
        return;
    }
    if (g->c) {
        (void)dx_conn_close(g->c, code, why, strlen(why));
    } else if (!g->gone) {
        /* its handshake is still being answered (an authenticated user
         * disconnected meanwhile): on_open closes it */
        g->early_code = (uint16_t)code;
        g->early_why = why;
    }
}

static void slow_close(gw_conn *g)
{
    gw_worker *k = g->k;
    gw_inc(&k->m.drops[GW_DROP_SLOW_CLOSE], 1);
    if (g->closing)
        return;
    gw_logf(k, DX_LOG_WARN, "gateway: conn=%llu slow consumer (more than %zu bytes queued): closed 1013",
            (unsigned long long)g->id, k->gw->o.sub_queue);
    gw_conn_close(g, 1013, "slow consumer");
}

/* Sends a JSON reply built in k->scratch. */
void gw_send_scratch(gw_conn *g)
{
    gw_worker *k = g->k;
    if (g->closing || !g->c)
        return;
    if (dx_conn_send(g->c, DX_OP_TEXT, dx_buf_head(&k->scratch), k->scratch.len) != 0)
        g->closing = true; /* the library closes it and reports on_close */
}

void gw_send_err(gw_conn *g, bool has_id, uint64_t id, int code, const char *reason)
{
    dx_buf_clear(&g->k->scratch);
    if (dx__gw_err_encode(&g->k->scratch, 0, gw_req_id(has_id, id), code, reason) == 0)
        gw_send_scratch(g);
}

static int held_push(gw_conn *g, dx__bus_topic *t, dx__gw_entry *e, dx_msg *m, size_t bytes, const char *pattern)
{
    if (g->nheld == g->capheld) {
        if (g->capheld > UINT32_MAX / 2)
            return DX_ENOMEM; /* the count is 32-bit (gw.h); the byte budget acts long before */
        size_t cap = g->capheld ? (size_t)g->capheld * 2 : 16;
        gw_held *h = dx__alloc(NULL, cap * sizeof *h);
        if (!h)
            return DX_ENOMEM;
        for (size_t i = 0; i < g->nheld; i++)
            h[i] = g->held[(g->headheld + i) % g->capheld];
        dx__free(NULL, g->held);
        g->held = h;
        g->capheld = cap;
        g->headheld = 0;
    }
    g->held[(g->headheld + g->nheld) % g->capheld] =
        (gw_held){dx__bus_topic_ref(t), dx__gw_entry_ref(e), m ? dx_msg_ref(m) : NULL, pattern};
    g->nheld++;
    g->heldbytes += bytes;
    return 0;
}

static size_t held_bytes(const gw_held *h)
{
    return h->m ? dx_msg_len(h->m) : dx__gw_entry_len(h->e);
}

/* Takes the oldest held message out (the caller releases it). */
static gw_held held_pop(gw_conn *g)
{
    gw_held h = g->held[g->headheld];
    g->headheld = (g->headheld + 1) % g->capheld;
    g->nheld--;
    g->heldbytes -= held_bytes(&h);
    return h;
}

void gw_held_release(gw_held *h)
{
    dx__bus_topic_unref(h->t);
    dx__gw_entry_unref(h->e);
    dx_msg_unref(h->m);
}

/* Offsets from..to of topic t will not reach g: merged into t's pending
 * gap notice. */
static void gap_add(gw_conn *g, dx__bus_topic *t, uint64_t from, uint64_t to)
{
    for (size_t i = 0; i < g->ngaps; i++) {
        if (g->gaps[i].t == t || (g->gaps[i].t->len == t->len && !memcmp(g->gaps[i].t->name, t->name, t->len))) {
            if (from < g->gaps[i].from)
                g->gaps[i].from = from;
            if (to > g->gaps[i].to)
                g->gaps[i].to = to;
            return;
        }
    }
    if (g->ngaps == g->capgaps) {
        size_t cap = g->capgaps ? g->capgaps * 2 : 4;
        gw_gap *n = dx__realloc(NULL, g->gaps, cap * sizeof *n);
        if (!n) {
            gw_conn_close(g, 1011, "out of memory");
            return;
        }
        g->gaps = n;
        g->capgaps = cap;
    }
    g->gaps[g->ngaps++] = (gw_gap){dx__bus_topic_ref(t), from, to};
}

/* Sends the gap notice of topic t, if one is pending (all when t is NULL). */
static void gaps_send(gw_conn *g, dx__bus_topic *t)
{
    gw_worker *k = g->k;
    for (size_t i = 0; i < g->ngaps;) {
        gw_gap *p = &g->gaps[i];
        if (t && !(p->t->len == t->len && !memcmp(p->t->name, t->name, t->len))) {
            i++;
            continue;
        }
        dx_buf_clear(&k->scratch);
        if (dx__gw_gap_encode(&k->scratch, 0, p->t->name, p->t->len, p->from, p->to) == 0)
            gw_send_scratch(g);
        dx__bus_topic_unref(p->t);
        g->gaps[i] = g->gaps[--g->ngaps];
    }
}

/* drop-oldest: e is queued after what is held; the oldest held messages go
 * (announced by gap) while the held bytes pass the budget. */
static void overflow(gw_conn *g, dx__bus_topic *t, dx__gw_entry *e, dx_msg *m)
{
    gw_worker *k = g->k;
    if (held_push(g, t, e, m, dx_msg_len(m), NULL) != 0) {
        gw_inc(&k->m.drops[GW_DROP_ERROR], 1);
        gw_conn_close(g, 1011, "out of memory");
        return;
    }
    while (g->heldbytes > k->gw->o.sub_queue && g->nheld > 1) {
        gw_held h = held_pop(g);
        uint64_t off = dx__gw_entry_offset(h.e);
        gap_add(g, h.t, off, off);
        gw_inc(&k->m.drops[GW_DROP_SLOW_GAP], 1);
        gw_held_release(&h);
    }
}

static void record_latency(gw_worker *k, dx__gw_entry *e)
{
    uint64_t now = dx__now_ns(NULL), t0 = dx__gw_entry_time_ns(e);
    uint64_t d = now > t0 ? now - t0 : 0;
    double s = (double)d / 1e9;
    size_t b = 0;
    while (b < GW_LAT_N - 1 && s > gw_lat_bounds[b])
        b++;
    gw_inc(&k->m.lat[b], 1);
    gw_inc(&k->m.lat_sum_ns, d);
    gw_inc(&k->m.lat_count, 1);
}

static void recheck_run(void *arg)
{
    gw_conn *g = arg;
    g->recheck = false;
    if (!g->gone && (g->nheld || g->ngaps))
        gw_flush_held(g);
    gw_conn_unref(g);
}

static void recheck_drop(void *arg)
{
    gw_conn_unref(arg);
}

/* The backlog waits for the socket queue to shrink. on_drain reports that
 * only when the queue had passed send_high_water at a write, and the
 * library writes what was queued before the loop sleeps, so the queue may
 * well be empty by then with nothing to report: look again at the next
 * iteration (the 1 s tick is the last resort). */
void gw_recheck_later(gw_conn *g)
{
    if (g->recheck || g->gone)
        return;
    g->refs++;
    if (dx_loop_post_ex(g->k->loop, recheck_run, recheck_drop, g) != 0) {
        g->refs--;
        return;
    }
    g->recheck = true;
}

/* Would queueing m pass g's budget? An empty queue takes any one message
 * (one larger than the budget still goes). */
static bool over_budget(const gw_conn *g, const dx_msg *m)
{
    size_t q = dx_conn_buffered(g->c);
    return q && q + dx_msg_len(m) + 14 > g->k->gw->o.sub_queue;
}

/* The slow-consumer policy of topic t's namespace (the gateway's when none). */
static bool drops_oldest(const gw_conn *g, const dx__bus_topic *t)
{
    if (g->dialect != GW_JSON)
        return false;
    const gw_nspace *ns = gw_limits_ns(gw_lim(g->k), t->name, t->len);
    return (ns && ns->slow_policy >= 0 ? ns->slow_policy : g->k->gw->o.slow_policy) == DX_GW_SLOW_DROP_OLDEST;
}

/* One entry to one open WebSocket subscriber (frame m borrowed). */
static void send_frame(gw_conn *g, dx__bus_topic *t, dx__gw_entry *e, dx_msg *m)
{
    gw_worker *k = g->k;
    if (g->nheld) { /* drop-oldest backlog: keep the order */
        overflow(g, t, e, m);
        return;
    }
    if (over_budget(g, m)) {
        if (drops_oldest(g, t)) {
            overflow(g, t, e, m);
            gw_recheck_later(g);
        } else {
            slow_close(g);
        }
        return;
    }
    if (g->dialect == GW_JSON && g->ngaps)
        gaps_send(g, t);
    if (dx_conn_send_msg(g->c, m) != 0) {
        g->closing = true;
        return;
    }
    gw_inc(&k->m.deliveries, 1);
}

static void deliver_one(gw_conn *g, dx__bus_topic *t, dx__gw_entry *e, const char *pattern, size_t plen)
{
    gw_worker *k = g->k;
    if (g->closing)
        return;
    if (!g->open) { /* raw or SSE before its answer / on_open: held in order */
        const char *stable = NULL; /* the pattern as the connection's own record holds it */
        if (pattern)
            for (size_t i = 0; i < g->nsubs && !stable; i++)
                if (g->subs[i]->len == plen && !memcmp(g->subs[i]->name, pattern, plen))
                    stable = g->subs[i]->name;
        if (held_push(g, t, e, NULL, dx__gw_entry_len(e), stable) != 0 || g->heldbytes > k->gw->o.sub_queue) {
            gw_inc(&k->m.drops[GW_DROP_SLOW_CLOSE], 1);
            g->closing = true;
            g->overflowed = true; /* refused 503 if still deferred, else closed 1013 at on_open */
            g->fail_status = 503;
        }
        return;
    }
    if (g->dialect == GW_SSE) {
        gw_sse_deliver(g, t, e, pattern, plen);
        return;
    }
    dx_msg *m = g->dialect == GW_RAW ? raw_frame(e) : json_frame(k, t, e, pattern, plen);
    if (!m) {
        gw_inc(&k->m.drops[GW_DROP_ERROR], 1);
        gw_conn_close(g, 1011, "out of memory");
        return;
    }
    send_frame(g, t, e, m);
}

/* Sends what was held while g could not take it (not open yet, or
 * drop-oldest backlog), in order, as far as the budget allows; the rest
 * waits for on_drain. */
void gw_flush_held(gw_conn *g)
{
    gw_worker *k = g->k;
    while (g->nheld && !g->closing && g->open) {
        gw_held *h = &g->held[g->headheld];
        if (g->dialect == GW_SSE) {
            gw_held x = held_pop(g);
            gw_sse_deliver(g, x.t, x.e, x.pattern, x.pattern ? strlen(x.pattern) : 0);
            gw_held_release(&x);
            continue;
        }
        dx_msg *m = h->m ? h->m : g->dialect == GW_RAW ? raw_frame(h->e) : json_frame(k, h->t, h->e, NULL, 0);
        if (!m) {
            gw_inc(&k->m.drops[GW_DROP_ERROR], 1);
            gw_conn_close(g, 1011, "out of memory");
            return;
        }
        if (over_budget(g, m)) {
            if (drops_oldest(g, h->t))
                gw_recheck_later(g); /* on_drain, this post, or the 1 s tick comes back */
            else
                slow_close(g);
            return;
        }
        if (g->ngaps)
            gaps_send(g, h->t);
        int rc = dx_conn_send_msg(g->c, m);
        gw_held x = held_pop(g);
        gw_held_release(&x);
        if (rc) {
            g->closing = true;
            return;
        }
        gw_inc(&k->m.deliveries, 1);
    }
    if (!g->nheld && g->ngaps && !g->closing && g->c)
        gaps_send(g, NULL);
}

/* ---- the stitcher's ops ------------------------------------------------------ */

static void st_deliver(void *ud, dx__gw_entry *e)
{
    gw_sub *s = ud;
    deliver_one(s->g, s->t, e, NULL, 0);
}

static void st_gap(void *ud, uint64_t from, uint64_t to)
{
    gw_sub *s = ud;
    gw_conn *g = s->g;
    if (g->dialect == GW_JSON && g->open) {
        gap_add(g, s->t, from, to);
        gaps_send(g, s->t);
    } else {
        gw_conn_close(g, 1013, "messages lost");
    }
}

const dx__gw_stitch_ops gw_stitch_ops = {st_deliver, st_gap};

/* ---- live delivery (bus event) ---------------------------------------------- */

/* A run of entries of one topic, matched once: each subscriber is touched
 * once per run (its memory is cold: that touch is most of the cost of a
 * delivery), then gets the run's entries in order. */
typedef struct match_ctx {
    gw_worker *k;
    dx__bus_topic *t;
    const gw_pend *run;
    size_t n;
} match_ctx;

static void on_match(void *ud, void *subscriber, const char *pattern, size_t plen)
{
    match_ctx *mc = ud;
    gw_conn *g = subscriber;
    gw_sub *s = NULL;
    if (!pattern && g->npending) {
        s = gw_sub_find(g, mc->t->name, mc->t->len, NULL);
        if (s && !s->pending)
            s = NULL;
    }
    for (size_t i = 0; i < mc->n && !g->closing; i++) {
        if (s) { /* a subscribe in flight: the stitcher orders live and history */
            if (dx__gw_stitch_live(&s->st, mc->run[i].e) != 0) {
                gw_inc(&mc->k->m.drops[GW_DROP_ERROR], 1);
                gw_conn_close(g, 1011, "out of memory");
            }
            continue;
        }
        deliver_one(g, mc->t, mc->run[i].e, pattern, plen);
    }
}

static void deliver_run(gw_worker *k, dx__bus_topic *t, const gw_pend *run, size_t n)
{
    match_ctx mc = {k, t, run, n};
    for (size_t i = 0; i < n; i++)
        record_latency(k, run[i].e);
    (void)dx__gw_topic_match(k->ix, t->name, t->len, on_match, &mc);
    gw_pcache_reset(k);
}

/* Delivers what the bus handed over since the last flush: consecutive
 * entries of one topic as one run. Called when the bus finished a batch,
 * and before anything that must see deliveries in order with it (a
 * subscribe's completion, a new subscription). */
void gw_flush_pending(gw_worker *k)
{
    if (k->flushing || !k->npend)
        return;
    k->flushing = true;
    gw_pend *v = k->pend; /* taken whole: deliveries handed over meanwhile go to the spare */
    size_t n = k->npend, cap = k->cappend;
    k->pend = k->pend_spare;
    k->cappend = k->cappend_spare;
    k->npend = 0;
    k->pend_spare = NULL;
    k->cappend_spare = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && v[j].t == v[i].t)
            j++;
        deliver_run(k, v[i].t, v + i, j - i);
        i = j;
    }
    for (size_t i = 0; i < n; i++) {
        dx__bus_topic_unref(v[i].t);
        dx__gw_entry_unref(v[i].e);
    }
    if (!k->pend) { /* keep both arrays: no allocation in steady state */
        k->pend = v;
        k->cappend = cap;
    } else if (!k->pend_spare) {
        k->pend_spare = v;
        k->cappend_spare = cap;
    } else {
        dx__free(NULL, v);
    }
    k->flushing = false;
    if (k->npend) /* handed over while flushing (nothing does today) */
        gw_flush_pending(k);
}

static void ev_deliver(void *ud, dx__bus_topic *t, dx__gw_entry *e)
{
    gw_worker *k = ud;
    if (k->npend == k->cappend) {
        size_t cap = k->cappend ? k->cappend * 2 : 64;
        gw_pend *v = dx__realloc(NULL, k->pend, cap * sizeof *v);
        if (!v) { /* deliver this one alone, now */
            gw_flush_pending(k);
            gw_pend one = {t, e};
            deliver_run(k, t, &one, 1);
            return;
        }
        k->pend = v;
        k->cappend = cap;
    }
    k->pend[k->npend++] = (gw_pend){dx__bus_topic_ref(t), dx__gw_entry_ref(e)};
}

static void ev_flush(void *ud)
{
    gw_flush_pending(ud);
}

static size_t ev_disconnect_user(void *ud, const char *user, size_t len)
{
    gw_worker *k = ud;
    size_t n = 0;
    dx_list_foreach(it, &k->conns) {
        gw_conn *g = dx_list_entry(it, gw_conn, node);
        if (g->user && g->ulen == len && memcmp(g->user, user, len) == 0 && !g->closing) {
            gw_conn_close(g, 4000, "disconnected");
            n++;
        }
    }
    return n;
}

/* The bus will not deliver offsets from..to of t here: its subscription
 * was lost and history no longer held them once back. JSON subscribers get
 * `gap` (after what was delivered before it); raw and SSE ones cannot be
 * told and are closed 1013 "messages lost" (GATEWAY.md: nothing lost
 * silently). Subscribers whose subscribe is still out are skipped: their
 * answer comes after the bus's catch-up and starts past the gap. Counted
 * per subscriber: duplex_dropped_total{reason="history_gap"}. */
typedef struct gap_ctx {
    gw_worker *k;
    dx__bus_topic *t;
    uint64_t from, to;
} gap_ctx;

static void on_gap_match(void *ud, void *subscriber, const char *pattern, size_t plen)
{
    (void)plen;
    gap_ctx *c = ud;
    gw_conn *g = subscriber;
    if (g->closing)
        return;
    if (!pattern && g->npending) {
        gw_sub *s = gw_sub_find(g, c->t->name, c->t->len, NULL);
        if (s && s->pending)
            return;
    }
    gw_inc(&c->k->m.drops[GW_DROP_HISTORY_GAP], c->to - c->from + 1);
    if (g->dialect == GW_JSON) {
        gap_add(g, c->t, c->from, c->to);
        if (g->open && !g->nheld && g->c)
            gaps_send(g, c->t); /* else before its next held message, or when it opens */
    } else {
        gw_conn_close(g, 1013, "messages lost");
    }
}

static void ev_gap(void *ud, dx__bus_topic *t, uint64_t from, uint64_t to)
{
    gw_worker *k = ud;
    gw_flush_pending(k); /* the entries before the gap go first */
    gap_ctx c = {k, t, from, to};
    gw_logf(k, DX_LOG_WARN, "gateway: topic %s: offsets %llu-%llu lost by the bus: announced with gap (JSON), "
            "raw and SSE subscribers closed 1013", t->name, (unsigned long long)from, (unsigned long long)to);
    (void)dx__gw_topic_match(k->ix, t->name, t->len, on_gap_match, &c);
}

const dx__bus_events gw_bus_events = {ev_deliver, ev_disconnect_user, ev_flush, ev_gap};
