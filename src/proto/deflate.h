/*
 * src/proto/deflate.h: permessage-deflate (RFC 7692), sans-I/O over zlib.
 *
 * Two halves:
 *  - negotiation (RFC 7692 §7): the server picks the first acceptable offer
 *    and writes its response; the client writes its offer and checks the
 *    response. Pure string work on the parsed Sec-WebSocket-Extensions
 *    elements of proto/handshake.h.
 *  - compression state. Everything one endpoint's connections share (zlib
 *    settings, the memory account, the shared compressors and the shared
 *    decompressor, counters) is a dx__pmd_ctx, used on one thread only; a
 *    connection that negotiated the extension holds a small dx__pmd with its
 *    parameters and, only when the parameters need one, its own zlib
 *    streams.
 *
 * Memory: every zlib allocation goes through the ctx's seams (so tests can
 * fail any of them) and is counted in ctx->mem. A connection whose peer
 * resets its context per message (peer no_context_takeover) inflates with
 * the ctx's shared decompressor while its message is inside one receive
 * call, and holds its own (a copy) only while a compressed message is split
 * across reads. A connection that resets its own context (our
 * no_context_takeover) compresses with the ctx's shared compressor for its
 * window size, reset after every message. Idle connections in both modes
 * hold no zlib memory. Pure: no I/O, no logging.
 */
#ifndef DX_PROTO_DEFLATE_H
#define DX_PROTO_DEFLATE_H

#include "duplex/deflate.h"
#include "proto/handshake.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DX_PMD_NAME "permessage-deflate"
/* The default zlib settings (docs/deflate.md explains the choice). */
#define DX_PMD_DEFAULT_LEVEL 1
#define DX_PMD_DEFAULT_MEM_LEVEL 8
#define DX_PMD_DEFAULT_MIN_SIZE 64
#define DX_PMD_DEFAULT_MEM_BUDGET ((size_t)64 << 20)
/* Compressed output is cut into frames of at most this many payload bytes
 * (one message, several frames: RSV1 on the first only), so compressing a
 * large message needs no buffer of its size. */
#define DX_PMD_CHUNK (16u * 1024u)

/* The parameters in force on one connection. */
typedef struct dx__pmd_params {
    uint8_t server_nct;  /* server_no_context_takeover */
    uint8_t client_nct;  /* client_no_context_takeover */
    uint8_t server_bits; /* server_max_window_bits in force (8-15; 15 when not named) */
    uint8_t client_bits; /* client_max_window_bits in force */
    uint8_t named;       /* server: DX_PMD_NAME_SBITS / CBITS when the response names them */
} dx__pmd_params;

enum { DX_PMD_NAME_SBITS = 1, DX_PMD_NAME_CBITS = 2 };

/* Room for any response element: the longest, with all four parameters and
 * two-digit windows, is 128 characters plus the NUL. */
#define DX__PMD_RESPONSE_MAX 160

/* ---- negotiation -------------------------------------------------------- */

/*
 * Server side: looks through the client's offers exts[0..n) in order for
 * the first permessage-deflate offer it can accept under `o` (RFC 7692
 * §7: an offer with an unknown parameter, a repeated one or a bad value is
 * declined and the next one is tried). `force_nct`: answer with both
 * no_context_takeover parameters whatever `o` says (the memory budget).
 * Returns 1 with *out set and the response element written to resp
 * (NUL-terminated; DX__PMD_RESPONSE_MAX bytes suffice), 0 when no offer is acceptable (why,
 * if not NULL, gets a static text naming the last reason, NULL when the
 * client offered no permessage-deflate at all).
 */
int dx__pmd_server_accept(const dx_deflate_options *o, const dx_ws_ext_offer *exts, size_t n, bool force_nct,
                          dx__pmd_params *out, char *resp, size_t cap, const char **why);

/* The response element for `p` (what dx__pmd_server_accept wrote; the
 * windows named as p->named says). Returns its length or DX_ENOSPC. */
int dx__pmd_response(const dx__pmd_params *p, char *out, size_t cap);

/* Client side: the offer for `o` (an element of Sec-WebSocket-Extensions,
 * NUL-terminated). Returns its length, DX_EINVAL (a window outside 8-15) or
 * DX_ENOSPC. */
int dx__pmd_client_offer(const dx_deflate_options *o, char *out, size_t cap);

/*
 * Client side: checks the server's accepted element `ext` against what the
 * offer made from `o` allowed (RFC 7692 §7.1): unknown or repeated
 * parameter, a value on a no_context_takeover, a window outside 8-15 or
 * above the one offered, client_max_window_bits when the offer did not
 * allow it, a missing server_no_context_takeover or server_max_window_bits
 * that the offer asked for: DX_EEXTENSION with *why set. Returns 0 with *out
 * set otherwise.
 */
int dx__pmd_client_accept(const dx_deflate_options *o, const dx_ws_ext_offer *ext, dx__pmd_params *out,
                          const char **why);

/* ---- compression state --------------------------------------------------- */

typedef struct dx__pmd_ctx dx__pmd_ctx;
typedef struct dx__pmd dx__pmd;

/* Counters of one ctx (added to dx_server_stats). */
typedef struct dx__pmd_stats {
    uint64_t msgs_out, raw_out, wire_out;
    uint64_t msgs_in, wire_in, raw_in;
} dx__pmd_stats;

/* The endpoint's shared state for `o` (level, mem_level, min_size; zero
 * fields get their defaults). NULL on DX_ENOMEM. */
dx__pmd_ctx *dx__pmd_ctx_new(const dx_seams *seams, const dx_deflate_options *o);
/* Frees the ctx and its shared streams. Every dx__pmd made from it must
 * have been freed. */
void dx__pmd_ctx_free(dx__pmd_ctx *ctx);
/* Bytes zlib holds now for this ctx (own and shared streams). */
size_t dx__pmd_ctx_mem(const dx__pmd_ctx *ctx);
const dx__pmd_stats *dx__pmd_ctx_stats(const dx__pmd_ctx *ctx);
/* Memory reserved by connections that keep a context (dx__pmd_reserve):
 * what they will hold once they have compressed and inflated a message,
 * so that a burst of new connections cannot all pass a budget check made
 * before any of them allocated. */
size_t dx__pmd_ctx_reserved(const dx__pmd_ctx *ctx);
/* zlib's own memory formula (zconf.h) for a compressor with `bits` and
 * `mem_level`, and for a decompressor with `bits`, plus the state structs:
 * what mem_budget decisions count. */
size_t dx__pmd_deflate_cost(unsigned bits, int mem_level);
size_t dx__pmd_inflate_cost(unsigned bits);
/* One receive buffer (the session's, at most DX_PMD_SPARE_MAX bytes) kept
 * by the ctx between messages, so inflating a message costs no allocation
 * once warm: take returns it (or NULL), give keeps `buf` when no buffer is
 * kept yet and returns true (else the caller frees it). Freed with the ctx
 * through its seams. */
#define DX_PMD_SPARE_MAX (64u * 1024u)
void *dx__pmd_spare_take(dx__pmd *pm);
bool dx__pmd_spare_give(dx__pmd *pm, void *buf);

/* The ctx's mem_level (after defaults). */
int dx__pmd_ctx_mem_level(const dx__pmd_ctx *ctx);

/* A connection's state, `role` DX_ROLE_SERVER or DX_ROLE_CLIENT, with the
 * negotiated parameters. Allocates no zlib stream yet. NULL on DX_ENOMEM. */
dx__pmd *dx__pmd_new(dx__pmd_ctx *ctx, int role, const dx__pmd_params *p);
/* Frees the connection's streams (a shared one it holds goes back). NULL ok. */
void dx__pmd_free(dx__pmd *pm);
const dx__pmd_params *dx__pmd_params_of(const dx__pmd *pm);
/* Sets the connection's reserved cost (given back by dx__pmd_free). */
void dx__pmd_reserve(dx__pmd *pm, size_t cost);

/* True when a whole message of `len` bytes is to be sent compressed:
 * len >= min_size and our window is not 8 (zlib cannot make it). */
bool dx__pmd_want_compress(const dx__pmd *pm, size_t len);
/* True when our compressor resets per message (our no_context_takeover):
 * the same compressed bytes serve every such connection with the same
 * window (compress once for broadcasts). Its window bits in *bits. */
bool dx__pmd_tx_stateless(const dx__pmd *pm, unsigned *bits);

/*
 * Compresses one whole message: deflate with Z_SYNC_FLUSH, the trailing
 * 00 00 ff ff removed (§7.2.1), cut into frame payloads of at most
 * DX_PMD_CHUNK bytes, each handed to emit(ud, first, fin, data, len) in
 * order (data borrowed for the call; the last one has fin set, and may be
 * empty). A nonzero return from emit stops and is returned. Returns 0,
 * DX_ENOMEM (zlib or the output buffer), DX_EINTERNAL (zlib refused: a bad
 * setting). After an error the stream is reset: the caller must fail the
 * connection when some frame was already emitted (or the context is kept).
 */
typedef int (*dx__pmd_emit)(void *ud, bool first, bool fin, const uint8_t *data, size_t len);
int dx__pmd_compress(dx__pmd *pm, const uint8_t *in, size_t len, dx__pmd_emit emit, void *ud);

/* Compresses `len` bytes with the ctx's shared compressor for `bits`
 * (no context kept) into a buffer from `alloc(ud, size)`, the tail removed:
 * for building a message's compressed frame once. Returns the compressed
 * length (the buffer in *out, from alloc) or a negative DX_E... code. */
int dx__pmd_compress_once(dx__pmd_ctx *ctx, unsigned bits, const uint8_t *in, size_t len, size_t hdr_room,
                          void *(*alloc)(void *ud, size_t size), void *ud, uint8_t **out, size_t *out_len);

/*
 * Receiving. dx__pmd_rx_begin starts a compressed message (first frame had
 * RSV1); dx__pmd_inflate feeds payload bytes (`last`: the message's final
 * bytes; the 00 00 ff ff tail is appended, §7.2.2) and writes inflated bytes
 * through out(ud, data, len) (borrowed; a nonzero return stops and is
 * returned: the limit check is the caller's, so it happens while inflating,
 * never after). Output comes in pieces of at most `chunk` bytes, so a bomb
 * costs at most the caller's limit plus one chunk. Returns 0, DX_EPROTO (not
 * a valid deflate stream), DX_ENOMEM (zlib), or out's code.
 * dx__pmd_rx_end ends the message (the shared decompressor is given back or
 * the context kept); dx__pmd_rx_park is called at the end of every receive
 * call: a message still open on the shared decompressor moves to a stream
 * of its own (inflateCopy), so the shared one serves others meanwhile.
 * DX_ENOMEM from park: the connection must fail (1011).
 */
typedef int (*dx__pmd_out)(void *ud, const uint8_t *data, size_t len);
int dx__pmd_rx_begin(dx__pmd *pm);
int dx__pmd_inflate(dx__pmd *pm, const uint8_t *in, size_t len, bool last, dx__pmd_out out, void *ud);
void dx__pmd_rx_end(dx__pmd *pm);
int dx__pmd_rx_park(dx__pmd *pm, bool failed);

#endif
