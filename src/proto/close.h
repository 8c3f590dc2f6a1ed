/*
 * src/proto/close.h: close frame payloads (RFC 6455 §5.5.1, §7.4). Pure.
 */
#ifndef DX_PROTO_CLOSE_H
#define DX_PROTO_CLOSE_H

#include <stddef.h>
#include <stdint.h>

#define DX_CLOSE_REASON_MAX 123 /* 125 - the 2-byte code */

/*
 * Parses a received close payload. On success *code is the status code
 * (DX_CLOSE_NO_STATUS when the payload is empty) and *reason points into `p`.
 * Returns 0; DX_EPROTO (1002) for a 1-byte payload, a payload over 125 bytes
 * or a code that may not be sent (see dx_close_code_valid); DX_EUTF8 (1007)
 * when the reason is not valid UTF-8.
 */
int dx__close_parse(const uint8_t *p, size_t len, uint16_t *code, const uint8_t **reason, size_t *reason_len);

/*
 * Writes a close payload into out (at least 125 bytes). code 0 writes an
 * empty payload (no status). The reason is cut to DX_CLOSE_REASON_MAX bytes
 * at a UTF-8 character boundary. Returns the payload length.
 */
size_t dx__close_write(uint8_t *out, unsigned code, const char *reason, size_t reason_len);

#endif
