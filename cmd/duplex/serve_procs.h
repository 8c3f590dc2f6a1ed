/*
 * cmd/duplex/serve_procs.h: the `duplex serve --procs N` supervisor
 * (serve_procs.c): N worker processes on one port, signals forwarded,
 * unexpected exits restarted.
 */
#ifndef DX_CMD_SERVE_PROCS_H
#define DX_CMD_SERVE_PROCS_H

#include <stdint.h>
#include <sys/types.h>

struct dx_log;

/* What a child writes on its ready fd once all its workers listen (one
 * write, smaller than PIPE_BUF, so records never interleave). */
typedef struct procs_ready {
    uint32_t slot;
    int32_t pid;
} procs_ready;

typedef struct procs_options {
    unsigned n;                 /* processes, >= 2 */
    unsigned stop_grace_ms;     /* after a stop signal, SIGKILL what is still alive */
    const struct dx_log *log;   /* the supervisor's own lines */
    /* The body of child `slot` (in the forked process): runs serve and
     * returns its exit status; writes a procs_ready record on ready_fd once
     * it listens. */
    int (*child)(void *ud, unsigned slot, int ready_fd);
    /* Called once in the supervisor when every child first reported ready. */
    void (*ready)(void *ud);
    void *ud;
} procs_options;

/* Runs the supervisor until every child has exited after a stop signal (or
 * a crash loop / failed start). Returns the exit status: 0 on a clean stop,
 * 1 otherwise. Call it single-threaded, before any thread is created. */
int procs_supervise(const procs_options *po);

#endif
