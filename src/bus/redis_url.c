/*
 * src/bus/redis_url.c: Redis URLs for the Redis bus (redis.h,
 * dx__redis_url_parse): redis://, rediss:// and unix://, user and password
 * percent-decoded, every field bounded. No I/O.
 */
#define _GNU_SOURCE
#include "bus/redis.h"
#include "core/hex.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int dx__redis_why(char *why, size_t len, const char *fmt, ...)
{
    if (why && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, len, fmt, ap);
        va_end(ap);
    }
    return DX_EINVAL;
}

/* Percent-decodes s[0..n) into out (cap bytes with the NUL); -1 if bad or too long. */
static int pct(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= n)
                return -1;
            int h = dx__hexval(s[i + 1]), l = dx__hexval(s[i + 2]);
            if (h < 0 || l < 0)
                return -1;
            c = h * 16 + l;
            i += 2;
        }
        if (o + 1 >= cap)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = 0;
    return 0;
}

static int parse_uint(const char *s, size_t n, long max, long *out)
{
    if (n == 0 || n > 9)
        return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

int dx__redis_url_parse(const char *url, dx__redis_url *out, char *why, size_t why_len)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    if (!url)
        return dx__redis_why(why, why_len, "no Redis URL");
    const char *p;
    if (strncmp(url, "unix://", 7) == 0) {
        out->unix_socket = true;
        p = url + 7;
        const char *q = strchr(p, '?');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (n == 0 || p[0] != '/')
            return dx__redis_why(why, why_len, "unix:// URL needs an absolute path (unix:///path/to/socket)");
        if (pct(p, n, out->path, sizeof out->path) != 0)
            return dx__redis_why(why, why_len, "unix socket path too long or badly encoded");
        /* ?db=N&user=U&password=P, any order */
        while (q && *q) {
            const char *k = q + 1;
            const char *amp = strchr(k, '&');
            size_t kn = amp ? (size_t)(amp - k) : strlen(k);
            long db;
            if (kn > 3 && strncmp(k, "db=", 3) == 0 && parse_uint(k + 3, kn - 3, 1000000, &db) == 0)
                out->db = (int)db;
            else if (kn > 5 && strncmp(k, "user=", 5) == 0 && pct(k + 5, kn - 5, out->user, sizeof out->user) == 0)
                ;
            else if (kn > 9 && strncmp(k, "password=", 9) == 0 &&
                     pct(k + 9, kn - 9, out->pass, sizeof out->pass) == 0)
                ;
            else
                return dx__redis_why(why, why_len, "unix:// URL: after the path only ?db=N&user=U&password=P");
            q = amp;
        }
        return 0;
    }
    if (strncmp(url, "redis://", 8) == 0) {
        p = url + 8;
    } else if (strncmp(url, "rediss://", 9) == 0) {
        out->tls = true;
        p = url + 9;
    } else {
        return dx__redis_why(why, why_len, "Redis URL must start with redis://, rediss:// or unix://");
    }
    const char *end = p + strcspn(p, "/?#");
    const char *at = NULL;
    for (const char *c = p; c < end; c++)
        if (*c == '@')
            at = c;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon) {
            if (pct(p, (size_t)(colon - p), out->user, sizeof out->user) != 0 ||
                pct(colon + 1, (size_t)(at - colon - 1), out->pass, sizeof out->pass) != 0)
                return dx__redis_why(why, why_len, "Redis URL: user or password too long or badly encoded");
        } else if (pct(p, (size_t)(at - p), out->pass, sizeof out->pass) != 0) {
            return dx__redis_why(why, why_len, "Redis URL: password too long or badly encoded");
        }
        p = at + 1;
    }
    const char *hend;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb)
            return dx__redis_why(why, why_len, "Redis URL: unterminated [IPv6] host");
        if ((size_t)(rb - p - 1) >= sizeof out->host || rb == p + 1)
            return dx__redis_why(why, why_len, "Redis URL: bad host");
        memcpy(out->host, p + 1, (size_t)(rb - p - 1));
        hend = rb + 1;
    } else {
        hend = p;
        while (hend < end && *hend != ':')
            hend++;
        if (hend == p || (size_t)(hend - p) >= sizeof out->host)
            return dx__redis_why(why, why_len, "Redis URL: missing or too long host");
        memcpy(out->host, p, (size_t)(hend - p));
    }
    if (hend < end) {
        long port;
        if (*hend != ':' || parse_uint(hend + 1, (size_t)(end - hend - 1), 65535, &port) != 0 || port == 0)
            return dx__redis_why(why, why_len, "Redis URL: bad port");
        out->port = (int)port;
    }
    if (*end == '/' && end[1]) {
        long db;
        if (parse_uint(end + 1, strlen(end + 1), 1000000, &db) != 0)
            return dx__redis_why(why, why_len, "Redis URL: the path must be a database number (/0)");
        out->db = (int)db;
    } else if (*end && !(*end == '/' && !end[1])) {
        return dx__redis_why(why, why_len, "Redis URL: unexpected '%s'", end);
    }
    return 0;
}
