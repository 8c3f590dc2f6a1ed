/*
 * tests/unit/hammer_fx.h: what the randomized hammers (test_hammer.c,
 * test_hammer_features.c, test_hammer_xthread.c) share: the seeded random
 * choices, the seed and round count from the environment, and a raw TCP
 * peer's opening moves (a non-blocking socket to the server, masked frames
 * keyed from the same random stream, so a seed replays them).
 *
 * Environment: DX_HAMMER_SEED=n replays the random choices,
 * DX_HAMMER_ROUNDS=n sets the rounds.
 */
#ifndef DX_HAMMER_FX_H
#define DX_HAMMER_FX_H

#include "testutil.h"

#include <stddef.h>
#include <stdint.h>

/* The next number of the xorshift stream *rng. */
static inline uint64_t hx_rnd(uint64_t *rng) { return dx_test_xorshift(rng); }

/* Uniform in [0, n) (0 when n is 0). */
static inline unsigned hx_pick(uint64_t *rng, unsigned n) { return n ? (unsigned)(hx_rnd(rng) % n) : 0; }

/* True `percent` times in 100. */
static inline int hx_chance(uint64_t *rng, unsigned percent) { return hx_pick(rng, 100) < percent; }

/* The seed (DX_HAMMER_SEED, else time and pid; never 0). */
uint64_t hx_seed(void);

/* The rounds: DX_HAMMER_ROUNDS, else `dflt`. Prints "<name>: seed ...
 * (replay: ...), n rounds" and flushes stdout. */
int hx_rounds(const char *name, uint64_t seed, int dflt);

/* A non-blocking TCP socket connected to 127.0.0.1:port (SO_RCVBUF set to
 * rcvbuf first when > 0); -1 or -2 as dx_test_dial. */
int hx_peer_dial(unsigned port, int rcvbuf);

/* A masked client frame into `out` (room for len + 8, len < 65536), its
 * key taken from *rng. Returns its length. */
size_t hx_frame(uint64_t *rng, uint8_t *out, unsigned op, int fin, const uint8_t *payload, size_t len);

#endif
