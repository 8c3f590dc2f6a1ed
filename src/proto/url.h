/*
 * src/proto/url.h: ws://, wss:// and http:// (proxy) URLs. Pure.
 */
#ifndef DX_PROTO_URL_H
#define DX_PROTO_URL_H

#include <stdbool.h>
#include <stddef.h>

#define DX_URL_HOST_MAX 255
#define DX_URL_PATH_MAX 4096

typedef struct dx_url {
    bool tls;                        /* wss:// (https:// for a proxy) */
    char host[DX_URL_HOST_MAX + 1];  /* name or literal, IPv6 without brackets */
    unsigned port;                   /* explicit, or 80 / 443 */
    bool default_port;               /* no port in the URL */
    char path[DX_URL_PATH_MAX + 1];  /* path and query ("/" when empty); no fragment */
} dx_url;

/*
 * Parses `url` with one of the schemes in `schemes` ("ws", "wss" or "http").
 * Rules: scheme case-insensitive; no userinfo; host a name, IPv4 literal or
 * [IPv6] literal (zone "%25..." kept); port 1-65535; the fragment is
 * dropped; no whitespace or control characters. Returns 0 or DX_EINVAL.
 */
int dx__url_parse(const char *url, bool allow_ws, bool allow_http, dx_url *out);

#endif
