/*
 * src/core/seams.c: the default seams (allocator, randomness, clock).
 *
 * Layer: core. The only file in the library that calls getrandom(2) or
 * clock_gettime(2) directly; everything else goes through a dx_seams so tests
 * can make allocation fail, randomness repeatable and time stand still.
 */
#define _GNU_SOURCE
#include "core/seams.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>

static void *default_realloc(void *ud, void *ptr, size_t size)
{
    (void)ud;
    if (size == 0) {
        free(ptr);
        return NULL;
    }
    return realloc(ptr, size);
}

static int default_random(void *ud, void *buf, size_t len)
{
    (void)ud;
    unsigned char *p = buf;
    while (len > 0) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return DX_ERANDOM;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static uint64_t default_now_ns(void *ud)
{
    (void)ud;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static const dx_seams default_seams = {
    .realloc = default_realloc,
    .random = default_random,
    .now_ns = default_now_ns,
    .ud = NULL,
};

const dx_seams *dx_seams_default(void) { return &default_seams; }
