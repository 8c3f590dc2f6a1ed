/*
 * cmd/duplex/config_int.h: what config.c (the schema, values, sources,
 * printing) and config_yaml.c (the YAML file) share. Private to the CLI.
 */
#ifndef DX_CMD_CONFIG_INT_H
#define DX_CMD_CONFIG_INT_H

#include "config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MAX_CERTS 16

/* ---- the schema ------------------------------------------------------------ */

enum kind {
    K_STR,    /* a non-empty string (R_EMPTY: "" allowed) */
    K_SECRET, /* a non-empty string, never printed */
    K_FILE,   /* a path to a readable file */
    K_DIR,    /* a path to a directory */
    K_NUM,    /* a whole number in [min, max] */
    K_SIZE,   /* bytes, with an optional suffix, in [min, max] */
    K_MS,     /* a duration in milliseconds in [min, max] */
    K_SECS,   /* a duration stored in whole seconds */
    K_RATE,   /* a decimal number >= min (per second) */
    K_BOOL,   /* true/false/on/off */
    K_ENUM,   /* one of names[] */
    K_LIST,   /* a sequence of strings */
    K_SEQ,    /* a sequence of mappings (the rows "key[].x" describe them) */
    K_PMD,    /* permessage-deflate: on, off, or extension parameters (dx_deflate_options_parse) */
};
enum where { W_APP, W_SO, W_GO, W_TLS, W_KEY, W_NS };
enum store { ST_NONE, ST_SIZE, ST_UINT, ST_U64, ST_INT, ST_DBL, ST_STR };
enum {
    R_RELOAD = 1,  /* applied by a reload */
    R_OFF = 2,     /* "off" accepted: stores offv (K_RATE: -1) */
    R_ZERO = 4,    /* 0 accepted and stored as zerov */
    R_TRI = 8,     /* K_BOOL: true 1, false -1 (the library's "set -1 for 0") */
    R_PLUS1 = 16,  /* K_ENUM: stored as index + 1 (0 means inherit) */
    R_NOARG = 32,  /* the flag takes no value (sets true) */
    R_EMPTY = 64,  /* K_STR: "" allowed */
    R_SHARED = 128, /* the flag is one of the CLI's shared options (cli.c) */
    R_OPTARG = 256, /* the flag's value is optional (absent: "on") */
    R_JOIN = 512    /* K_STR/K_SECRET: a YAML list, or the flag repeated, is taken as its items joined with
                       commas */
};

typedef struct row {
    const char *key;
    unsigned char kind, where;
    size_t off;
    unsigned char store;
    unsigned short fl;
    const char *flag;
    const char *def;
    const char *help;
    double min, max;
    const char *const *names;
    uint64_t offv, zerov;
} row;

/* Where a value came from, for error messages. */
typedef struct origin {
    int src;
    const char *file; /* CFG_SRC_FILE */
    unsigned line;
    const char *env;  /* CFG_SRC_ENV: the variable */
    const char *flag; /* CFG_SRC_FLAG: the flag's name */
} origin;

typedef struct build {
    serve_config *c;
    char *err;
    size_t errlen;
    unsigned char *list_src; /* per row: the source that last replaced a list */
    size_t tls_certs, tls_keys; /* env/flag: certificates and keys given by that source */
} build;

/* ---- config.c ------------------------------------------------------------------ */

/* The schema row of a dotted key ("limits.max_message", "listen.tls[].cert"); NULL: none. */
const row *cfg_find_row(const char *key);
/* True when some key starts with "prefix." (a section). */
bool cfg_is_section(const char *prefix);
/* Grows *arr (elements of `size`) by one zeroed element; NULL on ENOMEM. */
void *cfg_push(void *arr, size_t *n, size_t size);
/* Rewrites err in place as one line: control characters as \\n, \\t or \\xHH. */
void cfg_one_line(char *err, size_t errlen);
/* Writes the one-line error for `key` from origin o into b->err; returns -1. */
int cfg_fail(build *b, const origin *o, const char *key, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* "a whole number from 1 to 10" and the like, for row r. */
const char *cfg_expected(const row *r, char *buf, size_t len);
/* Checks and stores scalar `val` of row r into base; 0 or -1 (b->err set). */
int cfg_apply(build *b, const row *r, void *base, const char *key, const char *val, const origin *o);
/* Where row r's value lives in c. */
void *cfg_row_base(serve_config *c, const row *r);
size_t cfg_row_index(const row *r);
/* Records that row r was set by o (source and line). */
void cfg_mark(build *b, const row *r, const origin *o);
/* Adds one origin to the allow-list from source o (the first value of a source replaces lower ones). */
int cfg_list_add(build *b, const row *r, const char *val, size_t n, const origin *o);

/* ---- config_yaml.c ------------------------------------------------------------- */

/* Reads the YAML file at path into b (every key checked against the schema); 0 or -1 (b->err set). */
int cfg_load_file(build *b, const char *path);

#endif
