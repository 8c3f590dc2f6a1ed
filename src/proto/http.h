/*
 * src/proto/http.h: HTTP/1.1 head parser (request and response) and the few
 * helpers the WebSocket opening handshake needs (RFC 9110, RFC 9112).
 *
 * Two ways in, one grammar. The stateless calls (dx__http_parse_request,
 * _response) read a whole buffer and fill a caller-provided header array
 * whose entries point into that buffer. The incremental one (dx_http_head,
 * dx__http_head_feed) keeps its position and a few offsets between calls, so
 * a head that arrives in many pieces is examined once in total; it says
 * where the head ends (or why it is refused), and the caller then runs the
 * stateless parse once to get the fields. Nothing is allocated. The result
 * depends only on the bytes given: any prefix of a valid head gives
 * DX_EAGAIN, and the whole head gives the same answer as any longer buffer
 * (bytes after the blank line are never read).
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
#include <stdint.h>
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
 * Incremental head parser state (request or response). Holds offsets only,
 * so the buffer may be moved (grown) between calls; about 48 bytes.
 */
typedef struct dx_http_head {
    uint32_t pos;                   /* bytes examined; where the next call resumes */
    uint32_t ms, me, ts, te;        /* method / target (request) or reason (response) */
    uint32_t ns, ne, vs, ve;        /* the header line being read */
    uint32_t n_headers;
    uint16_t status;
    uint8_t state, sub, minor, response;
    int err;                        /* the error once one was found */
    uint64_t examined;              /* bytes looked at in total (tests count the work) */
} dx_http_head;

void dx__http_head_init(dx_http_head *h, bool response);

/*
 * Feeds the head gathered so far: buf[0..len) holds every byte received
 * (the same bytes as before, plus new ones at the end; buf itself may have
 * moved). Examines only buf[h->pos .. min(len, max_head)). Results as
 * dx__http_parse_request: the head's length once complete (then parse
 * buf[0..length) with the stateless call for the fields, which gives the
 * same verdict), DX_EAGAIN, DX_EHEADTOOBIG, DX_ETOOMANYHEADERS, DX_EHTTP.
 * A verdict other than DX_EAGAIN is final: later calls repeat it.
 */
int dx__http_head_feed(dx_http_head *h, const char *buf, size_t len, size_t max_headers, size_t max_head);

/*
 * Chunked transfer coding decoder (RFC 9112 §7.1), sans-I/O, O(1) state.
 * Accepts chunk extensions (checked for control characters, not
 * interpreted) and a trailer section (field lines, checked, discarded).
 * Strict where smuggling lives: line ends must be CRLF, chunk-size is
 * 1*HEXDIG (no sign, no "0x", at most 2^58), BWS only before ';'. A size
 * line or a trailer line longer than DX_HTTP_CHUNK_LINE_MAX is refused.
 */
#define DX_HTTP_CHUNK_LINE_MAX 4096

typedef struct dx_http_chunked {
    uint64_t size;     /* data bytes left in the current chunk (or being summed) */
    uint64_t overhead; /* framing bytes consumed (everything but data) */
    size_t line;       /* bytes of the current size or trailer line */
    uint8_t state;
} dx_http_chunked;

void dx__http_chunked_init(dx_http_chunked *d);

/* Data bytes still to come in the current chunk once its size line is
 * complete (0 otherwise): lets a caller refuse a chunk over its cap before
 * the data arrives, with the same verdict for any split. */
uint64_t dx__http_chunked_left(const dx_http_chunked *d);

/*
 * Decodes from in[0, len): consumes framing bytes and stops after at most
 * one run of chunk data, which it returns as *data and *data_len (a span of
 * `in`, possibly empty). *used gets the bytes consumed. Returns 0 (call
 * again with in + *used, or with more input once *used == len), 1 (the
 * message ended: the final CRLF was at in[*used - 1]; later calls return 1
 * with nothing used) or DX_EHTTP (malformed; final). Any split of the same
 * stream gives the same data and the same verdict.
 */
int dx__http_chunked_step(dx_http_chunked *d, const uint8_t *in, size_t len, size_t *used, const uint8_t **data,
                          size_t *data_len);

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
