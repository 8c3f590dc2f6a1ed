/*
 * src/net/tls.c: the TLS transport (OpenSSL 3), server side.
 *
 * Layer: net. The only file that includes <openssl/ssl.h>. Certificates are
 * PEM files; the first is the default and the others are picked by SNI when
 * one of their names matches (X509_check_host). ALPN: "http/1.1" when the
 * client offers it; a client that offers only other protocols (h2) goes on
 * without ALPN rather than failing. TLS 1.2 is the minimum.
 *
 * Memory: SSL_MODE_RELEASE_BUFFERS gives record buffers back while a
 * connection is idle. Writes: up to 16 KiB of an iovec is coalesced into one
 * record; a write that blocked is retried with the same leading bytes, which
 * SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER permits.
 *
 * Certificate reload (dx_server_reload_tls): a server context is reference
 * counted: its owner holds one reference and each accepted SSL another
 * (kept in the SSL's ex_data, dropped by tls_close), because the SNI
 * callback of a handshake still in progress reads the context's list. A
 * swapped-out context thus lives until its last connection closes; the
 * connections keep the certificate they were accepted with.
 */
#define _GNU_SOURCE
#include "net/transport.h"

#include "core/seams.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <arpa/inet.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define COALESCE_MAX (16u * 1024u)

struct dx__tls_ctx {
    int insecure; /* client contexts only */
    atomic_uint refs; /* the owner's, plus one per server-side SSL made from it (dx__tls_accept) */
    size_t n;
    SSL_CTX *ctx[]; /* ctx[0] is the default */
};

static void tls_errbuf(char *buf, size_t len, const char *what, const char *file)
{
    unsigned long e = ERR_get_error();
    char reason[256] = "unknown error";
    if (e)
        ERR_error_string_n(e, reason, sizeof reason);
    snprintf(buf, len, "%s %s: %s", what, file ? file : "", reason);
    ERR_clear_error();
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    for (unsigned i = 0; i < inlen;) {
        unsigned len = in[i];
        if (i + 1 + len > inlen)
            break;
        if (len == 8 && memcmp(in + i + 1, "http/1.1", 8) == 0) {
            *out = in + i + 1;
            *outlen = (unsigned char)len;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + len;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

/* The SSL ex_data slot holding a server SSL's dx__tls_ctx reference. */
static int ssl_ctx_idx = -1;
static pthread_once_t ssl_ctx_once = PTHREAD_ONCE_INIT;
static void ssl_ctx_idx_init(void)
{
    ssl_ctx_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static int sni_select(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    dx__tls_ctx *tc = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name)
        return SSL_TLSEXT_ERR_OK; /* no SNI: the default certificate */
    for (size_t i = 0; i < tc->n; i++) {
        X509 *cert = SSL_CTX_get0_certificate(tc->ctx[i]);
        if (cert && X509_check_host(cert, name, 0, 0, NULL) == 1) {
            if (i)
                SSL_set_SSL_CTX(ssl, tc->ctx[i]);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_OK; /* unknown name: the default certificate */
}

dx__tls_ctx *dx__tls_server_ctx_new(const dx_tls_cert *certs, size_t n, char *errbuf, size_t errlen, int *err)
{
    *err = DX_ENOMEM;
    if (n == 0) {
        *err = DX_EINVAL;
        return NULL;
    }
    dx__tls_ctx *tc = dx__alloc(NULL, sizeof *tc + n * sizeof(SSL_CTX *));
    if (!tc)
        return NULL;
    memset(tc, 0, sizeof *tc + n * sizeof(SSL_CTX *));
    atomic_init(&tc->refs, 1);
    tc->n = n;
    *err = DX_ETLS;
    pthread_once(&ssl_ctx_once, ssl_ctx_idx_init);
    if (ssl_ctx_idx < 0) {
        tls_errbuf(errbuf, errlen, "SSL_get_ex_new_index", NULL);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
        if (!ctx) {
            tls_errbuf(errbuf, errlen, "SSL_CTX_new", NULL);
            goto fail;
        }
        tc->ctx[i] = ctx;
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_COMPRESSION);
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                  SSL_MODE_RELEASE_BUFFERS);
        if (SSL_CTX_use_certificate_chain_file(ctx, certs[i].cert_file) != 1) {
            tls_errbuf(errbuf, errlen, "cannot load certificate", certs[i].cert_file);
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, certs[i].key_file, SSL_FILETYPE_PEM) != 1) {
            tls_errbuf(errbuf, errlen, "cannot load private key", certs[i].key_file);
            goto fail;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
            tls_errbuf(errbuf, errlen, "private key does not match certificate", certs[i].cert_file);
            goto fail;
        }
        SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    }
    SSL_CTX_set_tlsext_servername_callback(tc->ctx[0], sni_select);
    SSL_CTX_set_tlsext_servername_arg(tc->ctx[0], tc);
    *err = 0;
    return tc;
fail:
    dx__tls_ctx_free(tc);
    return NULL;
}

void dx__tls_ctx_free(dx__tls_ctx *tc)
{
    if (!tc || atomic_fetch_sub(&tc->refs, 1) != 1)
        return;
    for (size_t i = 0; i < tc->n; i++)
        SSL_CTX_free(tc->ctx[i]);
    dx__free(NULL, tc);
}

int dx__tls_accept(dx__tls_ctx *tc, dx__stream *s, int fd)
{
    SSL *ssl = SSL_new(tc->ctx[0]);
    if (!ssl)
        return DX_ENOMEM;
    if (SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        return DX_ETLS;
    }
    if (SSL_set_ex_data(ssl, ssl_ctx_idx, tc) != 1) {
        SSL_free(ssl);
        return DX_ENOMEM;
    }
    atomic_fetch_add(&tc->refs, 1); /* dropped by tls_close */
    SSL_set_accept_state(ssl);
    s->tls = ssl;
    return 0;
}

dx__tls_ctx *dx__tls_client_ctx_new(const char *ca_file, int insecure, char *errbuf, size_t errlen, int *err)
{
    *err = DX_ENOMEM;
    dx__tls_ctx *tc = dx__alloc(NULL, sizeof *tc + sizeof(SSL_CTX *));
    if (!tc)
        return NULL;
    memset(tc, 0, sizeof *tc + sizeof(SSL_CTX *));
    atomic_init(&tc->refs, 1);
    tc->n = 1;
    tc->insecure = insecure;
    *err = DX_ETLS;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        tls_errbuf(errbuf, errlen, "SSL_CTX_new", NULL);
        goto fail;
    }
    tc->ctx[0] = ctx;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);
    if (insecure) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        int ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL) : SSL_CTX_set_default_verify_paths(ctx);
        if (ok != 1) {
            tls_errbuf(errbuf, errlen, ca_file ? "cannot load CA file" : "cannot load the system CA store",
                       ca_file);
            goto fail;
        }
    }
    *err = 0;
    return tc;
fail:
    dx__tls_ctx_free(tc);
    return NULL;
}

int dx__tls_client_ctx_cert(dx__tls_ctx *tc, const char *cert_file, const char *key_file, char *errbuf,
                            size_t errlen)
{
    SSL_CTX *ctx = tc->ctx[0];
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        tls_errbuf(errbuf, errlen, "cannot load the client certificate", cert_file);
        return DX_ETLS;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        tls_errbuf(errbuf, errlen, "cannot load the client key", key_file);
        return DX_ETLS;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        tls_errbuf(errbuf, errlen, "the client key does not match the certificate", key_file);
        return DX_ETLS;
    }
    return 0;
}

int dx__tls_connect(dx__tls_ctx *tc, dx__stream *s, int fd, const char *host)
{
    SSL *ssl = SSL_new(tc->ctx[0]);
    if (!ssl)
        return DX_ENOMEM;
    if (SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        return DX_ETLS;
    }
    SSL_set_connect_state(ssl);
    unsigned char ip[16];
    bool is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    if (!is_ip)
        /* SNI: names only (RFC 6066 §3). The macro casts away const; call
         * the control function it expands to with an explicit cast. */
        SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name, (void *)(uintptr_t)host);
    if (!tc->insecure) {
        X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
        int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, host) : X509_VERIFY_PARAM_set1_host(param, host, 0);
        if (ok != 1) {
            SSL_free(ssl);
            return DX_ETLS;
        }
    }
    s->tls = ssl;
    return 0;
}

void dx__tls_describe_failure(const dx__stream *s, char *buf, size_t len)
{
    long v = s->tls ? SSL_get_verify_result(s->tls) : X509_V_OK;
    if (v != X509_V_OK) {
        snprintf(buf, len, "certificate verify failed: %s", X509_verify_cert_error_string(v));
        return;
    }
    unsigned long e = ERR_peek_last_error();
    if (e) {
        char reason[200];
        ERR_error_string_n(e, reason, sizeof reason);
        snprintf(buf, len, "TLS handshake failed: %s", reason);
        ERR_clear_error();
        return;
    }
    snprintf(buf, len, "TLS handshake failed");
}

/* Maps an SSL call's failure (dx__tls_want then says what a retryable one
 * waits for). */
static ssize_t ssl_fail(dx__stream *s, int rc)
{
    SSL *ssl = s->tls;
    int e = SSL_get_error(ssl, rc);
    switch (e) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        return DX_EAGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (errno == EAGAIN || errno == EINTR)
            return DX_EAGAIN;
        return errno == 0 ? 0 : DX_ECONNRESET;
    default:
        ERR_clear_error();
        return DX_ETLS;
    }
}

ssize_t dx__tls_read(dx__stream *s, uint8_t *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ERR_clear_error();
        int chunk = len - got > (size_t)INT32_MAX ? INT32_MAX : (int)(len - got);
        int rc = SSL_read(s->tls, buf + got, chunk);
        if (rc > 0) {
            got += (size_t)rc;
            continue;
        }
        ssize_t r = ssl_fail(s, rc);
        if (got > 0)
            return (ssize_t)got; /* report the bytes; the condition repeats next call */
        return r;
    }
    return (ssize_t)got;
}

static ssize_t tls_write_once(dx__stream *s, const void *p, size_t len)
{
    ERR_clear_error();
    int rc = SSL_write(s->tls, p, len > (size_t)INT32_MAX ? INT32_MAX : (int)len);
    if (rc > 0)
        return rc;
    return ssl_fail(s, rc);
}

ssize_t dx__tls_writev(dx__stream *s, const struct iovec *iov, int n)
{
    /* Small leading pieces are coalesced into one record of up to 16 KiB.
     * Always so, whatever follows them: a write that blocked is retried with
     * at least as many bytes as it offered (OpenSSL refuses a shorter retry),
     * and a queue only grows until it is written. */
    if (n > 1 && iov[0].iov_len < COALESCE_MAX) {
        uint8_t tmp[COALESCE_MAX];
        size_t off = 0;
        for (int i = 0; i < n && off < COALESCE_MAX; i++) {
            size_t take = iov[i].iov_len < COALESCE_MAX - off ? iov[i].iov_len : COALESCE_MAX - off;
            memcpy(tmp + off, iov[i].iov_base, take);
            off += take;
        }
        ssize_t w = tls_write_once(s, tmp, off);
        return w == 0 ? DX_ECONNRESET : w;
    }
    size_t done = 0;
    for (int i = 0; i < n; i++) {
        if (iov[i].iov_len == 0)
            continue;
        ssize_t w = tls_write_once(s, iov[i].iov_base, iov[i].iov_len);
        if (w <= 0) {
            if (done)
                return (ssize_t)done;
            return w == 0 ? DX_ECONNRESET : w;
        }
        done += (size_t)w;
        if ((size_t)w < iov[i].iov_len)
            break;
    }
    return (ssize_t)done;
}

int dx__tls_handshake(dx__stream *s)
{
    ERR_clear_error();
    int rc = SSL_do_handshake(s->tls);
    if (rc == 1)
        return 0;
    ssize_t r = ssl_fail(s, rc);
    return r == DX_EAGAIN ? DX_EAGAIN : (r == 0 ? DX_ECONNRESET : (int)r);
}

void dx__tls_shutdown(dx__stream *s, int fd)
{
    if (s->tls && SSL_is_init_finished(s->tls)) {
        ERR_clear_error();
        (void)SSL_shutdown(s->tls); /* sends close_notify; we do not wait for the peer's */
    }
    if (fd >= 0)
        (void)shutdown(fd, SHUT_WR);
}

int dx__tls_pending(const dx__stream *s) { return s->tls && SSL_has_pending(s->tls); }

/* What OpenSSL's last call on the stream was waiting for when it failed
 * with WANT_READ/WANT_WRITE (its rwstate: SSL_get_error reads the same). */
int dx__tls_want(const dx__stream *s) { return SSL_want_write((SSL *)s->tls) ? DX__WANT_WRITE : DX__WANT_READ; }

void dx__tls_free(dx__stream *s)
{
    if (s->tls) {
        dx__tls_ctx *tc = ssl_ctx_idx >= 0 ? SSL_get_ex_data(s->tls, ssl_ctx_idx) : NULL;
        SSL_free(s->tls);
        dx__tls_ctx_free(tc); /* a server SSL's reference (client SSLs hold none) */
    }
    s->tls = NULL;
}
