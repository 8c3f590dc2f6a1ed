/*
 * src/net/transport.h: the byte-stream interface connections read and write
 * through (STYLE.md habit 5: one small interface, one file per
 * implementation — tcp.c, tls.c). Generic code never asks "is this TLS?".
 *
 * Every call is non-blocking. Results: a byte count; 0 from read at EOF;
 * DX_EAGAIN when the call would block, with s->want telling which readiness
 * (DX__WANT_READ / DX__WANT_WRITE) will let it progress; or an error:
 * DX_ECONNRESET (peer reset / broken pipe), DX_EIO, DX_ETLS.
 */
#ifndef DX_NET_TRANSPORT_H
#define DX_NET_TRANSPORT_H

#include "duplex/duplex.h" /* dx_tls_cert */

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

enum { DX__WANT_READ = 1, DX__WANT_WRITE = 2 };

typedef struct dx__stream dx__stream;

typedef struct dx__transport {
    const char *name;
    /* Reads as much as fits in buf (several TLS records if available), so a
     * short count means "drained for now". */
    ssize_t (*read)(dx__stream *s, uint8_t *buf, size_t len);
    /* Writes a prefix of the iovec; the caller keeps the rest. A TLS write
     * that returned DX_EAGAIN must be retried with the same bytes. */
    ssize_t (*writev)(dx__stream *s, const struct iovec *iov, int n);
    /* Writes up to len bytes of the file `fd` from *off (advanced) straight
     * from the kernel (sendfile(2)); the file is the caller's. NULL when the
     * transport cannot (TLS: bytes must go through the library). */
    ssize_t (*sendfile)(dx__stream *s, int fd, int64_t *off, size_t len);
    /* Drives the transport's own handshake: 0 when done, DX_EAGAIN, error. */
    int (*handshake)(dx__stream *s);
    /* Stops sending (TCP FIN; TLS close_notify then FIN). Best effort. */
    void (*shutdown)(dx__stream *s);
    /* True when input is buffered inside the transport (TLS records read
     * from the socket but not yet returned), which epoll cannot report. */
    int (*pending)(const dx__stream *s);
    /* Closes the descriptor and frees transport state. */
    void (*close)(dx__stream *s);
} dx__transport;

struct dx__stream {
    const dx__transport *t;
    void *tls;    /* tls.c: SSL *; tcp.c: NULL */
    int fd;
    uint8_t want; /* after DX_EAGAIN */
};

extern const dx__transport dx__tcp_transport;
extern const dx__transport dx__tls_transport;

/* TLS server context: one or more certificates (SNI picks), ALPN http/1.1.
 * Returns an opaque context or NULL with *err = DX_ETLS and a reason in
 * errbuf. */
typedef struct dx__tls_ctx dx__tls_ctx;
dx__tls_ctx *dx__tls_server_ctx_new(const dx_tls_cert *certs, size_t n, char *errbuf, size_t errlen,
                                    int *err);
/* Drops the caller's reference: the context is freed once no SSL accepted
 * from it remains (each holds a reference until its stream is closed). */
void dx__tls_ctx_free(dx__tls_ctx *ctx);
/* Starts a server-side TLS stream on s->fd. Returns 0 or DX_ENOMEM/DX_ETLS. */
int dx__tls_accept(dx__tls_ctx *ctx, dx__stream *s);

/* TLS client context: verification against the system store (or `ca_file`
 * only), unless `insecure`. NULL with *err = DX_ETLS and a reason in errbuf. */
dx__tls_ctx *dx__tls_client_ctx_new(const char *ca_file, int insecure, char *errbuf, size_t errlen, int *err);
/* Adds a client certificate (PEM, chain allowed) and its PEM private key to
 * a client context, presented when the server asks (mutual TLS). 0, or
 * DX_ETLS with a reason in errbuf (unreadable file, key not matching). */
int dx__tls_client_ctx_cert(dx__tls_ctx *ctx, const char *cert_file, const char *key_file, char *errbuf,
                            size_t errlen);
/* Starts a client-side TLS stream on s->fd for `host` (SNI unless an IP
 * literal; the certificate must match the name or IP unless insecure). */
int dx__tls_connect(dx__tls_ctx *ctx, dx__stream *s, const char *host);
/* After a failed TLS handshake: why, e.g. "certificate verify failed:
 * self-signed certificate" or "hostname mismatch". */
void dx__tls_describe_failure(const dx__stream *s, char *buf, size_t len);

#endif
