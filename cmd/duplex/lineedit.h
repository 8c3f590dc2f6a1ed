/*
 * cmd/duplex/lineedit.h: line editing and history for `duplex connect`'s
 * interactive mode (libedit's readline interface), with received output
 * that does not land in the middle of the line being typed.
 *
 * One terminal, one editor per process, one thread: every function here is
 * called on connect's loop thread (le_read_char from the watch on fd 0,
 * le_output_begin/end around output from the connection's callbacks), never
 * le_output_* from inside le_read_char's line callback. Built without
 * libedit (DX_HAVE_LIBEDIT undefined), le_start fails and the caller reads
 * stdin as before.
 */
#ifndef DX_CMD_LINEEDIT_H
#define DX_CMD_LINEEDIT_H

#include <stdbool.h>

/* A typed line (malloc'ed, without its newline; the callee frees it), or
 * NULL at the end of input (Ctrl-D on an empty line). Called from inside
 * le_read_char. */
typedef void (*le_line_fn)(char *line, void *ud);

/* Takes the terminal (fd 0/1): prompt, raw mode, history. 0, or -1 when
 * line editing is not available (not built in, or not a terminal). */
int le_start(const char *prompt, le_line_fn fn, void *ud);
/* stdin is readable: lets the editor take a key (may call fn, which must
 * only collect the line: no output, no le_stop inside it). Reads fd 0 once;
 * fd 0 must be readable (it may be blocking: libedit clears O_NONBLOCK). */
void le_read_char(void);
/* Gives the terminal back (its settings as before le_start). Idempotent. */
void le_stop(void);
/* Around any write to the terminal while the editor runs: begin clears the
 * line being typed, end redraws the prompt and that line below the output.
 * No-ops when the editor is not running. */
void le_output_begin(void);
void le_output_end(void);
/* From a signal handler, before _exit: restores the terminal settings
 * (tcsetattr only: async-signal-safe). */
void le_restore_terminal(void);
/* "libedit" or "none": what --version reports. */
const char *le_name(void);

#endif
