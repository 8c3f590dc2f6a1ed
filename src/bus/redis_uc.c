/*
 * src/bus/redis_uc.c: connections per user, cluster-wide (bus.h
 * dx__bus_user_conns; docs/gateway.md "The Redis bus", "Limits").
 *
 * In Redis, dx:uc:{U} holds one count per worker ("<node>.<worker>"), and
 * the script (redis_lua.c DX__REDIS_LUA_UC) sums only the workers whose
 * dx:alive:<member> key still exists: a node that died stops counting
 * within the presence TTL. A +1 with a limit is checked and added in the
 * same script call, so two nodes racing for the last slot cannot both get
 * it.
 *
 * Each worker also keeps, per user, how many of its connections it counted
 * (`n`): the truth Redis must hold for it. Redis can lose it (restarted
 * without its data, or this worker's alive key expired while it was cut
 * off and another node dropped its counts), and an answer can be lost with
 * its connection (was the +1 or -1 applied?). So a user whose state in
 * Redis is uncertain is marked dirty, and the worker's tick re-states it
 * (mode s: set this member's count to n) once no command of that user is
 * out (one out could be applied after the re-statement and change it).
 * Every user is marked dirty whenever the command connection comes up.
 * An entry goes once n is 0, nothing is out and Redis confirmed it.
 */
#define _GNU_SOURCE
#include "bus/redis_int.h"

#include <string.h>

struct ruc {
    struct ruc *next;
    uint64_t hash;
    uint64_t n;       /* this worker's connections of the user, counted */
    unsigned out;     /* commands out for it */
    bool dirty;       /* Redis may not hold n: re-state it */
    size_t len;
    char id[];
};

typedef struct ucreq {
    rworker *w;
    struct ruc *e;
    long delta;
    bool set;         /* a re-statement (mode s) */
    dx__bus_count_fn fn;
    void *ud;
} ucreq;

static struct ruc *uc_find(rworker *w, const char *user, size_t len, uint64_t h)
{
    if (!w->uc_cap)
        return NULL;
    for (struct ruc *e = w->uc[h & (w->uc_cap - 1)]; e; e = e->next)
        if (e->hash == h && e->len == len && memcmp(e->id, user, len) == 0)
            return e;
    return NULL;
}

static struct ruc *uc_get(rworker *w, const char *user, size_t len)
{
    uint64_t h = hash_name(user, len);
    struct ruc *e = uc_find(w, user, len, h);
    if (e)
        return e;
    if (w->nuc + 1 > w->uc_cap / 2) {
        size_t cap = w->uc_cap ? w->uc_cap * 2 : 64;
        struct ruc **tab = dx__alloc(NULL, cap * sizeof *tab);
        if (!tab)
            return NULL;
        memset(tab, 0, cap * sizeof *tab);
        for (size_t i = 0; i < w->uc_cap; i++)
            for (struct ruc *x = w->uc[i], *nx; x; x = nx) {
                nx = x->next;
                x->next = tab[x->hash & (cap - 1)];
                tab[x->hash & (cap - 1)] = x;
            }
        dx__free(NULL, w->uc);
        w->uc = tab;
        w->uc_cap = cap;
    }
    e = dx__alloc(NULL, sizeof *e + len);
    if (!e)
        return NULL;
    memset(e, 0, sizeof *e);
    e->hash = h;
    e->len = len;
    memcpy(e->id, user, len);
    e->next = w->uc[h & (w->uc_cap - 1)];
    w->uc[h & (w->uc_cap - 1)] = e;
    w->nuc++;
    return e;
}

/* Frees e once Redis holds 0 for it and nothing is out. */
static void uc_maybe_drop(rworker *w, struct ruc *e)
{
    if (e->n || e->out || e->dirty)
        return;
    for (struct ruc **pp = &w->uc[e->hash & (w->uc_cap - 1)]; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            w->nuc--;
            dx__free(NULL, e);
            return;
        }
}

static void uc_mark(rworker *w, struct ruc *e)
{
    e->dirty = true;
    w->uc_dirty = true;
}

static void on_uc_reply(dx__rio *io, void *reply, void *pd)
{
    (void)io;
    ucreq *r = pd;
    rworker *w = r->w;
    if (w->freeing) { /* dx__bus_free: completions are not called */
        dx__free(NULL, r);
        return;
    }
    redisReply *rep = reply;
    struct ruc *e = r->e;
    e->out--;
    int err = DX_EIO;
    uint64_t count = 0;
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 && rep->element[0]->type == REDIS_REPLY_INTEGER &&
        rep->element[1]->type == REDIS_REPLY_INTEGER) {
        bool admitted = rep->element[0]->integer == 1;
        count = rep->element[1]->integer < 0 ? 0 : (uint64_t)rep->element[1]->integer;
        err = admitted ? 0 : DX_ELIMIT;
        if (admitted && !r->set && r->delta > 0)
            e->n += (uint64_t)r->delta;
    } else {
        if (rep && rep->type == REDIS_REPLY_ERROR)
            dx__rb_log(w->b, DX_LOG_WARN, "redis bus: worker %u: user count script failed: %s", w->index, rep->str);
        uc_mark(w, e); /* applied or not: re-stated once the connection is back */
    }
    dx__bus_count_fn fn = r->fn;
    void *ud = r->ud;
    dx__free(NULL, r);
    uc_maybe_drop(w, e);
    if (fn)
        fn(ud, err, count);
}

/* Sends the script for e: mode s (value e->n) or d (value delta). */
static int uc_send(rworker *w, struct ruc *e, bool set, long delta, uint64_t limit, dx__bus_count_fn fn, void *ud)
{
    rbus *b = w->b;
    ucreq *r = dx__alloc(NULL, sizeof *r);
    char *key = dx__alloc(NULL, e->len + 16);
    if (!r || !key) {
        dx__free(NULL, r);
        dx__free(NULL, key);
        return DX_ENOMEM;
    }
    *r = (ucreq){.w = w, .e = e, .delta = delta, .set = set, .fn = fn, .ud = ud};
    int kn = snprintf(key, 16, "dx:uc:{");
    memcpy(key + kn, e->id, e->len);
    key[kn + (int)e->len] = '}';
    char v[24], lim[24], ttl[24];
    if (set)
        snprintf(v, sizeof v, "%llu", (unsigned long long)e->n);
    else
        snprintf(v, sizeof v, "%ld", delta);
    snprintf(lim, sizeof lim, "%llu", (unsigned long long)limit);
    snprintf(ttl, sizeof ttl, "%u", b->o.presence_ttl_ms);
    /* the user's server (redis_shard.c); in a Redis Cluster no liveness
     * check (the alive keys are in other slots) */
    rshard *s = dx__rb_shard_of(w, e->id, e->len);
    const char *alive = b->o.cluster ? "" : "dx:alive:";
    const char *argv[] = {"EVALSHA", b->sha[DX__REDIS_LUA_UC], "1", key, w->member, set ? "s" : "d", v, lim,
                          alive, ttl};
    size_t lens[] = {7, 40, 1, (size_t)kn + e->len + 1, strlen(w->member), 1, strlen(v), strlen(lim), strlen(alive),
                     strlen(ttl)};
    int rc = s->stuck ? DX_EIO : dx__rb_cmd_argv(&s->cmd, on_uc_reply, r, 10, argv, lens);
    dx__free(NULL, key);
    if (rc) {
        dx__free(NULL, r);
        return rc;
    }
    e->out++;
    return 0;
}

int dx__rb_user_conns(dx__bus *base, unsigned wi, const char *user, size_t ulen, long delta, uint64_t limit,
                      dx__bus_count_fn fn, void *ud)
{
    rbus *b = (rbus *)base;
    rworker *w = &b->w[wi];
    if (ulen == 0 || ulen > 1024)
        return DX_EINVAL;
    rshard *s = dx__rb_shard_of(w, user, ulen);
    if (delta > 0 && (!s->cmd.up || s->stuck)) {
        atomic_fetch_add_explicit(&b->st_refused, 1, memory_order_relaxed);
        return DX_EIO;
    }
    struct ruc *e = uc_get(w, user, ulen);
    if (!e)
        return DX_ENOMEM;
    if (e->dirty && !e->out && uc_send(w, e, true, 0, 0, NULL, NULL) == 0)
        e->dirty = false; /* re-stated first (the tick may not have come yet): the check below counts right */
    if (delta < 0) /* the connection is gone whatever Redis answers */
        e->n = e->n < (uint64_t)-delta ? 0 : e->n - (uint64_t)-delta;
    int rc = uc_send(w, e, false, delta, delta > 0 ? limit : 0, fn, ud);
    if (rc) {
        if (delta < 0)
            uc_mark(w, e); /* taken back here all the same; Redis is told once back (re-stated) */
        else
            uc_maybe_drop(w, e);
        atomic_fetch_add_explicit(&b->st_refused, 1, memory_order_relaxed);
        return rc;
    }
    return 0;
}

void dx__rb_uc_all_dirty(rworker *w)
{
    for (size_t i = 0; i < w->uc_cap; i++)
        for (struct ruc *e = w->uc[i]; e; e = e->next)
            uc_mark(w, e);
}

void dx__rb_uc_sync(rworker *w)
{
    w->uc_dirty = false;
    for (size_t i = 0; i < w->uc_cap; i++) {
        for (struct ruc *e = w->uc[i]; e; e = e->next) {
            if (!e->dirty)
                continue;
            if (e->out || uc_send(w, e, true, 0, 0, NULL, NULL) != 0) {
                w->uc_dirty = true; /* the next tick */
                continue;
            }
            e->dirty = false;
        }
    }
}

void dx__rb_uc_free(rworker *w)
{
    for (size_t i = 0; i < w->uc_cap; i++)
        for (struct ruc *e = w->uc[i], *nx; e; e = nx) {
            nx = e->next;
            dx__free(NULL, e);
        }
    dx__free(NULL, w->uc);
    w->uc = NULL;
    w->uc_cap = w->nuc = 0;
}
