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
    return &w->sh[dx__rb_server_of(w->b, name, len)];
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
    if (s->url.tls) {
        snprintf(why, why_len,
                 "rediss:// (TLS) needs hiredis >= 1.0 with hiredis_ssl; this build has hiredis %d.%d "
                 "(Debian 12): use redis:// on a private network, or a TLS tunnel (stunnel) to Redis",
                 HIREDIS_MAJOR, HIREDIS_MINOR);
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
        for (unsigned j = 0; j < i; j++) {
            const rserver *o = &b->srv[j];
            if (strcmp(o->label, b->srv[i].label) == 0 && o->url.db == b->srv[i].url.db) {
                snprintf(why, why_len, "Redis URLs %u and %u name the same server and database (%s)", j + 1, i + 1,
                         o->label);
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
