/*
 * src/gateway/dialect.c: the JSON dialect and SSE framing (dialect.h).
 *
 * Layer: gateway, sans-I/O. Depends on core (buf, seams), proto/utf8 and
 * jansson; never on sockets, the loop, the clock or ws connections.
 *
 * Requests are parsed with jansson (a packaged parser for untrusted input:
 * duplicate keys refused, nesting bounded by a pre-scan so jansson's
 * recursion never goes deeper than DX__GW_JSON_MAX_DEPTH).
 *
 * Server frames are written by hand rather than built as jansson trees and
 * dumped: a msg envelope is built once per publish per dialect (not per
 * subscriber), but it is still on the publish path of every message, and a
 * tree costs an allocation per node plus a dump through a callback per
 * token. Here each encoder runs twice over the same code: a measuring pass
 * (which also validates UTF-8 and ranges) and a writing pass into one exact
 * reservation, so a frame costs at most one allocation and never a partial
 * write. Invariant: the output is always valid JSON on one line (no raw CR
 * or LF), escaped per RFC 8259 §7, and only ever holds valid UTF-8.
 */
#include "gateway/dialect.h"

#include "core/seams.h"
#include "proto/utf8.h"

#include <jansson.h>
#include <string.h>

/* ---- writer: measure, then write ---------------------------------------- */

typedef struct wr {
    uint8_t *dst;               /* NULL on the measuring pass */
    size_t n;                   /* bytes measured or written */
    int err;                    /* first error of the measuring pass */
} wr;

static void put(wr *w, const void *p, size_t len)
{
    if (w->dst && len)
        memcpy(w->dst + w->n, p, len);
    w->n += len;
}

static void put_lit(wr *w, const char *s) { put(w, s, strlen(s)); }

static void put_u64(wr *w, uint64_t v)
{
    char tmp[20];
    size_t i = sizeof tmp;
    if (v > DX__GW_JSON_MAX_INT && !w->err)
        w->err = DX_EINVAL;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(w, tmp + i, sizeof tmp - i);
}

static void put_id(wr *w, int64_t id)
{
    if (id < 0)
        return;
    put_lit(w, ",\"id\":");
    put_u64(w, (uint64_t)id);
}

static const char hexd[] = "0123456789abcdef";

/* A JSON string: validated as UTF-8 on the measuring pass, then escaped. */
static void put_str(wr *w, const char *s, size_t len)
{
    const uint8_t *p = (const uint8_t *)s;
    if (!w->dst && !w->err) {
        if (!p && len)
            w->err = DX_EINVAL;
        else if (len && !dx__utf8_valid(p, len))
            w->err = DX_EUTF8;
    }
    if (w->err)
        return;
    put(w, "\"", 1);
    size_t run = 0; /* bytes copied verbatim, flushed before each escape */
    for (size_t i = 0; i < len; i++) {
        uint8_t c = p[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            run++;
            continue;
        }
        put(w, p + i - run, run);
        run = 0;
        char e[6] = {'\\', 0, 0, 0, 0, 0};
        size_t el = 2;
        switch (c) {
        case '"': e[1] = '"'; break;
        case '\\': e[1] = '\\'; break;
        case '\b': e[1] = 'b'; break;
        case '\f': e[1] = 'f'; break;
        case '\n': e[1] = 'n'; break;
        case '\r': e[1] = 'r'; break;
        case '\t': e[1] = 't'; break;
        default:
            e[1] = 'u', e[2] = '0', e[3] = '0', e[4] = hexd[c >> 4], e[5] = hexd[c & 15];
            el = 6;
        }
        put(w, e, el);
    }
    if (run)
        put(w, p + len - run, run);
    put(w, "\"", 1);
}

static void put_cstr(wr *w, const char *s) { put_str(w, s, s ? strlen(s) : 0); }

static const char b64a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void dx__gw_b64_encode(char *dst, const uint8_t *src, size_t n)
{
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8 | src[i + 2];
        *dst++ = b64a[v >> 18];
        *dst++ = b64a[(v >> 12) & 63];
        *dst++ = b64a[(v >> 6) & 63];
        *dst++ = b64a[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)src[i] << 16;
        *dst++ = b64a[v >> 18];
        *dst++ = b64a[(v >> 12) & 63];
        *dst++ = '=';
        *dst++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8;
        *dst++ = b64a[v >> 18];
        *dst++ = b64a[(v >> 12) & 63];
        *dst++ = b64a[(v >> 6) & 63];
        *dst++ = '=';
    }
}

static int b64v(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

long dx__gw_b64_decode(uint8_t *dst, const char *src, size_t len)
{
    if (len % 4)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        const unsigned char *q = (const unsigned char *)src + i;
        bool last = i + 4 == len;
        int pad = (last && q[3] == '=') + (last && q[3] == '=' && q[2] == '=');
        int v[4];
        for (int k = 0; k < 4 - pad; k++)
            if ((v[k] = b64v(q[k])) < 0)
                return -1;
        for (int k = 4 - pad; k < 4; k++)
            v[k] = 0;
        uint32_t x = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        /* Canonical only: the bits a padded quantum does not carry are zero. */
        if ((pad == 1 && (x & 0xFF)) || (pad == 2 && (x & 0xFFFF)))
            return -1;
        dst[o++] = (uint8_t)(x >> 16);
        if (pad < 2)
            dst[o++] = (uint8_t)(x >> 8);
        if (pad < 1)
            dst[o++] = (uint8_t)x;
    }
    return (long)o;
}

static void put_b64(wr *w, const uint8_t *p, size_t len)
{
    if (!p && len && !w->err)
        w->err = DX_EINVAL;
    if (w->err)
        return;
    put(w, "\"", 1);
    if (w->dst && len)
        dx__gw_b64_encode((char *)w->dst + w->n, p, len);
    w->n += dx__gw_b64_len(len);
    put(w, "\"", 1);
}

/* Valid JSON text, verbatim but for raw CR/LF, which valid JSON only has as
 * whitespace between tokens: they become spaces so the frame is one line. */
static void put_json_raw(wr *w, const uint8_t *p, size_t len)
{
    if (!p && len && !w->err)
        w->err = DX_EINVAL;
    if (w->err)
        return;
    if (w->dst) {
        uint8_t *d = w->dst + w->n;
        for (size_t i = 0; i < len; i++)
            d[i] = p[i] == '\n' || p[i] == '\r' ? ' ' : p[i];
    }
    w->n += len;
}

/* Pass 0 measured into *w: reserve exactly, start pass 1. */
static int wr_reserve(wr *w, dx_buf *out, size_t max)
{
    if (w->err)
        return w->err;
    int rc = dx_buf_reserve(out, w->n, max);
    if (rc)
        return rc;
    w->dst = dx_buf_tail(out);
    w->n = 0;
    return 0;
}

/* The end of an encoder's pass: after the first (measuring) pass, room for
 * what it measured; after the second (writing) pass, the bytes committed. */
static int wr_pass_done(wr *w, dx_buf *out, size_t max, int pass)
{
    if (pass == 0)
        return wr_reserve(w, out, max);
    dx_buf_commit(out, w->n);
    return 0;
}

/* ---- encoders ----------------------------------------------------------- */

static void emit_msg(wr *w, const char *topic, size_t topic_len, uint64_t offset, const char *epoch,
                     size_t epoch_len, enum dx__gw_kind kind, const uint8_t *payload, size_t payload_len,
                     const char *pattern, size_t pattern_len)
{
    put_lit(w, "{\"op\":\"msg\",\"topic\":");
    put_str(w, topic, topic_len);
    put_lit(w, ",\"offset\":");
    put_u64(w, offset);
    put_lit(w, ",\"epoch\":");
    put_str(w, epoch, epoch_len);
    switch (kind) {
    case DX__GW_KIND_JSON:
        put_lit(w, ",\"data\":");
        if (!payload_len && !w->err)
            w->err = DX_EINVAL; /* empty text is not a JSON value */
        put_json_raw(w, payload, payload_len);
        break;
    case DX__GW_KIND_TEXT:
        put_lit(w, ",\"data\":");
        put_str(w, (const char *)payload, payload_len);
        break;
    case DX__GW_KIND_BINARY:
        put_lit(w, ",\"b64\":");
        put_b64(w, payload, payload_len);
        break;
    default:
        if (!w->err)
            w->err = DX_EINVAL;
    }
    if (pattern) {
        put_lit(w, ",\"pattern\":");
        put_str(w, pattern, pattern_len);
    }
    put_lit(w, "}");
}

int dx__gw_msg_encode(dx_buf *out, size_t max, const char *topic, size_t topic_len,
                      uint64_t offset, const char *epoch, size_t epoch_len,
                      enum dx__gw_kind kind, const uint8_t *payload, size_t payload_len,
                      const char *pattern, size_t pattern_len)
{
    wr w = {0};
    int rc = 0;
    for (int pass = 0; rc == 0 && pass < 2; pass++) {
        emit_msg(&w, topic, topic_len, offset, epoch, epoch_len, kind, payload, payload_len, pattern,
                 pattern_len);
        rc = wr_pass_done(&w, out, max, pass);
    }
    return rc;
}

int dx__gw_msg_encode_to(uint8_t *dst, size_t cap, size_t *len, const char *topic, size_t topic_len,
                         uint64_t offset, const char *epoch, size_t epoch_len, enum dx__gw_kind kind,
                         const uint8_t *payload, size_t payload_len, const char *pattern,
                         size_t pattern_len)
{
    wr w = {0};
    emit_msg(&w, topic, topic_len, offset, epoch, epoch_len, kind, payload, payload_len, pattern,
             pattern_len);
    if (w.err)
        return w.err;
    *len = w.n;
    if (!dst || w.n > cap)
        return DX_ENOSPC;
    w.dst = dst;
    w.n = 0;
    emit_msg(&w, topic, topic_len, offset, epoch, epoch_len, kind, payload, payload_len, pattern,
             pattern_len);
    return 0;
}

static void emit_ack(wr *w, int64_t id)
{
    put_lit(w, "{\"op\":\"ack\"");
    put_id(w, id);
}

int dx__gw_ack_encode(dx_buf *out, size_t max, int64_t id)
{
    wr w = {0};
    int rc = 0;
    for (int pass = 0; rc == 0 && pass < 2; pass++) {
        emit_ack(&w, id);
        put_lit(&w, "}");
        rc = wr_pass_done(&w, out, max, pass);
    }
    return rc;
}

int dx__gw_ack_sub_encode(dx_buf *out, size_t max, int64_t id, const char *topic, size_t topic_len,
                          uint64_t offset, const char *epoch, size_t epoch_len, bool recovered)
{
    wr w = {0};
    int rc = 0;
    for (int pass = 0; rc == 0 && pass < 2; pass++) {
        emit_ack(&w, id);
        put_lit(&w, ",\"topic\":");
        put_str(&w, topic, topic_len);
        put_lit(&w, ",\"offset\":");
        put_u64(&w, offset);
        put_lit(&w, ",\"epoch\":");
        put_str(&w, epoch, epoch_len);
        put_lit(&w, recovered ? ",\"recovered\":true}" : ",\"recovered\":false}");
        rc = wr_pass_done(&w, out, max, pass);
    }
    return rc;
}

int dx__gw_ack_pub_encode(dx_buf *out, size_t max, int64_t id, uint64_t offset, const char *epoch,
                          size_t epoch_len)
{
    wr w = {0};
    int rc = 0;
    for (int pass = 0; rc == 0 && pass < 2; pass++) {
        emit_ack(&w, id);
        put_lit(&w, ",\"offset\":");
        put_u64(&w, offset);
        put_lit(&w, ",\"epoch\":");
        put_str(&w, epoch, epoch_len);
        put_lit(&w, "}");
        rc = wr_pass_done(&w, out, max, pass);
    }
    return rc;
}

int dx__gw_ack_presence_encode(dx_buf *out, size_t max, int64_t id, uint64_t count,
                               const dx__gw_str *users, size_t n_users)
{
    wr w = {0};
    if (n_users && !users)
        return DX_EINVAL;
    int rc = 0;
    for (int pass = 0; rc == 0 && pass < 2; pass++) {
        emit_ack(&w, id);
        put_lit(&w, ",\"count\":");
        put_u64(&w, count);
        put_lit(&w, ",\"users\":[");
        for (size_t i = 0; i < n_users; i++) {
            if (i)
                put_lit(&w, ",");
            put_str(&w, users[i].p, users[i].len);
        }
        put_lit(&w, "]}");
        rc = wr_pass_done(&w, out, max, pass);
    }
    return rc;
}

int dx__gw_err_encode(dx_buf *out, size_t max, int64_t id, int code, const char *reason)
{
    wr w = {0};
    if (code < 0)
        return DX_EINVAL;
    int rc = 0;
    for (int pass = 0; rc == 0 && pass < 2; pass++) {
        put_lit(&w, "{\"op\":\"err\"");
        put_id(&w, id);
        put_lit(&w, ",\"code\":");
        put_u64(&w, (uint64_t)code);
        put_lit(&w, ",\"reason\":");
        put_cstr(&w, reason);
        put_lit(&w, "}");
        rc = wr_pass_done(&w, out, max, pass);
    }
    return rc;
}

int dx__gw_gap_encode(dx_buf *out, size_t max, const char *topic, size_t topic_len, uint64_t from,
                      uint64_t to)
{
    wr w = {0};
    int rc = 0;
    for (int pass = 0; rc == 0 && pass < 2; pass++) {
        put_lit(&w, "{\"op\":\"gap\",\"topic\":");
        put_str(&w, topic, topic_len);
        put_lit(&w, ",\"from\":");
        put_u64(&w, from);
        put_lit(&w, ",\"to\":");
        put_u64(&w, to);
        put_lit(&w, "}");
        rc = wr_pass_done(&w, out, max, pass);
    }
    return rc;
}

/* ---- SSE ---------------------------------------------------------------- */

/* A token of an SSE id: non-empty, printable ASCII without ',' (and without
 * ':' for an epoch), so the id splits back unambiguously. */
static bool id_token_ok(const char *s, size_t len, bool colon_ok)
{
    if (!s || !len)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x21 || c > 0x7E || c == ',' || (c == ':' && !colon_ok))
            return false;
    }
    return true;
}

static void emit_sse_id(wr *w, const dx__gw_pos *pos, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!w->dst && !w->err &&
            (!id_token_ok(pos[i].topic, pos[i].topic_len, true) ||
             !id_token_ok(pos[i].epoch, pos[i].epoch_len, false)))
            w->err = DX_EINVAL;
        if (w->err)
            return;
        if (i)
            put(w, ",", 1);
        put(w, pos[i].topic, pos[i].topic_len);
        put(w, ":", 1);
        put_u64(w, pos[i].offset);
        put(w, ":", 1);
        put(w, pos[i].epoch, pos[i].epoch_len);
    }
}

int dx__gw_sse_id_encode(dx_buf *out, size_t max, const dx__gw_pos *pos, size_t n)
{
    wr w = {0};
    if (n && !pos)
        return DX_EINVAL;
    emit_sse_id(&w, pos, n);
    if (!w.n && !w.err)
        return 0; /* nothing to append (and nothing reserved) */
    int rc = wr_reserve(&w, out, max);
    if (rc)
        return rc;
    emit_sse_id(&w, pos, n);
    dx_buf_commit(out, w.n);
    return 0;
}

int dx__gw_sse_event_encode(dx_buf *out, size_t max, const uint8_t *msg, size_t msg_len,
                            const dx__gw_pos *pos, size_t n)
{
    wr w = {0};
    if ((n && !pos) || (!msg && msg_len) || memchr(msg ? (const void *)msg : "", '\n', msg_len) ||
        memchr(msg ? (const void *)msg : "", '\r', msg_len))
        return DX_EINVAL;
    int rc = 0;
    for (int pass = 0; rc == 0 && pass < 2; pass++) {
        put_lit(&w, "event: msg\ndata: ");
        put(&w, msg, msg_len);
        put_lit(&w, "\nid: ");
        emit_sse_id(&w, pos, n);
        put_lit(&w, "\n\n");
        rc = wr_pass_done(&w, out, max, pass);
    }
    return rc;
}

static const char *last_colon(const char *s, size_t len)
{
    while (len--)
        if (s[len] == ':')
            return s + len;
    return NULL;
}

static bool parse_offset(const char *s, size_t len, uint64_t *v)
{
    if (!len || len > 16 || (len > 1 && s[0] == '0'))
        return false;
    uint64_t x = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        x = x * 10 + (uint64_t)(s[i] - '0');
    }
    if (x > DX__GW_JSON_MAX_INT)
        return false;
    *v = x;
    return true;
}

int dx__gw_pos_parse(const char *s, size_t len, bool with_epoch, dx__gw_pos *pos, size_t cap)
{
    if (!len)
        return 0;
    if (!s || (cap && !pos))
        return DX_EINVAL;
    size_t n = 0;
    const char *end = s + len;
    for (const char *item = s;;) {
        const char *comma = memchr(item, ',', (size_t)(end - item));
        const char *ie = comma ? comma : end;
        dx__gw_pos p = {0};
        const char *c = last_colon(item, (size_t)(ie - item));
        if (!c)
            return DX_EINVAL;
        if (with_epoch) {
            p.epoch = c + 1;
            p.epoch_len = (size_t)(ie - p.epoch);
            if (!id_token_ok(p.epoch, p.epoch_len, false))
                return DX_EINVAL;
            ie = c;
            if (!(c = last_colon(item, (size_t)(ie - item))))
                return DX_EINVAL;
        }
        if (!parse_offset(c + 1, (size_t)(ie - c - 1), &p.offset))
            return DX_EINVAL;
        p.topic = item;
        p.topic_len = (size_t)(c - item);
        if (!id_token_ok(p.topic, p.topic_len, true))
            return DX_EINVAL;
        if (n == cap)
            return DX_ELIMIT;
        pos[n++] = p;
        if (!comma)
            break;
        item = comma + 1;
        if (item == end)
            return DX_EINVAL; /* a trailing comma: an empty item */
    }
    return n > (size_t)INT32_MAX ? DX_ELIMIT : (int)n;
}

/* ---- requests ----------------------------------------------------------- */

static void req_reset(dx__gw_req *req, const dx_seams *seams)
{
    memset(req, 0, sizeof *req);
    dx_buf_init(&req->payload_buf_, seams);
}

void dx__gw_req_free(dx__gw_req *req)
{
    if (req->root_)
        json_decref((json_t *)req->root_);
    const dx_seams *seams = req->payload_buf_.seams;
    dx_buf_deinit(&req->payload_buf_);
    req_reset(req, seams);
}

/* Nesting depth of the JSON text, counted without parsing (strings and
 * their escapes skipped), so that jansson's recursive descent is never
 * handed more than DX__GW_JSON_MAX_DEPTH levels. */
static bool depth_ok(const uint8_t *p, size_t len)
{
    size_t depth = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = p[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++depth > DX__GW_JSON_MAX_DEPTH)
                return false;
        } else if ((c == ']' || c == '}') && depth) {
            depth--;
        }
    }
    return true;
}

/* An integer in 0..2^53-1 (a JSON real such as 1.0 is not one). */
static bool get_uint53(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v))
        return false;
    json_int_t x = json_integer_value(v);
    if (x < 0 || (uint64_t)x > DX__GW_JSON_MAX_INT)
        return false;
    *out = (uint64_t)x;
    return true;
}

static bool get_str(const json_t *obj, const char *key, const char **p, size_t *len)
{
    const json_t *v = json_object_get(obj, key);
    if (!json_is_string(v))
        return false;
    *p = json_string_value(v);
    *len = json_string_length(v);
    return true;
}

static int dump_cb(const char *buf, size_t size, void *ud)
{
    return dx_buf_append(ud, buf, size, 0) ? -1 : 0;
}

static int refuse(dx__gw_req_err *err, int code, const char *reason)
{
    err->code = code;
    err->reason = reason;
    return code == DX__GW_E_UNAVAILABLE ? DX_ENOMEM : DX_EPROTO;
}

static const struct {
    const char *name;
    enum dx__gw_op op;
} ops[] = {
    {"sub", DX__GW_OP_SUB},         {"unsub", DX__GW_OP_UNSUB},     {"pub", DX__GW_OP_PUB},
    {"presence", DX__GW_OP_PRESENCE}, {"refresh", DX__GW_OP_REFRESH},
};

/* Fills the op-specific fields of *req from the object `root`. */
static int parse_fields(dx__gw_req *req, json_t *root, dx__gw_req_err *err)
{
    if (req->op == DX__GW_OP_REFRESH) {
        if (!get_str(root, "token", &req->token, &req->token_len))
            return refuse(err, DX__GW_E_MALFORMED, "refresh needs a string token");
        return 0;
    }
    if (!get_str(root, "topic", &req->topic, &req->topic_len))
        return refuse(err, DX__GW_E_MALFORMED, "missing or non-string topic");
    if (req->op == DX__GW_OP_SUB) {
        json_t *since = json_object_get(root, "since");
        if (!since)
            return 0;
        /* Extension (docs/gateway.md): `epoch` may be left out, meaning the
         * topic's current epoch, as the raw dialect's since= does (a page
         * joining a room asks for {"offset": 0}: everything retained). */
        if (!json_is_object(since) || !get_uint53(json_object_get(since, "offset"), &req->since_offset) ||
            (json_object_get(since, "epoch") &&
             !get_str(since, "epoch", &req->since_epoch, &req->since_epoch_len)))
            return refuse(err, DX__GW_E_MALFORMED,
                          "since must be {\"offset\": integer 0..2^53-1[, \"epoch\": string]}");
        req->has_since = true;
        return 0;
    }
    if (req->op != DX__GW_OP_PUB)
        return 0;
    json_t *data = json_object_get(root, "data");
    json_t *b64 = json_object_get(root, "b64");
    if (!data == !b64)
        return refuse(err, DX__GW_E_MALFORMED, "pub needs exactly one of data and b64");
    if (b64) {
        if (!json_is_string(b64))
            return refuse(err, DX__GW_E_MALFORMED, "b64 must be a string");
        size_t len = json_string_length(b64);
        req->kind = DX__GW_KIND_BINARY;
        if (!len)
            return 0;
        if (dx_buf_reserve(&req->payload_buf_, len / 4 * 3, 0))
            return refuse(err, DX__GW_E_UNAVAILABLE, "out of memory");
        long n = dx__gw_b64_decode(dx_buf_tail(&req->payload_buf_), json_string_value(b64), len);
        if (n < 0)
            return refuse(err, DX__GW_E_MALFORMED, "b64 is not padded standard base64");
        dx_buf_commit(&req->payload_buf_, (size_t)n);
    } else if (json_is_string(data)) {
        req->kind = DX__GW_KIND_TEXT;
        req->payload = (const uint8_t *)json_string_value(data);
        req->payload_len = json_string_length(data);
        return 0;
    } else {
        /* jansson re-encodes the value: the same JSON value, compact; reals
         * with 17 significant digits (round-trip exact as doubles). */
        req->kind = DX__GW_KIND_JSON;
        if (json_dump_callback(data, dump_cb, &req->payload_buf_,
                               JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER))
            return refuse(err, DX__GW_E_UNAVAILABLE, "out of memory");
    }
    req->payload = dx_buf_head(&req->payload_buf_);
    req->payload_len = req->payload_buf_.len;
    return 0;
}

int dx__gw_req_parse(const dx_seams *seams, const uint8_t *p, size_t len, size_t max_len,
                     dx__gw_req *req, dx__gw_req_err *err)
{
    req_reset(req, seams);
    memset(err, 0, sizeof *err);
    if (!max_len)
        max_len = DX__GW_JSON_DEFAULT_MAX_LEN;
    if (len > max_len)
        return refuse(err, DX__GW_E_TOOBIG, "request too large");
    if (!p && len)
        return refuse(err, DX__GW_E_MALFORMED, "not JSON");
    if (!depth_ok(p, len))
        return refuse(err, DX__GW_E_MALFORMED, "JSON nested too deeply");
    json_error_t jerr;
    json_t *root = json_loadb((const char *)(p ? (const void *)p : ""), len,
                              JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!root) {
        if (json_error_code(&jerr) == json_error_out_of_memory)
            return refuse(err, DX__GW_E_UNAVAILABLE, "out of memory");
        if (json_error_code(&jerr) == json_error_duplicate_key)
            return refuse(err, DX__GW_E_MALFORMED, "duplicate key");
        return refuse(err, DX__GW_E_MALFORMED, "not JSON");
    }
    req->root_ = root;
    int rc;
    if (!json_is_object(root)) {
        rc = refuse(err, DX__GW_E_MALFORMED, "a request is a JSON object");
        goto fail;
    }
    json_t *id = json_object_get(root, "id");
    if (id) {
        if (!get_uint53(id, &req->id)) {
            rc = refuse(err, DX__GW_E_MALFORMED, "id must be an integer 0..2^53-1");
            goto fail;
        }
        req->has_id = true;
        err->has_id = true;
        err->id = req->id;
    }
    const char *op;
    size_t op_len;
    if (!get_str(root, "op", &op, &op_len)) {
        rc = refuse(err, DX__GW_E_MALFORMED, "missing or non-string op");
        goto fail;
    }
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (op_len == strlen(ops[i].name) && !memcmp(op, ops[i].name, op_len))
            req->op = ops[i].op;
    if (!req->op) {
        rc = refuse(err, DX__GW_E_UNKNOWN_OP, "unknown op");
        goto fail;
    }
    if ((rc = parse_fields(req, root, err)))
        goto fail;
    return 0;
fail:
    dx__gw_req_free(req);
    return rc;
}
