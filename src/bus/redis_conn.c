/*
 * src/bus/redis_conn.c: the Redis bus's connections (redis_int.h): each
 * worker's command and pub/sub connections to Redis (connect, setup,
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

void dx__rb_chan_down(rworker *w, bool pat, const char *ch, size_t len)
{
    if (pat) {
        rpat *p = dx__rb_pat_find(w, ch, len);
        if (!p || p->state == S_NONE)
            return;
        if (p->state != S_UNSUBSCRIBING)
            p->state = S_SUBSCRIBING; /* its owner subscribes again and confirms */
        /* topics seen through a pattern: read back once it is active again */
        for (size_t i = 0; i < w->tab_cap; i++)
            for (rtopic *t = w->tab[i]; t; t = t->next)
                if (t->state == S_NONE && t->refs <= 0 && t->have_last)
                    t->need_catch = true;
        return;
    }
    if (len <= MSG_PREFIX_LEN)
        return;
    rtopic *t = dx__rb_topic_find(w, ch + MSG_PREFIX_LEN, len - MSG_PREFIX_LEN);
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
    /* reads of t whose barrier can no longer come (it travels with t's
     * messages): failed (the answer would not be ordered with the live
     * entries); an answer still out frees its request when it comes */
    for (rreq **pp = &w->barriers; *pp;) {
        rreq *r = *pp;
        if (r->t != t) {
            pp = &r->next;
            continue;
        }
        *pp = r->next;
        r->next = NULL;
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
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    rconn *c = ac->data;
    if (c->ac != ac)
        return; /* dropped by us already */
    c->ac = NULL;
    dx__rb_conn_down(c, ac->errstr[0] ? ac->errstr : "connection closed");
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    rconn *c = ac->data;
    if (status != REDIS_OK && c->ac == ac) {
        c->ac = NULL; /* hiredis frees ac after this callback */
        dx__rb_conn_down(c, ac->errstr[0] ? ac->errstr : "connect failed");
    }
}

/* Drops c's context (if any) and runs dx__rb_conn_down. Pending callbacks run
 * with NULL replies (failing their requests). */
static void conn_drop(rconn *c, const char *why)
{
    redisAsyncContext *ac = c->ac;
    c->ac = NULL;
    if (ac)
        redisAsyncFree(ac);
    dx__rb_conn_down(c, why);
}

void dx__rb_conn_down(rconn *c, const char *why)
{
    rworker *w = c->w;
    rbus *b = w->b;
    bool was = c->up;
    c->up = false;
    dx__rb_set_health(w);
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
        dx__rb_log(b, DX_LOG_WARN, "redis bus: worker %u: %s connection to Redis lost: %s (retrying)", w->index,
             c->is_sub ? "pub/sub" : "command", why);
    if (c->is_sub) {
        /* the channels this worker holds for the node: each worker that
         * wants one is told (dx__rb_chan_down, through its queue) */
        dx__rr_conn_down(w);
    } else {
        w->ping_sent_ns = 0;
        w->stuck = false;
        for (rreq *r = w->discs; r; r = r->next)
            if (r->deadline_ns > now)
                r->deadline_ns = now; /* no reply can come through this connection: answer with what came */
    }
}

static void on_hs_reply(redisAsyncContext *ac, void *reply, void *pd)
{
    rconn *c = pd;
    redisReply *r = reply;
    if (!r || c->ac != ac)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        if (c->attempts == 0) /* once per run of failures */
            dx__rb_log(c->w->b, DX_LOG_ERROR, "redis bus: Redis refused the connection setup: %s", r->str);
        conn_drop(c, "setup refused");
    }
}

static void on_ping(redisAsyncContext *ac, void *reply, void *pd)
{
    rconn *c = pd;
    rworker *w = c->w;
    if (!reply || c->ac != ac || w->freeing)
        return;
    redisReply *r = reply;
    uint64_t now = dx__now_ns(NULL);
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->type == REDIS_REPLY_STRING &&
        r->element[1]->type == REDIS_REPLY_STRING && w->ping_sent_ns) {
        bool ok = true;
        uint64_t sec = dx__rb_parse_u64(r->element[0]->str, r->element[0]->len, &ok);
        uint64_t usec = dx__rb_parse_u64(r->element[1]->str, r->element[1]->len, &ok);
        if (ok) {
            int64_t mid_ms = (int64_t)((w->ping_sent_ns + now) / 2 / 1000000u);
            w->clock_off_ms = (int64_t)(sec * 1000u + usec / 1000u) - mid_ms;
            w->have_clock = true;
        }
    }
    w->ping_sent_ns = 0;
    if (!c->up) {
        c->up = true;
        c->attempts = 0;
        if (c->was_up) {
            atomic_fetch_add_explicit(&w->b->st_reconnects, 1, memory_order_relaxed);
            dx__rb_log(w->b, DX_LOG_INFO, "redis bus: worker %u: command connection to Redis restored", w->index);
        } else if (w->index == 0) {
            dx__rb_log(w->b, DX_LOG_INFO, "redis bus: connected to Redis at %s (db %d) as node %s",
                       w->b->url.unix_socket ? w->b->url.path : w->b->addr, w->b->url.db, w->b->node);
        }
        c->was_up = true;
        dx__rb_set_health(w);
        w->last_refresh_ns = 0; /* presence and liveness now */
        for (size_t i = 0; i < w->tab_cap; i++)
            for (rtopic *t = w->tab[i]; t; t = t->next) {
                if (t->present || t->pres_pushed) {
                    t->pres_dirty = true;
                    w->pres_any_dirty = true;
                }
                /* catch-ups that waited for this connection: their reads
                 * start from the last offset delivered */
                if ((t->need_catch && (t->state == S_ACTIVE || (t->refs <= 0 && w->sub.up))) ||
                    (t->catching && !t->catch_out))
                    dx__rb_catch_start(w, t);
            }
    }
}

static int conn_start(rconn *c)
{
    rworker *w = c->w;
    rbus *b = w->b;
    redisAsyncContext *ac = b->url.unix_socket ? redisAsyncConnectUnix(b->url.path)
                                               : redisAsyncConnect(b->addr, b->url.port);
    c->started_ns = dx__now_ns(NULL);
    if (!ac)
        return DX_ENOMEM;
    if (ac->err) {
        char why[128];
        snprintf(why, sizeof why, "%s", ac->errstr);
        redisAsyncFree(ac);
        dx__rb_conn_down(c, why);
        return 0;
    }
    ac->data = c;
    int rc = dx__redis_loop_attach(w->loop, ac, dx__rb_after_event, w);
    if (rc) {
        redisAsyncFree(ac);
        dx__rb_conn_down(c, "cannot watch the socket");
        return 0;
    }
    c->ac = ac;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* setup, pipelined: AUTH, SELECT, then (commands) the scripts and a PING
     * whose answer marks the connection up, or (pub/sub) the subscriptions */
    if (b->url.pass[0]) {
        if (b->url.user[0])
            redisAsyncCommand(ac, on_hs_reply, c, "AUTH %s %s", b->url.user, b->url.pass);
        else
            redisAsyncCommand(ac, on_hs_reply, c, "AUTH %s", b->url.pass);
    }
    if (b->url.db)
        redisAsyncCommand(ac, on_hs_reply, c, "SELECT %d", b->url.db);
    if (!c->is_sub) {
        for (int i = 0; i < DX__REDIS_LUA_N; i++)
            redisAsyncCommand(ac, on_hs_reply, c, "SCRIPT LOAD %s", dx__redis_lua[i]);
        w->ping_sent_ns = dx__now_ns(NULL);
        redisAsyncCommand(ac, on_ping, c, "TIME");
        return 0;
    }
    /* the topics and patterns this worker holds for the node (redis_relay.c:
     * every worker's interests), its barrier channel, then the control
     * channel (its confirmation marks the connection up) */
    c->up = true; /* let dx__rb_redis_sub write; the flag is reset below */
    dx__rr_conn_start(w); /* the channels this worker holds for the node */
    const char *names[2] = {w->wchan, CTL_CHANNEL};
    size_t lens[2] = {strlen(w->wchan), sizeof CTL_CHANNEL - 1};
    (void)dx__rb_redis_sub(w, "SUBSCRIBE", names, lens, 2);
    c->up = false;
    return 0;
}

/* ---- presence and liveness ------------------------------------------------------ */

void dx__rb_on_ignore(redisAsyncContext *ac, void *reply, void *pd)
{
    (void)ac;
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
    if (dx__rb_cmd_argv(&w->cmd, dx__rb_on_ignore, NULL, 13, argv, lens) == 0) {
        t->pres_dirty = false;
        t->pres_pushed = t->present > 0;
    }
    dx_buf_deinit(&v);
}

static void refresh_alive(rworker *w)
{
    char key[80];
    int n = snprintf(key, sizeof key, "dx:alive:%s", w->member);
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%u", w->b->o.presence_ttl_ms);
    const char *argv[] = {"SET", key, "1", "PX", ttl};
    size_t lens[] = {3, (size_t)n, 1, 2, strlen(ttl)};
    (void)dx__rb_cmd_argv(&w->cmd, dx__rb_on_ignore, NULL, 5, argv, lens);
}

/* ---- the tick ----------------------------------------------------------------------- */

static void unsub_batch(rworker *w)
{
    w->unsub_due = false; /* sent to the channels' owners (redis_relay.c): no connection of w needed */
    size_t cap = 64, n = 0;
    const char **names = dx__alloc(NULL, cap * sizeof *names);
    size_t *lens = dx__alloc(NULL, cap * sizeof *lens);
    char *chans = dx__alloc(NULL, cap * (DX__GW_TOPIC_MAX + MSG_PREFIX_LEN + 1));
    if (!names || !lens || !chans) {
        w->unsub_due = true;
        goto out;
    }
    for (size_t i = 0; i < w->tab_cap; i++) {
        for (rtopic *t = w->tab[i]; t; t = t->next) {
            if (t->refs > 0 || t->state != S_ACTIVE || t->waiting)
                continue;
            if (n == cap) {
                w->unsub_due = true; /* the rest next tick */
                break;
            }
            char *ch = chans + n * (DX__GW_TOPIC_MAX + MSG_PREFIX_LEN + 1);
            lens[n] = (size_t)snprintf(ch, DX__GW_TOPIC_MAX + MSG_PREFIX_LEN + 1, MSG_PREFIX "%s", t->bt->name);
            names[n++] = ch;
            t->state = S_UNSUBSCRIBING;
        }
    }
    if (n && dx__rb_send_sub(w, "UNSUBSCRIBE", names, lens, n) != 0)
        w->unsub_due = true;
    for (rpat **pp = &w->pats; *pp;) {
        rpat *p = *pp;
        if (p->refs <= 0 && p->state == S_ACTIVE) {
            const char *nm[1] = {p->name};
            size_t ln[1] = {p->len};
            if (dx__rb_send_sub(w, "PUNSUBSCRIBE", nm, ln, 1) == 0)
                p->state = S_UNSUBSCRIBING;
        }
        if (p->refs <= 0 && p->state == S_NONE) {
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
out:
    dx__free(NULL, names);
    dx__free(NULL, lens);
    dx__free(NULL, chans);
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

void dx__rb_on_tick(dx_timer *tm, void *ud)
{
    (void)tm;
    rworker *w = ud;
    rbus *b = w->b;
    uint64_t now = dx__now_ns(NULL);
    uint64_t to = (uint64_t)b->o.connect_timeout_ms * 1000000u;
    rconn *cs[2] = {&w->cmd, &w->sub};
    for (int i = 0; i < 2; i++) {
        rconn *c = cs[i];
        if (!c->ac && now >= c->next_try_ns)
            (void)conn_start(c);
        else if (c->ac && !c->up && now - c->started_ns > to)
            conn_drop(c, "connect timed out");
    }
    if (w->cmd.up) {
        /* Redis does not answer (a TIME or a publish out too long): new
         * requests are refused at once; the connections go (requests out
         * fail, reconnecting starts) once every publish out is past its
         * deadline, so none answered 503 can still be published */
        bool late = (w->ping_sent_ns && now - w->ping_sent_ns > to) || (w->pubs && now - w->pubs->sent_ns > to);
        if (!w->stuck && late) {
            w->stuck = true;
            dx__rb_set_health(w);
            dx__rb_log(b, DX_LOG_WARN, "redis bus: worker %u: Redis does not answer", w->index);
        }
        if (w->stuck && (!w->pubs_tail || now - w->pubs_tail->sent_ns > to)) {
            conn_drop(&w->cmd, "Redis does not answer");
            if (w->sub.ac)
                conn_drop(&w->sub, "Redis does not answer on the command connection");
        } else if (!w->ping_sent_ns && now - w->last_ping_ns >= UINT64_C(1000000000)) {
            w->last_ping_ns = now;
            const char *argv[] = {"TIME"};
            size_t lens[] = {4};
            if (dx__rb_cmd_argv(&w->cmd, on_ping, &w->cmd, 1, argv, lens) == 0)
                w->ping_sent_ns = now;
        }
    }
    if (w->cmd.up) {
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
                        dx__rb_presence_push(w, t);
                        if (t->pres_dirty)
                            w->pres_any_dirty = true;
                    }
        }
    }
    if (w->unsub_due)
        unsub_batch(w);
    dx__rr_tick(w);
    if (w->catch_due && w->cmd.up) { /* catch-ups whose read could not go out yet */
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

void dx__rb_on_disc_pub(redisAsyncContext *ac, void *reply, void *pd)
{
    (void)ac;
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

void dx__rb_ctl_message(rworker *w, const char *s, size_t n)
{
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
        (void)dx__rb_cmd_argv(&w->cmd, dx__rb_on_ignore, NULL, 3, argv, lens);
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

