/*
 * src/bus/redis_req.c: the Redis bus's one-shot requests (redis_int.h):
 * publishes (one EVALSHA of the PUB script each, on the topic's server,
 * answered in order; the memory they hold bounded by pending_max),
 * presence reads, a user's connection counts, and /api/disconnect's
 * control message (both on the user's server). All on the worker's loop
 * thread.
 */
#define _GNU_SOURCE
#include "bus/redis_int.h"

#include <stdlib.h>
#include <string.h>

/* ---- publish ------------------------------------------------------------------ */

static void on_pub_reply(dx__rio *io, void *reply, void *pd)
{
    (void)io;
    rreq *r = pd;
    rworker *w = r->w;
    rshard *s = r->s;
    rbus *b = w->b;
    redisReply *rep = reply;
    atomic_fetch_sub_explicit(&b->pending, r->bytes, memory_order_relaxed);
    rreq *prev = NULL;
    for (rreq *x = s->pubs; x; prev = x, x = x->pnext) { /* the head, answers coming in order */
        if (x == r) {
            if (prev)
                prev->pnext = r->pnext;
            else
                s->pubs = r->pnext;
            if (s->pubs_tail == r)
                s->pubs_tail = prev;
            break;
        }
    }
    int err = DX_EIO;
    uint64_t off = 0;
    char ep[DX__GW_EPOCH_LEN + 1] = "";
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 2 && rep->element[0]->type == REDIS_REPLY_INTEGER &&
        rep->element[1]->type == REDIS_REPLY_STRING && rep->element[1]->len <= DX__GW_EPOCH_LEN) {
        err = 0;
        off = (uint64_t)rep->element[0]->integer;
        memcpy(ep, rep->element[1]->str, rep->element[1]->len);
        ep[rep->element[1]->len] = 0;
    } else if (rep && rep->type == REDIS_REPLY_ERROR) {
        if (strstr(rep->str, "ELIMIT")) {
            err = DX_ELIMIT;
        } else if (strstr(rep->str, "ELATE")) {
            err = DX_EIO; /* not published */
        } else {
            dx__rb_log(b, DX_LOG_WARN, "redis bus: publish on %s failed (Redis %s): %s", r->topic,
                       s->sv.label, rep->str);
            if (strncmp(rep->str, "NOSCRIPT", 8) == 0 && s->cmd.up)
                for (int i = 0; i < DX__REDIS_LUA_N; i++)
                    dx__rio_fmt(s->cmd.io, dx__rb_on_ignore, NULL, "SCRIPT LOAD %s", dx__redis_lua[i]);
        }
    }
    if (!w->freeing && r->fn.pub)
        r->fn.pub(r->ud, err, off, ep);
    dx__free(NULL, r);
}

int dx__rb_publish(dx__bus *base, unsigned wi, const char *topic, size_t len, dx__gw_kind kind, const void *data,
                   size_t dlen, dx__bus_pub_fn fn, void *ud)
{
    rbus *b = (rbus *)base;
    rworker *w = &b->w[wi];
    if (len == 0 || len > DX__GW_TOPIC_MAX || kind < DX__GW_KIND_JSON || kind > DX__GW_KIND_BINARY)
        return DX_EINVAL;
    rshard *s = dx__rb_shard_of(w, topic, len);
    if (!s->cmd.up || s->stuck)
        return dx__rb_refuse(b, DX_EIO);
    size_t was = atomic_fetch_add_explicit(&b->pending, dlen, memory_order_relaxed);
    if (was + dlen > b->o.pending_max) {
        atomic_fetch_sub_explicit(&b->pending, dlen, memory_order_relaxed);
        return dx__rb_refuse(b, DX_ELIMIT);
    }
    rreq *r = dx__rb_req_new(w, Q_PUB, topic, len, NULL, 0);
    if (!r) {
        atomic_fetch_sub_explicit(&b->pending, dlen, memory_order_relaxed);
        return DX_ENOMEM;
    }
    r->s = s;
    r->bytes = dlen;
    r->fn.pub = fn;
    r->ud = ud;
    char k[3][DX__GW_TOPIC_MAX + 16];
    size_t kl[3];
    static const char *const suf[3] = {"o", "e", "s"};
    for (int i = 0; i < 3; i++)
        kl[i] = (size_t)snprintf(k[i], sizeof k[i], "dx:{%.*s}:%s", (int)len, topic, suf[i]);
    char kd[2] = {(char)('0' + kind), 0}, cnt[24], age[24], ep[DX__GW_EPOCH_LEN + 1], ttl[24];
    char ch[DX__GW_TOPIC_MAX + MSG_PREFIX_LEN + 3], pch[DX__GW_TOPIC_MAX + MSG_PREFIX_LEN + 1];
    snprintf(cnt, sizeof cnt, "%zu", b->o.history.max_count);
    snprintf(age, sizeof age, "%llu", (unsigned long long)(b->o.history.max_age_ns / 1000000u));
    new_epoch(w, ep);
    snprintf(ttl, sizeof ttl, "%llu", (unsigned long long)b->ttl_ms);
    size_t chn = dx__rb_chan(b, topic, len, ch, sizeof ch);
    /* cluster: SPUBLISH on dx:m:{T}, and PUBLISH on dx:m:T for patterns
     * (Redis has no sharded PSUBSCRIBE; docs/gateway.md "Redis Cluster") */
    int pchn = b->o.cluster ? snprintf(pch, sizeof pch, MSG_PREFIX "%.*s", (int)len, topic) : 0;
    /* Redis refuses it past half the answer bound: by the time this node
     * gives up on it (the whole bound), it cannot run any more */
    uint64_t now = dx__now_ns(NULL);
    char dl[24] = "0";
    if (s->have_clock)
        snprintf(dl, sizeof dl, "%lld",
                 (long long)((int64_t)(now / 1000000u) + s->clock_off_ms + (int64_t)b->o.connect_timeout_ms / 2));
    const char *argv[] = {"EVALSHA", b->sha[DX__REDIS_LUA_PUB], "3", k[0], k[1], k[2], kd, dlen ? data : "",
                          cnt, age, ep, ch, ttl, dl, b->o.cluster ? "s" : "", b->o.cluster ? pch : ""};
    size_t lens[16];
    for (int i = 0; i < 16; i++)
        lens[i] = strlen(argv[i]);
    lens[15] = (size_t)pchn;
    lens[3] = kl[0];
    lens[4] = kl[1];
    lens[5] = kl[2];
    lens[7] = dlen;
    lens[11] = chn;
    int rc = dx__rb_cmd_argv(&s->cmd, on_pub_reply, r, 16, argv, lens);
    if (rc) {
        atomic_fetch_sub_explicit(&b->pending, dlen, memory_order_relaxed);
        dx__free(NULL, r);
        return dx__rb_refuse(b, rc);
    }
    r->sent_ns = now;
    if (s->pubs_tail)
        s->pubs_tail->pnext = r;
    else
        s->pubs = r;
    s->pubs_tail = r;
    return 0;
}

/* ---- presence, disconnects, user counts ------------------------------------------ */

/* Adds the users of one presence value ("count len:id len:id...") to the
 * answer; false when malformed. */
static bool pres_parse(const char *s, size_t n, uint64_t *count, char ***users, size_t **lens, size_t *nu,
                       size_t *cap)
{
    size_t i = 0;
    while (i < n && s[i] != ' ')
        i++;
    bool ok = true;
    *count += dx__rb_parse_u64(s, i, &ok);
    while (ok && i < n) {
        i++; /* the space */
        size_t j = i;
        while (j < n && s[j] != ':')
            j++;
        uint64_t l = dx__rb_parse_u64(s + i, j - i, &ok);
        if (!ok || j >= n || l > n - j - 1)
            return false;
        const char *id = s + j + 1;
        bool dup = false;
        for (size_t k = 0; k < *nu && !dup; k++)
            dup = (*lens)[k] == l && memcmp((*users)[k], id, l) == 0;
        if (!dup) {
            if (*nu == *cap) {
                size_t nc = *cap ? *cap * 2 : 8;
                char **u = dx__realloc(NULL, *users, nc * sizeof *u);
                if (!u)
                    return false;
                *users = u;
                size_t *ll = dx__realloc(NULL, *lens, nc * sizeof *ll);
                if (!ll)
                    return false;
                *lens = ll;
                *cap = nc;
            }
            char *c = dx__alloc(NULL, l + 1);
            if (!c)
                return false;
            memcpy(c, id, l);
            c[l] = 0;
            (*users)[*nu] = c;
            (*lens)[*nu] = l;
            (*nu)++;
        }
        i = j + 1 + l;
    }
    return ok;
}

static void on_pres_reply(dx__rio *io, void *reply, void *pd)
{
    (void)io;
    rreq *r = pd;
    redisReply *rep = reply;
    uint64_t count = 0;
    char **users = NULL;
    size_t *lens = NULL, nu = 0, cap = 0;
    int err = 0;
    if (!rep || rep->type != REDIS_REPLY_ARRAY) {
        err = DX_EIO;
    } else {
        for (size_t i = 0; i < rep->elements && !err; i++)
            if (rep->element[i]->type != REDIS_REPLY_STRING ||
                !pres_parse(rep->element[i]->str, rep->element[i]->len, &count, &users, &lens, &nu, &cap))
                err = DX_EIO;
    }
    if (!r->w->freeing)
        r->fn.pres(r->ud, err, count, (const char *const *)users, lens, err ? 0 : nu);
    for (size_t i = 0; i < nu; i++)
        dx__free(NULL, users[i]);
    dx__free(NULL, users);
    dx__free(NULL, lens);
    dx__free(NULL, r);
}

int dx__rb_presence(dx__bus *base, unsigned wi, const char *topic, size_t len, dx__bus_presence_fn fn, void *ud)
{
    rbus *b = (rbus *)base;
    rworker *w = &b->w[wi];
    if (len == 0 || len > DX__GW_TOPIC_MAX)
        return DX_EINVAL;
    rshard *s = dx__rb_shard_of(w, topic, len);
    if (!s->cmd.up)
        return dx__rb_refuse(b, DX_EIO);
    rreq *r = dx__rb_req_new(w, Q_PRES, topic, len, NULL, 0);
    if (!r)
        return DX_ENOMEM;
    r->s = s;
    r->fn.pres = fn;
    r->ud = ud;
    /* this worker's pending changes first, so a reader here sees its own joins */
    rtopic *t = dx__rb_topic_find(w, topic, len);
    if (t && t->pres_dirty)
        dx__rb_presence_push(w, t);
    char k[5][DX__GW_TOPIC_MAX + 16];
    size_t kl[5];
    static const char *const suf[5] = {"p", "pz", "o", "e", "s"};
    for (int i = 0; i < 5; i++)
        kl[i] = (size_t)snprintf(k[i], sizeof k[i], "dx:{%.*s}:%s", (int)len, topic, suf[i]);
    const char *argv[] = {"EVALSHA", b->sha[DX__REDIS_LUA_PRES], "5", k[0], k[1], k[2], k[3], k[4], "g", w->member,
                          "", "0", "0"};
    size_t lens[13];
    for (int i = 0; i < 13; i++)
        lens[i] = i >= 3 && i <= 7 ? kl[i - 3] : strlen(argv[i]);
    int rc = dx__rb_cmd_argv(&s->cmd, on_pres_reply, r, 13, argv, lens);
    if (rc) {
        dx__free(NULL, r);
        return dx__rb_refuse(b, rc);
    }
    return 0;
}

int dx__rb_disconnect_user(dx__bus *base, unsigned wi, const char *user, size_t ulen, dx__bus_count_fn fn,
                           void *ud)
{
    rbus *b = (rbus *)base;
    rworker *w = &b->w[wi];
    if (ulen == 0 || ulen > 1024)
        return DX_EINVAL;
    /* on the server that owns the user (every worker of every node listens
     * to the control channel of every server): its PUBLISH count is then
     * every worker of the cluster, whose answers come back on it */
    rshard *s = b->o.cluster ? &w->sh[0] : dx__rb_shard_of(w, user, ulen); /* cluster: a PUBLISH reaches all */
    if (!s->cmd.up)
        return dx__rb_refuse(b, DX_EIO);
    rreq *r = dx__rb_req_new(w, Q_DISC, user, ulen, NULL, 0);
    char *msg = dx__alloc(NULL, ulen + 80);
    if (!r || !msg) {
        dx__free(NULL, r);
        dx__free(NULL, msg);
        return DX_ENOMEM;
    }
    r->s = s;
    r->id = ++w->disc_seq;
    r->fn.count = fn;
    r->ud = ud;
    r->refs = 2; /* the list, the PUBLISH callback */
    r->deadline_ns = dx__now_ns(NULL) + DISC_TIMEOUT_NS;
    int m = snprintf(msg, 80, "d %s.%llu ", w->member, (unsigned long long)r->id);
    memcpy(msg + m, user, ulen);
    const char *argv[] = {"PUBLISH", CTL_CHANNEL, msg};
    size_t lens[] = {7, sizeof CTL_CHANNEL - 1, (size_t)m + ulen};
    int rc = dx__rb_cmd_argv(&s->cmd, dx__rb_on_disc_pub, r, 3, argv, lens);
    dx__free(NULL, msg);
    if (rc) {
        dx__free(NULL, r);
        return dx__rb_refuse(b, rc);
    }
    r->next = w->discs;
    w->discs = r;
    return 0;
}

