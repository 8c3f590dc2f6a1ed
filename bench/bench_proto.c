/*
 * bench/bench_proto.c: throughput of the sans-I/O hot paths — masking,
 * UTF-8 validation, frame decoding — each next to a plain memcpy of the same
 * bytes measured in the same run, so the figures read as "how far from a
 * copy" whatever the machine.
 *
 * Method: each row is calibrated so one timed repetition lasts about 0.2 s,
 * then REPS repetitions are timed with clock_gettime(CLOCK_MONOTONIC), each
 * next to a memcpy repetition over the same bytes; the medians are reported,
 * and "vs memcpy" is the median of the per-repetition ratios. Results feed a volatile sink so nothing is optimised
 * away; memcpy is called through a volatile function pointer so the compiler
 * can neither inline nor drop it. Buffers stay resident in cache for 1 KiB
 * and mostly in L2 for 1 MiB: these are CPU-bound figures, not memory-bound.
 *
 * Run: make bench, or build with -DCMAKE_BUILD_TYPE=Release and run
 * ./bench/bench_proto (optional argument: seconds per repetition).
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */

#include "duplex/duplex.h"
#include "proto/frame.h"
#include "proto/mask.h"
#include "proto/utf8.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REPS 7

static volatile uint64_t sink;
static void *(*volatile copy_fn)(void *, const void *, size_t) = memcpy;
static double rep_seconds = 0.2;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* A kernel runs its operation `iters` times over `len` bytes. */
typedef void (*kernel_fn)(void *ctx, size_t iters);

/* Iterations of fn that take about rep_seconds. */
static size_t calibrate(kernel_fn fn, void *ctx)
{
    size_t iters = 1;
    double dt;
    for (;;) {
        double t0 = now();
        fn(ctx, iters);
        dt = now() - t0;
        if (dt >= rep_seconds / 4 || iters > ((size_t)1 << 40))
            break;
        iters *= 2;
    }
    return dt > 0 ? (size_t)((double)iters * rep_seconds / dt) + 1 : iters;
}

static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof t[0], cmp_double);
    return t[n / 2];
}

/*
 * Times `fn` against the memcpy yardstick `yard`, alternating them in each
 * of REPS repetitions so both see the same machine state (this matters on
 * shared or virtual machines). Sets the median seconds per iteration of each
 * and returns the median of the per-repetition ratios yard/fn.
 */
static double measure_vs(kernel_fn fn, kernel_fn yard, void *ctx, double *t_fn, double *t_yard)
{
    size_t nf = calibrate(fn, ctx), ny = calibrate(yard, ctx);
    double tf[REPS], ty[REPS], ratio[REPS];
    for (int r = 0; r < REPS; r++) {
        double t0 = now();
        yard(ctx, ny);
        double t1 = now();
        fn(ctx, nf);
        double t2 = now();
        ty[r] = (t1 - t0) / (double)ny;
        tf[r] = (t2 - t1) / (double)nf;
        ratio[r] = ty[r] / tf[r];
    }
    *t_fn = median(tf, REPS);
    *t_yard = median(ty, REPS);
    return median(ratio, REPS);
}

/* ---- kernels ---- */

typedef struct bytes_ctx {
    uint8_t *dst;
    const uint8_t *src;
    size_t len;
} bytes_ctx;

static const uint8_t bench_key[4] = {0x37, 0xfa, 0x21, 0x3d};

static void k_memcpy(void *ctx, size_t iters)
{
    bytes_ctx *c = ctx;
    for (size_t i = 0; i < iters; i++)
        copy_fn(c->dst, c->src, c->len);
    sink += c->dst[c->len / 2];
}

static void k_mask_copy(void *ctx, size_t iters)
{
    bytes_ctx *c = ctx;
    size_t acc = 0;
    for (size_t i = 0; i < iters; i++)
        acc += dx__mask_copy(c->dst, c->src, c->len, bench_key, i & 3);
    sink += acc + c->dst[c->len / 2];
}

static void k_mask_inplace(void *ctx, size_t iters)
{
    bytes_ctx *c = ctx;
    size_t acc = 0;
    for (size_t i = 0; i < iters; i++)
        acc += dx__mask(c->dst, c->len, bench_key, i & 3);
    sink += acc + c->dst[c->len / 2];
}

static void k_utf8(void *ctx, size_t iters)
{
    bytes_ctx *c = ctx;
    uint64_t acc = 0;
    for (size_t i = 0; i < iters; i++)
        acc += dx__utf8_valid(c->src, c->len);
    if (acc != iters) {
        fprintf(stderr, "bench: the UTF-8 input was rejected\n");
        exit(1);
    }
    sink += acc;
}

/* Frames: a wire buffer of masked client frames, decoded in server role.
 * Decoding unmasks in place, so each pass restores the buffer from a pristine
 * copy first, outside the timed region (only dx__frame_decode is timed). */
typedef struct frames_ctx {
    uint8_t *wire;
    const uint8_t *pristine;
    size_t len;
    size_t nframes;
    double decode_seconds; /* accumulated by k_frames */
} frames_ctx;

static void k_frames(void *ctx, size_t iters)
{
    frames_ctx *c = ctx;
    uint64_t acc = 0, frames = 0;
    double spent = 0;
    for (size_t it = 0; it < iters; it++) {
        memcpy(c->wire, c->pristine, c->len);
        dx_frame_decoder d;
        dx__frame_decoder_init(&d, DX_ROLE_SERVER, 0, NULL);
        double t0 = now();
        uint8_t *p = c->wire;
        size_t left = c->len;
        while (left > 0) {
            dx_frame_event ev;
            size_t used = dx__frame_decode(&d, p, left, &ev);
            if (ev.type == DX_FRAME_ERROR || (used == 0 && ev.type != DX_FRAME_HEADER)) {
                fprintf(stderr, "bench: frame decoder error %d (%s)\n", ev.err, dx_errname(ev.err));
                exit(1);
            }
            if (ev.type == DX_FRAME_HEADER)
                frames++;
            else if (ev.type == DX_FRAME_DATA)
                acc += ev.data[ev.len - 1];
            p += used;
            left -= used;
        }
        spent += now() - t0;
    }
    if (frames != (uint64_t)iters * c->nframes) {
        fprintf(stderr, "bench: decoded %llu frames, expected %llu\n", (unsigned long long)frames,
                (unsigned long long)iters * c->nframes);
        exit(1);
    }
    c->decode_seconds = spent;
    sink += acc;
}

/* Like measure_vs() without a yardstick; counts only the decoder's time within each pass. */
static double measure_frames(frames_ctx *c)
{
    size_t iters = 1;
    for (;;) {
        k_frames(c, iters);
        if (c->decode_seconds >= rep_seconds / 4 || iters > ((size_t)1 << 30))
            break;
        iters *= 2;
    }
    iters = (size_t)((double)iters * rep_seconds / c->decode_seconds) + 1;
    double t[REPS];
    for (int r = 0; r < REPS; r++) {
        k_frames(c, iters);
        t[r] = c->decode_seconds / (double)iters;
    }
    return median(t, REPS);
}

/* ---- inputs ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15u;

static uint32_t rng(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng_state = x;
    return (uint32_t)(x >> 32);
}

static void fill_ascii(uint8_t *p, size_t len)
{
    static const char text[] = "The quick brown fox jumps over the lazy dog; {\"id\": 12345, \"ok\": true}\n";
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)text[i % (sizeof text - 1)];
}

/* Words from several scripts, chosen at random: 1-, 2-, 3- and 4-byte
 * sequences interleaved as in chat traffic mixing languages and emoji. */
static void fill_multilingual(uint8_t *p, size_t len)
{
    static const char *const words[] = {
        "hello ",       "façade ",        "naïve ",       "Größe ",         "déjà vu ",
        "Привет ",      "мир ",           "скорость ",    "日本語 ",        "中文字符 ",
        "漢字テスト ",  "한국어 ",        "😀 ",          "🚀🔥 ",          "👍🏽 ",
        "Ελληνικά ",    "עברית ",         "العربية ",     "ok ",            "💬 чат ",
    };
    size_t nwords = sizeof words / sizeof words[0];
    size_t i = 0;
    for (;;) {
        const char *w = words[rng() % nwords];
        size_t wl = strlen(w);
        if (i + wl > len)
            break;
        memcpy(p + i, w, wl);
        i += wl;
    }
    while (i < len) /* pad with ASCII so the whole buffer stays valid */
        p[i++] = ' ';
}

/* ---- output ---- */

static void size_name(char *out, size_t cap, size_t len)
{
    if (len >= (1u << 20))
        snprintf(out, cap, "%zu MiB", len >> 20);
    else
        snprintf(out, cap, "%zu KiB", len >> 10);
}

static void row(const char *what, size_t len, double secs, double ratio)
{
    char size[32];
    size_name(size, sizeof size, len);
    printf("%-32s %-8s %8.2f %10.2f\n", what, size, (double)len / secs / 1e9, ratio);
}

/* A row for fn and, first, the yardstick row measured alongside it. */
static void rows_vs(const char *what, kernel_fn fn, bytes_ctx *c, bool show_yard)
{
    double tf, ty;
    double ratio = measure_vs(fn, k_memcpy, c, &tf, &ty);
    if (show_yard)
        row("memcpy (yardstick)", c->len, ty, 1.0);
    row(what, c->len, tf, ratio);
}

static void bench_mask(size_t len)
{
    /* Unaligned on purpose: src at +1, dst at +3 from a 64-byte boundary. */
    uint8_t *sbuf = aligned_alloc(64, len + 128), *dbuf = aligned_alloc(64, len + 128);
    if (!sbuf || !dbuf)
        exit(1);
    for (size_t i = 0; i < len + 128; i++)
        sbuf[i] = (uint8_t)rng(), dbuf[i] = 0;
    bytes_ctx c = {dbuf + 3, sbuf + 1, len};
    rows_vs("mask copy, unaligned", k_mask_copy, &c, true);
    rows_vs("mask in place, unaligned", k_mask_inplace, &c, false);
    free(sbuf);
    free(dbuf);
}

static void bench_utf8(size_t len)
{
    uint8_t *buf = malloc(len), *dst = malloc(len);
    if (!buf || !dst)
        exit(1);
    bytes_ctx c = {dst, buf, len};
    fill_ascii(buf, len);
    rows_vs("utf8 validate, ASCII", k_utf8, &c, true);
    fill_multilingual(buf, len);
    rows_vs("utf8 validate, multilingual", k_utf8, &c, false);
    free(buf);
    free(dst);
}

static void bench_frames(size_t payload, size_t wire_len)
{
    size_t flen = dx__frame_header_size(payload, true) + payload;
    size_t n = wire_len / flen;
    size_t len = n * flen;
    uint8_t *pristine = malloc(len), *wire = malloc(len);
    if (!pristine || !wire)
        exit(1);
    uint8_t *q = pristine;
    for (size_t f = 0; f < n; f++) {
        uint8_t key[4];
        for (int k = 0; k < 4; k++)
            key[k] = (uint8_t)rng();
        q += dx__frame_header_write(q, DX_OP_BINARY, true, 0, payload, key);
        for (size_t i = 0; i < payload; i++)
            q[i] = (uint8_t)('a' + (f + i) % 26);
        dx__mask(q, payload, key, 0);
        q += payload;
    }
    frames_ctx c = {wire, pristine, len, n, 0};
    double secs = measure_frames(&c);
    double fps = (double)n / secs;
    printf("frames decoded/s, %zu-byte masked frames: %.1f M frames/s, %.2f GB/s of wire bytes\n",
           payload, fps / 1e6, (double)len / secs / 1e9);
    free(pristine);
    free(wire);
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        rep_seconds = atof(argv[1]);
        if (rep_seconds <= 0)
            rep_seconds = 0.2;
    }
    printf("%-32s %-8s %8s %10s\n", "what", "size", "GB/s", "vs memcpy");
    bench_mask(1024);
    bench_mask(1024 * 1024);
    bench_utf8(1024 * 1024);
    bench_frames(16, 64 * 1024);
    bench_frames(1024, 1024 * 1024);
    return 0;
}
