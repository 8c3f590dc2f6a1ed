/*
 * src/bus/redis_int.h: the Redis bus's state and the functions its files
 * share (redis.c: topics, reads, subscriptions, live entries, the vtable;
 * redis_req.c: publishes, presence reads, user counts, disconnects;
 * redis_conn.c: connections, the tick, presence writes, the control
 * channel; redis_shard.c: the servers, the hash ring, routing;
 * redis_relay.c: one Redis subscription per channel per node).
 * Everything here belongs to one worker's loop thread, except the atomics.
 *
 * Sharding: the bus talks to one or more independent Redis servers (a
 * comma-separated URL list); each topic, and each user's counts, belongs to
 * one of them by consistent hashing (redis_shard.c). A worker has one
 * rshard (a command and a pub/sub connection) per server.
 */
#ifndef DX_BUS_REDIS_INT_H
#define DX_BUS_REDIS_INT_H

#include "bus/redis.h"
#include "bus/redis_io.h"
#include "core/seams.h"
#include "gateway/topic.h"
#include "net/transport.h"

#include <hiredis/hiredis.h> /* redisReply */

#include <arpa/inet.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* ---- state ----------------------------------------------------------------- */

typedef struct rbus rbus;
typedef struct rworker rworker;
typedef struct rtopic rtopic;
typedef struct rshard rshard;

enum { S_NONE, S_SUBSCRIBING, S_ACTIVE, S_UNSUBSCRIBING };

/* One connection (commands or pub/sub). */
typedef struct rconn {
    rworker *w;
    rshard *s;                 /* the server it talks to */
    bool is_sub;
    dx__rio *io;               /* NULL: down */
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
    rshard *s;                 /* the server that holds it (the ring) */
    rreq *deferred;            /* subscribe reads answered while catching: answered once it ended */
    uint64_t touched_ns;
};

typedef struct rpat {
    struct rpat *next;
    long refs;
    unsigned char state[DX__REDIS_SHARDS_MAX]; /* S_* on each server (PSUBSCRIBEd on every one) */
    size_t len;
    char name[];               /* the Redis pattern, "dx:m:..." */
} rpat;

enum { Q_PUB, Q_SUB, Q_CUR, Q_HIST, Q_PRES, Q_DISC, Q_UCONN, Q_CATCH };

struct rreq {
    rreq *next;                /* waiting list, or the worker's disconnects */
    rworker *w;
    rshard *s;                 /* the server it went to */
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

/* One Redis server of the list. */
typedef struct rserver {
    dx__redis_url url;
    char addr[INET6_ADDRSTRLEN];
    char label[300];           /* host:port or the socket path, for logs */
} rserver;

/* One worker's connections to one server, and what waits on them. */
struct rshard {
    rworker *w;
    unsigned index;            /* in rbus.srv (sharded) or as discovered (cluster) */
    rserver sv;                /* where it connects (a copy: cluster nodes are found per worker) */
    rconn cmd, sub;
    rreq *barriers;            /* subscribe reads out on this server, until their barrier came */
    uint64_t ping_sent_ns;     /* 0: none out (the health check is TIME) */
    int64_t clock_off_ms;      /* this Redis's clock minus ours (ms), from the last TIME */
    bool have_clock;
    bool stuck;                /* Redis stopped answering: refuse, drop once no publish can still run */
    rreq *pubs, *pubs_tail;    /* publishes out, oldest first (answers come in order) */
    uint64_t last_ping_ns;
    _Atomic bool healthy;
};

/* A point of the hash ring: positions on a 64-bit circle, sorted. */
typedef struct rpoint {
    uint64_t pos;
    unsigned srv;
} rpoint;

struct rworker {
    rbus *b;
    unsigned index;
    dx_loop *loop;
    const dx__bus_events *ev;
    void *ud;
    dx_timer *tick;
    rshard *sh;                /* one per server: rbus.nsrv, or (cluster) DX__REDIS_SHARDS_MAX slots */
    _Atomic unsigned nsh;      /* in use: rbus.nsrv, or (cluster) the nodes found so far */
    uint8_t *slots;            /* cluster: the shard of each of the 16384 slots (0xff: not known) */
    bool map_due;              /* cluster: the slot map is to be read again (CLUSTER SLOTS) */
    bool map_out;              /* a CLUSTER SLOTS is out */
    _Atomic bool map_ok;       /* a slot map was read (the worker is not ready before) */
    uint64_t map_asked_ns;
    char member[48];           /* "<node>.<index>" */
    rtopic **tab;
    size_t tab_cap, ntopics;
    rpat *pats;
    rreq *discs;
    uint64_t disc_seq;
    uint64_t barrier_seq;
    char wchan[64];            /* "dx:w:<member>": this worker's barriers */
    bool pres_any_dirty;
    bool unsub_due;
    bool need_flush;
    bool freeing;
    bool catch_due;            /* a catch-up waits for its read to go out: the tick retries */
    struct ruc **uc;           /* redis_uc.c: connections per user counted by this worker */
    size_t uc_cap, nuc;
    bool uc_dirty;             /* a user's count waits to be re-stated (the tick) */
    uint64_t last_refresh_ns, last_sweep_ns;
    uint64_t rng;
    dx__tls_ctx *tls;          /* rediss://: this worker's client context (CA store, client certificate) */
    _Atomic bool attached;
    _Atomic bool healthy;
    _Atomic uint64_t st_topics;
    struct rrelay *rr;         /* the in-node relay's state (redis_relay.c) */
};

struct rbus {
    dx__bus base;
    dx__bus_redis_opts o;
    rserver *srv;              /* the servers, in the order given */
    unsigned nsrv;
    rpoint *ring;              /* DX__REDIS_RING_POINTS per server, sorted by pos */
    size_t nring;
    char node[17];
    char sha[DX__REDIS_LUA_N][41];
    uint64_t ttl_ms;           /* topic keys: history age + 60 s; 0 without an age bound */
    rworker *w;
    _Atomic size_t pending;
    _Atomic uint64_t st_refused, st_reconnects, st_recovered, st_lost, st_received, st_epochs;
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

/* ---- shared between the files ---- */

/* redis_shard.c */
/* Parses the URL list (comma-separated), resolves each host once and
 * builds the ring: 0, or DX_EINVAL / DX_EADDR / DX_ENOMEM with why. */
int dx__rb_servers_init(rbus *b, const char *urls, char *why, size_t why_len);
void dx__rb_servers_free(rbus *b);
/* The server (index) that holds `name` (a topic, or a user's key). */
unsigned dx__rb_server_of(const rbus *b, const char *name, size_t len);
/* Cluster: the hash slot of the keys of `name` (CRC16 of its hash tag). */
unsigned dx__rb_slot(const char *name, size_t len);
/* Cluster: the shard of node host:port on w (added when new), or -1. */
int dx__rb_cluster_node(rworker *w, const char *host, size_t hlen, int port);
/* Cluster: asks for the slot map on a connection that is up (if due and none out). */
void dx__rb_cluster_map(rworker *w);
/* Cluster: reads a "MOVED slot host:port" or "ASK ..." error: the shard or -1; *slot, *ask. */
int dx__rb_redirect(rworker *w, const char *err, size_t n, unsigned *slot, bool *ask);
/* Cluster: sends a keyed command (EVALSHA) on c following redirections: as dx__rb_cmd_argv. */
int dx__rb_cmd_routed(rconn *c, dx__rio_fn *fn, void *pd, int argc, const char **argv, const size_t *lens);
/* w's connections to the server that holds name. */
rshard *dx__rb_shard_of(rworker *w, const char *name, size_t len);
/* A request refused at once: counted, err returned. */
int dx__rb_refuse(rbus *b, int err);

/* redis.c */
/* A line through the gateway's log sink (nothing without one). */
void dx__rb_log(rbus *b, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The bus finished a batch for w: the gateway's flush event, if deliveries were handed over. */
void dx__rb_worker_flush(rworker *w);
/* After a batch of events on one of w's connections (ud: the worker). */
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
int dx__rb_cmd_argv(rconn *c, dx__rio_fn *fn, void *pd, int argc, const char **argv, const size_t *lens);
/* Decimal digits (1..19) to a number; *ok false when not. */
uint64_t dx__rb_parse_u64(const char *s, size_t n, bool *ok);
/* Answers read r from snapshot s (taken over) or with err; frees r. */
void dx__rb_read_answer(rreq *r, int err, dx__gw_snapshot *s);
/* (P|S)(UN)SUBSCRIBE `verb` names for s's worker on s's server: topic and
 * pattern channels (dx:m:...; cluster: topics only) through the relay (their
 * owner holds the subscription), the others on s's own pub/sub connection.
 * 0 or DX_EIO/DX_ENOMEM. */
int dx__rb_send_sub(rshard *s, const char *verb, const char *const *names, const size_t *lens, size_t n);
/* (P)(UN)SUBSCRIBE `verb` names on s's own pub/sub connection: 0 or DX_EIO/DX_ENOMEM. */
int dx__rb_redis_sub(rshard *s, const char *verb, const char *const *names, const size_t *lens, size_t n);
/* The worker side of the subscriptions (redis.c), run on the relay's events. */
void dx__rb_topic_active(rworker *w, rtopic *t);
rpat *dx__rb_pat_find(rworker *w, const char *name, size_t len);
/* A live entry on channel ch (dx:m:T, or dx:m:{T}), braces: which. */
void dx__rb_live_message(rworker *w, const char *ch, size_t chlen, bool braces, const char *p, size_t n);
/* The barrier `token` of a subscribe's read on server sh reached w: false
 * when no read out on sh has that id. */
bool dx__rb_barrier_message(rshard *sh, const char *s, size_t n);
/* Pattern-only topics of w whose catch-up waits: started (catch_ready decides). */
void dx__rb_pattern_catch(rworker *w);
/* s's health flag from its connections. */
void dx__rb_set_health(rshard *s);
/* (S)SUBSCRIBEs t's channel through its owner (state S_SUBSCRIBING): 0 or as send_sub. */
int dx__rb_subscribe_topic(rworker *w, rtopic *t);
/* Cluster: an error answer on sh's pub/sub connection (MOVED for an S(UN)SUBSCRIBE). */
void dx__rb_sub_error(rworker *w, rshard *sh, redisReply *r);
/* The topic of channel ch ("dx:m:T", or with braces "dx:m:{T}"): false when not one. */
bool dx__rb_chan_topic(const char *ch, size_t n, bool braces, const char **name, size_t *len);
/* The channel of topic name: "dx:m:T", or (cluster) "dx:m:{T}" (in T's slot). */
size_t dx__rb_chan(const rbus *b, const char *name, size_t len, char *out, size_t cap);
/* Cluster: t's slot is on node ns now (w's reads and presence go there;
 * its subscription is its owner's, which follows the slot itself). */
void dx__rb_topic_move(rworker *w, rtopic *t, rshard *ns);
/* The record of topic name on w, or NULL. */
rtopic *dx__rb_topic_find(rworker *w, const char *name, size_t len);
/* A new request of `kind` for topic (or user) with an optional user. */
rreq *dx__rb_req_new(rworker *w, int kind, const char *topic, size_t tlen, const char *user, size_t ulen);
void dx__rb_topic_free(rtopic *t);
/* Fails t's subscribes waiting for their subscription with err. */
void dx__rb_waiting_fail(rworker *w, rtopic *t, int err);

/* redis_req.c: the vtable's publish, history... one-shot requests */
int dx__rb_publish(dx__bus *base, unsigned wi, const char *topic, size_t len, dx__gw_kind kind, const void *data,
                   size_t dlen, dx__bus_pub_fn fn, void *ud);
int dx__rb_presence(dx__bus *base, unsigned wi, const char *topic, size_t len, dx__bus_presence_fn fn, void *ud);
int dx__rb_disconnect_user(dx__bus *base, unsigned wi, const char *user, size_t ulen, dx__bus_count_fn fn,
                           void *ud);

/* redis_conn.c */
/* rediss://: b->tls from o's CA file and client certificate (the options'
 * consistency checked first), one per worker (b->w made). 0, or DX_EINVAL /
 * DX_ETLS / DX_ENOMEM with the reason in why (contexts made so far are
 * freed with b). */
int dx__rb_tls_setup(rbus *b, const dx__bus_redis_opts *o, char *why, size_t why_len);
/* A control-channel message ("d ..." or "r ...") that came from server s. */
void dx__rb_ctl_message(rshard *s, const char *m, size_t n);
/* Answers disconnect r (once) with what came, off w's list. */
void dx__rb_disc_finish(rworker *w, rreq *r, int err);
void dx__rb_on_disc_pub(dx__rio *io, void *reply, void *pd);
/* A reply nobody waits for. */
void dx__rb_on_ignore(dx__rio *io, void *reply, void *pd);
/* The worker's 100 ms timer. */
void dx__rb_on_tick(dx_timer *tm, void *ud);
/* Writes w's presence entry for t (its count and users, or its removal). */
void dx__rb_presence_push(rworker *w, rtopic *t);
/* Subscribe read r (off its server's barrier list) will not get its barrier:
 * answered DX_EIO now if its reply came (the answer would not be ordered with
 * the live entries), else marked so its reply, when it comes, only frees it. */
void dx__rb_barrier_lost(rreq *r);
/* c was lost (or dropped): state reset, requests waiting on it failed, a reconnect scheduled. */
void dx__rb_conn_down(rconn *c, const char *why);

/* redis_relay.c: one Redis subscription per channel per node (see there);
 * in cluster mode topics only (patterns: each worker on every master). */
/* Events to a worker (dx__rr_event). */
enum { RR_MESSAGE = 1, RR_SUBSCRIBE, RR_UNSUBSCRIBE, RR_PSUBSCRIBE, RR_PUNSUBSCRIBE, RR_BARRIER, RR_DOWN, RR_PDOWN };
/* The relay's state for each worker: 0 or DX_ENOMEM (dx__rr_free frees what was made). */
int dx__rr_init(rbus *b);
void dx__rr_free(rbus *b);
/* w is attached to loop: what was queued for it meanwhile is run. */
void dx__rr_attach(rworker *w, dx_loop *loop);
/* The worker owning channel (or pattern) ch: hash % workers. */
unsigned dx__rr_owner(rbus *b, const char *ch, size_t len);
/* Is name (for (un)subscribe `verb`) a channel the relay carries (dx:m:...; cluster: not a pattern)? */
bool dx__rr_is_relayed(const rbus *b, const char *verb, const char *name, size_t len);
/* w wants (or stops wanting) names on server srv: sent to their owners. 0 or DX_ENOMEM. */
int dx__rr_send(rworker *w, unsigned srv, const char *verb, const char *const *names, const size_t *lens, size_t n);
/* A pub/sub reply on w's own connection to server sh but for the control
 * channel: kind ("message", "pmessage", "subscribe", ...), then its string
 * elements (NULL when absent or not a string). */
void dx__rr_on_pubsub(rshard *sh, const char *kind, const char *a, size_t alen, const char *c, size_t clen,
                      const char *d, size_t dlen);
/* w's pub/sub connection to sh: being set up (subscribe its owned
 * channels there), up (confirm them to the interested workers), lost
 * (tell them). */
void dx__rr_conn_start(rshard *sh);
void dx__rr_sub_up(rshard *sh);
void dx__rr_conn_down(rshard *sh);
/* From w's tick: a queue whose wake-up failed; batched unsubscribes. */
void dx__rr_tick(rworker *w);
/* Cluster: a (S)(UN)SUBSCRIBE on sh's pub/sub connection was answered
 * MOVED/ASK for `slot` (node `to` has it): w's channels of that slot there
 * go to `to` (those being unsubscribed are done). */
void dx__rr_sub_error(rshard *sh, unsigned slot, int to);
/* Cluster: w read a new slot map: channels waiting for a node that no longer has their slot go to the new one. */
void dx__rr_retarget(rworker *w);
void dx__rr_stats(rbus *b, dx__bus_stats *out);

/* redis_uc.c */
/* The vtable's user_conns. */
int dx__rb_user_conns(dx__bus *base, unsigned wi, const char *user, size_t ulen, long delta, uint64_t limit,
                      dx__bus_count_fn fn, void *ud);
/* The command connection came up: every user count of w is re-stated. */
void dx__rb_uc_all_dirty(rworker *w);
/* Re-states the counts marked dirty (the tick, with the command connection up). */
void dx__rb_uc_sync(rworker *w);
/* Frees w's counts (bus free, after its connections). */
void dx__rb_uc_free(rworker *w);

#endif
