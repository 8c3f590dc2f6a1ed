/*
 * src/proto/handshake.h: the WebSocket opening handshake (RFC 6455 §4),
 * both sides, sans-I/O: checks parsed HTTP heads (proto/http.h) and builds
 * the bytes to send. Nothing here allocates (OpenSSL's SHA-1 aside), reads a
 * socket or logs. docs/handshake.md lists every rule and its HTTP status.
 *
 * Pointers in the structs below borrow the buffer the head was parsed from;
 * they stay valid as long as that buffer and the header array do.
 */
#ifndef DX_PROTO_HANDSHAKE_H
#define DX_PROTO_HANDSHAKE_H

#include <stdbool.h>
#include <stddef.h>

#include "duplex/duplex.h"
#include "proto/http.h"

/* RFC 6455 §1.3 */
#define DX_WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* Parameters of one extension offer, at most this many; more → DX_EEXTENSION. */
#define DX_WS_EXT_PARAMS_MAX 8
/* A sensible size for the caller's offer array (DX_EEXTENSION beyond it). */
#define DX_WS_DEFAULT_MAX_EXTS 16

/* `p2=value` or `p3="quoted"`: value points inside the quotes (the unquoted
 * text must be a token, RFC 6455 §9.1, so no escapes are needed); value is
 * NULL when the parameter has no "=". */
typedef struct dx_ws_ext_param {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} dx_ws_ext_param;

/* One element of a Sec-WebSocket-Extensions list: `name; p1; p2=v`. */
typedef struct dx_ws_ext_offer {
    const char *name;
    size_t name_len;
    dx_ws_ext_param params[DX_WS_EXT_PARAMS_MAX];
    size_t n_params;
} dx_ws_ext_offer;

/*
 * Parses one Sec-WebSocket-Extensions value (RFC 6455 §9.1) and appends its
 * offers to exts[*n..max). OWS is allowed around ";", "=" and ",", empty list
 * elements are skipped. Returns 0, or DX_EEXTENSION when the value is
 * malformed, an offer has more than DX_WS_EXT_PARAMS_MAX params, a quoted
 * value is not a token, or the offers do not fit in `max`. Entries borrow
 * `value`.
 */
int dx__ws_ext_parse(const char *value, size_t len, dx_ws_ext_offer *exts, size_t max, size_t *n);

/* What a valid upgrade request carries; pointers into the request buffer. */
typedef struct dx_ws_request {
    const char *path;   /* target up to '?' (starts with "/") */
    size_t path_len;
    const char *query;  /* after '?', NULL when there is no '?' */
    size_t query_len;
    const char *host;
    size_t host_len;
    const char *origin; /* NULL when absent */
    size_t origin_len;
    const char *key;    /* Sec-WebSocket-Key as sent (24 chars) */
    size_t key_len;
    const dx_http_header *headers;
    size_t n_headers;
    dx_ws_ext_offer *exts; /* the caller's array: offers of every
                              Sec-WebSocket-Extensions header, in order */
    size_t n_exts;
} dx_ws_request;

/*
 * Server side, RFC 6455 §4.2.1: checks that `req` is a valid opening
 * handshake and fills *out (borrowing req's buffers and `exts`, room for
 * max_exts offers). Checks in this order; the first failure is returned:
 *   method not GET                                     DX_EMETHOD    (405)
 *   HTTP/1.0, or a target not in origin-form ("/...")  DX_EHANDSHAKE (400)
 *   Host missing, empty or repeated                    DX_EHANDSHAKE (400)
 *   Upgrade lacks "websocket", Connection lacks
 *   "upgrade" (case-insensitive list elements)         DX_EHANDSHAKE (400)
 *   Sec-WebSocket-Version missing, repeated or not 13  DX_EVERSION   (426)
 *   Sec-WebSocket-Key missing, repeated or not the
 *   base64 of 16 bytes (24 chars, "==" padding)        DX_EHANDSHAKE (400)
 *   Origin repeated                                    DX_EHANDSHAKE (400)
 *   a Sec-WebSocket-Protocol element not a token       DX_EHANDSHAKE (400)
 *   Sec-WebSocket-Extensions malformed, or more than
 *   max_exts offers                                    DX_EEXTENSION (400)
 * dx_http_status_for_error() gives the status, dx__ws_error_headers() the
 * headers the error response must carry.
 */
int dx__ws_server_check(const dx_http_request *req, dx_ws_request *out, dx_ws_ext_offer *exts, size_t max_exts);

/* Extra headers for dx__http_error_response() after a failed server check:
 * DX_EVERSION → "Upgrade: websocket" and "Sec-WebSocket-Version: 13"
 * (RFC 6455 §4.2.2, RFC 9110 §15.5.22); DX_EMETHOD → "Allow: GET"; else "". */
const char *dx__ws_error_headers(int err);

/* Iterates every protocol offered, across all Sec-WebSocket-Protocol
 * headers, in order. Items borrow the request buffer. */
typedef dx_http_list_iter dx_ws_protocol_iter;
void dx__ws_protocol_iter_init(dx_ws_protocol_iter *it, const dx_ws_request *r);
bool dx__ws_protocol_next(dx_ws_protocol_iter *it, const char **name, size_t *len);

/* True when the client offered subprotocol [name, name+len) (exact,
 * case-sensitive comparison, as browsers do). */
bool dx__ws_protocol_offered(const dx_ws_request *r, const char *name, size_t len);

/*
 * out = base64(SHA-1(key + DX_WS_GUID)), NUL-terminated (28 chars), RFC 6455
 * §4.2.2 item 5.4. key_len at most 64 (DX_EINVAL beyond). Returns 0, or
 * DX_EINTERNAL if OpenSSL fails.
 */
int dx__ws_accept_key(const char *key, size_t key_len, char out[29]);

/*
 * Writes the 101 response (RFC 6455 §4.2.2 item 5) for a request accepted by
 * dx__ws_server_check: status line, Upgrade: websocket, Connection: Upgrade,
 * Sec-WebSocket-Accept, then Sec-WebSocket-Protocol when protocol != NULL,
 * Sec-WebSocket-Extensions when extensions != NULL, then extra_headers
 * (NULL or complete "name: value\r\n" lines) and the blank line. A NUL
 * follows. Strings are the caller's, read during the call only.
 * Returns the length, DX_ENOSPC when cap is too small, DX_EINVAL when
 * protocol was not offered, extensions is not a non-empty §9.1 extension
 * list (a CTL such as CR or LF is never valid), extra_headers is not a valid header block, or r->key is not a
 * key; DX_EINTERNAL if OpenSSL fails.
 */
int dx__ws_server_response(char *out, size_t cap, const dx_ws_request *r, const char *protocol,
                           const char *extensions, const char *extra_headers);

/* Client options; strings are the caller's, read during each call only. */
typedef struct dx_ws_client_opts {
    const char *host;  /* name, IPv4, or IPv6 literal (brackets optional,
                          zone "%25eth0" allowed); no port */
    unsigned port;     /* 0: the default (80 ws, 443 wss) */
    bool tls;          /* wss */
    const char *path;  /* "/..." incl. query, no fragment; NULL → "/" */
    const char *const *protocols; /* offered subprotocols, tokens, unique */
    size_t n_protocols;
    const char *extensions; /* raw Sec-WebSocket-Extensions value or NULL */
    const char *origin;     /* NULL: no Origin header */
    const dx_http_header *headers; /* extra headers */
    size_t n_headers;
} dx_ws_client_opts;

/*
 * Client side, RFC 6455 §4.1: writes the GET upgrade request to out[0..cap)
 * (NUL-terminated) and the Sec-WebSocket-Key it sent to key_out (24 chars +
 * NUL): 16 bytes from dx__random(seams) (NULL seams: the default),
 * base64-encoded. Host is "host[:port]", the port only when it is not the
 * scheme's default, IPv6 literals in brackets.
 * Returns the length, or DX_ENOSPC (cap too small), DX_ERANDOM (the random
 * seam failed), DX_EINTERNAL (OpenSSL failed), or DX_EINVAL when:
 *  - host is NULL or empty, has a CTL, SP, non-ASCII or one of "/?#@", or
 *    has ':' or brackets without being an IPv6 literal ("name:port" is
 *    refused: the port goes in `port`); port > 65535;
 *  - path does not start with "/" or has SP, CTL, non-ASCII or "#";
 *  - a protocol is not a token or is repeated;
 *  - extensions is not a non-empty §9.1 extension list; origin has a CTL;
 *  - an extra header name is not a token or is one the handshake sets
 *    (Host, Upgrade, Connection, Origin, Sec-WebSocket-*), or its value has
 *    a CTL other than HTAB.
 */
int dx__ws_client_request(char *out, size_t cap, const dx_ws_client_opts *o, const dx_seams *seams,
                          char key_out[25]);

/*
 * Client side, RFC 6455 §4.1 (the server's response): checks `resp` against
 * the request made with key `key` (24 chars) and options `o`.
 *   status not 101, or HTTP/1.0                                 DX_EHANDSHAKE
 *   Upgrade missing or an element other than "websocket"        DX_EHANDSHAKE
 *   Connection lacks "upgrade"                                  DX_EHANDSHAKE
 *   Sec-WebSocket-Accept missing, repeated or not the expected   DX_EHANDSHAKE
 *   Sec-WebSocket-Protocol when none was offered, not exactly
 *   one element, repeated, or not one of o->protocols           DX_EHANDSHAKE
 *   Sec-WebSocket-Extensions malformed, more than max_exts,
 *   an extension not offered by name in o->extensions, or
 *   the same extension twice                                   DX_EEXTENSION
 * On success *protocol and *protocol_len is the chosen subprotocol (NULL/0 when
 * none; borrows resp's buffer) and exts[0..*n_exts) the accepted extensions
 * (borrowing resp's buffer). DX_EINTERNAL if OpenSSL fails.
 */
int dx__ws_client_check(const dx_http_response *resp, const char key[24], const dx_ws_client_opts *o,
                        const char **protocol, size_t *protocol_len, dx_ws_ext_offer *exts, size_t max_exts,
                        size_t *n_exts);

#endif
