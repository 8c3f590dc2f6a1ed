/* tests/unit/testutil.c: see testutil.h. */
#define _GNU_SOURCE
#include "testutil.h"

#include <sys/time.h>

const dx_log dx_test_quiet_log = {.sink = NULL, .ud = NULL, .level = DX_LOG_ERROR};

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

uint64_t dx_test_xorshift(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return x;
}

uint64_t dx_test_seed_from_env(const char *var)
{
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16);
    const char *env = getenv(var);
    if (env)
        seed = strtoull(env, NULL, 0);
    return seed ? seed : 1;
}

int dx_test_dial(unsigned port, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -2;
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { /* loopback: done by the kernel at once */
        close(fd);
        return -1;
    }
    return fd;
}

void dx_test_close_rst(int fd)
{
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

size_t dx_test_mask_frame(uint8_t *out, unsigned op, int fin, const void *payload, size_t len,
                          const uint8_t key[4])
{
    const uint8_t *p = payload;
    size_t n = 0;
    out[n++] = (uint8_t)((fin ? 0x80 : 0) | op);
    if (len < 126) {
        out[n++] = (uint8_t)(0x80 | len);
    } else {
        out[n++] = 0x80 | 126;
        out[n++] = (uint8_t)(len >> 8);
        out[n++] = (uint8_t)len;
    }
    memcpy(out + n, key, 4);
    n += 4;
    for (size_t i = 0; i < len; i++)
        out[n + i] = p[i] ^ key[i & 3];
    return n + len;
}

void *dx_test_loop_thread(void *loop)
{
    (void)dx_loop_run(loop);
    return NULL;
}

typedef struct posted {
    void (*fn)(void *arg);
    void *arg;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
} posted;

static void posted_run(void *p)
{
    posted *c = p;
    c->fn(c->arg);
    pthread_mutex_lock(&c->mu);
    c->done = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

void dx_test_on_loop(dx_loop *loop, void (*fn)(void *arg), void *arg)
{
    posted c = {.fn = fn, .arg = arg, .done = 0};
    pthread_mutex_init(&c.mu, NULL);
    pthread_cond_init(&c.cv, NULL);
    assert_int_equal(dx_loop_post(loop, posted_run, &c), 0);
    struct timespec dl;
    dx_test_deadline_in(&dl, 20000);
    pthread_mutex_lock(&c.mu);
    while (!c.done)
        if (pthread_cond_timedwait(&c.cv, &c.mu, &dl) == ETIMEDOUT) {
            pthread_mutex_unlock(&c.mu);
            fail_msg("timed out waiting for a call posted to the loop");
        }
    pthread_mutex_unlock(&c.mu);
    pthread_mutex_destroy(&c.mu);
    pthread_cond_destroy(&c.cv);
}

void dx_test_rec_init(dx_test_rec *r, pthread_mutex_t *mu, pthread_cond_t *cv, dx_test_ev *evs, size_t cap,
                      unsigned wait_ms)
{
    memset(r, 0, sizeof *r);
    r->mu = mu;
    r->cv = cv;
    r->evs = evs;
    r->cap = cap;
    r->wait_ms = wait_ms;
}

void dx_test_rec_add(dx_test_rec *r, const dx_test_ev *e, const void *data, size_t len)
{
    pthread_mutex_lock(r->mu);
    if (r->nev < r->cap) {
        dx_test_ev *d = &r->evs[r->nev++];
        *d = *e;
        d->taken = 0;
        d->data = malloc(len + 1);
        if (d->data) {
            if (len)
                memcpy(d->data, data, len);
            d->data[len] = 0;
        }
        d->len = len;
    }
    pthread_cond_broadcast(r->cv);
    pthread_mutex_unlock(r->mu);
}

dx_test_ev dx_test_rec_wait(dx_test_rec *r, int type)
{
    struct timespec dl;
    dx_test_deadline_in(&dl, r->wait_ms);
    pthread_mutex_lock(r->mu);
    for (;;) {
        for (size_t i = 0; i < r->nev; i++)
            if (r->evs[i].type == type && !r->evs[i].taken) {
                r->evs[i].taken = 1;
                dx_test_ev e = r->evs[i];
                pthread_mutex_unlock(r->mu);
                return e;
            }
        if (pthread_cond_timedwait(r->cv, r->mu, &dl) == ETIMEDOUT) {
            pthread_mutex_unlock(r->mu);
            if (r->name)
                fail_msg("timed out waiting for %s", r->name(type));
            fail_msg("timed out waiting for event %d", type);
        }
    }
}

size_t dx_test_rec_count(dx_test_rec *r, int type)
{
    pthread_mutex_lock(r->mu);
    size_t n = 0;
    for (size_t i = 0; i < r->nev; i++)
        n += r->evs[i].type == type;
    pthread_mutex_unlock(r->mu);
    return n;
}

void dx_test_rec_drain(dx_test_rec *r, int type)
{
    pthread_mutex_lock(r->mu);
    for (size_t i = 0; i < r->nev; i++)
        if (r->evs[i].type == type)
            r->evs[i].taken = 1;
    pthread_mutex_unlock(r->mu);
}

void dx_test_rec_free(dx_test_rec *r)
{
    for (size_t i = 0; i < r->nev; i++) {
        free(r->evs[i].data);
        r->evs[i].data = NULL;
    }
}

void dx_test_self_signed(const char *dir, const char *cn, char crt[128], char key[128])
{
    char cmd[1024];
    snprintf(crt, 128, "%s/c.crt", dir);
    snprintf(key, 128, "%s/c.key", dir);
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=%s "
             "-keyout '%s' -out '%s' >/dev/null 2>&1",
             cn, key, crt);
    assert_int_equal(system(cmd), 0);
}

int dx_test_rm_rf(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

void dx_test_send_all(int fd, const void *p, size_t len)
{
    const uint8_t *b = p;
    while (len) {
        ssize_t w = send(fd, b, len, MSG_NOSIGNAL);
        assert_true(w > 0);
        b += w;
        len -= (size_t)w;
    }
}

void dx_test_io_timeouts(int fd, unsigned ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (long)(ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

ssize_t dx_test_peer_fill(dx_test_peer *c)
{
    if (c->len == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 65536;
        c->buf = realloc(c->buf, c->cap);
        assert_non_null(c->buf);
    }
    ssize_t r = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
    if (r > 0)
        c->len += (size_t)r;
    return r;
}

void dx_test_peer_need(dx_test_peer *c, size_t n)
{
    while (c->len < n) {
        ssize_t r = dx_test_peer_fill(c);
        if (r <= 0)
            fail_msg("peer: %s while %zu of %zu bytes were buffered", r == 0 ? "EOF" : strerror(errno), c->len, n);
    }
}

void dx_test_peer_consume(dx_test_peer *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

int dx_test_peer_eof(dx_test_peer *c)
{
    for (;;) {
        ssize_t r = dx_test_peer_fill(c);
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            return 1;
        if (r < 0)
            return 0;
    }
}

size_t dx_test_peer_head(dx_test_peer *c)
{
    for (;;) {
        for (size_t i = 0; i + 4 <= c->len; i++)
            if (memcmp(c->buf + i, "\r\n\r\n", 4) == 0)
                return i + 4;
        ssize_t r = dx_test_peer_fill(c);
        if (r <= 0)
            fail_msg("peer: %s before the end of the head", r == 0 ? "EOF" : strerror(errno));
    }
}
