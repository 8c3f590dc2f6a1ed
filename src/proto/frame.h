/*
 * src/proto/frame.h: RFC 6455 §5.2 frame decoder and encoder. Pure: no I/O,
 * no allocation, no logging.
 *
 * The decoder is resumable at any byte: feed it whatever arrived, it consumes
 * what it can and reports one event per call. Payload bytes are handed back
 * as pointers into the caller's buffer, unmasked in place (the buffer must be
 * writable), so a frame that arrived whole is never copied.
 *
 * Besides single frames it tracks the message a frame belongs to, because the
 * RFC's errors depend on it (continuation with no message open, a new message
 * inside a fragmented one) and so does the message-size limit, which is
 * checked at the frame header, before any payload is buffered.
 */
#ifndef DX_PROTO_FRAME_H
#define DX_PROTO_FRAME_H

#include "duplex/duplex.h"
#include "proto/mask.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DX_FRAME_HEADER_MAX 14 /* 2 + 8 (64-bit length) + 4 (mask key) */
#define DX_CONTROL_MAX 125     /* RFC 6455 §5.5 */

typedef struct dx_frame_header {
    uint64_t len;      /* payload bytes */
    uint8_t opcode;    /* DX_OP_... */
    uint8_t rsv;       /* DX_RSV1|DX_RSV2|DX_RSV3 bits as set */
    bool fin;
    bool masked;
    uint8_t key[4];    /* valid when masked */
} dx_frame_header;

/* Decoder settings; zero limits mean "no limit". */
typedef struct dx_frame_limits {
    uint64_t max_frame;   /* payload bytes of any one frame (→ 1009) */
    uint64_t max_message; /* sum of a data message's frame payloads (→ 1009) */
} dx_frame_limits;

typedef struct dx_frame_decoder {
    const dx_frame_limits *limits; /* NULL: no limits; must outlive the decoder */
    dx_frame_header hdr;  /* the current frame */
    uint64_t msg_len;     /* payload bytes of the open message so far, this frame included */
    union {
        uint8_t hbuf[DX_FRAME_HEADER_MAX]; /* HEADER state: header bytes gathered */
        uint64_t remaining;                /* PAYLOAD state: payload bytes not yet reported */
    } u;
    uint8_t role;         /* DX_ROLE_SERVER: frames must be masked; CLIENT: must not */
    uint8_t rsv_allowed;  /* RSV bits an extension negotiated (first frame of a data message only) */
    uint8_t state;        /* internal */
    uint8_t hlen;         /* header bytes gathered */
    uint8_t hneed;        /* header bytes needed (2, then the full size) */
    uint8_t msg_opcode;   /* DX_OP_TEXT/BINARY while a fragmented message is open, else 0 */
    uint8_t key_off;      /* mask phase of the next payload byte */
    int8_t err;           /* sticky error (DX_EPROTO, DX_ETOOBIG) */
} dx_frame_decoder;

enum dx_frame_event_type {
    DX_FRAME_NEED_MORE = 0, /* every byte given was consumed; nothing to report */
    DX_FRAME_HEADER,        /* a frame header was read: ev->hdr */
    DX_FRAME_DATA,          /* payload bytes: ev->data, ev->len (len > 0) */
    DX_FRAME_ERROR          /* the stream is invalid: ev->err, ev->close_code */
};

typedef struct dx_frame_event {
    int type;               /* enum dx_frame_event_type */
    bool end;               /* HEADER of an empty frame, or DATA with its last bytes */
    uint8_t msg_opcode;     /* data frames: TEXT or BINARY of the message (also for CONT) */
    const dx_frame_header *hdr; /* the current frame (HEADER and DATA) */
    uint8_t *data;          /* DATA: unmasked payload, inside the caller's buffer */
    size_t len;
    uint64_t offset;        /* DATA: position of data[0] within the frame payload */
    int err;                /* ERROR: DX_EPROTO or DX_ETOOBIG */
    uint16_t close_code;    /* ERROR: 1002 or 1009 */
} dx_frame_event;

/* Resets `d` to expect the first frame of a stream. `limits` (NULL: none)
 * is read at every frame header and must outlive the decoder; an idle
 * connection pays one pointer for it. */
void dx__frame_decoder_init(dx_frame_decoder *d, int role, unsigned rsv_allowed, const dx_frame_limits *limits);

/*
 * Consumes a prefix of in[0..len) and reports one event in *ev. Returns the
 * number of bytes consumed (0 is possible only for len 0 or after an error).
 * Payload bytes are unmasked in place. Loop until everything is consumed;
 * a call with NEED_MORE has consumed all of it.
 *
 * Errors (DX_FRAME_ERROR, sticky: every later call reports it again):
 *  1002 DX_EPROTO  RSV bits not negotiated (or on a control/continuation
 *                  frame); opcodes 3-7, 0xB-0xF; a control frame with FIN=0
 *                  or longer than 125; a client frame without a mask (server
 *                  role) or a server frame with one (client role); a 64-bit
 *                  length with its top bit set; a continuation with no
 *                  message open; a new data frame inside an open message.
 *  1009 DX_ETOOBIG the frame's length exceeds max_frame, or the message's
 *                  total would exceed max_message (checked at the header).
 */
size_t dx__frame_decode(dx_frame_decoder *d, uint8_t *in, size_t len, dx_frame_event *ev);

/* Decoder states (dx_frame_decoder.state). */
enum { DX__FRAME_ST_HEADER = 0, DX__FRAME_ST_PAYLOAD = 1 };

/*
 * The fast path for the common frame: a whole final TEXT or BINARY frame
 * with no RSV bit, masked as the role requires, with 1 to 65535 payload
 * bytes within the limits, that arrived in one piece while the decoder is
 * between frames. What it needs from the decoder is read once per batch of
 * input into a dx_frame_fast (dx__frame_fast_init), which stays valid
 * while only dx__frame_whole runs; after a dx__frame_decode call, call
 * dx__frame_fast_init again.
 */
typedef struct dx_frame_fast {
    uint64_t max1;  /* the smaller of max_frame and max_message, minus 1 (no limit: UINT64_MAX) */
    unsigned mbit;  /* 0x80 when frames must be masked (server role), else 0 */
    bool ok;        /* between frames: no header byte gathered, no message open, no error */
} dx_frame_fast;

static inline void dx__frame_fast_init(const dx_frame_decoder *d, dx_frame_fast *f)
{
    const dx_frame_limits *lim = d->limits;
    uint64_t a = lim ? lim->max_frame - 1 : UINT64_MAX, b = lim ? lim->max_message - 1 : UINT64_MAX;
    f->max1 = a < b ? a : b; /* a zero limit (none) wraps to UINT64_MAX */
    f->mbit = d->role == DX_ROLE_SERVER ? 0x80u : 0;
    f->ok = (d->state | d->hlen | d->msg_opcode | d->err) == 0;
}

/*
 * When f->ok and in[0..len) starts with such a frame: unmasks its payload in
 * place, stores where it lies in *payload and *plen and its opcode in
 * *opcode, and returns the frame's size (header included). Otherwise
 * returns 0 and changes nothing: the caller goes on with dx__frame_decode,
 * which also reports every error (a frame refused here is not necessarily
 * bad). The decoder stays between frames, as dx__frame_decode leaves it
 * after the frame's HEADER and its one DATA event with `end` (d->hdr is not
 * updated: it describes a frame only while an event points to it), so the
 * two paths can be mixed at any frame boundary with the same results
 * (tests/unit/test_codec.c and fuzz_codec compare them).
 */
static inline size_t dx__frame_whole(const dx_frame_fast *f, uint8_t *in, size_t len, uint8_t **payload,
                                     size_t *plen, unsigned *opcode)
{
    if (!f->ok || len < 2)
        return 0;
    unsigned b0 = in[0], b1 = in[1];
    if (b0 - (0x80u | DX_OP_TEXT) > 1u)
        return 0; /* FIN, no RSV bit, TEXT (0x81) or BINARY (0x82) */
    if ((b1 & 0x80u) != f->mbit)
        return 0; /* §5.1: refused by the slow path (1002) */
    size_t n = b1 & 0x7Fu, hl = 2 + (f->mbit >> 5); /* + 4 for the key */
    if (n - 1 >= 125) {
        if (n != 126 || len < 4)
            return 0; /* empty frames and 64-bit lengths: the slow path */
        n = ((size_t)in[2] << 8) | in[3];
        if (n == 0)
            return 0;
        hl += 2;
    }
    if (len < hl + n || n - 1 > f->max1)
        return 0; /* incomplete, or over a limit (1009 from the slow path) */
    if (f->mbit)
        dx__mask0(in + hl, n, in + hl - 4);
    *payload = in + hl;
    *plen = n;
    *opcode = b0 & 0x0Fu;
    return hl + n;
}

/* Header size for a payload of `len` bytes (2-14). */
size_t dx__frame_header_size(uint64_t len, bool masked);

/*
 * Writes the header of a frame into out (at least DX_FRAME_HEADER_MAX bytes)
 * with the minimal length encoding; `key` NULL means unmasked. Returns the
 * number of bytes written. The caller masks the payload (dx__mask).
 */
size_t dx__frame_header_write(uint8_t *out, unsigned opcode, bool fin, unsigned rsv, uint64_t len,
                              const uint8_t *key);

#endif
