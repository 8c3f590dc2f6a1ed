/*
 * src/gateway/sse.c: GET /sse?subscribe=a,b (GATEWAY.md "SSE").
 *
 * The request is held (on_http took it) until every subscription is in:
 * registered in the worker's index, then read by the topic's owner (the
 * same path as a raw WebSocket's ?subscribe=). Then the answer starts as a
 * streamed HTTP answer (dx_http_reply_stream): `text/event-stream`, a
 * `retry:` line, one `event: ack` per topic (an extension: the JSON
 * dialect's sub ack, with `offset`, `epoch` and `recovered`, so a page can
 * tell it missed messages; EventSource ignores it unless listened for; it
 * has no `id:` so the stream's position is unchanged), then the missed
 * messages and the live ones as `event: msg` with the msg object on one
 * `data:` line and `id:` the stream's position in all its topics.
 *
 * Resume: Last-Event-ID (topic:offset:epoch,...) or, without that header,
 * ?last-event-id= (the same value: an extension for pages that open their
 * own EventSource and cannot set the header), or ?since=topic:offset,...
 * (the current epoch assumed), each exactly as the JSON dialect's since. Items naming a topic not in subscribe= are ignored
 * (a browser resends its original URL with a newer Last-Event-ID).
 * Patterns are live only: their messages carry `pattern`, and the `id:`
 * lists the exact topics' positions only (a position names a topic).
 *
 * A comment line (": hb") is sent when nothing was written for
 * sse_heartbeat_ms (checked every second). A client whose unsent bytes
 * would pass sub_queue is disconnected (the stream ends), never skipped.
 */
#define _GNU_SOURCE
#include "gateway/gw.h"

#include "core/seams.h"

#include <stdio.h>
#include <string.h>

#define SSE_MAX_TOPICS 64

static void refuse_h(gw_worker *k, dx_http_req *req, int status, const char *why, const char *hdr)
{
    char body[256];
    int n = snprintf(body, sizeof body, "{\"error\":\"%s\"}", why);
    if (!hdr) /* admit.c logged its own */
        gw_logf(k, DX_LOG_INFO, "gateway: %s GET /sse refused %d: %s", req->remote, status, why);
    gw_inc(&k->m.handshakes_refused, 1);
    (void)dx_http_reply(req, status, "application/json",
                        status == 405   ? "Allow: GET, HEAD, OPTIONS\r\n"
                        : status == 401 ? GW_AUTH_401_HEADERS
                        : hdr && *hdr   ? hdr
                                        : NULL,
                        body, (size_t)n);
}

static void refuse(gw_worker *k, dx_http_req *req, int status, const char *why)
{
    refuse_h(k, req, status, why, NULL);
}

static void on_stream_close(dx_http_stream *s, int err, void *ud)
{
    gw_conn *g = ud;
    (void)s;
    (void)err;
    gw_conn_gone(g);
}

static const dx_http_stream_callbacks stream_cb = {NULL, on_stream_close};

void gw_sse_request(gw_worker *k, dx_http_req *req)
{
    static _Thread_local char subbuf[8192], sincebuf[8192];
    if (gw_admit_sse_preflight(k, req)) /* OPTIONS: CORS preflight */
        return;
    if (strcmp(req->method, "GET") && strcmp(req->method, "HEAD")) {
        refuse(k, req, 405, "use GET");
        return;
    }
    if (k->stopping) {
        refuse(k, req, 503, "shutting down");
        return;
    }
    const char *v;
    size_t vlen;
    if (!gw_query_get(req->query, req->query_len, "subscribe", &v, &vlen) || !vlen) {
        refuse(k, req, 400, "missing subscribe=topic,...");
        return;
    }
    const char *names[SSE_MAX_TOPICS + 1];
    size_t lens[SSE_MAX_TOPICS + 1];
    size_t cap = k->gw->o.max_subs < SSE_MAX_TOPICS ? k->gw->o.max_subs : SSE_MAX_TOPICS;
    int got = gw_split_list(v, vlen, subbuf, sizeof subbuf, names, lens, cap);
    if (got <= 0) {
        refuse(k, req, 400, "malformed subscribe list, or too many topics");
        return;
    }
    size_t nsub = (size_t)got;
    for (size_t i = 0; i < nsub; i++) {
        if (dx__gw_topic_check_sub(names[i], lens[i]) != 0) {
            refuse(k, req, 400, "bad topic or pattern");
            return;
        }
        if (!gw_admit_topic(k, names[i], lens[i])) {
            refuse_h(k, req, 400, "topic longer than max_topic", "");
            return;
        }
        for (size_t j = 0; j < i; j++)
            if (lens[j] == lens[i] && !memcmp(names[j], names[i], lens[i])) {
                refuse(k, req, 400, "topic listed twice");
                return;
            }
    }
    /* Resume positions: Last-Event-ID (with epochs) wins over ?since=. */
    dx__gw_pos pos[SSE_MAX_TOPICS];
    int npos = 0;
    size_t hl;
    const char *h = dx_http_req_header(req, "Last-Event-ID", &hl);
    if (h && hl) {
        if (hl >= sizeof sincebuf) {
            refuse(k, req, 400, "Last-Event-ID too long");
            return;
        }
        memcpy(sincebuf, h, hl);
        npos = dx__gw_pos_parse(sincebuf, hl, true, pos, SSE_MAX_TOPICS);
    } else if (gw_query_get(req->query, req->query_len, "last-event-id", &v, &vlen) && vlen) {
        /* extension: the same value as a query parameter, for a page that
         * opens a new EventSource itself (it cannot set the header) */
        long sl = gw_pct_decode(v, vlen, sincebuf, sizeof sincebuf);
        npos = sl < 0 ? -1 : dx__gw_pos_parse(sincebuf, (size_t)sl, true, pos, SSE_MAX_TOPICS);
        h = "";
    } else if (gw_query_get(req->query, req->query_len, "since", &v, &vlen) && vlen) {
        long sl = gw_pct_decode(v, vlen, sincebuf, sizeof sincebuf);
        npos = sl < 0 ? -1 : dx__gw_pos_parse(sincebuf, (size_t)sl, false, pos, SSE_MAX_TOPICS);
    }
    if (npos < 0) {
        refuse(k, req, 400, h ? "malformed Last-Event-ID" : "malformed since");
        return;
    }
    size_t ol = 0, hlen = 0;
    const char *origin = dx_http_req_header(req, "Origin", &ol);
    const char *host = dx_http_req_header(req, "Host", &hlen);
    char hdr[64];
    int st = gw_admit_request(k, "GET /sse", req->remote, origin, ol, host, hlen, hdr, sizeof hdr);
    if (st) {
        refuse_h(k, req, st, st == 403 ? "origin not allowed" : "too many requests: retry later", hdr);
        return;
    }
    gw_auth_req ar = {.query = req->query, .query_len = req->query_len, .remote = req->remote, .what = "GET /sse"};
    ar.authz = dx_http_req_header(req, "Authorization", &ar.authz_len);
    ar.cookie = dx_http_req_header(req, "Cookie", &ar.cookie_len);
    dx__jwt_claims *claims = NULL;
    st = gw_auth_handshake(k, &ar, &claims);
    if (st) {
        refuse_h(k, req, st, st == 401 ? "invalid token" : st == 403 ? "anonymous access is off" : "try again", "");
        return;
    }
    gw_conn *g = gw_conn_new(k, GW_SSE);
    if (!g) {
        dx__jwt_claims_free(claims);
        refuse(k, req, 503, "out of memory");
        return;
    }
    if (gw_admit_count_ip(g, req->remote, true) != 0) {
        gw_conn_gone(g);
        refuse_h(k, req, 429, "too many connections from this address", "Retry-After: 5\r\n");
        return;
    }
    g->id = req->conn_id;
    if (claims && gw_auth_attach(g, claims) != 0) {
        gw_conn_gone(g);
        refuse(k, req, 503, "out of memory");
        return;
    }
    if (gw_admit_count_user(g, true) != 0) { /* an authenticated user past conns_per_user (logged) */
        gw_conn_gone(g);
        refuse_h(k, req, 429, "too many connections for this user", "Retry-After: 5\r\n");
        return;
    }
    for (size_t i = 0; i < nsub; i++) {
        if (gw_policy_check(g, GW_ACT_SUBSCRIBE, names[i], lens[i]) != 0) {
            gw_conn_gone(g);
            refuse(k, req, 403, "subscription not allowed");
            return;
        }
    }
    if ((st = gw_admit_bus_user(g)) != 0) { /* cluster-wide: awaited like a subscription */
        gw_conn_gone(g);
        refuse_h(k, req, st, "connection count unavailable: try again", "Retry-After: 1\r\n");
        return;
    }
    static _Thread_local char userbuf[DX__GW_TOPIC_MAX + 1];
    nsub = gw_auth_list_user_topic(g, userbuf, names, lens, nsub); /* unless listed */
    g->hreq = req;
    if (gw_subscribe_list(g, names, lens, nsub, pos, npos < 0 ? 0 : (size_t)npos))
        gw_sse_ready(g); /* patterns only, or every subscribe failed to go out (503) */
}

void gw_sse_ready(gw_conn *g)
{
    gw_worker *k = g->k;
    dx_http_req *req = g->hreq;
    g->hreq = NULL;
    if (!req)
        return;
    if (g->closing && !g->gone && !g->fail_status) { /* disconnected (/api/disconnect) before it started */
        refuse(k, req, 403, "disconnected");
        gw_conn_gone(g);
        return;
    }
    if (g->fail_status == 429) { /* conns_per_user, cluster-wide (gw_admit_bus_user) */
        refuse_h(k, req, 429, "too many connections for this user", "Retry-After: 5\r\n");
        gw_conn_gone(g);
        return;
    }
    if (g->fail_status || g->gone) {
        refuse(k, req, g->fail_status ? g->fail_status : 503, "subscriptions unavailable: try again");
        gw_conn_gone(g);
        return;
    }
    int err = 0;
    /* CORS: an allowed cross-origin page may read the stream */
    char hdr[512] = "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n";
    size_t ol = 0, hl = strlen(hdr);
    const char *origin = dx_http_req_header(req, "Origin", &ol);
    (void)gw_admit_cors_headers(k, origin, ol, hdr + hl, sizeof hdr - hl);
    dx_http_stream *s = dx_http_reply_stream(req, 200, "text/event-stream; charset=utf-8", hdr, &stream_cb, g, &err);
    if (!s) {
        gw_conn_gone(g); /* the client left, or the answer could not be built */
        return;
    }
    g->s = s;
    g->open = true;
    gw_inc(&k->m.conns[GW_SSE], 1);
    gw_inc(&k->m.handshakes, 1);
    /* retry: the browser's reconnection delay (ms); then one ack per topic */
    dx_buf_clear(&k->scratch);
    int rc = dx_buf_append(&k->scratch, "retry: 1000\n\n", 13, 0);
    for (size_t i = 0; !rc && i < g->nsubs; i++) {
        gw_sub *sub = g->subs[i];
        rc = dx_buf_append(&k->scratch, "event: ack\ndata: ", 17, 0);
        if (!rc)
            rc = dx__gw_ack_sub_encode(&k->scratch, 0, -1, sub->name, sub->len, sub->ack_offset,
                                       sub->t ? sub->t->epoch : "", sub->t ? strlen(sub->t->epoch) : 0,
                                       sub->ack_recovered);
        if (!rc)
            rc = dx_buf_append(&k->scratch, "\n\n", 2, 0);
    }
    if (rc || dx_http_stream_send(s, dx_buf_head(&k->scratch), k->scratch.len) != 0) {
        gw_sse_close(g, "could not start");
        return;
    }
    g->sse_wrote = true;
    gw_flush_held(g);
}

/* The msg object of (e, pattern) in k->sse_msg, encoded once for every SSE
 * client of this worker that gets it next (the event around it differs per
 * client: its id). The cache holds a reference to e, so its address is not
 * reused while it is the key. */
static int msg_cached(gw_worker *k, dx__bus_topic *t, dx__gw_entry *e, const char *pattern, size_t plen)
{
    if (k->sse_e == e && k->sse_plen == (pattern ? plen : (size_t)-1) &&
        (!pattern || memcmp(k->sse_pat, pattern, plen) == 0))
        return 0;
    dx__gw_entry_unref(k->sse_e);
    k->sse_e = NULL;
    dx_buf_clear(&k->sse_msg);
    if (pattern && plen > DX__GW_TOPIC_MAX)
        return DX_EINVAL;
    int rc = dx__gw_msg_encode(&k->sse_msg, 0, t->name, t->len, dx__gw_entry_offset(e), t->epoch, strlen(t->epoch),
                               dx__gw_entry_kind(e), dx__gw_entry_data(e), dx__gw_entry_len(e), pattern, plen);
    if (rc)
        return rc;
    k->sse_e = dx__gw_entry_ref(e);
    k->sse_plen = pattern ? plen : (size_t)-1;
    if (pattern)
        memcpy(k->sse_pat, pattern, plen);
    return 0;
}

void gw_sse_release(gw_worker *k)
{
    dx__gw_entry_unref(k->sse_e);
    k->sse_e = NULL;
    dx_buf_deinit(&k->sse_msg);
}

void gw_sse_deliver(gw_conn *g, dx__bus_topic *t, dx__gw_entry *e, const char *pattern, size_t plen)
{
    gw_worker *k = g->k;
    if (g->closing || !g->s)
        return;
    dx__gw_pos pos[SSE_MAX_TOPICS];
    size_t n = 0;
    for (size_t i = 0; i < g->nsubs && n < SSE_MAX_TOPICS; i++) {
        gw_sub *s = g->subs[i];
        if (s->len == t->len && !memcmp(s->name, t->name, t->len))
            s->last = dx__gw_entry_offset(e);
        if (!s->t)
            continue;
        pos[n++] = (dx__gw_pos){s->name, s->len, s->last, s->t->epoch, strlen(s->t->epoch)};
    }
    dx_buf_clear(&k->scratch2);
    if (msg_cached(k, t, e, pattern, plen) != 0 ||
        dx__gw_sse_event_encode(&k->scratch2, 0, dx_buf_head(&k->sse_msg), k->sse_msg.len, pos, n) != 0) {
        gw_inc(&k->m.drops[GW_DROP_ERROR], 1);
        gw_sse_close(g, "out of memory");
        return;
    }
    size_t q = dx_http_stream_buffered(g->s);
    if (q && q + k->scratch2.len > k->gw->o.sub_queue) { /* an empty queue takes any one event */
        gw_inc(&k->m.drops[GW_DROP_SLOW_CLOSE], 1);
        gw_logf(k, DX_LOG_WARN, "gateway: conn=%llu slow SSE client (more than %zu bytes queued): stream ended",
                (unsigned long long)g->id, k->gw->o.sub_queue);
        gw_sse_close(g, "slow consumer");
        return;
    }
    if (dx_http_stream_send(g->s, dx_buf_head(&k->scratch2), k->scratch2.len) != 0) {
        g->closing = true; /* on_close follows */
        return;
    }
    gw_inc(&k->m.deliveries, 1);
    g->sse_wrote = true;
}

void gw_sse_close(gw_conn *g, const char *why)
{
    (void)why;
    g->closing = true;
    if (g->s)
        (void)dx_http_stream_end(g->s); /* on_close follows from the loop */
}

/* Every second: a stream written to since the last tick is not idle;
 * one idle for sse_heartbeat_ms (to the second) gets a comment line. */
void gw_sse_tick(gw_worker *k)
{
    dx_list_foreach(it, &k->conns) {
        gw_conn *g = dx_list_entry(it, gw_conn, node);
        if (g->dialect != GW_SSE || !g->s || g->closing)
            continue;
        if (g->sse_wrote) {
            g->sse_wrote = false;
            g->sse_idle_ms = 0;
            continue;
        }
        g->sse_idle_ms += 1000;
        if (g->sse_idle_ms + 500 < k->gw->o.sse_heartbeat_ms)
            continue;
        g->sse_idle_ms = 0;
        if (dx_http_stream_send(g->s, ": hb\n\n", 6) != 0)
            g->closing = true;
    }
}

size_t gw_sse_buffered(gw_conn *g)
{
    return g->s && !g->gone ? dx_http_stream_buffered(g->s) : 0;
}
