/*
 * src/gateway/json.c: what clients ask of the gateway: publishing (both
 * dialects: a raw client's frames, a JSON client's pub) and the JSON
 * dialect's requests (sub, unsub, pub, presence, refresh) with their
 * answers. Every request that goes to the bus holds a reference to its
 * connection until its completion, which answers only if the connection
 * is still there.
 */
#include "gateway/gw.h"

#include "core/seams.h"

#include <string.h>

typedef struct pub_ctx {
    gw_conn *g;
    bool has_id;
    uint64_t id;
} pub_ctx;

static void inflight_done(gw_conn *g)
{
    g->inflight--;
    if (g->paused && !g->gone && g->c && g->inflight <= g->k->gw->o.max_inflight / 2) {
        g->paused = false;
        gw_admit_resume(g); /* unless the message rate holds it */
    }
}

static void pub_done(void *ud, int err, uint64_t offset, const char *epoch)
{
    pub_ctx *p = ud;
    gw_conn *g = p->g;
    gw_worker *k = g->k;
    inflight_done(g);
    if (err)
        gw_inc(&k->m.publishes_refused, 1);
    else
        gw_inc(&k->m.publishes, 1);
    if (!g->gone && !g->closing) {
        if (g->dialect == GW_JSON) {
            if (err) {
                gw_send_err(g, p->has_id, p->id, err == DX_ELIMIT ? DX__GW_E_TOOBIG : DX__GW_E_UNAVAILABLE,
                         err == DX_ELIMIT ? "topic offset limit reached" : "publish failed: try again");
            } else {
                dx_buf_clear(&k->scratch);
                if (dx__gw_ack_pub_encode(&k->scratch, 0, gw_req_id(p->has_id, p->id), offset, epoch,
                                          strlen(epoch)) == 0)
                    gw_send_scratch(g);
            }
        } else if (err) {
            unsigned code = err == DX_EIO ? 1013 : 1011; /* the bus (Redis) lost it: try again later */
            gw_logf(k, DX_LOG_WARN, "gateway: conn=%llu publish on %s failed: %s: closed %u",
                    (unsigned long long)g->id, g->pub, dx_strerror(err), code);
            gw_conn_close(g, code, "publish failed");
        }
    }
    dx__free(NULL, p);
    gw_conn_unref(g);
}

int gw_publish(gw_conn *g, const char *topic, size_t len, dx__gw_kind kind, const void *data, size_t dlen,
                   bool has_id, uint64_t id)
{
    gw_worker *k = g->k;
    pub_ctx *p = dx__alloc(NULL, sizeof *p);
    if (!p)
        return DX_ENOMEM;
    *p = (pub_ctx){g, has_id, id};
    int rc = dx__bus_publish(k->gw->bus, k->index, topic, len, kind, data, dlen, pub_done, p);
    if (rc) {
        dx__free(NULL, p);
        return rc;
    }
    g->refs++;
    if (++g->inflight >= k->gw->o.max_inflight && !g->paused && g->c) {
        g->paused = true;
        if (!g->rate_paused)
            (void)dx_conn_pause(g->c);
    }
    return 0;
}

typedef struct ack_ctx {
    gw_conn *g;
    bool has_id;
    uint64_t id;
    char topic[];
} ack_ctx;

/* A sub of a topic already subscribed: acks again with the current offset. */
static void resub_done(void *ud, int err, dx__bus_topic *t, dx__gw_snapshot *snap)
{
    ack_ctx *a = ud;
    gw_conn *g = a->g;
    gw_worker *k = g->k;
    (void)t;
    if (!g->gone) {
        if (err) {
            gw_send_err(g, a->has_id, a->id, DX__GW_E_UNAVAILABLE, "subscribe failed: try again");
        } else {
            dx_buf_clear(&k->scratch);
            if (dx__gw_ack_sub_encode(&k->scratch, 0, gw_req_id(a->has_id, a->id), a->topic, strlen(a->topic),
                                      snap->offset, snap->epoch, strlen(snap->epoch), false) == 0)
                gw_send_scratch(g);
        }
    }
    dx__free(NULL, a);
    gw_conn_unref(g);
}

static void presence_done(void *ud, int err, uint64_t count, const char *const *users, const size_t *lens, size_t n)
{
    ack_ctx *a = ud;
    gw_conn *g = a->g;
    gw_worker *k = g->k;
    if (!g->gone) {
        if (err) {
            gw_send_err(g, a->has_id, a->id, DX__GW_E_UNAVAILABLE, "presence failed: try again");
        } else {
            dx__gw_str stack[64], *u = n <= 64 ? stack : dx__alloc(NULL, n * sizeof *u);
            if (u) {
                for (size_t i = 0; i < n; i++)
                    u[i] = (dx__gw_str){users[i], lens[i]};
                dx_buf_clear(&k->scratch);
                if (dx__gw_ack_presence_encode(&k->scratch, 0, gw_req_id(a->has_id, a->id), count, u, n) == 0)
                    gw_send_scratch(g);
                if (u != stack)
                    dx__free(NULL, u);
            }
        }
    }
    dx__free(NULL, a);
    gw_conn_unref(g);
}

static ack_ctx *ack_new(gw_conn *g, const dx__gw_req *r)
{
    ack_ctx *a = dx__alloc(NULL, sizeof *a + r->topic_len + 1);
    if (!a)
        return NULL;
    a->g = g;
    a->has_id = r->has_id;
    a->id = r->id;
    memcpy(a->topic, r->topic, r->topic_len);
    a->topic[r->topic_len] = 0;
    return a;
}

/* Extension (docs/gateway.md): a pattern has no offset or epoch. */
static void ack_pattern(gw_conn *g, const dx__gw_req *r)
{
    dx_buf *b = &g->k->scratch;
    dx_buf_clear(b);
    if (dx__gw_ack_sub_encode(b, 0, gw_req_id(r->has_id, r->id), r->topic, r->topic_len, 0, "", 0, false) == 0)
        gw_send_scratch(g);
}

static void json_sub(gw_conn *g, const dx__gw_req *r)
{
    gw_worker *k = g->k;
    dx__gw_topic_kind tk = dx__gw_topic_classify(r->topic, r->topic_len);
    if (tk == DX__GW_TOPIC_INVALID) {
        gw_send_err(g, r->has_id, r->id, DX__GW_E_MALFORMED, "bad topic or pattern");
        return;
    }
    if (!gw_admit_topic(k, r->topic, r->topic_len)) {
        gw_send_err(g, r->has_id, r->id, DX__GW_E_MALFORMED, "topic longer than max_topic");
        return;
    }
    int pc = gw_policy_check(g, GW_ACT_SUBSCRIBE, r->topic, r->topic_len);
    if (pc) {
        gw_send_err(g, r->has_id, r->id, pc, "subscription not allowed");
        return;
    }
    if (tk == DX__GW_TOPIC_PATTERN && r->has_since) {
        gw_send_err(g, r->has_id, r->id, DX__GW_E_MALFORMED, "since is not allowed with a pattern");
        return;
    }
    if (gw_sub_find(g, r->topic, r->topic_len, NULL)) {
        if (tk == DX__GW_TOPIC_PATTERN) {
            ack_pattern(g, r);
            return;
        }
        ack_ctx *a = ack_new(g, r);
        if (!a || dx__bus_subscribe(k->gw->bus, k->index, r->topic, r->topic_len, NULL, 0, false, false, 0, NULL, 0,
                                    resub_done, a) != 0) {
            dx__free(NULL, a);
            gw_send_err(g, r->has_id, r->id, DX__GW_E_UNAVAILABLE, "subscribe failed: try again");
            return;
        }
        g->refs++;
        return;
    }
    if (g->nsubs >= k->gw->o.max_subs) {
        gw_send_err(g, r->has_id, r->id, DX__GW_E_TOOBIG, "too many subscriptions on this connection");
        return;
    }
    int rc = gw_subscribe(g, r->topic, r->topic_len, r->has_id, r->id, r->has_since, r->since_offset,
                          r->since_epoch, r->since_epoch_len);
    if (rc) {
        gw_send_err(g, r->has_id, r->id, DX__GW_E_UNAVAILABLE, "subscribe failed: try again");
        return;
    }
    if (tk == DX__GW_TOPIC_PATTERN)
        ack_pattern(g, r);
}

static void json_unsub(gw_conn *g, const dx__gw_req *r)
{
    gw_worker *k = g->k;
    size_t at;
    if (dx__gw_topic_check_sub(r->topic, r->topic_len) != 0) {
        gw_send_err(g, r->has_id, r->id, DX__GW_E_MALFORMED, "bad topic or pattern");
        return;
    }
    if (gw_sub_find(g, r->topic, r->topic_len, &at)) {
        (void)dx__gw_topic_unsubscribe(k->ix, r->topic, r->topic_len, g);
        gw_sub_drop(g, at, true);
    }
    dx_buf_clear(&k->scratch);
    if (dx__gw_ack_encode(&k->scratch, 0, gw_req_id(r->has_id, r->id)) == 0)
        gw_send_scratch(g);
}

void gw_json_message(gw_conn *g, const uint8_t *data, size_t len)
{
    gw_worker *k = g->k;
    dx__gw_req r;
    dx__gw_req_err e;
    if (dx__gw_req_parse(NULL, data, len, 0, &r, &e) != 0) {
        if (gw_admit_message(g, e.has_id, e.id)) /* a malformed message counts too */
            gw_send_err(g, e.has_id, e.id, e.code, e.reason);
        return;
    }
    if (!gw_admit_message(g, r.has_id, r.id)) { /* over the rate: refused (4429) or closed */
        dx__gw_req_free(&r);
        return;
    }
    switch (r.op) {
    case DX__GW_OP_SUB:
        json_sub(g, &r);
        break;
    case DX__GW_OP_UNSUB:
        json_unsub(g, &r);
        break;
    case DX__GW_OP_PUB: {
        if (dx__gw_topic_check(r.topic, r.topic_len) != 0) {
            gw_send_err(g, r.has_id, r.id, DX__GW_E_MALFORMED,
                     dx__gw_topic_classify(r.topic, r.topic_len) == DX__GW_TOPIC_PATTERN
                         ? "a pattern cannot be published to"
                         : "bad topic (1-200 bytes of [A-Za-z0-9_.:@/-], no empty segment)");
            gw_inc(&k->m.publishes_refused, 1);
            break;
        }
        if (!gw_admit_topic(k, r.topic, r.topic_len)) {
            gw_send_err(g, r.has_id, r.id, DX__GW_E_MALFORMED, "topic longer than max_topic");
            gw_inc(&k->m.publishes_refused, 1);
            break;
        }
        int pc = gw_policy_check(g, GW_ACT_PUBLISH, r.topic, r.topic_len);
        if (pc) {
            gw_send_err(g, r.has_id, r.id, pc, "publish not allowed");
            gw_inc(&k->m.publishes_refused, 1);
            break;
        }
        const char *why = NULL;
        pc = gw_admit_publish(g, r.topic, r.topic_len, r.payload_len, r.has_id, r.id, &why);
        if (pc) {
            if (pc > 0)
                gw_send_err(g, r.has_id, r.id, pc, why);
            gw_inc(&k->m.publishes_refused, 1);
            break;
        }
        if (gw_publish(g, r.topic, r.topic_len, r.kind, r.payload, r.payload_len, r.has_id, r.id) != 0)
            gw_send_err(g, r.has_id, r.id, DX__GW_E_UNAVAILABLE, "publish failed: try again");
        break;
    }
    case DX__GW_OP_PRESENCE: {
        if (dx__gw_topic_check(r.topic, r.topic_len) != 0) {
            gw_send_err(g, r.has_id, r.id, DX__GW_E_MALFORMED, "bad topic");
            break;
        }
        int pc = gw_policy_check(g, GW_ACT_PRESENCE, r.topic, r.topic_len);
        if (pc) {
            gw_send_err(g, r.has_id, r.id, pc, "presence not allowed (off in this namespace)");
            break;
        }
        ack_ctx *a = ack_new(g, &r);
        if (!a || dx__bus_presence(k->gw->bus, k->index, r.topic, r.topic_len, presence_done, a) != 0) {
            dx__free(NULL, a);
            gw_send_err(g, r.has_id, r.id, DX__GW_E_UNAVAILABLE, "presence failed: try again");
            break;
        }
        g->refs++;
        break;
    }
    case DX__GW_OP_REFRESH: {
        /* a new token for the same sub before the old one runs out
         * (auth.c); without JWT auth there is nothing to refresh: acked */
        const char *why = NULL;
        int rc = k->pol->jwt ? gw_auth_refresh(g, r.token, r.token_len, &why) : 0;
        if (rc) {
            gw_send_err(g, r.has_id, r.id, rc, why);
            break;
        }
        dx_buf_clear(&k->scratch);
        if (dx__gw_ack_encode(&k->scratch, 0, gw_req_id(r.has_id, r.id)) == 0)
            gw_send_scratch(g);
        break;
    }
    default:
        gw_send_err(g, r.has_id, r.id, DX__GW_E_UNKNOWN_OP, "unknown op");
        break;
    }
    dx__gw_req_free(&r);
}

