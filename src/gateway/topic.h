/*
 * src/gateway/topic.h: topic names, patterns, and the subscription index of
 * one worker thread (GATEWAY.md "Topics").
 *
 * Layer: gateway (uses only core). Names and their rules:
 *  - a topic is 1-200 bytes of [A-Za-z0-9_.:@/-]; dots separate segments and
 *    no segment is empty (no leading, trailing or doubled dot), so "a..b",
 *    ".a" and "a." are refused: an empty segment would make `*` ambiguous;
 *  - a pattern has the same syntax, where a segment may also be exactly `*`
 *    (one segment) or, as the last segment only, exactly `>` (one or more
 *    segments). `a*`, `>.a`, `a.>.b` are refused. A pattern is refused where
 *    a topic is required (publish, history, presence);
 *  - a topic beginning with `user:` is the personal topic of the user whose
 *    id is everything after `user:` (dots included: "user:a.b" is the topic
 *    of user "a.b"); the id is not empty and does not begin with a dot.
 *    Patterns never match a `user:` topic, however it splits in segments,
 *    and a pattern whose first segment begins with `user:` is refused (it
 *    could match nothing).
 *    The prefix is case-sensitive ("User:x" is an ordinary topic).
 *
 * The index maps topics and patterns to subscribers (opaque pointers: the
 * gateway's per-connection state) for one thread: it is not thread-safe.
 * Exact topics (and `user:` topics) live in a hash table; patterns live in a
 * trie of segments whose literal edges are in one hash table keyed by
 * (parent node, segment). All the memory the index holds is released as
 * subscriptions leave: a topic entry, trie node or subscriber record exists
 * only while a subscription needs it, and the hash tables shrink.
 * Hashes are seeded from the seams' randomness.
 */
#ifndef DX_GATEWAY_TOPIC_H
#define DX_GATEWAY_TOPIC_H

#include "duplex/duplex.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DX__GW_TOPIC_MAX 200 /* bytes in a topic or pattern */

typedef enum dx__gw_topic_kind {
    DX__GW_TOPIC_INVALID = 0, /* not a topic nor a pattern */
    DX__GW_TOPIC_EXACT,       /* an ordinary topic */
    DX__GW_TOPIC_USER,        /* a `user:<id>` topic */
    DX__GW_TOPIC_PATTERN,     /* has a `*` or `>` segment */
} dx__gw_topic_kind;

/* What `name` (`len` bytes, not NUL-terminated; NULL only with len 0) is.
 * O(len). Pure; callable from anywhere. */
dx__gw_topic_kind dx__gw_topic_classify(const char *name, size_t len);

/* 0 when `name` is a topic one may publish to (EXACT or USER), DX_EINVAL
 * otherwise (invalid, or a pattern). O(len). */
int dx__gw_topic_check(const char *name, size_t len);

/* 0 when `name` may be subscribed to (EXACT, USER or PATTERN), DX_EINVAL
 * otherwise. O(len). */
int dx__gw_topic_check_sub(const char *name, size_t len);

/* When `name` is a valid `user:<id>` topic: true, and *id / *idlen (either
 * may be NULL) point into `name` at the id. Otherwise false, outputs
 * untouched. O(len). */
bool dx__gw_topic_user_id(const char *name, size_t len, const char **id, size_t *idlen);

/* True when `pattern` (a topic or a pattern) matches `topic` (a topic):
 * equal, or a pattern matching it segment by segment; a pattern never
 * matches a `user:` topic. False when either is invalid or `topic` is a
 * pattern. For checking a name against a list of allowed patterns (JWT
 * `publish` claims). O(plen + tlen). Pure. */
bool dx__gw_topic_matches(const char *pattern, size_t plen, const char *topic, size_t tlen);

/* True when every topic that `req` (a topic or pattern) matches is also
 * matched by `allowed` (a topic or pattern): for checking a subscription
 * against allowed patterns (JWT `subscribe` claims). Exact, segment by
 * segment: `>` covers one or more segments of anything (`*` and `>`
 * included), `*` covers a literal or `*`, a literal only itself; a `>` in
 * `req` is covered only by a `>` at the same place. False when either is
 * invalid. O(alen + rlen). Pure. */
bool dx__gw_topic_covers(const char *allowed, size_t alen, const char *req, size_t rlen);

typedef struct dx__gw_topic_index dx__gw_topic_index;

/* A new, empty index allocating through `seams` (NULL: the defaults; kept by
 * pointer, must outlive the index). Returns 0 and *out, DX_ENOMEM, or
 * DX_ERANDOM (no hash seed). O(1). */
int dx__gw_topic_index_new(const dx_seams *seams, dx__gw_topic_index **out);

/* Frees the index and everything it holds (NULL: nothing). Subscribers are
 * not touched. Not callable from a match callback. O(size). */
void dx__gw_topic_index_free(dx__gw_topic_index *ix);

/* Subscribes `sub` (not NULL) to `name`, a topic or a pattern. `name` is
 * copied; `sub` is kept (never dereferenced) until this subscription is
 * unsubscribed or the subscriber removed: remove it before freeing what it
 * points to, or a later match hands out the stale pointer. Returns 0
 * (added), 1 (already subscribed: nothing changed), DX_EINVAL (invalid name,
 * NULL sub), DX_ENOMEM (nothing changed) or DX_ESTATE (called during a
 * match). The index does not check who may subscribe to a `user:` topic,
 * nor a per-subscriber cap: the caller does (see dx__gw_topic_sub_count).
 * O(len + k) where k is the number of `sub`'s subscriptions, plus the
 * amortised hash-table growth. */
int dx__gw_topic_subscribe(dx__gw_topic_index *ix, const char *name, size_t len, void *sub);

/* Removes `sub`'s subscription to `name` (exactly as subscribed: a pattern
 * removes that pattern only). Returns 0 (removed), 1 (was not subscribed,
 * including an invalid name) or DX_ESTATE (called during a match). Never
 * allocates; empty entries are freed. O(len + k). */
int dx__gw_topic_unsubscribe(dx__gw_topic_index *ix, const char *name, size_t len, void *sub);

/* Removes every subscription of `sub` (a connection that closed). Returns 0,
 * or DX_ESTATE (called during a match). O(k × segments). */
int dx__gw_topic_remove_subscriber(dx__gw_topic_index *ix, void *sub);

/* Called once per matching subscriber. `pattern` is NULL when the
 * subscriber subscribed to the exact topic (exact wins over any pattern it
 * also has), else one of its matching patterns (NUL-terminated, valid
 * during the call). The callback must not subscribe, unsubscribe or remove
 * on this index (those return DX_ESTATE); it may note what to do after. */
typedef void (*dx__gw_topic_match_fn)(void *ud, void *sub, const char *pattern, size_t plen);

/* Calls `fn` (with `ud`) before returning, once for each subscriber whose
 * subscriptions match `topic` (borrowed for the call), the exact topic's
 * subscribers first: at most once per subscriber, however many of its
 * subscriptions match. Returns the number of calls (>= 0), DX_EINVAL
 * (`topic` is not a publishable topic) or DX_ESTATE (nested in a match).
 * Never allocates. Cost: O(len) to hash, plus the exact topic's
 * subscribers, plus, unless `topic` is a `user:` topic, the trie nodes
 * whose path matches a prefix of `topic` (at most 3 child lookups each:
 * literal, `*`, `>`) and their subscriptions. The visited nodes are bounded
 * by the trie's size and by 2^segments (only `*` branches); with few `*`
 * per level this is O(segments × branching) + O(matches), independent of
 * the subscriptions that do not match. */
int dx__gw_topic_match(dx__gw_topic_index *ix, const char *topic, size_t len,
                       dx__gw_topic_match_fn fn, void *ud);

/* Subscriptions (topics and patterns) `sub` holds. O(1) expected. */
size_t dx__gw_topic_sub_count(const dx__gw_topic_index *ix, const void *sub);

/* Exact topics (user: included) with at least one subscriber. O(1). */
size_t dx__gw_topic_index_topics(const dx__gw_topic_index *ix);

/* Distinct patterns with at least one subscriber. O(1). */
size_t dx__gw_topic_index_patterns(const dx__gw_topic_index *ix);

/* Distinct subscribers holding at least one subscription. O(1). */
size_t dx__gw_topic_index_subscribers(const dx__gw_topic_index *ix);

/* Test hook: work done by the last dx__gw_topic_match: hash-chain entries
 * compared, trie nodes entered and subscriptions examined. O(1). */
uint64_t dx__gw_topic_index_visited(const dx__gw_topic_index *ix);

/* Test hook: trie nodes held, the root excluded (0 when no pattern). O(1). */
size_t dx__gw_topic_index_nodes(const dx__gw_topic_index *ix);

#endif
