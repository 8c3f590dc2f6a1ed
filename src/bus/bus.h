/*
 * src/bus/bus.h: "where other nodes are" (DESIGN.md). The gateway's only
 * way to sequence a publish, reach subscribers on other worker threads (and,
 * with a networked bus, other nodes), read history and presence, and reach
 * every connection of a user.
 *
 * One bus per process, shared by its N worker threads. Every call below is
 * made on a worker's loop thread, naming that worker (`w`, 0..N-1); every
 * completion and every event comes back later on that worker's thread, from
 * its loop, never inside the call that asked for it (so the gateway never
 * re-enters itself). A completion is called exactly once, unless the bus is
 * freed first (then never: the gateway frees its requests itself).
 *
 * Ordering (what resume relies on): a subscribe registers the worker's
 * interest (dx__bus_interest, and the topic in the worker's own index)
 * before the bus reads the topic, so every entry sequenced after that read
 * reaches the worker through `deliver`; entries sequenced before it are in
 * the completion's snapshot (when recovered) or at or below its offset.
 * Live entries and the completion may arrive in either order:
 * dx__gw_stitch makes the result exactly-once and in order. For one topic,
 * live entries reach a worker in offset order.
 *
 * Interest: a worker reports how many subscriptions it holds (dx__bus_interest);
 * a bus may skip workers that hold none. Patterns are not subscribed
 * through the bus (they have no offsets): a worker reports each pattern it
 * starts or stops matching (dx__bus_pattern), so a networked bus can route
 * the topics that match it to the worker; the worker matches them itself.
 * Each entry reaches a worker at most once, however many of its exact
 * topics and patterns cover it.
 *
 * User connections: dx__bus_user_conns counts the connections of a user in
 * the whole cluster (this process, with the in-process bus), +1 when one
 * opens and -1 when it ends, for the per-user connection limit: a +1 with a
 * limit is checked and added in one step (two nodes racing for the last
 * slot: exactly one gets it).
 *
 * Implementations: local.c (in-process, the default), redis.c (redis.h:
 * several processes sharing one Redis). Another networked bus (NATS) fills
 * another dx__bus_vt.
 */
#ifndef DX_BUS_BUS_H
#define DX_BUS_BUS_H

#include "duplex/loop.h"
#include "gateway/history.h"
#include "gateway/kind.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A topic as the bus hands it out: name and epoch, immutable, atomically
 * reference-counted (any thread). */
typedef struct dx__bus_topic {
    _Atomic unsigned refs;
    size_t len;                        /* name length */
    char epoch[DX__GW_EPOCH_LEN + 1];  /* "" when the topic does not exist (history of an unknown topic) */
    char name[];                       /* NUL-terminated */
} dx__bus_topic;

dx__bus_topic *dx__bus_topic_new(const char *name, size_t len, const char *epoch);
dx__bus_topic *dx__bus_topic_ref(dx__bus_topic *t);
void dx__bus_topic_unref(dx__bus_topic *t);

/* What the bus calls on a worker's thread (ud: that worker's gateway state,
 * given to dx__bus_attach). */
typedef struct dx__bus_events {
    /* A live entry of topic t for this worker's subscribers. Both references
     * are borrowed for the call. */
    void (*deliver)(void *ud, dx__bus_topic *t, dx__gw_entry *e);
    /* Close every connection of `user` here; return how many. */
    size_t (*disconnect_user)(void *ud, const char *user, size_t len);
    /* The bus finished a batch of work for this worker (deliveries
     * included): what `deliver` gathered may be written now. Completions
     * may come before it within the batch. May be NULL. */
    void (*flush)(void *ud);
    /* Offsets from..to of topic t will not be delivered to this worker
     * (a networked bus lost its subscription and, once back, history no
     * longer held them). In order with `deliver`: after the entries before
     * `from`, before those after `to`. May be NULL. */
    void (*gap)(void *ud, dx__bus_topic *t, uint64_t from, uint64_t to);
} dx__bus_events;

/* Completions. `ud` is the caller's, per request. */
typedef void (*dx__bus_pub_fn)(void *ud, int err, uint64_t offset, const char *epoch);
/* snap is borrowed for the call (the bus deinits it after); t is borrowed
 * too (take a reference to keep it). err != 0: t and snap are NULL. */
typedef void (*dx__bus_snap_fn)(void *ud, int err, dx__bus_topic *t, dx__gw_snapshot *snap);
/* users: `n` user ids, borrowed for the call. */
typedef void (*dx__bus_presence_fn)(void *ud, int err, uint64_t count, const char *const *users,
                                    const size_t *lens, size_t n);
typedef void (*dx__bus_count_fn)(void *ud, int err, uint64_t count);

typedef struct dx__bus dx__bus;

/* Counters for /metrics, summed over the bus's state. */
typedef struct dx__bus_stats {
    uint64_t topics;         /* topics with state (sequencer, history or presence) */
    uint64_t history_msgs;   /* retained entries */
    uint64_t history_bytes;  /* retained payload bytes */
    uint64_t handoffs;       /* cross-thread hand-offs of live entries (one per worker per publish) */
    uint64_t lost;           /* hand-offs that could not be queued (out of memory): a worker missed a message */
    /* networked buses (0 for the in-process one) */
    uint64_t pending_bytes;  /* payload bytes of publishes handed to the bus and not yet confirmed (gauge) */
    uint64_t refused;        /* requests refused at once: bus unreachable or pending_bytes over its limit */
    uint64_t reconnects;     /* connections to the bus re-established after a loss */
    uint64_t recovered;      /* live entries missed (bus connection lost, or a hole) then read back from history */
    uint64_t epochs;         /* epoch changes met on a topic a worker was delivering (the bus lost its data) */
    uint64_t shards;         /* servers the topics are spread over (0: the in-process bus) */
    uint64_t shards_down;    /* of those, how many some worker cannot reach now: their topics answer 503 */
    uint64_t shards_down_mask; /* bit i: server i (in the order configured) is down */
    uint64_t bus_subscriptions; /* channels (topics, patterns) this node holds subscribed in the bus (gauge) */
    uint64_t relayed;        /* live entries forwarded from a channel's owner worker to another worker's queue */
} dx__bus_stats;

typedef struct dx__bus_vt {
    int (*attach)(dx__bus *b, unsigned w, dx_loop *loop, const dx__bus_events *ev, void *ud);
    void (*detach)(dx__bus *b, unsigned w);
    int (*publish)(dx__bus *b, unsigned w, const char *topic, size_t len, dx__gw_kind kind,
                   const void *data, size_t dlen, dx__bus_pub_fn fn, void *ud);
    int (*subscribe)(dx__bus *b, unsigned w, const char *topic, size_t len, const char *user,
                     size_t ulen, bool join, bool resume, uint64_t since, const char *epoch,
                     size_t elen, dx__bus_snap_fn fn, void *ud);
    void (*leave)(dx__bus *b, unsigned w, const char *topic, size_t len, const char *user,
                  size_t ulen);
    int (*history)(dx__bus *b, unsigned w, const char *topic, size_t len, uint64_t since,
                   size_t limit, dx__bus_snap_fn fn, void *ud);
    int (*presence)(dx__bus *b, unsigned w, const char *topic, size_t len, dx__bus_presence_fn fn,
                    void *ud);
    int (*disconnect_user)(dx__bus *b, unsigned w, const char *user, size_t ulen,
                           dx__bus_count_fn fn, void *ud);
    void (*interest)(dx__bus *b, unsigned w, long delta);
    /* A subscription pattern of worker w: +1 when a connection there
     * subscribes to it, -1 when it leaves. Fires nothing. */
    void (*pattern)(dx__bus *b, unsigned w, const char *pat, size_t len, long delta);
    /* Adds delta (+1, -1 or 0 to read) to the count of connections of
     * `user` and answers the count after it, cluster-wide. limit > 0 and
     * delta > 0: added only if the count after is at most limit, in the
     * same atomic step as the check; otherwise nothing is added and fn
     * gets DX_ELIMIT with the count as it stands. fn may be NULL. A -1
     * is applied even when the call fails (the connection is gone): a
     * networked bus tells the cluster once it can. */
    int (*user_conns)(dx__bus *b, unsigned w, const char *user, size_t ulen, long delta, uint64_t limit,
                      dx__bus_count_fn fn, void *ud);
    bool (*healthy)(dx__bus *b);
    void (*stats)(dx__bus *b, dx__bus_stats *out);
    void (*free)(dx__bus *b);
} dx__bus_vt;

struct dx__bus {
    const dx__bus_vt *vt;
};

/* Settings of the in-process bus. */
typedef struct dx__bus_local_opts {
    unsigned workers;          /* N >= 1 */
    dx__gw_log_opts history;   /* per topic */
    /* NULL, or: the history bounds of a topic being created, from its
     * name (per-namespace history); called on the owner worker's thread
     * (index w), `out` holding `history` above to change or keep. */
    void (*history_for)(void *ud, unsigned w, const char *topic, size_t len, dx__gw_log_opts *out);
    void *history_ud;
} dx__bus_local_opts;

/* The in-process bus: each topic is owned by one worker (a hash of its
 * name), whose thread alone sequences it and keeps its history and
 * presence; requests and live entries cross threads through one queue per
 * worker. NULL with *err: DX_ENOMEM, DX_EINVAL. */
dx__bus *dx__bus_local_new(const dx__bus_local_opts *o, int *err);

/* Wrappers (see each implementation for the details). All but stats,
 * healthy and free are called on worker w's thread. */
static inline int dx__bus_attach(dx__bus *b, unsigned w, dx_loop *l, const dx__bus_events *ev, void *ud)
{
    return b->vt->attach(b, w, l, ev, ud);
}
static inline void dx__bus_detach(dx__bus *b, unsigned w) { b->vt->detach(b, w); }
static inline int dx__bus_publish(dx__bus *b, unsigned w, const char *t, size_t len, dx__gw_kind kind,
                                  const void *d, size_t dlen, dx__bus_pub_fn fn, void *ud)
{
    return b->vt->publish(b, w, t, len, kind, d, dlen, fn, ud);
}
static inline int dx__bus_subscribe(dx__bus *b, unsigned w, const char *t, size_t len, const char *user,
                                    size_t ulen, bool join, bool resume, uint64_t since,
                                    const char *epoch, size_t elen, dx__bus_snap_fn fn, void *ud)
{
    return b->vt->subscribe(b, w, t, len, user, ulen, join, resume, since, epoch, elen, fn, ud);
}
static inline void dx__bus_leave(dx__bus *b, unsigned w, const char *t, size_t len, const char *user,
                                 size_t ulen)
{
    b->vt->leave(b, w, t, len, user, ulen);
}
static inline int dx__bus_history(dx__bus *b, unsigned w, const char *t, size_t len, uint64_t since,
                                  size_t limit, dx__bus_snap_fn fn, void *ud)
{
    return b->vt->history(b, w, t, len, since, limit, fn, ud);
}
static inline int dx__bus_presence(dx__bus *b, unsigned w, const char *t, size_t len,
                                   dx__bus_presence_fn fn, void *ud)
{
    return b->vt->presence(b, w, t, len, fn, ud);
}
static inline int dx__bus_disconnect_user(dx__bus *b, unsigned w, const char *u, size_t ulen,
                                          dx__bus_count_fn fn, void *ud)
{
    return b->vt->disconnect_user(b, w, u, ulen, fn, ud);
}
static inline void dx__bus_interest(dx__bus *b, unsigned w, long delta) { b->vt->interest(b, w, delta); }
static inline void dx__bus_pattern(dx__bus *b, unsigned w, const char *p, size_t len, long delta)
{
    b->vt->pattern(b, w, p, len, delta);
}
static inline int dx__bus_user_conns(dx__bus *b, unsigned w, const char *u, size_t ulen, long delta,
                                     uint64_t limit, dx__bus_count_fn fn, void *ud)
{
    return b->vt->user_conns(b, w, u, ulen, delta, limit, fn, ud);
}
static inline bool dx__bus_healthy(dx__bus *b) { return b->vt->healthy(b); }
static inline void dx__bus_stats_get(dx__bus *b, dx__bus_stats *out) { b->vt->stats(b, out); }
static inline void dx__bus_free(dx__bus *b)
{
    if (b)
        b->vt->free(b);
}

#endif
