/*
 * src/net/loop.h: the event loop's internal interface (epoll, coarse timer
 * wheel, deferred frees, cross-thread posts). Public part: duplex/server.h.
 *
 * I/O: an owner embeds a dx__io and registers it; epoll's data.ptr points at
 * it. Level-triggered. Owners that close during a batch of events must not
 * free the memory holding a dx__io until the batch is over: they call
 * dx__loop_defer_free, which runs after the batch (STYLE.md habit 6).
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
#include "duplex/server.h"

#include <stdbool.h>
#include <stdint.h>

#define DX_TICK_MS 250u
#define DX_WHEEL_SLOTS 256u
#define DX_LOOP_RBUF (256u * 1024u) /* the per-loop read buffer */
#define DX_LOOP_LAYERS 4u           /* upper layers that may hang a context on a loop */

typedef struct dx__io dx__io;
typedef struct dx_loop dx_loop;
typedef void (*dx__io_fn)(dx__io *io, uint32_t events);

struct dx__io {
    int fd;
    uint32_t events; /* EPOLLIN/EPOLLOUT currently registered (0: not registered) */
    dx__io_fn cb;
};

typedef struct dx__timer dx__timer;
struct dx__timer {
    dx_list node;   /* linked into a wheel slot while armed */
    uint64_t due;   /* tick number */
    void (*cb)(dx__timer *t);
};

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
    dx_list deferred;    /* run after the current batch of events */
    _Atomic bool stop;
    bool in_batch;
    /* cross-thread posts */
    void *post_mu;       /* pthread_mutex_t, allocated (keeps pthread.h out of here) */
    dx_list posts;
    _Atomic int helpers; /* threads (DNS lookups) that may still post to this loop */
    /* the per-loop read buffer: every read lands here */
    uint8_t *rbuf;
    /* contexts of the layers above (dx__loop_attach) */
    dx__loop_layer layers[DX_LOOP_LAYERS];
    size_t nlayers;
    /* descriptors with input buffered in user space (TLS records) that epoll
     * cannot see: served again after the batch, with a zero poll timeout */
    dx__io **ready;
    size_t nready, ready_cap;
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

/* Runs d->fn(loop, d) after the current batch of events (or at once, outside one). */
void dx__loop_defer(dx_loop *loop, dx__deferred *d);

/* Asks for io->cb(io, EPOLLIN) after the current batch even though the
 * descriptor may not be readable: its transport holds input of its own. */
void dx__loop_ready(dx_loop *loop, dx__io *io);

/* dx_loop_post with `drop(arg)` called instead of fn when the loop is freed
 * before running it (so what arg owns is not leaked). */
int dx__loop_post_ex(dx_loop *loop, void (*fn)(void *arg), void (*drop)(void *arg), void *arg);

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
