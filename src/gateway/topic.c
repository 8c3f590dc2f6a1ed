/*
 * src/gateway/topic.c: topic and pattern validation, and the subscription
 * index of one worker thread.
 *
 * Layer: gateway (uses only core: the seams for memory and the hash seed).
 * Invariants:
 *  - a subscription is one `link`, in two doubly linked lists: its
 *    subscriber's (a `subrec`) and its holder's (an exact `tentry` or a trie
 *    `tnode`); a subrec exists only while it has links, a tentry only while
 *    it has links, a tnode only while it has links or children (pruning
 *    upwards after each removal); the root node always exists;
 *  - the three hash tables (subscribers by pointer, exact topics by name,
 *    literal trie edges by (parent, segment)) hold exactly the live
 *    objects; a table's bucket array is freed when it becomes empty and
 *    halves when less than 1/8 full;
 *  - a `>` node has no children (`>` is a pattern's last segment);
 *  - during dx__gw_topic_match (`matching`) nothing changes: mutations
 *    return DX_ESTATE. Each match stamps a new generation number in the
 *    subrecs it calls back, so a subscriber is called at most once without
 *    any allocation.
 */
#include "gateway/topic.h"

#include "core/seams.h"

#include <string.h>

/* ---- validation ---------------------------------------------------------- */

static bool name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == ':' || c == '@' || c == '/' || c == '-';
}

#define USER_PREFIX "user:"
#define USER_PREFIX_LEN 5

dx__gw_topic_kind dx__gw_topic_classify(const char *name, size_t len)
{
    if (!name || len == 0 || len > DX__GW_TOPIC_MAX)
        return DX__GW_TOPIC_INVALID;
    bool pattern = false;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && name[i] != '.')
            continue;
        size_t n = i - start;
        if (n == 0)
            return DX__GW_TOPIC_INVALID; /* empty segment */
        if (n == 1 && name[start] == '*') {
            pattern = true;
        } else if (n == 1 && name[start] == '>') {
            if (i != len)
                return DX__GW_TOPIC_INVALID; /* `>` only last */
            pattern = true;
        } else {
            for (size_t j = start; j < i; j++)
                if (!name_char((unsigned char)name[j]))
                    return DX__GW_TOPIC_INVALID;
        }
        start = i + 1;
    }
    if (len >= USER_PREFIX_LEN && memcmp(name, USER_PREFIX, USER_PREFIX_LEN) == 0) {
        /* a pattern could match no user: topic; the id is not empty and
         * does not begin with a dot */
        if (pattern || len == USER_PREFIX_LEN || name[USER_PREFIX_LEN] == '.')
            return DX__GW_TOPIC_INVALID;
        return DX__GW_TOPIC_USER;
    }
    return pattern ? DX__GW_TOPIC_PATTERN : DX__GW_TOPIC_EXACT;
}

int dx__gw_topic_check(const char *name, size_t len)
{
    dx__gw_topic_kind k = dx__gw_topic_classify(name, len);
    return k == DX__GW_TOPIC_EXACT || k == DX__GW_TOPIC_USER ? 0 : DX_EINVAL;
}

int dx__gw_topic_check_sub(const char *name, size_t len)
{
    return dx__gw_topic_classify(name, len) == DX__GW_TOPIC_INVALID ? DX_EINVAL : 0;
}

bool dx__gw_topic_user_id(const char *name, size_t len, const char **id, size_t *idlen)
{
    if (dx__gw_topic_classify(name, len) != DX__GW_TOPIC_USER)
        return false;
    if (id)
        *id = name + USER_PREFIX_LEN;
    if (idlen)
        *idlen = len - USER_PREFIX_LEN;
    return true;
}

/* The next segment of s[*pos..len): its start and length; *pos moves past
 * it and its dot. */
static const char *next_seg(const char *s, size_t len, size_t *pos, size_t *n)
{
    size_t start = *pos, i = start;
    while (i < len && s[i] != '.')
        i++;
    *n = i - start;
    *pos = i < len ? i + 1 : len + 1;
    return s + start;
}

static bool is_seg(const char *seg, size_t n, char c)
{
    return n == 1 && seg[0] == c;
}

bool dx__gw_topic_matches(const char *pattern, size_t plen, const char *topic, size_t tlen)
{
    dx__gw_topic_kind pk = dx__gw_topic_classify(pattern, plen), tk = dx__gw_topic_classify(topic, tlen);
    if (pk == DX__GW_TOPIC_INVALID || (tk != DX__GW_TOPIC_EXACT && tk != DX__GW_TOPIC_USER))
        return false;
    if (plen == tlen && memcmp(pattern, topic, plen) == 0)
        return true;
    if (pk != DX__GW_TOPIC_PATTERN || tk == DX__GW_TOPIC_USER)
        return false;
    size_t pp = 0, tp = 0;
    while (pp <= plen) {
        size_t pn, tn;
        const char *ps = next_seg(pattern, plen, &pp, &pn);
        if (is_seg(ps, pn, '>'))
            return tp <= tlen; /* one or more topic segments left */
        if (tp > tlen)
            return false;
        const char *ts = next_seg(topic, tlen, &tp, &tn);
        if (!is_seg(ps, pn, '*') && (pn != tn || memcmp(ps, ts, pn) != 0))
            return false;
    }
    return tp > tlen;
}

bool dx__gw_topic_covers(const char *allowed, size_t alen, const char *req, size_t rlen)
{
    dx__gw_topic_kind ak = dx__gw_topic_classify(allowed, alen), rk = dx__gw_topic_classify(req, rlen);
    if (ak == DX__GW_TOPIC_INVALID || rk == DX__GW_TOPIC_INVALID)
        return false;
    if (rk != DX__GW_TOPIC_PATTERN)
        return dx__gw_topic_matches(allowed, alen, req, rlen);
    if (ak != DX__GW_TOPIC_PATTERN)
        return false; /* a topic covers no pattern */
    size_t ap = 0, rp = 0;
    while (ap <= alen) {
        size_t an, rn;
        const char *as = next_seg(allowed, alen, &ap, &an);
        if (is_seg(as, an, '>'))
            return rp <= rlen;
        if (rp > rlen)
            return false;
        const char *rs = next_seg(req, rlen, &rp, &rn);
        if (is_seg(rs, rn, '>'))
            return false;
        if (is_seg(as, an, '*'))
            continue;
        if (an != rn || memcmp(as, rs, an) != 0)
            return false;
    }
    return rp > rlen;
}

/* ---- hash tables ---------------------------------------------------------- */

typedef struct hnode {
    struct hnode *next;
    uint64_t hash;
} hnode;

typedef struct htab {
    hnode **b; /* NULL while empty */
    size_t cap;
    size_t n;
} htab;

#define HT_MIN 16

static uint64_t mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* Seeded, not cryptographic: the seed keeps a client from choosing names
 * that collide in advance. */
static uint64_t hash_bytes(uint64_t seed, const char *p, size_t n)
{
    uint64_t h = mix64(seed ^ (n * 0x9e3779b97f4a7c15ULL));
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = mix64(h ^ w) + 0x9e3779b97f4a7c15ULL;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    return mix64(h ^ w ^ ((uint64_t)n << 59));
}

/* ---- index ---------------------------------------------------------------- */

typedef struct link link;
typedef struct subrec subrec;

typedef struct holder {
    link *links;  /* subscriptions to this topic / pattern */
    size_t nlinks;
    bool is_node; /* a tnode, else a tentry */
    size_t len;   /* of the full name */
    char *name;   /* the full topic / pattern, NUL-terminated */
} holder;

struct link {
    link *sprev, *snext; /* in the subscriber's list */
    link *hprev, *hnext; /* in the holder's list */
    subrec *s;
    holder *h;
};

struct subrec {
    hnode hn;
    void *sub;
    link *links;
    size_t n;
    uint64_t gen; /* the match that last called it back */
};

typedef struct tentry {
    hnode hn;
    holder h;
    char name[];
} tentry;

enum { NODE_ROOT, NODE_LIT, NODE_STAR, NODE_GT };

typedef struct tnode {
    hnode hn; /* in the edge table (NODE_LIT) */
    holder h; /* links: the patterns that end here */
    struct tnode *parent;
    struct tnode *star, *gt;
    size_t nlit;   /* literal children */
    size_t seglen; /* the last segment: h.name + h.len - seglen */
    int kind;
    char name[];
} tnode;

struct dx__gw_topic_index {
    const dx_seams *seams;
    uint64_t seed;
    htab subs, topics, edges;
    tnode *root;
    size_t npatterns, nnodes;
    uint64_t gen, visited;
    bool matching, closing;
};

/* Moves every node of t into a new bucket array of `cap` (a power of two). */
static int ht_rehash(dx__gw_topic_index *ix, htab *t, size_t cap)
{
    hnode **b = dx__alloc(ix->seams, cap * sizeof *b);
    if (!b)
        return DX_ENOMEM;
    memset(b, 0, cap * sizeof *b);
    for (size_t i = 0; i < t->cap; i++) {
        for (hnode *e = t->b[i], *next; e; e = next) {
            next = e->next;
            e->next = b[e->hash & (cap - 1)];
            b[e->hash & (cap - 1)] = e;
        }
    }
    dx__free(ix->seams, t->b);
    t->b = b;
    t->cap = cap;
    return 0;
}

static int ht_reserve(dx__gw_topic_index *ix, htab *t)
{
    if (t->n + 1 <= t->cap)
        return 0;
    return ht_rehash(ix, t, t->cap ? t->cap * 2 : HT_MIN);
}

/* After ht_reserve. */
static void ht_insert(htab *t, hnode *e)
{
    hnode **head = &t->b[e->hash & (t->cap - 1)];
    e->next = *head;
    *head = e;
    t->n++;
}

static void ht_resize_down(dx__gw_topic_index *ix, htab *t)
{
    (void)ht_rehash(ix, t, t->cap / 2); /* out of memory: keep the larger table, still correct */
}

static void ht_remove(dx__gw_topic_index *ix, htab *t, hnode *e)
{
    hnode **pp = &t->b[e->hash & (t->cap - 1)];
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    t->n--;
    if (ix->closing)
        return;
    if (t->n == 0) {
        dx__free(ix->seams, t->b);
        t->b = NULL;
        t->cap = 0;
    } else if (t->cap > HT_MIN && t->n < t->cap / 8) {
        ht_resize_down(ix, t);
    }
}

static hnode *ht_chain(const htab *t, uint64_t hash)
{
    return t->cap ? t->b[hash & (t->cap - 1)] : NULL;
}

static uint64_t ptr_hash(const dx__gw_topic_index *ix, const void *p)
{
    return mix64(ix->seed ^ (uint64_t)(uintptr_t)p);
}

static subrec *sub_find(const dx__gw_topic_index *ix, const void *sub)
{
    uint64_t h = ptr_hash(ix, sub);
    for (hnode *e = ht_chain(&ix->subs, h); e; e = e->next)
        if (e->hash == h && ((subrec *)e)->sub == sub)
            return (subrec *)e;
    return NULL;
}

static tentry *topic_find(dx__gw_topic_index *ix, const char *name, size_t len, bool count)
{
    uint64_t h = hash_bytes(ix->seed, name, len);
    for (hnode *e = ht_chain(&ix->topics, h); e; e = e->next) {
        if (count)
            ix->visited++;
        tentry *te = (tentry *)e;
        if (e->hash == h && te->h.len == len && memcmp(te->name, name, len) == 0)
            return te;
    }
    return NULL;
}

static uint64_t edge_hash(const dx__gw_topic_index *ix, const tnode *parent, const char *seg, size_t n)
{
    return hash_bytes(ix->seed ^ mix64((uint64_t)(uintptr_t)parent), seg, n);
}

static tnode *edge_find(dx__gw_topic_index *ix, const tnode *parent, const char *seg, size_t n, bool count)
{
    if (parent->nlit == 0)
        return NULL;
    uint64_t h = edge_hash(ix, parent, seg, n);
    for (hnode *e = ht_chain(&ix->edges, h); e; e = e->next) {
        if (count)
            ix->visited++;
        tnode *c = (tnode *)e;
        if (e->hash == h && c->parent == parent && c->seglen == n &&
            memcmp(c->name + c->h.len - n, seg, n) == 0)
            return c;
    }
    return NULL;
}

/* The child of `parent` for segment `seg` (literal, "*" or ">"), or NULL. */
static tnode *child_find(dx__gw_topic_index *ix, const tnode *parent, const char *seg, size_t n)
{
    if (n == 1 && seg[0] == '*')
        return parent->star;
    if (n == 1 && seg[0] == '>')
        return parent->gt;
    return edge_find(ix, parent, seg, n, false);
}

static tnode *node_new(dx__gw_topic_index *ix, tnode *parent, const char *seg, size_t n, int kind)
{
    size_t plen = parent->h.len, len = plen + (plen ? 1 : 0) + n;
    tnode *c = dx__alloc(ix->seams, sizeof *c + len + 1);
    if (!c)
        return NULL;
    memset(c, 0, sizeof *c);
    memcpy(c->name, parent->name, plen);
    if (plen)
        c->name[plen] = '.';
    memcpy(c->name + len - n, seg, n);
    c->name[len] = '\0';
    c->h.is_node = true;
    c->h.name = c->name;
    c->h.len = len;
    c->parent = parent;
    c->seglen = n;
    c->kind = kind;
    return c;
}

/* Gets or makes the child; NULL on DX_ENOMEM (nothing changed). */
static tnode *child_get(dx__gw_topic_index *ix, tnode *parent, const char *seg, size_t n)
{
    tnode *c = child_find(ix, parent, seg, n);
    if (c)
        return c;
    int kind = n == 1 && seg[0] == '*' ? NODE_STAR : n == 1 && seg[0] == '>' ? NODE_GT : NODE_LIT;
    if (kind == NODE_LIT && ht_reserve(ix, &ix->edges) < 0)
        return NULL;
    c = node_new(ix, parent, seg, n, kind);
    if (!c)
        return NULL;
    if (kind == NODE_STAR) {
        parent->star = c;
    } else if (kind == NODE_GT) {
        parent->gt = c;
    } else {
        c->hn.hash = edge_hash(ix, parent, seg, n);
        ht_insert(&ix->edges, &c->hn);
        parent->nlit++;
    }
    ix->nnodes++;
    return c;
}

/* Frees `c` and its ancestors while they hold nothing. */
static void prune(dx__gw_topic_index *ix, tnode *c)
{
    while (c->kind != NODE_ROOT && c->h.nlinks == 0 && c->nlit == 0 && !c->star && !c->gt) {
        tnode *parent = c->parent;
        if (c->kind == NODE_STAR) {
            parent->star = NULL;
        } else if (c->kind == NODE_GT) {
            parent->gt = NULL;
        } else {
            ht_remove(ix, &ix->edges, &c->hn);
            parent->nlit--;
        }
        dx__free(ix->seams, c);
        ix->nnodes--;
        c = parent;
    }
}

/* The node of pattern `name`, made with its path when `make`; NULL when
 * absent (!make) or on DX_ENOMEM (make: nothing left behind). */
static tnode *pattern_node(dx__gw_topic_index *ix, const char *name, size_t len, bool make)
{
    tnode *node = ix->root;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && name[i] != '.')
            continue;
        tnode *c = make ? child_get(ix, node, name + start, i - start)
                        : child_find(ix, node, name + start, i - start);
        if (!c) {
            if (make)
                prune(ix, node);
            return NULL;
        }
        node = c;
        start = i + 1;
    }
    return node;
}

static void link_attach(dx__gw_topic_index *ix, link *l, subrec *s, holder *h)
{
    l->s = s;
    l->h = h;
    l->sprev = NULL;
    l->snext = s->links;
    if (s->links)
        s->links->sprev = l;
    s->links = l;
    s->n++;
    l->hprev = NULL;
    l->hnext = h->links;
    if (h->links)
        h->links->hprev = l;
    h->links = l;
    if (h->nlinks++ == 0 && h->is_node)
        ix->npatterns++;
}

static void sub_release(dx__gw_topic_index *ix, subrec *s)
{
    ht_remove(ix, &ix->subs, &s->hn);
    dx__free(ix->seams, s);
}

static void holder_release(dx__gw_topic_index *ix, holder *h)
{
    if (h->is_node) {
        tnode *c = (tnode *)((char *)h - offsetof(tnode, h));
        prune(ix, c);
    } else {
        tentry *te = (tentry *)((char *)h - offsetof(tentry, h));
        ht_remove(ix, &ix->topics, &te->hn);
        dx__free(ix->seams, te);
    }
}

/* Removes and frees `l`, then what no longer holds anything. Returns true
 * when its subrec was freed. */
static bool link_detach(dx__gw_topic_index *ix, link *l)
{
    subrec *s = l->s;
    holder *h = l->h;
    if (l->sprev)
        l->sprev->snext = l->snext;
    else
        s->links = l->snext;
    if (l->snext)
        l->snext->sprev = l->sprev;
    if (l->hprev)
        l->hprev->hnext = l->hnext;
    else
        h->links = l->hnext;
    if (l->hnext)
        l->hnext->hprev = l->hprev;
    dx__free(ix->seams, l);
    s->n--;
    if (--h->nlinks == 0) {
        if (h->is_node)
            ix->npatterns--;
        holder_release(ix, h);
    }
    if (s->n == 0) {
        sub_release(ix, s);
        return true;
    }
    return false;
}

static link *sub_link_to(const subrec *s, const holder *h)
{
    for (link *l = s ? s->links : NULL; l; l = l->snext)
        if (l->h == h)
            return l;
    return NULL;
}

int dx__gw_topic_index_new(const dx_seams *seams, dx__gw_topic_index **out)
{
    uint64_t seed;
    if (dx__random(seams, &seed, sizeof seed) < 0)
        return DX_ERANDOM;
    dx__gw_topic_index *ix = dx__alloc(seams, sizeof *ix);
    if (!ix)
        return DX_ENOMEM;
    memset(ix, 0, sizeof *ix);
    ix->seams = seams;
    ix->seed = seed;
    ix->root = dx__alloc(seams, sizeof *ix->root + 1);
    if (!ix->root) {
        dx__free(seams, ix);
        return DX_ENOMEM;
    }
    memset(ix->root, 0, sizeof *ix->root + 1);
    ix->root->kind = NODE_ROOT;
    ix->root->h.is_node = true;
    ix->root->h.name = ix->root->name;
    *out = ix;
    return 0;
}

void dx__gw_topic_index_free(dx__gw_topic_index *ix)
{
    if (!ix)
        return;
    ix->closing = true; /* tables keep their buckets while emptied */
    for (size_t i = 0; i < ix->subs.cap; i++) {
        while (ix->subs.b[i]) {
            subrec *s = (subrec *)ix->subs.b[i];
            while (!link_detach(ix, s->links)) {
            }
        }
    }
    dx__free(ix->seams, ix->subs.b);
    dx__free(ix->seams, ix->topics.b);
    dx__free(ix->seams, ix->edges.b);
    dx__free(ix->seams, ix->root);
    dx__free(ix->seams, ix);
}

int dx__gw_topic_subscribe(dx__gw_topic_index *ix, const char *name, size_t len, void *sub)
{
    if (ix->matching)
        return DX_ESTATE;
    dx__gw_topic_kind kind = dx__gw_topic_classify(name, len);
    if (kind == DX__GW_TOPIC_INVALID || !sub)
        return DX_EINVAL;
    subrec *s = sub_find(ix, sub);
    holder *h = NULL;
    if (kind == DX__GW_TOPIC_PATTERN) {
        tnode *c = pattern_node(ix, name, len, false);
        h = c ? &c->h : NULL;
    } else {
        tentry *te = topic_find(ix, name, len, false);
        h = te ? &te->h : NULL;
    }
    if (h && sub_link_to(s, h))
        return 1;

    link *l = dx__alloc(ix->seams, sizeof *l);
    if (!l)
        return DX_ENOMEM;
    bool new_sub = false;
    if (!s) {
        if (ht_reserve(ix, &ix->subs) < 0)
            goto nomem;
        s = dx__alloc(ix->seams, sizeof *s);
        if (!s)
            goto nomem;
        memset(s, 0, sizeof *s);
        s->sub = sub;
        s->hn.hash = ptr_hash(ix, sub);
        ht_insert(&ix->subs, &s->hn);
        new_sub = true;
    }
    if (!h) {
        if (kind == DX__GW_TOPIC_PATTERN) {
            tnode *c = pattern_node(ix, name, len, true);
            if (!c)
                goto nomem_sub;
            h = &c->h;
        } else {
            if (ht_reserve(ix, &ix->topics) < 0)
                goto nomem_sub;
            tentry *te = dx__alloc(ix->seams, sizeof *te + len + 1);
            if (!te)
                goto nomem_sub;
            memset(te, 0, sizeof *te);
            memcpy(te->name, name, len);
            te->name[len] = '\0';
            te->h.name = te->name;
            te->h.len = len;
            te->hn.hash = hash_bytes(ix->seed, name, len);
            ht_insert(&ix->topics, &te->hn);
            h = &te->h;
        }
    }
    link_attach(ix, l, s, h);
    return 0;

nomem_sub:
    if (new_sub)
        sub_release(ix, s);
nomem:
    dx__free(ix->seams, l);
    return DX_ENOMEM;
}

int dx__gw_topic_unsubscribe(dx__gw_topic_index *ix, const char *name, size_t len, void *sub)
{
    if (ix->matching)
        return DX_ESTATE;
    subrec *s = sub_find(ix, sub);
    if (!s)
        return 1;
    holder *h = NULL;
    switch (dx__gw_topic_classify(name, len)) {
    case DX__GW_TOPIC_INVALID:
        return 1;
    case DX__GW_TOPIC_PATTERN: {
        tnode *c = pattern_node(ix, name, len, false);
        h = c ? &c->h : NULL;
        break;
    }
    default: {
        tentry *te = topic_find(ix, name, len, false);
        h = te ? &te->h : NULL;
        break;
    }
    }
    link *l = h ? sub_link_to(s, h) : NULL;
    if (!l)
        return 1;
    link_detach(ix, l);
    return 0;
}

int dx__gw_topic_remove_subscriber(dx__gw_topic_index *ix, void *sub)
{
    if (ix->matching)
        return DX_ESTATE;
    subrec *s = sub_find(ix, sub);
    if (s) {
        while (!link_detach(ix, s->links)) {
        }
    }
    return 0;
}

typedef struct match_ctx {
    dx__gw_topic_index *ix;
    dx__gw_topic_match_fn fn;
    void *ud;
    int calls;
} match_ctx;

static void deliver(match_ctx *m, const holder *h, bool pattern)
{
    dx__gw_topic_index *ix = m->ix;
    for (link *l = h->links; l; l = l->hnext) {
        ix->visited++;
        if (l->s->gen == ix->gen)
            continue;
        l->s->gen = ix->gen;
        m->calls++;
        m->fn(m->ud, l->s->sub, pattern ? h->name : NULL, pattern ? h->len : 0);
    }
}

/* `rest` (`n` bytes) are the segments of the topic below `node`. */
static void walk(match_ctx *m, const tnode *node, const char *rest, size_t n)
{
    m->ix->visited++;
    if (n == 0) {
        deliver(m, &node->h, true);
        return;
    }
    if (node->gt) {
        m->ix->visited++;
        deliver(m, &node->gt->h, true);
    }
    size_t seg = 0;
    while (seg < n && rest[seg] != '.')
        seg++;
    const char *next = seg < n ? rest + seg + 1 : rest + n;
    size_t nn = seg < n ? n - seg - 1 : 0;
    tnode *c = edge_find(m->ix, node, rest, seg, true);
    if (c)
        walk(m, c, next, nn);
    if (node->star)
        walk(m, node->star, next, nn);
}

int dx__gw_topic_match(dx__gw_topic_index *ix, const char *topic, size_t len, dx__gw_topic_match_fn fn,
                       void *ud)
{
    if (ix->matching)
        return DX_ESTATE;
    dx__gw_topic_kind kind = dx__gw_topic_classify(topic, len);
    if (kind != DX__GW_TOPIC_EXACT && kind != DX__GW_TOPIC_USER)
        return DX_EINVAL;
    ix->matching = true;
    ix->gen++;
    ix->visited = 0;
    match_ctx m = {ix, fn, ud, 0};
    tentry *te = topic_find(ix, topic, len, true);
    if (te)
        deliver(&m, &te->h, false);
    if (kind != DX__GW_TOPIC_USER && ix->nnodes)
        walk(&m, ix->root, topic, len);
    ix->matching = false;
    return m.calls;
}

size_t dx__gw_topic_sub_count(const dx__gw_topic_index *ix, const void *sub)
{
    const subrec *s = sub_find(ix, sub);
    return s ? s->n : 0;
}

size_t dx__gw_topic_index_topics(const dx__gw_topic_index *ix)
{
    return ix->topics.n;
}

size_t dx__gw_topic_index_patterns(const dx__gw_topic_index *ix)
{
    return ix->npatterns;
}

size_t dx__gw_topic_index_subscribers(const dx__gw_topic_index *ix)
{
    return ix->subs.n;
}

uint64_t dx__gw_topic_index_visited(const dx__gw_topic_index *ix)
{
    return ix->visited;
}

size_t dx__gw_topic_index_nodes(const dx__gw_topic_index *ix)
{
    return ix->nnodes;
}
