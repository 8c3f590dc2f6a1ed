/*
 * src/gateway/history.c: one topic's sequencer and bounded history, and the
 * live/history stitcher (see history.h).
 *
 * Layer: gateway. Uses core (seams) and the public dx_msg only for the
 * prepared-frame slots; never touches a connection or a frame's bytes.
 *
 * Invariants of a log:
 *  - no lock: the topic's owner thread alone calls the dx__gw_log_*
 *    functions; only entries (atomic reference counts) and snapshots cross
 *    threads;
 *  - the retained entries sit in a ring in offset order with no holes: the
 *    i-th from the head has offset head_offset + i, and the newest is the
 *    current offset (when any is retained), so finding offset N is O(1);
 *  - trimming only removes from the head (oldest first): by count in append,
 *    by age in append, trim, resume and history. Each entry is removed once.
 */
#include "gateway/history.h"

#include "core/seams.h"

#include <stdatomic.h>
#include <string.h>

struct dx__gw_entry {
    atomic_size_t refs;
    const dx_seams *seams;
    uint64_t offset;
    uint64_t time_ns;
    size_t len;
    _Atomic(dx_msg *) frames[DX__GW_FRAME_N];
    dx__gw_kind kind;
    uint8_t data[];
};

struct dx__gw_log {
    const dx_seams *seams;
    dx__gw_log_opts opts;
    uint64_t offset;     /* current offset */
    bool sequenced;      /* an offset was given (or seek was called) */
    dx__gw_entry **ring; /* cap slots; n used from head */
    size_t cap, head, n;
    size_t bytes;        /* payload bytes retained */
    char epoch[DX__GW_EPOCH_LEN + 1];
};

const char *dx__gw_kind_name(dx__gw_kind kind)
{
    switch (kind) {
    case DX__GW_KIND_JSON: return "json";
    case DX__GW_KIND_TEXT: return "text";
    case DX__GW_KIND_BINARY: return "binary";
    }
    return "?";
}

/* ---- entries ----------------------------------------------------------- */

dx__gw_entry *dx__gw_entry_ref(dx__gw_entry *e)
{
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    return e;
}

void dx__gw_entry_unref(dx__gw_entry *e)
{
    if (!e)
        return;
    if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (int i = 0; i < DX__GW_FRAME_N; i++)
        dx_msg_unref(atomic_load_explicit(&e->frames[i], memory_order_acquire));
    dx__free(e->seams, e);
}

uint64_t dx__gw_entry_offset(const dx__gw_entry *e) { return e->offset; }
dx__gw_kind dx__gw_entry_kind(const dx__gw_entry *e) { return e->kind; }
uint64_t dx__gw_entry_time_ns(const dx__gw_entry *e) { return e->time_ns; }
const uint8_t *dx__gw_entry_data(const dx__gw_entry *e) { return e->data; }
size_t dx__gw_entry_len(const dx__gw_entry *e) { return e->len; }

dx_msg *dx__gw_entry_frame(dx__gw_entry *e, dx__gw_frame slot)
{
    if ((unsigned)slot >= DX__GW_FRAME_N)
        return NULL;
    return atomic_load_explicit(&e->frames[slot], memory_order_acquire);
}

dx_msg *dx__gw_entry_set_frame(dx__gw_entry *e, dx__gw_frame slot, dx_msg *m)
{
    if ((unsigned)slot >= DX__GW_FRAME_N || !m) {
        dx_msg_unref(m);
        return NULL;
    }
    dx_msg *expected = NULL;
    /* First writer wins; acq_rel so a loser sees the winner's message whole. */
    if (atomic_compare_exchange_strong_explicit(&e->frames[slot], &expected, m,
                                                memory_order_acq_rel, memory_order_acquire))
        return m;
    dx_msg_unref(m);
    return expected;
}

static dx__gw_entry *entry_new(const dx_seams *seams, dx__gw_kind kind, const void *data,
                               size_t len)
{
    if (len > SIZE_MAX - sizeof(dx__gw_entry))
        return NULL;
    dx__gw_entry *e = dx__alloc(seams, sizeof *e + len);
    if (!e)
        return NULL;
    atomic_init(&e->refs, 1);
    e->seams = seams;
    e->offset = 0;
    e->time_ns = 0;
    e->len = len;
    for (int i = 0; i < DX__GW_FRAME_N; i++)
        atomic_init(&e->frames[i], NULL);
    e->kind = kind;
    if (len)
        memcpy(e->data, data, len);
    return e;
}

dx__gw_entry *dx__gw_entry_new(const dx_seams *seams, dx__gw_kind kind, const void *data, size_t len,
                               uint64_t offset, uint64_t time_ns)
{
    if (kind != DX__GW_KIND_JSON && kind != DX__GW_KIND_TEXT && kind != DX__GW_KIND_BINARY)
        return NULL;
    if (!data && len)
        return NULL;
    dx__gw_entry *e = entry_new(seams, kind, data, len);
    if (e) {
        e->offset = offset;
        e->time_ns = time_ns;
    }
    return e;
}

/* ---- the log ----------------------------------------------------------- */

void dx__gw_log_opts_default(dx__gw_log_opts *o)
{
    o->max_count = DX__GW_HISTORY_COUNT_DEFAULT;
    o->max_age_ns = DX__GW_HISTORY_AGE_DEFAULT_NS;
}

dx__gw_log *dx__gw_log_new(const dx_seams *seams, const dx__gw_log_opts *opts, int *err)
{
    int dummy;
    if (!err)
        err = &dummy;
    uint8_t rnd[DX__GW_EPOCH_LEN / 2];
    if (dx__random(seams, rnd, sizeof rnd) != 0) {
        *err = DX_ERANDOM;
        return NULL;
    }
    dx__gw_log *log = dx__alloc(seams, sizeof *log);
    if (!log) {
        *err = DX_ENOMEM;
        return NULL;
    }
    memset(log, 0, sizeof *log);
    log->seams = seams;
    if (opts)
        log->opts = *opts;
    else
        dx__gw_log_opts_default(&log->opts);
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof rnd; i++) {
        log->epoch[2 * i] = hex[rnd[i] >> 4];
        log->epoch[2 * i + 1] = hex[rnd[i] & 15];
    }
    log->epoch[DX__GW_EPOCH_LEN] = '\0';
    *err = 0;
    return log;
}

static dx__gw_entry **ring_at(const dx__gw_log *log, size_t i)
{
    size_t j = log->head + i;
    if (j >= log->cap)
        j -= log->cap;
    return &log->ring[j];
}

static void drop_head(dx__gw_log *log)
{
    dx__gw_entry *e = log->ring[log->head];
    log->ring[log->head] = NULL;
    log->bytes -= e->len;
    if (++log->head == log->cap)
        log->head = 0;
    log->n--;
    dx__gw_entry_unref(e);
}

void dx__gw_log_free(dx__gw_log *log)
{
    if (!log)
        return;
    while (log->n)
        drop_head(log);
    dx__free(log->seams, log->ring);
    dx__free(log->seams, log);
}

const char *dx__gw_log_epoch(const dx__gw_log *log) { return log->epoch; }
uint64_t dx__gw_log_offset(const dx__gw_log *log) { return log->offset; }
size_t dx__gw_log_count(const dx__gw_log *log) { return log->n; }
size_t dx__gw_log_bytes(const dx__gw_log *log) { return log->bytes; }

static size_t trim_age(dx__gw_log *log, uint64_t now)
{
    if (!log->opts.max_age_ns)
        return 0;
    size_t dropped = 0;
    while (log->n) {
        const dx__gw_entry *e = log->ring[log->head];
        /* A clock that went backwards (not monotonic) keeps the entry. */
        if (now < e->time_ns || now - e->time_ns < log->opts.max_age_ns)
            break;
        drop_head(log);
        dropped++;
    }
    return dropped;
}

size_t dx__gw_log_trim(dx__gw_log *log)
{
    if (!log->opts.max_age_ns || !log->n)
        return 0;
    return trim_age(log, dx__now_ns(log->seams));
}

/* Room for one more entry: grows the ring by doubling up to max_count. */
static int ring_reserve(dx__gw_log *log)
{
    if (log->n < log->cap)
        return 0;
    size_t cap = log->cap ? log->cap * 2 : 8;
    if (cap > log->opts.max_count || cap < log->cap)
        cap = log->opts.max_count;
    if (cap > SIZE_MAX / sizeof *log->ring)
        return DX_ENOMEM;
    dx__gw_entry **ring = dx__alloc(log->seams, cap * sizeof *ring);
    if (!ring)
        return DX_ENOMEM;
    for (size_t i = 0; i < log->n; i++)
        ring[i] = *ring_at(log, i);
    dx__free(log->seams, log->ring);
    log->ring = ring;
    log->cap = cap;
    log->head = 0;
    return 0;
}

int dx__gw_log_append(dx__gw_log *log, dx__gw_kind kind, const void *data, size_t len,
                      dx__gw_entry **out)
{
    if (out)
        *out = NULL;
    if (kind < DX__GW_KIND_JSON || kind > DX__GW_KIND_BINARY || (!data && len))
        return DX_EINVAL;
    if (log->offset >= DX__GW_OFFSET_MAX)
        return DX_ELIMIT;
    dx__gw_entry *e = entry_new(log->seams, kind, data, len);
    if (!e)
        return DX_ENOMEM;
    uint64_t now = dx__now_ns(log->seams);
    trim_age(log, now);
    if (log->opts.max_count) {
        if (log->n == log->opts.max_count) {
            drop_head(log); /* the count bound: the oldest goes */
        } else if (ring_reserve(log) != 0) {
            dx__free(log->seams, e);
            return DX_ENOMEM;
        }
    }
    e->offset = ++log->offset;
    e->time_ns = now;
    log->sequenced = true;
    if (log->opts.max_count) {
        *ring_at(log, log->n) = dx__gw_entry_ref(e);
        log->n++;
        log->bytes += len;
    }
    if (out)
        *out = e;
    else
        dx__gw_entry_unref(e);
    return 0;
}

int dx__gw_log_seek(dx__gw_log *log, uint64_t offset)
{
    if (log->sequenced)
        return DX_ESTATE;
    if (offset > DX__GW_OFFSET_MAX)
        return DX_EINVAL;
    log->offset = offset;
    log->sequenced = true;
    return 0;
}

static void snapshot_head(const dx__gw_log *log, dx__gw_snapshot *out)
{
    memcpy(out->epoch, log->epoch, sizeof out->epoch);
    out->offset = log->offset;
    out->recovered = false;
    out->n = 0;
    out->entries = NULL;
}

/* Copies `n` references starting at ring index `first` into out. */
static int snapshot_fill(const dx__gw_log *log, size_t first, size_t n, dx__gw_snapshot *out)
{
    if (!n)
        return 0;
    dx__gw_entry **v = dx__alloc(log->seams, n * sizeof *v);
    if (!v)
        return DX_ENOMEM;
    for (size_t i = 0; i < n; i++)
        v[i] = dx__gw_entry_ref(*ring_at(log, first + i));
    out->entries = v;
    out->n = n;
    return 0;
}

int dx__gw_log_resume(dx__gw_log *log, uint64_t since, const char *epoch,
                      dx__gw_snapshot *out)
{
    dx__gw_log_trim(log);
    snapshot_head(log, out);
    if (epoch && strcmp(epoch, log->epoch) != 0)
        return 0; /* another epoch: continuity lost */
    if (since > log->offset)
        return 0; /* ahead of the current offset: not this history */
    if (since == log->offset) {
        out->recovered = true; /* nothing missed */
        return 0;
    }
    /* since < offset: recovered iff since+1 is retained. The ring holds
     * offsets offset-n+1 .. offset. */
    uint64_t oldest = log->offset - log->n + 1;
    if (!log->n || since + 1 < oldest)
        return 0;
    int rc = snapshot_fill(log, (size_t)(since + 1 - oldest), (size_t)(log->offset - since), out);
    if (rc)
        return rc;
    out->recovered = true;
    return 0;
}

int dx__gw_log_history(dx__gw_log *log, uint64_t since, size_t limit, dx__gw_snapshot *out)
{
    dx__gw_log_trim(log);
    snapshot_head(log, out);
    if (limit > DX__GW_HISTORY_LIMIT_MAX)
        limit = DX__GW_HISTORY_LIMIT_MAX;
    if (since >= log->offset) {
        out->recovered = since == log->offset;
        return 0;
    }
    if (!log->n)
        return 0;
    uint64_t oldest = log->offset - log->n + 1;
    uint64_t from = since + 1 < oldest ? oldest : since + 1;
    size_t n = (size_t)(log->offset - from + 1);
    if (n > limit)
        n = limit;
    int rc = snapshot_fill(log, (size_t)(from - oldest), n, out);
    if (rc)
        return rc;
    out->recovered = from == since + 1;
    return 0;
}

void dx__gw_snapshot_deinit(dx__gw_snapshot *s)
{
    if (!s->entries) {
        s->n = 0;
        return;
    }
    /* The array was allocated with the entries' seams (the log's). */
    const dx_seams *seams = s->entries[0]->seams;
    for (size_t i = 0; i < s->n; i++)
        dx__gw_entry_unref(s->entries[i]);
    dx__free(seams, s->entries);
    s->entries = NULL;
    s->n = 0;
}

/* ---- the stitcher ------------------------------------------------------ */

void dx__gw_stitch_init(dx__gw_stitch *st, const dx_seams *seams,
                        const dx__gw_stitch_ops *ops, void *ud)
{
    memset(st, 0, sizeof *st);
    st->seams = seams;
    st->ops = ops;
    st->ud = ud;
}

void dx__gw_stitch_deinit(dx__gw_stitch *st)
{
    for (size_t i = 0; i < st->nheld; i++)
        dx__gw_entry_unref(st->held[i]);
    dx__free(st->seams, st->held);
    st->held = NULL;
    st->nheld = st->capheld = 0;
}

/* Delivers e if it is the next offset or above it (after reporting the
 * skipped ones); drops it if already delivered or covered. */
static void pass(dx__gw_stitch *st, dx__gw_entry *e)
{
    if (e->offset < st->next)
        return; /* covered by the snapshot, or before the ack */
    if (e->offset > st->next && st->ops->gap)
        st->ops->gap(st->ud, st->next, e->offset - 1);
    st->next = e->offset + 1;
    st->ops->deliver(st->ud, e);
}

int dx__gw_stitch_live(dx__gw_stitch *st, dx__gw_entry *e)
{
    if (st->have_history) {
        pass(st, e);
        return 0;
    }
    if (st->nheld == st->capheld) {
        size_t cap = st->capheld ? st->capheld * 2 : 8;
        if (cap > SIZE_MAX / sizeof *st->held)
            return DX_ENOMEM;
        dx__gw_entry **v = dx__realloc(st->seams, st->held, cap * sizeof *v);
        if (!v)
            return DX_ENOMEM;
        st->held = v;
        st->capheld = cap;
    }
    st->held[st->nheld++] = dx__gw_entry_ref(e);
    return 0;
}

int dx__gw_stitch_history(dx__gw_stitch *st, const dx__gw_snapshot *snap)
{
    if (st->have_history)
        return DX_ESTATE;
    st->have_history = true;
    if (snap->recovered) {
        /* The snapshot's entries are since+1 .. offset: start at the first. */
        st->next = snap->n ? snap->entries[0]->offset : snap->offset + 1;
        for (size_t i = 0; i < snap->n; i++)
            pass(st, snap->entries[i]);
    }
    /* Not recovered: only what was published after the ack. */
    st->next = snap->offset + 1;
    /* Held live entries: those the snapshot covered are dropped by pass().
     * The callbacks may not re-enter this stitcher, so the queue is stable. */
    for (size_t i = 0; i < st->nheld; i++) {
        pass(st, st->held[i]);
        dx__gw_entry_unref(st->held[i]);
    }
    dx__free(st->seams, st->held);
    st->held = NULL;
    st->nheld = st->capheld = 0;
    return 0;
}
