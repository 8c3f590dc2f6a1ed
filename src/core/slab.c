/*
 * src/core/slab.c: fixed-size slots in 64 KiB pages (see slab.h).
 *
 * Layer: core. Depends on the seams allocator only.
 *
 * A page starts with its header; slots follow, aligned. Slots are handed
 * out from the page's free list (slots given back) first, then by bumping
 * `fresh` (slots never used), so a page's memory is touched only as it
 * fills: RSS grows with the objects, not with the pages. A slot's page is
 * found by a binary search over the sorted page array (a free is rare next
 * to the object's life; no header per slot).
 *
 * Invariants: a page is in `partial` iff used < per_page; every page is in
 * `pages`, sorted; a page with used == 0 is freed unless it is the only
 * page in `partial`.
 */
#include "core/slab.h"

#include "core/seams.h"

#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#define DX_SLAB_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DX_SLAB_ASAN 1
#endif
#endif

#ifdef DX_SLAB_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

struct dx__slab_page {
    dx__slab_page *next, *prev; /* in s->partial while it has a free slot */
    void *free;                 /* slots given back: a list through their first bytes */
    uint32_t used;              /* slots handed out */
    uint32_t fresh;             /* slots carved so far (the rest never used) */
    _Alignas(DX_SLAB_ALIGN) unsigned char slots[];
};

#define HDR (offsetof(dx__slab_page, slots))

int dx__slab_init(dx__slab *s, const dx_seams *seams, size_t size)
{
    memset(s, 0, sizeof *s);
    if (size < sizeof(void *))
        size = sizeof(void *);
    size_t slot = (size + DX_SLAB_ALIGN - 1) / DX_SLAB_ALIGN * DX_SLAB_ALIGN;
    if (slot > (DX_SLAB_PAGE - HDR) / 2)
        return DX_EINVAL;
    s->seams = seams;
    s->slot = slot;
    s->per_page = (DX_SLAB_PAGE - HDR) / slot;
    return 0;
}

void dx__slab_deinit(dx__slab *s)
{
    for (size_t i = 0; i < s->npages; i++) {
        UNPOISON(s->pages[i], DX_SLAB_PAGE);
        dx__free(s->seams, s->pages[i]);
    }
    dx__free(s->seams, s->pages);
    s->pages = NULL;
    s->npages = s->cap = s->live = 0;
    s->partial = NULL;
}

static void partial_push(dx__slab *s, dx__slab_page *pg)
{
    pg->prev = NULL;
    pg->next = s->partial;
    if (s->partial)
        s->partial->prev = pg;
    s->partial = pg;
}

static void partial_remove(dx__slab *s, dx__slab_page *pg)
{
    if (pg->prev)
        pg->prev->next = pg->next;
    else
        s->partial = pg->next;
    if (pg->next)
        pg->next->prev = pg->prev;
    pg->next = pg->prev = NULL;
}

/* Index of the page holding p, or the insertion point (*found false). */
static size_t page_index(const dx__slab *s, const void *p, int *found)
{
    uintptr_t a = (uintptr_t)p;
    size_t lo = 0, hi = s->npages;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uintptr_t base = (uintptr_t)s->pages[mid];
        if (a < base)
            hi = mid;
        else if (a >= base + DX_SLAB_PAGE)
            lo = mid + 1;
        else {
            *found = 1;
            return mid;
        }
    }
    *found = 0;
    return lo;
}

static dx__slab_page *page_new(dx__slab *s)
{
    if (s->npages == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        dx__slab_page **v = dx__realloc(s->seams, s->pages, cap * sizeof *v);
        if (!v)
            return NULL;
        s->pages = v;
        s->cap = cap;
    }
    dx__slab_page *pg = dx__alloc(s->seams, DX_SLAB_PAGE);
    if (!pg)
        return NULL;
    pg->free = NULL;
    pg->used = pg->fresh = 0;
    POISON(pg->slots, DX_SLAB_PAGE - HDR);
    int found;
    size_t i = page_index(s, pg, &found);
    memmove(&s->pages[i + 1], &s->pages[i], (s->npages - i) * sizeof *s->pages);
    s->pages[i] = pg;
    s->npages++;
    partial_push(s, pg);
    return pg;
}

void *dx__slab_alloc(dx__slab *s)
{
    dx__slab_page *pg = s->partial;
    if (!pg && (pg = page_new(s)) == NULL)
        return NULL;
    void *p;
    if (pg->free) {
        p = pg->free;
        UNPOISON(p, s->slot);
        memcpy(&pg->free, p, sizeof pg->free);
    } else {
        p = pg->slots + (size_t)pg->fresh++ * s->slot;
        UNPOISON(p, s->slot);
    }
    if (++pg->used == s->per_page)
        partial_remove(s, pg);
    s->live++;
    return p;
}

int dx__slab_owns(const dx__slab *s, const void *p)
{
    int found;
    (void)page_index(s, p, &found);
    return found;
}

void dx__slab_free(dx__slab *s, void *p)
{
    if (!p)
        return;
    int found;
    size_t i = page_index(s, p, &found);
    if (!found)
        return; /* not ours: the caller checked with dx__slab_owns */
    dx__slab_page *pg = s->pages[i];
    if (pg->used == s->per_page)
        partial_push(s, pg); /* it has room again */
    pg->used--;
    s->live--;
    if (pg->used == 0 && (pg->prev || pg->next)) {
        /* Empty and not the only page with room: back to the allocator. */
        partial_remove(s, pg);
        memmove(&s->pages[i], &s->pages[i + 1], (s->npages - i - 1) * sizeof *s->pages);
        s->npages--;
        UNPOISON(pg, DX_SLAB_PAGE);
        dx__free(s->seams, pg);
        return;
    }
    memcpy(p, &pg->free, sizeof pg->free);
    pg->free = p;
    POISON(p, s->slot);
}
