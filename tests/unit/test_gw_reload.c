/*
 * tests/unit/test_gw_reload.c: dx_gateway_reload (src/gateway/settings.c):
 * the policy snapshot swapped from a thread that is no worker's, taken by
 * every worker on its own thread; a refused policy leaves the current one;
 * many reloads in a row (each old snapshot freed once no worker holds it:
 * ASan sees a leak or a use after free otherwise) and the reload counters
 * behind duplex_config_reloads_total.
 *
 * Two workers, each a loop on its own thread with a server attached (not
 * listening: nothing here needs a connection).
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "duplex/gateway.h"
#include "gateway/gw.h"
#include "gateway/policy.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WAIT_MS 15000
#define NW 2

typedef struct fx {
    dx_gateway *gw;
    dx_loop *loop[NW];
    dx_server *srv[NW];
    pthread_t th[NW];
} fx;

static void *run_loop(void *p)
{
    (void)dx_loop_run(p);
    return NULL;
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    dx_gateway_options go = {.api_key = "key-one"};
    int err = 0;
    f->gw = dx_gateway_new(&go, NW, &err);
    assert_non_null(f->gw);
    for (unsigned i = 0; i < NW; i++) {
        dx_loop_options lo = {.log = &dx_test_quiet_log};
        f->loop[i] = dx_loop_new(&lo, NULL);
        assert_non_null(f->loop[i]);
        dx_server_options so = {.host = "127.0.0.1", .port = DX_PORT_EPHEMERAL};
        assert_int_equal(dx_gateway_server_options(f->gw, i, &so), 0);
        f->srv[i] = dx_server_new(f->loop[i], &so, &err);
        assert_non_null(f->srv[i]);
        assert_int_equal(dx_gateway_attach(f->gw, i, f->loop[i], f->srv[i]), 0);
    }
    for (unsigned i = 0; i < NW; i++)
        assert_int_equal(pthread_create(&f->th[i], NULL, run_loop, f->loop[i]), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    for (unsigned i = 0; i < NW; i++) {
        dx_loop_stop(f->loop[i]);
        pthread_join(f->th[i], NULL);
    }
    dx_gateway_free(f->gw);
    for (unsigned i = 0; i < NW; i++) {
        dx_server_free(f->srv[i]);
        dx_loop_free(f->loop[i]);
    }
    free(f);
    return 0;
}

typedef struct probe {
    gw_worker *k;
    _Atomic int done;
    _Atomic(gw_policy *) pol;
} probe;

static void read_pol(void *arg)
{
    probe *p = arg;
    atomic_store(&p->pol, p->k->pol);
    atomic_store(&p->done, 1);
}

/* The policy worker i holds, read on its own thread. */
static gw_policy *worker_pol(fx *f, unsigned i)
{
    probe p = {.k = &f->gw->w[i]};
    assert_int_equal(dx_loop_post(f->loop[i], read_pol, &p), 0);
    uint64_t t0 = dx_test_mono_ms();
    while (!atomic_load(&p.done)) {
        assert_true(dx_test_mono_ms() - t0 < WAIT_MS);
        usleep(1000);
    }
    return atomic_load(&p.pol);
}

static gw_policy *current(fx *f)
{
    pthread_mutex_lock(&f->gw->pol_mu);
    gw_policy *p = f->gw->pol;
    pthread_mutex_unlock(&f->gw->pol_mu);
    return p;
}

static bool has_key(const gw_policy *p, const char *key)
{
    return gw_policy_api_key(p, key, strlen(key)) != NULL;
}

static void test_reload_swaps_on_every_worker(void **state)
{
    fx *f = *state;
    gw_policy *p0 = current(f);
    assert_true(has_key(p0, "key-one"));
    for (unsigned i = 0; i < NW; i++)
        assert_ptr_equal(worker_pol(f, i), p0);

    dx_gateway_api_key keys[1] = {{"ci", "key-ci"}};
    const char *origins[1] = {"https://app.example"};
    dx_gateway_namespace ns[1] = {{.prefix = "chat.", .history_count = 5}};
    dx_gateway_options go = {.api_key = "key-two", .api_keys = keys, .n_api_keys = 1, .origins = origins,
                             .n_origins = 1, .namespaces = ns, .n_namespaces = 1, .drain_ms = 1234};
    char why[256] = "";
    assert_int_equal(dx_gateway_reload(f->gw, &go, why, sizeof why), 0);
    /* the caller's strings may go at once: the snapshot holds copies */
    keys[0].key = "changed";
    ns[0].prefix = "other.";
    gw_policy *p1 = current(f);
    assert_ptr_not_equal(p1, p0);
    assert_true(has_key(p1, "key-two"));
    assert_true(has_key(p1, "key-ci"));
    assert_false(has_key(p1, "key-one"));
    assert_false(has_key(p1, "changed"));
    assert_string_equal(gw_policy_api_key(p1, "key-ci", 6)->name, "ci");
    assert_int_equal(p1->lim->nns, 1);
    assert_string_equal(p1->lim->ns[0].prefix, "chat.");
    assert_int_equal(p1->lim->norigins, 1);
    assert_string_equal(p1->lim->origins[0].host, "app.example");
    assert_int_equal(p1->lim->drain_ms, 1234);
    /* each worker took it on its own thread (the reload posted to it; a
     * post runs before the probe posted after it) */
    for (unsigned i = 0; i < NW; i++)
        assert_ptr_equal(worker_pol(f, i), p1);
    assert_int_equal(atomic_load(&f->gw->reloads[0]), 1);
    assert_int_equal(atomic_load(&f->gw->reloads[1]), 0);
}

static void test_refused_reload_keeps_the_policy(void **state)
{
    fx *f = *state;
    gw_policy *p0 = current(f);
    char why[256] = "";
    dx_gateway_options two = {.auth = {.jwt_secret = "s", .jwks_file = "/nonexistent.jwks"}};
    assert_int_equal(dx_gateway_reload(f->gw, &two, why, sizeof why), DX_EINVAL);
    assert_non_null(strstr(why, "one of"));
    dx_gateway_api_key bad[1] = {{"", "k"}};
    dx_gateway_options nameless = {.api_keys = bad, .n_api_keys = 1};
    assert_int_equal(dx_gateway_reload(f->gw, &nameless, why, sizeof why), DX_EINVAL);
    assert_non_null(strstr(why, "api_keys[0]"));
    dx_gateway_namespace nopfx[1] = {{.history_count = 3}};
    dx_gateway_options ns = {.namespaces = nopfx, .n_namespaces = 1};
    assert_int_equal(dx_gateway_reload(f->gw, &ns, NULL, 0), DX_EINVAL); /* no room for a reason: fine */
    assert_ptr_equal(current(f), p0);
    assert_true(has_key(p0, "key-one"));
    for (unsigned i = 0; i < NW; i++)
        assert_ptr_equal(worker_pol(f, i), p0);
    assert_int_equal(atomic_load(&f->gw->reloads[0]), 0);
    assert_int_equal(atomic_load(&f->gw->reloads[1]), 3);
}

/* Reloads from two threads at once, hundreds of times, while the workers
 * take them: at the end every worker holds the last one and every older
 * snapshot has been freed (ASan). */
static void *reloader(void *arg)
{
    fx *f = arg;
    char key[32];
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof key, "k-%d", i);
        dx_gateway_options go = {.api_key = key};
        if (dx_gateway_reload(f->gw, &go, NULL, 0) != 0)
            return (void *)1;
    }
    return NULL;
}

static void test_reload_storm(void **state)
{
    fx *f = *state;
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, reloader, f), 0);
    for (int i = 0; i < 2; i++) {
        void *rv;
        pthread_join(t[i], &rv);
        assert_null(rv);
    }
    char why[64];
    dx_gateway_options last = {.api_key = "the-last"};
    assert_int_equal(dx_gateway_reload(f->gw, &last, why, sizeof why), 0);
    gw_policy *p = current(f);
    assert_true(has_key(p, "the-last"));
    for (unsigned i = 0; i < NW; i++)
        assert_ptr_equal(worker_pol(f, i), p);
    assert_int_equal(atomic_load(&f->gw->reloads[0]), 601);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reload_swaps_on_every_worker, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_reload_keeps_the_policy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_storm, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
