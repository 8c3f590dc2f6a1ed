/*
 * src/proto/url.c: URL parsing for the client (see url.h).
 *
 * Layer: proto. Pure; no allocation. Strict: anything that is not a plain
 * ws/wss (or http proxy) URL is refused rather than guessed at.
 */
#include "proto/url.h"

#include "duplex/duplex.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static bool prefix(const char *s, const char *p, size_t *n)
{
    size_t l = strlen(p);
    if (strncasecmp(s, p, l) != 0)
        return false;
    *n = l;
    return true;
}

int dx__url_parse(const char *url, bool allow_ws, bool allow_http, dx_url *out)
{
    memset(out, 0, sizeof *out);
    if (!url)
        return DX_EINVAL;
    for (const char *p = url; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7F)
            return DX_EINVAL;
    size_t n;
    if (allow_ws && prefix(url, "wss://", &n)) {
        out->tls = true;
        out->port = 443;
    } else if (allow_ws && prefix(url, "ws://", &n)) {
        out->port = 80;
    } else if (allow_http && prefix(url, "http://", &n)) {
        out->port = 80;
    } else {
        return DX_EINVAL;
    }
    const char *h = url + n;
    const char *end = h + strcspn(h, "/?#");
    if (memchr(h, '@', (size_t)(end - h)))
        return DX_EINVAL; /* no userinfo */
    const char *host_end, *port_at = NULL;
    const char *host = h;
    if (*h == '[') {
        const char *rb = memchr(h, ']', (size_t)(end - h));
        if (!rb || rb == h + 1)
            return DX_EINVAL;
        host = h + 1;
        host_end = rb;
        if (rb + 1 < end) {
            if (rb[1] != ':')
                return DX_EINVAL;
            port_at = rb + 2;
        }
    } else {
        const char *colon = memchr(h, ':', (size_t)(end - h));
        host_end = colon ? colon : end;
        if (colon)
            port_at = colon + 1;
    }
    size_t hl = (size_t)(host_end - host);
    if (hl == 0 || hl > DX_URL_HOST_MAX)
        return DX_EINVAL;
    memcpy(out->host, host, hl);
    out->host[hl] = 0;
    if (*h == '[') {
        /* Only an IPv6 literal goes in brackets (RFC 3986 §3.2.2); a zone
         * follows as "%25" (RFC 6874). */
        char lit[DX_URL_HOST_MAX + 1];
        memcpy(lit, out->host, hl + 1);
        char *zone = strstr(lit, "%25");
        if (zone) {
            if (zone[3] == 0)
                return DX_EINVAL;
            *zone = 0;
        }
        unsigned char a[16];
        if (inet_pton(AF_INET6, lit, a) != 1)
            return DX_EINVAL;
    }
    out->default_port = true;
    if (port_at) {
        if (port_at == end)
            return DX_EINVAL;
        unsigned long v = 0;
        for (const char *p = port_at; p < end; p++) {
            if (*p < '0' || *p > '9')
                return DX_EINVAL;
            v = v * 10 + (unsigned long)(*p - '0');
            if (v > 65535)
                return DX_EINVAL;
        }
        if (v == 0)
            return DX_EINVAL;
        out->port = (unsigned)v;
        out->default_port = false;
    }
    size_t pl = strcspn(end, "#");
    if (pl == 0) {
        strcpy(out->path, "/");
    } else {
        if (pl > DX_URL_PATH_MAX - 1)
            return DX_EINVAL;
        size_t o = 0;
        if (*end == '?')
            out->path[o++] = '/'; /* "ws://h?x" means "/?x" */
        memcpy(out->path + o, end, pl);
        out->path[o + pl] = 0;
    }
    return 0;
}
