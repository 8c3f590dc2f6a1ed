/*
 * src/proto/codec.c: the sans-I/O WebSocket session (see duplex/codec.h).
 *
 * Layer: proto. Pure: bytes in, callbacks and bytes out; memory only through
 * the seams. Built on frame.c (framing and message tracking), utf8.c,
 * close.c and mask.c.
 *
 * Memory: a message is delivered straight from the caller's buffer when one
 * unfragmented frame arrived whole; otherwise its bytes gather in `msg`,
 * which is released once the message is delivered (an idle codec holds no
 * message buffer). A control frame split across reads gathers in `ctl`
 * (at most 125 bytes). `out` holds encoded frames until the caller takes them.
 *
 * Invariants:
 *  - state != OPEN means a close frame was queued (or could not be: FAILED
 *    while CLOSE_SENT), and nothing but that frame follows it in `out`;
 *  - rx_opcode != 0 exactly while a received data message is open;
 *  - tx_opcode != 0 exactly while an outgoing fragmented message is open.
 */
#include "duplex/codec.h"

#include "core/buf.h"
#include "core/seams.h"
#include "proto/close.h"
#include "proto/frame.h"
#include "proto/mask.h"
#include "proto/utf8.h"

#include <string.h>

#define KEY_POOL 64 /* mask keys drawn from the seams 16 at a time */

struct dx_codec {
    dx_codec_config cfg;
    dx_frame_decoder dec;
    dx_buf msg;      /* received data message being assembled */
    dx_buf ctl;      /* received control payload split across reads */
    dx_buf out;      /* encoded frames not yet taken by the caller */
    dx_utf8 rx_utf8; /* received text message */
    dx_utf8 tx_utf8; /* outgoing fragmented text message */
    uint64_t pongs_dropped;
    size_t rx_fragments;
    int err;
    uint16_t close_sent;
    uint16_t close_recv;
    uint8_t state;
    uint8_t rx_opcode;
    uint8_t tx_opcode;
    uint8_t key_pos; /* next unused byte in keys; KEY_POOL: empty */
    uint8_t keys[KEY_POOL];
};

dx_codec *dx_codec_new(const dx_codec_config *cfg, int *err)
{
    int e = DX_EINVAL;
    dx_codec *c = NULL;
    if (!cfg || (cfg->role != DX_ROLE_SERVER && cfg->role != DX_ROLE_CLIENT))
        goto out;
    e = DX_ENOMEM;
    c = dx__alloc(cfg->seams, sizeof *c);
    if (!c)
        goto out;
    memset(c, 0, sizeof *c);
    c->cfg = *cfg;
    if (!c->cfg.max_message)
        c->cfg.max_message = DX_CODEC_DEFAULT_MAX_MESSAGE;
    if (!c->cfg.max_frame || c->cfg.max_frame > c->cfg.max_message)
        c->cfg.max_frame = c->cfg.max_message;
    if (!c->cfg.max_fragments)
        c->cfg.max_fragments = DX_CODEC_DEFAULT_MAX_FRAGMENTS;
    dx_frame_limits lim = {.max_frame = c->cfg.max_frame, .max_message = c->cfg.max_message};
    dx__frame_decoder_init(&c->dec, cfg->role, cfg->rsv_allowed, lim);
    dx_buf_init(&c->msg, cfg->seams);
    dx_buf_init(&c->ctl, cfg->seams);
    dx_buf_init(&c->out, cfg->seams);
    c->key_pos = KEY_POOL;
    e = 0;
out:
    if (err)
        *err = e;
    return c;
}

void dx_codec_free(dx_codec *c)
{
    if (!c)
        return;
    dx_buf_deinit(&c->msg);
    dx_buf_deinit(&c->ctl);
    dx_buf_deinit(&c->out);
    dx__free(c->cfg.seams, c);
}

/* ---- sending ------------------------------------------------------------ */

static int next_key(dx_codec *c, uint8_t key[4])
{
    if (c->key_pos + 4 > KEY_POOL) {
        int rc = dx__random(c->cfg.seams, c->keys, KEY_POOL);
        if (rc)
            return DX_ERANDOM;
        c->key_pos = 0;
    }
    memcpy(key, c->keys + c->key_pos, 4);
    c->key_pos = (uint8_t)(c->key_pos + 4);
    return 0;
}

/* Appends one frame to `out`; clients mask it with a fresh key. */
static int put_frame(dx_codec *c, unsigned opcode, bool fin, const void *data, size_t len)
{
    uint8_t key[4];
    const uint8_t *k = NULL;
    if (c->cfg.role == DX_ROLE_CLIENT) {
        int rc = next_key(c, key);
        if (rc)
            return rc;
        k = key;
    }
    size_t hlen = dx__frame_header_size(len, k != NULL);
    if (len > SIZE_MAX - hlen)
        return DX_ELIMIT;
    int rc = dx_buf_reserve(&c->out, hlen + len, 0);
    if (rc)
        return rc;
    uint8_t *p = dx_buf_tail(&c->out);
    p += dx__frame_header_write(p, opcode, fin, 0, len, k);
    if (len) {
        if (k)
            dx__mask_copy(p, data, len, k, 0);
        else
            memcpy(p, data, len);
    }
    dx_buf_commit(&c->out, hlen + len);
    return 0;
}

static bool over_output(const dx_codec *c, size_t len)
{
    return c->cfg.max_output && (len > c->cfg.max_output || c->out.len > c->cfg.max_output - len);
}

static int put_close(dx_codec *c, unsigned code, const char *reason, size_t reason_len)
{
    uint8_t payload[DX_CONTROL_MAX];
    size_t n = dx__close_write(payload, code, reason, reason_len);
    int rc = put_frame(c, DX_OP_CLOSE, true, payload, n);
    if (rc == 0)
        c->close_sent = (uint16_t)(code ? code : DX_CLOSE_NO_STATUS);
    return rc;
}

static int check_send(const dx_codec *c, int opcode, size_t len)
{
    if (opcode != DX_OP_TEXT && opcode != DX_OP_BINARY)
        return DX_EINVAL;
    if (c->state != DX_CODEC_OPEN)
        return DX_ECLOSED;
    if (over_output(c, len + DX_FRAME_HEADER_MAX))
        return DX_ELIMIT;
    return 0;
}

int dx_codec_send(dx_codec *c, int opcode, const void *data, size_t len)
{
    int rc = check_send(c, opcode, len);
    if (rc)
        return rc;
    if (c->tx_opcode)
        return DX_ESTATE;
    if (opcode == DX_OP_TEXT && !dx__utf8_valid(data, len))
        return DX_EUTF8;
    return put_frame(c, (unsigned)opcode, true, data, len);
}

int dx_codec_send_fragment(dx_codec *c, int opcode, const void *data, size_t len, int fin)
{
    int rc = check_send(c, opcode, len);
    if (rc)
        return rc;
    if (c->tx_opcode && c->tx_opcode != opcode)
        return DX_EINVAL;
    if (opcode == DX_OP_TEXT) {
        dx_utf8 v = c->tx_opcode ? c->tx_utf8 : (dx_utf8){0};
        if (dx__utf8_feed(&v, data, len, NULL) || (fin && dx__utf8_finish(&v)))
            return DX_EUTF8;
        c->tx_utf8 = v; /* committed only when the frame is valid */
    }
    unsigned frame_op = c->tx_opcode ? DX_OP_CONT : (unsigned)opcode;
    rc = put_frame(c, frame_op, fin != 0, data, len);
    if (rc)
        return rc;
    c->tx_opcode = fin ? 0 : (uint8_t)opcode;
    return 0;
}

static int send_control(dx_codec *c, unsigned opcode, const void *data, size_t len)
{
    if (len > DX_CONTROL_MAX)
        return DX_EINVAL;
    if (c->state != DX_CODEC_OPEN)
        return DX_ECLOSED;
    return put_frame(c, opcode, true, data, len);
}

int dx_codec_ping(dx_codec *c, const void *data, size_t len) { return send_control(c, DX_OP_PING, data, len); }
int dx_codec_pong(dx_codec *c, const void *data, size_t len) { return send_control(c, DX_OP_PONG, data, len); }

int dx_codec_close(dx_codec *c, unsigned code, const char *reason, size_t reason_len)
{
    if (code == 0 ? reason_len != 0 : !dx_close_code_valid(code))
        return DX_EINVAL;
    if (reason_len > DX_CLOSE_REASON_MAX)
        return DX_EINVAL;
    if (reason_len && !dx__utf8_valid((const uint8_t *)reason, reason_len))
        return DX_EUTF8;
    if (c->state != DX_CODEC_OPEN)
        return DX_ECLOSED;
    int rc = put_close(c, code, reason, reason_len);
    if (rc)
        return rc;
    c->state = DX_CODEC_CLOSE_SENT;
    return 0;
}

const uint8_t *dx_codec_out(const dx_codec *c, size_t *len)
{
    *len = c->out.len;
    return c->out.len ? dx_buf_head(&c->out) : NULL;
}

void dx_codec_out_consume(dx_codec *c, size_t n)
{
    dx_buf_consume(&c->out, n);
    if (c->out.len == 0 && c->out.cap > 4096)
        dx_buf_deinit(&c->out); /* give a burst's memory back */
}

int dx_codec_state(const dx_codec *c) { return c->state; }
unsigned dx_codec_close_sent(const dx_codec *c) { return c->close_sent; }
unsigned dx_codec_close_received(const dx_codec *c) { return c->close_recv; }
int dx_codec_error(const dx_codec *c) { return c->err; }
uint64_t dx_codec_pongs_dropped(const dx_codec *c) { return c->pongs_dropped; }

/* ---- receiving ---------------------------------------------------------- */

static const char *fail_reason(int err)
{
    switch (err) {
    case DX_EPROTO:
        return "protocol error";
    case DX_EUTF8:
        return "invalid UTF-8";
    case DX_ETOOBIG:
        return "message too big";
    case DX_EPOLICY:
        return "too many fragments";
    default:
        return "internal error";
    }
}

/* Fails the connection (§7.1.7): queue our close frame if we still may send
 * one, stop reading. Returns err for the caller to pass up. */
static int fail_conn(dx_codec *c, int err)
{
    if (c->state == DX_CODEC_OPEN) {
        const char *why = fail_reason(err);
        (void)put_close(c, (unsigned)dx_close_code_for_error(err), why, strlen(why));
    }
    c->state = DX_CODEC_FAILED;
    c->err = err;
    dx_buf_deinit(&c->msg);
    dx_buf_deinit(&c->ctl);
    return err;
}

static int on_control(dx_codec *c, unsigned opcode, const uint8_t *p, size_t len)
{
    const dx_codec_callbacks *cb = &c->cfg.cb;
    if (opcode == DX_OP_PING) {
        if (c->state == DX_CODEC_OPEN && !c->cfg.no_auto_pong) {
            /* §5.5.3: answer with the same payload. A peer that floods pings
             * and never reads could grow `out` without bound: past
             * max_output the pong is dropped and counted. */
            if (over_output(c, len + DX_FRAME_HEADER_MAX)) {
                c->pongs_dropped++;
            } else {
                int rc = put_frame(c, DX_OP_PONG, true, p, len);
                if (rc)
                    return fail_conn(c, rc == DX_ERANDOM ? DX_EINTERNAL : rc);
            }
        }
        if (cb->on_ping)
            cb->on_ping(c->cfg.ud, p, len);
        return 0;
    }
    if (opcode == DX_OP_PONG) {
        if (cb->on_pong)
            cb->on_pong(c->cfg.ud, p, len);
        return 0;
    }
    /* DX_OP_CLOSE */
    uint16_t code;
    const uint8_t *reason;
    size_t reason_len;
    int rc = dx__close_parse(p, len, &code, &reason, &reason_len);
    if (rc)
        return fail_conn(c, rc);
    c->close_recv = code;
    if (c->state == DX_CODEC_OPEN) {
        /* §5.5.1: reply with a close frame, echoing the status code. */
        (void)put_close(c, code == DX_CLOSE_NO_STATUS ? 0 : code, NULL, 0);
    }
    c->state = DX_CODEC_CLOSED;
    dx_buf_deinit(&c->msg);
    if (cb->on_close)
        cb->on_close(c->cfg.ud, code, (const char *)reason, reason_len);
    return 0;
}

/* Delivers a finished data message and releases its buffer. */
static int finish_message(dx_codec *c, const uint8_t *p, size_t len)
{
    static const uint8_t empty[1];
    unsigned op = c->rx_opcode;
    c->rx_opcode = 0;
    if (!p)
        p = empty; /* callbacks always get a valid pointer, even for 0 bytes */
    if (op == DX_OP_TEXT && dx__utf8_finish(&c->rx_utf8))
        return fail_conn(c, DX_EUTF8); /* a character cut off at the end */
    if (c->cfg.cb.on_fragment)
        c->cfg.cb.on_fragment(c->cfg.ud, (int)op, p, len, 1);
    else if (c->cfg.cb.on_message)
        c->cfg.cb.on_message(c->cfg.ud, (int)op, p, len);
    if (c->msg.cap)
        dx_buf_deinit(&c->msg);
    return 0;
}

static int on_header(dx_codec *c, const dx_frame_event *ev)
{
    const dx_frame_header *h = ev->hdr;
    if (h->opcode & 0x8) {
        dx_buf_clear(&c->ctl);
        return ev->end ? on_control(c, h->opcode, NULL, 0) : 0;
    }
    if (h->opcode != DX_OP_CONT) {
        c->rx_opcode = h->opcode;
        c->rx_fragments = 0;
        dx__utf8_init(&c->rx_utf8);
    }
    if (++c->rx_fragments > c->cfg.max_fragments)
        return fail_conn(c, DX_EPOLICY);
    if (ev->end && h->fin) {
        if (c->msg.len)
            return finish_message(c, dx_buf_head(&c->msg), c->msg.len);
        return finish_message(c, NULL, 0);
    }
    return 0;
}

static int on_data(dx_codec *c, const dx_frame_event *ev)
{
    const dx_frame_header *h = ev->hdr;
    if (h->opcode & 0x8) {
        if (ev->offset == 0 && ev->end)
            return on_control(c, h->opcode, ev->data, ev->len); /* arrived whole */
        int rc = dx_buf_append(&c->ctl, ev->data, ev->len, DX_CONTROL_MAX);
        if (rc)
            return fail_conn(c, rc == DX_ENOMEM ? DX_ENOMEM : DX_EINTERNAL);
        if (!ev->end)
            return 0;
        rc = on_control(c, h->opcode, dx_buf_head(&c->ctl), c->ctl.len);
        dx_buf_deinit(&c->ctl);
        return rc;
    }
    if (c->rx_opcode == DX_OP_TEXT && dx__utf8_feed(&c->rx_utf8, ev->data, ev->len, NULL))
        return fail_conn(c, DX_EUTF8); /* §8.1: fail at the first invalid byte */
    bool last = ev->end && h->fin;
    if (c->cfg.cb.on_fragment) {
        if (last)
            return finish_message(c, ev->data, ev->len);
        c->cfg.cb.on_fragment(c->cfg.ud, c->rx_opcode, ev->data, ev->len, 0);
        return 0;
    }
    if (last && c->msg.len == 0 && ev->offset == 0 && h->opcode != DX_OP_CONT)
        return finish_message(c, ev->data, ev->len); /* zero-copy: the frame arrived whole */
    /* The decoder checked the message limit at the header, so this append
     * stays within max_message. */
    int rc = dx_buf_append(&c->msg, ev->data, ev->len, 0);
    if (rc)
        return fail_conn(c, rc == DX_ENOMEM ? DX_ENOMEM : DX_EINTERNAL);
    if (last)
        return finish_message(c, dx_buf_head(&c->msg), c->msg.len);
    return 0;
}

int dx_codec_recv(dx_codec *c, uint8_t *data, size_t len)
{
    if (c->state == DX_CODEC_CLOSED || c->state == DX_CODEC_FAILED)
        return DX_ECLOSED;
    size_t off = 0;
    while (c->state == DX_CODEC_OPEN || c->state == DX_CODEC_CLOSE_SENT) {
        dx_frame_event ev;
        off += dx__frame_decode(&c->dec, data + off, len - off, &ev);
        int rc = 0;
        switch (ev.type) {
        case DX_FRAME_NEED_MORE:
            return 0;
        case DX_FRAME_ERROR:
            return fail_conn(c, ev.err);
        case DX_FRAME_HEADER:
            rc = on_header(c, &ev);
            break;
        case DX_FRAME_DATA:
            rc = on_data(c, &ev);
            break;
        }
        if (rc)
            return rc;
    }
    /* The peer's close frame ended the session during this call; bytes after
     * it are ignored (§5.5.1). */
    return 0;
}
