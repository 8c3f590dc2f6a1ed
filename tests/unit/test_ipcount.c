/*
 * tests/unit/test_ipcount.c: src/ws/ipcount.c, the per-address connection
 * table behind max_conns_per_ip. Checked against a plain array model under
 * random churn (adds, removes, limits), across growth and shrinking; IPv6
 * counted per /64; the table's memory goes back to nothing at zero; every
 * allocation failure leaves the table consistent.
 */
#include "testutil.h"

#include "ws/ipcount.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define NKEYS 3000

typedef struct model {
    int family;
    uint64_t key;
    size_t n;
} model;

static void test_ipv6_per_64(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx__ipcount t = {0};
    uint8_t a[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1};
    uint8_t b[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0xff, 0xee, 0, 0, 0, 0, 0, 2}; /* same /64 */
    uint8_t d[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1};       /* another /64 */
    uint64_t ka = dx__ipcount_key(AF_INET6, a), kb = dx__ipcount_key(AF_INET6, b), kd = dx__ipcount_key(AF_INET6, d);
    assert_true(ka == kb);
    assert_true(ka != kd);
    assert_int_equal(dx__ipcount_add(&t, &ts.seams, AF_INET6, ka, 2), 0);
    assert_int_equal(dx__ipcount_add(&t, &ts.seams, AF_INET6, kb, 2), 0);
    assert_int_equal(dx__ipcount_add(&t, &ts.seams, AF_INET6, kb, 2), DX_ELIMIT);
    assert_int_equal(dx__ipcount_add(&t, &ts.seams, AF_INET6, kd, 2), 0);
    /* the same 64 bits as an IPv4 key are another entry */
    assert_int_equal(dx__ipcount_get(&t, AF_INET, ka), 0);
    assert_int_equal(dx__ipcount_get(&t, AF_INET6, ka), 2);
    dx__ipcount_remove(&t, &ts.seams, AF_INET6, ka);
    dx__ipcount_remove(&t, &ts.seams, AF_INET6, ka);
    dx__ipcount_remove(&t, &ts.seams, AF_INET6, ka); /* absent: no effect */
    dx__ipcount_remove(&t, &ts.seams, AF_INET6, kd);
    assert_int_equal(t.n, 0);
    assert_null(t.slots);
    assert_int_equal(ts.live, 0);
}

/* Random churn against the model: counts agree after every step. */
static void test_churn_matches_model(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx__ipcount t = {0};
    model *m = calloc(NKEYS, sizeof *m);
    assert_non_null(m);
    for (size_t i = 0; i < NKEYS; i++) {
        uint8_t addr[8];
        m[i].family = i % 3 ? AF_INET : AF_INET6;
        for (int j = 0; j < 8; j++)
            addr[j] = (uint8_t)((i * 2654435761u) >> (j % 4 * 8)) ^ (uint8_t)j;
        m[i].key = dx__ipcount_key(m[i].family, addr);
    }
    /* keys must be distinct for the model to be exact */
    for (size_t i = 1; i < NKEYS; i++)
        if (m[i].key == m[i - 1].key && m[i].family == m[i - 1].family)
            m[i].key ^= 0x5a5a;
    uint64_t r = 12345;
    size_t limit = 3, max_cap = 0;
    for (int step = 0; step < 200000; step++) {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        /* grow for the first half, drain in the second */
        size_t i = (size_t)(r % NKEYS);
        bool add = step < 100000 ? (r >> 32) % 3 != 0 : (r >> 32) % 3 == 0;
        if (add) {
            int rc = dx__ipcount_add(&t, &ts.seams, m[i].family, m[i].key, limit);
            if (m[i].n >= limit) {
                assert_int_equal(rc, DX_ELIMIT);
            } else {
                assert_int_equal(rc, 0);
                m[i].n++;
            }
        } else if (m[i].n) {
            dx__ipcount_remove(&t, &ts.seams, m[i].family, m[i].key);
            m[i].n--;
        }
        if (t.cap > max_cap)
            max_cap = t.cap;
        if (step % 997 == 0) {
            size_t live = 0;
            for (size_t k = 0; k < NKEYS; k++) {
                assert_int_equal(dx__ipcount_get(&t, m[k].family, m[k].key), m[k].n);
                live += m[k].n != 0;
            }
            assert_int_equal(t.n, live);
            /* bounded memory: load never under 1/8 once above the minimum */
            if (t.cap > 64)
                assert_true(t.n * 8 >= t.cap / 2);
        }
    }
    assert_true(max_cap >= 2048); /* it did grow */
    for (size_t k = 0; k < NKEYS; k++)
        while (m[k].n) {
            dx__ipcount_remove(&t, &ts.seams, m[k].family, m[k].key);
            m[k].n--;
        }
    assert_int_equal(t.n, 0);
    assert_int_equal(ts.live, 0);
    free(m);
}

/* Every allocation failure: DX_ENOMEM, nothing counted, nothing lost. */
static void test_alloc_failures(void **state)
{
    (void)state;
    for (long fail = 1; fail < 12; fail++) {
        dx_test_seams ts;
        dx_test_seams_init(&ts);
        ts.fail_at = fail;
        dx__ipcount t = {0};
        size_t ok = 0;
        for (uint64_t k = 0; k < 200; k++) {
            int rc = dx__ipcount_add(&t, &ts.seams, AF_INET, k, 0);
            if (rc == 0)
                ok++;
            else
                assert_int_equal(rc, DX_ENOMEM);
            assert_int_equal(t.n, ok);
        }
        for (uint64_t k = 0; k < 200; k++)
            if (dx__ipcount_get(&t, AF_INET, k))
                dx__ipcount_remove(&t, &ts.seams, AF_INET, k);
        assert_int_equal(t.n, 0);
        dx__ipcount_free(&t, &ts.seams);
        assert_int_equal(ts.live, 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ipv6_per_64),
        cmocka_unit_test(test_churn_matches_model),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
