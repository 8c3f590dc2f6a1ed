/*
 * cmd/duplex/lineedit.c: see lineedit.h. libedit's readline-compatible
 * callback interface: connect's loop calls rl_callback_read_char from its
 * watch on fd 0 when a key is there, so the loop keeps serving the
 * connection, the signal pipe and the timers while a line is being edited.
 *
 * Invariant: one thread (the loop's) makes every call here, so no lock: a
 * redraw (le_output_*) never runs inside le_read_char, because the line
 * callback only collects the line and output happens after it returns.
 */
#include "lineedit.h"

#include <errno.h>
#include <stdio.h>
#include <termios.h>
#include <unistd.h>

static bool have_termios;
static struct termios saved; /* the terminal before le_start */

void le_restore_terminal(void)
{
    if (have_termios)
        tcsetattr(0, TCSANOW, &saved);
}

#ifdef DX_HAVE_LIBEDIT
#include <editline/readline.h>

static bool active;
static bool eof_typed; /* Ctrl-D on an empty line, seen by on_ctrl_d */
static bool line_done;  /* on_line ran during this read */
static le_line_fn line_fn;
static void *line_ud;
static char prompt_copy[16];

static void on_line(char *line)
{
    if (line && *line)
        add_history(line);
    line_done = true;
    line_fn(line, line_ud);
}

/* libedit's callback mode swallows Ctrl-D on an empty line (its
 * em-delete-or-list returns EOF, which rl_callback_read_char drops), so the
 * key gets a function of its own: end of input on an empty line, else
 * nothing (no "delete or list" surprise in the middle of a message). */
static int on_ctrl_d(int count, int key)
{
    (void)count;
    (void)key;
    if (!rl_line_buffer || !rl_line_buffer[0])
        eof_typed = true;
    return 0;
}

int le_start(const char *prompt, le_line_fn fn, void *ud)
{
    if (!isatty(0) || !isatty(1))
        return -1;
    have_termios = tcgetattr(0, &saved) == 0;
    line_fn = fn;
    line_ud = ud;
    rl_catch_signals = 0; /* Ctrl-C stays the application's (close 1000) */
    using_history();
    snprintf(prompt_copy, sizeof prompt_copy, "%s", prompt);
    rl_callback_handler_install(prompt_copy, on_line);
    rl_add_defun("duplex-eof", on_ctrl_d, 4); /* rl_bind_key binds only rl_insert in libedit */
    active = true;
    return 0;
}

void le_read_char(void)
{
    if (active) {
        rl_callback_read_char();
        if (line_done) {
            /* libedit leaves the terminal cooked (and itself line-buffered)
             * after a line; installing the handler again makes it raw and
             * char-at-a-time again, with a fresh prompt. */
            line_done = false;
            rl_callback_handler_install(prompt_copy, on_line);
        }
        if (eof_typed) {
            eof_typed = false;
            line_fn(NULL, line_ud);
        }
    }
}

void le_stop(void)
{
    if (active) {
        active = false;
        rl_callback_handler_remove();
        le_restore_terminal();
        fputs("\r\033[K", stdout); /* the prompt (and any unsent text) goes */
        fflush(stdout);
    }
}

void le_output_begin(void)
{
    if (active) {
        /* Back to the start of the row and clear it: the prompt and the
         * typed text are drawn again by le_output_end. (A typed line longer
         * than the terminal is wide keeps its upper rows.) */
        fputs("\r\033[K", stdout);
        fflush(stdout); /* before anything written to stderr */
    }
}

void le_output_end(void)
{
    fflush(stdout);
    fflush(stderr);
    if (active)
        rl_forced_update_display();
}

const char *le_name(void) { return "libedit"; }

#else /* no libedit: plain reading */

int le_start(const char *prompt, le_line_fn fn, void *ud)
{
    (void)prompt;
    (void)fn;
    (void)ud;
    return -1;
}

void le_read_char(void) {}
void le_stop(void) {}
void le_output_begin(void) {}

void le_output_end(void)
{
    fflush(stdout);
    fflush(stderr);
}

const char *le_name(void) { return "none"; }
#endif
