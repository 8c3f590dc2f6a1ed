/*
 * duplex/msg.h: prepared messages, encoded once and sent to any number of
 * connections (fan-out, broadcast).
 *
 * A dx_msg is built once from an opcode and a payload: the payload is copied
 * once, a text payload is validated once, and the unmasked frame header is
 * encoded once, in front of the payload, in one reference-counted block.
 * Sending it to a server-side connection queues a reference to that block
 * (no copy, no encoding, no validation per recipient); the bytes are written
 * with the connection's other output before its loop sleeps.
 *
 * Thread safety: a dx_msg is immutable and its reference count is atomic, so
 * it may be shared by the loops of several threads (hand one reference to
 * each, e.g. through dx_loop_post) and released on any thread. Sending it
 * must happen on the connection's loop thread, like every dx_conn call.
 */
#ifndef DUPLEX_MSG_H
#define DUPLEX_MSG_H

#include "duplex/duplex.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dx_msg dx_msg;
typedef struct dx_conn dx_conn;

/*
 * A message of `opcode` (DX_OP_TEXT or DX_OP_BINARY) with a copy of the
 * `len` bytes at `data` (which may be NULL when len is 0); the caller may
 * reuse its buffer at once. Reference count 1: the caller owns that
 * reference and drops it with dx_msg_unref. Returns NULL with *err (if not
 * NULL) set: DX_EINVAL (other opcode, or data NULL with len > 0), DX_EUTF8
 * (text that is not valid UTF-8), DX_ENOMEM. Fires no callback; callable
 * from any thread, inside a callback or not.
 */
DX_API dx_msg *dx_msg_new(int opcode, const void *data, size_t len, int *err);

/* Takes one more reference (atomic, any thread); returns m. */
DX_API dx_msg *dx_msg_ref(dx_msg *m);

/* Drops one reference (atomic, any thread); the last one frees the message.
 * Connections that queued it hold their own references, so the caller may
 * drop its reference right after sending. NULL is ignored. */
DX_API void dx_msg_unref(dx_msg *m);

/* The payload's length in bytes (the frame header not counted). */
DX_API size_t dx_msg_len(const dx_msg *m);

/*
 * Sends `m` on `c` as one whole message. A server-side connection queues a
 * reference to the encoded frame (no payload copy); a client-side one masks
 * a copy (RFC 6455 §5.3). The caller keeps its own reference. Returns 0;
 * DX_EINVAL (m or c NULL); DX_ECLOSED (closing or closed); DX_ESTATE (a
 * fragmented message is being sent); DX_ELIMIT (the send queue would pass
 * send_max: the connection is being closed with 1008 and the drop counted);
 * DX_ENOMEM; never DX_EUTF8 (validated by dx_msg_new). Fires no callback
 * (a failed write marks the connection; the loop reports it later). On the
 * connection's loop thread only; callable from any callback.
 */
DX_API int dx_conn_send_msg(dx_conn *c, dx_msg *m);

#ifdef __cplusplus
}
#endif

#endif /* DUPLEX_MSG_H */
