/* tests/unit/testutil.c: see testutil.h. */
#define _GNU_SOURCE
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Each block carries its size in front so realloc-as-free can count. */
static void *ts_realloc(void *ud, void *ptr, size_t size)
{
    dx_test_seams *ts = ud;
    if (size == 0) {
        if (ptr) {
            ts->live--;
            free(ptr);
        }
        return NULL;
    }
    ts->calls++;
    if (ts->fail_at > 0 && ts->calls == ts->fail_at)
        return NULL;
    void *p = realloc(ptr, size);
    if (p && !ptr)
        ts->live++;
    return p;
}

static int ts_random(void *ud, void *buf, size_t len)
{
    dx_test_seams *ts = ud;
    unsigned char *p = buf;
    for (size_t i = 0; i < len; i++) {
        uint64_t x = ts->rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ts->rng = x;
        p[i] = (unsigned char)(x >> 24);
    }
    return 0;
}

static uint64_t ts_now(void *ud) { return ((dx_test_seams *)ud)->now; }

void dx_test_seams_init(dx_test_seams *ts)
{
    memset(ts, 0, sizeof *ts);
    ts->seams.realloc = ts_realloc;
    ts->seams.random = ts_random;
    ts->seams.now_ns = ts_now;
    ts->seams.ud = ts;
    ts->rng = 1;
}

void dx_test_filter_from_env(void)
{
    const char *f = getenv("DX_TEST_FILTER");
    if (f && *f)
        cmocka_set_test_filter(f);
}

uint64_t dx_test_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void dx_test_noop_watch(dx_watch *w, int fd, unsigned events, void *ud)
{
    (void)w;
    (void)fd;
    (void)events;
    (void)ud;
}

void dx_test_deadline_in(struct timespec *ts, unsigned ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}
