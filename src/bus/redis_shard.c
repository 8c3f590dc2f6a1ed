/*
 * src/bus/redis_shard.c: the Redis bus's servers and routing (redis_int.h).
 *
 * `--redis URL1,URL2,...` names independent Redis servers (at most
 * DX__REDIS_SHARDS_MAX). Each topic lives on one of them: its offset
 * counter, stream, epoch, presence keys and its pub/sub channel. The owner
 * is found by consistent hashing: every server has DX__REDIS_RING_POINTS
 * points on a 64-bit circle (positions derived from the server's index in
 * the list, so every node builds the same ring when it lists the same
 * servers in the same order); a name belongs to the first point at or
 * after its own position. Adding a server at the end of the list moves
 * about 1/N of the names, all of them to the new server.
 *
 * A user's connection counts and the control messages of a disconnect of
 * that user go to the server that owns the user id, hashed the same way.
 *
 * Redis Cluster (`--redis-cluster`): the URLs are seed nodes. Each worker
 * reads the slot map (CLUSTER SLOTS) once a connection is up, connects to
 * every master it names (one rshard each, up to DX__REDIS_SHARDS_MAX), and
 * routes a topic to the master of its slot (CRC16 of the hash tag: the
 * keys are dx:{T}:..., the channel dx:m:{T}). A MOVED answer updates that
 * slot, asks for the map again and sends the command to the node named;
 * ASK sends it there once, after ASKING; at most DX__REDIS_REDIRECTS_MAX
 * redirections per command, then it fails (503).
 */
#define _GNU_SOURCE
#include "bus/redis_int.h"

#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A name's position on the ring: FNV-1a, then a full avalanche (FNV's
 * high bits alone vary too little between similar names). */
static uint64_t ring_pos(const char *name, size_t len)
{
    return mix64(hash_name(name, len));
}

static int point_cmp(const void *a, const void *b)
{
    const rpoint *x = a, *y = b;
    if (x->pos != y->pos)
        return x->pos < y->pos ? -1 : 1;
    return x->srv < y->srv ? -1 : x->srv > y->srv;
}

unsigned dx__rb_server_of(const rbus *b, const char *name, size_t len)
{
    if (b->nsrv == 1)
        return 0;
    uint64_t h = ring_pos(name, len);
    size_t lo = 0, hi = b->nring; /* the first point with pos >= h */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (b->ring[mid].pos < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    return b->ring[lo == b->nring ? 0 : lo].srv;
}

rshard *dx__rb_shard_of(rworker *w, const char *name, size_t len)
{
    if (w->slots) {
        uint8_t k = w->slots[dx__rb_slot(name, len)];
        return &w->sh[k == 0xff ? 0 : k]; /* not known yet: a seed answers MOVED */
    }
    return &w->sh[dx__rb_server_of(w->b, name, len)];
}

/* ---- Redis Cluster ------------------------------------------------------------- */

/* CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0), as Redis Cluster uses. */
static uint16_t crc16(const char *p, size_t n)
{
    uint16_t c = 0;
    for (size_t i = 0; i < n; i++) {
        c ^= (uint16_t)((uint8_t)p[i] << 8);
        for (int k = 0; k < 8; k++)
            c = (uint16_t)(c & 0x8000 ? (c << 1) ^ 0x1021 : c << 1);
    }
    return c;
}

unsigned dx__rb_slot(const char *name, size_t len)
{
    /* the keys are "dx:{name}...": the tag is name up to its first '}' */
    const char *close = memchr(name, '}', len);
    size_t n = close ? (size_t)(close - name) : len;
    return crc16(name, n ? n : len) & 16383u;
}

int dx__rb_cluster_node(rworker *w, const char *host, size_t hlen, int port)
{
    char label[300];
    if (hlen == 0 || hlen >= INET6_ADDRSTRLEN || port <= 0 || port > 65535)
        return -1;
    snprintf(label, sizeof label, "%.*s:%d", (int)hlen, host, port);
    unsigned n = atomic_load_explicit(&w->nsh, memory_order_relaxed);
    for (unsigned i = 0; i < n; i++)
        if (strcmp(w->sh[i].sv.label, label) == 0)
            return (int)i;
    char addr[INET6_ADDRSTRLEN];
    memcpy(addr, host, hlen);
    addr[hlen] = 0;
    unsigned char tmp[16];
    if (inet_pton(AF_INET, addr, tmp) != 1 && inet_pton(AF_INET6, addr, tmp) != 1) {
        dx__rb_log(w->b, DX_LOG_WARN, "redis bus: cluster node '%s' is not an IP address: not used", label);
        return -1;
    }
    if (n >= DX__REDIS_SHARDS_MAX) {
        dx__rb_log(w->b, DX_LOG_ERROR, "redis bus: cluster node %s: more than %d masters (DX__REDIS_SHARDS_MAX)",
                   label, DX__REDIS_SHARDS_MAX);
        return -1;
    }
    rshard *s = &w->sh[n];
    memset(s, 0, sizeof *s);
    s->w = w;
    s->index = n;
    s->sv.url = w->sh[0].sv.url; /* the seed's user and password */
    snprintf(s->sv.url.host, sizeof s->sv.url.host, "%s", addr);
    s->sv.url.port = port;
    s->sv.url.unix_socket = false;
    snprintf(s->sv.addr, sizeof s->sv.addr, "%s", addr);
    snprintf(s->sv.label, sizeof s->sv.label, "%s", label);
    s->cmd.w = s->sub.w = w;
    s->cmd.s = s->sub.s = s;
    s->sub.is_sub = true;
    atomic_init(&s->healthy, false);
    atomic_store_explicit(&w->nsh, n + 1, memory_order_release); /* connected by the next tick */
    if (w->index == 0)
        dx__rb_log(w->b, DX_LOG_INFO, "redis bus: cluster node %s found", label);
    return (int)n;
}

/* A new slot map: each topic's reads and presence go to its slot's node;
 * the channels this worker holds for the node that wait for a node follow. */
static void retarget(rworker *w)
{
    for (size_t i = 0; i < w->tab_cap; i++)
        for (rtopic *t = w->tab[i]; t; t = t->next)
            dx__rb_topic_move(w, t, dx__rb_shard_of(w, t->bt->name, t->bt->len));
    dx__rr_retarget(w);
}

static void on_slots(dx__rio *io, void *reply, void *pd)
{
    (void)io;
    rworker *w = pd;
    redisReply *r = reply;
    if (w->freeing)
        return;
    w->map_out = false;
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        if (r && r->type == REDIS_REPLY_ERROR)
            dx__rb_log(w->b, DX_LOG_ERROR, "redis bus: CLUSTER SLOTS failed: %s (is it a cluster?)", r->str);
        w->map_due = true;
        return;
    }
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER || e->element[2]->type != REDIS_REPLY_ARRAY ||
            e->element[2]->elements < 2 || e->element[2]->element[0]->type != REDIS_REPLY_STRING ||
            e->element[2]->element[1]->type != REDIS_REPLY_INTEGER)
            continue;
        long long lo = e->element[0]->integer, hi = e->element[1]->integer;
        redisReply *m = e->element[2];
        int k = dx__rb_cluster_node(w, m->element[0]->str, m->element[0]->len, (int)m->element[1]->integer);
        if (k < 0 || lo < 0 || hi > 16383)
            continue;
        for (long long sl = lo; sl <= hi; sl++)
            w->slots[sl] = (uint8_t)k;
    }
    atomic_store_explicit(&w->map_ok, true, memory_order_release);
    retarget(w);
}

void dx__rb_cluster_map(rworker *w)
{
    if (!w->b->o.cluster || !w->map_due || w->map_out)
        return;
    uint64_t now = dx__now_ns(NULL);
    if (w->map_asked_ns && now - w->map_asked_ns < (uint64_t)DX__REDIS_MAP_MIN_MS * 1000000u)
        return;
    unsigned n = w->nsh;
    for (unsigned i = 0; i < n; i++) {
        rshard *s = &w->sh[i];
        if (!s->cmd.up || s->stuck)
            continue;
        const char *argv[] = {"CLUSTER", "SLOTS"};
        size_t lens[] = {7, 5};
        if (dx__rb_cmd_argv(&s->cmd, on_slots, w, 2, argv, lens) == 0) {
            w->map_due = false;
            w->map_out = true;
            w->map_asked_ns = now;
            return;
        }
    }
}

int dx__rb_redirect(rworker *w, const char *err, size_t n, unsigned *slot, bool *ask)
{
    size_t skip;
    if (n > 6 && memcmp(err, "MOVED ", 6) == 0) {
        skip = 6;
        *ask = false;
    } else if (n > 4 && memcmp(err, "ASK ", 4) == 0) {
        skip = 4;
        *ask = true;
    } else {
        return -1;
    }
    const char *p = err + skip, *end = err + n;
    const char *sp = memchr(p, ' ', (size_t)(end - p));
    if (!sp)
        return -1;
    bool ok = true;
    uint64_t sl = dx__rb_parse_u64(p, (size_t)(sp - p), &ok);
    const char *hp = sp + 1;
    const char *colon = NULL;
    for (const char *q = hp; q < end; q++)
        if (*q == ':')
            colon = q; /* the last one: IPv6 addresses hold colons */
    if (!ok || sl > 16383 || !colon)
        return -1;
    uint64_t port = dx__rb_parse_u64(colon + 1, (size_t)(end - colon - 1), &ok);
    if (!ok || port > 65535)
        return -1;
    *slot = (unsigned)sl;
    return dx__rb_cluster_node(w, hp, (size_t)(colon - hp), (int)port);
}

/* A keyed command in flight: its arguments, kept to be sent again. */
typedef struct rroute {
    rworker *w;
    dx__rio_fn *fn;
    void *pd;
    unsigned tries;
    int argc;
    const char **argv;
    size_t *lens;
} rroute;

static void on_routed(dx__rio *io, void *reply, void *pd)
{
    rroute *rt = pd;
    rworker *w = rt->w;
    redisReply *r = reply;
    if (r && r->type == REDIS_REPLY_ERROR && !w->freeing) {
        unsigned slot = 0;
        bool ask = false;
        int k = dx__rb_redirect(w, r->str, r->len, &slot, &ask);
        if (k >= 0 && rt->tries < DX__REDIS_REDIRECTS_MAX) {
            if (!ask) {
                w->slots[slot] = (uint8_t)k;
                w->map_due = true;
                dx__rb_cluster_map(w);
            }
            rshard *s = &w->sh[k];
            rt->tries++;
            if (s->cmd.io && s->cmd.up) {
                if (ask)
                    dx__rio_fmt(s->cmd.io, dx__rb_on_ignore, NULL, "ASKING");
                if (dx__rio_argv(s->cmd.io, on_routed, rt, rt->argc, rt->argv, rt->lens) == 0)
                    return;
            }
        } else if (k >= 0) {
            dx__rb_log(w->b, DX_LOG_WARN, "redis bus: a command was redirected %u times (DX__REDIS_REDIRECTS_MAX): "
                       "failed", rt->tries);
        }
    }
    rt->fn(io, reply, rt->pd);
    dx__free(NULL, rt);
}

int dx__rb_cmd_routed(rconn *c, dx__rio_fn *fn, void *pd, int argc, const char **argv, const size_t *lens)
{
    if (!c->io || !c->up)
        return DX_EIO;
    size_t total = 0;
    for (int i = 0; i < argc; i++)
        total += lens[i];
    rroute *rt = dx__alloc(NULL, sizeof *rt + (size_t)argc * (sizeof *rt->argv + sizeof *rt->lens) + total);
    if (!rt)
        return DX_ENOMEM;
    rt->w = c->w;
    rt->fn = fn;
    rt->pd = pd;
    rt->tries = 0;
    rt->argc = argc;
    rt->argv = (const char **)(rt + 1);
    rt->lens = (size_t *)(rt->argv + argc);
    char *p = (char *)(rt->lens + argc);
    for (int i = 0; i < argc; i++) {
        memcpy(p, argv[i], lens[i]);
        rt->argv[i] = p;
        rt->lens[i] = lens[i];
        p += lens[i];
    }
    if (dx__rio_argv(c->io, on_routed, rt, argc, rt->argv, rt->lens) != 0) {
        dx__free(NULL, rt);
        return DX_EIO;
    }
    return 0;
}

/* ---- cluster subscriptions ---------------------------------------------------- */

void dx__rb_topic_move(rworker *w, rtopic *t, rshard *ns)
{
    if (t->s == ns)
        return;
    t->s = ns;
    if (t->present || t->pres_pushed) {
        t->pres_dirty = true;
        w->pres_any_dirty = true;
    }
}

/* Cluster: an error answer on sh's pub/sub connection (an SSUBSCRIBE sent
 * to a node that does not have the channel's slot, or an SUNSUBSCRIBE to
 * one that lost it: MOVED). The error names the slot, not the channel. */
void dx__rb_sub_error(rworker *w, rshard *sh, redisReply *r)
{
    unsigned slot = 0;
    bool ask = false;
    int k = dx__rb_redirect(w, r->str, r->len, &slot, &ask);
    if (k < 0) {
        dx__rb_log(w->b, DX_LOG_WARN, "redis bus: Redis %s refused a subscription: %s", sh->sv.label, r->str);
        return;
    }
    if (!ask)
        w->slots[slot] = (uint8_t)k;
    w->map_due = true;
    dx__rb_cluster_map(w);
    dx__rr_sub_error(sh, slot, k); /* the shard channels this worker holds for the node */
}

int dx__rb_refuse(rbus *b, int err)
{
    atomic_fetch_add_explicit(&b->st_refused, 1, memory_order_relaxed);
    return err;
}

static int server_init(rserver *s, const char *url, size_t n, unsigned i, char *why, size_t why_len)
{
    char one[2048];
    if (n == 0 || n >= sizeof one) {
        snprintf(why, why_len, "Redis URL %u of the list is %s", i + 1, n ? "too long" : "empty");
        return DX_EINVAL;
    }
    memcpy(one, url, n);
    one[n] = 0;
    char w2[200];
    if (dx__redis_url_parse(one, &s->url, w2, sizeof w2) != 0) {
        if (i == 0 && !memchr(url + n, ',', 1))
            snprintf(why, why_len, "%s", w2);
        else
            snprintf(why, why_len, "Redis URL %u of the list: %s", i + 1, w2);
        return DX_EINVAL;
    }
    if (s->url.unix_socket) {
        snprintf(s->label, sizeof s->label, "%s", s->url.path);
        return 0;
    }
    /* resolved once, here (not on a loop): hiredis's connect would block on DNS */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int gr = getaddrinfo(s->url.host, NULL, &hints, &res);
    if (gr != 0 || !res) {
        snprintf(why, why_len, "Redis host '%s' does not resolve: %s", s->url.host, gai_strerror(gr));
        return DX_EADDR;
    }
    void *addr = res->ai_family == AF_INET6 ? (void *)&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr
                                            : (void *)&((struct sockaddr_in *)res->ai_addr)->sin_addr;
    inet_ntop(res->ai_family, addr, s->addr, sizeof s->addr);
    freeaddrinfo(res);
    snprintf(s->label, sizeof s->label, "%s:%d", s->addr, s->url.port);
    return 0;
}

int dx__rb_servers_init(rbus *b, const char *urls, char *why, size_t why_len)
{
    if (!urls) {
        snprintf(why, why_len, "no Redis URL");
        return DX_EINVAL;
    }
    unsigned n = 1;
    for (const char *p = urls; *p; p++)
        n += *p == ',';
    if (n > DX__REDIS_SHARDS_MAX) {
        snprintf(why, why_len, "%u Redis URLs: at most %d (DX__REDIS_SHARDS_MAX)", n, DX__REDIS_SHARDS_MAX);
        return DX_EINVAL;
    }
    b->srv = dx__alloc(NULL, n * sizeof *b->srv);
    b->ring = dx__alloc(NULL, (size_t)n * DX__REDIS_RING_POINTS * sizeof *b->ring);
    if (!b->srv || !b->ring) {
        snprintf(why, why_len, "out of memory");
        return DX_ENOMEM;
    }
    memset(b->srv, 0, n * sizeof *b->srv);
    const char *p = urls;
    for (unsigned i = 0; i < n; i++) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        while (len && (*p == ' ' || *p == '\t')) { /* "a, b" reads as "a,b" */
            p++;
            len--;
        }
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        int rc = server_init(&b->srv[i], p, len, i, why, why_len);
        if (rc)
            return rc;
        if (b->o.cluster && b->srv[i].url.db) {
            snprintf(why, why_len, "Redis URL %u: a Redis Cluster has database 0 only (--redis-cluster)", i + 1);
            return DX_EINVAL;
        }
        for (unsigned j = 0; j < i; j++) {
            const rserver *o = &b->srv[j];
            /* pub/sub is not per database: two databases of one server
             * would hear each other's channels (and share one core) */
            if (strcmp(o->label, b->srv[i].label) == 0) {
                snprintf(why, why_len, "Redis URLs %u and %u name the same server (%s)", j + 1, i + 1, o->label);
                return DX_EINVAL;
            }
        }
        p = end ? end + 1 : p + len;
    }
    b->nsrv = n;
    b->nring = 0;
    for (unsigned i = 0; i < n; i++)
        for (unsigned v = 0; v < DX__REDIS_RING_POINTS; v++)
            b->ring[b->nring++] = (rpoint){mix64(((uint64_t)(i + 1) << 32) ^ (v * 0x9e3779b97f4a7c15ull)), i};
    qsort(b->ring, b->nring, sizeof *b->ring, point_cmp);
    return 0;
}

void dx__rb_servers_free(rbus *b)
{
    dx__free(NULL, b->srv);
    dx__free(NULL, b->ring);
    b->srv = NULL;
    b->ring = NULL;
}
