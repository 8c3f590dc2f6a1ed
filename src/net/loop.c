/*
 * src/net/loop.c: the event loop (see loop.h and duplex/loop.h).
 *
 * Layer: net. Owns time and I/O for one thread: epoll (level-triggered),
 * an eventfd for cross-thread posts (post.c) and stop, a timerfd ticking
 * the timer wheel every DX_TICK_MS, and an epoll_wait timeout set by the
 * public timers (timer.c), and the hooks of the layers above, run before
 * each sleep. No knowledge of WebSocket.
 *
 * One iteration: the layers' before-sleep hooks (ws flushes gathered
 * writes); wait (0 when descriptors are marked ready, else until the
 * next public timer, else forever); dispatch the batch of events (posts
 * run from the eventfd's event); serve the ready list; fire expired public
 * timers; then, outside the batch, run deferred frees.
 *
 * Invariants: a timer is linked in wheel[due % DX_WHEEL_SLOTS] iff armed;
 * `timers` counts armed timers; deferred work runs only after the batch of
 * epoll events and the ready list, so memory referenced by a pending event
 * is never freed while that event may still be dispatched; a stopped io is
 * in no list of the loop (epoll, ready). Every list walked while callbacks
 * run is consumed one node at a time from its head (or spliced into a local
 * head first), so a callback may unlink any node, including the next one.
 */
#define _GNU_SOURCE
#include "net/loop.h"

#include "core/log.h"
#include "core/opts.h"
#include "core/seams.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256

int dx__io_start(dx_loop *loop, dx__io *io, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = io};
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, io->fd, &ev) < 0)
        return errno == ENOMEM ? DX_ENOMEM : DX_EIO;
    io->events = events;
    return 0;
}

int dx__io_modify(dx_loop *loop, dx__io *io, uint32_t events)
{
    if (io->events == events)
        return 0;
    struct epoll_event ev = {.events = events, .data.ptr = io};
    if (epoll_ctl(loop->epfd, EPOLL_CTL_MOD, io->fd, &ev) < 0)
        return errno == ENOMEM ? DX_ENOMEM : DX_EIO;
    io->events = events;
    return 0;
}

void dx__io_stop(dx_loop *loop, dx__io *io)
{
    if (io->fd >= 0)
        (void)epoll_ctl(loop->epfd, EPOLL_CTL_DEL, io->fd, NULL);
    io->events = 0;
    if (dx__io_is_ready(io))
        dx_list_remove(&io->ready);
}

static uint64_t now_ms(const dx_loop *loop) { return dx__now_ns(loop->seams) / 1000000u; }

void dx__timer_start(dx_loop *loop, dx__timer *t, uint64_t ms)
{
    if (dx__timer_armed(t))
        dx__timer_stop(loop, t);
    uint64_t ticks = (ms + DX_TICK_MS - 1) / DX_TICK_MS;
    if (ticks == 0)
        ticks = 1;
    t->due = loop->tick + ticks;
    dx_list_push_back(&loop->wheel[t->due % DX_WHEEL_SLOTS], &t->node);
    loop->timers++;
}

void dx__timer_stop(dx_loop *loop, dx__timer *t)
{
    if (!dx__timer_armed(t))
        return;
    dx_list_remove(&t->node);
    loop->timers--;
}

static void on_tick(dx__io *io, uint32_t events)
{
    (void)events;
    dx_loop *loop = dx_list_entry(io, dx_loop, timer_io);
    uint64_t n = 0;
    if (read(loop->timerfd, &n, sizeof n) != (ssize_t)sizeof n)
        return;
    loop->now_ms = now_ms(loop);
    /* A late wake-up catches up on every missed tick (bounded by the wheel). */
    if (n > DX_WHEEL_SLOTS)
        n = DX_WHEEL_SLOTS;
    while (n--) {
        loop->tick++;
        dx_list *slot = &loop->wheel[loop->tick % DX_WHEEL_SLOTS];
        dx_list expired = DX_LIST_INIT(expired);
        dx_list_foreach_safe(it, tmp, slot)
        {
            dx__timer *t = dx_list_entry(it, dx__timer, node);
            if (t->due <= loop->tick) {
                dx_list_remove(&t->node);
                dx_list_push_back(&expired, &t->node);
            }
        }
        /* Fire one at a time: a callback may stop or restart any timer,
         * including the others that expired with it. */
        dx_list *it;
        while ((it = dx_list_first(&expired)) != NULL) {
            dx__timer *t = dx_list_entry(it, dx__timer, node);
            dx_list_remove(&t->node);
            loop->timers--;
            t->cb(t);
        }
    }
}

static void on_wake(dx__io *io, uint32_t events)
{
    (void)events;
    dx_loop *loop = dx_list_entry(io, dx_loop, wake_io);
    uint64_t n;
    ssize_t r = read(loop->wakefd, &n, sizeof n);
    (void)r; /* EAGAIN: another wake-up already drained it */
    /* read before the swap: a post that misses this batch writes again */
    dx__posts_run(loop);
}

/* Runs the work deferred before this pass. Work it queues (an on_close
 * handler whose send fails, a free) waits for the next iteration, which
 * does not sleep: a chain of callbacks that keeps queueing work cannot
 * starve I/O, and FIFO order is kept (an endpoint's own free stays behind
 * its connections'). The pass is moved to a local head and consumed from
 * the front, so work cancelled meanwhile (dx__loop_cancel) just leaves it. */
static void run_deferred(dx_loop *loop)
{
    dx_list pass;
    if (dx_list_empty(&loop->deferred))
        return;
    dx_list_take(&pass, &loop->deferred);
    dx_list *it;
    while ((it = dx_list_first(&pass)) != NULL) {
        dx__deferred *d = dx_list_entry(it, dx__deferred, node);
        dx_list_remove(it);
        d->fn(loop, d);
    }
}

void dx__loop_defer(dx_loop *loop, dx__deferred *d)
{
    if (loop->in_batch) {
        dx_list_push_back(&loop->deferred, &d->node);
        return;
    }
    d->fn(loop, d);
}

void dx__loop_later(dx_loop *loop, dx__deferred *d) { dx_list_push_back(&loop->deferred, &d->node); }

void dx__loop_ready(dx_loop *loop, dx__io *io)
{
    if (!dx__io_is_ready(io))
        dx_list_push_back(&loop->ready, &io->ready);
}

/* Serves the descriptors marked ready before this round; those that mark
 * themselves again go to the next round. The round is moved to a local
 * head and consumed from the front: a callback that stops another io of
 * the round (closing its connection) unlinks it, and it is not served. */
static void run_ready(dx_loop *loop)
{
    dx_list round;
    dx_list_take(&round, &loop->ready);
    dx_list *it;
    while ((it = dx_list_first(&round)) != NULL) {
        dx_list_remove(it);
        dx__io *io = dx_list_entry(it, dx__io, ready);
        io->cb(io, EPOLLIN);
    }
}

int dx__loop_attach(dx_loop *loop, const dx__loop_layer *layer)
{
    if (dx__loop_ctx(loop, layer->key))
        return DX_EINVAL;
    if (loop->nlayers == DX_LOOP_LAYERS)
        return DX_ELIMIT;
    loop->layers[loop->nlayers++] = *layer;
    return 0;
}

/* The layers' hooks before the loop sleeps, as part of a batch (what they
 * close is freed after them); deferred work they cause may produce more
 * for them, so they run again until nothing is deferred. */
static void before_sleep(dx_loop *loop)
{
    /* Dispatching: a hook may close connections (a failed write) or fire
     * callbacks that send to others; what they defer runs in the next
     * iteration, which does not sleep (dx_loop_run sees the deferred work),
     * and what they gather is flushed by the next call of the hooks. */
    loop->in_batch = true;
    for (size_t i = 0; i < loop->nlayers; i++)
        if (loop->layers[i].before_sleep)
            loop->layers[i].before_sleep(loop, loop->layers[i].ctx);
    loop->in_batch = false;
}

static dx_loop *loop_new(const dx_loop_options *opt, int *err);

dx_loop *dx_loop_new_sized(const dx_loop_options *user, size_t size, int *err)
{
    dx_loop_options opt;
    if (dx__opts_copy(&opt, sizeof opt, user, size)) {
        if (err)
            *err = DX_EINVAL;
        return NULL;
    }
    return loop_new(&opt, err);
}

static dx_loop *loop_new(const dx_loop_options *opt, int *err)
{
    const dx_seams *seams = opt ? opt->seams : NULL;
    int e = DX_ENOMEM;
    dx_loop *loop = dx__alloc(seams, sizeof *loop);
    if (!loop)
        goto fail;
    memset(loop, 0, sizeof *loop);
    loop->seams = seams;
    loop->log = opt ? opt->log : NULL;
    loop->epfd = loop->wakefd = loop->timerfd = -1;
    for (size_t i = 0; i < DX_WHEEL_SLOTS; i++)
        dx_list_init(&loop->wheel[i]);
    dx_list_init(&loop->deferred);
    dx_list_init(&loop->tall);
    dx_list_init(&loop->wall);
    dx_list_init(&loop->ready);
    atomic_init(&loop->stop, false);
    atomic_init(&loop->helpers, 0);
    loop->rbuf = dx__alloc(seams, DX_LOOP_RBUF);
    loop->post_mu = dx__alloc(seams, sizeof(pthread_mutex_t));
    if (loop->post_mu)
        pthread_mutex_init(loop->post_mu, NULL); /* before any failure: free destroys it */
    if (!loop->rbuf || !loop->post_mu)
        goto fail;
    if (dx__posts_init(loop, opt ? opt->post_max : 0))
        goto fail;
    e = DX_EIO;
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    loop->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    loop->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (loop->epfd < 0 || loop->wakefd < 0 || loop->timerfd < 0)
        goto fail;
    struct itimerspec its = {.it_interval = {0, DX_TICK_MS * 1000000L}, .it_value = {0, DX_TICK_MS * 1000000L}};
    if (timerfd_settime(loop->timerfd, 0, &its, NULL) < 0)
        goto fail;
    loop->wake_io = (dx__io){.fd = loop->wakefd, .cb = on_wake};
    loop->timer_io = (dx__io){.fd = loop->timerfd, .cb = on_tick};
    if (dx__io_start(loop, &loop->wake_io, EPOLLIN) || dx__io_start(loop, &loop->timer_io, EPOLLIN))
        goto fail;
    loop->now_ms = loop->start_ms = now_ms(loop);
    if (err)
        *err = 0;
    return loop;
fail:
    if (err)
        *err = e;
    dx_loop_free(loop);
    return NULL;
}

void dx_loop_free(dx_loop *loop)
{
    if (!loop)
        return;
    const dx_seams *s = loop->seams;
    /* Helper threads (DNS) still running would post into freed memory: wait
     * for them; getaddrinfo's own timeouts bound this. */
    while (atomic_load(&loop->helpers) > 0) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    while (loop->nlayers > 0) {
        dx__loop_layer *l = &loop->layers[--loop->nlayers];
        if (l->destroy)
            l->destroy(loop, l->ctx);
    }
    if (loop->epfd >= 0)
        close(loop->epfd);
    if (loop->wakefd >= 0)
        close(loop->wakefd);
    if (loop->timerfd >= 0)
        close(loop->timerfd);
    /* After the descriptors are closed: a drop function may free what a
     * watch pointed at. */
    dx__watches_free_all(loop);
    dx__timers_free_all(loop);
    dx__posts_deinit(loop);
    if (loop->post_mu) {
        pthread_mutex_destroy(loop->post_mu);
        dx__free(s, loop->post_mu);
    }
    dx__free(s, loop->rbuf);
    dx__free(s, loop);
}

void dx__loop_helper_begin(dx_loop *loop) { atomic_fetch_add(&loop->helpers, 1); }
void dx__loop_helper_end(dx_loop *loop) { atomic_fetch_sub(&loop->helpers, 1); }

void dx_loop_stop(dx_loop *loop)
{
    atomic_store(&loop->stop, true);
    uint64_t one = 1;
    ssize_t r = write(loop->wakefd, &one, sizeof one);
    (void)r;
}

int dx_loop_run(dx_loop *loop)
{
    sigset_t pipe_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, NULL);

    struct epoll_event events[MAX_EVENTS];
    /* A stop requested before run (or during the last run) is honoured; the
     * flag is cleared on the way out so the loop can run again. */
    while (!atomic_load(&loop->stop)) {
        before_sleep(loop);
        /* Work already waiting (ready input, or deferred work queued outside
         * the loop or by a before-sleep hook, e.g. a failed write): do not
         * sleep; else sleep until the next public timer. */
        bool busy = !dx_list_empty(&loop->ready) || !dx_list_empty(&loop->deferred);
        int n = epoll_wait(loop->epfd, events, MAX_EVENTS, busy ? 0 : dx__timers_timeout(loop));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            dx__log(loop->log, DX_LOG_ERROR, "loop: epoll_wait failed: %s", strerror(errno));
            return DX_EIO;
        }
        loop->now_ms = now_ms(loop);
        loop->in_batch = true;
        for (int i = 0; i < n; i++) {
            dx__io *io = events[i].data.ptr;
            io->cb(io, events[i].events);
        }
        if (!dx_list_empty(&loop->ready))
            run_ready(loop);
        dx__timers_run(loop);
        /* Still dispatching: deferred work fires callbacks (on_close) that
         * may close or free more; that is deferred to the next iteration. */
        run_deferred(loop);
        loop->in_batch = false;
    }
    before_sleep(loop); /* what was gathered in the last iteration goes out too */
    atomic_store(&loop->stop, false);
    /* Ready ios stay marked: their owners unmark them (dx__io_stop) when
     * they are freed before the loop runs again. */
    return 0;
}
