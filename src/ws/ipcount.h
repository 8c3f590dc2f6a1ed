/*
 * src/ws/ipcount.h: live connections per client address, for the server's
 * max_conns_per_ip limit.
 *
 * Layer: ws (uses only core). An open-addressing hash table keyed by the
 * client's address: IPv4 by the whole address, IPv6 by its /64 prefix (one
 * subscriber usually holds a whole /64, so counting single IPv6 addresses
 * would let one client walk around the limit). An entry exists only while
 * its count is above zero, and the table shrinks as entries leave, so its
 * memory follows the number of distinct live addresses (at most 4 slots of
 * 16 bytes per address, 64 slots minimum).
 */
#ifndef DX_WS_IPCOUNT_H
#define DX_WS_IPCOUNT_H

#include "duplex/duplex.h"

#include <stddef.h>
#include <stdint.h>

typedef struct dx__ipslot dx__ipslot;

typedef struct dx__ipcount {
    dx__ipslot *slots; /* NULL until the first add */
    size_t cap;        /* a power of two, or 0 */
    size_t n;          /* entries in use */
    uint64_t seed;     /* random: keeps an attacker from choosing colliding addresses */
} dx__ipcount;

/* The key of an address: family AF_INET with the 4 address bytes, or
 * AF_INET6 with the first 8 (the /64). */
uint64_t dx__ipcount_key(int family, const uint8_t *addr);

/* Adds one connection for (family, key) unless the count is already
 * `limit` or more (limit 0: no limit). Returns 0, DX_ELIMIT (not added) or
 * DX_ENOMEM (not added). */
int dx__ipcount_add(dx__ipcount *t, const dx_seams *seams, int family, uint64_t key, size_t limit);

/* Removes one connection; the entry goes away at zero. */
void dx__ipcount_remove(dx__ipcount *t, const dx_seams *seams, int family, uint64_t key);

/* The current count (0 when absent). */
size_t dx__ipcount_get(const dx__ipcount *t, int family, uint64_t key);

void dx__ipcount_free(dx__ipcount *t, const dx_seams *seams);

#endif
