/*
 * tests/fuzz/fuzz_config.c: `duplex serve`'s configuration reader
 * (cmd/duplex/config.c: libyaml events, the tree, the schema walk, every
 * value parser) on arbitrary files, then --check-config's printer on what
 * was accepted. Nothing may crash, leak or read out of bounds; an error
 * must come back as one message.
 *
 * The input is written to a temporary file (the reader takes a path, as
 * serve does). Paths inside the input are only stat()ed and, for regular
 * files, one byte read.
 */
#define _GNU_SOURCE
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char path[64];

static void remove_file(void)
{
    unlink(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static FILE *devnull;
    if (!path[0]) {
        snprintf(path, sizeof path, "/tmp/dx_fuzz_config_%d.yaml", (int)getpid());
        devnull = fopen("/dev/null", "w");
        atexit(remove_file);
    }
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    if (size && fwrite(data, 1, size, f) != size)
        abort();
    fclose(f);
    char *argv[] = {(char *)"serve", NULL};
    serve_args a;
    if (cfg_parse_args(&a, 1, argv) != 0)
        abort();
    a.config = path;
    serve_config c;
    char err[1024];
    err[0] = 'x';
    if (cfg_build(&c, &a, err, sizeof err) == 0) {
        cfg_print(&c, devnull);
    } else if (!err[0] || strchr(err, '\n')) {
        abort(); /* an error is one non-empty line */
    }
    cfg_free(&c);
    cfg_args_free(&a);
    return 0;
}
