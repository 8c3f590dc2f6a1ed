/*
 * src/proto/handshake.c: the WebSocket opening handshake, server and client
 * (see handshake.h and docs/handshake.md).
 *
 * Layer: proto. Depends on proto/http (the parsed heads), core/seams (the
 * random key) and OpenSSL libcrypto for SHA-1 and base64 only. No sockets,
 * no logging, no allocation of its own.
 *
 * Invariants: every check reads only the parsed head it is given; every
 * builder validates caller strings before writing them, so nothing it
 * writes can end a header line early (no header injection); builders write
 * through dx_http_out and report DX_ENOSPC instead of truncating.
 */
#include "proto/handshake.h"

#include <openssl/evp.h>

#include <stdatomic.h>

#include "core/seams.h"

static bool is_ows(char c) { return c == ' ' || c == '\t'; }

static bool has_ctl(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7F)
            return true;
    }
    return false;
}

static bool mem_eq_ci(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z')
            x = (char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (char)(y + 32);
        if (x != y)
            return false;
    }
    return true;
}

/* ---- shared ------------------------------------------------------------ */

/* Parses the next offer of an extension list at *pp into *off: 1 when one
 * was parsed, 0 at the end of the list, DX_EEXTENSION when malformed.
 * RFC 6455 §9.1:
 *   extension-list = 1#extension
 *   extension = extension-token *( ";" extension-param )
 *   extension-param = token [ "=" (token | quoted-string) ]
 * with implied LWS between the elements. */
static int ext_next(const char **pp, const char *end, dx_ws_ext_offer *off)
{
    const char *p = *pp, *s;
    while (p < end && (is_ows(*p) || *p == ','))
        p++;
    if (p >= end) {
        *pp = p;
        return 0;
    }
    s = p;
    while (p < end && dx__http_is_tchar((unsigned char)*p))
        p++;
    if (p == s)
        return DX_EEXTENSION;
    off->name = s;
    off->name_len = (size_t)(p - s);
    off->n_params = 0;
    while (p < end && is_ows(*p))
        p++;
    while (p < end && *p == ';') {
        p++;
        while (p < end && is_ows(*p))
            p++;
        s = p;
        while (p < end && dx__http_is_tchar((unsigned char)*p))
            p++;
        if (p == s || off->n_params >= DX_WS_EXT_PARAMS_MAX)
            return DX_EEXTENSION;
        dx_ws_ext_param *prm = &off->params[off->n_params++];
        prm->name = s;
        prm->name_len = (size_t)(p - s);
        prm->value = NULL;
        prm->value_len = 0;
        while (p < end && is_ows(*p))
            p++;
        if (p >= end || *p != '=')
            continue;
        p++;
        while (p < end && is_ows(*p))
            p++;
        bool quoted = p < end && *p == '"';
        if (quoted)
            p++;
        s = p;
        /* §9.1: a quoted value must be a token once unquoted, so a
         * backslash (or any non-tchar) is an error either way. */
        while (p < end && dx__http_is_tchar((unsigned char)*p))
            p++;
        if (p == s)
            return DX_EEXTENSION;
        prm->value = s;
        prm->value_len = (size_t)(p - s);
        if (quoted) {
            if (p >= end || *p != '"')
                return DX_EEXTENSION;
            p++;
        }
        while (p < end && is_ows(*p))
            p++;
    }
    if (p < end && *p != ',')
        return DX_EEXTENSION;
    *pp = p;
    return 1;
}

int dx__ws_ext_parse(const char *value, size_t len, dx_ws_ext_offer *exts, size_t max, size_t *n)
{
    const char *p = value, *end = value + len;
    dx_ws_ext_offer one;
    int rc;
    while ((rc = ext_next(&p, end, &one)) > 0) {
        if (*n >= max)
            return DX_EEXTENSION;
        exts[(*n)++] = one;
    }
    return rc;
}

/* True when `list` (NUL-terminated) is a well-formed extension list. */
static bool valid_ext_list(const char *list)
{
    const char *p = list, *end = list + strlen(list);
    dx_ws_ext_offer one;
    int rc;
    while ((rc = ext_next(&p, end, &one)) > 0)
        ;
    return rc == 0;
}

/* SHA-1, fetched from the default provider once per process. EVP_sha1()
 * makes EVP_Digest fetch the implementation again on every call (a name
 * lookup under a lock: about two thirds of the instructions of a server
 * handshake before this cache). The one write-once global of this layer:
 * a fetched EVP_MD is immutable and thread-safe; it stays until exit (a
 * reachable pointer, not a leak). NULL when the provider has no SHA-1. */
static _Atomic(EVP_MD *) sha1_cache;

static const EVP_MD *sha1_md(void)
{
    EVP_MD *md = atomic_load_explicit(&sha1_cache, memory_order_acquire);
    if (md)
        return md;
    EVP_MD *fresh = EVP_MD_fetch(NULL, "SHA1", NULL);
    if (!fresh)
        return NULL;
    if (!atomic_compare_exchange_strong_explicit(&sha1_cache, &md, fresh, memory_order_acq_rel,
                                                 memory_order_acquire)) {
        EVP_MD_free(fresh); /* another thread cached one first: md is it */
        return md;
    }
    return fresh;
}

int dx__ws_accept_key(const char *key, size_t key_len, char out[29])
{
    unsigned char buf[64 + sizeof DX_WS_GUID], md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (key_len > 64)
        return DX_EINVAL;
    memcpy(buf, key, key_len);
    memcpy(buf + key_len, DX_WS_GUID, sizeof DX_WS_GUID - 1);
    const EVP_MD *sha1 = sha1_md();
    if (!sha1 || !EVP_Digest(buf, key_len + sizeof DX_WS_GUID - 1, md, &md_len, sha1, NULL) || md_len != 20)
        return DX_EINTERNAL;
    if (EVP_EncodeBlock((unsigned char *)out, md, 20) != 28)
        return DX_EINTERNAL;
    return 0;
}

static bool is_b64(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

/* RFC 6455 §4.2.1 item 5: base64 that decodes to 16 bytes, i.e. 22 alphabet
 * characters and "==" (RFC 4648 §4, padding required). Non-canonical final
 * bits are tolerated: they still decode to 16 bytes. */
static bool valid_key(const char *k, size_t len)
{
    if (len != 24 || k[22] != '=' || k[23] != '=')
        return false;
    for (size_t i = 0; i < 22; i++)
        if (!is_b64(k[i]))
            return false;
    return true;
}

const char *dx__ws_error_headers(int err)
{
    switch (err) {
    case DX_EVERSION:
        return "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n";
    case DX_EMETHOD:
        return "Allow: GET\r\n";
    default:
        return "";
    }
}

void dx__ws_protocol_iter_init(dx_ws_protocol_iter *it, const dx_ws_request *r)
{
    dx__http_list_iter_init(it, r->headers, r->n_headers, "Sec-WebSocket-Protocol");
}

bool dx__ws_protocol_next(dx_ws_protocol_iter *it, const char **name, size_t *len)
{
    return dx__http_list_iter_next(it, name, len);
}

bool dx__ws_protocol_offered(const dx_ws_request *r, const char *name, size_t len)
{
    dx_ws_protocol_iter it;
    const char *p;
    size_t n;
    dx__ws_protocol_iter_init(&it, r);
    while (dx__ws_protocol_next(&it, &p, &n))
        if (n == len && memcmp(p, name, len) == 0)
            return true;
    return false;
}

/* The value of the one header named `name`; false when absent or repeated. */
static bool single(const dx_http_header *h, size_t n, const char *name, const dx_http_header **out)
{
    *out = dx__http_find(h, n, name);
    return *out && dx__http_count(h, n, name) == 1;
}

/* ---- server -------------------------------------------------------------- */

/* The headers the server's check reads, found in one pass over the head
 * (a lookup per header name walked the list nine times per handshake):
 * the last of each single-valued one and how many there were, whether any
 * Upgrade / Connection header lists the token, whether protocols or
 * extensions were offered at all. */
typedef struct ws_seen {
    const dx_http_header *host, *version, *key, *origin;
    unsigned n_host, n_version, n_key, n_origin;
    bool upgrade, connection, protocols, extensions;
} ws_seen;

static void ws_scan(const dx_http_header *h, size_t n, ws_seen *w)
{
    memset(w, 0, sizeof *w);
    for (size_t i = 0; i < n; i++) {
        const char *nm = h[i].name;
        size_t len = h[i].name_len;
        switch (len) {
        case 4:
            if (dx__http_eq_ci(nm, len, "Host") && !w->n_host++)
                w->host = &h[i];
            break;
        case 6:
            if (dx__http_eq_ci(nm, len, "Origin") && !w->n_origin++)
                w->origin = &h[i];
            break;
        case 7:
            if (!w->upgrade && dx__http_eq_ci(nm, len, "Upgrade"))
                w->upgrade = dx__http_list_has(h[i].value, h[i].value_len, "websocket");
            break;
        case 10:
            if (!w->connection && dx__http_eq_ci(nm, len, "Connection"))
                w->connection = dx__http_list_has(h[i].value, h[i].value_len, "upgrade");
            break;
        case 17:
            if (dx__http_eq_ci(nm, len, "Sec-WebSocket-Key") && !w->n_key++)
                w->key = &h[i];
            break;
        case 21:
            if (dx__http_eq_ci(nm, len, "Sec-WebSocket-Version") && !w->n_version++)
                w->version = &h[i];
            break;
        case 22:
            w->protocols = w->protocols || dx__http_eq_ci(nm, len, "Sec-WebSocket-Protocol");
            break;
        case 24:
            w->extensions = w->extensions || dx__http_eq_ci(nm, len, "Sec-WebSocket-Extensions");
            break;
        default:
            break;
        }
    }
}

int dx__ws_server_check(const dx_http_request *req, dx_ws_request *out, dx_ws_ext_offer *exts, size_t max_exts)
{
    const dx_http_header *h = req->headers, *f;
    size_t n = req->n_headers;
    memset(out, 0, sizeof *out);

    /* §4.2.1 item 1: "An HTTP/1.1 or higher GET request". */
    if (req->method_len != 3 || memcmp(req->method, "GET", 3) != 0)
        return DX_EMETHOD;
    if (req->minor_version < 1)
        return DX_EHANDSHAKE;
    /* item 1: a Request-URI: origin-form only (absolute-form is for
     * proxies; a WebSocket server is not one). */
    if (req->target_len == 0 || req->target[0] != '/')
        return DX_EHANDSHAKE;
    const char *q = memchr(req->target, '?', req->target_len);
    out->path = req->target;
    out->path_len = q ? (size_t)(q - req->target) : req->target_len;
    if (q) {
        out->query = q + 1;
        out->query_len = req->target_len - out->path_len - 1;
    }
    ws_seen w;
    ws_scan(h, n, &w);
    /* item 2: Host; RFC 9112 §3.2: exactly one, else 400. */
    if (w.n_host != 1 || w.host->value_len == 0)
        return DX_EHANDSHAKE;
    out->host = w.host->value;
    out->host_len = w.host->value_len;
    /* items 3 and 4 */
    if (!w.upgrade || !w.connection)
        return DX_EHANDSHAKE;
    /* item 6, checked before the key so that a client speaking another
     * version learns ours (§4.2.2: 426 with Sec-WebSocket-Version). */
    f = w.version;
    if (w.n_version != 1 || f->value_len != 2 || memcmp(f->value, "13", 2) != 0)
        return DX_EVERSION;
    /* item 5 */
    f = w.key;
    if (w.n_key != 1 || !valid_key(f->value, f->value_len))
        return DX_EHANDSHAKE;
    out->key = f->value;
    out->key_len = f->value_len;
    /* item 7: optional; RFC 6454 §7.3 allows one Origin. */
    if (w.n_origin > 1)
        return DX_EHANDSHAKE;
    if (w.origin) {
        out->origin = w.origin->value;
        out->origin_len = w.origin->value_len;
    }
    out->headers = h;
    out->n_headers = n;
    /* item 8: protocols are tokens (§4.1 item 10). */
    if (w.protocols) {
        dx_ws_protocol_iter it;
        const char *item;
        size_t len;
        dx__ws_protocol_iter_init(&it, out);
        while (dx__ws_protocol_next(&it, &item, &len))
            if (!dx__http_is_token(item, len))
                return DX_EHANDSHAKE;
    }
    /* item 9: every Sec-WebSocket-Extensions header, as one list. */
    out->exts = exts;
    out->n_exts = 0;
    for (size_t i = 0; w.extensions && i < n; i++) {
        if (!dx__http_eq_ci(h[i].name, h[i].name_len, "Sec-WebSocket-Extensions"))
            continue;
        int rc = dx__ws_ext_parse(h[i].value, h[i].value_len, exts, max_exts, &out->n_exts);
        if (rc)
            return rc;
    }
    return 0;
}

int dx__ws_server_response(char *out, size_t cap, const dx_ws_request *r, const char *protocol,
                           const char *extensions, const char *extra_headers)
{
    char accept[29];
    if (!r->key || !valid_key(r->key, r->key_len))
        return DX_EINVAL;
    if (protocol && !dx__ws_protocol_offered(r, protocol, strlen(protocol)))
        return DX_EINVAL;
    if (protocol && !dx__http_is_token(protocol, strlen(protocol)))
        return DX_EINVAL;
    if (extensions && (has_ctl(extensions) || !valid_ext_list(extensions) ||
                       extensions[strspn(extensions, " \t,")] == '\0'))
        return DX_EINVAL;
    if (extra_headers && !dx__http_valid_header_block(extra_headers))
        return DX_EINVAL;
    int rc = dx__ws_accept_key(r->key, r->key_len, accept);
    if (rc)
        return rc;
    dx_http_out o;
    dx__http_out_init(&o, out, cap);
    dx__http_out_str(&o, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Accept: ");
    dx__http_out_mem(&o, accept, 28);
    dx__http_out_str(&o, "\r\n");
    if (protocol) {
        dx__http_out_str(&o, "Sec-WebSocket-Protocol: ");
        dx__http_out_str(&o, protocol);
        dx__http_out_str(&o, "\r\n");
    }
    if (extensions) {
        dx__http_out_str(&o, "Sec-WebSocket-Extensions: ");
        dx__http_out_str(&o, extensions);
        dx__http_out_str(&o, "\r\n");
    }
    if (extra_headers)
        dx__http_out_str(&o, extra_headers);
    dx__http_out_str(&o, "\r\n");
    return dx__http_out_finish(&o);
}

/* ---- client -------------------------------------------------------------- */

static bool valid_host(const char *host)
{
    if (!host || !*host)
        return false;
    for (const char *p = host; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 0x20 || c >= 0x7F || c == '/' || c == '?' || c == '#' || c == '@')
            return false;
    }
    size_t len = strlen(host);
    bool br = host[0] == '[';
    if (br && (len < 3 || host[len - 1] != ']'))
        return false;
    const char *s = host + br, *e = host + len - br;
    if (!br && !memchr(s, ':', (size_t)(e - s)))
        return !strpbrk(host, "[]"); /* a name or IPv4 address */
    /* An IPv6 literal (RFC 3986 §3.2.2), optionally with a zone (RFC 6874):
     * hex digits, ':' and '.' then "%" and unreserved characters. A
     * "host:port" given as host lands here and is refused. */
    bool zone = false;
    for (const char *p = s; p < e; p++) {
        char c = *p;
        bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
        bool unreserved = hex || (c >= 'g' && c <= 'z') || (c >= 'G' && c <= 'Z') || c == '-' || c == '.' ||
                          c == '_' || c == '~';
        if (c == '%' && !zone)
            zone = true;
        else if (zone ? !unreserved : !(hex || c == ':' || c == '.'))
            return false;
    }
    return memchr(s, ':', (size_t)(e - s)) != NULL;
}

static bool valid_path(const char *path)
{
    if (path[0] != '/')
        return false;
    for (const char *p = path; *p; p++) {
        unsigned char c = (unsigned char)*p;
        /* RFC 6455 §3: no fragment in a WebSocket URI. */
        if (c <= 0x20 || c >= 0x7F || c == '#')
            return false;
    }
    return true;
}

/* Headers the handshake writes itself; an extra one would contradict it. */
static bool reserved_header(const char *name, size_t len)
{
    static const char *const names[] = {"Host", "Upgrade", "Connection", "Origin"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (dx__http_eq_ci(name, len, names[i]))
            return true;
    return len >= 14 && mem_eq_ci(name, 14, "Sec-WebSocket-", 14);
}

int dx__ws_client_request(char *out, size_t cap, const dx_ws_client_opts *o, const dx_seams *seams,
                          char key_out[25])
{
    const char *path = o->path ? o->path : "/";
    if (!valid_host(o->host) || o->port > 65535 || !valid_path(path))
        return DX_EINVAL;
    for (size_t i = 0; i < o->n_protocols; i++) {
        if (!o->protocols[i] || !dx__http_is_token(o->protocols[i], strlen(o->protocols[i])))
            return DX_EINVAL;
        for (size_t j = 0; j < i; j++)
            if (strcmp(o->protocols[i], o->protocols[j]) == 0)
                return DX_EINVAL; /* §4.1 item 10: unique */
    }
    if (o->extensions && (has_ctl(o->extensions) || !valid_ext_list(o->extensions)))
        return DX_EINVAL;
    if (o->extensions && o->extensions[strspn(o->extensions, " \t,")] == '\0')
        return DX_EINVAL; /* 1#extension: at least one */
    if (o->origin && has_ctl(o->origin))
        return DX_EINVAL;
    for (size_t i = 0; i < o->n_headers; i++) {
        const dx_http_header *x = &o->headers[i];
        if (!x->name || !dx__http_is_token(x->name, x->name_len) || reserved_header(x->name, x->name_len))
            return DX_EINVAL;
        if (x->value_len && (!x->value || !dx__http_is_field_value(x->value, x->value_len)))
            return DX_EINVAL;
    }

    /* §4.1 item 7: a random 16-byte nonce, base64-encoded. */
    unsigned char nonce[16];
    int rc = dx__random(seams, nonce, sizeof nonce);
    if (rc)
        return rc < 0 ? rc : DX_ERANDOM;
    if (EVP_EncodeBlock((unsigned char *)key_out, nonce, 16) != 24)
        return DX_EINTERNAL;

    dx_http_out w;
    dx__http_out_init(&w, out, cap);
    dx__http_out_str(&w, "GET ");
    dx__http_out_str(&w, path);
    dx__http_out_str(&w, " HTTP/1.1\r\nHost: ");
    /* §4.1 item 4; RFC 3986 §3.2.2: an IPv6 literal goes in brackets. */
    bool bracket = o->host[0] != '[' && strchr(o->host, ':');
    if (bracket)
        dx__http_out_str(&w, "[");
    dx__http_out_str(&w, o->host);
    if (bracket)
        dx__http_out_str(&w, "]");
    unsigned port = o->port ? o->port : (o->tls ? 443u : 80u);
    if (port != (o->tls ? 443u : 80u)) {
        char num[8];
        size_t k = sizeof num;
        do {
            num[--k] = (char)('0' + port % 10);
            port /= 10;
        } while (port);
        dx__http_out_str(&w, ":");
        dx__http_out_mem(&w, num + k, sizeof num - k);
    }
    dx__http_out_str(&w, "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ");
    dx__http_out_mem(&w, key_out, 24);
    dx__http_out_str(&w, "\r\nSec-WebSocket-Version: 13\r\n");
    if (o->n_protocols) {
        dx__http_out_str(&w, "Sec-WebSocket-Protocol: ");
        for (size_t i = 0; i < o->n_protocols; i++) {
            if (i)
                dx__http_out_str(&w, ", ");
            dx__http_out_str(&w, o->protocols[i]);
        }
        dx__http_out_str(&w, "\r\n");
    }
    if (o->extensions) {
        dx__http_out_str(&w, "Sec-WebSocket-Extensions: ");
        dx__http_out_str(&w, o->extensions);
        dx__http_out_str(&w, "\r\n");
    }
    if (o->origin) {
        dx__http_out_str(&w, "Origin: ");
        dx__http_out_str(&w, o->origin);
        dx__http_out_str(&w, "\r\n");
    }
    for (size_t i = 0; i < o->n_headers; i++) {
        dx__http_out_mem(&w, o->headers[i].name, o->headers[i].name_len);
        dx__http_out_str(&w, ": ");
        dx__http_out_mem(&w, o->headers[i].value, o->headers[i].value_len);
        dx__http_out_str(&w, "\r\n");
    }
    dx__http_out_str(&w, "\r\n");
    return dx__http_out_finish(&w);
}

/* True when extension `name` is among the offers in `offered` (validated
 * by dx__ws_client_request; a malformed tail counts as "not offered"). */
static bool ext_offered(const char *offered, const char *name, size_t len)
{
    if (!offered)
        return false;
    const char *p = offered, *end = offered + strlen(offered);
    dx_ws_ext_offer one;
    while (ext_next(&p, end, &one) > 0)
        if (mem_eq_ci(one.name, one.name_len, name, len))
            return true;
    return false;
}

int dx__ws_client_check(const dx_http_response *resp, const char key[24], const dx_ws_client_opts *o,
                        const char **protocol, size_t *protocol_len, dx_ws_ext_offer *exts, size_t max_exts,
                        size_t *n_exts)
{
    const dx_http_header *h = resp->headers, *f;
    size_t n = resp->n_headers;
    const char *item;
    size_t len;
    *protocol = NULL;
    *protocol_len = 0;
    *n_exts = 0;

    /* §4.1: "If the status code received from the server is not 101, the
     * client handles the response per HTTP procedures" — for us, a failure
     * the caller can inspect (resp->status). */
    if (resp->status != 101 || resp->minor_version < 1)
        return DX_EHANDSHAKE;
    /* §4.1 item 2 of the response checks: Upgrade must be "websocket". */
    dx_http_list_iter it;
    size_t n_up = 0;
    dx__http_list_iter_init(&it, h, n, "Upgrade");
    while (dx__http_list_iter_next(&it, &item, &len)) {
        if (!dx__http_eq_ci(item, len, "websocket"))
            return DX_EHANDSHAKE;
        n_up++;
    }
    if (n_up == 0)
        return DX_EHANDSHAKE;
    /* item 3 */
    if (!dx__http_headers_have(h, n, "Connection", "upgrade"))
        return DX_EHANDSHAKE;
    /* item 4: exact (base64 is case-sensitive) */
    char want[29];
    int rc = dx__ws_accept_key(key, 24, want);
    if (rc)
        return rc;
    if (!single(h, n, "Sec-WebSocket-Accept", &f) || f->value_len != 28 || memcmp(f->value, want, 28) != 0)
        return DX_EHANDSHAKE;
    /* item 6: one protocol, one we offered. */
    size_t n_proto = dx__http_count(h, n, "Sec-WebSocket-Protocol");
    if (n_proto) {
        if (n_proto > 1 || o->n_protocols == 0)
            return DX_EHANDSHAKE;
        f = dx__http_find(h, n, "Sec-WebSocket-Protocol");
        const char *cur = f->value;
        if (!dx__http_list_next(&cur, f->value + f->value_len, &item, &len) ||
            dx__http_list_next(&cur, f->value + f->value_len, &item, &len))
            return DX_EHANDSHAKE;
        bool ok = false;
        for (size_t i = 0; i < o->n_protocols && !ok; i++)
            ok = strlen(o->protocols[i]) == len && memcmp(o->protocols[i], f->value, len) == 0;
        if (!ok || f->value_len != len)
            return DX_EHANDSHAKE;
        *protocol = f->value;
        *protocol_len = len;
    }
    /* item 5: only extensions we offered, each once. */
    for (size_t i = 0; i < n; i++) {
        if (!dx__http_eq_ci(h[i].name, h[i].name_len, "Sec-WebSocket-Extensions"))
            continue;
        rc = dx__ws_ext_parse(h[i].value, h[i].value_len, exts, max_exts, n_exts);
        if (rc)
            return rc;
    }
    for (size_t i = 0; i < *n_exts; i++) {
        if (!ext_offered(o->extensions, exts[i].name, exts[i].name_len))
            return DX_EEXTENSION;
        for (size_t j = 0; j < i; j++)
            if (mem_eq_ci(exts[i].name, exts[i].name_len, exts[j].name, exts[j].name_len))
                return DX_EEXTENSION;
    }
    return 0;
}
