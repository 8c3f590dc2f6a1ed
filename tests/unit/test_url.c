/*
 * tests/unit/test_url.c: src/proto/url.c — dx__url_parse for the client's
 * ws://, wss:// and (proxy) http:// URLs.
 *
 * Pure: no sockets, no loop. Covers the schemes and their default ports,
 * explicit ports, IPv6 literals (with port and zone), path and query
 * ("ws://h?x" means "/?x"), the fragment being dropped, and every
 * rejection the header promises (no host, userinfo, bad ports, whitespace
 * and control characters, other schemes, over-long host or path).
 */
#include "testutil.h"

#include "proto/url.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parses `s` and checks each field. */
static void ok(const char *s, bool ws, bool http, bool tls, const char *host, unsigned port, bool defport,
               const char *path)
{
    dx_url u;
    int rc = dx__url_parse(s, ws, http, &u);
    if (rc != 0)
        fail_msg("%s: refused (%d)", s, rc);
    if (u.tls != tls)
        fail_msg("%s: tls %d, expected %d", s, u.tls, tls);
    if (strcmp(u.host, host) != 0)
        fail_msg("%s: host '%s', expected '%s'", s, u.host, host);
    if (u.port != port)
        fail_msg("%s: port %u, expected %u", s, u.port, port);
    if (u.default_port != defport)
        fail_msg("%s: default_port %d, expected %d", s, u.default_port, defport);
    if (strcmp(u.path, path) != 0)
        fail_msg("%s: path '%s', expected '%s'", s, u.path, path);
}

static void bad(const char *s, bool ws, bool http)
{
    dx_url u;
    int rc = dx__url_parse(s, ws, http, &u);
    if (rc != DX_EINVAL)
        fail_msg("'%s': expected DX_EINVAL, got %d (host '%s' port %u path '%s')", s ? s : "(null)", rc, u.host,
                 u.port, u.path);
}

static void test_schemes_and_default_ports(void **state)
{
    (void)state;
    ok("ws://example.com", true, false, false, "example.com", 80, true, "/");
    ok("ws://example.com/", true, false, false, "example.com", 80, true, "/");
    ok("wss://example.com", true, false, true, "example.com", 443, true, "/");
    ok("WSS://Example.COM/Chat", true, false, true, "Example.COM", 443, true, "/Chat");
    ok("Ws://h/", true, false, false, "h", 80, true, "/");
    ok("http://proxy.local", false, true, false, "proxy.local", 80, true, "/");
    ok("HTTP://10.0.0.1:3128", false, true, false, "10.0.0.1", 3128, false, "/");
    /* a scheme not allowed by the flags is refused */
    bad("http://h/", true, false);
    bad("ws://h/", false, true);
    bad("wss://h/", false, true);
    bad("ws://h/", false, false);
}

static void test_explicit_ports(void **state)
{
    (void)state;
    ok("ws://127.0.0.1:9000/echo", true, false, false, "127.0.0.1", 9000, false, "/echo");
    ok("wss://h:1", true, false, true, "h", 1, false, "/");
    ok("ws://h:65535/", true, false, false, "h", 65535, false, "/");
    ok("ws://h:80/", true, false, false, "h", 80, false, "/");        /* explicit even if default */
    ok("ws://h:0080/", true, false, false, "h", 80, false, "/");      /* leading zeros are digits */
    ok("ws://h:443?q", true, false, false, "h", 443, false, "/?q");
    ok("ws://h:8080#frag", true, false, false, "h", 8080, false, "/");
    bad("ws://h:0/", true, false);
    bad("ws://h:00/", true, false);
    bad("ws://h:65536/", true, false);
    bad("ws://h:99999999999999999999/", true, false);
    bad("ws://h:abc/", true, false);
    bad("ws://h:80a/", true, false);
    bad("ws://h:-1/", true, false);
    bad("ws://h:+80/", true, false);
    bad("ws://h:/", true, false);
    bad("ws://h:", true, false);
    bad("ws://h:80:81/", true, false);
}

static void test_ipv6(void **state)
{
    (void)state;
    ok("ws://[::1]/", true, false, false, "::1", 80, true, "/");
    ok("ws://[::1]", true, false, false, "::1", 80, true, "/");
    ok("ws://[::1]:9000/x", true, false, false, "::1", 9000, false, "/x");
    ok("wss://[2001:db8::42]:8443?a=b", true, false, true, "2001:db8::42", 8443, false, "/?a=b");
    ok("ws://[fe80::1%25eth0]:9000/", true, false, false, "fe80::1%25eth0", 9000, false, "/");
    ok("http://[::1]:3128", false, true, false, "::1", 3128, false, "/");
    bad("ws://[]/", true, false);
    bad("ws://[]:80/", true, false);
    bad("ws://[::1/", true, false);      /* no closing bracket */
    bad("ws://[::1]x/", true, false);    /* junk after ']' */
    bad("ws://[::1]:/", true, false);
    bad("ws://[::1]:0/", true, false);
    bad("ws://[::1]:65536/", true, false);
    bad("ws://::1/", true, false);       /* unbracketed: "::1" is host ":" + bad port */
}

static void test_path_query_fragment(void **state)
{
    (void)state;
    ok("ws://h/a/b?c=d&e", true, false, false, "h", 80, true, "/a/b?c=d&e");
    ok("ws://h?x", true, false, false, "h", 80, true, "/?x");
    ok("ws://h:81?x=1", true, false, false, "h", 81, false, "/?x=1");
    ok("ws://h/p#frag", true, false, false, "h", 80, true, "/p");
    ok("ws://h/p?q#frag?x", true, false, false, "h", 80, true, "/p?q");
    ok("ws://h#frag", true, false, false, "h", 80, true, "/");
    ok("ws://h/#", true, false, false, "h", 80, true, "/");
    ok("ws://h/%20x", true, false, false, "h", 80, true, "/%20x");
    ok("ws://h/a:b@c", true, false, false, "h", 80, true, "/a:b@c"); /* '@' after the host is path */
    ok("ws://h?a@b", true, false, false, "h", 80, true, "/?a@b");
}

static void test_rejections(void **state)
{
    (void)state;
    bad(NULL, true, true);
    bad("", true, true);
    bad("ws://", true, false);
    bad("ws:///path", true, false);
    bad("ws://:80/", true, false);
    bad("ws://?x", true, false);
    bad("ws://#f", true, false);
    /* userinfo */
    bad("ws://user@h/", true, false);
    bad("ws://user:pw@h:80/", true, false);
    bad("ws://@h/", true, false);
    bad("http://u:p@proxy:3128", false, true);
    /* whitespace and control characters anywhere */
    bad(" ws://h/", true, false);
    bad("ws://h/ ", true, false);
    bad("ws://h /", true, false);
    bad("ws://h/a b", true, false);
    bad("ws://h/\t", true, false);
    bad("ws://h/\r\nX: y", true, false);
    bad("ws://h/\x7f", true, false);
    bad("ws://h/\x01", true, false);
    /* other schemes and malformed prefixes */
    bad("https://h/", true, true);
    bad("ftp://h/", true, true);
    bad("wss:/h/", true, false);
    bad("ws:h/", true, false);
    bad("//h/", true, false);
    bad("h:80", true, false);
    bad("wsx://h/", true, false);
    bad("file:///etc/passwd", true, true);
}

static void test_lengths(void **state)
{
    (void)state;
    char *s = malloc(DX_URL_PATH_MAX + 64);
    assert_non_null(s);
    /* host of exactly DX_URL_HOST_MAX bytes passes; one more is refused */
    char host[DX_URL_HOST_MAX + 2];
    memset(host, 'a', sizeof host - 1);
    host[DX_URL_HOST_MAX] = 0;
    snprintf(s, DX_URL_PATH_MAX + 64, "ws://%s/", host);
    dx_url u;
    assert_int_equal(dx__url_parse(s, true, false, &u), 0);
    assert_int_equal(strlen(u.host), DX_URL_HOST_MAX);
    host[DX_URL_HOST_MAX] = 'a';
    host[DX_URL_HOST_MAX + 1] = 0;
    snprintf(s, DX_URL_PATH_MAX + 64, "ws://%s/", host);
    bad(s, true, false);

    /* a path that fills the buffer is kept whole and NUL-terminated; longer is refused */
    int n = snprintf(s, DX_URL_PATH_MAX + 64, "ws://h");
    size_t plen = DX_URL_PATH_MAX - 1;
    s[n] = '/';
    memset(s + n + 1, 'p', plen - 1);
    s[n + (int)plen] = 0;
    assert_int_equal(dx__url_parse(s, true, false, &u), 0);
    assert_int_equal(strlen(u.path), plen);
    /* query-only form: "/" is prepended, so the same length still fits */
    s[n] = '?';
    assert_int_equal(dx__url_parse(s, true, false, &u), 0);
    assert_int_equal(strlen(u.path), plen + 1);
    assert_int_equal(u.path[0], '/');
    assert_int_equal(u.path[1], '?');
    /* much longer: refused, not truncated */
    s[n] = '/';
    memset(s + n + 1, 'p', DX_URL_PATH_MAX + 10);
    s[n + DX_URL_PATH_MAX + 11] = 0;
    bad(s, true, false);
    free(s);
}

/* A refused parse leaves nothing half-filled that a caller could trust. */
static void test_output_cleared(void **state)
{
    (void)state;
    dx_url u;
    assert_int_equal(dx__url_parse("wss://good:444/x", true, false, &u), 0);
    assert_int_equal(dx__url_parse("ws://user@bad/", true, false, &u), DX_EINVAL);
    assert_int_equal(u.host[0], 0);
    assert_int_equal(u.path[0], 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schemes_and_default_ports),
        cmocka_unit_test(test_explicit_ports),
        cmocka_unit_test(test_ipv6),
        cmocka_unit_test(test_path_query_fragment),
        cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_output_cleared),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
