/*
 * src/proto/utf8.h: streaming UTF-8 validation (RFC 3629, as RFC 6455 §8.1
 * requires for text messages and close reasons).
 *
 * A validator carries the state of an unfinished sequence across calls, so a
 * message may be fed in any split (frames, reads). It rejects at the first
 * byte that cannot start or continue a valid sequence: overlong forms,
 * surrogates U+D800-U+DFFF, code points above U+10FFFF, bytes C0, C1, F5-FF,
 * stray continuation bytes. A sequence still open at the end of the message is
 * rejected by dx__utf8_finish. ASCII runs are checked a word at a time.
 */
#ifndef DX_PROTO_UTF8_H
#define DX_PROTO_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct dx_utf8 {
    uint32_t state; /* 0: between sequences; otherwise implementation state */
} dx_utf8;

static inline void dx__utf8_init(dx_utf8 *v) { v->state = 0; }

/*
 * Feeds `len` bytes. Returns 0 when all are valid so far (a sequence may be
 * left open), or DX_EUTF8 at the first invalid byte, whose index in `p` is
 * stored in *bad_at when bad_at is not NULL. After DX_EUTF8 the validator
 * stays failed until re-initialised.
 */
int dx__utf8_feed(dx_utf8 *v, const uint8_t *p, size_t len, size_t *bad_at);

/* Ends a message: 0 when no sequence is left open, else DX_EUTF8. */
int dx__utf8_finish(const dx_utf8 *v);

/* One-shot check of a complete string. */
bool dx__utf8_valid(const uint8_t *p, size_t len);

#endif
