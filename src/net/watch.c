/*
 * src/net/watch.c: the public fd watches (duplex/loop.h).
 *
 * Layer: net; loop thread only. A watch embeds a dx__io registered with the
 * loop's epoll (level-triggered), so its events arrive like a connection's.
 *
 * Invariants: a watch asking for nothing is not in the epoll set (so a hung
 * up descriptor does not keep reporting EPOLLHUP); a freed watch is marked
 * dead and leaves the epoll set at once, but its memory is released through
 * dx__loop_defer, after the current batch: the batch may still hold an
 * event whose data.ptr points at it, and that event finds `dead` and is
 * dropped (STYLE.md habit 6).
 */
#define _GNU_SOURCE
#include "net/loop.h"

#include "core/seams.h"

#include <errno.h>
#include <string.h>
#include <sys/epoll.h>

#define WANT_MASK (DX_WATCH_READ | DX_WATCH_WRITE)

struct dx_watch {
    dx__io io;
    dx_loop *loop;
    dx_watch_fn fn;
    void *ud;
    unsigned want;
    bool dead;
    dx__deferred gone;
    dx_list node; /* in loop->wall */
};

static uint32_t to_epoll(unsigned want)
{
    return (want & DX_WATCH_READ ? (uint32_t)EPOLLIN : 0u) | (want & DX_WATCH_WRITE ? (uint32_t)EPOLLOUT : 0u);
}

static int epoll_err(int e)
{
    switch (e) {
    case ENOMEM:
    case ENOSPC: /* max_user_watches */
        return DX_ENOMEM;
    case EBADF:
    case EPERM: /* regular files and directories: always ready, epoll refuses them */
    case EEXIST:
    case EINVAL:
        return DX_EINVAL;
    default:
        return DX_EIO;
    }
}

static void on_io(dx__io *io, uint32_t ev)
{
    dx_watch *w = dx_list_entry(io, dx_watch, io);
    if (w->dead || w->want == 0)
        return; /* freed or silenced earlier in this batch */
    unsigned e = 0;
    if (ev & EPOLLIN)
        e |= DX_WATCH_READ;
    if (ev & EPOLLOUT)
        e |= DX_WATCH_WRITE;
    e &= w->want; /* a dx_watch_set earlier in this batch narrowed it */
    if (ev & (EPOLLERR | EPOLLHUP))
        e |= DX_WATCH_ERROR;
    if (e)
        w->fn(w, w->io.fd, e, w->ud);
}

static void release(dx_loop *loop, dx__deferred *d)
{
    dx_watch *w = dx_list_entry(d, dx_watch, gone);
    dx__free(loop->seams, w);
}

dx_watch *dx_watch_new(dx_loop *loop, int fd, unsigned events, dx_watch_fn fn, void *ud, int *err)
{
    int e = DX_EINVAL;
    dx_watch *w = NULL;
    if (!loop || fd < 0 || !fn || (events & ~WANT_MASK))
        goto fail;
    e = DX_ENOMEM;
    w = dx__alloc(loop->seams, sizeof *w);
    if (!w)
        goto fail;
    memset(w, 0, sizeof *w);
    w->io = (dx__io){.fd = fd, .cb = on_io};
    w->loop = loop;
    w->fn = fn;
    w->ud = ud;
    w->gone.fn = release;
    /* Registered even when asking for nothing, so epoll judges the
     * descriptor now (EPERM for a regular file, EEXIST if watched). */
    struct epoll_event ev = {.events = to_epoll(events), .data.ptr = &w->io};
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        e = epoll_err(errno);
        goto fail;
    }
    w->io.events = ev.events;
    w->want = events;
    if (events == 0)
        (void)epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, NULL);
    dx_list_push_back(&loop->wall, &w->node);
    if (err)
        *err = 0;
    return w;
fail:
    if (w)
        dx__free(loop->seams, w);
    if (err)
        *err = e;
    return NULL;
}

int dx_watch_set(dx_watch *w, unsigned events)
{
    if (!w || w->dead || (events & ~WANT_MASK))
        return DX_EINVAL;
    if (events == w->want)
        return 0;
    struct epoll_event ev = {.events = to_epoll(events), .data.ptr = &w->io};
    int r;
    if (events == 0)
        r = epoll_ctl(w->loop->epfd, EPOLL_CTL_DEL, w->io.fd, NULL);
    else
        r = epoll_ctl(w->loop->epfd, w->want ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, w->io.fd, &ev);
    if (r < 0) {
        int m = epoll_err(errno);
        return m == DX_EINVAL ? DX_EIO : m; /* the descriptor was fine at dx_watch_new */
    }
    w->want = events;
    w->io.events = ev.events;
    return 0;
}

void dx_watch_free(dx_watch *w)
{
    if (!w || w->dead)
        return;
    w->dead = true;
    if (w->want)
        (void)epoll_ctl(w->loop->epfd, EPOLL_CTL_DEL, w->io.fd, NULL);
    dx_list_remove(&w->node);
    dx__loop_defer(w->loop, &w->gone);
}

void dx__watches_free_all(dx_loop *loop)
{
    dx_list *it;
    if (!loop->wall.next) /* zeroed loop: nothing was set up */
        return;
    while ((it = dx_list_first(&loop->wall)) != NULL) {
        dx_watch *w = dx_list_entry(it, dx_watch, node);
        dx_list_remove(it);
        dx__free(loop->seams, w);
    }
}
