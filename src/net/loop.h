/*
 * src/net/loop.h: the event loop's internal interface (epoll, coarse timer
 * wheel, deferred frees, cross-thread posts, public timers and watches).
 * Public part: duplex/loop.h. Files: loop.c (epoll, wheel, run), post.c
 * (cross-thread queue), timer.c (public ms timers), watch.c (public fd
 * watches). Knows nothing of WebSocket: includes no other public header.
 *
 * I/O: an owner embeds a dx__io and registers it; epoll's data.ptr points at
 * it. Level-triggered. Owners that close while the loop dispatches must not
 * free the memory holding a dx__io until the dispatch is over: they queue a
 * dx__deferred, which runs once the callback stack has unwound (STYLE.md
 * habit 6). dx__io_stop takes the descriptor out of every list of the loop
 * (epoll and the ready list) at once.
 *
 * Dispatch: one iteration is the batch of epoll events, then the ready list
 * (transports holding input epoll cannot see), then the deferred work queued
 * before that pass (work it queues runs in the next iteration, which does
 * not sleep). `in_batch` is true during all three: a callback is on the
 * stack.
 *
 * Layers: an upper layer hangs a per-loop context on the loop
 * (dx__loop_attach) with a destructor and an optional hook that runs before
 * the loop sleeps; the loop knows nothing of what the context holds.
 *
 * Timers: a wheel of DX_WHEEL_SLOTS slots, one tick every DX_TICK_MS. A
 * timer is an intrusive node (no allocation); starting, restarting and
 * stopping are O(1); a tick visits only its slot. Precision is one tick.
 */
#ifndef DX_NET_LOOP_H
#define DX_NET_LOOP_H

#include "core/list.h"
#include "duplex/duplex.h"
#include "duplex/loop.h"

#include <stdbool.h>
#include <stdint.h>

#define DX_TICK_MS 250u
#define DX_WHEEL_SLOTS 256u
#define DX_LOOP_RBUF (256u * 1024u) /* the per-loop read buffer */
#define DX_LOOP_LAYERS 4u           /* upper layers that may hang a context on a loop */

typedef struct dx__io dx__io;
typedef void (*dx__io_fn)(dx__io *io, uint32_t events);

struct dx__io {
    int fd;
    uint32_t events; /* EPOLLIN/EPOLLOUT currently registered (0: not registered) */
    dx__io_fn cb;
    dx_list ready;   /* in loop->ready while marked ready (zeroed or self-linked: not) */
};

static inline bool dx__io_is_ready(const dx__io *io) { return io->ready.next && dx_list_linked(&io->ready); }

typedef struct dx__timer dx__timer;
struct dx__timer {
    dx_list node;   /* linked into a wheel slot while armed */
    uint64_t due;   /* tick number */
    void (*cb)(dx__timer *t);
};

typedef struct dx__post {
    void (*fn)(void *arg);
    void (*drop)(void *arg);
    void *arg;
} dx__post;

/* A layer above net (ws, later others) keeps its per-loop state here
 * without the loop knowing what it is: `key` is the address of one of the
 * layer's own statics; `before_sleep` (optional) runs each iteration just
 * before the loop waits in epoll (e.g. to flush gathered writes); `destroy`
 * (optional) runs at dx_loop_free. */
typedef struct dx__loop_layer {
    const void *key;
    void *ctx;
    void (*before_sleep)(dx_loop *loop, void *ctx);
    void (*destroy)(dx_loop *loop, void *ctx);
} dx__loop_layer;

typedef struct dx__deferred {
    dx_list node;
    void (*fn)(dx_loop *loop, struct dx__deferred *d); /* the owner may be gone: use `loop` */
} dx__deferred;

struct dx_loop {
    int epfd;
    int wakefd;          /* eventfd: posts and stop */
    int timerfd;         /* ticks */
    dx__io wake_io, timer_io;
    const dx_seams *seams;
    const dx_log *log;
    uint64_t tick;       /* ticks since start */
    uint64_t now_ms;     /* monotonic ms, refreshed each iteration */
    uint64_t start_ms;
    size_t timers;       /* armed timers */
    dx_list wheel[DX_WHEEL_SLOTS];
    dx_list deferred;    /* run after the current batch of events (see Dispatch) */
    _Atomic bool stop;
    bool in_batch;       /* dispatching: events, ready list, public timers or deferred work */
    /* cross-thread posts (post.c): producers append to `in` under post_mu;
     * the loop swaps `in` and `out` under it and runs `out` unlocked */
    void *post_mu;       /* pthread_mutex_t, allocated (keeps pthread.h out of here) */
    dx__post *post_in;   /* under post_mu */
    size_t post_in_n, post_in_cap;
    bool post_notified;  /* under post_mu: the eventfd was written since the last swap */
    dx__post *post_out;  /* loop thread only */
    size_t post_out_cap;
    size_t post_max;
    _Atomic size_t post_queued;      /* accepted and not yet run or dropped */
    _Atomic uint64_t post_wakes;     /* eventfd writes made by posts (tests read it) */
    _Atomic int helpers; /* threads (DNS lookups) that may still post to this loop */
    /* public timers (timer.c): a min-heap on (due_ns, seq) with a slot
     * reserved for every timer that exists, so starting never allocates */
    struct dx_timer **theap;
    size_t theap_n, theap_cap, ntimers;
    uint64_t tseq;
    struct dx_timer *tfiring; /* the timer whose callback runs; NULL once it is freed */
    dx_list tall;             /* every live dx_timer */
    dx_list wall;             /* every live dx_watch */
    /* the per-loop read buffer: every read lands here */
    uint8_t *rbuf;
    /* contexts of the layers above (dx__loop_attach) */
    dx__loop_layer layers[DX_LOOP_LAYERS];
    size_t nlayers;
    /* descriptors with input buffered in user space (TLS records) that epoll
     * cannot see: served again after the batch, with a zero poll timeout.
     * Intrusive (dx__io.ready): leaving it is O(1) and needs no memory. */
    dx_list ready;
};

int dx__io_start(dx_loop *loop, dx__io *io, uint32_t events);
int dx__io_modify(dx_loop *loop, dx__io *io, uint32_t events);
void dx__io_stop(dx_loop *loop, dx__io *io);

/* Arms `t` to fire after about `ms` milliseconds (rounded up to a tick);
 * re-arming an armed timer moves it. */
void dx__timer_start(dx_loop *loop, dx__timer *t, uint64_t ms);
void dx__timer_stop(dx_loop *loop, dx__timer *t);
static inline bool dx__timer_armed(const dx__timer *t) { return t->node.next && dx_list_linked(&t->node); }
static inline void dx__timer_init(dx__timer *t, void (*cb)(dx__timer *t))
{
    dx_list_init(&t->node);
    t->cb = cb;
}

/* Runs d->fn(loop, d) after the current dispatch (or at once, outside one:
 * for work that fires no callback, e.g. a free). */
void dx__loop_defer(dx_loop *loop, dx__deferred *d);

/* Runs d->fn(loop, d) after the current dispatch, or, called outside
 * dx_loop_run, early in the next dx_loop_run: never inside the caller. For
 * work that fires callbacks (on_close after a failed write). d->node must
 * have been initialised (dx_list_init) if dx__loop_cancel may see it unqueued. */
void dx__loop_later(dx_loop *loop, dx__deferred *d);

/* Takes d out of the deferred list if it is queued there. */
static inline void dx__loop_cancel(dx__deferred *d) { dx_list_remove(&d->node); }

/* True while the loop dispatches (a callback may be on the stack). */
static inline bool dx__loop_dispatching(const dx_loop *loop) { return loop->in_batch; }

/* Asks for io->cb(io, EPOLLIN) after the current batch even though the
 * descriptor may not be readable: its transport holds input of its own.
 * Once per io (marking twice is a no-op); dx__io_stop unmarks. */
void dx__loop_ready(dx_loop *loop, dx__io *io);

/* The internal name of dx_loop_post_ex, kept for src/ws. */
static inline int dx__loop_post_ex(dx_loop *loop, void (*fn)(void *arg), void (*drop)(void *arg), void *arg)
{
    return dx_loop_post_ex(loop, fn, drop, arg);
}

/* post.c, for loop.c: set up the queue (0 or DX_ENOMEM; deinit is safe
 * after a failed or skipped init as long as the loop was zeroed), run the
 * batch queued so far, drop everything left. */
int dx__posts_init(dx_loop *loop, size_t post_max);
void dx__posts_run(dx_loop *loop);
void dx__posts_deinit(dx_loop *loop);

/* timer.c, for loop.c: the epoll_wait timeout the public timers allow (-1:
 * none armed), firing the expired ones, freeing those left at loop free. */
int dx__timers_timeout(dx_loop *loop);
void dx__timers_run(dx_loop *loop);
void dx__timers_free_all(dx_loop *loop);

/* watch.c, for loop.c: free the watches left at loop free. */
void dx__watches_free_all(dx_loop *loop);

/* A helper thread that will post to the loop starts / is done posting:
 * dx_loop_free waits until none is left. */
void dx__loop_helper_begin(dx_loop *loop);
void dx__loop_helper_end(dx_loop *loop);

/* Hangs a layer's context on the loop (copied). Returns 0, DX_EINVAL (key
 * already attached) or DX_ELIMIT (DX_LOOP_LAYERS reached). */
int dx__loop_attach(dx_loop *loop, const dx__loop_layer *layer);

/* The context attached with `key`, or NULL. */
static inline void *dx__loop_ctx(const dx_loop *loop, const void *key)
{
    for (size_t i = 0; i < loop->nlayers; i++)
        if (loop->layers[i].key == key)
            return loop->layers[i].ctx;
    return NULL;
}

#endif
