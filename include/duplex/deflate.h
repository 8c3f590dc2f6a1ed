/*
 * duplex/deflate.h: permessage-deflate (RFC 7692) settings, shared by the
 * server and client endpoints (duplex/server.h, duplex/client.h include it).
 *
 * Off by default in the library: set `enable` in the endpoint's `deflate`
 * options. A client then offers the extension with the parameters below; a
 * server accepts the first acceptable offer a client makes (RFC 7692 §7),
 * declining offers with an unknown, repeated or malformed parameter.
 * docs/deflate.md gives the negotiation table, the memory figures and the
 * policy past mem_budget.
 */
#ifndef DUPLEX_DEFLATE_H
#define DUPLEX_DEFLATE_H

#include "duplex/duplex.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * permessage-deflate settings. Zero means the default in brackets.
 *
 * The four RFC parameters mean, for each role:
 *  server_no_context_takeover  client: offer it (ask the server to reset its
 *                              compressor per message: the client's
 *                              decompressor then holds no state between
 *                              messages); server: always answer with it (the
 *                              server compresses with a per-loop shared
 *                              compressor, reset per message) [0]
 *  client_no_context_takeover  client: offer it (and reset our compressor per
 *                              message); server: always answer with it (the
 *                              client resets per message, so the server's
 *                              decompressor is shared between messages) [0]
 *  server_max_window_bits      8-15. client: offer server_max_window_bits=N;
 *                              server: the largest window the server compresses
 *                              with (the smaller of this and the client's
 *                              offer) [0: client: not offered; server: 15]
 *  client_max_window_bits      8-15. client: offer client_max_window_bits=N
 *                              (0: offered without a value, letting the server
 *                              choose); server: when the client offered the
 *                              parameter, answer with the smaller of this and
 *                              its value (limits the server's decompressor
 *                              memory) [0: client: no value; server: 15]
 * A window of 8 bits cannot be made by zlib's raw deflate: an endpoint that
 * must compress with window 8 sends its messages uncompressed (RSV1 is per
 * message) and still inflates what the peer compresses.
 */
typedef struct dx_deflate_options {
    int enable;                      /* [0] 1: offer (client) / accept (server) permessage-deflate */
    int server_no_context_takeover;  /* see above */
    int client_no_context_takeover;
    unsigned server_max_window_bits; /* 8-15, see above */
    unsigned client_max_window_bits;
    int level;                       /* [1] zlib compression level, 1 (fast) to 9 (small) */
    int mem_level;                   /* [8] zlib memLevel, 1-9: the compressor's hash memory,
                                        1 << (mem_level + 9) bytes */
    size_t min_size;                 /* [64] messages shorter than this go uncompressed;
                                        (size_t)-1: never compress (still inflate) */
    size_t mem_budget;               /* server only: [64 MiB] bytes of zlib memory (compressors and
                                        decompressors) the endpoint may hold; past it new connections
                                        get no_context_takeover both ways, and past it with nothing
                                        shared left to give, no compression (docs/deflate.md) */
} dx_deflate_options;

/*
 * Parses an extension parameter list as it appears in a
 * Sec-WebSocket-Extensions header, e.g. "server_no_context_takeover;
 * client_max_window_bits=10" (an optional leading "permessage-deflate" is
 * skipped; whitespace around ";" and "=" is allowed; "" is no parameter),
 * into *o: the four RFC parameters are set (the others reset to 0) and
 * `enable` is set to 1; level, mem_level, min_size and mem_budget are kept.
 * client_max_window_bits may come without a value (0). Returns 0, or
 * DX_EINVAL (unknown, repeated or malformed parameter, a window outside
 * 8-15; *o unchanged). Fires no callback; any thread.
 */
DX_API int dx_deflate_options_parse(dx_deflate_options *o, const char *params);

/* What a connection negotiated (dx_conn_deflate). Window bits are the
 * values in force: 15 when the response did not name them. */
typedef struct dx_deflate_info {
    int server_no_context_takeover;
    int client_no_context_takeover;
    unsigned server_max_window_bits;
    unsigned client_max_window_bits;
} dx_deflate_info;

/*
 * The handshake's half for applications that do their own (the sans-I/O
 * codec, duplex/codec.h); the server and client endpoints do this
 * themselves. Strings are NUL-terminated; nothing is kept.
 *
 * dx_deflate_client_offer: the Sec-WebSocket-Extensions value a client
 * sends for `o`. Returns its length, DX_EINVAL (a window outside 8-15) or
 * DX_ENOSPC (160 bytes always suffice).
 *
 * dx_deflate_server_accept: `offers` is the request's
 * Sec-WebSocket-Extensions value (several headers joined with ", "). Returns
 * 1 with the value to answer in resp and the parameters in *info when an
 * offer is acceptable under `o` (the first one, RFC 7692 §7), 0 when none
 * is (answer no extension), DX_EEXTENSION when `offers` is malformed (the
 * RFC's answer is 400), DX_ENOSPC (128 bytes always suffice).
 *
 * dx_deflate_client_check: `response` is the server's
 * Sec-WebSocket-Extensions value. Returns 1 with *info set when it accepted
 * the offer made from `o`, 0 when it did not name permessage-deflate (no
 * compression), DX_EEXTENSION when the client must fail the connection
 * (malformed, unknown or repeated parameters, windows it did not allow, an
 * extension named twice: docs/deflate.md).
 */
DX_API int dx_deflate_client_offer(const dx_deflate_options *o, char *out, size_t cap);
DX_API int dx_deflate_server_accept(const dx_deflate_options *o, const char *offers, char *resp, size_t cap,
                                    dx_deflate_info *info);
DX_API int dx_deflate_client_check(const dx_deflate_options *o, const char *response, dx_deflate_info *info);

struct dx_conn;
/* 1 when permessage-deflate was negotiated on `c` (then *out, if not NULL,
 * is filled), 0 when not (or not open yet). Fires no callback; callable
 * from any callback of the loop. */
DX_API int dx_conn_deflate(const struct dx_conn *c, dx_deflate_info *out);

#ifdef __cplusplus
}
#endif

#endif /* DUPLEX_DEFLATE_H */
