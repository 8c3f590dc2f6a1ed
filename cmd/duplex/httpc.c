/*
 * cmd/duplex/httpc.c: a small blocking HTTP/1.1 client for `duplex pub`
 * (see httpc.h).
 *
 * Layer: the CLI. The library has no HTTP client and the gateway's API
 * needs only this much, so it is written here rather than pulling in
 * libcurl: one connection, blocking sockets with SO_RCVTIMEO/SO_SNDTIMEO
 * (connect bounded by poll), OpenSSL for https (the certificate and the
 * host name or IP address verified unless insecure). Answers: a status
 * line, headers (Content-Length, Transfer-Encoding: chunked, Connection,
 * Retry-After) and a body of at most HTTPC_BODY_MAX bytes, by length,
 * chunks or up to the end of the connection.
 */
#define _GNU_SOURCE
#include "httpc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

struct httpc {
    httpc_target t;       /* strings borrowed from the caller */
    int fd;               /* -1: not connected */
    SSL_CTX *ctx;
    SSL *ssl;
    bool reused;          /* answered a request already: a failure before any answer byte may be retried */
    uint8_t buf[HTTPC_HEAD_MAX];
    size_t len, off;      /* unread bytes: buf[off..len) */
    uint8_t out[16384];   /* a small request, head and body together */
};
typedef struct httpc http_conn;

static void hc_close(http_conn *h)
{
    if (h->ssl) {
        SSL_free(h->ssl);
        h->ssl = NULL;
    }
    if (h->fd >= 0)
        close(h->fd);
    h->fd = -1;
    h->len = h->off = 0;
    h->reused = false;
}

static void tls_error(char *why, size_t cap, const char *what)
{
    unsigned long e = ERR_get_error();
    char s[256] = "";
    if (e)
        ERR_error_string_n(e, s, sizeof s);
    snprintf(why, cap, "%s%s%s", what, *s ? ": " : "", s);
    ERR_clear_error();
}

/* TCP connect within timeout_ms, then blocking with SO_RCVTIMEO/SO_SNDTIMEO;
 * TLS for https (verified unless -k). 0, or -1 with `why`. */
static int hc_connect(http_conn *h, char *why, size_t cap)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    int rc = getaddrinfo(h->t.host, h->t.port, &hints, &ai);
    if (rc) {
        snprintf(why, cap, "cannot resolve %s: %s", h->t.host, gai_strerror(rc));
        return -1;
    }
    int fd = -1, err = 0;
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
            break;
        err = errno;
        if (err == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int n = poll(&p, 1, (int)h->t.timeout_ms);
            socklen_t sl = sizeof err;
            if (n == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &sl) == 0 && err == 0)
                break;
            if (n == 0)
                err = ETIMEDOUT;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0) {
        snprintf(why, cap, "cannot connect to %s:%s: %s", h->t.host, h->t.port, strerror(err));
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    struct timeval tv = {.tv_sec = h->t.timeout_ms / 1000, .tv_usec = (h->t.timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    h->fd = fd;
    h->len = h->off = 0;
    h->reused = false;
    if (!h->t.tls)
        return 0;
    if (!h->ctx) {
        h->ctx = SSL_CTX_new(TLS_client_method());
        if (!h->ctx) {
            tls_error(why, cap, "TLS setup failed");
            return -1;
        }
        if (h->t.insecure) {
            SSL_CTX_set_verify(h->ctx, SSL_VERIFY_NONE, NULL);
        } else {
            SSL_CTX_set_verify(h->ctx, SSL_VERIFY_PEER, NULL);
            if (h->t.ca_file ? SSL_CTX_load_verify_locations(h->ctx, h->t.ca_file, NULL) != 1
                           : SSL_CTX_set_default_verify_paths(h->ctx) != 1) {
                tls_error(why, cap, "cannot load the CA certificates");
                return -1;
            }
        }
    }
    h->ssl = SSL_new(h->ctx);
    if (!h->ssl) {
        tls_error(why, cap, "TLS setup failed");
        return -1;
    }
    SSL_set_fd(h->ssl, fd);
    unsigned char ip[16];
    bool is_ip = inet_pton(AF_INET, h->t.host, ip) == 1 || inet_pton(AF_INET6, h->t.host, ip) == 1;
    if (!is_ip)
        SSL_set_tlsext_host_name(h->ssl, h->t.host);
    if (!h->t.insecure) {
        if (is_ip)
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(h->ssl), h->t.host);
        else
            SSL_set1_host(h->ssl, h->t.host);
    }
    if (SSL_connect(h->ssl) != 1) {
        long vr = SSL_get_verify_result(h->ssl);
        if (vr != X509_V_OK) {
            snprintf(why, cap, "TLS: certificate verify failed: %s", X509_verify_cert_error_string(vr));
            ERR_clear_error();
        } else {
            tls_error(why, cap, "TLS handshake failed");
        }
        return -1;
    }
    return 0;
}

static int hc_write(http_conn *h, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w;
        if (h->ssl) {
            size_t done = 0;
            w = SSL_write_ex(h->ssl, b, n, &done) == 1 ? (ssize_t)done : -1;
        } else {
            w = send(h->fd, b, n, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
        }
        if (w <= 0)
            return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

/* More bytes into buf (compacting it first). >0 read, 0 EOF, -1 error or timeout. */
static int hc_fill(http_conn *h)
{
    if (h->off) {
        memmove(h->buf, h->buf + h->off, h->len - h->off);
        h->len -= h->off;
        h->off = 0;
    }
    if (h->len == sizeof h->buf)
        return -1;
    for (;;) {
        ssize_t r;
        if (h->ssl) {
            size_t got = 0;
            int ok = SSL_read_ex(h->ssl, h->buf + h->len, sizeof h->buf - h->len, &got);
            if (!ok) {
                int e = SSL_get_error(h->ssl, 0);
                ERR_clear_error();
                return e == SSL_ERROR_ZERO_RETURN ? 0 : -1;
            }
            r = (ssize_t)got;
        } else {
            r = recv(h->fd, h->buf + h->len, sizeof h->buf - h->len, 0);
            if (r < 0 && errno == EINTR)
                continue;
        }
        if (r < 0)
            return -1;
        h->len += (size_t)r;
        return r > 0 ? 1 : 0;
    }
}

/* Reads exactly n body bytes (appended to *body). 0 or -1. */
static int hc_read_n(http_conn *h, char **body, size_t *blen, size_t n)
{
    if (*blen + n > HTTPC_BODY_MAX)
        return -1;
    char *nb = realloc(*body, *blen + n + 1);
    if (!nb)
        return -1;
    *body = nb;
    while (n) {
        if (h->off == h->len && hc_fill(h) <= 0)
            return -1;
        size_t k = h->len - h->off < n ? h->len - h->off : n;
        memcpy(*body + *blen, h->buf + h->off, k);
        *blen += k;
        h->off += k;
        n -= k;
    }
    (*body)[*blen] = 0;
    return 0;
}

/* One line (CRLF or LF) of the buffer into out (NUL-terminated). 0 or -1. */
static int hc_line(http_conn *h, char *out, size_t cap)
{
    for (;;) {
        uint8_t *nl = memchr(h->buf + h->off, '\n', h->len - h->off);
        if (nl) {
            size_t n = (size_t)(nl - (h->buf + h->off));
            size_t k = n && nl[-1] == '\r' ? n - 1 : n;
            if (k >= cap)
                return -1;
            memcpy(out, h->buf + h->off, k);
            out[k] = 0;
            h->off += n + 1;
            return 0;
        }
        if (hc_fill(h) <= 0)
            return -1;
    }
}

/* Reads one answer. 0, or -1 (*got_any says whether any byte came). */
static int hc_answer(http_conn *h, httpc_answer *a, bool *got_any)
{
    char line[HTTPC_HEAD_MAX];
    memset(a, 0, sizeof *a);
    *got_any = false;
    if (h->off == h->len) {
        int r = hc_fill(h);
        if (r <= 0)
            return -1;
    }
    *got_any = true;
    if (hc_line(h, line, sizeof line) < 0)
        return -1;
    int minor = 0;
    if (sscanf(line, "HTTP/1.%d %d", &minor, &a->status) != 2)
        return -1;
    const char *rs = strchr(line, ' ');
    rs = rs ? strchr(rs + 1, ' ') : NULL;
    snprintf(a->reason, sizeof a->reason, "%s", rs ? rs + 1 : "");
    a->close = minor == 0;
    long long clen = -1;
    bool chunked = false;
    for (;;) {
        if (hc_line(h, line, sizeof line) < 0)
            return -1;
        if (!*line)
            break;
        char *colon = strchr(line, ':');
        if (!colon)
            continue;
        *colon = 0;
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        if (!strcasecmp(line, "content-length"))
            clen = strtoll(v, NULL, 10);
        else if (!strcasecmp(line, "transfer-encoding") && strcasestr(v, "chunked"))
            chunked = true;
        else if (!strcasecmp(line, "connection"))
            a->close = strcasestr(v, "close") != NULL;
        else if (!strcasecmp(line, "retry-after"))
            a->retry_after = (unsigned)strtoul(v, NULL, 10);
    }
    a->body = calloc(1, 1);
    if (!a->body)
        return -1;
    if (chunked) {
        for (;;) {
            if (hc_line(h, line, sizeof line) < 0)
                return -1;
            char *end;
            unsigned long long n = strtoull(line, &end, 16);
            if (end == line)
                return -1;
            if (n == 0) {
                do { /* trailers, up to the empty line */
                    if (hc_line(h, line, sizeof line) < 0)
                        return -1;
                } while (*line);
                break;
            }
            if (n > HTTPC_BODY_MAX || hc_read_n(h, &a->body, &a->body_len, (size_t)n) < 0 ||
                hc_line(h, line, sizeof line) < 0)
                return -1;
        }
    } else if (clen >= 0) {
        if (clen > (long long)HTTPC_BODY_MAX || hc_read_n(h, &a->body, &a->body_len, (size_t)clen) < 0)
            return -1;
    } else {
        a->close = true; /* the body runs to the end of the connection */
        for (;;) {
            size_t k = h->len - h->off;
            if (k && hc_read_n(h, &a->body, &a->body_len, k) < 0)
                return -1;
            int r = hc_fill(h);
            if (r == 0)
                break;
            if (r < 0)
                return -1;
        }
    }
    return 0;
}

httpc *httpc_new(const httpc_target *t)
{
    httpc *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->t = *t;
    h->fd = -1;
    return h;
}

void httpc_free(httpc *h)
{
    if (!h)
        return;
    hc_close(h);
    if (h->ctx)
        SSL_CTX_free(h->ctx);
    free(h);
}

void httpc_answer_free(httpc_answer *a)
{
    free(a->body);
    a->body = NULL;
}

int httpc_request(httpc *h, const char *head, size_t head_len, const void *body, size_t len, httpc_answer *a,
                  char *why, size_t cap)
{
    for (int attempt = 0;; attempt++) {
        if (h->fd < 0 && hc_connect(h, why, cap) < 0) {
            hc_close(h);
            return -1;
        }
        bool reused = h->reused, got_any = false;
        int rc;
        if (head_len + len <= sizeof h->out) {
            /* one write per request: a second small segment would wait for
             * the server's ACK of the first (Nagle on its side, delayed ACK on ours) */
            memcpy(h->out, head, head_len);
            if (len)
                memcpy(h->out + head_len, body, len);
            rc = hc_write(h, h->out, head_len + len);
        } else {
            rc = hc_write(h, head, head_len);
            if (rc == 0 && len)
                rc = hc_write(h, body, len);
        }
        if (rc == 0)
            rc = hc_answer(h, a, &got_any);
        else
            memset(a, 0, sizeof *a);
        if (rc < 0) {
            httpc_answer_free(a);
            hc_close(h);
            /* A kept-alive connection the server closed while idle: the
             * request never reached it (no answer byte), send it again on a
             * new one. Anything else is not retried: it may have been acted on. */
            if (reused && !got_any && attempt == 0)
                continue;
            snprintf(why, cap, "no answer from the server (%s)",
                     got_any ? "a malformed or cut answer" : "connection closed or timed out");
            return -1;
        }
        h->reused = true;
        if (a->close)
            hc_close(h);
        return 0;
    }
}
