/*
 * src/ws/server.c: the server endpoint: options, listening, accepting,
 * graceful shutdown, counters.
 *
 * Layer: ws. Accepting never spins: when accept fails for lack of
 * descriptors (EMFILE/ENFILE) or memory, the listener is paused for one
 * timer tick and the failure is logged once per burst with its count;
 * existing connections keep being served.
 */
#define _GNU_SOURCE
#include "ws/ws.h"

#include "core/log.h"
#include "core/seams.h"
#include "net/sock.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>



#define ACCEPTS_PER_EVENT 64

static char *dup_str(const dx_seams *s, const char *str)
{
    if (!str)
        return NULL;
    size_t n = strlen(str) + 1;
    char *p = dx__alloc(s, n);
    if (p)
        memcpy(p, str, n);
    return p;
}

void dx__options_defaults(dx_server_options *o)
{
    if (!o->port)
        o->port = 8080;
    if (!o->backlog)
        o->backlog = 1024;
    if (!o->max_head)
        o->max_head = DX_HTTP_DEFAULT_MAX_HEAD;
    if (!o->max_headers)
        o->max_headers = DX_HTTP_DEFAULT_MAX_HEADERS;
    if (!o->handshake_timeout_ms)
        o->handshake_timeout_ms = 10000;
    if (!o->max_message)
        o->max_message = 1u << 20;
    if (!o->max_fragments)
        o->max_fragments = 1024;
    if (!o->send_high_water)
        o->send_high_water = 64u * 1024u;
    if (!o->send_max)
        o->send_max = 1u << 20;
    if (!o->close_timeout_ms)
        o->close_timeout_ms = 5000;
    if (!o->ping_interval_ms)
        o->ping_interval_ms = 30000;
    if (!o->pong_timeout_ms)
        o->pong_timeout_ms = 10000;
    if (!o->instances)
        o->instances = 1;
    if (!o->max_http_body)
        o->max_http_body = 1u << 20;
    if (!o->http_keepalive_ms)
        o->http_keepalive_ms = 5000;
    if (!o->http_max_requests)
        o->http_max_requests = 1000;
}

dx_server *dx_server_new(dx_loop *loop, const dx_server_options *opt, int *err)
{
    const dx_seams *seams = loop->seams;
    int e = DX_ENOMEM;
    dx_server *srv = dx__alloc(seams, sizeof *srv);
    if (!srv)
        goto fail_early;
    memset(srv, 0, sizeof *srv);
    srv->ep.loop = loop;
    srv->ep.opt = *opt;
    dx__options_defaults(&srv->ep.opt);
    dx_list_init(&srv->ep.conns);
    srv->lio.fd = -1;
    dx__timer_init(&srv->accept_timer, NULL);
    srv->ep.next_id = 1 + srv->ep.opt.instance; /* ids start at 1 */
    if (srv->ep.opt.instance >= srv->ep.opt.instances || srv->ep.opt.max_headers > 256 || srv->ep.opt.max_head < 64 || srv->ep.opt.send_high_water > srv->ep.opt.send_max) {
        e = DX_EINVAL;
        goto fail;
    }
    srv->host = dup_str(seams, opt->host);
    srv->unix_path = dup_str(seams, opt->unix_path);
    if ((opt->host && !srv->host) || (opt->unix_path && !srv->unix_path))
        goto fail;
    srv->ep.opt.host = srv->host;
    srv->ep.opt.unix_path = srv->unix_path;
    if (opt->static_dir) {
        char real[PATH_MAX];
        if (!realpath(opt->static_dir, real)) {
            dx__log(loop->log, DX_LOG_ERROR, "server: static directory %s: %s", opt->static_dir, strerror(errno));
            e = DX_EINVAL;
            goto fail;
        }
        srv->static_root = dup_str(seams, real);
        if (!srv->static_root)
            goto fail;
    }
    srv->ep.opt.static_dir = srv->static_root;
    if (opt->n_tls) {
        char why[512];
        srv->tls = dx__tls_server_ctx_new(opt->tls, opt->n_tls, why, sizeof why, &e);
        if (!srv->tls) {
            dx__log(loop->log, DX_LOG_ERROR, "server: TLS: %s", why);
            goto fail;
        }
    }
    srv->ep.opt.tls = NULL; /* not kept: the context holds what it needs */
    srv->ep.srv = srv;
    dx__ws_session_cfg(&srv->ep, DX_ROLE_SERVER);
    if (err)
        *err = 0;
    return srv;
fail:
    dx_server_free(srv);
fail_early:
    if (err)
        *err = e;
    return NULL;
}

static void resume_accept(dx__timer *t);

static void pause_accept(dx_server *srv, int e)
{
    srv->ep.st.accept_errors++;
    if (srv->accept_errors_burst++ == 0)
        dx__log(srv->ep.loop->log, DX_LOG_WARN,
                "server: accept failed: %s; pausing new connections for %u ms (open connections unaffected)",
                strerror(e), DX_TICK_MS);
    dx__io_modify(srv->ep.loop, &srv->lio, 0);
    srv->accept_timer.cb = resume_accept;
    dx__timer_start(srv->ep.loop, &srv->accept_timer, DX_TICK_MS);
}

static void resume_accept(dx__timer *t)
{
    dx_server *srv = dx_list_entry(t, dx_server, accept_timer);
    if (srv->shutting_down || srv->lio.fd < 0)
        return;
    dx__io_modify(srv->ep.loop, &srv->lio, EPOLLIN);
}

static void on_accept(dx__io *io, uint32_t events)
{
    (void)events;
    dx_server *srv = dx_list_entry(io, dx_server, lio);
    for (int i = 0; i < ACCEPTS_PER_EVENT; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(srv->lio.fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                break;
            pause_accept(srv, errno); /* EMFILE, ENFILE, ENOBUFS, ENOMEM */
            return;
        }
        if (srv->accept_errors_burst) {
            dx__log(srv->ep.loop->log, DX_LOG_WARN, "server: accepting again after %u failed attempts",
                    srv->accept_errors_burst);
            srv->accept_errors_burst = 0;
        }
        srv->ep.st.accepted++;
        if (!dx__conn_new(srv, fd, (struct sockaddr *)&ss, sl)) {
            close(fd);
            pause_accept(srv, ENOMEM);
            return;
        }
    }
}

int dx_server_start(dx_server *srv)
{
    int fd;
    if (srv->ep.opt.unix_path)
        fd = dx__listen_unix(srv->ep.opt.unix_path, srv->ep.opt.backlog);
    else
        fd = dx__listen_tcp(srv->ep.opt.host, srv->ep.opt.port, srv->ep.opt.backlog, srv->ep.opt.reuse_port != 0, &srv->port);
    if (fd < 0) {
        dx__log(srv->ep.loop->log, DX_LOG_ERROR, "server: cannot listen on %s%s%u: %s",
                srv->ep.opt.unix_path ? srv->ep.opt.unix_path : (srv->ep.opt.host ? srv->ep.opt.host : "*"),
                srv->ep.opt.unix_path ? "" : ":", srv->ep.opt.unix_path ? 0u : srv->ep.opt.port, strerror(errno));
        return fd;
    }
    srv->lio = (dx__io){.fd = fd, .cb = on_accept};
    if (dx__io_start(srv->ep.loop, &srv->lio, EPOLLIN)) {
        close(fd);
        srv->lio.fd = -1;
        return DX_EIO;
    }
    return 0;
}

unsigned dx_server_port(const dx_server *srv) { return srv->port; }
size_t dx_server_connections(const dx_server *srv) { return srv->ep.nconns; }
void dx_server_stats_get(const dx_server *srv, dx_server_stats *out) { *out = srv->ep.st; }

static void close_listener(dx_server *srv)
{
    if (srv->lio.fd >= 0) {
        dx__io_stop(srv->ep.loop, &srv->lio);
        close(srv->lio.fd);
        srv->lio.fd = -1;
        if (srv->ep.opt.unix_path)
            unlink(srv->ep.opt.unix_path);
    }
    dx__timer_stop(srv->ep.loop, &srv->accept_timer);
}

size_t dx_server_shutdown(dx_server *srv, unsigned code, const char *reason)
{
    srv->shutting_down = true;
    close_listener(srv);
    size_t rlen = reason ? strlen(reason) : 0;
    dx_list_foreach_safe(it, tmp, &srv->ep.conns)
    {
        dx_conn *c = dx_list_entry(it, dx_conn, link);
        if (c->state == CS_OPEN)
            (void)dx_conn_close(c, code, reason, rlen);
        else if (c->state < CS_OPEN)
            dx__conn_abort(c, DX_CLOSE_GOING_AWAY, "server shutting down");
    }
    return srv->ep.nconns;
}

void dx_server_free(dx_server *srv)
{
    if (!srv)
        return;
    const dx_seams *seams = srv->ep.loop->seams;
    close_listener(srv);
    dx__ep_drop_conns(&srv->ep);
    dx__tls_ctx_free(srv->tls);
    dx__free(seams, srv->host);
    dx__free(seams, srv->unix_path);
    dx__free(seams, srv->static_root);
    dx__free(seams, srv);
}
