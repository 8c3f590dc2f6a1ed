/*
 * tests/fuzz/fuzz_http.c: libFuzzer target for src/proto/http.c.
 *
 * The input is parsed as a request and as a response, with the default
 * limits and with small ones (so the 431 paths are reached). Invariants,
 * each abort()s when broken:
 *  - a complete head of n bytes parses to n from exactly n bytes, to
 *    DX_EAGAIN from n-1 bytes, and to n again with other bytes after it;
 *  - an error answer is the answer of every longer buffer, and a prefix
 *    gives either DX_EAGAIN or that same error;
 *  - DX_EAGAIN only while len < max_head;
 *  - every pointer lies inside the head, names are non-empty tokens,
 *    values have no CR/LF/NUL and no leading or trailing OWS;
 *  - list iteration over each value yields non-empty, trimmed items inside it;
 *  - the incremental parser (dx_http_head), fed the input in pieces (byte by
 *    byte, at a split point, in pieces sized by the input's first byte) from
 *    a buffer that moves between calls, gives the stateless verdict at every
 *    step;
 *  - the chunked decoder, fed the input whole, byte by byte and in other
 *    pieces, gives the same data, the same verdict and the same end; its
 *    data spans lie inside the input and a decoded body is never longer
 *    than the bytes consumed.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/http.h"

#define MAXH 80

typedef struct res {
    int rc;
    dx_http_request rq;
    dx_http_response rs;
    dx_http_header h[MAXH];
} res;

static void check(bool ok)
{
    if (!ok)
        abort();
}

static int run(bool response, const char *buf, size_t len, res *r, size_t max_headers, size_t max_head)
{
    if (response)
        r->rc = dx__http_parse_response(buf, len, &r->rs, r->h, max_headers, max_head);
    else
        r->rc = dx__http_parse_request(buf, len, &r->rq, r->h, max_headers, max_head);
    return r->rc;
}

static bool inside(const char *p, size_t len, const char *base, size_t n)
{
    return p >= base && p <= base + n && len <= (size_t)(base + n - p);
}

static bool is_ows(char c) { return c == ' ' || c == '\t'; }

static void check_head(bool response, const char *buf, res *r)
{
    size_t n = (size_t)r->rc, nh;
    const dx_http_header *h;
    check(buf[n - 1] == '\n');
    if (response) {
        check(r->rs.status >= 100 && r->rs.status <= 999);
        check(inside(r->rs.reason, r->rs.reason_len, buf, n));
        nh = r->rs.n_headers;
        h = r->rs.headers;
    } else {
        check(dx__http_is_token(r->rq.method, r->rq.method_len));
        check(inside(r->rq.method, r->rq.method_len, buf, n));
        check(inside(r->rq.target, r->rq.target_len, buf, n) && r->rq.target_len > 0);
        for (size_t i = 0; i < r->rq.target_len; i++)
            check(r->rq.target[i] > 0x20 && r->rq.target[i] < 0x7F);
        nh = r->rq.n_headers;
        h = r->rq.headers;
    }
    check(h == r->h);
    for (size_t i = 0; i < nh; i++) {
        check(inside(h[i].name, h[i].name_len, buf, n));
        check(inside(h[i].value, h[i].value_len, buf, n));
        check(dx__http_is_token(h[i].name, h[i].name_len));
        check(h[i].name[h[i].name_len] == ':');
        check(dx__http_is_field_value(h[i].value, h[i].value_len));
        for (size_t k = 0; k < h[i].value_len; k++)
            check(h[i].value[k] != '\r' && h[i].value[k] != '\n' && h[i].value[k] != '\0');
        if (h[i].value_len)
            check(!is_ows(h[i].value[0]) && !is_ows(h[i].value[h[i].value_len - 1]));
        const char *cur = h[i].value, *end = h[i].value + h[i].value_len, *item;
        size_t item_len, guard = 0;
        while (dx__http_list_next(&cur, end, &item, &item_len)) {
            check(item_len > 0 && inside(item, item_len, h[i].value, h[i].value_len));
            check(!is_ows(item[0]) && !is_ows(item[item_len - 1]));
            check(++guard <= h[i].value_len);
        }
        check(cur == end);
    }
}

static bool same(bool response, const res *a, const res *b)
{
    if (a->rc != b->rc)
        return false;
    if (a->rc <= 0)
        return true;
    size_t n;
    if (response) {
        if (a->rs.status != b->rs.status || a->rs.reason != b->rs.reason || a->rs.reason_len != b->rs.reason_len ||
            a->rs.minor_version != b->rs.minor_version || a->rs.n_headers != b->rs.n_headers)
            return false;
        n = a->rs.n_headers;
    } else {
        if (a->rq.method != b->rq.method || a->rq.method_len != b->rq.method_len || a->rq.target != b->rq.target ||
            a->rq.target_len != b->rq.target_len || a->rq.minor_version != b->rq.minor_version ||
            a->rq.n_headers != b->rq.n_headers)
            return false;
        n = a->rq.n_headers;
    }
    return memcmp(a->h, b->h, n * sizeof a->h[0]) == 0;
}

static void one(bool response, const char *buf, size_t len, size_t max_headers, size_t max_head)
{
    static res a, b;
    size_t eff = max_head ? max_head : DX_HTTP_DEFAULT_MAX_HEAD;
    int rc = run(response, buf, len, &a, max_headers, max_head);
    check(rc > 0 || rc == DX_EAGAIN || rc == DX_EHTTP || rc == DX_EHEADTOOBIG || rc == DX_ETOOMANYHEADERS);
    if (rc == DX_EAGAIN)
        check(len < eff);
    if (rc == DX_EHEADTOOBIG)
        check(len >= eff);
    if (rc > 0) {
        size_t n = (size_t)rc;
        check(n <= len && n <= eff);
        check_head(response, buf, &a);
        check(run(response, buf, n, &b, max_headers, max_head) == rc && same(response, &a, &b));
        check(run(response, buf, n - 1, &b, max_headers, max_head) == DX_EAGAIN);
        /* Bytes after the head never matter: flip them all. */
        if (n < len) {
            char *copy = malloc(len);
            memcpy(copy, buf, len);
            for (size_t i = n; i < len; i++)
                copy[i] = (char)~copy[i];
            int rc2 = run(response, copy, len, &b, max_headers, max_head);
            check(rc2 == rc);
            /* same fields, shifted to the copy */
            for (size_t i = 0; i < (response ? b.rs.n_headers : b.rq.n_headers); i++)
                check(b.h[i].name - copy == a.h[i].name - buf && b.h[i].value_len == a.h[i].value_len);
            free(copy);
        }
    }
    /* A few prefixes: EAGAIN, or the final answer once it is known. */
    size_t cuts[3] = {len / 2, len / 3, len ? len - 1 : 0};
    for (int i = 0; i < 3; i++) {
        int p = run(response, buf, cuts[i], &b, max_headers, max_head);
        if (rc > 0) /* complete once the whole head is in, incomplete before */
            check(cuts[i] >= (size_t)rc ? p == rc : p == DX_EAGAIN);
        else
            check(p == DX_EAGAIN || p == rc);
    }
}

/* Feeds buf[0..len) to the incremental parser in pieces of `piece` bytes
 * (a split at `split` first when piece is 0), copying the bytes received so
 * far to a fresh buffer each time (so the state may hold no pointer), and
 * checks each verdict against the stateless parse of the same prefix. */
static void incremental(bool response, const char *buf, size_t len, size_t piece, size_t split, size_t max_headers,
                        size_t max_head)
{
    static res ref;
    dx_http_head h;
    dx__http_head_init(&h, response);
    size_t at = 0;
    int rc = DX_EAGAIN;
    while (at < len) {
        size_t step = piece ? piece : (at < split ? split - at : len - at);
        if (step == 0 || step > len - at)
            step = len - at;
        at += step;
        char *moved = malloc(at ? at : 1);
        memcpy(moved, buf, at);
        rc = dx__http_head_feed(&h, moved, at, max_headers, max_head);
        int want = run(response, moved, at, &ref, max_headers, max_head);
        check(rc == want);
        free(moved);
        if (rc != DX_EAGAIN)
            break;
    }
    /* a final verdict repeats */
    if (rc != DX_EAGAIN)
        check(dx__http_head_feed(&h, buf, len, max_headers, max_head) == rc);
}

typedef struct dechunked {
    int rc;
    size_t used;
    size_t len;
    uint8_t *data;
} dechunked;

static dechunked dechunk(const uint8_t *in, size_t len, size_t piece)
{
    dechunked o = {0, 0, 0, malloc(len + 1)};
    dx_http_chunked d;
    dx__http_chunked_init(&d);
    size_t at = 0;
    while (at < len && o.rc == 0) {
        size_t n = piece && piece < len - at ? piece : len - at;
        size_t off = 0;
        while (off < n) {
            size_t used, dl;
            const uint8_t *p;
            int rc = dx__http_chunked_step(&d, in + at + off, n - off, &used, &p, &dl);
            check(used <= n - off);
            if (dl) {
                check(p >= in + at + off && p + dl <= in + at + off + used);
                memcpy(o.data + o.len, p, dl);
                o.len += dl;
            }
            off += used;
            if (rc != 0) {
                check(rc == 1 || rc == DX_EHTTP);
                o.rc = rc;
                break;
            }
            check(used > 0);
        }
        at += off;
    }
    o.used = at;
    check(o.len <= o.used);
    return o;
}

static void chunked(const uint8_t *in, size_t len)
{
    dechunked whole = dechunk(in, len, 0);
    size_t pieces[3] = {1, 7, len > 2 ? len / 2 : 1};
    for (int i = 0; i < 3; i++) {
        dechunked o = dechunk(in, len, pieces[i]);
        check(o.rc == whole.rc && o.len == whole.len && memcmp(o.data, whole.data, o.len) == 0);
        if (whole.rc == 1)
            check(o.used == whole.used);
        free(o.data);
    }
    free(whole.data);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    for (int response = 0; response < 2; response++) {
        one(response, buf, size, MAXH, 0);
        one(response, buf, size, 4, 200);
        one(response, buf, size, 0, 64);
        size_t piece = size ? (size_t)data[0] % 17 + 1 : 1;
        incremental(response, buf, size, piece, 0, MAXH, 0);
        incremental(response, buf, size, 0, size / 2, 4, 200);
        if (size <= 1024)
            incremental(response, buf, size, 1, 0, MAXH, 0);
    }
    chunked(data, size);
    return 0;
}
