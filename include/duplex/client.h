/*
 * duplex/client.h: the WebSocket client endpoint.
 *
 * A dx_client connects to a ws:// or wss:// URL on a dx_loop and hands the
 * application the same dx_conn as the server side (duplex/server.h: send,
 * close, buffered bytes, callbacks): one connection type, two roles. On top
 * it can reconnect with backoff and hold messages while disconnected.
 *
 * Threading: as for servers, everything runs on the loop's thread; call
 * these functions from that thread (or before dx_loop_run).
 *
 * Lifecycle: as for servers (duplex/server.h), no function here runs a
 * callback before it returns; every one may be called from any callback of
 * the loop, the client's own included (dx_client_free too).
 */
#ifndef DUPLEX_CLIENT_H
#define DUPLEX_CLIENT_H

#include "duplex/server.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dx_client dx_client;

typedef struct dx_client_callbacks {
    /* The handshake completed (after a reconnect too); queued messages have
     * already been written. */
    void (*on_open)(dx_conn *c, void *ud);
    void (*on_message)(dx_conn *c, int opcode, const uint8_t *data, size_t len, void *ud);
    void (*on_drain)(dx_conn *c, void *ud);
    /* An open connection ended (codes as for servers). With reconnect on, a
     * reconnect may follow (on_reconnect). */
    void (*on_close)(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud);
    /* A connection attempt failed before opening: DNS, connect, proxy, TLS
     * (verification failures are named: "certificate verify failed: ..."),
     * HTTP status or handshake. `what` is a NUL-terminated message. */
    void (*on_error)(dx_client *cl, int err, const char *what, void *ud);
    /* A reconnect is scheduled: attempt number (1, 2, ...) and delay. */
    void (*on_reconnect)(dx_client *cl, unsigned attempt, unsigned delay_ms, void *ud);
    /* The client gave up (max_attempts reached, or not reconnecting after a
     * close or an error). Nothing more will happen until dx_client_connect. */
    void (*on_done)(dx_client *cl, void *ud);
    /* Optional trace of every frame both ways: dir '>' sent, '<' received;
     * `head` is at most the first 16 payload bytes (unmasked). */
    void (*on_frame)(dx_conn *c, int dir, unsigned opcode, int fin, unsigned rsv, uint64_t len, int masked,
                     const uint8_t *head, size_t head_len, void *ud);
    /* A pong arrived (answering dx_conn_send(DX_OP_PING) or the heartbeat). Optional. */
    void (*on_pong)(dx_conn *c, const uint8_t *data, size_t len, void *ud);
} dx_client_callbacks;

/* Client settings. Zero means the default in brackets. Strings are copied. */
typedef struct dx_client_options {
    const char *url;                /* ws://host[:port]/path?query or wss://...; IPv6 as [::1] */
    const char *const *protocols;   /* subprotocols to offer */
    size_t n_protocols;
    const char *origin;             /* Origin header, or NULL */
    const char *const *headers;     /* extra header lines "Name: value" */
    size_t n_headers;
    const char *proxy;              /* "http://host:port": tunnel through HTTP CONNECT;
                                       "socks5://host[:1080]" (or socks5h://): through a SOCKS5 proxy
                                       (RFC 1928, no authentication); the URL's host name is sent to
                                       the proxy, which resolves it */
    const char *bind_addr;          /* local source address (e.g. "127.0.0.2"), or NULL */

    int insecure;                   /* 1: do not verify the server's certificate (tests only) */
    const char *ca_file;            /* PEM CAs to trust instead of the system store */
    const char *cert_file;          /* PEM client certificate (chain) shown to a wss:// server that asks */
    const char *key_file;           /* its PEM private key; both or neither (else DX_EINVAL) */
    const char *unix_path;          /* connect to this Unix socket instead of the URL's host and port
                                       (the URL still gives Host and the path); not with proxy */

    unsigned connect_timeout_ms;    /* [10000] DNS + TCP + proxy + TLS + handshake */
    size_t max_message;             /* [1 MiB] larger incoming messages: close 1009 */
    size_t max_fragments;           /* [1024] frames of any size per message; more only while they
                                       average 64 bytes (DX_CODEC_FRAGMENT_COST rule) → close 1008 */
    size_t max_head;                /* [8192] response head */
    size_t send_high_water;         /* [64 KiB] */
    size_t send_max;                /* [1 MiB] unsent bytes before the connection is closed 1008 */
    unsigned close_timeout_ms;      /* [5000] */
    unsigned ping_interval_ms;      /* [30000]; (unsigned)-1: off */
    unsigned pong_timeout_ms;       /* [10000] */

    int reconnect;                  /* 1: reconnect after a close or a failed attempt */
    unsigned backoff_base_ms;       /* [500] first delay bound */
    unsigned backoff_cap_ms;        /* [30000] delay bound cap */
    unsigned max_attempts;          /* [0: unlimited] consecutive failed attempts before giving up */
    size_t queue_max_messages;      /* [0: no queue] messages held while disconnected */
    size_t queue_max_bytes;         /* [1 MiB when queue_max_messages is set] */

    dx_client_callbacks cb;
    void *ud;

    /* permessage-deflate (duplex/deflate.h): [off]. enable offers it; a
     * response the client cannot accept fails the attempt (on_error with
     * DX_EEXTENSION). */
    dx_deflate_options deflate;
} dx_client_options;

typedef struct dx_client_stats {
    uint64_t attempts, opens, reconnects;
    uint64_t queued, flushed, dropped; /* offline queue: held, sent after reconnecting, refused */
    uint64_t messages_in, messages_out, bytes_in, bytes_out;
} dx_client_stats;

/* A client on `loop` (not connected yet; the size rule of option structs
 * is in duplex/loop.h). NULL on failure with *err:
 * DX_EINVAL (bad URL or option: the URL must be ws:// or wss:// with a
 * host; a bad proxy URL, header, subprotocol; cert_file without key_file),
 * DX_ETLS (CA file, client certificate or key unusable: logged), DX_ENOMEM. Fires no callback. */
DX_API dx_client *dx_client_new_sized(dx_loop *loop, const dx_client_options *opt, size_t opt_size, int *err);
#define dx_client_new(loop, opt, err) dx_client_new_sized((loop), (opt), sizeof(dx_client_options), (err))

/* Starts connecting (asynchronously: the attempt starts from the loop, DNS
 * runs off the loop's thread). Returns 0 or DX_ESTATE (already connecting
 * or open). Fires no callback: even an attempt that fails at once reports
 * on_error (then on_reconnect or on_done) from the loop. Callable from a
 * callback, e.g. on_done to start again. */
DX_API int dx_client_connect(dx_client *cl);

/*
 * Sends a message or a ping. Open: as dx_conn_send. Not open and the queue
 * is on: the message is copied into the queue (0) or, when the queue is full,
 * refused with DX_ELIMIT and counted in `dropped`. Not open, no queue:
 * DX_ECLOSED. Fires no callback (a failed write: on_close from the loop).
 */
DX_API int dx_client_send(dx_client *cl, int opcode, const void *data, size_t len);

/* Closes (code, reason as dx_conn_close) and stops reconnecting; on_close
 * (if a connection was open) then on_done follow, from the loop: none
 * inside this call. Returns 0, or DX_ECLOSED when already closed or never
 * connected. An attempt in progress is abandoned without on_error (0; its
 * on_done follows). */
DX_API int dx_client_close(dx_client *cl, unsigned code, const char *reason, size_t len);

/* The Location header of the last answer with a 3xx status (the redirect
 * target, as the server wrote it: possibly relative), or NULL. Valid until
 * the next attempt starts; meant for on_error (err DX_EHANDSHAKE, whose
 * `what` names it too). The client does not follow redirects itself. */
DX_API const char *dx_client_location(const dx_client *cl);

/* The open connection, or NULL. Fires no callback (nor does the next). */
DX_API dx_conn *dx_client_conn(const dx_client *cl);

DX_API void dx_client_stats_get(const dx_client *cl, dx_client_stats *out);

/* Frees the client; an open connection is dropped without callbacks and no
 * callback of this client fires after the call returns (a pending DNS
 * answer is ignored). Callable from any of the client's callbacks: the
 * memory is then released once the callback stack has unwound. */
DX_API void dx_client_free(dx_client *cl);

#ifdef __cplusplus
}
#endif

#endif /* DUPLEX_CLIENT_H */
