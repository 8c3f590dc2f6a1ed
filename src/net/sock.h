/*
 * src/net/sock.h: listening sockets and address formatting.
 */
#ifndef DX_NET_SOCK_H
#define DX_NET_SOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/* Binds and listens on host:port (host NULL: "::" dual-stack, else
 * 0.0.0.0), non-blocking, close-on-exec, SO_REUSEADDR, optionally
 * SO_REUSEPORT. port 65536 binds an ephemeral port. Returns the descriptor
 * or DX_EADDR (errno kept) and the bound port in *bound. */
int dx__listen_tcp(const char *host, unsigned port, int backlog, bool reuse_port, unsigned *bound);

/* Same for a Unix stream socket at `path` (an existing socket file is
 * replaced). */
int dx__listen_unix(const char *path, int backlog);

/* "1.2.3.4:5678", "[::1]:5678" or "unix" into out (at least 64 bytes). */
void dx__addr_format(const struct sockaddr *sa, socklen_t len, char *out, size_t cap);

#endif
