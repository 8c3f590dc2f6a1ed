/*
 * src/bus/redis_io.c: one asynchronous Redis connection on a dx_loop
 * (redis_io.h). Layer: bus; on src/net's transports (tcp, tls: no OpenSSL
 * here) and hiredis's sans-I/O parts only (redisFormatCommand*,
 * redisReader); never hiredis's sockets or async API.
 *
 * Invariants: the socket is watched for READ while up, and for WRITE while
 * bytes wait (or TLS asks for it); replies answer the FIFO in order (Redis
 * answers a connection's commands in order), except pub/sub pushes. `depth`
 * counts the frames of ours on the stack that may call back: the memory
 * goes when it falls to 0 with `freed` set (STYLE.md habit 6).
 */
#define _GNU_SOURCE
#include "bus/redis_io.h"
#include "bus/redis.h"
#include "core/seams.h"
#include "net/transport.h"

#include <hiredis/hiredis.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum { ST_CONNECTING, ST_HANDSHAKE, ST_UP, ST_DEAD };

#define READ_CHUNK 16384             /* bytes per read(2) or SSL_read round */
#define OUT_KEEP ((size_t)1 << 20)   /* an output buffer larger than this is freed once written */

typedef struct rio_cb {
    dx__rio_fn *fn;
    void *pd;
} rio_cb;

struct dx__rio {
    const dx_seams *seams;  /* the allocator (NULL: the default) */
    dx_loop *loop;
    dx_watch *watch;
    dx_timer *later;        /* a connect refused at once: reported from the loop */
    dx__stream s;           /* the transport (TLS state) */
    int fd;                 /* -1 once closed */
    int state;
    unsigned events;        /* what the watch asks for */
    bool rd_wants_write;    /* TLS: a read waits for writability */
    bool freed;
    unsigned depth;
    dx__rio_opts o;
    char tls_host[256];
    char why[256];          /* a failure to report from the loop */
    /* replies */
    redisReader *rd;
    redisReplyObjectFunctions fns;  /* the reader's, with createArray bounded */
    void *(*create_array)(const redisReadTask *, int);
    long long too_many;     /* > 0: an array of this many elements was refused */
    uint64_t fed;           /* bytes fed to the reader, ever */
    uint64_t reply_start;   /* stream offset where the reply being read starts */
    rio_cb *q;              /* FIFO ring */
    size_t qcap, qhead, qn;
    dx__rio_fn *push;
    void *push_pd;
    bool pubsub;
    /* commands not yet written */
    char *out;
    size_t opos, olen, ocap;
};

/* ---- lifetime ------------------------------------------------------------------ */

static void destroy(dx__rio *io)
{
    if (io->rd)
        redisReaderFree(io->rd);
    const dx_seams *sm = io->seams;
    dx__free(sm, io->q);
    dx__free(sm, io->out);
    dx__free(sm, io);
}

static void enter(dx__rio *io) { io->depth++; }

/* Drops a frame; false when io is gone (freed while in it). */
static bool leave(dx__rio *io)
{
    if (--io->depth == 0 && io->freed) {
        destroy(io);
        return false;
    }
    return true;
}

static void close_socket(dx__rio *io)
{
    dx_watch_free(io->watch);
    io->watch = NULL;
    dx_timer_free(io->later);
    io->later = NULL;
    dx__stream_close(&io->s, io->fd); /* closes the descriptor (if any) */
    io->fd = -1;
    io->events = 0;
}

/* Every waiting callback with NULL, oldest first. One may free io (the
 * caller holds a frame): dx__rio_free then calls the rest. */
static void drain_null(dx__rio *io)
{
    while (io->qn && !io->freed) {
        rio_cb cb = io->q[io->qhead];
        io->qhead = (io->qhead + 1) % io->qcap;
        io->qn--;
        if (cb.fn)
            cb.fn(io, NULL, cb.pd);
    }
}

/* The connection is lost: see redis_io.h. The caller holds a frame. */
static void fail(dx__rio *io, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(dx__rio *io, const char *fmt, ...)
{
    if (io->state == ST_DEAD || io->freed)
        return;
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    io->state = ST_DEAD;
    close_socket(io);
    drain_null(io);
    if (!io->freed && io->o.on_disconnect)
        io->o.on_disconnect(io, why, io->o.ud);
}

void dx__rio_free(dx__rio *io)
{
    if (!io || io->freed)
        return;
    io->freed = true;
    if (io->state == ST_UP && io->fd >= 0)
        dx__stream_shutdown(&io->s, io->fd); /* TLS: close_notify, best effort (no waiting) */
    io->state = ST_DEAD;
    close_socket(io);
    enter(io);
    while (io->qn) { /* as drain_null: the owner fails its requests on these NULLs */
        rio_cb cb = io->q[io->qhead];
        io->qhead = (io->qhead + 1) % io->qcap;
        io->qn--;
        if (cb.fn)
            cb.fn(io, NULL, cb.pd);
    }
    (void)leave(io);
}

/* ---- the watch ------------------------------------------------------------------ */

static void set_events(dx__rio *io)
{
    unsigned ev = 0;
    switch (io->state) {
    case ST_CONNECTING:
        ev = DX_WATCH_WRITE;
        break;
    case ST_HANDSHAKE:
        ev = dx__stream_want(&io->s) == DX__WANT_WRITE ? DX_WATCH_WRITE : DX_WATCH_READ;
        break;
    case ST_UP:
        ev = DX_WATCH_READ | (io->olen > io->opos || io->rd_wants_write ? DX_WATCH_WRITE : 0);
        break;
    default:
        break;
    }
    if (ev != io->events && io->watch && dx_watch_set(io->watch, ev) == 0)
        io->events = ev;
}

/* ---- replies ---------------------------------------------------------------------- */

static void *create_array(const redisReadTask *task, int elements)
{
    dx__rio *io = task->privdata;
    if (elements > 0 && (unsigned)elements > io->o.elements_max) {
        io->too_many = elements;
        return NULL; /* the reader stops with an error: the connection drops */
    }
    return io->create_array(task, elements);
}

static bool is_push(const redisReply *r)
{
    static const char *const kinds[] = {"message",     "pmessage",     "smessage",    "subscribe",   "unsubscribe",
                                        "psubscribe",  "punsubscribe", "ssubscribe",  "sunsubscribe"};
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element[0]->type != REDIS_REPLY_STRING)
        return false;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (r->element[0]->len == strlen(kinds[i]) && strncasecmp(r->element[0]->str, kinds[i], r->element[0]->len) == 0)
            return true;
    return false;
}

/* Hands out every complete reply fed so far. The caller holds a frame;
 * returns false when io died or was freed. */
static bool dispatch(dx__rio *io)
{
    for (;;) {
        void *rep = NULL;
        if (redisReaderGetReply(io->rd, &rep) != REDIS_OK) {
            if (io->too_many)
                fail(io, "an array of %lld elements from Redis (the limit is %u)", io->too_many, io->o.elements_max);
            else
                fail(io, "protocol error from Redis: %s", io->rd->errstr);
            return false;
        }
        uint64_t at = io->fed - (uint64_t)(io->rd->len - io->rd->pos); /* where the reader stands */
        if (!rep) {
            if (io->fed - io->reply_start > io->o.reply_max) { /* the reply so far */
                fail(io, "a reply from Redis larger than %zu bytes (the limit)", io->o.reply_max);
                return false;
            }
            return true;
        }
        uint64_t size = at - io->reply_start;
        io->reply_start = at;
        if (size > io->o.reply_max) {
            freeReplyObject(rep);
            fail(io, "a reply from Redis of %llu bytes (the limit is %zu)", (unsigned long long)size,
                 io->o.reply_max);
            return false;
        }
        dx__rio_fn *fn = NULL;
        void *pd = NULL;
        if (io->pubsub && (io->qn == 0 || is_push(rep))) {
            fn = io->push;
            pd = io->push_pd;
        } else if (io->qn) {
            rio_cb cb = io->q[io->qhead];
            io->qhead = (io->qhead + 1) % io->qcap;
            io->qn--;
            fn = cb.fn;
            pd = cb.pd;
        } else {
            freeReplyObject(rep);
            fail(io, "a reply from Redis that no command asked for");
            return false;
        }
        if (fn)
            fn(io, rep, pd);
        freeReplyObject(rep);
        if (io->freed || io->state == ST_DEAD)
            return false;
    }
}

static void do_read(dx__rio *io)
{
    char buf[READ_CHUNK];
    io->rd_wants_write = false;
    for (;;) {
        ssize_t n = dx__stream_read(&io->s, io->fd, (uint8_t *)buf, sizeof buf);
        if (n == DX_EAGAIN) {
            io->rd_wants_write = dx__stream_want(&io->s) == DX__WANT_WRITE;
            return;
        }
        if (n == 0) {
            fail(io, "Redis closed the connection");
            return;
        }
        if (n < 0) {
            fail(io, "read from Redis failed: %s", n == DX_ETLS ? "TLS error" : strerror(errno ? errno : EIO));
            return;
        }
        if (redisReaderFeed(io->rd, buf, (size_t)n) != REDIS_OK) {
            fail(io, "out of memory reading a reply from Redis");
            return;
        }
        io->fed += (uint64_t)n;
        if (!dispatch(io))
            return;
        /* a short read drained the socket; TLS records read but not yet
         * returned are invisible to epoll: read on while there are any */
        if ((size_t)n < sizeof buf && !dx__stream_pending(&io->s))
            return;
    }
}

static void do_write(dx__rio *io)
{
    while (io->olen > io->opos) {
        struct iovec iov = {io->out + io->opos, io->olen - io->opos};
        ssize_t n = dx__stream_writev(&io->s, io->fd, &iov, 1);
        if (n == DX_EAGAIN)
            return;
        if (n <= 0) {
            fail(io, "write to Redis failed: %s", n == DX_ETLS ? "TLS error" : strerror(errno ? errno : EPIPE));
            return;
        }
        io->opos += (size_t)n;
    }
    io->opos = io->olen = 0;
    if (io->ocap > OUT_KEEP) { /* a burst's buffer is not kept */
        dx__free(io->seams, io->out);
        io->out = NULL;
        io->ocap = 0;
    }
}

static void up(dx__rio *io)
{
    io->state = ST_UP;
    if (io->o.on_connect) {
        io->o.on_connect(io, io->o.ud);
        if (io->freed || io->state != ST_UP)
            return;
    }
    if (dx__stream_pending(&io->s))
        do_read(io);
    if (io->state == ST_UP && !io->freed)
        do_write(io);
}

static void handshake(dx__rio *io)
{
    int rc = dx__stream_handshake(&io->s);
    if (rc == DX_EAGAIN)
        return;
    if (rc != 0) {
        char d[200];
        dx__tls_describe_failure(&io->s, d, sizeof d);
        const char *p = strncmp(d, "TLS handshake failed", 20) == 0 ? d + 20 : d;
        if (*p == ':')
            p++;
        while (*p == ' ')
            p++;
        fail(io, "TLS handshake with Redis (%s) failed: %s", io->tls_host, *p ? p : "the connection closed");
        return;
    }
    up(io);
}

static void on_event(dx_watch *wt, int fd, unsigned events, void *ud)
{
    (void)wt;
    (void)fd;
    dx__rio *io = ud;
    void (*after)(void *) = io->o.after;
    void *aud = io->o.ud;
    enter(io);
    if (io->state == ST_CONNECTING) {
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
            soerr = errno;
        if (soerr) {
            fail(io, "connect to Redis failed: %s", strerror(soerr));
        } else if (io->o.tls) {
            int rc = dx__tls_connect(io->o.tls, &io->s, io->fd, io->tls_host);
            if (rc) {
                fail(io, "TLS setup for Redis failed (%s)", dx_strerror(rc));
            } else {
                io->state = ST_HANDSHAKE;
                handshake(io);
            }
        } else {
            up(io);
        }
    } else if (io->state == ST_HANDSHAKE) {
        handshake(io);
    } else if (io->state == ST_UP) {
        if (events & (DX_WATCH_READ | DX_WATCH_ERROR) || io->rd_wants_write)
            do_read(io);
        if (io->state == ST_UP && !io->freed && io->olen > io->opos)
            do_write(io);
    }
    if (!io->freed && io->state != ST_DEAD)
        set_events(io);
    (void)leave(io);
    if (after)
        after(aud);
}

static void on_later(dx_timer *tm, void *ud)
{
    (void)tm;
    dx__rio *io = ud;
    void (*after)(void *) = io->o.after;
    void *aud = io->o.ud;
    enter(io);
    dx_timer_free(io->later);
    io->later = NULL;
    char why[256];
    snprintf(why, sizeof why, "%s", io->why);
    fail(io, "%s", why);
    (void)leave(io);
    if (after)
        after(aud);
}

/* ---- commands ----------------------------------------------------------------------- */

/* The formatted command's verb ("*N\r\n$L\r\nVERB\r\n...") is a pub/sub
 * one: 1 a subscribe, 2 an unsubscribe, else 0. */
static int pubsub_verb(const char *cmd, size_t len)
{
    const char *end = cmd + len;
    const char *p = memchr(cmd, '\n', len);
    if (!p || end - p < 3 || p[1] != '$')
        return 0;
    size_t vl = 0;
    for (p += 2; p < end && *p >= '0' && *p <= '9'; p++)
        vl = vl * 10 + (size_t)(*p - '0');
    if (end - p < 2 || vl > 12 || (size_t)(end - p - 2) < vl)
        return 0;
    const char *v = p + 2;
    static const char *const sub[] = {"subscribe", "psubscribe", "ssubscribe"};
    static const char *const unsub[] = {"unsubscribe", "punsubscribe", "sunsubscribe"};
    for (int i = 0; i < 3; i++) {
        if (vl == strlen(sub[i]) && strncasecmp(v, sub[i], vl) == 0)
            return 1;
        if (vl == strlen(unsub[i]) && strncasecmp(v, unsub[i], vl) == 0)
            return 2;
    }
    return 0;
}

static int queue(dx__rio *io, dx__rio_fn *fn, void *pd, const char *cmd, size_t len)
{
    if (io->freed || io->state == ST_DEAD)
        return DX_EIO;
    size_t queued = io->olen - io->opos;
    if (len > io->o.out_max || queued > io->o.out_max - len)
        return DX_ELIMIT;
    /* a pub/sub command's replies go to the push handler (once there is
     * one): no place in the FIFO */
    int kind = pubsub_verb(cmd, len);
    bool sets_push = kind == 1 && fn;
    bool slot = !(kind && (io->pubsub || sets_push));
    if (slot && io->qn == io->qcap) {
        size_t cap = io->qcap ? io->qcap * 2 : 16;
        rio_cb *q = dx__alloc(io->seams, cap * sizeof *q);
        if (!q)
            return DX_ENOMEM;
        for (size_t i = 0; i < io->qn; i++)
            q[i] = io->q[(io->qhead + i) % io->qcap];
        dx__free(io->seams, io->q);
        io->q = q;
        io->qcap = cap;
        io->qhead = 0;
    }
    if (io->olen + len > io->ocap) {
        if (io->opos) { /* compact first */
            memmove(io->out, io->out + io->opos, queued);
            io->opos = 0;
            io->olen = queued;
        }
        if (io->olen + len > io->ocap) {
            size_t cap = io->ocap ? io->ocap : 4096;
            while (cap < io->olen + len)
                cap *= 2;
            char *o = dx__realloc(io->seams, io->out, cap);
            if (!o)
                return DX_ENOMEM;
            io->out = o;
            io->ocap = cap;
        }
    }
    memcpy(io->out + io->olen, cmd, len);
    io->olen += len;
    if (sets_push)
        dx__rio_set_push(io, fn, pd);
    if (slot) {
        io->q[(io->qhead + io->qn) % io->qcap] = (rio_cb){fn, pd};
        io->qn++;
    }
    if (io->state == ST_UP)
        set_events(io);
    return 0;
}

int dx__rio_argv(dx__rio *io, dx__rio_fn *fn, void *pd, int argc, const char **argv, const size_t *lens)
{
    if (!io || io->freed || io->state == ST_DEAD)
        return DX_EIO;
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, lens);
    if (len < 0 || !cmd)
        return DX_ENOMEM;
    int rc = queue(io, fn, pd, cmd, (size_t)len);
    redisFreeCommand(cmd);
    return rc;
}

int dx__rio_fmt(dx__rio *io, dx__rio_fn *fn, void *pd, const char *fmt, ...)
{
    if (!io || io->freed || io->state == ST_DEAD)
        return DX_EIO;
    char *cmd = NULL;
    va_list ap;
    va_start(ap, fmt);
    int len = redisvFormatCommand(&cmd, fmt, ap);
    va_end(ap);
    if (len < 0 || !cmd)
        return len == -2 ? DX_EINVAL : DX_ENOMEM;
    int rc = queue(io, fn, pd, cmd, (size_t)len);
    redisFreeCommand(cmd);
    return rc;
}

void dx__rio_set_push(dx__rio *io, dx__rio_fn *fn, void *pd)
{
    io->pubsub = true;
    io->push = fn;
    io->push_pd = pd;
}

bool dx__rio_up(const dx__rio *io) { return io && !io->freed && io->state == ST_UP; }
size_t dx__rio_pending(const dx__rio *io) { return io->qn; }
size_t dx__rio_queued_bytes(const dx__rio *io) { return io->olen - io->opos; }

/* ---- connecting ------------------------------------------------------------------------- */


dx__rio *dx__rio_new(dx_loop *loop, const dx__rio_opts *o, int *err, char *why, size_t why_len)
{
    int e = DX_EINVAL;
    dx__rio *io = NULL;
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    memset(&ss, 0, sizeof ss);
    if (why && why_len)
        why[0] = 0;
    if (o->unix_path) {
        struct sockaddr_un *un = (struct sockaddr_un *)&ss;
        if (strlen(o->unix_path) >= sizeof un->sun_path) {
            dx__redis_why(why, why_len, "Unix socket path too long: %s", o->unix_path);
            goto fail;
        }
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, o->unix_path);
        sl = sizeof *un;
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
        if (!o->addr || o->port <= 0 || o->port > 65535) {
            dx__redis_why(why, why_len, "no Redis address or a bad port");
            goto fail;
        }
        if (inet_pton(AF_INET, o->addr, &a4->sin_addr) == 1) {
            a4->sin_family = AF_INET;
            a4->sin_port = htons((uint16_t)o->port);
            sl = sizeof *a4;
        } else if (inet_pton(AF_INET6, o->addr, &a6->sin6_addr) == 1) {
            a6->sin6_family = AF_INET6;
            a6->sin6_port = htons((uint16_t)o->port);
            sl = sizeof *a6;
        } else {
            dx__redis_why(why, why_len, "not a numeric address: %s", o->addr);
            goto fail;
        }
    }
    if (o->tls && (!o->tls_host || strlen(o->tls_host) >= sizeof io->tls_host)) {
        dx__redis_why(why, why_len, "TLS needs the server's name");
        goto fail;
    }
    e = DX_ENOMEM;
    io = dx__alloc(o->seams, sizeof *io);
    if (!io)
        goto fail;
    memset(io, 0, sizeof *io);
    io->fd = -1;
    io->seams = o->seams;
    io->loop = loop;
    io->o = *o;
    if (!io->o.out_max)
        io->o.out_max = DX__RIO_OUT_MAX;
    if (!io->o.reply_max)
        io->o.reply_max = DX__RIO_REPLY_MAX;
    if (!io->o.elements_max)
        io->o.elements_max = DX__RIO_ELEMENTS_MAX;
    io->o.addr = io->o.unix_path = io->o.tls_host = NULL; /* not kept */
    if (o->tls)
        snprintf(io->tls_host, sizeof io->tls_host, "%s", o->tls_host);
    io->rd = redisReaderCreate();
    if (!io->rd)
        goto fail;
    io->fns = *io->rd->fn;
    io->create_array = io->fns.createArray;
    io->fns.createArray = create_array;
    io->rd->fn = &io->fns;
    io->rd->privdata = io;
    io->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (io->fd < 0) {
        e = DX_EIO;
        dx__redis_why(why, why_len, "socket: %s", strerror(errno));
        goto fail;
    }
    if (ss.ss_family != AF_UNIX) {
        int one = 1;
        (void)setsockopt(io->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    io->state = ST_CONNECTING;
    int rc = connect(io->fd, (struct sockaddr *)&ss, sl);
    int cerr = rc == 0 ? 0 : errno;
    io->watch = dx_watch_new(loop, io->fd, 0, on_event, io, &e);
    if (!io->watch) {
        dx__redis_why(why, why_len, "cannot watch the socket: %s", dx_strerror(e));
        goto fail;
    }
    if (cerr && cerr != EINPROGRESS) {
        /* refused at once (a Unix socket with no server): told from the loop */
        snprintf(io->why, sizeof io->why, "connect to Redis failed: %s", strerror(cerr));
        io->later = dx_timer_new(loop, on_later, io);
        if (!io->later) {
            e = DX_ENOMEM;
            goto fail;
        }
        dx_watch_free(io->watch);
        io->watch = NULL;
        dx_timer_start(io->later, 0, 0);
    } else {
        set_events(io); /* WRITE: connected (or failed) */
    }
    return io;
fail:
    if (io) {
        close_socket(io);
        destroy(io);
    }
    if (err)
        *err = e;
    return NULL;
}
