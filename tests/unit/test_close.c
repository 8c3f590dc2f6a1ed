/* tests/unit/test_close.c: src/proto/close.c — close payload parse and write. */
#include "testutil.h"

#include "proto/close.h"

#include <string.h>

static int parse(const uint8_t *p, size_t len, uint16_t *code)
{
    const uint8_t *reason;
    size_t rlen;
    return dx__close_parse(p, len, code, &reason, &rlen);
}

static void test_empty_is_no_status(void **state)
{
    (void)state;
    uint16_t code = 0;
    assert_int_equal(parse((const uint8_t *)"", 0, &code), 0);
    assert_int_equal(code, DX_CLOSE_NO_STATUS);
}

static void test_one_byte_is_protocol_error(void **state)
{
    (void)state;
    uint16_t code;
    const uint8_t b[1] = {0x03};
    assert_int_equal(parse(b, 1, &code), DX_EPROTO);
}

static void test_every_code(void **state)
{
    (void)state;
    /* 0-999, 1004, 1005, 1006, 1015, 1016-2999 and 5000+ → 1002;
     * 1000-1003, 1007-1014 and 3000-4999 valid. Exhaustive. */
    for (unsigned c = 0; c <= 0xFFFF; c++) {
        uint8_t b[2] = {(uint8_t)(c >> 8), (uint8_t)c};
        uint16_t code = 0;
        int want_ok = (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) || (c >= 3000 && c <= 4999);
        int rc = parse(b, 2, &code);
        if (want_ok) {
            assert_int_equal(rc, 0);
            assert_int_equal(code, c);
        } else {
            assert_int_equal(rc, DX_EPROTO);
        }
    }
}

static void test_reason(void **state)
{
    (void)state;
    const uint8_t ok[] = {0x03, 0xE8, 'b', 'y', 'e', 0xC3, 0xA9};
    uint16_t code;
    const uint8_t *reason;
    size_t rlen;
    assert_int_equal(dx__close_parse(ok, sizeof ok, &code, &reason, &rlen), 0);
    assert_int_equal(code, 1000);
    assert_int_equal(rlen, 5);
    assert_memory_equal(reason, "bye\xC3\xA9", 5);
    const uint8_t bad[] = {0x03, 0xE8, 'b', 0xC3};     /* truncated sequence */
    assert_int_equal(parse(bad, sizeof bad, &code), DX_EUTF8);
    const uint8_t surrogate[] = {0x0F, 0xA0, 0xED, 0xA0, 0x80};
    assert_int_equal(parse(surrogate, sizeof surrogate, &code), DX_EUTF8);
    /* A bad code wins over a bad reason (1002 before 1007). */
    const uint8_t both[] = {0x03, 0xED, 0xFF};
    assert_int_equal(parse(both, sizeof both, &code), DX_EPROTO);
    uint8_t too_long[126] = {0x03, 0xE8};
    memset(too_long + 2, 'a', sizeof too_long - 2);
    assert_int_equal(parse(too_long, sizeof too_long, &code), DX_EPROTO);
    assert_int_equal(parse(too_long, 125, &code), 0);
}

static void test_write(void **state)
{
    (void)state;
    uint8_t out[125];
    assert_int_equal(dx__close_write(out, 0, NULL, 0), 0);
    assert_int_equal(dx__close_write(out, 1000, NULL, 0), 2);
    assert_memory_equal(out, "\x03\xE8", 2);
    assert_int_equal(dx__close_write(out, 4001, "going", 5), 7);
    assert_memory_equal(out, "\x0F\xA1going", 7);
    /* A long reason is cut to 123 bytes at a character boundary. */
    char reason[200];
    memset(reason, 'x', sizeof reason);
    assert_int_equal(dx__close_write(out, 1001, reason, sizeof reason), 125);
    /* "é" (2 bytes) straddling byte 123: cut before it. */
    memset(reason, 'x', 122);
    memcpy(reason + 122, "\xC3\xA9", 2);
    assert_int_equal(dx__close_write(out, 1001, reason, 124), 2 + 122);
    /* "€" (3 bytes) ending exactly at 123: kept. */
    memset(reason, 'x', 120);
    memcpy(reason + 120, "\xE2\x82\xAC", 3);
    assert_int_equal(dx__close_write(out, 1001, reason, 130), 2 + 123);
    /* "😀" (4 bytes) starting at 121: cut before it. */
    memset(reason, 'x', 121);
    memcpy(reason + 121, "\xF0\x9F\x98\x80", 4);
    assert_int_equal(dx__close_write(out, 1001, reason, 125), 2 + 121);
    /* Whatever is written parses back. */
    uint16_t code;
    const uint8_t *r;
    size_t rlen;
    assert_int_equal(dx__close_parse(out, 2 + 121, &code, &r, &rlen), 0);
    assert_int_equal(code, 1001);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_is_no_status), cmocka_unit_test(test_one_byte_is_protocol_error),
        cmocka_unit_test(test_every_code),         cmocka_unit_test(test_reason),
        cmocka_unit_test(test_write),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
