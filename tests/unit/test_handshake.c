/* tests/unit/test_handshake.c: src/proto/handshake.c — the opening handshake,
 * server and client side (RFC 6455 §4). Heads are parsed with proto/http,
 * each placed against a PROT_NONE page so an over-read faults. */
#define _DEFAULT_SOURCE
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "proto/handshake.h"
#include "proto/http.h"

/* ---- guard page and parse helpers ---------------------------------------- */

typedef struct guard {
    char *base;
    size_t size, usable;
} guard;

static guard g;

static int setup(void **state)
{
    (void)state;
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    g.usable = 4 * pg;
    g.size = g.usable + pg;
    g.base = mmap(NULL, g.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g.base == MAP_FAILED || mprotect(g.base + g.usable, pg, PROT_NONE) != 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    munmap(g.base, g.size);
    return 0;
}

/* Places s[0..len) so it ends at the protected page. */
static const char *put(const char *s, size_t len)
{
    assert_true(len <= g.usable);
    char *p = g.base + g.usable - len;
    memmove(p, s, len);
    return p;
}

static dx_http_header hdrs[DX_HTTP_DEFAULT_MAX_HEADERS];
static dx_http_header rhdrs[DX_HTTP_DEFAULT_MAX_HEADERS];
static dx_ws_ext_offer exts[DX_WS_DEFAULT_MAX_EXTS];

/* Parses s as a request (against the guard page) and runs the server check. */
static int server_check(const char *s, dx_ws_request *out)
{
    size_t len = strlen(s);
    dx_http_request req;
    const char *p = put(s, len);
    int rc = dx__http_parse_request(p, len, &req, hdrs, DX_HTTP_DEFAULT_MAX_HEADERS, 0);
    assert_int_equal(rc, (int)len);
    return dx__ws_server_check(&req, out, exts, DX_WS_DEFAULT_MAX_EXTS);
}

static bool span_is(const char *p, size_t len, const char *want)
{
    return p && len == strlen(want) && memcmp(p, want, len) == 0;
}

/* ---- RFC examples -------------------------------------------------------- */

static void test_accept_key_rfc(void **state)
{
    (void)state;
    char out[29];
    /* RFC 6455 §1.3 */
    assert_int_equal(dx__ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out), 0);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    /* the widely quoted second example (MDN, Wikipedia) */
    assert_int_equal(dx__ws_accept_key("x3JJHMbDL1EzLkh9GBhXDw==", 24, out), 0);
    assert_string_equal(out, "HSmrc0sMlYUkAGmm5OPpG2HaGWk=");
    char big[65];
    memset(big, 'a', sizeof big);
    assert_int_equal(dx__ws_accept_key(big, 64, out), 0);
    assert_int_equal(dx__ws_accept_key(big, 65, out), DX_EINVAL);
}

static const char rfc_request[] = "GET /chat HTTP/1.1\r\n"
                                  "Host: server.example.com\r\n"
                                  "Upgrade: websocket\r\n"
                                  "Connection: Upgrade\r\n"
                                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                  "Origin: http://example.com\r\n"
                                  "Sec-WebSocket-Protocol: chat, superchat\r\n"
                                  "Sec-WebSocket-Version: 13\r\n"
                                  "\r\n";

static void test_server_rfc_example(void **state)
{
    (void)state;
    dx_ws_request r;
    assert_int_equal(server_check(rfc_request, &r), 0);
    assert_true(span_is(r.path, r.path_len, "/chat"));
    assert_null(r.query);
    assert_true(span_is(r.host, r.host_len, "server.example.com"));
    assert_true(span_is(r.origin, r.origin_len, "http://example.com"));
    assert_true(span_is(r.key, r.key_len, "dGhlIHNhbXBsZSBub25jZQ=="));
    assert_int_equal(r.n_headers, 7);
    assert_int_equal(r.n_exts, 0);

    dx_ws_protocol_iter it;
    const char *p;
    size_t n;
    dx__ws_protocol_iter_init(&it, &r);
    assert_true(dx__ws_protocol_next(&it, &p, &n));
    assert_true(span_is(p, n, "chat"));
    assert_true(dx__ws_protocol_next(&it, &p, &n));
    assert_true(span_is(p, n, "superchat"));
    assert_false(dx__ws_protocol_next(&it, &p, &n));
    assert_true(dx__ws_protocol_offered(&r, "chat", 4));
    assert_true(dx__ws_protocol_offered(&r, "superchat", 9));
    assert_false(dx__ws_protocol_offered(&r, "Chat", 4));
    assert_false(dx__ws_protocol_offered(&r, "cha", 3));

    /* RFC 6455 §1.3's response, byte for byte. */
    char out[512];
    static const char want[] = "HTTP/1.1 101 Switching Protocols\r\n"
                               "Upgrade: websocket\r\n"
                               "Connection: Upgrade\r\n"
                               "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                               "Sec-WebSocket-Protocol: chat\r\n"
                               "\r\n";
    int len = dx__ws_server_response(out, sizeof out, &r, "chat", NULL, NULL);
    assert_int_equal(len, (int)sizeof want - 1);
    assert_string_equal(out, want);
    for (size_t cap = 0; cap <= (size_t)len; cap++)
        assert_int_equal(dx__ws_server_response(out, cap, &r, "chat", NULL, NULL), DX_ENOSPC);
}

static void test_server_fields(void **state)
{
    (void)state;
    dx_ws_request r;
    assert_int_equal(server_check("GET /a/b?x=1&y HTTP/1.1\r\nhost: h:8080\r\nupgrade: WebSocket\r\n"
                                  "connection: keep-alive, UPGRADE\r\nsec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
                                  "sec-websocket-version: 13\r\n"
                                  "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-foo\r\n"
                                  "Sec-WebSocket-Extensions: permessage-deflate;server_no_context_takeover ;"
                                  " client_max_window_bits = \"10\"\r\n\r\n",
                                  &r),
                     0);
    assert_true(span_is(r.path, r.path_len, "/a/b"));
    assert_true(span_is(r.query, r.query_len, "x=1&y"));
    assert_true(span_is(r.host, r.host_len, "h:8080"));
    assert_null(r.origin);
    assert_int_equal(r.n_exts, 3);
    assert_ptr_equal(r.exts, exts);
    assert_true(span_is(r.exts[0].name, r.exts[0].name_len, "permessage-deflate"));
    assert_int_equal(r.exts[0].n_params, 1);
    assert_true(span_is(r.exts[0].params[0].name, r.exts[0].params[0].name_len, "client_max_window_bits"));
    assert_null(r.exts[0].params[0].value);
    assert_true(span_is(r.exts[1].name, r.exts[1].name_len, "x-foo"));
    assert_int_equal(r.exts[1].n_params, 0);
    assert_int_equal(r.exts[2].n_params, 2);
    assert_true(span_is(r.exts[2].params[1].value, r.exts[2].params[1].value_len, "10"));

    assert_int_equal(server_check("GET /? HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                  "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n"
                                  "Sec-WebSocket-Protocol: a\r\nSec-WebSocket-Protocol: b, c\r\n\r\n",
                                  &r),
                     0);
    assert_true(span_is(r.path, r.path_len, "/"));
    assert_non_null(r.query);
    assert_int_equal(r.query_len, 0);
    assert_true(dx__ws_protocol_offered(&r, "c", 1));
    assert_true(dx__ws_protocol_offered(&r, "a", 1));
}

/* ---- server errors ------------------------------------------------------- */

#define OKH "Host: h\r\n"
#define OKU "Upgrade: websocket\r\n"
#define OKC "Connection: Upgrade\r\n"
#define OKK "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
#define OKV "Sec-WebSocket-Version: 13\r\n"

typedef struct srv_bad {
    const char *s;
    int err;
    int status;
} srv_bad;

static void test_server_errors(void **state)
{
    (void)state;
    static const srv_bad v[] = {
        {"POST / HTTP/1.1\r\n" OKH OKU OKC OKK OKV "\r\n", DX_EMETHOD, 405},
        {"get / HTTP/1.1\r\n" OKH OKU OKC OKK OKV "\r\n", DX_EMETHOD, 405},
        {"GET / HTTP/1.0\r\n" OKH OKU OKC OKK OKV "\r\n", DX_EHANDSHAKE, 400},
        {"GET * HTTP/1.1\r\n" OKH OKU OKC OKK OKV "\r\n", DX_EHANDSHAKE, 400},
        {"GET ws://h/ HTTP/1.1\r\n" OKH OKU OKC OKK OKV "\r\n", DX_EHANDSHAKE, 400},
        {"GET / HTTP/1.1\r\n" OKU OKC OKK OKV "\r\n", DX_EHANDSHAKE, 400},               /* no Host */
        {"GET / HTTP/1.1\r\nHost:\r\n" OKU OKC OKK OKV "\r\n", DX_EHANDSHAKE, 400},      /* empty */
        {"GET / HTTP/1.1\r\n" OKH OKH OKU OKC OKK OKV "\r\n", DX_EHANDSHAKE, 400},       /* two */
        {"GET / HTTP/1.1\r\n" OKH OKC OKK OKV "\r\n", DX_EHANDSHAKE, 400},               /* no Upgrade */
        {"GET / HTTP/1.1\r\n" OKH "Upgrade: h2c\r\n" OKC OKK OKV "\r\n", DX_EHANDSHAKE, 400},
        {"GET / HTTP/1.1\r\n" OKH "Upgrade: websockets\r\n" OKC OKK OKV "\r\n", DX_EHANDSHAKE, 400},
        {"GET / HTTP/1.1\r\n" OKH OKU OKK OKV "\r\n", DX_EHANDSHAKE, 400},               /* no Connection */
        {"GET / HTTP/1.1\r\n" OKH OKU "Connection: keep-alive\r\n" OKK OKV "\r\n", DX_EHANDSHAKE, 400},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKK "\r\n", DX_EVERSION, 426},                /* no version */
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKK "Sec-WebSocket-Version: 8\r\n\r\n", DX_EVERSION, 426},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKK "Sec-WebSocket-Version: 13, 8\r\n\r\n", DX_EVERSION, 426},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKK "Sec-WebSocket-Version: 013\r\n\r\n", DX_EVERSION, 426},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKK OKV OKV "\r\n", DX_EVERSION, 426},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC "Sec-WebSocket-Version: 7\r\n\r\n", DX_EVERSION, 426}, /* before key */
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKV "\r\n", DX_EHANDSHAKE, 400},               /* no key */
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKK OKK OKV "\r\n", DX_EHANDSHAKE, 400},       /* two keys */
        {"GET / HTTP/1.1\r\n" OKH OKU OKC "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n" OKV "\r\n",
         DX_EHANDSHAKE, 400},                                                            /* no padding */
        {"GET / HTTP/1.1\r\n" OKH OKU OKC "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=\r\n" OKV "\r\n",
         DX_EHANDSHAKE, 400},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ===\r\n" OKV "\r\n",
         DX_EHANDSHAKE, 400},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j*Q==\r\n" OKV "\r\n",
         DX_EHANDSHAKE, 400},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==AAAA\r\n" OKV "\r\n",
         DX_EHANDSHAKE, 400},                                                            /* 19 bytes */
        {"GET / HTTP/1.1\r\n" OKH OKU OKC "Sec-WebSocket-Key: \r\n" OKV "\r\n", DX_EHANDSHAKE, 400},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKK OKV "Origin: a\r\nOrigin: b\r\n\r\n", DX_EHANDSHAKE, 400},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKK OKV "Sec-WebSocket-Protocol: a b\r\n\r\n", DX_EHANDSHAKE, 400},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKK OKV "Sec-WebSocket-Protocol: \"a\"\r\n\r\n", DX_EHANDSHAKE, 400},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKK OKV "Sec-WebSocket-Extensions: a b\r\n\r\n", DX_EEXTENSION, 400},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKK OKV "Sec-WebSocket-Extensions: ;a\r\n\r\n", DX_EEXTENSION, 400},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKK OKV "Sec-WebSocket-Extensions: a;\r\n\r\n", DX_EEXTENSION, 400},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKK OKV "Sec-WebSocket-Extensions: a; b=\r\n\r\n", DX_EEXTENSION, 400},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKK OKV "Sec-WebSocket-Extensions: a; b=\"c\r\n\r\n", DX_EEXTENSION,
         400},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKK OKV "Sec-WebSocket-Extensions: a; b=\"c d\"\r\n\r\n", DX_EEXTENSION,
         400},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKK OKV "Sec-WebSocket-Extensions: a; b=\"\\c\"\r\n\r\n", DX_EEXTENSION,
         400},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKK OKV "Sec-WebSocket-Extensions: a; b=\"\"\r\n\r\n", DX_EEXTENSION,
         400},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKK OKV "Sec-WebSocket-Extensions: a; b=c=d\r\n\r\n", DX_EEXTENSION,
         400},
        {"GET / HTTP/1.1\r\n" OKH OKU OKC OKK OKV "Sec-WebSocket-Extensions: a;1;2;3;4;5;6;7;8;9\r\n\r\n",
         DX_EEXTENSION, 400},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        dx_ws_request r;
        int rc = server_check(v[i].s, &r);
        if (rc != v[i].err)
            fail_msg("vector %zu: want %s got %s", i, dx_errname(v[i].err), dx_errname(rc));
        assert_int_equal(dx_http_status_for_error(rc), v[i].status);
        /* The answer a server sends is a complete, parseable response that
         * carries the headers the RFCs require for that status. */
        char out[512];
        int n = dx__http_error_response(out, sizeof out, v[i].status, dx__ws_error_headers(rc), NULL);
        assert_true(n > 0);
        dx_http_response resp;
        assert_true(dx__http_parse_response(out, (size_t)n, &resp, rhdrs, DX_HTTP_DEFAULT_MAX_HEADERS, 0) > 0);
        assert_int_equal(resp.status, v[i].status);
        const dx_http_header *h = dx__http_find(resp.headers, resp.n_headers, "Sec-WebSocket-Version");
        if (rc == DX_EVERSION) {
            assert_non_null(h);
            assert_true(span_is(h->value, h->value_len, "13"));
            assert_true(dx__http_headers_have(resp.headers, resp.n_headers, "Upgrade", "websocket"));
            assert_true(dx__http_headers_have(resp.headers, resp.n_headers, "Connection", "upgrade"));
        } else {
            assert_null(h);
        }
        if (rc == DX_EMETHOD)
            assert_true(dx__http_headers_have(resp.headers, resp.n_headers, "Allow", "GET"));
    }
    /* Nine params is one too many; eight is fine. */
    dx_ws_request r;
    assert_int_equal(server_check("GET / HTTP/1.1\r\n" OKH OKU OKC OKK OKV
                                  "Sec-WebSocket-Extensions: a;1;2;3;4;5;6;7;8\r\n\r\n",
                                  &r),
                     0);
    assert_int_equal(r.exts[0].n_params, 8);
}

static void test_server_ext_limit(void **state)
{
    (void)state;
    static const char s[] = "GET / HTTP/1.1\r\n" OKH OKU OKC OKK OKV "Sec-WebSocket-Extensions: a, b\r\n"
                            "Sec-WebSocket-Extensions: c, , d\r\n\r\n";
    dx_http_request req;
    dx_ws_request r;
    const char *p = put(s, sizeof s - 1);
    assert_int_equal(dx__http_parse_request(p, sizeof s - 1, &req, hdrs, 16, 0), (int)sizeof s - 1);
    assert_int_equal(dx__ws_server_check(&req, &r, exts, 4), 0);
    assert_int_equal(r.n_exts, 4);
    assert_true(span_is(r.exts[3].name, r.exts[3].name_len, "d"));
    assert_int_equal(dx__ws_server_check(&req, &r, exts, 3), DX_EEXTENSION);
    assert_int_equal(dx__ws_server_check(&req, &r, NULL, 0), DX_EEXTENSION);
}

static void test_ext_parse(void **state)
{
    (void)state;
    dx_ws_ext_offer e[4];
    size_t n = 0;
    static const char v[] = "permessage-deflate ; client_max_window_bits=15;server_no_context_takeover,"
                            " ,x; q=\"tok\"";
    assert_int_equal(dx__ws_ext_parse(v, sizeof v - 1, e, 4, &n), 0);
    assert_int_equal(n, 2);
    assert_true(span_is(e[0].name, e[0].name_len, "permessage-deflate"));
    assert_int_equal(e[0].n_params, 2);
    assert_true(span_is(e[0].params[0].value, e[0].params[0].value_len, "15"));
    assert_null(e[0].params[1].value);
    assert_true(span_is(e[1].params[0].name, e[1].params[0].name_len, "q"));
    assert_true(span_is(e[1].params[0].value, e[1].params[0].value_len, "tok"));
    n = 0;
    assert_int_equal(dx__ws_ext_parse("", 0, e, 4, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(dx__ws_ext_parse(" , ,", 4, e, 4, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(dx__ws_ext_parse("a,b,c,d,e", 9, e, 4, &n), DX_EEXTENSION);
    n = 0;
    assert_int_equal(dx__ws_ext_parse("a;b;", 4, e, 4, &n), DX_EEXTENSION);
    n = 0;
    assert_int_equal(dx__ws_ext_parse("a=b", 3, e, 4, &n), DX_EEXTENSION);
    n = 0;
    assert_int_equal(dx__ws_ext_parse("a; b = c ,d", 11, e, 4, &n), 0);
    assert_int_equal(n, 2);
}

/* ---- server response errors ---------------------------------------------- */

static void test_server_response_errors(void **state)
{
    (void)state;
    dx_ws_request r;
    char out[512];
    assert_int_equal(server_check(rfc_request, &r), 0);
    assert_int_equal(dx__ws_server_response(out, sizeof out, &r, "other", NULL, NULL), DX_EINVAL);
    assert_int_equal(dx__ws_server_response(out, sizeof out, &r, "chat\r\nX: y", NULL, NULL), DX_EINVAL);
    assert_int_equal(dx__ws_server_response(out, sizeof out, &r, NULL, "a\r\nX: y", NULL), DX_EINVAL);
    assert_int_equal(dx__ws_server_response(out, sizeof out, &r, NULL, "a\n", NULL), DX_EINVAL);
    assert_int_equal(dx__ws_server_response(out, sizeof out, &r, NULL, "", NULL), DX_EINVAL);
    assert_int_equal(dx__ws_server_response(out, sizeof out, &r, NULL, ", ", NULL), DX_EINVAL);
    assert_int_equal(dx__ws_server_response(out, sizeof out, &r, NULL, "a;", NULL), DX_EINVAL);
    assert_int_equal(dx__ws_server_response(out, sizeof out, &r, NULL, NULL, "X: y\r\n\r\nbody"), DX_EINVAL);
    assert_int_equal(dx__ws_server_response(out, sizeof out, &r, NULL, NULL, "X: y"), DX_EINVAL);
    assert_int_equal(dx__ws_server_response(out, sizeof out, &r, NULL, NULL, "X: y\nZ: w\r\n"), DX_EINVAL);
    int n = dx__ws_server_response(out, sizeof out, &r, NULL, "permessage-deflate", "Set-Cookie: a=b\r\n");
    assert_true(n > 0);
    assert_non_null(strstr(out, "\r\nSec-WebSocket-Extensions: permessage-deflate\r\nSet-Cookie: a=b\r\n\r\n"));
    assert_null(strstr(out, "Sec-WebSocket-Protocol"));
    dx_ws_request bogus = r;
    bogus.key = "short";
    bogus.key_len = 5;
    assert_int_equal(dx__ws_server_response(out, sizeof out, &bogus, NULL, NULL, NULL), DX_EINVAL);
}

/* ---- client request ------------------------------------------------------ */

static int client_req(const dx_ws_client_opts *o, char *out, size_t cap, char key[25])
{
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    return dx__ws_client_request(out, cap, o, &ts.seams, key);
}

static void test_client_request(void **state)
{
    (void)state;
    char out[1024], key[25], key2[25];
    const char *protos[] = {"chat", "superchat"};
    dx_http_header extra[] = {{"X-Token", 7, "abc def", 7}};
    dx_ws_client_opts o = {.host = "server.example.com",
                           .path = "/chat?x=1",
                           .protocols = protos,
                           .n_protocols = 2,
                           .extensions = "permessage-deflate; client_max_window_bits",
                           .origin = "http://example.com",
                           .headers = extra,
                           .n_headers = 1};
    int n = client_req(&o, out, sizeof out, key);
    assert_true(n > 0);
    assert_int_equal(strlen(key), 24);
    /* Deterministic seam: the same seed gives the same key. */
    assert_int_equal(client_req(&o, out, sizeof out, key2), n);
    assert_string_equal(key, key2);
    char want[1024];
    snprintf(want, sizeof want,
             "GET /chat?x=1 HTTP/1.1\r\n"
             "Host: server.example.com\r\n"
             "Upgrade: websocket\r\n"
             "Connection: Upgrade\r\n"
             "Sec-WebSocket-Key: %s\r\n"
             "Sec-WebSocket-Version: 13\r\n"
             "Sec-WebSocket-Protocol: chat, superchat\r\n"
             "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
             "Origin: http://example.com\r\n"
             "X-Token: abc def\r\n"
             "\r\n",
             key);
    assert_string_equal(out, want);
    for (size_t cap = 0; cap <= (size_t)n; cap++)
        assert_int_equal(client_req(&o, cap ? out : NULL, cap, key), DX_ENOSPC);

    /* Minimal: path NULL → "/". */
    dx_ws_client_opts m = {.host = "h"};
    assert_true(client_req(&m, out, sizeof out, key) > 0);
    assert_true(strncmp(out, "GET / HTTP/1.1\r\nHost: h\r\n", 25) == 0);
    assert_null(strstr(out, "Sec-WebSocket-Protocol"));
    assert_null(strstr(out, "Origin"));
}

static void test_client_host_formatting(void **state)
{
    (void)state;
    static const struct {
        const char *host;
        unsigned port;
        bool tls;
        const char *want;
    } v[] = {
        {"example.com", 0, false, "Host: example.com\r\n"},
        {"example.com", 80, false, "Host: example.com\r\n"},
        {"example.com", 443, false, "Host: example.com:443\r\n"},
        {"example.com", 0, true, "Host: example.com\r\n"},
        {"example.com", 443, true, "Host: example.com\r\n"},
        {"example.com", 80, true, "Host: example.com:80\r\n"},
        {"example.com", 8080, false, "Host: example.com:8080\r\n"},
        {"example.com", 65535, true, "Host: example.com:65535\r\n"},
        {"127.0.0.1", 9001, false, "Host: 127.0.0.1:9001\r\n"},
        {"::1", 0, false, "Host: [::1]\r\n"},
        {"::1", 8443, true, "Host: [::1]:8443\r\n"},
        {"[fe80::1]", 81, false, "Host: [fe80::1]:81\r\n"},
        {"fe80::1%25eth0", 0, true, "Host: [fe80::1%25eth0]\r\n"},
    };
    char out[512], key[25];
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        dx_ws_client_opts o = {.host = v[i].host, .port = v[i].port, .tls = v[i].tls};
        assert_true(client_req(&o, out, sizeof out, key) > 0);
        if (!strstr(out, v[i].want))
            fail_msg("case %zu: want %s in %s", i, v[i].want, out);
    }
}

static void test_client_request_errors(void **state)
{
    (void)state;
    char out[512], key[25];
    const char *bad_protos[][2] = {{"a b", NULL}, {"", NULL}, {"a,b", NULL}, {"x", "x"}, {"a\r\n", NULL}};
    for (size_t i = 0; i < 5; i++) {
        dx_ws_client_opts o = {.host = "h", .protocols = bad_protos[i], .n_protocols = bad_protos[i][1] ? 2 : 1};
        assert_int_equal(client_req(&o, out, sizeof out, key), DX_EINVAL);
    }
    static const char *const bad_hosts[] = {NULL, "", "a b", "a/b", "a?b", "a#b", "u@h", "h\r\nX: y", "[::1",
                                            "::1]", "[]", "a[b]", "h\xc3\xa9", "example.com:8080",
                                            "[example.com]", "[::1]:80", "::g", "fe80::1%eth 0"};
    for (size_t i = 0; i < sizeof bad_hosts / sizeof bad_hosts[0]; i++) {
        dx_ws_client_opts o = {.host = bad_hosts[i]};
        assert_int_equal(client_req(&o, out, sizeof out, key), DX_EINVAL);
    }
    static const char *const bad_paths[] = {"", "chat", "/a b", "/a#frag", "/a\r\nX: y", "/\x7f", "/\xc3\xa9"};
    for (size_t i = 0; i < sizeof bad_paths / sizeof bad_paths[0]; i++) {
        dx_ws_client_opts o = {.host = "h", .path = bad_paths[i]};
        assert_int_equal(client_req(&o, out, sizeof out, key), DX_EINVAL);
    }
    dx_ws_client_opts o = {.host = "h", .port = 65536};
    assert_int_equal(client_req(&o, out, sizeof out, key), DX_EINVAL);
    o = (dx_ws_client_opts){.host = "h", .extensions = "x\r\nEvil: 1"};
    assert_int_equal(client_req(&o, out, sizeof out, key), DX_EINVAL);
    static const char *const bad_exts[] = {"", " , ", "a b", "a;", ";a", "a; b=\"c d\"", "a\tb=1", "a=b"};
    for (size_t i = 0; i < sizeof bad_exts / sizeof bad_exts[0]; i++) {
        o = (dx_ws_client_opts){.host = "h", .extensions = bad_exts[i]};
        assert_int_equal(client_req(&o, out, sizeof out, key), DX_EINVAL);
    }
    o = (dx_ws_client_opts){.host = "h", .extensions = "a; b=\"c\", d"};
    assert_true(client_req(&o, out, sizeof out, key) > 0);
    o = (dx_ws_client_opts){.host = "h", .origin = "http://a\nb"};
    assert_int_equal(client_req(&o, out, sizeof out, key), DX_EINVAL);
    dx_http_header bad_hdrs[] = {
        {"X Y", 3, "v", 1},   {"", 0, "v", 1},        {"X", 1, "a\r\nb", 4},
        {"Host", 4, "v", 1},  {"upgrade", 7, "v", 1}, {"Connection", 10, "close", 5},
        {"Origin", 6, "v", 1}, {"sec-websocket-key", 17, "v", 1}, {"Sec-WebSocket-Protocol", 22, "v", 1},
    };
    for (size_t i = 0; i < sizeof bad_hdrs / sizeof bad_hdrs[0]; i++) {
        o = (dx_ws_client_opts){.host = "h", .headers = &bad_hdrs[i], .n_headers = 1};
        assert_int_equal(client_req(&o, out, sizeof out, key), DX_EINVAL);
    }
}

static int failing_random(void *ud, void *buf, size_t len)
{
    (void)ud;
    (void)buf;
    (void)len;
    return DX_ERANDOM;
}

static void test_client_random_fails(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    ts.seams.random = failing_random;
    char out[512], key[25];
    dx_ws_client_opts o = {.host = "h"};
    assert_int_equal(dx__ws_client_request(out, sizeof out, &o, &ts.seams, key), DX_ERANDOM);
    /* NULL seams: the default (getrandom) works. */
    assert_true(dx__ws_client_request(out, sizeof out, &o, NULL, key) > 0);
    assert_int_equal(strlen(key), 24);
}

/* ---- round trip ---------------------------------------------------------- */

static void test_round_trip(void **state)
{
    (void)state;
    const char *protos[] = {"v2.json", "v1.json"};
    dx_ws_client_opts o = {.host = "::1",
                           .port = 9000,
                           .path = "/feed?topic=a",
                           .protocols = protos,
                           .n_protocols = 2,
                           .extensions = "permessage-deflate; client_max_window_bits, x-other",
                           .origin = "https://app.example"};
    char req_buf[1024], resp_buf[1024], key[25];
    int n = client_req(&o, req_buf, sizeof req_buf, key);
    assert_true(n > 0);

    dx_http_request req;
    dx_ws_request r;
    const char *p = put(req_buf, (size_t)n);
    for (int k = 0; k < n; k++)
        assert_int_equal(dx__http_parse_request(p, (size_t)k, &req, hdrs, 64, 0), DX_EAGAIN);
    assert_int_equal(dx__http_parse_request(p, (size_t)n, &req, hdrs, 64, 0), n);
    assert_int_equal(dx__ws_server_check(&req, &r, exts, DX_WS_DEFAULT_MAX_EXTS), 0);
    assert_true(span_is(r.path, r.path_len, "/feed"));
    assert_true(span_is(r.query, r.query_len, "topic=a"));
    assert_true(span_is(r.host, r.host_len, "[::1]:9000"));
    assert_true(span_is(r.origin, r.origin_len, "https://app.example"));
    assert_true(span_is(r.key, r.key_len, key));
    assert_int_equal(r.n_exts, 2);
    assert_true(dx__ws_protocol_offered(&r, "v1.json", 7));

    int m = dx__ws_server_response(resp_buf, sizeof resp_buf, &r, "v1.json",
                                   "permessage-deflate; client_max_window_bits=12", NULL);
    assert_true(m > 0);
    /* The same request answered with no protocol and no extension (built
     * now: `r` borrows the guard region, which the next put() reuses). */
    char plain_buf[512];
    int m2 = dx__ws_server_response(plain_buf, sizeof plain_buf, &r, NULL, NULL, NULL);
    assert_true(m2 > 0);
    dx_http_response resp;
    const char *q = put(resp_buf, (size_t)m);
    for (int k = 0; k < m; k++)
        assert_int_equal(dx__http_parse_response(q, (size_t)k, &resp, rhdrs, 64, 0), DX_EAGAIN);
    assert_int_equal(dx__http_parse_response(q, (size_t)m, &resp, rhdrs, 64, 0), m);
    const char *proto;
    size_t proto_len, n_exts;
    dx_ws_ext_offer got[4];
    assert_int_equal(dx__ws_client_check(&resp, key, &o, &proto, &proto_len, got, 4, &n_exts), 0);
    assert_true(span_is(proto, proto_len, "v1.json"));
    assert_int_equal(n_exts, 1);
    assert_true(span_is(got[0].name, got[0].name_len, "permessage-deflate"));
    assert_true(span_is(got[0].params[0].value, got[0].params[0].value_len, "12"));

    /* No protocol, no extension chosen. */
    q = put(plain_buf, (size_t)m2);
    assert_int_equal(dx__http_parse_response(q, (size_t)m2, &resp, rhdrs, 64, 0), m2);
    assert_int_equal(dx__ws_client_check(&resp, key, &o, &proto, &proto_len, got, 4, &n_exts), 0);
    assert_null(proto);
    assert_int_equal(n_exts, 0);
}

/* ---- client check rejections --------------------------------------------- */

typedef struct cli_case {
    const char *extra; /* headers after the good Upgrade/Connection/Accept */
    const char *status_line;
    bool drop_upgrade, drop_connection, drop_accept;
    int err;
} cli_case;

static void test_client_check_rejections(void **state)
{
    (void)state;
    static const char key[] = "dGhlIHNhbXBsZSBub25jZQ==";
    const char *protos[] = {"chat", "superchat"};
    dx_ws_client_opts o = {.host = "h", .protocols = protos, .n_protocols = 2,
                           .extensions = "permessage-deflate; client_max_window_bits, x-a"};
    dx_ws_client_opts none = {.host = "h"};
    static const cli_case v[] = {
        {"", NULL, false, false, false, 0},
        {"Sec-WebSocket-Protocol: superchat\r\n", NULL, false, false, false, 0},
        {"Sec-WebSocket-Extensions: x-a, PERMESSAGE-DEFLATE\r\n", NULL, false, false, false, 0},
        {"", "HTTP/1.1 200 OK", false, false, false, DX_EHANDSHAKE},
        {"", "HTTP/1.1 400 Bad Request", false, false, false, DX_EHANDSHAKE},
        {"", "HTTP/1.0 101 Switching Protocols", false, false, false, DX_EHANDSHAKE},
        {"", NULL, true, false, false, DX_EHANDSHAKE},
        {"Upgrade: h2c\r\n", NULL, true, false, false, DX_EHANDSHAKE},
        {"Upgrade: websocket, h2c\r\n", NULL, true, false, false, DX_EHANDSHAKE},
        {"", NULL, false, true, false, DX_EHANDSHAKE},
        {"Connection: keep-alive\r\n", NULL, false, true, false, DX_EHANDSHAKE},
        {"", NULL, false, false, true, DX_EHANDSHAKE},
        {"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", NULL, false, false, false, DX_EHANDSHAKE},
        {"Sec-WebSocket-Accept: S3PPLMBITXAQ9KYGZZHZRBK+XOO=\r\n", NULL, false, false, true, DX_EHANDSHAKE},
        {"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo\r\n", NULL, false, false, true, DX_EHANDSHAKE},
        {"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n", NULL, false, false, true, DX_EHANDSHAKE},
        {"Sec-WebSocket-Protocol: other\r\n", NULL, false, false, false, DX_EHANDSHAKE},
        {"Sec-WebSocket-Protocol: Chat\r\n", NULL, false, false, false, DX_EHANDSHAKE},
        {"Sec-WebSocket-Protocol: chat, superchat\r\n", NULL, false, false, false, DX_EHANDSHAKE},
        {"Sec-WebSocket-Protocol: chat,\r\n", NULL, false, false, false, DX_EHANDSHAKE},
        {"Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: chat\r\n", NULL, false, false, false,
         DX_EHANDSHAKE},
        {"Sec-WebSocket-Extensions: x-b\r\n", NULL, false, false, false, DX_EEXTENSION},
        {"Sec-WebSocket-Extensions: permessage-deflate, permessage-deflate\r\n", NULL, false, false, false,
         DX_EEXTENSION},
        {"Sec-WebSocket-Extensions: x-a\r\nSec-WebSocket-Extensions: x-a\r\n", NULL, false, false, false,
         DX_EEXTENSION},
        {"Sec-WebSocket-Extensions: permessage-deflate; =1\r\n", NULL, false, false, false, DX_EEXTENSION},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        char buf[1024];
        snprintf(buf, sizeof buf, "%s\r\n%s%s%s%s\r\n", v[i].status_line ? v[i].status_line
                                                                           : "HTTP/1.1 101 Switching Protocols",
                 v[i].drop_upgrade ? "" : "Upgrade: websocket\r\n",
                 v[i].drop_connection ? "" : "Connection: Upgrade\r\n",
                 v[i].drop_accept ? "" : "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", v[i].extra);
        size_t len = strlen(buf);
        dx_http_response resp;
        const char *p = put(buf, len);
        assert_int_equal(dx__http_parse_response(p, len, &resp, rhdrs, 64, 0), (int)len);
        const char *proto;
        size_t proto_len, n_exts;
        dx_ws_ext_offer got[4];
        int rc = dx__ws_client_check(&resp, key, &o, &proto, &proto_len, got, 4, &n_exts);
        if (rc != v[i].err)
            fail_msg("case %zu: want %s got %s", i, dx_errname(v[i].err), dx_errname(rc));
    }
    /* A protocol or an extension when none was offered. */
    static const char *const unoffered[] = {"Sec-WebSocket-Protocol: chat\r\n",
                                            "Sec-WebSocket-Extensions: permessage-deflate\r\n"};
    for (size_t i = 0; i < 2; i++) {
        char buf[512];
        snprintf(buf, sizeof buf,
                 "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n%s\r\n",
                 unoffered[i]);
        dx_http_response resp;
        assert_true(dx__http_parse_response(buf, strlen(buf), &resp, rhdrs, 64, 0) > 0);
        const char *proto;
        size_t proto_len, n_exts;
        dx_ws_ext_offer got[4];
        assert_int_equal(dx__ws_client_check(&resp, key, &none, &proto, &proto_len, got, 4, &n_exts),
                         i == 0 ? DX_EHANDSHAKE : DX_EEXTENSION);
        if (i == 1) /* more than max_exts is also an extension failure */
            assert_int_equal(dx__ws_client_check(&resp, key, &o, &proto, &proto_len, got, 0, &n_exts),
                             DX_EEXTENSION);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accept_key_rfc),
        cmocka_unit_test(test_server_rfc_example),
        cmocka_unit_test(test_server_fields),
        cmocka_unit_test(test_server_errors),
        cmocka_unit_test(test_server_ext_limit),
        cmocka_unit_test(test_ext_parse),
        cmocka_unit_test(test_server_response_errors),
        cmocka_unit_test(test_client_request),
        cmocka_unit_test(test_client_host_formatting),
        cmocka_unit_test(test_client_request_errors),
        cmocka_unit_test(test_client_random_fails),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_client_check_rejections),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
