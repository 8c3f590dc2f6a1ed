/* tests/unit/hammer_fx.c: see hammer_fx.h. */
#define _GNU_SOURCE
#include "hammer_fx.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>

uint64_t hx_seed(void) { return dx_test_seed_from_env("DX_HAMMER_SEED"); }

int hx_rounds(const char *name, uint64_t seed, int dflt)
{
    int rounds = dflt;
    if (getenv("DX_HAMMER_ROUNDS"))
        rounds = atoi(getenv("DX_HAMMER_ROUNDS"));
    printf("%s: seed %llu (replay: DX_HAMMER_SEED=%llu), %d rounds\n", name, (unsigned long long)seed,
           (unsigned long long)seed, rounds);
    fflush(stdout);
    return rounds;
}

int hx_peer_dial(unsigned port, int rcvbuf)
{
    int fd = dx_test_dial(port, rcvbuf);
    if (fd >= 0)
        fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

size_t hx_frame(uint64_t *rng, uint8_t *out, unsigned op, int fin, const uint8_t *payload, size_t len)
{
    uint8_t key[4];
    for (int i = 0; i < 4; i++)
        key[i] = (uint8_t)hx_rnd(rng);
    return dx_test_mask_frame(out, op, fin, payload, len, key);
}
