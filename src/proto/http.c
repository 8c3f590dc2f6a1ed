/*
 * src/proto/http.c: HTTP/1.1 head parser and helpers (see http.h).
 *
 * Layer: proto. Depends on libc only: no sockets, no allocation, no logging.
 *
 * Invariants: the parser reads buf[pos..lim) with lim = min(len, max_head)
 * and nothing else; it reads sequentially and decides at each byte with
 * what it has seen so far, so a prefix never gives an answer that a longer
 * input would contradict: running out of bytes is "incomplete" (DX_EAGAIN,
 * or DX_EHEADTOOBIG when lim reached max_head), never a guess. Every stored
 * pointer lies inside buf[0..lim). The chunked decoder likewise keeps O(1)
 * state and gives the same data and verdict for any split of its input.
 */
#include "proto/http.h"
#include "core/hex.h"

#include <limits.h>

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

/*
 * The head parser is one byte-at-a-time state machine (dx_http_head): it
 * keeps its position and state between calls, so a head delivered in n
 * pieces costs O(total bytes), not O(n * length). It only stores offsets,
 * never pointers, so the caller's buffer may move (grow) between calls. The
 * stateless entry points below run the same machine once over a complete
 * buffer and turn the offsets into pointers: one grammar, two uses.
 */
enum {
    P_RQ_START, /* skipping empty lines before the request-line */
    P_RQ_START_LF,
    P_METHOD,
    P_TARGET0,
    P_TARGET,
    P_VERSION,  /* "HTTP/1." DIGIT, sub counts the bytes */
    P_EOL,      /* after the version: CR or LF */
    P_EOL_LF,   /* after a CR: LF */
    P_ST_SP,    /* response: SP after the version */
    P_ST_CODE,  /* three digits, sub counts them */
    P_ST_AFTER, /* SP and a reason, or the line end */
    P_ST_REASON,
    P_H_START,  /* start of a header line or of the blank line */
    P_H_NAME,
    P_H_OWS,
    P_H_VALUE,
    P_H_LF,
    P_END_LF,
    P_DONE,
    P_ERROR
};

void dx__http_head_init(dx_http_head *h, bool response)
{
    memset(h, 0, sizeof *h);
    h->response = response;
    h->state = response ? P_VERSION : P_RQ_START;
}

static size_t effective_max(size_t max_head)
{
    if (max_head == 0)
        max_head = DX_HTTP_DEFAULT_MAX_HEAD;
    return max_head > INT_MAX ? INT_MAX : max_head;
}

/* One header line ended at buf[p] (its CR or LF): count it, and store it
 * when the caller gave an array (the stateless parse). */
static void header_done(dx_http_head *h, const char *buf, dx_http_header *out)
{
    if (out) {
        dx_http_header *x = &out[h->n_headers];
        x->name = buf + h->ns;
        x->name_len = h->ne - h->ns;
        x->value = buf + h->vs;
        x->value_len = h->ve - h->vs;
    }
    h->n_headers++;
}

/* Runs the machine over buf[h->pos .. min(len, max_head)). */
static int head_run(dx_http_head *h, const char *buf, size_t len, size_t max_headers, size_t max_head,
                    dx_http_header *out)
{
    static const char version[] = "HTTP/1.";
    if (h->state == P_ERROR)
        return h->err;
    if (h->state == P_DONE)
        return (int)h->pos;
    max_head = effective_max(max_head);
    size_t lim = len < max_head ? len : max_head, p = h->pos;
    if (p < lim)
        h->examined += lim - p;
    int err = DX_EHTTP;
    for (; p < lim; p++) {
        unsigned char c = (unsigned char)buf[p];
        switch (h->state) {
        case P_RQ_START: /* RFC 9112 §2.2: ignore empty lines before the request-line */
            if (c == '\r')
                h->state = P_RQ_START_LF;
            else if (c == '\n')
                ;
            else if (dx__http_is_tchar(c)) {
                h->ms = (uint32_t)p;
                h->state = P_METHOD;
            } else
                goto fail;
            break;
        case P_RQ_START_LF:
            if (c != '\n')
                goto fail; /* a bare CR */
            h->state = P_RQ_START;
            break;
        case P_METHOD:
            if (c == ' ') {
                h->me = (uint32_t)p;
                h->state = P_TARGET0;
            } else if (!dx__http_is_tchar(c))
                goto fail;
            break;
        case P_TARGET0:
        case P_TARGET:
            if (c > 0x20 && c < 0x7F) {
                if (h->state == P_TARGET0)
                    h->ts = (uint32_t)p;
                h->state = P_TARGET;
                /* The rest of the target in a tight loop: the same test,
                 * without a trip through the switch per byte. */
                while (p + 1 < lim && (unsigned char)buf[p + 1] > 0x20 && (unsigned char)buf[p + 1] < 0x7F)
                    p++;
            } else if (c == ' ' && h->state == P_TARGET) {
                h->te = (uint32_t)p;
                h->state = P_VERSION;
                h->sub = 0;
            } else
                goto fail;
            break;
        case P_VERSION: /* RFC 9112 §2.3: other majors are not HTTP/1 heads */
            if (h->sub < sizeof version - 1) {
                if (c != (unsigned char)version[h->sub])
                    goto fail;
                h->sub++;
                break;
            }
            if (c < '0' || c > '9')
                goto fail;
            h->minor = (uint8_t)(c - '0');
            h->state = h->response ? P_ST_SP : P_EOL;
            break;
        case P_EOL: /* RFC 9112 §2.2: CRLF or a bare LF */
            if (c == '\n')
                h->state = P_H_START;
            else if (c == '\r')
                h->state = P_EOL_LF;
            else
                goto fail;
            break;
        case P_EOL_LF:
            if (c != '\n')
                goto fail;
            h->state = P_H_START;
            break;
        case P_ST_SP:
            if (c != ' ')
                goto fail;
            h->state = P_ST_CODE;
            h->sub = 0;
            h->status = 0;
            break;
        case P_ST_CODE:
            if (c < '0' || c > '9' || (h->sub == 0 && c == '0'))
                goto fail;
            h->status = (uint16_t)(h->status * 10 + (c - '0'));
            if (++h->sub == 3)
                h->state = P_ST_AFTER;
            break;
        case P_ST_AFTER: /* the SP before an empty reason may be missing */
            if (c == ' ') {
                h->ts = h->te = (uint32_t)p + 1;
                h->state = P_ST_REASON;
            } else if (c == '\r' || c == '\n') {
                h->ts = h->te = (uint32_t)p;
                h->state = c == '\r' ? P_EOL_LF : P_H_START;
            } else
                goto fail;
            break;
        case P_ST_REASON:
            if (c == '\r' || c == '\n') {
                h->te = (uint32_t)p;
                h->state = c == '\r' ? P_EOL_LF : P_H_START;
            } else if (!is_field_char(c))
                goto fail;
            break;
        case P_H_START:
            if (c == '\r') {
                h->state = P_END_LF;
            } else if (c == '\n') {
                h->state = P_DONE;
            } else if (is_ows((char)c)) {
                /* RFC 9112 §5.2 obs-fold, and §2.2 whitespace before the
                 * first header line: rejected rather than guessed at. */
                goto fail;
            } else if (h->n_headers == max_headers) {
                err = DX_ETOOMANYHEADERS;
                goto fail;
            } else if (dx__http_is_tchar(c)) {
                h->ns = (uint32_t)p;
                h->state = P_H_NAME;
            } else
                goto fail;
            break;
        case P_H_NAME: /* RFC 9112 §5.1: no whitespace between name and colon */
            if (c == ':') {
                h->ne = (uint32_t)p;
                h->state = P_H_OWS;
            } else if (!dx__http_is_tchar(c))
                goto fail;
            else
                while (p + 1 < lim && dx__http_is_tchar((unsigned char)buf[p + 1]))
                    p++; /* the rest of the name, as above */
            break;
        case P_H_OWS:
        case P_H_VALUE:
            if (c == '\r' || c == '\n') {
                if (h->state == P_H_OWS)
                    h->vs = h->ve = (uint32_t)p;
                if (c == '\r') {
                    h->state = P_H_LF;
                } else {
                    header_done(h, buf, out);
                    h->state = P_H_START;
                }
            } else if (h->state == P_H_OWS && is_ows((char)c)) {
                ;
            } else if (is_field_char(c)) { /* not NUL, other CTLs, DEL */
                if (h->state == P_H_OWS) {
                    h->vs = (uint32_t)p;
                    h->state = P_H_VALUE;
                }
                if (!is_ows((char)c))
                    h->ve = (uint32_t)p + 1; /* trailing OWS is trimmed */
                /* The rest of the value in a tight loop: each byte does
                 * exactly what this case would do with it in P_H_VALUE. */
                uint32_t ve = h->ve;
                while (p + 1 < lim) {
                    unsigned char d = (unsigned char)buf[p + 1];
                    if (d == '\r' || d == '\n' || !is_field_char(d))
                        break;
                    p++;
                    if (!is_ows((char)d))
                        ve = (uint32_t)p + 1;
                }
                h->ve = ve;
            } else
                goto fail;
            break;
        case P_H_LF:
            if (c != '\n')
                goto fail;
            header_done(h, buf, out);
            h->state = P_H_START;
            break;
        case P_END_LF:
            if (c != '\n')
                goto fail;
            h->state = P_DONE;
            break;
        default:
            goto fail;
        }
        if (h->state == P_DONE) {
            h->pos = (uint32_t)p + 1;
            return (int)h->pos;
        }
    }
    h->pos = (uint32_t)p;
    return len >= max_head ? DX_EHEADTOOBIG : DX_EAGAIN;
fail:
    h->pos = (uint32_t)p;
    h->state = P_ERROR;
    h->err = err;
    return err;
}

int dx__http_head_feed(dx_http_head *h, const char *buf, size_t len, size_t max_headers, size_t max_head)
{
    return head_run(h, buf, len, max_headers, max_head, NULL);
}

int dx__http_parse_request(const char *buf, size_t len, dx_http_request *req,
                           dx_http_header *headers, size_t max_headers, size_t max_head)
{
    dx_http_head h;
    dx__http_head_init(&h, false);
    int rc = head_run(&h, buf, len, max_headers, max_head, headers);
    if (rc > 0) {
        req->method = buf + h.ms;
        req->method_len = h.me - h.ms;
        req->target = buf + h.ts;
        req->target_len = h.te - h.ts;
        req->minor_version = h.minor;
        req->headers = headers;
        req->n_headers = h.n_headers;
    }
    return rc;
}

int dx__http_parse_response(const char *buf, size_t len, dx_http_response *resp,
                            dx_http_header *headers, size_t max_headers, size_t max_head)
{
    dx_http_head h;
    dx__http_head_init(&h, true);
    int rc = head_run(&h, buf, len, max_headers, max_head, headers);
    if (rc > 0) {
        resp->minor_version = h.minor;
        resp->status = h.status;
        resp->reason = buf + h.ts;
        resp->reason_len = h.te - h.ts;
        resp->headers = headers;
        resp->n_headers = h.n_headers;
    }
    return rc;
}

/* ---- chunked transfer coding (RFC 9112 §7.1) ------------------------------ */

enum {
    C_SIZE0,    /* first hex digit of a chunk-size */
    C_SIZE,     /* more digits, ';' extensions, or CR */
    C_SIZE_WS,  /* BWS before ';' */
    C_EXT,      /* chunk-ext up to CR */
    C_SIZE_LF,
    C_DATA,
    C_DATA_CR,
    C_DATA_LF,
    C_TRAILER0, /* start of a trailer line or of the final blank line */
    C_TRAILER_NAME,
    C_TRAILER_VALUE,
    C_TRAILER_LF,
    C_END_LF,
    C_DONE,
    C_ERROR
};

void dx__http_chunked_init(dx_http_chunked *d) { memset(d, 0, sizeof *d); }

uint64_t dx__http_chunked_left(const dx_http_chunked *d) { return d->state == C_DATA ? d->size : 0; }


int dx__http_chunked_step(dx_http_chunked *d, const uint8_t *in, size_t len, size_t *used, const uint8_t **data,
                          size_t *data_len)
{
    size_t p = 0;
    *data = NULL;
    *data_len = 0;
    *used = 0;
    if (d->state == C_DONE)
        return 1;
    if (d->state == C_ERROR)
        return DX_EHTTP;
    while (p < len) {
        if (d->state == C_DATA) {
            size_t take = len - p;
            if (take > d->size)
                take = (size_t)d->size;
            *data = in + p;
            *data_len = take;
            d->size -= take;
            p += take;
            if (d->size == 0)
                d->state = C_DATA_CR;
            *used = p;
            return 0;
        }
        unsigned char c = in[p++];
        d->overhead++;
        /* A size line (digits and extensions) or a trailer line is bounded. */
        if (++d->line > DX_HTTP_CHUNK_LINE_MAX)
            goto fail;
        int v;
        switch (d->state) {
        case C_SIZE0:
        case C_SIZE:
            v = dx__hexval(c);
            if (v >= 0) {
                if (d->size >> 54) /* past 2^58: no real body is that big */
                    goto fail;
                d->size = d->size * 16 + (uint64_t)v;
                d->state = C_SIZE;
            } else if (d->state == C_SIZE0) {
                goto fail;
            } else if (c == ';') {
                d->state = C_EXT;
            } else if (is_ows((char)c)) {
                d->state = C_SIZE_WS;
            } else if (c == '\r') {
                d->state = C_SIZE_LF;
            } else
                goto fail;
            break;
        case C_SIZE_WS:
            if (c == ';')
                d->state = C_EXT;
            else if (!is_ows((char)c))
                goto fail;
            break;
        case C_EXT: /* chunk-ext: not interpreted, only checked for CTLs */
            if (c == '\r')
                d->state = C_SIZE_LF;
            else if (!is_field_char(c))
                goto fail;
            break;
        case C_SIZE_LF:
            if (c != '\n')
                goto fail;
            d->line = 0;
            d->state = d->size ? C_DATA : C_TRAILER0;
            break;
        case C_DATA_CR:
            if (c != '\r')
                goto fail;
            d->state = C_DATA_LF;
            break;
        case C_DATA_LF:
            if (c != '\n')
                goto fail;
            d->line = 0;
            d->state = C_SIZE0;
            break;
        case C_TRAILER0:
            if (c == '\r')
                d->state = C_END_LF;
            else if (dx__http_is_tchar(c))
                d->state = C_TRAILER_NAME;
            else
                goto fail;
            break;
        case C_TRAILER_NAME:
            if (c == ':')
                d->state = C_TRAILER_VALUE;
            else if (!dx__http_is_tchar(c))
                goto fail;
            break;
        case C_TRAILER_VALUE:
            if (c == '\r')
                d->state = C_TRAILER_LF;
            else if (!is_field_char(c))
                goto fail;
            break;
        case C_TRAILER_LF:
            if (c != '\n')
                goto fail;
            d->line = 0;
            d->state = C_TRAILER0;
            break;
        case C_END_LF:
            if (c != '\n')
                goto fail;
            d->state = C_DONE;
            *used = p;
            return 1;
        default:
            goto fail;
        }
    }
    *used = p;
    return 0;
fail:
    d->state = C_ERROR;
    *used = p;
    return DX_EHTTP;
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
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
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
