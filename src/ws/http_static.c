/*
 * src/ws/http_static.c: plain HTTP/1.1 answers on the WebSocket port, so one
 * port serves the page and the socket: static files (GET, HEAD), 404, 405.
 *
 * Layer: ws. Every response carries Connection: close; the connection then
 * drains and closes. Files are read whole into the send queue, bounded by
 * DX_STATIC_MAX_FILE. Path rules: the target's path is percent-decoded;
 * NUL, backslashes and ".." segments are refused (400); the resolved path
 * must stay under the root (realpath), so symlinks cannot escape it; a
 * directory serves its index.html.
 */
#define _GNU_SOURCE
#include "ws/ws.h"

#include "core/log.h"
#include "core/seams.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define DX_STATIC_MAX_FILE (16u << 20)

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

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Decodes the path part of a target into out; 0 or -1 when it is unsafe. */
static int decode_path(const char *t, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len && t[i] != '?' && t[i] != '#'; i++) {
        char ch = t[i];
        if (ch == '%') {
            if (i + 2 >= len + 0 || hexval(t[i + 1]) < 0 || hexval(t[i + 2]) < 0)
                return -1;
            ch = (char)(hexval(t[i + 1]) * 16 + hexval(t[i + 2]));
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

/* The method and path of the request being answered, for the log line:
 * known while dx__http_serve runs (empty strings otherwise). The query is
 * left out; both are capped for the log. */
static void request_names(const dx_conn *c, const char **m, int *ml, const char **p, int *pl)
{
    const dx_http_request *req = c->ep->http_conn == c ? c->ep->http_req : NULL;
    *m = *p = "";
    *ml = *pl = 0;
    if (!req)
        return;
    size_t plen = 0;
    while (plen < req->target_len && req->target[plen] != '?')
        plen++;
    *m = req->method;
    *ml = (int)(req->method_len > 16 ? 16 : req->method_len);
    *p = req->target;
    *pl = (int)(plen > 256 ? 256 : plen);
}

int dx__http_respond(dx_conn *c, int status, const char *content_type, const char *headers, const void *body,
                     size_t len, bool head_only)
{
    char head[1024];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n"
                     "Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n%s\r\n",
                     status, dx_http_status_text(status), content_type ? content_type : "text/plain; charset=utf-8",
                     len, headers ? headers : "");
    if (n < 0 || (size_t)n >= sizeof head)
        return DX_EINVAL;
    c->flags |= CF_REPLIED;
    int rc = dx__conn_write(c, head, (size_t)n);
    if (rc == 0 && !head_only && len)
        rc = dx__conn_write(c, body, len);
    char remote[64];
    dx_conn_remote(c, remote, sizeof remote);
    const char *m, *p;
    int ml, pl;
    request_names(c, &m, &ml, &p, &pl);
    dx__log(c->ep->loop->log, DX_LOG_INFO, "conn=%llu http remote=%s method=%.*s path=%.*s status=%d bytes=%zu",
            (unsigned long long)c->id, remote, ml, m, pl, p, status, head_only ? 0 : len);
    dx__conn_finish_after_flush(c);
    return rc;
}

int dx_http_reply(dx_conn *c, int status, const char *content_type, const char *headers, const void *body,
                  size_t len)
{
    if (!(c->flags & CF_IN_HTTP) || (c->flags & CF_REPLIED))
        return DX_ESTATE;
    if (len > c->ep->opt.send_max)
        return DX_ELIMIT;
    if (status < 100 || status > 599)
        return DX_EINVAL;
    return dx__http_respond(c, status, content_type, headers, body, len, false);
}

static void simple(dx_conn *c, int status, const char *headers, bool head_only)
{
    char body[128];
    int n = snprintf(body, sizeof body, "%d %s\n", status, dx_http_status_text(status));
    (void)dx__http_respond(c, status, NULL, headers, body, (size_t)n, head_only);
}

static void serve_file(dx_conn *c, const char *path, bool head_only)
{
    dx_server *srv = c->ep->srv;
    char full[PATH_MAX], real[PATH_MAX];
    if (snprintf(full, sizeof full, "%s%s", srv->static_root, path) >= (int)sizeof full) {
        simple(c, 404, NULL, head_only);
        return;
    }
    struct stat st;
    if (stat(full, &st) == 0 && S_ISDIR(st.st_mode)) {
        size_t l = strlen(full);
        if (snprintf(full + l, sizeof full - l, "%sindex.html", full[l - 1] == '/' ? "" : "/") >=
            (int)(sizeof full - l)) {
            simple(c, 404, NULL, head_only);
            return;
        }
    }
    size_t rl = strlen(srv->static_root);
    if (!realpath(full, real) || strncmp(real, srv->static_root, rl) != 0 || (real[rl] != '/' && real[rl] != 0)) {
        simple(c, 404, NULL, head_only);
        return;
    }
    int fd = open(real, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        simple(c, 404, NULL, head_only);
        return;
    }
    if ((uint64_t)st.st_size > DX_STATIC_MAX_FILE) {
        close(fd);
        dx__log(srv->ep.loop->log, DX_LOG_WARN, "http: %s is %lld bytes, over the %u-byte static file limit", real,
                (long long)st.st_size, DX_STATIC_MAX_FILE);
        simple(c, 500, NULL, head_only);
        return;
    }
    size_t size = (size_t)st.st_size;
    uint8_t *buf = dx__alloc(srv->ep.loop->seams, size ? size : 1);
    size_t got = 0;
    while (buf && got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (!buf || got != size) {
        dx__free(srv->ep.loop->seams, buf);
        simple(c, 500, NULL, head_only);
        return;
    }
    (void)dx__http_respond(c, 200, mime_type(real), NULL, buf, size, head_only);
    dx__free(srv->ep.loop->seams, buf);
}

static void http_serve(dx_conn *c, const dx_http_request *req);

void dx__http_serve(dx_conn *c, const dx_http_request *req)
{
    dx__ep *ep = c->ep;
    ep->http_req = req;
    ep->http_conn = c;
    http_serve(c, req);
    ep->http_req = NULL; /* the endpoint outlives this call: a free from on_http is deferred */
    ep->http_conn = NULL;
}

static void http_serve(dx_conn *c, const dx_http_request *req)
{
    dx_server *srv = c->ep->srv;
    bool get = req->method_len == 3 && memcmp(req->method, "GET", 3) == 0;
    bool head = req->method_len == 4 && memcmp(req->method, "HEAD", 4) == 0;
    size_t plen = 0;
    while (plen < req->target_len && req->target[plen] != '?')
        plen++;
    if (srv->ep.opt.cb.on_http) {
        char method[16];
        size_t ml = req->method_len < sizeof method - 1 ? req->method_len : sizeof method - 1;
        memcpy(method, req->method, ml);
        method[ml] = 0;
        c->flags |= CF_IN_HTTP;
        int handled = srv->ep.opt.cb.on_http(srv, c, method, req->target, plen, srv->ep.opt.ud);
        c->flags &= (uint16_t)~CF_IN_HTTP;
        if (c->state == CS_DEAD || (c->flags & CF_REPLIED))
            return;
        if (handled) {
            simple(c, 500, NULL, false); /* claimed it but did not answer */
            return;
        }
    }
    if (!get && !head) {
        simple(c, 405, "Allow: GET, HEAD\r\n", false);
        return;
    }
    if (!srv->static_root) {
        simple(c, 404, NULL, head);
        return;
    }
    char path[PATH_MAX];
    if (decode_path(req->target, req->target_len, path, sizeof path) < 0) {
        simple(c, 400, NULL, head);
        return;
    }
    serve_file(c, path, head);
}
