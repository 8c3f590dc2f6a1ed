/*
 * src/ws/ipcount.c: live connections per client address (see ipcount.h).
 *
 * Layer: ws; depends on core only. Linear probing with backward-shift
 * deletion (no tombstones, so lookups stay short after churn). The load
 * stays between 1/8 and 1/2: the table doubles before passing 1/2 and
 * halves below 1/8 (never under MIN_CAP). The hash is a 64-bit finalizer
 * over the key mixed with a per-table random seed: written here because it
 * runs at every accept and close, and a keyed mix is enough to keep a
 * client from picking addresses that land in one probe run.
 */
#include "ws/ipcount.h"

#include "core/seams.h"

#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>

#define MIN_CAP 64u

struct dx__ipslot {
    uint64_t key;
    uint32_t n; /* 0: free slot */
    uint32_t family;
};

uint64_t dx__ipcount_key(int family, const uint8_t *addr)
{
    uint64_t k = 0;
    size_t len = family == AF_INET ? 4 : 8;
    for (size_t i = 0; i < len; i++)
        k = k << 8 | addr[i];
    return k;
}

static uint64_t mix(const dx__ipcount *t, int family, uint64_t key)
{
    uint64_t x = key ^ t->seed ^ ((uint64_t)(unsigned)family << 56);
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static size_t find(const dx__ipcount *t, int family, uint64_t key)
{
    size_t mask = t->cap - 1;
    size_t i = (size_t)mix(t, family, key) & mask;
    while (t->slots[i].n && (t->slots[i].key != key || t->slots[i].family != (uint32_t)family))
        i = (i + 1) & mask;
    return i; /* the entry, or the free slot where it would go */
}

static int resize(dx__ipcount *t, const dx_seams *seams, size_t cap)
{
    dx__ipslot *old = t->slots;
    size_t ocap = t->cap;
    dx__ipslot *n = dx__alloc(seams, cap * sizeof *n);
    if (!n)
        return DX_ENOMEM;
    memset(n, 0, cap * sizeof *n);
    t->slots = n;
    t->cap = cap;
    for (size_t i = 0; i < ocap; i++)
        if (old[i].n)
            t->slots[find(t, (int)old[i].family, old[i].key)] = old[i];
    dx__free(seams, old);
    return 0;
}

int dx__ipcount_add(dx__ipcount *t, const dx_seams *seams, int family, uint64_t key, size_t limit)
{
    if (!t->slots) {
        if (dx__random(seams, &t->seed, sizeof t->seed))
            t->seed = (uint64_t)(uintptr_t)t * 0x9E3779B97F4A7C15ULL; /* still per-process, if weaker */
        if (resize(t, seams, MIN_CAP))
            return DX_ENOMEM;
    }
    size_t i = find(t, family, key);
    if (t->slots[i].n) {
        if (limit && t->slots[i].n >= limit)
            return DX_ELIMIT;
        t->slots[i].n++;
        return 0;
    }
    if ((t->n + 1) * 2 > t->cap) {
        if (resize(t, seams, t->cap * 2))
            return DX_ENOMEM;
        i = find(t, family, key);
    }
    t->slots[i] = (dx__ipslot){.key = key, .n = 1, .family = (uint32_t)family};
    t->n++;
    return 0;
}

void dx__ipcount_remove(dx__ipcount *t, const dx_seams *seams, int family, uint64_t key)
{
    if (!t->slots)
        return;
    size_t i = find(t, family, key);
    if (!t->slots[i].n || --t->slots[i].n)
        return;
    /* Backward shift: pull later members of the probe run into the hole so
     * that every entry stays reachable from its home slot. */
    size_t mask = t->cap - 1, hole = i, j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!t->slots[j].n)
            break;
        size_t home = (size_t)mix(t, (int)t->slots[j].family, t->slots[j].key) & mask;
        /* j may move to the hole when its home is not in (hole, j] cyclically */
        bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            t->slots[hole] = t->slots[j];
            hole = j;
        }
    }
    t->slots[hole].n = 0;
    t->n--;
    if (t->n == 0) {
        dx__ipcount_free(t, seams); /* an idle server holds no table */
        return;
    }
    if (t->cap > MIN_CAP && t->n * 8 < t->cap)
        (void)resize(t, seams, t->cap / 2); /* on failure the bigger table stays: still correct */
}

size_t dx__ipcount_get(const dx__ipcount *t, int family, uint64_t key)
{
    if (!t->slots)
        return 0;
    return t->slots[find(t, family, key)].n;
}

void dx__ipcount_free(dx__ipcount *t, const dx_seams *seams)
{
    dx__free(seams, t->slots);
    t->slots = NULL;
    t->cap = t->n = 0;
}
