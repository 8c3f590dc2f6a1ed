/*
 * src/bus/redis_relay.c: one Redis subscription per channel per node, not
 * per worker (redis_int.h, dx__rr_*; docs/gateway.md "The Redis bus").
 *
 * Each channel C a worker wants on a server (a topic's dx:m:T on the
 * topic's server, a pattern's dx:m:p* on every server) has an owner:
 * worker hash(C) % N. Only the owner SUBSCRIBEs (or PSUBSCRIBEs) C, on its
 * own pub/sub connection to that server, on the first interest in the
 * node, and unsubscribes (batched, from its tick) after the last. A
 * worker that wants C (dx__rb_send_sub with a dx:m: name) sends the owner
 * a WANT (UNWANT to stop) through the owner's queue, even when it is the
 * owner itself; the owner answers through the worker's queue exactly what
 * Redis would have answered the worker's own connection: the subscribe
 * confirmation once C is active (at once when it already is), then every
 * message of C in Redis's order, then the unsubscribe confirmation. So
 * the worker's state machine (redis.c: topic_active, patterns' S_ACTIVE,
 * the catch-up) runs unchanged on these events (rr_event).
 *
 * Queues: one per worker, multi-producer: an array of small items under a
 * mutex, swapped out whole by the consumer, one dx_loop_post wake-up per
 * batch (only the push that finds the queue not yet posted posts); the
 * 100 ms tick drains it too, so a failed post only delays. One queue per
 * receiver means FIFO per (sender, receiver): whatever a worker receives
 * for C comes from C's owner in the order the owner sent it.
 *
 * Messages: the owner copies each message once into a reference-counted
 * buffer (channel + payload) and hands one reference to each interested
 * worker whose subscription it has confirmed.
 *
 * Barriers: a subscribe's read publishes its barrier token ("<worker>.<id>")
 * on the wchan of the topic's owner (redis.c read_issue), which forwards it
 * to the reading worker through the same queue as the topic's messages:
 * it arrives after every message of T published before the read.
 *
 * The barrier is published on T's server, where every worker subscribes
 * its wchan.
 *
 * Every item names its server: a worker runs it as if it had come on its
 * own connection to that server (rr_event: redis.c's state per topic, and
 * per pattern per server).
 *
 * Cluster mode (--redis-cluster): topics only (patterns are PSUBSCRIBEd by
 * each worker on every master). Each worker finds the masters on its own
 * (its shard indices differ), so items carry no server (0): the owner
 * SSUBSCRIBEs the topic's shard channel dx:m:{T} on the node its own slot
 * map names (c->srv, a MOVED answer corrects it: dx__rr_sub_error), and a
 * worker finds the topic of an event by its name. A subscribe's barrier is
 * SPUBLISHed by the read on dx:m:{T} itself ("b <node>.<worker>.<id>": in
 * the topic's slot, so it reaches the owner on the connection that carries
 * the topic's messages, in order with them; a classic PUBLISH on the wchan
 * would reach it from every master); the owner forwards ours and drops
 * other nodes'. When Redis ends a shard subscription that was active
 * (`sunsubscribe`: the slot moved), the owner tells every interested
 * worker DOWN (as for a lost connection: each reads back what it missed
 * once confirmed again) and subscribes it again where the map says.
 *
 * Faults: when the owner's pub/sub connection to a server is lost, every
 * interested worker gets a DOWN event for each of the owner's channels on
 * that server only (chan_down: what a worker did for its topics when its own pub/sub
 * connection was lost: subscribes waiting failed, barriers of reads of T
 * failed, a catch-up due); the owner keeps the interest, subscribes again
 * once reconnected and confirms again to every interested worker once its
 * connection is up (its control channel confirmed: the wchan that carries
 * the barriers is confirmed before it, so a read that starts on that
 * confirmation always gets its barrier).
 *
 * Threads: the queues (and their loop pointers) under their mutex; the
 * owned channels on their owner's thread only; the counters are atomics.
 */
#define _GNU_SOURCE
#include "bus/redis_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Requests to an owner (the rest of the kinds, RR_*, are events to a worker). */
enum { RQ_WANT = 100, RQ_UNWANT, RQ_PWANT, RQ_PUNWANT };

/* What travels through a queue: a channel name and a payload, shared by
 * reference (any thread; freed by the last unref). */
typedef struct rrbuf {
    _Atomic unsigned refs;
    size_t chlen, plen;
    char data[];               /* channel, NUL, payload, NUL */
} rrbuf;

typedef struct rritem {
    int kind;                  /* RR_* (to a worker) or RQ_* (to an owner) */
    unsigned from;             /* RQ_*: the asking worker */
    unsigned srv;              /* the server the channel is (to be) subscribed on; 0 in cluster mode
                                  (each worker maps a channel to a node with its own slot map) */
    rrbuf *m;                  /* one reference, the item's */
} rritem;

enum { W_NO, W_WAIT, W_YES };  /* a worker's interest in a channel: none, unconfirmed, confirmed */

/* A channel this worker owns. */
typedef struct rrchan {
    struct rrchan *next;
    uint64_t hash;
    unsigned key;              /* the items' srv: its identity with the name (0 in cluster mode) */
    unsigned srv;              /* the server it is subscribed on (its worker's w->sh[srv]): key, or
                                  (cluster) the node the owner's slot map names, followed on moves */
    bool pat;
    int state;                 /* S_* of the owner's subscription in Redis */
    unsigned nwant;            /* workers interested */
    uint8_t *want;             /* per worker: W_* (in the same allocation) */
    size_t len;
    char name[];
} rrchan;

struct rrelay {
    /* the queue (producers: every worker of the node) */
    pthread_mutex_t mu;
    rritem *q, *spare;
    size_t n, cap, spare_cap;
    bool posted;
    dx_loop *loop;             /* NULL until attached */
    /* owned channels (the owner's thread only) */
    rrchan **tab;
    size_t tab_cap, nchans;
    bool unsub_due;
    _Atomic uint64_t st_subs;    /* owned channels subscribed in Redis (gauge) */
    _Atomic uint64_t st_relayed; /* messages forwarded to a worker */
};

#define RR_BATCH 64 /* channels per UNSUBSCRIBE from one tick (the rest next tick) */

/* ---- buffers and queues ------------------------------------------------------ */

static rrbuf *buf_new(const char *ch, size_t chlen, const char *p, size_t plen)
{
    rrbuf *m = dx__alloc(NULL, sizeof *m + chlen + plen + 2);
    if (!m)
        return NULL;
    atomic_init(&m->refs, 1);
    m->chlen = chlen;
    m->plen = plen;
    memcpy(m->data, ch, chlen);
    m->data[chlen] = 0;
    if (plen)
        memcpy(m->data + chlen + 1, p, plen);
    m->data[chlen + 1 + plen] = 0;
    return m;
}

static void buf_unref(rrbuf *m)
{
    if (m && atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1)
        dx__free(NULL, m);
}

static void rr_drain(void *arg);

/* Queues (kind, from, m) for worker `to`, taking the caller's reference to
 * m. 0, or DX_ENOMEM (nothing queued, the reference still the caller's). */
static int push(rbus *b, unsigned to, int kind, unsigned from, unsigned srv, rrbuf *m)
{
    struct rrelay *rr = b->w[to].rr;
    pthread_mutex_lock(&rr->mu);
    if (rr->n == rr->cap) {
        size_t cap = rr->cap ? rr->cap * 2 : 64;
        rritem *q = dx__realloc(NULL, rr->q, cap * sizeof *q);
        if (!q) {
            pthread_mutex_unlock(&rr->mu);
            return DX_ENOMEM;
        }
        rr->q = q;
        rr->cap = cap;
    }
    rr->q[rr->n++] = (rritem){kind, from, srv, m};
    dx_loop *loop = !rr->posted ? rr->loop : NULL;
    if (loop)
        rr->posted = true;
    pthread_mutex_unlock(&rr->mu);
    if (loop && dx_loop_post(loop, rr_drain, &b->w[to]) != 0) {
        pthread_mutex_lock(&rr->mu);
        rr->posted = false; /* the tick drains it */
        pthread_mutex_unlock(&rr->mu);
    }
    return 0;
}

/* An event about channel `name` on server srv to worker `to` (a new buffer). */
static int tell(rworker *o, unsigned to, int kind, unsigned srv, const char *name, size_t len)
{
    rrbuf *m = buf_new(name, len, NULL, 0);
    int rc = m ? push(o->b, to, kind, o->index, srv, m) : DX_ENOMEM;
    if (rc) {
        buf_unref(m);
        atomic_fetch_add_explicit(&o->b->st_lost, 1, memory_order_relaxed);
        dx__rb_log(o->b, DX_LOG_ERROR, "redis bus: worker %u: out of memory telling worker %u about %.*s", o->index,
                   to, (int)len, name);
    }
    return rc;
}

unsigned dx__rr_owner(rbus *b, const char *ch, size_t len)
{
    return (unsigned)(hash_name(ch, len) % b->o.workers);
}

/* ---- owned channels ------------------------------------------------------------ */

static size_t bucket(const struct rrelay *rr, uint64_t h)
{
    return (size_t)(h >> 32) & (rr->tab_cap - 1); /* the low bits chose the owner */
}

static uint64_t chan_hash(unsigned srv, const char *name, size_t len)
{
    return hash_name(name, len) ^ ((uint64_t)srv * 0x9e3779b97f4a7c15ull);
}

static rrchan *chan_find(struct rrelay *rr, bool pat, unsigned key, const char *name, size_t len)
{
    if (!rr->tab_cap)
        return NULL;
    uint64_t h = chan_hash(key, name, len);
    for (rrchan *c = rr->tab[bucket(rr, h)]; c; c = c->next)
        if (c->hash == h && c->key == key && c->pat == pat && c->len == len && memcmp(c->name, name, len) == 0)
            return c;
    return NULL;
}

/* Cluster: the node owner w's slot map names for topic channel c ("dx:m:{T}"). */
static unsigned chan_node(rworker *w, const rrchan *c)
{
    const char *nm;
    size_t nl;
    if (!dx__rb_chan_topic(c->name, c->len, true, &nm, &nl))
        return 0;
    return dx__rb_shard_of(w, nm, nl)->index;
}

static rrchan *chan_get(rworker *w, bool pat, unsigned key, const char *name, size_t len)
{
    struct rrelay *rr = w->rr;
    rrchan *c = chan_find(rr, pat, key, name, len);
    if (c)
        return c;
    if (rr->nchans + 1 > rr->tab_cap / 2) {
        size_t cap = rr->tab_cap ? rr->tab_cap * 2 : 64;
        rrchan **tab = dx__alloc(NULL, cap * sizeof *tab);
        if (!tab)
            return NULL;
        memset(tab, 0, cap * sizeof *tab);
        size_t old = rr->tab_cap;
        rrchan **otab = rr->tab;
        rr->tab = tab;
        rr->tab_cap = cap;
        for (size_t i = 0; i < old; i++) {
            for (rrchan *x = otab[i], *nx; x; x = nx) {
                nx = x->next;
                x->next = tab[bucket(rr, x->hash)];
                tab[bucket(rr, x->hash)] = x;
            }
        }
        dx__free(NULL, otab);
    }
    unsigned nw = w->b->o.workers;
    c = dx__alloc(NULL, sizeof *c + len + 1 + nw);
    if (!c)
        return NULL;
    memset(c, 0, sizeof *c);
    c->hash = chan_hash(key, name, len);
    c->key = key;
    c->srv = key;
    c->pat = pat;
    c->state = S_NONE;
    c->len = len;
    memcpy(c->name, name, len);
    c->name[len] = 0;
    c->want = (uint8_t *)c->name + len + 1;
    memset(c->want, W_NO, nw);
    if (w->b->o.cluster && !pat)
        c->srv = chan_node(w, c);
    c->next = rr->tab[bucket(rr, c->hash)];
    rr->tab[bucket(rr, c->hash)] = c;
    rr->nchans++;
    return c;
}

/* Subscribed in Redis: the states that hold a subscription there. */
static bool held(int state)
{
    return state == S_ACTIVE || state == S_UNSUBSCRIBING;
}

static void set_state(rworker *w, rrchan *c, int state)
{
    if (held(c->state) && !held(state))
        atomic_fetch_sub_explicit(&w->rr->st_subs, 1, memory_order_relaxed);
    else if (!held(c->state) && held(state))
        atomic_fetch_add_explicit(&w->rr->st_subs, 1, memory_order_relaxed);
    c->state = state;
}

/* Unlinks and frees c (no interest, no subscription). */
static void chan_free(rworker *w, rrchan *c)
{
    struct rrelay *rr = w->rr;
    for (rrchan **pp = &rr->tab[bucket(rr, c->hash)]; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    rr->nchans--;
    set_state(w, c, S_NONE);
    dx__free(NULL, c);
}

static bool cluster_topic(const rworker *w, const rrchan *c)
{
    return w->b->o.cluster && !c->pat;
}

/* (S|P)SUBSCRIBEs c: on its server; cluster: on node `to`, or (to < 0) on
 * the node w's slot map names now (c->srv follows, even when it fails:
 * subscribed once that node's connection is up). */
static int redis_sub_on(rworker *w, rrchan *c, int to)
{
    const char *names[1] = {c->name};
    size_t lens[1] = {c->len};
    if (cluster_topic(w, c))
        c->srv = to >= 0 ? (unsigned)to : chan_node(w, c);
    const char *verb = c->pat ? "PSUBSCRIBE" : w->b->o.cluster ? "SSUBSCRIBE" : "SUBSCRIBE";
    int rc = dx__rb_redis_sub(&w->sh[c->srv], verb, names, lens, 1);
    if (!rc)
        set_state(w, c, S_SUBSCRIBING);
    return rc;
}

static int redis_sub(rworker *w, rrchan *c)
{
    return redis_sub_on(w, c, -1);
}

/* Each interested worker whose interest is unconfirmed: confirmed (c is active). */
static void confirm_all(rworker *w, rrchan *c)
{
    for (unsigned i = 0; i < w->b->o.workers; i++)
        if (c->want[i] == W_WAIT && tell(w, i, c->pat ? RR_PSUBSCRIBE : RR_SUBSCRIBE, c->key, c->name, c->len) == 0)
            c->want[i] = W_YES;
}

/* c could not be subscribed (the connection is down): each interested
 * worker is told, as its own connection's loss told it before. */
static void down_all(rworker *w, rrchan *c)
{
    for (unsigned i = 0; i < w->b->o.workers; i++) {
        if (c->want[i] != W_NO) {
            (void)tell(w, i, c->pat ? RR_PDOWN : RR_DOWN, c->key, c->name, c->len);
            c->want[i] = W_WAIT;
        }
    }
}

static void owner_want(rworker *w, unsigned from, bool pat, unsigned srv, const char *name, size_t len)
{
    rrchan *c = srv < w->nsh ? chan_get(w, pat, srv, name, len) : NULL;
    if (!c) {
        (void)tell(w, from, pat ? RR_PDOWN : RR_DOWN, srv, name, len);
        return;
    }
    if (c->state == S_NONE && cluster_topic(w, c))
        c->srv = chan_node(w, c); /* where it is to be subscribed */
    bool up = w->sh[c->srv].sub.up;
    if (c->want[from] == W_NO) {
        c->want[from] = W_WAIT;
        c->nwant++;
    }
    switch (c->state) {
    case S_ACTIVE:
        if (up && c->want[from] == W_WAIT && tell(w, from, pat ? RR_PSUBSCRIBE : RR_SUBSCRIBE, srv, c->name, c->len) == 0)
            c->want[from] = W_YES;
        break; /* not up: confirmed once it is (dx__rr_sub_up) */
    case S_NONE:
        if (!up || redis_sub(w, c) != 0)
            (void)tell(w, from, pat ? RR_PDOWN : RR_DOWN, srv, c->name, c->len); /* subscribed once back */
        break;
    default:
        break; /* confirmed with Redis's answer; or subscribed again once unsubscribed */
    }
}

static void owner_unwant(rworker *w, unsigned from, bool pat, unsigned srv, const char *name, size_t len)
{
    rrchan *c = chan_find(w->rr, pat, srv, name, len);
    if (c && c->want[from] != W_NO) {
        c->want[from] = W_NO;
        if (--c->nwant == 0)
            w->rr->unsub_due = true;
    }
    /* after every message sent to it before: nothing of c follows */
    (void)tell(w, from, pat ? RR_PUNSUBSCRIBE : RR_UNSUBSCRIBE, srv, name, len);
}

/* ---- the worker's side: events from a channel's owner ------------------------------ */

void dx__rb_pattern_catch(rworker *w)
{
    for (size_t i = 0; i < w->tab_cap; i++)
        for (rtopic *t = w->tab[i]; t; t = t->next)
            if (t->refs <= 0 && (t->need_catch || (t->catching && !t->catch_out)))
                dx__rb_catch_start(w, t);
}

/* w's record of topic channel ch (sh: the server the event names, NULL in
 * cluster mode, where the name alone says which topic), or NULL. */
static rtopic *chan_rtopic(rworker *w, rshard *sh, const char *ch, size_t len)
{
    const char *nm;
    size_t nl;
    if (!dx__rb_chan_topic(ch, len, sh == NULL, &nm, &nl))
        return NULL;
    rtopic *t = dx__rb_topic_find(w, nm, nl);
    return t && (!sh || t->s == sh) ? t : NULL;
}

/* Reads of t whose barrier can no longer come (it travels with t's
 * messages): failed (the answer would not be ordered with the live
 * entries); an answer still out frees its request when it comes. */
static void barriers_lost(rshard *sh, rtopic *t)
{
    for (rreq **pp = &sh->barriers; *pp;) {
        rreq *r = *pp;
        if (r->t != t) {
            pp = &r->next;
            continue;
        }
        *pp = r->next;
        r->next = NULL;
        dx__rb_barrier_lost(r);
    }
}

/* The subscription of topic channel (or pattern) ch on sh's server (NULL:
 * cluster mode) that w wants was lost with its owner's pub/sub connection
 * (cluster: or its slot moved): what w did for it when its own connection
 * was lost; the owner confirms it again once back. */
static void chan_down(rworker *w, rshard *sh, bool pat, const char *ch, size_t len)
{
    if (pat) {
        if (!sh)
            return; /* cluster: patterns are not relayed */
        rpat *p = dx__rb_pat_find(w, ch, len);
        if (!p || p->state[sh->index] == S_NONE)
            return;
        if (p->state[sh->index] != S_UNSUBSCRIBING)
            p->state[sh->index] = S_SUBSCRIBING; /* its owner subscribes again and confirms */
        /* topics of that server seen through a pattern: read back once it is active again */
        for (size_t i = 0; i < w->tab_cap; i++)
            for (rtopic *t = w->tab[i]; t; t = t->next)
                if (t->s == sh && t->state == S_NONE && t->refs <= 0 && t->have_last)
                    t->need_catch = true;
        return;
    }
    rtopic *t = chan_rtopic(w, sh, ch, len);
    if (!t || t->state == S_NONE)
        return;
    if (t->state != S_UNSUBSCRIBING)
        t->state = S_SUBSCRIBING; /* its owner keeps the interest: confirmed again once back */
    dx__rb_waiting_fail(w, t, DX_EIO);
    if (t->refs > 0 && t->have_last) {
        t->need_catch = true; /* a catch-up holding entries keeps them */
    } else {
        t->have_last = false;
        dx__rb_catch_stop(t);
    }
    if (sh) {
        barriers_lost(sh, t);
    } else { /* cluster: a read went to the node its command connections found */
        for (unsigned k = 0; k < w->nsh; k++)
            barriers_lost(&w->sh[k], t);
    }
}

/* An event for w from a channel's owner, as Redis would have sent it to
 * w's own connection to sh's server: a message of channel a (payload p), a
 * (p)(un)subscribe confirmation of a, a barrier (p: its id), or the loss
 * of a's subscription (RR_DOWN, RR_PDOWN). sh is NULL in cluster mode (the
 * owner's node for a is not one w can name: its own slot map may differ;
 * the topic is found by name; patterns are not relayed there). */
static void rr_event(rworker *w, rshard *sh, int ev, const char *a, size_t alen, const char *p, size_t n)
{
    rtopic *t = NULL;
    if (ev == RR_SUBSCRIBE || ev == RR_UNSUBSCRIBE)
        t = chan_rtopic(w, sh, a, alen);
    if (!sh && (ev == RR_PSUBSCRIBE || ev == RR_PUNSUBSCRIBE))
        return;
    rpat *pt = ev == RR_PSUBSCRIBE || ev == RR_PUNSUBSCRIBE ? dx__rb_pat_find(w, a, alen) : NULL;
    unsigned k = sh ? sh->index : 0;
    switch (ev) {
    case RR_MESSAGE:
        dx__rb_live_message(w, a, alen, sh == NULL, p, n);
        break;
    case RR_BARRIER:
        if (sh) {
            (void)dx__rb_barrier_message(sh, p, n);
        } else { /* cluster: on the list of the node its read went to */
            for (unsigned i = 0; i < w->nsh; i++)
                if (dx__rb_barrier_message(&w->sh[i], p, n))
                    break;
        }
        break;
    case RR_DOWN:
    case RR_PDOWN:
        chan_down(w, sh, ev == RR_PDOWN, a, alen);
        break;
    case RR_SUBSCRIBE:
        if (t && t->state == S_SUBSCRIBING) {
            dx__rb_topic_active(w, t);
            if (t->refs <= 0 && !t->waiting)
                w->unsub_due = true; /* left (or failed) while subscribing */
        }
        break;
    case RR_UNSUBSCRIBE:
        if (t && t->state == S_UNSUBSCRIBING) {
            /* Entries published while unsubscribed never came: nothing is
             * ordered here any more (the subscribers that arrived since are
             * all waiting for their read, which comes after the new
             * subscription, so none of them needs a catch-up). */
            t->state = S_NONE;
            t->have_last = false;
            t->need_catch = false;
            dx__rb_catch_stop(t);
            if ((t->refs > 0 || t->waiting) && dx__rb_subscribe_topic(w, t) != 0)
                dx__rb_waiting_fail(w, t, DX_EIO);
        }
        break;
    case RR_PSUBSCRIBE:
        if (pt && pt->state[k] == S_SUBSCRIBING) {
            pt->state[k] = S_ACTIVE;
            if (pt->refs <= 0)
                w->unsub_due = true;
            dx__rb_pattern_catch(w); /* its owner subscribed it again after a loss */
        }
        break;
    case RR_PUNSUBSCRIBE:
        if (pt && pt->state[k] == S_UNSUBSCRIBING) {
            pt->state[k] = S_NONE;
            /* topics seen only through patterns were not received for a
             * while: no catch-up may bring their older entries to later
             * pattern subscribers */
            for (size_t i = 0; i < w->tab_cap; i++)
                for (rtopic *x = w->tab[i]; x; x = x->next)
                    if (x->refs <= 0 && x->state == S_NONE && !x->catching && x->s == sh)
                        x->have_last = false;
            if (pt->refs > 0) {
                const char *names[1] = {pt->name};
                size_t lens[1] = {pt->len};
                if (dx__rb_send_sub(sh, "PSUBSCRIBE", names, lens, 1) == 0)
                    pt->state[k] = S_SUBSCRIBING;
            }
        }
        break;
    default:
        break;
    }
}

/* ---- the queue's consumer ------------------------------------------------------- */

static void run_item(rworker *w, rritem *it)
{
    rrbuf *m = it->m;
    switch (it->kind) {
    case RQ_WANT:
    case RQ_PWANT:
        owner_want(w, it->from, it->kind == RQ_PWANT, it->srv, m->data, m->chlen);
        break;
    case RQ_UNWANT:
    case RQ_PUNWANT:
        owner_unwant(w, it->from, it->kind == RQ_PUNWANT, it->srv, m->data, m->chlen);
        break;
    default:
        if (w->b->o.cluster)
            rr_event(w, NULL, it->kind, m->data, m->chlen, m->data + m->chlen + 1, m->plen);
        else if (it->srv < w->nsh)
            rr_event(w, &w->sh[it->srv], it->kind, m->data, m->chlen, m->data + m->chlen + 1, m->plen);
        break;
    }
}

static void rr_drain(void *arg)
{
    rworker *w = arg;
    struct rrelay *rr = w->rr;
    pthread_mutex_lock(&rr->mu);
    rritem *q = rr->q;
    size_t n = rr->n, cap = rr->cap;
    rr->q = rr->spare;
    rr->cap = rr->spare_cap;
    rr->n = 0;
    rr->spare = NULL;
    rr->spare_cap = 0;
    rr->posted = false;
    pthread_mutex_unlock(&rr->mu);
    for (size_t i = 0; i < n; i++) {
        if (!w->freeing)
            run_item(w, &q[i]);
        buf_unref(q[i].m);
    }
    pthread_mutex_lock(&rr->mu);
    if (!rr->spare) {
        rr->spare = q;
        rr->spare_cap = cap;
        q = NULL;
    }
    pthread_mutex_unlock(&rr->mu);
    dx__free(NULL, q);
    dx__rb_worker_flush(w);
}

/* ---- hooks ---------------------------------------------------------------------- */

bool dx__rr_is_relayed(const rbus *b, const char *verb, const char *name, size_t len)
{
    if (b->o.cluster && verb[0] == 'P')
        return false; /* cluster: patterns are PSUBSCRIBEd by each worker on every master */
    return len > MSG_PREFIX_LEN && memcmp(name, MSG_PREFIX, MSG_PREFIX_LEN) == 0;
}

int dx__rr_send(rworker *w, unsigned srv, const char *verb, const char *const *names, const size_t *lens, size_t n)
{
    if (w->b->o.cluster)
        srv = 0; /* the owner finds the node with its own slot map */
    bool pat = verb[0] == 'P';
    bool unsub = strstr(verb, "UNSUB") != NULL;
    int kind = pat ? (unsub ? RQ_PUNWANT : RQ_PWANT) : (unsub ? RQ_UNWANT : RQ_WANT);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        rrbuf *m = buf_new(names[i], lens[i], NULL, 0);
        int e = m ? push(w->b, dx__rr_owner(w->b, names[i], lens[i]), kind, w->index, srv, m) : DX_ENOMEM;
        if (e) {
            buf_unref(m);
            rc = e;
        }
    }
    return rc;
}

/* A message on this worker's wchan: a barrier "<worker>.<id>" for a read of
 * one of its topics, forwarded to that worker after the topic's messages. */
static void barrier_forward(rworker *w, unsigned srv, const char *s, size_t n)
{
    const char *dot = memchr(s, '.', n);
    bool ok = dot != NULL;
    uint64_t to = ok ? dx__rb_parse_u64(s, (size_t)(dot - s), &ok) : 0;
    if (!ok || to >= w->b->o.workers) {
        dx__rb_log(w->b, DX_LOG_WARN, "redis bus: malformed barrier on %s: ignored", w->wchan);
        return;
    }
    rrbuf *m = buf_new("", 0, dot + 1, n - (size_t)(dot + 1 - s));
    if (!m || push(w->b, (unsigned)to, RR_BARRIER, w->index, srv, m) != 0) {
        buf_unref(m); /* the read's barrier never comes: it is failed with the next loss */
        atomic_fetch_add_explicit(&w->b->st_lost, 1, memory_order_relaxed);
    }
}

/* Cluster: a barrier on topic channel ch (SPUBLISHed by a read in the
 * topic's slot, so it came in order with the topic's messages):
 * "b <node>.<worker>.<id>"; another node's is not ours. */
static void cluster_barrier(rworker *w, const char *p, size_t n)
{
    size_t nl = strlen(w->b->node);
    if (n < 2 + nl + 1 || memcmp(p + 2, w->b->node, nl) != 0 || p[2 + nl] != '.')
        return;
    barrier_forward(w, 0, p + 3 + nl, n - 3 - nl);
}

/* A message of owned channel c (Redis's order): to each confirmed worker,
 * one buffer for all (its references all taken before the first push: a
 * receiver may drop its own before the next push). */
static void forward(rworker *w, rrchan *c, const char *ch, size_t chlen, const char *p, size_t n)
{
    unsigned k = 0;
    for (unsigned i = 0; i < w->b->o.workers; i++)
        k += c->want[i] == W_YES;
    if (!k)
        return;
    rrbuf *m = buf_new(ch, chlen, p, n);
    if (!m) {
        atomic_fetch_add_explicit(&w->b->st_lost, k, memory_order_relaxed);
        return;
    }
    atomic_store_explicit(&m->refs, k, memory_order_relaxed); /* not shared yet */
    for (unsigned i = 0; i < w->b->o.workers; i++) {
        if (c->want[i] != W_YES)
            continue;
        if (push(w->b, i, RR_MESSAGE, w->index, c->key, m) != 0) {
            buf_unref(m);
            atomic_fetch_add_explicit(&w->b->st_lost, 1, memory_order_relaxed);
            continue;
        }
        atomic_fetch_add_explicit(&w->rr->st_relayed, 1, memory_order_relaxed);
    }
}

/* Redis confirmed the (P)SUBSCRIBE of c. */
static void on_subscribed(rworker *w, rrchan *c)
{
    if (c->state != S_SUBSCRIBING)
        return;
    set_state(w, c, S_ACTIVE);
    if (w->sh[c->srv].sub.up)
        confirm_all(w, c);
    if (!c->nwant)
        w->rr->unsub_due = true;
}

/* Redis confirmed the (P|S)UNSUBSCRIBE of c (cluster: or ended it, the
 * node no longer having its slot). */
static void on_unsubscribed(rworker *w, rrchan *c)
{
    if (c->state != S_UNSUBSCRIBING)
        return;
    set_state(w, c, S_NONE);
    if (!c->nwant) {
        chan_free(w, c);
        return;
    }
    if (redis_sub(w, c) != 0)
        down_all(w, c);
}

/* Cluster: Redis ended the shard subscription of c, which was active: its
 * slot moved. The interested workers are told (as for a lost connection:
 * each reads back what it missed once confirmed again); c is subscribed
 * again where the slot map says (MOVED from a node that no longer has it
 * corrects the map: dx__rr_sub_error), and confirmed once Redis confirms. */
static void slot_moved(rworker *w, rrchan *c)
{
    set_state(w, c, S_NONE);
    down_all(w, c);
    w->map_due = true;
    dx__rb_cluster_map(w);
    if (!c->nwant) {
        chan_free(w, c);
        return;
    }
    (void)redis_sub(w, c); /* or once the node's connection is up (dx__rr_sub_up) */
}

/* Cluster: a shard channel's push on sh (kind "smessage", "ssubscribe",
 * "sunsubscribe"; a: the channel, c: the payload). */
static void cluster_pubsub(rshard *sh, const char *kind, const char *a, size_t alen, const char *c, size_t clen)
{
    rworker *w = sh->w;
    rrchan *ch = a ? chan_find(w->rr, false, 0, a, alen) : NULL;
    if (strcmp(kind, "smessage") == 0) {
        if (!c)
            return;
        if (clen >= 2 && c[0] == 'b' && c[1] == ' ')
            cluster_barrier(w, c, clen);
        else if (ch && ch->srv == sh->index)
            forward(w, ch, a, alen, c, clen);
        return;
    }
    if (!ch || ch->srv != sh->index)
        return; /* not (or no longer) subscribed there */
    if (strcmp(kind, "ssubscribe") == 0) {
        on_subscribed(w, ch);
    } else if (strcmp(kind, "sunsubscribe") == 0) {
        if (ch->state == S_UNSUBSCRIBING)
            on_unsubscribed(w, ch);
        else if (ch->state == S_ACTIVE)
            slot_moved(w, ch); /* not asked for; one still subscribing gets its answer, or MOVED */
    }
}

void dx__rr_sub_error(rshard *sh, unsigned slot, int to)
{
    rworker *w = sh->w;
    struct rrelay *rr = w->rr;
    /* that node does not have the slot, so it holds none of its shard
     * subscriptions: those being made there go to node `to`, those being
     * ended are ended */
    for (size_t i = 0; i < rr->tab_cap; i++) {
        for (rrchan *c = rr->tab[i], *nx; c; c = nx) {
            nx = c->next;
            if (c->pat || c->srv != sh->index)
                continue;
            const char *nm;
            size_t nl;
            if (!dx__rb_chan_topic(c->name, c->len, true, &nm, &nl) || dx__rb_slot(nm, nl) != slot)
                continue;
            if (c->state == S_SUBSCRIBING) {
                set_state(w, c, S_NONE);
                if (!c->nwant)
                    chan_free(w, c);
                else if (redis_sub_on(w, c, to) != 0)
                    down_all(w, c); /* subscribed once that node's connection is up */
            } else if (c->state == S_UNSUBSCRIBING) {
                on_unsubscribed(w, c);
            }
        }
    }
}

void dx__rr_retarget(rworker *w)
{
    struct rrelay *rr = w->rr;
    for (size_t i = 0; i < rr->tab_cap; i++)
        for (rrchan *c = rr->tab[i]; c; c = c->next)
            if (!c->pat && c->state == S_NONE && c->nwant && chan_node(w, c) != c->srv)
                (void)redis_sub(w, c); /* no longer waiting for a node that lost the slot */
}

void dx__rr_on_pubsub(rshard *sh, const char *kind, const char *a, size_t alen, const char *c, size_t clen,
                      const char *d, size_t dlen)
{
    rworker *w = sh->w;
    struct rrelay *rr = w->rr;
    unsigned srv = sh->index;
    if (w->b->o.cluster) {
        cluster_pubsub(sh, kind, a, alen, c, clen);
        return;
    }
    if (strcmp(kind, "message") == 0 && a && c) {
        if (alen == strlen(w->wchan) && memcmp(a, w->wchan, alen) == 0) {
            barrier_forward(w, srv, c, clen);
        } else {
            rrchan *ch = chan_find(rr, false, srv, a, alen);
            if (ch)
                forward(w, ch, a, alen, c, clen);
        }
        return;
    }
    if (strcmp(kind, "pmessage") == 0 && a && c && d) {
        rrchan *ch = chan_find(rr, true, srv, a, alen);
        if (ch)
            forward(w, ch, c, clen, d, dlen);
        return;
    }
    bool pat = kind[0] == 'p';
    const char *verb = pat ? kind + 1 : kind;
    rrchan *ch = a ? chan_find(rr, pat, srv, a, alen) : NULL;
    if (!ch)
        return; /* this worker's wchan confirmed, or a channel no longer owned */
    if (strcmp(verb, "subscribe") == 0)
        on_subscribed(w, ch);
    else if (strcmp(verb, "unsubscribe") == 0)
        on_unsubscribed(w, ch);
}

void dx__rr_conn_start(rshard *sh)
{
    rworker *w = sh->w;
    struct rrelay *rr = w->rr;
    for (size_t i = 0; i < rr->tab_cap; i++)
        for (rrchan *c = rr->tab[i]; c; c = c->next)
            if (c->srv == sh->index && c->nwant && c->state == S_NONE)
                (void)redis_sub(w, c); /* on failure: S_NONE, tried again once the connection is up */
}

void dx__rr_sub_up(rshard *sh)
{
    rworker *w = sh->w;
    struct rrelay *rr = w->rr;
    for (size_t i = 0; i < rr->tab_cap; i++) {
        for (rrchan *c = rr->tab[i]; c; c = c->next) {
            if (c->srv != sh->index)
                continue;
            if (c->state == S_ACTIVE)
                confirm_all(w, c);
            else if (c->state == S_NONE && c->nwant && redis_sub(w, c) != 0)
                down_all(w, c);
        }
    }
}

void dx__rr_conn_down(rshard *sh)
{
    rworker *w = sh->w;
    struct rrelay *rr = w->rr;
    for (size_t i = 0; i < rr->tab_cap; i++) {
        for (rrchan *c = rr->tab[i], *nx; c; c = nx) {
            nx = c->next;
            if (c->srv != sh->index)
                continue;
            if (c->state == S_NONE) {
                if (!c->nwant)
                    chan_free(w, c);
                continue; /* its workers were told when it became so (a loss once per outage) */
            }
            set_state(w, c, S_NONE);
            if (!c->nwant) {
                chan_free(w, c);
                continue;
            }
            down_all(w, c);
            if (cluster_topic(w, c) && chan_node(w, c) != sh->index)
                (void)redis_sub(w, c); /* its slot is known to be elsewhere now */
        }
    }
}

/* Unsubscribes (batched) the channels w owns on server srv that no worker wants. */
static void unsub_server(rworker *w, unsigned srv)
{
    struct rrelay *rr = w->rr;
    rshard *sh = &w->sh[srv];
    const char *names[RR_BATCH];
    size_t lens[RR_BATCH], n = 0;
    rrchan *cs[RR_BATCH];
    for (size_t i = 0; i < rr->tab_cap; i++) {
        for (rrchan *c = rr->tab[i], *nx; c; c = nx) {
            nx = c->next;
            if (c->nwant || c->srv != srv)
                continue;
            if (c->state == S_NONE) {
                chan_free(w, c);
                continue;
            }
            if (c->state != S_ACTIVE)
                continue;
            if (c->pat) {
                const char *nm[1] = {c->name};
                size_t ln[1] = {c->len};
                if (dx__rb_redis_sub(sh, "PUNSUBSCRIBE", nm, ln, 1) == 0)
                    set_state(w, c, S_UNSUBSCRIBING);
                else
                    rr->unsub_due = true;
                continue;
            }
            if (n == RR_BATCH) {
                rr->unsub_due = true; /* the rest next tick */
                continue;
            }
            cs[n] = c;
            names[n] = c->name;
            lens[n++] = c->len;
        }
    }
    if (!n)
        return;
    if (w->b->o.cluster) {
        /* one per command: channels of several slots may not share one (CROSSSLOT) */
        for (size_t i = 0; i < n; i++) {
            if (dx__rb_redis_sub(sh, "SUNSUBSCRIBE", names + i, lens + i, 1) == 0)
                set_state(w, cs[i], S_UNSUBSCRIBING);
            else
                rr->unsub_due = true;
        }
        return;
    }
    if (dx__rb_redis_sub(sh, "UNSUBSCRIBE", names, lens, n) != 0) {
        rr->unsub_due = true;
        return;
    }
    for (size_t i = 0; i < n; i++)
        set_state(w, cs[i], S_UNSUBSCRIBING);
}

void dx__rr_tick(rworker *w)
{
    struct rrelay *rr = w->rr;
    pthread_mutex_lock(&rr->mu);
    bool due = rr->n && !rr->posted; /* a wake-up that could not be posted */
    pthread_mutex_unlock(&rr->mu);
    if (due)
        rr_drain(w);
    if (!rr->unsub_due)
        return;
    rr->unsub_due = false;
    for (unsigned k = 0; k < w->nsh; k++)
        unsub_server(w, k);
}

/* ---- life ------------------------------------------------------------------------- */

int dx__rr_init(rbus *b)
{
    for (unsigned i = 0; i < b->o.workers; i++) {
        struct rrelay *rr = dx__alloc(NULL, sizeof *rr);
        if (!rr)
            return DX_ENOMEM;
        memset(rr, 0, sizeof *rr);
        pthread_mutex_init(&rr->mu, NULL);
        atomic_init(&rr->st_subs, 0);
        atomic_init(&rr->st_relayed, 0);
        b->w[i].rr = rr;
    }
    return 0;
}

void dx__rr_attach(rworker *w, dx_loop *loop)
{
    struct rrelay *rr = w->rr;
    pthread_mutex_lock(&rr->mu);
    rr->loop = loop;
    bool wake = rr->n && !rr->posted;
    if (wake)
        rr->posted = true;
    pthread_mutex_unlock(&rr->mu);
    if (wake && dx_loop_post(loop, rr_drain, w) != 0) {
        pthread_mutex_lock(&rr->mu);
        rr->posted = false;
        pthread_mutex_unlock(&rr->mu);
    }
}

void dx__rr_stats(rbus *b, dx__bus_stats *out)
{
    for (unsigned i = 0; i < b->o.workers; i++) {
        if (!b->w[i].rr)
            continue;
        out->bus_subscriptions += atomic_load_explicit(&b->w[i].rr->st_subs, memory_order_relaxed);
        out->relayed += atomic_load_explicit(&b->w[i].rr->st_relayed, memory_order_relaxed);
    }
}

/* Every worker loop has stopped: items still queued are dropped (their
 * buffers released), then the channels freed. A drain posted and not run
 * is dropped by its loop (never run once the loop stopped). */
void dx__rr_free(rbus *b)
{
    for (unsigned i = 0; b->w && i < b->o.workers; i++) {
        struct rrelay *rr = b->w[i].rr;
        if (!rr)
            continue;
        for (size_t k = 0; k < rr->n; k++)
            buf_unref(rr->q[k].m);
        dx__free(NULL, rr->q);
        dx__free(NULL, rr->spare);
        for (size_t k = 0; k < rr->tab_cap; k++) {
            for (rrchan *c = rr->tab[k], *nx; c; c = nx) {
                nx = c->next;
                dx__free(NULL, c);
            }
        }
        dx__free(NULL, rr->tab);
        pthread_mutex_destroy(&rr->mu);
        dx__free(NULL, rr);
        b->w[i].rr = NULL;
    }
}
