/*
 * src/bus/local.c: the in-process bus (bus.h), the default.
 *
 * Ownership: topic T belongs to worker hash(T) % N. The owner's thread alone
 * creates T's state (sequencer and history: a dx__gw_log; presence), appends
 * to it and reads it. Every request about T (publish, subscribe, leave,
 * history, presence) is queued to the owner, even from the owner itself, so
 * no completion ever runs inside the call that asked for it.
 *
 * Queues: one per worker, multi-producer: a growable array of fixed-size
 * items under a mutex, swapped out whole by the consumer (so a steady flow
 * does not allocate), and one dx_loop_post wake-up per batch (only the push
 * that finds the queue not yet posted posts). A 1 s timer per worker also
 * drains its queue, so a failed wake-up (DX_ENOMEM) only delays.
 *
 * Fan-out: after an append, the owner hands the entry (one reference) to
 * each worker whose interest is above zero: itself by a direct call (it is
 * running its queue, not inside a gateway call), others by one queue item
 * each. One hand-off per worker per publish, whatever the subscriber count.
 *
 * Topic state lives while it has presence or retained history, and for the
 * history age after its last activity (or 60 s with no age bound): then it
 * is freed and a later use starts a new epoch (GATEWAY.md: continuity was
 * lost). A sweep every 5 s per worker trims by age and frees idle topics:
 * O(owned topics) per sweep.
 */
#define _GNU_SOURCE
#include "bus/bus.h"
#include "core/seams.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ---- topics as handed out ------------------------------------------------ */

dx__bus_topic *dx__bus_topic_new(const char *name, size_t len, const char *epoch)
{
    dx__bus_topic *t = dx__alloc(NULL, sizeof *t + len + 1);
    if (!t)
        return NULL;
    atomic_init(&t->refs, 1);
    t->len = len;
    memcpy(t->name, name, len);
    t->name[len] = 0;
    size_t el = epoch ? strlen(epoch) : 0;
    if (el > DX__GW_EPOCH_LEN)
        el = DX__GW_EPOCH_LEN;
    memcpy(t->epoch, epoch ? epoch : "", el);
    t->epoch[el] = 0;
    return t;
}

dx__bus_topic *dx__bus_topic_ref(dx__bus_topic *t)
{
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
    return t;
}

void dx__bus_topic_unref(dx__bus_topic *t)
{
    if (t && atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1)
        dx__free(NULL, t);
}

/* ---- queue items --------------------------------------------------------- */

typedef struct lbus lbus;
typedef struct item item;

struct item {
    void (*run)(lbus *b, unsigned w, item *it);  /* on worker w's thread */
    void (*drop)(lbus *b, item *it);             /* the bus is freed first (any thread, workers stopped) */
    void *p[2];
};

typedef struct ltopic {
    struct ltopic *next;
    uint64_t hash;
    dx__gw_log *log;
    dx__bus_topic *t;        /* name + the log's epoch, handed out by reference */
    uint64_t present;        /* connections subscribed (presence count) */
    struct {
        char *id;
        size_t len;
        uint64_t n;          /* connections of this user subscribed */
    } *users;
    size_t nusers, capusers;
    uint64_t active_ns;      /* last publish, subscribe or read */
} ltopic;

typedef struct lworker {
    lbus *b;
    unsigned index;
    dx_loop *loop;
    const dx__bus_events *ev;
    void *ud;
    dx_timer *tick;
    unsigned ticks;
    /* the queue (producers: any thread) */
    pthread_mutex_t mu;
    item *q, *spare;
    size_t n, cap, spare_cap;
    bool posted;
    /* interest: subscriptions this worker holds (written by it, read by owners) */
    _Atomic long interest;
    /* owned topics (this thread only) */
    ltopic **tab;
    size_t tab_cap, ntopics;
    /* connections per user owned here (dx__bus_user_conns; this thread only) */
    struct ucount *uc;
    size_t hist_msgs, hist_bytes;
    struct req *retry;       /* answers that could not be queued (out of memory): the tick retries */
    _Atomic uint64_t st_topics, st_msgs, st_bytes, st_handoffs, st_lost;
} lworker;

struct lbus {
    dx__bus base;
    dx__bus_local_opts o;
    lworker *w;
};

static uint64_t hash_name(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a: owner choice and the owner's table */
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static unsigned owner_of(lbus *b, const char *t, size_t len)
{
    return (unsigned)(hash_name(t, len) % b->o.workers);
}

static void drain(void *arg);

/* Queues `it` for worker `to`. Never fails: the array grows (an allocation
 * failure is the one exception, reported as DX_ENOMEM with nothing queued). */
static int push(lbus *b, unsigned to, const item *it)
{
    lworker *w = &b->w[to];
    bool wake = false;
    pthread_mutex_lock(&w->mu);
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        item *q = dx__realloc(NULL, w->q, cap * sizeof *q);
        if (!q) {
            pthread_mutex_unlock(&w->mu);
            return DX_ENOMEM;
        }
        w->q = q;
        w->cap = cap;
    }
    w->q[w->n++] = *it;
    if (!w->posted && w->loop) {
        w->posted = true;
        wake = true;
    }
    pthread_mutex_unlock(&w->mu);
    if (wake && dx_loop_post(w->loop, drain, w) != 0) {
        pthread_mutex_lock(&w->mu);
        w->posted = false; /* the 1 s tick drains it */
        pthread_mutex_unlock(&w->mu);
    }
    return 0;
}

static void drain(void *arg)
{
    lworker *w = arg;
    pthread_mutex_lock(&w->mu);
    item *q = w->q;
    size_t n = w->n, cap = w->cap;
    w->q = w->spare;
    w->cap = w->spare_cap;
    w->n = 0;
    w->spare = NULL;
    w->spare_cap = 0;
    w->posted = false;
    pthread_mutex_unlock(&w->mu);
    for (size_t i = 0; i < n; i++)
        q[i].run(w->b, w->index, &q[i]);
    if (n && w->ev && w->ev->flush)
        w->ev->flush(w->ud);
    pthread_mutex_lock(&w->mu);
    if (!w->spare) {
        w->spare = q;
        w->spare_cap = cap;
        q = NULL;
    }
    pthread_mutex_unlock(&w->mu);
    dx__free(NULL, q);
}

/* ---- owned topics -------------------------------------------------------- */

static ltopic *topic_find(lworker *w, const char *name, size_t len, uint64_t h)
{
    if (!w->tab_cap)
        return NULL;
    for (ltopic *t = w->tab[h & (w->tab_cap - 1)]; t; t = t->next)
        if (t->hash == h && t->t->len == len && memcmp(t->t->name, name, len) == 0)
            return t;
    return NULL;
}

static void stats_sync(lworker *w)
{
    atomic_store_explicit(&w->st_topics, w->ntopics, memory_order_relaxed);
    atomic_store_explicit(&w->st_msgs, w->hist_msgs, memory_order_relaxed);
    atomic_store_explicit(&w->st_bytes, w->hist_bytes, memory_order_relaxed);
}

static ltopic *topic_get(lworker *w, const char *name, size_t len)
{
    uint64_t h = hash_name(name, len);
    ltopic *t = topic_find(w, name, len, h);
    if (t)
        return t;
    if (w->ntopics + 1 > w->tab_cap / 2) {
        size_t cap = w->tab_cap ? w->tab_cap * 2 : 64;
        ltopic **tab = dx__alloc(NULL, cap * sizeof *tab);
        if (!tab)
            return NULL;
        memset(tab, 0, cap * sizeof *tab);
        for (size_t i = 0; i < w->tab_cap; i++) {
            for (ltopic *x = w->tab[i], *nx; x; x = nx) {
                nx = x->next;
                x->next = tab[x->hash & (cap - 1)];
                tab[x->hash & (cap - 1)] = x;
            }
        }
        dx__free(NULL, w->tab);
        w->tab = tab;
        w->tab_cap = cap;
    }
    t = dx__alloc(NULL, sizeof *t);
    if (!t)
        return NULL;
    memset(t, 0, sizeof *t);
    int err = 0;
    dx__gw_log_opts ho = w->b->o.history;
    if (w->b->o.history_for) /* the topic's namespace picks its bounds once, here */
        w->b->o.history_for(w->b->o.history_ud, w->index, name, len, &ho);
    t->log = dx__gw_log_new(NULL, &ho, &err);
    if (!t->log) {
        dx__free(NULL, t);
        return NULL;
    }
    t->t = dx__bus_topic_new(name, len, dx__gw_log_epoch(t->log));
    if (!t->t) {
        dx__gw_log_free(t->log);
        dx__free(NULL, t);
        return NULL;
    }
    t->hash = h;
    t->next = w->tab[h & (w->tab_cap - 1)];
    w->tab[h & (w->tab_cap - 1)] = t;
    w->ntopics++;
    stats_sync(w);
    return t;
}

static void topic_free(ltopic *t)
{
    dx__gw_log_free(t->log);
    dx__bus_topic_unref(t->t);
    for (size_t i = 0; i < t->nusers; i++)
        dx__free(NULL, t->users[i].id);
    dx__free(NULL, t->users);
    dx__free(NULL, t);
}

/* Re-reads the log's size into the worker's totals after it changed. */
static void hist_account(lworker *w, ltopic *t, size_t before_n, size_t before_b)
{
    w->hist_msgs += dx__gw_log_count(t->log) - before_n;
    w->hist_bytes += dx__gw_log_bytes(t->log) - before_b;
}

static void sweep(lworker *w)
{
    uint64_t now = dx__now_ns(NULL);
    uint64_t idle = w->b->o.history.max_age_ns ? w->b->o.history.max_age_ns : UINT64_C(60000000000);
    for (size_t i = 0; i < w->tab_cap; i++) {
        for (ltopic **pp = &w->tab[i]; *pp;) {
            ltopic *t = *pp;
            size_t bn = dx__gw_log_count(t->log), bb = dx__gw_log_bytes(t->log);
            (void)dx__gw_log_trim(t->log);
            hist_account(w, t, bn, bb);
            if (t->present == 0 && dx__gw_log_count(t->log) == 0 && now - t->active_ns > idle) {
                *pp = t->next;
                topic_free(t);
                w->ntopics--;
                continue;
            }
            pp = &t->next;
        }
    }
    stats_sync(w);
}

static void retry_answers(lworker *w);

static void on_tick(dx_timer *tm, void *ud)
{
    (void)tm;
    lworker *w = ud;
    retry_answers(w);
    drain(w);
    if (++w->ticks % 5 == 0)
        sweep(w);
}

static int presence_add(ltopic *t, const char *user, size_t ulen)
{
    if (user) {
        size_t i;
        for (i = 0; i < t->nusers; i++)
            if (t->users[i].len == ulen && memcmp(t->users[i].id, user, ulen) == 0)
                break;
        if (i == t->nusers) {
            if (t->nusers == t->capusers) {
                size_t cap = t->capusers ? t->capusers * 2 : 4;
                void *u = dx__realloc(NULL, t->users, cap * sizeof *t->users);
                if (!u)
                    return DX_ENOMEM;
                t->users = u;
                t->capusers = cap;
            }
            char *id = dx__alloc(NULL, ulen + 1);
            if (!id)
                return DX_ENOMEM;
            memcpy(id, user, ulen);
            id[ulen] = 0;
            t->users[i].id = id;
            t->users[i].len = ulen;
            t->users[i].n = 0;
            t->nusers++;
        }
        t->users[i].n++;
    }
    t->present++;
    return 0;
}

static void presence_remove(ltopic *t, const char *user, size_t ulen)
{
    if (t->present)
        t->present--;
    if (!user)
        return;
    for (size_t i = 0; i < t->nusers; i++) {
        if (t->users[i].len == ulen && memcmp(t->users[i].id, user, ulen) == 0) {
            if (--t->users[i].n == 0) {
                dx__free(NULL, t->users[i].id);
                t->users[i] = t->users[--t->nusers];
            }
            return;
        }
    }
}

/* ---- requests ------------------------------------------------------------ */

/* One request: allocated by the asking worker, run by the owner, completed
 * back on the asking worker; topic, user and payload inline after it. */
typedef struct req req;
struct req {
    unsigned from;
    int kind;
    union {
        dx__bus_pub_fn pub;
        dx__bus_snap_fn snap;
        dx__bus_presence_fn pres;
        dx__bus_count_fn count;
    } fn;                    /* by kind; fn.pub NULL: nobody to tell */
    void *ud;
    char *topic;
    size_t tlen;
    char *user;              /* NULL: anonymous */
    size_t ulen;
    char *epoch;             /* resume: NULL = current */
    size_t elen;
    uint8_t *data;
    size_t dlen;
    dx__gw_kind mkind;
    bool join, resume;
    uint64_t since;
    size_t limit;
    /* results */
    int err;
    uint64_t offset;
    char res_epoch[DX__GW_EPOCH_LEN + 1];
    dx__bus_topic *t;
    dx__gw_snapshot snap;
    uint64_t count;
    char **users;
    size_t *ulens;
    size_t nusers;
    long delta;              /* user_conns */
    uint64_t ulimit;         /* user_conns: 0 none */
    struct req *retry_next;  /* in the answering worker's retry list */
    _Atomic unsigned remaining; /* disconnect: workers still to answer */
    _Atomic uint64_t total;
};

enum { R_PUB, R_SUB, R_LEAVE, R_HIST, R_PRES, R_DISC, R_UCONN };

/* Connections of one user, kept by the user's owner (a list: the per-user
 * limit is checked once per handshake of an authenticated user). */
struct ucount {
    struct ucount *next;
    uint64_t n;
    size_t len;
    char id[];
};

/* Adds delta to user's count (floored at 0; an entry at 0 is freed);
 * returns the count after, or -1 when out of memory. */
/* -1: out of memory; -2: over `limit` (nothing added, *now the count). */
static int64_t ucount_add(lworker *w, const char *user, size_t len, long delta, uint64_t limit, uint64_t *now)
{
    struct ucount **pp = &w->uc;
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->len == len && memcmp((*pp)->id, user, len) == 0)
            break;
    struct ucount *u = *pp;
    *now = u ? u->n : 0;
    if (delta > 0 && limit && *now + (uint64_t)delta > limit)
        return -2;
    if (!u) {
        if (delta <= 0)
            return 0;
        u = dx__alloc(NULL, sizeof *u + len);
        if (!u)
            return -1;
        u->next = NULL;
        u->n = 0;
        u->len = len;
        memcpy(u->id, user, len);
        *pp = u;
    }
    if (delta < 0 && u->n < (uint64_t)-delta)
        u->n = 0;
    else
        u->n += (uint64_t)delta;
    uint64_t n = u->n;
    if (n == 0) {
        *pp = u->next;
        dx__free(NULL, u);
    }
    return (int64_t)n;
}

/* Copies s (len bytes) to *p with a NUL; returns the copy, advances *p. */
static char *put_str(char **p, const char *s, size_t len)
{
    char *d = *p;
    memcpy(d, s, len);
    d[len] = 0;
    *p += len + 1;
    return d;
}

static req *req_new(unsigned from, int kind, const char *topic, size_t tlen, const char *user,
                    size_t ulen, const char *epoch, size_t elen, const void *data, size_t dlen)
{
    size_t sz = sizeof(req) + tlen + 1 + (user ? ulen + 1 : 0) + (epoch ? elen + 1 : 0) + dlen + 1;
    req *r = dx__alloc(NULL, sz);
    if (!r)
        return NULL;
    memset(r, 0, sizeof *r);
    char *p = (char *)(r + 1);
    r->from = from;
    r->kind = kind;
    r->topic = put_str(&p, topic, tlen);
    r->tlen = tlen;
    r->user = user ? put_str(&p, user, ulen) : NULL;
    r->ulen = user ? ulen : 0;
    r->epoch = epoch ? put_str(&p, epoch, elen) : NULL;
    r->elen = epoch ? elen : 0;
    r->data = (uint8_t *)p;
    if (dlen)
        memcpy(p, data, dlen);
    r->dlen = dlen;
    return r;
}

static void req_free(req *r)
{
    dx__gw_snapshot_deinit(&r->snap);
    dx__bus_topic_unref(r->t);
    if (r->users) {
        for (size_t i = 0; i < r->nusers; i++)
            dx__free(NULL, r->users[i]);
        dx__free(NULL, r->users);
        dx__free(NULL, r->ulens);
    }
    dx__free(NULL, r);
}

/* Calls the request's completion (on the asking worker's thread) and frees it. */
static void complete(req *r)
{
    switch (r->kind) {
    case R_PUB:
        r->fn.pub(r->ud, r->err, r->offset, r->res_epoch);
        break;
    case R_SUB:
    case R_HIST:
        r->fn.snap(r->ud, r->err, r->err ? NULL : r->t, r->err ? NULL : &r->snap);
        break;
    case R_PRES:
        r->fn.pres(r->ud, r->err, r->count, (const char *const *)r->users, r->ulens,
                                     r->nusers);
        break;
    case R_DISC:
        r->fn.count(r->ud, r->err, atomic_load(&r->total));
        break;
    case R_UCONN:
        r->fn.count(r->ud, r->err, r->count);
        break;
    default:
        break;
    }
    req_free(r);
}

static void run_complete(lbus *b, unsigned w, item *it)
{
    (void)b;
    (void)w;
    complete(it->p[0]);
}

static void drop_complete(lbus *b, item *it)
{
    (void)b;
    req *r = it->p[0];
    r->err = DX_ECLOSED;
    complete(r);
}

/* Sends r's completion home: a direct call when home is this worker. */
static void reply(lbus *b, unsigned w, req *r)
{
    if (r->from == w || !r->fn.pub) {
        if (r->fn.pub)
            complete(r);
        else
            req_free(r);
        return;
    }
    item it = {.run = run_complete, .drop = drop_complete, .p = {r, NULL}};
    if (push(b, r->from, &it) != 0) {
        /* Out of memory queueing the answer: kept, and pushed again by this
         * worker's tick (the asker must hear back: its request holds memory). */
        r->retry_next = b->w[w].retry;
        b->w[w].retry = r;
    }
}

static void retry_answers(lworker *w)
{
    struct req *r = w->retry;
    w->retry = NULL;
    while (r) {
        struct req *next = r->retry_next;
        reply(w->b, w->index, r); /* back on the list if it fails again */
        r = next;
    }
}

static void run_deliver(lbus *b, unsigned w, item *it)
{
    lworker *lw = &b->w[w];
    if (lw->ev && lw->ev->deliver)
        lw->ev->deliver(lw->ud, it->p[0], it->p[1]);
    dx__bus_topic_unref(it->p[0]);
    dx__gw_entry_unref(it->p[1]);
}

static void drop_deliver(lbus *b, item *it)
{
    (void)b;
    dx__bus_topic_unref(it->p[0]);
    dx__gw_entry_unref(it->p[1]);
}

static void fan_out(lbus *b, unsigned owner, ltopic *t, dx__gw_entry *e)
{
    for (unsigned i = 0; i < b->o.workers; i++) {
        lworker *lw = &b->w[i];
        if (atomic_load_explicit(&lw->interest, memory_order_acquire) <= 0)
            continue;
        if (i == owner) {
            if (lw->ev && lw->ev->deliver)
                lw->ev->deliver(lw->ud, t->t, e);
            continue;
        }
        item it = {.run = run_deliver, .drop = drop_deliver,
                   .p = {dx__bus_topic_ref(t->t), dx__gw_entry_ref(e)}};
        if (push(b, i, &it) != 0) { /* out of memory: that worker's subscribers miss it, counted */
            dx__bus_topic_unref(t->t);
            dx__gw_entry_unref(e);
            atomic_fetch_add_explicit(&b->w[owner].st_lost, 1, memory_order_relaxed);
            continue;
        }
        atomic_fetch_add_explicit(&b->w[owner].st_handoffs, 1, memory_order_relaxed);
    }
}

static void run_req(lbus *b, unsigned w, item *it)
{
    req *r = it->p[0];
    lworker *lw = &b->w[w];
    ltopic *t = NULL;
    uint64_t now = dx__now_ns(NULL);
    switch (r->kind) {
    case R_PUB: {
        t = topic_get(lw, r->topic, r->tlen);
        if (!t) {
            r->err = DX_ENOMEM;
            break;
        }
        t->active_ns = now;
        size_t bn = dx__gw_log_count(t->log), bb = dx__gw_log_bytes(t->log);
        dx__gw_entry *e = NULL;
        r->err = dx__gw_log_append(t->log, r->mkind, r->data, r->dlen, &e);
        hist_account(lw, t, bn, bb);
        stats_sync(lw);
        if (r->err)
            break;
        r->offset = dx__gw_entry_offset(e);
        memcpy(r->res_epoch, t->t->epoch, sizeof r->res_epoch);
        fan_out(b, w, t, e);
        dx__gw_entry_unref(e);
        break;
    }
    case R_SUB: {
        t = topic_get(lw, r->topic, r->tlen);
        if (!t) {
            r->err = DX_ENOMEM;
            break;
        }
        t->active_ns = now;
        if (r->join && (r->err = presence_add(t, r->user, r->ulen)) != 0)
            break;
        size_t bn = dx__gw_log_count(t->log), bb = dx__gw_log_bytes(t->log);
        if (r->resume) {
            r->err = dx__gw_log_resume(t->log, r->since, r->epoch, &r->snap);
        } else {
            memcpy(r->snap.epoch, t->t->epoch, sizeof r->snap.epoch);
            r->snap.offset = dx__gw_log_offset(t->log);
            r->snap.recovered = false;
        }
        hist_account(lw, t, bn, bb);
        if (r->err) {
            if (r->join)
                presence_remove(t, r->user, r->ulen);
            break;
        }
        r->t = dx__bus_topic_ref(t->t);
        break;
    }
    case R_LEAVE:
        t = topic_find(lw, r->topic, r->tlen, hash_name(r->topic, r->tlen));
        if (t) {
            presence_remove(t, r->user, r->ulen);
            t->active_ns = now;
        }
        break;
    case R_HIST:
        t = topic_find(lw, r->topic, r->tlen, hash_name(r->topic, r->tlen));
        if (t) {
            size_t bn = dx__gw_log_count(t->log), bb = dx__gw_log_bytes(t->log);
            r->err = dx__gw_log_history(t->log, r->since, r->limit, &r->snap);
            hist_account(lw, t, bn, bb);
            if (!r->err)
                r->t = dx__bus_topic_ref(t->t);
        } else {
            r->t = dx__bus_topic_new(r->topic, r->tlen, "");
            if (!r->t)
                r->err = DX_ENOMEM;
        }
        break;
    case R_PRES:
        t = topic_find(lw, r->topic, r->tlen, hash_name(r->topic, r->tlen));
        if (t && t->nusers) {
            r->users = dx__alloc(NULL, t->nusers * sizeof *r->users);
            r->ulens = dx__alloc(NULL, t->nusers * sizeof *r->ulens);
            if (!r->users || !r->ulens) {
                r->err = DX_ENOMEM;
                break;
            }
            for (size_t i = 0; i < t->nusers; i++) {
                r->users[i] = dx__alloc(NULL, t->users[i].len + 1);
                if (!r->users[i]) {
                    r->err = DX_ENOMEM;
                    break;
                }
                memcpy(r->users[i], t->users[i].id, t->users[i].len + 1);
                r->ulens[i] = t->users[i].len;
                r->nusers++;
            }
        }
        r->count = t ? t->present : 0;
        break;
    case R_UCONN: {
        uint64_t cur = 0;
        int64_t n = ucount_add(lw, r->topic, r->tlen, r->delta, r->ulimit, &cur);
        if (n == -2) {
            r->err = DX_ELIMIT;
            r->count = cur;
        } else if (n < 0) {
            r->err = DX_ENOMEM;
        } else {
            r->count = (uint64_t)n;
        }
        break;
    }
    default:
        break;
    }
    reply(b, w, r);
}

static void run_disc(lbus *b, unsigned w, item *it)
{
    req *r = it->p[0];
    lworker *lw = &b->w[w];
    size_t n = lw->ev && lw->ev->disconnect_user ? lw->ev->disconnect_user(lw->ud, r->user, r->ulen) : 0;
    atomic_fetch_add(&r->total, n);
    if (atomic_fetch_sub(&r->remaining, 1) == 1)
        reply(b, w, r);
}

static void drop_disc(lbus *b, item *it)
{
    req *r = it->p[0];
    (void)b;
    if (atomic_fetch_sub(&r->remaining, 1) == 1) {
        r->err = DX_ECLOSED;
        complete(r);
    }
}

static int send_req(lbus *b, req *r)
{
    item it = {.run = run_req, .drop = drop_complete, .p = {r, NULL}};
    int rc = push(b, owner_of(b, r->topic, r->tlen), &it);
    if (rc)
        req_free(r);
    return rc;
}

/* ---- the vtable ----------------------------------------------------------- */

static int l_attach(dx__bus *base, unsigned w, dx_loop *loop, const dx__bus_events *ev, void *ud)
{
    lbus *b = (lbus *)base;
    if (w >= b->o.workers || !loop)
        return DX_EINVAL;
    lworker *lw = &b->w[w];
    lw->tick = dx_timer_new(loop, on_tick, lw);
    if (!lw->tick)
        return DX_ENOMEM;
    pthread_mutex_lock(&lw->mu);
    lw->loop = loop;
    lw->ev = ev;
    lw->ud = ud;
    bool wake = lw->n > 0 && !lw->posted;
    if (wake)
        lw->posted = true;
    pthread_mutex_unlock(&lw->mu);
    dx_timer_start(lw->tick, 1000, 1000);
    if (wake && dx_loop_post(loop, drain, lw) != 0) {
        pthread_mutex_lock(&lw->mu);
        lw->posted = false;
        pthread_mutex_unlock(&lw->mu);
    }
    return 0;
}

static void l_detach(dx__bus *base, unsigned w)
{
    lbus *b = (lbus *)base;
    lworker *lw = &b->w[w];
    if (lw->tick)
        dx_timer_free(lw->tick);
    lw->tick = NULL;
    pthread_mutex_lock(&lw->mu);
    lw->ev = NULL;
    lw->ud = NULL;
    pthread_mutex_unlock(&lw->mu);
}

static int l_publish(dx__bus *base, unsigned w, const char *topic, size_t len, dx__gw_kind kind,
                     const void *data, size_t dlen, dx__bus_pub_fn fn, void *ud)
{
    lbus *b = (lbus *)base;
    req *r = req_new(w, R_PUB, topic, len, NULL, 0, NULL, 0, data, dlen);
    if (!r)
        return DX_ENOMEM;
    r->mkind = kind;
    r->fn.pub = fn;
    r->ud = ud;
    return send_req(b, r);
}

static int l_subscribe(dx__bus *base, unsigned w, const char *topic, size_t len, const char *user,
                       size_t ulen, bool join, bool resume, uint64_t since, const char *epoch,
                       size_t elen, dx__bus_snap_fn fn, void *ud)
{
    lbus *b = (lbus *)base;
    req *r = req_new(w, R_SUB, topic, len, user, ulen, epoch, elen, NULL, 0);
    if (!r)
        return DX_ENOMEM;
    r->join = join;
    r->resume = resume;
    r->since = since;
    r->fn.snap = fn;
    r->ud = ud;
    return send_req(b, r);
}

static void l_leave(dx__bus *base, unsigned w, const char *topic, size_t len, const char *user, size_t ulen)
{
    lbus *b = (lbus *)base;
    req *r = req_new(w, R_LEAVE, topic, len, user, ulen, NULL, 0, NULL, 0);
    if (r)
        (void)send_req(b, r);
}

static int l_history(dx__bus *base, unsigned w, const char *topic, size_t len, uint64_t since, size_t limit,
                     dx__bus_snap_fn fn, void *ud)
{
    lbus *b = (lbus *)base;
    req *r = req_new(w, R_HIST, topic, len, NULL, 0, NULL, 0, NULL, 0);
    if (!r)
        return DX_ENOMEM;
    r->since = since;
    r->limit = limit;
    r->fn.snap = fn;
    r->ud = ud;
    return send_req(b, r);
}

static int l_presence(dx__bus *base, unsigned w, const char *topic, size_t len, dx__bus_presence_fn fn,
                      void *ud)
{
    lbus *b = (lbus *)base;
    req *r = req_new(w, R_PRES, topic, len, NULL, 0, NULL, 0, NULL, 0);
    if (!r)
        return DX_ENOMEM;
    r->fn.pres = fn;
    r->ud = ud;
    return send_req(b, r);
}

static int l_disconnect_user(dx__bus *base, unsigned w, const char *user, size_t ulen, dx__bus_count_fn fn,
                             void *ud)
{
    lbus *b = (lbus *)base;
    req *r = req_new(w, R_DISC, "", 0, user, ulen, NULL, 0, NULL, 0);
    if (!r)
        return DX_ENOMEM;
    r->fn.count = fn;
    r->ud = ud;
    atomic_store(&r->remaining, b->o.workers);
    for (unsigned i = 0; i < b->o.workers; i++) {
        item it = {.run = run_disc, .drop = drop_disc, .p = {r, NULL}};
        if (push(b, i, &it) != 0) {
            /* this worker is counted as having closed none */
            if (atomic_fetch_sub(&r->remaining, 1) == 1)
                reply(b, w, r);
        }
    }
    return 0;
}

static void l_interest(dx__bus *base, unsigned w, long delta)
{
    lbus *b = (lbus *)base;
    atomic_fetch_add_explicit(&b->w[w].interest, delta, memory_order_release);
}

static void l_pattern(dx__bus *base, unsigned w, const char *pat, size_t len, long delta)
{
    /* every worker with interest gets every entry: nothing to route */
    (void)base;
    (void)w;
    (void)pat;
    (void)len;
    (void)delta;
}

static int l_user_conns(dx__bus *base, unsigned w, const char *user, size_t ulen, long delta, uint64_t limit,
                        dx__bus_count_fn fn, void *ud)
{
    lbus *b = (lbus *)base;
    req *r = req_new(w, R_UCONN, user, ulen, NULL, 0, NULL, 0, NULL, 0);
    if (!r)
        return DX_ENOMEM;
    r->delta = delta;
    r->ulimit = limit;
    r->fn.count = fn;
    r->ud = ud;
    return send_req(b, r);
}

static bool l_healthy(dx__bus *base)
{
    (void)base;
    return true;
}

static void l_stats(dx__bus *base, dx__bus_stats *out)
{
    lbus *b = (lbus *)base;
    memset(out, 0, sizeof *out);
    for (unsigned i = 0; i < b->o.workers; i++) {
        out->topics += atomic_load_explicit(&b->w[i].st_topics, memory_order_relaxed);
        out->history_msgs += atomic_load_explicit(&b->w[i].st_msgs, memory_order_relaxed);
        out->history_bytes += atomic_load_explicit(&b->w[i].st_bytes, memory_order_relaxed);
        out->handoffs += atomic_load_explicit(&b->w[i].st_handoffs, memory_order_relaxed);
        out->lost += atomic_load_explicit(&b->w[i].st_lost, memory_order_relaxed);
    }
}

/* Every worker loop has stopped (no thread runs a queue): pending items
 * are dropped (completions with DX_ECLOSED), then the topics freed. */
static void l_free(dx__bus *base)
{
    lbus *b = (lbus *)base;
    for (unsigned i = 0; i < b->o.workers; i++) {
        lworker *lw = &b->w[i];
        if (lw->tick)
            dx_timer_free(lw->tick);
        for (;;) {
            pthread_mutex_lock(&lw->mu);
            item *q = lw->q;
            size_t n = lw->n;
            lw->q = NULL;
            lw->n = lw->cap = 0;
            pthread_mutex_unlock(&lw->mu);
            if (!q)
                break;
            for (size_t k = 0; k < n; k++)
                q[k].drop(b, &q[k]);
            dx__free(NULL, q);
        }
        dx__free(NULL, lw->spare);
        for (struct req *r = lw->retry, *next; r; r = next) {
            next = r->retry_next;
            r->err = DX_ECLOSED;
            complete(r);
        }
        for (size_t k = 0; k < lw->tab_cap; k++) {
            for (ltopic *t = lw->tab[k], *nx; t; t = nx) {
                nx = t->next;
                topic_free(t);
            }
        }
        dx__free(NULL, lw->tab);
        for (struct ucount *u = lw->uc, *nx; u; u = nx) {
            nx = u->next;
            dx__free(NULL, u);
        }
        pthread_mutex_destroy(&lw->mu);
    }
    dx__free(NULL, b->w);
    dx__free(NULL, b);
}

static const dx__bus_vt local_vt = {
    .attach = l_attach,
    .detach = l_detach,
    .publish = l_publish,
    .subscribe = l_subscribe,
    .leave = l_leave,
    .history = l_history,
    .presence = l_presence,
    .disconnect_user = l_disconnect_user,
    .interest = l_interest,
    .pattern = l_pattern,
    .user_conns = l_user_conns,
    .healthy = l_healthy,
    .stats = l_stats,
    .free = l_free,
};

dx__bus *dx__bus_local_new(const dx__bus_local_opts *o, int *err)
{
    int e = DX_EINVAL;
    if (!o || o->workers == 0 || o->workers > 1024)
        goto fail;
    e = DX_ENOMEM;
    lbus *b = dx__alloc(NULL, sizeof *b);
    if (!b)
        goto fail;
    memset(b, 0, sizeof *b);
    b->base.vt = &local_vt;
    b->o = *o;
    b->w = dx__alloc(NULL, o->workers * sizeof *b->w);
    if (!b->w) {
        dx__free(NULL, b);
        goto fail;
    }
    memset(b->w, 0, o->workers * sizeof *b->w);
    for (unsigned i = 0; i < o->workers; i++) {
        b->w[i].b = b;
        b->w[i].index = i;
        pthread_mutex_init(&b->w[i].mu, NULL);
    }
    return &b->base;
fail:
    if (err)
        *err = e;
    return NULL;
}
