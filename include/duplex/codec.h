/*
 * duplex/codec.h: the sans-I/O WebSocket session (RFC 6455 §5-§7).
 *
 * A dx_codec turns bytes received from the peer into callbacks and turns
 * messages, pings and close requests into bytes to send. It never touches a
 * socket, a clock or a thread: the caller moves bytes in (dx_codec_recv) and
 * out (dx_codec_out / dx_codec_out_consume). Either role: a server expects
 * masked frames and sends unmasked ones, a client the reverse, with a fresh
 * mask key per frame from the seams' randomness.
 *
 * What it does for you:
 *  - reassembles fragmented messages (or streams them, see on_fragment),
 *    validates UTF-8 of text messages as bytes arrive (1007 at the first bad
 *    byte), enforces frame/message/fragment limits at the frame header
 *    before buffering anything (1009, 1008);
 *  - answers pings with pongs (unless disabled), delivers control frames
 *    that arrive between the fragments of a message;
 *  - runs the close handshake: once a close frame is sent nothing else is;
 *    a received close is answered with a close echoing its code;
 *  - on any protocol violation it queues the RFC's close frame (1002, 1007,
 *    1008, 1009) and stops reading;
 *  - permessage-deflate (RFC 7692) once the application's handshake
 *    negotiated it (duplex/deflate.h: dx_deflate_client_offer,
 *    dx_deflate_server_accept, dx_deflate_client_check give the header
 *    values and the parameters): compressed messages are inflated (bounded
 *    by max_message, counted inflated) and whole messages of at least
 *    min_size bytes are sent compressed.
 *
 * Not thread-safe: a codec belongs to one thread at a time.
 */
#ifndef DUPLEX_CODEC_H
#define DUPLEX_CODEC_H

#include "duplex/deflate.h"
#include "duplex/duplex.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dx_codec dx_codec;

#define DX_CODEC_DEFAULT_MAX_MESSAGE (1u << 20) /* 1 MiB */
#define DX_CODEC_DEFAULT_MAX_FRAGMENTS 1024u
/* The fragment cost rule (docs/limits.md): each frame of a data message
 * costs this many bytes, paid from max_fragments frames plus the message's
 * own payload. Frame n is refused (close 1008) when
 * n > max_fragments + payload / DX_CODEC_FRAGMENT_COST, payload counting the
 * message's bytes through frame n: messages whose frames average 64 bytes or
 * more are never refused for their frame count; floods of empty or tiny
 * frames are refused after about max_fragments frames. */
#define DX_CODEC_FRAGMENT_COST 64u

/*
 * Callbacks. Every pointer passed to them is borrowed until the callback
 * returns. A callback may call dx_codec_send*, dx_codec_ping/pong and
 * dx_codec_close on the same codec, but must not call dx_codec_recv or
 * dx_codec_free on it.
 */
typedef struct dx_codec_callbacks {
    /* A complete data message (opcode DX_OP_TEXT or DX_OP_BINARY); text is
     * valid UTF-8. Not called when on_fragment is set. */
    void (*on_message)(void *ud, int opcode, const uint8_t *data, size_t len);
    /* Optional streaming: pieces of a data message as they arrive, already
     * validated; `fin` is 1 on the last piece (which may be empty). When set,
     * messages are not buffered and on_message is not called. */
    void (*on_fragment)(void *ud, int opcode, const uint8_t *data, size_t len, int fin);
    /* A ping (payload <= 125 bytes); the pong is already queued unless
     * auto-pong is off. Optional. */
    void (*on_ping)(void *ud, const uint8_t *data, size_t len);
    /* A pong. Optional. */
    void (*on_pong)(void *ud, const uint8_t *data, size_t len);
    /* The peer's close frame: its code (DX_CLOSE_NO_STATUS when it had none)
     * and reason (valid UTF-8, not NUL-terminated). The reply is already
     * queued when the peer closed first. Optional. */
    void (*on_close)(void *ud, unsigned code, const char *reason, size_t len);
} dx_codec_callbacks;

typedef struct dx_codec_config {
    int role;                  /* DX_ROLE_SERVER or DX_ROLE_CLIENT */
    size_t max_message;        /* bytes of one data message; 0: DX_CODEC_DEFAULT_MAX_MESSAGE. Over: 1009 */
    size_t max_frame;          /* bytes of one frame's payload; 0: same as max_message. Over: 1009 */
    size_t max_fragments;      /* frame allowance of one data message (the cost rule above); 0: DX_CODEC_DEFAULT_MAX_FRAGMENTS. Over: 1008 */
    size_t max_output;         /* bytes queued for sending before sends fail with DX_ELIMIT; 0: no limit */
    unsigned rsv_allowed;      /* RSV bits negotiated by an extension (DX_RSV1 for permessage-deflate) */
    int no_auto_pong;          /* 1: do not answer pings automatically */
    const dx_seams *seams;     /* NULL: dx_seams_default(); must outlive the codec */
    dx_codec_callbacks cb;
    void *ud;                  /* passed to every callback */

    /* Read by dx_codec_new_sized only (dx_codec_new stops before them). */
    const dx_deflate_info *deflate;        /* permessage-deflate as negotiated; NULL: off (rsv_allowed
                                              then decides what RSV bits pass through raw) */
    const dx_deflate_options *deflate_opt; /* level, mem_level, min_size; NULL: the defaults */
} dx_codec_config;

enum dx_codec_state {
    DX_CODEC_OPEN = 0,       /* messages flow both ways */
    DX_CODEC_CLOSE_SENT,     /* we sent a close frame; waiting for the peer's */
    DX_CODEC_CLOSED,         /* close frames went both ways: flush the output, then end the transport */
    DX_CODEC_FAILED          /* the peer broke the protocol: flush the output (our close frame), then end */
};

/* A new codec in state OPEN. `cfg` is copied. NULL on DX_ENOMEM or a config
 * that makes no sense (role not a dx_role); *err (if not NULL) says which. */
DX_API dx_codec *dx_codec_new(const dx_codec_config *cfg, int *err);

/* The same, for a config of `cfg_size` bytes (sizeof(dx_codec_config) of
 * the caller's header; the size rule of option structs is in
 * duplex/loop.h): the fields past dx_codec_new's (permessage-deflate) are
 * read only here. Also DX_EINVAL for deflate parameters out of range. */
DX_API dx_codec *dx_codec_new_sized(const dx_codec_config *cfg, size_t cfg_size, int *err);

/* Frees the codec and everything it buffered. NULL is ignored. */
DX_API void dx_codec_free(dx_codec *c);

/*
 * Feeds bytes received from the peer and fires callbacks for every event
 * they complete. The bytes are modified (unmasked in place) and are not kept
 * after the call; any split of a stream gives the same callbacks.
 * Returns 0, or when the peer broke the protocol: DX_EPROTO (1002),
 * DX_EUTF8 (1007), DX_ETOOBIG (1009), DX_EPOLICY (1008) — the close frame
 * with that code is queued and the codec is FAILED; DX_ENOMEM when a message
 * could not be buffered (1011 queued, FAILED); DX_ECLOSED when called after
 * the close handshake ended or failed (the bytes are ignored, as §5.5.1 says
 * nothing may follow a close frame).
 */
DX_API int dx_codec_recv(dx_codec *c, uint8_t *data, size_t len);

/*
 * Queues a whole message (DX_OP_TEXT or DX_OP_BINARY). The bytes are copied.
 * Returns 0; DX_EINVAL (bad opcode); DX_EUTF8 (text not valid UTF-8);
 * DX_ESTATE (a fragmented message is being sent); DX_ECLOSED (a close frame
 * was sent or the codec failed); DX_ELIMIT (max_output would be passed);
 * DX_ENOMEM; DX_ERANDOM (client: no mask key).
 */
DX_API int dx_codec_send(dx_codec *c, int opcode, const void *data, size_t len);

/*
 * Queues one frame of a fragmented message: the first call names the
 * message's opcode (TEXT or BINARY), later calls pass the same opcode; `fin`
 * 1 ends the message. Control frames may be sent between fragments. Text is
 * validated across fragments (a character may span two). Errors as for
 * dx_codec_send; DX_EINVAL also when the opcode differs from the open
 * message's.
 */
DX_API int dx_codec_send_fragment(dx_codec *c, int opcode, const void *data, size_t len, int fin);

/* Queues a ping / an unsolicited pong (len <= 125, else DX_EINVAL). Errors:
 * DX_ECLOSED, DX_ENOMEM, DX_ERANDOM. Not subject to max_output. */
DX_API int dx_codec_ping(dx_codec *c, const void *data, size_t len);
DX_API int dx_codec_pong(dx_codec *c, const void *data, size_t len);

/*
 * Starts the close handshake: queues a close frame with `code` (0: no status
 * code, then reason must be empty) and an optional UTF-8 reason of at most
 * 123 bytes. Afterwards nothing else is sent; received data is still
 * delivered until the peer's close arrives. Returns 0; DX_EINVAL (a code
 * that may not be sent, see dx_close_code_valid, or a reason too long);
 * DX_EUTF8 (reason not UTF-8); DX_ECLOSED (already sent or failed);
 * DX_ENOMEM; DX_ERANDOM.
 */
DX_API int dx_codec_close(dx_codec *c, unsigned code, const char *reason, size_t reason_len);

/* Bytes waiting to be sent: a pointer to them (valid until the next call on
 * the codec) and their count in *len. */
DX_API const uint8_t *dx_codec_out(const dx_codec *c, size_t *len);

/* Marks the first `n` output bytes as sent (n <= the pending count). */
DX_API void dx_codec_out_consume(dx_codec *c, size_t n);

DX_API int dx_codec_state(const dx_codec *c);

/* The code of the close frame we sent (0 when none), the code the peer sent
 * (0 when none arrived, DX_CLOSE_NO_STATUS when it had no code), and the
 * error that failed the codec (0 when it did not fail). */
DX_API unsigned dx_codec_close_sent(const dx_codec *c);
DX_API unsigned dx_codec_close_received(const dx_codec *c);
DX_API int dx_codec_error(const dx_codec *c);

/* Pongs not sent because max_output was reached (a ping flood from a peer
 * that does not read). */
DX_API uint64_t dx_codec_pongs_dropped(const dx_codec *c);

#ifdef __cplusplus
}
#endif

#endif /* DUPLEX_CODEC_H */
