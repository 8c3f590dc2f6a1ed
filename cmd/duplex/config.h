/*
 * cmd/duplex/config.h: the settings of `duplex serve` from a YAML file
 * (--config FILE), DUPLEX_... environment variables and flags, in that order
 * of increasing precedence over the defaults (docs/configuration.md).
 *
 * One table (config.c, `schema`) describes every key: its YAML name, value
 * type, where it is stored, its flag (the environment variable is "DUPLEX_"
 * and the flag's name in capitals with '-' as '_'), its default, whether a
 * reload (SIGHUP) applies it, and its help line. --help-config prints that
 * table; --check-config prints the effective values with their source.
 *
 * Errors name where the value came from and the key, e.g.
 *   duplex.yaml:12: limits.msg_rate: expected a number >= 0, got "fast"
 *   env DUPLEX_MSG_RATE: limits.msg_rate: expected a number >= 0, got "fast"
 * and flags keep the CLI's "serve: invalid value for --msg-rate: 'fast'".
 */
#ifndef DX_CMD_CONFIG_H
#define DX_CMD_CONFIG_H

#include "duplex/gateway.h"
#include "duplex/server.h"

#include <stdio.h>

typedef struct cfg_arena cfg_arena;
typedef struct cfg_flag cfg_flag;

/* The effective settings. Every string and array is owned by the config
 * (cfg_free), so it must outlive whatever keeps pointers into it (the
 * servers and the gateway created from it). */
typedef struct serve_config {
    dx_server_options so; /* tls/n_tls point at certs */
    dx_gateway_options go; /* origins, api_keys, namespaces point below */
    unsigned workers;
    unsigned procs; /* --procs: processes on the port (1: no supervisor) */
    int log_level, log_format;
    dx_tls_cert *certs;
    size_t ncerts;
    const char **origins;
    size_t norigins;
    dx_gateway_api_key *keys;
    size_t nkeys;
    dx_gateway_namespace *ns;
    size_t nns;
    const char *deflate; /* compression.deflate: "on", "off" or extension parameters (so.deflate is built from it) */
    const char *file;    /* the configuration file, NULL: none */
    unsigned char *src;  /* per schema row: where its value came from (CFG_SRC_*) */
    unsigned *line;      /* per schema row: its line in the file (CFG_SRC_FILE) */
    cfg_arena *arena;
} serve_config;

enum { CFG_SRC_DEFAULT = 0, CFG_SRC_FILE, CFG_SRC_ENV, CFG_SRC_FLAG };

/* What the command line asked for, parsed once (argv is kept, not copied). */
typedef struct serve_args {
    const char *config;  /* --config FILE (else env DUPLEX_CONFIG) */
    int check;           /* --check-config */
    int help, help_config;
    cfg_flag *flags;     /* the schema flags given, in order */
    size_t nflags;
    void *shared;        /* the shared CLI options given (cli_common), applied last */
    const char **nsflags; /* --namespace PREFIX[,key=value...], in order (they replace the file's list) */
    size_t nnsflags;
} serve_args;

/* Parses argv (flags only: a value's check happens in cfg_build). Returns
 * 0, CLI_USAGE after a message on stderr, or -1 for an unknown option or a
 * missing value (getopt's message printed; the caller adds the usage). */
int cfg_parse_args(serve_args *a, int argc, char **argv);
void cfg_args_free(serve_args *a);

/* Builds the settings: defaults, then the file, the environment, the flags.
 * 0, or -1 with the first error in err (one line, no newline): the caller
 * prints it (startup, --check-config) or logs it (reload). */
int cfg_build(serve_config *c, const serve_args *a, char *err, size_t errlen);
void cfg_free(serve_config *c);

/* --check-config: every key, its effective value and where it came from;
 * secrets masked, files named (not printed). */
void cfg_print(const serve_config *c, FILE *f);
/* --help-config: every key with its type, flag, environment variable,
 * default, reloadability and help. */
void cfg_print_schema(FILE *f);

/* Reload: for every key that needs a restart and differs between old and
 * new, calls note(ud, key, old value, new value). Returns how many. */
size_t cfg_restart_diffs(const serve_config *old, const serve_config *neu,
                         void (*note)(void *ud, const char *key, const char *was, const char *now), void *ud);

#endif
