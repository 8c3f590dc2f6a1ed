/*
 * src/ws/ws.h: internals shared by the server endpoint (server.c), its
 * connections (conn.c) and the plain-HTTP side (http.c).
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
    CS_HTTP,    /* server: a plain HTTP request's body, its answer, the answer's bytes (http.c) */
    CS_OPEN,    /* WebSocket session running (open, or close sent) */
    CS_DRAIN,   /* last bytes (close frame, HTTP response) being flushed */
    CS_LINGER,  /* FIN sent; reading until the peer's EOF */
    CS_DEAD     /* closed; memory freed after the current batch */
};

enum {
    CF_OPENED = 1u << 0,       /* on_open fired: on_close is owed */
    CF_PING_OUT = 1u << 1,     /* a heartbeat ping awaits its pong */
    CF_DRAIN_ARMED = 1u << 2,  /* queue passed the high-water mark */
    CF_WANT_WRITE = 1u << 5,   /* EPOLLOUT registered */
    CF_HTTP_IDLE = 1u << 6,    /* CS_HEAD on a kept-alive connection, before the next request's first byte */
    CF_READ_OFF = 1u << 7,     /* EPOLLIN off (an HTTP answer is pending or being sent) */
    CF_READ_HUP = 1u << 8,     /* with CF_READ_OFF: still watch EPOLLRDHUP (the peer leaving) */
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
} dx__ep;

/* Unsent bytes (off..off+len), allocated only while the kernel refuses. */
typedef struct dx__wq {
    size_t off, len, cap;
    uint8_t data[];
} dx__wq;

/* A request (or response) head being read during CS_HEAD, when it did not
 * come in one read: cap starts at what arrived (at least 512) and doubles up
 * to max_head; ps keeps the parser's progress, so each byte is examined
 * once. Once open: the peer's close reason if its close frame had one.
 * Allocated only then. */
typedef struct dx__head {
    size_t len, cap;
    dx_http_head ps;
    uint8_t data[];
} dx__head;

typedef struct dx__http dx__http;

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
    dx__http *http; /* plain HTTP state (http.c), from the first request on */
    char *protocol;
    uint64_t id;
    uint32_t opened_tick, last_rx_tick;
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

/* http.c: the plain HTTP side of a server connection. */
/* A complete request head (not an upgrade) arrived in buf[0..len): take it
 * (copied), then read its body (CS_HTTP) or answer it. */
void dx__http_begin(dx_conn *c, const dx_http_request *req, const char *buf, size_t len);
/* Input while CS_HTTP: returns the bytes taken (body), or keeps the rest for
 * later when the answer is pending (reading is off then). */
size_t dx__http_input(dx_conn *c, const uint8_t *p, size_t n);
/* Readiness while CS_HTTP: returns true when the caller should read. */
bool dx__http_io(dx_conn *c, uint32_t events);
/* Input kept from an earlier read, if any, processed now (keep-alive). */
void dx__http_resume(dx_conn *c);
/* The connection's timer fired while CS_HTTP. */
void dx__http_timeout(dx_conn *c);
/* The connection is going away: releases the HTTP state; a request the
 * application holds is detached (its answer will return DX_ECLOSED). */
void dx__http_conn_gone(dx_conn *c);
/* conn.c: feeds input to the connection as if just read. */
void dx__conn_process(dx_conn *c, uint8_t *p, size_t n);
/* conn.c: reading on (READ_ON), off but watching the peer leave (READ_HUP),
 * or off (READ_OFF). */
enum { DX__READ_ON, DX__READ_HUP, DX__READ_OFF };
void dx__conn_reading(dx_conn *c, int mode);

/* conn.c: the session configuration shared by a server's connections. */
void dx__ws_session_cfg(dx__ep *ep, int role);

#endif
