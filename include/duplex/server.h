/*
 * duplex/server.h: the WebSocket server endpoint and its connections. The
 * event loop they run on is in duplex/loop.h (included).
 *
 * Threading: one dx_loop per thread. A loop owns its servers and their
 * connections; every function here must be called on the loop's thread
 * (from a callback, or before dx_loop_run); other threads reach it with
 * dx_loop_post. For several cores, run one loop + server per thread with
 * `reuse_port` set: the kernel spreads connections over them.
 *
 * Callbacks run on the loop's thread, only from dx_loop_run. Data passed to
 * them is borrowed until they return. A callback may send on or close any
 * connection of its loop, including the one it is called for, shut down or
 * free any server or client of its loop, its own included.
 *
 * Lifecycle: no function in this header (nor in duplex/client.h) runs a
 * callback before it returns; the only exception is the on_frame trace of a
 * frame being sent (dir '>'), which fires inside the call that sends it and
 * must only read. A failed write marks its connection dead; on_close
 * follows from the loop once the callback stack has unwound. After
 * on_close nothing else is delivered for that connection; its memory stays
 * valid until on_close has returned. A streamed HTTP answer
 * (dx_http_stream) keeps the same rules: its on_close fires exactly once,
 * from the loop, whatever ended it (the stream's end, the client leaving,
 * send_max, dx_server_shutdown, dx_server_free), and nothing after it.
 */
#ifndef DUPLEX_SERVER_H
#define DUPLEX_SERVER_H

#include "duplex/deflate.h"
#include "duplex/duplex.h"
#include "duplex/loop.h"
#include "duplex/msg.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dx_server dx_server;
typedef struct dx_conn dx_conn;
typedef struct dx_http_req dx_http_req;

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

/* ---- deferred upgrade decisions ------------------------------------------- */

/* on_upgrade returns this after dx_request_defer: the answer comes later. */
#define DX_UPGRADE_DEFER 1

/* A pending upgrade decision, answered later with dx_upgrade_accept or
 * dx_upgrade_refuse. */
typedef struct dx_upgrade dx_upgrade;

/*
 * Inside on_upgrade: defers the decision (e.g. an auth check against another
 * service that must not block the loop). on_upgrade must then return
 * DX_UPGRADE_DEFER; once a handle exists the return value is ignored and the
 * handle decides. Calling it again returns the same handle. NULL on
 * DX_ENOMEM: decide now instead (returning DX_UPGRADE_DEFER without a
 * handle refuses with 500).
 *
 * The handle copies the request (path, query, origin, remote, every header,
 * the subprotocols offered): dx_upgrade_request gives a dx_request that
 * stays valid until the handle is answered, usable with dx_request_header
 * and dx_request_protocol.
 *
 * While deferred, nothing is read from the connection (bytes sent behind
 * the request stay in the kernel, or in a buffer of at most max_head bytes,
 * and are delivered after on_open, in order); a peer EOF or reset drops the
 * connection at once. The answer must come within what is left of
 * handshake_timeout_ms (counted from accept): after it, the connection is
 * dropped, counted in dx_server_stats.upgrade_timeouts and logged.
 *
 * The handle must be answered exactly once, from the loop's thread (a
 * callback, a dx_loop_post'ed function, a timer), whatever happened to the
 * connection: an answer after the connection ended returns DX_ECLOSED and
 * still frees the handle. The handle survives dx_server_free (answer it
 * before dx_loop_free). Answering inside on_upgrade itself is allowed and
 * is applied when on_upgrade returns.
 */
DX_API dx_upgrade *dx_request_defer(dx_request *req);

/* The copied request of a deferred upgrade. Owned by the handle; valid
 * until the handle is answered. */
DX_API const dx_request *dx_upgrade_request(const dx_upgrade *h);

/*
 * Accepts a deferred upgrade with subprotocol `protocol` (NUL-terminated,
 * must be one the client offered; NULL: none) and the user pointer the
 * connection will carry. The 101 response is written now; on_open (then
 * any messages the client sent meanwhile) follow from the loop, never
 * inside this call. After 0, on_open comes even if the peer leaves, a
 * write fails or dx_server_shutdown runs before the loop opens the
 * connection (on_close then follows at once: 1006, or 1001 for a
 * shutdown); only dx_server_free drops it unreported. Returns 0 (handle
 * freed); DX_ECLOSED (the connection
 * is gone, or the response could not be built or written: handle freed,
 * on_open never comes); DX_ENOMEM (the connection is refused with 500,
 * handle freed); DX_EINVAL (protocol not offered: nothing done, the handle
 * is still owed an answer).
 * Fires no callback.
 */
DX_API int dx_upgrade_accept(dx_upgrade *h, const char *protocol, void *user);

/*
 * Refuses a deferred upgrade with an HTTP `status` (400-599, else 500) and
 * optional extra header lines (each ending in "\r\n", e.g.
 * "Retry-After: 5\r\n"; NULL: none; an invalid block is dropped). The
 * connection closes after the response. Returns 0 or DX_ECLOSED; the
 * handle is freed either way. Fires no callback.
 */
DX_API int dx_upgrade_refuse(dx_upgrade *h, int status, const char *headers);

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

/* ---- streamed HTTP answers (Server-Sent Events) ------------------------------- */

/*
 * A response whose body is written over time, never Content-Length-ended:
 * what Server-Sent Events need. It lives on the connection that carried the
 * request; after its head the connection reads nothing more as HTTP (bytes
 * the peer sends, pipelined requests included, are read and discarded, at
 * most 64 KiB in all, past which the connection is dropped: on_close with
 * DX_EPROTO). Neither handshake_timeout_ms nor http_keepalive_ms applies to
 * it: a stream lasts until one side ends it. It counts in
 * dx_server_connections (not in max_handshaking).
 */
typedef struct dx_http_stream dx_http_stream;

typedef struct dx_http_stream_callbacks {
    /* The send queue fell back to empty after it had passed send_high_water.
     * Optional. */
    void (*on_drain)(dx_http_stream *s, void *ud);
    /* The stream ended; fires exactly once per stream, always from the loop
     * (never inside a call the application made). err: 0 after an end
     * (dx_http_stream_end, a HEAD request, dx_server_shutdown) once every
     * byte was handed to the kernel; DX_ECLOSED when the peer left (EOF or
     * reset), a write failed, an end could not be flushed within
     * close_timeout_ms, or the server was freed; DX_ELIMIT when the queue
     * passed send_max (counted in dropped_slow); DX_EPROTO when the peer sent
     * more than 64 KiB; DX_ENOMEM when a chunk could not be queued. The
     * handle is valid until this returns, and only calls that return
     * DX_ECLOSED work on it here. A server freed while its streams are open
     * reports them from the loop's next iteration; a loop freed before it
     * runs again releases them without on_close. Optional. */
    void (*on_close)(dx_http_stream *s, int err, void *ud);
} dx_http_stream_callbacks;

/*
 * Answers `req` (as dx_http_reply does: inside on_http, or later for a
 * request the application took) with `status` (200-599), a Content-Type
 * (NULL: text/plain; charset=utf-8), extra header lines `headers` (NULL, or
 * complete "Name: value\r\n" lines: e.g. "Cache-Control: no-cache\r\n";
 * nothing else is added but X-Content-Type-Options: nosniff and Connection:
 * close), then keeps the connection for dx_http_stream_send. HTTP/1.1: the
 * body is Transfer-Encoding: chunked, each send one chunk; HTTP/1.0: the body
 * is raw and ends when the connection closes. A HEAD request gets the head
 * only: the stream is ended at once (sends return DX_ECLOSED, on_close(0)
 * follows). `cb` is copied (NULL: no callbacks); `ud` is passed to them.
 *
 * Returns the handle, or NULL with *err (if err is not NULL): DX_ECLOSED
 * (the connection is gone: nothing is sent); DX_EINVAL (bad status, content
 * type or header lines, or a head over 2 KiB: the peer gets 500); DX_ENOMEM
 * (the peer gets 500, or the connection is dropped); DX_ESTATE (req was
 * already answered). Whatever it returns, `req` is released as by
 * dx_http_reply. Fires no callback.
 */
DX_API dx_http_stream *dx_http_reply_stream(dx_http_req *req, int status, const char *content_type,
                                            const char *headers, const dx_http_stream_callbacks *cb, void *ud,
                                            int *err);

/*
 * Sends `len` bytes (copied, or written at once) as one chunk (HTTP/1.1) or
 * as they are (HTTP/1.0); len 0 sends nothing. Output is gathered and written
 * before the loop sleeps (a large piece at once); what the kernel refuses
 * waits, bounded by send_max. Returns 0; DX_ECLOSED (ended, or the
 * connection is gone or its write failed just now: on_close follows from
 * the loop if it has not fired yet); DX_ELIMIT (the queue would pass
 * send_max: the connection is dropped, on_close(DX_ELIMIT) follows);
 * DX_ENOMEM (the connection is dropped, on_close(DX_ENOMEM) follows).
 * Fires no callback; callable from any callback of the loop.
 */
DX_API int dx_http_stream_send(dx_http_stream *s, const void *data, size_t len);

/* As dx_http_stream_send, with one chunk made of a[0..alen) then
 * b[0..blen) (no concatenation copy by the caller). */
DX_API int dx_http_stream_send2(dx_http_stream *s, const void *a, size_t alen, const void *b, size_t blen);

/* As dx_http_stream_send with the payload of the prepared message `m`
 * (duplex/msg.h; its opcode is ignored), queued by reference, not copied:
 * an event encoded once for many streams (the chunk size line is the only
 * per-stream copy). The stream holds its own reference while the bytes wait;
 * the caller keeps its own. DX_EINVAL when m is NULL; else as
 * dx_http_stream_send. */
DX_API int dx_http_stream_send_msg(dx_http_stream *s, dx_msg *m);

/* Bytes queued, not yet accepted by the kernel (0 once the connection is
 * gone). Fires no callback. */
DX_API size_t dx_http_stream_buffered(const dx_http_stream *s);

/*
 * Ends the body (the last chunk in HTTP/1.1), flushes what is queued, then
 * closes the connection (FIN, then waits for the peer's EOF, bounded by
 * close_timeout_ms). on_close follows from the loop: 0 once everything was
 * handed to the kernel, DX_ECLOSED if the peer left first. Returns 0 or
 * DX_ECLOSED (already ended, or the connection is gone: on_close still
 * comes if it has not fired). Fires no callback; callable from any callback,
 * on_drain and on_close of this stream included.
 */
DX_API int dx_http_stream_end(dx_http_stream *s);

/* The connection's id, as in log lines ("conn=ID"); valid until on_close
 * has returned. */
DX_API uint64_t dx_http_stream_id(const dx_http_stream *s);

/* ---- server ---------------------------------------------------------------- */

typedef struct dx_server_callbacks {
    /* A valid WebSocket upgrade request arrived. Return 0 to accept, an
     * HTTP status (400-599) to refuse it (e.g. 401, 403, 404), or
     * DX_UPGRADE_DEFER after dx_request_defer to decide later. NULL:
     * accept everything. */
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
    size_t max_fragments;       /* [1024] frames of any size per message; more only while they average
                                   64 bytes (DX_CODEC_FRAGMENT_COST rule) → close 1008 */
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

    size_t max_conns_per_ip;    /* [0: off] live connections per client address (IPv6: per /64), counted
                                   per server; over it: 503 + Retry-After (plain TCP) or a TCP close (TLS) */
    size_t max_handshaking;     /* [1024] connections not upgraded yet (TLS, request head, deferred
                                   decision, plain HTTP; not streamed answers); over it: TCP close at accept;
                                   (size_t)-1: no limit */
    size_t conn_ext_size;       /* [0] bytes of per-connection user memory allocated inline with each
                                   connection (dx_conn_ext), zeroed at accept */

    dx_server_callbacks cb;
    void *ud;                   /* passed to every callback */

    /* permessage-deflate (duplex/deflate.h): [off]. enable accepts it from
     * clients that offer it. */
    dx_deflate_options deflate;
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
    uint64_t refused_per_ip;    /* connections refused over max_conns_per_ip */
    uint64_t refused_handshaking; /* connections closed at accept over max_handshaking */
    uint64_t upgrades_deferred; /* on_upgrade decisions deferred (dx_request_defer) */
    uint64_t upgrade_timeouts;  /* of those, dropped at handshake_timeout_ms before an answer */
    /* permessage-deflate (duplex/deflate.h) */
    uint64_t deflate_messages_out; /* messages sent compressed (RSV1) */
    uint64_t deflate_bytes_raw;    /* their payload bytes before compression */
    uint64_t deflate_bytes_wire;   /* ... and after (frame payloads, tail removed) */
    uint64_t inflate_messages_in;  /* compressed messages received and inflated */
    uint64_t inflate_bytes_wire;   /* their payload bytes as received */
    uint64_t inflate_bytes_raw;    /* ... and inflated */
    uint64_t deflate_downgrades;   /* connections given no_context_takeover by mem_budget */
    uint64_t deflate_refused;      /* offers declined by mem_budget (no compression) */
    uint64_t deflate_mem;          /* gauge: bytes zlib holds now for this endpoint */
} dx_server_stats;

/* A server on `loop`, copying `opt` (strings included; the size rule of
 * option structs is in duplex/loop.h). It listens at
 * dx_server_start. NULL on failure with *err: DX_EINVAL (bad option),
 * DX_ETLS (certificate or key unusable), DX_ENOMEM. Fires no callback;
 * callable from a callback. */
DX_API dx_server *dx_server_new_sized(dx_loop *loop, const dx_server_options *opt, size_t opt_size, int *err);
#define dx_server_new(loop, opt, err) dx_server_new_sized((loop), (opt), sizeof(dx_server_options), (err))

/* Binds and listens. Returns 0, DX_EADDR (cannot resolve or bind; errno is
 * kept), DX_EIO. Fires no callback; callable from a callback. */
DX_API int dx_server_start(dx_server *srv);

/* The TCP port bound after dx_server_start (0 for a Unix socket). The
 * getters below fire no callback and are callable anywhere on the loop's
 * thread. */
DX_API unsigned dx_server_port(const dx_server *srv);

/* Graceful stop: close the listener, send close `code` (e.g. 1001) to every
 * open connection, end every streamed answer (dx_http_stream_end), drop
 * connections still in the handshake. on_close fires
 * for each as they finish (within close_timeout_ms), from the loop: none
 * inside this call. Callable from any callback (on_close handlers may send
 * to or close the others meanwhile). Returns the number of connections not
 * yet fully closed. */
DX_API size_t dx_server_shutdown(dx_server *srv, unsigned code, const char *reason);

/* Connections not yet fully closed (handshaking, open, streaming an HTTP
 * answer, or closing). */
DX_API size_t dx_server_connections(const dx_server *srv);

DX_API void dx_server_stats_get(const dx_server *srv, dx_server_stats *out);

/* Replaces the TLS certificates (and keys) of a server started with TLS,
 * for the handshakes that start after it: the new contexts are built during
 * the call (files read and checked here, on the caller's thread) and taken
 * by the loop thread at its next accept. Connections already accepted keep
 * the certificate they were accepted with. Callable from any thread while
 * the server exists; fires no callback. Returns 0, DX_EINVAL (no
 * certificate, or a server without TLS: turning TLS on needs a new server),
 * DX_ETLS (a file unreadable, a key not matching) or DX_ENOMEM, with a
 * one-line reason in why[0..why_len) (may be NULL); on error the current
 * certificates stay. */
DX_API int dx_server_reload_tls(dx_server *srv, const dx_tls_cert *certs, size_t n, char *why, size_t why_len);

/* Frees the server; connections still open are dropped without callbacks
 * (those already closed but not yet reported are not reported either): no
 * callback of this server fires after the call returns. Streamed answers
 * are dropped too, but their own on_close (DX_ECLOSED) still comes from the
 * loop: after the callback stack unwinds, or at the next dx_loop_run when
 * called outside it (a loop freed first releases them without it).
 * Callable from any of the server's callbacks (a stream's included): the
 * memory is then released once the callback stack has unwound. */
DX_API void dx_server_free(dx_server *srv);

/* ---- connections ------------------------------------------------------------- */

/*
 * Sends a message (DX_OP_TEXT, DX_OP_BINARY) or a ping (DX_OP_PING, <= 125
 * bytes). The bytes are copied (or written at once). Returns 0; DX_EINVAL;
 * DX_EUTF8 (text not UTF-8); DX_ECLOSED (closing or closed, or the write
 * failed just now: the connection is marked dead and on_close follows from
 * the loop); DX_ELIMIT (the send queue would pass send_max: the connection
 * is being closed with 1008 and the drop counted); DX_ENOMEM.
 * Fires no callback (only the on_frame trace); callable from any callback,
 * on any connection of the loop.
 */
DX_API int dx_conn_send(dx_conn *c, int opcode, const void *data, size_t len);

/* Starts the close handshake with `code` (0: none) and an optional UTF-8
 * reason (<= 123 bytes). on_close follows once the peer answers or
 * close_timeout_ms passes (or the write fails), always from the loop,
 * never inside this call. Returns 0, DX_EINVAL, DX_EUTF8, DX_ECLOSED.
 * Callable from any callback, on any connection of the loop. */
DX_API int dx_conn_close(dx_conn *c, unsigned code, const char *reason, size_t len);

/* Bytes queued for sending, not yet accepted by the kernel: output gathered
 * during this loop iteration (written before the loop sleeps) plus what the
 * kernel refused. This and the accessors below fire no callback; callable
 * from any callback (inside on_close included). */
DX_API size_t dx_conn_buffered(const dx_conn *c);

/* Writes the peer's address ("1.2.3.4:5678", "[::1]:5678" or "unix") into
 * buf (NUL-terminated, cut to cap - 1 bytes; 64 bytes always suffice).
 * Returns the full length, like snprintf. */
DX_API size_t dx_conn_remote(const dx_conn *c, char *buf, size_t cap);

/* The negotiated subprotocol or NULL. Owned by the connection. */
DX_API const char *dx_conn_protocol(const dx_conn *c);

/*
 * Stops reading the connection: no on_message (nor on_pong, on_frame) until
 * dx_conn_resume, even for bytes already received (kept, in order); the
 * kernel's buffers fill and TCP backpressure slows the peer. Sending,
 * on_drain and timers go on. Callable from any callback, including
 * on_message of this connection (the messages after it in the same read
 * wait). While paused the heartbeat is suspended (no ping, no pong
 * deadline: the pong may sit unread behind the pause); idle_timeout_ms
 * still applies. A peer that leaves (FIN or reset) is noticed at once: the
 * connection ends with 1006 and its unread input is dropped.
 * dx_conn_close, or the server closing it, resumes reading so the close
 * handshake can finish. Returns 0 (also when already paused) or DX_ECLOSED
 * (not open). Fires no callback.
 */
DX_API int dx_conn_pause(dx_conn *c);

/* Reading on again: what was received meanwhile is delivered from the loop
 * (never inside this call), then the socket is read again. Returns 0 (also
 * when not paused) or DX_ECLOSED. Fires no callback. */
DX_API int dx_conn_resume(dx_conn *c);

/* The connection's inline user memory (conn_ext_size bytes, aligned for
 * any type, zeroed at accept), valid until on_close has returned; NULL
 * when conn_ext_size is 0 (and for client-side connections). */
DX_API void *dx_conn_ext(dx_conn *c);

DX_API void *dx_conn_user(const dx_conn *c);
DX_API void dx_conn_set_user(dx_conn *c, void *user);
DX_API dx_server *dx_conn_server(const dx_conn *c);
/* The connection's id, as it appears in log lines ("conn=ID"). */
DX_API uint64_t dx_conn_id(const dx_conn *c);

#ifdef __cplusplus
}
#endif

#endif /* DUPLEX_SERVER_H */
