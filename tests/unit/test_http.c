/* tests/unit/test_http.c: src/proto/http.c — the HTTP/1.1 head parser and helpers.
 *
 * Every vector is parsed whole, at every prefix and with bytes after it, each
 * time copied so that it ends against a PROT_NONE page: an over-read faults.
 * The stateless parse of a prefix covers every split point of the stateless
 * entry; the incremental parser (dx_http_head) is fed every vector byte by
 * byte and at every two-way split, from a buffer that moves between calls,
 * and must give the stateless verdict at each step. A work count shows that
 * a trickled head costs what a whole one does. The chunked decoder gets the
 * same treatment: every split gives the same data and verdict. */
#define _DEFAULT_SOURCE
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "proto/http.h"

/* ---- guard page ---------------------------------------------------------- */

typedef struct guard {
    char *base;
    size_t size, usable;
} guard;

static void guard_init(guard *g, size_t max_len)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    g->usable = (max_len + pg - 1) / pg * pg;
    if (g->usable == 0)
        g->usable = pg;
    g->size = g->usable + pg;
    g->base = mmap(NULL, g->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(g->base != MAP_FAILED);
    assert_int_equal(mprotect(g->base + g->usable, pg, PROT_NONE), 0);
}

/* Copies s[0..len) so that it ends at the protected page. */
static const char *guard_put(guard *g, const char *s, size_t len)
{
    assert_true(len <= g->usable);
    char *p = g->base + g->usable - len;
    memcpy(p, s, len);
    return p;
}

static void guard_free(guard *g) { munmap(g->base, g->size); }

/* ---- helpers ------------------------------------------------------------- */

static dx_http_header hdrs[DX_HTTP_DEFAULT_MAX_HEADERS];

static int preq(const char *s, size_t len, dx_http_request *r)
{
    return dx__http_parse_request(s, len, r, hdrs, DX_HTTP_DEFAULT_MAX_HEADERS, 0);
}

static int presp(const char *s, size_t len, dx_http_response *r)
{
    return dx__http_parse_response(s, len, r, hdrs, DX_HTTP_DEFAULT_MAX_HEADERS, 0);
}

static int parse_as(bool response, const char *s, size_t len)
{
    dx_http_request rq;
    dx_http_response rs;
    return response ? presp(s, len, &rs) : preq(s, len, &rq);
}

/* Feeds s[0..k) to the incremental parser, from a buffer at a new place each
 * time (the state keeps offsets only), ending against the guard page. */
static int feed_at(guard *g, dx_http_head *h, const char *s, size_t k, size_t shift)
{
    char *p = g->base + g->usable - k - (shift % 8);
    memmove(p, s, k); /* s may already be in the guard region */
    return dx__http_head_feed(h, p, k, DX_HTTP_DEFAULT_MAX_HEADERS, 0);
}

/* The incremental parser agrees with the stateless one at every step, fed
 * byte by byte and at every two-way split. */
static void check_incremental(bool response, const char *s, size_t len, int want)
{
    guard g;
    guard_init(&g, len + 16);
    char *copy = malloc(len + 1);
    memcpy(copy, s, len);
    dx_http_head h;
    dx__http_head_init(&h, response);
    for (size_t k = 1; k <= len; k++) {
        int rc = feed_at(&g, &h, copy, k, k);
        int ref = parse_as(response, copy, k);
        if (rc != ref)
            fail_msg("byte by byte, %zu of [%s]: incremental %d, stateless %d", k, s, rc, ref);
    }
    if (len && feed_at(&g, &h, copy, len, 0) != want)
        fail_msg("byte by byte [%s]: final verdict differs", s);
    for (size_t k = 0; k <= len; k++) {
        dx__http_head_init(&h, response);
        (void)feed_at(&g, &h, copy, k, 3);
        int rc = feed_at(&g, &h, copy, len, 5);
        if (rc != want)
            fail_msg("split at %zu of [%s]: got %d want %d", k, s, rc, want);
    }
    free(copy);
    guard_free(&g);
}

/*
 * The split property for one vector: the whole gives `want`; every prefix
 * gives DX_EAGAIN until the answer is known and then the same answer; the
 * vector with trailing bytes gives the same answer. All against a guard page.
 */
static void check_vector(bool response, const char *s, int want)
{
    size_t len = strlen(s);
    guard g;
    guard_init(&g, len + 16);
    int got = parse_as(response, guard_put(&g, s, len), len);
    if (got != want)
        fail_msg("%s: want %d got %d for [%s]", response ? "resp" : "req", want, got, s);
    bool decided = false;
    for (size_t k = 0; k < len; k++) {
        int rc = parse_as(response, guard_put(&g, s, k), k);
        if (want > 0 && rc != DX_EAGAIN)
            fail_msg("prefix %zu of [%s]: got %d, want EAGAIN", k, s, rc);
        if (want < 0) {
            if (decided && rc != want)
                fail_msg("prefix %zu of [%s]: got %d after the error was known", k, s, rc);
            if (rc != DX_EAGAIN && rc != want)
                fail_msg("prefix %zu of [%s]: got %d, want EAGAIN or %d", k, s, rc, want);
            decided = rc == want;
        }
    }
    check_incremental(response, s, len, want);
    char *longer = malloc(len + 16);
    memcpy(longer, s, len);
    memcpy(longer + len, "GET / HTTP/1.1\r\n", 16);
    assert_int_equal(parse_as(response, guard_put(&g, longer, len + 16), len + 16), want);
    free(longer);
    guard_free(&g);
}

static bool hdr_is(const dx_http_header *h, const char *name, const char *value)
{
    return h->name_len == strlen(name) && memcmp(h->name, name, h->name_len) == 0 &&
           h->value_len == strlen(value) && memcmp(h->value, value, h->value_len) == 0;
}

/* ---- request and response basics ---------------------------------------- */

static const char rfc_request[] = "GET /chat HTTP/1.1\r\n"
                                  "Host: server.example.com\r\n"
                                  "Upgrade: websocket\r\n"
                                  "Connection: Upgrade\r\n"
                                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                  "Origin: http://example.com\r\n"
                                  "Sec-WebSocket-Protocol: chat, superchat\r\n"
                                  "Sec-WebSocket-Version: 13\r\n"
                                  "\r\n";

static void test_request_fields(void **state)
{
    (void)state;
    dx_http_request r;
    size_t len = sizeof rfc_request - 1;
    assert_int_equal(preq(rfc_request, len, &r), (int)len);
    assert_int_equal(r.method_len, 3);
    assert_memory_equal(r.method, "GET", 3);
    assert_int_equal(r.target_len, 5);
    assert_memory_equal(r.target, "/chat", 5);
    assert_int_equal(r.minor_version, 1);
    assert_int_equal(r.n_headers, 7);
    assert_ptr_equal(r.headers, hdrs);
    assert_true(hdr_is(&r.headers[0], "Host", "server.example.com"));
    assert_true(hdr_is(&r.headers[4], "Origin", "http://example.com"));
    assert_true(hdr_is(&r.headers[5], "Sec-WebSocket-Protocol", "chat, superchat"));
    assert_true(hdr_is(&r.headers[6], "Sec-WebSocket-Version", "13"));
    check_vector(false, rfc_request, (int)len);
}

static void test_response_fields(void **state)
{
    (void)state;
    static const char s[] = "HTTP/1.1 101 Switching Protocols\r\n"
                            "Upgrade: websocket\r\n"
                            "Connection: Upgrade\r\n"
                            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                            "Sec-WebSocket-Protocol: chat\r\n\r\n";
    dx_http_response r;
    assert_int_equal(presp(s, sizeof s - 1, &r), (int)sizeof s - 1);
    assert_int_equal(r.status, 101);
    assert_int_equal(r.minor_version, 1);
    assert_int_equal(r.reason_len, strlen("Switching Protocols"));
    assert_memory_equal(r.reason, "Switching Protocols", r.reason_len);
    assert_int_equal(r.n_headers, 4);
    assert_true(hdr_is(&r.headers[2], "Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    check_vector(true, s, (int)sizeof s - 1);
}

static void test_ows_trimmed_and_empty_values(void **state)
{
    (void)state;
    static const char s[] = "GET / HTTP/1.0\r\nA:  x y \t\r\nB:\r\nC: \t \r\nD:z\r\n\r\n";
    dx_http_request r;
    assert_int_equal(preq(s, sizeof s - 1, &r), (int)sizeof s - 1);
    assert_int_equal(r.minor_version, 0);
    assert_int_equal(r.n_headers, 4);
    assert_true(hdr_is(&r.headers[0], "A", "x y"));
    assert_true(hdr_is(&r.headers[1], "B", ""));
    assert_true(hdr_is(&r.headers[2], "C", ""));
    assert_true(hdr_is(&r.headers[3], "D", "z"));
    check_vector(false, s, (int)sizeof s - 1);
}

/* ---- valid vectors ---------------------------------------------------- */

static void test_valid_requests(void **state)
{
    (void)state;
    static const char *const v[] = {
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\n\n",                      /* bare LF line ends, RFC 9112 §2.2 */
        "GET / HTTP/1.1\r\nHost: a\n\r\n",         /* mixed */
        "\r\nGET / HTTP/1.1\r\n\r\n",              /* empty line before the request-line */
        "\n\r\n\nGET / HTTP/1.1\r\n\r\n",
        "OPTIONS * HTTP/1.9\r\nX: 1\r\n\r\n",
        "M-S.E_A!#$%&'*+^`|~ /a?b=c&d=%20 HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nX-Obs: caf\xc3\xa9\r\n\r\n", /* obs-text in a value */
        "GET / HTTP/1.1\r\nX: a\tb\r\n\r\n",
        "GET / HTTP/1.1\r\nX: \"quoted, list\", y\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        check_vector(false, v[i], (int)strlen(v[i]));
}

static void test_valid_responses(void **state)
{
    (void)state;
    static const char *const v[] = {
        "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        "HTTP/1.1 101\r\n\r\n",  /* no SP, no reason */
        "HTTP/1.1 101 \r\n\r\n", /* empty reason */
        "HTTP/1.0 200 OK\nContent-Length: 0\n\n",
        "HTTP/1.1 404 Not \tFound \xff\r\nA: b\r\n\r\n",
        "HTTP/1.1 999 x\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        check_vector(true, v[i], (int)strlen(v[i]));
    dx_http_response r;
    assert_int_equal(presp(v[1], strlen(v[1]), &r), (int)strlen(v[1]));
    assert_int_equal(r.status, 101);
    assert_int_equal(r.reason_len, 0);
}

/* ---- every error --------------------------------------------------------- */

typedef struct bad {
    const char *s;
    size_t len; /* 0: strlen */
    int err;
} bad;

static void check_bad(bool response, const bad *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t len = v[i].len ? v[i].len : strlen(v[i].s);
        guard g;
        guard_init(&g, len);
        int rc = parse_as(response, guard_put(&g, v[i].s, len), len);
        if (rc != v[i].err)
            fail_msg("vector %zu: want %s got %s", i, dx_errname(v[i].err), dx_errname(rc));
        assert_int_equal(dx_http_status_for_error(rc), v[i].err == DX_EHTTP ? 400 : 431);
        guard_free(&g);
        if (!v[i].len)
            check_vector(response, v[i].s, v[i].err);
    }
}

static void test_bad_requests(void **state)
{
    (void)state;
    static const bad v[] = {
        {"GET  / HTTP/1.1\r\n\r\n", 0, DX_EHTTP},          /* two spaces */
        {" GET / HTTP/1.1\r\n\r\n", 0, DX_EHTTP},          /* leading space */
        {"G(T / HTTP/1.1\r\n\r\n", 0, DX_EHTTP},           /* method not a token */
        {"GET /a b HTTP/1.1\r\n\r\n", 0, DX_EHTTP},        /* SP in target */
        {"GET /\x01 HTTP/1.1\r\n\r\n", 0, DX_EHTTP},       /* CTL in target */
        {"GET /\x7f HTTP/1.1\r\n\r\n", 0, DX_EHTTP},       /* DEL in target */
        {"GET /\xc3\xa9 HTTP/1.1\r\n\r\n", 0, DX_EHTTP},   /* raw non-ASCII in target */
        {"GET HTTP/1.1\r\n\r\n", 0, DX_EHTTP},             /* no target */
        {"GET / HTTP/2.0\r\n\r\n", 0, DX_EHTTP},           /* not HTTP/1 */
        {"GET / HTTP/1.10\r\n\r\n", 0, DX_EHTTP},
        {"GET / HTTP/1.x\r\n\r\n", 0, DX_EHTTP},
        {"GET / http/1.1\r\n\r\n", 0, DX_EHTTP},
        {"GET / HTTP/1.1 \r\n\r\n", 0, DX_EHTTP},
        {"GET / HTTP/1.1\rX\r\n\r\n", 0, DX_EHTTP},        /* bare CR after the version */
        {"\rGET / HTTP/1.1\r\n\r\n", 0, DX_EHTTP},
        {"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 0, DX_EHTTP},    /* RFC 9112 §5.1 */
        {"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 0, DX_EHTTP},
        {"GET / HTTP/1.1\r\n: a\r\n\r\n", 0, DX_EHTTP},         /* empty name */
        {"GET / HTTP/1.1\r\nNo colon\r\n\r\n", 0, DX_EHTTP},
        {"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 0, DX_EHTTP},
        {"GET / HTTP/1.1\r\nA(b: c\r\n\r\n", 0, DX_EHTTP},
        {"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", 0, DX_EHTTP},  /* obs-fold, RFC 9112 §5.2 */
        {"GET / HTTP/1.1\r\nA: b\r\n\tc\r\n\r\n", 0, DX_EHTTP},
        {"GET / HTTP/1.1\r\n A: b\r\n\r\n", 0, DX_EHTTP},       /* whitespace before 1st header */
        {"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n", 0, DX_EHTTP},     /* bare CR in a value */
        {"GET / HTTP/1.1\r\nA: b\r\r\n\r\n", 0, DX_EHTTP},
        {"GET / HTTP/1.1\r\nA: \x01\r\n\r\n", 0, DX_EHTTP},     /* CTL in a value */
        {"GET / HTTP/1.1\r\nA: \x7f\r\n\r\n", 0, DX_EHTTP},
        {"GET / HTTP/1.1\r\nA: b\x00 c\r\n\r\n", 23, DX_EHTTP}, /* NUL in a value */
        {"GET\x00/ HTTP/1.1\r\n\r\n", 18, DX_EHTTP},
        {"GET / HTTP/1.1\r\n\r\r\n", 0, DX_EHTTP},              /* bare CR as the blank line */
    };
    check_bad(false, v, sizeof v / sizeof v[0]);
}

static void test_bad_responses(void **state)
{
    (void)state;
    static const bad v[] = {
        {"HTTP/1.1 101Switching\r\n\r\n", 0, DX_EHTTP},
        {"HTTP/1.1  101 x\r\n\r\n", 0, DX_EHTTP},
        {"HTTP/1.1 10 x\r\n\r\n", 0, DX_EHTTP},
        {"HTTP/1.1 1011 x\r\n\r\n", 0, DX_EHTTP},
        {"HTTP/1.1 099 x\r\n\r\n", 0, DX_EHTTP},
        {"HTTP/1.1 abc x\r\n\r\n", 0, DX_EHTTP},
        {"HTTP/2 101 x\r\n\r\n", 0, DX_EHTTP},
        {"HTTP/1.1\r\n\r\n", 0, DX_EHTTP},
        {"HTTP/1.1 101 a\x01\r\n\r\n", 0, DX_EHTTP},
        {"HTTP/1.1 101 a\rb\r\n\r\n", 0, DX_EHTTP},
        {"\r\nHTTP/1.1 101 x\r\n\r\n", 0, DX_EHTTP},
        {"HTTP/1.1 101 x\r\nA : b\r\n\r\n", 0, DX_EHTTP},
        {"HTTP/1.1 101 x\r\nA: b\r\n c\r\n\r\n", 0, DX_EHTTP},
        {"HTTP/1.1 101 x\r\nA: b\x00\r\n\r\n", 21, DX_EHTTP},
    };
    check_bad(true, v, sizeof v / sizeof v[0]);
}

/* ---- limits -------------------------------------------------------------- */

static void test_head_too_big(void **state)
{
    (void)state;
    /* A 100 KiB header line: rejected once max_head bytes are in. */
    size_t len = 100 * 1024;
    char *s = malloc(len);
    memcpy(s, "GET / HTTP/1.1\r\nX: ", 19);
    memset(s + 19, 'a', len - 19);
    guard g;
    guard_init(&g, len);
    dx_http_request r;
    assert_int_equal(preq(guard_put(&g, s, len), len, &r), DX_EHEADTOOBIG);
    assert_int_equal(dx_http_status_for_error(DX_EHEADTOOBIG), 431);
    for (size_t k = 0; k < DX_HTTP_DEFAULT_MAX_HEAD; k += 97)
        assert_int_equal(preq(guard_put(&g, s, k), k, &r), DX_EAGAIN);
    assert_int_equal(preq(guard_put(&g, s, DX_HTTP_DEFAULT_MAX_HEAD - 1), DX_HTTP_DEFAULT_MAX_HEAD - 1, &r),
                     DX_EAGAIN);
    assert_int_equal(preq(guard_put(&g, s, DX_HTTP_DEFAULT_MAX_HEAD), DX_HTTP_DEFAULT_MAX_HEAD, &r),
                     DX_EHEADTOOBIG);

    /* Exactly at the limit: a head of max_head bytes is accepted, one more
     * byte is too big, whatever follows it. */
    for (size_t max = 40; max < 48; max++) {
        memcpy(s, "GET / HTTP/1.1\r\nX: ", 19);
        memset(s + 19, 'b', max - 19 - 4);
        memcpy(s + max - 4, "\r\n\r\n", 4);
        const char *p = guard_put(&g, s, max);
        assert_int_equal(dx__http_parse_request(p, max, &r, hdrs, 4, max), (int)max);
        assert_int_equal(dx__http_parse_request(p, max - 1, &r, hdrs, 4, max), DX_EAGAIN);
        assert_int_equal(dx__http_parse_request(p, max, &r, hdrs, 4, max - 1), DX_EHEADTOOBIG);
        assert_int_equal(dx__http_parse_request(p, max - 1, &r, hdrs, 4, max - 1), DX_EHEADTOOBIG);
        assert_int_equal(dx__http_parse_request(p, max - 2, &r, hdrs, 4, max - 1), DX_EAGAIN);
    }
    /* A malformed byte before the limit is still a 400. */
    memcpy(s, "GET / HTTP/1.1\r\nX : ", 20);
    assert_int_equal(preq(guard_put(&g, s, len), len, &r), DX_EHTTP);
    guard_free(&g);
    free(s);

    dx_http_response rs;
    static const char big[] = "HTTP/1.1 101 Switching Protocols\r\n\r\n";
    assert_int_equal(dx__http_parse_response(big, sizeof big - 1, &rs, hdrs, 1, 20), DX_EHEADTOOBIG);
    assert_int_equal(dx__http_parse_response(big, 19, &rs, hdrs, 1, 20), DX_EAGAIN);
}

static void test_too_many_headers(void **state)
{
    (void)state;
    size_t cap = 2000 * 8 + 64, len;
    char *s = malloc(cap);
    dx_http_request r;
    guard g;
    guard_init(&g, cap);

    /* 2,000 headers against the default 64 (and a generous max_head). */
    len = (size_t)sprintf(s, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < 2000; i++)
        len += (size_t)sprintf(s + len, "H%d: v\r\n", i % 10);
    len += (size_t)sprintf(s + len, "\r\n");
    assert_int_equal(dx__http_parse_request(guard_put(&g, s, len), len, &r, hdrs, DX_HTTP_DEFAULT_MAX_HEADERS,
                                            cap),
                     DX_ETOOMANYHEADERS);
    assert_int_equal(dx_http_status_for_error(DX_ETOOMANYHEADERS), 431);

    /* Exactly 64: fine. 65: too many, known as soon as the 65th starts. */
    for (int n = 63; n <= 65; n++) {
        len = (size_t)sprintf(s, "GET / HTTP/1.1\r\n");
        for (int i = 0; i < n; i++)
            len += (size_t)sprintf(s + len, "H: %d\r\n", i);
        size_t before_blank = len;
        len += (size_t)sprintf(s + len, "\r\n");
        int rc = preq(guard_put(&g, s, len), len, &r);
        if (n <= 64) {
            assert_int_equal(rc, (int)len);
            assert_int_equal(r.n_headers, (size_t)n);
        } else {
            assert_int_equal(rc, DX_ETOOMANYHEADERS);
            assert_int_equal(preq(guard_put(&g, s, before_blank - 4), before_blank - 4, &r),
                             DX_ETOOMANYHEADERS);
        }
    }
    /* No header room at all. */
    static const char one[] = "GET / HTTP/1.1\r\nA: b\r\n\r\n";
    assert_int_equal(dx__http_parse_request(one, sizeof one - 1, &r, NULL, 0, 0), DX_ETOOMANYHEADERS);
    assert_int_equal(dx__http_parse_request(one, 16, &r, NULL, 0, 0), DX_EAGAIN);
    assert_int_equal(dx__http_parse_request("GET / HTTP/1.1\r\n\r\n", 18, &r, NULL, 0, 0), 18);
    guard_free(&g);
    free(s);
}

/* ---- helpers: lists, lookup, status, error response ---------------------- */

static void test_list_next(void **state)
{
    (void)state;
    static const char v[] = " ,a, b ,,\tc\t, \"x,y\" , d;q=\"1,2\" ,";
    const char *cur = v, *end = v + sizeof v - 1, *item;
    size_t n;
    static const char *const want[] = {"a", "b", "c", "\"x,y\"", "d;q=\"1,2\""};
    for (size_t i = 0; i < 5; i++) {
        assert_true(dx__http_list_next(&cur, end, &item, &n));
        assert_int_equal(n, strlen(want[i]));
        assert_memory_equal(item, want[i], n);
    }
    assert_false(dx__http_list_next(&cur, end, &item, &n));
    cur = v;
    assert_false(dx__http_list_next(&cur, v, &item, &n));
    static const char esc[] = "\"a\\\",b\", c";
    cur = esc;
    assert_true(dx__http_list_next(&cur, esc + sizeof esc - 1, &item, &n));
    assert_int_equal(n, 7);
    assert_true(dx__http_list_next(&cur, esc + sizeof esc - 1, &item, &n));
    assert_memory_equal(item, "c", 1);

    assert_true(dx__http_list_has("keep-alive, Upgrade", 19, "upgrade"));
    assert_true(dx__http_list_has("UPGRADE", 7, "upgrade"));
    assert_false(dx__http_list_has("upgrades, x", 11, "upgrade"));
    assert_false(dx__http_list_has("upgrad", 6, "upgrade"));
    assert_false(dx__http_list_has("", 0, "upgrade"));
    assert_false(dx__http_list_has("keep-alive", 10, "upgrade"));
}

static void test_find_count_iter(void **state)
{
    (void)state;
    static const char s[] = "GET / HTTP/1.1\r\nConnection: keep-alive\r\nHost: x\r\n"
                            "connection: , Upgrade\r\nP: a, b\r\np: c\r\n\r\n";
    dx_http_request r;
    assert_true(preq(s, sizeof s - 1, &r) > 0);
    const dx_http_header *h = dx__http_find(r.headers, r.n_headers, "CONNECTION");
    assert_non_null(h);
    assert_true(hdr_is(h, "Connection", "keep-alive"));
    assert_null(dx__http_find(r.headers, r.n_headers, "Upgrade"));
    assert_null(dx__http_find(r.headers, r.n_headers, "Hos"));
    assert_int_equal(dx__http_count(r.headers, r.n_headers, "connection"), 2);
    assert_int_equal(dx__http_count(r.headers, r.n_headers, "host"), 1);
    assert_true(dx__http_headers_have(r.headers, r.n_headers, "Connection", "upgrade"));
    assert_false(dx__http_headers_have(r.headers, r.n_headers, "Host", "upgrade"));

    dx_http_list_iter it;
    const char *item;
    size_t n;
    static const char *const want[] = {"a", "b", "c"};
    dx__http_list_iter_init(&it, r.headers, r.n_headers, "P");
    for (size_t i = 0; i < 3; i++) {
        assert_true(dx__http_list_iter_next(&it, &item, &n));
        assert_int_equal(n, 1);
        assert_memory_equal(item, want[i], 1);
    }
    assert_false(dx__http_list_iter_next(&it, &item, &n));
    assert_false(dx__http_list_iter_next(&it, &item, &n));

    assert_true(dx__http_eq_ci("HoSt", 4, "host"));
    assert_false(dx__http_eq_ci("Hos", 3, "host"));
    assert_false(dx__http_eq_ci("Hosts", 5, "host"));
    assert_true(dx__http_is_token("a!#$%&'*+-.^_`|~9Z", 18));
    assert_false(dx__http_is_token("", 0));
    assert_false(dx__http_is_token("a b", 3));
    assert_false(dx__http_is_token("a\"", 2));
    assert_true(dx__http_is_field_value("a \t\x80", 4));
    assert_false(dx__http_is_field_value("a\r", 2));
}

static void test_status(void **state)
{
    (void)state;
    assert_int_equal(dx_http_status_for_error(DX_OK), 0);
    assert_int_equal(dx_http_status_for_error(DX_EAGAIN), 0);
    assert_int_equal(dx_http_status_for_error(DX_EHTTP), 400);
    assert_int_equal(dx_http_status_for_error(DX_EHANDSHAKE), 400);
    assert_int_equal(dx_http_status_for_error(DX_EEXTENSION), 400);
    assert_int_equal(dx_http_status_for_error(DX_EMETHOD), 405);
    assert_int_equal(dx_http_status_for_error(DX_EVERSION), 426);
    assert_int_equal(dx_http_status_for_error(DX_EHEADTOOBIG), 431);
    assert_int_equal(dx_http_status_for_error(DX_ETOOMANYHEADERS), 431);
    assert_int_equal(dx_http_status_for_error(DX_ENOMEM), 500);
    assert_string_equal(dx_http_status_text(101), "Switching Protocols");
    assert_string_equal(dx_http_status_text(400), "Bad Request");
    assert_string_equal(dx_http_status_text(426), "Upgrade Required");
    assert_string_equal(dx_http_status_text(431), "Request Header Fields Too Large");
    assert_string_equal(dx_http_status_text(299), "Unknown");
}

static void test_error_response(void **state)
{
    (void)state;
    char out[512];
    static const char want426[] = "HTTP/1.1 426 Upgrade Required\r\n"
                                  "Content-Type: text/plain; charset=utf-8\r\n"
                                  "Content-Length: 15\r\n"
                                  "Connection: Upgrade, close\r\n"
                                  "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                                  "\r\n"
                                  "Upgrade needed\n";
    int n = dx__http_error_response(out, sizeof out, 426, "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
                                    "Upgrade needed");
    assert_int_equal(n, (int)sizeof want426 - 1);
    assert_string_equal(out, want426);
    /* Every smaller capacity: DX_ENOSPC, never a truncated response. */
    for (size_t cap = 0; cap <= (size_t)n; cap++)
        assert_int_equal(dx__http_error_response(cap ? out : NULL, cap, 426,
                                                 "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
                                                 "Upgrade needed"),
                         DX_ENOSPC);

    n = dx__http_error_response(out, sizeof out, 400, NULL, NULL);
    assert_string_equal(out, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                             "Content-Length: 12\r\nConnection: close\r\n\r\nBad Request\n");
    /* The output is itself a valid response head. */
    dx_http_response r;
    int head = presp(out, (size_t)n, &r);
    assert_true(head > 0);
    assert_int_equal(r.status, 400);
    assert_int_equal((size_t)n - (size_t)head, 12);
    n = dx__http_error_response(out, sizeof out, 431, "", "");
    assert_true(n > 0);
    assert_non_null(strstr(out, "431 Request Header Fields Too Large\r\n"));
    assert_non_null(strstr(out, "Content-Length: 1\r\n"));

    assert_int_equal(dx__http_error_response(out, sizeof out, 99, NULL, NULL), DX_EINVAL);
    assert_int_equal(dx__http_error_response(out, sizeof out, 1000, NULL, NULL), DX_EINVAL);
    assert_int_equal(dx__http_error_response(out, sizeof out, 400, NULL, "two\nlines"), DX_EINVAL);
    assert_int_equal(dx__http_error_response(out, sizeof out, 400, NULL, "a\rb"), DX_EINVAL);
    assert_int_equal(dx__http_error_response(out, sizeof out, 400, "X: a\r\n\r\nbody", NULL), DX_EINVAL);
    assert_int_equal(dx__http_error_response(out, sizeof out, 400, "X: a", NULL), DX_EINVAL);
    assert_int_equal(dx__http_error_response(out, sizeof out, 400, "X: a\nY: b\r\n", NULL), DX_EINVAL);
}

static void test_valid_header_block(void **state)
{
    (void)state;
    assert_true(dx__http_valid_header_block(""));
    assert_true(dx__http_valid_header_block("A: b\r\n"));
    assert_true(dx__http_valid_header_block("A:\r\nB: c d\r\n"));
    assert_false(dx__http_valid_header_block("\r\n"));
    assert_false(dx__http_valid_header_block("A: b\r\n\r\n"));
    assert_false(dx__http_valid_header_block("A: b"));
    assert_false(dx__http_valid_header_block("A: b\n"));
    assert_false(dx__http_valid_header_block("A: b\rc\r\n"));
    assert_false(dx__http_valid_header_block("A b: c\r\n"));
    assert_false(dx__http_valid_header_block(": c\r\n"));
    assert_false(dx__http_valid_header_block("A: \x01\r\n"));
    assert_false(dx__http_valid_header_block(" A: b\r\n"));
}


/* ---- incremental parsing: work and growth --------------------------------- */

/* An 8 KiB head trickled one byte per call costs the parser the bytes it
 * has, not the bytes it has times the calls: the trickled run examines the
 * same number of bytes as the whole one (plus the one stateless pass both
 * make at the end to get the fields). */
static void test_incremental_work(void **state)
{
    (void)state;
    size_t cap = 8192;
    char *head = malloc(cap);
    size_t len = (size_t)snprintf(head, cap, "GET /x HTTP/1.1\r\nHost: a\r\n");
    for (int i = 0; len < cap - 40; i++)
        len += (size_t)snprintf(head + len, cap - len, "X-H%d: %s\r\n", i, "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv");
    len += (size_t)snprintf(head + len, cap - len, "\r\n");
    assert_true(len > 8000 && len < cap);
    size_t maxh = 1024, maxhead = 16384;
    dx_http_head whole;
    dx__http_head_init(&whole, false);
    assert_int_equal(dx__http_head_feed(&whole, head, len, maxh, maxhead), (int)len);
    dx_http_head tr;
    dx__http_head_init(&tr, false);
    int rc = DX_EAGAIN;
    for (size_t k = 1; k <= len; k++) {
        rc = dx__http_head_feed(&tr, head, k, maxh, maxhead);
        if (k < len)
            assert_int_equal(rc, DX_EAGAIN);
    }
    assert_int_equal(rc, (int)len);
    printf("head of %zu bytes: whole examined %llu bytes, trickled %llu\n", len,
           (unsigned long long)whole.examined, (unsigned long long)tr.examined);
    assert_int_equal(whole.examined, len);
    assert_true(tr.examined <= 2 * whole.examined); /* today: exactly equal */
    free(head);
}

/* ---- chunked transfer coding ------------------------------------------------ */

typedef struct chunk_out {
    int rc;        /* 1 done, DX_EHTTP, or 0 still incomplete */
    size_t used;   /* bytes consumed through the end (when done) */
    char data[512];
    size_t len;
} chunk_out;

/* Decodes s in pieces of `piece` bytes (0: whole). */
static chunk_out dechunk(const char *s, size_t len, size_t piece)
{
    chunk_out o = {0};
    dx_http_chunked d;
    dx__http_chunked_init(&d);
    size_t at = 0;
    guard g;
    guard_init(&g, len + 1);
    while (at < len) {
        size_t n = piece ? (len - at < piece ? len - at : piece) : len - at;
        const uint8_t *p = (const uint8_t *)guard_put(&g, s + at, n);
        size_t off = 0;
        while (off < n) {
            size_t used, dl;
            const uint8_t *data;
            int rc = dx__http_chunked_step(&d, p + off, n - off, &used, &data, &dl);
            assert_true(used <= n - off);
            if (dl) {
                assert_true(data >= p + off && data + dl <= p + off + used);
                assert_true(o.len + dl <= sizeof o.data);
                memcpy(o.data + o.len, data, dl);
                o.len += dl;
            }
            off += used;
            if (rc != 0) {
                o.rc = rc;
                o.used = at + off;
                guard_free(&g);
                return o;
            }
            if (used == 0)
                fail_msg("no progress at %zu", at + off);
        }
        at += n;
    }
    guard_free(&g);
    o.used = len;
    return o;
}

/* Every piece size gives the same data, verdict and end. */
static void check_chunked(const char *s, int want, const char *data)
{
    size_t len = strlen(s);
    chunk_out ref = dechunk(s, len, 0);
    if (ref.rc != want)
        fail_msg("[%s]: want %d got %d", s, want, ref.rc);
    if (data && (ref.len != strlen(data) || memcmp(ref.data, data, ref.len) != 0))
        fail_msg("[%s]: data [%.*s] want [%s]", s, (int)ref.len, ref.data, data);
    for (size_t piece = 1; piece <= len; piece++) {
        chunk_out o = dechunk(s, len, piece);
        if (o.rc != ref.rc || o.len != ref.len || memcmp(o.data, ref.data, o.len) != 0 ||
            (want == 1 && o.used != ref.used))
            fail_msg("[%s] in pieces of %zu: rc %d len %zu, whole rc %d len %zu", s, piece, o.rc, o.len, ref.rc,
                     ref.len);
    }
    /* a prefix of a valid body is incomplete, never an error */
    if (want == 1)
        for (size_t k = 0; k < ref.used; k++)
            assert_int_equal(dechunk(s, k, 0).rc, 0);
}

static void test_chunked(void **state)
{
    (void)state;
    check_chunked("0\r\n\r\n", 1, "");
    check_chunked("5\r\nhello\r\n0\r\n\r\n", 1, "hello");
    check_chunked("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n", 1, "hello world");
    check_chunked("A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n", 1, "0123456789abcdefghij");
    check_chunked("0005\r\nhello\r\n000\r\n\r\n", 1, "hello");               /* leading zeros */
    check_chunked("5;name=value\r\nhello\r\n0;x\r\n\r\n", 1, "hello");       /* extensions */
    check_chunked("5 ; a=\"q;\" ;b\r\nhello\r\n0\r\n\r\n", 1, "hello");      /* BWS, quoted */
    check_chunked("5\r\nhello\r\n0\r\nTrailer: x\r\nT2:\r\n\r\n", 1, "hello"); /* trailers */
    check_chunked("5\r\nhello\r\n0\r\n", 0, "hello");                         /* incomplete */
    /* malformed */
    check_chunked("\r\n", DX_EHTTP, NULL);
    check_chunked("z\r\n", DX_EHTTP, NULL);
    check_chunked("-1\r\n", DX_EHTTP, NULL);
    check_chunked("0x5\r\nhello\r\n", DX_EHTTP, NULL);
    check_chunked("+5\r\nhello\r\n", DX_EHTTP, NULL);
    check_chunked("5\nhello\r\n0\r\n\r\n", DX_EHTTP, NULL);      /* bare LF */
    check_chunked("5\r\nhelloX\r\n0\r\n\r\n", DX_EHTTP, NULL);   /* data longer than its size */
    check_chunked("5\r\nhell\r\n0\r\n\r\n", DX_EHTTP, NULL);     /* shorter */
    check_chunked("5 \r\nhello\r\n", DX_EHTTP, NULL);            /* BWS without an extension */
    check_chunked("5;a\x01\r\nhello\r\n", DX_EHTTP, NULL);       /* CTL in an extension */
    check_chunked("FFFFFFFFFFFFFFFFF\r\n", DX_EHTTP, NULL);      /* overflow */
    check_chunked("1000000000000000\r\n", DX_EHTTP, NULL);       /* 2^60: too big */
    check_chunked("0\r\nBad Trailer: x\r\n\r\n", DX_EHTTP, NULL);
    check_chunked("0\r\n: x\r\n\r\n", DX_EHTTP, NULL);
    check_chunked("0\r\n\r\r\n", DX_EHTTP, NULL);
    check_chunked("0\r\n\n", DX_EHTTP, NULL);
    /* an endless extension is refused once it passes the line limit */
    size_t big = DX_HTTP_CHUNK_LINE_MAX + 16;
    char *s = malloc(big + 1);
    memset(s, 'x', big);
    memcpy(s, "5;", 2);
    s[big] = 0;
    assert_int_equal(dechunk(s, big, 0).rc, DX_EHTTP);
    assert_int_equal(dechunk(s, DX_HTTP_CHUNK_LINE_MAX - 1, 0).rc, 0);
    free(s);
    dx_http_chunked d0;
    size_t used, dl;
    const uint8_t *data;
    /* the declared size is known once the size line is complete, not before */
    dx__http_chunked_init(&d0);
    assert_int_equal(dx__http_chunked_step(&d0, (const uint8_t *)"1f", 2, &used, &data, &dl), 0);
    assert_int_equal(dx__http_chunked_left(&d0), 0);
    assert_int_equal(dx__http_chunked_step(&d0, (const uint8_t *)"\r\nab", 4, &used, &data, &dl), 0);
    assert_int_equal(dl, 2);
    assert_int_equal(dx__http_chunked_left(&d0), 29);
    /* after the end, nothing more is consumed */
    dx_http_chunked d;
    dx__http_chunked_init(&d);
    assert_int_equal(dx__http_chunked_step(&d, (const uint8_t *)"0\r\n\r\nXY", 7, &used, &data, &dl), 1);
    assert_int_equal(used, 5);
    assert_int_equal(dx__http_chunked_step(&d, (const uint8_t *)"XY", 2, &used, &data, &dl), 1);
    assert_int_equal(used, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_fields),
        cmocka_unit_test(test_response_fields),
        cmocka_unit_test(test_ows_trimmed_and_empty_values),
        cmocka_unit_test(test_valid_requests),
        cmocka_unit_test(test_valid_responses),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_bad_responses),
        cmocka_unit_test(test_head_too_big),
        cmocka_unit_test(test_too_many_headers),
        cmocka_unit_test(test_list_next),
        cmocka_unit_test(test_find_count_iter),
        cmocka_unit_test(test_status),
        cmocka_unit_test(test_error_response),
        cmocka_unit_test(test_valid_header_block),
        cmocka_unit_test(test_incremental_work),
        cmocka_unit_test(test_chunked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
