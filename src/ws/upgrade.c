/*
 * src/ws/upgrade.c: the application's view of a WebSocket upgrade request
 * (dx_request_*) and its decision on it: at once from on_upgrade, or later
 * through a dx_upgrade handle (dx_request_defer, dx_upgrade_accept/refuse).
 *
 * Layer: ws. Knows the request (proto/http, proto/handshake) and asks
 * conn.c to act on a connection (dx__conn_upgrade_*); never touches a
 * socket. Invariants: a handle is freed exactly when the application
 * answers it; h->conn and c->upg point at each other while both live, and
 * conn.c clears h->conn when the connection ends first, so a late answer
 * finds NULL and returns DX_ECLOSED. Answers given inside on_upgrade are
 * only recorded (the head is still being handled) and applied on return.
 */
#include "ws/ws.h"

#include "core/seams.h"
#include "proto/handshake.h"

#include <stdio.h>
#include <string.h>

typedef struct upgrade_ctx {
    dx_request pub; /* first: the application's view */
    const dx_ws_request *ws;
    const dx_http_request *http;
    const dx_seams *seams;
    char *protocol;
    void *user;
    struct dx_upgrade *deferred; /* set by dx_request_defer */
} upgrade_ctx;

enum { UPG_NONE = 0, UPG_ACCEPT, UPG_REFUSE };

/* A deferred decision. The request is copied in (the head buffer is gone
 * once on_upgrade returns) and re-checked so that ws points into the copy:
 * one allocation, the header array and the strings right behind it. */
struct dx_upgrade {
    upgrade_ctx u;  /* first: dx_upgrade_request returns &u.pub */
    dx_conn *conn;  /* NULL once the connection is gone */
    const dx_seams *seams;
    dx_http_request http;
    dx_ws_request ws;
    bool in_cb;     /* inside on_upgrade: an answer is recorded, applied on return */
    int decided;    /* UPG_*: an answer given inside on_upgrade */
    int status;
    char *headers;  /* refusal headers given inside on_upgrade */
    char remote[64];
    dx_ws_ext_offer *exts; /* the request's extension offers (ws.n_exts of them), in the tail */
    dx_http_header hdrs[]; /* then the offers, then the head's strings */
};

const char *dx_request_header(const dx_request *req, const char *name, size_t *len)
{
    const upgrade_ctx *u = (const upgrade_ctx *)(const void *)req;
    const dx_http_header *h = dx__http_find(u->http->headers, u->http->n_headers, name);
    if (!h)
        return NULL;
    if (len)
        *len = h->value_len;
    return h->value;
}

int dx_request_protocol(const dx_request *req, size_t *cursor, const char **name, size_t *len)
{
    const upgrade_ctx *u = (const upgrade_ctx *)(const void *)req;
    dx_ws_protocol_iter it;
    dx__ws_protocol_iter_init(&it, u->ws);
    for (size_t i = 0;; i++) {
        if (!dx__ws_protocol_next(&it, name, len))
            return 0;
        if (i == *cursor) {
            (*cursor)++;
            return 1;
        }
    }
}

static char *dup_mem(const dx_seams *seams, const char *p, size_t len)
{
    char *d = dx__alloc(seams, len + 1);
    if (d) {
        memcpy(d, p, len);
        d[len] = 0;
    }
    return d;
}

int dx_request_select_protocol(dx_request *req, const char *name, size_t len)
{
    upgrade_ctx *u = (upgrade_ctx *)(void *)req;
    if (!dx__ws_protocol_offered(u->ws, name, len))
        return DX_EINVAL;
    char *p = dup_mem(u->seams, name, len);
    if (!p)
        return DX_ENOMEM;
    dx__free(u->seams, u->protocol);
    u->protocol = p;
    return 0;
}

void dx_request_set_user(dx_request *req, void *user) { ((upgrade_ctx *)(void *)req)->user = user; }

static void copy_piece(char **at, const char **p, size_t len)
{
    if (len)
        memcpy(*at, *p, len);
    *p = *at;
    *at += len;
}

dx_upgrade *dx_request_defer(dx_request *req)
{
    upgrade_ctx *u = (upgrade_ctx *)(void *)req;
    if (u->deferred)
        return u->deferred;
    const dx_http_request *r = u->http;
    size_t strings = r->method_len + r->target_len;
    for (size_t i = 0; i < r->n_headers; i++)
        strings += r->headers[i].name_len + r->headers[i].value_len;
    /* Room for as many extension offers as the request made (the same
     * bytes parse to as many again), not DX_WS_DEFAULT_MAX_EXTS of them: a
     * handle lives through every deferred handshake (the gateway's /ws),
     * and 16 offers are 4.6 KiB. */
    size_t nexts = u->ws->n_exts;
    size_t size = sizeof(dx_upgrade) + r->n_headers * sizeof(dx_http_header) + nexts * sizeof(dx_ws_ext_offer) +
                  strings;
    dx_upgrade *h = dx__alloc(u->seams, size);
    if (!h)
        return NULL;
    memset(h, 0, sizeof *h);
    h->exts = (dx_ws_ext_offer *)(void *)(h->hdrs + r->n_headers);
    char *at = (char *)(h->exts + nexts);
    h->http = *r;
    h->http.headers = h->hdrs;
    copy_piece(&at, &h->http.method, r->method_len);
    copy_piece(&at, &h->http.target, r->target_len);
    for (size_t i = 0; i < r->n_headers; i++) {
        h->hdrs[i] = r->headers[i];
        copy_piece(&at, &h->hdrs[i].name, r->headers[i].name_len);
        copy_piece(&at, &h->hdrs[i].value, r->headers[i].value_len);
    }
    /* The same bytes passed this check a moment ago; now ws points into the copy. */
    if (dx__ws_server_check(&h->http, &h->ws, h->exts, nexts) || h->ws.n_exts != nexts) {
        dx__free(u->seams, h);
        return NULL;
    }
    snprintf(h->remote, sizeof h->remote, "%s", u->pub.remote);
    h->u.pub = (dx_request){.path = h->ws.path, .path_len = h->ws.path_len, .query = h->ws.query,
                            .query_len = h->ws.query_len, .origin = h->ws.origin, .origin_len = h->ws.origin_len,
                            .remote = h->remote};
    h->u.ws = &h->ws;
    h->u.http = &h->http;
    h->u.seams = h->seams = u->seams;
    h->in_cb = true;
    u->deferred = h;
    return h;
}

const dx_request *dx_upgrade_request(const dx_upgrade *h) { return &h->u.pub; }

static void upgrade_free(dx_upgrade *h)
{
    dx__free(h->seams, h->u.protocol);
    dx__free(h->seams, h->headers);
    dx__free(h->seams, h);
}

void dx__upgrade_detach(dx_upgrade *h) { h->conn = NULL; }

int dx_upgrade_accept(dx_upgrade *h, const char *protocol, void *user)
{
    size_t plen = protocol ? strlen(protocol) : 0;
    if (!h->in_cb && !h->conn) {
        upgrade_free(h);
        return DX_ECLOSED;
    }
    if (protocol && !dx__ws_protocol_offered(&h->ws, protocol, plen))
        return DX_EINVAL;
    char *p = protocol ? dup_mem(h->seams, protocol, plen) : NULL;
    if (protocol && !p) {
        if (h->in_cb) {
            h->decided = UPG_REFUSE;
            h->status = 500;
            return DX_ENOMEM;
        }
        dx__conn_upgrade_refuse(h->conn, 500, NULL, "out of memory");
        upgrade_free(h);
        return DX_ENOMEM;
    }
    if (h->in_cb) {
        dx__free(h->seams, h->u.protocol);
        h->u.protocol = p;
        h->u.user = user;
        h->decided = UPG_ACCEPT;
        return 0;
    }
    int rc = dx__conn_upgrade_accept(h->conn, &h->ws, p, user); /* takes p */
    upgrade_free(h);
    return rc;
}

int dx_upgrade_refuse(dx_upgrade *h, int status, const char *headers)
{
    if (status < 400 || status > 599)
        status = 500;
    if (h->in_cb) {
        h->decided = UPG_REFUSE;
        h->status = status;
        dx__free(h->seams, h->headers);
        h->headers = headers ? dup_mem(h->seams, headers, strlen(headers)) : NULL;
        return 0;
    }
    if (!h->conn) {
        upgrade_free(h);
        return DX_ECLOSED;
    }
    dx__conn_upgrade_refuse(h->conn, status, headers, "refused by the application");
    upgrade_free(h);
    return 0;
}

int dx__upgrade_decide(dx_conn *c, const dx_http_request *req, const dx_ws_request *ws, dx__decision *d)
{
    dx__ep *ep = dx__conn_ep(c);
    const dx_seams *seams = ep->loop->seams;
    char remote[64];
    dx_conn_remote(c, remote, sizeof remote);
    upgrade_ctx u = {.ws = ws, .http = req, .seams = seams};
    u.pub = (dx_request){.path = ws->path, .path_len = ws->path_len, .query = ws->query, .query_len = ws->query_len,
                         .origin = ws->origin, .origin_len = ws->origin_len, .remote = remote};
    int status = ep->opt.cb.on_upgrade ? ep->opt.cb.on_upgrade(ep->srv, &u.pub, ep->opt.ud) : 0;
    *d = (dx__decision){0};
    dx_upgrade *h = u.deferred;
    if (h) {
        /* Once a handle exists it decides, whatever on_upgrade returned. */
        h->in_cb = false;
        dx__free(seams, u.protocol);
        if (h->decided == UPG_NONE) {
            h->conn = c;
            d->deferred = h;
            return DX__DECIDE_DEFER;
        }
        if (h->decided == UPG_REFUSE) {
            d->status = h->status;
            d->headers = h->headers; /* freed by dx__decision_done */
            h->headers = NULL;
            upgrade_free(h);
            return DX__DECIDE_REFUSE;
        }
        d->protocol = h->u.protocol;
        d->user = h->u.user;
        h->u.protocol = NULL;
        upgrade_free(h);
        return DX__DECIDE_ACCEPT;
    }
    if (status == DX_UPGRADE_DEFER)
        status = 500; /* deferred without a handle (dx_request_defer failed or was not called) */
    if (status) {
        dx__free(seams, u.protocol);
        d->status = status < 400 || status > 599 ? 500 : status;
        return DX__DECIDE_REFUSE;
    }
    d->protocol = u.protocol;
    d->user = u.user;
    return DX__DECIDE_ACCEPT;
}

void dx__decision_done(dx_conn *c, dx__decision *d)
{
    dx__free(dx__conn_ep(c)->loop->seams, d->headers);
    d->headers = NULL;
}
