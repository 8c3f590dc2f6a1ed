/*
 * src/ws/ws.h: internals shared by the server endpoint (server.c), its
 * connections (conn.c) and the plain-HTTP responder (http_static.c).
 *
 * Layer: ws. Depends on proto (session, handshake, http) and net (loop,
 * transports). Owns the RFC's connection behaviour: close handshake,
 * heartbeat, limits, backpressure.
 */
#ifndef DX_WS_WS_H
#define DX_WS_WS_H

#include "duplex/server.h"
#include "net/loop.h"
#include "net/transport.h"
#include "proto/http.h"
#include "proto/session.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

/* Connection states, in order. */
enum {
    CS_CONNECT = 0, /* client: TCP connect in progress */
    CS_PROXY,   /* client: HTTP CONNECT sent to the proxy, reading its answer */
    CS_TLS,     /* TLS handshake */
    CS_HEAD,    /* reading the HTTP request head (server) or response head (client) */
    CS_OPEN,    /* WebSocket session running (open, or close sent) */
    CS_DRAIN,   /* last bytes (close frame, HTTP response) being flushed */
    CS_LINGER,  /* FIN sent; reading until the peer's EOF */
    CS_DEAD     /* closed; memory freed after the current batch */
};

enum {
    CF_OPENED = 1u << 0,       /* on_open fired: on_close is owed */
    CF_PING_OUT = 1u << 1,     /* a heartbeat ping awaits its pong */
    CF_DRAIN_ARMED = 1u << 2,  /* queue passed the high-water mark */
    CF_IN_HTTP = 1u << 3,      /* inside on_http: dx_http_reply allowed */
    CF_REPLIED = 1u << 4,      /* an HTTP response was queued */
    CF_WANT_WRITE = 1u << 5,   /* EPOLLOUT registered */
};

/* What connections need from whoever owns them, server or client: the
 * loop, the settings and callbacks, the session configuration, counters. */
typedef struct dx__ep {
    dx_loop *loop;
    dx_server_options opt;   /* limits and callbacks (a client fills it from its own options) */
    dx__session_cfg scfg;
    dx_server_stats st;
    dx_list conns;
    size_t nconns;
    uint64_t next_id;
    struct dx_server *srv;   /* the owner: exactly one of srv and cl is set */
    struct dx_client *cl;
    /* The plain HTTP request being answered, while dx__http_serve runs (for
     * the log line of the answer); NULL otherwise. */
    const struct dx_http_request *http_req;
    const struct dx_conn *http_conn;
} dx__ep;

/* Unsent bytes (off..off+len), allocated only while the kernel refuses. */
typedef struct dx__wq {
    size_t off, len, cap;
    uint8_t data[];
} dx__wq;

/* A request head being read during CS_HEAD; once open, the peer's close
 * reason if its close frame had one. Allocated only then. */
typedef struct dx__head {
    size_t len;
    uint8_t data[];
} dx__head;

#define WQ_LEN(c) ((c)->wq ? (c)->wq->len : 0u)

struct dx_conn {
    dx__session s; /* first: session handlers find the connection */
    dx__io io;
    dx__stream st;
    dx__ep *ep;
    dx__timer timer;
    union {
        dx_list link;        /* in ep->conns while alive */
        dx__deferred dfree;  /* in the loop's deferred list once dead */
    };
    void *user;
    dx__wq *wq;
    dx__head *head;
    char *protocol;
    uint64_t id;
    uint32_t opened_tick, last_rx_tick;
    uint64_t opened_ns;   /* clock at open, for the close line's duration (ticks are 250 ms) */
    uint64_t bytes_in, bytes_out;
    uint32_t msgs_in, msgs_out;
    uint8_t addr[16];
    uint16_t port;
    uint8_t family; /* AF_INET, AF_INET6, AF_UNIX */
    uint8_t state;
    uint16_t flags;
    uint16_t code;  /* close code to report (0: decide at the end) */
};


struct dx_server {
    dx__ep ep;               /* first */
    char *host, *unix_path, *static_root;
    dx__tls_ctx *tls;
    dx__io lio;
    dx__timer accept_timer;
    unsigned port;
    unsigned accept_errors_burst;
    bool shutting_down;
};

/* conn.c */
/* A connection on `fd` owned by `ep`, registered for `events`, starting in
 * `state`, with its first deadline after timeout_ms. NULL on DX_ENOMEM or
 * when epoll refuses (the caller closes fd then). */
dx_conn *dx__conn_open(dx__ep *ep, int fd, const struct sockaddr *sa, int state, uint32_t events,
                       unsigned timeout_ms);
/* A server-side connection for an accepted fd (TLS started when configured). */
dx_conn *dx__conn_new(dx_server *srv, int fd, const struct sockaddr *sa, socklen_t salen);
/* Drops the connection at once (no close frame), reporting `code` if opened. */
void dx__conn_abort(dx_conn *c, unsigned code, const char *why);
/* Queues bytes in order after whatever is queued; writes at once if nothing is. */
int dx__conn_write(dx_conn *c, const void *data, size_t len);
/* Flushes, then FIN, then waits for EOF (bounded by close_timeout_ms). */
void dx__conn_finish_after_flush(dx_conn *c);
/* Frees every live connection of `ep` at once, without callbacks. */
void dx__ep_drop_conns(dx__ep *ep);
/* The handshake succeeded: start the session, heartbeat and counters. */
void dx__conn_opened(dx_conn *c);
/* Drives the TLS handshake (client.c starts it after connect/proxy). */
void dx__conn_drive_tls(dx_conn *c);
/* Sets/clears EPOLLOUT interest. */
void dx__conn_want_write(dx_conn *c, bool on);

/* server.c: fills zero options with their defaults. */
void dx__options_defaults(dx_server_options *o);

/* client.c: the client's part of a client-side connection's life. */
void dx__client_io(dx_conn *c, uint32_t events);          /* CS_CONNECT, CS_PROXY */
void dx__client_transport_ready(dx_conn *c);               /* TCP/TLS up: send the request */
void dx__client_response(dx_conn *c, const dx_http_response *resp); /* the 101 (or not) */
void dx__client_conn_end(dx_conn *c, const char *why);     /* the connection is gone */

/* http_static.c: answers a plain HTTP request (static file, 404, 405). */
void dx__http_serve(dx_conn *c, const dx_http_request *req);

/* conn.c: the session configuration shared by a server's connections. */
void dx__ws_session_cfg(dx__ep *ep, int role);
/* Queues a complete response with Connection: close and starts draining. */
int dx__http_respond(dx_conn *c, int status, const char *content_type, const char *headers, const void *body,
                     size_t len, bool head_only);

#endif
