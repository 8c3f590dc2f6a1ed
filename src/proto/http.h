/*
 * src/proto/http.h: HTTP/1.1 head parser (request and response) and the few
 * helpers the WebSocket opening handshake needs (RFC 9110, RFC 9112).
 *
 * Zero-copy and stateless: a parse call reads the whole buffer from its
 * start and fills a caller-provided header array whose entries point into
 * the caller's buffer. Nothing is allocated and nothing is kept between
 * calls, so the result depends only on the bytes given: any prefix of a
 * valid head gives DX_EAGAIN, and the whole head gives the same answer as
 * any longer buffer (bytes after the blank line are never read).
 *
 * What is accepted (strict where RFC 9112 lets us choose):
 *  - request-line "method SP request-target SP HTTP/1.x", single spaces;
 *    method a token; target visible ASCII (0x21-0x7E); x a digit. Empty
 *    lines before the request-line are skipped (RFC 9112 §2.2).
 *  - status-line "HTTP/1.x SP 3DIGIT SP reason"; the SP before an empty
 *    reason may be missing (seen in the wild).
 *  - header lines "name:" OWS value OWS; name a token with no space before
 *    the colon (RFC 9112 §5.1); value HTAB, SP, VCHAR or obs-text, trimmed.
 *  - lines end in CRLF or a bare LF (RFC 9112 §2.2); a bare CR is an error.
 *  - obs-fold (a line starting with SP or HTAB) is an error (§5.2).
 * Sizes: the head, through its blank line, must fit in max_head bytes; once
 * max_head bytes are present without a complete valid head the answer is
 * DX_EHEADTOOBIG (unless an earlier byte is already malformed: DX_EHTTP), so
 * DX_EAGAIN is never returned for len >= max_head.
 */
#ifndef DX_PROTO_HTTP_H
#define DX_PROTO_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "duplex/duplex.h"

#define DX_HTTP_DEFAULT_MAX_HEAD 8192
#define DX_HTTP_DEFAULT_MAX_HEADERS 64

/* One header line. Pointers into the parsed buffer; value is OWS-trimmed and
 * may be empty (value_len 0, value still points into the buffer). */
typedef struct dx_http_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} dx_http_header;

typedef struct dx_http_request {
    const char *method;
    size_t method_len;
    const char *target;
    size_t target_len;
    int minor_version;       /* x of HTTP/1.x */
    dx_http_header *headers; /* the caller's array */
    size_t n_headers;
} dx_http_request;

typedef struct dx_http_response {
    int minor_version;
    int status; /* 100-999 */
    const char *reason;
    size_t reason_len;
    dx_http_header *headers;
    size_t n_headers;
} dx_http_response;

/*
 * Parses a request head at buf[0..len).
 * `headers` has room for `max_headers` entries (may be NULL when 0);
 * max_head is the byte limit of the head (0: DX_HTTP_DEFAULT_MAX_HEAD).
 * Returns the length of the head through its blank line (> 0) and fills
 * *req, whose pointers borrow `buf` (and `headers`) for as long as the
 * caller keeps them; or
 *   DX_EAGAIN           incomplete, len < max_head (not an error);
 *   DX_EHEADTOOBIG      no complete head within max_head bytes (→ 431);
 *   DX_ETOOMANYHEADERS  more than max_headers header lines (→ 431);
 *   DX_EHTTP            malformed (→ 400).
 * On anything but success *req is unspecified.
 */
int dx__http_parse_request(const char *buf, size_t len, dx_http_request *req,
                           dx_http_header *headers, size_t max_headers, size_t max_head);

/* Same for a response head; fills *resp. Same results. */
int dx__http_parse_response(const char *buf, size_t len, dx_http_response *resp,
                            dx_http_header *headers, size_t max_headers, size_t max_head);

/*
 * The HTTP status a server answers when a head or handshake fails with err:
 * DX_EHTTP, DX_EHANDSHAKE, DX_EEXTENSION → 400; DX_EMETHOD → 405;
 * DX_EVERSION → 426; DX_EHEADTOOBIG, DX_ETOOMANYHEADERS → 431;
 * DX_OK and DX_EAGAIN → 0 (no answer yet); anything else → 500.
 */
int dx_http_status_for_error(int err);

/* The reason phrase of `status` ("Bad Request"); "Unknown" for others. */
const char *dx_http_status_text(int status);

/* The first header named `name` (ASCII case-insensitive), or NULL. */
const dx_http_header *dx__http_find(const dx_http_header *h, size_t n, const char *name);

/* How many headers are named `name` (ASCII case-insensitive). */
size_t dx__http_count(const dx_http_header *h, size_t n, const char *name);

/*
 * Iterates a comma-separated list (RFC 9110 §5.6.1) in [*cursor, end):
 * skips empty elements and OWS, stores the next element (OWS-trimmed,
 * never empty) in *item and *item_len and advances *cursor. Commas inside a
 * quoted-string do not split. Returns false when no element is left.
 */
bool dx__http_list_next(const char **cursor, const char *end, const char **item, size_t *item_len);

/* True when the list `value` has an element equal to `token` (ASCII
 * case-insensitive). */
bool dx__http_list_has(const char *value, size_t len, const char *token);

/* Iterates the elements of every header named `name`, in order, as one list
 * (RFC 9110 §5.3: repeated field lines combine into one comma list).
 * Borrowed pointers; the iterator is a plain value, no cleanup. */
typedef struct dx_http_list_iter {
    const dx_http_header *h;
    size_t n;
    const char *name;
    size_t i;
    const char *cur, *end;
} dx_http_list_iter;

void dx__http_list_iter_init(dx_http_list_iter *it, const dx_http_header *h, size_t n, const char *name);
bool dx__http_list_iter_next(dx_http_list_iter *it, const char **item, size_t *item_len);

/* True when any header named `name` has the list element `token` (both
 * compared ASCII case-insensitively). */
bool dx__http_headers_have(const dx_http_header *h, size_t n, const char *name, const char *token);

/* Character classes (RFC 9110 §5.6.2, §5.5). */
bool dx__http_is_tchar(unsigned char c);
/* True when [s, s+len) is a non-empty token. */
bool dx__http_is_token(const char *s, size_t len);
/* True when [s, s+len) may be a field value: HTAB, SP, VCHAR, obs-text. */
bool dx__http_is_field_value(const char *s, size_t len);

/* ASCII case-insensitive comparison of [a, a+len) with the string b. */
bool dx__http_eq_ci(const char *a, size_t len, const char *b);

/*
 * True when `block` is "" or a sequence of complete header lines, each
 * "name: value\r\n" with a token name and a valid field value: the check a
 * builder makes on caller-supplied extra headers so they cannot inject a
 * blank line, a bare CR or LF, or a malformed header.
 */
bool dx__http_valid_header_block(const char *block);

/*
 * Writes a complete error response to out[0..cap): status line, Content-Type:
 * text/plain, Content-Length, Connection: close ("Upgrade, close" for 426,
 * which must carry an Upgrade header: RFC 9110 §15.5.22, §7.8), then
 * extra_headers (NULL or a dx__http_valid_header_block, e.g.
 * "Sec-WebSocket-Version: 13\r\n"), the blank line and a one-line body
 * (NULL: the status text) followed by "\n". A NUL follows the response.
 * Returns its length (without the NUL), DX_ENOSPC when cap is too small,
 * DX_EINVAL when status is not 100-999, extra_headers is not a valid block
 * or body contains a CR or LF.
 */
int dx__http_error_response(char *out, size_t cap, int status, const char *extra_headers, const char *body);

/*
 * A bounded output writer for the builders in src/proto: appends stop
 * writing once the capacity is reached and remember it, so a builder
 * appends everything and checks once (dx__http_out_finish).
 */
typedef struct dx_http_out {
    char *p;
    size_t cap, len;
    bool over;
} dx_http_out;

static inline void dx__http_out_init(dx_http_out *o, char *p, size_t cap)
{
    o->p = p;
    o->cap = cap;
    o->len = 0;
    o->over = false;
}

static inline void dx__http_out_mem(dx_http_out *o, const char *s, size_t len)
{
    if (o->over || len > o->cap - o->len) {
        o->over = true;
        return;
    }
    if (len)
        memcpy(o->p + o->len, s, len);
    o->len += len;
}

static inline void dx__http_out_str(dx_http_out *o, const char *s) { dx__http_out_mem(o, s, strlen(s)); }

/* NUL-terminates and returns the length, or DX_ENOSPC if anything (the NUL
 * included) did not fit. */
static inline int dx__http_out_finish(dx_http_out *o)
{
    if (o->over || o->len >= o->cap || o->len > 0x7FFFFFFF)
        return DX_ENOSPC;
    o->p[o->len] = '\0';
    return (int)o->len;
}

#endif
