/*
 * duplex/server.h: event loops, the WebSocket server endpoint and its
 * connections.
 *
 * Threading: one dx_loop per thread. A loop owns its servers and their
 * connections; every function here except dx_loop_stop and dx_loop_post
 * must be called on the loop's thread (from a callback, or before
 * dx_loop_run). For several cores, run one loop + server per thread with
 * `reuse_port` set: the kernel spreads connections over them.
 *
 * Callbacks run on the loop's thread. Data passed to them is borrowed until
 * they return. A callback may send on or close any connection of its loop,
 * including the one it is called for; a connection's memory stays valid
 * until its on_close has returned.
 */
#ifndef DUPLEX_SERVER_H
#define DUPLEX_SERVER_H

#include "duplex/duplex.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dx_loop dx_loop;
typedef struct dx_server dx_server;
typedef struct dx_conn dx_conn;
typedef struct dx_http_req dx_http_req;

/* ---- loop ---------------------------------------------------------------- */

typedef struct dx_loop_options {
    const dx_seams *seams; /* NULL: default; must outlive the loop */
    const dx_log *log;     /* NULL: stderr at INFO; must outlive the loop */
} dx_loop_options;

/* A new loop (epoll, eventfd wake-up, timer wheel). NULL on failure with *err
 * (if not NULL) set: DX_ENOMEM, DX_EIO (epoll/eventfd/timerfd refused). */
DX_API dx_loop *dx_loop_new(const dx_loop_options *opt, int *err);

/* Runs until dx_loop_stop. Returns 0, or DX_EIO if epoll_wait fails for a
 * reason other than EINTR. Blocks SIGPIPE on the calling thread, so a write
 * to a closed peer gives EPIPE rather than killing the process. */
DX_API int dx_loop_run(dx_loop *loop);

/* Makes dx_loop_run return after the current iteration. Thread-safe. */
DX_API void dx_loop_stop(dx_loop *loop);

/* Runs fn(arg) on the loop's thread at its next iteration. Thread-safe.
 * Returns 0 or DX_ENOMEM. Posted work that has not run when the loop is
 * freed is dropped (fn is not called). */
DX_API int dx_loop_post(dx_loop *loop, void (*fn)(void *arg), void *arg);

/* Frees the loop. Its servers must have been freed first. */
DX_API void dx_loop_free(dx_loop *loop);

/* ---- handshake-time view -------------------------------------------------- */

/* The upgrade request as the application sees it in on_upgrade. Every
 * pointer is borrowed until on_upgrade returns; strings are not
 * NUL-terminated. */
typedef struct dx_request {
    const char *path;
    size_t path_len;
    const char *query; /* NULL when the target has no '?' */
    size_t query_len;
    const char *origin; /* NULL when absent */
    size_t origin_len;
    const char *remote; /* "1.2.3.4:5678", "[::1]:5678" or "unix", NUL-terminated */
} dx_request;

/* Value of header `name` (case-insensitive) in the request being upgraded,
 * or NULL; *len gets its length. Valid only inside on_upgrade. */
DX_API const char *dx_request_header(const dx_request *req, const char *name, size_t *len);

/* Iterates the subprotocols the client offered: call with *cursor 0 first;
 * returns 1 and sets name/len while there are more, else 0. */
DX_API int dx_request_protocol(const dx_request *req, size_t *cursor, const char **name, size_t *len);

/* Inside on_upgrade: accept with this subprotocol (must be one the client
 * offered, else DX_EINVAL). The string is copied. */
DX_API int dx_request_select_protocol(dx_request *req, const char *name, size_t len);

/* Inside on_upgrade: the user pointer the connection will carry. */
DX_API void dx_request_set_user(dx_request *req, void *user);

/* ---- plain HTTP requests ------------------------------------------------------- */

/* A plain HTTP request as on_http sees it; a handle answered with
 * dx_http_reply. Every pointer is owned by the handle and valid until it is
 * answered. method and target are NUL-terminated; path and query are not
 * (they point into target). body is NUL-terminated too (body[body_len] ==
 * 0), and "" when the request has none. */
struct dx_http_req {
    const char *method;
    size_t method_len;
    const char *target; /* path and query as sent */
    size_t target_len;
    const char *path;
    size_t path_len;
    const char *query;  /* after '?'; NULL when the target has none */
    size_t query_len;
    const uint8_t *body; /* Content-Length or de-chunked bytes, at most max_http_body */
    size_t body_len;
    int minor_version;  /* x of HTTP/1.x */
    uint64_t conn_id;   /* as in log lines ("conn=ID") */
    const char *remote; /* "1.2.3.4:5678", "[::1]:5678" or "unix" */
};

/* Value of the first header `name` (ASCII case-insensitive) or NULL; *len
 * (if not NULL) gets its length. Borrowed from the handle. */
DX_API const char *dx_http_req_header(const dx_http_req *req, const char *name, size_t *len);

/* The i-th header line (0-based): returns 1 and fills the four outputs
 * (borrowed from the handle; not NUL-terminated), or 0 past the last. */
DX_API int dx_http_req_header_at(const dx_http_req *req, size_t i, const char **name, size_t *name_len,
                                 const char **value, size_t *value_len);

/*
 * Answers `req` with `status` (200-599: a 1xx is not a final answer), a
 * Content-Type (NULL: text/plain; charset=utf-8), extra header
 * lines `headers` (NULL, or complete "Name: value\r\n" lines) and a body
 * (copied; not sent for HEAD requests, whose Content-Length still says its
 * length). The server adds Content-Length and, when the connection will
 * close, Connection: close. Call it exactly once per request the
 * application took (on_http returned 1, or it answers inside on_http); on
 * the loop's thread, from a callback or a posted function. Whatever it
 * returns, the handle is released (at once, or when on_http returns if
 * called inside it): do not use req after the call (after on_http returns).
 * Returns 0; DX_ECLOSED (the connection is gone: nothing is sent);
 * DX_EINVAL (bad status, content type or header lines) or DX_ELIMIT (body
 * larger than send_max): the peer gets 500 instead; DX_ENOMEM (the
 * connection is dropped); DX_ESTATE: a second call inside on_http for the
 * same request (ignored). Fires no callback: an answer that frees the
 * connection for a pipelined request lets the loop read it afterwards.
 */
DX_API int dx_http_reply(dx_http_req *req, int status, const char *content_type, const char *headers,
                         const void *body, size_t len);

/* ---- server ---------------------------------------------------------------- */

typedef struct dx_server_callbacks {
    /* A valid WebSocket upgrade request arrived. Return 0 to accept, or an
     * HTTP status (400-599) to refuse it (e.g. 401, 403, 404). NULL: accept
     * everything. */
    int (*on_upgrade)(dx_server *srv, dx_request *req, void *ud);
    /* A plain HTTP request (not an upgrade), head and body complete (see
     * dx_http_req). Return 0 to let the server answer it (static files for
     * GET/HEAD, else 404/405; the handle is released on return), or 1 when
     * the application answers: at once with dx_http_reply, or later (from
     * another callback or a dx_loop_post'ed function), keeping `req`, which
     * must then be answered exactly once. The connection reads nothing more
     * until the answer is sent (pipelined requests are answered in order).
     * A handle still held when its connection ends (the client left, the
     * server shut down or was freed) is detached, not freed: answering it
     * returns DX_ECLOSED and frees it (with the loop's seams, so answer it
     * before those go away). Optional: without it the server answers
     * everything itself. */
    int (*on_http)(dx_server *srv, dx_http_req *req, void *ud);
    void (*on_open)(dx_conn *c, void *ud);
    /* A complete message; text is valid UTF-8. */
    void (*on_message)(dx_conn *c, int opcode, const uint8_t *data, size_t len, void *ud);
    /* The send queue fell back to empty after it had passed send_high_water. */
    void (*on_drain)(dx_conn *c, void *ud);
    /* The connection ended. code: the peer's close code, or ours when we
     * failed it (1002, 1007, 1008, 1009, ...), or 1006 when the TCP connection
     * was lost without a close frame (RST, EOF, heartbeat or close timeout).
     * reason: the peer's close reason when its close frame carried one, else
     * empty. Called exactly once for every connection that got on_open. */
    void (*on_close)(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud);
    /* Optional trace of every frame both ways: dir '>' sent, '<' received;
     * `head` is at most the first 16 payload bytes (unmasked). */
    void (*on_frame)(dx_conn *c, int dir, unsigned opcode, int fin, unsigned rsv, uint64_t len, int masked,
                     const uint8_t *head, size_t head_len, void *ud);
    /* A pong arrived (answering dx_conn_send(DX_OP_PING) or the heartbeat). Optional. */
    void (*on_pong)(dx_conn *c, const uint8_t *data, size_t len, void *ud);
} dx_server_callbacks;

/* One certificate for TLS; the first is the default, the others are chosen
 * by SNI when their certificate's names match. */
typedef struct dx_tls_cert {
    const char *cert_file; /* PEM chain */
    const char *key_file;  /* PEM private key */
} dx_tls_cert;

#define DX_PORT_EPHEMERAL 65536u

/* Server settings. Zero means the default named in brackets. */
typedef struct dx_server_options {
    const char *host;           /* ["::" then "0.0.0.0"]: a name or literal to bind */
    unsigned port;              /* [8080]; DX_PORT_EPHEMERAL: any free port; ignored with unix_path */
    const char *unix_path;      /* listen on a Unix socket instead of TCP */
    int reuse_port;             /* SO_REUSEPORT, for one server per thread */
    int backlog;                /* [1024] */
    const dx_tls_cert *tls;     /* NULL: plain TCP */
    size_t n_tls;
    const char *static_dir;     /* files served to plain GET/HEAD; NULL: none (404) */

    size_t max_head;            /* [8192] bytes of a request head → 431 */
    size_t max_headers;         /* [64] header lines → 431 */
    unsigned handshake_timeout_ms; /* [10000] from accept to the end of the upgrade, TLS included */
    size_t max_message;         /* [1 MiB] → close 1009 */
    size_t max_fragments;       /* [1024] frames per message → close 1008 */
    size_t send_high_water;     /* [64 KiB] queued bytes above which on_drain is armed */
    size_t send_max;            /* [1 MiB] queued bytes past which the peer is closed with 1008 */
    unsigned close_timeout_ms;  /* [5000] wait for the peer's close frame / EOF, then drop */
    unsigned idle_timeout_ms;   /* [0: off] no frame received for this long → close 1001 */
    unsigned ping_interval_ms;  /* [30000] heartbeat ping period; (unsigned)-1: off */
    unsigned pong_timeout_ms;   /* [10000] no pong this long after a ping → drop (1006) */

    /* plain HTTP (not upgrades) */
    size_t max_http_body;       /* [1 MiB] request body (Content-Length or de-chunked) → 413 */
    unsigned http_keepalive_ms; /* [5000] wait for the next request on a kept-alive connection;
                                   (unsigned)-1: no keep-alive (Connection: close on every answer) */
    unsigned http_max_requests; /* [1000] requests per connection; the last answer closes it */

    unsigned instance;          /* [0] this server's index among `instances` sharing a port */
    unsigned instances;         /* [1] connection ids are instance + k * instances: unique across them */

    dx_server_callbacks cb;
    void *ud;                   /* passed to every callback */
} dx_server_options;

/* The client endpoint that owns a client-side connection (NULL for
 * server-side ones); see duplex/client.h. */
struct dx_client;
DX_API struct dx_client *dx_conn_client(const dx_conn *c);

/* Counters of one server (monotonic since start, except `open`). */
typedef struct dx_server_stats {
    uint64_t accepted, open, handshakes_failed, closed;
    uint64_t messages_in, messages_out, bytes_in, bytes_out;
    uint64_t dropped_slow;      /* connections closed for passing send_max */
    uint64_t pongs_dropped;     /* pongs not queued to peers that do not read */
    uint64_t accept_errors;
} dx_server_stats;

/* A server on `loop`, copying `opt` (strings included). It listens at
 * dx_server_start. NULL on failure with *err: DX_EINVAL (bad option),
 * DX_ETLS (certificate or key unusable), DX_ENOMEM. */
DX_API dx_server *dx_server_new(dx_loop *loop, const dx_server_options *opt, int *err);

/* Binds and listens. Returns 0, DX_EADDR (cannot resolve or bind; errno is
 * kept), DX_EIO. */
DX_API int dx_server_start(dx_server *srv);

/* The TCP port bound after dx_server_start (0 for a Unix socket). */
DX_API unsigned dx_server_port(const dx_server *srv);

/* Graceful stop: close the listener, send close `code` (e.g. 1001) to every
 * open connection, drop connections still in the handshake. on_close fires
 * for each as they finish (within close_timeout_ms). Returns the number of
 * connections still open. */
DX_API size_t dx_server_shutdown(dx_server *srv, unsigned code, const char *reason);

/* Connections not yet fully closed (handshaking, open or closing). */
DX_API size_t dx_server_connections(const dx_server *srv);

DX_API void dx_server_stats_get(const dx_server *srv, dx_server_stats *out);

/* Frees the server; connections still open are dropped without callbacks. */
DX_API void dx_server_free(dx_server *srv);

/* ---- connections ------------------------------------------------------------- */

/*
 * Sends a message (DX_OP_TEXT, DX_OP_BINARY) or a ping (DX_OP_PING, <= 125
 * bytes). The bytes are copied (or written at once). Returns 0; DX_EINVAL;
 * DX_EUTF8 (text not UTF-8); DX_ECLOSED (closing or closed); DX_ELIMIT (the
 * send queue would pass send_max: the connection is being closed with 1008
 * and the drop counted); DX_ENOMEM.
 */
DX_API int dx_conn_send(dx_conn *c, int opcode, const void *data, size_t len);

/* Starts the close handshake with `code` (0: none) and an optional UTF-8
 * reason (<= 123 bytes). on_close follows once the peer answers or
 * close_timeout_ms passes. Returns 0, DX_EINVAL, DX_EUTF8, DX_ECLOSED. */
DX_API int dx_conn_close(dx_conn *c, unsigned code, const char *reason, size_t len);

/* Bytes queued for sending (not yet accepted by the kernel). */
DX_API size_t dx_conn_buffered(const dx_conn *c);

/* Writes the peer's address ("1.2.3.4:5678", "[::1]:5678" or "unix") into
 * buf (NUL-terminated, cut to cap - 1 bytes; 64 bytes always suffice).
 * Returns the full length, like snprintf. */
DX_API size_t dx_conn_remote(const dx_conn *c, char *buf, size_t cap);

/* The negotiated subprotocol or NULL. Owned by the connection. */
DX_API const char *dx_conn_protocol(const dx_conn *c);

DX_API void *dx_conn_user(const dx_conn *c);
DX_API void dx_conn_set_user(dx_conn *c, void *user);
DX_API dx_server *dx_conn_server(const dx_conn *c);
/* The connection's id, as it appears in log lines ("conn=ID"). */
DX_API uint64_t dx_conn_id(const dx_conn *c);

#ifdef __cplusplus
}
#endif

#endif /* DUPLEX_SERVER_H */
