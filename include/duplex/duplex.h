/*
 * duplex: a WebSocket toolkit (RFC 6455, with permessage-deflate, RFC 7692:
 * duplex/deflate.h).
 *
 * The umbrella public header: version, the error vocabulary, the close-code
 * enum, the seams (allocator, randomness, clock), the log sink and the TLS
 * certificate pair. Every other public header includes this one.
 *
 * Conventions used by every declaration in include/duplex/:
 *  - functions return 0 (or a non-negative count) on success and a negative
 *    DX_E... code on failure; dx_strerror() names the code;
 *  - DX_EAGAIN is a flow result ("not yet"), never an error;
 *  - data passed to a callback is borrowed until the callback returns;
 *  - a function that takes a pointer says who owns it and for how long.
 */
#ifndef DUPLEX_DUPLEX_H
#define DUPLEX_DUPLEX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define DX_API __attribute__((visibility("default")))
#else
#define DX_API
#endif

#define DX_VERSION_MAJOR 0
#define DX_VERSION_MINOR 1
#define DX_VERSION_PATCH 0
#define DX_VERSION_STRING "0.1.0"

/* The version of the library actually linked (may differ from the header). */
DX_API const char *dx_version(void);

/*
 * The error table: one line per code, its value and its message.
 * Values are negative and stable; new codes are appended.
 */
#define DX_ERRNO_MAP(X)                                                                  \
    X(EAGAIN, -1, "operation would block; try again later (not an error)")               \
    X(ENOMEM, -2, "out of memory")                                                       \
    X(EINVAL, -3, "invalid argument")                                                    \
    X(ENOSPC, -4, "output buffer too small")                                             \
    X(EPROTO, -5, "WebSocket protocol violation by the peer")                            \
    X(EUTF8, -6, "invalid UTF-8 in a text message or close reason")                      \
    X(ETOOBIG, -7, "message or frame exceeds the configured limit")                      \
    X(EPOLICY, -8, "policy violation (a configured limit other than size)")              \
    X(ECLOSED, -9, "the connection is closing or closed")                                \
    X(ESTATE, -10, "operation not allowed in the current state")                         \
    X(EHTTP, -11, "malformed HTTP request or response")                                  \
    X(EHEADTOOBIG, -12, "HTTP head exceeds the size limit")                              \
    X(ETOOMANYHEADERS, -13, "HTTP head has more headers than allowed")                   \
    X(EHANDSHAKE, -14, "WebSocket opening handshake rejected")                           \
    X(EVERSION, -15, "unsupported Sec-WebSocket-Version (only 13 is supported)")         \
    X(EMETHOD, -16, "HTTP method not allowed for a WebSocket upgrade")                   \
    X(EEXTENSION, -17, "extension negotiation failed")                                   \
    X(ERANDOM, -18, "the randomness source failed")                                      \
    X(EIO, -19, "input/output error")                                                    \
    X(ETIMEDOUT, -20, "timed out")                                                       \
    X(ECONNRESET, -21, "connection reset by peer")                                       \
    X(ETLS, -22, "TLS error")                                                            \
    X(EADDR, -23, "bad or unresolvable address")                                         \
    X(ELIMIT, -24, "a resource limit was reached")                                       \
    X(EINTERNAL, -25, "internal error")

enum dx_error {
    DX_OK = 0,
#define DX__ERR_ENUM(name, value, msg) DX_##name = (value),
    DX_ERRNO_MAP(DX__ERR_ENUM)
#undef DX__ERR_ENUM
};

/* A static string naming `err` (any int; unknown codes get a generic text). */
DX_API const char *dx_strerror(int err);
/* The symbolic name of `err` ("DX_EPROTO"), or "DX_E?" for unknown codes. */
DX_API const char *dx_errname(int err);

/* RFC 6455 §7.4.1 close codes (and the IANA registry entries after it). */
enum dx_close_code {
    DX_CLOSE_NORMAL = 1000,
    DX_CLOSE_GOING_AWAY = 1001,
    DX_CLOSE_PROTOCOL_ERROR = 1002,
    DX_CLOSE_UNSUPPORTED_DATA = 1003,
    DX_CLOSE_NO_STATUS = 1005,    /* never on the wire */
    DX_CLOSE_ABNORMAL = 1006,     /* never on the wire */
    DX_CLOSE_INVALID_DATA = 1007, /* e.g. invalid UTF-8 */
    DX_CLOSE_POLICY = 1008,
    DX_CLOSE_TOO_BIG = 1009,
    DX_CLOSE_MANDATORY_EXT = 1010,
    DX_CLOSE_INTERNAL_ERROR = 1011,
    DX_CLOSE_SERVICE_RESTART = 1012,
    DX_CLOSE_TRY_AGAIN_LATER = 1013,
    DX_CLOSE_BAD_GATEWAY = 1014,
    DX_CLOSE_TLS_HANDSHAKE = 1015 /* never on the wire */
};

/*
 * The close code a connection sends when it fails with `err`:
 * DX_EPROTO→1002, DX_EUTF8→1007, DX_ETOOBIG→1009, DX_EPOLICY→1008,
 * DX_EEXTENSION→1010 (client role), DX_ETIMEDOUT/ECONNRESET/EIO/ETLS→1006,
 * DX_OK→1000, anything else→1011.
 */
DX_API int dx_close_code_for_error(int err);

/*
 * True when `code` may be sent in a close frame (RFC 6455 §7.4):
 * 1000-1003, 1007-1014 and 3000-4999. 1004-1006, 1015 and the unassigned
 * ranges may not.
 */
DX_API int dx_close_code_valid(unsigned code);

/* A short name for a close code ("normal", "protocol error", ...). */
DX_API const char *dx_close_code_name(unsigned code);

/*
 * The seams: side effects a test may replace. Every object that allocates,
 * draws random bytes or reads the clock takes a `const dx_seams *`; NULL means
 * dx_seams_default(). The struct is read, never written, by the library and
 * must outlive every object it was given to.
 *
 *  realloc(ud, ptr, size): like realloc(3), except size 0 frees `ptr` and
 *      returns NULL. Returns NULL when it cannot allocate.
 *  random(ud, buf, len):   fill `buf` with `len` unpredictable bytes; 0 or
 *      DX_ERANDOM. Default: getrandom(2).
 *  now_ns(ud):             monotonic time in nanoseconds. Default:
 *      clock_gettime(CLOCK_MONOTONIC).
 */
typedef struct dx_seams {
    void *(*realloc)(void *ud, void *ptr, size_t size);
    int (*random)(void *ud, void *buf, size_t len);
    uint64_t (*now_ns)(void *ud);
    void *ud;
} dx_seams;

DX_API const dx_seams *dx_seams_default(void);

/* RFC 6455 §5.2 opcodes. */
enum dx_opcode {
    DX_OP_CONT = 0x0,
    DX_OP_TEXT = 0x1,
    DX_OP_BINARY = 0x2,
    DX_OP_CLOSE = 0x8,
    DX_OP_PING = 0x9,
    DX_OP_PONG = 0xA
};

/* Which end of a connection we are: servers expect masked frames and send
 * unmasked ones; clients the reverse (RFC 6455 §5.1). */
enum dx_role { DX_ROLE_SERVER = 0, DX_ROLE_CLIENT = 1 };

/* The RSV bits of a frame's first byte, as stored in dx_frame_header.rsv. */
#define DX_RSV1 0x4u
#define DX_RSV2 0x2u
#define DX_RSV3 0x1u

/* One certificate for TLS (dx_server_options.tls): the first of a list is
 * the default, the others are chosen by SNI when their certificate's names
 * match. The strings are file paths, read when the endpoint is created. */
typedef struct dx_tls_cert {
    const char *cert_file; /* PEM chain */
    const char *key_file;  /* PEM private key */
} dx_tls_cert;

/* Log levels, most severe first. */
enum dx_log_level { DX_LOG_ERROR = 0, DX_LOG_WARN, DX_LOG_INFO, DX_LOG_DEBUG };

/*
 * A log sink: receives one finished line (no trailing newline) at a time.
 * `line` is borrowed until the call returns. Called on the thread that logs.
 */
typedef void (*dx_log_fn)(void *ud, int level, const char *line, size_t len);

typedef struct dx_log {
    dx_log_fn sink; /* NULL: lines go to stderr with a timestamp */
    void *ud;
    int level;      /* lines less severe than this are dropped */
} dx_log;

#ifdef __cplusplus
}
#endif

#endif /* DUPLEX_DUPLEX_H */
