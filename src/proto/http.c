/*
 * src/proto/http.c: HTTP/1.1 head parser and helpers (see http.h).
 *
 * Layer: proto. Depends on libc only: no sockets, no allocation, no logging.
 *
 * Invariants: the parser reads buf[0..lim) with lim = min(len, max_head) and
 * nothing else; it reads sequentially and decides at each byte with what it
 * has seen so far, so a prefix never gives an answer that a longer input
 * would contradict: running out of bytes is "incomplete" (DX_EAGAIN, or
 * DX_EHEADTOOBIG when lim reached max_head), never a guess. Every stored
 * pointer lies inside buf[0..lim).
 */
#include "proto/http.h"

#include <limits.h>

/* Internal "ran out of bytes"; turned into DX_EAGAIN or DX_EHEADTOOBIG. */
#define NEED_MORE DX_EAGAIN

bool dx__http_is_tchar(unsigned char c)
{
    /* RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" /
     * "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA */
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '.': case '^': case '_': case '`': case '|': case '~':
        return true;
    default:
        return false;
    }
}

/* RFC 9110 §5.5: field-vchar = VCHAR / obs-text, plus SP and HTAB inside. */
static bool is_field_char(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7F); }

static bool is_ows(char c) { return c == ' ' || c == '\t'; }

static char lower(char c) { return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c; }

bool dx__http_is_token(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!dx__http_is_tchar((unsigned char)s[i]))
            return false;
    return true;
}

bool dx__http_is_field_value(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!is_field_char((unsigned char)s[i]))
            return false;
    return true;
}

bool dx__http_eq_ci(const char *a, size_t len, const char *b)
{
    for (size_t i = 0; i < len; i++) {
        if (b[i] == '\0' || lower(a[i]) != lower(b[i]))
            return false;
    }
    return b[len] == '\0';
}

/* Consumes a line end at buf[*pos]: CRLF or bare LF (RFC 9112 §2.2). */
static int line_end(const char *buf, size_t lim, size_t *pos)
{
    size_t p = *pos;
    if (p >= lim)
        return NEED_MORE;
    if (buf[p] == '\n') {
        *pos = p + 1;
        return 0;
    }
    if (buf[p] != '\r')
        return DX_EHTTP;
    if (p + 1 >= lim)
        return NEED_MORE;
    if (buf[p + 1] != '\n')
        return DX_EHTTP; /* a bare CR */
    *pos = p + 2;
    return 0;
}

/* "HTTP/1." DIGIT; RFC 9112 §2.3. Other majors are not HTTP/1 heads. */
static int parse_version(const char *buf, size_t lim, size_t *pos, int *minor)
{
    static const char prefix[] = "HTTP/1.";
    size_t p = *pos;
    for (size_t i = 0; i < sizeof prefix - 1; i++, p++) {
        if (p >= lim)
            return NEED_MORE;
        if (buf[p] != prefix[i])
            return DX_EHTTP;
    }
    if (p >= lim)
        return NEED_MORE;
    if (buf[p] < '0' || buf[p] > '9')
        return DX_EHTTP;
    *minor = buf[p] - '0';
    *pos = p + 1;
    return 0;
}

static int parse_headers(const char *buf, size_t lim, size_t *pos, dx_http_header *h, size_t max,
                         size_t *n_out)
{
    size_t p = *pos, n = 0;
    for (;;) {
        if (p >= lim)
            return NEED_MORE;
        char c = buf[p];
        if (c == '\r' || c == '\n') {
            int rc = line_end(buf, lim, &p);
            if (rc)
                return rc;
            *pos = p;
            *n_out = n;
            return 0;
        }
        /* RFC 9112 §5.2 obs-fold, and §2.2 whitespace before the first
         * header line: rejected rather than guessed at. */
        if (is_ows(c))
            return DX_EHTTP;
        if (n == max)
            return DX_ETOOMANYHEADERS;
        size_t ns = p;
        while (p < lim && dx__http_is_tchar((unsigned char)buf[p]))
            p++;
        if (p >= lim)
            return NEED_MORE;
        /* RFC 9112 §5.1: no whitespace between name and colon → 400. */
        if (p == ns || buf[p] != ':')
            return DX_EHTTP;
        size_t ne = p++;
        while (p < lim && is_ows(buf[p]))
            p++;
        size_t vs = p;
        while (p < lim && buf[p] != '\r' && buf[p] != '\n') {
            if (!is_field_char((unsigned char)buf[p]))
                return DX_EHTTP; /* NUL, other CTLs, DEL */
            p++;
        }
        size_t ve = p;
        int rc = line_end(buf, lim, &p);
        if (rc)
            return rc;
        while (ve > vs && is_ows(buf[ve - 1]))
            ve--;
        h[n].name = buf + ns;
        h[n].name_len = ne - ns;
        h[n].value = buf + vs;
        h[n].value_len = ve - vs;
        n++;
    }
}

static size_t effective_max(size_t max_head)
{
    if (max_head == 0)
        max_head = DX_HTTP_DEFAULT_MAX_HEAD;
    return max_head > INT_MAX ? INT_MAX : max_head;
}

static int finish(int rc, size_t len, size_t max_head, size_t pos)
{
    if (rc == NEED_MORE)
        return len >= max_head ? DX_EHEADTOOBIG : DX_EAGAIN;
    if (rc < 0)
        return rc;
    return (int)pos;
}

static int request_line(const char *buf, size_t lim, size_t *pos, dx_http_request *req)
{
    size_t p = *pos;
    /* RFC 9112 §2.2: ignore empty lines received before the request-line. */
    while (p < lim && (buf[p] == '\r' || buf[p] == '\n')) {
        int rc = line_end(buf, lim, &p);
        if (rc)
            return rc;
    }
    size_t ms = p;
    while (p < lim && dx__http_is_tchar((unsigned char)buf[p]))
        p++;
    if (p >= lim)
        return NEED_MORE;
    if (p == ms || buf[p] != ' ')
        return DX_EHTTP;
    req->method = buf + ms;
    req->method_len = p - ms;
    size_t ts = ++p;
    while (p < lim && buf[p] > 0x20 && buf[p] < 0x7F)
        p++;
    if (p >= lim)
        return NEED_MORE;
    if (p == ts || buf[p] != ' ')
        return DX_EHTTP;
    req->target = buf + ts;
    req->target_len = p - ts;
    p++;
    int rc = parse_version(buf, lim, &p, &req->minor_version);
    if (rc)
        return rc;
    rc = line_end(buf, lim, &p);
    if (rc)
        return rc;
    *pos = p;
    return 0;
}

int dx__http_parse_request(const char *buf, size_t len, dx_http_request *req,
                           dx_http_header *headers, size_t max_headers, size_t max_head)
{
    max_head = effective_max(max_head);
    size_t lim = len < max_head ? len : max_head, pos = 0;
    int rc = request_line(buf, lim, &pos, req);
    if (rc == 0) {
        req->headers = headers;
        rc = parse_headers(buf, lim, &pos, headers, max_headers, &req->n_headers);
    }
    return finish(rc, len, max_head, pos);
}

static int status_line(const char *buf, size_t lim, size_t *pos, dx_http_response *resp)
{
    size_t p = *pos;
    int rc = parse_version(buf, lim, &p, &resp->minor_version);
    if (rc)
        return rc;
    if (p >= lim)
        return NEED_MORE;
    if (buf[p++] != ' ')
        return DX_EHTTP;
    int status = 0;
    for (int i = 0; i < 3; i++, p++) {
        if (p >= lim)
            return NEED_MORE;
        if (buf[p] < '0' || buf[p] > '9' || (i == 0 && buf[p] == '0'))
            return DX_EHTTP;
        status = status * 10 + (buf[p] - '0');
    }
    resp->status = status;
    if (p >= lim)
        return NEED_MORE;
    size_t rs = p, re = p;
    if (buf[p] == ' ') {
        rs = ++p;
        while (p < lim && buf[p] != '\r' && buf[p] != '\n') {
            if (!is_field_char((unsigned char)buf[p]))
                return DX_EHTTP;
            p++;
        }
        re = p;
    }
    rc = line_end(buf, lim, &p);
    if (rc)
        return rc;
    resp->reason = buf + rs;
    resp->reason_len = re - rs;
    *pos = p;
    return 0;
}

int dx__http_parse_response(const char *buf, size_t len, dx_http_response *resp,
                            dx_http_header *headers, size_t max_headers, size_t max_head)
{
    max_head = effective_max(max_head);
    size_t lim = len < max_head ? len : max_head, pos = 0;
    int rc = status_line(buf, lim, &pos, resp);
    if (rc == 0) {
        resp->headers = headers;
        rc = parse_headers(buf, lim, &pos, headers, max_headers, &resp->n_headers);
    }
    return finish(rc, len, max_head, pos);
}

int dx_http_status_for_error(int err)
{
    switch (err) {
    case DX_OK:
    case DX_EAGAIN:
        return 0;
    case DX_EHTTP:
    case DX_EHANDSHAKE:
    case DX_EEXTENSION:
        return 400;
    case DX_EMETHOD:
        return 405;
    case DX_EVERSION:
        return 426;
    case DX_EHEADTOOBIG:
    case DX_ETOOMANYHEADERS:
        return 431;
    default:
        return 500;
    }
}

const char *dx_http_status_text(int status)
{
    switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

const dx_http_header *dx__http_find(const dx_http_header *h, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (dx__http_eq_ci(h[i].name, h[i].name_len, name))
            return &h[i];
    return NULL;
}

size_t dx__http_count(const dx_http_header *h, size_t n, const char *name)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += dx__http_eq_ci(h[i].name, h[i].name_len, name);
    return c;
}

bool dx__http_list_next(const char **cursor, const char *end, const char **item, size_t *item_len)
{
    const char *p = *cursor;
    while (p < end && (is_ows(*p) || *p == ','))
        p++;
    if (p >= end) {
        *cursor = end;
        return false;
    }
    const char *s = p;
    bool quoted = false;
    for (; p < end; p++) {
        if (quoted) {
            if (*p == '\\' && p + 1 < end)
                p++; /* quoted-pair */
            else if (*p == '"')
                quoted = false;
        } else if (*p == '"') {
            quoted = true;
        } else if (*p == ',') {
            break;
        }
    }
    const char *e = p;
    while (e > s && is_ows(e[-1]))
        e--;
    *item = s;
    *item_len = (size_t)(e - s);
    *cursor = p;
    return true;
}

bool dx__http_list_has(const char *value, size_t len, const char *token)
{
    const char *cur = value, *item;
    size_t n;
    while (dx__http_list_next(&cur, value + len, &item, &n))
        if (dx__http_eq_ci(item, n, token))
            return true;
    return false;
}

void dx__http_list_iter_init(dx_http_list_iter *it, const dx_http_header *h, size_t n, const char *name)
{
    it->h = h;
    it->n = n;
    it->name = name;
    it->i = 0;
    it->cur = it->end = NULL;
}

bool dx__http_list_iter_next(dx_http_list_iter *it, const char **item, size_t *item_len)
{
    for (;;) {
        if (it->cur && dx__http_list_next(&it->cur, it->end, item, item_len))
            return true;
        while (it->i < it->n && !dx__http_eq_ci(it->h[it->i].name, it->h[it->i].name_len, it->name))
            it->i++;
        if (it->i >= it->n)
            return false;
        it->cur = it->h[it->i].value;
        it->end = it->cur + it->h[it->i].value_len;
        it->i++;
    }
}

bool dx__http_headers_have(const dx_http_header *h, size_t n, const char *name, const char *token)
{
    for (size_t i = 0; i < n; i++)
        if (dx__http_eq_ci(h[i].name, h[i].name_len, name) &&
            dx__http_list_has(h[i].value, h[i].value_len, token))
            return true;
    return false;
}

bool dx__http_valid_header_block(const char *block)
{
    const char *p = block;
    while (*p) {
        const char *ns = p;
        while (dx__http_is_tchar((unsigned char)*p))
            p++;
        if (p == ns || *p != ':')
            return false;
        p++;
        while (*p && *p != '\r' && *p != '\n') {
            if (!is_field_char((unsigned char)*p))
                return false;
            p++;
        }
        if (p[0] != '\r' || p[1] != '\n')
            return false;
        p += 2;
    }
    return true;
}

int dx__http_error_response(char *out, size_t cap, int status, const char *extra_headers, const char *body)
{
    if (status < 100 || status > 999)
        return DX_EINVAL;
    if (extra_headers && !dx__http_valid_header_block(extra_headers))
        return DX_EINVAL;
    if (!body)
        body = dx_http_status_text(status);
    if (strpbrk(body, "\r\n"))
        return DX_EINVAL;
    char num[16];
    size_t blen = strlen(body) + 1;
    dx_http_out o;
    dx__http_out_init(&o, out, cap);
    dx__http_out_str(&o, "HTTP/1.1 ");
    num[0] = (char)('0' + status / 100);
    num[1] = (char)('0' + status / 10 % 10);
    num[2] = (char)('0' + status % 10);
    dx__http_out_mem(&o, num, 3);
    dx__http_out_str(&o, " ");
    dx__http_out_str(&o, dx_http_status_text(status));
    dx__http_out_str(&o, "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    /* Decimal length, written by hand: no locale, no format strings. */
    size_t k = sizeof num;
    do {
        num[--k] = (char)('0' + blen % 10);
        blen /= 10;
    } while (blen);
    dx__http_out_mem(&o, num + k, sizeof num - k);
    dx__http_out_str(&o, status == 426 ? "\r\nConnection: Upgrade, close\r\n" : "\r\nConnection: close\r\n");
    if (extra_headers)
        dx__http_out_str(&o, extra_headers);
    dx__http_out_str(&o, "\r\n");
    dx__http_out_str(&o, body);
    dx__http_out_str(&o, "\n");
    return dx__http_out_finish(&o);
}
