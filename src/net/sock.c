/*
 * src/net/sock.c: listening sockets and address formatting (see sock.h).
 *
 * Layer: net.
 */
#define _GNU_SOURCE
#include "net/sock.h"

#include "duplex/duplex.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int listen_addr(const struct addrinfo *ai, int backlog, bool reuse_port, unsigned *bound)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0)
        return -1;
    int one = 1, zero = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuse_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        goto fail;
    if (ai->ai_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero); /* also IPv4 */
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, backlog) < 0)
        goto fail;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        *bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
fail:;
    int e = errno;
    close(fd);
    errno = e;
    return -1;
}

int dx__listen_tcp(const char *host, unsigned port, int backlog, bool reuse_port, unsigned *bound)
{
    char portstr[8];
    snprintf(portstr, sizeof portstr, "%u", port >= 65536 ? 0 : port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    const char *tries[2] = {host, NULL};
    size_t ntries = 1;
    if (!host) {
        tries[0] = "::";
        tries[1] = "0.0.0.0"; /* a host without IPv6 */
        ntries = 2;
    }
    int saved = EADDRNOTAVAIL;
    for (size_t t = 0; t < ntries; t++) {
        struct addrinfo *res = NULL;
        if (getaddrinfo(tries[t], portstr, &hints, &res) != 0)
            continue;
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            int fd = listen_addr(ai, backlog, reuse_port, bound);
            if (fd >= 0) {
                freeaddrinfo(res);
                return fd;
            }
            saved = errno;
        }
        freeaddrinfo(res);
    }
    errno = saved;
    return DX_EADDR;
}

int dx__listen_unix(const char *path, int backlog)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sun.sun_path) {
        errno = ENAMETOOLONG;
        return DX_EADDR;
    }
    strcpy(sun.sun_path, path);
    struct stat st;
    if (stat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path); /* a stale socket from an earlier run */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return DX_EADDR;
    if (bind(fd, (struct sockaddr *)&sun, sizeof sun) < 0 || listen(fd, backlog) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return DX_EADDR;
    }
    return fd;
}

void dx__addr_format(const struct sockaddr *sa, socklen_t len, char *out, size_t cap)
{
    char host[INET6_ADDRSTRLEN];
    (void)len;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        snprintf(out, cap, "%s:%u", host, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], host, sizeof host);
            snprintf(out, cap, "%s:%u", host, ntohs(in6->sin6_port));
        } else {
            inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
            snprintf(out, cap, "[%s]:%u", host, ntohs(in6->sin6_port));
        }
    } else {
        snprintf(out, cap, "unix");
    }
}
