/*
 * src/gateway/history.h: one topic's sequencer and bounded history, and the
 * per-subscriber stitching of history and live messages (GATEWAY.md,
 * "Topics" and "Delivery guarantees": resume).
 *
 * Threading: a dx__gw_log has no lock inside. It belongs to its topic's
 * owner thread, which alone appends to it and reads it. What crosses threads
 * are entries (dx__gw_entry, atomically reference-counted, immutable once
 * appended) and snapshots (plain arrays of entry references, handed over
 * whole). A dx__gw_stitch belongs to its subscriber's thread, and has no lock
 * either.
 *
 * Offsets: 1, 2, 3... per topic, +1 per append, no holes, at most
 * DX__GW_OFFSET_MAX (2^53 - 1, so a JSON number carries it exactly). The
 * current offset is the last one given (0 before the first). The epoch is an
 * opaque string drawn from the seams' randomness when the log is created; an
 * in-memory store loses continuity only by recreating the log, which draws a
 * new one.
 *
 * Retention: the newest entries, at most max_count of them and none older
 * than max_age_ns (by the seams' clock). Trimming happens on every append and
 * every read, and through dx__gw_log_trim (for an idle topic's timer); each
 * entry is trimmed once, so its cost is amortised O(1) per append.
 *
 * None of these functions fires a callback except the stitcher's, which
 * fires its own ops synchronously from the call that feeds it. All may be
 * called from inside any callback of the thread that owns the object.
 * Accessors (offset, epoch, count, bytes, entry fields) are O(1).
 */
#ifndef DX_GATEWAY_HISTORY_H
#define DX_GATEWAY_HISTORY_H

#include "duplex/duplex.h"
#include "duplex/msg.h"
#include "gateway/kind.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The largest offset: offsets stay below 2^53. */
#define DX__GW_OFFSET_MAX ((UINT64_C(1) << 53) - 1)

/* GATEWAY.md "With no configuration": the last 1,000 messages, 10 minutes. */
#define DX__GW_HISTORY_COUNT_DEFAULT 1000u
#define DX__GW_HISTORY_AGE_DEFAULT_NS (UINT64_C(600) * 1000000000u)

/* /api/history's `limit`: 100 when absent, never more than 1000. */
#define DX__GW_HISTORY_LIMIT_DEFAULT 100u
#define DX__GW_HISTORY_LIMIT_MAX 1000u

/* An epoch is this many lowercase hex digits (64 random bits). */
#define DX__GW_EPOCH_LEN 16


/* "json", "text" or "binary"; "?" for any other value. */
const char *dx__gw_kind_name(dx__gw_kind kind);

/* Prepared frames an entry may carry, one per dialect (raw: the payload as a
 * text or binary message; JSON: the `msg` envelope). */
typedef enum dx__gw_frame {
    DX__GW_FRAME_RAW = 0,
    DX__GW_FRAME_JSON = 1,
    DX__GW_FRAME_N = 2,
} dx__gw_frame;

/* ---- entries ----------------------------------------------------------- */

/*
 * One accepted message: offset, kind, publish time and payload, in one
 * allocation. Immutable once appended, except for the prepared-frame slots,
 * which are set at most once each (atomically). The reference count is
 * atomic: references may be taken and dropped on any thread.
 */
typedef struct dx__gw_entry dx__gw_entry;

/* Takes one more reference; returns e. O(1). */
dx__gw_entry *dx__gw_entry_ref(dx__gw_entry *e);

/* Drops one reference; the last frees the entry and drops its prepared
 * frames. NULL is ignored. O(1). */
void dx__gw_entry_unref(dx__gw_entry *e);

uint64_t dx__gw_entry_offset(const dx__gw_entry *e);
dx__gw_kind dx__gw_entry_kind(const dx__gw_entry *e);
/* The seams' clock when it was appended (ns). */
uint64_t dx__gw_entry_time_ns(const dx__gw_entry *e);
/* The payload: valid as long as a reference is held. */
const uint8_t *dx__gw_entry_data(const dx__gw_entry *e);
size_t dx__gw_entry_len(const dx__gw_entry *e);

/* The prepared frame in `slot`, borrowed (valid while the caller holds its
 * reference to e), or NULL if none was set yet. Any thread. O(1). */
dx_msg *dx__gw_entry_frame(dx__gw_entry *e, dx__gw_frame slot);

/*
 * Offers `m` as the prepared frame of `slot`, built lazily by whichever
 * thread needed it first. Takes over the caller's reference to m. If the
 * slot was empty, m is kept; if another thread set it first, m is dropped.
 * Returns the frame now in the slot (borrowed, like dx__gw_entry_frame), or
 * NULL when m is NULL or slot is out of range (m then dropped). Any thread;
 * lock-free; O(1).
 */
dx_msg *dx__gw_entry_set_frame(dx__gw_entry *e, dx__gw_frame slot, dx_msg *m);

/*
 * A new entry made outside a log, for a bus that sequences elsewhere (the
 * Redis bus rebuilds the entries it reads or receives): the given offset,
 * kind, time and a copy of the payload, one reference. `seams` as for
 * dx__gw_log_new. NULL when out of memory or kind is bad. O(len).
 */
dx__gw_entry *dx__gw_entry_new(const dx_seams *seams, dx__gw_kind kind, const void *data, size_t len,
                               uint64_t offset, uint64_t time_ns);

/* ---- the topic log ----------------------------------------------------- */

typedef struct dx__gw_log dx__gw_log;

typedef struct dx__gw_log_opts {
    size_t max_count;    /* entries retained at most; 0: none (history off) */
    uint64_t max_age_ns; /* an entry is trimmed once this old; 0: no age bound */
} dx__gw_log_opts;

/* The defaults: DX__GW_HISTORY_COUNT_DEFAULT, DX__GW_HISTORY_AGE_DEFAULT_NS. */
void dx__gw_log_opts_default(dx__gw_log_opts *o);

/*
 * A new, empty log: current offset 0, a fresh random epoch. `seams` (NULL:
 * defaults) gives the allocator, the randomness and the clock, and must
 * outlive the log and every entry it made. `opts` NULL means the defaults;
 * it is copied. Returns NULL with *err (if err is not NULL): DX_ENOMEM,
 * DX_ERANDOM (the randomness seam failed). O(1): the retention ring grows
 * with use, up to max_count.
 */
dx__gw_log *dx__gw_log_new(const dx_seams *seams, const dx__gw_log_opts *opts, int *err);

/* Frees the log and drops its references to its entries (entries held
 * elsewhere stay valid). NULL is ignored. O(retained). */
void dx__gw_log_free(dx__gw_log *log);

/* The epoch: DX__GW_EPOCH_LEN characters, NUL-terminated, fixed for the
 * log's life. O(1). */
const char *dx__gw_log_epoch(const dx__gw_log *log);

/* The current offset: the last one given, 0 before the first. O(1). */
uint64_t dx__gw_log_offset(const dx__gw_log *log);

/* Entries retained right now (without trimming first). O(1). */
size_t dx__gw_log_count(const dx__gw_log *log);

/* Payload bytes retained right now (for /metrics). O(1). */
size_t dx__gw_log_bytes(const dx__gw_log *log);

/*
 * Sequences one message: gives it offset current+1, records the clock, keeps
 * it in the history (trimming by count and age first) and, if `out` is not
 * NULL, stores in *out a reference for the caller (to hand to the fan-out;
 * drop it with dx__gw_entry_unref). `data` may be NULL when len is 0; it is
 * copied once. Returns 0; DX_EINVAL (bad kind, or data NULL with len > 0);
 * DX_ELIMIT (the current offset is DX__GW_OFFSET_MAX: nothing more may be
 * published on this topic in this epoch); DX_ENOMEM. On any error the
 * offset is not consumed and the history is unchanged. Amortised O(1) plus
 * the payload copy.
 */
int dx__gw_log_append(dx__gw_log *log, dx__gw_kind kind, const void *data, size_t len,
                      dx__gw_entry **out);

/*
 * Sets the current offset of a log that never gave one (for tests of the
 * 2^53 limit, and for a store that continues a sequence it persisted).
 * Returns 0; DX_ESTATE (the log already gave an offset); DX_EINVAL (offset
 * above DX__GW_OFFSET_MAX). O(1).
 */
int dx__gw_log_seek(dx__gw_log *log, uint64_t offset);

/* Trims by age at the seams' clock now (count is kept by append). Returns
 * the number of entries dropped. Amortised O(1) per entry ever appended. */
size_t dx__gw_log_trim(dx__gw_log *log);

/*
 * A read of the log: the answer to a resume or a history request, owned by
 * whoever holds it (any thread) and released with dx__gw_snapshot_deinit.
 */
typedef struct dx__gw_snapshot {
    char epoch[DX__GW_EPOCH_LEN + 1]; /* the log's epoch */
    uint64_t offset;                  /* the current offset at the read */
    bool recovered;                   /* resume: see dx__gw_log_resume */
    size_t n;                         /* entries */
    dx__gw_entry **entries;           /* n references, ascending offsets, no holes */
} dx__gw_snapshot;

/*
 * Resume decision for `sub` with since {offset N, epoch E} (GATEWAY.md,
 * "Delivery guarantees"), after trimming by age. `epoch` NULL means the
 * log's current epoch (the raw dialect's and SSE's `since`).
 *   recovered = true iff E is the current epoch and either N is the current
 *   offset or N+1 is still retained; the snapshot then holds the entries
 *   with offsets N+1 .. current, in order (none when N is current).
 *   Otherwise (another epoch, N+1 trimmed, N ahead of current) recovered is
 *   false and the snapshot holds no entry.
 * In both cases out->offset and out->epoch are the current ones. Returns 0,
 * or DX_ENOMEM (out is then empty and owns nothing). O(entries copied).
 */
int dx__gw_log_resume(dx__gw_log *log, uint64_t since, const char *epoch,
                      dx__gw_snapshot *out);

/*
 * /api/history: after trimming by age, the retained entries with offsets
 * above `since`, ascending, starting right after `since` (or at the oldest
 * retained one if since+1 was trimmed), at most `limit` of them, limit
 * capped at DX__GW_HISTORY_LIMIT_MAX (the caller maps an absent limit to
 * DX__GW_HISTORY_LIMIT_DEFAULT). out->recovered says whether the entries
 * start right after `since` (nothing between since and them was trimmed).
 * Returns 0, or DX_ENOMEM (out empty). O(entries copied).
 */
int dx__gw_log_history(dx__gw_log *log, uint64_t since, size_t limit, dx__gw_snapshot *out);

/* Drops the snapshot's references and array; leaves it empty (n 0).
 * Idempotent. O(n). */
void dx__gw_snapshot_deinit(dx__gw_snapshot *s);

/* ---- the live/history seam ---------------------------------------------- */

/*
 * A subscriber that resumes registers for live messages first, then the
 * topic's owner reads the log (dx__gw_log_resume) and hands the snapshot
 * over. Live entries may reach the subscriber before the snapshot, and some
 * of them may also be in it. The stitcher delivers each offset exactly once
 * and in order: live entries that arrive before the snapshot are held;
 * those the snapshot covers are dropped; the rest follow the snapshot.
 *
 * When the snapshot is not recovered, only entries above its current offset
 * are delivered (GATEWAY.md: "only live messages follow").
 *
 * The registration must precede the read (then no live entry above the
 * snapshot's offset can be missed); if a live entry ever skips offsets, the
 * stitcher reports the hole through `gap` before delivering it, and keeps
 * going.
 *
 * The ops must not call back into the same stitcher (they may call anything
 * else, e.g. queue the entry on a connection, or close it).
 */
typedef struct dx__gw_stitch_ops {
    /* One entry, in order; the reference is borrowed for the call (take one
     * with dx__gw_entry_ref to keep it). */
    void (*deliver)(void *ud, dx__gw_entry *e);
    /* Offsets from..to (inclusive) will not be delivered. May be NULL. */
    void (*gap)(void *ud, uint64_t from, uint64_t to);
} dx__gw_stitch_ops;

typedef struct dx__gw_stitch {
    const dx_seams *seams;
    const dx__gw_stitch_ops *ops;
    void *ud;
    uint64_t next;      /* the next offset to deliver, once the snapshot came */
    bool have_history;  /* the snapshot came: live entries pass straight */
    dx__gw_entry **held; /* live entries that came before the snapshot, FIFO */
    size_t nheld, capheld;
} dx__gw_stitch;

/* Initialises an embedded stitcher; `ops` (deliver required) and `ud` are
 * borrowed for its life; seams (NULL: defaults) allocate the held queue.
 * O(1), no allocation. */
void dx__gw_stitch_init(dx__gw_stitch *st, const dx_seams *seams,
                        const dx__gw_stitch_ops *ops, void *ud);

/* Drops the held entries and the queue. O(held). */
void dx__gw_stitch_deinit(dx__gw_stitch *st);

/*
 * A live entry for this subscriber (the caller keeps its reference). Before
 * the snapshot: held (a reference taken); the queue grows by doubling, so
 * this may allocate: DX_ENOMEM then, nothing held, and the subscriber has
 * lost a message (close it, or send a gap). After the snapshot: delivered
 * if above what was delivered (after a gap report if it skips offsets),
 * dropped otherwise; never allocates. Fires ops synchronously. Returns 0 or
 * DX_ENOMEM. O(1) amortised.
 */
int dx__gw_stitch_live(dx__gw_stitch *st, dx__gw_entry *e);

/*
 * The snapshot for this subscriber (the caller keeps it and deinits it
 * afterwards). Delivers its entries if it is recovered, then the held live
 * entries above its current offset (or above the last delivered entry),
 * then the stitcher passes live entries straight through. Returns 0;
 * DX_ESTATE if a snapshot was already given. Fires ops synchronously. O(n
 * + held).
 */
int dx__gw_stitch_history(dx__gw_stitch *st, const dx__gw_snapshot *snap);

#endif
