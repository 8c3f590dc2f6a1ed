/*
 * src/ws/client.c: the client endpoint (see duplex/client.h).
 *
 * Layer: ws. A client owns at most one connection at a time; the connection
 * itself is the same dx_conn as on the server side (conn.c), in the client
 * role: frames masked, the upgrade request sent and the 101 checked here.
 *
 * One attempt: resolve (numeric hosts at once, names on a short-lived thread
 * that posts its answer back to the loop, so the loop never blocks on DNS)
 * → TCP connect to each address in turn (or to a Unix socket) → optional
 * HTTP CONNECT or SOCKS5 through a proxy → optional TLS (verification on by
 * default, a client certificate when configured) → upgrade request → 101.
 * A failed attempt or a lost connection is followed, when reconnecting is on,
 * by a delay drawn uniformly from [0, min(cap, base * 2^(n-1))] ("full
 * jitter"), n counting consecutive failures. Messages sent while not open
 * wait in a bounded queue and are written, in order, right after the next
 * open; past the bound they are refused and counted.
 *
 * Lifecycle: no public call fires a callback before it returns. Starting an
 * attempt, the end of a connection and on_done after dx_client_close all
 * run from the loop's deferred list. dx_client_free inside a callback drops
 * everything at once (no callback after it returns) and frees the memory
 * once the stack has unwound; code that runs after a callback re-checks
 * cl->state (CL_DONE once closed or freed) before going on.
 */
#define _GNU_SOURCE
#include "duplex/client.h"

#include "core/log.h"
#include "core/opts.h"
#include "core/seams.h"
#include "proto/handshake.h"
#include "proto/url.h"
#include "proto/utf8.h"
#include "ws/ws.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum { CL_IDLE = 0, CL_STARTING, CL_RESOLVING, CL_CONNECTING, CL_OPEN, CL_WAITING, CL_DONE };

#define MAX_PROTOCOLS 32
#define MAX_HEADERS 64

typedef struct qmsg {
    dx_list node;
    int opcode;
    size_t len;
    uint8_t data[];
} qmsg;

/* A DNS lookup running on its own thread. The loop owns it once posted
 * back; `cl` is cleared when the client stops waiting for it. */
typedef struct resolve_req {
    dx_client *cl;
    dx_loop *loop;
    char host[DX_URL_HOST_MAX + 1];
    char port[8];
    struct addrinfo *res;
    int gai_err;
} resolve_req;

/* A parsed URL as the client keeps it: host and path point into the
 * client's string block (a dx_url holds fixed 4 KiB arrays: kept only on
 * the stack while parsing). */
typedef struct cl_url {
    const char *host;
    const char *path;
    unsigned port;
    bool tls, default_port;
} cl_url;

/* The longest Location header kept for dx_client_location (longer: not kept,
 * the attempt still fails with DX_EHANDSHAKE). */
#define CL_LOCATION_MAX 1023
/* Why a connection died, kept between its mark and its end (truncated). */
#define CL_WHY_MAX 511
#define CL_EXT_OFFER_MAX 192

/* Per-connection memory matters: `duplex bench --idle` holds one client per
 * connection (up to hundreds of thousands per process), so nothing here is a
 * fixed array sized for the worst case. Strings, the URL parts, the
 * subprotocol and header tables and the deflate offer live in one block sized
 * for this client (`strings`); a Location and a death reason are allocated
 * only while there is one. test_client_footprint pins the budget. */
struct dx_client {
    dx__ep ep; /* first */
    dx_client_options opt;
    char *strings;         /* one block: header table, protocol table, every string (see copy_strings) */
    const char **protocols;
    dx_http_header *xheaders;
    dx_ws_client_opts wsopts;
    cl_url url, proxy;
    bool use_proxy;
    bool socks;            /* the proxy speaks SOCKS5, not HTTP CONNECT */
    uint8_t socks_stage;   /* 1: method answer awaited; 2: CONNECT answer awaited */
    bool user_closed, try_next;
    char *location;        /* Location of the last 3xx answer (allocated), or NULL */
    int unix_errno;        /* a Unix-socket connect that failed at once, reported from the timer */
    dx__tls_ctx *tls;
    int state;
    dx_conn *conn;
    struct addrinfo *addrs, *next_addr;
    resolve_req *pending;
    dx__timer timer;
    unsigned attempt;
    int last_err;
    /* Lifecycle (habit 6): calls the application makes never fire a
     * callback. dx_client_connect queues `kick` (the attempt starts from the
     * loop); dx_client_close queues `done` (on_done from the loop); why a
     * connection died is kept here (allocated, or NULL) between its mark
     * and its end. */
    dx__deferred kick, done;
    char *why;
    char key[25];
    char *ext_offer;       /* the permessage-deflate offer (in `strings`), when opt.deflate.enable */
    dx_list queue;
    size_t q_msgs, q_bytes;
    dx_client_stats st;
};

static const dx_log *LOG(const dx_client *cl) { return cl->ep.loop->log; }

static void start_attempt(dx_client *cl);
static void attempt_failed(dx_client *cl, int err, const char *what);

/* ---- options ----------------------------------------------------------------- */

/* Copies every string option, the parsed URLs' host and path and room for
 * the deflate offer into one block and points the copies at it. Layout:
 * the header table, the protocol table (both pointer-aligned at the
 * block's start), then the characters. */
static int copy_strings(dx_client *cl, const dx_client_options *o, const dx_url *u, const dx_url *px)
{
    size_t need = o->n_headers * sizeof(dx_http_header) + o->n_protocols * sizeof(const char *);
    size_t tables = need;
#define SZ(s) ((s) ? strlen(s) + 1 : 0)
    need += SZ(o->url) + SZ(o->origin) + SZ(o->proxy) + SZ(o->bind_addr) + SZ(o->ca_file);
    need += SZ(o->cert_file) + SZ(o->key_file) + SZ(o->unix_path);
    for (size_t i = 0; i < o->n_protocols; i++)
        need += SZ(o->protocols[i]);
    for (size_t i = 0; i < o->n_headers; i++)
        need += SZ(o->headers[i]);
    need += SZ(u->host) + SZ(u->path);
    if (px)
        need += SZ(px->host);
    if (o->deflate.enable)
        need += CL_EXT_OFFER_MAX;
    cl->strings = dx__alloc(cl->ep.loop->seams, need ? need : 1);
    if (!cl->strings)
        return DX_ENOMEM;
    cl->xheaders = o->n_headers ? (dx_http_header *)(void *)cl->strings : NULL;
    cl->protocols =
        o->n_protocols ? (const char **)(void *)(cl->strings + o->n_headers * sizeof(dx_http_header)) : NULL;
    char *p = cl->strings + tables;
#define CP(dst, s)                                                                                                 \
    do {                                                                                                           \
        if (s) {                                                                                                   \
            size_t l_ = strlen(s) + 1;                                                                             \
            memcpy(p, s, l_);                                                                                      \
            (dst) = p;                                                                                             \
            p += l_;                                                                                               \
        }                                                                                                          \
    } while (0)
    CP(cl->opt.url, o->url);
    CP(cl->opt.origin, o->origin);
    CP(cl->opt.proxy, o->proxy);
    CP(cl->opt.bind_addr, o->bind_addr);
    CP(cl->opt.ca_file, o->ca_file);
    CP(cl->opt.cert_file, o->cert_file);
    CP(cl->opt.key_file, o->key_file);
    CP(cl->opt.unix_path, o->unix_path);
    cl->url = (cl_url){.port = u->port, .tls = u->tls, .default_port = u->default_port};
    CP(cl->url.host, u->host);
    CP(cl->url.path, u->path);
    if (px) {
        cl->proxy = (cl_url){.port = px->port, .tls = px->tls, .default_port = px->default_port};
        CP(cl->proxy.host, px->host);
    }
    if (o->deflate.enable) {
        cl->ext_offer = p;
        p += CL_EXT_OFFER_MAX;
    }
    for (size_t i = 0; i < o->n_protocols; i++)
        CP(cl->protocols[i], o->protocols[i]);
    for (size_t i = 0; i < o->n_headers; i++) {
        char *line = p;
        CP(line, o->headers[i]);
        char *colon = strchr(line, ':');
        if (!colon || colon == line)
            return DX_EINVAL;
        *colon = 0;
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        cl->xheaders[i] = (dx_http_header){line, (size_t)(colon - line), v, strlen(v)};
    }
#undef CP
#undef SZ
    cl->opt.protocols = NULL;
    cl->opt.headers = NULL;
    return 0;
}

static dx_client *client_new(dx_loop *loop, const dx_client_options *o, int *err);

dx_client *dx_client_new_sized(dx_loop *loop, const dx_client_options *user, size_t size, int *err)
{
    dx_client_options opt;
    if (!user || dx__opts_copy(&opt, sizeof opt, user, size)) {
        if (err)
            *err = DX_EINVAL;
        return NULL;
    }
    return client_new(loop, &opt, err);
}

static dx_client *client_new(dx_loop *loop, const dx_client_options *o, int *err)
{
    int e = DX_EINVAL;
    dx_client *cl = NULL;
    if (!o || !o->url || o->n_protocols > MAX_PROTOCOLS || o->n_headers > MAX_HEADERS)
        goto fail;
    e = DX_ENOMEM;
    cl = dx__alloc(loop->seams, sizeof *cl);
    if (!cl)
        goto fail;
    memset(cl, 0, sizeof *cl);
    cl->ep.loop = loop;
    cl->ep.cl = cl;
    dx_list_init(&cl->ep.conns);
    dx_list_init(&cl->queue);
    dx_list_init(&cl->kick.node);
    dx_list_init(&cl->done.node);
    dx__timer_init(&cl->timer, NULL);
    cl->opt = *o;
    /* Parsed on the stack (dx_url is large), kept compact (copy_strings). */
    dx_url u, px;
    e = DX_EINVAL;
    if (dx__url_parse(o->url, true, false, &u))
        goto fail;
    if (o->proxy) {
        /* socks5://host:port is parsed with the http:// rules (host, port). */
        const char *p = o->proxy;
        size_t skip = !strncasecmp(p, "socks5://", 9) ? 9 : !strncasecmp(p, "socks5h://", 10) ? 10 : 0;
        char tmp[DX_URL_HOST_MAX + 64];
        if (skip && (size_t)snprintf(tmp, sizeof tmp, "http://%s", p + skip) >= sizeof tmp)
            goto fail;
        if (dx__url_parse(skip ? tmp : p, false, true, &px))
            goto fail;
        if (skip && px.default_port)
            px.port = 1080;
        cl->socks = skip != 0;
        cl->use_proxy = true;
    }
    if ((e = copy_strings(cl, o, &u, cl->use_proxy ? &px : NULL)) != 0)
        goto fail;
    e = DX_EINVAL;
    if ((cl->opt.cert_file != NULL) != (cl->opt.key_file != NULL) || (cl->opt.unix_path && cl->use_proxy))
        goto fail;
    if (cl->opt.bind_addr) {
        unsigned char tmp[16];
        if (inet_pton(AF_INET, cl->opt.bind_addr, tmp) != 1 && inet_pton(AF_INET6, cl->opt.bind_addr, tmp) != 1)
            goto fail;
    }
    if (!cl->opt.backoff_base_ms)
        cl->opt.backoff_base_ms = 500;
    if (!cl->opt.backoff_cap_ms)
        cl->opt.backoff_cap_ms = 30000;
    if (cl->opt.queue_max_messages && !cl->opt.queue_max_bytes)
        cl->opt.queue_max_bytes = 1u << 20;
    if (!cl->opt.connect_timeout_ms)
        cl->opt.connect_timeout_ms = 10000;
    if (cl->url.tls) {
        char why[512];
        cl->tls = dx__tls_client_ctx_new(cl->opt.ca_file, cl->opt.insecure, why, sizeof why, &e);
        if (!cl->tls) {
            dx__log(loop->log, DX_LOG_ERROR, "client: TLS: %s", why);
            goto fail;
        }
        if (cl->opt.cert_file &&
            (e = dx__tls_client_ctx_cert(cl->tls, cl->opt.cert_file, cl->opt.key_file, why, sizeof why)) != 0) {
            dx__log(loop->log, DX_LOG_ERROR, "client: TLS: %s", why);
            goto fail;
        }
    }
    /* The connection side: the same settings block a server uses. */
    dx_server_options *so = &cl->ep.opt;
    so->max_message = o->max_message;
    so->max_fragments = o->max_fragments;
    so->max_head = o->max_head;
    so->send_high_water = o->send_high_water;
    so->send_max = o->send_max;
    so->close_timeout_ms = o->close_timeout_ms;
    so->ping_interval_ms = o->ping_interval_ms;
    so->pong_timeout_ms = o->pong_timeout_ms;
    so->handshake_timeout_ms = cl->opt.connect_timeout_ms;
    so->cb.on_message = o->cb.on_message;
    so->cb.on_drain = o->cb.on_drain;
    so->cb.on_close = o->cb.on_close;
    so->cb.on_frame = o->cb.on_frame;
    so->cb.on_pong = o->cb.on_pong;
    so->ud = o->ud;
    dx__options_defaults(so);
    if (so->send_high_water > so->send_max)
        goto fail;
    cl->ep.next_id = 1;
    dx__ws_session_cfg(&cl->ep, DX_ROLE_CLIENT);
    cl->ep.opt.deflate = o->deflate;
    if (!dx__deflate_options_valid(&o->deflate))
        goto fail;
    if (o->deflate.enable && dx__pmd_client_offer(&o->deflate, cl->ext_offer, CL_EXT_OFFER_MAX) < 0)
        goto fail;
    e = DX_ENOMEM;
    if (dx__ep_deflate_start(&cl->ep))
        goto fail;
    e = DX_EINVAL;
    cl->wsopts = (dx_ws_client_opts){
        .host = cl->url.host,
        .port = cl->url.default_port ? 0 : cl->url.port,
        .tls = cl->url.tls,
        .path = cl->url.path,
        .protocols = cl->protocols,
        .n_protocols = o->n_protocols,
        .origin = cl->opt.origin,
        .headers = cl->xheaders,
        .n_headers = o->n_headers,
        .extensions = o->deflate.enable ? cl->ext_offer : NULL,
    };
    /* Catch bad subprotocols/headers now rather than at every attempt. */
    char probe[8192], key[25];
    int n = dx__ws_client_request(probe, sizeof probe, &cl->wsopts, loop->seams, key);
    if (n < 0) {
        e = n == DX_ENOSPC ? DX_EINVAL : n;
        goto fail;
    }
    if (err)
        *err = 0;
    return cl;
fail:
    if (cl) {
        dx__tls_ctx_free(cl->tls);
        dx__pmd_ctx_free(cl->ep.pmd);
        dx__free(loop->seams, cl->strings);
        dx__free(loop->seams, cl);
    }
    if (err)
        *err = e;
    return NULL;
}

/* ---- the offline queue -------------------------------------------------------- */

static void queue_clear(dx_client *cl)
{
    dx_list *it;
    while ((it = dx_list_first(&cl->queue)) != NULL) {
        dx_list_remove(it);
        dx__free(cl->ep.loop->seams, dx_list_entry(it, qmsg, node));
    }
    cl->q_msgs = cl->q_bytes = 0;
}

static void queue_flush(dx_client *cl)
{
    dx_list *it;
    /* Stops if a write fails (the connection is marked dead): the rest stays
     * queued for the next open. */
    while (cl->conn && cl->conn->state == CS_OPEN && (it = dx_list_first(&cl->queue)) != NULL) {
        qmsg *m = dx_list_entry(it, qmsg, node);
        dx_list_remove(it);
        cl->q_msgs--;
        cl->q_bytes -= m->len;
        if (dx_conn_send(cl->conn, m->opcode, m->data, m->len) == 0)
            cl->st.flushed++;
        else
            cl->st.dropped++;
        dx__free(cl->ep.loop->seams, m);
    }
}

/* ---- attempts -------------------------------------------------------------------- */

static void done_later(dx_loop *loop, dx__deferred *d)
{
    (void)loop;
    dx_client *cl = dx_list_entry(d, dx_client, done);
    if (cl->opt.cb.on_done && !cl->ep.freeing)
        cl->opt.cb.on_done(cl, cl->opt.ud);
}

/* Stops for good. `later`: called from a public function, so on_done is
 * queued for the loop instead of fired here. */
static void finish(dx_client *cl, bool later)
{
    cl->state = CL_DONE;
    dx__timer_stop(cl->ep.loop, &cl->timer);
    if (cl->addrs) {
        freeaddrinfo(cl->addrs);
        cl->addrs = cl->next_addr = NULL;
    }
    if (later) {
        if (!dx_list_linked(&cl->done.node)) {
            cl->done.fn = done_later;
            dx__loop_later(cl->ep.loop, &cl->done);
        }
        return;
    }
    if (cl->opt.cb.on_done)
        cl->opt.cb.on_done(cl, cl->opt.ud);
}

static void on_backoff(dx__timer *t)
{
    dx_client *cl = dx_list_entry(t, dx_client, timer);
    start_attempt(cl);
}

/* After a failure or a lost connection: wait and try again, or stop. */
static void next_step(dx_client *cl)
{
    if (cl->addrs) {
        freeaddrinfo(cl->addrs);
        cl->addrs = cl->next_addr = NULL;
    }
    if (cl->user_closed || !cl->opt.reconnect) {
        finish(cl, false);
        return;
    }
    cl->attempt++;
    if (cl->opt.max_attempts && cl->attempt > cl->opt.max_attempts) {
        dx__log(LOG(cl), DX_LOG_WARN, "client: giving up on %s after %u failed attempts", cl->opt.url,
                cl->opt.max_attempts);
        finish(cl, false);
        return;
    }
    uint64_t bound = cl->opt.backoff_base_ms;
    for (unsigned i = 1; i < cl->attempt && bound < cl->opt.backoff_cap_ms; i++)
        bound *= 2;
    if (bound > cl->opt.backoff_cap_ms)
        bound = cl->opt.backoff_cap_ms;
    uint32_t r = 0;
    (void)dx__random(cl->ep.loop->seams, &r, sizeof r);
    unsigned delay = (unsigned)(r % (bound + 1));
    cl->st.reconnects++;
    cl->state = CL_WAITING;
    if (cl->opt.cb.on_reconnect)
        cl->opt.cb.on_reconnect(cl, cl->attempt, delay, cl->opt.ud);
    if (cl->state != CL_WAITING)
        return; /* the callback closed or freed us */
    cl->timer.cb = on_backoff;
    dx__timer_start(cl->ep.loop, &cl->timer, delay);
}

static void attempt_failed(dx_client *cl, int err, const char *what)
{
    cl->last_err = err;
    dx__log(LOG(cl), DX_LOG_INFO, "client: %s: %s", cl->opt.url, what);
    if (cl->opt.cb.on_error)
        cl->opt.cb.on_error(cl, err, what, cl->opt.ud);
    if (cl->state == CL_DONE || cl->state == CL_IDLE)
        return; /* the callback closed or freed us */
    next_step(cl);
}

/* Connects to the next address; false when none is left. */
static bool try_connect(dx_client *cl, char *why, size_t whylen)
{
    const char *host = cl->use_proxy ? cl->proxy.host : cl->url.host;
    unsigned port = cl->use_proxy ? cl->proxy.port : cl->url.port;
    while (cl->next_addr) {
        struct addrinfo *ai = cl->next_addr;
        cl->next_addr = ai->ai_next;
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            snprintf(why, whylen, "socket: %s", strerror(errno));
            continue;
        }
        if (cl->opt.bind_addr) {
            struct addrinfo hints = {.ai_family = ai->ai_family, .ai_flags = AI_NUMERICHOST | AI_PASSIVE,
                                     .ai_socktype = SOCK_STREAM};
            struct addrinfo *b = NULL;
            int one = 1; /* pick the port at connect: one source address, many connections */
            setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
            if (getaddrinfo(cl->opt.bind_addr, NULL, &hints, &b) != 0 || bind(fd, b->ai_addr, b->ai_addrlen) < 0) {
                snprintf(why, whylen, "cannot bind to %s: %s", cl->opt.bind_addr,
                         b ? strerror(errno) : "address family differs from the server's");
                if (b)
                    freeaddrinfo(b);
                close(fd);
                continue;
            }
            freeaddrinfo(b);
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
            snprintf(why, whylen, "connect to %s:%u: %s", host, port, strerror(errno));
            close(fd);
            continue;
        }
        dx_conn *c = dx__conn_open(&cl->ep, fd, ai->ai_addr, CS_CONNECT, EPOLLOUT | EPOLLIN | EPOLLRDHUP,
                                   cl->opt.connect_timeout_ms);
        if (!c) {
            snprintf(why, whylen, "out of memory");
            close(fd);
            continue;
        }
        cl->conn = c;
        cl->state = CL_CONNECTING;
        return true;
    }
    return false;
}

static void resolved(dx_client *cl, struct addrinfo *res, int gai_err)
{
    dx__timer_stop(cl->ep.loop, &cl->timer);
    const char *host = cl->use_proxy ? cl->proxy.host : cl->url.host;
    if (gai_err) {
        char what[640];
        snprintf(what, sizeof what, "cannot resolve %s: %s", host, gai_strerror(gai_err));
        attempt_failed(cl, DX_EADDR, what);
        return;
    }
    cl->addrs = cl->next_addr = res;
    char why[512] = "no address";
    if (!try_connect(cl, why, sizeof why))
        attempt_failed(cl, DX_EADDR, why);
}

static void resolve_done(void *arg);

static void resolve_drop(void *arg)
{
    resolve_req *r = arg;
    if (r->res)
        freeaddrinfo(r->res);
    free(r);
}

/* The lookup's thread: getaddrinfo blocks, the loop does not. The request is
 * malloc'ed (not through the seams): it crosses threads. The loop waits for
 * this thread before it is freed (dx__loop_helper_*), and frees the request
 * if it is freed before running the post. */
static void *resolve_thread(void *arg)
{
    resolve_req *r = arg;
    dx_loop *loop = r->loop;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG | AI_NUMERICSERV};
    r->gai_err = getaddrinfo(r->host, r->port, &hints, &r->res);
    if (dx__loop_post_ex(loop, resolve_done, resolve_drop, r) != 0)
        resolve_drop(r); /* no memory to post: the attempt's deadline fires */
    dx__loop_helper_end(loop);
    return NULL;
}

static void resolve_done(void *arg)
{
    resolve_req *r = arg;
    dx_client *cl = r->cl;
    if (!cl) { /* abandoned: timed out, closed or freed */
        if (r->res)
            freeaddrinfo(r->res);
        free(r);
        return;
    }
    cl->pending = NULL;
    struct addrinfo *res = r->res;
    int e = r->gai_err;
    free(r);
    resolved(cl, res, e);
}

static void on_dns_timeout(dx__timer *t)
{
    dx_client *cl = dx_list_entry(t, dx_client, timer);
    if (cl->pending) {
        cl->pending->cl = NULL;
        cl->pending = NULL;
    }
    attempt_failed(cl, DX_ETIMEDOUT, "DNS lookup timed out");
}

static void on_unix_failed(dx__timer *t)
{
    dx_client *cl = dx_list_entry(t, dx_client, timer);
    char what[640];
    snprintf(what, sizeof what, "connect to unix:%s: %s", cl->opt.unix_path, strerror(cl->unix_errno));
    attempt_failed(cl, DX_EADDR, what);
}

/* unix_path: no lookup, one address. A connect that fails at once (no such
 * socket, refused) is reported from the loop, not inside the call. */
static void connect_unix(dx_client *cl)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    size_t plen = strlen(cl->opt.unix_path);
    int fd = -1;
    dx_conn *c = NULL;
    if (plen >= sizeof sun.sun_path) {
        cl->unix_errno = ENAMETOOLONG;
        goto later;
    }
    memcpy(sun.sun_path, cl->opt.unix_path, plen + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || (connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0 && errno != EINPROGRESS && errno != EAGAIN)) {
        cl->unix_errno = errno;
        goto later;
    }
    c = dx__conn_open(&cl->ep, fd, (struct sockaddr *)&sun, CS_CONNECT, EPOLLOUT | EPOLLIN | EPOLLRDHUP,
                      cl->opt.connect_timeout_ms);
    if (!c) {
        cl->unix_errno = ENOMEM;
        goto later;
    }
    cl->conn = c;
    cl->state = CL_CONNECTING;
    return;
later:
    if (fd >= 0)
        close(fd);
    cl->state = CL_RESOLVING; /* as for a lookup: the timer answers */
    cl->timer.cb = on_unix_failed;
    dx__timer_start(cl->ep.loop, &cl->timer, 1);
}

static void start_attempt(dx_client *cl)
{
    cl->st.attempts++;
    cl->try_next = false;
    dx__free(cl->ep.loop->seams, cl->location);
    cl->location = NULL;
    if (cl->opt.unix_path) {
        connect_unix(cl);
        return;
    }
    cl->state = CL_RESOLVING;
    const char *uhost = cl->use_proxy ? cl->proxy.host : cl->url.host;
    unsigned port = cl->use_proxy ? cl->proxy.port : cl->url.port;
    char portstr[8];
    snprintf(portstr, sizeof portstr, "%u", port);
    /* An IPv6 zone is written "%25eth0" in a URL (RFC 6874) but "%eth0" for
     * getaddrinfo. */
    char host[DX_URL_HOST_MAX + 1];
    snprintf(host, sizeof host, "%s", uhost);
    char *zone = strstr(host, "%25");
    if (zone)
        memmove(zone + 1, zone + 3, strlen(zone + 3) + 1);
    /* A literal (zones included) needs no lookup: answer at once. */
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int e = getaddrinfo(host, portstr, &hints, &res);
    if (e != EAI_NONAME) {
        resolved(cl, res, e);
        return;
    }
    resolve_req *r = calloc(1, sizeof *r);
    if (!r) {
        attempt_failed(cl, DX_ENOMEM, "out of memory");
        return;
    }
    r->cl = cl;
    r->loop = cl->ep.loop;
    snprintf(r->host, sizeof r->host, "%s", host);
    memcpy(r->port, portstr, sizeof r->port);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t th;
    dx__loop_helper_begin(cl->ep.loop);
    int rc = pthread_create(&th, &attr, resolve_thread, r);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        dx__loop_helper_end(cl->ep.loop);
        free(r);
        attempt_failed(cl, DX_ENOMEM, "cannot start the DNS thread");
        return;
    }
    cl->pending = r;
    cl->timer.cb = on_dns_timeout;
    dx__timer_start(cl->ep.loop, &cl->timer, cl->opt.connect_timeout_ms);
}

static void kick(dx_loop *loop, dx__deferred *d)
{
    (void)loop;
    dx_client *cl = dx_list_entry(d, dx_client, kick);
    if (cl->state == CL_STARTING)
        start_attempt(cl);
}

int dx_client_connect(dx_client *cl)
{
    if (cl->ep.freeing || (cl->state != CL_IDLE && cl->state != CL_DONE))
        return DX_ESTATE;
    cl->user_closed = false;
    cl->attempt = 0;
    /* The first step may fail at once (a literal address that refuses):
     * its on_error must come from the loop, not from inside this call. */
    cl->state = CL_STARTING;
    cl->kick.fn = kick;
    dx__loop_later(cl->ep.loop, &cl->kick);
    return 0;
}

/* ---- the connection's client part (called from conn.c) --------------------------- */

static dx_client *client_of(const dx_conn *c) { return dx__conn_ep(c)->cl; }

static void start_transport(dx_conn *c)
{
    dx_client *cl = client_of(c);
    if (!cl->url.tls) {
        dx__client_transport_ready(c);
        return;
    }
    if (dx__tls_connect(cl->tls, &c->st, c->io.fd, cl->url.host)) {
        cl->last_err = DX_ETLS;
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, "cannot start TLS");
        return;
    }
    c->state = CS_TLS;
    dx__conn_drive_tls(c);
}

static const char *socks_reply_text(unsigned rep)
{
    static const char *const texts[] = {"succeeded", "general SOCKS server failure",
                                        "connection not allowed by ruleset", "network unreachable",
                                        "host unreachable", "connection refused", "TTL expired",
                                        "command not supported", "address type not supported"};
    return rep < sizeof texts / sizeof texts[0] ? texts[rep] : "unknown reply";
}

static void socks_fail(dx_conn *c, const char *why)
{
    dx_client *cl = client_of(c);
    char what[640];
    snprintf(what, sizeof what, "SOCKS5 proxy %s:%u: %s", cl->proxy.host, cl->proxy.port, why);
    cl->last_err = DX_EHANDSHAKE;
    dx__conn_abort(c, DX_CLOSE_ABNORMAL, what);
}

/* RFC 1928 §4: CONNECT to the URL's host (an IP literal as such, a name as
 * a domain name the proxy resolves) and port. */
static void socks_send_connect(dx_conn *c)
{
    dx_client *cl = client_of(c);
    uint8_t req[4 + 1 + DX_URL_HOST_MAX + 2] = {5, 1, 0};
    size_t n = 4;
    if (inet_pton(AF_INET, cl->url.host, req + 4) == 1) {
        req[3] = 1;
        n += 4;
    } else if (inet_pton(AF_INET6, cl->url.host, req + 4) == 1) {
        req[3] = 4;
        n += 16;
    } else {
        size_t hl = strlen(cl->url.host);
        if (hl > 255) {
            socks_fail(c, "host name longer than 255 bytes");
            return;
        }
        req[3] = 3;
        req[4] = (uint8_t)hl;
        memcpy(req + 5, cl->url.host, hl);
        n += 1 + hl;
    }
    req[n++] = (uint8_t)(cl->url.port >> 8);
    req[n++] = (uint8_t)cl->url.port;
    cl->socks_stage = 2;
    (void)dx__conn_write(c, req, n);
}

/* The SOCKS5 answers gather in the cold block's head (a few bytes each);
 * nothing else arrives before we speak again, so a longer answer is an
 * error. */
static void read_socks_answer(dx_conn *c)
{
    dx_client *cl = client_of(c);
    dx__head *hd = c->cold->head; /* read_proxy_answer made it */
    size_t have = hd->len;
    const uint8_t *h = hd->data;
    size_t need = 2;
    if (cl->socks_stage == 2) {
        need = 5;
        if (have >= 5)
            need = h[3] == 1 ? 10 : h[3] == 4 ? 22 : h[3] == 3 ? 7u + h[4] : 0;
        if (!need) {
            socks_fail(c, "malformed answer to CONNECT");
            return;
        }
    }
    if (have < need)
        return;
    if (have > need || h[0] != 5) {
        socks_fail(c, "malformed answer (not a SOCKS5 proxy?)");
        return;
    }
    if (cl->socks_stage == 1) {
        if (h[1] != 0) {
            socks_fail(c, h[1] == 0xff ? "no acceptable authentication method (only 'none' is supported)"
                                       : "chose an authentication method that was not offered");
            return;
        }
        hd->len = 0;
        socks_send_connect(c);
        return;
    }
    if (h[1] != 0) {
        char why[128];
        snprintf(why, sizeof why, "CONNECT refused: %s", socks_reply_text(h[1]));
        socks_fail(c, why);
        return;
    }
    dx__free(dx__conn_ep(c)->loop->seams, hd);
    c->cold->head = NULL;
    dx__conn_cold_trim(c);
    cl->socks_stage = 0;
    start_transport(c);
}

/* Reads the proxy's answer to CONNECT into the cold block's head and checks
 * it. */
static void read_proxy_answer(dx_conn *c)
{
    dx_client *cl = client_of(c);
    dx_loop *loop = dx__conn_ep(c)->loop;
    size_t max = dx__conn_ep(c)->opt.max_head;
    if (!DX_COLD(c, head)) {
        dx__cold *k = dx__conn_cold(c);
        dx__head *fresh = k ? dx__alloc(loop->seams, sizeof *fresh + max) : NULL;
        if (!fresh) {
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "out of memory");
            return;
        }
        fresh->len = 0;
        k->head = fresh;
    }
    dx__head *hd = c->cold->head;
    /* Byte by byte is not needed: nothing follows the proxy's head until we
     * speak (TLS ClientHello or the upgrade request). */
    ssize_t n = dx__stream_read(&c->st, c->io.fd, hd->data + hd->len, max - hd->len);
    if (n == DX_EAGAIN)
        return;
    if (n <= 0) {
        cl->last_err = DX_ECONNRESET;
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, "proxy closed the connection");
        return;
    }
    hd->len += (size_t)n;
    if (cl->socks) {
        read_socks_answer(c);
        return;
    }
    dx_http_header headers[64];
    dx_http_response resp;
    int rc = dx__http_parse_response((const char *)hd->data, hd->len, &resp, headers, 64, max);
    if (rc == DX_EAGAIN)
        return;
    char what[640];
    if (rc < 0 || resp.status / 100 != 2 || (size_t)rc != hd->len) {
        if (rc < 0)
            snprintf(what, sizeof what, "proxy %s:%u: malformed answer to CONNECT", cl->proxy.host, cl->proxy.port);
        else
            snprintf(what, sizeof what, "proxy %s:%u refused CONNECT: HTTP %d %.*s", cl->proxy.host,
                     cl->proxy.port, resp.status, (int)resp.reason_len, resp.reason);
        cl->last_err = DX_EHANDSHAKE;
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, what);
        return;
    }
    dx__free(loop->seams, hd);
    c->cold->head = NULL;
    dx__conn_cold_trim(c);
    start_transport(c);
}

void dx__client_io(dx_conn *c, uint32_t events)
{
    dx_client *cl = client_of(c);
    if (c->state == CS_PROXY) {
        if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            read_proxy_answer(c);
        return;
    }
    /* CS_CONNECT: writable (or an error) means the connect finished. */
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(c->io.fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
        soerr = errno;
    if (soerr == 0 && !(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
        return;
    if (soerr) {
        char what[640];
        snprintf(what, sizeof what, "connect to %s:%u: %s", cl->use_proxy ? cl->proxy.host : cl->url.host,
                 cl->use_proxy ? cl->proxy.port : cl->url.port, strerror(soerr));
        cl->last_err = soerr == ETIMEDOUT ? DX_ETIMEDOUT : DX_EADDR;
        cl->try_next = cl->next_addr != NULL;
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, what);
        return;
    }
    if (cl->use_proxy && cl->socks) {
        static const uint8_t hello[3] = {5, 1, 0}; /* version 5, one method: no authentication */
        c->state = CS_PROXY;
        cl->socks_stage = 1;
        dx__conn_want_write(c, false);
        (void)dx__conn_write(c, hello, sizeof hello);
        return;
    }
    if (cl->use_proxy) {
        char req[DX_URL_HOST_MAX * 2 + 128];
        bool v6 = strchr(cl->url.host, ':') != NULL;
        int n = snprintf(req, sizeof req, "CONNECT %s%s%s:%u HTTP/1.1\r\nHost: %s%s%s:%u\r\n\r\n", v6 ? "[" : "",
                         cl->url.host, v6 ? "]" : "", cl->url.port, v6 ? "[" : "", cl->url.host, v6 ? "]" : "",
                         cl->url.port);
        c->state = CS_PROXY;
        dx__conn_want_write(c, false);
        (void)dx__conn_write(c, req, (size_t)n);
        return;
    }
    dx__conn_want_write(c, false);
    start_transport(c);
}

void dx__client_transport_ready(dx_conn *c)
{
    dx_client *cl = client_of(c);
    char req[8192];
    int n = dx__ws_client_request(req, sizeof req, &cl->wsopts, dx__conn_ep(c)->loop->seams, cl->key);
    if (n < 0) {
        cl->last_err = n;
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, "cannot build the upgrade request");
        return;
    }
    c->state = CS_HEAD;
    dx__conn_want_write(c, false);
    (void)dx__conn_write(c, req, (size_t)n);
}

void dx__client_response(dx_conn *c, const dx_http_response *resp)
{
    dx_client *cl = client_of(c);
    const char *proto = NULL;
    size_t plen = 0, nexts = 0;
    dx_ws_ext_offer exts[4];
    int rc = dx__ws_client_check(resp, cl->key, &cl->wsopts, &proto, &plen, exts, 4, &nexts);
    if (rc) {
        char what[640 + CL_LOCATION_MAX + 1];
        const dx_http_header *loc = resp->status / 100 == 3
                                        ? dx__http_find(resp->headers, resp->n_headers, "location")
                                        : NULL;
        dx__free(dx__conn_ep(c)->loop->seams, cl->location);
        cl->location = NULL;
        if (loc && loc->value_len && loc->value_len <= CL_LOCATION_MAX &&
            (cl->location = dx__alloc(dx__conn_ep(c)->loop->seams, loc->value_len + 1)) != NULL) {
            memcpy(cl->location, loc->value, loc->value_len);
            cl->location[loc->value_len] = 0;
        }
        if (resp->status != 101)
            snprintf(what, sizeof what, "handshake refused: HTTP %d %.*s%s%s", resp->status, (int)resp->reason_len,
                     resp->reason, cl->location ? "; Location: " : "", cl->location ? cl->location : "");
        else
            snprintf(what, sizeof what, "handshake failed: %s", dx_strerror(rc));
        cl->last_err = DX_EHANDSHAKE;
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, what);
        return;
    }
    /* RFC 7692 §7.1: a response we cannot accept fails the connection.
     * dx__ws_client_check let through only extensions we offered, each
     * once: here only permessage-deflate. */
    for (size_t i = 0; i < nexts && cl->ep.pmd; i++) {
        dx__pmd_params p;
        const char *why = NULL;
        if (dx__pmd_client_accept(&cl->opt.deflate, &exts[i], &p, &why)) {
            char what[256];
            snprintf(what, sizeof what, "handshake failed: %s: permessage-deflate response: %s",
                     dx_strerror(DX_EEXTENSION), why);
            cl->last_err = DX_EEXTENSION;
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, what);
            return;
        }
        if (!(c->s.pmd = dx__pmd_new(cl->ep.pmd, DX_ROLE_CLIENT, &p))) {
            cl->last_err = DX_ENOMEM;
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "out of memory");
            return;
        }
    }
    if (proto) {
        dx__cold *k = dx__conn_cold(c);
        char *p = k ? dx__alloc(dx__conn_ep(c)->loop->seams, plen + 1) : NULL;
        if (p) {
            memcpy(p, proto, plen);
            p[plen] = 0;
            k->protocol = p;
        }
    }
    dx__conn_opened(c);
    char remote[64];
    dx_conn_remote(c, remote, sizeof remote);
    dx__log(LOG(cl), DX_LOG_INFO, "conn=%llu open remote=%s url=%s protocol=%s (client)", (unsigned long long)c->id,
            remote, cl->opt.url, DX_COLD(c, protocol) ? DX_COLD(c, protocol) : "-");
    if (cl->addrs) {
        freeaddrinfo(cl->addrs);
        cl->addrs = cl->next_addr = NULL;
    }
    cl->state = CL_OPEN;
    cl->attempt = 0;
    cl->st.opens++;
    queue_flush(cl);
    if (c->state != CS_OPEN) {
        /* A queued message's write failed: the connection died before the
         * application saw it open. No on_open, so no on_close either (both
         * hinge on CF_OPENED): its end is reported as a failed attempt. */
        c->flags &= (uint16_t)~CF_OPENED;
        return;
    }
    if (cl->opt.cb.on_open)
        cl->opt.cb.on_open(c, cl->opt.ud);
}

void dx__client_conn_marked(dx_conn *c, const char *why)
{
    dx_client *cl = client_of(c);
    if (cl->conn != c)
        return;
    dx__free(dx__conn_ep(c)->loop->seams, cl->why);
    cl->why = NULL;
    if (why) {
        size_t n = strnlen(why, CL_WHY_MAX);
        /* Out of memory: the end is reported without its reason. */
        if ((cl->why = dx__alloc(dx__conn_ep(c)->loop->seams, n + 1)) != NULL) {
            memcpy(cl->why, why, n);
            cl->why[n] = 0;
        }
    }
}

void dx__client_conn_end(dx_conn *c)
{
    dx_client *cl = client_of(c);
    if (cl->conn != c)
        return;
    cl->conn = NULL;
    /* The reason moves to the stack: the client holds no memory for it
     * while no connection is ending. */
    char whybuf[CL_WHY_MAX + 1];
    const char *why = NULL;
    if (cl->why) {
        snprintf(whybuf, sizeof whybuf, "%s", cl->why);
        dx__free(dx__conn_ep(c)->loop->seams, cl->why);
        cl->why = NULL;
        why = whybuf;
    }
    bool opened = (c->flags & CF_OPENED) != 0;
    if (!opened && cl->try_next && !cl->user_closed) {
        cl->try_next = false;
        char w[512];
        snprintf(w, sizeof w, "%s", why ? why : "connect failed");
        if (try_connect(cl, w, sizeof w))
            return;
        attempt_failed(cl, cl->last_err ? cl->last_err : DX_EADDR, w);
        return;
    }
    if (!opened && !cl->user_closed) {
        int err = cl->last_err;
        if (!err)
            err = c->code == DX_CLOSE_TLS_HANDSHAKE ? DX_ETLS
                  : why && (strstr(why, "timed out") || strstr(why, "timeout")) ? DX_ETIMEDOUT
                                                  : DX_EIO;
        cl->last_err = 0;
        attempt_failed(cl, err, why ? why : "connection lost during the handshake");
        return;
    }
    if (cl->state == CL_DONE)
        return;
    next_step(cl); /* reconnect, or done */
}

/* ---- public calls ---------------------------------------------------------------- */

int dx_client_send(dx_client *cl, int opcode, const void *data, size_t len)
{
    if (cl->conn && cl->conn->state == CS_OPEN && cl->conn->s.state == DX_CODEC_OPEN)
        return dx_conn_send(cl->conn, opcode, data, len);
    if (!cl->opt.queue_max_messages || cl->user_closed)
        return DX_ECLOSED;
    if (opcode != DX_OP_TEXT && opcode != DX_OP_BINARY)
        return DX_ECLOSED; /* pings make no sense later */
    if (opcode == DX_OP_TEXT && !dx__utf8_valid(data, len))
        return DX_EUTF8;
    if (cl->q_msgs + 1 > cl->opt.queue_max_messages || len > cl->opt.queue_max_bytes - cl->q_bytes) {
        cl->st.dropped++;
        return DX_ELIMIT;
    }
    qmsg *m = dx__alloc(cl->ep.loop->seams, sizeof *m + len);
    if (!m)
        return DX_ENOMEM;
    m->opcode = opcode;
    m->len = len;
    if (len)
        memcpy(m->data, data, len);
    dx_list_push_back(&cl->queue, &m->node);
    cl->q_msgs++;
    cl->q_bytes += len;
    cl->st.queued++;
    return 0;
}

int dx_client_close(dx_client *cl, unsigned code, const char *reason, size_t len)
{
    if (cl->state == CL_IDLE || cl->state == CL_DONE)
        return DX_ECLOSED;
    cl->user_closed = true;
    if (cl->conn && cl->conn->state == CS_OPEN)
        return dx_conn_close(cl->conn, code, reason, len); /* on_close, then on_done, from the loop */
    dx__loop_cancel(&cl->kick);
    if (cl->conn) {
        /* Detached first: its end is not the client's any more (no
         * on_error); an opened one that was closing still gets on_close,
         * from the loop, before on_done (queued after it). */
        dx_conn *c = cl->conn;
        cl->conn = NULL;
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, "closed by the application");
    }
    if (cl->pending) {
        cl->pending->cl = NULL;
        cl->pending = NULL;
    }
    finish(cl, true);
    return 0;
}

const char *dx_client_location(const dx_client *cl) { return cl->location; }

dx_conn *dx_client_conn(const dx_client *cl)
{
    return cl->conn && cl->conn->state == CS_OPEN ? cl->conn : NULL;
}

void dx_client_stats_get(const dx_client *cl, dx_client_stats *out)
{
    *out = cl->st;
    out->messages_in = cl->ep.st.messages_in;
    out->messages_out = cl->ep.st.messages_out;
    out->bytes_in = cl->ep.st.bytes_in;
    out->bytes_out = cl->ep.st.bytes_out;
}

/* The last step of a free: nothing of the client is on the stack now. */
static void client_release(dx_loop *loop, dx__deferred *d)
{
    dx_client *cl = dx_list_entry(d, dx_client, ep.dfree);
    queue_clear(cl);
    if (cl->addrs)
        freeaddrinfo(cl->addrs);
    dx__free(loop->seams, cl->location);
    dx__free(loop->seams, cl->why);
    dx__tls_ctx_free(cl->tls);
    dx__pmd_ctx_free(cl->ep.pmd); /* after its connections: they were released first */
    dx__free(loop->seams, cl->strings);
    dx__free(loop->seams, cl);
}

void dx_client_free(dx_client *cl)
{
    if (!cl || cl->ep.freeing)
        return;
    dx_loop *loop = cl->ep.loop;
    if (cl->pending) {
        cl->pending->cl = NULL; /* the lookup's answer is dropped when it arrives */
        cl->pending = NULL;
    }
    /* Code of ours still on the stack (after on_error, on_reconnect, ...)
     * sees CL_DONE and stops; nothing fires after this returns. */
    cl->state = CL_DONE;
    cl->conn = NULL;
    dx__timer_stop(loop, &cl->timer);
    dx__loop_cancel(&cl->kick);
    dx__loop_cancel(&cl->done);
    cl->ep.dfree.fn = client_release;
    if (dx__ep_drop_conns(&cl->ep))
        dx__loop_later(loop, &cl->ep.dfree);
    else
        client_release(loop, &cl->ep.dfree);
}
