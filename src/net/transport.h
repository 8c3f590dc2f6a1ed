/*
 * src/net/transport.h: the byte-stream interface connections read and write
 * through (STYLE.md habit 5: one small interface, one file per
 * implementation — tcp.c, tls.c). Generic code never asks "is this TLS?".
 *
 * Every call is non-blocking. Results: a byte count; 0 from read at EOF;
 * DX_EAGAIN when the call would block, dx__stream_want then telling which
 * readiness (DX__WANT_READ / DX__WANT_WRITE) will let it progress; or an error:
 * DX_ECONNRESET (peer reset / broken pipe), DX_EIO, DX_ETLS.
 */
#ifndef DX_NET_TRANSPORT_H
#define DX_NET_TRANSPORT_H

#include "duplex/duplex.h" /* dx_tls_cert */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>

enum { DX__WANT_READ = 1, DX__WANT_WRITE = 2 };

/* A byte stream: the descriptor is the owner's (a connection keeps it in
 * its dx__io, the only copy), passed to each call; the stream holds only
 * the TLS state. The transport is TLS iff `tls` is set (tls.c sets it when
 * it starts a stream), plain TCP (or a Unix stream) otherwise: no vtable
 * pointer per stream. 8 bytes, so an idle connection pays one pointer. */
typedef struct dx__stream {
    void *tls; /* tls.c: SSL *; NULL: tcp.c */
} dx__stream;

#if defined(__x86_64__) && defined(__GNUC__)
/* The system call `nr`: its result, or -errno (never sets errno). Inline:
 * libc's wrappers of the hot calls are cancellation points, and its
 * syscall() shuffles six arguments and sets errno (tcp.c). */
static inline long dx__raw_syscall6(long nr, long a, long b, long c, long d, long e, long f)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#else
/* tcp.c: through syscall(2), the result or -errno. */
long dx__raw_syscall6(long nr, long a, long b, long c, long d, long e, long f);
#endif

/* tcp.c: the plain transport's calls (the descriptor is all it needs). */
/* An errno value as a DX_E* result (DX_EAGAIN, DX_ECONNRESET, DX_EIO). */
ssize_t dx__tcp_error(int e);
ssize_t dx__tcp_read(int fd, uint8_t *buf, size_t len);
ssize_t dx__tcp_writev(int fd, const struct iovec *iov, int n);
ssize_t dx__tcp_sendfile(int fd, int file, int64_t *off, size_t len);
void dx__tcp_shutdown(int fd);

/* tls.c: the TLS transport's (the SSL holds the descriptor). */
ssize_t dx__tls_read(dx__stream *s, uint8_t *buf, size_t len);
ssize_t dx__tls_writev(dx__stream *s, const struct iovec *iov, int n);
int dx__tls_handshake(dx__stream *s);
void dx__tls_shutdown(dx__stream *s, int fd);
int dx__tls_pending(const dx__stream *s);
int dx__tls_want(const dx__stream *s);
void dx__tls_free(dx__stream *s);

/* The interface generic code uses: one branch on s->tls picks the
 * implementation (a direct call, no function pointer to load). */

/* Reads as much as fits in buf (several TLS records if available), so a
 * short count means "drained for now". */
static inline ssize_t dx__stream_read(dx__stream *s, int fd, uint8_t *buf, size_t len)
{
    if (s->tls)
        return dx__tls_read(s, buf, len);
    long r = dx__raw_syscall6(SYS_recvfrom, fd, (long)(uintptr_t)buf, (long)len, 0, 0, 0); /* dx__tcp_read */
    return r >= 0 ? r : dx__tcp_error((int)-r);
}

/* Writes a prefix of the iovec; the caller keeps the rest. A TLS write
 * that returned DX_EAGAIN must be retried with the same bytes. */
static inline ssize_t dx__stream_writev(dx__stream *s, int fd, const struct iovec *iov, int n)
{
    if (s->tls)
        return dx__tls_writev(s, iov, n);
    if (n != 1)
        return dx__tcp_writev(fd, iov, n);
    long r = dx__raw_syscall6(SYS_sendto, fd, (long)(uintptr_t)iov[0].iov_base, (long)iov[0].iov_len, MSG_NOSIGNAL,
                              0, 0); /* send(2), as dx__tcp_writev */
    return r >= 0 ? r : dx__tcp_error((int)-r);
}

/* True when the stream can write up to len bytes of the file `file` from
 * *off straight from the kernel (sendfile(2), dx__stream_sendfile): plain
 * TCP only (TLS bytes must go through the library). */
static inline bool dx__stream_can_sendfile(const dx__stream *s) { return !s->tls; }
static inline ssize_t dx__stream_sendfile(dx__stream *s, int fd, int file, int64_t *off, size_t len)
{
    (void)s;
    return dx__tcp_sendfile(fd, file, off, len);
}

/* Drives the transport's own handshake: 0 when done, DX_EAGAIN, error. */
static inline int dx__stream_handshake(dx__stream *s) { return s->tls ? dx__tls_handshake(s) : 0; }

/* After DX_EAGAIN from a call: the readiness (DX__WANT_READ or
 * DX__WANT_WRITE) that lets it progress. Plain TCP: a read waits for input,
 * a write for room (the caller knows which it made; the handshake never
 * waits). TLS: what OpenSSL's last call waited for (a read may need to
 * write, a write to read). */
static inline int dx__stream_want(const dx__stream *s) { return s->tls ? dx__tls_want(s) : DX__WANT_READ; }

/* Stops sending (TCP FIN; TLS close_notify then FIN). Best effort. */
static inline void dx__stream_shutdown(dx__stream *s, int fd)
{
    if (s->tls)
        dx__tls_shutdown(s, fd);
    else
        dx__tcp_shutdown(fd);
}

/* True when input is buffered inside the transport (TLS records read from
 * the socket but not yet returned), which epoll cannot report. */
static inline int dx__stream_pending(const dx__stream *s) { return s->tls && dx__tls_pending(s); }

/* Frees the transport state and closes fd (if >= 0). */
void dx__stream_close(dx__stream *s, int fd);

/* TLS server context: one or more certificates (SNI picks), ALPN http/1.1.
 * Returns an opaque context or NULL with *err = DX_ETLS and a reason in
 * errbuf. */
typedef struct dx__tls_ctx dx__tls_ctx;
dx__tls_ctx *dx__tls_server_ctx_new(const dx_tls_cert *certs, size_t n, char *errbuf, size_t errlen,
                                    int *err);
/* Drops the caller's reference: the context is freed once no SSL accepted
 * from it remains (each holds a reference until its stream is closed). */
void dx__tls_ctx_free(dx__tls_ctx *ctx);
/* Starts a server-side TLS stream on fd. Returns 0 or DX_ENOMEM/DX_ETLS. */
int dx__tls_accept(dx__tls_ctx *ctx, dx__stream *s, int fd);

/* TLS client context: verification against the system store (or `ca_file`
 * only), unless `insecure`. NULL with *err = DX_ETLS and a reason in errbuf. */
dx__tls_ctx *dx__tls_client_ctx_new(const char *ca_file, int insecure, char *errbuf, size_t errlen, int *err);
/* Adds a client certificate (PEM, chain allowed) and its PEM private key to
 * a client context, presented when the server asks (mutual TLS). 0, or
 * DX_ETLS with a reason in errbuf (unreadable file, key not matching). */
int dx__tls_client_ctx_cert(dx__tls_ctx *ctx, const char *cert_file, const char *key_file, char *errbuf,
                            size_t errlen);
/* Starts a client-side TLS stream on fd for `host` (SNI unless an IP
 * literal; the certificate must match the name or IP unless insecure). */
int dx__tls_connect(dx__tls_ctx *ctx, dx__stream *s, int fd, const char *host);
/* After a failed TLS handshake: why, e.g. "certificate verify failed:
 * self-signed certificate" or "hostname mismatch". */
void dx__tls_describe_failure(const dx__stream *s, char *buf, size_t len);

#endif
