/*
 * src/bus/redis_loop.c: hiredis's async event hooks on a dx_loop (redis.h,
 * dx__redis_loop_attach), like the adapters hiredis ships for libuv or
 * libevent (hiredis/adapters/): one dx_watch per context, asking for what hiredis asks for;
 * freed by hiredis's cleanup hook when it frees the context.
 */
#include "bus/redis.h"
#include "core/seams.h"

#include <hiredis/async.h>

#include <stdbool.h>

typedef struct radapter {
    redisAsyncContext *ac;
    dx_watch *watch;
    unsigned events;
    bool busy;           /* an event is being handled: cleanup leaves the free to it */
    bool gone;           /* hiredis freed the context */
    void (*after)(void *ud);
    void *ud;
} radapter;

static void ad_set(radapter *a, unsigned bit, bool on)
{
    unsigned ev = on ? a->events | bit : a->events & ~bit;
    if (ev == a->events)
        return;
    a->events = ev;
    if (a->watch)
        (void)dx_watch_set(a->watch, ev);
}
static void ad_add_read(void *p) { ad_set(p, DX_WATCH_READ, true); }
static void ad_del_read(void *p) { ad_set(p, DX_WATCH_READ, false); }
static void ad_add_write(void *p) { ad_set(p, DX_WATCH_WRITE, true); }
static void ad_del_write(void *p) { ad_set(p, DX_WATCH_WRITE, false); }
static void ad_cleanup(void *p)
{
    radapter *a = p;
    dx_watch_free(a->watch);
    a->watch = NULL;
    a->gone = true;
    if (!a->busy)
        dx__free(NULL, a);
}

static void ad_event(dx_watch *wt, int fd, unsigned events, void *ud)
{
    (void)wt;
    (void)fd;
    radapter *a = ud;
    redisAsyncContext *ac = a->ac;
    void (*after)(void *) = a->after;
    void *aud = a->ud;
    /* hiredis may free ac inside either call (its cleanup hook then leaves
     * a to us) */
    a->busy = true;
    if (events & (DX_WATCH_READ | DX_WATCH_ERROR))
        redisAsyncHandleRead(ac);
    if (!a->gone && (events & DX_WATCH_WRITE))
        redisAsyncHandleWrite(ac);
    if (a->gone)
        dx__free(NULL, a);
    else
        a->busy = false;
    if (after)
        after(aud);
}

int dx__redis_loop_attach(dx_loop *loop, redisAsyncContext *ac, void (*after)(void *ud), void *ud)
{
    radapter *a = dx__alloc(NULL, sizeof *a);
    if (!a)
        return DX_ENOMEM;
    a->ac = ac;
    a->events = 0;
    a->busy = a->gone = false;
    a->after = after;
    a->ud = ud;
    int err = 0;
    a->watch = dx_watch_new(loop, ac->c.fd, 0, ad_event, a, &err);
    if (!a->watch) {
        dx__free(NULL, a);
        return err ? err : DX_ENOMEM;
    }
    ac->ev.data = a;
    ac->ev.addRead = ad_add_read;
    ac->ev.delRead = ad_del_read;
    ac->ev.addWrite = ad_add_write;
    ac->ev.delWrite = ad_del_write;
    ac->ev.cleanup = ad_cleanup;
    return 0;
}
