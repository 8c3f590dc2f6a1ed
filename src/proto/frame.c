/*
 * src/proto/frame.c: RFC 6455 §5.2 frame decoder and encoder (see frame.h).
 *
 * Layer: proto. Pure: no I/O, no allocation, no logging; depends on core
 * headers and mask.c only.
 *
 * Invariants of the decoder:
 *  - state HEADER: hlen < hneed bytes of the next header sit in hbuf;
 *    hneed is 2 until the second byte is known, then the full header size;
 *  - state PAYLOAD: `remaining` > 0 payload bytes of `hdr` are still to come;
 *  - msg_opcode != 0 exactly while a data message whose last frame has not
 *    ended is open (set at the header of its first frame, cleared when a
 *    frame with FIN ends);
 *  - once err != 0 every call reports the same error and consumes nothing.
 * Each check runs as soon as the bytes it needs have arrived, so a bad first
 * byte is reported without waiting for the rest of the header.
 */
#include "proto/frame.h"

#include "proto/mask.h"

#include <string.h>

enum { ST_HEADER = DX__FRAME_ST_HEADER, ST_PAYLOAD = DX__FRAME_ST_PAYLOAD };

static bool is_control(unsigned op) { return (op & 0x8) != 0; }

static bool is_known_opcode(unsigned op)
{
    return op == DX_OP_CONT || op == DX_OP_TEXT || op == DX_OP_BINARY || op == DX_OP_CLOSE || op == DX_OP_PING ||
           op == DX_OP_PONG;
}

void dx__frame_decoder_init(dx_frame_decoder *d, int role, unsigned rsv_allowed, const dx_frame_limits *limits)
{
    memset(d, 0, sizeof *d);
    d->role = (uint8_t)role;
    d->rsv_allowed = (uint8_t)(rsv_allowed & 0x7u);
    d->limits = limits;
    d->hneed = 2;
}

static size_t fail(dx_frame_decoder *d, dx_frame_event *ev, int err, size_t consumed)
{
    d->err = (int8_t)err;
    ev->type = DX_FRAME_ERROR;
    ev->err = err;
    ev->close_code = (uint16_t)dx_close_code_for_error(err);
    return consumed;
}

/* Checks that need only the first two bytes. Returns 0 or an error. */
static int check_first_two(const dx_frame_decoder *d, uint8_t b0, uint8_t b1)
{
    unsigned op = b0 & 0x0Fu, rsv = (b0 >> 4) & 0x7u, len7 = b1 & 0x7Fu;
    bool fin = (b0 & 0x80u) != 0, masked = (b1 & 0x80u) != 0;

    if (!is_known_opcode(op))
        return DX_EPROTO; /* §5.2: 3-7 and 0xB-0xF are reserved */
    if (is_control(op)) {
        /* §5.5: control frames are never fragmented and carry <= 125 bytes;
         * RFC 7692 §6.1 forbids RSV1 on them, and no extension we know of
         * defines RSV2/RSV3 for them. */
        if (!fin || len7 > DX_CONTROL_MAX || rsv)
            return DX_EPROTO;
    } else if (op == DX_OP_CONT) {
        if (d->msg_opcode == 0)
            return DX_EPROTO; /* nothing to continue */
        if (rsv)
            return DX_EPROTO; /* extension bits belong to a message's first frame */
    } else {
        if (d->msg_opcode != 0)
            return DX_EPROTO; /* §5.4: fragments of one message may not interleave */
        if (rsv & ~(unsigned)d->rsv_allowed)
            return DX_EPROTO; /* §5.2: RSV bits need a negotiated extension */
    }
    /* §5.1: clients mask every frame, servers never do. */
    if (d->role == DX_ROLE_SERVER && !masked)
        return DX_EPROTO;
    if (d->role == DX_ROLE_CLIENT && masked)
        return DX_EPROTO;
    return 0;
}

static size_t header_size(uint8_t b1)
{
    unsigned len7 = b1 & 0x7Fu;
    size_t n = 2 + ((b1 & 0x80u) ? 4 : 0);
    if (len7 == 126)
        n += 2;
    else if (len7 == 127)
        n += 8;
    return n;
}

/* The header in hbuf is complete: fill hdr and apply the length checks. */
static int finish_header(dx_frame_decoder *d)
{
    const uint8_t *h = d->u.hbuf; /* `remaining` (same storage) is set only after this */
    dx_frame_header *hdr = &d->hdr;
    unsigned len7 = h[1] & 0x7Fu;
    size_t pos = 2;
    uint64_t len = len7;

    if (len7 == 126) {
        len = ((uint64_t)h[2] << 8) | h[3];
        pos = 4;
    } else if (len7 == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = (len << 8) | h[2 + i];
        pos = 10;
        if (len >> 63)
            return DX_EPROTO; /* §5.2: the most significant bit MUST be 0 */
    }
    /* Non-minimal length encodings are accepted: §5.2 puts the "minimal
     * number of bytes" duty on the sender and names no receiver action. */
    hdr->fin = (h[0] & 0x80u) != 0;
    hdr->rsv = (uint8_t)((h[0] >> 4) & 0x7u);
    hdr->opcode = (uint8_t)(h[0] & 0x0Fu);
    hdr->masked = (h[1] & 0x80u) != 0;
    hdr->len = len;
    if (hdr->masked)
        memcpy(hdr->key, h + pos, 4);

    const dx_frame_limits *lim = d->limits;
    if (lim && lim->max_frame && len > lim->max_frame)
        return DX_ETOOBIG;
    if (!is_control(hdr->opcode)) {
        uint64_t before = hdr->opcode == DX_OP_CONT ? d->msg_len : 0;
        if (lim && lim->max_message && len > lim->max_message - before)
            return DX_ETOOBIG; /* before <= max_message always holds */
        d->msg_len = before + len;
        if (hdr->opcode != DX_OP_CONT)
            d->msg_opcode = hdr->opcode;
    }
    return 0;
}

/* The current frame has ended: reset for the next header, close the message
 * when this was its final frame. */
static void end_frame(dx_frame_decoder *d)
{
    d->state = ST_HEADER;
    d->hlen = 0;
    d->hneed = 2;
    if (!is_control(d->hdr.opcode) && d->hdr.fin) {
        d->msg_opcode = 0;
        d->msg_len = 0;
    }
}

size_t dx__frame_decode(dx_frame_decoder *d, uint8_t *in, size_t len, dx_frame_event *ev)
{
    ev->type = DX_FRAME_NEED_MORE;
    ev->end = false;
    ev->hdr = &d->hdr;
    ev->data = NULL;
    ev->len = 0;
    if (d->err)
        return fail(d, ev, d->err, 0);

    size_t used = 0;
    if (d->state == ST_HEADER) {
        while (d->hlen < d->hneed) {
            if (used == len)
                return used;
            size_t take = (size_t)(d->hneed - d->hlen);
            if (take > len - used)
                take = len - used;
            memcpy(d->u.hbuf + d->hlen, in + used, take);
            d->hlen = (uint8_t)(d->hlen + take);
            used += take;
            if (d->hlen == 2 && d->hneed == 2) {
                int err = check_first_two(d, d->u.hbuf[0], d->u.hbuf[1]);
                if (err)
                    return fail(d, ev, err, used);
                d->hneed = (uint8_t)header_size(d->u.hbuf[1]);
            }
        }
        int err = finish_header(d);
        if (err)
            return fail(d, ev, err, used);
        ev->type = DX_FRAME_HEADER;
        ev->msg_opcode = is_control(d->hdr.opcode) ? 0 : d->msg_opcode;
        d->u.remaining = d->hdr.len;
        d->key_off = 0;
        if (d->u.remaining == 0) {
            ev->end = true;
            end_frame(d);
        } else {
            d->state = ST_PAYLOAD;
        }
        return used;
    }

    /* ST_PAYLOAD */
    if (len == 0)
        return 0;
    size_t take = len;
    if ((uint64_t)take > d->u.remaining)
        take = (size_t)d->u.remaining;
    if (d->hdr.masked)
        d->key_off = (uint8_t)dx__mask(in, take, d->hdr.key, d->key_off);
    ev->type = DX_FRAME_DATA;
    ev->msg_opcode = is_control(d->hdr.opcode) ? 0 : d->msg_opcode;
    ev->data = in;
    ev->len = take;
    ev->offset = d->hdr.len - d->u.remaining;
    d->u.remaining -= take;
    if (d->u.remaining == 0) {
        ev->end = true;
        end_frame(d);
    }
    return take;
}

size_t dx__frame_header_size(uint64_t len, bool masked)
{
    size_t n = 2 + (masked ? 4 : 0);
    if (len > 0xFFFF)
        n += 8;
    else if (len > 125)
        n += 2;
    return n;
}

size_t dx__frame_header_write(uint8_t *out, unsigned opcode, bool fin, unsigned rsv, uint64_t len,
                              const uint8_t *key)
{
    size_t pos = 2;
    out[0] = (uint8_t)((fin ? 0x80u : 0) | ((rsv & 0x7u) << 4) | (opcode & 0x0Fu));
    uint8_t mask_bit = key ? 0x80u : 0;
    if (len <= 125) {
        out[1] = (uint8_t)(mask_bit | len);
    } else if (len <= 0xFFFF) {
        out[1] = (uint8_t)(mask_bit | 126);
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        pos = 4;
    } else {
        out[1] = (uint8_t)(mask_bit | 127);
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        pos = 10;
    }
    if (key) {
        memcpy(out + pos, key, 4);
        pos += 4;
    }
    return pos;
}
