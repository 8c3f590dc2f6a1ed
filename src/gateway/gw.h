/*
 * src/gateway/gw.h: the gateway's internal state shared by its files:
 * gateway.c (workers, connections, the two WebSocket dialects, delivery),
 * api.c (the HTTP API, /metrics, /healthz), sse.c (Server-Sent Events),
 * policy.c (every "may this connection do that" decision).
 *
 * Threading: a dx_gateway is shared by N workers; each gw_worker and every
 * gw_conn on it belong to that worker's loop thread. What crosses threads
 * goes through the bus (src/bus/bus.h), or is a counter read with relaxed
 * atomics (/metrics sums every worker's).
 */
#ifndef DX_GATEWAY_GW_H
#define DX_GATEWAY_GW_H

#include "bus/bus.h"
#include "core/buf.h"
#include "core/list.h"
#include "duplex/gateway.h"
#include "duplex/server.h"
#include "gateway/auth.h"
#include "gateway/dialect.h"
#include "gateway/history.h"
#include "gateway/limits.h"
#include "gateway/policy.h"
#include "gateway/topic.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum gw_dialect { GW_RAW = 0, GW_JSON = 1, GW_SSE = 2, GW_ECHO = 3, GW_NDIALECT = 4 };

/* Reasons a message was not delivered to a subscriber (/metrics label). */
enum gw_drop {
    GW_DROP_SLOW_CLOSE = 0, /* the subscriber was disconnected (1013 or SSE ended) */
    GW_DROP_SLOW_GAP,       /* drop-oldest: announced with gap */
    GW_DROP_ERROR,          /* out of memory building or queueing the frame: the connection is closed 1011 */
    GW_DROP_HISTORY_GAP,    /* the bus lost them (history trimmed while its subscription was down): gap / 1013 */
    GW_NDROP
};

#define GW_KEYSTAT_MAX 32  /* distinct API key names counted; more go to "other" */
#define GW_KEYSTAT_NAME 64
/* Limits that refused something (/metrics duplex_limit_refused_total). */
enum gw_limit {
    GW_LIM_ORIGIN = 0,      /* Origin not allowed (403) */
    GW_LIM_NO_ORIGIN,       /* no Origin while allow_no_origin is off (403) */
    GW_LIM_HANDSHAKE_RATE,  /* handshakes per second per address (429) */
    GW_LIM_CONNS_IP,        /* live connections per address (429) */
    GW_LIM_CONNS_USER,      /* live connections per user (429) */
    GW_LIM_TOPIC_LEN,       /* topic past max_topic (4400 / 400) */
    GW_LIM_MESSAGE_SIZE,    /* message past its namespace's max_message (4413 / 1009 / 413) */
    GW_LIM_API_BODY,        /* /api/publish body past max_api_body (413) */
    GW_LIM_NS_PUBLISH,      /* publish into a namespace that forbids it (4403 / 403) */
    GW_LIM_NS_PRESENCE,     /* presence in a namespace without it (4403) */
    GW_LIM_CONNS_USER_BUS,  /* conns_per_user with a shared bus: the count could not be had in time (503) */
    GW_NLIM
};

/* What the message rate limit did (duplex_limit_rate_total{action}). */
enum gw_rate_act { GW_RATE_PAUSED = 0, GW_RATE_REFUSED, GW_RATE_CLOSED, GW_NRATE };

/* Publish→write latency buckets, seconds (the last is +Inf). */
#define GW_LAT_N 12
extern const double gw_lat_bounds[GW_LAT_N - 1];

/* One worker's counters: written by its thread only (relaxed stores), read
 * by whichever thread answers /metrics. */
/* gw_metrics.pmd: the deflate fields of dx_server_stats, in this order */
enum {
    GW_PMD_MSGS_OUT, GW_PMD_RAW_OUT, GW_PMD_WIRE_OUT,
    GW_PMD_MSGS_IN, GW_PMD_WIRE_IN, GW_PMD_RAW_IN,
    GW_PMD_DOWNGRADES, GW_PMD_REFUSED, GW_PMD_MEM,
    GW_NPMD
};

typedef struct gw_metrics {
    _Atomic uint64_t conns[GW_NDIALECT];     /* gauges */
    _Atomic uint64_t handshakes;             /* WebSocket upgrades accepted on /ws */
    _Atomic uint64_t handshakes_refused;     /* /ws and /sse requests refused (4xx) */
    _Atomic uint64_t subscriptions;          /* gauge */
    _Atomic uint64_t publishes;              /* accepted publishes asked from this worker */
    _Atomic uint64_t publishes_refused;      /* refused (bad request, policy, unavailable) */
    _Atomic uint64_t deliveries;             /* messages handed to a connection */
    _Atomic uint64_t drops[GW_NDROP];
    _Atomic uint64_t queued_bytes;           /* gauge, refreshed every second */
    _Atomic uint64_t api_requests;
    _Atomic uint64_t lat[GW_LAT_N];          /* publish→write histogram (not cumulative here) */
    _Atomic uint64_t lat_sum_ns;
    _Atomic uint64_t lat_count;
    /* permessage-deflate: copies of this worker's dx_server_stats, refreshed every second */
    _Atomic uint64_t pmd[GW_NPMD];
    /* auth (auth.c) */
    _Atomic uint64_t auth_ok;                /* handshakes authenticated by a token */
    _Atomic uint64_t auth_refused[GW_AUTH_NREASON];
    _Atomic uint64_t auth_expired;           /* connections closed 4001 */
    _Atomic uint64_t refresh_ok, refresh_refused;
    /* API requests per API key name: append-only (name written, then
     * nkeystat released), read by /metrics on another thread */
    struct {
        char name[GW_KEYSTAT_NAME];
        _Atomic uint64_t n;
    } keystat[GW_KEYSTAT_MAX];
    _Atomic size_t nkeystat;
    _Atomic uint64_t limit[GW_NLIM];         /* limits.c/admit.c refusals */
    _Atomic uint64_t rate[GW_NRATE];
    _Atomic uint64_t drained;                /* connections closed 1012 by a drain */
} gw_metrics;

static inline void gw_inc(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}
static inline void gw_dec(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) - n, memory_order_relaxed);
}

typedef struct gw_conn gw_conn;
typedef struct gw_worker gw_worker;

/* One subscription of a connection. */
typedef struct gw_sub {
    gw_conn *g;
    char *name;            /* NUL-terminated */
    size_t len;
    bool pattern;
    bool pending;          /* a bus subscribe is out: the request owns this record too */
    bool dead;             /* unsubscribed or closed while pending: freed by the completion */
    dx__gw_stitch st;      /* while pending */
    dx__bus_topic *t;      /* after the completion (SSE ids, gaps): name + epoch */
    uint64_t last;         /* SSE: last offset delivered */
    uint64_t ack_offset;   /* SSE: the subscribe's answer, for its ack event */
    bool ack_recovered;
    bool has_id;
    uint64_t id;           /* JSON: the sub request's id, for the ack */
    bool quiet;            /* made during the handshake (JSON: the user: topic): no ack, counts
                              down g->waiting as raw and SSE subscriptions do */
} gw_sub;

/* A message held for a connection that cannot take it yet (not open, or
 * drop-oldest overflow). */
typedef struct gw_held {
    dx__bus_topic *t;
    dx__gw_entry *e;
    dx_msg *m;             /* drop-oldest: the frame to send; NULL: build at flush */
    const char *pattern;   /* SSE before it opens: the matching pattern (a gw_sub's name), or NULL */
} gw_held;

typedef struct gw_gap {
    dx__bus_topic *t;
    uint64_t from, to;
} gw_gap;

/* Laid out by size (pointers, then 64-bit values, then 32-bit counts,
 * then flags) so an idle connection's record has no padding: every /ws
 * and /sse connection pays for it (docs/benchmarks.md "RSS per idle
 * connection"). Counts are 32-bit: each is bounded far below 2^32 by a
 * limit (--max-subs, the held-message budget, a namespace table). */
struct gw_conn {
    dx_list node;          /* in the worker's conns */
    gw_worker *k;
    const char *early_why; /* closes it with this code and reason (a literal) */
    dx_conn *c;            /* WebSocket dialects, once open */
    dx_upgrade *up;        /* raw dialect: the deferred upgrade until its subscriptions are in */
    struct dx_http_stream *s; /* SSE */
    dx_http_req *hreq;     /* SSE: the request until its subscriptions are in */
    char *user;            /* authenticated user id (NUL-terminated), NULL: anonymous */
    dx__jwt_claims *claims; /* the token's (auth.c), NULL: anonymous */
    char *pub;             /* raw dialect: the publish topic */
    gw_sub **subs;
    gw_held *held;         /* not open yet, or drop-oldest overflow: FIFO */
    gw_gap *gaps;
    gw_ns_bucket *nsb;     /* per-namespace buckets, made on first use */
    const gw_limits_cfg *nsb_cfg; /* the policy they were made under (a reload renumbers) */
    struct gw_ucreq *ucreq; /* the per-user count's cluster-wide request (bus_counted), while out */
    dx_list rnode;         /* rate_paused: in the worker's rpaused */
    gw_bucket rate;        /* messages per second (rate.last_ns 0: not started) */
    int64_t exp_ms;        /* close 4001 at (ms since the epoch) */
    uint64_t id;           /* log lines */
    uint64_t ipkey;
    uint64_t resume_ns;    /* rate_paused: when reading resumes */
    size_t heldbytes;
    /* Counts and small fields, by size (no padding: an idle connection
     * pays for each; see docs/benchmarks.md "RSS per idle connection"). */
    unsigned refs;         /* 1 for the connection + 1 per request out (bus, deferred answer) */
    unsigned waiting;      /* subscriptions awaited before the upgrade / stream starts */
    unsigned inflight;     /* publishes awaiting the bus */
    unsigned sse_idle_ms;  /* SSE: idle ticks, in ms */
    uint32_t ulen;
    uint32_t exp_ix;       /* 1 + slot in k->exph, 0: not queued */
    uint32_t pub_len;
    uint32_t nsubs, capsubs;
    uint32_t npending;     /* subs with pending set */
    uint32_t nheld, capheld, headheld;
    uint32_t ngaps, capgaps;
    uint32_t nnsb;
    uint16_t early_code;   /* closed (e.g. /api/disconnect) before its WebSocket opened: on_open */
    int16_t fail_status;   /* a subscription failed before the answer: refuse with this (HTTP status) */
    uint8_t dialect;       /* enum gw_dialect */
    uint8_t ipfam;         /* AF_INET/AF_INET6; 0: not counted per address */
    bool open;             /* messages may be written */
    bool closing;          /* closed by us, or gone: deliver nothing more */
    bool gone;             /* on_close came / the stream ended: c and s are invalid */
    bool paused;           /* reading paused: too many publishes in flight */
    bool overflowed;       /* more held before opening than the budget */
    bool recheck;          /* a flush of the backlog is posted */
    bool sse_wrote;        /* SSE: written since the last tick (heartbeats) */
    bool user_counted;     /* counted in the gateway's per-user table */
    bool bus_counted;      /* counted cluster-wide (gw_admit_bus_user): -1 at the end */
    bool rate_paused;      /* reading paused by the message rate (see paused: in flight) */
    bool draining;         /* dx_gateway_shutdown: closed 1012 once its backlog is out */
};

/* Frames built once per delivered entry, per pattern (JSON `pattern`). */
typedef struct gw_pcache {
    const char *pattern;
    size_t plen;
    const dx__gw_entry *e;
    dx_msg *m;
} gw_pcache;

/* An entry the bus handed over, waiting for the end of the bus's batch. */
typedef struct gw_pend {
    dx__bus_topic *t;
    dx__gw_entry *e;
} gw_pend;

struct gw_worker {
    dx_gateway *gw;
    unsigned index;
    dx_loop *loop;
    dx_server *srv;
    dx__gw_topic_index *ix;
    dx_list conns;          /* every gw_conn not yet freed */
    dx_timer *tick;         /* 1 s: gauges, SSE heartbeats */
    dx_timer *demo;         /* worker 0 with --demo */
    uint64_t demo_n;
    bool stopping;
    dx_buf scratch, scratch2;
    gw_pcache pc[16];
    /* SSE: the last msg object encoded (sse.c msg_cached), for a reference to sse_e */
    dx__gw_entry *sse_e;
    size_t sse_plen;       /* (size_t)-1: no pattern */
    char sse_pat[DX__GW_TOPIC_MAX];
    dx_buf sse_msg;
    gw_pend *pend, *pend_spare; /* handed over, not yet delivered (gw_flush_pending) */
    size_t npend, cappend, cappend_spare;
    bool flushing;
    size_t npc;
    gw_policy *pol;         /* this worker's reference to the current policy (settings.c) */
    gw_conn **exph;         /* auth.c: authenticated connections, min-heap by exp_ms */
    size_t nexp, capexp;
    dx_list rpaused;        /* connections paused by a rate limit (admit.c) */
    dx_timer *rtimer;       /* resumes them; armed only while the list is not empty */
    uint64_t rtimer_at;     /* when it fires (0: not armed) */
    dx_timer *dtimer;       /* drain: polls the connections left, then the deadline */
    dx_list ucq;            /* admit.c: cluster-wide user counts out, oldest first (their deadlines) */
    dx_list uclate;         /* past their deadline or their connection gone, answer still due */
    dx_timer *uctimer;      /* the deadline of the oldest in ucq */
    uint64_t drain_end_ns;
    gw_metrics m;
};

struct dx_gateway {
    dx_gateway_options o;   /* the policy fields (auth onwards) are zeroed: read them from a gw_policy */
    pthread_mutex_t pol_mu; /* guards pol */
    gw_policy *pol;         /* the current policy; workers take references (gw_policy_take) */
    unsigned n;
    dx__bus *bus;
    gw_worker *w;
    uint64_t start_ns;
    _Atomic uint64_t reloads[2]; /* dx_gateway_reload calls: applied, refused (duplex_config_reloads_total) */
    gw_counts counts;       /* live counts shared by the workers (admit.c): they outlive reloads */
    bool users_on_bus;      /* a networked bus: conns_per_user is counted cluster-wide through it */
    bool freeing;           /* dx_gateway_free: nothing more asked of the bus */
    bool counts_ok;
};

/* gateway.c */
void gw_logf(gw_worker *k, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void gw_conn_unref(gw_conn *g);
gw_conn *gw_conn_new(gw_worker *k, int dialect);
void gw_conn_gone(gw_conn *g);
/* Adds subscription `name` to g (checked by the caller): the index, the
 * worker's interest and a bus subscribe whose completion acks (JSON), or
 * counts down g->waiting (raw, SSE). since: resume (epoch NULL: current). */
int gw_subscribe(gw_conn *g, const char *name, size_t len, bool has_id, uint64_t id, bool resume,
                 uint64_t since, const char *epoch, size_t elen);
/* Closes g with `code` (an SSE stream is ended); idempotent. */
void gw_conn_close(gw_conn *g, unsigned code, const char *why);
/* Sends the JSON reply built in g's worker's scratch buffer / an err. */
void gw_send_scratch(gw_conn *g);
void gw_send_err(gw_conn *g, bool has_id, uint64_t id, int code, const char *reason);
/* g's subscription to exactly `name` (and its index in g->subs), or NULL. */
gw_sub *gw_sub_find(gw_conn *g, const char *name, size_t len, size_t *at);
/* Removes subscription `at` of g (already out of the index); `leave`: tell
 * the owner (presence), false when its subscribe failed there. */
void gw_sub_drop(gw_conn *g, size_t at, bool leave);
/* A request's id for the encoders: -1 when it had none. */
static inline int64_t gw_req_id(bool has_id, uint64_t id)
{
    return has_id ? (int64_t)id : -1;
}

/* json.c: a publish from g (raw frame or JSON pub) to the bus, answered
 * (JSON) or failed (raw: closed 1011) from its completion; past
 * max_inflight unanswered, g's reading pauses. 0 or DX_ENOMEM. */
int gw_publish(gw_conn *g, const char *topic, size_t len, dx__gw_kind kind, const void *data, size_t dlen,
               bool has_id, uint64_t id);
/* json.c: one text frame of the JSON dialect. */
void gw_json_message(gw_conn *g, const uint8_t *data, size_t len);

/* Splits a percent-encoded comma list (decoded into buf) into names;
 * returns the count, or -1 when malformed or longer than cap. */
int gw_split_list(const char *v, size_t vlen, char *buf, size_t bufcap, const char **names, size_t *lens,
                  size_t cap);
/* Subscribes a raw or SSE connection to each name (checked by the
 * caller), resuming those named in pos (a pattern never resumes); counts
 * the answers awaited in g->waiting (fail_status 503 when one could not be
 * asked). True when none is awaited: the caller answers now. */
bool gw_subscribe_list(gw_conn *g, const char *const *names, const size_t *lens, size_t n, const dx__gw_pos *pos,
                       size_t npos);
/* The answer to a raw/SSE request is due: all its subscriptions are in. */
void gw_conn_ready(gw_conn *g);
void gw_flush_held(gw_conn *g);
/* deliver.c: a held entry's references released. */
void gw_held_release(gw_held *h);
/* deliver.c: the worker's per-pattern frame cache emptied. */
void gw_pcache_reset(gw_worker *k);
/* deliver.c: g's held queue is looked at again from the loop (a post), not
 * from the caller's stack. */
void gw_recheck_later(gw_conn *g);
/* deliver.c: the stitcher's operations for a subscription, and the bus's
 * events for a worker. */
extern const dx__gw_stitch_ops gw_stitch_ops;
extern const dx__bus_events gw_bus_events;
void gw_flush_pending(gw_worker *k);

/* sse.c */
void gw_sse_request(gw_worker *k, dx_http_req *req);
void gw_sse_ready(gw_conn *g);
void gw_sse_deliver(gw_conn *g, dx__bus_topic *t, dx__gw_entry *e, const char *pattern, size_t plen);
void gw_sse_close(gw_conn *g, const char *why);
void gw_sse_tick(gw_worker *k);
size_t gw_sse_buffered(gw_conn *g);
void gw_sse_release(gw_worker *k); /* the worker's SSE cache, at free */

/* settings.c: on worker k's thread, k->pol becomes the gateway's current policy. */
void gw_policy_take(gw_worker *k);

/* api.c */
/* 1 when the request was taken (answered now or later), 0 to let the server answer. */
int gw_api_http(gw_worker *k, dx_http_req *req);

/* policy.c: every decision point. 0: allowed; else a GATEWAY.md err code
 * (4403 forbidden, 4401 not authenticated). gw_policy_origin: may a
 * handshake with this Origin (NULL: none) and Host proceed. */
bool gw_policy_origin(const char *origin, size_t olen, const char *host, size_t hlen);
enum gw_action { GW_ACT_SUBSCRIBE, GW_ACT_PUBLISH, GW_ACT_PRESENCE, GW_ACT_HISTORY };
int gw_policy_check(const gw_conn *g, enum gw_action act, const char *topic, size_t len);

/* admit.c: the limits applied (docs/security.md). Each refusal is logged
 * and counted. */
static inline const gw_limits_cfg *gw_lim(const gw_worker *k)
{
    return k->pol->lim;
}
/* A /ws or /sse request: Origin, handshakes per second and live
 * connections per address. 0 when it may proceed; else the HTTP status
 * (403, 429) with any headers to send (Retry-After) in hdr. */
int gw_admit_request(gw_worker *k, const char *path, const char *remote, const char *origin, size_t olen,
                     const char *host, size_t hlen, char *hdr, size_t hdrcap);
/* Counts g against its address (remote as the server spells it); strict:
 * refused past conns_per_ip (DX_ELIMIT). Undone by gw_conn_gone. */
int gw_admit_count_ip(gw_conn *g, const char *remote, bool strict);
/* Live connections per user. At a handshake whose gw_conn does not exist
 * yet (JSON: on_upgrade), once the user is known: false (counted, logged)
 * when the user has conns_per_user already: answer 429. */
bool gw_admit_user_room(gw_worker *k, const char *remote, const char *user, size_t len);
/* Counts g against its user (g->user; nothing without one), undone by
 * gw_conn_gone; strict: DX_ELIMIT past conns_per_user (raw: at its
 * upgrade, after g->user is set), else counted anyway (JSON: on_open,
 * checked by gw_admit_user_room before). */
int gw_admit_count_user(gw_conn *g, bool strict);
/* The cluster-wide count of g's user (a networked bus and conns_per_user
 * set; else nothing, 0): asks the bus for +1 within the limit and holds
 * g's answer (g->waiting + 1) until it comes, or GW_USER_COUNT_TIMEOUT_MS
 * passed; refused: g->fail_status 429 (over the limit) or 503 (no answer,
 * the bus down: fail closed), logged and counted. 0, or the HTTP status
 * to refuse with at once (503: the bus refused to ask). Before the
 * upgrade is deferred (gw_conn_gone handles one still out). */
int gw_admit_bus_user(gw_conn *g);
#define GW_USER_COUNT_TIMEOUT_MS 3000
/* dx_gateway_free, after the bus: frees the counts never answered. */
void gw_admit_bus_free(gw_worker *k);
/* gw_conn_gone: undoes the counts, leaves the rate list. */
void gw_admit_release(gw_conn *g);
/* A message read from g (either dialect) against its rate: true to handle
 * it; false when it was refused (err 4429 sent) or g was closed. Pause:
 * handled, and reading pauses until the bucket has a token again. */
bool gw_admit_message(gw_conn *g, bool has_id, uint64_t id);
/* A publish from g to topic (client dialects): its namespace's rules
 * (publish allowed, max_message, rate). 0, or a GATEWAY.md err code
 * (4403, 4413, 4429) with *why; -1 when g was closed (rate policy close). */
int gw_admit_publish(gw_conn *g, const char *topic, size_t len, size_t dlen, bool has_id, uint64_t id,
                     const char **why);
/* The topic length limit: true when within max_topic. */
bool gw_admit_topic(gw_worker *k, const char *topic, size_t len);
/* Reading of g may resume for the in-flight rule: only if the rate does
 * not hold it (and vice versa). */
void gw_admit_resume(gw_conn *g);
/* Drain (dx_gateway_shutdown): g's backlog is out: close it 1012 retry=MS. */
void gw_admit_drain_check(gw_conn *g);
void gw_admit_drain_start(gw_worker *k);
/* The worker's 1 s tick: the backstop of the rate timer. */
void gw_admit_tick(gw_worker *k);
/* The bus's history_for: a topic's namespace sets its history bounds. */
void gw_admit_history_for(void *ud, unsigned w, const char *topic, size_t len, dx__gw_log_opts *out);
void gw_admit_worker_free(gw_worker *k);
/* policy.c's namespace part: publish and presence allowed in topic's namespace. */
int gw_policy_check_ns(const gw_conn *g, enum gw_action act, const char *topic, size_t len);
/* SSE CORS: the headers of an answer to a request with this Origin
 * (Access-Control-Allow-Origin, Vary) into hdr; answers an OPTIONS
 * preflight itself (returns true: taken). */
bool gw_admit_sse_preflight(gw_worker *k, dx_http_req *req);
size_t gw_admit_cors_headers(gw_worker *k, const char *origin, size_t olen, char *hdr, size_t cap);

/* Helpers shared by the files: query parameter lookup (the raw value, not
 * decoded) and percent-decoding into out (NUL-terminated; returns the
 * length, or -1 when malformed or longer than cap-1). */
bool gw_query_get(const char *q, size_t qlen, const char *key, const char **v, size_t *vlen);
long gw_pct_decode(const char *s, size_t len, char *out, size_t cap);

#endif
