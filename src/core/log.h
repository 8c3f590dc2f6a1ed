/*
 * src/core/log.h: structured-ish log lines through a sink (dx_log).
 *
 * Never used by src/proto (which does not log). A line is formatted into a
 * stack buffer of DX_LOG_LINE_MAX bytes; a longer line is cut and ends in
 * "...", so logging never allocates.
 */
#ifndef DX_CORE_LOG_H
#define DX_CORE_LOG_H

#include "duplex/duplex.h"

#define DX_LOG_LINE_MAX 1024

/* Formats and emits one line when `level` passes log->level. `log` NULL: the
 * default (stderr, level INFO). */
void dx__log(const dx_log *log, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* True when a line at `level` would be emitted: callers test it first when
 * the arguments cost something to compute (an address formatted, a clock
 * read), so a quiet log costs nothing per connection. */
static inline int dx__log_on(const dx_log *log, int level) { return level <= (log ? log->level : DX_LOG_INFO); }

/* "error", "warn", "info", "debug". */
const char *dx__log_level_name(int level);

#endif
