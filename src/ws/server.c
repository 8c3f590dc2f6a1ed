/*
 * src/ws/server.c: the server endpoint: options, listening, accepting,
 * graceful shutdown, counters.
 *
 * Layer: ws. Accepting never spins: when accept fails for lack of
 * descriptors (EMFILE/ENFILE) or memory, the listener is paused for one
 * timer tick and the failure is logged once per burst with its count;
 * existing connections keep being served.
 *
 * Lifecycle (habit 6): shutdown and free fire no callback. dx_server_free
 * drops every connection at once without callbacks (ep.freeing silences
 * those already dead but not yet reported) and, when called from inside a
 * callback, releases the memory from the loop's deferred list once the
 * stack has unwound (ep.dfree, queued after its connections).
 *
 * Admission limits, checked at accept before anything is allocated for the
 * connection: max_handshaking (connections not upgraded: nconns - open)
 * closes the new socket at once; max_conns_per_ip (a table of live
 * connections per address, ipcount.c) answers 503 with Retry-After without
 * reading the request on plain TCP (the refusal is a connection in DRAIN,
 * so it counts as handshaking and stays bounded), and closes at once on TLS
 * (a TLS handshake is the cost being avoided). A burst of refusals is
 * logged twice: at its first refusal and, once a second passes without
 * any, with its total.
 */
#define _GNU_SOURCE
#include "ws/ws.h"

#include "core/log.h"
#include "core/opts.h"
#include "core/seams.h"
#include "net/sock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>



#define ACCEPTS_PER_EVENT 64
#define LIMIT_BURST_MS 1000 /* a burst of refusals ends after this long without one */
#define RETRY_AFTER_S "5"

enum { LIM_PER_IP = 0, LIM_HANDSHAKING = 1 };

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
    if (!o->max_handshaking)
        o->max_handshaking = 1024;
    if (!o->max_http_body)
        o->max_http_body = 1u << 20;
    if (!o->http_keepalive_ms)
        o->http_keepalive_ms = 5000;
    if (!o->http_max_requests)
        o->http_max_requests = 1000;
}

static dx_server *server_new(dx_loop *loop, const dx_server_options *opt, int *err);

dx_server *dx_server_new_sized(dx_loop *loop, const dx_server_options *user, size_t size, int *err)
{
    dx_server_options opt;
    if (!user || dx__opts_copy(&opt, sizeof opt, user, size)) {
        if (err)
            *err = DX_EINVAL;
        return NULL;
    }
    return server_new(loop, &opt, err);
}

static dx_server *server_new(dx_loop *loop, const dx_server_options *opt, int *err)
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
    dx__timer_init(&srv->limit_timer, NULL);
    srv->ep.next_id = 1 + srv->ep.opt.instance; /* ids start at 1 */
    if (srv->ep.opt.instance >= srv->ep.opt.instances || srv->ep.opt.max_headers > 256 || srv->ep.opt.max_head < 64 || srv->ep.opt.send_high_water > srv->ep.opt.send_max ||
        srv->ep.opt.conn_ext_size > ((size_t)1 << 30)) {
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
    if (!dx__deflate_options_valid(&opt->deflate)) {
        e = DX_EINVAL;
        goto fail;
    }
    if (dx__ep_deflate_start(&srv->ep))
        goto fail;
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
    if (srv->ep.freeing)
        return;
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

/* The table key of a peer address (IPv4-mapped IPv6 counts as IPv4), or
 * family 0 for addresses not limited (Unix sockets). */
static int addr_key(const struct sockaddr_storage *ss, uint64_t *key)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)ss;
        *key = dx__ipcount_key(AF_INET, (const uint8_t *)&in->sin_addr);
        return AF_INET;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)ss;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            *key = dx__ipcount_key(AF_INET, &in6->sin6_addr.s6_addr[12]);
            return AF_INET;
        }
        *key = dx__ipcount_key(AF_INET6, in6->sin6_addr.s6_addr);
        return AF_INET6;
    }
    return 0;
}

void dx__server_conn_gone(dx_conn *c)
{
    if (!(c->flags & CF_IPCOUNTED))
        return;
    c->flags &= (uint16_t)~CF_IPCOUNTED;
    dx_server *srv = dx__conn_ep(c)->srv;
    dx__ipcount_remove(&srv->ipc, srv->ep.loop->seams, c->family, dx__ipcount_key(c->family, dx__conn_addr(c)));
}

static const char *const limit_name[2] = {"max_conns_per_ip", "max_handshaking"};

static void limit_tick(dx__timer *t)
{
    dx_server *srv = dx_list_entry(t, dx_server, limit_timer);
    bool again = false;
    for (int k = 0; k < 2; k++) {
        if (srv->limit_fresh[k]) {
            srv->limit_fresh[k] = 0;
            again = true;
        } else if (srv->limit_burst[k]) {
            dx__log(srv->ep.loop->log, DX_LOG_WARN, "server: %s burst over: %llu connections refused in it",
                    limit_name[k], (unsigned long long)srv->limit_burst[k]);
            srv->limit_burst[k] = 0;
        }
    }
    if (again)
        dx__timer_start(srv->ep.loop, &srv->limit_timer, LIMIT_BURST_MS);
}

static void limit_refused(dx_server *srv, int kind, const struct sockaddr_storage *ss)
{
    dx__ep *ep = &srv->ep;
    if (kind == LIM_PER_IP)
        ep->st.refused_per_ip++;
    else
        ep->st.refused_handshaking++;
    srv->limit_fresh[kind]++;
    if (srv->limit_burst[kind]++ == 0) {
        char host[INET6_ADDRSTRLEN] = "unix";
        if (ss->ss_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)ss)->sin_addr, host, sizeof host);
        else if (ss->ss_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)ss)->sin6_addr, host, sizeof host);
        size_t limit = kind == LIM_PER_IP ? ep->opt.max_conns_per_ip : ep->opt.max_handshaking;
        dx__log(ep->loop->log, DX_LOG_WARN,
                "server: %s (%zu) reached, refusing new connections (first from %s; %s); "
                "one more line when the burst is over",
                limit_name[kind], limit, host,
                kind == LIM_PER_IP ? (srv->tls ? "TCP close" : "503 Retry-After") : "TCP close");
    }
    if (!dx__timer_armed(&srv->limit_timer)) {
        srv->limit_timer.cb = limit_tick;
        dx__timer_start(ep->loop, &srv->limit_timer, LIMIT_BURST_MS);
    }
}

/* Over max_conns_per_ip on plain TCP: answer 503 at once, without reading
 * the request (the connection then lingers until the peer's EOF, discarding
 * what it sends, bounded by close_timeout_ms). */
static void refuse_per_ip(dx_server *srv, int fd, const struct sockaddr_storage *ss)
{
    if (srv->tls) {
        close(fd);
        return;
    }
    dx_conn *c = dx__conn_open(&srv->ep, fd, (const struct sockaddr *)ss, CS_HEAD, EPOLLIN | EPOLLRDHUP,
                               srv->ep.opt.handshake_timeout_ms);
    if (!c) {
        close(fd);
        return;
    }
    char buf[256];
    int n = dx__http_error_response(buf, sizeof buf, 503, "Retry-After: " RETRY_AFTER_S "\r\n",
                                    "too many connections from this address");
    if (n > 0)
        (void)dx__conn_write(c, buf, (size_t)n);
    dx__conn_finish_after_flush(c);
}

static void on_accept(dx__io *io, uint32_t events)
{
    (void)events;
    dx_server *srv = dx_list_entry(io, dx_server, lio);
    /* An event fetched in the same batch as the shutdown or free that
     * closed the listener: nothing to accept (and no timer to re-arm). */
    if (srv->lio.fd < 0 || srv->ep.freeing)
        return;
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
        dx__ep *ep = &srv->ep;
        size_t upgraded = (size_t)ep->st.open + ep->nstreams; /* never more than nconns; guarded all the same */
        size_t handshaking = ep->nconns > upgraded ? ep->nconns - upgraded : 0;
        if (ep->opt.max_handshaking != (size_t)-1 && handshaking >= ep->opt.max_handshaking) {
            limit_refused(srv, LIM_HANDSHAKING, &ss);
            close(fd);
            continue;
        }
        uint64_t key = 0;
        int fam = ep->opt.max_conns_per_ip ? addr_key(&ss, &key) : 0;
        bool counted = false;
        if (fam) {
            int rc = dx__ipcount_add(&srv->ipc, ep->loop->seams, fam, key, ep->opt.max_conns_per_ip);
            if (rc == DX_ELIMIT) {
                limit_refused(srv, LIM_PER_IP, &ss);
                refuse_per_ip(srv, fd, &ss);
                continue;
            }
            counted = rc == 0; /* out of memory for the table: served uncounted rather than refused */
        }
        dx_conn *c = dx__conn_new(srv, fd, (struct sockaddr *)&ss, sl);
        if (!c) {
            if (counted)
                dx__ipcount_remove(&srv->ipc, ep->loop->seams, fam, key);
            close(fd);
            pause_accept(srv, ENOMEM);
            return;
        }
        if (counted) {
            if (c->state == CS_DEAD)
                dx__ipcount_remove(&srv->ipc, ep->loop->seams, fam, key); /* dropped at once (TLS start) */
            else
                c->flags |= CF_IPCOUNTED;
        }
    }
}

int dx_server_start(dx_server *srv)
{
    int fd;
    /* The first handshake would otherwise pay libcrypto's lazy start (its
     * providers loaded, SHA-1 fetched: about two million instructions):
     * paid here, before anyone waits. The example key is RFC 6455 §1.3's. */
    char warm[29];
    (void)dx__ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, warm);
    if (srv->ep.opt.unix_path)
        fd = dx__listen_unix(srv->ep.opt.unix_path, srv->ep.opt.backlog);
    else
        fd = dx__listen_tcp(srv->ep.opt.host, srv->ep.opt.port, srv->ep.opt.backlog, srv->ep.opt.reuse_port != 0, &srv->port);
    if (fd < 0) {
        if (srv->ep.opt.unix_path)
            dx__log(srv->ep.loop->log, DX_LOG_ERROR, "server: cannot listen on unix:%s: %s", srv->ep.opt.unix_path,
                    strerror(errno));
        else
            dx__log(srv->ep.loop->log, DX_LOG_ERROR, "server: cannot listen on %s:%u: %s",
                    srv->ep.opt.host ? srv->ep.opt.host : "*", srv->ep.opt.port, strerror(errno));
        return fd;
    }
    if (!srv->ep.opt.unix_path) {
        /* Accepted sockets inherit TCP_NODELAY from the listener (Linux
         * copies the listener's options into each child): one setsockopt
         * here instead of one per connection. */
        int one = 1;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    srv->lio = (dx__io){.fd = fd, .cb = on_accept};
    if (dx__io_start(srv->ep.loop, &srv->lio, EPOLLIN)) {
        close(fd);
        srv->lio.fd = -1;
        return DX_EIO;
    }
    return 0;
}

dx__tls_ctx *dx__server_tls(dx_server *srv)
{
    if (atomic_load_explicit(&srv->tls_next, memory_order_relaxed)) {
        dx__tls_ctx *next = atomic_exchange(&srv->tls_next, NULL);
        if (next) {
            dx__tls_ctx_free(srv->tls); /* lives on while connections accepted with it do */
            srv->tls = next;
        }
    }
    return srv->tls;
}

int dx_server_reload_tls(dx_server *srv, const dx_tls_cert *certs, size_t n, char *why, size_t why_len)
{
    char tmp[2];
    if (!why || !why_len) {
        why = tmp;
        why_len = sizeof tmp;
    }
    why[0] = '\0';
    if (!srv || !certs || n == 0) {
        snprintf(why, why_len, "no certificate given");
        return DX_EINVAL;
    }
    if (!srv->tls) {
        snprintf(why, why_len, "the server was started without TLS (turning it on needs a restart)");
        return DX_EINVAL;
    }
    int e;
    dx__tls_ctx *tc = dx__tls_server_ctx_new(certs, n, why, why_len, &e);
    if (!tc)
        return e;
    dx__tls_ctx_free(atomic_exchange(&srv->tls_next, tc)); /* one not taken yet is replaced */
    return 0;
}

unsigned dx_server_port(const dx_server *srv) { return srv->port; }
size_t dx_server_connections(const dx_server *srv) { return srv->ep.nconns; }
void dx_server_stats_get(const dx_server *srv, dx_server_stats *out)
{
    *out = srv->ep.st;
    dx__ep_deflate_stats(&srv->ep, out);
}

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
    dx__timer_stop(srv->ep.loop, &srv->limit_timer);
}

size_t dx_server_shutdown(dx_server *srv, unsigned code, const char *reason)
{
    if (srv->ep.freeing)
        return 0;
    srv->shutting_down = true;
    close_listener(srv);
    size_t rlen = reason ? strlen(reason) : 0;
    /* No callback runs in here (a failed write only marks its connection),
     * but the walk does not rely on it: every connection is moved aside
     * (from ep.conns and the loop's wheel) and consumed from the head, each
     * going back where it was before it is touched, so any one may be
     * unlinked or relinked meanwhile. */
    dx_list todo;
    dx__ep_take_conns(&srv->ep, &todo);
    dx_list *it;
    while ((it = dx_list_first(&todo)) != NULL) {
        dx_conn *c = dx_list_entry(it, dx_conn, link);
        dx__conn_put_back(c);
        if (c->state == CS_OPEN)
            (void)dx_conn_close(c, code, reason, rlen);
        else if (c->state < CS_OPEN && !dx__http_stream_shutdown(c)) /* a stream ends cleanly */
            dx__conn_abort(c, DX_CLOSE_GOING_AWAY, "server shutting down");
    }
    return srv->ep.nconns;
}

/* The last step of a free: nothing of the server is on the stack now. */
static void server_release(dx_loop *loop, dx__deferred *d)
{
    dx_server *srv = dx_list_entry(d, dx_server, ep.dfree);
    const dx_seams *seams = loop->seams;
    dx__ipcount_free(&srv->ipc, seams);
    dx__tls_ctx_free(srv->tls);
    dx__pmd_ctx_free(srv->ep.pmd); /* after its connections: they were released first */
    dx__tls_ctx_free(atomic_exchange(&srv->tls_next, NULL));
    dx__free(seams, srv->host);
    dx__free(seams, srv->unix_path);
    dx__free(seams, srv->static_root);
    dx__free(seams, srv);
}

void dx_server_free(dx_server *srv)
{
    if (!srv || srv->ep.freeing)
        return;
    close_listener(srv);
    srv->ep.dfree.fn = server_release;
    /* Inside one of its callbacks the server's memory is still on the stack:
     * its connections are dropped now (no callback after this returns) and
     * the memory goes once the stack has unwound. */
    if (dx__ep_drop_conns(&srv->ep))
        dx__loop_later(srv->ep.loop, &srv->ep.dfree);
    else
        server_release(srv->ep.loop, &srv->ep.dfree);
}
