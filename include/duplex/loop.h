/*
 * duplex/loop.h: the event loop, cross-thread posts, timers and fd watches.
 *
 * Threading: one dx_loop per thread. Every function here must be called on
 * the loop's thread (from a callback, or before dx_loop_run), except
 * dx_loop_stop, dx_loop_post and dx_loop_post_ex, which any thread may call
 * while the loop exists. Callbacks run on the loop's thread, never inside
 * the call that armed them (no callback runs inside a call the application
 * made). docs/loop.md tells the whole story.
 */
#ifndef DUPLEX_LOOP_H
#define DUPLEX_LOOP_H

#include "duplex/duplex.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dx_loop dx_loop;

/* Option structs grow only at their end (new callbacks too are appended
 * as fields of the options, never inside the nested callbacks struct). The
 * dx_*_new macros pass the size the caller was compiled against: a binary
 * built with an older header keeps working with a newer library (the
 * fields it does not know are zero: their defaults), and one built with a
 * newer header is refused with DX_EINVAL by an older library only if it
 * sets a field that library does not know. Code that cannot use the macros
 * (bindings through an FFI) calls the _sized function with sizeof the
 * struct it fills. */

/* Loop settings. Zero means the default named in brackets. */
typedef struct dx_loop_options {
    const dx_seams *seams; /* NULL: default; must outlive the loop */
    const dx_log *log;     /* NULL: stderr at INFO; must outlive the loop */
    size_t post_max;       /* [65536] posts queued and not yet run; past it dx_loop_post gives DX_ELIMIT */
} dx_loop_options;

/* A new loop (epoll, eventfd wake-up, timers); `opt` is copied (NULL: all
 * defaults). NULL on failure with *err (if not NULL) set: DX_ENOMEM,
 * DX_EIO (epoll/eventfd/timerfd refused). Any thread may create a loop. */
DX_API dx_loop *dx_loop_new_sized(const dx_loop_options *opt, size_t opt_size, int *err);
#define dx_loop_new(opt, err) dx_loop_new_sized((opt), sizeof(dx_loop_options), (err))

/* Runs until dx_loop_stop. Returns 0, or DX_EIO if epoll_wait fails for a
 * reason other than EINTR. Blocks SIGPIPE on the calling thread, so a write
 * to a closed peer gives EPIPE rather than killing the process. Fires every
 * callback of the loop's objects: every callback runs from here (work queued
 * before it started, e.g. on_close after a send that failed, first). Not
 * callable from a callback. */
DX_API int dx_loop_run(dx_loop *loop);

/* Makes dx_loop_run return after the current iteration (a stop requested
 * before dx_loop_run starts is honoured). Thread-safe; fires no callback. */
DX_API void dx_loop_stop(dx_loop *loop);

/*
 * Queues fn(arg) to run on the loop's thread. Thread-safe; callable from
 * any thread and from any callback; never runs fn before returning.
 *
 * Posts from one thread run in the order they were made. Posts made while
 * the loop runs a batch of posts (e.g. from inside fn) run at the next
 * iteration, after the loop has polled its descriptors again, so a post
 * that re-posts itself cannot starve I/O. A batch wakes the loop once: only
 * the post that finds the loop not yet notified writes to its eventfd.
 *
 * Returns 0; DX_EINVAL (fn is NULL); DX_ELIMIT (post_max posts are queued
 * and not yet run: nothing was queued, retry later); DX_ENOMEM (the queue
 * could not grow; it grows by doubling up to post_max and keeps its memory,
 * so a steady flow of posts does not allocate). Work still queued when the
 * loop is freed is dropped: fn is not called.
 */
DX_API int dx_loop_post(dx_loop *loop, void (*fn)(void *arg), void *arg);

/* dx_loop_post, and if the loop is freed before fn ran, drop(arg) runs
 * instead (exactly once, on the thread calling dx_loop_free) so whatever
 * arg owns is released. drop may be NULL. Same errors; on an error neither
 * fn nor drop is called (arg still belongs to the caller). */
DX_API int dx_loop_post_ex(dx_loop *loop, void (*fn)(void *arg), void (*drop)(void *arg), void *arg);

/* Frees the loop: closes its descriptors, runs the drop function of every
 * post not run (on this thread), and frees the timers and watches still
 * alive (their handles become invalid). Servers and clients on the loop
 * (and clients) must have been freed first, and no other thread may post any more. Not
 * callable from a callback of this loop. */
DX_API void dx_loop_free(dx_loop *loop);

/* ---- timers -------------------------------------------------------------- */

/*
 * A one-shot or repeating timer with millisecond precision, for the
 * application (adapters such as hiredis or NATS). Timers are kept in a
 * min-heap that sets how long the loop sleeps; a timer never fires before
 * its time (it may fire later when the loop is busy). Timers due at the
 * same time fire in the order they were started. The connections' own
 * deadlines use a coarser internal wheel, not these.
 */
typedef struct dx_timer dx_timer;
typedef void (*dx_timer_fn)(dx_timer *t, void *ud);

/* A stopped timer calling fn(t, ud) when it fires. NULL: DX_ENOMEM (or
 * loop or fn NULL). Fires no callback; callable from any callback. */
DX_API dx_timer *dx_timer_new(dx_loop *loop, dx_timer_fn fn, void *ud);

/* Arms (or re-arms, replacing the previous setting) `t` to fire after_ms
 * milliseconds from now, then every repeat_ms (0: once). A repeat is
 * measured from the expiry pass that fired it, so a late loop fires once,
 * not a burst. A timer started during an expiry pass (even with 0 ms)
 * fires at a later one. Never fails, fires no callback; callable from any
 * callback, including t's own. */
DX_API void dx_timer_start(dx_timer *t, uint64_t after_ms, uint64_t repeat_ms);

/* Disarms `t` (no effect if not armed). From inside t's own callback it
 * cancels the repeat. Fires no callback. */
DX_API void dx_timer_stop(dx_timer *t);

/* Stops and frees `t`; NULL is ignored. Safe inside its own callback and
 * inside any other callback (a timer freed by another timer's callback in
 * the same expiry pass does not fire). Fires no callback. */
DX_API void dx_timer_free(dx_timer *t);

/* ---- fd watches ------------------------------------------------------------ */

/*
 * Readiness of a descriptor the application owns (a hiredis or NATS socket,
 * stdin as a pipe), reported by the loop's epoll, level-triggered: fn fires
 * at every iteration while the descriptor is ready for what is asked.
 * `events` passed to fn is a mask of DX_WATCH_READ, DX_WATCH_WRITE and
 * DX_WATCH_ERROR (EPOLLERR or EPOLLHUP, reported whatever was asked while
 * the watch asks for anything; stop asking, with dx_watch_set(w, 0) or
 * dx_watch_free, once the descriptor is finished, or it is reported again).
 */
typedef struct dx_watch dx_watch;
#define DX_WATCH_READ 1u
#define DX_WATCH_WRITE 2u
#define DX_WATCH_ERROR 4u /* reported only: EPOLLERR/EPOLLHUP */
typedef void (*dx_watch_fn)(dx_watch *w, int fd, unsigned events, void *ud);

/* Watches `fd` for `events` (DX_WATCH_READ | DX_WATCH_WRITE, or 0 for
 * nothing yet). Does not own fd: free the watch before closing it. One
 * watch per descriptor per loop. NULL on failure with *err (if not NULL):
 * DX_EINVAL (a bad descriptor, one epoll refuses such as a regular file, one
 * already watched on this loop, or unknown bits in events), DX_ENOMEM,
 * DX_EIO. Fires no callback; callable from any callback. */
DX_API dx_watch *dx_watch_new(dx_loop *loop, int fd, unsigned events, dx_watch_fn fn, void *ud, int *err);

/* Changes what `w` asks for (0: nothing, not even DX_WATCH_ERROR). Returns
 * 0; DX_EINVAL (unknown bits); DX_ENOMEM or DX_EIO (epoll refused: the
 * previous setting stays). Takes effect at once: an event the loop already
 * collected in this batch is narrowed to the new setting. Fires no
 * callback. Callable from any callback, including w's own. */
DX_API int dx_watch_set(dx_watch *w, unsigned events);

/* Stops watching and frees `w`; NULL is ignored. Safe inside its own
 * callback or any other: once it returns, fn is never called again, even
 * for an event the loop already collected in the same batch. Does not
 * close the descriptor. Fires no callback. */
DX_API void dx_watch_free(dx_watch *w);

#ifdef __cplusplus
}
#endif

#endif /* DUPLEX_LOOP_H */
