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
