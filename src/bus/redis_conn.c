/*
 * src/bus/redis_conn.c: the Redis bus's connections (redis_int.h): each
 * worker's command and pub/sub connections to each Redis server (connect, setup,
 * health by TIME, loss, reconnect with backoff and jitter, resubscribe),
 * its 100 ms tick (reconnects, health, presence and liveness refresh,
 * batched unsubscribes, sweeps), presence writes, and /api/disconnect
 * across nodes over the control channel. All on the worker's loop thread.
 */
#define _GNU_SOURCE
#include "bus/redis_int.h"
#include "core/buf.h"

#include <stdlib.h>
#include <string.h>

/* ---- connections -------------------------------------------------------------- */

void dx__rb_barrier_lost(rreq *r)
{
    if (r->have_reply) {
        if (!r->rc)
            dx__gw_snapshot_deinit(&r->snap);
        r->rc = DX_EIO;
        dx__rb_read_answer(r, DX_EIO, &r->snap);
    } else {
        r->have_barrier = true; /* not waited for */
        r->rc = DX_EIO;
        r->lost_barrier = true;
    }
}

int dx__rb_tls_setup(rbus *b, const dx__bus_redis_opts *o, char *why, size_t why_len)
{
    b->o.tls_ca = b->o.tls_cert = b->o.tls_key = NULL; /* not kept: loaded here */
    bool tls = false;
    for (unsigned i = 0; i < b->nsrv; i++)
        tls = tls || b->srv[i].url.tls;
    if (!tls && (o->tls_ca || o->tls_cert || o->tls_key)) {
        snprintf(why, why_len, "--redis-tls-ca, --redis-tls-cert and --redis-tls-key need a rediss:// URL");
        return DX_EINVAL;
    }
    if (!o->tls_cert != !o->tls_key) {
        snprintf(why, why_len, "--redis-tls-cert and --redis-tls-key go together");
        return DX_EINVAL;
    }
    if (!tls)
        return 0;
    /* the CA store and the client certificate, loaded here (not on a loop)
     * once per worker: an OpenSSL context is not shared between loop
     * threads (its lazily cached certificate fields are written without a
     * lock a reader takes), as the server's contexts are per loop too.
     * Every connection's handshake verifies the server's certificate
     * against the URL's host. */
    for (unsigned i = 0; i < b->o.workers; i++) {
        char tw[200];
        int e = 0;
        rworker *w = &b->w[i];
        w->tls = dx__tls_client_ctx_new(o->tls_ca, 0, tw, sizeof tw, &e);
        if (w->tls && o->tls_cert)
            e = dx__tls_client_ctx_cert(w->tls, o->tls_cert, o->tls_key, tw, sizeof tw);
        if (e) {
            snprintf(why, why_len, "Redis TLS: %s", tw);
            return e;
        }
    }
    return 0;
}

static void on_disconnect(dx__rio *io, const char *why, void *ud)
{
    rconn *c = ud;
    if (c->io != io)
        return; /* dropped by us already */
    c->io = NULL;
    dx__rio_free(io);
    dx__rb_conn_down(c, why);
}

static void on_connect(dx__rio *io, void *ud)
{
    (void)io;
    (void)ud; /* up once the setup is answered (on_ping, or the control channel's subscription) */
}

static void after_event(void *ud)
{
    dx__rb_after_event(((rconn *)ud)->w);
}

/* Drops c's connection (if any) and runs dx__rb_conn_down. Pending callbacks
 * run with NULL replies (failing their requests). */
static void conn_drop(rconn *c, const char *why)
{
    dx__rio *io = c->io;
    c->io = NULL;
    dx__rio_free(io);
    dx__rb_conn_down(c, why);
}

void dx__rb_conn_down(rconn *c, const char *why)
{
    rworker *w = c->w;
    rshard *s = c->s;
    rbus *b = w->b;
    bool was = c->up;
    c->up = false;
    dx__rb_set_health(s);
    uint64_t now = dx__now_ns(NULL);
    uint64_t delay = 100u << (c->attempts < 6 ? c->attempts : 6); /* ms: 100 .. 6400, capped at 5 s */
    if (delay > 5000)
        delay = 5000;
    delay = delay / 2 + next_rand(w) % (delay / 2 + 1); /* jitter */
    c->attempts++;
    c->next_try_ns = now + delay * 1000000u;
    if (w->freeing)
        return;
    if (was || c->attempts == 1)
        dx__rb_log(b, DX_LOG_WARN, "redis bus: worker %u: %s connection to Redis %s %s: %s (retrying)", w->index,
                   c->is_sub ? "pub/sub" : "command", s->sv.label, was ? "lost" : "failed", why);
    if (c->is_sub && w->slots) {
        /* cluster: an error naming where a slot went (MOVED) */
        unsigned slot;
        bool ask;
        int k = dx__rb_redirect(w, why, strlen(why), &slot, &ask);
        if (k >= 0) {
            w->slots[slot] = (uint8_t)k;
            w->map_due = true;
        }
    }
    if (c->is_sub) {
        /* the channels this worker holds for the node on this server: each
         * worker that wants one is told (through its queue, redis_relay.c) */
        dx__rr_conn_down(s);
    }
    if (c->is_sub && b->o.cluster) {
        /* cluster: patterns are this worker's own, on every master */
        for (size_t i = 0; i < w->tab_cap; i++)
            for (rtopic *t = w->tab[i]; t; t = t->next)
                if (t->s == s && t->state == S_NONE && t->refs <= 0 && t->have_last)
                    t->need_catch = true; /* seen through a pattern: read back once subscribed again */
        for (rpat *p = w->pats; p; p = p->next)
            p->state[s->index] = S_NONE;
        /* topics whose slot is known to be elsewhere: their reads go there now */
        for (size_t i = 0; i < w->tab_cap; i++)
            for (rtopic *t = w->tab[i]; t; t = t->next)
                dx__rb_topic_move(w, t, dx__rb_shard_of(w, t->bt->name, t->bt->len));
    } else if (!c->is_sub) {
        s->ping_sent_ns = 0;
        s->stuck = false;
        for (rreq *r = w->discs; r; r = r->next)
            if (r->s == s && r->deadline_ns > now)
                r->deadline_ns = now; /* no reply can come through this connection: answer with what came */
    }
}

static void on_hs_reply(dx__rio *io, void *reply, void *pd)
{
    rconn *c = pd;
    redisReply *r = reply;
    if (!r || c->io != io)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        if (c->attempts == 0) /* once per run of failures */
            dx__rb_log(c->w->b, DX_LOG_ERROR, "redis bus: Redis refused the connection setup: %s", r->str);
        conn_drop(c, "setup refused");
    }
}

static void on_ping(dx__rio *io, void *reply, void *pd)
{
    rconn *c = pd;
    rworker *w = c->w;
    rshard *s = c->s;
    if (!reply || c->io != io || w->freeing)
        return;
    redisReply *r = reply;
    uint64_t now = dx__now_ns(NULL);
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->type == REDIS_REPLY_STRING &&
        r->element[1]->type == REDIS_REPLY_STRING && s->ping_sent_ns) {
        bool ok = true;
        uint64_t sec = dx__rb_parse_u64(r->element[0]->str, r->element[0]->len, &ok);
        uint64_t usec = dx__rb_parse_u64(r->element[1]->str, r->element[1]->len, &ok);
        if (ok) {
            int64_t mid_ms = (int64_t)((s->ping_sent_ns + now) / 2 / 1000000u);
            s->clock_off_ms = (int64_t)(sec * 1000u + usec / 1000u) - mid_ms;
            s->have_clock = true;
        }
    }
    s->ping_sent_ns = 0;
    if (!c->up) {
        c->up = true;
        c->attempts = 0;
        if (c->was_up) {
            atomic_fetch_add_explicit(&w->b->st_reconnects, 1, memory_order_relaxed);
            dx__rb_log(w->b, DX_LOG_INFO, "redis bus: worker %u: command connection to Redis %s restored", w->index,
                       s->sv.label);
        } else if (w->index == 0) {
            dx__rb_log(w->b, DX_LOG_INFO, "redis bus: connected to Redis at %s (db %d, server %u of %u) as node %s",
                       s->sv.label, s->sv.url.db, s->index + 1, (unsigned)w->nsh,
                       w->b->node);
        }
        c->was_up = true;
        dx__rb_set_health(s);
        w->last_refresh_ns = 0; /* presence and liveness now */
        if (!c->is_sub)
            dx__rb_uc_all_dirty(w); /* and the user counts, which Redis may have lost */
        for (size_t i = 0; i < w->tab_cap; i++)
            for (rtopic *t = w->tab[i]; t; t = t->next) {
                if (t->s != s)
                    continue;
                if (t->present || t->pres_pushed) {
                    t->pres_dirty = true;
                    w->pres_any_dirty = true;
                }
                /* catch-ups that waited for this connection: their reads
                 * start from the last offset delivered */
                if ((t->need_catch && (t->state == S_ACTIVE || (t->refs <= 0 && s->sub.up))) ||
                    (t->catching && !t->catch_out))
                    dx__rb_catch_start(w, t);
            }
    }
}

static int conn_start(rconn *c)
{
    rworker *w = c->w;
    rbus *b = w->b;
    rshard *s = c->s;
    const rserver *sv = &s->sv;
    dx__rio_opts o = {
        .addr = sv->url.unix_socket ? NULL : sv->addr,
        .port = sv->url.port,
        .unix_path = sv->url.unix_socket ? sv->url.path : NULL,
        .tls = sv->url.tls ? w->tls : NULL,
        .tls_host = sv->url.host,
        .on_connect = on_connect,
        .on_disconnect = on_disconnect,
        .after = after_event,
        .ud = c,
    };
    char why[256];
    int err = 0;
    c->started_ns = dx__now_ns(NULL);
    dx__rio *io = dx__rio_new(w->loop, &o, &err, why, sizeof why);
    if (!io) {
        if (err == DX_ENOMEM)
            return DX_ENOMEM;
        dx__rb_conn_down(c, why[0] ? why : dx_strerror(err));
        return 0;
    }
    c->io = io;
    /* setup, pipelined: AUTH, SELECT, then (commands) the scripts and a PING
     * whose answer marks the connection up, or (pub/sub) the subscriptions */
    if (sv->url.pass[0]) {
        if (sv->url.user[0])
            dx__rio_fmt(io, on_hs_reply, c, "AUTH %s %s", sv->url.user, sv->url.pass);
        else
            dx__rio_fmt(io, on_hs_reply, c, "AUTH %s", sv->url.pass);
    }
    if (sv->url.db)
        dx__rio_fmt(io, on_hs_reply, c, "SELECT %d", sv->url.db);
    if (!c->is_sub) {
        for (int i = 0; i < DX__REDIS_LUA_N; i++)
            dx__rio_fmt(io, on_hs_reply, c, "SCRIPT LOAD %s", dx__redis_lua[i]);
        s->ping_sent_ns = dx__now_ns(NULL);
        dx__rio_fmt(io, on_ping, c, "TIME");
        return 0;
    }
    /* the channels this worker holds there for the node (redis_relay.c),
     * (cluster) this worker's patterns, its barrier channel, then the
     * control channel (its confirmation marks the connection up) */
    c->up = true; /* let dx__rb_redis_sub write; the flag is reset below */
    dx__rr_conn_start(s);
    for (rpat *p = b->o.cluster ? w->pats : NULL; p; p = p->next) {
        if (p->refs > 0) {
            const char *names[1] = {p->name};
            size_t lens[1] = {p->len};
            if (dx__rb_send_sub(s, "PSUBSCRIBE", names, lens, 1) == 0)
                p->state[s->index] = S_SUBSCRIBING;
        }
    }
    const char *names[2] = {w->wchan, CTL_CHANNEL};
    size_t lens[2] = {strlen(w->wchan), sizeof CTL_CHANNEL - 1};
    (void)dx__rb_redis_sub(s, "SUBSCRIBE", names, lens, 2);
    c->up = false;
    return 0;
}

/* ---- presence and liveness ------------------------------------------------------ */

void dx__rb_on_ignore(dx__rio *io, void *reply, void *pd)
{
    (void)io;
    (void)pd;
    (void)reply;
}

void dx__rb_presence_push(rworker *w, rtopic *t)
{
    rbus *b = w->b;
    dx_buf v;
    dx_buf_init(&v, NULL);
    char num[32];
    int rc = 0;
    if (t->present) {
        int n = snprintf(num, sizeof num, "%llu", (unsigned long long)t->present);
        rc = dx_buf_append(&v, num, (size_t)n, 0);
        for (size_t i = 0; i < t->nusers && !rc; i++) {
            n = snprintf(num, sizeof num, " %zu:", t->users[i].len);
            rc = dx_buf_append(&v, num, (size_t)n, 0);
            if (!rc)
                rc = dx_buf_append(&v, t->users[i].id, t->users[i].len, 0);
        }
    }
    if (rc) {
        dx_buf_deinit(&v);
        return; /* out of memory: stays dirty */
    }
    char k[5][DX__GW_TOPIC_MAX + 16];
    size_t kl[5];
    static const char *const suf[5] = {"p", "pz", "o", "e", "s"};
    for (int i = 0; i < 5; i++)
        kl[i] = (size_t)snprintf(k[i], sizeof k[i], "dx:{%s}:%s", t->bt->name, suf[i]);
    char ttl[24], tttl[24];
    snprintf(ttl, sizeof ttl, "%u", b->o.presence_ttl_ms);
    snprintf(tttl, sizeof tttl, "%llu", (unsigned long long)b->ttl_ms);
    const char *argv[] = {"EVALSHA", b->sha[DX__REDIS_LUA_PRES], "5", k[0], k[1], k[2], k[3], k[4], "s", w->member,
                          v.len ? (const char *)dx_buf_head(&v) : "", ttl, tttl};
    size_t lens[13];
    for (int i = 0; i < 13; i++)
        lens[i] = i >= 3 && i <= 7 ? kl[i - 3] : i == 10 ? v.len : strlen(argv[i]);
    if (dx__rb_cmd_argv(&t->s->cmd, dx__rb_on_ignore, NULL, 13, argv, lens) == 0) {
        t->pres_dirty = false;
        t->pres_pushed = t->present > 0;
    }
    dx_buf_deinit(&v);
}

static void refresh_alive(rworker *w)
{
    if (w->b->o.cluster)
        return; /* a script may not read another slot's key: cluster user counts do not check liveness */
    char key[80];
    int n = snprintf(key, sizeof key, "dx:alive:%s", w->member);
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%u", w->b->o.presence_ttl_ms);
    const char *argv[] = {"SET", key, "1", "PX", ttl};
    size_t lens[] = {3, (size_t)n, 1, 2, strlen(ttl)};
    /* on every server: each one's user counts (dx:uc:{U}) check it there */
    for (unsigned i = 0; i < w->nsh; i++)
        (void)dx__rb_cmd_argv(&w->sh[i].cmd, dx__rb_on_ignore, NULL, 5, argv, lens);
}

/* ---- the tick ----------------------------------------------------------------------- */

/* UNSUBSCRIBEs (batched) the topics of server s nobody here holds any more. */
static void unsub_topics(rworker *w, rshard *s)
{
    size_t cap = 64, n = 0;
    const char **names = dx__alloc(NULL, cap * sizeof *names);
    size_t *lens = dx__alloc(NULL, cap * sizeof *lens);
    char *chans = dx__alloc(NULL, cap * (DX__GW_TOPIC_MAX + MSG_PREFIX_LEN + 3));
    if (!names || !lens || !chans) {
        w->unsub_due = true;
        goto out;
    }
    for (size_t i = 0; i < w->tab_cap; i++) {
        for (rtopic *t = w->tab[i]; t; t = t->next) {
            if (t->s != s || t->refs > 0 || t->state != S_ACTIVE || t->waiting)
                continue;
            if (n == cap) {
                w->unsub_due = true; /* the rest next tick */
                break;
            }
            char *ch = chans + n * (DX__GW_TOPIC_MAX + MSG_PREFIX_LEN + 3);
            lens[n] = dx__rb_chan(w->b, t->bt->name, t->bt->len, ch, DX__GW_TOPIC_MAX + MSG_PREFIX_LEN + 3);
            names[n++] = ch;
            t->state = S_UNSUBSCRIBING;
        }
    }
    /* to the channels' owners (cluster: each owner sends one SUNSUBSCRIBE
     * per channel, channels of several slots may not share one) */
    if (n && dx__rb_send_sub(s, w->b->o.cluster ? "SUNSUBSCRIBE" : "UNSUBSCRIBE", names, lens, n) != 0)
        w->unsub_due = true;
out:
    dx__free(NULL, names);
    dx__free(NULL, lens);
    dx__free(NULL, chans);
}

static void unsub_batch(rworker *w)
{
    w->unsub_due = false;
    /* sent to the channels' owners: no connection of w needed (cluster:
     * patterns are w's own, on each master's connection) */
    bool relay = !w->b->o.cluster;
    for (unsigned k = 0; k < w->nsh; k++)
        unsub_topics(w, &w->sh[k]);
    for (rpat **pp = &w->pats; *pp;) {
        rpat *p = *pp;
        bool none = true;
        for (unsigned k = 0; k < w->nsh && p->refs <= 0; k++) {
            if (p->state[k] == S_ACTIVE && (relay || w->sh[k].sub.up)) {
                const char *nm[1] = {p->name};
                size_t ln[1] = {p->len};
                if (dx__rb_send_sub(&w->sh[k], "PUNSUBSCRIBE", nm, ln, 1) == 0)
                    p->state[k] = S_UNSUBSCRIBING;
            }
            none = none && p->state[k] == S_NONE;
        }
        if (p->refs <= 0 && none) {
            *pp = p->next;
            dx__free(NULL, p);
            /* topics seen only through patterns are no longer ordered here */
            for (size_t i = 0; i < w->tab_cap; i++)
                for (rtopic *t = w->tab[i]; t; t = t->next)
                    if (t->refs <= 0 && t->state == S_NONE) {
                        t->have_last = false;
                        dx__rb_catch_stop(t);
                    }
            continue;
        }
        pp = &p->next;
    }
}

static void sweep(rworker *w, uint64_t now)
{
    for (size_t i = 0; i < w->tab_cap; i++) {
        for (rtopic **pp = &w->tab[i]; *pp;) {
            rtopic *t = *pp;
            if (t->refs <= 0 && t->state == S_NONE && !t->busy && !t->catching && !t->present && !t->pres_dirty &&
                !t->waiting && now - t->touched_ns > UINT64_C(60) * 1000000000u) {
                *pp = t->next;
                dx__rb_topic_free(t);
                w->ntopics--;
                continue;
            }
            pp = &t->next;
        }
    }
    atomic_store_explicit(&w->st_topics, w->ntopics, memory_order_relaxed);
}

/* s's connections: (re)connect, connect timeouts, and the health check. */
static void shard_tick(rworker *w, rshard *s, uint64_t now, uint64_t to)
{
    rconn *cs[2] = {&s->cmd, &s->sub};
    for (int i = 0; i < 2; i++) {
        rconn *c = cs[i];
        if (!c->io && now >= c->next_try_ns)
            (void)conn_start(c);
        else if (c->io && !c->up && now - c->started_ns > to)
            conn_drop(c, "connect timed out");
    }
    if (!s->cmd.up)
        return;
    /* Redis does not answer (a TIME or a publish out too long): new
     * requests are refused at once; the connections go (requests out
     * fail, reconnecting starts) once every publish out is past its
     * deadline, so none answered 503 can still be published */
    bool late = (s->ping_sent_ns && now - s->ping_sent_ns > to) || (s->pubs && now - s->pubs->sent_ns > to);
    if (!s->stuck && late) {
        s->stuck = true;
        dx__rb_set_health(s);
        dx__rb_log(w->b, DX_LOG_WARN, "redis bus: worker %u: Redis %s does not answer", w->index,
                   s->sv.label);
    }
    if (s->stuck && (!s->pubs_tail || now - s->pubs_tail->sent_ns > to)) {
        conn_drop(&s->cmd, "Redis does not answer");
        if (s->sub.io)
            conn_drop(&s->sub, "Redis does not answer on the command connection");
    } else if (!s->ping_sent_ns && now - s->last_ping_ns >= UINT64_C(1000000000)) {
        s->last_ping_ns = now;
        const char *argv[] = {"TIME"};
        size_t lens[] = {4};
        if (dx__rb_cmd_argv(&s->cmd, on_ping, &s->cmd, 1, argv, lens) == 0)
            s->ping_sent_ns = now;
    }
}

void dx__rb_on_tick(dx_timer *tm, void *ud)
{
    (void)tm;
    rworker *w = ud;
    rbus *b = w->b;
    uint64_t now = dx__now_ns(NULL);
    uint64_t to = (uint64_t)b->o.connect_timeout_ms * 1000000u;
    bool any_up = false;
    for (unsigned k = 0; k < w->nsh; k++) {
        shard_tick(w, &w->sh[k], now, to);
        any_up = any_up || w->sh[k].cmd.up;
    }
    if (any_up) {
        uint64_t every = (uint64_t)b->o.presence_ttl_ms * 1000000u / 3;
        if (!w->last_refresh_ns || now - w->last_refresh_ns >= every) {
            w->last_refresh_ns = now;
            refresh_alive(w);
            for (size_t i = 0; i < w->tab_cap; i++)
                for (rtopic *t = w->tab[i]; t; t = t->next)
                    if (t->present) {
                        t->pres_dirty = true;
                        w->pres_any_dirty = true;
                    }
        }
        if (w->pres_any_dirty) {
            w->pres_any_dirty = false;
            for (size_t i = 0; i < w->tab_cap; i++)
                for (rtopic *t = w->tab[i]; t; t = t->next)
                    if (t->pres_dirty) {
                        dx__rb_presence_push(w, t); /* stays dirty while its server is down */
                        if (t->pres_dirty)
                            w->pres_any_dirty = true;
                    }
        }
    }
    if (w->uc_dirty && any_up)
        dx__rb_uc_sync(w);
    if (w->unsub_due)
        unsub_batch(w);
    dx__rr_tick(w);
    dx__rb_cluster_map(w);
    if (w->catch_due) { /* catch-ups whose read could not go out yet (each waits for its server) */
        w->catch_due = false;
        for (size_t i = 0; i < w->tab_cap; i++)
            for (rtopic *t = w->tab[i]; t; t = t->next)
                if (t->catching && !t->catch_out)
                    dx__rb_catch_start(w, t);
    }
    for (rreq *r = w->discs, *next; r; r = next) {
        next = r->next;
        if (now >= r->deadline_ns)
            dx__rb_disc_finish(w, r, 0);
    }
    if (now - w->last_sweep_ns > UINT64_C(5000000000)) {
        w->last_sweep_ns = now;
        sweep(w, now);
    }
    dx__rb_worker_flush(w);
}

/* ---- disconnect across nodes ------------------------------------------------------- */

static void disc_unref(rreq *r)
{
    if (--r->refs == 0)
        dx__free(NULL, r);
}

void dx__rb_disc_finish(rworker *w, rreq *r, int err)
{
    if (r->done)
        return;
    r->done = true;
    for (rreq **pp = &w->discs; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    if (!w->freeing)
        r->fn.count(r->ud, err, r->count);
    disc_unref(r);
}

void dx__rb_on_disc_pub(dx__rio *io, void *reply, void *pd)
{
    (void)io;
    rreq *r = pd;
    redisReply *rep = reply;
    if (!r->done) {
        if (!rep || rep->type != REDIS_REPLY_INTEGER) {
            dx__rb_disc_finish(r->w, r, DX_EIO);
        } else {
            r->expected = rep->integer;
            if (r->got >= r->expected)
                dx__rb_disc_finish(r->w, r, 0);
        }
    }
    disc_unref(r);
}

void dx__rb_ctl_message(rshard *sh, const char *s, size_t n)
{
    rworker *w = sh->w;
    /* cluster: a PUBLISH reaches every node, each worker hears it on each
     * of its connections: only the first one's count (where it publishes) */
    if (w->b->o.cluster && sh->index != 0)
        return;
    /* "d <tag> <user>" or "r <tag> <count>" */
    if (n < 4 || s[1] != ' ')
        return;
    const char *tag = s + 2;
    const char *sp = memchr(tag, ' ', n - 2);
    if (!sp)
        return;
    size_t taglen = (size_t)(sp - tag);
    const char *arg = sp + 1;
    size_t alen = n - (size_t)(arg - s);
    if (s[0] == 'd') {
        size_t closed = w->ev && w->ev->disconnect_user ? w->ev->disconnect_user(w->ud, arg, alen) : 0;
        char msg[128];
        int m = snprintf(msg, sizeof msg, "r %.*s %zu", (int)(taglen < 80 ? taglen : 80), tag, closed);
        const char *argv[] = {"PUBLISH", CTL_CHANNEL, msg};
        size_t lens[] = {7, sizeof CTL_CHANNEL - 1, (size_t)m};
        (void)dx__rb_cmd_argv(&sh->cmd, dx__rb_on_ignore, NULL, 3, argv, lens); /* where it came from */
        return;
    }
    if (s[0] != 'r')
        return;
    /* ours: "<member>.<id>" */
    size_t ml = strlen(w->member);
    if (taglen <= ml + 1 || memcmp(tag, w->member, ml) != 0 || tag[ml] != '.')
        return;
    bool ok = true;
    uint64_t id = dx__rb_parse_u64(tag + ml + 1, taglen - ml - 1, &ok);
    uint64_t cnt = dx__rb_parse_u64(arg, alen, &ok);
    if (!ok)
        return;
    for (rreq *r = w->discs; r; r = r->next) {
        if (r->id == id) {
            r->got++;
            r->count += cnt;
            if (r->expected >= 0 && r->got >= r->expected)
                dx__rb_disc_finish(w, r, 0);
            return;
        }
    }
}

