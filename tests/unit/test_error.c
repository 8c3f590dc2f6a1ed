/* tests/unit/test_error.c: src/core/error.c — the error table and close codes. */
#include "testutil.h"

#include <string.h>

static void test_every_code_has_name_and_message(void **state)
{
    (void)state;
#define CHECK(name, value, msg)                                                          \
    assert_int_equal(DX_##name, value);                                                  \
    assert_string_equal(dx_strerror(value), msg);                                        \
    assert_string_equal(dx_errname(value), "DX_" #name);
    DX_ERRNO_MAP(CHECK)
#undef CHECK
    assert_string_equal(dx_strerror(0), "success");
    assert_string_equal(dx_strerror(-9999), "unknown error");
    assert_string_equal(dx_errname(12345), "DX_E?");
}

static void test_codes_are_distinct_and_negative(void **state)
{
    (void)state;
    int codes[] = {
#define LIST(name, value, msg) value,
        DX_ERRNO_MAP(LIST)
#undef LIST
    };
    size_t n = sizeof codes / sizeof codes[0];
    for (size_t i = 0; i < n; i++) {
        assert_true(codes[i] < 0);
        for (size_t j = i + 1; j < n; j++)
            assert_int_not_equal(codes[i], codes[j]);
    }
}

static void test_error_to_close_code(void **state)
{
    (void)state;
    assert_int_equal(dx_close_code_for_error(DX_OK), 1000);
    assert_int_equal(dx_close_code_for_error(DX_EPROTO), 1002);
    assert_int_equal(dx_close_code_for_error(DX_EUTF8), 1007);
    assert_int_equal(dx_close_code_for_error(DX_EPOLICY), 1008);
    assert_int_equal(dx_close_code_for_error(DX_ETOOBIG), 1009);
    assert_int_equal(dx_close_code_for_error(DX_EEXTENSION), 1010);
    assert_int_equal(dx_close_code_for_error(DX_ECONNRESET), 1006);
    assert_int_equal(dx_close_code_for_error(DX_ETIMEDOUT), 1006);
    assert_int_equal(dx_close_code_for_error(DX_ENOMEM), 1011);
    assert_int_equal(dx_close_code_for_error(DX_EINTERNAL), 1011);
}

static void test_close_code_validity(void **state)
{
    (void)state;
    /* RFC 6455 §7.4 and the IANA registry: exhaustive over 0..65535. */
    for (unsigned c = 0; c <= 65535; c++) {
        int want = (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) || (c >= 3000 && c <= 4999);
        assert_int_equal(dx_close_code_valid(c), want);
    }
    assert_string_equal(dx_close_code_name(1000), "normal");
    assert_string_equal(dx_close_code_name(1009), "message too big");
    assert_string_equal(dx_close_code_name(4001), "private (4000-4999)");
    assert_string_equal(dx_close_code_name(2000), "invalid");
}

static void test_version(void **state)
{
    (void)state;
    assert_string_equal(dx_version(), DX_VERSION_STRING);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_code_has_name_and_message),
        cmocka_unit_test(test_codes_are_distinct_and_negative),
        cmocka_unit_test(test_error_to_close_code),
        cmocka_unit_test(test_close_code_validity),
        cmocka_unit_test(test_version),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
