/*
 * src/core/slab.h: fixed-size objects carved from large pages (the
 * connections of a loop: DESIGN.md "a small struct in a slab").
 *
 * Why not malloc: malloc adds a header and rounds every object (8-16 bytes
 * of a 300-byte connection), and a million objects freed in a random order
 * leave the heap fragmented. Here an object costs its slot and nothing
 * more; freed slots are reused first (the page with free slots found in
 * O(1)), and a page whose slots are all free goes back to the allocator,
 * unless it is the only page with room (so one connection opening and
 * closing at a page boundary does not allocate and free a page each time).
 *
 * Not thread-safe: a slab belongs to one loop thread. Pages come from the
 * seams allocator (a test allocator can fail them); slots are handed out
 * uninitialised. Under AddressSanitizer a free slot is poisoned, so a use
 * after dx__slab_free is reported as it would be after free().
 */
#ifndef DX_CORE_SLAB_H
#define DX_CORE_SLAB_H

#include "duplex/duplex.h"

#include <stddef.h>
#include <stdint.h>

#define DX_SLAB_PAGE (64u * 1024u) /* bytes per page, header included */
#define DX_SLAB_ALIGN 16u          /* slot alignment (max_align_t on LP64) */

typedef struct dx__slab_page dx__slab_page;

typedef struct dx__slab {
    const dx_seams *seams;
    size_t slot;            /* bytes per slot: a multiple of DX_SLAB_ALIGN, 0: not initialised */
    size_t per_page;        /* slots per page */
    dx__slab_page *partial; /* pages with a free slot (doubly linked) */
    dx__slab_page **pages;  /* every page, sorted by address (dx__slab_free finds a slot's page) */
    size_t npages, cap;
    size_t live;            /* slots handed out */
} dx__slab;

/* Prepares an empty slab of `size`-byte objects (rounded up to
 * DX_SLAB_ALIGN); size must leave room for at least 2 slots in a page.
 * Allocates nothing. Returns 0 or DX_EINVAL. */
int dx__slab_init(dx__slab *s, const dx_seams *seams, size_t size);

/* Frees every page, live slots included: the owner frees its objects first
 * (or knows they are gone with it). */
void dx__slab_deinit(dx__slab *s);

/* A slot (uninitialised, DX_SLAB_ALIGN-aligned), or NULL: out of memory. */
void *dx__slab_alloc(dx__slab *s);

/* True when p is a slot of one of s's pages (handed out or free). */
int dx__slab_owns(const dx__slab *s, const void *p);

/* Gives back a slot from dx__slab_alloc (NULL: nothing). */
void dx__slab_free(dx__slab *s, void *p);

#endif
