/*
 * src/proto/utf8.c: streaming UTF-8 validator (see utf8.h). Layer: src/proto,
 * pure: no I/O, no allocation, no logging; depends only on duplex.h's codes.
 *
 * The grammar is RFC 3629 §4 (UTF8-octets), encoded as a deterministic
 * automaton of nine states (table below, written from the grammar). Its
 * transition table is "shift-based": for each input byte one 64-bit row holds
 * the next state of every state in a 6-bit field, and a state is the bit
 * offset of its field, so one step is `row[byte] >> state` — a single
 * variable shift on the critical path, no second memory load. FAIL maps to
 * itself on every byte (sticky), so a block of bytes can be stepped through
 * without a check per byte and tested once at its end; only a failed block is
 * stepped through again, one byte at a time, to find the exact index.
 *
 * Speed: runs of ASCII between sequences are skipped 32/16 bytes at a time by
 * testing the high bits of 64-bit words; other text goes through the
 * automaton 32 bytes per unchecked block, about one byte per cycle. (Two
 * interleaved automata on the two halves of a block, synchronised at a
 * non-continuation byte, were tried: no faster, the loads are the limit.)
 * On x86-64 the code is compiled a second time for BMI2 and that copy is
 * used when the CPU has it: SHRX instead of SHR-by-CL, whose dependency on
 * the flags adds a cycle to every step.
 *
 * Invariants: dx_utf8.state is a state offset (0 = ACCEPT, between
 * sequences; S_FAIL after an error, sticky until dx__utf8_init).
 */
#include "proto/utf8.h"

#include "duplex/duplex.h"

#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__BMI2__) && !defined(DX_NO_CPU_DISPATCH)
#define UTF8_BMI2_DISPATCH 1
#else
#define UTF8_BMI2_DISPATCH 0
#endif

/* State offsets (bit positions of each state's field in a row). */
enum {
    S_ACC = 0,   /* between sequences */
    S_C1 = 6,    /* one continuation byte 80..BF still needed */
    S_C2 = 12,   /* two continuation bytes still needed */
    S_C3 = 18,   /* three continuation bytes still needed */
    S_E0 = 24,   /* after E0: A0..BF (no overlong 3-byte form), then one more */
    S_ED = 30,   /* after ED: 80..9F (no surrogates D800..DFFF), then one more */
    S_F0 = 36,   /* after F0: 90..BF (no overlong 4-byte form), then two more */
    S_F4 = 42,   /* after F4: 80..8F (nothing above U+10FFFF), then two more */
    S_FAIL = 48  /* an invalid byte was seen; absorbs every byte */
};

#define ROW(acc, c1, c2, c3, e0, ed, f0, f4)                                                        \
    ((uint64_t)(acc) << S_ACC | (uint64_t)(c1) << S_C1 | (uint64_t)(c2) << S_C2 |                  \
     (uint64_t)(c3) << S_C3 | (uint64_t)(e0) << S_E0 | (uint64_t)(ed) << S_ED |                    \
     (uint64_t)(f0) << S_F0 | (uint64_t)(f4) << S_F4 | (uint64_t)S_FAIL << S_FAIL)

#define F S_FAIL
/*                      from: ACC    C1     C2    C3    E0    ED    F0    F4 */
#define R_ASCII         ROW(S_ACC, F,     F,    F,    F,    F,    F,    F)   /* 00..7F */
#define R_CONT_80       ROW(F,     S_ACC, S_C1, S_C2, F,    S_C1, F,    S_C2) /* 80..8F */
#define R_CONT_90       ROW(F,     S_ACC, S_C1, S_C2, F,    S_C1, S_C2, F)   /* 90..9F */
#define R_CONT_A0       ROW(F,     S_ACC, S_C1, S_C2, S_C1, F,    S_C2, F)   /* A0..BF */
#define R_LEAD2         ROW(S_C1,  F,     F,    F,    F,    F,    F,    F)   /* C2..DF */
#define R_LEAD_E0       ROW(S_E0,  F,     F,    F,    F,    F,    F,    F)   /* E0 */
#define R_LEAD3         ROW(S_C2,  F,     F,    F,    F,    F,    F,    F)   /* E1..EC, EE..EF */
#define R_LEAD_ED       ROW(S_ED,  F,     F,    F,    F,    F,    F,    F)   /* ED */
#define R_LEAD_F0       ROW(S_F0,  F,     F,    F,    F,    F,    F,    F)   /* F0 */
#define R_LEAD4         ROW(S_C3,  F,     F,    F,    F,    F,    F,    F)   /* F1..F3 */
#define R_LEAD_F4       ROW(S_F4,  F,     F,    F,    F,    F,    F,    F)   /* F4 */
#define R_BAD           ROW(F,     F,     F,    F,    F,    F,    F,    F)   /* C0, C1, F5..FF */

#define X4(r) r, r, r, r
#define X16(r) X4(r), X4(r), X4(r), X4(r)

static const uint64_t utf8_dfa[256] = {
    X16(R_ASCII), X16(R_ASCII), X16(R_ASCII), X16(R_ASCII), /* 00..3F */
    X16(R_ASCII), X16(R_ASCII), X16(R_ASCII), X16(R_ASCII), /* 40..7F */
    X16(R_CONT_80),                                         /* 80..8F */
    X16(R_CONT_90),                                         /* 90..9F */
    X16(R_CONT_A0), X16(R_CONT_A0),                         /* A0..BF */
    R_BAD, R_BAD, R_LEAD2, R_LEAD2, X4(R_LEAD2), X4(R_LEAD2), X4(R_LEAD2), /* C0..CF */
    X16(R_LEAD2),                                           /* D0..DF */
    R_LEAD_E0, R_LEAD3, R_LEAD3, R_LEAD3, X4(R_LEAD3), X4(R_LEAD3),       /* E0..EB */
    R_LEAD3, R_LEAD_ED, R_LEAD3, R_LEAD3,                   /* EC..EF */
    R_LEAD_F0, R_LEAD4, R_LEAD4, R_LEAD4, R_LEAD_F4,        /* F0..F4 */
    R_BAD, R_BAD, R_BAD, X4(R_BAD), X4(R_BAD),              /* F5..FF */
};
#undef F

/* One step. x86 (and arm64) shifts mask the count to 6 bits, so the `& 63`
 * costs nothing; the upper bits left in the result are ignored likewise. */
#define STEP(st, byte) (utf8_dfa[(byte)] >> ((st) & 63))

#define HIGH_BITS UINT64_C(0x8080808080808080)

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t w;
    memcpy(&w, p, sizeof w);
    return w;
}

/* True when p[0..16) are all ASCII. */
static inline int ascii16(const uint8_t *p) { return ((load64(p) | load64(p + 8)) & HIGH_BITS) == 0; }

static inline int ascii32(const uint8_t *p)
{
    return ((load64(p) | load64(p + 8) | load64(p + 16) | load64(p + 24)) & HIGH_BITS) == 0;
}

#define BLOCK 32

/*
 * Steps through p[0..BLOCK) starting in `st`; returns the end state (S_FAIL
 * if any byte failed, FAIL being sticky). Unrolled by hand so both
 * compilers keep the chain free of loop overhead.
 */
static inline __attribute__((always_inline)) uint64_t block(uint64_t st, const uint8_t *p)
{
    for (size_t k = 0; k < BLOCK; k += 8) {
        st = STEP(st, p[k]);
        st = STEP(st, p[k + 1]);
        st = STEP(st, p[k + 2]);
        st = STEP(st, p[k + 3]);
        st = STEP(st, p[k + 4]);
        st = STEP(st, p[k + 5]);
        st = STEP(st, p[k + 6]);
        st = STEP(st, p[k + 7]);
    }
    return st & 63;
}

/*
 * Validates p[0..len) from state *stp. Returns len when every byte was
 * accepted (*stp is then the state after them), else the index of the first
 * invalid byte (*stp is S_FAIL). Always inlined into the two copies below.
 */
static inline __attribute__((always_inline)) size_t run(uint64_t *stp, const uint8_t *p, size_t len)
{
    uint64_t st = *stp;
    size_t i = 0, k;

    for (;;) {
        /* ASCII fast path between sequences. One branch, taken rarely in
         * non-ASCII text: `&` rather than `&&` keeps the unpredictable
         * "between sequences?" out of the branch history. */
        while (len - i >= 32 && ((st == S_ACC) & ascii32(p + i)))
            i += 32;
        if (len - i >= 16 && ((st == S_ACC) & ascii16(p + i)))
            i += 16;
        if (len - i < BLOCK)
            break;
        uint64_t nst = block(st, p + i);
        if (nst == S_FAIL)
            break; /* the byte walk below finds the exact index */
        st = nst;
        i += BLOCK;
    }
    for (k = i; k < len; k++) {
        st = STEP(st, p[k]) & 63;
        if (st == S_FAIL)
            goto fail;
    }
    *stp = st;
    return len;

fail:
    *stp = S_FAIL;
    return k;
}

static size_t run_generic(uint64_t *stp, const uint8_t *p, size_t len) { return run(stp, p, len); }

#if UTF8_BMI2_DISPATCH
/* The same code where each step is one SHRX: the legacy SHR by CL also
 * reads the flags, a second dependency chain through every step. */
__attribute__((target("bmi2"))) static size_t run_bmi2(uint64_t *stp, const uint8_t *p, size_t len)
{
    return run(stp, p, len);
}
#endif

int dx__utf8_feed(dx_utf8 *v, const uint8_t *p, size_t len, size_t *bad_at)
{
    uint64_t st = v->state;
    if (st == S_FAIL) {
        if (bad_at)
            *bad_at = 0;
        return DX_EUTF8;
    }
    size_t at;
#if UTF8_BMI2_DISPATCH
    if (__builtin_cpu_supports("bmi2"))
        at = run_bmi2(&st, p, len);
    else
#endif
        at = run_generic(&st, p, len);
    v->state = (uint32_t)st;
    if (st == S_FAIL) {
        if (bad_at)
            *bad_at = at;
        return DX_EUTF8;
    }
    return 0;
}

int dx__utf8_finish(const dx_utf8 *v) { return v->state == S_ACC ? 0 : DX_EUTF8; }

bool dx__utf8_valid(const uint8_t *p, size_t len)
{
    dx_utf8 v;
    dx__utf8_init(&v);
    return dx__utf8_feed(&v, p, len, NULL) == 0 && dx__utf8_finish(&v) == 0;
}
