/*
 * tests/fuzz/fuzz_topic.c: src/gateway/topic.c, validation and the
 * subscription index against a naive reference matcher.
 *
 * Input: the whole input is first classified as one name (never crashes;
 * the kinds agree with check/check_sub/user_id). Then it is read as lines;
 * each line is an operation: byte 0 selects subscribe / unsubscribe /
 * remove a subscriber / match, byte 1 a subscriber (of 8), the rest a name.
 * Invariants (abort() when broken): every result equals the reference
 * model's (a list of (subscriber, name) pairs and a segment-by-segment
 * matcher); a match calls each matching subscriber exactly once, with NULL
 * when it holds the exact topic, else one of its patterns that matches;
 * the counts agree; after removing every subscriber the index holds no
 * node, topic nor subscriber.
 */
#include "gateway/topic.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NSUB 8
#define MAXR 256

static char subjects[NSUB];

typedef struct rsub {
    int sub;
    size_t len;
    char name[DX__GW_TOPIC_MAX + 1];
} rsub;

static rsub model[MAXR];
static size_t nmodel;

static void check(bool ok)
{
    if (!ok)
        abort();
}

static size_t segs(const char *s, size_t len, const char **p, size_t *l)
{
    size_t n = 0, start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && s[i] != '.')
            continue;
        p[n] = s + start;
        l[n++] = i - start;
        start = i + 1;
    }
    return n;
}

static bool ref_matches(const char *p, size_t plen, const char *t, size_t tlen)
{
    if (plen == tlen && memcmp(p, t, plen) == 0)
        return true;
    if (dx__gw_topic_classify(p, plen) != DX__GW_TOPIC_PATTERN ||
        dx__gw_topic_classify(t, tlen) == DX__GW_TOPIC_USER)
        return false;
    const char *ps[DX__GW_TOPIC_MAX], *ts[DX__GW_TOPIC_MAX];
    size_t pl[DX__GW_TOPIC_MAX], tl[DX__GW_TOPIC_MAX];
    size_t np = segs(p, plen, ps, pl), nt = segs(t, tlen, ts, tl);
    for (size_t i = 0; i < np; i++) {
        if (pl[i] == 1 && ps[i][0] == '>')
            return nt > i;
        if (i >= nt)
            return false;
        if (pl[i] == 1 && ps[i][0] == '*')
            continue;
        if (pl[i] != tl[i] || memcmp(ps[i], ts[i], pl[i]) != 0)
            return false;
    }
    return np == nt;
}

static int ref_find(int sub, const char *name, size_t len)
{
    for (size_t i = 0; i < nmodel; i++)
        if (model[i].sub == sub && model[i].len == len && memcmp(model[i].name, name, len) == 0)
            return (int)i;
    return -1;
}

typedef struct got {
    int calls[NSUB];
    bool exact[NSUB];
    char pattern[NSUB][DX__GW_TOPIC_MAX + 1];
    size_t plen[NSUB];
} got;

static void on_match(void *ud, void *sub, const char *pattern, size_t plen)
{
    got *g = ud;
    ptrdiff_t i = (char *)sub - subjects;
    check(i >= 0 && i < NSUB);
    g->calls[i]++;
    g->exact[i] = pattern == NULL;
    if (pattern) {
        check(plen <= DX__GW_TOPIC_MAX && strlen(pattern) == plen);
        memcpy(g->pattern[i], pattern, plen);
        g->plen[i] = plen;
    }
}

static void check_match(dx__gw_topic_index *ix, const char *t, size_t len)
{
    got g;
    memset(&g, 0, sizeof g);
    int rc = dx__gw_topic_match(ix, t, len, on_match, &g);
    if (dx__gw_topic_check(t, len) != 0) {
        check(rc == DX_EINVAL);
        return;
    }
    int total = 0;
    for (int s = 0; s < NSUB; s++) {
        bool exact = ref_find(s, t, len) >= 0, any = exact;
        for (size_t i = 0; i < nmodel; i++) {
            bool m = ref_matches(model[i].name, model[i].len, t, len);
            check(dx__gw_topic_matches(model[i].name, model[i].len, t, len) == m);
            any = any || (model[i].sub == s && m);
        }
        check(g.calls[s] == (any ? 1 : 0));
        total += g.calls[s];
        if (!any)
            continue;
        check(g.exact[s] == exact);
        if (!exact)
            check(ref_find(s, g.pattern[s], g.plen[s]) >= 0 && ref_matches(g.pattern[s], g.plen[s], t, len));
    }
    check(rc == total);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    dx__gw_topic_kind k = dx__gw_topic_classify(in, size);
    check((dx__gw_topic_check(in, size) == 0) == (k == DX__GW_TOPIC_EXACT || k == DX__GW_TOPIC_USER));
    check((dx__gw_topic_check_sub(in, size) == 0) == (k != DX__GW_TOPIC_INVALID));
    const char *id = NULL;
    size_t idlen = 0;
    check(dx__gw_topic_user_id(in, size, &id, &idlen) == (k == DX__GW_TOPIC_USER));
    if (k == DX__GW_TOPIC_USER)
        check(id == in + 5 && idlen == size - 5 && idlen > 0);
    if (k != DX__GW_TOPIC_INVALID)
        check(size >= 1 && size <= DX__GW_TOPIC_MAX);

    dx__gw_topic_index *ix = NULL;
    if (dx__gw_topic_index_new(NULL, &ix) != 0)
        abort();
    nmodel = 0;
    size_t pos = 0;
    while (pos < size) {
        size_t end = pos;
        while (end < size && data[end] != '\n')
            end++;
        if (end - pos >= 2) {
            unsigned op = data[pos] % 4;
            int sub = data[pos + 1] % NSUB;
            const char *name = in + pos + 2;
            size_t len = end - pos - 2;
            if (op == 0) {
                int rc = dx__gw_topic_subscribe(ix, name, len, &subjects[sub]);
                if (dx__gw_topic_check_sub(name, len) != 0) {
                    check(rc == DX_EINVAL);
                } else if (ref_find(sub, name, len) >= 0) {
                    check(rc == 1);
                } else if (nmodel < MAXR) {
                    check(rc == 0);
                    model[nmodel].sub = sub;
                    model[nmodel].len = len;
                    memcpy(model[nmodel++].name, name, len);
                } else {
                    check(rc == 0);
                    check(dx__gw_topic_unsubscribe(ix, name, len, &subjects[sub]) == 0);
                }
            } else if (op == 1) {
                int i = ref_find(sub, name, len);
                check(dx__gw_topic_unsubscribe(ix, name, len, &subjects[sub]) == (i >= 0 ? 0 : 1));
                if (i >= 0)
                    model[i] = model[--nmodel];
            } else if (op == 2) {
                check(dx__gw_topic_remove_subscriber(ix, &subjects[sub]) == 0);
                for (size_t i = 0; i < nmodel;)
                    if (model[i].sub == sub)
                        model[i] = model[--nmodel];
                    else
                        i++;
            } else {
                check_match(ix, name, len);
            }
        }
        pos = end + 1;
    }
    size_t subs = 0;
    for (int s = 0; s < NSUB; s++) {
        size_t n = 0;
        for (size_t i = 0; i < nmodel; i++)
            n += model[i].sub == s;
        check(dx__gw_topic_sub_count(ix, &subjects[s]) == n);
        subs += n > 0;
    }
    check(dx__gw_topic_index_subscribers(ix) == subs);
    for (int s = 0; s < NSUB; s++)
        check(dx__gw_topic_remove_subscriber(ix, &subjects[s]) == 0);
    check(dx__gw_topic_index_nodes(ix) == 0 && dx__gw_topic_index_topics(ix) == 0 &&
          dx__gw_topic_index_patterns(ix) == 0 && dx__gw_topic_index_subscribers(ix) == 0);
    dx__gw_topic_index_free(ix);
    return 0;
}
