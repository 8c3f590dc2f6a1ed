/*
 * src/net/tcp.c: the plain TCP (and Unix stream) transport.
 *
 * Layer: net. recv/sendmsg with MSG_NOSIGNAL: a peer that went away gives
 * EPIPE, never SIGPIPE (sendfile has no such flag: the loop thread blocks
 * SIGPIPE, see dx_loop_run).
 *
 * The two hot calls go through syscall(2), not libc's recv/sendmsg/send: those
 * are thread cancellation points, and in a process with more than one
 * thread each call pays for switching asynchronous cancellation on and off
 * (about 40 instructions, a third of the user-space cost of a small
 * read). Nothing in duplex cancels threads; the system calls and their
 * errors are the same. On x86-64 they are issued inline (raw_syscall6:
 * the kernel's calling convention, -errno on failure): glibc's syscall()
 * is a variadic call that shuffles all six arguments and sets errno, about
 * 20 instructions per call, a tenth of the server's per-read cost at
 * depth 1 (docs/benchmarks.md). Elsewhere syscall() is used. The read and
 * the one-buffer send are inline in transport.h (dx__stream_read,
 * dx__stream_writev), so the common case costs no call either.
 */
#define _GNU_SOURCE
#include "net/transport.h"

#include <errno.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#if !(defined(__x86_64__) && defined(__GNUC__))
long dx__raw_syscall6(long nr, long a, long b, long c, long d, long e, long f)
{
    long r = syscall(nr, a, b, c, d, e, f);
    return r < 0 ? -errno : r;
}
#endif

ssize_t dx__tcp_error(int e)
{
    if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR)
        return DX_EAGAIN;
    if (e == ECONNRESET || e == EPIPE || e == ETIMEDOUT || e == ENOTCONN)
        return DX_ECONNRESET;
    return DX_EIO;
}

ssize_t dx__tcp_read(int fd, uint8_t *buf, size_t len)
{
    /* recv(2), not a cancellation point */
    long n = dx__raw_syscall6(SYS_recvfrom, fd, (long)(uintptr_t)buf, (long)len, 0, 0, 0);
    if (n >= 0)
        return n;
    return dx__tcp_error((int)-n);
}

ssize_t dx__tcp_writev(int fd, const struct iovec *iov, int n)
{
    long w;
    if (n == 1) { /* send(2) (sendto without an address): no message header to fill */
        w = dx__raw_syscall6(SYS_sendto, fd, (long)(uintptr_t)iov[0].iov_base, (long)iov[0].iov_len, MSG_NOSIGNAL, 0,
                         0);
    } else {
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = (struct iovec *)(uintptr_t)iov; /* sendmsg does not write through it */
        msg.msg_iovlen = (size_t)n;
        w = dx__raw_syscall6(SYS_sendmsg, fd, (long)(uintptr_t)&msg, MSG_NOSIGNAL, 0, 0, 0); /* likewise */
    }
    if (w >= 0)
        return w;
    return dx__tcp_error((int)-w);
}

ssize_t dx__tcp_sendfile(int fd, int file, int64_t *off, size_t len)
{
    off_t o = (off_t)*off;
    ssize_t w = sendfile(fd, file, &o, len);
    if (w >= 0) {
        *off = (int64_t)o;
        return w;
    }
    return dx__tcp_error(errno);
}

void dx__tcp_shutdown(int fd)
{
    if (fd >= 0)
        (void)shutdown(fd, SHUT_WR);
}

void dx__stream_close(dx__stream *s, int fd)
{
    if (s->tls)
        dx__tls_free(s);
    if (fd >= 0)
        close(fd);
}
