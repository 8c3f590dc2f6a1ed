/*
 * tests/unit/test_auth.c: src/gateway/auth.c's expiry queue, against a
 * model: connections attached with random deadlines (past, now, future, no
 * exp), detached at random (as gw_conn_gone does), the 1 s tick run in
 * between. After every step the heap is a heap, each connection knows its
 * slot, the tick closed (4001) exactly the attached open connections whose
 * deadline passed, left every other one alone, and requeued a connection
 * whose handshake is still being answered. Plus: the deadline is exp +
 * leeway + grace; user ids and the user topic; the reasons' names.
 */
#define _POSIX_C_SOURCE 200809L
#include "testutil.h"

#include "core/seams.h"
#include "gateway/gw.h"

#define N 400

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static dx__jwt_claims *claims(const char *sub, bool has_exp, int64_t exp)
{
    size_t l = strlen(sub);
    dx__jwt_claims *c = dx__alloc(NULL, sizeof *c + l + 1);
    assert_non_null(c);
    memset(c, 0, sizeof *c);
    c->sub = (char *)(c + 1);
    memcpy(c->sub, sub, l + 1);
    c->sub_len = l;
    c->has_exp = has_exp;
    c->exp = exp;
    return c;
}

static void check_heap(const gw_worker *k)
{
    for (size_t i = 0; i < k->nexp; i++) {
        assert_int_equal(k->exph[i]->exp_ix, i + 1);
        if (i)
            assert_true(k->exph[(i - 1) / 2]->exp_ms <= k->exph[i]->exp_ms);
    }
}

static void test_expiry_queue(void **state)
{
    (void)state;
    dx_gateway gw;
    memset(&gw, 0, sizeof gw);
    gw_worker k;
    memset(&k, 0, sizeof k);
    k.gw = &gw;
    dx_gateway_options o = {0};
    o.auth.jwt_secret = "0123456789abcdef0123456789abcdef";
    o.auth.leeway_s = (unsigned)-1; /* 0 */
    k.pol = gw_policy_new(&o, NULL, 0);
    assert_non_null(k.pol);
    static gw_conn conns[N];
    static bool attached[N];
    memset(conns, 0, sizeof conns);
    for (int round = 0; round < 40; round++) {
        int64_t now_s = gw_auth_now_ms() / 1000;
        for (int step = 0; step < 200; step++) {
            size_t i = next() % N;
            gw_conn *g = &conns[i];
            if (attached[i]) {
                gw_auth_detach(g);
                dx__free(NULL, g->user);
                memset(g, 0, sizeof *g);
                attached[i] = false;
            } else {
                memset(g, 0, sizeof *g);
                g->k = &k;
                g->dialect = GW_RAW;
                g->open = next() % 8 != 0; /* some still in their handshake */
                int kind = (int)(next() % 4);
                /* 0: no exp; 1: long past; 2: one second either side of now; 3: far ahead */
                int64_t exp = kind == 1 ? now_s - 100 : kind == 2 ? now_s - 1 + (int64_t)(next() % 3) : now_s + 1000;
                assert_int_equal(gw_auth_attach(g, claims("u", kind != 0, exp)), 0);
                assert_string_equal(g->user, "u");
                assert_true(kind == 0 ? g->exp_ix == 0 : g->exp_ix != 0);
                attached[i] = true;
            }
            check_heap(&k);
        }
        int64_t before = gw_auth_now_ms();
        gw_auth_tick(&k);
        int64_t after = gw_auth_now_ms();
        check_heap(&k);
        for (size_t i = 0; i < N; i++) {
            gw_conn *g = &conns[i];
            if (!attached[i] || !g->claims->has_exp) {
                if (attached[i])
                    assert_false(g->closing);
                continue;
            }
            if (g->closing) {
                /* closed: it was open, due, and it left the queue */
                assert_true(g->open);
                assert_int_equal(g->exp_ix, 0);
                assert_true(g->exp_ms <= after);
            } else if (g->open) {
                assert_true(g->exp_ms > before); /* not due */
                assert_int_not_equal(g->exp_ix, 0);
            } else {
                /* in its handshake: still queued, at most a second out when it was due */
                assert_int_not_equal(g->exp_ix, 0);
                assert_true(g->exp_ms > before);
            }
        }
        /* closed ones are detached by their owner (gw_conn_gone) */
        for (size_t i = 0; i < N; i++)
            if (attached[i] && conns[i].closing) {
                gw_auth_detach(&conns[i]);
                dx__free(NULL, conns[i].user);
                memset(&conns[i], 0, sizeof conns[i]);
                attached[i] = false;
            }
        check_heap(&k);
    }
    for (size_t i = 0; i < N; i++)
        if (attached[i]) {
            gw_auth_detach(&conns[i]);
            dx__free(NULL, conns[i].user);
        }
    assert_int_equal(k.nexp, 0);
    assert_true(atomic_load(&k.m.auth_expired) > 0);
    gw_auth_worker_free(&k);
    gw_policy_unref(k.pol);
}

static void test_deadline_and_names(void **state)
{
    (void)state;
    dx_gateway gw;
    memset(&gw, 0, sizeof gw);
    gw_worker k;
    memset(&k, 0, sizeof k);
    k.gw = &gw;
    dx_gateway_options o = {0};
    o.auth.jwt_secret = "0123456789abcdef0123456789abcdef";
    o.auth.refresh_grace_ms = 2500;
    k.pol = gw_policy_new(&o, NULL, 0);
    assert_non_null(k.pol);
    assert_int_equal(k.pol->rules.leeway_s, 30); /* the default */
    gw_conn g;
    memset(&g, 0, sizeof g);
    g.k = &k;
    assert_int_equal(gw_auth_attach(&g, claims("alice@example.com", true, 1000)), 0);
    assert_int_equal(g.exp_ms, (1000 + 30) * 1000 + 2500);
    char buf[DX__GW_TOPIC_MAX + 1];
    assert_int_equal(gw_auth_user_topic(g.claims, buf), 22);
    assert_string_equal(buf, "user:alice@example.com");
    gw_auth_detach(&g);
    gw_auth_detach(&g); /* idempotent */
    dx__free(NULL, g.user);
    /* a far exp does not overflow */
    memset(&g, 0, sizeof g);
    g.k = &k;
    assert_int_equal(gw_auth_attach(&g, claims("b", true, INT64_MAX)), 0);
    assert_int_equal(g.exp_ms, INT64_MAX);
    gw_auth_detach(&g);
    dx__free(NULL, g.user);
    gw_auth_worker_free(&k);
    gw_policy_unref(k.pol);
    assert_string_equal(gw_auth_reason(GW_AUTH_R_ANONYMOUS), "anonymous");
    assert_string_equal(gw_auth_reason(GW_AUTH_R_MISSING), "missing");
    assert_string_equal(gw_auth_reason(DX__JWT_E_SIGNATURE), "signature");
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    fclose(f);
}

/* dx_gateway_reload re-reads the JWKS and the API key file; a file that
 * no longer loads keeps the old policy and says why. */
static void test_reload_rereads_files(void **state)
{
    (void)state;
    char jwks[] = "/tmp/dx_test_auth_jwks_XXXXXX", keys[] = "/tmp/dx_test_auth_keys_XXXXXX";
    int fd = mkstemp(jwks);
    assert_true(fd >= 0);
    close(fd);
    fd = mkstemp(keys);
    assert_true(fd >= 0);
    close(fd);
    const char *k1 = "{\"kty\":\"oct\",\"kid\":\"a\",\"k\":\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY\"}";
    const char *k2 = "{\"kty\":\"oct\",\"kid\":\"b\",\"k\":\"YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODk\"}";
    char text[512];
    snprintf(text, sizeof text, "{\"keys\":[%s]}", k1);
    write_file(jwks, text);
    write_file(keys, "ci key-one\n");
    dx_gateway_options o = {0};
    o.auth.jwks_file = jwks;
    o.api_keys_file = keys;
    int err = 0;
    dx_gateway *gw = dx_gateway_new(&o, 1, &err);
    assert_non_null(gw);
    assert_int_equal(dx__jwt_keys_count(gw->pol->keys), 1);
    assert_int_equal(gw->pol->n_api_keys, 1);
    snprintf(text, sizeof text, "{\"keys\":[%s,%s]}", k1, k2);
    write_file(jwks, text);
    write_file(keys, "ci key-one\nbackend key-two\n");
    char why[256] = "";
    assert_int_equal(dx_gateway_reload(gw, &o, why, sizeof why), 0);
    assert_int_equal(dx__jwt_keys_count(gw->pol->keys), 2);
    assert_int_equal(gw->pol->n_api_keys, 2);
    assert_true(gw->pol->jwt);
    assert_false(gw->pol->anonymous);
    /* a broken JWKS: refused, the old policy stays */
    write_file(jwks, "{\"keys\":[");
    assert_int_equal(dx_gateway_reload(gw, &o, why, sizeof why), DX_EINVAL);
    assert_non_null(strstr(why, jwks));
    assert_int_equal(dx__jwt_keys_count(gw->pol->keys), 2);
    /* auth turned off by a reload */
    o.auth.jwks_file = NULL;
    assert_int_equal(dx_gateway_reload(gw, &o, why, sizeof why), 0);
    assert_false(gw->pol->jwt);
    assert_null(gw->pol->keys);
    assert_true(gw->pol->anonymous);
    dx_gateway_free(gw);
    unlink(jwks);
    unlink(keys);
}

int main(void)
{
    dx_test_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_expiry_queue),
        cmocka_unit_test(test_deadline_and_names),
        cmocka_unit_test(test_reload_rereads_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
