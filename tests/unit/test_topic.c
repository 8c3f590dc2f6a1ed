/*
 * tests/unit/test_topic.c: src/gateway/topic.c, topic and pattern rules and
 * the per-worker subscription index. Validation is checked at every
 * boundary (length 200/201, each byte value, `*`/`>` placement, `user:`
 * rules); the index is checked against a naive reference matcher under
 * thousands of seeded random operations (subscribe, unsubscribe, remove a
 * subscriber, match), for at-most-once delivery with overlapping patterns
 * and exact-wins, for refusing mutation from a match callback, with every
 * allocation failed once (state unchanged, nothing leaked), for releasing
 * all memory under churn, and for visiting far fewer than all
 * subscriptions when publishing among 100,000 exact subscriptions and
 * 10,000 patterns (counted through the visited hook).
 */
#include "testutil.h"

#include "gateway/topic.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static dx__gw_topic_kind kind_of(const char *s)
{
    return dx__gw_topic_classify(s, strlen(s));
}

static void test_validation_table(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        dx__gw_topic_kind kind;
    } t[] = {
        {"a", DX__GW_TOPIC_EXACT},
        {"chat.room1", DX__GW_TOPIC_EXACT},
        {"prices.eur.usd", DX__GW_TOPIC_EXACT},
        {"A-z_0:9@x/y", DX__GW_TOPIC_EXACT},
        {"", DX__GW_TOPIC_INVALID},
        {".", DX__GW_TOPIC_INVALID},
        {".a", DX__GW_TOPIC_INVALID},
        {"a.", DX__GW_TOPIC_INVALID},
        {"a..b", DX__GW_TOPIC_INVALID},
        {"*", DX__GW_TOPIC_PATTERN},
        {">", DX__GW_TOPIC_PATTERN},
        {"a.*", DX__GW_TOPIC_PATTERN},
        {"*.a", DX__GW_TOPIC_PATTERN},
        {"a.*.b", DX__GW_TOPIC_PATTERN},
        {"prices.>", DX__GW_TOPIC_PATTERN},
        {"*.*.>", DX__GW_TOPIC_PATTERN},
        {">.a", DX__GW_TOPIC_INVALID},
        {"a.>.b", DX__GW_TOPIC_INVALID},
        {">.>", DX__GW_TOPIC_INVALID},
        {"a*", DX__GW_TOPIC_INVALID},
        {"*a", DX__GW_TOPIC_INVALID},
        {"**", DX__GW_TOPIC_INVALID},
        {">>", DX__GW_TOPIC_INVALID},
        {"a.*>", DX__GW_TOPIC_INVALID},
        {"a>", DX__GW_TOPIC_INVALID},
        {"a.*.", DX__GW_TOPIC_INVALID},
        {".*", DX__GW_TOPIC_INVALID},
        {"user:bob", DX__GW_TOPIC_USER},
        {"user:a.b", DX__GW_TOPIC_USER},
        {"user:a@b/c", DX__GW_TOPIC_USER},
        {"user:", DX__GW_TOPIC_INVALID},
        {"user:.x", DX__GW_TOPIC_INVALID},
        {"user:a.", DX__GW_TOPIC_INVALID},
        {"user:*", DX__GW_TOPIC_INVALID},
        {"user:a.*", DX__GW_TOPIC_INVALID},
        {"user:a.>", DX__GW_TOPIC_INVALID},
        {"user:>", DX__GW_TOPIC_INVALID},
        {"User:bob", DX__GW_TOPIC_EXACT},
        {"xuser:bob", DX__GW_TOPIC_EXACT},
        {"user", DX__GW_TOPIC_EXACT},
        {"user.bob", DX__GW_TOPIC_EXACT},
        {"a.user:bob", DX__GW_TOPIC_EXACT},
        {"*.user:bob", DX__GW_TOPIC_PATTERN},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        if (kind_of(t[i].name) != t[i].kind)
            fail_msg("\"%s\": kind %d, want %d", t[i].name, (int)kind_of(t[i].name), (int)t[i].kind);
        bool pub = t[i].kind == DX__GW_TOPIC_EXACT || t[i].kind == DX__GW_TOPIC_USER;
        assert_int_equal(dx__gw_topic_check(t[i].name, strlen(t[i].name)), pub ? 0 : DX_EINVAL);
        assert_int_equal(dx__gw_topic_check_sub(t[i].name, strlen(t[i].name)),
                         t[i].kind == DX__GW_TOPIC_INVALID ? DX_EINVAL : 0);
    }
    assert_int_equal(dx__gw_topic_classify(NULL, 0), DX__GW_TOPIC_INVALID);
    /* the length is what counts, not a NUL */
    assert_int_equal(dx__gw_topic_classify("ab\0c", 4), DX__GW_TOPIC_INVALID);
    assert_int_equal(dx__gw_topic_classify("ab.c", 2), DX__GW_TOPIC_EXACT);
}

static void test_validation_lengths(void **state)
{
    (void)state;
    char buf[DX__GW_TOPIC_MAX + 2];
    memset(buf, 'a', sizeof buf);
    assert_int_equal(dx__gw_topic_classify(buf, 200), DX__GW_TOPIC_EXACT);
    assert_int_equal(dx__gw_topic_classify(buf, 201), DX__GW_TOPIC_INVALID);
    assert_int_equal(dx__gw_topic_classify(buf, 1), DX__GW_TOPIC_EXACT);
    /* 100 one-byte segments: 199 bytes; a pattern of the same shape */
    for (size_t i = 1; i < 199; i += 2)
        buf[i] = '.';
    assert_int_equal(dx__gw_topic_classify(buf, 199), DX__GW_TOPIC_EXACT);
    buf[198] = '>';
    assert_int_equal(dx__gw_topic_classify(buf, 199), DX__GW_TOPIC_PATTERN);
    buf[0] = '*';
    assert_int_equal(dx__gw_topic_classify(buf, 199), DX__GW_TOPIC_PATTERN);
    buf[199] = '.';
    buf[200] = 'a';
    assert_int_equal(dx__gw_topic_classify(buf, 201), DX__GW_TOPIC_INVALID); /* `>` not last, and too long */
    memcpy(buf, "user:", 5);
    memset(buf + 5, 'b', 195);
    assert_int_equal(dx__gw_topic_classify(buf, 200), DX__GW_TOPIC_USER);
    assert_int_equal(dx__gw_topic_classify(buf, 201), DX__GW_TOPIC_INVALID);
    const char *id = NULL;
    size_t idlen = 0;
    assert_true(dx__gw_topic_user_id(buf, 200, &id, &idlen));
    assert_ptr_equal(id, buf + 5);
    assert_int_equal(idlen, 195);
    assert_true(dx__gw_topic_user_id("user:a.b", 8, &id, &idlen));
    assert_int_equal(idlen, 3);
    assert_memory_equal(id, "a.b", 3);
    assert_true(dx__gw_topic_user_id("user:z", 6, NULL, NULL));
    id = "untouched";
    assert_false(dx__gw_topic_user_id("user:", 5, &id, &idlen));
    assert_false(dx__gw_topic_user_id("users", 5, &id, &idlen));
    assert_false(dx__gw_topic_user_id("a.user:b", 8, &id, &idlen));
    assert_string_equal(id, "untouched");
}

/* Every byte value, alone, inside a segment, and as a segment. */
static void test_validation_bytes(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                  c == ':' || c == '@' || c == '/' || c == '-';
        char mid[3] = {'a', (char)c, 'b'};
        dx__gw_topic_kind k = dx__gw_topic_classify(mid, 3);
        if (c == '.')
            assert_int_equal(k, DX__GW_TOPIC_EXACT);
        else if (ok)
            assert_int_equal(k, DX__GW_TOPIC_EXACT);
        else
            assert_int_equal(k, DX__GW_TOPIC_INVALID);
        char one = (char)c;
        k = dx__gw_topic_classify(&one, 1);
        if (c == '*' || c == '>')
            assert_int_equal(k, DX__GW_TOPIC_PATTERN);
        else
            assert_int_equal(k, ok ? DX__GW_TOPIC_EXACT : DX__GW_TOPIC_INVALID);
        char seg[3] = {'a', '.', (char)c};
        k = dx__gw_topic_classify(seg, 3);
        if (c == '*' || c == '>')
            assert_int_equal(k, DX__GW_TOPIC_PATTERN);
        else
            assert_int_equal(k, ok ? DX__GW_TOPIC_EXACT : DX__GW_TOPIC_INVALID);
    }
}

/* ---- the reference model ------------------------------------------------- */

#define NSUBS 24
#define MAXS 512

static char subjects[NSUBS]; /* the subscribers: &subjects[i] */

typedef struct refsub {
    int sub;
    char name[DX__GW_TOPIC_MAX + 1];
} refsub;

typedef struct ref {
    refsub s[MAXS];
    size_t n;
} ref;

static size_t seg_split(const char *s, const char **segs, size_t *lens)
{
    size_t n = 0, start = 0, len = strlen(s);
    for (size_t i = 0; i <= len; i++) {
        if (i < len && s[i] != '.')
            continue;
        segs[n] = s + start;
        lens[n++] = i - start;
        start = i + 1;
    }
    return n;
}

/* The naive matcher: does subscription `p` (topic or pattern) match `t`? */
static bool ref_matches(const char *p, const char *t)
{
    if (strcmp(p, t) == 0)
        return true;
    if (kind_of(p) != DX__GW_TOPIC_PATTERN || kind_of(t) == DX__GW_TOPIC_USER)
        return false;
    const char *ps[128], *ts[128];
    size_t pl[128], tl[128];
    size_t np = seg_split(p, ps, pl), nt = seg_split(t, ts, tl);
    for (size_t i = 0; i < np; i++) {
        if (pl[i] == 1 && ps[i][0] == '>')
            return nt > i; /* one or more */
        if (i >= nt)
            return false;
        if (pl[i] == 1 && ps[i][0] == '*')
            continue;
        if (pl[i] != tl[i] || memcmp(ps[i], ts[i], pl[i]) != 0)
            return false;
    }
    return np == nt;
}

static int ref_find(const ref *r, int sub, const char *name)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->s[i].sub == sub && strcmp(r->s[i].name, name) == 0)
            return (int)i;
    return -1;
}

static size_t ref_count(const ref *r, int sub)
{
    size_t n = 0;
    for (size_t i = 0; i < r->n; i++)
        n += r->s[i].sub == sub;
    return n;
}

typedef struct got {
    int calls[NSUBS];
    char pattern[NSUBS][DX__GW_TOPIC_MAX + 1];
    bool exact[NSUBS];
    int total;
} got;

static void on_match(void *ud, void *sub, const char *pattern, size_t plen)
{
    got *g = ud;
    int i = (int)((char *)sub - subjects);
    assert_true(i >= 0 && i < NSUBS);
    g->calls[i]++;
    g->total++;
    g->exact[i] = pattern == NULL;
    if (pattern) {
        assert_int_equal(strlen(pattern), plen);
        memcpy(g->pattern[i], pattern, plen + 1);
    }
}

/* Checks match(topic) against the model. */
static void check_match(dx__gw_topic_index *ix, const ref *r, const char *topic)
{
    got g;
    memset(&g, 0, sizeof g);
    int rc = dx__gw_topic_match(ix, topic, strlen(topic), on_match, &g);
    assert_int_equal(rc, g.total);
    for (int s = 0; s < NSUBS; s++) {
        bool exact = ref_find(r, s, topic) >= 0, any = exact;
        for (size_t i = 0; i < r->n && !any; i++)
            any = r->s[i].sub == s && ref_matches(r->s[i].name, topic);
        if (g.calls[s] != (any ? 1 : 0))
            fail_msg("topic %s sub %d: %d calls, want %d", topic, s, g.calls[s], any);
        if (!any)
            continue;
        assert_int_equal(g.exact[s], exact);
        if (!exact) {
            assert_true(ref_find(r, s, g.pattern[s]) >= 0);
            assert_true(ref_matches(g.pattern[s], topic));
            assert_int_equal(kind_of(g.pattern[s]), DX__GW_TOPIC_PATTERN);
        }
    }
}

static void check_counts(dx__gw_topic_index *ix, const ref *r)
{
    size_t topics = 0, patterns = 0, subs = 0;
    for (size_t i = 0; i < r->n; i++) {
        bool first = true;
        for (size_t j = 0; j < i; j++)
            if (strcmp(r->s[j].name, r->s[i].name) == 0)
                first = false;
        if (first) {
            if (kind_of(r->s[i].name) == DX__GW_TOPIC_PATTERN)
                patterns++;
            else
                topics++;
        }
    }
    for (int s = 0; s < NSUBS; s++) {
        assert_int_equal(dx__gw_topic_sub_count(ix, &subjects[s]), ref_count(r, s));
        subs += ref_count(r, s) > 0;
    }
    assert_int_equal(dx__gw_topic_index_topics(ix), topics);
    assert_int_equal(dx__gw_topic_index_patterns(ix), patterns);
    assert_int_equal(dx__gw_topic_index_subscribers(ix), subs);
}

static bool matches(const char *p, const char *t)
{
    return dx__gw_topic_matches(p, strlen(p), t, strlen(t));
}

static bool covers(const char *a, const char *r)
{
    return dx__gw_topic_covers(a, strlen(a), r, strlen(r));
}

static void test_matches_and_covers_table(void **state)
{
    (void)state;
    assert_true(matches("a.b", "a.b"));
    assert_false(matches("a.b", "a.c"));
    assert_true(matches("a.*", "a.b"));
    assert_false(matches("a.*", "a"));
    assert_false(matches("a.*", "a.b.c"));
    assert_true(matches("a.>", "a.b.c"));
    assert_false(matches("a.>", "a"));
    assert_true(matches(">", "x"));
    assert_true(matches("*.*", "x.y"));
    assert_true(matches("user:x", "user:x"));
    assert_false(matches(">", "user:x"));
    assert_false(matches("*.b", "user:x.b"));
    assert_true(matches("*.user:x", "a.user:x")); /* only a leading user: is personal */
    assert_false(matches("a.*", "a.*"));          /* a pattern is not a topic */
    assert_false(matches("a..b", "a..b"));
    assert_false(matches("a", ""));
    assert_true(covers("a.>", "a.*"));
    assert_true(covers("a.>", "a.b.>"));
    assert_true(covers("a.>", "a.>"));
    assert_true(covers(">", "*.*.>"));
    assert_true(covers("*.*", "a.*"));
    assert_false(covers("a.*", "a.>"));
    assert_false(covers("a.*", ">"));
    assert_false(covers("a.b", "a.*"));
    assert_false(covers("a.>", "a"));
    assert_true(covers("a.*", "a.b"));
    assert_false(covers(">", "user:x"));
    assert_true(covers("user:x", "user:x"));
    assert_false(covers("a..b", "a.b"));
}

/* covers(A, R) equals its definition, checked by brute force: every
 * pattern over {a, b, *, >} of 1-3 segments, against every topic over
 * {a, b, q} of 1-4 segments (q: a literal neither uses; 4: one more than a
 * pattern's longest, enough to tell `>` from fixed lengths). Also checks
 * matches() against the reference matcher for each pair. */
static size_t all_names(const char *const *vocab, size_t nv, size_t maxseg, char (*out)[16], bool valid_only)
{
    size_t n = 0;
    size_t idx[8];
    for (size_t len = 1; len <= maxseg; len++) {
        memset(idx, 0, sizeof idx);
        for (;;) {
            char *o = out[n];
            o[0] = '\0';
            for (size_t i = 0; i < len; i++) {
                if (i)
                    strcat(o, ".");
                strcat(o, vocab[idx[i]]);
            }
            if (!valid_only || kind_of(o) != DX__GW_TOPIC_INVALID)
                n++;
            size_t i = 0;
            while (i < len && ++idx[i] == nv)
                idx[i++] = 0;
            if (i == len)
                break;
        }
    }
    return n;
}

static void test_covers_exhaustive(void **state)
{
    (void)state;
    static const char *const pv[] = {"a", "b", "*", ">"};
    static const char *const tv[] = {"a", "b", "q"};
    static char pats[100][16], tops[130][16];
    size_t np = all_names(pv, 4, 3, pats, true), nt = all_names(tv, 3, 4, tops, true);
    assert_int_equal(nt, 3 + 9 + 27 + 81);
    for (size_t t = 0; t < nt; t++)
        for (size_t p = 0; p < np; p++)
            assert_int_equal(matches(pats[p], tops[t]), ref_matches(pats[p], tops[t]));
    for (size_t a = 0; a < np; a++) {
        for (size_t r = 0; r < np; r++) {
            bool want = true;
            for (size_t t = 0; t < nt && want; t++)
                if (matches(pats[r], tops[t]) && !matches(pats[a], tops[t]))
                    want = false;
            if (covers(pats[a], pats[r]) != want)
                fail_msg("covers(%s, %s) = %d, want %d", pats[a], pats[r], !want, want);
        }
    }
}

static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* A random topic (pattern: may hold `*` and `>`) over a small vocabulary. */
static void rand_name(uint64_t *rng, char *out, bool pattern)
{
    static const char *const vocab[] = {"a", "b", "c", "dd", "user:x", "user:y"};
    size_t nseg = 1 + rng_next(rng) % 4, o = 0;
    for (size_t i = 0; i < nseg; i++) {
        const char *seg = vocab[rng_next(rng) % 4];
        if (i == 0 && rng_next(rng) % 8 == 0)
            seg = vocab[4 + rng_next(rng) % 2];
        if (pattern) {
            unsigned w = (unsigned)(rng_next(rng) % 4);
            if (w == 0)
                seg = "*";
            else if (w == 1 && i == nseg - 1)
                seg = ">";
        }
        if (i)
            out[o++] = '.';
        memcpy(out + o, seg, strlen(seg));
        o += strlen(seg);
    }
    out[o] = '\0';
}

static void test_random_against_reference(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx__gw_topic_index *ix = NULL;
    assert_int_equal(dx__gw_topic_index_new(&ts.seams, &ix), 0);
    long base = ts.live;
    static ref r;
    r.n = 0;
    uint64_t rng = 0x5eed1234abcdULL;
    char name[DX__GW_TOPIC_MAX + 1];
    for (int op = 0; op < 20000; op++) {
        int sub = (int)(rng_next(&rng) % NSUBS);
        unsigned what = (unsigned)(rng_next(&rng) % 100);
        if (what < 45 && r.n < MAXS) {
            rand_name(&rng, name, rng_next(&rng) % 2);
            dx__gw_topic_kind k = kind_of(name);
            int rc = dx__gw_topic_subscribe(ix, name, strlen(name), &subjects[sub]);
            if (k == DX__GW_TOPIC_INVALID) {
                assert_int_equal(rc, DX_EINVAL);
            } else if (ref_find(&r, sub, name) >= 0) {
                assert_int_equal(rc, 1);
            } else {
                assert_int_equal(rc, 0);
                r.s[r.n].sub = sub;
                strcpy(r.s[r.n++].name, name);
            }
        } else if (what < 75) {
            /* unsubscribe: mostly something held */
            int i = -1;
            if (r.n && rng_next(&rng) % 4) {
                i = (int)(rng_next(&rng) % r.n);
                sub = r.s[i].sub;
                strcpy(name, r.s[i].name);
            } else {
                rand_name(&rng, name, rng_next(&rng) % 2);
                i = ref_find(&r, sub, name);
            }
            int rc = dx__gw_topic_unsubscribe(ix, name, strlen(name), &subjects[sub]);
            assert_int_equal(rc, i >= 0 ? 0 : 1);
            if (i >= 0)
                r.s[i] = r.s[--r.n];
        } else if (what < 78) {
            assert_int_equal(dx__gw_topic_remove_subscriber(ix, &subjects[sub]), 0);
            for (size_t i = 0; i < r.n;)
                if (r.s[i].sub == sub)
                    r.s[i] = r.s[--r.n];
                else
                    i++;
        } else {
            rand_name(&rng, name, false);
            if (kind_of(name) == DX__GW_TOPIC_INVALID)
                continue;
            check_match(ix, &r, name);
        }
        if (op % 256 == 0)
            check_counts(ix, &r);
    }
    check_counts(ix, &r);
    for (int s = 0; s < NSUBS; s++)
        assert_int_equal(dx__gw_topic_remove_subscriber(ix, &subjects[s]), 0);
    assert_int_equal(dx__gw_topic_index_nodes(ix), 0);
    assert_int_equal(dx__gw_topic_index_topics(ix), 0);
    assert_int_equal(dx__gw_topic_index_subscribers(ix), 0);
    assert_int_equal(ts.live, base); /* every table and node went back */
    dx__gw_topic_index_free(ix);
    assert_int_equal(ts.live, 0);
}

static void test_at_most_once_overlap(void **state)
{
    (void)state;
    dx__gw_topic_index *ix = NULL;
    assert_int_equal(dx__gw_topic_index_new(NULL, &ix), 0);
    static const char *const mine[] = {"a.b", "a.*", "*.b", "a.>", ">", "*.*", "*"};
    for (size_t i = 0; i < 7; i++)
        assert_int_equal(dx__gw_topic_subscribe(ix, mine[i], strlen(mine[i]), &subjects[0]), 0);
    assert_int_equal(dx__gw_topic_subscribe(ix, "a.b", 3, &subjects[0]), 1);
    assert_int_equal(dx__gw_topic_subscribe(ix, "*.*", 3, &subjects[1]), 0);
    assert_int_equal(dx__gw_topic_subscribe(ix, "a.>", 3, &subjects[1]), 0);
    assert_int_equal(dx__gw_topic_subscribe(ix, "user:x", 6, &subjects[2]), 0);
    assert_int_equal(dx__gw_topic_sub_count(ix, &subjects[0]), 7);
    got g;
    memset(&g, 0, sizeof g);
    assert_int_equal(dx__gw_topic_match(ix, "a.b", 3, on_match, &g), 2);
    assert_int_equal(g.calls[0], 1);
    assert_true(g.exact[0]); /* exact wins */
    assert_int_equal(g.calls[1], 1);
    assert_false(g.exact[1]);
    assert_true(strcmp(g.pattern[1], "*.*") == 0 || strcmp(g.pattern[1], "a.>") == 0);
    /* without the exact one: once, through a pattern */
    assert_int_equal(dx__gw_topic_unsubscribe(ix, "a.b", 3, &subjects[0]), 0);
    assert_int_equal(dx__gw_topic_unsubscribe(ix, "a.b", 3, &subjects[0]), 1);
    memset(&g, 0, sizeof g);
    assert_int_equal(dx__gw_topic_match(ix, "a.b", 3, on_match, &g), 2);
    assert_int_equal(g.calls[0], 1);
    assert_false(g.exact[0]);
    assert_true(ref_matches(g.pattern[0], "a.b"));
    /* `>` needs one segment or more; `*` exactly one */
    memset(&g, 0, sizeof g);
    assert_int_equal(dx__gw_topic_match(ix, "a", 1, on_match, &g), 1);
    assert_string_equal(g.pattern[0], g.pattern[0][0] == '>' ? ">" : "*");
    memset(&g, 0, sizeof g);
    assert_int_equal(dx__gw_topic_match(ix, "a.b.c", 5, on_match, &g), 2);
    assert_true(strcmp(g.pattern[0], "a.>") == 0 || strcmp(g.pattern[0], ">") == 0);
    /* patterns never match user: topics; the exact subscriber gets it */
    memset(&g, 0, sizeof g);
    assert_int_equal(dx__gw_topic_match(ix, "user:x", 6, on_match, &g), 1);
    assert_int_equal(g.calls[2], 1);
    assert_true(g.exact[2]);
    assert_int_equal(dx__gw_topic_match(ix, "user:x.b", 8, on_match, &g), 0);
    /* a pattern is not a topic to match */
    assert_int_equal(dx__gw_topic_match(ix, "a.*", 3, on_match, &g), DX_EINVAL);
    assert_int_equal(dx__gw_topic_subscribe(ix, "a..b", 4, &subjects[0]), DX_EINVAL);
    assert_int_equal(dx__gw_topic_subscribe(ix, "a", 1, NULL), DX_EINVAL);
    assert_int_equal(dx__gw_topic_unsubscribe(ix, "a..b", 4, &subjects[0]), 1);
    assert_int_equal(dx__gw_topic_unsubscribe(ix, "a", 1, &subjects[9]), 1);
    dx__gw_topic_index_free(ix); /* with subscriptions left: ASan checks */
}

typedef struct reent {
    dx__gw_topic_index *ix;
    int calls;
} reent;

static void on_match_mutate(void *ud, void *sub, const char *pattern, size_t plen)
{
    (void)pattern;
    (void)plen;
    reent *r = ud;
    r->calls++;
    assert_int_equal(dx__gw_topic_subscribe(r->ix, "z", 1, sub), DX_ESTATE);
    assert_int_equal(dx__gw_topic_unsubscribe(r->ix, "a", 1, sub), DX_ESTATE);
    assert_int_equal(dx__gw_topic_remove_subscriber(r->ix, sub), DX_ESTATE);
    assert_int_equal(dx__gw_topic_match(r->ix, "a", 1, on_match_mutate, r), DX_ESTATE);
    assert_int_equal(dx__gw_topic_sub_count(r->ix, sub), 2); /* reads are fine */
}

static void test_callback_cannot_mutate(void **state)
{
    (void)state;
    dx__gw_topic_index *ix = NULL;
    assert_int_equal(dx__gw_topic_index_new(NULL, &ix), 0);
    for (int s = 0; s < 3; s++) {
        assert_int_equal(dx__gw_topic_subscribe(ix, "a", 1, &subjects[s]), 0);
        assert_int_equal(dx__gw_topic_subscribe(ix, ">", 1, &subjects[s]), 0);
    }
    reent r = {ix, 0};
    assert_int_equal(dx__gw_topic_match(ix, "a", 1, on_match_mutate, &r), 3);
    assert_int_equal(r.calls, 3);
    /* after the match, mutations work again */
    assert_int_equal(dx__gw_topic_remove_subscriber(ix, &subjects[0]), 0);
    assert_int_equal(dx__gw_topic_index_subscribers(ix), 2);
    dx__gw_topic_index_free(ix);
}

/* A fixed script with every allocation failed once: a failed call changes
 * nothing (checked against the model), and nothing leaks. */
static void test_alloc_failures(void **state)
{
    (void)state;
    static const struct {
        int sub;
        const char *name;
        bool unsub;
    } script[] = {
        {0, "a.b", false},   {0, "a.*.c", false},  {1, "a.*.c", false}, {1, "a.*.d", false},
        {2, "a.>", false},   {2, "*.b", false},    {3, "user:x", false}, {0, "a.b.c.dd", false},
        {4, "b", false},     {5, "b.*", false},    {0, "a.*.c", true},  {6, "*.*.*.>", false},
        {7, "c.dd", false},  {8, "c.dd.*", false}, {1, "a.*.d", true},  {9, "a.b.c.dd.*", false},
        {10, "dd.*", false}, {11, "dd.b", false},  {12, ">", false},    {13, "a.c.*", false},
    };
    static const char *const probes[] = {"a.b", "a.x.c", "a.x.d", "a.b.c", "b", "b.q", "user:x",
                                         "a.b.c.dd", "c.dd", "c.dd.e", "a.b.c.dd.e", "dd.b", "a.c.b"};
    const size_t nscript = sizeof script / sizeof script[0];
    bool completed = false;
    for (long fail_at = 1; !completed; fail_at++) {
        assert_true(fail_at < 10000);
        dx_test_seams ts;
        dx_test_seams_init(&ts);
        ts.fail_at = fail_at;
        dx__gw_topic_index *ix = NULL;
        int rc = dx__gw_topic_index_new(&ts.seams, &ix);
        if (rc < 0) {
            assert_int_equal(rc, DX_ENOMEM);
            assert_int_equal(ts.live, 0);
            continue;
        }
        static ref r;
        r.n = 0;
        bool failed = false;
        for (size_t i = 0; i < nscript; i++) {
            const char *n = script[i].name;
            if (script[i].unsub) {
                int j = ref_find(&r, script[i].sub, n);
                assert_int_equal(dx__gw_topic_unsubscribe(ix, n, strlen(n), &subjects[script[i].sub]),
                                 j >= 0 ? 0 : 1);
                if (j >= 0)
                    r.s[j] = r.s[--r.n];
                continue;
            }
            rc = dx__gw_topic_subscribe(ix, n, strlen(n), &subjects[script[i].sub]);
            if (rc == DX_ENOMEM) {
                failed = true;
                continue;
            }
            assert_int_equal(rc, 0);
            r.s[r.n].sub = script[i].sub;
            strcpy(r.s[r.n++].name, n);
        }
        check_counts(ix, &r);
        for (size_t p = 0; p < sizeof probes / sizeof probes[0]; p++)
            check_match(ix, &r, probes[p]);
        completed = !failed && ts.calls < fail_at;
        /* unsubscribe everything, then the index holds only itself */
        while (r.n) {
            refsub *s = &r.s[r.n - 1];
            assert_int_equal(dx__gw_topic_unsubscribe(ix, s->name, strlen(s->name), &subjects[s->sub]), 0);
            r.n--;
        }
        assert_int_equal(dx__gw_topic_index_nodes(ix), 0);
        dx__gw_topic_index_free(ix);
        assert_int_equal(ts.live, 0);
    }
}

/* Subscribing and leaving many times leaves nothing behind. */
static void test_churn_releases_memory(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    dx__gw_topic_index *ix = NULL;
    assert_int_equal(dx__gw_topic_index_new(&ts.seams, &ix), 0);
    long base = ts.live;
    char name[64];
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 500; i++) {
            snprintf(name, sizeof name, "r%d.t%d", round, i);
            assert_int_equal(dx__gw_topic_subscribe(ix, name, strlen(name), &subjects[i % NSUBS]), 0);
            snprintf(name, sizeof name, "r%d.*.p%d.>", round, i);
            assert_int_equal(dx__gw_topic_subscribe(ix, name, strlen(name), &subjects[i % NSUBS]), 0);
        }
        assert_int_equal(dx__gw_topic_index_topics(ix), 500);
        assert_int_equal(dx__gw_topic_index_patterns(ix), 500);
        for (int s = 0; s < NSUBS; s++)
            assert_int_equal(dx__gw_topic_remove_subscriber(ix, &subjects[s]), 0);
        assert_int_equal(ts.live, base);
    }
    dx__gw_topic_index_free(ix);
    assert_int_equal(ts.live, 0);
}

static void count_match(void *ud, void *sub, const char *pattern, size_t plen)
{
    (void)sub;
    (void)pattern;
    (void)plen;
    (*(int *)ud)++;
}

/* One publish among 100,000 exact subscriptions and 10,000 patterns visits
 * a handful of entries, not all of them. */
static void test_scale_visits_few(void **state)
{
    (void)state;
    dx__gw_topic_index *ix = NULL;
    assert_int_equal(dx__gw_topic_index_new(NULL, &ix), 0);
    static char subs[1000];
    char name[64];
    for (int i = 0; i < 100000; i++) {
        snprintf(name, sizeof name, "room%d.chat", i);
        assert_int_equal(dx__gw_topic_subscribe(ix, name, strlen(name), &subs[i % 1000]), 0);
    }
    for (int i = 0; i < 10000; i++) {
        switch (i % 4) {
        case 0: snprintf(name, sizeof name, "room%d.>", i); break;
        case 1: snprintf(name, sizeof name, "*.ev%d", i); break;
        case 2: snprintf(name, sizeof name, "room%d.*.x%d", i, i); break;
        default: snprintf(name, sizeof name, "p%d.*", i); break;
        }
        assert_int_equal(dx__gw_topic_subscribe(ix, name, strlen(name), &subs[(i * 7) % 1000]), 0);
    }
    assert_int_equal(dx__gw_topic_index_topics(ix), 100000);
    assert_int_equal(dx__gw_topic_index_patterns(ix), 10000);
    int n = 0;
    assert_int_equal(dx__gw_topic_match(ix, "room4.chat", 10, count_match, &n), 2); /* exact + room4.> */
    uint64_t visited = dx__gw_topic_index_visited(ix);
    printf("visited %llu for 110000 subscriptions\n", (unsigned long long)visited);
    assert_true(visited < 100);
    n = 0;
    assert_int_equal(dx__gw_topic_match(ix, "q.ev5", 5, count_match, &n), 1);
    assert_true(dx__gw_topic_index_visited(ix) < 100);
    n = 0;
    assert_int_equal(dx__gw_topic_match(ix, "nobody", 6, count_match, &n), 0);
    assert_true(dx__gw_topic_index_visited(ix) < 100);
    dx__gw_topic_index_free(ix);
}

int main(void)
{
    dx_test_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_validation_table),
        cmocka_unit_test(test_validation_lengths),
        cmocka_unit_test(test_validation_bytes),
        cmocka_unit_test(test_matches_and_covers_table),
        cmocka_unit_test(test_covers_exhaustive),
        cmocka_unit_test(test_random_against_reference),
        cmocka_unit_test(test_at_most_once_overlap),
        cmocka_unit_test(test_callback_cannot_mutate),
        cmocka_unit_test(test_alloc_failures),
        cmocka_unit_test(test_churn_releases_memory),
        cmocka_unit_test(test_scale_visits_few),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
