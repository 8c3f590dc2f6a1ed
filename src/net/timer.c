/*
 * src/net/timer.c: the public millisecond timers (duplex/loop.h).
 *
 * Layer: net; loop thread only. The connections' deadlines stay on the
 * coarse wheel of loop.c (one tick per 250 ms, O(1) per timer); these are
 * for the application (hiredis or NATS timeouts) and need milliseconds, so
 * they live in a binary min-heap keyed on (due_ns, seq) whose top sets the
 * epoll_wait timeout. seq is a start counter: equal deadlines fire in the
 * order they were started.
 *
 * Invariants: t->idx is t's index in the heap while armed, NO_IDX when not;
 * theap_cap >= ntimers (every existing timer has a reserved slot), so
 * dx_timer_start never allocates and never fails. An expiry pass compares
 * with one clock reading taken when it starts and pops one timer at a time
 * before calling it, so a callback may stop, restart or free any timer
 * (itself included) and a re-armed repeat (due after that reading) cannot
 * fire twice in one pass. `tfiring` is the popped timer; freeing it clears
 * the field, which tells the pass not to touch it again.
 */
#define _GNU_SOURCE
#include "net/loop.h"

#include "core/seams.h"

#include <limits.h>
#include <string.h>

#define NO_IDX ((size_t)-1)

struct dx_timer {
    dx_loop *loop;
    dx_timer_fn fn;
    void *ud;
    uint64_t due_ns;
    uint64_t seq;
    uint64_t repeat_ms;
    size_t idx;
    bool repeat_pending; /* while firing: re-arm with repeat_ms afterwards */
    dx_list node;        /* in loop->tall */
};

static bool before(const dx_timer *a, const dx_timer *b)
{
    return a->due_ns < b->due_ns || (a->due_ns == b->due_ns && a->seq < b->seq);
}

static void heap_set(dx_loop *loop, size_t i, dx_timer *t)
{
    loop->theap[i] = t;
    t->idx = i;
}

static void sift_up(dx_loop *loop, size_t i)
{
    dx_timer *t = loop->theap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!before(t, loop->theap[parent]))
            break;
        heap_set(loop, i, loop->theap[parent]);
        i = parent;
    }
    heap_set(loop, i, t);
}

static void sift_down(dx_loop *loop, size_t i)
{
    dx_timer *t = loop->theap[i];
    size_t n = loop->theap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && before(loop->theap[c + 1], loop->theap[c]))
            c++;
        if (!before(loop->theap[c], t))
            break;
        heap_set(loop, i, loop->theap[c]);
        i = c;
    }
    heap_set(loop, i, t);
}

static void heap_remove(dx_loop *loop, dx_timer *t)
{
    size_t i = t->idx;
    t->idx = NO_IDX;
    dx_timer *last = loop->theap[--loop->theap_n];
    if (last == t)
        return;
    heap_set(loop, i, last);
    if (i > 0 && before(last, loop->theap[(i - 1) / 2]))
        sift_up(loop, i);
    else
        sift_down(loop, i);
}

static void arm(dx_timer *t, uint64_t from_ns, uint64_t after_ms)
{
    dx_loop *loop = t->loop;
    if (t->idx != NO_IDX)
        heap_remove(loop, t);
    uint64_t add = after_ms > (UINT64_MAX - from_ns) / 1000000u ? UINT64_MAX - from_ns : after_ms * 1000000u;
    t->due_ns = from_ns + add;
    t->seq = loop->tseq++;
    loop->theap_n++; /* <= theap_cap: a slot is reserved per timer */
    heap_set(loop, loop->theap_n - 1, t);
    sift_up(loop, loop->theap_n - 1);
}

dx_timer *dx_timer_new(dx_loop *loop, dx_timer_fn fn, void *ud)
{
    if (!loop || !fn)
        return NULL;
    if (loop->ntimers == loop->theap_cap) {
        size_t cap = loop->theap_cap ? loop->theap_cap * 2 : 16;
        dx_timer **v = dx__realloc(loop->seams, loop->theap, cap * sizeof *v);
        if (!v)
            return NULL;
        loop->theap = v;
        loop->theap_cap = cap;
    }
    dx_timer *t = dx__alloc(loop->seams, sizeof *t);
    if (!t)
        return NULL;
    memset(t, 0, sizeof *t);
    t->loop = loop;
    t->fn = fn;
    t->ud = ud;
    t->idx = NO_IDX;
    dx_list_push_back(&loop->tall, &t->node);
    loop->ntimers++;
    return t;
}

void dx_timer_start(dx_timer *t, uint64_t after_ms, uint64_t repeat_ms)
{
    /* A fresh clock reading, not the iteration's: a timer started late in a
     * long callback must still wait its whole delay. */
    t->repeat_ms = repeat_ms;
    t->repeat_pending = false;
    arm(t, dx__now_ns(t->loop->seams), after_ms);
}

void dx_timer_stop(dx_timer *t)
{
    t->repeat_pending = false;
    if (t->idx != NO_IDX)
        heap_remove(t->loop, t);
}

void dx_timer_free(dx_timer *t)
{
    if (!t)
        return;
    dx_loop *loop = t->loop;
    dx_timer_stop(t);
    if (loop->tfiring == t)
        loop->tfiring = NULL;
    dx_list_remove(&t->node);
    loop->ntimers--;
    dx__free(loop->seams, t);
}

int dx__timers_timeout(dx_loop *loop)
{
    if (loop->theap_n == 0)
        return -1;
    uint64_t due = loop->theap[0]->due_ns, now = dx__now_ns(loop->seams);
    if (due <= now)
        return 0;
    /* rounded up: epoll_wait may not return before the deadline we need */
    uint64_t ms = (due - now + 999999u) / 1000000u;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

void dx__timers_run(dx_loop *loop)
{
    if (loop->theap_n == 0)
        return;
    uint64_t now = dx__now_ns(loop->seams), pass_seq = loop->tseq;
    /* Only timers started before the pass: one (re)started by a callback
     * with 0 ms waits for the next iteration instead of spinning here. */
    while (loop->theap_n > 0 && loop->theap[0]->due_ns <= now && loop->theap[0]->seq < pass_seq) {
        dx_timer *t = loop->theap[0];
        heap_remove(loop, t);
        t->repeat_pending = t->repeat_ms > 0;
        loop->tfiring = t;
        t->fn(t, t->ud);
        if (loop->tfiring != t)
            continue; /* freed inside: gone */
        loop->tfiring = NULL;
        if (t->repeat_pending) {
            t->repeat_pending = false;
            arm(t, now, t->repeat_ms);
        }
    }
}

void dx__timers_free_all(dx_loop *loop)
{
    dx_list *it;
    if (loop->tall.next) /* zeroed loop: nothing was set up */
        while ((it = dx_list_first(&loop->tall)) != NULL)
            dx_timer_free(dx_list_entry(it, dx_timer, node));
    dx__free(loop->seams, loop->theap);
    loop->theap = NULL;
    loop->theap_cap = loop->theap_n = 0;
}
