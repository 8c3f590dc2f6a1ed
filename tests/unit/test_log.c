/* tests/unit/test_log.c: src/core/log.c — line formatting, levels, the stderr sink. */
#define _POSIX_C_SOURCE 200809L
#include "testutil.h"

#include "core/log.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* A sink that keeps what it was given. */
typedef struct capture {
    int n;
    int levels[8];
    char lines[8][DX_LOG_LINE_MAX + 1];
    size_t lens[8];
    int nul_terminated[8];
} capture;

static void capture_sink(void *ud, int level, const char *line, size_t len)
{
    capture *c = ud;
    if (c->n >= 8)
        return;
    c->levels[c->n] = level;
    c->lens[c->n] = len;
    assert_true(len <= DX_LOG_LINE_MAX);
    memcpy(c->lines[c->n], line, len);
    c->lines[c->n][len] = '\0';
    c->nul_terminated[c->n] = line[len] == '\0';
    c->n++;
}

static void test_custom_sink_exact_lines(void **state)
{
    (void)state;
    capture c;
    memset(&c, 0, sizeof c);
    dx_log log = {.sink = capture_sink, .ud = &c, .level = DX_LOG_DEBUG};
    dx__log(&log, DX_LOG_ERROR, "conn %d closed: %s", 7, "reset");
    dx__log(&log, DX_LOG_WARN, "slow consumer %zu bytes", (size_t)65536);
    dx__log(&log, DX_LOG_INFO, "plain");
    dx__log(&log, DX_LOG_DEBUG, "%s", "");
    assert_int_equal(c.n, 4);
    assert_int_equal(c.levels[0], DX_LOG_ERROR);
    assert_string_equal(c.lines[0], "conn 7 closed: reset");
    assert_int_equal(c.lens[0], strlen("conn 7 closed: reset"));
    assert_int_equal(c.levels[1], DX_LOG_WARN);
    assert_string_equal(c.lines[1], "slow consumer 65536 bytes");
    assert_int_equal(c.levels[2], DX_LOG_INFO);
    assert_string_equal(c.lines[2], "plain");
    assert_int_equal(c.levels[3], DX_LOG_DEBUG);
    assert_int_equal(c.lens[3], 0);
    /* No newline is added for sinks. */
    for (int i = 0; i < 4; i++) {
        assert_null(strchr(c.lines[i], '\n'));
        assert_true(c.nul_terminated[i]);
    }
}

static void test_level_filtering(void **state)
{
    (void)state;
    for (int threshold = DX_LOG_ERROR; threshold <= DX_LOG_DEBUG; threshold++) {
        capture c;
        memset(&c, 0, sizeof c);
        dx_log log = {.sink = capture_sink, .ud = &c, .level = threshold};
        for (int level = DX_LOG_ERROR; level <= DX_LOG_DEBUG; level++)
            dx__log(&log, level, "level %d", level);
        /* Lines at or more severe than the threshold pass, in order. */
        assert_int_equal(c.n, threshold + 1);
        for (int i = 0; i < c.n; i++) {
            assert_int_equal(c.levels[i], i);
            char want[32];
            snprintf(want, sizeof want, "level %d", i);
            assert_string_equal(c.lines[i], want);
        }
    }
    /* A negative threshold drops everything. */
    capture c;
    memset(&c, 0, sizeof c);
    dx_log log = {.sink = capture_sink, .ud = &c, .level = -1};
    dx__log(&log, DX_LOG_ERROR, "dropped");
    assert_int_equal(c.n, 0);
}

static void test_long_line_is_cut(void **state)
{
    (void)state;
    static char big[3 * DX_LOG_LINE_MAX];
    for (size_t i = 0; i < sizeof big - 1; i++)
        big[i] = (char)('a' + i % 26);
    big[sizeof big - 1] = '\0';
    capture c;
    memset(&c, 0, sizeof c);
    dx_log log = {.sink = capture_sink, .ud = &c, .level = DX_LOG_DEBUG};

    /* Far too long: cut to DX_LOG_LINE_MAX - 1 bytes, ending in "...". */
    dx__log(&log, DX_LOG_WARN, "%s", big);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.lens[0], DX_LOG_LINE_MAX - 1);
    assert_memory_equal(c.lines[0], big, DX_LOG_LINE_MAX - 4);
    assert_memory_equal(c.lines[0] + DX_LOG_LINE_MAX - 4, "...", 3);
    assert_true(c.nul_terminated[0]);
    assert_int_equal(c.levels[0], DX_LOG_WARN);

    /* The longest line that fits (DX_LOG_LINE_MAX - 1) is untouched. */
    dx__log(&log, DX_LOG_INFO, "%.*s", DX_LOG_LINE_MAX - 1, big);
    assert_int_equal(c.lens[1], DX_LOG_LINE_MAX - 1);
    assert_memory_equal(c.lines[1], big, DX_LOG_LINE_MAX - 1);

    /* One byte more is cut. */
    dx__log(&log, DX_LOG_INFO, "%.*s", DX_LOG_LINE_MAX, big);
    assert_int_equal(c.lens[2], DX_LOG_LINE_MAX - 1);
    assert_memory_equal(c.lines[2], big, DX_LOG_LINE_MAX - 4);
    assert_memory_equal(c.lines[2] + DX_LOG_LINE_MAX - 4, "...", 3);

    /* Cut even when the excess comes from a number at the end. */
    dx__log(&log, DX_LOG_INFO, "%.*s%d", DX_LOG_LINE_MAX - 2, big, 12345);
    assert_int_equal(c.lens[3], DX_LOG_LINE_MAX - 1);
    assert_memory_equal(c.lines[3] + DX_LOG_LINE_MAX - 4, "...", 3);
}

static void test_level_names(void **state)
{
    (void)state;
    assert_string_equal(dx__log_level_name(DX_LOG_ERROR), "error");
    assert_string_equal(dx__log_level_name(DX_LOG_WARN), "warn");
    assert_string_equal(dx__log_level_name(DX_LOG_INFO), "info");
    assert_string_equal(dx__log_level_name(DX_LOG_DEBUG), "debug");
    /* Anything else is reported as the least severe. */
    assert_string_equal(dx__log_level_name(99), "debug");
    assert_string_equal(dx__log_level_name(-1), "debug");
}

/*
 * Runs dx__log with stderr redirected to a temporary file and returns what
 * was written (malloc'd, NUL-terminated). cmocka reports to stdout, and no
 * assertion runs while stderr is redirected.
 */
static char *capture_stderr(const dx_log *log, int level, const char *msg)
{
    FILE *tmp = tmpfile();
    assert_non_null(tmp);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    int rc = dup2(fileno(tmp), STDERR_FILENO);
    if (rc >= 0)
        dx__log(log, level, "%s", msg);
    int rc2 = dup2(saved, STDERR_FILENO);
    close(saved);
    assert_true(rc >= 0);
    assert_true(rc2 >= 0);
    /* write(2) moved the shared file offset behind stdio's back: seek to learn it. */
    assert_int_equal(fseek(tmp, 0, SEEK_END), 0);
    long n = ftell(tmp);
    assert_true(n >= 0);
    rewind(tmp);
    char *out = malloc((size_t)n + 1);
    assert_non_null(out);
    assert_int_equal(fread(out, 1, (size_t)n, tmp), (size_t)n);
    out[n] = '\0';
    fclose(tmp);
    return out;
}

/* "YYYY-MM-DDTHH:MM:SS.mmmZ": 'd' is a digit, anything else literal. */
static int timestamp_shape(const char *s)
{
    const char *shape = "dddd-dd-ddTdd:dd:dd.dddZ";
    for (size_t i = 0; shape[i]; i++) {
        if (shape[i] == 'd' ? !isdigit((unsigned char)s[i]) : s[i] != shape[i])
            return 0;
    }
    return 1;
}

static void test_stderr_sink_format(void **state)
{
    (void)state;
    char day_before[16], day_after[16];
    time_t t0 = time(NULL);
    struct tm tm;
    gmtime_r(&t0, &tm);
    strftime(day_before, sizeof day_before, "%Y-%m-%d", &tm);

    char *out = capture_stderr(NULL, DX_LOG_WARN, "listening on :8080");

    time_t t1 = time(NULL);
    gmtime_r(&t1, &tm);
    strftime(day_after, sizeof day_after, "%Y-%m-%d", &tm);

    /* One line: timestamp, space, level padded to 5, space, message, newline. */
    size_t n = strlen(out);
    assert_true(n > 25);
    assert_int_equal(out[n - 1], '\n');
    assert_ptr_equal(strchr(out, '\n'), out + n - 1);
    if (!timestamp_shape(out))
        fail_msg("timestamp shape: \"%s\"", out);
    assert_true(strncmp(out, day_before, 10) == 0 || strncmp(out, day_after, 10) == 0);
    int hh = atoi(out + 11), mm = atoi(out + 14), ss = atoi(out + 17);
    assert_true(hh < 24 && mm < 60 && ss < 61);
    assert_string_equal(out + 24, " warn  listening on :8080\n");
    free(out);

    /* Default threshold is INFO: info passes, debug is dropped. */
    out = capture_stderr(NULL, DX_LOG_INFO, "hello");
    assert_true(timestamp_shape(out));
    assert_string_equal(out + 24, " info  hello\n");
    free(out);
    out = capture_stderr(NULL, DX_LOG_DEBUG, "hidden");
    assert_string_equal(out, "");
    free(out);
    out = capture_stderr(NULL, DX_LOG_ERROR, "boom");
    assert_string_equal(out + 24, " error boom\n");
    free(out);

    /* A dx_log without a sink goes to stderr but keeps its own threshold. */
    dx_log log = {.sink = NULL, .ud = NULL, .level = DX_LOG_DEBUG};
    out = capture_stderr(&log, DX_LOG_DEBUG, "verbose");
    assert_true(timestamp_shape(out));
    assert_string_equal(out + 24, " debug verbose\n");
    free(out);
    log.level = DX_LOG_ERROR;
    out = capture_stderr(&log, DX_LOG_WARN, "quiet");
    assert_string_equal(out, "");
    free(out);
}

static void test_stderr_sink_long_line(void **state)
{
    (void)state;
    static char big[2 * DX_LOG_LINE_MAX];
    memset(big, 'q', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    char *out = capture_stderr(NULL, DX_LOG_ERROR, big);
    size_t n = strlen(out);
    /* 24 timestamp + 1 + 5 level + 1 + (DX_LOG_LINE_MAX - 1) + newline */
    assert_int_equal(n, 24 + 1 + 5 + 1 + DX_LOG_LINE_MAX - 1 + 1);
    assert_true(timestamp_shape(out));
    assert_memory_equal(out + n - 4, "...\n", 4);
    assert_int_equal(out[n - 5], 'q');
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_custom_sink_exact_lines),
        cmocka_unit_test(test_level_filtering),
        cmocka_unit_test(test_long_line_is_cut),
        cmocka_unit_test(test_level_names),
        cmocka_unit_test(test_stderr_sink_format),
        cmocka_unit_test(test_stderr_sink_long_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
