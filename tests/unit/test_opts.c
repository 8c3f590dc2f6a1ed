/* tests/unit/test_opts.c: src/core/opts.h and the dx_*_new_sized entry
 * points: option structs may grow without breaking binaries built against
 * another version of the headers. */
#include "testutil.h"

#include "core/opts.h"
#include "duplex/client.h"
#include "duplex/server.h"

#include <stdint.h>
#include <string.h>

static void test_copy_smaller_zero_fills(void **state)
{
    (void)state;
    uint8_t src[4] = {1, 2, 3, 4}, dst[8];
    memset(dst, 0xee, sizeof dst);
    assert_int_equal(dx__opts_copy(dst, sizeof dst, src, sizeof src), 0);
    const uint8_t want[8] = {1, 2, 3, 4, 0, 0, 0, 0};
    assert_memory_equal(dst, want, sizeof want);
    memset(dst, 0xee, sizeof dst);
    assert_int_equal(dx__opts_copy(dst, sizeof dst, NULL, 0), 0); /* NULL: every default */
    assert_memory_equal(dst, (uint8_t[8]){0}, sizeof dst);
}

static void test_copy_larger_needs_zero_tail(void **state)
{
    (void)state;
    uint8_t src[12] = {1, 2, 3, 4, 5, 6, 7, 8}, dst[8];
    assert_int_equal(dx__opts_copy(dst, sizeof dst, src, sizeof src), 0); /* tail all zero */
    assert_memory_equal(dst, src, sizeof dst);
    for (size_t i = 8; i < sizeof src; i++) {
        src[i] = 1; /* a field this library does not know is set */
        assert_int_equal(dx__opts_copy(dst, sizeof dst, src, sizeof src), DX_EINVAL);
        src[i] = 0;
    }
}

static const dx_log quiet = {.level = DX_LOG_ERROR};

/* Through the public entry points: a caller built against an older (here:
 * truncated) struct gets the defaults for what it did not pass; one built
 * against a newer (larger) struct is accepted only with a zero tail. */
static void test_sized_entry_points(void **state)
{
    (void)state;
    int err = 0;
    struct {
        dx_loop_options o;
        uint8_t newer[16];
    } lo = {.o = {.log = &quiet}};
    dx_loop *loop = dx_loop_new_sized(&lo.o, sizeof lo, &err);
    assert_non_null(loop);
    lo.newer[3] = 1;
    assert_null(dx_loop_new_sized(&lo.o, sizeof lo, &err));
    assert_int_equal(err, DX_EINVAL);

    struct {
        dx_server_options o;
        uint8_t newer[16];
    } so = {.o = {.port = DX_PORT_EPHEMERAL}};
    dx_server *srv = dx_server_new_sized(loop, &so.o, sizeof so, &err);
    assert_non_null(srv);
    dx_server_free(srv);
    so.newer[15] = 7;
    err = 0;
    assert_null(dx_server_new_sized(loop, &so.o, sizeof so, &err));
    assert_int_equal(err, DX_EINVAL);
    /* an older caller: only the first field (host) known; the rest default */
    srv = dx_server_new_sized(loop, &so.o, offsetof(dx_server_options, port), &err);
    assert_non_null(srv);
    dx_server_free(srv);
    assert_null(dx_server_new_sized(loop, NULL, sizeof so.o, &err));
    assert_int_equal(err, DX_EINVAL);

    struct {
        dx_client_options o;
        uint8_t newer[16];
    } co = {.o = {.url = "ws://127.0.0.1:9/"}};
    dx_client *cl = dx_client_new_sized(loop, &co.o, sizeof co, &err);
    assert_non_null(cl);
    dx_client_free(cl);
    co.newer[0] = 1;
    assert_null(dx_client_new_sized(loop, &co.o, sizeof co, &err));
    assert_int_equal(err, DX_EINVAL);
    /* the macros pass the size of the struct this file was compiled with */
    cl = dx_client_new(loop, &co.o, &err);
    assert_non_null(cl);
    dx_client_free(cl);
    dx_loop_free(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copy_smaller_zero_fills),
        cmocka_unit_test(test_copy_larger_needs_zero_tail),
        cmocka_unit_test(test_sized_entry_points),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
