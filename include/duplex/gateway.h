/*
 * duplex/gateway.h: the pub/sub gateway (GATEWAY.md, docs/gateway.md) on
 * top of the server: topics, the raw and JSON dialects on /ws, SSE on /sse,
 * the HTTP API (/api/...), /metrics, /healthz, /echo, presence, history and
 * resume, across N worker threads, each with its own loop and server.
 *
 * Use (cmd/duplex/serve.c does exactly this):
 *   gw = dx_gateway_new(&opt, nworkers, &err);          any thread
 *   for each worker i, on any thread before its loop runs:
 *       dx_gateway_server_options(gw, i, &server_opt);  fills callbacks and ud
 *       srv = dx_server_new(loop_i, &server_opt, &err);
 *       dx_gateway_attach(gw, i, loop_i, srv);
 *   run the loops; to stop: on each worker's thread dx_gateway_shutdown(gw, i)
 *   (gateway connections get 1012, SSE streams end), then dx_server_shutdown
 *   (the rest: 1001); after every loop returned: dx_gateway_free(gw), then
 *   the servers, then the loops.
 */
#ifndef DUPLEX_GATEWAY_H
#define DUPLEX_GATEWAY_H

#include "duplex/duplex.h"
#include "duplex/loop.h"
#include "duplex/server.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dx_gateway dx_gateway;

enum dx_gateway_slow_policy {
    DX_GW_SLOW_DISCONNECT = 0, /* close 1013 (default) */
    DX_GW_SLOW_DROP_OLDEST = 1 /* JSON dialect: drop the oldest undelivered, then send `gap`; raw and SSE: disconnect */
};

/* Log sink: the gateway's own lines (handshakes refused, slow consumers,
 * API errors) go through it. NULL: nothing logged. */
typedef void (*dx_gateway_log_fn)(void *ud, int level, const char *msg);

/* Settings; zero means the default in brackets. Grows only at its end. */
typedef struct dx_gateway_options {
    const char *api_key;          /* Bearer key for /api/...; NULL: those answer 403 */
    size_t history_count;         /* [1000] retained messages per topic; (size_t)-1: none */
    uint64_t history_age_ms;      /* [600000] retained for at most; UINT64_MAX: no age bound */
    int slow_policy;              /* [DX_GW_SLOW_DISCONNECT] */
    size_t sub_queue;             /* [1 MiB] queued bytes past which a subscriber is slow */
    size_t max_subs;              /* [100] subscriptions per connection → err 4413 */
    size_t max_message;           /* [1 MiB] the server's max_message (API bodies, JSON requests) */
    unsigned sse_heartbeat_ms;    /* [15000] comment line on an idle SSE stream */
    unsigned max_inflight;        /* [256] publishes per connection awaiting sequencing before
                                     its reading pauses */
    int demo;                     /* publish on demo.ticker every demo_interval_ms */
    unsigned demo_interval_ms;    /* [1000] */
    dx_gateway_log_fn log;
    void *log_ud;
} dx_gateway_options;

#define dx_gateway_new(opt, workers, err) dx_gateway_new_sized((opt), sizeof(dx_gateway_options), (workers), (err))
DX_API dx_gateway *dx_gateway_new_sized(const dx_gateway_options *opt, size_t opt_size, unsigned workers,
                                        int *err);

/* Sets so->cb, so->ud (and the gateway's needs, e.g. max_message) for worker i's server. */
DX_API int dx_gateway_server_options(dx_gateway *gw, unsigned i, dx_server_options *so);

/* Worker i runs on `loop` with server `srv`. Before the loop runs. */
DX_API int dx_gateway_attach(dx_gateway *gw, unsigned i, dx_loop *loop, dx_server *srv);

/* On worker i's thread: closes its gateway connections with 1012 and ends
 * its SSE streams; stops the demo publisher. Returns the connections left. */
DX_API size_t dx_gateway_shutdown(dx_gateway *gw, unsigned i);

/* After every worker loop has returned. */
DX_API void dx_gateway_free(dx_gateway *gw);

#ifdef __cplusplus
}
#endif

#endif
