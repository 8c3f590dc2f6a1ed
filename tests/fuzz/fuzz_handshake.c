/*
 * tests/fuzz/fuzz_handshake.c: libFuzzer target for src/proto/handshake.c.
 *
 * 1. The input as a request head. If dx__ws_server_check accepts it, the
 *    101 response (first offered protocol, first offered extension) must
 *    build, parse as a response, and pass dx__ws_client_check with the
 *    request's key and those offers. If the check rejects it, the error
 *    response for its status must build and parse with that status.
 * 2. The input as client options, one per line: host, [s]port, path,
 *    protocols (comma-separated), extensions, origin, "name:value". If
 *    dx__ws_client_request accepts them, the request must parse, pass
 *    dx__ws_server_check with the same path, host, key, origin and
 *    protocols, and complete the round trip of 1.
 * A broken invariant abort()s.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/handshake.h"
#include "proto/http.h"

#define MAXP 16
#define MAXE 4096

static void check(bool ok)
{
    if (!ok)
        abort();
}

static bool span_eq(const char *p, size_t len, const char *s)
{
    return p && len == strlen(s) && memcmp(p, s, len) == 0;
}

static dx_http_header req_h[DX_HTTP_DEFAULT_MAX_HEADERS], resp_h[DX_HTTP_DEFAULT_MAX_HEADERS];
static dx_ws_ext_offer offers[MAXE], accepted[4];
static char out[1 << 16], out2[1 << 16];

/* Answers an accepted request as an application would and checks that the
 * client side accepts the answer. */
static void answer_and_check(const dx_ws_request *r)
{
    static char proto[256], ext[256];
    const char *protocols[MAXP];
    size_t n_protocols = 0;
    static char pstore[MAXP][256];
    const char *pp = NULL, *ep = NULL, *item;
    size_t len;
    dx_ws_protocol_iter it;
    dx__ws_protocol_iter_init(&it, r);
    while (dx__ws_protocol_next(&it, &item, &len) && n_protocols < MAXP) {
        if (len >= 256)
            continue;
        memcpy(pstore[n_protocols], item, len);
        pstore[n_protocols][len] = '\0';
        protocols[n_protocols] = pstore[n_protocols];
        n_protocols++;
    }
    if (n_protocols) {
        strcpy(proto, protocols[0]);
        pp = proto;
    }
    if (r->n_exts && r->exts[0].name_len < sizeof ext) {
        memcpy(ext, r->exts[0].name, r->exts[0].name_len);
        ext[r->exts[0].name_len] = '\0';
        ep = ext;
    }
    int n = dx__ws_server_response(out2, sizeof out2, r, pp, ep, NULL);
    check(n > 0);
    dx_http_response resp;
    check(dx__http_parse_response(out2, (size_t)n, &resp, resp_h, DX_HTTP_DEFAULT_MAX_HEADERS, sizeof out2) == n);
    dx_ws_client_opts o = {.host = "h", .protocols = protocols, .n_protocols = n_protocols, .extensions = ep};
    const char *chosen;
    size_t chosen_len, n_acc;
    check(r->key_len == 24);
    int rc = dx__ws_client_check(&resp, r->key, &o, &chosen, &chosen_len, accepted, 4, &n_acc);
    check(rc == 0);
    check(pp ? span_eq(chosen, chosen_len, pp) : chosen == NULL);
    check(n_acc == (ep ? 1u : 0u));
    if (ep)
        check(span_eq(accepted[0].name, accepted[0].name_len, ep));
}

static void as_request(const char *buf, size_t size)
{
    dx_http_request req;
    dx_ws_request r;
    int rc = dx__http_parse_request(buf, size, &req, req_h, DX_HTTP_DEFAULT_MAX_HEADERS, 0);
    if (rc == DX_EAGAIN)
        return;
    if (rc > 0) {
        rc = dx__ws_server_check(&req, &r, offers, DX_WS_DEFAULT_MAX_EXTS);
        check(rc == 0 || rc == DX_EMETHOD || rc == DX_EHANDSHAKE || rc == DX_EVERSION || rc == DX_EEXTENSION);
        if (rc == 0) {
            check(r.path_len > 0 && r.path[0] == '/' && r.host_len > 0);
            check(r.n_exts <= DX_WS_DEFAULT_MAX_EXTS);
            answer_and_check(&r);
            return;
        }
    }
    int status = dx_http_status_for_error(rc);
    check(status == 400 || status == 405 || status == 426 || status == 431);
    int n = dx__http_error_response(out, sizeof out, status, dx__ws_error_headers(rc), NULL);
    check(n > 0);
    dx_http_response resp;
    int head = dx__http_parse_response(out, (size_t)n, &resp, resp_h, DX_HTTP_DEFAULT_MAX_HEADERS, 0);
    check(head > 0 && resp.status == status);
}

/* Deterministic randomness for the client key. */
static uint64_t rng;
static int fuzz_random(void *ud, void *buf, size_t len)
{
    (void)ud;
    unsigned char *p = buf;
    for (size_t i = 0; i < len; i++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        p[i] = (unsigned char)(rng >> 24);
    }
    return 0;
}

static void as_client_opts(const char *buf, size_t size)
{
    /* Split into NUL-terminated lines (a NUL byte just ends its line early). */
    static char store[1 << 14];
    char *f[8] = {0};
    size_t nf = 0;
    if (size >= sizeof store)
        return;
    memcpy(store, buf, size);
    store[size] = '\0';
    char *p = store;
    while (nf < 8) {
        f[nf++] = p;
        char *nl = memchr(p, '\n', (size_t)(store + size - p));
        if (!nl)
            break;
        *nl = '\0';
        p = nl + 1;
    }
    dx_ws_client_opts o = {.host = f[0]};
    if (f[1]) {
        const char *q = f[1];
        if (*q == 's') {
            o.tls = true;
            q++;
        }
        for (int i = 0; i < 6 && *q >= '0' && *q <= '9'; i++, q++)
            o.port = o.port * 10 + (unsigned)(*q - '0');
    }
    if (f[2] && *f[2])
        o.path = f[2];
    const char *protocols[MAXP];
    if (f[3] && *f[3]) {
        for (char *s = f[3]; o.n_protocols < MAXP;) {
            protocols[o.n_protocols++] = s;
            char *c = strchr(s, ',');
            if (!c)
                break;
            *c = '\0';
            s = c + 1;
        }
        o.protocols = protocols;
    }
    if (f[4] && *f[4])
        o.extensions = f[4];
    o.origin = f[5];
    dx_http_header extra;
    if (f[6]) {
        char *c = strchr(f[6], ':');
        if (c) {
            extra = (dx_http_header){f[6], (size_t)(c - f[6]), c + 1, strlen(c + 1)};
            o.headers = &extra;
            o.n_headers = 1;
        }
    }

    dx_seams seams = {.random = fuzz_random};
    rng = 0x9E3779B97F4A7C15u;
    char key[25];
    int n = dx__ws_client_request(out, sizeof out, &o, &seams, key);
    if (n == DX_EINVAL)
        return;
    check(n > 0 && strlen(key) == 24);

    dx_http_request req;
    dx_ws_request r;
    check(dx__http_parse_request(out, (size_t)n, &req, req_h, DX_HTTP_DEFAULT_MAX_HEADERS, sizeof out) == n);
    check(dx__ws_server_check(&req, &r, offers, MAXE) == 0);
    /* Same path, host, key, origin, protocols. */
    const char *path = o.path ? o.path : "/";
    const char *qm = strchr(path, '?');
    check(r.path_len == (qm ? (size_t)(qm - path) : strlen(path)) && memcmp(r.path, path, r.path_len) == 0);
    char host[1 << 14];
    bool br = o.host[0] != '[' && strchr(o.host, ':');
    unsigned def = o.tls ? 443 : 80;
    if (o.port && o.port != def)
        snprintf(host, sizeof host, "%s%s%s:%u", br ? "[" : "", o.host, br ? "]" : "", o.port);
    else
        snprintf(host, sizeof host, "%s%s%s", br ? "[" : "", o.host, br ? "]" : "");
    check(span_eq(r.host, r.host_len, host));
    check(span_eq(r.key, r.key_len, key));
    if (o.origin) {
        const char *s = o.origin, *e = s + strlen(s);
        while (*s == ' ')
            s++;
        while (e > s && e[-1] == ' ')
            e--;
        check(r.origin && r.origin_len == (size_t)(e - s) && memcmp(r.origin, s, r.origin_len) == 0);
    } else {
        check(r.origin == NULL);
    }
    dx_ws_protocol_iter it;
    const char *item;
    size_t len, i = 0;
    dx__ws_protocol_iter_init(&it, &r);
    while (dx__ws_protocol_next(&it, &item, &len)) {
        check(i < o.n_protocols && span_eq(item, len, o.protocols[i]));
        i++;
    }
    check(i == o.n_protocols);
    answer_and_check(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    as_request((const char *)data, size);
    as_client_opts((const char *)data, size);
    return 0;
}
