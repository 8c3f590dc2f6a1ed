/*
 * src/bus/redis_int.h: the Redis bus's state and the functions its two
 * files share (redis.c: topics, reads, subscriptions, live entries, the
 * vtable; redis_conn.c: connections, the tick, presence, disconnects;
 * redis_relay.c: one Redis subscription per channel per node).
 * Everything here belongs to one worker's loop thread, except the atomics.
 */
#ifndef DX_BUS_REDIS_INT_H
#define DX_BUS_REDIS_INT_H

#include "bus/redis.h"
#include "core/seams.h"
#include "gateway/topic.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <arpa/inet.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* ---- state ----------------------------------------------------------------- */

typedef struct rbus rbus;
typedef struct rworker rworker;
typedef struct rtopic rtopic;

enum { S_NONE, S_SUBSCRIBING, S_ACTIVE, S_UNSUBSCRIBING };

/* One connection (commands or pub/sub) and its loop adapter. */
typedef struct rconn {
    rworker *w;
    bool is_sub;
    redisAsyncContext *ac;     /* NULL: down */
    bool up;                   /* handshake answered */
    uint64_t started_ns;       /* connect began */
    uint64_t next_try_ns;      /* reconnect no earlier */
    unsigned attempts;         /* since the last success: backoff */
    bool was_up;               /* once up: a later success is a reconnect */
} rconn;

typedef struct ruser {
    char *id;
    size_t len;
    uint64_t n;
} ruser;

typedef struct rreq rreq;

struct rtopic {
    rtopic *next;
    uint64_t hash;
    dx__bus_topic *bt;         /* name + the epoch last seen ("" before) */
    long refs;                 /* exact subscriptions (joined) on this worker */
    int state;                 /* S_* of its channel */
    rreq *waiting;             /* reads waiting for the subscription (FIFO) */
    rreq **waiting_tail;
    unsigned busy;             /* requests holding this record */
    uint64_t present;          /* presence: connections here */
    ruser *users;
    size_t nusers, capusers;
    bool pres_dirty, pres_pushed;
    bool have_last;            /* last is meaningful */
    uint64_t last;             /* the last offset delivered to this worker */
    bool need_catch;           /* the subscription was lost: read what was missed once back */
    bool catching;             /* a catch-up is due or out: live entries wait in st (at most the
                                  history's count of them), last does not move */
    bool catch_out;            /* its read is out (else it waits for the command connection) */
    uint64_t catch_seen;       /* the highest live offset not held (past the bound): read again */
    uint64_t catch_gen;        /* which catch-up read is the current one */
    dx__gw_stitch st;
    rworker *w;                /* its worker */
    rreq *deferred;            /* subscribe reads answered while catching: answered once it ended */
    uint64_t touched_ns;
};

typedef struct rpat {
    struct rpat *next;
    long refs;
    int state;
    size_t len;
    char name[];               /* the Redis pattern, "dx:m:..." */
} rpat;

enum { Q_PUB, Q_SUB, Q_CUR, Q_HIST, Q_PRES, Q_DISC, Q_UCONN, Q_CATCH };

struct rreq {
    rreq *next;                /* waiting list, or the worker's disconnects */
    rworker *w;
    int kind;
    union {
        dx__bus_pub_fn pub;
        dx__bus_snap_fn snap;
        dx__bus_presence_fn pres;
        dx__bus_count_fn count;
    } fn;
    void *ud;
    rtopic *t;                 /* Q_SUB, Q_CATCH */
    bool resume, has_epoch;
    uint64_t since;
    size_t limit;
    char epoch[DX__GW_EPOCH_LEN + 1];
    size_t bytes;              /* Q_PUB: counted in pending */
    uint64_t sent_ns;          /* Q_PUB: when it was written */
    rreq *pnext;               /* Q_PUB: in the worker's publishes out */
    /* Q_SUB: the read's answer waits for its barrier (read_lua) */
    bool have_reply, have_barrier, lost_barrier;
    int rc;
    dx__gw_snapshot snap;
    /* Q_DISC */
    unsigned refs;
    uint64_t id;
    long long expected;        /* receivers (-1 until PUBLISH answers) */
    long long got;
    uint64_t count;
    uint64_t deadline_ns;
    bool done;
    char *user;
    size_t ulen;
    size_t tlen;
    char topic[];              /* topic (or user for Q_DISC/Q_UCONN), NUL-terminated; then user */
};

struct rworker {
    rbus *b;
    unsigned index;
    dx_loop *loop;
    const dx__bus_events *ev;
    void *ud;
    dx_timer *tick;
    rconn cmd, sub;
    char member[48];           /* "<node>.<index>" */
    rtopic **tab;
    size_t tab_cap, ntopics;
    rpat *pats;
    rreq *discs;
    uint64_t disc_seq;
    rreq *barriers;            /* subscribe reads out, until their barrier came */
    uint64_t barrier_seq;
    char wchan[64];            /* "dx:w:<member>": this worker's barriers */
    bool pres_any_dirty;
    bool unsub_due;
    bool need_flush;
    bool freeing;
    bool catch_due;            /* a catch-up waits for its read to go out: the tick retries */
    uint64_t ping_sent_ns;     /* 0: none out (the health check is TIME) */
    int64_t clock_off_ms;      /* Redis's clock minus ours (ms), from the last TIME */
    bool have_clock;
    bool stuck;                /* Redis stopped answering: refuse, drop once no publish can still run */
    rreq *pubs, *pubs_tail;    /* publishes out, oldest first (answers come in order) */
    uint64_t last_ping_ns, last_refresh_ns, last_sweep_ns;
    uint64_t rng;
    _Atomic bool attached;
    _Atomic bool healthy;
    _Atomic uint64_t st_topics;
    struct rrelay *rr;         /* the in-node relay's state (redis_relay.c) */
};

struct rbus {
    dx__bus base;
    dx__bus_redis_opts o;
    dx__redis_url url;
    char addr[INET6_ADDRSTRLEN];
    char node[17];
    char sha[DX__REDIS_LUA_N][41];
    uint64_t ttl_ms;           /* topic keys: history age + 60 s; 0 without an age bound */
    rworker *w;
    _Atomic size_t pending;
    _Atomic uint64_t st_refused, st_reconnects, st_recovered, st_lost, st_received;
};

#define CTL_CHANNEL "dx:ctl"
#define MSG_PREFIX "dx:m:"
#define MSG_PREFIX_LEN 5
#define DISC_TIMEOUT_NS (UINT64_C(2) * 1000000000u)
#define TICK_MS 100

static inline uint64_t next_rand(rworker *w)
{
    uint64_t z = (w->rng += 0x9e3779b97f4a7c15ull); /* splitmix64 from a random seed */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline void new_epoch(rworker *w, char out[DX__GW_EPOCH_LEN + 1])
{
    snprintf(out, DX__GW_EPOCH_LEN + 1, "%016llx", (unsigned long long)next_rand(w));
}

static inline uint64_t hash_name(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

/* ---- shared between redis.c and redis_conn.c ---- */

/* redis.c */
/* A line through the gateway's log sink (nothing without one). */
void dx__rb_log(rbus *b, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The bus finished a batch for w: the gateway's flush event, if deliveries were handed over. */
void dx__rb_worker_flush(rworker *w);
/* dx__redis_loop_attach's `after` (ud: the worker). */
void dx__rb_after_event(void *ud);
/* Starts reading back what w missed of t (after t->last, the last offset
 * delivered); live entries wait meanwhile. The read goes out once the
 * command connection is up and t's live entries are received (at once if
 * they are); until its answer nothing of t is delivered, so a live entry
 * that skips offsets never moves last past the hole. */
void dx__rb_catch_start(rworker *w, rtopic *t);
/* Drops t's catch-up (its held entries; a read out is ignored when it answers). */
void dx__rb_catch_stop(rtopic *t);
/* Queues a command on c (0), or DX_EIO when c is down. fn(reply NULL) when the connection goes. */
int dx__rb_cmd_argv(rconn *c, redisCallbackFn *fn, void *pd, int argc, const char **argv, const size_t *lens);
/* Decimal digits (1..19) to a number; *ok false when not. */
uint64_t dx__rb_parse_u64(const char *s, size_t n, bool *ok);
/* Answers read r from snapshot s (taken over) or with err; frees r. */
void dx__rb_read_answer(rreq *r, int err, dx__gw_snapshot *s);
/* (P)(UN)SUBSCRIBE `verb` names for w: topic and pattern channels (dx:m:...)
 * through the relay (their owner holds the subscription), the others on w's
 * own pub/sub connection. 0 or DX_EIO/DX_ENOMEM. */
int dx__rb_send_sub(rworker *w, const char *verb, const char *const *names, const size_t *lens, size_t n);
/* (P)(UN)SUBSCRIBE `verb` names on w's own pub/sub connection: 0 or DX_EIO/DX_ENOMEM. */
int dx__rb_redis_sub(rworker *w, const char *verb, const char *const *names, const size_t *lens, size_t n);
/* A pub/sub event for w (RR_*): from a channel's owner (the relay), as
 * Redis would have sent it to w's own connection: a message of channel ch
 * (payload p), a (p)(un)subscribe confirmation of ch, a barrier (p: its
 * id), or the loss of ch's subscription (RR_DOWN, RR_PDOWN). */
void dx__rb_sub_event(rworker *w, int ev, const char *ch, size_t chlen, const char *p, size_t n);
rtopic *dx__rb_topic_find(rworker *w, const char *name, size_t len);
rpat *dx__rb_pat_find(rworker *w, const char *name, size_t len);
/* w's health flag from its connections. */
void dx__rb_set_health(rworker *w);
/* SUBSCRIBEs t's channel (state S_SUBSCRIBING): 0 or as send_sub. */
int dx__rb_subscribe_topic(rworker *w, rtopic *t);
void dx__rb_topic_free(rtopic *t);
/* Fails t's subscribes waiting for their subscription with err. */
void dx__rb_waiting_fail(rworker *w, rtopic *t, int err);

/* redis_conn.c */
/* A control-channel message ("d ..." or "r ..."). */
void dx__rb_ctl_message(rworker *w, const char *s, size_t n);
/* Answers disconnect r (once) with what came, off w's list. */
void dx__rb_disc_finish(rworker *w, rreq *r, int err);
void dx__rb_on_disc_pub(redisAsyncContext *ac, void *reply, void *pd);
/* A reply nobody waits for. */
void dx__rb_on_ignore(redisAsyncContext *ac, void *reply, void *pd);
/* The worker's 100 ms timer. */
void dx__rb_on_tick(dx_timer *tm, void *ud);
/* Writes w's presence entry for t (its count and users, or its removal). */
void dx__rb_presence_push(rworker *w, rtopic *t);
/* c was lost (or dropped): state reset, requests waiting on it failed, a reconnect scheduled. */
void dx__rb_conn_down(rconn *c, const char *why);
/* The subscription of topic channel (or pattern) ch that w wants was lost
 * with its owner's pub/sub connection: what w did for it when its own
 * connection was lost; the owner confirms it again once back. */
void dx__rb_chan_down(rworker *w, bool pat, const char *ch, size_t len);

/* redis_relay.c: one Redis subscription per channel per node (see there) */
/* Events to a worker (dx__rb_sub_event). */
enum { RR_MESSAGE = 1, RR_SUBSCRIBE, RR_UNSUBSCRIBE, RR_PSUBSCRIBE, RR_PUNSUBSCRIBE, RR_BARRIER, RR_DOWN, RR_PDOWN };
/* The relay's state for each worker: 0 or DX_ENOMEM (dx__rr_free frees what was made). */
int dx__rr_init(rbus *b);
void dx__rr_free(rbus *b);
/* w is attached to loop: what was queued for it meanwhile is run. */
void dx__rr_attach(rworker *w, dx_loop *loop);
/* The worker owning channel (or pattern) ch: hash % workers. */
unsigned dx__rr_owner(rbus *b, const char *ch, size_t len);
/* Is name a channel the relay carries (dx:m:...)? */
bool dx__rr_is_relayed(const char *name, size_t len);
/* w wants (or stops wanting) names: sent to their owners. 0 or DX_ENOMEM. */
int dx__rr_send(rworker *w, const char *verb, const char *const *names, const size_t *lens, size_t n);
/* A pub/sub reply on w's own connection, but for the control channel:
 * kind ("message", "pmessage", "subscribe", ...), then its string elements
 * (NULL when absent or not a string). true if it was the relay's. */
bool dx__rr_on_pubsub(rworker *w, const char *kind, const char *a, size_t alen, const char *c, size_t clen,
                      const char *d, size_t dlen);
/* w's pub/sub connection: being set up (subscribe its owned channels),
 * up (confirm them to the interested workers), lost (tell them). */
void dx__rr_conn_start(rworker *w);
void dx__rr_sub_up(rworker *w);
void dx__rr_conn_down(rworker *w);
/* From w's tick: a queue whose wake-up failed; batched unsubscribes. */
void dx__rr_tick(rworker *w);
void dx__rr_stats(rbus *b, dx__bus_stats *out);

#endif
