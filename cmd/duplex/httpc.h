/*
 * cmd/duplex/httpc.h: a small blocking HTTP/1.1 client with keep-alive, for
 * `duplex pub` over the gateway's /api/publish (httpc.c).
 *
 * Layer: the CLI. Not thread-safe: one httpc per thread.
 */
#ifndef DX_CMD_HTTPC_H
#define DX_CMD_HTTPC_H

#include <stdbool.h>
#include <stddef.h>

#define HTTPC_HEAD_MAX (16u << 10) /* an answer's status line and headers */
#define HTTPC_BODY_MAX (16u << 20) /* an answer's body */

typedef struct httpc_target {
    const char *host;     /* name or address, without IPv6 brackets */
    const char *port;     /* "8080" */
    bool tls;             /* https */
    int insecure;         /* 1: do not verify the certificate */
    const char *ca_file;  /* PEM CAs, or NULL: the system store */
    unsigned timeout_ms;  /* connect, and each read or write */
} httpc_target;

typedef struct httpc httpc;

typedef struct httpc_answer {
    int status;
    char reason[128];
    char *body;           /* NUL-terminated, malloc'd: httpc_answer_free */
    size_t body_len;
    bool close;           /* the server closes after this answer */
    unsigned retry_after; /* Retry-After in seconds, 0 if none */
} httpc_answer;

/* A client for `t` (its strings must outlive it); connects on the first
 * request. NULL when out of memory. */
httpc *httpc_new(const httpc_target *t);
void httpc_free(httpc *h);

/* Sends `head` (request line and headers, ending with the empty line) and
 * `len` bytes of body on the kept-alive connection (connecting first when
 * there is none) and reads the answer into *a. A kept-alive connection the
 * server had closed before any answer byte came is replaced and the
 * request sent once more; nothing else is retried. 0 (then
 * httpc_answer_free(a)), or -1 with a message in `why` and no connection
 * left (the next request connects again). */
int httpc_request(httpc *h, const char *head, size_t head_len, const void *body, size_t len, httpc_answer *a,
                  char *why, size_t cap);
void httpc_answer_free(httpc_answer *a);

#endif
