/*
 * src/gateway/dialect.h: the JSON dialect (subprotocol duplex.v1) and the SSE
 * framing of the gateway, sans-I/O (GATEWAY.md "JSON dialect", "SSE").
 *
 * Three parts, none of which touches a socket, a loop or a clock:
 *  - the request parser: one client text frame (one JSON object) into a
 *    dx__gw_req, with jansson (json_loadb, JSON_REJECT_DUPLICATES), behind a
 *    size bound (the caller's) and a nesting bound (DX__GW_JSON_MAX_DEPTH,
 *    checked by a pre-scan before jansson sees the bytes);
 *  - the encoders of server frames (msg, ack variants, err, gap) and of the
 *    SSE event and its id, hand-written into a dx_buf (see dialect.c for why);
 *  - the parser of SSE positions (Last-Event-ID, ?since=).
 *
 * Nothing here keeps state between calls or fires a callback: every function
 * may be called from any thread and from any callback.
 *
 * Allocation: the parser's own memory (decoded b64, compact JSON text) and
 * every encoder's output go through the seams. jansson's internal
 * allocations stay on malloc: json_set_alloc_funcs is process-global and the
 * gateway parses on several worker threads at once, so it cannot be pointed
 * at per-object seams safely; a failed jansson allocation is reported as
 * DX_ENOMEM by the parser all the same.
 */
#ifndef DX_GATEWAY_DIALECT_H
#define DX_GATEWAY_DIALECT_H

#include "core/buf.h"
#include "duplex/duplex.h"
#include "gateway/kind.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Integers on the wire (id, offset, count) are below 2^53 so that every
 * JavaScript client reads them exactly. */
#define DX__GW_JSON_MAX_INT ((UINT64_C(1) << 53) - 1)
/* Deepest nesting of arrays/objects accepted in a request (the request
 * object itself is level 1, so a pub's data may nest 62 more levels). */
#define DX__GW_JSON_MAX_DEPTH 64
/* Request size bound when the caller passes max_len 0: a 1 MiB message as
 * base64 (4/3) plus the envelope. */
#define DX__GW_JSON_DEFAULT_MAX_LEN ((size_t)1 << 21)

/* The err codes of GATEWAY.md. */
enum dx__gw_code {
    DX__GW_E_MALFORMED = 4400,
    DX__GW_E_UNAUTH = 4401,
    DX__GW_E_FORBIDDEN = 4403,
    DX__GW_E_UNKNOWN_OP = 4404,
    DX__GW_E_TOOBIG = 4413,
    DX__GW_E_RATE = 4429,
    DX__GW_E_UNAVAILABLE = 4503
};

enum dx__gw_op { DX__GW_OP_SUB = 1, DX__GW_OP_UNSUB, DX__GW_OP_PUB, DX__GW_OP_PRESENCE, DX__GW_OP_REFRESH };


/*
 * One parsed request. Every pointer borrows from the request itself (from
 * jansson's tree or from `payload_buf`) and is valid until dx__gw_req_free;
 * the input bytes may be reused as soon as dx__gw_req_parse returns.
 * Strings are not NUL-terminated for the caller's purposes: use the lengths
 * (a JSON string may contain \u0000).
 */
typedef struct dx__gw_req {
    enum dx__gw_op op;
    bool has_id;                /* the request carried a valid id */
    uint64_t id;                /* 0..2^53-1 when has_id */
    const char *topic;          /* sub/unsub/pub/presence: a JSON string, not */
    size_t topic_len;           /*  yet checked as a topic name (caller's job) */
    bool has_since;             /* sub: a `since` object was given */
    uint64_t since_offset;      /* 0..2^53-1 */
    const char *since_epoch;    /* any JSON string; NULL when absent (the current epoch) */
    size_t since_epoch_len;
    enum dx__gw_kind kind;      /* pub only */
    const uint8_t *payload;     /* pub: text: the string (UTF-8); json: the value's
                                 * compact JSON text; binary: the decoded bytes.
                                 * May be NULL when payload_len is 0. */
    size_t payload_len;
    const char *token;          /* refresh: the JWT, unchecked */
    size_t token_len;
    /* private */
    void *root_;                /* json_t * */
    dx_buf payload_buf_;
} dx__gw_req;

/* Why a request was refused: the err code to answer with, a short static
 * reason (NUL-terminated, ASCII, for the err frame and the log), and the
 * request's id when one could be recovered (has_id) so the err echoes it. */
typedef struct dx__gw_req_err {
    int code;                   /* enum dx__gw_code */
    const char *reason;
    bool has_id;
    uint64_t id;
} dx__gw_req_err;

/*
 * Parses one client frame of `len` bytes into *req (which the caller
 * provides, uninitialised). Rules (GATEWAY.md "JSON dialect"):
 *  - bigger than max_len (0: DX__GW_JSON_DEFAULT_MAX_LEN) → 4413;
 *  - not one JSON object, bad JSON, a duplicate key, nesting deeper than
 *    DX__GW_JSON_MAX_DEPTH → 4400;
 *  - `id` present but not an integer in 0..2^53-1 (a float such as 1.0, a
 *    string, negative, too big) → 4400 (and no id is echoed);
 *  - `op` missing or not a string → 4400; an unknown op → 4404;
 *  - sub/unsub/pub/presence: `topic` missing or not a string → 4400;
 *    sub: `since`, when present, must be {"offset": integer 0..2^53-1,
 *    "epoch": string}, else 4400; `epoch` may be absent (an extension:
 *    the current epoch is assumed, as in the raw dialect);
 *  - pub: exactly one of `data` (a string → text; any other JSON value,
 *    null included → json, kept as its compact JSON text) and `b64` (a
 *    string of strict RFC 4648 §4 base64: padded, no whitespace, zero
 *    unused bits → binary), else 4400;
 *  - refresh: `token` missing or not a string → 4400.
 * Members not named here are ignored (room for compatible extensions).
 *
 * Returns 0 with *req filled (free it with dx__gw_req_free); DX_EPROTO with
 * *err filled (nothing to free; *req is reset so freeing it is harmless); or
 * DX_ENOMEM (through the seams or inside jansson; *req reset, *err filled
 * with 4503 so the caller may still answer). `seams` NULL: default.
 * O(len). Callable from any thread, from any callback.
 */
int dx__gw_req_parse(const dx_seams *seams, const uint8_t *p, size_t len, size_t max_len,
                     dx__gw_req *req, dx__gw_req_err *err);

/* Releases what a parse kept; *req is reset. Safe on a reset request. */
void dx__gw_req_free(dx__gw_req *req);

/*
 * Encoders. Each appends one complete JSON object (no newline) to `out`,
 * growing it through its seams up to `max` total readable bytes (0: no
 * bound), and returns 0, DX_ENOMEM, DX_ELIMIT (would pass `max`), DX_EINVAL
 * (an integer above 2^53-1, a NULL pointer with a non-zero length) or
 * DX_EUTF8 (a string argument that is not valid UTF-8: nothing invalid is
 * ever produced). On failure `out` holds what it held before. Strings are
 * escaped as RFC 8259 §7 requires ("\\", "\"", and every byte below 0x20,
 * as \b \f \n \r \t or \u00XX); valid UTF-8 passes through unchanged.
 * `id` < 0 means "no id member". Each is O(size of the output); one
 * reservation, so at most one allocation. Field order is fixed as listed.
 */

/* {"op":"msg","topic":T,"offset":N,"epoch":E,"data"|"b64":…[,"pattern":P]}
 * kind json: `payload` must be valid JSON text (the caller's invariant: the
 * parser and the HTTP API check it); it is copied verbatim except that raw
 * CR and LF (whitespace outside strings, as valid JSON has them nowhere
 * else) become spaces, so the object is always one line (SSE needs it).
 * kind text: payload must be UTF-8, sent as a JSON string. kind binary:
 * payload as "b64" (padded base64). pattern NULL: no pattern member. */
int dx__gw_msg_encode(dx_buf *out, size_t max, const char *topic, size_t topic_len,
                      uint64_t offset, const char *epoch, size_t epoch_len,
                      enum dx__gw_kind kind, const uint8_t *payload, size_t payload_len,
                      const char *pattern, size_t pattern_len);

/* The same msg into caller-provided memory, e.g. a dx_rcbuf_alloc'd buffer
 * shared by every subscriber, without an intermediate copy: measures (and
 * validates) the arguments, sets *len to the exact size, and writes the
 * bytes to dst when they fit in cap; else DX_ENOSPC and nothing is written
 * (dst may be NULL with cap 0 to ask for the size only). Other errors as
 * dx__gw_msg_encode. Never allocates. O(output) per call. */
int dx__gw_msg_encode_to(uint8_t *dst, size_t cap, size_t *len, const char *topic, size_t topic_len,
                         uint64_t offset, const char *epoch, size_t epoch_len, enum dx__gw_kind kind,
                         const uint8_t *payload, size_t payload_len, const char *pattern,
                         size_t pattern_len);

/* {"op":"ack"[,"id":N]}: the reply to unsub and refresh. */
int dx__gw_ack_encode(dx_buf *out, size_t max, int64_t id);

/* {"op":"ack"[,"id":N],"topic":T,"offset":N,"epoch":E,"recovered":bool} */
int dx__gw_ack_sub_encode(dx_buf *out, size_t max, int64_t id, const char *topic, size_t topic_len,
                          uint64_t offset, const char *epoch, size_t epoch_len, bool recovered);

/* {"op":"ack"[,"id":N],"offset":N,"epoch":E} */
int dx__gw_ack_pub_encode(dx_buf *out, size_t max, int64_t id, uint64_t offset, const char *epoch,
                          size_t epoch_len);

/* A user id for the presence ack (borrowed for the call). */
typedef struct dx__gw_str {
    const char *p;
    size_t len;
} dx__gw_str;

/* {"op":"ack"[,"id":N],"count":N,"users":[U,…]}: users in the given order. */
int dx__gw_ack_presence_encode(dx_buf *out, size_t max, int64_t id, uint64_t count,
                               const dx__gw_str *users, size_t n_users);

/* {"op":"err"[,"id":N],"code":C,"reason":R}; reason NUL-terminated. code
 * must be 0..2^53-1. */
int dx__gw_err_encode(dx_buf *out, size_t max, int64_t id, int code, const char *reason);

/* {"op":"gap","topic":T,"from":N,"to":M} */
int dx__gw_gap_encode(dx_buf *out, size_t max, const char *topic, size_t topic_len, uint64_t from,
                      uint64_t to);

/*
 * SSE positions: a stream's place in each of its topics. The id of an SSE
 * event is "t1:o1:e1,t2:o2:e2" (GATEWAY.md "SSE"); ?since= takes the plain
 * form "t1:o1,t2:o2". Topic names may contain ':' (user:<id>) but never
 * ',', so items split on ',', and each item on its LAST colons: the last
 * one separates the epoch (epoch form) and the one before it the offset.
 * That is unambiguous because epochs contain neither ',' nor ':' and
 * offsets are digits. The caller says which form it expects (the header
 * Last-Event-ID: epoch form; ?since=: plain form).
 */
typedef struct dx__gw_pos {
    const char *topic;
    size_t topic_len;
    uint64_t offset;
    const char *epoch;          /* NULL/0 in the plain form */
    size_t epoch_len;
} dx__gw_pos;

/* Appends "t:o:e,…" for `n` positions (in order) to `out`. DX_EINVAL when
 * a topic is empty or has a ',' or a byte outside 0x21..0x7E, an epoch is
 * empty or has ',' or ':' or a byte outside 0x21..0x7E, or an offset is
 * above 2^53-1; else as the encoders. O(output). */
int dx__gw_sse_id_encode(dx_buf *out, size_t max, const dx__gw_pos *pos, size_t n);

/* Appends "event: msg\ndata: <msg>\nid: <id>\n\n". `msg` is the output of
 * dx__gw_msg_encode (one line; DX_EINVAL if it holds CR or LF). */
int dx__gw_sse_event_encode(dx_buf *out, size_t max, const uint8_t *msg, size_t msg_len,
                            const dx__gw_pos *pos, size_t n);

/*
 * Parses `len` bytes of an SSE position list into pos[0..cap), borrowing
 * topic and epoch pointers from `s`. with_epoch: each item is
 * topic:offset:epoch, else topic:offset. An empty string is zero items.
 * Offsets are canonical decimal ("0" or no leading zero) below 2^53.
 * Returns the number of items, DX_EINVAL (malformed: an empty item, topic
 * or epoch, a missing colon, a bad offset, a byte outside 0x21..0x7E) or
 * DX_ELIMIT (more than cap items). Never allocates. O(len).
 */
int dx__gw_pos_parse(const char *s, size_t len, bool with_epoch, dx__gw_pos *pos, size_t cap);

/* Strict base64 (RFC 4648 §4, padded): encoded length of n bytes, and the
 * encoder writing exactly that many bytes to dst. O(n). */
static inline size_t dx__gw_b64_len(size_t n) { return (n + 2) / 3 * 4; }
void dx__gw_b64_encode(char *dst, const uint8_t *src, size_t n);

/* Decodes strict base64 into dst (capacity >= len / 4 * 3). Returns the
 * decoded length, or -1 when `src` is not canonical padded base64 (length
 * not a multiple of 4, a byte outside the alphabet, misplaced '=', or
 * non-zero unused bits). O(len). */
long dx__gw_b64_decode(uint8_t *dst, const char *src, size_t len);

#endif
