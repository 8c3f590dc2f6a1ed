/*
 * tests/unit/testutil.h: seams and helpers shared by the unit tests.
 *
 *  - a counting allocator that can fail its Nth call (STYLE.md habit 4) and
 *    reports live allocations, so "no leak after failure" is checkable;
 *  - a deterministic random seam (xorshift from a seed);
 *  - a settable clock;
 *  - the monotonic clock in milliseconds, for bounded waits;
 *  - a do-nothing fd-watch callback;
 *  - a CLOCK_REALTIME deadline for pthread_cond_timedwait.
 */
#ifndef DX_TESTUTIL_H
#define DX_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "duplex/duplex.h"
#include "duplex/loop.h"

typedef struct dx_test_seams {
    dx_seams seams;        /* pass &ts.seams to the code under test */
    long fail_at;          /* 1-based index of the allocation to fail; 0: never */
    long calls;            /* allocations (not frees) attempted so far */
    long live;             /* allocations not yet freed */
    uint64_t rng;          /* xorshift state */
    uint64_t now;          /* what now_ns returns */
} dx_test_seams;

/* Initialises `ts` with allocation that never fails, seed 1 and time 0. */
void dx_test_seams_init(dx_test_seams *ts);

/* Call first in main: when DX_TEST_FILTER is set (the TSan build sets it,
 * see tests/unit/CMakeLists.txt), only the tests whose names match that
 * cmocka pattern run. */
void dx_test_filter_from_env(void);

/* CLOCK_MONOTONIC in milliseconds: for the bounds of waits on real events. */
uint64_t dx_test_mono_ms(void);

/* A watch callback that does nothing (dx_watch_fn). */
void dx_test_noop_watch(dx_watch *w, int fd, unsigned events, void *ud);

/* *ts = CLOCK_REALTIME now + `ms` (for pthread_cond_timedwait). */
struct timespec;
void dx_test_deadline_in(struct timespec *ts, unsigned ms);

#endif
