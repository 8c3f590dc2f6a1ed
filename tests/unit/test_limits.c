/*
 * tests/unit/test_limits.c: src/gateway/limits.c with a fake clock: token
 * buckets (refill, burst, debt, a clock that steps back), the bounded
 * handshake table under a million distinct addresses, live connections per
 * user, address keys, Origin parsing and the allow-list (spoofing tricks),
 * and the namespace table's longest-prefix lookup against a brute-force
 * model.
 */
#include "testutil.h"

#include "gateway/gw.h"
#include "gateway/limits.h"

#include "core/seams.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define SEC 1000000000ull

static void test_bucket(void **state)
{
    (void)state;
    gw_bucket b;
    uint64_t now = 5 * SEC, wait = 0;
    gw_bucket_init(&b, 3, now);
    /* a full burst, then nothing until a token is back */
    for (int i = 0; i < 3; i++)
        assert_true(gw_bucket_take(&b, 10, 3, now, &wait));
    assert_false(gw_bucket_take(&b, 10, 3, now, &wait));
    assert_true(wait > 0 && wait <= SEC / 10);
    assert_false(gw_bucket_take(&b, 10, 3, now + SEC / 10 - 1000, NULL));
    assert_true(gw_bucket_take(&b, 10, 3, now + SEC / 10, NULL));
    /* refill caps at the burst */
    now += 100 * SEC;
    for (int i = 0; i < 3; i++)
        assert_true(gw_bucket_take(&b, 10, 3, now, NULL));
    assert_false(gw_bucket_take(&b, 10, 3, now, NULL));
    /* a clock that steps back refills nothing and does not wrap */
    assert_false(gw_bucket_take(&b, 10, 3, now - 50 * SEC, NULL));
    assert_false(gw_bucket_take(&b, 10, 3, now - 50 * SEC + SEC / 20, NULL));
    /* no limit */
    assert_true(gw_bucket_take(&b, 0, 0, now, NULL));
    assert_true(gw_bucket_take(&b, -1, 0, now, NULL));
    /* debt: forced takes wait longer, at most one burst deep */
    gw_bucket_init(&b, 2, now);
    assert_int_equal(gw_bucket_force(&b, 2, 2, now), 0);
    assert_int_equal(gw_bucket_force(&b, 2, 2, now), SEC / 2);
    uint64_t w = gw_bucket_force(&b, 2, 2, now);
    assert_true(w == SEC);
    for (int i = 0; i < 100; i++)
        w = gw_bucket_force(&b, 2, 2, now);
    assert_true(w == 3 * SEC / 2); /* -2 tokens: 1.5 s to get back to one */
    /* the average rate holds over a long run: 1000 takes at 100/s */
    gw_bucket_init(&b, 10, 0);
    uint64_t t = 0;
    int ok = 0;
    for (int i = 0; i < 100000; i++, t += SEC / 1000)
        ok += gw_bucket_take(&b, 100, 10, t, NULL);
    assert_true(ok >= 10000 && ok <= 10000 + 11);
}

static void test_addr_key(void **state)
{
    (void)state;
    int f;
    uint64_t k1, k2;
    assert_true(gw_addr_key("127.0.0.1:5678", &f, &k1));
    assert_int_equal(f, AF_INET);
    assert_true(gw_addr_key("127.0.0.2:1", &f, &k2));
    assert_true(k1 != k2);
    assert_true(gw_addr_key("[::ffff:127.0.0.1]:99", &f, &k2));
    assert_int_equal(f, AF_INET);
    assert_true(k1 == k2);
    assert_true(gw_addr_key("[2001:db8:0:1::5]:80", &f, &k1));
    assert_int_equal(f, AF_INET6);
    assert_true(gw_addr_key("[2001:db8:0:1:ffff::9]:81", &f, &k2));
    assert_true(k1 == k2); /* the same /64 */
    assert_true(gw_addr_key("[2001:db8:0:2::5]:80", &f, &k2));
    assert_true(k1 != k2);
    assert_false(gw_addr_key("unix", &f, &k1));
    assert_false(gw_addr_key("", &f, &k1));
    assert_false(gw_addr_key(NULL, &f, &k1));
    assert_false(gw_addr_key("[::1", &f, &k1));
    assert_false(gw_addr_key("1.2.3:4", &f, &k1));
}

static void test_hstable(void **state)
{
    (void)state;
    gw_hstable t;
    assert_int_equal(gw_hstable_init(&t, 1024, 42), 0);
    size_t cap = t.nsets * GW_HS_WAYS;
    assert_int_equal(cap, 1024);
    const gw_hs_slot *slots = t.slots;
    unsigned retry = 0;
    /* one address: its burst, then 429 with a Retry-After of at least 1 s */
    uint64_t now = 10 * SEC;
    for (int i = 0; i < 5; i++)
        assert_true(gw_hstable_take(&t, AF_INET, 7, 2, 5, now, &retry));
    assert_false(gw_hstable_take(&t, AF_INET, 7, 2, 5, now, &retry));
    assert_int_equal(retry, 1);
    assert_false(gw_hstable_take(&t, AF_INET, 7, 0.01, 5, now, &retry));
    assert_int_equal(retry, 100); /* one token at 0.01/s: 100 s */
    /* the same key in the other family is another address */
    assert_true(gw_hstable_take(&t, AF_INET6, 7, 2, 5, now, &retry));
    /* a million distinct addresses in one second: the table never grows,
     * and each new address is allowed (its own bucket is full) */
    for (uint64_t a = 0; a < 1000000; a++)
        assert_true(gw_hstable_take(&t, AF_INET, 1000 + a, 2, 5, now + a, NULL));
    assert_ptr_equal(t.slots, slots);
    assert_true(t.used <= cap);
    assert_true(t.evictions > 1000000 - cap - 10);
    /* an address seen among the last few of its set keeps its state: the
     * flood above evicted the least recently used first */
    now += 2 * SEC;
    for (int i = 0; i < 5; i++)
        assert_true(gw_hstable_take(&t, AF_INET, 99, 2, 5, now, NULL));
    assert_false(gw_hstable_take(&t, AF_INET, 99, 2, 5, now, NULL));
    for (uint64_t a = 0; a < 3; a++) /* fewer than the ways of any one set */
        (void)gw_hstable_take(&t, AF_INET, 5000000 + a, 2, 5, now, NULL);
    assert_false(gw_hstable_take(&t, AF_INET, 99, 2, 5, now, NULL));
    /* a full bucket is forgotten before a live one */
    gw_hstable_deinit(&t);
    assert_int_equal(gw_hstable_init(&t, 8, 1), 0); /* one set of 8 */
    for (uint64_t a = 0; a < 8; a++)
        assert_true(gw_hstable_take(&t, AF_INET, a, 1, 2, now, NULL));
    /* address 0 spends its bucket; the others refill by now + 10 s */
    assert_true(gw_hstable_take(&t, AF_INET, 0, 1, 2, now, NULL));
    for (uint64_t a = 100; a < 107; a++)
        assert_true(gw_hstable_take(&t, AF_INET, a, 1, 2, now + 10 * SEC, NULL));
    assert_int_equal(t.evictions, 0);
    gw_hstable_deinit(&t);
}

static void test_users(void **state)
{
    (void)state;
    gw_users u = {0};
    char name[32];
    for (int i = 0; i < 5000; i++) {
        int n = snprintf(name, sizeof name, "user-%d", i);
        assert_int_equal(gw_users_add(&u, name, (size_t)n, 2), 0);
        assert_int_equal(gw_users_add(&u, name, (size_t)n, 2), 0);
        assert_int_equal(gw_users_add(&u, name, (size_t)n, 2), DX_ELIMIT);
        assert_int_equal(gw_users_add(&u, name, (size_t)n, 0), 0); /* no limit */
    }
    assert_int_equal(u.n, 5000);
    assert_int_equal(gw_users_get(&u, "user-17", 7), 3);
    assert_int_equal(gw_users_get(&u, "user-1", 6), 3);
    assert_int_equal(gw_users_get(&u, "nobody", 6), 0);
    /* names differing by a NUL or a length are different users */
    assert_int_equal(gw_users_get(&u, "user-1\0", 7), 0);
    for (int i = 0; i < 5000; i++) {
        int n = snprintf(name, sizeof name, "user-%d", i);
        for (int j = 0; j < 3; j++)
            gw_users_remove(&u, name, (size_t)n);
        assert_int_equal(gw_users_get(&u, name, (size_t)n), 0);
    }
    assert_int_equal(u.n, 0);
    gw_users_remove(&u, "ghost", 5); /* absent: nothing */
    assert_int_equal(gw_users_add(&u, "a", 1, 1), 0);
    assert_int_equal(gw_users_add(&u, "a", 1, 1), DX_ELIMIT);
    gw_users_deinit(&u);
}

static gw_limits_cfg *cfg_with(const char *const *origins, size_t n, int allow_no_origin)
{
    dx_gateway_options o;
    memset(&o, 0, sizeof o);
    o.origins = origins;
    o.n_origins = n;
    o.allow_no_origin = allow_no_origin;
    char why[256] = "";
    int err = 0;
    gw_limits_cfg *c = gw_limits_cfg_new(&o, why, sizeof why, &err);
    if (!c)
        fprintf(stderr, "cfg: %s\n", why);
    return c;
}

static bool ok(const gw_limits_cfg *c, const char *origin)
{
    return gw_limits_origin_ok(c, origin, origin ? strlen(origin) : 0, "gw.internal:8080", 16);
}

static void test_origins(void **state)
{
    (void)state;
    static const char *const list[] = {"https://example.com", "https://*.example.org", "http://localhost:3000",
                                       "https://[2001:db8::1]:8443"};
    gw_limits_cfg *c = cfg_with(list, 4, -1);
    assert_non_null(c);
    assert_true(ok(c, "https://example.com"));
    assert_true(ok(c, "https://EXAMPLE.com"));
    assert_true(ok(c, "HTTPS://example.com"));
    assert_true(ok(c, "https://example.com:443"));
    assert_true(ok(c, "https://example.com/"));
    assert_false(ok(c, "http://example.com"));          /* scheme */
    assert_false(ok(c, "https://example.com:8443"));    /* port */
    assert_false(ok(c, "https://example.com.evil.org")); /* suffix trick */
    assert_false(ok(c, "https://evilexample.com"));
    assert_false(ok(c, "https://example.com@evil.org")); /* userinfo */
    assert_false(ok(c, "https://evil.org@example.com"));
    assert_false(ok(c, "https://example.com/path"));
    assert_false(ok(c, "https://example.com?x"));
    assert_false(ok(c, "https://example.com:"));
    assert_false(ok(c, "https://example.com:0443x"));
    assert_false(ok(c, "https://example.com."));
    assert_false(ok(c, "null"));
    assert_false(ok(c, ""));
    assert_false(ok(c, "https://"));
    assert_false(ok(c, "https://exa%6dple.com"));
    /* wildcard: one or more labels, never the bare domain */
    assert_true(ok(c, "https://a.example.org"));
    assert_true(ok(c, "https://a.b.example.org"));
    assert_true(ok(c, "https://A.Example.ORG:443"));
    assert_false(ok(c, "https://example.org"));
    assert_false(ok(c, "https://.example.org"));
    assert_false(ok(c, "https://aexample.org"));
    assert_false(ok(c, "https://a.example.org.evil.com"));
    assert_false(ok(c, "http://a.example.org"));
    assert_false(ok(c, "https://a.example.org:444"));
    assert_true(ok(c, "http://localhost:3000"));
    assert_false(ok(c, "http://localhost"));
    assert_true(ok(c, "https://[2001:DB8::1]:8443"));
    assert_false(ok(c, "https://[2001:db8::2]:8443"));
    /* the allow-list replaces the same-host rule */
    assert_false(ok(c, "http://gw.internal:8080"));
    /* no Origin: as configured */
    assert_false(ok(c, NULL));
    gw_limits_cfg_free(c);
    c = cfg_with(NULL, 0, 0);
    assert_true(ok(c, "http://gw.internal:8080"));
    assert_false(ok(c, "http://gw.internal:8081"));
    assert_true(ok(c, NULL));
    gw_limits_cfg_free(c);
    c = cfg_with(NULL, 0, -1);
    assert_false(ok(c, NULL));
    gw_limits_cfg_free(c);
    /* bad entries are refused with a reason */
    static const char *const bad[][1] = {{"example.com"}, {"https://*.com"}, {"https://ex ample.com"},
                                         {"ftp://example.com"}, {"https://a.com/path"}, {"null"}, {"https://*"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        dx_gateway_options o;
        memset(&o, 0, sizeof o);
        o.origins = bad[i];
        o.n_origins = 1;
        char why[256] = "";
        int err = 0;
        assert_null(gw_limits_cfg_new(&o, why, sizeof why, &err));
        assert_int_equal(err, DX_EINVAL);
        assert_true(strlen(why) > 0);
    }
}

static void test_defaults(void **state)
{
    (void)state;
    dx_gateway_options o;
    memset(&o, 0, sizeof o);
    int err;
    gw_limits_cfg *c = gw_limits_cfg_new(&o, NULL, 0, &err);
    assert_non_null(c);
    assert_int_equal(c->conns_per_ip, 1000);
    assert_true(c->conns_per_user == SIZE_MAX);
    assert_true(c->handshakes_per_ip == 200 && c->handshake_burst == 1000);
    assert_true(c->msg_rate == 1000 && c->msg_burst == 1000);
    assert_int_equal(c->rate_policy, DX_GW_RATE_PAUSE);
    assert_int_equal(c->max_topic, 200);
    assert_int_equal(c->max_api_body, 0); /* the gateway's max_message */
    assert_int_equal(c->drain_ms, 10000);
    assert_int_equal(c->reconnect_hint_ms, 2000);
    assert_true(c->allow_no_origin);
    gw_limits_cfg_free(c);
    o.limits.msg_rate = 0.5; /* a burst under one token is one token */
    c = gw_limits_cfg_new(&o, NULL, 0, &err);
    assert_true(c->msg_rate == 0.5 && c->msg_burst == 1);
    gw_limits_cfg_free(c);
    o.limits.msg_rate = 0;
    o.limits.handshakes_per_ip = 50; /* a rate given alone is its own burst */
    c = gw_limits_cfg_new(&o, NULL, 0, &err);
    assert_true(c->handshakes_per_ip == 50 && c->handshake_burst == 50);
    gw_limits_cfg_free(c);
    o.limits.conns_per_ip = (size_t)-1;
    o.limits.msg_rate = -1;
    o.limits.max_topic = 201;
    assert_null(gw_limits_cfg_new(&o, NULL, 0, &err));
    o.limits.max_topic = 20;
    c = gw_limits_cfg_new(&o, NULL, 0, &err);
    assert_true(c->conns_per_ip == SIZE_MAX && c->msg_rate == 0 && c->max_topic == 20);
    gw_limits_cfg_free(c);
}

/* The longest prefix by brute force. */
static const char *model_ns(const char *const *prefixes, size_t n, const char *topic)
{
    const char *best = NULL;
    for (size_t i = 0; i < n; i++)
        if (!strncmp(prefixes[i], topic, strlen(prefixes[i])) && (!best || strlen(prefixes[i]) > strlen(best)))
            best = prefixes[i];
    return best;
}

static void test_namespaces(void **state)
{
    (void)state;
    static const char *const p[] = {"chat.", "chat.vip.", "c", "ticker", "chat.vip.gold.", "a.b", "a.", "z"};
    size_t np = sizeof p / sizeof p[0];
    dx_gateway_namespace ns[8];
    memset(ns, 0, sizeof ns);
    for (size_t i = 0; i < np; i++)
        ns[i].prefix = p[i];
    ns[1].publish = -1;
    ns[1].max_message = 100;
    ns[1].slow_policy = DX_GW_SLOW_DROP_OLDEST + 1;
    ns[1].history_count = (size_t)-1;
    ns[3].msg_rate = 5;
    dx_gateway_options o;
    memset(&o, 0, sizeof o);
    o.max_message = (size_t)1 << 20;
    o.namespaces = ns;
    o.n_namespaces = np;
    o.history_count = 50;
    int err;
    gw_limits_cfg *c = gw_limits_cfg_new(&o, NULL, 0, &err);
    assert_non_null(c);
    const gw_nspace *x = gw_limits_ns(c, "chat.vip.room", 13);
    assert_non_null(x);
    assert_string_equal(x->prefix, "chat.vip.");
    assert_false(x->publish);
    assert_true(x->presence);
    assert_int_equal(x->max_message, 100);
    assert_int_equal(x->slow_policy, DX_GW_SLOW_DROP_OLDEST);
    assert_true(x->history_set && x->history_count == 0);
    assert_int_equal(x->index, 1);
    x = gw_limits_ns(c, "chat.x", 6);
    assert_string_equal(x->prefix, "chat.");
    assert_true(x->publish);
    assert_false(x->history_set); /* the gateway's, resolved by the bus */
    assert_false(x->age_set);
    assert_int_equal(x->slow_policy, -1);
    assert_int_equal(x->max_message, 0);
    x = gw_limits_ns(c, "ticker.eur", 10);
    assert_true(x->msg_rate == 5 && x->msg_burst == 5);
    assert_string_equal(gw_limits_ns(c, "chat", 4)->prefix, "c");
    assert_null(gw_limits_ns(c, "b.c", 3));
    assert_null(gw_limits_ns(c, "a", 1));
    /* random topics over an alphabet that makes prefixes collide */
    srand(7);
    char topic[16];
    for (int i = 0; i < 200000; i++) {
        static const char alpha[] = "abcehitvz.";
        size_t len = 1 + (size_t)rand() % 15;
        for (size_t j = 0; j < len; j++)
            topic[j] = alpha[rand() % 10];
        if (i % 3 == 0) { /* start from a prefix */
            const char *s = p[rand() % (int)np];
            size_t sl = strlen(s) < len ? strlen(s) : len;
            memcpy(topic, s, sl);
        }
        topic[len] = 0;
        const char *want = model_ns(p, np, topic);
        const gw_nspace *got = gw_limits_ns(c, topic, len);
        if (!want)
            assert_null(got);
        else
            assert_string_equal(got->prefix, want);
    }
    gw_limits_cfg_free(c);
    /* "" matches every topic; a prefix given twice is refused */
    dx_gateway_namespace all[2] = {{.prefix = ""}, {.prefix = "x."}};
    o.namespaces = all;
    o.n_namespaces = 2;
    c = gw_limits_cfg_new(&o, NULL, 0, &err);
    assert_string_equal(gw_limits_ns(c, "q", 1)->prefix, "");
    assert_string_equal(gw_limits_ns(c, "x.y", 3)->prefix, "x.");
    gw_limits_cfg_free(c);
    all[1].prefix = "";
    assert_null(gw_limits_cfg_new(&o, NULL, 0, &err));
    assert_int_equal(err, DX_EINVAL);
    all[1].prefix = "y";
    all[1].max_message = (size_t)2 << 20; /* above the gateway's */
    assert_null(gw_limits_cfg_new(&o, NULL, 0, &err));
}

/* The policy snapshot holds this configuration; a reload with a bad
 * origin is refused with its reason and the old policy stays. */
static void test_policy_snapshot(void **state)
{
    (void)state;
    static const char *const good[] = {"https://*.example.org"};
    static const char *const bad[] = {"https://example.com/path"};
    dx_gateway_options o;
    memset(&o, 0, sizeof o);
    o.origins = good;
    o.n_origins = 1;
    o.limits.conns_per_ip = 7;
    char why[200] = "";
    gw_policy *p = gw_policy_new(&o, why, sizeof why);
    assert_non_null(p);
    assert_int_equal(p->lim->norigins, 1);
    assert_true(p->lim->origins[0].wildcard);
    assert_int_equal(p->lim->conns_per_ip, 7);
    gw_policy_unref(p);
    o.origins = bad;
    assert_null(gw_policy_new(&o, why, sizeof why));
    assert_non_null(strstr(why, "example.com/path"));
    int err = 0;
    dx_gateway *gw = dx_gateway_new(&o, 1, &err);
    assert_null(gw); /* the same refusal at creation */
    assert_int_equal(err, DX_EINVAL);
    o.origins = good;
    gw = dx_gateway_new(&o, 1, &err);
    assert_non_null(gw);
    o.origins = bad;
    why[0] = 0;
    assert_int_equal(dx_gateway_reload(gw, &o, why, sizeof why), DX_EINVAL);
    assert_non_null(strstr(why, "bad origin"));
    assert_true(gw->pol->lim->origins[0].wildcard); /* the old one stays */
    o.origins = NULL;
    o.n_origins = 0;
    o.limits.max_topic = 10;
    assert_int_equal(dx_gateway_reload(gw, &o, why, sizeof why), 0);
    assert_int_equal(gw->pol->lim->norigins, 0);
    assert_int_equal(gw->pol->lim->max_topic, 10);
    dx_gateway_free(gw);
}

/* A connection of worker k for user u (NULL: anonymous), from remote. */
static gw_conn *conn_of(gw_worker *k, const char *u, const char *remote, int *rc_ip, int *rc_user)
{
    gw_conn *g = gw_conn_new(k, GW_RAW);
    assert_non_null(g);
    if (u) {
        g->ulen = strlen(u);
        g->user = dx__alloc(NULL, g->ulen + 1);
        assert_non_null(g->user);
        memcpy(g->user, u, g->ulen + 1);
    }
    *rc_ip = gw_admit_count_ip(g, remote, true);
    *rc_user = gw_admit_count_user(g, true);
    return g;
}

/* The gateway's shared counts: per user and per address across two
 * workers, released when connections end (the per-user limit needs
 * authentication end to end; here its accounting). */
static void test_gateway_counts(void **state)
{
    (void)state;
    dx_gateway_options o;
    memset(&o, 0, sizeof o);
    o.limits.conns_per_user = 3;
    o.limits.conns_per_ip = 4;
    int err = 0;
    dx_gateway *gw = dx_gateway_new(&o, 2, &err);
    assert_non_null(gw);
    gw_worker *k0 = &gw->w[0], *k1 = &gw->w[1];
    gw_policy_take(k0); /* as dx_gateway_attach does */
    gw_policy_take(k1);
    gw_conn *c[8];
    int ri, ru;
    /* alice: 3 connections over both workers and two addresses, the 4th refused */
    c[0] = conn_of(k0, "alice", "10.0.0.1:1", &ri, &ru);
    assert_true(ri == 0 && ru == 0);
    c[1] = conn_of(k1, "alice", "10.0.0.1:2", &ri, &ru);
    assert_true(ri == 0 && ru == 0);
    c[2] = conn_of(k1, "alice", "10.0.0.2:2", &ri, &ru);
    assert_true(ri == 0 && ru == 0);
    assert_false(gw_admit_user_room(k0, "10.0.0.3:1", "alice", 5));
    assert_true(gw_admit_user_room(k0, "10.0.0.3:1", "bob", 3));
    c[3] = conn_of(k0, "alice", "10.0.0.3:1", &ri, &ru);
    assert_int_equal(ru, DX_ELIMIT);
    gw_conn_gone(c[3]);
    /* 10.0.0.1: two more (anonymous and bob), then refused on either worker */
    c[4] = conn_of(k0, NULL, "10.0.0.1:3", &ri, &ru);
    assert_true(ri == 0 && ru == 0);
    c[5] = conn_of(k1, "bob", "10.0.0.1:4", &ri, &ru);
    assert_true(ri == 0 && ru == 0);
    c[6] = conn_of(k0, "carol", "10.0.0.1:5", &ri, &ru);
    assert_int_equal(ri, DX_ELIMIT);
    gw_conn_gone(c[6]);
    c[6] = conn_of(k0, NULL, "[::ffff:10.0.0.1]:6", &ri, &ru); /* the same address */
    assert_int_equal(ri, DX_ELIMIT);
    gw_conn_gone(c[6]);
    c[6] = conn_of(k0, NULL, "unix", &ri, &ru); /* not counted */
    assert_int_equal(ri, 0);
    gw_conn_gone(c[6]);
    /* one of alice's ends (on the other worker): room for her and 10.0.0.1 */
    gw_conn_gone(c[1]);
    assert_true(gw_admit_user_room(k0, "x", "alice", 5));
    c[1] = conn_of(k0, "alice", "10.0.0.1:7", &ri, &ru);
    assert_true(ri == 0 && ru == 0);
    pthread_mutex_lock(&gw->counts.mu);
    assert_int_equal(gw_users_get(&gw->counts.users, "alice", 5), 3);
    pthread_mutex_unlock(&gw->counts.mu);
    /* a reload lowers the limit: live connections stay, new ones are refused */
    o.limits.conns_per_user = 1;
    char why[100];
    assert_int_equal(dx_gateway_reload(gw, &o, why, sizeof why), 0);
    gw_policy_take(k0);
    gw_policy_take(k1);
    assert_false(gw_admit_user_room(k1, "x", "bob", 3));
    gw_conn_gone(c[0]);
    gw_conn_gone(c[1]);
    gw_conn_gone(c[2]);
    gw_conn_gone(c[4]);
    gw_conn_gone(c[5]);
    pthread_mutex_lock(&gw->counts.mu);
    assert_int_equal(gw->counts.users.n, 0);
    assert_int_equal(gw->counts.ip.n, 0);
    pthread_mutex_unlock(&gw->counts.mu);
    dx_gateway_free(gw);
}

int main(void)
{
    dx_test_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket),     cmocka_unit_test(test_addr_key), cmocka_unit_test(test_hstable),
        cmocka_unit_test(test_users),      cmocka_unit_test(test_origins),  cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_namespaces), cmocka_unit_test(test_policy_snapshot),
        cmocka_unit_test(test_gateway_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
