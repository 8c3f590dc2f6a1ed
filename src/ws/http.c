/*
 * src/ws/http.c: the plain HTTP/1.1 side of a server connection, so one port
 * serves the page, an HTTP API and the socket: request bodies
 * (Content-Length or chunked, capped by max_http_body), the application's
 * answers (at once or later, through a dx_http_req handle), streamed answers
 * (Server-Sent Events: dx_http_stream), static files
 * (GET, HEAD), 404, 405, and keep-alive.
 *
 * Layer: ws. conn.c hands over a complete request head (CS_HEAD → CS_HTTP)
 * and the bytes after it; this file reads the body, calls on_http, sends
 * the answer and hands the connection back (CS_HEAD for the next request on
 * a kept-alive connection, else drain and close).
 *
 * Invariants:
 *  - One request at a time per connection, answered in order: from the
 *    moment a request is complete until its answer is entirely in the
 *    kernel, reading is off; bytes already read past it (a pipelined
 *    request) are kept (at most one read) and processed after the answer.
 *  - A handle the application holds (on_http returned 1) is answered
 *    exactly once; if the connection dies first, the handle is detached
 *    (conn NULL) and its answer returns DX_ECLOSED and frees it. While
 *    on_http runs, the server owns the handle (in_cb) and frees it after.
 *  - Bounded memory: a body grows by doubling up to max_http_body; a static
 *    file is never read whole: sendfile(2) on transports that have it, else
 *    pread into a 16 KiB stack buffer, one piece at a time, continuing when
 *    the send queue is empty again; a HEAD answer opens the file only to
 *    stat it.
 *  - No callback inside an application call: dx_http_reply never calls
 *    on_http; input kept for later is processed from the loop
 *    (dx__loop_ready), not from inside the reply.
 *  - Streamed answers (dx_http_reply_stream, for SSE): the connection stays
 *    CS_HTTP in phase HP_STREAM for good; input is read and dropped (64 KiB
 *    at most), no deadline is armed, output goes through the send queue
 *    (send_max, on_drain at EPOLLOUT). The handle (dx_http_stream) outlives
 *    its connection: conn_mark → dx__http_conn_gone detaches it and queues
 *    its on_close on the loop's deferred list, whatever ended it (a free
 *    included); it is freed after on_close, or by the ws layer's destroy
 *    when the loop is freed first. An end is clean (on_close 0) once the
 *    connection reached LINGER: every byte was in the kernel.
 *
 * Path rules for static files: the target's path is percent-decoded; NUL,
 * backslashes and ".." segments are refused (400); the resolved path must
 * stay under the root (realpath), so symlinks cannot escape it; a directory
 * serves its index.html.
 */
#define _GNU_SOURCE
#include "ws/ws.h"

#include "core/hex.h"
#include "core/log.h"
#include "core/seams.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <unistd.h>

#define FILE_PIECE (16u * 1024u)        /* file bytes per write without sendfile: one TLS record */
#define SEND_PER_EVENT (1024u * 1024u)  /* file bytes per wake-up: fairness between connections */
#define CHUNKED_SLACK (64u * 1024u)     /* chunked framing allowed beyond max_http_body / 2 */

#define STREAM_DISCARD_MAX (64u * 1024u) /* peer bytes read and dropped on a stream before it is cut */

enum { HP_NONE = 0, HP_BODY, HP_WAIT, HP_SEND, HP_STREAM };

/* A request and its handle: the public view first. Headers and a copy of
 * the head follow the struct in the same allocation; the body is separate
 * (it grows). */
typedef struct hreq {
    dx_http_req pub;
    dx_conn *conn;          /* NULL once the connection is gone or the request answered */
    const dx_seams *seams;
    dx_http_header *headers;
    size_t n_headers;
    uint8_t *body;
    size_t body_cap;
    bool in_cb;             /* on_http is running: the server frees the handle after it */
    bool held;              /* the application took it (on_http returned 1) */
    bool answered;
    bool head_method;       /* HEAD: answers carry no body */
    char remote[64];
} hreq;

struct dx__http {
    hreq *req;              /* the request being read or awaiting its answer */
    dx_http_chunked ck;
    uint64_t body_left;     /* Content-Length bytes still to read */
    uint8_t phase;          /* HP_* */
    bool chunked;
    bool keep_alive;        /* this request's answer leaves the connection open */
    uint32_t nreq;          /* requests begun on this connection */
    int fd;                 /* static file being sent, or -1 */
    int64_t off;
    uint64_t left;
    uint8_t *pend;          /* input read past the current request */
    size_t pend_len;
    dx_http_stream *stream; /* HP_STREAM: the streamed answer (its handle) */
    size_t discarded;       /* HP_STREAM: peer bytes read and dropped */
};

/* A streamed answer's handle. It outlives its connection: when the
 * connection goes (for any reason, dx_server_free included) the handle is
 * detached (conn NULL) and its on_close queued on the loop's deferred list
 * (dclose), after which it is freed. */
struct dx_http_stream {
    dx_conn *conn;          /* NULL once detached */
    dx_loop *loop;
    dx_http_stream_callbacks cb;
    void *ud;
    uint64_t id;
    int err;                /* for on_close, when err_set; else decided as the connection goes */
    bool err_set;
    bool chunked;           /* HTTP/1.1: each send is one chunk */
    bool ended;             /* dx_http_stream_end (or HEAD, or shutdown): nothing more is sent */
    dx__deferred dclose;
};

static const dx_log *LOG(const dx_conn *c) { return dx__conn_ep(c)->loop->log; }

static void free_req(hreq *r)
{
    if (!r)
        return;
    dx__free(r->seams, r->body);
    dx__free(r->seams, r);
}

static const char *mime_type(const char *path)
{
    static const struct {
        const char *ext, *type;
    } map[] = {
        {".html", "text/html; charset=utf-8"}, {".htm", "text/html; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"}, {".mjs", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"}, {".json", "application/json"},
        {".txt", "text/plain; charset=utf-8"}, {".svg", "image/svg+xml"},
        {".png", "image/png"}, {".jpg", "image/jpeg"}, {".ico", "image/x-icon"},
        {".wasm", "application/wasm"}, {".map", "application/json"},
    };
    const char *dot = strrchr(path, '.');
    if (dot)
        for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
            if (strcasecmp(dot, map[i].ext) == 0)
                return map[i].type;
    return "application/octet-stream";
}


/* Decodes the path part of a target into out; 0 or -1 when it is unsafe. */
static int decode_path(const char *t, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len && t[i] != '?' && t[i] != '#'; i++) {
        char ch = t[i];
        if (ch == '%') {
            if (i + 2 >= len + 0 || dx__hexval(t[i + 1]) < 0 || dx__hexval(t[i + 2]) < 0)
                return -1;
            ch = (char)(dx__hexval(t[i + 1]) * 16 + dx__hexval(t[i + 2]));
            i += 2;
        }
        if (ch == '\0' || ch == '\\' || o + 1 >= cap)
            return -1;
        out[o++] = ch;
    }
    out[o] = 0;
    if (out[0] != '/')
        return -1;
    /* Refuse any ".." segment outright. */
    for (const char *p = out; (p = strstr(p, "..")) != NULL; p += 2)
        if ((p == out || p[-1] == '/') && (p[2] == '/' || p[2] == 0))
            return -1;
    return 0;
}


/* ---- answers ------------------------------------------------------------------ */

static void send_more(dx_conn *c);

/* Queues the head (and an in-memory body), or starts streaming file `fd`
 * (taken: closed here or when sent). r is the request answered (not freed
 * here). */
static int respond(dx_conn *c, const hreq *r, int status, const char *ctype, const char *extra, const void *body,
                   size_t len, int fd, uint64_t flen)
{
    dx__http *h = DX_COLD(c, http);
    bool head_only = r->head_method;
    uint64_t clen = fd >= 0 ? flen : len;
    const char *conn_hdr = !h->keep_alive ? "Connection: close\r\n"
                           : r->pub.minor_version == 0 ? "Connection: keep-alive\r\n"
                                                        : "";
    char head[2048];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %llu\r\n%s"
                     "Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n%s\r\n",
                     status, dx_http_status_text(status), ctype ? ctype : "text/plain; charset=utf-8",
                     (unsigned long long)clen, conn_hdr, extra ? extra : "");
    if (n < 0 || (size_t)n >= sizeof head) {
        if (fd >= 0)
            close(fd);
        return DX_EINVAL;
    }
    dx__log(LOG(c), DX_LOG_INFO, "conn=%llu http remote=%s method=%s path=%.*s status=%d bytes=%llu",
            (unsigned long long)c->id, r->remote, r->pub.method, (int)r->pub.path_len, r->pub.path, status,
            (unsigned long long)(head_only ? 0 : clen));
    h->phase = HP_SEND;
    int rc = dx__conn_write(c, head, (size_t)n);
    if (rc == 0 && !head_only && len && fd < 0)
        rc = dx__conn_write(c, body, len);
    if (c->state == CS_DEAD) {
        if (fd >= 0)
            close(fd);
        return DX_ECLOSED;
    }
    if (rc) {
        if (fd >= 0)
            close(fd);
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, "out of memory queueing an HTTP answer");
        return rc;
    }
    if (fd >= 0 && !head_only && flen) {
        h->fd = fd;
        h->off = 0;
        h->left = flen;
    } else if (fd >= 0) {
        close(fd); /* HEAD, or an empty file: nothing read */
    }
    send_more(c);
    return 0;
}

/* A short text answer ("404 Not Found\n"). */
static void simple(dx_conn *c, const hreq *r, int status, const char *extra)
{
    char body[128];
    int n = snprintf(body, sizeof body, "%d %s\n", status, dx_http_status_text(status));
    (void)respond(c, r, status, NULL, extra, body, (size_t)n, -1, 0);
}

/* The answer is entirely in the kernel: next request, or close. */
static void answer_done(dx_conn *c)
{
    dx__http *h = DX_COLD(c, http);
    h->phase = HP_NONE;
    if (!WQ_LEN(c))
        dx__conn_want_write(c, false); /* level-triggered EPOLLOUT would spin */
    if (c->flags & CF_READ_OFF)
        dx__conn_reading(c, DX__READ_ON); /* drain and linger read until EOF, too */
    if (!h->keep_alive) {
        dx__conn_finish_after_flush(c);
        return;
    }
    c->state = CS_HEAD;
    c->flags |= CF_HTTP_IDLE;
    dx__conn_timer_start(c, dx__conn_ep(c)->opt.http_keepalive_ms);
    /* Input kept here or inside the transport (TLS records) would wake no
     * one: served from the loop (not from inside a reply). */
    if (h->pend || dx__stream_pending(&c->st))
        dx__loop_ready(dx__conn_ep(c)->loop, &c->io);
}

/* Waits for the socket to take more (EPOLLOUT), not reading meanwhile. */
static void wait_writable(dx_conn *c)
{
    if (!(c->flags & CF_READ_OFF) || (c->flags & CF_READ_HUP))
        dx__conn_reading(c, DX__READ_OFF);
    dx__conn_want_write(c, true);
    dx__conn_timer_start(c, dx__conn_ep(c)->opt.close_timeout_ms);
}

/* Sends what the socket takes of the answer; at most send_max is ever
 * queued (one piece of FILE_PIECE bytes), the file is read a piece at a
 * time or not at all (sendfile). */
static void send_more(dx_conn *c)
{
    dx__http *h = DX_COLD(c, http);
    size_t budget = SEND_PER_EVENT;
    while (h->left) {
        if (WQ_LEN(c)) {
            wait_writable(c);
            return;
        }
        if (budget == 0) {
            dx__conn_want_write(c, true); /* writable: back after the others had their turn */
            return;
        }
        size_t want = h->left < budget ? (size_t)h->left : budget;
        if (dx__stream_can_sendfile(&c->st)) {
            ssize_t w = dx__stream_sendfile(&c->st, c->io.fd, h->fd, &h->off, want);
            if (w == DX_EAGAIN) {
                wait_writable(c);
                return;
            }
            if (w <= 0) {
                dx__conn_abort(c, DX_CLOSE_ABNORMAL, w == 0 ? "static file shrank while being sent"
                                                            : "sendfile failed");
                return;
            }
            c->bytes_out += (size_t)w;
            dx__conn_ep(c)->st.bytes_out += (size_t)w;
            h->left -= (size_t)w;
            budget -= (size_t)w;
        } else {
            uint8_t piece[FILE_PIECE];
            size_t n = want < sizeof piece ? want : sizeof piece;
            if (n > dx__conn_ep(c)->opt.send_max)
                n = dx__conn_ep(c)->opt.send_max;
            ssize_t r = pread(h->fd, piece, n, (off_t)h->off);
            if (r <= 0) {
                dx__conn_abort(c, DX_CLOSE_ABNORMAL, r == 0 ? "static file shrank while being sent"
                                                            : "static file read failed");
                return;
            }
            h->off += r;
            h->left -= (size_t)r;
            budget -= (size_t)r;
            if (dx__conn_write(c, piece, (size_t)r) != 0 || c->state == CS_DEAD) {
                dx__conn_abort(c, DX_CLOSE_ABNORMAL, "write failed");
                return;
            }
        }
    }
    if (h->fd >= 0) {
        close(h->fd);
        h->fd = -1;
    }
    if (WQ_LEN(c)) {
        wait_writable(c);
        return;
    }
    answer_done(c);
}

/* An error found while reading a request (400, 413, 501): answered at once,
 * and the connection closes after it (the rest of the body is not read). */
static void http_error(dx_conn *c, int status, const char *why)
{
    dx__http *h = DX_COLD(c, http);
    hreq *r = h->req;
    h->req = NULL;
    r->conn = NULL;
    h->keep_alive = false;
    dx__log(LOG(c), DX_LOG_INFO, "conn=%llu http remote=%s method=%s path=%.*s refused status=%d: %s", (unsigned long long)c->id,
            r->remote, r->pub.method, (int)r->pub.path_len, r->pub.path, status, why);
    simple(c, r, status, NULL);
    free_req(r);
}

static void serve_file(dx_conn *c, const hreq *r, const char *path)
{
    dx_server *srv = dx__conn_ep(c)->srv;
    char full[PATH_MAX], real[PATH_MAX];
    if (snprintf(full, sizeof full, "%s%s", srv->static_root, path) >= (int)sizeof full) {
        simple(c, r, 404, NULL);
        return;
    }
    struct stat st;
    if (stat(full, &st) == 0 && S_ISDIR(st.st_mode)) {
        size_t l = strlen(full);
        if (snprintf(full + l, sizeof full - l, "%sindex.html", full[l - 1] == '/' ? "" : "/") >=
            (int)(sizeof full - l)) {
            simple(c, r, 404, NULL);
            return;
        }
    }
    size_t rl = strlen(srv->static_root);
    if (!realpath(full, real) || strncmp(real, srv->static_root, rl) != 0 || (real[rl] != '/' && real[rl] != 0)) {
        simple(c, r, 404, NULL);
        return;
    }
    int fd = open(real, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        simple(c, r, 404, NULL);
        return;
    }
    (void)respond(c, r, 200, mime_type(real), NULL, NULL, 0, fd, (uint64_t)st.st_size);
}

/* The server's own answer: a static file for GET/HEAD, else 404/405. */
static void serve_default(dx_conn *c, const hreq *r)
{
    dx_server *srv = dx__conn_ep(c)->srv;
    const dx_http_req *q = &r->pub;
    bool get = q->method_len == 3 && memcmp(q->method, "GET", 3) == 0;
    if (!get && !r->head_method) {
        simple(c, r, 405, "Allow: GET, HEAD\r\n");
        return;
    }
    if (!srv->static_root) {
        simple(c, r, 404, NULL);
        return;
    }
    char path[PATH_MAX];
    if (decode_path(q->target, q->target_len, path, sizeof path) < 0) {
        simple(c, r, 400, NULL);
        return;
    }
    serve_file(c, r, path);
}

/* ---- streamed answers ----------------------------------------------------------- */

/* The stream's on_close, from the loop's deferred list; then its memory. */
static void stream_closed(dx_loop *loop, dx__deferred *d)
{
    dx_http_stream *s = dx_list_entry(d, dx_http_stream, dclose);
    if (s->cb.on_close)
        s->cb.on_close(s, s->err, s->ud);
    dx__free(loop->seams, s);
}

/* The connection is going (conn_mark, through dx__http_conn_gone): the
 * handle forgets it and its on_close is queued. An end counts as clean once
 * the connection reached LINGER: every byte was handed to the kernel. */
static void stream_detach(dx_conn *c, dx_http_stream *s)
{
    dx__conn_ep(c)->nstreams--;
    s->conn = NULL;
    if (!s->err_set)
        s->err = s->ended && c->state == CS_LINGER ? 0 : DX_ECLOSED;
    dx__log(LOG(c), DX_LOG_INFO, "conn=%llu http stream end: %s bytes_out=%llu", (unsigned long long)c->id,
            s->err ? dx_errname(s->err) : "ok", (unsigned long long)c->bytes_out);
    s->dclose.fn = stream_closed;
    dx__loop_later(s->loop, &s->dclose);
}

/* Ends the stream with `err` for on_close: the connection is dropped. */
static void stream_fail(dx_http_stream *s, int err, const char *why)
{
    s->err = err;
    s->err_set = true;
    dx__conn_abort(s->conn, DX_CLOSE_ABNORMAL, why);
}

/* Peer bytes on a stream are read and dropped, up to a bound. */
static void stream_discard(dx_conn *c, size_t n)
{
    dx__http *h = DX_COLD(c, http);
    h->discarded += n;
    if (h->discarded > STREAM_DISCARD_MAX && h->stream)
        stream_fail(h->stream, DX_EPROTO, "peer sent more than 64 KiB on a streamed answer");
}

/* Readiness of a stream: the queue emptied at EPOLLOUT (on_io flushed it
 * just before) after it had passed send_high_water: on_drain, from the
 * loop. A backlogged queue is flushed only there (new output queues behind
 * it), so no drain is missed. Reading stays on (input is dropped). */
static bool stream_io(dx_conn *c, uint32_t events)
{
    dx_http_stream *s = DX_COLD(c, http)->stream;
    if ((events & EPOLLOUT) && (c->flags & CF_DRAIN_ARMED) && !WQ_LEN(c)) {
        c->flags &= (uint16_t)~CF_DRAIN_ARMED;
        if (s && !s->ended && s->cb.on_drain)
            s->cb.on_drain(s, s->ud);
        if (c->state != CS_HTTP)
            return false; /* ended, or dropped (the server freed) in on_drain */
    }
    return true;
}

/* The head of a streamed answer is built; write it and turn the connection
 * into a stream. 0, or DX_ECLOSED / DX_ENOMEM (s not attached). */
static int stream_start(dx_conn *c, const hreq *r, dx_http_stream *s, const char *head, size_t n, int status)
{
    dx__ep *ep = dx__conn_ep(c);
    dx__http *h = DX_COLD(c, http);
    dx__log(LOG(c), DX_LOG_INFO, "conn=%llu http remote=%s method=%s path=%.*s status=%d stream%s",
            (unsigned long long)c->id, r->remote, r->pub.method, (int)r->pub.path_len, r->pub.path, status,
            s->chunked ? " chunked" : "");
    h->phase = HP_STREAM;
    int rc = dx__conn_write(c, head, n);
    if (c->state == CS_DEAD)
        return DX_ECLOSED;
    if (rc) {
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, "out of memory queueing a stream's head");
        return rc;
    }
    h->stream = s;
    s->conn = c;
    ep->nstreams++;
    /* A drain armed by an earlier answer on this connection is not ours. */
    c->flags &= (uint16_t)~CF_DRAIN_ARMED;
    dx__conn_timer_stop(c); /* no keep-alive or handshake deadline on a stream */
    /* Pipelined input kept while the answer was pending: dropped, counted. */
    if (h->pend) {
        size_t pl = h->pend_len;
        dx__free(ep->loop->seams, h->pend);
        h->pend = NULL;
        h->pend_len = 0;
        stream_discard(c, pl);
        if (c->state == CS_DEAD)
            return 0; /* attached: on_close(DX_EPROTO) follows */
    }
    if (c->flags & CF_READ_OFF)
        dx__conn_reading(c, DX__READ_ON);
    if (dx__stream_pending(&c->st))
        dx__loop_ready(ep->loop, &c->io); /* TLS records epoll cannot announce: an EOF among them */
    if (r->head_method) {
        s->ended = true;
        dx__conn_finish_after_flush(c);
    }
    return 0;
}

bool dx__http_stream_shutdown(dx_conn *c)
{
    dx__http *h = DX_COLD(c, http);
    if (c->state != CS_HTTP || !h || h->phase != HP_STREAM || !h->stream)
        return false;
    (void)dx_http_stream_end(h->stream);
    return true;
}

void dx__http_streams_drop(dx_loop *loop)
{
    dx_list_foreach_safe(node, tmp, &loop->deferred)
    {
        dx__deferred *d = dx_list_entry(node, dx__deferred, node);
        if (d->fn != stream_closed)
            continue;
        dx_list_remove(node);
        dx__free(loop->seams, dx_list_entry(d, dx_http_stream, dclose));
    }
}

/* ---- requests ----------------------------------------------------------------- */

/* The request is complete: the application's turn, or the server's. */
static void dispatch(dx_conn *c)
{
    dx__ep *ep = dx__conn_ep(c);
    dx__http *h = DX_COLD(c, http);
    hreq *r = h->req;
    h->phase = HP_WAIT;
    dx__conn_timer_stop(c);
    int ret = 0;
    if (ep->opt.cb.on_http) {
        r->in_cb = true;
        ret = ep->opt.cb.on_http(ep->srv, &r->pub, ep->opt.ud);
        r->in_cb = false;
        if (r->answered || !r->conn) {
            /* Answered inside, or the connection died meanwhile (then an
             * application that took the request gets DX_ECLOSED later). */
            if (r->answered || !ret)
                free_req(r);
            else
                r->held = true;
            return;
        }
    }
    if (ret) {
        /* Deferred: nothing more is read until the answer; the peer leaving
         * is still noticed (its answer then returns DX_ECLOSED). */
        r->held = true;
        dx__conn_reading(c, DX__READ_HUP);
        return;
    }
    h->req = NULL;
    r->conn = NULL;
    serve_default(c, r);
    free_req(r);
}

/* Appends body bytes; false when the connection was dropped (no memory). */
static bool body_append(dx_conn *c, hreq *r, const uint8_t *p, size_t n)
{
    size_t need = r->pub.body_len + n + 1;
    if (need > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 1024;
        while (cap < need)
            cap *= 2;
        size_t most = dx__conn_ep(c)->opt.max_http_body + 1;
        if (cap > most)
            cap = most < need ? need : most;
        uint8_t *b = dx__realloc(r->seams, r->body, cap);
        if (!b) {
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "out of memory reading an HTTP body");
            return false;
        }
        r->body = b;
        r->body_cap = cap;
        r->pub.body = b;
    }
    memcpy(r->body + r->pub.body_len, p, n);
    r->pub.body_len += n;
    r->body[r->pub.body_len] = 0;
    return true;
}

/* Content-Length (RFC 9110 §8.6): 1*DIGIT; several equal values are one. */
static int content_length(const dx_http_request *req, uint64_t *out)
{
    bool seen = false;
    uint64_t v = 0;
    dx_http_list_iter it;
    dx__http_list_iter_init(&it, req->headers, req->n_headers, "content-length");
    const char *item;
    size_t len;
    while (dx__http_list_iter_next(&it, &item, &len)) {
        uint64_t x = 0;
        if (len == 0 || len > 18)
            return DX_EHTTP; /* 18 digits: far past any cap, no overflow */
        for (size_t i = 0; i < len; i++) {
            if (item[i] < '0' || item[i] > '9')
                return DX_EHTTP;
            x = x * 10 + (uint64_t)(item[i] - '0');
        }
        if (seen && x != v)
            return DX_EHTTP;
        v = x;
        seen = true;
    }
    if (!seen && dx__http_find(req->headers, req->n_headers, "content-length"))
        return DX_EHTTP; /* present but empty */
    *out = v;
    return 0;
}

void dx__http_begin(dx_conn *c, const dx_http_request *req, const char *buf, size_t len)
{
    dx__ep *ep = dx__conn_ep(c);
    const dx_seams *seams = ep->loop->seams;
    dx__http *h = DX_COLD(c, http);
    if (!h) {
        h = dx__alloc(seams, sizeof *h);
        if (!h) {
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "out of memory");
            return;
        }
        dx__cold *k = dx__conn_cold(c);
        if (!k) {
            dx__free(seams, h);
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "out of memory");
            return;
        }
        memset(h, 0, sizeof *h);
        h->fd = -1;
        k->http = h;
    }
    size_t nh = req->n_headers;
    hreq *r = dx__alloc(seams, sizeof *r + nh * sizeof(dx_http_header) + len + 1);
    if (!r) {
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, "out of memory");
        return;
    }
    memset(r, 0, sizeof *r);
    r->seams = seams;
    r->headers = (dx_http_header *)(void *)(r + 1);
    char *copy = (char *)(r->headers + nh);
    memcpy(copy, buf, len);
    copy[len] = 0;
    for (size_t i = 0; i < nh; i++) {
        r->headers[i] = req->headers[i];
        r->headers[i].name = copy + (req->headers[i].name - buf);
        r->headers[i].value = copy + (req->headers[i].value - buf);
    }
    r->n_headers = nh;
    dx_http_req *q = &r->pub;
    char *method = copy + (req->method - buf), *target = copy + (req->target - buf);
    method[req->method_len] = 0; /* the SP after them, in our copy */
    target[req->target_len] = 0;
    q->method = method;
    q->method_len = req->method_len;
    q->target = target;
    q->target_len = req->target_len;
    q->path = target;
    const char *qm = memchr(target, '?', req->target_len);
    q->path_len = qm ? (size_t)(qm - target) : req->target_len;
    q->query = qm ? qm + 1 : NULL;
    q->query_len = qm ? req->target_len - q->path_len - 1 : 0;
    q->body = (const uint8_t *)"";
    q->minor_version = req->minor_version;
    q->conn_id = c->id;
    dx_conn_remote(c, r->remote, sizeof r->remote);
    q->remote = r->remote;
    r->head_method = req->method_len == 4 && memcmp(req->method, "HEAD", 4) == 0;
    r->conn = c;
    h->req = r;
    h->nreq++;
    h->phase = HP_NONE;
    h->chunked = false;
    h->body_left = 0;
    c->state = CS_HTTP;

    /* Keep-alive (RFC 9112 §9.3): HTTP/1.1 unless "close"; HTTP/1.0 only
     * with "keep-alive"; bounded by the options. */
    bool ka = ep->opt.http_keepalive_ms != (unsigned)-1 && h->nreq < ep->opt.http_max_requests;
    if (dx__http_headers_have(req->headers, nh, "connection", "close"))
        ka = false;
    if (req->minor_version == 0 && !dx__http_headers_have(req->headers, nh, "connection", "keep-alive"))
        ka = false;
    h->keep_alive = ka;

    /* Body framing (RFC 9112 §6.1-6.3). Ambiguous framing is refused: it
     * is how requests are smuggled past proxies. */
    const dx_http_header *te = dx__http_find(req->headers, nh, "transfer-encoding");
    uint64_t clen = 0;
    if (te) {
        if (req->minor_version == 0 || dx__http_find(req->headers, nh, "content-length")) {
            http_error(c, 400, "Transfer-Encoding with Content-Length, or in HTTP/1.0");
            return;
        }
        dx_http_list_iter it;
        dx__http_list_iter_init(&it, req->headers, nh, "transfer-encoding");
        const char *item;
        size_t il, n = 0;
        bool chunked = false;
        while (dx__http_list_iter_next(&it, &item, &il)) {
            n++;
            chunked = dx__http_eq_ci(item, il, "chunked");
        }
        if (n != 1 || !chunked) {
            http_error(c, n && chunked ? 501 : 400, "transfer coding other than chunked");
            return;
        }
        h->chunked = true;
        dx__http_chunked_init(&h->ck);
    } else if (content_length(req, &clen)) {
        http_error(c, 400, "malformed Content-Length");
        return;
    }
    if (clen > ep->opt.max_http_body) {
        char why[96];
        snprintf(why, sizeof why, "body of %llu bytes over max_http_body %zu", (unsigned long long)clen,
                 ep->opt.max_http_body);
        http_error(c, 413, why);
        return;
    }
    h->body_left = clen;
    if (h->chunked || h->body_left) {
        h->phase = HP_BODY;
        dx__conn_timer_start(c, ep->opt.handshake_timeout_ms);
        /* RFC 9110 §10.1.1: a client waiting for 100 before its body. */
        if (req->minor_version >= 1 && dx__http_headers_have(req->headers, nh, "expect", "100-continue")) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            (void)dx__conn_write(c, cont, sizeof cont - 1);
        }
        return;
    }
    dispatch(c);
}

/* Input read past a request whose answer is pending: kept for later. */
static void stash(dx_conn *c, const uint8_t *p, size_t n)
{
    dx__http *h = DX_COLD(c, http);
    uint8_t *b = dx__realloc(dx__conn_ep(c)->loop->seams, h->pend, h->pend_len + n);
    if (!b) {
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, "out of memory");
        return;
    }
    memcpy(b + h->pend_len, p, n);
    h->pend = b;
    h->pend_len += n;
}

size_t dx__http_input(dx_conn *c, const uint8_t *p, size_t n)
{
    dx__http *h = DX_COLD(c, http);
    if (h->phase == HP_STREAM) {
        stream_discard(c, n);
        return n;
    }
    if (h->phase != HP_BODY) {
        stash(c, p, n);
        return n;
    }
    hreq *r = h->req;
    size_t max = dx__conn_ep(c)->opt.max_http_body;
    dx__conn_timer_start(c, dx__conn_ep(c)->opt.handshake_timeout_ms); /* progress */
    if (!h->chunked) {
        size_t take = n < h->body_left ? n : (size_t)h->body_left;
        if (!body_append(c, r, p, take))
            return n;
        h->body_left -= take;
        if (h->body_left == 0)
            dispatch(c);
        return take;
    }
    size_t used = 0;
    while (used < n) {
        size_t u, dl;
        const uint8_t *d;
        int rc = dx__http_chunked_step(&h->ck, p + used, n - used, &u, &d, &dl);
        used += u;
        if (rc < 0) {
            http_error(c, 400, "malformed chunked body");
            return n;
        }
        if (r->pub.body_len + dl + dx__http_chunked_left(&h->ck) > max) { /* as soon as a chunk-size says so */
            char why[96];
            snprintf(why, sizeof why, "chunked body over max_http_body %zu", max);
            http_error(c, 413, why);
            return n;
        }
        if (h->ck.overhead > max / 2 + CHUNKED_SLACK) {
            http_error(c, 413, "chunked framing (sizes, extensions, trailers) too large for the body cap");
            return n;
        }
        if (dl && !body_append(c, r, d, dl))
            return n;
        if (rc == 1) {
            dispatch(c);
            return used;
        }
    }
    return used;
}

bool dx__http_sending(const dx_conn *c) { return DX_COLD(c, http) && DX_COLD(c, http)->phase == HP_SEND; }

bool dx__http_io(dx_conn *c, uint32_t events)
{
    dx__http *h = DX_COLD(c, http);
    if (h->phase == HP_STREAM)
        return stream_io(c, events);
    if (h->phase == HP_BODY || h->phase == HP_NONE)
        return true;
    if ((events & (EPOLLERR | EPOLLHUP)) || (h->phase == HP_WAIT && (events & EPOLLRDHUP))) {
        const char *why = h->phase == HP_WAIT ? "peer closed before the answer" : "connection lost while answering";
        dx__log(LOG(c), DX_LOG_INFO, "conn=%llu http: %s", (unsigned long long)c->id, why);
        dx__conn_abort(c, DX_CLOSE_ABNORMAL, why);
        return false;
    }
    if (h->phase == HP_SEND && (events & EPOLLOUT)) {
        if (!WQ_LEN(c))
            send_more(c);
        else /* the queue moved (on_io flushed it): progress */
            dx__conn_timer_start(c, dx__conn_ep(c)->opt.close_timeout_ms);
    }
    return false;
}

void dx__http_resume(dx_conn *c)
{
    dx__http *h = DX_COLD(c, http);
    if (!h->pend)
        return;
    const dx_seams *seams = dx__conn_ep(c)->loop->seams;
    uint8_t *b = h->pend;
    size_t n = h->pend_len;
    h->pend = NULL;
    h->pend_len = 0;
    dx__conn_process(c, b, n);
    dx__free(seams, b);
}

void dx__http_timeout(dx_conn *c)
{
    dx__http *h = DX_COLD(c, http);
    if (h->phase == HP_STREAM)
        return; /* a stream has no deadline (its timer is never armed) */
    char why[96];
    snprintf(why, sizeof why, h->phase == HP_BODY ? "HTTP body: nothing received for %u ms"
                                                  : "HTTP answer: peer took nothing for %u ms",
             h->phase == HP_BODY ? dx__conn_ep(c)->opt.handshake_timeout_ms : dx__conn_ep(c)->opt.close_timeout_ms);
    dx__log(LOG(c), DX_LOG_INFO, "conn=%llu http %s", (unsigned long long)c->id, why);
    dx__conn_abort(c, DX_CLOSE_ABNORMAL, why);
}

void dx__http_conn_gone(dx_conn *c)
{
    dx__http *h = DX_COLD(c, http);
    if (!h)
        return;
    c->cold->http = NULL;
    if (h->stream)
        stream_detach(c, h->stream);
    hreq *r = h->req;
    if (r) {
        r->conn = NULL;
        if (!r->in_cb && !r->held)
            free_req(r);
    }
    if (h->fd >= 0)
        close(h->fd);
    const dx_seams *seams = dx__conn_ep(c)->loop->seams;
    dx__free(seams, h->pend);
    dx__free(seams, h);
}

/* ---- public API ---------------------------------------------------------------- */

const char *dx_http_req_header(const dx_http_req *req, const char *name, size_t *len)
{
    const hreq *r = (const hreq *)(const void *)req;
    const dx_http_header *h = dx__http_find(r->headers, r->n_headers, name);
    if (!h)
        return NULL;
    if (len)
        *len = h->value_len;
    return h->value;
}

int dx_http_req_header_at(const dx_http_req *req, size_t i, const char **name, size_t *name_len,
                          const char **value, size_t *value_len)
{
    const hreq *r = (const hreq *)(const void *)req;
    if (i >= r->n_headers)
        return 0;
    *name = r->headers[i].name;
    *name_len = r->headers[i].name_len;
    *value = r->headers[i].value;
    *value_len = r->headers[i].value_len;
    return 1;
}

int dx_http_reply(dx_http_req *req, int status, const char *content_type, const char *headers, const void *body,
                  size_t len)
{
    hreq *r = (hreq *)(void *)req;
    if (r->answered)
        return DX_ESTATE;
    r->answered = true;
    dx_conn *c = r->conn;
    int rc;
    if (!c || c->state == CS_DEAD) {
        rc = DX_ECLOSED;
    } else {
        DX_COLD(c, http)->req = NULL;
        r->conn = NULL;
        rc = 0;
        if (status < 200 || status > 599 || (headers && !dx__http_valid_header_block(headers)) ||
            (content_type && !dx__http_is_field_value(content_type, strlen(content_type))))
            rc = DX_EINVAL;
        else if (len > dx__conn_ep(c)->opt.send_max)
            rc = DX_ELIMIT;
        if (rc) {
            dx__log(LOG(c), DX_LOG_WARN, "conn=%llu http: the application's answer was refused (%s): 500",
                    (unsigned long long)c->id, dx_strerror(rc));
            simple(c, r, 500, NULL);
        } else {
            rc = respond(c, r, status, content_type, headers, body, len, -1, 0);
            if (rc == DX_EINVAL) /* the head did not fit */
                simple(c, r, 500, NULL);
        }
    }
    if (!r->in_cb)
        free_req(r);
    return rc;
}

dx_http_stream *dx_http_reply_stream(dx_http_req *req, int status, const char *content_type, const char *headers,
                                     const dx_http_stream_callbacks *cb, void *ud, int *err)
{
    hreq *r = (hreq *)(void *)req;
    if (r->answered) {
        if (err)
            *err = DX_ESTATE;
        return NULL;
    }
    r->answered = true;
    dx_conn *c = r->conn;
    dx_http_stream *s = NULL;
    int rc = 0;
    if (!c || c->state == CS_DEAD) {
        rc = DX_ECLOSED;
    } else {
        const dx_seams *seams = dx__conn_ep(c)->loop->seams;
        DX_COLD(c, http)->req = NULL;
        r->conn = NULL;
        char head[2048];
        int n = 0;
        bool chunked = r->pub.minor_version >= 1;
        if (status < 200 || status > 599 || (headers && !dx__http_valid_header_block(headers)) ||
            (content_type && !dx__http_is_field_value(content_type, strlen(content_type)))) {
            rc = DX_EINVAL;
        } else {
            n = snprintf(head, sizeof head,
                         "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%sConnection: close\r\n"
                         "X-Content-Type-Options: nosniff\r\n%s\r\n",
                         status, dx_http_status_text(status), content_type ? content_type : "text/plain; charset=utf-8",
                         chunked ? "Transfer-Encoding: chunked\r\n" : "", headers ? headers : "");
            if (n < 0 || (size_t)n >= sizeof head)
                rc = DX_EINVAL;
            else if ((s = dx__alloc(seams, sizeof *s)) == NULL)
                rc = DX_ENOMEM;
        }
        if (rc) {
            dx__log(LOG(c), DX_LOG_WARN, "conn=%llu http: the application's stream was refused (%s): 500",
                    (unsigned long long)c->id, dx_strerror(rc));
            DX_COLD(c, http)->keep_alive = false;
            simple(c, r, 500, NULL);
        } else {
            memset(s, 0, sizeof *s);
            s->loop = dx__conn_ep(c)->loop;
            if (cb)
                s->cb = *cb;
            s->ud = ud;
            s->id = c->id;
            s->chunked = chunked;
            rc = stream_start(c, r, s, head, (size_t)n, status);
            if (rc) {
                dx__free(seams, s);
                s = NULL;
            }
        }
    }
    if (!r->in_cb)
        free_req(r);
    if (err)
        *err = rc;
    return s;
}

/* One chunk (HTTP/1.1) or raw bytes (HTTP/1.0) of a[0..alen) b[0..blen);
 * with rb, `a` lies inside it and is queued by reference (blen is 0). */
static int stream_put(dx_http_stream *s, const void *a, size_t alen, const void *b, size_t blen, dx_rcbuf *rb)
{
    dx_conn *c = s->conn;
    if (!c || s->ended || c->state != CS_HTTP)
        return DX_ECLOSED;
    size_t len = alen + blen;
    if (len == 0)
        return 0; /* a zero-size chunk would end the body */
    dx__ep *ep = dx__conn_ep(c);
    char hdr[24];
    size_t hl = s->chunked ? (size_t)snprintf(hdr, sizeof hdr, "%zx\r\n", len) : 0;
    size_t total = hl + len + (s->chunked ? 2u : 0u);
    /* As for frames (send.c): the cap applies to what waits because the
     * kernel refused it; a piece larger than send_max goes out when nothing
     * waits. */
    if ((c->flags & CF_WANT_WRITE) && WQ_LEN(c) && WQ_LEN(c) + total > ep->opt.send_max) {
        ep->st.dropped_slow++;
        dx__log(LOG(c), DX_LOG_WARN, "conn=%llu slow stream reader: %zu bytes queued, send_max %zu; dropping",
                (unsigned long long)c->id, WQ_LEN(c), ep->opt.send_max);
        stream_fail(s, DX_ELIMIT, "send queue full");
        return DX_ELIMIT;
    }
    int rc = hl ? dx__conn_write(c, hdr, hl) : 0;
    if (!rc && alen)
        rc = rb ? dx__conn_write_ref(c, rb, a, alen) : dx__conn_write(c, a, alen);
    if (!rc && blen)
        rc = dx__conn_write(c, b, blen);
    if (!rc && s->chunked)
        rc = dx__conn_write(c, "\r\n", 2);
    if (c->state == CS_DEAD)
        return DX_ECLOSED; /* the write failed: on_close(DX_ECLOSED) follows */
    if (rc) {
        stream_fail(s, rc, "out of memory queueing a chunk"); /* half a chunk may be queued */
        return rc;
    }
    return 0;
}

int dx_http_stream_send(dx_http_stream *s, const void *data, size_t len)
{
    return stream_put(s, data, len, NULL, 0, NULL);
}

int dx_http_stream_send2(dx_http_stream *s, const void *a, size_t alen, const void *b, size_t blen)
{
    return stream_put(s, a, alen, b, blen, NULL);
}

int dx_http_stream_send_msg(dx_http_stream *s, dx_msg *m)
{
    if (!m)
        return DX_EINVAL;
    unsigned opcode;
    size_t hl;
    dx_rcbuf *rb = dx__msg_frame(m, &opcode, &hl); /* the payload follows the frame header */
    return stream_put(s, dx_rcbuf_data(rb) + hl, dx_rcbuf_len(rb) - hl, NULL, 0, rb);
}

size_t dx_http_stream_buffered(const dx_http_stream *s) { return s->conn ? WQ_LEN(s->conn) : 0; }

int dx_http_stream_end(dx_http_stream *s)
{
    dx_conn *c = s->conn;
    if (!c || s->ended || c->state != CS_HTTP)
        return DX_ECLOSED;
    s->ended = true;
    if (s->chunked) {
        int rc = dx__conn_write(c, "0\r\n\r\n", 5); /* the last chunk, no trailers (RFC 9112 §7.1) */
        if (c->state == CS_DEAD)
            return DX_ECLOSED;
        if (rc) {
            stream_fail(s, rc, "out of memory queueing the last chunk");
            return DX_ECLOSED;
        }
    }
    dx__conn_finish_after_flush(c); /* flush, FIN, wait for EOF (close_timeout_ms) */
    return 0;
}

uint64_t dx_http_stream_id(const dx_http_stream *s) { return s->id; }
