/*
 * src/ws/ws_loop.c: the ws layer's per-loop context (see dx__wsl in ws.h).
 *
 * Layer: ws. Hung on a dx_loop with dx__loop_attach, so src/net keeps no
 * WebSocket state. It holds what a loop's connections share:
 *  - the list of send queues gathered during this iteration, flushed by the
 *    before-sleep hook: each connection that got output is written once,
 *    with one writev, however many messages it got and from whichever
 *    callbacks;
 *  - the gather arena: small private frames (echo replies, control frames,
 *    masked client frames) are copied into 64 KiB chunks shared by all
 *    connections; the hook writes every arena segment or moves it into its
 *    connection's own memory, so after the hook the arena is empty and its
 *    chunks are reused (no allocation per message once warm);
 *  - the pool of send-queue blocks, bounded by the most ever in use;
 *  - the mask-key pool for client frames and the masking scratch buffer.
 *
 * Invariants: a queue is in `pend` iff it holds bytes not yet offered to the
 * kernel and its connection is not waiting for EPOLLOUT; an arena segment
 * exists only in a queue in `pend`; outside the hook the arena's chunks
 * hold bytes only of queues in `pend`.
 */
#include "ws/ws.h"

#include "core/seams.h"

#include <string.h>

#define KEEP_CHUNKS 16        /* arena chunks always kept between iterations (1 MiB) */
#define ARENA_PERIOD_MS 1000u /* how long the busiest pass's chunks are kept */

static const char ws_layer_key; /* identifies this layer's context on a loop */

/* After the flush: every chunk is free again. Chunks are kept for reuse as
 * many as the busiest pass of the last period used (at least KEEP_CHUNKS),
 * so a steady fan-out of private copies allocates nothing, and memory taken
 * by a burst goes back within two periods once the burst is over. */
static void arena_reset(dx__wsl *w)
{
    if (w->arena_used > w->arena_peak)
        w->arena_peak = w->arena_used;
    uint64_t now = w->loop->now_ms;
    if (now - w->arena_since >= ARENA_PERIOD_MS) {
        w->arena_keep = w->arena_peak;
        w->arena_peak = w->arena_used;
        w->arena_since = now;
    }
    size_t keep = w->arena_keep > KEEP_CHUNKS ? w->arena_keep : KEEP_CHUNKS;
    if (w->arena_peak > keep)
        keep = w->arena_peak;
    dx__chunk **pp = &w->chunks;
    size_t kept = 0;
    while (*pp) {
        dx__chunk *ch = *pp;
        if (kept < keep) {
            ch->used = 0;
            kept++;
            pp = &ch->next;
            continue;
        }
        *pp = ch->next;
        dx__free(w->seams, ch);
        w->nchunks--;
    }
    w->cur = w->chunks;
    w->arena_used = 0;
}

uint8_t *dx__wsl_arena(dx__wsl *w, size_t len)
{
    dx__chunk *ch = w->cur;
    while (ch && ch->used + len > DX_WS_CHUNK) {
        ch = ch->next;
        if (ch)
            ch->used = 0; /* chunks after cur are free */
    }
    if (!ch) {
        ch = dx__alloc(w->seams, sizeof *ch);
        if (!ch)
            return NULL;
        ch->used = 0;
        ch->next = NULL;
        dx__chunk **pp = &w->chunks;
        while (*pp)
            pp = &(*pp)->next;
        *pp = ch;
        w->nchunks++;
    }
    w->cur = ch;
    if (ch->used == 0)
        w->arena_used++;
    uint8_t *p = ch->data + ch->used;
    ch->used += len;
    return p;
}

/* The pool is empty: a new block (dx__wsl_block's slow half). */
dx__wq *dx__wsl_block_new(dx__wsl *w)
{
    dx__wq *b = dx__alloc(w->seams, sizeof *b);
    return b ? dx__wsl_block_fresh(w, b) : NULL;
}

/* dx__wsl_unblock's slow half: the pool already holds as many as were ever
 * in use at once (or DX_WS_KEEP_BLOCKS), so this one is freed. */
void dx__wsl_unblock_free(dx__wsl *w, dx__wq *b)
{
    w->inuse--;
    dx__free(w->seams, b);
}

int dx__wsl_mask_key(dx__wsl *w, uint8_t key[4])
{
    if (w->key_pos + 4 > sizeof w->keys) {
        if (dx__random(w->seams, w->keys, sizeof w->keys))
            return DX_ERANDOM;
        w->key_pos = 0;
    }
    memcpy(key, w->keys + w->key_pos, 4);
    w->key_pos += 4;
    return 0;
}

/* Before the loop sleeps: one flush per connection that got output. A
 * flush may close connections and fire callbacks that send to others (even
 * to ones already flushed): they join the list and are flushed in this pass. */
static void before_sleep(dx_loop *loop, void *ctx)
{
    (void)loop;
    dx__wsl *w = ctx;
    dx_list *it;
    while ((it = dx_list_first(&w->pend)) != NULL) {
        dx__wq *q = dx_list_entry(it, dx__wq, pend);
        dx_list_remove(it); /* leaves it unlinked */
        dx__conn_flush(q->conn);
    }
    arena_reset(w);
}

void *dx__wsl_conn_alloc(dx__wsl *w, size_t size)
{
    for (size_t i = 0; i < DX_WS_SLABS; i++) {
        dx__slab *s = &w->conns[i];
        if (!s->slot && dx__slab_init(s, w->seams, size) != 0)
            break; /* too large for a page */
        if (s->slot == (size + DX_SLAB_ALIGN - 1) / DX_SLAB_ALIGN * DX_SLAB_ALIGN)
            return dx__slab_alloc(s);
    }
    return dx__alloc(w->seams, size);
}

void dx__wsl_conn_free(dx__wsl *w, void *p)
{
    for (size_t i = 0; i < DX_WS_SLABS && w->conns[i].slot; i++) {
        if (dx__slab_owns(&w->conns[i], p)) {
            dx__slab_free(&w->conns[i], p);
            return;
        }
    }
    dx__free(w->seams, p);
}

static void destroy(dx_loop *loop, void *ctx)
{
    dx__wsl *w = ctx;
    dx__timer_stop(loop, &w->tick);
    dx__loop_cancel(&w->reap); /* its connections died with their endpoint */
    dx__http_streams_drop(loop); /* streams whose on_close never ran: the loop will not run again */
    for (size_t i = 0; i < DX_WS_SLABS; i++)
        dx__slab_deinit(&w->conns[i]); /* connections still allocated died with their endpoint */
    while (w->chunks) {
        dx__chunk *ch = w->chunks;
        w->chunks = ch->next;
        dx__free(w->seams, ch);
    }
    while (w->free) {
        dx__wq *b = w->free;
        w->free = b->next;
        dx__free(w->seams, b);
    }
    dx__free(w->seams, w->scratch);
    dx__free(w->seams, w);
}

dx__wsl *dx__wsl_find(dx_loop *loop) { return dx__loop_ctx(loop, &ws_layer_key); }

dx__wsl *dx__wsl_get(dx_loop *loop)
{
    dx__wsl *w = dx__loop_ctx(loop, &ws_layer_key);
    if (w)
        return w;
    w = dx__alloc(loop->seams, sizeof *w);
    if (!w)
        return NULL;
    memset(w, 0, sizeof *w);
    w->loop = loop;
    w->seams = loop->seams;
    dx_list_init(&w->pend);
    for (size_t i = 0; i < DX_WHEEL_SLOTS; i++)
        dx_list_init(&w->wheel[i]);
    dx_list_init(&w->expired);
    dx__timer_init(&w->tick, dx__conn_wheel_tick);
    dx_list_init(&w->dead);
    dx_list_init(&w->reap.node);
    w->reap.fn = dx__conn_reap;
    w->key_pos = sizeof w->keys;
    w->scratch = dx__alloc(loop->seams, DX_WS_SCRATCH);
    dx__loop_layer l = {.key = &ws_layer_key, .ctx = w, .before_sleep = before_sleep, .destroy = destroy};
    if (!w->scratch || dx__loop_attach(loop, &l)) {
        dx__free(loop->seams, w->scratch);
        dx__free(loop->seams, w);
        return NULL;
    }
    return w;
}
