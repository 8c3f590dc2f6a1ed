/*
 * src/gateway/api.c: the gateway's plain HTTP endpoints (GATEWAY.md
 * "Endpoints"): /api/publish, /api/history, /api/presence, /api/disconnect
 * (Bearer API key), /metrics (Prometheus text), /healthz, and the hand-off
 * of /sse to sse.c.
 *
 * Order of checks on /api/...: the key first (no key configured: 403; a
 * missing or wrong key: 401, whatever the path), then the path (404), the
 * method (405), the parameters and body (400), then the bus. A request
 * whose body passes the server's max_http_body is answered 413 by the
 * server itself before the gateway sees it (so before the key check).
 * Replies are JSON built with jansson, except the msg objects of
 * /api/history, which use the dialect's encoder (the same bytes as on
 * the WebSocket). A publish is answered once the bus accepted it.
 */
#define _GNU_SOURCE
#include "gateway/gw.h"

#include "core/seams.h"
#include "proto/utf8.h"

#include <jansson.h>
#include <stdarg.h>
#include <stddef.h>
#include <strings.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool path_is(const dx_http_req *req, const char *p)
{
    size_t n = strlen(p);
    return req->path_len == n && memcmp(req->path, p, n) == 0;
}

static bool method_is(const dx_http_req *req, const char *m)
{
    return strcmp(req->method, m) == 0;
}

/* Answers with a JSON value (taken: decref'd here). */
static void reply_json(dx_http_req *req, int status, json_t *v, const char *headers)
{
    char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (!s) {
        (void)dx_http_reply(req, 500, "application/json", NULL, "{\"error\":\"out of memory\"}", 25);
        return;
    }
    (void)dx_http_reply(req, status, "application/json", headers, s, strlen(s));
    free(s);
}

static void reply_error(gw_worker *k, dx_http_req *req, int status, const char *reason, const char *headers)
{
    gw_logf(k, status >= 500 ? DX_LOG_WARN : DX_LOG_INFO, "gateway: %s %s %.*s: %d %s", req->remote, req->method,
            (int)req->path_len, req->path, status, reason);
    reply_json(req, status, json_pack("{s:s}", "error", reason), headers);
}

/* The decoded value of query parameter `key` into buf; -1 when absent,
 * -2 when malformed or too long. */
static long param(const dx_http_req *req, const char *key, char *buf, size_t cap)
{
    const char *v;
    size_t vlen;
    if (!gw_query_get(req->query, req->query_len, key, &v, &vlen))
        return -1;
    long n = gw_pct_decode(v, vlen, buf, cap);
    return n < 0 ? -2 : n;
}

/* A canonical decimal below 2^53; false otherwise. */
static bool parse_u53(const char *s, long len, uint64_t *out)
{
    if (len <= 0 || len > 16 || (len > 1 && s[0] == '0'))
        return false;
    uint64_t v = 0;
    for (long i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > DX__GW_OFFSET_MAX)
        return false;
    *out = v;
    return true;
}

/* The API key the request presents (Authorization: Bearer KEY), or NULL. */
static const gw_api_key *request_key(const gw_worker *k, const dx_http_req *req)
{
    size_t len;
    const char *h = dx_http_req_header(req, "Authorization", &len);
    if (!h || len < 7 || strncasecmp(h, "Bearer ", 7) != 0)
        return NULL;
    return gw_policy_api_key(k->pol, h + 7, len - 7);
}

/* ---- /api/publish -------------------------------------------------------- */

typedef struct api_ctx {
    gw_worker *k;
    dx_http_req *req;
    char topic[DX__GW_TOPIC_MAX + 1];
    size_t tlen;
} api_ctx;

static void publish_done(void *ud, int err, uint64_t offset, const char *epoch)
{
    api_ctx *a = ud;
    if (err) {
        gw_inc(&a->k->m.publishes_refused, 1);
        if (err == DX_ELIMIT)
            reply_error(a->k, a->req, 413, "the topic's offsets are exhausted (2^53)", NULL);
        else
            reply_error(a->k, a->req, 503, "not accepted: try again", "Retry-After: 1\r\n");
    } else {
        gw_inc(&a->k->m.publishes, 1);
        reply_json(a->req, 200,
                   json_pack("{s:s#,s:I,s:s}", "topic", a->topic, a->tlen, "offset", (json_int_t)offset, "epoch",
                             epoch),
                   NULL);
    }
    dx__free(NULL, a);
}

static api_ctx *ctx_new(gw_worker *k, dx_http_req *req, const char *topic, size_t tlen)
{
    api_ctx *a = dx__alloc(NULL, sizeof *a);
    if (!a)
        return NULL;
    a->k = k;
    a->req = req;
    memcpy(a->topic, topic, tlen);
    a->topic[tlen] = 0;
    a->tlen = tlen;
    return a;
}

/* The topic parameter, checked: its length, or -1 after answering 400. */
static long topic_param(gw_worker *k, dx_http_req *req, char *buf)
{
    long n = param(req, "topic", buf, DX__GW_TOPIC_MAX + 1);
    if (n < 0) {
        reply_error(k, req, 400, n == -1 ? "missing topic parameter" : "malformed or too long topic", NULL);
        return -1;
    }
    if (dx__gw_topic_check(buf, (size_t)n) != 0) {
        reply_error(k, req, 400, "bad topic (1-200 bytes of [A-Za-z0-9_.:@/-], no empty segment, not a pattern)",
                    NULL);
        return -1;
    }
    if (!gw_admit_topic(k, buf, (size_t)n)) {
        reply_error(k, req, 400, "topic longer than max_topic", NULL);
        return -1;
    }
    return n;
}

static void api_publish(gw_worker *k, dx_http_req *req)
{
    char topic[DX__GW_TOPIC_MAX + 1];
    if (!method_is(req, "POST")) {
        reply_error(k, req, 405, "use POST", "Allow: POST\r\n");
        return;
    }
    long tlen = topic_param(k, req, topic);
    if (tlen < 0) {
        gw_inc(&k->m.publishes_refused, 1);
        return;
    }
    const gw_limits_cfg *lim = gw_lim(k);
    const gw_nspace *ns = gw_limits_ns(lim, topic, (size_t)tlen);
    size_t max_api = lim->max_api_body && lim->max_api_body < k->gw->o.max_message ? lim->max_api_body
                                                                                   : k->gw->o.max_message;
    if (req->body_len > max_api || (ns && ns->max_message && req->body_len > ns->max_message)) {
        bool api = req->body_len > max_api;
        gw_inc(&k->m.publishes_refused, 1);
        gw_inc(&k->m.limit[api ? GW_LIM_API_BODY : GW_LIM_MESSAGE_SIZE], 1);
        char why[128];
        snprintf(why, sizeof why, api ? "body larger than %zu bytes (--max-api-body)"
                                      : "body larger than %zu bytes (this topic's namespace)",
                 api ? max_api : ns->max_message);
        reply_error(k, req, 413, why, NULL);
        return;
    }
    size_t ctl = 0;
    const char *ct = dx_http_req_header(req, "Content-Type", &ctl);
    dx__gw_kind kind = DX__GW_KIND_BINARY;
    size_t base = 0;
    while (ct && base < ctl && ct[base] != ';' && ct[base] != ' ')
        base++;
    if (ct && base == 16 && strncasecmp(ct, "application/json", 16) == 0)
        kind = DX__GW_KIND_JSON;
    else if (ct && base >= 5 && strncasecmp(ct, "text/", 5) == 0)
        kind = DX__GW_KIND_TEXT;
    if (kind == DX__GW_KIND_JSON) {
        json_error_t je;
        json_t *v = json_loadb((const char *)req->body, req->body_len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
        if (!v) {
            gw_inc(&k->m.publishes_refused, 1);
            char why[200];
            snprintf(why, sizeof why, "body is not valid JSON: %s", je.text);
            reply_error(k, req, 400, why, NULL);
            return;
        }
        json_decref(v);
    } else if (kind == DX__GW_KIND_TEXT && !dx__utf8_valid(req->body, req->body_len)) {
        gw_inc(&k->m.publishes_refused, 1);
        reply_error(k, req, 400, "text body is not valid UTF-8", NULL);
        return;
    }
    /* policy: the API key holder may publish anywhere */
    api_ctx *a = ctx_new(k, req, topic, (size_t)tlen);
    if (!a || dx__bus_publish(k->gw->bus, k->index, topic, (size_t)tlen, kind, req->body, req->body_len,
                              publish_done, a) != 0) {
        dx__free(NULL, a);
        gw_inc(&k->m.publishes_refused, 1);
        reply_error(k, req, 503, "not accepted: the bus is unavailable (or out of memory)", "Retry-After: 1\r\n");
    }
}

/* ---- /api/history ---------------------------------------------------------- */

static void history_done(void *ud, int err, dx__bus_topic *t, dx__gw_snapshot *snap)
{
    api_ctx *a = ud;
    gw_worker *k = a->k;
    if (err) {
        reply_error(k, a->req, 503, "history unavailable: try again", "Retry-After: 1\r\n");
        dx__free(NULL, a);
        return;
    }
    /* The envelope through jansson, the messages through the dialect's
     * encoder (their bytes are those of the WebSocket msg). */
    json_t *head = json_pack("{s:s#,s:s,s:I}", "topic", a->topic, a->tlen, "epoch", snap->epoch, "offset",
                             (json_int_t)snap->offset);
    char *hs = head ? json_dumps(head, JSON_COMPACT) : NULL;
    json_decref(head);
    dx_buf b;
    dx_buf_init(&b, NULL);
    int rc = hs ? 0 : DX_ENOMEM;
    if (!rc)
        rc = dx_buf_append(&b, hs, strlen(hs) - 1, 0); /* without its closing brace */
    if (!rc)
        rc = dx_buf_append(&b, ",\"messages\":[", 13, 0);
    for (size_t i = 0; !rc && i < snap->n; i++) {
        dx__gw_entry *e = snap->entries[i];
        if (i)
            rc = dx_buf_append(&b, ",", 1, 0);
        if (!rc)
            rc = dx__gw_msg_encode(&b, 0, t->name, t->len, dx__gw_entry_offset(e), snap->epoch, strlen(snap->epoch),
                                   dx__gw_entry_kind(e), dx__gw_entry_data(e), dx__gw_entry_len(e), NULL, 0);
    }
    if (!rc)
        rc = dx_buf_append(&b, "]}", 2, 0);
    free(hs);
    if (rc)
        reply_error(k, a->req, 500, "out of memory", NULL);
    else
        (void)dx_http_reply(a->req, 200, "application/json", NULL, dx_buf_head(&b), b.len);
    dx_buf_deinit(&b);
    dx__free(NULL, a);
}

/* A GET (or HEAD) with a topic parameter: its length, or -1 after
 * answering 405 or 400. */
static long get_topic(gw_worker *k, dx_http_req *req, char *topic)
{
    if (!method_is(req, "GET") && !method_is(req, "HEAD")) {
        reply_error(k, req, 405, "use GET", "Allow: GET, HEAD\r\n");
        return -1;
    }
    return topic_param(k, req, topic);
}

static void api_history(gw_worker *k, dx_http_req *req)
{
    char topic[DX__GW_TOPIC_MAX + 1], num[32];
    long tlen = get_topic(k, req, topic);
    if (tlen < 0)
        return;
    uint64_t since = 0, limit = DX__GW_HISTORY_LIMIT_DEFAULT;
    long n = param(req, "since", num, sizeof num);
    if (n != -1 && !parse_u53(num, n, &since)) {
        reply_error(k, req, 400, "since must be an integer 0..2^53-1", NULL);
        return;
    }
    n = param(req, "limit", num, sizeof num);
    if (n != -1 && !parse_u53(num, n, &limit)) {
        reply_error(k, req, 400, "limit must be an integer", NULL);
        return;
    }
    if (limit > DX__GW_HISTORY_LIMIT_MAX)
        limit = DX__GW_HISTORY_LIMIT_MAX;
    api_ctx *a = ctx_new(k, req, topic, (size_t)tlen);
    if (!a || dx__bus_history(k->gw->bus, k->index, topic, (size_t)tlen, since, (size_t)limit, history_done, a) != 0) {
        dx__free(NULL, a);
        reply_error(k, req, 503, "history: the bus is unavailable (or out of memory)", "Retry-After: 1\r\n");
    }
}

/* ---- /api/presence --------------------------------------------------------------- */

static void presence_done(void *ud, int err, uint64_t count, const char *const *users, const size_t *lens, size_t n)
{
    api_ctx *a = ud;
    if (err) {
        reply_error(a->k, a->req, 503, "presence unavailable: try again", "Retry-After: 1\r\n");
    } else {
        json_t *arr = json_array();
        for (size_t i = 0; arr && i < n; i++)
            json_array_append_new(arr, json_stringn(users[i], lens[i]));
        reply_json(a->req, 200, arr ? json_pack("{s:I,s:o}", "count", (json_int_t)count, "users", arr) : NULL, NULL);
    }
    dx__free(NULL, a);
}

static void api_presence(gw_worker *k, dx_http_req *req)
{
    char topic[DX__GW_TOPIC_MAX + 1];
    long tlen = get_topic(k, req, topic);
    if (tlen < 0)
        return;
    const gw_nspace *ns = gw_limits_ns(gw_lim(k), topic, (size_t)tlen);
    if (ns && !ns->presence) {
        gw_inc(&k->m.limit[GW_LIM_NS_PRESENCE], 1);
        reply_error(k, req, 403, "presence is off in this topic's namespace", NULL);
        return;
    }
    api_ctx *a = ctx_new(k, req, topic, (size_t)tlen);
    if (!a || dx__bus_presence(k->gw->bus, k->index, topic, (size_t)tlen, presence_done, a) != 0) {
        dx__free(NULL, a);
        reply_error(k, req, 503, "presence: the bus is unavailable (or out of memory)", "Retry-After: 1\r\n");
    }
}

/* ---- /api/disconnect ------------------------------------------------------------------ */

static void disconnect_done(void *ud, int err, uint64_t count)
{
    api_ctx *a = ud; /* topic holds the user id */
    if (err)
        reply_error(a->k, a->req, 503, "not done: try again", "Retry-After: 1\r\n");
    else
        reply_json(a->req, 200, json_pack("{s:s#,s:I}", "user", a->topic, a->tlen, "disconnected", (json_int_t)count),
                   NULL);
    dx__free(NULL, a);
}

static void api_disconnect(gw_worker *k, dx_http_req *req)
{
    char user[DX__GW_TOPIC_MAX + 1];
    if (!method_is(req, "POST")) {
        reply_error(k, req, 405, "use POST", "Allow: POST\r\n");
        return;
    }
    long ulen = param(req, "user", user, sizeof user);
    if (ulen <= 0) {
        reply_error(k, req, 400, ulen == -2 ? "malformed or too long user" : "missing user parameter", NULL);
        return;
    }
    api_ctx *a = ctx_new(k, req, user, (size_t)ulen);
    if (!a || dx__bus_disconnect_user(k->gw->bus, k->index, user, (size_t)ulen, disconnect_done, a) != 0) {
        dx__free(NULL, a);
        reply_error(k, req, 503, "not done: the bus is unavailable (or out of memory)", "Retry-After: 1\r\n");
    }
}

/* ---- /metrics ----------------------------------------------------------------------- */

static uint64_t sum(const dx_gateway *gw, size_t off)
{
    uint64_t s = 0;
    for (unsigned i = 0; i < gw->n; i++)
        s += atomic_load_explicit((_Atomic uint64_t *)((char *)&gw->w[i].m + off), memory_order_relaxed);
    return s;
}

#define SUM(field) sum(gw, offsetof(gw_metrics, field))

static int appendf(dx_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int appendf(dx_buf *b, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof line)
        return DX_EINVAL;
    return dx_buf_append(b, line, (size_t)n, 0);
}

static void metrics(gw_worker *k, dx_http_req *req)
{
    dx_gateway *gw = k->gw;
    static const char *const dialects[GW_NDIALECT] = {"raw", "json", "sse", "echo"};
    static const char *const drops[GW_NDROP] = {"slow_disconnect", "slow_gap", "error", "history_gap"};
    dx__bus_stats bs;
    dx__bus_stats_get(gw->bus, &bs);
    dx_buf b;
    dx_buf_init(&b, NULL);
    int rc = 0;
#define P(...) (rc = rc ? rc : appendf(&b, __VA_ARGS__))
    P("# HELP duplex_connections Open gateway connections by dialect.\n# TYPE duplex_connections gauge\n");
    for (int d = 0; d < GW_NDIALECT; d++)
        P("duplex_connections{dialect=\"%s\"} %llu\n", dialects[d],
          (unsigned long long)sum(gw, offsetof(gw_metrics, conns) + (size_t)d * sizeof(_Atomic uint64_t)));
    P("# HELP duplex_handshakes_total WebSocket and SSE handshakes on gateway paths.\n"
      "# TYPE duplex_handshakes_total counter\n");
    P("duplex_handshakes_total{result=\"accepted\"} %llu\n", (unsigned long long)SUM(handshakes));
    P("duplex_handshakes_total{result=\"refused\"} %llu\n", (unsigned long long)SUM(handshakes_refused));
    P("# HELP duplex_subscriptions Subscriptions held (topics and patterns).\n# TYPE duplex_subscriptions gauge\n");
    P("duplex_subscriptions %llu\n", (unsigned long long)SUM(subscriptions));
    P("# HELP duplex_topics Topics with state (sequencer, history or presence).\n# TYPE duplex_topics gauge\n");
    P("duplex_topics %llu\n", (unsigned long long)bs.topics);
    P("# HELP duplex_publishes_total Publishes by result.\n# TYPE duplex_publishes_total counter\n");
    P("duplex_publishes_total{result=\"accepted\"} %llu\n", (unsigned long long)SUM(publishes));
    P("duplex_publishes_total{result=\"refused\"} %llu\n", (unsigned long long)SUM(publishes_refused));
    P("# HELP duplex_deliveries_total Messages handed to subscriber connections.\n"
      "# TYPE duplex_deliveries_total counter\n");
    P("duplex_deliveries_total %llu\n", (unsigned long long)SUM(deliveries));
    P("# HELP duplex_dropped_total Messages not delivered to a subscriber, by reason.\n"
      "# TYPE duplex_dropped_total counter\n");
    for (int d = 0; d < GW_NDROP; d++)
        P("duplex_dropped_total{reason=\"%s\"} %llu\n", drops[d],
          (unsigned long long)sum(gw, offsetof(gw_metrics, drops) + (size_t)d * sizeof(_Atomic uint64_t)));
    P("# HELP duplex_queued_bytes Bytes queued to gateway connections, /echo excepted (sampled every second).\n"
      "# TYPE duplex_queued_bytes gauge\n");
    P("duplex_queued_bytes %llu\n", (unsigned long long)SUM(queued_bytes));
    P("# HELP duplex_history_messages Retained messages.\n# TYPE duplex_history_messages gauge\n");
    P("duplex_history_messages %llu\n", (unsigned long long)bs.history_msgs);
    P("# HELP duplex_history_bytes Retained payload bytes.\n# TYPE duplex_history_bytes gauge\n");
    P("duplex_history_bytes %llu\n", (unsigned long long)bs.history_bytes);
    P("# HELP duplex_handoffs_total Cross-thread hand-offs of published messages (one per worker per publish).\n"
      "# TYPE duplex_handoffs_total counter\n");
    P("duplex_handoffs_total %llu\n", (unsigned long long)bs.handoffs);
    P("# HELP duplex_handoffs_lost_total Hand-offs that could not be queued (out of memory): a worker's "
      "subscribers missed a message.\n# TYPE duplex_handoffs_lost_total counter\n");
    P("duplex_handoffs_lost_total %llu\n", (unsigned long long)bs.lost);
    P("# HELP duplex_bus_pending_bytes Payload bytes of publishes handed to the bus (Redis) and not yet confirmed.\n"
      "# TYPE duplex_bus_pending_bytes gauge\nduplex_bus_pending_bytes %llu\n", (unsigned long long)bs.pending_bytes);
    P("# HELP duplex_bus_refused_total Bus requests refused at once (bus unreachable, or pending bytes over "
      "the limit).\n"
      "# TYPE duplex_bus_refused_total counter\nduplex_bus_refused_total %llu\n", (unsigned long long)bs.refused);
    P("# HELP duplex_bus_reconnects_total Connections to the bus re-established after a loss.\n"
      "# TYPE duplex_bus_reconnects_total counter\nduplex_bus_reconnects_total %llu\n",
      (unsigned long long)bs.reconnects);
    if (bs.shards) {
        P("# HELP duplex_bus_shards Redis servers the topics are spread over.\n"
          "# TYPE duplex_bus_shards gauge\nduplex_bus_shards %llu\n", (unsigned long long)bs.shards);
        P("# HELP duplex_bus_shard_up Whether every worker reaches Redis server N (1-based, as configured).\n"
          "# TYPE duplex_bus_shard_up gauge\n");
        for (unsigned i = 0; i < bs.shards && i < 64; i++)
            P("duplex_bus_shard_up{shard=\"%u\"} %d\n", i + 1, (bs.shards_down_mask >> i) & 1 ? 0 : 1);
    }
    P("# HELP duplex_bus_recovered_total Live messages missed by this node and read back from the bus's history.\n"
      "# TYPE duplex_bus_recovered_total counter\nduplex_bus_recovered_total %llu\n",
      (unsigned long long)bs.recovered);
    P("# HELP duplex_bus_epoch_changes_total Topics being delivered here whose epoch changed (the bus lost their "
      "history: continuity lost).\n# TYPE duplex_bus_epoch_changes_total counter\nduplex_bus_epoch_changes_total %llu\n",
      (unsigned long long)bs.epochs);
    P("# HELP duplex_bus_subscriptions Channels (topics and patterns) this node holds subscribed in the bus: one "
      "per channel per node, held by the channel's owner worker.\n"
      "# TYPE duplex_bus_subscriptions gauge\nduplex_bus_subscriptions %llu\n",
      (unsigned long long)bs.bus_subscriptions);
    P("# HELP duplex_bus_relayed_total Live messages a channel's owner worker forwarded to an interested worker of "
      "this node.\n# TYPE duplex_bus_relayed_total counter\nduplex_bus_relayed_total %llu\n",
      (unsigned long long)bs.relayed);
    /* by API key name; key="" for requests refused before a key matched */
    P("# HELP duplex_api_requests_total Requests to /api/... by API key name.\n"
      "# TYPE duplex_api_requests_total counter\n");
    uint64_t keyed = 0;
    for (unsigned w = 0; w < gw->n; w++) {
        size_t n = atomic_load_explicit(&gw->w[w].m.nkeystat, memory_order_acquire);
        for (size_t i = 0; i < n; i++)
            keyed += atomic_load_explicit(&gw->w[w].m.keystat[i].n, memory_order_relaxed);
    }
    /* each name once, summed over the workers (each has its own table) */
    for (unsigned w = 0; w < gw->n; w++) {
        size_t n = atomic_load_explicit(&gw->w[w].m.nkeystat, memory_order_acquire);
        for (size_t i = 0; i < n; i++) {
            const char *name = gw->w[w].m.keystat[i].name;
            bool seen = false;
            for (unsigned v = 0; v < w && !seen; v++) {
                size_t vn = atomic_load_explicit(&gw->w[v].m.nkeystat, memory_order_acquire);
                for (size_t j = 0; j < vn && !seen; j++)
                    seen = !strcmp(gw->w[v].m.keystat[j].name, name);
            }
            if (seen)
                continue;
            uint64_t c = 0;
            for (unsigned v = w; v < gw->n; v++) {
                size_t vn = atomic_load_explicit(&gw->w[v].m.nkeystat, memory_order_acquire);
                for (size_t j = 0; j < vn; j++)
                    if (!strcmp(gw->w[v].m.keystat[j].name, name))
                        c += atomic_load_explicit(&gw->w[v].m.keystat[j].n, memory_order_relaxed);
            }
            char esc[2 * GW_KEYSTAT_NAME];
            size_t e = 0;
            for (const char *q = name; *q && e + 2 < sizeof esc; q++) {
                if (*q == '"' || *q == '\\')
                    esc[e++] = '\\';
                esc[e++] = *q == '\n' ? ' ' : *q;
            }
            esc[e] = 0;
            P("duplex_api_requests_total{key=\"%s\"} %llu\n", esc, (unsigned long long)c);
        }
    }
    uint64_t all = SUM(api_requests);
    P("duplex_api_requests_total{key=\"\"} %llu\n", (unsigned long long)(all > keyed ? all - keyed : 0));
    P("# HELP duplex_auth_total Handshakes (/ws, /sse) authenticated by a token.\n"
      "# TYPE duplex_auth_total counter\nduplex_auth_total %llu\n",
      (unsigned long long)SUM(auth_ok));
    P("# HELP duplex_auth_refused_total Handshakes refused by authentication (401/403), by reason.\n"
      "# TYPE duplex_auth_refused_total counter\n");
    for (int r = 1; r < GW_AUTH_NREASON; r++)
        if (r != DX__JWT_E_NOMEM)
            P("duplex_auth_refused_total{reason=\"%s\"} %llu\n", gw_auth_reason(r),
              (unsigned long long)sum(gw, offsetof(gw_metrics, auth_refused) + (size_t)r * sizeof(_Atomic uint64_t)));
    P("# HELP duplex_auth_expired_total Connections closed 4001: token expired without refresh.\n"
      "# TYPE duplex_auth_expired_total counter\nduplex_auth_expired_total %llu\n",
      (unsigned long long)SUM(auth_expired));
    P("# HELP duplex_auth_refresh_total Token refreshes (JSON dialect), by result.\n"
      "# TYPE duplex_auth_refresh_total counter\n");
    P("duplex_auth_refresh_total{result=\"ok\"} %llu\n", (unsigned long long)SUM(refresh_ok));
    P("duplex_auth_refresh_total{result=\"refused\"} %llu\n", (unsigned long long)SUM(refresh_refused));
    P("# HELP duplex_publish_latency_seconds From sequencing to the hand-off to a worker's subscribers.\n"
      "# TYPE duplex_publish_latency_seconds histogram\n");
    uint64_t cum = 0;
    for (int i = 0; i < GW_LAT_N; i++) {
        cum += sum(gw, offsetof(gw_metrics, lat) + (size_t)i * sizeof(_Atomic uint64_t));
        if (i < GW_LAT_N - 1)
            P("duplex_publish_latency_seconds_bucket{le=\"%g\"} %llu\n", gw_lat_bounds[i], (unsigned long long)cum);
        else
            P("duplex_publish_latency_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    P("duplex_publish_latency_seconds_sum %.9f\n", (double)SUM(lat_sum_ns) / 1e9);
    P("duplex_publish_latency_seconds_count %llu\n", (unsigned long long)SUM(lat_count));
#define PMD(i) ((unsigned long long)sum(gw, offsetof(gw_metrics, pmd) + (size_t)(i) * sizeof(_Atomic uint64_t)))
    P("# HELP duplex_deflate_messages_total Messages compressed (out) and inflated (in) by permessage-deflate "
      "(sampled every second).\n# TYPE duplex_deflate_messages_total counter\n");
    P("duplex_deflate_messages_total{direction=\"out\"} %llu\n", PMD(GW_PMD_MSGS_OUT));
    P("duplex_deflate_messages_total{direction=\"in\"} %llu\n", PMD(GW_PMD_MSGS_IN));
    P("# HELP duplex_deflate_bytes_total Payload bytes of those messages, uncompressed (raw) and on the wire.\n"
      "# TYPE duplex_deflate_bytes_total counter\n");
    P("duplex_deflate_bytes_total{direction=\"out\",form=\"raw\"} %llu\n", PMD(GW_PMD_RAW_OUT));
    P("duplex_deflate_bytes_total{direction=\"out\",form=\"wire\"} %llu\n", PMD(GW_PMD_WIRE_OUT));
    P("duplex_deflate_bytes_total{direction=\"in\",form=\"raw\"} %llu\n", PMD(GW_PMD_RAW_IN));
    P("duplex_deflate_bytes_total{direction=\"in\",form=\"wire\"} %llu\n", PMD(GW_PMD_WIRE_IN));
    P("# HELP duplex_deflate_downgrades_total Connections given no_context_takeover by --deflate-mem-budget.\n"
      "# TYPE duplex_deflate_downgrades_total counter\nduplex_deflate_downgrades_total %llu\n",
      PMD(GW_PMD_DOWNGRADES));
    P("# HELP duplex_deflate_refused_total Offers declined by --deflate-mem-budget (no compression).\n"
      "# TYPE duplex_deflate_refused_total counter\nduplex_deflate_refused_total %llu\n", PMD(GW_PMD_REFUSED));
    P("# HELP duplex_deflate_mem_bytes zlib memory held for permessage-deflate, all workers.\n"
      "# TYPE duplex_deflate_mem_bytes gauge\nduplex_deflate_mem_bytes %llu\n", PMD(GW_PMD_MEM));
#undef PMD
    P("# HELP duplex_config_reloads_total Policy reloads (dx_gateway_reload, SIGHUP in duplex serve): applied, or "
      "refused with the old policy kept.\n# TYPE duplex_config_reloads_total counter\n");
    P("duplex_config_reloads_total{result=\"applied\"} %llu\n", (unsigned long long)atomic_load(&gw->reloads[0]));
    P("duplex_config_reloads_total{result=\"refused\"} %llu\n", (unsigned long long)atomic_load(&gw->reloads[1]));
    static const char *const lims[GW_NLIM] = {"origin",       "no_origin",    "handshake_rate",   "conns_per_ip",
                                              "conns_per_user", "topic_length", "message_size",    "api_body",
                                              "namespace_publish", "namespace_presence", "conns_per_user_unavailable"};
    static const char *const racts[GW_NRATE] = {"paused", "refused", "closed"};
    P("# HELP duplex_limit_refused_total Requests, handshakes and messages refused by a limit.\n"
      "# TYPE duplex_limit_refused_total counter\n");
    for (int l = 0; l < GW_NLIM; l++)
        P("duplex_limit_refused_total{limit=\"%s\"} %llu\n", lims[l],
          (unsigned long long)sum(gw, offsetof(gw_metrics, limit) + (size_t)l * sizeof(_Atomic uint64_t)));
    P("# HELP duplex_limit_rate_total Connections over a message rate, by what was done.\n"
      "# TYPE duplex_limit_rate_total counter\n");
    for (int r = 0; r < GW_NRATE; r++)
        P("duplex_limit_rate_total{action=\"%s\"} %llu\n", racts[r],
          (unsigned long long)sum(gw, offsetof(gw_metrics, rate) + (size_t)r * sizeof(_Atomic uint64_t)));
    pthread_mutex_lock(&gw->counts.mu);
    uint64_t ev = gw->counts.hs.evictions, hsu = gw->counts.hs.used;
    pthread_mutex_unlock(&gw->counts.mu);
    P("# HELP duplex_limit_handshake_evictions_total Live handshake buckets forgotten for a new address (the "
      "table is full: a flood of distinct addresses).\n# TYPE duplex_limit_handshake_evictions_total counter\n"
      "duplex_limit_handshake_evictions_total %llu\n", (unsigned long long)ev);
    P("# HELP duplex_limit_handshake_addresses Addresses in the handshake table.\n"
      "# TYPE duplex_limit_handshake_addresses gauge\nduplex_limit_handshake_addresses %llu\n",
      (unsigned long long)hsu);
    P("# HELP duplex_limit_drained_total Connections closed 1012 by a drain.\n"
      "# TYPE duplex_limit_drained_total counter\nduplex_limit_drained_total %llu\n",
      (unsigned long long)SUM(drained));
    P("# HELP duplex_workers Worker threads.\n# TYPE duplex_workers gauge\nduplex_workers %u\n", gw->n);
#undef P
    if (rc)
        (void)dx_http_reply(req, 500, NULL, NULL, "out of memory\n", 14);
    else
        (void)dx_http_reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, dx_buf_head(&b), b.len);
    dx_buf_deinit(&b);
}

/* /healthz while the bus works: "ok", or, with some Redis servers of a
 * sharded bus down (their topics answer 503, the others work), 200
 * "degraded: ..." naming them (docs/gateway.md, "Sharding"). */
static void health_ok(dx_gateway *gw, dx_http_req *req)
{
    dx__bus_stats bs;
    dx__bus_stats_get(gw->bus, &bs);
    if (!bs.shards_down) {
        (void)dx_http_reply(req, 200, "text/plain; charset=utf-8", NULL, "ok\n", 3);
        return;
    }
    char msg[256];
    int n = snprintf(msg, sizeof msg, "degraded: %llu of %llu Redis servers down (", (unsigned long long)bs.shards_down,
                     (unsigned long long)bs.shards);
    for (unsigned i = 0, first = 1; i < 64 && n > 0 && (size_t)n < sizeof msg; i++)
        if (bs.shards_down_mask & (UINT64_C(1) << i)) {
            n += snprintf(msg + n, sizeof msg - (size_t)n, "%s%u", first ? "server " : ", ", i + 1);
            first = 0;
        }
    if (n > 0 && (size_t)n < sizeof msg)
        n += snprintf(msg + n, sizeof msg - (size_t)n, "): their topics answer 503\n");
    if (n < 0 || (size_t)n >= sizeof msg)
        n = (int)sizeof msg - 1;
    (void)dx_http_reply(req, 200, "text/plain; charset=utf-8", NULL, msg, (size_t)n);
}

/* ---- dispatch ------------------------------------------------------------------------ */

int gw_api_http(gw_worker *k, dx_http_req *req)
{
    dx_gateway *gw = k->gw;
    bool health = path_is(req, "/healthz");
    if (health || path_is(req, "/metrics")) {
        if (!method_is(req, "GET") && !method_is(req, "HEAD"))
            (void)dx_http_reply(req, 405, NULL, "Allow: GET, HEAD\r\n", "405 Method Not Allowed\n", 23);
        else if (!health)
            metrics(k, req);
        else if (k->stopping) /* a load balancer stops sending here (docs/deploy.md) */
            (void)dx_http_reply(req, 503, "text/plain; charset=utf-8", NULL, "draining\n", 9);
        else if (!dx__bus_healthy(gw->bus))
            (void)dx_http_reply(req, 503, NULL, NULL, "unavailable\n", 12);
        else
            health_ok(gw, req);
        return 1;
    }
    if (path_is(req, "/sse")) {
        gw_sse_request(k, req);
        return 1;
    }
    if (!(req->path_len >= 4 && memcmp(req->path, "/api", 4) == 0 && (req->path_len == 4 || req->path[4] == '/')))
        return 0;
    gw_inc(&k->m.api_requests, 1);
    if (!k->pol->n_api_keys) {
        reply_error(k, req, 403,
                    "the HTTP API is off: no API key is configured (start duplex serve with --api-key KEY or "
                    "DUPLEX_API_KEY=KEY)",
                    NULL);
        return 1;
    }
    const gw_api_key *key = request_key(k, req);
    if (!key) {
        reply_error(k, req, 401, "missing or wrong API key (Authorization: Bearer KEY)",
                    "WWW-Authenticate: Bearer realm=\"duplex\"\r\n");
        return 1;
    }
    gw_auth_count_key(k, key->name);
    gw_logf(k, DX_LOG_DEBUG, "gateway: %s %s %.*s with API key '%s'", req->remote, req->method, (int)req->path_len,
            req->path, key->name);
    if (path_is(req, "/api/publish"))
        api_publish(k, req);
    else if (path_is(req, "/api/history"))
        api_history(k, req);
    else if (path_is(req, "/api/presence"))
        api_presence(k, req);
    else if (path_is(req, "/api/disconnect"))
        api_disconnect(k, req);
    else
        reply_error(k, req, 404, "no such API endpoint (publish, history, presence, disconnect)", NULL);
    return 1;
}
