/*
 * src/bus/redis.c: the Redis bus (redis.h, bus.h). docs/gateway.md "The
 * Redis bus" is the reference for the keys, scripts and faults; in short:
 *
 * Keys per topic T (the {T} hash tag keeps them in one slot):
 *   dx:{T}:o   current offset (string integer)
 *   dx:{T}:e   epoch (16 hex digits); replaced, with the stream deleted,
 *              whenever dx:{T}:o is found missing (continuity lost)
 *   dx:{T}:s   history: a stream, ids by Redis time (so MINID trims by age),
 *              fields o (offset), k (kind), t (ms), d (payload); MAXLEN = count
 *   dx:{T}:p / dx:{T}:pz   presence: hash member → "count len:user...",
 *              zset member → expiry (ms); member = "<node>.<worker>"
 *   channel dx:m:T  live entries: "<offset> <kind> <ms> <epoch>\n<payload>"
 *   channel dx:ctl  control: "d <tag> <user>" (disconnect), "r <tag> <n>"
 *   dx:uc:{U}  connections of user U: hash member → count (redis_uc.c)
 *   dx:alive:<member>  a worker's liveness (PX presence_ttl)
 *
 * One EVALSHA per publish (PUB below): sequences, appends, trims, publishes,
 * answers {offset, epoch}. Subscribe and history are one EVALSHA each (READ).
 *
 * Threading: each worker has its own two connections (commands, pub/sub),
 * its own topic table and its own requests, all on its loop thread. Only
 * the counters and the health flags are shared (atomics).
 *
 * Fan-out: each worker wants the exact topics its connections hold (on the
 * first, given up in a batch a tick after the last leaves) and its patterns
 * (`*` and `>` segments both become Redis's `*`, a superset; the gateway's
 * own index matches exactly); the channel's owner worker holds the node's
 * one SUBSCRIBE (PSUBSCRIBE) on each server and forwards what Redis sends
 * (redis_relay.c; in cluster mode topics only: SSUBSCRIBE). A worker delivers
 * each offset of a topic once (exact and pattern subscriptions may both
 * bring it) and in order; a hole (lost pub/sub connection, a skipped
 * offset) is filled from the stream through a stitcher before later live
 * entries go on.
 *
 * Subscribe with resume: SUBSCRIBE, then, once Redis confirmed it, READ on
 * the command connection: every entry sequenced after the read arrives live
 * (bus.h's ordering contract).
 */
#define _GNU_SOURCE
#include "bus/redis_int.h"
#include "core/buf.h"

#include <openssl/sha.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void dx__rb_log(rbus *b, int level, const char *fmt, ...)
{
    if (!b->o.log)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    b->o.log(b->o.log_ud, level, line);
}

void dx__rb_worker_flush(rworker *w)
{
    if (w->need_flush && !w->freeing) {
        w->need_flush = false;
        if (w->ev && w->ev->flush)
            w->ev->flush(w->ud);
    }
}

/* After each event on a connection: what the batch gathered may be written. */
void dx__rb_after_event(void *ud)
{
    dx__rb_worker_flush(ud);
}

/* ---- topics ---------------------------------------------------------------- */

rtopic *dx__rb_topic_find(rworker *w, const char *name, size_t len)
{
    if (!w->tab_cap)
        return NULL;
    uint64_t h = hash_name(name, len);
    for (rtopic *t = w->tab[h & (w->tab_cap - 1)]; t; t = t->next)
        if (t->hash == h && t->bt->len == len && memcmp(t->bt->name, name, len) == 0)
            return t;
    return NULL;
}

static rtopic *topic_get(rworker *w, const char *name, size_t len)
{
    rtopic *t = dx__rb_topic_find(w, name, len);
    if (t)
        return t;
    if (w->ntopics + 1 > w->tab_cap / 2) {
        size_t cap = w->tab_cap ? w->tab_cap * 2 : 64;
        rtopic **tab = dx__alloc(NULL, cap * sizeof *tab);
        if (!tab)
            return NULL;
        memset(tab, 0, cap * sizeof *tab);
        for (size_t i = 0; i < w->tab_cap; i++) {
            for (rtopic *x = w->tab[i], *nx; x; x = nx) {
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
    t->bt = dx__bus_topic_new(name, len, "");
    if (!t->bt) {
        dx__free(NULL, t);
        return NULL;
    }
    t->waiting_tail = &t->waiting;
    t->w = w;
    t->s = dx__rb_shard_of(w, name, len);
    t->hash = hash_name(name, len);
    t->next = w->tab[t->hash & (w->tab_cap - 1)];
    w->tab[t->hash & (w->tab_cap - 1)] = t;
    w->ntopics++;
    atomic_store_explicit(&w->st_topics, w->ntopics, memory_order_relaxed);
    t->touched_ns = dx__now_ns(NULL);
    return t;
}

void dx__rb_topic_free(rtopic *t)
{
    if (t->catching)
        dx__gw_stitch_deinit(&t->st);
    dx__bus_topic_unref(t->bt);
    for (size_t i = 0; i < t->nusers; i++)
        dx__free(NULL, t->users[i].id);
    dx__free(NULL, t->users);
    dx__free(NULL, t);
}

/* The record's epoch becomes `epoch`: a new topic object; what was
 * delivered under the old one no longer orders anything (a catch-up of
 * the old epoch is dropped). */
static int topic_epoch(rtopic *t, const char *epoch)
{
    if (strcmp(t->bt->epoch, epoch) == 0)
        return 0;
    dx__bus_topic *nt = dx__bus_topic_new(t->bt->name, t->bt->len, epoch);
    if (!nt)
        return DX_ENOMEM;
    bool had = t->bt->epoch[0] != 0, ordered = t->have_last;
    dx__bus_topic_unref(t->bt);
    t->bt = nt;
    if (had) {
        t->have_last = false;
        t->need_catch = false;
        dx__rb_catch_stop(t); /* its answer finds catching false and only frees */
        if (ordered) {
            /* the worker was delivering t: the new epoch is delivered from
             * its offset 1 (read back, or announced as a gap), so nothing
             * of it is lost silently; the old epoch's tail went with
             * Redis's data (the new epoch on the next entry says so) */
            atomic_fetch_add_explicit(&t->w->b->st_epochs, 1, memory_order_relaxed);
            dx__rb_log(t->w->b, DX_LOG_WARN, "redis bus: topic %s: new epoch %s (continuity lost in Redis)",
                       t->bt->name, epoch);
            t->have_last = true;
            t->last = 0;
        }
    }
    return 0;
}

static int presence_add(rworker *w, rtopic *t, const char *user, size_t ulen)
{
    if (user) {
        size_t i = 0;
        while (i < t->nusers && !(t->users[i].len == ulen && memcmp(t->users[i].id, user, ulen) == 0))
            i++;
        if (i == t->nusers) {
            if (t->nusers == t->capusers) {
                size_t cap = t->capusers ? t->capusers * 2 : 4;
                ruser *u = dx__realloc(NULL, t->users, cap * sizeof *u);
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
            t->users[t->nusers++] = (ruser){id, ulen, 0};
        }
        t->users[i].n++;
    }
    t->present++;
    t->pres_dirty = true;
    w->pres_any_dirty = true;
    return 0;
}

static void presence_remove(rworker *w, rtopic *t, const char *user, size_t ulen)
{
    if (t->present)
        t->present--;
    if (user) {
        for (size_t i = 0; i < t->nusers; i++) {
            if (t->users[i].len == ulen && memcmp(t->users[i].id, user, ulen) == 0) {
                if (--t->users[i].n == 0) {
                    dx__free(NULL, t->users[i].id);
                    t->users[i] = t->users[--t->nusers];
                }
                break;
            }
        }
    }
    t->pres_dirty = true;
    w->pres_any_dirty = true;
}

/* ---- commands --------------------------------------------------------------- */

typedef struct keys3 {
    char k[3][DX__GW_TOPIC_MAX + 16];
    size_t n[3];
} keys3;

static void topic_keys(keys3 *k, const char *topic, size_t len, const char *a, const char *b2, const char *c)
{
    const char *suf[3] = {a, b2, c};
    for (int i = 0; i < 3; i++)
        k->n[i] = (size_t)snprintf(k->k[i], sizeof k->k[i], "dx:{%.*s}:%s", (int)len, topic, suf[i]);
}

int dx__rb_cmd_argv(rconn *c, dx__rio_fn *fn, void *pd, int argc, const char **argv, const size_t *lens)
{
    if (!c->io || !c->up)
        return DX_EIO;
    if (c->w->slots && argc >= 4 && lens[0] == 7 && memcmp(argv[0], "EVALSHA", 7) == 0)
        return dx__rb_cmd_routed(c, fn, pd, argc, argv, lens); /* cluster: follows MOVED and ASK */
    return dx__rio_argv(c->io, fn, pd, argc, argv, lens) == 0 ? 0 : DX_EIO;
}

rreq *dx__rb_req_new(rworker *w, int kind, const char *topic, size_t tlen, const char *user, size_t ulen)
{
    rreq *r = dx__alloc(NULL, sizeof *r + tlen + 1 + (user ? ulen + 1 : 0));
    if (!r)
        return NULL;
    memset(r, 0, sizeof *r);
    r->w = w;
    r->kind = kind;
    r->tlen = tlen;
    memcpy(r->topic, topic, tlen);
    r->topic[tlen] = 0;
    if (user) {
        r->user = r->topic + tlen + 1;
        memcpy(r->user, user, ulen);
        r->user[ulen] = 0;
        r->ulen = ulen;
    }
    r->expected = -1;
    return r;
}

uint64_t dx__rb_parse_u64(const char *s, size_t n, bool *ok)
{
    uint64_t v = 0;
    if (n == 0 || n > 19)
        *ok = false;
    for (size_t i = 0; i < n && *ok; i++) {
        if (s[i] < '0' || s[i] > '9')
            *ok = false;
        else
            v = v * 10 + (uint64_t)(s[i] - '0');
    }
    return v;
}

static dx__gw_kind kind_of(const char *s, size_t n)
{
    if (n == 1 && s[0] >= '1' && s[0] <= '3')
        return (dx__gw_kind)(s[0] - '0');
    return (dx__gw_kind)0;
}

/* ---- READ: snapshots ------------------------------------------------------------ */

static int read_issue(rreq *r, char mode);

/* Builds a snapshot from READ's reply. 0, DX_EIO (malformed), DX_ENOMEM. */
static int snap_from_reply(redisReply *rep, dx__gw_snapshot *s)
{
    memset(s, 0, sizeof *s);
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 || (rep->elements - 3) % 4 != 0 ||
        rep->element[0]->type != REDIS_REPLY_INTEGER || rep->element[1]->type != REDIS_REPLY_STRING ||
        rep->element[2]->type != REDIS_REPLY_INTEGER || rep->element[1]->len > DX__GW_EPOCH_LEN)
        return DX_EIO;
    s->offset = (uint64_t)rep->element[0]->integer;
    memcpy(s->epoch, rep->element[1]->str, rep->element[1]->len);
    s->epoch[rep->element[1]->len] = 0;
    s->recovered = rep->element[2]->integer != 0;
    size_t n = (rep->elements - 3) / 4;
    if (!n)
        return 0;
    s->entries = dx__alloc(NULL, n * sizeof *s->entries);
    if (!s->entries)
        return DX_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        redisReply **f = rep->element + 3 + 4 * i;
        bool ok = true;
        for (int j = 0; j < 4; j++)
            if (f[j]->type != REDIS_REPLY_STRING)
                ok = false;
        uint64_t off = ok ? dx__rb_parse_u64(f[0]->str, f[0]->len, &ok) : 0;
        uint64_t ms = ok ? dx__rb_parse_u64(f[2]->str, f[2]->len, &ok) : 0;
        dx__gw_kind k = ok ? kind_of(f[1]->str, f[1]->len) : (dx__gw_kind)0;
        dx__gw_entry *e = ok && k ? dx__gw_entry_new(NULL, k, f[3]->str, f[3]->len, off, ms * 1000000u) : NULL;
        if (!e) {
            if (s->n == 0) {
                dx__free(NULL, s->entries);
                s->entries = NULL;
            }
            dx__gw_snapshot_deinit(s);
            return ok && k ? DX_ENOMEM : DX_EIO;
        }
        s->entries[s->n++] = e;
    }
    return 0;
}

static void deliver_entry(rworker *w, rtopic *t, dx__gw_entry *e)
{
    uint64_t off = dx__gw_entry_offset(e);
    if (t->have_last && off <= t->last)
        return;
    t->last = off;
    t->have_last = true;
    if (w->ev && w->ev->deliver && !w->freeing) {
        w->ev->deliver(w->ud, t->bt, e);
        w->need_flush = true;
    }
}

static void catch_deliver(void *ud, dx__gw_entry *e)
{
    rtopic *t = ud;
    atomic_fetch_add_explicit(&t->w->b->st_recovered, 1, memory_order_relaxed);
    deliver_entry(t->w, t, e);
}

/* Offsets from..to of t will not be delivered here: logged, counted, and
 * last moves past them. */
static void catch_gap(void *ud, uint64_t from, uint64_t to)
{
    rtopic *t = ud;
    rworker *w = t->w;
    atomic_fetch_add_explicit(&w->b->st_lost, to - from + 1, memory_order_relaxed);
    dx__rb_log(w->b, DX_LOG_WARN, "redis bus: topic %s: offsets %llu-%llu are no longer in history: lost here",
               t->bt->name, (unsigned long long)from, (unsigned long long)to);
    t->last = to;
    if (w->ev && w->ev->gap && !w->freeing) { /* the subscribers here are told (gap), in order */
        w->ev->gap(w->ud, t->bt, from, to);
        w->need_flush = true;
    }
}

static const dx__gw_stitch_ops catch_ops = {catch_deliver, catch_gap};

static void catch_end(rtopic *t)
{
    if (!t->catching)
        return;
    dx__gw_stitch_deinit(&t->st);
    t->catching = false;
    t->catch_out = false;
    t->catch_seen = 0;
}

/* The subscribe reads that waited for t's catch-up are answered: every
 * entry the catch-up delivered reached the gateway before their snapshot
 * (its stitcher drops those the snapshot covers). */
static void catch_release(rtopic *t)
{
    while (t->deferred) {
        rreq *r = t->deferred;
        t->deferred = r->next;
        r->next = NULL;
        dx__rb_read_answer(r, r->rc, &r->snap);
    }
}

void dx__rb_catch_stop(rtopic *t)
{
    catch_end(t);
    catch_release(t);
}

/* Is every pattern w holds confirmed on server s (the relay: each
 * pattern's owner confirms on its own, once its own connection is up)? */
static bool pats_active(rworker *w, const rshard *s)
{
    for (rpat *p = w->pats; p && !w->b->o.cluster; p = p->next)
        if (p->refs > 0 && p->state[s->index] != S_ACTIVE)
            return false;
    return true;
}

/* May t's catch-up read go out now? Only while its live entries are
 * received (every entry sequenced after the read then arrives live): its
 * exact subscription confirmed, or, pattern-only, the pub/sub connection up
 * and every pattern confirmed there (any may be the one that brings t). */
static bool catch_ready(rworker *w, rtopic *t)
{
    rshard *s = t->s;
    return s->cmd.up && !s->stuck &&
           (t->state == S_ACTIVE || (t->state == S_NONE && t->refs <= 0 && s->sub.up && pats_active(w, s)));
}

/* Sends t's catch-up read (after last); on failure it stays due. */
static void catch_issue(rworker *w, rtopic *t)
{
    rreq *r = dx__rb_req_new(w, Q_CATCH, t->bt->name, t->bt->len, NULL, 0);
    if (!r) {
        w->catch_due = true;
        return;
    }
    r->t = t;
    r->id = ++t->catch_gen;
    r->resume = true;
    r->has_epoch = true;
    r->since = t->last;
    r->limit = w->b->o.history.max_count; /* all the stream holds after last */
    snprintf(r->epoch, sizeof r->epoch, "%s", t->bt->epoch);
    t->busy++;
    if (read_issue(r, 'h') != 0) {
        t->busy--;
        dx__free(NULL, r);
        w->catch_due = true;
        return;
    }
    t->catch_out = true;
}

void dx__rb_catch_start(rworker *w, rtopic *t)
{
    if (t->catching && t->catch_out)
        return; /* a need_catch set meanwhile starts another once this one answered */
    t->need_catch = false;
    if (!t->have_last || !w->b->o.history.max_count)
        return; /* nothing ordered here, or no history to read back (live_message reports holes) */
    if (!t->catching) {
        t->catching = true;
        t->catch_out = false;
        t->catch_seen = 0;
        dx__gw_stitch_init(&t->st, NULL, &catch_ops, t);
    }
    if (catch_ready(w, t))
        catch_issue(w, t);
    else
        w->catch_due = true;
}

/* A live entry of t while it catches up: held, or past the bound (the
 * history's count: a read never brings more) noted to be read back. */
static void catch_hold(rtopic *t, dx__gw_entry *e, uint64_t off)
{
    if (t->st.nheld < t->w->b->o.history.max_count && dx__gw_stitch_live(&t->st, e) == 0)
        return;
    if (off > t->catch_seen)
        t->catch_seen = off;
}

/* Delivers e of t in order: dropped if already delivered; a hole before it
 * reported (catch_gap) first. */
static void catch_pass(rtopic *t, dx__gw_entry *e, bool read_back)
{
    uint64_t off = dx__gw_entry_offset(e);
    if (t->have_last && off <= t->last)
        return;
    if (t->have_last && off > t->last + 1)
        catch_gap(t, t->last + 1, off - 1);
    if (read_back)
        atomic_fetch_add_explicit(&t->w->b->st_recovered, 1, memory_order_relaxed);
    deliver_entry(t->w, t, e);
}

/* The catch-up read answered (rep NULL: its connection went). The read
 * (history mode) brings what the stream still has after last, up to the
 * offset `upto` current at the read; the held live entries were sequenced
 * before or after it. Both go on merged in offset order, each hole
 * reported; what neither has up to `upto` is gone (reported); then the
 * held entries above it. */
static void catch_done(rreq *r, redisReply *rep)
{
    rtopic *t = r->t;
    rworker *w = r->w;
    t->busy--;
    if (!w->freeing && t->catching && r->id == t->catch_gen) {
        t->catch_out = false;
        if (!rep) { /* read again once the command connection is back, still holding */
            w->catch_due = true;
            dx__free(NULL, r);
            return;
        }
        dx__gw_snapshot s;
        int rc = snap_from_reply(rep, &s);
        if (rc && rep->type == REDIS_REPLY_ERROR)
            dx__rb_log(w->b, DX_LOG_WARN, "redis bus: catch-up read of %s failed: %s", t->bt->name, rep->str);
        if (!rc && strcmp(s.epoch, t->bt->epoch) != 0) {
            /* Redis lost the topic's data while we were away: the new
             * epoch is read from its start (topic_epoch ends this catch-up) */
            char ep[DX__GW_EPOCH_LEN + 1];
            snprintf(ep, sizeof ep, "%s", s.epoch);
            dx__gw_snapshot_deinit(&s);
            dx__free(NULL, r);
            if (topic_epoch(t, ep) == 0 && t->have_last)
                dx__rb_catch_start(w, t);
            return;
        }
        if (rc)
            memset(&s, 0, sizeof s);
        uint64_t upto = rc ? 0 : s.offset;
        /* the read brings at most `limit` entries (the oldest after last):
         * the rest is read next, the live entries above it stay held */
        bool more = !rc && s.n && s.n >= r->limit && dx__gw_entry_offset(s.entries[s.n - 1]) < upto;
        if (more)
            upto = dx__gw_entry_offset(s.entries[s.n - 1]);
        dx__gw_entry **held = t->st.held;
        size_t nheld = t->st.nheld, i = 0, j = 0;
        while (i < s.n || (j < nheld && dx__gw_entry_offset(held[j]) <= upto)) {
            if (j >= nheld || (i < s.n && dx__gw_entry_offset(s.entries[i]) <= dx__gw_entry_offset(held[j])))
                catch_pass(t, s.entries[i++], true);
            else
                catch_pass(t, held[j++], false);
        }
        dx__gw_snapshot_deinit(&s);
        if (more) {
            for (size_t k = 0; k < j; k++)
                dx__gw_entry_unref(held[k]);
            if (nheld > j)
                memmove(held, held + j, (nheld - j) * sizeof *held);
            t->st.nheld = nheld - j;
            dx__free(NULL, r);
            dx__rb_catch_start(w, t);
            return;
        }
        if (!rc && t->have_last && t->last < upto)
            catch_gap(t, t->last + 1, upto);
        while (j < nheld)
            catch_pass(t, held[j++], false);
        bool again = t->need_catch || (t->have_last && t->catch_seen > t->last);
        catch_end(t);
        /* live entries past the bound (not held), or the subscription
         * lost while the read was out: read again from the new last */
        if (again)
            dx__rb_catch_start(w, t);
        if (!t->catching)
            catch_release(t);
    }
    dx__free(NULL, r);
}

static void sub_fail(rreq *r, int err);

/* Answers read r from its snapshot s (taken over), or with err. */
void dx__rb_read_answer(rreq *r, int err, dx__gw_snapshot *s)
{
    rworker *w = r->w;
    if (w->freeing) {
        if (!err)
            dx__gw_snapshot_deinit(s);
        if (r->t)
            r->t->busy--;
        dx__free(NULL, r);
        return;
    }
    dx__bus_topic *bt = NULL;
    if (!err) {
        if (r->t) {
            rtopic *t = r->t;
            if (!t->bt->epoch[0])
                (void)topic_epoch(t, s->epoch);
            if (strcmp(t->bt->epoch, s->epoch) == 0)
                bt = dx__bus_topic_ref(t->bt);
        }
        if (!bt)
            bt = dx__bus_topic_new(r->topic, r->tlen, s->epoch);
        if (!bt) {
            dx__gw_snapshot_deinit(s);
            err = DX_ENOMEM;
        }
    }
    if (err) {
        if (r->kind == Q_SUB) {
            sub_fail(r, err);
            return;
        }
        r->fn.snap(r->ud, err, NULL, NULL);
        dx__free(NULL, r);
        return;
    }
    if (r->t)
        r->t->busy--;
    r->fn.snap(r->ud, 0, bt, s);
    dx__bus_topic_unref(bt);
    dx__gw_snapshot_deinit(s);
    dx__free(NULL, r);
}

/* A subscribe's read has its answer and its barrier (or failed): out of
 * the worker's barrier list, answered. */
static void sub_finish(rreq *r)
{
    rworker *w = r->w;
    for (rreq **pp = &r->s->barriers; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    r->next = NULL;
    rtopic *t = r->t;
    if (t && t->catching && !r->rc && !w->freeing) {
        /* t catches up: entries older than this snapshot are still to be
         * delivered here; answered after them (catch_release), or the
         * gateway would pass them to this subscriber past its snapshot */
        rreq **pp = &t->deferred;
        while (*pp)
            pp = &(*pp)->next;
        *pp = r;
        return;
    }
    dx__rb_read_answer(r, r->rc, &r->snap);
}

static void req_done_read(rreq *r, redisReply *rep)
{
    rworker *w = r->w;
    if (r->kind == Q_CATCH) {
        catch_done(r, rep);
        return;
    }
    dx__gw_snapshot s;
    int rc = DX_EIO;
    if (rep && rep->type == REDIS_REPLY_ERROR && !w->freeing)
        dx__rb_log(w->b, DX_LOG_WARN, "redis bus: read of %s failed: %s", r->topic, rep->str);
    else if (rep)
        rc = snap_from_reply(rep, &s);
    if (r->kind == Q_SUB) {
        if (!rc && r->lost_barrier) { /* the pub/sub connection was lost meanwhile */
            dx__gw_snapshot_deinit(&s);
            rc = DX_EIO;
        }
        r->have_reply = true;
        r->rc = rc;
        if (!rc)
            r->snap = s;
        /* wait for the barrier, unless the read failed (no barrier then) */
        if (rc || r->have_barrier || w->freeing)
            sub_finish(r);
        return;
    }
    dx__rb_read_answer(r, rc, &s);
}

/* The barrier `token` of a subscribe's read reached this worker's pub/sub
 * connection. */
bool dx__rb_barrier_message(rshard *sh, const char *s, size_t n)
{
    bool ok = true;
    uint64_t id = dx__rb_parse_u64(s, n, &ok);
    if (!ok)
        return false;
    for (rreq *r = sh->barriers; r; r = r->next) {
        if (r->id == id) {
            r->have_barrier = true;
            if (r->have_reply)
                sub_finish(r);
            return true;
        }
    }
    return false;
}

static void on_read_reply(dx__rio *io, void *reply, void *pd)
{
    (void)io;
    req_done_read(pd, reply);
}

static int read_issue(rreq *r, char mode)
{
    rworker *w = r->w;
    rbus *b = w->b;
    keys3 k;
    topic_keys(&k, r->topic, r->tlen, "o", "e", "s");
    char m[2] = {mode, 0}, since[24], limit[24], ep[DX__GW_EPOCH_LEN + 1], age[24], cnt[24], ttl[24];
    snprintf(since, sizeof since, "%llu", (unsigned long long)r->since);
    snprintf(limit, sizeof limit, "%zu", r->limit);
    new_epoch(w, ep);
    snprintf(age, sizeof age, "%llu", (unsigned long long)(b->o.history.max_age_ns / 1000000u));
    snprintf(cnt, sizeof cnt, "%zu", b->o.history.max_count);
    snprintf(ttl, sizeof ttl, "%llu", (unsigned long long)b->ttl_ms);
    char token[96] = "";
    bool barrier = r->kind == Q_SUB;
    const char *bchan = "";
    char ch[DX__GW_TOPIC_MAX + MSG_PREFIX_LEN + 3];
    if (barrier) {
        /* the barrier travels the way the topic's messages do, to the
         * channel's owner, which forwards it here after them: on the
         * owner's wchan, or (cluster) SPUBLISHed on the topic's own shard
         * channel (its slot's node, the owner's subscription: a classic
         * PUBLISH would reach the owner on every master, one copy not
         * ordered with the topic's messages), naming this node */
        r->id = ++w->barrier_seq;
        size_t chn = dx__rb_chan(b, r->topic, r->tlen, ch, sizeof ch);
        if (b->o.cluster) {
            bchan = ch;
            snprintf(token, sizeof token, "b %s.%llu", w->member, (unsigned long long)r->id);
        } else {
            bchan = b->w[dx__rr_owner(b, ch, chn)].wchan;
            snprintf(token, sizeof token, "%u.%llu", w->index, (unsigned long long)r->id);
        }
    }
    const char *argv[] = {"EVALSHA", b->sha[DX__REDIS_LUA_READ], "3", k.k[0], k.k[1], k.k[2], m, since, limit, ep,
                          age, cnt, r->has_epoch ? r->epoch : "*", ttl, bchan, token, b->o.cluster ? "s" : ""};
    size_t lens[17];
    for (int i = 0; i < 17; i++)
        lens[i] = strlen(argv[i]);
    lens[3] = k.n[0];
    lens[4] = k.n[1];
    lens[5] = k.n[2];
    r->s = dx__rb_shard_of(w, r->topic, r->tlen);
    int rc = dx__rb_cmd_argv(&r->s->cmd, on_read_reply, r, 17, argv, lens);
    if (!rc && barrier) {
        r->next = r->s->barriers;
        r->s->barriers = r;
    }
    return rc;
}

/* ---- subscriptions (the pub/sub connection) ------------------------------------- */

static void on_sub_msg(dx__rio *io, void *reply, void *pd);

int dx__rb_send_sub(rshard *s, const char *verb, const char *const *names, const size_t *lens, size_t n)
{
    if (n && dx__rr_is_relayed(s->w->b, verb, names[0], lens[0]))
        return dx__rr_send(s->w, s->index, verb, names, lens, n);
    return dx__rb_redis_sub(s, verb, names, lens, n);
}

int dx__rb_redis_sub(rshard *s, const char *verb, const char *const *names, const size_t *lens, size_t n)
{
    if (!n)
        return 0;
    if (!s->sub.io || !s->sub.up)
        return DX_EIO;
    const char **argv = dx__alloc(NULL, (n + 1) * sizeof *argv);
    size_t *al = dx__alloc(NULL, (n + 1) * sizeof *al);
    int rc = DX_ENOMEM;
    if (argv && al) {
        argv[0] = verb;
        al[0] = strlen(verb);
        for (size_t i = 0; i < n; i++) {
            argv[i + 1] = names[i];
            al[i + 1] = lens[i];
        }
        bool unsub = strstr(verb, "UNSUB") != NULL;
        rc = dx__rio_argv(s->sub.io, unsub ? NULL : on_sub_msg, s, (int)n + 1, argv, al) == 0
                 ? 0
                 : DX_EIO;
    }
    dx__free(NULL, argv);
    dx__free(NULL, al);
    return rc;
}

size_t dx__rb_chan(const rbus *b, const char *name, size_t len, char *out, size_t cap)
{
    int n = b->o.cluster ? snprintf(out, cap, MSG_PREFIX "{%.*s}", (int)len, name)
                         : snprintf(out, cap, MSG_PREFIX "%.*s", (int)len, name);
    return n < 0 ? 0 : (size_t)n;
}

bool dx__rb_chan_topic(const char *ch, size_t n, bool braces, const char **name, size_t *len)
{
    if (n <= MSG_PREFIX_LEN || memcmp(ch, MSG_PREFIX, MSG_PREFIX_LEN) != 0)
        return false;
    *name = ch + MSG_PREFIX_LEN;
    *len = n - MSG_PREFIX_LEN;
    if (braces) {
        if (*len < 3 || (*name)[0] != '{' || (*name)[*len - 1] != '}')
            return false;
        (*name)++;
        *len -= 2;
    }
    return *len <= DX__GW_TOPIC_MAX;
}

int dx__rb_subscribe_topic(rworker *w, rtopic *t)
{
    char ch[DX__GW_TOPIC_MAX + MSG_PREFIX_LEN + 3];
    const char *names[1] = {ch};
    size_t lens[1] = {dx__rb_chan(w->b, t->bt->name, t->bt->len, ch, sizeof ch)};
    /* through the channel's owner (redis_relay.c); cluster: a shard channel */
    int rc = dx__rb_send_sub(t->s, w->b->o.cluster ? "SSUBSCRIBE" : "SUBSCRIBE", names, lens, 1);
    if (!rc)
        t->state = S_SUBSCRIBING;
    return rc;
}

static void sub_fail(rreq *r, int err)
{
    rworker *w = r->w;
    rtopic *t = r->t;
    t->busy--;
    t->refs--;
    presence_remove(w, t, r->user, r->ulen);
    if (!t->refs)
        w->unsub_due = true;
    if (!w->freeing)
        r->fn.snap(r->ud, err, NULL, NULL);
    dx__free(NULL, r);
}

/* t's subscription is active: its waiting reads go out. */
void dx__rb_topic_active(rworker *w, rtopic *t)
{
    t->state = S_ACTIVE;
    rreq *r = t->waiting;
    t->waiting = NULL;
    t->waiting_tail = &t->waiting;
    while (r) {
        rreq *next = r->next;
        r->next = NULL;
        int rc = read_issue(r, r->resume ? 'r' : 'c');
        if (rc)
            sub_fail(r, rc);
        r = next;
    }
    if (t->need_catch || (t->catching && !t->catch_out))
        dx__rb_catch_start(w, t);
}

void dx__rb_waiting_fail(rworker *w, rtopic *t, int err)
{
    (void)w;
    rreq *r = t->waiting;
    t->waiting = NULL;
    t->waiting_tail = &t->waiting;
    while (r) {
        rreq *next = r->next;
        sub_fail(r, err);
        r = next;
    }
}

rpat *dx__rb_pat_find(rworker *w, const char *name, size_t len)
{
    for (rpat *p = w->pats; p; p = p->next)
        if (p->len == len && memcmp(p->name, name, len) == 0)
            return p;
    return NULL;
}

void dx__rb_live_message(rworker *w, const char *ch, size_t chlen, bool braces, const char *p, size_t n)
{
    const char *name;
    size_t len;
    if (!dx__rb_chan_topic(ch, chlen, braces, &name, &len))
        return;
    const char *nl = memchr(p, '\n', n);
    const char *f[4];
    size_t fl[4];
    const char *q = p;
    bool ok = nl != NULL;
    for (int i = 0; i < 4 && ok; i++) {
        const char *end = i < 3 ? memchr(q, ' ', (size_t)(nl - q)) : nl;
        if (!end) {
            ok = false;
            break;
        }
        f[i] = q;
        fl[i] = (size_t)(end - q);
        q = end + 1;
    }
    uint64_t off = ok ? dx__rb_parse_u64(f[0], fl[0], &ok) : 0;
    uint64_t ms = ok ? dx__rb_parse_u64(f[2], fl[2], &ok) : 0;
    dx__gw_kind kind = ok ? kind_of(f[1], fl[1]) : (dx__gw_kind)0;
    if (!ok || !kind || fl[3] != DX__GW_EPOCH_LEN) {
        dx__rb_log(w->b, DX_LOG_WARN, "redis bus: malformed message on %.*s: ignored", (int)chlen, ch);
        return;
    }
    atomic_fetch_add_explicit(&w->b->st_received, 1, memory_order_relaxed);
    rtopic *t = topic_get(w, name, len);
    char ep[DX__GW_EPOCH_LEN + 1];
    memcpy(ep, f[3], DX__GW_EPOCH_LEN);
    ep[DX__GW_EPOCH_LEN] = 0;
    if (!t || topic_epoch(t, ep) != 0) {
        atomic_fetch_add_explicit(&w->b->st_lost, 1, memory_order_relaxed);
        return;
    }
    t->touched_ns = dx__now_ns(NULL);
    if (t->have_last && off <= t->last && !t->catching)
        return; /* already delivered (an exact and a pattern subscription both brought it) */
    dx__gw_entry *e = dx__gw_entry_new(NULL, kind, nl + 1, n - (size_t)(nl + 1 - p), off, ms * 1000000u);
    if (!e) {
        atomic_fetch_add_explicit(&w->b->st_lost, 1, memory_order_relaxed);
        return;
    }
    /* A hole (offsets skipped): read them back before anything later of t
     * goes on, even while the command connection is down (the read waits
     * for it; last stays at what was delivered, where the read starts). */
    if (!t->catching && t->have_last && off > t->last + 1) {
        dx__rb_catch_start(w, t);
        if (!t->catching) /* no history to read them from */
            catch_gap(t, t->last + 1, off - 1);
    }
    if (t->catching) {
        catch_hold(t, e, off);
    } else {
        deliver_entry(w, t, e);
    }
    dx__gw_entry_unref(e);
}

static bool rstr(const redisReply *r, const char *s)
{
    return r->type == REDIS_REPLY_STRING && r->len == strlen(s) && memcmp(r->str, s, r->len) == 0;
}

void dx__rb_set_health(rshard *s)
{
    atomic_store_explicit(&s->healthy, s->cmd.up && s->sub.up && !s->stuck, memory_order_release);
}

static void on_sub_msg(dx__rio *io, void *reply, void *pd)
{
    (void)io;
    rshard *sh = pd;
    rworker *w = sh->w;
    redisReply *r = reply;
    bool cl = w->b->o.cluster;
    if (r && !w->freeing && r->type == REDIS_REPLY_ERROR && cl) {
        dx__rb_sub_error(w, sh, r);
        return;
    }
    if (!r || w->freeing || r->type != REDIS_REPLY_ARRAY || r->elements < 3 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        return;
    redisReply *kind = r->element[0], *a = r->element[1], *c = r->element[2];
    if (!cl && !(a->type == REDIS_REPLY_STRING && a->len == sizeof CTL_CHANNEL - 1 &&
                 memcmp(a->str, CTL_CHANNEL, a->len) == 0)) {
        /* topics, patterns, barriers: the relay's (this worker as their owner) */
        redisReply *d = r->elements >= 4 ? r->element[3] : NULL;
        bool as = a->type == REDIS_REPLY_STRING, cs = c->type == REDIS_REPLY_STRING;
        bool ds = d && d->type == REDIS_REPLY_STRING;
        dx__rr_on_pubsub(sh, kind->str, as ? a->str : NULL, as ? a->len : 0, cs ? c->str : NULL, cs ? c->len : 0,
                         ds ? d->str : NULL, ds ? d->len : 0);
        return;
    }
    if (cl && (rstr(kind, "smessage") || rstr(kind, "ssubscribe") || rstr(kind, "sunsubscribe"))) {
        /* topics' shard channels: the relay's (this worker as their owner) */
        bool as = a->type == REDIS_REPLY_STRING, cs = c->type == REDIS_REPLY_STRING;
        dx__rr_on_pubsub(sh, kind->str, as ? a->str : NULL, as ? a->len : 0, cs ? c->str : NULL, cs ? c->len : 0,
                         NULL, 0);
        return;
    }
    if (rstr(kind, "message") && a->type == REDIS_REPLY_STRING && c->type == REDIS_REPLY_STRING) {
        if (a->len == sizeof CTL_CHANNEL - 1 && memcmp(a->str, CTL_CHANNEL, a->len) == 0)
            dx__rb_ctl_message(sh, c->str, c->len);
        else if (a->len == strlen(w->wchan) && memcmp(a->str, w->wchan, a->len) == 0)
            dx__rb_barrier_message(sh, c->str, c->len);
        else
            dx__rb_live_message(w, a->str, a->len, false, c->str, c->len);
    } else if (rstr(kind, "pmessage") && r->elements >= 4 && c->type == REDIS_REPLY_STRING &&
               r->element[3]->type == REDIS_REPLY_STRING) {
        dx__rb_live_message(w, c->str, c->len, false, r->element[3]->str, r->element[3]->len);
    } else if (rstr(kind, "subscribe") && a->type == REDIS_REPLY_STRING) {
        if (a->len == sizeof CTL_CHANNEL - 1 && memcmp(a->str, CTL_CHANNEL, a->len) == 0) {
            if (!sh->sub.up) {
                sh->sub.up = true;
                sh->sub.attempts = 0;
                if (sh->sub.was_up) {
                    atomic_fetch_add_explicit(&w->b->st_reconnects, 1, memory_order_relaxed);
                    dx__rb_log(w->b, DX_LOG_INFO, "redis bus: worker %u: pub/sub connection to Redis %s restored",
                               w->index, sh->sv.label);
                }
                sh->sub.was_up = true;
                dx__rb_set_health(sh);
                /* the control channel is confirmed last: every pattern is
                 * active again, so topics seen only through one can be read
                 * back now (those seen through an exact subscription are,
                 * once theirs is confirmed) */
                for (size_t i = 0; i < w->tab_cap; i++)
                    for (rtopic *t = w->tab[i]; t; t = t->next)
                        if (t->need_catch && t->refs <= 0 && t->s == sh)
                            dx__rb_catch_start(w, t);
                dx__rr_sub_up(sh); /* the channels w owns there: confirmed to the workers that want them */
            }
            return;
        }
        /* topics: their owner's (the relay), or shard channels (cluster) */
    } else if (rstr(kind, "psubscribe") && a->type == REDIS_REPLY_STRING) {
        rpat *p = dx__rb_pat_find(w, a->str, a->len);
        if (p && p->state[sh->index] == S_SUBSCRIBING)
            p->state[sh->index] = S_ACTIVE;
    } else if (rstr(kind, "punsubscribe") && a->type == REDIS_REPLY_STRING) {
        rpat *p = dx__rb_pat_find(w, a->str, a->len);
        if (p && p->state[sh->index] == S_UNSUBSCRIBING) {
            p->state[sh->index] = S_NONE;
            /* topics seen only through patterns were not received for a
             * while: no catch-up may bring their older entries to later
             * pattern subscribers */
            for (size_t i = 0; i < w->tab_cap; i++)
                for (rtopic *t = w->tab[i]; t; t = t->next)
                    if (t->refs <= 0 && t->state == S_NONE && !t->catching && t->s == sh)
                        t->have_last = false;
            if (p->refs > 0) {
                const char *names[1] = {p->name};
                size_t lens[1] = {p->len};
                if (dx__rb_send_sub(sh, "PSUBSCRIBE", names, lens, 1) == 0)
                    p->state[sh->index] = S_SUBSCRIBING;
            }
        }
    }
}

/* ---- the vtable -------------------------------------------------------------------- */

static int r_attach(dx__bus *base, unsigned wi, dx_loop *loop, const dx__bus_events *ev, void *ud)
{
    rbus *b = (rbus *)base;
    if (wi >= b->o.workers || !loop)
        return DX_EINVAL;
    rworker *w = &b->w[wi];
    w->loop = loop;
    w->ev = ev;
    w->ud = ud;
    w->tick = dx_timer_new(loop, dx__rb_on_tick, w);
    if (!w->tick)
        return DX_ENOMEM;
    dx_timer_start(w->tick, 0, TICK_MS);
    dx__rr_attach(w, loop);
    atomic_store_explicit(&w->attached, true, memory_order_release);
    return 0;
}

static void r_detach(dx__bus *base, unsigned wi)
{
    rbus *b = (rbus *)base;
    rworker *w = &b->w[wi];
    w->ev = NULL;
    w->ud = NULL;
}

static int r_subscribe(dx__bus *base, unsigned wi, const char *topic, size_t len, const char *user, size_t ulen,
                       bool join, bool resume, uint64_t since, const char *epoch, size_t elen, dx__bus_snap_fn fn,
                       void *ud)
{
    rbus *b = (rbus *)base;
    rworker *w = &b->w[wi];
    if (len == 0 || len > DX__GW_TOPIC_MAX)
        return DX_EINVAL;
    rshard *s = dx__rb_shard_of(w, topic, len);
    if (!s->cmd.up || (join && !s->sub.up))
        return dx__rb_refuse(b, DX_EIO);
    rreq *r = dx__rb_req_new(w, join ? Q_SUB : Q_CUR, topic, len, user, user ? ulen : 0);
    if (!r)
        return DX_ENOMEM;
    r->fn.snap = fn;
    r->ud = ud;
    r->resume = resume;
    r->since = since;
    r->limit = 0;
    if (epoch) {
        r->has_epoch = true;
        if (elen <= DX__GW_EPOCH_LEN) {
            memcpy(r->epoch, epoch, elen);
            r->epoch[elen] = 0;
        } else {
            snprintf(r->epoch, sizeof r->epoch, "-"); /* no epoch is that long: never the current one */
        }
    }
    if (!join) {
        int rc = read_issue(r, resume ? 'r' : 'c');
        if (rc)
            dx__free(NULL, r);
        return rc;
    }
    rtopic *t = topic_get(w, topic, len);
    if (!t || presence_add(w, t, user, user ? ulen : 0) != 0) {
        dx__free(NULL, r);
        return DX_ENOMEM;
    }
    t->touched_ns = dx__now_ns(NULL);
    t->refs++;
    t->busy++;
    r->t = t;
    int rc = 0;
    switch (t->state) {
    case S_ACTIVE:
        rc = read_issue(r, resume ? 'r' : 'c');
        break;
    case S_NONE:
        rc = dx__rb_subscribe_topic(w, t);
        /* fall through */
    default:
        if (!rc) {
            *t->waiting_tail = r;
            t->waiting_tail = &r->next;
        }
        break;
    }
    if (rc) {
        t->busy--;
        t->refs--;
        presence_remove(w, t, user, user ? ulen : 0);
        dx__free(NULL, r);
        return dx__rb_refuse(b, rc);
    }
    return 0;
}

static void r_leave(dx__bus *base, unsigned wi, const char *topic, size_t len, const char *user, size_t ulen)
{
    rbus *b = (rbus *)base;
    rworker *w = &b->w[wi];
    rtopic *t = dx__rb_topic_find(w, topic, len);
    if (!t || t->refs <= 0)
        return;
    t->refs--;
    presence_remove(w, t, user, user ? ulen : 0);
    t->touched_ns = dx__now_ns(NULL);
    if (!t->refs)
        w->unsub_due = true;
}

static int r_history(dx__bus *base, unsigned wi, const char *topic, size_t len, uint64_t since, size_t limit,
                     dx__bus_snap_fn fn, void *ud)
{
    rbus *b = (rbus *)base;
    rworker *w = &b->w[wi];
    if (len == 0 || len > DX__GW_TOPIC_MAX)
        return DX_EINVAL;
    if (!dx__rb_shard_of(w, topic, len)->cmd.up)
        return dx__rb_refuse(b, DX_EIO);
    rreq *r = dx__rb_req_new(w, Q_HIST, topic, len, NULL, 0);
    if (!r)
        return DX_ENOMEM;
    r->since = since;
    r->limit = limit > DX__GW_HISTORY_LIMIT_MAX ? DX__GW_HISTORY_LIMIT_MAX : limit;
    r->fn.snap = fn;
    r->ud = ud;
    int rc = read_issue(r, 'h');
    if (rc) {
        dx__free(NULL, r);
        return dx__rb_refuse(b, rc);
    }
    return 0;
}

static void r_interest(dx__bus *base, unsigned w, long delta)
{
    /* each worker receives only what it subscribed to: nothing to skip */
    (void)base;
    (void)w;
    (void)delta;
}

/* "dx:m:" + the pattern with each `*` and `>` segment as Redis's `*`. */
static size_t redis_pattern(const char *pat, size_t len, char *out, size_t cap)
{
    size_t o = (size_t)snprintf(out, cap, MSG_PREFIX);
    for (size_t i = 0; i < len && o + 1 < cap; i++)
        out[o++] = pat[i] == '>' ? '*' : pat[i];
    out[o] = 0;
    return o;
}

static void r_pattern(dx__bus *base, unsigned wi, const char *pat, size_t len, long delta)
{
    rbus *b = (rbus *)base;
    rworker *w = &b->w[wi];
    char name[DX__GW_TOPIC_MAX + MSG_PREFIX_LEN + 1];
    if (len > DX__GW_TOPIC_MAX)
        return;
    size_t n = redis_pattern(pat, len, name, sizeof name);
    rpat *p = dx__rb_pat_find(w, name, n);
    if (!p) {
        if (delta <= 0)
            return;
        p = dx__alloc(NULL, sizeof *p + n + 1);
        if (!p)
            return; /* out of memory: topics only this pattern matches are not received here */
        memset(p, 0, sizeof *p);
        p->len = n;
        memcpy(p->name, name, n + 1);
        p->next = w->pats;
        w->pats = p;
    }
    p->refs += delta;
    if (p->refs > 0) {
        /* Redis has no pattern across servers: PSUBSCRIBEd on each one */
        const char *names[1] = {p->name};
        size_t lens[1] = {p->len};
        for (unsigned i = 0; i < w->nsh; i++)
            if (p->state[i] == S_NONE && dx__rb_send_sub(&w->sh[i], "PSUBSCRIBE", names, lens, 1) == 0)
                p->state[i] = S_SUBSCRIBING;
    } else {
        w->unsub_due = true;
    }
}

/* Bit i: server i is unreachable from some attached worker; *any: a worker is attached. */
static uint64_t down_mask(rbus *b, bool *any)
{
    uint64_t m = 0;
    *any = false;
    for (unsigned i = 0; i < b->o.workers; i++) {
        if (!atomic_load_explicit(&b->w[i].attached, memory_order_acquire))
            continue;
        *any = true;
        if (b->o.cluster && !atomic_load_explicit(&b->w[i].map_ok, memory_order_acquire))
            m |= 1; /* no slot map yet: not ready */
        unsigned n = atomic_load_explicit(&b->w[i].nsh, memory_order_acquire);
        for (unsigned j = 0; j < n; j++)
            if (!atomic_load_explicit(&b->w[i].sh[j].healthy, memory_order_acquire))
                m |= UINT64_C(1) << j;
    }
    return m;
}

/* Healthy while some server is reachable: with several, the topics of a
 * server that is down answer 503 and the others work (the stats say which,
 * /healthz says "degraded"). */
static bool r_healthy(dx__bus *base)
{
    rbus *b = (rbus *)base;
    bool any;
    uint64_t m = down_mask(b, &any);
    unsigned n = any ? atomic_load_explicit(&b->w[0].nsh, memory_order_acquire) : 0;
    return any && m != (UINT64_C(1) << n) - 1;
}

static void r_stats(dx__bus *base, dx__bus_stats *out)
{
    rbus *b = (rbus *)base;
    memset(out, 0, sizeof *out);
    for (unsigned i = 0; i < b->o.workers; i++)
        out->topics += atomic_load_explicit(&b->w[i].st_topics, memory_order_relaxed);
    out->handoffs = atomic_load_explicit(&b->st_received, memory_order_relaxed);
    out->lost = atomic_load_explicit(&b->st_lost, memory_order_relaxed);
    out->pending_bytes = atomic_load_explicit(&b->pending, memory_order_relaxed);
    out->refused = atomic_load_explicit(&b->st_refused, memory_order_relaxed);
    out->reconnects = atomic_load_explicit(&b->st_reconnects, memory_order_relaxed);
    out->recovered = atomic_load_explicit(&b->st_recovered, memory_order_relaxed);
    out->epochs = atomic_load_explicit(&b->st_epochs, memory_order_relaxed);
    bool any;
    out->shards = atomic_load_explicit(&b->w[0].nsh, memory_order_acquire);
    out->shards_down_mask = down_mask(b, &any);
    out->shards_down = (uint64_t)__builtin_popcountll(out->shards_down_mask);
    dx__rr_stats(b, out);
}

/* Every worker loop has stopped. Completions are not called (bus.h). */
static void r_free(dx__bus *base)
{
    rbus *b = (rbus *)base;
    for (unsigned i = 0; i < b->o.workers; i++) {
        rworker *w = &b->w[i];
        w->freeing = true;
        if (w->tick)
            dx_timer_free(w->tick);
        w->tick = NULL;
        for (unsigned si = 0; w->sh && si < w->nsh; si++) {
            rconn *cs[2] = {&w->sh[si].cmd, &w->sh[si].sub};
            for (int j = 0; j < 2; j++) {
                dx__rio *io = cs[j]->io;
                cs[j]->io = NULL;
                cs[j]->up = false;
                dx__rio_free(io); /* pending callbacks run with NULL and only free */
            }
        }
        while (w->discs)
            dx__rb_disc_finish(w, w->discs, DX_ECLOSED);
        for (unsigned si = 0; w->sh && si < w->nsh; si++)
            while (w->sh[si].barriers) /* answered, barrier never came */
                sub_finish(w->sh[si].barriers);
        for (size_t k = 0; k < w->tab_cap; k++) {
            for (rtopic *t = w->tab[k], *nx; t; t = nx) {
                nx = t->next;
                for (rreq *r = t->waiting, *rn; r; r = rn) {
                    rn = r->next;
                    dx__free(NULL, r);
                }
                catch_release(t); /* freeing: only frees */
                dx__rb_topic_free(t);
            }
        }
        dx__free(NULL, w->tab);
        for (rpat *p = w->pats, *nx; p; p = nx) {
            nx = p->next;
            dx__free(NULL, p);
        }
        dx__rb_uc_free(w);
        dx__free(NULL, w->sh);
        dx__free(NULL, w->slots);
        dx__tls_ctx_free(w->tls);
    }
    dx__rr_free(b);
    dx__free(NULL, b->w);
    dx__rb_servers_free(b);
    dx__free(NULL, b);
}

static const dx__bus_vt redis_vt = {
    .attach = r_attach,
    .detach = r_detach,
    .publish = dx__rb_publish,
    .subscribe = r_subscribe,
    .leave = r_leave,
    .history = r_history,
    .presence = dx__rb_presence,
    .disconnect_user = dx__rb_disconnect_user,
    .interest = r_interest,
    .pattern = r_pattern,
    .user_conns = dx__rb_user_conns,
    .healthy = r_healthy,
    .stats = r_stats,
    .free = r_free,
};

dx__bus *dx__bus_redis_new(const dx__bus_redis_opts *o, int *err, char *why, size_t why_len)
{
    int e = DX_EINVAL;
    rbus *b = NULL;
    char dummy[1];
    if (!why || !why_len) {
        why = dummy;
        why_len = sizeof dummy;
    }
    why[0] = 0;
    if (!o || o->workers == 0 || o->workers > 1024) {
        snprintf(why, why_len, "bad worker count");
        goto fail;
    }
    e = DX_ENOMEM;
    b = dx__alloc(NULL, sizeof *b);
    if (!b)
        goto fail;
    memset(b, 0, sizeof *b);
    b->base.vt = &redis_vt;
    b->o = *o;
    b->o.url = NULL;
    if ((e = dx__rb_servers_init(b, o->url, why, why_len)) != 0)
        goto fail;
    e = DX_ENOMEM;
    if (!b->o.pending_max)
        b->o.pending_max = (size_t)64 << 20;
    if (!b->o.presence_ttl_ms)
        b->o.presence_ttl_ms = 15000;
    if (b->o.presence_ttl_ms < 300)
        b->o.presence_ttl_ms = 300;
    if (!b->o.connect_timeout_ms)
        b->o.connect_timeout_ms = 3000;
    b->ttl_ms = b->o.history.max_age_ns ? b->o.history.max_age_ns / 1000000u + 60000u : 0;
    uint64_t seed[2];
    if (dx__random(NULL, seed, sizeof seed) != 0) {
        e = DX_ERANDOM;
        goto fail;
    }
    snprintf(b->node, sizeof b->node, "%016llx", (unsigned long long)seed[0]);
    for (int i = 0; i < DX__REDIS_LUA_N; i++) {
        unsigned char md[SHA_DIGEST_LENGTH];
        SHA1((const unsigned char *)dx__redis_lua[i], strlen(dx__redis_lua[i]), md);
        for (int j = 0; j < SHA_DIGEST_LENGTH; j++)
            snprintf(b->sha[i] + 2 * j, 3, "%02x", md[j]);
    }
    b->w = dx__alloc(NULL, o->workers * sizeof *b->w);
    if (!b->w)
        goto fail;
    memset(b->w, 0, o->workers * sizeof *b->w);
    for (unsigned i = 0; i < o->workers; i++) {
        rworker *w = &b->w[i];
        w->b = b;
        w->index = i;
        unsigned cap = o->cluster ? DX__REDIS_SHARDS_MAX : b->nsrv;
        w->sh = dx__alloc(NULL, cap * sizeof *w->sh);
        if (!w->sh)
            goto fail;
        memset(w->sh, 0, cap * sizeof *w->sh);
        if (o->cluster) { /* the seeds first; the masters as CLUSTER SLOTS names them */
            w->slots = dx__alloc(NULL, 16384);
            if (!w->slots)
                goto fail;
            memset(w->slots, 0xff, 16384);
            w->map_due = true;
        }
        atomic_init(&w->nsh, b->nsrv);
        for (unsigned j = 0; j < b->nsrv; j++) {
            rshard *s = &w->sh[j];
            s->w = w;
            s->index = j;
            s->sv = b->srv[j];
            s->cmd.w = s->sub.w = w;
            s->cmd.s = s->sub.s = s;
            s->sub.is_sub = true;
            atomic_init(&s->healthy, false);
        }
        w->rng = seed[1] ^ ((uint64_t)i * 0x9e3779b97f4a7c15ull);
        snprintf(w->member, sizeof w->member, "%s.%u", b->node, i);
        snprintf(w->wchan, sizeof w->wchan, "dx:w:%s", w->member);
        atomic_init(&w->attached, false);
        atomic_init(&w->map_ok, false);
    }
    if ((e = dx__rb_tls_setup(b, o, why, why_len)) != 0)
        goto fail;
    if (dx__rr_init(b) != 0) {
        e = DX_ENOMEM;
        goto fail;
    }
    return &b->base;
fail:
    if (b) {
        for (unsigned i = 0; b->w && i < o->workers; i++) {
            dx__free(NULL, b->w[i].sh);
            dx__free(NULL, b->w[i].slots);
            dx__tls_ctx_free(b->w[i].tls);
        }
        dx__rr_free(b);
        dx__free(NULL, b->w);
        dx__rb_servers_free(b);
        dx__free(NULL, b);
    }
    if (err)
        *err = e;
    return NULL;
}
